//! The composition root: builds every component from a validated `Config`
//! and owns them. Nothing else constructs components or holds global state.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::clock::SharedClock;
use crate::config::{Config, WarmConfig};
use crate::mirror::{Mirror, UpstreamChanges};
use crate::registry::{Registry, Routes};
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

/// Why a reload was refused (the running configuration stays).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// An upstream client could not be built.
    #[error("cannot build an upstream client")]
    Upstream(#[from] crate::upstream::Error),
    /// The new TLS names or certificates could not be set up.
    #[error("cannot set up TLS")]
    Tls(#[from] crate::tls::Error),
    /// A running listener is pinned to an upstream the new config removes
    /// (listeners change only at a restart).
    #[error(
        "listener {addr} is pinned to upstream {upstream}, which the new config removes (listeners change only at a restart)"
    )]
    PinnedUpstreamRemoved {
        /// The listener.
        addr: SocketAddr,
        /// Its upstream.
        upstream: crate::config::UpstreamId,
    },
}

/// What a reload changed, and what it left for a restart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reloaded {
    /// Upstreams added, changed (a new client) and removed.
    pub upstreams: UpstreamChanges,
    /// Settings that changed in the file but take effect only at a restart
    /// (the running values stay), e.g. `listeners`, `[storage]`.
    pub needs_restart: Vec<&'static str>,
    /// `[[warm]]` entries started again (new or changed).
    pub warm_restarted: usize,
}

/// The scheduled warming tasks, by `[[warm]]` entry.
type Warming = Vec<(WarmConfig, tokio::task::JoinHandle<()>)>;

/// The running mirror's components.
#[derive(Debug)]
pub struct App {
    /// Replaced by [`App::reload`] (shared with the `[[warm]]` tasks,
    /// which read it at each run).
    config: Arc<arc_swap::ArcSwap<Config>>,
    mirror: Arc<Mirror>,
    hosted: Arc<crate::hosted::Hosted>,
    registry: Arc<Registry>,
    tls: Option<crate::tls::Tls>,
    /// `[[warm]]` tasks, once [`App::start_warming`] ran.
    warming: std::sync::Mutex<Option<Warming>>,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
}

impl Drop for App {
    fn drop(&mut self) {
        self.stop_warming();
    }
}

impl App {
    /// The configuration it runs with (the last one a reload accepted).
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
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
        let hosted = Arc::new(crate::hosted::Hosted::new(store.clone(), &config.hosted));
        let mirror = Arc::new(Mirror::build(&config, store, clock)?);
        let tls = crate::tls::build(&config)?;
        let ca_pem = tls.as_ref().and_then(|t| t.ca_pem.clone());
        let config = Arc::new(config);
        let registry = Arc::new(Registry::new(
            mirror.clone(),
            hosted.clone(),
            Routes::from_config(&config, ca_pem),
        ));
        Ok(Self {
            config: Arc::new(arc_swap::ArcSwap::new(config)),
            mirror,
            hosted,
            registry,
            tls,
            warming: std::sync::Mutex::new(None),
            reloading: tokio::sync::Mutex::new(()),
        })
    }

    /// Applies a new configuration to the running mirror: upstreams (their
    /// URLs, credentials, timeouts, TTLs), access rules and `[auth]`, TLS
    /// names and certificates, `[[warm]]` lists, `[server] metrics`.
    /// Requests and downloads under way finish with what they started
    /// with. What cannot change without a restart (listeners, storage,
    /// cluster, connection limits, log format) keeps its running value and
    /// is listed in the result. On an error nothing changes.
    pub async fn reload(&self, new: Config) -> Result<Reloaded, ReloadError> {
        let _one = self.reloading.lock().await;
        let result = self.apply(new);
        self.registry
            .note_reload(result.as_ref().map(drop).map_err(|e| crate::error_chain(e)));
        result
    }

    fn apply(&self, new: Config) -> Result<Reloaded, ReloadError> {
        let old = self.config.load_full();
        let needs_restart = needs_restart(&old, &new);
        // What runs from now on: the file, but for what only a restart
        // changes, which keeps its running value (so that the config says
        // what runs, and the next reload compares with that).
        let new = keep_running(&old, new);
        if let Some((addr, upstream)) = new.listeners.iter().find_map(|l| {
            let u = l.upstream.as_ref()?;
            let gone = new.upstream(u).is_none() && !new.hosted.iter().any(|h| &h.id == u);
            gone.then(|| (l.addr, u.clone()))
        }) {
            return Err(ReloadError::PinnedUpstreamRemoved { addr, upstream });
        }
        // Everything that can fail, before anything changes.
        let upstreams = self.mirror.prepare_upstreams(&new)?;
        let ca_pem = match &self.tls {
            // TLS listeners are running: their certificates follow the file.
            Some(tls) if new.listeners.iter().any(|l| l.tls) => Some(tls.prepare(&new)?),
            _ => None,
        };
        let new = Arc::new(new);
        let changes = self.mirror.install_upstreams(upstreams);
        self.hosted.configure(&new.hosted);
        let ca = match ca_pem {
            Some(prepared) => prepared.install(),
            None => self.tls.as_ref().and_then(|t| t.ca_pem.clone()),
        };
        self.registry.set_routes(Routes::from_config(&new, ca));
        self.config.store(new.clone());
        let warm_restarted = self.restart_warming(&new);
        Ok(Reloaded {
            upstreams: changes,
            needs_restart,
            warm_restarted,
        })
    }

    /// Starts the `[[warm]]` entries' schedules (the server's; a reload
    /// restarts the entries that changed). Stopped when the app is dropped.
    pub fn start_warming(&self) {
        let config = self.config();
        let tasks = config
            .warm
            .iter()
            .enumerate()
            .map(|(i, w)| (w.clone(), self.spawn_warm(i, w)))
            .collect();
        let mut warming = self.warming.lock().unwrap_or_else(|p| p.into_inner());
        *warming = Some(tasks);
    }

    fn spawn_warm(&self, index: usize, w: &WarmConfig) -> tokio::task::JoinHandle<()> {
        crate::warm::schedule::spawn_one(
            index,
            w.clone(),
            self.registry.clone(),
            self.mirror.store().clone(),
            self.config.clone(),
        )
    }

    /// After a reload: entries unchanged at their index keep their task
    /// (and its timing); others stop, and new or changed ones start now.
    fn restart_warming(&self, config: &Config) -> usize {
        let mut warming = self.warming.lock().unwrap_or_else(|p| p.into_inner());
        let Some(old) = warming.as_mut() else {
            return 0;
        };
        let mut old: Vec<_> = std::mem::take(old).into_iter().map(Some).collect();
        let mut next = Vec::new();
        let mut restarted = 0;
        for (i, w) in config.warm.iter().enumerate() {
            match old.get_mut(i) {
                Some(slot @ Some(_)) if slot.as_ref().is_some_and(|(o, _)| o == w) => {
                    next.extend(slot.take());
                }
                _ => {
                    restarted += 1;
                    next.push((w.clone(), self.spawn_warm(i, w)));
                }
            }
        }
        for (_, task) in old.into_iter().flatten() {
            task.abort();
        }
        *warming = Some(next);
        restarted
    }

    fn stop_warming(&self) {
        let mut warming = self.warming.lock().unwrap_or_else(|p| p.into_inner());
        for (_, task) in warming.take().into_iter().flatten() {
            task.abort();
        }
    }

    /// The mirror.
    pub fn mirror(&self) -> &Arc<Mirror> {
        &self.mirror
    }

    /// The hosted namespaces.
    pub fn hosted(&self) -> &Arc<crate::hosted::Hosted> {
        &self.hosted
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
        let config = self.config();
        let mut out = Vec::new();
        for l in &config.listeners {
            let tcp = tokio::net::TcpListener::bind(l.addr)
                .await
                .map_err(|source| Error::Bind {
                    addr: l.addr,
                    source,
                })?;
            let tls = if l.tls {
                self.tls.as_ref().map(|t| server::TlsListener {
                    acceptor: t.acceptor.clone(),
                    handshake_timeout: config.tls.handshake_timeout,
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
        self.registry.set_listeners(
            out.iter()
                .map(|l| crate::registry::status::ListenerInfo {
                    addr: l
                        .tcp
                        .local_addr()
                        .map_or_else(|_| "?".to_owned(), |a| a.to_string()),
                    scheme: if l.tls.is_some() { "https" } else { "http" },
                    upstream: l.pinned.as_ref().map(ToString::to_string),
                })
                .collect(),
        );
        if let Some(c) = &config.cluster {
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
        let config = self.config();
        let verifier = config.verify_interval.map(|every| {
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
        let mut maintenance = self.mirror.store().spawn_maintenance();
        maintenance.push(self.hosted.spawn_maintenance());
        server::serve(listeners, self.registry.clone(), &config.server, shutdown).await;
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
        self.stop_warming();
    }
}

/// `new`, with the settings that are only read at start as they are in
/// `running` (the ones [`needs_restart`] compares).
fn keep_running(running: &Config, mut new: Config) -> Config {
    new.listeners.clone_from(&running.listeners);
    new.storage_root.clone_from(&running.storage_root);
    new.max_size = running.max_size;
    new.s3.clone_from(&running.s3);
    new.verify_interval = running.verify_interval;
    new.cluster.clone_from(&running.cluster);
    let (metrics, status) = (new.server.metrics, new.server.status);
    new.server = crate::config::ServerConfig {
        metrics,
        status,
        ..running.server.clone()
    };
    new.cache.metadata_max_bytes = running.cache.metadata_max_bytes;
    new.cache.stale_if_error = running.cache.stale_if_error;
    new.tls.handshake_timeout = running.tls.handshake_timeout;
    new.log_format = running.log_format;
    new
}

/// The settings that differ between `old` and `new` but are only read at
/// start.
fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    let server = |c: &Config| {
        let s = &c.server;
        (
            s.max_connections,
            s.header_read_timeout,
            s.max_header_size,
            s.fill_memory,
            s.drain_delay,
        )
    };
    let storage = |c: &Config| {
        (
            c.storage_root.clone(),
            c.max_size,
            c.s3.clone(),
            c.verify_interval,
        )
    };
    let tls_listeners = |c: &Config| c.listeners.iter().any(|l| l.tls);
    [
        ("listeners", old.listeners != new.listeners),
        ("[storage]", storage(old) != storage(new)),
        ("[cluster]", old.cluster != new.cluster),
        (
            "[server] (connection limits, fill_memory, drain_delay)",
            server(old) != server(new),
        ),
        (
            "[cache] metadata_max_bytes, stale_if_error",
            (old.cache.metadata_max_bytes, old.cache.stale_if_error)
                != (new.cache.metadata_max_bytes, new.cache.stale_if_error),
        ),
        (
            "[tls] handshake_timeout",
            old.tls.handshake_timeout != new.tls.handshake_timeout,
        ),
        (
            "TLS on a listener for the first time",
            !tls_listeners(old) && tls_listeners(new),
        ),
        ("[log] format", old.log_format != new.log_format),
    ]
    .into_iter()
    .filter_map(|(what, changed)| changed.then_some(what))
    .collect()
}
