//! The real `mirrorgate` binary as a child process, for tests that kill it
//! or measure its memory.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::client;

/// A free port on 127.0.0.1 (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running mirror process, killed on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    /// A `VmHWM`/`VmRSS`-style field of `/proc/<pid>/status`, in KiB.
    pub fn status_kib(&self, field: &str) -> u64 {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.0.id())).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc status"))
    }
}

/// Starts `mirrorgate serve --config <config>` and waits until port
/// `port` answers.
/// Writes `dir/mirrorgate.toml` for a real-binary mirror: data under
/// `dir/data`, one plain listener on `port`, `upstream_url` as the default
/// docker.io upstream. Returns the config's path.
pub fn write_config(dir: &std::path::Path, port: u16, upstream_url: &str) -> std::path::PathBuf {
    let cfg = dir.join("mirrorgate.toml");
    std::fs::write(
        &cfg,
        format!(
            "[storage]\nroot = \"data\"\n[[listener]]\naddr = \"127.0.0.1:{port}\"\n{}",
            super::upstream_toml("docker.io", upstream_url, "default = true")
        ),
    )
    .unwrap();
    cfg
}

pub async fn spawn(config: &std::path::Path, port: u16) -> Proc {
    let child = Proc(
        Command::new(env!("CARGO_BIN_EXE_mirrorgate"))
            .args(["serve", "--config", config.to_str().unwrap()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let c = client();
    for _ in 0..200 {
        if c.get(format!("http://127.0.0.1:{port}/v2/"))
            .send()
            .await
            .is_ok()
        {
            return child;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("mirror did not start");
}
