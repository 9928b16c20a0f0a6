//! One access-log line per request, written when the response body is done
//! (fully sent, aborted, or dropped), so it carries the real byte count.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};

use super::Body;
use crate::mirror::CacheStatus;

/// What the access-log line says about a request.
#[derive(Debug)]
pub struct AccessLog {
    /// Request method.
    pub method: http::Method,
    /// Request path and query.
    pub path: String,
    /// Client address.
    pub peer: std::net::SocketAddr,
    /// The upstream chosen, once routing ran.
    pub upstream: Option<String>,
    /// The endpoint's kind (`manifest`, `blob`, `tags`, ...), once parsed.
    pub kind: Option<&'static str>,
    /// How the response was produced.
    pub cache: Option<CacheStatus>,
    /// The repository (as named upstream), once routed.
    pub repo: Option<crate::oci::RepoName>,
    /// A manifest's tag or digest.
    pub reference: Option<crate::oci::Reference>,
    /// The authenticated client user, if any.
    pub user: Option<String>,
    /// Response status.
    pub status: u16,
    /// When the request arrived.
    pub start: Instant,
    /// Where the finished response is counted.
    pub metrics: Option<std::sync::Arc<super::metrics::Metrics>>,
    /// Counts the request in flight until this log is dropped: with the
    /// response body, or with the request if it never got one.
    pub in_flight: Option<super::metrics::Gauged>,
}

/// A response body that counts the bytes it yields and writes the access-log
/// line when it is dropped.
pub struct LoggedBody {
    inner: Body,
    log: AccessLog,
    bytes: u64,
    /// The body's exact length when known: hyper stops polling once it has
    /// sent `Content-Length` bytes, so reaching it means the body completed.
    expected: Option<u64>,
    outcome: &'static str,
}

impl std::fmt::Debug for LoggedBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoggedBody")
            .field("log", &self.log)
            .finish()
    }
}

impl LoggedBody {
    /// Wraps `inner`, whose length is `content_length` when the response
    /// announced one.
    pub fn new(inner: Body, log: AccessLog, content_length: Option<u64>) -> Self {
        let expected = content_length.or_else(|| inner.size_hint().exact());
        Self {
            inner,
            log,
            bytes: 0,
            expected,
            outcome: "aborted",
        }
    }
}

impl http_body::Body for LoggedBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.bytes += d.len() as u64;
                }
            }
            Poll::Ready(Some(Err(_))) => this.outcome = "error",
            Poll::Ready(None) => this.outcome = "complete",
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        // A body known to be empty (HEAD, errors) may be dropped unpolled.
        let all_sent = self.expected.is_some_and(|n| self.bytes >= n);
        if self.outcome == "aborted" && (all_sent || self.inner.is_end_stream()) {
            self.outcome = "complete";
        }
        let l = &self.log;
        if let Some(m) = &l.metrics {
            m.record(l.cache, l.status, self.bytes, self.outcome == "complete");
            if let (Some(up), Some(kind)) = (&l.upstream, l.kind) {
                m.record_upstream(up, kind, l.cache, self.bytes);
                m.activity().record(&super::activity::Event {
                    now: std::time::SystemTime::now()
                        .duration_since(std::time::SystemTime::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs()),
                    upstream: up,
                    kind,
                    cache: l.cache,
                    status: l.status,
                    bytes: self.bytes,
                    repo: l.repo.as_ref().map(crate::oci::RepoName::as_str),
                    reference: l.reference.as_ref(),
                    client: l.peer.ip(),
                    user: l.user.as_deref(),
                });
            }
        }
        tracing::info!(
            target: "mirrorgate::access",
            method = %l.method,
            path = %l.path,
            upstream = l.upstream.as_deref().unwrap_or("-"),
            status = l.status,
            bytes = self.bytes,
            duration_ms = l.start.elapsed().as_secs_f64() * 1000.0,
            cache = l.cache.map_or("-", CacheStatus::as_str),
            body = self.outcome,
            peer = %l.peer,
            user = l.user.as_deref().unwrap_or("-"),
            "request"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn log() -> AccessLog {
        AccessLog {
            method: http::Method::GET,
            path: "/v2/x/blobs/y".into(),
            peer: "127.0.0.1:1".parse().unwrap(),
            upstream: None,
            kind: None,
            cache: None,
            repo: None,
            reference: None,
            user: None,
            status: 200,
            start: Instant::now(),
            metrics: None,
            in_flight: None,
        }
    }

    #[tokio::test]
    async fn counts_bytes_and_sees_completion_without_the_end_frame() {
        let chunks = || {
            let s = futures_util::stream::iter([
                Ok(Bytes::from_static(b"hello")),
                Ok(Bytes::from_static(b"!")),
            ]);
            super::super::response::stream(Box::pin(s))
        };
        // A streamed blob with Content-Length: hyper polls exactly the data,
        // never the terminating `None`.
        let mut b = LoggedBody::new(chunks(), log(), Some(6));
        b.frame().await.unwrap().unwrap();
        b.frame().await.unwrap().unwrap();
        assert_eq!(b.bytes, 6);
        assert!(b.expected.is_some_and(|n| b.bytes >= n));
        drop(b);
        // A body that broke off short of its length.
        let mut b = LoggedBody::new(chunks(), log(), Some(100));
        b.frame().await.unwrap().unwrap();
        assert!(b.expected.is_none_or(|n| b.bytes < n));
        // Without a length, the end frame decides.
        let mut b = LoggedBody::new(chunks(), log(), None);
        while let Some(f) = b.frame().await {
            f.unwrap();
        }
        assert_eq!((b.bytes, b.outcome), (6, "complete"));
    }
}
