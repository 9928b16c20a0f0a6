//! Response builders: registry headers and bodies.

use std::io;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full, StreamBody};

use super::Body;
use super::access_log::AccessLog;
use super::error::{ApiError, Origin};

/// `Docker-Distribution-API-Version`, sent on every response.
pub const API_VERSION: &str = "docker-distribution-api-version";
/// `Docker-Content-Digest`.
pub const CONTENT_DIGEST: &str = "docker-content-digest";

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A body of fixed bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A streaming body, paced ([`crate::pace`]): read at most a few chunks
/// ahead of the client's socket.
pub fn stream(s: futures_util::stream::BoxStream<'static, io::Result<Bytes>>) -> Body {
    StreamBody::new(crate::pace::paced(s).map_ok(http_body::Frame::data).boxed()).boxed_unsync()
}

/// A response with `status` and `body`.
pub fn with_body(status: StatusCode, body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r
}

/// Sets a header from a string, skipping values that are not valid header
/// values (they come from upstream).
pub fn set(resp: &mut Response<Body>, name: impl header::IntoHeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().insert(name, v);
    }
}

/// A JSON response.
pub fn json(status: StatusCode, body: String, head: bool) -> Response<Body> {
    let len = body.len();
    let mut r = with_body(status, if head { empty() } else { full(body) });
    set(&mut r, header::CONTENT_TYPE, "application/json");
    r.headers_mut().insert(header::CONTENT_LENGTH, len.into());
    r
}

/// Logs an error response once, at the level its origin calls for, with
/// the request it answered and the whole chain of its cause.
pub fn log_error(e: &ApiError, req: &AccessLog) {
    let cause = e
        .cause
        .as_deref()
        .map(|c| crate::error_chain(c as &dyn std::error::Error));
    let cause = cause.as_deref().unwrap_or("-");
    let (method, path) = (&req.method, &req.path);
    let upstream = req.upstream.as_deref().unwrap_or("-");
    let code = e.code.as_str();
    let status = e.status.as_u16();
    // `reply` is what the client was told; `error` is why, for operators.
    match e.origin {
        Origin::Downstream => tracing::debug!(%method, %path, %upstream, status, code,
            reply = %e.message, error = cause, "request refused"),
        Origin::Upstream => tracing::warn!(%method, %path, %upstream, status, code,
            reply = %e.message, error = cause, "upstream error"),
        Origin::Internal => tracing::error!(%method, %path, %upstream, status, code,
            reply = %e.message, error = cause, "internal error"),
    }
}

/// Renders an error as the OCI envelope (logging is [`log_error`]'s job).
pub fn error(e: &ApiError, head: bool) -> Response<Body> {
    let mut r = json(e.status, e.body(), head);
    for (k, v) in e.headers() {
        r.headers_mut().insert(k, v);
    }
    r
}
