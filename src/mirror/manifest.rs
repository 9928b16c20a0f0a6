//! Manifests: tag resolution with TTL + HEAD revalidation, and immutable
//! manifests by digest.

use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{CacheStatus, Error, Fetch, Grant, Mirror, Upstream};
use crate::cache::{Key, ManifestEntry, TagEntry, Value};
use crate::cluster::{Claim, Held};
use crate::config::UpstreamId;
use crate::oci::{AcceptClass, Digest, MediaType, Reference, RepoName, Tag};
use crate::tag::{TagKey, TagRecord, epoch_ms as tags_epoch_ms};

/// A manifest ready to serve.
#[derive(Debug, Clone)]
pub struct ManifestResponse {
    /// The manifest's digest (over exactly `bytes`).
    pub digest: Digest,
    /// The bytes, verbatim from upstream.
    pub bytes: Bytes,
    /// The media type upstream sent.
    pub media_type: MediaType,
    /// How it was obtained.
    pub status: CacheStatus,
}

/// Runs a cache load and reports whether this call ran the loader (miss),
/// waited on another call's loader (coalesced) or found the entry (hit).
async fn cached<F>(mirror: &Mirror, key: Key, load: F) -> Result<(Value, CacheStatus), Error>
where
    F: Future<Output = Result<Value, Error>>,
{
    if let Some(v) = mirror.cache.get(&key).await {
        return Ok((v, CacheStatus::Hit));
    }
    let ran = AtomicBool::new(false);
    // Boxed: moka's loader futures nest (a tag load may load a manifest),
    // and unboxed they make the request future large enough to overflow a
    // stack in debug builds.
    let load = Box::pin(async {
        ran.store(true, Ordering::Relaxed);
        load.await
    });
    let v = Box::pin(mirror.cache.try_get_with(key, load))
        .await
        .map_err(|e| (*e).clone())?;
    let status = if ran.load(Ordering::Relaxed) {
        CacheStatus::Miss
    } else {
        CacheStatus::Coalesced
    };
    Ok((v, status))
}

impl Mirror {
    /// Resolves and returns a manifest by tag or digest.
    pub async fn manifest(
        &self,
        id: &UpstreamId,
        repo: &RepoName,
        reference: &Reference,
        accept: AcceptClass,
        grant: Grant,
    ) -> Result<ManifestResponse, Error> {
        let up = self.upstream(id)?;
        let repo = self.upstream_repo(id, repo);
        if let Reference::Digest(d) = reference {
            self.guard_private(&up, &repo, d, grant, true).await?;
        }
        let m = if grant.fetch == Fetch::CacheOnly {
            self.cached_manifest(&up, &repo, reference, accept).await?
        } else {
            match reference {
                Reference::Digest(d) => self.manifest_by_digest(&up, &repo, d).await?,
                Reference::Tag(tag) => {
                    let (entry, status) = self.resolve_tag(&up, &repo, tag, accept).await?;
                    let mut m = self
                        .manifest_by_digest(&up, &repo, &entry.record.digest)
                        .await?;
                    // The tag's status is what the client cares about: a tag
                    // hit whose manifest had to be read from disk is still a
                    // hit.
                    m.status = if entry.stale {
                        CacheStatus::Stale
                    } else {
                        status
                    };
                    m
                }
            }
        };
        if let Reference::Tag(_) = reference {
            self.guard_private(&up, &repo, &m.digest, grant, true)
                .await?;
        }
        Ok(m)
    }

    /// A manifest from memory or disk only; [`Error::NotCached`] otherwise.
    async fn cached_manifest(
        &self,
        up: &Arc<Upstream>,
        repo: &RepoName,
        reference: &Reference,
        accept: AcceptClass,
    ) -> Result<ManifestResponse, Error> {
        let digest = match reference {
            Reference::Digest(d) => d.clone(),
            Reference::Tag(tag) => {
                let key = TagKey {
                    upstream: up.config.id.clone(),
                    repo: repo.clone(),
                    tag: tag.clone(),
                    class: accept,
                };
                match self.cache.get(&Key::Tag(key.clone())).await {
                    Some(Value::Tag(t)) => t.record.digest.clone(),
                    _ => match self.stored_tag(&key).await? {
                        Some(rec) => rec.digest,
                        None => return Err(Error::NotCached),
                    },
                }
            }
        };
        if let Some(Value::Manifest(m)) = self.cache.get(&Key::Manifest(digest.clone())).await {
            return Ok(ManifestResponse {
                digest,
                bytes: m.bytes.clone(),
                media_type: m.media_type.clone(),
                status: CacheStatus::Hit,
            });
        }
        let Some((bytes, rec)) = self.store.manifest(&digest).await? else {
            return Err(Error::NotCached);
        };
        Ok(ManifestResponse {
            digest,
            bytes,
            media_type: MediaType::new(&rec.media_type),
            status: CacheStatus::Hit,
        })
    }

    async fn manifest_by_digest(
        &self,
        up: &Arc<Upstream>,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<ManifestResponse, Error> {
        let key = Key::Manifest(digest.clone());
        let (v, status) = cached(self, key, async {
            if let Some((bytes, rec)) = self.store.manifest(digest).await? {
                return Ok(manifest_value(bytes, MediaType::new(&rec.media_type)));
            }
            // In a cluster, one replica fetches it; the others read it from
            // the bucket once it is there.
            let found = || async { self.store.manifest(digest).await.ok().flatten() };
            let _turn = match self.coordinate(&format!("manifest\n{digest}"), found).await {
                Coordinated::Found((bytes, rec)) => {
                    return Ok(manifest_value(bytes, MediaType::new(&rec.media_type)));
                }
                Coordinated::Ours(held) => held,
            };
            // Ask with every modern type: by digest there is only one answer.
            let m = up
                .client
                .get_manifest(
                    repo,
                    &Reference::Digest(digest.clone()),
                    AcceptClass::all_modern(),
                )
                .await
                .map_err(|e| up.fail(e))?;
            if !digest.verify(&m.bytes) {
                let actual = Digest::of(digest.algorithm(), &m.bytes);
                return Err(up.corrupt(digest, Some(actual)));
            }
            let (store, d, bytes, mt) = (
                self.store.clone(),
                digest.clone(),
                m.bytes.clone(),
                m.media_type.clone(),
            );
            let (id, repo) = (up.config.id.clone(), repo.clone());
            self.persist(digest.clone(), async move {
                store.put_manifest(&d, bytes, &mt).await?;
                store.mark_repo(&id, &repo).await?;
                store.note_digest_ref(&id, &repo, &d).await
            })
            .await;
            Ok(manifest_value(m.bytes, m.media_type))
        })
        .await?;
        let Value::Manifest(m) = v else {
            // invariant: Key::Manifest entries only ever hold Value::Manifest.
            unreachable!("manifest key holds a tag value")
        };
        Ok(ManifestResponse {
            digest: digest.clone(),
            bytes: m.bytes.clone(),
            media_type: m.media_type.clone(),
            status,
        })
    }

    async fn resolve_tag(
        &self,
        up: &Arc<Upstream>,
        repo: &RepoName,
        tag: &Tag,
        accept: AcceptClass,
    ) -> Result<(Arc<TagEntry>, CacheStatus), Error> {
        let key = TagKey {
            upstream: up.config.id.clone(),
            repo: repo.clone(),
            tag: tag.clone(),
            class: accept,
        };
        let (v, status) = cached(self, Key::Tag(key.clone()), async {
            self.load_tag(up, &key).await.map(Value::Tag)
        })
        .await?;
        let Value::Tag(t) = v else {
            // invariant: Key::Tag entries only ever hold Value::Tag.
            unreachable!("tag key holds a manifest value")
        };
        Ok((t, status))
    }

    /// Loads a tag mapping: from disk while fresh, else revalidated with a
    /// HEAD, else fetched with a GET.
    async fn load_tag(&self, up: &Arc<Upstream>, key: &TagKey) -> Result<Arc<TagEntry>, Error> {
        let ttl = up.config.tag_ttl;
        let entry = |record, stale| Arc::new(TagEntry { record, ttl, stale });
        // A tag first asked with this `Accept` starts from what it resolved
        // to for another one the client also accepts (warmed with every
        // type, say): a HEAD confirms it (Docker Hub does not count HEADs),
        // and with upstream down it is served, as the last known digest.
        let disk = match self.stored_tag(key).await? {
            Some(r) => Some(r),
            None => self.sibling_tag(key).await,
        };
        if let Some(rec) = &disk
            && rec.age(self.clock.now()) < ttl
        {
            return Ok(entry(rec.clone(), false));
        }
        // In a cluster, one replica asks upstream about a tag per TTL; the
        // others take the record it writes to the bucket. The lease is
        // released when this load ends (dropped: in the background).
        let lease = format!(
            "tag\n{}\n{}\n{}\n{}",
            key.upstream,
            key.repo,
            key.tag.as_str(),
            key.class.key()
        );
        let newer = |r: &TagRecord| {
            disk.as_ref()
                .is_none_or(|old| r.checked_at_ms > old.checked_at_ms)
        };
        let _turn = match self
            .coordinate(&lease, || async {
                self.store.tag(key).await.ok().flatten().filter(newer)
            })
            .await
        {
            Coordinated::Found(rec) => return Ok(entry(rec, false)),
            Coordinated::Ours(held) => held,
        };
        let reference = Reference::Tag(key.tag.clone());
        let Some(old) = disk else {
            // Never seen: a GET answers in one round trip.
            return Ok(entry(self.fetch_tag(up, key).await?, false));
        };
        match up
            .client
            .head_manifest(&key.repo, &reference, key.class)
            .await
        {
            Ok(head) => match head.digest {
                Some(d) if d == old.digest => {
                    let rec = TagRecord {
                        checked_at_ms: tags_epoch_ms(self.clock.now()),
                        ..old
                    };
                    self.persist_tag(key, &rec).await;
                    Ok(entry(rec, false))
                }
                Some(d) => {
                    // The tag moved: fetch the new manifest by digest.
                    let m = self.manifest_by_digest(up, &key.repo, &d).await?;
                    let rec = TagRecord {
                        digest: d,
                        media_type: m.media_type.as_str().to_owned(),
                        size: m.bytes.len() as u64,
                        checked_at_ms: tags_epoch_ms(self.clock.now()),
                    };
                    self.persist_tag(key, &rec).await;
                    Ok(entry(rec, false))
                }
                // No digest header: only a GET can tell.
                None => Ok(entry(self.fetch_tag(up, key).await?, false)),
            },
            Err(e) if e.is_not_found() => {
                self.store.remove_tag(key).await?;
                Err(up.fail(e))
            }
            // Upstream unreachable (connect error, timeout, 5xx, 429, open
            // circuit): serve the last known digest for a while.
            Err(e)
                if e.is_unavailable() && old.age(self.clock.now()) < ttl + self.stale_if_error =>
            {
                let e = up.fail(e);
                tracing::warn!(repo = %key.repo, tag = %key.tag, error = %crate::error_chain(&e),
                    "tag revalidation failed; serving the last known digest");
                Ok(entry(old, true))
            }
            Err(e) => Err(up.fail(e)),
        }
    }

    /// GETs a manifest by tag, verifies it against the digest upstream
    /// announced (if any), stores it and records the tag.
    async fn fetch_tag(&self, up: &Arc<Upstream>, key: &TagKey) -> Result<TagRecord, Error> {
        let reference = Reference::Tag(key.tag.clone());
        let m = up
            .client
            .get_manifest(&key.repo, &reference, key.class)
            .await
            .map_err(|e| up.fail(e))?;
        let digest = match &m.digest_header {
            Some(d) if d.verify(&m.bytes) => d.clone(),
            // Upstream's Docker-Content-Digest does not match its bytes.
            Some(d) => return Err(up.corrupt(d, Some(Digest::of(d.algorithm(), &m.bytes)))),
            None => Digest::sha256_of(&m.bytes),
        };
        let rec = TagRecord {
            digest: digest.clone(),
            media_type: m.media_type.as_str().to_owned(),
            size: m.bytes.len() as u64,
            checked_at_ms: tags_epoch_ms(self.clock.now()),
        };
        // In order: the manifest before the tag that names it.
        let (store, d, bytes, mt) = (
            self.store.clone(),
            digest.clone(),
            m.bytes.clone(),
            m.media_type.clone(),
        );
        let (id, key_owned, r) = (up.config.id.clone(), key.clone(), rec.clone());
        let pending = self.pend_tag(key, &rec);
        self.persist(digest.clone(), async move {
            store.put_manifest(&d, bytes, &mt).await?;
            store.mark_repo(&id, &key_owned.repo).await?;
            let r = store.put_tag(&key_owned, &r).await.map(drop);
            pending.done();
            r
        })
        .await;
        self.cache
            .insert(Key::Manifest(digest), manifest_value(m.bytes, m.media_type))
            .await;
        Ok(rec)
    }
}

/// Who asks upstream for a piece of metadata, in a cluster.
enum Coordinated<T> {
    /// This replica, holding the lease (when there is a cluster to
    /// coordinate with) until the work is done.
    Ours(Option<Held>),
    /// Another replica asked, and its answer is in the bucket.
    Found(T),
}

impl Mirror {
    /// Takes the lease named by `what` (its SHA-256 keys the lease object),
    /// or, while another replica holds it, waits for that replica's answer
    /// to show up in the bucket (`found`). A holder that does not deliver
    /// within a lease's lifetime is taken over (or, if it renewed, asked
    /// alongside).
    async fn coordinate<T, F, Fut>(&self, what: &str, found: F) -> Coordinated<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        let Some(cluster) = &self.cluster else {
            return Coordinated::Ours(None);
        };
        let id = Digest::sha256_of(what.as_bytes());
        let holder = match cluster.claim(&id).await {
            Claim::Won(held) => {
                // Another replica may have finished just before: its lease
                // is gone, and its answer is in the bucket.
                if let Some(v) = found().await {
                    held.release().await;
                    return Coordinated::Found(v);
                }
                return Coordinated::Ours(Some(held));
            }
            Claim::Taken(h) => h,
            Claim::Alone(e) => {
                tracing::debug!(error = %crate::error_chain(&e),
                    "cannot coordinate with other replicas; asking upstream alone");
                return Coordinated::Ours(None);
            }
        };
        let deadline = tokio::time::Instant::now() + cluster.ttl();
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
            if let Some(v) = found().await {
                return Coordinated::Found(v);
            }
            if tokio::time::Instant::now() >= deadline {
                return match cluster.take_over(&id, &holder).await {
                    Claim::Won(held) => Coordinated::Ours(Some(held)),
                    _ => Coordinated::Ours(None),
                };
            }
        }
    }

    /// Writes a tag record behind the response.
    async fn persist_tag(&self, key: &TagKey, rec: &TagRecord) {
        let (store, key, rec) = (self.store.clone(), key.clone(), rec.clone());
        let pending = self.pend_tag(&key, &rec);
        self.persist(rec.digest.clone(), async move {
            let r = store.put_tag(&key, &rec).await.map(drop);
            pending.done();
            r
        })
        .await;
    }

    /// The most recently confirmed record of the tag under another accept
    /// class whose media type `key`'s class accepts.
    /// Best effort: a store that cannot list (S3 down) means none.
    async fn sibling_tag(&self, key: &TagKey) -> Option<TagRecord> {
        match self.store.tag_siblings(key).await {
            Ok(all) => all
                .into_iter()
                .filter(|r| key.class.accepts(&r.media_type))
                .max_by_key(|r| r.checked_at_ms),
            Err(e) => {
                tracing::warn!(repo = %key.repo, tag = %key.tag, error = %crate::error_chain(&e),
                    "cannot list the tag's other records; asking upstream");
                None
            }
        }
    }

    /// The tag record the store holds, or will once a write under way
    /// lands.
    async fn stored_tag(&self, key: &TagKey) -> Result<Option<TagRecord>, Error> {
        let pending = self
            .pending_tags
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(key)
            .cloned();
        match pending {
            Some(r) => Ok(Some(r)),
            None => Ok(self.store.tag(key).await?),
        }
    }

    /// Notes a tag record about to be written; [`PendingTag::done`] (or a
    /// drop) forgets it once the write is over.
    fn pend_tag(&self, key: &TagKey, rec: &TagRecord) -> PendingTag {
        self.pending_tags
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key.clone(), rec.clone());
        PendingTag {
            map: self.pending_tags.clone(),
            key: key.clone(),
            rec: rec.clone(),
        }
    }
}

/// A tag record being written (see `Mirror::pend_tag`).
struct PendingTag {
    map: Arc<std::sync::Mutex<std::collections::HashMap<TagKey, TagRecord>>>,
    key: TagKey,
    rec: TagRecord,
}

impl PendingTag {
    fn done(self) {}
}

impl Drop for PendingTag {
    fn drop(&mut self) {
        let mut m = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Only this write's record: a newer one may have replaced it.
        if m.get(&self.key) == Some(&self.rec) {
            m.remove(&self.key);
        }
    }
}

/// Persisting metadata is best effort: when the store fails (disk full),
/// the manifest is still served (and kept in memory), just not on disk.
pub(super) fn best_effort(digest: &Digest, r: Result<(), crate::store::Error>) {
    if let Err(e) = r {
        tracing::error!(%digest, error = %crate::error_chain(&e),
            "cannot store manifest metadata (disk full?); serving it uncached");
    }
}

fn manifest_value(bytes: Bytes, media_type: MediaType) -> Value {
    Value::Manifest(Arc::new(ManifestEntry { bytes, media_type }))
}
