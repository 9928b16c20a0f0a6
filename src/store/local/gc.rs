//! Bounded disk: what eviction must not touch, and what a pass did.
//!
//! The last access of a blob is kept in the index (and in its file's
//! modification time, which a rebuild of the index reads): written when the
//! blob is committed, and refreshed (at most once a minute) when it is
//! served. When the blobs exceed `max_size` (the high watermark), the
//! oldest are deleted until they fit in 90% of it. Blobs being served are
//! never chosen; blobs being written live in `tmp/` and are not candidates.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::oci::Digest;

/// Digests currently being served, with a count per digest.
#[derive(Debug, Default)]
pub struct InUse(Mutex<HashMap<Digest, usize>>);

impl InUse {
    /// Marks `digest` in use until the guard drops.
    pub fn hold(self: &Arc<Self>, digest: &Digest) -> InUseGuard {
        *self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(digest.clone())
            .or_default() += 1;
        InUseGuard {
            set: self.clone(),
            digest: digest.clone(),
        }
    }

    /// Whether `digest` is being served.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(digest)
    }
}

/// Keeps a blob from eviction while it is being served.
#[derive(Debug)]
pub struct InUseGuard {
    set: Arc<InUse>,
    digest: Digest,
}

impl InUseGuard {
    /// Another hold on the same blob.
    pub(crate) fn again(&self) -> InUseGuard {
        self.set.hold(&self.digest)
    }
}

impl Drop for InUseGuard {
    fn drop(&mut self) {
        let mut m = self.set.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.digest) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.digest);
            }
        }
    }
}

/// What one eviction pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    /// Bytes stored before.
    pub before: u64,
    /// Bytes stored after.
    pub after: u64,
    /// Blobs deleted.
    pub evicted: usize,
}

/// The digest a blob path is named by (`blobs/<alg>/<xx>/<hex>`).
pub(super) fn digest_of(path: &Path) -> Option<Digest> {
    let hex = path.file_name()?.to_str()?;
    let alg = path.parent()?.parent()?.file_name()?.to_str()?;
    format!("{alg}:{hex}").parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_use_guards_count() {
        let s = Arc::new(InUse::default());
        let d = Digest::sha256_of(b"x");
        let g1 = s.hold(&d);
        let g2 = s.hold(&d);
        drop(g1);
        assert!(s.contains(&d));
        drop(g2);
        assert!(!s.contains(&d));
    }
}
