//! TLS for the mirror's own listeners: a rustls `ServerConfig` whose
//! certificate is chosen per SNI name, from the local CA or from a
//! certificate the operator provides.
//!
//! Certificates are issued only for configured names (every upstream's
//! `hosts`, `[tls] names`, `localhost`) and, for clients that send no SNI
//! (IP literals), for the listener addresses. An unknown SNI name gets no
//! certificate and the handshake fails: the mirror is not a CA oracle for
//! arbitrary names. ALPN offers h2 and http/1.1.

pub mod ca;
mod resolver;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

pub use ca::LocalCa;
pub use resolver::SniResolver;

use crate::config::{Config, TlsSource};

/// A TLS setup error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("cannot access {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Generating or signing a certificate failed.
    #[error("certificate generation failed")]
    Cert(#[source] rcgen::Error),
    /// A PEM file holds no usable certificate or key.
    #[error("{0} holds no usable PEM certificate or key")]
    BadPem(PathBuf),
    /// `ca init` found an existing CA.
    #[error("a CA already exists in {0} (use --force to replace it)")]
    CaExists(PathBuf),
    /// rustls refused the key or configuration.
    #[error("TLS configuration rejected")]
    Rustls(#[source] rustls::Error),
}

/// The crypto provider used everywhere (rustls, rcgen and reqwest all use
/// aws-lc-rs; ring is never built).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// What the TLS listeners need.
#[derive(Clone)]
pub struct Tls {
    /// The acceptor for TLS listeners.
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// The CA certificate (PEM) to offer at `/ca.crt`, when the local CA
    /// is used.
    pub ca_pem: Option<Arc<str>>,
    /// The acceptor's certificates, replaced by [`Prepared::install`].
    certificates: Arc<Certificates>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("local_ca", &self.ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Prepares the certificates `config` describes (its names, its CA or
    /// certificate files, read again), for [`Prepared::install`]. Nothing
    /// changes yet, nor on an error.
    pub fn prepare(&self, config: &Config) -> Result<Prepared, Error> {
        let (resolver, ca_pem) = resolver(config)?;
        Ok(Prepared {
            certificates: self.certificates.clone(),
            resolver,
            ca_pem,
        })
    }
}

/// New certificates for the running TLS listeners ([`Tls::prepare`]).
#[derive(Debug)]
pub struct Prepared {
    certificates: Arc<Certificates>,
    resolver: SniResolver,
    ca_pem: Option<Arc<str>>,
}

impl Prepared {
    /// Handshakes from now on use these certificates; connections already
    /// open keep theirs. Returns the CA certificate to offer.
    pub fn install(self) -> Option<Arc<str>> {
        self.certificates.0.store(Arc::new(self.resolver));
        self.ca_pem
    }
}

/// The certificate resolver the acceptor holds: one [`SniResolver`], swapped
/// whole by a reload.
#[derive(Debug)]
struct Certificates(arc_swap::ArcSwap<SniResolver>);

impl rustls::server::ResolvesServerCert for Certificates {
    fn resolve(
        &self,
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.0.load().resolve(hello)
    }
}

/// The names certificates may be issued for: every upstream's and hosted
/// namespace's `hosts`,
/// `[tls] names` and `localhost`, lowercased.
pub fn configured_names(config: &Config) -> Vec<String> {
    let mut names: Vec<String> = config
        .upstreams
        .iter()
        .flat_map(|u| u.hosts.iter().cloned())
        .chain(config.hosted.iter().flat_map(|h| h.hosts.iter().cloned()))
        .chain(config.tls.names.iter().cloned())
        .chain(std::iter::once("localhost".to_owned()))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The addresses a certificate for SNI-less clients covers: every TLS
/// listener's IP, with loopback for wildcard listeners.
pub fn listener_ips(config: &Config) -> Vec<IpAddr> {
    let mut ips = Vec::new();
    for l in config.listeners.iter().filter(|l| l.tls) {
        let ip = l.addr.ip();
        if ip.is_unspecified() {
            ips.push(IpAddr::from([127, 0, 0, 1]));
            ips.push(IpAddr::from(std::net::Ipv6Addr::LOCALHOST));
        } else {
            ips.push(ip);
        }
    }
    ips.sort();
    ips.dedup();
    ips
}

/// Builds the TLS acceptor when any listener uses TLS. With the local CA,
/// creates it on first use and issues the configured names' certificates
/// up front, so a bad setup fails at start, not at the first handshake.
pub fn build(config: &Config) -> Result<Option<Tls>, Error> {
    if !config.listeners.iter().any(|l| l.tls) {
        return Ok(None);
    }
    let (resolver, ca_pem) = resolver(config)?;
    let certificates = Arc::new(Certificates(arc_swap::ArcSwap::from_pointee(resolver)));
    let mut server = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(Error::Rustls)?
        .with_no_client_auth()
        .with_cert_resolver(certificates.clone());
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(Tls {
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
        ca_pem,
        certificates,
    }))
}

/// The certificates `config` describes: issued from the local CA (created
/// on first use) for the configured names, up front, so that a bad setup
/// fails here and not at the first handshake; or read from its files.
fn resolver(config: &Config) -> Result<(SniResolver, Option<Arc<str>>), Error> {
    Ok(match &config.tls.source {
        TlsSource::LocalCa { dir } => {
            let ca = LocalCa::load_or_init(dir)?;
            let pem: Arc<str> = ca.cert_pem().into();
            let r = SniResolver::with_ca(
                ca,
                configured_names(config),
                listener_ips(config),
                config.tls.leaf_validity,
            )?;
            (r, Some(pem))
        }
        TlsSource::Files { cert, key } => (SniResolver::with_files(cert, key)?, None),
    })
}
