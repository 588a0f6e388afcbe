//! The per-chunk pipeline: hash → (encrypt) → encode on write, verify → decode → (decrypt) →
//! verify on read.
//!
//! Integrity is checked twice on the way back: every shard against its blake3 before it is used
//! (a corrupt shard is dropped and decoding goes on from any `k` verified shards), and the whole
//! chunk against its id after decoding. [`decode_chunk`] therefore either returns the exact bytes
//! that were written or an error; never wrong bytes.

use bytes::{Bytes, BytesMut};

use crate::codec::{self, CodecId, Profile};
use crate::crypto::{MasterKey, TAG_LEN};
use crate::error::{ChunkError, CodecError, Result};
use crate::hash::Hash;

/// Everything needed to rebuild a chunk from its shards (the gateway stores it per chunk).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkMeta {
    /// blake3 of the plaintext, or the keyed blake3 when encrypted.
    pub id: Hash,
    /// Plaintext length.
    pub size: u64,
    /// Length of what was erasure coded (plaintext, or ciphertext + tag when encrypted).
    pub encoded_size: u64,
    pub codec: CodecId,
    pub profile: Profile,
    pub shard_size: u32,
    pub encrypted: bool,
    /// blake3 of each of the k + m shards, by shard index.
    pub shard_hashes: Vec<Hash>,
}

impl ChunkMeta {
    /// Structural checks on metadata that came over the wire or out of a database.
    pub fn validate(&self) -> Result<(), ChunkError> {
        if self.shard_hashes.len() != self.profile.total() {
            return Err(ChunkError::BadMeta(
                "shard hash count differs from the profile's shard count",
            ));
        }
        let expected_encoded = self.size + if self.encrypted { TAG_LEN as u64 } else { 0 };
        if self.encoded_size != expected_encoded || self.encoded_size == 0 {
            return Err(ChunkError::BadMeta(
                "encoded size does not match size and encryption",
            ));
        }
        if self.encoded_size > (crate::MAX_CHUNK_SIZE + TAG_LEN) as u64 {
            return Err(ChunkError::TooLarge {
                size: self.encoded_size as usize,
                limit: crate::MAX_CHUNK_SIZE,
            });
        }
        if self.profile.shard_size(self.encoded_size as usize) != self.shard_size as usize {
            return Err(ChunkError::BadMeta(
                "shard size does not match the encoded size",
            ));
        }
        Ok(())
    }
}

/// A chunk ready to be striped: its metadata and its `k + m` shards.
#[derive(Debug, Clone)]
pub struct EncodedChunk {
    pub meta: ChunkMeta,
    pub shards: Vec<Bytes>,
}

/// Result of a successful decode.
#[derive(Debug, Clone)]
pub struct DecodedChunk {
    pub data: Bytes,
    /// Shard indices that were present but failed verification (report them for repair).
    pub corrupt: Vec<usize>,
}

/// Hashes, optionally encrypts, and erasure codes one chunk.
pub fn encode_chunk(
    data: BytesMut,
    codec_id: CodecId,
    profile: Profile,
    key: Option<&MasterKey>,
) -> Result<EncodedChunk> {
    if data.is_empty() {
        return Err(ChunkError::BadMeta("empty chunk: empty files have no chunks").into());
    }
    if data.len() > crate::MAX_CHUNK_SIZE {
        return Err(ChunkError::TooLarge {
            size: data.len(),
            limit: crate::MAX_CHUNK_SIZE,
        }
        .into());
    }
    let size = data.len() as u64;
    let (id, payload) = match key {
        Some(k) => {
            let id = k.chunk_id(&data);
            let mut buf = Vec::from(data);
            buf.reserve_exact(TAG_LEN);
            k.seal_chunk(&id, &mut buf)?;
            (id, Bytes::from(buf))
        }
        None => (Hash::of(&data), data.freeze()),
    };
    let codec = codec::codec(codec_id, profile);
    let shards = codec.encode(&payload)?;
    let shard_hashes = shards.iter().map(|s| Hash::of(s)).collect();
    let meta = ChunkMeta {
        id,
        size,
        encoded_size: payload.len() as u64,
        codec: codec_id,
        profile,
        shard_size: profile.shard_size(payload.len()) as u32,
        encrypted: key.is_some(),
        shard_hashes,
    };
    Ok(EncodedChunk { meta, shards })
}

/// Verifies the present shards, rebuilds the chunk from any `k` good ones, decrypts it when
/// needed, and checks the result against the chunk id.
pub fn decode_chunk(
    meta: &ChunkMeta,
    mut shards: Vec<Option<Bytes>>,
    key: Option<&MasterKey>,
) -> Result<DecodedChunk> {
    check_inputs(meta, &shards, key)?;
    let k = meta.profile.data();
    let mut corrupt = Vec::new();
    let mut verified = 0;
    for (i, slot) in shards.iter_mut().enumerate() {
        let Some(s) = slot else { continue };
        if verified >= k {
            // Enough verified shards already (data shards come first): hash no more.
            *slot = None;
        } else if s.len() != meta.shard_size as usize
            || !crate::hash::verify(s, &meta.shard_hashes[i])
        {
            corrupt.push(i);
            *slot = None;
        } else {
            verified += 1;
        }
    }
    if verified < k {
        return Err(CodecError::Unrecoverable {
            available: verified,
            needed: k,
        }
        .into());
    }
    let data = rebuild_and_verify(meta, &shards, key)?;
    Ok(DecodedChunk {
        data: Bytes::from(data),
        corrupt,
    })
}

/// Fast path for readers: rebuilds the chunk from the first `k` present shards without hashing
/// each shard, then verifies the whole chunk against its id (and the GCM tag when encrypted).
/// Wrong bytes are still never returned; but when this fails, the caller does not learn which
/// shard was bad and should fall back to [`decode_chunk`], which checks every shard.
pub fn decode_chunk_fast(
    meta: &ChunkMeta,
    mut shards: Vec<Option<Bytes>>,
    key: Option<&MasterKey>,
) -> Result<Bytes> {
    check_inputs(meta, &shards, key)?;
    let k = meta.profile.data();
    let mut used = 0;
    for slot in shards.iter_mut() {
        if slot.is_some() {
            if used == k {
                *slot = None;
            } else {
                used += 1;
            }
        }
    }
    let data = rebuild_and_verify(meta, &shards, key)?;
    Ok(Bytes::from(data))
}

fn check_inputs(meta: &ChunkMeta, shards: &[Option<Bytes>], key: Option<&MasterKey>) -> Result<()> {
    meta.validate()?;
    if shards.len() != meta.profile.total() {
        return Err(CodecError::WrongShardCount {
            expected: meta.profile.total(),
            got: shards.len(),
        }
        .into());
    }
    if meta.encrypted && key.is_none() {
        return Err(ChunkError::KeyRequired.into());
    }
    Ok(())
}

/// Decodes the present shards, decrypts when needed, and checks the result against the chunk
/// id: the one place that decides whether decoded bytes may leave this crate.
fn rebuild_and_verify(
    meta: &ChunkMeta,
    shards: &[Option<Bytes>],
    key: Option<&MasterKey>,
) -> Result<Vec<u8>> {
    let codec = codec::codec(meta.codec, meta.profile);
    let mut data = codec.decode(shards, meta.encoded_size as usize)?;
    let id = match (meta.encrypted, key) {
        (true, Some(k)) => {
            k.open_chunk(&meta.id, &mut data)?;
            k.chunk_id(&data)
        }
        _ => Hash::of(&data),
    };
    if id != meta.id {
        return Err(ChunkError::IdMismatch {
            expected: meta.id,
            actual: id,
        }
        .into());
    }
    Ok(data)
}
