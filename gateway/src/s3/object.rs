//! Object operations: PutObject, GetObject / HeadObject (ranges, conditional requests, stored
//! headers), DeleteObject, DeleteObjects, CopyObject (metadata only: the copy references the
//! source's chunks), and object tagging (kept as the extended attribute `user.s3.tagging`,
//! visible in the mounted drive).

use std::collections::{BTreeMap, HashMap};

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use cyxcloud_client::UploadOptions;
use cyxcloud_proto::v1;

use crate::accounts::Caller;
use crate::error::Error;
use crate::namespace::{Kind, Perms, Ref};
use crate::writes::{BeginParams, Committed, FileAttrs};

use super::body::{Algo, BodyReader, BodySpec};
use super::error::{Code, On, S3Error, S3Result};
use super::sigv4::Payload;
use super::util::{http_date, iso8601, parse_http_date, percent_decode, uri_encode};
use super::xml::{self, XmlWriter};
use super::{Access, Req, State, authorize, empty, xml_response};

/// MD5 of nothing: the ETag of empty objects and directory markers.
pub const EMPTY_MD5: &str = "d41d8cd98f00b204e9800998ecf8427e";
/// Extended attribute holding an object's tag set (`k=v&k2=v2`, URL encoded).
pub const TAGGING_XATTR: &str = "user.s3.tagging";
/// Largest user metadata (names + values of `x-amz-meta-*`), as S3.
pub const MAX_USER_METADATA: usize = 2048;
/// Standard headers S3 stores with an object and returns on GET/HEAD.
pub const STORED_HEADERS: &[&str] = &[
    "cache-control",
    "content-disposition",
    "content-encoding",
    "content-language",
    "expires",
];
/// Largest XML request body (`DeleteObjects` with 1000 keys, tag sets, ...).
pub const MAX_XML_BODY: usize = 2 << 20;

/// Checks a key can name an object (the namespace's rules: no empty, `.` or `..` segment).
pub fn check_key(key: &str) -> S3Result<()> {
    if key.is_empty() {
        return Err(S3Error::invalid_argument("an object key is required"));
    }
    crate::namespace::split_path(key)
        .map(|_| ())
        .map_err(|e| S3Error::from_gateway(e, On::Object))
}

/// The body of a request: framing, declared length (at most `max`), digests to verify.
pub fn body_spec(r: &Req, max: u64) -> S3Result<BodySpec> {
    let chunked = r.auth.payload.is_chunked();
    let length = if chunked {
        let v = r.header("x-amz-decoded-content-length").ok_or_else(|| {
            S3Error::new(
                Code::MissingContentLength,
                "You must provide the x-amz-decoded-content-length HTTP header with aws-chunked uploads.",
            )
        })?;
        Some(v.trim().parse::<u64>().map_err(|_| {
            S3Error::invalid_argument("x-amz-decoded-content-length is not a number")
        })?)
    } else {
        match r.header("content-length") {
            Some(v) => Some(
                v.trim()
                    .parse::<u64>()
                    .map_err(|_| S3Error::invalid_argument("Content-Length is not a number"))?,
            ),
            None => None,
        }
    };
    if let Some(n) = length
        && n > max
    {
        return Err(S3Error::new(
            Code::EntityTooLarge,
            "Your proposed upload exceeds the maximum allowed size",
        )
        .with("ProposedSize", n.to_string())
        .with("MaxSizeAllowed", max.to_string()));
    }
    let md5 = match r.header("content-md5") {
        None => None,
        Some(v) => {
            let b = B64.decode(v.trim()).map_err(|_| {
                S3Error::new(
                    Code::InvalidDigest,
                    "The Content-MD5 you specified was invalid.",
                )
            })?;
            Some(<[u8; 16]>::try_from(b.as_slice()).map_err(|_| {
                S3Error::new(
                    Code::InvalidDigest,
                    "The Content-MD5 you specified was invalid.",
                )
            })?)
        }
    };
    let trailer = matches!(
        r.auth.payload,
        Payload::StreamingSigned { trailer: true } | Payload::StreamingUnsignedTrailer
    );
    let mut checksum = None;
    for a in Algo::ALL {
        if let Some(v) = r.header(&a.header()) {
            if checksum.is_some() {
                return Err(S3Error::invalid_argument(
                    "Expecting a single x-amz-checksum- header. Multiple checksum Types are not allowed.",
                ));
            }
            checksum = Some((a, Some(v.trim().to_string())));
        }
    }
    if checksum.is_none()
        && let Some(t) = r.header("x-amz-trailer")
    {
        let a = Algo::parse(t).ok_or_else(|| {
            S3Error::invalid_argument(format!("the trailer {t:?} is not a supported checksum"))
        })?;
        if !trailer {
            return Err(S3Error::invalid_argument(
                "x-amz-trailer needs a streaming payload with trailers",
            ));
        }
        checksum = Some((a, None));
    }
    if checksum.is_none()
        && let Some(a) = r
            .header("x-amz-sdk-checksum-algorithm")
            .and_then(Algo::parse)
    {
        checksum = Some((a, None));
    }
    let sha256 = match &r.auth.payload {
        Payload::Sha256(h) => Some(h.clone()),
        _ => None,
    };
    Ok(BodySpec {
        chunked,
        signer: r.auth.signer.clone(),
        trailer: trailer && checksum.as_ref().is_some_and(|(_, v)| v.is_none()),
        length,
        sha256,
        md5,
        want_md5: false,
        checksum,
    })
}

/// Reads a small (XML) request body, verifying its signature and digests.
pub async fn read_small_body(r: &mut Req) -> S3Result<Vec<u8>> {
    let spec = body_spec(r, MAX_XML_BODY as u64)?;
    let (b, _) = BodyReader::new(r.take_body(), spec)
        .read_all(MAX_XML_BODY)
        .await?;
    Ok(b)
}

/// User metadata (`x-amz-meta-*`) and the stored standard headers of a request.
pub fn request_metadata(h: &HeaderMap) -> S3Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut size = 0usize;
    for (name, value) in h {
        let n = name.as_str();
        if let Some(k) = n.strip_prefix("x-amz-meta-") {
            let v = value
                .to_str()
                .map_err(|_| S3Error::invalid_argument(format!("{n} is not ASCII")))?;
            size += k.len() + v.len();
            if size > MAX_USER_METADATA {
                return Err(S3Error::new(
                    Code::MetadataTooLarge,
                    "Your metadata headers exceed the maximum allowed metadata size.",
                )
                .with("MaxSizeAllowed", MAX_USER_METADATA.to_string()));
            }
            let e = out.entry(k.to_string()).or_insert_with(String::new);
            if !e.is_empty() {
                e.push(',');
            }
            e.push_str(v);
        }
    }
    for n in STORED_HEADERS {
        if let Some(v) = h.get(*n).and_then(|v| v.to_str().ok()) {
            let v = if *n == "content-encoding" {
                let rest: Vec<&str> = v
                    .split(',')
                    .map(str::trim)
                    .filter(|e| !e.eq_ignore_ascii_case("aws-chunked") && !e.is_empty())
                    .collect();
                rest.join(", ")
            } else {
                v.to_string()
            };
            if !v.is_empty() {
                out.insert(format!(":{n}"), v);
            }
        }
    }
    Ok(out)
}

/// Refuses ACLs other than the private ones (objects have their bucket's access).
fn check_object_acl(r: &Req) -> S3Result<()> {
    match r.header("x-amz-acl") {
        None | Some("private") | Some("bucket-owner-full-control") | Some("bucket-owner-read") => {
            Ok(())
        }
        Some(a) => Err(S3Error::not_implemented(&format!(
            "the object ACL {a:?} (objects share their bucket's access; create the bucket public-read instead)"
        ))),
    }
}

/// A tag set from `k=v&k2=v2`, validated as S3 does.
pub fn parse_tagging(s: &str) -> S3Result<Vec<(String, String)>> {
    let tags = super::util::parse_query(s)
        .ok_or_else(|| S3Error::new(Code::InvalidTag, "the tag set is not URL encoded"))?;
    check_tags(&tags)?;
    Ok(tags)
}

fn check_tags(tags: &[(String, String)]) -> S3Result<()> {
    if tags.len() > 10 {
        return Err(S3Error::new(
            Code::InvalidTag,
            "Object tags cannot be greater than 10",
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for (k, v) in tags {
        if k.is_empty() || k.chars().count() > 128 {
            return Err(S3Error::new(
                Code::InvalidTag,
                "The TagKey you have provided is invalid",
            ));
        }
        if v.chars().count() > 256 {
            return Err(S3Error::new(
                Code::InvalidTag,
                "The TagValue you have provided is invalid",
            ));
        }
        if !seen.insert(k) {
            return Err(S3Error::new(
                Code::InvalidTag,
                "Cannot provide multiple Tags with the same key",
            ));
        }
    }
    Ok(())
}

fn encode_tags(tags: &[(String, String)]) -> String {
    tags.iter()
        .map(|(k, v)| format!("{}={}", uri_encode(k, false), uri_encode(v, false)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Sets (or clears, when empty) the tag set of an object.
async fn store_tags(
    s: &State,
    caller: &Caller,
    id: u64,
    tags: &[(String, String)],
    had: bool,
) -> S3Result<()> {
    let r = Ref::Id(id);
    let res = if tags.is_empty() {
        if !had {
            return Ok(());
        }
        s.gw.ns.remove_xattr(caller, &r, TAGGING_XATTR).await
    } else {
        s.gw.ns
            .set_xattr(caller, &r, TAGGING_XATTR, encode_tags(tags).as_bytes(), 0)
            .await
    };
    match res {
        Ok(()) | Err(Error::NotFound { .. }) if tags.is_empty() => Ok(()),
        r => r.map_err(|e| S3Error::from_gateway(e, On::Object)),
    }
}

/// What GET/HEAD report about an object.
#[derive(Debug, Clone)]
pub struct ObjInfo {
    pub size: u64,
    pub etag: String,
    pub mtime_ns: i64,
    pub content_type: String,
    pub meta: BTreeMap<String, String>,
    pub tags: usize,
    pub directory: bool,
}

impl ObjInfo {
    fn from_v1(e: &v1::Entry) -> ObjInfo {
        ObjInfo {
            size: e.size,
            etag: if e.etag.is_empty() {
                format!("\"{:032x}-1\"", e.version)
            } else {
                format!("\"{}\"", e.etag)
            },
            mtime_ns: e.mtime_ns,
            content_type: e.content_type.clone(),
            meta: e.user_metadata.clone().into_iter().collect(),
            tags: tag_count(e.xattrs.get(TAGGING_XATTR).map(Vec::as_slice)),
            directory: false,
        }
    }

    fn from_entry(e: &crate::namespace::Entry) -> ObjInfo {
        let directory = e.kind.is_dir();
        ObjInfo {
            size: if directory { 0 } else { e.size },
            etag: if directory {
                format!("\"{EMPTY_MD5}\"")
            } else {
                super::quoted_etag(e)
            },
            mtime_ns: e.mtime_ns,
            content_type: if directory {
                "application/x-directory".into()
            } else {
                e.content_type.clone()
            },
            meta: e.meta.user_metadata.clone(),
            tags: tag_count(e.meta.xattrs.get(TAGGING_XATTR).map(Vec::as_slice)),
            directory,
        }
    }
}

fn tag_count(v: Option<&[u8]>) -> usize {
    v.map(|b| {
        String::from_utf8_lossy(b)
            .split('&')
            .filter(|s| !s.is_empty())
            .count()
    })
    .unwrap_or(0)
}

fn set(h: &mut HeaderMap, name: &str, value: &str) {
    if let (Ok(n), Ok(v)) = (
        HeaderName::from_bytes(name.as_bytes()),
        HeaderValue::from_str(value),
    ) {
        h.insert(n, v);
    }
}

/// The headers GET and HEAD return for an object (before range headers).
fn object_headers(h: &mut HeaderMap, o: &ObjInfo, r: &Req) {
    set(h, "etag", &o.etag);
    set(h, "last-modified", &http_date(o.mtime_ns));
    set(h, "accept-ranges", "bytes");
    let ct = if o.content_type.is_empty() {
        "binary/octet-stream"
    } else {
        &o.content_type
    };
    set(h, "content-type", ct);
    for (k, v) in &o.meta {
        match k.strip_prefix(':') {
            Some(std_header) => set(h, std_header, v),
            None => set(h, &format!("x-amz-meta-{k}"), v),
        }
    }
    if o.tags > 0 {
        set(h, "x-amz-tagging-count", &o.tags.to_string());
    }
    // Presigned URLs may override response headers.
    for (q, hn) in [
        ("response-content-type", "content-type"),
        ("response-content-language", "content-language"),
        ("response-expires", "expires"),
        ("response-cache-control", "cache-control"),
        ("response-content-disposition", "content-disposition"),
        ("response-content-encoding", "content-encoding"),
    ] {
        if let Some(v) = r.q(q) {
            set(h, hn, v);
        }
    }
}

/// Entity tags in an `If-Match` / `If-None-Match` header.
fn etag_matches(header: &str, etag: &str) -> bool {
    let bare = etag.trim_matches('"');
    header
        .split(',')
        .map(str::trim)
        .any(|t| t == "*" || t.trim_start_matches("W/").trim_matches('"') == bare)
}

/// RFC 7232 / S3 evaluation of the conditional headers; `Err` is 412 or 304.
pub fn check_conditions(
    h: &HeaderMap,
    prefix: &str,
    etag: &str,
    mtime_ns: i64,
    read: bool,
) -> S3Result<()> {
    let get = |n: &str| h.get(format!("{prefix}{n}")).and_then(|v| v.to_str().ok());
    let mtime = mtime_ns.div_euclid(1_000_000_000);
    let failed = || {
        S3Error::new(
            Code::PreconditionFailed,
            "At least one of the pre-conditions you specified did not hold",
        )
        .with("Condition", prefix.to_string() + "If-Match")
    };
    let if_match = get("if-match");
    if let Some(m) = if_match
        && !etag_matches(m, etag)
    {
        return Err(failed());
    }
    if if_match.is_none()
        && let Some(t) = get("if-unmodified-since").and_then(parse_http_date)
        && mtime > t
    {
        return Err(failed());
    }
    let if_none = get("if-none-match");
    if let Some(m) = if_none
        && etag_matches(m, etag)
    {
        return Err(if read {
            S3Error::new(Code::NotModified, "Not Modified")
        } else {
            failed()
        });
    }
    if if_none.is_none()
        && let Some(t) = get("if-modified-since").and_then(parse_http_date)
        && mtime <= t
    {
        return Err(if read {
            S3Error::new(Code::NotModified, "Not Modified")
        } else {
            failed()
        });
    }
    Ok(())
}

/// A single byte range of a `Range` header for an object of `size` bytes: `Ok(None)` = the
/// whole object (no header, or one S3 ignores), `Err` = not satisfiable.
pub fn parse_range(v: Option<&str>, size: u64) -> S3Result<Option<std::ops::Range<u64>>> {
    let Some(v) = v else { return Ok(None) };
    let Some(spec) = v.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None); // several ranges: S3 answers with the whole object
    }
    let (a, b) = match spec.split_once('-') {
        Some(x) => x,
        None => return Ok(None),
    };
    let (a, b) = (a.trim(), b.trim());
    let unsatisfiable = || {
        S3Error::new(Code::InvalidRange, "The requested range is not satisfiable")
            .with("RangeRequested", v.to_string())
            .with("ActualObjectSize", size.to_string())
    };
    let range = if a.is_empty() {
        let n: u64 = match b.parse() {
            Ok(n) => n,
            Err(_) => return Ok(None),
        };
        if n == 0 {
            return Err(unsatisfiable());
        }
        size.saturating_sub(n)..size
    } else {
        let start: u64 = match a.parse() {
            Ok(n) => n,
            Err(_) => return Ok(None),
        };
        let end = if b.is_empty() {
            size
        } else {
            match b.parse::<u64>() {
                Ok(e) if e >= start => e.saturating_add(1).min(size),
                _ => return Ok(None),
            }
        };
        if start >= size {
            return Err(unsatisfiable());
        }
        start..end
    };
    if range.start >= range.end {
        return Err(unsatisfiable());
    }
    Ok(Some(range))
}

/// PutObject.
pub async fn put(s: &State, r: &mut Req) -> S3Result<Response> {
    let bucket = r.bucket().to_string();
    let (_, caller) = authorize(s, r, &bucket, Access::Write).await?;
    let key = r.key().to_string();
    check_key(&key)?;
    check_object_acl(r)?;
    let spec = body_spec(r, s.cfg.max_object_bytes)?;
    if spec.length.is_none() {
        return Err(S3Error::new(
            Code::MissingContentLength,
            "You must provide the Content-Length HTTP header.",
        ));
    }
    let meta = request_metadata(&r.headers)?;
    let tags = match r.header("x-amz-tagging") {
        Some(t) => parse_tagging(t)?,
        None => Vec::new(),
    };
    if key.ends_with('/') {
        return put_directory(s, r, &caller, &bucket, &key, spec).await;
    }
    let (if_absent, if_version) = write_conditions(s, r, &caller, &bucket, &key).await?;
    let opts = UploadOptions {
        content_type: r.header("content-type").unwrap_or("").to_string(),
        user_metadata: meta.into_iter().collect::<HashMap<_, _>>(),
        size_hint: spec.length.unwrap_or(0),
        md5: true,
        if_absent,
        if_version,
        ..Default::default()
    };
    let reader = BodyReader::new(r.take_body(), spec);
    let (entry, digests) = s.data.put(&bucket, &key, reader, opts).await?;
    let had_tags = entry.xattrs.contains_key(TAGGING_XATTR);
    store_tags(s, &caller, entry.id, &tags, had_tags).await?;
    let mut resp = empty(StatusCode::OK);
    let h = resp.headers_mut();
    set(h, "etag", &format!("\"{}\"", entry.etag));
    if let Some((a, v)) = digests.checksum {
        set(h, &a.header(), &v);
    }
    Ok(resp)
}

/// `If-None-Match: *` and `If-Match: <etag>` on a write: `(if_absent, if_version)`.
async fn write_conditions(
    s: &State,
    r: &Req,
    caller: &Caller,
    bucket: &str,
    key: &str,
) -> S3Result<(bool, u64)> {
    let if_absent = match r.header("if-none-match") {
        None => false,
        Some(v) if v.trim() == "*" => true,
        Some(_) => {
            return Err(S3Error::not_implemented(
                "If-None-Match with an ETag on writes (use *)",
            ));
        }
    };
    let mut if_version = 0;
    if let Some(m) = r.header("if-match") {
        let e =
            s.gw.ns
                .getattr(
                    caller,
                    &Ref::Path {
                        bucket: bucket.into(),
                        path: key.into(),
                    },
                )
                .await
                .map_err(|e| S3Error::from_gateway(e, On::Object))?;
        if e.kind != Kind::File {
            return Err(S3Error::no_such_key());
        }
        if !etag_matches(m, &super::quoted_etag(&e)) {
            return Err(S3Error::new(
                Code::PreconditionFailed,
                "At least one of the pre-conditions you specified did not hold",
            )
            .with("Condition", "If-Match"));
        }
        if_version = e.version;
    }
    Ok((if_absent, if_version))
}

/// A zero-byte key ending in `/`: an explicit directory.
async fn put_directory(
    s: &State,
    r: &mut Req,
    caller: &Caller,
    bucket: &str,
    key: &str,
    spec: BodySpec,
) -> S3Result<Response> {
    if spec.length != Some(0) {
        return Err(S3Error::invalid_argument(
            "a key ending in '/' names a directory and cannot hold data",
        ));
    }
    BodyReader::new(r.take_body(), spec).read_all(0).await?;
    s.gw.ns
        .mkdir_path(
            caller,
            bucket,
            key.trim_end_matches('/'),
            Perms::default(),
            true,
        )
        .await
        .map_err(|e| S3Error::from_gateway(e, On::Object))?;
    let mut resp = empty(StatusCode::OK);
    set(resp.headers_mut(), "etag", &format!("\"{EMPTY_MD5}\""));
    Ok(resp)
}

/// Maps the errors of reading an object path: anything that is not a file is "no such key".
fn read_error(e: Error) -> S3Error {
    match e {
        Error::IsDirectory { .. } | Error::NotDirectory { .. } | Error::InvalidName { .. } => {
            S3Error::no_such_key()
        }
        e => S3Error::from_gateway(e, On::Object),
    }
}

/// GetObject and HeadObject.
pub async fn get(s: &State, r: &mut Req, head: bool) -> S3Result<Response> {
    let bucket = r.bucket().to_string();
    let (_, caller) = authorize(s, r, &bucket, Access::Read).await?;
    let key = r.key().to_string();
    if check_key(&key).is_err() {
        return Err(S3Error::no_such_key());
    }
    if let Some(p) = r.q("partNumber")
        && p != "1"
    {
        return Err(S3Error::not_implemented(
            "GetObject of a part number other than 1",
        ));
    }
    let target = Ref::Path {
        bucket: bucket.clone(),
        path: key.clone(),
    };
    let dir_key = key.ends_with('/');
    let (info, layout) = if head || dir_key {
        let e =
            s.gw.ns
                .getattr(&caller, &target)
                .await
                .map_err(read_error)?;
        let ok = if dir_key {
            e.kind == Kind::Directory && e.marker
        } else {
            e.kind == Kind::File
        };
        if !ok {
            return Err(S3Error::no_such_key());
        }
        (ObjInfo::from_entry(&e), None)
    } else {
        let l = s.data.layout(&caller, &bucket, &key).await?;
        (ObjInfo::from_v1(&l.entry), Some(l))
    };
    check_conditions(&r.headers, "", &info.etag, info.mtime_ns, true).map_err(|e| {
        if e.code == Code::NotModified {
            e.with("ETag", info.etag.clone())
        } else {
            e
        }
    })?;
    let range = parse_range(r.header("range"), info.size)?;
    let mut resp = empty(StatusCode::OK);
    object_headers(resp.headers_mut(), &info, r);
    let want = range.clone().unwrap_or(0..info.size);
    if let Some(rg) = &range {
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
        set(
            resp.headers_mut(),
            "content-range",
            &format!("bytes {}-{}/{}", rg.start, rg.end - 1, info.size),
        );
    }
    set(
        resp.headers_mut(),
        "content-length",
        &(want.end - want.start).to_string(),
    );
    if let Some(l) = layout
        && want.end > want.start
    {
        *resp.body_mut() = s.data.body(l, want).await?;
    }
    Ok(resp)
}

/// DeleteObject (idempotent: a missing key is a success).
pub async fn delete(s: &State, r: &mut Req) -> S3Result<Response> {
    let bucket = r.bucket().to_string();
    let (_, caller) = authorize(s, r, &bucket, Access::Write).await?;
    let key = r.key().to_string();
    delete_key(s, &caller, &bucket, &key).await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

async fn delete_key(s: &State, caller: &Caller, bucket: &str, key: &str) -> S3Result<()> {
    if check_key(key).is_err() {
        return Ok(());
    }
    let r = if let Some(dir) = key.strip_suffix('/') {
        match s.gw.ns.rmdir_path(caller, bucket, dir).await {
            // A directory with children stays (it holds other keys); it stops being listed as
            // an object of its own.
            Err(Error::NotEmpty { .. }) => unmark_dir(s, caller, bucket, dir).await,
            r => r,
        }
    } else {
        s.gw.ns.unlink_path(caller, bucket, key, true).await
    };
    match r {
        Ok(())
        | Err(Error::NotFound { .. })
        | Err(Error::IsDirectory { .. })
        | Err(Error::NotDirectory { .. }) => Ok(()),
        Err(e) => Err(S3Error::from_gateway(e, On::Object)),
    }
}

/// Clears the "explicit directory" flag of a non-empty directory (its `dir/` key disappears
/// from listings; its children stay).
async fn unmark_dir(s: &State, caller: &Caller, bucket: &str, dir: &str) -> crate::Result<()> {
    let e =
        s.gw.ns
            .getattr(
                caller,
                &Ref::Path {
                    bucket: bucket.into(),
                    path: dir.into(),
                },
            )
            .await?;
    if e.kind == Kind::Directory && e.marker {
        crate::db::write_tx!(s.gw.db, tx => {
            tx.exec("UPDATE inodes SET marker = 0 WHERE id = $1", crate::db::args![e.id]).await?;
            tx.touch(e.id);
            tx.touch(e.parent_id);
            Ok(())
        });
    }
    Ok(())
}

/// DeleteObjects (batch, up to 1000 keys).
pub async fn delete_many(s: &State, r: &mut Req) -> S3Result<Response> {
    let bucket = r.bucket().to_string();
    let (_, caller) = authorize(s, r, &bucket, Access::Write).await?;
    // As AWS: a multi-object delete must prove its body intact (the digest is checked while
    // the body is read), so a corrupted list can never delete the wrong keys.
    let has_digest = r.header("content-md5").is_some()
        || r.header("x-amz-trailer").is_some()
        || Algo::ALL.iter().any(|a| r.header(&a.header()).is_some());
    if !has_digest {
        return Err(S3Error::new(
            Code::InvalidRequest,
            "Missing required header for this request: Content-MD5 (or an x-amz-checksum-* header)",
        ));
    }
    let body = read_small_body(r).await?;
    let doc = xml::parse(&body).map_err(S3Error::malformed_xml)?;
    if doc.name != "Delete" {
        return Err(S3Error::malformed_xml("the root element must be <Delete>"));
    }
    let quiet = doc.child_text("Quiet").is_some_and(|q| q.trim() == "true");
    let keys: Vec<String> = doc
        .all("Object")
        .map(|o| {
            o.child_text("Key")
                .map(str::to_string)
                .ok_or_else(|| S3Error::malformed_xml("an <Object> without <Key>"))
        })
        .collect::<S3Result<_>>()?;
    if keys.is_empty() || keys.len() > 1000 {
        return Err(S3Error::malformed_xml(
            "<Delete> must list 1 to 1000 objects",
        ));
    }
    let mut w = XmlWriter::new();
    w.root("DeleteResult");
    for k in &keys {
        match delete_key(s, &caller, &bucket, k).await {
            Ok(()) => {
                if !quiet {
                    w.open("Deleted");
                    w.elem("Key", k);
                    w.close("Deleted");
                }
            }
            Err(e) => {
                w.open("Error");
                w.elem("Key", k);
                w.elem("Code", e.code.as_str());
                w.elem("Message", &e.message);
                w.close("Error");
            }
        }
    }
    w.close("DeleteResult");
    Ok(xml_response(w.finish()))
}

/// `(bucket, key)` of an `x-amz-copy-source` header (`/bucket/key` or `bucket/key`, URL
/// encoded, optional `?versionId=`).
pub fn parse_copy_source(v: &str) -> S3Result<(String, String)> {
    let v = v.split_once('?').map_or(v, |(p, q)| {
        let _ = q;
        p
    });
    let decoded = percent_decode(v, false).ok_or_else(|| {
        S3Error::invalid_argument("x-amz-copy-source is not valid URL-encoded UTF-8")
    })?;
    let d = decoded.strip_prefix('/').unwrap_or(&decoded);
    match d.split_once('/') {
        Some((b, k)) if !b.is_empty() && !k.is_empty() => Ok((b.to_string(), k.to_string())),
        _ => Err(S3Error::invalid_argument(
            "Copy Source must mention the source bucket and key: sourcebucket/sourcekey",
        )),
    }
}

/// Reads the source of a copy: authorizes, checks the `x-amz-copy-source-if-*` conditions.
pub async fn copy_source(s: &State, r: &Req) -> S3Result<(cyxcloud_client::read::Layout, Caller)> {
    let (sb, sk) = parse_copy_source(r.header("x-amz-copy-source").unwrap_or(""))?;
    let (_, src_caller) = authorize(s, r, &sb, Access::Read).await?;
    if check_key(&sk).is_err() {
        return Err(S3Error::no_such_key());
    }
    let l = s.data.layout(&src_caller, &sb, &sk).await?;
    let info = ObjInfo::from_v1(&l.entry);
    check_conditions(
        &r.headers,
        "x-amz-copy-source-",
        &info.etag,
        info.mtime_ns,
        false,
    )?;
    Ok((l, src_caller))
}

/// CopyObject: a new version of the target referencing the source's chunks.
pub async fn copy(s: &State, r: &mut Req) -> S3Result<Response> {
    let bucket = r.bucket().to_string();
    let key = r.key().to_string();
    let (_, caller) = authorize(s, r, &bucket, Access::Write).await?;
    check_key(&key)?;
    check_object_acl(r)?;
    if key.ends_with('/') {
        return Err(S3Error::invalid_argument(
            "cannot copy onto a directory key",
        ));
    }
    let (src, _) = copy_source(s, r).await?;
    // The request body must be empty (and is verified like any other).
    read_small_body(r).await?;
    let (sb, sk) = parse_copy_source(r.header("x-amz-copy-source").unwrap_or(""))?;
    let replace = match r.header("x-amz-metadata-directive") {
        None | Some("COPY") => false,
        Some("REPLACE") => true,
        Some(d) => {
            return Err(S3Error::invalid_argument(format!(
                "Unknown metadata directive {d:?}"
            )));
        }
    };
    let replace_tags = match r.header("x-amz-tagging-directive") {
        None | Some("COPY") => false,
        Some("REPLACE") => true,
        Some(d) => {
            return Err(S3Error::invalid_argument(format!(
                "Unknown tagging directive {d:?}"
            )));
        }
    };
    if sb == bucket && sk == key && !replace && !replace_tags {
        return Err(S3Error::new(
            Code::InvalidRequest,
            "This copy request is illegal because it is trying to copy an object to itself without changing the object's metadata, storage class, website redirect location or encryption attributes.",
        ));
    }
    let (content_type, meta) = if replace {
        (
            r.header("content-type").unwrap_or("").to_string(),
            request_metadata(&r.headers)?,
        )
    } else {
        (
            src.entry.content_type.clone(),
            src.entry.user_metadata.clone().into_iter().collect(),
        )
    };
    let tags: Vec<(String, String)> = if replace_tags {
        parse_tagging(r.header("x-amz-tagging").unwrap_or(""))?
    } else {
        src.entry
            .xattrs
            .get(TAGGING_XATTR)
            .map(|b| super::util::parse_query(&String::from_utf8_lossy(b)).unwrap_or_default())
            .unwrap_or_default()
    };
    let (if_absent, if_version) = write_conditions(s, r, &caller, &bucket, &key).await?;
    let attrs = FileAttrs {
        etag: src.entry.etag.clone(),
        content_type,
        user_metadata: meta,
        ..Default::default()
    };
    let entry = install_copy(
        s, &caller, &bucket, &key, &src, attrs, if_absent, if_version,
    )
    .await?;
    let had = entry.meta.xattrs.contains_key(TAGGING_XATTR);
    store_tags(s, &caller, entry.id, &tags, had).await?;
    let mut w = XmlWriter::new();
    w.root("CopyObjectResult");
    w.elem("LastModified", &iso8601(entry.mtime_ns));
    w.elem("ETag", &super::quoted_etag(&entry));
    w.close("CopyObjectResult");
    Ok(xml_response(w.finish()))
}

/// Installs a version of `bucket/key` holding the bytes of `src` with `attrs`. Chunks are
/// referenced, not copied, whenever the cluster holds them healthy (the write protocol's
/// deduplication); otherwise (degraded cluster) the bytes are streamed through the client.
#[allow(clippy::too_many_arguments)]
pub async fn install_copy(
    s: &State,
    caller: &Caller,
    bucket: &str,
    key: &str,
    src: &cyxcloud_client::read::Layout,
    attrs: FileAttrs,
    if_absent: bool,
    if_version: u64,
) -> S3Result<crate::namespace::Entry> {
    let target = Ref::Path {
        bucket: bucket.into(),
        path: key.into(),
    };
    let gw_err = |e| S3Error::from_gateway(e, On::Object);
    if let Some(data) = &src.inline {
        return s
            .gw
            .writes
            .write_inline(caller, &target, data, if_version, if_absent, &attrs)
            .await
            .map_err(gw_err);
    }
    let chunks = chunk_metas(&src.chunks)?;
    if let Some(e) = reference_chunks(
        s,
        caller,
        &target,
        &chunks,
        src.entry.size,
        &attrs,
        if_absent,
        if_version,
    )
    .await?
    {
        return Ok(e);
    }
    // Fallback: stream the bytes.
    tracing::info!(
        bucket,
        key,
        "copy cannot reference every chunk; copying the bytes"
    );
    let opts = UploadOptions {
        content_type: attrs.content_type.clone(),
        user_metadata: attrs.user_metadata.clone().into_iter().collect(),
        size_hint: src.entry.size,
        etag: Some(attrs.etag.clone()).filter(|e| !e.is_empty()),
        md5: attrs.etag.is_empty(),
        if_absent,
        if_version,
        ..Default::default()
    };
    let stream = s.data.stream(src.clone(), 0..src.entry.size);
    let e = s.data.put_stream(bucket, key, stream, opts).await?;
    s.gw.ns
        .getattr(caller, &Ref::Id(e.id))
        .await
        .map_err(gw_err)
}

/// Chunk metadata of layout chunks, in order.
pub fn chunk_metas(chunks: &[v1::ChunkLayout]) -> S3Result<Vec<cyxcloud_core::ChunkMeta>> {
    chunks
        .iter()
        .map(|c| {
            let info = c
                .info
                .as_ref()
                .ok_or_else(|| S3Error::internal("chunk without info"))?;
            cyxcloud_proto::convert::chunk_meta(info).map_err(|e| S3Error::internal(e.message()))
        })
        .collect()
}

/// A version of `target` made of existing chunks, through the write protocol: each chunk is
/// placed as a duplicate of a stored one (a reference, no data). `Ok(None)` when some chunk is
/// not stored healthy enough to be referenced (the write is abandoned).
#[allow(clippy::too_many_arguments)]
pub async fn reference_chunks(
    s: &State,
    caller: &Caller,
    target: &Ref,
    chunks: &[cyxcloud_core::ChunkMeta],
    size: u64,
    attrs: &FileAttrs,
    if_absent: bool,
    if_version: u64,
) -> S3Result<Option<crate::namespace::Entry>> {
    let gw_err = |e| S3Error::from_gateway(e, On::Object);
    let w = &s.gw.writes;
    let begun = w
        .begin(
            caller,
            target,
            BeginParams {
                size_hint: size,
                if_absent,
                if_version,
                ..Default::default()
            },
        )
        .await
        .map_err(gw_err)?;
    let indexed: Vec<(u32, cyxcloud_core::ChunkMeta)> = chunks
        .iter()
        .enumerate()
        .map(|(i, m)| (i as u32, m.clone()))
        .collect();
    let mut all_dedup = true;
    for batch in indexed.chunks(256) {
        match w.place(caller, &begun.write_id, batch, &[]).await {
            Ok(p) if p.iter().all(|x| x.deduplicated) => {}
            Ok(_) | Err(Error::InvalidArgument(_)) | Err(Error::NoSpace(_)) => {
                all_dedup = false;
                break;
            }
            Err(e) => {
                let _ = w.abort(caller, &begun.write_id).await;
                return Err(gw_err(e));
            }
        }
    }
    if !all_dedup {
        let _ = w.abort(caller, &begun.write_id).await;
        return Ok(None);
    }
    let committed: Vec<Committed> = chunks
        .iter()
        .enumerate()
        .map(|(i, m)| Committed {
            index: i as u32,
            id: m.id,
            stored: Vec::new(),
        })
        .collect();
    match w
        .commit(caller, &begun.write_id, &committed, size, attrs)
        .await
    {
        Ok(e) => Ok(Some(e)),
        Err(e) => {
            let _ = w.abort(caller, &begun.write_id).await;
            Err(gw_err(e))
        }
    }
}

fn tag_xml(tags: &[(String, String)]) -> String {
    let mut w = XmlWriter::new();
    w.root("Tagging");
    w.open("TagSet");
    for (k, v) in tags {
        w.open("Tag");
        w.elem("Key", k);
        w.elem("Value", v);
        w.close("Tag");
    }
    w.close("TagSet");
    w.close("Tagging");
    w.finish()
}

async fn object_entry(
    s: &State,
    caller: &Caller,
    bucket: &str,
    key: &str,
) -> S3Result<crate::namespace::Entry> {
    if check_key(key).is_err() {
        return Err(S3Error::no_such_key());
    }
    let e =
        s.gw.ns
            .getattr(
                caller,
                &Ref::Path {
                    bucket: bucket.into(),
                    path: key.into(),
                },
            )
            .await
            .map_err(read_error)?;
    if e.kind != Kind::File {
        return Err(S3Error::no_such_key());
    }
    Ok(e)
}

/// GetObjectTagging.
pub async fn get_tagging(s: &State, r: &mut Req) -> S3Result<Response> {
    let bucket = r.bucket().to_string();
    let (_, caller) = authorize(s, r, &bucket, Access::Read).await?;
    let e = object_entry(s, &caller, &bucket, r.key()).await?;
    let tags = e
        .meta
        .xattrs
        .get(TAGGING_XATTR)
        .map(|b| super::util::parse_query(&String::from_utf8_lossy(b)).unwrap_or_default())
        .unwrap_or_default();
    Ok(xml_response(tag_xml(&tags)))
}

/// PutObjectTagging.
pub async fn put_tagging(s: &State, r: &mut Req) -> S3Result<Response> {
    let bucket = r.bucket().to_string();
    let (_, caller) = authorize(s, r, &bucket, Access::Write).await?;
    let key = r.key().to_string();
    let e = object_entry(s, &caller, &bucket, &key).await?;
    let body = read_small_body(r).await?;
    let doc = xml::parse(&body).map_err(S3Error::malformed_xml)?;
    let set = doc
        .child("TagSet")
        .filter(|_| doc.name == "Tagging")
        .ok_or_else(|| S3Error::malformed_xml("expected <Tagging><TagSet>"))?;
    let tags: Vec<(String, String)> = set
        .all("Tag")
        .map(|t| match (t.child_text("Key"), t.child_text("Value")) {
            (Some(k), v) => Ok((k.to_string(), v.unwrap_or("").to_string())),
            _ => Err(S3Error::malformed_xml("a <Tag> without <Key>")),
        })
        .collect::<S3Result<_>>()?;
    check_tags(&tags)?;
    let had = e.meta.xattrs.contains_key(TAGGING_XATTR);
    store_tags(s, &caller, e.id, &tags, had).await?;
    Ok(empty(StatusCode::OK))
}

/// DeleteObjectTagging.
pub async fn delete_tagging(s: &State, r: &mut Req) -> S3Result<Response> {
    let bucket = r.bucket().to_string();
    let (_, caller) = authorize(s, r, &bucket, Access::Write).await?;
    let e = object_entry(s, &caller, &bucket, r.key()).await?;
    let had = e.meta.xattrs.contains_key(TAGGING_XATTR);
    store_tags(s, &caller, e.id, &[], had).await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

/// The canned ACL document of something owned by `owner` (public buckets grant AllUsers READ).
pub async fn acl_xml(s: &State, owner: &str, public: bool) -> String {
    let name =
        s.gw.accounts
            .user(owner)
            .await
            .map(|u| u.name)
            .unwrap_or_else(|_| owner.to_string());
    let mut w = XmlWriter::new();
    w.root("AccessControlPolicy");
    w.open("Owner");
    w.elem("ID", owner);
    w.elem("DisplayName", &name);
    w.close("Owner");
    w.open("AccessControlList");
    w.out_raw(&format!(
        "<Grant><Grantee xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xsi:type=\"CanonicalUser\"><ID>{}</ID><DisplayName>{}</DisplayName></Grantee><Permission>FULL_CONTROL</Permission></Grant>",
        xml::escape(owner),
        xml::escape(&name)
    ));
    if public {
        w.out_raw("<Grant><Grantee xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xsi:type=\"Group\"><URI>http://acs.amazonaws.com/groups/global/AllUsers</URI></Grantee><Permission>READ</Permission></Grant>");
    }
    w.close("AccessControlList");
    w.close("AccessControlPolicy");
    w.finish()
}

/// GetObjectAcl: the object's owner has full control; public buckets add AllUsers READ.
pub async fn get_acl(s: &State, r: &mut Req) -> S3Result<Response> {
    let bucket = r.bucket().to_string();
    let (b, caller) = authorize(s, r, &bucket, Access::Read).await?;
    let e = object_entry(s, &caller, &bucket, r.key()).await?;
    Ok(xml_response(acl_xml(s, &e.owner_id, b.public_read).await))
}

/// PutObjectAcl: only the private canned ACLs (objects share their bucket's access).
pub async fn put_acl(s: &State, r: &mut Req) -> S3Result<Response> {
    let bucket = r.bucket().to_string();
    let (_, caller) = authorize(s, r, &bucket, Access::Write).await?;
    object_entry(s, &caller, &bucket, r.key()).await?;
    check_object_acl(r)?;
    let body = read_small_body(r).await?;
    if !body.is_empty() {
        return Err(S3Error::not_implemented(
            "object ACL documents (use canned ACLs)",
        ));
    }
    Ok(empty(StatusCode::OK))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc_7233_as_s3_does() {
        assert_eq!(parse_range(Some("bytes=0-9"), 100).unwrap(), Some(0..10));
        assert_eq!(parse_range(Some("bytes=90-"), 100).unwrap(), Some(90..100));
        assert_eq!(parse_range(Some("bytes=-10"), 100).unwrap(), Some(90..100));
        assert_eq!(parse_range(Some("bytes=-200"), 100).unwrap(), Some(0..100));
        assert_eq!(
            parse_range(Some("bytes=50-500"), 100).unwrap(),
            Some(50..100)
        );
        assert_eq!(parse_range(Some("bytes=0-1,5-6"), 100).unwrap(), None);
        assert_eq!(parse_range(Some("items=0-1"), 100).unwrap(), None);
        assert_eq!(parse_range(Some("bytes=5-2"), 100).unwrap(), None);
        assert_eq!(parse_range(None, 100).unwrap(), None);
        assert_eq!(
            parse_range(Some("bytes=100-"), 100).unwrap_err().code,
            Code::InvalidRange
        );
        assert_eq!(
            parse_range(Some("bytes=0-0"), 0).unwrap_err().code,
            Code::InvalidRange
        );
        assert_eq!(
            parse_range(Some("bytes=-0"), 10).unwrap_err().code,
            Code::InvalidRange
        );
    }

    #[test]
    fn conditions_follow_s3_precedence() {
        let h = |pairs: &[(&str, &str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            m
        };
        let etag = "\"abc\"";
        let t = 1_445_412_480_000_000_000i64; // Wed, 21 Oct 2015 07:28:00 GMT
        let ok = |hs: &[(&str, &str)]| check_conditions(&h(hs), "", etag, t, true);
        assert!(ok(&[("if-match", "\"abc\"")]).is_ok());
        assert!(ok(&[("if-match", "*")]).is_ok());
        assert_eq!(
            ok(&[("if-match", "\"x\"")]).unwrap_err().code,
            Code::PreconditionFailed
        );
        assert_eq!(
            ok(&[("if-none-match", "\"abc\"")]).unwrap_err().code,
            Code::NotModified
        );
        assert!(ok(&[("if-none-match", "\"x\"")]).is_ok());
        assert_eq!(
            ok(&[("if-modified-since", "Wed, 21 Oct 2015 07:28:00 GMT")])
                .unwrap_err()
                .code,
            Code::NotModified
        );
        assert!(ok(&[("if-modified-since", "Tue, 20 Oct 2015 07:28:00 GMT")]).is_ok());
        assert_eq!(
            ok(&[("if-unmodified-since", "Tue, 20 Oct 2015 07:28:00 GMT")])
                .unwrap_err()
                .code,
            Code::PreconditionFailed
        );
        // If-Match true wins over If-Unmodified-Since false; If-None-Match false wins over
        // If-Modified-Since.
        assert!(
            ok(&[
                ("if-match", "\"abc\""),
                ("if-unmodified-since", "Tue, 20 Oct 2015 07:28:00 GMT")
            ])
            .is_ok()
        );
        assert!(
            ok(&[
                ("if-none-match", "\"x\""),
                ("if-modified-since", "Wed, 21 Oct 2015 07:28:00 GMT")
            ])
            .is_ok()
        );
    }

    #[test]
    fn copy_sources_and_tags_parse() {
        assert_eq!(
            parse_copy_source("/b/a%20b/c").unwrap(),
            ("b".into(), "a b/c".into())
        );
        assert_eq!(
            parse_copy_source("b/k?versionId=1").unwrap(),
            ("b".into(), "k".into())
        );
        assert!(parse_copy_source("b").is_err());
        assert_eq!(parse_tagging("a=1&b=").unwrap().len(), 2);
        assert!(
            parse_tagging(
                &(0..11)
                    .map(|i| format!("k{i}=v"))
                    .collect::<Vec<_>>()
                    .join("&")
            )
            .is_err()
        );
        assert!(parse_tagging("a=1&a=2").is_err());
        assert_eq!(tag_count(Some(b"a=1&b=2")), 2);
    }
}
