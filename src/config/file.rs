//! The raw TOML shape of the config file, deserialized with
//! `deny_unknown_fields` so a misspelt key is an error, not a silent default.
//! Every key is documented in `config/mirrorgate.example.toml`.

use std::path::PathBuf;

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct File {
    #[serde(default)]
    pub(crate) storage: Storage,
    #[serde(default)]
    pub(crate) cache: Cache,
    #[serde(default)]
    pub(crate) tls: Tls,
    #[serde(default)]
    pub(crate) server: Server,
    #[serde(default)]
    pub(crate) auth: Auth,
    #[serde(default, rename = "listener")]
    pub(crate) listeners: Vec<Listener>,
    #[serde(default, rename = "upstream")]
    pub(crate) upstreams: Vec<Upstream>,
    pub(crate) cluster: Option<Cluster>,
    #[serde(default, rename = "warm")]
    pub(crate) warm: Vec<Warm>,
    #[serde(default, rename = "hosted")]
    pub(crate) hosted: Vec<Hosted>,
    #[serde(default)]
    pub(crate) log: Log,
}

/// `[log]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Log {
    pub(crate) format: Option<String>,
}

/// `[[warm]]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Warm {
    pub(crate) file: Option<PathBuf>,
    #[serde(default)]
    pub(crate) images: Vec<String>,
    pub(crate) interval: Option<String>,
    #[serde(default)]
    pub(crate) pin: bool,
    #[serde(default)]
    pub(crate) platforms: Vec<String>,
    pub(crate) concurrency: Option<usize>,
}

/// `[storage]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Storage {
    pub(crate) root: Option<PathBuf>,
    pub(crate) verify_interval: Option<String>,
    pub(crate) max_size: Option<String>,
    pub(crate) s3: Option<S3>,
}

/// `[storage.s3]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct S3 {
    pub(crate) bucket: Option<String>,
    pub(crate) endpoint: Option<String>,
    pub(crate) region: Option<String>,
    pub(crate) prefix: Option<String>,
    pub(crate) access_key_id: Option<Password>,
    pub(crate) secret_access_key: Option<Password>,
    pub(crate) allow_http: Option<bool>,
    pub(crate) ca_file: Option<PathBuf>,
    pub(crate) redirect: Option<bool>,
    pub(crate) redirect_ttl: Option<String>,
    pub(crate) redirect_endpoint: Option<String>,
    pub(crate) virtual_hosted: Option<bool>,
    pub(crate) part_size: Option<String>,
    pub(crate) connect_timeout: Option<String>,
    pub(crate) read_timeout: Option<String>,
    pub(crate) request_timeout: Option<String>,
    pub(crate) abandoned_upload_age: Option<String>,
    pub(crate) breaker_failures: Option<u32>,
    pub(crate) breaker_backoff: Option<String>,
}

/// `[cluster]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Cluster {
    pub(crate) advertise: Option<String>,
    pub(crate) listen: Option<String>,
    pub(crate) secret: Option<Password>,
    pub(crate) lease_ttl: Option<String>,
    pub(crate) peer_connect_timeout: Option<String>,
}

/// `[cache]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Cache {
    pub(crate) tag_ttl: Option<String>,
    pub(crate) metadata_max_size: Option<String>,
    pub(crate) stale_if_error: Option<String>,
}

/// `[auth]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Auth {
    pub(crate) htpasswd: Option<PathBuf>,
    pub(crate) realm: Option<String>,
    pub(crate) anonymous: Option<bool>,
}

/// `[server]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Server {
    pub(crate) max_connections: Option<usize>,
    pub(crate) header_read_timeout: Option<String>,
    pub(crate) max_header_size: Option<String>,
    pub(crate) metrics: Option<bool>,
    pub(crate) status: Option<bool>,
    pub(crate) fill_memory: Option<String>,
    pub(crate) drain_delay: Option<String>,
}

/// `[tls]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Tls {
    pub(crate) ca_dir: Option<PathBuf>,
    pub(crate) cert_file: Option<PathBuf>,
    pub(crate) key_file: Option<PathBuf>,
    #[serde(default)]
    pub(crate) names: Vec<String>,
    pub(crate) leaf_validity: Option<String>,
    pub(crate) handshake_timeout: Option<String>,
}

/// `[[listener]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Listener {
    pub(crate) addr: String,
    pub(crate) upstream: Option<String>,
    #[serde(default)]
    pub(crate) tls: bool,
    #[serde(default)]
    pub(crate) allow: Vec<String>,
}

/// `[[hosted]]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Hosted {
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) aliases: Vec<String>,
    #[serde(default)]
    pub(crate) hosts: Vec<String>,
    #[serde(default)]
    pub(crate) allow: Vec<String>,
    #[serde(default)]
    pub(crate) deny: Vec<String>,
    #[serde(default)]
    pub(crate) private: Vec<String>,
    pub(crate) push: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) anonymous_push: bool,
    pub(crate) delete: Option<bool>,
    pub(crate) max_size: Option<String>,
    pub(crate) max_manifest_size: Option<String>,
    pub(crate) upload_timeout: Option<String>,
    pub(crate) gc_interval: Option<String>,
}

/// `[[upstream]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Upstream {
    pub(crate) name: String,
    pub(crate) url: String,
    #[serde(default)]
    pub(crate) aliases: Vec<String>,
    #[serde(default)]
    pub(crate) hosts: Vec<String>,
    #[serde(default)]
    pub(crate) connect_to: Vec<String>,
    #[serde(default)]
    pub(crate) allow: Vec<String>,
    #[serde(default)]
    pub(crate) deny: Vec<String>,
    #[serde(default)]
    pub(crate) private: Vec<String>,
    #[serde(default)]
    pub(crate) fetch_requires_auth: bool,
    #[serde(default)]
    pub(crate) default: bool,
    pub(crate) ca_file: Option<PathBuf>,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<Password>,
    pub(crate) implicit_library: Option<bool>,
    pub(crate) connect_timeout: Option<String>,
    pub(crate) read_timeout: Option<String>,
    pub(crate) http2: Option<bool>,
    pub(crate) tag_ttl: Option<String>,
    pub(crate) breaker_failures: Option<u32>,
    pub(crate) breaker_backoff: Option<String>,
}

/// A password: inline, from an environment variable, or from a file.
#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum Password {
    Inline(String),
    Env { env: String },
    File { file: PathBuf },
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Inline(_) => f.write_str("Inline(<redacted>)"),
            Self::Env { env } => f.debug_struct("Env").field("env", env).finish(),
            Self::File { file } => f.debug_struct("File").field("file", file).finish(),
        }
    }
}
