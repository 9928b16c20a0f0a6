//! Crash safety with the real binary: SIGKILL in the middle of a cold pull
//! leaves nothing that can be served, and the next start cleans up.

use std::process::Command;

use futures_util::StreamExt;

use crate::support::image::docker_image;
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_cold_200mib_pull_loses_nothing() {
    let up = FakeUpstream::start(Options::default()).await;
    let img = docker_image(60, &[200 * 1024 * 1024]);
    up.add_image("library/big", "1", &img);
    let layer = &img.layers[0];
    let gate = up.hold_blobs_after(64 * 1024 * 1024);
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &up.url(), "");
    let data = dir.path().join("data");
    let path = format!("/v2/library/big/blobs/{}", layer.digest);

    let mirror = spawn(&cfg).await;
    let r = client()
        .get(format!("{}{path}", mirror.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    let mut got = 0usize;
    while got < 32 * 1024 * 1024 {
        got += body.next().await.unwrap().unwrap().len();
    }
    gate.wait_for_requests(1).await;
    drop(mirror); // SIGKILL mid-download
    // The client sees the abort: an error, or an end short of the length.
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(c) => got += c.len(),
            Err(_) => break,
        }
    }
    assert!(
        got < layer.bytes.len(),
        "a killed download must not look complete"
    );
    assert!(
        files_under(&data.join("blobs")).is_empty(),
        "nothing committed"
    );
    gate.release();

    let mirror = spawn(&cfg).await;
    assert!(
        files_under(&data.join("tmp")).is_empty(),
        "partial download swept at start"
    );
    let r = client()
        .get(format!("{}{path}", mirror.url()))
        .send()
        .await
        .unwrap();
    let bytes = r.bytes().await.unwrap();
    assert_eq!(bytes.len(), layer.bytes.len());
    assert_eq!(image::sha256_digest(&bytes), layer.digest);
    assert_store_verified(&data);
    let out = Command::new(env!("CARGO_BIN_EXE_mirrorgate"))
        .args(["verify", "--data-dir", data.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
