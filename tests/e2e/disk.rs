//! Bounded disk: least-recently-used eviction under `[storage] max_size`,
//! never evicting a blob that is being served.

use crate::support::image::docker_image;
use crate::support::*;

fn stored(root: &std::path::Path) -> u64 {
    files_under(&root.join("blobs"))
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .sum()
}

fn is_stored(root: &std::path::Path, digest: &str) -> bool {
    root.join("blobs/sha256")
        .join(&digest[7..9])
        .join(&digest[7..])
        .exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_keeps_the_store_under_max_size_by_last_access() {
    const MIB: usize = 1024 * 1024;
    let up = FakeUpstream::start(Options::default()).await;
    let img = docker_image(90, &[MIB / 4; 8]);
    up.add_image("library/d", "1", &img);
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(
        &format!(
            "[storage]\nmax_size = \"1MiB\"\n[[listener]]\naddr = \"127.0.0.1:0\"\n{}",
            upstream_toml("docker.io", &up.url(), "default = true")
        ),
        dir.path(),
    )
    .await;
    let c = client();
    for (i, l) in img.layers.iter().enumerate() {
        let r = c
            .get(format!("{}/v2/library/d/blobs/{}", gw.url(0), l.digest))
            .send()
            .await
            .unwrap();
        assert_eq!(r.bytes().await.unwrap(), l.bytes);
        // Committed, and evicted down to 90% of the budget if it went over.
        gw.settle().await;
        assert!(
            stored(dir.path()) <= MIB as u64,
            "over budget after blob {i}"
        );
        assert!(is_stored(dir.path(), &l.digest), "blob {i} just committed");
    }
    assert_store_verified(dir.path());
    // 256 KiB blobs under 1 MiB: the 5th commit evicts the two oldest (down
    // to 0.9 MiB), the 7th the next two. The most recent four survive.
    let present: Vec<bool> = img
        .layers
        .iter()
        .map(|l| is_stored(dir.path(), &l.digest))
        .collect();
    assert_eq!(
        present,
        [false, false, false, false, true, true, true, true],
        "least recently used evicted first"
    );
    let metrics = gw.metrics_text().await;
    assert!(
        metrics.contains("\nmirrorgate_store_evictions_total 4\n"),
        "four evictions counted:\n{metrics}"
    );
    assert!(metrics.contains("\nmirrorgate_fills_in_flight 0\n"));
    // An evicted blob is simply fetched again.
    let r = c
        .get(format!(
            "{}/v2/library/d/blobs/{}",
            gw.url(0),
            img.layers[0].digest
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap(), img.layers[0].bytes);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_being_served_is_never_evicted() {
    const MIB: usize = 1024 * 1024;
    let up = FakeUpstream::start(Options::default()).await;
    let img = docker_image(91, &[16 * MIB; 4]);
    up.add_image("library/busy", "1", &img);
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(
        &format!(
            "[storage]\nmax_size = \"40MiB\"\n[[listener]]\naddr = \"127.0.0.1:0\"\n{}",
            upstream_toml("docker.io", &up.url(), "default = true")
        ),
        dir.path(),
    )
    .await;
    let c = client();
    let url = |i: usize| {
        format!(
            "{}/v2/library/busy/blobs/{}",
            gw.url(0),
            img.layers[i].digest
        )
    };
    // Cache A, then start serving it to a client that does not read yet.
    assert_eq!(
        c.get(url(0))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .len(),
        16 * MIB
    );
    gw.settle().await;
    let path = format!("/v2/library/busy/blobs/{}", img.layers[0].digest);
    let slow = StalledGet::start(gw.addrs[0], &path).await;
    // B, C, D push the store to 64 MiB; eviction must skip A (the oldest).
    for i in 1..4 {
        assert_eq!(
            c.get(url(i))
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
                .len(),
            16 * MIB
        );
        gw.settle().await;
    }
    assert!(stored(dir.path()) <= 40 * MIB as u64, "eviction ran");
    assert!(
        is_stored(dir.path(), &img.layers[0].digest),
        "A is being served"
    );
    assert!(
        !is_stored(dir.path(), &img.layers[1].digest),
        "B, the oldest not in use, went instead"
    );
    assert_eq!(slow.finish().await, img.layers[0].bytes);
    gw.stop().await;
}

/// A GET whose client reads the response head and then nothing more, on a
/// socket with a tiny receive buffer: the mirror cannot finish sending a
/// blob far larger than the socket buffers, so that blob stays being served
/// (whatever the machine's load) until [`StalledGet::finish`].
struct StalledGet {
    stream: tokio::net::TcpStream,
    read: Vec<u8>,
}

impl StalledGet {
    async fn start(addr: std::net::SocketAddr, path: &str) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut stream = socket.connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: mirror\r\nConnection: close\r\n\r\n");
        stream.write_all(req.as_bytes()).await.unwrap();
        // The head is sent once the blob is open (and held from eviction).
        let mut read = Vec::new();
        let mut buf = [0u8; 1024];
        while !read.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed before the response head");
            read.extend_from_slice(&buf[..n]);
        }
        assert!(
            read.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&read)
        );
        Self { stream, read }
    }

    /// Reads the rest and returns the body.
    async fn finish(mut self) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        self.stream.read_to_end(&mut self.read).await.unwrap();
        let head_end = self.read.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        self.read.split_off(head_end)
    }
}

/// Fills the filesystem at `dir` completely.
fn fill_up(dir: &std::path::Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join("filler")).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.write_all(&chunk[..1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_streams_through_without_caching() {
    const MIB: usize = 1024 * 1024;
    // Over TLS with HTTP/2 (`http2 = true`), upstream's body arrives in many
    // small chunks at once, so the write that hits ENOSPC fails in the
    // middle of a batch: the rest of that batch must still be hashed.
    let dir = tempfile::tempdir().unwrap();
    let (up, trust) = FakeUpstream::start_tls(
        crate::support::fake_upstream::test_ca_and_identity(),
        dir.path(),
    )
    .await;
    let extra = format!("default = true\nhttp2 = true\n{trust}");
    let big = docker_image(97, &[6 * MIB]);
    let small = docker_image(98, &[20_000]);
    up.add_image("library/big", "1", &big);
    up.add_image("library/small", "1", &small);
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    // 4 MiB: smaller than the big blob, and room enough, once the filler
    // below is gone, for the small one next to the blob index (whose file
    // grows in steps of its own while the disk fills and frees).
    let _fs = SmallFs::mount(&data, "4m");
    let gw = Gateway::start(
        &format!(
            "[[listener]]\naddr = \"127.0.0.1:0\"\n{}",
            upstream_toml("docker.io", &up.url(), &extra)
        ),
        &data,
    )
    .await;
    let c = client();
    let big_url = format!(
        "{}/v2/library/big/blobs/{}",
        gw.url(0),
        big.layers[0].digest
    );

    // A 6 MiB blob on a 4 MiB disk: the store fails mid-write (ENOSPC), yet
    // both concurrent clients get the whole, verified blob.
    let (a, b) = tokio::join!(c.get(&big_url).send(), c.get(&big_url).send());
    for r in [a.unwrap(), b.unwrap()] {
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.unwrap(), big.layers[0].bytes);
    }
    gw.settle().await;
    // Nothing partial or corrupt was left behind, and nothing was cached.
    assert!(files_under(&data.join("tmp")).is_empty(), "temp files left");
    assert_store_verified(&data);
    assert!(
        !files_under(&data.join("blobs"))
            .iter()
            .any(|f| f.ends_with(&big.layers[0].digest[7..]))
    );

    // With the disk completely full, manifests and small blobs still flow.
    fill_up(&data);
    let m = c
        .get(format!("{}/v2/library/small/manifests/1", gw.url(0)))
        .header("accept", ACCEPT_ALL)
        .send()
        .await
        .unwrap();
    assert_eq!(m.status(), 200);
    assert_eq!(m.bytes().await.unwrap(), small.manifest.bytes);
    let small_url = format!(
        "{}/v2/library/small/blobs/{}",
        gw.url(0),
        small.layers[0].digest
    );
    let r = c.get(&small_url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), small.layers[0].bytes);
    let r = c.get(&big_url).send().await.unwrap();
    assert_eq!(r.bytes().await.unwrap(), big.layers[0].bytes);
    assert_store_verified(&data);

    // Space again: the next pull caches as usual.
    gw.settle().await;
    std::fs::remove_file(data.join("filler")).unwrap();
    let before = up.count("GET", &small.layers[0].digest);
    for _ in 0..2 {
        let r = c.get(&small_url).send().await.unwrap();
        assert_eq!(r.bytes().await.unwrap(), small.layers[0].bytes);
    }
    assert_eq!(up.count("GET", &small.layers[0].digest), before + 1);
    assert_store_verified(&data);
    gw.stop().await;
}
