//! Paths inside the store root. Every path is derived from validated types.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use super::Error;
use super::tags::TagKey;
use crate::config::UpstreamId;
use crate::oci::{Digest, RepoName};

/// Directory that holds a repository's tag records. A repository component
/// never starts with `_`, so this name cannot collide with a repository.
const TAGS_DIR: &str = "_tags";

/// The directory layout of a store root (see the `store` module docs).
#[derive(Debug)]
pub struct Layout {
    root: PathBuf,
    tmp_seq: AtomicU64,
}

impl Layout {
    /// A layout rooted at `root`. Nothing is created yet.
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
            tmp_seq: AtomicU64::new(0),
        }
    }

    /// The store root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `blobs/<alg>/<2 hex>/<hex>`
    pub fn blob(&self, d: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(d.algorithm().as_str())
            .join(&d.hex()[..2])
            .join(d.hex())
    }

    /// `manifests/<alg>/<2 hex>/<hex>`
    pub fn manifest_record(&self, d: &Digest) -> PathBuf {
        self.root
            .join("manifests")
            .join(d.algorithm().as_str())
            .join(&d.hex()[..2])
            .join(d.hex())
    }

    /// `repos/<upstream>/<repo…>/_tags`
    pub fn repo_tags_dir(&self, upstream: &UpstreamId, repo: &RepoName) -> PathBuf {
        let mut p = self.root.join("repos").join(upstream.as_str());
        for c in repo.components() {
            p.push(c);
        }
        p.join(TAGS_DIR)
    }

    /// `repos/<upstream>/<repo…>/_tags/<tag>.<class>`
    pub fn tag(&self, key: &TagKey) -> PathBuf {
        self.repo_tags_dir(&key.upstream, &key.repo).join(format!(
            "{}.{}",
            key.tag.as_str(),
            key.class.key()
        ))
    }

    /// The temporary directory.
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// A fresh, unique temporary file path.
    pub fn tmp_file(&self, stem: &str) -> PathBuf {
        let n = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        self.tmp_dir()
            .join(format!("{stem}.{}.{n}", std::process::id()))
    }

    /// Creates the directories and removes everything left in `tmp/` by a
    /// previous process. Returns how many files were removed. Must run before
    /// any writer of this process starts.
    pub(crate) fn init(&self) -> Result<usize, Error> {
        for d in ["blobs", "manifests", "repos", "tmp"] {
            let p = self.root.join(d);
            std::fs::create_dir_all(&p).map_err(Error::io("mkdir", &p))?;
        }
        let tmp = self.tmp_dir();
        let mut n = 0;
        for entry in std::fs::read_dir(&tmp).map_err(Error::io("readdir", &tmp))? {
            let entry = entry.map_err(Error::io("readdir", &tmp))?;
            let p = entry.path();
            let r = if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            r.map_err(Error::io("remove", &p))?;
            n += 1;
        }
        Ok(n)
    }

    /// Writes JSON to `path` atomically (temp file, fsync, rename, fsync dir).
    pub(crate) fn write_json_atomic<T: Serialize>(
        &self,
        path: &Path,
        value: &T,
    ) -> Result<(), Error> {
        let bytes = serde_json::to_vec(value).map_err(|e| Error::Io {
            op: "serialize",
            path: path.to_owned(),
            source: io::Error::other(e),
        })?;
        let tmp = self.tmp_file("record");
        let result = (|| {
            let mut f = std::fs::File::create(&tmp).map_err(Error::io("create", &tmp))?;
            f.write_all(&bytes).map_err(Error::io("write", &tmp))?;
            f.sync_all().map_err(Error::io("fsync", &tmp))?;
            rename_into_place(&tmp, path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// Repositories of `upstream` that have a `_tags` directory, sorted.
    pub(crate) fn list_repos(&self, upstream: &UpstreamId) -> Result<Vec<String>, Error> {
        let base = self.root.join("repos").join(upstream.as_str());
        let mut out = Vec::new();
        let mut stack = vec![(base, String::new())];
        while let Some((dir, name)) = stack.pop() {
            let rd = match std::fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("readdir", &dir)(e)),
            };
            for entry in rd {
                let entry = entry.map_err(Error::io("readdir", &dir))?;
                if !entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    continue;
                }
                let Some(c) = entry.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                if c == TAGS_DIR {
                    out.push(name.clone());
                } else if crate::oci::reference::is_name_component(&c) {
                    let child = if name.is_empty() {
                        c
                    } else {
                        format!("{name}/{c}")
                    };
                    stack.push((entry.path(), child));
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

/// Renames `tmp` to `dest` (creating `dest`'s directory) and fsyncs the
/// directory so the rename survives a crash.
pub(crate) fn rename_into_place(tmp: &Path, dest: &Path) -> Result<(), Error> {
    let dir = dest.parent().unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(dir).map_err(Error::io("mkdir", dir))?;
    std::fs::rename(tmp, dest).map_err(Error::io("rename", dest))?;
    let d = std::fs::File::open(dir).map_err(Error::io("open dir", dir))?;
    d.sync_all().map_err(Error::io("fsync dir", dir))
}
