//! Private marks: which digests were fetched for private repositories, and
//! for which ones (`<upstream>/<repo>`).
//!
//! Blobs and manifests are shared by every repository, so without these
//! marks a client allowed to read only public repositories could ask for a
//! private layer by digest under a public name and get it from the store.
//! A marked digest is served to such a client only for a repository that
//! upstream confirms holds it (see `mirror`).
//!
//! The marks live in memory and in an append-only file `private-marks`
//! (`<digest> <upstream>/<repo>` per line, fsynced on every new mark;
//! marks are rare: once per digest and private repository). Eviction does
//! not remove marks: a mark for an absent blob is harmless.

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::Error;
use crate::oci::Digest;

/// The set of private marks.
#[derive(Debug)]
pub struct PrivateMarks {
    path: PathBuf,
    marks: Mutex<HashMap<Digest, HashSet<String>>>,
}

impl PrivateMarks {
    /// Loads the marks file (absent: no marks). Unparsable lines (a torn
    /// last line after a crash) are skipped.
    pub(crate) fn load(path: &Path) -> Result<Self, Error> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(Error::io("read", path)(e)),
        };
        let mut marks: HashMap<Digest, HashSet<String>> = HashMap::new();
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
        Ok(Self {
            path: path.to_owned(),
            marks: Mutex::new(marks),
        })
    }

    /// `None` if `digest` is not private; else whether `owner` is one of the
    /// private repositories it was fetched for.
    pub fn owned_by(&self, digest: &Digest, owner: &str) -> Option<bool> {
        let marks = self
            .marks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        marks.get(digest).map(|o| o.contains(owner))
    }

    /// Records that `digest` belongs to the private repository `owner`.
    /// Durable before it returns (the caller then fetches or serves).
    pub(crate) fn mark(&self, digest: &Digest, owner: &str) -> Result<(), Error> {
        let mut marks = self
            .marks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if marks.get(digest).is_some_and(|o| o.contains(owner)) {
            return Ok(());
        }
        // Appended under the lock, so lines never interleave.
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(Error::io("open", &self.path))?;
        f.write_all(format!("{digest} {owner}\n").as_bytes())
            .map_err(Error::io("append", &self.path))?;
        f.sync_data().map_err(Error::io("fsync", &self.path))?;
        marks
            .entry(digest.clone())
            .or_default()
            .insert(owner.to_owned());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_persist_and_skip_torn_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("private-marks");
        let d = Digest::sha256_of(b"secret layer");
        let m = PrivateMarks::load(&path).unwrap();
        assert_eq!(m.owned_by(&d, "hub/org/app"), None);
        m.mark(&d, "hub/org/app").unwrap();
        m.mark(&d, "hub/org/app").unwrap();
        assert_eq!(m.owned_by(&d, "hub/org/app"), Some(true));
        assert_eq!(m.owned_by(&d, "hub/public/app"), Some(false));
        // A torn line from a crash is ignored.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"sha256:12")
            .unwrap();
        let again = PrivateMarks::load(&path).unwrap();
        assert_eq!(again.owned_by(&d, "hub/org/app"), Some(true));
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 2);
    }
}
