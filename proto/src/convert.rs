//! Conversions between wire messages and `cyxcloud-core` types. Everything coming off the wire
//! is validated here, so handlers work with well-formed core types only.

use cyxcloud_core::codec::{CodecId, Profile};
use cyxcloud_core::{ChunkMeta, Hash};

use crate::status::{ErrorCode, status};
use crate::v1;

/// Parses a 32-byte hash field.
pub fn hash(bytes: &[u8], field: &str) -> Result<Hash, tonic::Status> {
    Hash::from_slice(bytes).ok_or_else(|| {
        status(
            ErrorCode::InvalidArgument,
            format!(
                "{field} must be a 32-byte blake3 hash, got {} bytes",
                bytes.len()
            ),
        )
    })
}

impl From<&ChunkMeta> for v1::ChunkInfo {
    fn from(m: &ChunkMeta) -> Self {
        v1::ChunkInfo {
            id: m.id.0.to_vec(),
            size: m.size,
            encoded_size: m.encoded_size,
            codec: m.codec.as_u8() as u32,
            data_shards: m.profile.data() as u32,
            parity_shards: m.profile.parity() as u32,
            shard_size: m.shard_size,
            encrypted: m.encrypted,
            shard_hashes: m.shard_hashes.iter().map(|h| h.0.to_vec()).collect(),
        }
    }
}

/// Validates a wire `ChunkInfo` into core metadata.
pub fn chunk_meta(info: &v1::ChunkInfo) -> Result<ChunkMeta, tonic::Status> {
    let bad = |m: String| status(ErrorCode::InvalidArgument, m);
    let codec = u8::try_from(info.codec)
        .ok()
        .and_then(|c| CodecId::from_u8(c).ok())
        .ok_or_else(|| bad(format!("unknown codec {}", info.codec)))?;
    let profile = Profile::new(info.data_shards as usize, info.parity_shards as usize)
        .map_err(|e| bad(e.to_string()))?;
    let shard_hashes = info
        .shard_hashes
        .iter()
        .map(|h| hash(h, "shard hash"))
        .collect::<Result<Vec<_>, _>>()?;
    let meta = ChunkMeta {
        id: hash(&info.id, "chunk id")?,
        size: info.size,
        encoded_size: info.encoded_size,
        codec,
        profile,
        shard_size: info.shard_size,
        encrypted: info.encrypted,
        shard_hashes,
    };
    meta.validate().map_err(|e| bad(e.to_string()))?;
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    #[test]
    fn chunk_info_round_trip_and_validation() {
        let enc = cyxcloud_core::encode_chunk(
            BytesMut::from(&b"hello"[..]),
            CodecId::ReedSolomonErasure,
            Profile::DEFAULT,
            None,
        )
        .unwrap();
        let info = v1::ChunkInfo::from(&enc.meta);
        assert_eq!(chunk_meta(&info).unwrap(), enc.meta);
        let mut bad = info.clone();
        bad.shard_hashes.pop();
        assert!(chunk_meta(&bad).is_err());
        let mut bad = info.clone();
        bad.codec = 9;
        assert!(chunk_meta(&bad).is_err());
        let mut bad = info;
        bad.data_shards = 0;
        assert_eq!(
            crate::error_code(&chunk_meta(&bad).unwrap_err()),
            ErrorCode::InvalidArgument
        );
    }
}
