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
