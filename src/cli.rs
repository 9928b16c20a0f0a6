//! The command line: `serve` and `check-config`.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::app::App;
use crate::config::Config;

/// A pull-through mirror for container registries.
#[derive(Debug, Parser)]
#[command(name = "mirrorgate", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the mirror.
    Serve {
        /// Config file (TOML). Without it, the embedded default config is
        /// used: docker.io, ghcr.io and quay.io on ports 5000-5002, data in
        /// ./data.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Override `[storage] root`.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Validate a config file and exit (non-zero with the reason when invalid).
    CheckConfig {
        /// Config file (TOML).
        file: PathBuf,
    },
    /// Print the embedded default config.
    DefaultConfig,
}

/// Runs the CLI.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::CheckConfig { file } => {
            let c = Config::load(&file)
                .with_context(|| format!("invalid config {}", file.display()))?;
            println!(
                "{}: ok ({} upstreams, {} listeners)",
                file.display(),
                c.upstreams.len(),
                c.listeners.len()
            );
            Ok(())
        }
        Command::DefaultConfig => {
            print!("{}", crate::config::DEFAULT_CONFIG);
            Ok(())
        }
        Command::Serve { config, data_dir } => {
            let mut c = match &config {
                Some(p) => {
                    Config::load(p).with_context(|| format!("invalid config {}", p.display()))?
                }
                None => Config::embedded_default().context("invalid embedded config")?,
            };
            if let Some(d) = data_dir {
                c.storage_root = d;
            }
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            rt.block_on(serve(c))
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let root = config.storage_root.clone();
    let app = App::build(config)
        .await
        .with_context(|| format!("cannot start with data in {}", root.display()))?;
    let listeners = app.bind().await?;
    for l in &listeners {
        let addr = l.tcp.local_addr()?;
        let pinned = l
            .pinned
            .as_ref()
            .map_or_else(|| "-".to_owned(), ToString::to_string);
        tracing::info!(%addr, pinned, "listening (http)");
    }
    tracing::info!(root = %root.display(), "mirrorgate ready");
    app.run(listeners, shutdown_signal()).await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            let _ = ctrl_c.await;
            return;
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
