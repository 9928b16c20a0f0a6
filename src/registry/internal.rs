//! The internal endpoint of a cluster replica (`[cluster] listen`): the one
//! request other replicas make, `GET /_mirrorgate/v1/blobs/<digest>`, for a
//! blob this replica is fetching (as it arrives) or has stored.
//!
//! - Every request must carry a valid signature made with the cluster's
//!   secret ([`crate::cluster::SIGNATURE`]); anything else is refused before
//!   it is parsed further.
//! - It never starts a download: a replica asks here only because this one
//!   holds the blob's lease. So it cannot become a proxy that spends the
//!   mirror's upstream credentials.
//! - The private-content rules apply with the grant the asking replica's
//!   client got, as for that client, except that nothing is confirmed
//!   upstream: what they would refuse is refused here too.

use http::{Method, Request, Response, StatusCode, header};

use super::access_log::AccessLog;
use super::error::{ApiError, Code, Origin, Subject, from_mirror};
use super::response::{self, set};
use super::{Body, Registry};
use crate::cluster::{BLOB_PATH, FROM, SIGNATURE, SIZE};
use crate::config::UpstreamId;
use crate::mirror::{Fetch, Grant};
use crate::oci::{Digest, RepoName};

fn bad(code: Code, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, Origin::Downstream, message)
}

fn not_found(message: impl Into<String>) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        Code::BlobUnknown,
        Origin::Downstream,
        message,
    )
}

impl Registry {
    /// Answers a request on the internal endpoint.
    pub(super) async fn internal<B>(
        &self,
        req: &Request<B>,
        log: &mut AccessLog,
    ) -> Result<Response<Body>, ApiError> {
        let Some(cluster) = self.mirror.cluster() else {
            return Err(not_found("this mirror is not part of a cluster"));
        };
        let path_and_query = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let from = match req.headers().get(FROM) {
            None => 0,
            Some(v) => v
                .to_str()
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| bad(Code::RangeInvalid, format!("{FROM} is not a byte offset")))?,
        };
        let signature = req.headers().get(SIGNATURE).and_then(|v| v.to_str().ok());
        if let Err(e) = cluster.check(req.method(), path_and_query, from, signature) {
            return Err(ApiError::denied(format!(
                "the internal endpoint serves only replicas of this cluster: {e}"
            )));
        }
        if req.method() != Method::GET {
            return Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                Code::Unsupported,
                Origin::Downstream,
                "the internal endpoint answers GET only",
            ));
        }
        let Some(digest) = req.uri().path().strip_prefix(BLOB_PATH) else {
            return Err(not_found("no such internal endpoint"));
        };
        let digest: Digest = digest
            .parse()
            .map_err(|e| bad(Code::DigestInvalid, format!("invalid digest: {e}")))?;
        let mut upstream = None;
        let mut repo = None;
        let mut grant = Grant {
            fetch: Fetch::CacheOnly,
            private_repo: false,
            reads_private: false,
        };
        for (k, v) in url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
            match &*k {
                "upstream" => upstream = UpstreamId::parse(&v),
                "repo" => repo = v.parse::<RepoName>().ok(),
                "private_repo" => grant.private_repo = v == "1",
                "reads_private" => grant.reads_private = v == "1",
                _ => {}
            }
        }
        let upstream = upstream.ok_or_else(|| bad(Code::NameUnknown, "no valid upstream"))?;
        let repo = repo.ok_or_else(|| bad(Code::NameInvalid, "no valid repository name"))?;
        log.upstream = Some(upstream.to_string());
        let b = self
            .mirror
            .peer_blob(&upstream, &repo, &digest, grant)
            .await
            .map_err(|e| match e {
                crate::mirror::Error::NotCached => {
                    not_found("no download of this blob here, and not stored")
                }
                e => from_mirror(&e, Subject::Blob),
            })?;
        log.cache = Some(b.status);
        let size = b.size;
        if let Some(size) = size
            && from > size
        {
            return Err(ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                Code::RangeInvalid,
                Origin::Downstream,
                "the offset is past the blob's end",
            ));
        }
        let mut r =
            response::with_body(StatusCode::OK, response::stream(b.into_stream(from, None)));
        if let Some(size) = size {
            set(&mut r, SIZE, &size.to_string());
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, (size - from).into());
        }
        set(&mut r, header::CONTENT_TYPE, "application/octet-stream");
        Ok(r)
    }
}
