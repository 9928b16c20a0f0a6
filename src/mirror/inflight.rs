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
use std::sync::{Arc, Mutex, OnceLock};

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

/// One in-flight download.
#[derive(Debug)]
pub(crate) struct Fill {
    pub(crate) state: watch::Sender<FillState>,
    /// The writer's spool, set before `Streaming` is first published
    /// (unless the store could not even start the write).
    pub(crate) reader: OnceLock<Spool>,
    /// The most recently received bytes, served to readers from memory.
    pub(crate) window: Mutex<Window>,
    /// Set once a reader has started its response: a failure after that
    /// breaks bodies that are already under way, which no request can
    /// report, so the download task logs it.
    pub(crate) streamed: std::sync::atomic::AtomicBool,
}

/// The newest bytes of a download, kept in memory so that readers keeping
/// up with it get upstream's chunks as they arrive (no copy, no wait for
/// the disk write) and readers behind it read the temporary file.
///
/// Normally the window only lets go of bytes that are already in the
/// temporary file (`on_disk`), so every byte is in one place or the other,
/// and it keeps at most [`WINDOW`] bytes beyond those. When the store fails
/// mid-download (disk full) it becomes a pass-through: `on_disk` stops
/// where the file does, the window keeps at most [`SPILL_WINDOW`] bytes,
/// and a reader that falls behind it fails (its client retries).
#[derive(Debug, Default)]
pub(crate) struct Window {
    /// Bytes readable from the temporary file.
    on_disk: u64,
    /// The store failed: nothing more goes to the file.
    pass_through: bool,
    /// Offset of the first byte in `chunks`.
    base: u64,
    chunks: std::collections::VecDeque<bytes::Bytes>,
    len: usize,
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
    /// Appends a received chunk.
    pub(crate) fn push(&mut self, b: bytes::Bytes) {
        self.len += b.len();
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

/// Whether the caller must start the download or joined an existing one.
pub(crate) enum Joined {
    Leader(Arc<Fill>),
    Follower(Arc<Fill>),
}

impl Fills {
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
    pub(crate) fn join(&self, digest: &Digest, since: u64) -> Option<Joined> {
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
            window: Mutex::default(),
            streamed: Default::default(),
        });
        t.fills.insert(digest.clone(), fill.clone());
        Some(Joined::Leader(fill))
    }

    /// Removes `fill` from the table (only if it is still the entry for
    /// `digest`); `committed`: its blob is in the store.
    pub(crate) fn remove(&self, digest: &Digest, fill: &Arc<Fill>, committed: bool) {
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

    /// The fill for `digest`, if one is running.
    pub(crate) fn get(&self, digest: &Digest) -> Option<Arc<Fill>> {
        self.lock().fills.get(digest).cloned()
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
        let Some(Joined::Leader(fa)) = fills.join(&a, 0) else {
            panic!("first join leads");
        };
        let Some(Joined::Leader(fb)) = fills.join(&b, 0) else {
            panic!("first join leads");
        };
        let waiter = tokio::spawn({
            let fills = fills.clone();
            async move { fills.drained().await }
        });
        fills.remove(&a, &fa, true);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "one fill still runs");
        assert_eq!(fills.len(), 1);
        fills.remove(&b, &fb, false);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("drained once the table is empty")
            .unwrap();
    }

    #[test]
    fn a_fill_committed_since_the_store_miss_is_not_started_again() {
        let fills = Fills::default();
        let d = Digest::sha256_of(b"blob");
        let before = fills.epoch();
        let Some(Joined::Leader(f)) = fills.join(&d, before) else {
            panic!("first join leads");
        };
        // A second request missed the store while the fill ran...
        let missed_at = fills.epoch();
        fills.remove(&d, &f, true);
        // ...and arrives after the commit: the store has the blob.
        assert!(fills.join(&d, missed_at).is_none());
        // A request that looked in the store after the commit leads anew
        // (the blob was evicted meanwhile, say).
        let Some(Joined::Leader(g)) = fills.join(&d, fills.epoch()) else {
            panic!("a fresh miss leads");
        };
        // A failed fill does not count as committed.
        let missed_at = fills.epoch();
        fills.remove(&d, &g, false);
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
