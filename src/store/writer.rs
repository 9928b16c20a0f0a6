//! `BlobWriter`: the one verified writer of every backend. It spools the
//! blob to a local temporary file while hashing it (followers read that file
//! through [`Spool`]), and hands it to its backend's [`Publish`] only when
//! size and digest check out: the local store renames it into place, a
//! remote one completes its upload. Anything else (an error, a mismatch, a
//! drop) aborts: nothing is ever visible under a digest it does not hash to.

use std::io::Write;
use std::path::PathBuf;

use futures_util::future::BoxFuture;

use super::{Error, Spool};
use crate::oci::{Digest, Digester};

/// What a backend does with a blob its writer has spooled.
pub(crate) trait Publish: Send + std::fmt::Debug {
    /// Called once the spool exists (a remote backend starts its uploader,
    /// which reads the spool).
    fn start(&mut self, _spool: &Spool) {}

    /// Called after each write with the bytes in the spool so far (a remote
    /// backend starts uploading full parts). Runs on the writer's thread
    /// (the blocking pool): must not block on the network.
    fn progress(&mut self, _written: u64) {}

    /// Makes the verified, fsynced spool at `tmp` durable and visible as
    /// `digest`. The spool file may be renamed away (the local store keeps
    /// it); whatever is left at `tmp` afterwards is removed.
    fn publish(
        self: Box<Self>,
        tmp: PathBuf,
        digest: Digest,
        size: u64,
    ) -> BoxFuture<'static, Result<(), Error>>;

    /// The write was given up (error, mismatch, or dropped): undo whatever
    /// was started (abort a multipart upload).
    fn abort(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

/// An in-progress blob write. [`write`](Self::write) is blocking file I/O:
/// call it from the blocking pool.
///
/// Dropping a writer that was not committed removes its temporary file and
/// aborts its backend's upload, so an abandoned or failed write never leaves
/// anything that could be served.
#[derive(Debug)]
pub struct BlobWriter {
    digest: Digest,
    tmp: PathBuf,
    file: Option<std::fs::File>,
    spool: Spool,
    hasher: Option<Digester>,
    written: u64,
    verified: bool,
    publish: Option<Box<dyn Publish>>,
}

impl BlobWriter {
    /// A writer spooling to a new file at `tmp`. Blocking.
    pub(crate) fn create(
        tmp: PathBuf,
        digest: Digest,
        guard: Option<super::InUseGuard>,
        publish: Box<dyn Publish>,
    ) -> Result<Self, Error> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(Error::io("create", &tmp))?;
        let reader = std::fs::File::open(&tmp).map_err(Error::io("open", &tmp));
        let reader = match reader {
            Ok(r) => r,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                spawn_abort(publish);
                return Err(e);
            }
        };
        let spool = Spool::new(reader, guard);
        let mut publish = publish;
        publish.start(&spool);
        Ok(Self {
            hasher: Some(Digester::new(digest.algorithm())),
            digest,
            tmp,
            file: Some(file),
            spool,
            written: 0,
            verified: false,
            publish: Some(publish),
        })
    }

    /// A writer over bytes already in the local file `from` (a pushed
    /// upload's), hard-linked to `tmp` instead of copied (copied only when
    /// `from` is on another filesystem), so that `from` stays whole for a
    /// retry when the commit fails. `hashed` has seen every byte of it when
    /// given; otherwise the file is hashed here. Then
    /// [`verify`](Self::verify) and [`commit`](Self::commit) as for any
    /// write. Blocking.
    pub(crate) fn adopt(
        tmp: PathBuf,
        from: &std::path::Path,
        digest: Digest,
        hashed: Option<Digester>,
        guard: Option<super::InUseGuard>,
        mut publish: Box<dyn Publish>,
    ) -> Result<Self, Error> {
        let linked = match std::fs::hard_link(from, &tmp) {
            Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => {
                std::fs::copy(from, &tmp).map(drop)
            }
            r => r,
        };
        let opened = linked.map_err(Error::io("link", from)).and_then(|()| {
            let file = std::fs::OpenOptions::new()
                .append(true)
                .open(&tmp)
                .map_err(Error::io("open", &tmp))?;
            let reader = std::fs::File::open(&tmp).map_err(Error::io("open", &tmp))?;
            let written = file.metadata().map_err(Error::io("stat", &tmp))?.len();
            let hasher = match hashed {
                Some(h) => h,
                None => {
                    let mut h = Digester::new(digest.algorithm());
                    let mut f = std::fs::File::open(&tmp).map_err(Error::io("open", &tmp))?;
                    let mut buf = vec![0u8; 1 << 20];
                    loop {
                        let n = std::io::Read::read(&mut f, &mut buf)
                            .map_err(Error::io("read", &tmp))?;
                        if n == 0 {
                            break h;
                        }
                        h.update(&buf[..n]);
                    }
                }
            };
            Ok((file, reader, written, hasher))
        });
        let (file, reader, written, hasher) = match opened {
            Ok(o) => o,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                spawn_abort(publish);
                return Err(e);
            }
        };
        let spool = Spool::new(reader, guard);
        publish.start(&spool);
        publish.progress(written);
        Ok(Self {
            hasher: Some(hasher),
            digest,
            tmp,
            file: Some(file),
            spool,
            written,
            verified: false,
            publish: Some(publish),
        })
    }

    /// The digest the content must hash to.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The bytes written so far, for streaming the blob to clients while it
    /// is being written. Stays readable after commit or abort.
    pub fn spool(&self) -> Spool {
        self.spool.clone()
    }

    /// Hashes and appends bytes. After this returns, the bytes are readable
    /// from the [`spool`](Self::spool). A failed write leaves the writer
    /// unusable for more bytes; its hasher has still seen `bytes`.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let (Some(file), Some(hasher)) = (self.file.as_mut(), self.hasher.as_mut()) else {
            return Err(Error::io("write", &self.tmp)(std::io::Error::other(
                "writer finished",
            )));
        };
        hasher.update(bytes);
        if let Err(e) = file.write_all(bytes) {
            self.file = None;
            return Err(Error::io("write", &self.tmp)(e));
        }
        self.written += bytes.len() as u64;
        if let Some(p) = self.publish.as_mut() {
            p.progress(self.written);
        }
        Ok(())
    }

    /// Hands the blob to `publish` instead of the backend's first choice
    /// (which is aborted): it starts from the spool's first byte.
    pub(crate) fn republish(&mut self, mut publish: Box<dyn Publish>) {
        publish.start(&self.spool);
        if self.written > 0 {
            publish.progress(self.written);
        }
        if let Some(old) = self.publish.replace(publish) {
            spawn_abort(old);
        }
    }

    /// Checks size and digest, then makes the blob durable and visible:
    /// [`verify`](Self::verify) and [`commit`](Self::commit) in one.
    pub async fn finish(mut self, expected_size: Option<u64>) -> Result<u64, Error> {
        let n = self.verify(expected_size)?;
        self.commit().await?;
        Ok(n)
    }

    /// Checks that what was written has the expected size (when known) and
    /// the writer's digest. Cheap: the bytes were hashed as they came. On
    /// success the blob may be served from spools already handed out; it
    /// becomes a stored blob with [`commit`](Self::commit). On failure
    /// nothing is committed and dropping the writer aborts it.
    pub fn verify(&mut self, expected_size: Option<u64>) -> Result<u64, Error> {
        let Some(hasher) = self.hasher.take() else {
            return Err(Error::io("verify", &self.tmp)(std::io::Error::other(
                "writer already verified",
            )));
        };
        if let Some(expected) = expected_size
            && expected != self.written
        {
            return Err(Error::SizeMismatch {
                expected,
                actual: self.written,
            });
        }
        let actual = hasher.finish();
        if actual != self.digest {
            return Err(Error::DigestMismatch {
                expected: self.digest.clone(),
                actual,
            });
        }
        self.verified = true;
        Ok(self.written)
    }

    /// fsyncs a verified blob and publishes it through its backend (atomic:
    /// a crash leaves either no blob or the whole, verified one).
    pub async fn commit(mut self) -> Result<(), Error> {
        let file = match self.file.take() {
            Some(file) if self.verified => file,
            _ => {
                return Err(Error::io("commit", &self.tmp)(std::io::Error::other(
                    "blob not verified",
                )));
            }
        };
        let tmp = self.tmp.clone();
        super::blocking(move || {
            // The commit is the blob's first access for LRU eviction. The
            // kernel stamps writes from a coarse clock (one tick is several
            // milliseconds), so blobs committed in the same tick would tie;
            // a precise stamp keeps their order. Best effort, like every
            // access time: a failure only makes eviction less exact.
            let _ = file.set_modified(std::time::SystemTime::now());
            file.sync_all().map_err(Error::io("fsync", &tmp))
        })
        .await?;
        let Some(publish) = self.publish.take() else {
            return Err(Error::io("commit", &self.tmp)(std::io::Error::other(
                "writer already published",
            )));
        };
        publish
            .publish(self.tmp.clone(), self.digest.clone(), self.written)
            .await
        // Drop removes what the backend left at `tmp` (nothing, once the
        // local store renamed it).
    }

    /// Gives up on storing: aborts, removes the temporary file and returns
    /// the hasher, which has seen every byte passed to
    /// [`write`](Self::write), including the bytes of a call that failed.
    /// Spools handed out keep their view of what was written. For streaming
    /// a blob on when the disk is full.
    pub fn abandon(mut self) -> Option<Digester> {
        self.file = None;
        self.hasher.take()
    }

    /// Gives up on storing and waits until the backend has undone what it
    /// started (dropping the writer does the same in the background).
    pub async fn abort(mut self) {
        self.file = None;
        if let Some(p) = self.publish.take() {
            p.abort().await;
        }
    }
}

/// A hasher that has read the whole file at `path`. Blocking.
pub(super) fn hash_file(
    path: &std::path::Path,
    alg: crate::oci::Algorithm,
) -> Result<Digester, Error> {
    let mut f = std::fs::File::open(path).map_err(Error::io("open", path))?;
    let mut h = Digester::new(alg);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = std::io::Read::read(&mut f, &mut buf).map_err(Error::io("read", path))?;
        if n == 0 {
            return Ok(h);
        }
        h.update(&buf[..n]);
    }
}

/// Runs a backend's abort in the background (from `Drop`, which cannot
/// wait). Without a runtime (shutting down) it is dropped: a remote
/// backend's sweeper removes what is left.
fn spawn_abort(p: Box<dyn Publish>) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(p.abort());
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if let Some(p) = self.publish.take() {
            spawn_abort(p);
        }
        let _ = std::fs::remove_file(&self.tmp);
    }
}
