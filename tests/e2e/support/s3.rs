//! A real S3 server for the tests: SeaweedFS's `weed mini`, on loopback
//! only, telemetry off, with its own data directory and ports. Installed by
//! `scripts/install-seaweedfs.sh` (into `target/tools/seaweedfs`, or set
//! `MIRRORGATE_WEED`).
//!
//! [`shared`] is one server for the whole test binary; each test keeps to
//! its own key prefix. A test that stops and restarts S3 starts its own
//! with [`Weed::start`]. The server runs under a small shell that kills it
//! when this process's end of a pipe closes, so no `weed` outlives the tests
//! (not even after a panic or a SIGKILL of the test binary).

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

pub const ACCESS_KEY: &str = "mgtest";
pub const SECRET_KEY: &str = "mgtestsecret";
pub const BUCKET: &str = "mirrorgate";

/// The `weed` binary, or a panic that says how to install it.
pub fn weed_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("MIRRORGATE_WEED") {
        return p.into();
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools/seaweedfs/bin/weed");
    assert!(
        p.exists(),
        "SeaweedFS is not installed: run `bash scripts/install-seaweedfs.sh` (scripts/test.sh does), \
         or set MIRRORGATE_WEED to a `weed` binary"
    );
    p
}

/// Ports picked by the kernel (bound, then released just before weed binds
/// them; nothing else on this machine binds loopback ports at random).
fn free_ports(n: usize) -> Vec<u16> {
    let ls: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    ls.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

/// A running SeaweedFS.
pub struct Weed {
    dir: PathBuf,
    ports: Vec<u16>,
    run: Mutex<Option<Running>>,
    _tmp: Option<tempfile::TempDir>,
}

struct Running {
    child: Child,
    /// Closing it stops the server (see the module docs).
    _lifeline: ChildStdin,
}

impl Weed {
    /// Starts a server with its data under a new temporary directory.
    pub fn start() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let w = Self {
            dir: tmp.path().to_owned(),
            ports: free_ports(10),
            run: Mutex::new(None),
            _tmp: Some(tmp),
        };
        w.restart();
        w
    }

    /// The S3 endpoint, `http://127.0.0.1:port`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports[6])
    }

    /// The S3 address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports[6]))
    }

    /// Stops the server (closing the lifeline makes its shell send it
    /// SIGTERM) and waits for it to exit.
    pub fn stop(&self) {
        if let Some(mut r) = self.run.lock().unwrap().take() {
            drop(r._lifeline);
            let _ = r.child.wait();
        }
    }

    /// Starts the server (again) on the same data and ports, and waits
    /// until it says every part is ready.
    pub fn restart(&self) {
        self.stop();
        let p = &self.ports;
        let args = format!(
            "-dir={dir} -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.telemetry=false -webdav=false \
             -admin.ui=false -s3.port.iceberg=0 -s3.port.lance=0 -bucket={BUCKET} \
             -master.port={} -master.port.grpc={} -volume.port={} -volume.port.grpc={} \
             -filer.port={} -filer.port.grpc={} -s3.port={} -s3.port.grpc={} \
             -admin.port={} -admin.port.grpc={} -master.volumeSizeLimitMB=64",
            p[0],
            p[1],
            p[2],
            p[3],
            p[4],
            p[5],
            p[6],
            p[7],
            p[8],
            p[9],
            dir = self.dir.display(),
        );
        // The shell kills weed when its stdin (our lifeline) closes: on
        // stop(), or when this process exits however it does. `setsid`
        // keeps terminal signals away from it.
        let script = format!(
            "exec 3<&0; {weed} mini {args} </dev/null 2>&1 & w=$!; \
             (read -r _ <&3; kill -TERM $w 2>/dev/null) & wait $w",
            weed = weed_bin().display()
        );
        let mut child = Command::new("setsid")
            .arg("sh")
            .arg("-c")
            .arg(script)
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start weed");
        let lifeline = child.stdin.take().unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    // Nobody waits any more: drain to keep weed from
                    // blocking on a full pipe.
                    continue;
                }
            }
        });
        let mut seen = Vec::new();
        loop {
            // The bound only turns a hang into a failure.
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(l) if l.contains("All enabled components are running") => break,
                Ok(l) => seen.push(l),
                Err(_) => panic!("weed did not become ready:\n{}", seen.join("\n")),
            }
        }
        *self.run.lock().unwrap() = Some(Running {
            child,
            _lifeline: lifeline,
        });
    }

    /// The `[storage.s3]` table for a mirror on this server under `prefix`.
    pub fn storage_toml(&self, prefix: &str, extra: &str) -> String {
        format!(
            "[storage.s3]\nbucket = \"{BUCKET}\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\n\
             prefix = \"{prefix}\"\naccess_key_id = \"{ACCESS_KEY}\"\n\
             secret_access_key = \"{SECRET_KEY}\"\nallow_http = true\n{extra}\n",
            self.endpoint()
        )
    }
}

impl Drop for Weed {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The binary's shared server (started on first use).
pub fn shared() -> &'static Weed {
    static W: OnceLock<Weed> = OnceLock::new();
    W.get_or_init(Weed::start)
}

/// A key prefix no other test (or run) uses.
pub fn unique_prefix(test: &str) -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("t/{test}-{}-{t}-{n}", std::process::id())
}

/// A raw client of the test bucket, for looking behind the mirror.
pub fn raw(weed: &Weed) -> AmazonS3 {
    AmazonS3Builder::new()
        .with_endpoint(weed.endpoint())
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_bucket_name(BUCKET)
        .with_access_key_id(ACCESS_KEY)
        .with_secret_access_key(SECRET_KEY)
        .build()
        .unwrap()
}

pub async fn keys_under(weed: &Weed, prefix: &str) -> Vec<String> {
    use futures_util::TryStreamExt;
    let p = ObjectPath::from(prefix);
    let mut keys: Vec<String> = raw(weed)
        .list(Some(&p))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap();
    keys.sort();
    keys
}

pub fn blob_key(prefix: &str, digest: &str) -> ObjectPath {
    ObjectPath::from(format!(
        "{prefix}/blobs/sha256/{}",
        digest.trim_start_matches("sha256:")
    ))
}

/// The blob's object in the bucket, read past the mirror.
pub async fn stored(weed: &Weed, prefix: &str, digest: &str) -> bytes::Bytes {
    raw(weed)
        .get(&blob_key(prefix, digest))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
}
