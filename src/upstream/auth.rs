//! Upstream authentication: `WWW-Authenticate` parsing, the Docker/OCI
//! bearer-token flow, Basic, and a per-scope token cache.
//!
//! Tokens are cached per scope (`repository:<name>:pull`) until shortly
//! before they expire, and concurrent fetches of one scope's token are
//! coalesced. Neither tokens nor credentials are ever logged or shown in
//! `Debug`.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::HeaderValue;
use serde::Deserialize;

use super::Error;
use crate::config::{Credentials, Secret};

/// One challenge from a `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// The scheme, lowercased (`bearer`, `basic`).
    pub scheme: String,
    /// Auth parameters; names lowercased, values unquoted.
    pub params: Vec<(String, String)>,
}

impl Challenge {
    /// The value of parameter `name` (lowercase).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+.^_`|~-".contains(&c)
}

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }

    fn token(&mut self) -> String {
        let start = self.i;
        while self.peek().is_some_and(is_tchar) {
            self.i += 1;
        }
        String::from_utf8_lossy(&self.b[start..self.i]).into_owned()
    }

    /// A quoted string (opening quote at the cursor), with `\` escapes. An
    /// unterminated string runs to the end.
    fn quoted(&mut self) -> String {
        self.i += 1;
        let mut out = Vec::new();
        while let Some(c) = self.peek() {
            self.i += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    if let Some(n) = self.peek() {
                        out.push(n);
                        self.i += 1;
                    }
                }
                _ => out.push(c),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// An unquoted value: everything up to whitespace or a comma.
    fn bare(&mut self) -> String {
        let start = self.i;
        while self
            .peek()
            .is_some_and(|c| !matches!(c, b' ' | b'\t' | b','))
        {
            self.i += 1;
        }
        String::from_utf8_lossy(&self.b[start..self.i]).into_owned()
    }
}

/// Parses every challenge in a `WWW-Authenticate` value (RFC 7235 §4.1):
/// several challenges per value, auth-params with quoted strings. Never
/// panics; junk is skipped.
pub fn parse_challenges(value: &str) -> Vec<Challenge> {
    let mut c = Cursor {
        b: value.as_bytes(),
        i: 0,
    };
    let mut out = Vec::new();
    loop {
        while matches!(c.peek(), Some(b' ' | b'\t' | b',')) {
            c.i += 1;
        }
        if c.peek().is_none() {
            return out;
        }
        let scheme = c.token();
        if scheme.is_empty() {
            c.i += 1;
            continue;
        }
        let mut ch = Challenge {
            scheme: scheme.to_ascii_lowercase(),
            params: Vec::new(),
        };
        loop {
            c.skip_ws();
            let save = c.i;
            let name = c.token();
            c.skip_ws();
            if name.is_empty() || c.peek() != Some(b'=') {
                // A new challenge's scheme, a token68, or junk: not ours.
                c.i = save;
                if name.is_empty() && c.peek().is_some_and(|b| b != b',') {
                    c.i += 1;
                }
                break;
            }
            c.i += 1;
            c.skip_ws();
            let value = if c.peek() == Some(b'"') {
                c.quoted()
            } else {
                c.bare()
            };
            ch.params.push((name.to_ascii_lowercase(), value));
            c.skip_ws();
            while c.peek() == Some(b',') {
                c.i += 1;
                c.skip_ws();
            }
        }
        out.push(ch);
    }
}

/// What an upstream asked for, learned from its challenges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scheme {
    /// HTTP Basic with the configured credentials.
    Basic,
    /// Bearer tokens from a token server.
    Bearer {
        /// The token endpoint.
        realm: url::Url,
        /// The `service` parameter.
        service: Option<String>,
    },
}

/// Picks the scheme to use from a set of challenges: Bearer when offered
/// (with a usable realm), else Basic.
pub(crate) fn choose(challenges: &[Challenge]) -> Option<Scheme> {
    let bearer = challenges.iter().find_map(|c| {
        if c.scheme != "bearer" {
            return None;
        }
        let realm = url::Url::parse(c.param("realm")?).ok()?;
        matches!(realm.scheme(), "http" | "https").then(|| Scheme::Bearer {
            realm,
            service: c.param("service").map(str::to_owned),
        })
    });
    bearer.or_else(|| {
        challenges
            .iter()
            .any(|c| c.scheme == "basic")
            .then_some(Scheme::Basic)
    })
}

/// A bearer token and how long it may be used.
pub(crate) struct Token {
    pub(crate) value: Secret,
    pub(crate) ttl: Duration,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
    issued_at: Option<String>,
}

/// Parses a token server response. `expires_in` defaults to 60 s; the
/// lifetime counts from `issued_at` when given, and a safety margin is kept.
pub(crate) fn parse_token(body: &[u8], now: SystemTime) -> Result<Token, Error> {
    let r: TokenResponse = serde_json::from_slice(body)
        .map_err(|e| Error::Protocol(format!("token response is not valid JSON: {e}")))?;
    let value = r
        .token
        .filter(|t| !t.is_empty())
        .or(r.access_token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Error::Protocol("token response has no token".into()))?;
    let lifetime = Duration::from_secs(r.expires_in.unwrap_or(60).max(1));
    let age = r
        .issued_at
        .and_then(|t| humantime::parse_rfc3339_weak(&t).ok())
        .and_then(|t| now.duration_since(t).ok())
        .unwrap_or_default();
    let margin = (lifetime / 4).min(Duration::from_secs(10));
    let ttl = lifetime.saturating_sub(age).saturating_sub(margin);
    Ok(Token {
        value: Secret::new(value),
        ttl,
    })
}

/// `Authorization: Basic ...` for credentials.
pub(crate) fn basic_header(c: &Credentials) -> Result<HeaderValue, Error> {
    use base64::Engine as _;
    let raw = format!("{}:{}", c.username, c.password.expose());
    let enc = base64::engine::general_purpose::STANDARD.encode(raw);
    let mut v = HeaderValue::from_str(&format!("Basic {enc}"))
        .map_err(|_| Error::Protocol("credentials are not valid in a header".into()))?;
    v.set_sensitive(true);
    Ok(v)
}

/// `Authorization: Bearer ...` for a token.
pub(crate) fn bearer_header(t: &Token) -> Result<HeaderValue, Error> {
    let mut v = HeaderValue::from_str(&format!("Bearer {}", t.value.expose()))
        .map_err(|_| Error::Protocol("token is not valid in a header".into()))?;
    v.set_sensitive(true);
    Ok(v)
}

struct TokenExpiry;

impl moka::Expiry<String, Arc<Token>> for TokenExpiry {
    fn expire_after_create(&self, _k: &String, v: &Arc<Token>, _now: Instant) -> Option<Duration> {
        Some(v.ttl)
    }
}

/// Bearer tokens by scope.
pub(crate) type TokenCache = moka::future::Cache<String, Arc<Token>>;

/// A token cache with per-token expiry.
pub(crate) fn token_cache() -> TokenCache {
    moka::future::Cache::builder()
        .max_capacity(10_000)
        .expire_after(TokenExpiry)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let c = parse_challenges(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].param("realm"), Some("https://auth.docker.io/token"));
        assert_eq!(c[0].param("scope"), Some("repository:library/alpine:pull"));

        let c = parse_challenges(
            r#"Basic realm="quay.io", Bearer realm="https://quay.io/v2/auth",service="quay.io""#,
        );
        assert_eq!(
            c.iter().map(|c| c.scheme.as_str()).collect::<Vec<_>>(),
            ["basic", "bearer"]
        );
        assert_eq!(c[1].param("service"), Some("quay.io"));
        assert!(matches!(choose(&c), Some(Scheme::Bearer { .. })));

        let c = parse_challenges(r#"BASIC Realm = "a \"q\" b" , charset=UTF-8"#);
        assert_eq!(c[0].param("realm"), Some(r#"a "q" b"#));
        assert_eq!(c[0].param("charset"), Some("UTF-8"));
        assert_eq!(choose(&c), Some(Scheme::Basic));

        let c = parse_challenges(
            r#"Bearer realm="x",error="insufficient_scope",scope="a:b:pull c:d:pull""#,
        );
        assert_eq!(c[0].param("scope"), Some("a:b:pull c:d:pull"));
        assert_eq!(c[0].param("error"), Some("insufficient_scope"));
        // A realm that is not http(s) is refused.
        assert_eq!(choose(&c), None);
        assert!(parse_challenges("").is_empty());
        assert!(parse_challenges(",,, ").is_empty());
        assert_eq!(parse_challenges("Negotiate abc==")[0].scheme, "negotiate");
        let c = parse_challenges(r#"Bearer realm="unterminated"#);
        assert_eq!(c[0].param("realm"), Some("unterminated"));
    }

    #[test]
    fn tokens() {
        let now = SystemTime::now();
        let t = parse_token(br#"{"token":"abc","expires_in":300}"#, now).unwrap();
        assert_eq!(t.value.expose(), "abc");
        assert_eq!(t.ttl, Duration::from_secs(290));
        let t = parse_token(br#"{"access_token":"xyz"}"#, now).unwrap();
        assert_eq!(t.value.expose(), "xyz");
        assert_eq!(t.ttl, Duration::from_secs(50));
        let issued = humantime::format_rfc3339_seconds(now - Duration::from_secs(100)).to_string();
        let body = format!(r#"{{"token":"a","expires_in":300,"issued_at":"{issued}"}}"#);
        let t = parse_token(body.as_bytes(), now).unwrap();
        assert!(
            t.ttl <= Duration::from_secs(191) && t.ttl >= Duration::from_secs(188),
            "{:?}",
            t.ttl
        );
        assert!(parse_token(b"{}", now).is_err());
        assert!(parse_token(b"not json", now).is_err());
        assert!(
            !format!("{t:?}").contains('a'.to_string().as_str())
                || !format!("{t:?}").contains("\"a\"")
        );
    }

    proptest::proptest! {
        #[test]
        fn parser_never_panics(s in "\\PC{0,200}") {
            let _ = choose(&parse_challenges(&s));
        }

        #[test]
        fn parser_never_panics_on_challenge_like_input(s in "[A-Za-z =\",\\\\:/._-]{0,120}") {
            let _ = choose(&parse_challenges(&s));
        }
    }
}
