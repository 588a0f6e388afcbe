//! Namespace changes: each is one gateway call, then the cache is updated from its answer.

use cyxcloud_client::{id_ref, path_ref};
use cyxcloud_proto::v1;

use crate::drive::{Drive, GATEWAY_ROOT, check_name, is_dir, ns_of};
use crate::error::{Error, Result};
use crate::staging::StagedMeta;
use crate::store::Mutation;

/// Who is asking (for the owner of new entries).
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub umask: u32,
}

/// What `setattr` changes.
#[derive(Debug, Clone, Default)]
pub struct SetAttrs {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime_ns: Option<i64>,
    pub mtime_ns: Option<i64>,
}

/// `rename(2)` flavours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenameMode {
    Replace,
    NoReplace,
    Exchange,
}

impl Drive {
    fn writable(&self) -> Result<()> {
        if self.cfg.read_only {
            Err(Error::ReadOnly)
        } else {
            Ok(())
        }
    }

    pub async fn mkdir(
        &self,
        parent: u64,
        name: &str,
        mode: u32,
        who: Caller,
    ) -> Result<v1::Entry> {
        self.writable()?;
        check_name(name)?;
        let n = name.to_string();
        let e = if self.is_bucket_level(parent) {
            self.remote
                .control("create bucket", |mut c| async move {
                    c.create_bucket(v1::CreateBucketRequest {
                        name: n,
                        public_read: false,
                    })
                    .await
                })
                .await?
        } else {
            let mode = mode & 0o7777 & !who.umask;
            self.remote
                .control("mkdir", |mut c| async move {
                    c.mkdir(v1::MkdirRequest {
                        parent_id: parent,
                        name: n,
                        mode,
                        uid: who.uid,
                        gid: who.gid,
                        path: None,
                    })
                    .await
                })
                .await?
        };
        // Counted once, whether the journal stream delivered this mkdir first or not.
        self.link_name(&e, parent, name)?;
        // A directory this mount just made is empty: its (negative) lookups need no round trip.
        // A create the journal delivered meanwhile is kept.
        if self.store.children(e.id)?.is_empty() {
            self.store.apply(&[Mutation::SetComplete {
                dir: e.id,
                complete: true,
            }])?;
        }
        Ok(e)
    }

    pub async fn rmdir(&self, parent: u64, name: &str) -> Result<()> {
        self.writable()?;
        check_name(name)?;
        let child = self.lookup(parent, name).await?;
        if !is_dir(&child) {
            return Err(Error::NotDir(name.to_string()));
        }
        // Files made here and not uploaded yet are children too: the gateway must see them
        // to refuse removing a directory that is not empty.
        for (_, id) in self.staging.pending_in(child.id) {
            self.ensure_created(id).await?;
        }
        let n = name.to_string();
        if self.is_bucket_level(parent) {
            self.remote
                .control("delete bucket", |mut c| async move {
                    c.delete_bucket(v1::DeleteBucketRequest { name: n }).await
                })
                .await?;
        } else {
            self.remote
                .control("rmdir", |mut c| async move {
                    c.rmdir(v1::RemoveRequest {
                        parent_id: parent,
                        name: n,
                        path: None,
                    })
                    .await
                })
                .await?;
        }
        self.unlink_own_name(parent, name, child.id, true)?;
        Ok(())
    }

    /// Creates an empty regular file. In a directory whose listing the cache holds whole, the
    /// file is made here under an id the gateway reserved for this mount, and reaches the
    /// gateway with its bytes when uploaded (or earlier, when an operation needs it there).
    /// Elsewhere the gateway creates it at once (`O_EXCL` semantics there).
    pub async fn create_file(
        &self,
        parent: u64,
        name: &str,
        mode: u32,
        who: Caller,
    ) -> Result<v1::Entry> {
        self.writable()?;
        check_name(name)?;
        if self.is_bucket_level(parent) {
            return Err(Error::NotPermitted(
                "only buckets (directories) live at the top of the drive".into(),
            ));
        }
        if self.store.is_complete(parent)? && self.store.lookup(parent, name)?.is_none() {
            match self.new_id().await {
                Ok(id) => return self.create_here(parent, name, id, mode, who),
                Err(e) => tracing::debug!(error = %e, "no reserved id: creating at the gateway"),
            }
        }
        let (bucket, dir) = self.locate(parent).await?;
        let path = if dir.is_empty() {
            name.to_string()
        } else {
            format!("{dir}/{name}")
        };
        let mode = mode & 0o7777 & !who.umask;
        let e = self
            .remote
            .control("create", |mut c| async move {
                c.write_inline(v1::WriteInlineRequest {
                    target: Some(path_ref(&bucket, &path)),
                    data: vec![],
                    etag: "d41d8cd98f00b204e9800998ecf8427e".into(),
                    content_type: String::new(),
                    user_metadata: Default::default(),
                    mode,
                    uid: who.uid,
                    gid: who.gid,
                    if_version: 0,
                    if_absent: true,
                    mtime_ns: None,
                    new_id: 0,
                })
                .await
            })
            .await?;
        self.link_name(&e, parent, name)?;
        Ok(e)
    }

    /// [`Drive::create_file`] under reserved id `id`: an entry and an empty staged copy.
    fn create_here(
        &self,
        parent: u64,
        name: &str,
        id: u64,
        mode: u32,
        who: Caller,
    ) -> Result<v1::Entry> {
        let now = crate::staging::now_ns();
        let e = v1::Entry {
            id,
            parent_id: parent,
            name: name.to_string(),
            kind: v1::EntryKind::File as i32,
            mode: mode & 0o7777 & !who.umask,
            uid: who.uid,
            gid: who.gid,
            atime_ns: now,
            mtime_ns: now,
            ctime_ns: now,
            btime_ns: now,
            nlink: 1,
            ..Default::default()
        };
        let (tmp, file) = self.staging.temp(id)?;
        drop(file);
        self.staging.install(
            id,
            &tmp,
            StagedMeta {
                mtime_ns: now,
                mode: e.mode,
                uid: e.uid,
                gid: e.gid,
                // Where it was made: also where it is made at the gateway if its directory
                // is gone by the time it uploads (see `Drive::create_pending`).
                display: match self.locate_cached(parent)? {
                    Some((b, d)) if d.is_empty() => format!("{b}/{name}"),
                    Some((b, d)) => format!("{b}/{d}/{name}"),
                    None => name.to_string(),
                },
                pending: Some((parent, name.to_string())),
            },
            true,
        )?;
        self.link_name(&e, parent, name)?;
        Ok(e)
    }

    pub async fn unlink(&self, parent: u64, name: &str) -> Result<()> {
        self.writable()?;
        check_name(name)?;
        let child = self.lookup(parent, name).await?;
        if is_dir(&child) {
            return Err(Error::IsDir(name.to_string()));
        }
        if let Some((_, _g)) = self.staging.lock_pending(child.id).await {
            // Never reached the gateway: the file goes here only.
            self.unlink_name(parent, name, child.id, false)?;
            self.patch(child.id, |e| e.nlink = 0)?;
            if self.open_count(child.id) > 0 {
                self.staging.orphan(child.id)?;
            } else {
                self.staging.remove(child.id)?;
            }
            return Ok(());
        }
        let last_name = child.nlink <= 1;
        if last_name {
            self.keep_open_copy(&child).await?;
        }
        let n = name.to_string();
        self.remote
            .control("unlink", |mut c| async move {
                c.unlink(v1::RemoveRequest {
                    parent_id: parent,
                    name: n,
                    path: None,
                })
                .await
            })
            .await?;
        self.forget_name(parent, name, &child, last_name)?;
        if !last_name {
            // The file keeps other names. Journal events from before this unlink (an upload's
            // Update, say) still count the removed name, and the Delete that follows them
            // finds it gone here already: the inode as the gateway has it now, with its
            // change sequence, makes those events older than what is cached.
            match self.fetch_entry(child.id).await {
                Ok(e) => self.remember(&e, None)?,
                Err(e) => {
                    tracing::debug!(id = child.id, error = %e, "cannot refresh a linked file")
                }
            }
        }
        Ok(())
    }

    /// Drops a name from the cache; the last name of a file also drops its staged copy (open
    /// handles keep theirs as an orphan).
    fn forget_name(&self, parent: u64, name: &str, child: &v1::Entry, last: bool) -> Result<()> {
        // Not there any more when the journal stream has already applied this change.
        if self.unlink_own_name(parent, name, child.id, false)? {
            let now = crate::staging::now_ns();
            self.patch(child.id, |e| {
                e.nlink = if last {
                    0
                } else {
                    e.nlink.saturating_sub(1).max(1)
                };
                e.ctime_ns = now;
            })?;
        }
        if last && !is_dir(child) {
            if self.open_count(child.id) > 0 {
                self.staging.orphan(child.id)?;
            } else {
                self.staging.remove(child.id)?;
            }
        }
        Ok(())
    }

    /// Before the last name of an open file goes, make sure its bytes are local so the open
    /// handles keep working.
    async fn keep_open_copy(&self, child: &v1::Entry) -> Result<()> {
        if self.open_count(child.id) == 0 || self.staging.get(child.id).is_some() {
            return Ok(());
        }
        let sf = self.materialize(child, false).await?;
        // Handles opened before the copy existed switch to it.
        let mut hs = self.handles.lock().unwrap_or_else(|e| e.into_inner());
        for h in hs.values_mut() {
            if h.ino == child.id && h.dir.is_none() && h.staged.is_none() {
                sf.lock().open += 1;
                h.staged = Some(sf.clone());
            }
        }
        Ok(())
    }

    /// One Rename call at the gateway, by parent ids and names.
    pub(crate) async fn rename_at_gateway(
        &self,
        parent: u64,
        name: &str,
        new_parent: u64,
        new_name: &str,
        flags: v1::RenameFlags,
    ) -> Result<()> {
        let (n, nn) = (name.to_string(), new_name.to_string());
        self.remote
            .control("rename", |mut c| async move {
                c.rename(v1::RenameRequest {
                    parent_id: parent,
                    name: n,
                    new_parent_id: new_parent,
                    new_name: nn,
                    flags: flags as i32,
                })
                .await
            })
            .await?;
        Ok(())
    }

    pub async fn rename(
        &self,
        parent: u64,
        name: &str,
        new_parent: u64,
        new_name: &str,
        mode: RenameMode,
    ) -> Result<()> {
        self.writable()?;
        check_name(name)?;
        check_name(new_name)?;
        if parent == GATEWAY_ROOT || new_parent == GATEWAY_ROOT {
            return Err(Error::NotPermitted("buckets cannot be renamed".into()));
        }
        let src = self.lookup(parent, name).await?;
        if parent != new_parent {
            let (a, b) = (
                self.bucket_of(parent).await?,
                self.bucket_of(new_parent).await?,
            );
            if a != b {
                return Err(Error::CrossBucket(format!("{a} -> {b}")));
            }
        }
        let dst = match self.lookup(new_parent, new_name).await {
            Ok(d) => Some(d),
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e),
        };
        self.ensure_created(src.id).await?;
        if let Some(d) = &dst {
            self.ensure_created(d.id).await?;
            // As for rmdir: a directory replaced by the rename must be empty, counting the
            // files made in it here and not uploaded yet. Unseen by the gateway, they let the
            // rename through and then had no parent to upload into.
            if is_dir(d) {
                for (_, id) in self.staging.pending_in(d.id) {
                    self.ensure_created(id).await?;
                }
            }
        }
        if let Some(d) = &dst
            && mode == RenameMode::Replace
            && d.id != src.id
            && !is_dir(d)
            && d.nlink <= 1
        {
            self.keep_open_copy(d).await?;
        }
        let flags = match mode {
            RenameMode::Replace => v1::RenameFlags::None,
            RenameMode::NoReplace => v1::RenameFlags::Noreplace,
            RenameMode::Exchange => v1::RenameFlags::Exchange,
        };
        self.rename_at_gateway(parent, name, new_parent, new_name, flags)
            .await?;
        let now = crate::staging::now_ns();
        let mut batch = Vec::new();
        let moved = |id: u64, p: u64, n: &str| {
            let n = n.to_string();
            self.patch(id, move |e| {
                e.parent_id = p;
                e.name = n;
                e.ctime_ns = now;
            })
        };
        // Until the journal reports this rename, older events still carry the old names.
        self.departed(parent, name, src.id);
        match (mode, dst) {
            (RenameMode::Exchange, Some(d)) => {
                self.departed(new_parent, new_name, d.id);
                batch.push(Mutation::PutDentry {
                    parent,
                    name: name.to_string(),
                    ino: d.id,
                });
                batch.push(Mutation::PutDentry {
                    parent: new_parent,
                    name: new_name.to_string(),
                    ino: src.id,
                });
                self.store.apply(&batch)?;
                moved(d.id, parent, name)?;
                moved(src.id, new_parent, new_name)?;
            }
            (_, dst) => {
                if let Some(d) = dst.filter(|d| d.id != src.id) {
                    if is_dir(&d) {
                        batch.push(Mutation::RemoveEntry(d.id));
                    }
                    self.store.apply(&batch)?;
                    batch.clear();
                    self.forget_name(new_parent, new_name, &d, d.nlink <= 1)?;
                }
                batch.push(Mutation::RemoveDentry {
                    parent,
                    name: name.to_string(),
                });
                batch.push(Mutation::PutDentry {
                    parent: new_parent,
                    name: new_name.to_string(),
                    ino: src.id,
                });
                self.store.apply(&batch)?;
                moved(src.id, new_parent, new_name)?;
            }
        }
        let dirs = if is_dir(&src) && parent != new_parent {
            1
        } else {
            0
        };
        self.touch_dir(parent, -dirs)?;
        if new_parent != parent {
            self.touch_dir(new_parent, dirs)?;
        }
        Ok(())
    }

    pub async fn symlink(
        &self,
        parent: u64,
        name: &str,
        target: &str,
        who: Caller,
    ) -> Result<v1::Entry> {
        self.writable()?;
        check_name(name)?;
        if self.is_bucket_level(parent) {
            return Err(Error::NotPermitted(
                "only buckets (directories) live at the top of the drive".into(),
            ));
        }
        if target.is_empty() {
            return Err(Error::NotFound("empty symlink target".into()));
        }
        if target.len() > 4095 {
            return Err(Error::NameTooLong);
        }
        let (n, t) = (name.to_string(), target.to_string());
        let e = self
            .remote
            .control("symlink", |mut c| async move {
                c.symlink(v1::SymlinkRequest {
                    parent_id: parent,
                    name: n,
                    target: t,
                    uid: who.uid,
                    gid: who.gid,
                })
                .await
            })
            .await?;
        self.link_name(&e, parent, name)?;
        Ok(e)
    }

    pub async fn readlink(&self, id: u64) -> Result<String> {
        let e = self.entry(id).await?;
        if crate::drive::kind_of(&e) != fuser::FileType::Symlink {
            return Err(Error::Invalid("not a symlink".into()));
        }
        if !e.symlink_target.is_empty() {
            return Ok(e.symlink_target);
        }
        let r = self
            .remote
            .control("readlink", |mut c| async move {
                c.readlink(v1::GetAttrRequest {
                    entry: Some(id_ref(id)),
                })
                .await
            })
            .await?;
        Ok(r.target)
    }

    pub async fn link(&self, id: u64, new_parent: u64, new_name: &str) -> Result<v1::Entry> {
        self.writable()?;
        check_name(new_name)?;
        if self.is_bucket_level(new_parent) {
            return Err(Error::NotPermitted(
                "only buckets (directories) live at the top of the drive".into(),
            ));
        }
        let e = self.entry(id).await?;
        if is_dir(&e) {
            return Err(Error::NotPermitted("hard links to directories".into()));
        }
        let src_bucket = match self.store.names(id)?.into_iter().next() {
            Some((p, _)) => self.bucket_of(p).await?,
            None => e.bucket.clone(),
        };
        let dst_bucket = self.bucket_of(new_parent).await?;
        if !src_bucket.is_empty() && src_bucket != dst_bucket {
            return Err(Error::CrossBucket(format!("{src_bucket} -> {dst_bucket}")));
        }
        self.ensure_created(id).await?;
        let n = new_name.to_string();
        let e = self
            .remote
            .control("link", |mut c| async move {
                c.link(v1::LinkRequest {
                    id,
                    new_parent_id: new_parent,
                    new_name: n,
                })
                .await
            })
            .await?;
        self.link_name(&e, new_parent, new_name)?;
        Ok(e)
    }

    /// chmod, chown, utimens, truncate.
    pub async fn setattr(&self, id: u64, a: SetAttrs) -> Result<v1::Entry> {
        self.writable()?;
        let cur = self.entry(id).await?;
        if id == GATEWAY_ROOT && self.root == GATEWAY_ROOT {
            return Err(Error::NotPermitted(
                "the root of the drive cannot be changed".into(),
            ));
        }
        let mut size = a.size;
        if let Some(s) = a.size {
            if is_dir(&cur) {
                return Err(Error::IsDir(cur.name.clone()));
            }
            // A staged file is truncated locally and uploaded later. Truncating to zero needs
            // no old bytes: stage an empty copy (works offline, and `O_TRUNC` + write becomes
            // one upload).
            let staged = match self.staging.get(id) {
                Some(sf) => Some(sf),
                None if s == 0 => Some(
                    self.materialize(
                        &v1::Entry {
                            size: 0,
                            ..cur.clone()
                        },
                        true,
                    )
                    .await?,
                ),
                None if self.open_count(id) > 0 => Some(self.materialize(&cur, true).await?),
                None => None,
            };
            if let Some(sf) = staged {
                // A copy just committed and dropped (Stale) is truncated at the gateway.
                if let Ok(r) = sf.set_size(s, self.staging.delay) {
                    r?;
                    self.staging.journal(&sf)?;
                    size = None;
                }
            }
        }
        let mut req = v1::SetAttrRequest {
            entry: Some(id_ref(id)),
            mode: a.mode.map(|m| m & 0o7777),
            uid: a.uid,
            gid: a.gid,
            size,
            atime_ns: a.atime_ns,
            mtime_ns: a.mtime_ns,
            content_type: None,
        };
        if let Some(sf) = self.staging.get(id) {
            {
                let mut st = sf.lock();
                if let Some(m) = a.mode {
                    st.mode = m & 0o7777;
                }
                if let Some(u) = a.uid {
                    st.uid = u;
                }
                if let Some(g) = a.gid {
                    st.gid = g;
                }
                if let Some(t) = a.mtime_ns {
                    st.mtime_ns = t;
                }
                if let Some(t) = a.atime_ns {
                    st.atime_ns = Some(t);
                }
            }
            self.staging.journal(&sf)?;
            if let Some((_, _g)) = self.staging.lock_pending(id).await {
                // Not at the gateway yet: mode, owner and mtime travel with its creation.
                let now = crate::staging::now_ns();
                self.patch(id, |e| {
                    e.mode = a.mode.map_or(e.mode, |m| m & 0o7777);
                    e.uid = a.uid.unwrap_or(e.uid);
                    e.gid = a.gid.unwrap_or(e.gid);
                    e.atime_ns = a.atime_ns.unwrap_or(e.atime_ns);
                    e.mtime_ns = a.mtime_ns.unwrap_or(e.mtime_ns);
                    e.ctime_ns = now;
                })?;
                return self.entry(id).await;
            }
        }
        // Times of a staged file travel with its upload (mtime) or after it (atime, see
        // `StagedState::atime_ns`): no round trip, and truncate + write works offline.
        let staged_times_only = self.staging.get(id).is_some()
            && req.mode.is_none()
            && req.uid.is_none()
            && req.gid.is_none()
            && req.size.is_none();
        if staged_times_only {
            if let Some(t) = req.atime_ns {
                self.patch(id, |e| e.atime_ns = t)?;
            }
            req.atime_ns = None;
            req.mtime_ns = None;
        }
        if req.mode.is_none()
            && req.uid.is_none()
            && req.gid.is_none()
            && req.size.is_none()
            && req.atime_ns.is_none()
            && req.mtime_ns.is_none()
        {
            let now = crate::staging::now_ns();
            self.patch(id, |e| e.ctime_ns = now)?;
            return self.entry(id).await;
        }
        // A staged mtime travels with the upload; the gateway gets it now too.
        if req.mtime_ns.is_none() && req.size.is_some() {
            req.mtime_ns = Some(ns_of(std::time::SystemTime::now()));
        }
        let e = self
            .remote
            .control("setattr", |mut c| async move { c.set_attr(req).await })
            .await?;
        self.remember(&e, None)?;
        self.layouts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        Ok(e)
    }

    pub async fn set_xattr(&self, id: u64, name: &str, value: &[u8], flags: i32) -> Result<()> {
        self.writable()?;
        if name == crate::fileops::STATE_XATTR {
            return Err(Error::NotPermitted(
                "user.cyxcloud.state is read-only".into(),
            ));
        }
        if !name.starts_with("user.") {
            return Err(Error::Unsupported(format!("xattr namespace of {name:?}")));
        }
        if name.len() > 255 {
            return Err(Error::Range);
        }
        if value.len() > 64 * 1024 {
            return Err(Error::Io(std::io::Error::from_raw_os_error(libc::E2BIG)));
        }
        let cur = self.entry(id).await?;
        let mut f = 0u32;
        if flags & libc::XATTR_CREATE != 0 {
            if cur.xattrs.contains_key(name) {
                return Err(Error::Exists(name.to_string()));
            }
            f |= 1;
        }
        if flags & libc::XATTR_REPLACE != 0 {
            if !cur.xattrs.contains_key(name) {
                return Err(Error::NoAttr);
            }
            f |= 2;
        }
        self.ensure_created(id).await?;
        let (n, v) = (name.to_string(), value.to_vec());
        let r = self
            .remote
            .control("setxattr", |mut c| async move {
                c.set_xattr(v1::SetXattrRequest {
                    entry: Some(id_ref(id)),
                    name: n,
                    value: v,
                    flags: f,
                })
                .await
            })
            .await;
        match r {
            Err(e) if e.is_not_found() && flags & libc::XATTR_REPLACE != 0 => {
                return Err(Error::NoAttr);
            }
            r => r?,
        };
        let now = crate::staging::now_ns();
        self.after_xattr_change(id, |e| {
            e.xattrs.insert(name.to_string(), value.to_vec());
            e.ctime_ns = now;
        })
        .await
    }

    /// Caches the entry as the gateway has it after an xattr change, so that the journal
    /// events of earlier changes (older sequence numbers), still on their way, cannot replace
    /// it (CI saw a `getxattr` return the value before the last `setxattr`). The calls return
    /// no entry, hence the GetAttr. If that fails, the change is applied to the cached copy.
    async fn after_xattr_change(&self, id: u64, f: impl FnOnce(&mut v1::Entry)) -> Result<()> {
        match self.fetch_entry(id).await {
            Ok(e) => self.remember(&e, None),
            Err(_) => self.patch(id, f),
        }
    }

    pub async fn remove_xattr(&self, id: u64, name: &str) -> Result<()> {
        self.writable()?;
        let cur = self.entry(id).await?;
        if !cur.xattrs.contains_key(name) {
            return Err(Error::NoAttr);
        }
        self.ensure_created(id).await?;
        let n = name.to_string();
        let r = self
            .remote
            .control("removexattr", |mut c| async move {
                c.remove_xattr(v1::RemoveXattrRequest {
                    entry: Some(id_ref(id)),
                    name: n,
                })
                .await
            })
            .await;
        match r {
            Err(e) if e.is_not_found() => return Err(Error::NoAttr),
            r => r?,
        };
        let now = crate::staging::now_ns();
        self.after_xattr_change(id, |e| {
            e.xattrs.remove(name);
            e.ctime_ns = now;
        })
        .await
    }
}
