//! `cyxcloud-core`: the pure data path that every other CyxCloud crate stands on.
//!
//! What lives here: cutting a byte stream into chunks ([`chunker`]), erasure coding a chunk into
//! `k` data + `m` parity shards behind the [`codec::Codec`] trait, the on-disk shard record format
//! ([`record`]), blake3 integrity ([`hash`]), client-side encryption ([`crypto`]), the whole
//! per-chunk pipeline that ties them together ([`chunk`]), shard placement as a pure function
//! ([`placement`]), the Ed25519 capability tokens that nodes check ([`token`]) and the node keys
//! that registrations and heartbeats are signed with ([`identity`]).
//!
//! What must never live here: tokio, tonic, sqlx, rocksdb or any other IO runtime. Everything in
//! this crate is a deterministic function of its inputs (plus the OS random source for key and
//! token generation), so it can be property tested and fuzzed. CI enforces the dependency rule
//! with `cargo tree`.

pub mod chunk;
pub mod chunker;
pub mod codec;
pub mod crypto;
pub mod error;
pub mod hash;
pub mod identity;
pub mod placement;
pub mod record;
pub mod token;

pub use chunk::{
    ChunkMeta, DecodedChunk, EncodedChunk, decode_chunk, decode_chunk_fast, encode_chunk,
};
pub use chunker::{ChunkSplitter, ReadChunker};
pub use codec::{Codec, CodecId, Profile};
pub use crypto::MasterKey;
pub use error::Error;
pub use hash::Hash;

/// Default chunk size: 64 MiB, as in the usage guide.
pub const DEFAULT_CHUNK_SIZE: usize = 64 * 1024 * 1024;
/// Largest chunk size a deployment may configure. AES-GCM and the shard record format both allow
/// far more; the bound keeps a single chunk's memory footprint sane.
pub const MAX_CHUNK_SIZE: usize = 1024 * 1024 * 1024;
