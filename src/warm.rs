//! `mirrorgate warm`: fills the cache before anyone asks, through the
//! mirror's own pull-through path (so every byte is verified, coalesced
//! with live traffic and counted in the metrics).
//!
//! ```text
//! warm
//! ├── input    references, and the list / kubectl JSON / skopeo sync YAML they come from
//! ├── schedule `[[warm]]`: the server warms (and pins) lists on a schedule, in-process
//! └── (here)   Warmer: manifests (every platform of an index, or those asked for), then
//!              each blob: HEAD first (`Cache-Status: mirrorgate; hit` means cached: nothing
//!              is fetched), else one GET whose body is counted and dropped
//! ```
//!
//! The warmer is an HTTP client of a mirror: a running one (`--mirror`), or
//! one started in-process on a loopback port over the data directory (the
//! CLI's `--config` mode). A second run fetches nothing that is cached: a
//! tag costs the mirror at most one upstream HEAD per `tag_ttl`, cached
//! blobs cost nothing upstream.

pub mod input;
pub mod schedule;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{StreamExt, stream};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::oci::Digest;
use crate::oci::manifest::{Descriptor, Platform, Refs};
pub use input::{ImageRef, InputError, Listing, SyncSpec};

/// Manifest media types the warmer accepts (every platform's manifests).
const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// Largest manifest read (the mirror's own limit is lower).
const MAX_MANIFEST: usize = 16 * 1024 * 1024;

/// How the warmer reaches the mirror and what it asks for.
#[derive(Debug, Clone)]
pub struct Options {
    /// The mirror's base URL (`http://127.0.0.1:5000`, `https://mirror:5443`).
    pub mirror: url::Url,
    /// Extra CA certificates (PEM) to trust for an HTTPS mirror.
    pub ca_pem: Option<Vec<u8>>,
    /// Basic credentials for a mirror with `[auth]`.
    pub basic: Option<(String, String)>,
    /// Platforms to warm of an index; empty: every entry.
    pub platforms: Vec<Platform>,
    /// Blob downloads at once (and images at once).
    pub concurrency: usize,
}

/// Why the warmer could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The CA file held no certificate.
    #[error("no certificate in the CA file")]
    NoCa,
    /// A CA certificate was refused.
    #[error("invalid CA certificate")]
    Ca(#[source] rustls::Error),
    /// The TLS client could not be set up.
    #[error("cannot set up TLS")]
    Tls(#[source] rustls::Error),
}

/// What one image's warming did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ImageReport {
    /// The reference as asked.
    pub image: String,
    /// The digest it resolved to (the index's, for a multi-platform image).
    pub digest: Option<String>,
    /// The platforms warmed (empty for a single-platform manifest without
    /// an index).
    pub platforms: Vec<String>,
    /// Manifests read (the index and each platform's).
    pub manifests: usize,
    /// Distinct blobs of the image.
    pub blobs: usize,
    /// Blobs the mirror did not have and fetched now.
    pub blobs_fetched: usize,
    /// Their bytes.
    pub bytes_fetched: u64,
    /// Bytes of the blobs that were already cached.
    pub bytes_cached: u64,
    /// Non-distributable layers (`urls`), not fetched.
    pub foreign_layers: usize,
    /// What failed; empty when the image is warm.
    pub errors: Vec<String>,
    /// Wall time.
    pub seconds: f64,
}

impl ImageReport {
    /// Whether everything of the image is now cached.
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
    }
}

/// A whole run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Per image, in input order.
    pub images: Vec<ImageReport>,
    /// Images now fully cached.
    pub ok: usize,
    /// Images with errors.
    pub failed: usize,
    /// Bytes fetched upstream by this run.
    pub bytes_fetched: u64,
    /// Bytes that were cached already.
    pub bytes_cached: u64,
    /// Wall time.
    pub seconds: f64,
}

/// What the warmer tells a display as it goes.
pub trait Progress: Send + Sync {
    /// An image is being resolved.
    fn started(&self, image: &ImageRef);
    /// Its size is known: `total` bytes in `blobs` blobs.
    fn sized(&self, image: &ImageRef, total: u64, blobs: usize);
    /// `n` more bytes of it are cached (fetched or found).
    fn advanced(&self, image: &ImageRef, n: u64);
    /// It is done.
    fn finished(&self, image: &ImageRef, report: &ImageReport);
}

/// No display.
#[derive(Debug, Default)]
pub struct Quiet;

impl Progress for Quiet {
    fn started(&self, _: &ImageRef) {}
    fn sized(&self, _: &ImageRef, _: u64, _: usize) {}
    fn advanced(&self, _: &ImageRef, _: u64) {}
    fn finished(&self, _: &ImageRef, _: &ImageReport) {}
}

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

/// A response body from either transport.
type BoxError = Box<dyn std::error::Error + Send + Sync>;
type RespBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// How the warmer reaches its mirror.
#[derive(Clone)]
enum Transport {
    /// Over HTTP(S).
    Http(Box<Client<Https, Empty<Bytes>>>),
    /// The registry API of this process, called directly (the server's
    /// scheduled warming).
    Local(Arc<crate::registry::Registry>),
}

/// Warms images through one mirror. Cheap to clone.
#[derive(Clone)]
pub struct Warmer {
    client: Transport,
    opts: Arc<Options>,
    auth: Option<HeaderValue>,
    downloads: Arc<Semaphore>,
}

impl std::fmt::Debug for Warmer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Warmer")
            .field("mirror", &self.opts.mirror.as_str())
            .finish_non_exhaustive()
    }
}

/// A manifest as the mirror answered it.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// Its bytes, verified against `digest`.
    pub bytes: Bytes,
    /// Its digest.
    pub digest: Digest,
    /// Its media type (`Content-Type`).
    pub media_type: String,
}

impl Warmer {
    /// A warmer for `opts.mirror` (no network I/O yet).
    pub fn new(opts: Options) -> Result<Self, Error> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(c);
        }
        if let Some(pem) = &opts.ca_pem {
            let certs = crate::pem::parse_certs(pem);
            if certs.is_empty() {
                return Err(Error::NoCa);
            }
            for c in certs {
                roots.add(c).map_err(Error::Ca)?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(Error::Tls)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(https);
        let auth = opts.basic.as_ref().and_then(|(u, p)| {
            use base64::Engine as _;
            let token = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
            HeaderValue::from_str(&format!("Basic {token}")).ok()
        });
        let downloads = Arc::new(Semaphore::new(opts.concurrency.max(1)));
        Ok(Self {
            client: Transport::Http(Box::new(client)),
            opts: Arc::new(opts),
            auth,
            downloads,
        })
    }

    /// A warmer of this process's own registry API (no socket, no
    /// credentials: the server's `[[warm]]` schedule). `opts.mirror` only
    /// names it in messages.
    pub fn in_process(registry: Arc<crate::registry::Registry>, opts: Options) -> Self {
        let downloads = Arc::new(Semaphore::new(opts.concurrency.max(1)));
        Self {
            client: Transport::Local(registry),
            opts: Arc::new(opts),
            auth: None,
            downloads,
        }
    }

    /// Warms every image, `concurrency` at a time; one image's failure
    /// never stops the others.
    pub async fn warm_all(&self, images: &[ImageRef], progress: &dyn Progress) -> Report {
        let start = Instant::now();
        // By index: a closure over borrowed items would be generic over
        // their lifetime, which defeats the compiler's `Send` proof for
        // spawned callers (the `[[warm]]` schedule).
        let mut reports: Vec<(usize, ImageReport)> = stream::iter(0..images.len())
            .map(|i| async move { (i, self.warm(&images[i], progress).await) })
            .buffer_unordered(self.opts.concurrency.max(1))
            .collect()
            .await;
        reports.sort_by_key(|(i, _)| *i);
        let images: Vec<ImageReport> = reports.into_iter().map(|(_, r)| r).collect();
        Report {
            ok: images.iter().filter(|r| r.ok()).count(),
            failed: images.iter().filter(|r| !r.ok()).count(),
            bytes_fetched: images.iter().map(|r| r.bytes_fetched).sum(),
            bytes_cached: images.iter().map(|r| r.bytes_cached).sum(),
            seconds: start.elapsed().as_secs_f64(),
            images,
        }
    }

    /// Warms one image: its manifests, then every blob they name.
    pub async fn warm(&self, image: &ImageRef, progress: &dyn Progress) -> ImageReport {
        let start = Instant::now();
        progress.started(image);
        let mut rep = ImageReport {
            image: image.to_string(),
            ..ImageReport::default()
        };
        let blobs = match self.resolve(image, &mut rep).await {
            Ok(b) => b,
            Err(e) => {
                rep.errors.push(e);
                Vec::new()
            }
        };
        rep.blobs = blobs.len();
        progress.sized(image, blobs.iter().map(|d| d.size).sum(), blobs.len());
        let blobs = &blobs;
        let results: Vec<Result<(bool, u64), String>> = stream::iter(0..blobs.len())
            .map(|i| async move {
                let r = self.blob(image, &blobs[i]).await;
                if let Ok((_, n)) = &r {
                    progress.advanced(image, *n);
                }
                r
            })
            .buffer_unordered(self.opts.concurrency.max(1))
            .collect()
            .await;
        for r in results {
            match r {
                Ok((true, n)) => {
                    rep.blobs_fetched += 1;
                    rep.bytes_fetched += n;
                }
                Ok((false, n)) => rep.bytes_cached += n,
                Err(e) => rep.errors.push(e),
            }
        }
        rep.seconds = start.elapsed().as_secs_f64();
        progress.finished(image, &rep);
        rep
    }

    /// The image's manifests, read through the mirror; returns its blobs
    /// (distinct, foreign layers left out).
    async fn resolve(
        &self,
        image: &ImageRef,
        rep: &mut ImageReport,
    ) -> Result<Vec<Descriptor>, String> {
        let top = self
            .manifest(image, &image.reference())
            .await
            .map_err(|e| format!("manifest {}: {e}", image.reference()))?;
        rep.manifests += 1;
        rep.digest = Some(top.digest.to_string());
        let mut blobs: Vec<Descriptor> = Vec::new();
        let mut images = Vec::new();
        match Refs::parse(&top.bytes).map_err(|e| format!("manifest {}: {e}", top.digest))? {
            Refs::Image { config, layers } => images.push((config, layers)),
            Refs::Index(entries) => {
                let wanted: Vec<&Descriptor> = entries
                    .iter()
                    .filter(|e| {
                        self.opts.platforms.is_empty()
                            || e.platform
                                .as_ref()
                                .is_some_and(|p| self.opts.platforms.iter().any(|w| p.matches(w)))
                    })
                    .collect();
                if wanted.is_empty() {
                    let have: Vec<String> = entries
                        .iter()
                        .filter_map(|e| e.platform.as_ref().map(ToString::to_string))
                        .collect();
                    return Err(format!(
                        "no entry of the index is for the platforms asked for (it has {})",
                        have.join(", ")
                    ));
                }
                for e in wanted {
                    let child = self
                        .manifest(image, &e.digest.to_string())
                        .await
                        .map_err(|err| format!("manifest {}: {err}", e.digest))?;
                    rep.manifests += 1;
                    if let Some(p) = &e.platform {
                        rep.platforms.push(p.to_string());
                    }
                    match Refs::parse(&child.bytes)
                        .map_err(|err| format!("manifest {}: {err}", e.digest))?
                    {
                        Refs::Image { config, layers } => images.push((config, layers)),
                        Refs::Index(_) => {
                            return Err(format!("manifest {}: an index inside an index", e.digest));
                        }
                    }
                }
            }
        }
        for (config, layers) in images {
            for d in std::iter::once(config).chain(layers) {
                if !d.urls.is_empty() {
                    rep.foreign_layers += 1;
                    continue;
                }
                if !blobs.iter().any(|b| b.digest == d.digest) {
                    blobs.push(d);
                }
            }
        }
        Ok(blobs)
    }

    fn url(&self, image: &ImageRef, path: &str) -> String {
        // The registry is a host[:port] (checked when parsed): no escaping.
        let base = self.opts.mirror.as_str().trim_end_matches('/');
        format!("{base}/v2/{}/{path}?ns={}", image.repo, image.registry)
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        accept: Option<&str>,
    ) -> Result<http::Response<RespBody>, String> {
        let mut req = Request::builder().method(method).uri(url);
        if let Some(a) = accept {
            req = req.header(header::ACCEPT, a);
        }
        if let Some(a) = &self.auth {
            req = req.header(header::AUTHORIZATION, a.clone());
        }
        req = req.header(
            header::USER_AGENT,
            concat!("mirrorgate-warm/", env!("CARGO_PKG_VERSION")),
        );
        let req = req.body(Empty::new()).map_err(|e| e.to_string())?;
        match &self.client {
            Transport::Http(c) => c
                .request(req)
                .await
                .map(|r| r.map(|b| b.map_err(|e| -> BoxError { Box::new(e) }).boxed_unsync()))
                .map_err(|e| format!("cannot reach the mirror: {}", crate::error_chain(&e))),
            Transport::Local(registry) => {
                let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
                let conn = crate::registry::ConnInfo {
                    peer: loopback,
                    local: loopback,
                    pinned: None,
                    tls: false,
                    sni: None,
                    allow: Arc::default(),
                    internal: false,
                    trusted: true,
                };
                let resp = registry.handle(req, &conn).await;
                Ok(resp.map(|b| b.map_err(|e| -> BoxError { Box::new(e) }).boxed_unsync()))
            }
        }
    }

    /// GETs a manifest (by tag or digest) through the mirror and checks its
    /// digest.
    pub async fn manifest(&self, image: &ImageRef, reference: &str) -> Result<Fetched, String> {
        let url = self.url(image, &format!("manifests/{reference}"));
        let resp = self.send(Method::GET, &url, Some(ACCEPT)).await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = read_limited(resp.into_body(), MAX_MANIFEST).await?;
        if status != StatusCode::OK {
            return Err(oci_error(status, &body));
        }
        let digest = match reference.parse::<Digest>() {
            Ok(d) => d,
            Err(_) => match header_digest(&headers) {
                Some(d) => d,
                None => Digest::sha256_of(&body),
            },
        };
        if !digest.verify(&body) {
            return Err(format!("the mirror's answer does not match {digest}"));
        }
        let media_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or_default().trim().to_owned())
            .unwrap_or_default();
        Ok(Fetched {
            bytes: body,
            digest,
            media_type,
        })
    }

    /// Makes sure the mirror has a blob: `Ok((fetched_now, bytes))`.
    async fn blob(&self, image: &ImageRef, d: &Descriptor) -> Result<(bool, u64), String> {
        let url = self.url(image, &format!("blobs/{}", d.digest));
        let what = |e: String| format!("blob {}: {e}", d.digest);
        let head = self.send(Method::HEAD, &url, None).await.map_err(what)?;
        if head.status() == StatusCode::OK && is_hit(head.headers()) {
            let n = content_length(head.headers()).unwrap_or(d.size);
            return Ok((false, n));
        }
        self.get_blob(image, d, &mut |_| Ok(())).await
    }

    /// GETs a blob through the mirror (one of `concurrency` downloads at
    /// once), handing its bytes to `sink` as they arrive; checks the size
    /// (the sink checks the digest, if it keeps the bytes). Returns
    /// `(fetched upstream now, bytes)`.
    pub async fn get_blob(
        &self,
        image: &ImageRef,
        d: &Descriptor,
        sink: &mut (dyn FnMut(&Bytes) -> Result<(), String> + Send),
    ) -> Result<(bool, u64), String> {
        let url = self.url(image, &format!("blobs/{}", d.digest));
        let what = |e: String| format!("blob {}: {e}", d.digest);
        let _slot = self
            .downloads
            .acquire()
            .await
            .map_err(|e| what(e.to_string()))?;
        let resp = self.send(Method::GET, &url, None).await.map_err(what)?;
        let status = resp.status();
        let hit = is_hit(resp.headers());
        let want = content_length(resp.headers());
        if status != StatusCode::OK {
            let body = read_limited(resp.into_body(), 64 * 1024)
                .await
                .unwrap_or_default();
            return Err(what(oci_error(status, &body)));
        }
        let mut body = resp.into_body();
        let mut n = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                what(format!(
                    "the download broke off after {n} bytes: {}",
                    crate::error_chain(&*e)
                ))
            })?;
            if let Some(data) = frame.data_ref() {
                n += data.len() as u64;
                sink(data).map_err(what)?;
            }
        }
        let expect = want.unwrap_or(d.size);
        if n != expect || (d.size != 0 && n != d.size) {
            return Err(what(format!("got {n} bytes, want {}", d.size.max(expect))));
        }
        Ok((!hit, n))
    }

    /// Every tag of a repository (following `Link` pages), for a `skopeo
    /// sync` listing; `regex` keeps those that match.
    pub async fn list_tags(&self, l: &Listing) -> Result<Vec<ImageRef>, String> {
        let re = match &l.tag_regex {
            Some(r) => Some(regex_lite::Regex::new(r).map_err(|e| e.to_string())?),
            None => None,
        };
        let probe = ImageRef {
            registry: l.registry.clone(),
            repo: l.repo.clone(),
            tag: None,
            digest: None,
        };
        let mut url = self.url(&probe, "tags/list");
        let mut out = Vec::new();
        for _ in 0..1000 {
            let resp = self.send(Method::GET, &url, None).await?;
            let status = resp.status();
            let next = resp
                .headers()
                .get(header::LINK)
                .and_then(|v| v.to_str().ok())
                .and_then(next_link);
            let body = read_limited(resp.into_body(), MAX_MANIFEST).await?;
            if status != StatusCode::OK {
                return Err(format!(
                    "tags of {}/{}: {}",
                    l.registry,
                    l.repo,
                    oci_error(status, &body)
                ));
            }
            #[derive(serde::Deserialize)]
            struct Tags {
                #[serde(default)]
                tags: Option<Vec<String>>,
            }
            let tags: Tags = serde_json::from_slice(&body)
                .map_err(|e| format!("tags of {}/{}: {e}", l.registry, l.repo))?;
            for t in tags.tags.unwrap_or_default() {
                if re.as_ref().is_some_and(|re| !re.is_match(&t)) {
                    continue;
                }
                if let Ok(tag) = t.parse() {
                    out.push(ImageRef {
                        tag: Some(tag),
                        ..probe.clone()
                    });
                }
            }
            match next {
                Some(n) => {
                    let base = self.opts.mirror.as_str().trim_end_matches('/');
                    url = if n.starts_with('/') {
                        format!("{base}{n}")
                    } else {
                        n
                    };
                    if !url.contains("ns=") {
                        let sep = if url.contains('?') { '&' } else { '?' };
                        url.push(sep);
                        url.push_str("ns=");
                        url.push_str(&l.registry);
                    }
                }
                None => break,
            }
        }
        Ok(out)
    }
}

/// Whether the mirror answered from its cache.
fn is_hit(h: &HeaderMap) -> bool {
    h.get(crate::registry::CACHE_STATUS)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',').any(|entry| {
                let mut parts = entry.split(';').map(str::trim);
                parts.next() == Some("mirrorgate") && parts.any(|p| p == "hit")
            })
        })
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

fn header_digest(h: &HeaderMap) -> Option<Digest> {
    h.get("docker-content-digest")?.to_str().ok()?.parse().ok()
}

/// `<...>; rel="next"` of a `Link` header.
fn next_link(v: &str) -> Option<String> {
    v.split(',').find_map(|l| {
        let (url, params) = l.split_once(';')?;
        params.contains("rel=\"next\"").then(|| {
            url.trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string()
        })
    })
}

/// An error answer as one line: the status and the OCI error's code and
/// message when the body is the `errors` envelope.
fn oci_error(status: StatusCode, body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Envelope {
        errors: Vec<E>,
    }
    #[derive(serde::Deserialize)]
    struct E {
        code: String,
        #[serde(default)]
        message: String,
    }
    match serde_json::from_slice::<Envelope>(body) {
        Ok(e) if !e.errors.is_empty() => format!(
            "{status}: {}",
            e.errors
                .iter()
                .map(|x| format!("{} {}", x.code, x.message))
                .collect::<Vec<_>>()
                .join("; ")
        ),
        _ => format!("{status}"),
    }
}

async fn read_limited(mut body: RespBody, max: usize) -> Result<Bytes, String> {
    let mut out = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("cannot read the answer: {e}"))?;
        if let Some(d) = frame.data_ref() {
            if out.len() + d.len() > max {
                return Err(format!("cannot read the answer: longer than {max} bytes"));
            }
            out.extend_from_slice(d);
        }
    }
    Ok(out.freeze())
}

/// Reads the references of one input file, by its kind: a `kubectl get
/// pods -o json` output (JSON), a `skopeo sync` file (YAML), else a list.
/// The skopeo listings are returned for [`Warmer::list_tags`].
pub fn read_input(
    path: &Path,
    text: &str,
) -> Result<(Vec<ImageRef>, Vec<Listing>), Vec<InputError>> {
    let name = path.display().to_string();
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let trimmed = text.trim_start();
    if ext == "json" || trimmed.starts_with('{') {
        return input::parse_kubectl(&name, text).map(|r| (r, Vec::new()));
    }
    if matches!(ext, "yaml" | "yml") {
        return input::parse_skopeo_sync(&name, text).map(|s| (s.refs, s.listings));
    }
    input::parse_list(&name, text).map(|r| (r, Vec::new()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_status_and_links() {
        let mut h = HeaderMap::new();
        h.insert(
            crate::registry::CACHE_STATUS,
            HeaderValue::from_static("mirrorgate; hit"),
        );
        assert!(is_hit(&h));
        h.insert(
            crate::registry::CACHE_STATUS,
            HeaderValue::from_static("mirrorgate; fwd=miss"),
        );
        assert!(!is_hit(&h));
        h.insert(
            crate::registry::CACHE_STATUS,
            HeaderValue::from_static("other; hit"),
        );
        assert!(!is_hit(&h));
        assert_eq!(
            next_link(r#"</v2/a/tags/list?n=2&last=b>; rel="next""#).as_deref(),
            Some("/v2/a/tags/list?n=2&last=b")
        );
        assert_eq!(next_link(r#"</x>; rel="prev""#), None);
        let body = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#;
        assert_eq!(
            oci_error(StatusCode::NOT_FOUND, body),
            "404 Not Found: MANIFEST_UNKNOWN manifest unknown"
        );
        assert_eq!(
            oci_error(StatusCode::BAD_GATEWAY, b"<html>"),
            "502 Bad Gateway"
        );
    }
}
