//! The records of hosted namespaces (`[[hosted]]`): what was pushed to each
//! repository. The bytes themselves are ordinary blobs and manifests of the
//! store, shared with the mirrored upstreams (one copy per digest).
//!
//! ```text
//! hosted/<ns>/<repo…>/_layers/<alg>/<hex>                  a blob linked into the repository (JSON: size, linked at)
//! hosted/<ns>/<repo…>/_manifests/<alg>/<hex>               a manifest pushed to it (JSON: media type, size, subject)
//! hosted/<ns>/<repo…>/_tags/<tag>                          a pushed tag (JSON: digest, media type)
//! hosted/<ns>/<repo…>/_referrers/<alg>/<hex>/<alg>/<hex>   a manifest whose subject is the first digest (JSON: its descriptor)
//! ```
//!
//! A repository component never starts with `_`, so none of these names
//! collides with a repository's. A blob is served for a hosted repository
//! only when linked into it (or when it is public content of the store; see
//! `hosted`): links are what makes one repository's pushes invisible to
//! another's clients, and what garbage collection counts.

use serde::{Deserialize, Serialize};

use super::{Error, RecordKey, Store};
use crate::config::UpstreamId;
use crate::oci::{Digest, RepoName, Tag};

/// A repository of a hosted namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostedRepo {
    /// The namespace.
    pub ns: UpstreamId,
    /// The repository in it.
    pub repo: RepoName,
}

impl std::fmt::Display for HostedRepo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.ns, self.repo)
    }
}

/// A blob linked into a hosted repository: uploaded to it, mounted into it,
/// or found in the store for one of its manifests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobLink {
    /// The blob's size.
    pub size: u64,
    /// When it was linked (or last confirmed by a manifest push), in
    /// milliseconds since the epoch: garbage collection spares young links.
    pub linked_ms: u64,
}

/// A manifest pushed to a hosted repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushedManifest {
    /// Its media type.
    pub media_type: String,
    /// Its size.
    pub size: u64,
    /// The manifest it refers to (`subject`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// When it was pushed (ms since the epoch).
    pub pushed_ms: u64,
}

/// A pushed tag: the manifest it names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushedTag {
    /// The manifest's digest.
    pub digest: String,
    /// Its media type.
    pub media_type: String,
    /// When the tag was pushed (ms since the epoch).
    pub pushed_ms: u64,
}

/// A referrer's descriptor, as the referrers API lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Referrer {
    /// The referring manifest's media type.
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// Its digest.
    pub digest: String,
    /// Its size.
    pub size: u64,
    /// Its artifact type (`artifactType`, else its config's media type).
    #[serde(
        rename = "artifactType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub artifact_type: Option<String>,
    /// Its annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<serde_json::Map<String, serde_json::Value>>,
}

fn key<'a>(parts: impl IntoIterator<Item = &'a str>) -> RecordKey {
    RecordKey::from_parts(parts).expect("keys are built from validated names")
}

fn repo_key(r: &HostedRepo, dir: &str) -> RecordKey {
    key(["hosted", r.ns.as_str(), r.repo.as_str(), dir])
}

fn digest_key(r: &HostedRepo, dir: &str, d: &Digest) -> RecordKey {
    key([
        "hosted",
        r.ns.as_str(),
        r.repo.as_str(),
        dir,
        d.algorithm().as_str(),
        d.hex(),
    ])
}

fn referrer_key(r: &HostedRepo, subject: &Digest, d: &Digest) -> RecordKey {
    key([
        "hosted",
        r.ns.as_str(),
        r.repo.as_str(),
        "_referrers",
        subject.algorithm().as_str(),
        subject.hex(),
        d.algorithm().as_str(),
        d.hex(),
    ])
}

/// The digest named by the last two components of `k` (`<alg>/<hex>`).
fn digest_of(k: &RecordKey) -> Option<Digest> {
    let parts: Vec<&str> = k.components().collect();
    let [.., alg, hex] = parts[..] else {
        return None;
    };
    format!("{alg}:{hex}").parse().ok()
}

const LAYERS: &str = "_layers";
const MANIFESTS: &str = "_manifests";
const TAGS: &str = "_tags";

impl Store {
    /// Links `digest` (of `size` bytes) into `r`, now.
    pub async fn hosted_link(
        &self,
        r: &HostedRepo,
        digest: &Digest,
        size: u64,
    ) -> Result<(), Error> {
        let link = BlobLink {
            size,
            linked_ms: crate::tag::epoch_ms(std::time::SystemTime::now()),
        };
        self.put_record(&digest_key(r, LAYERS, digest), &link).await
    }

    /// The link of `digest` into `r`, if any.
    pub async fn hosted_blob_link(
        &self,
        r: &HostedRepo,
        digest: &Digest,
    ) -> Result<Option<BlobLink>, Error> {
        self.record(&digest_key(r, LAYERS, digest)).await
    }

    /// Removes the link of `digest` into `r`.
    pub async fn hosted_unlink(&self, r: &HostedRepo, digest: &Digest) -> Result<(), Error> {
        self.records.delete(&digest_key(r, LAYERS, digest)).await
    }

    /// Every blob linked into `r`.
    pub async fn hosted_links(&self, r: &HostedRepo) -> Result<Vec<Digest>, Error> {
        let keys = self.records.list(&repo_key(r, LAYERS)).await?;
        Ok(keys.iter().filter_map(digest_of).collect())
    }

    /// Records a manifest pushed to `r`.
    pub async fn hosted_put_manifest(
        &self,
        r: &HostedRepo,
        digest: &Digest,
        m: &PushedManifest,
    ) -> Result<(), Error> {
        self.put_record(&digest_key(r, MANIFESTS, digest), m).await
    }

    /// A manifest pushed to `r`, if it is there.
    pub async fn hosted_manifest(
        &self,
        r: &HostedRepo,
        digest: &Digest,
    ) -> Result<Option<PushedManifest>, Error> {
        self.record(&digest_key(r, MANIFESTS, digest)).await
    }

    /// Forgets a manifest of `r` (its bytes stay until collected).
    pub async fn hosted_delete_manifest(
        &self,
        r: &HostedRepo,
        digest: &Digest,
    ) -> Result<(), Error> {
        self.records.delete(&digest_key(r, MANIFESTS, digest)).await
    }

    /// Every manifest of `r`.
    pub async fn hosted_manifests(&self, r: &HostedRepo) -> Result<Vec<Digest>, Error> {
        let keys = self.records.list(&repo_key(r, MANIFESTS)).await?;
        Ok(keys.iter().filter_map(digest_of).collect())
    }

    /// Points tag `tag` of `r` at a manifest.
    pub async fn hosted_put_tag(
        &self,
        r: &HostedRepo,
        tag: &Tag,
        t: &PushedTag,
    ) -> Result<(), Error> {
        let k = key(["hosted", r.ns.as_str(), r.repo.as_str(), TAGS, tag.as_str()]);
        self.put_record(&k, t).await
    }

    /// A pushed tag of `r`.
    pub async fn hosted_tag(&self, r: &HostedRepo, tag: &Tag) -> Result<Option<PushedTag>, Error> {
        let k = key(["hosted", r.ns.as_str(), r.repo.as_str(), TAGS, tag.as_str()]);
        self.record(&k).await
    }

    /// Removes a tag of `r`.
    pub async fn hosted_delete_tag(&self, r: &HostedRepo, tag: &str) -> Result<(), Error> {
        let Some(k) = RecordKey::from_parts(["hosted", r.ns.as_str(), r.repo.as_str(), TAGS, tag])
        else {
            return Ok(());
        };
        self.records.delete(&k).await
    }

    /// The tags of `r`, sorted.
    pub async fn hosted_tags(&self, r: &HostedRepo) -> Result<Vec<String>, Error> {
        let keys = self.records.list(&repo_key(r, TAGS)).await?;
        let mut tags: Vec<String> = keys
            .iter()
            .filter_map(|k| k.components().last().map(str::to_owned))
            .collect();
        tags.sort();
        Ok(tags)
    }

    /// Records that the manifest `referrer` of `r` refers to `subject`.
    pub async fn hosted_put_referrer(
        &self,
        r: &HostedRepo,
        subject: &Digest,
        referrer: &Digest,
        desc: &Referrer,
    ) -> Result<(), Error> {
        self.put_record(&referrer_key(r, subject, referrer), desc)
            .await
    }

    /// Forgets that `referrer` refers to `subject`.
    pub async fn hosted_delete_referrer(
        &self,
        r: &HostedRepo,
        subject: &Digest,
        referrer: &Digest,
    ) -> Result<(), Error> {
        self.records
            .delete(&referrer_key(r, subject, referrer))
            .await
    }

    /// The manifests of `r` that refer to `subject`.
    pub async fn hosted_referrers(
        &self,
        r: &HostedRepo,
        subject: &Digest,
    ) -> Result<Vec<Referrer>, Error> {
        let dir = key([
            "hosted",
            r.ns.as_str(),
            r.repo.as_str(),
            "_referrers",
            subject.algorithm().as_str(),
            subject.hex(),
        ]);
        let mut out = Vec::new();
        for k in self.records.list(&dir).await? {
            if let Some(d) = self.record::<Referrer>(&k).await? {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// The repositories of namespace `ns` that hold anything, sorted.
    pub async fn hosted_repos(&self, ns: &UpstreamId) -> Result<Vec<RepoName>, Error> {
        let keys = self.records.list(&key(["hosted", ns.as_str()])).await?;
        let mut out: Vec<RepoName> = keys
            .iter()
            .filter_map(|k| {
                // hosted / <ns> / <repo…> / _<kind> / …
                let parts: Vec<&str> = k.components().collect();
                let at = parts.iter().position(|c| c.starts_with('_'))?;
                (at > 2).then(|| parts[2..at].join("/").parse().ok())?
            })
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Every digest hosted namespaces link or hold as a manifest: what
    /// eviction keeps.
    pub async fn hosted_digests(&self) -> Result<std::collections::HashSet<Digest>, Error> {
        let keys = self.records.list(&key(["hosted"])).await?;
        Ok(keys
            .iter()
            .filter(|k| {
                let parts: Vec<&str> = k.components().collect();
                let kind = parts.len().checked_sub(3).map(|i| parts[i]);
                // …/_layers|_manifests/<alg>/<hex>, not a referrer entry
                matches!(kind, Some(LAYERS | MANIFESTS))
            })
            .filter_map(digest_of)
            .collect())
    }
}
