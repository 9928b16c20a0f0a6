//! Logging setup: tracing to stderr, filtered by `RUST_LOG` (default
//! `info`), as text lines or (`[log] format = "json"`) one JSON object per
//! event with the same fields. Access-log lines use the target
//! `mirrorgate::access`.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global tracing subscriber (once: later calls do nothing).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => b
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        // Fields at the top level, beside `timestamp`, `level`, `target`
        // and `message`: what log shippers index without a parser.
        LogFormat::Json => b
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}
