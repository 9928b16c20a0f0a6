//! The in-memory metadata cache: tag→digest entries and manifest bytes, in
//! one moka cache bounded by bytes.
//!
//! It sits in front of the on-disk tag map and manifests (`store`) and is
//! never the only copy of anything: losing it (restart, eviction) costs a
//! disk read, not an upstream request. Concurrent loads of one key are
//! coalesced by moka's `try_get_with`: exactly one loader runs and the others
//! wait for its result. Tag entries expire when their TTL runs out (counted
//! from when upstream last confirmed them, not from insertion), so the next
//! request revalidates; manifests by digest are immutable and only leave by
//! eviction.
//!
//! Freshness is decided by the mirror's [`Clock`](crate::clock::Clock) on
//! every read: moka's own expiry (in real time) only returns the memory of
//! expired entries sooner.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;

use crate::clock::SharedClock;
use crate::oci::{Digest, MediaType};
use crate::tag::{TagKey, TagRecord};

/// A cache key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    /// A tag mapping.
    Tag(TagKey),
    /// A manifest by digest.
    Manifest(Digest),
}

/// A cached tag mapping.
#[derive(Debug, Clone)]
pub struct TagEntry {
    /// The mapping as last confirmed by upstream.
    pub record: TagRecord,
    /// How long the mapping is trusted after `record.checked_at_ms`.
    pub ttl: Duration,
    /// Set when upstream could not be reached to revalidate an expired
    /// mapping and the old one is served anyway.
    pub stale: bool,
}

/// A cached manifest.
#[derive(Debug, Clone)]
pub struct ManifestEntry {
    /// The manifest bytes, exactly as upstream sent them.
    pub bytes: Bytes,
    /// Its media type.
    pub media_type: MediaType,
}

/// A cache value.
#[derive(Debug, Clone)]
pub enum Value {
    /// See [`TagEntry`].
    Tag(Arc<TagEntry>),
    /// See [`ManifestEntry`].
    Manifest(Arc<ManifestEntry>),
}

impl Value {
    /// Whether both are the very same entry (not merely equal).
    fn same(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Tag(a), Self::Tag(b)) => Arc::ptr_eq(a, b),
            (Self::Manifest(a), Self::Manifest(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

/// Per-entry expiry: tags live for what remains of their TTL.
struct Expiry(SharedClock);

impl moka::Expiry<Key, Value> for Expiry {
    fn expire_after_create(&self, _key: &Key, value: &Value, _now: Instant) -> Option<Duration> {
        remaining(value, self.0.now())
    }

    fn expire_after_update(
        &self,
        _key: &Key,
        value: &Value,
        _now: Instant,
        _current: Option<Duration>,
    ) -> Option<Duration> {
        remaining(value, self.0.now())
    }
}

/// How long `value` stays fresh at `now` (`None`: forever).
fn remaining(value: &Value, now: SystemTime) -> Option<Duration> {
    match value {
        Value::Tag(t) if t.stale => Some(Duration::ZERO),
        Value::Tag(t) => Some(t.ttl.saturating_sub(t.record.age(now))),
        Value::Manifest(_) => None,
    }
}

/// Approximate memory cost of an entry, for the byte budget.
fn weigh(key: &Key, value: &Value) -> u32 {
    let k = match key {
        Key::Tag(t) => t.repo.as_str().len() + t.tag.as_str().len() + 64,
        Key::Manifest(_) => 96,
    };
    let v = match value {
        Value::Tag(t) => t.record.media_type.len() + 160,
        Value::Manifest(m) => m.bytes.len() + m.media_type.as_str().len() + 64,
    };
    u32::try_from(k + v).unwrap_or(u32::MAX)
}

/// The metadata cache. Cheap to clone.
#[derive(Clone)]
pub struct MetadataCache {
    inner: moka::future::Cache<Key, Value>,
    clock: SharedClock,
}

impl std::fmt::Debug for MetadataCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetadataCache")
            .field("entries", &self.inner.entry_count())
            .field("weighted_bytes", &self.inner.weighted_size())
            .finish()
    }
}

impl MetadataCache {
    /// A cache holding at most about `max_bytes` of metadata, judging tag
    /// freshness by `clock`.
    pub fn new(max_bytes: u64, clock: SharedClock) -> Self {
        let inner = moka::future::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(weigh)
            .expire_after(Expiry(clock.clone()))
            .build();
        Self { inner, clock }
    }

    /// The entry for `key` if present and still fresh by the clock. An
    /// entry found expired is removed, unless a concurrent load has already
    /// replaced it, so that the next [`try_get_with`](Self::try_get_with)
    /// loads it again (once, however many callers found it expired).
    ///
    /// Why this cannot remove a fresh entry or deadlock: the compute runs
    /// only for an expired tag, and a tag's loader runs only once its key
    /// is absent, so a fresh value for the key is never being loaded while
    /// the expired one is still visible; the compute also does not wait for
    /// `try_get_with` loaders (moka keeps separate waiter slots), and
    /// loaders only `get` manifest keys, which never expire.
    pub async fn get(&self, key: &Key) -> Option<Value> {
        let v = self.inner.get(key).await?;
        if remaining(&v, self.clock.now()).is_none_or(|d| !d.is_zero()) {
            return Some(v);
        }
        self.inner
            .entry_by_ref(key)
            .and_compute_with(|cur| async move {
                match cur {
                    Some(e) if e.value().same(&v) => moka::ops::compute::Op::Remove,
                    _ => moka::ops::compute::Op::Nop,
                }
            })
            .await;
        None
    }

    /// Returns the entry for `key`, running `init` to load it when absent.
    /// Concurrent callers for one key share a single `init`; its error is
    /// returned to all of them and nothing is cached.
    pub async fn try_get_with<E, F>(&self, key: Key, init: F) -> Result<Value, Arc<E>>
    where
        F: Future<Output = Result<Value, E>>,
        E: Send + Sync + 'static,
    {
        self.inner.try_get_with(key, init).await
    }

    /// Inserts or replaces an entry.
    pub async fn insert(&self, key: Key, value: Value) {
        self.inner.insert(key, value).await;
    }

    /// Removes an entry.
    pub async fn invalidate(&self, key: &Key) {
        self.inner.invalidate(key).await;
    }

    /// Current weighted size in bytes (approximate; moka applies pending
    /// work lazily).
    pub async fn weighted_size(&self) -> u64 {
        self.inner.run_pending_tasks().await;
        self.inner.weighted_size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock as _;
    use crate::tag::epoch_ms as tags_epoch_ms;

    fn manifest(n: usize) -> Value {
        Value::Manifest(Arc::new(ManifestEntry {
            bytes: Bytes::from(vec![b'x'; n]),
            media_type: MediaType::new(crate::oci::media_type::OCI_MANIFEST),
        }))
    }

    #[tokio::test]
    async fn bounded_by_bytes() {
        let c = MetadataCache::new(1024 * 1024, crate::clock::system());
        for i in 0..64u32 {
            let d = Digest::sha256_of(&i.to_le_bytes());
            c.insert(Key::Manifest(d), manifest(64 * 1024)).await;
        }
        assert!(c.weighted_size().await <= 1024 * 1024);
    }

    // Paused time: the loader's sleep only keeps it pending while the other
    // seven join; nothing waits for real.
    #[tokio::test(start_paused = true)]
    async fn coalesces_loads() {
        let c = MetadataCache::new(1024 * 1024, crate::clock::system());
        let key = Key::Manifest(Digest::sha256_of(b"k"));
        let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (c, key, runs) = (c.clone(), key.clone(), runs.clone());
            tasks.push(tokio::spawn(async move {
                c.try_get_with::<std::io::Error, _>(key, async {
                    runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok(manifest(10))
                })
                .await
                .unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn tag_expiry_counts_from_check_time() {
        let now = SystemTime::now();
        let rec = |age: Duration| TagRecord {
            digest: Digest::sha256_of(b"m"),
            media_type: "x".into(),
            size: 1,
            checked_at_ms: tags_epoch_ms(now - age),
        };
        let entry = |age, stale| {
            Value::Tag(Arc::new(TagEntry {
                record: rec(age),
                ttl: Duration::from_secs(300),
                stale,
            }))
        };
        // Millisecond timestamps: at most 1 ms is lost to rounding.
        let fresh = remaining(&entry(Duration::from_secs(100), false), now).unwrap();
        assert!(fresh <= Duration::from_secs(200) && fresh >= Duration::from_millis(199_999));
        assert_eq!(
            remaining(&entry(Duration::from_secs(400), false), now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            remaining(&entry(Duration::ZERO, true), now),
            Some(Duration::ZERO)
        );
        assert_eq!(remaining(&manifest(1), now), None);
    }

    #[tokio::test]
    async fn a_tag_expires_by_the_clock_not_by_real_time() {
        let clock = crate::clock::ManualClock::new();
        let c = MetadataCache::new(1024 * 1024, clock.clone());
        // The kind of key does not matter to the cache.
        let key = Key::Manifest(Digest::sha256_of(b"tag-key"));
        let tag = Value::Tag(Arc::new(TagEntry {
            record: TagRecord {
                digest: Digest::sha256_of(b"m"),
                media_type: "x".into(),
                size: 1,
                checked_at_ms: tags_epoch_ms(clock.now()),
            },
            ttl: Duration::from_secs(60),
            stale: false,
        }));
        c.insert(key.clone(), tag.clone()).await;
        clock.advance(Duration::from_secs(59));
        assert!(c.get(&key).await.is_some_and(|v| v.same(&tag)));
        clock.advance(Duration::from_secs(1));
        assert!(c.get(&key).await.is_none(), "expired at its TTL");
        // And it was removed, so a load runs again.
        let reloaded = c
            .try_get_with::<std::io::Error, _>(key.clone(), async { Ok(manifest(1)) })
            .await
            .unwrap();
        assert!(matches!(reloaded, Value::Manifest(_)));
    }
}
