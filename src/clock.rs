//! Time as the mirror's policies see it: when a tag was last confirmed (and
//! how long it may be served stale), when a circuit breaker may probe again.
//!
//! Every such decision asks a [`Clock`] instead of `SystemTime::now()` or
//! `Instant::now()`, so that the decision can be tested without waiting for
//! it: a test gives the app a [`ManualClock`] and moves it forward. tokio's
//! paused time cannot do this job, because these decisions use wall-clock
//! timestamps that survive restarts (tag records on disk) and because the
//! mirror talks to real sockets, where auto-advancing paused time would fire
//! every I/O timeout at once.
//!
//! What a clock does not drive: I/O timeouts (connect, read, header read,
//! TLS handshake, shutdown grace) stay on tokio's timer; bearer tokens
//! expire in real time (their `issued_at` comes from the token server); and
//! moka's own expiry only bounds memory (the mirror re-checks tag freshness
//! with the clock on every cache hit).

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// A source of wall-clock and monotonic time.
pub trait Clock: fmt::Debug + Send + Sync + 'static {
    /// The wall-clock time: for timestamps that are persisted (tag
    /// `checked_at`), so that they mean something after a restart.
    fn now(&self) -> SystemTime;
    /// The monotonic time: for in-process intervals (breaker backoff).
    fn instant(&self) -> Instant;
}

/// A shared clock.
pub type SharedClock = Arc<dyn Clock>;

/// The operating system's clocks.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn instant(&self) -> Instant {
        Instant::now()
    }
}

/// The system clock, shared.
pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}

/// A clock that stands still until [`ManualClock::advance`] moves it, for
/// tests of time-based policy. It starts at the system time of its creation.
#[derive(Debug)]
pub struct ManualClock {
    wall: SystemTime,
    mono: Instant,
    offset: Mutex<Duration>,
}

impl Default for ManualClock {
    fn default() -> Self {
        Self {
            wall: SystemTime::now(),
            mono: Instant::now(),
            offset: Mutex::new(Duration::ZERO),
        }
    }
}

impl ManualClock {
    /// A clock standing at the current system time, shared.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Moves both the wall clock and the monotonic clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        *self.offset.lock().unwrap_or_else(|p| p.into_inner()) += d;
    }

    fn offset(&self) -> Duration {
        *self.offset.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        self.wall + self.offset()
    }

    fn instant(&self) -> Instant {
        self.mono + self.offset()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new();
        let (w, m) = (c.now(), c.instant());
        assert_eq!((c.now(), c.instant()), (w, m));
        c.advance(Duration::from_secs(90));
        assert_eq!(c.now().duration_since(w).unwrap(), Duration::from_secs(90));
        assert_eq!(c.instant() - m, Duration::from_secs(90));
    }
}
