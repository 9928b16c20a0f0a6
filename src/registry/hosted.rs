//! The API of hosted namespaces: the OCI distribution push endpoints
//! (uploads, manifests, deletes), and pulls, tags and referrers of what was
//! pushed. The policy is `crate::hosted`'s; this turns requests into its
//! calls and its answers into responses.
//!
//! ```text
//! POST   /v2/<name>/blobs/uploads/                    start (202), or ?digest= (monolithic, 201), or ?mount=&from= (201 / 202)
//! GET    /v2/<name>/blobs/uploads/<id>                status: 204, Range: 0-<last byte>
//! PATCH  /v2/<name>/blobs/uploads/<id>                a chunk (Content-Range: <from>-<to>, or streamed): 202
//! PUT    /v2/<name>/blobs/uploads/<id>?digest=<d>     last chunk and commit: 201
//! DELETE /v2/<name>/blobs/uploads/<id>                cancel: 204
//! PUT    /v2/<name>/manifests/<tag|digest>            push a manifest: 201 (+ OCI-Subject)
//! DELETE /v2/<name>/manifests/<tag|digest>            delete a tag, or a manifest and its tags: 202
//! DELETE /v2/<name>/blobs/<digest>                    unlink a blob: 202
//! ```
//!
//! Locations are answered in the path shape the client used (a path prefix
//! or `/<prefix>/v2/`), with its `ns`.

use bytes::Bytes;
use futures_util::TryStreamExt;
use http::{Method, Response, StatusCode, header};
use http_body_util::BodyExt;

use super::error::{ApiError, Code, Origin, from_hosted};
use super::path::Endpoint;
use super::response::{self, CONTENT_DIGEST, set};
use super::route::Selection;
use super::{
    Body, Ctx, Registry, RequestBody, Routes, blob_headers, blob_response, manifest_response, page,
};
use crate::hosted::HostedRepo;
use crate::oci::{Digest, Reference};

/// `Docker-Upload-UUID`: the session id, which docker's client reads.
const UPLOAD_UUID: &str = "docker-upload-uuid";

/// `OCI-Subject`: the subject of a pushed manifest.
const OCI_SUBJECT: &str = "oci-subject";

/// A request body as a stream of chunks.
fn chunks(
    body: RequestBody,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    body.into_data_stream().map_err(std::io::Error::other)
}

fn method_not_allowed(allow: &'static str) -> ApiError {
    ApiError {
        allow: Some(allow),
        ..ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            Code::Unsupported,
            Origin::Downstream,
            "method not allowed here",
        )
    }
}

fn bad_request(code: Code, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, Origin::Downstream, message)
}

/// `Content-Range: <from>-<to>` (also `bytes <from>-<to>/<len>`): where a
/// chunk starts.
fn chunk_start(ctx: &Ctx<'_>) -> Result<Option<u64>, ApiError> {
    let Some(v) = ctx.headers.get(header::CONTENT_RANGE) else {
        return Ok(None);
    };
    let bad = || {
        ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            Code::BlobUploadInvalid,
            Origin::Downstream,
            "Content-Range must be <from>-<to>, as long as the body",
        )
    };
    let v = v.to_str().map_err(|_| bad())?.trim();
    let v = v.strip_prefix("bytes ").unwrap_or(v);
    let v = v.split('/').next().unwrap_or_default();
    let (from, to) = v.split_once('-').ok_or_else(bad)?;
    let from: u64 = from.trim().parse().map_err(|_| bad())?;
    let to: u64 = to.trim().parse().map_err(|_| bad())?;
    if to < from {
        return Err(bad());
    }
    // The range must be the body's (distribution refuses a mismatch too).
    let length = ctx
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if length.is_some_and(|n| n != to - from + 1) {
        return Err(bad());
    }
    Ok(Some(from))
}

/// The `digest` query parameter.
fn digest_param(ctx: &Ctx<'_>) -> Result<Option<Digest>, ApiError> {
    match ctx.query.digest.as_deref() {
        None => Ok(None),
        Some(d) => d
            .parse()
            .map(Some)
            .map_err(|_| bad_request(Code::DigestInvalid, format!("{d:?} is not a digest"))),
    }
}

/// `path` up to and including the endpoint's `/blobs/` or `/manifests/`
/// part, for Locations in the client's own path shape.
fn base<'a>(path: &'a str, marker: &str) -> &'a str {
    match path.rfind(marker) {
        Some(i) => &path[..i],
        None => path,
    }
}

impl Registry {
    /// Answers a request routed to a hosted namespace.
    pub(super) async fn hosted_endpoint(
        &self,
        ctx: &mut Ctx<'_>,
        routes: &Routes,
        sel: &Selection,
        endpoint: Endpoint,
    ) -> Result<Response<Body>, ApiError> {
        let ns = &sel.upstream;
        let config = self.hosted.config(ns).map_err(from_hosted)?;
        let reads = *ctx.method == Method::GET || *ctx.method == Method::HEAD;
        if !reads && !config.may_push(ctx.user) {
            return Err(if ctx.user.is_none() && routes.policy.auth.is_some() {
                self.challenge("authentication required to push")
            } else if ctx.user.is_none() {
                ApiError::denied(format!("anonymous push to {ns} is turned off"))
            } else {
                ApiError::denied(format!("this user may not push to {ns}"))
            });
        }
        if endpoint == Endpoint::Catalog {
            if !reads {
                return Err(method_not_allowed("GET, HEAD"));
            }
            let repos = self.hosted.catalog(ns).await.map_err(from_hosted)?;
            return self.catalog(ctx, ns, repos);
        }
        // invariant: every other endpoint has a name, which select() returns.
        let name = sel
            .name
            .clone()
            .ok_or_else(|| ApiError::from(super::path::PathError::Name))?;
        let r = HostedRepo {
            ns: ns.clone(),
            repo: name,
        };
        match endpoint {
            Endpoint::Manifest(_, reference) => self.hosted_manifest(ctx, &r, &reference).await,
            Endpoint::Blob(_, digest) => self.hosted_blob(ctx, &r, &digest).await,
            Endpoint::Upload(_, None) => {
                if *ctx.method != Method::POST {
                    return Err(method_not_allowed("POST"));
                }
                self.start_upload(ctx, routes, sel, &r).await
            }
            Endpoint::Upload(_, Some(id)) => self.upload(ctx, &r, &id).await,
            Endpoint::Tags(full) => {
                if !reads {
                    return Err(method_not_allowed("GET, HEAD"));
                }
                let tags = self
                    .hosted
                    .tags(&r)
                    .await
                    .map_err(from_hosted)?
                    .ok_or_else(|| {
                        ApiError::new(
                            StatusCode::NOT_FOUND,
                            Code::NameUnknown,
                            Origin::Downstream,
                            format!("repository {r} holds nothing"),
                        )
                    })?;
                let tags: Vec<&String> = tags.iter().collect();
                page(ctx, &tags, "tags", Some(full.as_str()))
            }
            Endpoint::Referrers(_, digest) => {
                if !reads {
                    return Err(method_not_allowed("GET, HEAD"));
                }
                let filter = ctx.query.artifact_type.clone();
                let list = self
                    .hosted
                    .referrers(&r, &digest, filter.as_deref())
                    .await
                    .map_err(from_hosted)?;
                let body = serde_json::json!({
                    "schemaVersion": 2,
                    "mediaType": crate::oci::media_type::OCI_INDEX,
                    "manifests": list,
                })
                .to_string();
                let mut resp = response::json(StatusCode::OK, body, ctx.head);
                set(
                    &mut resp,
                    header::CONTENT_TYPE,
                    crate::oci::media_type::OCI_INDEX,
                );
                if filter.is_some() {
                    set(&mut resp, "oci-filters-applied", "artifactType");
                }
                Ok(resp)
            }
            Endpoint::Ping | Endpoint::Catalog => Err(method_not_allowed("GET, HEAD")),
        }
    }

    async fn hosted_manifest(
        &self,
        ctx: &mut Ctx<'_>,
        r: &HostedRepo,
        reference: &Reference,
    ) -> Result<Response<Body>, ApiError> {
        match *ctx.method {
            Method::GET | Method::HEAD => {
                let m = self
                    .hosted
                    .manifest(r, reference)
                    .await
                    .map_err(from_hosted)?;
                Ok(manifest_response(ctx, m.bytes, &m.media_type, &m.digest))
            }
            Method::PUT => {
                let limit = self
                    .hosted
                    .config(&r.ns)
                    .map_err(from_hosted)?
                    .max_manifest_size;
                let body = ctx.take_body();
                let bytes = http_body_util::Limited::new(body, limit as usize)
                    .collect()
                    .await
                    .map_err(|e| {
                        if e.is::<http_body_util::LengthLimitError>() {
                            ApiError::new(
                                StatusCode::PAYLOAD_TOO_LARGE,
                                Code::SizeInvalid,
                                Origin::Downstream,
                                format!("manifests may be at most {limit} bytes"),
                            )
                        } else {
                            bad_request(Code::ManifestInvalid, "the request body broke off")
                        }
                    })?
                    .to_bytes();
                let ct = ctx
                    .headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok());
                let pushed = self
                    .hosted
                    .put_manifest(r, reference, ct, bytes)
                    .await
                    .map_err(from_hosted)?;
                let mut resp = self.created(
                    ctx,
                    &format!(
                        "{}/manifests/{}",
                        base(ctx.path, "/manifests/"),
                        pushed.digest
                    ),
                );
                set(&mut resp, CONTENT_DIGEST, &pushed.digest.to_string());
                if let Some(s) = &pushed.subject {
                    set(&mut resp, OCI_SUBJECT, &s.to_string());
                }
                Ok(resp)
            }
            Method::DELETE => {
                self.hosted
                    .delete_manifest(r, reference)
                    .await
                    .map_err(from_hosted)?;
                Ok(accepted())
            }
            _ => Err(method_not_allowed("GET, HEAD, PUT, DELETE")),
        }
    }

    async fn hosted_blob(
        &self,
        ctx: &mut Ctx<'_>,
        r: &HostedRepo,
        digest: &Digest,
    ) -> Result<Response<Body>, ApiError> {
        match *ctx.method {
            Method::HEAD => {
                let size = self
                    .hosted
                    .blob_size(r, digest)
                    .await
                    .map_err(from_hosted)?
                    .ok_or_else(|| {
                        from_hosted(crate::hosted::Error::BlobUnknown(digest.clone()))
                    })?;
                let mut resp = response::with_body(StatusCode::OK, response::empty());
                blob_headers(&mut resp, digest);
                resp.headers_mut()
                    .insert(header::CONTENT_LENGTH, size.into());
                Ok(resp)
            }
            Method::GET => {
                let reader = self
                    .hosted
                    .open_blob(r, digest)
                    .await
                    .map_err(from_hosted)?;
                let size = reader.len();
                Ok(blob_response(ctx, digest, Some(size), |start, end| {
                    reader.into_stream(start, end)
                }))
            }
            Method::DELETE => {
                self.hosted
                    .delete_blob(r, digest)
                    .await
                    .map_err(from_hosted)?;
                Ok(accepted())
            }
            _ => Err(method_not_allowed("GET, HEAD, DELETE")),
        }
    }

    /// `POST .../blobs/uploads/`: a mount, a monolithic upload, or a new
    /// session.
    async fn start_upload(
        &self,
        ctx: &mut Ctx<'_>,
        routes: &Routes,
        sel: &Selection,
        r: &HostedRepo,
    ) -> Result<Response<Body>, ApiError> {
        let blobs = base(ctx.path, "/blobs/");
        if let Some(mount) = ctx.query.mount.clone() {
            let digest: Digest = mount.parse().map_err(|_| {
                bad_request(Code::DigestInvalid, format!("{mount:?} is not a digest"))
            })?;
            if self.mount(ctx, routes, sel, r, &digest).await? {
                let mut resp = self.created(ctx, &format!("{blobs}/blobs/{digest}"));
                set(&mut resp, CONTENT_DIGEST, &digest.to_string());
                return Ok(resp);
            }
            // Not mountable: an ordinary session (the spec's fallback).
        }
        let id = self.hosted.start_upload(r).await.map_err(from_hosted)?;
        if let Some(digest) = digest_param(ctx)? {
            // Monolithic: the whole blob in this request.
            let body = Some(chunks(ctx.take_body()));
            return self.commit(ctx, r, &id, &digest, body).await;
        }
        Ok(self.upload_state(ctx, StatusCode::ACCEPTED, &id, 0))
    }

    /// Links `digest` from the repository `from` names into `r`, when the
    /// client may read it there. `from` is read like a request's name: a
    /// leading namespace or upstream name picks that one, anything else is
    /// a repository of `r`'s namespace.
    async fn mount(
        &self,
        ctx: &Ctx<'_>,
        routes: &Routes,
        sel: &Selection,
        r: &HostedRepo,
        digest: &Digest,
    ) -> Result<bool, ApiError> {
        let Some(from) = ctx.query.from.as_deref().and_then(|f| f.parse().ok()) else {
            return Ok(false);
        };
        let Ok(src) = routes
            .router
            .select(None, None, Some(from), None, Some(&sel.upstream))
        else {
            return Ok(false);
        };
        let Some(name) = src.name else {
            return Ok(false);
        };
        // The client must be allowed to read the source.
        let Ok(grant) = self.grant(routes, &src.upstream, &name, ctx.user) else {
            return Ok(false);
        };
        match src.target {
            super::route::Target::Hosted => {
                let from = HostedRepo {
                    ns: src.upstream,
                    repo: name,
                };
                self.hosted
                    .mount(r, digest, &from)
                    .await
                    .map_err(from_hosted)
            }
            super::route::Target::Mirror => {
                // Only what the mirror holds, and would serve this client
                // for that repository; never a fetch.
                let grant = crate::mirror::Grant {
                    fetch: crate::mirror::Fetch::CacheOnly,
                    ..grant
                };
                match self
                    .mirror
                    .head_blob(&src.upstream, &name, digest, grant)
                    .await
                {
                    Ok(h) if h.size.is_some() => self
                        .hosted
                        .mount_stored(r, digest)
                        .await
                        .map_err(from_hosted),
                    _ => Ok(false),
                }
            }
        }
    }

    /// Requests on an upload session's URL.
    async fn upload(
        &self,
        ctx: &mut Ctx<'_>,
        r: &HostedRepo,
        id: &str,
    ) -> Result<Response<Body>, ApiError> {
        match *ctx.method {
            Method::GET => {
                let size = self.hosted.upload_size(r, id).await.map_err(from_hosted)?;
                Ok(self.upload_state(ctx, StatusCode::NO_CONTENT, id, size))
            }
            Method::PATCH => {
                let at = chunk_start(ctx)?;
                let body = chunks(ctx.take_body());
                let size = self
                    .hosted
                    .append(r, id, at, body)
                    .await
                    .map_err(from_hosted)?;
                Ok(self.upload_state(ctx, StatusCode::ACCEPTED, id, size))
            }
            Method::PUT => {
                let digest = digest_param(ctx)?.ok_or_else(|| {
                    bad_request(
                        Code::DigestInvalid,
                        "the digest query parameter is required",
                    )
                })?;
                let body = Some(chunks(ctx.take_body()));
                self.commit(ctx, r, id, &digest, body).await
            }
            Method::DELETE => {
                self.hosted.cancel(r, id).await.map_err(from_hosted)?;
                let mut resp = response::with_body(StatusCode::NO_CONTENT, response::empty());
                resp.headers_mut().insert(header::CONTENT_LENGTH, 0.into());
                Ok(resp)
            }
            _ => Err(method_not_allowed("GET, PATCH, PUT, DELETE")),
        }
    }

    async fn commit(
        &self,
        ctx: &Ctx<'_>,
        r: &HostedRepo,
        id: &str,
        digest: &Digest,
        body: Option<impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send + 'static>,
    ) -> Result<Response<Body>, ApiError> {
        self.hosted
            .finish(r, id, digest, body)
            .await
            .map_err(from_hosted)?;
        let blobs = base(ctx.path, "/blobs/");
        let mut resp = self.created(ctx, &format!("{blobs}/blobs/{digest}"));
        set(&mut resp, CONTENT_DIGEST, &digest.to_string());
        Ok(resp)
    }

    /// 202/204 with an upload's `Location`, `Range` and id.
    fn upload_state(
        &self,
        ctx: &Ctx<'_>,
        status: StatusCode,
        id: &str,
        size: u64,
    ) -> Response<Body> {
        let blobs = base(ctx.path, "/blobs/");
        let mut resp = response::with_body(status, response::empty());
        set(
            &mut resp,
            header::LOCATION,
            &with_ns(ctx, &format!("{blobs}/blobs/uploads/{id}")),
        );
        // distribution's form: the last byte held, 0-0 when empty.
        set(
            &mut resp,
            header::RANGE,
            &format!("0-{}", size.saturating_sub(1)),
        );
        set(&mut resp, UPLOAD_UUID, id);
        resp.headers_mut().insert(header::CONTENT_LENGTH, 0.into());
        resp
    }

    /// 201 with a `Location`.
    fn created(&self, ctx: &Ctx<'_>, location: &str) -> Response<Body> {
        let mut resp = response::with_body(StatusCode::CREATED, response::empty());
        set(&mut resp, header::LOCATION, &with_ns(ctx, location));
        resp.headers_mut().insert(header::CONTENT_LENGTH, 0.into());
        resp
    }
}

/// `path` with the client's `ns`, when it sent one.
fn with_ns(ctx: &Ctx<'_>, path: &str) -> String {
    match &ctx.query.ns {
        Some(ns) => {
            let q = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("ns", ns)
                .finish();
            format!("{path}?{q}")
        }
        None => path.to_owned(),
    }
}

fn accepted() -> Response<Body> {
    let mut resp = response::with_body(StatusCode::ACCEPTED, response::empty());
    resp.headers_mut().insert(header::CONTENT_LENGTH, 0.into());
    resp
}
