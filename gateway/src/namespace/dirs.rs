//! A cache of directory paths for reads by inode id.
//!
//! An entry read by id reports its bucket and path. Walking the path up through `dentries`
//! costs a recursive query on every stat; caching each directory's path makes it a lookup of the
//! leaf's one dentry. The store keeps a counter, `dir_moves`, that every transaction which moves
//! a directory (rename or exchange) increments. A read fetches that counter in the same
//! statement as the leaf, so the cached paths are used only when no directory has moved since
//! they were read, on any gateway sharing the store. Directories that are removed need no
//! bump: inode ids are never reused, and no live entry names a removed directory as its parent.
//!
//! The counter seen inside a write transaction may be uncommitted, so the cache serves only
//! reads outside one (the pool's autocommit connections).

use std::collections::HashMap;
use std::sync::Mutex;

/// At most this many directories are cached; a full cache starts over.
const CAPACITY: usize = 65_536;

#[derive(Debug, Default)]
struct State {
    /// The `dir_moves` value the paths were read under (`None` before the first read).
    epoch: Option<i64>,
    paths: HashMap<u64, (String, String)>,
}

/// `(bucket, path)` of directories by inode id, valid for one value of `dir_moves`.
#[derive(Debug, Default)]
pub(crate) struct DirPaths {
    state: Mutex<State>,
}

impl DirPaths {
    /// The cached path of `dir` under `epoch`. A newer epoch than the cache's empties it.
    pub(crate) fn get(&self, epoch: i64, dir: u64) -> Option<(String, String)> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match s.epoch {
            Some(e) if e == epoch => s.paths.get(&dir).cloned(),
            Some(e) if e > epoch => None, // a reader that began before the last move
            _ => {
                s.epoch = Some(epoch);
                s.paths.clear();
                None
            }
        }
    }

    /// Records the path of `dir`, read after `dir_moves` was seen at `epoch`. Ignored when the
    /// cache has moved on to another epoch.
    pub(crate) fn put(&self, epoch: i64, dir: u64, path: (String, String)) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.epoch != Some(epoch) {
            return;
        }
        if s.paths.len() >= CAPACITY {
            s.paths.clear();
        }
        s.paths.insert(dir, path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(b: &str, d: &str) -> (String, String) {
        (b.into(), d.into())
    }

    #[test]
    fn paths_serve_only_their_epoch() {
        let c = DirPaths::default();
        assert_eq!(c.get(3, 10), None);
        c.put(3, 10, p("b", "x/y"));
        assert_eq!(c.get(3, 10), Some(p("b", "x/y")));
        // A reader that saw an older counter gets nothing and cannot store.
        assert_eq!(c.get(2, 10), None);
        c.put(2, 11, p("b", "old"));
        assert_eq!(c.get(3, 11), None);
        // A newer counter empties the cache; late stores under the old one are ignored.
        assert_eq!(c.get(4, 10), None);
        c.put(3, 10, p("b", "x/y"));
        assert_eq!(c.get(4, 10), None);
        c.put(4, 10, p("b", "z/y"));
        assert_eq!(c.get(4, 10), Some(p("b", "z/y")));
    }
}
