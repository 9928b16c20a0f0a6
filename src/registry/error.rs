//! The one place where errors become HTTP responses: the OCI error envelope
//! `{"errors":[{"code","message","detail"}]}` with the code's status.
//!
//! Every error is classified by origin. Downstream (the client's request was
//! bad) logs at debug; upstream (the registry we mirror failed) at warn;
//! internal (our disk or a bug) at error, and the client sees a generic
//! message without internals.
//!
//! The error that caused a response travels with it as [`ApiError::cause`]:
//! never shown to the client, logged once with its whole chain (which
//! upstream and host, and the operating system's reason) by
//! `response::log_error`, which `Registry::handle` calls for every error
//! response it renders.

use http::{HeaderValue, StatusCode, header};

use super::path::PathError;
use super::route::NoRoute;
use crate::config::UpstreamId;
use crate::{hosted, mirror};

/// OCI distribution error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// 404: blob unknown.
    BlobUnknown,
    /// 404: manifest unknown.
    ManifestUnknown,
    /// 404: repository unknown.
    NameUnknown,
    /// 400: invalid repository name.
    NameInvalid,
    /// 400: invalid tag.
    TagInvalid,
    /// 400: invalid digest.
    DigestInvalid,
    /// 401: authentication required.
    Unauthorized,
    /// 403: access denied.
    Denied,
    /// 405 (or 404 for unknown endpoints): not supported by a pull-only mirror.
    Unsupported,
    /// 429: rate limited.
    TooManyRequests,
    /// 502/503/504: upstream unavailable.
    Unavailable,
    /// 416: unsatisfiable range (distribution's code; the OCI spec lists
    /// none for 416).
    RangeInvalid,
    /// 400: `n` is not a non-negative integer (distribution's code).
    PaginationNumberInvalid,
    /// 404: upload session unknown.
    BlobUploadUnknown,
    /// 400/416: a chunk that does not fit the upload.
    BlobUploadInvalid,
    /// 400: manifest invalid.
    ManifestInvalid,
    /// 400: a manifest references a blob or manifest the repository lacks.
    ManifestBlobUnknown,
    /// 400/413: content of the wrong size.
    SizeInvalid,
    /// 500/502: anything else.
    Unknown,
}

impl Code {
    /// The code string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BlobUnknown => "BLOB_UNKNOWN",
            Self::ManifestUnknown => "MANIFEST_UNKNOWN",
            Self::NameUnknown => "NAME_UNKNOWN",
            Self::NameInvalid => "NAME_INVALID",
            Self::TagInvalid => "TAG_INVALID",
            Self::DigestInvalid => "DIGEST_INVALID",
            Self::Unauthorized => "UNAUTHORIZED",
            Self::Denied => "DENIED",
            Self::Unsupported => "UNSUPPORTED",
            Self::TooManyRequests => "TOOMANYREQUESTS",
            Self::Unavailable => "UNAVAILABLE",
            Self::RangeInvalid => "RANGE_INVALID",
            Self::PaginationNumberInvalid => "PAGINATION_NUMBER_INVALID",
            Self::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            Self::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            Self::ManifestInvalid => "MANIFEST_INVALID",
            Self::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            Self::SizeInvalid => "SIZE_INVALID",
            Self::Unknown => "UNKNOWN",
        }
    }

    fn from_upstream(s: &str) -> Option<Self> {
        Some(match s {
            "BLOB_UNKNOWN" => Self::BlobUnknown,
            "MANIFEST_UNKNOWN" => Self::ManifestUnknown,
            "NAME_UNKNOWN" => Self::NameUnknown,
            "NAME_INVALID" => Self::NameInvalid,
            "TAG_INVALID" => Self::TagInvalid,
            "DIGEST_INVALID" => Self::DigestInvalid,
            "DENIED" => Self::Denied,
            "PAGINATION_NUMBER_INVALID" => Self::PaginationNumberInvalid,
            _ => return None,
        })
    }
}

/// Who is to blame for an error; picks the log level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The client's request.
    Downstream,
    /// The upstream registry.
    Upstream,
    /// This process.
    Internal,
}

/// What kind of object a request was about, so an upstream 404 becomes the
/// right `*_UNKNOWN` code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    /// A manifest.
    Manifest,
    /// A blob.
    Blob,
    /// A repository (tags, referrers, catalog).
    Repository,
}

/// The underlying error of a response, for the log only.
pub type Cause = std::sync::Arc<dyn std::error::Error + Send + Sync>;

/// An error ready to be rendered.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// OCI code.
    pub code: Code,
    /// Human-readable message (no internals).
    pub message: String,
    /// Origin, for logging.
    pub origin: Origin,
    /// `Retry-After` to relay (429).
    pub retry_after: Option<String>,
    /// The Basic realm of a 401's `WWW-Authenticate` challenge.
    pub realm: Option<String>,
    /// What caused it: logged with its chain, never sent to the client.
    pub cause: Option<Cause>,
    /// `Allow` of a 405 (default `GET, HEAD`).
    pub allow: Option<&'static str>,
    /// The bytes an upload holds, for the `Range` of a refused chunk (0 and
    /// 1 both answer `0-0`, as distribution does; non-zero keeps the error
    /// small).
    pub range: Option<std::num::NonZeroU64>,
}

impl ApiError {
    /// A new error.
    pub fn new(status: StatusCode, code: Code, origin: Origin, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            origin,
            retry_after: None,
            realm: None,
            cause: None,
            allow: None,
            range: None,
        }
    }

    /// The same error, caused by `cause`.
    pub fn caused_by(mut self, cause: Cause) -> Self {
        self.cause = Some(cause);
        self
    }

    /// 401 with a Basic challenge for `realm`.
    pub fn unauthorized(realm: &str, message: impl Into<String>) -> Self {
        Self {
            realm: Some(realm.to_owned()),
            ..Self::new(
                StatusCode::UNAUTHORIZED,
                Code::Unauthorized,
                Origin::Downstream,
                message,
            )
        }
    }

    /// 403 DENIED.
    pub fn denied(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            Code::Denied,
            Origin::Downstream,
            message,
        )
    }

    /// 405 for any write to this pull-only mirror.
    pub fn read_only() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            Code::Unsupported,
            Origin::Downstream,
            "this registry is a pull-through mirror: push and delete are not supported",
        )
    }

    /// 400 for a page size `n` that is not a non-negative integer.
    pub fn bad_page_size() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            Code::PaginationNumberInvalid,
            Origin::Downstream,
            "n must be a non-negative integer",
        )
    }

    /// 405 on an upload URL: a pull-only mirror serves no method there
    /// (an empty `Allow`, RFC 9110 section 10.2.1).
    pub fn no_uploads() -> Self {
        Self {
            allow: Some(""),
            ..Self::read_only()
        }
    }

    /// The JSON body.
    pub fn body(&self) -> String {
        serde_json::json!({
            "errors": [{ "code": self.code.as_str(), "message": self.message, "detail": null }]
        })
        .to_string()
    }

    /// Extra response headers this error carries.
    pub fn headers(&self) -> Vec<(header::HeaderName, HeaderValue)> {
        let mut h = Vec::new();
        if let Some(v) = self
            .retry_after
            .as_deref()
            .and_then(|v| HeaderValue::from_str(v).ok())
        {
            h.push((header::RETRY_AFTER, v));
        }
        // The realm was checked at config load (no quotes or controls).
        if let Some(v) = self.realm.as_deref().and_then(|r| {
            HeaderValue::from_str(&format!("Basic realm=\"{r}\", charset=\"UTF-8\"")).ok()
        }) {
            h.push((header::WWW_AUTHENTICATE, v));
        }
        if let Some(v) = self
            .range
            .and_then(|held| HeaderValue::from_str(&format!("0-{}", held.get() - 1)).ok())
        {
            h.push((header::RANGE, v));
        }
        if self.status == StatusCode::METHOD_NOT_ALLOWED {
            let allow = self.allow.unwrap_or("GET, HEAD");
            h.push((header::ALLOW, HeaderValue::from_static(allow)));
        }
        h
    }
}

impl From<PathError> for ApiError {
    fn from(e: PathError) -> Self {
        let (status, code) = match e {
            PathError::NotFound => (StatusCode::NOT_FOUND, Code::Unsupported),
            PathError::TooLong => (StatusCode::URI_TOO_LONG, Code::NameInvalid),
            PathError::Name => (StatusCode::BAD_REQUEST, Code::NameInvalid),
            PathError::ImpossibleReference => (StatusCode::NOT_FOUND, Code::ManifestUnknown),
            PathError::Digest => (StatusCode::BAD_REQUEST, Code::DigestInvalid),
        };
        Self::new(status, code, Origin::Downstream, e.to_string())
    }
}

impl From<NoRoute> for ApiError {
    fn from(e: NoRoute) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            Code::NameUnknown,
            Origin::Downstream,
            e.to_string(),
        )
    }
}

/// Maps a hosted-namespace error. The error itself becomes the cause.
pub fn from_hosted(e: hosted::Error) -> ApiError {
    use hosted::Error as H;
    use hosted::UploadError as U;
    let down = |status, code, msg: String| ApiError::new(status, code, Origin::Downstream, msg);
    let msg = e.to_string();
    let api = match &e {
        H::NoNamespace(_) => down(StatusCode::NOT_FOUND, Code::NameUnknown, msg),
        H::BlobUnknown(_) => down(StatusCode::NOT_FOUND, Code::BlobUnknown, msg),
        H::ManifestUnknown(_) => down(StatusCode::NOT_FOUND, Code::ManifestUnknown, msg),
        H::UploadElsewhere(_) | H::Upload(U::Unknown(_)) => {
            down(StatusCode::NOT_FOUND, Code::BlobUploadUnknown, msg)
        }
        H::Upload(U::OutOfOrder { size, .. }) => ApiError {
            range: std::num::NonZeroU64::new((*size).max(1)),
            ..down(
                StatusCode::RANGE_NOT_SATISFIABLE,
                Code::BlobUploadInvalid,
                msg,
            )
        },
        H::Upload(U::DigestMismatch { .. }) | H::DigestMismatch { .. } => {
            down(StatusCode::BAD_REQUEST, Code::DigestInvalid, msg)
        }
        H::Upload(U::Body { .. }) => down(StatusCode::BAD_REQUEST, Code::BlobUploadInvalid, msg),
        H::Upload(U::TooLarge { .. }) | H::Quota { .. } => {
            down(StatusCode::PAYLOAD_TOO_LARGE, Code::Denied, msg)
        }
        H::ManifestInvalid(_) => down(StatusCode::BAD_REQUEST, Code::ManifestInvalid, msg),
        H::ManifestBlobUnknown(_) => down(StatusCode::BAD_REQUEST, Code::ManifestBlobUnknown, msg),
        H::DeleteDisabled(_) => ApiError {
            allow: Some("GET, HEAD"),
            ..down(StatusCode::METHOD_NOT_ALLOWED, Code::Unsupported, msg)
        },
        H::Store(_) | H::Upload(U::Store(_)) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            Code::Unknown,
            Origin::Internal,
            "internal storage error",
        ),
    };
    api.caused_by(std::sync::Arc::new(e))
}

fn unknown_code(subject: Subject) -> Code {
    match subject {
        Subject::Manifest => Code::ManifestUnknown,
        Subject::Blob => Code::BlobUnknown,
        Subject::Repository => Code::NameUnknown,
    }
}

/// Maps a mirror error for a request about `subject`. The error itself
/// becomes the cause.
pub fn from_mirror(e: &mirror::Error, subject: Subject) -> ApiError {
    use mirror::Error as M;
    let cause: Cause = std::sync::Arc::new(e.clone());
    let up = |status, code, msg: String| ApiError::new(status, code, Origin::Upstream, msg);
    let api = match e {
        M::Upstream { at, .. } => match e.upstream_failure() {
            Some(f) => from_upstream(&at.upstream, f, subject),
            // invariant: an Upstream error always has its upstream source.
            None => up(
                StatusCode::BAD_GATEWAY,
                Code::Unknown,
                format!("upstream {} failed", at.upstream),
            ),
        },
        M::Corrupt { at, expected, .. } => up(
            StatusCode::BAD_GATEWAY,
            Code::Unknown,
            format!(
                "upstream {} sent content that does not match {expected}; nothing was stored",
                at.upstream
            ),
        ),
        M::WrongLength { at, .. } => up(
            StatusCode::BAD_GATEWAY,
            Code::Unavailable,
            format!(
                "the transfer from upstream {} broke off; nothing was stored",
                at.upstream
            ),
        ),
        M::LeaseLost => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            Code::Unavailable,
            Origin::Internal,
            "another replica took this download over; retry",
        ),
        M::Interrupted => up(
            StatusCode::BAD_GATEWAY,
            Code::Unavailable,
            "the upstream transfer broke off; nothing was stored".into(),
        ),
        M::Store(_) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            Code::Unknown,
            Origin::Internal,
            "internal storage error",
        ),
        M::NotCached => ApiError::new(
            StatusCode::UNAUTHORIZED,
            Code::Unauthorized,
            Origin::Downstream,
            "not cached: only authenticated clients may fetch new content from upstream",
        ),
        M::NoUpstream(id) => ApiError::new(
            StatusCode::NOT_FOUND,
            Code::NameUnknown,
            Origin::Internal,
            format!("no upstream {id}"),
        ),
    };
    api.caused_by(cause)
}

/// Maps what `upstream` (by name) answered or how reaching it failed. The
/// message names the upstream but none of its internals.
fn from_upstream(
    upstream: &UpstreamId,
    f: mirror::UpstreamFailure<'_>,
    subject: Subject,
) -> ApiError {
    use mirror::UpstreamFailure as F;
    let up = |status, code, msg: String| ApiError::new(status, code, Origin::Upstream, msg);
    match f {
        F::Status {
            status,
            code,
            retry_after,
        } => {
            let upstream_code = code.and_then(Code::from_upstream);
            match status {
                // Not a failure: what the client asked for does not exist.
                404 => ApiError::new(
                    StatusCode::NOT_FOUND,
                    upstream_code.unwrap_or_else(|| unknown_code(subject)),
                    Origin::Downstream,
                    format!("{} not found upstream", subject_name(subject)),
                ),
                // Docker Hub answers 401 for repositories that do not exist.
                401 => ApiError::new(
                    StatusCode::NOT_FOUND,
                    Code::NameUnknown,
                    Origin::Downstream,
                    "repository does not exist upstream or requires authorization",
                ),
                403 => up(
                    StatusCode::FORBIDDEN,
                    Code::Denied,
                    format!("upstream {upstream} denied access"),
                ),
                429 => ApiError {
                    retry_after: retry_after.map(str::to_owned),
                    ..up(
                        StatusCode::TOO_MANY_REQUESTS,
                        Code::TooManyRequests,
                        format!("upstream {upstream} rate limit reached"),
                    )
                },
                // The client's own query (tags/list `n`, `last`) was refused.
                400 if subject == Subject::Repository => ApiError::new(
                    StatusCode::BAD_REQUEST,
                    upstream_code.unwrap_or(Code::Unknown),
                    Origin::Downstream,
                    format!("upstream {upstream} refused the request as invalid"),
                ),
                s if (400..500).contains(&s) => up(
                    StatusCode::BAD_GATEWAY,
                    Code::Unknown,
                    format!("upstream {upstream} rejected the request with status {s}"),
                ),
                s => up(
                    StatusCode::BAD_GATEWAY,
                    Code::Unavailable,
                    format!("upstream {upstream} failed with status {s}"),
                ),
            }
        }
        // Without credentials: the client asked for something private or
        // absent. With them refused, the operator must hear of it (Docker
        // Hub also answers 401 for absent repositories, so the client still
        // hears "unknown").
        F::Unauthorized { with_credentials } => ApiError::new(
            StatusCode::NOT_FOUND,
            Code::NameUnknown,
            if with_credentials {
                Origin::Upstream
            } else {
                Origin::Downstream
            },
            "repository does not exist upstream or requires authorization",
        ),
        F::Timeout => up(
            StatusCode::GATEWAY_TIMEOUT,
            Code::Unavailable,
            format!("upstream {upstream} timed out"),
        ),
        F::CircuitOpen => ApiError {
            retry_after: Some("5".into()),
            ..up(
                StatusCode::SERVICE_UNAVAILABLE,
                Code::Unavailable,
                format!("upstream {upstream} is down and this is not cached; failing fast"),
            )
        },
        F::Unreachable => up(
            StatusCode::SERVICE_UNAVAILABLE,
            Code::Unavailable,
            format!("upstream {upstream} is unreachable"),
        ),
        // The token realm down is the registry down: nothing can be pulled.
        F::TokenTimeout => up(
            StatusCode::GATEWAY_TIMEOUT,
            Code::Unavailable,
            format!("upstream {upstream}'s token service timed out"),
        ),
        F::TokenUnavailable => up(
            StatusCode::SERVICE_UNAVAILABLE,
            Code::Unavailable,
            format!("upstream {upstream}'s token service is unreachable"),
        ),
        F::BrokenTransfer => up(
            StatusCode::BAD_GATEWAY,
            Code::Unavailable,
            format!("the transfer from upstream {upstream} broke off; nothing was stored"),
        ),
        F::Invalid => up(
            StatusCode::BAD_GATEWAY,
            Code::Unknown,
            format!("upstream {upstream} sent an invalid response"),
        ),
    }
}

fn subject_name(s: Subject) -> &'static str {
    match s {
        Subject::Manifest => "manifest",
        Subject::Blob => "blob",
        Subject::Repository => "repository",
    }
}
