//! Hot-path micro-benchmarks, each next to its raw limit:
//! - writing a verified blob (hash + write + fsync + rename) vs. plain
//!   `std::fs::write` of the same bytes and vs. hashing alone;
//! - request path parsing and upstream selection.
//!
//! Run with `cargo bench --bench store`. CI only compiles it.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mirrorgate::config::Config;
use mirrorgate::oci::{Digest, RepoName};
use mirrorgate::registry::path;
use mirrorgate::registry::route::Router;
use mirrorgate::store::{Scope, Store};

fn blob_write(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = rt
        .block_on(Store::open_local(dir.path(), None))
        .expect("store");
    let mut g = c.benchmark_group("blob_write");
    g.measurement_time(Duration::from_secs(5)).sample_size(10);
    for mib in [1usize, 16] {
        let data: Vec<u8> = (0..mib * 1024 * 1024)
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        let digest = Digest::sha256_of(&data);
        g.throughput(Throughput::Bytes(data.len() as u64));
        g.bench_function(format!("verified_store_{mib}MiB"), |b| {
            b.iter(|| {
                rt.block_on(store.blobs().delete(&digest)).expect("delete");
                let mut w = rt
                    .block_on(store.writer(&digest, Scope::Durable))
                    .expect("writer");
                for chunk in data.chunks(1024 * 1024) {
                    w.write(chunk).expect("write");
                }
                rt.block_on(w.finish(Some(data.len() as u64)))
                    .expect("finish");
            });
        });
        g.bench_function(format!("raw_fs_write_fsync_{mib}MiB"), |b| {
            let p = dir.path().join("raw");
            b.iter(|| {
                let f = std::fs::File::create(&p).expect("create");
                std::io::Write::write_all(&mut &f, &data).expect("write");
                f.sync_all().expect("fsync");
            });
        });
        g.bench_function(format!("sha256_only_{mib}MiB"), |b| {
            b.iter(|| black_box(Digest::sha256_of(&data)));
        });
    }
    g.finish();
}

fn request_path(c: &mut Criterion) {
    let config = Config::embedded_default().expect("default config");
    let router = Router::new(&config);
    let paths = [
        "/v2/library/alpine/manifests/3.19",
        "/v2/ghcr.io/org/team/app/blobs/sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "/quay.io/v2/org/app/manifests/sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    ];
    c.bench_function("parse_and_route_3_paths", |b| {
        b.iter(|| {
            for p in paths {
                let parsed = path::parse(black_box(p)).expect("valid path");
                let name: Option<RepoName> = match parsed.endpoint {
                    path::Endpoint::Manifest(n, _) | path::Endpoint::Blob(n, _) => Some(n),
                    _ => None,
                };
                black_box(
                    router
                        .select(None, parsed.prefix.as_deref(), name, None, None)
                        .expect("route"),
                );
            }
        });
    });
}

criterion_group!(benches, blob_write, request_path);
criterion_main!(benches);
