//! The blob index: every stored blob's size and last access, in an embedded
//! database (`redb`) beside the blobs, so that neither startup nor eviction
//! walks the blob tree.
//!
//! A walk over a million blobs costs seconds of `stat`s and, when collected
//! and sorted, tens of MiB; an eviction pass over the index reads only the
//! oldest entries, as many as it evicts (plus the in-use ones it skips), and
//! the store's size is one stored counter.
//!
//! ```text
//! blobs: digest → (size, last access ms)      one row per stored blob
//! lru:   (last access ms, digest) → size      the same rows in eviction order
//! meta:  "bytes" → total size, "clean" → 1 after an orderly close
//! ```
//!
//! The files are the truth and the index follows them: updates go to one
//! writer thread that applies them in batches (group commits, mostly not
//! fsynced). The index is marked clean only by an orderly close; an index
//! found unclean at open (a crash, or a store from before the index) is
//! rebuilt from the files in the background, while the store already
//! serves.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak, mpsc};
use std::time::{Duration, Instant, SystemTime};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use crate::oci::Digest;
use crate::store::Error;

const BLOBS: TableDefinition<'_, &str, (u64, u64)> = TableDefinition::new("blobs");
const LRU: TableDefinition<'_, (u64, &str), u64> = TableDefinition::new("lru");
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");

/// The database's page cache: small, so that a big index costs disk, not
/// memory (eviction reads pages once, in order).
const CACHE: usize = 4 << 20;
/// Most updates applied in one transaction.
const BATCH: usize = 10_000;
/// Longest time updates stay in memory only (not fsynced).
const DURABLE_EVERY: Duration = Duration::from_secs(1);

fn db_err(op: &'static str, path: &Path) -> impl FnOnce(redb::Error) -> Error + use<> {
    let at = path.display().to_string();
    move |e| Error::Backend {
        op,
        at,
        source: Box::new(e),
    }
}

/// Milliseconds since the epoch.
pub(crate) fn ms(t: SystemTime) -> u64 {
    crate::tag::epoch_ms(t)
}

enum Op {
    Insert { digest: String, size: u64, at: u64 },
    Touch { digest: String, at: u64 },
    Remove { digest: String },
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// The index of one store root. Shared by every `LocalBlobs` of that root
/// in this process (the database can be open once only).
#[derive(Debug)]
pub(crate) struct Index {
    path: PathBuf,
    /// `None` only while it is dropped.
    db: Option<Arc<Database>>,
    tx: Mutex<Option<mpsc::Sender<Op>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Total bytes, as of the last applied batch.
    bytes: Arc<AtomicU64>,
    /// Whether the rebuild from the files (if one was needed) is done.
    rebuilt: tokio::sync::watch::Receiver<bool>,
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Op")
    }
}

/// Indexes open in this process, by root.
static OPEN: Mutex<Vec<(PathBuf, Weak<Index>)>> = Mutex::new(Vec::new());
/// Signalled when an index of `OPEN` has closed its database.
static CLOSED: std::sync::Condvar = std::sync::Condvar::new();

impl Index {
    /// Opens (or creates) the index of the blob tree under `root`; returns
    /// it, and starts the rebuild when the index was not closed cleanly.
    /// `None` when another process has it open (a running server, for a
    /// `verify` beside it). Blocking.
    pub(crate) fn open(root: &Path, blobs: PathBuf) -> Result<Option<Arc<Self>>, Error> {
        let key = std::fs::canonicalize(root).map_err(Error::io("canonicalize", root))?;
        let mut open = OPEN.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((_, w)) = open.iter().find(|(p, _)| *p == key) {
            if let Some(i) = w.upgrade() {
                return Ok(Some(i));
            }
            // Its last user is closing it on another thread: wait until the
            // database is closed (the bound only turns a hang into an error).
            let (guard, timeout) = CLOSED
                .wait_timeout(open, std::time::Duration::from_secs(60))
                .unwrap_or_else(|p| p.into_inner());
            open = guard;
            if timeout.timed_out() {
                return Err(Error::io("open index", root)(std::io::Error::other(
                    "the index of this directory did not close",
                )));
            }
        }
        let path = root.join("index.redb");
        let db = match Database::builder().set_cache_size(CACHE).create(&path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Ok(None),
            Err(e) => return Err(db_err("open index", &path)(e.into())),
        };
        let db = Arc::new(db);
        let (clean, bytes) = Self::init(&db).map_err(db_err("open index", &path))?;
        let bytes = Arc::new(AtomicU64::new(bytes));
        let (tx, rx) = mpsc::channel();
        let (done, rebuilt) = tokio::sync::watch::channel(clean);
        let writer = {
            let (db, bytes) = (db.clone(), bytes.clone());
            let p = path.clone();
            std::thread::Builder::new()
                .name("mirrorgate-index".into())
                .spawn(move || writer(db, rx, bytes, p))
                .map_err(Error::io("spawn index writer", &path))?
        };
        let index = Arc::new(Self {
            path,
            db: Some(db),
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            bytes,
            rebuilt,
        });
        open.push((key, Arc::downgrade(&index)));
        // From here on the index may be dropped (an error below): its drop
        // takes the registry's lock, so release it first.
        drop(open);
        if !clean {
            let i = index.clone();
            std::thread::Builder::new()
                .name("mirrorgate-reindex".into())
                .spawn(move || {
                    let started = Instant::now();
                    let rebuilt = i.rebuild(&blobs);
                    let bytes = i.bytes();
                    // Let go of the index before saying so: whoever waited
                    // for the rebuild may close it next.
                    drop(i);
                    match rebuilt {
                        Ok(n) => tracing::info!(blobs = n, bytes, took = ?started.elapsed(),
                            "blob index rebuilt from the files"),
                        Err(e) => tracing::error!(error = %crate::error_chain(&e),
                            "cannot rebuild the blob index; eviction works from what it has"),
                    }
                    done.send_replace(true);
                })
                .map_err(Error::io("spawn index rebuild", root))?;
        }
        Ok(Some(index))
    }

    /// Creates the tables, reads the counters and marks the index in use
    /// (unclean until an orderly close). Returns (was clean, bytes).
    fn init(db: &Database) -> Result<(bool, u64), redb::Error> {
        let mut w = db.begin_write()?;
        w.set_quick_repair(true);
        let (clean, bytes) = {
            w.open_table(BLOBS)?;
            w.open_table(LRU)?;
            let mut meta = w.open_table(META)?;
            let clean = meta.get("clean")?.map(|v| v.value()) == Some(1);
            let bytes = meta.get("bytes")?.map_or(0, |v| v.value());
            meta.insert("clean", 0)?;
            (clean, bytes)
        };
        w.commit()?;
        Ok((clean, bytes))
    }

    fn db(&self) -> &Database {
        // invariant: set until the index is dropped.
        self.db.as_deref().expect("the index is open until dropped")
    }

    fn send(&self, op: Op) {
        if let Some(tx) = &*self.tx.lock().unwrap_or_else(|p| p.into_inner()) {
            // The writer only stops when this index is dropped.
            let _ = tx.send(op);
        }
    }

    /// A blob was committed (or found) with `size` bytes, accessed `at`.
    pub(crate) fn insert(&self, digest: &Digest, size: u64, at: SystemTime) {
        self.send(Op::Insert {
            digest: digest.to_string(),
            size,
            at: ms(at),
        });
    }

    /// A blob was served at `at`.
    pub(crate) fn touch(&self, digest: &Digest, at: SystemTime) {
        self.send(Op::Touch {
            digest: digest.to_string(),
            at: ms(at),
        });
    }

    /// A blob's file is gone.
    pub(crate) fn remove(&self, digest: &Digest) {
        self.send(Op::Remove {
            digest: digest.to_string(),
        });
    }

    /// Waits until every update sent so far is applied (and, if a rebuild
    /// runs, until it is done).
    pub(crate) async fn flush(&self) {
        let mut rebuilt = self.rebuilt.clone();
        let _ = rebuilt.wait_for(|r| *r).await;
        self.applied().await;
    }

    /// Waits until every update sent so far is applied (a rebuild may go
    /// on): an index shared with an earlier store of the same root then
    /// counts that store's last commits.
    pub(crate) async fn applied(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(Op::Flush(tx));
        let _ = rx.await;
    }

    /// Total bytes of indexed blobs.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Up to `want` bytes of the least recently used blobs for which `skip`
    /// is false, oldest first: (digest, size). Reads only as far as it
    /// needs. Blocking.
    pub(crate) fn oldest(
        &self,
        want: u64,
        skip: impl Fn(&Digest) -> bool,
    ) -> Result<Vec<(Digest, u64)>, Error> {
        let read = || -> Result<Vec<(Digest, u64)>, redb::Error> {
            let r = self.db().begin_read()?;
            let lru = r.open_table(LRU)?;
            let mut out = Vec::new();
            let mut got = 0u64;
            for row in lru.iter()? {
                if got >= want {
                    break;
                }
                let (k, size) = row?;
                let (_, d) = k.value();
                let Ok(d) = d.parse::<Digest>() else {
                    continue;
                };
                if skip(&d) {
                    continue;
                }
                got += size.value();
                out.push((d, size.value()));
            }
            Ok(out)
        };
        read().map_err(db_err("read index", &self.path))
    }

    /// Rebuilds the index from the blob files: adds what is missing or
    /// changed, drops what has no file. Bounded memory: one directory and
    /// one batch at a time. Returns how many blobs there are. Blocking.
    fn rebuild(&self, blobs: &Path) -> Result<u64, Error> {
        let mut n = 0u64;
        super::layout::walk_files(blobs, |path, meta| {
            if let Some(d) = super::gc::digest_of(&path) {
                n += 1;
                let at = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                // An upsert: the writer keeps what is newer.
                self.send(Op::Insert {
                    digest: d.to_string(),
                    size: meta.len(),
                    at: ms(at),
                });
            }
            Ok(())
        })?;
        // Rows whose file is gone (a crash between a delete and its update).
        let rows = {
            let read = || -> Result<Vec<String>, redb::Error> {
                let r = self.db().begin_read()?;
                let t = r.open_table(BLOBS)?;
                let mut gone = Vec::new();
                for row in t.iter()? {
                    let (k, _) = row?;
                    let d = k.value();
                    if let Ok(dg) = d.parse::<Digest>() {
                        let p = blobs
                            .join(dg.algorithm().as_str())
                            .join(&dg.hex()[..2])
                            .join(dg.hex());
                        if !p.exists() {
                            gone.push(d.to_owned());
                        }
                    } else {
                        gone.push(d.to_owned());
                    }
                }
                Ok(gone)
            };
            read().map_err(db_err("read index", &self.path))?
        };
        for digest in rows {
            self.send(Op::Remove { digest });
        }
        Ok(n)
    }
}

impl Drop for Index {
    fn drop(&mut self) {
        // Closing the channel makes the writer apply what is left, mark the
        // index clean and stop; wait for it, so that the database is closed
        // before anyone opens it again.
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(w) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = w.join();
        }
        // The writer's handle is gone with it: this closes the database.
        self.db = None;
        let me: *const Index = self;
        let mut open = OPEN.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|(_, w)| !std::ptr::eq(w.as_ptr(), me));
        CLOSED.notify_all();
    }
}

/// The writer thread: applies updates in batches until the channel closes,
/// then marks the index clean.
fn writer(db: Arc<Database>, rx: mpsc::Receiver<Op>, bytes: Arc<AtomicU64>, path: PathBuf) {
    let mut last_durable = Instant::now();
    let mut closed = false;
    while !closed {
        let mut ops = Vec::new();
        match rx.recv() {
            Ok(op) => ops.push(op),
            Err(_) => closed = true,
        }
        while ops.len() < BATCH {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        let durable = closed || last_durable.elapsed() >= DURABLE_EVERY;
        let mut flushes = Vec::new();
        match apply(&db, ops, durable, closed, &mut flushes) {
            Ok(total) => {
                bytes.store(total, Ordering::Relaxed);
                if durable {
                    last_durable = Instant::now();
                }
            }
            Err(e) => tracing::error!(path = %path.display(), error = %crate::error_chain(&e),
                "cannot update the blob index"),
        }
        for f in flushes {
            let _ = f.send(());
        }
    }
}

fn apply(
    db: &Database,
    ops: Vec<Op>,
    durable: bool,
    close: bool,
    flushes: &mut Vec<tokio::sync::oneshot::Sender<()>>,
) -> Result<u64, redb::Error> {
    let mut w = db.begin_write()?;
    w.set_quick_repair(true);
    w.set_durability(if durable {
        Durability::Immediate
    } else {
        Durability::None
    })?;
    let total = {
        let mut blobs = w.open_table(BLOBS)?;
        let mut lru = w.open_table(LRU)?;
        let mut meta = w.open_table(META)?;
        let mut total = meta.get("bytes")?.map_or(0, |v| v.value());
        // Runs of removals (an eviction pass) are applied in key order, table
        // by table: a million random digests are a million scattered pages
        // for a small page cache, sorted they are a sweep.
        let mut removals: Vec<String> = Vec::new();
        let mut ops = ops.into_iter().peekable();
        while let Some(op) = ops.next() {
            if let Op::Remove { digest } = op {
                removals.push(digest);
                if matches!(ops.peek(), Some(Op::Remove { .. })) {
                    continue;
                }
                removals.sort_unstable();
                let mut rows = Vec::with_capacity(removals.len());
                for d in removals.drain(..) {
                    if let Some((size, at)) = blobs.remove(d.as_str())?.map(|v| v.value()) {
                        rows.push((at, d, size));
                    }
                }
                rows.sort_unstable();
                for (at, d, size) in rows {
                    lru.remove((at, d.as_str()))?;
                    total = total.saturating_sub(size);
                }
                continue;
            }
            match op {
                Op::Flush(tx) => flushes.push(tx),
                Op::Insert { digest, size, at } => {
                    let old = blobs.get(digest.as_str())?.map(|v| v.value());
                    if let Some((old_size, old_at)) = old {
                        if old_size == size && old_at >= at {
                            continue;
                        }
                        lru.remove((old_at, digest.as_str()))?;
                        total = total.saturating_sub(old_size);
                    }
                    let at = old.map_or(at, |(_, o)| o.max(at));
                    blobs.insert(digest.as_str(), (size, at))?;
                    lru.insert((at, digest.as_str()), size)?;
                    total += size;
                }
                Op::Touch { digest, at } => {
                    let Some((size, old_at)) = blobs.get(digest.as_str())?.map(|v| v.value())
                    else {
                        continue;
                    };
                    if at <= old_at {
                        continue;
                    }
                    lru.remove((old_at, digest.as_str()))?;
                    blobs.insert(digest.as_str(), (size, at))?;
                    lru.insert((at, digest.as_str()), size)?;
                }
                // Applied above, in runs.
                Op::Remove { .. } => {}
            }
        }
        meta.insert("bytes", total)?;
        if close {
            meta.insert("clean", 1)?;
        }
        total
    };
    w.commit()?;
    Ok(total)
}
