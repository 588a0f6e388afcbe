//! The in-memory twin of the SQLite cache, for tests (and the model the conformance suite
//! compares against).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use cyxcloud_proto::v1;

use super::{ChunkRec, DirGens, MetaStore, Mutation, StagedRec};
use crate::error::Result;

#[derive(Debug, Default)]
struct State {
    entries: BTreeMap<u64, v1::Entry>,
    dentries: BTreeMap<(u64, String), u64>,
    complete: BTreeSet<u64>,
    layouts: BTreeMap<u64, (u64, v1::GetLayoutResponse)>,
    kv: BTreeMap<String, String>,
    staged: BTreeMap<u64, StagedRec>,
    chunks: BTreeMap<String, ChunkRec>,
    gens: DirGens,
}

/// A [`MetaStore`] in memory.
#[derive(Debug, Default)]
pub struct MemStore {
    state: Mutex<State>,
}

impl MemStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl MetaStore for MemStore {
    fn apply(&self, batch: &[Mutation]) -> Result<()> {
        self.with(|s| apply(s, batch))
    }

    fn apply_if_unchanged(&self, dir: u64, seen: u64, batch: &[Mutation]) -> Result<bool> {
        self.with(|s| {
            if s.gens.get(dir) != seen {
                return Ok(false);
            }
            apply(s, batch).map(|()| true)
        })
    }

    fn dir_gen(&self, dir: u64) -> u64 {
        self.with(|s| s.gens.get(dir))
    }

    fn entry(&self, ino: u64) -> Result<Option<v1::Entry>> {
        Ok(self.with(|s| s.entries.get(&ino).cloned()))
    }

    fn lookup(&self, parent: u64, name: &str) -> Result<Option<u64>> {
        Ok(self.with(|s| s.dentries.get(&(parent, name.to_string())).copied()))
    }

    fn children(&self, parent: u64) -> Result<Vec<(String, u64)>> {
        Ok(self.with(|s| {
            s.dentries
                .range((parent, String::new())..)
                .take_while(|((p, _), _)| *p == parent)
                .map(|((_, n), i)| (n.clone(), *i))
                .collect()
        }))
    }

    fn names(&self, ino: u64) -> Result<Vec<(u64, String)>> {
        Ok(self.with(|s| {
            s.dentries
                .iter()
                .filter(|(_, i)| **i == ino)
                .map(|(k, _)| k.clone())
                .collect()
        }))
    }

    fn is_complete(&self, dir: u64) -> Result<bool> {
        Ok(self.with(|s| s.complete.contains(&dir)))
    }

    fn layout(&self, ino: u64, version: u64) -> Result<Option<v1::GetLayoutResponse>> {
        Ok(self.with(|s| {
            s.layouts
                .get(&ino)
                .filter(|(v, _)| *v == version)
                .map(|(_, l)| l.clone())
        }))
    }

    fn kv(&self, key: &str) -> Result<Option<String>> {
        Ok(self.with(|s| s.kv.get(key).cloned()))
    }

    fn staged(&self) -> Result<Vec<StagedRec>> {
        Ok(self.with(|s| s.staged.values().cloned().collect()))
    }

    fn chunks(&self) -> Result<Vec<ChunkRec>> {
        Ok(self.with(|s| s.chunks.values().cloned().collect()))
    }
}

fn apply(s: &mut State, batch: &[Mutation]) -> Result<()> {
    for m in batch {
        match m {
            Mutation::PutEntry(e) => {
                s.entries.insert(e.id, e.clone());
            }
            Mutation::RemoveEntry(ino) => {
                s.entries.remove(ino);
                s.layouts.remove(ino);
                s.complete.remove(ino);
                s.dentries.retain(|(p, _), _| p != ino);
            }
            Mutation::PutDentry { parent, name, ino } => {
                s.dentries.insert((*parent, name.clone()), *ino);
            }
            Mutation::RemoveDentry { parent, name } => {
                s.dentries.remove(&(*parent, name.clone()));
            }
            Mutation::SetComplete { dir, complete } => {
                if *complete {
                    s.complete.insert(*dir);
                } else {
                    s.complete.remove(dir);
                }
            }
            Mutation::ReplaceChildren { dir, children } => {
                s.dentries.retain(|(p, _), _| p != dir);
                for (n, i) in children {
                    s.dentries.insert((*dir, n.clone()), *i);
                }
                s.complete.insert(*dir);
            }
            Mutation::PutLayout {
                ino,
                version,
                layout,
            } => {
                s.layouts.insert(*ino, (*version, layout.clone()));
            }
            Mutation::SetKv { key, value } => {
                s.kv.insert(key.clone(), value.clone());
            }
            Mutation::PutStaged(r) => {
                s.staged.insert(r.ino, r.clone());
            }
            Mutation::RemoveStaged(ino) => {
                s.staged.remove(ino);
            }
            Mutation::PutChunk(c) => {
                s.chunks.insert(c.id.clone(), c.clone());
            }
            Mutation::RemoveChunk(id) => {
                s.chunks.remove(id);
            }
            Mutation::ClearNamespace => {
                s.dentries.clear();
                s.complete.clear();
            }
        }
    }
    s.gens.note(batch);
    Ok(())
}
