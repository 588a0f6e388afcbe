//! The gRPC `ChunkService` (proto/cyxcloud/v1/chunk.proto): put, get (ranged), has, delete,
//! proof-of-storage challenge, stats.
//!
//! Every request is checked completely before anything changes: message shape, hash format,
//! lifecycle state, capability token, size limits and capacity on the header of a put (before
//! its data is read), blake3 of the received bytes before the store is touched. A failure is
//! one [`Error`] turned into a status by [`Error::to_status`].

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use cyxcloud_core::Hash;
use cyxcloud_core::token::{Op, Role, Scope, TokenError};
use cyxcloud_proto::v1::chunk_service_server::ChunkService;
use cyxcloud_proto::v1::put_shard_request::Msg;
use cyxcloud_proto::v1::{
    ChallengeRequest, ChallengeResponse, DeleteShardsRequest, DeleteShardsResponse,
    GetShardRequest, GetShardResponse, HasShardsRequest, HasShardsResponse, ListShardsRequest,
    ListShardsResponse, PutShardRequest, PutShardResponse, RepairCommand, RepairResponse,
    StatsRequest, StatsResponse, Topology,
};
use cyxcloud_proto::{ErrorCode, STREAM_PIECE_BYTES};
use futures::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::error::{Error, Result};
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use crate::store::{Deleted, PutOutcome, Shards};
use crate::tokens::Tokens;

/// Most hashes one Has/Delete request may name.
pub const MAX_HASHES_PER_REQUEST: usize = 100_000;

/// Shard data is buffered in memory until verified; never preallocate more than this per put.
const MAX_PREALLOC: usize = 64 << 20;

/// What the ChunkService handlers use.
#[derive(Clone)]
pub struct ChunkSvc {
    pub shards: Arc<Shards>,
    pub tokens: Arc<Tokens>,
    pub lifecycle: Lifecycle,
    pub metrics: Metrics,
    pub topology: Topology,
    /// Runs `Repair` calls (the same code as heartbeat-delivered repair commands).
    pub executor: crate::commands::Executor,
}

pub fn parse_hash(bytes: &[u8], field: &'static str) -> Result<Hash> {
    Hash::from_slice(bytes).ok_or(Error::BadHash {
        field,
        len: bytes.len(),
    })
}

fn parse_hashes(list: &[Vec<u8>]) -> Result<Vec<Hash>> {
    if list.len() > MAX_HASHES_PER_REQUEST {
        return Err(Error::TooManyShards {
            count: list.len(),
            limit: MAX_HASHES_PER_REQUEST,
        });
    }
    list.iter().map(|h| parse_hash(h, "hashes[]")).collect()
}

/// Runs blocking store work off the async runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

impl ChunkSvc {
    fn finish<T>(&self, rpc: &'static str, r: Result<T>) -> std::result::Result<T, Status> {
        match r {
            Ok(v) => {
                self.metrics.request(rpc, "ok");
                Ok(v)
            }
            Err(e) => {
                let code = e.code();
                self.metrics.request(rpc, code.as_str());
                if matches!(code, ErrorCode::Internal | ErrorCode::Corrupt) {
                    tracing::error!(rpc, error = %e, "request failed");
                } else if code == ErrorCode::NoSpace {
                    tracing::warn!(rpc, error = %e, "request refused: no space");
                } else {
                    tracing::debug!(rpc, error = %e, "request refused");
                }
                Err(e.to_status())
            }
        }
    }

    async fn put(&self, mut stream: Streaming<PutShardRequest>) -> Result<PutShardResponse> {
        let started = Instant::now();
        let next = |r: std::result::Result<Option<PutShardRequest>, Status>| {
            r.map_err(|s| {
                tracing::debug!(status = %s, "put stream failed");
                Error::Malformed("the request stream could not be decoded")
            })
        };
        let header = match next(stream.message().await)? {
            None => return Err(Error::Malformed("empty stream: no header")),
            Some(PutShardRequest { msg: None }) => {
                return Err(Error::Malformed("message with neither header nor data"));
            }
            Some(PutShardRequest {
                msg: Some(Msg::Data(_)),
            }) => return Err(Error::Malformed("data before header")),
            Some(PutShardRequest {
                msg: Some(Msg::Header(h)),
            }) => h,
        };
        let hash = parse_hash(&header.hash, "header.hash")?;
        if header.size == 0 {
            return Err(Error::Malformed("header.size is 0: shards are never empty"));
        }
        if !self.lifecycle.accepts_puts() {
            return Err(Error::Draining {
                state: self.lifecycle.state().as_str(),
            });
        }
        self.tokens.check(&header.token, Op::Put, &[hash])?;
        self.shards.admit(header.size)?;
        let size = header.size;
        let mut buf: Vec<u8> = Vec::with_capacity((size as usize).min(MAX_PREALLOC));
        while let Some(m) = next(stream.message().await)? {
            match m.msg {
                Some(Msg::Data(d)) => {
                    let received = buf.len() as u64 + d.len() as u64;
                    if received > size {
                        return Err(Error::SizeMismatch {
                            declared: size,
                            received,
                        });
                    }
                    buf.extend_from_slice(&d);
                }
                Some(Msg::Header(_)) => return Err(Error::Malformed("second header")),
                None => return Err(Error::Malformed("message with neither header nor data")),
            }
        }
        if buf.len() as u64 != size {
            return Err(Error::SizeMismatch {
                declared: size,
                received: buf.len() as u64,
            });
        }
        let shards = self.shards.clone();
        let outcome = blocking(move || shards.put(&hash, &buf)).await?;
        self.metrics.bytes_uploaded.inc_by(size);
        self.metrics.observe_usage(self.shards.usage());
        self.metrics
            .put_latency
            .observe(started.elapsed().as_secs_f64());
        Ok(PutShardResponse {
            hash: hash.0.to_vec(),
            already_present: matches!(outcome, PutOutcome::AlreadyPresent { .. }),
            stored_bytes: outcome.record_bytes(),
        })
    }

    /// Reads a verified shard, counting corruption.
    async fn read(&self, hash: Hash) -> Result<Bytes> {
        let shards = self.shards.clone();
        let r = blocking(move || shards.get(&hash)).await;
        if let Err(Error::Corrupt { .. }) = &r {
            self.metrics.corrupt_shards.inc();
            self.metrics.observe_usage(self.shards.usage());
        }
        r
    }

    async fn get(&self, req: GetShardRequest) -> Result<Vec<GetShardResponse>> {
        let started = Instant::now();
        let hash = parse_hash(&req.hash, "hash")?;
        self.tokens.check(&req.token, Op::Get, &[hash])?;
        let data = self.read(hash).await?;
        let size = data.len() as u64;
        let end = if req.length == 0 {
            size
        } else {
            req.offset.saturating_add(req.length)
        };
        if req.offset > size || end > size {
            return Err(Error::BadRange {
                offset: req.offset,
                length: req.length,
                size,
            });
        }
        let slice = data.slice(req.offset as usize..end as usize);
        let mut out = Vec::with_capacity(slice.len() / STREAM_PIECE_BYTES + 1);
        let mut off = 0;
        loop {
            let n = (slice.len() - off).min(STREAM_PIECE_BYTES);
            out.push(GetShardResponse {
                data: slice.slice(off..off + n),
                shard_size: if off == 0 { size } else { 0 },
            });
            off += n;
            if off >= slice.len() {
                break;
            }
        }
        self.metrics.bytes_downloaded.inc_by(slice.len() as u64);
        self.metrics
            .get_latency
            .observe(started.elapsed().as_secs_f64());
        Ok(out)
    }

    fn has(&self, req: HasShardsRequest) -> Result<HasShardsResponse> {
        let hashes = parse_hashes(&req.hashes)?;
        // Not an oracle for strangers: only who may read these shards learns whether they are here.
        self.tokens.check(&req.token, Op::Get, &hashes)?;
        let present = hashes
            .iter()
            .map(|h| self.shards.contains(h))
            .collect::<Result<Vec<bool>>>()?;
        Ok(HasShardsResponse { present })
    }

    async fn delete(&self, req: DeleteShardsRequest) -> Result<DeleteShardsResponse> {
        let hashes = parse_hashes(&req.hashes)?;
        self.tokens.check(&req.token, Op::Delete, &hashes)?;
        let shards = self.shards.clone();
        // A client's delete, with its own token: no put is newer than it.
        let r = blocking(move || delete_older(&shards, &hashes, u64::MAX)).await?;
        self.metrics.observe_usage(self.shards.usage());
        Ok(DeleteShardsResponse {
            deleted: r.deleted,
            missing: r.missing,
            freed_bytes: r.freed_bytes,
        })
    }

    async fn list(&self, req: ListShardsRequest) -> Result<ListShardsResponse> {
        let cap = self.tokens.check(&req.token, Op::Get, &[])?;
        if cap.role == Role::Client || cap.scope != Scope::Any {
            // A client's token names shards; listing a node is for the gateway's side.
            return Err(Error::Token(TokenError::RoleNotAllowed {
                role: cap.role,
                op: Op::Get,
            }));
        }
        let after = if req.after.is_empty() {
            None
        } else {
            Some(parse_hash(&req.after, "after")?)
        };
        let limit = match req.limit {
            0 => 10_000,
            n => (n as usize).min(MAX_HASHES_PER_REQUEST),
        };
        let shards = self.shards.clone();
        let mut all = blocking(move || shards.hashes()).await?;
        all.sort_unstable_by_key(|h| h.0);
        let start = after.map_or(0, |a| all.partition_point(|h| h.0 <= a.0));
        let end = (start + limit).min(all.len());
        Ok(ListShardsResponse {
            hashes: all[start..end].iter().map(|h| h.0.to_vec()).collect(),
            more: end < all.len(),
        })
    }

    async fn challenge(&self, req: ChallengeRequest) -> Result<ChallengeResponse> {
        let hash = parse_hash(&req.hash, "hash")?;
        if !(16..=64).contains(&req.nonce.len()) {
            return Err(Error::BadNonce(req.nonce.len()));
        }
        self.tokens.check(&req.token, Op::Get, &[hash])?;
        let data = self.read(hash).await?;
        Ok(ChallengeResponse {
            proof: proof(&req.nonce, &data).0.to_vec(),
        })
    }

    fn stats(&self) -> StatsResponse {
        let u = self.shards.usage();
        StatsResponse {
            node_id: self.tokens.node_id().to_string(),
            state: self.lifecycle.state().to_proto() as i32,
            capacity_bytes: u.capacity_bytes,
            used_bytes: u.used_bytes,
            shard_count: u.shard_count,
            bytes_uploaded: self.metrics.bytes_uploaded.get(),
            bytes_downloaded: self.metrics.bytes_downloaded.get(),
            active_connections: self.metrics.active_connections.get() as u32,
            topology: Some(self.topology.clone()),
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}

/// What a delete did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DeleteCounts {
    pub deleted: u32,
    pub missing: u32,
    /// Put again after the gateway decided the delete (a new write of the same bytes).
    pub kept: u32,
    pub freed_bytes: u64,
}

/// Deletes the listed shards that were not put after `bound` (see `store::recent`;
/// `u64::MAX` deletes them all). The caller checked the token for all of them first.
pub fn delete_older(shards: &Shards, hashes: &[Hash], bound: u64) -> Result<DeleteCounts> {
    let mut r = DeleteCounts::default();
    for h in hashes {
        match shards.delete_unless_newer(h, bound)? {
            Deleted::Freed(n) => {
                r.deleted += 1;
                r.freed_bytes += n;
            }
            Deleted::Missing => r.missing += 1,
            Deleted::Kept => r.kept += 1,
        }
    }
    Ok(r)
}

/// Proof of storage: blake3(nonce || shard bytes).
pub fn proof(nonce: &[u8], data: &[u8]) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(nonce);
    h.update(data);
    Hash(*h.finalize().as_bytes())
}

type GetStream = Pin<Box<dyn Stream<Item = std::result::Result<GetShardResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ChunkService for ChunkSvc {
    async fn put_shard(
        &self,
        request: Request<Streaming<PutShardRequest>>,
    ) -> std::result::Result<Response<PutShardResponse>, Status> {
        let r = self.put(request.into_inner()).await;
        self.finish("put", r).map(Response::new)
    }

    type GetShardStream = GetStream;

    async fn get_shard(
        &self,
        request: Request<GetShardRequest>,
    ) -> std::result::Result<Response<GetStream>, Status> {
        let r = self.get(request.into_inner()).await;
        let pieces = self.finish("get", r)?;
        let s: GetStream = Box::pin(tokio_stream::iter(pieces.into_iter().map(Ok)));
        Ok(Response::new(s))
    }

    async fn has_shards(
        &self,
        request: Request<HasShardsRequest>,
    ) -> std::result::Result<Response<HasShardsResponse>, Status> {
        let r = self.has(request.into_inner());
        self.finish("has", r).map(Response::new)
    }

    async fn delete_shards(
        &self,
        request: Request<DeleteShardsRequest>,
    ) -> std::result::Result<Response<DeleteShardsResponse>, Status> {
        let r = self.delete(request.into_inner()).await;
        self.finish("delete", r).map(Response::new)
    }

    async fn challenge(
        &self,
        request: Request<ChallengeRequest>,
    ) -> std::result::Result<Response<ChallengeResponse>, Status> {
        let r = self.challenge(request.into_inner()).await;
        self.finish("challenge", r).map(Response::new)
    }

    async fn repair(
        &self,
        request: Request<RepairCommand>,
    ) -> std::result::Result<Response<RepairResponse>, Status> {
        let r = self.executor.repair_now(request.into_inner()).await;
        self.metrics
            .command("repair", r.as_ref().is_ok_and(|r| r.errors.is_empty()));
        self.finish("repair", r).map(Response::new)
    }

    async fn list_shards(
        &self,
        request: Request<ListShardsRequest>,
    ) -> std::result::Result<Response<ListShardsResponse>, Status> {
        let r = self.list(request.into_inner()).await;
        self.finish("list", r).map(Response::new)
    }

    async fn stats(
        &self,
        request: Request<StatsRequest>,
    ) -> std::result::Result<Response<StatsResponse>, Status> {
        let r = self
            .tokens
            .check(&request.get_ref().token, Op::Get, &[])
            .map(|_| self.stats());
        self.finish("stats", r).map(Response::new)
    }
}
