//! Upload sessions: blobs being pushed, before their digest is known.
//!
//! ```text
//! <root>/uploads/<id>/state   who the upload is for (JSON: namespace, repository, started)
//! <root>/uploads/<id>/data    the bytes received so far
//! ```
//!
//! A session lives in the local directory (also with the S3 backend: its
//! bytes reach the bucket once, at the commit, through [`super::BlobWriter`]). It
//! survives a restart: its offset is the length of `data`, which a client
//! asks for (`GET` on the upload URL) to resume after a dropped connection.
//! Bytes are hashed as they arrive; after a restart, or when a write
//! failed half-way, the commit hashes `data` again instead. The commit
//! verifies the digest the client names, then writes the blob through the
//! store's verified writer, so a session can never publish bytes under a
//! digest they do not hash to. Sessions untouched for the namespace's
//! `upload_timeout` are swept.
//!
//! Session ids are 32 random hex digits: unguessable, and checked before
//! any path is built from one.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use super::{Error, Store, blocking};
use crate::oci::{Algorithm, Digest, Digester};

/// Longest wait for the next bytes of a chunk; then what arrived is kept
/// and the chunk ends as if the connection broke.
const CHUNK_IDLE: std::time::Duration = std::time::Duration::from_secs(60);

/// Who an upload is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadState {
    /// The hosted namespace.
    pub ns: String,
    /// The repository.
    pub repo: String,
    /// When it started (ms since the epoch).
    pub started_ms: u64,
}

/// An upload session as found on disk.
#[derive(Debug, Clone)]
pub struct Upload {
    /// Its id.
    pub id: String,
    /// Who it is for.
    pub state: UploadState,
    /// Bytes received so far (the offset the next chunk starts at).
    pub size: u64,
    /// When bytes last arrived (or it started).
    pub touched: SystemTime,
}

/// Why an upload step failed.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// No such session (never started, finished, cancelled or swept).
    #[error("upload {0} is unknown")]
    Unknown(String),
    /// A chunk that does not start where the upload stands.
    #[error("chunk starts at {at}, the upload holds {size} bytes")]
    OutOfOrder {
        /// Where the chunk starts.
        at: u64,
        /// What the upload holds.
        size: u64,
    },
    /// The bytes received do not hash to the digest the client named.
    #[error("the upload's {size} bytes hash to {actual}, not {expected}")]
    DigestMismatch {
        /// The digest named.
        expected: Digest,
        /// What the bytes hash to.
        actual: Digest,
        /// How many bytes.
        size: u64,
    },
    /// The request body broke off (the bytes before the break are kept).
    #[error("the request body broke off after {kept} bytes of this chunk")]
    Body {
        /// Bytes of the chunk that were kept.
        kept: u64,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The upload would grow past the namespace's bound.
    #[error("the upload would exceed {limit} bytes")]
    TooLarge {
        /// The bound.
        limit: u64,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] Error),
}

/// What a live session keeps in memory: the hash of `data`'s first `at`
/// bytes, and a lock that serialises its chunks.
#[derive(Debug)]
struct Live {
    hash: Option<(Digester, u64)>,
}

/// The upload sessions of one store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Uploads {
    dir: PathBuf,
    live: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<Live>>>>>,
}

/// Whether `id` is a session id this store could have made.
fn valid_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn new_id() -> String {
    let mut b = [0u8; 16];
    aws_lc_rs::rand::fill(&mut b).expect("the system's random source works");
    hex::encode(b)
}

impl Uploads {
    /// The sessions under `<root>/uploads`.
    pub(crate) fn new(root: &Path) -> Self {
        Self {
            dir: root.join("uploads"),
            live: Arc::default(),
        }
    }

    fn session(&self, id: &str) -> Result<PathBuf, UploadError> {
        if !valid_id(id) {
            return Err(UploadError::Unknown(id.to_owned()));
        }
        Ok(self.dir.join(id))
    }

    fn live(&self, id: &str) -> Arc<tokio::sync::Mutex<Live>> {
        let mut m = self
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        m.entry(id.to_owned())
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(Live { hash: None })))
            .clone()
    }

    /// [`Uploads::status`] while holding the session's lock: a session gone
    /// meanwhile (committed, cancelled, swept) leaves no live entry.
    async fn status_held(&self, id: &str) -> Result<Upload, UploadError> {
        let r = self.status(id).await;
        if matches!(r, Err(UploadError::Unknown(_))) {
            self.forget(id);
        }
        r
    }

    fn forget(&self, id: &str) {
        let mut m = self
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        m.remove(id);
    }

    /// Starts a session for `ns`/`repo`; returns its id.
    pub async fn start(&self, ns: &str, repo: &str) -> Result<String, Error> {
        let id = new_id();
        let dir = self.dir.join(&id);
        let state = UploadState {
            ns: ns.to_owned(),
            repo: repo.to_owned(),
            started_ms: crate::tag::epoch_ms(SystemTime::now()),
        };
        let json = serde_json::to_vec(&state).expect("plain data serialises");
        blocking(move || {
            std::fs::create_dir_all(&dir).map_err(Error::io("create", &dir))?;
            let data = dir.join("data");
            std::fs::File::create(&data).map_err(Error::io("create", &data))?;
            let st = dir.join("state");
            std::fs::write(&st, json).map_err(Error::io("write", &st))
        })
        .await?;
        let live = self.live(&id);
        live.lock().await.hash = Some((Digester::new(Algorithm::Sha256), 0));
        Ok(id)
    }

    /// The session `id`, if it exists.
    pub async fn status(&self, id: &str) -> Result<Upload, UploadError> {
        let dir = self.session(id)?;
        let id = id.to_owned();
        let found = blocking(move || {
            let st = dir.join("state");
            let state = match std::fs::read(&st) {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(Error::io("read", &st)(e)),
            };
            let Ok(state) = serde_json::from_slice::<UploadState>(&state) else {
                return Ok(None);
            };
            let data = dir.join("data");
            let meta = match std::fs::metadata(&data) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(Error::io("stat", &data)(e)),
            };
            Ok(Some((
                state,
                meta.len(),
                meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            )))
        })
        .await?;
        match found {
            Some((state, size, touched)) => Ok(Upload {
                id,
                state,
                size,
                touched,
            }),
            None => Err(UploadError::Unknown(id)),
        }
    }

    /// [`Uploads::status`] once a chunk being appended now has ended.
    pub async fn settled(&self, id: &str) -> Result<Upload, UploadError> {
        // Unknown ids leave nothing behind in the live table.
        self.status(id).await?;
        let live = self.live(id);
        let _held = live.lock().await;
        self.status_held(id).await
    }

    /// Appends a chunk to session `id`. `at` is where the client says it
    /// starts (`Content-Range`), checked against what the session holds;
    /// `limit` bounds the session's size. Returns the new size. When the
    /// body breaks off, what arrived before the break is kept (fsynced), so
    /// the client can resume from the size it then reads.
    pub async fn append<S>(
        &self,
        id: &str,
        at: Option<u64>,
        body: S,
        limit: Option<u64>,
    ) -> Result<u64, UploadError>
    where
        S: Stream<Item = io::Result<Bytes>> + Send,
    {
        let dir = self.session(id)?;
        self.status(id).await?;
        let live = self.live(id);
        // One chunk at a time per session: offsets must not interleave.
        let mut live = live.lock().await;
        let size = self.status_held(id).await?.size;
        if let Some(at) = at
            && at != size
        {
            return Err(UploadError::OutOfOrder { at, size });
        }
        if live.hash.as_ref().is_some_and(|(_, n)| *n != size) {
            live.hash = None;
        }
        let path = dir.join("data");
        let mut file = tokio::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .await
            .map_err(Error::io("open", &path))?;
        let mut body = std::pin::pin!(body);
        let mut total = size;
        let mut broke = None;
        loop {
            // A connection gone quiet (half-open) must not hold the session:
            // its silence ends the chunk like a break.
            let chunk = match tokio::time::timeout(CHUNK_IDLE, body.next()).await {
                Ok(None) => break,
                Ok(Some(Ok(c))) => c,
                Ok(Some(Err(e))) => {
                    broke = Some(e);
                    break;
                }
                Err(_) => {
                    broke = Some(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no bytes for {}s", CHUNK_IDLE.as_secs()),
                    ));
                    break;
                }
            };
            if let Some(limit) = limit
                && total + chunk.len() as u64 > limit
            {
                // Keep what is there; the client learns the bound.
                let _ = file.sync_data().await;
                return Err(UploadError::TooLarge { limit });
            }
            if let Err(e) = file.write_all(&chunk).await {
                // Part of the chunk may be on disk: hash again at the end.
                live.hash = None;
                return Err(Error::io("write", &path)(e).into());
            }
            total += chunk.len() as u64;
            if let Some((h, n)) = &mut live.hash {
                h.update(&chunk);
                *n = total;
            }
        }
        file.flush().await.map_err(Error::io("write", &path))?;
        file.sync_data().await.map_err(Error::io("fsync", &path))?;
        match broke {
            Some(source) => Err(UploadError::Body {
                kept: total - size,
                source,
            }),
            None => Ok(total),
        }
    }

    /// Cancels session `id` (and removes its bytes).
    pub async fn cancel(&self, id: &str) -> Result<(), UploadError> {
        let dir = self.session(id)?;
        self.status(id).await?;
        let live = self.live(id);
        let _held = live.lock().await;
        self.status_held(id).await?;
        remove_dir(dir).await?;
        self.forget(id);
        Ok(())
    }

    /// Every session on disk.
    pub async fn list(&self) -> Result<Vec<Upload>, Error> {
        let dir = self.dir.clone();
        let ids = blocking(move || {
            let rd = match std::fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(Error::io("list", &dir)(e)),
            };
            Ok(rd
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect::<Vec<_>>())
        })
        .await?;
        let mut out = Vec::new();
        for id in ids {
            match self.status(&id).await {
                Ok(u) => out.push(u),
                Err(UploadError::Unknown(_)) if valid_id(&id) => {
                    // A session torn by a crash between its directory and
                    // its state: report it so that the sweep removes it.
                    out.push(Upload {
                        id,
                        state: UploadState {
                            ns: String::new(),
                            repo: String::new(),
                            started_ms: 0,
                        },
                        size: 0,
                        touched: SystemTime::UNIX_EPOCH,
                    });
                }
                Err(UploadError::Store(e)) => return Err(e),
                Err(_) => {}
            }
        }
        Ok(out)
    }

    /// Removes sessions untouched since `before(upload)` says they are
    /// abandoned; returns how many went. A session with a chunk arriving
    /// is never swept under it.
    pub async fn sweep(&self, abandoned: impl Fn(&Upload) -> bool) -> Result<usize, Error> {
        let mut n = 0;
        for u in self.list().await? {
            if !abandoned(&u) {
                continue;
            }
            let live = self.live(&u.id);
            let Ok(_held) = live.try_lock() else {
                continue;
            };
            // Touched since it was listed?
            if let Ok(now) = self.status(&u.id).await
                && now.touched != u.touched
            {
                continue;
            }
            remove_dir(self.dir.join(&u.id)).await?;
            self.forget(&u.id);
            n += 1;
        }
        Ok(n)
    }
}

async fn remove_dir(dir: PathBuf) -> Result<(), Error> {
    blocking(move || match std::fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", &dir)(e)),
    })
    .await
}

/// What a committed upload became.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// The blob's size.
    pub size: u64,
    /// Whether the store already held it (nothing was written).
    pub existed: bool,
}

impl Store {
    /// The upload sessions.
    pub fn uploads(&self) -> &Uploads {
        &self.uploads
    }

    /// Finishes session `id` as blob `digest`: checks that its bytes hash
    /// to it, stores them through the verified writer unless the store
    /// holds the blob already, and removes the session. A mismatch removes
    /// the session too (its bytes can never become anything).
    ///
    /// `owner` (`<namespace>/<repository>`) marks a blob the store did not
    /// hold private to it, after its bytes check out and before it is
    /// published (see [`super::PrivateMarks`]).
    pub async fn commit_upload(
        &self,
        id: &str,
        digest: &Digest,
        owner: Option<String>,
    ) -> Result<Committed, UploadError> {
        let uploads = &self.uploads;
        let dir = uploads.session(id)?;
        uploads.status(id).await?;
        let live = uploads.live(id);
        let mut live = live.lock().await;
        let size = uploads.status_held(id).await?.size;
        let data = dir.join("data");
        // The hash of the bytes as they arrived, when it covers them all
        // and is of the digest's algorithm; else the file is read again.
        let hashed = match live.hash.take() {
            Some((h, n)) if n == size && digest.algorithm() == Algorithm::Sha256 => Some(h),
            _ => None,
        };
        let existed = self.stat(digest).await? == Some(size);
        if existed {
            let actual = match hashed {
                Some(h) => h.finish(),
                None => {
                    let (path, alg) = (data.clone(), digest.algorithm());
                    blocking(move || super::writer::hash_file(&path, alg))
                        .await?
                        .finish()
                }
            };
            if actual != *digest {
                return Err(self.mismatch(&dir, id, digest, actual, size).await);
            }
        } else {
            // The session's file becomes the blob: moved, not copied, and
            // verified by the store's writer like any other write.
            let mut w = self.blobs.create_from(digest, data.clone(), hashed).await?;
            match w.verify(Some(size)) {
                Ok(_) => {
                    if let Some(owner) = owner {
                        self.mark_private(digest, owner).await?;
                    }
                    w.commit().await?
                }
                Err(Error::DigestMismatch { actual, .. }) => {
                    return Err(self.mismatch(&dir, id, digest, actual, size).await);
                }
                Err(e) => return Err(e.into()),
            }
        }
        remove_dir(dir).await?;
        uploads.forget(id);
        Ok(Committed { size, existed })
    }
}

impl Store {
    /// Ends a session whose bytes do not hash to `expected`.
    async fn mismatch(
        &self,
        dir: &Path,
        id: &str,
        expected: &Digest,
        actual: Digest,
        size: u64,
    ) -> UploadError {
        if let Err(e) = remove_dir(dir.to_owned()).await {
            return e.into();
        }
        self.uploads.forget(id);
        UploadError::DigestMismatch {
            expected: expected.clone(),
            actual,
            size,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(parts: Vec<io::Result<&'static [u8]>>) -> impl Stream<Item = io::Result<Bytes>> {
        futures_util::stream::iter(parts.into_iter().map(|p| p.map(Bytes::from_static)))
    }

    #[tokio::test]
    async fn chunks_resume_after_a_break_and_commit_verified() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_local(dir.path(), None).await.unwrap();
        let up = store.uploads();
        let id = up.start("local", "app").await.unwrap();
        assert_eq!(
            up.append(&id, Some(0), stream(vec![Ok(b"hello ")]), None)
                .await
                .unwrap(),
            6
        );
        // A chunk that does not start at the end is refused.
        assert!(matches!(
            up.append(&id, Some(3), stream(vec![Ok(b"x")]), None).await,
            Err(UploadError::OutOfOrder { at: 3, size: 6 })
        ));
        // The body breaks: what arrived is kept.
        let r = up
            .append(
                &id,
                None,
                stream(vec![Ok(b"wor"), Err(io::Error::other("reset"))]),
                None,
            )
            .await;
        assert!(matches!(r, Err(UploadError::Body { kept: 3, .. })), "{r:?}");
        assert_eq!(up.status(&id).await.unwrap().size, 9);
        // A bound.
        assert!(matches!(
            up.append(&id, Some(9), stream(vec![Ok(b"ld")]), Some(10))
                .await,
            Err(UploadError::TooLarge { limit: 10 })
        ));
        up.append(&id, Some(9), stream(vec![Ok(b"ld")]), None)
            .await
            .unwrap();
        let d = Digest::sha256_of(b"hello world");
        // A restart: the in-memory hash is gone; the commit hashes the file.
        let again = Store::open_local(dir.path(), None).await.unwrap();
        let c = again.commit_upload(&id, &d, None).await.unwrap();
        assert_eq!(
            c,
            Committed {
                size: 11,
                existed: false
            }
        );
        assert_eq!(again.stat(&d).await.unwrap(), Some(11));
        assert!(matches!(
            again.uploads().status(&id).await,
            Err(UploadError::Unknown(_))
        ));
    }

    #[tokio::test]
    async fn a_wrong_digest_publishes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_local(dir.path(), None).await.unwrap();
        let id = store.uploads().start("local", "app").await.unwrap();
        store
            .uploads()
            .append(&id, None, stream(vec![Ok(b"abc")]), None)
            .await
            .unwrap();
        let wrong = Digest::sha256_of(b"abd");
        assert!(matches!(
            store
                .commit_upload(&id, &wrong, Some("local/app".to_owned()))
                .await,
            Err(UploadError::DigestMismatch { size: 3, .. })
        ));
        // A refused push marks nothing.
        assert!(store.private_marks().owners(&wrong).is_empty());
        assert_eq!(store.stat(&wrong).await.unwrap(), None);
        assert_eq!(store.stat(&Digest::sha256_of(b"abc")).await.unwrap(), None);
        // Ids that could name a path are unknown, never opened.
        for bad in ["../../etc", "ABCDEF0123456789ABCDEF0123456789", ""] {
            assert!(matches!(
                store.uploads().status(bad).await,
                Err(UploadError::Unknown(_))
            ));
        }
    }

    #[tokio::test]
    async fn sweep_removes_only_abandoned_sessions() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_local(dir.path(), None).await.unwrap();
        let up = store.uploads();
        let old = up.start("local", "a").await.unwrap();
        let new = up.start("local", "b").await.unwrap();
        let n = up.sweep(|u| u.state.repo == "a").await.unwrap();
        assert_eq!(n, 1);
        assert!(up.status(&old).await.is_err());
        assert!(up.status(&new).await.is_ok());
    }
}
