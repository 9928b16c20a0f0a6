//! The tag map's types: which digest a tag pointed to when upstream last
//! confirmed it. Kept by the store, cached in memory, decided on by the
//! mirror, so they live below all three.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::config::UpstreamId;
use crate::oci::{AcceptClass, Digest, RepoName, Tag};

/// Identifies one tag mapping. The accept class is part of the key because
/// one tag can resolve to different manifests for different `Accept` sets.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TagKey {
    /// The upstream the tag belongs to.
    pub upstream: UpstreamId,
    /// Repository name as sent upstream (after `library/`).
    pub repo: RepoName,
    /// The tag.
    pub tag: Tag,
    /// What the client accepts.
    pub class: AcceptClass,
}

/// A tag's resolution as last confirmed by upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagRecord {
    /// The manifest digest.
    #[serde(with = "digest_str")]
    pub digest: Digest,
    /// The manifest's media type.
    pub media_type: String,
    /// The manifest's size in bytes.
    pub size: u64,
    /// When upstream last confirmed this mapping, in milliseconds since the
    /// Unix epoch.
    pub checked_at_ms: u64,
}

impl TagRecord {
    /// How long ago upstream last confirmed the mapping (zero if the clock
    /// went backwards).
    pub fn age(&self, now: SystemTime) -> Duration {
        let checked = UNIX_EPOCH + Duration::from_millis(self.checked_at_ms);
        now.duration_since(checked).unwrap_or_default()
    }
}

/// Milliseconds since the Unix epoch for `t`.
pub fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

mod digest_str {
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    use crate::oci::Digest;

    pub(super) fn serialize<S: Serializer>(d: &Digest, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(d)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(D::Error::custom)
    }
}
