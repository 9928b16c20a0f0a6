//! One long-lived HTTP client per upstream registry.
//!
//! It owns a connection pool (HTTP/1.1 and HTTP/2), the trust roots (system
//! roots plus the upstream's `ca_file`), the upstream's credentials, a
//! per-scope bearer token cache and what the upstream's challenges taught it
//! (Basic or a token realm), so that after the first 401 every request goes
//! out already authorized.
//!
//! Redirects (blob GETs answered with 307/302 to a CDN) are followed by the
//! transport (`upstream/transport.rs`), which drops `Authorization` whenever scheme, host
//! or port change; a test proves it against a CDN stand-in that rejects such
//! requests. Redirects are never cached: signed CDN URLs expire.
//!
//! This module knows nothing about the store or the cache.

pub mod auth;
pub mod stats;

mod error;
mod transport;

use std::sync::{Arc, RwLock};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use http::header::{
    ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, LINK, RETRY_AFTER, WWW_AUTHENTICATE,
};
use http::{HeaderMap, HeaderValue, Method, StatusCode};

pub use error::{Error, TimeoutPhase};

use self::transport::Load;

use self::error::Timeouts;

use self::auth::{Scheme, TokenCache};
use crate::clock::SharedClock;
use crate::config::{Credentials, UpstreamConfig, UpstreamId};
use crate::oci::{AcceptClass, Digest, MediaType, Reference, RepoName};

/// Largest manifest, tag list or referrers response accepted.
pub const MAX_METADATA_BYTES: usize = 4 * 1024 * 1024;
/// Largest error body read to extract an OCI error code.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Response headers of a manifest HEAD.
#[derive(Debug, Clone)]
pub struct ManifestHead {
    /// `Docker-Content-Digest`, when upstream sent a valid one.
    pub digest: Option<Digest>,
    /// `Content-Type`.
    pub media_type: MediaType,
    /// `Content-Length`.
    pub size: Option<u64>,
}

/// A manifest fetched with GET.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The bytes, exactly as received.
    pub bytes: Bytes,
    /// `Content-Type`.
    pub media_type: MediaType,
    /// `Docker-Content-Digest`, when upstream sent a valid one.
    pub digest_header: Option<Digest>,
}

/// Response headers of a blob HEAD.
#[derive(Debug, Clone, Copy)]
pub struct BlobHead {
    /// `Content-Length`.
    pub size: Option<u64>,
}

/// A blob GET whose headers have arrived; the body streams.
pub struct BlobStream {
    /// `Content-Length` of the final (post-redirect) response.
    pub size: Option<u64>,
    /// The body.
    pub body: BoxStream<'static, Result<Bytes, Error>>,
}

impl std::fmt::Debug for BlobStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStream")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// An upstream response relayed to the client (tags/list, referrers).
#[derive(Debug, Clone)]
pub struct Passthrough {
    /// Status (2xx; errors are returned as [`Error::Status`]).
    pub status: StatusCode,
    /// `Content-Type`.
    pub content_type: Option<String>,
    /// `Link` (pagination), to be rewritten by the caller.
    pub link: Option<String>,
    /// Other headers worth relaying (`OCI-Filters-Applied`).
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

/// The client for one upstream registry.
pub struct UpstreamClient {
    id: UpstreamId,
    base: String,
    /// `host[:port]` of `base`, for error messages.
    host: Arc<str>,
    http: self::transport::Http,
    credentials: Option<Credentials>,
    scheme: RwLock<Option<Scheme>>,
    tokens: TokenCache,
    breaker: crate::breaker::Breaker,
    clock: SharedClock,
    /// Requests, latency, rate-limit headers, tokens (for `/metrics`).
    stats: self::stats::Stats,
}

impl std::fmt::Debug for UpstreamClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamClient")
            .field("id", &self.id)
            .field("base", &self.base)
            .field("authenticated", &self.credentials.is_some())
            .finish_non_exhaustive()
    }
}

fn tls_config(cfg: &UpstreamConfig) -> Result<rustls::ClientConfig, Error> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(pem) = &cfg.ca_pem {
        for cert in crate::pem::parse_certs(pem) {
            roots.add(cert).map_err(|e| Error::Build(Box::new(e)))?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Error::Build(Box::new(e)))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    // ALPN is set by the connector: HTTP/1.1 unless asked (a 200 MiB blob
    // from distribution over h2 took 25% more machine CPU, 0.67 vs 0.53
    // core-s, and 20% more time).
    Ok(tls)
}

/// `host[:port]` of a URL, the port only when the URL names one.
fn url_authority(u: &url::Url) -> String {
    let host = u.host_str().unwrap_or_default();
    match u.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    }
}

fn header_str(h: &HeaderMap, name: impl http::header::AsHeaderName) -> Option<&str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn header_len(h: &HeaderMap) -> Option<u64> {
    header_str(h, CONTENT_LENGTH).and_then(|v| v.trim().parse().ok())
}

fn header_digest(h: &HeaderMap) -> Option<Digest> {
    header_str(h, "docker-content-digest").and_then(|v| v.trim().parse().ok())
}

impl UpstreamClient {
    /// Builds the client (no network I/O). `clock` times the breaker's
    /// backoff.
    pub fn build(cfg: &UpstreamConfig, clock: SharedClock) -> Result<Self, Error> {
        let timeouts = Timeouts {
            connect: cfg.connect_timeout,
            read: cfg.read_timeout,
        };
        let http = self::transport::Http::new(cfg, tls_config(cfg)?, timeouts)?;
        Ok(Self {
            id: cfg.id.clone(),
            base: cfg.url.as_str().trim_end_matches('/').to_owned(),
            host: url_authority(&cfg.url).into(),
            http,
            credentials: cfg.credentials.clone(),
            scheme: RwLock::new(None),
            tokens: auth::token_cache(),
            breaker: crate::breaker::Breaker::new(crate::breaker::Settings {
                threshold: cfg.breaker_failures,
                backoff: cfg.breaker_backoff,
                max_backoff: cfg.breaker_backoff.max(std::time::Duration::from_secs(60)),
            }),
            clock,
            stats: self::stats::Stats::default(),
        })
    }

    /// The upstream's name.
    pub fn id(&self) -> &UpstreamId {
        &self.id
    }

    /// `host[:port]` of the upstream's URL (without credentials or path).
    pub fn host(&self) -> &Arc<str> {
        &self.host
    }

    fn url(&self, repo: &RepoName, tail: &str) -> Result<url::Url, Error> {
        url::Url::parse(&format!("{}/v2/{repo}/{tail}", self.base))
            .map_err(|e| Error::Protocol(format!("cannot build URL: {e}")))
    }

    fn learned(&self) -> Option<Scheme> {
        self.scheme
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn learn(&self, s: Scheme) {
        *self.scheme.write().unwrap_or_else(|p| p.into_inner()) = Some(s);
    }

    /// The `Authorization` value to send for `scope`, from what the upstream
    /// asked for before (nothing for anonymous upstreams).
    async fn authorization(&self, scope: &str) -> Result<Option<HeaderValue>, Error> {
        match self.learned() {
            None => Ok(None),
            Some(Scheme::Basic) => match &self.credentials {
                Some(c) => auth::basic_header(c).map(Some),
                None => Ok(None),
            },
            Some(Scheme::Bearer { realm, service }) => {
                let token = self
                    .tokens
                    .try_get_with(
                        scope.to_owned(),
                        self.fetch_token(&realm, service.as_deref(), scope),
                    )
                    .await
                    .map_err(|e| match &*e {
                        Error::Unauthorized { with_credentials } => Error::Unauthorized {
                            with_credentials: *with_credentials,
                        },
                        _ => Error::Token(e),
                    })?;
                auth::bearer_header(&token).map(Some)
            }
        }
    }

    async fn fetch_token(
        &self,
        realm: &url::Url,
        service: Option<&str>,
        scope: &str,
    ) -> Result<Arc<auth::Token>, Error> {
        let mut url = realm.clone();
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            q.append_pair("scope", scope);
        }
        let mut headers = HeaderMap::new();
        if let Some(c) = &self.credentials {
            headers.insert(AUTHORIZATION, auth::basic_header(c)?);
        }
        let resp = self
            .http
            .send(Method::GET, url, headers, Load::Small)
            .await?;
        match resp.status() {
            s if s.is_success() => {
                let body = read_limited(resp, MAX_METADATA_BYTES).await?;
                // The token server's `issued_at` is real time, not the policy clock.
                let token = auth::parse_token(&body, std::time::SystemTime::now())?;
                self.stats.token_fetched();
                tracing::debug!(upstream = %self.id, scope, ttl_s = token.ttl.as_secs(), "fetched bearer token");
                Ok(Arc::new(token))
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(self.unauthorized()),
            _ => Err(status_error(resp).await),
        }
    }

    fn unauthorized(&self) -> Error {
        Error::Unauthorized {
            with_credentials: self.credentials.is_some(),
        }
    }

    /// Whether the circuit breaker currently considers the upstream down.
    pub fn is_down(&self) -> bool {
        self.breaker.is_open()
    }

    /// What this client saw (see [`stats::Stats`]).
    pub fn stats(&self) -> &self::stats::Stats {
        &self.stats
    }

    /// Sends a request through the circuit breaker: fails fast while it is
    /// open, and records whether upstream answered.
    async fn send(
        &self,
        method: Method,
        url: url::Url,
        repo: &RepoName,
        headers: HeaderMap,
        load: Load,
    ) -> Result<self::transport::Response, Error> {
        if self.breaker.admit(self.clock.instant()) == crate::breaker::Admit::Reject {
            return Err(Error::CircuitOpen);
        }
        // Real time, not the policy clock: this is a measurement.
        let started = std::time::Instant::now();
        let method_name = method.clone();
        let result = self.send_authorized(method, url, repo, headers, load).await;
        match &result {
            Ok(r) => {
                let status = r.status();
                self.stats
                    .request(Some(status.as_u16()), Some(r.headers()), started.elapsed());
                // A 401 is not the upstream failing: Docker Hub answers it
                // for a repository that does not exist, too.
                if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                    self.stats
                        .failed(repo.as_str(), format!("{method_name}: HTTP {status}"));
                }
            }
            Err(e) => {
                self.stats.request(None, None, started.elapsed());
                self.stats.failed(
                    repo.as_str(),
                    format!("{method_name}: {}", crate::error_chain(e)),
                );
            }
        }
        let ok = match &result {
            Ok(r) => !(r.status().is_server_error() || r.status() == StatusCode::TOO_MANY_REQUESTS),
            Err(e) => !e.is_unavailable(),
        };
        self.breaker.record(ok, self.clock.instant());
        result
    }

    /// Sends a request, answering one authentication challenge if needed.
    /// Returns the response whatever its status.
    async fn send_authorized(
        &self,
        method: Method,
        url: url::Url,
        repo: &RepoName,
        headers: HeaderMap,
        load: Load,
    ) -> Result<self::transport::Response, Error> {
        let scope = format!("repository:{repo}:pull");
        let mut authz = self.authorization(&scope).await?;
        let mut retried = false;
        loop {
            let mut headers = headers.clone();
            if let Some(a) = &authz {
                headers.insert(AUTHORIZATION, a.clone());
            }
            let resp = self
                .http
                .send(method.clone(), url.clone(), headers, load)
                .await?;
            if resp.status() != StatusCode::UNAUTHORIZED || retried {
                return Ok(resp);
            }
            retried = true;
            let challenges: Vec<_> = resp
                .headers()
                .get_all(WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(auth::parse_challenges)
                .collect();
            match auth::choose(&challenges) {
                Some(Scheme::Basic) if self.credentials.is_none() => {
                    return Err(self.unauthorized());
                }
                Some(s) => {
                    // A cached token was refused (revoked or expired early):
                    // forget it so the retry fetches a new one.
                    self.tokens.invalidate(&scope).await;
                    self.learn(s);
                }
                None => return Ok(resp),
            }
            authz = self.authorization(&scope).await?;
        }
    }

    async fn send_ok(
        &self,
        method: Method,
        url: url::Url,
        repo: &RepoName,
        headers: HeaderMap,
        load: Load,
    ) -> Result<self::transport::Response, Error> {
        let resp = self.send(method, url, repo, headers, load).await?;
        if resp.status().is_success() {
            Ok(resp)
        } else if resp.status() == StatusCode::UNAUTHORIZED {
            // Still 401 after answering the challenge.
            Err(self.unauthorized())
        } else {
            Err(status_error(resp).await)
        }
    }

    fn accept_headers(accept: AcceptClass) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(v) = accept
            .to_accept()
            .and_then(|a| HeaderValue::from_str(&a).ok())
        {
            h.insert(ACCEPT, v);
        }
        h
    }

    /// `HEAD /v2/<repo>/manifests/<reference>`.
    pub async fn head_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        accept: AcceptClass,
    ) -> Result<ManifestHead, Error> {
        let url = self.url(repo, &format!("manifests/{reference}"))?;
        let resp = self
            .send_ok(
                Method::HEAD,
                url,
                repo,
                Self::accept_headers(accept),
                Load::Small,
            )
            .await?;
        let h = resp.headers();
        Ok(ManifestHead {
            digest: header_digest(h),
            media_type: MediaType::new(header_str(h, CONTENT_TYPE).unwrap_or_default()),
            size: header_len(h),
        })
    }

    /// `GET /v2/<repo>/manifests/<reference>`, buffered (at most
    /// [`MAX_METADATA_BYTES`]).
    pub async fn get_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        accept: AcceptClass,
    ) -> Result<Manifest, Error> {
        let url = self.url(repo, &format!("manifests/{reference}"))?;
        let resp = self
            .send_ok(
                Method::GET,
                url,
                repo,
                Self::accept_headers(accept),
                Load::Small,
            )
            .await?;
        let media_type =
            MediaType::new(header_str(resp.headers(), CONTENT_TYPE).unwrap_or_default());
        let digest_header = header_digest(resp.headers());
        let bytes = read_limited(resp, MAX_METADATA_BYTES).await?;
        Ok(Manifest {
            bytes,
            media_type,
            digest_header,
        })
    }

    /// `HEAD /v2/<repo>/blobs/<digest>`.
    pub async fn head_blob(&self, repo: &RepoName, digest: &Digest) -> Result<BlobHead, Error> {
        let url = self.url(repo, &format!("blobs/{digest}"))?;
        let resp = self
            .send_ok(Method::HEAD, url, repo, HeaderMap::new(), Load::Small)
            .await?;
        Ok(BlobHead {
            size: header_len(resp.headers()),
        })
    }

    /// `GET /v2/<repo>/blobs/<digest>`, following CDN redirects. Returns once
    /// the final response's headers arrived.
    pub async fn get_blob(&self, repo: &RepoName, digest: &Digest) -> Result<BlobStream, Error> {
        let url = self.url(repo, &format!("blobs/{digest}"))?;
        let resp = self
            .send_ok(Method::GET, url, repo, HeaderMap::new(), Load::Bulk)
            .await?;
        let size = header_len(resp.headers());
        Ok(BlobStream {
            size,
            body: resp.into_stream(),
        })
    }

    /// [`get_blob`](Self::get_blob) from byte `from` on (`Range: bytes=<from>-`,
    /// to resume a download another replica began): `size` is still the
    /// whole blob's, and `body` starts at `from`. An upstream that ignores
    /// the range and sends the whole blob has its first `from` bytes
    /// skipped here.
    pub async fn get_blob_from(
        &self,
        repo: &RepoName,
        digest: &Digest,
        from: u64,
    ) -> Result<BlobStream, Error> {
        if from == 0 {
            return self.get_blob(repo, digest).await;
        }
        let url = self.url(repo, &format!("blobs/{digest}"))?;
        let mut h = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(&format!("bytes={from}-")) {
            h.insert(http::header::RANGE, v);
        }
        let resp = self.send_ok(Method::GET, url, repo, h, Load::Bulk).await?;
        if resp.status() == StatusCode::PARTIAL_CONTENT {
            // `Content-Range: bytes <from>-<last>/<size>`
            let total = header_str(resp.headers(), http::header::CONTENT_RANGE)
                .and_then(|v| v.rsplit_once('/'))
                .and_then(|(range, total)| {
                    let first = range.trim().strip_prefix("bytes ")?.split_once('-')?.0;
                    (first.trim().parse::<u64>().ok()? == from).then_some(())?;
                    total.trim().parse().ok()
                });
            let Some(total) = total else {
                return Err(Error::Protocol(
                    "a ranged blob GET answered 206 without a Content-Range for the range asked"
                        .into(),
                ));
            };
            return Ok(BlobStream {
                size: Some(total),
                body: resp.into_stream(),
            });
        }
        let size = header_len(resp.headers());
        let mut skip = from;
        let body = resp
            .into_stream()
            .filter_map(move |r| {
                let out = match r {
                    Ok(mut b) if skip > 0 => {
                        let n = skip.min(b.len() as u64);
                        skip -= n;
                        let rest = b.split_off(n as usize);
                        (!rest.is_empty()).then_some(Ok(rest))
                    }
                    other => Some(other),
                };
                std::future::ready(out)
            })
            .boxed();
        Ok(BlobStream { size, body })
    }

    /// `GET /v2/<repo>/tags/list` with the client's `n`/`last`.
    pub async fn get_tags(
        &self,
        repo: &RepoName,
        query: &[(String, String)],
    ) -> Result<Passthrough, Error> {
        let mut url = self.url(repo, "tags/list")?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        self.passthrough(url, repo).await
    }

    /// `GET /v2/<repo>/referrers/<digest>[?artifactType=...]`.
    pub async fn get_referrers(
        &self,
        repo: &RepoName,
        digest: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Passthrough, Error> {
        let mut url = self.url(repo, &format!("referrers/{digest}"))?;
        if let Some(t) = artifact_type {
            url.query_pairs_mut().append_pair("artifactType", t);
        }
        self.passthrough(url, repo).await
    }

    async fn passthrough(&self, url: url::Url, repo: &RepoName) -> Result<Passthrough, Error> {
        let resp = self
            .send_ok(Method::GET, url, repo, HeaderMap::new(), Load::Small)
            .await?;
        let status = resp.status();
        let h = resp.headers();
        let content_type = header_str(h, CONTENT_TYPE).map(str::to_owned);
        let link = header_str(h, LINK).map(str::to_owned);
        let mut headers = HeaderMap::new();
        if let Some(v) = h.get("oci-filters-applied") {
            headers.insert("oci-filters-applied", v.clone());
        }
        let body = read_limited(resp, MAX_METADATA_BYTES).await?;
        Ok(Passthrough {
            status,
            content_type,
            link,
            headers,
            body,
        })
    }
}

/// Reads a whole body, refusing more than `limit` bytes.
async fn read_limited(resp: self::transport::Response, limit: usize) -> Result<Bytes, Error> {
    if header_len(resp.headers()).is_some_and(|n| n > limit as u64) {
        return Err(Error::TooLarge { limit });
    }
    let mut buf = BytesMut::new();
    let mut s = resp.into_stream();
    while let Some(chunk) = s.next().await {
        let chunk = chunk?;
        if buf.len() + chunk.len() > limit {
            return Err(Error::TooLarge { limit });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Turns a non-success response into [`Error::Status`], keeping the OCI
/// error code of a JSON body and `Retry-After`.
async fn status_error(resp: self::transport::Response) -> Error {
    let status = resp.status().as_u16();
    let retry_after = header_str(resp.headers(), RETRY_AFTER).map(str::to_owned);
    let body = read_limited(resp, MAX_ERROR_BODY).await.unwrap_or_default();
    let first = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("errors")?.get(0).cloned());
    let field = |k: &str| {
        first
            .as_ref()
            .and_then(|e| e.get(k)?.as_str().map(str::to_owned))
    };
    Error::Status {
        status,
        code: field("code"),
        message: field("message"),
        retry_after,
    }
}
