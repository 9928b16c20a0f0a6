//! The `mirrorgate` binary: parse the CLI, start logging, run.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = mirrorgate::cli::Cli::parse();
    mirrorgate::telemetry::init();
    match mirrorgate::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mirrorgate: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
