//! The local store: blobs as files in a directory, bounded by LRU eviction.
//! It is the whole store when no remote backend is configured, and the read
//! tier and spool in front of one (S3) otherwise.
//!
//! ```text
//! <root>/
//! ├── blobs/sha256/ab/ab12…ef     verified content, named by its digest
//! ├── index.redb                  every blob's size and last access (see `index`)
//! ├── quarantine/                 blobs that failed `verify`, kept for inspection
//! └── tmp/                        in-progress writes (spools); swept at start
//! ```
//!
//! Invariants:
//! - A file under `blobs/` always hashes to its name: [`BlobWriter`] hashes
//!   while it writes, checks size and digest, fsyncs, and only then renames
//!   from `tmp/` (same filesystem, so the rename is atomic), and fsyncs the
//!   directory.
//! - Every path is built from a validated [`Digest`], whose grammar
//!   excludes `.`, `..` and separators, so no path can leave the root.

pub mod gc;
mod index;
mod layout;
mod verify;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::future::BoxFuture;

use super::writer::Publish;
use super::{Backend, BlobReader, BlobWriter, Error, Scope, VerifyReport, blocking};
use crate::oci::Digest;

pub use gc::{GcReport, InUseGuard};
pub(crate) use layout::Layout;

/// What a store does when another process (a running server) owns its
/// index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexUse {
    /// Fail: two servers must not share a directory.
    Own,
    /// Go on without it (tools beside a server: `verify`); eviction and
    /// the size count are then the server's business.
    IfFree,
}

/// What eviction must keep besides the blobs in use (the pinned images'
/// digests), asked for by each pass that evicts.
pub type Keep =
    Arc<dyn Fn() -> BoxFuture<'static, Arc<std::collections::HashSet<Digest>>> + Send + Sync>;

/// Refresh a served blob's last-access time at most this often.
const ACCESS_GRANULARITY: std::time::Duration = std::time::Duration::from_secs(60);

/// Blobs in a local directory. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LocalBlobs(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    layout: Layout,
    /// Sizes and last accesses, for eviction and the store's size (`None`:
    /// another process owns them, see [`IndexUse::IfFree`]).
    index: Option<Arc<index::Index>>,
    /// Blobs being served or written (never evicted).
    in_use: Arc<gc::InUse>,
    /// `[storage] max_size`.
    max_size: Option<u64>,
    /// Approximate bytes under `blobs/`: read from the index by every
    /// eviction pass, advanced by commits in between.
    approx_bytes: AtomicU64,
    /// Blobs evicted since this store was opened.
    evictions: AtomicU64,
    /// Wakes the eviction task when a commit crosses `max_size`.
    over_budget: tokio::sync::Notify,
    /// Eviction passes asked for by commits, and the last one answered.
    eviction: EvictionProgress,
}

/// Counts the eviction passes commits asked for and the ones done, so that
/// a caller can wait until eviction has caught up ([`LocalBlobs::evicted`]).
#[derive(Debug)]
struct EvictionProgress {
    /// Passes asked for (one per commit that left the store over budget).
    asked: AtomicU64,
    /// The value of `asked` that the last finished pass had seen.
    done: tokio::sync::watch::Sender<u64>,
}

impl LocalBlobs {
    /// Opens (creating if needed) the blob directory at `root`, bounded to
    /// `max_size` bytes, and sweeps temporary files left by a previous
    /// process. Fails when another process serves from it.
    pub async fn open(root: &Path, max_size: Option<u64>) -> Result<Self, Error> {
        Self::open_with(root, max_size, IndexUse::Own).await
    }

    /// [`LocalBlobs::open`], saying what to do when another process owns
    /// the index.
    pub async fn open_with(
        root: &Path,
        max_size: Option<u64>,
        index_use: IndexUse,
    ) -> Result<Self, Error> {
        let layout = Layout::new(root);
        let (layout, swept, index) = blocking(move || {
            let root = layout.root();
            std::fs::create_dir_all(root).map_err(Error::io("mkdir", root))?;
            let index = index::Index::open(root, root.join("blobs"))?;
            let index = match (index, index_use) {
                (Some(i), _) => Some(i),
                (None, IndexUse::IfFree) => None,
                (None, IndexUse::Own) => {
                    return Err(Error::io("lock", &layout.root().join("index.redb"))(
                        io::Error::other(
                            "the data directory is in use by another mirrorgate process",
                        ),
                    ));
                }
            };
            // The sweep only once the directory is ours: a tool beside a
            // running server must not delete its downloads.
            let swept = if index.is_some() { layout.init()? } else { 0 };
            Ok((layout, swept, index))
        })
        .await?;
        if let Some(i) = &index {
            i.applied().await;
        }
        let bytes = index.as_ref().map_or(0, |i| i.bytes());
        if swept > 0 {
            tracing::info!(swept, "removed stale temporary files");
        }
        Ok(Self(Arc::new(Inner {
            layout,
            index,
            in_use: Arc::default(),
            max_size,
            approx_bytes: AtomicU64::new(bytes),
            evictions: AtomicU64::new(0),
            over_budget: Default::default(),
            eviction: EvictionProgress {
                asked: AtomicU64::new(0),
                done: tokio::sync::watch::Sender::new(0),
            },
        })))
    }

    /// Waits until the index has applied every update so far, and any
    /// rebuild is done (tests close a store only once it is settled).
    #[cfg(test)]
    pub(crate) async fn settle_index(&self) {
        if let Some(i) = &self.0.index {
            i.flush().await;
        }
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        self.0.layout.root()
    }

    /// Where a stored blob's file is (it may not exist).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.0.layout.blob(digest)
    }

    /// Writes `bytes` to `path` atomically, through `tmp/`.
    pub(crate) fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<(), Error> {
        self.0.layout.write_atomic(path, bytes)
    }

    /// Keeps `digest` from eviction while the guard lives, whether or not it
    /// is stored yet.
    pub fn hold(&self, digest: &Digest) -> InUseGuard {
        self.0.in_use.hold(digest)
    }

    /// Blobs evicted since this store was opened.
    pub fn evictions(&self) -> u64 {
        self.0.evictions.load(Ordering::Relaxed)
    }

    /// Whether `digest` is being served or written by this process.
    pub fn in_use(&self, digest: &Digest) -> bool {
        self.0.in_use.contains(digest)
    }

    /// Approximate bytes of stored blobs.
    pub fn stored_bytes(&self) -> u64 {
        self.0.approx_bytes.load(Ordering::Relaxed)
    }

    /// A writer whose verified spool `publish` takes over (a remote backend
    /// that keeps a copy here through [`LocalBlobs::publisher`]).
    pub(crate) async fn writer_with(
        &self,
        digest: &Digest,
        publish: Box<dyn Publish>,
    ) -> Result<BlobWriter, Error> {
        let tmp = self.0.layout.tmp_file(digest.hex());
        let (guard, digest) = (self.hold(digest), digest.clone());
        blocking(move || BlobWriter::create(tmp, digest, Some(guard), publish)).await
    }

    /// [`LocalBlobs::writer_with`] over the bytes of the local file `from`,
    /// moved rather than copied (see [`BlobWriter::adopt`]).
    pub(crate) async fn writer_from(
        &self,
        digest: &Digest,
        from: PathBuf,
        hashed: Option<crate::oci::Digester>,
        publish: Box<dyn Publish>,
    ) -> Result<BlobWriter, Error> {
        let tmp = self.0.layout.tmp_file(digest.hex());
        let (guard, digest) = (self.hold(digest), digest.clone());
        blocking(move || BlobWriter::adopt(tmp, &from, digest, hashed, Some(guard), publish)).await
    }

    /// Publishes a verified spool into this store: rename into place, then
    /// account for it.
    pub(crate) fn publisher(&self) -> Box<dyn Publish> {
        Box::new(LocalPublish(self.clone()))
    }

    /// Publishes the verified, fsynced file at `tmp` as `digest`. Blocking.
    pub(crate) fn adopt(&self, tmp: &Path, digest: &Digest, size: u64) -> Result<(), Error> {
        layout::rename_into_place(tmp, &self.0.layout.blob(digest))?;
        if let Some(i) = &self.0.index {
            i.insert(digest, size, std::time::SystemTime::now());
        }
        self.note_committed(size);
        Ok(())
    }

    /// Accounts for a committed blob; wakes eviction when over budget.
    fn note_committed(&self, size: u64) {
        let now = self.0.approx_bytes.fetch_add(size, Ordering::Relaxed) + size;
        if self.0.max_size.is_some_and(|m| now > m) {
            self.0.eviction.asked.fetch_add(1, Ordering::SeqCst);
            self.0.over_budget.notify_one();
        }
    }

    /// Waits until eviction has answered every commit so far that left the
    /// store over budget. Needs the task of [`Self::spawn_evictor`].
    pub async fn evicted(&self) {
        let want = self.0.eviction.asked.load(Ordering::SeqCst);
        let mut done = self.0.eviction.done.subscribe();
        // The sender lives in `self`, so the channel cannot close here.
        let _ = done.wait_for(|d| *d >= want).await;
    }

    /// One eviction pass: when blobs exceed `max_size`, deletes the least
    /// recently used (not in use) down to 90% of it. Reads the index only as
    /// far as it evicts.
    pub async fn evict_once(&self) -> Result<GcReport, Error> {
        self.evict_keeping(None).await
    }

    /// [`Self::evict_once`], never deleting what `keep` answers (asked only
    /// when the pass must evict).
    pub async fn evict_keeping(&self, keep: Option<&Keep>) -> Result<GcReport, Error> {
        let Some(max) = self.0.max_size else {
            return Ok(GcReport::default());
        };
        let Some(index) = &self.0.index else {
            return Ok(GcReport::default());
        };
        index.flush().await;
        let before = index.bytes();
        self.0.approx_bytes.store(before, Ordering::Relaxed);
        if before <= max {
            return Ok(GcReport {
                before,
                after: before,
                evicted: 0,
            });
        }
        let me = self.clone();
        let want = before - max / 10 * 9;
        let pinned = match keep {
            Some(k) => k().await,
            None => Arc::default(),
        };
        let evicted = blocking(move || {
            let inner = &me.0;
            let Some(index) = &inner.index else {
                return Ok(0);
            };
            let victims = index.oldest(want, |d| inner.in_use.contains(d) || pinned.contains(d))?;
            for (d, _) in &victims {
                let path = inner.layout.blob(d);
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io("evict", &path)(e)),
                }
                index.remove(d);
            }
            Ok(victims.len())
        })
        .await?;
        index.flush().await;
        let after = index.bytes();
        self.0.approx_bytes.store(after, Ordering::Relaxed);
        self.0
            .evictions
            .fetch_add(evicted as u64, Ordering::Relaxed);
        if evicted > 0 {
            tracing::info!(before, after, evicted, "evicted least recently used blobs");
        }
        Ok(GcReport {
            before,
            after,
            evicted,
        })
    }

    /// Runs eviction whenever a commit crosses the budget (and every minute
    /// as a backstop) until the task is aborted.
    pub fn spawn_evictor(&self) -> Option<tokio::task::JoinHandle<()>> {
        self.spawn_evictor_keeping(None)
    }

    /// [`Self::spawn_evictor`], never evicting what `keep` answers.
    pub fn spawn_evictor_keeping(&self, keep: Option<Keep>) -> Option<tokio::task::JoinHandle<()>> {
        self.0.max_size?;
        let me = self.clone();
        Some(tokio::spawn(async move {
            loop {
                // Read before the pass: a commit during the pass asks again
                // (and leaves a wake-up), so it gets a pass of its own.
                let asked = me.0.eviction.asked.load(Ordering::SeqCst);
                if let Err(e) = me.evict_keeping(keep.as_ref()).await {
                    tracing::error!(error = %crate::error_chain(&e), "eviction failed");
                }
                me.0.eviction.done.send_replace(asked);
                let _ = tokio::time::timeout(
                    std::time::Duration::from_secs(60),
                    me.0.over_budget.notified(),
                )
                .await;
            }
        }))
    }

    /// Opens a stored blob; the open counts as an access for eviction.
    pub async fn open_blob(&self, digest: &Digest) -> Result<Option<BlobReader>, Error> {
        let guard = self.hold(digest);
        let path = self.0.layout.blob(digest);
        // A sync open and fstat: they hit the dentry and inode caches for
        // any blob served recently; the blocking pool costs more than they do.
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("open", &path)(e)),
        };
        let meta = file.metadata().map_err(Error::io("stat", &path))?;
        let now = std::time::SystemTime::now();
        let stale = meta
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .is_none_or(|age| age > ACCESS_GRANULARITY);
        if stale {
            // Best effort: a failure only makes eviction less accurate.
            let _ = file.set_modified(now);
            if let Some(i) = &self.0.index {
                i.touch(digest, now);
            }
        }
        Ok(Some(BlobReader::file(
            Arc::new(file),
            meta.len(),
            Some(guard),
        )))
    }
}

/// The local store's publish step: rename into `blobs/`.
#[derive(Debug)]
struct LocalPublish(LocalBlobs);

impl Publish for LocalPublish {
    fn publish(
        self: Box<Self>,
        tmp: PathBuf,
        digest: Digest,
        size: u64,
    ) -> BoxFuture<'static, Result<(), Error>> {
        Box::pin(blocking(move || self.0.adopt(&tmp, &digest, size)))
    }
}

impl Backend for LocalBlobs {
    fn describe(&self) -> String {
        format!("directory {}", self.root().display())
    }

    fn stat<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Result<Option<u64>, Error>> {
        Box::pin(async move {
            let path = self.0.layout.blob(digest);
            match tokio::fs::metadata(&path).await {
                Ok(m) => Ok(Some(m.len())),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(Error::io("stat", &path)(e)),
            }
        })
    }

    fn open<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Result<Option<BlobReader>, Error>> {
        Box::pin(self.open_blob(digest))
    }

    fn create<'a>(
        &'a self,
        digest: &'a Digest,
        _scope: Scope,
    ) -> BoxFuture<'a, Result<BlobWriter, Error>> {
        Box::pin(self.writer_with(digest, self.publisher()))
    }

    fn create_from<'a>(
        &'a self,
        digest: &'a Digest,
        from: PathBuf,
        hashed: Option<crate::oci::Digester>,
    ) -> BoxFuture<'a, Result<BlobWriter, Error>> {
        Box::pin(self.writer_from(digest, from, hashed, self.publisher()))
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<super::StoredBlob>, Error>> {
        let me = self.clone();
        Box::pin(blocking(move || {
            let mut out = Vec::new();
            layout::walk_files(&me.0.layout.root().join("blobs"), |path, meta| {
                if let Some(digest) = gc::digest_of(&path) {
                    out.push(super::StoredBlob {
                        digest,
                        size: meta.len(),
                        modified: meta.modified().unwrap_or(std::time::UNIX_EPOCH),
                    });
                }
                Ok(())
            })?;
            Ok(out)
        }))
    }

    fn delete<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let path = self.0.layout.blob(digest);
            let size = match tokio::fs::metadata(&path).await {
                Ok(m) => m.len(),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(Error::io("stat", &path)(e)),
            };
            match tokio::fs::remove_file(&path).await {
                Ok(()) => {
                    if let Some(i) = &self.0.index {
                        i.remove(digest);
                    }
                    let _ = self.0.approx_bytes.fetch_update(
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                        |b| Some(b.saturating_sub(size)),
                    );
                    Ok(())
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(Error::io("remove", &path)(e)),
            }
        })
    }

    fn verify(&self) -> BoxFuture<'_, Result<VerifyReport, Error>> {
        let me = self.clone();
        Box::pin(blocking(move || {
            me.0.layout.verify(&|d: &Digest| {
                if let Some(i) = &me.0.index {
                    i.remove(d);
                }
            })
        }))
    }

    fn local(&self) -> Option<&LocalBlobs> {
        Some(self)
    }
}

#[cfg(test)]
mod tests;
