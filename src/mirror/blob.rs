//! Blobs: stored hits, and coalesced, verified, streaming misses.
//!
//! A miss starts one background download (see `inflight`) that hashes and
//! writes the blob to a temporary file, then checks size and digest and
//! commits it. Every client of that blob — the one that caused the download
//! and any that arrive while it runs — streams it as it grows: the newest
//! chunks straight from memory as upstream delivers them, older bytes from
//! the temporary file.
//!
//! A client must never receive a complete body that fails its digest: until
//! the download is verified, readers hold back the blob's final byte. If
//! verification fails, their streams end with an error, which aborts the
//! HTTP response (the connection is closed short of `Content-Length`).

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, StreamExt, TryStreamExt};

use super::follow::{Follow, Role};
use super::inflight::{Fill, FillWriter, Joined, Stored};
use super::{CacheStatus, Error, Fetch, Grant, Mirror, Upstream};
use crate::cluster::Cluster;
use crate::config::UpstreamId;
use crate::oci::{Digest, Digester, RepoName};
use crate::store::{self, BlobReader, InUseGuard, Scope, Store};

/// Largest batch of upstream chunks written with one blocking call.
const WRITE_BATCH: usize = 1024 * 1024;
/// The same while the fills' memory budget is spent: the chunks of a batch
/// (and of the one being written) hold upstream read buffers until they are
/// on disk.
const WRITE_BATCH_SPENT: usize = 32 * 1024;

/// The answer to a blob HEAD.
#[derive(Debug, Clone, Copy)]
pub struct BlobHead {
    /// The blob's size, when known.
    pub size: Option<u64>,
    /// How it was answered.
    pub status: CacheStatus,
}

/// A blob ready to stream.
#[derive(Debug)]
pub struct BlobBody {
    /// The blob's size, when known (upstream may omit Content-Length).
    pub size: Option<u64>,
    /// How it was obtained.
    pub status: CacheStatus,
    source: Source,
}

#[derive(Debug)]
enum Source {
    /// The client fetches it from the store itself (a presigned URL).
    Redirect(url::Url),
    Stored(BlobReader),
    /// A download, and a hold that keeps the blob from eviction while this
    /// client still reads it (it is committed meanwhile).
    Fill(Arc<Fill>, Option<InUseGuard>),
}

impl BlobBody {
    /// Where the client should fetch the blob instead (a presigned URL of
    /// the store), when the store redirects.
    pub fn redirect(&self) -> Option<&url::Url> {
        match &self.source {
            Source::Redirect(u) => Some(u),
            _ => None,
        }
    }

    /// Streams bytes `start..end` (`end` exclusive; `None` = to the end).
    pub fn into_stream(
        self,
        start: u64,
        end: Option<u64>,
    ) -> BoxStream<'static, io::Result<Bytes>> {
        match self.source {
            Source::Redirect(_) => futures_util::stream::once(async {
                Err(io::Error::other("a redirected blob has no body here"))
            })
            .boxed(),
            Source::Stored(reader) => reader.into_stream(start, end),
            Source::Fill(fill, guard) => fill
                .stream(start, end.or(self.size))
                .map(move |r| {
                    // The guard lives as long as the stream.
                    let _ = &guard;
                    r
                })
                .boxed(),
        }
    }
}

impl Mirror {
    /// Answers a blob HEAD without downloading the blob.
    pub async fn head_blob(
        &self,
        id: &UpstreamId,
        repo: &RepoName,
        digest: &Digest,
        grant: Grant,
    ) -> Result<BlobHead, Error> {
        let up = self.upstream(id)?;
        let repo = &self.upstream_repo(id, repo);
        self.guard_private(&up, repo, digest, grant, false).await?;
        if let Some(size) = self.store.stat(digest).await? {
            return Ok(BlobHead {
                size: Some(size),
                status: CacheStatus::Hit,
            });
        }
        if let Some(fill) = self.fills.get(digest)
            && let Ok(size @ Some(_)) = fill.ready().await
        {
            return Ok(BlobHead {
                size,
                status: CacheStatus::Coalesced,
            });
        }
        if grant.fetch == Fetch::CacheOnly {
            return Err(Error::NotCached);
        }
        let head = up
            .client
            .head_blob(repo, digest)
            .await
            .map_err(|e| up.fail(e))?;
        Ok(BlobHead {
            size: head.size,
            status: CacheStatus::Miss,
        })
    }

    /// A blob for another replica of the cluster (its internal endpoint):
    /// the download of it running here, or the stored copy. Never starts a
    /// download: the asking replica follows this one's lease. `repo` is the
    /// upstream's name of the repository, and `grant` the one the asking
    /// replica's client got: the private-content rules apply as they would
    /// to that client, without fetching from upstream.
    pub async fn peer_blob(
        &self,
        id: &UpstreamId,
        repo: &RepoName,
        digest: &Digest,
        grant: Grant,
    ) -> Result<BlobBody, Error> {
        let up = self.upstream(id)?;
        let grant = Grant {
            fetch: Fetch::CacheOnly,
            ..grant
        };
        self.guard_private(&up, repo, digest, grant, false).await?;
        if let Some(fill) = self.fills.get(digest) {
            let guard = self.store.hold(digest);
            let size = fill.ready().await?;
            return Ok(BlobBody {
                size,
                status: CacheStatus::Coalesced,
                source: Source::Fill(fill, guard),
            });
        }
        match self.store.open(digest).await? {
            Some(reader) => Ok(BlobBody {
                size: Some(reader.len()),
                status: CacheStatus::Hit,
                source: Source::Stored(reader),
            }),
            None => Err(Error::NotCached),
        }
    }

    /// Opens a blob: from the store, or by starting or joining its download.
    /// Returns once the bytes can start flowing (or upstream refused).
    pub async fn blob(
        &self,
        id: &UpstreamId,
        repo: &RepoName,
        digest: &Digest,
        grant: Grant,
    ) -> Result<BlobBody, Error> {
        let up = self.upstream(id)?;
        let repo = &self.upstream_repo(id, repo);
        self.guard_private(&up, repo, digest, grant, false).await?;
        // The store may hand stored blobs out itself (checked after the
        // access rules, which `guard_private` and the registry applied).
        if let Some(url) = self.store.presign(digest).await? {
            return Ok(BlobBody {
                size: None,
                status: CacheStatus::Redirect,
                source: Source::Redirect(url),
            });
        }
        // Two rounds at most: a fill can commit between our store check and
        // the table lookup, in which case the store has the blob.
        for _ in 0..2 {
            let epoch = self.fills.epoch();
            let stored = self.store.open(digest).await?;
            let from_store = match stored {
                Some(reader) if reader.is_local() => {
                    return Ok(BlobBody {
                        size: Some(reader.len()),
                        status: CacheStatus::Hit,
                        source: Source::Stored(reader),
                    });
                }
                // In the remote backend only: one coalesced copy into the
                // read tier, which clients stream as it arrives.
                remote => remote,
            };
            let stored_remotely = from_store.is_some();
            let (fill, status) = if grant.fetch == Fetch::CacheOnly && !stored_remotely {
                // Joining a download someone else started is not a fetch.
                let Some(fill) = self.fills.get(digest) else {
                    return Err(Error::NotCached);
                };
                (fill, CacheStatus::Coalesced)
            } else {
                match self.fills.join(digest, epoch) {
                    None => continue,
                    Some(Joined::Follower(f)) => (f, CacheStatus::Coalesced),
                    Some(Joined::Leader(writer)) => {
                        writer.set_origin(up.config.id.to_string(), repo.to_string());
                        let f = writer.fill().clone();
                        let task = FillTask {
                            writer,
                            up: up.clone(),
                            repo: repo.clone(),
                            digest: digest.clone(),
                            store: self.store.clone(),
                            copying: stored_remotely,
                            from_store,
                            cluster: self.cluster.clone().map(|c| (c, grant)),
                            role: Arc::default(),
                        };
                        tokio::spawn(task.run());
                        let status = if stored_remotely {
                            CacheStatus::Hit
                        } else {
                            CacheStatus::Miss
                        };
                        (f, status)
                    }
                }
            };
            let guard = self.store.hold(digest);
            let size = fill.ready().await?;
            return Ok(BlobBody {
                size,
                status,
                source: Source::Fill(fill, guard),
            });
        }
        Err(Error::Interrupted)
    }
}

/// The background download of one blob: the writer of its fill.
struct FillTask {
    writer: FillWriter,
    up: Arc<Upstream>,
    repo: RepoName,
    digest: Digest,
    store: Store,
    /// Copy this blob from the store's remote backend into its read tier
    /// (instead of downloading it upstream).
    from_store: Option<BlobReader>,
    /// Whether the source is the store (set from `from_store` at the start).
    copying: bool,
    /// The replicas this one shares the bucket with, and the grant of the
    /// request that started the fill (sent along to a lease holder).
    cluster: Option<(Cluster, Grant)>,
    /// Whether this replica holds the fill's lease.
    role: Arc<Role>,
}

impl FillTask {
    async fn run(mut self) {
        // If this task panics or is dropped mid-way, the writer's drop fails
        // the fill, so readers never hang.
        let result = self.download().await;
        // The blob is in the bucket (or the fill failed): other replicas
        // may go on without this one.
        self.role.release().await;
        match &result {
            Ok(Stored::Cached(size)) => {
                tracing::debug!(upstream = %self.up.config.id, digest = %self.digest, bytes = size, "blob cached");
            }
            Ok(Stored::PassedThrough(size)) => {
                tracing::warn!(upstream = %self.up.config.id, digest = %self.digest, bytes = size,
                    "blob verified and streamed through, but not cached (store failed)");
            }
            Err(e) => {
                // A request that has not started its response gets this
                // error as its answer and logs it there. Responses already
                // under way just break off: this is the one place to say why.
                if self.writer.streamed() {
                    tracing::warn!(upstream = %self.up.config.id, repo = %self.repo, digest = %self.digest,
                        error = %crate::error_chain(e), "blob download failed midway; nothing stored");
                } else {
                    tracing::debug!(upstream = %self.up.config.id, repo = %self.repo, digest = %self.digest,
                        error = %crate::error_chain(e), "blob download failed; nothing stored");
                }
            }
        }
        self.writer.finish(result);
    }

    /// Streams the blob from its source into the store. When the store
    /// fails (disk full), the download goes on in memory (pass-through) so
    /// that clients still get the blob, verified, but nothing is cached and
    /// nothing partial is left.
    ///
    /// Received chunks go to the fill's window first, where readers get them
    /// at once; one batch at a time is hashed and written on the blocking
    /// pool while the next one arrives.
    async fn download(&mut self) -> Result<Stored, Error> {
        let (size, mut body, scope) = match self.from_store.take() {
            None if self.cluster.is_some() => {
                let Some((cluster, grant)) = self.cluster.clone() else {
                    return Err(Error::Interrupted);
                };
                Follow::new(
                    cluster,
                    self.up.clone(),
                    self.repo.clone(),
                    self.digest.clone(),
                    self.store.clone(),
                    grant,
                    self.role.clone(),
                )
                .open()
                .await?
            }
            None => {
                let resp = self
                    .up
                    .client
                    .get_blob(&self.repo, &self.digest)
                    .await
                    .map_err(|e| self.up.fail(e))?;
                let up = self.up.clone();
                let body = resp.body.map_err(move |e| up.fail(e)).boxed();
                (resp.size, body, Scope::Durable)
            }
            // A copy of the store's remote blob for its read tier: verified
            // on the way like any download.
            Some(reader) => {
                let size = Some(reader.len());
                let at = self.digest.to_string();
                let body = reader
                    .into_stream(0, None)
                    .map_err(move |e| {
                        Error::from(store::Error::Backend {
                            op: "read stored blob",
                            at: at.clone(),
                            source: Box::new(e),
                        })
                    })
                    .boxed();
                (size, body, Scope::ReadTier)
            }
        };
        let (mut sink, spool) = match self.store.writer(&self.digest, scope).await {
            Ok(writer) => {
                let spool = writer.spool();
                (Sink::Disk(writer), Some(spool))
            }
            Err(e) => (self.pass_through(&e, 0, None).into(), None),
        };
        self.writer.streaming(size, spool);
        let mut received = 0u64;
        let mut on_disk = 0u64;
        while let Some(first) = body.next().await {
            let batch = match self.gather(first, &mut body, size, received) {
                Ok(b) => b,
                Err(e) => {
                    // Let a write in progress finish and drop its writer, so
                    // the temporary file is gone once this task is. (Not
                    // `settle`: its pass-through would be news of nothing.)
                    match sink {
                        Sink::Writing(write) => {
                            if let Ok(w) = write.await {
                                w.writer.abort().await;
                            }
                        }
                        Sink::Disk(w) => w.abort().await,
                        Sink::Memory(_) => {}
                    }
                    return Err(e);
                }
            };
            let n: usize = batch.iter().map(Bytes::len).sum();
            received += n as u64;
            self.writer.publish(&batch, received);
            sink = match self.settle(sink, &mut on_disk).await? {
                Ready::Disk(mut w) => {
                    if self.role.take_promotion() {
                        // This replica took the fill over: it uploads the
                        // blob, from its first byte.
                        self.store.make_durable(&mut w);
                    }
                    Sink::Writing(tokio::task::spawn_blocking(move || {
                        for (i, c) in batch.iter().enumerate() {
                            if let Err(e) = w.write(c) {
                                return Written {
                                    writer: w,
                                    batch,
                                    failed: Some((i, e)),
                                };
                            }
                        }
                        Written {
                            writer: w,
                            batch,
                            failed: None,
                        }
                    }))
                }
                Ready::Memory(mut h) => {
                    batch.iter().for_each(|c| h.update(c));
                    Sink::Memory(h)
                }
            };
        }
        match self.settle(sink, &mut on_disk).await? {
            Ready::Disk(mut w) => {
                if self.role.take_promotion() {
                    self.store.make_durable(&mut w);
                }
                let n = match w.verify(size) {
                    Ok(n) => n,
                    Err(e) => {
                        // Undo the backend's upload before this task ends,
                        // so that a settled mirror has nothing left over.
                        w.abort().await;
                        return Err(match e {
                            store::Error::DigestMismatch { actual, .. } => {
                                self.corrupt(actual).await
                            }
                            store::Error::SizeMismatch { expected, actual } => {
                                self.wrong_length(expected, actual)
                            }
                            e => e.into(),
                        });
                    }
                };
                // Verified: readers may have the final byte now. The fsync
                // and rename need not hold them up (a crash before the
                // rename leaves no blob, never a bad one); the fill stays
                // joinable until the blob is in the store.
                self.writer.verified(n);
                match w.commit().await {
                    Ok(()) => Ok(Stored::Cached(n)),
                    // Only fsync, rename or the upload's completion failed.
                    // Readers hold the spool open.
                    Err(e) => {
                        tracing::error!(digest = %self.digest, error = %crate::error_chain(&e),
                            "cannot commit a verified blob to the store");
                        Ok(Stored::PassedThrough(n))
                    }
                }
            }
            Ready::Memory(h) => {
                if let Some(s) = size.filter(|s| *s != received) {
                    return Err(self.wrong_length(s, received));
                }
                match h.finish() {
                    d if d == self.digest => Ok(Stored::PassedThrough(received)),
                    d => Err(self.corrupt(d).await),
                }
            }
        }
    }

    /// The source sent bytes that hash to `actual`. A stored copy that does
    /// so is removed, so that the next request fetches the blob upstream.
    async fn corrupt(&self, actual: Digest) -> Error {
        if !self.copying {
            return self.up.corrupt(&self.digest, Some(actual));
        }
        tracing::error!(digest = %self.digest, %actual, "stored blob fails its digest; removing it");
        if let Err(e) = self.store.blobs().delete(&self.digest).await {
            tracing::error!(digest = %self.digest, error = %crate::error_chain(&e),
                "cannot remove a stored blob that fails its digest");
        }
        store::Error::DigestMismatch {
            expected: self.digest.clone(),
            actual,
        }
        .into()
    }

    /// The source announced `announced` bytes and sent `sent`.
    fn wrong_length(&self, announced: u64, sent: u64) -> Error {
        if self.copying {
            store::Error::SizeMismatch {
                expected: announced,
                actual: sent,
            }
            .into()
        } else {
            self.up.wrong_length(announced, sent)
        }
    }

    /// `first` and whatever else upstream has ready now, up to
    /// `WRITE_BATCH` bytes (`WRITE_BATCH_SPENT` while memory is short),
    /// refusing more bytes than upstream announced.
    fn gather(
        &self,
        first: Result<Bytes, Error>,
        body: &mut BoxStream<'static, Result<Bytes, Error>>,
        size: Option<u64>,
        received: u64,
    ) -> Result<Vec<Bytes>, Error> {
        let mut batch = vec![first?];
        let mut n = batch[0].len();
        let limit = if self.writer.memory_spent() {
            WRITE_BATCH_SPENT
        } else {
            WRITE_BATCH
        };
        while n < limit {
            match body.next().now_or_never() {
                Some(Some(Ok(c))) => {
                    n += c.len();
                    batch.push(c);
                }
                Some(Some(Err(e))) => return Err(e),
                _ => break,
            }
        }
        if let Some(s) = size.filter(|s| received + n as u64 > *s) {
            // More bytes than announced: not the blob we want.
            return Err(self.wrong_length(s, received + n as u64));
        }
        Ok(batch)
    }

    /// Waits for the batch being written, if any: the sink is then ready
    /// for the next batch, on disk (the batch is in the file) or, when the
    /// write failed, in memory with every byte received so far hashed.
    async fn settle(&self, sink: Sink, on_disk: &mut u64) -> Result<Ready, Error> {
        let task = match sink {
            Sink::Disk(w) => return Ok(Ready::Disk(w)),
            Sink::Memory(h) => return Ok(Ready::Memory(h)),
            Sink::Writing(task) => task,
        };
        let Written {
            writer,
            batch,
            failed,
        } = task.await.map_err(|_| Error::Interrupted)?;
        match failed {
            None => {
                *on_disk += batch.iter().map(|c| c.len() as u64).sum::<u64>();
                self.writer.on_disk(*on_disk);
                Ok(Ready::Disk(writer))
            }
            Some((i, e)) => {
                // Chunks before `i` are in the file. The writer hashed chunk
                // `i` before its write failed; the rest of the batch is
                // hashed here. The window has all of them.
                *on_disk += batch[..i].iter().map(|c| c.len() as u64).sum::<u64>();
                let mut h = self.pass_through(&e, *on_disk, writer.abandon());
                batch[i + 1..].iter().for_each(|c| h.update(c));
                Ok(Ready::Memory(h))
            }
        }
    }

    /// Switches to pass-through at byte `on_disk` after a store error.
    fn pass_through(&self, e: &store::Error, on_disk: u64, hasher: Option<Digester>) -> Digester {
        tracing::error!(digest = %self.digest, error = %crate::error_chain(e),
            "cannot write blob to the store (disk full?); streaming it through without caching");
        self.writer.pass_through(on_disk);
        // A writer always has its hasher until it finishes; a fresh one
        // here could only make the final check fail, never pass wrongly.
        hasher.unwrap_or_else(|| Digester::new(self.digest.algorithm()))
    }
}

/// Where downloaded bytes go.
enum Sink {
    /// The store's temporary file (hashed as written).
    Disk(store::BlobWriter),
    /// A batch is being hashed and written on the blocking pool.
    Writing(tokio::task::JoinHandle<Written>),
    /// Memory only, hashed here: pass-through after a store failure.
    Memory(Digester),
}

/// A sink with no write running.
enum Ready {
    Disk(store::BlobWriter),
    Memory(Digester),
}

impl From<Digester> for Sink {
    fn from(h: Digester) -> Self {
        Sink::Memory(h)
    }
}

/// A finished batch write: the writer back, and where it failed, if it did.
struct Written {
    writer: store::BlobWriter,
    batch: Vec<Bytes>,
    failed: Option<(usize, store::Error)>,
}
