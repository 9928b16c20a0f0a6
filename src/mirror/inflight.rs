//! The in-flight table: one upstream download per missing blob digest.
//!
//! The first request for a missing blob inserts a [`Fill`] and spawns the
//! download task; later requests find the `Fill` and join it. The download
//! task owns the `BlobWriter`, so it runs to the end (or failure) whether or
//! not any client is still reading: a client that disconnects never aborts
//! caching. Progress is published on a `watch` channel; readers take the
//! newest bytes from the fill's in-memory [`Window`] and older ones from the
//! writer's spool.
//! The entry is removed only after the blob is in the store (or the fill
//! failed), and the table remembers recent commits by epoch, so a request
//! that missed the store just before a commit joins nothing and finds the
//! blob on its second look, without a second download.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::{self, BoxStream};
use tokio::sync::watch;

use super::Error;
use crate::oci::Digest;
use crate::store::Spool;

/// What a fill has achieved so far.
#[derive(Debug, Clone)]
pub(crate) enum FillState {
    /// Waiting for upstream's response headers.
    Starting,
    /// Upstream answered; `written` bytes are in the temporary file.
    Streaming {
        /// Content-Length from upstream, if it sent one.
        size: Option<u64>,
        /// Bytes written and readable.
        written: u64,
    },
    /// Complete and verified: readers may have every byte. The blob is
    /// being committed to the store (fsync and rename) while the fill stays
    /// in the table, or, when the store failed (disk full), streamed through
    /// from the window and the temporary file's read handle without being
    /// cached.
    Done {
        /// Final size.
        size: u64,
    },
    /// Failed; nothing was stored.
    Failed(Error),
}

/// One in-flight download, as its readers see it: they follow it with
/// [`Fill::ready`] and [`Fill::stream`]. Only its [`FillWriter`] changes it.
#[derive(Debug)]
pub(crate) struct Fill {
    state: watch::Sender<FillState>,
    /// The writer's spool, set before `Streaming` is first published
    /// (unless the store could not even start the write).
    reader: OnceLock<Spool>,
    /// The most recently received bytes, served to readers from memory.
    window: Mutex<Window>,
    /// Set once a reader has started its response: a failure after that
    /// breaks bodies that are already under way, which no request can
    /// report, so the download task logs it.
    streamed: std::sync::atomic::AtomicBool,
    /// Where the bytes come from, for the status page.
    origin: OnceLock<(String, String)>,
    /// When the fill started.
    started: std::time::Instant,
}

/// One download under way, as the status page shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Download {
    /// The blob.
    pub digest: Digest,
    /// The upstream and repository it is fetched from (unknown for a
    /// moment after it starts).
    pub origin: Option<(String, String)>,
    /// Bytes received so far.
    pub received: u64,
    /// Its size, when upstream announced it.
    pub size: Option<u64>,
    /// Time since it started.
    pub elapsed: std::time::Duration,
}

impl Fill {
    /// Waits until the source answered: the announced size, or the error.
    pub(crate) async fn ready(&self) -> Result<Option<u64>, Error> {
        ready(self).await
    }

    /// Streams bytes `start..end` (`None`: to the end) as they arrive; the
    /// final byte only once the blob is verified.
    pub(crate) fn stream(
        self: &Arc<Self>,
        start: u64,
        end: Option<u64>,
    ) -> BoxStream<'static, io::Result<Bytes>> {
        fill_stream(self.clone(), start, end)
    }

    fn lock_window(&self) -> std::sync::MutexGuard<'_, Window> {
        self.window
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// How a fill ended well.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stored {
    /// Verified and committed to the store.
    Cached(u64),
    /// Verified and streamed to its readers, but not stored (the store
    /// failed).
    PassedThrough(u64),
}

/// The one writer of a fill: the download task. It publishes what arrives;
/// dropping it before [`finish`](Self::finish) (a panic, a cancelled task)
/// fails the fill, so readers never hang, and takes it out of the table.
#[derive(Debug)]
pub(crate) struct FillWriter {
    fill: Arc<Fill>,
    fills: Arc<Fills>,
    digest: Digest,
    committed: bool,
}

impl FillWriter {
    /// Names where the bytes come from (upstream, repository).
    pub(crate) fn set_origin(&self, upstream: String, repo: String) {
        let _ = self.fill.origin.set((upstream, repo));
    }

    /// The fill, for readers.
    pub(crate) fn fill(&self) -> &Arc<Fill> {
        &self.fill
    }

    /// The source answered: readers may start. Bytes that leave memory are
    /// read from `spool`.
    pub(crate) fn streaming(&self, size: Option<u64>, spool: Option<Spool>) {
        if let Some(spool) = spool {
            // Only this writer sets the reader, once.
            let _ = self.fill.reader.set(spool);
        }
        self.fill
            .state
            .send_replace(FillState::Streaming { size, written: 0 });
    }

    /// A batch arrived; `received` bytes have arrived in all.
    pub(crate) fn publish(&self, batch: &[Bytes], received: u64) {
        {
            let mut window = self.fill.lock_window();
            batch.iter().for_each(|c| window.push(c.clone()));
        }
        self.fill.state.send_modify(|s| {
            if let FillState::Streaming { written, .. } = s {
                *written = received;
            }
        });
    }

    /// Whether the fills' shared memory is spent (the download should then
    /// keep little in flight to the disk, too).
    pub(crate) fn memory_spent(&self) -> bool {
        self.fills.budget.spent()
    }

    /// Bytes up to `n` are in the spool.
    pub(crate) fn on_disk(&self, n: u64) {
        self.fill.lock_window().set_on_disk(n);
    }

    /// The store failed: the spool ends at `on_disk`; the rest lives in
    /// memory only.
    pub(crate) fn pass_through(&self, on_disk: u64) {
        self.fill.lock_window().start_pass_through(on_disk);
    }

    /// Verified: readers may have every byte (the commit follows; the fill
    /// stays joinable until [`finish`](Self::finish)). Every byte is in the
    /// spool now, so the window gives its memory back: readers still
    /// behind read the rest from the spool.
    pub(crate) fn verified(&self, size: u64) {
        self.fill.lock_window().release();
        self.fill.state.send_replace(FillState::Done { size });
    }

    /// Whether a reader's response is under way (a failure now breaks it
    /// midway, which no request can report).
    pub(crate) fn streamed(&self) -> bool {
        self.fill
            .streamed
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The end: readers get every byte, or the error.
    pub(crate) fn finish(mut self, outcome: Result<Stored, Error>) {
        let state = match outcome {
            Ok(Stored::Cached(size)) => {
                self.committed = true;
                FillState::Done { size }
            }
            Ok(Stored::PassedThrough(size)) => FillState::Done { size },
            Err(e) => FillState::Failed(e),
        };
        self.fill.state.send_replace(state);
    }
}

impl Drop for FillWriter {
    fn drop(&mut self) {
        self.fill.state.send_if_modified(|s| match s {
            FillState::Starting | FillState::Streaming { .. } => {
                *s = FillState::Failed(Error::Interrupted);
                true
            }
            FillState::Done { .. } | FillState::Failed(_) => false,
        });
        self.fills.remove(&self.digest, &self.fill, self.committed);
    }
}

/// The memory all windows share (`[server] fill_memory`): while it is
/// spent, windows keep only what is not on disk yet, and readers read the
/// rest from the spool.
#[derive(Debug)]
pub(crate) struct Budget {
    limit: usize,
    used: std::sync::atomic::AtomicUsize,
}

impl Budget {
    pub(crate) fn new(limit: u64) -> Arc<Self> {
        Arc::new(Self {
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
            used: Default::default(),
        })
    }

    fn spent(&self) -> bool {
        self.used.load(std::sync::atomic::Ordering::Relaxed) > self.limit
    }

    fn add(&self, n: usize) {
        self.used.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    fn sub(&self, n: usize) {
        self.used.fetch_sub(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Bytes the windows hold now.
    pub(crate) fn used(&self) -> usize {
        self.used.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            limit: crate::config::DEFAULT_FILL_MEMORY as usize,
            used: Default::default(),
        }
    }
}

/// The newest bytes of a download, kept in memory so that readers keeping
/// up with it get upstream's chunks as they arrive (no copy, no wait for
/// the disk write) and readers behind it read the temporary file.
///
/// Normally the window only lets go of bytes that are already in the
/// temporary file (`on_disk`), so every byte is in one place or the other,
/// and it keeps at most [`WINDOW`] bytes beyond those, and none of them
/// while the windows together hold more than their shared [`Budget`]. When the store fails
/// mid-download (disk full) it becomes a pass-through: `on_disk` stops
/// where the file does, the window keeps at most [`SPILL_WINDOW`] bytes,
/// and a reader that falls behind it fails (its client retries).
#[derive(Debug, Default)]
pub(crate) struct Window {
    /// The memory this window shares with the others.
    budget: Arc<Budget>,
    /// Bytes readable from the temporary file.
    on_disk: u64,
    /// The store failed: nothing more goes to the file.
    pass_through: bool,
    /// Offset of the first byte in `chunks`.
    base: u64,
    chunks: std::collections::VecDeque<bytes::Bytes>,
    len: usize,
}

impl Drop for Window {
    fn drop(&mut self) {
        self.budget.sub(self.len);
    }
}

/// Bytes a window keeps beyond those already on disk.
pub(crate) const WINDOW: usize = 2 * 1024 * 1024;
/// Most bytes a pass-through keeps in memory.
pub(crate) const SPILL_WINDOW: usize = 32 * 1024 * 1024;

/// Where a reader finds the bytes at its position.
#[derive(Debug, PartialEq)]
pub(crate) enum Found {
    /// In memory (empty: nothing received there yet).
    Memory(bytes::Bytes),
    /// In the temporary file, up to this offset.
    File { upto: u64 },
    /// Gone: a pass-through reader fell behind the window.
    Gone,
}

impl Window {
    /// An empty window that shares `budget` with the others.
    pub(crate) fn sharing(budget: Arc<Budget>) -> Self {
        Self {
            budget,
            on_disk: 0,
            pass_through: false,
            base: 0,
            chunks: Default::default(),
            len: 0,
        }
    }

    /// Appends a received chunk.
    pub(crate) fn push(&mut self, b: bytes::Bytes) {
        self.len += b.len();
        self.budget.add(b.len());
        self.chunks.push_back(b);
        self.trim();
    }

    /// Bytes up to `on_disk` are in the temporary file now.
    pub(crate) fn set_on_disk(&mut self, on_disk: u64) {
        self.on_disk = on_disk;
        self.trim();
    }

    /// The store failed: the file ends at `on_disk`, the rest lives here.
    pub(crate) fn start_pass_through(&mut self, on_disk: u64) {
        self.on_disk = on_disk;
        self.pass_through = true;
        self.trim();
    }

    fn trim(&mut self) {
        let keep = if self.pass_through {
            SPILL_WINDOW
        } else if self.budget.spent() {
            0
        } else {
            WINDOW
        };
        while self.chunks.len() > 1 && self.len > keep {
            let Some(front) = self.chunks.front() else {
                break;
            };
            let end = self.base + front.len() as u64;
            if !self.pass_through && end > self.on_disk {
                // Not in the file yet: the only copy.
                break;
            }
            self.len -= front.len();
            self.budget.sub(front.len());
            self.base = end;
            self.chunks.pop_front();
        }
    }

    /// Lets go of every chunk already on disk (not in a pass-through, where
    /// the window holds the only copy).
    pub(crate) fn release(&mut self) {
        if self.pass_through {
            return;
        }
        while let Some(front) = self.chunks.front() {
            let end = self.base + front.len() as u64;
            if end > self.on_disk {
                break;
            }
            self.len -= front.len();
            self.budget.sub(front.len());
            self.base = end;
            self.chunks.pop_front();
        }
    }

    /// Where the bytes at `pos` are; from memory at most `max` bytes (up to
    /// a chunk boundary).
    pub(crate) fn find(&self, pos: u64, max: usize) -> Found {
        if pos < self.base {
            return if pos < self.on_disk {
                Found::File { upto: self.on_disk }
            } else {
                Found::Gone
            };
        }
        let mut at = self.base;
        for c in &self.chunks {
            let end = at + c.len() as u64;
            if pos < end {
                let from = (pos - at) as usize;
                let to = c.len().min(from + max);
                return Found::Memory(c.slice(from..to));
            }
            at = end;
        }
        Found::Memory(bytes::Bytes::new())
    }
}

/// The table of in-flight downloads, keyed by digest (blobs are shared by
/// every upstream).
#[derive(Debug, Default)]
pub(crate) struct Fills {
    table: Mutex<Table>,
    /// The memory the fills' windows share.
    budget: Arc<Budget>,
    /// Woken whenever the table becomes empty.
    emptied: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct Table {
    fills: HashMap<Digest, Arc<Fill>>,
    /// Recent fills that ended with their blob in the store, and the epoch
    /// at which they left the table (bounded: the oldest are forgotten).
    committed: HashMap<Digest, u64>,
    order: VecDeque<Digest>,
    /// Counts fills that left the table with their blob committed.
    epoch: u64,
}

/// How many committed fills the table remembers.
const REMEMBERED: usize = 4096;

/// Whether the caller must run the download (it holds the writer) or
/// joined an existing one.
pub(crate) enum Joined {
    Leader(FillWriter),
    Follower(Arc<Fill>),
}

impl Fills {
    /// A table whose fills' windows share `budget` bytes.
    pub(crate) fn new(budget: u64) -> Self {
        Self {
            budget: Budget::new(budget),
            ..Self::default()
        }
    }

    /// Blob downloads under way now.
    pub(crate) fn count(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .fills
            .len()
    }

    /// Bytes the fills' windows hold now.
    pub(crate) fn memory(&self) -> usize {
        self.budget.used()
    }

    /// The current epoch: read it before looking in the store, and pass it
    /// to [`join`](Self::join).
    pub(crate) fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Joins the fill for `digest`, creating it when there is none. `None`
    /// when a fill of `digest` committed its blob after `since` (the epoch
    /// read before the caller missed it in the store): the store has it now,
    /// so no download starts again.
    pub(crate) fn join(self: &Arc<Self>, digest: &Digest, since: u64) -> Option<Joined> {
        let mut t = self.lock();
        if let Some(f) = t.fills.get(digest) {
            return Some(Joined::Follower(f.clone()));
        }
        if t.committed.get(digest).is_some_and(|at| *at > since) {
            return None;
        }
        let (state, _) = watch::channel(FillState::Starting);
        let fill = Arc::new(Fill {
            state,
            reader: OnceLock::new(),
            window: Mutex::new(Window::sharing(self.budget.clone())),
            streamed: Default::default(),
            origin: OnceLock::new(),
            started: std::time::Instant::now(),
        });
        t.fills.insert(digest.clone(), fill.clone());
        Some(Joined::Leader(FillWriter {
            fill,
            fills: self.clone(),
            digest: digest.clone(),
            committed: false,
        }))
    }

    /// Removes `fill` from the table (only if it is still the entry for
    /// `digest`); `committed`: its blob is in the store.
    fn remove(&self, digest: &Digest, fill: &Arc<Fill>, committed: bool) {
        let mut t = self.lock();
        if !t.fills.get(digest).is_some_and(|f| Arc::ptr_eq(f, fill)) {
            return;
        }
        t.fills.remove(digest);
        if committed {
            t.epoch += 1;
            let epoch = t.epoch;
            if t.committed.insert(digest.clone(), epoch).is_none() {
                t.order.push_back(digest.clone());
            }
            while t.order.len() > REMEMBERED {
                if let Some(old) = t.order.pop_front() {
                    t.committed.remove(&old);
                }
            }
        }
        if t.fills.is_empty() {
            self.emptied.notify_waiters();
        }
    }

    /// How many fills are running.
    pub(crate) fn len(&self) -> usize {
        self.lock().fills.len()
    }

    /// Waits until no fill is running.
    pub(crate) async fn drained(&self) {
        loop {
            // Registered before the check, so a removal in between wakes us.
            let emptied = self.emptied.notified();
            if self.len() == 0 {
                return;
            }
            emptied.await;
        }
    }

    /// The downloads under way, the oldest first.
    pub(crate) fn downloads(&self) -> Vec<Download> {
        let fills: Vec<_> = self
            .lock()
            .fills
            .iter()
            .map(|(d, f)| (d.clone(), f.clone()))
            .collect();
        let mut out: Vec<Download> = fills
            .into_iter()
            .map(|(digest, f)| {
                let (received, size) = match &*f.state.borrow() {
                    FillState::Starting | FillState::Failed(_) => (0, None),
                    FillState::Streaming { size, written } => (*written, *size),
                    FillState::Done { size } => (*size, Some(*size)),
                };
                Download {
                    digest,
                    origin: f.origin.get().cloned(),
                    received,
                    size,
                    elapsed: f.started.elapsed(),
                }
            })
            .collect();
        out.sort_by_key(|d| std::cmp::Reverse(d.elapsed));
        out
    }

    /// The fill for `digest`, if one is running.
    pub(crate) fn get(&self, digest: &Digest) -> Option<Arc<Fill>> {
        self.lock().fills.get(digest).cloned()
    }
}

// The reader side: what a reader may read, and the stream it reads.

struct Reader {
    fill: Arc<Fill>,
    rx: watch::Receiver<FillState>,
    pos: u64,
    end: Option<u64>,
    finished: bool,
}

/// What a reader may read now, from a snapshot of the fill's state.
enum Readable {
    Upto(u64),
    Complete(u64),
    Failed(Error),
}

fn readable(state: &FillState) -> Readable {
    match state {
        FillState::Starting => Readable::Upto(0),
        // Hold back the final byte (and anything past the announced size)
        // until the blob is verified.
        FillState::Streaming {
            size: Some(size),
            written,
        } => Readable::Upto((*written).min(size.saturating_sub(1))),
        FillState::Streaming {
            size: None,
            written,
        } => Readable::Upto(*written),
        FillState::Done { size } => Readable::Complete(*size),
        FillState::Failed(e) => Readable::Failed(e.clone()),
    }
}

fn fill_stream(
    fill: Arc<Fill>,
    start: u64,
    end: Option<u64>,
) -> BoxStream<'static, io::Result<Bytes>> {
    let rx = fill.state.subscribe();
    let reader = Reader {
        fill,
        rx,
        pos: start,
        end,
        finished: false,
    };
    stream::unfold(reader, |mut r| async move {
        if r.finished {
            return None;
        }
        loop {
            let snapshot = readable(&r.rx.borrow_and_update());
            let (limit, complete) = match snapshot {
                Readable::Upto(n) => (n, None),
                Readable::Complete(n) => (n, Some(n)),
                Readable::Failed(e) => {
                    r.finished = true;
                    return Some((Err(io::Error::other(e)), r));
                }
            };
            let limit = r.end.map_or(limit, |e| e.min(limit));
            if r.pos < limit {
                let chunk = crate::pace::chunk_size() as u64;
                let want = (limit - r.pos).min(chunk) as usize;
                let (found, spent) = {
                    let w = r.fill.lock_window();
                    (w.find(r.pos, want), w.budget.spent())
                };
                match found {
                    // Keeping up: upstream's own chunks, no copy. While
                    // memory is short, a copy of just these bytes: the
                    // chunk would keep upstream's whole read buffer alive
                    // until the client has it.
                    Found::Memory(b) if !b.is_empty() => {
                        r.pos += b.len() as u64;
                        let b = if spent { Bytes::copy_from_slice(&b) } else { b };
                        return Some((Ok(b), r));
                    }
                    Found::Memory(_) => {
                        // Published bytes are always in the window first.
                        r.finished = true;
                        let e = io::Error::other("download window is behind its state");
                        return Some((Err(e), r));
                    }
                    Found::File { upto } => {
                        let Some(spool) = r.fill.reader.get() else {
                            r.finished = true;
                            return Some((Err(io::Error::other("fill has no reader")), r));
                        };
                        let len = (limit.min(upto) - r.pos).min(chunk) as usize;
                        match spool.read_at(r.pos, len).await {
                            Ok(b) if b.is_empty() => {
                                r.finished = true;
                                let e = io::Error::new(
                                    io::ErrorKind::UnexpectedEof,
                                    "download file is shorter than announced",
                                );
                                return Some((Err(e), r));
                            }
                            Ok(b) => {
                                r.pos += b.len() as u64;
                                return Some((Ok(b), r));
                            }
                            Err(e) => {
                                r.finished = true;
                                return Some((Err(e), r));
                            }
                        }
                    }
                    Found::Gone => {
                        r.finished = true;
                        let e = io::Error::other("client fell behind a pass-through download");
                        return Some((Err(e), r));
                    }
                }
            }
            let at_end = r.end.is_some_and(|e| r.pos >= e) || complete.is_some_and(|c| r.pos >= c);
            if at_end {
                return None;
            }
            if r.rx.changed().await.is_err() {
                r.finished = true;
                return Some((Err(io::Error::other("blob download vanished")), r));
            }
        }
    })
    .boxed()
}

/// Waits until upstream answered: returns the announced size or the error.
async fn ready(fill: &Fill) -> Result<Option<u64>, Error> {
    let mut rx = fill.state.subscribe();
    loop {
        let size = match &*rx.borrow_and_update() {
            FillState::Starting => None,
            FillState::Streaming { size, .. } => Some(*size),
            FillState::Done { size } => Some(Some(*size)),
            // The caller answers with this error, and logs it.
            FillState::Failed(e) => return Err(e.clone()),
        };
        if let Some(size) = size {
            fill.streamed
                .store(true, std::sync::atomic::Ordering::Relaxed);
            return Ok(size);
        }
        if rx.changed().await.is_err() {
            return Err(Error::Interrupted);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[tokio::test]
    async fn drained_waits_for_the_last_fill() {
        let fills = Arc::new(Fills::default());
        // Nothing running: drained at once.
        fills.drained().await;
        let a = format!("sha256:{}", "a".repeat(64))
            .parse::<Digest>()
            .unwrap();
        let b = format!("sha256:{}", "b".repeat(64))
            .parse::<Digest>()
            .unwrap();
        let Some(Joined::Leader(wa)) = fills.join(&a, 0) else {
            panic!("first join leads");
        };
        let Some(Joined::Leader(wb)) = fills.join(&b, 0) else {
            panic!("first join leads");
        };
        let waiter = tokio::spawn({
            let fills = fills.clone();
            async move { fills.drained().await }
        });
        wa.finish(Ok(Stored::Cached(1)));
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "one fill still runs");
        assert_eq!(fills.len(), 1);
        drop(wb);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("drained once the table is empty")
            .unwrap();
    }

    #[test]
    fn a_fill_committed_since_the_store_miss_is_not_started_again() {
        let fills = Arc::new(Fills::default());
        let d = Digest::sha256_of(b"blob");
        let before = fills.epoch();
        let Some(Joined::Leader(f)) = fills.join(&d, before) else {
            panic!("first join leads");
        };
        // A second request missed the store while the fill ran...
        let missed_at = fills.epoch();
        f.finish(Ok(Stored::Cached(4)));
        // ...and arrives after the commit: the store has the blob.
        assert!(fills.join(&d, missed_at).is_none());
        // A request that looked in the store after the commit leads anew
        // (the blob was evicted meanwhile, say).
        let Some(Joined::Leader(g)) = fills.join(&d, fills.epoch()) else {
            panic!("a fresh miss leads");
        };
        // A failed fill does not count as committed.
        let missed_at = fills.epoch();
        g.finish(Err(Error::Interrupted));
        assert!(matches!(fills.join(&d, missed_at), Some(Joined::Leader(_))));
    }

    #[test]
    fn window_keeps_what_is_not_on_disk_yet() {
        let mut w = Window::default();
        let chunk = Bytes::from(vec![7u8; WINDOW / 2]);
        for _ in 0..4 {
            w.push(chunk.clone());
        }
        // Nothing written yet: all of it stays, past the nominal size.
        assert_eq!(w.find(0, 10), Found::Memory(chunk.slice(0..10)));
        let q = chunk.len() as u64;
        // Reads stop at a chunk boundary; the end of what arrived is empty.
        assert_eq!(w.find(q - 3, 10).len_in_memory(), Some(3));
        assert_eq!(w.find(4 * q, 10), Found::Memory(Bytes::new()));
        // Written: the window lets go of the oldest, which the file has.
        w.set_on_disk(3 * q);
        assert_eq!(w.find(0, 10), Found::File { upto: 3 * q });
        assert_eq!(w.find(q + 1, 10), Found::File { upto: 3 * q });
        assert_eq!(w.find(2 * q, 10).len_in_memory(), Some(10));
        assert!(w.len <= WINDOW);
        // Every byte is in memory or on disk.
        assert!(w.base <= w.on_disk);
    }

    #[test]
    fn windows_share_one_budget_and_give_back_what_they_held() {
        let budget = Budget::new(3 << 20);
        let mut a = Window::sharing(budget.clone());
        let mut b = Window::sharing(budget.clone());
        let chunk = Bytes::from(vec![1u8; 1 << 20]);
        for _ in 0..2 {
            a.push(chunk.clone());
            b.push(chunk.clone());
        }
        // 4 MiB held, over the 3 MiB budget, but none of it on disk yet:
        // the only copy stays.
        assert_eq!(budget.used(), 4 << 20);
        a.set_on_disk(2 << 20);
        // On disk and over budget: `a` keeps only its newest chunk (a
        // window always keeps one), though it is far under WINDOW.
        assert_eq!(a.len, 1 << 20);
        assert_eq!(a.find(0, 10), Found::File { upto: 2 << 20 });
        assert_eq!(budget.used(), 3 << 20);
        // Within the budget again: `b` keeps its on-disk bytes for readers.
        b.set_on_disk(2 << 20);
        assert_eq!(b.len, 2 << 20);
        assert_eq!(b.find(0, 10).len_in_memory(), Some(10));
        // A verified fill lets go of everything on disk at once.
        b.release();
        assert_eq!((b.len, budget.used()), (0, 1 << 20));
        assert_eq!(b.find(0, 10), Found::File { upto: 2 << 20 });
        drop((a, b));
        assert_eq!(budget.used(), 0, "a dropped window gives its memory back");
    }

    #[test]
    fn pass_through_window_reads_and_forgets() {
        let mut w = Window::default();
        w.start_pass_through(100);
        // (bytes before 100 are in the file)
        w.base = 100;
        let chunk = Bytes::from(vec![7u8; SPILL_WINDOW / 4]);
        for _ in 0..4 {
            w.push(chunk.clone());
        }
        assert_eq!(w.find(100, 10).len_in_memory(), Some(10));
        assert_eq!(w.find(99, 10), Found::File { upto: 100 });
        let end = 100 + SPILL_WINDOW as u64;
        assert_eq!(w.find(end, 10), Found::Memory(Bytes::new()));
        // Beyond the window the oldest chunk goes; its readers fail.
        w.push(chunk);
        assert_eq!(w.find(100, 1), Found::Gone);
        let q = SPILL_WINDOW as u64 / 4;
        assert_eq!(w.find(100 + q, 1).len_in_memory(), Some(1));
        assert!(w.len <= SPILL_WINDOW);
    }

    impl Found {
        fn len_in_memory(&self) -> Option<usize> {
            match self {
                Found::Memory(b) => Some(b.len()),
                _ => None,
            }
        }
    }
}
