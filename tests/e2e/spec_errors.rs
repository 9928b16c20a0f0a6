//! The status and OCI error code of every answer the mirror gives to bad or
//! impossible input, checked against the OCI distribution spec (and, where
//! the spec is silent, what CNCF distribution answers). One table; each row
//! says why it is right.
//!
//! Rows marked `local` must be answered without asking upstream and without
//! touching the data directory.

use crate::support::image::docker_image;
use crate::support::*;

/// One request and the answer the spec calls for.
struct Row {
    method: &'static str,
    path: String,
    header: Option<(&'static str, &'static str)>,
    status: u16,
    code: &'static str,
    /// `Some(v)`: a 405 must carry `Allow: v`.
    allow: Option<&'static str>,
    /// Answered without upstream or disk.
    local: bool,
    why: &'static str,
}

fn row(method: &'static str, path: impl Into<String>, status: u16, code: &'static str) -> Row {
    Row {
        method,
        path: path.into(),
        header: None,
        status,
        code,
        allow: None,
        local: true,
        why: "",
    }
}

impl Row {
    fn why(mut self, why: &'static str) -> Self {
        self.why = why;
        self
    }

    /// The mirror asks upstream (a well-formed request for something absent).
    fn upstream(mut self) -> Self {
        self.local = false;
        self
    }

    fn allow(mut self, allow: &'static str) -> Self {
        self.allow = Some(allow);
        self
    }

    fn header(mut self, name: &'static str, value: &'static str) -> Self {
        self.header = Some((name, value));
        self
    }
}

fn table(config_digest: &str) -> Vec<Row> {
    let zero = format!("sha256:{}", "0".repeat(64));
    let upper = format!("sha256:{}", "E3B0".repeat(16));
    vec![
        // Repository names: the spec's name grammar; NAME_INVALID is its code.
        row("GET", "/v2/Bad_Name/manifests/latest", 400, "NAME_INVALID")
            .why("spec: <name> MUST match [a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*(/...)*"),
        row("GET", "/v2/a/..b/manifests/latest", 400, "NAME_INVALID").why("name grammar"),
        row("GET", "/v2/a//b/manifests/latest", 400, "NAME_INVALID")
            .why("empty component; distribution redirects, which would alias names"),
        row("GET", format!("/v2/{}/manifests/latest", "a".repeat(300)), 400, "NAME_INVALID")
            .why("spec: clients cap host/name at 255 characters"),
        row("GET", "/v2/A/manifests/.x", 400, "NAME_INVALID")
            .why("the name is checked before the reference"),
        row("GET", "/v2/library%2fe/manifests/1", 400, "NAME_INVALID")
            .why("%2F is not `/` (RFC 3986 2.2)"),
        // Manifest references that are neither a tag nor a digest: no
        // registry can hold such a manifest.
        row("GET", "/v2/library/e/manifests/.INVALID_MANIFEST_NAME", 404, "MANIFEST_UNKNOWN")
            .why("spec: a manifest that does not exist MUST be 404; conformance 01_pull_test probes this name"),
        row("HEAD", "/v2/library/e/manifests/.INVALID_MANIFEST_NAME", 404, "MANIFEST_UNKNOWN")
            .why("conformance 01_pull_test: HEAD of a nonexistent manifest is exactly 404"),
        row("GET", "/v2/library/e/manifests/-bad", 404, "MANIFEST_UNKNOWN")
            .why("tag grammar [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}"),
        row("GET", format!("/v2/library/e/manifests/{}", "t".repeat(129)), 404, "MANIFEST_UNKNOWN")
            .why("spec: a tag MUST be at most 128 characters"),
        row("GET", "/v2/library/e/manifests/a+b", 404, "MANIFEST_UNKNOWN").why("tag grammar"),
        row("GET", "/v2/library/e/manifests/", 404, "MANIFEST_UNKNOWN")
            .why("an empty reference is no tag either"),
        row("GET", "/v2/library/e/manifests/sha256:totallywrong", 400, "DIGEST_INVALID")
            .why("conformance accepts 400 or 404 for a bad digest; distribution answers 400 DIGEST_INVALID"),
        row("GET", format!("/v2/library/e/manifests/{zero}"), 404, "MANIFEST_UNKNOWN")
            .upstream()
            .why("spec: absent manifest MUST be 404"),
        row("GET", "/v2/library/e/manifests/nope", 404, "MANIFEST_UNKNOWN")
            .upstream()
            .why("spec: absent manifest MUST be 404"),
        // Blob digests.
        row("GET", "/v2/library/e/blobs/latest", 400, "DIGEST_INVALID")
            .why("spec (push): an invalid digest SHOULD be 400; distribution documents DIGEST_INVALID"),
        row("GET", "/v2/library/e/blobs/sha256:abc", 400, "DIGEST_INVALID").why("wrong length"),
        row("GET", "/v2/library/e/blobs/md5:abc", 400, "DIGEST_INVALID")
            .why("unsupported algorithm: distribution 400 DIGEST_INVALID"),
        row("GET", format!("/v2/library/e/blobs/{upper}"), 400, "DIGEST_INVALID")
            .why("image-spec: lowercase hex only"),
        row("GET", format!("/v2/library/e/blobs/{zero}"), 404, "BLOB_UNKNOWN")
            .upstream()
            .why("spec: absent blob MUST be 404"),
        row("HEAD", format!("/v2/library/e/blobs/{zero}"), 404, "BLOB_UNKNOWN")
            .upstream()
            .why("spec: absent blob MUST be 404"),
        row("GET", "/v2/library/e/referrers/sha256:zz", 400, "DIGEST_INVALID")
            .why("spec (referrers): an invalid digest MUST be 400"),
        // Endpoints and methods.
        row("GET", "/v2/library/e/nothing", 404, "UNSUPPORTED").why("no such endpoint"),
        row("GET", "/v3/", 404, "UNSUPPORTED").why("no such endpoint"),
        row("PUT", "/v2/library/e/manifests/1", 405, "UNSUPPORTED")
            .allow("GET, HEAD")
            .why("spec: a registry without push/delete MUST answer 400 or 405"),
        row("DELETE", format!("/v2/library/e/blobs/{config_digest}"), 405, "UNSUPPORTED")
            .allow("GET, HEAD")
            .why("spec: delete disabled: 400 or 405"),
        row("POST", "/v2/library/e/blobs/uploads/", 405, "UNSUPPORTED")
            .allow("")
            .why("no method is served on upload URLs: empty Allow (RFC 9110 10.2.1)"),
        row("PATCH", "/v2/library/e/blobs/uploads/abc", 405, "UNSUPPORTED").allow(""),
        row("GET", "/v2/library/e/blobs/uploads/abc", 405, "UNSUPPORTED").allow(""),
        row("GET", "/v2/x/blobs/uploads/manifests/1", 404, "NAME_UNKNOWN")
            .upstream()
            .why("x/blobs/uploads is a valid name: a pull (upstream's 404 relayed), not an upload"),
        // Ranges: RFC 9110 section 14.
        row("GET", format!("/v2/library/e/blobs/{config_digest}"), 416, "RANGE_INVALID")
            .header("range", "bytes=999999-")
            .upstream()
            .why("RFC 9110 15.5.17 with Content-Range: bytes */size; distribution's code"),
        // Query parameters.
        row("GET", "/v2/library/e/tags/list?n=foo", 400, "PAGINATION_NUMBER_INVALID")
            .why("spec: n is an integer; distribution 400 PAGINATION_NUMBER_INVALID"),
        row("GET", "/v2/library/e/tags/list?n=-1", 400, "PAGINATION_NUMBER_INVALID"),
        row("GET", "/v2/_catalog?n=x", 400, "PAGINATION_NUMBER_INVALID")
            .why("distribution 400 PAGINATION_NUMBER_INVALID"),
        // Routing: no upstream for this request.
        row("GET", "/v2/library/e/manifests/1?ns=example.com", 404, "NAME_UNKNOWN")
            .why("spec: a proxy MAY use ns; 404 makes containerd try its next host"),
        row("GET", "/nope/v2/library/e/manifests/1", 404, "NAME_UNKNOWN")
            .why("unknown path prefix"),
        // Size limits.
        row("GET", format!("/v2/{}/tags/list", "a/".repeat(600)), 414, "NAME_INVALID")
            .why("path over 1024 bytes: longer than any valid pull path"),
    ]
}

#[tokio::test]
async fn bad_input_gets_the_spec_status_and_code() {
    let up = FakeUpstream::start(Options::default()).await;
    let img = docker_image(6, &[100]);
    up.add_image("library/e", "1", &img);
    let dir = tempfile::tempdir().unwrap();
    let gw = single(&up, dir.path(), "").await;
    let c = client();
    let mut failures = Vec::new();
    for r in table(&img.config.digest) {
        // Whatever an earlier row started (a blob download) is committed.
        gw.settle().await;
        let (asked, files) = (up.requests().len(), files_under(dir.path()));
        let method = reqwest::Method::from_bytes(r.method.as_bytes()).unwrap();
        let mut req = c.request(method, format!("{}{}", gw.url(0), r.path));
        if let Some((k, v)) = r.header {
            req = req.header(k, v);
        }
        let resp = req.send().await.unwrap();
        let what = format!("{} {} ({})", r.method, r.path, r.why);
        let status = resp.status().as_u16();
        let allow = resp
            .headers()
            .get("allow")
            .map(|v| v.to_str().unwrap().to_owned());
        let json = resp
            .headers()
            .get("content-type")
            .is_some_and(|v| v == "application/json");
        let code = if r.method == "HEAD" {
            // No body to read a code from: for HEAD the status is the whole
            // answer (the row's code documents the GET twin).
            r.code.to_owned()
        } else {
            error_code(resp).await
        };
        if (status, code.as_str()) != (r.status, r.code) {
            failures.push(format!(
                "{what}: got {status} {code}, want {} {}",
                r.status, r.code
            ));
        }
        if !json {
            failures.push(format!("{what}: not an OCI JSON envelope"));
        }
        if r.allow.is_some() && allow.as_deref() != r.allow {
            failures.push(format!("{what}: Allow {allow:?}, want {:?}", r.allow));
        }
        if r.local {
            if up.requests().len() != asked {
                failures.push(format!("{what}: asked upstream"));
            }
            if files_under(dir.path()) != files {
                failures.push(format!("{what}: touched the data directory"));
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));

    // Dot segments sent raw (HTTP clients would normalise them away): in a
    // name they are an invalid name, as a reference no possible tag.
    for (raw, want) in [
        ("/v2/../../etc/manifests/latest", 400),
        (
            "/v2/library/../../../etc/passwd/blobs/sha256:0000000000000000000000000000000000000000000000000000000000000000",
            400,
        ),
        ("/v2/library/e/..%2f..%2fetc/manifests/1", 400),
        ("/v2/library/e/manifests/..%2f..%2fetc", 404),
        ("/v2/library/e/manifests/..", 404),
    ] {
        assert_eq!(raw_status(gw.addrs[0], raw).await, want, "{raw}");
    }
    // Nothing malformed reached upstream.
    assert!(
        up.requests()
            .iter()
            .all(|r| !r.path.contains("Bad_Name") && !r.path.contains(".."))
    );
    // And the one good answer without a repository: the ping.
    let r = c.get(format!("{}/v2/", gw.url(0))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );
    gw.stop().await;
}

/// Sends `GET <path>` verbatim over a raw connection; returns the status.
async fn raw_status(addr: std::net::SocketAddr, path: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: mirror\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}
