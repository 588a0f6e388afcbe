//! The S3 layer's one error type and its one mapping to the wire: an S3 error code, its HTTP
//! status, and the XML body (`<Error><Code>..</Code><Message>..</Message>..</Error>`).
//! Gateway errors ([`crate::Error`]) and striping-client errors ([`ClientError`]) are turned into
//! S3 codes here and nowhere else; what they mean depends on whether the request named a bucket
//! or an object ([`On`]).

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use cyxcloud_client::ClientError;
use cyxcloud_proto::ErrorCode;

use crate::error::Error;

use super::xml::XmlWriter;

/// The S3 error codes this gateway answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    AccessDenied,
    AuthorizationHeaderMalformed,
    AuthorizationQueryParametersError,
    BadDigest,
    BucketAlreadyExists,
    BucketAlreadyOwnedByYou,
    BucketNotEmpty,
    EntityTooLarge,
    EntityTooSmall,
    IncompleteBody,
    InternalError,
    InvalidAccessKeyId,
    InvalidArgument,
    InvalidBucketName,
    InvalidDigest,
    InvalidObjectState,
    InvalidPart,
    InvalidPartOrder,
    InvalidRange,
    InvalidRequest,
    InvalidTag,
    KeyTooLongError,
    /// The key names a directory that has children, or a path through an object (the
    /// namespace is a real tree: `a/b` cannot be an object and a prefix at once).
    KeyConflict,
    MalformedXML,
    MetadataTooLarge,
    MethodNotAllowed,
    MissingContentLength,
    MissingSecurityHeader,
    NoSuchBucket,
    NoSuchKey,
    NoSuchUpload,
    NotImplemented,
    NotModified,
    PreconditionFailed,
    QuotaExceeded,
    RequestHeaderSectionTooLarge,
    RequestTimeTooSkewed,
    ServiceUnavailable,
    SignatureDoesNotMatch,
    SlowDown,
    XAmzContentSHA256Mismatch,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::AccessDenied => "AccessDenied",
            Code::AuthorizationHeaderMalformed => "AuthorizationHeaderMalformed",
            Code::AuthorizationQueryParametersError => "AuthorizationQueryParametersError",
            Code::BadDigest => "BadDigest",
            Code::BucketAlreadyExists => "BucketAlreadyExists",
            Code::BucketAlreadyOwnedByYou => "BucketAlreadyOwnedByYou",
            Code::BucketNotEmpty => "BucketNotEmpty",
            Code::EntityTooLarge => "EntityTooLarge",
            Code::EntityTooSmall => "EntityTooSmall",
            Code::IncompleteBody => "IncompleteBody",
            Code::InternalError => "InternalError",
            Code::InvalidAccessKeyId => "InvalidAccessKeyId",
            Code::InvalidArgument => "InvalidArgument",
            Code::InvalidBucketName => "InvalidBucketName",
            Code::InvalidDigest => "InvalidDigest",
            Code::InvalidObjectState => "InvalidObjectState",
            Code::InvalidPart => "InvalidPart",
            Code::InvalidPartOrder => "InvalidPartOrder",
            Code::InvalidRange => "InvalidRange",
            Code::InvalidRequest => "InvalidRequest",
            Code::InvalidTag => "InvalidTag",
            Code::KeyTooLongError => "KeyTooLongError",
            Code::KeyConflict => "KeyConflict",
            Code::MalformedXML => "MalformedXML",
            Code::MetadataTooLarge => "MetadataTooLarge",
            Code::MethodNotAllowed => "MethodNotAllowed",
            Code::MissingContentLength => "MissingContentLength",
            Code::MissingSecurityHeader => "MissingSecurityHeader",
            Code::NoSuchBucket => "NoSuchBucket",
            Code::NoSuchKey => "NoSuchKey",
            Code::NoSuchUpload => "NoSuchUpload",
            Code::NotImplemented => "NotImplemented",
            Code::NotModified => "NotModified",
            Code::PreconditionFailed => "PreconditionFailed",
            Code::QuotaExceeded => "QuotaExceeded",
            Code::RequestHeaderSectionTooLarge => "RequestHeaderSectionTooLarge",
            Code::RequestTimeTooSkewed => "RequestTimeTooSkewed",
            Code::ServiceUnavailable => "ServiceUnavailable",
            Code::SignatureDoesNotMatch => "SignatureDoesNotMatch",
            Code::SlowDown => "SlowDown",
            Code::XAmzContentSHA256Mismatch => "XAmzContentSHA256Mismatch",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Code::NotModified => StatusCode::NOT_MODIFIED,
            Code::AccessDenied
            | Code::InvalidAccessKeyId
            | Code::RequestTimeTooSkewed
            | Code::SignatureDoesNotMatch
            | Code::InvalidObjectState
            | Code::QuotaExceeded => StatusCode::FORBIDDEN,
            Code::NoSuchBucket | Code::NoSuchKey | Code::NoSuchUpload => StatusCode::NOT_FOUND,
            Code::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Code::BucketAlreadyExists
            | Code::BucketAlreadyOwnedByYou
            | Code::BucketNotEmpty
            | Code::KeyConflict => StatusCode::CONFLICT,
            Code::MissingContentLength => StatusCode::LENGTH_REQUIRED,
            Code::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
            Code::InvalidRange => StatusCode::RANGE_NOT_SATISFIABLE,
            Code::InternalError => StatusCode::INTERNAL_SERVER_ERROR,
            Code::NotImplemented => StatusCode::NOT_IMPLEMENTED,
            Code::ServiceUnavailable | Code::SlowDown => StatusCode::SERVICE_UNAVAILABLE,
            Code::AuthorizationHeaderMalformed
            | Code::AuthorizationQueryParametersError
            | Code::BadDigest
            | Code::EntityTooLarge
            | Code::EntityTooSmall
            | Code::IncompleteBody
            | Code::InvalidArgument
            | Code::InvalidBucketName
            | Code::InvalidDigest
            | Code::InvalidPart
            | Code::InvalidPartOrder
            | Code::InvalidRequest
            | Code::InvalidTag
            | Code::KeyTooLongError
            | Code::MalformedXML
            | Code::MetadataTooLarge
            | Code::MissingSecurityHeader
            | Code::RequestHeaderSectionTooLarge
            | Code::XAmzContentSHA256Mismatch => StatusCode::BAD_REQUEST,
        }
    }
}

/// An S3 error: a code, a human message, and extra XML fields some codes carry
/// (`RequestTime`, `ServerTime`, `StringToSign`, ...).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct S3Error {
    pub code: Code,
    pub message: String,
    pub extra: Vec<(&'static str, String)>,
}

pub type S3Result<T> = std::result::Result<T, S3Error>;

/// What a request named, for choosing between e.g. `NoSuchBucket` and `NoSuchKey`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum On {
    Bucket,
    Object,
    Upload,
}

impl S3Error {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        S3Error {
            code,
            message: message.into(),
            extra: Vec::new(),
        }
    }

    pub fn with(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.extra.push((name, value.into()));
        self
    }

    pub fn access_denied() -> Self {
        S3Error::new(Code::AccessDenied, "Access Denied")
    }

    pub fn not_implemented(what: &str) -> Self {
        S3Error::new(
            Code::NotImplemented,
            format!("{what} is not implemented by this gateway"),
        )
    }

    pub fn no_such_key() -> Self {
        S3Error::new(Code::NoSuchKey, "The specified key does not exist.")
    }

    pub fn no_such_bucket(b: &str) -> Self {
        S3Error::new(Code::NoSuchBucket, "The specified bucket does not exist.")
            .with("BucketName", b)
    }

    pub fn malformed_xml(why: impl std::fmt::Display) -> Self {
        S3Error::new(
            Code::MalformedXML,
            format!(
                "The XML you provided was not well-formed or did not validate against our published schema: {why}"
            ),
        )
    }

    pub fn invalid_argument(msg: impl Into<String>) -> Self {
        S3Error::new(Code::InvalidArgument, msg)
    }

    pub fn internal(msg: impl std::fmt::Display) -> Self {
        tracing::error!(error = %msg, "S3 internal error");
        S3Error::new(
            Code::InternalError,
            "We encountered an internal error. Please try again.",
        )
    }

    /// Maps a gateway error for a request on `on`.
    pub fn from_gateway(e: Error, on: On) -> Self {
        from_code(e.code(), e.to_string(), on)
    }

    /// Maps a striping-client error (the data path) for a request on `on`.
    pub fn from_client(e: ClientError, on: On) -> Self {
        match e {
            ClientError::Rpc { code, message, .. } => from_code(code, message, on),
            e @ (ClientError::Connect { .. }
            | ClientError::NotEnoughShards { .. }
            | ClientError::Unrecoverable { .. }) => {
                S3Error::new(Code::ServiceUnavailable, e.to_string())
            }
            e => S3Error::internal(e),
        }
    }

    /// The response: status, `x-amz-request-id`, and the XML body (none for HEAD and 304).
    pub fn into_response(self, resource: &str, request_id: &str, head: bool) -> Response {
        let status = self.code.status();
        let body = if head || status == StatusCode::NOT_MODIFIED {
            Body::empty()
        } else {
            let mut w = XmlWriter::new();
            w.open("Error");
            w.elem("Code", self.code.as_str());
            w.elem("Message", &self.message);
            for (k, v) in &self.extra {
                w.elem(k, v);
            }
            w.elem("Resource", resource);
            w.elem("RequestId", request_id);
            w.close("Error");
            Body::from(w.finish())
        };
        let mut r = Response::new(body);
        *r.status_mut() = status;
        let h = r.headers_mut();
        if !head && status != StatusCode::NOT_MODIFIED {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/xml"),
            );
        }
        if let Ok(v) = HeaderValue::from_str(request_id) {
            h.insert("x-amz-request-id", v);
        }
        if head {
            // HEAD has no body; SDKs read the code from this header.
            if let Ok(v) = HeaderValue::from_str(self.code.as_str()) {
                h.insert("x-amz-error-code", v);
            }
        }
        r
    }
}

/// The S3 error for a stable gateway error code.
fn from_code(code: ErrorCode, msg: String, on: On) -> S3Error {
    match code {
        ErrorCode::NotFound => match on {
            On::Bucket => S3Error::new(Code::NoSuchBucket, msg),
            On::Object if msg.starts_with("bucket ") => S3Error::new(Code::NoSuchBucket, msg),
            On::Object => S3Error::new(Code::NoSuchKey, msg),
            On::Upload => S3Error::new(Code::NoSuchUpload, msg),
        },
        ErrorCode::AlreadyExists => match on {
            On::Bucket if msg.contains("owned by you") => {
                S3Error::new(Code::BucketAlreadyOwnedByYou, msg)
            }
            On::Bucket => S3Error::new(Code::BucketAlreadyExists, msg),
            _ => S3Error::new(Code::KeyConflict, msg),
        },
        ErrorCode::NotEmpty => match on {
            On::Bucket => S3Error::new(Code::BucketNotEmpty, msg),
            _ => S3Error::new(Code::KeyConflict, msg),
        },
        ErrorCode::NotDirectory | ErrorCode::IsDirectory => S3Error::new(Code::KeyConflict, msg),
        ErrorCode::InvalidName => match on {
            On::Bucket => S3Error::new(Code::InvalidBucketName, msg),
            _ if msg.contains("at most 1024 bytes") => S3Error::new(Code::KeyTooLongError, msg),
            _ => S3Error::new(Code::InvalidArgument, msg),
        },
        ErrorCode::InvalidArgument | ErrorCode::TooLarge => {
            S3Error::new(Code::InvalidArgument, msg)
        }
        ErrorCode::Unauthenticated | ErrorCode::PermissionDenied | ErrorCode::Expired => {
            S3Error::new(Code::AccessDenied, msg)
        }
        ErrorCode::QuotaExceeded => S3Error::new(Code::QuotaExceeded, msg),
        ErrorCode::PreconditionFailed => S3Error::new(Code::PreconditionFailed, msg),
        ErrorCode::Conflict => S3Error::new(Code::SlowDown, msg),
        ErrorCode::NoSpace | ErrorCode::Draining | ErrorCode::Unavailable => {
            S3Error::new(Code::ServiceUnavailable, msg)
        }
        ErrorCode::NotSupported => S3Error::new(Code::NotImplemented, msg),
        ErrorCode::HashMismatch => S3Error::new(Code::BadDigest, msg),
        ErrorCode::Corrupt
        | ErrorCode::Unrecoverable
        | ErrorCode::ResyncRequired
        | ErrorCode::Internal => S3Error::internal(msg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_errors_map_by_what_was_named() {
        let nf = || Error::not_found("x");
        assert_eq!(
            S3Error::from_gateway(nf(), On::Bucket).code,
            Code::NoSuchBucket
        );
        assert_eq!(
            S3Error::from_gateway(nf(), On::Object).code,
            Code::NoSuchKey
        );
        assert_eq!(
            S3Error::from_gateway(nf(), On::Upload).code,
            Code::NoSuchUpload
        );
        assert_eq!(
            S3Error::from_gateway(Error::not_found("bucket \"b\""), On::Object).code,
            Code::NoSuchBucket
        );
        assert_eq!(
            S3Error::from_gateway(Error::NotEmpty { path: "b".into() }, On::Bucket).code,
            Code::BucketNotEmpty
        );
        assert_eq!(Code::NoSuchKey.status(), StatusCode::NOT_FOUND);
        assert_eq!(Code::NotImplemented.status(), StatusCode::NOT_IMPLEMENTED);
        assert_eq!(Code::RequestTimeTooSkewed.status(), StatusCode::FORBIDDEN);
    }
}
