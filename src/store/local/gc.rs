//! Bounded disk: least-recently-used eviction of blobs.
//!
//! The last access of a blob is its file's modification time: written when
//! the blob is committed, and refreshed (at most once a minute) when it is
//! served. When the blobs exceed `max_size` (the high watermark), the oldest
//! are deleted until they fit in `low` (90% of it). Blobs being served are
//! never chosen; blobs being written live in `tmp/` and are not candidates.
//! Deciding (`plan`) is pure; deleting is separate.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use super::layout::Layout;
use crate::oci::Digest;
use crate::store::Error;

/// A stored blob as eviction sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its digest.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    /// Last access.
    pub accessed: SystemTime,
}

/// Chooses the blobs to delete: none while `total <= high`; otherwise the
/// least recently accessed ones not `in_use`, until the rest fits in `low`.
pub fn plan(
    mut entries: Vec<Entry>,
    high: u64,
    low: u64,
    in_use: impl Fn(&Digest) -> bool,
) -> Vec<Entry> {
    let mut total: u64 = entries.iter().map(|e| e.size).sum();
    if total <= high {
        return Vec::new();
    }
    entries.sort_by(|a, b| {
        a.accessed
            .cmp(&b.accessed)
            .then_with(|| a.digest.cmp(&b.digest))
    });
    let mut victims = Vec::new();
    for e in entries {
        if total <= low {
            break;
        }
        if in_use(&e.digest) {
            continue;
        }
        total -= e.size;
        victims.push(e);
    }
    victims
}

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

impl Layout {
    /// Every stored blob with size and last access. Blocking.
    pub(crate) fn entries(&self) -> Result<Vec<Entry>, Error> {
        let mut out = Vec::new();
        let mut stack = vec![self.root().join("blobs")];
        while let Some(dir) = stack.pop() {
            let rd = match std::fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("readdir", &dir)(e)),
            };
            for entry in rd {
                let entry = entry.map_err(Error::io("readdir", &dir))?;
                let path = entry.path();
                let Ok(meta) = entry.metadata() else { continue };
                if meta.is_dir() {
                    stack.push(path);
                    continue;
                }
                let Some(digest) = digest_of(&path) else {
                    continue;
                };
                out.push(Entry {
                    digest,
                    size: meta.len(),
                    accessed: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                });
            }
        }
        Ok(out)
    }

    /// One eviction pass. Blocking.
    pub(crate) fn gc(&self, high: u64, low: u64, in_use: &InUse) -> Result<GcReport, Error> {
        let entries = self.entries()?;
        let before: u64 = entries.iter().map(|e| e.size).sum();
        let victims = plan(entries, high, low, |d| in_use.contains(d));
        let mut after = before;
        for v in &victims {
            let path = self.blob(&v.digest);
            match std::fs::remove_file(&path) {
                Ok(()) => after -= v.size,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => after -= v.size,
                Err(e) => return Err(Error::io("evict", &path)(e)),
            }
        }
        if !victims.is_empty() {
            tracing::info!(
                before,
                after,
                evicted = victims.len(),
                "evicted least recently used blobs"
            );
        }
        Ok(GcReport {
            before,
            after,
            evicted: victims.len(),
        })
    }
}

/// The digest a blob path is named by (`blobs/<alg>/<xx>/<hex>`).
fn digest_of(path: &Path) -> Option<Digest> {
    let hex = path.file_name()?.to_str()?;
    let alg = path.parent()?.parent()?.file_name()?.to_str()?;
    format!("{alg}:{hex}").parse().ok()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn e(n: u8, size: u64, age_s: u64) -> Entry {
        Entry {
            digest: Digest::sha256_of(&[n]),
            size,
            accessed: SystemTime::UNIX_EPOCH + Duration::from_secs(1000 - age_s),
        }
    }

    #[test]
    fn plan_evicts_oldest_to_the_low_watermark_and_skips_in_use() {
        let entries = vec![e(1, 40, 10), e(2, 40, 50), e(3, 40, 30), e(4, 40, 5)];
        // 160 bytes, high 150: evict down to 100 -> the two oldest (2, 3).
        let v = plan(entries.clone(), 150, 100, |_| false);
        assert_eq!(v, vec![entries[1].clone(), entries[2].clone()]);
        // Under the high watermark: nothing.
        assert!(plan(entries.clone(), 160, 100, |_| false).is_empty());
        // The oldest is being served: skip it, take the next ones.
        let busy = entries[1].digest.clone();
        let v = plan(entries.clone(), 150, 100, |d| *d == busy);
        assert_eq!(v, vec![entries[2].clone(), entries[0].clone()]);
        // Everything in use: nothing to do.
        assert!(plan(entries, 10, 5, |_| true).is_empty());
    }

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
