//! The body of a fill in a cluster: the blob's bytes from whichever source
//! has them, resumed at the byte where the last source stopped.
//!
//! - While another replica holds the blob's lease, bytes stream from its
//!   internal endpoint as they arrive there.
//! - While this replica holds it, bytes come from upstream, and the lease
//!   is renewed in the background; a renewal that finds the lease taken
//!   over fails the body, so a replica that froze past its lease never
//!   completes the blob.
//! - When the holder breaks off or cannot be reached, the lease decides:
//!   renewed meanwhile (the holder lives), follow it again; gone, claim it;
//!   unrenewed for `lease_ttl`, take it over and resume upstream with a
//!   ranged GET. A holder that stays unreachable for `lease_ttl` while it
//!   keeps renewing (a network partition) is given up on: this replica
//!   fetches the rest upstream alone.
//!
//! Whatever the sources, the fill hashes the concatenation and verifies it
//! before a reader gets the final byte, so a switch can never hand out a
//! wrong blob.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use tokio::time::Instant;

use super::{Error, Grant, Upstream};
use crate::cluster::{Claim, Cluster, Held, Holder, PeerError};
use crate::oci::{Digest, RepoName};
use crate::store::{Scope, Store};

/// What the fill's writer needs to know of the lease: whether this replica
/// holds it (then the blob must become durable: uploaded to the bucket),
/// and the lease itself, released once the blob is in the bucket.
#[derive(Debug, Default)]
pub(crate) struct Role {
    held: Mutex<Option<Held>>,
    /// Set when the lease was won after the writer had started for the
    /// read tier only; the writer makes its write durable.
    promote: AtomicBool,
}

impl Role {
    fn hold(&self, held: Held, promote: bool) {
        *self.lock() = Some(held);
        if promote {
            self.promote.store(true, Ordering::SeqCst);
        }
    }

    fn held(&self) -> Option<Held> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Held>> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether the write must become durable now (asked between batches).
    pub(crate) fn take_promotion(&self) -> bool {
        self.promote.swap(false, Ordering::SeqCst)
    }

    /// Ends the lease, if this replica holds it: after the blob is in the
    /// bucket, or after the fill failed.
    pub(crate) async fn release(&self) {
        let held = self.lock().take();
        if let Some(h) = held {
            h.release().await;
        }
    }
}

/// Where the current bytes come from.
enum Source {
    /// Not connected.
    None,
    /// The lease holder's internal endpoint.
    Peer(BoxStream<'static, Result<Bytes, crate::cluster::PeerError>>),
    /// Upstream (this replica holds the lease, or fetches alone), or the
    /// bucket (another replica finished the blob meanwhile).
    Upstream(BoxStream<'static, Result<Bytes, Error>>),
    /// The store's copy.
    Store(BoxStream<'static, Result<Bytes, Error>>),
}

/// A fill's body in a cluster (see the module docs).
pub(crate) struct Follow {
    cluster: Cluster,
    up: Arc<Upstream>,
    repo: RepoName,
    digest: Digest,
    store: Store,
    /// The peer request's path and query.
    path: String,
    role: Arc<Role>,
    size: Option<u64>,
    /// Bytes handed on so far.
    pos: u64,
    source: Source,
    /// The holder being followed.
    holder: Option<Holder>,
    /// Since when the followed holder, renewing, could not be reached.
    unreachable_since: Option<Instant>,
    /// Fetching upstream without a lease (the bucket cannot coordinate, or
    /// the holder is cut off from this replica).
    alone: bool,
    done: bool,
}

/// How often a follower looks at the lease while its holder is silent.
fn poll_every(ttl: Duration) -> Duration {
    (ttl / 6).clamp(Duration::from_millis(100), Duration::from_secs(1))
}

impl Follow {
    pub(crate) fn new(
        cluster: Cluster,
        up: Arc<Upstream>,
        repo: RepoName,
        digest: Digest,
        store: Store,
        grant: Grant,
        role: Arc<Role>,
    ) -> Self {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        q.append_pair("upstream", up.config.id.as_str())
            .append_pair("repo", repo.as_str())
            .append_pair("private_repo", if grant.private_repo { "1" } else { "0" })
            .append_pair("reads_private", if grant.reads_private { "1" } else { "0" });
        let path = format!("{}{digest}?{}", crate::cluster::BLOB_PATH, q.finish());
        Self {
            cluster,
            up,
            repo,
            digest,
            store,
            path,
            role,
            size: None,
            pos: 0,
            source: Source::None,
            holder: None,
            unreachable_since: None,
            alone: false,
            done: false,
        }
    }

    /// Finds the first source: the blob's size (when known), its bytes, and
    /// the scope its write starts with.
    pub(crate) async fn open(
        mut self,
    ) -> Result<(Option<u64>, BoxStream<'static, Result<Bytes, Error>>, Scope), Error> {
        self.connect().await?;
        // A holder's write is durable from the start; a follower's is for
        // its read tier, unless it takes the fill over later.
        let scope = if self.role.held().is_some() || self.alone {
            // Durable from the first byte: nothing to promote.
            self.role.take_promotion();
            Scope::Durable
        } else {
            Scope::ReadTier
        };
        let size = self.size;
        let body = futures_util::stream::unfold(self, |mut f| async move {
            let item = f.next_chunk().await?;
            Some((item, f))
        })
        // The fill polls again after the end (it gathers what is ready).
        .fuse()
        .boxed();
        Ok((size, body, scope))
    }

    /// Connects to a source for the bytes from `pos` on.
    async fn connect(&mut self) -> Result<(), Error> {
        loop {
            if !matches!(self.source, Source::None) {
                return Ok(());
            }
            if self.alone || self.role.held().is_some() {
                return self.open_upstream().await;
            }
            let holder = match self.holder.clone() {
                Some(h) => h,
                None => match self.cluster.claim(&self.digest).await {
                    Claim::Won(held) => {
                        if self.won(held).await? {
                            return Ok(());
                        }
                        continue;
                    }
                    Claim::Taken(h) => {
                        self.holder = Some(h.clone());
                        h
                    }
                    Claim::Alone(e) => {
                        tracing::warn!(digest = %self.digest, error = %crate::error_chain(&e),
                            "cannot coordinate this fill with other replicas; fetching it alone");
                        self.alone = true;
                        continue;
                    }
                },
            };
            // A frozen holder's kernel still accepts the connection: wait for
            // its answer no longer than a lease lives, then ask the lease.
            let ttl = self.cluster.ttl();
            let fetched =
                tokio::time::timeout(ttl, self.cluster.fetch(&holder, &self.path, self.pos))
                    .await
                    .unwrap_or_else(|_| Err(PeerError::Timeout(ttl)));
            match fetched {
                Ok(Some(body)) => {
                    self.check_size(body.size)?;
                    tracing::info!(digest = %self.digest, holder = %holder.addr, from = self.pos,
                        "streaming a blob from the replica that fetches it");
                    self.source = Source::Peer(body.body);
                    self.unreachable_since = None;
                    return Ok(());
                }
                Ok(None) => {
                    tracing::debug!(digest = %self.digest, holder = %holder.addr,
                        "the lease holder has no such fill");
                    self.wait_for_lease(holder, false).await?;
                }
                Err(e) => {
                    tracing::debug!(digest = %self.digest, holder = %holder.addr,
                        error = %crate::error_chain(&e), "cannot stream from the lease holder");
                    self.wait_for_lease(holder, true).await?;
                }
            }
        }
    }

    /// This replica won the lease (at first, or by taking it over). Returns
    /// whether the bucket has the blob after all (another replica finished
    /// it just before): then the fill copies it from there, not upstream.
    async fn won(&mut self, held: Held) -> Result<bool, Error> {
        if self.pos == 0
            && let Some(reader) = self.store.open(&self.digest).await?
        {
            held.release().await;
            self.check_size(Some(reader.len()))?;
            let at = self.digest.to_string();
            self.source = Source::Store(
                reader
                    .into_stream(0, None)
                    .map(move |r| {
                        r.map_err(|e| {
                            Error::from(crate::store::Error::Backend {
                                op: "read stored blob",
                                at: at.clone(),
                                source: Box::new(e),
                            })
                        })
                    })
                    .boxed(),
            );
            return Ok(true);
        }
        let promote = self.pos > 0 || self.holder.is_some();
        self.holder = None;
        self.role.hold(held, promote);
        Ok(false)
    }

    /// The followed holder sent nothing usable: decides, from the lease,
    /// whom to follow next (or to fetch upstream).
    async fn wait_for_lease(&mut self, seen: Holder, unreachable: bool) -> Result<(), Error> {
        let ttl = self.cluster.ttl();
        match self.cluster.observe(&self.digest).await {
            Ok(None) => {
                // Released (done or failed): claim it, or find the blob in
                // the bucket. Looked at twice, a moment apart: an S3 server
                // may answer 404 for an object while it is being replaced
                // (SeaweedFS does, during a renewal), and a create in that
                // moment would make a second holder.
                tokio::time::sleep(poll_every(ttl)).await;
                match self.cluster.observe(&self.digest).await {
                    Ok(None) => self.holder = None,
                    Ok(Some(now)) => self.holder = Some(now),
                    Err(e) => {
                        tracing::warn!(digest = %self.digest, error = %crate::error_chain(&e),
                            "cannot read a fill's lease; fetching alone");
                        self.alone = true;
                    }
                }
            }
            Ok(Some(now)) if !now.same_version(&seen) => {
                if now.id == seen.id && unreachable {
                    let since = *self.unreachable_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= ttl {
                        tracing::warn!(digest = %self.digest, holder = %seen.addr,
                            "the replica holding this fill renews its lease but cannot be reached; fetching alone");
                        self.alone = true;
                        return Ok(());
                    }
                } else {
                    self.unreachable_since = None;
                }
                self.holder = Some(now);
                tokio::time::sleep(poll_every(ttl)).await;
            }
            Ok(Some(_)) if seen.is_stale(ttl) => {
                match self.cluster.take_over(&self.digest, &seen).await {
                    Claim::Won(held) => {
                        tracing::info!(digest = %self.digest, holder = %seen.addr, from = self.pos,
                        "took over a fill whose replica stopped renewing its lease");
                        self.won(held).await?;
                    }
                    Claim::Taken(h) => self.holder = Some(h),
                    Claim::Alone(e) => {
                        tracing::warn!(digest = %self.digest, error = %crate::error_chain(&e),
                        "cannot take over a stale fill's lease; fetching alone");
                        self.alone = true;
                    }
                }
            }
            Ok(Some(_)) => {
                // Same version, not stale yet: wait, keeping when it was
                // first seen.
                self.holder = Some(seen.clone());
                tokio::time::sleep(seen.stale_in(ttl).min(poll_every(ttl))).await;
            }
            Err(e) => {
                tracing::warn!(digest = %self.digest, error = %crate::error_chain(&e),
                    "cannot read a fill's lease; fetching alone");
                self.alone = true;
            }
        }
        Ok(())
    }

    async fn open_upstream(&mut self) -> Result<(), Error> {
        let resp = self
            .up
            .client
            .get_blob_from(&self.repo, &self.digest, self.pos)
            .await
            .map_err(|e| self.up.fail(e))?;
        self.check_size(resp.size)?;
        let up = self.up.clone();
        self.source = Source::Upstream(resp.body.map(move |r| r.map_err(|e| up.fail(e))).boxed());
        Ok(())
    }

    /// A new source's size must agree with what the first one said.
    fn check_size(&mut self, size: Option<u64>) -> Result<(), Error> {
        match (self.size, size) {
            (Some(a), Some(b)) if a != b => Err(self.up.wrong_length(a, b)),
            (None, s) => {
                self.size = s;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The next bytes, from whichever source has them.
    async fn next_chunk(&mut self) -> Option<Result<Bytes, Error>> {
        if self.done {
            return None;
        }
        let r = self.next_inner().await;
        if !matches!(r, Some(Ok(_))) {
            self.done = true;
        }
        r
    }

    async fn next_inner(&mut self) -> Option<Result<Bytes, Error>> {
        loop {
            if let Some(h) = self.role.held()
                && h.lost()
            {
                return Some(Err(Error::LeaseLost));
            }
            match &mut self.source {
                Source::None => {
                    if let Err(e) = self.connect().await {
                        return Some(Err(e));
                    }
                }
                Source::Upstream(s) | Source::Store(s) => match s.next().await {
                    Some(Ok(b)) => {
                        self.pos += b.len() as u64;
                        return Some(Ok(b));
                    }
                    Some(Err(e)) => return Some(Err(e)),
                    None => return self.end().await,
                },
                Source::Peer(s) => {
                    let stall = poll_every(self.cluster.ttl());
                    match tokio::time::timeout(stall, s.next()).await {
                        Ok(Some(Ok(b))) => {
                            self.pos += b.len() as u64;
                            return Some(Ok(b));
                        }
                        Ok(None) if self.size.is_none_or(|n| n == self.pos) => {
                            // The holder ends a body only after verifying it.
                            return self.end().await;
                        }
                        Ok(other) => {
                            if let Some(Err(e)) = other {
                                tracing::debug!(digest = %self.digest, error = %crate::error_chain(&e),
                                    "the lease holder's stream broke off");
                            }
                            let Some(h) = self.holder.clone() else {
                                self.source = Source::None;
                                continue;
                            };
                            self.source = Source::None;
                            if let Err(e) = self.wait_for_lease(h, true).await {
                                return Some(Err(e));
                            }
                        }
                        Err(_) => {
                            // Silence: fine while the holder renews (its
                            // upstream may be slow); not once it stopped.
                            let Some(h) = self.holder.clone() else {
                                continue;
                            };
                            match self.cluster.observe(&self.digest).await {
                                Ok(Some(now)) if now.id != h.id => {
                                    // Another replica took the fill over:
                                    // follow it, from the bytes here.
                                    self.holder = Some(now);
                                    self.source = Source::None;
                                }
                                Ok(Some(now)) if !now.same_version(&h) => {
                                    self.holder = Some(now);
                                }
                                Ok(Some(_)) if !h.is_stale(self.cluster.ttl()) => {}
                                _ => {
                                    tracing::info!(digest = %self.digest, holder = %h.addr,
                                        "the lease holder went silent and stopped renewing");
                                    self.source = Source::None;
                                    if let Err(e) = self.wait_for_lease(h, true).await {
                                        return Some(Err(e));
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// The source ended. A holder confirms that the lease is still its own
    /// before the fill may verify and complete the blob.
    async fn end(&mut self) -> Option<Result<Bytes, Error>> {
        if let Some(h) = self.role.held()
            && !h.confirm().await
        {
            return Some(Err(Error::LeaseLost));
        }
        None
    }
}
