//! Hosted namespaces (`[[hosted]]`): repositories clients push to, served
//! from the same store as the mirrored upstreams. The push policy lives
//! here, the HTTP in `registry`, the records and upload sessions in
//! `store`.
//!
//! - A blob is visible in a hosted repository when it is linked into it
//!   (uploaded, mounted, or confirmed by a manifest push), or when the store
//!   holds it as public content (pulled through the mirror from a
//!   repository that is not private). So an image built on a base pulled
//!   through the mirror uploads only its own layers: the client's `HEAD`
//!   finds the base layers.
//! - Pushed content is marked private to its repository (see
//!   [`crate::store::PrivateMarks`]), so no client reaches it by digest
//!   through another repository, hosted or mirrored, unless upstream holds
//!   the same bytes.
//! - A manifest is accepted only when everything it references is visible
//!   in the repository (child manifests: pushed to it), and only as JSON of
//!   a media type this registry serves, within the size bound.
//! - Garbage collection runs online: it removes links no manifest of the
//!   repository references, once older than the namespace's
//!   `upload_timeout`, and deletes the blobs only pushes held. It never races
//!   a push: every step that makes a blob referenced holds a shared lock the
//!   sweep holds exclusively, re-reads each link's age under it, and a
//!   manifest push refreshes the links it relies on.

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::Stream;
use serde::Deserialize;

use crate::config::{HostedConfig, UpstreamId};
use crate::oci::manifest::{Descriptor, Refs};
use crate::oci::{Digest, MediaType, Reference, media_type};
pub use crate::store::UploadError;
pub use crate::store::hosted::HostedRepo;
use crate::store::hosted::{PushedManifest, PushedTag, Referrer};
use crate::store::{self, Store};
use crate::tag::epoch_ms;

/// A hosted-namespace error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No hosted namespace of that name (removed by a reload).
    #[error("no hosted namespace {0}")]
    NoNamespace(UpstreamId),
    /// The blob is not in the repository.
    #[error("blob {0} is not in this repository")]
    BlobUnknown(Digest),
    /// The manifest or tag is not in the repository.
    #[error("manifest {0} is not in this repository")]
    ManifestUnknown(String),
    /// An upload step failed.
    #[error(transparent)]
    Upload(#[from] UploadError),
    /// The upload belongs to another repository.
    #[error("upload {0} belongs to another repository")]
    UploadElsewhere(String),
    /// The manifest is not one this registry accepts.
    #[error("invalid manifest: {0}")]
    ManifestInvalid(String),
    /// A manifest names a blob or child manifest the repository lacks.
    #[error("manifest references {0}, which is not in this repository")]
    ManifestBlobUnknown(Digest),
    /// Bytes that do not hash to the digest they were sent as.
    #[error("content hashes to {actual}, not {expected}")]
    DigestMismatch {
        /// The digest named.
        expected: Digest,
        /// What the bytes hash to.
        actual: Digest,
    },
    /// The namespace's `max_size` would be exceeded.
    #[error("namespace {ns} would exceed its {limit} bytes")]
    Quota {
        /// The namespace.
        ns: UpstreamId,
        /// Its bound.
        limit: u64,
    },
    /// `delete = false`.
    #[error("deletes are turned off for namespace {0}")]
    DeleteDisabled(UpstreamId),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] store::Error),
}

/// The result of a step spawned to run to its end (a panic or a runtime
/// shutting down becomes a store error).
fn joined<T>(
    r: Result<Result<T, Error>, tokio::task::JoinError>,
    op: &'static str,
) -> Result<T, Error> {
    r.unwrap_or_else(|e| {
        Err(Error::Store(store::Error::Io {
            op,
            path: std::path::PathBuf::new(),
            source: io::Error::other(e),
        }))
    })
}

/// What a manifest push stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// The manifest's digest.
    pub digest: Digest,
    /// Its `subject`, when it has one (answered as `OCI-Subject`).
    pub subject: Option<Digest>,
}

/// A manifest served from a hosted repository.
#[derive(Debug, Clone)]
pub struct Served {
    /// Its bytes.
    pub bytes: Bytes,
    /// Its media type.
    pub media_type: MediaType,
    /// Its digest.
    pub digest: Digest,
}

/// What one garbage collection did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    /// Links removed (blobs no manifest of their repository references).
    pub unlinked: u64,
    /// Blobs deleted from the store (only pushes held them).
    pub deleted: u64,
    /// Their bytes.
    pub deleted_bytes: u64,
}

/// The hosted namespaces.
#[derive(Debug)]
pub struct Hosted {
    store: Store,
    config: arc_swap::ArcSwap<HashMap<UpstreamId, Arc<HostedConfig>>>,
    /// Shared by each step that makes a blob referenced, exclusive for a
    /// collection's sweep.
    gc_lock: tokio::sync::RwLock<()>,
    /// Per namespace, the linked blobs and their sizes (for `max_size`),
    /// loaded at first need and recounted by each collection.
    usage: tokio::sync::Mutex<HashMap<UpstreamId, HashMap<Digest, u64>>>,
}

/// The JSON fields a pushed manifest is checked by.
#[derive(Deserialize)]
struct Fields {
    #[serde(rename = "schemaVersion")]
    schema_version: Option<u64>,
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    #[serde(rename = "artifactType")]
    artifact_type: Option<String>,
    config: Option<Descriptor>,
    subject: Option<Descriptor>,
    annotations: Option<serde_json::Map<String, serde_json::Value>>,
}

const MANIFEST_TYPES: [&str; 4] = [
    media_type::OCI_MANIFEST,
    media_type::OCI_INDEX,
    media_type::DOCKER_MANIFEST_V2,
    media_type::DOCKER_MANIFEST_LIST,
];

impl Hosted {
    /// The namespaces `hosted` describes, over `store`.
    pub fn new(store: Store, hosted: &[HostedConfig]) -> Self {
        let h = Self {
            store,
            config: arc_swap::ArcSwap::default(),
            gc_lock: tokio::sync::RwLock::new(()),
            usage: tokio::sync::Mutex::default(),
        };
        h.configure(hosted);
        h
    }

    /// Applies a config (a reload): the namespaces from now on.
    pub fn configure(&self, hosted: &[HostedConfig]) {
        let map = hosted
            .iter()
            .map(|h| (h.id.clone(), Arc::new(h.clone())))
            .collect();
        self.config.store(Arc::new(map));
    }

    /// The settings of namespace `ns`.
    pub fn config(&self, ns: &UpstreamId) -> Result<Arc<HostedConfig>, Error> {
        self.config
            .load()
            .get(ns)
            .cloned()
            .ok_or_else(|| Error::NoNamespace(ns.clone()))
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn owner(r: &HostedRepo) -> String {
        r.to_string()
    }

    /// The size of `digest` when it is visible in `r`: linked into it, or
    /// public content of the store.
    pub async fn blob_size(&self, r: &HostedRepo, digest: &Digest) -> Result<Option<u64>, Error> {
        let Some(size) = self.store.stat(digest).await? else {
            return Ok(None);
        };
        if self.store.hosted_blob_link(r, digest).await?.is_some() {
            return Ok(Some(size));
        }
        Ok(self.is_public(digest).await.then_some(size))
    }

    /// Whether the store holds `digest` for no private repository (hosted
    /// or mirrored): content anyone could pull from the mirror. On a shared
    /// bucket the marks are read again first (another replica may have
    /// marked it since); a failure to read them counts as private.
    async fn is_public(&self, digest: &Digest) -> bool {
        let marks = self.store.private_marks();
        if self.store.leases().is_some() && !marks.refresh(digest).await {
            return false;
        }
        marks.owned_by(digest, "").is_none()
    }

    /// Opens a blob visible in `r`.
    pub async fn open_blob(
        &self,
        r: &HostedRepo,
        digest: &Digest,
    ) -> Result<store::BlobReader, Error> {
        if self.blob_size(r, digest).await?.is_none() {
            return Err(Error::BlobUnknown(digest.clone()));
        }
        self.store
            .open(digest)
            .await?
            .ok_or_else(|| Error::BlobUnknown(digest.clone()))
    }

    /// Starts an upload into `r`; returns the session id.
    pub async fn start_upload(&self, r: &HostedRepo) -> Result<String, Error> {
        self.config(&r.ns)?;
        Ok(self
            .store
            .uploads()
            .start(r.ns.as_str(), r.repo.as_str())
            .await?)
    }

    /// The bytes session `id` of `r` holds (once a chunk arriving now
    /// has ended).
    pub async fn upload_size(&self, r: &HostedRepo, id: &str) -> Result<u64, Error> {
        let u = self.store.uploads().settled(id).await?;
        if u.state.ns != r.ns.as_str() || u.state.repo != r.repo.as_str() {
            return Err(Error::UploadElsewhere(id.to_owned()));
        }
        Ok(u.size)
    }

    /// Appends a chunk to session `id` of `r` (see
    /// [`store::Uploads::append`]). The append runs to its end even when
    /// the request is dropped (a client gone mid-chunk): what arrived is
    /// then kept whole, and the next request on the session waits for it.
    pub async fn append<S>(
        &self,
        r: &HostedRepo,
        id: &str,
        at: Option<u64>,
        body: S,
    ) -> Result<u64, Error>
    where
        S: Stream<Item = io::Result<Bytes>> + Send + 'static,
    {
        self.upload_size(r, id).await?;
        // One upload never outgrows the namespace; whether the blob fits
        // beside the others is known once its digest is (the commit).
        let limit = self.config(&r.ns)?.max_size;
        let (uploads, id) = (self.store.uploads().clone(), id.to_owned());
        let task = tokio::spawn(async move { Ok(uploads.append(&id, at, body, limit).await?) });
        joined(task.await, "append")
    }

    /// Cancels session `id` of `r`.
    pub async fn cancel(&self, r: &HostedRepo, id: &str) -> Result<(), Error> {
        self.upload_size(r, id).await?;
        Ok(self.store.uploads().cancel(id).await?)
    }

    /// Finishes session `id` of `r` as `digest` (after a last chunk, when
    /// the `PUT` carried one), and links the blob into `r`. Runs to its end
    /// even when the request is dropped, so that a stored blob is always
    /// marked and linked.
    pub async fn finish<S>(
        self: &Arc<Self>,
        r: &HostedRepo,
        id: &str,
        digest: &Digest,
        last: Option<S>,
    ) -> Result<u64, Error>
    where
        S: Stream<Item = io::Result<Bytes>> + Send + 'static,
    {
        if let Some(body) = last {
            self.append(r, id, None, body).await?;
        }
        let size = self.upload_size(r, id).await?;
        self.check_room(&r.ns, digest, size).await?;
        let (me, r, id, digest) = (self.clone(), r.clone(), id.to_owned(), digest.clone());
        let task = tokio::spawn(async move {
            let _shared = me.gc_lock.read().await;
            // A new blob is marked once its bytes check out and before it
            // is published: pushed content is never public, even for a
            // moment, and a refused push marks nothing.
            let c = me
                .store
                .commit_upload(&id, &digest, Some(Self::owner(&r)))
                .await?;
            me.link(&r, &digest, c.size).await?;
            Ok::<_, Error>(c.size)
        });
        joined(task.await, "commit upload")
    }

    /// Links `digest` into `r` when it is visible in `from` (a hosted
    /// repository the client may read): a cross-repository mount. `false`
    /// when it is not there.
    pub async fn mount(
        &self,
        r: &HostedRepo,
        digest: &Digest,
        from: &HostedRepo,
    ) -> Result<bool, Error> {
        let _shared = self.gc_lock.read().await;
        let Some(size) = self.blob_size(from, digest).await? else {
            return Ok(false);
        };
        if !self.is_public(digest).await {
            // Pushed content: the marks name every repository holding it.
            self.store.mark_private(digest, Self::owner(r)).await?;
        }
        self.link(r, digest, size).await?;
        Ok(true)
    }

    /// Links a blob the store holds into `r` (the caller checked that the
    /// client may read it: a mount from a mirrored repository).
    pub async fn mount_stored(&self, r: &HostedRepo, digest: &Digest) -> Result<bool, Error> {
        let _shared = self.gc_lock.read().await;
        let Some(size) = self.store.stat(digest).await? else {
            return Ok(false);
        };
        self.link(r, digest, size).await?;
        Ok(true)
    }

    async fn link(&self, r: &HostedRepo, digest: &Digest, size: u64) -> Result<(), Error> {
        let Some(limit) = self.config(&r.ns)?.max_size else {
            return Ok(self.store.hosted_link(r, digest, size).await?);
        };
        // The record is written under the count's lock, so a recount never
        // misses it.
        let mut usage = self.usage.lock().await;
        let used = self.load_usage(&mut usage, &r.ns).await?;
        if !used.contains_key(digest) && used.values().sum::<u64>() + size > limit {
            return Err(Error::Quota {
                ns: r.ns.clone(),
                limit,
            });
        }
        self.store.hosted_link(r, digest, size).await?;
        used.insert(digest.clone(), size);
        Ok(())
    }

    async fn load_usage<'a>(
        &self,
        usage: &'a mut HashMap<UpstreamId, HashMap<Digest, u64>>,
        ns: &UpstreamId,
    ) -> Result<&'a mut HashMap<Digest, u64>, Error> {
        if !usage.contains_key(ns) {
            let counted = self.count(ns).await?;
            usage.insert(ns.clone(), counted);
        }
        Ok(usage.get_mut(ns).expect("inserted above"))
    }

    async fn count(&self, ns: &UpstreamId) -> Result<HashMap<Digest, u64>, Error> {
        let mut out = HashMap::new();
        for repo in self.store.hosted_repos(ns).await? {
            let r = HostedRepo {
                ns: ns.clone(),
                repo,
            };
            for d in self.store.hosted_links(&r).await? {
                if let Some(l) = self.store.hosted_blob_link(&r, &d).await? {
                    out.insert(d, l.size);
                }
            }
        }
        Ok(out)
    }

    /// Whether namespace `ns` has room for blob `digest` of `size` bytes
    /// (a blob it holds already costs nothing).
    async fn check_room(&self, ns: &UpstreamId, digest: &Digest, size: u64) -> Result<(), Error> {
        let Some(limit) = self.config(ns)?.max_size else {
            return Ok(());
        };
        let mut usage = self.usage.lock().await;
        let used = self.load_usage(&mut usage, ns).await?;
        if !used.contains_key(digest) && used.values().sum::<u64>() + size > limit {
            return Err(Error::Quota {
                ns: ns.clone(),
                limit,
            });
        }
        Ok(())
    }

    /// Stores a pushed manifest under `reference` of `r`, after checking
    /// it (see the module docs). `content_type` is the request's. Runs to
    /// its end even when the request is dropped (its records are written
    /// whole: manifest, referrer, tag).
    pub async fn put_manifest(
        self: &Arc<Self>,
        r: &HostedRepo,
        reference: &Reference,
        content_type: Option<&str>,
        bytes: Bytes,
    ) -> Result<Pushed, Error> {
        let (me, r, reference) = (self.clone(), r.clone(), reference.clone());
        let ct = content_type.map(str::to_owned);
        let task = tokio::spawn(async move {
            me.put_manifest_now(&r, &reference, ct.as_deref(), bytes)
                .await
        });
        joined(task.await, "push manifest")
    }

    async fn put_manifest_now(
        &self,
        r: &HostedRepo,
        reference: &Reference,
        content_type: Option<&str>,
        bytes: Bytes,
    ) -> Result<Pushed, Error> {
        let invalid = |m: String| Error::ManifestInvalid(m);
        let fields: Fields = serde_json::from_slice(&bytes)
            .map_err(|e| invalid(format!("not a JSON manifest: {e}")))?;
        let declared = fields.media_type.as_deref();
        let ct = content_type
            .map(|c| c.split(';').next().unwrap_or_default().trim())
            .filter(|c| !c.is_empty());
        let media_type = match (ct, declared) {
            (Some(c), Some(d)) if c != d => {
                return Err(invalid(format!(
                    "Content-Type {c} differs from the manifest's mediaType {d}"
                )));
            }
            (Some(c), _) => c,
            (None, Some(d)) => d,
            (None, None) => {
                return Err(invalid("no Content-Type and no mediaType".into()));
            }
        };
        if !MANIFEST_TYPES.contains(&media_type) {
            return Err(invalid(format!(
                "media type {media_type} is not an image manifest or index this registry serves"
            )));
        }
        if fields.schema_version != Some(2) {
            return Err(invalid("schemaVersion must be 2".into()));
        }
        let refs = Refs::parse(&bytes).map_err(|e| invalid(crate::error_chain(&e)))?;
        let is_index = MediaType::new(media_type).is_index();
        if is_index != matches!(refs, Refs::Index(_)) {
            return Err(invalid(format!(
                "media type {media_type} does not match the manifest's fields"
            )));
        }
        let digest = match reference {
            Reference::Digest(d) => {
                let actual = Digest::of(d.algorithm(), &bytes);
                if actual != *d {
                    return Err(Error::DigestMismatch {
                        expected: d.clone(),
                        actual,
                    });
                }
                d.clone()
            }
            Reference::Tag(_) => Digest::sha256_of(&bytes),
        };
        let _shared = self.gc_lock.read().await;
        let grace = self.config(&r.ns)?.upload_timeout;
        match &refs {
            Refs::Index(children) => {
                for c in children {
                    if self.store.hosted_manifest(r, &c.digest).await?.is_none() {
                        return Err(Error::ManifestBlobUnknown(c.digest.clone()));
                    }
                }
            }
            Refs::Image { config, layers } => {
                for d in std::iter::once(config).chain(layers) {
                    if !d.urls.is_empty() {
                        // A foreign layer: fetched from its URLs, not here.
                        continue;
                    }
                    self.confirm_blob(r, d, grace).await?;
                }
            }
        }
        let size = bytes.len() as u64;
        if self.store.stat(&digest).await? != Some(size) {
            self.store.mark_private(&digest, Self::owner(r)).await?;
        }
        self.store
            .put_manifest(&digest, bytes, &MediaType::new(media_type))
            .await?;
        let now = epoch_ms(SystemTime::now());
        let subject = fields.subject.as_ref().map(|s| s.digest.clone());
        self.store
            .hosted_put_manifest(
                r,
                &digest,
                &PushedManifest {
                    media_type: media_type.to_owned(),
                    size,
                    subject: subject.as_ref().map(Digest::to_string),
                    pushed_ms: now,
                },
            )
            .await?;
        if let Some(s) = &subject {
            let artifact_type = fields
                .artifact_type
                .clone()
                .or_else(|| fields.config.as_ref().and_then(|c| c.media_type.clone()));
            let desc = Referrer {
                media_type: media_type.to_owned(),
                digest: digest.to_string(),
                size,
                artifact_type,
                annotations: fields.annotations.clone(),
            };
            self.store.hosted_put_referrer(r, s, &digest, &desc).await?;
        }
        if let Reference::Tag(t) = reference {
            self.store
                .hosted_put_tag(
                    r,
                    t,
                    &PushedTag {
                        digest: digest.to_string(),
                        media_type: media_type.to_owned(),
                        pushed_ms: now,
                    },
                )
                .await?;
        }
        Ok(Pushed { digest, subject })
    }

    /// Checks that a manifest's blob is visible in `r` with its size, and
    /// (re)links it: a link older than half the grace is refreshed, so a
    /// collection that read it before this push cannot take it.
    async fn confirm_blob(
        &self,
        r: &HostedRepo,
        d: &Descriptor,
        grace: Duration,
    ) -> Result<(), Error> {
        let unknown = || Error::ManifestBlobUnknown(d.digest.clone());
        let Some(size) = self.store.stat(&d.digest).await? else {
            return Err(unknown());
        };
        if size != d.size {
            return Err(Error::ManifestInvalid(format!(
                "blob {} is {size} bytes, the manifest says {}",
                d.digest, d.size
            )));
        }
        let link = self.store.hosted_blob_link(r, &d.digest).await?;
        let fresh_after = epoch_ms(SystemTime::now()).saturating_sub(grace.as_millis() as u64 / 2);
        match link {
            Some(l) if l.linked_ms >= fresh_after => Ok(()),
            Some(_) => Ok(self.store.hosted_link(r, &d.digest, size).await?),
            None if self.is_public(&d.digest).await => self.link(r, &d.digest, size).await,
            None => Err(unknown()),
        }
    }

    /// The digest a reference of `r` names, with the pushed manifest's
    /// record.
    async fn resolve(
        &self,
        r: &HostedRepo,
        reference: &Reference,
    ) -> Result<(Digest, PushedManifest), Error> {
        let unknown = || Error::ManifestUnknown(reference.to_string());
        let digest = match reference {
            Reference::Digest(d) => d.clone(),
            Reference::Tag(t) => {
                let tag = self.store.hosted_tag(r, t).await?.ok_or_else(unknown)?;
                tag.digest.parse().map_err(|_| unknown())?
            }
        };
        let m = self
            .store
            .hosted_manifest(r, &digest)
            .await?
            .ok_or_else(unknown)?;
        Ok((digest, m))
    }

    /// A manifest of `r`, by tag or digest.
    pub async fn manifest(&self, r: &HostedRepo, reference: &Reference) -> Result<Served, Error> {
        let (digest, m) = self.resolve(r, reference).await?;
        let (bytes, _) = self
            .store
            .manifest(&digest)
            .await?
            .ok_or_else(|| Error::ManifestUnknown(reference.to_string()))?;
        Ok(Served {
            bytes,
            media_type: MediaType::new(&m.media_type),
            digest,
        })
    }

    /// Deletes a tag (by tag) or a manifest with every tag that names it
    /// (by digest).
    pub async fn delete_manifest(
        &self,
        r: &HostedRepo,
        reference: &Reference,
    ) -> Result<(), Error> {
        if !self.config(&r.ns)?.delete {
            return Err(Error::DeleteDisabled(r.ns.clone()));
        }
        match reference {
            Reference::Tag(t) => {
                if self.store.hosted_tag(r, t).await?.is_none() {
                    return Err(Error::ManifestUnknown(reference.to_string()));
                }
                self.store.hosted_delete_tag(r, t.as_str()).await?;
            }
            Reference::Digest(d) => {
                let (_, m) = self.resolve(r, reference).await?;
                for t in self.store.hosted_tags(r).await? {
                    let Ok(tag) = t.parse() else { continue };
                    if let Some(p) = self.store.hosted_tag(r, &tag).await?
                        && p.digest == d.to_string()
                    {
                        self.store.hosted_delete_tag(r, &t).await?;
                    }
                }
                if let Some(s) = m.subject.as_deref().and_then(|s| s.parse().ok()) {
                    self.store.hosted_delete_referrer(r, &s, d).await?;
                }
                self.store.hosted_delete_manifest(r, d).await?;
            }
        }
        Ok(())
    }

    /// Unlinks a blob from `r` (its bytes go at the next collection when
    /// nothing else holds them).
    pub async fn delete_blob(&self, r: &HostedRepo, digest: &Digest) -> Result<(), Error> {
        if !self.config(&r.ns)?.delete {
            return Err(Error::DeleteDisabled(r.ns.clone()));
        }
        if self.store.hosted_blob_link(r, digest).await?.is_none() {
            return Err(Error::BlobUnknown(digest.clone()));
        }
        let mut usage = self.usage.lock().await;
        self.store.hosted_unlink(r, digest).await?;
        // Another repository of the namespace may hold it still: count
        // again at the next need.
        usage.remove(&r.ns);
        Ok(())
    }

    /// The tags of `r`, sorted; `None` when the repository holds nothing.
    pub async fn tags(&self, r: &HostedRepo) -> Result<Option<Vec<String>>, Error> {
        let tags = self.store.hosted_tags(r).await?;
        if tags.is_empty() && self.store.hosted_manifests(r).await?.is_empty() {
            return Ok(None);
        }
        Ok(Some(tags))
    }

    /// The manifests of `r` whose subject is `digest`, of `artifact_type`
    /// when given.
    pub async fn referrers(
        &self,
        r: &HostedRepo,
        digest: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Referrer>, Error> {
        let mut all = self.store.hosted_referrers(r, digest).await?;
        if let Some(t) = artifact_type {
            all.retain(|d| d.artifact_type.as_deref() == Some(t));
        }
        all.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(all)
    }

    /// The repositories of `ns` that hold anything.
    pub async fn catalog(&self, ns: &UpstreamId) -> Result<Vec<String>, Error> {
        Ok(self
            .store
            .hosted_repos(ns)
            .await?
            .into_iter()
            .map(|r| r.to_string())
            .collect())
    }

    /// Removes upload sessions untouched for their namespace's
    /// `upload_timeout` (or of a namespace no longer configured).
    pub async fn sweep_uploads(&self) -> Result<usize, Error> {
        self.sweep_uploads_at(SystemTime::now()).await
    }

    /// [`Hosted::sweep_uploads`] as if it were `now` (tests move time
    /// forward with it instead of waiting).
    pub async fn sweep_uploads_at(&self, now: SystemTime) -> Result<usize, Error> {
        let config = self.config.load_full();
        let fallback = crate::config::DEFAULT_UPLOAD_TIMEOUT;
        Ok(self
            .store
            .uploads()
            .sweep(|u| {
                let timeout = UpstreamId::parse(&u.state.ns)
                    .and_then(|ns| config.get(&ns).map(|c| c.upload_timeout))
                    .unwrap_or(fallback);
                now.duration_since(u.touched).unwrap_or_default() > timeout
            })
            .await?)
    }

    /// Collects garbage in every namespace (see the module docs).
    pub async fn gc(&self) -> Result<GcReport, Error> {
        self.gc_at(SystemTime::now()).await
    }

    /// [`Hosted::gc`] as if it were `now` (for links' ages; tests move time
    /// forward with it instead of waiting).
    pub async fn gc_at(&self, now: SystemTime) -> Result<GcReport, Error> {
        let now = epoch_ms(now);
        let config = self.config.load_full();
        let mut report = GcReport::default();
        // Mark: what each repository's manifests reference, and every link.
        let mut candidates: Vec<(HostedRepo, Digest)> = Vec::new();
        for (ns, c) in config.iter() {
            let old = now.saturating_sub(c.upload_timeout.as_millis() as u64);
            for repo in self.store.hosted_repos(ns).await? {
                let r = HostedRepo {
                    ns: ns.clone(),
                    repo,
                };
                let mut referenced = HashSet::new();
                for m in self.store.hosted_manifests(&r).await? {
                    if let Some((bytes, _)) = self.store.manifest(&m).await? {
                        match Refs::parse(&bytes) {
                            Ok(Refs::Image { config, layers }) => {
                                referenced.insert(config.digest);
                                referenced.extend(layers.into_iter().map(|l| l.digest));
                            }
                            Ok(Refs::Index(_)) | Err(_) => {}
                        }
                    }
                }
                for d in self.store.hosted_links(&r).await? {
                    let young = self
                        .store
                        .hosted_blob_link(&r, &d)
                        .await?
                        .is_none_or(|l| l.linked_ms > old);
                    if !referenced.contains(&d) && !young {
                        candidates.push((r.clone(), d));
                    }
                }
            }
        }
        // Sweep, with no push in between its check and its link.
        let _exclusive = self.gc_lock.write().await;
        for (r, d) in candidates {
            let grace = config
                .get(&r.ns)
                .map_or(Duration::ZERO, |c| c.upload_timeout);
            let old = now.saturating_sub(grace.as_millis() as u64);
            match self.store.hosted_blob_link(&r, &d).await? {
                Some(l) if l.linked_ms <= old => {}
                // Refreshed by a push since the mark, or gone.
                Some(_) | None => continue,
            }
            self.store.hosted_unlink(&r, &d).await?;
            report.unlinked += 1;
        }
        // Delete what only pushes held and nothing holds now: the blobs
        // just unlinked, manifests deleted through the API, and what a
        // crash left between an upload's commit and its link. Read under
        // the lock: every repository's links and manifests, the pins, and
        // what the mirrored repositories' cached manifests reach (a layer
        // pushed first and then pulled through the mirror is the cache's).
        let held = self.store.pinned_digests().await?;
        let mirrored = self.store.mirror_digests().await?;
        for d in self.store.private_marks().digests_where(|owners| {
            !owners.is_empty()
                && owners
                    .iter()
                    .all(|o| Self::hosted_owner(o, &config).is_some())
        }) {
            if held.contains(&d) || mirrored.contains(&d) {
                continue;
            }
            if let Some(size) = self.store.stat(&d).await? {
                self.store.blobs().delete(&d).await?;
                report.deleted += 1;
                report.deleted_bytes += size;
            }
        }
        drop(_exclusive);
        let mut usage = self.usage.lock().await;
        for ns in config.keys() {
            let counted = self.count(ns).await?;
            usage.insert(ns.clone(), counted);
        }
        Ok(report)
    }

    /// The hosted repository a private mark's owner names, when it is one.
    fn hosted_owner(
        owner: &str,
        config: &HashMap<UpstreamId, Arc<HostedConfig>>,
    ) -> Option<HostedRepo> {
        let (ns, repo) = owner.split_once('/')?;
        let ns = UpstreamId::parse(ns)?;
        config.contains_key(&ns).then_some(())?;
        Some(HostedRepo {
            ns,
            repo: repo.parse().ok()?,
        })
    }

    /// Runs [`Hosted::sweep_uploads`] every minute and [`Hosted::gc`] at
    /// the shortest `gc_interval` of the namespaces, until aborted.
    pub fn spawn_maintenance(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut last_gc = tokio::time::Instant::now();
            let every_minute = Duration::from_secs(60);
            let mut tick =
                tokio::time::interval_at(tokio::time::Instant::now() + every_minute, every_minute);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(h) = me.upgrade() else { return };
                match h.sweep_uploads().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(sessions = n, "swept abandoned uploads"),
                    Err(e) => {
                        tracing::warn!(error = %crate::error_chain(&e), "cannot sweep abandoned uploads");
                    }
                }
                let every = h.config.load().values().filter_map(|c| c.gc_interval).min();
                if every.is_some_and(|e| last_gc.elapsed() >= e) {
                    last_gc = tokio::time::Instant::now();
                    match h.gc().await {
                        Ok(r) => tracing::info!(
                            unlinked = r.unlinked,
                            deleted = r.deleted,
                            bytes = r.deleted_bytes,
                            "collected unreferenced pushed blobs"
                        ),
                        Err(e) => {
                            tracing::warn!(error = %crate::error_chain(&e), "garbage collection failed");
                        }
                    }
                }
            }
        })
    }
}
