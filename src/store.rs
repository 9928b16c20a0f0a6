//! The content-addressed store on disk: blobs (layers, configs and manifest
//! bytes), manifest records, and the persisted tag map.
//!
//! ```text
//! <root>/
//! ├── blobs/sha256/ab/ab12…ef          verified content, named by its digest
//! ├── manifests/sha256/ab/ab12…ef      manifest record: media type + size (JSON)
//! ├── repos/<upstream>/<repo…>/
//! │   └── _tags/<tag>.<accept-class>   tag record: digest, media type, checked-at (JSON)
//! ├── private-marks                    digests fetched for private repositories
//! ├── quarantine/                      blobs that failed `verify`, kept for inspection
//! └── tmp/                             in-progress writes; swept at start
//! ```
//!
//! Invariants:
//! - A file under `blobs/` always hashes to its name. Writers hash while they
//!   write, check size and digest, fsync, and only then rename from `tmp/`
//!   (same filesystem, so the rename is atomic), and fsync the directory.
//! - Every path is built from validated types (`Digest`, `RepoName`, `Tag`,
//!   `UpstreamId`), whose grammars exclude `.`, `..` and separators, so no
//!   path can leave the root.
//! - Blobs are shared by all upstreams: one copy per digest.
//!
//! The store knows nothing about HTTP or upstreams. Blocking file I/O runs on
//! tokio's blocking pool.

pub mod gc;
mod layout;
mod private;
pub mod read;
mod tags;
mod verify;
mod writer;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::oci::{Digest, MediaType};

pub use layout::Layout;
pub use private::PrivateMarks;
pub use tags::TagRecord;
pub use verify::VerifyReport;
pub use writer::BlobWriter;

/// A store error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A filesystem operation failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The bytes written do not hash to the expected digest.
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The digest the content was requested by.
        expected: Digest,
        /// The digest of what arrived.
        actual: Digest,
    },
    /// More or fewer bytes than announced.
    #[error("size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// Announced size.
        expected: u64,
        /// Bytes received.
        actual: u64,
    },
}

impl Error {
    pub(crate) fn io(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Self + use<> {
        let path = path.to_owned();
        move |source| Self::Io { op, path, source }
    }
}

/// What the store remembers about a manifest besides its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestRecord {
    /// The `Content-Type` upstream sent, verbatim.
    pub media_type: String,
    /// Length of the manifest bytes.
    pub size: u64,
}

/// The blob and metadata store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct BlobStore {
    layout: Arc<Layout>,
    /// Blobs being served (never evicted).
    in_use: Arc<gc::InUse>,
    /// `[storage] max_size`.
    max_size: Option<u64>,
    /// Approximate bytes under `blobs/`: recounted by every eviction pass,
    /// advanced by commits in between.
    approx_bytes: Arc<std::sync::atomic::AtomicU64>,
    /// Wakes the eviction task when a commit crosses `max_size`.
    over_budget: Arc<tokio::sync::Notify>,
    /// Eviction passes asked for by commits, and the last one answered.
    eviction: Arc<EvictionProgress>,
    /// Digests fetched for private repositories.
    private: Arc<PrivateMarks>,
}

/// Counts the eviction passes commits asked for and the ones done, so that
/// a caller can wait until eviction has caught up ([`BlobStore::evicted`]).
#[derive(Debug)]
struct EvictionProgress {
    /// Passes asked for (one per commit that left the store over budget).
    asked: std::sync::atomic::AtomicU64,
    /// The value of `asked` that the last finished pass had seen.
    done: tokio::sync::watch::Sender<u64>,
}

impl Default for EvictionProgress {
    fn default() -> Self {
        Self {
            asked: Default::default(),
            done: tokio::sync::watch::Sender::new(0),
        }
    }
}

/// Refresh a served blob's last-access time at most this often.
const ACCESS_GRANULARITY: std::time::Duration = std::time::Duration::from_secs(60);

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        // The closure panicked or the runtime is shutting down.
        Err(e) => Err(Error::Io {
            op: "blocking task",
            path: PathBuf::new(),
            source: io::Error::other(e.to_string()),
        }),
    }
}

impl BlobStore {
    /// Opens (creating if needed) a store at `root` and sweeps stale
    /// temporary files left by a previous process.
    pub async fn open(root: &Path) -> Result<Self, Error> {
        let layout = Arc::new(Layout::new(root));
        let l = layout.clone();
        let (swept, bytes, private) = blocking(move || {
            let swept = l.init()?;
            let bytes = l.entries()?.iter().map(|e| e.size).sum::<u64>();
            let private = PrivateMarks::load(&l.root().join("private-marks"))?;
            Ok((swept, bytes, private))
        })
        .await?;
        if swept > 0 {
            tracing::info!(swept, "removed stale temporary files");
        }
        Ok(Self {
            layout,
            in_use: Arc::default(),
            max_size: None,
            approx_bytes: Arc::new(std::sync::atomic::AtomicU64::new(bytes)),
            over_budget: Arc::default(),
            eviction: Arc::default(),
            private: Arc::new(private),
        })
    }

    /// The private marks (see [`PrivateMarks`]).
    pub fn private_marks(&self) -> &PrivateMarks {
        &self.private
    }

    /// Durably marks `digest` as content of the private repository `owner`.
    pub async fn mark_private(&self, digest: &Digest, owner: String) -> Result<(), Error> {
        if self.private.owned_by(digest, &owner) == Some(true) {
            return Ok(());
        }
        let (marks, digest) = (self.private.clone(), digest.clone());
        blocking(move || marks.mark(&digest, &owner)).await
    }

    /// Bounds the blobs to `max` bytes (see [`gc`]).
    pub fn with_max_size(mut self, max: Option<u64>) -> Self {
        self.max_size = max;
        self
    }

    /// Approximate bytes of stored blobs.
    pub fn stored_bytes(&self) -> u64 {
        self.approx_bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Accounts for a committed blob; wakes eviction when over budget.
    pub fn note_committed(&self, size: u64) {
        let now = self
            .approx_bytes
            .fetch_add(size, std::sync::atomic::Ordering::Relaxed)
            + size;
        if self.max_size.is_some_and(|m| now > m) {
            self.eviction
                .asked
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.over_budget.notify_one();
        }
    }

    /// Waits until eviction has answered every commit so far that left the
    /// store over budget. Needs the task of [`Self::spawn_evictor`].
    pub async fn evicted(&self) {
        let want = self
            .eviction
            .asked
            .load(std::sync::atomic::Ordering::SeqCst);
        let mut done = self.eviction.done.subscribe();
        // The sender lives in `self`, so the channel cannot close here.
        let _ = done.wait_for(|d| *d >= want).await;
    }

    /// One eviction pass: when blobs exceed `max_size`, deletes the least
    /// recently used (not being served) down to 90% of it.
    pub async fn evict_once(&self) -> Result<gc::GcReport, Error> {
        let Some(max) = self.max_size else {
            return Ok(gc::GcReport::default());
        };
        let (layout, in_use) = (self.layout.clone(), self.in_use.clone());
        let report = blocking(move || layout.gc(max, max / 10 * 9, &in_use)).await?;
        self.approx_bytes
            .store(report.after, std::sync::atomic::Ordering::Relaxed);
        Ok(report)
    }

    /// Runs eviction whenever a commit crosses the budget (and every minute
    /// as a backstop) until the task is aborted.
    pub fn spawn_evictor(&self) -> Option<tokio::task::JoinHandle<()>> {
        self.max_size?;
        let store = self.clone();
        Some(tokio::spawn(async move {
            loop {
                // Read before the pass: a commit during the pass asks again
                // (and leaves a wake-up), so it gets a pass of its own.
                let asked = store
                    .eviction
                    .asked
                    .load(std::sync::atomic::Ordering::SeqCst);
                if let Err(e) = store.evict_once().await {
                    tracing::error!(error = %crate::error_chain(&e), "eviction failed");
                }
                store.eviction.done.send_replace(asked);
                let _ = tokio::time::timeout(
                    std::time::Duration::from_secs(60),
                    store.over_budget.notified(),
                )
                .await;
            }
        }))
    }

    /// The path layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The size of a stored blob, or `None` when absent.
    pub async fn stat(&self, digest: &Digest) -> Result<Option<u64>, Error> {
        let path = self.layout.blob(digest);
        match tokio::fs::metadata(&path).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("stat", &path)(e)),
        }
    }

    /// Keeps `digest` from eviction while the guard lives, whether or not it
    /// is stored yet: for clients streaming a download that is about to be
    /// committed.
    pub fn hold(&self, digest: &Digest) -> gc::InUseGuard {
        self.in_use.hold(digest)
    }

    /// Opens a stored blob for reading, with its size. The guard keeps it
    /// from eviction while it is served; the open also counts as an access
    /// for LRU eviction.
    pub async fn open_blob(
        &self,
        digest: &Digest,
    ) -> Result<Option<(Arc<std::fs::File>, u64, gc::InUseGuard)>, Error> {
        let guard = self.in_use.hold(digest);
        let path = self.layout.blob(digest);
        let std_file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("open", &path)(e)),
        };
        let meta = std_file.metadata().map_err(Error::io("stat", &path))?;
        let now = std::time::SystemTime::now();
        let stale = meta
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .is_none_or(|age| age > ACCESS_GRANULARITY);
        if stale {
            // Best effort: a failure only makes eviction less accurate.
            let _ = std_file.set_modified(now);
        }
        Ok(Some((Arc::new(std_file), meta.len(), guard)))
    }

    /// Starts writing a blob that must hash to `digest`.
    pub async fn writer(&self, digest: &Digest) -> Result<BlobWriter, Error> {
        let layout = self.layout.clone();
        let digest = digest.clone();
        blocking(move || BlobWriter::create(layout, digest)).await
    }

    /// Reads a stored manifest: its bytes and record.
    pub async fn manifest(
        &self,
        digest: &Digest,
    ) -> Result<Option<(Bytes, ManifestRecord)>, Error> {
        let rec_path = self.layout.manifest_record(digest);
        let blob_path = self.layout.blob(digest);
        let digest = digest.clone();
        blocking(move || {
            let Some(rec) = read_json::<ManifestRecord>(&rec_path)? else {
                return Ok(None);
            };
            let bytes = match std::fs::read(&blob_path) {
                Ok(b) => Bytes::from(b),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(Error::io("read", &blob_path)(e)),
            };
            // Manifests are small: re-check them on every load from disk, so a
            // bit flip on disk is never served.
            if bytes.len() as u64 != rec.size || !digest.verify(&bytes) {
                tracing::warn!(%digest, "stored manifest fails its digest; ignoring it");
                return Ok(None);
            }
            Ok(Some((bytes, rec)))
        })
        .await
    }

    /// Stores manifest bytes (verified against `digest`) and its record.
    pub async fn put_manifest(
        &self,
        digest: &Digest,
        bytes: Bytes,
        media_type: &MediaType,
    ) -> Result<(), Error> {
        let mut w = self.writer(digest).await?;
        let rec = ManifestRecord {
            media_type: media_type.as_str().to_owned(),
            size: bytes.len() as u64,
        };
        let rec_path = self.layout.manifest_record(digest);
        let layout = self.layout.clone();
        let size = bytes.len() as u64;
        blocking(move || {
            w.write(&bytes)?;
            w.finish(Some(bytes.len() as u64))?;
            layout.write_json_atomic(&rec_path, &rec)
        })
        .await?;
        self.note_committed(size);
        Ok(())
    }

    /// Loads a tag record.
    pub async fn tag(&self, key: &tags::TagKey) -> Result<Option<TagRecord>, Error> {
        let path = self.layout.tag(key);
        blocking(move || read_json(&path)).await
    }

    /// Saves a tag record atomically.
    pub async fn put_tag(&self, key: &tags::TagKey, rec: &TagRecord) -> Result<(), Error> {
        let path = self.layout.tag(key);
        let layout = self.layout.clone();
        let rec = rec.clone();
        blocking(move || layout.write_json_atomic(&path, &rec)).await
    }

    /// Forgets a tag (it was deleted upstream).
    pub async fn remove_tag(&self, key: &tags::TagKey) -> Result<(), Error> {
        let path = self.layout.tag(key);
        blocking(move || match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove", &path)(e)),
        })
        .await
    }

    /// Records that a repository has cached content (for `_catalog`).
    pub async fn mark_repo(
        &self,
        upstream: &crate::config::UpstreamId,
        repo: &crate::oci::RepoName,
    ) -> Result<(), Error> {
        let dir = self.layout.repo_tags_dir(upstream, repo);
        blocking(move || std::fs::create_dir_all(&dir).map_err(Error::io("mkdir", &dir))).await
    }

    /// Re-hashes every blob and quarantines those that fail their digest
    /// (see [`VerifyReport`]). Safe to run while serving: a quarantined blob
    /// is simply fetched again on the next request.
    pub async fn verify(&self) -> Result<VerifyReport, Error> {
        let layout = self.layout.clone();
        blocking(move || layout.verify()).await
    }

    /// Repositories of `upstream` with cached content, sorted.
    pub async fn repos(&self, upstream: &crate::config::UpstreamId) -> Result<Vec<String>, Error> {
        let layout = self.layout.clone();
        let upstream = upstream.clone();
        blocking(move || layout.list_repos(&upstream)).await
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, Error> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("read", path)(e)),
    };
    match serde_json::from_slice(&bytes) {
        Ok(v) => Ok(Some(v)),
        Err(e) => {
            // A torn or foreign file: treat as absent, it will be rewritten.
            tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable record");
            Ok(None)
        }
    }
}

pub use tags::{TagKey, epoch_ms as tags_epoch_ms};

#[cfg(test)]
mod tests;
