//! One TLS listener for every upstream: certificates per SNI name from the
//! local CA, SNI and Host routing, HTTP/2 by ALPN, `/ca.crt`.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::support::image::{docker_image, oci_image};
use crate::support::*;

pub(crate) fn tls_client(ca_pem: &[u8], resolve: &[(&str, SocketAddr)]) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    for c in mirrorgate::pem::parse_certs(ca_pem) {
        roots.add(c).unwrap();
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let mut b = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .no_proxy();
    for (name, addr) in resolve {
        b = b.resolve(name, *addr);
    }
    b.build().unwrap()
}

#[tokio::test]
async fn sni_picks_the_upstream_and_unknown_names_get_no_certificate() {
    let hub = FakeUpstream::start(Options::default()).await;
    let ghcr = FakeUpstream::start(Options::default()).await;
    // Three layers of 1 to 3 MiB: streamed at once on one HTTP/2
    // connection below (the mirror coalesces its h2 writes).
    let (h, g) = (
        docker_image(50, &[1 << 20, 2 << 20, 3 << 20]),
        oci_image(51, &[100]),
    );
    hub.add_image("org/app", "1", &h);
    ghcr.add_image("org/app", "1", &g);
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let cfg = format!(
        "[tls]\nca_dir = {:?}\nnames = [\"mirror.test\"]\n\
         [[listener]]\naddr = \"127.0.0.1:0\"\ntls = true\n\
         [[listener]]\naddr = \"127.0.0.1:0\"\n{}{}",
        certs.display().to_string(),
        upstream_toml(
            "docker.io",
            &hub.url(),
            "default = true\nhosts = [\"docker.mirror.test\"]"
        ),
        upstream_toml("ghcr.io", &ghcr.url(), "hosts = [\"ghcr.mirror.test\"]"),
    );
    let gw = Gateway::start(&cfg, dir.path()).await;
    // The CA was created on first start, key private.
    let ca_pem = std::fs::read(certs.join("ca.crt")).unwrap();
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(certs.join("ca.key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    let port = gw.addrs[0].port();
    let c = tls_client(
        &ca_pem,
        &[
            ("docker.mirror.test", gw.addrs[0]),
            ("ghcr.mirror.test", gw.addrs[0]),
            ("mirror.test", gw.addrs[0]),
            ("evil.test", gw.addrs[0]),
        ],
    );
    for (host, img) in [("docker.mirror.test", &h), ("ghcr.mirror.test", &g)] {
        let r = c
            .get(format!("https://{host}:{port}/v2/org/app/manifests/1"))
            .header("accept", ACCEPT_ALL)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{host}");
        assert_eq!(r.version(), reqwest::Version::HTTP_2, "h2 by ALPN");
        assert_eq!(r.bytes().await.unwrap(), img.manifest.bytes, "{host}");
    }
    // Several blobs at once, multiplexed on the client's one connection.
    let gets = h.layers.iter().map(|l| {
        let c = c.clone();
        async move {
            let r = c
                .get(format!(
                    "https://docker.mirror.test:{port}/v2/org/app/blobs/{}",
                    l.digest
                ))
                .send()
                .await
                .unwrap();
            assert_eq!(r.version(), reqwest::Version::HTTP_2);
            assert_eq!(r.status(), 200);
            r.bytes().await.unwrap()
        }
    });
    let bodies = futures_util::future::join_all(gets).await;
    for (l, b) in h.layers.iter().zip(&bodies) {
        assert_eq!(b, &l.bytes, "{}", l.digest);
    }
    // The mirror's own name: default upstream, or ?ns= / prefix.
    let r = c
        .get(format!(
            "https://mirror.test:{port}/v2/org/app/manifests/1?ns=ghcr.io"
        ))
        .header("accept", ACCEPT_ALL)
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap(), g.manifest.bytes);
    // An unconfigured name gets no certificate: the handshake fails.
    let e = c.get(format!("https://evil.test:{port}/v2/")).send().await;
    assert!(e.is_err(), "unknown SNI must not get a certificate");
    // No SNI (an IP literal): the listener-IP certificate; /ca.crt bootstraps.
    let r = c
        .get(format!("https://127.0.0.1:{port}/ca.crt"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), ca_pem);
    // Plain HTTP: the Host header routes.
    let r = client()
        .get(format!("{}/v2/org/app/manifests/1", gw.url(1)))
        .header("host", "ghcr.mirror.test")
        .header("accept", ACCEPT_ALL)
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap(), g.manifest.bytes);
    gw.stop().await;

    // A restart reuses the same CA.
    let gw = Gateway::start(&cfg, dir.path()).await;
    assert_eq!(std::fs::read(certs.join("ca.crt")).unwrap(), ca_pem);
    gw.stop().await;
}

#[tokio::test]
async fn stalled_handshakes_time_out_and_do_not_block_others() {
    let up = FakeUpstream::start(Options::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "[tls]\nca_dir = {:?}\nhandshake_timeout = \"1s\"\n[[listener]]\naddr = \"127.0.0.1:0\"\ntls = true\n{}",
        dir.path().join("certs").display().to_string(),
        upstream_toml("docker.io", &up.url(), "default = true"),
    );
    let gw = Gateway::start(&cfg, dir.path()).await;
    // A client that connects and says nothing.
    let connected = std::time::Instant::now();
    let mut idle = tokio::net::TcpStream::connect(gw.addrs[0]).await.unwrap();
    let ca = std::fs::read(dir.path().join("certs/ca.crt")).unwrap();
    let c = tls_client(&ca, &[]);
    let r = c
        .get(format!("https://127.0.0.1:{}/v2/", gw.addrs[0].port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the idle client does not block others");
    // The idle connection is closed by the timeout: the read ends (EOF or
    // reset) without the client ever sending a byte. The bound only turns
    // a hang into a failure.
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        tokio::io::AsyncReadExt::read(&mut idle, &mut buf),
    )
    .await
    .expect("stalled handshake was closed")
    .unwrap_or(0);
    assert_eq!(n, 0, "stalled handshake was closed");
    // The server's timer starts after our connect did, so this holds
    // however slow the machine is.
    assert!(
        connected.elapsed() >= std::time::Duration::from_millis(900),
        "closed by the 1 s timeout, not at once"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_scripts_install_what_client_config_writes_and_probes_answer() {
    use mirrorgate::clientconfig::{ClientKind, generate};
    let hub = FakeUpstream::start(Options::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let cfg = format!(
        "[tls]\nca_dir = {:?}\nnames = [\"mirror.test\"]\n[[listener]]\naddr = \"127.0.0.1:0\"\ntls = true\n{}{}",
        certs.display().to_string(),
        upstream_toml("docker.io", &hub.url(), "default = true"),
        upstream_toml("quay.io", &hub.url(), ""),
    );
    let gw = Gateway::start(&cfg, dir.path()).await;
    let ca_pem = std::fs::read(certs.join("ca.crt")).unwrap();
    let c = tls_client(&ca_pem, &[("mirror.test", gw.addrs[0])]);
    let port = gw.addrs[0].port();
    let base = format!("https://mirror.test:{port}");
    for (probe, want) in [("livez", "alive\n"), ("readyz", "ready\n")] {
        let r = c.get(format!("{base}/{probe}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{probe}");
        assert_eq!(r.text().await.unwrap(), want);
    }
    // The upstream down changes neither: serving the cache is the job then.
    hub.set_down(true);
    let r = c.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200, "ready with the upstream down");
    hub.set_down(false);

    for (kind, name) in [
        (ClientKind::Containerd, "containerd"),
        (ClientKind::Docker, "docker"),
        (ClientKind::Podman, "podman"),
    ] {
        let r = c.get(format!("{base}/setup/{name}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{name}");
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/x-shellscript")
        );
        let script = r.text().await.unwrap();
        let stage = dir.path().join(format!("stage-{name}"));
        for round in 0..2 {
            run_setup(&script, &stage, &format!("{name} round {round}"));
        }
        // Exactly what `client-config` writes, for the address the script
        // was fetched from; a second run changed nothing.
        let config = gw.app().config().clone();
        let mirror = format!("mirror.test:{port}").parse().unwrap();
        let install = std::path::Path::new(kind.default_install_dir());
        let want = generate(
            kind,
            &config,
            &mirror,
            std::str::from_utf8(&ca_pem).unwrap(),
            install,
        )
        .unwrap();
        for f in &want {
            let p = stage.join(install.strip_prefix("/").unwrap()).join(&f.path);
            assert_eq!(
                std::fs::read_to_string(&p).unwrap(),
                f.contents,
                "{}",
                p.display()
            );
        }
        let old = files_under(&stage)
            .into_iter()
            .filter(|p| {
                p.to_string_lossy().contains("mirrorgate-old")
                    || p.to_string_lossy().contains("mirrorgate-new")
            })
            .count();
        assert_eq!(old, 0, "a re-run keeps no old copies of identical files");
    }
    // A changed file on the node is kept aside.
    let stage = dir.path().join("stage-docker");
    let daemon = stage.join("etc/docker/daemon.json");
    std::fs::write(&daemon, "{\"debug\": true}\n").unwrap();
    let script = c
        .get(format!("{base}/setup/docker"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    run_setup(&script, &stage, "docker over a changed daemon.json");
    assert_eq!(
        std::fs::read_to_string(stage.join("etc/docker/daemon.json.mirrorgate-old")).unwrap(),
        "{\"debug\": true}\n"
    );
    let r = c.get(format!("{base}/setup/windows")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    gw.stop().await;
}

/// Runs a `/setup/<client>` script with `sh`, installing under `stage`.
fn run_setup(script: &str, stage: &std::path::Path, what: &str) {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .env("MIRRORGATE_ROOT", stage)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
