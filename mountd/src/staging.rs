//! Staged writes: a written file's current bytes live in `staging/<ino>` in the cache
//! directory, and a row in the metadata store's `staged` table (the write journal) says that
//! file still has to be uploaded. The row is written before the first write to a file returns
//! and deleted only after the gateway committed everything written, so a crash or `kill -9`
//! of the daemon loses nothing: the next start finds the rows and uploads the files.
//!
//! Each staged file counts generations: every change bumps `gen`; an upload that started at
//! generation `g` marks `uploaded_gen = g` once committed. `fsync` waits for
//! `uploaded_gen >= gen-at-fsync`. Uploads are queued in order (a bounded channel) by a
//! scheduler: after a short delay from the last write, at close, or at once for `fsync`.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc, watch};

use crate::error::{Error, Result};
use crate::store::{MetaStore, Mutation, StagedRec};

/// Longest wait between upload retries.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Where a staged file is in its life, for the xattr and the status file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Written, waiting for its upload delay or a free upload slot.
    Pending,
    Queued,
    Uploading,
    /// The last upload failed; it is retried.
    Retrying,
    /// Everything written is committed (the local copy is kept while the file is open).
    Durable,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Queued => "queued",
            Phase::Uploading => "uploading",
            Phase::Retrying => "retrying",
            Phase::Durable => "durable",
        }
    }
}

#[derive(Debug)]
pub struct StagedState {
    pub size: u64,
    pub generation: u64,
    pub uploaded_gen: u64,
    pub uploading: bool,
    pub queued: bool,
    /// Open file handles using this copy.
    pub open: usize,
    /// Unlinked while open: never uploaded, deleted at the last close.
    pub orphan: bool,
    /// Dropped from the staging set: a writer holding this must look again.
    pub removed: bool,
    pub mtime_ns: i64,
    /// An atime set (utimens) while the file is staged: it stays local until the upload has
    /// committed, then is sent to the gateway (a commit carries only the mtime). Kept in
    /// memory only: lost if the mount restarts before the upload ends.
    pub atime_ns: Option<i64>,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub display: String,
    pub created_ns: i64,
    pub due: Option<Instant>,
    pub error: Option<String>,
    /// The errno of the last failed upload (EIO when it had no better one); 0 after success.
    pub errno: i32,
    pub failures: u32,
    /// Created by this mount under a reserved id and not yet at the gateway: the
    /// `(parent, name)` to create it as. Every operation but read, write and close makes it
    /// exist there first (`Drive::ensure_created`); a small file's upload creates it with its
    /// bytes in one call.
    pub pending: Option<(u64, String)>,
}

impl StagedState {
    pub fn dirty(&self) -> bool {
        self.generation > self.uploaded_gen && !self.orphan
    }

    pub fn phase(&self) -> Phase {
        if !self.dirty() {
            Phase::Durable
        } else if self.uploading {
            Phase::Uploading
        } else if self.queued {
            Phase::Queued
        } else if self.error.is_some() {
            Phase::Retrying
        } else {
            Phase::Pending
        }
    }

    fn rec(&self, ino: u64) -> StagedRec {
        StagedRec {
            ino,
            path: self.display.clone(),
            size: self.size,
            mtime_ns: self.mtime_ns,
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            created_ns: self.created_ns,
            pending: self.pending.clone(),
        }
    }
}

/// Upload progress a waiter can watch: `(uploaded_gen, failures)`.
pub type Progress = (u64, u32);

/// One staged file.
pub struct StagedFile {
    pub ino: u64,
    pub path: PathBuf,
    file: File,
    pub st: Mutex<StagedState>,
    progress: watch::Sender<Progress>,
    /// Held while a pending file is being created at the gateway.
    pub create_lock: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for StagedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StagedFile")
            .field("ino", &self.ino)
            .finish_non_exhaustive()
    }
}

/// A write landed on a staged file that was dropped meanwhile: look it up again.
#[derive(Debug)]
pub struct Stale;

impl StagedFile {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, StagedState> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn subscribe(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    pub fn publish(&self) {
        let (g, f) = {
            let st = self.lock();
            (st.uploaded_gen, st.failures)
        };
        self.progress.send_replace((g, f));
    }

    /// Writes at `offset`; `append` writes at the end instead. Returns the bytes written and
    /// the offset used.
    pub fn write(
        &self,
        offset: u64,
        data: &[u8],
        append: bool,
        delay: Duration,
    ) -> std::result::Result<Result<u64>, Stale> {
        let mut st = self.lock();
        if st.removed {
            return Err(Stale);
        }
        let at = if append { st.size } else { offset };
        if let Err(e) = self.file.write_all_at(data, at) {
            return Ok(Err(e.into()));
        }
        st.size = st.size.max(at + data.len() as u64);
        st.generation += 1;
        st.mtime_ns = now_ns();
        st.due = Some(Instant::now() + delay);
        Ok(Ok(at))
    }

    /// Reads up to `len` bytes at `offset` (short at the end of the file).
    pub fn read(&self, offset: u64, len: usize) -> std::result::Result<Result<Vec<u8>>, Stale> {
        let st = self.lock();
        if st.removed {
            return Err(Stale);
        }
        let end = st.size.min(offset.saturating_add(len as u64));
        if offset >= end {
            return Ok(Ok(Vec::new()));
        }
        let mut buf = vec![0u8; (end - offset) as usize];
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break, // a sparse tail reads as zeros
                Ok(n) => done += n,
                Err(e) => return Ok(Err(e.into())),
            }
        }
        Ok(Ok(buf))
    }

    /// Sets the size (truncate or extend with zeros).
    pub fn set_size(&self, size: u64, delay: Duration) -> std::result::Result<Result<()>, Stale> {
        let mut st = self.lock();
        if st.removed {
            return Err(Stale);
        }
        if let Err(e) = self.file.set_len(size) {
            return Ok(Err(e.into()));
        }
        st.size = size;
        st.generation += 1;
        st.mtime_ns = now_ns();
        st.due = Some(Instant::now() + delay);
        Ok(Ok(()))
    }

    /// A read-only handle on the staged bytes (for the uploader).
    pub fn reopen(&self) -> Result<File> {
        Ok(File::open(&self.path)?)
    }
}

pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// The set of staged files and the upload queue.
pub struct Staging {
    dir: PathBuf,
    orphans: PathBuf,
    store: Arc<dyn MetaStore>,
    files: Mutex<HashMap<u64, Arc<StagedFile>>>,
    queue: mpsc::Sender<u64>,
    rx: tokio::sync::Mutex<Option<mpsc::Receiver<u64>>>,
    wake: Notify,
    /// Files that may have become due now (closed, fsynced, retried): the scheduler checks
    /// these when woken, and scans every staged file only on its periodic tick, so a close
    /// costs O(1) however many files are staged.
    nudged: Mutex<Vec<u64>>,
    pub delay: Duration,
    fill_locks: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for Staging {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Staging")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Staging {
    /// Opens the staging area and recovers every journalled file (they are due at once).
    pub fn open(
        dir: &Path,
        store: Arc<dyn MetaStore>,
        delay: Duration,
        capacity: usize,
    ) -> Result<Staging> {
        let orphans = dir.join("orphans");
        // Orphans (unlinked while open) die with the process that held them.
        let _ = std::fs::remove_dir_all(&orphans);
        std::fs::create_dir_all(&orphans)?;
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let s = Staging {
            dir: dir.to_path_buf(),
            orphans,
            store,
            files: Mutex::new(HashMap::new()),
            queue: tx,
            rx: tokio::sync::Mutex::new(Some(rx)),
            wake: Notify::new(),
            nudged: Mutex::new(Vec::new()),
            delay,
            fill_locks: Mutex::new(HashMap::new()),
        };
        s.recover()?;
        Ok(s)
    }

    fn file_path(&self, ino: u64) -> PathBuf {
        self.dir.join(ino.to_string())
    }

    fn recover(&self) -> Result<()> {
        let recs = self.store.staged()?;
        let mut gone = Vec::new();
        let mut known = std::collections::HashSet::new();
        for r in recs {
            let p = self.file_path(r.ino);
            let file = match OpenOptions::new().read(true).write(true).open(&p) {
                Ok(f) => f,
                Err(e) => {
                    tracing::error!(ino = r.ino, path = %r.path, error = %e, "staged file missing; its journal row is dropped");
                    gone.push(Mutation::RemoveStaged(r.ino));
                    continue;
                }
            };
            let size = file.metadata()?.len();
            known.insert(r.ino.to_string());
            tracing::info!(ino = r.ino, path = %r.path, size, "recovered a staged file; uploading it");
            let (progress, _) = watch::channel((0, 0));
            let sf = StagedFile {
                ino: r.ino,
                path: p,
                file,
                st: Mutex::new(StagedState {
                    size,
                    generation: 1,
                    uploaded_gen: 0,
                    uploading: false,
                    queued: false,
                    open: 0,
                    orphan: false,
                    removed: false,
                    mtime_ns: r.mtime_ns,
                    atime_ns: None,
                    mode: r.mode,
                    uid: r.uid,
                    gid: r.gid,
                    display: r.path,
                    created_ns: r.created_ns,
                    due: Some(Instant::now()),
                    error: None,
                    errno: 0,
                    failures: 0,
                    pending: r.pending,
                }),
                progress,
                create_lock: Default::default(),
            };
            self.files
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(r.ino, Arc::new(sf));
        }
        self.store.apply(&gone)?;
        // Files without a journal row never had a write acknowledged: drop them.
        for f in std::fs::read_dir(&self.dir)? {
            let f = f?;
            let name = f.file_name().to_string_lossy().into_owned();
            if f.file_type()?.is_file() && !known.contains(&name) {
                let _ = std::fs::remove_file(f.path());
            }
        }
        Ok(())
    }

    pub fn get(&self, ino: u64) -> Option<Arc<StagedFile>> {
        self.files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&ino)
            .cloned()
    }

    pub fn all(&self) -> Vec<Arc<StagedFile>> {
        self.files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Serializes the creation of the staged copy of one file.
    pub fn fill_lock(&self, ino: u64) -> Arc<tokio::sync::Mutex<()>> {
        self.fill_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(ino)
            .or_default()
            .clone()
    }

    /// A temp file to build a staged copy in, before [`Staging::install`].
    pub fn temp(&self, ino: u64) -> Result<(PathBuf, File)> {
        let p = self.dir.join(format!(".fill-{ino}"));
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)?;
        Ok((p, f))
    }

    /// Makes `tmp` (already holding the file's current bytes) the staged copy of `ino` and
    /// journals it. `dirty` marks it as needing an upload (a new file or a truncation).
    pub fn install(
        &self,
        ino: u64,
        tmp: &Path,
        meta: StagedMeta,
        dirty: bool,
    ) -> Result<Arc<StagedFile>> {
        let p = self.file_path(ino);
        std::fs::rename(tmp, &p)?;
        let file = OpenOptions::new().read(true).write(true).open(&p)?;
        let size = file.metadata()?.len();
        let st = StagedState {
            size,
            generation: 1,
            uploaded_gen: if dirty { 0 } else { 1 },
            uploading: false,
            queued: false,
            open: 0,
            orphan: false,
            removed: false,
            mtime_ns: meta.mtime_ns,
            atime_ns: None,
            mode: meta.mode,
            uid: meta.uid,
            gid: meta.gid,
            display: meta.display,
            created_ns: now_ns(),
            due: dirty.then(|| Instant::now() + self.delay),
            error: None,
            errno: 0,
            failures: 0,
            pending: meta.pending,
        };
        let mut batch = vec![Mutation::PutStaged(st.rec(ino))];
        if st.pending.is_some() {
            // The id was reserved: spend it in the same transaction (see `crate::ids`).
            batch.push(Mutation::SetKv {
                key: crate::ids::USED_KEY.into(),
                value: ino.to_string(),
            });
        }
        self.store.apply(&batch)?;
        let (progress, _) = watch::channel((st.uploaded_gen, 0));
        let sf = Arc::new(StagedFile {
            ino,
            path: p,
            file,
            st: Mutex::new(st),
            progress,
            create_lock: Default::default(),
        });
        self.files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ino, sf.clone());
        Ok(sf)
    }

    /// Drops the staged copy (everything in it is committed, or the file is gone). A file still
    /// open is moved aside as an orphan and lives until its last close.
    pub fn remove(&self, ino: u64) -> Result<()> {
        let sf = {
            let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
            let Some(sf) = files.remove(&ino) else {
                return Ok(());
            };
            sf
        };
        let open = {
            let mut st = sf.lock();
            st.removed = true;
            st.open
        };
        self.store.apply(&[Mutation::RemoveStaged(ino)])?;
        if open == 0 {
            let _ = std::fs::remove_file(&sf.path);
        }
        self.fill_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&ino);
        sf.publish();
        Ok(())
    }

    /// The file lost its last name while open: keep its bytes for the open handles, but never
    /// upload them. Returns the orphan (to be deleted at the last close).
    pub fn orphan(&self, ino: u64) -> Result<Option<Arc<StagedFile>>> {
        let Some(sf) = self.get(ino) else {
            return Ok(None);
        };
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        files.remove(&ino);
        drop(files);
        {
            let mut st = sf.lock();
            st.orphan = true;
        }
        self.store.apply(&[Mutation::RemoveStaged(ino)])?;
        sf.publish();
        Ok(Some(sf))
    }

    /// Path for an orphan copy of `ino` that is not staged (materialized before unlink).
    pub fn orphan_path(&self, ino: u64) -> PathBuf {
        self.orphans.join(format!("{ino}-{}", now_ns()))
    }

    /// Registers an orphan built from a clean file's bytes.
    pub fn adopt_orphan(
        &self,
        ino: u64,
        path: PathBuf,
        meta: StagedMeta,
    ) -> Result<Arc<StagedFile>> {
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let size = file.metadata()?.len();
        let (progress, _) = watch::channel((1, 0));
        Ok(Arc::new(StagedFile {
            ino,
            path,
            file,
            st: Mutex::new(StagedState {
                size,
                generation: 1,
                uploaded_gen: 1,
                uploading: false,
                queued: false,
                open: 0,
                orphan: true,
                removed: false,
                mtime_ns: meta.mtime_ns,
                atime_ns: None,
                mode: meta.mode,
                uid: meta.uid,
                gid: meta.gid,
                display: meta.display,
                created_ns: now_ns(),
                due: None,
                error: None,
                errno: 0,
                failures: 0,
                pending: None,
            }),
            progress,
            create_lock: Default::default(),
        }))
    }

    /// Asks for an upload of `ino` as soon as possible.
    pub fn upload_now(&self, sf: &StagedFile) {
        {
            let mut st = sf.lock();
            if st.dirty() {
                st.due = Some(Instant::now());
            }
        }
        self.nudge([sf.ino]);
    }

    /// The gateway is back: retry failed uploads now instead of after their backoff.
    pub fn retry_now(&self) {
        let now = Instant::now();
        let mut retry = Vec::new();
        for sf in self.all() {
            let mut st = sf.lock();
            if st.dirty() && st.error.is_some() {
                st.due = Some(now);
                retry.push(sf.ino);
            }
        }
        self.nudge(retry);
    }

    /// Has the scheduler look at `inos` now.
    fn nudge(&self, inos: impl IntoIterator<Item = u64>) {
        self.nudged
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(inos);
        self.wake.notify_one();
    }

    /// Updates the journal row (size, times, owner) after a change.
    pub fn journal(&self, sf: &StagedFile) -> Result<()> {
        let rec = sf.lock().rec(sf.ino);
        self.store.apply(&[Mutation::PutStaged(rec)])
    }

    /// The receiving end of the queue (taken once by the upload workers).
    pub async fn take_queue(&self) -> Option<mpsc::Receiver<u64>> {
        self.rx.lock().await.take()
    }

    /// Moves due files into the queue, oldest due first, until the queue is full.
    pub async fn schedule_due(&self) {
        self.schedule(self.all()).await;
    }

    /// Queues the files of `files` that are due, earliest first.
    async fn schedule(&self, files: Vec<Arc<StagedFile>>) {
        let now = Instant::now();
        let mut due: Vec<(Instant, u64)> = files
            .iter()
            .filter_map(|sf| {
                let st = sf.lock();
                (st.dirty() && !st.queued && !st.uploading && st.due.is_some_and(|d| d <= now))
                    .then(|| (st.due.unwrap_or(now), sf.ino))
            })
            .collect();
        due.sort();
        for (_, ino) in due {
            let Some(sf) = self.get(ino) else { continue };
            sf.lock().queued = true;
            if self.queue.send(ino).await.is_err() {
                sf.lock().queued = false;
                return;
            }
        }
    }

    /// The scheduler loop: runs until `stop` is cancelled.
    pub async fn run_scheduler(&self, stop: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.wake.notified() => {
                    let mut inos = std::mem::take(
                        &mut *self.nudged.lock().unwrap_or_else(|e| e.into_inner()),
                    );
                    inos.sort_unstable();
                    inos.dedup();
                    let files = inos.into_iter().filter_map(|ino| self.get(ino)).collect();
                    self.schedule(files).await;
                }
                _ = tick.tick() => self.schedule_due().await,
            }
        }
    }

    /// Records a finished upload attempt.
    pub fn finished(
        &self,
        sf: &StagedFile,
        generation: u64,
        outcome: std::result::Result<(), (String, i32)>,
    ) {
        let drop_it = {
            let mut st = sf.lock();
            st.uploading = false;
            match outcome {
                Ok(()) => {
                    st.uploaded_gen = st.uploaded_gen.max(generation);
                    st.error = None;
                    st.errno = 0;
                    st.failures = 0;
                    if st.generation > st.uploaded_gen {
                        st.due = Some(Instant::now() + self.delay);
                    } else {
                        st.due = None;
                    }
                    !st.dirty() && st.open == 0
                }
                Err((e, errno)) => {
                    st.failures += 1;
                    st.error = Some(e);
                    st.errno = errno;
                    let backoff = Duration::from_millis(250)
                        .saturating_mul(1 << st.failures.min(8))
                        .min(MAX_BACKOFF);
                    st.due = Some(Instant::now() + backoff);
                    false
                }
            }
        };
        sf.publish();
        if drop_it && let Err(e) = self.remove(sf.ino) {
            tracing::warn!(ino = sf.ino, error = %e, "cannot drop a committed staged file");
        }
        self.nudge([sf.ino]);
    }

    /// A handle closed: a clean, unused copy goes away; a dirty one is due now.
    pub fn closed(&self, sf: &StagedFile) {
        let (orphan_done, clean) = {
            let mut st = sf.lock();
            st.open = st.open.saturating_sub(1);
            if st.dirty() {
                st.due = Some(Instant::now());
            }
            (
                st.orphan && st.open == 0,
                !st.dirty() && !st.uploading && st.open == 0 && !st.orphan,
            )
        };
        if orphan_done {
            let _ = std::fs::remove_file(&sf.path);
        } else if clean && let Err(e) = self.remove(sf.ino) {
            tracing::warn!(ino = sf.ino, error = %e, "cannot drop a staged file");
        }
        self.nudge([sf.ino]);
    }

    /// The staged copy of `ino` while it is a file the gateway does not have yet, with its
    /// create lock held: it stays so until the guard is dropped.
    pub async fn lock_pending(
        &self,
        ino: u64,
    ) -> Option<(Arc<StagedFile>, tokio::sync::OwnedMutexGuard<()>)> {
        let sf = self.get(ino)?;
        sf.lock().pending.as_ref()?;
        let g = sf.create_lock.clone().lock_owned().await;
        let still = sf.lock().pending.is_some();
        still.then_some((sf, g))
    }

    /// Files created in directory `dir` that the gateway does not have yet: `(name, ino)`.
    pub fn pending_in(&self, dir: u64) -> Vec<(String, u64)> {
        self.all()
            .iter()
            .filter_map(|sf| {
                let st = sf.lock();
                match &st.pending {
                    Some((p, n)) if *p == dir && !st.removed && !st.orphan => {
                        Some((n.clone(), sf.ino))
                    }
                    _ => None,
                }
            })
            .collect()
    }

    /// Number of files waiting for or in upload, and their bytes.
    pub fn pending(&self) -> (usize, u64) {
        self.all().iter().fold((0, 0), |(n, b), sf| {
            let st = sf.lock();
            if st.dirty() {
                (n + 1, b + st.size)
            } else {
                (n, b)
            }
        })
    }
}

/// Attributes a new staged copy starts with.
#[derive(Debug, Clone, Default)]
pub struct StagedMeta {
    pub mtime_ns: i64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub display: String,
    /// See [`StagedState::pending`].
    pub pending: Option<(u64, String)>,
}

/// Waits until everything written to `sf` up to now is committed; the first failed attempt
/// after this call is returned as an error (the data stays staged and is retried).
pub async fn wait_durable(sf: &StagedFile) -> std::result::Result<(), Error> {
    let mut rx = sf.subscribe();
    let (target, failures0) = {
        let st = sf.lock();
        if !st.dirty() {
            return Ok(());
        }
        (st.generation, st.failures)
    };
    loop {
        {
            let st = sf.lock();
            if st.uploaded_gen >= target || st.removed && !st.orphan {
                return Ok(());
            }
            if st.failures > failures0 {
                // The upload logged its error; the caller gets its errno (EDQUOT, ENOSPC,
                // EACCES, ... or EIO).
                return Err(Error::Io(std::io::Error::from_raw_os_error(
                    if st.errno > 0 { st.errno } else { libc::EIO },
                )));
            }
            if st.orphan {
                return Ok(());
            }
        }
        if rx.changed().await.is_err() {
            return Ok(());
        }
    }
}
