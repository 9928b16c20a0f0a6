//! What the status page shows of the recent past: the cache's work per
//! minute over the last hour, and the recent pulls. Fed by every finished
//! response of a manifest or blob (see `access_log`), bounded in memory (60
//! minutes, [`PULLS`] pulls) whatever the traffic.
//!
//! A *pull* is what one client did with one repository: its manifest
//! requests within [`PULL_GAP`] of each other, and the blobs it fetched of
//! that repository within [`BLOB_GAP`] of its last manifest.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Mutex;

use serde::Serialize;

use crate::mirror::CacheStatus;
use crate::oci::Reference;

/// Pulls remembered.
pub const PULLS: usize = 50;
/// Manifest requests this close (seconds) belong to one pull.
pub const PULL_GAP: u64 = 60;
/// Blobs this close (seconds) after a pull's last manifest belong to it.
pub const BLOB_GAP: u64 = 600;
/// Minutes in the window.
const MINUTES: usize = 60;

/// Requests and bytes of manifests and blobs, split by where they came
/// from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CacheWork {
    /// Answered without an upstream download: from the store or memory, by
    /// joining another request's download, a stale tag, a redirect to the
    /// bucket.
    pub requests_from_cache: u64,
    /// Answered by fetching from upstream.
    pub requests_from_upstream: u64,
    /// Body bytes of the former.
    pub bytes_from_cache: u64,
    /// Body bytes of the latter.
    pub bytes_from_upstream: u64,
}

impl CacheWork {
    /// Counts one response. `None` for outcomes that are neither (passed
    /// through, errors).
    pub fn add(&mut self, cache: Option<CacheStatus>, bytes: u64) {
        self.add_many(cache, 1, bytes);
    }

    /// Counts `requests` responses of `bytes` in all.
    pub fn add_many(&mut self, cache: Option<CacheStatus>, requests: u64, bytes: u64) {
        match cache {
            Some(
                CacheStatus::Hit
                | CacheStatus::Coalesced
                | CacheStatus::Stale
                | CacheStatus::Redirect,
            ) => {
                self.requests_from_cache += requests;
                self.bytes_from_cache += bytes;
            }
            Some(CacheStatus::Miss) => {
                self.requests_from_upstream += requests;
                self.bytes_from_upstream += bytes;
            }
            Some(CacheStatus::Pass) | None => {}
        }
    }

    /// Adds `o`'s counts.
    pub fn merge(&mut self, o: &Self) {
        self.requests_from_cache += o.requests_from_cache;
        self.requests_from_upstream += o.requests_from_upstream;
        self.bytes_from_cache += o.bytes_from_cache;
        self.bytes_from_upstream += o.bytes_from_upstream;
    }

    /// The share of requests answered from the cache (`None`: none yet).
    pub fn hit_ratio(&self) -> Option<f64> {
        let all = self.requests_from_cache + self.requests_from_upstream;
        (all > 0).then(|| self.requests_from_cache as f64 / all as f64)
    }
}

/// One client's pull of one repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pull {
    /// When it started, in seconds since the Unix epoch.
    pub started: u64,
    /// Its latest request.
    pub last: u64,
    /// The upstream.
    pub upstream: String,
    /// The repository, as named upstream.
    pub repository: String,
    /// The tag asked for (else the first digest).
    pub reference: String,
    /// The client's address (absent where the viewer may not see it).
    pub client: Option<IpAddr>,
    /// The authenticated user, if any.
    pub user: Option<String>,
    /// Manifest requests.
    pub manifests: u32,
    /// Blob requests.
    pub blobs: u32,
    /// Body bytes sent.
    pub bytes: u64,
    /// Of which from the cache.
    pub bytes_from_cache: u64,
    /// Whether any of it was fetched from upstream.
    pub fetched_upstream: bool,
}

/// One finished response, as [`Activity::record`] takes it.
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    /// When it finished, in seconds since the Unix epoch.
    pub now: u64,
    /// The upstream.
    pub upstream: &'a str,
    /// The endpoint kind (only `manifest` and `blob` count).
    pub kind: &'static str,
    /// How it was answered.
    pub cache: Option<CacheStatus>,
    /// Its status.
    pub status: u16,
    /// Body bytes sent.
    pub bytes: u64,
    /// The repository (as named upstream).
    pub repo: Option<&'a str>,
    /// The manifest's tag or digest.
    pub reference: Option<&'a Reference>,
    /// The client.
    pub client: IpAddr,
    /// The authenticated user.
    pub user: Option<&'a str>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Minute {
    /// Minutes since the epoch this slot holds.
    at: u64,
    work: CacheWork,
}

#[derive(Debug)]
struct Inner {
    minutes: [Minute; MINUTES],
    pulls: VecDeque<Pull>,
}

/// The recent past (see the module docs).
#[derive(Debug)]
pub struct Activity {
    inner: Mutex<Inner>,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner {
                minutes: [Minute::default(); MINUTES],
                pulls: VecDeque::with_capacity(PULLS),
            }),
        }
    }
}

impl Activity {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records one finished response.
    pub fn record(&self, e: &Event<'_>) {
        if !matches!(e.kind, "manifest" | "blob") || e.status >= 400 {
            return;
        }
        let mut inner = self.lock();
        let minute = e.now / 60;
        let slot = &mut inner.minutes[(minute % MINUTES as u64) as usize];
        if slot.at != minute {
            *slot = Minute {
                at: minute,
                work: CacheWork::default(),
            };
        }
        slot.work.add(e.cache, e.bytes);
        let Some(repo) = e.repo else { return };
        let from_cache = !matches!(e.cache, Some(CacheStatus::Miss));
        let gap = if e.kind == "manifest" {
            PULL_GAP
        } else {
            BLOB_GAP
        };
        let same = inner.pulls.iter_mut().find(|p| {
            p.client == Some(e.client)
                && p.upstream == e.upstream
                && p.repository == repo
                && e.now.saturating_sub(p.last) <= gap
        });
        let pull = match same {
            Some(p) => p,
            // A blob without a pull of its own (a resumed download):
            // counted in the minutes only.
            None if e.kind == "blob" => return,
            None => {
                if inner.pulls.len() == PULLS {
                    inner.pulls.pop_back();
                }
                inner.pulls.push_front(Pull {
                    started: e.now,
                    last: e.now,
                    upstream: e.upstream.to_owned(),
                    repository: repo.to_owned(),
                    reference: e.reference.map(ToString::to_string).unwrap_or_default(),
                    client: Some(e.client),
                    user: e.user.map(str::to_owned),
                    manifests: 0,
                    blobs: 0,
                    bytes: 0,
                    bytes_from_cache: 0,
                    fetched_upstream: false,
                });
                &mut inner.pulls[0]
            }
        };
        if e.kind == "manifest" {
            pull.manifests += 1;
            pull.last = e.now;
            // The tag names the pull better than the digests that follow.
            if let Some(Reference::Tag(t)) = e.reference
                && pull.reference.contains(':')
            {
                t.as_str().clone_into(&mut pull.reference);
            }
        } else {
            pull.blobs += 1;
        }
        pull.bytes += e.bytes;
        if from_cache {
            pull.bytes_from_cache += e.bytes;
        } else {
            pull.fetched_upstream = true;
        }
    }

    /// The cache's work in the hour up to `now` (seconds since the epoch).
    pub fn last_hour(&self, now: u64) -> CacheWork {
        let minute = now / 60;
        let mut w = CacheWork::default();
        for m in &self.lock().minutes {
            if m.at + (MINUTES as u64) > minute && m.at <= minute {
                w.merge(&m.work);
            }
        }
        w
    }

    /// The recent pulls, newest first.
    pub fn pulls(&self) -> Vec<Pull> {
        self.lock().pulls.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static DIGEST: std::sync::LazyLock<Reference> =
        std::sync::LazyLock::new(|| format!("sha256:{}", "ab".repeat(32)).parse().unwrap());
    static TAG: std::sync::LazyLock<Reference> =
        std::sync::LazyLock::new(|| "3.19".parse().unwrap());

    fn ev<'a>(now: u64, kind: &'static str, cache: CacheStatus, bytes: u64) -> Event<'a> {
        Event {
            now,
            upstream: "docker.io",
            kind,
            cache: Some(cache),
            status: 200,
            bytes,
            repo: Some("library/alpine"),
            reference: Some(&DIGEST),
            client: [10, 0, 0, 1].into(),
            user: None,
        }
    }

    #[test]
    fn the_hour_forgets_what_is_older() {
        let a = Activity::default();
        let t0 = 1_000_000 * 60;
        a.record(&ev(t0, "blob", CacheStatus::Miss, 100));
        a.record(&ev(t0 + 30, "blob", CacheStatus::Hit, 40));
        a.record(&ev(t0 + 30, "tags", CacheStatus::Pass, 5));
        let w = a.last_hour(t0 + 59);
        assert_eq!(
            (
                w.requests_from_cache,
                w.bytes_from_cache,
                w.bytes_from_upstream
            ),
            (1, 40, 100)
        );
        assert_eq!(w.hit_ratio(), Some(0.5));
        // 59 minutes on, still in; an hour on, the slot is gone.
        assert_eq!(a.last_hour(t0 + 59 * 60).bytes_from_upstream, 100);
        assert_eq!(a.last_hour(t0 + 60 * 60), CacheWork::default());
        // A slot reused an hour later starts empty.
        a.record(&ev(t0 + 60 * 60, "blob", CacheStatus::Hit, 7));
        assert_eq!(a.last_hour(t0 + 60 * 60).bytes_from_cache, 7);
    }

    #[test]
    fn a_pull_gathers_its_manifests_and_blobs_and_is_named_by_its_tag() {
        let a = Activity::default();
        let mut tag = ev(100, "manifest", CacheStatus::Miss, 10);
        tag.reference = Some(&TAG);
        a.record(&ev(99, "blob", CacheStatus::Hit, 5)); // no pull yet
        a.record(&tag);
        a.record(&ev(101, "manifest", CacheStatus::Hit, 20));
        a.record(&ev(150, "blob", CacheStatus::Hit, 1000));
        a.record(&ev(800, "blob", CacheStatus::Miss, 1)); // past BLOB_GAP
        let p = a.pulls();
        assert_eq!(p.len(), 1);
        let p = &p[0];
        assert_eq!(
            (
                p.reference.as_str(),
                p.manifests,
                p.blobs,
                p.bytes,
                p.bytes_from_cache
            ),
            ("3.19", 2, 1, 1030, 1020)
        );
        assert!(p.fetched_upstream);
        // Another client is another pull; errors are none.
        let mut other = ev(102, "manifest", CacheStatus::Hit, 1);
        other.client = [10, 0, 0, 2].into();
        a.record(&other);
        let mut err = ev(103, "manifest", CacheStatus::Hit, 1);
        err.status = 404;
        err.client = [10, 0, 0, 3].into();
        a.record(&err);
        assert_eq!(a.pulls().len(), 2);
        // Bounded.
        for i in 0..(PULLS as u64 + 10) {
            let mut e = ev(200 + i, "manifest", CacheStatus::Hit, 1);
            e.client = IpAddr::from([10, 1, 0, i as u8]);
            a.record(&e);
        }
        assert_eq!(a.pulls().len(), PULLS);
    }
}
