//! The in-flight table: one upstream download per missing blob digest.
//!
//! The first request for a missing blob inserts a [`Fill`] and spawns the
//! download task; later requests find the `Fill` and join it. The download
//! task owns the `BlobWriter`, so it runs to the end (or failure) whether or
//! not any client is still reading: a client that disconnects never aborts
//! caching. Progress is published on a `watch` channel; readers stream the
//! temporary file up to the published length through their own read handle.
//! The entry is removed only after the blob is in the store (or the fill
//! failed), so a request never finds neither.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::watch;

use super::Error;
use crate::oci::Digest;

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
    /// from the spill and the temporary file's read handle without being
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
    /// Read handle on the temporary file, set before `Streaming` is first
    /// published (unless the temporary file could not even be created).
    pub(crate) reader: OnceLock<Arc<std::fs::File>>,
    /// Bytes that could not be written to disk, for pass-through.
    pub(crate) spill: Mutex<Spill>,
}

/// Pass-through when the store fails mid-download (disk full): bytes from
/// `on_disk` on live in memory, in a window of at most [`SPILL_WINDOW`]
/// bytes. A reader that falls behind the window fails (its client retries).
#[derive(Debug)]
pub(crate) struct Spill {
    /// Bytes readable from the temporary file (`u64::MAX`: all of them).
    pub(crate) on_disk: u64,
    /// Offset of the first byte in `chunks`.
    pub(crate) base: u64,
    pub(crate) chunks: std::collections::VecDeque<bytes::Bytes>,
    pub(crate) len: usize,
}

/// Most bytes a pass-through keeps in memory.
pub(crate) const SPILL_WINDOW: usize = 32 * 1024 * 1024;

impl Default for Spill {
    fn default() -> Self {
        Self {
            on_disk: u64::MAX,
            base: 0,
            chunks: std::collections::VecDeque::new(),
            len: 0,
        }
    }
}

impl Spill {
    /// Starts pass-through at `offset`.
    pub(crate) fn start(&mut self, offset: u64) {
        self.on_disk = offset;
        self.base = offset;
    }

    /// Appends a chunk, dropping the oldest beyond the window.
    pub(crate) fn push(&mut self, b: bytes::Bytes) {
        self.len += b.len();
        self.chunks.push_back(b);
        while self.len > SPILL_WINDOW && self.chunks.len() > 1 {
            if let Some(old) = self.chunks.pop_front() {
                self.len -= old.len();
                self.base += old.len() as u64;
            }
        }
    }

    /// Up to `max` bytes at `pos`; `None` if `pos` fell out of the window.
    pub(crate) fn read(&self, pos: u64, max: usize) -> Option<bytes::Bytes> {
        let mut at = self.base;
        if pos < at {
            return None;
        }
        for c in &self.chunks {
            let end = at + c.len() as u64;
            if pos < end {
                let from = (pos - at) as usize;
                let to = c.len().min(from + max);
                return Some(c.slice(from..to));
            }
            at = end;
        }
        Some(bytes::Bytes::new())
    }
}

/// The table of in-flight downloads, keyed by digest (blobs are shared by
/// every upstream).
#[derive(Debug, Default)]
pub(crate) struct Fills {
    map: Mutex<HashMap<Digest, Arc<Fill>>>,
    /// Woken whenever the table becomes empty.
    emptied: tokio::sync::Notify,
}

/// Whether the caller must start the download or joined an existing one.
pub(crate) enum Joined {
    Leader(Arc<Fill>),
    Follower(Arc<Fill>),
}

impl Fills {
    /// Joins the fill for `digest`, creating it when there is none. `exists`
    /// is checked under the lock when creating, so a fill that just finished
    /// (and left the table) is not started again: `None` means the blob is in
    /// the store now.
    pub(crate) fn join(&self, digest: &Digest, exists: impl FnOnce() -> bool) -> Option<Joined> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = map.get(digest) {
            return Some(Joined::Follower(f.clone()));
        }
        if exists() {
            return None;
        }
        let (state, _) = watch::channel(FillState::Starting);
        let fill = Arc::new(Fill {
            state,
            reader: OnceLock::new(),
            spill: Mutex::default(),
        });
        map.insert(digest.clone(), fill.clone());
        Some(Joined::Leader(fill))
    }

    /// Removes `fill` from the table (only if it is still the entry for
    /// `digest`).
    pub(crate) fn remove(&self, digest: &Digest, fill: &Arc<Fill>) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(digest).is_some_and(|f| Arc::ptr_eq(f, fill)) {
            map.remove(digest);
            if map.is_empty() {
                self.emptied.notify_waiters();
            }
        }
    }

    /// How many fills are running.
    pub(crate) fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
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
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(digest).cloned()
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
        let a = format!("sha256:{}", "a".repeat(64)).parse::<Digest>().unwrap();
        let b = format!("sha256:{}", "b".repeat(64)).parse::<Digest>().unwrap();
        let Some(Joined::Leader(fa)) = fills.join(&a, || false) else {
            panic!("first join leads");
        };
        let Some(Joined::Leader(fb)) = fills.join(&b, || false) else {
            panic!("first join leads");
        };
        let waiter = tokio::spawn({
            let fills = fills.clone();
            async move { fills.drained().await }
        });
        fills.remove(&a, &fa);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "one fill still runs");
        assert_eq!(fills.len(), 1);
        fills.remove(&b, &fb);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("drained once the table is empty")
            .unwrap();
    }

    #[test]
    fn spill_window_reads_and_forgets() {
        let mut s = Spill::default();
        s.start(100);
        let chunk = Bytes::from(vec![7u8; SPILL_WINDOW / 4]);
        for _ in 0..4 {
            s.push(chunk.clone());
        }
        assert_eq!(s.read(100, 10).unwrap().len(), 10);
        assert_eq!(s.read(99, 10), None);
        // The end of what was pushed: nothing more yet.
        let end = 100 + SPILL_WINDOW as u64;
        assert_eq!(s.read(end, 10).unwrap().len(), 0);
        // Reads stop at a chunk boundary.
        let q = SPILL_WINDOW as u64 / 4;
        assert_eq!(s.read(100 + q - 3, 10).unwrap().len(), 3);
        // Beyond the window the oldest chunk goes; its readers fail.
        s.push(chunk);
        assert_eq!(s.read(100, 1), None);
        assert_eq!(s.read(100 + q, 1).unwrap().len(), 1);
        assert!(s.len <= SPILL_WINDOW);
    }
}
