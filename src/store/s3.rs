//! The S3 backend: blobs and records in an S3-compatible bucket (through
//! `object_store`), with the local store as read tier and spool.
//!
//! ```text
//! <bucket>/<prefix>
//! ├── blobs/sha256/<hex>          verified content (never a body that fails its digest)
//! ├── manifests/…, repos/…, private/…   records (see `records`)
//! ├── leases/sha256/<hex>         a fill in progress on one replica (`[cluster]`:
//! │                               conditional PUTs only, see `Leases`)
//! ├── uploads/<id>                a multipart upload in progress (its key and id),
//! │                               renewed while it runs; the sweeper aborts stale ones
//! └── quarantine/<hex>.<ns>       objects that failed `verify`
//! ```
//!
//! - **Writes**: the writer spools to the read tier's `tmp/` while hashing
//!   (followers read the spool: an unfinished multipart upload cannot be
//!   read back), and an uploader task sends each full part from the spool
//!   as it is written, so a slow S3 never slows the download. The upload is
//!   completed only once size and digest check out, and aborted otherwise;
//!   a blob smaller than one part goes up in one PUT at the commit. The
//!   spool then becomes the read tier's copy. If S3 fails, the blob stays
//!   in the read tier only, with a warning.
//! - **Reads**: the read tier first; otherwise a [`BlobReader`] that
//!   streams ranged GETs (`object_store` resumes a broken body with a
//!   ranged request that checks the ETag). The mirror copies such a blob
//!   into the tier through a verified fill (`Scope::ReadTier`).
//! - **Failures**: calls go through a circuit breaker; idempotent calls are
//!   retried with backoff by `object_store`; blob bodies have a read
//!   timeout but no overall one. While S3 fails, lookups answer "absent"
//!   (logged), so the tier still serves and cold blobs are fetched upstream.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as ObjectPath;
use object_store::signer::Signer;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMode,
    PutOptions, PutPayload, RetryConfig, UpdateVersion,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::local::LocalBlobs;
use super::reader::RemoteBlob;
use super::records::{RecordKey, Records};
use super::writer::Publish;
use super::{Backend, BlobReader, BlobWriter, Error, Scope, Spool, VerifyReport, blocking};
use crate::breaker::{Admit, Breaker, Settings};
use crate::config::S3Config;
use crate::oci::{Digest, Digester};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Why the S3 client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the S3 client for bucket {bucket}")]
pub struct BuildError {
    bucket: String,
    #[source]
    source: object_store::Error,
}

/// The bucket, as every S3 call sees it. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Bucket(Arc<BucketInner>);

#[derive(Debug)]
struct BucketInner {
    /// Calls with an overall timeout (HEAD, records, parts, completion).
    calls: AmazonS3,
    /// Blob bodies: a read timeout, no overall timeout (a long blob must
    /// not be cut).
    bodies: AmazonS3,
    /// Signs presigned URLs for the address clients reach S3 at.
    signer: AmazonS3,
    prefix: String,
    bucket: String,
    breaker: Breaker,
    /// Every call, counted.
    stats: Calls,
}

/// The S3 operations the store makes (the `op` label).
pub const OPS: [&str; 10] = [
    "HEAD",
    "GET",
    "PUT",
    "DELETE",
    "LIST",
    "COPY",
    "CreateMultipartUpload",
    "UploadPart",
    "CompleteMultipartUpload",
    "AbortMultipartUpload",
];

/// How a call ended (the `result` label): `not_found` and `precondition`
/// are S3 answering as designed (a miss, a conditional write that lost);
/// `circuit_open` calls were never sent.
pub const RESULTS: [&str; 5] = ["ok", "not_found", "precondition", "error", "circuit_open"];

/// The S3 calls of one bucket by operation and result, and their time
/// (to the answer's head), for `/metrics`. Plain atomics.
#[derive(Debug, Default)]
pub struct Calls {
    counts: [[AtomicU64; RESULTS.len()]; OPS.len()],
    /// Microseconds spent in the calls that were sent, per operation.
    micros: [AtomicU64; OPS.len()],
    /// Whether the bucket's breaker is open, as of the last call.
    open: std::sync::atomic::AtomicBool,
}

impl Calls {
    fn record(&self, op: &str, result: usize, took: Option<Duration>) {
        let Some(o) = OPS.iter().position(|x| *x == op) else {
            return;
        };
        self.counts[o][result].fetch_add(1, Relaxed);
        if let Some(t) = took {
            self.micros[o].fetch_add(u64::try_from(t.as_micros()).unwrap_or(u64::MAX), Relaxed);
        }
    }

    /// `(op, result, calls)` for every pair that occurred.
    pub fn counts(&self) -> Vec<(&'static str, &'static str, u64)> {
        let mut v = Vec::new();
        for (op, row) in OPS.iter().zip(&self.counts) {
            for (result, n) in RESULTS.iter().zip(row) {
                let n = n.load(Relaxed);
                if n > 0 {
                    v.push((*op, *result, n));
                }
            }
        }
        v
    }

    /// `(op, calls sent, seconds spent)` for every operation that occurred.
    pub fn durations(&self) -> Vec<(&'static str, u64, f64)> {
        OPS.iter()
            .zip(&self.counts)
            .zip(&self.micros)
            .filter_map(|((op, row), us)| {
                // Sent: every result but `circuit_open` (the last).
                let sent: u64 = row[..RESULTS.len() - 1]
                    .iter()
                    .map(|n| n.load(Relaxed))
                    .sum();
                (sent > 0).then(|| (*op, sent, us.load(Relaxed) as f64 / 1e6))
            })
            .collect()
    }

    /// Whether the bucket's circuit breaker is open.
    pub fn circuit_open(&self) -> bool {
        self.open.load(Relaxed)
    }
}

fn builder(c: &S3Config, endpoint: Option<&url::Url>, options: ClientOptions) -> AmazonS3Builder {
    let mut b = match &c.credentials {
        // The environment's credentials: keys, profiles, instance and
        // web-identity roles.
        None => AmazonS3Builder::from_env(),
        Some((id, key)) => AmazonS3Builder::new()
            .with_access_key_id(id.expose())
            .with_secret_access_key(key.expose()),
    };
    b = b
        .with_bucket_name(&c.bucket)
        .with_region(&c.region)
        .with_allow_http(c.allow_http)
        .with_virtual_hosted_style_request(c.virtual_hosted)
        .with_client_options(options)
        .with_retry(RetryConfig {
            // A request path waits on these: a few quick retries, then the
            // breaker decides.
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(2),
                base: 2.0,
            },
            max_retries: 3,
            retry_timeout: Duration::from_secs(15),
        });
    if let Some(e) = endpoint {
        b = b.with_endpoint(e.as_str().trim_end_matches('/'));
    }
    b.with_unsigned_payload(unsigned_payload_is_safe(c.endpoint.as_ref()))
}

/// Whether uploads may skip the body's hash in their signature
/// (`UNSIGNED-PAYLOAD`): over TLS (which guards the body) or to a loopback
/// endpoint (no network in between). What is uploaded was verified against
/// its digest first; hashing it again for the signature costs as much CPU
/// as that verification (a profile of a cold pull on S3 showed 21% of the
/// mirror's CPU there). A plain-HTTP endpoint elsewhere keeps the signed
/// payload, so that S3 refuses a body changed on the way.
fn unsigned_payload_is_safe(endpoint: Option<&url::Url>) -> bool {
    let Some(u) = endpoint else {
        return true; // AWS: https
    };
    u.scheme() == "https"
        || match u.host() {
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        }
}

impl Bucket {
    /// Builds the clients (no network I/O).
    pub fn build(c: &S3Config) -> Result<Self, BuildError> {
        let fail = |source| BuildError {
            bucket: c.bucket.clone(),
            source,
        };
        let mut base = ClientOptions::new()
            .with_connect_timeout(c.connect_timeout)
            .with_allow_http(c.allow_http);
        if let Some(pem) = &c.ca_pem {
            for cert in object_store::Certificate::from_pem_bundle(pem).map_err(fail)? {
                base = base.with_root_certificate(cert);
            }
        }
        let calls = base
            .clone()
            .with_timeout(c.request_timeout)
            .with_read_timeout(c.read_timeout);
        let bodies = base
            .clone()
            .with_timeout_disabled()
            .with_read_timeout(c.read_timeout);
        let endpoint = c.endpoint.as_ref();
        let signer_endpoint = c.redirect_endpoint.as_ref().or(endpoint);
        Ok(Self(Arc::new(BucketInner {
            calls: builder(c, endpoint, calls).build().map_err(fail)?,
            bodies: builder(c, endpoint, bodies).build().map_err(fail)?,
            signer: builder(c, signer_endpoint, base).build().map_err(fail)?,
            prefix: c.prefix.clone(),
            bucket: c.bucket.clone(),
            breaker: Breaker::new(Settings {
                threshold: c.breaker_failures,
                backoff: c.breaker_backoff,
                max_backoff: c.breaker_backoff.max(Duration::from_secs(60)),
            }),
            stats: Calls::default(),
        })))
    }

    /// The calls made so far.
    pub fn calls(&self) -> &Calls {
        &self.0.stats
    }

    fn path(&self, key: &str) -> ObjectPath {
        ObjectPath::from(format!("{}{key}", self.0.prefix))
    }

    fn blob_key(d: &Digest) -> String {
        format!("blobs/{}/{}", d.algorithm().as_str(), d.hex())
    }

    fn describe(&self) -> String {
        format!("s3://{}/{}", self.0.bucket, self.0.prefix)
    }

    /// Runs an S3 call through the breaker. `NotFound` and precondition
    /// answers are S3 working, not failing.
    async fn call<T>(
        &self,
        op: &'static str,
        at: &ObjectPath,
        f: impl Future<Output = object_store::Result<T>>,
    ) -> Result<T, S3Error> {
        let now = std::time::Instant::now();
        if self.0.breaker.admit(now) == Admit::Reject {
            self.0.stats.record(op, RESULTS.len() - 1, None);
            return Err(S3Error::CircuitOpen {
                op,
                at: at.to_string(),
            });
        }
        let r = f.await;
        let result = match &r {
            Ok(_) => 0,
            Err(object_store::Error::NotFound { .. }) => 1,
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. }
                | object_store::Error::NotModified { .. },
            ) => 2,
            Err(_) => 3,
        };
        self.0.stats.record(op, result, Some(now.elapsed()));
        self.0.breaker.record(result < 3, std::time::Instant::now());
        self.0.stats.open.store(self.0.breaker.is_open(), Relaxed);
        r.map_err(|source| S3Error::Call {
            op,
            at: at.to_string(),
            source,
        })
    }

    async fn head(&self, key: &str) -> Result<Option<object_store::ObjectMeta>, S3Error> {
        let path = self.path(key);
        match self.call("HEAD", &path, self.0.calls.head(&path)).await {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn put(&self, key: &str, bytes: Bytes) -> Result<(), S3Error> {
        let path = self.path(key);
        self.call(
            "PUT",
            &path,
            self.0.calls.put(&path, PutPayload::from(bytes)),
        )
        .await
        .map(|_| ())
    }

    async fn delete(&self, key: &str) -> Result<(), S3Error> {
        let path = self.path(key);
        match self.call("DELETE", &path, self.0.calls.delete(&path)).await {
            Err(e) if !e.is_not_found() => Err(e),
            _ => Ok(()),
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, S3Error> {
        let path = self.path(key);
        let got = self
            .call("GET", &path, async {
                self.0.calls.get(&path).await?.bytes().await
            })
            .await;
        match got {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every key under `prefix` (relative to the bucket prefix).
    async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>, S3Error> {
        Ok(self
            .list_meta(prefix)
            .await?
            .into_iter()
            .map(|(k, size, _)| (k, size))
            .collect())
    }

    /// Every key under `prefix` with its size and last modification.
    async fn list_meta(&self, prefix: &str) -> Result<Vec<(String, u64, SystemTime)>, S3Error> {
        let path = self.path(prefix);
        let all: Vec<object_store::ObjectMeta> = self
            .call("LIST", &path, self.0.calls.list(Some(&path)).try_collect())
            .await?;
        let strip = self.0.prefix.len();
        Ok(all
            .into_iter()
            .filter_map(|m| {
                let k = m.location.as_ref();
                k.get(strip..)
                    .map(|k| (k.to_owned(), m.size, SystemTime::from(m.last_modified)))
            })
            .collect())
    }

    /// A conditional PUT: `Ok(Some(etag))` when it took effect, `Ok(None)`
    /// when its condition failed (the object exists, for a create; it
    /// changed or is gone, for an update).
    async fn put_if(
        &self,
        key: &str,
        bytes: Bytes,
        mode: PutMode,
    ) -> Result<Option<String>, S3Error> {
        let path = self.path(key);
        let opts = PutOptions {
            mode,
            ..Default::default()
        };
        let put = self.0.calls.put_opts(&path, PutPayload::from(bytes), opts);
        match self.call("PUT", &path, put).await {
            Ok(r) => match r.e_tag {
                Some(e) => Ok(Some(e)),
                None => Err(S3Error::Call {
                    op: "PUT",
                    at: path.to_string(),
                    source: object_store::Error::NotSupported {
                        source: "S3 answered a PUT without an ETag: conditional writes need one"
                            .into(),
                    },
                }),
            },
            Err(S3Error::Call {
                source:
                    object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. }
                    | object_store::Error::NotFound { .. },
                ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// An object's bytes and ETag (`None`: absent).
    async fn get_versioned(&self, key: &str) -> Result<Option<(String, Bytes)>, S3Error> {
        let path = self.path(key);
        let got = self
            .call("GET", &path, async {
                let r = self.0.calls.get(&path).await?;
                let etag = r.meta.e_tag.clone().unwrap_or_default();
                Ok((etag, r.bytes().await?))
            })
            .await;
        match got {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Streams `range` of an object (a read timeout, no overall timeout).
    fn stream(&self, key: &str, range: Range<u64>) -> BoxStream<'static, std::io::Result<Bytes>> {
        let (me, path) = (self.clone(), self.path(key));
        let opened = async move {
            let opts = GetOptions {
                range: Some(GetRange::Bounded(range)),
                ..Default::default()
            };
            let r = me
                .call("GET", &path, me.0.bodies.get_opts(&path, opts))
                .await
                .map_err(std::io::Error::other)?;
            Ok::<_, std::io::Error>(r.into_stream().map_err(std::io::Error::other))
        };
        futures_util::stream::once(opened).try_flatten().boxed()
    }
}

/// Lease objects: one small object per digest being fetched
/// (`leases/<alg>/<hex>`), written only with conditional PUTs, so that of
/// the replicas sharing the bucket exactly one creates it, and exactly one
/// replaces a given version of it. The bucket is the only shared state:
/// no member list, no lock server.
#[derive(Debug, Clone)]
pub struct Leases {
    bucket: Bucket,
}

/// One version of a lease object (its ETag): what a conditional
/// replacement must name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseVersion(String);

impl Leases {
    /// The leases in `bucket`.
    pub fn new(bucket: Bucket) -> Self {
        Self { bucket }
    }

    fn key(d: &Digest) -> String {
        format!("leases/{}/{}", d.algorithm().as_str(), d.hex())
    }

    /// Creates the lease of `digest` unless one exists: its version when
    /// this call created it, `None` when another did.
    pub async fn create(&self, d: &Digest, body: Bytes) -> Result<Option<LeaseVersion>, Error> {
        let key = Self::key(d);
        let put = self.bucket.put_if(&key, body, PutMode::Create);
        Ok(put.await?.map(LeaseVersion))
    }

    /// Replaces version `v` of the lease of `digest` (renewal, takeover):
    /// the new version, or `None` when `v` is no longer current.
    pub async fn replace(
        &self,
        d: &Digest,
        v: &LeaseVersion,
        body: Bytes,
    ) -> Result<Option<LeaseVersion>, Error> {
        let mode = PutMode::Update(UpdateVersion {
            e_tag: Some(v.0.clone()),
            version: None,
        });
        let key = Self::key(d);
        let put = self.bucket.put_if(&key, body, mode);
        Ok(put.await?.map(LeaseVersion))
    }

    /// The current lease of `digest`: its version and body.
    pub async fn read(&self, d: &Digest) -> Result<Option<(LeaseVersion, Bytes)>, Error> {
        let got = self.bucket.get_versioned(&Self::key(d)).await?;
        Ok(got.map(|(v, b)| (LeaseVersion(v), b)))
    }

    /// Removes the lease of `digest` (absent: nothing to do).
    pub async fn remove(&self, d: &Digest) -> Result<(), Error> {
        Ok(self.bucket.delete(&Self::key(d)).await?)
    }
}

/// An S3 call failed.
#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    /// S3 answered with an error or could not be reached.
    #[error("S3 {op} {at}")]
    Call {
        /// The call.
        op: &'static str,
        /// The object.
        at: String,
        /// The cause.
        #[source]
        source: object_store::Error,
    },
    /// Recent calls failed: this one was not tried.
    #[error("S3 {op} {at}: not tried, recent S3 calls failed (circuit open)")]
    CircuitOpen {
        /// The call.
        op: &'static str,
        /// The object.
        at: String,
    },
}

impl S3Error {
    fn is_not_found(&self) -> bool {
        matches!(
            self,
            Self::Call {
                source: object_store::Error::NotFound { .. },
                ..
            }
        )
    }
}

impl From<S3Error> for Error {
    fn from(e: S3Error) -> Self {
        let (op, at) = match &e {
            S3Error::Call { op, at, .. } | S3Error::CircuitOpen { op, at } => (*op, at.clone()),
        };
        Error::Backend {
            op,
            at,
            source: Box::new(e),
        }
    }
}

/// Logs an S3 failure that the caller survives (the read tier or upstream
/// answers instead).
fn degraded(e: &S3Error, what: &str) {
    match e {
        S3Error::CircuitOpen { .. } => {
            tracing::debug!(error = %crate::error_chain(e), "{what}")
        }
        S3Error::Call { .. } => tracing::warn!(error = %crate::error_chain(e), "{what}"),
    }
}

/// Blobs in the bucket, with a local read tier. Cheap to clone.
#[derive(Debug, Clone)]
pub struct S3Blobs(Arc<S3Inner>);

#[derive(Debug)]
struct S3Inner {
    bucket: Bucket,
    tier: LocalBlobs,
    part_size: u64,
    /// Redirect GETs of stored blobs, with URLs valid this long.
    redirect: Option<Duration>,
    abandoned_upload_age: Duration,
    /// Digests known to be in the bucket, with their sizes (objects are
    /// immutable; a HEAD saved per lookup).
    known: moka::sync::Cache<Digest, u64>,
}

impl S3Blobs {
    /// The bucket's blobs, with `tier` in front.
    pub fn new(bucket: Bucket, tier: LocalBlobs, c: &S3Config) -> Self {
        Self(Arc::new(S3Inner {
            bucket,
            tier,
            part_size: c.part_size,
            redirect: c.redirect.then_some(c.redirect_ttl),
            abandoned_upload_age: c.abandoned_upload_age,
            known: moka::sync::Cache::new(100_000),
        }))
    }

    fn s3_publish(&self, digest: &Digest) -> Box<dyn Publish> {
        Box::new(S3Publish {
            blobs: self.clone(),
            digest: digest.clone(),
            stage: watch::Sender::new(Stage::Writing(0)),
            uploader: None,
        })
    }

    /// The size of `digest` in the bucket (`None`: absent). Errors are S3's.
    async fn remote_size(&self, digest: &Digest) -> Result<Option<u64>, S3Error> {
        if let Some(n) = self.0.known.get(digest) {
            return Ok(Some(n));
        }
        let meta = self.0.bucket.head(&Bucket::blob_key(digest)).await?;
        if let Some(m) = &meta {
            self.0.known.insert(digest.clone(), m.size);
        }
        Ok(meta.map(|m| m.size))
    }

    /// Aborts multipart uploads whose writer stopped renewing them (a
    /// process killed mid-fill). Returns how many were aborted.
    pub async fn sweep_uploads(&self) -> Result<usize, Error> {
        let b = &self.0.bucket;
        let now = SystemTime::now();
        let mut aborted = 0;
        for (key, _) in b.list("uploads/").await? {
            let Some(bytes) = b.get(&key).await? else {
                continue;
            };
            let Ok(rec) = serde_json::from_slice::<UploadRecord>(&bytes) else {
                tracing::warn!(key, "removing an unreadable upload record");
                b.delete(&key).await?;
                continue;
            };
            let renewed = std::time::UNIX_EPOCH + Duration::from_millis(rec.renewed_ms);
            if now.duration_since(renewed).unwrap_or_default() < self.0.abandoned_upload_age {
                continue;
            }
            let path = b.path(&rec.key);
            let r = b
                .call(
                    "AbortMultipartUpload",
                    &path,
                    b.0.calls.abort_multipart(&path, &rec.upload_id),
                )
                .await;
            match r {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
            b.delete(&key).await?;
            tracing::info!(key = rec.key, "aborted an abandoned multipart upload");
            aborted += 1;
        }
        Ok(aborted)
    }

    /// Sweeps abandoned uploads now and then, until the task is aborted.
    pub fn spawn_sweeper(&self) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        let every = (self.0.abandoned_upload_age / 2)
            .clamp(Duration::from_secs(1), Duration::from_secs(600));
        tokio::spawn(async move {
            loop {
                match me.sweep_uploads().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(aborted = n, "swept abandoned S3 uploads"),
                    Err(e) => {
                        tracing::warn!(error = %crate::error_chain(&e), "cannot sweep S3 uploads")
                    }
                }
                tokio::time::sleep(every).await;
            }
        })
    }

    async fn verify_bucket(&self) -> Result<VerifyReport, Error> {
        let b = &self.0.bucket;
        let mut report = VerifyReport::default();
        for (key, size) in b.list("blobs/").await? {
            let name = key.trim_start_matches("blobs/").replacen('/', ":", 1);
            let good = match name.parse::<Digest>() {
                Ok(d) => {
                    let mut h = Digester::new(d.algorithm());
                    let mut s = b.stream(&key, 0..size);
                    let mut n = 0u64;
                    let mut failed = None;
                    while let Some(chunk) = s.next().await {
                        match chunk {
                            Ok(c) => {
                                n += c.len() as u64;
                                h.update(&c);
                            }
                            Err(e) => {
                                failed = Some(e);
                                break;
                            }
                        }
                    }
                    if let Some(e) = failed {
                        return Err(Error::Backend {
                            op: "verify",
                            at: key,
                            source: Box::new(e),
                        });
                    }
                    (n == size && h.finish() == d).then_some((d, n))
                }
                Err(_) => None,
            };
            match good {
                Some((_, n)) => {
                    report.ok += 1;
                    report.bytes += n;
                }
                None => report.quarantined.push(self.quarantine(&key).await?),
            }
        }
        Ok(report)
    }

    /// Moves an object that fails its digest out of `blobs/`.
    async fn quarantine(&self, key: &str) -> Result<String, Error> {
        let b = &self.0.bucket;
        let ns = SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let name = key.rsplit('/').next().unwrap_or(key);
        let dest = format!("quarantine/{name}.{ns}");
        let (from, to) = (b.path(key), b.path(&dest));
        b.call("COPY", &from, b.0.calls.copy(&from, &to)).await?;
        b.delete(key).await?;
        if let Ok(d) = key
            .trim_start_matches("blobs/")
            .replacen('/', ":", 1)
            .parse::<Digest>()
        {
            self.0.known.invalidate(&d);
        }
        tracing::warn!(
            key,
            moved_to = dest,
            "S3 object fails its digest; quarantined"
        );
        Ok(format!("{}{dest}", b.describe()))
    }
}

impl Backend for S3Blobs {
    fn describe(&self) -> String {
        format!(
            "{} (read tier {})",
            self.0.bucket.describe(),
            self.0.tier.root().display()
        )
    }

    fn stat<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Result<Option<u64>, Error>> {
        Box::pin(async move {
            if let Some(n) = self.0.tier.stat(digest).await? {
                return Ok(Some(n));
            }
            match self.remote_size(digest).await {
                Ok(n) => Ok(n),
                Err(e) => {
                    degraded(&e, "S3 unavailable; answering from the read tier only");
                    Ok(None)
                }
            }
        })
    }

    fn open<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Result<Option<BlobReader>, Error>> {
        Box::pin(async move {
            if let Some(r) = self.0.tier.open_blob(digest).await? {
                return Ok(Some(r));
            }
            match self.remote_size(digest).await {
                Ok(Some(len)) => {
                    let blob = Arc::new(S3Object {
                        bucket: self.0.bucket.clone(),
                        key: Bucket::blob_key(digest),
                    });
                    Ok(Some(BlobReader::remote(blob, len)))
                }
                Ok(None) => Ok(None),
                Err(e) => {
                    degraded(&e, "S3 unavailable; answering from the read tier only");
                    Ok(None)
                }
            }
        })
    }

    fn create<'a>(
        &'a self,
        digest: &'a Digest,
        scope: Scope,
    ) -> BoxFuture<'a, Result<BlobWriter, Error>> {
        Box::pin(async move {
            let publish: Box<dyn Publish> = match scope {
                Scope::ReadTier => self.0.tier.publisher(),
                Scope::Durable => self.s3_publish(digest),
            };
            self.0.tier.writer_with(digest, publish).await
        })
    }

    fn create_from<'a>(
        &'a self,
        digest: &'a Digest,
        from: std::path::PathBuf,
        hashed: Option<crate::oci::Digester>,
    ) -> BoxFuture<'a, Result<BlobWriter, Error>> {
        Box::pin(async move {
            let publish = self.s3_publish(digest);
            self.0.tier.writer_from(digest, from, hashed, publish).await
        })
    }

    fn durable_publish(&self, digest: &Digest) -> Option<super::Durable> {
        Some(super::Durable(self.s3_publish(digest)))
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<super::StoredBlob>, Error>> {
        Box::pin(async move {
            let all = self.0.bucket.list_meta("blobs/").await?;
            Ok(all
                .into_iter()
                .filter_map(|(key, size, modified)| {
                    let name = key.strip_prefix("blobs/")?.replacen('/', ":", 1);
                    Some(super::StoredBlob {
                        digest: name.parse().ok()?,
                        size,
                        modified,
                    })
                })
                .collect())
        })
    }

    fn delete<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            self.0.tier.delete(digest).await?;
            self.0.known.invalidate(digest);
            Ok(self.0.bucket.delete(&Bucket::blob_key(digest)).await?)
        })
    }

    fn verify(&self) -> BoxFuture<'_, Result<VerifyReport, Error>> {
        Box::pin(async move {
            let mut report = self.verify_bucket().await?;
            let tier = self.0.tier.verify().await?;
            report.quarantined.extend(tier.quarantined);
            Ok(report)
        })
    }

    fn presign<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Result<Option<url::Url>, Error>> {
        Box::pin(async move {
            let Some(ttl) = self.0.redirect else {
                return Ok(None);
            };
            match self.remote_size(digest).await {
                Ok(Some(_)) => {}
                Ok(None) => return Ok(None),
                Err(e) => {
                    degraded(
                        &e,
                        "S3 unavailable; serving the blob instead of redirecting",
                    );
                    return Ok(None);
                }
            }
            let b = &self.0.bucket;
            let path = b.path(&Bucket::blob_key(digest));
            // Signing is local: no call, no breaker.
            let url =
                b.0.signer
                    .signed_url(http::Method::GET, &path, ttl)
                    .await
                    .map_err(|source| S3Error::Call {
                        op: "presign",
                        at: path.to_string(),
                        source,
                    })?;
            Ok(Some(url))
        })
    }

    fn spawn_janitor(&self) -> Option<tokio::task::JoinHandle<()>> {
        Some(self.spawn_sweeper())
    }

    fn local(&self) -> Option<&LocalBlobs> {
        Some(&self.0.tier)
    }

    fn s3_calls(&self) -> Option<&Calls> {
        Some(self.0.bucket.calls())
    }
}

/// A blob in the bucket, read by range.
#[derive(Debug)]
struct S3Object {
    bucket: Bucket,
    key: String,
}

impl RemoteBlob for S3Object {
    fn range(&self, start: u64, end: u64) -> BoxStream<'static, std::io::Result<Bytes>> {
        self.bucket.stream(&self.key, start..end)
    }
}

/// A multipart upload in progress, as recorded in `uploads/` for the
/// sweeper.
#[derive(Debug, Serialize, Deserialize)]
struct UploadRecord {
    key: String,
    upload_id: String,
    renewed_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Bytes in the spool so far.
    Writing(u64),
    /// Verified: upload the rest and complete.
    Finished(u64),
    /// Given up: abort.
    Aborted,
}

/// The S3 publish step: uploads parts from the spool as they are written,
/// completes at the commit, and keeps the spool as the read tier's copy.
#[derive(Debug)]
struct S3Publish {
    blobs: S3Blobs,
    digest: Digest,
    stage: watch::Sender<Stage>,
    uploader: Option<tokio::task::JoinHandle<Result<(), S3Error>>>,
}

impl Publish for S3Publish {
    fn start(&mut self, spool: &Spool) {
        let up = Uploader {
            blobs: self.blobs.clone(),
            digest: self.digest.clone(),
            spool: spool.clone(),
            stage: self.stage.subscribe(),
            started: None,
            parts: Vec::new(),
            sent: 0,
            renewed: std::time::Instant::now(),
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            self.uploader = Some(rt.spawn(up.run()));
        }
    }

    fn progress(&mut self, written: u64) {
        self.stage.send_replace(Stage::Writing(written));
    }

    fn publish(
        self: Box<Self>,
        tmp: std::path::PathBuf,
        digest: Digest,
        size: u64,
    ) -> BoxFuture<'static, Result<(), Error>> {
        Box::pin(async move {
            let me = *self;
            me.stage.send_replace(Stage::Finished(size));
            let uploaded = match me.uploader {
                Some(task) => task.await.unwrap_or_else(|e| {
                    Err(S3Error::Call {
                        op: "upload",
                        at: Bucket::blob_key(&digest),
                        source: object_store::Error::JoinError { source: e },
                    })
                }),
                None => Err(S3Error::CircuitOpen {
                    op: "upload (no runtime)",
                    at: Bucket::blob_key(&digest),
                }),
            };
            match &uploaded {
                Ok(()) => {
                    me.blobs.0.known.insert(digest.clone(), size);
                }
                Err(e) => tracing::warn!(%digest, error = %crate::error_chain(e),
                    "cannot upload a verified blob to S3; keeping it in the local read tier only"),
            }
            let tier = me.blobs.0.tier.clone();
            blocking(move || tier.adopt(&tmp, &digest, size)).await
        })
    }

    fn abort(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let me = *self;
            me.stage.send_replace(Stage::Aborted);
            if let Some(task) = me.uploader {
                let _ = task.await;
            }
        })
    }
}

/// The task that uploads one blob's parts from its spool.
struct Uploader {
    blobs: S3Blobs,
    digest: Digest,
    spool: Spool,
    stage: watch::Receiver<Stage>,
    /// The multipart upload, once started: its id and record key.
    started: Option<(String, String)>,
    parts: Vec<PartId>,
    /// Bytes uploaded in parts.
    sent: u64,
    renewed: std::time::Instant,
}

impl Uploader {
    async fn run(mut self) -> Result<(), S3Error> {
        let r = self.drive().await;
        if r.is_err() || *self.stage.borrow() == Stage::Aborted {
            self.abort().await;
        }
        r
    }

    async fn drive(&mut self) -> Result<(), S3Error> {
        let part = self.blobs.0.part_size;
        loop {
            let stage = *self.stage.borrow_and_update();
            match stage {
                Stage::Aborted => return Ok(()),
                Stage::Writing(w) if w - self.sent >= part => {
                    self.send_part(part).await?;
                    continue;
                }
                Stage::Writing(_) => {}
                Stage::Finished(total) => return self.finish(total).await,
            }
            if self.stage.changed().await.is_err() {
                // The writer is gone without a word: abort.
                self.stage = watch::channel(Stage::Aborted).1;
                return Ok(());
            }
        }
    }

    async fn finish(&mut self, total: u64) -> Result<(), S3Error> {
        let b = self.blobs.0.bucket.clone();
        let key = Bucket::blob_key(&self.digest);
        if self.started.is_none() {
            // One part's worth or less: one PUT, unless it is there already
            // (identical bytes under a content address).
            if self.blobs.remote_size(&self.digest).await? == Some(total) {
                return Ok(());
            }
            let bytes = self.read(0, total).await?;
            return b.put(&key, bytes).await;
        }
        while self.sent < total {
            let n = (total - self.sent).min(self.blobs.0.part_size);
            self.send_part(n).await?;
        }
        let Some((id, record)) = self.started.take() else {
            return Ok(());
        };
        let path = b.path(&key);
        let parts = std::mem::take(&mut self.parts);
        b.call(
            "CompleteMultipartUpload",
            &path,
            b.0.calls.complete_multipart(&path, &id, parts),
        )
        .await?;
        if let Err(e) = b.delete(&record).await {
            degraded(
                &e,
                "cannot remove a finished upload's record; the sweeper will",
            );
        }
        Ok(())
    }

    /// Reads `len` bytes of the spool at `pos`.
    async fn read(&self, pos: u64, len: u64) -> Result<Bytes, S3Error> {
        let mut out = BytesMut::with_capacity(len as usize);
        while (out.len() as u64) < len {
            let at = pos + out.len() as u64;
            let want = (len - out.len() as u64).min(1 << 20) as usize;
            let b = self
                .spool
                .read_at(at, want)
                .await
                .map_err(|e| S3Error::Call {
                    op: "read spool",
                    at: Bucket::blob_key(&self.digest),
                    source: object_store::Error::Generic {
                        store: "spool",
                        source: Box::new(e),
                    },
                })?;
            if b.is_empty() {
                break;
            }
            out.extend_from_slice(&b);
        }
        Ok(out.freeze())
    }

    async fn send_part(&mut self, len: u64) -> Result<(), S3Error> {
        let b = self.blobs.0.bucket.clone();
        let path = b.path(&Bucket::blob_key(&self.digest));
        if self.started.is_none() {
            let id = b
                .call(
                    "CreateMultipartUpload",
                    &path,
                    b.0.calls.create_multipart(&path),
                )
                .await?;
            let record = format!(
                "uploads/{}.{}.{}",
                self.digest.hex(),
                std::process::id(),
                UPLOADS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            );
            self.started = Some((id, record));
            self.renew().await?;
        } else if self.renewed.elapsed() > self.blobs.0.abandoned_upload_age / 4 {
            self.renew().await?;
        }
        let bytes = self.read(self.sent, len).await?;
        let idx = self.parts.len();
        let Some((id, _)) = &self.started else {
            return Ok(());
        };
        let part = b
            .call(
                "UploadPart",
                &path,
                b.0.calls.put_part(&path, id, idx, PutPayload::from(bytes)),
            )
            .await?;
        self.parts.push(part);
        self.sent += len;
        Ok(())
    }

    /// (Re)writes the upload's record, so the sweeper leaves it alone.
    async fn renew(&mut self) -> Result<(), S3Error> {
        let Some((id, record)) = &self.started else {
            return Ok(());
        };
        let rec = UploadRecord {
            key: Bucket::blob_key(&self.digest),
            upload_id: id.clone(),
            renewed_ms: crate::tag::epoch_ms(SystemTime::now()),
        };
        let bytes = serde_json::to_vec(&rec).unwrap_or_default();
        self.blobs.0.bucket.put(record, Bytes::from(bytes)).await?;
        self.renewed = std::time::Instant::now();
        Ok(())
    }

    async fn abort(&mut self) {
        let Some((id, record)) = self.started.take() else {
            return;
        };
        let b = self.blobs.0.bucket.clone();
        let path = b.path(&Bucket::blob_key(&self.digest));
        let aborted = b
            .call(
                "AbortMultipartUpload",
                &path,
                b.0.calls.abort_multipart(&path, &id),
            )
            .await;
        match aborted {
            Ok(()) => {
                if let Err(e) = b.delete(&record).await {
                    degraded(
                        &e,
                        "cannot remove an aborted upload's record; the sweeper will",
                    );
                }
            }
            Err(e) => degraded(&e, "cannot abort a multipart upload; the sweeper will"),
        }
    }
}

/// Numbers this process's upload records.
static UPLOADS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Records as small objects in the bucket.
#[derive(Debug, Clone)]
pub struct S3Records {
    bucket: Bucket,
}

impl S3Records {
    /// Records in `bucket` (under its prefix).
    pub fn new(bucket: Bucket) -> Self {
        Self { bucket }
    }
}

impl Records for S3Records {
    fn get<'a>(&'a self, key: &'a RecordKey) -> BoxFuture<'a, Result<Option<Bytes>, Error>> {
        Box::pin(async move {
            match self.bucket.get(key.as_str()).await {
                Ok(v) => Ok(v),
                Err(e) => {
                    // A lookup that fails is answered as a miss: upstream
                    // (or the memory cache) answers instead.
                    degraded(&e, "S3 unavailable; record treated as absent");
                    Ok(None)
                }
            }
        })
    }

    fn put<'a>(&'a self, key: &'a RecordKey, value: Bytes) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move { Ok(self.bucket.put(key.as_str(), value).await?) })
    }

    fn delete<'a>(&'a self, key: &'a RecordKey) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move { Ok(self.bucket.delete(key.as_str()).await?) })
    }

    fn get_versioned<'a>(
        &'a self,
        key: &'a RecordKey,
    ) -> BoxFuture<'a, Result<Option<super::records::Versioned>, Error>> {
        Box::pin(async move {
            let got = self.bucket.get_versioned(key.as_str()).await?;
            Ok(got.map(|(v, b)| (Some(v), b)))
        })
    }

    fn put_if<'a>(
        &'a self,
        key: &'a RecordKey,
        value: Bytes,
        version: Option<&'a str>,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move {
            let mode = match version {
                None => PutMode::Create,
                Some(v) => PutMode::Update(UpdateVersion {
                    e_tag: Some(v.to_owned()),
                    version: None,
                }),
            };
            Ok(self
                .bucket
                .put_if(key.as_str(), value, mode)
                .await?
                .is_some())
        })
    }

    fn list<'a>(&'a self, prefix: &'a RecordKey) -> BoxFuture<'a, Result<Vec<RecordKey>, Error>> {
        Box::pin(async move {
            let mut keys: Vec<RecordKey> = self
                .bucket
                .list(&format!("{}/", prefix.as_str()))
                .await?
                .into_iter()
                .filter_map(|(k, _)| RecordKey::from_parts([k.as_str()]))
                .collect();
            keys.sort();
            Ok(keys)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> S3Config {
        let text = format!(
            "[storage.s3]\nbucket = \"b-1\"\nendpoint = \"http://127.0.0.1:1\"\naccess_key_id = \"k\"\n\
             secret_access_key = \"s\"\nallow_http = true\n{extra}\n[[listener]]\naddr = \"127.0.0.1:0\"\n\
             [[upstream]]\nname = \"docker.io\"\nurl = \"https://registry-1.docker.io\"\ndefault = true\n"
        );
        crate::config::Config::from_toml(&text, std::path::Path::new("/"))
            .unwrap()
            .s3
            .unwrap()
    }

    async fn signed(c: &S3Config) -> url::Url {
        let b = Bucket::build(c).unwrap();
        let path = b.path(&Bucket::blob_key(&Digest::sha256_of(b"x")));
        b.0.signer
            .signed_url(http::Method::GET, &path, Duration::from_secs(60))
            .await
            .unwrap()
    }

    #[test]
    fn uploads_sign_their_payload_unless_tls_or_loopback_guards_it() {
        let ok = |u: &str| unsigned_payload_is_safe(Some(&url::Url::parse(u).unwrap()));
        assert!(unsigned_payload_is_safe(None));
        assert!(ok("https://s3.example.com"));
        assert!(
            ok("http://127.0.0.1:8333") && ok("http://[::1]:8333") && ok("http://localhost:9000")
        );
        assert!(!ok("http://10.0.0.5:9000"));
        assert!(!ok("http://minio.internal:9000"));
    }

    // SeaweedFS does not check the signed Host (AWS and MinIO do), so the
    // host of a presigned URL is checked here.
    #[tokio::test]
    async fn presigned_urls_name_the_address_clients_reach() {
        let own = signed(&config("")).await;
        assert_eq!(own.host_str(), Some("127.0.0.1"));
        let public = signed(&config("redirect_endpoint = \"https://s3.example.com\"")).await;
        assert_eq!(
            (public.scheme(), public.host_str()),
            ("https", Some("s3.example.com"))
        );
        assert!(public.path().starts_with("/b-1/blobs/sha256/"), "{public}");
        let q = public.query().unwrap();
        assert!(
            q.contains("X-Amz-Expires=60") && q.contains("X-Amz-Signature="),
            "{q}"
        );
    }
}
