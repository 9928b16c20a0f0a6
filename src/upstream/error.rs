//! Upstream errors. Each variant describes only its own level; the cause is
//! in `source()`.

/// An upstream request failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The client could not be built (bad TLS roots, ...).
    #[error("cannot build the upstream client")]
    Build(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// TCP connect or TLS handshake failed.
    #[error("cannot connect to upstream")]
    Connect(#[source] reqwest::Error),
    /// Upstream took longer than the connect or read timeout.
    #[error("upstream timed out")]
    Timeout(#[source] reqwest::Error),
    /// Upstream answered with an error status.
    #[error("upstream answered {status}")]
    Status {
        /// HTTP status.
        status: u16,
        /// The first OCI error code of a JSON error body, if any.
        code: Option<String>,
        /// Its message.
        message: Option<String>,
        /// `Retry-After`, relayed on 429.
        retry_after: Option<String>,
    },
    /// Upstream wants credentials we do not have, or refused ours.
    #[error("upstream requires authorization")]
    Unauthorized,
    /// A manifest larger than the mirror accepts.
    #[error("upstream response is too large")]
    TooLarge,
    /// Upstream broke the protocol (bad header, bad token response, ...).
    #[error("invalid upstream response: {0}")]
    Protocol(String),
    /// The response body broke off.
    #[error("upstream response body failed")]
    Body(#[source] reqwest::Error),
    /// The circuit breaker is open: upstream failed repeatedly and is not
    /// being asked until its backoff passes.
    #[error("upstream is down (circuit open)")]
    CircuitOpen,
    /// Any other transport failure (redirect loop, ...).
    #[error("upstream request failed")]
    Transport(#[source] reqwest::Error),
}

impl Error {
    /// Classifies a reqwest error.
    pub(crate) fn from_reqwest(e: reqwest::Error) -> Self {
        if e.is_timeout() {
            Self::Timeout(e)
        } else if e.is_connect() {
            Self::Connect(e)
        } else if e.is_body() || e.is_decode() {
            Self::Body(e)
        } else {
            Self::Transport(e)
        }
    }

    /// Whether upstream said the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Status { status: 404, .. })
    }

    /// Whether upstream could not be reached or did not answer in time
    /// (as opposed to answering with an error).
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Connect(_)
            | Self::Timeout(_)
            | Self::Transport(_)
            | Self::Body(_)
            | Self::CircuitOpen => true,
            Self::Status { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}
