//! Three replicas of the real binary on one SeaweedFS bucket, each on its
//! own loopback address: a cold blob crosses the upstream link once for the
//! fleet; a holder killed (SIGKILL) or frozen (SIGSTOP) mid-fill is taken
//! over with a ranged GET; the internal endpoint refuses unsigned requests.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;

use crate::support::image::{self, docker_image};
use crate::support::s3::{self, Weed};
use crate::support::*;

const SECRET: &str = "cluster-test-secret-0123456789";

/// A replica's addresses: clients on `ip:<any>`, the internal endpoint on
/// `ip:<port>` (a free port, since `advertise` must name it).
fn replica_config(
    dir: &Path,
    weed: &Weed,
    prefix: &str,
    up: &FakeUpstream,
    up_extra: &str,
    ip: IpAddr,
    cut_off: bool,
) -> PathBuf {
    let internal = std::net::TcpListener::bind((ip, 0)).unwrap();
    let port = internal.local_addr().unwrap().port();
    drop(internal);
    // Cut off: it advertises an address where nothing listens, so the
    // others cannot reach it, while it reaches the bucket and renews.
    let advertised = if cut_off { 9 } else { port };
    let cfg = dir.join("mirrorgate.toml");
    std::fs::write(
        &cfg,
        format!(
            "[storage]\nroot = \"data\"\n{}[[listener]]\naddr = \"{ip}:0\"\n\
             [cluster]\nlisten = \"{ip}:{port}\"\nadvertise = \"http://{ip}:{advertised}\"\n\
             secret = \"{SECRET}\"\nlease_ttl = \"2s\"\n{}",
            weed.storage_toml(prefix, "part_size = \"5MiB\""),
            upstream_toml(
                "docker.io",
                &up.url(),
                &format!("default = true\n{up_extra}")
            )
        ),
    )
    .unwrap();
    cfg
}

struct Fleet {
    procs: Vec<Option<Proc>>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Fleet {
    /// `n` replicas; the first one cut off from the others if `cut_off`.
    async fn start(
        weed: &Weed,
        prefix: &str,
        up: &FakeUpstream,
        up_extra: &str,
        n: usize,
        cut_off: bool,
    ) -> Self {
        let mut procs = Vec::new();
        let mut dirs = Vec::new();
        for i in 0..n {
            let dir = tempfile::tempdir().unwrap();
            let ip: IpAddr = format!("127.0.0.{}", 11 + i).parse().unwrap();
            let cfg = replica_config(
                dir.path(),
                weed,
                prefix,
                up,
                up_extra,
                ip,
                cut_off && i == 0,
            );
            let mut cmd = serve_command(&cfg);
            cmd.current_dir(dir.path());
            procs.push(Some(spawn_command(cmd).await));
            dirs.push(dir);
        }
        Self { procs, _dirs: dirs }
    }

    fn replica(&self, i: usize) -> &Proc {
        self.procs[i].as_ref().expect("replica running")
    }

    fn url(&self, i: usize, path: &str) -> String {
        format!("{}{path}", self.replica(i).url())
    }

    fn internal(&self, i: usize) -> SocketAddr {
        self.replica(i).addr(1)
    }

    /// Every running replica's log, for a failure message.
    fn logs(&self) -> String {
        self.procs
            .iter()
            .enumerate()
            .filter_map(|(i, p)| Some(format!("--- replica {i}\n{}", p.as_ref()?.log())))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The body client `c` got: whole and hashing to `digest` (else a
    /// failure with every replica's log).
    async fn whole(&self, c: tokio::task::JoinHandle<Option<Bytes>>, digest: &str) -> Bytes {
        let body = c
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("a whole body; logs:\n{}", self.logs()));
        assert_eq!(image::sha256_digest(&body), digest);
        body
    }

    /// SIGKILL.
    fn kill(&mut self, i: usize) {
        self.procs[i] = None;
    }

    fn signal(&self, i: usize, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([sig, &self.replica(i).pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    }
}

/// GETs `url` to the end: the body, or `None` if it broke off.
fn get(url: String) -> tokio::task::JoinHandle<Option<Bytes>> {
    tokio::spawn(async move {
        let r = client().get(&url).send().await.ok()?;
        if r.status() != 200 {
            return None;
        }
        r.bytes().await.ok()
    })
}

fn blob_gets(up: &FakeUpstream, digest: &str) -> Vec<Option<String>> {
    up.requests()
        .into_iter()
        .filter(|r| r.server == "registry" && r.method == "GET" && r.path.ends_with(digest))
        .map(|r| r.header("range").map(str::to_owned))
        .collect()
}

/// Waits until no lease is left in the bucket under `prefix`.
async fn no_leases(weed: &Weed, prefix: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let left = s3::keys_under(weed, &format!("{prefix}/leases/")).await;
        if left.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "leases left: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A fleet of `n` replicas in front of one upstream that holds one image
/// with one layer of `size` bytes (`library/<name>:1`), on its own prefix
/// of the shared bucket.
struct Scene {
    weed: &'static Weed,
    prefix: String,
    up: FakeUpstream,
    layer: crate::support::image::Blob,
    fleet: Fleet,
    /// The layer's blob path.
    path: String,
}

impl Scene {
    /// The scene; `before` runs on the upstream before the replicas start
    /// (gates, knobs).
    async fn start<T>(
        name: &str,
        seed: u64,
        size: usize,
        n: usize,
        up_extra: &str,
        cut_off: bool,
        before: impl FnOnce(&FakeUpstream) -> T,
    ) -> (Self, T) {
        let weed = s3::shared();
        let prefix = s3::unique_prefix(&format!("cluster-{name}"));
        let up = FakeUpstream::start(Options::default()).await;
        let img = docker_image(seed, &[size]);
        up.add_image(&format!("library/{name}"), "1", &img);
        let layer = img.layers[0].clone();
        let t = before(&up);
        let fleet = Fleet::start(weed, &prefix, &up, up_extra, n, cut_off).await;
        let path = format!("/v2/library/{name}/blobs/{}", layer.digest);
        let scene = Self {
            weed,
            prefix,
            up,
            layer,
            fleet,
            path,
        };
        (scene, t)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_fetch_a_cold_blob_once_and_stream_it_as_it_arrives() {
    // Upstream sends 4 MiB, then waits: every replica's clients must be
    // streaming before the blob is whole anywhere.
    let (sc, gate) = Scene::start("fleet", 70, 24 << 20, 3, "", false, |up| {
        up.hold_blobs_after(4 << 20)
    })
    .await;
    let Scene {
        weed,
        prefix,
        up,
        layer,
        fleet,
        path,
    } = &sc;
    let (weed, layer, fleet) = (*weed, layer, fleet);

    let mut clients = vec![get(fleet.url(0, path))];
    gate.wait_for_requests(1).await;
    for i in [1, 2, 0, 1, 2] {
        clients.push(get(fleet.url(i, path)));
    }
    for i in [1, 2] {
        fleet
            .replica(i)
            .wait_for_log("following the holder", |l| {
                l.contains("streaming a blob from the replica that fetches it")
            })
            .await;
    }
    gate.release();
    for c in clients {
        fleet.whole(c, &layer.digest).await;
    }
    assert_eq!(
        blob_gets(up, &layer.digest),
        vec![None],
        "one upstream GET for the fleet"
    );
    no_leases(weed, prefix).await;
    assert!(s3::stored(weed, prefix, &layer.digest).await == layer.bytes);
    // Every replica kept a copy in its read tier: the next GETs are local.
    for i in 0..3 {
        let body = get(fleet.url(i, path)).await.unwrap().unwrap();
        assert!(body == layer.bytes);
    }
    assert_eq!(blob_gets(up, &layer.digest).len(), 1);
}

/// Starts a fill on replica 0 (the holder) with followers on 1 and 2, all
/// waiting at upstream's gate after 4 MiB.
async fn fill_with_followers(
    fleet: &Fleet,
    path: &str,
    gate: &crate::support::fake_upstream::Gate,
) -> Vec<tokio::task::JoinHandle<Option<Bytes>>> {
    let holder = get(fleet.url(0, path));
    gate.wait_for_requests(1).await;
    let followers = vec![get(fleet.url(1, path)), get(fleet.url(2, path))];
    for i in [1, 2] {
        fleet
            .replica(i)
            .wait_for_log("following the holder", |l| {
                l.contains("streaming a blob from the replica that fetches it")
            })
            .await;
    }
    std::iter::once(holder).chain(followers).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_holder_is_taken_over_with_a_ranged_get() {
    let (sc, gate) = Scene::start("kill", 71, 20 << 20, 3, "", false, |up| {
        up.hold_blobs_after(4 << 20)
    })
    .await;
    let Scene {
        weed,
        prefix,
        up,
        layer,
        mut fleet,
        path,
    } = sc;
    let mut clients = fill_with_followers(&fleet, &path, &gate).await;

    let killed_at = tokio::time::Instant::now();
    fleet.kill(0);
    gate.release();
    let on_killed = clients.remove(0);
    for c in clients {
        fleet.whole(c, &layer.digest).await;
    }
    let took = killed_at.elapsed();
    // The killed replica's client broke off; like a client behind a load
    // balancer, it retries on another replica.
    if let Some(b) = on_killed.await.unwrap() {
        assert!(
            b.len() < layer.bytes.len(),
            "a killed download must not look whole"
        );
    }
    let body = get(fleet.url(1, &path)).await.unwrap().unwrap();
    assert!(body == layer.bytes);
    let gets = blob_gets(&up, &layer.digest);
    assert_eq!(gets.len(), 2, "the holder's GET and one takeover: {gets:?}");
    assert_eq!(gets[0], None);
    let from: u64 = gets[1]
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok())
        .expect("the takeover resumes with a ranged GET");
    // From the bytes the follower had (the holder had sent it some of the
    // 4 MiB upstream let through).
    assert!(from > 0 && from <= 4 << 20, "resumed at {from}");
    no_leases(weed, &prefix).await;
    assert!(s3::stored(weed, &prefix, &layer.digest).await == layer.bytes);
    // The killed holder's multipart upload is left to the sweeper
    // (`abandoned_upload_age`); it never completes.
    eprintln!("takeover after SIGKILL: followers done {took:?} after the kill (lease_ttl 2s)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_holder_is_taken_over_and_completes_nothing_when_it_wakes() {
    let (sc, gate) = Scene::start("stop", 72, 20 << 20, 3, "", false, |up| {
        up.hold_blobs_after(4 << 20)
    })
    .await;
    let Scene {
        weed,
        prefix,
        up,
        layer,
        fleet,
        path,
    } = sc;
    let mut clients = fill_with_followers(&fleet, &path, &gate).await;

    fleet.signal(0, "-STOP");
    // A follower takes over once the lease goes unrenewed for lease_ttl;
    // its ranged GET reaches upstream (and its gate, which opens now).
    gate.wait_for_requests(2).await;
    gate.release();
    let on_frozen = clients.remove(0);
    for c in clients {
        fleet.whole(c, &layer.digest).await;
    }
    no_leases(weed, &prefix).await;
    assert!(s3::stored(weed, &prefix, &layer.digest).await == layer.bytes);

    // The holder wakes: its renewal is refused, it gives the fill up.
    fleet.signal(0, "-CONT");
    fleet
        .replica(0)
        .wait_for_log("the lost lease", |l| {
            l.contains("taken over by another replica")
        })
        .await;
    if let Some(b) = on_frozen.await.unwrap() {
        assert!(
            b == layer.bytes,
            "whatever the frozen replica's client got is whole and right, or nothing"
        );
    }
    // Nothing of its upload is left, and the object is still right.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !s3::keys_under(weed, &format!("{prefix}/uploads/"))
        .await
        .is_empty()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the frozen holder's upload was not aborted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(s3::stored(weed, &prefix, &layer.digest).await == layer.bytes);
    let gets = blob_gets(&up, &layer.digest);
    assert_eq!(gets.len(), 2, "{gets:?}; logs:\n{}", fleet.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_internal_endpoint_refuses_unsigned_and_forged_requests() {
    let (sc, ()) = Scene::start("auth", 73, 100_000, 1, "", false, |_| ()).await;
    let Scene {
        up,
        layer,
        fleet,
        path,
        ..
    } = sc;
    // Stored, so a signed request would get it.
    let body = get(fleet.url(0, &path)).await.unwrap().unwrap();
    assert!(body == layer.bytes);
    let internal = format!(
        "http://{}/_mirrorgate/v1/blobs/{}?upstream=docker.io&repo=library/auth&private_repo=0&reads_private=1",
        fleet.internal(0),
        layer.digest
    );
    let c = client();
    let r = c.get(&internal).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(error_code(r).await, "DENIED");
    let r = c
        .get(&internal)
        .header("x-mirrorgate-signature", "1800000000000.00ff")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // Registry paths are not served there either: it is no client listener.
    let r = c
        .get(format!(
            "http://{}/v2/library/auth/blobs/{}",
            fleet.internal(0),
            layer.digest
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        blob_gets(&up, &layer.digest).len(),
        1,
        "nothing went upstream for them"
    );
}

/// `GET` with the Accept header containerd sends: the manifest bytes.
fn get_manifest(url: String) -> tokio::task::JoinHandle<Option<Bytes>> {
    tokio::spawn(async move {
        let r = client()
            .get(&url)
            .header("accept", ACCEPT_ALL)
            .send()
            .await
            .ok()?;
        if r.status() != 200 {
            return None;
        }
        r.bytes().await.ok()
    })
}

fn manifest_requests(up: &FakeUpstream, method: &str) -> usize {
    up.requests()
        .iter()
        .filter(|r| r.server == "registry" && r.method == method && r.path.contains("/manifests/"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_is_resolved_and_revalidated_upstream_once_for_the_fleet() {
    let (sc, gate) = Scene::start("tags", 74, 1000, 3, "tag_ttl = \"2s\"", false, |up| {
        up.hold_manifests()
    })
    .await;
    let Scene { up, fleet, .. } = &sc;
    let tag = "/v2/library/tags/manifests/1";
    // The first resolution waits at upstream while every replica asks.
    let mut clients = vec![get_manifest(fleet.url(0, tag))];
    gate.wait_for_requests(1).await;
    for i in [1, 2, 0, 1, 2] {
        clients.push(get_manifest(fleet.url(i, tag)));
    }
    gate.release();
    let mut bodies = Vec::new();
    for c in clients {
        bodies.push(
            c.await
                .unwrap()
                .unwrap_or_else(|| panic!("a manifest; logs:\n{}", fleet.logs())),
        );
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(manifest_requests(up, "GET"), 1, "one GET for the fleet");
    assert_eq!(manifest_requests(up, "HEAD"), 0);

    // Past the TTL, every replica revalidates at once: one HEAD for all.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let gate = up.hold_manifests();
    let mut clients = vec![get_manifest(fleet.url(1, tag))];
    gate.wait_for_requests(1).await;
    for i in [0, 2, 1, 0, 2] {
        clients.push(get_manifest(fleet.url(i, tag)));
    }
    gate.release();
    for c in clients {
        let b = c
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("a manifest; logs:\n{}", fleet.logs()));
        assert!(b == bodies[0]);
    }
    assert_eq!(manifest_requests(up, "HEAD"), 1, "one HEAD for the fleet");
    assert_eq!(manifest_requests(up, "GET"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_the_others_cannot_reach_is_given_up_after_the_lease_ttl() {
    let (sc, gate) = Scene::start("cut", 75, 12 << 20, 2, "", true, |up| {
        up.hold_blobs_after(4 << 20)
    })
    .await;
    let Scene {
        up,
        layer,
        fleet,
        path,
        ..
    } = &sc;
    // Replica 0 holds the lease and renews it, but replica 1 cannot reach
    // it: after lease_ttl replica 1 fetches on its own.
    let holder = get(fleet.url(0, path));
    gate.wait_for_requests(1).await;
    let cut = get(fleet.url(1, path));
    gate.wait_for_requests(2).await;
    gate.release();
    for c in [holder, cut] {
        fleet.whole(c, &layer.digest).await;
    }
    fleet
        .replica(1)
        .wait_for_log("fetching alone", |l| {
            l.contains("cannot be reached; fetching alone")
        })
        .await;
    assert_eq!(blob_gets(up, &layer.digest).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_stopped_with_sigterm_hands_its_fill_over() {
    let (sc, gate) = Scene::start("term", 76, 12 << 20, 2, "", false, |up| {
        up.hold_blobs_after(4 << 20)
    })
    .await;
    let Scene {
        weed,
        prefix,
        up,
        layer,
        fleet,
        path,
    } = &sc;
    let holder = get(fleet.url(0, path));
    gate.wait_for_requests(1).await;
    let follower = get(fleet.url(1, path));
    fleet
        .replica(1)
        .wait_for_log("following the holder", |l| {
            l.contains("streaming a blob from the replica that fetches it")
        })
        .await;
    // SIGTERM while upstream holds the fill: the holder stops taking
    // clients, waits out its grace period, then releases the lease, and the
    // follower takes the fill over at once (no lease_ttl to wait for).
    fleet.signal(0, "-TERM");
    fleet
        .replica(0)
        .wait_for_log("the hand-over", |l| {
            l.contains("released the leases of unfinished fills")
        })
        .await;
    gate.wait_for_requests(2).await;
    gate.release();
    fleet.whole(follower, &layer.digest).await;
    if let Some(b) = holder.await.unwrap() {
        assert!(b.len() < layer.bytes.len() || b == layer.bytes);
    }
    let gets = blob_gets(up, &layer.digest);
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert!(
        gets[1].is_some(),
        "the hand-over resumes with a ranged GET: {gets:?}"
    );
    no_leases(weed, prefix).await;
    assert!(s3::stored(weed, prefix, &layer.digest).await == layer.bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_arriving_after_the_holder_froze_is_served_by_a_takeover() {
    let (sc, gate) = Scene::start("late", 77, 12 << 20, 2, "", false, |up| {
        up.hold_blobs_after(4 << 20)
    })
    .await;
    let Scene {
        up,
        layer,
        fleet,
        path,
        ..
    } = &sc;
    let _holder = get(fleet.url(0, path));
    gate.wait_for_requests(1).await;
    // Frozen before anyone follows it: the kernel still accepts a
    // follower's connection, and nothing answers on it.
    fleet.signal(0, "-STOP");
    let late = get(fleet.url(1, path));
    gate.wait_for_requests(2).await;
    gate.release();
    fleet.whole(late, &layer.digest).await;
    assert_eq!(blob_gets(up, &layer.digest).len(), 2);
    fleet.signal(0, "-CONT");
}
