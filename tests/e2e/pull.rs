//! Pulling manifests and blobs of every format, byte for byte.

use crate::support::image::{docker_image, docker_list, oci_image, oci_index, sha256_digest};
use crate::support::*;

#[tokio::test]
async fn every_manifest_format_is_served_verbatim_on_get_and_head() {
    let up = FakeUpstream::start(Options::default()).await;
    let d = docker_image(1, &[1000, 2000]);
    let o = oci_image(2, &[3000]);
    let list = docker_list(&[(&d, "amd64"), (&o, "arm64")]);
    let index = oci_index(&[(&o, "amd64"), (&d, "arm64")]);
    up.add_image("library/app", "docker", &d);
    up.add_image("library/app", "oci", &o);
    up.add_manifest("library/app", Some("list"), &list);
    up.add_manifest("library/app", Some("index"), &index);
    let dir = tempfile::tempdir().unwrap();
    let gw = single(&up, dir.path(), "").await;
    let c = client();
    for (tag, m) in [
        ("docker", &d.manifest),
        ("oci", &o.manifest),
        ("list", &list),
        ("index", &index),
    ] {
        for method in [reqwest::Method::HEAD, reqwest::Method::GET] {
            let r = c
                .request(
                    method.clone(),
                    format!("{}/v2/library/app/manifests/{tag}", gw.url(0)),
                )
                .header("accept", ACCEPT_ALL)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{method} {tag}");
            let h = r.headers();
            assert_eq!(h["content-type"], m.media_type, "{tag}");
            assert_eq!(h["docker-content-digest"], m.digest.as_str(), "{tag}");
            assert_eq!(
                h["content-length"],
                m.bytes.len().to_string().as_str(),
                "{tag}"
            );
            assert_eq!(h["docker-distribution-api-version"], "registry/2.0");
            let body = r.bytes().await.unwrap();
            if method == reqwest::Method::GET {
                assert_eq!(body, m.bytes, "{tag}");
            } else {
                assert!(body.is_empty());
            }
        }
        // And by digest.
        let r = c
            .get(format!(
                "{}/v2/library/app/manifests/{}",
                gw.url(0),
                m.digest
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(sha256_digest(&r.bytes().await.unwrap()), m.digest);
    }
    // Blobs: every layer and config, with digest headers.
    for b in d
        .layers
        .iter()
        .chain(o.layers.iter())
        .chain([&d.config, &o.config])
    {
        let r = c
            .get(format!("{}/v2/library/app/blobs/{}", gw.url(0), b.digest))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["docker-content-digest"], b.digest.as_str());
        assert_eq!(
            r.headers()["content-length"],
            b.bytes.len().to_string().as_str()
        );
        assert_eq!(r.bytes().await.unwrap(), b.bytes);
    }
    assert_store_verified(dir.path());
    gw.stop().await;
}

#[tokio::test]
async fn second_pull_is_served_from_cache() {
    let up = FakeUpstream::start(Options::default()).await;
    let img = docker_image(3, &[50_000, 70_000]);
    up.add_image("library/cached", "v1", &img);
    let dir = tempfile::tempdir().unwrap();
    let gw = single(&up, dir.path(), "").await;
    let c = client();
    let pull = || async {
        let r = c
            .get(format!("{}/v2/library/cached/manifests/v1", gw.url(0)))
            .header("accept", ACCEPT_ALL)
            .send()
            .await
            .unwrap();
        assert_eq!(r.bytes().await.unwrap(), img.manifest.bytes);
        for b in img.layers.iter().chain([&img.config]) {
            let r = c
                .get(format!(
                    "{}/v2/library/cached/blobs/{}",
                    gw.url(0),
                    b.digest
                ))
                .send()
                .await
                .unwrap();
            assert_eq!(r.bytes().await.unwrap(), b.bytes);
        }
    };
    pull().await;
    let before = up.requests().len();
    assert_eq!(up.count("GET", "/blobs/"), 3);
    pull().await;
    pull().await;
    assert_eq!(up.requests().len(), before, "warm pulls reached upstream");
    gw.stop().await;
}

#[tokio::test]
async fn restart_serves_tags_manifests_and_blobs_with_upstream_down() {
    let up = FakeUpstream::start(Options::default()).await;
    let img = oci_image(4, &[10_000]);
    up.add_image("org/persist", "stable", &img);
    let dir = tempfile::tempdir().unwrap();
    let gw = single(&up, dir.path(), "").await;
    let c = client();
    let get = |url: String| {
        let c = c.clone();
        async move {
            c.get(url)
                .header("accept", ACCEPT_ALL)
                .send()
                .await
                .unwrap()
        }
    };
    let m = get(format!("{}/v2/org/persist/manifests/stable", gw.url(0))).await;
    assert_eq!(m.status(), 200);
    let l = get(format!(
        "{}/v2/org/persist/blobs/{}",
        gw.url(0),
        img.layers[0].digest
    ))
    .await;
    assert_eq!(l.bytes().await.unwrap(), img.layers[0].bytes);
    gw.stop().await;

    up.set_down(true);
    let gw = single(&up, dir.path(), "").await;
    let m = get(format!("{}/v2/org/persist/manifests/stable", gw.url(0))).await;
    assert_eq!(m.status(), 200);
    assert_eq!(m.bytes().await.unwrap(), img.manifest.bytes);
    let m = get(format!(
        "{}/v2/org/persist/manifests/{}",
        gw.url(0),
        img.manifest.digest
    ))
    .await;
    assert_eq!(m.status(), 200);
    let l = get(format!(
        "{}/v2/org/persist/blobs/{}",
        gw.url(0),
        img.layers[0].digest
    ))
    .await;
    assert_eq!(l.bytes().await.unwrap(), img.layers[0].bytes);
    gw.stop().await;
}

#[tokio::test]
async fn ranges_on_cached_and_cold_blobs() {
    let up = FakeUpstream::start(Options::default()).await;
    let img = docker_image(5, &[100_000, 5000]);
    up.add_image("library/r", "1", &img);
    let dir = tempfile::tempdir().unwrap();
    let gw = single(&up, dir.path(), "").await;
    let c = client();
    let blob = &img.layers[0];
    let url = format!("{}/v2/library/r/blobs/{}", gw.url(0), blob.digest);
    // Cold: a range request starts the download and serves the slice.
    let r = c
        .get(&url)
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 10-19/100000");
    assert_eq!(r.bytes().await.unwrap(), blob.bytes.slice(10..20));
    // Hot (wait until stored by fetching it whole).
    assert_eq!(
        c.get(&url).send().await.unwrap().bytes().await.unwrap(),
        blob.bytes
    );
    let r = c
        .get(&url)
        .header("range", "bytes=99990-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap(), blob.bytes.slice(99_990..));
    let r = c
        .get(&url)
        .header("range", "bytes=-5")
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap(), blob.bytes.slice(99_995..));
    let r = c
        .get(&url)
        .header("range", "bytes=100000-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(r.headers()["content-range"], "bytes */100000");
    assert_eq!(error_code(r).await, "RANGE_INVALID");
    assert_eq!(up.count("GET", "/blobs/"), 1);
    // HEAD on a cached blob: size, digest, no upstream request.
    let r = c.head(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "100000");
    assert_eq!(up.count("HEAD", "/blobs/"), 0);
    // HEAD on a cold blob asks upstream with HEAD, not GET.
    let url2 = format!("{}/v2/library/r/blobs/{}", gw.url(0), img.layers[1].digest);
    let r = c.head(&url2).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "5000");
    assert_eq!(up.count("GET", "/blobs/"), 1);
    gw.stop().await;
}

#[tokio::test]
async fn tags_list_referrers_and_catalog() {
    let up = FakeUpstream::start(Options::default()).await;
    let img = docker_image(7, &[100]);
    for t in ["a", "b", "c", "d"] {
        up.add_image("org/tl", t, &img);
    }
    let referrers = bytes::Bytes::from_static(
        br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#,
    );
    up.add_referrers("org/tl", &img.manifest.digest, referrers.clone());
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "[[listener]]\naddr = \"127.0.0.1:0\"\n{}{}",
        upstream_toml("docker.io", "http://127.0.0.1:9", "default = true"),
        upstream_toml("ghcr.io", &up.url(), "")
    );
    let gw = Gateway::start(&cfg, dir.path()).await;
    let c = client();
    let base = gw.url(0);
    let r = c
        .get(format!("{base}/v2/ghcr.io/org/tl/tags/list?n=2"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["link"],
        "</v2/ghcr.io/org/tl/tags/list?n=2&last=b>; rel=\"next\"",
        "Link is rewritten to the client's path shape"
    );
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["tags"], serde_json::json!(["a", "b"]));
    let r = c
        .get(format!("{base}/v2/org/tl/tags/list?n=2&last=b&ns=ghcr.io"))
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["tags"], serde_json::json!(["c", "d"]));

    let r = c
        .get(format!(
            "{base}/v2/ghcr.io/org/tl/referrers/{}",
            img.manifest.digest
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "application/vnd.oci.image.index.v1+json"
    );
    assert_eq!(r.bytes().await.unwrap(), referrers);
    let r = c
        .get(format!(
            "{base}/v2/ghcr.io/org/tl/referrers/{}",
            img.config.digest
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "an upstream 404 on referrers stays 404");

    // The catalog lists what is cached, per upstream.
    let r = c
        .get(format!("{base}/ghcr.io/v2/_catalog"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["repositories"],
        serde_json::json!([])
    );
    c.get(format!("{base}/v2/ghcr.io/org/tl/manifests/a"))
        .header("accept", ACCEPT_ALL)
        .send()
        .await
        .unwrap();
    let r = c
        .get(format!("{base}/v2/_catalog?ns=ghcr.io"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["repositories"],
        serde_json::json!(["org/tl"])
    );
    gw.stop().await;
}
