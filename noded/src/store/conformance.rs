//! One conformance suite for every [`ShardStore`], run through [`Shards`] against the memory
//! and the RocksDB backends, plus a model-based test against a `BTreeMap` with reopen steps.

use std::collections::BTreeMap;
use std::sync::Arc;

use cyxcloud_core::Hash;
use cyxcloud_core::record;
use proptest::prelude::*;

use super::memory::MemoryStore;
use super::rocks::{RocksOptions, RocksStore};
use super::{Deleted, PutOutcome, ShardStore, Shards};
use crate::error::Error;

/// Opens a backend, and reopens it (same data) where the backend persists.
trait Harness {
    fn open(&mut self) -> Box<dyn ShardStore>;
    /// Closes `store` and opens the same data again (memory: hands it back unchanged).
    fn reopen(&mut self, store: Shards, compress: bool, capacity: u64) -> Shards;
    fn persistent(&self) -> bool;
}

struct Memory;

impl Harness for Memory {
    fn open(&mut self) -> Box<dyn ShardStore> {
        Box::new(MemoryStore::new())
    }
    fn reopen(&mut self, store: Shards, _: bool, _: u64) -> Shards {
        store
    }
    fn persistent(&self) -> bool {
        false
    }
}

/// Each `open` starts a fresh database; `reopen` opens the current one again.
struct Rocks {
    dir: tempfile::TempDir,
    n: usize,
}

impl Rocks {
    fn new() -> Self {
        Rocks {
            dir: tempfile::tempdir().unwrap(),
            n: 0,
        }
    }

    fn path(&self) -> std::path::PathBuf {
        self.dir.path().join(format!("rocksdb-{}", self.n))
    }

    fn open_current(&self) -> Box<dyn ShardStore> {
        Box::new(RocksStore::open(&self.path(), &RocksOptions::default()).unwrap())
    }
}

impl Harness for Rocks {
    fn open(&mut self) -> Box<dyn ShardStore> {
        self.n += 1;
        self.open_current()
    }
    fn reopen(&mut self, store: Shards, compress: bool, capacity: u64) -> Shards {
        drop(store);
        Shards::open(self.open_current(), compress, capacity).unwrap()
    }
    fn persistent(&self) -> bool {
        true
    }
}

fn data(seed: u64, len: usize, compressible: bool) -> Vec<u8> {
    if compressible {
        return (0..len).map(|i| (i / 512) as u8 ^ seed as u8).collect();
    }
    let mut v = vec![0u8; len];
    blake3::Hasher::new()
        .update(&seed.to_le_bytes())
        .finalize_xof()
        .fill(&mut v);
    v
}

const BIG: u64 = 1 << 40;

fn round_trips(h: &mut dyn Harness) {
    for compress in [false, true] {
        let s = Shards::open(h.open(), compress, BIG).unwrap();
        let mut expect = Vec::new();
        for (i, len) in [
            1usize,
            59,
            60,
            4095,
            4096,
            4097,
            100_000,
            1 << 20,
            (3 << 20) + 7,
        ]
        .into_iter()
        .enumerate()
        {
            for compressible in [false, true] {
                let d = data(
                    i as u64 * 2 + compressible as u64 + 1000 * compress as u64,
                    len,
                    compressible,
                );
                let hash = Hash::of(&d);
                let out = s.put(&hash, &d).unwrap();
                let PutOutcome::Stored { record_bytes } = out else {
                    panic!("first put must store: {out:?}")
                };
                if compress && compressible && len > 4096 {
                    assert!(record_bytes < len as u64 / 2, "LZ4 applied: {record_bytes}");
                } else if !compress {
                    assert_eq!(record_bytes, len as u64 + record::HEADER_LEN as u64);
                }
                assert_eq!(&s.get(&hash).unwrap()[..], &d[..]);
                assert!(s.contains(&hash).unwrap());
                expect.push((hash, d, record_bytes));
            }
        }
        let used: u64 = expect.iter().map(|e| e.2).sum();
        assert_eq!(s.usage().used_bytes, used);
        assert_eq!(s.usage().shard_count, expect.len() as u64);
        let s = h.reopen(s, compress, BIG);
        assert_eq!(s.usage().used_bytes, used, "usage recounted on reopen");
        for (hash, d, _) in &expect {
            assert_eq!(&s.get(hash).unwrap()[..], &d[..]);
        }
        let mut listed = s.list().unwrap();
        listed.sort();
        let mut hashes: Vec<Hash> = expect.iter().map(|e| e.0).collect();
        hashes.sort();
        assert_eq!(listed, hashes);
        // Stored raw records are CYXC records under their hash.
        for (hash, _, len) in &expect {
            let raw = s.backend.get(hash).unwrap().unwrap();
            assert_eq!(raw.len() as u64, *len);
            assert_eq!(&raw[..4], b"CYXC");
            assert_eq!(record::decode(&raw).unwrap().hash, *hash);
        }
    }
}

fn duplicate_put_writes_nothing(h: &mut dyn Harness) {
    let s = Shards::open(h.open(), false, BIG).unwrap();
    let d = data(1, 10_000, false);
    let hash = Hash::of(&d);
    let first = s.put(&hash, &d).unwrap();
    let u = s.usage();
    let second = s.put(&hash, &d).unwrap();
    assert_eq!(
        second,
        PutOutcome::AlreadyPresent {
            record_bytes: first.record_bytes()
        }
    );
    assert_eq!(s.usage(), u);
}

fn bad_puts_change_nothing(h: &mut dyn Harness) {
    let s = Shards::open(h.open(), false, BIG).unwrap();
    let d = data(2, 1000, false);
    let wrong = Hash::of(b"something else");
    match s.put(&wrong, &d) {
        Err(Error::HashMismatch { expected, actual }) => {
            assert_eq!(expected, wrong);
            assert_eq!(actual, Hash::of(&d));
        }
        other => panic!("expected HashMismatch, got {other:?}"),
    }
    assert!(!s.contains(&wrong).unwrap());
    assert!(!s.contains(&Hash::of(&d)).unwrap());
    assert_eq!(s.usage().used_bytes, 0);
    assert!(matches!(
        s.admit(super::MAX_SHARD_BYTES + 1),
        Err(Error::TooLarge { .. })
    ));
    assert!(matches!(s.get(&wrong), Err(Error::NotFound(h)) if h == wrong));
    assert_eq!(s.delete(&wrong).unwrap(), None);
}

fn delete_frees_space(h: &mut dyn Harness) {
    let s = Shards::open(h.open(), false, BIG).unwrap();
    let a = data(3, 5000, false);
    let b = data(4, 7000, false);
    let (ha, hb) = (Hash::of(&a), Hash::of(&b));
    s.put(&ha, &a).unwrap();
    s.put(&hb, &b).unwrap();
    assert_eq!(
        s.delete(&ha).unwrap(),
        Some(5000 + record::HEADER_LEN as u64)
    );
    assert!(matches!(s.get(&ha), Err(Error::NotFound(_))));
    assert_eq!(s.usage().used_bytes, 7000 + record::HEADER_LEN as u64);
    assert_eq!(s.usage().shard_count, 1);
    let s = h.reopen(s, false, BIG);
    assert!(!s.contains(&ha).unwrap());
    assert_eq!(&s.get(&hb).unwrap()[..], &b[..]);
}

fn capacity_is_enforced(h: &mut dyn Harness) {
    let cap = 3 * (1000 + record::HEADER_LEN as u64);
    let s = Shards::open(h.open(), false, cap).unwrap();
    let shards: Vec<Vec<u8>> = (0..4).map(|i| data(10 + i, 1000, false)).collect();
    for d in &shards[..3] {
        s.admit(d.len() as u64).unwrap();
        s.put(&Hash::of(d), d).unwrap();
    }
    assert_eq!(s.usage().available_bytes(), 0);
    let last = &shards[3];
    assert!(matches!(s.admit(1000), Err(Error::NoSpace { .. })));
    match s.put(&Hash::of(last), last) {
        Err(Error::NoSpace {
            needed, capacity, ..
        }) => {
            assert_eq!(needed, 1060);
            assert_eq!(capacity, cap);
        }
        other => panic!("expected NoSpace, got {other:?}"),
    }
    assert!(!s.contains(&Hash::of(last)).unwrap());
    // An already-stored shard is still acknowledged when full (nothing new is written).
    assert!(matches!(
        s.put(&Hash::of(&shards[0]), &shards[0]).unwrap(),
        PutOutcome::AlreadyPresent { .. }
    ));
    s.delete(&Hash::of(&shards[0])).unwrap();
    s.put(&Hash::of(last), last).unwrap();
    // Capacity is checked against what is on disk after a reopen, too.
    let s = h.reopen(s, false, cap);
    assert!(matches!(
        s.put(&Hash::of(&shards[0]), &shards[0]),
        Err(Error::NoSpace { .. })
    ));
}

fn corrupt_records_are_detected_and_quarantined(h: &mut dyn Harness) {
    for compress in [false, true] {
        let s = Shards::open(h.open(), compress, BIG).unwrap();
        let seed = 20 + 1000 * compress as u64;
        let d = data(seed, 50_000, compress);
        let hash = Hash::of(&d);
        s.put(&hash, &d).unwrap();
        let other = data(seed + 1, 3000, false);
        s.put(&Hash::of(&other), &other).unwrap();
        let before = s.usage();
        let mut raw = s.backend.get(&hash).unwrap().unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 0x40;
        s.backend.put(&hash, &raw).unwrap();
        match s.get(&hash) {
            Err(Error::Corrupt { hash: h2, .. }) => assert_eq!(h2, hash),
            other => panic!("expected Corrupt, got {:?}", other.map(|b| b.len())),
        }
        assert!(
            !s.contains(&hash).unwrap(),
            "quarantined shards are not held"
        );
        assert_eq!(s.quarantined().unwrap(), 1);
        assert_eq!(s.usage().shard_count, before.shard_count - 1);
        assert_eq!(&s.get(&Hash::of(&other)).unwrap()[..], &other[..]);
        // The shard can be stored again (repair) once quarantined.
        s.put(&hash, &d).unwrap();
        assert_eq!(&s.get(&hash).unwrap()[..], &d[..]);
        // A record stored under the wrong key is corrupt too.
        let rec = s.backend.get(&Hash::of(&other)).unwrap().unwrap();
        let bogus = Hash::of(&seed.to_le_bytes());
        s.backend.put(&bogus, &rec).unwrap();
        assert!(matches!(s.get(&bogus), Err(Error::Corrupt { .. })));
    }
}

fn concurrent_puts_account_exactly(h: &mut dyn Harness) {
    let s = Arc::new(Shards::open(h.open(), false, BIG).unwrap());
    let shards: Arc<Vec<Vec<u8>>> = Arc::new((0..32).map(|i| data(100 + i, 2000, false)).collect());
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let s = s.clone();
            let shards = shards.clone();
            std::thread::spawn(move || {
                let mut stored = 0;
                for d in shards.iter() {
                    if let PutOutcome::Stored { .. } = s.put(&Hash::of(d), d).unwrap() {
                        stored += 1;
                    }
                }
                stored
            })
        })
        .collect();
    let stored: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(stored, 32, "each shard stored exactly once");
    assert_eq!(s.usage().shard_count, 32);
    assert_eq!(s.usage().used_bytes, 32 * 2060);
}

fn suite(mut make: impl FnMut() -> Box<dyn Harness>) {
    round_trips(&mut *make());
    duplicate_put_writes_nothing(&mut *make());
    bad_puts_change_nothing(&mut *make());
    delete_frees_space(&mut *make());
    capacity_is_enforced(&mut *make());
    corrupt_records_are_detected_and_quarantined(&mut *make());
    concurrent_puts_account_exactly(&mut *make());
}

#[test]
fn memory_store_conforms() {
    suite(|| Box::new(Memory));
}

#[test]
fn rocksdb_store_conforms() {
    suite(|| Box::new(Rocks::new()));
}

#[test]
fn rocksdb_keeps_large_shards_in_blob_files_across_reopen() {
    let mut h = Rocks::new();
    let s = Shards::open(h.open(), false, BIG).unwrap();
    let dir = h.path();
    let d = data(7, 2 << 20, false);
    let hash = Hash::of(&d);
    s.put(&hash, &d).unwrap();
    drop(s);
    let store = RocksStore::open(&dir, &RocksOptions::default()).unwrap();
    store.flush().unwrap();
    let blobs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".blob"))
        .collect();
    assert!(!blobs.is_empty(), "a 2 MiB shard lands in a blob file");
    let blob_bytes: u64 = blobs.iter().map(|b| b.metadata().unwrap().len()).sum();
    assert!(blob_bytes >= 2 << 20);
    drop(store);
    let s = Shards::open(h.open_current(), false, BIG).unwrap();
    assert_eq!(&s.get(&hash).unwrap()[..], &d[..]);
}

/// Blob bytes in `dir`.
fn blob_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".blob"))
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

#[test]
fn deleting_most_shards_then_reclaiming_gives_the_blob_space_back() {
    let mut h = Rocks::new();
    let shards: Vec<Vec<u8>> = (0..24).map(|i| data(100 + i, 1 << 20, false)).collect();
    let first = h.open();
    let dir = h.path();
    {
        let s = Shards::open(first, false, BIG).unwrap();
        for d in &shards {
            s.put(&Hash::of(d), d).unwrap();
        }
    }
    {
        let store = RocksStore::open(&dir, &RocksOptions::default()).unwrap();
        store.flush().unwrap();
    }
    let before = blob_bytes(&dir);
    assert!(before >= 24 << 20, "{before}");
    let s = Shards::open(h.open_current(), false, BIG).unwrap();
    // 21 of 24 MiB deleted: more than is left, but below the 256 MiB floor, so the store
    // does not reclaim by itself; the backend's reclaim is called directly.
    for d in &shards[3..] {
        assert!(matches!(
            s.delete_unless_newer(&Hash::of(d), u64::MAX).unwrap(),
            Deleted::Freed(_)
        ));
    }
    assert!(
        !s.maybe_reclaim().unwrap(),
        "21 MiB freed is below the 256 MiB floor"
    );
    drop(s);
    let store = RocksStore::open(&dir, &RocksOptions::default()).unwrap();
    store.reclaim().unwrap();
    drop(store);
    let after = blob_bytes(&dir);
    assert!(after < before / 2, "blob bytes {before} -> {after}");
    let s = Shards::open(h.open_current(), false, BIG).unwrap();
    for d in &shards[..3] {
        assert_eq!(&s.get(&Hash::of(d)).unwrap()[..], &d[..]);
    }
}

#[derive(Debug, Clone)]
enum Op {
    Put(u8),
    Delete(u8),
    Get(u8),
    Corrupt(u8),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..12).prop_map(Op::Put),
        2 => (0u8..12).prop_map(Op::Delete),
        3 => (0u8..12).prop_map(Op::Get),
        1 => (0u8..12).prop_map(Op::Corrupt),
        1 => Just(Op::Reopen),
    ]
}

/// Runs `ops` against the store and a `BTreeMap` model; every observation must agree.
fn check_model(h: &mut dyn Harness, ops: &[Op], compress: bool) {
    let cap = 8 * 3000;
    let mut s = Shards::open(h.open(), compress, cap).unwrap();
    let mut model: BTreeMap<Hash, Vec<u8>> = BTreeMap::new();
    let shard = |i: u8| data(1000 + i as u64, 1000 + 97 * i as usize, i.is_multiple_of(3));
    for op in ops {
        match *op {
            Op::Put(i) => {
                let d = shard(i);
                let hash = Hash::of(&d);
                match s.put(&hash, &d) {
                    Ok(PutOutcome::Stored { .. }) => {
                        assert!(model.insert(hash, d).is_none(), "stored twice")
                    }
                    Ok(PutOutcome::AlreadyPresent { .. }) => assert!(model.contains_key(&hash)),
                    Err(Error::NoSpace { .. }) => {
                        assert!(!model.contains_key(&hash));
                        assert!(s.usage().used_bytes + d.len() as u64 + 60 > cap);
                    }
                    Err(e) => panic!("put failed: {e}"),
                }
            }
            Op::Delete(i) => {
                let hash = Hash::of(&shard(i));
                let freed = s.delete(&hash).unwrap();
                assert_eq!(freed.is_some(), model.remove(&hash).is_some());
            }
            Op::Get(i) => {
                let hash = Hash::of(&shard(i));
                match (s.get(&hash), model.get(&hash)) {
                    (Ok(b), Some(d)) => assert_eq!(&b[..], &d[..]),
                    (Err(Error::NotFound(_)), None) => {}
                    (r, m) => panic!("store {:?} vs model {}", r.map(|b| b.len()), m.is_some()),
                }
            }
            Op::Corrupt(i) => {
                let hash = Hash::of(&shard(i));
                if let Some(mut raw) = s.backend.get(&hash).unwrap() {
                    raw[record::HEADER_LEN] ^= 1;
                    s.backend.put(&hash, &raw).unwrap();
                    assert!(matches!(s.get(&hash), Err(Error::Corrupt { .. })));
                    model.remove(&hash);
                }
            }
            Op::Reopen => s = h.reopen(s, compress, cap),
        }
        let u = s.usage();
        assert_eq!(u.shard_count, model.len() as u64);
        assert!(u.used_bytes <= cap);
    }
    let mut listed = s.list().unwrap();
    listed.sort();
    assert_eq!(listed, model.keys().copied().collect::<Vec<_>>());
    let s = h.reopen(s, compress, cap);
    for (hash, d) in &model {
        assert_eq!(&s.get(hash).unwrap()[..], &d[..]);
    }
    if h.persistent() {
        assert_eq!(s.usage().shard_count, model.len() as u64);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn memory_store_matches_model(ops in proptest::collection::vec(op(), 1..60), compress: bool) {
        check_model(&mut Memory, &ops, compress);
    }

    #[test]
    fn rocksdb_store_matches_model_across_reopens(ops in proptest::collection::vec(op(), 1..60), compress: bool) {
        check_model(&mut Rocks::new(), &ops, compress);
    }
}
