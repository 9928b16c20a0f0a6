//! The content-addressed store: blobs (layers, configs and manifest bytes)
//! and the metadata records beside them (manifest records, tags,
//! repository and private marks), behind one interface that hides where they
//! live.
//!
//! ```text
//! store            Store: what the mirror uses (blobs + records + private marks)
//! ├── Backend      trait: a blob backend (stat, open, create, delete, verify, presign)
//! ├── reader       BlobReader (a stored blob), Spool (a blob being written)
//! ├── writer       BlobWriter: spool, hash, verify; Publish: the backend's commit
//! ├── records      Records trait (get/put/delete/list by key); FsRecords
//! ├── private      PrivateMarks over Records
//! ├── inventory    what is stored: references, closures, pins; rm and gc
//! ├── hosted       records of hosted namespaces: blob links, pushed manifests, tags, referrers
//! ├── uploads      upload sessions of pushed blobs (local files), committed through BlobWriter
//! ├── local        LocalBlobs: files under a directory, LRU-bounded (gc, verify)
//! └── contract     the suite every backend passes
//! ```
//!
//! Invariants, for every backend:
//! - Nothing is visible under a digest it does not hash to: every write goes
//!   through [`BlobWriter`], which hashes while it spools, checks size and
//!   digest, and only then lets the backend publish (rename into place,
//!   complete an upload). A failed or dropped writer publishes nothing.
//! - A blob being written is readable by followers from its local spool,
//!   whatever the backend (an unfinished upload cannot be read back).
//! - Keys and paths are built from validated types (`Digest`, `RepoName`,
//!   `Tag`, `UpstreamId`) only, so nothing can name a place outside the
//!   store.
//! - Blobs are shared by all upstreams: one copy per digest.
//!
//! The store knows nothing about HTTP or upstreams. Blocking file I/O runs
//! on tokio's blocking pool.

pub mod contract;
pub mod hosted;
pub mod inventory;
pub mod local;
mod private;
pub mod reader;
pub mod records;
pub mod s3;
pub mod uploads;
mod writer;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::config::UpstreamId;
use crate::oci::{Digest, MediaType, RepoName};

pub use crate::tag::{TagKey, TagRecord};
pub use inventory::{Usage, UsageRow};
pub use local::{GcReport, InUseGuard, LocalBlobs};
pub use private::PrivateMarks;
pub use reader::{BlobReader, Spool};
pub use records::{FsRecords, RecordKey, Records};
pub use uploads::{Committed, Upload, UploadError, Uploads};
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
    /// A remote backend (S3) failed.
    #[error("{op} {at}")]
    Backend {
        /// What was being done.
        op: &'static str,
        /// On which key or object.
        at: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
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

/// What a write is for: every copy the store keeps, or only the local read
/// tier in front of a remote backend (filling it from the remote copy,
/// which must not be uploaded again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// A new blob: durable wherever the backend keeps blobs.
    Durable,
    /// A local copy of a blob the backend already has durably.
    ReadTier,
}

/// A blob backend: where verified blobs live. The local store and S3
/// implement it; [`contract`] is the suite each one passes.
pub trait Backend: std::fmt::Debug + Send + Sync + 'static {
    /// Where the blobs are, for log lines and `verify`'s report.
    fn describe(&self) -> String;

    /// The size of a stored blob, or `None` when absent.
    fn stat<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Result<Option<u64>, Error>>;

    /// Opens a stored blob for reading. The reader keeps a local blob from
    /// eviction while it lives, and the open counts as an access.
    fn open<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Result<Option<BlobReader>, Error>>;

    /// Starts a verified write of `digest`.
    fn create<'a>(
        &'a self,
        digest: &'a Digest,
        scope: Scope,
    ) -> BoxFuture<'a, Result<BlobWriter, Error>>;

    /// Starts a durable, verified write of `digest` over the bytes of the
    /// local file `from` (a pushed upload's, under the store's local
    /// directory), moved rather than copied. `hashed` has seen every byte
    /// of it when given; otherwise it is hashed again.
    fn create_from<'a>(
        &'a self,
        digest: &'a Digest,
        from: PathBuf,
        hashed: Option<crate::oci::Digester>,
    ) -> BoxFuture<'a, Result<BlobWriter, Error>>;

    /// How a write of `digest` made for [`Scope::ReadTier`] becomes
    /// durable instead (`None`: every write of this backend is).
    fn durable_publish(&self, _digest: &Digest) -> Option<Durable> {
        None
    }

    /// Every stored blob: digest, size and when it was last written (or,
    /// for a local blob, last read: reads refresh it to the minute). Files
    /// or objects not named by a digest are left out.
    fn list(&self) -> BoxFuture<'_, Result<Vec<StoredBlob>, Error>>;

    /// Deletes a stored blob (absent: nothing to do).
    fn delete<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Result<(), Error>>;

    /// Re-hashes every stored blob and removes (quarantines) those that
    /// fail their digest.
    fn verify(&self) -> BoxFuture<'_, Result<VerifyReport, Error>>;

    /// A URL a client may fetch the stored blob from directly (presigned,
    /// for the backend's configured lifetime), when the backend is set up to
    /// offer them and holds the blob.
    fn presign<'a>(
        &'a self,
        _digest: &'a Digest,
    ) -> BoxFuture<'a, Result<Option<url::Url>, Error>> {
        Box::pin(async { Ok(None) })
    }

    /// Starts the backend's own background work (the S3 backend sweeps
    /// abandoned uploads), if it has any.
    fn spawn_janitor(&self) -> Option<tokio::task::JoinHandle<()>> {
        None
    }

    /// The local directory of blobs that eviction bounds (the whole store,
    /// or the read tier in front of a remote one).
    fn local(&self) -> Option<&LocalBlobs>;

    /// The S3 calls made so far, for a backend on a bucket.
    fn s3_calls(&self) -> Option<&s3::Calls> {
        None
    }
}

/// How long eviction trusts the pins it read.
pub const PINS_FRESH: std::time::Duration = std::time::Duration::from_secs(30);

/// One stored blob, as [`Backend::list`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBlob {
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// When it was last written or (locally) read.
    pub modified: std::time::SystemTime,
}

/// The durable publish step of a backend (see
/// [`Backend::durable_publish`]).
#[derive(Debug)]
pub struct Durable(Box<dyn writer::Publish>);

/// What a verification pass found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Blobs that hash to their name.
    pub ok: u64,
    /// Their total size.
    pub bytes: u64,
    /// What was moved out of the way (paths or object keys).
    pub quarantined: Vec<String>,
}

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

/// The store: blobs, records and private marks. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    blobs: Arc<dyn Backend>,
    records: Arc<dyn Records>,
    private: Arc<PrivateMarks>,
    /// The bucket's lease objects, with the S3 backend.
    leases: Option<s3::Leases>,
    /// Blobs being pushed (in the local directory).
    uploads: Uploads,
}

impl Store {
    /// The local store at `root` (created if needed), its blobs bounded to
    /// `max_size`; sweeps stale temporary files of a previous process.
    pub async fn open_local(root: &Path, max_size: Option<u64>) -> Result<Self, Error> {
        let local = LocalBlobs::open(root, max_size).await?;
        let records = Arc::new(FsRecords::new(local.clone()));
        Self::from_parts(Arc::new(local), records, Some(&root.join("private-marks"))).await
    }

    /// The store `config` describes: the local directory, or an S3 bucket
    /// with the directory as its read tier (bounded by `max_size`).
    pub async fn from_config(config: &crate::config::Config) -> Result<Self, Error> {
        Self::from_config_with(config, local::IndexUse::Own).await
    }

    /// [`Store::from_config`] for a tool beside a server (see
    /// [`Store::open_local_beside_server`]).
    pub async fn from_config_beside_server(config: &crate::config::Config) -> Result<Self, Error> {
        Self::from_config_with(config, local::IndexUse::IfFree).await
    }

    async fn from_config_with(
        config: &crate::config::Config,
        index_use: local::IndexUse,
    ) -> Result<Self, Error> {
        let Some(c) = &config.s3 else {
            let root = &config.storage_root;
            let local = LocalBlobs::open_with(root, config.max_size, index_use).await?;
            let records = Arc::new(FsRecords::new(local.clone()));
            return Self::from_parts(Arc::new(local), records, Some(&root.join("private-marks")))
                .await;
        };
        let tier = LocalBlobs::open_with(&config.storage_root, config.max_size, index_use).await?;
        let bucket = s3::Bucket::build(c).map_err(|e| Error::Backend {
            op: "connect",
            at: format!("s3://{}", c.bucket),
            source: Box::new(e),
        })?;
        let blobs = s3::S3Blobs::new(bucket.clone(), tier, c);
        let records = Arc::new(s3::S3Records::new(bucket.clone()));
        let mut store = Self::from_parts(Arc::new(blobs), records, None).await?;
        store.leases = Some(s3::Leases::new(bucket));
        Ok(store)
    }

    /// The local store at `root` for a tool that may run beside a server
    /// on the same directory (`verify`): it neither sweeps `tmp/` nor needs
    /// the index when the server owns it.
    pub async fn open_local_beside_server(root: &Path) -> Result<Self, Error> {
        let local = LocalBlobs::open_with(root, None, local::IndexUse::IfFree).await?;
        let records = Arc::new(FsRecords::new(local.clone()));
        Self::from_parts(Arc::new(local), records, Some(&root.join("private-marks"))).await
    }

    /// Where the blobs are (a directory, or a bucket and its read tier).
    pub fn describe(&self) -> String {
        self.blobs.describe()
    }

    /// A store over any backend and records (loads the private marks, and
    /// those of a legacy marks file when there is one).
    pub async fn from_parts(
        blobs: Arc<dyn Backend>,
        records: Arc<dyn Records>,
        legacy_marks: Option<&Path>,
    ) -> Result<Self, Error> {
        let private = PrivateMarks::load_or_retry(records.clone(), legacy_marks).await;
        let uploads = Uploads::new(&blobs.local().map_or_else(
            || std::env::temp_dir().join("mirrorgate"),
            |l| l.root().to_owned(),
        ));
        Ok(Self {
            blobs,
            records,
            private,
            leases: None,
            uploads,
        })
    }

    /// The lease objects of the shared bucket, for replicas that coordinate
    /// their fills (`None` without S3).
    pub fn leases(&self) -> Option<&s3::Leases> {
        self.leases.as_ref()
    }

    /// Makes a write that was started for the read tier only durable (for
    /// a replica that took over another's fill): the backend uploads it at
    /// the commit, from its first byte.
    pub fn make_durable(&self, writer: &mut BlobWriter) {
        if let Some(Durable(p)) = self.blobs.durable_publish(writer.digest()) {
            writer.republish(p);
        }
    }

    /// The blob backend.
    pub fn blobs(&self) -> &Arc<dyn Backend> {
        &self.blobs
    }

    /// The private marks (see [`PrivateMarks`]).
    pub fn private_marks(&self) -> &PrivateMarks {
        &self.private
    }

    /// Durably marks `digest` as content of the private repository `owner`.
    pub async fn mark_private(&self, digest: &Digest, owner: String) -> Result<(), Error> {
        self.private.mark(digest, &owner).await
    }

    /// Whether the store can serve: its local directory (the whole store,
    /// or the read tier and spool of a remote one) and its temporary
    /// directory exist. A remote backend being down does not count: the
    /// read tier serves, and fills pass through.
    pub async fn usable(&self) -> Result<(), Error> {
        let Some(l) = self.blobs.local() else {
            return Ok(());
        };
        let tmp = l.root().join("tmp");
        match tokio::fs::metadata(&tmp).await {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(Error::io("stat", &tmp)(io::Error::other("not a directory"))),
            Err(e) => Err(Error::io("stat", &tmp)(e)),
        }
    }

    /// Approximate bytes of locally stored blobs.
    pub fn stored_bytes(&self) -> u64 {
        self.blobs.local().map_or(0, LocalBlobs::stored_bytes)
    }

    /// Waits until eviction has answered every commit so far that left the
    /// local blobs over budget.
    pub async fn evicted(&self) {
        if let Some(l) = self.blobs.local() {
            l.evicted().await;
        }
    }

    /// Starts the store's background tasks: eviction (when the local
    /// blobs are bounded) and the backend's janitor. Abort them to stop.
    pub fn spawn_maintenance(&self) -> Vec<tokio::task::JoinHandle<()>> {
        let evictor = self
            .blobs
            .local()
            .and_then(|l| l.spawn_evictor_keeping(Some(self.keep_pinned())));
        evictor
            .into_iter()
            .chain(self.blobs.spawn_janitor())
            .collect()
    }

    /// What eviction keeps: the pinned images' digests, read again when
    /// older than [`PINS_FRESH`] (a pin made by another process counts
    /// from the next read).
    fn keep_pinned(&self) -> local::Keep {
        type Cached = Option<(tokio::time::Instant, Arc<std::collections::HashSet<Digest>>)>;
        let cache: Arc<tokio::sync::Mutex<Cached>> = Arc::default();
        let store = self.clone();
        Arc::new(move || {
            let (store, cache) = (store.clone(), cache.clone());
            Box::pin(async move {
                let mut c = cache.lock().await;
                if let Some((at, set)) = &*c
                    && at.elapsed() < PINS_FRESH
                {
                    return set.clone();
                }
                let set = match store.pinned_digests().await {
                    Ok(s) => Arc::new(s),
                    Err(e) => {
                        // Keep the last known pins rather than none.
                        tracing::warn!(error = %crate::error_chain(&e), "cannot read the pins; keeping the last known ones");
                        return c.as_ref().map(|(_, s)| s.clone()).unwrap_or_default();
                    }
                };
                *c = Some((tokio::time::Instant::now(), set.clone()));
                set
            })
        })
    }

    /// The size of a stored blob, or `None` when absent.
    pub async fn stat(&self, digest: &Digest) -> Result<Option<u64>, Error> {
        self.blobs.stat(digest).await
    }

    /// Keeps `digest` from eviction while the guard lives, whether or not
    /// it is stored yet: for clients streaming a download that is about to
    /// be committed.
    pub fn hold(&self, digest: &Digest) -> Option<InUseGuard> {
        self.blobs.local().map(|l| l.hold(digest))
    }

    /// Opens a stored blob for reading.
    pub async fn open(&self, digest: &Digest) -> Result<Option<BlobReader>, Error> {
        self.blobs.open(digest).await
    }

    /// Starts writing a blob that must hash to `digest`.
    pub async fn writer(&self, digest: &Digest, scope: Scope) -> Result<BlobWriter, Error> {
        self.blobs.create(digest, scope).await
    }

    /// A presigned URL for a stored blob, when the backend offers them.
    pub async fn presign(&self, digest: &Digest) -> Result<Option<url::Url>, Error> {
        self.blobs.presign(digest).await
    }

    /// Reads a stored manifest: its bytes and record. Bytes that fail their
    /// digest are never returned.
    pub async fn manifest(
        &self,
        digest: &Digest,
    ) -> Result<Option<(Bytes, ManifestRecord)>, Error> {
        let Some(rec) = self
            .record::<ManifestRecord>(&keys::manifest(digest))
            .await?
        else {
            return Ok(None);
        };
        let Some(reader) = self.blobs.open(digest).await? else {
            return Ok(None);
        };
        let bytes = reader.read_all().await.map_err(|source| Error::Backend {
            op: "read manifest",
            at: digest.to_string(),
            source: Box::new(source),
        })?;
        // Manifests are small: re-check them on every load, so a bit flip
        // in storage is never served.
        if bytes.len() as u64 != rec.size || !digest.verify(&bytes) {
            tracing::warn!(%digest, "stored manifest fails its digest; ignoring it");
            return Ok(None);
        }
        Ok(Some((bytes, rec)))
    }

    /// Stores manifest bytes (verified against `digest`) and its record.
    pub async fn put_manifest(
        &self,
        digest: &Digest,
        bytes: Bytes,
        media_type: &MediaType,
    ) -> Result<(), Error> {
        let rec = ManifestRecord {
            media_type: media_type.as_str().to_owned(),
            size: bytes.len() as u64,
        };
        if self.blobs.stat(digest).await? != Some(rec.size) {
            let mut w = self.writer(digest, Scope::Durable).await?;
            let (w, n) = blocking(move || {
                w.write(&bytes)?;
                Ok((w, bytes.len() as u64))
            })
            .await?;
            w.finish(Some(n)).await?;
        }
        self.put_record(&keys::manifest(digest), &rec).await
    }

    /// Loads a tag record.
    pub async fn tag(&self, key: &TagKey) -> Result<Option<TagRecord>, Error> {
        self.record(&keys::tag(key)).await
    }

    /// Saves a tag record atomically, unless the stored one was confirmed
    /// more recently (by another replica on the same bucket, or by a write
    /// that overtook this one): a tag never goes back to an older
    /// confirmation. Returns the record that is stored now.
    pub async fn put_tag(&self, key: &TagKey, rec: &TagRecord) -> Result<TagRecord, Error> {
        let key = keys::tag(key);
        let bytes = Bytes::from(serde_json::to_vec(rec).map_err(|e| Error::Io {
            op: "serialize",
            path: PathBuf::from(key.as_str()),
            source: io::Error::other(e),
        })?);
        // A few rounds: each lost one means another writer just wrote.
        for _ in 0..5 {
            let current = self.records.get_versioned(&key).await?;
            let version = match &current {
                Some((v, b)) => {
                    if let Ok(cur) = serde_json::from_slice::<TagRecord>(b)
                        && cur.checked_at_ms > rec.checked_at_ms
                    {
                        return Ok(cur);
                    }
                    v.as_deref()
                }
                None => None,
            };
            if self.records.put_if(&key, bytes.clone(), version).await? {
                return Ok(rec.clone());
            }
        }
        Err(Error::Backend {
            op: "write tag record",
            at: key.to_string(),
            source: "other writers kept replacing it".into(),
        })
    }

    /// The records of the same tag under other accept classes than
    /// `key`'s (what other clients resolved it to).
    pub async fn tag_siblings(&self, key: &TagKey) -> Result<Vec<TagRecord>, Error> {
        let own = keys::tag(key);
        let dir = keys::tags_dir(&key.upstream, &key.repo);
        let prefix = format!("{}.", key.tag.as_str());
        let mut out = Vec::new();
        for k in self.records.list(&dir).await? {
            let Some(file) = k.components().last() else {
                continue;
            };
            // <tag>.<class>, the class without dots
            let same_tag = file
                .strip_prefix(&prefix)
                .is_some_and(|class| !class.is_empty() && !class.contains('.'));
            if k != own
                && same_tag
                && let Some(r) = self.record::<TagRecord>(&k).await?
            {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Forgets a tag (it was deleted upstream).
    pub async fn remove_tag(&self, key: &TagKey) -> Result<(), Error> {
        self.records.delete(&keys::tag(key)).await
    }

    /// Records that a repository has cached content (for `_catalog`).
    pub async fn mark_repo(&self, upstream: &UpstreamId, repo: &RepoName) -> Result<(), Error> {
        let key = keys::repo_mark(upstream, repo);
        if self.records.get(&key).await?.is_none() {
            self.records.put(&key, Bytes::new()).await?;
        }
        Ok(())
    }

    /// Repositories of `upstream` with cached content, sorted.
    pub async fn repos(&self, upstream: &UpstreamId) -> Result<Vec<String>, Error> {
        let keys = self.records.list(&keys::repos(upstream)).await?;
        let mut out: Vec<String> = keys
            .iter()
            .filter_map(|k| {
                // repos / <upstream> / <repo…> / _tags / <record>
                let parts: Vec<&str> = k.components().collect();
                let at = parts.iter().rposition(|c| *c == keys::TAGS_DIR)?;
                (at > 2 && at + 2 == parts.len()).then(|| parts[2..at].join("/"))
            })
            .collect();
        out.dedup();
        Ok(out)
    }

    /// Re-hashes every blob and quarantines those that fail their digest
    /// (see [`VerifyReport`]). Safe to run while serving: a quarantined blob
    /// is simply fetched again on the next request.
    pub async fn verify(&self) -> Result<VerifyReport, Error> {
        self.blobs.verify().await
    }

    async fn record<T: serde::de::DeserializeOwned>(
        &self,
        key: &RecordKey,
    ) -> Result<Option<T>, Error> {
        let Some(bytes) = self.records.get(key).await? else {
            return Ok(None);
        };
        match serde_json::from_slice(&bytes) {
            Ok(v) => Ok(Some(v)),
            Err(e) => {
                // A torn or foreign record: treat as absent, it will be
                // rewritten.
                tracing::warn!(%key, error = %e, "ignoring unreadable record");
                Ok(None)
            }
        }
    }

    async fn put_record<T: Serialize>(&self, key: &RecordKey, value: &T) -> Result<(), Error> {
        let bytes = serde_json::to_vec(value).map_err(|e| Error::Io {
            op: "serialize",
            path: PathBuf::from(key.as_str()),
            source: io::Error::other(e),
        })?;
        self.records.put(key, Bytes::from(bytes)).await
    }
}

/// The record keys (see [`records`]).
mod keys {
    use super::{RecordKey, TagKey};
    use crate::config::UpstreamId;
    use crate::oci::{Digest, RepoName};

    /// The directory of a repository's tag records. A repository component
    /// never starts with `_`, so this name cannot collide with a repository.
    pub(super) const TAGS_DIR: &str = "_tags";

    // Every part below comes from a validated type, so the keys exist.
    fn key<'a>(parts: impl IntoIterator<Item = &'a str>) -> RecordKey {
        RecordKey::from_parts(parts).expect("keys are built from validated names")
    }

    pub(super) fn manifest(d: &Digest) -> RecordKey {
        key(["manifests", d.algorithm().as_str(), &d.hex()[..2], d.hex()])
    }

    pub(super) fn repos(upstream: &UpstreamId) -> RecordKey {
        key(["repos", upstream.as_str()])
    }

    pub(super) fn repo_mark(upstream: &UpstreamId, repo: &RepoName) -> RecordKey {
        key(["repos", upstream.as_str(), repo.as_str(), TAGS_DIR, ".repo"])
    }

    pub(super) fn tags_dir(upstream: &UpstreamId, repo: &RepoName) -> RecordKey {
        key(["repos", upstream.as_str(), repo.as_str(), TAGS_DIR])
    }

    pub(super) fn tag(k: &TagKey) -> RecordKey {
        let file = format!("{}.{}", k.tag.as_str(), k.class.key());
        key([
            "repos",
            k.upstream.as_str(),
            k.repo.as_str(),
            TAGS_DIR,
            &file,
        ])
    }
}
