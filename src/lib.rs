//! mirrorgate: a pull-through mirror for container registries.
//!
//! One process mirrors many upstream registries (docker.io, ghcr.io,
//! quay.io, ...). Clients name the upstream with containerd's `?ns=` query, a
//! path prefix, or a dedicated port; otherwise the default upstream serves.
//! Manifests and blobs are verified against their digests and stored in a
//! content-addressed store on disk; hot metadata is cached in memory.
//! Concurrent misses for one object cause one upstream request.
//!
//! # Layout
//!
//! The layers point one way: each module only uses modules on its own line
//! or above it in this list (`tests/layers.rs` reads this list and every
//! `crate::` path in `src/`, and fails on an arrow that points down).
//!
//! - [`oci`], [`clock`], [`breaker`], [`pem`], [`access`], [`pace`]: leaves:
//!   pure types (digests, names, media types), the time policies are decided
//!   by, the circuit breaker, PEM parsing, access rules, the pacing of
//!   response bodies (how far reads run ahead of sockets).
//! - [`config`]: the validated configuration.
//! - [`clientconfig`]: client configuration files for the mirror, and the
//!   `/setup/<client>` scripts that install them.
//! - [`tag`]: the tag map's types (kept by the store, cached, decided on).
//! - [`store`]: blobs and metadata records behind one interface, on local
//!   disk or in an S3 bucket with a local read tier (no HTTP).
//! - [`cache`]: the in-memory metadata cache (moka).
//! - [`upstream`]: one long-lived client per upstream registry: tokens,
//!   redirects, timeouts (knows nothing of the store or cache).
//! - [`cluster`]: replicas sharing one bucket: the lease of each fill (in
//!   the store's bucket), signed requests, the client of other replicas'
//!   internal endpoints.
//! - [`mirror`], [`hosted`]: the pull-through policy, the only module that
//!   combines cache, store and upstream, which owns blob download
//!   coalescing; and the hosted namespaces' push policy (uploads, manifest
//!   checks, garbage collection) over the same store.
//! - [`registry`]: the OCI distribution API over `mirror` (pull) and
//!   `hosted` (push and pull): path parsing,
//!   routing, responses, and the single error→response mapping; the
//!   operator's endpoints (probes, `/metrics`, the status page); its routes
//!   and access rules are swapped whole by a config reload.
//! - [`tls`]: the CA, leaf certificates and the SNI resolver.
//! - [`server`]: accept loops and HTTP connections.
//! - [`warm`]: `mirrorgate warm`, an HTTP client of a mirror (running, or
//!   started in-process by the CLI) that fills its cache ahead of need, and
//!   the server's `[[warm]]` schedules (through its registry API).
//! - [`app`]: the composition root; applies config reloads.
//! - [`bundle`]: air-gap bundles (OCI image layouts): `export` through a
//!   mirror (like `warm`), `import` into a store.
//! - [`cli`], [`telemetry`]: the binary's front.
//!
//! # One request
//!
//! `GET /v2/library/alpine/blobs/sha256:…?ns=docker.io`: `server` accepts
//! the connection and hands the request to `registry`, which parses the path
//! into `Endpoint::Blob`, lets `route` pick `docker.io` from `ns`, and asks
//! `mirror` for the blob. A stored blob streams from disk. Otherwise `mirror`
//! starts (or joins) the one download of that digest: the upstream client
//! fetches it (bearer token, CDN redirect without `Authorization`), a
//! background task hashes and writes it to a temporary file, and every
//! waiting client streams it as it arrives: the newest chunks from memory,
//! older bytes from the temporary file. The final byte is released once size
//! and digest check out; the commit (fsync, rename) follows, and
//! [`app::App::settle`] waits for it. An error on the way becomes one OCI
//! error response and one log line with its cause chain.

pub mod access;
pub mod app;
pub mod breaker;
pub mod bundle;
pub mod cache;
pub mod cli;
pub mod clientconfig;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod hosted;
pub mod mirror;
pub mod oci;
pub mod pace;
pub mod pem;
pub mod registry;
pub mod server;
pub mod store;
pub mod tag;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod warm;

/// Formats an error with its chain of sources (`a: b: c`), for log lines:
/// each error's `Display` describes only its own level.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
