//! What a manifest refers to: the children of an index, the config and
//! layers of an image manifest. Only the fields that name other objects are
//! read; the bytes stay as they came (their digest is the manifest's).

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

use super::Digest;

/// A descriptor: what another object is, by digest.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Descriptor {
    /// Its media type, if given.
    #[serde(rename = "mediaType", default)]
    pub media_type: Option<String>,
    /// Its digest.
    #[serde(deserialize_with = "digest")]
    pub digest: Digest,
    /// Its size in bytes.
    #[serde(default)]
    pub size: u64,
    /// The platform of an index entry.
    #[serde(default)]
    pub platform: Option<Platform>,
    /// Where a non-distributable ("foreign") layer is to be fetched from
    /// instead of the registry.
    #[serde(default)]
    pub urls: Vec<String>,
}

fn digest<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

/// An OS and CPU, as in an index entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
pub struct Platform {
    /// `linux`, `windows`, ... (`unknown` for attestations).
    pub os: String,
    /// `amd64`, `arm64`, ...
    pub architecture: String,
    /// `v7`, `v8`, ...
    #[serde(default)]
    pub variant: Option<String>,
}

impl Platform {
    /// Whether `self` is what `want` asks for: the same OS and architecture,
    /// and the same variant when `want` names one.
    pub fn matches(&self, want: &Platform) -> bool {
        self.os == want.os
            && self.architecture == want.architecture
            && (want.variant.is_none() || want.variant == self.variant)
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// Why a string is not `OS/ARCH[/VARIANT]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a platform (want OS/ARCH or OS/ARCH/VARIANT, e.g. linux/arm64)")]
pub struct PlatformError(String);

impl FromStr for Platform {
    type Err = PlatformError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok =
            |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        let parts: Vec<&str> = s.trim().split('/').collect();
        match parts[..] {
            [os, arch] if ok(os) && ok(arch) => Ok(Self {
                os: os.into(),
                architecture: arch.into(),
                variant: None,
            }),
            [os, arch, v] if ok(os) && ok(arch) && ok(v) => Ok(Self {
                os: os.into(),
                architecture: arch.into(),
                variant: Some(v.into()),
            }),
            _ => Err(PlatformError(s.to_string())),
        }
    }
}

/// A manifest's references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refs {
    /// An index or manifest list: its entries.
    Index(Vec<Descriptor>),
    /// An image manifest: its config and layers.
    Image {
        /// The config blob.
        config: Descriptor,
        /// The layers, in order.
        layers: Vec<Descriptor>,
    },
}

/// Why manifest bytes could not be read.
#[derive(Debug, thiserror::Error)]
#[error("manifest is not an image manifest or index")]
pub struct ManifestError(#[source] serde_json::Error);

#[derive(Deserialize)]
struct Raw {
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
}

impl Refs {
    /// Reads the references of a Docker v2 schema 2 or OCI manifest, list
    /// or index (by its fields, whatever the media type says).
    pub fn parse(bytes: &[u8]) -> Result<Self, ManifestError> {
        let raw: Raw = serde_json::from_slice(bytes).map_err(ManifestError)?;
        match raw {
            Raw {
                manifests: Some(m), ..
            } => Ok(Self::Index(m)),
            Raw {
                config: Some(config),
                layers,
                ..
            } => Ok(Self::Image {
                config,
                layers: layers.unwrap_or_default(),
            }),
            _ => Err(ManifestError(serde::de::Error::custom(
                "neither `manifests` nor `config`",
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn index_and_image() {
        let idx = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
              {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{A}","size":10,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}},
              {{"digest":"{B}","size":5,"platform":{{"os":"unknown","architecture":"unknown"}}}}]}}"#
        );
        let Refs::Index(m) = Refs::parse(idx.as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(m.len(), 2);
        let p = m[0].platform.as_ref().unwrap();
        assert_eq!(p.to_string(), "linux/arm64/v8");
        assert!(p.matches(&"linux/arm64".parse().unwrap()));
        assert!(p.matches(&"linux/arm64/v8".parse().unwrap()));
        assert!(!p.matches(&"linux/arm64/v7".parse().unwrap()));
        assert!(!p.matches(&"linux/amd64".parse().unwrap()));
        let img = format!(
            r#"{{"schemaVersion":2,"config":{{"digest":"{A}","size":3}},"layers":[{{"digest":"{B}","size":7,"urls":["https://x"]}}]}}"#
        );
        let Refs::Image { config, layers } = Refs::parse(img.as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(config.digest.to_string(), A);
        assert_eq!(layers[0].size, 7);
        assert_eq!(layers[0].urls, ["https://x"]);
        assert!(Refs::parse(b"{}").is_err());
        assert!(Refs::parse(b"[]").is_err());
        assert!(Refs::parse(br#"{"config":{"digest":"nope"}}"#).is_err());
        for bad in ["linux", "linux/", "/amd64", "a/b/c/d", "linux/am d64"] {
            assert!(bad.parse::<Platform>().is_err(), "{bad}");
        }
    }
}
