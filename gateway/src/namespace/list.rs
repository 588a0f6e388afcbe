//! Directory listing (`readdir`, by name) and S3 listing (keys under a prefix in byte order,
//! rolled up at a delimiter, resumable after any key).
//!
//! S3 listing walks the tree depth first ordered by dentry `sort_key` (directory names end in
//! `/`), which is exactly key order. It starts at the deepest directory the prefix names,
//! skips whole subtrees that sort before `start_after` (one indexed range query per directory
//! entered), and stops after `max_keys` results: a page costs a query per directory it
//! touches, never a scan of the bucket.

use super::{
    Entry, INODE_COLS, Kind, N_INODE_COLS, Namespace, ROOT_ID, Ref, check_owner, inode_from_row,
    join,
};
use crate::accounts::Caller;
use crate::db::{Conn, args};
use crate::error::{Error, Result};

/// One page of a directory.
#[derive(Debug, Clone)]
pub struct ReadDir {
    pub entries: Vec<Entry>,
    pub more: bool,
}

/// One page of an S3 listing.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// Files, and directories that are S3 `dir/` markers (their key is `path + "/"`).
    pub objects: Vec<Entry>,
    pub common_prefixes: Vec<String>,
    pub truncated: bool,
    pub next_start_after: String,
}

/// Default and largest page of `readdir`.
pub const READDIR_DEFAULT: u32 = 1000;
pub const READDIR_MAX: u32 = 10_000;
/// Default and largest page of an S3 listing.
pub const LIST_MAX: u32 = 1000;

impl Namespace {
    /// Children of a directory after `after`, in name order.
    pub async fn readdir(
        &self,
        caller: &Caller,
        r: &Ref,
        after: &str,
        limit: u32,
    ) -> Result<ReadDir> {
        let limit = match limit {
            0 => READDIR_DEFAULT,
            n => n.min(READDIR_MAX),
        };
        let mut c = self.db.conn().await?;
        let dir = super::resolve_ref(&mut c, r).await?;
        check_owner(caller, &dir)?;
        if !dir.kind.is_dir() {
            return Err(Error::NotDirectory {
                what: super::describe(&dir),
            });
        }
        let sql = format!(
            "SELECT {INODE_COLS}, d.name FROM dentries d JOIN inodes i ON i.id = d.inode_id \
             WHERE d.parent_id = $1 AND d.name > $2 AND (i.owner_id = $4 OR $5 = 1 OR d.parent_id <> {ROOT_ID}) \
             AND (d.parent_id <> {ROOT_ID} OR d.name NOT LIKE '.%') \
             ORDER BY d.name LIMIT $3"
        );
        let rows = c
            .all(
                sql,
                args![
                    dir.id,
                    after,
                    limit + 1,
                    caller.user_id.as_str(),
                    caller.admin
                ],
            )
            .await?;
        let more = rows.len() > limit as usize;
        let mut entries = Vec::with_capacity(rows.len().min(limit as usize));
        for r in rows.iter().take(limit as usize) {
            let name = r.text(N_INODE_COLS)?;
            let (bucket, path) = if dir.id == ROOT_ID {
                (name.clone(), String::new())
            } else {
                (dir.bucket.clone(), join(&dir.path, &name))
            };
            entries.push(Entry {
                inode: inode_from_row(r, 0)?,
                parent_id: dir.id,
                name,
                bucket,
                path,
            });
        }
        Ok(ReadDir { entries, more })
    }

    /// S3 `ListObjectsV2`: keys under `prefix` after `start_after`, rolled up at `delimiter`.
    pub async fn list_objects(
        &self,
        caller: &Caller,
        bucket: &str,
        prefix: &str,
        delimiter: &str,
        start_after: &str,
        max_keys: u32,
    ) -> Result<Listing> {
        let max = match max_keys {
            0 => LIST_MAX,
            n => n.min(LIST_MAX),
        } as usize;
        let mut c = self.db.conn().await?;
        let b = super::walk(&mut c, bucket, &[]).await?;
        if !b.public_read {
            check_owner(caller, &b)?;
        }
        // The deepest directory the prefix names, and the partial last segment.
        let (dir_part, rem) = match prefix.rfind('/') {
            Some(i) => (&prefix[..=i], &prefix[i + 1..]),
            None => ("", prefix),
        };
        let mut start = b;
        for seg in dir_part.split('/').filter(|s| !s.is_empty()) {
            if dir_part.contains("//") || seg == "." || seg == ".." {
                return Ok(Listing::default());
            }
            match super::child(&mut c, start.id, seg).await? {
                Some(d) if d.kind.is_dir() => {
                    let path = join(&start.path, seg);
                    start = Entry {
                        inode: d,
                        parent_id: start.id,
                        name: seg.to_string(),
                        bucket: bucket.to_string(),
                        path,
                    };
                }
                _ => return Ok(Listing::default()),
            }
        }
        if dir_part.starts_with('/') {
            return Ok(Listing::default());
        }
        let mut w = Walker {
            c: &mut c,
            bucket: bucket.to_string(),
            start_after: start_after.to_string(),
            prefix: prefix.to_string(),
            delimiter: delimiter.to_string(),
            max,
            out: Listing::default(),
            count: 0,
        };
        // The start directory itself, as a `dir/` marker object.
        if rem.is_empty() && start.kind == Kind::Directory && start.marker {
            let key = format!("{}/", start.path);
            if w.push_object_key(&key, start.clone()) {
                return Ok(w.finish());
            }
        }
        let dir_key = if start.path.is_empty() {
            String::new()
        } else {
            format!("{}/", start.path)
        };
        w.walk(start, dir_key, rem.to_string()).await?;
        Ok(w.finish())
    }
}

struct Walker<'a> {
    c: &'a mut Conn,
    bucket: String,
    start_after: String,
    prefix: String,
    delimiter: String,
    max: usize,
    out: Listing,
    count: usize,
}

/// A directory being listed: children after `cursor` (or from `lower`), filtered by `rem`.
struct Frame {
    dir: Entry,
    /// Key of the directory (`a/b/`, "" for the bucket).
    key: String,
    lower: String,
    cursor: Option<String>,
    rem: String,
}

impl Walker<'_> {
    /// Records a result; true when the page is full (one extra result marks truncation).
    fn push(&mut self, key: &str, item: Option<Entry>) -> bool {
        if self.count == self.max {
            self.out.truncated = true;
            return true;
        }
        self.count += 1;
        self.out.next_start_after = key.to_string();
        match item {
            Some(e) => self.out.objects.push(e),
            None => self.out.common_prefixes.push(key.to_string()),
        }
        false
    }

    /// An object key found in order; applies start_after, prefix and a generic delimiter.
    fn push_object_key(&mut self, key: &str, e: Entry) -> bool {
        if key <= self.start_after.as_str() || !key.starts_with(&self.prefix) {
            return false;
        }
        if !self.delimiter.is_empty()
            && self.delimiter != "/"
            && let Some(i) = key[self.prefix.len()..].find(&self.delimiter)
        {
            let cp = &key[..self.prefix.len() + i + self.delimiter.len()];
            if self.out.common_prefixes.last().map(String::as_str) == Some(cp)
                || cp <= self.start_after.as_str()
            {
                return false;
            }
            let cp = cp.to_string();
            return self.push(&cp, None);
        }
        self.push(key, Some(e))
    }

    fn finish(self) -> Listing {
        let mut out = self.out;
        if !out.truncated {
            out.next_start_after.clear();
        }
        out
    }

    /// Lower bound on child sort keys of directory `key` given `start_after`, or `None` when
    /// every key below `key` sorts before `start_after`.
    fn lower_bound(&self, key: &str) -> Option<String> {
        let sa = self.start_after.as_str();
        if let Some(r) = sa.strip_prefix(key) {
            Some(match r.find('/') {
                Some(i) => r[..=i].to_string(),
                None => r.to_string(),
            })
        } else if sa < key {
            Some(String::new())
        } else {
            None
        }
    }

    async fn walk(&mut self, start: Entry, key: String, rem: String) -> Result<()> {
        let Some(lower) = self.lower_bound(&key) else {
            return Ok(());
        };
        let lower = lower.max(rem.clone());
        let mut stack = vec![Frame {
            dir: start,
            key,
            lower,
            cursor: None,
            rem,
        }];
        let descend = self.delimiter != "/";
        while let Some(mut f) = stack.pop() {
            let want = (self.max - self.count + 1).clamp(16, 1000);
            let (cmp, bound) = match &f.cursor {
                Some(c) => (">", c.clone()),
                None => (">=", f.lower.clone()),
            };
            let sql = format!(
                "SELECT {INODE_COLS}, d.name, d.sort_key FROM dentries d \
                 JOIN inodes i ON i.id = d.inode_id \
                 WHERE d.parent_id = $1 AND d.sort_key {cmp} $2 ORDER BY d.sort_key LIMIT $3"
            );
            let rows = self.c.all(sql, args![f.dir.id, bound, want]).await?;
            let batch_full = rows.len() == want;
            let mut pushed_child = None;
            for r in &rows {
                let name = r.text(N_INODE_COLS)?;
                let sk = r.text(N_INODE_COLS + 1)?;
                if !sk.starts_with(&f.rem) {
                    f.cursor = None;
                    break;
                }
                f.cursor = Some(sk.clone());
                let inode = inode_from_row(r, 0)?;
                let k = format!("{}{}", f.key, sk);
                let e = Entry {
                    inode,
                    parent_id: f.dir.id,
                    name: name.clone(),
                    bucket: self.bucket.clone(),
                    path: join(&f.dir.path, &name),
                };
                match e.kind {
                    Kind::File => {
                        if self.push_object_key(&k, e) {
                            return Ok(());
                        }
                    }
                    Kind::Symlink => {}
                    Kind::Directory | Kind::Bucket => {
                        if !descend {
                            let sa = self.start_after.as_str();
                            let show = k.as_str() > sa || (sa.starts_with(&k) && sa != k);
                            if show && self.push(&k, None) {
                                return Ok(());
                            }
                            continue;
                        }
                        if e.marker && self.push_object_key(&k, e.clone()) {
                            return Ok(());
                        }
                        if let Some(lower) = self.lower_bound(&k) {
                            pushed_child = Some(Frame {
                                dir: e,
                                key: k,
                                lower,
                                cursor: None,
                                rem: String::new(),
                            });
                            break;
                        }
                    }
                }
            }
            let exhausted = pushed_child.is_none() && (!batch_full || f.cursor.is_none());
            if !exhausted {
                stack.push(f);
            }
            if let Some(c) = pushed_child {
                stack.push(c);
            }
        }
        Ok(())
    }
}
