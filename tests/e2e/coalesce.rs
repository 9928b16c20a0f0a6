//! Concurrent misses cause one upstream request, and followers stream.

use std::time::Duration;

use futures_util::StreamExt;

use crate::support::image::docker_image;
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_concurrent_cold_blob_requests_cause_one_upstream_get() {
    let up = FakeUpstream::start(Options::default()).await;
    let img = docker_image(20, &[2 * 1024 * 1024]);
    up.add_image("library/co", "1", &img);
    let layer = img.layers[0].clone();
    // Upstream sends the first part, then waits until all eight requests
    // are in the mirror, so every one of them meets the running download.
    let gate = up.hold_blobs_after(64 * 1024);
    let dir = tempfile::tempdir().unwrap();
    let gw = single(&up, dir.path(), "").await;
    let c = client();
    let url = format!("{}/v2/library/co/blobs/{}", gw.url(0), layer.digest);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (c, url) = (c.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let r = c.get(&url).send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.bytes().await.unwrap()
        }));
    }
    gw.wait_in_flight(8).await;
    gate.release();
    for t in tasks {
        assert_eq!(t.await.unwrap(), layer.bytes);
    }
    assert_eq!(up.count("GET", "/blobs/"), 1, "exactly one upstream GET");
    gw.settle().await;
    assert_store_verified(dir.path());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_stream_before_the_download_finishes() {
    let up = FakeUpstream::start(Options::default()).await;
    let img = docker_image(21, &[1024 * 1024]);
    up.add_image("library/st", "1", &img);
    let layer = img.layers[0].clone();
    // Upstream sends the first part of the body, then waits for the gate.
    let gate = up.hold_blobs_after(256 * 1024);
    let dir = tempfile::tempdir().unwrap();
    let gw = single(&up, dir.path(), "").await;
    let c = client();
    let url = format!("{}/v2/library/st/blobs/{}", gw.url(0), layer.digest);
    let mut streams = Vec::new();
    for _ in 0..4 {
        let r = c.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()["content-length"],
            (1024 * 1024).to_string().as_str()
        );
        streams.push(r.bytes_stream());
    }
    // While upstream is held, every client (leader and followers) already
    // receives bytes.
    let mut firsts = Vec::new();
    for s in &mut streams {
        let chunk = tokio::time::timeout(Duration::from_secs(60), s.next())
            .await
            .expect("bytes arrive while upstream is still sending")
            .unwrap()
            .unwrap();
        assert!(!chunk.is_empty());
        firsts.push(chunk);
    }
    assert_eq!(up.count("GET", "/blobs/"), 1);
    gate.release();
    for (first, mut s) in firsts.into_iter().zip(streams) {
        let mut body = first.to_vec();
        while let Some(c) = s.next().await {
            body.extend_from_slice(&c.unwrap());
        }
        assert_eq!(body, layer.bytes);
    }
    assert_eq!(up.count("GET", "/blobs/"), 1);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caching_finishes_when_the_first_client_disconnects() {
    let up = FakeUpstream::start(Options::default()).await;
    let img = docker_image(22, &[1024 * 1024]);
    up.add_image("library/dc", "1", &img);
    let layer = img.layers[0].clone();
    let gate = up.hold_blobs_after(64 * 1024);
    let dir = tempfile::tempdir().unwrap();
    let gw = single(&up, dir.path(), "").await;
    let c = client();
    let url = format!("{}/v2/library/dc/blobs/{}", gw.url(0), layer.digest);
    let r = c.get(&url).send().await.unwrap();
    let mut s = r.bytes_stream();
    s.next().await.unwrap().unwrap();
    drop(s); // the client goes away mid-download
    gate.release();
    // The download completes in the background and lands in the store.
    gw.settle().await;
    let stored = dir
        .path()
        .join("blobs/sha256")
        .join(&layer.digest[7..9])
        .join(&layer.digest[7..]);
    assert!(stored.exists(), "blob cached after the client left");
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.bytes().await.unwrap(), layer.bytes);
    assert_eq!(up.count("GET", "/blobs/"), 1);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cold_manifest_requests_cause_one_upstream_get() {
    let up = FakeUpstream::start(Options::default()).await;
    let a = docker_image(23, &[10]);
    let b = docker_image(24, &[10]);
    up.add_image("library/cm", "a", &a);
    up.add_image("library/cm", "b", &b);
    let dir = tempfile::tempdir().unwrap();
    let gw = single(&up, dir.path(), "").await;
    let c = client();
    // 8 by tag, then 8 by (another) digest; upstream holds each response
    // until all 8 requests are surely waiting.
    for (path, want) in [("a".to_owned(), &a), (b.manifest.digest.clone(), &b)] {
        // The previous round's responses are over, so the gauge counts only
        // this round's requests.
        wait_until("no request in flight", || {
            gw.metrics().requests_in_flight() == 0
        })
        .await;
        let gate = up.hold_manifests();
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let c = c.clone();
            let url = format!("{}/v2/library/cm/manifests/{path}", gw.url(0));
            tasks.push(tokio::spawn(async move {
                let r = c
                    .get(url)
                    .header("accept", ACCEPT_ALL)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                r.bytes().await.unwrap()
            }));
        }
        gate.wait_for_requests(1).await;
        gw.wait_in_flight(8).await;
        gate.release();
        for t in tasks {
            assert_eq!(t.await.unwrap(), want.manifest.bytes);
        }
    }
    assert_eq!(
        up.count("GET", "/manifests/"),
        2,
        "one GET per cold manifest"
    );
    assert_eq!(up.count("HEAD", "/manifests/"), 0);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cold_blobs_share_one_fill_memory_budget() {
    let up = FakeUpstream::start(Options::default()).await;
    let img = crate::support::image::docker_image(95, &[6 << 20, 6 << 20, 6 << 20, 6 << 20]);
    up.add_image("library/budget", "1", &img);
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "[server]\nfill_memory = \"1MiB\"\n[[listener]]\naddr = \"127.0.0.1:0\"\n{}",
        upstream_toml("docker.io", &up.url(), "default = true")
    );
    let gw = Gateway::start(&cfg, dir.path()).await;
    let c = client();
    // Four cold blobs at once, each followed by three clients: with the
    // budget spent, followers read from the spool; every body is whole.
    let mut tasks = Vec::new();
    for l in &img.layers {
        for _ in 0..3 {
            let (c, url, want) = (
                c.clone(),
                format!("{}/v2/library/budget/blobs/{}", gw.url(0), l.digest),
                l.bytes.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let r = c.get(url).send().await.unwrap();
                assert_eq!(r.status(), 200);
                assert!(r.bytes().await.unwrap() == want);
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    gw.settle().await;
    assert_eq!(up.count("GET", "/blobs/"), 4, "one upstream GET per blob");
    // Every fill gave its memory back.
    let app = gw.app();
    assert_eq!(app.mirror().fill_memory(), 0);
    gw.stop().await;
}
