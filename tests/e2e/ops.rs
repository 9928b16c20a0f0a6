//! Operating it: JSON logs (`[log] format = "json"`) with the same fields
//! as the text access log, from the real binary.

use crate::support::image::docker_image;
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_access_log_fields() {
    let up = FakeUpstream::start(Options::default()).await;
    let img = docker_image(97, &[1000]);
    up.add_image("library/j", "1", &img);
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &up.url(), "");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("[log]\nformat = \"json\"\n{text}")).unwrap();
    let mirror = spawn(&cfg).await;
    let r = client()
        .get(format!(
            "{}/v2/library/j/blobs/{}",
            mirror.url(),
            img.layers[0].digest
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap(), img.layers[0].bytes);
    let line = mirror
        .wait_for_log("the blob's access-log line", |l| {
            l.contains("\"mirrorgate::access\"") && l.contains("/blobs/")
        })
        .await;
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["message"], "request");
    assert_eq!(v["level"], "INFO");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["status"], 200);
    assert_eq!(v["upstream"], "docker.io");
    assert_eq!(v["cache"], "miss");
    assert_eq!(v["bytes"], 1000);
    assert_eq!(v["body"], "complete");
    assert!(v["timestamp"].is_string() && v["duration_ms"].is_number() && v["peer"].is_string());
    // Every line of the log is an object.
    for l in mirror.log().lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(l).is_ok(),
            "not JSON: {l}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_and_stopping() {
    let up = FakeUpstream::start(Options::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &up.url(), "");
    let sock_path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    let mut cmd = serve_command(&cfg);
    cmd.env("NOTIFY_SOCKET", &sock_path);
    let mirror = spawn_command(cmd).await;
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"READY=1");
    let r = client()
        .get(format!("{}/livez", mirror.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &mirror.pid().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let n = tokio::task::spawn_blocking(move || sock.recv(&mut buf).map(|n| buf[..n].to_vec()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, b"STOPPING=1");
}

#[tokio::test]
async fn metrics_parse_and_show_each_upstream_its_rate_limit_tokens_and_breaker() {
    let up = FakeUpstream::start(Options::bearer(3600)).await;
    up.set_rate_limit(100);
    let img = docker_image(98, &[1500]);
    up.add_image("library/m", "1", &img);
    let dir = tempfile::tempdir().unwrap();
    let gw = single(&up, dir.path(), "breaker_failures = 2").await;
    let c = client();
    let r = c
        .get(format!("{}/v2/library/m/manifests/1", gw.url(0)))
        .header("accept", ACCEPT_ALL)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Once fetched upstream, once from the cache.
    for _ in 0..2 {
        let r = c
            .get(format!(
                "{}/v2/library/m/blobs/{}",
                gw.url(0),
                img.layers[0].digest
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.bytes().await.unwrap(), img.layers[0].bytes);
        gw.settle().await;
    }

    let scrape = |text: String| {
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap()
    };
    let value =
        |s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]| -> Option<f64> {
            s.samples.iter().find_map(|x| {
                (x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v))).then(
                    || match &x.value {
                        prometheus_parse::Value::Counter(v)
                        | prometheus_parse::Value::Gauge(v)
                        | prometheus_parse::Value::Untyped(v) => *v,
                        prometheus_parse::Value::Histogram(h) => {
                            h.iter().map(|b| b.count).fold(0.0, f64::max)
                        }
                        prometheus_parse::Value::Summary(_) => f64::NAN,
                    },
                )
            })
        };
    let get = || async {
        c.get(format!("{}/metrics", gw.url(0)))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let s = scrape(get().await);
    let up_l = [("upstream", "docker.io")];
    assert_eq!(
        value(&s, "mirrorgate_upstream_ratelimit_limit", &up_l),
        Some(100.0)
    );
    assert_eq!(
        value(&s, "mirrorgate_upstream_ratelimit_remaining", &up_l),
        Some(99.0),
        "one manifest GET spent one pull"
    );
    assert_eq!(
        value(&s, "mirrorgate_upstream_ratelimit_window_seconds", &up_l),
        Some(21600.0)
    );
    assert_eq!(
        value(&s, "mirrorgate_upstream_token_fetches_total", &up_l),
        Some(1.0)
    );
    assert_eq!(
        value(&s, "mirrorgate_upstream_circuit_open", &up_l),
        Some(0.0)
    );
    let ok = value(
        &s,
        "mirrorgate_upstream_request_duration_seconds",
        &[("upstream", "docker.io"), ("class", "2xx")],
    )
    .unwrap();
    assert!(ok >= 2.0, "the manifest and the blob: {ok}");
    let layer = img.layers[0].bytes.len() as f64;
    for (cache, want) in [("miss", 1.0), ("hit", 1.0)] {
        let l = [
            ("upstream", "docker.io"),
            ("kind", "blob"),
            ("cache", cache),
        ];
        assert_eq!(
            value(&s, "mirrorgate_upstream_requests_total", &l),
            Some(want),
            "{cache}"
        );
        assert_eq!(
            value(&s, "mirrorgate_upstream_response_bytes_total", &l),
            Some(layer),
            "{cache}: bytes from the cache and as fetched"
        );
    }
    let l = [
        ("upstream", "docker.io"),
        ("kind", "manifest"),
        ("cache", "miss"),
    ];
    assert_eq!(
        value(&s, "mirrorgate_upstream_requests_total", &l),
        Some(1.0)
    );
    // Bounded labels: never a repository or digest.
    for x in &s.samples {
        for (k, v) in x.labels.iter() {
            assert!(
                ["upstream", "class", "le", "cache", "kind", "result"].contains(&k.as_str()),
                "{}: label {k}",
                x.metric
            );
            assert!(
                !v.contains("sha256") && !v.contains("library/"),
                "{}: {v}",
                x.metric
            );
        }
    }

    // The upstream fails: after two failures its circuit is open.
    up.set_down(true);
    for t in ["2", "3", "4"] {
        let _ = c
            .get(format!("{}/v2/library/m/manifests/{t}", gw.url(0)))
            .send()
            .await
            .unwrap();
    }
    let s = scrape(get().await);
    assert_eq!(
        value(&s, "mirrorgate_upstream_circuit_open", &up_l),
        Some(1.0)
    );
    let fails = value(
        &s,
        "mirrorgate_upstream_request_duration_seconds",
        &[("upstream", "docker.io"), ("class", "5xx")],
    )
    .unwrap();
    assert_eq!(fails, 2.0, "the third never went out");
    gw.stop().await;
}
