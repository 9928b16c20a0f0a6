//! Logging setup: tracing to stderr, filtered by `RUST_LOG` (default
//! `info`). Access-log lines use the target `mirrorgate::access`.

use tracing_subscriber::EnvFilter;

/// Installs the global tracing subscriber. Call once, from `main`.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}
