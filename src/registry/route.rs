//! Picks the upstream for a request. Pure: no I/O, table-tested.
//!
//! Precedence, most explicit first: `?ns=` > path prefix (either shape) >
//! SNI name (TLS) or `Host` (plain HTTP) > the listener's pinned upstream >
//! the default upstream. A prefix is always
//! stripped when present, even when `?ns=` decides (containerd sends both
//! when its `hosts.toml` mirror URL has a path).

use std::collections::HashMap;

use crate::config::{Config, UpstreamId};
use crate::oci::RepoName;

/// How the upstream was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The `?ns=` query parameter.
    Ns,
    /// A path prefix.
    Prefix,
    /// The TLS SNI name, or the `Host` header on plain HTTP.
    Host,
    /// The listener is pinned to an upstream.
    Pinned,
    /// Nothing named one; the default upstream.
    Default,
}

/// What serves a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A mirrored upstream registry (pull-through, read-only).
    Mirror,
    /// A hosted namespace (`[[hosted]]`): pushed images.
    Hosted,
}

/// The routing decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// The chosen upstream or hosted namespace.
    pub upstream: UpstreamId,
    /// Whether it is mirrored or hosted.
    pub target: Target,
    /// Why it was chosen.
    pub via: Via,
    /// The repository name with any `/v2/<prefix>/` component removed.
    pub name: Option<RepoName>,
}

/// Why no upstream could be chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoRoute {
    /// `?ns=` names a registry this mirror does not serve.
    #[error("no upstream is configured for ns={0}")]
    UnknownNs(String),
    /// `/<prefix>/v2/` names no upstream.
    #[error("no upstream is configured for path prefix /{0}/")]
    UnknownPrefix(String),
    /// Nothing selected an upstream and there is no default.
    #[error("no upstream selected and no default upstream configured")]
    NoDefault,
}

/// Upstream names and aliases → upstream.
#[derive(Debug, Clone)]
pub struct Router {
    names: HashMap<String, UpstreamId>,
    hosted: std::collections::HashSet<UpstreamId>,
    hosts: HashMap<String, UpstreamId>,
    default: Option<UpstreamId>,
}

impl Router {
    /// Builds the name table from the config.
    pub fn new(config: &Config) -> Self {
        let mut names = HashMap::new();
        for u in &config.upstreams {
            names.insert(u.id.as_str().to_owned(), u.id.clone());
            for a in &u.aliases {
                names.insert(a.clone(), u.id.clone());
            }
        }
        let default = config
            .upstreams
            .iter()
            .find(|u| u.default)
            .map(|u| u.id.clone());
        for h in &config.hosted {
            names.insert(h.id.as_str().to_owned(), h.id.clone());
            for a in &h.aliases {
                names.insert(a.clone(), h.id.clone());
            }
        }
        let hosts = config
            .upstreams
            .iter()
            .flat_map(|u| u.hosts.iter().map(|h| (h.clone(), u.id.clone())))
            .chain(
                config
                    .hosted
                    .iter()
                    .flat_map(|n| n.hosts.iter().map(|h| (h.clone(), n.id.clone()))),
            )
            .collect();
        Self {
            names,
            hosted: config.hosted.iter().map(|h| h.id.clone()).collect(),
            hosts,
            default,
        }
    }

    fn lookup(&self, name: &str) -> Option<&UpstreamId> {
        self.names.get(&name.to_ascii_lowercase())
    }

    /// Chooses the upstream for a request. `host` is the TLS SNI name (or
    /// the `Host` header's name on plain HTTP), without a port.
    pub fn select(
        &self,
        ns: Option<&str>,
        prefix: Option<&str>,
        name: Option<RepoName>,
        host: Option<&str>,
        pinned: Option<&UpstreamId>,
    ) -> Result<Selection, NoRoute> {
        let mut by_prefix = None;
        let mut name = name;
        if let Some(p) = prefix {
            match self.lookup(p) {
                Some(id) => by_prefix = Some(id.clone()),
                // With ?ns= a mirror path may be anything (hosts.toml lets
                // users choose it); without, an unknown prefix is an error.
                None if ns.is_some() => {}
                None => return Err(NoRoute::UnknownPrefix(p.to_owned())),
            }
        } else if let Some(n) = &name
            && let (first, Some(rest)) = n.split_first()
            && let Some(id) = self.lookup(first)
        {
            by_prefix = Some(id.clone());
            name = Some(rest);
        }
        if let Some(ns) = ns {
            let id = self
                .lookup(ns)
                .ok_or_else(|| NoRoute::UnknownNs(ns.to_owned()))?;
            return Ok(Selection {
                target: self.target(id),
                upstream: id.clone(),
                via: Via::Ns,
                name,
            });
        }
        let by_host = host.and_then(|h| {
            self.hosts
                .get(&h.trim_end_matches('.').to_ascii_lowercase())
        });
        let (upstream, via) = if let Some(id) = by_prefix {
            (id, Via::Prefix)
        } else if let Some(id) = by_host {
            (id.clone(), Via::Host)
        } else if let Some(id) = pinned {
            (id.clone(), Via::Pinned)
        } else if let Some(id) = &self.default {
            (id.clone(), Via::Default)
        } else {
            return Err(NoRoute::NoDefault);
        };
        Ok(Selection {
            target: self.target(&upstream),
            upstream,
            via,
            name,
        })
    }

    fn target(&self, id: &UpstreamId) -> Target {
        if self.hosted.contains(id) {
            Target::Hosted
        } else {
            Target::Mirror
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn router() -> (Router, Config) {
        let c = Config::from_toml(
            r#"
[[listener]]
addr = "127.0.0.1:0"
[[upstream]]
name = "docker.io"
url = "https://registry-1.docker.io"
aliases = ["index.docker.io", "registry-1.docker.io"]
default = true
[[upstream]]
name = "ghcr.io"
url = "https://ghcr.io"
hosts = ["ghcr.mirror.test"]
[[upstream]]
name = "quay.io"
url = "https://quay.io"
hosts = ["quay.mirror.test"]
"#,
            Path::new("."),
        )
        .unwrap();
        (Router::new(&c), c)
    }

    fn n(s: &str) -> Option<RepoName> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn precedence_table() {
        let (r, c) = router();
        let ghcr = &c.upstreams[1].id;
        let quay = &c.upstreams[2].id;
        // (ns, prefix, name, pinned) -> (upstream, via, name after stripping)
        type Case<'a> = (
            Option<&'a str>,
            Option<&'a str>,
            &'a str,
            Option<&'a UpstreamId>,
            &'a str,
            Via,
            &'a str,
        );
        let cases: Vec<Case<'_>> = vec![
            (
                None,
                None,
                "library/alpine",
                None,
                "docker.io",
                Via::Default,
                "library/alpine",
            ),
            (
                None,
                None,
                "org/app",
                Some(ghcr),
                "ghcr.io",
                Via::Pinned,
                "org/app",
            ),
            (
                None,
                None,
                "quay.io/org/app",
                Some(ghcr),
                "quay.io",
                Via::Prefix,
                "org/app",
            ),
            (
                None,
                Some("quay.io"),
                "org/app",
                Some(ghcr),
                "quay.io",
                Via::Prefix,
                "org/app",
            ),
            (
                Some("ghcr.io"),
                Some("quay.io"),
                "org/app",
                None,
                "ghcr.io",
                Via::Ns,
                "org/app",
            ),
            (
                Some("ghcr.io"),
                None,
                "ghcr.io/org/app",
                None,
                "ghcr.io",
                Via::Ns,
                "org/app",
            ),
            (
                Some("docker.io"),
                Some("anything"),
                "library/x",
                Some(quay),
                "docker.io",
                Via::Ns,
                "library/x",
            ),
            (
                Some("registry-1.docker.io"),
                None,
                "library/x",
                None,
                "docker.io",
                Via::Ns,
                "library/x",
            ),
            (
                None,
                Some("INDEX.DOCKER.IO"),
                "library/x",
                None,
                "docker.io",
                Via::Prefix,
                "library/x",
            ),
            // A one-component name equal to an upstream name is a repository, not a prefix.
            (
                None,
                None,
                "quay.io",
                None,
                "docker.io",
                Via::Default,
                "quay.io",
            ),
        ];
        for (ns, prefix, name, pinned, want, via, want_name) in cases {
            let s = r.select(ns, prefix, n(name), None, pinned).unwrap();
            assert_eq!(
                (s.upstream.as_str(), s.via),
                (want, via),
                "{ns:?} {prefix:?} {name}"
            );
            assert_eq!(s.name.unwrap().as_str(), want_name);
        }
    }

    #[test]
    fn host_sits_between_prefix_and_pin() {
        let (r, c) = router();
        let ghcr = &c.upstreams[1].id;
        let sel = |ns, prefix, name: &str, host, pinned| {
            r.select(ns, prefix, n(name), host, pinned).unwrap()
        };
        let s = sel(None, None, "org/a", Some("QUAY.mirror.test."), Some(ghcr));
        assert_eq!((s.upstream.as_str(), s.via), ("quay.io", Via::Host));
        let s = sel(None, None, "ghcr.io/org/a", Some("quay.mirror.test"), None);
        assert_eq!((s.upstream.as_str(), s.via), ("ghcr.io", Via::Prefix));
        let s = sel(
            Some("docker.io"),
            None,
            "org/a",
            Some("quay.mirror.test"),
            None,
        );
        assert_eq!((s.upstream.as_str(), s.via), ("docker.io", Via::Ns));
        let s = sel(None, None, "org/a", Some("unknown.test"), Some(ghcr));
        assert_eq!((s.upstream.as_str(), s.via), ("ghcr.io", Via::Pinned));
        let s = sel(None, None, "org/a", Some("unknown.test"), None);
        assert_eq!(s.via, Via::Default);
    }

    #[test]
    fn errors() {
        let (r, _) = router();
        assert_eq!(
            r.select(Some("example.com"), None, n("a"), None, None),
            Err(NoRoute::UnknownNs("example.com".into()))
        );
        assert_eq!(
            r.select(None, Some("nope"), n("a"), None, None),
            Err(NoRoute::UnknownPrefix("nope".into()))
        );
        let s = r.select(None, None, None, None, None).unwrap();
        assert_eq!(s.via, Via::Default);
    }
}
