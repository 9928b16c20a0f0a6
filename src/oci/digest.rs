//! Content digests (`sha256:<hex>`, `sha512:<hex>`) and a streaming hasher.

use std::fmt;
use std::str::FromStr;

use sha2::Digest as _;

/// A digest algorithm the mirror can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    /// SHA-256, 64 lowercase hex characters. What every registry uses.
    Sha256,
    /// SHA-512, 128 lowercase hex characters. Allowed by the OCI spec.
    Sha512,
}

impl Algorithm {
    /// The algorithm's name as it appears in a digest string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sha256 => "sha256",
            Self::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Self::Sha256 => 64,
            Self::Sha512 => 128,
        }
    }
}

/// A validated content digest.
///
/// The encoded part is lowercase hex of exactly the algorithm's length, so a
/// `Digest` can be used to build file paths without further checks.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    hex: Box<str>,
}

/// Why a string is not a digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// No `:` separating algorithm and encoded part.
    #[error("digest has no algorithm prefix")]
    MissingAlgorithm,
    /// An algorithm other than sha256 or sha512.
    #[error("unsupported digest algorithm")]
    UnsupportedAlgorithm,
    /// Wrong length or characters outside lowercase hex.
    #[error("malformed digest hex")]
    BadHex,
}

impl Digest {
    /// The digest's algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The lowercase hex part.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The `algorithm` digest of `bytes`.
    pub fn of(algorithm: Algorithm, bytes: &[u8]) -> Self {
        let mut d = Digester::new(algorithm);
        d.update(bytes);
        d.finish()
    }

    /// Computes the sha256 digest of `bytes`.
    pub fn sha256_of(bytes: &[u8]) -> Self {
        Self::of(Algorithm::Sha256, bytes)
    }

    /// Computes the digest of `bytes` with this digest's algorithm and
    /// compares it with `self`.
    pub fn verify(&self, bytes: &[u8]) -> bool {
        let mut d = Digester::new(self.algorithm);
        d.update(bytes);
        d.finish() == *self
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (alg, hex) = s.split_once(':').ok_or(DigestError::MissingAlgorithm)?;
        let algorithm = match alg {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            _ => return Err(DigestError::UnsupportedAlgorithm),
        };
        let ok = hex.len() == algorithm.hex_len()
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !ok {
            return Err(DigestError::BadHex);
        }
        Ok(Self {
            algorithm,
            hex: hex.into(),
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.as_str(), self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Incremental hasher that produces a [`Digest`].
#[derive(Clone)]
pub enum Digester {
    /// SHA-256 state.
    Sha256(sha2::Sha256),
    /// SHA-512 state.
    Sha512(sha2::Sha512),
}

impl fmt::Debug for Digester {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Digester")
    }
}

impl Digester {
    /// A fresh hasher for `algorithm`.
    pub fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Sha256 => Self::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => Self::Sha512(sha2::Sha512::new()),
        }
    }

    /// Feeds more bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Self::Sha256(h) => h.update(bytes),
            Self::Sha512(h) => h.update(bytes),
        }
    }

    /// Finishes and returns the digest.
    pub fn finish(self) -> Digest {
        let (algorithm, hex) = match self {
            Self::Sha256(h) => (Algorithm::Sha256, hex::encode(h.finalize())),
            Self::Sha512(h) => (Algorithm::Sha512, hex::encode(h.finalize())),
        };
        Digest {
            algorithm,
            hex: hex.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let s = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let d: Digest = s.parse().unwrap();
        assert_eq!(d.to_string(), s);
        assert_eq!(Digest::sha256_of(b""), d);
        assert!(d.verify(b""));
        assert!(!d.verify(b"x"));
    }

    #[test]
    fn rejects_bad_input() {
        for bad in [
            "",
            "sha256",
            "sha256:",
            "md5:abcd",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85",
            "sha256:../../../../etc/passwd/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad}");
        }
    }
}
