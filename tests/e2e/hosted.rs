//! Hosted namespaces: the OCI push API (monolithic, chunked and resumed
//! uploads, cancel, mounts, manifest checks, tags, referrers, deletes),
//! who may push, what one repository's pushes show another, upload
//! sessions across a restart, the sweep of abandoned ones, and garbage
//! collection.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::{Method, StatusCode};

use crate::access::{PASS, USER};
use crate::support::image::{Blob, Image, docker_image, docker_image_on, oci_image, oci_index};
use crate::support::*;

/// A client of a mirror's hosted namespace `local`.
struct Pusher {
    c: reqwest::Client,
    base: String,
    creds: Option<(String, String)>,
}

impl Pusher {
    fn new(base: &str) -> Self {
        Self {
            c: client(),
            base: base.to_owned(),
            creds: None,
        }
    }

    fn as_user(base: &str, user: &str, pass: &str) -> Self {
        Self {
            creds: Some((user.to_owned(), pass.to_owned())),
            ..Self::new(base)
        }
    }

    fn req(&self, m: Method, path: &str) -> reqwest::RequestBuilder {
        let url = if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        };
        let r = self.c.request(m, url);
        match &self.creds {
            Some((u, p)) => r.basic_auth(u, Some(p)),
            None => r,
        }
    }

    /// Uploads a blob in one request (`POST ?digest=`).
    async fn blob(&self, repo: &str, bytes: &[u8]) -> String {
        let d = image::sha256_digest(bytes);
        let r = self
            .req(
                Method::POST,
                &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
            )
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
        d
    }

    async fn put_manifest(&self, repo: &str, reference: &str, m: &Blob) -> reqwest::Response {
        self.req(Method::PUT, &format!("/v2/{repo}/manifests/{reference}"))
            .header("content-type", m.media_type)
            .body(m.bytes.clone())
            .send()
            .await
            .unwrap()
    }

    /// Pushes an image's blobs, then its manifest under `tag`.
    async fn image(&self, repo: &str, tag: &str, img: &Image) {
        for b in img.layers.iter().chain([&img.config]) {
            self.blob(repo, &b.bytes).await;
        }
        let r = self.put_manifest(repo, tag, &img.manifest).await;
        assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
        assert_eq!(
            r.headers()["docker-content-digest"],
            img.manifest.digest.as_str()
        );
    }

    async fn send(&self, m: Method, path: &str) -> reqwest::Response {
        self.req(m, path).send().await.unwrap()
    }

    async fn status(&self, m: Method, path: &str) -> StatusCode {
        self.send(m, path).await.status()
    }

    /// Starts an upload session in `repo`; returns its URL.
    async fn start(&self, repo: &str) -> String {
        let r = self
            .send(Method::POST, &format!("/v2/{repo}/blobs/uploads/"))
            .await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        r.headers()["location"].to_str().unwrap().to_owned()
    }
}

use crate::support::image;

/// Pulls `img`'s config and layers through the mirror at `url` from the
/// mirrored repository `repo` (checking every byte), and waits until they
/// are stored.
async fn pull_blobs(gw: &Gateway, repo: &str, img: &Image) {
    let c = client();
    for b in img.layers.iter().chain([&img.config]) {
        let r = c
            .get(format!("{}/v2/{repo}/blobs/{}", gw.url(0), b.digest))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{}", b.digest);
        assert_eq!(r.bytes().await.unwrap(), b.bytes);
    }
    gw.settle().await;
}

fn hosted_config(up: &FakeUpstream, hosted: &str, upstream_extra: &str) -> String {
    format!(
        "[[listener]]\naddr = \"127.0.0.1:0\"\n{}[[hosted]]\nname = \"local\"\n{hosted}\n",
        upstream_toml(
            "docker.io",
            &up.url(),
            &format!("default = true\n{upstream_extra}")
        ),
    )
}

#[tokio::test]
async fn uploads_monolithic_chunked_resumed_and_cancelled() {
    let up = FakeUpstream::start(Options::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&hosted_config(&up, "anonymous_push = true", ""), dir.path()).await;
    let p = Pusher::new(&gw.url(0));
    let data = image::random_bytes(7, 300_000);
    let digest = image::sha256_digest(&data);

    // A session: 202 with its URL, nothing held yet.
    let r = p.send(Method::POST, "/v2/local/app/blobs/uploads/").await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(loc.starts_with("/v2/local/app/blobs/uploads/"), "{loc}");
    assert_eq!(r.headers()["range"], "0-0");
    assert!(loc.ends_with(r.headers()["docker-upload-uuid"].to_str().unwrap()));

    // The first chunk, with its Content-Range.
    let r = p
        .req(Method::PATCH, &loc)
        .header("content-range", "0-99999")
        .body(data[..100_000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(r.headers()["range"], "0-99999");
    // A chunk that does not start where the upload stands: 416, with what
    // the upload holds.
    let r = p
        .req(Method::PATCH, &loc)
        .header("content-range", "5-9")
        .body(vec![0u8; 5])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.headers()["range"], "0-99999");
    assert_eq!(error_code(r).await, "BLOB_UPLOAD_INVALID");
    // A range that is not the body's length: 416 too, nothing taken.
    let r = p
        .req(Method::PATCH, &loc)
        .header("content-range", "100000-100009")
        .body(vec![0u8; 5])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);

    // The connection drops in the middle of the second chunk: what arrived
    // is kept, and the client resumes from the offset it reads back.
    let part = Bytes::copy_from_slice(&data[100_000..150_000]);
    let broken = futures_util::stream::iter(vec![
        Ok::<_, std::io::Error>(part),
        Err(std::io::Error::other("cable pulled")),
    ]);
    let sent = p
        .req(Method::PATCH, &loc)
        .body(reqwest::Body::wrap_stream(broken))
        .send()
        .await;
    assert!(sent.is_err(), "the broken request must fail");
    let r = p.req(Method::GET, &loc).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let range = r.headers()["range"].to_str().unwrap().to_owned();
    let held: usize = range.strip_prefix("0-").unwrap().parse::<usize>().unwrap() + 1;
    assert!((100_000..=150_000).contains(&held), "{range}");
    let r = p
        .req(Method::PATCH, &loc)
        .header("content-range", format!("{held}-{}", data.len() - 1))
        .body(data[held..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    // A wrong digest at the end is refused, and nothing is stored.
    let other = image::sha256_digest(b"something else");
    let r = p.send(Method::PUT, &format!("{loc}?digest={other}")).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    assert_eq!(p.status(Method::GET, &loc).await, StatusCode::NOT_FOUND);

    // Again, chunked without Content-Range (docker's streamed PATCH), and
    // the last bytes in the PUT.
    let loc = p.start("local/app").await;
    let r = p
        .req(Method::PATCH, &loc)
        .body(data[..200_000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    // Another repository cannot use this session.
    let foreign = loc.replace("/local/app/", "/local/other/");
    let r = p.req(Method::GET, &foreign).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r).await, "BLOB_UPLOAD_UNKNOWN");
    let r = p
        .req(Method::PUT, &format!("{loc}?digest={digest}"))
        .body(data[200_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        r.headers()["location"],
        format!("/v2/local/app/blobs/{digest}").as_str()
    );
    assert_eq!(r.headers()["docker-content-digest"], digest.as_str());
    let r = p
        .send(Method::GET, &format!("/v2/local/app/blobs/{digest}"))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap(), data);
    // A range of it.
    let r = p
        .req(Method::GET, &format!("/v2/local/app/blobs/{digest}"))
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.bytes().await.unwrap(), data[10..20]);

    // Cancel; the status page shows the session until then.
    let loc = p.start("local/app").await;
    let status = gw.status_json().await;
    assert_eq!(status["uploads"][0]["repository"], "local/app");
    assert_eq!(status["uploads"][0]["received"], 0);
    assert_eq!(p.status(Method::DELETE, &loc).await, StatusCode::NO_CONTENT);
    let r = p.req(Method::GET, &loc).send().await.unwrap();
    assert_eq!(error_code(r).await, "BLOB_UPLOAD_UNKNOWN");
    assert_eq!(gw.status_json().await["uploads"], serde_json::json!([]));
    // Monolithic, through a path prefix and `?ns=` alike.
    let small = b"monolithic".to_vec();
    let d = p.blob("local/app", &small).await;
    let r = p
        .send(Method::HEAD, &format!("/v2/app/blobs/{d}?ns=local"))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-length"], "10");
    let r = p
        .send(Method::POST, "/v2/app/blobs/uploads/?ns=local")
        .await;
    assert!(
        r.headers()["location"]
            .to_str()
            .unwrap()
            .ends_with("?ns=local"),
        "the session URL keeps the client's ns"
    );
    // A pull-only upstream still refuses pushes.
    let r = p.send(Method::POST, "/v2/library/app/blobs/uploads/").await;
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_store_verified(dir.path());
}

#[tokio::test]
async fn manifests_are_checked_and_served_with_tags_referrers_and_deletes() {
    let up = FakeUpstream::start(Options::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(
        &hosted_config(
            &up,
            "anonymous_push = true\nmax_manifest_size = \"8KiB\"",
            "",
        ),
        dir.path(),
    )
    .await;
    let p = Pusher::new(&gw.url(0));
    let img = docker_image(1, &[1000, 2000]);
    // Its blobs are missing: refused, naming the missing one.
    let r = p.put_manifest("local/app", "v1", &img.manifest).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(r).await, "MANIFEST_BLOB_UNKNOWN");
    p.image("local/app", "v1", &img).await;
    for reference in ["v1", img.manifest.digest.as_str()] {
        let r = p
            .send(Method::GET, &format!("/v2/local/app/manifests/{reference}"))
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-type"], img.manifest.media_type);
        assert_eq!(
            r.headers()["docker-content-digest"],
            img.manifest.digest.as_str()
        );
        assert_eq!(r.bytes().await.unwrap(), img.manifest.bytes);
    }

    // An index whose child was never pushed: MANIFEST_BLOB_UNKNOWN; once
    // the child is there, accepted.
    let arm = oci_image(2, &[500]);
    let amd = oci_image(3, &[600]);
    let index = oci_index(&[(&arm, "linux/arm64"), (&amd, "linux/amd64")]);
    p.image("local/multi", &arm.manifest.digest, &arm).await;
    let r = p.put_manifest("local/multi", "latest", &index).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(r).await, "MANIFEST_BLOB_UNKNOWN");
    p.image("local/multi", &amd.manifest.digest, &amd).await;
    let r = p.put_manifest("local/multi", "latest", &index).await;
    assert_eq!(r.status(), StatusCode::CREATED);

    // Not a manifest this registry serves; a Content-Type that contradicts
    // the manifest; bytes that do not hash to the digest they are put as;
    // a manifest over the size bound.
    let bad = |media_type: &'static str, bytes: &[u8]| Blob {
        digest: image::sha256_digest(bytes),
        bytes: Bytes::copy_from_slice(bytes),
        media_type,
    };
    for (m, code) in [
        (
            bad("application/json", &img.manifest.bytes),
            "MANIFEST_INVALID",
        ),
        (
            bad(
                "application/vnd.oci.image.index.v1+json",
                &img.manifest.bytes,
            ),
            "MANIFEST_INVALID",
        ),
        (
            bad("application/vnd.oci.image.manifest.v1+json", b"{not json"),
            "MANIFEST_INVALID",
        ),
    ] {
        let r = p.put_manifest("local/app", "bad", &m).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(error_code(r).await, code);
    }
    let r = p
        .put_manifest("local/app", &amd.manifest.digest, &img.manifest)
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    let mut huge = img.manifest.clone();
    let mut v: serde_json::Value = serde_json::from_slice(&huge.bytes).unwrap();
    v["annotations"] = serde_json::json!({ "pad": "x".repeat(9000) });
    huge.bytes = serde_json::to_vec(&v).unwrap().into();
    let r = p.put_manifest("local/app", "huge", &huge).await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_code(r).await, "SIZE_INVALID");
    assert_eq!(
        p.status(Method::GET, "/v2/local/app/manifests/bad").await,
        StatusCode::NOT_FOUND
    );

    // Tags, paginated.
    for t in ["v2", "v3", "v4", "a"] {
        let r = p.put_manifest("local/app", t, &img.manifest).await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let mut seen = Vec::new();
    let mut next = Some("/v2/local/app/tags/list?n=2".to_owned());
    while let Some(url) = next.take() {
        let r = p.req(Method::GET, &url).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        next = r.headers().get("link").map(|l| {
            let l = l.to_str().unwrap();
            l[l.find('<').unwrap() + 1..l.find('>').unwrap()].to_owned()
        });
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["name"], "local/app");
        let page = v["tags"].as_array().unwrap();
        assert!(page.len() <= 2);
        seen.extend(page.iter().map(|t| t.as_str().unwrap().to_owned()));
    }
    assert_eq!(seen, ["a", "v1", "v2", "v3", "v4"]);
    assert_eq!(
        p.status(Method::GET, "/v2/local/nothing/tags/list").await,
        StatusCode::NOT_FOUND
    );

    // An artifact about the image: OCI-Subject, and the referrers API.
    let sig_config = p.blob("local/app", b"{}").await;
    let sig_layer = p.blob("local/app", b"signature").await;
    let artifact = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.example.signature",
        "config": { "mediaType": "application/vnd.oci.empty.v1+json", "digest": sig_config, "size": 2 },
        "layers": [{ "mediaType": "application/octet-stream", "digest": sig_layer, "size": 9 }],
        "subject": { "mediaType": img.manifest.media_type, "digest": img.manifest.digest, "size": img.manifest.bytes.len() },
        "annotations": { "org.example.by": "test" },
    });
    let artifact = bad(
        "application/vnd.oci.image.manifest.v1+json",
        &serde_json::to_vec(&artifact).unwrap(),
    );
    let r = p
        .put_manifest("local/app", &artifact.digest, &artifact)
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["oci-subject"], img.manifest.digest.as_str());
    let referrers = format!("/v2/local/app/referrers/{}", img.manifest.digest);
    let r = p.req(Method::GET, &referrers).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["content-type"],
        "application/vnd.oci.image.index.v1+json"
    );
    let v: serde_json::Value = r.json().await.unwrap();
    let list = v["manifests"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["digest"], artifact.digest.as_str());
    assert_eq!(list[0]["artifactType"], "application/vnd.example.signature");
    assert_eq!(list[0]["annotations"]["org.example.by"], "test");
    let r = p
        .send(Method::GET, &format!("{referrers}?artifactType=other"))
        .await;
    assert_eq!(r.headers()["oci-filters-applied"], "artifactType");
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(v["manifests"].as_array().unwrap().is_empty());

    // Deletes: a tag; then the manifest by digest, with its other tags;
    // the artifact, which leaves the referrers list; a blob.
    assert_eq!(
        p.status(Method::DELETE, "/v2/local/app/manifests/v4").await,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        p.status(Method::GET, "/v2/local/app/manifests/v4").await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        p.status(Method::GET, "/v2/local/app/manifests/v3").await,
        StatusCode::OK
    );
    assert_eq!(
        p.status(
            Method::DELETE,
            &format!("/v2/local/app/manifests/{}", artifact.digest)
        )
        .await,
        StatusCode::ACCEPTED
    );
    let v: serde_json::Value = p.send(Method::GET, &referrers).await.json().await.unwrap();
    assert!(v["manifests"].as_array().unwrap().is_empty());
    assert_eq!(
        p.status(
            Method::DELETE,
            &format!("/v2/local/app/manifests/{}", img.manifest.digest)
        )
        .await,
        StatusCode::ACCEPTED
    );
    for t in ["v1", "v2", "v3", "a"] {
        assert_eq!(
            p.status(Method::GET, &format!("/v2/local/app/manifests/{t}"))
                .await,
            StatusCode::NOT_FOUND
        );
    }
    let layer = format!("/v2/local/app/blobs/{}", img.layers[0].digest);
    assert_eq!(p.status(Method::DELETE, &layer).await, StatusCode::ACCEPTED);
    assert_eq!(p.status(Method::HEAD, &layer).await, StatusCode::NOT_FOUND);
    assert_eq!(
        p.status(Method::DELETE, &layer).await,
        StatusCode::NOT_FOUND
    );

    // The catalog of the namespace.
    let v: serde_json::Value = p
        .send(Method::GET, "/local/v2/_catalog")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["repositories"], serde_json::json!(["app", "multi"]));

    // With deletes turned off (by a reload): 405.
    gw.reload(&hosted_config(
        &up,
        "anonymous_push = true\ndelete = false",
        "",
    ))
    .await
    .unwrap();
    let r = p
        .send(Method::DELETE, "/v2/local/multi/manifests/latest")
        .await;
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(error_code(r).await, "UNSUPPORTED");
    assert_store_verified(dir.path());
}

#[tokio::test]
async fn who_may_push_and_what_other_repositories_see() {
    let up = FakeUpstream::start(Options::default()).await;
    let base = docker_image(10, &[3000]);
    up.add_image("library/base", "1", &base);
    let secret = docker_image(11, &[3100]);
    up.add_image("secret/img", "1", &secret);
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    let line = |u: &str| format!("{u}:{}\n", bcrypt::hash(PASS, 4).unwrap());
    std::fs::write(&htpasswd, line(USER) + &line("bob")).unwrap();
    let cfg = format!(
        "[auth]\nhtpasswd = \"{}\"\n{}",
        htpasswd.display(),
        hosted_config(&up, "push = [\"alice\"]", "private = [\"secret/*\"]"),
    );
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let gw = Gateway::start(&cfg, &data).await;
    let url = gw.url(0);
    let alice = Pusher::as_user(&url, USER, PASS);
    let bob = Pusher::as_user(&url, "bob", PASS);
    let anon = Pusher::new(&url);

    // Anonymous: a challenge; bob is not in `push`; alice may.
    let r = anon
        .send(Method::POST, "/v2/local/app/blobs/uploads/")
        .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic ")
    );
    let r = bob.send(Method::POST, "/v2/local/app/blobs/uploads/").await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(error_code(r).await, "DENIED");
    let mine = alice.blob("local/app", b"alice's layer").await;
    // Readers pull; deletes are pushes.
    assert_eq!(
        bob.status(Method::GET, &format!("/v2/local/app/blobs/{mine}"))
            .await,
        StatusCode::OK
    );
    assert_eq!(
        bob.status(Method::DELETE, &format!("/v2/local/app/blobs/{mine}"))
            .await,
        StatusCode::FORBIDDEN
    );

    // Another repository does not see it, nor does the mirror's route
    // under an upstream repository that upstream says lacks it.
    assert_eq!(
        alice
            .status(Method::HEAD, &format!("/v2/local/other/blobs/{mine}"))
            .await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        anon.status(Method::GET, &format!("/v2/library/base/blobs/{mine}"))
            .await,
        StatusCode::NOT_FOUND
    );
    // Until mounted there from the first.
    let r = alice
        .req(
            Method::POST,
            &format!("/v2/local/other/blobs/uploads/?mount={mine}&from=local/app"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        r.headers()["location"],
        format!("/v2/local/other/blobs/{mine}").as_str()
    );
    assert_eq!(
        alice
            .status(Method::HEAD, &format!("/v2/local/other/blobs/{mine}"))
            .await,
        StatusCode::OK
    );
    // A mount of what is not there falls back to a session.
    let nothing = image::sha256_digest(b"nothing");
    let r = alice
        .req(
            Method::POST,
            &format!("/v2/local/other/blobs/uploads/?mount={nothing}&from=local/app"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);

    // A base pulled through the mirror: its layers are there for a pushed
    // image built on it (HEAD finds them, no upload), and mountable from
    // the mirrored repository.
    pull_blobs(&gw, "library/base", &base).await;
    let c = client();
    assert_eq!(
        alice
            .status(
                Method::HEAD,
                &format!("/v2/local/app/blobs/{}", base.layers[0].digest)
            )
            .await,
        StatusCode::OK
    );
    let mine_img = docker_image_on(12, &base.layers, &[700]);
    alice.blob("local/app", &mine_img.layers[1].bytes).await;
    alice.blob("local/app", &mine_img.config.bytes).await;
    let r = alice
        .put_manifest("local/app", "built", &mine_img.manifest)
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = alice
        .req(
            Method::POST,
            &format!(
                "/v2/local/third/blobs/uploads/?mount={}&from=docker.io/library/base",
                base.config.digest
            ),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    // A private upstream repository's layers are not public content: not
    // visible by HEAD, and mounted only by a client that may read it.
    let r = c
        .get(format!(
            "{url}/v2/secret/img/blobs/{}",
            secret.layers[0].digest
        ))
        .basic_auth(USER, Some(PASS))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap(), secret.layers[0].bytes);
    gw.settle().await;
    let secret_layer = format!("/v2/local/app/blobs/{}", secret.layers[0].digest);
    assert_eq!(
        alice.status(Method::HEAD, &secret_layer).await,
        StatusCode::NOT_FOUND
    );
    let r = alice
        .req(
            Method::POST,
            &format!(
                "/v2/local/app/blobs/uploads/?mount={}&from=docker.io/secret/img",
                secret.layers[0].digest
            ),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        alice.status(Method::HEAD, &secret_layer).await,
        StatusCode::OK
    );

    // Without [auth], pushes are anonymous: refused unless turned on.
    let dir2 = tempfile::tempdir().unwrap();
    let gw2 = Gateway::start(&hosted_config(&up, "", ""), dir2.path()).await;
    let r = Pusher::new(&gw2.url(0))
        .req(Method::POST, "/v2/local/app/blobs/uploads/")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(error_code(r).await, "DENIED");
}

#[tokio::test]
async fn sessions_survive_a_restart_abandoned_ones_go_and_gc_collects() {
    let up = FakeUpstream::start(Options::default()).await;
    let base = docker_image(20, &[2500]);
    up.add_image("library/base", "1", &base);
    let dir = tempfile::tempdir().unwrap();
    let cfg = hosted_config(&up, "anonymous_push = true\nupload_timeout = \"1h\"", "");
    let gw = Gateway::start(&cfg, dir.path()).await;
    let p = Pusher::new(&gw.url(0));
    let data = image::random_bytes(21, 64_000);
    let digest = image::sha256_digest(&data);
    let loc = p.start("local/app").await;
    let r = p
        .req(Method::PATCH, &loc)
        .body(data[..30_000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    gw.stop().await;

    // A new process on the same directory: the session is there, at its
    // offset, and completes.
    let gw = Gateway::start(&cfg, dir.path()).await;
    let p = Pusher::new(&gw.url(0));
    let r = p.req(Method::GET, &loc).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(r.headers()["range"], "0-29999");
    let r = p
        .req(Method::PUT, &format!("{loc}?digest={digest}"))
        .header("content-range", "30000-63999")
        .body(data[30_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    // An abandoned session is swept once its namespace's timeout passed.
    let idle = p.start("local/app").await;
    let hosted = gw.app().hosted().clone();
    let now = SystemTime::now();
    assert_eq!(hosted.sweep_uploads_at(now).await.unwrap(), 0);
    let later = now + Duration::from_secs(2 * 3600);
    assert_eq!(hosted.sweep_uploads_at(later).await.unwrap(), 1);
    assert_eq!(p.status(Method::GET, &idle).await, StatusCode::NOT_FOUND);

    // Garbage: the blob above (never referenced), and an image whose
    // manifest is then deleted. Kept: a pushed image's blobs, and (only
    // unlinked) a base layer the mirror holds for its upstream.
    let kept = docker_image_on(22, &base.layers, &[1200]);
    pull_blobs(&gw, "library/base", &base).await;
    p.image("local/app", "kept", &kept).await;
    let dropped = docker_image_on(23, &base.layers, &[1300]);
    p.image("local/gone", "1", &dropped).await;
    // Young: nothing goes yet.
    assert_eq!(hosted.gc_at(now).await.unwrap().deleted, 0);
    assert_eq!(
        p.status(
            Method::DELETE,
            &format!("/v2/local/gone/manifests/{}", dropped.manifest.digest)
        )
        .await,
        StatusCode::ACCEPTED
    );
    let store = gw.app().mirror().store().clone();
    let pinned = store.pinned_digests().await.unwrap();
    for b in kept.layers.iter().chain([&kept.config, &kept.manifest]) {
        assert!(
            pinned.contains(&b.digest.parse().unwrap()),
            "eviction keeps pushed content"
        );
    }
    // The cache's own gc (`mirrorgate cache gc`) leaves pushed content to
    // the namespace, even a blob no manifest references yet.
    let cache_gc = store.gc(Duration::ZERO, false).await.unwrap();
    assert!(
        !cache_gc.deleted.contains(&digest),
        "cache gc took a pushed blob"
    );
    let report = hosted.gc_at(later).await.unwrap();
    let stat = |d: &str| {
        let store = store.clone();
        let d: mirrorgate::oci::Digest = d.parse().unwrap();
        async move { store.stat(&d).await.unwrap() }
    };
    assert_eq!(stat(&digest).await, None, "the unreferenced blob went");
    assert_eq!(stat(&dropped.layers[1].digest).await, None);
    assert_eq!(stat(&dropped.config.digest).await, None);
    assert_eq!(stat(&dropped.manifest.digest).await, None);
    for b in kept.layers.iter().chain([&kept.config, &kept.manifest]) {
        assert!(stat(&b.digest).await.is_some(), "{} kept", b.digest);
    }
    // The base layer stays in the store (mirror content); only links went.
    assert!(stat(&base.layers[0].digest).await.is_some());
    assert_eq!(report.deleted, 4, "{report:?}");
    assert_eq!(
        p.status(Method::GET, "/v2/local/app/manifests/kept").await,
        StatusCode::OK
    );
    assert_store_verified(dir.path());
}

#[tokio::test]
async fn concurrent_pushes_of_images_sharing_layers() {
    let up = FakeUpstream::start(Options::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&hosted_config(&up, "anonymous_push = true", ""), dir.path()).await;
    let shared = docker_image(30, &[200_000, 100_000]);
    let images: Vec<Image> = (0..8)
        .map(|i| docker_image_on(31 + i, &shared.layers, &[50_000]))
        .collect();
    let url = gw.url(0);
    let mut tasks = Vec::new();
    for (i, img) in images.iter().enumerate() {
        let (url, img) = (url.clone(), img.clone());
        tasks.push(tokio::spawn(async move {
            let p = Pusher::new(&url);
            // Chunked, in 64 KiB pieces, to interleave with the others.
            for b in img.layers.iter().chain([&img.config]) {
                let r = p
                    .send(Method::POST, &format!("/v2/local/app{i}/blobs/uploads/"))
                    .await;
                let loc = r.headers()["location"].to_str().unwrap().to_owned();
                for (n, chunk) in b.bytes.chunks(65_536).enumerate() {
                    let start = n * 65_536;
                    let r = p
                        .req(Method::PATCH, &loc)
                        .header(
                            "content-range",
                            format!("{start}-{}", start + chunk.len() - 1),
                        )
                        .body(chunk.to_vec())
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), StatusCode::ACCEPTED);
                }
                let r = p
                    .send(Method::PUT, &format!("{loc}?digest={}", b.digest))
                    .await;
                assert_eq!(r.status(), StatusCode::CREATED);
            }
            let r = p
                .put_manifest(&format!("local/app{i}"), "1", &img.manifest)
                .await;
            assert_eq!(r.status(), StatusCode::CREATED);
        }));
    }
    // Collections run all along: they never take what a push holds.
    let hosted = gw.app().hosted().clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    let collector = tokio::spawn(async move {
        let mut runs = 0u32;
        while !stopped.load(std::sync::atomic::Ordering::SeqCst) {
            hosted.gc().await.unwrap();
            runs += 1;
            tokio::task::yield_now().await;
        }
        runs
    });
    for t in tasks {
        t.await.unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(collector.await.unwrap() > 0);
    let p = Pusher::new(&url);
    for (i, img) in images.iter().enumerate() {
        let r = p
            .send(Method::GET, &format!("/v2/local/app{i}/manifests/1"))
            .await;
        assert_eq!(r.bytes().await.unwrap(), img.manifest.bytes);
        for b in &img.layers {
            let r = p
                .send(Method::GET, &format!("/v2/local/app{i}/blobs/{}", b.digest))
                .await;
            assert_eq!(r.bytes().await.unwrap(), b.bytes);
        }
    }
    assert_store_verified(dir.path());
}

#[tokio::test]
async fn max_size_bounds_a_namespace() {
    let up = FakeUpstream::start(Options::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(
        &hosted_config(&up, "anonymous_push = true\nmax_size = \"1MiB\"", ""),
        dir.path(),
    )
    .await;
    let p = Pusher::new(&gw.url(0));
    let a = image::random_bytes(40, 600_000);
    p.blob("local/a", &a).await;
    // The same blob in another repository costs nothing more.
    p.blob("local/b", &a).await;
    // A second one does not fit: refused at its commit, nothing stored.
    let b = image::random_bytes(41, 600_000);
    let d = image::sha256_digest(&b);
    let r = p
        .req(
            Method::POST,
            &format!("/v2/local/a/blobs/uploads/?digest={d}"),
        )
        .body(b.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_code(r).await, "DENIED");
    assert_eq!(
        p.status(Method::HEAD, &format!("/v2/local/a/blobs/{d}"))
            .await,
        StatusCode::NOT_FOUND
    );
    // Deleting frees the room, once no repository holds the blob.
    let da = image::sha256_digest(&a);
    let unlink = |repo: &'static str| {
        let (p, da) = (&p, da.clone());
        async move {
            assert_eq!(
                p.status(Method::DELETE, &format!("/v2/local/{repo}/blobs/{da}"))
                    .await,
                StatusCode::ACCEPTED
            );
        }
    };
    unlink("a").await;
    let r = p
        .req(
            Method::POST,
            &format!("/v2/local/a/blobs/uploads/?digest={d}"),
        )
        .body(b.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::PAYLOAD_TOO_LARGE,
        "b still holds it"
    );
    unlink("b").await;
    p.blob("local/a", &b).await;
}

#[tokio::test]
async fn routed_by_host_and_pinned_listener_with_deny_rules() {
    let up = FakeUpstream::start(Options::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "[[listener]]\naddr = \"127.0.0.1:0\"\n[[listener]]\naddr = \"127.0.0.1:0\"\nupstream = \"local\"\n{}\
         [[hosted]]\nname = \"local\"\nhosts = [\"registry.local.test\"]\nanonymous_push = true\ndeny = [\"secret/**\"]\n",
        upstream_toml("docker.io", &up.url(), "default = true")
    );
    let gw = Gateway::start(&cfg, dir.path()).await;
    // The pinned listener: names without a prefix are the namespace's.
    let pinned = Pusher::new(&gw.url(1));
    let d = pinned.blob("app", b"pinned").await;
    // The Host header (SNI on TLS) selects it on the shared listener.
    let r = client()
        .head(format!("{}/v2/app/blobs/{d}", gw.url(0)))
        .header("host", "registry.local.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Without it, the same path is the default upstream's.
    let r = client()
        .post(format!("{}/v2/app/blobs/uploads/", gw.url(0)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    // Denied repositories can be neither pushed nor pulled.
    let r = pinned
        .send(Method::POST, "/v2/secret/x/blobs/uploads/")
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(error_code(r).await, "DENIED");
}

#[tokio::test]
async fn a_layer_pushed_first_and_then_pulled_through_the_mirror_stays_for_the_cache() {
    let up = FakeUpstream::start(Options::default()).await;
    let img = docker_image(50, &[5000]);
    up.add_image("library/shared", "1", &img);
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&hosted_config(&up, "anonymous_push = true", ""), dir.path()).await;
    let p = Pusher::new(&gw.url(0));
    // Pushed before the mirror ever fetched it: pushed content.
    p.image("local/shared", "1", &img).await;
    // Then pulled through the mirror from the public upstream repository.
    let c = client();
    let r = c
        .get(format!("{}/v2/library/shared/manifests/1", gw.url(0)))
        .header("accept", ACCEPT_ALL)
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap(), img.manifest.bytes);
    pull_blobs(&gw, "library/shared", &img).await;
    // The push goes, and is collected: the cache keeps what it serves.
    assert_eq!(
        p.status(
            Method::DELETE,
            &format!("/v2/local/shared/manifests/{}", img.manifest.digest)
        )
        .await,
        StatusCode::ACCEPTED
    );
    let later = SystemTime::now() + Duration::from_secs(7200);
    let report = gw.app().hosted().gc_at(later).await.unwrap();
    assert_eq!(report.deleted, 0, "{report:?}");
    // Still cached: served with upstream down.
    up.set_down(true);
    pull_blobs(&gw, "library/shared", &img).await;
}
