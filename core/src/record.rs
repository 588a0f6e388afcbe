//! The shard record: how one shard is laid out on a node's disk (and in RocksDB values).
//!
//! ```text
//! offset size field
//!      0    4 magic          0x43595843 ("CYXC")
//!      4    4 version        1
//!      8    4 flags          bit 0 = compressed (LZ4 block), bit 1 = encrypted at rest
//!     12    8 original size  bytes of the shard before compression/encryption
//!     20    8 stored size    bytes of payload that follow the header
//!     28   32 content hash   blake3 of the original shard bytes (also the record's key)
//!     60    N payload
//! ```
//!
//! All integers are big-endian, so the magic reads "CYXC" in a hex dump. [`decode`] is the one
//! function that reads records: it knows every version ever written (today: 1) and rejects every
//! malformed input with a [`RecordError`], never a panic.

use crate::crypto::AtRestKey;
use crate::error::RecordError;
use crate::hash::Hash;

pub const MAGIC: u32 = 0x4359_5843;
pub const VERSION: u32 = 1;
pub const HEADER_LEN: usize = 60;
pub const FLAG_COMPRESSED: u32 = 1 << 0;
pub const FLAG_ENCRYPTED: u32 = 1 << 1;
const KNOWN_FLAGS: u32 = FLAG_COMPRESSED | FLAG_ENCRYPTED;
/// Largest shard a record may describe (a 1 GiB chunk with k = 1).
pub const MAX_ORIGINAL_SIZE: u64 = crate::MAX_CHUNK_SIZE as u64 + 64;

/// How to store a shard.
#[derive(Debug, Clone, Default)]
pub struct EncodeOptions<'a> {
    /// LZ4-compress the payload when that makes it smaller.
    pub compress: bool,
    /// Encrypt the payload at rest with the node's key.
    pub at_rest: Option<&'a AtRestKey>,
}

/// A parsed record header, borrowing its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordView<'a> {
    pub version: u32,
    pub flags: u32,
    pub original_size: u64,
    pub hash: Hash,
    pub payload: &'a [u8],
}

impl RecordView<'_> {
    pub fn is_compressed(&self) -> bool {
        self.flags & FLAG_COMPRESSED != 0
    }

    pub fn is_encrypted(&self) -> bool {
        self.flags & FLAG_ENCRYPTED != 0
    }

    /// Restores the original shard bytes and verifies them against the header's hash.
    pub fn into_shard(self, at_rest: Option<&AtRestKey>) -> Result<Vec<u8>, RecordError> {
        let mut data = self.payload.to_vec();
        if self.is_encrypted() {
            let key = at_rest.ok_or(RecordError::KeyRequired)?;
            key.open(&self.hash, &mut data)?;
        }
        if self.is_compressed() {
            let mut out = vec![0u8; self.original_size as usize];
            match lz4_flex::block::decompress_into(&data, &mut out) {
                Ok(n) if n == out.len() => data = out,
                _ => return Err(RecordError::Decompress),
            }
        }
        if data.len() as u64 != self.original_size {
            return Err(RecordError::OriginalSizeMismatch {
                original: self.original_size,
                stored: data.len() as u64,
            });
        }
        let actual = Hash::of(&data);
        if actual != self.hash {
            return Err(RecordError::HashMismatch {
                expected: self.hash,
                actual,
            });
        }
        Ok(data)
    }
}

/// Builds the record for `shard`, whose blake3 is `hash` (the caller has it already: it is the
/// key the shard is stored under).
pub fn encode(shard: &[u8], hash: &Hash, opts: &EncodeOptions<'_>) -> Vec<u8> {
    let mut flags = 0;
    let mut payload: Option<Vec<u8>> = None;
    if opts.compress {
        let c = lz4_flex::block::compress(shard);
        if c.len() < shard.len() {
            flags |= FLAG_COMPRESSED;
            payload = Some(c);
        }
    }
    if let Some(key) = opts.at_rest {
        let mut p = payload.take().unwrap_or_else(|| shard.to_vec());
        key.seal(hash, &mut p)
            .expect("AES-GCM seals any payload below 64 GiB");
        flags |= FLAG_ENCRYPTED;
        payload = Some(p);
    }
    let body: &[u8] = payload.as_deref().unwrap_or(shard);
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&MAGIC.to_be_bytes());
    out.extend_from_slice(&VERSION.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&(shard.len() as u64).to_be_bytes());
    out.extend_from_slice(&(body.len() as u64).to_be_bytes());
    out.extend_from_slice(hash.as_bytes());
    out.extend_from_slice(body);
    out
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// Parses and structurally validates a record. The content hash is checked by
/// [`RecordView::into_shard`] (or [`decode_verified`]).
pub fn decode(bytes: &[u8]) -> Result<RecordView<'_>, RecordError> {
    if bytes.len() < HEADER_LEN {
        // A short buffer that does not even start with the magic is reported as bad magic.
        if bytes.len() >= 4 && be32(bytes, 0) != MAGIC {
            return Err(RecordError::BadMagic {
                found: be32(bytes, 0),
            });
        }
        return Err(RecordError::Truncated {
            len: bytes.len(),
            needed: HEADER_LEN,
        });
    }
    let magic = be32(bytes, 0);
    if magic != MAGIC {
        return Err(RecordError::BadMagic { found: magic });
    }
    let version = be32(bytes, 4);
    if version != VERSION {
        return Err(RecordError::UnsupportedVersion(version));
    }
    let flags = be32(bytes, 8);
    if flags & !KNOWN_FLAGS != 0 {
        return Err(RecordError::UnknownFlags(flags & !KNOWN_FLAGS));
    }
    let original_size = be64(bytes, 12);
    let stored_size = be64(bytes, 20);
    let payload = &bytes[HEADER_LEN..];
    if stored_size != payload.len() as u64 {
        return Err(RecordError::StoredSizeMismatch {
            declared: stored_size,
            actual: payload.len() as u64,
        });
    }
    if original_size > MAX_ORIGINAL_SIZE {
        return Err(RecordError::TooLarge {
            size: original_size,
            limit: MAX_ORIGINAL_SIZE,
        });
    }
    if flags == 0 && original_size != stored_size {
        return Err(RecordError::OriginalSizeMismatch {
            original: original_size,
            stored: stored_size,
        });
    }
    let hash = Hash::from_slice(&bytes[28..60]).expect("32-byte slice");
    Ok(RecordView {
        version,
        flags,
        original_size,
        hash,
        payload,
    })
}

/// [`decode`] followed by [`RecordView::into_shard`]: the verified shard bytes.
pub fn decode_verified(bytes: &[u8], at_rest: Option<&AtRestKey>) -> Result<Vec<u8>, RecordError> {
    decode(bytes)?.into_shard(at_rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exact bytes of a version-1 record. If this test fails the on-disk format changed:
    /// bump VERSION and teach `decode` the old layout instead of editing the expectation.
    #[test]
    fn golden_bytes_v1() {
        let shard = b"CyxCloud shard";
        let hash = Hash::of(shard);
        let rec = encode(shard, &hash, &EncodeOptions::default());
        let expected_header = concat!(
            "43595843",         // magic CYXC
            "00000001",         // version
            "00000000",         // flags
            "000000000000000e", // original size 14
            "000000000000000e", // stored size 14
        );
        assert_eq!(hex::encode(&rec[..28]), expected_header);
        assert_eq!(
            hex::encode(&rec[28..60]),
            GOLDEN_HASH,
            "blake3 of the payload"
        );
        assert_eq!(&rec[60..], shard);
        assert_eq!(rec.len(), 74);
        assert_eq!(decode_verified(&rec, None).unwrap(), shard);
    }

    const GOLDEN_HASH: &str = "c4edbc7dc049aec6cc33586e58a0786e10404df6c3442e6c09f3da88efd32052";

    #[test]
    fn compressed_and_encrypted_round_trip() {
        let shard = vec![42u8; 100_000];
        let hash = Hash::of(&shard);
        let key = AtRestKey::from_bytes([9; 32]);
        for (compress, enc) in [(false, false), (true, false), (false, true), (true, true)] {
            let opts = EncodeOptions {
                compress,
                at_rest: enc.then_some(&key),
            };
            let rec = encode(&shard, &hash, &opts);
            let view = decode(&rec).unwrap();
            assert_eq!(view.is_compressed(), compress);
            assert_eq!(view.is_encrypted(), enc);
            if compress {
                assert!(rec.len() < 10_000);
            }
            assert_eq!(view.into_shard(Some(&key)).unwrap(), shard);
            if enc {
                assert_eq!(
                    decode(&rec).unwrap().into_shard(None),
                    Err(RecordError::KeyRequired)
                );
            }
        }
    }

    #[test]
    fn incompressible_data_is_stored_plain() {
        let mut shard = vec![0u8; 4096];
        blake3::Hasher::new()
            .update(b"seed")
            .finalize_xof()
            .fill(&mut shard);
        let rec = encode(
            &shard,
            &Hash::of(&shard),
            &EncodeOptions {
                compress: true,
                at_rest: None,
            },
        );
        assert!(!decode(&rec).unwrap().is_compressed());
    }

    #[test]
    fn every_single_byte_flip_is_detected() {
        let shard = b"0123456789abcdef0123456789abcdef".to_vec();
        let rec = encode(&shard, &Hash::of(&shard), &EncodeOptions::default());
        for i in 0..rec.len() {
            for bit in 0..8 {
                let mut r = rec.clone();
                r[i] ^= 1 << bit;
                assert!(
                    decode_verified(&r, None).is_err(),
                    "flip of byte {i} bit {bit} undetected"
                );
            }
        }
    }

    #[test]
    fn malformed_headers_get_typed_errors() {
        let shard = b"abc";
        let rec = encode(shard, &Hash::of(shard), &EncodeOptions::default());
        assert_eq!(
            decode(&rec[..10]),
            Err(RecordError::Truncated {
                len: 10,
                needed: 60
            })
        );
        assert_eq!(
            decode(b"XYZW"),
            Err(RecordError::BadMagic { found: 0x5859_5a57 })
        );
        let mut r = rec.clone();
        r[7] = 2;
        assert_eq!(decode(&r), Err(RecordError::UnsupportedVersion(2)));
        let mut r = rec.clone();
        r[11] = 0x80;
        assert_eq!(decode(&r), Err(RecordError::UnknownFlags(0x80)));
        let mut r = rec.clone();
        r.push(0);
        assert_eq!(
            decode(&r),
            Err(RecordError::StoredSizeMismatch {
                declared: 3,
                actual: 4
            })
        );
        let mut r = rec.clone();
        r[12] = 0xff;
        assert!(matches!(decode(&r), Err(RecordError::TooLarge { .. })));
        let mut r = rec;
        r[19] = 4;
        assert_eq!(
            decode(&r),
            Err(RecordError::OriginalSizeMismatch {
                original: 4,
                stored: 3
            })
        );
    }
}
