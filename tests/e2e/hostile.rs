//! Hostile and broken clients: malformed requests get OCI errors (or a
//! protocol-level refusal) and the process stays healthy; slow clients
//! cannot hold connections; the connection limit holds.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::image::docker_image;
use crate::support::*;

/// Sends raw bytes, returns the response status (0 when the connection was
/// closed without one).
async fn raw(addr: SocketAddr, req: &[u8]) -> u16 {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(req).await;
    // Read until the status line is in (or the connection closes).
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        let mut buf = [0u8; 4096];
        while !out.windows(2).any(|w| w == b"\r\n") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&out);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_corpus_of_hostile_requests_gets_errors_and_the_process_survives() {
    let up = FakeUpstream::start(Options::default()).await;
    let img = docker_image(80, &[100]);
    up.add_image("library/h", "1", &img);
    let dir = tempfile::tempdir().unwrap();
    let gw = single(&up, dir.path(), "").await;
    let a = gw.addrs[0];
    let zero = "0".repeat(64);
    let big_header = format!(
        "GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Junk: {}\r\n\r\n",
        "a".repeat(200_000)
    );
    let long_path = format!(
        "GET /v2/{}/manifests/latest HTTP/1.1\r\nHost: x\r\n\r\n",
        "a/".repeat(3000)
    );
    let many_headers: String = (0..2000).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many_headers = format!("GET /v2/ HTTP/1.1\r\nHost: x\r\n{many_headers}\r\n");
    let cases: Vec<(Vec<u8>, &[u16])> = vec![
        (
            b"GET /v2/../../../etc/passwd/manifests/x HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            &[400],
        ),
        (
            format!("GET /v2/library/../../blobs/sha256:{zero} HTTP/1.1\r\nHost: x\r\n\r\n")
                .into_bytes(),
            &[400],
        ),
        (
            b"GET /v2/library/h/blobs/sha256:..%2F..%2Fx HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            &[400],
        ),
        // A reference that is neither tag nor digest names no manifest.
        (
            b"GET /v2/library/h/manifests/%00 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            &[404],
        ),
        (
            b"GET /v2/library%2fh/manifests/1 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            &[400],
        ),
        (
            b"GET /v2/library/h/blobs/sha256:ZZZ HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            &[400],
        ),
        (
            format!("GET /v2/library/h/blobs/sha512:{zero} HTTP/1.1\r\nHost: x\r\n\r\n")
                .into_bytes(),
            &[400],
        ),
        (
            format!(
                "GET /v2/library/h/manifests/{} HTTP/1.1\r\nHost: x\r\n\r\n",
                "t".repeat(129)
            )
            .into_bytes(),
            &[404],
        ),
        (long_path.into_bytes(), &[414, 431, 400]),
        (big_header.into_bytes(), &[431, 400, 0]),
        (many_headers.into_bytes(), &[431, 400, 0]),
        (
            b"GET /v2/library/h/blobs/sha256:x HTTP/1.1\r\nHost: x\r\nRange: bytes=-\r\n\r\n"
                .to_vec(),
            &[400],
        ),
        (b"BREW /v2/ HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), &[405]),
        (
            b"GET /v2/ HTTP/9.9\r\nHost: x\r\n\r\n".to_vec(),
            &[505, 400, 0],
        ),
        (
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage-tls-hello".to_vec(),
            &[400, 0],
        ),
        (
            b"GET /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n".to_vec(),
            &[400, 0],
        ),
        (b"\xff\xfe\xfd\r\n\r\n".to_vec(), &[400, 0]),
    ];
    for (req, ok) in &cases {
        let status = raw(a, req).await;
        assert!(
            ok.contains(&status),
            "{:?}... -> {status}",
            String::from_utf8_lossy(&req[..req.len().min(60)])
        );
    }
    // Absurd ranges on a real blob.
    let c = client();
    let url = format!("{}/v2/library/h/blobs/{}", gw.url(0), img.layers[0].digest);
    for range in [
        "bytes=99999999999999999999-",
        "bytes=5-2",
        "bytes=0-0,1-1",
        "bits=0-1",
        "bytes=--1",
    ] {
        let r = c.get(&url).header("range", range).send().await.unwrap();
        assert!([200, 206, 416].contains(&r.status().as_u16()), "{range}");
    }
    // Still healthy, and nothing outside the data directory was touched.
    let r = c
        .get(format!("{}/v2/library/h/manifests/1", gw.url(0)))
        .header("accept", ACCEPT_ALL)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        up.requests()
            .iter()
            .all(|r| !r.path.contains("..") && !r.path.contains("etc"))
    );
    gw.stop().await;
}

#[tokio::test]
async fn slow_clients_cannot_hold_connections() {
    let up = FakeUpstream::start(Options::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "[server]\nmax_connections = 2\nheader_read_timeout = \"5s\"\n[[listener]]\naddr = \"127.0.0.1:0\"\n{}",
        upstream_toml("docker.io", &up.url(), "default = true")
    );
    let gw = Gateway::start(&cfg, dir.path()).await;
    // Two slowloris clients take both slots: headers that never finish.
    let mut slow = Vec::new();
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(gw.addrs[0]).await.unwrap();
        s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push(s);
    }
    // Both were accepted: the slots are taken.
    wait_until("two connections accepted", || {
        gw.metrics().connections_open() == 2
    })
    .await;
    let c = client();
    let url = format!("{}/v2/", gw.url(0));
    // Well within the 5 s header-read timeout, so the slots are still held.
    let quick = tokio::time::timeout(Duration::from_millis(300), c.get(&url).send()).await;
    assert!(quick.is_err(), "beyond max_connections a client waits");
    // The header-read timeout frees the slots (the bound only turns a hang
    // into a failure).
    let r = tokio::time::timeout(Duration::from_secs(30), c.get(&url).send()).await;
    assert_eq!(
        r.expect("served once slow clients were cut off")
            .unwrap()
            .status(),
        200
    );
    for mut s in slow {
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf)).await;
        // Closed (0 bytes, or a 408 before closing) rather than left open.
        match n {
            Ok(Ok(0)) | Ok(Err(_)) => {}
            Ok(Ok(n)) => assert!(
                String::from_utf8_lossy(&buf[..n]).contains("408"),
                "{:?}",
                &buf[..n]
            ),
            Err(_) => panic!("slow connection still open"),
        }
    }
    gw.stop().await;
}
