//! The pull-through policy: the only module that knows the cache, the store
//! and the upstream clients together.
//!
//! - **Manifests by digest** are immutable: cache, then store, then one
//!   upstream GET (coalesced), verified against the digest before they are
//!   stored. Never revalidated.
//! - **Tags** are trusted for the upstream's `tag_ttl` after upstream last
//!   confirmed them; then one HEAD revalidates (Docker Hub does not count
//!   HEADs against its rate limit), and a GET happens only when the digest is
//!   new. When upstream cannot be reached, the last known mapping is served
//!   and marked stale. Concurrent resolutions of one tag are coalesced.
//! - **Blobs**: see [`blob`]. A hit streams the stored file; a miss starts
//!   (or joins) one upstream download that is written, hashed and verified
//!   in the background while every waiting client streams it as it arrives.
//!
//! This module knows nothing about HTTP requests or responses; `registry`
//! turns its results and errors into responses.

pub mod blob;
mod follow;
mod inflight;
mod manifest;

use std::collections::HashMap;
use std::sync::Arc;

use crate::cache::MetadataCache;
use crate::clock::SharedClock;
use crate::cluster::Cluster;
use crate::config::{Config, UpstreamConfig, UpstreamId};
use crate::oci::{Digest, RepoName};
use crate::store::Store;
use crate::upstream::{self, UpstreamClient};

/// An upstream answer relayed as it is (tags/list, referrers).
pub use crate::upstream::Passthrough;
pub use blob::{BlobBody, BlobHead};
pub use inflight::Download;
pub use manifest::ManifestResponse;

/// How a request was answered, for the access log and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// Served from memory or disk without contacting upstream.
    Hit,
    /// Fetched from (or revalidated with) upstream by this request.
    Miss,
    /// Joined a fetch that another request had started.
    Coalesced,
    /// Upstream failed; the last known value was served.
    Stale,
    /// Passed through to upstream without caching (tags/list, referrers).
    Pass,
    /// Redirected to the store's presigned URL (the bytes flow from S3).
    Redirect,
}

impl CacheStatus {
    /// The lowercase label used in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::Coalesced => "coalesced",
            Self::Stale => "stale",
            Self::Pass => "pass",
            Self::Redirect => "redirect",
        }
    }
}

/// Whether a request may reach upstream, or must be answered from what the
/// mirror already holds (`[[upstream]] fetch_requires_auth` for anonymous
/// clients).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetch {
    /// Cache first, upstream on a miss.
    Upstream,
    /// Cache only: a miss is [`Error::NotCached`]. A tag is served at its
    /// last known digest, whatever its age, because revalidating it would
    /// be an upstream request.
    CacheOnly,
}

/// What the client of one request may do; decided by `registry` from the
/// access rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Whether a miss may go upstream.
    pub fetch: Fetch,
    /// The repository is private: digests served for it are marked private
    /// (see [`crate::store::PrivateMarks`]).
    pub private_repo: bool,
    /// The client may read private content (authenticated, or no client
    /// authentication configured).
    pub reads_private: bool,
}

impl Grant {
    /// Everything allowed: no access rules apply.
    pub const OPEN: Self = Self {
        fetch: Fetch::Upstream,
        private_repo: false,
        reads_private: true,
    };
}

/// A mirror error. Cheap to clone, because one failed upstream fetch is
/// reported to every request that was waiting on it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The upstream request failed or upstream answered with an error.
    #[error("{at}")]
    Upstream {
        /// Which upstream.
        at: At,
        /// What went wrong.
        #[source]
        source: Arc<upstream::Error>,
    },
    /// Local storage failed.
    #[error("storage failed")]
    Store(#[source] Arc<crate::store::Error>),
    /// Upstream sent content that does not match the digest it was asked by
    /// (or announced). Nothing was stored.
    #[error("{at} sent content that does not match {expected}{}",
        actual.as_ref().map(|a| format!(" (it hashes to {a})")).unwrap_or_default())]
    Corrupt {
        /// Which upstream.
        at: At,
        /// The expected digest.
        expected: Digest,
        /// What the content hashed to, when known.
        actual: Option<Digest>,
    },
    /// Upstream sent more or fewer bytes than it announced; nothing was
    /// stored.
    #[error("{at} announced {announced} bytes but sent {}{sent}",
        if sent > announced { "at least " } else { "" })]
    WrongLength {
        /// Which upstream.
        at: At,
        /// Its `Content-Length`.
        announced: u64,
        /// What arrived.
        sent: u64,
    },
    /// The download ended without a result of its own: its task stopped
    /// (cancelled, panicked, runtime shutting down), or the blob kept
    /// vanishing between the store and the download table. Nothing was
    /// stored; a retry starts afresh.
    #[error("the download was interrupted")]
    Interrupted,
    /// The request was cache-only and the content is not cached.
    #[error("not cached, and this client may not fetch from upstream")]
    NotCached,
    /// Another replica took this fill's lease over (this one had stopped
    /// renewing it, frozen or cut off): the fill is given up, and nothing
    /// is completed.
    #[error("another replica took the fill over")]
    LeaseLost,
    /// No upstream with this id (a routing bug or a config change).
    #[error("no upstream {0}")]
    NoUpstream(UpstreamId),
}

impl From<crate::store::Error> for Error {
    fn from(e: crate::store::Error) -> Self {
        Self::Store(Arc::new(e))
    }
}

impl Error {
    /// The upstream error underneath, if upstream is what failed.
    pub fn upstream(&self) -> Option<&upstream::Error> {
        match self {
            Self::Upstream { source, .. } => Some(source),
            _ => None,
        }
    }

    /// What went wrong upstream, classified for the answer to the client
    /// (the whole error stays the cause, for the log).
    pub fn upstream_failure(&self) -> Option<UpstreamFailure<'_>> {
        self.upstream().map(UpstreamFailure::of)
    }
}

/// How an upstream request failed, in the terms an answer to the client
/// needs: `registry` maps these to statuses and OCI codes without knowing
/// the upstream client's error type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure<'a> {
    /// Upstream answered with an error status.
    Status {
        /// The HTTP status.
        status: u16,
        /// The first OCI error code of its body, if any.
        code: Option<&'a str>,
        /// Its `Retry-After`, if any.
        retry_after: Option<&'a str>,
    },
    /// Upstream wants credentials, or refused the configured ones.
    Unauthorized {
        /// Whether the mirror sent credentials.
        with_credentials: bool,
    },
    /// The request timed out.
    Timeout,
    /// Upstream failed repeatedly and is not being asked (circuit open).
    CircuitOpen,
    /// Upstream could not be reached.
    Unreachable,
    /// Its token service timed out.
    TokenTimeout,
    /// Its token service could not be reached, or is down.
    TokenUnavailable,
    /// The transfer broke off.
    BrokenTransfer,
    /// Upstream's answer was not usable (protocol, size, token refused).
    Invalid,
}

impl<'a> UpstreamFailure<'a> {
    fn of(e: &'a upstream::Error) -> Self {
        use upstream::Error as U;
        match e {
            U::Status {
                status,
                code,
                retry_after,
                ..
            } => Self::Status {
                status: *status,
                code: code.as_deref(),
                retry_after: retry_after.as_deref(),
            },
            U::Unauthorized { with_credentials } => Self::Unauthorized {
                with_credentials: *with_credentials,
            },
            U::Timeout { .. } => Self::Timeout,
            U::CircuitOpen => Self::CircuitOpen,
            U::Connect(_) => Self::Unreachable,
            U::Token(inner) if matches!(**inner, U::Timeout { .. }) => Self::TokenTimeout,
            U::Token(inner) if inner.is_unavailable() => Self::TokenUnavailable,
            U::Body(_) | U::Transport(_) => Self::BrokenTransfer,
            U::Build(_) | U::TooLarge { .. } | U::Protocol(_) | U::Token(_) => Self::Invalid,
        }
    }
}

/// One upstream's client and policy settings.
#[derive(Debug)]
pub struct Upstream {
    /// Shared with the next settings of this upstream when a reload
    /// changes only its policy (see [`same_client`]).
    pub(crate) client: Arc<UpstreamClient>,
    pub(crate) config: UpstreamConfig,
}

/// Whether `a` and `b` build the same client: they differ at most in what
/// the mirror decides with (access rules, names, `tag_ttl`, the default),
/// so a reload keeps the client's tokens, connections, breaker and
/// statistics.
fn same_client(a: &UpstreamConfig, b: &UpstreamConfig) -> bool {
    let client_part = |c: &UpstreamConfig| UpstreamConfig {
        access: crate::access::RepoRules::default(),
        default: false,
        aliases: Vec::new(),
        hosts: Vec::new(),
        implicit_library: false,
        tag_ttl: std::time::Duration::ZERO,
        ..c.clone()
    };
    client_part(a) == client_part(b)
}

impl Upstream {
    /// Its client (statistics, breaker state).
    pub fn client(&self) -> &UpstreamClient {
        &self.client
    }

    /// Its settings.
    pub fn config(&self) -> &UpstreamConfig {
        &self.config
    }
}

/// The upstreams at one moment, sorted by name.
#[derive(Debug, Clone)]
pub struct UpstreamSnapshot(Vec<Arc<Upstream>>);

impl UpstreamSnapshot {
    /// Each upstream, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Upstream>> {
        self.0.iter()
    }

    /// `(name, client)` pairs, for metrics.
    pub fn clients(&self) -> Vec<(&UpstreamId, &UpstreamClient)> {
        self.0.iter().map(|u| (&u.config.id, &*u.client)).collect()
    }
}

/// Upstreams built for a reload ([`Mirror::prepare_upstreams`]).
#[derive(Debug)]
pub struct PreparedUpstreams {
    next: HashMap<UpstreamId, Arc<Upstream>>,
    changes: UpstreamChanges,
}

/// What a reload did to the upstreams (each list sorted by file order,
/// `removed` by name).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamChanges {
    /// New names.
    pub added: Vec<UpstreamId>,
    /// Names whose settings changed: a new client.
    pub changed: Vec<UpstreamId>,
    /// Names no longer configured.
    pub removed: Vec<UpstreamId>,
}

/// The pull-through mirror for every configured upstream.
#[derive(Debug)]
pub struct Mirror {
    /// Replaced whole by a config reload ([`Mirror::install_upstreams`]);
    /// a request or download holds the `Arc<Upstream>` it started with.
    upstreams: arc_swap::ArcSwap<HashMap<UpstreamId, Arc<Upstream>>>,
    store: Store,
    cache: MetadataCache,
    fills: Arc<inflight::Fills>,
    /// Metadata being written to the store behind the responses.
    persisting: Arc<Background>,
    /// Tag records being written: what the store will say once the write
    /// lands (a revalidation must not miss a tag whose write is slow).
    pending_tags: Arc<std::sync::Mutex<HashMap<crate::tag::TagKey, crate::tag::TagRecord>>>,
    /// How long past its TTL a tag may be served while upstream is down.
    stale_if_error: std::time::Duration,
    /// `(digest, owner)` pairs upstream confirmed for a public repository
    /// although the digest is private elsewhere.
    confirmed: moka::sync::Cache<(Digest, String), ()>,
    /// Decides tag freshness.
    clock: SharedClock,
    /// The replicas sharing the bucket (`[cluster]`).
    cluster: Option<Cluster>,
}

/// How long a response waits for its metadata write (see `Mirror::persist`).
const PERSIST_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Background work with a count, so that it can be waited for.
#[derive(Debug, Default)]
struct Background {
    running: std::sync::atomic::AtomicUsize,
    emptied: tokio::sync::Notify,
}

impl Background {
    async fn drained(&self) {
        loop {
            // Registered before the check, so an end in between wakes us.
            let emptied = self.emptied.notified();
            if self.running.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                return;
            }
            emptied.await;
        }
    }
}

/// Which upstream an error is about: its name and `host[:port]`, so that a
/// log line says where the failure was.
#[derive(Debug, Clone)]
pub struct At {
    /// The upstream's name.
    pub upstream: UpstreamId,
    /// Its `host[:port]`.
    pub host: Arc<str>,
}

impl std::fmt::Display for At {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "upstream {} at {}", self.upstream, self.host)
    }
}

impl Upstream {
    fn at(&self) -> At {
        At {
            upstream: self.config.id.clone(),
            host: self.client.host().clone(),
        }
    }

    /// `e`, said of this upstream (its name and host go into the error).
    pub(crate) fn fail(&self, e: upstream::Error) -> Error {
        Error::Upstream {
            at: self.at(),
            source: Arc::new(e),
        }
    }

    /// This upstream sent content that is not `expected`.
    pub(crate) fn corrupt(&self, expected: &Digest, actual: Option<Digest>) -> Error {
        Error::Corrupt {
            at: self.at(),
            expected: expected.clone(),
            actual,
        }
    }

    /// This upstream sent `sent` bytes of an `announced`-byte body.
    pub(crate) fn wrong_length(&self, announced: u64, sent: u64) -> Error {
        Error::WrongLength {
            at: self.at(),
            announced,
            sent,
        }
    }
}

impl Mirror {
    /// Builds the mirror: one long-lived client per upstream.
    pub fn build(
        config: &Config,
        store: Store,
        clock: SharedClock,
    ) -> Result<Self, upstream::Error> {
        let mut upstreams = HashMap::new();
        for u in &config.upstreams {
            let client = Arc::new(UpstreamClient::build(u, clock.clone())?);
            upstreams.insert(
                u.id.clone(),
                Arc::new(Upstream {
                    client,
                    config: u.clone(),
                }),
            );
        }
        let cluster = config
            .cluster
            .as_ref()
            .zip(store.leases())
            .map(|(c, leases)| Cluster::new(c, leases.clone()));
        Ok(Self {
            cluster,
            upstreams: arc_swap::ArcSwap::from_pointee(upstreams),
            store,
            cache: MetadataCache::new(config.cache.metadata_max_bytes, clock.clone()),
            clock,
            fills: Arc::new(inflight::Fills::new(config.server.fill_memory)),
            persisting: Arc::default(),
            pending_tags: Arc::default(),
            stale_if_error: config.cache.stale_if_error,
            confirmed: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(std::time::Duration::from_secs(600))
                .build(),
        })
    }

    /// Waits up to `grace` for in-flight blob downloads to end, so that a
    /// blob a client has just received completely is also in the store
    /// after a restart (clients get the final byte once it is verified; the
    /// fsync and rename follow). Returns how many were still running.
    pub async fn drain(&self, grace: std::time::Duration) -> usize {
        let all = async {
            self.fills.drained().await;
            self.persisting.drained().await;
        };
        if tokio::time::timeout(grace, all).await.is_ok() {
            return 0;
        }
        self.fills.len()
    }

    /// Waits until no blob download is running (each has committed its blob,
    /// or failed and removed its temporary file) and the metadata of the
    /// answers so far is written. Work started meanwhile is waited for too.
    pub async fn downloads_done(&self) {
        self.fills.drained().await;
        self.persisting.drained().await;
    }

    /// Writes metadata to the store, waiting for it at most
    /// [`PERSIST_WAIT`]: a write that takes longer (a slow or hung S3) goes
    /// on behind the response, so the client is not held up; the memory
    /// cache serves what it wrote meanwhile. A local disk answers well
    /// within the wait, so what a response said is on disk when it ends.
    /// Best effort, as every metadata write.
    async fn persist(
        &self,
        digest: Digest,
        write: impl Future<Output = Result<(), crate::store::Error>> + Send + 'static,
    ) {
        let bg = self.persisting.clone();
        bg.running.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let (done, written) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            manifest::best_effort(&digest, write.await);
            let _ = done.send(());
            if bg.running.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1 {
                bg.emptied.notify_waiters();
            }
        });
        if tokio::time::timeout(PERSIST_WAIT, written).await.is_err() {
            tracing::debug!(
                "store write slower than {PERSIST_WAIT:?}; answering without waiting for it"
            );
        }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The replicas sharing the bucket, when `[cluster]` is configured.
    pub fn cluster(&self) -> Option<&Cluster> {
        self.cluster.as_ref()
    }

    /// Every upstream, sorted by name (for metrics and status): a snapshot,
    /// which a reload does not change.
    pub fn upstreams(&self) -> UpstreamSnapshot {
        let mut v: Vec<_> = self.upstreams.load().values().cloned().collect();
        v.sort_by(|a, b| a.config.id.cmp(&b.config.id));
        UpstreamSnapshot(v)
    }

    /// Builds the upstreams of `config` for [`Mirror::install_upstreams`]:
    /// an upstream whose client settings did not change keeps its client
    /// (its tokens, connections, breaker and statistics), a new one or one
    /// with a new URL, credentials, CA, timeouts or breaker settings gets a
    /// new client. Nothing changes yet, nor on an error.
    pub fn prepare_upstreams(&self, config: &Config) -> Result<PreparedUpstreams, upstream::Error> {
        let old = self.upstreams.load_full();
        let mut next = HashMap::new();
        let mut changes = UpstreamChanges::default();
        for u in &config.upstreams {
            match old.get(&u.id) {
                Some(o) if o.config == *u => {
                    next.insert(u.id.clone(), o.clone());
                }
                prev => {
                    let client = match prev {
                        Some(o) if same_client(&o.config, u) => o.client.clone(),
                        _ => Arc::new(UpstreamClient::build(u, self.clock.clone())?),
                    };
                    let list = if prev.is_some() {
                        &mut changes.changed
                    } else {
                        &mut changes.added
                    };
                    list.push(u.id.clone());
                    let config = u.clone();
                    next.insert(u.id.clone(), Arc::new(Upstream { client, config }));
                }
            }
        }
        changes.removed = old
            .keys()
            .filter(|id| !next.contains_key(*id))
            .cloned()
            .collect();
        changes.removed.sort();
        Ok(PreparedUpstreams { next, changes })
    }

    /// Serves the prepared upstreams from now on. Requests and downloads
    /// under way keep the upstream they started with, undisturbed; a
    /// removed one is dropped when the last of them ends.
    pub fn install_upstreams(&self, prepared: PreparedUpstreams) -> UpstreamChanges {
        self.upstreams.store(Arc::new(prepared.next));
        prepared.changes
    }

    /// The blob downloads under way, with their progress, oldest first.
    pub fn downloads(&self) -> Vec<Download> {
        self.fills.downloads()
    }

    /// What the stored images take, by repository (reads every record:
    /// for the status page, which caches it).
    pub async fn usage(&self) -> Result<crate::store::Usage, Error> {
        Ok(self.store.usage().await?)
    }

    /// Blob downloads under way.
    pub fn fills_in_flight(&self) -> usize {
        self.fills.count()
    }

    /// Blobs evicted from the local store since start.
    pub fn evictions(&self) -> u64 {
        self.store
            .blobs()
            .local()
            .map_or(0, crate::store::LocalBlobs::evictions)
    }

    /// Bytes the in-flight downloads hold in memory for their readers.
    pub fn fill_memory(&self) -> usize {
        self.fills.memory()
    }

    /// The S3 calls of the store's bucket, with the S3 backend.
    pub fn s3_calls(&self) -> Option<&crate::store::s3::Calls> {
        self.store.blobs().s3_calls()
    }

    /// Where the store is (a directory, a bucket), for the status page.
    pub fn store_description(&self) -> String {
        self.store.describe()
    }

    /// Approximate bytes of locally stored blobs (for metrics).
    pub fn stored_bytes(&self) -> u64 {
        self.store.stored_bytes()
    }

    fn upstream(&self, id: &UpstreamId) -> Result<Arc<Upstream>, Error> {
        self.upstreams
            .load()
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NoUpstream(id.clone()))
    }

    /// The repository name as sent upstream: Docker Hub's implicit
    /// `library/` is added to one-component names when the upstream wants it.
    pub fn upstream_repo(&self, id: &UpstreamId, repo: &RepoName) -> RepoName {
        match self.upstreams.load().get(id) {
            Some(u) if u.config.implicit_library => repo.with_library_prefix(),
            _ => repo.clone(),
        }
    }

    /// Runs before `digest` is served for `repo`: a private repository marks
    /// it; a client that may not read private content gets a private digest
    /// for another repository only when upstream confirms (with a HEAD) that
    /// this repository holds it too, and never from a cache-only request.
    async fn guard_private(
        &self,
        up: &Upstream,
        repo: &RepoName,
        digest: &Digest,
        grant: Grant,
        is_manifest: bool,
    ) -> Result<(), Error> {
        if !grant.private_repo && grant.reads_private {
            return Ok(());
        }
        let owner = format!("{}/{repo}", up.config.id);
        if grant.private_repo {
            return Ok(self.store.mark_private(digest, owner).await?);
        }
        // Replicas share the marks through the bucket, and another may have
        // marked this digest since this one loaded them: read them again.
        let fresh = self.cluster.is_none() || self.store.private_marks().refresh(digest).await;
        if fresh && self.store.private_marks().owned_by(digest, &owner) != Some(false) {
            return Ok(());
        }
        let key = (digest.clone(), owner);
        if self.confirmed.contains_key(&key) {
            return Ok(());
        }
        if grant.fetch == Fetch::CacheOnly {
            return Err(Error::NotCached);
        }
        if is_manifest {
            let r = crate::oci::Reference::Digest(digest.clone());
            up.client
                .head_manifest(repo, &r, crate::oci::AcceptClass::all_modern())
                .await
                .map_err(|e| up.fail(e))?;
        } else {
            up.client
                .head_blob(repo, digest)
                .await
                .map_err(|e| up.fail(e))?;
        }
        self.confirmed.insert(key, ());
        Ok(())
    }

    /// Passes `tags/list` through to upstream (`n`/`last` preserved).
    pub async fn tags(
        &self,
        id: &UpstreamId,
        repo: &RepoName,
        query: &[(String, String)],
        grant: Grant,
    ) -> Result<Passthrough, Error> {
        let up = self.upstream(id)?;
        if grant.fetch == Fetch::CacheOnly {
            return Err(Error::NotCached);
        }
        up.client
            .get_tags(&self.upstream_repo(id, repo), query)
            .await
            .map_err(|e| up.fail(e))
    }

    /// Passes the referrers API through; an upstream 404 stays an error so
    /// clients fall back to the referrers tag schema.
    pub async fn referrers(
        &self,
        id: &UpstreamId,
        repo: &RepoName,
        digest: &Digest,
        artifact_type: Option<&str>,
        grant: Grant,
    ) -> Result<Passthrough, Error> {
        let up = self.upstream(id)?;
        if grant.fetch == Fetch::CacheOnly {
            return Err(Error::NotCached);
        }
        let repo = self.upstream_repo(id, repo);
        up.client
            .get_referrers(&repo, digest, artifact_type)
            .await
            .map_err(|e| up.fail(e))
    }

    /// Repositories of `id` that have cached content, sorted.
    pub async fn catalog(&self, id: &UpstreamId) -> Result<Vec<String>, Error> {
        self.upstream(id)?;
        // A repository pulled a moment ago is listed: its mark may still be
        // on its way to a slow store.
        self.persisting.drained().await;
        Ok(self.store.repos(id).await?)
    }
}
