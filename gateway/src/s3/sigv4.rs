//! AWS Signature Version 4 for S3: parsing the `Authorization` header and presigned-URL query
//! parameters, the canonical request, the signing key, and the seed / chunk / trailer string
//! signatures of streaming (`aws-chunked`) uploads. Pure functions; `auth.rs` applies them to
//! requests.

use axum::http::HeaderMap;
use sha2::{Digest, Sha256};

use crate::keys::hmac_sha256;

use super::error::{Code, S3Error, S3Result};
use super::util::{percent_decode, uri_encode};

pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// SHA-256 of the empty string.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
/// Longest validity of a presigned URL (7 days), as S3.
pub const MAX_PRESIGN_SECS: i64 = 604_800;

/// The credential scope of a signature: `AK/20130524/us-east-1/s3/aws4_request`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub access_key: String,
    pub date: String,
    pub region: String,
    pub service: String,
}

impl Credential {
    pub fn parse(s: &str) -> Option<Credential> {
        let mut p = s.rsplitn(5, '/');
        let terminator = p.next()?;
        let service = p.next()?;
        let region = p.next()?;
        let date = p.next()?;
        let access_key = p.next()?;
        if terminator != "aws4_request"
            || access_key.is_empty()
            || date.len() != 8
            || !date.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        Some(Credential {
            access_key: access_key.to_string(),
            date: date.to_string(),
            region: region.to_string(),
            service: service.to_string(),
        })
    }

    /// `date/region/service/aws4_request`.
    pub fn scope(&self) -> String {
        format!(
            "{}/{}/{}/aws4_request",
            self.date, self.region, self.service
        )
    }
}

/// A parsed `Authorization: AWS4-HMAC-SHA256 ...` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderAuth {
    pub credential: Credential,
    pub signed_headers: Vec<String>,
    pub signature: String,
}

fn malformed(msg: impl Into<String>) -> S3Error {
    S3Error::new(Code::AuthorizationHeaderMalformed, msg)
}

impl HeaderAuth {
    pub fn parse(v: &str) -> S3Result<HeaderAuth> {
        let rest = v.strip_prefix(ALGORITHM).ok_or_else(|| {
            malformed("unsupported authorization algorithm; use AWS4-HMAC-SHA256")
        })?;
        let (mut cred, mut signed, mut sig) = (None, None, None);
        for part in rest.split(',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let (k, v) = part.split_once('=').ok_or_else(|| {
                malformed(format!("the authorization component {part:?} is malformed"))
            })?;
            match k.trim() {
                "Credential" => cred = Some(v.trim()),
                "SignedHeaders" => signed = Some(v.trim()),
                "Signature" => sig = Some(v.trim()),
                _ => {}
            }
        }
        let cred = cred.ok_or_else(|| malformed("the authorization header has no Credential"))?;
        let credential = Credential::parse(cred).ok_or_else(|| {
            malformed(format!("the Credential {cred:?} is malformed; expected \"<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request\""))
        })?;
        let signed =
            signed.ok_or_else(|| malformed("the authorization header has no SignedHeaders"))?;
        let sig = sig.ok_or_else(|| malformed("the authorization header has no Signature"))?;
        Ok(HeaderAuth {
            credential,
            signed_headers: split_signed_headers(signed)?,
            signature: sig.to_ascii_lowercase(),
        })
    }
}

pub fn split_signed_headers(s: &str) -> S3Result<Vec<String>> {
    let v: Vec<String> = s
        .split(';')
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    if v.iter().any(String::is_empty) {
        return Err(malformed("SignedHeaders has an empty name"));
    }
    if !v.iter().any(|h| h == "host") {
        return Err(S3Error::new(
            Code::AccessDenied,
            "the host header must be signed",
        ));
    }
    Ok(v)
}

/// The canonical URI of a raw request path (decoded, then encoded as SigV4 wants; S3 does not
/// normalise dot segments or double-encode).
pub fn canonical_uri(raw_path: &str) -> S3Result<String> {
    let decoded = percent_decode(raw_path, false).ok_or_else(|| {
        S3Error::invalid_argument("the request path is not valid percent-encoded UTF-8")
    })?;
    Ok(if decoded.is_empty() {
        "/".to_string()
    } else {
        uri_encode(&decoded, true)
    })
}

/// The canonical query string of a raw query (`X-Amz-Signature` left out for presigned URLs).
pub fn canonical_query(raw_query: &str, skip_signature: bool) -> S3Result<String> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for part in raw_query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let bad =
            || S3Error::invalid_argument("the query string is not valid percent-encoded UTF-8");
        let k = percent_decode(k, false).ok_or_else(bad)?;
        if skip_signature && k == "X-Amz-Signature" {
            continue;
        }
        let v = percent_decode(v, false).ok_or_else(bad)?;
        pairs.push((uri_encode(&k, false), uri_encode(&v, false)));
    }
    pairs.sort();
    Ok(pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&"))
}

/// Canonical headers block and the signed-headers line.
fn canonical_headers(headers: &HeaderMap, signed: &[String]) -> String {
    let mut out = String::new();
    for name in signed {
        let values: Vec<String> = headers
            .get_all(name.as_str())
            .iter()
            .map(|v| {
                let s = String::from_utf8_lossy(v.as_bytes());
                s.split_whitespace().collect::<Vec<_>>().join(" ")
            })
            .collect();
        out.push_str(name);
        out.push(':');
        out.push_str(&values.join(","));
        out.push('\n');
    }
    out
}

pub fn canonical_request(
    method: &str,
    canonical_uri: &str,
    canonical_query: &str,
    headers: &HeaderMap,
    signed: &[String],
    payload_hash: &str,
) -> String {
    format!(
        "{method}\n{canonical_uri}\n{canonical_query}\n{}\n{}\n{payload_hash}",
        canonical_headers(headers, signed),
        signed.join(";")
    )
}

pub fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

pub fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &str) -> String {
    format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    )
}

/// The signing key of a secret for one scope.
pub fn signing_key(secret: &str, c: &Credential) -> [u8; 32] {
    let k_date = hmac_sha256(format!("AWS4{secret}").as_bytes(), c.date.as_bytes());
    let k_region = hmac_sha256(&k_date, c.region.as_bytes());
    let k_service = hmac_sha256(&k_region, c.service.as_bytes());
    hmac_sha256(&k_service, b"aws4_request")
}

pub fn sign(key: &[u8; 32], string_to_sign: &str) -> String {
    hex::encode(hmac_sha256(key, string_to_sign.as_bytes()))
}

/// String to sign of one `aws-chunked` chunk.
pub fn chunk_string_to_sign(amz_date: &str, scope: &str, prev: &str, chunk_sha256: &str) -> String {
    format!("AWS4-HMAC-SHA256-PAYLOAD\n{amz_date}\n{scope}\n{prev}\n{EMPTY_SHA256}\n{chunk_sha256}")
}

/// String to sign of the trailing headers of an `aws-chunked` upload.
pub fn trailer_string_to_sign(
    amz_date: &str,
    scope: &str,
    prev: &str,
    trailer_sha256: &str,
) -> String {
    format!("AWS4-HMAC-SHA256-TRAILER\n{amz_date}\n{scope}\n{prev}\n{trailer_sha256}")
}

/// What `x-amz-content-sha256` says about the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// `UNSIGNED-PAYLOAD` (or absent on presigned / anonymous requests).
    Unsigned,
    /// The hex SHA-256 of the body, checked as it streams.
    Sha256(String),
    /// `STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]`: aws-chunked with chunk signatures.
    StreamingSigned { trailer: bool },
    /// `STREAMING-UNSIGNED-PAYLOAD-TRAILER`: aws-chunked without signatures, with trailers.
    StreamingUnsignedTrailer,
}

impl Payload {
    pub fn parse(v: &str) -> S3Result<Payload> {
        Ok(match v {
            "UNSIGNED-PAYLOAD" => Payload::Unsigned,
            "STREAMING-AWS4-HMAC-SHA256-PAYLOAD" => Payload::StreamingSigned { trailer: false },
            "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER" => {
                Payload::StreamingSigned { trailer: true }
            }
            "STREAMING-UNSIGNED-PAYLOAD-TRAILER" => Payload::StreamingUnsignedTrailer,
            v if v.starts_with("STREAMING-AWS4-ECDSA") => {
                return Err(S3Error::not_implemented("SigV4a (ECDSA) signing"));
            }
            v if v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Payload::Sha256(v.to_ascii_lowercase())
            }
            v => {
                return Err(S3Error::new(
                    Code::InvalidArgument,
                    format!(
                        "x-amz-content-sha256 {v:?} is neither a SHA-256 nor a known payload mode"
                    ),
                ));
            }
        })
    }

    pub fn is_chunked(&self) -> bool {
        matches!(
            self,
            Payload::StreamingSigned { .. } | Payload::StreamingUnsignedTrailer
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    /// The GET Object example of the AWS SigV4 documentation for S3.
    #[test]
    fn matches_the_published_s3_example() {
        let mut h = HeaderMap::new();
        h.insert(
            "host",
            HeaderValue::from_static("examplebucket.s3.amazonaws.com"),
        );
        h.insert("range", HeaderValue::from_static("bytes=0-9"));
        h.insert(
            "x-amz-content-sha256",
            HeaderValue::from_static(EMPTY_SHA256),
        );
        h.insert("x-amz-date", HeaderValue::from_static("20130524T000000Z"));
        let signed: Vec<String> = ["host", "range", "x-amz-content-sha256", "x-amz-date"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let cr = canonical_request(
            "GET",
            &canonical_uri("/test.txt").unwrap(),
            &canonical_query("", false).unwrap(),
            &h,
            &signed,
            EMPTY_SHA256,
        );
        let c =
            Credential::parse("AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request").unwrap();
        let sts = string_to_sign("20130524T000000Z", &c.scope(), &cr);
        let key = signing_key("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", &c);
        assert_eq!(
            sign(&key, &sts),
            "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    /// The first chunk of the aws-chunked example of the AWS documentation.
    #[test]
    fn chunk_signature_matches_the_published_example() {
        let c =
            Credential::parse("AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request").unwrap();
        let key = signing_key("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", &c);
        let seed = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9";
        let data = vec![b'a'; 65536];
        let sts = chunk_string_to_sign("20130524T000000Z", &c.scope(), seed, &sha256_hex(&data));
        assert_eq!(
            sign(&key, &sts),
            "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648"
        );
    }

    #[test]
    fn parses_headers_and_payload_modes() {
        let a = HeaderAuth::parse(
            "AWS4-HMAC-SHA256 Credential=AK/20130524/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-date, Signature=ABC",
        )
        .unwrap();
        assert_eq!(a.credential.access_key, "AK");
        assert_eq!(a.signed_headers, ["host", "x-amz-date"]);
        assert_eq!(a.signature, "abc");
        assert!(HeaderAuth::parse("AWS AK:sig").is_err());
        assert!(HeaderAuth::parse("AWS4-HMAC-SHA256 Credential=AK/2013/us/s3/aws4_request, SignedHeaders=host, Signature=x").is_err());
        assert!(HeaderAuth::parse("AWS4-HMAC-SHA256 Credential=AK/20130524/us/s3/aws4_request, SignedHeaders=date, Signature=x").is_err());
        assert_eq!(
            Payload::parse("UNSIGNED-PAYLOAD").unwrap(),
            Payload::Unsigned
        );
        assert!(Payload::parse("nope").is_err());
        assert_eq!(
            canonical_query("b=2&a=1&X-Amz-Signature=zz&c", true).unwrap(),
            "a=1&b=2&c="
        );
    }
}
