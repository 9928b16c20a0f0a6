//! What one upstream's client saw: requests by status class with their
//! latency (to the response head), the registry's rate-limit headers
//! (Docker Hub's `ratelimit-limit` / `ratelimit-remaining`, `N;w=SECONDS`)
//! and token fetches. Plain atomics and one small lock; read by `/metrics`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use http::HeaderMap;

/// Latency bucket bounds, in seconds (Prometheus `le`).
pub const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Outcome classes: status classes, and no answer at all.
pub const CLASSES: [&str; 5] = ["2xx", "3xx", "4xx", "5xx", "error"];

/// One class's requests and latency histogram.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Requests at or under each bucket bound (not cumulative here).
    buckets: [AtomicU64; BUCKETS.len()],
    /// All requests.
    count: AtomicU64,
    /// Their total latency, in microseconds.
    sum_us: AtomicU64,
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| s <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_us
            .fetch_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Relaxed);
    }

    /// Cumulative counts per bucket bound (then `+Inf` is [`Self::count`]).
    pub fn cumulative(&self) -> [u64; BUCKETS.len()] {
        let mut out = [0; BUCKETS.len()];
        let mut acc = 0;
        for (o, b) in out.iter_mut().zip(&self.buckets) {
            acc += b.load(Relaxed);
            *o = acc;
        }
        out
    }

    /// Requests observed.
    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    /// Their total latency, in seconds.
    pub fn sum_seconds(&self) -> f64 {
        self.sum_us.load(Relaxed) as f64 / 1e6
    }
}

/// The last rate-limit headers an upstream sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests allowed per window.
    pub limit: u64,
    /// Left in the current window.
    pub remaining: u64,
    /// The window, in seconds (`w=`), if named.
    pub window_s: Option<u64>,
}

/// The statistics of one upstream.
#[derive(Debug, Default)]
pub struct Stats {
    by_class: [Histogram; CLASSES.len()],
    tokens: AtomicU64,
    rate_limit: Mutex<Option<RateLimit>>,
    /// The latest request's time to its answer's head, in microseconds.
    last_latency_us: AtomicU64,
    last_error: Mutex<Option<LastError>>,
}

/// The latest failure of an upstream: no answer, or an answer that says
/// the upstream is failing (5xx, 429).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastError {
    /// When.
    pub at: std::time::SystemTime,
    /// The repository asked for (kept apart: the status page hides private
    /// repositories from anonymous viewers).
    pub repository: String,
    /// What happened, with its cause chain (which may name the repository
    /// again, in a URL).
    pub message: String,
}

/// A latency summary over the answered requests (every status class).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    /// Requests answered.
    pub count: u64,
    /// Their mean time to the answer's head, in seconds.
    pub mean_s: f64,
    /// The bucket bound that 95% of them were under (`None`: beyond the
    /// largest bucket, or no request yet).
    pub p95_le_s: Option<f64>,
    /// The latest request's (answered or not), in seconds.
    pub last_s: f64,
}

impl Stats {
    /// Records one request: its status (`None`: no answer) and how long
    /// the answer's head took; reads rate-limit headers.
    pub(crate) fn request(&self, status: Option<u16>, headers: Option<&HeaderMap>, took: Duration) {
        let class = match status {
            Some(s @ 200..=599) => usize::from(s / 100 - 2),
            _ => 4,
        };
        self.by_class[class].observe(took);
        self.last_latency_us
            .store(u64::try_from(took.as_micros()).unwrap_or(u64::MAX), Relaxed);
        if let Some(rl) = headers.and_then(parse_rate_limit) {
            *self
                .rate_limit
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(rl);
        }
    }

    /// Records a failure of a request for `repository` (see [`LastError`]).
    pub(crate) fn failed(&self, repository: &str, message: String) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(LastError {
            at: std::time::SystemTime::now(),
            repository: repository.to_owned(),
            message,
        });
    }

    /// The latest failure, if any.
    pub fn last_error(&self) -> Option<LastError> {
        self.last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Latency over the answered requests (not those that got no answer).
    pub fn latency(&self) -> Latency {
        let answered = &self.by_class[..CLASSES.len() - 1];
        let count: u64 = answered.iter().map(Histogram::count).sum();
        let sum: f64 = answered.iter().map(Histogram::sum_seconds).sum();
        let mut cum = [0u64; BUCKETS.len()];
        for h in answered {
            for (c, n) in cum.iter_mut().zip(h.cumulative()) {
                *c += n;
            }
        }
        // The smallest bound with 95% of the requests at or under it.
        let p95_le_s = BUCKETS
            .iter()
            .zip(cum)
            .find(|(_, n)| count > 0 && *n * 100 >= count * 95)
            .map(|(b, _)| *b);
        Latency {
            count,
            mean_s: if count == 0 { 0.0 } else { sum / count as f64 },
            p95_le_s,
            last_s: self.last_latency_us.load(Relaxed) as f64 / 1e6,
        }
    }

    /// Counts a token fetched from the upstream's token service.
    pub(crate) fn token_fetched(&self) {
        self.tokens.fetch_add(1, Relaxed);
    }

    /// Requests and latency of each class of [`CLASSES`].
    pub fn classes(&self) -> impl Iterator<Item = (&'static str, &Histogram)> {
        CLASSES.iter().copied().zip(&self.by_class)
    }

    /// Tokens fetched.
    pub fn tokens(&self) -> u64 {
        self.tokens.load(Relaxed)
    }

    /// The last rate-limit headers seen, if the upstream sends them.
    pub fn rate_limit(&self) -> Option<RateLimit> {
        *self
            .rate_limit
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// `ratelimit-limit: 100;w=21600` and `ratelimit-remaining: 76;w=21600`.
fn parse_rate_limit(h: &HeaderMap) -> Option<RateLimit> {
    let field = |name: &str| -> Option<(u64, Option<u64>)> {
        let v = h.get(name)?.to_str().ok()?;
        let mut parts = v.split(';').map(str::trim);
        let n = parts.next()?.parse().ok()?;
        let w = parts.find_map(|p| p.strip_prefix("w=")?.parse().ok());
        Some((n, w))
    };
    let (limit, w1) = field("ratelimit-limit")?;
    let (remaining, w2) = field("ratelimit-remaining")?;
    Some(RateLimit {
        limit,
        remaining,
        window_s: w1.or(w2),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_headers_and_histogram() {
        let mut h = HeaderMap::new();
        h.insert("ratelimit-limit", "100;w=21600".parse().unwrap());
        h.insert("ratelimit-remaining", "76;w=21600".parse().unwrap());
        let s = Stats::default();
        s.request(Some(200), Some(&h), Duration::from_millis(30));
        s.request(Some(404), None, Duration::from_millis(3));
        s.request(None, None, Duration::from_secs(20));
        assert_eq!(
            s.rate_limit(),
            Some(RateLimit {
                limit: 100,
                remaining: 76,
                window_s: Some(21600)
            })
        );
        let c: Vec<(&str, u64)> = s.classes().map(|(n, h)| (n, h.count())).collect();
        assert_eq!(
            c,
            [("2xx", 1), ("3xx", 0), ("4xx", 1), ("5xx", 0), ("error", 1)]
        );
        let ok = s.classes().next().unwrap().1;
        assert_eq!(ok.cumulative()[..4], [0, 0, 0, 1], "30 ms is under 50 ms");
        let err = s.classes().nth(4).unwrap().1;
        assert_eq!(
            err.cumulative()[10],
            0,
            "20 s is over every bound: +Inf only"
        );
        h.insert("ratelimit-remaining", "junk".parse().unwrap());
        assert_eq!(parse_rate_limit(&h), None);
    }
}
