//! The orphan sweep: garbage collection of shards that nodes hold and nothing refers to.
//!
//! Released chunks, aborted and expired uploads, replaced and moved shards are queued for
//! deletion by the gateway as they happen. This sweep catches the rest (a node that was away
//! when its delete was decided and came back with a different store, copies a crashed
//! repair left, shards put with a token after their write expired): once per
//! `scan_interval_secs` it lists every online node's shards (`ChunkService.ListShards`, mark)
//! and asks the gateway which ones nothing refers to (no chunk, in-flight write or granted
//! repair). A shard found unreferenced in two sweeps at least `gc_grace_secs` apart is queued
//! for deletion (sweep); the gateway checks its references once more when it builds the delete
//! command, bound to the put position of the node's next heartbeat, so a shard written again
//! meanwhile is kept. Candidates live in memory: a restart only delays their collection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cyxcloud_client::Client;
use cyxcloud_daemon::worker::WorkError;
use cyxcloud_daemon::{Step, Worker};
use cyxcloud_proto::v1;

use crate::metrics::Metrics;
use crate::nodes::NodeChannels;

/// Hashes per page of a listing and per reference check.
const PAGE: u32 = 10_000;

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct GcProgress {
    pub sweeps: u64,
    /// Unreferenced shards waiting for their grace period.
    pub candidates: u64,
    pub collected: u64,
    pub last_sweep_unix_ms: u64,
}

pub struct Collector {
    client: Client,
    interval: Duration,
    grace: Duration,
    metrics: Metrics,
    progress: Arc<Mutex<GcProgress>>,
    channels: NodeChannels,
    /// (node, hash) → when first found unreferenced.
    candidates: HashMap<(String, Vec<u8>), Instant>,
}

impl Collector {
    pub fn new(
        client: Client,
        interval: Duration,
        grace: Duration,
        metrics: Metrics,
        progress: Arc<Mutex<GcProgress>>,
    ) -> Self {
        Collector {
            channels: NodeChannels::of(&client),
            client,
            interval,
            grace,
            metrics,
            progress,
            candidates: HashMap::new(),
        }
    }

    /// Lists one node and returns its unreferenced hashes.
    async fn unreferenced_on(&self, node: &v1::MaintenanceNode) -> Result<Vec<Vec<u8>>, WorkError> {
        let mut m = self.client.maintenance();
        let t = m
            .node_token(v1::NodeTokenRequest {
                node_id: node.id.clone(),
            })
            .await?
            .into_inner();
        let mut c = self.channels.client(&t.address)?;
        let mut after = Vec::new();
        let mut out = Vec::new();
        loop {
            let page = c
                .list_shards(v1::ListShardsRequest {
                    after: after.clone(),
                    limit: PAGE,
                    token: t.token.clone(),
                })
                .await?
                .into_inner();
            if let Some(last) = page.hashes.last() {
                after = last.clone();
            }
            if !page.hashes.is_empty() {
                let un = m
                    .unreferenced(v1::OrphansRequest {
                        node_id: node.id.clone(),
                        hashes: page.hashes,
                    })
                    .await?
                    .into_inner();
                out.extend(un.hashes);
            }
            if !page.more {
                break;
            }
        }
        Ok(out)
    }
}

impl Worker for Collector {
    fn name(&self) -> String {
        "orphan-sweep".into()
    }

    async fn step(&mut self) -> Result<Step, WorkError> {
        self.client.refresh_token().await?;
        let nodes = self
            .client
            .maintenance()
            .nodes(v1::MaintenanceNodesRequest {})
            .await?
            .into_inner();
        let now = Instant::now();
        let mut seen: HashMap<(String, Vec<u8>), Instant> = HashMap::new();
        let mut due: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
        for n in nodes
            .nodes
            .iter()
            .filter(|n| n.state == v1::NodeState::Online as i32)
        {
            let orphans = match self.unreferenced_on(n).await {
                Ok(o) => o,
                Err(e) => {
                    // This node's candidates wait for the next sweep.
                    tracing::warn!(node = %n.id, error = %e, "cannot list the node's shards");
                    for (k, t) in self
                        .candidates
                        .iter()
                        .filter(|((node, _), _)| *node == n.id)
                    {
                        seen.insert(k.clone(), *t);
                    }
                    continue;
                }
            };
            for h in orphans {
                let key = (n.id.clone(), h);
                let first = self.candidates.get(&key).copied().unwrap_or(now);
                if now.duration_since(first) >= self.grace {
                    due.entry(n.id.clone()).or_default().push(key.1.clone());
                } else {
                    seen.insert(key, first);
                }
            }
        }
        // Hashes referenced again (or collected) are no longer candidates.
        self.candidates = seen;
        let mut collected = 0u64;
        let mut m = self.client.maintenance();
        for (node, hashes) in due {
            for page in hashes.chunks(PAGE as usize) {
                let q = m
                    .collect_orphans(v1::OrphansRequest {
                        node_id: node.clone(),
                        hashes: page.to_vec(),
                    })
                    .await?
                    .into_inner();
                collected += q.hashes.len() as u64;
            }
        }
        self.metrics.orphans_collected.inc_by(collected);
        self.metrics
            .orphan_candidates
            .set(self.candidates.len() as i64);
        {
            let mut p = self.progress.lock().unwrap_or_else(|e| e.into_inner());
            p.sweeps += 1;
            p.candidates = self.candidates.len() as u64;
            p.collected += collected;
            p.last_sweep_unix_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
        }
        Ok(Step::Idle)
    }

    async fn wait_for_work(&mut self) {
        // A candidate is collected at the first sweep after its grace: sweep again then, if
        // that is sooner than the scan interval.
        let wait = if self.candidates.is_empty() {
            self.interval
        } else {
            self.interval
                .min(self.grace.max(Duration::from_millis(100)))
        };
        tokio::time::sleep(wait).await;
    }

    fn progress(&self) -> Option<String> {
        let p = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        Some(format!(
            "{} sweeps, {} candidates in grace, {} orphans collected",
            p.sweeps, p.candidates, p.collected
        ))
    }
}
