//! RocksDB [`ShardStore`] (production), linked against the system librocksdb (7.8).
//!
//! Layout in `{data_dir}/rocksdb/`, three column families:
//! * `shards`: shard hash (32 bytes) → CYXC record. Integrated BlobDB is on
//!   (`enable_blob_files`, `min_blob_size` 4 KiB): shard payloads live in blob files and are not
//!   rewritten by LSM compaction; blob garbage collection reclaims the space of deleted shards.
//!   Blob compression is off on purpose: `compression = true` sets the record's own LZ4 flag
//!   (`cyxcloud_core::record`), which works the same on every backend, shows in the record
//!   header, and makes capacity accounting see the bytes actually stored. Compressing again in
//!   RocksDB would burn CPU for nothing.
//! * `sizes`: hash → record length (u64 BE). Written in the same atomic batch as the record;
//!   lets the node count usage at startup without reading any shard.
//! * `quarantine`: records that failed verification, moved aside.
//!
//! Every write uses `WriteOptions::set_sync(true)`: the WAL is fsynced before a put or delete
//! returns, so an acknowledged shard survives `kill -9` and power loss.

use std::path::{Path, PathBuf};

use cyxcloud_core::Hash;
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DB, DBCompressionType,
    IteratorMode, Options, ReadOptions, WriteBatch, WriteOptions,
};

use super::ShardStore;
use crate::error::{Error, Result};

const CF_SHARDS: &str = "shards";
const CF_SIZES: &str = "sizes";
const CF_QUARANTINE: &str = "quarantine";

/// Compactions collect the garbage of the oldest quarter of blob files.
const BLOB_GC_AGE_CUTOFF: f64 = 0.25;

/// Values at least this large go to blob files.
pub const MIN_BLOB_SIZE: u64 = 4096;

/// Tuning knobs from the node config.
#[derive(Debug, Clone)]
pub struct RocksOptions {
    /// Block cache for the small-value column families (`[storage] cache_size_mb`).
    pub cache_bytes: usize,
    /// Sync the WAL on every write (always true in the node; false only for experiments).
    pub sync: bool,
}

impl Default for RocksOptions {
    fn default() -> Self {
        RocksOptions {
            cache_bytes: 64 << 20,
            sync: true,
        }
    }
}

/// A shard store in one RocksDB database.
pub struct RocksStore {
    db: DB,
    path: PathBuf,
    write: WriteOptions,
}

impl std::fmt::Debug for RocksStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RocksStore({})", self.path.display())
    }
}

fn blob_cf_options(table: &BlockBasedOptions) -> Options {
    let mut o = Options::default();
    o.set_enable_blob_files(true);
    o.set_min_blob_size(MIN_BLOB_SIZE);
    o.set_blob_file_size(256 << 20);
    o.set_blob_compression_type(DBCompressionType::None);
    o.set_enable_blob_gc(true);
    o.set_blob_gc_age_cutoff(BLOB_GC_AGE_CUTOFF);
    o.set_compression_type(DBCompressionType::None);
    // Large values: a memtable holds a few 64 MiB shards before it is flushed to blob files.
    o.set_write_buffer_size(64 << 20);
    o.set_max_write_buffer_number(3);
    o.set_block_based_table_factory(table);
    o
}

impl RocksStore {
    /// Opens (creating if needed) the database in `path`.
    pub fn open(path: &Path, opts: &RocksOptions) -> Result<Self> {
        std::fs::create_dir_all(path).map_err(|e| Error::io("cannot create", path, e))?;
        let rocks = |source| Error::Rocks {
            path: path.to_path_buf(),
            source,
        };
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_max_total_wal_size(256 << 20);
        db_opts.set_keep_log_file_num(4);
        let cache = Cache::new_lru_cache(opts.cache_bytes.max(1 << 20)).map_err(rocks)?;
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        let mut small = Options::default();
        small.set_block_based_table_factory(&table);
        small.set_compression_type(DBCompressionType::None);
        let cfs = vec![
            ColumnFamilyDescriptor::new(CF_SHARDS, blob_cf_options(&table)),
            ColumnFamilyDescriptor::new(CF_SIZES, small),
            ColumnFamilyDescriptor::new(CF_QUARANTINE, blob_cf_options(&table)),
        ];
        let db = DB::open_cf_descriptors(&db_opts, path, cfs).map_err(rocks)?;
        let mut write = WriteOptions::default();
        write.set_sync(opts.sync);
        Ok(RocksStore {
            db,
            path: path.to_path_buf(),
            write,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn cf(&self, name: &str) -> &ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column family created at open")
    }

    fn err(&self, source: rocksdb::Error) -> Error {
        Error::Rocks {
            path: self.path.clone(),
            source,
        }
    }

    /// Flushes memtables to SST and blob files (tests use it to put shards into blob files).
    pub fn flush(&self) -> Result<()> {
        for cf in [CF_SHARDS, CF_SIZES, CF_QUARANTINE] {
            self.db.flush_cf(self.cf(cf)).map_err(|e| self.err(e))?;
        }
        Ok(())
    }
}

fn decode_len(v: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(v).ok().map(u64::from_be_bytes)
}

impl ShardStore for RocksStore {
    fn name(&self) -> &'static str {
        "rocksdb"
    }

    fn put(&self, hash: &Hash, record: &[u8]) -> Result<()> {
        let mut b = WriteBatch::default();
        b.put_cf(self.cf(CF_SHARDS), hash.as_bytes(), record);
        b.put_cf(
            self.cf(CF_SIZES),
            hash.as_bytes(),
            (record.len() as u64).to_be_bytes(),
        );
        self.db.write_opt(b, &self.write).map_err(|e| self.err(e))
    }

    fn get(&self, hash: &Hash) -> Result<Option<Vec<u8>>> {
        // RocksDB's own CRC32c over blob records is skipped on reads: `Shards` verifies every
        // record's blake3 end to end, and Debian's portable librocksdb computes CRC32c in
        // software (profiled at ~30 % of the node's CPU under load).
        let mut ro = ReadOptions::default();
        ro.set_verify_checksums(false);
        self.db
            .get_cf_opt(self.cf(CF_SHARDS), hash.as_bytes(), &ro)
            .map_err(|e| self.err(e))
    }

    fn record_len(&self, hash: &Hash) -> Result<Option<u64>> {
        let v = self
            .db
            .get_pinned_cf(self.cf(CF_SIZES), hash.as_bytes())
            .map_err(|e| self.err(e))?;
        Ok(v.and_then(|v| decode_len(&v)))
    }

    fn delete(&self, hash: &Hash) -> Result<Option<u64>> {
        let Some(len) = self.record_len(hash)? else {
            return Ok(None);
        };
        let mut b = WriteBatch::default();
        b.delete_cf(self.cf(CF_SHARDS), hash.as_bytes());
        b.delete_cf(self.cf(CF_SIZES), hash.as_bytes());
        self.db.write_opt(b, &self.write).map_err(|e| self.err(e))?;
        Ok(Some(len))
    }

    fn scan(&self) -> Result<Vec<(Hash, u64)>> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_SIZES), IteratorMode::Start) {
            let (k, v) = item.map_err(|e| self.err(e))?;
            if let (Some(h), Some(len)) = (Hash::from_slice(&k), decode_len(&v)) {
                out.push((h, len));
            } else {
                tracing::warn!(key = %hex::encode(&k), "ignoring malformed size entry");
            }
        }
        Ok(out)
    }

    fn quarantine(&self, hash: &Hash) -> Result<()> {
        // The record may be unreadable (RocksDB's own checksum failed): keep what can be read.
        let rec = self.get(hash).ok().flatten().unwrap_or_default();
        let mut b = WriteBatch::default();
        b.put_cf(self.cf(CF_QUARANTINE), hash.as_bytes(), rec);
        b.delete_cf(self.cf(CF_SHARDS), hash.as_bytes());
        b.delete_cf(self.cf(CF_SIZES), hash.as_bytes());
        self.db.write_opt(b, &self.write).map_err(|e| self.err(e))
    }

    fn reclaim(&self) -> Result<()> {
        // A full compaction with every blob file eligible for garbage collection: live shards
        // move to new blob files, files left with deleted shards only go away. It rewrites the
        // live data once, so it runs only once deletes freed as much as is left (the caller).
        let cf = self.cf(CF_SHARDS);
        self.db
            .set_options_cf(cf, &[("blob_garbage_collection_age_cutoff", "1.0")])
            .map_err(|e| self.err(e))?;
        self.db.compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
        self.db
            .compact_range_cf(self.cf(CF_SIZES), None::<&[u8]>, None::<&[u8]>);
        self.db
            .set_options_cf(
                cf,
                &[(
                    "blob_garbage_collection_age_cutoff",
                    &BLOB_GC_AGE_CUTOFF.to_string(),
                )],
            )
            .map_err(|e| self.err(e))
    }

    fn quarantined(&self) -> Result<u64> {
        let mut it = self.db.raw_iterator_cf(self.cf(CF_QUARANTINE));
        it.seek_to_first();
        let mut n = 0;
        while it.valid() {
            n += 1;
            it.next();
        }
        it.status().map_err(|e| self.err(e))?;
        Ok(n)
    }
}
