//! Downloads: the striping read path.
//!
//! `GetLayout` names, for every chunk overlapping the wanted range, where each shard lives and
//! a token to read it. For each chunk the reader asks the `k` most promising nodes first (the
//! lowest measured latency, data shards before parity on a tie), starts a replacement request
//! whenever one fails and a hedge request when one is slow, decodes as soon as `k` shards are
//! in and drops the rest. Shards are not hashed one by one on the fast path: the decoded chunk
//! is checked against its id (blake3, or the GCM tag and keyed hash when encrypted), and only
//! when that fails are the shards verified individually, the bad ones reported to the gateway
//! for repair and replaced. Wrong bytes are never returned.
//!
//! Chunks are fetched `pipeline_depth` at a time and handed out in order, so memory stays
//! bounded by a few chunks whatever the file size.

use std::ops::Range;
use std::time::Duration;

use bytes::Bytes;
use cyxcloud_core::{ChunkMeta, Hash, MasterKey};
use cyxcloud_proto::v1;
use futures::Stream;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::error::{ClientError, Result};
use crate::nodes::ShardError;
use crate::session::unix_now;

/// A chunk's node tokens are renewed before a fetch when they expire within this many seconds
/// (covers the time a request takes to reach its node).
pub const TOKEN_MARGIN_SECS: u64 = 30;
use crate::session::Client;

/// How to read.
#[derive(Clone, Default)]
pub struct ReadOptions {
    /// Needed for encrypted files.
    pub key: Option<MasterKey>,
    /// Called with the number of bytes delivered as each chunk completes.
    pub progress: Option<crate::write::Progress>,
}

impl std::fmt::Debug for ReadOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadOptions")
            .field("encrypted", &self.key.is_some())
            .finish_non_exhaustive()
    }
}

/// A file's layout for a byte range.
#[derive(Debug, Clone)]
pub struct Layout {
    pub entry: v1::Entry,
    pub inline: Option<Bytes>,
    pub chunks: Vec<v1::ChunkLayout>,
}

/// Whether any node token of chunk `c` expires within [`TOKEN_MARGIN_SECS`]: its layout must
/// be fetched again before it is used.
fn tokens_expire_soon(c: &v1::ChunkLayout) -> bool {
    let soon = unix_now() as u64 + TOKEN_MARGIN_SECS;
    c.shards
        .iter()
        .any(|s| cyxcloud_core::token::expires_at(&s.token).is_some_and(|at| at <= soon))
}

impl Client {
    /// Fetches the layout of `entry` for `range` (`None`: the whole file).
    pub async fn layout(&self, entry: v1::EntryRef, range: Option<Range<u64>>) -> Result<Layout> {
        self.refresh_token().await?;
        let (offset, length) = range.map_or((0, 0), |r| (r.start, r.end.saturating_sub(r.start)));
        let r = self
            .control()
            .get_layout(v1::GetLayoutRequest {
                entry: Some(entry),
                offset,
                length,
            })
            .await
            .map_err(|s| ClientError::rpc("get layout", s))?
            .into_inner();
        let entry = r
            .entry
            .ok_or_else(|| ClientError::Protocol("layout without entry".into()))?;
        Ok(Layout {
            entry,
            inline: r.is_inline.then(|| Bytes::from(r.inline_data)),
            chunks: r.chunks,
        })
    }

    /// Streams the bytes of `range` (clamped to the file) chunk by chunk, in order.
    pub fn read_stream(
        &self,
        layout: Layout,
        range: Option<Range<u64>>,
        opts: ReadOptions,
    ) -> impl Stream<Item = Result<Bytes>> + Send + 'static {
        let size = layout.entry.size;
        let want = range.map_or(0..size, |r| r.start.min(size)..r.end.min(size));
        let client = self.clone();
        let depth = client.inner.cfg.pipeline_depth.max(1);
        let inline = layout.inline.clone();
        let chunks: Vec<v1::ChunkLayout> = layout
            .chunks
            .into_iter()
            .filter(|c| {
                let len = c.info.as_ref().map_or(0, |i| i.size);
                c.offset < want.end && c.offset + len > want.start
            })
            .collect();
        let inline_part = inline.map(|d| {
            let end = (want.end as usize).min(d.len());
            let start = (want.start as usize).min(end);
            d.slice(start..end)
        });
        let entry = layout.entry.id;
        let fetches = futures::stream::iter(chunks.into_iter().map(move |c| {
            let client = client.clone();
            let opts = opts.clone();
            let want = want.clone();
            async move {
                let c = client.fresh_tokens(entry, c).await?;
                let chunk_len = c.info.as_ref().map_or(0, |i| i.size);
                let start = want.start.saturating_sub(c.offset).min(chunk_len);
                let end = (want.end - c.offset).min(chunk_len);
                let part = match client.fetch_chunk_range(&c, start..end).await {
                    Some(part) => part,
                    None => {
                        let data = client.fetch_chunk(&c, opts.key.as_ref()).await?;
                        let end = (end as usize).min(data.len());
                        data.slice((start as usize).min(end)..end)
                    }
                };
                if let Some(p) = &opts.progress {
                    p(part.len() as u64);
                }
                Ok(part)
            }
        }))
        .buffered(depth);
        futures::stream::iter(inline_part.map(Ok)).chain(fetches)
    }

    /// `c` with node tokens good for a while yet: a stream read slowly (a big download, a
    /// consumer that stalls) outlives the tokens of the layout it began with, so the layout
    /// of a chunk whose tokens expire within [`TOKEN_MARGIN_SECS`] is fetched again. The file
    /// must still hold the same chunk there; if it was overwritten meanwhile the read fails
    /// (`Conflict`) rather than splice two versions.
    async fn fresh_tokens(&self, entry: u64, c: v1::ChunkLayout) -> Result<v1::ChunkLayout> {
        if !tokens_expire_soon(&c) || entry == 0 {
            return Ok(c);
        }
        let Some(info) = c.info.as_ref() else {
            return Ok(c);
        };
        let range = c.offset..c.offset + info.size.max(1);
        let l = self.layout(crate::id_ref(entry), Some(range)).await?;
        match l.chunks.into_iter().find(|n| n.offset == c.offset) {
            Some(n) if n.info.as_ref().is_some_and(|i| i.id == info.id) => Ok(n),
            _ => Err(ClientError::Rpc {
                op: "read",
                code: cyxcloud_proto::ErrorCode::Conflict,
                message: format!(
                    "the file changed while it was being read (chunk {} was replaced)",
                    c.index
                ),
                retryable: false,
            }),
        }
    }

    /// Reads `len` bytes at `offset` (fewer at the end of the file).
    pub async fn read_range(
        &self,
        entry: v1::EntryRef,
        offset: u64,
        len: u64,
        opts: ReadOptions,
    ) -> Result<Bytes> {
        let range = offset..offset.saturating_add(len);
        let layout = self.layout(entry, Some(range.clone())).await?;
        let mut out = Vec::with_capacity(len.min(layout.entry.size) as usize);
        let mut s = std::pin::pin!(self.read_stream(layout, Some(range), opts));
        while let Some(part) = s.next().await {
            out.extend_from_slice(&part?);
        }
        Ok(Bytes::from(out))
    }

    /// Writes the whole file (or `range`) to `out`; returns the bytes written.
    pub async fn download_to<W: AsyncWrite + Unpin>(
        &self,
        entry: v1::EntryRef,
        range: Option<Range<u64>>,
        out: &mut W,
        opts: ReadOptions,
    ) -> Result<u64> {
        let layout = self.layout(entry, range.clone()).await?;
        let mut n = 0u64;
        let mut s = std::pin::pin!(self.read_stream(layout, range, opts));
        while let Some(part) = s.next().await {
            let part = part?;
            out.write_all(&part).await?;
            n += part.len() as u64;
        }
        out.flush().await?;
        Ok(n)
    }

    /// Small reads of a plain chunk: fetch just the bytes of `range` from the data shards that
    /// hold them (the code is systematic), skipping decoding. Returns `None` when that does not
    /// apply or any piece fails; the caller then decodes the whole chunk from any k shards.
    ///
    /// A ranged piece cannot be checked against its shard's blake3 by the client; the node
    /// verifies the stored record before serving it, and a failure here always falls back to
    /// the fully verified path.
    async fn fetch_chunk_range(&self, c: &v1::ChunkLayout, range: Range<u64>) -> Option<Bytes> {
        let info = c.info.as_ref()?;
        let len = range.end.checked_sub(range.start)?;
        // Worth it only when the range is a small part of the chunk.
        if info.encrypted || len == 0 || len * 2 > info.size || info.shard_size == 0 {
            return None;
        }
        let ss = info.shard_size as u64;
        let (first, last) = (range.start / ss, (range.end - 1) / ss);
        let mut pieces = Vec::new();
        for i in first..=last {
            let loc = c
                .shards
                .iter()
                .find(|s| s.index as u64 == i && !s.address.is_empty())?;
            if !matches!(
                v1::ShardState::try_from(loc.state),
                Ok(v1::ShardState::Stored) | Ok(v1::ShardState::Unspecified)
            ) {
                return None;
            }
            let hash = Hash::from_slice(info.shard_hashes.get(i as usize)?)?;
            let lo = range.start.max(i * ss) - i * ss;
            let hi = range.end.min((i + 1) * ss) - i * ss;
            pieces.push((loc.clone(), hash, lo, hi - lo));
        }
        let timeout = self.inner.cfg.shard_timeout;
        let fetches = pieces.into_iter().map(|(loc, hash, off, n)| {
            let client = self.clone();
            async move {
                let b = client
                    .inner
                    .nodes
                    .get_shard(&loc.address, &hash, loc.token.clone(), off, n, timeout)
                    .await
                    .ok()?;
                (b.len() as u64 == n).then_some(b)
            }
        });
        let parts: Vec<Option<Bytes>> = futures::future::join_all(fetches).await;
        let mut out = Vec::with_capacity(len as usize);
        for p in parts {
            out.extend_from_slice(&p?);
        }
        Some(Bytes::from(out))
    }

    /// Fetches and decodes one whole chunk.
    pub async fn fetch_chunk(&self, c: &v1::ChunkLayout, key: Option<&MasterKey>) -> Result<Bytes> {
        let info = c
            .info
            .as_ref()
            .ok_or_else(|| ClientError::Protocol(format!("chunk {} without info", c.index)))?;
        let meta =
            cyxcloud_proto::convert::chunk_meta(info).map_err(|s| ClientError::rpc("layout", s))?;
        if meta.encrypted && key.is_none() {
            return Err(ClientError::KeyRequired);
        }
        let k = meta.profile.data();
        let mut candidates: Vec<&v1::ShardLocation> = c
            .shards
            .iter()
            .filter(|s| !s.address.is_empty() && (s.index as usize) < meta.profile.total())
            .filter(|s| {
                matches!(
                    v1::ShardState::try_from(s.state),
                    Ok(v1::ShardState::Stored) | Ok(v1::ShardState::Unspecified)
                )
            })
            .collect();
        let nodes = &self.inner.nodes;
        let rank = |s: &v1::ShardLocation| -> (u64, bool, u32) {
            let lat = nodes
                .latency(&s.address)
                .map_or(s.latency_us as u64, |d| d.as_micros() as u64);
            // 1 ms buckets: within a bucket prefer data shards (no decoding needed).
            (lat / 1000, s.index as usize >= k, s.index)
        };
        candidates.sort_by_key(|s| rank(s));
        let mut reports = Vec::new();
        let result = self
            .fetch_k(c.index, &meta, &candidates, key, &mut reports)
            .await;
        if !reports.is_empty() {
            let control = self.control();
            let req = v1::ReportShardsRequest { reports };
            // Best effort: a failed report must not fail a read that succeeded.
            tokio::spawn(async move {
                let mut control = control;
                if let Err(e) = control.report_shards(req).await {
                    tracing::debug!(error = %e, "shard report failed");
                }
            });
        }
        result
    }

    async fn fetch_k(
        &self,
        chunk: u32,
        meta: &ChunkMeta,
        candidates: &[&v1::ShardLocation],
        key: Option<&MasterKey>,
        reports: &mut Vec<v1::ShardReport>,
    ) -> Result<Bytes> {
        let k = meta.profile.data();
        let total = meta.profile.total();
        let cfg = &self.inner.cfg;
        let mut have: Vec<Option<Bytes>> = vec![None; total];
        let mut count = 0usize;
        let mut next = 0usize;
        let mut failures: Vec<String> = Vec::new();
        let mut verified_mode = false;
        let mut inflight = FuturesUnordered::new();
        let launch = |loc: &v1::ShardLocation| {
            let client = self.clone();
            let loc = loc.clone();
            let hash = meta.shard_hashes[loc.index as usize];
            let timeout = cfg.shard_timeout;
            async move {
                let r = client
                    .inner
                    .nodes
                    .get_shard(&loc.address, &hash, loc.token.clone(), 0, 0, timeout)
                    .await;
                (loc, r)
            }
        };
        while next < candidates.len() && inflight.len() < k {
            inflight.push(launch(candidates[next]));
            next += 1;
        }
        loop {
            if count >= k {
                let shards = have.clone();
                let m = meta.clone();
                let key2 = key.cloned();
                let fast = !verified_mode;
                let decoded = tokio::task::spawn_blocking(move || {
                    if fast {
                        cyxcloud_core::decode_chunk_fast(&m, shards, key2.as_ref())
                            .map(|d| (d, vec![]))
                    } else {
                        cyxcloud_core::decode_chunk(&m, shards, key2.as_ref())
                            .map(|d| (d.data, d.corrupt))
                    }
                })
                .await
                .map_err(|e| ClientError::Protocol(format!("decoder task failed: {e}")))?;
                match decoded {
                    Ok((data, corrupt)) if corrupt.is_empty() => return Ok(data),
                    Ok((data, corrupt)) => {
                        for i in corrupt {
                            reports.push(report(
                                meta,
                                i as u32,
                                candidates,
                                v1::ShardProblem::Corrupt,
                            ));
                        }
                        return Ok(data);
                    }
                    Err(e) if !verified_mode => {
                        // Something is wrong with at least one shard: check each one, drop the
                        // bad ones and fetch replacements.
                        tracing::warn!(chunk, error = %e, "chunk failed verification; checking shards one by one");
                        verified_mode = true;
                        for (i, slot) in have.iter_mut().enumerate() {
                            if let Some(s) = slot
                                && Hash::of(s) != meta.shard_hashes[i]
                            {
                                reports.push(report(
                                    meta,
                                    i as u32,
                                    candidates,
                                    v1::ShardProblem::Corrupt,
                                ));
                                failures.push(format!("shard {i} corrupt"));
                                *slot = None;
                                count -= 1;
                            }
                        }
                        if count >= k {
                            // Every shard hashes right yet the chunk does not: the layout itself
                            // is wrong. Decoding again cannot help.
                            return Err(ClientError::Unrecoverable {
                                chunk,
                                detail: e.to_string(),
                            });
                        }
                    }
                    Err(e) => {
                        return Err(ClientError::Unrecoverable {
                            chunk,
                            detail: e.to_string(),
                        });
                    }
                }
            }
            while next < candidates.len() && inflight.len() + count < k {
                inflight.push(launch(candidates[next]));
                next += 1;
            }
            if inflight.is_empty() {
                return Err(ClientError::Unrecoverable {
                    chunk,
                    detail: format!(
                        "{count} of {k} shards readable; {}",
                        failures
                            .iter()
                            .rev()
                            .take(4)
                            .cloned()
                            .collect::<Vec<_>>()
                            .join("; ")
                    ),
                });
            }
            // Hedge: when nothing arrives for a while, ask one more node.
            let hedge = Duration::from_millis(500);
            let got = match tokio::time::timeout(hedge, inflight.next()).await {
                Ok(g) => g,
                Err(_) => {
                    if next < candidates.len() {
                        inflight.push(launch(candidates[next]));
                        next += 1;
                    }
                    continue;
                }
            };
            let Some((loc, r)) = got else { continue };
            let i = loc.index as usize;
            match r {
                Ok(data) if data.len() == meta.shard_size as usize => {
                    if have[i].is_none() {
                        if verified_mode && Hash::of(&data) != meta.shard_hashes[i] {
                            reports.push(report(
                                meta,
                                i as u32,
                                candidates,
                                v1::ShardProblem::Corrupt,
                            ));
                            failures.push(format!("shard {i} corrupt on {}", loc.node_id));
                        } else {
                            have[i] = Some(data);
                            count += 1;
                        }
                    }
                }
                Ok(data) => {
                    let e = ShardError::Length {
                        address: loc.address.clone(),
                        got: data.len(),
                        expected: meta.shard_size as usize,
                    };
                    reports.push(report_loc(meta, &loc, e.problem()));
                    failures.push(e.to_string());
                }
                Err(e) => {
                    reports.push(report_loc(meta, &loc, e.problem()));
                    failures.push(e.to_string());
                }
            }
        }
    }
}

fn report(
    meta: &ChunkMeta,
    index: u32,
    candidates: &[&v1::ShardLocation],
    problem: v1::ShardProblem,
) -> v1::ShardReport {
    let loc = candidates.iter().find(|c| c.index == index);
    v1::ShardReport {
        chunk_id: meta.id.0.to_vec(),
        index,
        node_id: loc.map(|c| c.node_id.clone()).unwrap_or_default(),
        problem: problem as i32,
        token: loc.map(|c| c.token.clone()).unwrap_or_default(),
    }
}

fn report_loc(
    meta: &ChunkMeta,
    loc: &v1::ShardLocation,
    problem: v1::ShardProblem,
) -> v1::ShardReport {
    v1::ShardReport {
        chunk_id: meta.id.0.to_vec(),
        index: loc.index,
        node_id: loc.node_id.clone(),
        problem: problem as i32,
        token: loc.token.clone(),
    }
}
