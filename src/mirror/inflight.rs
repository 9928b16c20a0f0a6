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
    /// Verified and committed to the store.
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
    /// published.
    pub(crate) reader: OnceLock<Arc<std::fs::File>>,
}

/// The table of in-flight downloads, keyed by digest (blobs are shared by
/// every upstream).
#[derive(Debug, Default)]
pub(crate) struct Fills {
    map: Mutex<HashMap<Digest, Arc<Fill>>>,
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
        }
    }

    /// The fill for `digest`, if one is running.
    pub(crate) fn get(&self, digest: &Digest) -> Option<Arc<Fill>> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(digest).cloned()
    }
}
