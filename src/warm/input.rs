//! What to warm: image references, and the three inputs they come from (a
//! list file, `kubectl get pods -o json`, a `skopeo sync` YAML file).

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use crate::oci::{Digest, RepoName, Tag};

/// The registry of a reference without one (as Docker and Kubernetes read
/// `alpine:3.20`).
pub const DEFAULT_REGISTRY: &str = "docker.io";

/// One image to warm: `registry/repository` and a tag, a digest, or both
/// (a digest wins: the tag is then only a label).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageRef {
    /// The registry as clients name it (`docker.io`, `ghcr.io`,
    /// `registry.example:5000`): the mirror's `?ns=`.
    pub registry: String,
    /// The repository, with Docker Hub's `library/` for one-component names.
    pub repo: RepoName,
    /// The tag, if named.
    pub tag: Option<Tag>,
    /// The digest, if named.
    pub digest: Option<Digest>,
}

/// Why a string is not an image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not an image reference: {why}")]
pub struct RefError {
    input: String,
    why: &'static str,
}

impl ImageRef {
    /// The reference a manifest request names: the digest, else the tag.
    pub fn reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.to_string(),
            (None, None) => "latest".into(),
        }
    }
}

impl FromStr for ImageRef {
    type Err = RefError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why| RefError {
            input: s.to_string(),
            why,
        };
        let s0 = s.trim();
        if s0.is_empty() {
            return Err(err("empty"));
        }
        let (rest, digest) = match s0.split_once('@') {
            Some((r, d)) => (
                r,
                Some(d.parse::<Digest>().map_err(|_| err("invalid digest"))?),
            ),
            None => (s0, None),
        };
        // The first component is a registry when it looks like a host name
        // (a dot, a port, or `localhost`), as Docker reads it.
        let (registry, path) = match rest.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_ascii_lowercase(), path)
            }
            _ => (DEFAULT_REGISTRY.to_string(), rest),
        };
        let registry = canonical_registry(&registry).ok_or_else(|| err("invalid registry host"))?;
        // A tag follows the last ':' of the last path component.
        let last_slash = path.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match path[last_slash..].rfind(':') {
            Some(i) => {
                let at = last_slash + i;
                let t = path[at + 1..]
                    .parse::<Tag>()
                    .map_err(|_| err("invalid tag"))?;
                (&path[..at], Some(t))
            }
            None => (path, None),
        };
        let mut repo: RepoName = name.parse().map_err(|_| err("invalid repository name"))?;
        if registry == DEFAULT_REGISTRY {
            repo = repo.with_library_prefix();
        }
        let tag = if tag.is_none() && digest.is_none() {
            Some("latest".parse().map_err(|_| err("invalid tag"))?)
        } else {
            tag
        };
        Ok(Self {
            registry,
            repo,
            tag,
            digest,
        })
    }
}

impl ImageRef {
    /// The image in the store's terms: the upstream of `config` its
    /// registry names (by name or alias) and the repository as sent
    /// upstream.
    pub fn store_key(
        &self,
        config: &crate::config::Config,
    ) -> Result<crate::store::inventory::ImageKey, String> {
        use crate::store::inventory::{ImageKey, Named};
        let up = config.upstream_named(&self.registry).ok_or_else(|| {
            format!(
                "{self}: no upstream is configured for {} (configured: {})",
                self.registry,
                config
                    .upstreams
                    .iter()
                    .map(|u| u.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        let named = match (&self.digest, &self.tag) {
            (Some(d), _) => Named::Digest(d.clone()),
            (None, Some(t)) => Named::Tag(t.clone()),
            (None, None) => Named::Tag("latest".parse().expect("a valid tag")),
        };
        let repo = if up.implicit_library {
            self.repo.with_library_prefix()
        } else {
            self.repo.clone()
        };
        Ok(ImageKey::new(&up.id, repo, named))
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repo)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// A registry host (`host[:port]`, lower case) as the mirror's `?ns=`
/// names it: Docker Hub's other names become `docker.io`. `None` when it
/// is not a host name.
pub fn canonical_registry(host: &str) -> Option<String> {
    let host = host.to_ascii_lowercase();
    let (name, port) = match host.rsplit_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (host.as_str(), None),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    if !name_ok || !port_ok {
        return None;
    }
    Some(match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" => DEFAULT_REGISTRY.to_string(),
        _ => host,
    })
}

/// One line of an input that could not be used, with where it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {error}")]
pub struct InputError {
    /// `FILE:LINE`, or `FILE` and a JSON/YAML path.
    pub origin: String,
    /// What is wrong there.
    pub error: String,
}

/// A list file: one reference a line; `#` starts a comment; blank lines
/// are skipped. Every bad line is reported (with its number), not only the
/// first.
pub fn parse_list(name: &str, text: &str) -> Result<Vec<ImageRef>, Vec<InputError>> {
    let mut refs = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        match line.parse::<ImageRef>() {
            Ok(r) => refs.push(r),
            Err(e) => errors.push(InputError {
                origin: format!("{name}:{}", i + 1),
                error: e.to_string(),
            }),
        }
    }
    if errors.is_empty() {
        Ok(refs)
    } else {
        Err(errors)
    }
}

/// The output of `kubectl get pods -A -o json` (a `List` of pods), or one
/// pod, or a workload with a pod template (`Deployment`, `DaemonSet`, ...
/// and their `List`): every image of every container, init container and
/// ephemeral container, each once.
pub fn parse_kubectl(name: &str, text: &str) -> Result<Vec<ImageRef>, Vec<InputError>> {
    let doc: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        vec![InputError {
            origin: name.to_string(),
            error: format!("not JSON: {e}"),
        }]
    })?;
    let mut specs = Vec::new();
    collect_pod_specs(&doc, "", &mut specs);
    if specs.is_empty() {
        return Err(vec![InputError {
            origin: name.to_string(),
            error: "no pod spec in it (want the output of `kubectl get pods -A -o json`)".into(),
        }]);
    }
    let mut seen = BTreeSet::new();
    let mut refs = Vec::new();
    let mut errors = Vec::new();
    for (path, spec) in specs {
        for list in ["initContainers", "containers", "ephemeralContainers"] {
            let Some(cs) = spec.get(list).and_then(|v| v.as_array()) else {
                continue;
            };
            for (i, c) in cs.iter().enumerate() {
                let Some(image) = c.get("image").and_then(|v| v.as_str()) else {
                    continue;
                };
                match image.parse::<ImageRef>() {
                    Ok(r) => {
                        if seen.insert(r.clone()) {
                            refs.push(r);
                        }
                    }
                    Err(e) => errors.push(InputError {
                        origin: format!("{name}: {path}.{list}[{i}].image"),
                        error: e.to_string(),
                    }),
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(refs)
    } else {
        Err(errors)
    }
}

/// Every pod spec in `v`: a pod's `spec`, a template's `spec.template.spec`
/// (a CronJob's `spec.jobTemplate.spec.template.spec`), in `items` of a list.
fn collect_pod_specs<'a>(
    v: &'a serde_json::Value,
    path: &str,
    out: &mut Vec<(String, &'a serde_json::Value)>,
) {
    if let Some(items) = v.get("items").and_then(|i| i.as_array()) {
        for (i, item) in items.iter().enumerate() {
            collect_pod_specs(item, &format!("{path}items[{i}]"), out);
        }
        return;
    }
    let Some(spec) = v.get("spec") else { return };
    let label = match (
        v.pointer("/metadata/namespace").and_then(|n| n.as_str()),
        v.pointer("/metadata/name").and_then(|n| n.as_str()),
    ) {
        (Some(ns), Some(n)) => format!("{path}({ns}/{n})"),
        (None, Some(n)) => format!("{path}({n})"),
        _ => path.to_string(),
    };
    for (p, s) in [
        (".spec", Some(spec)),
        (".spec.template.spec", spec.pointer("/template/spec")),
        (
            ".spec.jobTemplate.spec.template.spec",
            spec.pointer("/jobTemplate/spec/template/spec"),
        ),
    ] {
        if let Some(s) = s
            && (s.get("containers").is_some() || s.get("initContainers").is_some())
        {
            out.push((format!("{label}{p}"), s));
        }
    }
}

/// What a `skopeo sync` YAML file asks for, per registry: images with
/// explicit tags or digests, and repositories whose tags must be listed
/// (`image: []`, or a tag regex) before their references are known.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncSpec {
    /// References known without asking the registry.
    pub refs: Vec<ImageRef>,
    /// Repositories to list tags of, keeping those that match (`None`:
    /// every tag).
    pub listings: Vec<Listing>,
}

/// A repository whose tags are listed through the mirror.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// The registry.
    pub registry: String,
    /// The repository.
    pub repo: RepoName,
    /// Tags to keep: a regular expression (`images-by-tag-regex`), or all.
    pub tag_regex: Option<String>,
}

/// A `skopeo sync --src yaml` file: `REGISTRY: {images: {REPO: [TAG or
/// DIGEST, ...]}, images-by-tag-regex: {REPO: REGEX}}`. Other keys
/// (`credentials`, `tls-verify`, `cert-dir`, `images-by-semver`) are about
/// reaching the source registry or need a semver matcher: the first are
/// ignored (the mirror holds the credentials), the last is reported.
pub fn parse_skopeo_sync(name: &str, text: &str) -> Result<SyncSpec, Vec<InputError>> {
    let bad = |error: String| {
        vec![InputError {
            origin: name.to_string(),
            error,
        }]
    };
    let doc: serde_json::Value =
        serde_norway::from_str(text).map_err(|e| bad(format!("not YAML: {e}")))?;
    let Some(regs) = doc.as_object() else {
        return Err(bad("want a mapping of registries at the top".into()));
    };
    let mut spec = SyncSpec::default();
    let mut errors = Vec::new();
    for (registry, body) in regs {
        let Some(registry) = canonical_registry(registry) else {
            errors.push(InputError {
                origin: name.to_string(),
                error: format!("{registry:?} is not a registry host"),
            });
            continue;
        };
        let at = |key: &str| format!("{name}: {registry}.{key}");
        let repo_of = |r: &str, errors: &mut Vec<InputError>, key: &str| -> Option<RepoName> {
            match r.parse::<RepoName>() {
                Ok(n) if registry == DEFAULT_REGISTRY => Some(n.with_library_prefix()),
                Ok(n) => Some(n),
                Err(_) => {
                    errors.push(InputError {
                        origin: at(key),
                        error: format!("{r:?} is not a repository name"),
                    });
                    None
                }
            }
        };
        if let Some(images) = body.get("images") {
            let Some(images) = images.as_object() else {
                errors.push(InputError {
                    origin: at("images"),
                    error: "want a mapping of repository to a list of tags".into(),
                });
                continue;
            };
            for (repo, tags) in images {
                let Some(repo) = repo_of(repo, &mut errors, &format!("images.{repo}")) else {
                    continue;
                };
                let tags: Vec<&serde_json::Value> = match tags {
                    serde_json::Value::Null => Vec::new(),
                    serde_json::Value::Array(a) => a.iter().collect(),
                    other => vec![other],
                };
                if tags.is_empty() {
                    spec.listings.push(Listing {
                        registry: registry.clone(),
                        repo,
                        tag_regex: None,
                    });
                    continue;
                }
                for t in tags {
                    let t = match t {
                        serde_json::Value::String(s) => s.clone(),
                        serde_json::Value::Number(n) => n.to_string(),
                        other => other.to_string(),
                    };
                    let (tag, digest) = if t.contains(':') {
                        (None, t.parse::<Digest>().ok())
                    } else {
                        (t.parse::<Tag>().ok(), None)
                    };
                    if tag.is_none() && digest.is_none() {
                        errors.push(InputError {
                            origin: at(&format!("images.{repo}")),
                            error: format!("{t:?} is neither a tag nor a digest"),
                        });
                        continue;
                    }
                    spec.refs.push(ImageRef {
                        registry: registry.clone(),
                        repo: repo.clone(),
                        tag,
                        digest,
                    });
                }
            }
        }
        if let Some(by_regex) = body.get("images-by-tag-regex") {
            let Some(by_regex) = by_regex.as_object() else {
                errors.push(InputError {
                    origin: at("images-by-tag-regex"),
                    error: "want a mapping of repository to a regular expression".into(),
                });
                continue;
            };
            for (repo, re) in by_regex {
                let key = format!("images-by-tag-regex.{repo}");
                let Some(repo) = repo_of(repo, &mut errors, &key) else {
                    continue;
                };
                let Some(re) = re.as_str() else {
                    errors.push(InputError {
                        origin: at(&key),
                        error: "want a regular expression (a string)".into(),
                    });
                    continue;
                };
                if let Err(e) = regex_lite::Regex::new(re) {
                    errors.push(InputError {
                        origin: at(&key),
                        error: format!("invalid regular expression: {e}"),
                    });
                    continue;
                }
                spec.listings.push(Listing {
                    registry: registry.clone(),
                    repo,
                    tag_regex: Some(re.to_string()),
                });
            }
        }
        if body.get("images-by-semver").is_some() {
            errors.push(InputError {
                origin: at("images-by-semver"),
                error: "not supported: list the tags, or use images-by-tag-regex".into(),
            });
        }
    }
    if errors.is_empty() {
        Ok(spec)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> String {
        s.parse::<ImageRef>().unwrap().to_string()
    }

    #[test]
    fn references_read_as_docker_and_kubernetes_read_them() {
        assert_eq!(r("alpine"), "docker.io/library/alpine:latest");
        assert_eq!(r("alpine:3.20"), "docker.io/library/alpine:3.20");
        assert_eq!(
            r("docker.io/library/alpine:3.20"),
            "docker.io/library/alpine:3.20"
        );
        assert_eq!(
            r("index.docker.io/bitnami/redis"),
            "docker.io/bitnami/redis:latest"
        );
        assert_eq!(r("ghcr.io/org/app:v1"), "ghcr.io/org/app:v1");
        assert_eq!(
            r("registry.example:5000/team/app"),
            "registry.example:5000/team/app:latest"
        );
        assert_eq!(r("localhost/x:1"), "localhost/x:1");
        let d = "sha256:".to_string() + &"a".repeat(64);
        assert_eq!(r(&format!("quay.io/a/b@{d}")), format!("quay.io/a/b@{d}"));
        let both = format!("nginx:1.27@{d}").parse::<ImageRef>().unwrap();
        assert_eq!(both.reference(), d, "a digest wins over the tag");
        assert_eq!(both.tag.unwrap().as_str(), "1.27");
        for bad in [
            "",
            "UPPER/x",
            "a:b:c",
            "x@sha256:12",
            "ghcr.io/",
            "a/../b",
            "x:",
            "a b.io/x",
            "h.io:x/y",
        ] {
            assert!(bad.parse::<ImageRef>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_list_file_has_comments_and_reports_every_bad_line() {
        let text =
            "# base images\nalpine:3.20\n\n  ghcr.io/org/app:1  # the app\nBAD REF\nx@sha256:1\n";
        let errs = parse_list("images.txt", text).unwrap_err();
        assert_eq!(errs.len(), 2);
        assert!(
            errs[0].to_string().starts_with("images.txt:5: "),
            "{}",
            errs[0]
        );
        assert!(
            errs[1].to_string().starts_with("images.txt:6: "),
            "{}",
            errs[1]
        );
        let ok = parse_list("images.txt", "# only\nalpine:3.20\nghcr.io/org/app:1 # x\n").unwrap();
        let ok: Vec<String> = ok.iter().map(ToString::to_string).collect();
        assert_eq!(ok, ["docker.io/library/alpine:3.20", "ghcr.io/org/app:1"]);
    }

    #[test]
    fn kubectl_json_gives_every_container_image_once() {
        let json = r#"{"apiVersion":"v1","kind":"List","items":[
          {"kind":"Pod","metadata":{"name":"web-1","namespace":"shop"},"spec":{
             "initContainers":[{"name":"migrate","image":"ghcr.io/shop/migrate:2"}],
             "containers":[{"name":"web","image":"nginx:1.27"},{"name":"log","image":"fluent/fluent-bit:3"}]}},
          {"kind":"Pod","metadata":{"name":"web-2","namespace":"shop"},"spec":{
             "containers":[{"name":"web","image":"docker.io/library/nginx:1.27"}],
             "ephemeralContainers":[{"name":"debug","image":"busybox"}]}},
          {"kind":"Deployment","metadata":{"name":"api"},"spec":{"template":{"spec":{
             "containers":[{"name":"api","image":"quay.io/org/api@sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"}]}}}}
        ]}"#;
        let refs: Vec<String> = parse_kubectl("pods.json", json)
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            refs,
            [
                "ghcr.io/shop/migrate:2",
                "docker.io/library/nginx:1.27",
                "docker.io/fluent/fluent-bit:3",
                "docker.io/library/busybox:latest",
                "quay.io/org/api@sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
            ]
        );
        let e = parse_kubectl("pods.json", r#"{"items":[{"metadata":{"name":"p","namespace":"n"},"spec":{"containers":[{"image":"Bad Image"}]}}]}"#)
            .unwrap_err();
        assert!(
            e[0].to_string()
                .contains("items[0](n/p).spec.containers[0].image"),
            "{}",
            e[0]
        );
        assert!(parse_kubectl("x.json", "{}").is_err());
        assert!(parse_kubectl("x.json", "not json").is_err());
    }

    #[test]
    fn skopeo_sync_yaml() {
        let yaml = r#"
docker.io:
  images:
    busybox: []
    redis:
      - "7.2"
      - "sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc"
  images-by-tag-regex:
    nginx: ^1\.27\.[0-9]+-alpine$
  credentials:
    username: john
    password: secret
quay.io:
  tls-verify: false
  images:
    coreos/etcd:
      - latest
"#;
        let spec = parse_skopeo_sync("sync.yml", yaml).unwrap();
        let refs: Vec<String> = spec.refs.iter().map(ToString::to_string).collect();
        assert_eq!(
            refs,
            [
                "docker.io/library/redis:7.2",
                "docker.io/library/redis@sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc",
                "quay.io/coreos/etcd:latest",
            ]
        );
        assert_eq!(spec.listings.len(), 2);
        assert_eq!(spec.listings[0].repo.as_str(), "library/busybox");
        assert_eq!(spec.listings[0].tag_regex, None);
        assert_eq!(spec.listings[1].repo.as_str(), "library/nginx");
        assert_eq!(
            spec.listings[1].tag_regex.as_deref(),
            Some(r"^1\.27\.[0-9]+-alpine$")
        );
        let e = parse_skopeo_sync("s.yml", "docker.io:\n  images-by-semver:\n    x: '>= 1'\n")
            .unwrap_err();
        assert!(e[0].to_string().contains("images-by-semver"), "{}", e[0]);
        let e = parse_skopeo_sync("s.yml", "docker.io:\n  images-by-tag-regex:\n    x: '('\n")
            .unwrap_err();
        assert!(
            e[0].to_string().contains("invalid regular expression"),
            "{}",
            e[0]
        );
        assert!(parse_skopeo_sync("s.yml", "- a\n- b\n").is_err());
    }
}
