//! The OCI distribution pull API over [`Mirror`].
//!
//! A request is parsed into a typed endpoint (`path`), routed to an upstream
//! (`route`), answered by the mirror, and rendered with the registry headers
//! (`response`). Errors from every layer become OCI error envelopes in
//! exactly one place (`error`). Beside the API: `/livez`, `/readyz`,
//! `/metrics` (`metrics`), the status page (`status`, fed by `activity`),
//! `/ca.crt`, `/setup/<client>`. A reload swaps [`Routes`] whole; a
//! request's routing and access decisions read one snapshot of them. This module never touches the store or an
//! upstream client directly: everything goes through `Mirror`.

pub mod access_log;
pub mod activity;
pub mod error;
mod hosted;
mod internal;
pub mod metrics;
pub mod path;
pub mod range;
pub mod response;
pub mod route;
pub mod status;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};

use self::access_log::{AccessLog, LoggedBody};
use self::error::{ApiError, Subject, from_mirror};
use self::path::{Endpoint, ParsedPath};
use self::range::RangeDecision;
use self::response::{API_VERSION, CONTENT_DIGEST, set};
use self::route::{Router, Selection};
use crate::access::{Cidr, RepoRules, Verdict};
use crate::config::{AuthConfig, Config, UpstreamId};
use crate::mirror::{CacheStatus, Fetch, Grant, Mirror};
use crate::oci::{AcceptClass, Digest, Reference, RepoName};

/// The response body type of the registry API.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, io::Error>;

/// A request body, as the registry API reads it (pushes).
pub type RequestBody = http_body_util::combinators::UnsyncBoxBody<Bytes, io::Error>;

/// The user name of in-process requests (`ConnInfo::trusted`) in the
/// access log.
pub const TRUSTED_USER: &str = "(warm)";

/// Facts about the connection a request arrived on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// The listener's address.
    pub local: SocketAddr,
    /// The upstream this listener is pinned to, if any.
    pub pinned: Option<UpstreamId>,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The TLS SNI name the client sent (lowercase), if any.
    pub sni: Option<String>,
    /// Client networks allowed on this listener (empty: everyone).
    pub allow: Arc<[Cidr]>,
    /// The cluster's internal endpoint (`[cluster] listen`), not a client
    /// listener.
    pub internal: bool,
    /// The server's own scheduled warming, called in-process (never a
    /// socket): it needs no credentials; access rules still apply.
    pub trusted: bool,
}

impl ConnInfo {
    /// The host name that routes this request: the SNI name on TLS, the
    /// `Host` header (or HTTP/2 `:authority`) on plain HTTP; without port.
    fn route_host<'a, B>(&'a self, req: &'a Request<B>) -> Option<&'a str> {
        if self.tls {
            return self.sni.as_deref();
        }
        let raw = match req.uri().authority() {
            Some(a) => a.as_str(),
            None => req.headers().get(header::HOST)?.to_str().ok()?,
        };
        // Strip a port; IPv6 literals are never upstream hosts anyway.
        Some(match raw.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => raw,
        })
    }
}

/// Who may pull what: client authentication and each upstream's
/// repository rules.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// `[auth]`, when clients authenticate.
    pub auth: Option<AuthConfig>,
    /// Repository rules per upstream (absent: everything allowed).
    pub rules: HashMap<UpstreamId, RepoRules>,
}

impl Policy {
    /// The policy a config describes.
    pub fn from_config(config: &Config) -> Self {
        Self {
            auth: config.auth.clone(),
            rules: config
                .upstreams
                .iter()
                .map(|u| (u.id.clone(), u.access.clone()))
                .chain(
                    config
                        .hosted
                        .iter()
                        .map(|h| (h.id.clone(), h.access.clone())),
                )
                .collect(),
        }
    }
}

/// What a config reload replaces in the registry API, read once per
/// request: a request runs to its end with the settings it started with.
#[derive(Debug)]
pub struct Routes {
    router: Router,
    policy: Policy,
    /// The local CA certificate offered at `/ca.crt`.
    ca_pem: Option<Arc<str>>,
    /// The config the `/setup/<client>` scripts are generated from.
    setup: Option<Arc<Config>>,
    /// Whether `/metrics` answers (`[server] metrics`).
    serve_metrics: bool,
    /// Whether the status page answers (`[server] status`).
    serve_status: bool,
}

impl Routes {
    /// The routes `config` describes; `ca_pem` is the local CA certificate
    /// (offered at `/ca.crt` and put in `/setup/<client>` scripts).
    pub fn from_config(config: &Arc<Config>, ca_pem: Option<Arc<str>>) -> Self {
        Self {
            router: Router::new(config),
            policy: Policy::from_config(config),
            ca_pem,
            setup: Some(config.clone()),
            serve_metrics: config.server.metrics,
            serve_status: config.server.status,
        }
    }
}

/// The registry API service.
#[derive(Debug)]
pub struct Registry {
    mirror: Arc<Mirror>,
    /// The hosted namespaces.
    hosted: Arc<crate::hosted::Hosted>,
    /// Routing, access rules, and what the config switches on.
    routes: arc_swap::ArcSwap<Routes>,
    /// Counters.
    metrics: Arc<metrics::Metrics>,
    /// Whether `GET /readyz` says this mirror takes new clients (off once
    /// shutdown begins, so that a load balancer drains it first).
    ready: std::sync::atomic::AtomicBool,
    /// The status page's state.
    status: status::State,
}

/// The largest page size passed on (`i32::MAX`: every registry parses it).
const MAX_PAGE: usize = i32::MAX as usize;

/// The query parameters the API uses.
#[derive(Debug, Default)]
struct Query {
    ns: Option<String>,
    n: Option<String>,
    last: Option<String>,
    artifact_type: Option<String>,
    digest: Option<String>,
    mount: Option<String>,
    from: Option<String>,
}

impl Query {
    fn parse(q: Option<&str>) -> Self {
        let mut out = Self::default();
        for (k, v) in url::form_urlencoded::parse(q.unwrap_or_default().as_bytes()) {
            let slot = match &*k {
                "ns" => &mut out.ns,
                "n" => &mut out.n,
                "last" => &mut out.last,
                "artifactType" => &mut out.artifact_type,
                "digest" => &mut out.digest,
                "mount" => &mut out.mount,
                "from" => &mut out.from,
                _ => continue,
            };
            *slot = Some(v.into_owned());
        }
        out
    }

    /// The page size `n`: absent (or empty, as distribution reads it), or a
    /// non-negative integer; anything else is the client's error.
    fn page_size(&self) -> Result<Option<usize>, ApiError> {
        match self.n.as_deref() {
            None | Some("") => Ok(None),
            Some(n) if n.bytes().all(|b| b.is_ascii_digit()) => {
                // Larger than any page is as good as unlimited; capped so
                // that an upstream parsing it as a 32-bit int takes it too.
                Ok(Some(n.parse().unwrap_or(usize::MAX).min(MAX_PAGE)))
            }
            Some(_) => Err(ApiError::bad_page_size()),
        }
    }

    /// `n` and `last` for upstream, `n` checked first.
    fn paging(&self) -> Result<Vec<(String, String)>, ApiError> {
        let mut v = Vec::new();
        if let Some(n) = self.page_size()? {
            v.push(("n".to_owned(), n.to_string()));
        }
        if let Some(l) = &self.last {
            v.push(("last".to_owned(), l.clone()));
        }
        Ok(v)
    }
}

/// Everything a handler needs to know about one request.
struct Ctx<'a> {
    head: bool,
    headers: &'a HeaderMap,
    path: &'a str,
    query: Query,
    /// What the client may do with the request's repository.
    grant: Grant,
    /// The authenticated user.
    user: Option<&'a str>,
    log: &'a mut AccessLog,
    /// The request's method.
    method: &'a Method,
    /// The request's body (pushes read it; in a mutex only so that `Ctx`
    /// is `Sync`, as the body is not).
    body: std::sync::Mutex<Option<RequestBody>>,
}

impl Ctx<'_> {
    /// Takes the request's body (empty once taken).
    fn take_body(&self) -> RequestBody {
        self.body
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
            .unwrap_or_else(response::empty)
    }
}

impl Registry {
    /// A registry over `mirror` and `hosted` with `routes`.
    pub fn new(mirror: Arc<Mirror>, hosted: Arc<crate::hosted::Hosted>, routes: Routes) -> Self {
        Self {
            mirror,
            hosted,
            routes: arc_swap::ArcSwap::from_pointee(routes),
            metrics: Arc::default(),
            ready: std::sync::atomic::AtomicBool::new(true),
            status: status::State::default(),
        }
    }

    /// Replaces the routes (a config reload): requests from now on use
    /// them; those under way finish with the old ones.
    pub fn set_routes(&self, routes: Routes) {
        self.routes.store(Arc::new(routes));
    }

    /// Turns `GET /readyz` off (shutdown has begun) or on.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, std::sync::atomic::Ordering::SeqCst);
    }

    /// `GET /setup/<client>`: the install script for a node, for the
    /// mirror address the request came to (its `Host`).
    fn setup_script<B>(
        &self,
        req: &Request<B>,
        kind: &str,
        head: bool,
    ) -> Result<Response<Body>, ApiError> {
        use crate::clientconfig::{ClientKind, Mirror};
        let kind = match kind {
            "containerd" => ClientKind::Containerd,
            "docker" => ClientKind::Docker,
            "podman" => ClientKind::Podman,
            "buildkit" => ClientKind::Buildkit,
            "k3s" => ClientKind::K3s,
            _ => {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    error::Code::Unsupported,
                    error::Origin::Downstream,
                    format!(
                        "no setup script for {kind:?} (containerd, docker, podman, buildkit, k3s)"
                    ),
                ));
            }
        };
        let routes = self.routes.load();
        let (Some(config), Some(ca)) = (&routes.setup, &routes.ca_pem) else {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                error::Code::Unsupported,
                error::Origin::Downstream,
                "setup scripts need the mirror's local CA ([tls] ca_dir)",
            ));
        };
        let host = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| {
                req.headers()
                    .get(header::HOST)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        let mirror: Mirror = host.parse().map_err(|e: crate::clientconfig::Error| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                error::Code::Unsupported,
                error::Origin::Downstream,
                format!("cannot tell the mirror's address from Host: {e}"),
            )
        })?;
        let install = std::path::Path::new(kind.default_install_dir());
        let files =
            crate::clientconfig::generate(kind, config, &mirror, ca, install).map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    error::Code::Unknown,
                    error::Origin::Internal,
                    e.to_string(),
                )
            })?;
        let text = crate::clientconfig::setup_script(kind, &mirror, &files, install);
        let len = text.len();
        let body = if head {
            response::empty()
        } else {
            response::full(Bytes::from(text))
        };
        let mut r = response::with_body(StatusCode::OK, body);
        set(
            &mut r,
            header::CONTENT_TYPE,
            "text/x-shellscript; charset=utf-8",
        );
        r.headers_mut().insert(header::CONTENT_LENGTH, len.into());
        Ok(r)
    }

    /// The request counters.
    pub fn metrics(&self) -> &metrics::Metrics {
        &self.metrics
    }

    /// A 401 with this mirror's Basic challenge.
    fn challenge(&self, message: &str) -> ApiError {
        let routes = self.routes.load();
        let realm = routes
            .policy
            .auth
            .as_ref()
            .map_or("mirrorgate", |a| a.realm.as_str());
        ApiError::unauthorized(realm, message)
    }

    /// The authenticated user: `Ok(None)` for anonymous, `Err` for wrong
    /// credentials (or none where anonymous clients are not served).
    async fn identify<B>(
        &self,
        routes: &Routes,
        req: &Request<B>,
    ) -> Result<Option<String>, ApiError> {
        let Some(auth) = &routes.policy.auth else {
            return Ok(None);
        };
        let header = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        match auth.htpasswd.authenticate(header).await {
            Ok(Some(u)) => Ok(Some(u)),
            Ok(None) if auth.anonymous => Ok(None),
            Ok(None) => Err(self.challenge("authentication required")),
            Err(crate::access::BadCredentials) => {
                Err(self.challenge("invalid username or password"))
            }
        }
    }

    /// What `user` may do with repository `name` of upstream `id`.
    fn grant(
        &self,
        routes: &Routes,
        id: &UpstreamId,
        name: &RepoName,
        user: Option<&str>,
    ) -> Result<Grant, ApiError> {
        let reads_private = routes.policy.auth.is_none() || user.is_some();
        let rules = match routes.policy.rules.get(id) {
            Some(r) if !r.is_open() => r,
            _ => {
                return Ok(Grant {
                    reads_private,
                    ..Grant::OPEN
                });
            }
        };
        let repo = self.mirror.upstream_repo(id, name);
        let repo = repo.as_str();
        match rules.verdict(repo, user.is_some()) {
            Verdict::Denied => Err(ApiError::denied(format!(
                "repository {repo} of {id} is not allowed through this mirror"
            ))),
            Verdict::NeedsAuth => {
                Err(self.challenge("authentication required for this repository"))
            }
            Verdict::Allowed { fetch } => Ok(Grant {
                fetch: if fetch {
                    Fetch::Upstream
                } else {
                    Fetch::CacheOnly
                },
                private_repo: crate::access::any_match(&rules.private, repo),
                reads_private,
            }),
        }
    }

    /// Answers one request. Never fails: errors become OCI error responses.
    pub async fn handle<B>(&self, req: Request<B>, conn: &ConnInfo) -> Response<LoggedBody>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        use http_body_util::BodyExt;
        let (parts, body) = req.into_parts();
        let req = Request::from_parts(parts, ());
        let body: RequestBody = body.map_err(|e| io::Error::other(e.into())).boxed_unsync();
        let mut log = AccessLog {
            method: req.method().clone(),
            path: req
                .uri()
                .path_and_query()
                .map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned()),
            peer: conn.peer,
            upstream: None,
            kind: None,
            cache: None,
            repo: None,
            reference: None,
            user: None,
            status: 0,
            start: Instant::now(),
            metrics: Some(self.metrics.clone()),
            in_flight: Some(self.metrics.request_started()),
        };
        let head = req.method() == Method::HEAD;
        let mut resp = match Box::pin(self.dispatch(&req, body, conn, &mut log)).await {
            Ok(r) => r,
            Err(mut e) => {
                if e.status == StatusCode::UNAUTHORIZED && e.realm.is_none() {
                    let cause = e.cause.take();
                    e = self.challenge(&e.message);
                    e.cause = cause;
                }
                response::log_error(&e, &log);
                response::error(&e, head)
            }
        };
        resp.headers_mut()
            .insert(API_VERSION, http::HeaderValue::from_static("registry/2.0"));
        if let Some(c) = log.cache
            && resp.status().as_u16() < 400
        {
            resp.headers_mut().insert(
                CACHE_STATUS,
                http::HeaderValue::from_static(cache_status(c)),
            );
        }
        log.status = resp.status().as_u16();
        let content_length = (!head)
            .then(|| {
                resp.headers()
                    .get(header::CONTENT_LENGTH)?
                    .to_str()
                    .ok()?
                    .parse()
                    .ok()
            })
            .flatten();
        resp.map(|b| LoggedBody::new(b, log, content_length))
    }

    async fn dispatch(
        &self,
        req: &Request<()>,
        body: RequestBody,
        conn: &ConnInfo,
        log: &mut AccessLog,
    ) -> Result<Response<Body>, ApiError> {
        if conn.internal {
            return self.internal(req, log).await;
        }
        // One snapshot for the whole request (a reload swaps them whole).
        let routes = self.routes.load_full();
        let method = req.method();
        if !conn.allow.is_empty() && !conn.allow.iter().any(|c| c.contains(conn.peer.ip())) {
            return Err(ApiError::denied(format!(
                "client address {} may not use this listener",
                conn.peer.ip()
            )));
        }
        if routes.serve_metrics
            && req.uri().path() == "/metrics"
            && (method == Method::GET || method == Method::HEAD)
        {
            let mut text = self
                .metrics
                .render(self.mirror.stored_bytes(), self.mirror.fill_memory() as u64);
            self.metrics.render_by_upstream(&mut text);
            metrics::Metrics::render_store(
                &mut text,
                self.mirror.fills_in_flight() as u64,
                self.mirror.evictions(),
            );
            metrics::render_upstreams(&mut text, &self.mirror.upstreams().clients());
            self.metrics.render_reloads(&mut text);
            if let Some(calls) = self.mirror.s3_calls() {
                metrics::Metrics::render_s3(&mut text, calls);
            }
            let len = text.len();
            let body = if method == Method::HEAD {
                response::empty()
            } else {
                response::full(Bytes::from(text))
            };
            let mut r = response::with_body(StatusCode::OK, body);
            set(&mut r, header::CONTENT_TYPE, "text/plain; version=0.0.4");
            r.headers_mut().insert(header::CONTENT_LENGTH, len.into());
            return Ok(r);
        }
        let probe = req.uri().path();
        if (probe == "/readyz" || probe == "/livez")
            && (method == Method::GET || method == Method::HEAD)
        {
            // Liveness: the process answers. Readiness: not draining, and
            // the store's local directory is there to serve from; an
            // upstream being down never matters (serving the cache is the
            // job then).
            let (status, text) = if probe == "/livez" {
                (StatusCode::OK, "alive\n")
            } else if !self.ready.load(std::sync::atomic::Ordering::SeqCst) {
                (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else if let Err(e) = self.mirror.store().usable().await {
                tracing::warn!(error = %crate::error_chain(&e), "not ready: the store is not usable");
                (StatusCode::SERVICE_UNAVAILABLE, "store unusable\n")
            } else {
                (StatusCode::OK, "ready\n")
            };
            let body = if method == Method::HEAD {
                response::empty()
            } else {
                response::full(Bytes::from_static(text.as_bytes()))
            };
            let mut r = response::with_body(status, body);
            set(&mut r, header::CONTENT_TYPE, "text/plain");
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, text.len().into());
            return Ok(r);
        }
        if req.uri().path() == "/ca.crt"
            && let Some(pem) = &routes.ca_pem
            && (method == Method::GET || method == Method::HEAD)
        {
            let len = pem.len();
            let body = if method == Method::HEAD {
                response::empty()
            } else {
                response::full(Bytes::copy_from_slice(pem.as_bytes()))
            };
            let mut r = response::with_body(StatusCode::OK, body);
            set(&mut r, header::CONTENT_TYPE, "application/x-pem-file");
            r.headers_mut().insert(header::CONTENT_LENGTH, len.into());
            return Ok(r);
        }
        if let Some(kind) = req.uri().path().strip_prefix("/setup/")
            && (method == Method::GET || method == Method::HEAD)
        {
            return self.setup_script(req, kind, method == Method::HEAD);
        }
        let user = if conn.trusted {
            Some(TRUSTED_USER.to_owned())
        } else {
            self.identify(&routes, req).await?
        };
        log.user.clone_from(&user);
        let page = req.uri().path();
        if matches!(page, "/" | "/status" | "/status.json")
            && (method == Method::GET || method == Method::HEAD)
            && routes.serve_status
        {
            let reads_private = routes.policy.auth.is_none() || user.is_some();
            return Ok(self
                .status_page(
                    &routes,
                    page == "/status.json",
                    method == Method::HEAD,
                    reads_private,
                )
                .await);
        }
        let ParsedPath { prefix, endpoint } = path::parse(req.uri().path())?;
        log.kind = Some(match &endpoint {
            Endpoint::Ping => "ping",
            Endpoint::Catalog => "catalog",
            Endpoint::Manifest(..) => "manifest",
            Endpoint::Blob(..) => "blob",
            Endpoint::Tags(_) => "tags",
            Endpoint::Referrers(..) => "referrers",
            Endpoint::Upload(..) => "upload",
        });
        let query = Query::parse(req.uri().query());
        let name = match &endpoint {
            Endpoint::Manifest(n, _)
            | Endpoint::Blob(n, _)
            | Endpoint::Tags(n)
            | Endpoint::Referrers(n, _)
            | Endpoint::Upload(n, _) => Some(n.clone()),
            Endpoint::Ping | Endpoint::Catalog => None,
        };
        if endpoint == Endpoint::Ping {
            if method != Method::GET && method != Method::HEAD {
                return Err(ApiError::read_only());
            }
            return Ok(response::json(
                StatusCode::OK,
                "{}".into(),
                method == Method::HEAD,
            ));
        }
        let sel = routes.router.select(
            query.ns.as_deref(),
            prefix.as_deref(),
            name,
            conn.route_host(req),
            conn.pinned.as_ref(),
        )?;
        log.upstream = Some(sel.upstream.to_string());
        if let Some(n) = &sel.name {
            log.repo = Some(self.mirror.upstream_repo(&sel.upstream, n));
        }
        if let Endpoint::Manifest(_, r) = &endpoint {
            log.reference = Some(r.clone());
        }
        let ns = query.ns.clone();
        let hosted = sel.target == route::Target::Hosted;
        if !hosted {
            if matches!(endpoint, Endpoint::Upload(..)) {
                return Err(ApiError::no_uploads());
            }
            if method != Method::GET && method != Method::HEAD {
                return Err(ApiError::read_only());
            }
        }
        let grant = match &sel.name {
            Some(n) => self.grant(&routes, &sel.upstream, n, user.as_deref())?,
            None => Grant::OPEN,
        };
        let mut ctx = Ctx {
            head: method == Method::HEAD,
            headers: req.headers(),
            path: req.uri().path(),
            query,
            grant,
            user: user.as_deref(),
            log,
            method,
            body: std::sync::Mutex::new(Some(body)),
        };
        let mut resp = if hosted {
            self.hosted_endpoint(&mut ctx, &routes, &sel, endpoint)
                .await?
        } else {
            self.endpoint(&mut ctx, &sel, endpoint).await?
        };
        if let Some(ns) = ns {
            set(&mut resp, "oci-namespace", &ns);
        }
        Ok(resp)
    }

    async fn endpoint(
        &self,
        ctx: &mut Ctx<'_>,
        sel: &Selection,
        endpoint: Endpoint,
    ) -> Result<Response<Body>, ApiError> {
        let id = &sel.upstream;
        // invariant: every endpoint with a name had it passed to select(),
        // which returns it (possibly stripped of a prefix).
        let name = || {
            sel.name
                .clone()
                .ok_or_else(|| ApiError::from(path::PathError::Name))
        };
        match endpoint {
            Endpoint::Manifest(_, reference) => self.manifest(ctx, id, &name()?, &reference).await,
            Endpoint::Blob(_, digest) => self.blob(ctx, id, &name()?, &digest).await,
            Endpoint::Tags(_) => {
                ctx.log.cache = Some(CacheStatus::Pass);
                let paging = ctx.query.paging()?;
                let p = self
                    .mirror
                    .tags(id, &name()?, &paging, ctx.grant)
                    .await
                    .map_err(|e| from_mirror(&e, Subject::Repository))?;
                Ok(passthrough(ctx, p))
            }
            Endpoint::Referrers(_, digest) => {
                ctx.log.cache = Some(CacheStatus::Pass);
                let p = self
                    .mirror
                    .referrers(
                        id,
                        &name()?,
                        &digest,
                        ctx.query.artifact_type.as_deref(),
                        ctx.grant,
                    )
                    .await
                    .map_err(|e| from_mirror(&e, Subject::Manifest))?;
                Ok(passthrough(ctx, p))
            }
            Endpoint::Catalog => {
                let repos = self
                    .mirror
                    .catalog(id)
                    .await
                    .map_err(|e| from_mirror(&e, Subject::Repository))?;
                self.catalog(ctx, id, repos)
            }
            // Handled in dispatch.
            Endpoint::Ping | Endpoint::Upload(..) => Err(ApiError::no_uploads()),
        }
    }

    async fn manifest(
        &self,
        ctx: &mut Ctx<'_>,
        id: &UpstreamId,
        name: &RepoName,
        reference: &Reference,
    ) -> Result<Response<Body>, ApiError> {
        let accept = AcceptClass::from_accept(
            ctx.headers
                .get_all(header::ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok()),
        );
        let m = self
            .mirror
            .manifest(id, name, reference, accept, ctx.grant)
            .await
            .map_err(|e| from_mirror(&e, Subject::Manifest))?;
        ctx.log.cache = Some(m.status);
        let mut r = manifest_response(ctx, m.bytes, &m.media_type, &m.digest);
        if m.status == CacheStatus::Stale {
            // The OCI spec's form of a warning (code 299, agent `-`), which
            // clients surface to their users.
            set(
                &mut r,
                header::WARNING,
                "299 - \"upstream unreachable: tag served from cache, it may be stale\"",
            );
        }
        Ok(r)
    }

    async fn blob(
        &self,
        ctx: &mut Ctx<'_>,
        id: &UpstreamId,
        name: &RepoName,
        digest: &Digest,
    ) -> Result<Response<Body>, ApiError> {
        if ctx.head {
            let h = self
                .mirror
                .head_blob(id, name, digest, ctx.grant)
                .await
                .map_err(|e| from_mirror(&e, Subject::Blob))?;
            ctx.log.cache = Some(h.status);
            let mut r = response::with_body(StatusCode::OK, response::empty());
            blob_headers(&mut r, digest);
            if let Some(size) = h.size {
                r.headers_mut().insert(header::CONTENT_LENGTH, size.into());
            }
            return Ok(r);
        }
        let b = self
            .mirror
            .blob(id, name, digest, ctx.grant)
            .await
            .map_err(|e| from_mirror(&e, Subject::Blob))?;
        ctx.log.cache = Some(b.status);
        if let Some(url) = b.redirect() {
            // The bytes come from the store (S3); the URL is presigned, so
            // it carries no credentials of the client's. 307 keeps the
            // method, and clients send their Range to the new location.
            let mut r = response::with_body(StatusCode::TEMPORARY_REDIRECT, response::empty());
            set(&mut r, header::LOCATION, url.as_str());
            set(&mut r, CONTENT_DIGEST, &digest.to_string());
            r.headers_mut().insert(header::CONTENT_LENGTH, 0.into());
            return Ok(r);
        }
        Ok(blob_response(ctx, digest, b.size, |start, end| {
            b.into_stream(start, end)
        }))
    }

    fn catalog(
        &self,
        ctx: &mut Ctx<'_>,
        id: &UpstreamId,
        repos: Vec<String>,
    ) -> Result<Response<Body>, ApiError> {
        ctx.log.cache = Some(CacheStatus::Hit);
        // Only what this client could pull: admitted repositories, and
        // private ones for authenticated clients.
        let routes = self.routes.load();
        let rules = routes.policy.rules.get(id);
        let visible = |r: &str| {
            rules.is_none_or(|rules| {
                rules.admits(r)
                    && (ctx.user.is_some() || !crate::access::any_match(&rules.private, r))
            })
        };
        let visible: Vec<&String> = repos.iter().filter(|r| visible(r)).collect();
        page(ctx, &visible, "repositories", None)
    }
}

/// A manifest's `GET`/`HEAD` response.
fn manifest_response(
    ctx: &Ctx<'_>,
    bytes: Bytes,
    media_type: &crate::oci::MediaType,
    digest: &Digest,
) -> Response<Body> {
    let len = bytes.len();
    let body = if ctx.head {
        response::empty()
    } else {
        response::full(bytes)
    };
    let mut r = response::with_body(StatusCode::OK, body);
    set(&mut r, header::CONTENT_TYPE, media_type.as_str());
    set(&mut r, CONTENT_DIGEST, &digest.to_string());
    set(&mut r, header::ETAG, &format!("\"{digest}\""));
    r.headers_mut().insert(header::CONTENT_LENGTH, len.into());
    r
}

/// The headers of a blob response.
fn blob_headers(r: &mut Response<Body>, digest: &Digest) {
    set(r, header::CONTENT_TYPE, "application/octet-stream");
    set(r, CONTENT_DIGEST, &digest.to_string());
    set(r, header::ETAG, &format!("\"{digest}\""));
    set(r, header::ACCEPT_RANGES, "bytes");
}

/// A blob's `GET` response: whole, or the range the client asked for.
/// `stream(start, end)` gives its bytes (`end` exclusive; `None`: to the
/// end).
fn blob_response(
    ctx: &Ctx<'_>,
    digest: &Digest,
    size: Option<u64>,
    stream: impl FnOnce(u64, Option<u64>) -> futures_util::stream::BoxStream<'static, io::Result<Bytes>>,
) -> Response<Body> {
    let range_header = ctx.headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let decision = match size {
        Some(size) => range::decide(range_header, size),
        None => RangeDecision::Full,
    };
    let mut r = match (decision, size) {
        (RangeDecision::Unsatisfiable, Some(size)) => {
            let mut r = response::error(
                &ApiError::new(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    error::Code::RangeInvalid,
                    error::Origin::Downstream,
                    "requested range is not satisfiable",
                ),
                false,
            );
            set(&mut r, header::CONTENT_RANGE, &format!("bytes */{size}"));
            return r;
        }
        (RangeDecision::Partial { start, end }, Some(size)) => {
            let mut r = response::with_body(
                StatusCode::PARTIAL_CONTENT,
                response::stream(stream(start, Some(end))),
            );
            set(
                &mut r,
                header::CONTENT_RANGE,
                &format!("bytes {start}-{}/{size}", end - 1),
            );
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, (end - start).into());
            r
        }
        (_, size) => {
            let mut r = response::with_body(StatusCode::OK, response::stream(stream(0, None)));
            if let Some(size) = size {
                r.headers_mut().insert(header::CONTENT_LENGTH, size.into());
            }
            r
        }
    };
    blob_headers(&mut r, digest);
    r
}

/// One page of a sorted list (`_catalog`, a hosted `tags/list`): the items
/// after `last`, at most `n`, with a `Link` to the next page (in the path
/// shape and `ns` this client used) when there is one.
fn page(
    ctx: &Ctx<'_>,
    items: &[&String],
    field: &str,
    name: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let n = ctx.query.page_size()?;
    let after: Vec<&String> = items
        .iter()
        .copied()
        .filter(|r| {
            ctx.query
                .last
                .as_ref()
                .is_none_or(|l| r.as_str() > l.as_str())
        })
        .collect();
    let page = &after[..after.len().min(n.unwrap_or(usize::MAX))];
    let mut body = serde_json::Map::new();
    if let Some(name) = name {
        body.insert("name".into(), name.into());
    }
    body.insert(field.into(), serde_json::json!(page));
    let mut r = response::json(
        StatusCode::OK,
        serde_json::Value::Object(body).to_string(),
        ctx.head,
    );
    if let (Some(n), Some(last)) = (n, page.last())
        && n > 0
        && after.len() > page.len()
    {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        q.append_pair("n", &n.to_string()).append_pair("last", last);
        if let Some(ns) = &ctx.query.ns {
            q.append_pair("ns", ns);
        }
        set(
            &mut r,
            header::LINK,
            &format!("<{}?{}>; rel=\"next\"", ctx.path, q.finish()),
        );
    }
    Ok(r)
}

/// Relays an upstream response for tags/list or referrers, with its `Link`
/// rewritten to the path shape this client used.
fn passthrough(ctx: &Ctx<'_>, p: crate::mirror::Passthrough) -> Response<Body> {
    let len = p.body.len();
    let body = if ctx.head {
        response::empty()
    } else {
        response::full(p.body)
    };
    let mut r = response::with_body(p.status, body);
    r.headers_mut().insert(header::CONTENT_LENGTH, len.into());
    if let Some(ct) = &p.content_type {
        set(&mut r, header::CONTENT_TYPE, ct);
    }
    for (k, v) in &p.headers {
        if k.as_str().eq_ignore_ascii_case("oci-filters-applied") {
            r.headers_mut().insert(k.clone(), v.clone());
        }
    }
    if let Some(link) = p
        .link
        .as_deref()
        .and_then(|l| rewrite_link(l, ctx.path, ctx.query.ns.as_deref()))
    {
        set(&mut r, header::LINK, &link);
    }
    r
}

/// Rewrites an upstream `Link: <url?query>; rel="next"` to point at the
/// client's own request path, keeping the upstream's query (`n`, `last`,
/// ...) and the client's `ns`.
pub fn rewrite_link(link: &str, client_path: &str, ns: Option<&str>) -> Option<String> {
    let start = link.find('<')?;
    let end = start + link[start..].find('>')?;
    let target = &link[start + 1..end];
    let rest = &link[end + 1..];
    let query = target.split_once('?').map(|(_, q)| q).unwrap_or_default();
    let mut ser = url::form_urlencoded::Serializer::new(String::new());
    let mut has_ns = false;
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        has_ns |= k == "ns";
        ser.append_pair(&k, &v);
    }
    if let (Some(ns), false) = (ns, has_ns) {
        ser.append_pair("ns", ns);
    }
    let q = ser.finish();
    let sep = if q.is_empty() { "" } else { "?" };
    Some(format!("<{client_path}{sep}{q}>{rest}"))
}

/// `Cache-Status` (RFC 9211): how the mirror answered. `mirrorgate warm`
/// reads it to tell a cached blob from one it must fetch.
pub const CACHE_STATUS: http::HeaderName = http::HeaderName::from_static("cache-status");

/// The `Cache-Status` value of an outcome.
pub fn cache_status(c: CacheStatus) -> &'static str {
    match c {
        CacheStatus::Hit => "mirrorgate; hit",
        CacheStatus::Miss => "mirrorgate; fwd=miss",
        CacheStatus::Coalesced => "mirrorgate; fwd=miss; collapsed",
        CacheStatus::Stale => "mirrorgate; hit; detail=stale",
        CacheStatus::Pass => "mirrorgate; fwd=bypass",
        CacheStatus::Redirect => "mirrorgate; hit; detail=redirect",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_rewrite() {
        assert_eq!(
            rewrite_link(
                "</v2/library/alpine/tags/list?n=2&last=b>; rel=\"next\"",
                "/v2/docker.io/alpine/tags/list",
                None
            )
            .unwrap(),
            "</v2/docker.io/alpine/tags/list?n=2&last=b>; rel=\"next\""
        );
        assert_eq!(
            rewrite_link(
                "<https://up.example/v2/x/tags/list?last=a%2Bb&n=1>; rel=\"next\"",
                "/dh/v2/x/tags/list",
                Some("docker.io")
            )
            .unwrap(),
            "</dh/v2/x/tags/list?last=a%2Bb&n=1&ns=docker.io>; rel=\"next\""
        );
        assert_eq!(rewrite_link("garbage", "/v2/x/tags/list", None), None);
    }

    #[test]
    fn query_parsing() {
        let q = Query::parse(Some("ns=docker.io&n=10&last=a%2Fb&x=1&artifactType=t"));
        assert_eq!(q.ns.as_deref(), Some("docker.io"));
        assert_eq!(q.last.as_deref(), Some("a/b"));
        assert_eq!(q.paging().unwrap().len(), 2);
        assert_eq!(q.artifact_type.as_deref(), Some("t"));
    }

    #[test]
    fn page_sizes() {
        let n = |q: &str| Query::parse(Some(q)).page_size().map_err(|e| e.status);
        assert_eq!(n(""), Ok(None));
        assert_eq!(n("n="), Ok(None));
        assert_eq!(n("n=0"), Ok(Some(0)));
        assert_eq!(n("n=25"), Ok(Some(25)));
        assert_eq!(n("n=99999999999999999999999"), Ok(Some(MAX_PAGE)));
        assert_eq!(n("n=4294967296"), Ok(Some(MAX_PAGE)));
        for bad in ["n=-1", "n=foo", "n=1.5", "n=%2B1", "n= 1"] {
            assert_eq!(n(bad), Err(StatusCode::BAD_REQUEST), "{bad}");
        }
    }
}
