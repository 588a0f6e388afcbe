//! Registration and heartbeats with the gateway's `NodeRegistry` (proto/cyxcloud/v1/registry.proto).
//!
//! Register (id, name, addresses, topology, capacity, state), trust the token keys the gateway
//! returns, then heartbeat every `heartbeat_interval_ms` / `heartbeat_interval_secs` of the
//! reply (else `[central] heartbeat_interval_secs`) with usage, load, connections, state and
//! the results of finished commands. A heartbeat is sent at once when the lifecycle state
//! changes, so the gateway learns of a drain without waiting a period.
//!
//! The reply's commands run in the background ([`crate::commands`]); `desired_state =
//! DRAINED` completes a drain; `reregister = true` starts over with Register. When the gateway
//! is unreachable the node keeps serving and retries with backoff; its first successful contact
//! is always a fresh Register, so a restarted gateway (empty registry) learns of it again.
//!
//! Every registration and heartbeat is signed with the node's key (`node.key`, see
//! [`crate::metadata::load_or_create_key`]) and stamped with a strictly increasing time, so the
//! gateway can bind the node id to the key and refuse forgeries and replays. The first
//! registration carries the join token (`NODE_JOIN_TOKEN`); with machine credentials, every
//! call carries `authorization: Bearer <api_key>`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cyxcloud_core::identity::NodeKey;
use cyxcloud_daemon::Shutdown;
use cyxcloud_proto::signed::Signed;
use cyxcloud_proto::v1::node_registry_client::NodeRegistryClient;
use cyxcloud_proto::v1::{
    CommandResult, HeartbeatRequest, HeartbeatResponse, NodeState, RegisterRequest,
    RegisterResponse, Topology,
};
use tonic::transport::Channel;

use crate::commands::Executor;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::lifecycle::Lifecycle;
use crate::login::Credentials;
use crate::metrics::Metrics;
use crate::p2p::P2pHandle;
use crate::store::Shards;
use crate::tokens::Tokens;

/// Everything the registration loop needs.
#[derive(Clone)]
pub struct Client {
    pub cfg: Config,
    pub node_id: String,
    pub name: String,
    pub grpc_address: String,
    pub topology: Topology,
    pub credentials: Option<Credentials>,
    pub shards: Arc<Shards>,
    pub tokens: Arc<Tokens>,
    pub lifecycle: Lifecycle,
    pub metrics: Metrics,
    pub registered: Arc<AtomicBool>,
    pub p2p: P2pHandle,
    /// Pace of deletes (garbage collection).
    pub gc_rate: cyxcloud_daemon::RateLimit,
    pub peer_id: String,
    pub p2p_addresses: Vec<String>,
    /// The node's identity key and the cluster join token.
    pub key: NodeKey,
    pub join_token: String,
    /// The last signing time used (unix ms), so each message is newer than the one before.
    pub signed_at: Arc<AtomicU64>,
    /// TLS: the certificate the gateway issues at registration, and the cluster CA.
    pub tls: Option<Arc<crate::tls::NodeTls>>,
}

fn load_per_core() -> f64 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |l| l / cores)
}

impl Client {
    fn gateway_err(&self, status: tonic::Status) -> Error {
        Error::Gateway {
            address: self.cfg.central.address.clone(),
            status: Box::new(status),
        }
    }

    /// A signing time newer than any used before (the gateway refuses replays).
    fn stamp(&self) -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let prev = self
            .signed_at
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
                Some(now.max(last + 1))
            })
            .unwrap_or(0);
        now.max(prev + 1)
    }

    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        if let Some(c) = &self.credentials
            && let Ok(v) = format!("Bearer {}", c.api_key).parse()
        {
            req.metadata_mut().insert("authorization", v);
        }
        req
    }

    async fn connect(&self) -> Result<NodeRegistryClient<Channel>> {
        let addr = &self.cfg.central.address;
        let ca = self.tls.as_ref().and_then(|t| t.ca());
        let ch = cyxcloud_proto::channel::endpoint(addr, ca.as_deref())
            .map_err(|e| self.gateway_err(tonic::Status::invalid_argument(e)))?
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(10))
            .connect()
            .await
            .map_err(|e| self.gateway_err(tonic::Status::unavailable(e.to_string())))?;
        Ok(NodeRegistryClient::new(ch))
    }

    async fn register(&self, client: &mut NodeRegistryClient<Channel>) -> Result<RegisterResponse> {
        let u = self.shards.usage();
        let mut req = RegisterRequest {
            node_id: self.node_id.clone(),
            name: self.name.clone(),
            grpc_address: self.grpc_address.clone(),
            peer_id: self.peer_id.clone(),
            p2p_addresses: self.p2p_addresses.clone(),
            topology: Some(self.topology.clone()),
            capacity_bytes: u.capacity_bytes,
            used_bytes: u.used_bytes,
            shard_count: u.shard_count,
            state: self.lifecycle.state().to_proto() as i32,
            version: env!("CARGO_PKG_VERSION").to_string(),
            wallet_address: self.cfg.node.wallet_address.clone(),
            machine_id: self
                .credentials
                .as_ref()
                .map(|c| c.machine_id.clone())
                .unwrap_or_default(),
            public_key: self.key.public_key().to_vec(),
            signed_at_ms: 0,
            signature: Vec::new(),
            join_token: self.join_token.clone(),
        };
        req.sign(&self.key, self.stamp());
        let resp = client
            .register(self.request(req))
            .await
            .map_err(|s| self.gateway_err(s))?
            .into_inner();
        for k in &resp.token_public_keys {
            if let Err(e) = self.tokens.trust(k) {
                tracing::warn!(error = %e, "gateway sent an unusable token key; ignored");
            }
        }
        match (&self.tls, resp.tls_certificate.is_empty()) {
            (Some(t), false) => t.install(&resp.tls_certificate, &resp.ca_certificate)?,
            (Some(_), true) => {
                return Err(Error::Tls(
                    "this node serves TLS but the gateway issued no certificate (it runs without TLS?)"
                        .into(),
                ));
            }
            (None, _) => {}
        }
        Ok(resp)
    }

    fn heartbeat_request(
        &self,
        results: Vec<CommandResult>,
        corrupt: &[cyxcloud_core::Hash],
    ) -> HeartbeatRequest {
        let u = self.shards.usage();
        let mark = self.shards.put_mark();
        let mut req = HeartbeatRequest {
            node_id: self.node_id.clone(),
            used_bytes: u.used_bytes,
            available_bytes: u.available_bytes(),
            shard_count: u.shard_count,
            load: load_per_core(),
            active_connections: self.metrics.active_connections.get() as u32,
            state: self.lifecycle.state().to_proto() as i32,
            results,
            bytes_uploaded: self.metrics.bytes_uploaded.get(),
            bytes_downloaded: self.metrics.bytes_downloaded.get(),
            put_epoch: mark.epoch,
            put_seq: mark.seq,
            corrupt_shards: corrupt.iter().map(|h| h.0.to_vec()).collect(),
            signed_at_ms: 0,
            signature: Vec::new(),
        };
        req.sign(&self.key, self.stamp());
        req
    }

    fn interval(&self, r: &RegisterResponse) -> Duration {
        if r.heartbeat_interval_ms > 0 {
            Duration::from_millis(r.heartbeat_interval_ms as u64)
        } else if r.heartbeat_interval_secs > 0 {
            Duration::from_secs(r.heartbeat_interval_secs as u64)
        } else {
            Duration::from_secs(self.cfg.central.heartbeat_interval_secs)
        }
    }
}

/// Results of finished commands waiting for the next heartbeat, and ids already seen.
#[derive(Default)]
struct Commands {
    results: Vec<CommandResult>,
    seen: HashMap<String, Instant>,
}

/// Registers and heartbeats until `shutdown`.
pub async fn run(c: Client, shutdown: Shutdown) {
    let exec = Executor {
        shards: c.shards.clone(),
        tokens: c.tokens.clone(),
        lifecycle: c.lifecycle.clone(),
        metrics: c.metrics.clone(),
        p2p: c.p2p.clone(),
        gc_rate: c.gc_rate.clone(),
        tls: c.tls.clone(),
    };
    let commands = Arc::new(Mutex::new(Commands::default()));
    let max_backoff =
        Duration::from_secs(c.cfg.central.heartbeat_interval_secs).min(Duration::from_secs(5));
    let mut backoff = Duration::from_millis(100);
    let mut states = c.lifecycle.subscribe();
    let mut last_error = String::new();
    'session: loop {
        if shutdown.is_triggered() {
            break;
        }
        let registered = async {
            let mut client = c.connect().await?;
            let resp = c.register(&mut client).await?;
            Ok::<_, Error>((client, resp))
        }
        .await;
        let (mut client, resp) = match registered {
            Ok(v) => v,
            Err(e) => {
                c.registered.store(false, Ordering::Relaxed);
                let msg = e.to_string();
                if msg != last_error {
                    tracing::warn!(error = %msg, "cannot register with the gateway; retrying (reads and writes go on)");
                    last_error = msg;
                }
                tokio::select! {
                    _ = shutdown.wait() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(max_backoff);
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        last_error.clear();
        c.registered.store(true, Ordering::Relaxed);
        let interval = c.interval(&resp);
        tracing::info!(gateway = %c.cfg.central.address, gateway_id = %resp.gateway_id, interval_ms = interval.as_millis() as u64, keys = resp.token_public_keys.len(), "registered with the gateway; sending heartbeats");
        loop {
            tokio::select! {
                _ = shutdown.wait() => break 'session,
                _ = tokio::time::sleep(interval) => {}
                _ = states.changed() => {}
            }
            let results = std::mem::take(&mut lock(&commands).results);
            let corrupt = c.shards.take_corrupt();
            let req = c.heartbeat_request(results.clone(), &corrupt);
            let resp: HeartbeatResponse = match client.heartbeat(c.request(req)).await {
                Ok(r) => r.into_inner(),
                Err(s) => {
                    c.shards.return_corrupt(corrupt);
                    c.metrics.heartbeat_failure.inc();
                    c.registered.store(false, Ordering::Relaxed);
                    lock(&commands).results.splice(0..0, results);
                    tracing::warn!(status = %s, "heartbeat failed; registering again");
                    continue 'session;
                }
            };
            c.metrics.heartbeat_success.inc();
            let drained = resp.desired_state == NodeState::Drained as i32;
            let mut running = Vec::new();
            for cmd in resp.commands {
                {
                    let mut st = lock(&commands);
                    st.seen
                        .retain(|_, t| t.elapsed() < Duration::from_secs(600));
                    if st.seen.insert(cmd.id.clone(), Instant::now()).is_some() {
                        continue;
                    }
                }
                let (exec, commands, life) = (exec.clone(), commands.clone(), c.lifecycle.clone());
                running.push(tokio::spawn(async move {
                    let r = exec.execute(cmd).await;
                    lock(&commands).results.push(r);
                    // Report promptly: a state "change" wakes the heartbeat loop.
                    life.poke();
                }));
            }
            if drained {
                // The same reply deletes the shards that moved away: done before the node
                // calls itself drained (and exits), so it leaves nothing behind.
                let all = futures::future::join_all(running);
                if tokio::time::timeout(Duration::from_secs(60), all)
                    .await
                    .is_err()
                {
                    tracing::warn!("commands of the last heartbeat still running; drained anyway");
                }
                c.lifecycle.set_drained();
            }
            if resp.reregister {
                tracing::info!("gateway asked this node to register again");
                continue 'session;
            }
        }
    }
    c.registered.store(false, Ordering::Relaxed);
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
