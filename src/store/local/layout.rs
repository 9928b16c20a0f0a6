//! Paths inside the store root. Every path is derived from validated types.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::oci::Digest;
use crate::store::Error;

/// The directory layout of a store root (see the `store` module docs).
#[derive(Debug)]
pub(crate) struct Layout {
    root: PathBuf,
    tmp_seq: AtomicU64,
}

impl Layout {
    /// A layout rooted at `root`. Nothing is created yet.
    pub(crate) fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
            tmp_seq: AtomicU64::new(0),
        }
    }

    /// The store root.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// `blobs/<alg>/<2 hex>/<hex>`
    pub(crate) fn blob(&self, d: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(d.algorithm().as_str())
            .join(&d.hex()[..2])
            .join(d.hex())
    }

    /// The temporary directory.
    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// A fresh, unique temporary file path.
    pub(crate) fn tmp_file(&self, stem: &str) -> PathBuf {
        let n = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        self.tmp_dir()
            .join(format!("{stem}.{}.{n}", std::process::id()))
    }

    /// Creates the directories and removes everything left in `tmp/` by a
    /// previous process. Returns how many files were removed. Must run before
    /// any writer of this process starts.
    pub(crate) fn init(&self) -> Result<usize, Error> {
        for d in ["blobs", "tmp"] {
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

    /// Writes `bytes` to `path` atomically (temp file, fsync, rename,
    /// fsync dir).
    pub(crate) fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<(), Error> {
        let tmp = self.tmp_file("record");
        let result = (|| {
            let mut f = std::fs::File::create(&tmp).map_err(Error::io("create", &tmp))?;
            f.write_all(bytes).map_err(Error::io("write", &tmp))?;
            f.sync_all().map_err(Error::io("fsync", &tmp))?;
            rename_into_place(&tmp, path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
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

/// Visits every file under `dir` (at any depth; none if `dir` is absent)
/// with its path and metadata, one directory at a time. Blocking.
pub(crate) fn walk_files(
    dir: &Path,
    mut visit: impl FnMut(PathBuf, std::fs::Metadata) -> Result<(), Error>,
) -> Result<(), Error> {
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("readdir", &dir)(e)),
        };
        for entry in rd {
            let entry = entry.map_err(Error::io("readdir", &dir))?;
            // Gone since the listing (evicted, quarantined): skip it.
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                visit(entry.path(), meta)?;
            }
        }
    }
    Ok(())
}
