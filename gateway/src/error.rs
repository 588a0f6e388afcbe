//! The gateway's one error type, and its one mapping to gRPC (`tonic::Status`). The HTTP
//! surfaces map it in `http.rs` (and the S3 layer in its own error module).

use cyxcloud_proto::ErrorCode;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} not found")]
    NotFound { what: String },
    #[error("{what} already exists")]
    AlreadyExists { what: String },
    #[error("directory {path:?} is not empty")]
    NotEmpty { path: String },
    #[error("{what} is not a directory")]
    NotDirectory { what: String },
    #[error("{what} is a directory")]
    IsDirectory { what: String },
    #[error("invalid name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    #[error("quota exceeded: {used} of {quota} bytes used, this write needs {needed} more")]
    QuotaExceeded { used: u64, quota: u64, needed: u64 },
    #[error("no space: {0}")]
    NoSpace(String),
    #[error("precondition failed: {0}")]
    PreconditionFailed(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("{0} expired")]
    Expired(String),
    #[error("hash mismatch: {0}")]
    HashMismatch(String),
    #[error("not supported: {0}")]
    NotSupported(String),
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error(
        "journal position {since} is older than the retained history (oldest {oldest}): resync"
    )]
    ResyncRequired { since: u64, oldest: u64 },
    #[error("metadata store error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("metadata store holds invalid data: {0}")]
    Corrupt(String),
    #[error("cache error: {0}")]
    Cache(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error("io error on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn not_found(what: impl Into<String>) -> Self {
        Error::NotFound { what: what.into() }
    }
    pub fn exists(what: impl Into<String>) -> Self {
        Error::AlreadyExists { what: what.into() }
    }
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }

    /// The stable code clients see.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::NotFound { .. } => ErrorCode::NotFound,
            Error::AlreadyExists { .. } => ErrorCode::AlreadyExists,
            Error::NotEmpty { .. } => ErrorCode::NotEmpty,
            Error::NotDirectory { .. } => ErrorCode::NotDirectory,
            Error::IsDirectory { .. } => ErrorCode::IsDirectory,
            Error::InvalidName { .. } => ErrorCode::InvalidName,
            Error::InvalidArgument(_) => ErrorCode::InvalidArgument,
            Error::Unauthenticated(_) => ErrorCode::Unauthenticated,
            Error::PermissionDenied(_) => ErrorCode::PermissionDenied,
            Error::QuotaExceeded { .. } => ErrorCode::QuotaExceeded,
            Error::NoSpace(_) => ErrorCode::NoSpace,
            Error::PreconditionFailed(_) => ErrorCode::PreconditionFailed,
            Error::Conflict(_) => ErrorCode::Conflict,
            Error::Expired(_) => ErrorCode::Expired,
            Error::HashMismatch(_) => ErrorCode::HashMismatch,
            Error::NotSupported(_) => ErrorCode::NotSupported,
            Error::Unavailable(_) => ErrorCode::Unavailable,
            Error::ResyncRequired { .. } => ErrorCode::ResyncRequired,
            Error::Db(e) if crate::db::is_retryable(e) => ErrorCode::Conflict,
            Error::Db(sqlx::Error::PoolTimedOut | sqlx::Error::Io(_)) => ErrorCode::Unavailable,
            Error::Db(_)
            | Error::Corrupt(_)
            | Error::Cache(_)
            | Error::Config(_)
            | Error::Io { .. }
            | Error::Internal(_) => ErrorCode::Internal,
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        let code = e.code();
        if code == ErrorCode::Internal {
            tracing::error!(error = %e, "internal error");
        }
        cyxcloud_proto::status(code, e.to_string())
    }
}
