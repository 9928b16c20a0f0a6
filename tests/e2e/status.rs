//! The status page and `/status.json`: upstream health (breaker, last
//! error, latency, rate-limit headroom), what the cache saved, downloads
//! under way, the largest repositories, recent pulls; access like
//! `/metrics`. And the probes: ready through an upstream outage, not ready
//! while draining.

use crate::access::{PASS, USER, htpasswd};
use crate::support::image::docker_image;
use crate::support::*;

async fn status(c: &reqwest::Client, base: &str) -> serde_json::Value {
    let r = c.get(format!("{base}/status.json")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    r.json().await.unwrap()
}

#[tokio::test]
async fn status_shows_upstreams_savings_downloads_repositories_and_pulls() {
    let hub = FakeUpstream::start(Options::bearer(3600)).await;
    hub.set_rate_limit(100);
    let ghcr = FakeUpstream::start(Options::default()).await;
    let img = docker_image(150, &[4000, 6000]);
    hub.add_image("library/app", "1", &img);
    let big = docker_image(151, &[3 << 20]);
    hub.add_image("library/big", "1", &big);
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "[[listener]]\naddr = \"127.0.0.1:0\"\n{}{}",
        upstream_toml(
            "docker.io",
            &hub.url(),
            "default = true\nbreaker_failures = 1"
        ),
        upstream_toml("ghcr.io", &ghcr.url(), ""),
    );
    let gw = Gateway::start(&cfg, dir.path()).await;
    let c = client();
    let base = gw.url(0);

    // A pull: the tag, then every blob twice (fetched, then from the cache).
    let r = c
        .get(format!("{base}/v2/library/app/manifests/1"))
        .header("accept", ACCEPT_ALL)
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap(), img.manifest.bytes);
    for _ in 0..2 {
        for b in img.layers.iter().chain([&img.config]) {
            let r = c
                .get(format!("{base}/v2/library/app/blobs/{}", b.digest))
                .send()
                .await
                .unwrap();
            assert_eq!(r.bytes().await.unwrap(), b.bytes);
        }
        gw.settle().await;
    }
    // The first view starts counting the store (later ones reuse the count
    // for at least 5 s: it reads every record); the count is awaited.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    let s = loop {
        let s = status(&c, &base).await;
        if s["store"]["counted_blobs"].as_u64().is_some() {
            break s;
        }
        assert!(tokio::time::Instant::now() < deadline, "never counted: {s}");
        tokio::task::yield_now().await;
    };
    let names: Vec<_> = s["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["docker.io", "ghcr.io"]);
    assert_eq!(s["upstreams"][0]["breaker"], "closed");
    assert!(s["upstreams"][0]["last_error"].is_null());
    assert!(s["upstreams"][1]["rate_limit"].is_null());
    assert_eq!(s["listeners"][0]["addr"], gw.addrs[0].to_string());
    let blob_bytes: u64 = img
        .layers
        .iter()
        .chain([&img.config])
        .map(|b| b.bytes.len() as u64)
        .sum();
    let hour = &s["cache"]["last_hour"];
    assert_eq!(hour["requests_from_upstream"], 4, "{hour}");
    assert_eq!(hour["requests_from_cache"], 3, "{hour}");
    assert_eq!(hour["bytes_from_cache"], blob_bytes);
    assert_eq!(
        hour["bytes_from_upstream"],
        blob_bytes + img.manifest.bytes.len() as u64
    );
    assert_eq!(s["cache"]["since_start"]["bytes_from_cache"], blob_bytes);
    let hub_s = &s["upstreams"][0];
    assert_eq!(hub_s["rate_limit"]["limit"], 100);
    assert_eq!(hub_s["rate_limit"]["remaining"], 99);
    assert_eq!(hub_s["rate_limit"]["window_seconds"], 21600);
    assert_eq!(hub_s["token_fetches"], 1);
    assert!(hub_s["latency"]["requests"].as_u64().unwrap() >= 4);
    assert_eq!(hub_s["since_start"]["bytes_from_cache"], blob_bytes);
    let pulls = s["recent_pulls"].as_array().unwrap();
    assert_eq!(pulls.len(), 1, "{pulls:?}");
    let p = &pulls[0];
    assert_eq!(
        (
            &p["upstream"],
            &p["repository"],
            &p["reference"],
            &p["manifests"],
            &p["blobs"]
        ),
        (
            &"docker.io".into(),
            &"library/app".into(),
            &"1".into(),
            &1.into(),
            &6.into()
        )
    );
    assert_eq!(p["bytes_from_cache"], blob_bytes);
    let largest = &s["largest_repositories"];
    assert_eq!(largest[0]["repository"], "library/app", "{largest}");
    // Its blobs and its manifest.
    assert_eq!(
        largest[0]["bytes"],
        blob_bytes + img.manifest.bytes.len() as u64
    );

    // A download under way shows its progress.
    let gate = hub.hold_blobs_after(1 << 20);
    let layer = big.layers[0].clone();
    let pending = tokio::spawn({
        let (c, url) = (
            c.clone(),
            format!("{base}/v2/library/big/blobs/{}", layer.digest),
        );
        async move { c.get(url).send().await.unwrap().bytes().await.unwrap() }
    });
    gate.wait_for_requests(1).await;
    // The first MiB is on its way; wait until the mirror has it (the bound
    // only turns a hang into a failure).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    let downloads = loop {
        let s = status(&c, &base).await;
        let d = s["downloads"].as_array().unwrap().clone();
        if d.first()
            .is_some_and(|d| d["received"].as_u64() == Some(1 << 20))
        {
            break d;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no progress shown: {d:?}"
        );
        tokio::task::yield_now().await;
    };
    assert_eq!(downloads[0]["digest"], layer.digest);
    assert_eq!(downloads[0]["repository"], "library/big");
    assert_eq!(downloads[0]["size"], 3 << 20);
    let html = c.get(format!("{base}/status")).send().await.unwrap();
    let csp = html.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
    let html = html.text().await.unwrap();
    assert!(
        html.contains("<progress max=\"3145728\" value=\"1048576\">"),
        "{html}"
    );
    gate.release();
    assert_eq!(pending.await.unwrap(), layer.bytes);

    // The upstream fails: the breaker opens and the error is shown.
    hub.set_down(true);
    let r = c
        .get(format!("{base}/v2/library/app/manifests/2"))
        .header("accept", ACCEPT_ALL)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_server_error());
    let s = status(&c, &base).await;
    assert_eq!(s["upstreams"][0]["breaker"], "open");
    let err = &s["upstreams"][0]["last_error"];
    assert_eq!(err["repository"], "library/app", "{err}");
    assert!(err["message"].as_str().unwrap().contains("503"), "{err}");

    // The HTML page shows the same, escaped, at / and /status.
    for page in ["/", "/status"] {
        let r = c.get(format!("{base}{page}")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        let h = r.text().await.unwrap();
        for want in [
            "data-upstream=\"docker.io\" data-breaker=\"open\"",
            "data-upstream=\"ghcr.io\" data-breaker=\"closed\"",
            "data-image=\"docker.io/library/app:1\"",
            "99 of 100 left",
            "<code>docker.io/library/app</code>",
        ] {
            assert!(h.contains(want), "{page}: no {want}:\n{h}");
        }
    }
    gw.stop().await;
}

#[tokio::test]
async fn status_follows_the_access_rules() {
    let up = FakeUpstream::start(Options::default()).await;
    let secret = docker_image(152, &[100]);
    let public = docker_image(153, &[100]);
    up.add_image("org/secret", "1", &secret);
    up.add_image("pub/app", "1", &public);
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "[auth]\nhtpasswd = {:?}\nanonymous = true\n[[listener]]\naddr = \"127.0.0.1:0\"\n\
         [[listener]]\naddr = \"127.0.0.1:0\"\nallow = [\"127.0.0.2/32\"]\n{}",
        htpasswd(dir.path()),
        upstream_toml(
            "docker.io",
            &up.url(),
            "default = true\nprivate = [\"org/*\"]"
        ),
    );
    let gw = Gateway::start(&cfg, &dir.path().join("data")).await;
    let c = client();
    let base = gw.url(0);
    for (repo, creds) in [("org/secret", Some((USER, PASS))), ("pub/app", None)] {
        let r = crate::access::get(&c, format!("{base}/v2/{repo}/manifests/1"), creds).await;
        assert_eq!(r.status(), 200, "{repo}");
    }
    let pulled = |s: &serde_json::Value| -> Vec<String> {
        s["recent_pulls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["repository"].as_str().unwrap().to_owned())
            .collect()
    };
    // The private repository's upstream fails too.
    up.set_down(true);
    let r = crate::access::get(
        &c,
        format!("{base}/v2/org/secret/manifests/2"),
        Some((USER, PASS)),
    )
    .await;
    assert!(r.status().is_server_error());
    // Anonymous viewers do not see private repositories, nor who pulled;
    // users do.
    let anon = status(&c, &base).await;
    assert_eq!(pulled(&anon), ["pub/app"]);
    let p = &anon["recent_pulls"][0];
    assert!(p["client"].is_null() && p["user"].is_null(), "{p}");
    let e = &anon["upstreams"][0]["last_error"];
    assert!(e["repository"].is_null(), "{e}");
    assert!(!e.to_string().contains("org/secret"), "{e}");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let s = status(&c, &base).await;
        if s["store"]["counted_blobs"].as_u64().is_some() {
            let repos = s["largest_repositories"].to_string();
            assert!(
                repos.contains("pub/app") && !repos.contains("org/secret"),
                "{repos}"
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never counted");
        tokio::task::yield_now().await;
    }
    let html = c
        .get(format!("{base}/status"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !html.contains("org/secret") && !html.contains(USER),
        "{html}"
    );
    let r = c
        .get(format!("{base}/status.json"))
        .basic_auth(USER, Some(PASS))
        .send()
        .await
        .unwrap();
    let user: serde_json::Value = r.json().await.unwrap();
    assert_eq!(pulled(&user), ["pub/app", "org/secret"]);
    assert_eq!(user["recent_pulls"][1]["user"], USER);
    assert_eq!(
        user["upstreams"][0]["last_error"]["repository"],
        "org/secret"
    );
    // Wrong credentials are refused, as on the API.
    let r = c
        .get(format!("{base}/status"))
        .basic_auth(USER, Some("nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // The listener's `allow` applies.
    let r = c.get(format!("{}/status", gw.url(1))).send().await.unwrap();
    assert_eq!(r.status(), 403);
    // `[server] status = false` turns it off (a reload is enough).
    gw.reload(&format!("[server]\nstatus = false\n{cfg}"))
        .await
        .unwrap();
    let r = c.get(format!("{base}/status")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_stay_ready_through_an_upstream_outage_and_drain_on_sigterm() {
    let up = FakeUpstream::start(Options::default()).await;
    let img = docker_image(154, &[500]);
    up.add_image("library/p", "1", &img);
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &up.url(), "breaker_failures = 1");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("[server]\ndrain_delay = \"1h\"\n{text}")).unwrap();
    let mirror = spawn(&cfg).await;
    let c = client();
    let url = mirror.url();
    let probe = |p: &'static str| {
        let (c, url) = (c.clone(), url.clone());
        async move { c.get(format!("{url}/{p}")).send().await.unwrap().status() }
    };
    let manifest = format!("{url}/v2/library/p/manifests/1");
    let get_manifest = || c.get(&manifest).header("accept", ACCEPT_ALL).send();
    assert_eq!(get_manifest().await.unwrap().status(), 200);
    // Upstream down: the breaker opens, the cache still serves, and the
    // mirror stays ready: serving the cache is its job now.
    up.set_down(true);
    let r = c
        .get(format!("{url}/v2/library/p/manifests/other"))
        .header("accept", ACCEPT_ALL)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_server_error());
    let s = status(&c, &url).await;
    assert_eq!(s["upstreams"][0]["breaker"], "open");
    assert_eq!(probe("readyz").await, 200);
    assert_eq!(probe("livez").await, 200);
    assert_eq!(
        get_manifest().await.unwrap().status(),
        200,
        "served from the cache"
    );

    // SIGTERM: not ready at once, still alive and serving during the drain
    // delay (a load balancer moves clients away first).
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &mirror.pid().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    mirror
        .wait_for_log("the drain", |l| l.contains("shutting down: not ready"))
        .await;
    assert_eq!(probe("readyz").await, 503);
    assert_eq!(probe("livez").await, 200);
    assert_eq!(get_manifest().await.unwrap().status(), 200);
}
