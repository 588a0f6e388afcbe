//! Who sent a request: SigV4 in the `Authorization` header, SigV4 in the query string
//! (presigned URLs, expiry honoured), or nobody. The access keys are the gateway's own
//! ([`crate::accounts`]); the admin bootstrap key works like any other. Also decides how the
//! body is to be verified ([`BodyAuth`]): its SHA-256, `aws-chunked` chunk signatures, or
//! nothing (`UNSIGNED-PAYLOAD`).

use axum::http::{HeaderMap, Method};

use crate::accounts::Caller;

use super::State;
use super::body::ChunkSigner;
use super::error::{Code, S3Error, S3Result};
use super::sigv4::{self, Credential, HeaderAuth, Payload};
use super::util::{ct_eq, now_secs, parse_amz_date, parse_http_date};

/// How the request body is signed.
#[derive(Debug, Clone)]
pub struct BodyAuth {
    pub payload: Payload,
    /// The chunk-signature chain of a signed streaming upload.
    pub signer: Option<ChunkSigner>,
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn query_param<'a>(q: &'a [(String, String)], name: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Authenticates a request; `None` = anonymous.
pub async fn authenticate(
    s: &State,
    method: &Method,
    raw_path: &str,
    raw_query: &str,
    headers: &HeaderMap,
) -> S3Result<(Option<Caller>, BodyAuth)> {
    let query = super::util::parse_query(raw_query).ok_or_else(|| {
        S3Error::invalid_argument("the query string is not valid percent-encoded UTF-8")
    })?;
    if let Some(a) = header(headers, "authorization") {
        if a.starts_with(sigv4::ALGORITHM) {
            return header_auth(s, method, raw_path, raw_query, headers, a).await;
        }
        if a.starts_with("AWS ") {
            return Err(S3Error::new(
                Code::InvalidRequest,
                "Signature Version 2 is not supported; please use AWS4-HMAC-SHA256 (Signature Version 4).",
            ));
        }
        return Err(S3Error::new(
            Code::AuthorizationHeaderMalformed,
            "the Authorization header is not an AWS Signature Version 4 header",
        ));
    }
    if query_param(&query, "X-Amz-Algorithm").is_some()
        || query_param(&query, "X-Amz-Signature").is_some()
    {
        return presigned_auth(s, method, raw_path, raw_query, headers, &query).await;
    }
    if query_param(&query, "AWSAccessKeyId").is_some() && query_param(&query, "Signature").is_some()
    {
        return Err(S3Error::new(
            Code::InvalidRequest,
            "Signature Version 2 presigned URLs are not supported; please use AWS4-HMAC-SHA256 (Signature Version 4).",
        ));
    }
    // Anonymous: the body may still declare its hash or be aws-chunked without signatures.
    let payload = match header(headers, "x-amz-content-sha256") {
        None => Payload::Unsigned,
        Some(v) => match Payload::parse(v)? {
            Payload::StreamingSigned { .. } => {
                return Err(S3Error::new(
                    Code::AccessDenied,
                    "a signed streaming payload needs a signed request",
                ));
            }
            p => p,
        },
    };
    Ok((
        None,
        BodyAuth {
            payload,
            signer: None,
        },
    ))
}

/// The secret and owner of an access key.
async fn secret(s: &State, access_key: &str) -> S3Result<(zeroize::Zeroizing<String>, Caller)> {
    s.gw.accounts
        .secret_for(access_key)
        .await
        .map_err(|e| S3Error::internal(format!("reading access key: {e}")))?
        .ok_or_else(|| {
            S3Error::new(
                Code::InvalidAccessKeyId,
                "The AWS Access Key Id you provided does not exist in our records.",
            )
            .with("AWSAccessKeyId", access_key)
        })
}

/// The credential scope must be today's date (as signed), this gateway's region and `s3`.
fn check_scope(c: &Credential, amz_date: &str, region: &str, code: Code) -> S3Result<()> {
    if !amz_date.starts_with(&c.date) {
        return Err(S3Error::new(
            code,
            format!(
                "The authorization header is malformed; Invalid credential date \"{}\". This date is not the same as X-Amz-Date: \"{}\".",
                c.date,
                &amz_date[..8.min(amz_date.len())]
            ),
        ));
    }
    if c.region != region {
        let what = if code == Code::AuthorizationHeaderMalformed {
            "The authorization header is malformed"
        } else {
            "Error parsing the X-Amz-Credential parameter"
        };
        return Err(S3Error::new(
            code,
            format!(
                "{what}; the region '{}' is wrong; expecting '{region}'",
                c.region
            ),
        )
        .with("Region", region));
    }
    if c.service != "s3" {
        return Err(S3Error::new(
            code,
            format!(
                "The authorization header is malformed; incorrect service \"{}\". This endpoint belongs to \"s3\".",
                c.service
            ),
        ));
    }
    Ok(())
}

fn skewed(s: &State, t: i64) -> Option<S3Error> {
    let now = now_secs();
    if (now - t).unsigned_abs() > s.cfg.max_clock_skew_secs {
        Some(
            S3Error::new(
                Code::RequestTimeTooSkewed,
                "The difference between the request time and the current time is too large.",
            )
            .with("RequestTime", super::util::amz_date(t))
            .with("ServerTime", super::util::amz_date(now))
            .with(
                "MaxAllowedSkewMilliseconds",
                (s.cfg.max_clock_skew_secs * 1000).to_string(),
            ),
        )
    } else {
        None
    }
}

fn mismatch(sts: &str, canonical: &str, access_key: &str) -> S3Error {
    S3Error::new(
        Code::SignatureDoesNotMatch,
        "The request signature we calculated does not match the signature you provided. Check your key and signing method.",
    )
    .with("AWSAccessKeyId", access_key)
    .with("StringToSign", sts)
    .with("CanonicalRequest", canonical)
}

async fn header_auth(
    s: &State,
    method: &Method,
    raw_path: &str,
    raw_query: &str,
    headers: &HeaderMap,
    authorization: &str,
) -> S3Result<(Option<Caller>, BodyAuth)> {
    let a = HeaderAuth::parse(authorization)?;
    let amz_date = match header(headers, "x-amz-date") {
        Some(d) => d.to_string(),
        None => {
            let d = header(headers, "date").ok_or_else(|| {
                S3Error::new(
                    Code::AccessDenied,
                    "AWS authentication requires a valid Date or x-amz-date header",
                )
            })?;
            let t = parse_http_date(d).ok_or_else(|| {
                S3Error::new(
                    Code::AccessDenied,
                    "the Date header is not a valid HTTP date",
                )
            })?;
            super::util::amz_date(t)
        }
    };
    let t = parse_amz_date(&amz_date).ok_or_else(|| {
        S3Error::new(
            Code::AccessDenied,
            format!("x-amz-date {amz_date:?} is not a valid ISO 8601 basic timestamp"),
        )
    })?;
    if let Some(e) = skewed(s, t) {
        return Err(e);
    }
    check_scope(
        &a.credential,
        &amz_date,
        &s.cfg.region,
        Code::AuthorizationHeaderMalformed,
    )?;
    let payload_header = header(headers, "x-amz-content-sha256").ok_or_else(|| {
        S3Error::new(
            Code::InvalidRequest,
            "Missing required header for this request: x-amz-content-sha256",
        )
    })?;
    let payload = Payload::parse(payload_header)?;
    let (secret, caller) = secret(s, &a.credential.access_key).await?;
    let canonical = sigv4::canonical_request(
        method.as_str(),
        &sigv4::canonical_uri(raw_path)?,
        &sigv4::canonical_query(raw_query, false)?,
        headers,
        &a.signed_headers,
        payload_header,
    );
    let scope = a.credential.scope();
    let sts = sigv4::string_to_sign(&amz_date, &scope, &canonical);
    let key = sigv4::signing_key(&secret, &a.credential);
    let want = sigv4::sign(&key, &sts);
    if !ct_eq(want.as_bytes(), a.signature.as_bytes()) {
        return Err(mismatch(&sts, &canonical, &a.credential.access_key));
    }
    let signer = matches!(payload, Payload::StreamingSigned { .. }).then(|| ChunkSigner {
        key,
        amz_date: amz_date.clone(),
        scope,
        prev: want,
    });
    Ok((Some(caller), BodyAuth { payload, signer }))
}

async fn presigned_auth(
    s: &State,
    method: &Method,
    raw_path: &str,
    raw_query: &str,
    headers: &HeaderMap,
    query: &[(String, String)],
) -> S3Result<(Option<Caller>, BodyAuth)> {
    let bad = |m: &str| S3Error::new(Code::AuthorizationQueryParametersError, m.to_string());
    let alg =
        query_param(query, "X-Amz-Algorithm").ok_or_else(|| bad("X-Amz-Algorithm is missing"))?;
    if alg != sigv4::ALGORITHM {
        return Err(bad("X-Amz-Algorithm only supports \"AWS4-HMAC-SHA256\""));
    }
    let cred =
        query_param(query, "X-Amz-Credential").ok_or_else(|| bad("X-Amz-Credential is missing"))?;
    let credential = Credential::parse(cred).ok_or_else(|| {
        bad("X-Amz-Credential is malformed; expected \"<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request\"")
    })?;
    let amz_date = query_param(query, "X-Amz-Date").ok_or_else(|| bad("X-Amz-Date is missing"))?;
    let t = parse_amz_date(amz_date).ok_or_else(|| {
        bad("X-Amz-Date must be in the ISO8601 Long Format \"yyyyMMdd'T'HHmmss'Z'\"")
    })?;
    let expires: i64 = query_param(query, "X-Amz-Expires")
        .ok_or_else(|| bad("X-Amz-Expires is missing"))?
        .parse()
        .map_err(|_| bad("X-Amz-Expires should be a number"))?;
    if !(1..=sigv4::MAX_PRESIGN_SECS).contains(&expires) {
        return Err(bad("X-Amz-Expires must be between 1 and 604800 seconds"));
    }
    let signed = query_param(query, "X-Amz-SignedHeaders")
        .ok_or_else(|| bad("X-Amz-SignedHeaders is missing"))?;
    let signature = query_param(query, "X-Amz-Signature")
        .ok_or_else(|| bad("X-Amz-Signature is missing"))?
        .to_ascii_lowercase();
    let signed = sigv4::split_signed_headers(signed)?;
    check_scope(
        &credential,
        amz_date,
        &s.cfg.region,
        Code::AuthorizationQueryParametersError,
    )?;
    let now = now_secs();
    if t > now + s.cfg.max_clock_skew_secs as i64 {
        return Err(S3Error::new(Code::AccessDenied, "Request is not valid yet"));
    }
    if now > t + expires {
        return Err(S3Error::new(Code::AccessDenied, "Request has expired")
            .with("X-Amz-Expires", expires.to_string())
            .with("Expires", super::util::amz_date(t + expires))
            .with("ServerTime", super::util::amz_date(now)));
    }
    let payload_header = header(headers, "x-amz-content-sha256").unwrap_or("UNSIGNED-PAYLOAD");
    let payload = Payload::parse(payload_header)?;
    if payload.is_chunked() {
        return Err(S3Error::new(
            Code::InvalidRequest,
            "streaming uploads cannot use a presigned URL",
        ));
    }
    let (secret, caller) = secret(s, &credential.access_key).await?;
    let canonical = sigv4::canonical_request(
        method.as_str(),
        &sigv4::canonical_uri(raw_path)?,
        &sigv4::canonical_query(raw_query, true)?,
        headers,
        &signed,
        payload_header,
    );
    let sts = sigv4::string_to_sign(amz_date, &credential.scope(), &canonical);
    let want = sigv4::sign(&sigv4::signing_key(&secret, &credential), &sts);
    if !ct_eq(want.as_bytes(), signature.as_bytes()) {
        return Err(mismatch(&sts, &canonical, &credential.access_key));
    }
    Ok((
        Some(caller),
        BodyAuth {
            payload,
            signer: None,
        },
    ))
}
