//! Upstream errors. Each variant describes only its own level; the cause is
//! in `source()`, so a log line built with [`crate::error_chain`] reads
//! down to the operating system's reason (`Connection refused`, `failed to
//! lookup address information`, `invalid peer certificate: Expired`). Which
//! upstream failed is added by the caller that knows it (`mirror`).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An upstream request failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The client could not be built (bad TLS roots, ...).
    #[error("cannot build the upstream client")]
    Build(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// DNS lookup, TCP connect or TLS handshake failed.
    #[error("cannot connect")]
    Connect(#[source] BoxError),
    /// Upstream took longer than the connect or read timeout.
    #[error("{phase} timed out after {}", humantime::format_duration(*after))]
    Timeout {
        /// Which timeout ran out.
        phase: TimeoutPhase,
        /// Its configured length.
        after: Duration,
        /// The transport error.
        #[source]
        source: BoxError,
    },
    /// Upstream answered with an error status.
    #[error("answered {status}{}", StatusDetail(code.as_deref(), message.as_deref()))]
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
    #[error("{}", if *with_credentials {
        "refused the configured credentials (or the repository does not exist)"
    } else {
        "requires authorization, and no credentials are configured"
    })]
    Unauthorized {
        /// Whether the mirror sent credentials (a refusal is then the
        /// operator's problem, not the client's).
        with_credentials: bool,
    },
    /// A manifest larger than the mirror accepts.
    #[error("response is larger than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// Upstream broke the protocol (bad header, bad token response, ...).
    #[error("invalid response: {0}")]
    Protocol(String),
    /// Fetching a bearer token from the upstream's token realm failed.
    #[error("bearer token request failed")]
    Token(#[source] Arc<Error>),
    /// The response body broke off.
    #[error("response body failed")]
    Body(#[source] BoxError),
    /// The circuit breaker is open: upstream failed repeatedly and is not
    /// being asked until its backoff passes.
    #[error("is down (circuit open after repeated failures)")]
    CircuitOpen,
    /// Any other transport failure (redirect loop, ...).
    #[error("request failed")]
    Transport(#[source] BoxError),
}

/// Which of an upstream's timeouts ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutPhase {
    /// `connect_timeout`: TCP connect and TLS handshake.
    Connect,
    /// `read_timeout`: waiting for the next bytes of a response.
    Read,
}

impl fmt::Display for TimeoutPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Connect => "connect",
            Self::Read => "read",
        })
    }
}

/// ` (CODE: message)` of an error status, when upstream sent them.
struct StatusDetail<'a>(Option<&'a str>, Option<&'a str>);

impl fmt::Display for StatusDetail<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Upstream's text: keep it on one line and short.
        let clean = |s: &str| -> String {
            s.chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .take(200)
                .collect()
        };
        match (self.0, self.1) {
            (Some(c), Some(m)) => write!(f, " ({}: {})", clean(c), clean(m)),
            (Some(c), None) => write!(f, " ({})", clean(c)),
            (None, Some(m)) => write!(f, " ({})", clean(m)),
            (None, None) => Ok(()),
        }
    }
}

/// The connect and read timeouts of one upstream, to say which ran out.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    pub(crate) connect: Duration,
    pub(crate) read: Duration,
}

impl Error {
    /// Whether upstream said the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Status { status: 404, .. })
    }

    /// Whether upstream could not be reached or did not answer in time
    /// (as opposed to answering with an error).
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Connect(_)
            | Self::Timeout { .. }
            | Self::Transport(_)
            | Self::Body(_)
            | Self::CircuitOpen => true,
            Self::Status { status, .. } => *status >= 500 || *status == 429,
            Self::Token(inner) => inner.is_unavailable(),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_says_what_upstream_said_on_one_line() {
        let e = Error::Status {
            status: 404,
            code: Some("MANIFEST_UNKNOWN".into()),
            message: Some("manifest\nunknown".into()),
            retry_after: None,
        };
        assert_eq!(
            e.to_string(),
            "answered 404 (MANIFEST_UNKNOWN: manifest unknown)"
        );
        let e = Error::Status {
            status: 502,
            code: None,
            message: None,
            retry_after: None,
        };
        assert_eq!(e.to_string(), "answered 502");
    }
}
