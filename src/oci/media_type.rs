//! Manifest media types and `Accept` negotiation classes.

/// Docker v2 schema 2 image manifest.
pub const DOCKER_MANIFEST_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list (multi-arch).
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index (multi-arch).
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Legacy signed schema 1 manifest.
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
/// Legacy schema 1 manifest.
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";

/// The manifest media types the mirror knows, in the order they are sent
/// upstream. The bit position in [`AcceptClass`] is the index here.
const KNOWN: [&str; 6] = [
    DOCKER_MANIFEST_V2,
    DOCKER_MANIFEST_LIST,
    OCI_MANIFEST,
    OCI_INDEX,
    DOCKER_SCHEMA1_SIGNED,
    DOCKER_SCHEMA1,
];

/// A manifest media type as received from upstream (`Content-Type`).
///
/// Kept verbatim: the mirror never guesses or rewrites a media type, because
/// clients compare it with the manifest's own `mediaType` field.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MediaType(Box<str>);

impl MediaType {
    /// Wraps a media type string, dropping parameters such as `; charset=utf-8`.
    pub fn new(s: &str) -> Self {
        let base = s.split(';').next().unwrap_or_default().trim();
        Self(base.into())
    }

    /// The media type as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is a multi-platform list or index.
    pub fn is_index(&self) -> bool {
        matches!(&*self.0, DOCKER_MANIFEST_LIST | OCI_INDEX)
    }
}

/// Which manifest media types a client accepts, as a small set.
///
/// One tag can resolve to different digests depending on `Accept` (a
/// multi-arch tag asked for without list types yields a single-platform
/// manifest), so tag→digest entries are keyed by this class. It has at most
/// 64 values, which keeps the key space bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AcceptClass(u8);

impl AcceptClass {
    /// Classifies `Accept` header values. Unknown types, `*/*` and
    /// parameters (`q=`) are ignored. A client that names no manifest type
    /// at all (curl, scripts) is treated as accepting every modern type:
    /// otherwise registries fall back to legacy schema 1, whose signed form
    /// does not even hash to its own `Docker-Content-Digest`.
    pub fn from_accept<'a>(values: impl IntoIterator<Item = &'a str>) -> Self {
        let mut bits = 0u8;
        for v in values {
            for item in v.split(',') {
                let base = item.split(';').next().unwrap_or_default().trim();
                if let Some(i) = KNOWN.iter().position(|k| k.eq_ignore_ascii_case(base)) {
                    bits |= 1 << i;
                }
            }
        }
        if bits == 0 {
            Self::all_modern()
        } else {
            Self(bits)
        }
    }

    /// The class of a client that accepts every modern manifest type.
    pub fn all_modern() -> Self {
        Self(0b1111)
    }

    /// The value to send upstream as `Accept`, or `None` when the client named
    /// no known type (the upstream then picks its default).
    pub fn to_accept(self) -> Option<String> {
        let v: Vec<&str> = KNOWN
            .iter()
            .enumerate()
            .filter(|(i, _)| self.0 & (1 << i) != 0)
            .map(|(_, k)| *k)
            .collect();
        (!v.is_empty()).then(|| v.join(", "))
    }

    /// Whether a client of this class accepts a manifest of media type
    /// `mt` (an unknown type: never).
    pub fn accepts(self, mt: &str) -> bool {
        let base = mt.split(';').next().unwrap_or_default().trim();
        KNOWN
            .iter()
            .position(|k| k.eq_ignore_ascii_case(base))
            .is_some_and(|i| self.0 & (1 << i) != 0)
    }

    /// A short stable name used in on-disk tag records, e.g. `a15`.
    pub fn key(self) -> String {
        format!("a{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        let c = AcceptClass::from_accept([
            "application/vnd.docker.distribution.manifest.v2+json; q=0.9, application/vnd.oci.image.index.v1+json",
            "*/*",
        ]);
        assert_eq!(c, AcceptClass(0b1001));
        assert_eq!(
            c.to_accept().unwrap(),
            format!("{DOCKER_MANIFEST_V2}, {OCI_INDEX}")
        );
        assert!(c.accepts(OCI_INDEX) && c.accepts(&format!("{DOCKER_MANIFEST_V2}; x=y")));
        assert!(!c.accepts(OCI_MANIFEST) && !c.accepts("text/plain"));
        assert_eq!(AcceptClass::from_accept(["*/*"]), AcceptClass::all_modern());
        assert_eq!(AcceptClass::from_accept([]), AcceptClass::all_modern());
        assert_eq!(MediaType::new("a/b; charset=utf-8").as_str(), "a/b");
        assert!(MediaType::new(OCI_INDEX).is_index());
    }
}
