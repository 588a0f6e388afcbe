//! libp2p discovery: TCP + noise + yamux, Kademlia DHT + identify.
//!
//! Each node publishes one DHT record under `/cyxcloud/node/<node_id>` holding a JSON
//! [`NodeRecord`] (node id, gRPC address, libp2p peer id, topology labels) and republishes it
//! until at least one peer stored it, then every few minutes. Any node resolves any other
//! node's gRPC address through the DHT alone ([`P2pHandle::resolve`]); the metrics port serves
//! it as `GET /peers/<node_id>` (JSON record, 404 when unknown), and repair falls back on it
//! when a command gives a source without an address.
//!
//! Bootstrap peers may be given with or without a `/p2p/<peer id>` suffix (the usage guide
//! writes `/ip4/10.0.0.1/tcp/4001`): the peer id is learned from the connection. Unreachable
//! bootstrap peers are redialled while the node has no connection at all.
//!
//! The libp2p key is kept in `{data_dir}/p2p.key` (mode 0600) so the peer id survives restarts.
//! Records are not signed beyond the transport: the gateway registry stays authoritative, and a
//! resolved record must name the requested node id and be published by the peer it names.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::kad::{self, GetRecordOk, QueryResult, Quorum, Record, RecordKey};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, identify, noise, tcp, yamux};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};

const KEY_FILE: &str = "p2p.key";
const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/cyxcloud/kad/1.0.0");
const IDENTIFY_PROTOCOL: &str = "/cyxcloud/id/1.0.0";
/// How long a resolution may take.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);
const REPUBLISH: Duration = Duration::from_secs(300);
const TICK: Duration = Duration::from_millis(500);

/// What a node publishes about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node_id: String,
    pub grpc_address: String,
    pub peer_id: String,
    pub region: String,
    pub datacenter: String,
    pub rack: String,
}

pub fn record_key(node_id: &str) -> RecordKey {
    RecordKey::new(&format!("/cyxcloud/node/{node_id}"))
}

/// Start parameters.
#[derive(Debug, Clone)]
pub struct P2pConfig {
    pub data_dir: PathBuf,
    pub listen: Multiaddr,
    pub bootstrap: Vec<String>,
    /// This node's record (`peer_id` is filled in by [`start`]).
    pub record: NodeRecord,
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    kad: kad::Behaviour<kad::store::MemoryStore>,
    identify: identify::Behaviour,
}

enum Cmd {
    Resolve(String, oneshot::Sender<Option<NodeRecord>>),
    Stop,
}

/// Handle on the running swarm; cheap to clone.
#[derive(Clone, Debug)]
pub struct P2pHandle {
    peer_id: PeerId,
    tx: mpsc::Sender<Cmd>,
    listen: Arc<Mutex<Vec<Multiaddr>>>,
    connected: Arc<AtomicUsize>,
}

impl P2pHandle {
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Addresses the swarm listens on, each with its `/p2p/<peer id>` suffix.
    pub fn listen_addresses(&self) -> Vec<String> {
        self.listen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|a| a.clone().with(Protocol::P2p(self.peer_id)).to_string())
            .collect()
    }

    pub fn connected_peers(&self) -> usize {
        self.connected.load(Ordering::Relaxed)
    }

    /// Looks `node_id` up in the DHT.
    pub async fn resolve(&self, node_id: &str) -> Result<NodeRecord> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Resolve(node_id.to_string(), tx))
            .await
            .map_err(|_| Error::P2p("swarm stopped".into()))?;
        match tokio::time::timeout(RESOLVE_TIMEOUT, rx).await {
            Ok(Ok(Some(r))) => Ok(r),
            _ => Err(Error::Unresolved(node_id.to_string())),
        }
    }

    pub fn stop(&self) {
        let _ = self.tx.try_send(Cmd::Stop);
    }
}

/// Loads the node's libp2p key, creating it on first start.
fn load_key(data_dir: &Path) -> Result<Keypair> {
    let path = data_dir.join(KEY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes).map_err(|e| Error::BadMetadata {
            path: path.clone(),
            reason: format!("not a libp2p key: {e}"),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = Keypair::generate_ed25519();
            let bytes = key
                .to_protobuf_encoding()
                .map_err(|e| Error::P2p(e.to_string()))?;
            crate::login::write_private(&path, &bytes)?;
            Ok(key)
        }
        Err(e) => Err(Error::io("cannot read", path, e)),
    }
}

/// Splits `/ip4/../tcp/../p2p/<id>` into address and peer id.
fn split_peer(addr: &Multiaddr) -> (Multiaddr, Option<PeerId>) {
    let mut a = addr.clone();
    match a.pop() {
        Some(Protocol::P2p(p)) => (a, Some(p)),
        _ => (addr.clone(), None),
    }
}

/// Starts the swarm: listens, dials the bootstrap peers, publishes this node's record.
pub async fn start(cfg: P2pConfig) -> Result<P2pHandle> {
    let key = load_key(&cfg.data_dir)?;
    let peer_id = key.public().to_peer_id();
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| Error::P2p(e.to_string()))?
        .with_behaviour(|key| {
            let id = key.public().to_peer_id();
            let mut kc = kad::Config::new(KAD_PROTOCOL);
            kc.set_query_timeout(RESOLVE_TIMEOUT);
            // Refreshed from on_tick while connected (the automatic one warns on lone nodes).
            kc.set_periodic_bootstrap_interval(None);
            let mut kad = kad::Behaviour::with_config(id, kad::store::MemoryStore::new(id), kc);
            // Answer DHT queries even before an external address is confirmed (private
            // clusters, loopback tests).
            kad.set_mode(Some(kad::Mode::Server));
            let identify = identify::Behaviour::new(
                identify::Config::new(IDENTIFY_PROTOCOL.into(), key.public())
                    .with_agent_version(format!("cyxcloud-node/{}", env!("CARGO_PKG_VERSION"))),
            );
            Behaviour { kad, identify }
        })
        .map_err(|e| Error::P2p(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(600)))
        .build();
    swarm
        .listen_on(cfg.listen.clone())
        .map_err(|e| Error::Bind {
            what: "libp2p",
            addr: cfg.listen.to_string(),
            source: std::io::Error::other(e.to_string()),
        })?;
    // Wait for the listener so the advertised addresses are real (or the bind error is clear).
    let mut listen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while listen.is_empty() {
        let ev = tokio::time::timeout_at(deadline, swarm.select_next_some())
            .await
            .map_err(|_| Error::P2p("libp2p listener did not start".into()))?;
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => listen.push(address),
            SwarmEvent::ListenerError { error, .. }
            | SwarmEvent::ListenerClosed {
                reason: Err(error), ..
            } => {
                return Err(Error::Bind {
                    what: "libp2p",
                    addr: cfg.listen.to_string(),
                    source: error,
                });
            }
            _ => {}
        }
    }
    let mut record = cfg.record.clone();
    record.peer_id = peer_id.to_string();
    let mut bootstrap = Vec::new();
    for b in &cfg.bootstrap {
        let addr: Multiaddr = b
            .parse()
            .map_err(|e| Error::P2p(format!("bootstrap peer {b:?}: {e}")))?;
        bootstrap.push(split_peer(&addr));
    }
    tracing::info!(%peer_id, listen = ?listen, bootstrap = cfg.bootstrap.len(), "libp2p started");
    let (tx, rx) = mpsc::channel(64);
    let handle = P2pHandle {
        peer_id,
        tx,
        listen: Arc::new(Mutex::new(listen)),
        connected: Arc::new(AtomicUsize::new(0)),
    };
    let task = Task {
        swarm,
        record,
        bootstrap,
        pending: HashMap::new(),
        cache: HashMap::new(),
        published_at: None,
        last_dial: None,
        last_bootstrap: None,
        connected: HashSet::new(),
        handle: handle.clone(),
    };
    tokio::spawn(task.run(rx));
    Ok(handle)
}

/// A DHT lookup in flight: the node id asked for and who waits for the answer.
type Pending = (String, Vec<oneshot::Sender<Option<NodeRecord>>>);

struct Task {
    swarm: Swarm<Behaviour>,
    record: NodeRecord,
    bootstrap: Vec<(Multiaddr, Option<PeerId>)>,
    pending: HashMap<kad::QueryId, Pending>,
    cache: HashMap<String, NodeRecord>,
    published_at: Option<Instant>,
    last_dial: Option<Instant>,
    last_bootstrap: Option<Instant>,
    connected: HashSet<PeerId>,
    handle: P2pHandle,
}

impl Task {
    async fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        self.publish();
        self.dial_bootstrap();
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(Cmd::Resolve(id, reply)) => self.resolve(id, reply),
                    Some(Cmd::Stop) | None => break,
                },
                ev = self.swarm.select_next_some() => self.on_event(ev),
                _ = tick.tick() => self.on_tick(),
            }
        }
        tracing::debug!("libp2p swarm stopped");
    }

    fn publish(&mut self) {
        let value = serde_json::to_vec(&self.record).expect("record serializes");
        let rec = Record::new(record_key(&self.record.node_id), value);
        if let Err(e) = self.swarm.behaviour_mut().kad.put_record(rec, Quorum::One) {
            tracing::warn!(error = ?e, "cannot store own DHT record");
        }
    }

    fn dial_bootstrap(&mut self) {
        self.last_dial = Some(Instant::now());
        let own = *self.swarm.local_peer_id();
        for (addr, peer) in self.bootstrap.clone() {
            if peer == Some(own) {
                continue;
            }
            if let Some(p) = peer {
                self.swarm.behaviour_mut().kad.add_address(&p, addr.clone());
            }
            if let Err(e) = self.swarm.dial(addr.clone()) {
                tracing::debug!(%addr, error = %e, "cannot dial bootstrap peer");
            }
        }
    }

    fn on_tick(&mut self) {
        if self.connected.is_empty() {
            if !self.bootstrap.is_empty()
                && self
                    .last_dial
                    .is_none_or(|t| t.elapsed() >= Duration::from_secs(2))
            {
                self.dial_bootstrap();
            }
            return;
        }
        if self.last_bootstrap.is_none_or(|t| t.elapsed() >= REPUBLISH) {
            self.last_bootstrap = Some(Instant::now());
            let _ = self.swarm.behaviour_mut().kad.bootstrap();
        }
        let due = match self.published_at {
            None => true,
            Some(t) => t.elapsed() >= REPUBLISH,
        };
        if due {
            // Marked now so that a failing put is retried on a later tick, not every tick.
            self.published_at = Some(Instant::now() - REPUBLISH + Duration::from_secs(2));
            self.publish();
        }
    }

    fn resolve(&mut self, id: String, reply: oneshot::Sender<Option<NodeRecord>>) {
        if id == self.record.node_id {
            let _ = reply.send(Some(self.record.clone()));
            return;
        }
        if let Some(r) = self.cache.get(&id) {
            let _ = reply.send(Some(r.clone()));
            return;
        }
        let q = self.swarm.behaviour_mut().kad.get_record(record_key(&id));
        self.pending
            .entry(q)
            .or_insert_with(|| (id, Vec::new()))
            .1
            .push(reply);
    }

    fn on_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => {
                let mut l = self.handle.listen.lock().unwrap_or_else(|e| e.into_inner());
                if !l.contains(&address) {
                    l.push(address);
                }
            }
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                let first = self.connected.is_empty();
                self.connected.insert(peer_id);
                self.handle
                    .connected
                    .store(self.connected.len(), Ordering::Relaxed);
                if endpoint.is_dialer() {
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer_id, endpoint.get_remote_address().clone());
                }
                tracing::debug!(%peer_id, "peer connected");
                if first {
                    self.last_bootstrap = Some(Instant::now());
                    let _ = self.swarm.behaviour_mut().kad.bootstrap();
                }
                if self.published_at.is_none() {
                    self.publish();
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                self.connected.remove(&peer_id);
                self.handle
                    .connected
                    .store(self.connected.len(), Ordering::Relaxed);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                for addr in info.listen_addrs {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result,
                ..
            })) => self.on_query(id, result),
            _ => {}
        }
    }

    fn on_query(&mut self, id: kad::QueryId, result: QueryResult) {
        match result {
            QueryResult::PutRecord(Ok(_)) | QueryResult::RepublishRecord(Ok(_)) => {
                if self
                    .published_at
                    .is_none_or(|t| t.elapsed() > Duration::from_secs(1))
                {
                    tracing::info!("own record published in the DHT");
                }
                self.published_at = Some(Instant::now());
            }
            QueryResult::PutRecord(Err(e)) => {
                tracing::debug!(error = ?e, "DHT publish not confirmed yet; will retry");
            }
            QueryResult::GetRecord(Ok(GetRecordOk::FoundRecord(peer_record))) => {
                let Some((wanted, _)) = self.pending.get(&id) else {
                    return;
                };
                let rec = &peer_record.record;
                let parsed: Option<NodeRecord> = serde_json::from_slice(&rec.value).ok();
                let valid = parsed.filter(|r| {
                    &r.node_id == wanted && rec.publisher.is_none_or(|p| p.to_string() == r.peer_id)
                });
                if let Some(r) = valid {
                    self.cache.insert(r.node_id.clone(), r.clone());
                    if let Some((_, replies)) = self.pending.remove(&id) {
                        for tx in replies {
                            let _ = tx.send(Some(r.clone()));
                        }
                    }
                    if let Some(mut q) = self.swarm.behaviour_mut().kad.query_mut(&id) {
                        q.finish();
                    }
                }
            }
            QueryResult::GetRecord(Ok(GetRecordOk::FinishedWithNoAdditionalRecord { .. }))
            | QueryResult::GetRecord(Err(_)) => {
                if let Some((_, replies)) = self.pending.remove(&id) {
                    for tx in replies {
                        let _ = tx.send(None);
                    }
                }
            }
            _ => {}
        }
    }
}

/// `GET /peers/{node_id}`: the node's DHT record as JSON, 404 when the DHT does not know it.
pub fn routes(p2p: P2pHandle) -> Router {
    Router::new()
        .route("/peers/{node_id}", get(peer))
        .with_state(p2p)
}

async fn peer(
    State(p2p): State<P2pHandle>,
    UrlPath(node_id): UrlPath<String>,
) -> impl IntoResponse {
    match p2p.resolve(&node_id).await {
        Ok(r) => (
            StatusCode::OK,
            axum::Json(serde_json::to_value(r).unwrap_or_default()),
        ),
        Err(e) => (
            StatusCode::NOT_FOUND,
            axum::Json(serde_json::json!({ "error": e.to_string() })),
        ),
    }
}
