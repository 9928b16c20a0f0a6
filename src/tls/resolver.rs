//! `SniResolver`: picks (and issues, and renews) the certificate for each
//! TLS handshake by its SNI name.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

use super::{Error, LocalCa, provider};

/// Cache key for handshakes without SNI.
const NO_SNI: &str = "";

struct Issued {
    key: Arc<CertifiedKey>,
    renew_at: SystemTime,
}

enum Source {
    Ca {
        ca: Box<LocalCa>,
        names: HashSet<String>,
        ips: Vec<IpAddr>,
        validity: Duration,
        issued: RwLock<HashMap<String, Issued>>,
    },
    Static(Arc<CertifiedKey>),
}

/// Resolves the server certificate per SNI name.
pub struct SniResolver {
    source: Source,
}

impl std::fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.source {
            Source::Ca { names, ips, .. } => f
                .debug_struct("SniResolver")
                .field("names", names)
                .field("ips", ips)
                .finish_non_exhaustive(),
            Source::Static(_) => f.write_str("SniResolver(static certificate)"),
        }
    }
}

fn certified(
    chain: Vec<rustls_pki_types::CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<CertifiedKey>, Error> {
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(Error::Rustls)?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

impl SniResolver {
    /// Issues from `ca` for `names` (SNI) and `ips` (no SNI). Every
    /// certificate is issued once here, then renewed when a third of its
    /// validity remains.
    pub fn with_ca(
        ca: LocalCa,
        names: Vec<String>,
        ips: Vec<IpAddr>,
        validity: Duration,
    ) -> Result<Self, Error> {
        let r = Self {
            source: Source::Ca {
                ca: Box::new(ca),
                names: names.into_iter().map(|n| n.to_ascii_lowercase()).collect(),
                ips,
                validity,
                issued: RwLock::new(HashMap::new()),
            },
        };
        if let Source::Ca { names, .. } = &r.source {
            for n in names.iter().map(String::as_str).chain([NO_SNI]) {
                r.get_or_issue(n)?;
            }
        }
        Ok(r)
    }

    /// Serves one certificate chain and key (PEM files) for every name.
    pub fn with_files(cert: &Path, key: &Path) -> Result<Self, Error> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| Error::Io {
                path: p.to_owned(),
                source,
            })
        };
        let chain = crate::pem::parse_certs(&read(cert)?);
        if chain.is_empty() {
            return Err(Error::BadPem(cert.to_owned()));
        }
        let k = PrivateKeyDer::from_pem_slice(&read(key)?)
            .map_err(|_| Error::BadPem(key.to_owned()))?;
        Ok(Self {
            source: Source::Static(certified(chain, k)?),
        })
    }

    /// The certificate for `name` (`""` = no SNI), issuing or renewing it
    /// when needed.
    fn get_or_issue(&self, name: &str) -> Result<Arc<CertifiedKey>, Error> {
        self.get_or_issue_at(name, SystemTime::now())
    }

    /// [`Self::get_or_issue`] as of `now`.
    fn get_or_issue_at(&self, name: &str, now: SystemTime) -> Result<Arc<CertifiedKey>, Error> {
        let Source::Ca {
            ca,
            ips,
            validity,
            issued,
            ..
        } = &self.source
        else {
            return Err(Error::BadPem(Default::default()));
        };
        if let Some(i) = issued.read().unwrap_or_else(|p| p.into_inner()).get(name)
            && i.renew_at > now
        {
            return Ok(i.key.clone());
        }
        let sans: Vec<String> = if name == NO_SNI {
            ips.iter()
                .map(ToString::to_string)
                .chain(["localhost".to_owned()])
                .collect()
        } else {
            vec![name.to_owned()]
        };
        let leaf = ca.issue(&sans, *validity)?;
        let key = certified(leaf.chain, leaf.key)?;
        let renew_at = now + *validity * 2 / 3;
        tracing::debug!(name, "issued leaf certificate");
        issued.write().unwrap_or_else(|p| p.into_inner()).insert(
            name.to_owned(),
            Issued {
                key: key.clone(),
                renew_at,
            },
        );
        Ok(key)
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match &self.source {
            Source::Static(k) => Some(k.clone()),
            Source::Ca { names, .. } => {
                let name = match hello.server_name() {
                    Some(n) => n.to_ascii_lowercase(),
                    None => NO_SNI.to_owned(),
                };
                if name != NO_SNI && !names.contains(&name) {
                    tracing::debug!(sni = %name, "no certificate for unconfigured name");
                    return None;
                }
                match self.get_or_issue(&name) {
                    Ok(k) => Some(k),
                    Err(e) => {
                        tracing::error!(sni = %name, error = %crate::error_chain(&e), "cannot issue certificate");
                        None
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_before_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::init(dir.path(), false).unwrap();
        let r = SniResolver::with_ca(
            ca,
            vec!["a.test".into()],
            vec![IpAddr::from([127, 0, 0, 1])],
            Duration::from_secs(3600),
        )
        .unwrap();
        let t0 = SystemTime::now();
        let first = r.get_or_issue_at("a.test", t0).unwrap();
        assert!(
            Arc::ptr_eq(&first, &r.get_or_issue_at("a.test", t0).unwrap()),
            "cached while fresh"
        );
        let later = t0 + Duration::from_secs(2300);
        assert!(
            Arc::ptr_eq(&first, &r.get_or_issue_at("a.test", later).unwrap()),
            "cached until two thirds of its validity"
        );
        let renewed = r
            .get_or_issue_at("a.test", t0 + Duration::from_secs(2401))
            .unwrap();
        assert!(
            !Arc::ptr_eq(&first, &renewed),
            "renewed after two thirds of its validity"
        );
    }
}
