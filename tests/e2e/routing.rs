//! Choosing the upstream: ?ns=, both path-prefix shapes, pinned listeners,
//! the default, and Docker Hub's implicit library/.

use crate::support::image::{docker_image, oci_image};
use crate::support::*;

struct World {
    hub: FakeUpstream,
    ghcr: FakeUpstream,
    quay: FakeUpstream,
    gw: Gateway,
    _dir: tempfile::TempDir,
}

async fn world() -> World {
    let hub = FakeUpstream::start(Options::default()).await;
    let ghcr = FakeUpstream::start(Options::default()).await;
    let quay = FakeUpstream::start(Options::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "[[listener]]\naddr = \"127.0.0.1:0\"\n\
         [[listener]]\naddr = \"127.0.0.1:0\"\nupstream = \"ghcr.io\"\n\
         [[listener]]\naddr = \"127.0.0.1:0\"\nupstream = \"quay.io\"\n{}{}{}",
        upstream_toml(
            "docker.io",
            &hub.url(),
            "default = true\naliases = [\"index.docker.io\", \"registry-1.docker.io\"]"
        ),
        upstream_toml("ghcr.io", &ghcr.url(), ""),
        upstream_toml("quay.io", &quay.url(), ""),
    );
    let gw = Gateway::start(&cfg, dir.path()).await;
    World {
        hub,
        ghcr,
        quay,
        gw,
        _dir: dir,
    }
}

async fn manifest(c: &reqwest::Client, url: String) -> (u16, bytes::Bytes) {
    let r = c
        .get(url)
        .header("accept", ACCEPT_ALL)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.bytes().await.unwrap())
}

#[tokio::test]
async fn every_route_reaches_the_right_upstream() {
    let w = world().await;
    let (h, g, q) = (
        docker_image(30, &[10]),
        oci_image(31, &[10]),
        docker_image(32, &[10]),
    );
    w.hub.add_image("library/alpine", "1", &h);
    w.ghcr.add_image("org/app", "1", &g);
    w.quay.add_image("org/app", "1", &q);
    let c = client();
    let (base, ghcr_port, quay_port) = (w.gw.url(0), w.gw.url(1), w.gw.url(2));
    let cases = [
        // default upstream, with implicit library/
        (format!("{base}/v2/alpine/manifests/1"), &h),
        (format!("{base}/v2/library/alpine/manifests/1"), &h),
        // ?ns= (containerd), including aliases
        (format!("{base}/v2/org/app/manifests/1?ns=ghcr.io"), &g),
        (format!("{base}/v2/org/app/manifests/1?ns=quay.io"), &q),
        (
            format!("{base}/v2/library/alpine/manifests/1?ns=docker.io"),
            &h,
        ),
        (
            format!("{base}/v2/alpine/manifests/1?ns=registry-1.docker.io"),
            &h,
        ),
        // path prefix after /v2 (podman, skopeo, BuildKit, kaniko)
        (format!("{base}/v2/ghcr.io/org/app/manifests/1"), &g),
        (format!("{base}/v2/quay.io/org/app/manifests/1"), &q),
        (format!("{base}/v2/docker.io/alpine/manifests/1"), &h),
        // path prefix before /v2 (containerd hosts.toml with a path)
        (format!("{base}/ghcr.io/v2/org/app/manifests/1"), &g),
        (
            format!("{base}/quay.io/v2/org/app/manifests/1?ns=quay.io"),
            &q,
        ),
        // ?ns= wins over the prefix
        (
            format!("{base}/quay.io/v2/org/app/manifests/1?ns=ghcr.io"),
            &g,
        ),
        // pinned listeners (dockerd-style, nothing names the upstream)
        (format!("{ghcr_port}/v2/org/app/manifests/1"), &g),
        (format!("{quay_port}/v2/org/app/manifests/1"), &q),
        // a prefix beats the pin
        (format!("{ghcr_port}/v2/quay.io/org/app/manifests/1"), &q),
    ];
    for (url, img) in cases {
        let (status, body) = manifest(&c, url.clone()).await;
        assert_eq!(status, 200, "{url}");
        assert_eq!(body, img.manifest.bytes, "{url}");
    }
    let r = c
        .get(format!("{base}/v2/org/app/manifests/1?ns=ghcr.io"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["oci-namespace"], "ghcr.io");
    // Upstreams only ever saw their own repositories.
    assert!(
        w.hub
            .requests()
            .iter()
            .all(|r| r.path.contains("/library/alpine/"))
    );
    assert!(
        w.ghcr
            .requests()
            .iter()
            .all(|r| r.path.contains("/org/app/"))
    );
    w.gw.stop().await;
}

#[tokio::test]
async fn blobs_are_shared_between_upstreams() {
    let w = world().await;
    let img = docker_image(33, &[50_000]);
    w.hub.add_image("library/same", "1", &img);
    w.ghcr.add_image("org/same", "1", &img);
    let c = client();
    let layer = &img.layers[0];
    for url in [
        format!("{}/v2/library/same/blobs/{}", w.gw.url(0), layer.digest),
        format!("{}/v2/org/same/blobs/{}", w.gw.url(1), layer.digest),
    ] {
        let r = c.get(url).send().await.unwrap();
        assert_eq!(r.bytes().await.unwrap(), layer.bytes);
    }
    assert_eq!(
        w.hub.count("GET", "/blobs/") + w.ghcr.count("GET", "/blobs/"),
        1
    );
    w.gw.stop().await;
}

#[tokio::test]
async fn transparent_mode_uses_connect_to_instead_of_dns() {
    let up = FakeUpstream::start(Options::default()).await;
    let img = docker_image(34, &[100]);
    up.add_image("org/t", "1", &img);
    let port = up.url().rsplit(':').next().unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    // The upstream's own name (which would resolve to the mirror in
    // transparent mode) selects it by Host, and connect_to says where the
    // real upstream is. `.invalid` never resolves.
    let cfg = format!(
        "[[listener]]\naddr = \"127.0.0.1:0\"\n{}{}",
        upstream_toml("docker.io", "http://127.0.0.1:9", "default = true"),
        upstream_toml(
            "quay.io",
            &format!("http://registry.upstream.invalid:{port}"),
            &format!(
                "hosts = [\"registry.upstream.invalid\"]\nconnect_to = [\"127.0.0.1:{port}\"]"
            ),
        ),
    );
    let gw = Gateway::start(&cfg, dir.path()).await;
    let r = client()
        .get(format!("{}/v2/org/t/manifests/1", gw.url(0)))
        .header("host", "registry.upstream.invalid")
        .header("accept", ACCEPT_ALL)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), img.manifest.bytes);
    assert_eq!(
        up.requests()[0].header("host"),
        Some(format!("registry.upstream.invalid:{port}").as_str())
    );
    gw.stop().await;
}
