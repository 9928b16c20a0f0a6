//! PEM bundles: the one parser for every certificate file the mirror reads
//! (upstream and S3 `ca_file`s, the CA, listener certificates).

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// Parses every certificate in a PEM bundle (other PEM sections are ignored).
pub fn parse_certs(bytes: &[u8]) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(bytes)
        .filter_map(Result::ok)
        .collect()
}
