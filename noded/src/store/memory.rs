//! In-memory [`ShardStore`]: the test twin of the RocksDB store. Nothing survives the process.

use std::collections::HashMap;
use std::sync::RwLock;

use cyxcloud_core::Hash;

use super::ShardStore;
use crate::error::Result;

/// Records in a hash map.
#[derive(Debug, Default)]
pub struct MemoryStore {
    records: RwLock<HashMap<Hash, Vec<u8>>>,
    quarantine: RwLock<HashMap<Hash, Vec<u8>>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces a record's bytes behind the store's back (tests: on-disk corruption).
    pub fn tamper(&self, hash: &Hash, f: impl FnOnce(&mut Vec<u8>)) -> bool {
        let mut m = self.records.write().unwrap_or_else(|e| e.into_inner());
        match m.get_mut(hash) {
            Some(r) => {
                f(r);
                true
            }
            None => false,
        }
    }
}

impl ShardStore for MemoryStore {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn put(&self, hash: &Hash, record: &[u8]) -> Result<()> {
        self.records
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(*hash, record.to_vec());
        Ok(())
    }

    fn get(&self, hash: &Hash) -> Result<Option<Vec<u8>>> {
        Ok(self
            .records
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(hash)
            .cloned())
    }

    fn record_len(&self, hash: &Hash) -> Result<Option<u64>> {
        Ok(self
            .records
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(hash)
            .map(|r| r.len() as u64))
    }

    fn delete(&self, hash: &Hash) -> Result<Option<u64>> {
        Ok(self
            .records
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(hash)
            .map(|r| r.len() as u64))
    }

    fn scan(&self) -> Result<Vec<(Hash, u64)>> {
        let mut v: Vec<(Hash, u64)> = self
            .records
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(h, r)| (*h, r.len() as u64))
            .collect();
        v.sort();
        Ok(v)
    }

    fn quarantine(&self, hash: &Hash) -> Result<()> {
        let rec = self
            .records
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(hash);
        if let Some(r) = rec {
            self.quarantine
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(*hash, r);
        }
        Ok(())
    }

    fn quarantined(&self) -> Result<u64> {
        Ok(self
            .quarantine
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .len() as u64)
    }
}
