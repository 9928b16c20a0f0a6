//! `mirrorgate warm`: the warmer against a running mirror (the library),
//! and the command (the real binary, against a running mirror and
//! in-process over a data directory).

use std::process::Command;

use mirrorgate::warm::{ImageRef, Quiet};

use crate::support::image::{docker_image, oci_image, oci_index};
use crate::support::*;

fn refs(list: &[&str]) -> Vec<ImageRef> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

#[tokio::test]
async fn warm_fills_every_platform_and_a_second_run_fetches_nothing() {
    let up = FakeUpstream::start(Options::default()).await;
    let amd = oci_image(11, &[3000, 4000]);
    let arm = oci_image(12, &[5000]);
    let index = oci_index(&[(&amd, "amd64"), (&arm, "arm64")]);
    for i in [&amd, &arm] {
        add_untagged(&up, "library/app", i);
    }
    up.add_manifest("library/app", Some("1.0"), &index);
    let single = docker_image(13, &[2000]);
    up.add_image("org/tool", "v2", &single);
    let dir = tempfile::tempdir().unwrap();
    let gw = single_gw(&up, dir.path()).await;

    let w = warmer(&gw.url(0), &[]);
    let images = refs(&["docker.io/library/app:1.0", "org/tool:v2"]);
    let report = w.warm_all(&images, &Quiet).await;
    assert_eq!((report.ok, report.failed), (2, 0), "{report:#?}");
    let app = &report.images[0];
    assert_eq!(app.digest.as_deref(), Some(index.digest.as_str()));
    assert_eq!(app.platforms, ["linux/amd64", "linux/arm64"]);
    assert_eq!(app.manifests, 3);
    assert_eq!(
        (app.blobs, app.blobs_fetched),
        (5, 5),
        "two configs and three layers"
    );
    let app_bytes: u64 = [&amd, &arm]
        .iter()
        .flat_map(|i| std::iter::once(&i.config).chain(&i.layers))
        .map(|b| b.bytes.len() as u64)
        .sum();
    assert_eq!(app.bytes_fetched, app_bytes);
    assert_eq!(app.bytes_cached, 0);
    assert_eq!(report.images[1].blobs_fetched, 2);
    let gets = up.count("GET", "/blobs/");
    assert_eq!(gets, 7, "one upstream GET per blob");
    gw.settle().await;

    // The upstream goes away: everything warmed is served.
    up.set_down(true);
    let c = client();
    for (repo, i) in [
        ("library/app", &amd),
        ("library/app", &arm),
        ("org/tool", &single),
    ] {
        for b in std::iter::once(&i.config).chain(&i.layers) {
            let r = c
                .get(format!("{}/v2/{repo}/blobs/{}", gw.url(0), b.digest))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(r.headers()["cache-status"], "mirrorgate; hit");
            assert_eq!(r.bytes().await.unwrap(), b.bytes);
        }
    }
    up.set_down(false);

    // A second run: nothing fetched, every blob answered from the cache.
    let heads = up.count("HEAD", "/blobs/");
    let again = w.warm_all(&images, &Quiet).await;
    assert_eq!((again.ok, again.failed), (2, 0), "{again:#?}");
    assert_eq!(again.bytes_fetched, 0);
    assert_eq!(again.images[0].bytes_cached, app_bytes);
    assert_eq!(
        up.count("GET", "/blobs/"),
        gets,
        "no upstream blob GET on the second run"
    );
    assert_eq!(
        up.count("HEAD", "/blobs/"),
        heads,
        "cached blobs cost nothing upstream"
    );
    gw.stop().await;
}

fn add_untagged(up: &FakeUpstream, repo: &str, i: &crate::support::image::Image) {
    for b in i.layers.iter().chain([&i.config]) {
        up.add_blob(b);
    }
    up.add_manifest(repo, None, &i.manifest);
}

async fn single_gw(up: &FakeUpstream, dir: &std::path::Path) -> Gateway {
    single(up, dir, "").await
}

#[tokio::test]
async fn platforms_asked_for_are_the_only_ones_fetched_and_failures_stay_per_image() {
    let up = FakeUpstream::start(Options::default()).await;
    let amd = oci_image(21, &[3000]);
    let arm = oci_image(22, &[4000, 1000]);
    let index = oci_index(&[(&amd, "amd64"), (&arm, "arm64")]);
    for i in [&amd, &arm] {
        add_untagged(&up, "library/multi", i);
    }
    up.add_manifest("library/multi", Some("latest"), &index);
    let dir = tempfile::tempdir().unwrap();
    let gw = single_gw(&up, dir.path()).await;

    let w = warmer(&gw.url(0), &["linux/arm64"]);
    let report = w
        .warm_all(&refs(&["multi", "library/missing:1", "multi:nope"]), &Quiet)
        .await;
    assert_eq!((report.ok, report.failed), (1, 2), "{report:#?}");
    let m = &report.images[0];
    assert_eq!(m.platforms, ["linux/arm64"]);
    assert_eq!(m.blobs_fetched, 3, "arm64's config and two layers only");
    for b in std::iter::once(&amd.config).chain(&amd.layers) {
        assert_eq!(up.count("GET", &b.digest), 0, "amd64 is not fetched");
    }
    let missing = &report.images[1];
    assert!(
        missing.errors[0].contains("404 Not Found"),
        "{:?}",
        missing.errors
    );
    assert!(!report.images[2].ok());

    // A platform the index does not have is an error of that image.
    let w = warmer(&gw.url(0), &["linux/s390x"]);
    let r = w.warm_all(&refs(&["multi"]), &Quiet).await;
    assert!(
        r.images[0].errors[0].contains("linux/amd64, linux/arm64"),
        "{:?}",
        r.images[0].errors
    );
    gw.stop().await;
}

fn warm_cmd(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mirrorgate"))
        .arg("warm")
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_warms_a_running_mirror_and_a_data_directory_and_reports_in_json() {
    let up = FakeUpstream::start(Options::default()).await;
    let img = docker_image(31, &[6000, 7000]);
    up.add_image("library/base", "3", &img);
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("images.txt");
    std::fs::write(
        &list,
        "# base images\ndocker.io/library/base:3\n\nbase:3   # again, same image\n",
    )
    .unwrap();
    let pods = dir.path().join("pods.json");
    std::fs::write(
        &pods,
        r#"{"apiVersion":"v1","kind":"List","items":[{"kind":"Pod","metadata":{"name":"p","namespace":"n"},
           "spec":{"initContainers":[{"name":"i","image":"base:3"}],"containers":[{"name":"c","image":"library/base:3"}]}}]}"#,
    )
    .unwrap();

    // In-process, over a data directory: the command runs the mirror itself.
    let cfg = write_config(dir.path(), &up.url(), "");
    let report = dir.path().join("report.json");
    let out = warm_cmd(&[
        "--config",
        cfg.to_str().unwrap(),
        "--data-dir",
        dir.path().join("data").to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
        list.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ok   docker.io/library/base:3"), "{stdout}");
    assert!(stdout.contains("warmed 2 of 2 images"), "{stdout}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r["images"][0]["digest"], img.manifest.digest.as_str());
    // The two lines name one image, warmed at once: between them each
    // blob crosses the upstream link once.
    for k in 0..2 {
        assert_eq!(r["images"][k]["blobs"], 3);
        assert_eq!(r["images"][k]["errors"].as_array().unwrap().len(), 0);
    }
    assert_eq!(up.count("GET", "/blobs/"), 3);
    assert_store_verified(&dir.path().join("data"));

    // Against a running mirror over the same data: a kubectl JSON input,
    // and one missing image, which fails the run but not the other image.
    let proc = spawn(&cfg).await;
    let out = warm_cmd(&[
        "--mirror",
        &proc.url(),
        pods.to_str().unwrap(),
        "--image",
        "library/nope:1",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("ok   docker.io/library/base:3"), "{stdout}");
    assert!(stdout.contains("FAIL docker.io/library/nope:1"), "{stdout}");
    assert!(stdout.contains("warmed 1 of 2 images"), "{stdout}");
    assert_eq!(
        up.count("GET", "/blobs/"),
        3,
        "already cached: nothing fetched"
    );

    // Bad input names its line, and nothing is warmed.
    std::fs::write(&list, "alpine:3\nNot A Ref\n").unwrap();
    let out = warm_cmd(&["--mirror", &proc.url(), list.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("images.txt:2"), "{stderr}");
}

#[tokio::test]
async fn the_server_keeps_a_list_warm_pins_it_and_follows_a_moving_tag() {
    use mirrorgate::clock::ManualClock;
    use std::time::Duration;

    let up = FakeUpstream::start(Options::default()).await;
    let v1 = docker_image(41, &[3000]);
    let v2 = docker_image(42, &[3500]);
    let other = docker_image(43, &[2000]);
    up.add_image("library/app", "1", &v1);
    up.add_image("org/other", "x", &other);
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("images.txt");
    std::fs::write(&list, "docker.io/library/app:1\norg/other:x\n").unwrap();
    // Anonymous clients may not bring anything in: the schedule needs no
    // credentials.
    let clock = ManualClock::new();
    let cfg = format!(
        "[auth]\nhtpasswd = {:?}\n[[warm]]\nfile = {:?}\ninterval = \"10m\"\npin = true\n\
         [[listener]]\naddr = \"127.0.0.1:0\"\n{}",
        crate::access::htpasswd(dir.path()),
        list.display().to_string(),
        upstream_toml(
            "docker.io",
            &up.url(),
            "default = true\ntag_ttl = \"60s\"\nfetch_requires_auth = true"
        )
    );
    let gw = Gateway::start_with_clock(&cfg, &dir.path().join("data"), clock.clone()).await;
    let app = gw.app().clone();
    let run = || {
        mirrorgate::warm::schedule::run_once(
            0,
            app.config().warm[0].clone(),
            app.registry().clone(),
            app.mirror().store().clone(),
            app.config(),
        )
    };
    // Anonymous clients are served the cache only: a cold image is refused.
    let anon = client()
        .get(format!("{}/v2/library/app/manifests/1", gw.url(0)))
        .send()
        .await
        .unwrap();
    assert_eq!(anon.status(), 401);
    let r = run().await;
    assert_eq!(
        (r.report.ok, r.report.failed, r.pinned),
        (2, 0, 2),
        "{r:#?}"
    );
    let anon = client()
        .get(format!("{}/v2/library/app/manifests/1", gw.url(0)))
        .send()
        .await
        .unwrap();
    assert_eq!(anon.status(), 200, "warm, it is served from the cache");
    assert_eq!(up.count("GET", "/blobs/"), 4, "two configs, two layers");
    gw.settle().await;
    let store = app.mirror().store();
    let pins = store.pins().await.unwrap();
    assert_eq!(pins.len(), 2);
    assert!(
        pins.iter()
            .all(|(_, p)| p.source.as_deref() == Some("warm[0]"))
    );

    // The tag moves upstream and the list loses an image: past tag_ttl
    // the next run fetches the new digest before anyone asks, and unpins
    // what left the list.
    up.add_image("library/app", "1", &v2);
    std::fs::write(&list, "# only the app now\ndocker.io/library/app:1\n").unwrap();
    clock.advance(Duration::from_secs(61));
    let r = run().await;
    assert_eq!((r.report.ok, r.unpinned, r.pinned), (1, 1, 0), "{r:#?}");
    assert_eq!(
        r.report.images[0].digest.as_deref(),
        Some(v2.manifest.digest.as_str())
    );
    assert_eq!(
        up.count("GET", &v2.layers[0].digest),
        1,
        "the new layer is warm"
    );
    gw.settle().await;
    let pins = store.pins().await.unwrap();
    assert_eq!(pins.len(), 1, "{pins:?}");
    assert_eq!(pins[0].0.repo.as_str(), "library/app");

    // A list that cannot be read is reported; the run goes on.
    std::fs::write(&list, "docker.io/library/app:1\nNot A Ref!\n").unwrap();
    let r = run().await;
    assert_eq!(r.input_errors.len(), 1, "{r:#?}");
    gw.stop().await;
}
