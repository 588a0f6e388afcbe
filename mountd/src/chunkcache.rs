//! The on-disk cache of decoded chunks: one file per chunk under `chunks/`, named by the chunk
//! id (blake3 of its plaintext), indexed in the metadata store, bounded in bytes with
//! least-recently-used eviction. A chunk file is verified against its id the first time this
//! process uses it (a damaged file is dropped and fetched again), then read in place.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use cyxcloud_core::Hash;

use crate::error::Result;
use crate::store::{ChunkRec, MetaStore, Mutation};

#[derive(Debug, Default)]
struct Lru {
    /// id -> (size, tick)
    items: HashMap<String, (u64, u64)>,
    /// tick -> id, oldest first
    order: BTreeMap<u64, String>,
    tick: u64,
    bytes: u64,
    /// Touched since the last flush to the store.
    dirty: HashSet<String>,
}

impl Lru {
    fn touch(&mut self, id: &str) -> bool {
        let Some((_, t)) = self.items.get_mut(id) else {
            return false;
        };
        self.order.remove(t);
        self.tick += 1;
        *t = self.tick;
        self.order.insert(self.tick, id.to_string());
        self.dirty.insert(id.to_string());
        true
    }

    fn insert(&mut self, id: &str, size: u64) {
        if let Some((s, t)) = self.items.remove(id) {
            self.order.remove(&t);
            self.bytes -= s;
        }
        self.tick += 1;
        self.items.insert(id.to_string(), (size, self.tick));
        self.order.insert(self.tick, id.to_string());
        self.bytes += size;
    }

    fn remove(&mut self, id: &str) -> bool {
        if let Some((s, t)) = self.items.remove(id) {
            self.order.remove(&t);
            self.bytes -= s;
            self.dirty.remove(id);
            true
        } else {
            false
        }
    }
}

pub struct ChunkCache {
    dir: PathBuf,
    limit: u64,
    store: Arc<dyn MetaStore>,
    lru: Mutex<Lru>,
    verified: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for ChunkCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkCache")
            .field("dir", &self.dir)
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl ChunkCache {
    /// Opens the cache in `dir`: drops index rows without a file and files without a row.
    pub fn open(dir: &Path, limit: u64, store: Arc<dyn MetaStore>) -> Result<ChunkCache> {
        std::fs::create_dir_all(dir)?;
        let mut recs = store.chunks()?;
        recs.sort_by_key(|r| r.last_used);
        let mut lru = Lru::default();
        let mut stale = Vec::new();
        for r in recs {
            let p = dir.join(&r.id);
            match std::fs::metadata(&p) {
                Ok(m) if m.len() == r.size => lru.insert(&r.id, r.size),
                _ => {
                    let _ = std::fs::remove_file(&p);
                    stale.push(Mutation::RemoveChunk(r.id));
                }
            }
        }
        store.apply(&stale)?;
        for f in std::fs::read_dir(dir)? {
            let f = f?;
            let name = f.file_name().to_string_lossy().into_owned();
            if !lru.items.contains_key(&name) {
                let _ = std::fs::remove_file(f.path());
            }
        }
        let c = ChunkCache {
            dir: dir.to_path_buf(),
            limit,
            store,
            lru: Mutex::new(lru),
            verified: Mutex::new(HashSet::new()),
        };
        c.evict(0)?;
        Ok(c)
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// Bytes and chunks held.
    pub fn usage(&self) -> (u64, usize) {
        let l = self.lru.lock().unwrap_or_else(|e| e.into_inner());
        (l.bytes, l.items.len())
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    pub fn contains(&self, id: &Hash) -> bool {
        self.lru
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .items
            .contains_key(&id.to_hex())
    }

    /// Reads `len` bytes at `offset` of chunk `id`, or `None` when the chunk is not cached (or
    /// its file failed verification and was dropped).
    pub fn read(&self, id: &Hash, offset: u64, len: usize) -> Result<Option<Vec<u8>>> {
        let hex = id.to_hex();
        if !self
            .lru
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .touch(&hex)
        {
            return Ok(None);
        }
        let f = match File::open(self.path(&hex)) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.drop_chunk(&hex)?;
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        if !self
            .verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&hex)
        {
            let data = std::fs::read(self.path(&hex))?;
            if Hash::of(&data) != *id {
                tracing::warn!(chunk = %hex, "cached chunk failed verification; dropping it");
                self.drop_chunk(&hex)?;
                return Ok(None);
            }
            self.verified
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(hex.clone());
        }
        let mut buf = vec![0u8; len];
        let mut done = 0;
        while done < len {
            let n = f.read_at(&mut buf[done..], offset + done as u64)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        buf.truncate(done);
        Ok(Some(buf))
    }

    fn drop_chunk(&self, hex: &str) -> Result<()> {
        self.lru
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(hex);
        self.verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(hex);
        let _ = std::fs::remove_file(self.path(hex));
        self.store.apply(&[Mutation::RemoveChunk(hex.to_string())])
    }

    /// Stores a decoded chunk (the caller verified it against `id`).
    pub fn insert(&self, id: &Hash, data: &[u8]) -> Result<()> {
        let size = data.len() as u64;
        if size > self.limit {
            return Ok(());
        }
        let hex = id.to_hex();
        if self.contains(id) {
            return Ok(());
        }
        self.evict(size)?;
        // Unique per insert: two inserts of one chunk must never share a temp file.
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self
            .dir
            .join(format!(".tmp-{hex}-{}-{n}", std::process::id()));
        {
            let mut f = File::create(&tmp)?;
            f.write_all(data)?;
        }
        std::fs::rename(&tmp, self.path(&hex))?;
        self.store.apply(&[Mutation::PutChunk(ChunkRec {
            id: hex.clone(),
            size,
            last_used: now_secs(),
        })])?;
        self.lru
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(&hex, size);
        self.verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(hex);
        Ok(())
    }

    /// Evicts least recently used chunks until `incoming` more bytes fit.
    fn evict(&self, incoming: u64) -> Result<()> {
        let mut gone = Vec::new();
        {
            let mut l = self.lru.lock().unwrap_or_else(|e| e.into_inner());
            while l.bytes + incoming > self.limit {
                let Some((_, id)) = l.order.pop_first() else {
                    break;
                };
                if let Some((s, _)) = l.items.remove(&id) {
                    l.bytes -= s;
                }
                l.dirty.remove(&id);
                gone.push(id);
            }
        }
        if gone.is_empty() {
            return Ok(());
        }
        let mut v = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        for id in &gone {
            v.remove(id);
            let _ = std::fs::remove_file(self.path(id));
        }
        drop(v);
        self.store.apply(
            &gone
                .into_iter()
                .map(Mutation::RemoveChunk)
                .collect::<Vec<_>>(),
        )
    }

    /// Writes the recency of recently used chunks to the store (so LRU order survives a
    /// restart).
    pub fn flush(&self) -> Result<()> {
        let batch: Vec<Mutation> = {
            let mut l = self.lru.lock().unwrap_or_else(|e| e.into_inner());
            let dirty = std::mem::take(&mut l.dirty);
            let now = now_secs();
            dirty
                .into_iter()
                .filter_map(|id| {
                    l.items.get(&id).map(|(size, _)| {
                        Mutation::PutChunk(ChunkRec {
                            id,
                            size: *size,
                            last_used: now,
                        })
                    })
                })
                .collect()
        };
        self.store.apply(&batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MemStore, SqliteStore};

    #[test]
    fn lru_evicts_oldest_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn MetaStore> =
            Arc::new(SqliteStore::open(&dir.path().join("c.db")).unwrap());
        let cdir = dir.path().join("chunks");
        let c = ChunkCache::open(&cdir, 300, store.clone()).unwrap();
        let data: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i; 100]).collect();
        let ids: Vec<Hash> = data.iter().map(|d| Hash::of(d)).collect();
        for i in 0..3 {
            c.insert(&ids[i], &data[i]).unwrap();
        }
        // Use chunk 0 so chunk 1 is the oldest.
        assert_eq!(c.read(&ids[0], 10, 5).unwrap().unwrap(), vec![0; 5]);
        c.insert(&ids[3], &data[3]).unwrap();
        assert!(c.contains(&ids[0]) && !c.contains(&ids[1]));
        assert_eq!(c.usage(), (300, 3));
        c.flush().unwrap();
        drop(c);
        let c = ChunkCache::open(&cdir, 300, store.clone()).unwrap();
        assert_eq!(c.usage(), (300, 3));
        assert_eq!(c.read(&ids[3], 98, 10).unwrap().unwrap(), vec![3; 2]);
        // A smaller bound on reopen evicts down to it.
        drop(c);
        let c = ChunkCache::open(&cdir, 150, store).unwrap();
        assert_eq!(c.usage().1, 1);
    }

    #[test]
    fn damaged_chunk_is_dropped_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn MetaStore> = Arc::new(MemStore::new());
        let cdir = dir.path().join("chunks");
        let c = ChunkCache::open(&cdir, 1 << 20, store.clone()).unwrap();
        let d = vec![7u8; 1000];
        let id = Hash::of(&d);
        c.insert(&id, &d).unwrap();
        drop(c);
        // Flip a byte on disk; a new process (fresh verified set) must notice.
        let p = cdir.join(id.to_hex());
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[500] ^= 1;
        std::fs::write(&p, bytes).unwrap();
        let c = ChunkCache::open(&cdir, 1 << 20, store).unwrap();
        assert!(c.read(&id, 0, 10).unwrap().is_none());
        assert!(!c.contains(&id) && !p.exists());
    }
}
