//! Reading blobs: [`BlobReader`] for a stored blob, [`Spool`] for one being
//! written (its followers read what is written so far).
//!
//! Both hide where the bytes are. A reader of the local store holds the
//! blob's file and its in-use guard (no eviction while it is served); a
//! reader of a remote backend (S3) streams ranged GETs.
//!
//! A hot blob lives in the page cache, where a read is a `memcpy`. Sending
//! every chunk through `spawn_blocking` (what `tokio::fs` does) costs two
//! thread hand-offs per chunk; profiling a cached 200 MiB GET over TLS put
//! ~15% of the mirror's CPU in that scheduling alone. So, on Linux, a read
//! first tries `preadv2(RWF_NOWAIT)` on the calling thread: the kernel
//! answers from the page cache or refuses with `EAGAIN` without touching the
//! disk. Only then does the read go to the blocking pool, so a cold disk
//! never stalls a runtime worker (what nginx's `aio threads` does by hand).

use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use futures_util::stream::{self, BoxStream};

use super::InUseGuard;

/// A remote backend's stored blob: bytes by range.
pub trait RemoteBlob: std::fmt::Debug + Send + Sync {
    /// Streams bytes `start..end` (`end` exclusive, within the blob).
    fn range(&self, start: u64, end: u64) -> BoxStream<'static, io::Result<Bytes>>;
}

#[derive(Debug, Clone)]
enum Source {
    File(Arc<std::fs::File>),
    Remote(Arc<dyn RemoteBlob>),
}

/// A stored blob, opened for reading: its length, and its bytes from any
/// offset. Keeps a local blob from eviction while it lives; the open counted
/// as an access for eviction.
#[derive(Debug)]
pub struct BlobReader {
    len: u64,
    source: Source,
    _guard: Option<InUseGuard>,
}

impl BlobReader {
    pub(crate) fn file(file: Arc<std::fs::File>, len: u64, guard: Option<InUseGuard>) -> Self {
        Self {
            len,
            source: Source::File(file),
            _guard: guard,
        }
    }

    pub(crate) fn remote(blob: Arc<dyn RemoteBlob>, len: u64) -> Self {
        Self {
            len,
            source: Source::Remote(blob),
            _guard: None,
        }
    }

    /// The blob's length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the blob is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the bytes are on this machine (the local store or its read
    /// tier), as opposed to a remote backend that each read goes to.
    pub fn is_local(&self) -> bool {
        matches!(self.source, Source::File(_))
    }

    /// Reads up to `len` bytes at `pos` (fewer at the end of the blob; none
    /// past it).
    pub async fn read_at(&self, pos: u64, len: usize) -> io::Result<Bytes> {
        match &self.source {
            Source::File(f) => {
                read_at(f, pos, len.min(self.len.saturating_sub(pos) as usize)).await
            }
            Source::Remote(_) => {
                let end = pos.saturating_add(len as u64).min(self.len);
                let mut out = BytesMut::new();
                let mut s = self.stream_range(pos, end);
                while let Some(b) = s.next().await {
                    out.extend_from_slice(&b?);
                }
                Ok(out.freeze())
            }
        }
    }

    /// Reads the whole blob into memory (for manifests: small).
    pub async fn read_all(&self) -> io::Result<Bytes> {
        let mut out = BytesMut::with_capacity(self.len as usize);
        let mut s = self.stream_range(0, self.len);
        while let Some(b) = s.next().await {
            out.extend_from_slice(&b?);
        }
        Ok(out.freeze())
    }

    fn stream_range(&self, start: u64, end: u64) -> BoxStream<'static, io::Result<Bytes>> {
        let end = end.min(self.len);
        if start >= end {
            return stream::empty().boxed();
        }
        match &self.source {
            Source::File(f) => file_stream(f.clone(), start, end - start),
            Source::Remote(r) => r.range(start, end),
        }
    }

    /// Streams bytes `start..end` (`end` exclusive; `None`: to the end). The
    /// stream keeps the reader (and its guard) alive.
    pub fn into_stream(
        self,
        start: u64,
        end: Option<u64>,
    ) -> BoxStream<'static, io::Result<Bytes>> {
        let s = self.stream_range(start, end.unwrap_or(self.len));
        s.map(move |r| {
            let _ = &self;
            r
        })
        .boxed()
    }
}

/// Streams `len` bytes of `file` from `start` in chunks of
/// [`crate::pace::chunk_size`]; a file shorter than that is an error.
fn file_stream(
    file: Arc<std::fs::File>,
    start: u64,
    len: u64,
) -> BoxStream<'static, io::Result<Bytes>> {
    stream::try_unfold((file, start, len), |(file, pos, left)| async move {
        if left == 0 {
            return Ok(None);
        }
        let want = left.min(crate::pace::chunk_size() as u64) as usize;
        let b = read_at(&file, pos, want).await?;
        if b.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "stored blob is shorter than its size",
            ));
        }
        let n = b.len() as u64;
        Ok(Some((b, (file, pos + n, left - n))))
    })
    .boxed()
}

/// A blob being written, as its followers read it: the bytes written so far,
/// from a local file (the temporary file of the local store, or the local
/// spool of a remote backend's upload). Stays readable after the write is
/// committed or given up. Each clone keeps the blob from eviction.
#[derive(Debug)]
pub struct Spool {
    file: Arc<std::fs::File>,
    guard: Option<InUseGuard>,
}

impl Clone for Spool {
    fn clone(&self) -> Self {
        Self {
            file: self.file.clone(),
            guard: self.guard.as_ref().map(InUseGuard::again),
        }
    }
}

impl Spool {
    pub(crate) fn new(file: std::fs::File, guard: Option<InUseGuard>) -> Self {
        Self {
            file: Arc::new(file),
            guard,
        }
    }

    /// Reads up to `len` bytes at `pos` (short at what is written so far;
    /// empty at its end).
    pub async fn read_at(&self, pos: u64, len: usize) -> io::Result<Bytes> {
        read_at(&self.file, pos, len).await
    }
}

/// Reads up to `len` bytes of `file` at `pos`. A short result is not an
/// error (the caller reads on); an empty one means end of file.
pub(crate) async fn read_at(file: &Arc<std::fs::File>, pos: u64, len: usize) -> io::Result<Bytes> {
    let mut buf = crate::pace::ChunkBuf::new(len);
    if let Some(n) = read_cached(file, pos, buf.as_mut())? {
        return Ok(buf.freeze(n));
    }
    let file = file.clone();
    tokio::task::spawn_blocking(move || {
        let n = loop {
            match file.read_at(buf.as_mut(), pos) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => break r?,
            }
        };
        Ok(buf.freeze(n))
    })
    .await
    .unwrap_or_else(|e| Err(io::Error::other(e)))
}

/// The page-cache-only read: `Some(n)` when the kernel could answer without
/// waiting for the disk (`n == 0` at end of file), `None` when it could not.
#[cfg(target_os = "linux")]
fn read_cached(file: &std::fs::File, pos: u64, buf: &mut [u8]) -> io::Result<Option<usize>> {
    use rustix::io::{Errno, ReadWriteFlags, preadv2};
    let mut bufs = [io::IoSliceMut::new(buf)];
    loop {
        return match preadv2(file, &mut bufs, pos, ReadWriteFlags::NOWAIT) {
            Ok(n) => Ok(Some(n)),
            Err(Errno::INTR) => continue,
            // Not in memory, or a kernel or filesystem without RWF_NOWAIT:
            // the blocking pool reads it.
            Err(Errno::AGAIN | Errno::OPNOTSUPP | Errno::NOSYS | Errno::INVAL) => Ok(None),
            Err(e) => Err(e.into()),
        };
    }
}

#[cfg(not(target_os = "linux"))]
fn read_cached(_: &std::fs::File, _: u64, _: &mut [u8]) -> io::Result<Option<usize>> {
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[tokio::test]
    async fn reads_whole_short_and_past_the_end() {
        let mut f = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        f.write_all(&data).unwrap();
        let f = Arc::new(f);
        let mut pos = 0u64;
        let mut got = Vec::new();
        loop {
            let b = read_at(&f, pos, 65_536).await.unwrap();
            if b.is_empty() {
                break;
            }
            pos += b.len() as u64;
            got.extend_from_slice(&b);
        }
        assert_eq!(got, data);
        let tail = read_at(&f, 299_990, 100).await.unwrap();
        assert_eq!(&tail[..], &data[299_990..]);
        assert!(read_at(&f, 400_000, 10).await.unwrap().is_empty());
    }
}
