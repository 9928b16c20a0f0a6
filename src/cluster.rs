//! Replicas that share one bucket and act as one mirror: each cold blob is
//! fetched upstream once for the whole fleet.
//!
//! ```text
//! cluster          Cluster: this replica's identity, the lease protocol, the peer client
//! └── sign         request signatures between replicas (HMAC-SHA256, shared secret)
//! ```
//!
//! The bucket is the only shared state; there is no member list, so
//! replicas come and go freely. A replica about to fetch a blob that is
//! neither in its read tier nor in the bucket creates the blob's lease
//! object with a conditional PUT (`If-None-Match: *`): exactly one replica
//! wins. The winner fetches upstream and renews the lease every third of
//! `lease_ttl` (each renewal is a conditional PUT on the version it last
//! wrote). Every other replica reads the lease and streams the blob from
//! the holder's internal endpoint as it arrives there (an unfinished upload
//! cannot be read back from S3). The holder removes the lease once the blob
//! is in the bucket.
//!
//! A lease whose version has not changed for `lease_ttl`, as timed by the
//! replica watching it (its own monotonic clock: no clock is compared with
//! another's), belongs to a holder that died or froze. A follower then
//! replaces that version with a lease of its own; of several, exactly one
//! succeeds. It resumes the download upstream from the byte it has. A
//! holder that wakes up finds its renewal refused and gives up: its fill
//! fails, and it completes no upload.
//!
//! When the bucket cannot coordinate (S3 down), a replica fetches on its
//! own, as a lone mirror would: more upstream traffic, never a failed pull.

mod sign;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

pub use sign::SignError;

use crate::config::{ClusterConfig, Secret};
use crate::oci::Digest;
use crate::store::s3::{LeaseVersion, Leases};

/// The header that carries a request's signature.
pub const SIGNATURE: &str = "x-mirrorgate-signature";
/// The header of a peer request that names the first byte wanted.
pub const FROM: &str = "x-mirrorgate-from";
/// The header of a peer response that gives the blob's whole size (its
/// `Content-Length` counts from the first byte sent).
pub const SIZE: &str = "x-mirrorgate-size";
/// Where the internal endpoint serves blobs: `<PREFIX><digest>?…`.
pub const BLOB_PATH: &str = "/_mirrorgate/v1/blobs/";

/// This replica's view of the cluster. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Cluster(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    /// This process, in lease bodies: random per start, so a restarted
    /// replica at the same address is a different holder.
    id: String,
    advertise: url::Url,
    secret: Secret,
    ttl: Duration,
    leases: Leases,
    client: Client<HttpConnector, Empty<Bytes>>,
    /// The leases this replica holds, for handing them over at shutdown.
    holding: Mutex<Vec<Weak<HeldInner>>>,
}

/// A lease object's body.
#[derive(Debug, Serialize, Deserialize)]
struct LeaseBody {
    /// The holding process.
    holder: String,
    /// Its internal endpoint.
    addr: String,
    /// Counts renewals, so that each one changes the object (and so its
    /// ETag), and so that a renewal whose answer was lost is recognised.
    renewal: u64,
    /// When the holder took the lease (for operators reading the bucket).
    since_ms: u64,
}

/// Another replica's lease, as this one observed it.
#[derive(Debug, Clone)]
pub struct Holder {
    /// The holding process.
    pub id: String,
    /// Its internal endpoint.
    pub addr: url::Url,
    version: LeaseVersion,
    /// When this replica first saw this version of the lease.
    seen: Instant,
}

impl Holder {
    /// Whether this version of the lease has gone unrenewed for `ttl`.
    pub fn is_stale(&self, ttl: Duration) -> bool {
        self.seen.elapsed() >= ttl
    }

    /// How long until it is stale.
    pub fn stale_in(&self, ttl: Duration) -> Duration {
        ttl.saturating_sub(self.seen.elapsed())
    }

    /// Whether `other` is the same version of the lease.
    pub fn same_version(&self, other: &Holder) -> bool {
        self.version == other.version
    }
}

/// The outcome of asking for a fill's lease.
#[derive(Debug)]
pub enum Claim {
    /// This replica holds it: fetch upstream.
    Won(Held),
    /// Another replica holds it: stream from it.
    Taken(Holder),
    /// The bucket cannot coordinate (S3 failed): fetch alone.
    Alone(crate::store::Error),
}

impl Cluster {
    /// The cluster as `c` configures it, coordinating through `leases`.
    pub fn new(c: &ClusterConfig, leases: Leases) -> Self {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(c.peer_connect_timeout));
        http.set_nodelay(true);
        let client = Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(32)
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .build(http);
        Self(Arc::new(Inner {
            id: new_id(),
            advertise: c.advertise.clone(),
            secret: c.secret.clone(),
            ttl: c.lease_ttl,
            leases,
            client,
            holding: Mutex::default(),
        }))
    }

    /// Releases every lease this replica still holds (at shutdown, once
    /// the grace period is over): other replicas take those fills over at
    /// once, resuming where their bytes end, instead of waiting for the
    /// leases to go stale. The fills here then fail without completing.
    pub async fn release_all(&self) -> usize {
        let live: Vec<Arc<HeldInner>> = self
            .0
            .holding
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .drain(..)
            .filter_map(|w| w.upgrade())
            .collect();
        for h in &live {
            release(h).await;
        }
        live.len()
    }

    /// This process's id in leases.
    pub fn id(&self) -> &str {
        &self.0.id
    }

    /// How long an unrenewed lease lives.
    pub fn ttl(&self) -> Duration {
        self.0.ttl
    }

    /// Checks a peer request's signature (see [`SIGNATURE`]).
    pub fn check(
        &self,
        method: &http::Method,
        path_and_query: &str,
        from: u64,
        signature: Option<&str>,
    ) -> Result<(), SignError> {
        sign::check(
            &self.0.secret,
            method.as_str(),
            path_and_query,
            from,
            signature,
            now_ms(),
        )
    }

    fn body(&self, renewal: u64, since_ms: u64) -> Bytes {
        let b = LeaseBody {
            holder: self.0.id.clone(),
            addr: self.0.advertise.to_string(),
            renewal,
            since_ms,
        };
        Bytes::from(serde_json::to_vec(&b).unwrap_or_default())
    }

    /// Takes the lease of `digest`, or names who has it.
    pub async fn claim(&self, digest: &Digest) -> Claim {
        // A lease can vanish between a refused create and the read (its
        // holder finished): try again, a few times.
        for _ in 0..3 {
            let since = now_ms();
            match self.0.leases.create(digest, self.body(0, since)).await {
                Ok(Some(v)) => return Claim::Won(Held::start(self, digest, v, 0, since)),
                Ok(None) => {}
                Err(e) => return Claim::Alone(e),
            }
            match self.observe(digest).await {
                Ok(Some(h)) if h.id == self.0.id => {
                    // Our own lease (a create whose answer was lost, or a
                    // fill of ours that is still releasing it): take it.
                    return self.take_over(digest, &h).await;
                }
                Ok(Some(h)) => return Claim::Taken(h),
                // Gone, or only seemingly (an S3 server may answer 404 while
                // it replaces an object): look again in a moment.
                Ok(None) => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => return Claim::Alone(e),
            }
        }
        Claim::Alone(crate::store::Error::Backend {
            op: "claim lease",
            at: digest.to_string(),
            source: "the lease kept vanishing between create and read".into(),
        })
    }

    /// The current lease of `digest` (`None`: nobody holds it).
    pub async fn observe(&self, digest: &Digest) -> Result<Option<Holder>, crate::store::Error> {
        let Some((version, bytes)) = self.0.leases.read(digest).await? else {
            return Ok(None);
        };
        let body: LeaseBody = match serde_json::from_slice(&bytes) {
            Ok(b) => b,
            // Not ours to read: treat it as a holder nobody can reach, which
            // goes stale and is taken over.
            Err(_) => LeaseBody {
                holder: String::new(),
                addr: String::new(),
                renewal: 0,
                since_ms: 0,
            },
        };
        let addr = url::Url::parse(&body.addr)
            .unwrap_or_else(|_| url::Url::parse("http://invalid.invalid/").expect("a valid URL"));
        Ok(Some(Holder {
            id: body.holder,
            addr,
            version,
            seen: Instant::now(),
        }))
    }

    /// Replaces the stale lease `stale` with one of this replica's.
    pub async fn take_over(&self, digest: &Digest, stale: &Holder) -> Claim {
        let since = now_ms();
        match self
            .0
            .leases
            .replace(digest, &stale.version, self.body(0, since))
            .await
        {
            Ok(Some(v)) => Claim::Won(Held::start(self, digest, v, 0, since)),
            Ok(None) => match self.observe(digest).await {
                Ok(Some(h)) => Claim::Taken(h),
                Ok(None) => Box::pin(self.claim(digest)).await,
                Err(e) => Claim::Alone(e),
            },
            Err(e) => Claim::Alone(e),
        }
    }

    /// Asks `holder` for bytes `from..` of the blob at `path_and_query`
    /// (under [`BLOB_PATH`]). `Ok(None)`: the holder has no such blob.
    pub async fn fetch(
        &self,
        holder: &Holder,
        path_and_query: &str,
        from: u64,
    ) -> Result<Option<PeerBody>, PeerError> {
        let base = holder.addr.as_str().trim_end_matches('/');
        let uri: http::Uri = format!("{base}{path_and_query}")
            .parse()
            .map_err(|_| PeerError::Address(holder.addr.to_string()))?;
        let signature = sign::sign(&self.0.secret, "GET", path_and_query, from, now_ms());
        let req = Request::get(uri)
            .header(SIGNATURE, signature)
            .header(FROM, from)
            .body(Empty::new())
            .map_err(|_| PeerError::Address(holder.addr.to_string()))?;
        let resp = self
            .0
            .client
            .request(req)
            .await
            .map_err(PeerError::Request)?;
        match resp.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Ok(None),
            s => return Err(PeerError::Status(s)),
        }
        let size = resp
            .headers()
            .get(SIZE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let body = resp
            .into_body()
            .into_data_stream()
            .map(|r| r.map_err(PeerError::Body))
            .boxed();
        Ok(Some(PeerBody { size, body }))
    }
}

/// A blob streaming from another replica.
pub struct PeerBody {
    /// The blob's whole size, when the holder knows it.
    pub size: Option<u64>,
    /// Its bytes from the first one asked for. A clean end is the end of
    /// the blob, verified by the holder (which sends the final byte only
    /// then).
    pub body: BoxStream<'static, Result<Bytes, PeerError>>,
}

impl std::fmt::Debug for PeerBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerBody")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// A request to another replica failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The holder's advertised address is not usable.
    #[error("replica address {0} is not usable")]
    Address(String),
    /// No answer (connection refused, reset, timed out).
    #[error("request to replica failed")]
    Request(#[source] hyper_util::client::legacy::Error),
    /// The replica refused.
    #[error("replica answered {0}")]
    Status(StatusCode),
    /// No answer in time (a frozen replica still accepts connections).
    #[error("replica did not answer within {0:?}")]
    Timeout(Duration),
    /// The body broke off.
    #[error("replica's body broke off")]
    Body(#[source] hyper::Error),
}

/// A lease this replica holds. Renewed in the background until released
/// or lost; dropping the last clone releases it (in the background).
#[derive(Debug, Clone)]
pub struct Held(Arc<HeldInner>);

#[derive(Debug)]
struct HeldInner {
    cluster: Cluster,
    digest: Digest,
    since_ms: u64,
    /// The version last written, `None` once lost or released; locked
    /// across each conditional PUT, so that renewals never race.
    version: tokio::sync::Mutex<Option<LeaseVersion>>,
    renewal: AtomicU64,
    lost: AtomicBool,
    released: AtomicBool,
    renewer: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Held {
    fn start(
        cluster: &Cluster,
        digest: &Digest,
        v: LeaseVersion,
        renewal: u64,
        since_ms: u64,
    ) -> Self {
        let inner = Arc::new(HeldInner {
            cluster: cluster.clone(),
            digest: digest.clone(),
            since_ms,
            version: tokio::sync::Mutex::new(Some(v)),
            renewal: AtomicU64::new(renewal),
            lost: AtomicBool::new(false),
            released: AtomicBool::new(false),
            renewer: Mutex::new(None),
        });
        {
            let mut holding = cluster
                .0
                .holding
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            holding.retain(|w| w.strong_count() > 0);
            holding.push(Arc::downgrade(&inner));
        }
        let task = tokio::spawn(renew_loop(Arc::downgrade(&inner), cluster.ttl() / 3));
        *inner
            .renewer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(task);
        Self(inner)
    }

    /// Whether another replica has taken the lease over (seen by a
    /// renewal).
    pub fn lost(&self) -> bool {
        self.0.lost.load(Ordering::SeqCst)
    }

    /// Renews the lease now: whether it is still this replica's. A holder
    /// asks before anything it must not do once the lease is gone
    /// (completing the blob).
    pub async fn confirm(&self) -> bool {
        renew(&self.0).await.unwrap_or(false)
    }

    /// Ends the lease: removes the object if it is still this replica's.
    pub async fn release(self) {
        release(&self.0).await;
    }
}

impl Drop for HeldInner {
    fn drop(&mut self) {
        if let Some(t) = self
            .renewer
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            t.abort();
        }
        if self.released.load(Ordering::SeqCst) || self.lost.load(Ordering::SeqCst) {
            return;
        }
        // Not released (the fill failed or was dropped): free the lease so
        // that another replica need not wait for it to go stale.
        let Some(v) = self.version.get_mut().take() else {
            return;
        };
        let (cluster, digest) = (self.cluster.clone(), self.digest.clone());
        let renewal = self.renewal.load(Ordering::SeqCst) + 1;
        let since = self.since_ms;
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let leases = &cluster.0.leases;
                let body = cluster.body(renewal, since);
                if let Ok(Some(_)) = leases.replace(&digest, &v, body).await
                    && let Err(e) = leases.remove(&digest).await
                {
                    tracing::debug!(%digest, error = %crate::error_chain(&e), "cannot remove a lease; it will go stale");
                }
            });
        }
    }
}

async fn renew_loop(held: Weak<HeldInner>, every: Duration) {
    let mut tick = tokio::time::interval_at(Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(h) = held.upgrade() else { return };
        match renew(&h).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(digest = %h.digest, error = %crate::error_chain(&e),
                    "cannot renew a fill's lease; another replica may take the fill over");
            }
        }
    }
}

/// One conditional renewal: `Ok(false)` when the lease is no longer ours.
async fn renew(h: &HeldInner) -> Result<bool, crate::store::Error> {
    let mut version = h.version.lock().await;
    let Some(v) = version.clone() else {
        return Ok(false);
    };
    let renewal = h.renewal.fetch_add(1, Ordering::SeqCst) + 1;
    let leases = &h.cluster.0.leases;
    let body = h.cluster.body(renewal, h.since_ms);
    if let Some(next) = leases.replace(&h.digest, &v, body).await? {
        *version = Some(next);
        return Ok(true);
    }
    // Refused. Unless the lease is this very renewal (its answer was lost
    // and the retry found the condition changed), another replica has it.
    if let Some((current, bytes)) = leases.read(&h.digest).await?
        && let Ok(b) = serde_json::from_slice::<LeaseBody>(&bytes)
        && b.holder == h.cluster.0.id
        && b.renewal == renewal
    {
        *version = Some(current);
        return Ok(true);
    }
    *version = None;
    h.lost.store(true, Ordering::SeqCst);
    tracing::warn!(digest = %h.digest, "a fill's lease was taken over by another replica; giving the fill up");
    Ok(false)
}

async fn release(h: &HeldInner) {
    let mut version = h.version.lock().await;
    let Some(v) = version.take() else { return };
    h.released.store(true, Ordering::SeqCst);
    let leases = &h.cluster.0.leases;
    let renewal = h.renewal.fetch_add(1, Ordering::SeqCst) + 1;
    // Only a lease that is still ours is removed: the conditional PUT
    // proves it, and nobody replaces a lease just renewed.
    match leases
        .replace(&h.digest, &v, h.cluster.body(renewal, h.since_ms))
        .await
    {
        Ok(Some(_)) => {
            if let Err(e) = leases.remove(&h.digest).await {
                tracing::debug!(digest = %h.digest, error = %crate::error_chain(&e), "cannot remove a lease; it will go stale");
            }
        }
        Ok(None) => {}
        Err(e) => {
            tracing::debug!(digest = %h.digest, error = %crate::error_chain(&e), "cannot release a lease; it will go stale");
        }
    }
}

fn now_ms() -> u64 {
    crate::tag::epoch_ms(SystemTime::now())
}

/// A random id for this process (16 hex digits).
fn new_id() -> String {
    let mut b = [0u8; 8];
    // The CA's key generation uses the same provider; a failure here would
    // leave only the time as entropy, which is still unique per start.
    if aws_lc_rs::rand::fill(&mut b).is_err() {
        b = now_ms().to_le_bytes();
    }
    hex::encode(b)
}
