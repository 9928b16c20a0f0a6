//! The composition root: builds every component from a validated `Config`
//! and owns them. Nothing else constructs components or holds global state.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::clock::SharedClock;
use crate::config::Config;
use crate::mirror::Mirror;
use crate::registry::route::Router;
use crate::registry::{Policy, Registry};
use crate::server::{self, Listener};
use crate::store::Store;

/// Why the app could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store could not be opened.
    #[error("cannot open the store")]
    Store(#[from] crate::store::Error),
    /// TLS could not be set up (CA, certificate files).
    #[error("cannot set up TLS")]
    Tls(#[from] crate::tls::Error),
    /// An upstream client could not be built.
    #[error("cannot build an upstream client")]
    Upstream(#[from] crate::upstream::Error),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The running mirror's components.
#[derive(Debug)]
pub struct App {
    config: Config,
    mirror: Arc<Mirror>,
    registry: Arc<Registry>,
    tls: Option<crate::tls::Tls>,
}

impl App {
    /// The configuration it runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Opens the store (sweeping stale temporary files) and builds the
    /// mirror and the registry API, on the system clock.
    pub async fn build(config: Config) -> Result<Self, Error> {
        Self::build_with_clock(config, crate::clock::system()).await
    }

    /// [`App::build`] with the clock that times tag TTLs, stale serving and
    /// the circuit breakers (a [`ManualClock`](crate::clock::ManualClock)
    /// in tests of those policies).
    pub async fn build_with_clock(config: Config, clock: SharedClock) -> Result<Self, Error> {
        let store = Store::from_config(&config).await?;
        let mirror = Arc::new(Mirror::build(&config, store, clock)?);
        let tls = crate::tls::build(&config)?;
        let ca_pem = tls.as_ref().and_then(|t| t.ca_pem.clone());
        let registry = Arc::new(
            Registry::new(
                mirror.clone(),
                Router::new(&config),
                ca_pem,
                Policy::from_config(&config),
            )
            .with_metrics_endpoint(config.server.metrics)
            .with_setup(Arc::new(config.clone())),
        );
        Ok(Self {
            config,
            mirror,
            registry,
            tls,
        })
    }

    /// The mirror.
    pub fn mirror(&self) -> &Arc<Mirror> {
        &self.mirror
    }

    /// The registry API service.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Waits until the background work of the requests answered so far is
    /// done: every blob download has committed (or failed and cleaned up),
    /// and eviction has caught up with those commits. Clients receive a
    /// cold blob's last byte before its commit, so whoever inspects the
    /// store right after a response (tests, tools) waits here first. Needs
    /// [`App::run`] to be running when `[storage] max_size` is set.
    pub async fn settle(&self) {
        self.mirror.downloads_done().await;
        self.mirror.store().evicted().await;
    }

    /// Binds every configured listener.
    pub async fn bind(&self) -> Result<Vec<Listener>, Error> {
        let mut out = Vec::new();
        for l in &self.config.listeners {
            let tcp = tokio::net::TcpListener::bind(l.addr)
                .await
                .map_err(|source| Error::Bind {
                    addr: l.addr,
                    source,
                })?;
            let tls = if l.tls {
                self.tls.as_ref().map(|t| server::TlsListener {
                    acceptor: t.acceptor.clone(),
                    handshake_timeout: self.config.tls.handshake_timeout,
                })
            } else {
                None
            };
            out.push(Listener {
                tcp,
                pinned: l.upstream.clone(),
                tls,
                allow: l.allow.clone().into(),
                internal: false,
            });
        }
        if let Some(c) = &self.config.cluster {
            let tcp = tokio::net::TcpListener::bind(c.listen)
                .await
                .map_err(|source| Error::Bind {
                    addr: c.listen,
                    source,
                })?;
            out.push(Listener {
                tcp,
                pinned: None,
                tls: None,
                allow: Vec::new().into(),
                internal: true,
            });
        }
        Ok(out)
    }

    /// Serves `listeners` until `shutdown` completes. Runs the scheduled
    /// store verification meanwhile, when configured.
    pub async fn run(&self, listeners: Vec<Listener>, shutdown: impl Future<Output = ()>) {
        let verifier = self.config.verify_interval.map(|every| {
            let store = self.mirror.store().clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                loop {
                    tick.tick().await;
                    match store.verify().await {
                        Ok(r) => tracing::info!(ok = r.ok, bytes = r.bytes, quarantined = r.quarantined.len(), "store verified"),
                        Err(e) => tracing::error!(error = %crate::error_chain(&e), "store verification failed"),
                    }
                }
            })
        });
        let maintenance = self.mirror.store().spawn_maintenance();
        server::serve(
            listeners,
            self.registry.clone(),
            &self.config.server,
            shutdown,
        )
        .await;
        let left = self.mirror.drain(server::GRACE).await;
        if left > 0 {
            tracing::warn!(
                downloads = left,
                "grace period over; abandoning unfinished blob downloads (nothing partial is kept)"
            );
        }
        if let Some(c) = self.mirror.cluster() {
            let n = c.release_all().await;
            if n > 0 {
                tracing::info!(
                    leases = n,
                    "released the leases of unfinished fills: other replicas take them over"
                );
            }
        }
        for task in verifier.into_iter().chain(maintenance) {
            task.abort();
        }
    }
}
