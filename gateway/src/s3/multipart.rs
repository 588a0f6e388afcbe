//! Multipart uploads: CreateMultipartUpload, UploadPart, UploadPartCopy,
//! CompleteMultipartUpload, AbortMultipartUpload, ListParts, ListMultipartUploads.
//!
//! Each part is striped like any object into the staging bucket ([`store`]). Completion
//! checks the part list as S3 does (ascending, known parts with matching ETags, every part but
//! the last at least `s3.min_part_bytes`), then installs the target as the parts' chunks in
//! order (references, no data copy) with the ETag `md5(md5(part1) ‖ … ‖ md5(partN))-N`.

use std::time::Duration;

use axum::http::StatusCode;
use axum::response::Response;
use cyxcloud_client::UploadOptions;
use md5::{Digest, Md5};

use crate::accounts::Caller;
use crate::db::now_ns;
use crate::namespace::Ref;
use crate::writes::FileAttrs;

use super::body::BodyReader;
use super::error::{Code, On, S3Error, S3Result};
use super::object::{body_spec, check_key, copy_source, read_small_body, request_metadata};
use super::store::{self, PartRec, STAGING_BUCKET, UploadRec, part_path};
use super::util::iso8601;
use super::xml::{self, XmlWriter};
use super::{Access, Req, State, authorize, empty, xml_response};

/// Most parts of one upload, as S3.
pub const MAX_PARTS: u32 = 10_000;
/// Largest part, as S3.
pub const MAX_PART_BYTES: u64 = 5 << 30;
/// Largest object a multipart upload may assemble, as S3.
pub const MAX_MULTIPART_OBJECT: u64 = 5 << 40;

fn no_such_upload() -> S3Error {
    S3Error::new(
        Code::NoSuchUpload,
        "The specified upload does not exist. The upload ID may be invalid, or the upload may have been aborted or completed.",
    )
}

fn gw_err(e: crate::Error) -> S3Error {
    S3Error::from_gateway(e, On::Upload)
}

/// The upload named by `uploadId`, checked against the request's bucket and key.
async fn load_upload(s: &State, r: &Req) -> S3Result<(UploadRec, Caller)> {
    let bucket = r.bucket().to_string();
    let (_, caller) = authorize(s, r, &bucket, Access::Write).await?;
    let id = r.q("uploadId").unwrap_or("");
    let u = store::get_upload(&s.gw, id)
        .await
        .map_err(gw_err)?
        .filter(|u| u.bucket == bucket && u.key == r.key())
        .ok_or_else(no_such_upload)?;
    Ok((u, caller))
}

fn part_number(r: &Req) -> S3Result<u32> {
    r.q("partNumber")
        .and_then(|p| p.parse::<u32>().ok())
        .filter(|p| (1..=MAX_PARTS).contains(p))
        .ok_or_else(|| {
            S3Error::invalid_argument(
                "Part number must be an integer between 1 and 10000, inclusive",
            )
        })
}

async fn user_name(s: &State, id: &str) -> String {
    s.gw.accounts
        .user(id)
        .await
        .map(|u| u.name)
        .unwrap_or_else(|_| id.to_string())
}

/// CreateMultipartUpload.
pub async fn create(s: &State, r: &mut Req) -> S3Result<Response> {
    let bucket = r.bucket().to_string();
    let (b, caller) = authorize(s, r, &bucket, Access::Write).await?;
    let key = r.key().to_string();
    check_key(&key)?;
    if key.ends_with('/') {
        return Err(S3Error::invalid_argument(
            "a key ending in '/' names a directory and cannot hold data",
        ));
    }
    if let Some(a) = r.header("x-amz-acl")
        && !matches!(
            a,
            "private" | "bucket-owner-full-control" | "bucket-owner-read"
        )
    {
        return Err(S3Error::not_implemented(&format!("the object ACL {a:?}")));
    }
    let mut meta = request_metadata(&r.headers)?;
    if let Some(t) = r.header("x-amz-tagging") {
        let tags = super::object::parse_tagging(t)?;
        if !tags.is_empty() {
            meta.insert(":x-amz-tagging".into(), t.to_string());
        }
    }
    read_small_body(r).await?;
    let id = {
        let mut b = [0u8; 24];
        getrandom::fill(&mut b).map_err(|e| S3Error::internal(format!("no randomness: {e}")))?;
        hex::encode(b)
    };
    let u = UploadRec {
        id: id.clone(),
        bucket: bucket.clone(),
        key: key.clone(),
        owner_id: b.owner_id.clone(),
        initiator_id: caller.user_id.clone(),
        content_type: r.header("content-type").unwrap_or("").to_string(),
        meta,
        created_ns: now_ns(),
    };
    store::create_upload(&s.gw, &u).await.map_err(gw_err)?;
    let mut w = XmlWriter::new();
    w.root("InitiateMultipartUploadResult");
    w.elem("Bucket", &bucket);
    w.elem("Key", &key);
    w.elem("UploadId", &id);
    w.close("InitiateMultipartUploadResult");
    Ok(xml_response(w.finish()))
}

/// Options of a part upload: always chunked (a part's chunks become the object's).
fn part_options(len: u64) -> UploadOptions {
    UploadOptions {
        md5: true,
        size_hint: len.max(cyxcloud_client::write::INLINE_THRESHOLD as u64 + 1),
        ..Default::default()
    }
}

async fn record_part(
    s: &State,
    u: &UploadRec,
    number: u32,
    e: &cyxcloud_proto::v1::Entry,
) -> S3Result<()> {
    let p = PartRec {
        number,
        etag: e.etag.clone(),
        size: e.size,
        inode_id: e.id,
        version_id: e.version,
        created_ns: e.mtime_ns,
    };
    if !store::put_part(&s.gw, &u.id, &p).await.map_err(gw_err)? {
        // Aborted (or completed) meanwhile: drop what was just stored.
        let _ =
            s.gw.ns
                .unlink_path(
                    &Caller::system(),
                    STAGING_BUCKET,
                    &part_path(&u.id, number),
                    true,
                )
                .await;
        return Err(no_such_upload());
    }
    Ok(())
}

/// UploadPart.
pub async fn upload_part(s: &State, r: &mut Req) -> S3Result<Response> {
    let (u, _) = load_upload(s, r).await?;
    let number = part_number(r)?;
    let spec = body_spec(r, MAX_PART_BYTES)?;
    let Some(len) = spec.length else {
        return Err(S3Error::new(
            Code::MissingContentLength,
            "You must provide the Content-Length HTTP header.",
        ));
    };
    let reader = BodyReader::new(r.take_body(), spec);
    let (e, digests) = s
        .data
        .put(
            STAGING_BUCKET,
            &part_path(&u.id, number),
            reader,
            part_options(len),
        )
        .await?;
    record_part(s, &u, number, &e).await?;
    let mut resp = empty(StatusCode::OK);
    let h = resp.headers_mut();
    if let Ok(v) = format!("\"{}\"", e.etag).parse() {
        h.insert("etag", v);
    }
    if let Some((a, v)) = digests.checksum
        && let (Ok(n), Ok(v)) = (
            axum::http::HeaderName::from_bytes(a.header().as_bytes()),
            axum::http::HeaderValue::from_str(&v),
        )
    {
        h.insert(n, v);
    }
    Ok(resp)
}

/// UploadPartCopy: a part made of a byte range of another object.
pub async fn upload_part_copy(s: &State, r: &mut Req) -> S3Result<Response> {
    let (u, _) = load_upload(s, r).await?;
    let number = part_number(r)?;
    let (src, _) = copy_source(s, r).await?;
    read_small_body(r).await?;
    let size = src.entry.size;
    let range = match r.header("x-amz-copy-source-range") {
        None => 0..size,
        Some(v) => {
            let bad = || {
                S3Error::invalid_argument(format!(
                    "Range specified is not valid for source object of size: {size}"
                ))
            };
            let spec = v.trim().strip_prefix("bytes=").ok_or_else(bad)?;
            let (a, b) = spec.split_once('-').ok_or_else(bad)?;
            let (a, b): (u64, u64) = (
                a.trim().parse().map_err(|_| bad())?,
                b.trim().parse().map_err(|_| bad())?,
            );
            if a > b || b >= size {
                return Err(bad());
            }
            a..b + 1
        }
    };
    if range.end - range.start > MAX_PART_BYTES {
        return Err(S3Error::new(
            Code::EntityTooLarge,
            "the copied range is larger than 5 GiB",
        ));
    }
    let len = range.end - range.start;
    let stream = s.data.stream(src, range);
    let e = s
        .data
        .put_stream(
            STAGING_BUCKET,
            &part_path(&u.id, number),
            stream,
            part_options(len),
        )
        .await?;
    record_part(s, &u, number, &e).await?;
    let mut w = XmlWriter::new();
    w.root("CopyPartResult");
    w.elem("LastModified", &iso8601(e.mtime_ns));
    w.elem("ETag", &format!("\"{}\"", e.etag));
    w.close("CopyPartResult");
    Ok(xml_response(w.finish()))
}

/// Every part of an upload.
async fn all_parts(s: &State, id: &str) -> S3Result<Vec<PartRec>> {
    let mut out = Vec::new();
    loop {
        let marker = out.last().map_or(0, |p: &PartRec| p.number);
        let batch = store::list_parts(&s.gw, id, marker, 1000)
            .await
            .map_err(gw_err)?;
        let n = batch.len();
        out.extend(batch);
        if n < 1000 {
            return Ok(out);
        }
    }
}

/// Removes the staged data of an upload's parts.
async fn drop_staged(s: &State, id: &str, parts: &[PartRec]) {
    for p in parts {
        if let Err(e) =
            s.gw.ns
                .unlink_path(
                    &Caller::system(),
                    STAGING_BUCKET,
                    &part_path(id, p.number),
                    true,
                )
                .await
            && !matches!(e, crate::Error::NotFound { .. })
        {
            tracing::warn!(upload = id, part = p.number, error = %e, "dropping a staged part");
        }
    }
}

/// CompleteMultipartUpload.
pub async fn complete(s: &State, r: &mut Req) -> S3Result<Response> {
    let (u, caller) = load_upload(s, r).await?;
    let body = read_small_body(r).await?;
    let doc = xml::parse(&body).map_err(S3Error::malformed_xml)?;
    if doc.name != "CompleteMultipartUpload" {
        return Err(S3Error::malformed_xml(
            "the root element must be <CompleteMultipartUpload>",
        ));
    }
    let mut listed: Vec<(u32, String)> = Vec::new();
    for p in doc.all("Part") {
        let n = p
            .child_text("PartNumber")
            .and_then(|n| n.trim().parse::<u32>().ok())
            .ok_or_else(|| S3Error::malformed_xml("a <Part> without a valid <PartNumber>"))?;
        let etag = p
            .child_text("ETag")
            .ok_or_else(|| S3Error::malformed_xml("a <Part> without <ETag>"))?
            .trim()
            .trim_matches('"')
            .to_string();
        if let Some((last, _)) = listed.last()
            && *last >= n
        {
            return Err(S3Error::new(
                Code::InvalidPartOrder,
                "The list of parts was not in ascending order. The parts list must be specified in order by part number.",
            ));
        }
        listed.push((n, etag));
    }
    if listed.is_empty() {
        return Err(S3Error::malformed_xml("You must specify at least one part"));
    }
    let stored = all_parts(s, &u.id).await?;
    let by_number: std::collections::HashMap<u32, &PartRec> =
        stored.iter().map(|p| (p.number, p)).collect();
    let mut chunks = Vec::new();
    let mut md5s = Md5::new();
    let mut total = 0u64;
    let mut layouts = Vec::new();
    for (i, (n, etag)) in listed.iter().enumerate() {
        let invalid = || {
            S3Error::new(
                Code::InvalidPart,
                "One or more of the specified parts could not be found. The part might not have been uploaded, or the specified entity tag might not have matched the part's entity tag.",
            )
            .with("PartNumber", n.to_string())
            .with("ETag", etag.clone())
        };
        let p = by_number.get(n).ok_or_else(invalid)?;
        if &p.etag != etag {
            return Err(invalid());
        }
        if i + 1 < listed.len() && p.size < s.cfg.min_part_bytes {
            return Err(S3Error::new(
                Code::EntityTooSmall,
                "Your proposed upload is smaller than the minimum allowed object size.",
            )
            .with("PartNumber", n.to_string())
            .with("ProposedSize", p.size.to_string())
            .with("MinSizeAllowed", s.cfg.min_part_bytes.to_string()));
        }
        let l = s
            .data
            .layout(&Caller::system(), STAGING_BUCKET, &part_path(&u.id, *n))
            .await
            .map_err(|_| invalid())?;
        if l.entry.etag != p.etag || l.entry.size != p.size {
            return Err(invalid());
        }
        if l.inline.as_ref().is_some_and(|d| !d.is_empty()) {
            return Err(S3Error::internal(format!(
                "part {n} of upload {} is stored inline",
                u.id
            )));
        }
        chunks.extend(super::object::chunk_metas(&l.chunks)?);
        let raw = hex::decode(&p.etag).map_err(|_| invalid())?;
        md5s.update(&raw);
        total += p.size;
        layouts.push(l);
    }
    if total > MAX_MULTIPART_OBJECT {
        return Err(S3Error::new(
            Code::EntityTooLarge,
            "the object would be larger than 5 TiB",
        ));
    }
    let etag = format!("{}-{}", hex::encode(md5s.finalize()), listed.len());
    let bucket = u.bucket.clone();
    let key = u.key.clone();
    let mut meta = u.meta.clone();
    let tagging = meta.remove(":x-amz-tagging");
    let attrs = FileAttrs {
        etag: etag.clone(),
        content_type: u.content_type.clone(),
        user_metadata: meta,
        ..Default::default()
    };
    let target = Ref::Path {
        bucket: bucket.clone(),
        path: key.clone(),
    };
    let entry = match super::object::reference_chunks(
        s, &caller, &target, &chunks, total, &attrs, false, 0,
    )
    .await?
    {
        Some(e) => e.id,
        None => {
            tracing::info!(upload = %u.id, "parts cannot all be referenced; copying their bytes");
            let client = s.data.clone();
            let parts = futures::stream::iter(layouts.into_iter().map(move |l| {
                let size = l.entry.size;
                client.stream(l, 0..size)
            }))
            .flatten();
            let opts = UploadOptions {
                content_type: attrs.content_type.clone(),
                user_metadata: attrs.user_metadata.clone().into_iter().collect(),
                size_hint: total,
                etag: Some(etag.clone()),
                ..Default::default()
            };
            s.data
                .put_stream(&bucket, &key, Box::pin(parts), opts)
                .await?
                .id
        }
    };
    if let Some(t) = tagging {
        let _ =
            s.gw.ns
                .set_xattr(
                    &caller,
                    &Ref::Id(entry),
                    super::object::TAGGING_XATTR,
                    t.as_bytes(),
                    0,
                )
                .await;
    }
    store::delete_upload(&s.gw, &u.id).await.map_err(gw_err)?;
    drop_staged(s, &u.id, &stored).await;
    let mut w = XmlWriter::new();
    w.root("CompleteMultipartUploadResult");
    w.elem("Location", &format!("/{bucket}/{key}"));
    w.elem("Bucket", &bucket);
    w.elem("Key", &key);
    w.elem("ETag", &format!("\"{etag}\""));
    w.close("CompleteMultipartUploadResult");
    Ok(xml_response(w.finish()))
}

use futures::StreamExt;

async fn abort_upload(s: &State, id: &str) -> S3Result<bool> {
    let parts = all_parts(s, id).await?;
    let existed = store::delete_upload(&s.gw, id).await.map_err(gw_err)?;
    drop_staged(s, id, &parts).await;
    Ok(existed)
}

/// AbortMultipartUpload.
pub async fn abort(s: &State, r: &mut Req) -> S3Result<Response> {
    let (u, _) = load_upload(s, r).await?;
    if !abort_upload(s, &u.id).await? {
        return Err(no_such_upload());
    }
    Ok(empty(StatusCode::NO_CONTENT))
}

/// Aborts every upload of a deleted bucket.
pub async fn abort_bucket_uploads(s: &State, bucket: &str) {
    match store::bucket_uploads(&s.gw, bucket).await {
        Ok(ids) => {
            for id in ids {
                if let Err(e) = abort_upload(s, &id).await {
                    tracing::warn!(upload = %id, error = %e, "aborting an upload of a deleted bucket");
                }
            }
        }
        Err(e) => tracing::warn!(bucket, error = %e, "listing uploads of a deleted bucket"),
    }
}

fn max_param(r: &Req, name: &str) -> S3Result<u32> {
    match r.q(name) {
        None => Ok(1000),
        Some(v) => v
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .map(|n| n.min(1000) as u32)
            .ok_or_else(|| {
                S3Error::invalid_argument(format!("{name} must be a non-negative integer"))
            }),
    }
}

/// ListParts.
pub async fn list_parts(s: &State, r: &mut Req) -> S3Result<Response> {
    let (u, _) = load_upload(s, r).await?;
    let max = max_param(r, "max-parts")?;
    let marker: u32 = match r.q("part-number-marker") {
        None => 0,
        Some(m) => m
            .trim()
            .parse()
            .map_err(|_| S3Error::invalid_argument("part-number-marker must be an integer"))?,
    };
    let mut parts = store::list_parts(&s.gw, &u.id, marker, max + 1)
        .await
        .map_err(gw_err)?;
    let truncated = parts.len() > max as usize;
    parts.truncate(max as usize);
    let initiator = user_name(s, &u.initiator_id).await;
    let owner = user_name(s, &u.owner_id).await;
    let mut w = XmlWriter::new();
    w.root("ListPartsResult");
    w.elem("Bucket", &u.bucket);
    w.elem("Key", &u.key);
    w.elem("UploadId", &u.id);
    w.open("Initiator");
    w.elem("ID", &u.initiator_id);
    w.elem("DisplayName", &initiator);
    w.close("Initiator");
    w.open("Owner");
    w.elem("ID", &u.owner_id);
    w.elem("DisplayName", &owner);
    w.close("Owner");
    w.elem("StorageClass", "STANDARD");
    w.elem("PartNumberMarker", &marker.to_string());
    if let Some(last) = parts.last() {
        w.elem("NextPartNumberMarker", &last.number.to_string());
    }
    w.elem("MaxParts", &max.to_string());
    w.elem("IsTruncated", if truncated { "true" } else { "false" });
    for p in &parts {
        w.open("Part");
        w.elem("PartNumber", &p.number.to_string());
        w.elem("LastModified", &iso8601(p.created_ns));
        w.elem("ETag", &format!("\"{}\"", p.etag));
        w.elem("Size", &p.size.to_string());
        w.close("Part");
    }
    w.close("ListPartsResult");
    Ok(xml_response(w.finish()))
}

/// ListMultipartUploads (prefix, delimiter, key-marker, upload-id-marker, max-uploads).
pub async fn list_uploads(s: &State, r: &mut Req) -> S3Result<Response> {
    let bucket = r.bucket().to_string();
    authorize(s, r, &bucket, Access::Write).await?;
    let max = max_param(r, "max-uploads")?;
    let prefix = r.q("prefix").unwrap_or("").to_string();
    let delimiter = r.q("delimiter").unwrap_or("").to_string();
    let key_marker = r.q("key-marker").unwrap_or("").to_string();
    let id_marker = if key_marker.is_empty() {
        String::new()
    } else {
        r.q("upload-id-marker").unwrap_or("").to_string()
    };
    let mut uploads: Vec<UploadRec> = Vec::new();
    let mut prefixes: Vec<String> = Vec::new();
    let (mut km, mut im) = (key_marker.clone(), id_marker.clone());
    let mut truncated = false;
    let mut last: Option<(String, String)> = None;
    'outer: loop {
        let batch = store::list_uploads(&s.gw, &bucket, &prefix, &km, &im, 1000)
            .await
            .map_err(gw_err)?;
        let n = batch.len();
        for u in batch {
            (km, im) = (u.key.clone(), u.id.clone());
            let rolled = (!delimiter.is_empty())
                .then(|| u.key[prefix.len()..].find(&delimiter))
                .flatten()
                .map(|i| u.key[..prefix.len() + i + delimiter.len()].to_string());
            if let Some(cp) = &rolled
                && prefixes.last() == Some(cp)
            {
                continue;
            }
            if uploads.len() + prefixes.len() == max as usize {
                truncated = true;
                break 'outer;
            }
            last = Some((u.key.clone(), u.id.clone()));
            match rolled {
                Some(cp) => prefixes.push(cp),
                None => uploads.push(u),
            }
        }
        if n < 1000 {
            break;
        }
    }
    let mut w = XmlWriter::new();
    w.root("ListMultipartUploadsResult");
    w.elem("Bucket", &bucket);
    w.elem("KeyMarker", &key_marker);
    w.elem("UploadIdMarker", &id_marker);
    if truncated && let Some((k, i)) = &last {
        w.elem("NextKeyMarker", k);
        w.elem("NextUploadIdMarker", i);
    }
    if !delimiter.is_empty() {
        w.elem("Delimiter", &delimiter);
    }
    w.elem("Prefix", &prefix);
    w.elem("MaxUploads", &max.to_string());
    w.elem("IsTruncated", if truncated { "true" } else { "false" });
    for u in &uploads {
        let initiator = user_name(s, &u.initiator_id).await;
        let owner = user_name(s, &u.owner_id).await;
        w.open("Upload");
        w.elem("Key", &u.key);
        w.elem("UploadId", &u.id);
        w.open("Initiator");
        w.elem("ID", &u.initiator_id);
        w.elem("DisplayName", &initiator);
        w.close("Initiator");
        w.open("Owner");
        w.elem("ID", &u.owner_id);
        w.elem("DisplayName", &owner);
        w.close("Owner");
        w.elem("StorageClass", "STANDARD");
        w.elem("Initiated", &iso8601(u.created_ns));
        w.close("Upload");
    }
    for p in &prefixes {
        w.open("CommonPrefixes");
        w.elem("Prefix", p);
        w.close("CommonPrefixes");
    }
    w.close("ListMultipartUploadsResult");
    Ok(xml_response(w.finish()))
}

/// How often the `multipart-expiry` worker looks for abandoned uploads.
pub fn expiry_interval(s: &State) -> Duration {
    Duration::from_secs((s.cfg.multipart_expiry_secs / 10).clamp(1, 3600))
}

/// Aborts (up to 100) uploads older than `s3.multipart_expiry_secs`: one step of the
/// `multipart-expiry` worker. An upload that cannot be aborted now is tried again next time.
pub async fn expire_once(s: &State) -> std::result::Result<(), cyxcloud_daemon::worker::WorkError> {
    let before = now_ns() - (s.cfg.multipart_expiry_secs as i64).saturating_mul(1_000_000_000);
    let old = store::old_uploads(&s.gw, before, 100).await?;
    for u in old {
        match abort_upload(s, &u.id).await {
            Ok(_) => {
                tracing::info!(upload = %u.id, bucket = %u.bucket, key = %u.key, "expired multipart upload aborted")
            }
            Err(e) => tracing::warn!(upload = %u.id, error = %e, "aborting an expired upload"),
        }
    }
    Ok(())
}
