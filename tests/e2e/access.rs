//! Access control: listener CIDRs, repository allow/deny, private
//! repositories behind client authentication (no leak through the shared
//! store), and fetch_requires_auth (cache-only for anonymous clients).

use std::net::IpAddr;

use crate::support::image::docker_image;
use crate::support::*;

pub(crate) const USER: &str = "alice";
pub(crate) const PASS: &str = "wonderland";

/// An htpasswd file with `alice` (bcrypt, low cost to keep tests quick).
pub(crate) fn htpasswd(dir: &std::path::Path) -> String {
    let path = dir.join("htpasswd");
    let hash = bcrypt::hash(PASS, 4).unwrap();
    std::fs::write(&path, format!("{USER}:{hash}\n")).unwrap();
    path.display().to_string()
}

pub(crate) async fn get(
    c: &reqwest::Client,
    url: String,
    creds: Option<(&str, &str)>,
) -> reqwest::Response {
    let mut r = c.get(url).header("accept", ACCEPT_ALL);
    if let Some((u, p)) = creds {
        r = r.basic_auth(u, Some(p));
    }
    r.send().await.unwrap()
}

fn challenge(r: &reqwest::Response) -> String {
    r.headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn listener_allows_only_its_client_networks() {
    let up = FakeUpstream::start(Options::default()).await;
    let img = docker_image(90, &[100]);
    up.add_image("library/cidr", "1", &img);
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "[[listener]]\naddr = \"127.0.0.1:0\"\nallow = [\"127.0.0.2/32\", \"10.0.0.0/8\"]\n{}",
        upstream_toml("docker.io", &up.url(), "default = true")
    );
    let gw = Gateway::start(&cfg, dir.path()).await;
    let url = format!("{}/v2/library/cidr/manifests/1", gw.url(0));

    // From 127.0.0.1: refused with DENIED, nothing asked upstream.
    let r = get(&client(), url.clone(), None).await;
    assert_eq!(r.status(), 403);
    assert_eq!(error_code(r).await, "DENIED");
    assert_eq!(
        get(&client(), format!("{}/v2/", gw.url(0)), None)
            .await
            .status(),
        403
    );
    assert_eq!(up.count("GET", "/manifests/"), 0);

    // From 127.0.0.2: served.
    let from2 = client_from("127.0.0.2".parse::<IpAddr>().unwrap());
    let r = get(&from2, url, None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), img.manifest.bytes);
    gw.stop().await;
}

#[tokio::test]
async fn repository_allow_and_deny_lists() {
    let up = FakeUpstream::start(Options::default()).await;
    let img = docker_image(91, &[100]);
    for repo in ["library/alpine", "library/bad", "evil/miner", "team/x/app"] {
        up.add_image(repo, "1", &img);
    }
    let dir = tempfile::tempdir().unwrap();
    let gw = single(
        &up,
        dir.path(),
        "allow = [\"library/*\", \"team/**\"]\ndeny = [\"library/bad\"]",
    )
    .await;
    let c = client();
    let m = |repo: &str| format!("{}/v2/{repo}/manifests/1", gw.url(0));
    // `alpine` is `library/alpine` on docker.io: the rules see upstream names.
    assert_eq!(get(&c, m("alpine"), None).await.status(), 200);
    assert_eq!(get(&c, m("team/x/app"), None).await.status(), 200);
    for denied in ["library/bad", "bad", "evil/miner"] {
        let r = get(&c, m(denied), None).await;
        assert_eq!(r.status(), 403, "{denied}");
        assert_eq!(error_code(r).await, "DENIED");
    }
    let blob = format!("{}/v2/evil/miner/blobs/{}", gw.url(0), img.layers[0].digest);
    assert_eq!(get(&c, blob, None).await.status(), 403);
    let tags = format!("{}/v2/evil/miner/tags/list", gw.url(0));
    assert_eq!(get(&c, tags, None).await.status(), 403);
    // Nothing of a denied repository was asked upstream.
    assert!(
        up.requests()
            .iter()
            .all(|r| !r.path.contains("bad") && !r.path.contains("evil")),
        "a denied repository reached upstream"
    );
    gw.stop().await;
}

#[tokio::test]
async fn private_repositories_need_credentials_and_never_leak() {
    let up = FakeUpstream::start(Options {
        auth: Auth::Basic {
            user: "mirror".into(),
            pass: "upstream-secret".into(),
        },
        ..Options::default()
    })
    .await;
    let secret = docker_image(92, &[3000]);
    let public = docker_image(93, &[2000]);
    up.add_image("org/app", "1", &secret);
    up.add_image("public/base", "1", &public);
    // The private layer exists only in org/app upstream; the public image's
    // layer is also used by org/app (a shared base layer).
    up.only_in(&secret.layers[0].digest, &["org/app"]);
    up.only_in(&secret.manifest.digest, &["org/app"]);
    up.only_in(&public.layers[0].digest, &["org/app", "public/base"]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "[auth]\nhtpasswd = {:?}\nrealm = \"test mirror\"\n[[listener]]\naddr = \"127.0.0.1:0\"\n{}",
        htpasswd(dir.path()),
        upstream_toml(
            "docker.io",
            &up.url(),
            "default = true\nusername = \"mirror\"\npassword = \"upstream-secret\"\nprivate = [\"org/*\"]"
        )
    );
    let gw = Gateway::start(&cfg, &dir.path().join("data")).await;
    let c = client();
    let base = gw.url(0);
    let manifest = format!("{base}/v2/org/app/manifests/1");

    // Anonymous: 401 with a Basic challenge, before anything goes upstream.
    let r = get(&c, manifest.clone(), None).await;
    assert_eq!(r.status(), 401);
    assert_eq!(
        challenge(&r),
        "Basic realm=\"test mirror\", charset=\"UTF-8\""
    );
    assert_eq!(error_code(r).await, "UNAUTHORIZED");
    assert!(up.requests().is_empty());
    // Wrong password: 401 too.
    let r = get(&c, manifest.clone(), Some((USER, "nope"))).await;
    assert_eq!(r.status(), 401);
    assert!(challenge(&r).starts_with("Basic "));
    // An unknown user is refused even on a public repository.
    let public_m = format!("{base}/v2/public/base/manifests/1");
    assert_eq!(
        get(&c, public_m.clone(), Some(("mallory", PASS)))
            .await
            .status(),
        401
    );

    // Authenticated: pulled with the mirror's upstream credentials.
    let r = get(&c, manifest.clone(), Some((USER, PASS))).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), secret.manifest.bytes);
    for layer in secret.layers.iter().chain([&secret.config]) {
        let r = get(
            &c,
            format!("{base}/v2/org/app/blobs/{}", layer.digest),
            Some((USER, PASS)),
        )
        .await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.unwrap(), layer.bytes);
    }
    let shared_layer = format!("{base}/v2/org/app/blobs/{}", public.layers[0].digest);
    assert_eq!(
        get(&c, shared_layer, Some((USER, PASS))).await.status(),
        200
    );

    // Now cached, still refused to anonymous clients ...
    assert_eq!(get(&c, manifest.clone(), None).await.status(), 401);
    let by_digest = format!("{base}/v2/org/app/manifests/{}", secret.manifest.digest);
    assert_eq!(get(&c, by_digest, None).await.status(), 401);
    // ... and not reachable by digest under a public name: upstream says the
    // public repository does not hold it, so nothing is served.
    let sneaky_blob = format!("{base}/v2/public/base/blobs/{}", secret.layers[0].digest);
    let r = get(&c, sneaky_blob.clone(), None).await;
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "BLOB_UNKNOWN");
    let r = c.head(&sneaky_blob).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let sneaky_manifest = format!("{base}/v2/public/base/manifests/{}", secret.manifest.digest);
    assert_eq!(get(&c, sneaky_manifest, None).await.status(), 404);

    // A layer the public repository really has is served from the store,
    // after upstream confirms it.
    let r = get(
        &c,
        format!("{base}/v2/public/base/blobs/{}", public.layers[0].digest),
        None,
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), public.layers[0].bytes);
    assert_eq!(
        up.count("GET", &public.layers[0].digest),
        1,
        "served from the store"
    );
    assert_eq!(get(&c, public_m, None).await.status(), 200);

    // The catalog shows private repositories to authenticated clients only.
    let cat = |creds| {
        let c = c.clone();
        let url = format!("{base}/v2/_catalog");
        async move {
            let v: serde_json::Value = get(&c, url, creds).await.json().await.unwrap();
            v["repositories"].clone()
        }
    };
    assert_eq!(cat(None).await, serde_json::json!(["public/base"]));
    assert_eq!(
        cat(Some((USER, PASS))).await,
        serde_json::json!(["org/app", "public/base"])
    );
    gw.stop().await;

    // The marks survive a restart: still no leak with an empty memory cache.
    let gw = Gateway::start(&cfg, &dir.path().join("data")).await;
    let sneaky_blob = format!(
        "{}/v2/public/base/blobs/{}",
        gw.url(0),
        secret.layers[0].digest
    );
    assert_eq!(get(&c, sneaky_blob, None).await.status(), 404);
    gw.stop().await;
    assert_store_verified(&dir.path().join("data"));
}

#[tokio::test]
async fn fetch_requires_auth_serves_the_cache_to_everyone() {
    let up = FakeUpstream::start(Options::default()).await;
    let img = docker_image(94, &[4000]);
    up.add_image("library/cached", "1", &img);
    up.add_image("library/cold", "1", &docker_image(95, &[10]));
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "[auth]\nhtpasswd = {:?}\n[[listener]]\naddr = \"127.0.0.1:0\"\n{}",
        htpasswd(dir.path()),
        upstream_toml(
            "docker.io",
            &up.url(),
            "default = true\nfetch_requires_auth = true"
        )
    );
    let gw = Gateway::start(&cfg, &dir.path().join("data")).await;
    let c = client();
    let base = gw.url(0);
    let blob = format!("{base}/v2/library/cached/blobs/{}", img.layers[0].digest);

    // Anonymous clients cannot bring anything new in.
    let r = get(&c, format!("{base}/v2/library/cold/manifests/1"), None).await;
    assert_eq!(r.status(), 401);
    assert!(challenge(&r).starts_with("Basic realm=\"mirrorgate\""));
    assert_eq!(error_code(r).await, "UNAUTHORIZED");
    assert_eq!(get(&c, blob.clone(), None).await.status(), 401);
    assert_eq!(c.head(&blob).send().await.unwrap().status(), 401);
    let tags = format!("{base}/v2/library/cached/tags/list");
    assert_eq!(get(&c, tags.clone(), None).await.status(), 401);
    assert!(
        up.requests().is_empty(),
        "an anonymous request reached upstream"
    );

    // An authenticated client fills the cache ...
    let m = format!("{base}/v2/library/cached/manifests/1");
    assert_eq!(get(&c, m.clone(), Some((USER, PASS))).await.status(), 200);
    assert_eq!(
        get(&c, blob.clone(), Some((USER, PASS))).await.status(),
        200
    );
    assert_eq!(get(&c, tags, Some((USER, PASS))).await.status(), 200);
    let upstream_requests = up.requests().len();

    // ... and then anyone may read it, without upstream traffic.
    let r = get(&c, m, None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), img.manifest.bytes);
    let r = get(&c, blob.clone(), None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), img.layers[0].bytes);
    assert_eq!(c.head(&blob).send().await.unwrap().status(), 200);
    let by_digest = format!("{base}/v2/library/cached/manifests/{}", img.manifest.digest);
    assert_eq!(get(&c, by_digest, None).await.status(), 200);
    assert_eq!(up.requests().len(), upstream_requests);
    gw.stop().await;

    // After a restart (nothing in memory) the cached tag is still readable.
    let gw = Gateway::start(&cfg, &dir.path().join("data")).await;
    let r = get(
        &c,
        format!("{}/v2/library/cached/manifests/1", gw.url(0)),
        None,
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(up.requests().len(), upstream_requests);
    gw.stop().await;
}

#[tokio::test]
async fn anonymous_off_requires_credentials_everywhere() {
    let up = FakeUpstream::start(Options::default()).await;
    up.add_image("library/x", "1", &docker_image(96, &[10]));
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "[auth]\nhtpasswd = {:?}\nanonymous = false\n[[listener]]\naddr = \"127.0.0.1:0\"\n{}",
        htpasswd(dir.path()),
        upstream_toml("docker.io", &up.url(), "default = true")
    );
    let gw = Gateway::start(&cfg, &dir.path().join("data")).await;
    let c = client();
    let ping = format!("{}/v2/", gw.url(0));
    let r = get(&c, ping.clone(), None).await;
    assert_eq!(r.status(), 401);
    assert!(challenge(&r).starts_with("Basic "));
    assert_eq!(get(&c, ping, Some((USER, PASS))).await.status(), 200);
    let m = format!("{}/v2/library/x/manifests/1", gw.url(0));
    assert_eq!(get(&c, m.clone(), None).await.status(), 401);
    assert_eq!(get(&c, m, Some((USER, PASS))).await.status(), 200);
    // Debug output of the config never shows hashes or passwords.
    let config = mirrorgate::config::Config::from_toml(&cfg, dir.path()).unwrap();
    let dbg = format!("{config:?}");
    assert!(!dbg.contains("$2b$") && !dbg.contains(PASS), "{dbg}");
    gw.stop().await;
}

#[test]
fn rules_need_authentication_configured() {
    let dir = tempfile::tempdir().unwrap();
    for extra in ["private = [\"org/*\"]", "fetch_requires_auth = true"] {
        let cfg = format!(
            "[[listener]]\naddr = \"127.0.0.1:0\"\n{}",
            upstream_toml("docker.io", "http://127.0.0.1:9", extra)
        );
        let err = mirrorgate::config::Config::from_toml(&cfg, dir.path()).unwrap_err();
        assert!(err.to_string().contains("[auth] htpasswd"), "{err}");
    }
    let bad = format!(
        "[[listener]]\naddr = \"127.0.0.1:0\"\nallow = [\"10.0.0.0/40\"]\n{}",
        upstream_toml("docker.io", "http://127.0.0.1:9", "")
    );
    let err = mirrorgate::config::Config::from_toml(&bad, dir.path()).unwrap_err();
    assert!(err.to_string().contains("listener[0].allow[0]"), "{err}");
    let bad = format!(
        "[[listener]]\naddr = \"127.0.0.1:0\"\n{}",
        upstream_toml("docker.io", "http://127.0.0.1:9", "deny = [\"Upper/*\"]")
    );
    let err = mirrorgate::config::Config::from_toml(&bad, dir.path()).unwrap_err();
    assert!(err.to_string().contains("deny[0]"), "{err}");
}
