//! The namespace: buckets, directories, files and symlinks as a real tree.
//!
//! Storage (see `docs/adr/0001-namespace-paths.md`): an `inodes` table (attributes, current
//! version, owner) and a `dentries` table (parent id, name, inode id) unique per parent, so hard
//! links are several dentries of one inode and renaming a directory of any size is one row
//! update. Each dentry also has a `sort_key` (its name, plus `/` for directories): ordering
//! siblings by it and descending depth first yields keys in exactly the byte order S3 lists
//! them, so prefix listings are index range scans of the directories they touch.
//!
//! Buckets are the children of the root inode ([`ROOT_ID`]). Every inode records the owner of
//! its bucket; callers may touch only their own buckets unless admin.
//!
//! Reads go straight to the pool (or a snapshot for multi-statement reads); every mutation is
//! one serialized write transaction that also appends its journal events ([`crate::journal`]).

mod dirs;
mod list;
mod ops;

pub use list::{Listing, ReadDir};
pub(crate) use ops::{NewInode, emit, ensure_dirs, insert_dentry, insert_inode, touch_dir};
pub use ops::{Perms, Rename, SetAttr};

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use cyxcloud_proto::v1;
use prost::Message;

use crate::accounts::Caller;
use crate::db::{Arg, Conn, Db, Row, Tx, args};
use crate::error::{Error, Result};

pub use crate::db::migrations::ROOT_ID;

/// Names that cannot be buckets: they are the gateway's own HTTP routes.
pub const RESERVED_BUCKETS: &[&str] = &["health", "metrics", "ws", "api", "s3"];

/// Longest name of one path segment, in bytes.
pub const MAX_NAME_BYTES: usize = 255;
/// Longest key (path in a bucket), in bytes (S3's limit).
pub const MAX_PATH_BYTES: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    File = 1,
    Directory = 2,
    Symlink = 3,
    Bucket = 4,
}

impl Kind {
    pub fn from_i64(v: i64) -> Result<Kind> {
        Ok(match v {
            1 => Kind::File,
            2 => Kind::Directory,
            3 => Kind::Symlink,
            4 => Kind::Bucket,
            _ => return Err(Error::Corrupt(format!("unknown entry kind {v}"))),
        })
    }

    /// Directories and buckets hold children.
    pub fn is_dir(self) -> bool {
        matches!(self, Kind::Directory | Kind::Bucket)
    }

    fn proto(self) -> v1::EntryKind {
        match self {
            Kind::File => v1::EntryKind::File,
            Kind::Directory => v1::EntryKind::Directory,
            Kind::Symlink => v1::EntryKind::Symlink,
            Kind::Bucket => v1::EntryKind::Bucket,
        }
    }
}

/// User metadata and extended attributes, stored as one versioned (protobuf) column.
#[derive(Clone, PartialEq, Message)]
pub struct InodeMeta {
    #[prost(btree_map = "string, string", tag = "1")]
    pub user_metadata: BTreeMap<String, String>,
    #[prost(btree_map = "string, bytes", tag = "2")]
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

/// An inode's attributes.
#[derive(Debug, Clone, PartialEq)]
pub struct Inode {
    pub id: u64,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub atime_ns: i64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub btime_ns: i64,
    pub nlink: u32,
    pub version: u64,
    pub etag: String,
    pub content_type: String,
    pub meta: InodeMeta,
    pub symlink_target: String,
    pub owner_id: String,
    pub change_seq: u64,
    /// A directory that S3 lists as a `dir/` object (created explicitly, not as a parent).
    pub marker: bool,
    pub public_read: bool,
}

/// An inode seen through one of its names.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub inode: Inode,
    pub parent_id: u64,
    pub name: String,
    pub bucket: String,
    /// Path inside the bucket ("" for the bucket itself).
    pub path: String,
}

impl std::ops::Deref for Entry {
    type Target = Inode;
    fn deref(&self) -> &Inode {
        &self.inode
    }
}

impl From<&Entry> for v1::Entry {
    fn from(e: &Entry) -> Self {
        let i = &e.inode;
        v1::Entry {
            id: i.id,
            parent_id: e.parent_id,
            name: e.name.clone(),
            kind: i.kind.proto() as i32,
            mode: i.mode,
            uid: i.uid,
            gid: i.gid,
            size: i.size,
            atime_ns: i.atime_ns,
            mtime_ns: i.mtime_ns,
            ctime_ns: i.ctime_ns,
            btime_ns: i.btime_ns,
            nlink: i.nlink,
            version: i.version,
            etag: i.etag.clone(),
            content_type: i.content_type.clone(),
            user_metadata: i.meta.user_metadata.clone().into_iter().collect(),
            xattrs: i.meta.xattrs.clone().into_iter().collect(),
            symlink_target: i.symlink_target.clone(),
            bucket: e.bucket.clone(),
            path: e.path.clone(),
            change_seq: i.change_seq,
        }
    }
}

impl From<Entry> for v1::Entry {
    fn from(e: Entry) -> Self {
        v1::Entry::from(&e)
    }
}

/// Columns of `inodes i` read by [`inode_from_row`], in order.
pub(crate) const INODE_COLS: &str = "i.id, i.kind, i.mode, i.uid, i.gid, i.size, i.atime_ns, \
    i.mtime_ns, i.ctime_ns, i.btime_ns, i.nlink, i.version_id, i.etag, i.content_type, i.meta, \
    i.symlink_target, i.owner_id, i.change_seq, i.marker, i.public_read";
pub(crate) const N_INODE_COLS: usize = 20;

pub(crate) fn inode_from_row(r: &Row, o: usize) -> Result<Inode> {
    let meta = match r.opt_blob(o + 14)? {
        Some(b) if !b.is_empty() => InodeMeta::decode(b.as_slice())
            .map_err(|e| Error::Corrupt(format!("inode metadata: {e}")))?,
        _ => InodeMeta::default(),
    };
    Ok(Inode {
        id: r.u64(o)?,
        kind: Kind::from_i64(r.i64(o + 1)?)?,
        mode: r.u32(o + 2)?,
        uid: r.u32(o + 3)?,
        gid: r.u32(o + 4)?,
        size: r.u64(o + 5)?,
        atime_ns: r.i64(o + 6)?,
        mtime_ns: r.i64(o + 7)?,
        ctime_ns: r.i64(o + 8)?,
        btime_ns: r.i64(o + 9)?,
        nlink: r.u32(o + 10)?,
        version: r.u64(o + 11)?,
        etag: r.text(o + 12)?,
        content_type: r.text(o + 13)?,
        meta,
        symlink_target: r.text(o + 15)?,
        owner_id: r.text(o + 16)?,
        change_seq: r.u64(o + 17)?,
        marker: r.bool(o + 18)?,
        public_read: r.bool(o + 19)?,
    })
}

pub(crate) fn encode_meta(m: &InodeMeta) -> Option<Vec<u8>> {
    if m.user_metadata.is_empty() && m.xattrs.is_empty() {
        None
    } else {
        Some(m.encode_to_vec())
    }
}

/// Validates one path segment (a file, directory or symlink name).
pub fn check_name(name: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::InvalidName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty name");
    }
    if name == "." || name == ".." {
        return bad("'.' and '..' are not names");
    }
    if name.contains('/') {
        return bad("a name cannot contain '/'");
    }
    if name.contains('\0') {
        return bad("a name cannot contain NUL");
    }
    if name.len() > MAX_NAME_BYTES {
        return bad("longer than 255 bytes");
    }
    Ok(())
}

/// Validates a bucket name (S3 rules, minus the reserved route names).
pub fn check_bucket_name(name: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::InvalidName {
            name: name.to_string(),
            reason,
        })
    };
    if RESERVED_BUCKETS.contains(&name) {
        return bad("reserved for the gateway's own routes");
    }
    if !(3..=63).contains(&name.len()) {
        return bad("bucket names are 3 to 63 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        return bad("bucket names use lowercase letters, digits, '-' and '.'");
    }
    let first = name.as_bytes()[0];
    let last = name.as_bytes()[name.len() - 1];
    if !first.is_ascii_alphanumeric() || !last.is_ascii_alphanumeric() {
        return bad("bucket names start and end with a letter or digit");
    }
    if name.contains("..") {
        return bad("bucket names cannot contain '..'");
    }
    Ok(())
}

/// Splits a path inside a bucket into validated segments. One trailing `/` is allowed (S3
/// directory keys); empty, `.` and `..` segments are refused.
pub fn split_path(path: &str) -> Result<Vec<&str>> {
    if path.len() > MAX_PATH_BYTES {
        return Err(Error::InvalidName {
            name: path.chars().take(64).collect::<String>() + "...",
            reason: "a key is at most 1024 bytes",
        });
    }
    let p = path.strip_suffix('/').unwrap_or(path);
    if p.is_empty() {
        return if path.is_empty() {
            Ok(Vec::new())
        } else {
            Err(Error::InvalidName {
                name: path.into(),
                reason: "empty path segment",
            })
        };
    }
    let parts: Vec<&str> = p.split('/').collect();
    for s in &parts {
        check_name(s).map_err(|_| Error::InvalidName {
            name: path.to_string(),
            reason: if s.is_empty() {
                "empty path segment"
            } else if *s == "." || *s == ".." {
                "'.' and '..' segments are not allowed"
            } else if s.contains('\0') {
                "a key cannot contain NUL"
            } else {
                "a path segment is longer than 255 bytes"
            },
        })?;
    }
    Ok(parts)
}

/// The dentry sort key: directory keys end in `/` so that depth-first order is key order.
pub(crate) fn sort_key(name: &str, kind: Kind) -> String {
    if kind.is_dir() {
        format!("{name}/")
    } else {
        name.to_string()
    }
}

pub(crate) fn join(dir_path: &str, name: &str) -> String {
    if dir_path.is_empty() {
        name.to_string()
    } else {
        format!("{dir_path}/{name}")
    }
}

/// Refuses callers that do not own `inode` (admins may touch everything). The refusal names
/// nothing of the entry (no id, no name): the caller learns only that it is not theirs.
pub(crate) fn check_owner(caller: &Caller, inode: &Inode) -> Result<()> {
    if caller.admin || inode.owner_id == caller.user_id || inode.id == ROOT_ID {
        Ok(())
    } else {
        Err(Error::PermissionDenied(
            "this entry belongs to another user".into(),
        ))
    }
}

/// Something that runs queries: a pooled connection or a transaction.
pub(crate) trait Q {
    async fn q_opt(&mut self, sql: crate::db::Sql, args: Vec<Arg>) -> Result<Option<Row>>;
    async fn q_all(&mut self, sql: crate::db::Sql, args: Vec<Arg>) -> Result<Vec<Row>>;
}

impl Q for Tx {
    async fn q_opt(&mut self, sql: crate::db::Sql, args: Vec<Arg>) -> Result<Option<Row>> {
        self.opt(sql, args).await
    }
    async fn q_all(&mut self, sql: crate::db::Sql, args: Vec<Arg>) -> Result<Vec<Row>> {
        self.all(sql, args).await
    }
}

impl Q for Conn {
    async fn q_opt(&mut self, sql: crate::db::Sql, args: Vec<Arg>) -> Result<Option<Row>> {
        self.opt(sql, args).await
    }
    async fn q_all(&mut self, sql: crate::db::Sql, args: Vec<Arg>) -> Result<Vec<Row>> {
        self.all(sql, args).await
    }
}

pub(crate) async fn load_inode(q: &mut impl Q, id: u64) -> Result<Option<Inode>> {
    let sql = format!("SELECT {INODE_COLS} FROM inodes i WHERE i.id = $1");
    q.q_opt(sql.into(), args![id])
        .await?
        .map(|r| inode_from_row(&r, 0))
        .transpose()
}

/// The child `name` of `parent`, with its attributes.
pub(crate) async fn child(q: &mut impl Q, parent: u64, name: &str) -> Result<Option<Inode>> {
    let sql = format!(
        "SELECT {INODE_COLS} FROM dentries d JOIN inodes i ON i.id = d.inode_id \
         WHERE d.parent_id = $1 AND d.name = $2"
    );
    q.q_opt(sql.into(), args![parent, name])
        .await?
        .map(|r| inode_from_row(&r, 0))
        .transpose()
}

/// `(bucket, path)` of directory `dir` (a bucket or directory; root gives `("", "")`).
pub(crate) async fn dir_path(q: &mut impl Q, dir: u64) -> Result<(String, String)> {
    if dir == ROOT_ID {
        return Ok((String::new(), String::new()));
    }
    let rows = q
        .q_all(
            "WITH RECURSIVE up(parent_id, name, depth) AS ( \
               SELECT parent_id, name, CAST(0 AS BIGINT) FROM dentries WHERE inode_id = $1 \
               UNION ALL \
               SELECT d.parent_id, d.name, up.depth + 1 FROM dentries d \
                 JOIN up ON d.inode_id = up.parent_id \
             ) SELECT name FROM up ORDER BY depth DESC"
                .into(),
            args![dir],
        )
        .await?;
    if rows.is_empty() {
        return Err(Error::not_found(format!("directory {dir}")));
    }
    let mut names = rows.iter().map(|r| r.text(0));
    let bucket = names.next().transpose()?.unwrap_or_default();
    let rest: Vec<String> = names.collect::<Result<_>>()?;
    Ok((bucket, rest.join("/")))
}

/// One name of inode `id`: `(parent_id, name, bucket, path)`; the smallest `(parent, name)`
/// when the inode has several (hard links).
pub(crate) async fn locate(q: &mut impl Q, id: u64) -> Result<(u64, String, String, String)> {
    if id == ROOT_ID {
        return Ok((0, String::new(), String::new(), String::new()));
    }
    let rows = q
        .q_all(
            "WITH RECURSIVE up(leaf_parent, leaf_name, parent_id, name, depth) AS ( \
               SELECT parent_id, name, parent_id, name, CAST(0 AS BIGINT) FROM dentries \
                 WHERE inode_id = $1 \
               UNION ALL \
               SELECT up.leaf_parent, up.leaf_name, d.parent_id, d.name, up.depth + 1 \
                 FROM dentries d JOIN up ON d.inode_id = up.parent_id \
             ) SELECT leaf_parent, leaf_name, name FROM up \
               ORDER BY leaf_parent, leaf_name, depth DESC"
                .into(),
            args![id],
        )
        .await?;
    let Some(first) = rows.first() else {
        return Err(Error::not_found(format!("entry {id}")));
    };
    let (lp, ln) = (first.u64(0)?, first.text(1)?);
    let mut names = Vec::new();
    for r in &rows {
        if r.u64(0)? != lp || r.text(1)? != ln {
            break;
        }
        names.push(r.text(2)?);
    }
    let bucket = names.first().cloned().unwrap_or_default();
    let path = names[1..].join("/");
    Ok((lp, ln, bucket, path))
}

/// Builds the entry of inode `id` as seen through one of its names (the smallest
/// `(parent, name)` when it has several), in one query.
pub(crate) async fn entry_by_id(q: &mut impl Q, id: u64) -> Result<Entry> {
    if id == ROOT_ID {
        let inode = load_inode(q, id)
            .await?
            .ok_or_else(|| Error::Corrupt("the root inode is missing".into()))?;
        return Ok(Entry {
            inode,
            parent_id: 0,
            name: String::new(),
            bucket: String::new(),
            path: String::new(),
        });
    }
    let sql = format!(
        "WITH RECURSIVE up(leaf_parent, leaf_name, parent_id, name, depth) AS ( \
           SELECT parent_id, name, parent_id, name, CAST(0 AS BIGINT) FROM dentries \
             WHERE inode_id = $1 \
           UNION ALL \
           SELECT up.leaf_parent, up.leaf_name, d.parent_id, d.name, up.depth + 1 \
             FROM dentries d JOIN up ON d.inode_id = up.parent_id \
         ) SELECT {INODE_COLS}, up.leaf_parent, up.leaf_name, up.name \
           FROM inodes i JOIN up ON 1 = 1 WHERE i.id = $1 \
           ORDER BY up.leaf_parent, up.leaf_name, up.depth DESC"
    );
    let rows = q.q_all(sql.into(), args![id]).await?;
    let Some(first) = rows.first() else {
        return Err(Error::not_found(format!("entry {id}")));
    };
    let inode = inode_from_row(first, 0)?;
    let n = N_INODE_COLS;
    let (lp, ln) = (first.u64(n)?, first.text(n + 1)?);
    let mut names = Vec::new();
    for r in &rows {
        if r.u64(n)? != lp || r.text(n + 1)? != ln {
            break;
        }
        names.push(r.text(n + 2)?);
    }
    let bucket = names.first().cloned().unwrap_or_default();
    let path = names[1..].join("/");
    Ok(Entry {
        inode,
        parent_id: lp,
        name: ln,
        bucket,
        path,
    })
}

/// `JOIN dentries d1 … dn`, each segment `di` a child of `d(i-1)` named by parameter `$(i+1)`
/// (`d0` is the bucket, named by `$1`).
fn segment_joins(n: usize) -> String {
    (1..=n)
        .map(|i| {
            format!(
                "JOIN dentries d{i} ON d{i}.parent_id = d{p}.inode_id AND d{i}.name = ${a} ",
                p = i - 1,
                a = i + 1
            )
        })
        .collect()
}

/// Resolves `bucket/path` in one query (a join per segment). `None` when any segment is
/// missing or not a directory; use [`walk`] for a precise error.
pub(crate) async fn resolve_fast(
    q: &mut impl Q,
    bucket: &str,
    parts: &[&str],
) -> Result<Option<Entry>> {
    let n = parts.len();
    let mut sql = format!("SELECT {INODE_COLS}, d{n}.parent_id FROM dentries d0 ");
    sql.push_str(&segment_joins(n));
    sql.push_str(&format!(
        "JOIN inodes i ON i.id = d{n}.inode_id WHERE d0.parent_id = {ROOT_ID} AND d0.name = $1"
    ));
    let mut a: Vec<Arg> = vec![bucket.into()];
    a.extend(parts.iter().map(|p| Arg::from(*p)));
    let Some(r) = q.q_opt(sql.into(), a).await? else {
        return Ok(None);
    };
    let inode = inode_from_row(&r, 0)?;
    let parent_id = r.u64(N_INODE_COLS)?;
    Ok(Some(Entry {
        inode,
        parent_id,
        name: parts.last().copied().unwrap_or(bucket).to_string(),
        bucket: bucket.to_string(),
        path: parts.join("/"),
    }))
}

/// Resolves the directory that holds `bucket/parts` and the entry itself (when it exists) in
/// one query. `None` when the directory is missing or is not a directory; use [`walk`] for a
/// precise error.
pub(crate) async fn resolve_with_dir(
    q: &mut impl Q,
    bucket: &str,
    parts: &[&str],
) -> Result<Option<(Entry, Option<Entry>)>> {
    let Some((name, dirs)) = parts.split_last() else {
        return Ok(None);
    };
    let n = dirs.len();
    let parent_cols = INODE_COLS.replace("i.", "p.");
    let mut sql = format!("SELECT {parent_cols}, {INODE_COLS}, d{n}.parent_id FROM dentries d0 ");
    sql.push_str(&segment_joins(n));
    sql.push_str(&format!(
        "JOIN inodes p ON p.id = d{n}.inode_id \
         LEFT JOIN dentries dc ON dc.parent_id = p.id AND dc.name = ${a} \
         LEFT JOIN inodes i ON i.id = dc.inode_id \
         WHERE d0.parent_id = {ROOT_ID} AND d0.name = $1",
        a = n + 2
    ));
    let mut a: Vec<Arg> = vec![bucket.into()];
    a.extend(dirs.iter().map(|p| Arg::from(*p)));
    a.push(Arg::from(*name));
    let Some(r) = q.q_opt(sql.into(), a).await? else {
        return Ok(None);
    };
    let dir = Entry {
        inode: inode_from_row(&r, 0)?,
        parent_id: r.u64(2 * N_INODE_COLS)?,
        name: dirs.last().copied().unwrap_or(bucket).to_string(),
        bucket: bucket.to_string(),
        path: dirs.join("/"),
    };
    if !dir.kind.is_dir() {
        return Ok(None);
    }
    let child = match r.opt_i64(N_INODE_COLS)? {
        None => None,
        Some(_) => Some(Entry {
            inode: inode_from_row(&r, N_INODE_COLS)?,
            parent_id: dir.id,
            name: name.to_string(),
            bucket: bucket.to_string(),
            path: parts.join("/"),
        }),
    };
    Ok(Some((dir, child)))
}

/// Resolves `bucket/path` segment by segment with precise errors.
pub(crate) async fn walk(q: &mut impl Q, bucket: &str, parts: &[&str]) -> Result<Entry> {
    let b = child(q, ROOT_ID, bucket)
        .await?
        .ok_or_else(|| Error::not_found(format!("bucket {bucket:?}")))?;
    let mut cur = Entry {
        inode: b,
        parent_id: ROOT_ID,
        name: bucket.to_string(),
        bucket: bucket.to_string(),
        path: String::new(),
    };
    for (i, part) in parts.iter().enumerate() {
        if !cur.kind.is_dir() {
            return Err(Error::NotDirectory {
                what: format!("{bucket}/{}", cur.path),
            });
        }
        let next = child(q, cur.id, part)
            .await?
            .ok_or_else(|| Error::not_found(format!("{bucket}/{}", parts[..=i].join("/"))))?;
        cur = Entry {
            inode: next,
            parent_id: cur.id,
            name: part.to_string(),
            bucket: bucket.to_string(),
            path: parts[..=i].join("/"),
        };
    }
    Ok(cur)
}

/// Resolves `bucket/path` (fast path first, precise error on failure).
pub(crate) async fn resolve(q: &mut impl Q, bucket: &str, path: &str) -> Result<Entry> {
    let parts = split_path(path)?;
    if let Some(e) = resolve_fast(q, bucket, &parts).await? {
        return Ok(e);
    }
    walk(q, bucket, &parts).await
}

/// How a request names an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ref {
    Id(u64),
    Path { bucket: String, path: String },
}

impl Ref {
    pub fn from_proto(r: Option<&v1::EntryRef>) -> Result<Ref> {
        match r.and_then(|r| r.r#ref.as_ref()) {
            Some(v1::entry_ref::Ref::Id(id)) => Ok(Ref::Id(*id)),
            Some(v1::entry_ref::Ref::Path(p)) => Ok(Ref::Path {
                bucket: p.bucket.clone(),
                path: p.path.clone(),
            }),
            None => Err(Error::invalid("an entry id or a bucket + path is required")),
        }
    }
}

pub(crate) async fn resolve_ref(q: &mut impl Q, r: &Ref) -> Result<Entry> {
    match r {
        Ref::Id(id) => entry_by_id(q, *id).await,
        Ref::Path { bucket, path } => resolve(q, bucket, path).await,
    }
}

/// The namespace service over a store.
#[derive(Clone, Debug)]
pub struct Namespace {
    pub(crate) db: Db,
    dirs: Arc<dirs::DirPaths>,
}

/// The `dir_moves` counter, as a column of a read (see [`dirs`]).
const DIR_MOVES: &str = "(SELECT value FROM counters WHERE name = 'dir_moves')";

impl Namespace {
    pub fn new(db: Db) -> Self {
        Namespace {
            db,
            dirs: Arc::default(),
        }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Attributes of an entry.
    pub async fn getattr(&self, caller: &Caller, r: &Ref) -> Result<Entry> {
        let mut c = self.db.conn().await?;
        let e = match r {
            Ref::Id(id) if *id != ROOT_ID => self.entry_by_id(&mut c, *id).await?,
            r => resolve_ref(&mut c, r).await?,
        };
        check_owner(caller, &e)?;
        Ok(e)
    }

    /// [`entry_by_id`] outside a transaction: the inode and its one name in one query, the
    /// directory's path from the cache.
    async fn entry_by_id(&self, c: &mut Conn, id: u64) -> Result<Entry> {
        static SQL: LazyLock<String> = LazyLock::new(|| {
            format!(
                "SELECT {INODE_COLS}, d.parent_id, d.name, {DIR_MOVES} \
                 FROM inodes i JOIN dentries d ON d.inode_id = i.id WHERE i.id = $1"
            )
        });
        // One row per name (several for hard links); sorting them here, not in the query,
        // keeps its plan a pair of index lookups.
        let rows = c.all(SQL.as_str(), args![id]).await?;
        let n = N_INODE_COLS;
        let mut names = Vec::with_capacity(rows.len());
        for r in &rows {
            names.push((r.u64(n)?, r.text(n + 1)?, r));
        }
        let Some((parent, name, row)) = names
            .into_iter()
            .min_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)))
        else {
            return Err(Error::not_found(format!("entry {id}")));
        };
        let inode = inode_from_row(row, 0)?;
        let epoch = row.i64(n + 2)?;
        let (bucket, path) = self.path_in(c, epoch, parent, &name).await?;
        Ok(Entry {
            inode,
            parent_id: parent,
            name,
            bucket,
            path,
        })
    }

    /// `(bucket, path)` of the child `name` of directory `parent`, with `dir_moves` read as
    /// `epoch` in the statement that found the child.
    async fn path_in(
        &self,
        c: &mut Conn,
        epoch: i64,
        parent: u64,
        name: &str,
    ) -> Result<(String, String)> {
        if parent == ROOT_ID {
            return Ok((name.to_string(), String::new()));
        }
        let (bucket, dir) = match self.dirs.get(epoch, parent) {
            Some(p) => p,
            None => {
                let p = dir_path(c, parent).await?;
                self.dirs.put(epoch, parent, p.clone());
                p
            }
        };
        Ok((bucket, join(&dir, name)))
    }

    /// The child `name` of directory `parent`.
    pub async fn lookup(&self, caller: &Caller, parent: u64, name: &str) -> Result<Entry> {
        check_name(name)?;
        let mut c = self.db.conn().await?;
        static SQL: LazyLock<String> = LazyLock::new(|| {
            format!(
                "SELECT {INODE_COLS}, {DIR_MOVES} FROM dentries d \
                 JOIN inodes i ON i.id = d.inode_id WHERE d.parent_id = $1 AND d.name = $2"
            )
        });
        let Some(row) = c.opt(SQL.as_str(), args![parent, name]).await? else {
            // Distinguish a missing parent from a missing child.
            return match load_inode(&mut c, parent).await? {
                None => Err(Error::not_found(format!("directory {parent}"))),
                Some(p) if !p.kind.is_dir() => Err(Error::NotDirectory {
                    what: format!("entry {parent}"),
                }),
                Some(p) => {
                    check_owner(caller, &p)?;
                    Err(Error::not_found(format!("{name:?} in directory {parent}")))
                }
            };
        };
        let inode = inode_from_row(&row, 0)?;
        check_owner(caller, &inode)?;
        let epoch = row.i64(N_INODE_COLS)?;
        let (bucket, path) = self.path_in(&mut c, epoch, parent, name).await?;
        Ok(Entry {
            inode,
            parent_id: parent,
            name: name.to_string(),
            bucket,
            path,
        })
    }

    /// The target of a symlink.
    pub async fn readlink(&self, caller: &Caller, r: &Ref) -> Result<String> {
        let e = self.getattr(caller, r).await?;
        if e.kind != Kind::Symlink {
            return Err(Error::invalid(format!("{} is not a symlink", describe(&e))));
        }
        Ok(e.symlink_target.clone())
    }

    /// Buckets visible to the caller, by name.
    pub async fn list_buckets(&self, caller: &Caller) -> Result<Vec<Entry>> {
        let sql = format!(
            "SELECT {INODE_COLS}, d.name FROM dentries d JOIN inodes i ON i.id = d.inode_id \
             WHERE d.parent_id = {ROOT_ID} AND (i.owner_id = $1 OR $2 = 1) \
             AND d.name NOT LIKE '.%' ORDER BY d.name"
        );
        let rows = self
            .db
            .all(sql, args![caller.user_id.as_str(), caller.admin])
            .await?;
        rows.iter()
            .map(|r| {
                let name = r.text(N_INODE_COLS)?;
                Ok(Entry {
                    inode: inode_from_row(r, 0)?,
                    parent_id: ROOT_ID,
                    bucket: name.clone(),
                    name,
                    path: String::new(),
                })
            })
            .collect()
    }
}

/// `bucket/path` for messages.
pub(crate) fn describe(e: &Entry) -> String {
    if e.path.is_empty() {
        e.bucket.clone()
    } else {
        format!("{}/{}", e.bucket, e.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths_are_validated() {
        for bad in ["", ".", "..", "a/b", "a\0b"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        check_name("ok name.txt").unwrap();
        assert_eq!(split_path("a/b/c").unwrap(), ["a", "b", "c"]);
        assert_eq!(split_path("a/b/").unwrap(), ["a", "b"]);
        assert!(split_path("").unwrap().is_empty());
        for bad in ["a//b", "/a", "a/./b", "a/../b", "a\0", "//", "/"] {
            assert!(split_path(bad).is_err(), "{bad:?}");
        }
        for bad in [
            "health", "metrics", "ws", "api", "s3", "ab", "Upper", "-ab", "a..b",
        ] {
            assert!(check_bucket_name(bad).is_err(), "{bad:?}");
        }
        check_bucket_name("my-bucket.1").unwrap();
    }

    #[test]
    fn sort_keys_give_s3_order() {
        // Depth-first by sort key equals byte order of full keys.
        let mut keys = [
            ("a", Kind::Directory),
            ("a.txt", Kind::File),
            ("a-b", Kind::File),
            ("ab", Kind::Directory),
        ];
        keys.sort_by_key(|(n, k)| sort_key(n, *k));
        let order: Vec<_> = keys.iter().map(|(n, _)| *n).collect();
        assert_eq!(order, ["a-b", "a.txt", "a", "ab"]);
    }
}
