//! `mirrorgate ls | du | inspect | rm | pin | unpin | gc`: what the cache
//! holds, and managing it, over a data directory (or the S3 bucket of the
//! config), also while a mirror serves from it. The store's side is
//! [`crate::store::inventory`]; this is the command's front: references as
//! users write them, tables and `--json`.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use serde::Serialize;

use crate::config::Config;
use crate::oci::Digest;
use crate::oci::manifest::Refs;
use crate::store::inventory::{Closure, ImageKey, Named, RefRow};
use crate::store::{Store, StoredBlob};
use crate::warm::ImageRef;

/// Where the cache is, and how to answer.
#[derive(Debug, clap::Args)]
pub struct StoreArgs {
    /// The mirror's config (its store: `[storage] root`, or the bucket of
    /// `[storage.s3]`). Default: the embedded one (./data).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// A local store root (overrides the config's store).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The cache subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum CacheCommand {
    /// List cached images: upstreams, repositories, tags with digests,
    /// platforms, stored size, last use, pins.
    Ls {
        /// Only these upstreams or repositories (`docker.io`,
        /// `docker.io/library/alpine`).
        filter: Vec<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Bytes stored, by upstream and repository (a blob shared by several
    /// counts once in each, and once in the total).
    Du {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Show one cached image: its manifests, platforms and blobs, and which
    /// are stored.
    Inspect {
        /// The image, e.g. `docker.io/library/alpine:3.20`.
        image: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Remove tags (or digest references) from the cache; with `--image`,
    /// also the manifests and blobs nothing else cached still needs.
    Rm {
        /// Images, e.g. `docker.io/library/alpine:3.20`.
        #[arg(required = true)]
        images: Vec<String>,
        /// Also remove the image's manifests and blobs that no other cached
        /// manifest, tag or pin needs.
        #[arg(long)]
        image: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Pin images: eviction never removes them (what a tag points to when
    /// eviction runs is kept).
    Pin {
        /// Images.
        #[arg(required = true)]
        images: Vec<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Unpin images.
    Unpin {
        /// Images.
        #[arg(required = true)]
        images: Vec<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Delete blobs that no cached manifest refers to and that were not
    /// written or read for `--grace`.
    Gc {
        /// Keep unreferenced blobs younger than this (a download being
        /// committed, or one whose manifest is about to be stored, is).
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        grace: Duration,
        /// Only report what would be deleted.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
}

impl CacheCommand {
    fn store_args(&self) -> &StoreArgs {
        match self {
            Self::Ls { store, .. }
            | Self::Du { store }
            | Self::Inspect { store, .. }
            | Self::Rm { store, .. }
            | Self::Pin { store, .. }
            | Self::Unpin { store, .. }
            | Self::Gc { store, .. } => store,
        }
    }
}

/// The config whose store a tool opens: `--data-dir` names a local store;
/// a config with a bucket is loaded with its secrets (its keys).
pub(super) fn store_config(
    config: Option<&PathBuf>,
    data_dir: Option<PathBuf>,
) -> anyhow::Result<Config> {
    let mut c = match config {
        Some(p) => {
            let c = Config::load_without_secrets(p)
                .with_context(|| format!("invalid config {}", p.display()))?;
            if c.s3.is_some() && data_dir.is_none() {
                Config::load(p).with_context(|| format!("invalid config {}", p.display()))?
            } else {
                c
            }
        }
        None => Config::embedded_default()?,
    };
    if let Some(d) = data_dir {
        c.storage_root = d;
        c.s3 = None;
    }
    Ok(c)
}

/// Runs a cache subcommand.
pub(super) fn run(cmd: CacheCommand) -> anyhow::Result<()> {
    let args = cmd.store_args();
    let config = store_config(args.config.as_ref(), args.data_dir.clone())?;
    let json = args.json;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let store = Store::from_config_beside_server(&config)
            .await
            .with_context(|| {
                format!("cannot open the store in {}", config.storage_root.display())
            })?;
        let out = Cache {
            store,
            config,
            json,
        };
        out.run(cmd).await
    })
}

struct Cache {
    store: Store,
    config: Config,
    json: bool,
}

/// A reference as the user wrote it, in the store's terms.
fn image_key(config: &Config, s: &str) -> anyhow::Result<(ImageKey, String)> {
    let r: ImageRef = s.parse()?;
    let key = store_key(config, &r)?;
    Ok((key, r.to_string()))
}

/// An image reference in the store's terms (see [`ImageRef::store_key`]).
pub(super) fn store_key(config: &Config, r: &ImageRef) -> anyhow::Result<ImageKey> {
    r.store_key(config).map_err(anyhow::Error::msg)
}

fn ms_to_time(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn ago(t: SystemTime) -> String {
    match SystemTime::now().duration_since(t) {
        Ok(d) if d < Duration::from_secs(60) => "just now".into(),
        Ok(d) if d < Duration::from_secs(3600) => format!("{} min ago", d.as_secs() / 60),
        Ok(d) if d < Duration::from_secs(48 * 3600) => format!("{} h ago", d.as_secs() / 3600),
        Ok(d) => format!("{} days ago", d.as_secs() / 86400),
        Err(_) => "just now".into(),
    }
}

fn size(n: u64) -> String {
    bytesize::ByteSize::b(n).display().iec().to_string()
}

/// What one image of `ls` is.
#[derive(Debug, Serialize)]
struct LsImage {
    upstream: String,
    repository: String,
    /// The tag, or `None` for a manifest pulled by digest.
    tag: Option<String>,
    digest: String,
    media_type: String,
    /// Platforms of an index stored, and listed (1 of 1 for an image).
    platforms_stored: usize,
    platforms: usize,
    /// Bytes of its manifests and blobs in the store.
    stored_bytes: u64,
    /// Bytes it needs in all (as its manifests declare, for what the store
    /// has the manifests of).
    bytes: u64,
    /// When upstream last confirmed the tag.
    checked_at: Option<String>,
    /// The last write or (local) read of any of its blobs.
    last_used: Option<String>,
    pinned: bool,
}

/// The store at one moment: references, blobs, pins.
struct Snapshot {
    refs: Vec<RefRow>,
    blobs: HashMap<Digest, StoredBlob>,
    pins: HashSet<ImageKey>,
    closures: HashMap<Digest, Closure>,
}

impl Cache {
    async fn snapshot(&self) -> anyhow::Result<Snapshot> {
        let refs = self.store.references().await?;
        let blobs = self
            .store
            .blobs()
            .list()
            .await?
            .into_iter()
            .map(|b| (b.digest.clone(), b))
            .collect();
        let pins = self
            .store
            .pins()
            .await?
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        let roots: Vec<Digest> = refs.iter().filter_map(|r| r.digest().cloned()).collect();
        let closures = self.store.closures(roots).await?;
        Ok(Snapshot {
            refs,
            blobs,
            pins,
            closures,
        })
    }

    async fn run(self, cmd: CacheCommand) -> anyhow::Result<()> {
        match cmd {
            CacheCommand::Ls { filter, .. } => self.ls(&filter).await,
            CacheCommand::Du { .. } => self.du().await,
            CacheCommand::Inspect { image, .. } => self.inspect(&image).await,
            CacheCommand::Rm { images, image, .. } => self.rm(&images, image).await,
            CacheCommand::Pin { images, .. } => self.pin(&images, true).await,
            CacheCommand::Unpin { images, .. } => self.pin(&images, false).await,
            CacheCommand::Gc { grace, dry_run, .. } => self.gc(grace, dry_run).await,
        }
    }

    fn print_json(v: &impl Serialize) -> anyhow::Result<()> {
        println!("{}", serde_json::to_string_pretty(v)?);
        Ok(())
    }

    async fn ls(&self, filter: &[String]) -> anyhow::Result<()> {
        let snap = self.snapshot().await?;
        let mut rows: Vec<LsImage> = Vec::new();
        // Digest references reachable from a tag of the same repository are
        // that tag's children, not images of their own.
        let mut under_tags: HashSet<(String, String, Digest)> = HashSet::new();
        for r in snap.refs.iter().filter(|r| r.record.is_some()) {
            if let Some(c) = r.digest().and_then(|d| snap.closures.get(d)) {
                for m in &c.manifests {
                    under_tags.insert((
                        r.image.upstream.clone(),
                        r.image.repo.to_string(),
                        m.digest.clone(),
                    ));
                }
            }
        }
        let mut seen = HashSet::new();
        for r in &snap.refs {
            let Some(d) = r.digest() else { continue };
            let name = format!("{}/{}", r.image.upstream, r.image.repo);
            if !filter.is_empty()
                && !filter
                    .iter()
                    .any(|f| name == *f || name.starts_with(&format!("{f}/")))
            {
                continue;
            }
            let tag = match &r.image.named {
                Named::Tag(t) => Some(t.to_string()),
                Named::Digest(_) => None,
            };
            if tag.is_none()
                && under_tags.contains(&(
                    r.image.upstream.clone(),
                    r.image.repo.to_string(),
                    d.clone(),
                ))
            {
                continue;
            }
            // One row per tag and digest (a tag asked with several Accept
            // sets may have several records of one digest).
            if !seen.insert((r.image.clone(), d.clone())) {
                continue;
            }
            let empty = Closure::default();
            let c = snap.closures.get(d).unwrap_or(&empty);
            rows.push(self.ls_row(r, d, tag, c, &snap));
        }
        if self.json {
            return Self::print_json(&serde_json::json!({ "images": rows }));
        }
        let mut t = Table::new(&[
            "UPSTREAM",
            "REPOSITORY",
            "TAG",
            "DIGEST",
            "PLATFORMS",
            "STORED",
            "LAST USED",
            "PINNED",
        ]);
        for r in &rows {
            t.row(vec![
                r.upstream.clone(),
                r.repository.clone(),
                r.tag.clone().unwrap_or_else(|| "-".into()),
                r.digest.chars().take(19).collect(),
                format!("{}/{}", r.platforms_stored, r.platforms),
                format!("{} of {}", size(r.stored_bytes), size(r.bytes)),
                r.last_used
                    .as_deref()
                    .and_then(|s| humantime::parse_rfc3339(s).ok())
                    .map_or_else(|| "-".into(), ago),
                if r.pinned {
                    "yes".into()
                } else {
                    String::new()
                },
            ]);
        }
        t.print();
        println!(
            "{} images in {} repositories",
            rows.len(),
            rows.iter()
                .map(|r| (&r.upstream, &r.repository))
                .collect::<HashSet<_>>()
                .len()
        );
        Ok(())
    }

    fn ls_row(
        &self,
        r: &RefRow,
        d: &Digest,
        tag: Option<String>,
        c: &Closure,
        snap: &Snapshot,
    ) -> LsImage {
        let (platforms_stored, platforms) = platforms(c);
        let stored: Vec<&StoredBlob> = c.digests().filter_map(|d| snap.blobs.get(d)).collect();
        let bytes = c.manifests.iter().map(|m| m.size).sum::<u64>() + c.blobs.values().sum::<u64>();
        let pinned = snap.pins.contains(&r.image)
            || snap.pins.iter().any(|p| {
                matches!(&p.named, Named::Digest(pd) if pd == d)
                    && p.upstream == r.image.upstream
                    && p.repo == r.image.repo
            });
        LsImage {
            upstream: r.image.upstream.clone(),
            repository: r.image.repo.to_string(),
            tag,
            digest: d.to_string(),
            media_type: c
                .manifests
                .first()
                .map(|m| m.media_type.clone())
                .or_else(|| r.record.as_ref().map(|t| t.media_type.clone()))
                .unwrap_or_default(),
            platforms_stored,
            platforms,
            stored_bytes: stored.iter().map(|b| b.size).sum(),
            bytes,
            checked_at: r
                .record
                .as_ref()
                .map(|t| rfc3339(ms_to_time(t.checked_at_ms))),
            last_used: stored.iter().map(|b| b.modified).max().map(rfc3339),
            pinned,
        }
    }

    async fn du(&self) -> anyhow::Result<()> {
        let u = self.store.usage().await?;
        let (ups, repos, total) = (&u.upstreams, &u.repositories, u.total_bytes);
        let untagged = total.saturating_sub(u.tagged_bytes);
        if self.json {
            return Self::print_json(&serde_json::json!({
                "store": self.store.describe(),
                "total_bytes": total,
                "blobs": u.blobs,
                "tagged_bytes": u.tagged_bytes,
                "other_bytes": untagged,
                "upstreams": ups,
                "repositories": repos,
            }));
        }
        let mut t = Table::new(&["UPSTREAM", "REPOSITORY", "SIZE", "BLOBS"]);
        for up in ups {
            t.row(vec![
                up.upstream.clone(),
                "(all)".into(),
                size(up.bytes),
                up.blobs.to_string(),
            ]);
            for r in repos.iter().filter(|r| r.upstream == up.upstream) {
                t.row(vec![
                    String::new(),
                    r.repository.clone(),
                    size(r.bytes),
                    r.blobs.to_string(),
                ]);
            }
        }
        t.print();
        println!(
            "{}: {} in {} blobs; {} not reachable from a tag or digest reference (gc removes what no manifest needs)",
            self.store.describe(),
            size(total),
            u.blobs,
            size(untagged)
        );
        Ok(())
    }

    async fn inspect(&self, image: &str) -> anyhow::Result<()> {
        let (key, label) = image_key(&self.config, image)?;
        let refs = self.store.references_of(&key).await?;
        let root = match &key.named {
            Named::Digest(d) => d.clone(),
            Named::Tag(_) => refs
                .iter()
                .filter_map(|r| r.record.as_ref())
                .max_by_key(|r| r.checked_at_ms)
                .map(|r| r.digest.clone())
                .with_context(|| format!("{label} is not in the cache"))?,
        };
        let c = self.store.closure(&root).await?;
        if c.manifests.is_empty() {
            anyhow::bail!("{label}: manifest {root} is not in the cache");
        }
        let pinned = self.store.pins().await?.iter().any(|(k, _)| *k == key);
        let mut stored = HashMap::new();
        for d in c.digests() {
            if let Some(n) = self.store.stat(d).await? {
                stored.insert(d.clone(), n);
            }
        }
        #[derive(Serialize)]
        struct Blob {
            digest: String,
            size: u64,
            stored: bool,
        }
        #[derive(Serialize)]
        struct Manifest {
            digest: String,
            media_type: String,
            size: u64,
            platform: Option<String>,
            stored: bool,
            blobs: Vec<Blob>,
        }
        let platform_of: HashMap<&Digest, String> = c
            .manifests
            .iter()
            .filter_map(|m| match &m.refs {
                Some(Refs::Index(ch)) => Some(ch),
                _ => None,
            })
            .flatten()
            .filter_map(|d| d.platform.as_ref().map(|p| (&d.digest, p.to_string())))
            .collect();
        let mut manifests: Vec<Manifest> = c
            .manifests
            .iter()
            .map(|m| Manifest {
                digest: m.digest.to_string(),
                media_type: m.media_type.clone(),
                size: m.size,
                platform: platform_of.get(&m.digest).cloned(),
                stored: stored.contains_key(&m.digest),
                blobs: match &m.refs {
                    Some(Refs::Image { config, layers }) => std::iter::once(config)
                        .chain(layers)
                        .map(|b| Blob {
                            digest: b.digest.to_string(),
                            size: b.size,
                            stored: stored.contains_key(&b.digest),
                        })
                        .collect(),
                    _ => Vec::new(),
                },
            })
            .collect();
        manifests.extend(c.missing.iter().map(|(d, p)| Manifest {
            digest: d.to_string(),
            media_type: String::new(),
            size: 0,
            platform: p.as_ref().map(ToString::to_string),
            stored: false,
            blobs: Vec::new(),
        }));
        let tags: Vec<serde_json::Value> = refs
            .iter()
            .filter_map(|r| r.record.as_ref())
            .map(|t| {
                serde_json::json!({
                    "digest": t.digest.to_string(),
                    "media_type": t.media_type,
                    "checked_at": rfc3339(ms_to_time(t.checked_at_ms)),
                })
            })
            .collect();
        let need: u64 =
            c.manifests.iter().map(|m| m.size).sum::<u64>() + c.blobs.values().sum::<u64>();
        let have: u64 = stored.values().sum();
        if self.json {
            return Self::print_json(&serde_json::json!({
                "image": label,
                "upstream": key.upstream,
                "repository": key.repo.to_string(),
                "digest": root.to_string(),
                "pinned": pinned,
                "tag_records": tags,
                "bytes": need,
                "stored_bytes": have,
                "manifests": manifests,
            }));
        }
        println!("{label}");
        println!("  store      {}/{}{}", key.upstream, key.repo, key.named);
        println!("  digest     {root}");
        for t in &tags {
            println!(
                "  tag        {} {} (confirmed {})",
                t["digest"].as_str().unwrap_or_default(),
                t["media_type"].as_str().unwrap_or_default(),
                t["checked_at"].as_str().unwrap_or_default()
            );
        }
        println!("  pinned     {}", if pinned { "yes" } else { "no" });
        println!("  stored     {} of {}", size(have), size(need));
        for m in &manifests {
            let mark = if m.stored { "" } else { " (not cached)" };
            match &m.platform {
                Some(p) => println!("  {p:<10} {} {}{mark}", &m.digest[..19], m.media_type),
                None => println!("  manifest   {} {}{mark}", &m.digest[..19], m.media_type),
            }
            for b in &m.blobs {
                let mark = if b.stored { "" } else { " (not cached)" };
                println!("    blob     {} {}{mark}", &b.digest[..19], size(b.size));
            }
        }
        Ok(())
    }

    async fn rm(&self, images: &[String], blobs: bool) -> anyhow::Result<()> {
        let mut results = Vec::new();
        let mut failed = 0;
        for s in images {
            let (key, label) = image_key(&self.config, s)?;
            match self.store.remove(&key, blobs).await {
                Ok(out) => {
                    if !self.json {
                        println!(
                            "removed {label}: {} references, {} manifests, {} blobs ({})",
                            out.references.len(),
                            out.manifests.len(),
                            out.blobs.len(),
                            size(out.bytes)
                        );
                    }
                    results.push(serde_json::json!({"image": label, "ok": true, "removed": out}));
                }
                Err(e) => {
                    failed += 1;
                    let msg = crate::error_chain(&e);
                    if !self.json {
                        eprintln!("error: {msg}");
                    }
                    results.push(serde_json::json!({"image": label, "ok": false, "error": msg}));
                }
            }
        }
        if self.json {
            Self::print_json(&serde_json::json!({ "results": results }))?;
        }
        if failed > 0 {
            anyhow::bail!("{failed} of {} images not removed", images.len());
        }
        Ok(())
    }

    async fn pin(&self, images: &[String], pin: bool) -> anyhow::Result<()> {
        let mut results = Vec::new();
        for s in images {
            let (key, label) = image_key(&self.config, s)?;
            let changed = if pin {
                let was = self.store.pins().await?.iter().any(|(k, _)| *k == key);
                self.store.pin(&key, &label, None).await?;
                !was
            } else {
                self.store.unpin(&key).await?
            };
            if !self.json {
                let what = match (pin, changed) {
                    (true, true) => "pinned",
                    (true, false) => "already pinned",
                    (false, true) => "unpinned",
                    (false, false) => "was not pinned",
                };
                println!("{what} {label}");
            }
            results.push(serde_json::json!({"image": label, "changed": changed}));
        }
        if self.json {
            Self::print_json(&serde_json::json!({ "results": results }))?;
        }
        Ok(())
    }

    async fn gc(&self, grace: Duration, dry: bool) -> anyhow::Result<()> {
        let out = self.store.gc(grace, dry).await?;
        if self.json {
            return Self::print_json(&serde_json::json!({ "dry_run": dry, "gc": out }));
        }
        for d in &out.deleted {
            println!("{} {d}", if dry { "would delete" } else { "deleted" });
        }
        println!(
            "{}: {} blobs, {} referenced by {} manifests, {} unreferenced kept (younger than {}), {} {} ({})",
            self.store.describe(),
            out.blobs,
            out.referenced,
            out.manifests,
            out.young,
            humantime::format_duration(grace),
            if dry { "would delete" } else { "deleted" },
            out.deleted.len(),
            size(out.deleted_bytes)
        );
        Ok(())
    }
}

/// Platforms of an index stored and listed (an image counts as 1 of 1).
fn platforms(c: &Closure) -> (usize, usize) {
    match c.manifests.first().and_then(|m| m.refs.as_ref()) {
        Some(Refs::Index(ch)) => {
            let listed = ch.iter().filter(|d| d.platform.is_some()).count();
            let stored = c.manifests.len().saturating_sub(1).min(listed);
            (stored, listed)
        }
        _ => (usize::from(!c.manifests.is_empty()), 1),
    }
}

/// A plain text table, columns padded to their widest cell.
struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: &[&str]) -> Self {
        Self {
            rows: vec![header.iter().map(|h| (*h).to_owned()).collect()],
        }
    }

    fn row(&mut self, r: Vec<String>) {
        self.rows.push(r);
    }

    fn print(&self) {
        let n = self.rows[0].len();
        let widths: Vec<usize> = (0..n)
            .map(|i| {
                self.rows
                    .iter()
                    .map(|r| r[i].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for r in &self.rows {
            let line: Vec<String> = r
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            println!("{}", line.join("  ").trim_end());
        }
    }
}
