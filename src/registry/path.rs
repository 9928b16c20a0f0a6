//! Parses a request path into a typed registry endpoint.
//!
//! Both path-prefix shapes are recognised here, without knowing which
//! prefixes are upstreams: `/<prefix>/v2/...` (containerd `hosts.toml` with a
//! path) yields `prefix`, and `/v2/<prefix>/<repo>/...` (podman, skopeo,
//! BuildKit, kaniko) is simply part of the repository name, which `route`
//! may strip. Names are split on the endpoint suffix (`/manifests/<ref>`,
//! `/blobs/<digest>`, `/tags/list`, `/referrers/<digest>`), since names
//! contain `/`.

use crate::oci::{Digest, Reference, RepoName};

/// Longest request path accepted, in bytes.
pub const MAX_PATH_LEN: usize = 1024;

/// A recognised registry API endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v2/`
    Ping,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/<name>/manifests/<reference>`
    Manifest(RepoName, Reference),
    /// `/v2/<name>/blobs/<digest>`
    Blob(RepoName, Digest),
    /// `/v2/<name>/tags/list`
    Tags(RepoName),
    /// `/v2/<name>/referrers/<digest>`
    Referrers(RepoName, Digest),
    /// `/v2/<name>/blobs/uploads/` (start) or `.../uploads/<session>`:
    /// push, served by hosted namespaces only.
    Upload(RepoName, Option<String>),
}

/// A parsed path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedPath {
    /// The segment before `/v2/`, if any (`/docker.io/v2/...`).
    pub prefix: Option<String>,
    /// The endpoint.
    pub endpoint: Endpoint,
}

/// Why a path was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Not a registry API path at all.
    #[error("not a registry API path")]
    NotFound,
    /// Longer than [`MAX_PATH_LEN`].
    #[error("request path too long")]
    TooLong,
    /// The repository name breaks the OCI grammar.
    #[error("invalid repository name")]
    Name,
    /// A manifest reference that is neither a valid tag nor a digest: no
    /// registry can hold such a manifest, so it is answered as unknown
    /// (the OCI conformance suite probes with `.INVALID_MANIFEST_NAME`).
    #[error("manifest unknown: the reference is neither a valid tag nor a digest")]
    ImpossibleReference,
    /// The digest is malformed or uses an unsupported algorithm.
    #[error("invalid digest")]
    Digest,
}

/// Parses a request path (no query string).
pub fn parse(path: &str) -> Result<ParsedPath, PathError> {
    if path.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong);
    }
    let (prefix, rest) = if let Some(rest) = path.strip_prefix("/v2") {
        (None, rest)
    } else {
        let after = path.strip_prefix('/').ok_or(PathError::NotFound)?;
        let (seg, rest) = after.split_once('/').ok_or(PathError::NotFound)?;
        let rest = rest.strip_prefix("v2").ok_or(PathError::NotFound)?;
        if seg.is_empty() {
            return Err(PathError::NotFound);
        }
        (Some(seg.to_ascii_lowercase()), rest)
    };
    let endpoint = match rest {
        "" | "/" => Endpoint::Ping,
        "/_catalog" => Endpoint::Catalog,
        r => parse_endpoint(r.strip_prefix('/').ok_or(PathError::NotFound)?)?,
    };
    Ok(ParsedPath { prefix, endpoint })
}

fn name(s: &str) -> Result<RepoName, PathError> {
    s.parse().map_err(|_| PathError::Name)
}

fn digest(s: &str) -> Result<Digest, PathError> {
    s.parse().map_err(|_| PathError::Digest)
}

fn parse_endpoint(rest: &str) -> Result<Endpoint, PathError> {
    if let Some(n) = rest.strip_suffix("/tags/list") {
        return Ok(Endpoint::Tags(name(n)?));
    }
    // `/blobs/uploads`, `/blobs/uploads/` or `/blobs/uploads/<id>`; a name
    // may itself contain `blobs/uploads` (`x/blobs/uploads/manifests/1`).
    if let Some(i) = rest.rfind("/blobs/uploads") {
        let tail = &rest[i + "/blobs/uploads".len()..];
        let session = tail.strip_prefix('/');
        if tail.is_empty() || session.is_some_and(|id| !id.contains('/')) {
            let session = session.filter(|s| !s.is_empty()).map(str::to_owned);
            return Ok(Endpoint::Upload(name(&rest[..i])?, session));
        }
    }
    let (head, last) = rest.rsplit_once('/').ok_or(PathError::NotFound)?;
    let (n, kind) = head.rsplit_once('/').ok_or(PathError::NotFound)?;
    match kind {
        "manifests" => {
            // The name first: a bad name is the client's error to hear about.
            let n = name(n)?;
            let reference = if last.contains(':') {
                Reference::Digest(digest(last)?)
            } else {
                Reference::Tag(last.parse().map_err(|_| PathError::ImpossibleReference)?)
            };
            Ok(Endpoint::Manifest(n, reference))
        }
        "blobs" => Ok(Endpoint::Blob(name(n)?, digest(last)?)),
        "referrers" => Ok(Endpoint::Referrers(name(n)?, digest(last)?)),
        _ => Err(PathError::NotFound),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn ep(path: &str) -> Result<Endpoint, PathError> {
        parse(path).map(|p| p.endpoint)
    }

    #[test]
    fn endpoints() {
        assert_eq!(ep("/v2/"), Ok(Endpoint::Ping));
        assert_eq!(ep("/v2"), Ok(Endpoint::Ping));
        assert_eq!(ep("/v2/_catalog"), Ok(Endpoint::Catalog));
        assert!(matches!(
            ep("/v2/library/alpine/manifests/3.19"),
            Ok(Endpoint::Manifest(n, Reference::Tag(t))) if n.as_str() == "library/alpine" && t.as_str() == "3.19"
        ));
        assert!(matches!(
            ep(&format!("/v2/a/manifests/b/manifests/{D}")),
            Ok(Endpoint::Manifest(n, Reference::Digest(_))) if n.as_str() == "a/manifests/b"
        ));
        assert!(matches!(
            ep(&format!("/v2/org/blobs/x/blobs/{D}")),
            Ok(Endpoint::Blob(n, _)) if n.as_str() == "org/blobs/x"
        ));
        assert!(matches!(ep("/v2/a/b/tags/list"), Ok(Endpoint::Tags(n)) if n.as_str() == "a/b"));
        assert!(matches!(
            ep(&format!("/v2/a/referrers/{D}")),
            Ok(Endpoint::Referrers(..))
        ));
        let up = |n: &str, s: Option<&str>| {
            Ok(Endpoint::Upload(n.parse().unwrap(), s.map(str::to_owned)))
        };
        assert_eq!(ep("/v2/a/blobs/uploads/"), up("a", None));
        assert_eq!(ep("/v2/a/blobs/uploads"), up("a", None));
        assert_eq!(ep("/v2/a/blobs/uploads/123-456"), up("a", Some("123-456")));
        assert_eq!(
            ep("/v2/a/blobs/uploads/b/blobs/uploads/9"),
            up("a/blobs/uploads/b", Some("9"))
        );
        // A name that contains `blobs/uploads` is still a name.
        assert!(matches!(
            ep("/v2/x/blobs/uploads/manifests/latest"),
            Ok(Endpoint::Manifest(n, _)) if n.as_str() == "x/blobs/uploads"
        ));
    }

    #[test]
    fn prefixes() {
        let p = parse("/Docker.io/v2/library/alpine/manifests/latest").unwrap();
        assert_eq!(p.prefix.as_deref(), Some("docker.io"));
        assert_eq!(parse("/x/v2/").unwrap().endpoint, Endpoint::Ping);
        // The /v2/<prefix>/ shape is part of the name; route strips it.
        assert!(matches!(
            ep("/v2/ghcr.io/org/app/manifests/1"),
            Ok(Endpoint::Manifest(n, _)) if n.as_str() == "ghcr.io/org/app"
        ));
    }

    #[test]
    fn rejects() {
        assert_eq!(ep("/"), Err(PathError::NotFound));
        assert_eq!(ep("/v3/"), Err(PathError::NotFound));
        assert_eq!(ep("/v2/a/unknown/x"), Err(PathError::NotFound));
        assert_eq!(ep("/v2/a/manifests/"), Err(PathError::ImpossibleReference));
        assert_eq!(ep("/v2/A/manifests/latest"), Err(PathError::Name));
        assert_eq!(ep("/v2/A/manifests/.x"), Err(PathError::Name));
        assert_eq!(ep("/v2/../etc/manifests/latest"), Err(PathError::Name));
        assert_eq!(
            ep("/v2/a/manifests/.INVALID_MANIFEST_NAME"),
            Err(PathError::ImpossibleReference)
        );
        assert_eq!(ep("/v2/a/blobs/sha256:1234"), Err(PathError::Digest));
        assert_eq!(ep("/v2/a/blobs/latest"), Err(PathError::Digest));
        assert_eq!(ep("/v2/a%2fb/manifests/latest"), Err(PathError::Name));
        assert_eq!(
            ep(&format!("/v2/{}/tags/list", "a".repeat(2000))),
            Err(PathError::TooLong)
        );
        assert_eq!(ep("//v2/"), Err(PathError::NotFound));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,300}") {
            let _ = parse(&s);
        }

        #[test]
        fn never_panics_on_registry_like_paths(s in "(/[a-z0-9._:/-]{0,20}){0,8}") {
            let _ = parse(&s);
            let _ = parse(&format!("/v2{s}"));
        }
    }
}
