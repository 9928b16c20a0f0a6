//! The S3 backend against a real S3 server (SeaweedFS on loopback): the
//! store contract, pulls through the mirror, a second mirror with an empty
//! root on the same bucket, presigned redirects, a digest mismatch, S3
//! stopped mid-pull, and the sweep of abandoned uploads.

use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use mirrorgate::config::Config;
use mirrorgate::oci::Digest;
use mirrorgate::store::Store;
use mirrorgate::store::contract::{self, Fixture};
use object_store::{ObjectStoreExt, PutPayload};

use crate::support::image::{Image, docker_image};
use crate::support::s3::{self, Weed, blob_key, keys_under, raw, stored};
use crate::support::*;

/// The contract's S3 fixture: every open is a new machine (an empty read
/// tier) on the same prefix.
struct BucketFixture {
    weed: &'static Weed,
    prefix: String,
    tiers: Mutex<Vec<tempfile::TempDir>>,
}

impl BucketFixture {
    fn config(&self, root: &std::path::Path) -> Config {
        let text = format!(
            "[storage]\nroot = {:?}\n{}[[listener]]\naddr = \"127.0.0.1:0\"\n{}",
            root.display().to_string(),
            self.weed.storage_toml(&self.prefix, "part_size = \"5MiB\""),
            upstream_toml("docker.io", "http://127.0.0.1:9", "default = true")
        );
        Config::from_toml(&text, root).unwrap()
    }
}

impl Fixture for BucketFixture {
    fn open(&self) -> BoxFuture<'_, Store> {
        Box::pin(async {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::from_config(&self.config(dir.path())).await.unwrap();
            self.tiers.lock().unwrap().push(dir);
            store
        })
    }

    fn corrupt<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let key = blob_key(&self.prefix, &digest.to_string());
            let s3 = raw(self.weed);
            let mut bytes = s3.get(&key).await.unwrap().bytes().await.unwrap().to_vec();
            bytes[0] ^= 0xff;
            s3.put(&key, PutPayload::from(bytes)).await.unwrap();
            // Only the bucket's copy rots: drop the read tiers' copies, as
            // on a machine that never had them.
            for t in self.tiers.lock().unwrap().iter() {
                let hex = digest.hex();
                let _ =
                    std::fs::remove_file(t.path().join("blobs/sha256").join(&hex[..2]).join(hex));
            }
        })
    }

    fn leftovers(&self) -> BoxFuture<'_, usize> {
        Box::pin(async {
            let uploads = keys_under(self.weed, &format!("{}/uploads/", self.prefix)).await;
            let tmp: usize = self
                .tiers
                .lock()
                .unwrap()
                .iter()
                .map(|t| files_under(&t.path().join("tmp")).len())
                .sum();
            uploads.len() + tmp
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_store_passes_the_contract() {
    let f = BucketFixture {
        weed: s3::shared(),
        prefix: s3::unique_prefix("contract"),
        tiers: Mutex::default(),
    };
    contract::run(&f, &f.prefix.clone()).await;
}

/// A mirror with one listener on the shared (or given) S3 server, under
/// `prefix`, in front of `up` as docker.io.
async fn mirror_on(
    weed: &Weed,
    up: &FakeUpstream,
    root: &std::path::Path,
    prefix: &str,
    s3_extra: &str,
) -> Gateway {
    Gateway::start(&mirror_toml(weed, up, prefix, s3_extra), root).await
}

/// The config of a mirror with one listener on `weed`, under `prefix`, in
/// front of `up` as docker.io (no `[storage]` root: the caller adds it).
fn mirror_toml(weed: &Weed, up: &FakeUpstream, prefix: &str, s3_extra: &str) -> String {
    format!(
        "{}[[listener]]\naddr = \"127.0.0.1:0\"\n{}",
        weed.storage_toml(prefix, s3_extra),
        upstream_toml("docker.io", &up.url(), "default = true")
    )
}

async fn get_ok(c: &reqwest::Client, url: &str) -> bytes::Bytes {
    let r = c
        .get(url)
        .header("accept", ACCEPT_ALL)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "GET {url}");
    r.bytes().await.unwrap()
}

/// Pulls `img` (manifest by tag, config, layers) and checks every byte.
async fn pull(c: &reqwest::Client, gw: &Gateway, repo: &str, tag: &str, img: &Image) {
    let base = format!("{}/v2/{repo}", gw.url(0));
    let m = get_ok(c, &format!("{base}/manifests/{tag}")).await;
    assert_eq!(m, img.manifest.bytes);
    for b in std::iter::once(&img.config).chain(&img.layers) {
        let got = get_ok(c, &format!("{base}/blobs/{}", b.digest)).await;
        assert!(got == b.bytes, "blob {} byte for byte", b.digest);
    }
}

/// `mirrorgate_s3_requests_total` of `gw` by (op, result), parsed from its
/// `/metrics` with a Prometheus text parser.
async fn s3_calls(gw: &Gateway) -> std::collections::HashMap<(String, String), f64> {
    let text = gw.metrics_text().await;
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    scrape
        .samples
        .iter()
        .filter(|x| x.metric == "mirrorgate_s3_requests_total")
        .map(|x| {
            let v = match x.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            };
            let label = |k: &str| x.labels.get(k).unwrap_or_default().to_owned();
            ((label("op"), label("result")), v)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_mirror_on_the_bucket_serves_without_upstream_blob_gets() {
    let weed = s3::shared();
    let prefix = s3::unique_prefix("fresh");
    let up = FakeUpstream::start(Options::default()).await;
    // A layer larger than a part goes up in parts.
    let img = docker_image(41, &[300_000, 12 << 20]);
    up.add_image("library/app", "1", &img);
    let c = client();

    let first = tempfile::tempdir().unwrap();
    let a = mirror_on(weed, &up, first.path(), &prefix, "part_size = \"5MiB\"").await;
    pull(&c, &a, "library/app", "1", &img).await;
    a.settle().await;
    assert_eq!(up.count("GET", "/blobs/"), 3, "each blob fetched once");
    // In the bucket, byte for byte.
    for b in std::iter::once(&img.config).chain(&img.layers) {
        let got = stored(weed, &prefix, &b.digest).await;
        assert!(got == b.bytes, "object {}", b.digest);
    }
    assert!(
        keys_under(weed, &format!("{prefix}/uploads/"))
            .await
            .is_empty()
    );
    // The S3 calls are counted: the 12 MiB layer went up in three parts
    // of one multipart upload; nothing failed.
    let calls = s3_calls(&a).await;
    let n = |op: &str, result: &str| {
        calls
            .get(&(op.to_owned(), result.to_owned()))
            .copied()
            .unwrap_or(0.0)
    };
    assert!(n("UploadPart", "ok") >= 3.0, "{calls:?}");
    assert!(n("CompleteMultipartUpload", "ok") >= 1.0, "{calls:?}");
    assert!(n("PUT", "ok") >= 1.0, "records and small blobs: {calls:?}");
    assert!(
        calls
            .iter()
            .all(|((_, r), _)| r != "error" && r != "circuit_open"),
        "{calls:?}"
    );
    let status = a.status_json().await;
    let b = &status["store"]["s3"];
    assert_eq!((&b["breaker"], &b["errors"]), (&"closed".into(), &0.into()));
    assert!(b["calls"].as_u64().unwrap() >= 5, "{b}");
    a.stop().await;

    // A new machine: empty root, same bucket.
    let second = tempfile::tempdir().unwrap();
    let b = mirror_on(weed, &up, second.path(), &prefix, "").await;
    let (blob_gets, manifest_gets) = (up.count("GET", "/blobs/"), up.count("GET", "/manifests/"));
    pull(&c, &b, "library/app", "1", &img).await;
    b.settle().await;
    assert_eq!(
        up.count("GET", "/blobs/"),
        blob_gets,
        "no upstream blob GET"
    );
    assert_eq!(
        up.count("GET", "/manifests/"),
        manifest_gets,
        "the tag is in the bucket too"
    );
    // The blobs are in the new read tier now, and the next pull is local.
    let layer = &img.layers[1];
    let hex = layer.digest.trim_start_matches("sha256:");
    let tiered = second.path().join("blobs/sha256").join(&hex[..2]).join(hex);
    assert_eq!(std::fs::read(&tiered).unwrap(), layer.bytes);
    pull(&c, &b, "library/app", "1", &img).await;
    assert_eq!(up.count("GET", "/blobs/"), blob_gets);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_digest_mismatch_leaves_no_object() {
    let weed = s3::shared();
    let prefix = s3::unique_prefix("mismatch");
    let up = FakeUpstream::start(Options::default()).await;
    let img = docker_image(42, &[100_000, 11 << 20]);
    up.add_image("library/bad", "1", &img);
    for l in &img.layers {
        up.corrupt_blob(&l.digest);
    }
    let dir = tempfile::tempdir().unwrap();
    let gw = mirror_on(weed, &up, dir.path(), &prefix, "part_size = \"5MiB\"").await;
    let c = client();
    for l in &img.layers {
        let r = c
            .get(format!("{}/v2/library/bad/blobs/{}", gw.url(0), l.digest))
            .send()
            .await
            .unwrap();
        // Either refused before the body, or cut short: never whole.
        if r.status() == 200 {
            let body = r.bytes().await;
            assert!(body.is_err() || body.unwrap() != l.bytes);
        }
    }
    gw.settle().await;
    let keys = keys_under(weed, &prefix).await;
    for l in &img.layers {
        let hex = l.digest.trim_start_matches("sha256:");
        assert!(
            !keys.iter().any(|k| k.contains(hex)),
            "no object for {hex}: {keys:?}"
        );
    }
    assert!(!keys.iter().any(|k| k.contains("/uploads/")), "{keys:?}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_cached_blob_gets_to_presigned_urls() {
    let weed = s3::shared();
    let prefix = s3::unique_prefix("redirect");
    let up = FakeUpstream::start(Options::default()).await;
    let img = docker_image(43, &[200_000]);
    up.add_image("library/r", "1", &img);
    let dir = tempfile::tempdir().unwrap();
    let gw = mirror_on(
        weed,
        &up,
        dir.path(),
        &prefix,
        "redirect = true\nredirect_ttl = \"5m\"",
    )
    .await;
    let c = client();
    let layer = &img.layers[0];
    let url = format!("{}/v2/library/r/blobs/{}", gw.url(0), layer.digest);
    // Cold: streamed by the mirror as usual.
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), layer.bytes);
    gw.settle().await;
    // Cached: a 307 to S3, without the client's credentials.
    let r = c
        .get(&url)
        .header("authorization", "Bearer client-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 307);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with(&weed.endpoint()), "{location}");
    assert!(location.contains("X-Amz-Signature="), "{location}");
    assert!(location.contains("X-Amz-Expires=300"), "{location}");
    assert!(!location.contains("client-secret"));
    let fetched = c.get(&location).send().await.unwrap();
    assert_eq!(fetched.status(), 200);
    assert_eq!(fetched.bytes().await.unwrap(), layer.bytes);
    // Ranges work at S3.
    let part = c
        .get(&location)
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(part.bytes().await.unwrap(), layer.bytes.slice(10..20));
    // HEAD is answered by the mirror.
    let h = c.head(&url).send().await.unwrap();
    assert_eq!(h.status(), 200);
    assert_eq!(
        h.headers()["content-length"],
        layer.bytes.len().to_string().as_str()
    );
    assert_eq!(up.count("GET", "/blobs/"), 1);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_s3_down_the_read_tier_serves_and_cold_blobs_pass_through() {
    let weed = Arc::new(Weed::start());
    let prefix = s3::unique_prefix("down");
    let up = FakeUpstream::start(Options::default()).await;
    let img = docker_image(44, &[150_000, 150_000, 150_000]);
    up.add_image("library/d", "1", &img);
    let dir = tempfile::tempdir().unwrap();
    // The breaker never opens here: once S3 is back, the next call reaches
    // it (the breaker's own backoff is real time, not this test's events).
    let gw = mirror_on(
        &weed,
        &up,
        dir.path(),
        &prefix,
        "request_timeout = \"2s\"\nconnect_timeout = \"1s\"\nbreaker_failures = 100000",
    )
    .await;
    let c = client();
    let blob = |i: usize| format!("{}/v2/library/d/blobs/{}", gw.url(0), img.layers[i].digest);
    assert_eq!(get_ok(&c, &blob(0)).await, img.layers[0].bytes);
    gw.settle().await;

    // S3 stops in the middle of a cold pull: the client still gets the
    // whole blob, verified; its upload fails and it stays in the read tier.
    let gate = up.hold_blobs_after(50_000);
    let pending = tokio::spawn({
        let (c, url) = (c.clone(), blob(1));
        async move { get_ok(&c, &url).await }
    });
    gate.wait_for_requests(1).await;
    weed.stop();
    gate.release();
    assert_eq!(pending.await.unwrap(), img.layers[1].bytes);
    gw.settle().await;
    // With S3 still down: the read tier serves what it has...
    assert_eq!(get_ok(&c, &blob(0)).await, img.layers[0].bytes);
    let before = up.count("GET", "/blobs/");
    assert_eq!(get_ok(&c, &blob(1)).await, img.layers[1].bytes);
    assert_eq!(up.count("GET", "/blobs/"), before, "kept in the read tier");

    let failed: f64 = s3_calls(&gw)
        .await
        .iter()
        .filter(|((_, r), _)| r == "error")
        .map(|(_, v)| v)
        .sum();
    assert!(failed >= 1.0, "the failed calls are counted");

    weed.restart();
    assert_eq!(get_ok(&c, &blob(2)).await, img.layers[2].bytes);
    gw.settle().await;
    assert_eq!(
        stored(&weed, &prefix, &img.layers[2].digest).await,
        img.layers[2].bytes
    );
    gw.stop().await;
}

/// Waits until the keys under `prefix` satisfy `done` (S3 has no event to
/// wait on: it is asked again every 20 ms; the bound turns a hang into a
/// failure).
async fn wait_for_keys(weed: &Weed, prefix: &str, what: &str, done: impl Fn(&[String]) -> bool) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let keys = keys_under(weed, prefix).await;
        if done(&keys) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {keys:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_of_a_killed_mirror_are_swept() {
    let weed = s3::shared();
    let prefix = s3::unique_prefix("sweep");
    let up = FakeUpstream::start(Options::default()).await;
    let img = docker_image(45, &[24 << 20]);
    up.add_image("library/k", "1", &img);
    // Upstream stops after 12 MiB: two parts are up when the mirror dies.
    let gate = up.hold_blobs_after(12 << 20);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mirrorgate.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\nroot = \"data\"\n{}",
            mirror_toml(weed, &up, &prefix, "part_size = \"5MiB\"")
        ),
    )
    .unwrap();
    let p = spawn(&config).await;
    let c = client();
    let url = format!("{}/v2/library/k/blobs/{}", p.url(), img.layers[0].digest);
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    gate.wait_for_requests(1).await;
    let uploads = format!("{prefix}/uploads/");
    wait_for_keys(weed, &uploads, "an upload record", |k| !k.is_empty()).await;
    drop(p); // SIGKILL mid-fill, with a multipart upload open
    drop(r);
    // The next mirror on the bucket sweeps what the killed one left.
    let other = tempfile::tempdir().unwrap();
    let cfg = format!(
        "{}[[listener]]\naddr = \"127.0.0.1:0\"\n{}",
        weed.storage_toml(&prefix, "abandoned_upload_age = \"1ms\""),
        upstream_toml("docker.io", &up.url(), "default = true")
    );
    let gw = Gateway::start(&cfg, other.path()).await;
    wait_for_keys(weed, &uploads, "the sweep", |k| k.is_empty()).await;
    gw.stop().await;
    // The blob itself never appeared.
    assert!(
        raw(weed)
            .head(&blob_key(&prefix, &img.layers[0].digest))
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_checks_the_bucket() {
    let weed = s3::shared();
    let prefix = s3::unique_prefix("verify");
    let up = FakeUpstream::start(Options::default()).await;
    let img = docker_image(46, &[100_000, 100_000]);
    up.add_image("library/v", "1", &img);
    let dir = tempfile::tempdir().unwrap();
    let gw = mirror_on(weed, &up, dir.path(), &prefix, "").await;
    pull(&client(), &gw, "library/v", "1", &img).await;
    gw.settle().await;
    gw.stop().await;
    // Bit rot in the bucket.
    let key = blob_key(&prefix, &img.layers[1].digest);
    let s3c = raw(weed);
    let mut bytes = s3c.get(&key).await.unwrap().bytes().await.unwrap().to_vec();
    bytes[7] ^= 1;
    s3c.put(&key, PutPayload::from(bytes)).await.unwrap();
    let config = dir.path().join("verify.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\nroot = \"tier\"\n{}",
            mirror_toml(weed, &up, &prefix, "")
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mirrorgate"))
        .args(["verify", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    let hex = img.layers[1].digest.trim_start_matches("sha256:");
    assert!(stdout.contains("s3://mirrorgate/t/verify"), "{stdout}");
    assert!(stdout.contains(&format!("quarantine/{hex}")), "{stdout}");
    assert!(s3c.head(&key).await.is_err(), "moved out of blobs/");
}

/// A fake S3 endpoint for faults a real server does not make: every
/// connection is accepted, read, and then either answered `503 SlowDown` or
/// left hanging.
async fn faulty_s3(hang: bool) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = requests.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = l.accept().await else {
                return;
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let Ok(n) = sock.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if hang {
                        continue;
                    }
                    let body = "<?xml version=\"1.0\"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
                    let resp = format!(
                        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/xml\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if sock.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, requests)
}

async fn pulls_despite_a_failing_s3(hang: bool) {
    let (endpoint, requests) = faulty_s3(hang).await;
    let up = FakeUpstream::start(Options::default()).await;
    let img = docker_image(if hang { 47 } else { 48 }, &[120_000, 130_000, 140_000]);
    up.add_image("library/f", "1", &img);
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "[storage.s3]\nbucket = \"mirrorgate\"\nendpoint = \"{endpoint}\"\naccess_key_id = \"k\"\n\
         secret_access_key = \"s\"\nallow_http = true\nrequest_timeout = \"1s\"\nread_timeout = \"1s\"\n\
         [[listener]]\naddr = \"127.0.0.1:0\"\n{}",
        upstream_toml("docker.io", &up.url(), "default = true")
    );
    let gw = Gateway::start(&cfg, dir.path()).await;
    let c = client();
    // Every image still pulls whole: the tag and blobs come from upstream,
    // and S3's failure is logged and survived.
    pull(&c, &gw, "library/f", "1", &img).await;
    gw.settle().await;
    assert!(
        requests.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "S3 was asked"
    );
    // What could not go to S3 stays in the read tier and is served from it.
    let before = up.count("GET", "/blobs/");
    pull(&c, &gw, "library/f", "1", &img).await;
    assert_eq!(
        up.count("GET", "/blobs/"),
        before,
        "served from the read tier"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_answering_503_slowdown_is_survived() {
    pulls_despite_a_failing_s3(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_s3_is_survived() {
    pulls_despite_a_failing_s3(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_rules_are_checked_before_any_redirect() {
    use crate::access::{PASS, USER, get, htpasswd};
    let weed = s3::shared();
    let prefix = s3::unique_prefix("private");
    let up = FakeUpstream::start(Options {
        auth: Auth::Basic {
            user: "mirror".into(),
            pass: "upstream-secret".into(),
        },
        ..Options::default()
    })
    .await;
    let secret = docker_image(49, &[3000]);
    let public = docker_image(50, &[2000]);
    up.add_image("org/app", "1", &secret);
    up.add_image("public/base", "1", &public);
    up.only_in(&secret.layers[0].digest, &["org/app"]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "{}[auth]\nhtpasswd = {:?}\n[[listener]]\naddr = \"127.0.0.1:0\"\n{}",
        weed.storage_toml(&prefix, "redirect = true"),
        htpasswd(dir.path()),
        upstream_toml(
            "docker.io",
            &up.url(),
            "default = true\nusername = \"mirror\"\npassword = \"upstream-secret\"\nprivate = [\"org/*\"]"
        )
    );
    let gw = Gateway::start(&cfg, &dir.path().join("data")).await;
    let c = client();
    let private_blob = format!("{}/v2/org/app/blobs/{}", gw.url(0), secret.layers[0].digest);
    // Cold, authenticated: streamed and stored.
    let r = get(&c, private_blob.clone(), Some((USER, PASS))).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), secret.layers[0].bytes);
    gw.settle().await;
    // Cached: the authenticated client is redirected...
    assert_eq!(
        get(&c, private_blob.clone(), Some((USER, PASS)))
            .await
            .status(),
        307
    );
    // ...an anonymous one is refused before any URL is made...
    let r = get(&c, private_blob, None).await;
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("location").is_none());
    // ...and the private layer is not reachable under a public name.
    let sneaky = format!(
        "{}/v2/public/base/blobs/{}",
        gw.url(0),
        secret.layers[0].digest
    );
    let r = get(&c, sneaky, None).await;
    assert_eq!(r.status(), 404);
    assert!(r.headers().get("location").is_none());
    gw.stop().await;
}

/// A TCP proxy in front of the S3 server that holds every write (PUT and
/// POST requests: parts, single uploads, multipart starts and completions)
/// until released: a slow S3 at its slowest.
struct HeldWrites {
    addr: std::net::SocketAddr,
    release: tokio::sync::watch::Sender<bool>,
    held: Arc<std::sync::atomic::AtomicUsize>,
}

impl HeldWrites {
    async fn start(upstream: std::net::SocketAddr) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (release, rx) = tokio::sync::watch::channel(false);
        let held = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = held.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = l.accept().await else {
                    return;
                };
                let (mut rx, counter) = (rx.clone(), counter.clone());
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut buf, mut out) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
                    loop {
                        tokio::select! {
                            r = server.read(&mut out) => match r {
                                Ok(0) | Err(_) => return,
                                Ok(m) => {
                                    if client.write_all(&out[..m]).await.is_err() {
                                        return;
                                    }
                                }
                            },
                            r = client.read(&mut buf) => match r {
                                Ok(0) | Err(_) => return,
                                Ok(m) => {
                                    // A request starts a read (bodies
                                    // follow their heads): hold the writes.
                                    let write = buf.starts_with(b"PUT ") || buf.starts_with(b"POST ");
                                    if write && !*rx.borrow() {
                                        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                        let _ = rx.wait_for(|r| *r).await;
                                    }
                                    if server.write_all(&buf[..m]).await.is_err() {
                                        return;
                                    }
                                }
                            },
                        }
                    }
                });
            }
        });
        Self {
            addr,
            release,
            held,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_s3_write_never_holds_up_clients() {
    let weed = s3::shared();
    let prefix = s3::unique_prefix("stall");
    let proxy = HeldWrites::start(weed.addr()).await;
    let up = FakeUpstream::start(Options::default()).await;
    // Small blobs go up in one PUT at the commit; the big one in parts.
    let img = docker_image(51, &[100_000, 12 << 20]);
    up.add_image("library/s", "1", &img);
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "[storage.s3]\nbucket = \"{}\"\nendpoint = \"http://{}\"\nprefix = \"{prefix}\"\n\
         access_key_id = \"{}\"\nsecret_access_key = \"{}\"\nallow_http = true\npart_size = \"5MiB\"\n\
         request_timeout = \"10m\"\n[[listener]]\naddr = \"127.0.0.1:0\"\n{}",
        s3::BUCKET,
        proxy.addr,
        s3::ACCESS_KEY,
        s3::SECRET_KEY,
        upstream_toml("docker.io", &up.url(), "default = true")
    );
    let gw = Gateway::start(&cfg, dir.path()).await;
    let c = client();
    // Every byte reaches the client while S3 accepts no write at all: a
    // manifest waits a second for its records, then goes out (a write on
    // the way of a response would hang it for the 10 minutes of
    // request_timeout; the bound turns that into a failure).
    tokio::time::timeout(
        std::time::Duration::from_secs(60),
        pull(&c, &gw, "library/s", "1", &img),
    )
    .await
    .expect("the pull does not wait for S3 writes");
    assert!(
        proxy.held.load(std::sync::atomic::Ordering::SeqCst) > 0,
        "the mirror tried to write to S3"
    );
    let key = blob_key(&prefix, &img.layers[1].digest);
    assert!(raw(weed).head(&key).await.is_err(), "nothing uploaded yet");
    // S3 speeds up: the uploads complete, and the blobs are in the bucket.
    proxy.release.send_replace(true);
    gw.settle().await;
    for b in &img.layers {
        let got = stored(weed, &prefix, &b.digest).await;
        assert!(got == b.bytes, "object {}", b.digest);
    }
    gw.stop().await;
}

/// A TCP proxy in front of the S3 server that sends S3's answers on at
/// `per_tick` bytes every 10 ms: a slow link to S3.
async fn throttled_s3(upstream: std::net::SocketAddr, per_tick: usize) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut cr, &mut sw).await;
                });
                let mut buf = vec![0u8; per_tick];
                let mut tick = tokio::time::interval(std::time::Duration::from_millis(10));
                loop {
                    tick.tick().await;
                    match sr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if cw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                up.abort();
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_body_from_s3_is_not_cut_by_the_call_timeout() {
    let weed = s3::shared();
    let prefix = s3::unique_prefix("longbody");
    let up = FakeUpstream::start(Options::default()).await;
    let img = docker_image(52, &[3 << 20]);
    up.add_image("library/l", "1", &img);
    let layer = &img.layers[0];
    // Into the bucket through a first mirror.
    let first = tempfile::tempdir().unwrap();
    let a = mirror_on(weed, &up, first.path(), &prefix, "").await;
    let c = client();
    let url = |gw: &Gateway| format!("{}/v2/library/l/blobs/{}", gw.url(0), layer.digest);
    assert_eq!(get_ok(&c, &url(&a)).await, layer.bytes);
    a.settle().await;
    a.stop().await;
    // A second mirror reaches S3 at about 1.6 MB/s: the 3 MiB body takes
    // about two seconds, twice the call timeout. It arrives whole: bodies
    // have no overall timeout (each wait for the next bytes is bounded by
    // read_timeout), and object_store resumes a broken body with a ranged
    // GET that checks the ETag.
    let slow = throttled_s3(weed.addr(), 16 * 1024).await;
    let second = tempfile::tempdir().unwrap();
    let cfg = format!(
        "[storage.s3]\nbucket = \"{}\"\nendpoint = \"http://{slow}\"\nprefix = \"{prefix}\"\n\
         access_key_id = \"{}\"\nsecret_access_key = \"{}\"\nallow_http = true\n\
         request_timeout = \"1s\"\nread_timeout = \"5s\"\n[[listener]]\naddr = \"127.0.0.1:0\"\n{}",
        s3::BUCKET,
        s3::ACCESS_KEY,
        s3::SECRET_KEY,
        upstream_toml("docker.io", &up.url(), "default = true")
    );
    let b = Gateway::start(&cfg, second.path()).await;
    let gets = up.count("GET", "/blobs/");
    assert_eq!(get_ok(&c, &url(&b)).await, layer.bytes);
    assert_eq!(
        up.count("GET", "/blobs/"),
        gets,
        "read from S3, not upstream"
    );
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_commands_work_on_the_bucket() {
    use mirrorgate::store::inventory::{ImageKey, Named};
    let weed = s3::shared();
    let prefix = s3::unique_prefix("inventory");
    let up = FakeUpstream::start(Options::default()).await;
    let base = docker_image(51, &[4000]);
    let a = crate::support::image::docker_image_on(52, &base.layers, &[3000]);
    let b = crate::support::image::docker_image_on(53, &base.layers, &[2000]);
    up.add_image("org/a", "1", &a);
    up.add_image("org/b", "1", &b);
    let c = client();
    let dir = tempfile::tempdir().unwrap();
    let gw = mirror_on(weed, &up, dir.path(), &prefix, "").await;
    pull(&c, &gw, "org/a", "1", &a).await;
    pull(&c, &gw, "org/b", "1", &b).await;
    gw.settle().await;
    let store = gw.app().mirror().store().clone();
    let refs = store.references().await.unwrap();
    let names: Vec<String> = refs.iter().map(|r| r.image.to_string()).collect();
    assert_eq!(names, ["docker.io/org/a:1", "docker.io/org/b:1"]);
    let up_id = mirrorgate::config::UpstreamId::parse("docker.io").unwrap();
    let key = ImageKey::new(
        &up_id,
        "org/a".parse().unwrap(),
        Named::Tag("1".parse().unwrap()),
    );
    let out = store.remove(&key, true).await.unwrap();
    assert_eq!(
        out.blobs.len(),
        3,
        "a's manifest, config and own layer: {out:?}"
    );
    assert!(
        keys_under(weed, blob_key(&prefix, &a.layers[1].digest).as_ref())
            .await
            .is_empty(),
        "a's own layer is gone from the bucket"
    );
    assert_eq!(
        stored(weed, &prefix, &base.layers[0].digest).await,
        base.layers[0].bytes
    );
    let gc = store.gc(std::time::Duration::ZERO, false).await.unwrap();
    assert!(gc.deleted.is_empty(), "everything left is b's: {gc:?}");
    assert_eq!(gc.referenced, 4, "b: manifest, config, two layers");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_land_in_the_bucket_for_every_mirror_and_gc_deletes_them() {
    let weed = s3::shared();
    let prefix = s3::unique_prefix("hosted");
    let up = FakeUpstream::start(Options::default()).await;
    let cfg = format!(
        "{}[[hosted]]\nname = \"local\"\nanonymous_push = true\n",
        mirror_toml(weed, &up, &prefix, "part_size = \"5MiB\"")
    );
    // A layer larger than a part, pushed in chunks; the rest monolithic.
    let img = docker_image(60, &[300_000, 12 << 20]);
    let first = tempfile::tempdir().unwrap();
    let a = Gateway::start(&cfg, first.path()).await;
    // Another mirror on the bucket, with an empty root, running already.
    let second = tempfile::tempdir().unwrap();
    let b = Gateway::start(&cfg, second.path()).await;
    let c = client();
    let base = format!("{}/v2/local/app", a.url(0));
    for b in std::iter::once(&img.config).chain(&img.layers) {
        let r = c
            .post(format!("{base}/blobs/uploads/"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let loc = format!("{}{}", a.url(0), r.headers()["location"].to_str().unwrap());
        let mut at = 0;
        for chunk in b.bytes.chunks(5 << 20) {
            let r = c
                .patch(&loc)
                .header("content-range", format!("{at}-{}", at + chunk.len() - 1))
                .body(chunk.to_vec())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 202);
            at += chunk.len();
        }
        let r = c
            .put(format!("{loc}?digest={}", b.digest))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        // In the bucket, byte for byte.
        assert!(stored(weed, &prefix, &b.digest).await == b.bytes);
    }
    let r = c
        .put(format!("{base}/manifests/v1"))
        .header("content-type", img.manifest.media_type)
        .body(img.manifest.bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // No upload session is left locally, and none is a bucket object.
    assert!(files_under(&first.path().join("uploads")).is_empty());
    // The other mirror serves the push, and keeps it private to its
    // repository (the marks were made after it started).
    pull(&c, &b, "local/app", "v1", &img).await;
    let r = c
        .head(format!(
            "{}/v2/local/other/blobs/{}",
            b.url(0),
            img.layers[0].digest
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let tags: serde_json::Value = c
        .get(format!("{}/v2/local/app/tags/list", b.url(0)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tags["tags"], serde_json::json!(["v1"]));
    assert_eq!(up.requests().len(), 0, "nothing went upstream");

    // Deleted, then collected: the objects leave the bucket.
    let r = c
        .delete(format!("{base}/manifests/{}", img.manifest.digest))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(7200);
    let report = a.app().hosted().gc_at(later).await.unwrap();
    assert_eq!(report.deleted, 4, "{report:?}");
    let left = keys_under(weed, &prefix).await;
    for b in std::iter::once(&img.config)
        .chain(&img.layers)
        .chain([&img.manifest])
    {
        let key = blob_key(&prefix, &b.digest).to_string();
        assert!(!left.contains(&key), "{} left the bucket", b.digest);
    }
}
