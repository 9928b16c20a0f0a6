//! Air-gap bundles: `export` through a mirror writes one deduplicated OCI
//! layout; `import` fills another mirror's store, which then serves with
//! no upstream at all; a corrupted blob is refused and nothing that needs
//! it is served; incremental bundles; an interrupted import resumes.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use mirrorgate::bundle::{CONTAINERD_NAME, REF_NAME};
use mirrorgate::config::Config;
use mirrorgate::store::Store;
use mirrorgate::warm::ImageRef;

use crate::support::image::{
    Image, docker_image, docker_image_on, oci_image, oci_index, sha256_digest,
};
use crate::support::*;

fn refs(list: &[&str]) -> Vec<ImageRef> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

fn blobs_of(i: &Image) -> Vec<&crate::support::image::Blob> {
    std::iter::once(&i.config).chain(&i.layers).collect()
}

/// Every file of a tar: name → bytes.
fn tar_files(p: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut ar = tar::Archive::new(std::fs::File::open(p).unwrap());
    let mut out = BTreeMap::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        let mut v = Vec::new();
        e.read_to_end(&mut v).unwrap();
        assert!(
            out.insert(name.clone(), v).is_none(),
            "{name} twice in the tar"
        );
    }
    out
}

/// The world: an upstream with an OCI index (two platforms) and a Docker
/// image, sharing a base layer.
struct World {
    up: FakeUpstream,
    base: Image,
    amd: Image,
    arm: Image,
    index: crate::support::image::Blob,
    tool: Image,
}

async fn world() -> World {
    let up = FakeUpstream::start(Options::default()).await;
    let base = docker_image(90, &[5000]);
    let amd = oci_image(91, &[3000, 4000]);
    let arm = oci_image(92, &[2500]);
    let index = oci_index(&[(&amd, "amd64"), (&arm, "arm64")]);
    for i in [&amd, &arm] {
        for b in blobs_of(i) {
            up.add_blob(b);
        }
        up.add_manifest("library/app", None, &i.manifest);
    }
    up.add_manifest("library/app", Some("1.0"), &index);
    let tool = docker_image_on(93, &base.layers, &[1500]);
    up.add_image("org/tool", "v2", &tool);
    World {
        up,
        base,
        amd,
        arm,
        index,
        tool,
    }
}

/// A config with a `docker.io` upstream that is never reachable.
fn airgap_config(root: &Path) -> Config {
    let text = format!(
        "[storage]\nroot = {:?}\n[[listener]]\naddr = \"127.0.0.1:0\"\n{}",
        root.display().to_string(),
        upstream_toml("docker.io", "http://127.0.0.1:9", "default = true\n")
    );
    Config::from_toml(&text, root).unwrap()
}

#[tokio::test]
async fn an_exported_bundle_imported_into_a_mirror_without_upstream_serves_every_image() {
    let w = world().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = single(&w.up, &dir.path().join("src"), "").await;
    let out = dir.path().join("bundle.tar");
    let images = refs(&["docker.io/library/app:1.0", "org/tool:v2"]);
    let rep = mirrorgate::bundle::export(&warmer(&gw.url(0), &[]), &images, &out, None)
        .await
        .unwrap();
    assert_eq!((rep.ok, rep.failed), (2, 0), "{rep:#?}");
    assert_eq!(rep.images[0].platforms, ["linux/amd64", "linux/arm64"]);
    gw.stop().await;
    assert!(!dir.path().join("bundle.tar.partial").exists());

    // The layout: oci-layout, index.json naming both images both ways,
    // every blob once, each hashing to its name.
    let files = tar_files(&out);
    assert_eq!(files["oci-layout"], br#"{"imageLayoutVersion":"1.0.0"}"#);
    let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["digest"], w.index.digest.as_str());
    assert_eq!(
        entries[0]["annotations"][REF_NAME],
        "docker.io/library/app:1.0"
    );
    assert_eq!(
        entries[0]["annotations"][CONTAINERD_NAME],
        "docker.io/library/app:1.0"
    );
    assert_eq!(entries[1]["annotations"][REF_NAME], "docker.io/org/tool:v2");
    assert_eq!(
        entries[1]["mediaType"], "application/vnd.oci.image.manifest.v1+json",
        "a Docker manifest is listed as its OCI twin (containers/image reads only those)"
    );
    let mut want: Vec<String> = [&w.amd, &w.arm, &w.tool]
        .iter()
        .flat_map(|i| blobs_of(i).into_iter().chain([&i.manifest]))
        .chain([&w.index])
        .map(|b| format!("blobs/sha256/{}", b.digest.trim_start_matches("sha256:")))
        .collect();
    want.sort();
    want.dedup();
    let got: Vec<&String> = files.keys().filter(|k| k.starts_with("blobs/")).collect();
    assert_eq!(got.len(), want.len(), "each blob once: {got:?}");
    for (name, bytes) in &files {
        if let Some(hex) = name.strip_prefix("blobs/sha256/") {
            assert_eq!(sha256_digest(bytes), format!("sha256:{hex}"), "{name}");
        }
    }

    // Import into a fresh store, twice: the second run changes nothing.
    let root = dir.path().join("airgap");
    let config = airgap_config(&root);
    {
        let store = Store::from_config(&config).await.unwrap();
        let r = mirrorgate::bundle::import(&store, &config, &out)
            .await
            .unwrap();
        assert_eq!((r.ok, r.failed, r.refused.len()), (2, 0, 0), "{r:#?}");
        assert_eq!(r.blobs_imported, want.len());
        let again = mirrorgate::bundle::import(&store, &config, &out)
            .await
            .unwrap();
        assert_eq!(
            (again.ok, again.blobs_imported, again.blobs_present),
            (2, 0, want.len())
        );
    }

    // A mirror on that store, its upstream unreachable, serves everything.
    let up_down = FakeUpstream::start(Options::default()).await;
    up_down.set_down(true);
    let gw = single(&up_down, &root, "").await;
    let c = client();
    let r = c
        .get(format!("{}/v2/library/app/manifests/1.0", gw.url(0)))
        .header("accept", ACCEPT_ALL)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["docker-content-digest"],
        w.index.digest.as_str()
    );
    assert_eq!(r.bytes().await.unwrap(), w.index.bytes);
    // A Docker client's Accept (no index types): the tool image.
    let r = c
        .get(format!("{}/v2/org/tool/manifests/v2", gw.url(0)))
        .header(
            "accept",
            "application/vnd.docker.distribution.manifest.v2+json",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "application/vnd.docker.distribution.manifest.v2+json",
        "the manifest's own media type, not index.json's"
    );
    for (repo, i) in [
        ("library/app", &w.amd),
        ("library/app", &w.arm),
        ("org/tool", &w.tool),
    ] {
        for b in blobs_of(i) {
            let r = c
                .get(format!("{}/v2/{repo}/blobs/{}", gw.url(0), b.digest))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{}", b.digest);
            assert_eq!(r.bytes().await.unwrap(), b.bytes);
        }
    }
    assert_eq!(up_down.count("GET", "/"), 0, "nothing asked upstream");
    gw.stop().await;
    assert_store_verified(&root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_blob_is_refused_and_nothing_that_needs_it_is_served() {
    let w = world().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = single(&w.up, &dir.path().join("src"), "").await;
    let out = dir.path().join("layout");
    let images = refs(&["docker.io/library/app:1.0", "org/tool:v2"]);
    let rep = mirrorgate::bundle::export(&warmer(&gw.url(0), &[]), &images, &out, None)
        .await
        .unwrap();
    assert_eq!(rep.ok, 2);
    gw.stop().await;
    // One byte of the tool's own layer flips.
    let bad = &w.tool.layers[1];
    let p = out
        .join("blobs/sha256")
        .join(bad.digest.trim_start_matches("sha256:"));
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[100] ^= 0x55;
    std::fs::write(&p, &bytes).unwrap();

    let root = dir.path().join("airgap");
    let cfg = dir.path().join("airgap.toml");
    std::fs::write(
        &cfg,
        format!(
            "[storage]\nroot = {:?}\n[[listener]]\naddr = \"127.0.0.1:0\"\n{}",
            root.display().to_string(),
            upstream_toml("docker.io", "http://127.0.0.1:9", "default = true\n")
        ),
    )
    .unwrap();
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_mirrorgate"))
        .args(["import", "--config", cfg.to_str().unwrap()])
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        !run.status.success(),
        "a refused blob fails the import: {stdout}"
    );
    assert!(stderr.contains("refused"), "{stderr}");
    assert!(
        stdout.contains(&format!("REFUSED blob {}: digest mismatch", bad.digest)),
        "{stdout} {stderr}"
    );
    assert!(
        stdout.contains("FAIL docker.io/org/tool:v2: blob")
            && stdout.contains("ok   docker.io/library/app:1.0"),
        "{stdout}"
    );

    // The store holds no byte of the bad blob, and no tag of the tool.
    let up_down = FakeUpstream::start(Options::default()).await;
    up_down.set_down(true);
    let gw = single(&up_down, &root, "").await;
    let c = client();
    let r = c
        .get(format!("{}/v2/org/tool/manifests/v2", gw.url(0)))
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_server_error(),
        "not imported: the upstream (down) is asked: {}",
        r.status()
    );
    let r = c
        .get(format!("{}/v2/org/tool/blobs/{}", gw.url(0), bad.digest))
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_server_error(),
        "the refused blob is not stored: {}",
        r.status()
    );
    let r = c
        .get(format!("{}/v2/library/app/manifests/1.0", gw.url(0)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the other image is served");
    gw.stop().await;
    assert_store_verified(&root);
}

#[tokio::test]
async fn incremental_bundles_and_an_interrupted_import_resumes() {
    let w = world().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = single(&w.up, &dir.path().join("src"), "").await;
    let first = dir.path().join("base.tar");
    let wr = warmer(&gw.url(0), &[]);
    let r = mirrorgate::bundle::export(&wr, &refs(&["docker.io/library/app:1.0"]), &first, None)
        .await
        .unwrap();
    assert_eq!(r.ok, 1);
    // The second bundle, since the first: the app's blobs are left out.
    let second = dir.path().join("next.tar");
    let r = mirrorgate::bundle::export(
        &wr,
        &refs(&["docker.io/library/app:1.0", "org/tool:v2"]),
        &second,
        Some(&first),
    )
    .await
    .unwrap();
    assert_eq!(r.ok, 2, "{r:#?}");
    let tool_blobs = blobs_of(&w.tool).len() + 1;
    assert_eq!(
        r.blobs_written, tool_blobs,
        "only the tool's blobs and manifest: {r:#?}"
    );
    assert!(
        mirrorgate::bundle::export(&wr, &refs(&["org/tool:v2"]), &second, None)
            .await
            .is_err(),
        "an existing bundle is never overwritten"
    );
    gw.stop().await;

    let root = dir.path().join("airgap");
    let config = airgap_config(&root);
    let store = Store::from_config(&config).await.unwrap();
    // The second alone: the tool is whole, the app is not.
    let r = mirrorgate::bundle::import(&store, &config, &second)
        .await
        .unwrap();
    assert_eq!((r.ok, r.failed), (1, 1), "{r:#?}");
    assert!(
        r.images[0].errors[0].contains("--since"),
        "{:?}",
        r.images[0].errors
    );

    // An interrupted import of the first (the tar cut short): what was
    // stored stays, a re-run of the whole bundle resumes after it.
    let cut = dir.path().join("cut.tar");
    let bytes = std::fs::read(&first).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let err = mirrorgate::bundle::import(&store, &config, &cut).await;
    let stored_before = store.blobs().list().await.unwrap().len();
    match err {
        Err(e) => assert!(mirrorgate::error_chain(&e).contains("cut.tar"), "{e}"),
        Ok(r) => assert!(
            r.failed > 0 || r.ok == 0,
            "a cut bundle imports no image: {r:#?}"
        ),
    }
    let r = mirrorgate::bundle::import(&store, &config, &first)
        .await
        .unwrap();
    assert_eq!((r.ok, r.failed), (1, 0), "{r:#?}");
    assert!(r.blobs_present > 0, "the cut run's blobs were kept: {r:#?}");
    assert_eq!(
        store.blobs().list().await.unwrap().len(),
        stored_before + r.blobs_imported
    );
    let r = mirrorgate::bundle::import(&store, &config, &second)
        .await
        .unwrap();
    assert_eq!((r.ok, r.failed), (2, 0), "{r:#?}");
    for b in &w.base.layers {
        assert!(
            store
                .stat(&b.digest.parse().unwrap())
                .await
                .unwrap()
                .is_some()
        );
    }
}
