//! Signatures of replica-to-replica requests: HMAC-SHA256, with the
//! cluster's shared secret, over the method, the path and query, the first
//! byte asked for and the time. The internal endpoint answers nothing
//! without one, so it can never serve as an open proxy for the mirror's
//! upstream credentials or its store.
//!
//! The header is `<unix ms>.<hex tag>`. A signature is accepted for
//! [`MAX_SKEW`] either side of the receiver's clock: a replayed request
//! can only read again what the original could read.

use aws_lc_rs::hmac;

use crate::config::Secret;

/// How far a signature's time may be from the receiver's clock.
pub(super) const MAX_SKEW_MS: u64 = 5 * 60 * 1000;

/// Why a request's signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// No signature header.
    #[error("the request is not signed")]
    Missing,
    /// Not `<ms>.<hex>`.
    #[error("the signature is malformed")]
    Malformed,
    /// Signed too long ago, or in the future.
    #[error("the signature's time is more than 5 minutes off")]
    Expired,
    /// Not signed with this cluster's secret, or for another request.
    #[error("the signature does not match")]
    Mismatch,
}

fn message(method: &str, path_and_query: &str, from: u64, at_ms: u64) -> String {
    format!("mirrorgate-peer-v1\n{method}\n{path_and_query}\n{from}\n{at_ms}")
}

fn key(secret: &Secret) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, secret.expose().as_bytes())
}

/// The signature header for a request.
pub(super) fn sign(
    secret: &Secret,
    method: &str,
    path_and_query: &str,
    from: u64,
    now_ms: u64,
) -> String {
    let tag = hmac::sign(
        &key(secret),
        message(method, path_and_query, from, now_ms).as_bytes(),
    );
    format!("{now_ms}.{}", hex::encode(tag.as_ref()))
}

/// Checks a request's signature header (in constant time).
pub(super) fn check(
    secret: &Secret,
    method: &str,
    path_and_query: &str,
    from: u64,
    header: Option<&str>,
    now_ms: u64,
) -> Result<(), SignError> {
    let header = header.ok_or(SignError::Missing)?;
    let (at, tag) = header.split_once('.').ok_or(SignError::Malformed)?;
    let at: u64 = at.parse().map_err(|_| SignError::Malformed)?;
    let tag = hex::decode(tag).map_err(|_| SignError::Malformed)?;
    if at.abs_diff(now_ms) > MAX_SKEW_MS {
        return Err(SignError::Expired);
    }
    let msg = message(method, path_and_query, from, at);
    hmac::verify(&key(secret), msg.as_bytes(), &tag).map_err(|_| SignError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    #[test]
    fn a_signature_checks_only_for_its_request_secret_and_time() {
        let s = Secret::new("sixteen-bytes-at-least");
        let p = "/_mirrorgate/v1/blobs/sha256:ab?upstream=docker.io&repo=library/alpine";
        let sig = sign(&s, "GET", p, 7, NOW);
        assert_eq!(check(&s, "GET", p, 7, Some(&sig), NOW), Ok(()));
        assert_eq!(
            check(&s, "GET", p, 7, Some(&sig), NOW + MAX_SKEW_MS),
            Ok(())
        );
        // Another request, offset, method, secret or time.
        let other = "/_mirrorgate/v1/blobs/sha256:ab?upstream=docker.io&repo=library/busybox";
        assert_eq!(
            check(&s, "GET", other, 7, Some(&sig), NOW),
            Err(SignError::Mismatch)
        );
        assert_eq!(
            check(&s, "GET", p, 8, Some(&sig), NOW),
            Err(SignError::Mismatch)
        );
        assert_eq!(
            check(&s, "HEAD", p, 7, Some(&sig), NOW),
            Err(SignError::Mismatch)
        );
        let wrong = Secret::new("another-secret-of-16");
        assert_eq!(
            check(&wrong, "GET", p, 7, Some(&sig), NOW),
            Err(SignError::Mismatch)
        );
        assert_eq!(
            check(&s, "GET", p, 7, Some(&sig), NOW + MAX_SKEW_MS + 1),
            Err(SignError::Expired)
        );
        // A signature with its time moved no longer matches.
        let (_, tag) = sig.split_once('.').unwrap();
        let moved = format!("{}.{tag}", NOW + 1);
        assert_eq!(
            check(&s, "GET", p, 7, Some(&moved), NOW),
            Err(SignError::Mismatch)
        );
        assert_eq!(check(&s, "GET", p, 7, None, NOW), Err(SignError::Missing));
        for bad in ["", "123", "x.00", "123.zz"] {
            assert_eq!(
                check(&s, "GET", p, 7, Some(bad), NOW),
                Err(SignError::Malformed),
                "{bad}"
            );
        }
    }
}
