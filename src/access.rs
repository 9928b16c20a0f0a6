//! Access control: which clients may use a listener (CIDRs), which
//! repositories may enter the mirror (allow/deny globs), and client
//! authentication against an htpasswd file (bcrypt) for private
//! repositories and for upstream fetches.
//!
//! Pure decisions plus one cache: verified credentials are remembered (by a
//! SHA-256 of user and password, never the password) for a few minutes,
//! because bcrypt costs tens of milliseconds by design.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sha2::Digest as _;

/// An IP network such as `10.0.0.0/8` or `::1/128` (a bare address is a
/// single host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IP network"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?} has an invalid prefix length"))?,
        };
        Ok(Self { net, prefix })
    }
}

impl Cidr {
    /// Whether `ip` is in the network (IPv4-mapped IPv6 addresses count as
    /// IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let (a, b, bits) = match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => (
                u128::from(u32::from(n)) << 96,
                u128::from(u32::from(i)) << 96,
                self.prefix,
            ),
            (IpAddr::V6(n), IpAddr::V6(i)) => (u128::from(n), u128::from(i), self.prefix),
            _ => return false,
        };
        if bits == 0 {
            return true;
        }
        let mask = u128::MAX << (128 - u32::from(bits));
        a & mask == b & mask
    }
}

/// A repository-name glob: `*` matches within one path component, `**`
/// matches across components (`library/*`, `org/**`, `*/base-*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoPattern(String);

impl FromStr for RepoPattern {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = !s.is_empty()
            && s.len() <= 255
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/*".contains(&b));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(format!(
                "{s:?} is not a repository pattern (lowercase name characters, / and *)"
            ))
        }
    }
}

impl RepoPattern {
    /// Whether `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        glob(self.0.as_bytes(), name.as_bytes())
    }
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    match p.first() {
        None => s.is_empty(),
        Some(b'*') if p.get(1) == Some(&b'*') => (0..=s.len()).any(|i| glob(&p[2..], &s[i..])),
        Some(b'*') => {
            let stop = s.iter().position(|c| *c == b'/').unwrap_or(s.len());
            (0..=stop).any(|i| glob(&p[1..], &s[i..]))
        }
        Some(c) => s.first() == Some(c) && glob(&p[1..], &s[1..]),
    }
}

/// Whether any pattern matches.
pub fn any_match(patterns: &[RepoPattern], name: &str) -> bool {
    patterns.iter().any(|p| p.matches(name))
}

/// Users from an htpasswd file (bcrypt hashes only).
pub struct Htpasswd {
    users: HashMap<String, String>,
    verified: moka::sync::Cache<[u8; 32], String>,
    bcrypt_slots: tokio::sync::Semaphore,
}

impl std::fmt::Debug for Htpasswd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Htpasswd")
            .field("users", &self.users.len())
            .finish_non_exhaustive()
    }
}

impl Htpasswd {
    /// Loads `user:$2y$...` lines; other hash kinds are refused.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| format!("{}:{}: expected user:hash", path.display(), i + 1))?;
            if !(hash.starts_with("$2y$") || hash.starts_with("$2b$") || hash.starts_with("$2a$")) {
                return Err(format!(
                    "{}:{}: only bcrypt hashes are accepted (htpasswd -B)",
                    path.display(),
                    i + 1
                ));
            }
            users.insert(user.to_owned(), hash.to_owned());
        }
        Ok(Self {
            users,
            verified: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(300))
                .build(),
            bcrypt_slots: tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, std::num::NonZero::get),
            ),
        })
    }

    /// Checks a user and password; returns the user name when valid.
    pub fn verify(&self, user: &str, password: &str) -> Option<String> {
        let key = cred_key(user, password);
        if let Some(u) = self.verified.get(&key) {
            return Some(u);
        }
        let hash = self.users.get(user)?;
        if bcrypt::verify(password, hash).unwrap_or(false) {
            self.verified.insert(key, user.to_owned());
            Some(user.to_owned())
        } else {
            None
        }
    }

    /// Parses `Authorization: Basic ...` and verifies it: `Ok(Some(user))`
    /// for valid credentials, `Ok(None)` for an anonymous request (no
    /// header, another scheme, or an empty user name, which some clients
    /// send when they hold no credentials), `Err(BadCredentials)` when Basic
    /// credentials are present but wrong. A bcrypt check runs on the
    /// blocking pool, at most `bcrypt_slots` at a time, so password guessing
    /// cannot stall the server's threads.
    pub async fn authenticate(
        self: &std::sync::Arc<Self>,
        header: Option<&str>,
    ) -> Result<Option<String>, BadCredentials> {
        let Some((user, password)) = parse_basic(header)? else {
            return Ok(None);
        };
        if let Some(u) = self.verified.get(&cred_key(&user, &password)) {
            return Ok(Some(u));
        }
        let _slot = self
            .bcrypt_slots
            .acquire()
            .await
            .map_err(|_| BadCredentials)?;
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.verify(&user, &password))
            .await
            .ok()
            .flatten()
            .map(Some)
            .ok_or(BadCredentials)
    }
}

/// Basic credentials were sent but are wrong (or malformed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadCredentials;

fn cred_key(user: &str, password: &str) -> [u8; 32] {
    let mut h = sha2::Sha256::new();
    h.update(user.as_bytes());
    h.update([0]);
    h.update(password.as_bytes());
    h.finalize().into()
}

/// `Basic base64(user:password)` → `(user, password)`; `None` when the
/// request is anonymous.
fn parse_basic(header: Option<&str>) -> Result<Option<(String, String)>, BadCredentials> {
    use base64::Engine as _;
    let Some(h) = header else { return Ok(None) };
    let h = h.trim();
    let Some((scheme, b64)) = h.split_once(' ') else {
        return Ok(None);
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Ok(None);
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|_| BadCredentials)?;
    let raw = String::from_utf8(raw).map_err(|_| BadCredentials)?;
    let (u, p) = raw.split_once(':').ok_or(BadCredentials)?;
    if u.is_empty() {
        return Ok(None);
    }
    Ok(Some((u.to_owned(), p.to_owned())))
}

/// One upstream's repository rules.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RepoRules {
    /// Repositories that may enter the mirror (empty: all).
    pub allow: Vec<RepoPattern>,
    /// Repositories that may not (wins over `allow`).
    pub deny: Vec<RepoPattern>,
    /// Repositories only authenticated clients may pull.
    pub private: Vec<RepoPattern>,
    /// Only authenticated clients may cause upstream fetches.
    pub fetch_requires_auth: bool,
}

/// What a client may do with one repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Refused by the upstream's allow/deny rules, whoever asks (403).
    Denied,
    /// Only authenticated clients may pull it; this one is anonymous (401).
    NeedsAuth,
    /// Allowed; `fetch` says whether the request may go upstream, or must be
    /// answered from what is cached.
    Allowed {
        /// Whether an upstream fetch is allowed.
        fetch: bool,
    },
}

impl RepoRules {
    /// Whether no rule restricts anything.
    pub fn is_open(&self) -> bool {
        self.allow.is_empty()
            && self.deny.is_empty()
            && self.private.is_empty()
            && !self.fetch_requires_auth
    }

    /// Whether the repository may enter the mirror at all.
    pub fn admits(&self, repo: &str) -> bool {
        (self.allow.is_empty() || any_match(&self.allow, repo)) && !any_match(&self.deny, repo)
    }

    /// The verdict for `repo` (as named upstream) and a client that is
    /// `authenticated` or not.
    pub fn verdict(&self, repo: &str, authenticated: bool) -> Verdict {
        if !self.admits(repo) {
            Verdict::Denied
        } else if !authenticated && any_match(&self.private, repo) {
            Verdict::NeedsAuth
        } else {
            Verdict::Allowed {
                fetch: authenticated || !self.fetch_requires_auth,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains("10.200.1.2".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.1.1".parse().unwrap()));
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        assert!(
            "0.0.0.0/0"
                .parse::<Cidr>()
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        for bad in ["10.0.0.0/33", "x/8", "", "::/129"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn globs() {
        let m = |p: &str, n: &str| p.parse::<RepoPattern>().unwrap().matches(n);
        assert!(m("library/*", "library/alpine"));
        assert!(!m("library/*", "library/a/b"));
        assert!(m("org/**", "org/a/b"));
        assert!(m("*/base-*", "team/base-image"));
        assert!(!m("*/base-*", "team/x/base-image"));
        assert!(m("exact/name", "exact/name"));
        assert!(!m("exact/name", "exact/name2"));
        assert!("Bad".parse::<RepoPattern>().is_err());
    }

    #[test]
    fn verdicts() {
        let pats = |v: &[&str]| {
            v.iter()
                .map(|p| p.parse().unwrap())
                .collect::<Vec<RepoPattern>>()
        };
        let r = RepoRules {
            allow: pats(&["library/*", "org/**"]),
            deny: pats(&["library/bad"]),
            private: pats(&["org/secret/*"]),
            fetch_requires_auth: false,
        };
        assert_eq!(
            r.verdict("library/alpine", false),
            Verdict::Allowed { fetch: true }
        );
        assert_eq!(r.verdict("library/bad", true), Verdict::Denied);
        assert_eq!(r.verdict("other/x", true), Verdict::Denied);
        assert_eq!(r.verdict("org/secret/app", false), Verdict::NeedsAuth);
        assert_eq!(
            r.verdict("org/secret/app", true),
            Verdict::Allowed { fetch: true }
        );
        let cache_only = RepoRules {
            fetch_requires_auth: true,
            ..RepoRules::default()
        };
        assert_eq!(
            cache_only.verdict("any/thing", false),
            Verdict::Allowed { fetch: false }
        );
        assert_eq!(
            cache_only.verdict("any/thing", true),
            Verdict::Allowed { fetch: true }
        );
    }

    #[test]
    fn htpasswd_bcrypt_and_cache() {
        let dir = tempfile::tempdir().unwrap();
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        std::fs::write(dir.path().join("h"), format!("# users\nalice:{hash}\n")).unwrap();
        let h = Htpasswd::load(&dir.path().join("h")).unwrap();
        assert_eq!(h.verify("alice", "s3cret").as_deref(), Some("alice"));
        assert_eq!(h.verify("alice", "s3cret").as_deref(), Some("alice"));
        assert_eq!(h.verify("alice", "wrong"), None);
        assert_eq!(h.verify("bob", "s3cret"), None);
        let h = std::sync::Arc::new(h);
        let b64 = |s: &str| {
            use base64::Engine as _;
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(s)
            )
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            assert_eq!(
                h.authenticate(Some(&b64("alice:s3cret"))).await,
                Ok(Some("alice".into()))
            );
            assert_eq!(
                h.authenticate(Some(&b64("alice:nope"))).await,
                Err(BadCredentials)
            );
            assert_eq!(
                h.authenticate(Some(&b64("mallory:s3cret"))).await,
                Err(BadCredentials)
            );
            assert_eq!(h.authenticate(None).await, Ok(None));
            assert_eq!(h.authenticate(Some(&b64(":"))).await, Ok(None));
            assert_eq!(h.authenticate(Some("Bearer x")).await, Ok(None));
            assert_eq!(h.authenticate(Some("Basic !!!")).await, Err(BadCredentials));
            assert_eq!(
                h.authenticate(Some(&b64("nocolon"))).await,
                Err(BadCredentials)
            );
        });
        std::fs::write(dir.path().join("m"), "bob:{SHA}abc\n").unwrap();
        assert!(
            Htpasswd::load(&dir.path().join("m"))
                .unwrap_err()
                .contains("bcrypt")
        );
    }
}
