//! The `Maintenance` gRPC service (proto/cyxcloud/v1/maintenance.proto), for the rebalancer
//! and admins only: which chunks need work, least redundant first; the node view the planner
//! places on; grants (a lease per chunk and the tokens a repair needs); and the
//! compare-and-set commit that moves rebuilt shards into the layout (docs/adr/0007).
//!
//! Invariants:
//! * a chunk is repaired by one holder at a time (lease `repair:<key>` in `leases`);
//! * a rebuilt copy is protected from garbage collection from its grant (`repair_targets`)
//!   until its commit, abandonment or expiry, when every copy the layout does not name is
//!   queued for deletion (re-checked against references at delivery, see `registry`);
//! * a shard row changes only if it still names the node and hash the rebalancer planned
//!   from, so a concurrent delete, overwrite or other repair of the chunk always wins.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use cyxcloud_core::Hash;
use cyxcloud_core::token::{Capability, Op, Role, Scope};
use cyxcloud_proto::v1;
use tonic::{Request, Response, Status};

use crate::Gateway;
use crate::db::{Tx, args, now_ns, write_tx};
use crate::error::{Error, Result};
use crate::layout::{CHUNK_COLS, meta_from_row};

const STORED: i64 = v1::ShardState::Stored as i64;
const ONLINE: i64 = v1::NodeState::Online as i64;
const DRAINING: i64 = v1::NodeState::Draining as i64;
/// Longest a grant (its tokens, lease and GC protection) may last.
const MAX_LEASE: Duration = Duration::from_secs(3600);
const DEFAULT_LEASE: Duration = Duration::from_secs(600);

fn now_ms() -> i64 {
    now_ns() / 1_000_000
}

fn lease_name(key: &Hash) -> String {
    format!("repair:{key}")
}

/// Chunks with a shard that is not stored, on a node that is not online, or queued for repair.
const DEGRADED: &str = "SELECT s.chunk_id FROM shards s JOIN nodes n ON n.id = s.node_id WHERE n.state <> $1 \
     UNION SELECT chunk_id FROM shards WHERE state IN ($2, $3, $4, $5) \
     UNION SELECT chunk_id FROM repairs";

/// Per degraded chunk: readable shards (stored, on online or draining nodes) minus k, and
/// the shards that are not healthy (stored on an online node).
fn margins_sql(tail: &str) -> String {
    format!(
        "WITH bad AS ({DEGRADED}), m AS (\
           SELECT c.id AS id, c.shard_size AS shard_size, \
             SUM(CASE WHEN s.state = $6 AND n.state IN ($1, $7) THEN 1 ELSE 0 END) - c.data_shards AS margin, \
             c.data_shards + c.parity_shards - SUM(CASE WHEN s.state = $6 AND n.state = $1 THEN 1 ELSE 0 END) AS lost \
           FROM bad b JOIN chunks c ON c.id = b.chunk_id JOIN shards s ON s.chunk_id = c.id \
           LEFT JOIN nodes n ON n.id = s.node_id GROUP BY c.id, c.shard_size, c.data_shards, c.parity_shards) \
         {tail}"
    )
}

fn degraded_args() -> Vec<crate::db::Arg> {
    args![
        ONLINE,
        v1::ShardState::Unspecified as i64,
        v1::ShardState::Pending as i64,
        v1::ShardState::Lost as i64,
        v1::ShardState::Corrupt as i64,
        STORED,
        DRAINING
    ]
}

#[derive(Clone, Debug)]
pub struct MaintenanceService {
    gw: Gateway,
}

impl MaintenanceService {
    pub fn new(gw: Gateway) -> Self {
        MaintenanceService { gw }
    }

    fn admin<T>(&self, req: &Request<T>) -> Result<()> {
        if !crate::control::caller_of(&self.gw, req.metadata())?.admin {
            return Err(Error::PermissionDenied(
                "the maintenance API is for the rebalancer and admins".into(),
            ));
        }
        Ok(())
    }

    fn finish<T>(
        &self,
        method: &str,
        started: Instant,
        r: Result<T>,
    ) -> Result<Response<T>, Status> {
        crate::control::respond(&self.gw, method, started, r)
    }

    /// The worst `limit` degraded chunks (not in `exclude`), with totals over all of them.
    pub async fn degraded(&self, limit: u32, exclude: &[Hash]) -> Result<v1::DegradedResponse> {
        let limit = if limit == 0 { 100 } else { limit.min(10_000) } as i64;
        let db = &self.gw.db;
        let (total, bytes) = repair_backlog(db).await?;
        let mut a = degraded_args();
        a.extend(args![limit + exclude.len() as i64]);
        let keys: Vec<Hash> = db
            .all(
                margins_sql("SELECT id FROM m ORDER BY margin, lost DESC, id LIMIT $8"),
                a,
            )
            .await?
            .iter()
            .map(|r| r.hash(0))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .filter(|k| !exclude.contains(k))
            .take(limit as usize)
            .collect();
        let mut chunks = Vec::with_capacity(keys.len());
        let mut tx = db.read().await?;
        let r = async {
            for key in keys {
                if let Some(c) = degraded_chunk(&mut tx, &key).await? {
                    chunks.push(c);
                }
            }
            Ok::<(), Error>(())
        }
        .await;
        tx.rollback().await?;
        r?;
        Ok(v1::DegradedResponse {
            chunks,
            total,
            bytes,
        })
    }

    /// A page of every chunk, in key order.
    pub async fn chunks(&self, after: &[u8], limit: u32) -> Result<v1::ChunksResponse> {
        let limit = if limit == 0 { 256 } else { limit.min(10_000) } as i64;
        let mut tx = self.gw.db.read().await?;
        let r = async {
            let keys: Vec<Hash> = tx
                .all(
                    "SELECT id FROM chunks WHERE id > $1 ORDER BY id LIMIT $2",
                    args![after.to_vec(), limit + 1],
                )
                .await?
                .iter()
                .map(|r| r.hash(0))
                .collect::<Result<_>>()?;
            let more = keys.len() as i64 > limit;
            let mut chunks = Vec::new();
            for k in keys.iter().take(limit as usize) {
                if let Some(mut c) = degraded_chunk(&mut tx, k).await? {
                    c.reason.clear();
                    chunks.push(c);
                }
            }
            Ok::<_, Error>(v1::ChunksResponse { chunks, more })
        }
        .await;
        tx.rollback().await?;
        r
    }

    pub async fn nodes(&self) -> Result<v1::MaintenanceNodesResponse> {
        let nodes = self.gw.registry.nodes().await?;
        let scores = crate::audits::scores(&self.gw.db).await?;
        let s = &self.gw.config.storage;
        Ok(v1::MaintenanceNodesResponse {
            nodes: nodes
                .into_iter()
                .map(|n| v1::MaintenanceNode {
                    audit: Some(
                        scores
                            .get(&n.id)
                            .cloned()
                            .unwrap_or_else(|| crate::audits::score(0, 0, 0, 0, String::new())),
                    ),
                    free_bytes: n.free_bytes(),
                    id: n.id,
                    address: n.address,
                    state: n.state as i32,
                    topology: Some(v1::Topology {
                        region: n.region,
                        datacenter: n.datacenter,
                        rack: n.rack,
                    }),
                    latency_us: n.latency_us,
                    load: n.load,
                })
                .collect(),
            heartbeat_interval_ms: self.gw.registry.config().heartbeat_interval_ms as u32,
            max_shards_per_node: s.max_shards_per_node,
            max_shards_per_rack: s.max_shards_per_rack,
            max_shards_per_datacenter: s.max_shards_per_datacenter,
        })
    }

    pub async fn grant(&self, r: v1::GrantRepairRequest) -> Result<v1::GrantRepairResponse> {
        let key = Hash::from_slice(&r.key).ok_or_else(|| Error::invalid("key must be 32 bytes"))?;
        if r.holder.is_empty() || r.holder.len() > 200 {
            return Err(Error::invalid("holder must be 1 to 200 characters"));
        }
        if r.targets.is_empty() {
            return Err(Error::invalid("a repair needs at least one target"));
        }
        let ttl = if r.lease_ms == 0 {
            DEFAULT_LEASE
        } else {
            Duration::from_millis(r.lease_ms as u64).min(MAX_LEASE)
        };
        let db = &self.gw.db;
        let meta = {
            let mut tx = db.read().await?;
            let c = degraded_chunk(&mut tx, &key).await;
            tx.rollback().await?;
            c?.ok_or_else(|| Error::not_found(format!("chunk {key}")))?
        };
        let info = meta.info.clone().unwrap_or_default();
        let total = (info.data_shards + info.parity_shards) as usize;
        let rows: BTreeMap<u32, &v1::ShardRecord> =
            meta.shards.iter().map(|s| (s.index, s)).collect();
        let nodes = self.gw.registry.node_map().await?;
        // Everything is checked before the lease is taken.
        let mut seen = std::collections::BTreeSet::new();
        for t in &r.targets {
            if !t.from_node.is_empty()
                && rows
                    .get(&t.index)
                    .is_none_or(|row| row.node_id != t.from_node)
            {
                return Err(Error::PreconditionFailed(format!(
                    "shard {} of chunk {key} is no longer on node {:?} (repaired or moved meanwhile)",
                    t.index, t.from_node
                )));
            }
            if t.index as usize >= total || !seen.insert(t.index) {
                return Err(Error::invalid(format!(
                    "target index {} is beyond the chunk's {total} shards or repeated",
                    t.index
                )));
            }
            match nodes.get(&t.node_id) {
                Some(n) if n.state == v1::NodeState::Online => {}
                _ => {
                    return Err(Error::PreconditionFailed(format!(
                        "target node {:?} is not online",
                        t.node_id
                    )));
                }
            }
        }
        for s in &r.sources {
            // A source may be a target's own shard: a copy off a draining node.
            let row = rows.get(&s.index).filter(|row| row.node_id == s.node_id);
            if row.is_none() {
                return Err(Error::PreconditionFailed(format!(
                    "shard {} of chunk {key} is not on node {:?} (the layout changed)",
                    s.index, s.node_id
                )));
            }
        }
        if !self
            .gw
            .leases
            .acquire(&lease_name(&key), &r.holder, ttl)
            .await?
        {
            let holder = self
                .gw
                .leases
                .holder(&lease_name(&key))
                .await?
                .unwrap_or_default();
            return Ok(v1::GrantRepairResponse {
                granted: false,
                holder,
                ..Default::default()
            });
        }
        let expires_ms = now_ms() + ttl.as_millis() as i64;
        let expires_at = crate::db::now_secs() + ttl.as_secs().max(60);
        let sign = |node: &str, op: Op, hash: Hash| {
            self.gw.signer.sign(&Capability {
                role: Role::Rebalancer,
                ops: op as u8,
                node_id: node.to_string(),
                expires_at,
                scope: Scope::Shards(vec![hash]),
            })
        };
        let hash_of =
            |i: u32| Hash::from_slice(&info.shard_hashes[i as usize]).unwrap_or(Hash([0; 32]));
        let targets: Vec<v1::RepairTarget> = r
            .targets
            .iter()
            .map(|t| v1::RepairTarget {
                index: t.index,
                node_id: t.node_id.clone(),
                address: nodes
                    .get(&t.node_id)
                    .map(|n| n.address.clone())
                    .unwrap_or_default(),
                token: sign(&t.node_id, Op::Put, hash_of(t.index)),
                from_node: t.from_node.clone(),
            })
            .collect();
        // A copy's protection never shrinks: a later grant of the same target (a retry with a
        // shorter lease) must not expose a copy an earlier grant's commit is about to name.
        write_tx!(db, tx => {
            for t in &targets {
                tx.exec(
                    "INSERT INTO repair_targets (node_id, hash, chunk_id, idx, holder, expires_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (node_id, hash, chunk_id, idx) \
                     DO UPDATE SET holder = excluded.holder, expires_ms = CASE \
                     WHEN repair_targets.expires_ms > excluded.expires_ms THEN repair_targets.expires_ms \
                     ELSE excluded.expires_ms END",
                    args![t.node_id.as_str(), &hash_of(t.index), &key, t.index, r.holder.as_str(), expires_ms],
                )
                .await?;
            }
            repair_event(&mut tx, &key, "started", targets.len(), info.shard_size as u64, &r.holder).await?;
            Ok(())
        });
        let sources = r
            .sources
            .iter()
            .map(|s| {
                let n = nodes.get(&s.node_id);
                v1::ShardLocation {
                    index: s.index,
                    hash: info.shard_hashes[s.index as usize].clone(),
                    node_id: s.node_id.clone(),
                    address: n.map(|n| n.address.clone()).unwrap_or_default(),
                    state: v1::ShardState::Stored as i32,
                    token: sign(&s.node_id, Op::Get, hash_of(s.index)),
                    latency_us: n.map_or(0, |n| n.latency_us),
                }
            })
            .collect();
        Ok(v1::GrantRepairResponse {
            granted: true,
            holder: r.holder,
            chunk: Some(info),
            sources,
            targets,
        })
    }

    pub async fn commit(&self, r: v1::CommitRepairRequest) -> Result<v1::CommitRepairResponse> {
        let key = Hash::from_slice(&r.key).ok_or_else(|| Error::invalid("key must be 32 bytes"))?;
        let mut moves = Vec::with_capacity(r.moves.len());
        for m in &r.moves {
            let hash = Hash::from_slice(&m.hash)
                .ok_or_else(|| Error::invalid("moves[].hash must be 32 bytes"))?;
            if m.to_node.is_empty() {
                return Err(Error::invalid("moves[].to_node is empty"));
            }
            moves.push((m.index, hash, m.from_node.clone(), m.to_node.clone()));
        }
        let holder = r.holder.clone();
        let applied = write_tx!(self.gw.db, tx => {
            let mut applied = Vec::with_capacity(moves.len());
            for (index, hash, from, to) in &moves {
                // A copy moved to another node counts only while this holder's grant still
                // protects it there: once the grant has ended (committed, abandoned or expired)
                // the copy may have been collected, and a late commit (the chunk deleted and
                // written again meanwhile, say) must not name it. Found by gc_model.
                let granted = from == to
                    || tx
                        .opt(
                            "SELECT 1 FROM repair_targets WHERE chunk_id = $1 AND node_id = $2 \
                             AND hash = $3 AND holder = $4",
                            args![&key, to.as_str(), hash, holder.as_str()],
                        )
                        .await?
                        .is_some();
                let n = if granted {
                    tx.exec(
                        "UPDATE shards SET node_id = $5, state = $6, audited_ms = $7 WHERE chunk_id = $1 \
                         AND idx = $2 AND node_id = $3 AND hash = $4",
                        args![&key, *index, from.as_str(), hash, to.as_str(), STORED, now_ms()],
                    )
                    .await?
                } else {
                    0
                };
                if n > 0 {
                    tx.exec(
                        "DELETE FROM shard_challenges WHERE chunk_id = $1 AND idx = $2",
                        args![&key, *index],
                    )
                    .await?;
                    tx.exec(
                        "DELETE FROM repairs WHERE chunk_id = $1 AND idx = $2",
                        args![&key, *index],
                    )
                    .await?;
                    if from != to {
                        crate::layout::queue_gc(&mut tx, from, hash).await?;
                    }
                } else if from != to {
                    crate::layout::queue_gc(&mut tx, to, hash).await?;
                }
                applied.push(n > 0);
            }
            release_targets(&mut tx, &key, &holder).await?;
            let moved = applied.iter().filter(|a| **a).count();
            let shard_size = tx
                .opt("SELECT shard_size FROM chunks WHERE id = $1", args![&key])
                .await?
                .map(|r| r.u64(0))
                .transpose()?
                .unwrap_or(0);
            if moved > 0 {
                crate::layout::touch_users(&mut tx, &key).await?;
            }
            let phase = if moved > 0 { "done" } else { "abandoned" };
            repair_event(&mut tx, &key, phase, moved, shard_size, &holder).await?;
            Ok((applied, moved as u64 * shard_size))
        });
        let (applied, bytes) = applied;
        self.gw.repair_rate.record(bytes);
        self.gw.leases.release(&lease_name(&key), &r.holder).await?;
        Ok(v1::CommitRepairResponse { applied })
    }

    /// A rebalancer token to list `node`'s shards.
    pub async fn node_token(&self, node: &str) -> Result<v1::NodeTokenResponse> {
        let n = self
            .gw
            .registry
            .node_map()
            .await?
            .remove(node)
            .ok_or_else(|| Error::not_found(format!("node {node:?}")))?;
        Ok(v1::NodeTokenResponse {
            token: self.gw.signer.sign(&Capability {
                role: Role::Rebalancer,
                ops: Op::Get as u8,
                node_id: node.to_string(),
                expires_at: crate::db::now_secs() + 600,
                scope: Scope::Any,
            }),
            address: n.address,
        })
    }

    /// Of `hashes` on `node`, those nothing refers to there.
    pub async fn unreferenced(&self, r: &v1::OrphansRequest) -> Result<Vec<Hash>> {
        let hashes = orphan_hashes(r)?;
        let mut tx = self.gw.db.read().await?;
        let out = unreferenced_in(&mut tx, &r.node_id, &hashes).await;
        tx.rollback().await?;
        out
    }

    /// Queues the unreferenced ones of `hashes` for deletion on `node`.
    pub async fn collect_orphans(&self, r: &v1::OrphansRequest) -> Result<Vec<Hash>> {
        let hashes = orphan_hashes(r)?;
        let node = r.node_id.clone();
        let queued = write_tx!(self.gw.db, tx => {
            let orphans = unreferenced_in(&mut tx, &node, &hashes).await?;
            for h in &orphans {
                crate::layout::queue_gc(&mut tx, &node, h).await?;
            }
            Ok(orphans)
        });
        if !queued.is_empty() {
            tracing::info!(node = %r.node_id, orphans = queued.len(), "orphaned shards queued for deletion");
        }
        Ok(queued)
    }

    pub async fn abandon(&self, r: v1::AbandonRepairRequest) -> Result<()> {
        let key = Hash::from_slice(&r.key).ok_or_else(|| Error::invalid("key must be 32 bytes"))?;
        let holder = r.holder.clone();
        write_tx!(self.gw.db, tx => {
            release_targets(&mut tx, &key, &holder).await?;
            repair_event(&mut tx, &key, "abandoned", 0, 0, &holder).await
        });
        self.gw.leases.release(&lease_name(&key), &r.holder).await
    }
}

/// Journals a repair event (`repair.*` on `/ws`, visible to everyone like node events).
async fn repair_event(
    tx: &mut Tx,
    key: &Hash,
    phase: &str,
    shards: usize,
    shard_size: u64,
    holder: &str,
) -> Result<()> {
    let seq = crate::journal::next_seq(tx).await?;
    let ev = v1::ChangeEvent {
        seq,
        kind: v1::ChangeKind::Repair as i32,
        time_ns: now_ns(),
        repair: Some(v1::RepairInfo {
            chunk_key: key.0.to_vec(),
            phase: phase.to_string(),
            shards: shards as u32,
            bytes: shards as u64 * shard_size,
            holder: holder.to_string(),
        }),
        ..Default::default()
    };
    crate::journal::record(tx, ev, "").await
}

/// Shard bytes committed by repairs through this gateway, over a sliding window: the rate
/// behind the ETA in `cyxcloud status`.
#[derive(Debug, Default)]
pub struct RepairRate {
    window: std::sync::Mutex<std::collections::VecDeque<(Instant, u64)>>,
}

/// How far back the repair rate looks.
const RATE_WINDOW: Duration = Duration::from_secs(300);

impl RepairRate {
    pub fn record(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        w.push_back((now, bytes));
        while w
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW)
        {
            w.pop_front();
        }
    }

    /// Bytes a second over the window (0 when nothing was repaired in it).
    pub fn per_sec(&self) -> f64 {
        let w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let recent: Vec<_> = w
            .iter()
            .filter(|(t, _)| now.duration_since(*t) <= RATE_WINDOW)
            .collect();
        let Some((first, _)) = recent.first() else {
            return 0.0;
        };
        let bytes: u64 = recent.iter().map(|(_, b)| b).sum();
        bytes as f64 / now.duration_since(*first).as_secs_f64().max(1.0)
    }
}

/// Degraded chunks and the shard bytes to rebuild for them.
pub async fn repair_backlog(db: &crate::db::Db) -> Result<(u64, u64)> {
    let r = db
        .one(
            margins_sql(
                "SELECT COUNT(*), CAST(COALESCE(SUM(lost * shard_size), 0) AS BIGINT) FROM m",
            ),
            degraded_args(),
        )
        .await?;
    Ok((r.u64(0)?, r.u64(1)?))
}

/// Ends the GC protection of a holder's rebuilt copies of `key`: each is queued for deletion,
/// which spares it if the layout names it (re-checked at delivery).
async fn release_targets(tx: &mut Tx, key: &Hash, holder: &str) -> Result<()> {
    let rows = tx
        .all(
            "DELETE FROM repair_targets WHERE chunk_id = $1 AND holder = $2 RETURNING node_id, hash",
            args![key, holder],
        )
        .await?;
    for r in &rows {
        crate::layout::queue_gc(tx, &r.text(0)?, &r.hash(1)?).await?;
    }
    Ok(())
}

/// Ends the protection of grants whose holder neither committed nor abandoned them in time
/// (the `repair-grant-expiry` worker).
pub async fn expire_grants(db: &crate::db::Db) -> Result<u64> {
    let now = now_ms();
    let n = write_tx!(db, tx => {
        let rows = tx
            .all(
                "DELETE FROM repair_targets WHERE expires_ms < $1 RETURNING node_id, hash",
                args![now],
            )
            .await?;
        for r in &rows {
            crate::layout::queue_gc(&mut tx, &r.text(0)?, &r.hash(1)?).await?;
        }
        Ok(rows.len() as u64)
    });
    Ok(n)
}

/// A chunk's description, shard rows and first reason, if it is still stored.
async fn degraded_chunk(tx: &mut Tx, key: &Hash) -> Result<Option<v1::DegradedChunk>> {
    let Some(row) = tx
        .opt(
            format!("SELECT {CHUNK_COLS} FROM chunks c WHERE c.id = $1"),
            args![key],
        )
        .await?
    else {
        return Ok(None);
    };
    let mut meta = meta_from_row(&row, 0)?;
    let shard_rows = tx
        .all(
            "SELECT s.idx, s.hash, s.node_id, s.state, COALESCE(n.state, 0) FROM shards s \
             LEFT JOIN nodes n ON n.id = s.node_id WHERE s.chunk_id = $1 ORDER BY s.idx",
            args![key],
        )
        .await?;
    let mut shards = Vec::with_capacity(shard_rows.len());
    let mut reason = String::new();
    let mut node_states: HashMap<String, i64> = HashMap::new();
    for r in &shard_rows {
        let s = v1::ShardRecord {
            index: r.u32(0)?,
            hash: r.blob(1)?,
            node_id: r.text(2)?,
            state: r.i64(3)? as i32,
        };
        node_states.insert(s.node_id.clone(), r.i64(4)?);
        meta.shard_hashes.push(r.hash(1)?);
        shards.push(s);
    }
    if let Some(q) = tx
        .opt(
            "SELECT reason FROM repairs WHERE chunk_id = $1 ORDER BY created_ns LIMIT 1",
            args![key],
        )
        .await?
    {
        reason = q.text(0)?;
    } else if let Some((node, st)) = node_states.iter().find(|(_, st)| **st != ONLINE) {
        let st = v1::NodeState::try_from(*st as i32).unwrap_or(v1::NodeState::Unspecified);
        reason = format!(
            "node {node} is {}",
            st.as_str_name()
                .trim_start_matches("NODE_STATE_")
                .to_lowercase()
        );
    }
    if meta.shard_hashes.len() != meta.profile.total() {
        return Err(Error::Corrupt(format!(
            "chunk {key} has {} shard rows, expected {}",
            meta.shard_hashes.len(),
            meta.profile.total()
        )));
    }
    Ok(Some(v1::DegradedChunk {
        key: key.0.to_vec(),
        info: Some(v1::ChunkInfo::from(&meta)),
        shards,
        reason,
    }))
}

fn orphan_hashes(r: &v1::OrphansRequest) -> Result<Vec<Hash>> {
    if r.node_id.is_empty() {
        return Err(Error::invalid("node_id is empty"));
    }
    if r.hashes.len() > 100_000 {
        return Err(Error::invalid("at most 100000 hashes per request"));
    }
    r.hashes
        .iter()
        .map(|h| Hash::from_slice(h).ok_or_else(|| Error::invalid("hashes[] must be 32 bytes")))
        .collect()
}

/// The hashes no shard row, in-flight write or granted repair names on `node`.
async fn unreferenced_in(tx: &mut Tx, node: &str, hashes: &[Hash]) -> Result<Vec<Hash>> {
    let mut out = Vec::new();
    for h in hashes {
        let used = tx
            .opt(
                "SELECT 1 WHERE EXISTS (SELECT 1 FROM shards WHERE node_id = $1 AND hash = $2) \
                 OR EXISTS (SELECT 1 FROM write_targets WHERE node_id = $1 AND hash = $2) \
                 OR EXISTS (SELECT 1 FROM repair_targets WHERE node_id = $1 AND hash = $2)",
                args![node, h],
            )
            .await?
            .is_some();
        if !used {
            out.push(*h);
        }
    }
    Ok(out)
}

fn hashes(list: &[Vec<u8>]) -> Result<Vec<Hash>> {
    list.iter()
        .map(|h| {
            Hash::from_slice(h).ok_or_else(|| Error::invalid("exclude[] must be 32-byte keys"))
        })
        .collect()
}

/// An admin-only handler: checks the caller, runs `$body` with the request's message as `$r`,
/// records the outcome under `$name`.
macro_rules! admin_rpc {
    ($self:ident, $name:literal, $req:ident, |$r:ident| $body:expr) => {{
        let started = Instant::now();
        let res = async {
            $self.admin(&$req)?;
            let $r = $req.into_inner();
            $body
        }
        .await;
        $self.finish($name, started, res)
    }};
}

fn orphans_response(h: Vec<Hash>) -> v1::OrphansResponse {
    v1::OrphansResponse {
        hashes: h.iter().map(|h| h.0.to_vec()).collect(),
    }
}

#[tonic::async_trait]
impl v1::maintenance_server::Maintenance for MaintenanceService {
    async fn degraded(
        &self,
        request: Request<v1::DegradedRequest>,
    ) -> Result<Response<v1::DegradedResponse>, Status> {
        admin_rpc!(self, "Degraded", request, |r| self
            .degraded(r.limit, &hashes(&r.exclude)?)
            .await)
    }

    async fn chunks(
        &self,
        request: Request<v1::ChunksRequest>,
    ) -> Result<Response<v1::ChunksResponse>, Status> {
        admin_rpc!(self, "Chunks", request, |r| self
            .chunks(&r.after, r.limit)
            .await)
    }

    async fn nodes(
        &self,
        request: Request<v1::MaintenanceNodesRequest>,
    ) -> Result<Response<v1::MaintenanceNodesResponse>, Status> {
        admin_rpc!(self, "MaintenanceNodes", request, |_r| self.nodes().await)
    }

    async fn grant_repair(
        &self,
        request: Request<v1::GrantRepairRequest>,
    ) -> Result<Response<v1::GrantRepairResponse>, Status> {
        admin_rpc!(self, "GrantRepair", request, |r| self.grant(r).await)
    }

    async fn commit_repair(
        &self,
        request: Request<v1::CommitRepairRequest>,
    ) -> Result<Response<v1::CommitRepairResponse>, Status> {
        admin_rpc!(self, "CommitRepair", request, |r| self.commit(r).await)
    }

    async fn audit_batch(
        &self,
        request: Request<v1::AuditBatchRequest>,
    ) -> Result<Response<v1::AuditBatchResponse>, Status> {
        admin_rpc!(self, "AuditBatch", request, |r| {
            crate::audits::batch(&self.gw, r.limit, r.min_age_ms).await
        })
    }

    async fn report_audits(
        &self,
        request: Request<v1::ReportAuditsRequest>,
    ) -> Result<Response<v1::ReportAuditsResponse>, Status> {
        admin_rpc!(self, "ReportAudits", request, |r| {
            let failed = crate::audits::report(&self.gw.db, &r.results).await?;
            Ok(v1::ReportAuditsResponse { failed })
        })
    }

    async fn node_token(
        &self,
        request: Request<v1::NodeTokenRequest>,
    ) -> Result<Response<v1::NodeTokenResponse>, Status> {
        admin_rpc!(self, "NodeToken", request, |r| self
            .node_token(&r.node_id)
            .await)
    }

    async fn unreferenced(
        &self,
        request: Request<v1::OrphansRequest>,
    ) -> Result<Response<v1::OrphansResponse>, Status> {
        admin_rpc!(self, "Unreferenced", request, |r| self
            .unreferenced(&r)
            .await
            .map(orphans_response))
    }

    async fn collect_orphans(
        &self,
        request: Request<v1::OrphansRequest>,
    ) -> Result<Response<v1::OrphansResponse>, Status> {
        admin_rpc!(self, "CollectOrphans", request, |r| self
            .collect_orphans(&r)
            .await
            .map(orphans_response))
    }

    async fn abandon_repair(
        &self,
        request: Request<v1::AbandonRepairRequest>,
    ) -> Result<Response<v1::AbandonRepairResponse>, Status> {
        admin_rpc!(self, "AbandonRepair", request, |r| {
            self.abandon(r).await?;
            Ok(v1::AbandonRepairResponse {})
        })
    }
}
