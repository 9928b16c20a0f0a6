//! Load: 200 concurrent clients, each on its own connection, pull a mix of
//! cached and uncached images (sharing a base layer) through the real
//! binary. No request may fail, every byte must verify, every blob must be
//! fetched upstream exactly once, and the mirror's peak memory must stay
//! bounded. Figures are printed (run with `--nocapture`); speed is not
//! asserted.

use std::time::Instant;

use crate::support::image::{Image, docker_image, docker_image_on, sha256_digest};
use crate::support::*;

const CLIENTS: usize = 200;
const IMAGES: usize = 16;
/// A generous bound: the process idles near 10 MiB and streams blobs in
/// 256 KiB reads; buffering whole blobs per client would exceed it.
const PEAK_RSS_LIMIT_MIB: u64 = 160;

async fn pull(c: &reqwest::Client, base: &str, repo: &str, img: &Image) -> Result<u64, String> {
    let m = c
        .get(format!("{base}/v2/{repo}/manifests/1"))
        .header("accept", ACCEPT_ALL)
        .send()
        .await
        .map_err(|e| format!("{repo} manifest: {e}"))?;
    if m.status() != 200 {
        return Err(format!("{repo} manifest: status {}", m.status()));
    }
    let bytes = m
        .bytes()
        .await
        .map_err(|e| format!("{repo} manifest body: {e}"))?;
    if bytes != img.manifest.bytes {
        return Err(format!("{repo}: manifest bytes differ"));
    }
    let mut total = bytes.len() as u64;
    for b in img.layers.iter().chain([&img.config]) {
        let r = c
            .get(format!("{base}/v2/{repo}/blobs/{}", b.digest))
            .send()
            .await
            .map_err(|e| format!("{repo} blob: {e}"))?;
        if r.status() != 200 {
            return Err(format!("{repo} blob {}: status {}", b.digest, r.status()));
        }
        let body = r
            .bytes()
            .await
            .map_err(|e| format!("{repo} blob body: {e}"))?;
        if sha256_digest(&body) != b.digest {
            return Err(format!("{repo} blob {}: digest mismatch", b.digest));
        }
        total += body.len() as u64;
    }
    Ok(total)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_mixed_cached_and_cold() {
    let up = FakeUpstream::start(Options::default()).await;
    // Every image: a shared 2 MiB base layer, its own 512 KiB and 64 KiB
    // layers, and a config.
    let base_layer = docker_image(500, &[2 * 1024 * 1024]).layers[0].clone();
    let mut images = Vec::new();
    for i in 0..IMAGES {
        let img = docker_image_on(
            600 + i as u64,
            std::slice::from_ref(&base_layer),
            &[512 * 1024, 64 * 1024],
        );
        up.add_image(&format!("library/load{i}"), "1", &img);
        images.push(img);
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &up.url(), "");
    let mirror = spawn(&cfg).await;
    let base = mirror.url();
    let idle_kib = mirror.status_kib("VmRSS");

    // Half the images are cached before the load starts.
    let c = client();
    for (i, img) in images.iter().enumerate().take(IMAGES / 2) {
        pull(&c, &base, &format!("load{i}"), img).await.unwrap();
    }

    let start = Instant::now();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|n| {
            // Its own client: its own connection(s).
            let c = client();
            let base = base.clone();
            let i = n % IMAGES;
            let img = images[i].clone();
            tokio::spawn(async move {
                let mut bytes = 0;
                for _ in 0..2 {
                    bytes += pull(&c, &base, &format!("load{i}"), &img).await?;
                }
                Ok::<u64, String>(bytes)
            })
        })
        .collect();
    let mut errors = Vec::new();
    let mut bytes = 0u64;
    for t in tasks {
        match t.await.unwrap() {
            Ok(b) => bytes += b,
            Err(e) => errors.push(e),
        }
    }
    let wall = start.elapsed();
    let peak_kib = mirror.status_kib("VmHWM");
    println!(
        "load: {CLIENTS} clients x 2 pulls, {:.1} MiB in {:.2}s; mirror RSS idle {} KiB, peak {} KiB; {} errors",
        bytes as f64 / 1048576.0,
        wall.as_secs_f64(),
        idle_kib,
        peak_kib,
        errors.len()
    );
    assert!(
        errors.is_empty(),
        "failed requests: {:?}",
        &errors[..errors.len().min(10)]
    );
    // Each blob crossed the upstream link exactly once, under load too.
    for img in &images {
        for b in img.layers.iter().chain([&img.config]) {
            assert_eq!(
                up.count("GET", &b.digest),
                1,
                "blob {} not fetched exactly once",
                b.digest
            );
        }
    }
    assert!(
        peak_kib < PEAK_RSS_LIMIT_MIB * 1024,
        "mirror peak RSS {peak_kib} KiB over {PEAK_RSS_LIMIT_MIB} MiB"
    );
    drop(mirror);
}
