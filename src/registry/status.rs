//! The status page: `GET /` and `/status` (server-rendered HTML that works
//! without JavaScript; a small inline script refreshes it in place every few
//! seconds) and `GET /status.json` (the same data).
//!
//! It answers the questions an operator asks every day: is each upstream
//! healthy (breaker, last error, latency, rate-limit headroom), what is the
//! cache saving (hit ratio and bytes over the last hour and since start),
//! what is downloading now, what takes the space, who pulled what.
//!
//! Access: `[server] status` switches it and the listener's `allow`
//! applies, as for `/metrics`; with `[auth]` the viewer must also be a
//! client the registry API would serve, and an anonymous one does not see
//! private repositories (nor those of upstreams no longer configured),
//! who pulled, or why a reload was refused. No external assets: one document, its CSS
//! and script inline, held to them by a Content-Security-Policy.

use std::fmt::Write as _;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{Response, StatusCode, header};
use serde::Serialize;

use super::activity::{CacheWork, Pull};
use super::response::{self, set};
use super::{Body, Registry, Routes};
use crate::store::{Usage, UsageRow};

/// How long the store usage (which reads every record) is reused while
/// the store's size stays the same.
const USAGE_FRESH: Duration = Duration::from_secs(60);
/// How long it is reused at least, whatever changes: one count at a time,
/// at most this often, however many viewers refresh.
const USAGE_MIN_AGE: Duration = Duration::from_secs(5);
/// How long after a failed count none is tried.
const USAGE_RETRY: Duration = Duration::from_secs(60);
/// How long a request waits for a usage refresh before it answers with
/// what it has.
const USAGE_WAIT: Duration = Duration::from_secs(2);
/// Repositories listed by size.
const LARGEST: usize = 10;
/// How often the page refreshes itself, in milliseconds.
const REFRESH_MS: u32 = 3000;

/// A store usage count: when it started, the store's size then, how long
/// it took, the count.
type Counted = (Instant, u64, Duration, Arc<Usage>);

/// A count is reused at least this many times as long as it took, so that
/// counting a large store (or a bucket, by LIST) stays a small share of
/// the work whoever watches the page.
const USAGE_COST_FACTOR: u32 = 20;

/// A listener as the page lists it.
#[derive(Debug, Clone, Serialize)]
pub struct ListenerInfo {
    /// Its bound address.
    pub addr: String,
    /// `https` or `http`.
    pub scheme: &'static str,
    /// The upstream it is pinned to.
    pub upstream: Option<String>,
}

/// The page's own state in the registry.
#[derive(Debug)]
pub(super) struct State {
    started: SystemTime,
    listeners: Mutex<Vec<ListenerInfo>>,
    /// The last store usage: when it was counted, the store's size then,
    /// the count; a refresh in flight sends the next one.
    usage: Arc<tokio::sync::watch::Sender<Option<Counted>>>,
    refreshing: Arc<std::sync::atomic::AtomicBool>,
    /// When the last count failed: none is tried again for
    /// [`USAGE_RETRY`] (a failing bucket is not listed every refresh).
    failed_at: Arc<Mutex<Option<Instant>>>,
    /// The last reload: when, and its error if it was refused.
    last_reload: Mutex<Option<(SystemTime, Option<String>)>>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            started: SystemTime::now(),
            listeners: Mutex::default(),
            usage: Arc::new(tokio::sync::watch::Sender::new(None)),
            refreshing: Arc::default(),
            failed_at: Arc::default(),
            last_reload: Mutex::default(),
        }
    }
}

/// Everything the page shows (`/status.json`).
#[derive(Debug, Serialize)]
pub struct Report {
    /// mirrorgate's version.
    pub version: &'static str,
    /// When it started, in seconds since the Unix epoch.
    pub started_at: u64,
    /// Seconds since.
    pub uptime_seconds: u64,
    /// Client listeners.
    pub listeners: Vec<ListenerInfo>,
    /// Each upstream.
    pub upstreams: Vec<UpstreamStatus>,
    /// What the cache did.
    pub cache: CacheReport,
    /// The store.
    pub store: StoreStatus,
    /// Blob downloads under way.
    pub downloads: Vec<DownloadStatus>,
    /// Pushes under way: the upload sessions of hosted namespaces.
    pub uploads: Vec<UploadStatus>,
    /// The repositories that take the most space.
    pub largest_repositories: Vec<UsageRow>,
    /// The latest pulls, newest first.
    pub recent_pulls: Vec<Pull>,
    /// Config reloads.
    pub config: ConfigStatus,
}

/// An upload session of a hosted namespace.
#[derive(Debug, Serialize)]
pub struct UploadStatus {
    /// `<namespace>/<repository>` (hidden from anonymous viewers when
    /// private).
    pub repository: Option<String>,
    /// Bytes received so far.
    pub received: u64,
    /// Seconds since bytes last arrived.
    pub idle_seconds: u64,
}

/// One upstream's health.
#[derive(Debug, Serialize)]
pub struct UpstreamStatus {
    /// Its name.
    pub name: String,
    /// Its URL.
    pub url: String,
    /// Whether it serves requests that name no upstream.
    pub default: bool,
    /// `closed` (requests go through) or `open` (failing fast).
    pub breaker: &'static str,
    /// Its latest failure.
    pub last_error: Option<ErrorStatus>,
    /// Time to its answers' heads.
    pub latency: LatencyStatus,
    /// Its rate-limit headers, when it sends them.
    pub rate_limit: Option<RateLimitStatus>,
    /// Tokens fetched from its token service.
    pub token_fetches: u64,
    /// Its manifests and blobs since start, by where they came from.
    pub since_start: CacheWork,
}

/// A failure.
#[derive(Debug, Serialize)]
pub struct ErrorStatus {
    /// When, in seconds since the Unix epoch.
    pub at: u64,
    /// The repository asked for (absent where the viewer may not see it).
    pub repository: Option<String>,
    /// What happened (a placeholder where the viewer may not see it).
    pub message: String,
}

/// Latency of an upstream's answered requests.
#[derive(Debug, Serialize)]
pub struct LatencyStatus {
    /// Requests answered.
    pub requests: u64,
    /// Mean, in milliseconds.
    pub mean_ms: f64,
    /// The bucket 95% were under, in milliseconds.
    pub p95_under_ms: Option<f64>,
    /// The latest, in milliseconds.
    pub last_ms: f64,
}

/// Rate-limit headroom.
#[derive(Debug, Serialize)]
pub struct RateLimitStatus {
    /// Pulls per window.
    pub limit: u64,
    /// Left in the window.
    pub remaining: u64,
    /// The window, in seconds.
    pub window_seconds: Option<u64>,
}

/// The cache's work over two spans.
#[derive(Debug, Serialize)]
pub struct CacheReport {
    /// The last hour.
    pub last_hour: Span,
    /// Since start.
    pub since_start: Span,
}

/// The cache's work over one span.
#[derive(Debug, Serialize)]
pub struct Span {
    /// The counts.
    #[serde(flatten)]
    pub work: CacheWork,
    /// The share of requests answered from the cache.
    pub hit_ratio: Option<f64>,
}

impl From<CacheWork> for Span {
    fn from(work: CacheWork) -> Self {
        Self {
            hit_ratio: work.hit_ratio(),
            work,
        }
    }
}

/// The store.
#[derive(Debug, Serialize)]
pub struct StoreStatus {
    /// Where it is.
    pub backend: String,
    /// Bytes of stored blobs (the local tier's, with S3).
    pub bytes: u64,
    /// `[storage] max_size`.
    pub max_bytes: Option<u64>,
    /// Blobs evicted since start.
    pub evictions: u64,
    /// Every stored blob's bytes, as the last usage count found them.
    pub counted_bytes: Option<u64>,
    /// Stored blobs, as counted.
    pub counted_blobs: Option<usize>,
    /// How old that count is, in seconds.
    pub counted_seconds_ago: Option<u64>,
    /// The bucket's calls, with the S3 backend.
    pub s3: Option<S3Status>,
}

/// The bucket's health.
#[derive(Debug, Serialize)]
pub struct S3Status {
    /// `closed` or `open`.
    pub breaker: &'static str,
    /// Calls sent.
    pub calls: u64,
    /// Of which failed (not counting S3's designed answers: not found, a
    /// lost conditional write).
    pub errors: u64,
}

/// A download under way.
#[derive(Debug, Serialize)]
pub struct DownloadStatus {
    /// The blob.
    pub digest: String,
    /// Its upstream.
    pub upstream: Option<String>,
    /// Its repository.
    pub repository: Option<String>,
    /// Bytes received.
    pub received: u64,
    /// Its size, if announced.
    pub size: Option<u64>,
    /// Seconds since it started.
    pub seconds: f64,
}

/// Config reloads.
#[derive(Debug, Serialize)]
pub struct ConfigStatus {
    /// Applied.
    pub reloads: u64,
    /// Refused.
    pub refused: u64,
    /// The last one, in seconds since the Unix epoch.
    pub last_reload_at: Option<u64>,
    /// Its error, when it was refused.
    pub last_reload_error: Option<String>,
}

/// Clears the refresh flag when dropped.
struct Refreshing(Arc<std::sync::atomic::AtomicBool>);

impl Drop for Refreshing {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Registry {
    /// Lists the bound client listeners on the status page.
    pub fn set_listeners(&self, listeners: Vec<ListenerInfo>) {
        *self
            .status
            .listeners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = listeners;
    }

    /// Notes a config reload on the status page and in the metrics:
    /// applied, or refused with its reason.
    pub fn note_reload(&self, outcome: Result<(), String>) {
        self.metrics.reloaded(outcome.is_ok());
        *self
            .status
            .last_reload
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some((SystemTime::now(), outcome.err()));
    }

    /// The store usage: counted again when the store's size changed since
    /// the last count (at most every [`USAGE_MIN_AGE`]) or that count is
    /// [`USAGE_FRESH`] old (both at least [`USAGE_COST_FACTOR`] times what
    /// the last count took), when the new count comes within [`USAGE_WAIT`];
    /// the last one (or none) otherwise. The count runs in its own task, so
    /// a slow store never holds a request long, and one count serves every
    /// viewer.
    async fn usage(&self) -> Option<Counted> {
        let state = &self.status;
        let size = self.mirror.stored_bytes();
        let fresh = |v: &Option<Counted>| {
            v.as_ref().is_some_and(|(at, then, took, _)| {
                let cost = *took * USAGE_COST_FACTOR;
                let age = at.elapsed();
                age < USAGE_MIN_AGE.max(cost) || (age < USAGE_FRESH.max(cost) && *then == size)
            })
        };
        let mut rx = state.usage.subscribe();
        let failed_recently = state
            .failed_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some_and(|t| t.elapsed() < USAGE_RETRY);
        if fresh(&rx.borrow_and_update()) || failed_recently {
            return rx.borrow().clone();
        }
        if !state
            .refreshing
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            let (mirror, tx) = (self.mirror.clone(), state.usage.clone());
            let failed_at = state.failed_at.clone();
            // Cleared however the count ends (an error, a panic, a
            // runtime shutting down), so the next viewer can start one.
            let refreshing = Refreshing(state.refreshing.clone());
            tokio::spawn(async move {
                let _refreshing = refreshing;
                let (at, size) = (Instant::now(), mirror.stored_bytes());
                match mirror.usage().await {
                    Ok(u) => {
                        tx.send_replace(Some((at, size, at.elapsed(), Arc::new(u))));
                    }
                    Err(e) => {
                        *failed_at
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) =
                            Some(Instant::now());
                        tracing::warn!(error = %crate::error_chain(&e), "cannot count the store's usage for the status page");
                    }
                }
            });
        }
        let _ = tokio::time::timeout(USAGE_WAIT, rx.changed()).await;
        rx.borrow().clone()
    }

    /// Gathers the page's data; `reads_private`: whether the viewer may
    /// see repositories marked private.
    pub(super) async fn status_report(&self, routes: &Routes, reads_private: bool) -> Report {
        let now = SystemTime::now();
        // What an anonymous viewer (with `[auth]`) may not see: private
        // repositories, and those of upstreams no longer configured (whose
        // rules are gone with them).
        let hidden = |upstream: &str, repo: &str| {
            !reads_private
                && routes
                    .policy
                    .rules
                    .iter()
                    .find(|(id, _)| id.as_str() == upstream)
                    .is_none_or(|(_, r)| crate::access::any_match(&r.private, repo))
        };
        let by_upstream = self.metrics.cache_work_by_upstream();
        let upstreams = self
            .mirror
            .upstreams()
            .iter()
            .map(|u| {
                let (c, s) = (u.client(), u.client().stats());
                let l = s.latency();
                UpstreamStatus {
                    name: u.config().id.to_string(),
                    url: u.config().url.to_string(),
                    default: u.config().default,
                    breaker: if c.is_down() { "open" } else { "closed" },
                    last_error: s.last_error().map(|e| {
                        if hidden(u.config().id.as_str(), &e.repository) {
                            ErrorStatus {
                                at: unix(e.at),
                                repository: None,
                                message: "a request for a private repository failed (see the log)"
                                    .to_owned(),
                            }
                        } else {
                            ErrorStatus {
                                at: unix(e.at),
                                repository: Some(e.repository),
                                message: e.message,
                            }
                        }
                    }),
                    latency: LatencyStatus {
                        requests: l.count,
                        mean_ms: l.mean_s * 1000.0,
                        p95_under_ms: l.p95_le_s.map(|s| s * 1000.0),
                        last_ms: l.last_s * 1000.0,
                    },
                    rate_limit: s.rate_limit().map(|r| RateLimitStatus {
                        limit: r.limit,
                        remaining: r.remaining,
                        window_seconds: r.window_s,
                    }),
                    token_fetches: s.tokens(),
                    since_start: by_upstream
                        .get(u.config().id.as_str())
                        .copied()
                        .unwrap_or_default(),
                }
            })
            .collect();
        let usage = self.usage().await;
        let mut largest: Vec<UsageRow> = usage
            .as_ref()
            .map(|(_, _, _, u)| u.repositories.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|r| !hidden(&r.upstream, &r.repository))
            .collect();
        largest.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.repository.cmp(&b.repository)));
        largest.truncate(LARGEST);
        let downloads = self
            .mirror
            .downloads()
            .into_iter()
            .map(|d| {
                let (upstream, repository) = match d.origin {
                    Some((u, r)) if !hidden(&u, &r) => (Some(u), Some(r)),
                    Some((u, _)) => (Some(u), None),
                    None => (None, None),
                };
                DownloadStatus {
                    digest: d.digest.to_string(),
                    upstream,
                    repository,
                    received: d.received,
                    size: d.size,
                    seconds: d.elapsed.as_secs_f64(),
                }
            })
            .collect();
        let uploads = match self.hosted.store().uploads().list().await {
            Ok(list) => list
                .into_iter()
                .map(|u| UploadStatus {
                    repository: (!hidden(&u.state.ns, &u.state.repo))
                        .then(|| format!("{}/{}", u.state.ns, u.state.repo)),
                    received: u.size,
                    idle_seconds: now.duration_since(u.touched).map_or(0, |d| d.as_secs()),
                })
                .collect(),
            Err(e) => {
                tracing::warn!(error = %crate::error_chain(&e), "cannot list upload sessions");
                Vec::new()
            }
        };
        let (reloads, refused) = self.metrics.reloads();
        let last_reload = self
            .status
            .last_reload
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        Report {
            version: env!("CARGO_PKG_VERSION"),
            started_at: unix(self.status.started),
            uptime_seconds: now
                .duration_since(self.status.started)
                .map_or(0, |d| d.as_secs()),
            listeners: self
                .status
                .listeners
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
            upstreams,
            cache: CacheReport {
                last_hour: self.metrics.activity().last_hour(unix(now)).into(),
                since_start: by_upstream
                    .values()
                    .fold(CacheWork::default(), |mut a, w| {
                        a.merge(w);
                        a
                    })
                    .into(),
            },
            store: StoreStatus {
                backend: self.mirror.store_description(),
                bytes: self.mirror.stored_bytes(),
                max_bytes: routes.setup.as_ref().and_then(|c| c.max_size),
                evictions: self.mirror.evictions(),
                counted_bytes: usage.as_ref().map(|(_, _, _, u)| u.total_bytes),
                counted_blobs: usage.as_ref().map(|(_, _, _, u)| u.blobs),
                counted_seconds_ago: usage.as_ref().map(|(at, _, _, _)| at.elapsed().as_secs()),
                s3: self.mirror.s3_calls().map(|c| {
                    let counts = c.counts();
                    let sum = |pick: &dyn Fn(&str) -> bool| {
                        counts
                            .iter()
                            .filter(|(_, r, _)| pick(r))
                            .map(|(_, _, n)| n)
                            .sum()
                    };
                    S3Status {
                        breaker: if c.circuit_open() { "open" } else { "closed" },
                        calls: sum(&|r| r != "circuit_open"),
                        errors: sum(&|r| r == "error"),
                    }
                }),
            },
            downloads,
            uploads,
            largest_repositories: largest,
            recent_pulls: self
                .metrics
                .activity()
                .pulls()
                .into_iter()
                .filter(|p| !hidden(&p.upstream, &p.repository))
                // Who pulled is for users, not anonymous viewers.
                .map(|p| {
                    if reads_private {
                        p
                    } else {
                        Pull {
                            client: None,
                            user: None,
                            ..p
                        }
                    }
                })
                .collect(),
            config: ConfigStatus {
                reloads,
                refused,
                last_reload_at: last_reload.as_ref().map(|(at, _)| unix(*at)),
                // Why a file was refused may quote it: users only.
                last_reload_error: last_reload.and_then(|(_, e)| e).map(|e| {
                    if reads_private {
                        e
                    } else {
                        "refused (see the server log)".to_owned()
                    }
                }),
            },
        }
    }

    /// `GET /`, `/status` (HTML) and `/status.json`.
    pub(super) async fn status_page(
        &self,
        routes: &Routes,
        json: bool,
        head: bool,
        reads_private: bool,
    ) -> Response<Body> {
        let report = self.status_report(routes, reads_private).await;
        let (text, kind) = if json {
            (
                serde_json::to_string_pretty(&report).unwrap_or_default(),
                "application/json",
            )
        } else {
            (
                render(&report, SystemTime::now()),
                "text/html; charset=utf-8",
            )
        };
        let len = text.len();
        let body = if head {
            response::empty()
        } else {
            response::full(Bytes::from(text))
        };
        let mut r = response::with_body(StatusCode::OK, body);
        set(&mut r, header::CONTENT_TYPE, kind);
        set(&mut r, header::CACHE_CONTROL, "no-store");
        set(&mut r, "x-content-type-options", "nosniff");
        if !json {
            set(&mut r, header::CONTENT_SECURITY_POLICY, &CSP);
            set(&mut r, "x-frame-options", "DENY");
            set(&mut r, "referrer-policy", "no-referrer");
        }
        r.headers_mut().insert(header::CONTENT_LENGTH, len.into());
        r
    }
}

/// The refresh script: fetches the page again and swaps its `<main>`; on a
/// failure it marks the page stale and tries again later.
static SCRIPT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "(function(){{\
var s=document.getElementById('live');\
async function tick(){{\
try{{var r=await fetch(location.pathname,{{cache:'no-store',credentials:'same-origin'}});\
if(!r.ok)throw new Error(r.status);\
var d=new DOMParser().parseFromString(await r.text(),'text/html');\
var m=d.querySelector('main');if(m){{document.querySelector('main').replaceWith(m);}}\
s.textContent='live';s.className='live';}}\
catch(e){{s.textContent='not updating';s.className='stale';}}\
setTimeout(tick,{REFRESH_MS});}}\
setTimeout(tick,{REFRESH_MS});}})();"
    )
});

/// Only the page's own inline style and (by its hash) script; fetches to
/// this origin only.
static CSP: LazyLock<String> = LazyLock::new(|| {
    use base64::Engine as _;
    use sha2::Digest as _;
    let hash =
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(SCRIPT.as_bytes()));
    format!(
        "default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{hash}'; \
         connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'"
    )
});

const STYLE: &str = "\
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}\
header{background:#1d2330;color:#fff;padding:12px 24px;display:flex;gap:24px;align-items:baseline;flex-wrap:wrap}\
header h1{font-size:20px;margin:0}header a{color:#9cc3ff}\
main{padding:8px 24px 24px}section{background:#fff;border:1px solid #dde1e7;border-radius:6px;margin:16px 0;padding:8px 16px}\
h2{font-size:16px;margin:8px 0}table{border-collapse:collapse;width:100%}\
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eef0f3;vertical-align:top}\
th{font-weight:600;color:#5a6272}td.n{text-align:right;font-variant-numeric:tabular-nums}\
.ok{color:#137333}.bad{color:#b3261e;font-weight:600}.warn{color:#8a5a00}\
.muted{color:#6b7280}.live{color:#9be59b}.stale{color:#ffb4ab}\
code{font-size:12px}progress{width:160px}\
.cards{display:flex;gap:16px;flex-wrap:wrap}.card{flex:1;min-width:220px}\
.big{font-size:24px;font-weight:600}";

/// Escapes text for HTML content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `1.5 MiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `3 min ago`.
fn ago(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs} s ago"),
        60..=3599 => format!("{} min ago", secs / 60),
        3600..=86_399 => format!("{} h ago", secs / 3600),
        _ => format!("{} d ago", secs / 86_400),
    }
}

fn duration(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs} s"),
        60..=3599 => format!("{} min", secs / 60),
        3600..=86_399 => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
        _ => format!("{} d {} h", secs / 86_400, secs % 86_400 / 3600),
    }
}

fn ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "–".to_owned(), |r| format!("{:.1}%", r * 100.0))
}

/// The page, as of `now`.
fn render(r: &Report, now: SystemTime) -> String {
    let now = unix(now);
    let mut h = String::with_capacity(16 * 1024);
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
<title>mirrorgate status</title><style>{STYLE}</style>\
<noscript><meta http-equiv=\"refresh\" content=\"10\"></noscript></head><body>\
<header><h1>mirrorgate</h1><span>version {}</span><span id=\"live\" class=\"muted\">static</span>\
<span><a href=\"/status.json\">status.json</a> · <a href=\"/metrics\">metrics</a></span></header><main>",
        esc(r.version)
    );
    let stamp =
        humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_secs(now));
    let _ = write!(
        h,
        "<p class=\"muted\" id=\"summary\">Up {}; {} upstream(s); as of \
<time datetime=\"{stamp}\">{}</time> UTC.</p>",
        duration(r.uptime_seconds),
        r.upstreams.len(),
        stamp.to_string().replace('T', " ").trim_end_matches('Z'),
    );
    render_cache(&mut h, r);
    render_upstreams(&mut h, r, now);
    render_downloads(&mut h, r);
    render_uploads(&mut h, r);
    render_pulls(&mut h, r, now);
    render_store(&mut h, r);
    render_listeners(&mut h, r, now);
    let _ = write!(h, "</main><script>{}</script></body></html>", &*SCRIPT);
    h
}

fn render_cache(h: &mut String, r: &Report) {
    h.push_str("<section id=\"cache\"><h2>Cache</h2><div class=\"cards\">");
    for (id, title, s) in [
        ("last-hour", "Last hour", &r.cache.last_hour),
        ("since-start", "Since start", &r.cache.since_start),
    ] {
        let w = &s.work;
        let _ = write!(
            h,
            "<div class=\"card\" id=\"{id}\"><h3>{title}</h3>\
<div class=\"big\" data-hit-ratio>{}</div><div class=\"muted\">hit ratio</div>\
<table><tr><th></th><th class=\"n\">requests</th><th class=\"n\">bytes</th></tr>\
<tr><td>from the cache (saved)</td><td class=\"n\" data-requests-cache>{}</td><td class=\"n\" data-bytes-cache>{}</td></tr>\
<tr><td>fetched upstream</td><td class=\"n\" data-requests-upstream>{}</td><td class=\"n\" data-bytes-upstream>{}</td></tr>\
</table></div>",
            ratio(s.hit_ratio),
            w.requests_from_cache,
            bytes(w.bytes_from_cache),
            w.requests_from_upstream,
            bytes(w.bytes_from_upstream),
        );
    }
    h.push_str("</div></section>");
}

fn render_upstreams(h: &mut String, r: &Report, now: u64) {
    h.push_str(
        "<section id=\"upstreams\"><h2>Upstreams</h2><table><thead><tr><th>name</th><th>url</th>\
<th>breaker</th><th class=\"n\">latency (last / mean / p95)</th><th>rate limit</th>\
<th class=\"n\">from cache / upstream</th><th>last error</th></tr></thead><tbody>",
    );
    for u in &r.upstreams {
        let breaker = if u.breaker == "open" {
            "<span class=\"bad\">open</span>"
        } else {
            "<span class=\"ok\">closed</span>"
        };
        let latency = if u.latency.requests == 0 {
            "<span class=\"muted\">no requests yet</span>".to_owned()
        } else {
            format!(
                "{:.0} / {:.0} / {} ms",
                u.latency.last_ms,
                u.latency.mean_ms,
                u.latency
                    .p95_under_ms
                    .map_or_else(|| "&gt;10000".to_owned(), |p| format!("≤{p:.0}"))
            )
        };
        let rate = match &u.rate_limit {
            None => "<span class=\"muted\">not sent</span>".to_owned(),
            Some(rl) => {
                let class = if rl.remaining.saturating_mul(10) < rl.limit {
                    "bad"
                } else if rl.remaining.saturating_mul(4) < rl.limit {
                    "warn"
                } else {
                    "ok"
                };
                format!(
                    "<span class=\"{class}\" data-remaining=\"{}\">{} of {} left</span>{}",
                    rl.remaining,
                    rl.remaining,
                    rl.limit,
                    rl.window_seconds
                        .map(|w| format!(" <span class=\"muted\">per {}</span>", duration(w)))
                        .unwrap_or_default()
                )
            }
        };
        let error = match &u.last_error {
            None => "<span class=\"muted\">none</span>".to_owned(),
            Some(e) => format!(
                "<span class=\"warn\">{}</span>: {}{}",
                ago(now.saturating_sub(e.at)),
                e.repository
                    .as_deref()
                    .map(|r| format!("<code>{}</code>: ", esc(r)))
                    .unwrap_or_default(),
                esc(&e.message)
            ),
        };
        let _ = write!(
            h,
            "<tr data-upstream=\"{name}\" data-breaker=\"{b}\"><td><b>{name}</b>{default}</td><td><code>{url}</code></td>\
<td>{breaker}</td><td class=\"n\">{latency}</td><td>{rate}</td><td class=\"n\">{} / {}</td><td>{error}</td></tr>",
            bytes(u.since_start.bytes_from_cache),
            bytes(u.since_start.bytes_from_upstream),
            name = esc(&u.name),
            b = u.breaker,
            default = if u.default {
                " <span class=\"muted\">(default)</span>"
            } else {
                ""
            },
            url = esc(&u.url),
        );
    }
    h.push_str("</tbody></table></section>");
}

fn render_downloads(h: &mut String, r: &Report) {
    h.push_str("<section id=\"downloads\"><h2>Downloads in progress</h2>");
    if r.downloads.is_empty() {
        h.push_str("<p class=\"muted\">None.</p></section>");
        return;
    }
    h.push_str(
        "<table><thead><tr><th>blob</th><th>from</th><th>progress</th><th class=\"n\">received</th>\
<th class=\"n\">rate</th></tr></thead><tbody>",
    );
    for d in &r.downloads {
        let from = match (&d.upstream, &d.repository) {
            (Some(u), Some(repo)) => format!("{}/{}", esc(u), esc(repo)),
            (Some(u), None) => esc(u),
            _ => "<span class=\"muted\">starting</span>".to_owned(),
        };
        let progress = match d.size {
            Some(size) if size > 0 => format!(
                "<progress max=\"{size}\" value=\"{}\"></progress> {:.0}%",
                d.received,
                d.received as f64 * 100.0 / size as f64
            ),
            _ => "<progress></progress>".to_owned(),
        };
        let rate = if d.seconds > 0.0 {
            format!("{}/s", bytes((d.received as f64 / d.seconds) as u64))
        } else {
            String::new()
        };
        let _ = write!(
            h,
            "<tr><td><code title=\"{digest}\">{short}</code></td><td>{from}</td><td>{progress}</td>\
<td class=\"n\">{} of {}</td><td class=\"n\">{rate}</td></tr>",
            bytes(d.received),
            d.size.map_or_else(|| "?".to_owned(), bytes),
            digest = esc(&d.digest),
            short = esc(d.digest.get(..19).unwrap_or(&d.digest)),
        );
    }
    h.push_str("</tbody></table></section>");
}

fn render_uploads(h: &mut String, r: &Report) {
    if r.uploads.is_empty() {
        // Nothing to say on a mirror that nobody pushes to.
        return;
    }
    h.push_str(
        "<section id=\"uploads\"><h2>Pushes in progress</h2><table><thead><tr>\
<th>repository</th><th class=\"n\">received</th><th class=\"n\">idle</th></tr></thead><tbody>",
    );
    for u in &r.uploads {
        let repo = u
            .repository
            .as_deref()
            .map_or_else(|| "<span class=\"muted\">private</span>".to_owned(), esc);
        let _ = write!(
            h,
            "<tr><td>{repo}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            bytes(u.received),
            duration(u.idle_seconds),
        );
    }
    h.push_str("</tbody></table></section>");
}

fn render_pulls(h: &mut String, r: &Report, now: u64) {
    h.push_str("<section id=\"pulls\"><h2>Recent pulls</h2>");
    if r.recent_pulls.is_empty() {
        h.push_str("<p class=\"muted\">None since start.</p></section>");
        return;
    }
    h.push_str(
        "<table><thead><tr><th>when</th><th>image</th><th>client</th><th class=\"n\">manifests</th>\
<th class=\"n\">blobs</th><th class=\"n\">bytes</th><th class=\"n\">from cache</th></tr></thead><tbody>",
    );
    for p in &r.recent_pulls {
        let sep = if p.reference.contains(':') { "@" } else { ":" };
        let image = format!("{}/{}{sep}{}", p.upstream, p.repository, p.reference);
        let cached = if p.bytes == 0 {
            if p.fetched_upstream { "0%" } else { "100%" }.to_owned()
        } else {
            format!("{:.0}%", p.bytes_from_cache as f64 * 100.0 / p.bytes as f64)
        };
        let client = match (&p.user, p.client) {
            (Some(u), Some(ip)) => format!("{} ({ip})", esc(u)),
            (Some(u), None) => esc(u),
            (None, Some(ip)) => ip.to_string(),
            (None, None) => "<span class=\"muted\">hidden</span>".to_owned(),
        };
        let _ = write!(
            h,
            "<tr data-image=\"{image}\"><td>{when}</td><td><code>{image}</code></td><td>{client}</td>\
<td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{cached}</td></tr>",
            p.manifests,
            p.blobs,
            bytes(p.bytes),
            when = ago(now.saturating_sub(p.last)),
            image = esc(&image),
        );
    }
    h.push_str("</tbody></table></section>");
}

fn render_store(h: &mut String, r: &Report) {
    let s = &r.store;
    let bound = s
        .max_bytes
        .map(|m| {
            format!(
                " of {} ({:.0}%)",
                bytes(m),
                s.bytes as f64 * 100.0 / m.max(1) as f64
            )
        })
        .unwrap_or_default();
    let counted = match (s.counted_bytes, s.counted_blobs, s.counted_seconds_ago) {
        (Some(b), Some(n), Some(ago_s)) => {
            format!("; {} in {n} blobs, counted {}", bytes(b), ago(ago_s))
        }
        _ => "; not counted yet".to_owned(),
    };
    let _ = write!(
        h,
        "<section id=\"store\"><h2>Store</h2><p><code>{}</code>: {}{bound}; {} evicted since start{counted}.</p>",
        esc(&s.backend),
        bytes(s.bytes),
        s.evictions,
    );
    if let Some(b) = &s.s3 {
        let state = if b.breaker == "open" {
            "<span class=\"bad\">open</span>"
        } else {
            "<span class=\"ok\">closed</span>"
        };
        let _ = write!(
            h,
            "<p id=\"s3\">Bucket: breaker {state}; {} calls, {} failed.</p>",
            b.calls, b.errors
        );
    }
    if r.largest_repositories.is_empty() {
        h.push_str("<p class=\"muted\">No images stored yet.</p>");
    } else {
        h.push_str(
            "<h3>Largest repositories</h3><table id=\"largest\"><thead><tr><th>repository</th>\
<th class=\"n\">size</th><th class=\"n\">blobs</th></tr></thead><tbody>",
        );
        for row in &r.largest_repositories {
            let _ = write!(
                h,
                "<tr><td><code>{}/{}</code></td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                esc(&row.upstream),
                esc(&row.repository),
                bytes(row.bytes),
                row.blobs
            );
        }
        h.push_str("</tbody></table>");
    }
    h.push_str("</section>");
}

fn render_listeners(h: &mut String, r: &Report, now: u64) {
    h.push_str(
        "<section id=\"listeners\"><h2>Listeners</h2><table><thead><tr><th>address</th>\
<th>scheme</th><th>upstream</th></tr></thead><tbody>",
    );
    for l in &r.listeners {
        let _ = write!(
            h,
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
            esc(&l.addr),
            l.scheme,
            l.upstream.as_deref().map_or_else(
                || "any (by ?ns=, path prefix, host; else the default)".to_owned(),
                esc
            )
        );
    }
    h.push_str("</tbody></table>");
    let c = &r.config;
    let last = match (&c.last_reload_at, &c.last_reload_error) {
        (None, _) => "never reloaded".to_owned(),
        (Some(at), None) => format!("last reload {} applied", ago(now.saturating_sub(*at))),
        (Some(at), Some(e)) => format!(
            "<span class=\"bad\">last reload {} refused</span>: {}",
            ago(now.saturating_sub(*at)),
            esc(e)
        ),
    };
    let _ = write!(
        h,
        "<p class=\"muted\" id=\"config\">Config: {} reload(s) applied, {} refused; {last}.</p></section>",
        c.reloads, c.refused
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_sizes_read_well() {
        assert_eq!(
            esc("<script>\"a\" & 'b'</script>"),
            "&lt;script&gt;&quot;a&quot; &amp; &#39;b&#39;&lt;/script&gt;"
        );
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 << 20), "3.0 MiB");
        assert_eq!(ago(61), "1 min ago");
        assert_eq!(ratio(Some(0.5)), "50.0%");
        assert_eq!(ratio(None), "–");
    }

    #[test]
    fn the_page_s_one_script_is_the_one_its_policy_allows() {
        use base64::Engine as _;
        use sha2::Digest as _;
        let report = Report {
            version: "0",
            started_at: 0,
            uptime_seconds: 0,
            listeners: Vec::new(),
            upstreams: Vec::new(),
            cache: CacheReport {
                last_hour: CacheWork::default().into(),
                since_start: CacheWork::default().into(),
            },
            store: StoreStatus {
                backend: "<dir>".to_owned(),
                bytes: 0,
                max_bytes: None,
                evictions: 0,
                counted_bytes: None,
                counted_blobs: None,
                counted_seconds_ago: None,
                s3: None,
            },
            downloads: Vec::new(),
            uploads: vec![UploadStatus {
                repository: Some("<b>local/app</b>".to_owned()),
                received: 1,
                idle_seconds: 2,
            }],
            largest_repositories: Vec::new(),
            recent_pulls: Vec::new(),
            config: ConfigStatus {
                reloads: 0,
                refused: 1,
                last_reload_at: Some(0),
                last_reload_error: Some("<script>alert(1)</script>".to_owned()),
            },
        };
        let page = render(&report, SystemTime::UNIX_EPOCH);
        // Exactly one script, and the policy names its hash.
        assert_eq!(page.matches("<script>").count(), 1, "{page}");
        let body = page
            .split_once("<script>")
            .and_then(|(_, rest)| rest.split_once("</script>"))
            .map(|(b, _)| b)
            .unwrap();
        let hash = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(body));
        assert!(
            CSP.contains(&format!("script-src 'sha256-{hash}'")),
            "{}",
            *CSP
        );
        assert!(CSP.contains("default-src 'none'") && !CSP.contains("unsafe-eval"));
        // Text from outside is escaped.
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(page.contains("&lt;b&gt;local/app&lt;/b&gt;"));
        assert!(page.contains("<code>&lt;dir&gt;</code>"));
    }
}
