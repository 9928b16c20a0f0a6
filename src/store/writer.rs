//! `BlobWriter`: writes a blob to a temporary file while hashing it, and
//! commits it under its digest only when size and digest check out.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use super::Error;
use super::layout::{Layout, rename_into_place};
use crate::oci::{Digest, Digester};

/// An in-progress blob write. Blocking I/O: call from the blocking pool.
///
/// Dropping a writer that was not successfully finished removes its temporary
/// file, so an abandoned or failed write never leaves anything that could be
/// served.
#[derive(Debug)]
pub struct BlobWriter {
    layout: Arc<Layout>,
    digest: Digest,
    tmp: PathBuf,
    file: Option<std::fs::File>,
    hasher: Option<Digester>,
    written: u64,
    verified: bool,
}

impl BlobWriter {
    pub(super) fn create(layout: Arc<Layout>, digest: Digest) -> Result<Self, Error> {
        let tmp = layout.tmp_file(digest.hex());
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(Error::io("create", &tmp))?;
        Ok(Self {
            hasher: Some(Digester::new(digest.algorithm())),
            layout,
            digest,
            tmp,
            file: Some(file),
            written: 0,
            verified: false,
        })
    }

    /// The digest the content must hash to.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Opens the temporary file for reading, for streaming the blob to clients
    /// while it is being written. The handle stays valid after the file is
    /// renamed or removed.
    pub fn open_reader(&self) -> Result<std::fs::File, Error> {
        std::fs::File::open(&self.tmp).map_err(Error::io("open", &self.tmp))
    }

    /// Hashes and appends bytes. After this returns, the bytes are visible to
    /// readers of the temporary file.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let (Some(file), Some(hasher)) = (self.file.as_mut(), self.hasher.as_mut()) else {
            return Err(Error::io("write", &self.tmp)(std::io::Error::other(
                "writer finished",
            )));
        };
        hasher.update(bytes);
        file.write_all(bytes)
            .map_err(Error::io("write", &self.tmp))?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Checks size and digest, then makes the blob durable and visible:
    /// [`verify`](Self::verify) and [`commit`](Self::commit) in one.
    pub fn finish(&mut self, expected_size: Option<u64>) -> Result<u64, Error> {
        let n = self.verify(expected_size)?;
        self.commit()?;
        Ok(n)
    }

    /// Checks that what was written has the expected size (when known) and
    /// the writer's digest. Cheap: the bytes were hashed as they came. On
    /// success the blob may be served from readers already open; it becomes
    /// a stored blob with [`commit`](Self::commit). On failure nothing is
    /// committed and dropping the writer removes the temporary file.
    pub fn verify(&mut self, expected_size: Option<u64>) -> Result<u64, Error> {
        let Some(hasher) = self.hasher.take() else {
            return Err(Error::io("verify", &self.tmp)(std::io::Error::other(
                "writer already verified",
            )));
        };
        if let Some(expected) = expected_size
            && expected != self.written
        {
            return Err(Error::SizeMismatch {
                expected,
                actual: self.written,
            });
        }
        let actual = hasher.finish();
        if actual != self.digest {
            return Err(Error::DigestMismatch {
                expected: self.digest.clone(),
                actual,
            });
        }
        self.verified = true;
        Ok(self.written)
    }

    /// fsyncs a verified blob and renames it into place (atomic: a crash
    /// leaves either no blob or the whole, verified one).
    pub fn commit(&mut self) -> Result<(), Error> {
        let file = match self.file.take() {
            Some(file) if self.verified => file,
            _ => {
                return Err(Error::io("commit", &self.tmp)(std::io::Error::other(
                    "blob not verified",
                )));
            }
        };
        // The commit is the blob's first access for LRU eviction. The
        // kernel stamps writes from a coarse clock (one tick is several
        // milliseconds), so blobs committed in the same tick would tie;
        // a precise stamp keeps their order. Best effort, like every access
        // time: a failure only makes eviction less exact.
        let _ = file.set_modified(std::time::SystemTime::now());
        file.sync_all().map_err(Error::io("fsync", &self.tmp))?;
        drop(file);
        rename_into_place(&self.tmp, &self.layout.blob(&self.digest))?;
        // The temporary path no longer exists: nothing for Drop to remove.
        self.tmp = PathBuf::new();
        Ok(())
    }
}

impl BlobWriter {
    /// Gives up on storing: removes the temporary file and returns the
    /// hasher, which has seen every byte passed to [`write`](Self::write),
    /// including the bytes of a call that failed. Readers opened with
    /// [`open_reader`](Self::open_reader) keep their view of what was
    /// written. For streaming a blob on when the disk is full.
    pub fn abandon(mut self) -> Option<Digester> {
        self.file = None;
        self.hasher.take()
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
