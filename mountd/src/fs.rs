//! The FUSE face of the drive: each kernel request is handed to the tokio runtime, answered by
//! a [`Drive`] operation, and its error turned into an errno by [`crate::errno`] (the one place
//! that does). Nothing here panics on bad input.

use std::ffi::OsStr;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, FileAttr, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::drive::{DirSnapshot, Drive, Handle, is_dir, ns_of};
use crate::errno::errno;
use crate::error::{Error, Result};
use crate::nsops::{Caller, RenameMode, SetAttrs};

/// Block size reported by statfs.
const BSIZE: u64 = 4096;

pub struct Fs {
    pub d: Arc<Drive>,
    pub rt: tokio::runtime::Handle,
}

impl std::fmt::Debug for Fs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fs").finish_non_exhaustive()
    }
}

fn name_of(n: &OsStr) -> Result<&str> {
    n.to_str()
        .ok_or_else(|| Error::Invalid("names must be UTF-8".into()))
}

fn time_or_now(t: Option<TimeOrNow>) -> Option<i64> {
    t.map(|t| match t {
        TimeOrNow::Now => ns_of(SystemTime::now()),
        TimeOrNow::SpecificTime(s) => ns_of(s),
    })
}

impl Fs {
    fn spawn(&self, f: impl Future<Output = ()> + Send + 'static) {
        self.rt.spawn(f);
    }

    fn ttl(&self) -> Duration {
        self.d.cfg.attr_ttl
    }

    fn caller(req: &Request, umask: u32) -> Caller {
        Caller {
            uid: req.uid(),
            gid: req.gid(),
            umask,
        }
    }

    fn entry_reply(
        d: &Drive,
        ttl: Duration,
        r: Result<cyxcloud_proto::v1::Entry>,
        reply: ReplyEntry,
    ) {
        match r {
            Ok(e) => reply.entry(&ttl, &d.attr(&e), Generation(0)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn empty_reply(r: Result<()>, reply: ReplyEmpty) {
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }
}

async fn dir_snapshot(d: &Drive, dir: u64) -> Result<Vec<(FileAttr, String)>> {
    let me = d.entry(dir).await?;
    if !is_dir(&me) {
        return Err(Error::NotDir(me.name));
    }
    let me_attr = d.attr(&me);
    let parent_attr = match d.store.names(dir)?.into_iter().next() {
        Some((p, _)) if dir != d.root => match d.entry(p).await {
            Ok(pe) => d.attr(&pe),
            Err(_) => me_attr,
        },
        _ => me_attr,
    };
    let mut v = vec![(me_attr, ".".to_string()), (parent_attr, "..".to_string())];
    for (name, e) in d.list(dir).await? {
        v.push((d.attr(&e), name));
    }
    Ok(v)
}

/// The snapshot of open directory `fh`, taken at its first readdir.
async fn snapshot(
    d: &Drive,
    fh: FileHandle,
) -> std::result::Result<Arc<DirSnapshot>, fuser::Errno> {
    let (ino, cell) = match d.handle(fh.0) {
        Ok(Handle {
            ino, dir: Some(c), ..
        }) => (ino, c),
        Ok(_) => return Err(fuser::Errno::ENOTDIR),
        Err(e) => return Err(errno(&e)),
    };
    cell.get_or_try_init(|| dir_snapshot(d, ino))
        .await
        .map_err(|e| errno(&e))?;
    Ok(cell)
}

/// The entries of a snapshot from readdir offset `offset` on, each with the offset of the
/// entry after it.
fn from_offset(
    items: &DirSnapshot,
    offset: u64,
) -> impl Iterator<Item = (u64, &(FileAttr, String))> {
    let items = items.get().map(Vec::as_slice).unwrap_or_default();
    (offset..)
        .zip(items.iter().skip(offset as usize))
        .map(|(i, e)| (i + 1, e))
}

impl Filesystem for Fs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.add_capabilities(
            InitFlags::FUSE_DO_READDIRPLUS
                | InitFlags::FUSE_READDIRPLUS_AUTO
                | InitFlags::FUSE_PARALLEL_DIROPS
                | InitFlags::FUSE_AUTO_INVAL_DATA
                | InitFlags::FUSE_BIG_WRITES,
        );
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let d = self.d.clone();
        let ttl = self.ttl();
        let parent = d.gid(parent);
        let name = name.to_owned();
        self.spawn(async move {
            let r = match name_of(&name) {
                Ok(n) => d.lookup(parent, n).await,
                Err(e) => Err(e),
            };
            Fs::entry_reply(&d, ttl, r, reply);
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let d = self.d.clone();
        let ttl = self.ttl();
        let id = d.gid(ino);
        self.spawn(async move {
            match d.entry(id).await {
                Ok(e) => reply.attr(&ttl, &d.attr(&e)),
                Err(e) => {
                    tracing::debug!(id, "getattr failed");
                    reply.error(errno(&e))
                }
            }
        });
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let d = self.d.clone();
        let ttl = self.ttl();
        let id = d.gid(ino);
        let a = SetAttrs {
            mode,
            uid,
            gid,
            size,
            atime_ns: time_or_now(atime),
            mtime_ns: time_or_now(mtime),
        };
        let dbg_a = a.clone();
        self.spawn(async move {
            match d.setattr(id, a).await {
                Ok(e) => reply.attr(&ttl, &d.attr(&e)),
                Err(e) => {
                    tracing::debug!(id, ?dbg_a, "setattr failed");
                    reply.error(errno(&e))
                }
            }
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let d = self.d.clone();
        let id = d.gid(ino);
        self.spawn(async move {
            match d.readlink(id).await {
                Ok(t) => reply.data(t.as_bytes()),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG && mode & libc::S_IFMT != 0 {
            // Devices, FIFOs and sockets have no meaning in object storage.
            reply.error(fuser::Errno::EPERM);
            return;
        }
        let d = self.d.clone();
        let ttl = self.ttl();
        let parent = d.gid(parent);
        let name = name.to_owned();
        let who = Fs::caller(req, umask);
        self.spawn(async move {
            let r = match name_of(&name) {
                Ok(n) => d.create_file(parent, n, mode, who).await,
                Err(e) => Err(e),
            };
            Fs::entry_reply(&d, ttl, r, reply);
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let d = self.d.clone();
        let ttl = self.ttl();
        let parent = d.gid(parent);
        let name = name.to_owned();
        let who = Fs::caller(req, umask);
        self.spawn(async move {
            let r = match name_of(&name) {
                Ok(n) => d.mkdir(parent, n, mode, who).await,
                Err(e) => Err(e),
            };
            Fs::entry_reply(&d, ttl, r, reply);
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let d = self.d.clone();
        let parent = d.gid(parent);
        let name = name.to_owned();
        self.spawn(async move {
            let r = match name_of(&name) {
                Ok(n) => d.unlink(parent, n).await,
                Err(e) => Err(e),
            };
            Fs::empty_reply(r, reply);
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let d = self.d.clone();
        let parent = d.gid(parent);
        let name = name.to_owned();
        self.spawn(async move {
            let r = match name_of(&name) {
                Ok(n) => d.rmdir(parent, n).await,
                Err(e) => Err(e),
            };
            Fs::empty_reply(r, reply);
        });
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        let d = self.d.clone();
        let ttl = self.ttl();
        let parent = d.gid(parent);
        let name = link_name.to_owned();
        let target = target.as_os_str().to_owned();
        let who = Fs::caller(req, 0);
        self.spawn(async move {
            let r = match (name_of(&name), name_of(&target)) {
                (Ok(n), Ok(t)) => d.symlink(parent, n, t, who).await,
                (Err(e), _) | (_, Err(e)) => Err(e),
            };
            Fs::entry_reply(&d, ttl, r, reply);
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mode = if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            RenameMode::Exchange
        } else if flags.contains(RenameFlags::RENAME_NOREPLACE) {
            RenameMode::NoReplace
        } else if flags.is_empty() {
            RenameMode::Replace
        } else {
            reply.error(fuser::Errno::EINVAL);
            return;
        };
        let d = self.d.clone();
        let (p, np) = (d.gid(parent), d.gid(newparent));
        let (n, nn) = (name.to_owned(), newname.to_owned());
        self.spawn(async move {
            let r = match (name_of(&n), name_of(&nn)) {
                (Ok(a), Ok(b)) => d.rename(p, a, np, b, mode).await,
                (Err(e), _) | (_, Err(e)) => Err(e),
            };
            Fs::empty_reply(r, reply);
        });
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let d = self.d.clone();
        let ttl = self.ttl();
        let (id, np) = (d.gid(ino), d.gid(newparent));
        let nn = newname.to_owned();
        self.spawn(async move {
            let r = match name_of(&nn) {
                Ok(n) => d.link(id, np, n).await,
                Err(e) => Err(e),
            };
            Fs::entry_reply(&d, ttl, r, reply);
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let d = self.d.clone();
        let id = d.gid(ino);
        self.spawn(async move {
            match d.open(id, flags.0).await {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
                Err(e) => {
                    tracing::debug!(id, "open failed");
                    reply.error(errno(&e))
                }
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let d = self.d.clone();
        self.spawn(async move {
            match d.read(fh.0, offset, size).await {
                Ok(b) => reply.data(&b),
                Err(e) => {
                    tracing::warn!(error = %e, "read failed");
                    reply.error(errno(&e))
                }
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let d = self.d.clone();
        // Fast path: the staged copy exists, write it on this thread.
        if let Ok(h) = d.handle(fh.0)
            && h.write
            && let Some(sf) = &h.staged
            && let Ok(r) = sf.write(offset, data, h.append, d.staging.delay)
        {
            match r {
                Ok(_) => reply.written(data.len() as u32),
                Err(e) => reply.error(errno(&e)),
            }
            return;
        }
        let data = data.to_vec();
        self.spawn(async move {
            match d.write(fh.0, offset, &data).await {
                Ok(n) => reply.written(n),
                Err(e) => {
                    tracing::debug!(fh = fh.0, offset, "write failed");
                    reply.error(errno(&e))
                }
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        Fs::empty_reply(self.d.flush(fh.0), reply);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.d.release(fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let d = self.d.clone();
        let id = d.gid(ino);
        self.spawn(async move {
            Fs::empty_reply(d.fsync(id).await, reply);
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let d = self.d.clone();
        let id = d.gid(ino);
        self.spawn(async move {
            match d.entry(id).await {
                Ok(me) if is_dir(&me) => {
                    let fh = d.add_handle(Handle {
                        ino: id,
                        write: false,
                        append: false,
                        last_end: 0,
                        staged: None,
                        dir: Some(Arc::new(DirSnapshot::new())),
                    });
                    // The kernel keeps the listing in its page cache across opens. It drops
                    // it itself when this mount changes the directory, and on
                    // `Drive::inval_dir` when someone else did.
                    d.dir_cached(id);
                    reply.opened(
                        FileHandle(fh),
                        FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
                    );
                }
                Ok(_) => reply.error(fuser::Errno::ENOTDIR),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let d = self.d.clone();
        self.spawn(async move {
            let items = match snapshot(&d, fh).await {
                Ok(v) => v,
                Err(e) => return reply.error(e),
            };
            for (next, (attr, name)) in from_offset(&items, offset) {
                if reply.add(attr.ino, next, attr.kind, name) {
                    break;
                }
            }
            reply.ok();
        });
    }

    fn readdirplus(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let d = self.d.clone();
        let ttl = self.ttl();
        self.spawn(async move {
            let items = match snapshot(&d, fh).await {
                Ok(v) => v,
                Err(e) => return reply.error(e),
            };
            for (next, (attr, name)) in from_offset(&items, offset) {
                if reply.add(attr.ino, next, name, &ttl, attr, Generation(0)) {
                    break;
                }
            }
            reply.ok();
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.d.take_handle(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Namespace changes are committed at the gateway before they return.
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let d = self.d.clone();
        self.spawn(async move {
            match d.statfs().await {
                Ok(s) => {
                    let (total, avail) = if s.quota_bytes > 0 {
                        (
                            s.quota_bytes,
                            s.quota_bytes.saturating_sub(s.quota_used_bytes),
                        )
                    } else {
                        (s.capacity_bytes, s.available_bytes)
                    };
                    let files = s.files;
                    reply.statfs(
                        total / BSIZE,
                        avail / BSIZE,
                        avail / BSIZE,
                        files + 1_000_000,
                        1_000_000,
                        BSIZE as u32,
                        255,
                        BSIZE as u32,
                    );
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let d = self.d.clone();
        let id = d.gid(ino);
        let name = name.to_owned();
        let value = value.to_vec();
        self.spawn(async move {
            let r = match name_of(&name) {
                Ok(n) => d.set_xattr(id, n, &value, flags).await,
                Err(e) => Err(e),
            };
            Fs::empty_reply(r, reply);
        });
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        // Only `user.` attributes can exist here: the other namespaces (security labels,
        // POSIX ACLs, trusted) are not supported, as setxattr says. `ls -l` asks every entry
        // for `security.selinux` and `system.posix_acl_access`; EOPNOTSUPP, answered on the
        // spot, tells it (coreutils caches it per device) to stop asking after the first.
        if !name.as_encoded_bytes().starts_with(b"user.") {
            reply.error(fuser::Errno::EOPNOTSUPP);
            return;
        }
        let d = self.d.clone();
        let id = d.gid(ino);
        let name = name.to_owned();
        self.spawn(async move {
            let r = match name_of(&name) {
                Ok(n) => d.get_xattr(id, n).await,
                Err(e) => Err(e),
            };
            xattr_reply(r, size, reply);
        });
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let d = self.d.clone();
        let id = d.gid(ino);
        self.spawn(async move {
            xattr_reply(d.list_xattr(id).await, size, reply);
        });
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let d = self.d.clone();
        let id = d.gid(ino);
        let name = name.to_owned();
        self.spawn(async move {
            let r = match name_of(&name) {
                Ok(n) => d.remove_xattr(id, n).await,
                Err(e) => Err(e),
            };
            Fs::empty_reply(r, reply);
        });
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        let d = self.d.clone();
        let id = d.gid(ino);
        self.spawn(async move {
            Fs::empty_reply(d.entry(id).await.map(|_| ()), reply);
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let d = self.d.clone();
        let ttl = self.ttl();
        let parent = d.gid(parent);
        let name = name.to_owned();
        let who = Fs::caller(req, umask);
        self.spawn(async move {
            let r = async {
                let n = name_of(&name)?;
                // The name may exist already (the kernel had not looked it up, or another
                // writer made it): O_EXCL fails, otherwise open it (this works offline too).
                let existing = match d.store.lookup(parent, n)? {
                    Some(id) => d.store.entry(id)?,
                    None => None,
                };
                let e = match existing {
                    Some(_) if flags & libc::O_EXCL != 0 => {
                        return Err(Error::Exists(n.to_string()));
                    }
                    Some(e) => e,
                    None => match d.create_file(parent, n, mode, who).await {
                        Ok(e) => e,
                        Err(e) if flags & libc::O_EXCL == 0 && errno(&e).code() == libc::EEXIST => {
                            d.lookup(parent, n).await?
                        }
                        Err(e) => return Err(e),
                    },
                };
                if is_dir(&e) {
                    return Err(Error::IsDir(n.to_string()));
                }
                let nothing_to_cut =
                    e.size == 0 && d.staging.get(e.id).is_none_or(|sf| sf.lock().size == 0);
                let e = if flags & libc::O_TRUNC != 0 && !nothing_to_cut {
                    d.setattr(
                        e.id,
                        SetAttrs {
                            size: Some(0),
                            ..Default::default()
                        },
                    )
                    .await?
                } else {
                    e
                };
                let fh = d.open(e.id, flags).await?;
                Ok((e, fh))
            }
            .await;
            match r {
                Ok((e, fh)) => reply.created(
                    &ttl,
                    &d.attr(&e),
                    Generation(0),
                    FileHandle(fh),
                    FopenFlags::FOPEN_KEEP_CACHE,
                ),
                Err(e) => {
                    tracing::debug!(parent, "create failed");
                    reply.error(errno(&e))
                }
            }
        });
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let d = self.d.clone();
        self.spawn(async move {
            Fs::empty_reply(d.fallocate(fh.0, offset, length, mode).await, reply);
        });
    }
}

fn xattr_reply(r: Result<Vec<u8>>, size: u32, reply: ReplyXattr) {
    match r {
        Ok(v) if size == 0 => reply.size(v.len() as u32),
        Ok(v) if v.len() <= size as usize => reply.data(&v),
        Ok(_) => reply.error(fuser::Errno::ERANGE),
        Err(e) => reply.error(errno(&e)),
    }
}
