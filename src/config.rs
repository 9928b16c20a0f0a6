//! Configuration: load a TOML file, validate it once, and hand out a typed
//! [`Config`] that the rest of the program trusts.
//!
//! Loading is `read → deserialize (unknown keys rejected) → validate`. All
//! checks that can fail happen here, before anything binds a socket: URLs,
//! duplicate names and ports, secrets from the environment or files, and CA
//! files. Every error names the key it is about (`upstream[1].url`, ...).
//!
//! Relative paths in a file (`storage.root`, `ca_file`, `password.file`) are
//! resolved against the directory holding the config file; for the embedded
//! default config, against the current directory.

mod file;
mod secret;

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

pub use secret::Secret;

use crate::oci::reference::is_name_component;

/// The config used when `serve` is given no `--config`.
pub const DEFAULT_CONFIG: &str = include_str!("../config/default.toml");

/// Default time a tag→digest mapping is trusted before a HEAD revalidation.
pub const DEFAULT_TAG_TTL: Duration = Duration::from_secs(300);
/// Default byte budget of the in-memory metadata cache.
pub const DEFAULT_METADATA_MAX: u64 = 64 * 1024 * 1024;
/// Default upstream connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default upstream read timeout (longest wait for the next bytes).
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Default time past the TTL a tag is served while upstream is down.
pub const DEFAULT_STALE_IF_ERROR: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default number of consecutive failures that open the circuit breaker.
pub const DEFAULT_BREAKER_FAILURES: u32 = 5;
/// Default first backoff of an open circuit breaker.
pub const DEFAULT_BREAKER_BACKOFF: Duration = Duration::from_secs(2);
/// Default lifetime of issued leaf certificates.
pub const DEFAULT_LEAF_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default TLS handshake timeout.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where blobs, manifests and the tag map live.
    pub storage_root: PathBuf,
    /// Re-hash the whole store this often while serving (`None`: never;
    /// `mirrorgate verify` does it on demand).
    pub verify_interval: Option<Duration>,
    /// Bound on stored blob bytes; least recently used blobs are evicted
    /// beyond it (`None`: unbounded). With `s3`, the bound of the local read
    /// tier.
    pub max_size: Option<u64>,
    /// `[storage.s3]`: blobs and records in an S3-compatible bucket.
    pub s3: Option<S3Config>,
    /// Metadata cache settings.
    pub cache: CacheConfig,
    /// TLS settings for `tls = true` listeners.
    pub tls: TlsConfig,
    /// Connection limits.
    pub server: ServerConfig,
    /// Client authentication (`[auth] htpasswd`), when configured.
    pub auth: Option<AuthConfig>,
    /// Listeners, in file order.
    pub listeners: Vec<ListenerConfig>,
    /// Upstreams, in file order. Names are unique.
    pub upstreams: Vec<UpstreamConfig>,
    /// `[[hosted]]`: namespaces clients push to, in file order. Their names
    /// and aliases are unique among upstreams' too.
    pub hosted: Vec<HostedConfig>,
    /// `[cluster]`: replicas sharing one bucket, when configured.
    pub cluster: Option<ClusterConfig>,
    /// `[[warm]]`: image lists the server keeps warm, in file order.
    pub warm: Vec<WarmConfig>,
    /// `[log] format`.
    pub log_format: LogFormat,
}

/// How log lines (events and the access log) are written to stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One human-readable line per event (the default).
    #[default]
    Text,
    /// One JSON object per event, with the same fields.
    Json,
}

/// `[[warm]]`: a list of images the server warms on a schedule (the list
/// file is read again at every run, so a GitOps job can keep it current).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmConfig {
    /// A list file (references, kubectl JSON or skopeo sync YAML, as for
    /// `mirrorgate warm`), relative to the config file.
    pub file: Option<PathBuf>,
    /// References, besides the file.
    pub images: Vec<String>,
    /// Time between runs (the first starts with the server).
    pub interval: Duration,
    /// Pin what is warmed (and unpin what leaves the list).
    pub pin: bool,
    /// Platforms to warm of an index; empty: all.
    pub platforms: Vec<crate::oci::manifest::Platform>,
    /// Images and blob downloads at once.
    pub concurrency: usize,
}

/// Default `[[warm]] interval`.
pub const DEFAULT_WARM_INTERVAL: Duration = Duration::from_secs(300);

/// `[cluster]`: this replica's part in a fleet of replicas that share one
/// S3 bucket and fetch each cold object upstream once for all of them.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    /// How other replicas reach this one's internal endpoint.
    pub advertise: url::Url,
    /// Where the internal endpoint listens (never a client listener).
    pub listen: SocketAddr,
    /// Signs and checks replica-to-replica requests.
    pub secret: Secret,
    /// How long a fill's lease lives without a renewal before another
    /// replica may take the fill over (renewed every third of it).
    pub lease_ttl: Duration,
    /// Longest wait to connect to another replica.
    pub peer_connect_timeout: Duration,
}

/// Default `[cluster] lease_ttl`.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(6);
/// Default `[cluster] peer_connect_timeout`.
pub const DEFAULT_PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Shortest `[cluster] secret` accepted, in bytes.
pub const MIN_CLUSTER_SECRET: usize = 16;

/// `[cache]`
#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    /// How long a tag's digest is trusted before a HEAD revalidation.
    pub tag_ttl: Duration,
    /// Byte budget of the in-memory metadata cache (tags and manifests).
    pub metadata_max_bytes: u64,
    /// How long past its TTL a tag may still be served when upstream is
    /// unreachable (connect error, timeout, 5xx, 429).
    pub stale_if_error: Duration,
}

/// `[auth]`: client authentication.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Users and bcrypt hashes.
    pub htpasswd: Arc<crate::access::Htpasswd>,
    /// The Basic realm in challenges.
    pub realm: String,
    /// Whether anonymous clients may pull at all (public repositories).
    /// `false` requires credentials on every request, `/v2/` included,
    /// which is what clients that only send credentials after a challenge
    /// on `/v2/` (dockerd, skopeo, podman) need for private repositories.
    pub anonymous: bool,
}

/// `[server]`: limits that keep hostile or broken clients from exhausting
/// the process.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// Most connections served at once, over all listeners; further clients
    /// wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Longest time a client may take to send a request's headers (also
    /// closes idle keep-alive connections).
    pub header_read_timeout: Duration,
    /// Largest request head (request line + headers) accepted.
    pub max_header_size: usize,
    /// Whether `GET /metrics` serves Prometheus counters.
    pub metrics: bool,
    /// Whether `GET /` and `/status` serve the status page (and
    /// `/status.json` its data).
    pub status: bool,
    /// Memory that the in-flight downloads together keep for their readers
    /// (beyond it, readers read what is already on disk from the spool).
    pub fill_memory: u64,
    /// At shutdown, how long `GET /readyz` answers 503 while the listeners
    /// still accept clients, before they stop (`None`: stop at once).
    pub drain_delay: Option<Duration>,
}

/// Default `[server] fill_memory`.
pub const DEFAULT_FILL_MEMORY: u64 = 8 * 1024 * 1024;

/// `[tls]`
#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    /// Where certificates come from.
    pub source: TlsSource,
    /// Extra names (the mirror's own hostnames) to issue certificates for.
    pub names: Vec<String>,
    /// Lifetime of issued leaf certificates (renewed at two thirds).
    pub leaf_validity: Duration,
    /// Longest time a client may take to finish the TLS handshake.
    pub handshake_timeout: Duration,
}

/// Where TLS certificates come from.
#[derive(Debug, Clone, PartialEq)]
pub enum TlsSource {
    /// The local CA in this directory (created on first use).
    LocalCa {
        /// Directory holding `ca.crt` and `ca.key`.
        dir: PathBuf,
    },
    /// An existing certificate chain and key (PEM files).
    Files {
        /// Certificate chain.
        cert: PathBuf,
        /// Private key.
        key: PathBuf,
    },
}

/// `[[listener]]`
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    /// Socket address to bind.
    pub addr: SocketAddr,
    /// Serve TLS (HTTP/1.1 and HTTP/2 by ALPN) instead of plain HTTP.
    pub tls: bool,
    /// Client networks allowed on this listener (empty: everyone).
    pub allow: Vec<crate::access::Cidr>,
    /// Every request on this listener goes to this upstream unless `?ns=` or a
    /// path prefix says otherwise.
    pub upstream: Option<UpstreamId>,
}

/// The name of an upstream (`docker.io`). Also its `?ns=` value and path
/// prefix. Invariant: a valid repository-name component, so it is safe as a
/// directory name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UpstreamId(Arc<str>);

impl UpstreamId {
    /// An upstream name: `None` unless it is a valid repository-name
    /// component (as config validation requires).
    pub fn parse(name: &str) -> Option<Self> {
        crate::oci::reference::is_name_component(name).then(|| Self(name.into()))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UpstreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for UpstreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// `[[upstream]]`
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    /// Unique name.
    pub id: UpstreamId,
    /// Base URL of the registry API (`https://registry-1.docker.io`).
    pub url: url::Url,
    /// Other names that select this upstream by `?ns=` or path prefix
    /// (lowercase).
    pub aliases: Vec<String>,
    /// Host names (TLS SNI, or `Host` on plain HTTP) that select this
    /// upstream (lowercase).
    pub hosts: Vec<String>,
    /// Fixed addresses for the upstream URL's host, bypassing DNS. Needed in
    /// transparent mode, where DNS points the upstream's own name at the
    /// mirror.
    pub connect_to: Vec<SocketAddr>,
    /// Which repositories may enter the mirror and who may pull them
    /// (`allow`, `deny`, `private`, `fetch_requires_auth`).
    pub access: crate::access::RepoRules,
    /// Chosen when nothing else selects an upstream.
    pub default: bool,
    /// Extra trust roots (PEM bytes, already read and checked).
    pub ca_pem: Option<Vec<u8>>,
    /// Upstream credentials.
    pub credentials: Option<Credentials>,
    /// Add Docker Hub's implicit `library/` to one-component names.
    pub implicit_library: bool,
    /// TCP + TLS connect timeout.
    pub connect_timeout: Duration,
    /// Longest wait for the next bytes of a response.
    pub read_timeout: Duration,
    /// Offer HTTP/2 to the upstream (ALPN). Off by default: blob transfers
    /// over HTTP/1.1 cost the mirror and the upstream less CPU.
    pub http2: bool,
    /// Per-upstream override of `[cache] tag_ttl`.
    pub tag_ttl: Duration,
    /// Consecutive failures that open the circuit breaker.
    pub breaker_failures: u32,
    /// First backoff of an open breaker (doubles per failed probe, up to a
    /// minute).
    pub breaker_backoff: Duration,
}

/// `[[hosted]]`: a namespace of pushed images, served from the store
/// beside the mirrored upstreams (sharing its blobs).
#[derive(Debug, Clone, PartialEq)]
pub struct HostedConfig {
    /// Unique name (its `?ns=` value and path prefix), among upstreams too.
    pub id: UpstreamId,
    /// Other names that select it by `?ns=` or path prefix (lowercase).
    pub aliases: Vec<String>,
    /// Host names (TLS SNI, or `Host` on plain HTTP) that select it.
    pub hosts: Vec<String>,
    /// Which repositories may exist and who may pull them (`allow`,
    /// `deny`, `private`; `fetch_requires_auth` does not apply).
    pub access: crate::access::RepoRules,
    /// Users who may push (`None`: every authenticated user).
    pub push: Option<Vec<String>>,
    /// Whether anonymous clients may push (off unless asked for).
    pub anonymous_push: bool,
    /// Whether `DELETE` of manifests, tags and blobs is served.
    pub delete: bool,
    /// Bound on the bytes of distinct blobs pushed to the namespace.
    pub max_size: Option<u64>,
    /// Largest manifest accepted.
    pub max_manifest_size: u64,
    /// An upload untouched this long is swept; an unreferenced blob younger
    /// than this is kept from garbage collection (a push in progress).
    pub upload_timeout: Duration,
    /// How often unreferenced blobs are collected (`None`: never).
    pub gc_interval: Option<Duration>,
}

impl HostedConfig {
    /// Whether `user` (`None`: anonymous) may push.
    pub fn may_push(&self, user: Option<&str>) -> bool {
        match (user, &self.push) {
            (None, _) => self.anonymous_push,
            (Some(_), None) => true,
            (Some(u), Some(list)) => list.iter().any(|p| p == u),
        }
    }
}

/// Default `[[hosted]] max_manifest_size` (what the OCI spec asks every
/// registry to accept).
pub const DEFAULT_MAX_MANIFEST: u64 = 4 * 1024 * 1024;
/// Default `[[hosted]] upload_timeout`.
pub const DEFAULT_UPLOAD_TIMEOUT: Duration = Duration::from_secs(3600);
/// Default `[[hosted]] gc_interval`.
pub const DEFAULT_GC_INTERVAL: Duration = Duration::from_secs(3600);

/// Username and password for an upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: Secret,
}

/// A config error; the message names the offending key.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax, a wrong type, or an unknown key.
    #[error("{0}")]
    Parse(String),
    /// A value that parsed but is not acceptable.
    #[error("{key}: {problem}")]
    Invalid {
        /// The key, such as `upstream[1].url`.
        key: String,
        /// What is wrong with it.
        problem: String,
    },
}

fn invalid(key: impl Into<String>, problem: impl Into<String>) -> Error {
    Error::Invalid {
        key: key.into(),
        problem: problem.into(),
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        Self::from_toml(&text, base)
    }

    /// The embedded default config, with relative paths under the current
    /// directory.
    pub fn embedded_default() -> Result<Self, Error> {
        Self::from_toml(DEFAULT_CONFIG, Path::new("."))
    }

    /// Like [`load`](Self::load), but upstream passwords are not read
    /// (environment variables and files may be absent): for commands that
    /// never talk to an upstream (`ca`, `client-config`, `verify`). The
    /// credentials hold an empty placeholder.
    pub fn load_without_secrets(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        let raw: file::File = toml::from_str(&text).map_err(|e| parse_error(&text, &e))?;
        validate(raw, base, Secrets::Skip)
    }

    /// Parses and validates TOML text; relative paths resolve against `base`.
    pub fn from_toml(text: &str, base: &Path) -> Result<Self, Error> {
        let raw: file::File = toml::from_str(text).map_err(|e| parse_error(text, &e))?;
        validate(raw, base, Secrets::Read)
    }

    /// The upstream with this name.
    pub fn upstream(&self, id: &UpstreamId) -> Option<&UpstreamConfig> {
        self.upstreams.iter().find(|u| &u.id == id)
    }

    /// The upstream a registry name (as in an image reference, or `?ns=`)
    /// names: by its name or one of its aliases, ignoring case.
    pub fn upstream_named(&self, registry: &str) -> Option<&UpstreamConfig> {
        let reg = registry.to_ascii_lowercase();
        self.upstreams
            .iter()
            .find(|u| u.id.as_str() == reg || u.aliases.contains(&reg))
    }
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        base.join(p)
    }
}

fn duration(key: &str, v: Option<&str>, default: Duration) -> Result<Duration, Error> {
    match v {
        None => Ok(default),
        Some(s) => {
            let d = humantime::parse_duration(s)
                .map_err(|e| invalid(key, format!("invalid duration {s:?}: {e}")))?;
            if d.is_zero() {
                return Err(invalid(key, "must be greater than zero"));
            }
            Ok(d)
        }
    }
}

/// A TOML error as `line L, column C: message`, without the excerpt of the
/// file that toml's own text shows: that line may hold a credential, and
/// this error reaches logs and the reload outcome.
fn parse_error(text: &str, e: &toml::de::Error) -> Error {
    let at = e.span().map(|span| {
        let before = text.get(..span.start).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        format!("line {line}, column {column}: ")
    });
    Error::Parse(format!("{}{}", at.unwrap_or_default(), e.message()))
}

/// Reads a secret: inline, from an environment variable, or from a file
/// (one trailing newline dropped). Skipped (empty) when `secrets` says so.
fn secret(key: &str, raw: file::Password, base: &Path, secrets: Secrets) -> Result<Secret, Error> {
    match raw {
        _ if secrets == Secrets::Skip => Ok(Secret::new("")),
        file::Password::Inline(s) => Ok(Secret::new(s)),
        file::Password::Env { env } => std::env::var(&env)
            .map(Secret::new)
            .map_err(|_| invalid(key, format!("environment variable {env:?} is not set"))),
        file::Password::File { file } => {
            let p = resolve(base, &file);
            let s = std::fs::read_to_string(&p)
                .map_err(|e| invalid(key, format!("cannot read {}: {e}", p.display())))?;
            Ok(Secret::new(s.trim_end_matches(['\r', '\n'])))
        }
    }
}

/// Reads a PEM bundle that must hold at least one certificate.
fn pem_file(key: &str, p: &Path) -> Result<Vec<u8>, Error> {
    let bytes =
        std::fs::read(p).map_err(|e| invalid(key, format!("cannot read {}: {e}", p.display())))?;
    if crate::pem::parse_certs(&bytes).is_empty() {
        return Err(invalid(
            key,
            format!("{} holds no PEM certificate", p.display()),
        ));
    }
    Ok(bytes)
}

/// A size with a unit (`"8MiB"`) within `min..=max` bytes.
fn size(key: &str, v: Option<&str>, default: u64, min: u64, max: u64) -> Result<u64, Error> {
    let Some(s) = v else {
        return Ok(default);
    };
    let b = bytesize::ByteSize::from_str(s)
        .map_err(|e| invalid(key, format!("invalid size {s:?}: {e}")))?
        .as_u64();
    if !(min..=max).contains(&b) {
        return Err(invalid(
            key,
            format!(
                "must be between {} and {}",
                bytesize::ByteSize(min).display().iec(),
                bytesize::ByteSize(max).display().iec()
            ),
        ));
    }
    Ok(b)
}

/// Default S3 multipart part size.
pub const DEFAULT_S3_PART_SIZE: u64 = 8 * 1024 * 1024;
/// Default lifetime of a presigned blob URL (distribution's).
pub const DEFAULT_S3_REDIRECT_TTL: Duration = Duration::from_secs(20 * 60);
/// Default S3 connect timeout.
pub const DEFAULT_S3_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default S3 read timeout (longest wait for the next bytes of a body).
pub const DEFAULT_S3_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Default overall timeout of an S3 call other than a blob body.
pub const DEFAULT_S3_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Default age after which a multipart upload with no live writer is
/// aborted by the sweeper.
pub const DEFAULT_S3_ABANDONED_UPLOAD_AGE: Duration = Duration::from_secs(3600);

/// `[storage.s3]`: an S3-compatible bucket (AWS, MinIO, Ceph RGW,
/// SeaweedFS, R2, GCS's S3 API) holding blobs and records.
#[derive(Debug, Clone, PartialEq)]
pub struct S3Config {
    /// The bucket.
    pub bucket: String,
    /// The endpoint (`None`: AWS for `region`).
    pub endpoint: Option<url::Url>,
    /// The region.
    pub region: String,
    /// Key prefix, empty or ending in `/`.
    pub prefix: String,
    /// Access key id and secret (`None`: the environment's AWS credentials,
    /// instance or web-identity roles included).
    pub credentials: Option<(Secret, Secret)>,
    /// Allow a plain-HTTP endpoint.
    pub allow_http: bool,
    /// Extra trusted roots (PEM) for the endpoint.
    pub ca_pem: Option<Vec<u8>>,
    /// Answer GETs of cached blobs with a 307 to a presigned URL.
    pub redirect: bool,
    /// How long a presigned URL is valid.
    pub redirect_ttl: Duration,
    /// The endpoint clients reach S3 at, when it differs from `endpoint`
    /// (the host is part of the signature).
    pub redirect_endpoint: Option<url::Url>,
    /// Virtual-hosted-style requests (`bucket.host`); path style otherwise,
    /// which MinIO and SeaweedFS need.
    pub virtual_hosted: bool,
    /// Multipart part size.
    pub part_size: u64,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Longest wait for the next bytes of a body.
    pub read_timeout: Duration,
    /// Overall timeout of a call other than a blob body.
    pub request_timeout: Duration,
    /// Uploads whose writer is gone are aborted after this long.
    pub abandoned_upload_age: Duration,
    /// Consecutive failed calls that open the circuit breaker.
    pub breaker_failures: u32,
    /// First backoff of the open breaker (doubling, at most 60 s).
    pub breaker_backoff: Duration,
}

fn s3_url(key: &str, s: &str) -> Result<url::Url, Error> {
    let u = url::Url::parse(s).map_err(|e| invalid(key, format!("invalid URL {s:?}: {e}")))?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
        return Err(invalid(
            key,
            "must be an http:// or https:// URL with a host",
        ));
    }
    if u.query().is_some() || u.fragment().is_some() {
        return Err(invalid(key, "must not have a query or fragment"));
    }
    Ok(u)
}

fn validate_s3(raw: file::S3, base: &Path, secrets: Secrets) -> Result<S3Config, Error> {
    let bucket = raw
        .bucket
        .ok_or_else(|| invalid("storage.s3.bucket", "is required"))?;
    let bucket_ok = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    if !bucket_ok {
        return Err(invalid(
            "storage.s3.bucket",
            "must be 3 to 63 characters of a-z, 0-9, '.' and '-'",
        ));
    }
    let endpoint = match raw.endpoint.as_deref() {
        None => None,
        Some(s) => Some(s3_url("storage.s3.endpoint", s)?),
    };
    let allow_http = raw.allow_http.unwrap_or(false);
    if endpoint.as_ref().is_some_and(|u| u.scheme() == "http") && !allow_http {
        return Err(invalid(
            "storage.s3.endpoint",
            "is plain http: set allow_http = true (only for loopback or test endpoints)",
        ));
    }
    let prefix = match raw.prefix.as_deref().map(|p| p.trim_matches('/')) {
        None | Some("") => String::new(),
        Some(p) => {
            let safe = p
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains(['\0', '\\']));
            if !safe {
                return Err(invalid(
                    "storage.s3.prefix",
                    "must be '/'-separated names without empty, '.' or '..' parts",
                ));
            }
            format!("{p}/")
        }
    };
    let credentials = match (raw.access_key_id, raw.secret_access_key) {
        (None, None) => None,
        (Some(id), Some(key)) => Some((
            secret("storage.s3.access_key_id", id, base, secrets)?,
            secret("storage.s3.secret_access_key", key, base, secrets)?,
        )),
        (Some(_), None) => {
            return Err(invalid(
                "storage.s3.secret_access_key",
                "access_key_id is set but secret_access_key is not",
            ));
        }
        (None, Some(_)) => {
            return Err(invalid(
                "storage.s3.access_key_id",
                "secret_access_key is set but access_key_id is not",
            ));
        }
    };
    let redirect_ttl = duration(
        "storage.s3.redirect_ttl",
        raw.redirect_ttl.as_deref(),
        DEFAULT_S3_REDIRECT_TTL,
    )?;
    // SigV4 presigned URLs live at most 7 days.
    if redirect_ttl > Duration::from_secs(7 * 24 * 3600) {
        return Err(invalid("storage.s3.redirect_ttl", "must be at most 7 days"));
    }
    let redirect_endpoint = match raw.redirect_endpoint.as_deref() {
        None => None,
        Some(s) => Some(s3_url("storage.s3.redirect_endpoint", s)?),
    };
    Ok(S3Config {
        bucket,
        endpoint,
        region: raw.region.unwrap_or_else(|| "us-east-1".into()),
        prefix,
        credentials,
        allow_http,
        ca_pem: match raw.ca_file {
            None => None,
            Some(p) => Some(pem_file("storage.s3.ca_file", &resolve(base, &p))?),
        },
        redirect: raw.redirect.unwrap_or(false),
        redirect_ttl,
        redirect_endpoint,
        virtual_hosted: raw.virtual_hosted.unwrap_or(false),
        // S3's limits: parts of 5 MiB to 5 GiB.
        part_size: size(
            "storage.s3.part_size",
            raw.part_size.as_deref(),
            DEFAULT_S3_PART_SIZE,
            5 << 20,
            5 << 30,
        )?,
        connect_timeout: duration(
            "storage.s3.connect_timeout",
            raw.connect_timeout.as_deref(),
            DEFAULT_S3_CONNECT_TIMEOUT,
        )?,
        read_timeout: duration(
            "storage.s3.read_timeout",
            raw.read_timeout.as_deref(),
            DEFAULT_S3_READ_TIMEOUT,
        )?,
        request_timeout: duration(
            "storage.s3.request_timeout",
            raw.request_timeout.as_deref(),
            DEFAULT_S3_REQUEST_TIMEOUT,
        )?,
        abandoned_upload_age: duration(
            "storage.s3.abandoned_upload_age",
            raw.abandoned_upload_age.as_deref(),
            DEFAULT_S3_ABANDONED_UPLOAD_AGE,
        )?,
        breaker_failures: match raw.breaker_failures {
            Some(0) => {
                return Err(invalid("storage.s3.breaker_failures", "must be at least 1"));
            }
            Some(n) => n,
            None => DEFAULT_BREAKER_FAILURES,
        },
        breaker_backoff: duration(
            "storage.s3.breaker_backoff",
            raw.breaker_backoff.as_deref(),
            DEFAULT_BREAKER_BACKOFF,
        )?,
    })
}

/// Whether validation reads upstream passwords.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Secrets {
    Read,
    Skip,
}

fn validate(raw: file::File, base: &Path, secrets: Secrets) -> Result<Config, Error> {
    let storage_root = resolve(base, &raw.storage.root.unwrap_or_else(|| "./data".into()));
    let verify_interval = match raw.storage.verify_interval.as_deref() {
        None => None,
        Some(s) => Some(duration(
            "storage.verify_interval",
            Some(s),
            Duration::ZERO,
        )?),
    };
    let tag_ttl = duration(
        "cache.tag_ttl",
        raw.cache.tag_ttl.as_deref(),
        DEFAULT_TAG_TTL,
    )?;
    let metadata_max_bytes = match raw.cache.metadata_max_size.as_deref() {
        None => DEFAULT_METADATA_MAX,
        Some(s) => {
            let b = bytesize::ByteSize::from_str(s).map_err(|e| {
                invalid(
                    "cache.metadata_max_size",
                    format!("invalid size {s:?}: {e}"),
                )
            })?;
            if b.as_u64() < 1024 * 1024 {
                return Err(invalid("cache.metadata_max_size", "must be at least 1MiB"));
            }
            b.as_u64()
        }
    };

    let mut upstreams = Vec::new();
    let mut names = HashSet::new();
    for (i, u) in raw.upstreams.into_iter().enumerate() {
        let up = validate_upstream(i, u, base, tag_ttl, secrets)?;
        for n in std::iter::once(up.id.as_str()).chain(up.aliases.iter().map(String::as_str)) {
            if !names.insert(n.to_owned()) {
                return Err(invalid(
                    format!("upstream[{i}]"),
                    format!("duplicate upstream name or alias {n:?}"),
                ));
            }
        }
        upstreams.push(up);
    }
    let hosted = validate_hosted(raw.hosted, &mut names)?;
    if upstreams.is_empty() && hosted.is_empty() {
        return Err(invalid(
            "upstream",
            "at least one [[upstream]] or [[hosted]] is required",
        ));
    }
    if upstreams.iter().filter(|u| u.default).count() > 1 {
        return Err(invalid(
            "upstream.default",
            "only one upstream may be the default",
        ));
    }

    let mut listeners = Vec::new();
    let mut ports = HashSet::new();
    for (i, l) in raw.listeners.into_iter().enumerate() {
        let key = format!("listener[{i}]");
        let addr: SocketAddr = l.addr.parse().map_err(|e| {
            invalid(
                format!("{key}.addr"),
                format!("invalid socket address {:?}: {e}", l.addr),
            )
        })?;
        if !ports.insert(addr.port()) && addr.port() != 0 {
            return Err(invalid(
                format!("{key}.addr"),
                format!("duplicate listener port {}", addr.port()),
            ));
        }
        let upstream = match l.upstream {
            None => None,
            Some(name) => Some(
                upstreams
                    .iter()
                    .map(|u| (&u.id, &u.aliases))
                    .chain(hosted.iter().map(|h| (&h.id, &h.aliases)))
                    .find(|(id, aliases)| id.as_str() == name || aliases.contains(&name))
                    .map(|(id, _)| id.clone())
                    .ok_or_else(|| {
                        invalid(
                            format!("{key}.upstream"),
                            format!("no upstream or hosted namespace named {name:?}"),
                        )
                    })?,
            ),
        };
        let allow = l
            .allow
            .iter()
            .enumerate()
            .map(|(j, c)| {
                c.parse()
                    .map_err(|e: String| invalid(format!("{key}.allow[{j}]"), e))
            })
            .collect::<Result<_, _>>()?;
        listeners.push(ListenerConfig {
            addr,
            tls: l.tls,
            allow,
            upstream,
        });
    }
    if listeners.is_empty() {
        return Err(invalid("listener", "at least one [[listener]] is required"));
    }

    let mut hosts = HashSet::new();
    let claims = upstreams
        .iter()
        .enumerate()
        .map(|(i, u)| (format!("upstream[{i}].hosts"), &u.hosts))
        .chain(
            hosted
                .iter()
                .enumerate()
                .map(|(i, h)| (format!("hosted[{i}].hosts"), &h.hosts)),
        );
    for (key, list) in claims {
        for h in list {
            if !hosts.insert(h.clone()) {
                return Err(invalid(
                    key,
                    format!("host {h:?} is claimed by two upstreams or namespaces"),
                ));
            }
        }
    }
    let tls = validate_tls(raw.tls, base)?;
    if let Some(r) = &raw.auth.realm
        && (r.is_empty()
            || r.len() > 200
            || r.chars().any(|c| c == '"' || c == '\\' || c.is_control()))
    {
        return Err(invalid(
            "auth.realm",
            "must be 1-200 characters without quotes, backslashes or control characters",
        ));
    }
    let auth = match raw.auth.htpasswd {
        None if raw.auth.realm.is_some() || raw.auth.anonymous.is_some() => {
            return Err(invalid("auth", "realm and anonymous need htpasswd"));
        }
        None => None,
        Some(p) => Some(AuthConfig {
            htpasswd: Arc::new(
                crate::access::Htpasswd::load(&resolve(base, &p))
                    .map_err(|e| invalid("auth.htpasswd", e))?,
            ),
            realm: raw.auth.realm.unwrap_or_else(|| "mirrorgate".to_owned()),
            anonymous: raw.auth.anonymous.unwrap_or(true),
        }),
    };
    for (i, h) in hosted.iter().enumerate() {
        if auth.is_none() && (!h.access.private.is_empty() || h.push.is_some()) {
            return Err(invalid(
                format!("hosted[{i}]"),
                "private and push name authenticated users: set [auth] htpasswd",
            ));
        }
    }
    for (i, u) in upstreams.iter().enumerate() {
        if auth.is_none() && (!u.access.private.is_empty() || u.access.fetch_requires_auth) {
            return Err(invalid(
                format!("upstream[{i}]"),
                "private and fetch_requires_auth need client authentication: set [auth] htpasswd",
            ));
        }
    }
    let server = ServerConfig {
        max_connections: match raw.server.max_connections {
            Some(0) => return Err(invalid("server.max_connections", "must be at least 1")),
            Some(n) => n,
            None => 4096,
        },
        header_read_timeout: duration(
            "server.header_read_timeout",
            raw.server.header_read_timeout.as_deref(),
            Duration::from_secs(30),
        )?,
        max_header_size: match raw.server.max_header_size.as_deref() {
            None => 64 * 1024,
            Some(s) => {
                let b = bytesize::ByteSize::from_str(s)
                    .map_err(|e| {
                        invalid("server.max_header_size", format!("invalid size {s:?}: {e}"))
                    })?
                    .as_u64();
                if !(8192..=16 * 1024 * 1024).contains(&b) {
                    return Err(invalid(
                        "server.max_header_size",
                        "must be between 8KiB and 16MiB",
                    ));
                }
                b as usize
            }
        },
        metrics: raw.server.metrics.unwrap_or(true),
        status: raw.server.status.unwrap_or(true),
        fill_memory: size(
            "server.fill_memory",
            raw.server.fill_memory.as_deref(),
            DEFAULT_FILL_MEMORY,
            0,
            1 << 40,
        )?,
        drain_delay: match raw.server.drain_delay.as_deref() {
            None | Some("0" | "0s") => None,
            Some(s) => Some(duration("server.drain_delay", Some(s), Duration::ZERO)?),
        },
    };
    let max_size = match raw.storage.max_size.as_deref() {
        None => None,
        Some(s) => {
            let b = bytesize::ByteSize::from_str(s)
                .map_err(|e| invalid("storage.max_size", format!("invalid size {s:?}: {e}")))?
                .as_u64();
            if b < 1024 * 1024 {
                return Err(invalid("storage.max_size", "must be at least 1MiB"));
            }
            Some(b)
        }
    };
    let s3 = match raw.storage.s3 {
        None => None,
        Some(raw) => Some(validate_s3(raw, base, secrets)?),
    };
    let warm = validate_warm(raw.warm, base)?;
    let cluster = match raw.cluster {
        None => None,
        Some(_) if s3.is_none() => {
            return Err(invalid(
                "cluster",
                "replicas share their store through S3: set [storage.s3]",
            ));
        }
        Some(c) => Some(validate_cluster(c, base, secrets, &listeners)?),
    };
    Ok(Config {
        storage_root,
        verify_interval,
        max_size,
        s3,
        cache: CacheConfig {
            tag_ttl,
            metadata_max_bytes,
            stale_if_error: duration(
                "cache.stale_if_error",
                raw.cache.stale_if_error.as_deref(),
                DEFAULT_STALE_IF_ERROR,
            )?,
        },
        tls,
        server,
        auth,
        listeners,
        upstreams,
        hosted,
        cluster,
        warm,
        log_format: match raw.log.format.as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(invalid(
                    "log.format",
                    format!("{other:?}: want \"text\" or \"json\""),
                ));
            }
        },
    })
}

/// The repository patterns of `<section>.<field>`.
fn repo_patterns(
    section: &str,
    field: &str,
    v: &[String],
) -> Result<Vec<crate::access::RepoPattern>, Error> {
    v.iter()
        .enumerate()
        .map(|(j, p)| {
            p.parse()
                .map_err(|e: String| invalid(format!("{section}.{field}[{j}]"), e))
        })
        .collect()
}

fn validate_hosted(
    raw: Vec<file::Hosted>,
    names: &mut HashSet<String>,
) -> Result<Vec<HostedConfig>, Error> {
    let mut out = Vec::new();
    for (i, h) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("hosted[{i}].{k}");
        let component = |k: String, n: &str| {
            let n = n.to_ascii_lowercase();
            if is_name_component(&n) {
                Ok(n)
            } else {
                Err(invalid(
                    k,
                    format!(
                        "{n:?} is not a valid name (lowercase letters, digits and . _ - separators)"
                    ),
                ))
            }
        };
        let name = component(key("name"), &h.name)?;
        let aliases = h
            .aliases
            .iter()
            .enumerate()
            .map(|(j, a)| component(key(&format!("aliases[{j}]")), a))
            .collect::<Result<Vec<_>, _>>()?;
        for n in std::iter::once(&name).chain(&aliases) {
            if !names.insert(n.clone()) {
                return Err(invalid(
                    format!("hosted[{i}]"),
                    format!("duplicate upstream or namespace name or alias {n:?}"),
                ));
            }
        }
        let hosts = h
            .hosts
            .iter()
            .enumerate()
            .map(|(j, x)| host_name(&key(&format!("hosts[{j}]")), x))
            .collect::<Result<Vec<_>, _>>()?;
        let section = format!("hosted[{i}]");
        let patterns = |field: &str, v: &[String]| repo_patterns(&section, field, v);
        let access = crate::access::RepoRules {
            allow: patterns("allow", &h.allow)?,
            deny: patterns("deny", &h.deny)?,
            private: patterns("private", &h.private)?,
            fetch_requires_auth: false,
        };
        if let Some(p) = &h.push
            && let Some(j) = p.iter().position(String::is_empty)
        {
            return Err(invalid(key(&format!("push[{j}]")), "an empty user name"));
        }
        let max_size = match h.max_size.as_deref() {
            None => None,
            Some(s) => Some(size(&key("max_size"), Some(s), 0, 1024 * 1024, u64::MAX)?),
        };
        let gc_interval = match h.gc_interval.as_deref() {
            Some("0" | "0s" | "off") => None,
            v => Some(duration(&key("gc_interval"), v, DEFAULT_GC_INTERVAL)?),
        };
        out.push(HostedConfig {
            id: UpstreamId::parse(&name).expect("checked above"),
            aliases,
            hosts,
            access,
            push: h.push,
            anonymous_push: h.anonymous_push,
            delete: h.delete.unwrap_or(true),
            max_size,
            max_manifest_size: size(
                &key("max_manifest_size"),
                h.max_manifest_size.as_deref(),
                DEFAULT_MAX_MANIFEST,
                4096,
                64 * 1024 * 1024,
            )?,
            upload_timeout: duration(
                &key("upload_timeout"),
                h.upload_timeout.as_deref(),
                DEFAULT_UPLOAD_TIMEOUT,
            )?,
            gc_interval,
        });
    }
    Ok(out)
}

fn validate_warm(raw: Vec<file::Warm>, base: &Path) -> Result<Vec<WarmConfig>, Error> {
    let mut out = Vec::new();
    for (i, w) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("warm[{i}].{k}");
        if w.file.is_none() && w.images.is_empty() {
            return Err(invalid(format!("warm[{i}]"), "needs file or images"));
        }
        if let Some(bad) = w.images.iter().find(|s| s.trim().is_empty()) {
            return Err(invalid(key("images"), format!("{bad:?} is not an image")));
        }
        let platforms = w
            .platforms
            .iter()
            .map(|p| {
                p.parse()
                    .map_err(|e| invalid(key("platforms"), format!("{e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let concurrency = w.concurrency.unwrap_or(2);
        if !(1..=64).contains(&concurrency) {
            return Err(invalid(key("concurrency"), "must be 1 to 64"));
        }
        out.push(WarmConfig {
            file: w.file.map(|f| resolve(base, &f)),
            images: w.images,
            interval: duration(
                &key("interval"),
                w.interval.as_deref(),
                DEFAULT_WARM_INTERVAL,
            )?,
            pin: w.pin,
            platforms,
            concurrency,
        });
    }
    Ok(out)
}

fn validate_cluster(
    raw: file::Cluster,
    base: &Path,
    secrets: Secrets,
    listeners: &[ListenerConfig],
) -> Result<ClusterConfig, Error> {
    let advertise = raw
        .advertise
        .ok_or_else(|| invalid("cluster.advertise", "is required"))?;
    let advertise = url::Url::parse(&advertise).map_err(|e| {
        invalid(
            "cluster.advertise",
            format!("invalid URL {advertise:?}: {e}"),
        )
    })?;
    if advertise.scheme() != "http"
        || advertise.host().is_none()
        || advertise.path() != "/"
        || advertise.query().is_some()
        || !advertise.username().is_empty()
        || advertise.password().is_some()
    {
        return Err(invalid(
            "cluster.advertise",
            format!("{advertise} must be http://HOST:PORT (requests are signed, not encrypted)"),
        ));
    }
    let listen = raw
        .listen
        .ok_or_else(|| invalid("cluster.listen", "is required"))?;
    let listen: SocketAddr = listen.parse().map_err(|e| {
        invalid(
            "cluster.listen",
            format!("invalid socket address {listen:?}: {e}"),
        )
    })?;
    if listen.port() != 0 && listeners.iter().any(|l| l.addr.port() == listen.port()) {
        return Err(invalid(
            "cluster.listen",
            format!("port {} is a client listener's", listen.port()),
        ));
    }
    let secret = match raw.secret {
        None => return Err(invalid("cluster.secret", "is required")),
        Some(p) => secret("cluster.secret", p, base, secrets)?,
    };
    if secrets == Secrets::Read && secret.expose().len() < MIN_CLUSTER_SECRET {
        return Err(invalid(
            "cluster.secret",
            format!("must be at least {MIN_CLUSTER_SECRET} bytes"),
        ));
    }
    let lease_ttl = duration(
        "cluster.lease_ttl",
        raw.lease_ttl.as_deref(),
        DEFAULT_LEASE_TTL,
    )?;
    if lease_ttl < Duration::from_secs(1) || lease_ttl > Duration::from_secs(300) {
        return Err(invalid("cluster.lease_ttl", "must be between 1s and 5m"));
    }
    Ok(ClusterConfig {
        advertise,
        listen,
        secret,
        lease_ttl,
        peer_connect_timeout: duration(
            "cluster.peer_connect_timeout",
            raw.peer_connect_timeout.as_deref(),
            DEFAULT_PEER_CONNECT_TIMEOUT,
        )?,
    })
}

/// A DNS host name: labels of letters, digits and `-`, lowercased.
fn host_name(key: &str, h: &str) -> Result<String, Error> {
    let h = h.trim_end_matches('.').to_ascii_lowercase();
    let ok = !h.is_empty()
        && h.len() <= 253
        && h.parse::<std::net::IpAddr>().is_err()
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(h)
    } else {
        Err(invalid(key, format!("{h:?} is not a DNS host name")))
    }
}

fn validate_tls(raw: file::Tls, base: &Path) -> Result<TlsConfig, Error> {
    let source = match (raw.cert_file, raw.key_file, raw.ca_dir) {
        (Some(cert), Some(key), None) => TlsSource::Files {
            cert: resolve(base, &cert),
            key: resolve(base, &key),
        },
        (None, None, dir) => TlsSource::LocalCa {
            dir: resolve(base, &dir.unwrap_or_else(|| "./certs".into())),
        },
        (Some(_), None, _) => {
            return Err(invalid(
                "tls.key_file",
                "cert_file is set but key_file is not",
            ));
        }
        (None, Some(_), _) => {
            return Err(invalid(
                "tls.cert_file",
                "key_file is set but cert_file is not",
            ));
        }
        (Some(_), Some(_), Some(_)) => {
            return Err(invalid(
                "tls.ca_dir",
                "use either ca_dir or cert_file/key_file, not both",
            ));
        }
    };
    let names = raw
        .names
        .iter()
        .enumerate()
        .map(|(i, n)| host_name(&format!("tls.names[{i}]"), n))
        .collect::<Result<_, _>>()?;
    Ok(TlsConfig {
        source,
        names,
        leaf_validity: duration(
            "tls.leaf_validity",
            raw.leaf_validity.as_deref(),
            DEFAULT_LEAF_VALIDITY,
        )?,
        handshake_timeout: duration(
            "tls.handshake_timeout",
            raw.handshake_timeout.as_deref(),
            DEFAULT_HANDSHAKE_TIMEOUT,
        )?,
    })
}

fn validate_upstream(
    i: usize,
    u: file::Upstream,
    base: &Path,
    tag_ttl: Duration,
    secrets: Secrets,
) -> Result<UpstreamConfig, Error> {
    let key = format!("upstream[{i}]");
    let name = u.name.to_ascii_lowercase();
    if !is_name_component(&name) {
        return Err(invalid(
            format!("{key}.name"),
            format!(
                "{:?} is not a valid name (lowercase letters, digits and . _ - separators)",
                u.name
            ),
        ));
    }
    let url = url::Url::parse(&u.url).map_err(|e| {
        invalid(
            format!("{key}.url"),
            format!("invalid URL {:?}: {e}", u.url),
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(invalid(
            format!("{key}.url"),
            format!("{:?} must be an http:// or https:// URL with a host", u.url),
        ));
    }
    if url.query().is_some()
        || url.fragment().is_some()
        || !url.username().is_empty()
        || url.password().is_some()
    {
        return Err(invalid(
            format!("{key}.url"),
            "must not carry a query, fragment or user info (use username/password)",
        ));
    }
    let mut aliases = Vec::new();
    for (j, a) in u.aliases.iter().enumerate() {
        let a = a.to_ascii_lowercase();
        if !is_name_component(&a) {
            return Err(invalid(
                format!("{key}.aliases[{j}]"),
                format!("{a:?} is not a valid name"),
            ));
        }
        aliases.push(a);
    }
    let hosts = u
        .hosts
        .iter()
        .enumerate()
        .map(|(j, h)| host_name(&format!("{key}.hosts[{j}]"), h))
        .collect::<Result<Vec<_>, _>>()?;
    let connect_to = u
        .connect_to
        .iter()
        .enumerate()
        .map(|(j, a)| {
            a.parse::<SocketAddr>().map_err(|e| {
                invalid(
                    format!("{key}.connect_to[{j}]"),
                    format!("{a:?} is not IP:PORT: {e}"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(h) = url.host_str()
        && hosts.iter().any(|x| x == &h.to_ascii_lowercase())
        && connect_to.is_empty()
    {
        return Err(invalid(
            format!("{key}.connect_to"),
            format!(
                "the upstream's own host {h:?} is listed in hosts (transparent mode), so DNS \
                 for it points at this mirror: set connect_to to the real upstream address(es)"
            ),
        ));
    }
    let patterns = |field: &str, v: &[String]| repo_patterns(&key, field, v);
    let (allow, deny, private) = (
        patterns("allow", &u.allow)?,
        patterns("deny", &u.deny)?,
        patterns("private", &u.private)?,
    );
    let ca_pem = match u.ca_file {
        None => None,
        Some(p) => Some(pem_file(&format!("{key}.ca_file"), &resolve(base, &p))?),
    };
    let password = match u.password {
        None => None,
        Some(p) => Some(secret(&format!("{key}.password"), p, base, secrets)?),
    };
    let credentials = match (u.username, password) {
        (Some(username), Some(password)) => Some(Credentials { username, password }),
        (None, None) => None,
        (Some(_), None) => {
            return Err(invalid(
                format!("{key}.password"),
                "username is set but password is not",
            ));
        }
        (None, Some(_)) => {
            return Err(invalid(
                format!("{key}.username"),
                "password is set but username is not",
            ));
        }
    };
    Ok(UpstreamConfig {
        implicit_library: u.implicit_library.unwrap_or(name == "docker.io"),
        id: UpstreamId(name.into()),
        url,
        aliases,
        hosts,
        connect_to,
        access: crate::access::RepoRules {
            allow,
            deny,
            private,
            fetch_requires_auth: u.fetch_requires_auth,
        },
        default: u.default,
        ca_pem,
        credentials,
        connect_timeout: duration(
            &format!("{key}.connect_timeout"),
            u.connect_timeout.as_deref(),
            DEFAULT_CONNECT_TIMEOUT,
        )?,
        read_timeout: duration(
            &format!("{key}.read_timeout"),
            u.read_timeout.as_deref(),
            DEFAULT_READ_TIMEOUT,
        )?,
        http2: u.http2.unwrap_or(false),
        tag_ttl: duration(&format!("{key}.tag_ttl"), u.tag_ttl.as_deref(), tag_ttl)?,
        breaker_failures: match u.breaker_failures {
            Some(0) => {
                return Err(invalid(
                    format!("{key}.breaker_failures"),
                    "must be at least 1",
                ));
            }
            Some(n) => n,
            None => DEFAULT_BREAKER_FAILURES,
        },
        breaker_backoff: duration(
            &format!("{key}.breaker_backoff"),
            u.breaker_backoff.as_deref(),
            DEFAULT_BREAKER_BACKOFF,
        )?,
    })
}

#[cfg(test)]
mod tests;
