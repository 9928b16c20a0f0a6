//! `mirrorgate serve` and `mirrorgate reload`.
//!
//! The server writes two files into its data directory: `mirrorgate.pid`
//! (its process id, while it runs) and `mirrorgate.reload` (the outcome of
//! its last reload, JSON). SIGHUP re-reads the config file and applies it
//! ([`App::reload`]); `mirrorgate reload` checks the file first, sends the
//! signal, and waits for the outcome, so that a refused config is reported
//! where it was asked for (exit 1), not only in the server's log.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;

use crate::app::{App, ReloadError, Reloaded};
use crate::config::Config;

/// The pid file's name in the data directory.
pub const PID_FILE: &str = "mirrorgate.pid";
/// The reload outcome's file name in the data directory.
pub const RELOAD_FILE: &str = "mirrorgate.reload";

/// Where the server's config comes from, and again at each reload.
#[derive(Debug, Clone)]
pub(super) struct ConfigSource {
    /// The file (`None`: the embedded default).
    pub(super) path: Option<PathBuf>,
    /// `--data-dir`, overriding `[storage] root`.
    pub(super) data_dir: Option<PathBuf>,
}

impl ConfigSource {
    /// Reads and validates the config (secrets included).
    pub(super) fn load(&self) -> anyhow::Result<Config> {
        let mut c = match &self.path {
            Some(p) => {
                Config::load(p).with_context(|| format!("invalid config {}", p.display()))?
            }
            None => Config::embedded_default().context("invalid embedded config")?,
        };
        if let Some(d) = &self.data_dir {
            c.storage_root = d.clone();
        }
        Ok(c)
    }
}

/// The outcome of one reload, as written to [`RELOAD_FILE`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ReloadOutcome {
    /// The server's process id.
    pub pid: u32,
    /// Reloads this process has attempted (the first is 1).
    pub generation: u64,
    /// Whether the new config is in use.
    pub ok: bool,
    /// Why it was refused (with its cause chain).
    pub error: Option<String>,
    /// Upstreams added, changed and removed.
    pub added: Vec<String>,
    /// Upstreams given a new client.
    pub changed: Vec<String>,
    /// Upstreams no longer served.
    pub removed: Vec<String>,
    /// Changed settings that wait for a restart.
    pub needs_restart: Vec<String>,
    /// `[[warm]]` entries started again (new or changed).
    #[serde(default)]
    pub warm_restarted: usize,
    /// When, in seconds since the Unix epoch.
    pub at: u64,
}

impl ReloadOutcome {
    fn new(generation: u64, result: &Result<Reloaded, anyhow::Error>) -> Self {
        let names = |v: &[crate::config::UpstreamId]| v.iter().map(ToString::to_string).collect();
        let at = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut o = Self {
            pid: std::process::id(),
            generation,
            ok: result.is_ok(),
            error: None,
            added: Vec::new(),
            changed: Vec::new(),
            removed: Vec::new(),
            needs_restart: Vec::new(),
            warm_restarted: 0,
            at,
        };
        match result {
            Ok(r) => {
                o.added = names(&r.upstreams.added);
                o.changed = names(&r.upstreams.changed);
                o.removed = names(&r.upstreams.removed);
                o.needs_restart = r.needs_restart.iter().map(|s| (*s).to_owned()).collect();
                o.warm_restarted = r.warm_restarted;
            }
            Err(e) => o.error = Some(format!("{e:#}")),
        }
        o
    }
}

/// Runs the mirror until SIGTERM or Ctrl-C; SIGHUP reloads `source`.
pub(super) async fn serve(config: Config, source: ConfigSource) -> anyhow::Result<()> {
    // Before anything can send them: the default action of SIGHUP, SIGTERM
    // and SIGINT ends the process (a SIGTERM just after READY must drain,
    // not kill).
    let stop = Stop::listen().context("cannot listen for SIGTERM and SIGINT")?;
    #[cfg(unix)]
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot listen for SIGHUP")?;
    let root = config.storage_root.clone();
    let app = Arc::new(
        App::build(config)
            .await
            .with_context(|| format!("cannot start with data in {}", root.display()))?,
    );
    let listeners = app.bind().await?;
    for l in &listeners {
        let addr = l.tcp.local_addr()?;
        let scheme = if l.tls.is_some() { "https" } else { "http" };
        let pinned = l
            .pinned
            .as_ref()
            .map_or_else(|| "-".to_owned(), ToString::to_string);
        tracing::info!(%addr, pinned, scheme, "listening");
    }
    let pid_file = PidFile::create(&root)?;
    tracing::info!(root = %root.display(), "mirrorgate ready");
    sd_notify("READY=1");
    app.start_warming();
    #[cfg(unix)]
    let hangups = tokio::spawn(reload_on_hangup(hup, app.clone(), source, root.clone()));
    #[cfg(not(unix))]
    let hangups = tokio::spawn(async move { drop(source) });
    app.run(listeners, async {
        stop.recv().await;
        sd_notify("STOPPING=1");
    })
    .await;
    hangups.abort();
    drop(pid_file);
    Ok(())
}

/// Applies the config file again at every SIGHUP.
#[cfg(unix)]
async fn reload_on_hangup(
    mut hup: tokio::signal::unix::Signal,
    app: Arc<App>,
    source: ConfigSource,
    root: PathBuf,
) {
    let mut generation = 0;
    while hup.recv().await.is_some() {
        generation += 1;
        sd_notify(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
        let result = reload(&app, &source).await;
        log_reload(&result);
        write_outcome(&root, &ReloadOutcome::new(generation, &result));
        sd_notify("READY=1");
    }
}

async fn reload(app: &App, source: &ConfigSource) -> anyhow::Result<Reloaded> {
    let source = source.clone();
    // Reading the file and its secrets, and hashing htpasswd, block.
    let loaded = tokio::task::spawn_blocking(move || source.load())
        .await
        .context("the config reader stopped")
        .and_then(|r| r);
    let config = match loaded {
        Ok(c) => c,
        Err(e) => {
            // The app never saw it: noted here.
            app.registry().note_reload(Err(format!("{e:#}")));
            return Err(e);
        }
    };
    app.reload(config)
        .await
        .map_err(|e: ReloadError| anyhow::Error::new(e))
}

fn log_reload(result: &anyhow::Result<Reloaded>) {
    match result {
        Ok(r) => {
            let list = |v: &[crate::config::UpstreamId]| {
                v.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            };
            tracing::info!(
                added = list(&r.upstreams.added),
                changed = list(&r.upstreams.changed),
                removed = list(&r.upstreams.removed),
                warm_restarted = r.warm_restarted,
                "config reloaded"
            );
            for setting in &r.needs_restart {
                tracing::warn!(
                    setting,
                    "changed in the config file; takes effect at the next restart (the running value stays)"
                );
            }
        }
        Err(e) => tracing::error!(
            error = %format!("{e:#}"),
            "config reload refused; the running config stays"
        ),
    }
}

/// Writes the outcome atomically (a temporary file renamed over it), so a
/// reader never sees half of it; readable by the server's user only (a
/// refusal's reason may quote the config).
fn write_outcome(root: &Path, outcome: &ReloadOutcome) {
    let path = root.join(RELOAD_FILE);
    let tmp = root.join(format!("{RELOAD_FILE}.tmp"));
    let write = |json: Vec<u8>| -> std::io::Result<()> {
        use std::io::Write as _;
        let _ = std::fs::remove_file(&tmp);
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
        o.open(&tmp)?.write_all(&json)?;
        std::fs::rename(&tmp, &path)
    };
    let written = serde_json::to_vec(outcome)
        .map_err(std::io::Error::other)
        .and_then(write);
    if let Err(e) = written {
        tracing::warn!(path = %path.display(), error = %e, "cannot write the reload outcome");
    }
}

/// `<root>/mirrorgate.pid` while the server runs.
struct PidFile(PathBuf);

impl PidFile {
    fn create(root: &Path) -> anyhow::Result<Self> {
        let path = root.join(PID_FILE);
        std::fs::write(&path, format!("{}\n", std::process::id()))
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Only ours: a second server on the same directory may have
        // replaced it.
        let ours = std::fs::read_to_string(&self.0)
            .is_ok_and(|s| s.trim() == std::process::id().to_string());
        if ours {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// `mirrorgate reload`: checks the config, signals the running server, and
/// reports what it did with it.
pub(super) fn reload_command(
    config: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    pid: Option<u32>,
    timeout: Duration,
) -> anyhow::Result<()> {
    // Secrets from the environment are the server's, not this shell's:
    // the check here is of everything else; the server checks the rest.
    let root = match (&data_dir, &config) {
        (Some(d), _) => d.clone(),
        (None, Some(p)) => {
            Config::load_without_secrets(p)
                .with_context(|| format!("invalid config {} (nothing sent)", p.display()))?
                .storage_root
        }
        (None, None) => Config::embedded_default()?.storage_root,
    };
    if let (Some(_), Some(p)) = (&data_dir, &config) {
        Config::load_without_secrets(p)
            .with_context(|| format!("invalid config {} (nothing sent)", p.display()))?;
    }
    let pid = match pid {
        Some(p) => p,
        None => {
            let path = root.join(PID_FILE);
            let text = std::fs::read_to_string(&path).with_context(|| {
                format!("no running mirror found: cannot read {}", path.display())
            })?;
            text.trim()
                .parse()
                .with_context(|| format!("{} holds no process id", path.display()))?
        }
    };
    let before = read_outcome(&root)
        .filter(|o| o.pid == pid)
        .map_or(0, |o| o.generation);
    check_is_mirror(pid)?;
    let target = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .with_context(|| format!("{pid} is not a process id"))?;
    // Watching before signalling: the verdict cannot land unseen.
    let verdict = Verdict::watch(&root)?;
    rustix::process::kill_process(target, rustix::process::Signal::HUP)
        .with_context(|| format!("cannot signal process {pid} (is the mirror running?)"))?;
    let deadline = std::time::Instant::now() + timeout;
    let outcome = loop {
        if let Some(o) = read_outcome(&root).filter(|o| o.pid == pid && o.generation > before) {
            break o;
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            anyhow::bail!(
                "sent SIGHUP to {pid}, but it reported no reload within {timeout:?} (see its log; {} in {})",
                RELOAD_FILE,
                root.display()
            );
        }
        verdict.wait(left)?;
    };
    if let Some(e) = &outcome.error {
        anyhow::bail!("the mirror (pid {pid}) refused the config and keeps the running one: {e}");
    }
    println!("reloaded (pid {pid})");
    for (what, v) in [
        ("added", &outcome.added),
        ("changed", &outcome.changed),
        ("removed", &outcome.removed),
    ] {
        if !v.is_empty() {
            println!("upstreams {what}: {}", v.join(", "));
        }
    }
    if outcome.warm_restarted > 0 {
        println!("warm lists restarted: {}", outcome.warm_restarted);
    }
    for s in &outcome.needs_restart {
        println!("needs a restart to take effect: {s}");
    }
    Ok(())
}

/// Refuses to signal a process that is not a `mirrorgate serve` (a pid
/// file left by a killed server may name a pid reused since, and SIGHUP
/// ends most processes).
fn check_is_mirror(pid: u32) -> anyhow::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let path = format!("/proc/{pid}/cmdline");
        let cmdline = std::fs::read(&path)
            .with_context(|| format!("no process {pid} (is the mirror running?)"))?;
        let mut args = cmdline.split(|b| *b == 0).map(String::from_utf8_lossy);
        let exe = args.next().unwrap_or_default();
        let is_mirror = Path::new(exe.as_ref())
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("mirrorgate"))
            && args.any(|a| a == "serve");
        if !is_mirror {
            anyhow::bail!(
                "process {pid} is not `mirrorgate serve` (a stale pid file?); nothing sent"
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = pid;
    Ok(())
}

/// The data directory, watched (inotify) for the server's outcome file
/// being renamed into place.
struct Verdict(std::os::fd::OwnedFd);

impl Verdict {
    fn watch(root: &Path) -> anyhow::Result<Self> {
        use rustix::fs::inotify;
        let fd = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)
            .context("cannot watch for the mirror's verdict (inotify)")?;
        inotify::add_watch(
            &fd,
            root,
            inotify::WatchFlags::MOVED_TO | inotify::WatchFlags::CLOSE_WRITE,
        )
        .with_context(|| format!("cannot watch {}", root.display()))?;
        Ok(Self(fd))
    }

    /// Waits at most `left` for a change in the directory, then takes the
    /// events in (whichever file they name: the caller reads the outcome).
    fn wait(&self, left: Duration) -> anyhow::Result<()> {
        use rustix::event::{PollFd, PollFlags, Timespec, poll};
        let timeout = Timespec {
            tv_sec: i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: left.subsec_nanos().into(),
        };
        match poll(&mut [PollFd::new(&self.0, PollFlags::IN)], Some(&timeout)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e).context("cannot wait for the mirror's verdict"),
        }
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
        let mut events = rustix::fs::inotify::Reader::new(&self.0, &mut buf);
        // Non-blocking: ends at EAGAIN once every event is read.
        while events.next().is_ok() {}
        Ok(())
    }
}

fn read_outcome(root: &Path) -> Option<ReloadOutcome> {
    let bytes = std::fs::read(root.join(RELOAD_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn monotonic_usec() -> u128 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u128::try_from(t.tv_sec).unwrap_or(0) * 1_000_000
        + u128::try_from(t.tv_nsec).unwrap_or(0) / 1000
}

/// Tells systemd (a `Type=notify` unit: `$NOTIFY_SOCKET`) how the service
/// is doing. Nothing without the variable; a failure is only logged.
fn sd_notify(state: &str) {
    #[cfg(target_os = "linux")]
    {
        use std::os::linux::net::SocketAddrExt as _;
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return;
        };
        let sent = (|| {
            let sock = std::os::unix::net::UnixDatagram::unbound()?;
            let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
            let addr = match bytes.strip_prefix(b"@") {
                // An abstract socket (systemd's usual one).
                Some(name) => std::os::unix::net::SocketAddr::from_abstract_name(name)?,
                None => std::os::unix::net::SocketAddr::from_pathname(&path)?,
            };
            sock.send_to_addr(state.as_bytes(), &addr).map(drop)
        })();
        if let Err(e) = sent {
            tracing::warn!(state, error = %e, "cannot notify systemd");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = state;
}

/// SIGTERM and SIGINT (Ctrl-C), listened for from the start.
struct Stop {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Stop {
    fn listen() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// Waits for either.
    async fn recv(mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}
