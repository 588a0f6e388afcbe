//! Client errors. gRPC failures keep their stable [`ErrorCode`] so callers (CLI exit codes,
//! mountd errno, S3 error codes) can map them.

use cyxcloud_proto::ErrorCode;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{op}: {message} ({code})")]
    Rpc {
        op: &'static str,
        code: ErrorCode,
        message: String,
        retryable: bool,
    },
    #[error("cannot connect to {address}: {reason}")]
    Connect { address: String, reason: String },
    /// The gateway did not answer (unreachable, timed out, or failed a moment ago and not
    /// tried again yet): the caller may work offline and retry later.
    #[error("the gateway is unreachable: {0}")]
    Offline(String),
    #[error("invalid gateway address {0:?}")]
    BadAddress(String),
    #[error("chunk {chunk}: only {stored} of {needed} shards stored ({detail})")]
    NotEnoughShards {
        chunk: u32,
        stored: usize,
        needed: usize,
        detail: String,
    },
    #[error("chunk {chunk}: unrecoverable: {detail}")]
    Unrecoverable { chunk: u32, detail: String },
    #[error("the gateway sent an invalid response: {0}")]
    Protocol(String),
    #[error("file is encrypted; a master key is needed to read it")]
    KeyRequired,
    #[error(transparent)]
    Core(#[from] cyxcloud_core::Error),
    #[error(transparent)]
    Crypto(#[from] cyxcloud_core::error::CryptoError),
    #[error(transparent)]
    Chunk(#[from] cyxcloud_core::error::ChunkError),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("the upload was interrupted; resume it with write id {write_id}")]
    Interrupted { write_id: String },
}

impl ClientError {
    /// Wraps a status from the call named `op`.
    pub fn rpc(op: &'static str, s: tonic::Status) -> Self {
        ClientError::Rpc {
            op,
            code: cyxcloud_proto::error_code(&s),
            message: s.message().to_string(),
            retryable: cyxcloud_proto::status::is_retryable(&s),
        }
    }

    /// The stable error code, when the failure came from a server.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Rpc { code, .. } => Some(*code),
            ClientError::Connect { .. } | ClientError::Offline(_) => Some(ErrorCode::Unavailable),
            ClientError::NotEnoughShards { .. } => Some(ErrorCode::Unavailable),
            ClientError::Unrecoverable { .. } => Some(ErrorCode::Unrecoverable),
            ClientError::KeyRequired => Some(ErrorCode::PermissionDenied),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.code() == Some(ErrorCode::NotFound)
    }

    /// The gateway could not be reached (as opposed to an answer refusing the call): worth
    /// retrying, and a reason to work offline meanwhile.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            ClientError::Offline(_)
                | ClientError::Connect { .. }
                | ClientError::Rpc {
                    code: ErrorCode::Unavailable,
                    ..
                }
        )
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_is_told_apart_from_refused() {
        let rpc = |code| ClientError::Rpc {
            op: "x",
            code,
            message: String::new(),
            retryable: false,
        };
        for e in [
            ClientError::Offline("no answer".into()),
            ClientError::Connect {
                address: "a".into(),
                reason: "refused".into(),
            },
            rpc(ErrorCode::Unavailable),
        ] {
            assert!(e.is_unavailable(), "{e}");
            assert_eq!(e.code(), Some(ErrorCode::Unavailable), "{e}");
        }
        for e in [
            rpc(ErrorCode::NotFound),
            rpc(ErrorCode::PermissionDenied),
            ClientError::Protocol("bad".into()),
        ] {
            assert!(!e.is_unavailable(), "{e}");
        }
    }
}
