//! What the store holds, read from its records and blobs: the tags of each
//! upstream's repositories, the manifests and blobs each image needs, the
//! pins; and what `rm` and `gc` may delete without breaking a cached
//! manifest.
//!
//! ```text
//! repos/<upstream>/<repo…>/_tags/<tag>.<class>   tag record (see `records`)
//! repos/<upstream>/<repo…>/_tags/@<alg>:<hex>    pulled by digest (empty)
//! pins/<upstream>/<repo…>/_pins/<tag>            pin of a tag (JSON)
//! pins/<upstream>/<repo…>/_pins/@<alg>:<hex>     pin of a digest (JSON)
//! ```
//!
//! Safety rules, for every backend, while a mirror serves from the store:
//! - A blob is only deleted when no stored manifest refers to it (every
//!   stored manifest is a root, tagged or not), and, for `gc`, when it was
//!   neither written nor read for a grace period: a download that is being
//!   committed, or whose manifest is about to be stored, is younger than
//!   that.
//! - A manifest is only deleted by `rm` of an image that reaches it, when no
//!   remaining tag, digest reference, pin or other stored index reaches it.
//! - A pinned image is never evicted, and `rm` refuses it.
//!
//! A local file that is deleted while a client streams it stays readable
//! through the open file; the next request fetches it again.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{Error, RecordKey, Store, TagRecord};
use crate::config::UpstreamId;
use crate::oci::manifest::{Platform, Refs};
use crate::oci::{Digest, RepoName, Tag};

/// The record directory of a repository's tags (see [`super::keys`]).
const TAGS_DIR: &str = "_tags";
/// The record directory of a repository's pins.
const PINS_DIR: &str = "_pins";

/// What an image reference names in one repository: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Named {
    /// A tag (every accept class of it).
    Tag(Tag),
    /// A manifest digest.
    Digest(Digest),
}

impl Named {
    /// The record file name: the tag, or `@` and the digest.
    fn file(&self) -> String {
        match self {
            Self::Tag(t) => t.as_str().to_owned(),
            Self::Digest(d) => format!("@{d}"),
        }
    }

    fn parse_file(s: &str) -> Option<Self> {
        match s.strip_prefix('@') {
            Some(d) => d.parse().ok().map(Self::Digest),
            None => s.parse().ok().map(Self::Tag),
        }
    }
}

impl std::fmt::Display for Named {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tag(t) => write!(f, ":{t}"),
            Self::Digest(d) => write!(f, "@{d}"),
        }
    }
}

/// What the stored images take, by repository and upstream
/// ([`Store::usage`]). A blob shared by several repositories counts in
/// each of them (and once in its upstream's and the store's totals).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Usage {
    /// Every stored blob's bytes.
    pub total_bytes: u64,
    /// Stored blobs.
    pub blobs: usize,
    /// Bytes reachable from a tag or digest reference.
    pub tagged_bytes: u64,
    /// Per upstream, by name.
    pub upstreams: Vec<UsageRow>,
    /// Per repository, by upstream and name.
    pub repositories: Vec<UsageRow>,
}

/// One upstream's or repository's share of the store.
#[derive(Debug, Clone, Serialize)]
pub struct UsageRow {
    /// The upstream.
    pub upstream: String,
    /// The repository (as sent upstream); empty in an upstream's row.
    pub repository: String,
    /// Bytes of the stored blobs its images need.
    pub bytes: u64,
    /// Those blobs.
    pub blobs: usize,
}

/// An image in the store's terms: upstream, repository (as sent upstream)
/// and tag or digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageKey {
    /// The upstream.
    pub upstream: String,
    /// The repository.
    pub repo: RepoName,
    /// The tag or digest.
    pub named: Named,
}

impl ImageKey {
    /// An image of `upstream`.
    pub fn new(upstream: &UpstreamId, repo: RepoName, named: Named) -> Self {
        Self {
            upstream: upstream.as_str().to_owned(),
            repo,
            named,
        }
    }
}

impl std::fmt::Display for ImageKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}{}", self.upstream, self.repo, self.named)
    }
}

/// One repository reference the store has: a tag record (one per accept
/// class the tag was asked with) or a digest pulled directly.
#[derive(Debug, Clone)]
pub struct RefRow {
    /// The image.
    pub image: ImageKey,
    /// The tag record (`None` for a digest reference).
    pub record: Option<TagRecord>,
    /// Where the row is kept.
    key: RecordKey,
}

impl RefRow {
    /// The manifest digest the reference resolves to.
    pub fn digest(&self) -> Option<&Digest> {
        match (&self.record, &self.image.named) {
            (Some(r), _) => Some(&r.digest),
            (None, Named::Digest(d)) => Some(d),
            (None, Named::Tag(_)) => None,
        }
    }
}

/// A pin: the image must never be evicted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinRecord {
    /// What was pinned, as the user named it.
    pub image: String,
    /// When, in milliseconds since the Unix epoch.
    pub pinned_at_ms: u64,
    /// Who pinned it: `None` for a person (`mirrorgate pin`), else the
    /// `[[warm]]` entry that keeps it warm (and unpins it when it leaves
    /// the list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// A stored manifest and what it refers to.
#[derive(Debug, Clone)]
pub struct ManifestNode {
    /// Its digest.
    pub digest: Digest,
    /// Its media type, as upstream sent it.
    pub media_type: String,
    /// Its size in bytes.
    pub size: u64,
    /// What it refers to (`None`: not an image manifest or index, e.g. an
    /// artifact without a config; its bytes are kept, its refs unknown).
    pub refs: Option<Refs>,
}

/// Everything an image needs: its manifests (the index and its children)
/// and the blobs they name.
#[derive(Debug, Clone, Default)]
pub struct Closure {
    /// Manifests in the store, the root first.
    pub manifests: Vec<ManifestNode>,
    /// Manifests named but not stored (platforms never pulled).
    pub missing: Vec<(Digest, Option<Platform>)>,
    /// Configs and layers, with the size their manifest declares.
    pub blobs: BTreeMap<Digest, u64>,
}

impl Closure {
    /// Every digest it names that the store may hold: manifests and blobs.
    pub fn digests(&self) -> impl Iterator<Item = &Digest> {
        self.manifests
            .iter()
            .map(|m| &m.digest)
            .chain(self.blobs.keys())
    }
}

/// What [`Store::gc`] did (or, dry, would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcOutcome {
    /// Blobs in the store.
    pub blobs: u64,
    /// Stored manifests (the roots).
    pub manifests: u64,
    /// Blobs some stored manifest refers to.
    pub referenced: u64,
    /// Unreferenced blobs kept because they are younger than the grace.
    pub young: u64,
    /// Blobs deleted (or to delete, when dry).
    pub deleted: Vec<String>,
    /// Their bytes.
    pub deleted_bytes: u64,
}

/// What [`Store::remove`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RemoveOutcome {
    /// References (tags, digest references) removed.
    pub references: Vec<String>,
    /// Manifests removed.
    pub manifests: Vec<String>,
    /// Blobs removed.
    pub blobs: Vec<String>,
    /// Their bytes.
    pub bytes: u64,
}

/// Why `rm` did not remove an image.
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    /// The store has no such reference.
    #[error("{0} is not in the cache")]
    NotFound(String),
    /// It is pinned.
    #[error("{0} is pinned (unpin it first)")]
    Pinned(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] Error),
}

fn key<'a>(parts: impl IntoIterator<Item = &'a str>) -> RecordKey {
    RecordKey::from_parts(parts).expect("keys are built from validated names")
}

fn pin_key(image: &ImageKey) -> RecordKey {
    key([
        "pins",
        &image.upstream,
        image.repo.as_str(),
        PINS_DIR,
        &image.named.file(),
    ])
}

fn digest_ref_key(upstream: &UpstreamId, repo: &RepoName, digest: &Digest) -> RecordKey {
    key([
        "repos",
        upstream.as_str(),
        repo.as_str(),
        TAGS_DIR,
        &Named::Digest(digest.clone()).file(),
    ])
}

/// Splits `<root>/<upstream>/<repo…>/<dir>/<file>` (`None` when the key
/// has another shape).
fn split_ref_key<'a>(k: &'a RecordKey, dir: &str) -> Option<(&'a str, RepoName, &'a str)> {
    let parts: Vec<&str> = k.components().collect();
    let at = parts.iter().rposition(|c| *c == dir)?;
    if at <= 2 || at + 2 != parts.len() {
        return None;
    }
    let repo = parts[2..at].join("/").parse().ok()?;
    Some((parts[1], repo, parts[at + 1]))
}

impl Store {
    /// Records that a repository's manifest was pulled by digest (for `ls`;
    /// children of an index pulled by digest are recorded too, and shown
    /// under their index).
    pub async fn note_digest_ref(
        &self,
        upstream: &UpstreamId,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<(), Error> {
        let key = digest_ref_key(upstream, repo, digest);
        if self.records.get(&key).await?.is_none() {
            self.records.put(&key, Bytes::new()).await?;
        }
        Ok(())
    }

    /// Every repository reference in the store (of every upstream), sorted
    /// by upstream, repository and reference.
    pub async fn references(&self) -> Result<Vec<RefRow>, Error> {
        let keys = self.records.list(&key(["repos"])).await?;
        let mut out = Vec::new();
        for k in keys {
            let Some((up, repo, file)) = split_ref_key(&k, TAGS_DIR) else {
                continue;
            };
            if file.starts_with('.') {
                continue; // the repository mark
            }
            if let Some(named @ Named::Digest(_)) = Named::parse_file(file) {
                out.push(RefRow {
                    image: ImageKey {
                        upstream: up.to_owned(),
                        repo,
                        named,
                    },
                    record: None,
                    key: k.clone(),
                });
                continue;
            }
            // <tag>.<class>: a tag may hold dots, the class never does.
            let Some((tag, _class)) = file.rsplit_once('.') else {
                continue;
            };
            let Ok(tag) = tag.parse::<Tag>() else {
                continue;
            };
            let Some(record) = self.record::<TagRecord>(&k).await? else {
                continue;
            };
            out.push(RefRow {
                image: ImageKey {
                    upstream: up.to_owned(),
                    repo,
                    named: Named::Tag(tag),
                },
                record: Some(record),
                key: k.clone(),
            });
        }
        out.sort_by(|a, b| a.image.cmp(&b.image));
        Ok(out)
    }

    /// The references of one image (every accept class of a tag; the digest
    /// reference of a digest).
    pub async fn references_of(&self, image: &ImageKey) -> Result<Vec<RefRow>, Error> {
        Ok(self
            .references()
            .await?
            .into_iter()
            .filter(|r| r.image == *image)
            .collect())
    }

    /// Pins `image` (it need not be cached yet: what it resolves to when
    /// eviction runs is kept).
    pub async fn pin(
        &self,
        image: &ImageKey,
        label: &str,
        source: Option<&str>,
    ) -> Result<(), Error> {
        let rec = PinRecord {
            image: label.to_owned(),
            pinned_at_ms: crate::tag::epoch_ms(SystemTime::now()),
            source: source.map(str::to_owned),
        };
        self.put_record(&pin_key(image), &rec).await
    }

    /// Unpins `image`; `false` when it was not pinned.
    pub async fn unpin(&self, image: &ImageKey) -> Result<bool, Error> {
        let k = pin_key(image);
        if self.records.get(&k).await?.is_none() {
            return Ok(false);
        }
        self.records.delete(&k).await?;
        Ok(true)
    }

    /// Every pin.
    pub async fn pins(&self) -> Result<Vec<(ImageKey, PinRecord)>, Error> {
        let mut out = Vec::new();
        for k in self.records.list(&key(["pins"])).await? {
            let Some((up, repo, file)) = split_ref_key(&k, PINS_DIR) else {
                continue;
            };
            let Some(named) = Named::parse_file(file) else {
                continue;
            };
            let Some(rec) = self.record::<PinRecord>(&k).await? else {
                continue;
            };
            let image = ImageKey {
                upstream: up.to_owned(),
                repo,
                named,
            };
            out.push((image, rec));
        }
        Ok(out)
    }

    /// Every digest stored manifests name (manifests and blobs), of the
    /// images pinned now: what eviction keeps.
    pub async fn pinned_digests(&self) -> Result<HashSet<Digest>, Error> {
        let pins = self.pins().await?;
        // Pushed content is no cache: it is never evicted.
        let hosted = self.hosted_digests().await?;
        if pins.is_empty() {
            return Ok(hosted);
        }
        let refs = self.references().await?;
        let mut memo = Memo::default();
        let mut out = HashSet::new();
        for (image, _) in &pins {
            for root in roots_of(image, &refs) {
                let c = self.closure_memo(&root, &mut memo).await?;
                out.extend(c.digests().cloned());
                out.insert(root);
            }
        }
        out.extend(hosted);
        Ok(out)
    }

    /// Every digest the mirrored repositories' references reach (their
    /// manifests and blobs, as far as stored): what a hosted namespace's
    /// collection must leave to the cache.
    pub async fn mirror_digests(&self) -> Result<HashSet<Digest>, Error> {
        let mut memo = Memo::default();
        let mut out = HashSet::new();
        for r in self.references().await? {
            let Some(d) = r.digest() else { continue };
            if out.contains(d) {
                continue;
            }
            let c = self.closure_memo(d, &mut memo).await?;
            out.extend(c.digests().cloned());
            out.insert(d.clone());
        }
        Ok(out)
    }

    /// Digests of every stored manifest.
    pub async fn manifest_digests(&self) -> Result<Vec<Digest>, Error> {
        let keys = self.records.list(&key(["manifests"])).await?;
        Ok(keys
            .iter()
            .filter_map(|k| {
                // manifests / <alg> / <xx> / <hex>
                let p: Vec<&str> = k.components().collect();
                match p[..] {
                    [_, alg, _, hex] => format!("{alg}:{hex}").parse().ok(),
                    _ => None,
                }
            })
            .collect())
    }

    /// The manifests and blobs `root` needs, as far as the store has them.
    pub async fn closure(&self, root: &Digest) -> Result<Closure, Error> {
        self.closure_memo(root, &mut Memo::default()).await
    }

    /// [`Store::closure`] of each root, reading shared manifests once.
    pub async fn closures(
        &self,
        roots: impl IntoIterator<Item = Digest>,
    ) -> Result<HashMap<Digest, Closure>, Error> {
        let mut memo = Memo::default();
        let mut out = HashMap::new();
        for r in roots {
            if let std::collections::hash_map::Entry::Vacant(e) = out.entry(r) {
                let c = self.closure_memo(e.key(), &mut memo).await?;
                e.insert(c);
            }
        }
        Ok(out)
    }

    async fn closure_memo(&self, root: &Digest, memo: &mut Memo) -> Result<Closure, Error> {
        let mut c = Closure::default();
        let mut todo = vec![(root.clone(), None)];
        let mut seen = HashSet::new();
        while let Some((d, platform)) = todo.pop() {
            if !seen.insert(d.clone()) {
                continue;
            }
            let Some(node) = self.node(&d, memo).await? else {
                c.missing.push((d, platform));
                continue;
            };
            match &node.refs {
                Some(Refs::Index(children)) => {
                    for ch in children.iter().rev() {
                        if ch.media_type.as_deref().is_some_and(is_blob_type) {
                            c.blobs.insert(ch.digest.clone(), ch.size);
                        } else {
                            todo.push((ch.digest.clone(), ch.platform.clone()));
                        }
                    }
                }
                Some(Refs::Image { config, layers }) => {
                    for b in std::iter::once(config).chain(layers) {
                        c.blobs.insert(b.digest.clone(), b.size);
                    }
                }
                None => {}
            }
            c.manifests.push(node);
        }
        Ok(c)
    }

    async fn node(&self, d: &Digest, memo: &mut Memo) -> Result<Option<ManifestNode>, Error> {
        if let Some(n) = memo.0.get(d) {
            return Ok(n.clone());
        }
        let node = self.manifest(d).await?.map(|(bytes, rec)| ManifestNode {
            digest: d.clone(),
            media_type: rec.media_type,
            size: rec.size,
            refs: Refs::parse(&bytes).ok(),
        });
        memo.0.insert(d.clone(), node.clone());
        Ok(node)
    }

    /// Every digest that some stored manifest reaches, the manifests
    /// included (the roots of `gc`).
    async fn referenced(&self, memo: &mut Memo) -> Result<(HashSet<Digest>, u64), Error> {
        let manifests = self.manifest_digests().await?;
        let mut out = HashSet::new();
        for m in &manifests {
            if out.contains(m) {
                continue;
            }
            let c = self.closure_memo(m, memo).await?;
            out.extend(c.digests().cloned());
            out.insert(m.clone());
        }
        Ok((out, manifests.len() as u64))
    }

    /// Deletes the blobs no stored manifest refers to that were neither
    /// written nor (locally) read for `grace`, and never one in use here.
    /// With `dry`, only reports them.
    pub async fn gc(&self, grace: Duration, dry: bool) -> Result<GcOutcome, Error> {
        // Roots first, blobs second: a manifest stored in between has blobs
        // younger than the grace.
        let (mut referenced, manifests) = self.referenced(&mut Memo::default()).await?;
        // Pushed content is the hosted namespaces' to collect.
        referenced.extend(self.hosted_digests().await?);
        let blobs = self.blobs.list().await?;
        let cutoff = SystemTime::now()
            .checked_sub(grace)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut out = GcOutcome {
            blobs: blobs.len() as u64,
            manifests,
            ..GcOutcome::default()
        };
        for b in blobs {
            if referenced.contains(&b.digest) {
                out.referenced += 1;
                continue;
            }
            let in_use = self.blobs.local().is_some_and(|l| l.in_use(&b.digest));
            if b.modified > cutoff || in_use {
                out.young += 1;
                continue;
            }
            if !dry {
                self.blobs.delete(&b.digest).await?;
            }
            out.deleted_bytes += b.size;
            out.deleted.push(b.digest.to_string());
        }
        Ok(out)
    }

    /// Removes an image's references; with `blobs`, also its manifests and
    /// blobs that nothing else in the store still needs.
    pub async fn remove(
        &self,
        image: &ImageKey,
        blobs: bool,
    ) -> Result<RemoveOutcome, RemoveError> {
        let pins = self.pins().await?;
        let all = self.references().await?;
        let mine: Vec<&RefRow> = all.iter().filter(|r| r.image == *image).collect();
        let by_digest = matches!(image.named, Named::Digest(_));
        if mine.is_empty() && !(blobs && by_digest) {
            return Err(RemoveError::NotFound(image.to_string()));
        }
        let mut memo = Memo::default();
        let roots: BTreeSet<Digest> = roots_of(image, &all).into_iter().collect();
        // A pin of this image, or of another that reaches what would go.
        let pinned_here = pins.iter().any(|(p, _)| p == image);
        if pinned_here {
            return Err(RemoveError::Pinned(image.to_string()));
        }
        let mut out = RemoveOutcome::default();
        for r in &mine {
            self.records.delete(&r.key).await?;
            out.references.push(r.image.to_string());
        }
        out.references.dedup();
        if !blobs {
            return Ok(out);
        }
        // What must stay: everything the remaining references, the pins
        // and the stored manifests outside this image reach.
        let mut gone = Closure::default();
        for root in &roots {
            let c = self.closure_memo(root, &mut memo).await?;
            gone.manifests.extend(c.manifests);
            gone.blobs.extend(c.blobs);
        }
        let gone_manifests: HashSet<Digest> =
            gone.manifests.iter().map(|m| m.digest.clone()).collect();
        let mut keep_roots: Vec<Digest> = all
            .iter()
            .filter(|r| r.image != *image)
            .filter_map(|r| r.digest().cloned())
            .collect();
        for (p, _) in &pins {
            keep_roots.extend(roots_of(p, &all));
        }
        keep_roots.extend(
            self.manifest_digests()
                .await?
                .into_iter()
                .filter(|d| !gone_manifests.contains(d)),
        );
        let mut keep = HashSet::new();
        for r in keep_roots {
            if keep.contains(&r) {
                continue;
            }
            let c = self.closure_memo(&r, &mut memo).await?;
            keep.extend(c.digests().cloned());
            keep.insert(r);
        }
        // And whatever a hosted namespace holds.
        keep.extend(self.hosted_digests().await?);
        // Manifest records first: once a manifest is gone, its blobs are
        // nobody's, never the other way round.
        let mut removed = HashSet::new();
        for m in &gone.manifests {
            if keep.contains(&m.digest) || !removed.insert(m.digest.clone()) {
                continue;
            }
            self.records
                .delete(&super::keys::manifest(&m.digest))
                .await?;
            out.manifests.push(m.digest.to_string());
        }
        let candidates: BTreeSet<&Digest> = removed
            .iter()
            .chain(gone.blobs.keys().filter(|d| !keep.contains(*d)))
            .collect();
        for d in candidates {
            if let Some(size) = self.blobs.stat(d).await? {
                self.blobs.delete(d).await?;
                out.bytes += size;
                out.blobs.push(d.to_string());
            }
        }
        // The digest references of the removed manifests, in any repository.
        for r in &all {
            if r.record.is_none()
                && r.image != *image
                && r.digest().is_some_and(|d| removed.contains(d))
            {
                self.records.delete(&r.key).await?;
            }
        }
        Ok(out)
    }
}

/// Manifests read so far in one walk (several images share children).
#[derive(Debug, Default)]
struct Memo(HashMap<Digest, Option<ManifestNode>>);

/// The manifest digests `image` resolves to in `refs` (a digest resolves
/// to itself).
fn roots_of(image: &ImageKey, refs: &[RefRow]) -> Vec<Digest> {
    let mut out: Vec<Digest> = match &image.named {
        Named::Digest(d) => vec![d.clone()],
        Named::Tag(_) => refs
            .iter()
            .filter(|r| r.image == *image)
            .filter_map(|r| r.digest().cloned())
            .collect(),
    };
    out.sort_by_key(ToString::to_string);
    out.dedup();
    out
}

/// Whether an index entry is a blob rather than a manifest (indexes may
/// name layers directly, e.g. attestation or artifact indexes).
fn is_blob_type(mt: &str) -> bool {
    !(mt.contains("manifest") || mt.contains("index"))
}

impl Store {
    /// What the stored images take, by repository and upstream: every
    /// reference's closure (its manifests and their blobs) summed over the
    /// blobs the store holds. Reads every record and manifest: for
    /// `mirrorgate du` and the status page (which caches it), not for
    /// requests.
    pub async fn usage(&self) -> Result<Usage, Error> {
        let refs = self.references().await?;
        let blobs: HashMap<Digest, u64> = self
            .blobs()
            .list()
            .await?
            .into_iter()
            .map(|b| (b.digest, b.size))
            .collect();
        let roots: Vec<Digest> = refs.iter().filter_map(|r| r.digest().cloned()).collect();
        let closures = self.closures(roots).await?;
        let mut by_repo: BTreeMap<(String, String), HashSet<&Digest>> = BTreeMap::new();
        for r in &refs {
            let Some(c) = r.digest().and_then(|d| closures.get(d)) else {
                continue;
            };
            by_repo
                .entry((r.image.upstream.clone(), r.image.repo.to_string()))
                .or_default()
                .extend(c.digests());
        }
        let mut by_upstream: BTreeMap<String, HashSet<&Digest>> = BTreeMap::new();
        for ((up, _), set) in &by_repo {
            by_upstream
                .entry(up.clone())
                .or_default()
                .extend(set.iter().copied());
        }
        let row = |upstream: &str, repository: &str, set: &HashSet<&Digest>| {
            let stored = || set.iter().filter_map(|d| blobs.get(*d));
            UsageRow {
                upstream: upstream.to_owned(),
                repository: repository.to_owned(),
                bytes: stored().sum(),
                blobs: stored().count(),
            }
        };
        let referenced: HashSet<&Digest> = by_upstream.values().flatten().copied().collect();
        Ok(Usage {
            total_bytes: blobs.values().sum(),
            blobs: blobs.len(),
            tagged_bytes: row("", "", &referenced).bytes,
            upstreams: by_upstream
                .iter()
                .map(|(up, set)| row(up, "", set))
                .collect(),
            repositories: by_repo
                .iter()
                .map(|((up, repo), set)| row(up, repo, set))
                .collect(),
        })
    }
}
