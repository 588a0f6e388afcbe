//! The drive's errors. Every failure inside mountd is one of these; [`crate::errno`] is the one
//! place that turns them into the errno a program sees.

use cyxcloud_client::ClientError;
use cyxcloud_proto::ErrorCode;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A gateway or node call failed with a stable code.
    #[error("{op}: {message} ({code})")]
    Remote {
        op: &'static str,
        code: ErrorCode,
        message: String,
    },
    /// The gateway cannot be reached and the answer is not in the local cache.
    #[error("the gateway is unreachable ({0}) and the local cache cannot answer")]
    Offline(String),
    #[error("client: {0}")]
    Client(#[from] ClientError),
    #[error("metadata cache: {0}")]
    Store(#[from] rusqlite::Error),
    #[error("metadata cache record {what} is damaged: {detail}")]
    Corrupt { what: String, detail: String },
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("no such entry: {0}")]
    NotFound(String),
    #[error("{0} already exists")]
    Exists(String),
    #[error("not a directory: {0}")]
    NotDir(String),
    #[error("is a directory: {0}")]
    IsDir(String),
    #[error("directory not empty: {0}")]
    NotEmpty(String),
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("name longer than 255 bytes")]
    NameTooLong,
    #[error("not permitted: {0}")]
    NotPermitted(String),
    #[error("read-only mount")]
    ReadOnly,
    #[error("not supported: {0}")]
    Unsupported(String),
    #[error("cross-bucket operation: {0}")]
    CrossBucket(String),
    #[error("no such attribute")]
    NoAttr,
    #[error("attribute value larger than the buffer")]
    Range,
    #[error("bad file handle {0}")]
    BadHandle(u64),
    #[error("configuration: {0}")]
    Config(String),
    #[error("the cache directory {path} is used by another running mountd (pid {pid})")]
    CacheInUse { path: String, pid: String },
}

impl Error {
    /// Wraps a gRPC status from the call `op`.
    pub fn rpc(op: &'static str, s: tonic::Status) -> Error {
        let code = cyxcloud_proto::error_code(&s);
        Error::Remote {
            op,
            code,
            message: s.message().to_string(),
        }
    }

    /// The stable code of a remote failure, if this is one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Remote { code, .. } => Some(*code),
            Error::Client(c) => c.code(),
            Error::Offline(_) => Some(ErrorCode::Unavailable),
            _ => None,
        }
    }

    /// The gateway could not be reached (as opposed to answering with an error).
    pub fn is_unavailable(&self) -> bool {
        match self {
            Error::Offline(_) => true,
            Error::Client(c) => c.is_unavailable(),
            Error::Remote { code, .. } => *code == ErrorCode::Unavailable,
            _ => false,
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound(_)) || self.code() == Some(ErrorCode::NotFound)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
