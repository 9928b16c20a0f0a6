//! The local certificate authority: created once with `mirrorgate ca init`
//! (or on first `serve`), then used to issue short-lived leaf certificates
//! for the mirror's configured names.
//!
//! Files in the CA directory: `ca.crt` (PEM, mode 0644: give it to clients)
//! and `ca.key` (PEM, mode 0600: never leaves the machine). An existing CA
//! is never overwritten without `--force`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::Digest as _;

use super::Error;

/// File name of the CA certificate.
pub const CA_CERT: &str = "ca.crt";
/// File name of the CA private key.
pub const CA_KEY: &str = "ca.key";
/// How long a new CA is valid.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A loaded local CA.
pub struct LocalCa {
    dir: PathBuf,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCa")
            .field("dir", &self.dir)
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

/// A leaf certificate issued by the CA.
#[derive(Debug)]
pub struct Leaf {
    /// The leaf followed by the CA certificate.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
    /// When it expires.
    pub not_after: SystemTime,
}

fn offset(t: SystemTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from(t)
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Error> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

impl LocalCa {
    /// Creates a new CA in `dir`. Refuses to replace an existing one unless
    /// `force`.
    pub fn init(dir: &Path, force: bool) -> Result<Self, Error> {
        let (cert, key) = (dir.join(CA_CERT), dir.join(CA_KEY));
        if !force && (cert.exists() || key.exists()) {
            return Err(Error::CaExists(dir.to_owned()));
        }
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.to_owned(),
            source,
        })?;
        let key_pair = KeyPair::generate().map_err(Error::Cert)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(Error::Cert)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params
            .distinguished_name
            .push(DnType::CommonName, "mirrorgate local CA");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "mirrorgate");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = SystemTime::now();
        params.not_before = offset(now - Duration::from_secs(3600));
        params.not_after = offset(now + CA_VALIDITY);
        let cert_pem = params.self_signed(&key_pair).map_err(Error::Cert)?.pem();
        // The key first, so a crash never leaves a certificate without it.
        write_file(&key, key_pair.serialize_pem().as_bytes(), 0o600)?;
        write_file(&cert, cert_pem.as_bytes(), 0o644)?;
        Self::load(dir)
    }

    /// Loads the CA from `dir`.
    pub fn load(dir: &Path) -> Result<Self, Error> {
        let read = |p: PathBuf| {
            std::fs::read_to_string(&p).map_err(|source| Error::Io { path: p, source })
        };
        let cert_pem = read(dir.join(CA_CERT))?;
        let key = KeyPair::from_pem(&read(dir.join(CA_KEY))?).map_err(Error::Cert)?;
        let cert_der = crate::pem::parse_certs(cert_pem.as_bytes())
            .into_iter()
            .next()
            .ok_or_else(|| Error::BadPem(dir.join(CA_CERT)))?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, key).map_err(Error::Cert)?;
        Ok(Self {
            dir: dir.to_owned(),
            cert_pem,
            cert_der,
            issuer,
        })
    }

    /// Loads the CA from `dir`, creating it first when there is none.
    pub fn load_or_init(dir: &Path) -> Result<Self, Error> {
        if dir.join(CA_CERT).exists() || dir.join(CA_KEY).exists() {
            Self::load(dir)
        } else {
            let ca = Self::init(dir, false)?;
            tracing::info!(path = %ca.cert_path().display(), fingerprint = %ca.fingerprint(), "created a new local CA");
            Ok(ca)
        }
    }

    /// The CA certificate (PEM).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Path of the CA certificate file.
    pub fn cert_path(&self) -> PathBuf {
        self.dir.join(CA_CERT)
    }

    /// SHA-256 fingerprint of the CA certificate, `AB:CD:...`.
    pub fn fingerprint(&self) -> String {
        let d = sha2::Sha256::digest(self.cert_der.as_ref());
        d.iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":")
    }

    /// Issues a leaf for `names` (DNS names or IP addresses), valid for
    /// `validity` from now.
    pub fn issue(&self, names: &[String], validity: Duration) -> Result<Leaf, Error> {
        let key = KeyPair::generate().map_err(Error::Cert)?;
        let mut params = CertificateParams::new(names.to_vec()).map_err(Error::Cert)?;
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().map_or("mirrorgate", String::as_str),
        );
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = SystemTime::now();
        let not_after = now + validity;
        params.not_before = offset(now - Duration::from_secs(300));
        params.not_after = offset(not_after);
        let cert = params.signed_by(&key, &self.issuer).map_err(Error::Cert)?;
        Ok(Leaf {
            chain: vec![cert.der().clone(), self.cert_der.clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            not_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use rustls::client::danger::ServerCertVerifier as _;

    use super::*;

    #[test]
    fn init_load_and_refuse_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::init(dir.path(), false).unwrap();
        let mode = std::fs::metadata(dir.path().join(CA_KEY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let fp = ca.fingerprint();
        assert_eq!(fp.len(), 32 * 3 - 1);
        assert!(matches!(
            LocalCa::init(dir.path(), false),
            Err(Error::CaExists(_))
        ));
        assert_eq!(LocalCa::load(dir.path()).unwrap().fingerprint(), fp);
        assert_eq!(LocalCa::load_or_init(dir.path()).unwrap().fingerprint(), fp);
        let again = LocalCa::init(dir.path(), true).unwrap();
        assert_ne!(again.fingerprint(), fp);
    }

    #[test]
    fn leaves_chain_to_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::init(dir.path(), false).unwrap();
        let leaf = ca
            .issue(
                &["mirror.test".into(), "127.0.0.1".into()],
                Duration::from_secs(3600),
            )
            .unwrap();
        assert_eq!(leaf.chain.len(), 2);
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert_der.clone()).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots.into(), provider)
                .build()
                .unwrap();
        let now = rustls_pki_types::UnixTime::now();
        for name in ["mirror.test", "127.0.0.1"] {
            let sn = rustls_pki_types::ServerName::try_from(name).unwrap();
            verifier
                .verify_server_cert(&leaf.chain[0], &leaf.chain[1..], &sn, &[], now)
                .unwrap();
        }
        let other = rustls_pki_types::ServerName::try_from("other.test").unwrap();
        assert!(
            verifier
                .verify_server_cert(&leaf.chain[0], &leaf.chain[1..], &other, &[], now)
                .is_err()
        );
    }
}
