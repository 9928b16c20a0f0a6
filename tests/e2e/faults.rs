//! Upstream auth, redirects and broken upstreams.

use crate::support::image::{docker_image, oci_image};
use crate::support::*;

async fn pull_all(c: &reqwest::Client, base: &str, repo: &str, tag: &str, img: &image::Image) {
    let r = c
        .get(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header("accept", ACCEPT_ALL)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "manifest {repo}:{tag}");
    assert_eq!(r.bytes().await.unwrap(), img.manifest.bytes);
    for b in img.layers.iter().chain([&img.config]) {
        let r = c
            .get(format!("{base}/v2/{repo}/blobs/{}", b.digest))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "blob {}", b.digest);
        assert_eq!(r.bytes().await.unwrap(), b.bytes);
    }
}

#[tokio::test]
async fn bearer_challenge_then_token_reuse() {
    let up = FakeUpstream::start(Options::bearer(300)).await;
    let img = docker_image(10, &[1000, 2000, 3000]);
    up.add_image("library/tok", "1", &img);
    let dir = tempfile::tempdir().unwrap();
    let gw = single(&up, dir.path(), "").await;
    let c = client();
    pull_all(&c, &gw.url(0), "tok", "1", &img).await;
    // One token for the repository scope, reused for manifest and 4 blobs.
    assert_eq!(up.token_requests(), 1);
    // Only the first request went without a token.
    let unauth = up
        .requests()
        .iter()
        .filter(|r| r.path.starts_with("/v2/library/") && r.header("authorization").is_none())
        .count();
    assert_eq!(unauth, 1);
    gw.stop().await;
}

#[tokio::test]
async fn bearer_with_credentials_for_private_repos() {
    let up = FakeUpstream::start(Options {
        auth: Auth::Bearer {
            user: Some(("robot".into(), "s3cret".into())),
            expires_in: 300,
        },
        ..Options::default()
    })
    .await;
    let img = oci_image(11, &[500]);
    up.add_image("private/app", "1", &img);
    let dir = tempfile::tempdir().unwrap();
    let gw = single(
        &up,
        dir.path(),
        "username = \"robot\"\npassword = \"s3cret\"",
    )
    .await;
    pull_all(&client(), &gw.url(0), "private/app", "1", &img).await;
    gw.stop().await;

    // Without credentials the upstream refuses; the client gets a clear 404.
    let dir = tempfile::tempdir().unwrap();
    let gw = single(&up, dir.path(), "").await;
    let r = client()
        .get(format!("{}/v2/private/app/manifests/1", gw.url(0)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "NAME_UNKNOWN");
    gw.stop().await;
}

#[tokio::test]
async fn basic_auth_upstream() {
    let up = FakeUpstream::start(Options {
        auth: Auth::Basic {
            user: "u".into(),
            pass: "p".into(),
        },
        ..Options::default()
    })
    .await;
    let img = docker_image(12, &[700]);
    up.add_image("library/basic", "1", &img);
    let dir = tempfile::tempdir().unwrap();
    let gw = single(&up, dir.path(), "username = \"u\"\npassword = \"p\"").await;
    pull_all(&client(), &gw.url(0), "basic", "1", &img).await;
    gw.stop().await;
}

#[tokio::test]
async fn cdn_redirect_never_carries_authorization() {
    let up = FakeUpstream::start(Options {
        auth: Auth::Bearer {
            user: None,
            expires_in: 300,
        },
        cdn: true,
        ..Options::default()
    })
    .await;
    let img = docker_image(13, &[40_000, 1000]);
    up.add_image("library/cdn", "1", &img);
    let dir = tempfile::tempdir().unwrap();
    let gw = single(&up, dir.path(), "").await;
    let c = client();
    pull_all(&c, &gw.url(0), "cdn", "1", &img).await;
    let cdn_hits = up.requests().iter().filter(|r| r.server == "cdn").count();
    assert!(cdn_hits >= 3, "blobs came through the CDN ({cdn_hits})");
    assert_eq!(up.cdn_requests_with_authorization(), 0);
    // The redirect is not cached: after a restart with an empty store the
    // mirror asks the registry again.
    assert_store_verified(dir.path());
    gw.stop().await;
}

#[tokio::test]
async fn https_upstream_trusted_through_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let (up, trust) =
        FakeUpstream::start_tls(fake_upstream::test_ca_and_identity(), dir.path()).await;
    assert!(up.url().starts_with("https://"));
    let img = docker_image(14, &[900]);
    up.add_image("library/tls", "1", &img);
    let gw = single(&up, dir.path(), &trust).await;
    pull_all(&client(), &gw.url(0), "tls", "1", &img).await;
    gw.stop().await;

    // Without the CA the handshake fails: 503/502, never a blob.
    let dir2 = tempfile::tempdir().unwrap();
    let gw = single(&up, dir2.path(), "").await;
    let r = client()
        .get(format!(
            "{}/v2/library/tls/blobs/{}",
            gw.url(0),
            img.layers[0].digest
        ))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_server_error(), "{}", r.status());
    gw.stop().await;
}

#[tokio::test]
async fn corrupt_blob_is_not_stored_and_the_response_is_aborted() {
    let up = FakeUpstream::start(Options::default()).await;
    let img = docker_image(15, &[300_000]);
    up.add_image("library/bad", "1", &img);
    let layer = &img.layers[0];
    up.corrupt_blob(&layer.digest);
    let dir = tempfile::tempdir().unwrap();
    let gw = single(&up, dir.path(), "").await;
    let c = client();
    let url = format!("{}/v2/library/bad/blobs/{}", gw.url(0), layer.digest);
    let r = c.get(&url).send().await.unwrap();
    // Headers were sent (streaming), but the body must not complete.
    assert!(r.bytes().await.is_err(), "a corrupt body must not complete");
    // The download task ends after the client's body does.
    gw.settle().await;
    assert!(files_under(&dir.path().join("blobs")).is_empty());
    assert!(files_under(&dir.path().join("tmp")).is_empty());
    // The next request tries again (nothing cached), and fails the same way.
    let r = c.get(&url).send().await.unwrap();
    assert!(r.bytes().await.is_err());
    assert_eq!(up.count("GET", "/blobs/"), 2);
    gw.stop().await;
}

#[tokio::test]
async fn truncated_upstream_stream_is_not_stored() {
    let up = FakeUpstream::start(Options::default()).await;
    let img = docker_image(16, &[200_000]);
    up.add_image("library/trunc", "1", &img);
    let layer = &img.layers[0];
    up.truncate_blob(&layer.digest, 50_000);
    let dir = tempfile::tempdir().unwrap();
    let gw = single(&up, dir.path(), "").await;
    let r = client()
        .get(format!(
            "{}/v2/library/trunc/blobs/{}",
            gw.url(0),
            layer.digest
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    if let Ok(b) = r.bytes().await {
        panic!("truncated body completed with {} bytes", b.len());
    }
    // The download task ends after the client's body does.
    gw.settle().await;
    assert!(files_under(&dir.path().join("blobs")).is_empty());
    assert!(files_under(&dir.path().join("tmp")).is_empty());
    gw.stop().await;
}

#[tokio::test]
async fn corrupt_manifest_is_refused() {
    let up = FakeUpstream::start(Options::default()).await;
    let img = docker_image(17, &[10]);
    up.add_image("library/cm", "1", &img);
    up.corrupt_blob(&img.manifest.digest);
    let dir = tempfile::tempdir().unwrap();
    let gw = single(&up, dir.path(), "").await;
    let r = client()
        .get(format!(
            "{}/v2/library/cm/manifests/{}",
            gw.url(0),
            img.manifest.digest
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert!(files_under(&dir.path().join("blobs")).is_empty());
    gw.stop().await;
}

#[tokio::test]
async fn upstream_rate_limit_and_outage_map_to_oci_errors() {
    let up = FakeUpstream::start(Options::default()).await;
    let img = docker_image(18, &[10]);
    up.add_image("library/rl", "1", &img);
    let dir = tempfile::tempdir().unwrap();
    let gw = single(&up, dir.path(), "").await;
    let c = client();
    up.fail_next(1, 429);
    let r = c
        .get(format!("{}/v2/library/rl/manifests/1", gw.url(0)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "7");
    assert_eq!(error_code(r).await, "TOOMANYREQUESTS");
    up.fail_next(1, 500);
    let r = c
        .get(format!("{}/v2/library/rl/manifests/1", gw.url(0)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(error_code(r).await, "UNAVAILABLE");
    let r = c
        .get(format!("{}/v2/library/rl/manifests/1", gw.url(0)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "errors are not cached");
    gw.stop().await;

    // A dead upstream: connection refused.
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "[[listener]]\naddr = \"127.0.0.1:0\"\n{}",
        upstream_toml("docker.io", "http://127.0.0.1:9", "default = true")
    );
    let gw = Gateway::start(&cfg, dir.path()).await;
    let r = c
        .get(format!("{}/v2/library/x/manifests/1", gw.url(0)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(error_code(r).await, "UNAVAILABLE");
    gw.stop().await;
}
