//! The command line: `serve`, `reload`, `check-config`, `warm`, the cache commands
//! (`ls`, `du`, `inspect`, `rm`, `pin`, `unpin`, `gc`), `verify`, `ca`,
//! `client-config`, `export`, `import`.

mod bundle;
mod cache;
mod serve;
mod warm;

pub use serve::{PID_FILE, RELOAD_FILE, ReloadOutcome};

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

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
    /// Make the running mirror re-read its config file (as SIGHUP does):
    /// upstreams, credentials, access rules, TLS names and certificates,
    /// warm lists. Checks the file first, then waits for the mirror's
    /// verdict: exits 1 when it refused the file (it keeps the running
    /// config). Finds the mirror by `mirrorgate.pid` in its data directory.
    Reload {
        /// The config file the mirror runs with (its `[storage] root`
        /// holds the pid file).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The mirror's data directory (as given to `serve --data-dir`).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The mirror's process id (instead of its pid file).
        #[arg(long)]
        pid: Option<u32>,
        /// How long to wait for the mirror's verdict.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Validate a config file and exit (non-zero with the reason when invalid).
    CheckConfig {
        /// Config file (TOML).
        file: PathBuf,
    },
    /// Print the embedded default config.
    DefaultConfig,
    /// Re-hash every stored blob; move any that fails its digest to
    /// `<root>/quarantine/`. Exits 1 when something was quarantined.
    Verify {
        /// Config file (its `[storage] root` is verified).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The store root to verify (overrides the config).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Manage the local certificate authority.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Fill the cache ahead of need through the mirror's pull-through path:
    /// every platform of each image (or `--platform`), skipping what is
    /// cached. Exits 1 when any image could not be warmed.
    Warm(warm::WarmArgs),
    /// Write images (every platform) into one OCI image layout, a `.tar`
    /// or a directory, through a mirror: for an air gap, or another
    /// mirrorgate's `import`. Exits 1 when an image is left out.
    Export(bundle::ExportArgs),
    /// Fill the store from bundles (`export`, or any OCI layout whose images
    /// are named by annotation): every blob verified; an image is served
    /// only once all it needs is stored. Resumable, idempotent.
    Import(bundle::ImportArgs),
    /// What the cache holds, and managing it.
    #[command(flatten)]
    Cache(cache::CacheCommand),
    /// Write a client's configuration for pulling every configured upstream
    /// through the mirror's TLS port, trusting the mirror's CA.
    ClientConfig {
        /// The client.
        #[arg(value_enum)]
        kind: crate::clientconfig::ClientKind,
        /// How clients reach the mirror's TLS listener: `HOST[:PORT]`.
        #[arg(long)]
        mirror: String,
        /// Write the files under this directory (else print them).
        #[arg(long)]
        out: Option<PathBuf>,
        /// The CA certificate clients must trust. Default: `ca.crt` in the
        /// config's `[tls] ca_dir`.
        #[arg(long)]
        ca: Option<PathBuf>,
        /// The mirror's config (its upstreams). Default: the embedded one.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Where the files will be installed (paths inside refer to it).
        /// Default: the client's standard directory.
        #[arg(long)]
        install_dir: Option<PathBuf>,
    },
}

/// `mirrorgate ca ...`
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create the local CA (`ca.crt`, and `ca.key` with mode 0600).
    Init {
        /// Directory for the CA files. Default: `[tls] ca_dir` of `--config`,
        /// else `./certs`.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Config file whose `[tls] ca_dir` to use.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Replace an existing CA (clients trusting the old one must be
        /// given the new certificate).
        #[arg(long)]
        force: bool,
    },
    /// Print the CA certificate's path and SHA-256 fingerprint.
    Show {
        /// Directory holding the CA files.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Config file whose `[tls] ca_dir` to use.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print the certificate (PEM) too.
        #[arg(long)]
        pem: bool,
    },
}

fn ca_dir(dir: Option<PathBuf>, config: Option<&PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(d) = dir {
        return Ok(d);
    }
    let c = match config {
        Some(p) => Config::load_without_secrets(p)
            .with_context(|| format!("invalid config {}", p.display()))?,
        None => return Ok(PathBuf::from("./certs")),
    };
    match c.tls.source {
        crate::config::TlsSource::LocalCa { dir } => Ok(dir),
        crate::config::TlsSource::Files { .. } => {
            anyhow::bail!("the config uses tls.cert_file/key_file, not a local CA")
        }
    }
}

fn run_ca(cmd: CaCommand) -> anyhow::Result<()> {
    match cmd {
        CaCommand::Init { dir, config, force } => {
            let dir = ca_dir(dir, config.as_ref())?;
            let ca = crate::tls::LocalCa::init(&dir, force)
                .with_context(|| format!("cannot create a CA in {}", dir.display()))?;
            println!("created {}", ca.cert_path().display());
            println!("sha256 fingerprint {}", ca.fingerprint());
            println!(
                "give clients this certificate (mirrorgate client-config writes it into their configs)"
            );
            Ok(())
        }
        CaCommand::Show { dir, config, pem } => {
            let dir = ca_dir(dir, config.as_ref())?;
            let ca = crate::tls::LocalCa::load(&dir).with_context(|| {
                format!(
                    "no usable CA in {} (run `mirrorgate ca init`)",
                    dir.display()
                )
            })?;
            println!("{}", ca.cert_path().display());
            println!("sha256 fingerprint {}", ca.fingerprint());
            if pem {
                print!("{}", ca.cert_pem());
            }
            Ok(())
        }
    }
}

/// Runs the CLI (and starts logging: `serve` in its config's format).
pub fn run(cli: Cli) -> anyhow::Result<()> {
    if !matches!(cli.command, Command::Serve { .. }) {
        crate::telemetry::init(crate::config::LogFormat::Text);
    }
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
        Command::Ca(cmd) => run_ca(cmd),
        Command::Warm(args) => warm::run(args),
        Command::Cache(cmd) => cache::run(cmd),
        Command::Export(args) => bundle::export(args),
        Command::Import(args) => bundle::import(args),
        Command::ClientConfig {
            kind,
            mirror,
            out,
            ca,
            config,
            install_dir,
        } => {
            let c = match &config {
                Some(p) => Config::load_without_secrets(p)
                    .with_context(|| format!("invalid config {}", p.display()))?,
                None => Config::embedded_default()?,
            };
            let ca = match ca {
                Some(p) => p,
                None => ca_dir(None, config.as_ref())?.join(crate::tls::ca::CA_CERT),
            };
            let ca_pem = std::fs::read_to_string(&ca).with_context(|| {
                format!(
                    "cannot read the CA certificate {} (run `mirrorgate ca init`)",
                    ca.display()
                )
            })?;
            let mirror: crate::clientconfig::Mirror = mirror.parse()?;
            let install = install_dir.unwrap_or_else(|| kind.default_install_dir().into());
            let files = crate::clientconfig::generate(kind, &c, &mirror, &ca_pem, &install)?;
            if kind == crate::clientconfig::ClientKind::Docker
                && !c
                    .upstreams
                    .iter()
                    .any(|u| u.default && u.id.as_str() == "docker.io")
            {
                eprintln!(
                    "warning: dockerd names no upstream; the mirror's default upstream should be docker.io"
                );
            }
            match out {
                Some(dir) => {
                    crate::clientconfig::write_out(&files, &dir)?;
                    for f in &files {
                        println!("wrote {}", dir.join(&f.path).display());
                    }
                    println!("install them under {}", install.display());
                }
                None => print!("{}", crate::clientconfig::render(&files)),
            }
            Ok(())
        }
        Command::Verify { config, data_dir } => {
            // With a config: its store, the bucket of [storage.s3] included
            // (whose keys it then needs). `--data-dir` names a local store.
            let c = cache::store_config(config.as_ref(), data_dir)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (report, what) = rt
                .block_on(async {
                    let store = crate::store::Store::from_config_beside_server(&c).await?;
                    let what = store.describe();
                    Ok::<_, crate::store::Error>((store.verify().await?, what))
                })
                .with_context(|| format!("cannot verify {}", c.storage_root.display()))?;
            println!(
                "{what}: {} blobs ok ({} bytes), {} quarantined",
                report.ok,
                report.bytes,
                report.quarantined.len()
            );
            for q in &report.quarantined {
                println!("quarantined {q}");
            }
            if report.quarantined.is_empty() {
                Ok(())
            } else {
                anyhow::bail!(
                    "{} blob(s) failed their digest and were quarantined",
                    report.quarantined.len()
                )
            }
        }
        Command::DefaultConfig => {
            print!("{}", crate::config::DEFAULT_CONFIG);
            Ok(())
        }
        Command::Reload {
            config,
            data_dir,
            pid,
            timeout,
        } => serve::reload_command(config, data_dir, pid, timeout),
        Command::Serve { config, data_dir } => {
            let source = serve::ConfigSource {
                path: config,
                data_dir,
            };
            let c = source.load()?;
            crate::telemetry::init(c.log_format);
            // Blocking threads run disk writes, fsyncs, reads that would
            // wait for the disk, and DNS lookups. tokio's default of 512
            // lets a burst of 500 cold downloads start ~330 of them (each
            // with its stack and allocator cache, kept 10 s after); 64
            // keep the disk busy, and idle ones leave after 2 s.
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .max_blocking_threads(64)
                .thread_keep_alive(std::time::Duration::from_secs(2))
                .build()
                .context("cannot start the async runtime")?;
            rt.block_on(serve::serve(c, source))
        }
    }
}
