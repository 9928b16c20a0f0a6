//! Metadata records: small values under `/`-separated keys (tag records,
//! manifest records, repository marks, private marks), kept by a backend
//! beside its blobs: files under the local root, or objects in the bucket.
//!
//! ```text
//! manifests/sha256/ab/ab12…ef                 manifest record: media type + size (JSON)
//! repos/<upstream>/<repo…>/_tags/<tag>.<class> tag record: digest, media type, checked-at (JSON)
//! repos/<upstream>/<repo…>/_tags/.repo        the repository has cached content (empty)
//! private/sha256/<hex>/<upstream>/<repo…>     the digest was fetched for that private repository
//! repos/<upstream>/<repo…>/_tags/@<digest>    the repository's manifest was pulled by digest (empty)
//! pins/<upstream>/<repo…>/_pins/<tag|@digest> a pin: eviction keeps the image (JSON; see `inventory`)
//! ```
//!
//! Keys are only built from validated types (`Digest`, `UpstreamId`,
//! `RepoName`, `Tag`), and [`RecordKey`] refuses empty, `.` and `..`
//! components besides, so a key never names anything outside its root.

use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_util::future::BoxFuture;

use super::local::LocalBlobs;
use super::{Error, blocking};

/// A record's key: `/`-separated components, none empty, `.` or `..`, and
/// no NUL or backslash.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordKey(String);

impl RecordKey {
    /// Joins components into a key. `None` when a component is unsafe
    /// (callers build keys from validated names, so this is a second line).
    pub fn from_parts<'a>(parts: impl IntoIterator<Item = &'a str>) -> Option<Self> {
        let mut s = String::new();
        for p in parts {
            for c in p.split('/') {
                if c.is_empty() || c == "." || c == ".." || c.contains(['\0', '\\']) {
                    return None;
                }
                if !s.is_empty() {
                    s.push('/');
                }
                s.push_str(c);
            }
        }
        (!s.is_empty()).then_some(Self(s))
    }

    /// The key as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Its components.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }
}

impl std::fmt::Display for RecordKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A record's version (`None`: the backend has none) and value.
pub type Versioned = (Option<String>, Bytes);

/// Where a backend keeps metadata records.
pub trait Records: std::fmt::Debug + Send + Sync + 'static {
    /// The value under `key`, if any.
    fn get<'a>(&'a self, key: &'a RecordKey) -> BoxFuture<'a, Result<Option<Bytes>, Error>>;
    /// Stores `value` under `key`, atomically (a reader sees the old value
    /// or the new one) and durably.
    fn put<'a>(&'a self, key: &'a RecordKey, value: Bytes) -> BoxFuture<'a, Result<(), Error>>;
    /// Removes `key` (absent: nothing to do).
    fn delete<'a>(&'a self, key: &'a RecordKey) -> BoxFuture<'a, Result<(), Error>>;
    /// Every key under `prefix` (at any depth), sorted.
    fn list<'a>(&'a self, prefix: &'a RecordKey) -> BoxFuture<'a, Result<Vec<RecordKey>, Error>>;

    /// The value under `key` and its version, for a conditional
    /// [`put_if`](Self::put_if). A backend written by one process only
    /// (the local store) has no versions.
    fn get_versioned<'a>(
        &'a self,
        key: &'a RecordKey,
    ) -> BoxFuture<'a, Result<Option<Versioned>, Error>> {
        Box::pin(async move { Ok(self.get(key).await?.map(|b| (None, b))) })
    }

    /// Stores `value` if the record is still at `version` (`None`: if it
    /// is absent), as [`get_versioned`](Self::get_versioned) read it:
    /// `false` when another writer got there first. Without versions, an
    /// unconditional [`put`](Self::put).
    fn put_if<'a>(
        &'a self,
        key: &'a RecordKey,
        value: Bytes,
        version: Option<&'a str>,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        let _ = version;
        Box::pin(async move { self.put(key, value).await.map(|()| true) })
    }
}

/// Records as files under the local store's root.
#[derive(Debug, Clone)]
pub struct FsRecords {
    local: LocalBlobs,
}

impl FsRecords {
    /// Records under `local`'s root (written through its `tmp/`).
    pub fn new(local: LocalBlobs) -> Self {
        Self { local }
    }

    fn path(&self, key: &RecordKey) -> PathBuf {
        let mut p = self.local.root().to_owned();
        p.extend(key.components());
        p
    }
}

impl Records for FsRecords {
    fn get<'a>(&'a self, key: &'a RecordKey) -> BoxFuture<'a, Result<Option<Bytes>, Error>> {
        let path = self.path(key);
        Box::pin(blocking(move || match std::fs::read(&path) {
            Ok(b) => Ok(Some(Bytes::from(b))),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(Error::io("read", &path)(e)),
        }))
    }

    fn put<'a>(&'a self, key: &'a RecordKey, value: Bytes) -> BoxFuture<'a, Result<(), Error>> {
        let (path, local) = (self.path(key), self.local.clone());
        Box::pin(blocking(move || local.write_atomic(&path, &value)))
    }

    fn delete<'a>(&'a self, key: &'a RecordKey) -> BoxFuture<'a, Result<(), Error>> {
        let path = self.path(key);
        Box::pin(blocking(move || match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove", &path)(e)),
        }))
    }

    fn list<'a>(&'a self, prefix: &'a RecordKey) -> BoxFuture<'a, Result<Vec<RecordKey>, Error>> {
        let (base, prefix) = (self.path(prefix), prefix.clone());
        Box::pin(blocking(move || {
            let mut out = Vec::new();
            walk(&base, &prefix, &mut out)?;
            out.sort();
            Ok(out)
        }))
    }
}

/// Collects the keys of the files under `dir` (whose key is `key`).
fn walk(dir: &Path, key: &RecordKey, out: &mut Vec<RecordKey>) -> Result<(), Error> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(());
        }
        Err(e) => return Err(Error::io("readdir", dir)(e)),
    };
    for entry in rd {
        let entry = entry.map_err(Error::io("readdir", dir))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let Some(child) = RecordKey::from_parts([key.as_str(), &name]) else {
            continue;
        };
        match entry.file_type() {
            Ok(t) if t.is_dir() => walk(&entry.path(), &child, out)?,
            Ok(t) if t.is_file() => out.push(child),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_refuse_what_could_leave_the_root() {
        assert_eq!(
            RecordKey::from_parts(["repos", "hub/library/a", "_tags"]).map(|k| k.0),
            Some("repos/hub/library/a/_tags".into())
        );
        for bad in ["..", ".", "", "a//b", "a/../b", "a\\b", "a\0"] {
            assert_eq!(RecordKey::from_parts(["repos", bad]), None, "{bad:?}");
        }
    }
}
