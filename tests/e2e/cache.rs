//! Seeing and managing the cache: `ls`, `du`, `inspect`, `rm`, `pin`,
//! `unpin`, `gc` (the real binary, on the data directory of a mirror that
//! is serving from it), and eviction keeping pinned images.

use std::process::Command;

use mirrorgate::warm::{ImageRef, Quiet};

use crate::support::image::{Image, docker_image, docker_image_on, oci_image, oci_index};
use crate::support::*;

async fn warm(gw: &Gateway, images: &[&str]) {
    let refs: Vec<ImageRef> = images.iter().map(|s| s.parse().unwrap()).collect();
    let r = warmer(&gw.url(0), &[]).warm_all(&refs, &Quiet).await;
    assert_eq!(r.failed, 0, "{r:#?}");
    gw.settle().await;
}

/// Runs a cache subcommand on `root` with `--json` and parses its output.
fn cmd(root: &std::path::Path, args: &[&str]) -> (bool, serde_json::Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mirrorgate"))
        .args(args)
        .args(["--data-dir", root.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    // A command that fails before it has anything to report says why on
    // stderr only.
    let v = if stdout.is_empty() && !out.status.success() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {stdout}\nstderr: {stderr}"))
    };
    (out.status.success(), v, stderr)
}

fn blobs_of(i: &Image) -> Vec<&crate::support::image::Blob> {
    std::iter::once(&i.config).chain(&i.layers).collect()
}

fn stored(root: &std::path::Path, digest: &str) -> bool {
    let hex = digest.trim_start_matches("sha256:");
    root.join("blobs/sha256").join(&hex[..2]).join(hex).exists()
}

fn add_untagged(up: &FakeUpstream, repo: &str, i: &Image) {
    for b in blobs_of(i) {
        up.add_blob(b);
    }
    up.add_manifest(repo, None, &i.manifest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ls_du_inspect_show_what_is_cached_while_the_mirror_serves() {
    let up = FakeUpstream::start(Options::default()).await;
    let amd = oci_image(51, &[3000, 4000]);
    let arm = oci_image(52, &[5000]);
    let index = oci_index(&[(&amd, "amd64"), (&arm, "arm64")]);
    for i in [&amd, &arm] {
        add_untagged(&up, "library/app", i);
    }
    up.add_manifest("library/app", Some("1.0"), &index);
    let tool = docker_image(53, &[2000]);
    up.add_image("org/tool", "v2", &tool);
    let dir = tempfile::tempdir().unwrap();
    let gw = single(&up, dir.path(), "").await;
    warm(&gw, &["docker.io/library/app:1.0", "org/tool:v2"]).await;
    // A child pulled by digest alone is an image of its own in `ls` only
    // when no tag of its repository reaches it.
    let r = client()
        .get(format!(
            "{}/v2/library/app/manifests/{}",
            gw.url(0),
            amd.manifest.digest
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    gw.settle().await;

    let (ok, ls, err) = cmd(&gw.root, &["ls"]);
    assert!(ok, "{err}");
    let images = ls["images"].as_array().unwrap();
    assert_eq!(images.len(), 2, "{ls:#}");
    let app = &images[0];
    assert_eq!(app["upstream"], "docker.io");
    assert_eq!(app["repository"], "library/app");
    assert_eq!(app["tag"], "1.0");
    assert_eq!(app["digest"], index.digest.as_str());
    assert_eq!(
        (app["platforms_stored"].as_u64(), app["platforms"].as_u64()),
        (Some(2), Some(2))
    );
    let app_bytes: u64 = [&amd, &arm]
        .iter()
        .flat_map(|i| blobs_of(i).into_iter().chain([&i.manifest]))
        .chain([&index])
        .map(|b| b.bytes.len() as u64)
        .sum();
    assert_eq!(app["stored_bytes"].as_u64(), Some(app_bytes));
    assert_eq!(app["bytes"].as_u64(), Some(app_bytes));
    assert!(app["last_used"].is_string() && app["checked_at"].is_string());
    assert_eq!(images[1]["repository"], "org/tool");
    assert_eq!(images[1]["tag"], "v2");

    // A filter by repository.
    let (_, only, _) = cmd(&gw.root, &["ls", "docker.io/org/tool"]);
    assert_eq!(only["images"].as_array().unwrap().len(), 1);

    let (ok, du, err) = cmd(&gw.root, &["du"]);
    assert!(ok, "{err}");
    let tool_bytes: u64 = blobs_of(&tool)
        .into_iter()
        .chain([&tool.manifest])
        .map(|b| b.bytes.len() as u64)
        .sum();
    assert_eq!(
        du["total_bytes"].as_u64(),
        Some(app_bytes + tool_bytes),
        "{du:#}"
    );
    assert_eq!(
        du["upstreams"][0]["bytes"].as_u64(),
        Some(app_bytes + tool_bytes)
    );
    assert_eq!(du["repositories"][0]["repository"], "library/app");
    assert_eq!(du["repositories"][0]["bytes"].as_u64(), Some(app_bytes));

    let (ok, ins, err) = cmd(&gw.root, &["inspect", "app:1.0"]);
    assert!(ok, "{err}");
    assert_eq!(ins["digest"], index.digest.as_str());
    let ms = ins["manifests"].as_array().unwrap();
    assert_eq!(ms.len(), 3, "the index and both platforms: {ins:#}");
    assert_eq!(ms[1]["platform"], "linux/amd64");
    assert_eq!(ms[1]["blobs"].as_array().unwrap().len(), 3);
    assert!(ms.iter().all(|m| m["stored"] == true));

    let (ok, _, err) = cmd(&gw.root, &["inspect", "app:2.0"]);
    assert!(!ok && err.contains("not in the cache"), "{err}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rm_and_gc_never_remove_a_blob_a_cached_manifest_needs() {
    let up = FakeUpstream::start(Options::default()).await;
    let base = docker_image(61, &[6000]);
    let a = docker_image_on(62, &base.layers, &[3000]);
    let b = docker_image_on(63, &base.layers, &[4000]);
    up.add_image("org/a", "1", &a);
    up.add_image("org/b", "1", &b);
    up.add_image("org/a", "also", &a);
    let bytes = crate::support::image::random_bytes(64, 1500);
    let stray = crate::support::image::Blob {
        digest: crate::support::image::sha256_digest(&bytes),
        bytes: bytes.into(),
        media_type: "application/octet-stream",
    };
    up.add_blob(&stray);
    let dir = tempfile::tempdir().unwrap();
    let gw = single(&up, dir.path(), "").await;
    warm(&gw, &["org/a:1", "org/a:also", "org/b:1"]).await;
    // A blob pulled by digest with no manifest: nothing cached needs it.
    let r = client()
        .get(format!("{}/v2/org/a/blobs/{}", gw.url(0), stray.digest))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap(), stray.bytes);
    gw.settle().await;
    let root = gw.root.clone();

    // gc within the grace keeps even the stray blob.
    let (ok, gc, err) = cmd(&root, &["gc"]);
    assert!(ok, "{err}");
    assert_eq!(gc["gc"]["deleted"].as_array().unwrap().len(), 0, "{gc:#}");
    assert_eq!(gc["gc"]["young"].as_u64(), Some(1));
    // Without a grace it deletes the stray blob only: a dry run first.
    let (_, dry, _) = cmd(&root, &["gc", "--grace", "0s", "--dry-run"]);
    assert_eq!(dry["gc"]["deleted"], serde_json::json!([stray.digest]));
    assert!(stored(&root, &stray.digest), "a dry run deletes nothing");
    let (ok, gc, err) = cmd(&root, &["gc", "--grace", "0s"]);
    assert!(ok, "{err}");
    assert_eq!(
        gc["gc"]["deleted"],
        serde_json::json!([stray.digest]),
        "{gc:#}"
    );
    assert!(!stored(&root, &stray.digest));
    for i in [&a, &b] {
        for bl in blobs_of(i) {
            assert!(stored(&root, &bl.digest), "gc keeps what manifests need");
        }
    }

    // rm of one tag: the other tag of the same image keeps it whole.
    let (ok, rm, err) = cmd(&root, &["rm", "--image", "org/a:1"]);
    assert!(ok, "{err}");
    let removed = &rm["results"][0]["removed"];
    assert_eq!(removed["references"].as_array().unwrap().len(), 1, "{rm:#}");
    assert_eq!(
        removed["blobs"].as_array().unwrap().len(),
        0,
        "org/a:also still needs them"
    );
    // rm of the last tag of a: its own layer, config and manifest go; the
    // base layer b shares stays.
    let (ok, rm, err) = cmd(&root, &["rm", "--image", "org/a:also"]);
    assert!(ok, "{err}");
    let removed = &rm["results"][0]["removed"];
    let mut gone: Vec<&str> = removed["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    gone.sort_unstable();
    let mut want = vec![
        a.manifest.digest.as_str(),
        a.config.digest.as_str(),
        a.layers[1].digest.as_str(),
    ];
    want.sort_unstable();
    assert_eq!(gone, want, "{rm:#}");
    assert!(
        stored(&root, &base.layers[0].digest),
        "b still needs the base layer"
    );
    let (ok, gc, _) = cmd(&root, &["gc", "--grace", "0s"]);
    assert!(ok);
    assert_eq!(gc["gc"]["deleted"].as_array().unwrap().len(), 0, "{gc:#}");

    // b is whole: with upstream down every blob is served from the cache.
    up.set_down(true);
    for bl in blobs_of(&b) {
        let r = client()
            .get(format!("{}/v2/org/b/blobs/{}", gw.url(0), bl.digest))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", bl.digest);
        assert_eq!(r.bytes().await.unwrap(), bl.bytes);
    }
    up.set_down(false);

    // A pinned image is not removed; unpinned, it is.
    let (ok, _, err) = cmd(&root, &["pin", "org/b:1"]);
    assert!(ok, "{err}");
    let (ok, rm, _) = cmd(&root, &["rm", "--image", "org/b:1"]);
    assert!(!ok, "a pinned image is refused");
    assert!(
        rm["results"][0]["error"]
            .as_str()
            .unwrap()
            .contains("pinned"),
        "{rm:#}"
    );
    let (_, ls, _) = cmd(&root, &["ls"]);
    assert_eq!(ls["images"][0]["pinned"], true);
    let (ok, unpin, _) = cmd(&root, &["unpin", "org/b:1"]);
    assert!(ok);
    assert_eq!(unpin["results"][0]["changed"], true);
    let (ok, rm, err) = cmd(&root, &["rm", "--image", "org/b:1"]);
    assert!(ok, "{err} {rm:#}");
    assert!(
        !stored(&root, &base.layers[0].digest),
        "now nothing needs the base layer"
    );
    let (_, ls, _) = cmd(&root, &["ls"]);
    assert_eq!(ls["images"].as_array().unwrap().len(), 0, "{ls:#}");
    let (ok, rm, _) = cmd(&root, &["rm", "org/b:1"]);
    assert!(!ok);
    assert_eq!(
        rm["results"][0]["error"], "docker.io/org/b:1 is not in the cache",
        "{rm:#}"
    );

    // The mirror fetches a removed image again.
    warm(&gw, &["org/a:1"]).await;
    assert!(stored(&root, &a.layers[1].digest));
    gw.stop().await;
    assert_store_verified(&root);
}

#[tokio::test]
async fn eviction_never_removes_a_pinned_image() {
    let up = FakeUpstream::start(Options::default()).await;
    let keep = docker_image(71, &[300_000, 300_000]);
    up.add_image("org/keep", "1", &keep);
    let others: Vec<Image> = (0..6).map(|i| docker_image(80 + i, &[300_000])).collect();
    for (i, o) in others.iter().enumerate() {
        up.add_image("org/other", &format!("{i}"), o);
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "[storage]\nmax_size = \"1MiB\"\n[[listener]]\naddr = \"127.0.0.1:0\"\n{}",
        upstream_toml("docker.io", &up.url(), "default = true\n")
    );
    let gw = Gateway::start(&cfg, dir.path()).await;
    let store = gw.app().mirror().store().clone();
    let key = mirrorgate::store::inventory::ImageKey::new(
        &mirrorgate::config::UpstreamId::parse("docker.io").unwrap(),
        "org/keep".parse().unwrap(),
        mirrorgate::store::inventory::Named::Tag("1".parse().unwrap()),
    );
    store.pin(&key, "org/keep:1", None).await.unwrap();
    warm(&gw, &["org/keep:1"]).await;
    // The oldest blobs are the pinned image's: eviction would take them
    // first. Six more images push the store over its budget many times.
    for i in 0..others.len() {
        warm(&gw, &[&format!("org/other:{i}")]).await;
    }
    for b in blobs_of(&keep) {
        assert!(
            stored(&gw.root, &b.digest),
            "pinned blob {} evicted",
            b.digest
        );
    }
    let evicted = others
        .iter()
        .flat_map(|o| &o.layers)
        .filter(|b| !stored(&gw.root, &b.digest))
        .count();
    assert!(
        evicted >= 3,
        "the others were evicted to make room ({evicted})"
    );
    assert!(
        store.stored_bytes() <= 1 << 20,
        "under budget: {}",
        store.stored_bytes()
    );
    gw.stop().await;
}
