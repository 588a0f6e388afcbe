//! The crate's error type: one enum, with one nested enum per subsystem so that callers can
//! match on exactly what went wrong. Wire mappings (gRPC status, S3 XML, errno) live in the crates
//! that own those edges, never here.

use crate::codec::CodecId;

/// Every failure the data path can report.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    #[error(transparent)]
    Placement(#[from] crate::placement::PlacementError),
    #[error(transparent)]
    Token(#[from] crate::token::TokenError),
}

/// An erasure profile that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    #[error("erasure profile needs at least one data shard (got {data}+{parity})")]
    NoDataShards { data: usize, parity: usize },
    #[error(
        "erasure profile needs at least one parity shard (got {data}+{parity}): without parity a single lost node loses data"
    )]
    NoParityShards { data: usize, parity: usize },
    #[error("erasure profile {data}+{parity} has {total} shards; at most {max} are supported")]
    TooManyShards {
        data: usize,
        parity: usize,
        total: usize,
        max: usize,
    },
    #[error(
        "cannot parse erasure profile {input:?}: use default, ha, max-ha, extreme or K+M such as 10+4"
    )]
    Unparsable { input: String },
}

/// Erasure coding failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("unknown codec id {0}")]
    UnknownCodec(u8),
    #[error("expected {expected} shard slots, got {got}")]
    WrongShardCount { expected: usize, got: usize },
    #[error("shard {index} has {got} bytes, expected {expected}")]
    ShardSizeMismatch {
        index: usize,
        expected: usize,
        got: usize,
    },
    #[error("invalid shard size {0}: must be a non-zero multiple of {align}", align = crate::codec::SHARD_ALIGN)]
    InvalidShardSize(usize),
    #[error("chunk unrecoverable: {available} usable shards, {needed} needed")]
    Unrecoverable { available: usize, needed: usize },
    #[error("chunk of {len} bytes does not fit {data} shards of {shard_size} bytes")]
    LengthOutOfRange {
        len: usize,
        data: usize,
        shard_size: usize,
    },
    #[error("{codec} backend rejected the operation: {detail}")]
    Backend { codec: CodecId, detail: String },
}

/// Shard record decoding failures. The decoder never panics; every malformed input maps here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record truncated: {len} bytes, header needs {needed}")]
    Truncated { len: usize, needed: usize },
    #[error("bad record magic {found:#010x} (expected 0x43595843 \"CYXC\")")]
    BadMagic { found: u32 },
    #[error("unsupported record version {0}")]
    UnsupportedVersion(u32),
    #[error("record has unknown flag bits {0:#x}")]
    UnknownFlags(u32),
    #[error("record says {declared} payload bytes but holds {actual}")]
    StoredSizeMismatch { declared: u64, actual: u64 },
    #[error("uncompressed, unencrypted record says original size {original} but stores {stored}")]
    OriginalSizeMismatch { original: u64, stored: u64 },
    #[error("record original size {size} exceeds the limit of {limit} bytes")]
    TooLarge { size: u64, limit: u64 },
    #[error("compressed payload is corrupt")]
    Decompress,
    #[error("record is encrypted at rest but no node key was given")]
    KeyRequired,
    #[error("record content hash mismatch: header says {expected}, content hashes to {actual}")]
    HashMismatch {
        expected: crate::Hash,
        actual: crate::Hash,
    },
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

/// Encryption and key handling failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("authentication failed: the ciphertext was tampered with or the key is wrong")]
    Tampered,
    #[error("ciphertext of {0} bytes is shorter than the 16-byte tag")]
    CiphertextTooShort(usize),
    #[error("key file must hold 32 raw bytes or 64 hex characters, found {0} bytes")]
    BadKeyFile(usize),
    #[error("key file {path} is readable by group or others (mode {mode:o}); chmod 600 it")]
    KeyFilePermissions { path: String, mode: u32 },
    #[error("cannot read key file {path}: {reason}")]
    KeyFileIo { path: String, reason: String },
    #[error("passphrase key derivation failed: {0}")]
    Kdf(String),
    #[error("the operating system random source failed")]
    Random,
}

/// Chunk-level (pipeline) failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("chunk is encrypted but no master key was given")]
    KeyRequired,
    #[error("decoded chunk does not match its id {expected}: got {actual}")]
    IdMismatch {
        expected: crate::Hash,
        actual: crate::Hash,
    },
    #[error("chunk metadata is inconsistent: {0}")]
    BadMeta(&'static str),
    #[error("chunk of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
