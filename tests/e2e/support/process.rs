//! The real `mirrorgate` binary as a child process, for tests that kill it,
//! measure its memory or read its log.
//!
//! The child listens on port 0 and says where in its log; [`spawn`] waits
//! for its `mirrorgate ready` line (an event, not a guessed delay) and
//! keeps every log line for [`Proc::wait_for_log`].

use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

/// The child's stderr, line by line, as it arrives.
#[derive(Default)]
struct Log {
    lines: Mutex<Vec<String>>,
}

impl Log {
    fn find(&self, pred: &dyn Fn(&str) -> bool) -> Option<String> {
        let lines = self.lines.lock().unwrap();
        lines.iter().find(|l| pred(l)).cloned()
    }

    fn dump(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

/// A running mirror process, killed on drop.
pub struct Proc {
    child: Child,
    log: Arc<Log>,
    /// Bumped for every line; closed at the child's EOF.
    lines: watch::Receiver<usize>,
    addrs: Vec<SocketAddr>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Address of listener `i` (config order), as the child logged it.
    pub fn addr(&self, i: usize) -> SocketAddr {
        self.addrs[i]
    }

    /// `http://addr` of the first listener.
    pub fn url(&self) -> String {
        format!("http://{}", self.addrs[0])
    }

    /// A `VmHWM`/`VmRSS`-style field of `/proc/<pid>/status`, in KiB.
    pub fn status_kib(&self, field: &str) -> u64 {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc status"))
    }

    /// Waits for the first log line (from the start) that satisfies `pred`
    /// and returns it. Fails if the child exits without writing one; the
    /// 60 s bound only turns a hang into a failure.
    pub async fn wait_for_log(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        wait_for_line(&self.log, self.lines.clone(), what, &pred).await
    }

    /// Everything the child logged so far.
    pub fn log(&self) -> String {
        self.log.dump()
    }
}

async fn wait_for_line(
    log: &Log,
    mut lines: watch::Receiver<usize>,
    what: &str,
    pred: &dyn Fn(&str) -> bool,
) -> String {
    let wait = async {
        loop {
            let _ = lines.borrow_and_update();
            if let Some(l) = log.find(pred) {
                return Some(l);
            }
            if lines.changed().await.is_err() {
                // The child closed stderr: one last look.
                return log.find(pred);
            }
        }
    };
    match tokio::time::timeout(Duration::from_secs(60), wait).await {
        Ok(Some(l)) => l,
        Ok(None) => panic!("mirror exited without logging {what}:\n{}", log.dump()),
        Err(_) => panic!("mirror did not log {what} within 60 s:\n{}", log.dump()),
    }
}

/// Writes `dir/mirrorgate.toml` for a real-binary mirror: data under
/// `dir/data`, one plain listener on a port of its choosing,
/// `upstream_url` as the default docker.io upstream (with `extra` lines).
/// Returns the config's path.
pub fn write_config(dir: &std::path::Path, upstream_url: &str, extra: &str) -> std::path::PathBuf {
    let cfg = dir.join("mirrorgate.toml");
    std::fs::write(
        &cfg,
        format!(
            "[storage]\nroot = \"data\"\n[[listener]]\naddr = \"127.0.0.1:0\"\n{}",
            super::upstream_toml(
                "docker.io",
                upstream_url,
                &format!("default = true\n{extra}")
            )
        ),
    )
    .unwrap();
    cfg
}

/// `mirrorgate serve --config <config>`, logging at info.
pub fn serve_command(config: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mirrorgate"));
    cmd.args(["serve", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "info");
    cmd
}

/// Starts `mirrorgate serve --config <config>` and waits until it is ready.
pub async fn spawn(config: &std::path::Path) -> Proc {
    spawn_command(serve_command(config)).await
}

/// Starts a mirror with `cmd` (a [`serve_command`], possibly wrapped) and
/// waits for its `mirrorgate ready` line.
pub async fn spawn_command(mut cmd: Command) -> Proc {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = Arc::new(Log::default());
    let (tx, rx) = watch::channel(0usize);
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            sink.lines.lock().unwrap().push(line);
            tx.send_modify(|n| *n += 1);
        }
        // Dropping `tx` tells waiters the log has ended.
    });
    wait_for_line(&log, rx.clone(), "`mirrorgate ready`", &|l: &str| {
        l.contains("mirrorgate ready")
    })
    .await;
    let addrs = log
        .lines
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| {
            // `[log] format = "json"`: one object per line.
            if l.starts_with('{') {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                return (v["message"] == "listening")
                    .then(|| v["addr"].as_str()?.parse().ok())
                    .flatten();
            }
            if !l.contains(" listening ") {
                return None;
            }
            let rest = &l[l.find("addr=")? + "addr=".len()..];
            rest.split_whitespace().next()?.parse().ok()
        })
        .collect::<Vec<SocketAddr>>();
    assert!(
        !addrs.is_empty(),
        "no listening address logged:\n{}",
        log.dump()
    );
    Proc {
        child,
        log,
        lines: rx,
        addrs,
    }
}
