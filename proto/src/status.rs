//! One place that turns typed errors into `tonic::Status` and back.
//!
//! A status carries a gRPC code plus two metadata entries: `x-cyx-code` (a stable
//! [`ErrorCode`] name that clients map to errno, S3 codes or exit codes) and `x-cyx-retryable`
//! (`true` when trying again later can succeed).

use tonic::{Code, Status};

/// Stable error codes shared by all CyxCloud services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    NotFound,
    AlreadyExists,
    NotEmpty,
    NotDirectory,
    IsDirectory,
    InvalidArgument,
    InvalidName,
    Unauthenticated,
    PermissionDenied,
    QuotaExceeded,
    NoSpace,
    Draining,
    HashMismatch,
    Corrupt,
    TooLarge,
    PreconditionFailed,
    Conflict,
    Expired,
    Unavailable,
    Unrecoverable,
    ResyncRequired,
    NotSupported,
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 23] = [
        ErrorCode::NotFound,
        ErrorCode::AlreadyExists,
        ErrorCode::NotEmpty,
        ErrorCode::NotDirectory,
        ErrorCode::IsDirectory,
        ErrorCode::InvalidArgument,
        ErrorCode::InvalidName,
        ErrorCode::Unauthenticated,
        ErrorCode::PermissionDenied,
        ErrorCode::QuotaExceeded,
        ErrorCode::NoSpace,
        ErrorCode::Draining,
        ErrorCode::HashMismatch,
        ErrorCode::Corrupt,
        ErrorCode::TooLarge,
        ErrorCode::PreconditionFailed,
        ErrorCode::Conflict,
        ErrorCode::Expired,
        ErrorCode::Unavailable,
        ErrorCode::Unrecoverable,
        ErrorCode::ResyncRequired,
        ErrorCode::NotSupported,
        ErrorCode::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NotFound => "not-found",
            ErrorCode::AlreadyExists => "already-exists",
            ErrorCode::NotEmpty => "not-empty",
            ErrorCode::NotDirectory => "not-directory",
            ErrorCode::IsDirectory => "is-directory",
            ErrorCode::InvalidArgument => "invalid-argument",
            ErrorCode::InvalidName => "invalid-name",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::PermissionDenied => "permission-denied",
            ErrorCode::QuotaExceeded => "quota-exceeded",
            ErrorCode::NoSpace => "no-space",
            ErrorCode::Draining => "draining",
            ErrorCode::HashMismatch => "hash-mismatch",
            ErrorCode::Corrupt => "corrupt",
            ErrorCode::TooLarge => "too-large",
            ErrorCode::PreconditionFailed => "precondition-failed",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Expired => "expired",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Unrecoverable => "unrecoverable",
            ErrorCode::ResyncRequired => "resync-required",
            ErrorCode::NotSupported => "not-supported",
            ErrorCode::Internal => "internal",
        }
    }

    pub fn parse(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The gRPC code a status with this error carries.
    pub fn grpc_code(self) -> Code {
        match self {
            ErrorCode::NotFound => Code::NotFound,
            ErrorCode::AlreadyExists => Code::AlreadyExists,
            ErrorCode::NotEmpty | ErrorCode::NotDirectory | ErrorCode::IsDirectory => {
                Code::FailedPrecondition
            }
            ErrorCode::PreconditionFailed | ErrorCode::ResyncRequired => Code::FailedPrecondition,
            ErrorCode::InvalidArgument | ErrorCode::InvalidName | ErrorCode::HashMismatch => {
                Code::InvalidArgument
            }
            ErrorCode::TooLarge => Code::InvalidArgument,
            ErrorCode::Unauthenticated | ErrorCode::Expired => Code::Unauthenticated,
            ErrorCode::PermissionDenied => Code::PermissionDenied,
            ErrorCode::QuotaExceeded | ErrorCode::NoSpace => Code::ResourceExhausted,
            ErrorCode::Draining | ErrorCode::Unavailable => Code::Unavailable,
            ErrorCode::Corrupt | ErrorCode::Unrecoverable => Code::DataLoss,
            ErrorCode::Conflict => Code::Aborted,
            ErrorCode::NotSupported => Code::Unimplemented,
            ErrorCode::Internal => Code::Internal,
        }
    }

    /// Whether trying again later may succeed.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::Unavailable | ErrorCode::Conflict | ErrorCode::Draining | ErrorCode::NoSpace
        )
    }

    /// Fallback when a status has no `x-cyx-code` (e.g. produced by tonic itself).
    fn from_grpc(code: Code) -> ErrorCode {
        match code {
            Code::NotFound => ErrorCode::NotFound,
            Code::AlreadyExists => ErrorCode::AlreadyExists,
            Code::InvalidArgument | Code::OutOfRange => ErrorCode::InvalidArgument,
            Code::Unauthenticated => ErrorCode::Unauthenticated,
            Code::PermissionDenied => ErrorCode::PermissionDenied,
            Code::ResourceExhausted => ErrorCode::NoSpace,
            Code::FailedPrecondition => ErrorCode::PreconditionFailed,
            Code::Aborted => ErrorCode::Conflict,
            Code::DataLoss => ErrorCode::Corrupt,
            Code::Unimplemented => ErrorCode::NotSupported,
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => ErrorCode::Unavailable,
            _ => ErrorCode::Internal,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Builds a status carrying `code` and a human message.
pub fn status(code: ErrorCode, message: impl Into<String>) -> Status {
    let mut s = Status::new(code.grpc_code(), message);
    let md = s.metadata_mut();
    md.insert(
        "x-cyx-code",
        code.as_str().parse().expect("ASCII code name"),
    );
    md.insert(
        "x-cyx-retryable",
        if code.retryable() { "true" } else { "false" }
            .parse()
            .expect("ASCII"),
    );
    s
}

/// Reads the stable error code of a status (falling back on its gRPC code).
pub fn error_code(s: &Status) -> ErrorCode {
    s.metadata()
        .get("x-cyx-code")
        .and_then(|v| v.to_str().ok())
        .and_then(ErrorCode::parse)
        .unwrap_or_else(|| ErrorCode::from_grpc(s.code()))
}

/// Whether a status says retrying may help.
pub fn is_retryable(s: &Status) -> bool {
    match s
        .metadata()
        .get("x-cyx-retryable")
        .and_then(|v| v.to_str().ok())
    {
        Some(v) => v == "true",
        None => error_code(s).retryable(),
    }
}

impl From<&cyxcloud_core::token::TokenError> for ErrorCode {
    fn from(e: &cyxcloud_core::token::TokenError) -> Self {
        use cyxcloud_core::token::TokenError as T;
        match e {
            T::Expired { .. } => ErrorCode::Expired,
            T::Malformed(_) | T::BadSignature => ErrorCode::Unauthenticated,
            T::WrongNode { .. }
            | T::OpNotGranted { .. }
            | T::ShardNotCovered(_)
            | T::RoleNotAllowed { .. } => ErrorCode::PermissionDenied,
        }
    }
}

/// Maps a token error to its status.
pub fn token_status(e: &cyxcloud_core::token::TokenError) -> Status {
    status(ErrorCode::from(e), e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_status() {
        for c in ErrorCode::ALL {
            let s = status(c, "x");
            assert_eq!(error_code(&s), c);
            assert_eq!(s.code(), c.grpc_code());
            assert_eq!(is_retryable(&s), c.retryable());
        }
        assert_eq!(error_code(&Status::not_found("plain")), ErrorCode::NotFound);
    }
}
