//! Every error that reaches a log line carries its cause chain: which
//! upstream and host, and the underlying reason (DNS, refused connection,
//! certificate, timeout). The client gets the OCI envelope with a short
//! message that names the upstream and none of its internals. These run the
//! real binary and read its log.

use std::time::Duration;

use crate::support::fake_upstream::test_ca_and_expired_identity;
use crate::support::image::docker_image;
use crate::support::*;

/// Pulls a manifest through `mirror`; returns the status, the OCI code and
/// the message the client saw, and the mirror's log line for it.
async fn failed_pull(mirror: &Proc) -> (u16, String, String, String) {
    let r = client()
        .get(format!("{}/v2/library/x/manifests/1", mirror.url()))
        .header("accept", ACCEPT_ALL)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let v: serde_json::Value = r.json().await.expect("an OCI error envelope");
    let code = v["errors"][0]["code"].as_str().unwrap().to_owned();
    let message = v["errors"][0]["message"].as_str().unwrap().to_owned();
    let line = mirror
        .wait_for_log("the upstream error", |l| l.contains("upstream error"))
        .await;
    (status, code, message, line)
}

/// The client sees which upstream failed, but not how it is reached or why.
fn assert_no_internals(message: &str, internals: &[&str]) {
    assert!(message.contains("docker.io"), "{message}");
    for s in internals {
        assert!(
            !message.contains(s),
            "{s:?} leaked to the client: {message}"
        );
    }
}

#[tokio::test]
async fn a_refused_connection_is_logged_with_upstream_host_and_cause() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on port 1 of the loopback address.
    let cfg = write_config(dir.path(), "http://127.0.0.1:1", "");
    let mirror = spawn(&cfg).await;
    let (status, code, message, line) = failed_pull(&mirror).await;
    assert_eq!((status, code.as_str()), (503, "UNAVAILABLE"));
    assert_no_internals(&message, &["127.0.0.1", "refused"]);
    for want in [
        "upstream docker.io at 127.0.0.1:1",
        "cannot connect",
        "Connection refused",
        "path=/v2/library/x/manifests/1",
        "upstream=docker.io",
    ] {
        assert!(line.contains(want), "{want:?} missing from: {line}");
    }
}

/// A DNS server on 127.0.0.1:53 that refuses every query at once. The test
/// binds the port itself, so a resolver that may already run on this
/// machine cannot take the query and forward it off the machine: if the
/// port is taken, the test fails and says why. The socket and its thread
/// live until the test binary exits. Returns the count of queries seen.
fn refusing_resolver() -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:53")
        .expect("binding 127.0.0.1:53 failed: this test needs root and the port free");
    let queries = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = queries.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            if n < 12 {
                continue;
            }
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            // The query itself, as a response (QR) with RCODE 5, REFUSED.
            buf[2] |= 0x80;
            buf[3] = (buf[3] & 0xf0) | 5;
            let _ = socket.send_to(&buf[..n], from);
        }
    });
    queries
}

/// A private mount namespace whose `/etc/resolv.conf` names only the
/// [`refusing_resolver`]: lookups fail at once, and no query leaves the
/// machine. Needs root (CI and the test machines run as root); the test
/// fails loudly rather than skipping without it.
fn with_dead_resolver(dir: &std::path::Path, cmd: std::process::Command) -> std::process::Command {
    let conf = dir.join("resolv.conf");
    std::fs::write(
        &conf,
        "nameserver 127.0.0.1\noptions attempts:1 timeout:1\n",
    )
    .unwrap();
    let mut wrapped = std::process::Command::new("unshare");
    wrapped
        .args(["--mount", "--", "sh", "-c"])
        .arg(r#"mount --bind "$0" /etc/resolv.conf && exec "$@""#)
        .arg(&conf)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            wrapped.env(k, v);
        }
    }
    wrapped
}

#[tokio::test]
async fn a_dns_failure_is_logged_with_the_name_that_did_not_resolve() {
    let dir = tempfile::tempdir().unwrap();
    let host = "registry.mirrorgate-test.invalid";
    let cfg = write_config(dir.path(), &format!("http://{host}:5000"), "");
    let probe = std::process::Command::new("unshare")
        .args(["--mount", "true"])
        .status();
    assert!(
        probe.is_ok_and(|s| s.success()),
        "unshare --mount failed: this test needs root"
    );
    let queries = refusing_resolver();
    let mirror = spawn_command(with_dead_resolver(dir.path(), serve_command(&cfg))).await;
    let (status, code, message, line) = failed_pull(&mirror).await;
    assert_eq!((status, code.as_str()), (503, "UNAVAILABLE"));
    assert_no_internals(&message, &[host, "dns", "lookup"]);
    for want in [
        &format!("upstream docker.io at {host}:5000") as &str,
        "dns error",
        "failed to lookup address information",
    ] {
        assert!(line.contains(want), "{want:?} missing from: {line}");
    }
    assert!(
        queries.load(std::sync::atomic::Ordering::SeqCst) > 0,
        "the lookup went to the test's own resolver on loopback"
    );
}

#[tokio::test]
async fn an_expired_upstream_certificate_is_named_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let (up, trust) = FakeUpstream::start_tls(test_ca_and_expired_identity(), dir.path()).await;
    let cfg = write_config(dir.path(), &up.url(), &trust);
    let mirror = spawn(&cfg).await;
    let (status, code, message, line) = failed_pull(&mirror).await;
    assert_eq!((status, code.as_str()), (503, "UNAVAILABLE"));
    assert_no_internals(&message, &["certificate", "expired"]);
    let host = up.url().trim_start_matches("https://").to_owned();
    for want in [
        &format!("upstream docker.io at {host}") as &str,
        "invalid peer certificate: certificate expired",
    ] {
        assert!(line.contains(want), "{want:?} missing from: {line}");
    }
    assert!(
        up.requests().is_empty(),
        "no request got past the handshake"
    );
}

#[tokio::test]
async fn a_read_timeout_says_which_timeout_and_how_long() {
    // An upstream that accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &format!("http://{addr}"),
        "read_timeout = \"1s\"\nbreaker_failures = 100",
    );
    let mirror = spawn(&cfg).await;
    let (status, code, message, line) = failed_pull(&mirror).await;
    assert_eq!((status, code.as_str()), (504, "UNAVAILABLE"));
    assert_no_internals(&message, &["127.0.0.1", "1s"]);
    for want in [
        &format!("upstream docker.io at {addr}") as &str,
        "read timed out after 1s",
    ] {
        assert!(line.contains(want), "{want:?} missing from: {line}");
    }
    hold.abort();
    let _ = tokio::time::timeout(Duration::from_secs(5), hold).await;
}

#[tokio::test]
async fn a_full_disk_is_logged_with_the_file_and_the_os_error() {
    let up = FakeUpstream::start(Options::default()).await;
    let img = docker_image(99, &[4 * 1024 * 1024]);
    up.add_image("library/full", "1", &img);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let _fs = SmallFs::mount(&data, "1m");
    let cfg = write_config(dir.path(), &up.url(), "");
    let mirror = spawn(&cfg).await;
    // The blob does not fit: it is streamed through, whole and verified.
    let r = client()
        .get(format!(
            "{}/v2/library/full/blobs/{}",
            mirror.url(),
            img.layers[0].digest
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), img.layers[0].bytes);
    let line = mirror
        .wait_for_log("the store failure", |l| l.contains("cannot write blob"))
        .await;
    let tmp = format!("write {}/", data.join("tmp").display());
    for want in [&tmp as &str, "No space left on device (os error 28)"] {
        assert!(line.contains(want), "{want:?} missing from: {line}");
    }
}
