//! `mirrorgate warm`: the command's front (inputs, display, report, exit
//! status) over [`crate::warm`].

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::config::Config;
use crate::oci::manifest::Platform;
use crate::warm::{ImageRef, ImageReport, Options, Progress, Report, Warmer};

/// Which images: input files and `--image`.
#[derive(Debug, clap::Args)]
pub struct InputArgs {
    /// Input files: a list (one reference a line, `#` comments), the output
    /// of `kubectl get pods -A -o json` (`.json`), or a `skopeo sync` YAML
    /// file (`.yaml`, `.yml`).
    pub files: Vec<PathBuf>,
    /// A reference, besides the files (repeatable), e.g.
    /// `docker.io/library/alpine:3.20` or `ghcr.io/org/app@sha256:...`.
    #[arg(long = "image", short = 'i')]
    pub images: Vec<String>,
}

/// Which mirror: a running one, or one run here over a data directory.
#[derive(Debug, clap::Args)]
pub struct MirrorArgs {
    /// A running mirror: its base URL (`http://mirror:5000`,
    /// `https://mirror.internal:5443`). Without it, the mirror of
    /// `--config` runs in this process over its data directory.
    #[arg(long)]
    pub mirror: Option<url::Url>,
    /// The config of the mirror to run in-process (without `--mirror`).
    /// Default: the embedded one.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Override `[storage] root` of the in-process mirror.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// CA certificate (PEM) to trust for an HTTPS mirror, besides the
    /// system's.
    #[arg(long)]
    pub cacert: Option<PathBuf>,
    /// User for a mirror with `[auth]`; the password is read from the
    /// environment variable `MIRRORGATE_PASSWORD`.
    #[arg(long)]
    pub user: Option<String>,
}

/// The command's arguments.
#[derive(Debug, clap::Args)]
pub struct WarmArgs {
    #[command(flatten)]
    pub input: InputArgs,
    #[command(flatten)]
    pub mirror: MirrorArgs,
    /// Platforms of a multi-platform image to warm, e.g.
    /// `linux/amd64,linux/arm64/v8`. Default: every entry of the index.
    #[arg(long, value_delimiter = ',')]
    pub platform: Vec<Platform>,
    /// Images, and blob downloads, at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,
    /// Write a JSON report (per image: digest, platforms, bytes fetched
    /// and already cached, errors) to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Pin every warmed image, so that eviction never removes it (needs the
    /// data directory: `--config`/`--data-dir`, not `--mirror`).
    #[arg(long)]
    pub pin: bool,
}

/// The references of the input files and `--image`, and the `skopeo
/// sync` listings still to expand; fails on any input error.
pub(super) fn read_inputs(
    a: &InputArgs,
) -> anyhow::Result<(Vec<ImageRef>, Vec<crate::warm::Listing>)> {
    let mut images: Vec<ImageRef> = Vec::new();
    let mut listings = Vec::new();
    let mut bad = Vec::new();
    for f in &a.files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
        match crate::warm::read_input(f, &text) {
            Ok((refs, lists)) => {
                images.extend(refs);
                listings.extend(lists);
            }
            Err(errs) => bad.extend(errs.into_iter().map(|e| e.to_string())),
        }
    }
    for s in &a.images {
        match s.parse::<ImageRef>() {
            Ok(r) => images.push(r),
            Err(e) => bad.push(format!("--image: {e}")),
        }
    }
    if !bad.is_empty() {
        anyhow::bail!(
            "the inputs have errors; nothing was done:\n  {}",
            bad.join("\n  ")
        );
    }
    if images.is_empty() && listings.is_empty() {
        anyhow::bail!("no images: give input files or --image");
    }
    Ok((images, listings))
}

/// Where the mirror is, read from the arguments (no I/O on the network).
pub(super) struct MirrorPlan {
    target: Target,
    ca_pem: Option<Vec<u8>>,
    basic: Option<(String, String)>,
}

impl MirrorPlan {
    pub(super) fn new(a: &MirrorArgs) -> anyhow::Result<Self> {
        let ca_pem = match &a.cacert {
            Some(p) => {
                Some(std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?)
            }
            None => None,
        };
        let basic = match &a.user {
            Some(u) => Some((
                u.clone(),
                std::env::var("MIRRORGATE_PASSWORD")
                    .context("--user needs the password in MIRRORGATE_PASSWORD")?,
            )),
            None => None,
        };
        let target = match (&a.mirror, &a.config) {
            (Some(_), Some(_)) => {
                anyhow::bail!(
                    "give --mirror (a running mirror) or --config (run one here), not both"
                )
            }
            (Some(url), None) => Target::Remote(url.clone()),
            (None, c) => {
                let mut config = match c {
                    Some(p) => Config::load(p)
                        .with_context(|| format!("invalid config {}", p.display()))?,
                    None => Config::embedded_default().context("invalid embedded config")?,
                };
                if let Some(d) = &a.data_dir {
                    config.storage_root = d.clone();
                }
                Target::Local(Box::new(config))
            }
        };
        Ok(Self {
            target,
            ca_pem,
            basic,
        })
    }

    /// Starts the in-process mirror if there is one; a warmer for it.
    pub(super) async fn connect(
        self,
        platforms: Vec<Platform>,
        concurrency: usize,
    ) -> anyhow::Result<(Warmer, Option<Local>)> {
        let (mirror, local) = match self.target {
            Target::Remote(url) => (url, None),
            Target::Local(config) => {
                let (url, local) = start_local(*config).await?;
                (url, Some(local))
            }
        };
        let warmer = Warmer::new(Options {
            mirror,
            ca_pem: self.ca_pem,
            basic: self.basic,
            platforms,
            concurrency,
        })?;
        Ok((warmer, local))
    }
}

/// Runs `mirrorgate warm`: exit status 0 when every image is warm.
pub(super) fn run(a: WarmArgs) -> anyhow::Result<()> {
    let (mut images, listings) = read_inputs(&a.input)?;
    if a.pin && a.mirror.mirror.is_some() {
        anyhow::bail!("--pin writes to the data directory: use --config/--data-dir, not --mirror");
    }
    let plan = MirrorPlan::new(&a.mirror)?;
    let (platforms, concurrency) = (a.platform.clone(), usize::from(a.concurrency));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let pin = a.pin;
    let report = rt.block_on(async move {
        let (warmer, stop) = plan.connect(platforms, concurrency).await?;
        let display = Display::new(std::io::stderr().is_terminal());
        let mut listing_errors = Vec::new();
        for l in &listings {
            match warmer.list_tags(l).await {
                Ok(refs) => images.extend(refs),
                Err(e) => listing_errors.push(e),
            }
        }
        let mut report = warmer.warm_all(&images, &display).await;
        display.done();
        for e in listing_errors {
            report.failed += 1;
            report.images.push(ImageReport {
                image: "(tag listing)".into(),
                errors: vec![e],
                ..ImageReport::default()
            });
        }
        if let Some(stop) = stop {
            if pin {
                stop.pin(&report).await?;
            }
            stop.finish().await;
        }
        Ok::<Report, anyhow::Error>(report)
    })?;
    if let Some(p) = &a.report {
        let json = serde_json::to_vec_pretty(&report)?;
        std::fs::write(p, json).with_context(|| format!("cannot write {}", p.display()))?;
    }
    println!(
        "warmed {} of {} images: {} fetched, {} already cached, in {:.1} s",
        report.ok,
        report.ok + report.failed,
        size(report.bytes_fetched),
        size(report.bytes_cached),
        report.seconds
    );
    if report.failed > 0 {
        anyhow::bail!("{} image(s) could not be warmed", report.failed);
    }
    Ok(())
}

/// Which mirror to warm.
enum Target {
    /// A running one.
    Remote(url::Url),
    /// One run here over its data directory.
    Local(Box<Config>),
}

/// The in-process mirror: serves on a loopback port until [`Local::finish`].
pub(super) struct Local {
    app: Arc<crate::app::App>,
    stop: tokio::sync::oneshot::Sender<()>,
    serving: tokio::task::JoinHandle<()>,
}

impl Local {
    /// Pins the images of `report` that were warmed.
    async fn pin(&self, report: &Report) -> anyhow::Result<()> {
        let store = self.app.mirror().store();
        for i in report.images.iter().filter(|i| i.ok()) {
            let Ok(r) = i.image.parse::<ImageRef>() else {
                continue;
            };
            let key = super::cache::store_key(&self.app.config(), &r)?;
            store
                .pin(&key, &i.image, None)
                .await
                .with_context(|| format!("cannot pin {}", i.image))?;
        }
        Ok(())
    }

    /// Stops serving and waits for the downloads' commits.
    pub(super) async fn finish(self) {
        let _ = self.stop.send(());
        let _ = self.serving.await;
        self.app.settle().await;
    }
}

async fn start_local(config: Config) -> anyhow::Result<(url::Url, Local)> {
    let root = config.storage_root.clone();
    let app = Arc::new(
        crate::app::App::build(config)
            .await
            .with_context(|| format!("cannot open the mirror over {}", root.display()))?,
    );
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot bind a loopback port")?;
    let addr = tcp.local_addr()?;
    let listener = crate::server::Listener {
        tcp,
        pinned: None,
        tls: None,
        allow: Vec::new().into(),
        internal: false,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn({
        let app = app.clone();
        async move {
            app.run(vec![listener], async move {
                let _ = stopped.await;
            })
            .await;
        }
    });
    let url = url::Url::parse(&format!("http://{addr}/"))?;
    Ok((url, Local { app, stop, serving }))
}

fn size(n: u64) -> String {
    bytesize::ByteSize(n).display().iec().to_string()
}

/// An image in flight and its bar.
type Bar = (ImageRef, ProgressBar);

/// Progress on a terminal (a bar per image in flight), or a line per image.
struct Display {
    bars: Option<(MultiProgress, Mutex<Vec<Bar>>)>,
}

impl Display {
    fn new(terminal: bool) -> Self {
        let bars = terminal.then(|| {
            (
                MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
                Mutex::new(Vec::new()),
            )
        });
        Self { bars }
    }

    fn bar(&self, image: &ImageRef) -> Option<ProgressBar> {
        let (_, bars) = self.bars.as_ref()?;
        let bars = bars.lock().unwrap_or_else(PoisonError::into_inner);
        bars.iter()
            .find(|(r, _)| r == image)
            .map(|(_, b)| b.clone())
    }

    fn done(&self) {
        if let Some((m, _)) = &self.bars {
            let _ = m.clear();
        }
    }
}

fn line(r: &ImageReport) -> String {
    let digest = r
        .digest
        .as_deref()
        .map_or(String::new(), |d| format!(" {}", &d[..d.len().min(19)]));
    let platforms = if r.platforms.is_empty() {
        String::new()
    } else {
        format!(" [{}]", r.platforms.join(", "))
    };
    if r.ok() {
        format!(
            "ok   {}{digest}{platforms}: {} blobs, {} fetched ({}), {} cached, {:.1} s",
            r.image,
            r.blobs,
            r.blobs_fetched,
            size(r.bytes_fetched),
            size(r.bytes_cached),
            r.seconds
        )
    } else {
        format!("FAIL {}{digest}: {}", r.image, r.errors.join("; "))
    }
}

impl Progress for Display {
    fn started(&self, image: &ImageRef) {
        let Some((m, bars)) = &self.bars else { return };
        let bar = m.add(ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {prefix} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_prefix(image.to_string());
        bar.set_message("resolving");
        bar.enable_steady_tick(Duration::from_millis(120));
        bars.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((image.clone(), bar));
    }

    fn sized(&self, image: &ImageRef, total: u64, blobs: usize) {
        let Some(bar) = self.bar(image) else { return };
        bar.set_length(total);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_message(format!("{blobs} blobs"));
    }

    fn advanced(&self, image: &ImageRef, n: u64) {
        if let Some(bar) = self.bar(image) {
            bar.inc(n);
        }
    }

    fn finished(&self, image: &ImageRef, report: &ImageReport) {
        match &self.bars {
            Some((m, bars)) => {
                let mut bars = bars.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(i) = bars.iter().position(|(r, _)| r == image) {
                    let (_, bar) = bars.remove(i);
                    bar.finish_and_clear();
                    m.remove(&bar);
                }
                let _ = m.println(line(report));
            }
            None => println!("{}", line(report)),
        }
    }
}
