//! Prometheus counters for the registry API, served at `GET /metrics`
//! (text exposition format 0.0.4). Plain atomics: recording costs a few
//! relaxed increments per request.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::mirror::CacheStatus;

/// Cache outcomes in exposition order (the last is "none": errors and
/// endpoints that do not touch the cache).
const OUTCOMES: [&str; 7] = [
    "hit",
    "miss",
    "coalesced",
    "stale",
    "pass",
    "redirect",
    "none",
];
/// Status classes.
const CLASSES: [&str; 4] = ["2xx", "3xx", "4xx", "5xx"];

/// The counters.
#[derive(Debug, Default)]
pub struct Metrics {
    by_outcome: [AtomicU64; OUTCOMES.len()],
    by_class: [AtomicU64; 4],
    bytes_sent: AtomicU64,
    aborted: AtomicU64,
    /// Requests being answered: counted by their [`Gauged`] guards.
    in_flight: Arc<AtomicU64>,
    /// Client connections accepted and not yet closed.
    connections: Arc<AtomicU64>,
    /// Requests and response bytes by upstream, endpoint kind and cache
    /// outcome (the upstreams are the configured ones, the kinds and
    /// outcomes fixed lists: the key space is bounded).
    by_upstream: std::sync::RwLock<ByUpstream>,
    /// The last hour and the recent pulls, for the status page.
    activity: super::activity::Activity,
    /// Config reloads that were applied, and refused.
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    /// Whether the last reload was applied (1 before any).
    last_reload_ok: std::sync::atomic::AtomicBool,
}

/// Endpoint kinds, as the access log names them.
const KINDS: [&str; 7] = [
    "ping",
    "catalog",
    "manifest",
    "blob",
    "tags",
    "referrers",
    "upload",
];

/// One upstream's counters by endpoint kind and cache outcome.
#[derive(Debug, Default)]
struct Table([[Pair; OUTCOMES.len()]; KINDS.len()]);

/// The tables by upstream name (the configured ones: bounded). Looked up
/// by `&str`, so recording allocates nothing once an upstream is seen.
type ByUpstream = std::collections::BTreeMap<String, Arc<Table>>;

/// A request count and its response bytes.
#[derive(Debug, Default)]
struct Pair {
    requests: AtomicU64,
    bytes: AtomicU64,
}

/// Counts one in-flight request or open connection until dropped, however
/// it ends (a response completed, a client gone mid-request, a shutdown).
#[derive(Debug)]
pub struct Gauged(Arc<AtomicU64>);

impl Gauged {
    fn new(gauge: &Arc<AtomicU64>) -> Self {
        gauge.fetch_add(1, Relaxed);
        Self(gauge.clone())
    }
}

impl Drop for Gauged {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

impl Metrics {
    /// The recent past: the last hour, the recent pulls.
    pub fn activity(&self) -> &super::activity::Activity {
        &self.activity
    }

    /// Counts a config reload: applied (`true`) or refused.
    pub fn reloaded(&self, ok: bool) {
        let n = if ok {
            &self.reloads_ok
        } else {
            &self.reloads_failed
        };
        n.fetch_add(1, Relaxed);
        self.last_reload_ok
            .store(ok, std::sync::atomic::Ordering::Relaxed);
    }

    /// Config reloads: (applied, refused).
    pub fn reloads(&self) -> (u64, u64) {
        (
            self.reloads_ok.load(Relaxed),
            self.reloads_failed.load(Relaxed),
        )
    }

    /// Manifests and blobs since start, by upstream and where they came
    /// from.
    pub fn cache_work_by_upstream(
        &self,
    ) -> std::collections::BTreeMap<String, super::activity::CacheWork> {
        let map = self
            .by_upstream
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let kinds = ["manifest", "blob"].map(|k| KINDS.iter().position(|x| *x == k));
        map.iter()
            .map(|(up, t)| {
                let mut w = super::activity::CacheWork::default();
                for k in kinds.iter().flatten() {
                    for (i, p) in t.0[*k].iter().enumerate() {
                        w.add_many(
                            outcome_of(i),
                            p.requests.load(Relaxed),
                            p.bytes.load(Relaxed),
                        );
                    }
                }
                (up.clone(), w)
            })
            .collect()
    }

    /// Counts a request as in flight while the guard lives (it travels with
    /// the request's access log into the response body).
    pub fn request_started(&self) -> Gauged {
        Gauged::new(&self.in_flight)
    }

    /// Requests being answered now (their response bodies not yet done).
    pub fn requests_in_flight(&self) -> u64 {
        self.in_flight.load(Relaxed)
    }

    /// Counts an accepted client connection while the guard lives.
    pub fn connection_opened(&self) -> Gauged {
        Gauged::new(&self.connections)
    }

    /// Client connections open now.
    pub fn connections_open(&self) -> u64 {
        self.connections.load(Relaxed)
    }

    /// Records one finished response of an upstream's endpoint.
    pub fn record_upstream(
        &self,
        upstream: &str,
        kind: &'static str,
        cache: Option<CacheStatus>,
        bytes: u64,
    ) {
        let Some(k) = KINDS.iter().position(|x| *x == kind) else {
            return;
        };
        let table = self
            .by_upstream
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(upstream)
            .cloned();
        let table = table.unwrap_or_else(|| {
            self.by_upstream
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .entry(upstream.to_owned())
                .or_default()
                .clone()
        });
        let pair = &table.0[k][outcome_index(cache)];
        pair.requests.fetch_add(1, Relaxed);
        pair.bytes.fetch_add(bytes, Relaxed);
    }

    /// Records one finished response.
    pub fn record(&self, cache: Option<CacheStatus>, status: u16, bytes: u64, complete: bool) {
        self.by_outcome[outcome_index(cache)].fetch_add(1, Relaxed);
        if let Some(c) = (status / 100).checked_sub(2).filter(|c| *c < 4) {
            self.by_class[usize::from(c)].fetch_add(1, Relaxed);
        }
        self.bytes_sent.fetch_add(bytes, Relaxed);
        if !complete {
            self.aborted.fetch_add(1, Relaxed);
        }
    }

    /// The exposition text; `store_bytes` is the blob store's size,
    /// `fill_bytes` the memory in-flight downloads hold for their readers.
    pub fn render(&self, store_bytes: u64, fill_bytes: u64) -> String {
        let mut s = String::with_capacity(1024);
        s.push_str("# HELP mirrorgate_requests_total Requests answered, by cache outcome.\n");
        s.push_str("# TYPE mirrorgate_requests_total counter\n");
        for (name, v) in OUTCOMES.iter().zip(&self.by_outcome) {
            let _ = writeln!(
                s,
                "mirrorgate_requests_total{{cache=\"{name}\"}} {}",
                v.load(Relaxed)
            );
        }
        s.push_str("# HELP mirrorgate_responses_total Responses, by status class.\n");
        s.push_str("# TYPE mirrorgate_responses_total counter\n");
        for (name, v) in CLASSES.iter().zip(&self.by_class) {
            let _ = writeln!(
                s,
                "mirrorgate_responses_total{{class=\"{name}\"}} {}",
                v.load(Relaxed)
            );
        }
        s.push_str("# HELP mirrorgate_stale_served_total Tags served from cache past their TTL because upstream failed.\n");
        s.push_str("# TYPE mirrorgate_stale_served_total counter\n");
        let _ = writeln!(
            s,
            "mirrorgate_stale_served_total {}",
            self.by_outcome[3].load(Relaxed)
        );
        s.push_str("# HELP mirrorgate_response_bytes_total Response body bytes sent.\n");
        s.push_str("# TYPE mirrorgate_response_bytes_total counter\n");
        let _ = writeln!(
            s,
            "mirrorgate_response_bytes_total {}",
            self.bytes_sent.load(Relaxed)
        );
        s.push_str(
            "# HELP mirrorgate_responses_aborted_total Responses whose body did not complete.\n",
        );
        s.push_str("# TYPE mirrorgate_responses_aborted_total counter\n");
        let _ = writeln!(
            s,
            "mirrorgate_responses_aborted_total {}",
            self.aborted.load(Relaxed)
        );
        s.push_str("# HELP mirrorgate_requests_in_flight Requests being answered (until their response body is done).\n");
        s.push_str("# TYPE mirrorgate_requests_in_flight gauge\n");
        let _ = writeln!(
            s,
            "mirrorgate_requests_in_flight {}",
            self.requests_in_flight()
        );
        s.push_str("# HELP mirrorgate_connections_open Client connections open (TLS handshakes included).\n");
        s.push_str("# TYPE mirrorgate_connections_open gauge\n");
        let _ = writeln!(s, "mirrorgate_connections_open {}", self.connections_open());
        s.push_str("# HELP mirrorgate_store_bytes Bytes of blobs in the store (approximate).\n");
        s.push_str("# TYPE mirrorgate_store_bytes gauge\n");
        let _ = writeln!(s, "mirrorgate_store_bytes {store_bytes}");
        s.push_str("# HELP mirrorgate_fill_memory_bytes Memory in-flight blob downloads hold for their clients ([server] fill_memory bounds it).\n");
        s.push_str("# TYPE mirrorgate_fill_memory_bytes gauge\n");
        let _ = writeln!(s, "mirrorgate_fill_memory_bytes {fill_bytes}");
        s
    }

    /// The S3 families, with the S3 backend.
    pub fn render_s3(s: &mut String, calls: &crate::store::s3::Calls) {
        s.push_str("# HELP mirrorgate_s3_requests_total S3 calls of the store, by operation and result (not_found, precondition: S3 answering as designed; circuit_open: not sent).\n");
        s.push_str("# TYPE mirrorgate_s3_requests_total counter\n");
        for (op, result, n) in calls.counts() {
            let _ = writeln!(
                s,
                "mirrorgate_s3_requests_total{{op=\"{op}\",result=\"{result}\"}} {n}"
            );
        }
        s.push_str("# HELP mirrorgate_s3_request_duration_seconds S3 calls sent, time to the answer's head, by operation.\n");
        s.push_str("# TYPE mirrorgate_s3_request_duration_seconds summary\n");
        for (op, n, secs) in calls.durations() {
            let _ = writeln!(
                s,
                "mirrorgate_s3_request_duration_seconds_sum{{op=\"{op}\"}} {secs}"
            );
            let _ = writeln!(
                s,
                "mirrorgate_s3_request_duration_seconds_count{{op=\"{op}\"}} {n}"
            );
        }
        s.push_str("# HELP mirrorgate_s3_circuit_open Whether the bucket's circuit breaker is open (1) or closed (0).\n");
        s.push_str("# TYPE mirrorgate_s3_circuit_open gauge\n");
        let _ = writeln!(
            s,
            "mirrorgate_s3_circuit_open {}",
            u8::from(calls.circuit_open())
        );
    }

    /// The config reload families.
    pub fn render_reloads(&self, s: &mut String) {
        let (ok, failed) = self.reloads();
        s.push_str("# HELP mirrorgate_config_reloads_total Config reloads (SIGHUP, mirrorgate reload), by result.\n");
        s.push_str("# TYPE mirrorgate_config_reloads_total counter\n");
        let _ = writeln!(s, "mirrorgate_config_reloads_total{{result=\"ok\"}} {ok}");
        let _ = writeln!(
            s,
            "mirrorgate_config_reloads_total{{result=\"error\"}} {failed}"
        );
        s.push_str("# HELP mirrorgate_config_last_reload_successful Whether the last config reload was applied (1 before any).\n");
        s.push_str("# TYPE mirrorgate_config_last_reload_successful gauge\n");
        let last = ok + failed == 0
            || self
                .last_reload_ok
                .load(std::sync::atomic::Ordering::Relaxed);
        let _ = writeln!(
            s,
            "mirrorgate_config_last_reload_successful {}",
            u8::from(last)
        );
    }

    /// The store's and the fills' families besides [`Self::render`]'s.
    pub fn render_store(s: &mut String, fills: u64, evictions: u64) {
        s.push_str("# HELP mirrorgate_fills_in_flight Blob downloads from upstream under way.\n");
        s.push_str("# TYPE mirrorgate_fills_in_flight gauge\n");
        let _ = writeln!(s, "mirrorgate_fills_in_flight {fills}");
        s.push_str("# HELP mirrorgate_store_evictions_total Blobs evicted from the local store (max_size) since start.\n");
        s.push_str("# TYPE mirrorgate_store_evictions_total counter\n");
        let _ = writeln!(s, "mirrorgate_store_evictions_total {evictions}");
    }
}

/// The inverse of [`outcome_index`].
fn outcome_of(i: usize) -> Option<CacheStatus> {
    [
        CacheStatus::Hit,
        CacheStatus::Miss,
        CacheStatus::Coalesced,
        CacheStatus::Stale,
        CacheStatus::Pass,
        CacheStatus::Redirect,
    ]
    .get(i)
    .copied()
}

fn outcome_index(cache: Option<CacheStatus>) -> usize {
    match cache {
        Some(CacheStatus::Hit) => 0,
        Some(CacheStatus::Miss) => 1,
        Some(CacheStatus::Coalesced) => 2,
        Some(CacheStatus::Stale) => 3,
        Some(CacheStatus::Pass) => 4,
        Some(CacheStatus::Redirect) => 5,
        None => 6,
    }
}

impl Metrics {
    /// The families by upstream, endpoint kind and cache outcome.
    pub fn render_by_upstream(&self, s: &mut String) {
        let map = self
            .by_upstream
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        s.push_str("# HELP mirrorgate_upstream_requests_total Requests answered, by upstream, endpoint kind and cache outcome.\n");
        s.push_str("# TYPE mirrorgate_upstream_requests_total counter\n");
        // Only the combinations seen: most never occur.
        let seen = || {
            map.iter().flat_map(|(up, t)| {
                KINDS.iter().zip(&t.0).flat_map(move |(kind, row)| {
                    OUTCOMES
                        .iter()
                        .zip(row)
                        .filter(|(_, p)| p.requests.load(Relaxed) > 0)
                        .map(move |(o, p)| (up, kind, o, p))
                })
            })
        };
        for (up, kind, o, p) in seen() {
            let _ = writeln!(
                s,
                "mirrorgate_upstream_requests_total{{upstream=\"{up}\",kind=\"{kind}\",cache=\"{o}\"}} {}",
                p.requests.load(Relaxed)
            );
        }
        s.push_str("# HELP mirrorgate_upstream_response_bytes_total Response body bytes sent, by upstream, endpoint kind and cache outcome (hit: from the cache; miss, coalesced: as fetched upstream).\n");
        s.push_str("# TYPE mirrorgate_upstream_response_bytes_total counter\n");
        for (up, kind, o, p) in seen() {
            let _ = writeln!(
                s,
                "mirrorgate_upstream_response_bytes_total{{upstream=\"{up}\",kind=\"{kind}\",cache=\"{o}\"}} {}",
                p.bytes.load(Relaxed)
            );
        }
    }
}

/// The per-upstream families: requests and latency to the response head by
/// status class, breaker state, the registry's rate-limit headers, token
/// fetches. One label, `upstream`: its configured name (bounded by the
/// config; never a repository or digest).
pub fn render_upstreams(
    s: &mut String,
    ups: &[(&crate::config::UpstreamId, &crate::upstream::UpstreamClient)],
) {
    use crate::upstream::stats::BUCKETS;
    s.push_str("# HELP mirrorgate_upstream_request_duration_seconds Upstream requests, time to the response head, by status class (error: no answer).\n");
    s.push_str("# TYPE mirrorgate_upstream_request_duration_seconds histogram\n");
    for (id, c) in ups {
        for (class, h) in c.stats().classes() {
            let cum = h.cumulative();
            for (le, n) in BUCKETS.iter().zip(cum) {
                let _ = writeln!(
                    s,
                    "mirrorgate_upstream_request_duration_seconds_bucket{{upstream=\"{id}\",class=\"{class}\",le=\"{le}\"}} {n}"
                );
            }
            let _ = writeln!(
                s,
                "mirrorgate_upstream_request_duration_seconds_bucket{{upstream=\"{id}\",class=\"{class}\",le=\"+Inf\"}} {}",
                h.count()
            );
            let _ = writeln!(
                s,
                "mirrorgate_upstream_request_duration_seconds_sum{{upstream=\"{id}\",class=\"{class}\"}} {}",
                h.sum_seconds()
            );
            let _ = writeln!(
                s,
                "mirrorgate_upstream_request_duration_seconds_count{{upstream=\"{id}\",class=\"{class}\"}} {}",
                h.count()
            );
        }
    }
    s.push_str("# HELP mirrorgate_upstream_circuit_open Whether the upstream's circuit breaker is open (1) or closed (0).\n");
    s.push_str("# TYPE mirrorgate_upstream_circuit_open gauge\n");
    for (id, c) in ups {
        let _ = writeln!(
            s,
            "mirrorgate_upstream_circuit_open{{upstream=\"{id}\"}} {}",
            u8::from(c.is_down())
        );
    }
    s.push_str("# HELP mirrorgate_upstream_token_fetches_total Tokens fetched from the upstream's token service.\n");
    s.push_str("# TYPE mirrorgate_upstream_token_fetches_total counter\n");
    for (id, c) in ups {
        let _ = writeln!(
            s,
            "mirrorgate_upstream_token_fetches_total{{upstream=\"{id}\"}} {}",
            c.stats().tokens()
        );
    }
    let limits: Vec<_> = ups
        .iter()
        .filter_map(|(id, c)| c.stats().rate_limit().map(|r| (id, r)))
        .collect();
    for (name, help, get) in [
        (
            "mirrorgate_upstream_ratelimit_limit",
            "Pulls the upstream allows per window (its last ratelimit-limit header).",
            (|r: &crate::upstream::stats::RateLimit| Some(r.limit)) as fn(&_) -> Option<u64>,
        ),
        (
            "mirrorgate_upstream_ratelimit_remaining",
            "Pulls left in the upstream's window (its last ratelimit-remaining header).",
            |r| Some(r.remaining),
        ),
        (
            "mirrorgate_upstream_ratelimit_window_seconds",
            "The upstream's rate-limit window (w= of its headers).",
            |r| r.window_s,
        ),
    ] {
        let _ = writeln!(s, "# HELP {name} {help}");
        let _ = writeln!(s, "# TYPE {name} gauge");
        for (id, r) in &limits {
            if let Some(v) = get(r) {
                let _ = writeln!(s, "{name}{{upstream=\"{id}\"}} {v}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_renders() {
        let m = Metrics::default();
        let requests = [m.request_started(), m.request_started()];
        let conn = m.connection_opened();
        assert_eq!((m.requests_in_flight(), m.connections_open()), (2, 1));
        drop((requests, conn));
        m.record(Some(CacheStatus::Stale), 200, 10, true);
        m.record(Some(CacheStatus::Hit), 206, 5, false);
        m.record(None, 404, 0, true);
        let t = m.render(42, 7);
        assert!(
            t.contains("mirrorgate_requests_total{cache=\"stale\"} 1\n"),
            "{t}"
        );
        assert!(t.contains("mirrorgate_requests_total{cache=\"none\"} 1\n"));
        assert!(t.contains("mirrorgate_stale_served_total 1\n"));
        assert!(t.contains("mirrorgate_responses_total{class=\"2xx\"} 2\n"));
        assert!(t.contains("mirrorgate_responses_total{class=\"4xx\"} 1\n"));
        assert!(t.contains("mirrorgate_response_bytes_total 15\n"));
        assert!(t.contains("mirrorgate_responses_aborted_total 1\n"));
        assert!(t.contains("mirrorgate_store_bytes 42\n"));
        assert!(t.contains("mirrorgate_fill_memory_bytes 7\n"));
        assert!(t.contains("mirrorgate_requests_in_flight 0\n"), "{t}");
        assert!(t.contains("mirrorgate_connections_open 0\n"));
    }
}
