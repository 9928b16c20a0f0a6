//! A per-upstream circuit breaker. After `threshold` consecutive failures
//! (connect errors, timeouts, 5xx, 429) the upstream is considered down:
//! requests fail at once (so the mirror answers from cache or with a fast
//! 503, and clients fall back instead of waiting) until a backoff passes.
//! Then one probe request is let through; success closes the breaker,
//! failure reopens it with twice the backoff (capped).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Breaker settings.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Consecutive failures that open the breaker.
    pub threshold: u32,
    /// First backoff.
    pub backoff: Duration,
    /// Longest backoff.
    pub max_backoff: Duration,
}

#[derive(Debug)]
struct State {
    failures: u32,
    open_until: Option<Instant>,
    backoff: Duration,
    probing: bool,
}

/// The breaker.
#[derive(Debug)]
pub struct Breaker {
    settings: Settings,
    state: Mutex<State>,
}

/// Whether a request may go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Closed: go.
    Go,
    /// Half-open: this request is the probe.
    Probe,
    /// Open: fail fast.
    Reject,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(settings: Settings) -> Self {
        Self {
            state: Mutex::new(State {
                failures: 0,
                open_until: None,
                backoff: settings.backoff,
                probing: false,
            }),
            settings,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks to send a request now.
    pub fn admit(&self, now: Instant) -> Admit {
        let mut s = self.lock();
        match s.open_until {
            None => Admit::Go,
            Some(t) if now < t || s.probing => Admit::Reject,
            Some(_) => {
                s.probing = true;
                Admit::Probe
            }
        }
    }

    /// Records the outcome of an admitted request.
    pub fn record(&self, ok: bool, now: Instant) {
        let mut s = self.lock();
        s.probing = false;
        if ok {
            if s.open_until.is_some() {
                tracing::info!("upstream answers again; circuit closed");
            }
            s.failures = 0;
            s.open_until = None;
            s.backoff = self.settings.backoff;
            return;
        }
        s.failures = s.failures.saturating_add(1);
        if s.open_until.is_some() {
            // A failed probe: wait longer.
            s.backoff = (s.backoff * 2).min(self.settings.max_backoff);
            s.open_until = Some(now + s.backoff);
        } else if s.failures >= self.settings.threshold {
            tracing::warn!(
                failures = s.failures,
                backoff_ms = s.backoff.as_millis() as u64,
                "upstream failing; circuit open"
            );
            s.open_until = Some(now + s.backoff);
        }
    }

    /// Whether the breaker is open (for status reporting).
    pub fn is_open(&self) -> bool {
        self.lock().open_until.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_probes_backs_off_and_closes() {
        let b = Breaker::new(Settings {
            threshold: 3,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(3),
        });
        let t0 = Instant::now();
        for _ in 0..2 {
            assert_eq!(b.admit(t0), Admit::Go);
            b.record(false, t0);
        }
        assert_eq!(b.admit(t0), Admit::Go);
        b.record(false, t0);
        assert!(b.is_open());
        assert_eq!(b.admit(t0 + Duration::from_millis(500)), Admit::Reject);
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(b.admit(t1), Admit::Probe);
        assert_eq!(b.admit(t1), Admit::Reject, "one probe at a time");
        b.record(false, t1);
        assert_eq!(
            b.admit(t1 + Duration::from_millis(1500)),
            Admit::Reject,
            "backoff doubled"
        );
        let t2 = t1 + Duration::from_secs(2);
        assert_eq!(b.admit(t2), Admit::Probe);
        b.record(false, t2);
        let t3 = t2 + Duration::from_secs(3);
        assert_eq!(
            b.admit(t3 - Duration::from_millis(1)),
            Admit::Reject,
            "capped at max"
        );
        assert_eq!(b.admit(t3), Admit::Probe);
        b.record(true, t3);
        assert!(!b.is_open());
        assert_eq!(b.admit(t3), Admit::Go);
    }
}
