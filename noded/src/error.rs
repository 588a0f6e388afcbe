//! The node's one error type, and the one place it becomes a gRPC status ([`Error::to_status`]).
//!
//! Every variant carries the structured facts of what went wrong; handlers return `Error` and
//! the service edge maps it once, with a stable [`ErrorCode`] for clients.

use std::path::PathBuf;

use cyxcloud_core::Hash;
use cyxcloud_core::error::RecordError;
use cyxcloud_core::token::TokenError;
use cyxcloud_proto::{ErrorCode, status};

/// Everything the node can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // ---- shard requests ----
    #[error("shard {0} is not stored on this node")]
    NotFound(Hash),
    #[error("shard {hash} is corrupt on disk ({reason}); it was quarantined and is not served")]
    Corrupt { hash: Hash, reason: String },
    #[error(
        "not enough space: storing {needed} more bytes would use {would_use} of {capacity} bytes"
    )]
    NoSpace {
        needed: u64,
        would_use: u64,
        capacity: u64,
    },
    #[error(
        "disk is full: {available} bytes free on the file system of {path}; storing {needed} \
         more would leave less than the {reserve}-byte reserve (storage.disk_reserve_mb)"
    )]
    DiskFull {
        path: PathBuf,
        available: u64,
        needed: u64,
        reserve: u64,
    },
    #[error("node is {state} and accepts no new shards")]
    Draining { state: &'static str },
    #[error("shard bytes hash to {actual}, not to the announced {expected}")]
    HashMismatch { expected: Hash, actual: Hash },
    #[error("shard of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: u64, limit: u64 },
    #[error("header announced {declared} bytes but {received} arrived")]
    SizeMismatch { declared: u64, received: u64 },
    #[error("{field} must be a 32-byte blake3 hash, got {len} bytes")]
    BadHash { field: &'static str, len: usize },
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    #[error("range offset {offset} + length {length} exceeds the shard's {size} bytes")]
    BadRange { offset: u64, length: u64, size: u64 },
    #[error("challenge nonce must be 16..=64 bytes, got {0}")]
    BadNonce(usize),
    #[error("a request may name at most {limit} shards, got {count}")]
    TooManyShards { count: usize, limit: usize },
    #[error(
        "this node trusts no token key yet (not registered with a gateway and none configured)"
    )]
    NoTrustedKeys,
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(
        "delete command decided before put {bound} of this process, which remembers puts from {floor} on; ask the gateway again"
    )]
    StaleDelete { bound: u64, floor: u64 },

    // ---- storage engine ----
    #[error("RocksDB at {path}: {source}")]
    Rocks {
        path: PathBuf,
        source: rocksdb::Error,
    },
    #[error("{context} {path}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("stored record for {hash} is unreadable: {source}")]
    Record { hash: Hash, source: RecordError },

    // ---- startup ----
    #[error(transparent)]
    Config(#[from] cyxcloud_daemon::ConfigError),
    #[error("invalid configuration: {key}: {reason}")]
    InvalidConfig { key: &'static str, reason: String },
    #[error(
        "data dir {dir} belongs to node {owner:?}, not {configured:?}; use another --data-dir or the node id {owner:?}"
    )]
    ForeignDataDir {
        dir: PathBuf,
        owner: String,
        configured: String,
    },
    #[error("{path} is not a valid node metadata file: {reason}")]
    BadMetadata { path: PathBuf, reason: String },
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: String,
        source: std::io::Error,
    },

    // ---- operator login ----
    #[error(
        "operator login needed but no terminal to prompt on: set CYXWIZ_EMAIL and CYXWIZ_PASSWORD (or --email and --password-file), or set [cyxwiz_api] register = false"
    )]
    LoginNeedsTerminal,
    #[error("login refused by {url}: {message}")]
    LoginRefused { url: String, message: String },
    #[error("account API {url} failed: {reason}")]
    AccountApi { url: String, reason: String },
    #[error("credentials file {path} is invalid: {reason}")]
    BadCredentials { path: PathBuf, reason: String },

    // ---- peers ----
    #[error("gateway {address}: {status}")]
    Gateway {
        address: String,
        status: Box<tonic::Status>,
    },
    #[error("node {node}: {reason}")]
    Peer { node: String, reason: String },
    #[error("cannot find node {0}: not in the DHT")]
    Unresolved(String),
    #[error("libp2p: {0}")]
    P2p(String),
    #[error("control socket {path}: {reason}")]
    Control { path: PathBuf, reason: String },
    #[error("TLS: {0}")]
    Tls(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(context: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            context,
            path: path.into(),
            source,
        }
    }

    /// The stable code clients see.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::NotFound(_) => ErrorCode::NotFound,
            Error::Corrupt { .. } | Error::Record { .. } => ErrorCode::Corrupt,
            Error::NoSpace { .. } | Error::DiskFull { .. } => ErrorCode::NoSpace,
            Error::Draining { .. } => ErrorCode::Draining,
            Error::HashMismatch { .. } => ErrorCode::HashMismatch,
            Error::TooLarge { .. } | Error::TooManyShards { .. } => ErrorCode::TooLarge,
            Error::SizeMismatch { .. }
            | Error::BadHash { .. }
            | Error::Malformed(_)
            | Error::BadRange { .. }
            | Error::BadNonce(_) => ErrorCode::InvalidArgument,
            Error::NoTrustedKeys => ErrorCode::Unauthenticated,
            Error::Token(t) => ErrorCode::from(t),
            Error::Gateway { .. } | Error::Peer { .. } | Error::Unresolved(_) => {
                ErrorCode::Unavailable
            }
            Error::InvalidConfig { .. } | Error::Config(_) => ErrorCode::InvalidArgument,
            Error::LoginRefused { .. } | Error::LoginNeedsTerminal => ErrorCode::Unauthenticated,
            _ => ErrorCode::Internal,
        }
    }

    /// The one mapping to the wire.
    pub fn to_status(&self) -> tonic::Status {
        status(self.code(), self.to_string())
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        e.to_status()
    }
}
