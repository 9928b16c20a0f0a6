//! Accept loops and HTTP connections (HTTP/1.1 and h2c on plain listeners).
//!
//! `serve` takes already-bound listeners and a shutdown future (the
//! mini-redis shape), so tests bind `127.0.0.1:0` and the caller decides when
//! to stop. On shutdown it stops accepting, lets in-flight requests finish
//! for a grace period, then returns.

mod coalesce;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::config::{ServerConfig, UpstreamId};
use crate::registry::metrics::Gauged;
use crate::registry::{ConnInfo, Registry};

/// How long in-flight requests may run after shutdown begins.
pub const GRACE: Duration = Duration::from_secs(10);

/// A bound listener and its routing facts.
#[derive(Debug)]
pub struct Listener {
    /// The bound socket.
    pub tcp: TcpListener,
    /// The upstream this listener is pinned to.
    pub pinned: Option<UpstreamId>,
    /// TLS, for `tls = true` listeners.
    pub tls: Option<TlsListener>,
    /// Client networks allowed (empty: everyone).
    pub allow: Arc<[crate::access::Cidr]>,
    /// The cluster's internal endpoint (replicas only, signed requests).
    pub internal: bool,
}

/// How a TLS listener accepts connections.
#[derive(Clone)]
pub struct TlsListener {
    /// The acceptor (certificate per SNI name, ALPN h2 + http/1.1).
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// Longest time a client may take to finish the handshake.
    pub handshake_timeout: Duration,
}

impl std::fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListener")
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

/// Serves every listener until `shutdown` completes, then drains.
pub async fn serve(
    listeners: Vec<Listener>,
    registry: Arc<Registry>,
    limits: &ServerConfig,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = Arc::new(GracefulShutdown::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut loops = Vec::new();
    for l in listeners {
        loops.push(tokio::spawn(accept_loop(
            l,
            registry.clone(),
            graceful.clone(),
            Limits {
                slots: slots.clone(),
                header_read_timeout: limits.header_read_timeout,
                max_header_size: limits.max_header_size,
            },
            stop_rx.clone(),
        )));
    }
    shutdown.await;
    // Readiness first: a load balancer stops sending new clients while
    // this mirror still accepts them, for `drain_delay`.
    registry.set_ready(false);
    if let Some(d) = limits.drain_delay {
        tracing::info!(delay = ?d, "shutting down: not ready; still accepting for the drain delay");
        tokio::time::sleep(d).await;
    }
    tracing::info!("shutting down: no new connections");
    let _ = stop_tx.send(true);
    for l in loops {
        let _ = l.await;
    }
    let graceful = Arc::try_unwrap(graceful).unwrap_or_else(|_| GracefulShutdown::new());
    if tokio::time::timeout(GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("grace period over; closing remaining connections");
    }
}

/// Per-listener copies of the connection limits.
struct Limits {
    slots: Arc<Semaphore>,
    header_read_timeout: Duration,
    max_header_size: usize,
}

async fn accept_loop(
    l: Listener,
    registry: Arc<Registry>,
    graceful: Arc<GracefulShutdown>,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let local = match l.tcp.local_addr() {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "listener has no local address");
            return;
        }
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_size.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_size).unwrap_or(u32::MAX))
        .max_concurrent_streams(256)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(limits.header_read_timeout);
    let builder = Arc::new(builder);
    loop {
        // Wait for a free connection slot before accepting: beyond the limit,
        // clients queue in the kernel instead of consuming memory here.
        let slot = tokio::select! {
            s = limits.slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => return,
            },
            _ = stop.changed() => return,
        };
        let accepted = tokio::select! {
            r = l.tcp.accept() => r,
            _ = stop.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, %local, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Counted with the slot: both live as long as the connection.
        let slot = (slot, registry.metrics().connection_opened());
        let _ = stream.set_nodelay(true);
        let base = ConnInfo {
            peer,
            local,
            pinned: l.pinned.clone(),
            tls: l.tls.is_some(),
            sni: None,
            allow: l.allow.clone(),
            internal: l.internal,
            trusted: false,
        };
        let (registry, builder, graceful) = (registry.clone(), builder.clone(), graceful.clone());
        match l.tls.clone() {
            None => serve_conn(stream, base, registry, &builder, &graceful, slot),
            // The handshake runs in the connection's task, so a slow client
            // never holds up the accept loop.
            Some(tls) => {
                tokio::spawn(async move {
                    let accepted =
                        tokio::time::timeout(tls.handshake_timeout, tls.acceptor.accept(stream))
                            .await;
                    let stream = match accepted {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %crate::error_chain(&e), %peer, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let sni = stream
                        .get_ref()
                        .1
                        .server_name()
                        .map(str::to_ascii_lowercase);
                    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                    let info = ConnInfo { sni, ..base };
                    if h2 {
                        let stream = coalesce::Coalesce::new(stream);
                        serve_conn(stream, info, registry, &builder, &graceful, slot);
                    } else {
                        serve_conn(stream, info, registry, &builder, &graceful, slot);
                    }
                });
            }
        }
    }
}

fn serve_conn<S>(
    stream: S,
    info: ConnInfo,
    registry: Arc<Registry>,
    builder: &auto::Builder<TokioExecutor>,
    graceful: &GracefulShutdown,
    slot: (OwnedSemaphorePermit, Gauged),
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let peer = info.peer;
    let info = Arc::new(info);
    let service = hyper::service::service_fn(move |req| {
        let registry = registry.clone();
        let info = info.clone();
        async move { Ok::<_, Infallible>(registry.handle(req, &info).await) }
    });
    let conn = builder
        .serve_connection(TokioIo::new(stream), service)
        .into_owned();
    let conn = graceful.watch(conn);
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %crate::error_chain(&*e), %peer, "connection ended with an error");
        }
        drop(slot);
    });
}
