//! The `mirrorgate` binary: parse the CLI, start logging, run.

use clap::Parser;

/// jemalloc rather than glibc's malloc (the default feature `jemalloc`): after a
/// burst of cold fills it hands the freed pages back to the kernel (a
/// background thread purges pages unused for a second, `.cargo/config.toml`),
/// where glibc keeps the burst's peak.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    let cli = mirrorgate::cli::Cli::parse();
    // Logging starts in `run`: `serve` reads its format from the config.
    match mirrorgate::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mirrorgate: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
