//! Uploads: the striping write pipeline.
//!
//! An [`Upload`] is fed bytes ([`Upload::write`]) and finished ([`Upload::finish`]). Files up to
//! the inline threshold go to the gateway in one `WriteInline` call. Larger ones start a write
//! (`BeginWrite`); every full chunk is encoded on a blocking thread, placed (`PlaceChunks`) and
//! its shards put to their nodes in parallel, while the next chunks are read and encoded:
//! `pipeline_depth` chunks are in flight, so memory stays bounded whatever the file size. A
//! chunk counts as stored once `success_threshold` of its shards are acknowledged; the slowest
//! remaining shards get a short grace period (the long-tail cut-off) and are then left to
//! repair. Completed chunks are checkpointed in order, so an interrupted upload resumes after
//! the last durable chunk ([`Upload::resume`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use cyxcloud_core::codec::{CodecId, Profile};
use cyxcloud_core::{ChunkSplitter, EncodedChunk, MasterKey};
use cyxcloud_proto::v1;
use futures::stream::{FuturesOrdered, FuturesUnordered, StreamExt};
use md5::{Digest, Md5};

use crate::error::{ClientError, Result};
use crate::session::Client;

/// Files up to this size are stored inline in the metadata store.
pub const INLINE_THRESHOLD: usize = 4096;
/// Placement attempts per chunk when nodes fail.
const PLACEMENT_ATTEMPTS: usize = 3;

pub type Progress = Arc<dyn Fn(u64) + Send + Sync>;

/// How to write a file.
#[derive(Clone, Default)]
pub struct UploadOptions {
    /// Erasure profile name or `K+M` (empty: the gateway's default).
    pub profile: Option<String>,
    /// Encrypt client-side with this master key.
    pub key: Option<MasterKey>,
    pub content_type: String,
    pub user_metadata: HashMap<String, String>,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub if_absent: bool,
    pub if_version: u64,
    /// Expected size (helps the gateway check quota up front); 0 = unknown.
    pub size_hint: u64,
    /// Compute the S3 ETag (MD5 of the content) while uploading.
    pub md5: bool,
    /// Use this ETag instead (multipart uploads compute theirs).
    pub etag: Option<String>,
    pub mtime_ns: Option<i64>,
    /// Called with the number of bytes made durable each time a chunk is stored.
    pub progress: Option<Progress>,
}

impl std::fmt::Debug for UploadOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UploadOptions")
            .field("profile", &self.profile)
            .field("encrypted", &self.key.is_some())
            .field("size_hint", &self.size_hint)
            .finish_non_exhaustive()
    }
}

/// Parameters of a started write.
#[derive(Debug, Clone)]
struct Session {
    write_id: String,
    chunk_size: usize,
    profile: Profile,
    codec: CodecId,
    threshold: usize,
}

type ChunkTask = tokio::task::JoinHandle<Result<v1::CommittedChunk>>;

/// An upload in progress.
pub struct Upload {
    client: Client,
    target: v1::EntryRef,
    opts: UploadOptions,
    session: Option<Session>,
    splitter: Option<ChunkSplitter>,
    pending: Vec<u8>,
    next_index: u32,
    in_flight: FuturesOrdered<ChunkTask>,
    done: Vec<v1::CommittedChunk>,
    md5: Option<Md5>,
    written: u64,
    resume_offset: u64,
}

impl std::fmt::Debug for Upload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upload")
            .field("write_id", &self.write_id())
            .field("written", &self.written)
            .finish()
    }
}

impl Client {
    /// Starts an upload to `target` (bucket + path, or an existing file id).
    pub fn upload(&self, target: v1::EntryRef, opts: UploadOptions) -> Upload {
        let md5 = (opts.md5 && opts.etag.is_none()).then(Md5::new);
        Upload {
            client: self.clone(),
            target,
            opts,
            session: None,
            splitter: None,
            pending: Vec::new(),
            next_index: 0,
            in_flight: FuturesOrdered::new(),
            done: Vec::new(),
            md5,
            written: 0,
            resume_offset: 0,
        }
    }

    /// Uploads everything `reader` yields.
    pub async fn upload_from<R>(
        &self,
        target: v1::EntryRef,
        mut reader: R,
        opts: UploadOptions,
    ) -> Result<v1::Entry>
    where
        R: tokio::io::AsyncRead + Unpin,
    {
        use tokio::io::AsyncReadExt;
        let mut up = self.upload(target, opts);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = reader.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            up.write(&buf[..n]).await?;
        }
        up.finish().await
    }
}

impl Upload {
    /// Continues the interrupted write `write_id`. The caller must then skip
    /// [`Upload::resume_offset`] bytes of its input (feeding them to [`Upload::hash_only`] when
    /// an MD5 ETag is wanted) and write the rest.
    pub async fn resume(
        client: &Client,
        write_id: &str,
        target: v1::EntryRef,
        opts: UploadOptions,
    ) -> Result<Upload> {
        client.refresh_token().await?;
        let st = client
            .control()
            .get_write(v1::GetWriteRequest {
                write_id: write_id.to_string(),
            })
            .await
            .map_err(|s| ClientError::rpc("get write", s))?
            .into_inner();
        let session = session_from(
            &st.write_id,
            st.chunk_size,
            st.data_shards,
            st.parity_shards,
            st.codec,
            st.success_threshold,
        )?;
        if st.durable_bytes % session.chunk_size as u64 != 0 {
            return Err(ClientError::Protocol(format!(
                "durable bytes {} not on a chunk boundary",
                st.durable_bytes
            )));
        }
        let mut up = client.upload(target, opts);
        up.next_index = (st.durable_bytes / session.chunk_size as u64) as u32;
        up.resume_offset = st.durable_bytes;
        up.splitter = Some(ChunkSplitter::new(session.chunk_size)?);
        up.session = Some(session);
        Ok(up)
    }

    /// Bytes already durable from a previous attempt (0 for a new upload).
    pub fn resume_offset(&self) -> u64 {
        self.resume_offset
    }

    /// The gateway's write id, once the write has started (not for inline files).
    pub fn write_id(&self) -> Option<&str> {
        self.session.as_ref().map(|s| s.write_id.as_str())
    }

    /// Feeds bytes that were uploaded before (resume) into the ETag hash only.
    pub fn hash_only(&mut self, data: &[u8]) {
        if let Some(h) = &mut self.md5 {
            h.update(data);
        }
    }

    /// Appends `data` to the file.
    pub async fn write(&mut self, data: &[u8]) -> Result<()> {
        if let Some(h) = &mut self.md5 {
            h.update(data);
        }
        self.written += data.len() as u64;
        if self.session.is_none() {
            self.pending.extend_from_slice(data);
            if self.pending.len() <= INLINE_THRESHOLD
                && self.opts.size_hint as usize <= INLINE_THRESHOLD
            {
                return Ok(());
            }
            self.begin().await?;
            let pending = std::mem::take(&mut self.pending);
            return self.feed(&pending).await;
        }
        self.feed(data).await
    }

    async fn begin(&mut self) -> Result<()> {
        self.client.refresh_token().await?;
        let o = &self.opts;
        let r = self
            .client
            .control()
            .begin_write(v1::BeginWriteRequest {
                target: Some(self.target.clone()),
                size_hint: o.size_hint,
                profile: o.profile.clone().unwrap_or_default(),
                encrypted: o.key.is_some(),
                chunks: vec![],
                mode: o.mode,
                uid: o.uid,
                gid: o.gid,
                if_version: o.if_version,
                if_absent: o.if_absent,
                base_version: 0,
            })
            .await
            .map_err(|s| ClientError::rpc("begin write", s))?
            .into_inner();
        let session = session_from(
            &r.write_id,
            r.chunk_size,
            r.data_shards,
            r.parity_shards,
            r.codec,
            r.success_threshold,
        )?;
        self.splitter = Some(ChunkSplitter::new(session.chunk_size)?);
        self.session = Some(session);
        Ok(())
    }

    async fn feed(&mut self, data: &[u8]) -> Result<()> {
        let splitter = self.splitter.as_mut().expect("session started");
        let chunks = splitter.push(data);
        for c in chunks {
            self.submit(c).await?;
        }
        Ok(())
    }

    /// Hands a full chunk to the pipeline, waiting for the oldest chunk when the pipeline is full.
    async fn submit(&mut self, chunk: BytesMut) -> Result<()> {
        while self.in_flight.len() >= self.client.inner.cfg.pipeline_depth {
            self.complete_oldest(true).await?;
        }
        let session = self.session.clone().expect("session started");
        let index = self.next_index;
        self.next_index += 1;
        let client = self.client.clone();
        let key = self.opts.key.clone();
        let progress = self.opts.progress.clone();
        self.in_flight.push_back(tokio::spawn(async move {
            let size = chunk.len() as u64;
            let (codec, profile) = (session.codec, session.profile);
            let enc = tokio::task::spawn_blocking(move || {
                cyxcloud_core::encode_chunk(chunk, codec, profile, key.as_ref())
            })
            .await
            .map_err(|e| ClientError::Protocol(format!("encoder task failed: {e}")))??;
            let done = store_chunk(&client, &session, index, enc).await?;
            if let Some(p) = progress {
                p(size);
            }
            Ok(done)
        }));
        Ok(())
    }

    async fn complete_oldest(&mut self, checkpoint: bool) -> Result<()> {
        let Some(joined) = self.in_flight.next().await else {
            return Ok(());
        };
        let chunk =
            joined.map_err(|e| ClientError::Protocol(format!("upload task failed: {e}")))??;
        if checkpoint {
            let write_id = self.write_id().unwrap_or_default().to_string();
            self.client
                .control()
                .checkpoint_write(v1::CheckpointWriteRequest {
                    write_id,
                    chunks: vec![chunk.clone()],
                })
                .await
                .map_err(|s| ClientError::rpc("checkpoint write", s))?;
        }
        self.done.push(chunk);
        Ok(())
    }

    /// Flushes the last chunk, waits for every chunk, and commits the new version.
    pub async fn finish(mut self) -> Result<v1::Entry> {
        let etag = match (&self.opts.etag, self.md5.take()) {
            (Some(e), _) => e.clone(),
            (None, Some(h)) => hex::encode(h.finalize()),
            (None, None) => String::new(),
        };
        if self.session.is_none() {
            match self.write_inline(&etag).await {
                Err(ClientError::Rpc {
                    code: cyxcloud_proto::ErrorCode::TooLarge,
                    ..
                }) => {
                    // The gateway's inline threshold is lower than ours: store it in chunks.
                    self.begin().await?;
                    let pending = std::mem::take(&mut self.pending);
                    self.feed(&pending).await?;
                }
                other => return other,
            }
        }
        if let Some(last) = self.splitter.take().and_then(ChunkSplitter::finish) {
            self.submit(last).await?;
        }
        while !self.in_flight.is_empty() {
            self.complete_oldest(false).await?;
        }
        let o = &self.opts;
        let write_id = self.write_id().unwrap_or_default().to_string();
        let entry = self
            .client
            .control()
            .commit_write(v1::CommitWriteRequest {
                write_id,
                chunks: std::mem::take(&mut self.done),
                size: self.resume_offset + self.written,
                etag,
                content_type: o.content_type.clone(),
                user_metadata: o.user_metadata.clone(),
                mtime_ns: o.mtime_ns,
            })
            .await
            .map_err(|s| ClientError::rpc("commit write", s))?
            .into_inner();
        Ok(entry)
    }

    async fn write_inline(&mut self, etag: &str) -> Result<v1::Entry> {
        self.client.refresh_token().await?;
        let o = &self.opts;
        let r = self
            .client
            .control()
            .write_inline(v1::WriteInlineRequest {
                target: Some(self.target.clone()),
                data: self.pending.clone(),
                etag: etag.to_string(),
                content_type: o.content_type.clone(),
                user_metadata: o.user_metadata.clone(),
                mode: o.mode,
                uid: o.uid,
                gid: o.gid,
                if_version: o.if_version,
                if_absent: o.if_absent,
                mtime_ns: o.mtime_ns,
                new_id: 0,
            })
            .await
            .map_err(|s| ClientError::rpc("write inline", s))?;
        if let Some(p) = &o.progress {
            p(self.pending.len() as u64);
        }
        Ok(r.into_inner())
    }

    /// Gives up: the gateway releases whatever was stored for this write.
    pub async fn abort(mut self) -> Result<()> {
        self.in_flight = FuturesOrdered::new();
        if let Some(id) = self.write_id().map(str::to_string) {
            self.client
                .control()
                .abort_write(v1::GetWriteRequest { write_id: id })
                .await
                .map_err(|s| ClientError::rpc("abort write", s))?;
        }
        Ok(())
    }
}

fn session_from(
    write_id: &str,
    chunk_size: u32,
    k: u32,
    m: u32,
    codec: u32,
    threshold: u32,
) -> Result<Session> {
    let profile =
        Profile::new(k as usize, m as usize).map_err(|e| ClientError::Protocol(e.to_string()))?;
    let codec = u8::try_from(codec)
        .ok()
        .and_then(|c| CodecId::from_u8(c).ok())
        .ok_or_else(|| ClientError::Protocol(format!("unknown codec {codec}")))?;
    if chunk_size == 0
        || threshold as usize > profile.total()
        || (threshold as usize) < profile.data()
    {
        return Err(ClientError::Protocol(format!(
            "bad write parameters: chunk size {chunk_size}, threshold {threshold} for {profile}"
        )));
    }
    Ok(Session {
        write_id: write_id.to_string(),
        chunk_size: chunk_size as usize,
        profile,
        codec,
        threshold: threshold as usize,
    })
}

/// Places one encoded chunk and puts its shards, retrying placement around failed nodes.
async fn store_chunk(
    client: &Client,
    s: &Session,
    index: u32,
    enc: EncodedChunk,
) -> Result<v1::CommittedChunk> {
    let cfg = &client.inner.cfg;
    let info = v1::ChunkInfo::from(&enc.meta);
    let mut stored: HashMap<u32, String> = HashMap::new();
    let mut avoid: Vec<String> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    for _attempt in 0..PLACEMENT_ATTEMPTS {
        let placement = client
            .control()
            .place_chunks(v1::PlaceChunksRequest {
                write_id: s.write_id.clone(),
                chunks: vec![v1::ChunkDescriptor {
                    index,
                    info: Some(info.clone()),
                }],
                avoid_nodes: avoid.clone(),
            })
            .await
            .map_err(|st| ClientError::rpc("place chunks", st))?
            .into_inner()
            .placements
            .into_iter()
            .find(|p| p.index == index)
            .ok_or_else(|| ClientError::Protocol(format!("no placement for chunk {index}")))?;
        if placement.deduplicated {
            return Ok(v1::CommittedChunk {
                index,
                id: enc.meta.id.0.to_vec(),
                stored: vec![],
            });
        }
        // Keep shards already stored where the new placement wants them.
        stored.retain(|i, node| {
            placement
                .targets
                .iter()
                .any(|t| t.index == *i && &t.node_id == node)
        });
        let started = Instant::now();
        let mut puts = FuturesUnordered::new();
        for t in placement
            .targets
            .into_iter()
            .filter(|t| !stored.contains_key(&t.index))
        {
            let Some(data) = enc.shards.get(t.index as usize).cloned() else {
                return Err(ClientError::Protocol(format!(
                    "placement names shard {} of {}",
                    t.index,
                    enc.shards.len()
                )));
            };
            let hash = enc.meta.shard_hashes[t.index as usize];
            let nodes = client.clone();
            let timeout = cfg.shard_timeout;
            puts.push(async move {
                let r = nodes
                    .inner
                    .nodes
                    .put_shard(&t.address, &hash, data, t.token, timeout)
                    .await;
                (t.index, t.node_id, r)
            });
        }
        let total = s.profile.total();
        let mut tail: Option<tokio::time::Instant> = None;
        loop {
            let next = match tail {
                Some(deadline) => match tokio::time::timeout_at(deadline, puts.next()).await {
                    Ok(n) => n,
                    Err(_) => break, // long tail cut off: the rest goes to repair
                },
                None => puts.next().await,
            };
            let Some((i, node, r)) = next else { break };
            match r {
                Ok(()) => {
                    stored.insert(i, node);
                }
                Err(e) => {
                    tracing::debug!(chunk = index, shard = i, node = %node, error = %e, "shard put failed");
                    errors.push(e.to_string());
                    if !avoid.contains(&node) {
                        avoid.push(node);
                    }
                }
            }
            if stored.len() == total {
                break;
            }
            if stored.len() >= s.threshold && tail.is_none() && !cfg.wait_all_shards {
                let grace = started.elapsed().mul_f64(cfg.tail_factor).max(cfg.tail_min);
                tail = Some(tokio::time::Instant::now() + grace);
            }
        }
        drop(puts);
        if stored.len() >= s.threshold {
            let mut shards: Vec<v1::StoredShard> = stored
                .into_iter()
                .map(|(index, node_id)| v1::StoredShard { index, node_id })
                .collect();
            shards.sort_by_key(|x| x.index);
            return Ok(v1::CommittedChunk {
                index,
                id: enc.meta.id.0.to_vec(),
                stored: shards,
            });
        }
    }
    Err(ClientError::NotEnoughShards {
        chunk: index,
        stored: stored.len(),
        needed: s.threshold,
        detail: errors
            .into_iter()
            .rev()
            .take(3)
            .collect::<Vec<_>>()
            .join("; "),
    })
}
