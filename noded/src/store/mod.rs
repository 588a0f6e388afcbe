//! Shard storage: the [`ShardStore`] trait (a durable map from shard hash to CYXC record bytes)
//! with two implementations, [`rocks::RocksStore`] (production) and [`memory::MemoryStore`]
//! (tests), and [`Shards`], the one layer above them that knows what a shard is: it verifies
//! blake3 hashes, encodes and decodes records (`cyxcloud_core::record`), enforces the capacity
//! limit, and quarantines records that fail verification.
//!
//! Both backends pass the same conformance suite (`store/conformance.rs`), including a
//! model-based test against a `BTreeMap` with reopen steps for RocksDB.

pub mod memory;
pub mod recent;
pub mod rocks;

#[cfg(test)]
mod conformance;

#[cfg(test)]
mod tests {
    #[test]
    fn only_compressible_shards_are_compressed() {
        let text: Vec<u8> = (0..1_000_000u32)
            .map(|i| b"abcdefgh"[(i / 7 % 8) as usize])
            .collect();
        assert!(super::looks_compressible(&text));
        let mut random = vec![0u8; 1_000_000];
        blake3::Hasher::new().finalize_xof().fill(&mut random);
        assert!(!super::looks_compressible(&random));
        assert!(
            super::looks_compressible(&random[..1000]),
            "small shards just try"
        );
    }

    #[test]
    fn a_delete_spares_shards_put_after_its_bound() {
        use super::{Deleted, Shards, memory::MemoryStore};
        use cyxcloud_core::Hash;
        let s = Shards::open(Box::new(MemoryStore::new()), false, 1 << 20).unwrap();
        let (a, b, c) = (b"a".as_slice(), b"b".as_slice(), b"c".as_slice());
        s.put(&Hash::of(a), a).unwrap();
        s.put(&Hash::of(b), b).unwrap();
        let mark = s.put_mark();
        assert_eq!(mark.seq, 2);
        // `b` is put again (already present) and `c` is new, both after the mark.
        s.put(&Hash::of(b), b).unwrap();
        s.put(&Hash::of(c), c).unwrap();
        let bound = s.delete_bound(mark.epoch, mark.seq).unwrap();
        let del = |d: &[u8]| s.delete_unless_newer(&Hash::of(d), bound).unwrap();
        assert!(matches!(del(a), Deleted::Freed(_)));
        assert_eq!(del(a), Deleted::Missing);
        assert_eq!(del(b), Deleted::Kept);
        assert_eq!(del(c), Deleted::Kept);
        assert!(s.contains(&Hash::of(b)).unwrap() && s.contains(&Hash::of(c)).unwrap());
        // Another process's bound grants nothing put here.
        let other = s
            .delete_bound(mark.epoch.wrapping_add(1).max(1), u64::MAX)
            .unwrap();
        assert_eq!(
            s.delete_unless_newer(&Hash::of(b), other).unwrap(),
            Deleted::Kept
        );
        // A later mark covers them.
        let later = s.put_mark();
        let bound = s.delete_bound(later.epoch, later.seq).unwrap();
        assert!(matches!(
            s.delete_unless_newer(&Hash::of(c), bound).unwrap(),
            Deleted::Freed(_)
        ));
        assert_eq!(s.usage().shard_count, 1);
    }
}

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use bytes::Bytes;
use cyxcloud_core::Hash;
use cyxcloud_core::record::{self, EncodeOptions};

use crate::error::{Error, Result};

/// Largest shard the node accepts: the largest a CYXC record can describe.
pub const MAX_SHARD_BYTES: u64 = record::MAX_ORIGINAL_SIZE;

/// A durable map from shard hash to record bytes. Implementations do no verification and no
/// accounting; [`Shards`] does both, once, for every backend.
pub trait ShardStore: Send + Sync {
    /// Short backend name for logs and metadata ("rocksdb", "memory").
    fn name(&self) -> &'static str;
    /// Stores `record` under `hash`, replacing any previous value. When this returns `Ok`, the
    /// write survives a crash of the process (and, for RocksDB, of the machine: the WAL is
    /// synced).
    fn put(&self, hash: &Hash, record: &[u8]) -> Result<()>;
    /// The record stored under `hash`.
    fn get(&self, hash: &Hash) -> Result<Option<Vec<u8>>>;
    /// The length of the record under `hash`, without reading it.
    fn record_len(&self, hash: &Hash) -> Result<Option<u64>>;
    /// Removes `hash` durably; returns the freed record length.
    fn delete(&self, hash: &Hash) -> Result<Option<u64>>;
    /// Every stored hash with its record length.
    fn scan(&self) -> Result<Vec<(Hash, u64)>>;
    /// Moves the record under `hash` aside (kept for inspection, no longer served or counted).
    fn quarantine(&self, hash: &Hash) -> Result<()>;
    /// Number of quarantined records.
    fn quarantined(&self) -> Result<u64>;
    /// Gives the space of deleted records back to the file system (RocksDB: a compaction,
    /// which also collects blob files' garbage). Nothing to do by default.
    fn reclaim(&self) -> Result<()> {
        Ok(())
    }
}

/// Space accounting of a store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Record bytes stored (what counts against capacity).
    pub used_bytes: u64,
    pub shard_count: u64,
    pub capacity_bytes: u64,
}

impl Usage {
    pub fn available_bytes(&self) -> u64 {
        self.capacity_bytes.saturating_sub(self.used_bytes)
    }
}

/// Result of a successful put.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// Written now; `record_bytes` on disk.
    Stored { record_bytes: u64 },
    /// An identical shard (same hash) was already stored; nothing was written.
    AlreadyPresent { record_bytes: u64 },
}

impl PutOutcome {
    pub fn record_bytes(&self) -> u64 {
        match *self {
            PutOutcome::Stored { record_bytes } | PutOutcome::AlreadyPresent { record_bytes } => {
                record_bytes
            }
        }
    }
}

#[derive(Debug, Default)]
struct Accounting {
    used: u64,
    reserved: u64,
    count: u64,
}

const STRIPES: usize = 64;

/// Verified, capacity-limited shard storage over any [`ShardStore`].
pub struct Shards {
    backend: Box<dyn ShardStore>,
    compress: bool,
    capacity: u64,
    /// Serialises put/delete of one hash (and of the hashes sharing its stripe), so the
    /// exists-check and the write are atomic; different stripes write concurrently and share
    /// WAL syncs. Each stripe holds the number of the last put of its recent hashes
    /// (see [`recent`]).
    stripes: Vec<Mutex<HashMap<Hash, u64>>>,
    recent: recent::Recent,
    acct: Mutex<Accounting>,
    /// Shards found corrupt and quarantined, not yet reported to the gateway.
    corrupt_found: Mutex<Vec<Hash>>,
    /// Record bytes deleted since the store last reclaimed space.
    freed_since_reclaim: std::sync::atomic::AtomicU64,
    /// The file system the store writes to, and the free space kept on it.
    disk: Option<(PathBuf, u64)>,
}

/// Bytes available to an unprivileged writer on the file system of `path`.
#[allow(unsafe_code)]
pub fn fs_available(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: a zeroed statvfs is valid output storage; `c` is NUL-terminated.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let r = unsafe { libc::statvfs(c.as_ptr(), &mut s) };
    (r == 0).then(|| s.f_bavail as u64 * s.f_frsize as u64)
}

/// What [`Shards::delete_unless_newer`] did with one hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    /// Removed; this many record bytes were freed.
    Freed(u64),
    /// Not stored here.
    Missing,
    /// Put again after the delete was decided: kept.
    Kept,
}

impl std::fmt::Debug for Shards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shards")
            .field("backend", &self.backend.name())
            .field("compress", &self.compress)
            .field("usage", &self.usage())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shards {
    /// Wraps `backend`, counting what it holds.
    pub fn open(backend: Box<dyn ShardStore>, compress: bool, capacity_bytes: u64) -> Result<Self> {
        let mut acct = Accounting::default();
        for (_, len) in backend.scan()? {
            acct.used += len;
            acct.count += 1;
        }
        Ok(Shards {
            backend,
            compress,
            capacity: capacity_bytes,
            stripes: (0..STRIPES).map(|_| Mutex::new(HashMap::new())).collect(),
            recent: recent::Recent::new(recent::Recent::random_epoch()),
            acct: Mutex::new(acct),
            corrupt_found: Mutex::new(Vec::new()),
            freed_since_reclaim: std::sync::atomic::AtomicU64::new(0),
            disk: None,
        })
    }

    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    pub fn usage(&self) -> Usage {
        let a = lock(&self.acct);
        Usage {
            used_bytes: a.used,
            shard_count: a.count,
            capacity_bytes: self.capacity,
        }
    }

    fn stripe(&self, hash: &Hash) -> std::sync::MutexGuard<'_, HashMap<Hash, u64>> {
        lock(&self.stripes[hash.0[0] as usize % STRIPES])
    }

    /// Refuses puts that would leave less than `reserve` bytes free on the file system of
    /// `path` (where the backend writes), whatever the configured capacity says.
    pub fn with_disk_reserve(mut self, path: &Path, reserve: u64) -> Self {
        self.disk = Some((path.to_path_buf(), reserve));
        self
    }

    /// `DiskFull` when storing `needed` more bytes would eat into the disk's reserve.
    fn check_disk(&self, needed: u64) -> Result<()> {
        let Some((path, reserve)) = &self.disk else {
            return Ok(());
        };
        let Some(available) = fs_available(path) else {
            return Ok(());
        };
        if available < needed.saturating_add(*reserve) {
            return Err(Error::DiskFull {
                path: path.clone(),
                available,
                needed,
                reserve: *reserve,
            });
        }
        Ok(())
    }

    /// Cheap admission check before receiving `size` bytes: refuses shards that are too large,
    /// and (without compression, where the record size is known) shards that cannot fit.
    pub fn admit(&self, size: u64) -> Result<()> {
        if size > MAX_SHARD_BYTES {
            return Err(Error::TooLarge {
                size,
                limit: MAX_SHARD_BYTES,
            });
        }
        if !self.compress {
            let a = lock(&self.acct);
            let needed = size + record::HEADER_LEN as u64;
            let would_use = a.used + a.reserved + needed;
            if would_use > self.capacity {
                return Err(Error::NoSpace {
                    needed,
                    would_use,
                    capacity: self.capacity,
                });
            }
        }
        Ok(())
    }

    /// Verifies `data` against `hash` and stores it durably.
    pub fn put(&self, hash: &Hash, data: &[u8]) -> Result<PutOutcome> {
        if data.len() as u64 > MAX_SHARD_BYTES {
            return Err(Error::TooLarge {
                size: data.len() as u64,
                limit: MAX_SHARD_BYTES,
            });
        }
        let actual = Hash::of(data);
        if actual != *hash {
            return Err(Error::HashMismatch {
                expected: *hash,
                actual,
            });
        }
        let mut g = self.stripe(hash);
        // Numbered even when the shard is already here: a new write may count on it.
        g.insert(*hash, self.recent.next());
        if let Some(len) = self.backend.record_len(hash)? {
            return Ok(PutOutcome::AlreadyPresent { record_bytes: len });
        }
        let rec = record::encode(
            data,
            hash,
            &EncodeOptions {
                compress: self.compress && looks_compressible(data),
                at_rest: None,
            },
        );
        let len = rec.len() as u64;
        self.check_disk(len)?;
        {
            let mut a = lock(&self.acct);
            let would_use = a.used + a.reserved + len;
            if would_use > self.capacity {
                return Err(Error::NoSpace {
                    needed: len,
                    would_use,
                    capacity: self.capacity,
                });
            }
            a.reserved += len;
        }
        let r = self.backend.put(hash, &rec);
        let mut a = lock(&self.acct);
        a.reserved -= len;
        r?;
        a.used += len;
        a.count += 1;
        Ok(PutOutcome::Stored { record_bytes: len })
    }

    /// The verified bytes of shard `hash`. A record that fails verification is quarantined
    /// and reported as [`Error::Corrupt`]; its bytes are never returned.
    pub fn get(&self, hash: &Hash) -> Result<Bytes> {
        let raw = match self.backend.get(hash) {
            Ok(Some(r)) => r,
            Ok(None) => return Err(Error::NotFound(*hash)),
            // RocksDB's own checksums (blob and block CRCs) caught it.
            Err(Error::Rocks { source, .. }) if source.kind() == rocksdb::ErrorKind::Corruption => {
                return Err(self.corrupt(hash, source.to_string()));
            }
            Err(e) => return Err(e),
        };
        match verify_record(hash, raw) {
            Ok(b) => Ok(b),
            Err(reason) => Err(self.corrupt(hash, reason)),
        }
    }

    fn corrupt(&self, hash: &Hash, reason: String) -> Error {
        tracing::error!(shard = %hash, %reason, "corrupt shard detected; quarantining it");
        {
            let mut found = lock(&self.corrupt_found);
            if !found.contains(hash) {
                found.push(*hash);
            }
        }
        let _g = self.stripe(hash);
        match self.backend.record_len(hash) {
            Ok(Some(len)) => {
                if let Err(e) = self.backend.quarantine(hash) {
                    tracing::error!(shard = %hash, error = %e, "cannot quarantine corrupt shard");
                } else {
                    let mut a = lock(&self.acct);
                    a.used = a.used.saturating_sub(len);
                    a.count = a.count.saturating_sub(1);
                }
            }
            Ok(None) => {}
            Err(e) => tracing::error!(shard = %hash, error = %e, "cannot inspect corrupt shard"),
        }
        Error::Corrupt {
            hash: *hash,
            reason,
        }
    }

    /// Reclaims disk space once deletes freed as many bytes as are still stored (and at least
    /// 256 MiB) since the last time, so the rewrite of live data costs no more than what it
    /// gives back; returns whether it did.
    pub fn maybe_reclaim(&self) -> Result<bool> {
        use std::sync::atomic::Ordering;
        let freed = self.freed_since_reclaim.load(Ordering::Relaxed);
        let threshold = self.usage().used_bytes.max(256 << 20);
        if freed < threshold {
            return Ok(false);
        }
        self.freed_since_reclaim.store(0, Ordering::Relaxed);
        let t = std::time::Instant::now();
        self.backend.reclaim()?;
        tracing::info!(freed, took = ?t.elapsed(), "reclaimed the space of deleted shards");
        Ok(true)
    }

    /// Takes the shards found corrupt since the last call (to report to the gateway).
    pub fn take_corrupt(&self) -> Vec<Hash> {
        std::mem::take(&mut *lock(&self.corrupt_found))
    }

    /// Puts back corrupt shards whose report did not reach the gateway.
    pub fn return_corrupt(&self, hashes: Vec<Hash>) {
        let mut found = lock(&self.corrupt_found);
        for h in hashes {
            if !found.contains(&h) {
                found.push(h);
            }
        }
    }

    /// Hashes of every stored shard (for the scrub).
    pub fn hashes(&self) -> Result<Vec<Hash>> {
        Ok(self.backend.scan()?.into_iter().map(|(h, _)| h).collect())
    }

    /// The stored record length of `hash`, if stored.
    pub fn record_len(&self, hash: &Hash) -> Result<Option<u64>> {
        self.backend.record_len(hash)
    }

    pub fn contains(&self, hash: &Hash) -> Result<bool> {
        Ok(self.backend.record_len(hash)?.is_some())
    }

    /// Removes a shard durably; returns the freed record bytes (None when absent).
    pub fn delete(&self, hash: &Hash) -> Result<Option<u64>> {
        let _g = self.stripe(hash);
        self.delete_locked(hash)
    }

    fn delete_locked(&self, hash: &Hash) -> Result<Option<u64>> {
        let freed = self.backend.delete(hash)?;
        if let Some(len) = freed {
            let mut a = lock(&self.acct);
            a.used = a.used.saturating_sub(len);
            a.count = a.count.saturating_sub(1);
        }
        Ok(freed)
    }

    /// The position to report in a heartbeat (this process, its last put number); forgets
    /// put numbers older than [`recent::REMEMBER`].
    pub fn put_mark(&self) -> recent::PutMark {
        let (mark, floor) = self.recent.mark(Instant::now());
        if let Some(floor) = floor {
            for s in &self.stripes {
                lock(s).retain(|_, n| *n >= floor);
            }
        }
        mark
    }

    /// The bound a delete command built from the heartbeat at `(epoch, seq)` grants here.
    pub fn delete_bound(&self, epoch: u64, seq: u64) -> Result<u64> {
        self.recent
            .bound(epoch, seq)
            .map_err(|s| Error::StaleDelete {
                bound: s.bound,
                floor: s.floor,
            })
    }

    /// Removes a shard unless it was put after `bound` (from [`Shards::delete_bound`]).
    pub fn delete_unless_newer(&self, hash: &Hash, bound: u64) -> Result<Deleted> {
        let g = self.stripe(hash);
        if g.get(hash).is_some_and(|n| *n > bound) {
            return Ok(Deleted::Kept);
        }
        Ok(match self.delete_locked(hash)? {
            Some(len) => {
                self.freed_since_reclaim
                    .fetch_add(len, std::sync::atomic::Ordering::Relaxed);
                Deleted::Freed(len)
            }
            None => Deleted::Missing,
        })
    }

    /// Every stored shard hash.
    pub fn list(&self) -> Result<Vec<Hash>> {
        Ok(self.backend.scan()?.into_iter().map(|(h, _)| h).collect())
    }

    pub fn quarantined(&self) -> Result<u64> {
        self.backend.quarantined()
    }
}

/// Bytes of a shard that are test-compressed before compressing all of it.
const PROBE: usize = 64 * 1024;

/// Whether LZ4 is worth running over the whole shard: shards of encrypted or already
/// compressed data (most of them) do not shrink, and compressing 64 MiB only to throw the
/// result away costs more than storing it. A 64 KiB sample from the middle must shrink by 10 %.
fn looks_compressible(data: &[u8]) -> bool {
    if data.len() <= PROBE {
        return true;
    }
    let start = (data.len() - PROBE) / 2;
    let sample = &data[start..start + PROBE];
    lz4_flex::block::compress(sample).len() < PROBE * 9 / 10
}

/// Checks a raw record against the key it was stored under and returns the shard bytes.
/// Plain records (neither compressed nor encrypted) are verified in place and returned as a
/// zero-copy slice.
fn verify_record(key: &Hash, raw: Vec<u8>) -> std::result::Result<Bytes, String> {
    let view = record::decode(&raw).map_err(|e| e.to_string())?;
    if view.hash != *key {
        return Err(format!("record holds shard {} under key {key}", view.hash));
    }
    if view.flags == 0 {
        let actual = Hash::of(view.payload);
        if actual != *key {
            return Err(format!("content hashes to {actual}"));
        }
        return Ok(Bytes::from(raw).slice(record::HEADER_LEN..));
    }
    view.into_shard(None)
        .map(Bytes::from)
        .map_err(|e| e.to_string())
}
