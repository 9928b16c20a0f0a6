//! Micro-benchmarks of the per-request hot path, through the public API:
//!
//! - `path/*`: request-path parsing (`registry::path::parse`), per shape;
//! - `route/*`: upstream selection (`registry::route::Router::select`) by
//!   `?ns=`, both path-prefix shapes, SNI/Host, a pinned port, the default;
//! - `cache/*`: the metadata cache (`cache::MetadataCache`): hits on a
//!   manifest and a tag entry, a miss, and `try_get_with` on a present key;
//! - `handle/*`: a whole cached request through `registry::Registry::handle`
//!   (routing, policy, the cache hit, headers, access log, body), built by
//!   `app::App::build` over a store seeded on disk; its upstream is a dead
//!   loopback port that a hit never contacts. `+log` variants install a
//!   tracing subscriber that formats the access-log line into `io::sink`,
//!   which is the formatting cost a real `RUST_LOG=info` pays per request.
//!
//! - `activity/*`: what the status page records of each finished manifest
//!   or blob response (`registry::activity::Activity::record`): the
//!   request of a pull under way, and with the recent pulls full.
//!
//! Run with `cargo bench --bench hotpath`; CI only compiles it. The
//! end-to-end counterpart (real sockets, TLS, peers) is `benches/e2e.sh`.

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use mirrorgate::app::App;
use mirrorgate::cache::{Key, ManifestEntry, MetadataCache, TagEntry, Value};
use mirrorgate::config::{Config, UpstreamId};
use mirrorgate::oci::{AcceptClass, Digest, MediaType, RepoName};
use mirrorgate::registry::route::Router;
use mirrorgate::registry::{ConnInfo, path};
use mirrorgate::tag::{TagKey, TagRecord, epoch_ms as tags_epoch_ms};

const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
const ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Three upstreams with aliases and a host name; upstream URLs are a dead
/// loopback port (nothing here may go upstream).
fn config(root: &std::path::Path) -> Config {
    let text = format!(
        r#"
[storage]
root = "{}"

[[listener]]
addr = "127.0.0.1:5999"

[[upstream]]
name = "docker.io"
url = "http://127.0.0.1:9"
aliases = ["index.docker.io", "registry-1.docker.io"]
hosts = ["docker.mirror.internal"]
default = true

[[upstream]]
name = "ghcr.io"
url = "http://127.0.0.1:9"

[[upstream]]
name = "quay.io"
url = "http://127.0.0.1:9"
"#,
        root.display()
    );
    Config::from_toml(&text, root).expect("bench config")
}

/// `UpstreamId` has no public constructor (config validation makes them).
fn upstream_id(config: &Config, name: &str) -> UpstreamId {
    config
        .upstreams
        .iter()
        .find(|u| u.id.as_str() == name)
        .map(|u| u.id.clone())
        .expect("upstream in bench config")
}

fn path_parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("path");
    let cases = [
        ("ping", "/v2/".to_owned()),
        (
            "manifest_tag",
            "/v2/library/alpine/manifests/3.19".to_owned(),
        ),
        (
            "manifest_digest",
            format!("/v2/library/alpine/manifests/{D}"),
        ),
        ("blob", format!("/v2/library/alpine/blobs/{D}")),
        (
            "blob_prefixed_deep",
            format!("/v2/ghcr.io/org/team/sub/app/blobs/{D}"),
        ),
        (
            "prefix_v2",
            "/quay.io/v2/org/app/manifests/v1.2.3".to_owned(),
        ),
        ("tags_list", "/v2/library/alpine/tags/list".to_owned()),
        ("invalid_name", "/v2/Library/Alpine/manifests/x".to_owned()),
    ];
    for (name, p) in &cases {
        g.bench_function(*name, |b| b.iter(|| black_box(path::parse(black_box(p)))));
    }
    g.finish();
}

fn route_select(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path());
    let router = Router::new(&config);
    let pinned = upstream_id(&config, "quay.io");
    let name = |s: &str| s.parse::<RepoName>().expect("name");
    let alpine = name("library/alpine");
    let prefixed = name("ghcr.io/org/app");
    let mut g = c.benchmark_group("route");
    g.bench_function("ns", |b| {
        b.iter(|| router.select(Some("docker.io"), None, Some(alpine.clone()), None, None))
    });
    g.bench_function("ns_alias_mixed_case", |b| {
        b.iter(|| {
            router.select(
                Some("Registry-1.Docker.IO"),
                None,
                Some(alpine.clone()),
                None,
                None,
            )
        })
    });
    g.bench_function("name_prefix", |b| {
        b.iter(|| router.select(None, None, Some(prefixed.clone()), None, None))
    });
    g.bench_function("path_prefix_v2", |b| {
        b.iter(|| router.select(None, Some("quay.io"), Some(alpine.clone()), None, None))
    });
    g.bench_function("host", |b| {
        b.iter(|| {
            router.select(
                None,
                None,
                Some(alpine.clone()),
                Some("docker.mirror.internal"),
                None,
            )
        })
    });
    g.bench_function("pinned", |b| {
        b.iter(|| router.select(None, None, Some(alpine.clone()), None, Some(&pinned)))
    });
    g.bench_function("default", |b| {
        b.iter(|| router.select(None, None, Some(alpine.clone()), None, None))
    });
    g.bench_function("clone_name_only", |b| b.iter(|| black_box(alpine.clone())));
    g.finish();
}

fn metadata_cache(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let docker = upstream_id(&config(dir.path()), "docker.io");
    let cache = MetadataCache::new(64 << 20, mirrorgate::clock::system());
    let manifest = Value::Manifest(Arc::new(ManifestEntry {
        bytes: Bytes::from(vec![b'm'; 1500]),
        media_type: MediaType::new(DOCKER_MANIFEST),
    }));
    let mkey = Key::Manifest(Digest::sha256_of(b"manifest"));
    let tkey = Key::Tag(TagKey {
        upstream: docker,
        repo: "library/alpine".parse().expect("name"),
        tag: "3.19".parse().expect("tag"),
        class: AcceptClass::from_accept([ACCEPT]),
    });
    let tag = Value::Tag(Arc::new(TagEntry {
        record: TagRecord {
            digest: Digest::sha256_of(b"manifest"),
            media_type: DOCKER_MANIFEST.to_owned(),
            size: 1500,
            checked_at_ms: tags_epoch_ms(SystemTime::now()),
        },
        ttl: Duration::from_secs(3600),
        stale: false,
    }));
    // Some unrelated entries so lookups do not hit a near-empty table.
    rt.block_on(async {
        for i in 0..1000u32 {
            cache
                .insert(
                    Key::Manifest(Digest::sha256_of(&i.to_le_bytes())),
                    manifest.clone(),
                )
                .await;
        }
        cache.insert(mkey.clone(), manifest.clone()).await;
        cache.insert(tkey.clone(), tag.clone()).await;
    });
    let absent = Key::Manifest(Digest::sha256_of(b"absent"));
    let mut g = c.benchmark_group("cache");
    g.bench_function("get_manifest_hit", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(cache.get(&mkey).await) })
    });
    g.bench_function("get_tag_hit", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(cache.get(&tkey).await) })
    });
    g.bench_function("get_miss", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(cache.get(&absent).await) })
    });
    g.bench_function("try_get_with_hit", |b| {
        b.to_async(&rt).iter(|| async {
            black_box(
                cache
                    .try_get_with::<std::io::Error, _>(mkey.clone(), async {
                        unreachable!("present key")
                    })
                    .await,
            )
        })
    });
    g.bench_function("key_clone_tag", |b| b.iter(|| black_box(tkey.clone())));
    g.finish();
}

/// An app over a store seeded with one manifest and its tag.
struct Seeded {
    app: App,
    digest: Digest,
    _dir: tempfile::TempDir,
}

fn seeded(rt: &tokio::runtime::Runtime) -> Seeded {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path());
    let docker = upstream_id(&config, "docker.io");
    rt.block_on(async {
        let app = App::build(config).await.expect("app");
        let body = Bytes::from(format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","size":1469,"digest":"{D}"}},"layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":3419706,"digest":"{D}"}}]}}"#
        ));
        let digest = Digest::sha256_of(&body);
        let store = app.mirror().store();
        store
            .put_manifest(&digest, body.clone(), &MediaType::new(DOCKER_MANIFEST))
            .await
            .expect("put manifest");
        let key = TagKey {
            upstream: docker,
            repo: "library/alpine".parse().expect("name"),
            tag: "3.19".parse().expect("tag"),
            class: AcceptClass::from_accept([ACCEPT]),
        };
        let rec = TagRecord {
            digest: digest.clone(),
            media_type: DOCKER_MANIFEST.to_owned(),
            size: body.len() as u64,
            checked_at_ms: tags_epoch_ms(SystemTime::now()),
        };
        store.put_tag(&key, &rec).await.expect("put tag");
        Seeded {
            app,
            digest,
            _dir: dir,
        }
    })
}

async fn request(app: &App, conn: &ConnInfo, method: &Method, uri: &str) -> usize {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header(http::header::ACCEPT, ACCEPT)
        .header(http::header::HOST, "127.0.0.1:5999")
        .body(Empty::<Bytes>::new())
        .expect("request");
    let resp = app.registry().handle(req, conn).await;
    assert_eq!(resp.status(), StatusCode::OK, "{uri}");
    let body = resp.into_body().collect().await.expect("body");
    body.to_bytes().len()
}

fn handle(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let s = seeded(&rt);
    let conn = ConnInfo {
        peer: SocketAddr::from(([127, 0, 0, 1], 40000)),
        local: SocketAddr::from(([127, 0, 0, 1], 5999)),
        pinned: None,
        tls: false,
        sni: None,
        allow: Default::default(),
        internal: false,
        trusted: false,
    };
    let by_tag = "/v2/library/alpine/manifests/3.19".to_owned();
    let by_digest = format!("/v2/library/alpine/manifests/{}", s.digest);
    let by_tag_ns = "/v2/alpine/manifests/3.19?ns=docker.io".to_owned();
    // Warm the cache (the first request reads the tag and manifest from disk).
    rt.block_on(async {
        for uri in [&by_tag, &by_digest, &by_tag_ns] {
            request(&s.app, &conn, &Method::GET, uri).await;
        }
    });
    let cases = [
        ("head_tag", Method::HEAD, &by_tag),
        ("get_tag", Method::GET, &by_tag),
        ("get_digest", Method::GET, &by_digest),
        ("get_tag_ns_implicit_library", Method::GET, &by_tag_ns),
    ];
    let mut g = c.benchmark_group("handle");
    for (name, method, uri) in &cases {
        g.bench_function(*name, |b| {
            b.to_async(&rt)
                .iter(|| async { black_box(request(&s.app, &conn, method, uri).await) })
        });
    }
    // The same with the access-log line formatted (into a sink), as with
    // RUST_LOG=info: what logging costs per request before any write(2).
    let subscriber = tracing_subscriber::fmt()
        .with_writer(std::io::sink)
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    for (name, method, uri) in &cases[..3] {
        g.bench_function(format!("{name}+log"), |b| {
            b.to_async(&rt)
                .iter(|| async { black_box(request(&s.app, &conn, method, uri).await) })
        });
    }
    g.finish();
}

fn activity(c: &mut Criterion) {
    use mirrorgate::mirror::CacheStatus;
    use mirrorgate::registry::activity::{Activity, Event, PULLS};
    let reference: mirrorgate::oci::Reference = "3.19".parse().expect("tag");
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let event = |client: u8, kind: &'static str| Event {
        now,
        upstream: "docker.io",
        kind,
        cache: Some(CacheStatus::Hit),
        status: 200,
        bytes: 1000,
        repo: Some("library/alpine"),
        reference: Some(&reference),
        client: std::net::IpAddr::from([10, 0, 0, client]),
        user: None,
    };
    let mut g = c.benchmark_group("activity");
    let a = Activity::default();
    a.record(&event(1, "manifest"));
    g.bench_function("blob_of_a_pull", |b| {
        b.iter(|| a.record(black_box(&event(1, "blob"))))
    });
    // Every other pull is a client's before this one's: the longest search.
    let full = Activity::default();
    for i in 0..PULLS as u8 {
        full.record(&event(i + 2, "manifest"));
    }
    full.record(&event(1, "manifest"));
    for i in 0..PULLS as u8 - 1 {
        full.record(&event(i + 2, "manifest"));
    }
    g.bench_function("blob_of_the_oldest_pull", |b| {
        b.iter(|| full.record(black_box(&event(1, "blob"))))
    });
    g.finish();
}

criterion_group!(
    benches,
    path_parse,
    route_select,
    metadata_cache,
    handle,
    activity
);
criterion_main!(benches);
