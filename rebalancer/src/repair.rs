//! The repair worker: detector, planner and executor in one loop.
//!
//! * **Detect**: the gateway's `Maintenance.Degraded` lists chunks with a shard that is not
//!   stored, on a node that is not online (dead for 3 heartbeats, draining), reported bad, or
//!   queued for repair, least redundant first. Read every poll interval while idle (the
//!   gateway's heartbeat interval by default), at once while there is work.
//! * **Plan**: [`crate::planner::plan`] over the node view (`Maintenance.Nodes`): which shard
//!   indexes to rebuild and on which nodes, by the write path's placement rules.
//! * **Execute**, up to `repair_parallelism` chunks at a time, rate-limited: a shard left
//!   pending at commit that its node holds after all is only marked stored; otherwise the
//!   gateway grants the repair (the chunk's lease, Get tokens for k sources, Put tokens for the
//!   targets), the first target node rebuilds every lost shard from one fetch of k sources
//!   (`ChunkService.Repair`), keeps its own and pushes the others, and the gateway commits
//!   each stored shard with a compare-and-set on the shard row. A failed chunk is retried
//!   with backoff (1 s doubling to 5 min).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cyxcloud_client::Client;
use cyxcloud_core::Hash;
use cyxcloud_core::codec::Profile;
use cyxcloud_core::placement::{Limits, NodeInfo};
use cyxcloud_daemon::worker::WorkError;
use cyxcloud_daemon::{RateLimit, Step, Worker};
use cyxcloud_proto::v1;
use cyxcloud_proto::v1::chunk_service_client::ChunkServiceClient;
use tokio::task::JoinSet;
use tonic::transport::Channel;

use crate::metrics::Metrics;
use crate::nodes::NodeChannels;
use crate::planner::{
    self, ChunkView, NodeState, NodeView, PlanError, Reason, ShardState, ShardView,
};

/// Node addresses by id, and the ids of nodes whose shards can be read (online or draining).
type NodeLookup = (
    Arc<HashMap<String, String>>,
    Arc<std::collections::HashSet<String>>,
);

/// What the repair worker shows in `/health` and its progress line.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Progress {
    /// Degraded chunks the gateway reported at the last scan.
    pub degraded_chunks: u64,
    /// Shard bytes to rebuild over all of them.
    pub bytes_to_go: u64,
    pub in_flight: usize,
    /// Seconds to full redundancy at the recent repair rate, if anything was repaired yet.
    pub eta_secs: Option<u64>,
    pub unrecoverable_chunks: u64,
    pub last_scan_unix_ms: u64,
}

/// How one chunk's repair ended.
#[derive(Debug)]
enum Outcome {
    /// Shards rebuilt (and committed), bytes read and written.
    Repaired {
        shards: usize,
        read: u64,
        written: u64,
    },
    /// Some shards rebuilt and committed, others failed: counted, and retried later.
    Partial {
        shards: usize,
        read: u64,
        written: u64,
        error: String,
    },
    /// Pending shards found on their nodes and marked stored.
    Late(usize),
    /// Another rebalancer holds the chunk's lease.
    Held,
    /// The chunk changed or went meanwhile: nothing to do.
    Gone,
}

struct Job {
    key: Hash,
    result: Result<Outcome, String>,
}

#[derive(Debug, Clone, Copy)]
struct Retry {
    at: Instant,
    delay: Duration,
}

pub struct Repairer {
    client: Client,
    holder: String,
    parallelism: usize,
    lease: Duration,
    poll: Duration,
    /// Longest wait between scans while idle (`scan_interval_secs`).
    scan_interval: Duration,
    rate: RateLimit,
    metrics: Metrics,
    progress: Arc<Mutex<Progress>>,
    channels: NodeChannels,
    jobs: JoinSet<Job>,
    in_flight: BTreeMap<Hash, Instant>,
    retry: HashMap<Hash, Retry>,
    /// Planned chunks from the last scan, worst first, with the node view they were planned
    /// on; started as slots free up, discarded when older than the poll interval.
    queue: std::collections::VecDeque<(v1::DegradedChunk, planner::ChunkPlan)>,
    queue_view: Option<NodeLookup>,
    queued_at: Option<Instant>,
    /// The placement check's position in its pass over every chunk (None: between passes),
    /// and when the next pass is due (every `scan_interval`).
    placement_cursor: Option<Vec<u8>>,
    placement_due: Instant,
    /// Bytes written by recent repairs, for the ETA: (when, bytes).
    recent: Vec<(Instant, u64)>,
}

impl Repairer {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: Client,
        holder: String,
        parallelism: usize,
        lease: Duration,
        poll: Duration,
        scan_interval: Duration,
        rate: RateLimit,
        metrics: Metrics,
        progress: Arc<Mutex<Progress>>,
    ) -> Self {
        Repairer {
            channels: NodeChannels::of(&client),
            client,
            holder,
            parallelism: parallelism.max(1),
            lease,
            poll,
            scan_interval,
            rate,
            metrics,
            progress,
            jobs: JoinSet::new(),
            in_flight: BTreeMap::new(),
            retry: HashMap::new(),
            queue: std::collections::VecDeque::new(),
            queue_view: None,
            queued_at: None,
            placement_cursor: None,
            placement_due: Instant::now(),
            recent: Vec::new(),
        }
    }

    /// Counts a repair that rebuilt `shards` (outcome `label`) and the bytes it moved.
    fn count_repair(&mut self, label: &str, shards: usize, read: u64, written: u64) {
        self.metrics.repairs.get_or_create(&result(label)).inc();
        self.metrics.shards_repaired.inc_by(shards as u64);
        self.metrics.bytes_read.inc_by(read);
        self.metrics.bytes_written.inc_by(written);
        self.recent.push((Instant::now(), written));
    }

    fn finished(&mut self, job: Job) {
        self.in_flight.remove(&job.key);
        match job.result {
            Ok(o) => {
                let previous = self.retry.remove(&job.key);
                match o {
                    Outcome::Repaired {
                        shards,
                        read,
                        written,
                    } => {
                        self.count_repair("ok", shards, read, written);
                    }
                    Outcome::Partial {
                        shards,
                        read,
                        written,
                        error,
                    } => {
                        self.count_repair("partial", shards, read, written);
                        let delay = previous.map_or(Duration::from_secs(1), |r| {
                            (r.delay * 2).min(Duration::from_secs(300))
                        });
                        tracing::warn!(chunk = %job.key, error = %error, retry_in = ?delay, "repair partly failed");
                        self.retry.insert(
                            job.key,
                            Retry {
                                at: Instant::now() + delay,
                                delay,
                            },
                        );
                    }
                    Outcome::Late(n) => {
                        self.metrics.repairs.get_or_create(&result("late")).inc();
                        self.metrics.shards_marked_stored.inc_by(n as u64);
                    }
                    Outcome::Held => {
                        self.metrics.repairs.get_or_create(&result("held")).inc();
                    }
                    Outcome::Gone => {
                        self.metrics.repairs.get_or_create(&result("gone")).inc();
                    }
                }
            }
            Err(e) => {
                self.metrics.repairs.get_or_create(&result("failed")).inc();
                let delay = self
                    .retry
                    .get(&job.key)
                    .map_or(Duration::from_secs(1), |r| {
                        (r.delay * 2).min(Duration::from_secs(300))
                    });
                tracing::warn!(chunk = %job.key, error = %e, retry_in = ?delay, "repair failed");
                self.retry.insert(
                    job.key,
                    Retry {
                        at: Instant::now() + delay,
                        delay,
                    },
                );
            }
        }
    }

    /// Bytes a second over the last minute of repairs.
    fn recent_rate(&mut self) -> Option<f64> {
        let now = Instant::now();
        self.recent
            .retain(|(t, _)| now.duration_since(*t) < Duration::from_secs(60));
        let first = self.recent.first()?.0;
        let bytes: u64 = self.recent.iter().map(|(_, b)| b).sum();
        let secs = now.duration_since(first).as_secs_f64().max(1.0);
        Some(bytes as f64 / secs)
    }

    /// Reads the worst degraded chunks and plans them into the queue.
    async fn scan(&mut self) -> Result<(), WorkError> {
        let now = Instant::now();
        let mut exclude: Vec<Vec<u8>> = self.in_flight.keys().map(|k| k.0.to_vec()).collect();
        exclude.extend(
            self.retry
                .iter()
                .filter(|(_, r)| r.at > now)
                .map(|(k, _)| k.0.to_vec()),
        );
        self.client.refresh_token().await?;
        let mut m = self.client.maintenance();
        let degraded = m
            .degraded(v1::DegradedRequest {
                limit: (self.parallelism * 16).max(64) as u32,
                exclude,
            })
            .await?
            .into_inner();
        let nodes = m.nodes(v1::MaintenanceNodesRequest {}).await?.into_inner();
        let view = node_views(&nodes);
        let limits = Limits {
            per_node: nodes.max_shards_per_node as usize,
            per_rack: nodes.max_shards_per_rack as usize,
            per_datacenter: nodes.max_shards_per_datacenter as usize,
        };
        let addresses: Arc<HashMap<String, String>> = Arc::new(
            nodes
                .nodes
                .iter()
                .map(|n| (n.id.clone(), n.address.clone()))
                .collect(),
        );
        let readable: Arc<std::collections::HashSet<String>> = Arc::new(
            view.iter()
                .filter(|n| matches!(n.state, NodeState::Online | NodeState::Draining))
                .map(|n| n.info.id.clone())
                .collect(),
        );
        let mut plans = Vec::new();
        let mut unrecoverable = 0;
        let mut chunks: HashMap<Hash, v1::DegradedChunk> = HashMap::new();
        for c in degraded.chunks {
            let Some(cv) = chunk_view(&c) else {
                tracing::error!("the gateway listed a chunk with a malformed description");
                continue;
            };
            match planner::plan(&cv, &view, limits) {
                Ok(p) if p.repairs.is_empty() => {}
                Ok(p) => {
                    chunks.insert(p.key, c);
                    plans.push(p);
                }
                Err(e @ PlanError::Unrecoverable { .. }) => {
                    unrecoverable += 1;
                    tracing::error!(error = %e, "cannot repair");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot place the repair now");
                }
            }
        }
        planner::order(&mut plans);
        let rate = self.recent_rate();
        {
            let mut p = self.progress.lock().unwrap_or_else(|e| e.into_inner());
            p.degraded_chunks = degraded.total;
            p.bytes_to_go = degraded.bytes;
            p.unrecoverable_chunks = unrecoverable;
            p.eta_secs = rate
                .filter(|r| *r > 0.0)
                .map(|r| (degraded.bytes as f64 / r).ceil() as u64);
            p.last_scan_unix_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
        }
        self.metrics.degraded_chunks.set(degraded.total as i64);
        self.metrics.bytes_to_repair.set(degraded.bytes as i64);
        self.metrics.unrecoverable_chunks.set(unrecoverable as i64);
        self.queue = plans
            .into_iter()
            .filter_map(|p| chunks.remove(&p.key).map(|c| (c, p)))
            .collect();
        self.queue_view = Some((addresses, readable));
        self.queued_at = Some(Instant::now());
        Ok(())
    }

    /// One page of the placement check: chunks whose shards sit on more nodes, racks or
    /// datacenters than the current topology allows get moves queued.
    async fn placement_page(&mut self) -> Result<(), WorkError> {
        let mut m = self.client.maintenance();
        let page = m
            .chunks(v1::ChunksRequest {
                after: self.placement_cursor.clone().unwrap_or_default(),
                limit: 256,
            })
            .await?
            .into_inner();
        let nodes = m.nodes(v1::MaintenanceNodesRequest {}).await?.into_inner();
        let view = node_views(&nodes);
        let limits = Limits {
            per_node: nodes.max_shards_per_node as usize,
            per_rack: nodes.max_shards_per_rack as usize,
            per_datacenter: nodes.max_shards_per_datacenter as usize,
        };
        self.placement_cursor = if page.more {
            page.chunks.last().map(|c| c.key.clone())
        } else {
            self.placement_due = Instant::now() + self.scan_interval;
            None
        };
        let mut moves = 0;
        for c in page.chunks {
            let Some(cv) = chunk_view(&c) else { continue };
            if let Some(plan) = planner::misplaced(&cv, &view, limits) {
                moves += plan.repairs.len();
                self.queue.push_back((c, plan));
            }
        }
        if moves > 0 {
            tracing::info!(
                moves,
                "shards placed beyond the topology's limits: moving them"
            );
            self.queued_at = Some(Instant::now());
        }
        Ok(())
    }

    /// Starts queued repairs while slots are free; returns how many started.
    fn start_jobs(&mut self) -> usize {
        let Some((addresses, readable)) = self.queue_view.clone() else {
            return 0;
        };
        let now = Instant::now();
        let mut started = 0;
        while self.in_flight.len() < self.parallelism {
            let Some((chunk, plan)) = self.queue.pop_front() else {
                break;
            };
            if self.in_flight.contains_key(&plan.key)
                || self.retry.get(&plan.key).is_some_and(|r| r.at > now)
            {
                continue;
            }
            let ctx = JobCtx {
                client: self.client.clone(),
                holder: self.holder.clone(),
                lease: self.lease,
                rate: self.rate.clone(),
                channels: self.channels.clone(),
                addresses: addresses.clone(),
                readable: readable.clone(),
            };
            self.in_flight.insert(plan.key, Instant::now());
            let key = plan.key;
            self.jobs.spawn(async move {
                Job {
                    key,
                    result: ctx.run(chunk, plan).await,
                }
            });
            started += 1;
        }
        self.metrics.in_flight.set(self.in_flight.len() as i64);
        self.progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .in_flight = self.in_flight.len();
        started
    }
}

fn result(r: &str) -> Vec<(String, String)> {
    vec![("result".to_string(), r.to_string())]
}

impl Worker for Repairer {
    fn name(&self) -> String {
        "repair".into()
    }

    async fn step(&mut self) -> Result<Step, WorkError> {
        while let Some(done) = self.jobs.try_join_next() {
            match done {
                Ok(job) => self.finished(job),
                Err(e) => return Err(format!("a repair task failed: {e}").into()),
            }
        }
        if self.in_flight.len() >= self.parallelism {
            if let Some(Ok(job)) = self.jobs.join_next().await {
                self.finished(job);
            }
            self.metrics.in_flight.set(self.in_flight.len() as i64);
            return Ok(Step::Busy);
        }
        let stale = self
            .queued_at
            .is_none_or(|t| t.elapsed() >= self.poll.min(self.scan_interval));
        if self.queue.is_empty() || stale {
            self.scan().await?;
        }
        // Nothing to repair: check placements (a page per step, a pass per scan interval).
        if self.queue.is_empty()
            && (self.placement_cursor.is_some() || Instant::now() >= self.placement_due)
        {
            self.placement_page().await?;
        }
        if self.start_jobs() > 0 {
            return Ok(Step::Busy);
        }
        if !self.in_flight.is_empty() {
            // Wait for a running repair before scanning again.
            if let Some(Ok(job)) = self.jobs.join_next().await {
                self.finished(job);
            }
            self.metrics.in_flight.set(self.in_flight.len() as i64);
            return Ok(Step::Busy);
        }
        if self.placement_cursor.is_some() {
            // A placement pass is under way: its next page at once.
            return Ok(Step::Busy);
        }
        Ok(Step::Idle)
    }

    async fn wait_for_work(&mut self) {
        // Chunks waiting for a retry come back as soon as their delay ends.
        let now = Instant::now();
        let next_retry = self
            .retry
            .values()
            .map(|r| r.at.saturating_duration_since(now))
            .min();
        let wait = next_retry.map_or(self.poll, |r| {
            r.max(Duration::from_millis(10)).min(self.poll)
        });
        tokio::time::sleep(wait.min(self.scan_interval)).await;
    }

    fn progress(&self) -> Option<String> {
        let p = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        Some(format!(
            "{} degraded chunks, {} bytes to rebuild, {} in flight{}",
            p.degraded_chunks,
            p.bytes_to_go,
            p.in_flight,
            p.eta_secs.map_or(String::new(), |s| format!(", ETA {s} s"))
        ))
    }
}

/// What one chunk's repair task needs.
struct JobCtx {
    client: Client,
    holder: String,
    lease: Duration,
    rate: RateLimit,
    channels: NodeChannels,
    addresses: Arc<HashMap<String, String>>,
    /// Nodes whose shards can be read: online or draining.
    readable: Arc<std::collections::HashSet<String>>,
}

impl JobCtx {
    fn node(&self, id: &str) -> Result<ChunkServiceClient<Channel>, String> {
        let address = self
            .addresses
            .get(id)
            .ok_or_else(|| format!("node {id} has no address"))?;
        self.channels
            .client(address)
            .map_err(|e| format!("node {id}: {e}"))
    }

    async fn run(
        self,
        chunk: v1::DegradedChunk,
        plan: planner::ChunkPlan,
    ) -> Result<Outcome, String> {
        let key = plan.key;
        let info = chunk.info.clone().ok_or("the chunk has no description")?;
        let hash_of = |i: usize| info.shard_hashes.get(i).cloned().unwrap_or_default();
        let mut m = self.client.maintenance();

        // Shards left pending at commit may have reached their node after all.
        let mut repairs = Vec::new();
        let mut late = Vec::new();
        for r in plan.repairs {
            if r.reason == Reason::NotStored && self.readable.contains(&r.from) {
                let token = m
                    .node_token(v1::NodeTokenRequest {
                        node_id: r.from.clone(),
                    })
                    .await
                    .map(|t| t.into_inner().token)
                    .unwrap_or_default();
                let held = match self.node(&r.from) {
                    Ok(mut c) => c
                        .has_shards(v1::HasShardsRequest {
                            hashes: vec![hash_of(r.index)],
                            token,
                        })
                        .await
                        .map(|h| h.into_inner().present.first().copied().unwrap_or(false))
                        .unwrap_or(false),
                    Err(_) => false,
                };
                if held {
                    late.push(v1::ShardMove {
                        index: r.index as u32,
                        hash: hash_of(r.index),
                        from_node: r.from.clone(),
                        to_node: r.from.clone(),
                    });
                    continue;
                }
            }
            repairs.push(r);
        }
        if repairs.is_empty() {
            if late.is_empty() {
                return Ok(Outcome::Gone);
            }
            let n = late.len();
            let applied = m
                .commit_repair(v1::CommitRepairRequest {
                    key: key.0.to_vec(),
                    holder: self.holder.clone(),
                    moves: late,
                })
                .await
                .map_err(|s| format!("commit: {}", s.message()))?
                .into_inner()
                .applied;
            let n = applied.iter().filter(|a| **a).count().min(n);
            return Ok(if n == 0 {
                Outcome::Gone
            } else {
                Outcome::Late(n)
            });
        }

        // A shard on a draining node is copied from there (one shard read, not k); lost
        // shards are rebuilt from k readable shards, spread over nodes by the chunk key.
        let k = info.data_shards as usize;
        let (copies, rebuilds): (Vec<_>, Vec<_>) = repairs.iter().partition(|r| {
            matches!(r.reason, Reason::Draining | Reason::Misplaced)
                && self.readable.contains(&r.from)
        });
        let lost: std::collections::BTreeSet<usize> = rebuilds.iter().map(|r| r.index).collect();
        let mut sources: Vec<v1::RepairSource> = Vec::new();
        if !rebuilds.is_empty() {
            sources = chunk
                .shards
                .iter()
                .filter(|s| {
                    !lost.contains(&(s.index as usize))
                        && s.state == v1::ShardState::Stored as i32
                        && self.readable.contains(&s.node_id)
                })
                .map(|s| v1::RepairSource {
                    index: s.index,
                    node_id: s.node_id.clone(),
                })
                .collect();
            if sources.len() < k {
                return Err(format!(
                    "only {} readable shards, {k} needed",
                    sources.len()
                ));
            }
            let rot = key.0[0] as usize % sources.len();
            sources.rotate_left(rot);
            sources.truncate(k);
        }
        for r in &copies {
            if !sources.iter().any(|s| s.index as usize == r.index) {
                sources.push(v1::RepairSource {
                    index: r.index as u32,
                    node_id: r.from.clone(),
                });
            }
        }
        let targets: Vec<v1::RepairTarget> = repairs
            .iter()
            .map(|r| v1::RepairTarget {
                index: r.index as u32,
                node_id: r.target.clone(),
                // The gateway refuses the grant if another repair moved the shard meanwhile.
                from_node: r.from.clone(),
                ..Default::default()
            })
            .collect();
        let shard_size = info.shard_size as u64;
        let traffic = if rebuilds.is_empty() {
            0
        } else {
            k + rebuilds.len()
        } + 2 * copies.len();
        self.rate.take(shard_size * traffic as u64).await;

        let grant = m
            .grant_repair(v1::GrantRepairRequest {
                key: key.0.to_vec(),
                holder: self.holder.clone(),
                lease_ms: self.lease.as_millis() as u32,
                sources,
                targets,
            })
            .await;
        let grant = match grant {
            Ok(g) => g.into_inner(),
            Err(s) if s.code() == tonic::Code::NotFound => return Ok(Outcome::Gone),
            Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                // The layout or the nodes changed since the scan: plan again at the next one.
                tracing::debug!(chunk = %key, reason = %s.message(), "stale plan");
                return Ok(Outcome::Gone);
            }
            Err(s) => return Err(format!("grant: {}", s.message())),
        };
        if !grant.granted {
            return Ok(Outcome::Held);
        }
        let copy_idx: std::collections::BTreeSet<u32> =
            copies.iter().map(|r| r.index as u32).collect();
        let (copy_targets, rebuild_targets): (Vec<_>, Vec<_>) = grant
            .targets
            .into_iter()
            .partition(|t| copy_idx.contains(&t.index));
        // One command per copy, one for every rebuilt shard of the chunk.
        let mut commands: Vec<(String, v1::RepairCommand, Vec<u32>)> = Vec::new();
        for t in copy_targets {
            let src: Vec<v1::ShardLocation> = grant
                .sources
                .iter()
                .filter(|s| s.index == t.index)
                .cloned()
                .collect();
            commands.push((
                t.node_id.clone(),
                v1::RepairCommand {
                    chunk: grant.chunk.clone(),
                    target_index: t.index,
                    sources: src,
                    target_token: t.token.clone(),
                    more_targets: vec![],
                },
                vec![t.index],
            ));
        }
        if let Some((first, more)) = rebuild_targets.split_first() {
            let src: Vec<v1::ShardLocation> = grant
                .sources
                .iter()
                .filter(|s| !copy_idx.contains(&s.index))
                .cloned()
                .collect();
            commands.push((
                first.node_id.clone(),
                v1::RepairCommand {
                    chunk: grant.chunk.clone(),
                    target_index: first.index,
                    sources: src,
                    target_token: first.token.clone(),
                    more_targets: more.to_vec(),
                },
                std::iter::once(first.index)
                    .chain(more.iter().map(|t| t.index))
                    .collect(),
            ));
        }
        let to_node: HashMap<u32, String> = repairs
            .iter()
            .map(|r| (r.index as u32, r.target.clone()))
            .collect();
        let from_node: HashMap<u32, String> = repairs
            .iter()
            .map(|r| (r.index as u32, r.from.clone()))
            .collect();
        let ctx = &self;
        let runs = commands.into_iter().map(|(node, cmd, _)| async move {
            let moved = cmd.sources.len() as u64 + 1 + cmd.more_targets.len() as u64;
            let r = match ctx.node(&node) {
                Ok(mut c) => {
                    let mut req = tonic::Request::new(cmd);
                    // Allow for slow links: a minute, plus a second per 10 MB moved.
                    req.set_timeout(Duration::from_secs(60 + shard_size * moved / 10_000_000));
                    c.repair(req).await.map(|r| r.into_inner())
                }
                Err(e) => Err(tonic::Status::unavailable(e)),
            };
            (node, r)
        });
        let results = futures::future::join_all(runs).await;
        let mut moves = late;
        let (mut read, mut written, mut errors) = (0, 0, Vec::new());
        for (node, r) in results {
            match r {
                Ok(r) => {
                    read += r.bytes_read;
                    written += r.bytes_written;
                    errors.extend(r.errors);
                    for i in r.stored {
                        moves.push(v1::ShardMove {
                            index: i,
                            hash: hash_of(i as usize),
                            from_node: from_node.get(&i).cloned().unwrap_or_default(),
                            to_node: to_node.get(&i).cloned().unwrap_or_default(),
                        });
                    }
                }
                Err(s) => errors.push(format!("repair on {node}: {}", s.message())),
            }
        }
        // Always committed, even empty: ends the grant (lease, GC protection of partial copies).
        let applied = m
            .commit_repair(v1::CommitRepairRequest {
                key: key.0.to_vec(),
                holder: self.holder.clone(),
                moves,
            })
            .await
            .map_err(|s| format!("commit: {}", s.message()))?
            .into_inner()
            .applied;
        let shards = applied.iter().filter(|a| **a).count();
        if !errors.is_empty() {
            if shards == 0 {
                return Err(errors.join("; "));
            }
            return Ok(Outcome::Partial {
                shards,
                read,
                written,
                error: errors.join("; "),
            });
        }
        if shards == 0 {
            return Ok(Outcome::Gone);
        }
        tracing::info!(chunk = %key, shards, read, written, "chunk repaired");
        Ok(Outcome::Repaired {
            shards,
            read,
            written,
        })
    }
}

fn node_views(r: &v1::MaintenanceNodesResponse) -> Vec<NodeView> {
    r.nodes
        .iter()
        .map(|n| {
            let topo = n.topology.clone().unwrap_or_default();
            NodeView {
                info: NodeInfo {
                    id: n.id.clone(),
                    region: topo.region,
                    datacenter: topo.datacenter,
                    rack: topo.rack,
                    free_bytes: n.free_bytes,
                    // A loaded node ranks like a slower one, so repairs go around hot spots.
                    latency_us: ((n.latency_us.max(1) as f64) * (1.0 + n.load.max(0.0)))
                        .min(u32::MAX as f64) as u32,
                },
                state: match v1::NodeState::try_from(n.state) {
                    Ok(v1::NodeState::Online) => NodeState::Online,
                    Ok(v1::NodeState::Draining) => NodeState::Draining,
                    Ok(v1::NodeState::Drained) => NodeState::Drained,
                    _ => NodeState::Offline,
                },
            }
        })
        .collect()
}

fn chunk_view(c: &v1::DegradedChunk) -> Option<ChunkView> {
    let info = c.info.as_ref()?;
    let profile = Profile::new(info.data_shards as usize, info.parity_shards as usize).ok()?;
    Some(ChunkView {
        key: Hash::from_slice(&c.key)?,
        profile,
        shard_size: info.shard_size as u64,
        shards: c
            .shards
            .iter()
            .map(|s| ShardView {
                index: s.index as usize,
                node: s.node_id.clone(),
                state: match v1::ShardState::try_from(s.state) {
                    Ok(v1::ShardState::Stored) => ShardState::Stored,
                    Ok(v1::ShardState::Pending) => ShardState::Pending,
                    _ => ShardState::Bad,
                },
            })
            .collect(),
    })
}
