//! Write coalescing for HTTP/2 over TLS.
//!
//! The h2 codec writes every DATA frame as its 9-byte header plus a payload
//! of the peer's frame size (16 KiB for curl and Go clients), one write at a
//! time. rustls makes records of at most 16 KiB of each write, so every
//! frame became a full record and a 9-byte one, and a syscall each: twice
//! the records an HTTP/1.1 body of the same size costs, for both ends. This
//! buffer collects the codec's writes and hands them to TLS [`CAP`] bytes
//! at a time (full records, one socket write).
//!
//! The codec flushes after every frame, so a flush does not always empty
//! the buffer: when bytes were written since the last flush, it is put off
//! and the task woken at once; the next poll of the connection either adds
//! frames (the batch grows) or flushes with nothing new, which writes the
//! batch out. So nothing waits in the buffer once the codec has nothing
//! more to say.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes collected before they go to TLS: four full TLS records.
pub(crate) const CAP: usize = 4 * 16 * 1024;

/// `inner` with its writes collected into [`CAP`]-byte batches.
pub(crate) struct Coalesce<S> {
    inner: S,
    buf: Vec<u8>,
    /// Bytes of `buf` already written to `inner`.
    sent: usize,
    /// Bytes were added since the last flush.
    fresh: bool,
}

impl<S> Coalesce<S> {
    pub(crate) fn new(inner: S) -> Self {
        Self {
            inner,
            buf: Vec::with_capacity(CAP),
            sent: 0,
            fresh: false,
        }
    }
}

impl<S: AsyncWrite + Unpin> Coalesce<S> {
    /// Writes out everything collected.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.buf.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Coalesce<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Coalesce<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(data)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total == 0 {
            return Poll::Ready(Ok(0));
        }
        // Fill the batch to the brim (a write may be taken in part), so that
        // what goes to TLS is whole records.
        if this.buf.len() == CAP {
            ready!(this.poll_drain(cx))?;
        }
        let mut taken = 0;
        for b in bufs {
            let room = CAP - this.buf.len();
            if room == 0 {
                break;
            }
            let n = b.len().min(room);
            this.buf.extend_from_slice(&b[..n]);
            taken += n;
        }
        this.fresh = true;
        Poll::Ready(Ok(taken))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.fresh && self.sent == 0 {
            // Put off: see the module's docs.
            self.fresh = false;
            cx.waker().wake_by_ref();
            return Poll::Ready(Ok(()));
        }
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Records every write it gets.
    #[derive(Default)]
    struct Writes(Vec<usize>, Vec<u8>);

    impl AsyncWrite for Writes {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            // A socket that takes at most 40 000 bytes at a time.
            let n = data.len().min(40_000);
            self.0.push(n);
            self.1.extend_from_slice(&data[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn frames_go_out_in_full_batches_and_everything_on_flush() {
        let mut c = Coalesce::new(Writes::default());
        let mut want = Vec::new();
        for i in 0..10u8 {
            let header = [i; 9];
            let payload = vec![i; 16 * 1024];
            let n = c
                .write_vectored(&[io::IoSlice::new(&header), io::IoSlice::new(&payload)])
                .await
                .unwrap();
            want.extend_from_slice(&header);
            want.extend_from_slice(&payload[..n - 9]);
            if n < 9 + payload.len() {
                c.write_all(&payload[n - 9..]).await.unwrap();
                want.extend_from_slice(&payload[n - 9..]);
            }
        }
        // Nothing smaller than a batch went out before the flush.
        let before = c.inner.1.len();
        assert_eq!(before % CAP, 0, "{:?}", c.inner.0);
        assert!(before >= 2 * CAP);
        // A flush after new bytes is put off once; the next one, with
        // nothing new, writes everything.
        c.flush().await.unwrap();
        assert_eq!(c.inner.1.len(), before);
        c.flush().await.unwrap();
        assert_eq!(c.inner.1, want);
        assert!(c.buf.is_empty());
    }

    #[tokio::test]
    async fn reads_pass_through() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut c = Coalesce::new(a);
        b.write_all(b"hello").await.unwrap();
        let mut got = [0u8; 5];
        c.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
        c.write_all(b"world").await.unwrap();
        // The first flush after new bytes is put off; the second writes.
        c.flush().await.unwrap();
        c.flush().await.unwrap();
        let mut got = [0u8; 5];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"world");
    }
}
