//! The S3 API, served on the gateway's HTTP port (path style at `/` and under `/s3/`,
//! virtual-host style when `s3.domain` is set). See `docs/adr/0005-s3-data-path.md`.
//!
//! * Protocol ([`sigv4`], [`auth`], [`body`], [`xml`], [`error`]): SigV4 in the
//!   `Authorization` header and in presigned URLs, `aws-chunked` streaming uploads with
//!   per-chunk and trailer signatures, `UNSIGNED-PAYLOAD`, checksum trailers; every failure is
//!   one typed [`S3Error`] turned into S3 XML in one place.
//! * Metadata (buckets, listings, heads, deletes, multipart state) goes straight to the
//!   gateway's namespace and store with the caller's identity.
//! * Data goes through `cyxcloud-client`, the striping library every client uses ([`data`]):
//!   uploads are chunked, encoded and put to nodes in parallel with bounded memory; reads fetch
//!   the fastest `k` shards per chunk and a range touches only the chunks it covers. Copies and
//!   multipart completion reference existing chunks (content addressed, reference counted):
//!   no data is copied.
//!
//! Authorization: the owner of a bucket (or an admin) may do everything in it; anyone may read
//! a bucket created public (`x-amz-acl: public-read`); anonymous requests get nothing else
//! (except with `s3.loopback_anonymous_admin` on a loopback-bound gateway).

pub mod auth;
pub mod body;
pub mod bucket;
pub mod config;
pub mod data;
pub mod error;
pub mod list;
pub mod multipart;
pub mod object;
pub mod sigv4;
pub mod store;
pub mod util;
pub mod xml;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use tokio::sync::watch;

pub use config::S3Config;
pub use error::{Code, On, S3Error, S3Result};

use crate::Gateway;
use crate::accounts::Caller;
use crate::namespace::{Entry, Ref};

/// The S3 service: build its router before the gateway starts, then [`S3::start`] it with
/// the running gateway. Requests that arrive in between wait (up to 30 s) for the start.
#[derive(Clone)]
pub struct S3 {
    tx: Arc<watch::Sender<Option<Arc<State>>>>,
}

impl std::fmt::Debug for S3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("S3")
    }
}

/// What the handlers share.
pub struct State {
    pub gw: Gateway,
    pub cfg: S3Config,
    pub data: data::Data,
    /// The admin acting for unsigned local requests (`s3.loopback_anonymous_admin`).
    pub loopback_admin: Option<Caller>,
    pub domains: Vec<String>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("S3 State")
    }
}

impl Default for S3 {
    fn default() -> Self {
        Self::new()
    }
}

impl S3 {
    pub fn new() -> S3 {
        let (tx, _) = watch::channel(None);
        S3 { tx: Arc::new(tx) }
    }

    /// A router that sends every request not claimed by the gateway's own routes to S3.
    pub fn router(&self) -> Router {
        let rx = self.tx.subscribe();
        Router::new().fallback(move |req: Request| {
            let rx = rx.clone();
            async move { serve(rx, req).await }
        })
    }

    /// Connects the data path to the running gateway and starts serving; also starts the
    /// sweeper of expired multipart uploads.
    pub async fn start(&self, running: &crate::Running) -> crate::Result<()> {
        let gw = running.gateway.clone();
        let cfg = gw.config.s3.clone();
        let data = data::Data::connect(&gw, running.grpc_addr).await?;
        let loopback_admin = if cfg.loopback_anonymous_admin {
            let host: std::net::IpAddr = gw
                .config
                .host
                .parse()
                .map_err(|e| crate::Error::Config(format!("host: {e}")))?;
            if host.is_loopback() {
                Some(data.admin().clone())
            } else {
                tracing::warn!(
                    host = %host,
                    "s3.loopback_anonymous_admin is ignored: the HTTP port is not bound to a loopback address"
                );
                None
            }
        } else {
            None
        };
        let domains = cfg.domains();
        let state = Arc::new(State {
            gw: gw.clone(),
            cfg: cfg.clone(),
            data,
            loopback_admin,
            domains,
        });
        if cfg.multipart_expiry_secs > 0 {
            let s = state.clone();
            gw.workers.spawn(
                cyxcloud_daemon::Periodic::new(
                    "multipart-expiry",
                    multipart::expiry_interval(&state),
                    move || {
                        let s = s.clone();
                        async move { multipart::expire_once(&s).await }
                    },
                ),
                cyxcloud_daemon::WorkerOptions::default(),
            );
        }
        self.tx.send_replace(Some(state));
        tracing::info!(region = %cfg.region, domains = %cfg.domain, "S3 API serving");
        Ok(())
    }
}

async fn serve(mut rx: watch::Receiver<Option<Arc<State>>>, req: Request) -> Response {
    let request_id = request_id();
    let state =
        match tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|s| s.is_some())).await {
            Ok(Ok(s)) => s.clone().expect("checked"),
            _ => {
                return S3Error::new(Code::ServiceUnavailable, "the S3 API is not started")
                    .into_response(req.uri().path(), &request_id, req.method() == Method::HEAD);
            }
        };
    let head = req.method() == Method::HEAD;
    let path = req.uri().path().to_string();
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let mut resp = match handle(&state, req, &request_id).await {
        Ok(r) => r,
        Err((e, resource)) => {
            if e.code == Code::InternalError {
                tracing::error!(%method, path = %path, request_id = %request_id, "S3 request failed: {}", e.message);
            } else {
                tracing::debug!(%method, path = %path, code = e.code.as_str(), message = %e.message, "S3 request refused");
            }
            e.into_response(&resource, &request_id, head)
        }
    };
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-amz-request-id", v);
    }
    resp.headers_mut()
        .insert(header::SERVER, HeaderValue::from_static("CyxCloud"));
    state
        .gw
        .metrics
        .observe_s3(method.as_str(), resp.status().as_u16(), started);
    let status = resp.status().as_u16();
    let ms = started.elapsed().as_millis() as u64;
    if status >= 500 && status != 501 {
        tracing::warn!(%method, path = %path, status, ms, request_id = %request_id, "S3 request answered with a server error");
    } else {
        tracing::debug!(%method, path = %path, status, ms, "S3 request");
    }
    resp
}

fn request_id() -> String {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    hex::encode_upper(b)
}

/// A parsed S3 request.
pub struct Req {
    pub method: Method,
    pub headers: HeaderMap,
    /// Decoded query parameters, in order.
    pub query: Vec<(String, String)>,
    pub bucket: Option<String>,
    /// The object key (decoded); `None` for bucket and service requests.
    pub key: Option<String>,
    /// Behind a mutex so that `&Req` is `Send` across awaits (a body is not `Sync`).
    pub body: std::sync::Mutex<Option<Body>>,
    /// Who signed the request (`None`: anonymous).
    pub caller: Option<Caller>,
    /// How the body is signed and framed.
    pub auth: auth::BodyAuth,
    pub request_id: String,
    /// The decoded request path.
    pub path: String,
}

impl std::fmt::Debug for Req {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Req")
            .field("method", &self.method)
            .field("bucket", &self.bucket)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Req {
    pub fn q(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn has(&self, name: &str) -> bool {
        self.query.iter().any(|(k, _)| k == name)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn bucket(&self) -> &str {
        self.bucket.as_deref().unwrap_or("")
    }

    pub fn key(&self) -> &str {
        self.key.as_deref().unwrap_or("")
    }

    pub fn take_body(&mut self) -> Body {
        self.body
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or_else(Body::empty)
    }

    /// The signed caller, or `AccessDenied` for anonymous requests.
    pub fn signed(&self) -> S3Result<&Caller> {
        self.caller.as_ref().ok_or_else(S3Error::access_denied)
    }
}

/// Where the request points: `(bucket, key)` from the Host header or the path.
fn locate(
    state: &State,
    headers: &HeaderMap,
    path: &str,
) -> S3Result<(Option<String>, Option<String>)> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| {
            h.rsplit_once(':').map_or(h, |(n, p)| {
                if p.bytes().all(|b| b.is_ascii_digit()) {
                    n
                } else {
                    h
                }
            })
        })
        .map(|h| h.to_ascii_lowercase());
    if let Some(host) = &host {
        for d in &state.domains {
            if let Some(b) = host
                .strip_suffix(d.as_str())
                .and_then(|p| p.strip_suffix('.'))
                && !b.is_empty()
            {
                let key = path.strip_prefix('/').unwrap_or(path);
                return Ok((
                    Some(b.to_string()),
                    (!key.is_empty()).then(|| key.to_string()),
                ));
            }
        }
    }
    let p = if path == "/s3" {
        "/"
    } else {
        path.strip_prefix("/s3/")
            .map_or(path, |rest| &path[path.len() - rest.len() - 1..])
    };
    let p = p.strip_prefix('/').unwrap_or(p);
    if p.is_empty() {
        return Ok((None, None));
    }
    Ok(match p.split_once('/') {
        None => (Some(p.to_string()), None),
        Some((b, "")) => (Some(b.to_string()), None),
        Some((b, k)) => (Some(b.to_string()), Some(k.to_string())),
    })
}

/// Handles one request; errors carry the resource for the XML body.
async fn handle(
    state: &Arc<State>,
    req: Request,
    request_id: &str,
) -> Result<Response, (S3Error, String)> {
    let (parts, body) = req.into_parts();
    let raw_path = parts.uri.path().to_string();
    let raw_query = parts.uri.query().unwrap_or("").to_string();
    let resource = raw_path.clone();
    let fail = |e: S3Error| (e, resource.clone());
    let header_bytes: usize = parts
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if header_bytes as u64 > state.cfg.max_header_bytes {
        return Err(fail(S3Error::new(
            Code::RequestHeaderSectionTooLarge,
            format!(
                "Your request header section exceeds the maximum allowed size ({} bytes).",
                state.cfg.max_header_bytes
            ),
        )));
    }
    let decoded_path = util::percent_decode(&raw_path, false).ok_or_else(|| {
        fail(S3Error::invalid_argument(
            "the request path is not valid percent-encoded UTF-8",
        ))
    })?;
    let query = util::parse_query(&raw_query).ok_or_else(|| {
        fail(S3Error::invalid_argument(
            "the query string is not valid percent-encoded UTF-8",
        ))
    })?;
    let (bucket, key) = locate(state, &parts.headers, &decoded_path).map_err(fail)?;
    let resource = match (&bucket, &key) {
        (Some(b), Some(k)) => format!("/{b}/{k}"),
        (Some(b), None) => format!("/{b}"),
        _ => "/".to_string(),
    };
    let fail = |e: S3Error| (e, resource.clone());
    let (caller, body_auth) =
        auth::authenticate(state, &parts.method, &raw_path, &raw_query, &parts.headers)
            .await
            .map_err(fail)?;
    let caller = caller.or_else(|| state.loopback_admin.clone());
    let mut r = Req {
        method: parts.method,
        headers: parts.headers,
        query,
        bucket,
        key,
        body: std::sync::Mutex::new(Some(body)),
        caller,
        auth: body_auth,
        request_id: request_id.to_string(),
        path: decoded_path,
    };
    dispatch(state, &mut r).await.map_err(fail)
}

/// Subresources this gateway does not implement (answered `NotImplemented`).
const UNSUPPORTED: &[&str] = &[
    "accelerate",
    "analytics",
    "attributes",
    "cors",
    "encryption",
    "intelligent-tiering",
    "inventory",
    "legal-hold",
    "lifecycle",
    "logging",
    "metrics",
    "notification",
    "object-lock",
    "ownershipControls",
    "policy",
    "policyStatus",
    "publicAccessBlock",
    "replication",
    "requestPayment",
    "restore",
    "retention",
    "select",
    "torrent",
    "versions",
    "website",
];

async fn dispatch(s: &Arc<State>, r: &mut Req) -> S3Result<Response> {
    if let Some(sub) = UNSUPPORTED.iter().find(|x| r.has(x)) {
        return Err(S3Error::not_implemented(&format!("the ?{sub} subresource")));
    }
    let m = r.method.clone();
    match (r.bucket.is_some(), r.key.is_some()) {
        (false, _) => match m {
            Method::GET => bucket::list_buckets(s, r).await,
            // `/s3` is the prefix route; as a bucket name it is reserved.
            _ if r.path.trim_end_matches('/') == "/s3" => Err(S3Error::new(
                Code::InvalidBucketName,
                "The specified bucket is not valid.",
            )
            .with("BucketName", "s3")),
            _ => Err(S3Error::new(
                Code::MethodNotAllowed,
                "The specified method is not allowed against this resource.",
            )),
        },
        (true, false) => {
            if m == Method::GET && r.has("versioning") {
                return bucket::get_versioning(s, r).await;
            }
            if r.has("versioning") || r.has("tagging") {
                return Err(S3Error::not_implemented(
                    "bucket versioning and bucket tagging",
                ));
            }
            match m {
                Method::PUT if r.has("acl") => bucket::put_acl(s, r).await,
                Method::PUT => bucket::create(s, r).await,
                Method::HEAD => bucket::head(s, r).await,
                Method::DELETE => bucket::delete(s, r).await,
                Method::GET if r.has("location") => bucket::location(s, r).await,
                Method::GET if r.has("acl") => bucket::get_acl(s, r).await,
                Method::GET if r.has("uploads") => multipart::list_uploads(s, r).await,
                Method::GET if r.q("list-type") == Some("2") => list::list_v2(s, r).await,
                Method::GET => list::list_v1(s, r).await,
                Method::POST if r.has("delete") => object::delete_many(s, r).await,
                Method::POST => Err(S3Error::not_implemented(
                    "POST object (browser form uploads)",
                )),
                _ => Err(S3Error::new(
                    Code::MethodNotAllowed,
                    "The specified method is not allowed against this resource.",
                )),
            }
        }
        (true, true) => {
            let copy = r.headers.contains_key("x-amz-copy-source");
            match m {
                Method::PUT if r.has("uploadId") && copy => multipart::upload_part_copy(s, r).await,
                Method::PUT if r.has("uploadId") => multipart::upload_part(s, r).await,
                Method::PUT if r.has("tagging") => object::put_tagging(s, r).await,
                Method::PUT if r.has("acl") => object::put_acl(s, r).await,
                Method::PUT if copy => object::copy(s, r).await,
                Method::PUT => object::put(s, r).await,
                Method::GET if r.has("uploadId") => multipart::list_parts(s, r).await,
                Method::GET if r.has("tagging") => object::get_tagging(s, r).await,
                Method::GET if r.has("acl") => object::get_acl(s, r).await,
                Method::GET => object::get(s, r, false).await,
                Method::HEAD => object::get(s, r, true).await,
                Method::DELETE if r.has("uploadId") => multipart::abort(s, r).await,
                Method::DELETE if r.has("tagging") => object::delete_tagging(s, r).await,
                Method::DELETE => object::delete(s, r).await,
                Method::POST if r.has("uploads") => multipart::create(s, r).await,
                Method::POST if r.has("uploadId") => multipart::complete(s, r).await,
                Method::POST => Err(S3Error::not_implemented("this POST operation")),
                _ => Err(S3Error::new(
                    Code::MethodNotAllowed,
                    "The specified method is not allowed against this resource.",
                )),
            }
        }
    }
}

/// What a caller may do with a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// Loads a bucket and checks that the request may `access` it. Returns the bucket and the
/// identity to use with the namespace (the caller, or the system for public reads).
pub async fn authorize(
    s: &State,
    r: &Req,
    bucket: &str,
    access: Access,
) -> S3Result<(Entry, Caller)> {
    if crate::namespace::check_bucket_name(bucket).is_err() {
        // Names S3 could never create (including the gateway's own routes and the staging
        // bucket): nothing there.
        return Err(S3Error::new(
            Code::InvalidBucketName,
            format!("The specified bucket {bucket:?} is not valid."),
        )
        .with("BucketName", bucket));
    }
    let b =
        s.gw.ns
            .getattr(
                &Caller::system(),
                &Ref::Path {
                    bucket: bucket.to_string(),
                    path: String::new(),
                },
            )
            .await
            .map_err(|e| S3Error::from_gateway(e, On::Bucket))?;
    let owner = r
        .caller
        .as_ref()
        .is_some_and(|c| c.admin || c.user_id == b.owner_id);
    if owner {
        return Ok((b, r.caller.clone().expect("owner is signed")));
    }
    if access == Access::Read && b.public_read {
        return Ok((b, Caller::system()));
    }
    Err(S3Error::access_denied())
}

/// A response with a status and no body.
pub fn empty(status: StatusCode) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = status;
    r
}

/// A 200 XML response.
pub fn xml_response(body: String) -> Response {
    let mut r = Response::new(Body::from(body));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/xml"),
    );
    r
}

/// `"etag"` as S3 quotes it; objects written without one (e.g. through the mount before
/// ETags existed) get a stable stand-in derived from their version.
pub fn quoted_etag(e: &Entry) -> String {
    if e.etag.is_empty() {
        format!("\"{:032x}-1\"", e.version)
    } else {
        format!("\"{}\"", e.etag)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn md5_of_empty() {
        use md5::Digest;
        assert_eq!(hex::encode(md5::Md5::digest(b"")), super::object::EMPTY_MD5);
    }
}
