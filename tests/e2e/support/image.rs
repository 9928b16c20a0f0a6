//! Deterministic test images, built in memory: Docker v2 schema 2 and OCI
//! manifests, Docker manifest lists and OCI indexes.

use bytes::Bytes;
use serde_json::json;
use sha2::Digest as _;

/// A content-addressed object.
#[derive(Debug, Clone)]
pub struct Blob {
    /// `sha256:<hex>`.
    pub digest: String,
    /// The bytes.
    pub bytes: Bytes,
    /// Its media type.
    pub media_type: &'static str,
}

/// An image: manifest, config and layers.
#[derive(Debug, Clone)]
pub struct Image {
    /// The manifest (bytes = JSON).
    pub manifest: Blob,
    /// The config blob.
    pub config: Blob,
    /// Layer blobs.
    pub layers: Vec<Blob>,
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

fn blob(bytes: Vec<u8>, media_type: &'static str) -> Blob {
    Blob {
        digest: sha256_digest(&bytes),
        bytes: Bytes::from(bytes),
        media_type,
    }
}

/// Pseudo-random bytes from a seed (splitmix64).
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut s = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(len as u64);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn build(seed: u64, sizes: &[usize], oci: bool) -> Image {
    build_on(seed, &[], sizes, oci)
}

/// A Docker v2 schema 2 image whose first layers are `base` (shared with
/// other images), then new layers of the given sizes.
pub fn docker_image_on(seed: u64, base: &[Blob], layer_sizes: &[usize]) -> Image {
    build_on(seed, base, layer_sizes, false)
}

fn build_on(seed: u64, base: &[Blob], sizes: &[usize], oci: bool) -> Image {
    let (manifest_type, config_type, layer_type) = if oci {
        (
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.oci.image.config.v1+json",
            "application/vnd.oci.image.layer.v1.tar+gzip",
        )
    } else {
        (
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.docker.container.image.v1+json",
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
        )
    };
    let layers: Vec<Blob> = base
        .iter()
        .cloned()
        .chain(
            sizes
                .iter()
                .enumerate()
                .map(|(i, n)| blob(random_bytes(seed * 1000 + i as u64, *n), layer_type)),
        )
        .collect();
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Env": [format!("SEED={seed}")] },
        "rootfs": { "type": "layers", "diff_ids": layers.iter().map(|l| l.digest.clone()).collect::<Vec<_>>() },
    });
    let config = blob(serde_json::to_vec(&config).expect("json"), config_type);
    let desc =
        |b: &Blob| json!({ "mediaType": b.media_type, "size": b.bytes.len(), "digest": b.digest });
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": desc(&config),
        "layers": layers.iter().map(desc).collect::<Vec<_>>(),
    });
    // Pretty-printed, so re-serializing would change the digest: the mirror
    // must serve these bytes verbatim.
    let manifest = blob(
        serde_json::to_vec_pretty(&manifest).expect("json"),
        manifest_type,
    );
    Image {
        manifest,
        config,
        layers,
    }
}

/// A Docker v2 schema 2 image with layers of the given sizes.
pub fn docker_image(seed: u64, layer_sizes: &[usize]) -> Image {
    build(seed, layer_sizes, false)
}

/// An OCI image with layers of the given sizes.
pub fn oci_image(seed: u64, layer_sizes: &[usize]) -> Image {
    build(seed, layer_sizes, true)
}

fn list(images: &[(&Image, &str)], media_type: &'static str) -> Blob {
    let manifests: Vec<_> = images
        .iter()
        .map(|(img, arch)| {
            json!({
                "mediaType": img.manifest.media_type,
                "size": img.manifest.bytes.len(),
                "digest": img.manifest.digest,
                "platform": { "architecture": arch, "os": "linux" },
            })
        })
        .collect();
    let v = json!({ "schemaVersion": 2, "mediaType": media_type, "manifests": manifests });
    blob(serde_json::to_vec_pretty(&v).expect("json"), media_type)
}

/// A Docker manifest list.
pub fn docker_list(images: &[(&Image, &str)]) -> Blob {
    list(
        images,
        "application/vnd.docker.distribution.manifest.list.v2+json",
    )
}

/// An OCI image index.
pub fn oci_index(images: &[(&Image, &str)]) -> Blob {
    list(images, "application/vnd.oci.image.index.v1+json")
}
