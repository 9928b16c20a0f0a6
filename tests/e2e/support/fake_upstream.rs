//! An in-process fake OCI registry for fault injection: Basic or bearer
//! auth with a token endpoint, blob redirects to a second "CDN" origin that
//! rejects `Authorization`, corrupt and truncated bodies, throttled and held
//! bodies, injected error statuses, and a record of every request.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

use super::image::{Blob, Image};

type Body = BoxBody<Bytes, std::io::Error>;

/// Upstream authentication mode.
#[derive(Debug, Clone, Default)]
pub enum Auth {
    /// Anonymous.
    #[default]
    None,
    /// HTTP Basic on every request.
    Basic {
        /// User.
        user: String,
        /// Password.
        pass: String,
    },
    /// Bearer tokens from `<url>/token`. With `user`, only those credentials
    /// get access; anonymous tokens get none.
    Bearer {
        /// Required credentials at the token endpoint.
        user: Option<(String, String)>,
        /// Token lifetime in seconds.
        expires_in: u64,
    },
}

/// A certificate and key (PEM) to serve HTTPS with.
#[derive(Debug, Clone)]
pub struct TlsIdentity {
    /// Leaf certificate.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
}

/// A throwaway CA and a leaf for 127.0.0.1/localhost: `(ca_pem, identity)`.
pub fn test_ca_and_identity() -> (String, TlsIdentity) {
    test_ca_and_leaf(|_| {})
}

/// [`test_ca_and_identity`] with a leaf that expired yesterday.
pub fn test_ca_and_expired_identity() -> (String, TlsIdentity) {
    test_ca_and_leaf(|p| {
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::days(30);
        p.not_after = now - time::Duration::days(1);
    })
}

fn test_ca_and_leaf(
    leaf_params: impl FnOnce(&mut rcgen::CertificateParams),
) -> (String, TlsIdentity) {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "fake upstream test CA");
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca_pem = ca.self_signed(&ca_key).expect("self-signed").pem();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let leaf_key = rcgen::KeyPair::generate().expect("key");
    let mut params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("params");
    leaf_params(&mut params);
    let leaf = params.signed_by(&leaf_key, &issuer).expect("signed");
    (
        ca_pem,
        TlsIdentity {
            cert_pem: leaf.pem(),
            key_pem: leaf_key.serialize_pem(),
        },
    )
}

/// Options for [`FakeUpstream::start`].
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Authentication.
    pub auth: Auth,
    /// Serve HTTPS with this identity.
    pub tls: Option<TlsIdentity>,
    /// Blob GETs answer 307 to a second in-process server.
    pub cdn: bool,
}

impl Options {
    /// Anonymous bearer tokens (Docker Hub's scheme) lasting `expires_in`
    /// seconds.
    pub fn bearer(expires_in: u64) -> Self {
        Self {
            auth: Auth::Bearer {
                user: None,
                expires_in,
            },
            ..Self::default()
        }
    }
}

/// One received request.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Query string.
    pub query: String,
    /// Headers.
    pub headers: HeaderMap,
    /// `"registry"`, `"token"` or `"cdn"`.
    pub server: &'static str,
}

impl Recorded {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Holds responses until released; counts the requests it held.
#[derive(Clone, Debug)]
pub struct Gate {
    open: watch::Sender<bool>,
    held: Arc<AtomicUsize>,
    arrived: Arc<Notify>,
}

impl Gate {
    fn new() -> Self {
        Self {
            open: watch::channel(false).0,
            held: Arc::new(AtomicUsize::new(0)),
            arrived: Arc::new(Notify::new()),
        }
    }

    /// Lets every held response continue.
    pub fn release(&self) {
        self.open.send_replace(true);
    }

    /// Waits until `n` requests reached the gate.
    pub async fn wait_for_requests(&self, n: usize) {
        loop {
            let notified = self.arrived.notified();
            if self.held.load(Ordering::SeqCst) >= n {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
        }
    }

    async fn pass(&self) {
        self.held.fetch_add(1, Ordering::SeqCst);
        self.arrived.notify_waiters();
        let mut rx = self.open.subscribe();
        let _ = rx.wait_for(|open| *open).await;
    }
}

#[derive(Default)]
struct State {
    blobs: HashMap<String, Blob>,
    /// repo -> tag -> digest
    tags: HashMap<String, BTreeMap<String, String>>,
    /// repos that exist
    repos: HashMap<String, ()>,
    referrers: HashMap<(String, String), Bytes>,
    /// digest -> the only repositories that hold it (like a real registry's
    /// repository links); digests not listed are in every repository.
    only_in: HashMap<String, Vec<String>>,
    corrupt: HashMap<String, ()>,
    truncate: HashMap<String, usize>,
    throttle: Option<(usize, Duration)>,
    blob_gate: Option<(usize, Gate)>,
    manifest_gate: Option<Gate>,
    fail_next: Option<(usize, u16)>,
    /// Docker Hub's pull limit: (limit, remaining), counted down by each
    /// manifest GET and sent on every manifest answer.
    rate_limit: Option<(u64, u64)>,
    down: bool,
    token_down: bool,
    requests: Vec<Recorded>,
    /// token -> (scopes, expiry)
    tokens: HashMap<String, (Vec<String>, Instant)>,
    token_seq: u64,
}

struct Shared {
    state: Mutex<State>,
    auth: Auth,
    url: String,
    cdn_url: Option<String>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running fake registry. Stops when dropped.
pub struct FakeUpstream {
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn bind() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let a = l.local_addr().expect("addr");
    (l, a)
}

impl FakeUpstream {
    /// Starts the registry (and its CDN when asked) on 127.0.0.1.
    pub async fn start(opts: Options) -> Self {
        let (reg, reg_addr) = bind().await;
        let scheme = if opts.tls.is_some() { "https" } else { "http" };
        let cdn = if opts.cdn { Some(bind().await) } else { None };
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            auth: opts.auth.clone(),
            url: format!("{scheme}://{reg_addr}"),
            cdn_url: cdn.as_ref().map(|(_, a)| format!("http://{a}")),
        });
        let acceptor = opts.tls.as_ref().map(tls_acceptor);
        let mut tasks = vec![tokio::spawn(serve(
            reg,
            shared.clone(),
            "registry",
            acceptor,
        ))];
        if let Some((l, _)) = cdn {
            tasks.push(tokio::spawn(serve(l, shared.clone(), "cdn", None)));
        }
        Self { shared, tasks }
    }

    /// An HTTPS fake with `ca_and_identity` (from [`test_ca_and_identity`]
    /// or a variant), its CA written to `dir/ca.pem`. Returns the fake and
    /// the `ca_file = "..."` line that makes a mirror trust it.
    pub async fn start_tls(
        ca_and_identity: (String, TlsIdentity),
        dir: &std::path::Path,
    ) -> (Self, String) {
        let (ca_pem, identity) = ca_and_identity;
        let up = Self::start(Options {
            tls: Some(identity),
            ..Options::default()
        })
        .await;
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, ca_pem).unwrap();
        (up, format!("ca_file = {:?}", ca.display().to_string()))
    }
    /// The registry's base URL.
    pub fn url(&self) -> String {
        self.shared.url.clone()
    }

    /// The CDN's base URL.
    pub fn cdn_url(&self) -> Option<String> {
        self.shared.cdn_url.clone()
    }

    /// Adds a blob (blobs are global, not per repository).
    pub fn add_blob(&self, b: &Blob) {
        self.shared.lock().blobs.insert(b.digest.clone(), b.clone());
    }

    /// Makes `digest` (blob or manifest) exist only in `repos`: other
    /// repositories answer 404 for it, as a real registry does.
    pub fn only_in(&self, digest: &str, repos: &[&str]) {
        self.shared.lock().only_in.insert(
            digest.to_owned(),
            repos.iter().map(|r| (*r).to_owned()).collect(),
        );
    }

    /// Adds an image's manifest, config and layers, and tags it.
    pub fn add_image(&self, repo: &str, tag: &str, img: &Image) {
        for b in img.layers.iter().chain([&img.config]) {
            self.add_blob(b);
        }
        self.add_manifest(repo, Some(tag), &img.manifest);
    }

    /// Adds a manifest (or index), optionally tagged.
    pub fn add_manifest(&self, repo: &str, tag: Option<&str>, m: &Blob) {
        let mut s = self.shared.lock();
        s.blobs.insert(m.digest.clone(), m.clone());
        s.repos.insert(repo.to_owned(), ());
        let tags = s.tags.entry(repo.to_owned()).or_default();
        if let Some(t) = tag {
            tags.insert(t.to_owned(), m.digest.clone());
        }
    }

    /// Points a tag at another digest.
    pub fn set_tag(&self, repo: &str, tag: &str, digest: &str) {
        let mut s = self.shared.lock();
        s.tags
            .entry(repo.to_owned())
            .or_default()
            .insert(tag.to_owned(), digest.to_owned());
    }

    /// Deletes a tag.
    pub fn remove_tag(&self, repo: &str, tag: &str) {
        if let Some(t) = self.shared.lock().tags.get_mut(repo) {
            t.remove(tag);
        }
    }

    /// Serves `index` for the referrers of `subject`.
    pub fn add_referrers(&self, repo: &str, subject: &str, index: Bytes) {
        self.shared
            .lock()
            .referrers
            .insert((repo.to_owned(), subject.to_owned()), index);
    }

    /// Serves different bytes of the same length for this digest.
    pub fn corrupt_blob(&self, digest: &str) {
        self.shared.lock().corrupt.insert(digest.to_owned(), ());
    }

    /// Announces the full length but closes after `after` bytes.
    pub fn truncate_blob(&self, digest: &str, after: usize) {
        self.shared.lock().truncate.insert(digest.to_owned(), after);
    }

    /// Streams blob bodies in `chunk`-byte pieces, `every` apart.
    pub fn throttle_blobs(&self, chunk: usize, every: Duration) {
        self.shared.lock().throttle = Some((chunk, every));
    }

    /// Blob bodies send their first `after` bytes, then wait for the gate.
    pub fn hold_blobs_after(&self, after: usize) -> Gate {
        let g = Gate::new();
        self.shared.lock().blob_gate = Some((after, g.clone()));
        g
    }

    /// Manifest responses wait for the gate.
    pub fn hold_manifests(&self) -> Gate {
        let g = Gate::new();
        self.shared.lock().manifest_gate = Some(g.clone());
        g
    }

    /// The next `n` repository requests answer `status` (429 carries
    /// `Retry-After: 7` and a plain-text body, like Docker Hub).
    pub fn fail_next(&self, n: usize, status: u16) {
        self.shared.lock().fail_next = Some((n, status));
    }

    /// Sends Docker Hub's `ratelimit-limit` / `ratelimit-remaining`
    /// headers (window 21600 s) on manifest answers; each GET uses one.
    pub fn set_rate_limit(&self, limit: u64) {
        self.shared.lock().rate_limit = Some((limit, limit));
    }

    /// While down, every request answers 503.
    pub fn set_down(&self, down: bool) {
        self.shared.lock().down = down;
    }

    /// Takes only the token endpoint down (503), and revokes every token
    /// issued so far, so the next registry request needs a new one.
    pub fn set_token_down(&self, down: bool) {
        let mut s = self.shared.lock();
        s.token_down = down;
        if down {
            s.tokens.clear();
        }
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.lock().requests.clone()
    }

    /// Registry requests with this method whose path contains `part`.
    pub fn count(&self, method: &str, part: &str) -> usize {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| r.server == "registry" && r.method == method && r.path.contains(part))
            .count()
    }

    /// Requests to the token endpoint.
    pub fn token_requests(&self) -> usize {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| r.server == "token")
            .count()
    }

    /// CDN requests that (wrongly) carried `Authorization`.
    pub fn cdn_requests_with_authorization(&self) -> usize {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| r.server == "cdn" && r.headers.contains_key("authorization"))
            .count()
    }
}

fn tls_acceptor(id: &TlsIdentity) -> tokio_rustls::TlsAcceptor {
    use rustls_pki_types::pem::PemObject;
    let certs: Vec<_> = rustls_pki_types::CertificateDer::pem_slice_iter(id.cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("cert pem");
    let key =
        rustls_pki_types::PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes()).expect("key pem");
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("server config");
    let mut cfg = cfg;
    // Like distribution: HTTP/2 for clients that offer it.
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}

async fn serve(
    l: TcpListener,
    shared: Arc<Shared>,
    server: &'static str,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    loop {
        let Ok((stream, _)) = l.accept().await else {
            continue;
        };
        let shared = shared.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(&shared, server, req).await) }
            });
            let builder = hyper::server::conn::http1::Builder::new();
            match tls {
                Some(a) => {
                    if let Ok(s) = a.accept(stream).await {
                        if s.get_ref().1.alpn_protocol() == Some(b"h2") {
                            let h2 = hyper::server::conn::http2::Builder::new(
                                hyper_util::rt::TokioExecutor::new(),
                            );
                            let _ = h2.serve_connection(TokioIo::new(s), svc).await;
                        } else {
                            let _ = builder.serve_connection(TokioIo::new(s), svc).await;
                        }
                    }
                }
                None => {
                    let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                }
            }
        });
    }
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|n| match n {}).boxed()
}

fn resp(status: u16, body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = StatusCode::from_u16(status).expect("status");
    r.headers_mut().insert(
        "docker-distribution-api-version",
        "registry/2.0".parse().expect("hv"),
    );
    r
}

fn oci_error(status: u16, code: &str) -> Response<Body> {
    let mut r = resp(
        status,
        full(format!(
            r#"{{"errors":[{{"code":"{code}","message":"fake"}}]}}"#
        )),
    );
    r.headers_mut()
        .insert("content-type", "application/json".parse().expect("hv"));
    r
}

fn b64(s: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

async fn handle(shared: &Shared, server: &'static str, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    let method = req.method().as_str().to_owned();
    let server = if server == "registry" && path == "/token" {
        "token"
    } else {
        server
    };
    shared.lock().requests.push(Recorded {
        method: method.clone(),
        path: path.clone(),
        query: query.clone(),
        headers: req.headers().clone(),
        server,
    });
    if shared.lock().down || (server == "token" && shared.lock().token_down) {
        return resp(503, full("down"));
    }
    let authz = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    match server {
        "token" => token(shared, &query, authz.as_deref()),
        "cdn" => {
            if authz.is_some() {
                return resp(
                    400,
                    full("Authorization header not allowed on a signed URL"),
                );
            }
            let digest = path.strip_prefix("/blobs/").unwrap_or_default();
            serve_blob(shared, digest, &method, req.headers()).await
        }
        _ => {
            registry(
                shared,
                &method,
                &path,
                &query,
                authz.as_deref(),
                req.headers(),
            )
            .await
        }
    }
}

fn token(shared: &Shared, query: &str, authz: Option<&str>) -> Response<Body> {
    let Auth::Bearer { user, expires_in } = &shared.auth else {
        return oci_error(404, "UNSUPPORTED");
    };
    let scopes: Vec<String> = url::form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k == "scope")
        .map(|(_, v)| v.into_owned())
        .collect();
    let granted = match user {
        None => scopes,
        Some((u, p)) => {
            if authz == Some(format!("Basic {}", b64(&format!("{u}:{p}"))).as_str()) {
                scopes
            } else if authz.is_some() {
                return resp(401, full(r#"{"details":"incorrect username or password"}"#));
            } else {
                Vec::new()
            }
        }
    };
    let mut s = shared.lock();
    s.token_seq += 1;
    let t = format!("tok{}", s.token_seq);
    s.tokens.insert(
        t.clone(),
        (granted, Instant::now() + Duration::from_secs(*expires_in)),
    );
    let body = format!(r#"{{"token":"{t}","access_token":"{t}","expires_in":{expires_in}}}"#);
    let mut r = resp(200, full(body));
    r.headers_mut()
        .insert("content-type", "application/json".parse().expect("hv"));
    r
}

/// Splits `/v2/<name>/<kind>/<rest>` on the last endpoint marker.
fn split(path: &str) -> Option<(&str, &str, &str)> {
    let p = path.strip_prefix("/v2/")?;
    if let Some(n) = p.strip_suffix("/tags/list") {
        return Some((n, "tags", ""));
    }
    for kind in ["/manifests/", "/blobs/", "/referrers/"] {
        if let Some(i) = p.rfind(kind) {
            return Some((&p[..i], &kind[1..kind.len() - 1], &p[i + kind.len()..]));
        }
    }
    None
}

#[allow(clippy::result_large_err)] // test code: the Err is the response to send
fn authorized(
    shared: &Shared,
    authz: Option<&str>,
    repo: Option<&str>,
) -> Result<(), Response<Body>> {
    match &shared.auth {
        Auth::None => Ok(()),
        Auth::Basic { user, pass } => {
            if authz == Some(format!("Basic {}", b64(&format!("{user}:{pass}"))).as_str()) {
                Ok(())
            } else {
                let mut r = oci_error(401, "UNAUTHORIZED");
                r.headers_mut().insert(
                    "www-authenticate",
                    r#"Basic realm="fake""#.parse().expect("hv"),
                );
                Err(r)
            }
        }
        Auth::Bearer { .. } => {
            let scope = repo.map(|r| format!("repository:{r}:pull"));
            let ok = authz
                .and_then(|a| a.strip_prefix("Bearer "))
                .is_some_and(|t| {
                    let s = shared.lock();
                    s.tokens.get(t).is_some_and(|(scopes, exp)| {
                        *exp > Instant::now() && scope.as_ref().is_none_or(|sc| scopes.contains(sc))
                    })
                });
            if ok {
                return Ok(());
            }
            let mut ch = format!(
                r#"Bearer realm="{}/token",service="fake-registry""#,
                shared.url
            );
            if let Some(sc) = &scope {
                ch.push_str(&format!(r#",scope="{sc}""#));
                if authz.is_some() {
                    ch.push_str(r#",error="insufficient_scope""#);
                }
            }
            let mut r = oci_error(401, "UNAUTHORIZED");
            r.headers_mut()
                .insert("www-authenticate", ch.parse().expect("hv"));
            Err(r)
        }
    }
}

async fn registry(
    shared: &Shared,
    method: &str,
    path: &str,
    query: &str,
    authz: Option<&str>,
    headers: &HeaderMap,
) -> Response<Body> {
    if path == "/v2/" || path == "/v2" {
        return match authorized(shared, authz, None) {
            Ok(()) => resp(200, full("{}")),
            Err(r) => r,
        };
    }
    let Some((repo, kind, rest)) = split(path) else {
        return oci_error(404, "UNSUPPORTED");
    };
    if let Err(r) = authorized(shared, authz, Some(repo)) {
        return r;
    }
    {
        let mut s = shared.lock();
        if let Some((n, status)) = s.fail_next
            && n > 0
        {
            s.fail_next = (n > 1).then_some((n - 1, status));
            drop(s);
            let mut r = resp(status, full("You have reached your pull rate limit."));
            if status == 429 {
                r.headers_mut()
                    .insert("retry-after", "7".parse().expect("hv"));
            }
            return r;
        }
        if !s.repos.contains_key(repo) && kind != "blobs" {
            return oci_error(404, "NAME_UNKNOWN");
        }
        if let Some(repos) = s.only_in.get(rest)
            && !repos.iter().any(|r| r == repo)
        {
            let code = if kind == "blobs" {
                "BLOB_UNKNOWN"
            } else {
                "MANIFEST_UNKNOWN"
            };
            return oci_error(404, code);
        }
    }
    match kind {
        "manifests" => manifest(shared, method, repo, rest).await,
        "blobs" => {
            if method == "GET"
                && let Some(cdn) = &shared.cdn_url
            {
                if !shared.lock().blobs.contains_key(rest) {
                    return oci_error(404, "BLOB_UNKNOWN");
                }
                let mut r = resp(307, full(""));
                r.headers_mut().insert(
                    "location",
                    format!("{cdn}/blobs/{rest}?sig=xyz").parse().expect("hv"),
                );
                return r;
            }
            serve_blob(shared, rest, method, headers).await
        }
        "tags" => tags(shared, repo, query),
        "referrers" => {
            let Some(b) = shared
                .lock()
                .referrers
                .get(&(repo.to_owned(), rest.to_owned()))
                .cloned()
            else {
                return oci_error(404, "NAME_UNKNOWN");
            };
            let mut r = resp(200, full(b));
            r.headers_mut().insert(
                "content-type",
                "application/vnd.oci.image.index.v1+json"
                    .parse()
                    .expect("hv"),
            );
            r
        }
        _ => oci_error(404, "UNSUPPORTED"),
    }
}

fn corrupted(bytes: &Bytes) -> Bytes {
    let mut v = bytes.to_vec();
    for b in v.iter_mut().step_by(97) {
        *b ^= 0x55;
    }
    Bytes::from(v)
}

async fn manifest(shared: &Shared, method: &str, repo: &str, reference: &str) -> Response<Body> {
    let (m, corrupt, gate, limit) = {
        let mut s = shared.lock();
        if method == "GET"
            && let Some((_, rem)) = &mut s.rate_limit
        {
            *rem = rem.saturating_sub(1);
        }
        let limit = s.rate_limit;
        let digest = if reference.contains(':') {
            Some(reference.to_owned())
        } else {
            s.tags.get(repo).and_then(|t| t.get(reference)).cloned()
        };
        let m = digest.and_then(|d| s.blobs.get(&d).cloned());
        let corrupt = m
            .as_ref()
            .is_some_and(|m| s.corrupt.contains_key(&m.digest));
        (m, corrupt, s.manifest_gate.clone(), limit)
    };
    let Some(m) = m else {
        return oci_error(404, "MANIFEST_UNKNOWN");
    };
    if let Some(g) = gate {
        g.pass().await;
    }
    let bytes = if corrupt {
        corrupted(&m.bytes)
    } else {
        m.bytes.clone()
    };
    let len = bytes.len();
    let mut r = resp(
        200,
        if method == "HEAD" {
            full("")
        } else {
            full(bytes)
        },
    );
    let h = r.headers_mut();
    h.insert("content-type", m.media_type.parse().expect("hv"));
    h.insert("docker-content-digest", m.digest.parse().expect("hv"));
    h.insert("content-length", len.into());
    if let Some((l, rem)) = limit {
        h.insert(
            "ratelimit-limit",
            format!("{l};w=21600").parse().expect("hv"),
        );
        h.insert(
            "ratelimit-remaining",
            format!("{rem};w=21600").parse().expect("hv"),
        );
    }
    r
}

async fn serve_blob(
    shared: &Shared,
    digest: &str,
    method: &str,
    headers: &HeaderMap,
) -> Response<Body> {
    let (b, corrupt, truncate, throttle, gate) = {
        let s = shared.lock();
        let Some(b) = s.blobs.get(digest).cloned() else {
            return oci_error(404, "BLOB_UNKNOWN");
        };
        (
            b,
            s.corrupt.contains_key(digest),
            s.truncate.get(digest).copied(),
            s.throttle,
            s.blob_gate.clone(),
        )
    };
    let total = b.bytes.len();
    let mut bytes = if corrupt {
        corrupted(&b.bytes)
    } else {
        b.bytes.clone()
    };
    let mut status = 200;
    let mut content_range = None;
    if let Some(r) = headers
        .get("range")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        && let Some((a, e)) = r.split_once('-')
        && let Ok(a) = a.parse::<usize>()
        && a < total
    {
        let e = e.parse::<usize>().map_or(total, |e| (e + 1).min(total));
        bytes = bytes.slice(a..e);
        status = 206;
        content_range = Some(format!("bytes {a}-{}/{total}", e - 1));
    }
    let len = bytes.len();
    let body = if method == "HEAD" {
        full("")
    } else {
        let cut = truncate.map_or(len, |t| t.min(len));
        let chunk = throttle.map_or(64 * 1024, |(c, _)| c.max(1));
        let delay = throttle.map(|(_, d)| d);
        let pieces: Vec<Bytes> = (0..cut)
            .step_by(chunk)
            .map(|i| bytes.slice(i..(i + chunk).min(cut)))
            .collect();
        let truncated = cut < len;
        let stream = futures_util::stream::iter(pieces.into_iter().scan(0usize, |sent, p| {
            let before = *sent;
            *sent += p.len();
            Some((before, p))
        }))
        .then(move |(before, p)| {
            let gate = gate.clone();
            async move {
                if let Some(d) = delay {
                    tokio::time::sleep(d).await;
                }
                if let Some((after, g)) = &gate
                    && before >= *after
                    && before < after + p.len().max(1)
                {
                    g.pass().await;
                }
                Ok::<_, std::io::Error>(Frame::data(p))
            }
        })
        .chain(
            futures_util::stream::iter(truncated.then_some(())).then(|()| async {
                // Let what was sent reach the client before the connection dies.
                tokio::time::sleep(Duration::from_millis(50)).await;
                Err(std::io::Error::other("truncated on purpose"))
            }),
        );
        BodyExt::boxed(StreamBody::new(stream))
    };
    let mut r = resp(status, body);
    let h = r.headers_mut();
    h.insert(
        "content-type",
        "application/octet-stream".parse().expect("hv"),
    );
    h.insert("docker-content-digest", b.digest.parse().expect("hv"));
    h.insert("content-length", len.into());
    if let Some(cr) = content_range {
        h.insert("content-range", cr.parse().expect("hv"));
    }
    r
}

fn tags(shared: &Shared, repo: &str, query: &str) -> Response<Body> {
    let all: Vec<String> = shared
        .lock()
        .tags
        .get(repo)
        .map(|t| t.keys().cloned().collect())
        .unwrap_or_default();
    let mut n = None;
    let mut last = None;
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "n" => n = v.parse::<usize>().ok(),
            "last" => last = Some(v.into_owned()),
            _ => {}
        }
    }
    let after: Vec<&String> = all
        .iter()
        .filter(|t| last.as_ref().is_none_or(|l| *t > l))
        .collect();
    let page: Vec<&String> = after
        .iter()
        .take(n.unwrap_or(usize::MAX))
        .copied()
        .collect();
    let body = serde_json::json!({ "name": repo, "tags": page }).to_string();
    let mut r = resp(200, full(body));
    r.headers_mut()
        .insert("content-type", "application/json".parse().expect("hv"));
    if let (Some(n), Some(l)) = (n, page.last())
        && after.len() > page.len()
    {
        let link = format!("</v2/{repo}/tags/list?n={n}&last={l}>; rel=\"next\"");
        r.headers_mut().insert("link", link.parse().expect("hv"));
    }
    r
}
