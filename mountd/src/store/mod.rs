//! The local metadata cache: entries (attributes, xattrs, symlink targets), directory entries,
//! which directories are completely listed, file layouts, the staged-write journal, the index
//! of the on-disk chunk cache, and a few key/value settings (the journal position).
//!
//! Storage sits behind [`MetaStore`] with two implementations: [`SqliteStore`] (the real one,
//! one file in the cache directory) and [`MemStore`] (its twin for tests); one conformance
//! suite (`conformance.rs`) runs against both, including reopen steps for SQLite. Every
//! persisted blob starts with a 4-byte magic and version; [`decode_entry`] and
//! [`decode_layout`] know every version.

mod memory;
mod sqlite;

#[cfg(test)]
mod conformance;

pub use memory::MemStore;
pub use sqlite::SqliteStore;

use cyxcloud_proto::v1;
use prost::Message;

use crate::error::{Error, Result};

/// One staged file in the write journal: its bytes are in `staging/<ino>` in the cache dir and
/// not yet (all) committed to the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedRec {
    pub ino: u64,
    /// `bucket/path` when staged, for status output.
    pub path: String,
    pub size: u64,
    pub mtime_ns: i64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub created_ns: i64,
    /// A file created by this mount under a reserved id and not yet at the gateway:
    /// `(parent, name)` it is to be created as.
    pub pending: Option<(u64, String)>,
}

/// One decoded chunk in the on-disk cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkRec {
    /// Hex of the chunk id (blake3 of its plaintext).
    pub id: String,
    pub size: u64,
    pub last_used: i64,
}

/// A change to the cache. A batch of them is applied atomically.
#[derive(Debug, Clone, PartialEq)]
pub enum Mutation {
    /// Inserts or replaces an entry's attributes (by id).
    PutEntry(v1::Entry),
    /// Forgets an entry, its layouts and its own directory listing.
    RemoveEntry(u64),
    PutDentry {
        parent: u64,
        name: String,
        ino: u64,
    },
    RemoveDentry {
        parent: u64,
        name: String,
    },
    /// Marks a directory's listing complete (every child cached) or not.
    SetComplete {
        dir: u64,
        complete: bool,
    },
    /// Sets a directory's children to exactly these and marks it complete.
    ReplaceChildren {
        dir: u64,
        children: Vec<(String, u64)>,
    },
    /// Stores the layout of one version (older versions of that entry are dropped).
    PutLayout {
        ino: u64,
        version: u64,
        layout: v1::GetLayoutResponse,
    },
    SetKv {
        key: String,
        value: String,
    },
    PutStaged(StagedRec),
    RemoveStaged(u64),
    PutChunk(ChunkRec),
    RemoveChunk(String),
    /// Forgets every directory entry and completeness mark (journal resync); entries, layouts,
    /// staged files and chunks stay.
    ClearNamespace,
}

/// The cache's storage.
pub trait MetaStore: Send + Sync {
    fn apply(&self, batch: &[Mutation]) -> Result<()>;
    /// Applies `batch` only if the names cached in `dir` (and its completeness) did not change
    /// since [`MetaStore::dir_gen`] returned `seen`; `false`, with nothing applied, if they did.
    /// A listing fetched from the gateway is installed this way, so that a create, unlink or
    /// journal event that landed while it was in flight is never undone by it.
    fn apply_if_unchanged(&self, dir: u64, seen: u64, batch: &[Mutation]) -> Result<bool>;
    /// The generation of `dir`'s cached names: it changes with every mutation of them (not
    /// persisted; only compared within one process).
    fn dir_gen(&self, dir: u64) -> u64;
    fn entry(&self, ino: u64) -> Result<Option<v1::Entry>>;
    fn lookup(&self, parent: u64, name: &str) -> Result<Option<u64>>;
    /// Children of `parent` in name order.
    fn children(&self, parent: u64) -> Result<Vec<(String, u64)>>;
    /// Children of `parent` with their cached entries, in name order (names whose entry is
    /// not cached are left out). One query where the store can join.
    fn children_entries(&self, parent: u64) -> Result<Vec<(String, v1::Entry)>> {
        let mut out = Vec::new();
        for (name, id) in self.children(parent)? {
            if let Some(e) = self.entry(id)? {
                out.push((name, e));
            }
        }
        Ok(out)
    }
    /// Every `(parent, name)` naming `ino`, in order.
    fn names(&self, ino: u64) -> Result<Vec<(u64, String)>>;
    fn is_complete(&self, dir: u64) -> Result<bool>;
    fn layout(&self, ino: u64, version: u64) -> Result<Option<v1::GetLayoutResponse>>;
    fn kv(&self, key: &str) -> Result<Option<String>>;
    fn staged(&self) -> Result<Vec<StagedRec>>;
    fn chunks(&self) -> Result<Vec<ChunkRec>>;
}

/// Generations of directories' cached names (see [`MetaStore::dir_gen`]): a counter per
/// directory plus an epoch for [`Mutation::ClearNamespace`]. The sum of the two only grows, so
/// an equal sum means neither moved.
#[derive(Debug, Default)]
struct DirGens {
    epoch: u64,
    per: std::collections::HashMap<u64, u64>,
}

impl DirGens {
    fn get(&self, dir: u64) -> u64 {
        self.epoch + self.per.get(&dir).copied().unwrap_or(0)
    }

    /// Counts what `batch` changes.
    fn note(&mut self, batch: &[Mutation]) {
        for m in batch {
            let dir = match m {
                Mutation::PutDentry { parent, .. } | Mutation::RemoveDentry { parent, .. } => {
                    *parent
                }
                Mutation::SetComplete { dir, .. } | Mutation::ReplaceChildren { dir, .. } => *dir,
                Mutation::RemoveEntry(ino) => *ino,
                Mutation::ClearNamespace => {
                    self.epoch += 1;
                    continue;
                }
                _ => continue,
            };
            *self.per.entry(dir).or_default() += 1;
        }
    }
}

const ENTRY_MAGIC: &[u8; 4] = b"CXE\x01";
const LAYOUT_MAGIC: &[u8; 4] = b"CXL\x01";

pub fn encode_entry(e: &v1::Entry) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + e.encoded_len());
    out.extend_from_slice(ENTRY_MAGIC);
    e.encode(&mut out).expect("Vec grows");
    out
}

pub fn decode_entry(b: &[u8]) -> Result<v1::Entry> {
    match b.split_at_checked(4) {
        Some((m, rest)) if m == ENTRY_MAGIC => {
            v1::Entry::decode(rest).map_err(|e| Error::Corrupt {
                what: "entry".into(),
                detail: e.to_string(),
            })
        }
        _ => Err(Error::Corrupt {
            what: "entry".into(),
            detail: "unknown magic or version".into(),
        }),
    }
}

pub fn encode_layout(l: &v1::GetLayoutResponse) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + l.encoded_len());
    out.extend_from_slice(LAYOUT_MAGIC);
    l.encode(&mut out).expect("Vec grows");
    out
}

pub fn decode_layout(b: &[u8]) -> Result<v1::GetLayoutResponse> {
    match b.split_at_checked(4) {
        Some((m, rest)) if m == LAYOUT_MAGIC => {
            v1::GetLayoutResponse::decode(rest).map_err(|e| Error::Corrupt {
                what: "layout".into(),
                detail: e.to_string(),
            })
        }
        _ => Err(Error::Corrupt {
            what: "layout".into(),
            detail: "unknown magic or version".into(),
        }),
    }
}
