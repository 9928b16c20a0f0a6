//! Starts the real mirrorgate `App` on 127.0.0.1:0 against fake upstreams,
//! and a plain HTTP client for talking to it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mirrorgate::app::App;
use mirrorgate::config::Config;
use tokio::sync::oneshot;

/// A running mirror.
pub struct Gateway {
    /// Listener addresses, in config order.
    pub addrs: Vec<SocketAddr>,
    /// The data directory.
    pub root: PathBuf,
    app: Arc<App>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Gateway {
    /// Starts a mirror from TOML config text. Listener addresses in the text
    /// should use port 0.
    pub async fn start(config: &str, root: &Path) -> Self {
        Self::start_with_clock(config, root, mirrorgate::clock::system()).await
    }

    /// [`Gateway::start`] with the clock that times tag TTLs, stale serving
    /// and the circuit breaker: a `ManualClock` makes those tests wait for
    /// nothing.
    pub async fn start_with_clock(
        config: &str,
        root: &Path,
        clock: mirrorgate::clock::SharedClock,
    ) -> Self {
        let config = test_config(config, root).expect("test config is valid");
        let app = Arc::new(
            App::build_with_clock(config, clock)
                .await
                .expect("app builds"),
        );
        let listeners = app.bind().await.expect("bind");
        let addrs = listeners
            .iter()
            .map(|l| l.tcp.local_addr().expect("local addr"))
            .collect();
        let (tx, rx) = oneshot::channel::<()>();
        let running = app.clone();
        let task = tokio::spawn(async move {
            running
                .run(listeners, async {
                    let _ = rx.await;
                })
                .await;
        });
        Self {
            addrs,
            root: root.to_owned(),
            app,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Waits until the store reflects every response received so far: blob
    /// downloads committed (or cleaned up after a failure) and eviction
    /// caught up (see `App::settle`).
    pub async fn settle(&self) {
        self.app.settle().await;
    }

    /// Applies new TOML config text (as SIGHUP does), with the same data
    /// directory.
    pub async fn reload(
        &self,
        config: &str,
    ) -> Result<mirrorgate::app::Reloaded, mirrorgate::app::ReloadError> {
        let config = test_config(config, &self.root).expect("test config is valid");
        self.app.reload(config).await
    }

    /// The running app.
    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// `GET /metrics` of listener 0, as text.
    pub async fn metrics_text(&self) -> String {
        client()
            .get(format!("{}/metrics", self.url(0)))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// `GET /status.json` of listener 0.
    pub async fn status_json(&self) -> serde_json::Value {
        client()
            .get(format!("{}/status.json", self.url(0)))
            .send()
            .await
            .expect("GET /status.json")
            .json()
            .await
            .expect("status JSON")
    }

    /// The mirror's request and connection counters.
    pub fn metrics(&self) -> &mirrorgate::registry::metrics::Metrics {
        self.app.registry().metrics()
    }

    /// Waits until `n` requests are being answered (e.g. all parked on one
    /// coalesced upstream fetch).
    pub async fn wait_in_flight(&self, n: u64) {
        wait_until(&format!("{n} requests in flight"), || {
            self.metrics().requests_in_flight() >= n
        })
        .await;
    }

    /// `http://addr` of listener `i`.
    pub fn url(&self, i: usize) -> String {
        format!("http://{}", self.addrs[i])
    }

    /// Stops the mirror and waits for it to finish.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// `config` with `[storage] root` set to `root`.
fn test_config(config: &str, root: &Path) -> Result<Config, mirrorgate::config::Error> {
    let root_line = format!("root = {:?}\n", root.display().to_string());
    let text = if config.contains("[storage]\n") {
        config.replacen("[storage]\n", &format!("[storage]\n{root_line}"), 1)
    } else {
        format!("[storage]\n{root_line}{config}")
    };
    Config::from_toml(&text, root)
}

/// Polls `cond` (cheap, in-process state) until it holds. Never a guess
/// at how long something takes: the deadline only turns a hang into a
/// failure with a message.
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
}

/// One upstream section for a test config.
pub fn upstream_toml(name: &str, url: &str, extra: &str) -> String {
    format!("[[upstream]]\nname = \"{name}\"\nurl = \"{url}\"\n{extra}\n")
}

/// An HTTP client for talking to the mirror (no redirects, no proxy).
pub fn client() -> reqwest::Client {
    client_builder().build().expect("client")
}

/// [`client`], connecting from the local address `ip` (a 127.0.0.0/8
/// address other than 127.0.0.1, for source-address rules).
pub fn client_from(ip: std::net::IpAddr) -> reqwest::Client {
    client_builder().local_address(ip).build().expect("client")
}

fn client_builder() -> reqwest::ClientBuilder {
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("tls versions")
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

/// Asserts every file in the blob store hashes to its name.
pub fn assert_store_verified(root: &Path) {
    for f in files_under(&root.join("blobs")) {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        let bytes = std::fs::read(&f).unwrap();
        let got = mirrorgate::oci::Digest::sha256_of(&bytes);
        assert_eq!(
            got.hex(),
            name,
            "stored blob {} fails its digest",
            f.display()
        );
    }
}
