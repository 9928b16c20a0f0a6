//! Test support: fake upstream registries, test images, and a running mirror.
#![allow(dead_code)]

pub mod fake_upstream;
pub mod fs;
pub mod gateway;
pub mod image;
pub mod process;
pub mod s3;

pub use fake_upstream::{Auth, FakeUpstream, Options};
pub use fs::SmallFs;
pub use gateway::{
    Gateway, assert_store_verified, client, client_from, files_under, upstream_toml, wait_until,
};
pub use process::{Proc, serve_command, spawn, spawn_command, write_config};

/// The Accept header containerd sends when resolving a tag.
pub const ACCEPT_ALL: &str = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*";

/// A mirror with one listener, in front of one fake upstream named
/// `docker.io` (the default).
pub async fn single(up: &FakeUpstream, dir: &std::path::Path, extra: &str) -> Gateway {
    single_with_clock(up, dir, extra, mirrorgate::clock::system()).await
}

/// [`single`] on the given clock.
pub async fn single_with_clock(
    up: &FakeUpstream,
    dir: &std::path::Path,
    extra: &str,
    clock: mirrorgate::clock::SharedClock,
) -> Gateway {
    let cfg = format!(
        "[[listener]]\naddr = \"127.0.0.1:0\"\n{}",
        upstream_toml("docker.io", &up.url(), &format!("default = true\n{extra}"))
    );
    Gateway::start_with_clock(&cfg, dir, clock).await
}

/// Parses an OCI error envelope and returns its first code.
pub async fn error_code(resp: reqwest::Response) -> String {
    let v: serde_json::Value = resp.json().await.expect("error body is JSON");
    v["errors"][0]["code"].as_str().expect("code").to_owned()
}

/// A warmer (the library of `mirrorgate warm`, `export`) of the mirror at
/// `url`, for `platforms` (empty: all).
pub fn warmer(url: &str, platforms: &[&str]) -> mirrorgate::warm::Warmer {
    mirrorgate::warm::Warmer::new(mirrorgate::warm::Options {
        mirror: url.parse().unwrap(),
        ca_pem: None,
        basic: None,
        platforms: platforms.iter().map(|p| p.parse().unwrap()).collect(),
        concurrency: 4,
    })
    .unwrap()
}
