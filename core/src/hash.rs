//! Blake3 content hashes: shard keys, chunk ids and record checksums.

use std::fmt;
use std::str::FromStr;

/// A 256-bit blake3 hash. Shards are keyed by the hash of their bytes; plain chunks are named by
/// the hash of their plaintext (encrypted chunks by a keyed hash, see [`crate::crypto`]).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    pub const LEN: usize = 32;

    /// Hashes `data` with blake3.
    pub fn of(data: &[u8]) -> Self {
        Hash(*blake3::hash(data).as_bytes())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Parses 32 raw bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(Hash)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", &self.to_hex()[..16])
    }
}

/// Error for [`Hash::from_str`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a 64-character hex blake3 hash")]
pub struct ParseHashError;

impl FromStr for Hash {
    type Err = ParseHashError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| ParseHashError)?;
        Ok(Hash(out))
    }
}

/// True when `data` hashes to `expected`.
pub fn verify(data: &[u8], expected: &Hash) -> bool {
    // blake3::Hash equality is constant time; not needed here, but free.
    blake3::hash(data) == blake3::Hash::from_bytes(expected.0)
}
