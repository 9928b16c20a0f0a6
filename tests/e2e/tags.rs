//! Tag TTL, HEAD revalidation, moved and deleted tags, stale serving.

use std::time::Duration;

use mirrorgate::clock::ManualClock;

use crate::support::image::docker_image;
use crate::support::*;

async fn get_tag(c: &reqwest::Client, gw: &Gateway, tag: &str) -> reqwest::Response {
    c.get(format!("{}/v2/library/t/manifests/{tag}", gw.url(0)))
        .header("accept", ACCEPT_ALL)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn tags_are_trusted_for_ttl_then_revalidated_with_head() {
    let up = FakeUpstream::start(Options::default()).await;
    let v1 = docker_image(40, &[10]);
    let v2 = docker_image(41, &[10]);
    up.add_image("library/t", "latest", &v1);
    up.add_image("library/t", "v2", &v2);
    let dir = tempfile::tempdir().unwrap();
    // The TTL runs on a manual clock: within it nothing expires however
    // slow the machine, and past it nothing is waited for.
    let clock = ManualClock::new();
    let gw = single_with_clock(&up, dir.path(), "tag_ttl = \"60s\"", clock.clone()).await;
    let c = client();

    let r = get_tag(&c, &gw, "latest").await;
    assert_eq!(
        r.headers()["docker-content-digest"],
        v1.manifest.digest.as_str()
    );
    assert_eq!(
        (
            up.count("GET", "/manifests/"),
            up.count("HEAD", "/manifests/")
        ),
        (1, 0)
    );
    // Within the TTL: no upstream request at all.
    for _ in 0..5 {
        let r = get_tag(&c, &gw, "latest").await;
        assert_eq!(r.status(), 200);
    }
    assert_eq!(
        (
            up.count("GET", "/manifests/"),
            up.count("HEAD", "/manifests/")
        ),
        (1, 0)
    );

    // After the TTL: one HEAD, no GET, same digest.
    clock.advance(Duration::from_secs(61));
    let r = get_tag(&c, &gw, "latest").await;
    assert_eq!(
        r.headers()["docker-content-digest"],
        v1.manifest.digest.as_str()
    );
    assert_eq!(
        (
            up.count("GET", "/manifests/"),
            up.count("HEAD", "/manifests/")
        ),
        (1, 1)
    );

    // The tag moves upstream: after the TTL, HEAD sees a new digest and the
    // new manifest is fetched once, by digest.
    up.set_tag("library/t", "latest", &v2.manifest.digest);
    clock.advance(Duration::from_secs(61));
    let r = get_tag(&c, &gw, "latest").await;
    assert_eq!(
        r.headers()["docker-content-digest"],
        v2.manifest.digest.as_str()
    );
    assert_eq!(r.bytes().await.unwrap(), v2.manifest.bytes);
    assert_eq!(
        (
            up.count("GET", "/manifests/"),
            up.count("HEAD", "/manifests/")
        ),
        (2, 2)
    );
    let by_digest = up
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with(&v2.manifest.digest))
        .count();
    assert_eq!(by_digest, 1);

    // Upstream down after the TTL: the last known digest is served, marked.
    up.set_down(true);
    clock.advance(Duration::from_secs(61));
    let r = get_tag(&c, &gw, "latest").await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("warning"));
    assert_eq!(r.bytes().await.unwrap(), v2.manifest.bytes);
    up.set_down(false);

    // Deleted upstream: after the TTL the tag is gone here too.
    up.remove_tag("library/t", "latest");
    clock.advance(Duration::from_secs(61));
    let r = get_tag(&c, &gw, "latest").await;
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");
    gw.stop().await;
}

#[tokio::test]
async fn tag_map_survives_restart_within_ttl() {
    let up = FakeUpstream::start(Options::default()).await;
    let v1 = docker_image(42, &[10]);
    up.add_image("library/t", "keep", &v1);
    let dir = tempfile::tempdir().unwrap();
    let gw = single(&up, dir.path(), "tag_ttl = \"1h\"").await;
    let c = client();
    assert_eq!(get_tag(&c, &gw, "keep").await.status(), 200);
    gw.stop().await;
    let n = up.requests().len();
    let gw = single(&up, dir.path(), "tag_ttl = \"1h\"").await;
    let r = get_tag(&c, &gw, "keep").await;
    assert_eq!(r.bytes().await.unwrap(), v1.manifest.bytes);
    assert_eq!(
        up.requests().len(),
        n,
        "a fresh tag needs no upstream request after restart"
    );
    gw.stop().await;
}
