//! Pacing of response bodies: how much of a blob is read ahead of the
//! client's socket.
//!
//! A body chunk lives from the read that makes it (a file, a download's
//! window) until hyper has written it into the socket. With many slow
//! clients that time is long, and the chunks in hyper's write queues are
//! most of the mirror's memory. So each streamed body ([`paced`]) keeps at
//! most [`AHEAD`] chunks unwritten (the next one is read when hyper lets go
//! of one), and readers size their chunks by [`chunk_size`], which shrinks
//! as the number of paced bodies grows: memory for bodies stays near
//! `AHEAD x SHARED` however many clients there are, while a few clients
//! still get large reads.
//!
//! The buffers of those chunks are reused ([`ChunkBuf`]): a chunk's buffer
//! goes back to a small pool when hyper drops the chunk, and the next read
//! takes it from there. At wire speed that is thousands of chunks a second,
//! and a fresh buffer for each costs an allocation, zeroing it, and (with an
//! allocator that gives pages back to the kernel) page faults. The pool is
//! bounded ([`POOL_BYTES`] per size class), so it keeps little after a
//! burst.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use futures_util::stream::BoxStream;
use futures_util::task::AtomicWaker;

/// Largest read of a body chunk.
pub const CHUNK: usize = 256 * 1024;
/// Smallest chunk when many bodies stream at once.
pub const MIN_CHUNK: usize = 16 * 1024;
/// Chunk bytes that all paced bodies share before their chunks shrink.
pub const SHARED: usize = 8 * 1024 * 1024;
/// Chunks a body may have read but not yet written to its socket.
pub const AHEAD: usize = 2;

/// Buffer bytes each size class of the chunk pool keeps for reuse.
pub const POOL_BYTES: usize = 1024 * 1024;

/// Paced bodies streaming now, process-wide.
static STREAMS: AtomicUsize = AtomicUsize::new(0);

/// The chunk size for the next read of a body: [`CHUNK`] while few bodies
/// stream, then [`SHARED`] split among them (rounded down to a power of
/// two), at least [`MIN_CHUNK`].
pub fn chunk_size() -> usize {
    chunk_for(STREAMS.load(Ordering::Relaxed))
}

fn chunk_for(streams: usize) -> usize {
    // A power of two: exactly one of the pool's size classes.
    let c = (SHARED / streams.max(1)).clamp(MIN_CHUNK, CHUNK);
    1 << c.ilog2()
}

/// Paced bodies streaming now.
pub fn streams() -> usize {
    STREAMS.load(Ordering::Relaxed)
}

/// Size classes of the pool: powers of two from [`MIN_CHUNK`] to [`CHUNK`].
const CLASSES: usize = (CHUNK / MIN_CHUNK).trailing_zeros() as usize + 1;

/// Free chunk buffers by size class (`MIN_CHUNK << class` bytes each).
struct Pool([Mutex<Vec<Vec<u8>>>; CLASSES]);

/// The process's chunk pool.
static POOL: Pool = Pool::new();

impl Pool {
    const fn new() -> Self {
        Self([const { Mutex::new(Vec::new()) }; CLASSES])
    }

    fn take(&'static self, len: usize) -> ChunkBuf {
        let buf = match class_of(len) {
            Some(c) => self.0[c]
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop()
                .unwrap_or_else(|| vec![0; MIN_CHUNK << c]),
            None => vec![0; len],
        };
        ChunkBuf {
            buf,
            len,
            pool: self,
        }
    }

    fn give_back(&self, buf: &mut Vec<u8>) {
        let Some(c) = class_of(buf.len()).filter(|&c| buf.len() == MIN_CHUNK << c) else {
            return;
        };
        let mut free = self.0[c].lock().unwrap_or_else(PoisonError::into_inner);
        if (free.len() + 1) * buf.len() <= POOL_BYTES.max(buf.len()) {
            free.push(std::mem::take(buf));
        }
    }
}

/// The class of a buffer that holds `len` bytes; `None` when larger than
/// [`CHUNK`] (not pooled).
fn class_of(len: usize) -> Option<usize> {
    let cap = len.max(MIN_CHUNK).next_power_of_two();
    (cap <= CHUNK).then(|| (cap / MIN_CHUNK).trailing_zeros() as usize)
}

/// A buffer for one body chunk, from the pool when it has one: fill it
/// (`as_mut`), then [`ChunkBuf::freeze`] the bytes read. The buffer goes
/// back to the pool when the last [`Bytes`] of it is dropped (or the
/// `ChunkBuf`, unfrozen).
pub struct ChunkBuf {
    buf: Vec<u8>,
    len: usize,
    pool: &'static Pool,
}

impl std::fmt::Debug for ChunkBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkBuf")
            .field("len", &self.len)
            .field("capacity", &self.buf.len())
            .finish()
    }
}

impl ChunkBuf {
    /// A buffer of `len` bytes. Its contents are unspecified (a reused
    /// buffer holds an earlier chunk): only what is filled may be frozen.
    pub fn new(len: usize) -> Self {
        POOL.take(len)
    }

    /// The first `n` bytes (at most the buffer's length) as [`Bytes`].
    pub fn freeze(mut self, n: usize) -> Bytes {
        self.len = n.min(self.len);
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for ChunkBuf {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl AsMut<[u8]> for ChunkBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.buf[..self.len]
    }
}

impl Drop for ChunkBuf {
    fn drop(&mut self) {
        self.pool.give_back(&mut self.buf);
    }
}

/// What a body's chunks report back when hyper drops them.
#[derive(Debug, Default)]
struct Ahead {
    chunks: AtomicUsize,
    waker: AtomicWaker,
}

/// A chunk on its way to the socket.
struct Held {
    bytes: Bytes,
    ahead: Arc<Ahead>,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.ahead.chunks.fetch_sub(1, Ordering::AcqRel);
        self.ahead.waker.wake();
    }
}

/// `body`, read at most [`AHEAD`] chunks ahead of its socket, and counted
/// among the paced bodies while it lives.
pub fn paced(body: BoxStream<'static, io::Result<Bytes>>) -> BoxStream<'static, io::Result<Bytes>> {
    STREAMS.fetch_add(1, Ordering::Relaxed);
    Box::pin(Paced {
        inner: body,
        ahead: Arc::default(),
    })
}

struct Paced {
    inner: BoxStream<'static, io::Result<Bytes>>,
    ahead: Arc<Ahead>,
}

impl Drop for Paced {
    fn drop(&mut self) {
        STREAMS.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Stream for Paced {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ahead.chunks.load(Ordering::Acquire) >= AHEAD {
            self.ahead.waker.register(cx.waker());
            // A chunk dropped between the check and the registration has
            // woken nobody: look again.
            if self.ahead.chunks.load(Ordering::Acquire) >= AHEAD {
                return Poll::Pending;
            }
        }
        match self.inner.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(bytes))) if !bytes.is_empty() => {
                self.ahead.chunks.fetch_add(1, Ordering::AcqRel);
                let held = Held {
                    bytes,
                    ahead: self.ahead.clone(),
                };
                Poll::Ready(Some(Ok(Bytes::from_owner(held))))
            }
            other => other,
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[test]
    fn chunk_buffers_are_reused_within_the_pool_bound() {
        // A pool of the test's own: other tests read files meanwhile.
        let pool: &'static Pool = Box::leak(Box::new(Pool::new()));
        let len = 40 * 1024;
        let c = class_of(len).unwrap();
        assert_eq!(MIN_CHUNK << c, 64 * 1024);
        assert_eq!(class_of(1), Some(0));
        assert_eq!(class_of(CHUNK), Some(CLASSES - 1));
        assert_eq!(class_of(CHUNK + 1), None);
        let mut b = pool.take(len);
        b.as_mut().fill(7);
        let bytes = b.freeze(1000);
        assert_eq!(bytes.len(), 1000);
        assert!(bytes.iter().all(|&x| x == 7));
        let ptr = bytes.as_ptr();
        let half = bytes.slice(10..20);
        drop(bytes);
        // Still referenced by `half`: not back in the pool yet.
        let other = pool.take(len);
        assert_ne!(other.as_ref().as_ptr(), ptr);
        drop(half);
        let again = pool.take(len);
        assert_eq!(again.as_ref().as_ptr(), ptr, "the freed buffer is reused");
        assert_eq!(again.as_ref().len(), len);
        drop((other, again));
        // The pool keeps at most POOL_BYTES of a class.
        let many: Vec<_> = (0..2 * POOL_BYTES / (64 * 1024))
            .map(|_| pool.take(len))
            .collect();
        drop(many);
        let kept = pool.0[c].lock().unwrap().len();
        assert_eq!(kept, POOL_BYTES / (64 * 1024));
        // Larger than CHUNK: a buffer of its own, never pooled.
        let big = pool.take(CHUNK + 1).freeze(CHUNK + 1);
        assert_eq!(big.len(), CHUNK + 1);
        drop(big);
        let pooled: usize = pool.0.iter().map(|c| c.lock().unwrap().len()).sum();
        assert_eq!(pooled, kept, "the larger-than-CHUNK buffer was not pooled");
    }

    #[test]
    fn chunks_shrink_as_bodies_grow() {
        assert_eq!(chunk_for(0), CHUNK);
        assert_eq!(chunk_for(32), CHUNK);
        assert_eq!(chunk_for(64), 128 * 1024);
        assert_eq!(chunk_for(100), 64 * 1024);
        assert_eq!(chunk_for(500), MIN_CHUNK);
        assert_eq!(chunk_for(100_000), MIN_CHUNK);
        for n in 1..2000 {
            let c = chunk_for(n);
            assert!(
                c.is_power_of_two() && c * n.min(SHARED / MIN_CHUNK) <= SHARED,
                "{n}: {c}"
            );
            assert_eq!(class_of(c).map(|k| MIN_CHUNK << k), Some(c));
        }
    }

    #[tokio::test]
    async fn a_body_reads_at_most_ahead_chunks_before_they_are_written() {
        let polled = Arc::new(AtomicUsize::new(0));
        let p = polled.clone();
        let source = futures_util::stream::iter(0..10u8)
            .map(move |i| {
                p.fetch_add(1, Ordering::Relaxed);
                Ok(Bytes::from(vec![i; 4]))
            })
            .boxed();
        let mut body = paced(source);
        let a = body.next().await.unwrap().unwrap();
        let b = body.next().await.unwrap().unwrap();
        assert_eq!((&a[..], &b[..]), (&[0u8; 4][..], &[1u8; 4][..]));
        // Two unwritten chunks: the third waits.
        assert!(futures_util::FutureExt::now_or_never(body.next()).is_none());
        assert_eq!(polled.load(Ordering::Relaxed), 2);
        drop(a);
        let c = body.next().await.unwrap().unwrap();
        assert_eq!(&c[..], &[2u8; 4][..]);
        drop((b, c));
        // Each chunk written (dropped) at once: the body runs to its end.
        let mut rest = 0;
        while let Some(chunk) = body.next().await {
            chunk.unwrap();
            rest += 1;
        }
        assert_eq!(rest, 7);
    }
}
