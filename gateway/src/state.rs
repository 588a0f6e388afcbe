//! The gateway's shared state, and the cached read paths (layouts and directory pages).
//!
//! What is cached is only what is expensive and versioned: the chunk list of a file version
//! (with shard locations) and the first page of a directory. The entry itself is always read
//! fresh (one indexed query), and a cached value is used only when it matches it (same
//! version; same directory path), so renames of ancestors never serve stale paths.

use std::sync::Arc;

use cyxcloud_core::token::TokenSigner;
use cyxcloud_proto::v1;
use prost::Message;
use tokio_util::sync::CancellationToken;

use crate::accounts::{Accounts, Caller};
use crate::cache::{Cache, Kind as CacheKind};
use crate::config::Config;
use crate::db::Db;
use crate::error::{Error, Result};
use crate::layout::{ChunkLayout, Layout, ShardRec};
use crate::metrics::Metrics;
use crate::namespace::{Kind, Namespace, Ref, describe};
use crate::registry::Registry;
use crate::writes::Writes;

/// Everything the gateway's services share (cheap to clone).
#[derive(Clone, Debug)]
pub struct Gateway {
    pub db: Db,
    pub ns: Namespace,
    pub accounts: Accounts,
    pub registry: Registry,
    pub writes: Writes,
    pub signer: TokenSigner,
    pub metrics: Metrics,
    pub cache: Cache,
    pub config: Arc<Config>,
    pub gateway_id: String,
    /// Background workers (state, backoff, leases): see `start_workers`.
    pub workers: cyxcloud_daemon::Workers,
    /// Worker leases shared by every process of this metadata store.
    pub leases: crate::leases::Leases,
    /// Repair bytes committed through this gateway lately (the ETA of `cyxcloud status`).
    pub repair_rate: Arc<crate::maintenance::RepairRate>,
    /// Cancelled at shutdown (ends watch streams and background tasks).
    pub stop: CancellationToken,
    /// TLS (cluster CA, server certificate), unless the cluster opted out.
    pub tls: Option<Arc<crate::tls::GatewayTls>>,
}

fn encode_chunks(version: u64, chunks: &[ChunkLayout]) -> Vec<u8> {
    v1::GetLayoutResponse {
        entry: Some(v1::Entry {
            version,
            ..Default::default()
        }),
        inline_data: Vec::new(),
        is_inline: false,
        chunks: chunks
            .iter()
            .map(|c| v1::ChunkLayout {
                index: c.index,
                offset: c.offset,
                info: Some(v1::ChunkInfo::from(&c.meta)),
                shards: c
                    .shards
                    .iter()
                    .map(|s| v1::ShardLocation {
                        index: s.index,
                        hash: s.hash.0.to_vec(),
                        node_id: s.node_id.clone(),
                        state: s.state as i32,
                        ..Default::default()
                    })
                    .collect(),
            })
            .collect(),
    }
    .encode_to_vec()
}

fn decode_chunks(b: &[u8]) -> Option<(u64, Vec<ChunkLayout>)> {
    let r = v1::GetLayoutResponse::decode(b).ok()?;
    let version = r.entry?.version;
    let mut out = Vec::new();
    for c in r.chunks {
        let meta = cyxcloud_proto::convert::chunk_meta(c.info.as_ref()?).ok()?;
        let shards = c
            .shards
            .iter()
            .map(|s| {
                Some(ShardRec {
                    index: s.index,
                    hash: cyxcloud_core::Hash::from_slice(&s.hash)?,
                    node_id: s.node_id.clone(),
                    state: v1::ShardState::try_from(s.state).ok()?,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        out.push(ChunkLayout {
            key: crate::layout::chunk_key(&meta),
            index: c.index,
            offset: c.offset,
            meta,
            shards,
        });
    }
    Some((version, out))
}

impl Gateway {
    pub fn metrics_db_ok(&self) -> bool {
        self.metrics.db_ok()
    }

    /// [`crate::layout::get_layout`] with the chunk list of the current version cached.
    pub async fn cached_layout(
        &self,
        caller: &Caller,
        r: &Ref,
        offset: u64,
        length: u64,
    ) -> Result<Layout> {
        let entry = self.ns.getattr(caller, r).await?;
        if entry.kind != Kind::File || entry.version == 0 {
            return crate::layout::get_layout(&self.db, caller, r, offset, length).await;
        }
        let end = if length == 0 {
            u64::MAX
        } else {
            offset.saturating_add(length)
        };
        let overlapping = |chunks: Vec<ChunkLayout>| -> Vec<ChunkLayout> {
            chunks
                .into_iter()
                .filter(|c| c.offset < end && c.offset + c.meta.size > offset)
                .collect()
        };
        if let Some(v) = self.cache.get(CacheKind::Layout, entry.id).await
            && let Some((version, chunks)) = decode_chunks(&v)
            && version == entry.version
        {
            return Ok(Layout {
                entry,
                inline: None,
                chunks: overlapping(chunks),
            });
        }
        let ticket = self.cache.ticket(entry.id).await;
        let full = crate::layout::get_layout(&self.db, caller, &Ref::Id(entry.id), 0, 0).await?;
        if full.inline.is_none() && full.entry.version != 0 {
            self.cache
                .put(
                    CacheKind::Layout,
                    entry.id,
                    ticket,
                    encode_chunks(full.entry.version, &full.chunks),
                )
                .await;
        }
        let mut l = full;
        if l.entry.path != entry.path || l.entry.bucket != entry.bucket {
            l.entry = entry.clone();
        }
        l.chunks = overlapping(l.chunks);
        Ok(l)
    }

    /// `ReadDir` with the first default-sized page of a directory cached.
    pub async fn cached_readdir(
        &self,
        caller: &Caller,
        d: &Ref,
        after: &str,
        limit: u32,
    ) -> Result<v1::ReadDirResponse> {
        let cacheable = after.is_empty() && limit == 0;
        let to_proto = |p: crate::namespace::ReadDir| v1::ReadDirResponse {
            entries: p.entries.into_iter().map(Into::into).collect(),
            more: p.more,
        };
        if !cacheable {
            return Ok(to_proto(self.ns.readdir(caller, d, after, limit).await?));
        }
        let dir = self.ns.getattr(caller, d).await?;
        if !dir.kind.is_dir() {
            return Err(Error::NotDirectory {
                what: describe(&dir),
            });
        }
        if dir.id == crate::namespace::ROOT_ID {
            // The root lists the caller's buckets: per caller, not cached.
            return Ok(to_proto(self.ns.readdir(caller, d, after, limit).await?));
        }
        let tag = format!("{}\0{}\0", dir.bucket, dir.path);
        if let Some(v) = self.cache.get(CacheKind::Listing, dir.id).await
            && let Some(rest) = v.strip_prefix(tag.as_bytes())
            && let Ok(page) = v1::ReadDirResponse::decode(rest)
        {
            return Ok(page);
        }
        let ticket = self.cache.ticket(dir.id).await;
        let page = to_proto(self.ns.readdir(caller, &Ref::Id(dir.id), "", 0).await?);
        let mut value = tag.into_bytes();
        value.extend_from_slice(&page.encode_to_vec());
        self.cache
            .put(CacheKind::Listing, dir.id, ticket, value)
            .await;
        Ok(page)
    }
}
