//! Bucket operations: ListBuckets, CreateBucket (canned ACL `public-read` makes a bucket
//! readable by anyone), HeadBucket, DeleteBucket (refused while it holds objects),
//! GetBucketLocation, bucket ACLs (canned), GetBucketVersioning (never enabled).

use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;

use crate::db::{args, write_tx};

use super::error::{On, S3Error, S3Result};
use super::object::{acl_xml, read_small_body};
use super::util::iso8601;
use super::xml::{self, XmlWriter};
use super::{Access, Req, State, authorize, empty, multipart, xml_response};

/// ListBuckets: the caller's buckets (an admin sees every bucket).
pub async fn list_buckets(s: &State, r: &mut Req) -> S3Result<Response> {
    let caller = r.signed()?.clone();
    let buckets =
        s.gw.ns
            .list_buckets(&caller)
            .await
            .map_err(|e| S3Error::from_gateway(e, On::Bucket))?;
    let name =
        s.gw.accounts
            .user(&caller.user_id)
            .await
            .map(|u| u.name)
            .unwrap_or_else(|_| caller.user_id.clone());
    let mut w = XmlWriter::new();
    w.root("ListAllMyBucketsResult");
    w.open("Owner");
    w.elem("ID", &caller.user_id);
    w.elem("DisplayName", &name);
    w.close("Owner");
    w.open("Buckets");
    for b in buckets
        .iter()
        .filter(|b| crate::namespace::check_bucket_name(&b.name).is_ok())
    {
        w.open("Bucket");
        w.elem("Name", &b.name);
        w.elem("CreationDate", &iso8601(b.btime_ns));
        w.close("Bucket");
    }
    w.close("Buckets");
    w.close("ListAllMyBucketsResult");
    Ok(xml_response(w.finish()))
}

/// `public-read` → true, private ACLs → false, anything else refused.
fn canned_acl(r: &Req) -> S3Result<bool> {
    match r.header("x-amz-acl") {
        None | Some("private") => Ok(false),
        Some("public-read") => Ok(true),
        Some(a) => Err(S3Error::not_implemented(&format!(
            "the canned ACL {a:?} (buckets are private or public-read)"
        ))),
    }
}

/// CreateBucket.
pub async fn create(s: &State, r: &mut Req) -> S3Result<Response> {
    let caller = r.signed()?.clone();
    let name = r.bucket().to_string();
    let public = canned_acl(r)?;
    let body = read_small_body(r).await?;
    if !body.iter().all(u8::is_ascii_whitespace) {
        let doc = xml::parse(&body).map_err(S3Error::malformed_xml)?;
        if doc.name != "CreateBucketConfiguration" {
            return Err(S3Error::malformed_xml(
                "the root element must be <CreateBucketConfiguration>",
            ));
        }
    }
    s.gw.ns
        .create_bucket(&caller, &name, public)
        .await
        .map_err(|e| S3Error::from_gateway(e, On::Bucket))?;
    let mut resp = empty(StatusCode::OK);
    if let Ok(v) = HeaderValue::from_str(&format!("/{name}")) {
        resp.headers_mut().insert("location", v);
    }
    Ok(resp)
}

/// HeadBucket.
pub async fn head(s: &State, r: &mut Req) -> S3Result<Response> {
    let bucket = r.bucket().to_string();
    authorize(s, r, &bucket, Access::Read).await?;
    let mut resp = empty(StatusCode::OK);
    if let Ok(v) = HeaderValue::from_str(&s.cfg.region) {
        resp.headers_mut().insert("x-amz-bucket-region", v);
    }
    Ok(resp)
}

/// DeleteBucket: only an empty bucket; its unfinished multipart uploads are aborted.
pub async fn delete(s: &State, r: &mut Req) -> S3Result<Response> {
    let bucket = r.bucket().to_string();
    let (_, caller) = authorize(s, r, &bucket, Access::Write).await?;
    read_small_body(r).await?;
    s.gw.ns
        .delete_bucket(&caller, &bucket)
        .await
        .map_err(|e| S3Error::from_gateway(e, On::Bucket))?;
    multipart::abort_bucket_uploads(s, &bucket).await;
    Ok(empty(StatusCode::NO_CONTENT))
}

/// GetBucketLocation (`us-east-1` is reported as an empty constraint, as S3 does).
pub async fn location(s: &State, r: &mut Req) -> S3Result<Response> {
    let bucket = r.bucket().to_string();
    authorize(s, r, &bucket, Access::Read).await?;
    let mut w = XmlWriter::new();
    if s.cfg.region == "us-east-1" {
        w.out_raw(&format!(
            "<LocationConstraint xmlns=\"{}\"/>",
            super::xml::S3_NS
        ));
    } else {
        w.root("LocationConstraint");
        w.out_raw(&xml::escape(&s.cfg.region));
        w.close("LocationConstraint");
    }
    Ok(xml_response(w.finish()))
}

/// GetBucketAcl.
pub async fn get_acl(s: &State, r: &mut Req) -> S3Result<Response> {
    let bucket = r.bucket().to_string();
    let (b, _) = authorize(s, r, &bucket, Access::Read).await?;
    Ok(xml_response(acl_xml(s, &b.owner_id, b.public_read).await))
}

/// PutBucketAcl with a canned ACL (`private` or `public-read`).
pub async fn put_acl(s: &State, r: &mut Req) -> S3Result<Response> {
    let bucket = r.bucket().to_string();
    let (b, _) = authorize(s, r, &bucket, Access::Write).await?;
    if r.header("x-amz-acl").is_none() {
        return Err(S3Error::not_implemented(
            "ACL documents (use the x-amz-acl canned ACLs)",
        ));
    }
    let public = canned_acl(r)?;
    let body = read_small_body(r).await?;
    if !body.is_empty() {
        return Err(S3Error::not_implemented(
            "ACL documents (use the x-amz-acl canned ACLs)",
        ));
    }
    if public != b.public_read {
        set_public(s, b.id, public)
            .await
            .map_err(|e| S3Error::from_gateway(e, On::Bucket))?;
    }
    Ok(empty(StatusCode::OK))
}

async fn set_public(s: &State, id: u64, public: bool) -> crate::Result<()> {
    write_tx!(s.gw.db, tx => {
        tx.exec("UPDATE inodes SET public_read = $2 WHERE id = $1", args![id, public]).await?;
        tx.touch(id);
        Ok(())
    });
    Ok(())
}

/// GetBucketVersioning: versioning is never enabled.
pub async fn get_versioning(s: &State, r: &mut Req) -> S3Result<Response> {
    let bucket = r.bucket().to_string();
    authorize(s, r, &bucket, Access::Read).await?;
    let mut w = XmlWriter::new();
    w.out_raw(&format!(
        "<VersioningConfiguration xmlns=\"{}\"/>",
        super::xml::S3_NS
    ));
    Ok(xml_response(w.finish()))
}
