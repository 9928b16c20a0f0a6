//! Config reload: SIGHUP and `mirrorgate reload` on the real binary while a
//! large download runs, and `App::reload` of access rules, upstream
//! settings and TLS names in-process.

use std::process::Command;

use futures_util::StreamExt as _;
use sha2::Digest as _;

use crate::support::image::{docker_image, oci_image, random_bytes, sha256_digest};
use crate::support::*;

/// `mirrorgate reload --config <cfg>` off the runtime's threads.
async fn reload(cfg: &std::path::Path) -> (bool, String) {
    let cfg = cfg.to_owned();
    tokio::task::spawn_blocking(move || reload_command(&cfg))
        .await
        .unwrap()
}

/// `mirrorgate reload --config <cfg>`: (success, stdout + stderr).
fn reload_command(cfg: &std::path::Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mirrorgate"))
        .args(["reload", "--config", cfg.to_str().unwrap()])
        .current_dir(cfg.parent().unwrap())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_an_upstream_while_a_200_mib_download_continues() {
    let hub = FakeUpstream::start(Options::default()).await;
    let ghcr = FakeUpstream::start(Options::default()).await;
    let big = random_bytes(140, 200 << 20);
    let big_digest = sha256_digest(&big);
    hub.add_blob(&crate::support::image::Blob {
        digest: big_digest.clone(),
        bytes: big.into(),
        media_type: "application/octet-stream",
    });
    // Upstream sends the first 64 MiB, then waits: the reload happens
    // while the download is certainly under way.
    let gate = hub.hold_blobs_after(64 << 20);
    let img = oci_image(141, &[3000]);
    ghcr.add_image("org/tool", "1", &img);

    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &hub.url(), "");
    let base = std::fs::read_to_string(&cfg).unwrap();
    let mirror = spawn(&cfg).await;
    let url = mirror.url();

    let download = tokio::spawn({
        let url = format!("{url}/v2/library/big/blobs/{big_digest}");
        async move {
            let r = client().get(url).send().await.unwrap();
            assert_eq!(r.status(), 200);
            let mut hash = sha2::Sha256::new();
            let mut n = 0u64;
            let mut body = r.bytes_stream();
            while let Some(chunk) = body.next().await {
                let chunk = chunk.expect("the download is never cut");
                n += chunk.len() as u64;
                hash.update(&chunk);
            }
            (n, format!("sha256:{}", hex::encode(hash.finalize())))
        }
    });
    gate.wait_for_requests(1).await;

    // Before: ghcr.io is not an upstream.
    let tool = || {
        client()
            .get(format!("{url}/v2/org/tool/manifests/1?ns=ghcr.io"))
            .header("accept", ACCEPT_ALL)
            .send()
    };
    assert_eq!(
        tool().await.unwrap().status(),
        404,
        "no ghcr.io upstream yet"
    );

    // Add ghcr.io, give docker.io (whose client runs the download) a new
    // client, and change a setting that needs a restart.
    let changed_hub = base.replace(
        "default = true\n",
        "default = true\nread_timeout = \"61s\"\n",
    );
    assert_ne!(changed_hub, base);
    std::fs::write(
        &cfg,
        format!(
            "{changed_hub}{}[server]\nmax_connections = 77\n",
            upstream_toml("ghcr.io", &ghcr.url(), "")
        ),
    )
    .unwrap();
    let (ok, out) = reload(&cfg).await;
    assert!(ok, "reload refused:\n{out}\n{}", mirror.log());
    assert!(out.contains("upstreams added: ghcr.io"), "{out}");
    assert!(out.contains("upstreams changed: docker.io"), "{out}");
    assert!(
        out.contains("needs a restart to take effect: [server]"),
        "{out}"
    );
    mirror
        .wait_for_log("the restart warning", |l| {
            l.contains("takes effect at the next restart") && l.contains("[server]")
        })
        .await;

    let r = tool().await.unwrap();
    assert_eq!(r.status(), 200, "the new upstream serves");
    assert_eq!(r.bytes().await.unwrap(), img.manifest.bytes);

    // A file the mirror cannot use (a credential from an unset variable:
    // only the server reads secrets) is refused; the running config stays.
    std::fs::write(
        &cfg,
        format!(
            "{base}{}",
            upstream_toml(
                "quay.io",
                &ghcr.url(),
                "username = \"u\"\npassword = { env = \"MIRRORGATE_TEST_UNSET_VARIABLE\" }"
            )
        ),
    )
    .unwrap();
    let (ok, out) = reload(&cfg).await;
    assert!(
        !ok,
        "a config with a missing secret must be refused:\n{out}"
    );
    assert!(
        out.contains("refused the config") && out.contains("MIRRORGATE_TEST_UNSET_VARIABLE"),
        "{out}"
    );
    mirror
        .wait_for_log("the refusal", |l| l.contains("config reload refused"))
        .await;
    let r = tool().await.unwrap();
    assert_eq!(r.status(), 200, "still served after a refused reload");

    // A file that does not parse is refused before anything is sent.
    std::fs::write(&cfg, "[[upstream]\n").unwrap();
    let (ok, out) = reload_command(&cfg);
    assert!(!ok && out.contains("nothing sent"), "{out}");

    // The download went on through all of it, whole and verified.
    gate.release();
    let (n, digest) = download.await.unwrap();
    assert_eq!(n, 200 << 20);
    assert_eq!(digest, big_digest);
    assert_eq!(hub.count("GET", "/blobs/"), 1);
}

#[tokio::test]
async fn reload_applies_access_rules_upstream_settings_and_tls_names() {
    let hub = FakeUpstream::start(Options::bearer(3600)).await;
    let ghcr = FakeUpstream::start(Options::default()).await;
    let a = docker_image(142, &[100, 200]);
    let b = oci_image(143, &[100]);
    hub.add_image("library/open", "1", &a);
    hub.add_image("library/secret", "1", &a);
    ghcr.add_image("org/b", "1", &b);
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let config = |names: &str, hub_extra: &str, ghcr_extra: &str| {
        format!(
            "[tls]\nca_dir = {:?}\nnames = [{names}]\n\
             [[listener]]\naddr = \"127.0.0.1:0\"\ntls = true\n\
             [[listener]]\naddr = \"127.0.0.1:0\"\n{}{}",
            certs.display().to_string(),
            upstream_toml(
                "docker.io",
                &hub.url(),
                &format!("default = true\n{hub_extra}")
            ),
            upstream_toml("ghcr.io", &ghcr.url(), ghcr_extra),
        )
    };
    let gw = Gateway::start(&config("\"old.test\"", "", ""), dir.path()).await;
    let ca = std::fs::read(certs.join("ca.crt")).unwrap();
    let port = gw.addrs[0].port();
    let tls = crate::tls::tls_client(&ca, &[("old.test", gw.addrs[0]), ("new.test", gw.addrs[0])]);
    let get = |url: String| {
        let c = client();
        async move {
            c.get(url)
                .header("accept", ACCEPT_ALL)
                .send()
                .await
                .unwrap()
        }
    };
    let secret = format!("{}/v2/library/secret/manifests/1", gw.url(1));
    let open = format!("{}/v2/library/open/manifests/1", gw.url(1));
    assert_eq!(get(secret.clone()).await.status(), 200);
    assert_eq!(get(open.clone()).await.status(), 200);
    let r = get(format!("{}/v2/org/b/manifests/1?ns=ghcr.io", gw.url(1))).await;
    assert_eq!(r.status(), 200);
    assert!(
        tls.get(format!("https://old.test:{port}/v2/"))
            .send()
            .await
            .is_ok()
    );
    assert!(
        tls.get(format!("https://new.test:{port}/v2/"))
            .send()
            .await
            .is_err(),
        "new.test is not a configured name yet"
    );

    // Deny a repository of docker.io, change ghcr.io's tag TTL, swap the
    // TLS names.
    let r = gw
        .reload(&config(
            "\"new.test\"",
            "deny = [\"library/secret\"]",
            "tag_ttl = \"1s\"",
        ))
        .await
        .unwrap();
    assert_eq!(
        (
            r.upstreams.added.len(),
            r.upstreams
                .changed
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            r.upstreams.removed.len()
        ),
        (0, vec!["docker.io".to_owned(), "ghcr.io".to_owned()], 0)
    );
    assert!(r.needs_restart.is_empty(), "{:?}", r.needs_restart);
    let r = get(secret.clone()).await;
    assert_eq!(r.status(), 403);
    assert_eq!(error_code(r).await, "DENIED");
    assert_eq!(get(open).await.status(), 200, "still served");
    // New connections (the client's pooled one keeps its certificate).
    let tls = crate::tls::tls_client(&ca, &[("old.test", gw.addrs[0]), ("new.test", gw.addrs[0])]);
    let r = tls
        .get(format!("https://new.test:{port}/v2/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the new name has a certificate");
    assert!(
        tls.get(format!("https://old.test:{port}/v2/"))
            .send()
            .await
            .is_err()
    );

    // A reload keeps a client whose connection settings are the same, and
    // with it the token it holds for a repository: the next upstream
    // request for that repository needs no new one. (The deny rule and the
    // TTL above were such changes too.)
    let blob = |i: usize| format!("{}/v2/library/open/blobs/{}", gw.url(1), a.layers[i].digest);
    assert_eq!(get(blob(0)).await.bytes().await.unwrap(), a.layers[0].bytes);
    let tokens = hub.token_requests();
    let same = config(
        "\"new.test\"",
        "deny = [\"library/secret\"]",
        "tag_ttl = \"1s\"",
    );
    let r = gw.reload(&same).await.unwrap();
    assert_eq!(r.upstreams, Default::default());
    assert_eq!(get(blob(1)).await.bytes().await.unwrap(), a.layers[1].bytes);
    assert_eq!(hub.count("GET", &a.layers[1].digest), 1, "fetched upstream");
    assert_eq!(
        hub.token_requests(),
        tokens,
        "with the token held before the reload"
    );

    // Removing ghcr.io: its repositories are no longer routed.
    let only_hub = format!(
        "[tls]\nca_dir = {:?}\nnames = [\"new.test\"]\n\
         [[listener]]\naddr = \"127.0.0.1:0\"\ntls = true\n\
         [[listener]]\naddr = \"127.0.0.1:0\"\n{}",
        certs.display().to_string(),
        upstream_toml(
            "docker.io",
            &hub.url(),
            "default = true\ndeny = [\"library/secret\"]"
        ),
    );
    let r = gw.reload(&only_hub).await.unwrap();
    assert_eq!(r.upstreams.removed.len(), 1);
    let r = get(format!("{}/v2/org/b/manifests/1?ns=ghcr.io", gw.url(1))).await;
    assert_eq!(r.status(), 404);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_restarts_changed_warm_lists_and_keeps_the_others() {
    let up = FakeUpstream::start(Options::default()).await;
    let (a, b) = (docker_image(144, &[100]), docker_image(145, &[100]));
    up.add_image("library/a", "1", &a);
    up.add_image("library/b", "1", &b);
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &up.url(), "");
    let base = std::fs::read_to_string(&cfg).unwrap();
    let warm = |first: &str| {
        format!(
            "{base}[[warm]]\nimages = [{first}]\ninterval = \"1h\"\n\
             [[warm]]\nimages = [\"library/a:1\"]\ninterval = \"1h\"\n"
        )
    };
    std::fs::write(&cfg, warm("\"library/a:1\"")).unwrap();
    let mirror = spawn(&cfg).await;
    let runs = |entry: usize| {
        mirror
            .log()
            .lines()
            .filter(|l| l.contains(" warmed ") && l.contains(&format!("entry={entry} ")))
            .count()
    };
    for entry in [0, 1] {
        mirror
            .wait_for_log("the first runs", |l| {
                l.contains(" warmed ") && l.contains(&format!("entry={entry} ok=1 "))
            })
            .await;
    }
    assert_eq!(up.count("GET", &b.manifest.digest), 0);

    // Entry 0 gains an image: it runs again at once; entry 1 keeps its
    // schedule (next run in an hour).
    std::fs::write(&cfg, warm("\"library/a:1\", \"library/b:1\"")).unwrap();
    let (ok, out) = reload(&cfg).await;
    assert!(ok, "{out}");
    mirror
        .wait_for_log("entry 0 warming both", |l| {
            l.contains(" warmed ") && l.contains("entry=0 ok=2 ")
        })
        .await;
    assert!(out.contains("warm lists restarted: 1\n"), "{out}");
    assert_eq!(runs(0), 2);
    assert_eq!(runs(1), 1, "an unchanged entry is not run again");
    let tags = "/v2/library/b/manifests/1";
    assert!(
        up.count("GET", tags) + up.count("HEAD", tags) >= 1,
        "b was warmed"
    );
}

#[tokio::test]
async fn a_reload_keeps_what_needs_a_restart_and_refuses_to_orphan_a_pinned_listener() {
    let hub = FakeUpstream::start(Options::default()).await;
    let ghcr = FakeUpstream::start(Options::default()).await;
    let img = oci_image(146, &[100]);
    ghcr.add_image("org/x", "1", &img);
    let dir = tempfile::tempdir().unwrap();
    let ups = format!(
        "{}{}",
        upstream_toml("docker.io", &hub.url(), "default = true"),
        upstream_toml("ghcr.io", &ghcr.url(), "")
    );
    let cfg =
        |listeners: &str, ups: &str| format!("[server]\nmax_connections = 50\n{listeners}{ups}");
    let pinned = "[[listener]]\naddr = \"127.0.0.1:0\"\n[[listener]]\naddr = \"127.0.0.1:0\"\nupstream = \"ghcr.io\"\n";
    let gw = Gateway::start(&cfg(pinned, &ups), dir.path()).await;
    let manifest = format!("{}/v2/org/x/manifests/1", gw.url(1));
    let get = || client().get(&manifest).header("accept", ACCEPT_ALL).send();
    assert_eq!(get().await.unwrap().status(), 200);

    // The file drops the pinned listener and ghcr.io: the listener runs on
    // until a restart, so its upstream may not go.
    let hub_only = upstream_toml("docker.io", &hub.url(), "default = true");
    let one = "[[listener]]\naddr = \"127.0.0.1:0\"\n";
    let e = gw.reload(&cfg(one, &hub_only)).await.unwrap_err();
    assert!(e.to_string().contains("pinned to upstream ghcr.io"), "{e}");
    assert_eq!(
        get().await.unwrap().status(),
        200,
        "the running config stays"
    );

    // Only the listeners and a limit change: both wait for a restart, and
    // the config the app reports is the one running.
    let r = gw
        .reload(&format!("[server]\nmax_connections = 9\n{one}{ups}"))
        .await
        .unwrap();
    assert!(
        r.needs_restart.contains(&"listeners"),
        "{:?}",
        r.needs_restart
    );
    assert!(r.needs_restart.iter().any(|s| s.starts_with("[server]")));
    let running = gw.app().config();
    assert_eq!(running.listeners.len(), 2);
    assert_eq!(running.server.max_connections, 50);
    assert_eq!(get().await.unwrap().status(), 200);
    // A second reload of the same file says so again.
    let r = gw
        .reload(&format!("[server]\nmax_connections = 9\n{one}{ups}"))
        .await
        .unwrap();
    assert!(r.needs_restart.contains(&"listeners"));
    let s = gw.status_json().await;
    assert_eq!(
        (&s["config"]["reloads"], &s["config"]["refused"]),
        (&2.into(), &1.into())
    );
    assert!(
        s["config"]["last_reload_error"].is_null(),
        "the last one was applied"
    );
    gw.stop().await;
}
