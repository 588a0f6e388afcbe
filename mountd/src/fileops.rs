//! File contents: open, read (layout, chunk cache, fetch the fastest k shards, read-ahead),
//! write (into the staged copy), fsync (wait for the commit), release, fallocate, xattrs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cyxcloud_client::id_ref;
use cyxcloud_core::Hash;
use cyxcloud_proto::v1;

use crate::drive::{Drive, Handle, is_dir, kind_of};
use crate::error::{Error, Result};
use crate::staging::{StagedFile, StagedMeta, wait_durable};
use crate::store::Mutation;

/// Virtual xattr telling whether a file's bytes are committed.
pub const STATE_XATTR: &str = "user.cyxcloud.state";
/// Decoded layouts are trusted this long (read tokens in them expire).
const LAYOUT_TTL: Duration = Duration::from_secs(120);
/// Chunks fetched ahead of a sequential reader.
const READ_AHEAD_CHUNKS: u64 = 2;

impl Drive {
    pub async fn open(&self, id: u64, flags: i32) -> Result<u64> {
        let e = self.entry(id).await?;
        let acc = flags & libc::O_ACCMODE;
        let write = acc == libc::O_WRONLY || acc == libc::O_RDWR;
        if write && self.cfg.read_only {
            return Err(Error::ReadOnly);
        }
        if is_dir(&e) && write {
            return Err(Error::IsDir(e.name));
        }
        let mut staged = self.staging.get(id);
        if let Some(sf) = &staged {
            let mut st = sf.lock();
            if st.removed {
                drop(st);
                staged = None;
            } else {
                st.open += 1;
            }
        }
        Ok(self.add_handle(Handle {
            ino: id,
            write,
            append: flags & libc::O_APPEND != 0,
            last_end: 0,
            staged,
            dir: None,
        }))
    }

    /// The staged copy of a file, created from its current bytes (or empty when `empty`).
    pub async fn materialize(&self, e: &v1::Entry, dirty: bool) -> Result<Arc<StagedFile>> {
        if let Some(sf) = self.staging.get(e.id) {
            return Ok(sf);
        }
        let lock = self.staging.fill_lock(e.id);
        let _g = lock.lock().await;
        if let Some(sf) = self.staging.get(e.id) {
            return Ok(sf);
        }
        let (tmp, file) = self.staging.temp(e.id)?;
        let size = e.size;
        let mut off = 0u64;
        const STEP: u64 = 8 << 20;
        while off < size {
            let n = STEP.min(size - off);
            let data = self.read_remote(e, off, n as usize, false).await?;
            if data.is_empty() {
                break;
            }
            std::os::unix::fs::FileExt::write_all_at(&file, &data, off)?;
            off += data.len() as u64;
        }
        file.set_len(size)?;
        drop(file);
        let display = match self.store.names(e.id)?.into_iter().next() {
            Some((p, n)) => match self.locate(p).await {
                Ok((b, d)) if d.is_empty() => format!("{b}/{n}"),
                Ok((b, d)) => format!("{b}/{d}/{n}"),
                Err(_) => n,
            },
            None => e.name.clone(),
        };
        let sf = self.staging.install(
            e.id,
            &tmp,
            StagedMeta {
                mtime_ns: e.mtime_ns,
                mode: e.mode,
                uid: e.uid,
                gid: e.gid,
                display,
                pending: None,
            },
            dirty,
        )?;
        Ok(sf)
    }

    /// The staged copy a write on handle `fh` goes to (created on the first write).
    async fn staged_for_write(&self, fh: u64, h: &Handle) -> Result<Arc<StagedFile>> {
        if let Some(sf) = &h.staged
            && !sf.lock().removed
        {
            return Ok(sf.clone());
        }
        let e = self.entry(h.ino).await?;
        let sf = self.materialize(&e, true).await?;
        {
            let mut st = sf.lock();
            st.open += 1;
        }
        let old = {
            let mut hs = self.handles.lock().unwrap_or_else(|e| e.into_inner());
            match hs.get_mut(&fh) {
                Some(hh) => hh.staged.replace(sf.clone()),
                None => None,
            }
        };
        if let Some(o) = old {
            self.staging.closed(&o);
        }
        Ok(sf)
    }

    pub async fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<u32> {
        if self.cfg.read_only {
            return Err(Error::ReadOnly);
        }
        let h = self.handle(fh)?;
        if !h.write {
            return Err(Error::BadHandle(fh));
        }
        for _ in 0..4 {
            let sf = self.staged_for_write(fh, &h).await?;
            match sf.write(offset, data, h.append, self.staging.delay) {
                Ok(r) => {
                    r?;
                    return Ok(data.len() as u32);
                }
                Err(crate::staging::Stale) => {
                    // Committed and dropped between lookup and write: stage it again.
                    self.update_handle(fh, |hh| hh.staged = None);
                    continue;
                }
            }
        }
        Err(Error::Io(std::io::Error::other(
            "staged copy kept vanishing",
        )))
    }

    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        let h = self.handle(fh)?;
        let sequential = offset == h.last_end || offset == 0;
        self.update_handle(fh, |hh| hh.last_end = offset + size as u64);
        let staged = h.staged.clone().or_else(|| self.staging.get(h.ino));
        if let Some(sf) = staged
            && let Ok(r) = sf.read(offset, size as usize)
        {
            return r;
        }
        let e = self.entry(h.ino).await?;
        self.read_remote(&e, offset, size as usize, sequential)
            .await
    }

    /// The layout of the entry's current version (cached, or fetched).
    pub async fn layout_of(
        &self,
        e: &v1::Entry,
        fresh: bool,
    ) -> Result<Arc<v1::GetLayoutResponse>> {
        if !fresh {
            if let Some((v, l, at)) = self
                .layouts
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&e.id)
                .cloned()
                && v == e.version
                && (at.elapsed() < LAYOUT_TTL || !self.remote.is_online())
            {
                return Ok(l);
            }
            if !self.remote.is_online()
                && let Some(l) = self.store.layout(e.id, e.version)?
            {
                let l = Arc::new(l);
                self.layouts
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(e.id, (e.version, l.clone(), Instant::now()));
                return Ok(l);
            }
        }
        let id = e.id;
        let r = self
            .remote
            .control("get layout", |mut c| async move {
                c.get_layout(v1::GetLayoutRequest {
                    entry: Some(id_ref(id)),
                    offset: 0,
                    // Not 0 ("to the end"): the gateway binds its end offset as a signed
                    // integer, and u64::MAX wraps (reported).
                    length: i64::MAX as u64,
                })
                .await
            })
            .await;
        let r = match r {
            Ok(r) => r,
            Err(err) if err.is_unavailable() => match self.store.layout(e.id, e.version)? {
                Some(l) => l,
                None => return Err(err),
            },
            Err(err) => return Err(err),
        };
        let version = r.entry.as_ref().map_or(e.version, |x| x.version);
        let mut batch = vec![Mutation::PutLayout {
            ino: e.id,
            version,
            layout: r.clone(),
        }];
        if let Some(ne) = &r.entry
            && ne.version != e.version
        {
            // The file changed since it was cached.
            let mut ne = ne.clone();
            if let Some(old) = self.store.entry(e.id)? {
                ne.xattrs = if ne.xattrs.is_empty() {
                    old.xattrs
                } else {
                    ne.xattrs
                };
            }
            batch.push(Mutation::PutEntry(ne));
        }
        self.store.apply(&batch)?;
        let l = Arc::new(r);
        self.layouts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(e.id, (version, l.clone(), Instant::now()));
        Ok(l)
    }

    /// Reads committed bytes: only the chunks the range touches.
    pub async fn read_remote(
        &self,
        e: &v1::Entry,
        offset: u64,
        len: usize,
        sequential: bool,
    ) -> Result<Vec<u8>> {
        if kind_of(e) != fuser::FileType::RegularFile {
            return Err(Error::IsDir(e.name.clone()));
        }
        let layout = self.layout_of(e, false).await?;
        let size = layout.entry.as_ref().map_or(e.size, |x| x.size);
        let end = size.min(offset.saturating_add(len as u64));
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut out = vec![0u8; (end - offset) as usize];
        if layout.is_inline {
            let d = &layout.inline_data;
            let s = (offset as usize).min(d.len());
            let t = (end as usize).min(d.len());
            out[..t - s].copy_from_slice(&d[s..t]);
            return Ok(out);
        }
        let mut last_index = None;
        tracing::trace!(
            id = e.id,
            offset,
            len,
            size,
            chunks = layout.chunks.len(),
            "read"
        );
        for c in &layout.chunks {
            let csize = c.info.as_ref().map_or(0, |i| i.size);
            let (cs, ce) = (c.offset, c.offset + csize);
            if ce <= offset || cs >= end {
                continue;
            }
            let from = offset.max(cs);
            let to = end.min(ce);
            let want = (to - from) as usize;
            let part = self.chunk_range(e, c, from - cs, want).await?;
            if part.len() != want {
                return Err(Error::Corrupt {
                    what: format!("chunk {} of entry {}", c.index, e.id),
                    detail: format!("{} bytes where {want} were expected", part.len()),
                });
            }
            let at = (from - offset) as usize;
            out[at..at + part.len()].copy_from_slice(&part);
            last_index = Some(c.index);
        }
        if sequential && let Some(i) = last_index {
            self.read_ahead(e, &layout, i);
        }
        Ok(out)
    }

    fn read_ahead(&self, e: &v1::Entry, layout: &Arc<v1::GetLayoutResponse>, index: u32) {
        let Some(me) = self.me() else { return };
        for c in &layout.chunks {
            if c.index <= index || (c.index as u64) > index as u64 + READ_AHEAD_CHUNKS {
                continue;
            }
            let Some(id) = chunk_id(c) else { continue };
            if self.chunks.contains(&id) {
                continue;
            }
            let (me, e, c) = (me.clone(), e.clone(), c.clone());
            tokio::spawn(async move {
                if let Err(err) = me.chunk_range(&e, &c, 0, 0).await {
                    tracing::debug!(error = %err, "read-ahead failed");
                }
            });
        }
    }

    /// `len` bytes at `offset` of one chunk, from the cache or fetched (once, whoever asks).
    async fn chunk_range(
        &self,
        e: &v1::Entry,
        c: &v1::ChunkLayout,
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>> {
        let id = chunk_id(c).ok_or_else(|| Error::Corrupt {
            what: format!("layout of {}", e.id),
            detail: "chunk without id".into(),
        })?;
        if let Some(b) = self.chunks.read(&id, offset, len)? {
            return Ok(b);
        }
        let lock = self
            .fetching
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id.0)
            .or_default()
            .clone();
        let g = lock.lock_owned().await;
        if let Some(b) = self.chunks.read(&id, offset, len)? {
            return Ok(b);
        }
        let data = self.fetch(e, c).await;
        // The chunk goes into the cache after this read is answered. The fetch lock is held
        // until then: another reader of the chunk waits for the cached copy, and only then
        // may start a fetch of its own.
        let done = move |d: &Drive| {
            d.fetching
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id.0);
            drop(g);
        };
        let data = match data {
            Ok(d) => d,
            Err(err) => {
                done(self);
                return Err(err);
            }
        };
        let s = (offset as usize).min(data.len());
        let t = (s + len).min(data.len());
        let out = data[s..t].to_vec();
        let encrypted = c.info.as_ref().is_some_and(|i| i.encrypted);
        match self.me() {
            Some(me) if !encrypted => {
                tokio::task::spawn_blocking(move || {
                    if let Err(err) = me.chunks.insert(&id, &data) {
                        tracing::warn!(error = %err, "cannot cache a chunk");
                    }
                    done(&me);
                });
            }
            _ => done(self),
        }
        Ok(out)
    }

    async fn fetch(&self, e: &v1::Entry, c: &v1::ChunkLayout) -> Result<bytes::Bytes> {
        let client = self.remote.client().await?;
        match client.fetch_chunk(c, None).await {
            Ok(d) => Ok(d),
            Err(err) => {
                // Read tokens in a cached layout may have expired: ask for a fresh layout once.
                tracing::debug!(error = %err, "chunk fetch failed; refreshing the layout");
                let l = self.layout_of(e, true).await?;
                let c2 = l
                    .chunks
                    .iter()
                    .find(|x| x.index == c.index && x.info == c.info)
                    .ok_or(Error::Client(err))?;
                let r = client.fetch_chunk(c2, None).await.map_err(Error::from);
                self.remote.observe(&r);
                r
            }
        }
    }

    /// Flush on close: nothing to do (uploads start at release or after the delay).
    pub fn flush(&self, fh: u64) -> Result<()> {
        self.handle(fh).map(|_| ())
    }

    pub fn release(&self, fh: u64) {
        if let Some(h) = self.take_handle(fh)
            && let Some(sf) = h.staged
        {
            self.staging.closed(&sf);
        }
    }

    /// Returns once every byte written to the file is committed at the gateway.
    pub async fn fsync(&self, id: u64) -> Result<()> {
        let Some(sf) = self.staging.get(id) else {
            return Ok(());
        };
        self.staging.upload_now(&sf);
        wait_durable(&sf).await
    }

    pub async fn fallocate(&self, fh: u64, offset: u64, length: u64, mode: i32) -> Result<()> {
        if mode & !libc::FALLOC_FL_KEEP_SIZE != 0 {
            return Err(Error::Unsupported(format!("fallocate mode {mode:#x}")));
        }
        let h = self.handle(fh)?;
        if !h.write {
            return Err(Error::BadHandle(fh));
        }
        let sf = self.staged_for_write(fh, &h).await?;
        let end = offset.saturating_add(length);
        if mode & libc::FALLOC_FL_KEEP_SIZE == 0 && end > sf.lock().size {
            sf.set_size(end, self.staging.delay)
                .map_err(|_| Error::Io(std::io::Error::other("staged copy vanished")))??;
            self.staging.journal(&sf)?;
        }
        Ok(())
    }

    /// The upload state of a file: `durable`, or `pending`/`queued`/`uploading`/`retrying`.
    pub fn state_of(&self, id: u64) -> String {
        match self.staging.get(id) {
            None => "durable".into(),
            Some(sf) => {
                let st = sf.lock();
                match &st.error {
                    Some(e) if st.dirty() => format!("{}: {e}", st.phase().as_str()),
                    _ => st.phase().as_str().into(),
                }
            }
        }
    }

    pub async fn get_xattr(&self, id: u64, name: &str) -> Result<Vec<u8>> {
        let e = self.entry(id).await?;
        if name == STATE_XATTR {
            if kind_of(&e) != fuser::FileType::RegularFile {
                return Err(Error::NoAttr);
            }
            return Ok(self.state_of(id).into_bytes());
        }
        e.xattrs.get(name).cloned().ok_or(Error::NoAttr)
    }

    pub async fn list_xattr(&self, id: u64) -> Result<Vec<u8>> {
        let e = self.entry(id).await?;
        let mut names: Vec<&String> = e.xattrs.keys().collect();
        names.sort();
        let mut out = Vec::new();
        for n in names {
            out.extend_from_slice(n.as_bytes());
            out.push(0);
        }
        Ok(out)
    }

    fn me(&self) -> Option<Arc<Drive>> {
        self.this.get().and_then(|w| w.upgrade())
    }
}

pub fn chunk_id(c: &v1::ChunkLayout) -> Option<Hash> {
    let id = &c.info.as_ref()?.id;
    let a: [u8; 32] = id.as_slice().try_into().ok()?;
    Some(Hash(a))
}
