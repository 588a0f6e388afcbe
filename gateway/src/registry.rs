//! The node registry: nodes register and heartbeat; the gateway tracks their state (online,
//! offline after `missed` heartbeat intervals without one, draining, drained once it holds
//! nothing the gateway refers to), measures latency to each (a timed `Stats` call), delivers
//! pending commands in heartbeat replies and records their results. Node state changes are
//! journal events (`CHANGE_KIND_NODE`, `node.*` on `/ws`).
//!
//! Deletes of shards nothing refers to any more (`gc_queue`) become `DeleteCommand`s signed
//! with a Gateway-role token when the node next heartbeats; each hash is re-checked first
//! against stored chunks and in-flight writes, and the command is bound to the put position the
//! heartbeat reported, so the node keeps a shard a later write put again meanwhile. A command
//! the node refuses as stale (`retry`) has its hashes queued again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use cyxcloud_core::Hash;
use cyxcloud_core::token::TokenSigner;
use cyxcloud_proto::signed::Signed;
use cyxcloud_proto::v1;
use prost::Message;

use crate::db::{Db, Tx, args, now_ns, write_tx};
use crate::error::{Error, Result};
use crate::journal;

/// What the gateway knows about a node.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    pub id: String,
    pub name: String,
    pub address: String,
    pub region: String,
    pub datacenter: String,
    pub rack: String,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub available_bytes: u64,
    pub shard_count: u64,
    pub state: v1::NodeState,
    pub last_heartbeat_ms: i64,
    pub latency_us: u32,
    /// The node's 1-minute load average per core, from its last heartbeat.
    pub load: f64,
}

impl NodeView {
    /// Bytes the node can still accept.
    pub fn free_bytes(&self) -> u64 {
        if self.available_bytes > 0 {
            self.available_bytes
        } else {
            self.capacity_bytes.saturating_sub(self.used_bytes)
        }
    }
}

#[derive(Debug, Clone)]
pub struct RegistryConfig {
    pub heartbeat_interval_ms: u64,
    pub missed_heartbeats: u32,
    pub require_machine_keys: bool,
    pub latency_probe_ms: u64,
    pub gateway_id: String,
    /// blake3 of the node join token, when one is configured.
    pub join_token_hash: Option<[u8; 32]>,
}

/// The live node list and when it was read.
type LiveView = (Option<Instant>, Arc<Vec<NodeView>>);

#[derive(Clone)]
pub struct Registry {
    db: Db,
    cfg: Arc<RegistryConfig>,
    signer: TokenSigner,
    accounts: crate::accounts::Accounts,
    view: Arc<RwLock<LiveView>>,
    latency: Arc<Mutex<HashMap<String, u32>>>,
    tls: Option<Arc<crate::tls::GatewayTls>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Registry")
    }
}

const NODE_COLS: &str = "id, name, address, region, datacenter, rack, capacity_bytes, used_bytes, \
    available_bytes, shard_count, state, last_heartbeat_ms, latency_us, load_milli";

fn node_from_row(r: &crate::db::Row) -> Result<NodeView> {
    Ok(NodeView {
        id: r.text(0)?,
        name: r.text(1)?,
        address: r.text(2)?,
        region: r.text(3)?,
        datacenter: r.text(4)?,
        rack: r.text(5)?,
        capacity_bytes: r.u64(6)?,
        used_bytes: r.u64(7)?,
        available_bytes: r.u64(8)?,
        shard_count: r.u64(9)?,
        state: state_of(r.i64(10)?),
        last_heartbeat_ms: r.i64(11)?,
        latency_us: r.u32(12)?,
        load: r.i64(13)? as f64 / 1000.0,
    })
}

fn state_of(v: i64) -> v1::NodeState {
    v1::NodeState::try_from(v as i32).unwrap_or(v1::NodeState::Unspecified)
}

/// How long the live view may be reused before it is read again.
const VIEW_TTL: Duration = Duration::from_millis(250);
/// Hashes per delete command.
const DELETE_BATCH: i64 = 1000;
/// A delivered command without a result is delivered again after this long.
const REDELIVER_NS: i64 = 60_000_000_000;
/// How far a node's signing time may be from the gateway's clock.
const MAX_CLOCK_SKEW_MS: i64 = 10 * 60 * 1000;

/// Refuses a signing time too far from the gateway's clock (a replay of an old message, or a
/// node whose clock is wrong: both must be told).
fn check_clock(node: &str, signed_at_ms: u64) -> Result<()> {
    let skew = signed_at_ms as i64 - now_ms();
    if skew.abs() > MAX_CLOCK_SKEW_MS {
        return Err(Error::Unauthenticated(format!(
            "node {node:?} signed at a time {}s away from the gateway's clock (at most {}s \
             allowed): a replayed message, or the node's clock is wrong",
            skew / 1000,
            MAX_CLOCK_SKEW_MS / 1000
        )));
    }
    Ok(())
}

fn now_ms() -> i64 {
    now_ns() / 1_000_000
}

impl Registry {
    pub fn new(
        db: Db,
        cfg: RegistryConfig,
        signer: TokenSigner,
        accounts: crate::accounts::Accounts,
        tls: Option<Arc<crate::tls::GatewayTls>>,
    ) -> Self {
        Registry {
            db,
            cfg: Arc::new(cfg),
            signer,
            accounts,
            view: Arc::new(RwLock::new((None, Arc::new(Vec::new())))),
            latency: Arc::new(Mutex::new(HashMap::new())),
            tls,
        }
    }

    pub fn config(&self) -> &RegistryConfig {
        &self.cfg
    }

    /// Checks a node's `authorization: Bearer <machine api key>`: it must belong to this node
    /// id; without one, `Ok(false)` (or a refusal when machine keys are required).
    async fn check_machine(&self, node_id: &str, api_key: Option<&str>) -> Result<bool> {
        match api_key {
            Some(k) if !k.is_empty() => {
                let m = self
                    .accounts
                    .machine_for_key(k)
                    .await?
                    .ok_or_else(|| Error::Unauthenticated("unknown machine API key".into()))?;
                if m.node_id != node_id {
                    return Err(Error::Unauthenticated(format!(
                        "the machine API key belongs to node {:?}, not {node_id:?}",
                        m.node_id
                    )));
                }
                Ok(true)
            }
            _ if self.cfg.require_machine_keys => Err(Error::Unauthenticated(
                "this gateway requires a machine API key (authorization: Bearer <api_key>)".into(),
            )),
            _ => Ok(false),
        }
    }

    /// The credential a node id needs to bind its key: a machine API key (checked by
    /// [`Self::check_machine`]) or the cluster's join token.
    fn check_join(&self, req: &v1::RegisterRequest, has_machine_key: bool) -> Result<()> {
        if has_machine_key {
            return Ok(());
        }
        let Some(want) = &self.cfg.join_token_hash else {
            return Err(Error::Unauthenticated(format!(
                "node {:?} is not known here and this gateway admits new nodes only with a machine \
                 API key from the operator account API (no join token is configured)",
                req.node_id
            )));
        };
        if req.join_token.is_empty() {
            return Err(Error::Unauthenticated(format!(
                "node {:?} is not known here: joining needs the cluster's join token \
                 (NODE_JOIN_TOKEN on the node) or a machine API key",
                req.node_id
            )));
        }
        let got = blake3::hash(req.join_token.as_bytes());
        if !crate::accounts::ct_eq(got.as_bytes(), want) {
            return Err(Error::Unauthenticated(format!(
                "node {:?}: wrong join token",
                req.node_id
            )));
        }
        Ok(())
    }

    /// Registers (or re-registers) a node. The registration must be signed by the node's key;
    /// a node id binds to its key on its first registration, which needs a credential
    /// ([`Self::check_join`]); afterwards only that key can register or heartbeat for it.
    pub async fn register(
        &self,
        req: &v1::RegisterRequest,
        api_key: Option<&str>,
        peer: Option<SocketAddr>,
    ) -> Result<v1::RegisterResponse> {
        if req.node_id.is_empty() || req.node_id.len() > 128 {
            return Err(Error::invalid("node_id must be 1 to 128 characters"));
        }
        check_address(&req.grpc_address)?;
        let peer = peer.map_or_else(|| "unknown".to_string(), |p| p.to_string());
        if req.public_key.is_empty() || req.signature.is_empty() {
            return Err(Error::Unauthenticated(format!(
                "the registration of node {:?} is not signed with a node key \
                 (this node is older than the gateway; upgrade cyxcloud-node)",
                req.node_id
            )));
        }
        req.verify(&req.public_key).map_err(|e| {
            tracing::warn!(node = %req.node_id, %peer, error = %e, "refused a registration with a bad signature");
            Error::Unauthenticated(format!("registration of node {:?}: {e}", req.node_id))
        })?;
        check_clock(&req.node_id, req.signed_at_ms)?;
        let has_machine_key = self.check_machine(&req.node_id, api_key).await?;
        let bound = self
            .db
            .opt(
                "SELECT public_key FROM nodes WHERE id = $1",
                args![req.node_id.as_str()],
            )
            .await?
            .map(|r| r.opt_blob(0))
            .transpose()?
            .flatten();
        match &bound {
            Some(k) if k.as_slice() != req.public_key.as_slice() => {
                return Err(self.foreign_key(&req.node_id, &peer, "registration"));
            }
            Some(_) => {}
            None => self.check_join(req, has_machine_key)?,
        }
        let topo = req.topology.clone().unwrap_or_default();
        let reported = state_of(req.state as i64);
        let state = match reported {
            v1::NodeState::Draining | v1::NodeState::Drained => reported,
            _ => v1::NodeState::Online,
        };
        let now = now_ms();
        let stored = write_tx!(self.db, tx => {
            let old = tx
                .opt("SELECT state FROM nodes WHERE id = $1", args![req.node_id.as_str()])
                .await?
                .map(|r| r.i64(0))
                .transpose()?;
            // The row changes only for the key it is bound to (or binds now, when unbound), and
            // only for a newer signature than any seen: a race or a replay changes nothing.
            let n = tx.exec(
                "INSERT INTO nodes (id, name, address, peer_id, p2p_addresses, region, datacenter, rack, \
                 capacity_bytes, used_bytes, available_bytes, shard_count, reported_state, state, \
                 last_heartbeat_ms, registered_ns, latency_us, version, wallet_address, machine_id, \
                 load_milli, connections, bytes_uploaded, bytes_downloaded, public_key, signed_ms) VALUES \
                 ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, 0, $17, $18, $19, 0, 0, 0, 0, $20, $21) \
                 ON CONFLICT (id) DO UPDATE SET name = excluded.name, address = excluded.address, \
                 peer_id = excluded.peer_id, p2p_addresses = excluded.p2p_addresses, region = excluded.region, \
                 datacenter = excluded.datacenter, rack = excluded.rack, capacity_bytes = excluded.capacity_bytes, \
                 used_bytes = excluded.used_bytes, available_bytes = excluded.available_bytes, \
                 shard_count = excluded.shard_count, reported_state = excluded.reported_state, \
                 state = excluded.state, last_heartbeat_ms = excluded.last_heartbeat_ms, \
                 version = excluded.version, wallet_address = excluded.wallet_address, \
                 machine_id = excluded.machine_id, public_key = excluded.public_key, \
                 signed_ms = excluded.signed_ms \
                 WHERE (nodes.public_key IS NULL OR nodes.public_key = excluded.public_key) \
                 AND nodes.signed_ms < excluded.signed_ms",
                args![
                    req.node_id.as_str(),
                    req.name.as_str(),
                    req.grpc_address.as_str(),
                    req.peer_id.as_str(),
                    req.p2p_addresses.join("\n"),
                    topo.region.as_str(),
                    topo.datacenter.as_str(),
                    topo.rack.as_str(),
                    req.capacity_bytes,
                    req.used_bytes,
                    req.capacity_bytes.saturating_sub(req.used_bytes),
                    req.shard_count,
                    reported as i64,
                    state as i64,
                    now,
                    now_ns(),
                    req.version.as_str(),
                    req.wallet_address.as_str(),
                    req.machine_id.as_str(),
                    req.public_key.clone(),
                    req.signed_at_ms as i64
                ],
            )
            .await?;
            if n > 0 && old != Some(state as i64) {
                node_event(&mut tx, &req.node_id, state).await?;
            }
            Ok(n > 0)
        });
        if !stored {
            tracing::warn!(node = %req.node_id, %peer, "refused a registration: replayed, or raced by another key");
            return Err(Error::Unauthenticated(format!(
                "registration of node {:?} refused: its signing time is not newer than the last \
                 one seen (replayed), or another key bound the id first",
                req.node_id
            )));
        }
        self.invalidate_view();
        if bound.is_none() {
            tracing::info!(node = %req.node_id, %peer, key = %hex::encode(&req.public_key), "node joined; its id is bound to its key");
        }
        tracing::info!(node = %req.node_id, address = %req.grpc_address, state = ?state, "node registered");
        let ms = self.cfg.heartbeat_interval_ms;
        // Over TLS, the node serves with a certificate of the cluster CA for its own key.
        let (tls_certificate, ca_certificate) = match &self.tls {
            Some(t) => (
                t.issue_node(&req.grpc_address, &req.public_key)?,
                t.ca.cert_pem().to_string(),
            ),
            None => (String::new(), String::new()),
        };
        Ok(v1::RegisterResponse {
            token_public_keys: vec![self.signer.public_key().to_vec()],
            heartbeat_interval_secs: (ms / 1000).max(1) as u32,
            gateway_id: self.cfg.gateway_id.clone(),
            heartbeat_interval_ms: ms as u32,
            tls_certificate,
            ca_certificate,
        })
    }

    /// The refusal of a node id's registration or heartbeat by a key other than its own.
    fn foreign_key(&self, node: &str, peer: &str, what: &str) -> Error {
        tracing::warn!(node, %peer, "refused a {what} for a node id bound to another key (an impostor, or a node whose data dir was replaced)");
        Error::PermissionDenied(format!(
            "node id {node:?} is bound to another node key; a {what} must be signed by it \
             (a node that lost its data dir, and with it its key, joins again under a new node id)"
        ))
    }

    pub async fn heartbeat(
        &self,
        req: &v1::HeartbeatRequest,
        api_key: Option<&str>,
        peer: Option<SocketAddr>,
    ) -> Result<v1::HeartbeatResponse> {
        self.check_machine(&req.node_id, api_key).await?;
        let peer = peer.map_or_else(|| "unknown".to_string(), |p| p.to_string());
        check_clock(&req.node_id, req.signed_at_ms)?;
        let now = now_ms();
        let reported = state_of(req.state as i64);
        let id = req.node_id.as_str();
        let (known, desired) = write_tx!(self.db, tx => {
            let Some(row) = tx
                .opt("SELECT state, public_key, signed_ms FROM nodes WHERE id = $1", args![id])
                .await?
            else {
                return Ok((false, v1::NodeState::Unspecified));
            };
            // A node without a bound key registers again (signed) before it counts as alive.
            let Some(key) = row.opt_blob(1)? else {
                return Ok((false, v1::NodeState::Unspecified));
            };
            if let Err(e) = req.verify(&key) {
                return Err(if req.signature.is_empty() {
                    Error::Unauthenticated(format!("the heartbeat of node {id:?} is not signed"))
                } else {
                    tracing::warn!(node = id, %peer, error = %e, "refused a forged heartbeat");
                    Error::PermissionDenied(format!("heartbeat of node {id:?}: {e}"))
                });
            }
            if req.signed_at_ms as i64 <= row.i64(2)? {
                tracing::warn!(node = id, %peer, "refused a replayed heartbeat");
                return Err(Error::Unauthenticated(format!(
                    "heartbeat of node {id:?}: its signing time is not newer than the last one seen (replayed)"
                )));
            }
            let old = state_of(row.i64(0)?);
            let mut state = match reported {
                v1::NodeState::Draining | v1::NodeState::Drained => v1::NodeState::Draining,
                _ => v1::NodeState::Online,
            };
            if state == v1::NodeState::Draining && !holds_anything(&mut tx, id).await? {
                state = v1::NodeState::Drained;
            }
            tx.exec(
                "UPDATE nodes SET used_bytes = $2, available_bytes = $3, shard_count = $4, \
                 load_milli = $5, connections = $6, reported_state = $7, state = $8, \
                 last_heartbeat_ms = $9, bytes_uploaded = $10, bytes_downloaded = $11, \
                 signed_ms = $12 WHERE id = $1",
                args![
                    id,
                    req.used_bytes,
                    req.available_bytes,
                    req.shard_count,
                    (req.load * 1000.0) as i64,
                    req.active_connections,
                    reported as i64,
                    state as i64,
                    now,
                    req.bytes_uploaded,
                    req.bytes_downloaded,
                    req.signed_at_ms as i64
                ],
            )
            .await?;
            if old != state {
                node_event(&mut tx, id, state).await?;
            }
            crate::audits::node_reported_corrupt(&mut tx, id, &req.corrupt_shards).await?;
            for r in &req.results {
                tx.exec(
                    "UPDATE node_commands SET state = $3, error = $4 WHERE id = $1 AND node_id = $2",
                    args![
                        r.command_id.as_str(),
                        id,
                        if r.ok { CMD_DONE } else { CMD_FAILED },
                        r.error.as_str()
                    ],
                )
                .await?;
                if !r.ok && r.retry {
                    requeue_deletes(&mut tx, id, &r.command_id).await?;
                }
            }
            Ok((true, if state == v1::NodeState::Drained { state } else { v1::NodeState::Unspecified }))
        });
        if !known {
            return Ok(v1::HeartbeatResponse {
                commands: Vec::new(),
                reregister: true,
                desired_state: 0,
            });
        }
        self.invalidate_view();
        let commands = self.commands_for(id, req.put_epoch, req.put_seq).await?;
        Ok(v1::HeartbeatResponse {
            commands,
            reregister: false,
            desired_state: desired as i32,
        })
    }

    /// Pending commands for a node, plus a delete command for its unreferenced shards, bound
    /// to the put position `(put_epoch, put_seq)` its heartbeat reported.
    async fn commands_for(
        &self,
        node: &str,
        put_epoch: u64,
        put_seq: u64,
    ) -> Result<Vec<v1::NodeCommand>> {
        let now = now_ns();
        let signer = self.signer.clone();
        let cmds = write_tx!(self.db, tx => {
            build_deletes(&mut tx, node, now, put_epoch, put_seq).await?;
            let rows = tx
                .all(
                    "SELECT id, payload FROM node_commands WHERE node_id = $1 AND \
                     (state = $2 OR (state = $3 AND delivered_ns < $4)) AND attempts < 10 \
                     ORDER BY created_ns LIMIT 100",
                    args![node, CMD_PENDING, CMD_DELIVERED, now - REDELIVER_NS],
                )
                .await?;
            let mut out = Vec::new();
            for r in &rows {
                let id = r.text(0)?;
                let mut cmd = v1::NodeCommand::decode(r.blob(1)?.as_slice())
                    .map_err(|e| Error::Corrupt(format!("node command {id}: {e}")))?;
                cmd.id = id.clone();
                // Tokens are signed at delivery so they are fresh.
                if let Some(v1::node_command::Command::Delete(d)) = &mut cmd.command {
                    let hashes = d.hashes.iter().filter_map(|h| Hash::from_slice(h)).collect();
                    d.token = crate::placement::delete_token(&signer, node, hashes, crate::db::now_secs() + 3600);
                }
                tx.exec(
                    "UPDATE node_commands SET state = $2, delivered_ns = $3, attempts = attempts + 1 WHERE id = $1",
                    args![id.as_str(), CMD_DELIVERED, now],
                )
                .await?;
                out.push(cmd);
            }
            Ok(out)
        });
        Ok(cmds)
    }

    /// All nodes (any state), by id.
    pub async fn nodes(&self) -> Result<Vec<NodeView>> {
        let rows = self
            .db
            .all(
                format!("SELECT {NODE_COLS} FROM nodes ORDER BY id"),
                args![],
            )
            .await?;
        let lat = self
            .latency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        rows.iter()
            .map(|r| {
                let mut n = node_from_row(r)?;
                if let Some(l) = lat.get(&n.id) {
                    n.latency_us = *l;
                }
                Ok(n)
            })
            .collect()
    }

    /// Nodes that may take new shards now (online), read at most [`VIEW_TTL`] ago.
    pub async fn live_nodes(&self) -> Result<Arc<Vec<NodeView>>> {
        {
            let v = self.view.read().unwrap_or_else(|e| e.into_inner());
            if let (Some(at), nodes) = &*v
                && at.elapsed() < VIEW_TTL
            {
                return Ok(nodes.clone());
            }
        }
        let cutoff = now_ms() - self.offline_after_ms();
        let nodes: Vec<NodeView> = self
            .nodes()
            .await?
            .into_iter()
            .filter(|n| n.state == v1::NodeState::Online && n.last_heartbeat_ms >= cutoff)
            .collect();
        let nodes = Arc::new(nodes);
        *self.view.write().unwrap_or_else(|e| e.into_inner()) =
            (Some(Instant::now()), nodes.clone());
        Ok(nodes)
    }

    /// Every node by id (for addresses and latency of read layouts).
    pub async fn node_map(&self) -> Result<HashMap<String, NodeView>> {
        Ok(self
            .nodes()
            .await?
            .into_iter()
            .map(|n| (n.id.clone(), n))
            .collect())
    }

    fn invalidate_view(&self) {
        self.view.write().unwrap_or_else(|e| e.into_inner()).0 = None;
    }

    fn offline_after_ms(&self) -> i64 {
        (self.cfg.heartbeat_interval_ms * self.cfg.missed_heartbeats as u64) as i64
    }

    /// Marks nodes offline that missed `missed_heartbeats` intervals; returns their ids.
    pub async fn sweep(&self) -> Result<Vec<String>> {
        let cutoff = now_ms() - self.offline_after_ms();
        let stale = self
            .db
            .all(
                "SELECT id FROM nodes WHERE state IN ($1, $2) AND last_heartbeat_ms < $3",
                args![
                    v1::NodeState::Online as i64,
                    v1::NodeState::Draining as i64,
                    cutoff
                ],
            )
            .await?;
        if stale.is_empty() {
            return Ok(Vec::new());
        }
        let gone = write_tx!(self.db, tx => {
            let rows = tx
                .all(
                    "UPDATE nodes SET state = $1 WHERE state IN ($2, $3) AND last_heartbeat_ms < $4 RETURNING id",
                    args![
                        v1::NodeState::Offline as i64,
                        v1::NodeState::Online as i64,
                        v1::NodeState::Draining as i64,
                        cutoff
                    ],
                )
                .await?;
            let mut ids = Vec::new();
            for r in &rows {
                let id = r.text(0)?;
                node_event(&mut tx, &id, v1::NodeState::Offline).await?;
                ids.push(id);
            }
            Ok(ids)
        });
        for id in &gone {
            tracing::warn!(node = %id, "node missed {} heartbeats: offline", self.cfg.missed_heartbeats);
        }
        self.invalidate_view();
        Ok(gone)
    }

    /// How often the `node-sweep` worker looks for nodes that stopped heartbeating.
    pub fn sweep_interval(&self) -> Duration {
        Duration::from_millis((self.cfg.heartbeat_interval_ms / 4).clamp(50, 5000))
    }

    /// How often the `latency-probe` worker times every live node.
    pub fn probe_interval(&self) -> Duration {
        Duration::from_millis(self.cfg.latency_probe_ms.max(100))
    }

    /// Times a `Stats` call to every live node.
    pub async fn probe_latency(&self) {
        let Ok(nodes) = self.live_nodes().await else {
            return;
        };
        let mut tasks = Vec::new();
        for n in nodes.iter() {
            let (id, addr) = (n.id.clone(), n.address.clone());
            let ca = self
                .tls
                .as_ref()
                .map(|t| t.ca.cert_pem().as_bytes().to_vec());
            let token = self.signer.sign(&cyxcloud_core::token::Capability {
                role: cyxcloud_core::token::Role::Gateway,
                ops: cyxcloud_core::token::Op::Get as u8,
                node_id: id.clone(),
                expires_at: crate::db::now_secs() + 60,
                scope: cyxcloud_core::token::Scope::Shards(Vec::new()),
            });
            tasks.push(tokio::spawn(async move {
                let t = Instant::now();
                let ok = async {
                    let ch = cyxcloud_proto::channel::endpoint(&addr, ca.as_deref())
                        .ok()?
                        .connect_timeout(Duration::from_secs(2))
                        .timeout(Duration::from_secs(2))
                        .connect()
                        .await
                        .ok()?;
                    let t = Instant::now();
                    v1::chunk_service_client::ChunkServiceClient::new(ch)
                        .stats(v1::StatsRequest { token })
                        .await
                        .ok()?;
                    Some(t.elapsed())
                }
                .await;
                let _ = t;
                (id, ok)
            }));
        }
        for t in tasks {
            if let Ok((id, Some(rtt))) = t.await {
                let us = rtt.as_micros().clamp(1, u32::MAX as u128) as u32;
                self.latency
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id.clone(), us);
                let _ = self
                    .db
                    .exec(
                        "UPDATE nodes SET latency_us = $2 WHERE id = $1",
                        args![id.as_str(), us],
                    )
                    .await;
            }
        }
    }

    /// Queues a command for a node (delivered with its next heartbeat).
    pub async fn queue_command(&self, node: &str, cmd: &v1::NodeCommand) -> Result<String> {
        let id = format!("c-{}", crate::keys::random_id(20)?.to_lowercase());
        let kind = match &cmd.command {
            Some(v1::node_command::Command::Repair(_)) => "repair",
            Some(v1::node_command::Command::Transfer(_)) => "transfer",
            Some(v1::node_command::Command::Delete(_)) => "delete",
            None => return Err(Error::invalid("empty node command")),
        };
        self.db
            .exec(
                "INSERT INTO node_commands (id, node_id, kind, payload, state, created_ns, delivered_ns, attempts, error) \
                 VALUES ($1, $2, $3, $4, $5, $6, 0, 0, '')",
                args![id.as_str(), node, kind, cmd.encode_to_vec(), CMD_PENDING, now_ns()],
            )
            .await?;
        Ok(id)
    }

    /// `(state, error)` of a command.
    pub async fn command_state(&self, id: &str) -> Result<(i64, String)> {
        let r = self
            .db
            .opt(
                "SELECT state, error FROM node_commands WHERE id = $1",
                args![id],
            )
            .await?
            .ok_or_else(|| Error::not_found(format!("command {id}")))?;
        Ok((r.i64(0)?, r.text(1)?))
    }
}

pub const CMD_PENDING: i64 = 0;
pub const CMD_DELIVERED: i64 = 1;
pub const CMD_DONE: i64 = 2;
pub const CMD_FAILED: i64 = 3;

/// Whether any stored chunk (or in-flight write) still has a shard on the node.
async fn holds_anything(tx: &mut Tx, node: &str) -> Result<bool> {
    Ok(tx
        .opt(
            "SELECT 1 FROM shards WHERE node_id = $1 LIMIT 1",
            args![node],
        )
        .await?
        .is_some()
        || tx
            .opt(
                "SELECT 1 FROM write_targets WHERE node_id = $1 LIMIT 1",
                args![node],
            )
            .await?
            .is_some())
}

/// Turns queued deletions for `node` into one delete command (hashes still referenced by a
/// chunk, an in-flight write or a granted repair are dropped from the queue, not deleted). The command carries
/// the put position of the heartbeat this runs for: the node spares shards put after it, which
/// a write begun after this check may have placed there (see the node's `store::recent`).
async fn build_deletes(
    tx: &mut Tx,
    node: &str,
    now: i64,
    put_epoch: u64,
    put_seq: u64,
) -> Result<()> {
    let rows = tx
        .all(
            "SELECT q.hash, \
               CASE WHEN EXISTS (SELECT 1 FROM shards s WHERE s.node_id = q.node_id AND s.hash = q.hash) \
                 THEN CAST(1 AS BIGINT) ELSE CAST(0 AS BIGINT) END, \
               CASE WHEN EXISTS (SELECT 1 FROM write_targets w WHERE w.node_id = q.node_id AND w.hash = q.hash) \
                 OR EXISTS (SELECT 1 FROM repair_targets t WHERE t.node_id = q.node_id AND t.hash = q.hash) \
                 THEN CAST(1 AS BIGINT) ELSE CAST(0 AS BIGINT) END \
             FROM gc_queue q WHERE q.node_id = $1 ORDER BY q.created_ns LIMIT $2",
            args![node, DELETE_BATCH],
        )
        .await?;
    if rows.is_empty() {
        return Ok(());
    }
    let mut hashes = Vec::new();
    for r in &rows {
        let h = r.blob(0)?;
        tx.exec(
            "DELETE FROM gc_queue WHERE node_id = $1 AND hash = $2",
            args![node, h.clone()],
        )
        .await?;
        if !r.bool(1)? && !r.bool(2)? {
            hashes.push(h);
        }
    }
    if hashes.is_empty() {
        return Ok(());
    }
    let cmd = v1::NodeCommand {
        id: String::new(),
        command: Some(v1::node_command::Command::Delete(v1::DeleteCommand {
            hashes,
            token: Vec::new(),
            put_epoch,
            put_seq,
        })),
    };
    let id = format!("c-{}", crate::keys::random_id(20)?.to_lowercase());
    tx.exec(
        "INSERT INTO node_commands (id, node_id, kind, payload, state, created_ns, delivered_ns, attempts, error) \
         VALUES ($1, $2, 'delete', $3, $4, $5, 0, 0, '')",
        args![id.as_str(), node, cmd.encode_to_vec(), CMD_PENDING, now],
    )
    .await?;
    Ok(())
}

/// Queues the hashes of a delete command the node refused as stale again, to be checked and
/// bound afresh at its next heartbeat.
async fn requeue_deletes(tx: &mut Tx, node: &str, command: &str) -> Result<()> {
    let Some(row) = tx
        .opt(
            "SELECT payload FROM node_commands WHERE id = $1 AND node_id = $2 AND kind = 'delete'",
            args![command, node],
        )
        .await?
    else {
        return Ok(());
    };
    let cmd = v1::NodeCommand::decode(row.blob(0)?.as_slice())
        .map_err(|e| Error::Corrupt(format!("node command {command}: {e}")))?;
    if let Some(v1::node_command::Command::Delete(d)) = cmd.command {
        for h in d.hashes.iter().filter_map(|h| Hash::from_slice(h)) {
            crate::layout::queue_gc(tx, node, &h).await?;
        }
    }
    Ok(())
}

/// Appends a node state event to the journal.
pub(crate) async fn node_event(tx: &mut Tx, node: &str, state: v1::NodeState) -> Result<()> {
    let seq = journal::next_seq(tx).await?;
    let ev = v1::ChangeEvent {
        seq,
        kind: v1::ChangeKind::Node as i32,
        time_ns: now_ns(),
        node_id: node.to_string(),
        node_state: state as i32,
        ..Default::default()
    };
    journal::record(tx, ev, "").await
}

fn check_address(a: &str) -> Result<()> {
    let rest = a
        .strip_prefix("http://")
        .or_else(|| a.strip_prefix("https://"))
        .ok_or_else(|| {
            Error::invalid(format!(
                "grpc_address {a:?} must start with http:// or https://"
            ))
        })?;
    let (host, port) = rest
        .trim_end_matches('/')
        .rsplit_once(':')
        .ok_or_else(|| Error::invalid(format!("grpc_address {a:?} needs a port")))?;
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(Error::invalid(format!(
            "grpc_address {a:?} is not host:port"
        )));
    }
    Ok(())
}
