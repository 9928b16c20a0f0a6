//! Bounded disk: least-recently-used eviction under `[storage] max_size`,
//! never evicting a blob that is being served.

use std::time::Duration;

use futures_util::StreamExt;

use crate::support::image::docker_image;
use crate::support::*;

fn stored(root: &std::path::Path) -> u64 {
    files_under(&root.join("blobs"))
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .sum()
}

async fn settle(root: &std::path::Path, max: u64) {
    for _ in 0..200 {
        if stored(root) <= max {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("store stayed over its budget: {} > {max}", stored(root));
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
    for l in &img.layers {
        let r = c
            .get(format!("{}/v2/library/d/blobs/{}", gw.url(0), l.digest))
            .send()
            .await
            .unwrap();
        assert_eq!(r.bytes().await.unwrap(), l.bytes);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    settle(dir.path(), MIB as u64).await;
    assert_store_verified(dir.path());
    // The most recent survive, the oldest went first.
    let present = |d: &str| {
        dir.path()
            .join("blobs/sha256")
            .join(&d[7..9])
            .join(&d[7..])
            .exists()
    };
    assert!(present(&img.layers[7].digest));
    assert!(!present(&img.layers[0].digest));
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
    let slow = c.get(url(0)).send().await.unwrap();
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
    }
    settle(dir.path(), 40 * MIB as u64).await;
    let a = &img.layers[0].digest;
    assert!(
        dir.path()
            .join("blobs/sha256")
            .join(&a[7..9])
            .join(&a[7..])
            .exists(),
        "A is being served"
    );
    let mut body = Vec::new();
    let mut s = slow.bytes_stream();
    while let Some(chunk) = s.next().await {
        body.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(body, img.layers[0].bytes);
    gw.stop().await;
}
