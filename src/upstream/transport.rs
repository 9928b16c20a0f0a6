//! The HTTP transport under [`super::UpstreamClient`]: hyper's pooled client
//! (HTTP/1.1, and HTTP/2 where the upstream's ALPN offers it and the config
//! asks for it) over a connector of our own, so that every buffer is ours to
//! size.
//!
//! Why not reqwest: hyper grows an HTTP/1.1 connection's read buffer to
//! ~408 KiB on a fast link and keeps it, and reqwest cannot cap it. A fleet
//! rollout makes the mirror download hundreds of distinct blobs at once;
//! 500 of them held 157 MiB in those buffers alone (heaptrack, issue 13).
//! A blob download keeps about two and a half read buffers alive (the one
//! being filled, the chunks on their way to disk and to the client), so
//! memory per download is set by the buffer's size. Two pools therefore:
//! the first [`CROWD`] blob downloads in flight read with buffers of up to
//! [`READ_BUF_MAX`]; beyond that a download reads with [`READ_BUF_CROWD`]
//! buffers (a TLS record), so memory grows slowly with the crowd
//! while a single pull keeps its large reads. At most [`POOL_MAX_IDLE`]
//! idle connections per pool stay open after a burst.
//!
//! What reqwest did and this does too:
//! - `connect_timeout` covers DNS, TCP connect and the TLS handshake;
//!   `read_timeout` is the longest wait for the next bytes of a response
//!   (enforced on the socket: a read pending longer fails);
//! - redirects (CDN) are followed, at most [`MAX_REDIRECTS`] hops, and
//!   `Authorization` (with cookies) is dropped whenever scheme, host or port
//!   change;
//! - `connect_to` overrides DNS for the upstream's own host only (the port
//!   is the URL's);
//! - every request carries `User-Agent: mirrorgate/<version>` and, unless
//!   the caller chose one, `Accept: */*`.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use http::header::{
    ACCEPT, AUTHORIZATION, COOKIE, LOCATION, PROXY_AUTHORIZATION, USER_AGENT, WWW_AUTHENTICATE,
};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use http_body_util::{BodyStream, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tower::Service;

use super::error::{Error, TimeoutPhase, Timeouts};
use crate::config::UpstreamConfig;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Most redirect hops followed for one request.
pub(crate) const MAX_REDIRECTS: usize = 5;
/// Largest read buffer of an HTTP/1.1 upstream connection (hyper's default
/// grows to ~408 KiB). A 64 KiB read is four TLS records; the cap also
/// bounds a response's headers.
pub(crate) const READ_BUF_MAX: usize = 64 * 1024;
/// Read buffer of blob downloads beyond the first [`CROWD`] in flight.
pub(crate) const READ_BUF_CROWD: usize = 16 * 1024;
/// Blob downloads in flight that read with large buffers.
pub(crate) const CROWD: usize = 32;
/// Idle connections kept per host: enough for a pull's parallel layers,
/// few enough that a burst's hundreds of connections close after it.
pub(crate) const POOL_MAX_IDLE: usize = 32;
/// How long an idle connection stays in the pool.
pub(crate) const POOL_IDLE: Duration = Duration::from_secs(30);

type Connector = ConnectTimeout<hyper_rustls::HttpsConnector<TcpConnector>>;

/// What a request carries back, which picks its pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Load {
    /// Metadata, tokens, errors: small bodies.
    Small,
    /// A blob: counted among the downloads in flight.
    Bulk,
}

/// One upstream's pooled HTTP client.
pub(crate) struct Http {
    client: Client<Connector, Empty<Bytes>>,
    /// Blob downloads beyond the first [`CROWD`].
    crowd: Client<Connector, Empty<Bytes>>,
    /// Blob downloads in flight (request sent, body not dropped).
    bulk: Arc<std::sync::atomic::AtomicUsize>,
    timeouts: Timeouts,
    user_agent: HeaderValue,
}

/// Counts one blob download in flight while it lives.
struct InFlight(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A response whose headers arrived; its body is read with
/// [`Response::into_stream`] (or dropped).
pub(crate) struct Response {
    inner: http::Response<Incoming>,
    timeouts: Timeouts,
    in_flight: Option<InFlight>,
}

impl Response {
    pub(crate) fn status(&self) -> StatusCode {
        self.inner.status()
    }

    pub(crate) fn headers(&self) -> &HeaderMap {
        self.inner.headers()
    }

    /// The body's bytes as they arrive (trailers are skipped).
    pub(crate) fn into_stream(self) -> BoxStream<'static, Result<Bytes, Error>> {
        let timeouts = self.timeouts;
        let in_flight = self.in_flight;
        BodyStream::new(self.inner.into_body())
            .try_filter_map(|frame| futures_util::future::ready(Ok(frame.into_data().ok())))
            .map_err(move |e| {
                let _ = &in_flight;
                timeouts.classify_body(e)
            })
            .boxed()
    }
}

impl Http {
    /// Builds the client (no network I/O).
    pub(crate) fn new(
        cfg: &UpstreamConfig,
        tls: rustls::ClientConfig,
        timeouts: Timeouts,
    ) -> Result<Self, Error> {
        let fixed = match (cfg.url.host_str(), cfg.connect_to.is_empty()) {
            (Some(host), false) => Some((Arc::<str>::from(host), cfg.connect_to.clone().into())),
            _ => None,
        };
        let mut tcp = HttpConnector::new_with_resolver(Resolver {
            fixed,
            gai: GaiResolver::new(),
        });
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        let tcp = TcpConnector {
            http: tcp,
            read_timeout: timeouts.read,
        };
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        let https = if cfg.http2 {
            https.enable_all_versions().wrap_connector(tcp)
        } else {
            https.enable_http1().wrap_connector(tcp)
        };
        let connector = ConnectTimeout {
            inner: https,
            after: timeouts.connect,
        };
        let pool = |read_buf| {
            Client::builder(TokioExecutor::new())
                .timer(TokioTimer::new())
                .pool_timer(TokioTimer::new())
                .pool_idle_timeout(POOL_IDLE)
                .pool_max_idle_per_host(POOL_MAX_IDLE)
                .http1_max_buf_size(read_buf)
                .build(connector.clone())
        };
        Ok(Self {
            client: pool(READ_BUF_MAX),
            crowd: pool(READ_BUF_CROWD),
            bulk: Default::default(),
            timeouts,
            user_agent: HeaderValue::from_static(concat!("mirrorgate/", env!("CARGO_PKG_VERSION"))),
        })
    }

    /// Sends a bodiless request and follows redirects; returns the final
    /// response whatever its status.
    pub(crate) async fn send(
        &self,
        method: Method,
        url: url::Url,
        headers: HeaderMap,
        load: Load,
    ) -> Result<Response, Error> {
        let (client, in_flight) = match load {
            Load::Small => (&self.client, None),
            Load::Bulk => {
                let before = self.bulk.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let counted = InFlight(self.bulk.clone());
                let pool = if before < CROWD {
                    &self.client
                } else {
                    &self.crowd
                };
                (pool, Some(counted))
            }
        };
        let mut resp = self.follow(client, method, url, headers).await?;
        resp.in_flight = in_flight;
        Ok(resp)
    }

    /// Sends the request on `client`, following redirects.
    async fn follow(
        &self,
        client: &Client<Connector, Empty<Bytes>>,
        mut method: Method,
        mut url: url::Url,
        mut headers: HeaderMap,
    ) -> Result<Response, Error> {
        for hop in 0..=MAX_REDIRECTS {
            let resp = self.once(client, &method, &url, &headers).await?;
            let status = resp.status();
            if !matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308) {
                return Ok(resp);
            }
            let Some(location) = resp.headers().get(LOCATION) else {
                return Ok(resp);
            };
            if hop == MAX_REDIRECTS {
                return Err(Error::Transport(
                    format!("more than {MAX_REDIRECTS} redirects").into(),
                ));
            }
            let next = location
                .to_str()
                .ok()
                .and_then(|l| url.join(l).ok())
                .filter(|u| matches!(u.scheme(), "http" | "https"))
                .ok_or_else(|| {
                    Error::Protocol(format!("redirect to an invalid location {location:?}"))
                })?;
            if next.origin() != url.origin() {
                for h in [AUTHORIZATION, COOKIE, PROXY_AUTHORIZATION, WWW_AUTHENTICATE] {
                    headers.remove(h);
                }
            }
            if status == StatusCode::SEE_OTHER && method != Method::HEAD {
                method = Method::GET;
            }
            url = next;
        }
        unreachable!("the loop returns on its last hop")
    }

    async fn once(
        &self,
        client: &Client<Connector, Empty<Bytes>>,
        method: &Method,
        url: &url::Url,
        headers: &HeaderMap,
    ) -> Result<Response, Error> {
        let uri: Uri = url
            .as_str()
            .parse()
            .map_err(|e| Error::Protocol(format!("cannot use URL {url}: {e}")))?;
        let mut req = http::Request::new(Empty::new());
        *req.method_mut() = method.clone();
        *req.uri_mut() = uri;
        *req.headers_mut() = headers.clone();
        let h = req.headers_mut();
        h.insert(USER_AGENT, self.user_agent.clone());
        h.entry(ACCEPT).or_insert(HeaderValue::from_static("*/*"));
        let inner = client
            .request(req)
            .await
            .map_err(|e| self.timeouts.classify(e))?;
        Ok(Response {
            inner,
            timeouts: self.timeouts,
            in_flight: None,
        })
    }
}

/// Whether `e` or one of its causes is an I/O timeout.
fn timed_out(e: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(e), |e| e.source()).any(|e| {
        e.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::TimedOut)
    })
}

impl Timeouts {
    /// Classifies a failed request (no response headers).
    pub(crate) fn classify(self, e: hyper_util::client::legacy::Error) -> Error {
        match (e.is_connect(), timed_out(&e)) {
            (true, true) => Error::Timeout {
                phase: TimeoutPhase::Connect,
                after: self.connect,
                source: Box::new(e),
            },
            (false, true) => Error::Timeout {
                phase: TimeoutPhase::Read,
                after: self.read,
                source: Box::new(e),
            },
            (true, false) => Error::Connect(Box::new(e)),
            (false, false) => Error::Transport(Box::new(e)),
        }
    }

    /// Classifies a failed body read.
    pub(crate) fn classify_body(self, e: hyper::Error) -> Error {
        if timed_out(&e) {
            Error::Timeout {
                phase: TimeoutPhase::Read,
                after: self.read,
                source: Box::new(e),
            }
        } else {
            Error::Body(Box::new(e))
        }
    }
}

/// DNS: the configured `connect_to` addresses for the upstream's host, the
/// system resolver for every other name (CDN redirects).
#[derive(Clone)]
struct Resolver {
    fixed: Option<(Arc<str>, Arc<[SocketAddr]>)>,
    gai: GaiResolver,
}

type Resolving = Pin<Box<dyn Future<Output = io::Result<std::vec::IntoIter<SocketAddr>>> + Send>>;

impl Service<Name> for Resolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = io::Error;
    type Future = Resolving;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        if let Some((host, addrs)) = &self.fixed
            && name.as_str().eq_ignore_ascii_case(host)
        {
            let addrs = addrs.to_vec();
            return Box::pin(async move { Ok(addrs.into_iter()) });
        }
        let lookup = self.gai.call(name);
        Box::pin(async move { Ok(lookup.await?.collect::<Vec<_>>().into_iter()) })
    }
}

/// TCP connections whose reads time out ([`TimedIo`]).
#[derive(Clone)]
struct TcpConnector {
    http: HttpConnector<Resolver>,
    read_timeout: Duration,
}

type Connecting<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

impl Service<Uri> for TcpConnector {
    type Response = TimedIo;
    type Error = BoxError;
    type Future = Connecting<TimedIo>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.http.call(uri);
        let after = self.read_timeout;
        Box::pin(async move { Ok(TimedIo::new(connecting.await?, after)) })
    }
}

/// Fails a connect (DNS, TCP and TLS) that takes longer than `after`.
#[derive(Clone)]
struct ConnectTimeout<C> {
    inner: C,
    after: Duration,
}

impl<C> Service<Uri> for ConnectTimeout<C>
where
    C: Service<Uri>,
    C::Error: Into<BoxError>,
    C::Future: Send + 'static,
    C::Response: Send + 'static,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = Connecting<C::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let after = self.after;
        Box::pin(async move {
            match tokio::time::timeout(after, connecting).await {
                Ok(r) => r.map_err(Into::into),
                Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out").into()),
            }
        })
    }
}

/// A TCP stream whose reads fail with `TimedOut` after waiting `after` for
/// bytes (the read timeout; an idle pooled connection is closed by it too).
struct TimedIo {
    io: TokioIo<TcpStream>,
    after: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
    armed: bool,
}

impl TimedIo {
    fn new(io: TokioIo<TcpStream>, after: Duration) -> Self {
        Self {
            io,
            after,
            sleep: Box::pin(tokio::time::sleep(after)),
            armed: false,
        }
    }
}

impl hyper::rt::Read for TimedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                this.armed = false;
                Poll::Ready(r)
            }
            Poll::Pending => {
                if !this.armed {
                    this.armed = true;
                    let deadline = tokio::time::Instant::now() + this.after;
                    this.sleep.as_mut().reset(deadline);
                }
                match this.sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.armed = false;
                        Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "no bytes from upstream within the read timeout",
                        )))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl hyper::rt::Write for TimedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

impl Connection for TimedIo {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An HTTP/1.1 server on loopback: `/hop/N` redirects to `/hop/N+1`,
    /// anything else answers `hello`.
    async fn hops() -> std::net::SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    let resp = match path.strip_prefix("/hop/") {
                        Some(k) => format!(
                            "HTTP/1.1 307 Temporary Redirect\r\nlocation: /hop/{}\r\n\
                             content-length: 0\r\nconnection: close\r\n\r\n",
                            k.parse::<u32>().unwrap() + 1
                        ),
                        None => "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\
                                 connection: close\r\n\r\nhello"
                            .to_owned(),
                    };
                    let _ = s.write_all(resp.as_bytes()).await;
                });
            }
        });
        addr
    }

    fn client(addr: std::net::SocketAddr) -> Http {
        let text = format!(
            "[[listener]]\naddr = \"127.0.0.1:5000\"\n[[upstream]]\nname = \"x\"\n\
             url = \"http://{addr}\"\ndefault = true\n"
        );
        let cfg = crate::config::Config::from_toml(&text, std::path::Path::new("/")).unwrap();
        let up = &cfg.upstreams[0];
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        let timeouts = Timeouts {
            connect: Duration::from_secs(5),
            read: Duration::from_secs(5),
        };
        Http::new(up, tls, timeouts).unwrap()
    }

    #[tokio::test]
    async fn redirects_are_followed_five_hops_and_no_more() {
        let addr = hops().await;
        let http = client(addr);
        let url = |p: &str| url::Url::parse(&format!("http://{addr}{p}")).unwrap();
        // /hop/1 .. /hop/5: five redirects, then a 307 with no hop left.
        let e = http
            .send(Method::GET, url("/hop/0"), HeaderMap::new(), Load::Small)
            .await
            .err()
            .expect("a sixth redirect is refused");
        assert!(
            crate::error_chain(&e).contains("more than 5 redirects"),
            "{}",
            crate::error_chain(&e)
        );
        let r = http
            .send(Method::GET, url("/ok"), HeaderMap::new(), Load::Small)
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    #[tokio::test]
    async fn a_blob_download_counts_until_its_body_is_dropped() {
        let addr = hops().await;
        let http = client(addr);
        let url = url::Url::parse(&format!("http://{addr}/blob")).unwrap();
        let count = || http.bulk.load(std::sync::atomic::Ordering::Relaxed);
        let r = http
            .send(Method::GET, url.clone(), HeaderMap::new(), Load::Bulk)
            .await
            .unwrap();
        assert_eq!(count(), 1);
        let mut body = r.into_stream();
        assert_eq!(count(), 1, "the body carries the count");
        let mut got = Vec::new();
        while let Some(c) = body.next().await {
            got.extend_from_slice(&c.unwrap());
        }
        assert_eq!(got, b"hello");
        drop(body);
        assert_eq!(count(), 0);
        // Metadata is not counted.
        let r = http
            .send(Method::GET, url, HeaderMap::new(), Load::Small)
            .await
            .unwrap();
        assert_eq!(count(), 0);
        drop(r);
    }

    #[test]
    fn timeouts_are_found_in_the_cause_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] io::Error);
        let e = Outer(io::Error::new(io::ErrorKind::TimedOut, "slow"));
        assert!(timed_out(&e));
        let e = Outer(io::Error::new(io::ErrorKind::ConnectionReset, "reset"));
        assert!(!timed_out(&e));
    }
}
