//! Erasure coding behind the [`Codec`] trait.
//!
//! A chunk of `len` bytes is cut into `k` data shards of `shard_size` bytes (the last one zero
//! padded) and `m` parity shards are computed, so that any `k` of the `k + m` shards rebuild the
//! chunk. Two implementations exist and both stay readable forever, because the codec id is
//! stored in every chunk's metadata:
//!
//! * [`CodecId::ReedSolomonErasure`]: the `reed-solomon-erasure` crate with its `simd-accel`
//!   GF(2^8) kernels (the design's codec; fastest for small shard counts such as 10+4).
//! * [`CodecId::ReedSolomonSimd`]: the `reed-solomon-simd` crate (O(n log n) Leopard-style
//!   codec, built for many shards).
//!
//! Both are systematic: data shard `i` is byte range `i * shard_size ..` of the chunk.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;

use crate::error::{CodecError, ProfileError};

/// Shard sizes are rounded up to this many bytes: both codecs' SIMD kernels like aligned,
/// even lengths (reed-solomon-simd requires a multiple of 2).
pub const SHARD_ALIGN: usize = 64;

/// Most shards a chunk may have (GF(2^8) limit of reed-solomon-erasure).
pub const MAX_SHARDS: usize = 256;

/// Identifies an erasure codec in chunk metadata. The numeric values are persisted: never
/// renumber.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum CodecId {
    ReedSolomonErasure = 1,
    ReedSolomonSimd = 2,
}

impl CodecId {
    pub const ALL: [CodecId; 2] = [CodecId::ReedSolomonErasure, CodecId::ReedSolomonSimd];

    pub fn from_u8(v: u8) -> Result<Self, CodecError> {
        match v {
            1 => Ok(CodecId::ReedSolomonErasure),
            2 => Ok(CodecId::ReedSolomonSimd),
            other => Err(CodecError::UnknownCodec(other)),
        }
    }

    pub fn as_u8(self) -> u8 {
        self as u8
    }

    pub fn name(self) -> &'static str {
        match self {
            CodecId::ReedSolomonErasure => "rs-erasure",
            CodecId::ReedSolomonSimd => "rs-simd",
        }
    }
}

impl fmt::Display for CodecId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An erasure profile: `data` (k) data shards plus `parity` (m) parity shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Profile {
    data: u16,
    parity: u16,
}

impl Profile {
    /// 10 data + 4 parity: survives 4 lost nodes, 40 % overhead.
    pub const DEFAULT: Profile = Profile {
        data: 10,
        parity: 4,
    };
    /// 8 + 6: survives 6 lost nodes, 75 % overhead.
    pub const HA: Profile = Profile { data: 8, parity: 6 };
    /// 8 + 8: survives 8 lost nodes, 100 % overhead.
    pub const MAX_HA: Profile = Profile { data: 8, parity: 8 };
    /// 6 + 10: survives 10 lost nodes, 167 % overhead.
    pub const EXTREME: Profile = Profile {
        data: 6,
        parity: 10,
    };

    pub const NAMED: [(&'static str, Profile); 4] = [
        ("default", Profile::DEFAULT),
        ("ha", Profile::HA),
        ("max-ha", Profile::MAX_HA),
        ("extreme", Profile::EXTREME),
    ];

    /// A custom profile; refused when it cannot protect data or exceeds the codec limits.
    pub fn new(data: usize, parity: usize) -> Result<Self, ProfileError> {
        if data == 0 {
            return Err(ProfileError::NoDataShards { data, parity });
        }
        if parity == 0 {
            return Err(ProfileError::NoParityShards { data, parity });
        }
        let total = data.saturating_add(parity);
        if total > MAX_SHARDS {
            return Err(ProfileError::TooManyShards {
                data,
                parity,
                total,
                max: MAX_SHARDS,
            });
        }
        Ok(Profile {
            data: data as u16,
            parity: parity as u16,
        })
    }

    /// k: shards needed to rebuild a chunk.
    pub fn data(self) -> usize {
        self.data as usize
    }

    /// m: shards that may be lost.
    pub fn parity(self) -> usize {
        self.parity as usize
    }

    pub fn total(self) -> usize {
        self.data() + self.parity()
    }

    /// Default number of stored shards a write needs before it may commit: k + m − 1.
    pub fn default_success_threshold(self) -> usize {
        self.total() - 1
    }

    /// Storage overhead in percent (parity / data).
    pub fn overhead_percent(self) -> f64 {
        self.parity as f64 * 100.0 / self.data as f64
    }

    /// Shard size for a chunk of `len` bytes: `ceil(len / k)` rounded up to [`SHARD_ALIGN`].
    pub fn shard_size(self, len: usize) -> usize {
        let per = len.div_ceil(self.data()).max(1);
        per.div_ceil(SHARD_ALIGN) * SHARD_ALIGN
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}+{}", self.data, self.parity)
    }
}

impl FromStr for Profile {
    type Err = ProfileError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().to_ascii_lowercase();
        if let Some((_, p)) = Profile::NAMED.iter().find(|(n, _)| *n == t) {
            return Ok(*p);
        }
        let unparsable = || ProfileError::Unparsable {
            input: s.to_string(),
        };
        let (k, m) = t.split_once('+').ok_or_else(unparsable)?;
        let k: usize = k.trim().parse().map_err(|_| unparsable())?;
        let m: usize = m.trim().parse().map_err(|_| unparsable())?;
        Profile::new(k, m)
    }
}

/// An erasure codec for one profile.
pub trait Codec: Send + Sync {
    fn id(&self) -> CodecId;
    fn profile(&self) -> Profile;

    /// Encodes `data` into `k + m` shards of [`Profile::shard_size`] bytes. Data shards that need
    /// no padding are zero-copy slices of `data`.
    fn encode(&self, data: &Bytes) -> Result<Vec<Bytes>, CodecError>;

    /// Rebuilds the original `len` bytes from the shards present in `shards` (index = shard
    /// index, `None` = missing). Every present shard must already be verified by the caller
    /// (see [`crate::chunk::decode_chunk`], which checks blake3 first); at least `k` must be
    /// present.
    fn decode(&self, shards: &[Option<Bytes>], len: usize) -> Result<Vec<u8>, CodecError>;
}

/// Returns a shared codec instance (constructed once per codec and profile).
pub fn codec(id: CodecId, profile: Profile) -> Arc<dyn Codec> {
    type Cache = Mutex<HashMap<(CodecId, Profile), Arc<dyn Codec>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut map = cache.lock().unwrap_or_else(|e| e.into_inner());
    map.entry((id, profile))
        .or_insert_with(|| match id {
            CodecId::ReedSolomonErasure => Arc::new(RsErasure::new(profile)) as Arc<dyn Codec>,
            CodecId::ReedSolomonSimd => Arc::new(RsSimd { profile }),
        })
        .clone()
}

/// The codec new chunks are written with for `profile`: whichever measured faster on this
/// project's benchmark (`cargo bench -p cyxcloud-core --bench data_path`, see BENCHMARKS.md).
/// reed-solomon-erasure's GF(2^8) SIMD kernels win at every named profile; reed-solomon-simd
/// only pays off beyond a few dozen shards.
pub fn default_codec(profile: Profile) -> CodecId {
    if profile.total() <= 64 {
        CodecId::ReedSolomonErasure
    } else {
        CodecId::ReedSolomonSimd
    }
}

fn check_layout(
    profile: Profile,
    shards: &[Option<Bytes>],
    len: usize,
) -> Result<usize, CodecError> {
    if shards.len() != profile.total() {
        return Err(CodecError::WrongShardCount {
            expected: profile.total(),
            got: shards.len(),
        });
    }
    let shard_size = profile.shard_size(len);
    if len == 0 || len > shard_size * profile.data() {
        return Err(CodecError::LengthOutOfRange {
            len,
            data: profile.data(),
            shard_size,
        });
    }
    let mut available = 0;
    for (index, s) in shards.iter().enumerate() {
        if let Some(s) = s {
            if s.len() != shard_size {
                return Err(CodecError::ShardSizeMismatch {
                    index,
                    expected: shard_size,
                    got: s.len(),
                });
            }
            available += 1;
        }
    }
    if available < profile.data() {
        return Err(CodecError::Unrecoverable {
            available,
            needed: profile.data(),
        });
    }
    Ok(shard_size)
}

/// Splits `data` into `k` data shards, zero-copy except for a padded tail.
fn split_data(data: &Bytes, k: usize, shard_size: usize) -> Vec<Bytes> {
    (0..k)
        .map(|i| {
            let start = (i * shard_size).min(data.len());
            let end = ((i + 1) * shard_size).min(data.len());
            if end - start == shard_size {
                data.slice(start..end)
            } else {
                let mut v = vec![0u8; shard_size];
                v[..end - start].copy_from_slice(&data[start..end]);
                Bytes::from(v)
            }
        })
        .collect()
}

/// Copies the present data shards into their place in `out` (length `k * shard_size`).
fn place_data(shards: &[Option<Bytes>], k: usize, shard_size: usize, out: &mut [u8]) {
    for (i, s) in shards.iter().take(k).enumerate() {
        if let Some(s) = s {
            out[i * shard_size..(i + 1) * shard_size].copy_from_slice(s);
        }
    }
}

fn backend(codec: CodecId, e: impl fmt::Display) -> CodecError {
    CodecError::Backend {
        codec,
        detail: e.to_string(),
    }
}

/// Shards are coded in column stripes of this many bytes: all k + m stripes of one column
/// (14 × 32 KiB for 10+4) stay in L2 cache, instead of streaming 6.7 MB shards through memory
/// once per coefficient.
const STRIPE: usize = 32 * 1024;

fn stripes(shard_size: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    (0..shard_size)
        .step_by(STRIPE)
        .map(move |off| off..(off + STRIPE).min(shard_size))
}

struct RsErasure {
    profile: Profile,
    rs: reed_solomon_erasure::galois_8::ReedSolomon,
}

impl RsErasure {
    fn new(profile: Profile) -> Self {
        // Profile::new already enforces 1 <= k, 1 <= m, k + m <= 256, which is exactly what
        // ReedSolomon::new accepts.
        let rs = reed_solomon_erasure::galois_8::ReedSolomon::new(profile.data(), profile.parity())
            .expect("profile validated: 1 <= k, 1 <= m, k + m <= 256");
        RsErasure { profile, rs }
    }
}

impl Codec for RsErasure {
    fn id(&self) -> CodecId {
        CodecId::ReedSolomonErasure
    }

    fn profile(&self) -> Profile {
        self.profile
    }

    fn encode(&self, data: &Bytes) -> Result<Vec<Bytes>, CodecError> {
        let k = self.profile.data();
        let shard_size = self.profile.shard_size(data.len());
        let mut shards = split_data(data, k, shard_size);
        let mut parity = vec![vec![0u8; shard_size]; self.profile.parity()];
        for r in stripes(shard_size) {
            let d: Vec<&[u8]> = shards.iter().map(|s| &s[r.clone()]).collect();
            let mut p: Vec<&mut [u8]> = parity.iter_mut().map(|p| &mut p[r.clone()]).collect();
            self.rs
                .encode_sep(&d, &mut p)
                .map_err(|e| backend(self.id(), e))?;
        }
        shards.extend(parity.into_iter().map(Bytes::from));
        Ok(shards)
    }

    fn decode(&self, shards: &[Option<Bytes>], len: usize) -> Result<Vec<u8>, CodecError> {
        let k = self.profile.data();
        let shard_size = check_layout(self.profile, shards, len)?;
        let mut out = vec![0u8; k * shard_size];
        place_data(shards, k, shard_size, &mut out);
        let missing = shards[..k].iter().filter(|s| s.is_none()).count();
        if missing > 0 {
            // The reconstruct API wants mutable parity slices: copy just the `missing` parity
            // shards needed to make up k; the other parity slots stay absent (never touched).
            let mut parity: Vec<(Vec<u8>, bool)> = Vec::with_capacity(shards.len() - k);
            let mut used = 0;
            for s in &shards[k..] {
                parity.push(match s {
                    Some(s) if used < missing => {
                        used += 1;
                        (s.to_vec(), true)
                    }
                    _ => (Vec::new(), false),
                });
            }
            let present: Vec<bool> = shards[..k].iter().map(Option::is_some).collect();
            let mut data_bufs: Vec<&mut [u8]> = out.chunks_mut(shard_size).collect();
            for r in stripes(shard_size) {
                let mut slots: Vec<(&mut [u8], bool)> = data_bufs
                    .iter_mut()
                    .zip(&present)
                    .map(|(b, &p)| (&mut b[r.clone()], p))
                    .collect();
                for (v, present) in parity.iter_mut() {
                    slots.push(if *present {
                        (&mut v[r.clone()], true)
                    } else {
                        (&mut v[..], false)
                    });
                }
                self.rs
                    .reconstruct_data(&mut slots)
                    .map_err(|e| backend(self.id(), e))?;
            }
        }
        out.truncate(len);
        Ok(out)
    }
}

struct RsSimd {
    profile: Profile,
}

impl Codec for RsSimd {
    fn id(&self) -> CodecId {
        CodecId::ReedSolomonSimd
    }

    fn profile(&self) -> Profile {
        self.profile
    }

    fn encode(&self, data: &Bytes) -> Result<Vec<Bytes>, CodecError> {
        let (k, m) = (self.profile.data(), self.profile.parity());
        let shard_size = self.profile.shard_size(data.len());
        let mut shards = split_data(data, k, shard_size);
        let mut parity = vec![vec![0u8; shard_size]; m];
        let err = |e| backend(CodecId::ReedSolomonSimd, e);
        let mut enc = reed_solomon_simd::ReedSolomonEncoder::new(k, m, STRIPE.min(shard_size))
            .map_err(err)?;
        for r in stripes(shard_size) {
            enc.reset(k, m, r.len()).map_err(err)?;
            for s in &shards {
                enc.add_original_shard(&s[r.clone()]).map_err(err)?;
            }
            let res = enc.encode().map_err(err)?;
            for (p, rec) in parity.iter_mut().zip(res.recovery_iter()) {
                p[r.clone()].copy_from_slice(rec);
            }
        }
        shards.extend(parity.into_iter().map(Bytes::from));
        Ok(shards)
    }

    fn decode(&self, shards: &[Option<Bytes>], len: usize) -> Result<Vec<u8>, CodecError> {
        let (k, m) = (self.profile.data(), self.profile.parity());
        let shard_size = check_layout(self.profile, shards, len)?;
        let mut out = vec![0u8; k * shard_size];
        place_data(shards, k, shard_size, &mut out);
        let missing = shards[..k].iter().filter(|s| s.is_none()).count();
        if missing > 0 {
            let err = |e| backend(CodecId::ReedSolomonSimd, e);
            let recovery: Vec<(usize, &Bytes)> = shards[k..]
                .iter()
                .enumerate()
                .filter_map(|(i, s)| s.as_ref().map(|s| (i, s)))
                .take(missing)
                .collect();
            let mut dec = reed_solomon_simd::ReedSolomonDecoder::new(k, m, STRIPE.min(shard_size))
                .map_err(err)?;
            for r in stripes(shard_size) {
                dec.reset(k, m, r.len()).map_err(err)?;
                for (i, s) in shards[..k].iter().enumerate() {
                    if let Some(s) = s {
                        dec.add_original_shard(i, &s[r.clone()]).map_err(err)?;
                    }
                }
                for (i, s) in &recovery {
                    dec.add_recovery_shard(*i, &s[r.clone()]).map_err(err)?;
                }
                let res = dec.decode().map_err(err)?;
                for (i, shard) in res.restored_original_iter() {
                    if i >= k || shard.len() != r.len() {
                        return Err(backend(
                            CodecId::ReedSolomonSimd,
                            "restored shard out of range",
                        ));
                    }
                    out[i * shard_size + r.start..i * shard_size + r.end].copy_from_slice(shard);
                }
            }
        }
        out.truncate(len);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_profiles_parse() {
        assert_eq!("default".parse::<Profile>().unwrap(), Profile::DEFAULT);
        assert_eq!("HA".parse::<Profile>().unwrap(), Profile::HA);
        assert_eq!("max-ha".parse::<Profile>().unwrap(), Profile::MAX_HA);
        assert_eq!("extreme".parse::<Profile>().unwrap(), Profile::EXTREME);
        assert_eq!(
            "12+3".parse::<Profile>().unwrap(),
            Profile::new(12, 3).unwrap()
        );
        assert_eq!(Profile::MAX_HA.overhead_percent(), 100.0);
    }

    #[test]
    fn invalid_profiles_are_refused_with_reason() {
        assert!(matches!(
            Profile::new(0, 4),
            Err(ProfileError::NoDataShards { .. })
        ));
        assert!(matches!(
            Profile::new(4, 0),
            Err(ProfileError::NoParityShards { .. })
        ));
        assert!(matches!(
            Profile::new(200, 57),
            Err(ProfileError::TooManyShards { total: 257, .. })
        ));
        assert!(Profile::new(128, 128).is_ok());
        for bad in ["", "10", "10+", "+4", "a+b", "10+4+1", "-1+4", "turbo"] {
            assert!(bad.parse::<Profile>().is_err(), "{bad:?} should be refused");
        }
        let msg = Profile::new(3, 0).unwrap_err().to_string();
        assert!(msg.contains("parity"), "{msg}");
    }

    #[test]
    fn shard_size_is_aligned_and_covers_len() {
        for len in [1usize, 63, 64, 640, 641, 1 << 20, (64 << 20) + 7] {
            let p = Profile::DEFAULT;
            let s = p.shard_size(len);
            assert_eq!(s % SHARD_ALIGN, 0);
            assert!(s * p.data() >= len);
            assert!(s * p.data() < len + p.data() * SHARD_ALIGN + SHARD_ALIGN);
        }
    }

    #[test]
    fn both_codecs_agree_on_data_shards() {
        let data = Bytes::from((0..100_000u32).map(|i| (i * 7) as u8).collect::<Vec<_>>());
        let a = codec(CodecId::ReedSolomonErasure, Profile::DEFAULT)
            .encode(&data)
            .unwrap();
        let b = codec(CodecId::ReedSolomonSimd, Profile::DEFAULT)
            .encode(&data)
            .unwrap();
        assert_eq!(a[..10], b[..10], "systematic codes share data shards");
        assert_eq!(a.len(), 14);
    }
}
