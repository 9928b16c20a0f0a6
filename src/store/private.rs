//! Private marks: which digests were fetched for private repositories, and
//! for which ones (`<upstream>/<repo>`).
//!
//! Blobs and manifests are shared by every repository, so without these
//! marks a client allowed to read only public repositories could ask for a
//! private layer by digest under a public name and get it from the store.
//! A marked digest is served to such a client only for a repository that
//! upstream confirms holds it (see `mirror`).
//!
//! The marks live in memory and as one record each in the backend's records
//! (`private/<alg>/<hex>/<upstream>/<repo…>`), written before the mark is
//! used; marks are rare: once per digest and private repository. A store
//! from before the records kept them in an append-only `private-marks`
//! file, which is still read. Eviction does not remove marks: a mark for an
//! absent blob is harmless.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::records::{RecordKey, Records};
use super::{Error, blocking};
use crate::oci::Digest;

/// The set of private marks.
#[derive(Debug)]
pub struct PrivateMarks {
    records: Arc<dyn Records>,
    marks: Mutex<HashMap<Digest, HashSet<String>>>,
    /// Whether every stored mark is loaded. Until then (the records could
    /// not be read at start: S3 down) every digest counts as private
    /// elsewhere, so a client that may not read private content gets it only
    /// after upstream confirms its repository holds it (fail closed).
    complete: std::sync::atomic::AtomicBool,
}

fn key(digest: &Digest, owner: &str) -> Option<RecordKey> {
    RecordKey::from_parts(["private", digest.algorithm().as_str(), digest.hex(), owner])
}

impl PrivateMarks {
    /// Loads the marks from `records`, and from the legacy marks file
    /// `legacy` when there is one (unparsable lines, such as a torn last
    /// line after a crash, are skipped).
    pub(crate) async fn load(
        records: Arc<dyn Records>,
        legacy: Option<&Path>,
    ) -> Result<Self, Error> {
        let mut marks: HashMap<Digest, HashSet<String>> = HashMap::new();
        let prefix = RecordKey::from_parts(["private"]).expect("a valid key");
        for k in records.list(&prefix).await? {
            let parts: Vec<&str> = k.components().collect();
            // private / alg / hex / upstream / repo…
            if parts.len() < 5 {
                continue;
            }
            let Ok(d) = format!("{}:{}", parts[1], parts[2]).parse::<Digest>() else {
                continue;
            };
            marks.entry(d).or_default().insert(parts[3..].join("/"));
        }
        if let Some(path) = legacy {
            let path = path.to_owned();
            let text = blocking(move || match std::fs::read_to_string(&path) {
                Ok(t) => Ok(t),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
                Err(e) => Err(Error::io("read", &path)(e)),
            })
            .await?;
            for line in text.lines() {
                let Some((d, owner)) = line.split_once(' ') else {
                    continue;
                };
                let Ok(d) = d.parse::<Digest>() else { continue };
                if owner.is_empty() || owner.contains(char::is_whitespace) {
                    continue;
                }
                marks.entry(d).or_default().insert(owner.to_owned());
            }
        }
        Ok(Self {
            records,
            marks: Mutex::new(marks),
            complete: std::sync::atomic::AtomicBool::new(true),
        })
    }

    /// [`load`](Self::load), or, when the records cannot be read now, an
    /// incomplete set (see `complete`) that a background task fills once
    /// they can.
    pub(crate) async fn load_or_retry(
        records: Arc<dyn Records>,
        legacy: Option<&Path>,
    ) -> Arc<Self> {
        let e = match Self::load(records.clone(), legacy).await {
            Ok(m) => return Arc::new(m),
            Err(e) => e,
        };
        tracing::error!(error = %crate::error_chain(&e),
            "cannot load the private marks; until they load, private-looking content needs upstream's confirmation");
        let marks = Arc::new(Self {
            records: records.clone(),
            marks: Mutex::default(),
            complete: std::sync::atomic::AtomicBool::new(false),
        });
        let (weak, legacy) = (Arc::downgrade(&marks), legacy.map(Path::to_owned));
        tokio::spawn(async move {
            let mut wait = std::time::Duration::from_secs(1);
            loop {
                tokio::time::sleep(wait).await;
                let Some(marks) = weak.upgrade() else { return };
                match Self::load(records.clone(), legacy.as_deref()).await {
                    Ok(loaded) => {
                        let all = loaded.marks.into_inner().unwrap_or_else(|p| p.into_inner());
                        let mut m = marks.marks.lock().unwrap_or_else(|p| p.into_inner());
                        for (d, owners) in all {
                            m.entry(d).or_default().extend(owners);
                        }
                        marks
                            .complete
                            .store(true, std::sync::atomic::Ordering::SeqCst);
                        tracing::info!("private marks loaded");
                        return;
                    }
                    Err(_) => wait = (wait * 2).min(std::time::Duration::from_secs(60)),
                }
            }
        });
        marks
    }

    /// Reads the stored marks of `digest` again, for replicas that share
    /// the records: another replica may have marked it since this one
    /// loaded them. A failure leaves the marks as they were (and counts the
    /// digest as private elsewhere, failing closed).
    pub async fn refresh(&self, digest: &Digest) -> bool {
        let Some(prefix) =
            RecordKey::from_parts(["private", digest.algorithm().as_str(), digest.hex()])
        else {
            return false;
        };
        match self.records.list(&prefix).await {
            Ok(keys) => {
                let owners: Vec<String> = keys
                    .iter()
                    .filter_map(|k| {
                        let parts: Vec<&str> = k.components().collect();
                        (parts.len() >= 5).then(|| parts[3..].join("/"))
                    })
                    .collect();
                if !owners.is_empty() {
                    self.marks
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .entry(digest.clone())
                        .or_default()
                        .extend(owners);
                }
                true
            }
            Err(e) => {
                tracing::warn!(%digest, error = %crate::error_chain(&e),
                    "cannot read the private marks of a digest; treating it as private elsewhere");
                false
            }
        }
    }

    /// `None` if `digest` is not private; else whether `owner` is one of the
    /// private repositories it was fetched for.
    pub fn owned_by(&self, digest: &Digest, owner: &str) -> Option<bool> {
        let marks = self
            .marks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match marks.get(digest) {
            Some(o) => Some(o.contains(owner)),
            None if !self.complete.load(std::sync::atomic::Ordering::SeqCst) => Some(false),
            None => None,
        }
    }

    /// The owners of `digest`'s marks.
    pub fn owners(&self, digest: &Digest) -> Vec<String> {
        let marks = self
            .marks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        marks
            .get(digest)
            .map(|o| o.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The marked digests whose owners satisfy `pred`.
    pub fn digests_where(&self, pred: impl Fn(&HashSet<String>) -> bool) -> Vec<Digest> {
        let marks = self
            .marks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        marks
            .iter()
            .filter(|(_, o)| pred(o))
            .map(|(d, _)| d.clone())
            .collect()
    }

    /// Records that `digest` belongs to the private repository `owner`
    /// (`<upstream>/<repo>`). Durable before it returns (the caller then
    /// fetches or serves).
    pub(crate) async fn mark(&self, digest: &Digest, owner: &str) -> Result<(), Error> {
        if self.owned_by(digest, owner) == Some(true) {
            return Ok(());
        }
        let Some(k) = key(digest, owner) else {
            return Err(Error::io("mark private", Path::new(owner))(
                std::io::Error::other("not a repository name"),
            ));
        };
        self.records.put(&k, Bytes::new()).await?;
        self.marks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(digest.clone())
            .or_default()
            .insert(owner.to_owned());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;
    use crate::store::local::LocalBlobs;
    use crate::store::records::FsRecords;

    #[tokio::test]
    async fn marks_persist_and_legacy_file_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let records: Arc<dyn Records> = Arc::new(FsRecords::new(
            LocalBlobs::open(dir.path(), None).await.unwrap(),
        ));
        let legacy = dir.path().join("private-marks");
        let d = Digest::sha256_of(b"secret layer");
        let m = PrivateMarks::load(records.clone(), Some(&legacy))
            .await
            .unwrap();
        assert_eq!(m.owned_by(&d, "hub/org/app"), None);
        m.mark(&d, "hub/org/app").await.unwrap();
        m.mark(&d, "hub/org/app").await.unwrap();
        assert_eq!(m.owned_by(&d, "hub/org/app"), Some(true));
        assert_eq!(m.owned_by(&d, "hub/public/app"), Some(false));
        assert!(m.mark(&d, "hub/../x").await.is_err());
        // An older store's marks file, with a torn last line from a crash.
        let old = Digest::sha256_of(b"older secret");
        let mut f = std::fs::File::create(&legacy).unwrap();
        write!(f, "{old} hub/org/old\nsha256:12").unwrap();
        let again = PrivateMarks::load(records, Some(&legacy)).await.unwrap();
        assert_eq!(again.owned_by(&d, "hub/org/app"), Some(true));
        assert_eq!(again.owned_by(&old, "hub/org/old"), Some(true));
    }
}
