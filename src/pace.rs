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

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
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

/// Paced bodies streaming now, process-wide.
static STREAMS: AtomicUsize = AtomicUsize::new(0);

/// The chunk size for the next read of a body: [`CHUNK`] while few bodies
/// stream, then [`SHARED`] split among them, at least [`MIN_CHUNK`].
pub fn chunk_size() -> usize {
    chunk_for(STREAMS.load(Ordering::Relaxed))
}

fn chunk_for(streams: usize) -> usize {
    (SHARED / streams.max(1)).clamp(MIN_CHUNK, CHUNK) & !4095
}

/// Paced bodies streaming now.
pub fn streams() -> usize {
    STREAMS.load(Ordering::Relaxed)
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
    fn chunks_shrink_as_bodies_grow() {
        assert_eq!(chunk_for(0), CHUNK);
        assert_eq!(chunk_for(32), CHUNK);
        assert_eq!(chunk_for(64), 128 * 1024);
        assert_eq!(chunk_for(500), MIN_CHUNK);
        assert_eq!(chunk_for(100_000), MIN_CHUNK);
        for n in 1..2000 {
            assert_eq!(chunk_for(n) % 4096, 0);
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
