//! Execution of the commands a gateway sends in heartbeat replies:
//! * **repair**: fetch shards of a chunk from source nodes (GetShard with the command's read
//!   tokens; a source without an address is resolved through the DHT), verify each against the
//!   chunk's shard hashes, decode from any `k`, re-encode, check the target shard's blake3 and
//!   store it here;
//! * **transfer**: push a shard held here to another node with PutShard and the target's token;
//! * **delete**: remove shards, with a gateway or rebalancer token, exactly like DeleteShards.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cyxcloud_core::token::{Op, Role, TokenError};
use cyxcloud_core::{Hash, codec};
use cyxcloud_proto::v1::chunk_service_client::ChunkServiceClient;
use cyxcloud_proto::v1::node_command::Command;
use cyxcloud_proto::v1::put_shard_request::Msg;
use cyxcloud_proto::v1::{
    CommandResult, DeleteCommand, GetShardRequest, NodeCommand, PutShardHeader, PutShardRequest,
    RepairCommand, RepairResponse, ShardLocation, TransferCommand,
};
use cyxcloud_proto::{MAX_MESSAGE_BYTES, STREAM_PIECE_BYTES};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tonic::transport::Channel;

use crate::error::{Error, Result};
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use crate::p2p::P2pHandle;
use crate::service::{delete_older, parse_hash};
use crate::store::Shards;
use crate::tokens::Tokens;

const PEER_TIMEOUT: Duration = Duration::from_secs(120);

/// What commands need.
#[derive(Clone)]
pub struct Executor {
    pub shards: Arc<Shards>,
    pub tokens: Arc<Tokens>,
    pub lifecycle: Lifecycle,
    pub metrics: Metrics,
    pub p2p: P2pHandle,
    /// Bytes a second deletes may free (the usage guide's garbage collection rate).
    pub gc_rate: cyxcloud_daemon::RateLimit,
    /// The cluster CA peers are verified against (TLS clusters).
    pub tls: Option<Arc<crate::tls::NodeTls>>,
}

/// Connects to another node's ChunkService (`https://`: verified against the cluster CA).
pub async fn connect(
    address: &str,
    node: &str,
    tls: Option<&crate::tls::NodeTls>,
) -> Result<ChunkServiceClient<Channel>> {
    let peer = |reason: String| Error::Peer {
        node: node.to_string(),
        reason,
    };
    let ca = tls.and_then(|t| t.ca());
    let ch = crate::net::endpoint(address, ca.as_deref())
        .map_err(|e| peer(format!("bad address {address:?}: {e}")))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(PEER_TIMEOUT)
        .connect()
        .await
        .map_err(|e| peer(format!("cannot connect to {address}: {e}")))?;
    Ok(ChunkServiceClient::new(ch)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// Reads a whole shard from another node.
pub async fn fetch_shard(
    client: &mut ChunkServiceClient<Channel>,
    node: &str,
    hash: &Hash,
    token: &[u8],
) -> Result<Bytes> {
    let peer = |reason: String| Error::Peer {
        node: node.to_string(),
        reason,
    };
    let mut stream = client
        .get_shard(GetShardRequest {
            hash: hash.0.to_vec(),
            token: token.to_vec(),
            offset: 0,
            length: 0,
        })
        .await
        .map_err(|s| peer(format!("GetShard {hash}: {}", s.message())))?
        .into_inner();
    let mut buf = Vec::new();
    while let Some(piece) = stream
        .message()
        .await
        .map_err(|s| peer(format!("GetShard {hash}: {}", s.message())))?
    {
        if buf.is_empty() && piece.shard_size > 0 {
            buf.reserve(piece.shard_size.min(1 << 30) as usize);
        }
        buf.extend_from_slice(&piece.data);
    }
    Ok(Bytes::from(buf))
}

/// Stores a shard on another node.
pub async fn push_shard(
    client: &mut ChunkServiceClient<Channel>,
    node: &str,
    hash: &Hash,
    data: Bytes,
    token: &[u8],
) -> Result<()> {
    let mut msgs = vec![PutShardRequest {
        msg: Some(Msg::Header(PutShardHeader {
            hash: hash.0.to_vec(),
            size: data.len() as u64,
            token: token.to_vec(),
        })),
    }];
    let mut off = 0;
    while off < data.len() {
        let n = (data.len() - off).min(STREAM_PIECE_BYTES);
        msgs.push(PutShardRequest {
            msg: Some(Msg::Data(data.slice(off..off + n))),
        });
        off += n;
    }
    let resp = client
        .put_shard(tokio_stream::iter(msgs))
        .await
        .map_err(|s| Error::Peer {
            node: node.to_string(),
            reason: format!("PutShard {hash}: {}", s.message()),
        })?
        .into_inner();
    if resp.hash != hash.0 {
        return Err(Error::Peer {
            node: node.to_string(),
            reason: "PutShard acknowledged another hash".into(),
        });
    }
    Ok(())
}

impl Executor {
    /// Runs one command; the result goes back to the gateway with the next heartbeat.
    pub async fn execute(&self, cmd: NodeCommand) -> CommandResult {
        let (kind, r) = match cmd.command {
            Some(Command::Repair(c)) => ("repair", self.repair(c).await),
            Some(Command::Transfer(c)) => ("transfer", self.transfer(c).await),
            Some(Command::Delete(c)) => ("delete", self.delete(c).await),
            None => ("unknown", Err(Error::Malformed("command without a body"))),
        };
        self.metrics.command(kind, r.is_ok());
        self.metrics.observe_usage(self.shards.usage());
        match r {
            Ok(()) => {
                tracing::info!(id = %cmd.id, kind, "command done");
                CommandResult {
                    command_id: cmd.id,
                    ok: true,
                    error: String::new(),
                    retry: false,
                }
            }
            Err(e) => {
                tracing::warn!(id = %cmd.id, kind, error = %e, "command failed");
                CommandResult {
                    command_id: cmd.id,
                    ok: false,
                    error: e.to_string(),
                    retry: matches!(e, Error::StaleDelete { .. }),
                }
            }
        }
    }

    async fn delete(&self, c: DeleteCommand) -> Result<()> {
        let hashes = c
            .hashes
            .iter()
            .map(|h| parse_hash(h, "delete.hashes[]"))
            .collect::<Result<Vec<_>>>()?;
        self.tokens.check(&c.token, Op::Delete, &hashes)?;
        let bound = self.shards.delete_bound(c.put_epoch, c.put_seq)?;
        let mut total = crate::service::DeleteCounts::default();
        // In batches, each paid for from the rate limit before it runs.
        for batch in hashes.chunks(64) {
            let mut bytes = 0;
            for h in batch {
                bytes += self.shards.record_len(h)?.unwrap_or(0);
            }
            self.gc_rate.take(bytes).await;
            let (shards, batch) = (self.shards.clone(), batch.to_vec());
            let r = tokio::task::spawn_blocking(move || delete_older(&shards, &batch, bound))
                .await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
            total.deleted += r.deleted;
            total.missing += r.missing;
            total.kept += r.kept;
            total.freed_bytes += r.freed_bytes;
        }
        tracing::info!(
            deleted = total.deleted,
            missing = total.missing,
            kept = total.kept,
            freed = total.freed_bytes,
            "delete command"
        );
        let shards = self.shards.clone();
        tokio::task::spawn_blocking(move || shards.maybe_reclaim())
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
        Ok(())
    }

    async fn address_of(&self, node_id: &str, given: &str) -> Result<String> {
        if !given.is_empty() {
            return Ok(given.to_string());
        }
        let rec = self.p2p.resolve(node_id).await?;
        tracing::debug!(node = node_id, address = %rec.grpc_address, "resolved through the DHT");
        Ok(rec.grpc_address)
    }

    async fn read_local(&self, hash: Hash) -> Result<Bytes> {
        let shards = self.shards.clone();
        let r = tokio::task::spawn_blocking(move || shards.get(&hash))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        if let Err(Error::Corrupt { .. }) = &r {
            self.metrics.corrupt_shards.inc();
        }
        r
    }

    async fn transfer(&self, c: TransferCommand) -> Result<()> {
        let hash = parse_hash(&c.hash, "transfer.hash")?;
        let data = self.read_local(hash).await?;
        let addr = self
            .address_of(&c.target_node_id, &c.target_address)
            .await?;
        let mut client = connect(&addr, &c.target_node_id, self.tls.as_deref()).await?;
        let n = data.len() as u64;
        push_shard(&mut client, &c.target_node_id, &hash, data, &c.target_token).await?;
        self.metrics.bytes_downloaded.inc_by(n);
        Ok(())
    }

    async fn fetch_source(
        &self,
        meta_hash: Hash,
        shard_size: usize,
        src: ShardLocation,
    ) -> Result<(usize, Bytes)> {
        let hash = parse_hash(&src.hash, "repair.sources[].hash")?;
        if hash != meta_hash {
            return Err(Error::HashMismatch {
                expected: meta_hash,
                actual: hash,
            });
        }
        let addr = self.address_of(&src.node_id, &src.address).await?;
        let mut client = connect(&addr, &src.node_id, self.tls.as_deref()).await?;
        let data = fetch_shard(&mut client, &src.node_id, &hash, &src.token).await?;
        if data.len() != shard_size {
            return Err(Error::SizeMismatch {
                declared: shard_size as u64,
                received: data.len() as u64,
            });
        }
        let actual = Hash::of(&data);
        if actual != hash {
            return Err(Error::HashMismatch {
                expected: hash,
                actual,
            });
        }
        Ok((src.index as usize, data))
    }

    async fn repair(&self, c: RepairCommand) -> Result<()> {
        let r = self.rebuild(c).await?;
        if r.errors.is_empty() {
            Ok(())
        } else {
            Err(Error::Peer {
                node: "targets".into(),
                reason: r.errors.join("; "),
            })
        }
    }

    /// `ChunkService.Repair`: a repair sent directly by the rebalancer, which must hold a
    /// gateway or rebalancer Put token for the target shard on this node.
    pub async fn repair_now(&self, c: RepairCommand) -> Result<RepairResponse> {
        let info = c
            .chunk
            .as_ref()
            .ok_or(Error::Malformed("repair command without chunk"))?;
        let want = info
            .shard_hashes
            .get(c.target_index as usize)
            .ok_or(Error::Malformed(
                "repair target index beyond the chunk's shards",
            ))?;
        let want = parse_hash(want, "chunk.shard_hashes[]")?;
        let cap = self.tokens.check(&c.target_token, Op::Put, &[want])?;
        if cap.role == Role::Client {
            return Err(Error::Token(TokenError::RoleNotAllowed {
                role: cap.role,
                op: Op::Put,
            }));
        }
        self.rebuild(c).await
    }

    /// Fetches k sources, rebuilds shard `target_index` (kept here) and those of
    /// `more_targets` (pushed to their nodes, in parallel); or, when the target shard itself is
    /// among the sources (a drain), copies it. Per-target failures are listed in
    /// the response; an error means nothing could be rebuilt.
    async fn rebuild(&self, c: RepairCommand) -> Result<RepairResponse> {
        let info = c
            .chunk
            .ok_or(Error::Malformed("repair command without chunk"))?;
        let meta = cyxcloud_proto::convert::chunk_meta(&info).map_err(|s| Error::Peer {
            node: "gateway".into(),
            reason: format!("repair command has invalid chunk metadata: {}", s.message()),
        })?;
        let total = meta.profile.total();
        let k = meta.profile.data();
        let target = c.target_index as usize;
        if target >= total || c.more_targets.iter().any(|t| t.index as usize >= total) {
            return Err(Error::Malformed(
                "repair target index beyond the chunk's shards",
            ));
        }
        let want = meta.shard_hashes[target];
        let here = self.shards.contains(&want)?;
        let mut resp = RepairResponse::default();
        if here && c.more_targets.is_empty() {
            resp.stored.push(target as u32);
            return Ok(resp);
        }
        if !here && !self.lifecycle.accepts_puts() {
            return Err(Error::Draining {
                state: self.lifecycle.state().as_str(),
            });
        }
        let shard_size = meta.shard_size as usize;
        // A copy (drain): the shard itself is a source, and only it is wanted.
        if c.more_targets.is_empty()
            && let Some(src) = c.sources.iter().find(|s| s.index as usize == target)
        {
            let (_, data) = self.fetch_source(want, shard_size, src.clone()).await?;
            let n = data.len() as u64;
            let shards = self.shards.clone();
            tokio::task::spawn_blocking(move || shards.put(&want, &data))
                .await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
            tracing::info!(chunk = %meta.id, index = target, "shard copied");
            resp.stored.push(target as u32);
            resp.bytes_read = n;
            resp.bytes_written = n;
            return Ok(resp);
        }
        let rebuilt_idx: std::collections::BTreeSet<usize> = std::iter::once(target)
            .chain(c.more_targets.iter().map(|t| t.index as usize))
            .collect();
        let mut slots: Vec<Option<Bytes>> = vec![None; total];
        let mut have = 0;
        let mut failures = Vec::new();
        let mut pending = FuturesUnordered::new();
        for src in c.sources {
            let idx = src.index as usize;
            if idx >= total || rebuilt_idx.contains(&idx) {
                failures.push(format!("source index {idx} is not a usable shard"));
                continue;
            }
            pending.push(self.fetch_source(meta.shard_hashes[idx], shard_size, src));
        }
        while let Some(r) = pending.next().await {
            match r {
                Ok((i, data)) if slots[i].is_none() => {
                    resp.bytes_read += data.len() as u64;
                    slots[i] = Some(data);
                    have += 1;
                    if have >= k {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => failures.push(e.to_string()),
            }
        }
        drop(pending);
        if have < k {
            return Err(Error::Peer {
                node: "sources".into(),
                reason: format!(
                    "only {have} of the {k} shards needed could be fetched: {}",
                    failures.join("; ")
                ),
            });
        }
        let shards = self.shards.clone();
        let id = meta.id;
        let rebuilt = tokio::task::spawn_blocking(move || -> Result<Vec<Bytes>> {
            let codec = codec::codec(meta.codec, meta.profile);
            let decode_err = |e: cyxcloud_core::error::CodecError| Error::Peer {
                node: "sources".into(),
                reason: format!("decode failed: {e}"),
            };
            let payload = codec
                .decode(&slots, meta.encoded_size as usize)
                .map_err(decode_err)?;
            let rebuilt = codec.encode(&Bytes::from(payload)).map_err(decode_err)?;
            for &i in &rebuilt_idx {
                let actual = Hash::of(&rebuilt[i]);
                if actual != meta.shard_hashes[i] {
                    return Err(Error::HashMismatch {
                        expected: meta.shard_hashes[i],
                        actual,
                    });
                }
            }
            if !here {
                shards.put(&want, &rebuilt[target])?;
            }
            Ok(rebuilt)
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
        resp.stored.push(target as u32);
        if !here {
            resp.bytes_written += rebuilt[target].len() as u64;
        }
        let mut pushes = FuturesUnordered::new();
        for t in c.more_targets {
            let data = rebuilt[t.index as usize].clone();
            let hash = Hash::of(&data);
            pushes.push(async move {
                let r = async {
                    let addr = self.address_of(&t.node_id, &t.address).await?;
                    let mut client = connect(&addr, &t.node_id, self.tls.as_deref()).await?;
                    let n = data.len() as u64;
                    push_shard(&mut client, &t.node_id, &hash, data, &t.token).await?;
                    Ok::<u64, Error>(n)
                }
                .await;
                (t.index, t.node_id, r)
            });
        }
        while let Some((index, node, r)) = pushes.next().await {
            match r {
                Ok(n) => {
                    resp.stored.push(index);
                    resp.bytes_written += n;
                    self.metrics.bytes_downloaded.inc_by(n);
                }
                Err(e) => resp.errors.push(format!("shard {index} to {node}: {e}")),
            }
        }
        tracing::info!(chunk = %id, stored = ?resp.stored, errors = resp.errors.len(), "shards repaired");
        Ok(resp)
    }
}
