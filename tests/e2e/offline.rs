//! Keep serving when upstream breaks: stale tags within `stale_if_error`,
//! across restarts, and a circuit breaker that fails fast.

use std::time::Duration;

use mirrorgate::clock::ManualClock;

use crate::support::image::docker_image;
use crate::support::*;

async fn get(c: &reqwest::Client, url: String) -> reqwest::Response {
    c.get(url)
        .header("accept", ACCEPT_ALL)
        .send()
        .await
        .unwrap()
}

/// A tag served from cache past its TTL: 200, the manifest, and the OCI
/// spec's warning form (code 299, agent "-").
async fn assert_served_stale(r: reqwest::Response, manifest: &[u8]) {
    assert_eq!(r.status(), 200);
    let warning = r.headers()["warning"].to_str().unwrap().to_owned();
    assert!(warning.starts_with("299 - \""), "{warning}");
    assert_eq!(r.bytes().await.unwrap(), manifest);
}

#[tokio::test]
async fn cached_images_pull_with_upstream_down_across_a_restart() {
    let up = FakeUpstream::start(Options::default()).await;
    let img = docker_image(70, &[5000]);
    up.add_image("library/off", "1", &img);
    let dir = tempfile::tempdir().unwrap();
    let extra = "tag_ttl = \"1m\"";
    let cache = "[cache]\nstale_if_error = \"1h\"\n";
    // One manual clock across both runs: time passes only when told.
    let clock = ManualClock::new();
    let start = |up: &FakeUpstream| {
        let cfg = format!(
            "{cache}[[listener]]\naddr = \"127.0.0.1:0\"\n{}",
            upstream_toml("docker.io", &up.url(), &format!("default = true\n{extra}"))
        );
        let root = dir.path().to_owned();
        let clock = clock.clone();
        async move { Gateway::start_with_clock(&cfg, &root, clock).await }
    };
    let c = client();
    let gw = start(&up).await;
    assert_eq!(
        get(&c, format!("{}/v2/library/off/manifests/1", gw.url(0)))
            .await
            .status(),
        200
    );
    let blob = format!("/v2/library/off/blobs/{}", img.layers[0].digest);
    assert_eq!(
        get(&c, format!("{}{blob}", gw.url(0)))
            .await
            .bytes()
            .await
            .unwrap(),
        img.layers[0].bytes
    );
    gw.stop().await;

    // Upstream dies; the mirror restarts after the tag's TTL ran out.
    up.set_down(true);
    clock.advance(Duration::from_secs(61));
    let gw = start(&up).await;
    let r = get(&c, format!("{}/v2/library/off/manifests/1", gw.url(0))).await;
    assert_served_stale(r, &img.manifest.bytes).await;
    let metrics = gw.metrics_text().await;
    assert!(
        metrics.contains("mirrorgate_stale_served_total 1\n"),
        "{metrics}"
    );
    let r = get(
        &c,
        format!(
            "{}/v2/library/off/manifests/{}",
            gw.url(0),
            img.manifest.digest
        ),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        get(&c, format!("{}{blob}", gw.url(0)))
            .await
            .bytes()
            .await
            .unwrap(),
        img.layers[0].bytes
    );

    // Past tag_ttl + stale_if_error the stale tag is no longer served.
    clock.advance(Duration::from_secs(3600));
    let r = get(&c, format!("{}/v2/library/off/manifests/1", gw.url(0))).await;
    assert!(r.status().is_server_error(), "{}", r.status());
    assert_eq!(error_code(r).await, "UNAVAILABLE");
    // Content addressed by digest never goes stale.
    let r = get(
        &c,
        format!(
            "{}/v2/library/off/manifests/{}",
            gw.url(0),
            img.manifest.digest
        ),
    )
    .await;
    assert_eq!(r.status(), 200);
    gw.stop().await;
}

#[tokio::test]
async fn circuit_breaker_fails_fast_then_probes_and_recovers() {
    let up = FakeUpstream::start(Options::default()).await;
    let img = docker_image(71, &[100]);
    up.add_image("library/cb", "1", &img);
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let gw = single_with_clock(
        &up,
        dir.path(),
        "breaker_failures = 2\nbreaker_backoff = \"10s\"",
        clock.clone(),
    )
    .await;
    let c = client();
    let url = format!("{}/v2/library/cb/manifests/1", gw.url(0));
    up.set_down(true);
    for _ in 0..2 {
        let r = get(&c, url.clone()).await;
        assert_eq!(r.status(), 502, "upstream 503 relayed as a bad gateway");
    }
    let seen = up.requests().len();
    // Open: answered at once, upstream not asked.
    for _ in 0..5 {
        let r = get(&c, url.clone()).await;
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["retry-after"], "5");
        assert_eq!(error_code(r).await, "UNAVAILABLE");
    }
    assert_eq!(
        up.requests().len(),
        seen,
        "no request reached the dead upstream"
    );
    // After the backoff one probe goes out (and fails: backoff doubles).
    clock.advance(Duration::from_secs(10));
    assert_eq!(get(&c, url.clone()).await.status(), 502);
    assert_eq!(up.requests().len(), seen + 1);
    assert_eq!(get(&c, url.clone()).await.status(), 503);
    // Still open short of the doubled backoff.
    clock.advance(Duration::from_secs(19));
    assert_eq!(get(&c, url.clone()).await.status(), 503);
    assert_eq!(up.requests().len(), seen + 1);
    // Upstream is back: the next probe closes the circuit.
    up.set_down(false);
    clock.advance(Duration::from_secs(1));
    let r = get(&c, url.clone()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), img.manifest.bytes);
    gw.stop().await;
}

#[tokio::test]
async fn a_token_service_outage_serves_stale_tags_like_a_registry_outage() {
    // Docker Hub's registry and its token service are separate hosts: with
    // only the token service down, nothing can be pulled either, so a tag
    // past its TTL is served stale, not failed.
    let up = FakeUpstream::start(Options::bearer(300)).await;
    let img = docker_image(72, &[100]);
    up.add_image("library/tk", "1", &img);
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let gw = single_with_clock(&up, dir.path(), "tag_ttl = \"1m\"", clock.clone()).await;
    let c = client();
    let url = format!("{}/v2/library/tk/manifests/1", gw.url(0));
    assert_eq!(get(&c, url.clone()).await.status(), 200);
    // The token service goes down and revokes what it issued: revalidating
    // needs a new token.
    up.set_token_down(true);
    clock.advance(Duration::from_secs(61));
    assert_served_stale(get(&c, url.clone()).await, &img.manifest.bytes).await;
    // Something never cached fails as unavailable (503), not as a bad
    // gateway.
    let r = get(
        &c,
        format!("{}/v2/library/tk/blobs/{}", gw.url(0), img.layers[0].digest),
    )
    .await;
    assert_eq!(r.status(), 503);
    assert_eq!(error_code(r).await, "UNAVAILABLE");
    gw.stop().await;
}
