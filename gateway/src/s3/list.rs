//! ListObjectsV2 (prefix, delimiter, max-keys, continuation-token, start-after, fetch-owner,
//! encoding-type) and ListObjects v1 (marker). Both page through the namespace's S3 listing,
//! which walks the bucket tree in key order and never scans more than the page needs.

use std::collections::HashMap;

use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

use crate::namespace::{Entry, Kind, Listing};

use super::error::{On, S3Error, S3Result};
use super::util::{iso8601, uri_encode};
use super::xml::XmlWriter;
use super::{Access, Req, State, authorize, quoted_etag, xml_response};

/// Largest page, as S3.
pub const MAX_KEYS: u32 = 1000;

struct Params {
    prefix: String,
    delimiter: String,
    start_after: String,
    max_keys: u32,
    url: bool,
}

fn params(r: &Req, start_after: String) -> S3Result<Params> {
    let max_keys = match r.q("max-keys") {
        None => MAX_KEYS,
        Some(v) => v
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| S3Error::invalid_argument("max-keys must be a non-negative integer"))?
            .min(MAX_KEYS as i64) as u32,
    };
    let url = match r.q("encoding-type") {
        None => false,
        Some("url") => true,
        Some(e) => {
            return Err(S3Error::invalid_argument(format!(
                "Invalid Encoding Method specified in Request: {e:?}"
            )));
        }
    };
    Ok(Params {
        prefix: r.q("prefix").unwrap_or("").to_string(),
        delimiter: r.q("delimiter").unwrap_or("").to_string(),
        start_after,
        max_keys,
        url,
    })
}

async fn run(s: &State, r: &Req, p: &Params) -> S3Result<Listing> {
    let bucket = r.bucket().to_string();
    let (_, caller) = authorize(s, r, &bucket, Access::Read).await?;
    if p.max_keys == 0 {
        return Ok(Listing::default());
    }
    s.gw.ns
        .list_objects(
            &caller,
            &bucket,
            &p.prefix,
            &p.delimiter,
            &p.start_after,
            p.max_keys,
        )
        .await
        .map_err(|e| S3Error::from_gateway(e, On::Bucket))
}

/// The S3 key of a listed entry (`dir/` for explicit directories).
fn key_of(e: &Entry) -> String {
    if e.kind == Kind::File {
        e.path.clone()
    } else {
        format!("{}/", e.path)
    }
}

fn enc(url: bool, s: &str) -> String {
    if url {
        uri_encode(s, true)
    } else {
        s.to_string()
    }
}

async fn write_contents(s: &State, w: &mut XmlWriter, l: &Listing, url: bool, owner: bool) {
    let mut names: HashMap<String, String> = HashMap::new();
    for e in &l.objects {
        w.open("Contents");
        w.elem("Key", &enc(url, &key_of(e)));
        w.elem("LastModified", &iso8601(e.mtime_ns));
        let etag = if e.kind == Kind::File {
            quoted_etag(e)
        } else {
            format!("\"{}\"", super::object::EMPTY_MD5)
        };
        w.elem("ETag", &etag);
        w.elem(
            "Size",
            &(if e.kind == Kind::File { e.size } else { 0 }).to_string(),
        );
        if owner {
            if !names.contains_key(&e.owner_id) {
                let n =
                    s.gw.accounts
                        .user(&e.owner_id)
                        .await
                        .map(|u| u.name)
                        .unwrap_or_else(|_| e.owner_id.clone());
                names.insert(e.owner_id.clone(), n);
            }
            w.open("Owner");
            w.elem("ID", &e.owner_id);
            w.elem("DisplayName", &names[&e.owner_id]);
            w.close("Owner");
        }
        w.elem("StorageClass", "STANDARD");
        w.close("Contents");
    }
    for p in &l.common_prefixes {
        w.open("CommonPrefixes");
        w.elem("Prefix", &enc(url, p));
        w.close("CommonPrefixes");
    }
}

fn token(next: &str) -> String {
    B64.encode(format!("1:{next}"))
}

fn untoken(t: &str) -> S3Result<String> {
    let bad = || S3Error::invalid_argument("The continuation token provided is incorrect");
    let b = B64.decode(t.trim()).map_err(|_| bad())?;
    let s = String::from_utf8(b).map_err(|_| bad())?;
    s.strip_prefix("1:").map(str::to_string).ok_or_else(bad)
}

/// ListObjectsV2.
pub async fn list_v2(s: &State, r: &mut Req) -> S3Result<Response> {
    let token_in = r.q("continuation-token").map(str::to_string);
    let start_after = match &token_in {
        Some(t) => untoken(t)?,
        None => r.q("start-after").unwrap_or("").to_string(),
    };
    let p = params(r, start_after)?;
    let fetch_owner = r.q("fetch-owner") == Some("true");
    let l = run(s, r, &p).await?;
    let mut w = XmlWriter::new();
    w.root("ListBucketResult");
    w.elem("Name", r.bucket());
    w.elem("Prefix", &enc(p.url, &p.prefix));
    if let Some(sa) = r.q("start-after") {
        w.elem("StartAfter", &enc(p.url, sa));
    }
    if let Some(t) = &token_in {
        w.elem("ContinuationToken", t);
    }
    if l.truncated {
        w.elem("NextContinuationToken", &token(&l.next_start_after));
    }
    w.elem(
        "KeyCount",
        &(l.objects.len() + l.common_prefixes.len()).to_string(),
    );
    w.elem("MaxKeys", &p.max_keys.to_string());
    if !p.delimiter.is_empty() {
        w.elem("Delimiter", &enc(p.url, &p.delimiter));
    }
    if p.url {
        w.elem("EncodingType", "url");
    }
    w.elem("IsTruncated", if l.truncated { "true" } else { "false" });
    write_contents(s, &mut w, &l, p.url, fetch_owner).await;
    w.close("ListBucketResult");
    Ok(xml_response(w.finish()))
}

/// ListObjects (v1).
pub async fn list_v1(s: &State, r: &mut Req) -> S3Result<Response> {
    let marker = r.q("marker").unwrap_or("").to_string();
    let p = params(r, marker.clone())?;
    let l = run(s, r, &p).await?;
    let mut w = XmlWriter::new();
    w.root("ListBucketResult");
    w.elem("Name", r.bucket());
    w.elem("Prefix", &enc(p.url, &p.prefix));
    w.elem("Marker", &enc(p.url, &marker));
    if l.truncated {
        w.elem("NextMarker", &enc(p.url, &l.next_start_after));
    }
    w.elem("MaxKeys", &p.max_keys.to_string());
    if !p.delimiter.is_empty() {
        w.elem("Delimiter", &enc(p.url, &p.delimiter));
    }
    if p.url {
        w.elem("EncodingType", "url");
    }
    w.elem("IsTruncated", if l.truncated { "true" } else { "false" });
    write_contents(s, &mut w, &l, p.url, true).await;
    w.close("ListBucketResult");
    Ok(xml_response(w.finish()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuation_tokens_round_trip_and_bad_ones_are_refused() {
        assert_eq!(untoken(&token("a/b c")).unwrap(), "a/b c");
        assert!(untoken("!!").is_err());
        assert!(untoken(&B64.encode("x")).is_err());
    }
}
