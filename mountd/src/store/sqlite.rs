//! The SQLite metadata cache (one file, WAL mode: a committed batch survives a crash of the
//! daemon).

use std::path::Path;
use std::sync::Mutex;

use cyxcloud_proto::v1;
use rusqlite::{Connection, OptionalExtension, params};

use super::{
    ChunkRec, DirGens, MetaStore, Mutation, StagedRec, decode_entry, decode_layout, encode_entry,
    encode_layout,
};
use crate::error::Result;

/// Numbered migrations; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "CREATE TABLE entries (ino INTEGER PRIMARY KEY, rec BLOB NOT NULL);
     CREATE TABLE dentries (parent INTEGER NOT NULL, name TEXT NOT NULL, ino INTEGER NOT NULL,
                            PRIMARY KEY (parent, name)) WITHOUT ROWID;
     CREATE INDEX dentries_ino ON dentries (ino);
     CREATE TABLE complete (dir INTEGER PRIMARY KEY);
     CREATE TABLE layouts (ino INTEGER PRIMARY KEY, version INTEGER NOT NULL, rec BLOB NOT NULL);
     CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
     CREATE TABLE staged (ino INTEGER PRIMARY KEY, path TEXT NOT NULL, size INTEGER NOT NULL,
                          mtime_ns INTEGER NOT NULL, mode INTEGER NOT NULL, uid INTEGER NOT NULL,
                          gid INTEGER NOT NULL, created_ns INTEGER NOT NULL);
     CREATE TABLE chunks (id TEXT PRIMARY KEY, size INTEGER NOT NULL, last_used INTEGER NOT NULL);",
    // 2: files created here and not yet at the gateway (`StagedRec::pending`).
    "ALTER TABLE staged ADD COLUMN pending_parent INTEGER;
     ALTER TABLE staged ADD COLUMN pending_name TEXT;",
];

/// A [`MetaStore`] in an SQLite file.
pub struct SqliteStore {
    /// The connection, and the directories' generations (changed under the same lock).
    conn: Mutex<(Connection, DirGens)>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating and migrating) the cache database at `path`.
    pub fn open(path: &Path) -> Result<SqliteStore> {
        let mut conn = Connection::open(path)?;
        // One daemon owns the cache directory (`mountd.lock`), so the database lock is taken
        // once and kept: no fcntl lock and unlock around every transaction, and the WAL
        // index lives in memory instead of a shared-memory file.
        conn.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let version = version.max(0) as usize;
        if version < MIGRATIONS.len() {
            let tx = conn.transaction()?;
            for m in &MIGRATIONS[version..] {
                tx.execute_batch(m)?;
            }
            tx.pragma_update(None, "user_version", MIGRATIONS.len() as i64)?;
            tx.commit()?;
        }
        Ok(SqliteStore {
            conn: Mutex::new((conn, DirGens::default())),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> Result<T> {
        let mut c = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        Ok(f(&mut c.0)?)
    }

    /// Applies `batch` if `check` (run on the generations first, under the lock) allows.
    fn apply_when(&self, batch: &[Mutation], check: impl FnOnce(&DirGens) -> bool) -> Result<bool> {
        let mut guard = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let (c, gens) = &mut *guard;
        if !check(gens) {
            return Ok(false);
        }
        if batch.is_empty() {
            return Ok(true);
        }
        apply_tx(c, batch)?;
        gens.note(batch);
        Ok(true)
    }
}

fn i(v: u64) -> i64 {
    v as i64
}

impl MetaStore for SqliteStore {
    fn apply(&self, batch: &[Mutation]) -> Result<()> {
        self.apply_when(batch, |_| true).map(drop)
    }

    fn apply_if_unchanged(&self, dir: u64, seen: u64, batch: &[Mutation]) -> Result<bool> {
        self.apply_when(batch, |g| g.get(dir) == seen)
    }

    fn dir_gen(&self, dir: u64) -> u64 {
        self.conn
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .get(dir)
    }

    fn entry(&self, ino: u64) -> Result<Option<v1::Entry>> {
        let rec: Option<Vec<u8>> = self.with(|c| {
            c.prepare_cached("SELECT rec FROM entries WHERE ino = ?1")?
                .query_row(params![i(ino)], |r| r.get(0))
                .optional()
        })?;
        rec.map(|b| decode_entry(&b)).transpose()
    }

    fn lookup(&self, parent: u64, name: &str) -> Result<Option<u64>> {
        self.with(|c| {
            c.prepare_cached("SELECT ino FROM dentries WHERE parent = ?1 AND name = ?2")?
                .query_row(params![i(parent), name], |r| r.get::<_, i64>(0))
                .optional()
                .map(|o| o.map(|v| v as u64))
        })
    }

    fn children(&self, parent: u64) -> Result<Vec<(String, u64)>> {
        self.with(|c| {
            let mut st =
                c.prepare_cached("SELECT name, ino FROM dentries WHERE parent = ?1 ORDER BY name")?;
            let rows = st.query_map(params![i(parent)], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
            })?;
            rows.collect()
        })
    }

    fn children_entries(&self, parent: u64) -> Result<Vec<(String, v1::Entry)>> {
        // One statement instead of a lookup per child: `ls -l` of a 10,000-entry directory
        // made 10,000 point queries to build its listing.
        let rows: Vec<(String, Vec<u8>)> = self.with(|c| {
            let mut st = c.prepare_cached(
                "SELECT d.name, e.rec FROM dentries d JOIN entries e ON e.ino = d.ino \
                 WHERE d.parent = ?1 ORDER BY d.name",
            )?;
            let rows = st.query_map(params![i(parent)], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })?;
        rows.into_iter()
            .map(|(n, b)| Ok((n, decode_entry(&b)?)))
            .collect()
    }

    fn names(&self, ino: u64) -> Result<Vec<(u64, String)>> {
        self.with(|c| {
            let mut st = c.prepare_cached(
                "SELECT parent, name FROM dentries WHERE ino = ?1 ORDER BY parent, name",
            )?;
            let rows = st.query_map(params![i(ino)], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?))
            })?;
            rows.collect()
        })
    }

    fn is_complete(&self, dir: u64) -> Result<bool> {
        self.with(|c| {
            c.prepare_cached("SELECT 1 FROM complete WHERE dir = ?1")?
                .query_row(params![i(dir)], |_| Ok(()))
                .optional()
                .map(|o| o.is_some())
        })
    }

    fn layout(&self, ino: u64, version: u64) -> Result<Option<v1::GetLayoutResponse>> {
        let rec: Option<Vec<u8>> = self.with(|c| {
            c.prepare_cached("SELECT rec FROM layouts WHERE ino = ?1 AND version = ?2")?
                .query_row(params![i(ino), i(version)], |r| r.get(0))
                .optional()
        })?;
        rec.map(|b| decode_layout(&b)).transpose()
    }

    fn kv(&self, key: &str) -> Result<Option<String>> {
        self.with(|c| {
            c.prepare_cached("SELECT value FROM kv WHERE key = ?1")?
                .query_row(params![key], |r| r.get(0))
                .optional()
        })
    }

    fn staged(&self) -> Result<Vec<StagedRec>> {
        self.with(|c| {
            let mut st = c.prepare_cached(
                "SELECT ino, path, size, mtime_ns, mode, uid, gid, created_ns, pending_parent, \
                 pending_name FROM staged ORDER BY ino",
            )?;
            let rows = st.query_map([], |r| {
                let parent: Option<i64> = r.get(8)?;
                let name: Option<String> = r.get(9)?;
                Ok(StagedRec {
                    ino: r.get::<_, i64>(0)? as u64,
                    path: r.get(1)?,
                    size: r.get::<_, i64>(2)? as u64,
                    mtime_ns: r.get(3)?,
                    mode: r.get(4)?,
                    uid: r.get(5)?,
                    gid: r.get(6)?,
                    created_ns: r.get(7)?,
                    pending: parent.zip(name).map(|(p, n)| (p as u64, n)),
                })
            })?;
            rows.collect()
        })
    }

    fn chunks(&self) -> Result<Vec<ChunkRec>> {
        self.with(|c| {
            let mut st = c.prepare_cached("SELECT id, size, last_used FROM chunks ORDER BY id")?;
            let rows = st.query_map([], |r| {
                Ok(ChunkRec {
                    id: r.get(0)?,
                    size: r.get::<_, i64>(1)? as u64,
                    last_used: r.get(2)?,
                })
            })?;
            rows.collect()
        })
    }
}

/// One transaction applying `batch`.
fn apply_tx(c: &mut Connection, batch: &[Mutation]) -> rusqlite::Result<()> {
    let tx = c.transaction()?;

    for m in batch {
        match m {
            Mutation::PutEntry(e) => {
                tx.prepare_cached("INSERT OR REPLACE INTO entries (ino, rec) VALUES (?1, ?2)")?
                    .execute(params![i(e.id), encode_entry(e)])?;
            }
            Mutation::RemoveEntry(ino) => {
                tx.prepare_cached("DELETE FROM entries WHERE ino = ?1")?
                    .execute(params![i(*ino)])?;
                tx.prepare_cached("DELETE FROM layouts WHERE ino = ?1")?
                    .execute(params![i(*ino)])?;
                tx.prepare_cached("DELETE FROM complete WHERE dir = ?1")?
                    .execute(params![i(*ino)])?;
                tx.prepare_cached("DELETE FROM dentries WHERE parent = ?1")?
                    .execute(params![i(*ino)])?;
            }
            Mutation::PutDentry { parent, name, ino } => {
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO dentries (parent, name, ino) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![i(*parent), name, i(*ino)])?;
            }
            Mutation::RemoveDentry { parent, name } => {
                tx.prepare_cached("DELETE FROM dentries WHERE parent = ?1 AND name = ?2")?
                    .execute(params![i(*parent), name])?;
            }
            Mutation::SetComplete { dir, complete } => {
                if *complete {
                    tx.prepare_cached("INSERT OR IGNORE INTO complete (dir) VALUES (?1)")?
                        .execute(params![i(*dir)])?;
                } else {
                    tx.prepare_cached("DELETE FROM complete WHERE dir = ?1")?
                        .execute(params![i(*dir)])?;
                }
            }
            Mutation::ReplaceChildren { dir, children } => {
                tx.prepare_cached("DELETE FROM dentries WHERE parent = ?1")?
                    .execute(params![i(*dir)])?;
                let mut st = tx.prepare_cached(
                    "INSERT OR REPLACE INTO dentries (parent, name, ino) VALUES (?1, ?2, ?3)",
                )?;
                for (n, ino) in children {
                    st.execute(params![i(*dir), n, i(*ino)])?;
                }
                tx.prepare_cached("INSERT OR IGNORE INTO complete (dir) VALUES (?1)")?
                    .execute(params![i(*dir)])?;
            }
            Mutation::PutLayout {
                ino,
                version,
                layout,
            } => {
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO layouts (ino, version, rec) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![i(*ino), i(*version), encode_layout(layout)])?;
            }
            Mutation::SetKv { key, value } => {
                tx.prepare_cached("INSERT OR REPLACE INTO kv (key, value) VALUES (?1, ?2)")?
                    .execute(params![key, value])?;
            }
            Mutation::PutStaged(r) => {
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO staged (ino, path, size, mtime_ns, mode, uid, gid, \
                     created_ns, pending_parent, pending_name) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )?
                .execute(params![
                    i(r.ino),
                    r.path,
                    i(r.size),
                    r.mtime_ns,
                    r.mode,
                    r.uid,
                    r.gid,
                    r.created_ns,
                    r.pending.as_ref().map(|p| i(p.0)),
                    r.pending.as_ref().map(|p| p.1.as_str())
                ])?;
            }
            Mutation::RemoveStaged(ino) => {
                tx.prepare_cached("DELETE FROM staged WHERE ino = ?1")?
                    .execute(params![i(*ino)])?;
            }
            Mutation::PutChunk(c) => {
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO chunks (id, size, last_used) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![c.id, i(c.size), c.last_used])?;
            }
            Mutation::RemoveChunk(id) => {
                tx.prepare_cached("DELETE FROM chunks WHERE id = ?1")?
                    .execute(params![id])?;
            }
            Mutation::ClearNamespace => {
                tx.execute_batch("DELETE FROM dentries; DELETE FROM complete;")?;
            }
        }
    }
    tx.commit()
}
