//! Air-gap bundles: one OCI image layout holding many images, as a
//! directory or a tar file, that `skopeo copy oci-archive:`, `ctr images
//! import`, `podman load` and another mirrorgate all read.
//!
//! ```text
//! bundle.tar (or a directory)
//! ├── oci-layout            {"imageLayoutVersion":"1.0.0"}
//! ├── blobs/sha256/<hex>    every manifest, config and layer once (deduplicated)
//! └── index.json            one entry per image, named by both annotations:
//!                           org.opencontainers.image.ref.name = docker.io/library/alpine:3.20
//!                           io.containerd.image.name         = docker.io/library/alpine:3.20
//! ```
//!
//! - [`export`]: a client of a mirror, like `warm` (a running mirror, or one
//!   in-process over the data directory): every manifest of each image (all
//!   platforms, so an index keeps its digest) and every blob they name,
//!   through the mirror's pull-through path, each written once and
//!   verified. `since` names an earlier bundle whose blobs are left out (an
//!   incremental bundle, imported after that one).
//! - [`import`]: reads a bundle into a store: every blob is verified on the
//!   way in (a blob that fails its digest is refused and never stored), an
//!   image's tag is written only once everything it needs is stored, and
//!   what is stored already is skipped, so an interrupted import resumes and
//!   a repeated one changes nothing.

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use futures_util::{StreamExt, stream};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::oci::digest::Digester;
use crate::oci::manifest::{Descriptor, Refs};
use crate::oci::{AcceptClass, Digest, MediaType};
use crate::store::{Scope, Store, TagKey, TagRecord};
use crate::warm::{ImageRef, Warmer};

/// The annotation OCI tools (skopeo, podman) find an image by.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The annotation `ctr images import` names an image by.
pub const CONTAINERD_NAME: &str = "io.containerd.image.name";
const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Largest `index.json` or manifest read from a bundle.
const MAX_JSON: u64 = 64 << 20;

/// A bundle error (per image errors are in the reports).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing the bundle failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The bundle is not an OCI image layout.
    #[error("{path} is not an OCI image layout: {why}")]
    NotALayout {
        /// The bundle.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The output exists already.
    #[error("{0} exists already (choose a new name)")]
    Exists(PathBuf),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::Error),
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error + use<> {
    let path = path.to_owned();
    move |source| Error::Io { op, path, source }
}

/// The name an image gets in a bundle: registry, repository, tag (or
/// `latest`), and digest when it was named by one.
pub fn bundle_name(r: &ImageRef) -> String {
    let mut s = format!("{}/{}", r.registry, r.repo);
    match (&r.tag, &r.digest) {
        (Some(t), _) => s.push_str(&format!(":{t}")),
        (None, None) => s.push_str(":latest"),
        (None, Some(_)) => {}
    }
    if let Some(d) = &r.digest {
        s.push_str(&format!("@{d}"));
    }
    s
}

/// `index.json`'s shape (what export writes and import reads).
#[derive(Debug, Serialize, Deserialize)]
struct IndexJson {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
    manifests: Vec<IndexEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct IndexEntry {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
}

/// Where a bundle is: a tar file or a directory.
fn is_tar(p: &Path) -> bool {
    p.is_file() || p.extension().is_some_and(|e| e == "tar")
}

/// The digest a bundle path names (`blobs/<alg>/<hex>`).
fn blob_digest(path: &str) -> Option<Digest> {
    let path = path.trim_start_matches("./");
    let rest = path.strip_prefix("blobs/")?;
    let (alg, hex) = rest.split_once('/')?;
    format!("{alg}:{hex}").parse().ok()
}

/// The digests of every blob in a bundle (for `--since`).
pub fn bundle_blobs(path: &Path) -> Result<HashSet<Digest>, Error> {
    let mut out = HashSet::new();
    if is_tar(path) {
        let f = std::fs::File::open(path).map_err(io_err("open", path))?;
        let mut ar = tar::Archive::new(f);
        for e in ar.entries_with_seek().map_err(io_err("read", path))? {
            let e = e.map_err(io_err("read", path))?;
            let p = e.path().map_err(io_err("read", path))?;
            if let Some(d) = blob_digest(&p.to_string_lossy()) {
                out.insert(d);
            }
        }
    } else {
        let blobs = path.join("blobs");
        for alg in std::fs::read_dir(&blobs).map_err(io_err("read", &blobs))? {
            let alg = alg.map_err(io_err("read", &blobs))?;
            let a = alg.file_name().to_string_lossy().into_owned();
            for f in std::fs::read_dir(alg.path()).map_err(io_err("read", &alg.path()))? {
                let f = f.map_err(io_err("read", &alg.path()))?;
                let name = format!("blobs/{a}/{}", f.file_name().to_string_lossy());
                if let Some(d) = blob_digest(&name) {
                    out.insert(d);
                }
            }
        }
    }
    Ok(out)
}

// ------------------------------------------------------------------ export

/// What export did with one image.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ExportedImage {
    /// The image as named in the bundle.
    pub image: String,
    /// Its manifest digest.
    pub digest: Option<String>,
    /// Platforms of an index.
    pub platforms: Vec<String>,
    /// Blobs (manifests included) it needs.
    pub blobs: usize,
    /// Of those, written to this bundle (the rest were in it already, or in
    /// the `--since` bundle).
    pub written: usize,
    /// Bytes written for it.
    pub bytes_written: u64,
    /// What went wrong (empty: in the bundle).
    pub errors: Vec<String>,
}

/// What export did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ExportReport {
    /// Where the bundle is.
    pub bundle: String,
    /// Images in it.
    pub ok: usize,
    /// Images left out.
    pub failed: usize,
    /// Distinct blobs written.
    pub blobs_written: usize,
    /// Their bytes.
    pub bytes_written: u64,
    /// Blobs left out because the `--since` bundle has them.
    pub blobs_in_base: usize,
    /// Per image.
    pub images: Vec<ExportedImage>,
}

/// Where export writes.
enum Out {
    /// Into a directory: blobs renamed into place.
    Dir(PathBuf),
    /// Into a tar (written as `<out>.partial`, renamed when complete).
    Tar(tar::Builder<std::fs::File>),
}

struct Writer {
    out: Mutex<Out>,
    /// Where downloads spool before they join the bundle.
    spool: PathBuf,
    /// Blobs in the bundle (or in the base bundle).
    have: Mutex<HashSet<Digest>>,
}

impl Writer {
    fn has(&self, d: &Digest) -> bool {
        self.have
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(d)
    }

    /// Adds a verified spool file as blob `d`. Blocking.
    fn add(&self, d: &Digest, file: &Path) -> Result<(), Error> {
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        let name = format!("blobs/{}/{}", d.algorithm().as_str(), d.hex());
        match &mut *out {
            Out::Dir(root) => {
                let dest = root.join(&name);
                if let Some(dir) = dest.parent() {
                    std::fs::create_dir_all(dir).map_err(io_err("mkdir", dir))?;
                }
                std::fs::rename(file, &dest).map_err(io_err("rename", &dest))?;
            }
            Out::Tar(b) => {
                let mut f = std::fs::File::open(file).map_err(io_err("open", file))?;
                b.append_file(&name, &mut f)
                    .map_err(io_err("write tar entry", Path::new(&name)))?;
                std::fs::remove_file(file).map_err(io_err("remove", file))?;
            }
        }
        self.have
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(d.clone());
        Ok(())
    }

    /// Adds a small file (`oci-layout`, `index.json`, a manifest). Blocking.
    fn add_bytes(&self, name: &str, bytes: &[u8]) -> Result<(), Error> {
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        match &mut *out {
            Out::Dir(root) => {
                let dest = root.join(name);
                if let Some(dir) = dest.parent() {
                    std::fs::create_dir_all(dir).map_err(io_err("mkdir", dir))?;
                }
                std::fs::write(&dest, bytes).map_err(io_err("write", &dest))
            }
            Out::Tar(b) => {
                let mut h = tar::Header::new_gnu();
                h.set_size(bytes.len() as u64);
                h.set_mode(0o644);
                h.set_mtime(0);
                h.set_entry_type(tar::EntryType::Regular);
                b.append_data(&mut h, name, bytes)
                    .map_err(io_err("write tar entry", Path::new(name)))
            }
        }
    }
}

/// Exports `images` through the mirror `warmer` talks to into a new bundle
/// at `out` (a `.tar` file, or else a directory). Images that fail are left
/// out of the bundle and reported.
pub async fn export(
    warmer: &Warmer,
    images: &[ImageRef],
    out: &Path,
    since: Option<&Path>,
) -> Result<ExportReport, Error> {
    if out.exists() {
        return Err(Error::Exists(out.to_owned()));
    }
    let tar = out.extension().is_some_and(|e| e == "tar");
    let partial = out.with_extension("tar.partial");
    let (sink, spool) = if tar {
        let f = std::fs::File::create(&partial).map_err(io_err("create", &partial))?;
        let mut b = tar::Builder::new(f);
        b.mode(tar::HeaderMode::Deterministic);
        let spool = out.with_extension("tar.spool");
        (Out::Tar(b), spool)
    } else {
        std::fs::create_dir_all(out).map_err(io_err("mkdir", out))?;
        (Out::Dir(out.to_owned()), out.join(".spool"))
    };
    std::fs::create_dir_all(&spool).map_err(io_err("mkdir", &spool))?;
    let base = match since {
        Some(p) => bundle_blobs(p)?,
        None => HashSet::new(),
    };
    let w = Arc::new(Writer {
        out: Mutex::new(sink),
        spool: spool.clone(),
        have: Mutex::new(base.clone()),
    });
    {
        let w = w.clone();
        tokio::task::spawn_blocking(move || w.add_bytes("oci-layout", OCI_LAYOUT))
            .await
            .expect("no panic")?;
    }
    let mut report = ExportReport {
        bundle: out.display().to_string(),
        ..ExportReport::default()
    };
    let mut entries = Vec::new();
    let mut named = HashSet::new();
    // One image at a time (its blobs `concurrency` at a time): a blob two
    // images share is written by the first, and found by the second.
    for r in images {
        let name = bundle_name(r);
        if !named.insert(name.clone()) {
            continue;
        }
        let mut rep = ExportedImage {
            image: name.clone(),
            ..ExportedImage::default()
        };
        match export_one(warmer, &w, r, &mut rep).await {
            Ok(entry) => {
                let mut entry = entry;
                entry.annotations.insert(REF_NAME.into(), name.clone());
                entry.annotations.insert(CONTAINERD_NAME.into(), name);
                entries.push(entry);
                report.ok += 1;
            }
            Err(e) => {
                rep.errors.push(e);
                report.failed += 1;
            }
        }
        report.blobs_written += rep.written;
        report.bytes_written += rep.bytes_written;
        report.images.push(rep);
    }
    let index = IndexJson {
        schema_version: 2,
        media_type: Some(OCI_INDEX.into()),
        manifests: entries,
    };
    let bytes = serde_json::to_vec_pretty(&index).expect("index.json serializes");
    let w2 = w.clone();
    tokio::task::spawn_blocking(move || w2.add_bytes("index.json", &bytes))
        .await
        .expect("no panic")?;
    let have = w
        .have
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    report.blobs_in_base = have.intersection(&base).count();
    let Ok(w) = Arc::try_unwrap(w) else {
        unreachable!("every task holding the writer has ended")
    };
    let out_kind = w.out.into_inner().unwrap_or_else(PoisonError::into_inner);
    let _ = std::fs::remove_dir_all(&spool);
    if let Out::Tar(b) = out_kind {
        let f = b.into_inner().map_err(io_err("finish", &partial))?;
        f.sync_all().map_err(io_err("fsync", &partial))?;
        std::fs::rename(&partial, out).map_err(io_err("rename", out))?;
    }
    Ok(report)
}

/// One image into the bundle: its manifests, then its blobs. Returns its
/// `index.json` entry.
async fn export_one(
    warmer: &Warmer,
    w: &Arc<Writer>,
    r: &ImageRef,
    rep: &mut ExportedImage,
) -> Result<IndexEntry, String> {
    let top = warmer
        .manifest(r, &r.reference())
        .await
        .map_err(|e| format!("manifest {}: {e}", r.reference()))?;
    rep.digest = Some(top.digest.to_string());
    let mut manifests = vec![(top.digest.clone(), top.bytes.clone())];
    let mut blobs: Vec<Descriptor> = Vec::new();
    let mut todo = vec![top.clone()];
    while let Some(m) = todo.pop() {
        match Refs::parse(&m.bytes).map_err(|e| format!("manifest {}: {e}", m.digest))? {
            Refs::Image { config, layers } => {
                for d in std::iter::once(config).chain(layers) {
                    if !d.urls.is_empty() {
                        // A foreign layer is fetched from its URLs by clients,
                        // never from a registry.
                        continue;
                    }
                    if !blobs.iter().any(|b| b.digest == d.digest) {
                        blobs.push(d);
                    }
                }
            }
            Refs::Index(children) => {
                for ch in children {
                    if let Some(p) = &ch.platform {
                        rep.platforms.push(p.to_string());
                    }
                    let child = warmer
                        .manifest(r, &ch.digest.to_string())
                        .await
                        .map_err(|e| format!("manifest {}: {e}", ch.digest))?;
                    manifests.push((child.digest.clone(), child.bytes.clone()));
                    todo.push(child);
                }
            }
        }
    }
    rep.blobs = manifests.len() + blobs.len();
    let written: Vec<Result<Option<u64>, String>> = stream::iter(blobs.iter())
        .map(|d| export_blob(warmer, w, r, d))
        .buffer_unordered(4)
        .collect()
        .await;
    for x in written {
        if let Some(n) = x? {
            rep.written += 1;
            rep.bytes_written += n;
        }
    }
    // Manifests last: a bundle never names what it does not hold.
    for (d, bytes) in manifests {
        if w.has(&d) {
            continue;
        }
        let (w, d2, n) = (w.clone(), d.clone(), bytes.len() as u64);
        tokio::task::spawn_blocking(move || {
            let name = format!("blobs/{}/{}", d2.algorithm().as_str(), d2.hex());
            w.add_bytes(&name, &bytes)?;
            w.have
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(d2);
            Ok::<_, Error>(())
        })
        .await
        .expect("no panic")
        .map_err(|e| crate::error_chain(&e))?;
        rep.written += 1;
        rep.bytes_written += n;
    }
    Ok(IndexEntry {
        media_type: index_json_type(&top.media_type, &top.bytes),
        digest: top.digest.to_string(),
        size: top.bytes.len() as u64,
        annotations: BTreeMap::new(),
    })
}

/// The media type `index.json` gives a manifest: its own for OCI types,
/// the OCI equivalent for Docker's. The bytes (and digest) stay the
/// originals: containers/image (skopeo, podman) only looks at index.json
/// entries of the two OCI types, and reads a Docker schema 2 manifest or
/// list as its OCI twin (the fields line up); containerd reads either;
/// `import` trusts the manifest's own `mediaType` over this one.
fn index_json_type(mt: &str, bytes: &[u8]) -> String {
    let mt = if mt.is_empty() {
        own_media_type(bytes).unwrap_or_default()
    } else {
        mt.to_owned()
    };
    match mt.as_str() {
        crate::oci::media_type::DOCKER_MANIFEST_V2 => crate::oci::media_type::OCI_MANIFEST.into(),
        crate::oci::media_type::DOCKER_MANIFEST_LIST => OCI_INDEX.into(),
        "" => match Refs::parse(bytes) {
            Ok(Refs::Index(_)) => OCI_INDEX.into(),
            _ => crate::oci::media_type::OCI_MANIFEST.into(),
        },
        _ => mt,
    }
}

/// One blob into the bundle, unless it is there: `Some(bytes)` written.
async fn export_blob(
    warmer: &Warmer,
    w: &Arc<Writer>,
    r: &ImageRef,
    d: &Descriptor,
) -> Result<Option<u64>, String> {
    if w.has(&d.digest) {
        return Ok(None);
    }
    let path = w.spool.join(d.digest.hex());
    let what = |e: std::io::Error| format!("blob {}: {}: {e}", d.digest, path.display());
    let file = std::fs::File::create(&path).map_err(what)?;
    let mut file = std::io::BufWriter::with_capacity(256 << 10, file);
    let mut h = Digester::new(d.digest.algorithm());
    let mut sink = |b: &Bytes| {
        h.update(b);
        file.write_all(b).map_err(|e| e.to_string())
    };
    let (_, n) = warmer.get_blob(r, d, &mut sink).await?;
    let file = file.into_inner().map_err(|e| what(e.into_error()))?;
    if h.finish() != d.digest {
        let _ = std::fs::remove_file(&path);
        return Err(format!(
            "blob {}: the mirror's bytes do not match it",
            d.digest
        ));
    }
    let (w, digest) = (w.clone(), d.digest.clone());
    tokio::task::spawn_blocking(move || {
        file.sync_all().map_err(io_err("fsync", &path))?;
        w.add(&digest, &path)
    })
    .await
    .expect("no panic")
    .map_err(|e| crate::error_chain(&e))?;
    Ok(Some(n))
}

// ------------------------------------------------------------------ import

/// What import did with one image.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ImportedImage {
    /// Its name in the bundle.
    pub image: String,
    /// Its manifest digest.
    pub digest: String,
    /// Platforms of an index that the bundle does not hold (their
    /// manifests are not stored: clients asking for them need upstream).
    pub missing_platforms: usize,
    /// What went wrong (empty: served from now on).
    pub errors: Vec<String>,
}

/// What import did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ImportReport {
    /// The bundle.
    pub bundle: String,
    /// Blobs stored now.
    pub blobs_imported: usize,
    /// Their bytes.
    pub bytes_imported: u64,
    /// Blobs the store had already.
    pub blobs_present: usize,
    /// Blobs refused (they fail their digest or size), with the reason.
    pub refused: Vec<(String, String)>,
    /// Images now served.
    pub ok: usize,
    /// Images not imported.
    pub failed: usize,
    /// Per image.
    pub images: Vec<ImportedImage>,
}

/// Blob pass results.
#[derive(Default)]
struct Pass {
    index: Option<Vec<u8>>,
    layout: bool,
    imported: usize,
    bytes: u64,
    present: usize,
    refused: Vec<(String, String)>,
}

/// Imports the bundle at `path` into `store`; images are filed under the
/// upstreams of `config` their names point to.
pub async fn import(store: &Store, config: &Config, path: &Path) -> Result<ImportReport, Error> {
    let handle = tokio::runtime::Handle::current();
    let (s, p) = (store.clone(), path.to_owned());
    let pass = tokio::task::spawn_blocking(move || blob_pass(&handle, &s, &p))
        .await
        .expect("no panic")?;
    let not_layout = |why: &str| Error::NotALayout {
        path: path.to_owned(),
        why: why.into(),
    };
    if !pass.layout {
        return Err(not_layout("no oci-layout file"));
    }
    let Some(index) = pass.index else {
        return Err(not_layout("no index.json"));
    };
    let index: IndexJson =
        serde_json::from_slice(&index).map_err(|e| not_layout(&format!("index.json: {e}")))?;
    let mut report = ImportReport {
        bundle: path.display().to_string(),
        blobs_imported: pass.imported,
        bytes_imported: pass.bytes,
        blobs_present: pass.present,
        refused: pass.refused,
        ..ImportReport::default()
    };
    for e in &index.manifests {
        let mut rep = ImportedImage {
            image: e
                .annotations
                .get(CONTAINERD_NAME)
                .or_else(|| e.annotations.get(REF_NAME))
                .cloned()
                .unwrap_or_default(),
            digest: e.digest.clone(),
            ..ImportedImage::default()
        };
        match import_one(store, config, e, &mut rep).await {
            Ok(()) => report.ok += 1,
            Err(err) => {
                rep.errors.push(err);
                report.failed += 1;
            }
        }
        report.images.push(rep);
    }
    Ok(report)
}

/// Reads every entry of the bundle; stores its blobs. Blocking.
fn blob_pass(handle: &tokio::runtime::Handle, store: &Store, path: &Path) -> Result<Pass, Error> {
    let mut pass = Pass::default();
    let mut entry = |name: &str, size: u64, r: &mut dyn Read| -> Result<(), Error> {
        let name = name.trim_start_matches("./");
        if name == "oci-layout" {
            let mut s = String::new();
            r.take(4096)
                .read_to_string(&mut s)
                .map_err(io_err("read", &path.join(name)))?;
            pass.layout = s.contains("imageLayoutVersion");
        } else if name == "index.json" {
            let mut v = Vec::new();
            r.take(MAX_JSON)
                .read_to_end(&mut v)
                .map_err(io_err("read", &path.join(name)))?;
            pass.index = Some(v);
        } else if let Some(d) = blob_digest(name) {
            match import_blob(handle, store, &d, size, r) {
                Ok(true) => {
                    pass.imported += 1;
                    pass.bytes += size;
                }
                Ok(false) => pass.present += 1,
                // The bundle cannot be read on: stop (a re-run resumes).
                Err(BlobError::Read(source)) => {
                    return Err(Error::Io {
                        op: "read",
                        path: path.join(name),
                        source,
                    });
                }
                Err(BlobError::Store(e)) => {
                    pass.refused.push((d.to_string(), crate::error_chain(&e)));
                }
            }
        }
        Ok(())
    };
    if is_tar(path) {
        let f = std::fs::File::open(path).map_err(io_err("open", path))?;
        let mut ar = tar::Archive::new(std::io::BufReader::with_capacity(256 << 10, f));
        for e in ar.entries().map_err(io_err("read", path))? {
            let mut e = e.map_err(io_err("read", path))?;
            if e.header().entry_type() != tar::EntryType::Regular {
                continue;
            }
            let name = e
                .path()
                .map_err(io_err("read", path))?
                .to_string_lossy()
                .into_owned();
            let size = e.size();
            entry(&name, size, &mut e)?;
        }
    } else {
        if !path.is_dir() {
            return Err(Error::NotALayout {
                path: path.to_owned(),
                why: "neither a tar file nor a directory".into(),
            });
        }
        let mut names = vec!["oci-layout".to_owned(), "index.json".to_owned()];
        let blobs = path.join("blobs");
        if let Ok(algs) = std::fs::read_dir(&blobs) {
            for a in algs.flatten() {
                let an = a.file_name().to_string_lossy().into_owned();
                for f in std::fs::read_dir(a.path()).into_iter().flatten().flatten() {
                    names.push(format!("blobs/{an}/{}", f.file_name().to_string_lossy()));
                }
            }
        }
        for n in names {
            let p = path.join(&n);
            let Ok(f) = std::fs::File::open(&p) else {
                continue;
            };
            let size = f.metadata().map_err(io_err("stat", &p))?.len();
            entry(
                &n,
                size,
                &mut std::io::BufReader::with_capacity(256 << 10, f),
            )?;
        }
    }
    Ok(pass)
}

/// Why a blob of the bundle was not stored.
enum BlobError {
    /// The bundle could not be read.
    Read(std::io::Error),
    /// The store refused it (digest or size mismatch) or failed.
    Store(crate::store::Error),
}

impl From<crate::store::Error> for BlobError {
    fn from(e: crate::store::Error) -> Self {
        Self::Store(e)
    }
}

/// Stores one blob of the bundle, verified: `Ok(false)` when it is stored
/// already. Blocking.
fn import_blob(
    handle: &tokio::runtime::Handle,
    store: &Store,
    d: &Digest,
    size: u64,
    r: &mut dyn Read,
) -> Result<bool, BlobError> {
    if handle.block_on(store.stat(d))? == Some(size) {
        return Ok(false);
    }
    let mut w = handle.block_on(store.writer(d, Scope::Durable))?;
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = r.read(&mut buf).map_err(BlobError::Read)?;
        if n == 0 {
            break;
        }
        w.write(&buf[..n])?;
    }
    handle.block_on(w.finish(Some(size)))?;
    Ok(true)
}

/// Files one image of the bundle: checks the store holds everything it
/// needs, stores its manifests' records, then its tag.
async fn import_one(
    store: &Store,
    config: &Config,
    e: &IndexEntry,
    rep: &mut ImportedImage,
) -> Result<(), String> {
    let root: Digest = e
        .digest
        .parse()
        .map_err(|err| format!("index.json: digest {:?}: {err}", e.digest))?;
    if rep.image.is_empty() {
        return Err(format!(
            "{root} has neither a {CONTAINERD_NAME} nor a {REF_NAME} annotation naming it"
        ));
    }
    let name: ImageRef = rep
        .image
        .parse()
        .map_err(|err| format!("{}: {err}", rep.image))?;
    let up = config.upstream_named(&name.registry).ok_or_else(|| {
        format!(
            "{}: no upstream named {} in the config (add one; its url need not be reachable)",
            rep.image, name.registry
        )
    })?;
    let repo = if up.implicit_library {
        name.repo.with_library_prefix()
    } else {
        name.repo.clone()
    };
    // Every manifest and blob the image needs, with its media type.
    let mut manifests: Vec<(Digest, Bytes, String)> = Vec::new();
    let mut todo = vec![(root.clone(), Some(e.media_type.clone()), false)];
    while let Some((d, mt, child)) = todo.pop() {
        let Some(bytes) = stored_bytes(store, &d)
            .await
            .map_err(|err| format!("{d}: {err}"))?
        else {
            if child {
                rep.missing_platforms += 1;
                continue;
            }
            return Err(format!(
                "manifest {d} is neither in the bundle nor in the store (an incremental bundle \
                 needs the one it was exported --since imported first)"
            ));
        };
        let refs = Refs::parse(&bytes).map_err(|err| format!("manifest {d}: {err}"))?;
        // The manifest's own word first: index.json names Docker types by
        // their OCI twins (see `index_json_type`).
        let mt = own_media_type(&bytes)
            .or_else(|| mt.filter(|m| !m.is_empty()))
            .unwrap_or_else(|| match refs {
                Refs::Index(_) => OCI_INDEX.into(),
                Refs::Image { .. } => "application/vnd.oci.image.manifest.v1+json".into(),
            });
        match &refs {
            Refs::Index(children) => {
                for ch in children {
                    todo.push((ch.digest.clone(), ch.media_type.clone(), true));
                }
            }
            Refs::Image { config, layers } => {
                for b in std::iter::once(config).chain(layers) {
                    if !b.urls.is_empty() {
                        continue;
                    }
                    match store.stat(&b.digest).await {
                        Ok(Some(n)) if b.size == 0 || n == b.size => {}
                        Ok(_) => {
                            return Err(format!(
                                "blob {} of manifest {d} is neither in the bundle nor in the store \
                                 (or was refused)",
                                b.digest
                            ));
                        }
                        Err(err) => {
                            return Err(format!("blob {}: {}", b.digest, crate::error_chain(&err)));
                        }
                    }
                }
            }
        }
        manifests.push((d, bytes, mt));
    }
    // Children before their index, the tag last.
    for (d, bytes, mt) in manifests.iter().rev() {
        store
            .put_manifest(d, bytes.clone(), &MediaType::new(mt))
            .await
            .map_err(|err| format!("manifest {d}: {}", crate::error_chain(&err)))?;
    }
    let fail = |err: crate::store::Error| format!("{}: {}", rep.image, crate::error_chain(&err));
    store.mark_repo(&up.id, &repo).await.map_err(fail)?;
    match (&name.tag, &name.digest) {
        (Some(tag), _) => {
            let key = TagKey {
                upstream: up.id.clone(),
                repo: repo.clone(),
                tag: tag.clone(),
                class: AcceptClass::all_modern(),
            };
            let (_, _, mt) = &manifests[0];
            let rec = TagRecord {
                digest: root.clone(),
                media_type: MediaType::new(mt).as_str().to_owned(),
                size: manifests[0].1.len() as u64,
                checked_at_ms: crate::tag::epoch_ms(std::time::SystemTime::now()),
            };
            store.put_tag(&key, &rec).await.map_err(fail)?;
        }
        (None, _) => store
            .note_digest_ref(&up.id, &repo, &root)
            .await
            .map_err(fail)?,
    }
    Ok(())
}

/// A stored blob's bytes when they hash to `d` (a manifest: small).
async fn stored_bytes(store: &Store, d: &Digest) -> Result<Option<Bytes>, String> {
    let Some(r) = store.open(d).await.map_err(|e| crate::error_chain(&e))? else {
        return Ok(None);
    };
    if r.len() > MAX_JSON {
        return Err("too large for a manifest".into());
    }
    let bytes = r.read_all().await.map_err(|e| crate::error_chain(&e))?;
    Ok(d.verify(&bytes).then_some(bytes))
}

/// The `mediaType` a manifest names itself.
fn own_media_type(bytes: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct M {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
    }
    serde_json::from_slice::<M>(bytes).ok()?.media_type
}
