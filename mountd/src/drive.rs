//! The drive's state and the operations the FUSE layer calls. Namespace reads are answered
//! from the metadata cache when it can (a directory listed once, kept current by the journal
//! stream); everything else goes to the gateway and the answer is cached.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cyxcloud_client::{id_ref, path_ref};
use cyxcloud_proto::{ErrorCode, v1};
use fuser::{FileAttr, FileType, INodeNo};

use crate::chunkcache::ChunkCache;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::ids::{self, IdPool};
use crate::remote::Remote;
use crate::staging::{StagedFile, Staging, now_ns};
use crate::store::{MetaStore, Mutation, SqliteStore};

/// The gateway's root inode (buckets are its children).
pub const GATEWAY_ROOT: u64 = 1;
/// Longest name of one path segment.
pub const MAX_NAME: usize = 255;

/// A decoded layout: (version, layout, when fetched).
pub type CachedLayout = (u64, Arc<v1::GetLayoutResponse>, Instant);

/// A kernel cache invalidation.
#[derive(Debug)]
pub enum Inval {
    Entry(INodeNo, String),
    Inode(INodeNo, bool),
}

/// One open file or directory.
#[derive(Debug, Clone)]
pub struct Handle {
    pub ino: u64,
    pub write: bool,
    pub append: bool,
    /// End of the last read, to detect sequential access.
    pub last_end: u64,
    /// The open file uses a staged copy (counted in its `open`).
    pub staged: Option<Arc<StagedFile>>,
    /// An open directory: its snapshot for readdir, taken at the first readdir (a kernel that
    /// serves the listing from its own cache never asks).
    pub dir: Option<Arc<DirSnapshot>>,
}

/// `(bucket, directory)` of a pending file from where it was made (`bucket/dir/name`).
fn split_made_at(made_at: &str, name: &str) -> Option<(String, String)> {
    let rest = made_at.strip_suffix(name)?.strip_suffix('/')?;
    let (bucket, dir) = rest.split_once('/').unwrap_or((rest, ""));
    (!bucket.is_empty()).then(|| (bucket.to_string(), dir.to_string()))
}

/// What [`Drive::rename_seen`] changed in the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    /// The old name still named the entry and was dropped.
    pub old_dropped: bool,
    /// The new name was added.
    pub new_added: bool,
    /// The cached entry was older than the event's and was replaced.
    pub refreshed: bool,
}

/// The entries of an open directory, `(attributes, name)`, in readdir order.
pub type DirSnapshot = tokio::sync::OnceCell<Vec<(FileAttr, String)>>;

pub struct Drive {
    pub cfg: Config,
    pub store: Arc<dyn MetaStore>,
    pub remote: Remote,
    pub chunks: ChunkCache,
    pub staging: Staging,
    /// Gateway id of the mount root (the gateway root, or the bucket).
    pub root: u64,
    pub handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    /// Kernel cache invalidations, performed on their own thread: a notification can block
    /// on kernel locks held by requests that wait for this daemon's answers.
    pub inval: OnceLock<std::sync::mpsc::Sender<Inval>>,
    /// Directories the kernel may hold a listing of (opened with `FOPEN_CACHE_DIR`).
    cached_dirs: Mutex<std::collections::HashSet<u64>>,
    /// Layouts decoded recently: ino -> (version, layout, fetched).
    pub layouts: Mutex<HashMap<u64, CachedLayout>>,
    /// Versions this mount committed itself (their journal events need no data invalidation).
    pub own_versions: Mutex<HashSet<(u64, u64)>>,
    /// Single-flight fetches per chunk id.
    pub fetching: Mutex<HashMap<[u8; 32], Arc<tokio::sync::Mutex<()>>>>,
    pub started: SystemTime,
    pub statfs: Mutex<Option<v1::StatFsResponse>>,
    /// Serializes read-modify-write of cached entries.
    patch_lock: Mutex<()>,
    /// Names this mount removed or moved away, `(parent, name, inode)`, until the journal
    /// reports that change. Events older than it (the Create or upload Update of a file
    /// unlinked a moment later) still carry the old name and must not bring it back.
    departed: Mutex<HashSet<(u64, String, u64)>>,
    /// Itself, for tasks spawned from `&self` (set by [`Drive::into_arc`]).
    pub this: OnceLock<std::sync::Weak<Drive>>,
    /// Inode ids the gateway reserved for this mount's new files (`ReserveIds`): a create is
    /// answered locally under one of them and reaches the gateway with the file's bytes.
    ids: Mutex<IdPool>,
    /// A refill of `ids` is in flight.
    refilling: std::sync::atomic::AtomicBool,
    /// Lookups the cache could not answer, per directory not listed yet, and how many start
    /// a listing of it.
    missed: Mutex<HashMap<u64, (u32, u32)>>,
    /// Listings started by those lookups, until they end (then `true` is sent).
    listing: Mutex<HashMap<u64, tokio::sync::watch::Sender<bool>>>,
}

/// Ids asked for at a time, and the stock below which more are fetched in the background.
const ID_BATCH: u32 = 512;
const ID_LOW: usize = 128;
/// Lookups in a directory the cache cannot answer before the directory is listed.
const LIST_AFTER_LOOKUPS: u32 = 16;
/// Listings of one directory tried before one is served without being cached.
const LISTING_TRIES: usize = 3;
/// How long a lookup waits for a listing of its directory in flight before asking itself.
const LISTING_WAIT: Duration = Duration::from_secs(2);

impl std::fmt::Debug for Drive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drive")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

/// A lock file keeps two daemons off one cache directory.
pub fn lock_cache_dir(cfg: &Config) -> Result<std::fs::File> {
    use std::io::Write;
    std::fs::create_dir_all(&cfg.cache_dir)?;
    let p = cfg.cache_dir.join("mountd.lock");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&p)?;
    if !try_flock(&f) {
        let pid = std::fs::read_to_string(&p).unwrap_or_default();
        return Err(Error::CacheInUse {
            path: cfg.cache_dir.display().to_string(),
            pid: pid.trim().to_string(),
        });
    }
    f.set_len(0)?;
    write!(f, "{}", std::process::id())?;
    Ok(f)
}

#[allow(unsafe_code)]
fn try_flock(f: &std::fs::File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: flock(2) on a valid, owned descriptor; no memory is passed.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

impl Drive {
    /// Opens the caches in the cache directory and resolves the mount root (from the gateway,
    /// or from the cache when it is unreachable).
    pub async fn start(cfg: Config) -> Result<Drive> {
        std::fs::create_dir_all(&cfg.cache_dir)?;
        let store: Arc<dyn MetaStore> =
            Arc::new(SqliteStore::open(&cfg.cache_dir.join("meta.db"))?);
        let chunks =
            ChunkCache::open(&cfg.cache_dir.join("chunks"), cfg.cache_size, store.clone())?;
        let staging = Staging::open(
            &cfg.cache_dir.join("staging"),
            store.clone(),
            cfg.upload_delay,
            cfg.queue_capacity,
        )?;
        let remote = Remote::new(&cfg);
        let used_to = store
            .staged()?
            .iter()
            .filter(|r| r.pending.is_some())
            .map(|r| r.ino)
            .chain(store.kv(ids::USED_KEY)?.and_then(|v| v.parse().ok()))
            .max()
            .unwrap_or(0);
        let ids = IdPool::load(store.kv(ids::POOL_KEY)?.as_deref(), used_to, now_ns());
        let root = match &cfg.bucket {
            None => GATEWAY_ROOT,
            Some(b) => resolve_bucket(&remote, store.as_ref(), b).await?,
        };
        Ok(Drive {
            cfg,
            store,
            remote,
            chunks,
            staging,
            root,
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            inval: OnceLock::new(),
            cached_dirs: Mutex::new(Default::default()),
            layouts: Mutex::new(HashMap::new()),
            own_versions: Mutex::new(HashSet::new()),
            fetching: Mutex::new(HashMap::new()),
            started: SystemTime::now(),
            statfs: Mutex::new(None),
            patch_lock: Mutex::new(()),
            departed: Mutex::new(HashSet::new()),
            this: OnceLock::new(),
            ids: Mutex::new(ids),
            refilling: std::sync::atomic::AtomicBool::new(false),
            missed: Mutex::new(HashMap::new()),
            listing: Mutex::new(HashMap::new()),
        })
    }

    pub fn into_arc(self) -> Arc<Drive> {
        let a = Arc::new(self);
        let _ = a.this.set(Arc::downgrade(&a));
        a
    }

    // ---- inode numbers ----

    /// Gateway id for a kernel inode number.
    pub fn gid(&self, ino: INodeNo) -> u64 {
        if ino.0 == 1 { self.root } else { ino.0 }
    }

    /// Kernel inode number for a gateway id.
    pub fn kino(&self, id: u64) -> INodeNo {
        if id == self.root {
            INodeNo(1)
        } else if id == 1 {
            // Only reachable in bucket mode, where the gateway root is never shown.
            INodeNo(u64::MAX - 1)
        } else {
            INodeNo(id)
        }
    }

    /// Whether `dir` is the gateway root (its children are buckets).
    pub fn is_bucket_level(&self, dir: u64) -> bool {
        dir == GATEWAY_ROOT && self.root == GATEWAY_ROOT
    }

    // ---- handles ----

    pub fn add_handle(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(fh, h);
        fh
    }

    pub fn handle(&self, fh: u64) -> Result<Handle> {
        self.handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&fh)
            .cloned()
            .ok_or(Error::BadHandle(fh))
    }

    pub fn update_handle(&self, fh: u64, f: impl FnOnce(&mut Handle)) {
        if let Some(h) = self
            .handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&fh)
        {
            f(h);
        }
    }

    pub fn take_handle(&self, fh: u64) -> Option<Handle> {
        self.handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&fh)
    }

    /// The staged copy an open handle on `ino` uses, if any.
    pub fn open_copy(&self, ino: u64) -> Option<Arc<StagedFile>> {
        self.handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .find(|h| h.ino == ino && h.staged.is_some())
            .and_then(|h| h.staged.clone())
    }

    /// Open handles on `ino`.
    pub fn open_count(&self, ino: u64) -> usize {
        self.handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|h| h.ino == ino && h.dir.is_none())
            .count()
    }

    // ---- attributes ----

    fn root_entry(&self) -> v1::Entry {
        let t = self
            .started
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        v1::Entry {
            id: GATEWAY_ROOT,
            kind: v1::EntryKind::Directory as i32,
            mode: 0o755,
            uid: self.cfg.uid.unwrap_or_else(current_uid),
            gid: self.cfg.gid.unwrap_or_else(current_gid),
            atime_ns: t,
            mtime_ns: t,
            ctime_ns: t,
            btime_ns: t,
            nlink: 2,
            ..Default::default()
        }
    }

    /// The kernel's view of an entry (a staged copy's size and mtime win).
    pub fn attr(&self, e: &v1::Entry) -> FileAttr {
        let kind = kind_of(e);
        let (mut size, mut mtime_ns) = (e.size, e.mtime_ns);
        if kind == FileType::RegularFile {
            let sf = self.staging.get(e.id).or_else(|| {
                // An open-unlinked file lives in its orphan copy.
                (e.nlink == 0).then(|| self.open_copy(e.id)).flatten()
            });
            if let Some(sf) = sf {
                let st = sf.lock();
                size = st.size;
                mtime_ns = st.mtime_ns;
            }
        }
        if kind == FileType::Symlink {
            size = e.symlink_target.len() as u64;
        }
        let default_mode = match kind {
            FileType::Directory => 0o755,
            _ => 0o644,
        };
        let perm = if e.mode & 0o7777 == 0 && e.mode == 0 {
            default_mode
        } else {
            e.mode & 0o7777
        };
        let nlink = match kind {
            FileType::Directory => e.nlink.max(2),
            // 0 is real: an open file whose last name is gone.
            _ => e.nlink,
        };
        FileAttr {
            ino: self.kino(e.id),
            size,
            blocks: size.div_ceil(512),
            atime: time(e.atime_ns),
            mtime: time(mtime_ns),
            ctime: time(e.ctime_ns),
            crtime: time(e.btime_ns),
            kind,
            perm: perm as u16,
            nlink,
            uid: self.cfg.uid.unwrap_or(e.uid),
            gid: self.cfg.gid.unwrap_or(e.gid),
            rdev: 0,
            blksize: 128 * 1024,
            flags: 0,
        }
    }

    // ---- the cache ----

    /// Caches an entry the gateway returned (and a name for it when given). An entry older
    /// than the cached one (by journal sequence) does not replace it.
    pub fn remember(&self, e: &v1::Entry, name: Option<(u64, &str)>) -> Result<()> {
        let _g = self.patch_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.remember_locked(e, name)
    }

    fn remember_locked(&self, e: &v1::Entry, name: Option<(u64, &str)>) -> Result<()> {
        let name = match name {
            Some((parent, n)) if self.store.lookup(parent, n)? != Some(e.id) => Some((parent, n)),
            _ => None,
        };
        self.remember_entry_locked(e, name)
    }

    /// [`Drive::remember_locked`] with `name` known to be new to the cache (or `None`).
    fn remember_entry_locked(&self, e: &v1::Entry, name: Option<(u64, &str)>) -> Result<()> {
        let mut batch = Vec::new();
        match self.store.entry(e.id)? {
            Some(c) if c.change_seq > e.change_seq => {}
            Some(c) => {
                let mut e = e.clone();
                if e.xattrs.is_empty() && !c.xattrs.is_empty() && e.change_seq == c.change_seq {
                    e.xattrs = c.xattrs;
                }
                if self.staging.get(e.id).is_some() {
                    // The atime of a staged file is kept here only (set_attr): an entry from
                    // the gateway (its own commit's event, racing the upload's patch) must
                    // not roll it back.
                    e.atime_ns = c.atime_ns;
                }
                batch.push(Mutation::PutEntry(e));
            }
            None => batch.push(Mutation::PutEntry(e.clone())),
        }
        if let Some((parent, n)) = name {
            batch.push(Mutation::PutDentry {
                parent,
                name: n.to_string(),
                ino: e.id,
            });
        }
        self.store.apply(&batch)
    }

    /// Caches a new name `parent/name` for `e` and, if the cache did not have that name yet,
    /// counts it in the parent (a directory adds a link; the times move). This mount's own
    /// call and the journal stream both report each new name; the check and the count happen
    /// under one lock, so whichever comes second changes nothing. Returns whether it was new.
    pub fn link_name(&self, e: &v1::Entry, parent: u64, name: &str) -> Result<bool> {
        let _g = self.patch_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.departed_set()
            .remove(&(parent, name.to_string(), e.id));
        self.link_name_locked(e, parent, name)
    }

    /// [`Drive::link_name`] for a name the journal reports: refused (`false`) while this mount
    /// has removed or moved that name away and the journal has not caught up with it yet.
    pub fn link_name_seen(&self, e: &v1::Entry, parent: u64, name: &str) -> Result<bool> {
        let _g = self.patch_lock.lock().unwrap_or_else(|e| e.into_inner());
        if self
            .departed_set()
            .contains(&(parent, name.to_string(), e.id))
        {
            return Ok(false);
        }
        self.link_name_locked(e, parent, name)
    }

    /// Records that this mount removed or moved away `parent/name` of inode `id`.
    pub fn departed(&self, parent: u64, name: &str, id: u64) {
        self.departed_set().insert((parent, name.to_string(), id));
    }

    /// The journal reported the removal of `name` of inode `id` (`parent` when known).
    pub fn departure_seen(&self, parent: Option<u64>, name: &str, id: u64) {
        self.departed_set()
            .retain(|(p, n, i)| !(*i == id && n == name && parent.is_none_or(|q| q == *p)));
    }

    /// The journal reported that `e` moved from `old_parent/old_name` to its current name. The
    /// cache follows, under the same lock as this mount's own name changes, so a local unlink
    /// or rename of either name made meanwhile is not undone.
    pub fn rename_seen(&self, old_parent: u64, old_name: &str, e: &v1::Entry) -> Result<Moved> {
        let _g = self.patch_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut batch = Vec::new();
        let old_dropped = old_parent != 0 && self.store.lookup(old_parent, old_name)? == Some(e.id);
        if old_dropped {
            batch.push(Mutation::RemoveDentry {
                parent: old_parent,
                name: old_name.to_string(),
            });
        }
        let new_added = self.store.lookup(e.parent_id, &e.name)? != Some(e.id)
            && !self.is_departed(e.parent_id, &e.name, e.id);
        if new_added {
            batch.push(Mutation::PutDentry {
                parent: e.parent_id,
                name: e.name.clone(),
                ino: e.id,
            });
        }
        let refreshed = self
            .store
            .entry(e.id)?
            .is_none_or(|c| c.change_seq < e.change_seq);
        if refreshed {
            batch.push(Mutation::PutEntry(e.clone()));
        }
        self.store.apply(&batch)?;
        Ok(Moved {
            old_dropped,
            new_added,
            refreshed,
        })
    }

    pub fn is_departed(&self, parent: u64, name: &str, id: u64) -> bool {
        self.departed_set()
            .contains(&(parent, name.to_string(), id))
    }

    /// Forgets every pending departure (journal resync: the cache is rebuilt from the gateway).
    pub fn clear_departures(&self) {
        self.departed_set().clear();
    }

    fn departed_set(&self) -> std::sync::MutexGuard<'_, HashSet<(u64, String, u64)>> {
        self.departed.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn link_name_locked(&self, e: &v1::Entry, parent: u64, name: &str) -> Result<bool> {
        let new = self.store.lookup(parent, name)? != Some(e.id);
        self.remember_entry_locked(e, new.then_some((parent, name)))?;
        if new {
            self.touch_dir_locked(parent, is_dir(e) as i32)?;
        }
        Ok(new)
    }

    /// Drops the cached name `parent/name` if it still names `id` (and the entry itself when
    /// `drop_entry`), uncounting it in the parent. Like [`Drive::link_name`], safe to call from
    /// both this mount's call and the journal stream. Returns whether the name was there.
    pub fn unlink_name(&self, parent: u64, name: &str, id: u64, drop_entry: bool) -> Result<bool> {
        let _g = self.patch_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.unlink_name_locked(parent, name, id, drop_entry)
    }

    /// [`Drive::unlink_name`] for a removal this mount made: the name also stays departed
    /// until the journal reports the removal (see [`Drive::link_name_seen`]).
    pub fn unlink_own_name(
        &self,
        parent: u64,
        name: &str,
        id: u64,
        drop_entry: bool,
    ) -> Result<bool> {
        let _g = self.patch_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.departed(parent, name, id);
        self.unlink_name_locked(parent, name, id, drop_entry)
    }

    fn unlink_name_locked(
        &self,
        parent: u64,
        name: &str,
        id: u64,
        drop_entry: bool,
    ) -> Result<bool> {
        if self.store.lookup(parent, name)? != Some(id) {
            return Ok(false);
        }
        let dir = self.store.entry(id)?.is_some_and(|e| is_dir(&e));
        let mut batch = vec![Mutation::RemoveDentry {
            parent,
            name: name.to_string(),
        }];
        if drop_entry {
            batch.push(Mutation::RemoveEntry(id));
        }
        self.store.apply(&batch)?;
        self.touch_dir_locked(parent, -(dir as i32))?;
        Ok(true)
    }

    /// Changes the cached entry of `id` in place (no-op when it is not cached).
    pub fn patch(&self, id: u64, f: impl FnOnce(&mut v1::Entry)) -> Result<()> {
        let _g = self.patch_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.patch_locked(id, f)
    }

    fn patch_locked(&self, id: u64, f: impl FnOnce(&mut v1::Entry)) -> Result<()> {
        if let Some(mut e) = self.store.entry(id)? {
            f(&mut e);
            self.store.apply(&[Mutation::PutEntry(e)])?;
        }
        Ok(())
    }

    /// The entry of `id`: cache first, then the gateway.
    pub async fn entry(&self, id: u64) -> Result<v1::Entry> {
        if id == GATEWAY_ROOT && self.root == GATEWAY_ROOT {
            return Ok(self.root_entry());
        }
        if let Some(e) = self.store.entry(id)? {
            return Ok(e);
        }
        let e = self.fetch_entry(id).await?;
        self.remember(&e, None)?;
        Ok(e)
    }

    /// The entry of `id` as the gateway has it now (GetAttr), not cached.
    pub async fn fetch_entry(&self, id: u64) -> Result<v1::Entry> {
        self.remote
            .control("getattr", |mut c| async move {
                c.get_attr(v1::GetAttrRequest {
                    entry: Some(id_ref(id)),
                })
                .await
            })
            .await
    }

    /// Looks `name` up in `parent`.
    pub async fn lookup(&self, parent: u64, name: &str) -> Result<v1::Entry> {
        check_name(name)?;
        if let Some(id) = self.store.lookup(parent, name)?
            && let Some(e) = self.store.entry(id)?
        {
            return Ok(e);
        }
        if self.store.is_complete(parent)? {
            return Err(Error::NotFound(name.to_string()));
        }
        // A listing of `parent` in flight answers this lookup too, without a gateway call
        // that would change the names it is to install.
        if self.wait_listing(parent).await && self.store.is_complete(parent)? {
            return match self.store.lookup(parent, name)? {
                Some(id) => self.entry(id).await,
                None => Err(Error::NotFound(name.to_string())),
            };
        }
        let n = name.to_string();
        let r = self
            .remote
            .control("lookup", |mut c| async move {
                c.lookup(v1::LookupRequest {
                    parent_id: parent,
                    name: n,
                })
                .await
            })
            .await;
        if !matches!(&r, Err(e) if e.is_unavailable()) {
            self.note_lookup_miss(parent);
        }
        match r {
            Ok(e) => {
                self.remember(&e, Some((parent, name)))?;
                Ok(e)
            }
            Err(e) if e.is_not_found() => Err(Error::NotFound(name.to_string())),
            Err(e) => Err(e),
        }
    }

    /// Counts a lookup in `dir` the cache could not answer; the [`LIST_AFTER_LOOKUPS`]-th
    /// lists the directory in the background, so that the rest (a `stat` of every file, a
    /// thumbnailer opening each) are answered here, as after a readdir.
    fn note_lookup_miss(&self, dir: u64) {
        let start = {
            let mut m = self.missed.lock().unwrap_or_else(|e| e.into_inner());
            if m.len() >= 4096 {
                m.clear();
            }
            let (n, threshold) = m.entry(dir).or_insert((0, LIST_AFTER_LOOKUPS));
            *n += 1;
            *n == *threshold
        };
        if start && let Some(d) = self.this.get().and_then(std::sync::Weak::upgrade) {
            let (done, _) = tokio::sync::watch::channel(false);
            self.listing_lock().insert(dir, done);
            tokio::spawn(async move {
                let cached = match d.fetch_listing(dir).await {
                    Ok(r) => r.is_none(),
                    Err(e) => {
                        tracing::debug!(dir, error = %e, "listing ahead of lookups failed");
                        false
                    }
                };
                if let Some(done) = d.listing_lock().remove(&dir) {
                    done.send_replace(true);
                }
                let mut m = d.missed.lock().unwrap_or_else(|e| e.into_inner());
                if cached {
                    m.remove(&dir);
                } else if let Some((n, threshold)) = m.get_mut(&dir) {
                    // A directory changing under its listings (or failing to list) is listed
                    // again only after four times as many misses: never a listing per few
                    // lookups of a big, busy directory.
                    *n = 0;
                    *threshold = threshold.saturating_mul(4).min(1 << 20);
                }
            });
        }
    }

    /// Waits (a bounded time) for a listing of `dir` started by [`Drive::note_lookup_miss`];
    /// `true` if there was one and it ended.
    async fn wait_listing(&self, dir: u64) -> bool {
        let Some(mut rx) = self.listing_lock().get(&dir).map(|tx| tx.subscribe()) else {
            return false;
        };
        matches!(
            tokio::time::timeout(LISTING_WAIT, rx.wait_for(|done| *done)).await,
            Ok(Ok(_))
        ) || rx.has_changed().is_err()
    }

    fn listing_lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<u64, tokio::sync::watch::Sender<bool>>> {
        self.listing.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The children of a directory, listing it at the gateway unless the cache has it all.
    pub async fn list(&self, dir: u64) -> Result<Vec<(String, v1::Entry)>> {
        if !self.store.is_complete(dir)? {
            match self.fetch_listing(dir).await {
                Ok(None) => {}
                Ok(Some(listing)) => return Ok(listing),
                Err(e) if e.is_unavailable() => {
                    tracing::debug!(dir, "offline: listing what the cache has");
                }
                Err(e) => return Err(e),
            }
        }
        self.store.children_entries(dir)
    }

    /// Lists `dir` at the gateway into the cache, marked complete: `None`. A listing during
    /// which the cache's names in `dir` changed (a create or unlink here, a journal event) is
    /// not installed, since it could undo that change; it is fetched again, and after
    /// [`LISTING_TRIES`] such tries returned instead (`Some`, merged with this mount's files
    /// the gateway does not have yet).
    async fn fetch_listing(&self, dir: u64) -> Result<Option<Vec<(String, v1::Entry)>>> {
        let mut last = Vec::new();
        for _ in 0..LISTING_TRIES {
            let seen = self.store.dir_gen(dir);
            let all = self.remote_listing(dir).await?;
            let mut batch: Vec<Mutation> = Vec::with_capacity(all.len() + 1);
            let mut children = Vec::with_capacity(all.len());
            // Files created here that the gateway does not have yet stay listed.
            let pending = self.staging.pending_in(dir);
            let _g = self.patch_lock.lock().unwrap_or_else(|e| e.into_inner());
            for e in &all {
                children.push((e.name.clone(), e.id));
                if self
                    .store
                    .entry(e.id)?
                    .is_none_or(|c| c.change_seq <= e.change_seq)
                {
                    batch.push(Mutation::PutEntry(e.clone()));
                }
            }
            children.extend(pending);
            batch.push(Mutation::ReplaceChildren { dir, children });
            if self.store.apply_if_unchanged(dir, seen, &batch)? {
                return Ok(None);
            }
            tracing::debug!(dir, "names changed during the listing: listing again");
            last = all;
        }
        let mut out: Vec<(String, v1::Entry)> =
            last.into_iter().map(|e| (e.name.clone(), e)).collect();
        for (name, id) in self.staging.pending_in(dir) {
            if let Some(e) = self.store.entry(id)? {
                out.push((name, e));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Some(out))
    }

    /// Every entry of `dir` at the gateway (the buckets at the top).
    async fn remote_listing(&self, dir: u64) -> Result<Vec<v1::Entry>> {
        let mut all: Vec<v1::Entry> = Vec::new();
        if self.is_bucket_level(dir) {
            let r = self
                .remote
                .control("list buckets", |mut c| async move {
                    c.list_buckets(v1::ListBucketsRequest {}).await
                })
                .await?;
            all = r.buckets;
        } else {
            let mut after = String::new();
            loop {
                let a = after.clone();
                let r = self
                    .remote
                    .control("readdir", |mut c| async move {
                        c.read_dir(v1::ReadDirRequest {
                            directory: Some(id_ref(dir)),
                            after: a,
                            limit: 1000,
                        })
                        .await
                    })
                    .await?;
                let more = r.more && !r.entries.is_empty();
                if let Some(last) = r.entries.last() {
                    after = last.name.clone();
                }
                all.extend(r.entries);
                if !more {
                    break;
                }
            }
        }
        Ok(all)
    }

    // ---- files created here first ----

    /// An inode id for a new file, reserved at the gateway for this mount. Fetches a batch
    /// when none is left, and the next one in the background when few are.
    pub async fn new_id(&self) -> Result<u64> {
        let (id, low) = {
            let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
            (ids.take(now_ns()), ids.len() < ID_LOW)
        };
        if let Some(id) = id {
            if low
                && !self.refilling.swap(true, Ordering::SeqCst)
                && let Some(d) = self.this.get().and_then(std::sync::Weak::upgrade)
            {
                tokio::spawn(async move {
                    if let Err(e) = d.reserve_ids().await {
                        tracing::debug!(error = %e, "cannot reserve inode ids");
                    }
                    d.refilling.store(false, Ordering::SeqCst);
                });
            }
            return Ok(id);
        }
        self.reserve_ids().await?;
        self.ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(now_ns())
            .ok_or_else(|| Error::Offline("the gateway reserved no inode ids".into()))
    }

    /// Adds a batch of reserved ids to the stock.
    pub async fn reserve_ids(&self) -> Result<()> {
        let r = self
            .remote
            .control("reserve ids", |mut c| async move {
                c.reserve_ids(v1::ReserveIdsRequest { count: ID_BATCH })
                    .await
            })
            .await?;
        let pool = {
            let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
            ids.add(r.ids, r.expires_ns);
            ids.encode()
        };
        self.store.apply(&[Mutation::SetKv {
            key: ids::POOL_KEY.into(),
            value: pool,
        }])
    }

    /// Makes a file this mount created (still only local) exist at the gateway, empty; a
    /// no-op for every other file. Every operation the gateway performs by the file's id or
    /// name calls this first.
    pub async fn ensure_created(&self, id: u64) -> Result<()> {
        match self.staging.lock_pending(id).await {
            Some((sf, _g)) => self.create_pending(&sf, &[]).await.map(drop),
            None => Ok(()),
        }
    }

    /// Creates pending file `sf` at the gateway with `data` as its content (the caller holds
    /// `sf.create_lock`). `None` when it was not pending any more. On success the file is
    /// no longer pending; when `data` is all it holds, the returned entry is its committed
    /// version.
    pub async fn create_pending(&self, sf: &StagedFile, data: &[u8]) -> Result<Option<v1::Entry>> {
        let (parent, name, mode, uid, gid, mtime_ns, made_at) = {
            let st = sf.lock();
            let Some((parent, name)) = st.pending.clone() else {
                return Ok(None);
            };
            if st.removed && !st.orphan {
                return Ok(None);
            }
            let made_at = st.display.clone();
            (parent, name, st.mode, st.uid, st.gid, st.mtime_ns, made_at)
        };
        let (bucket, dir) = match self.locate(parent).await {
            // Its directory was removed elsewhere (unseen by the gateway, this file did not
            // keep it from being removed): the file is made where it was made, and the
            // gateway makes the directories again. Dropping it would lose what was written.
            Err(e) if e.is_not_found() => match split_made_at(&made_at, &name) {
                Some(at) => {
                    tracing::warn!(ino = sf.ino, path = %made_at, "the directory of a new file was removed elsewhere; making it again");
                    at
                }
                None => return Err(e),
            },
            r => r?,
        };
        let at = |n: &str| {
            if dir.is_empty() {
                n.to_string()
            } else {
                format!("{dir}/{n}")
            }
        };
        let create = |path: String| {
            let (bucket, data) = (bucket.clone(), data.to_vec());
            let ino = sf.ino;
            async move {
                self.remote
                    .control("create", |mut c| async move {
                        c.write_inline(v1::WriteInlineRequest {
                            target: Some(path_ref(&bucket, &path)),
                            etag: hex::encode(<md5::Md5 as md5::Digest>::digest(&data)),
                            data,
                            content_type: String::new(),
                            user_metadata: Default::default(),
                            mode,
                            uid,
                            gid,
                            if_version: 0,
                            if_absent: true,
                            mtime_ns: Some(mtime_ns),
                            new_id: ino,
                        })
                        .await
                    })
                    .await
            }
        };
        let e = match create(at(&name)).await {
            Err(e)
                if matches!(
                    e.code(),
                    Some(ErrorCode::PreconditionFailed | ErrorCode::AlreadyExists)
                ) =>
            {
                // Someone else made this name since the create was answered here: this
                // mount's file replaces it, as a later writer's would.
                let side = format!(".{name}.cyxcloud-{}", sf.ino);
                let e = create(at(&side)).await?;
                self.rename_at_gateway(parent, &side, parent, &name, v1::RenameFlags::None)
                    .await?;
                v1::Entry {
                    path: at(&name),
                    name,
                    ..e
                }
            }
            r => r?,
        };
        sf.lock().pending = None;
        self.staging.journal(sf)?;
        Ok(Some(e))
    }

    /// `(bucket, path)` of directory `dir` from the cached names alone (None when a link of
    /// the chain up to the buckets is not cached).
    pub fn locate_cached(&self, dir: u64) -> Result<Option<(String, String)>> {
        let mut parts = Vec::new();
        let mut cur = dir;
        let mut hops = 0;
        while cur != GATEWAY_ROOT && hops < 4096 {
            match self.store.names(cur)?.into_iter().next() {
                Some((parent, name)) => {
                    parts.push(name);
                    cur = parent;
                }
                None => break,
            }
            hops += 1;
        }
        if cur == GATEWAY_ROOT && !parts.is_empty() {
            parts.reverse();
            let bucket = parts.remove(0);
            return Ok(Some((bucket, parts.join("/"))));
        }
        Ok(None)
    }

    /// `(bucket, path)` of a directory, from cached names (or the gateway).
    pub async fn locate(&self, dir: u64) -> Result<(String, String)> {
        if let Some(r) = self.locate_cached(dir)? {
            return Ok(r);
        }
        let e = self.fetch_entry(dir).await?;
        let r = (e.bucket.clone(), e.path.clone());
        self.remember(
            &e,
            (e.parent_id != 0).then_some((e.parent_id, e.name.as_str())),
        )?;
        Ok(r)
    }

    /// The bucket a directory belongs to ("" for the gateway root).
    pub async fn bucket_of(&self, dir: u64) -> Result<String> {
        if dir == GATEWAY_ROOT {
            return Ok(String::new());
        }
        Ok(self.locate(dir).await?.0)
    }

    /// Bumps a directory's times (and link count) after a change made through this mount, so
    /// the next stat sees it without a round trip.
    pub fn touch_dir(&self, dir: u64, nlink_delta: i32) -> Result<()> {
        let _g = self.patch_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.touch_dir_locked(dir, nlink_delta)
    }

    fn touch_dir_locked(&self, dir: u64, nlink_delta: i32) -> Result<()> {
        let now = crate::staging::now_ns();
        self.patch_locked(dir, |e| {
            e.mtime_ns = now;
            e.ctime_ns = now;
            e.nlink = (e.nlink as i64 + nlink_delta as i64).max(2) as u32;
        })
    }

    /// Asks the kernel to forget a name (after a change it did not make).
    pub fn inval_entry(&self, parent: u64, name: &str) {
        if let Some(tx) = self.inval.get() {
            let _ = tx.send(Inval::Entry(self.kino(parent), name.to_string()));
        }
    }

    /// Asks the kernel to drop an inode's attributes (and cached data unless `attrs_only`).
    pub fn inval_inode(&self, id: u64, attrs_only: bool) {
        if let Some(tx) = self.inval.get() {
            let _ = tx.send(Inval::Inode(self.kino(id), attrs_only));
        }
    }

    /// Directory `id` was opened with its listing cacheable by the kernel.
    pub fn dir_cached(&self, id: u64) {
        self.cached_dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id);
    }

    /// Someone else changed directory `id`: the kernel drops its cached listing (its page
    /// cache). The kernel's own entry invalidation does not: it leaves the listing alone when
    /// it never looked the changed name up.
    pub fn inval_dir(&self, id: u64) {
        let cached = self
            .cached_dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&id);
        if cached {
            self.inval_inode(id, false);
        }
    }

    /// Every cached listing goes (the namespace cache was dropped).
    pub fn inval_all_dirs(&self) {
        let dirs: Vec<u64> = self
            .cached_dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied()
            .collect();
        for id in dirs {
            self.inval_inode(id, false);
        }
    }

    /// Starts the thread that sends invalidations to the kernel.
    pub fn start_invalidator(&self, n: fuser::Notifier) {
        let (tx, rx) = std::sync::mpsc::channel::<Inval>();
        if self.inval.set(tx).is_err() {
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("mountd-inval".into())
            .spawn(move || {
                for msg in rx {
                    let r = match &msg {
                        Inval::Entry(p, name) => n.inval_entry(*p, std::ffi::OsStr::new(name)),
                        Inval::Inode(i, attrs_only) => {
                            n.inval_inode(*i, if *attrs_only { -1 } else { 0 }, 0)
                        }
                    };
                    if let Err(e) = r
                        && e.raw_os_error() != Some(libc::ENOENT)
                    {
                        tracing::debug!(?msg, error = %e, "kernel invalidation failed");
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the invalidation thread");
        }
    }

    /// Records a version this mount committed.
    pub fn own_version(&self, id: u64, version: u64) {
        let mut s = self.own_versions.lock().unwrap_or_else(|e| e.into_inner());
        if s.len() > 100_000 {
            s.clear();
        }
        s.insert((id, version));
    }

    pub fn is_own_version(&self, id: u64, version: u64) -> bool {
        self.own_versions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&(id, version))
    }

    /// `statfs` figures (the last known ones when offline).
    pub async fn statfs(&self) -> Result<v1::StatFsResponse> {
        let r = self
            .remote
            .control("statfs", |mut c| async move {
                c.stat_fs(v1::StatFsRequest {}).await
            })
            .await;
        match r {
            Ok(s) => {
                *self.statfs.lock().unwrap_or_else(|e| e.into_inner()) = Some(s);
                Ok(s)
            }
            Err(e) if e.is_unavailable() => Ok(self
                .statfs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .unwrap_or_default()),
            Err(e) => Err(e),
        }
    }
}

async fn resolve_bucket(remote: &Remote, store: &dyn MetaStore, bucket: &str) -> Result<u64> {
    let key = format!("bucket-id:{bucket}");
    let b = bucket.to_string();
    let r = remote
        .control("getattr", |mut c| async move {
            c.get_attr(v1::GetAttrRequest {
                entry: Some(path_ref(&b, "")),
            })
            .await
        })
        .await;
    match r {
        Ok(e) => {
            store.apply(&[
                Mutation::PutEntry(e.clone()),
                Mutation::PutDentry {
                    parent: GATEWAY_ROOT,
                    name: bucket.to_string(),
                    ino: e.id,
                },
                Mutation::SetKv {
                    key,
                    value: e.id.to_string(),
                },
            ])?;
            Ok(e.id)
        }
        Err(e) if e.is_unavailable() => match store.kv(&key)? {
            Some(v) => v.parse().map_err(|_| Error::Corrupt {
                what: key,
                detail: v,
            }),
            None => Err(e),
        },
        Err(e) if e.is_not_found() => {
            Err(Error::Config(format!("bucket {bucket:?} does not exist")))
        }
        Err(e) => Err(e),
    }
}

pub fn kind_of(e: &v1::Entry) -> FileType {
    match v1::EntryKind::try_from(e.kind) {
        Ok(v1::EntryKind::Directory) | Ok(v1::EntryKind::Bucket) => FileType::Directory,
        Ok(v1::EntryKind::Symlink) => FileType::Symlink,
        _ => FileType::RegularFile,
    }
}

pub fn is_dir(e: &v1::Entry) -> bool {
    kind_of(e) == FileType::Directory
}

pub fn time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_nanos(ns.unsigned_abs()))
            .unwrap_or(UNIX_EPOCH)
    }
}

pub fn ns_of(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i64,
        Err(e) => -(e.duration().as_nanos() as i64),
    }
}

/// Validates a name from the kernel.
pub fn check_name(name: &str) -> Result<()> {
    if name.len() > MAX_NAME {
        return Err(Error::NameTooLong);
    }
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(Error::Invalid(format!("bad name {name:?}")));
    }
    Ok(())
}

#[allow(unsafe_code)]
pub fn current_uid() -> u32 {
    // SAFETY: getuid(2) cannot fail and touches no memory.
    unsafe { libc::getuid() }
}

#[allow(unsafe_code)]
pub fn current_gid() -> u32 {
    // SAFETY: getgid(2) cannot fail and touches no memory.
    unsafe { libc::getgid() }
}

#[cfg(test)]
mod tests {
    use super::split_made_at;

    #[test]
    fn where_a_pending_file_was_made() {
        let at = |a: &str, n: &str| split_made_at(a, n);
        assert_eq!(at("b/d/e/f", "f"), Some(("b".into(), "d/e".into())));
        assert_eq!(at("b/f", "f"), Some(("b".into(), String::new())));
        // Only a name (made where the chain up to its bucket was not cached) or another name:
        // nowhere to make it.
        assert_eq!(at("f", "f"), None);
        assert_eq!(at("b/d/g", "f"), None);
        assert_eq!(at("b/d/xf", "f"), None);
        assert_eq!(at("/f", "f"), None);
    }
}
