//! Namespace mutations. Each is one serialized write transaction that validates everything
//! first (so a refused operation changes nothing), applies the change, and appends its journal
//! events.

use std::sync::LazyLock;

use cyxcloud_proto::v1;

use super::{
    Entry, INODE_COLS, Inode, Kind, N_INODE_COLS, Namespace, ROOT_ID, Ref, check_bucket_name,
    check_name, check_owner, child, describe, dir_path, encode_meta, inode_from_row, join,
    load_inode, locate, resolve_ref, sort_key, split_path, walk,
};
use crate::accounts::Caller;
use crate::db::{Tx, args, now_ns, write_tx};
use crate::error::{Error, Result};
use crate::journal;

/// Attribute changes of [`Namespace::setattr`] (`None` = unchanged).
#[derive(Debug, Clone, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime_ns: Option<i64>,
    pub mtime_ns: Option<i64>,
    pub content_type: Option<String>,
}

/// Permission bits and owner of a new entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Perms {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// `rename(2)` flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Rename {
    #[default]
    Replace,
    NoReplace,
    Exchange,
}

/// Attributes of a new inode.
pub(crate) struct NewInode<'a> {
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub symlink_target: &'a str,
    pub owner_id: &'a str,
    pub marker: bool,
    pub public_read: bool,
}

/// Inserts a new inode (the next id of the sequence) with change sequence `seq`.
pub(crate) async fn insert_inode(tx: &mut Tx, n: &NewInode<'_>, now: i64, seq: u64) -> Result<u64> {
    let nlink = if n.kind.is_dir() { 2 } else { 1 };
    tx.one(
        "INSERT INTO inodes (kind, mode, uid, gid, size, atime_ns, mtime_ns, ctime_ns, btime_ns, \
         nlink, version_id, etag, content_type, meta, symlink_target, owner_id, change_seq, \
         marker, public_read) VALUES ($1, $2, $3, $4, $5, $6, $6, $6, $6, $7, 0, '', '', NULL, \
         $8, $9, $10, $11, $12) RETURNING id",
        args![
            n.kind as i64,
            n.mode,
            n.uid,
            n.gid,
            n.size,
            now,
            nlink,
            n.symlink_target,
            n.owner_id,
            seq,
            n.marker,
            n.public_read
        ],
    )
    .await?
    .u64(0)
}

pub(crate) async fn insert_dentry(
    tx: &mut Tx,
    parent: u64,
    name: &str,
    inode: u64,
    kind: Kind,
) -> Result<()> {
    tx.exec(
        "INSERT INTO dentries (parent_id, name, sort_key, inode_id, kind) VALUES ($1, $2, $3, $4, $5)",
        args![parent, name, sort_key(name, kind), inode, kind as i64],
    )
    .await?;
    Ok(())
}

/// A directory's contents changed: new mtime/ctime and `nlink_delta` subdirectories.
pub(crate) async fn touch_dir(tx: &mut Tx, dir: u64, now: i64, nlink_delta: i64) -> Result<()> {
    tx.exec(
        "UPDATE inodes SET mtime_ns = $2, ctime_ns = $2, nlink = nlink + $3 WHERE id = $1",
        args![dir, now, nlink_delta],
    )
    .await?;
    tx.touch(dir);
    Ok(())
}

/// Records one journal event for `entry` (state after the change) with sequence `seq`.
pub(crate) async fn emit(
    tx: &mut Tx,
    seq: u64,
    kind: v1::ChangeKind,
    entry: &Entry,
    old: Option<(u64, String)>,
) -> Result<()> {
    let (old_parent_id, old_path) = old.unwrap_or_default();
    if entry.nlink > 1 && !entry.kind.is_dir() {
        // Every directory listing this inode (hard links) shows its new attributes.
        let parents = tx
            .all(
                "SELECT parent_id FROM dentries WHERE inode_id = $1",
                args![entry.id],
            )
            .await?;
        for p in &parents {
            tx.touch(p.u64(0)?);
        }
    }
    let ev = v1::ChangeEvent {
        seq,
        kind: kind as i32,
        time_ns: now_ns(),
        entry_id: entry.id,
        bucket: entry.bucket.clone(),
        path: entry.path.clone(),
        old_parent_id,
        old_path,
        entry: (kind != v1::ChangeKind::Delete).then(|| v1::Entry::from(entry)),
        node_id: String::new(),
        node_state: 0,
        repair: None,
    };
    journal::record(tx, ev, &entry.owner_id).await
}

/// Loads a directory that will receive or lose children, checking kind and ownership.
async fn load_dir(tx: &mut Tx, caller: &Caller, dir: u64) -> Result<Inode> {
    let d = load_inode(tx, dir)
        .await?
        .ok_or_else(|| Error::not_found(format!("directory {dir}")))?;
    if !d.kind.is_dir() {
        return Err(Error::NotDirectory {
            what: format!("entry {dir}"),
        });
    }
    check_owner(caller, &d)?;
    Ok(d)
}

/// An entry at `(parent, name)` whose parent has path `dir`.
fn at(inode: Inode, parent: u64, name: &str, dir: &(String, String)) -> Entry {
    let (bucket, path) = if parent == ROOT_ID {
        (name.to_string(), String::new())
    } else {
        (dir.0.clone(), join(&dir.1, name))
    };
    Entry {
        inode,
        parent_id: parent,
        name: name.to_string(),
        bucket,
        path,
    }
}

async fn reload(tx: &mut Tx, id: u64) -> Result<Inode> {
    load_inode(tx, id)
        .await?
        .ok_or_else(|| Error::Internal(format!("inode {id} vanished inside its transaction")))
}

/// Removes one name of an inode; frees the inode (and releases its data) at the last name.
/// `seq` is the journal event of the removal: an inode that keeps other names records it as
/// its change sequence, so a client that caches by change sequence can tell the state after
/// the removal from the one before (same attributes but the link count).
async fn drop_name(
    tx: &mut Tx,
    parent: u64,
    name: &str,
    inode: &Inode,
    now: i64,
    seq: u64,
) -> Result<()> {
    tx.exec(
        "DELETE FROM dentries WHERE parent_id = $1 AND name = $2",
        args![parent, name],
    )
    .await?;
    tx.touch(inode.id);
    if inode.kind.is_dir() || inode.nlink <= 1 {
        free_inode(tx, inode).await
    } else {
        tx.exec(
            "UPDATE inodes SET nlink = nlink - 1, ctime_ns = $2, change_seq = $3 WHERE id = $1",
            args![inode.id, now, seq],
        )
        .await?;
        Ok(())
    }
}

/// Deletes an inode with no names left, releasing its versions' chunks and its owner's usage.
pub(crate) async fn free_inode(tx: &mut Tx, inode: &Inode) -> Result<()> {
    if inode.kind == Kind::File {
        crate::layout::drop_versions(tx, inode.id).await?;
        crate::accounts::add_usage(tx, &inode.owner_id, -(inode.size as i64)).await?;
    }
    tx.exec("DELETE FROM inodes WHERE id = $1", args![inode.id])
        .await?;
    Ok(())
}

async fn is_empty_dir(tx: &mut Tx, dir: u64) -> Result<bool> {
    Ok(tx
        .opt(
            "SELECT 1 FROM dentries WHERE parent_id = $1 LIMIT 1",
            args![dir],
        )
        .await?
        .is_none())
}

/// Ids of `dir` and all its ancestors up to the root.
async fn ancestors(tx: &mut Tx, dir: u64) -> Result<Vec<u64>> {
    let rows = tx
        .all(
            "WITH RECURSIVE up(id) AS ( \
               SELECT CAST($1 AS BIGINT) \
               UNION ALL \
               SELECT d.parent_id FROM dentries d JOIN up ON d.inode_id = up.id \
             ) SELECT id FROM up",
            args![dir],
        )
        .await?;
    rows.iter().map(|r| r.u64(0)).collect()
}

impl Namespace {
    pub async fn create_bucket(
        &self,
        caller: &Caller,
        name: &str,
        public_read: bool,
    ) -> Result<Entry> {
        check_bucket_name(name)?;
        let e = write_tx!(self.db, tx => {
            if let Some(existing) = child(&mut tx, ROOT_ID, name).await? {
                return Err(Error::AlreadyExists {
                    what: if existing.owner_id == caller.user_id {
                        format!("bucket {name:?} (owned by you)")
                    } else {
                        format!("bucket {name:?}")
                    },
                });
            }
            let now = now_ns();
            let seq = journal::next_seq(&mut tx).await?;
            let n = NewInode {
                kind: Kind::Bucket,
                mode: 0o755,
                uid: 0,
                gid: 0,
                size: 0,
                symlink_target: "",
                owner_id: &caller.user_id,
                marker: false,
                public_read,
            };
            let id = insert_inode(&mut tx, &n, now, seq).await?;
            insert_dentry(&mut tx, ROOT_ID, name, id, Kind::Bucket).await?;
            touch_dir(&mut tx, ROOT_ID, now, 1).await?;
            let e = at(reload(&mut tx, id).await?, ROOT_ID, name, &Default::default());
            emit(&mut tx, seq, v1::ChangeKind::Create, &e, None).await?;
            Ok(e)
        });
        Ok(e)
    }

    pub async fn delete_bucket(&self, caller: &Caller, name: &str) -> Result<()> {
        write_tx!(self.db, tx => {
            let b = child(&mut tx, ROOT_ID, name)
                .await?
                .ok_or_else(|| Error::not_found(format!("bucket {name:?}")))?;
            check_owner(caller, &b)?;
            if !is_empty_dir(&mut tx, b.id).await? {
                return Err(Error::NotEmpty { path: name.to_string() });
            }
            let now = now_ns();
            let seq = journal::next_seq(&mut tx).await?;
            let e = at(b.clone(), ROOT_ID, name, &Default::default());
            drop_name(&mut tx, ROOT_ID, name, &b, now, seq).await?;
            touch_dir(&mut tx, ROOT_ID, now, -1).await?;
            emit(&mut tx, seq, v1::ChangeKind::Delete, &e, None).await?;
            Ok(())
        });
        Ok(())
    }

    /// `mkdir(2)`: at the root this creates a bucket.
    pub async fn mkdir(
        &self,
        caller: &Caller,
        parent: u64,
        name: &str,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<Entry> {
        if parent == ROOT_ID {
            return self.create_bucket(caller, name, false).await;
        }
        check_name(name)?;
        let e = write_tx!(self.db, tx => {
            let p = load_dir(&mut tx, caller, parent).await?;
            if child(&mut tx, parent, name).await?.is_some() {
                return Err(Error::exists(format!("{name:?} in directory {parent}")));
            }
            let dir = dir_path(&mut tx, parent).await?;
            let now = now_ns();
            let seq = journal::next_seq(&mut tx).await?;
            let n = NewInode {
                kind: Kind::Directory,
                mode: if mode == 0 { 0o755 } else { mode & 0o7777 },
                uid,
                gid,
                size: 0,
                symlink_target: "",
                owner_id: &p.owner_id,
                marker: true,
                public_read: false,
            };
            let id = insert_inode(&mut tx, &n, now, seq).await?;
            insert_dentry(&mut tx, parent, name, id, Kind::Directory).await?;
            touch_dir(&mut tx, parent, now, 1).await?;
            let e = at(reload(&mut tx, id).await?, parent, name, &dir);
            emit(&mut tx, seq, v1::ChangeKind::Create, &e, None).await?;
            Ok(e)
        });
        Ok(e)
    }

    /// Creates directory `bucket/path` and any missing parents. With `exist_ok`, an existing
    /// directory is returned (and marked as an explicit S3 directory) instead of refused.
    pub async fn mkdir_path(
        &self,
        caller: &Caller,
        bucket: &str,
        path: &str,
        perms: Perms,
        exist_ok: bool,
    ) -> Result<Entry> {
        let Perms { mode, uid, gid } = perms;
        let parts: Vec<String> = split_path(path)?.into_iter().map(String::from).collect();
        if parts.is_empty() {
            return Err(Error::invalid(
                "a directory path inside the bucket is required",
            ));
        }
        let e = write_tx!(self.db, tx => {
            let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
            let b = walk(&mut tx, bucket, &[]).await?;
            check_owner(caller, &b)?;
            let attrs = (if mode == 0 { 0o755 } else { mode & 0o7777 }, uid, gid);
            let (parent, _) = ensure_dirs(&mut tx, b, &refs[..refs.len() - 1], attrs).await?;
            let name = refs[refs.len() - 1];
            if let Some(existing) = child(&mut tx, parent.id, name).await? {
                if !exist_ok || !existing.kind.is_dir() {
                    return Err(Error::exists(format!("{bucket}/{}", refs.join("/"))));
                }
                let e = at(existing, parent.id, name, &(parent.bucket.clone(), parent.path.clone()));
                if !e.marker {
                    let seq = journal::next_seq(&mut tx).await?;
                    tx.exec(
                        "UPDATE inodes SET marker = 1, change_seq = $2 WHERE id = $1",
                        args![e.id, seq],
                    )
                    .await?;
                    let e = at(reload(&mut tx, e.id).await?, parent.id, name, &(parent.bucket.clone(), parent.path.clone()));
                    emit(&mut tx, seq, v1::ChangeKind::Update, &e, None).await?;
                    return Ok(e);
                }
                return Ok(e);
            }
            let e = create_dir(&mut tx, &parent, name, attrs, true).await?;
            Ok(e)
        });
        Ok(e)
    }

    /// `rmdir(2)`: only empty directories; at the root this deletes a bucket.
    pub async fn rmdir(&self, caller: &Caller, parent: u64, name: &str) -> Result<()> {
        if parent == ROOT_ID {
            return self.delete_bucket(caller, name).await;
        }
        check_name(name)?;
        write_tx!(self.db, tx => {
            load_dir(&mut tx, caller, parent).await?;
            let d = child(&mut tx, parent, name)
                .await?
                .ok_or_else(|| Error::not_found(format!("{name:?} in directory {parent}")))?;
            remove_dir(&mut tx, parent, name, d).await
        });
        Ok(())
    }

    pub async fn rmdir_path(&self, caller: &Caller, bucket: &str, path: &str) -> Result<()> {
        let parts: Vec<String> = split_path(path)?.into_iter().map(String::from).collect();
        if parts.is_empty() {
            return self.delete_bucket(caller, bucket).await;
        }
        write_tx!(self.db, tx => {
            let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
            let e = walk(&mut tx, bucket, &refs).await?;
            check_owner(caller, &e)?;
            let (parent, name) = (e.parent_id, e.name.clone());
            remove_dir(&mut tx, parent, &name, e.inode).await
        });
        Ok(())
    }

    /// `unlink(2)`: removes a file or symlink name.
    pub async fn unlink(&self, caller: &Caller, parent: u64, name: &str) -> Result<()> {
        check_name(name)?;
        write_tx!(self.db, tx => {
            load_dir(&mut tx, caller, parent).await?;
            let f = child(&mut tx, parent, name)
                .await?
                .ok_or_else(|| Error::not_found(format!("{name:?} in directory {parent}")))?;
            let dir = dir_path(&mut tx, parent).await?;
            remove_file(&mut tx, at(f, parent, name, &dir), false).await
        });
        Ok(())
    }

    /// Removes `bucket/path` (a file or symlink). With `prune`, parent directories that were
    /// created implicitly (not S3 `dir/` markers) and are left empty are removed too, as S3
    /// clients expect prefixes to vanish with their last key.
    pub async fn unlink_path(
        &self,
        caller: &Caller,
        bucket: &str,
        path: &str,
        prune: bool,
    ) -> Result<()> {
        let parts: Vec<String> = split_path(path)?.into_iter().map(String::from).collect();
        if parts.is_empty() {
            return Err(Error::invalid("a file path inside the bucket is required"));
        }
        write_tx!(self.db, tx => {
            let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
            let e = walk(&mut tx, bucket, &refs).await?;
            check_owner(caller, &e)?;
            remove_file(&mut tx, e, prune).await
        });
        Ok(())
    }

    /// `symlink(2)`.
    pub async fn symlink(
        &self,
        caller: &Caller,
        parent: u64,
        name: &str,
        target: &str,
        uid: u32,
        gid: u32,
    ) -> Result<Entry> {
        check_name(name)?;
        if target.is_empty() || target.contains('\0') || target.len() > 4096 {
            return Err(Error::invalid(
                "a symlink target is 1 to 4096 bytes without NUL",
            ));
        }
        if parent == ROOT_ID {
            return Err(Error::NotSupported("only buckets live at the root".into()));
        }
        let e = write_tx!(self.db, tx => {
            let p = load_dir(&mut tx, caller, parent).await?;
            if child(&mut tx, parent, name).await?.is_some() {
                return Err(Error::exists(format!("{name:?} in directory {parent}")));
            }
            let dir = dir_path(&mut tx, parent).await?;
            let now = now_ns();
            let seq = journal::next_seq(&mut tx).await?;
            let n = NewInode {
                kind: Kind::Symlink,
                mode: 0o777,
                uid,
                gid,
                size: target.len() as u64,
                symlink_target: target,
                owner_id: &p.owner_id,
                marker: false,
                public_read: false,
            };
            let id = insert_inode(&mut tx, &n, now, seq).await?;
            insert_dentry(&mut tx, parent, name, id, Kind::Symlink).await?;
            touch_dir(&mut tx, parent, now, 0).await?;
            let e = at(reload(&mut tx, id).await?, parent, name, &dir);
            emit(&mut tx, seq, v1::ChangeKind::Create, &e, None).await?;
            Ok(e)
        });
        Ok(e)
    }

    /// `link(2)`: another name for a file or symlink, in the same bucket.
    pub async fn link(
        &self,
        caller: &Caller,
        id: u64,
        new_parent: u64,
        new_name: &str,
    ) -> Result<Entry> {
        check_name(new_name)?;
        if new_parent == ROOT_ID {
            return Err(Error::NotSupported("only buckets live at the root".into()));
        }
        let e = write_tx!(self.db, tx => {
            let src = load_inode(&mut tx, id)
                .await?
                .ok_or_else(|| Error::not_found(format!("entry {id}")))?;
            check_owner(caller, &src)?;
            if src.kind.is_dir() {
                return Err(Error::PermissionDenied(
                    "hard links to directories are not allowed".into(),
                ));
            }
            load_dir(&mut tx, caller, new_parent).await?;
            let (_, _, src_bucket, _) = locate(&mut tx, id).await?;
            let dir = dir_path(&mut tx, new_parent).await?;
            if dir.0 != src_bucket {
                return Err(Error::NotSupported("hard links across buckets".into()));
            }
            if child(&mut tx, new_parent, new_name).await?.is_some() {
                return Err(Error::exists(format!("{new_name:?} in directory {new_parent}")));
            }
            let now = now_ns();
            let seq = journal::next_seq(&mut tx).await?;
            insert_dentry(&mut tx, new_parent, new_name, id, src.kind).await?;
            tx.exec(
                "UPDATE inodes SET nlink = nlink + 1, ctime_ns = $2, change_seq = $3 WHERE id = $1",
                args![id, now, seq],
            )
            .await?;
            touch_dir(&mut tx, new_parent, now, 0).await?;
            let e = at(reload(&mut tx, id).await?, new_parent, new_name, &dir);
            emit(&mut tx, seq, v1::ChangeKind::Create, &e, None).await?;
            Ok(e)
        });
        Ok(e)
    }

    /// `rename(2)` with `RENAME_NOREPLACE` / `RENAME_EXCHANGE`, atomic.
    pub async fn rename(
        &self,
        caller: &Caller,
        parent: u64,
        name: &str,
        new_parent: u64,
        new_name: &str,
        flags: Rename,
    ) -> Result<()> {
        check_name(name)?;
        check_name(new_name)?;
        if parent == ROOT_ID || new_parent == ROOT_ID {
            return Err(Error::NotSupported(
                "buckets cannot be renamed or moved".into(),
            ));
        }
        write_tx!(self.db, tx => rename_in(&mut tx, caller, parent, name, new_parent, new_name, flags).await);
        Ok(())
    }

    /// `setattr`: mode, owner, times, content type, and size (truncate or sparse extend).
    pub async fn setattr(&self, caller: &Caller, r: &Ref, a: &SetAttr) -> Result<Entry> {
        let e = write_tx!(self.db, tx => {
            let e = resolve_ref(&mut tx, r).await?;
            check_owner(caller, &e)?;
            if e.id == ROOT_ID {
                return Err(Error::PermissionDenied("the root cannot be changed".into()));
            }
            let now = now_ns();
            let seq = journal::next_seq(&mut tx).await?;
            if let Some(size) = a.size
                && size != e.size
            {
                if e.kind != Kind::File {
                    return Err(Error::IsDirectory { what: describe(&e) });
                }
                crate::layout::resize(&mut tx, &e.inode, size, now).await?;
            }
            tx.exec(
                "UPDATE inodes SET mode = $2, uid = $3, gid = $4, atime_ns = $5, mtime_ns = $6, \
                 content_type = $7, ctime_ns = $8, change_seq = $9 WHERE id = $1",
                args![
                    e.id,
                    a.mode.map_or(e.mode, |m| m & 0o7777),
                    a.uid.unwrap_or(e.uid),
                    a.gid.unwrap_or(e.gid),
                    a.atime_ns.unwrap_or(e.atime_ns),
                    a.mtime_ns.unwrap_or(if a.size.is_some_and(|s| s != e.size) { now } else { e.mtime_ns }),
                    a.content_type.clone().unwrap_or_else(|| e.content_type.clone()),
                    now,
                    seq
                ],
            )
            .await?;
            let e = Entry { inode: reload(&mut tx, e.id).await?, ..e };
            emit(&mut tx, seq, v1::ChangeKind::Update, &e, None).await?;
            Ok(e)
        });
        Ok(e)
    }

    /// Sets an extended attribute (`flags`: 1 = must not exist, 2 = must exist).
    pub async fn set_xattr(
        &self,
        caller: &Caller,
        r: &Ref,
        name: &str,
        value: &[u8],
        flags: u32,
    ) -> Result<()> {
        check_xattr_name(name)?;
        if value.len() > 64 * 1024 {
            return Err(Error::invalid(
                "an extended attribute value is at most 64 KiB",
            ));
        }
        write_tx!(self.db, tx => {
            let e = resolve_ref(&mut tx, r).await?;
            check_owner(caller, &e)?;
            let exists = e.meta.xattrs.contains_key(name);
            if flags & 1 != 0 && exists {
                return Err(Error::exists(format!("extended attribute {name:?}")));
            }
            if flags & 2 != 0 && !exists {
                return Err(Error::not_found(format!("extended attribute {name:?}")));
            }
            let mut meta = e.meta.clone();
            meta.xattrs.insert(name.to_string(), value.to_vec());
            update_meta(&mut tx, e, meta).await
        });
        Ok(())
    }

    pub async fn remove_xattr(&self, caller: &Caller, r: &Ref, name: &str) -> Result<()> {
        check_xattr_name(name)?;
        write_tx!(self.db, tx => {
            let e = resolve_ref(&mut tx, r).await?;
            check_owner(caller, &e)?;
            let mut meta = e.meta.clone();
            if meta.xattrs.remove(name).is_none() {
                return Err(Error::not_found(format!("extended attribute {name:?}")));
            }
            update_meta(&mut tx, e, meta).await
        });
        Ok(())
    }

    /// Replaces the S3 user metadata of an entry.
    pub async fn set_user_metadata(
        &self,
        caller: &Caller,
        r: &Ref,
        user_metadata: std::collections::BTreeMap<String, String>,
    ) -> Result<()> {
        write_tx!(self.db, tx => {
            let e = resolve_ref(&mut tx, r).await?;
            check_owner(caller, &e)?;
            let mut meta = e.meta.clone();
            meta.user_metadata = user_metadata.clone();
            update_meta(&mut tx, e, meta).await
        });
        Ok(())
    }
}

fn check_xattr_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 255 || name.contains('\0') {
        return Err(Error::InvalidName {
            name: name.to_string(),
            reason: "an attribute name is 1 to 255 bytes without NUL",
        });
    }
    Ok(())
}

async fn update_meta(tx: &mut Tx, e: Entry, meta: super::InodeMeta) -> Result<()> {
    let now = now_ns();
    let seq = journal::next_seq(tx).await?;
    tx.exec(
        "UPDATE inodes SET meta = $2, ctime_ns = $3, change_seq = $4 WHERE id = $1",
        args![e.id, encode_meta(&meta), now, seq],
    )
    .await?;
    let e = Entry {
        inode: reload(tx, e.id).await?,
        ..e
    };
    emit(tx, seq, v1::ChangeKind::Update, &e, None).await
}

/// Makes sure `parts` exist as directories under `start`, creating missing ones as implicit
/// (non-marker) directories. Returns the last directory and whether all existed.
pub(crate) async fn ensure_dirs(
    tx: &mut Tx,
    start: Entry,
    parts: &[&str],
    attrs: (u32, u32, u32),
) -> Result<(Entry, bool)> {
    let mut cur = start;
    let mut all_existed = true;
    for part in parts {
        match child(tx, cur.id, part).await? {
            Some(c) if c.kind.is_dir() => {
                let loc = (cur.bucket.clone(), cur.path.clone());
                cur = at(c, cur.id, part, &loc);
            }
            Some(_) => {
                return Err(Error::NotDirectory {
                    what: format!("{}/{}", cur.bucket, join(&cur.path, part)),
                });
            }
            None => {
                all_existed = false;
                cur = create_dir(tx, &cur, part, attrs, false).await?;
            }
        }
    }
    Ok((cur, all_existed))
}

async fn create_dir(
    tx: &mut Tx,
    parent: &Entry,
    name: &str,
    (mode, uid, gid): (u32, u32, u32),
    marker: bool,
) -> Result<Entry> {
    let now = now_ns();
    let seq = journal::next_seq(tx).await?;
    let n = NewInode {
        kind: Kind::Directory,
        mode,
        uid,
        gid,
        size: 0,
        symlink_target: "",
        owner_id: &parent.owner_id,
        marker,
        public_read: false,
    };
    let id = insert_inode(tx, &n, now, seq).await?;
    insert_dentry(tx, parent.id, name, id, Kind::Directory).await?;
    touch_dir(tx, parent.id, now, 1).await?;
    let loc = if parent.id == ROOT_ID {
        (String::new(), String::new())
    } else {
        (parent.bucket.clone(), parent.path.clone())
    };
    let e = at(reload(tx, id).await?, parent.id, name, &loc);
    emit(tx, seq, v1::ChangeKind::Create, &e, None).await?;
    Ok(e)
}

async fn remove_dir(tx: &mut Tx, parent: u64, name: &str, d: Inode) -> Result<()> {
    if d.kind == Kind::Bucket {
        return Err(Error::NotSupported(
            "use DeleteBucket to remove a bucket".into(),
        ));
    }
    if !d.kind.is_dir() {
        return Err(Error::NotDirectory {
            what: format!("{name:?} in directory {parent}"),
        });
    }
    let dir = dir_path(tx, parent).await?;
    let e = at(d, parent, name, &dir);
    if !is_empty_dir(tx, e.id).await? {
        return Err(Error::NotEmpty { path: describe(&e) });
    }
    let now = now_ns();
    let seq = journal::next_seq(tx).await?;
    drop_name(tx, parent, name, &e.inode, now, seq).await?;
    touch_dir(tx, parent, now, -1).await?;
    emit(tx, seq, v1::ChangeKind::Delete, &e, None).await
}

async fn remove_file(tx: &mut Tx, e: Entry, prune: bool) -> Result<()> {
    if e.kind.is_dir() {
        return Err(Error::IsDirectory { what: describe(&e) });
    }
    let now = now_ns();
    let seq = journal::next_seq(tx).await?;
    drop_name(tx, e.parent_id, &e.name, &e.inode, now, seq).await?;
    touch_dir(tx, e.parent_id, now, 0).await?;
    emit(tx, seq, v1::ChangeKind::Delete, &e, None).await?;
    if prune {
        // Walk up removing implicit directories left empty.
        let mut dir_id = e.parent_id;
        while dir_id != ROOT_ID {
            let Some(d) = load_inode(tx, dir_id).await? else {
                break;
            };
            if d.kind != Kind::Directory || d.marker || !is_empty_dir(tx, d.id).await? {
                break;
            }
            let (parent, name, bucket, path) = locate(tx, d.id).await?;
            let de = Entry {
                inode: d,
                parent_id: parent,
                name: name.clone(),
                bucket,
                path,
            };
            let seq = journal::next_seq(tx).await?;
            drop_name(tx, parent, &name, &de.inode, now, seq).await?;
            touch_dir(tx, parent, now, -1).await?;
            emit(tx, seq, v1::ChangeKind::Delete, &de, None).await?;
            dir_id = parent;
        }
    }
    Ok(())
}

async fn rename_in(
    tx: &mut Tx,
    caller: &Caller,
    parent: u64,
    name: &str,
    new_parent: u64,
    new_name: &str,
    flags: Rename,
) -> Result<()> {
    load_dir(tx, caller, parent).await?;
    if new_parent != parent {
        load_dir(tx, caller, new_parent).await?;
    }
    let src_dir = dir_path(tx, parent).await?;
    let dst_dir = if new_parent == parent {
        src_dir.clone()
    } else {
        dir_path(tx, new_parent).await?
    };
    if src_dir.0 != dst_dir.0 {
        return Err(Error::NotSupported(format!(
            "rename across buckets ({} to {})",
            src_dir.0, dst_dir.0
        )));
    }
    let (src, dst) = two_children(tx, (parent, name), (new_parent, new_name)).await?;
    let src =
        src.ok_or_else(|| Error::not_found(format!("{}/{}", src_dir.0, join(&src_dir.1, name))))?;
    let src = at(src, parent, name, &src_dir);
    let dst = dst.map(|d| at(d, new_parent, new_name, &dst_dir));
    if parent == new_parent && name == new_name {
        return if flags == Rename::NoReplace {
            Err(Error::exists(describe(&src)))
        } else {
            Ok(())
        };
    }
    if src.kind.is_dir() && ancestors(tx, new_parent).await?.contains(&src.id) {
        return Err(Error::invalid(format!(
            "cannot move directory {} into itself or its own descendant",
            describe(&src)
        )));
    }
    let now = now_ns();
    match (flags, dst) {
        (Rename::NoReplace, Some(d)) => Err(Error::exists(describe(&d))),
        (Rename::Exchange, None) => Err(Error::not_found(format!(
            "{}/{} (RENAME_EXCHANGE needs both names)",
            dst_dir.0,
            join(&dst_dir.1, new_name)
        ))),
        (Rename::Exchange, Some(d)) => {
            if d.kind.is_dir() && ancestors(tx, parent).await?.contains(&d.id) {
                return Err(Error::invalid(format!(
                    "cannot move directory {} into itself or its own descendant",
                    describe(&d)
                )));
            }
            if d.id == src.id {
                return Ok(());
            }
            if src.kind.is_dir() || d.kind.is_dir() {
                count_dir_move(tx).await?;
            }
            let seq1 = journal::next_seq(tx).await?;
            let seq2 = journal::next_seq(tx).await?;
            set_dentry(tx, parent, name, d.id, d.kind).await?;
            set_dentry(tx, new_parent, new_name, src.id, src.kind).await?;
            if parent != new_parent {
                let delta = src.kind.is_dir() as i64 - d.kind.is_dir() as i64;
                touch_dir(tx, parent, now, -delta).await?;
                touch_dir(tx, new_parent, now, delta).await?;
            } else {
                touch_dir(tx, parent, now, 0).await?;
            }
            let moved_src = at(
                bump_reload(tx, src.id, now, seq1).await?,
                new_parent,
                new_name,
                &dst_dir,
            );
            let moved_dst = at(
                bump_reload(tx, d.id, now, seq2).await?,
                parent,
                name,
                &src_dir,
            );
            emit(
                tx,
                seq1,
                v1::ChangeKind::Rename,
                &moved_src,
                Some((parent, src.path.clone())),
            )
            .await?;
            emit(
                tx,
                seq2,
                v1::ChangeKind::Rename,
                &moved_dst,
                Some((new_parent, d.path.clone())),
            )
            .await?;
            Ok(())
        }
        (_, dst) => {
            let mut nlink_new_parent = 0i64;
            if let Some(d) = dst {
                if d.id == src.id {
                    return Ok(()); // two names of one inode: POSIX does nothing
                }
                if src.kind.is_dir() {
                    if !d.kind.is_dir() {
                        return Err(Error::NotDirectory { what: describe(&d) });
                    }
                    if d.kind == Kind::Bucket {
                        return Err(Error::PermissionDenied("cannot replace a bucket".into()));
                    }
                    if !is_empty_dir(tx, d.id).await? {
                        return Err(Error::NotEmpty { path: describe(&d) });
                    }
                    nlink_new_parent -= 1;
                } else if d.kind.is_dir() {
                    return Err(Error::IsDirectory { what: describe(&d) });
                }
                let seq = journal::next_seq(tx).await?;
                drop_name(tx, new_parent, new_name, &d.inode, now, seq).await?;
                emit(tx, seq, v1::ChangeKind::Delete, &d, None).await?;
            }
            let seq = journal::next_seq(tx).await?;
            tx.exec(
                "UPDATE dentries SET parent_id = $3, name = $4, sort_key = $5 \
                 WHERE parent_id = $1 AND name = $2",
                args![
                    parent,
                    name,
                    new_parent,
                    new_name,
                    super::sort_key(new_name, src.kind)
                ],
            )
            .await?;
            if src.kind.is_dir() {
                count_dir_move(tx).await?;
            }
            if parent == new_parent {
                touch_dir(tx, parent, now, nlink_new_parent).await?;
            } else {
                if src.kind.is_dir() {
                    touch_dir(tx, parent, now, -1).await?;
                    nlink_new_parent += 1;
                } else {
                    touch_dir(tx, parent, now, 0).await?;
                }
                touch_dir(tx, new_parent, now, nlink_new_parent).await?;
            }
            let moved = at(
                bump_reload(tx, src.id, now, seq).await?,
                new_parent,
                new_name,
                &dst_dir,
            );
            emit(
                tx,
                seq,
                v1::ChangeKind::Rename,
                &moved,
                Some((parent, src.path.clone())),
            )
            .await
        }
    }
}

/// Invalidates every cached directory path (see `namespace::dirs`), on every gateway, when
/// this transaction commits.
async fn count_dir_move(tx: &mut Tx) -> Result<()> {
    tx.exec(
        "UPDATE counters SET value = value + 1 WHERE name = 'dir_moves'",
        args![],
    )
    .await
    .map(drop)
}

async fn set_dentry(tx: &mut Tx, parent: u64, name: &str, inode: u64, kind: Kind) -> Result<()> {
    tx.exec(
        "UPDATE dentries SET inode_id = $3, kind = $4, sort_key = $5 WHERE parent_id = $1 AND name = $2",
        args![parent, name, inode, kind as i64, super::sort_key(name, kind)],
    )
    .await?;
    Ok(())
}

/// Marks inode `id` changed by journal event `seq` (ctime, change sequence) and returns it as
/// it is now, in one statement.
async fn bump_reload(tx: &mut Tx, id: u64, now: i64, seq: u64) -> Result<Inode> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "UPDATE inodes SET ctime_ns = $2, change_seq = $3 WHERE id = $1 RETURNING {}",
            INODE_COLS.replace("i.", "")
        )
    });
    let row = tx
        .opt(SQL.as_str(), args![id, now, seq])
        .await?
        .ok_or_else(|| Error::Internal(format!("inode {id} vanished inside its transaction")))?;
    tx.touch(id);
    inode_from_row(&row, 0)
}

/// The children at two names (one query): `(a, b)`.
async fn two_children(
    tx: &mut Tx,
    a: (u64, &str),
    b: (u64, &str),
) -> Result<(Option<Inode>, Option<Inode>)> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT {INODE_COLS}, d.parent_id, d.name FROM dentries d \
             JOIN inodes i ON i.id = d.inode_id \
             WHERE (d.parent_id = $1 AND d.name = $2) OR (d.parent_id = $3 AND d.name = $4)"
        )
    });
    let rows = tx.all(SQL.as_str(), args![a.0, a.1, b.0, b.1]).await?;
    let (mut first, mut second) = (None, None);
    for r in &rows {
        let at = (r.u64(N_INODE_COLS)?, r.text(N_INODE_COLS + 1)?);
        if (at.0, at.1.as_str()) == a {
            first = Some(inode_from_row(r, 0)?);
        }
        if (at.0, at.1.as_str()) == b {
            second = Some(inode_from_row(r, 0)?);
        }
    }
    Ok((first, second))
}
