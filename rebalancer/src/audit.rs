//! The audit worker: proof of storage, continuously and rate-limited, so that every stored
//! shard is verified once per audit period (`audit_period_secs`, 30 days by default).
//!
//! Each step takes a batch from the gateway (`Maintenance.AuditBatch`: the shards audited
//! longest ago, sized so the whole cluster is covered in one period) and audits each shard on
//! its node: with a one-time challenge when the gateway has one in stock (the node must answer
//! `blake3(nonce || shard)`, which it cannot know without the bytes), else by retrieving the
//! shard and checking its blake3, which also yields new challenges for later audits. Definite
//! answers (a wrong proof, wrong bytes, a shard the node says it lacks or found corrupt) go
//! back in `ReportAudits`: a failure has the shard rebuilt elsewhere and lowers the node's
//! audit score. A node that cannot be reached is not scored here: it goes offline after missed
//! heartbeats and its shards are repaired as lost.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cyxcloud_client::Client;
use cyxcloud_core::Hash;
use cyxcloud_daemon::worker::WorkError;
use cyxcloud_daemon::{RateLimit, Step, Worker};
use cyxcloud_proto::v1;
use cyxcloud_proto::v1::chunk_service_client::ChunkServiceClient;
use futures::StreamExt;
use tonic::transport::Channel;

use crate::metrics::Metrics;
use crate::nodes::NodeChannels;

/// Challenges computed per verified retrieval (the gateway keeps at most this many).
const CHALLENGES: usize = 4;
/// Shards audited at the same time within a batch.
const PARALLEL: usize = 8;

/// What the audit worker shows in `/health`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct AuditProgress {
    pub stored_shards: u64,
    /// Not audited within the period, at the last batch.
    pub overdue_shards: u64,
    pub audits: u64,
    pub failures: u64,
    pub last_batch_unix_ms: u64,
}

pub struct Auditor {
    client: Client,
    period: Duration,
    interval: Duration,
    rate: RateLimit,
    metrics: Metrics,
    progress: Arc<Mutex<AuditProgress>>,
    channels: NodeChannels,
}

/// One shard's audit outcome; `None` when the node could not be asked.
type Outcome = Option<v1::AuditResult>;

impl Auditor {
    pub fn new(
        client: Client,
        period: Duration,
        interval: Duration,
        rate: RateLimit,
        metrics: Metrics,
        progress: Arc<Mutex<AuditProgress>>,
    ) -> Self {
        Auditor {
            channels: NodeChannels::of(&client),
            client,
            period,
            interval,
            rate,
            metrics,
            progress,
        }
    }

    /// Shards per step so that `stored` shards are all audited within one period (twice that,
    /// so a backlog is caught up), at least one.
    fn batch_size(&self, stored: u64) -> u32 {
        let steps = (self.period.as_secs_f64() / self.interval.as_secs_f64().max(0.001)).max(1.0);
        ((stored as f64 / steps).ceil() * 2.0).clamp(1.0, 1000.0) as u32
    }
}

fn random_nonce() -> Vec<u8> {
    let mut n = vec![0u8; 32];
    let _ = getrandom::fill(&mut n);
    n
}

fn proof(nonce: &[u8], data: &[u8]) -> Vec<u8> {
    let mut h = blake3::Hasher::new();
    h.update(nonce);
    h.update(data);
    h.finalize().as_bytes().to_vec()
}

/// Whether a status is the node's definite answer about the shard (not a transport problem).
fn definite(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::NotFound | tonic::Code::DataLoss | tonic::Code::InvalidArgument
    )
}

async fn audit_one(mut c: ChunkServiceClient<Channel>, s: v1::AuditShard) -> Outcome {
    let mut result = v1::AuditResult {
        chunk_key: s.chunk_key.clone(),
        index: s.index,
        hash: s.hash.clone(),
        node_id: s.node_id.clone(),
        ok: false,
        error: String::new(),
        challenges: Vec::new(),
    };
    let timeout = Duration::from_secs(30 + s.shard_size as u64 / 1_000_000);
    fn req<T>(m: T, timeout: Duration) -> tonic::Request<T> {
        let mut r = tonic::Request::new(m);
        r.set_timeout(timeout);
        r
    }
    if !s.nonce.is_empty() {
        let r = c
            .challenge(req(
                v1::ChallengeRequest {
                    hash: s.hash.clone(),
                    nonce: s.nonce.clone(),
                    token: s.token.clone(),
                },
                timeout,
            ))
            .await;
        match r {
            Ok(p) if p.get_ref().proof == s.proof => result.ok = true,
            Ok(_) => result.error = "wrong proof of storage".into(),
            Err(st) if definite(&st) => result.error = format!("challenge: {}", st.message()),
            Err(_) => return None,
        }
        return Some(result);
    }
    let stream = c
        .get_shard(req(
            v1::GetShardRequest {
                hash: s.hash.clone(),
                token: s.token.clone(),
                offset: 0,
                length: 0,
            },
            timeout,
        ))
        .await;
    let mut stream = match stream {
        Ok(st) => st.into_inner(),
        Err(st) if definite(&st) => {
            result.error = format!("retrieval: {}", st.message());
            return Some(result);
        }
        Err(_) => return None,
    };
    let mut data = Vec::with_capacity(s.shard_size as usize);
    loop {
        match stream.message().await {
            Ok(Some(m)) => data.extend_from_slice(&m.data),
            Ok(None) => break,
            Err(st) if definite(&st) => {
                result.error = format!("retrieval: {}", st.message());
                return Some(result);
            }
            Err(_) => return None,
        }
    }
    let want = Hash::from_slice(&s.hash).unwrap_or(Hash([0; 32]));
    if data.len() != s.shard_size as usize || Hash::of(&data) != want {
        result.error = format!("retrieved bytes do not match shard {want}");
        return Some(result);
    }
    result.ok = true;
    result.challenges = (0..CHALLENGES)
        .map(|_| {
            let nonce = random_nonce();
            v1::AuditChallenge {
                proof: proof(&nonce, &data),
                nonce,
            }
        })
        .collect();
    Some(result)
}

impl Worker for Auditor {
    fn name(&self) -> String {
        "audit".into()
    }

    async fn step(&mut self) -> Result<Step, WorkError> {
        let stored = self
            .progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .stored_shards;
        self.client.refresh_token().await?;
        let mut m = self.client.maintenance();
        let batch = m
            .audit_batch(v1::AuditBatchRequest {
                limit: self.batch_size(stored),
                min_age_ms: self.period.as_millis() as u64,
            })
            .await?
            .into_inner();
        self.metrics.audit_overdue.set(batch.overdue as i64);
        {
            let mut p = self.progress.lock().unwrap_or_else(|e| e.into_inner());
            p.stored_shards = batch.stored_shards;
            p.overdue_shards = batch.overdue;
            p.last_batch_unix_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
        }
        if batch.shards.is_empty() {
            return Ok(Step::Idle);
        }
        let mut jobs = Vec::with_capacity(batch.shards.len());
        for s in batch.shards {
            if s.nonce.is_empty() {
                self.rate.take(s.shard_size as u64).await;
            }
            match self.channels.client(&s.address) {
                Ok(c) => jobs.push(audit_one(c, s)),
                Err(e) => tracing::warn!(node = %s.node_id, error = %e, "cannot audit"),
            }
        }
        let outcomes: Vec<Outcome> = futures::stream::iter(jobs)
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
        let mut results = Vec::new();
        for o in outcomes {
            match o {
                Some(r) => {
                    let label = if r.ok { "ok" } else { "failed" };
                    self.metrics
                        .audits
                        .get_or_create(&vec![("result".to_string(), label.to_string())])
                        .inc();
                    if !r.ok {
                        tracing::warn!(node = %r.node_id, index = r.index, error = %r.error, "audit failed");
                    }
                    results.push(r);
                }
                None => {
                    self.metrics
                        .audits
                        .get_or_create(&vec![("result".to_string(), "unreachable".to_string())])
                        .inc();
                }
            }
        }
        {
            let mut p = self.progress.lock().unwrap_or_else(|e| e.into_inner());
            p.audits += results.len() as u64;
            p.failures += results.iter().filter(|r| !r.ok).count() as u64;
        }
        if !results.is_empty() {
            m.report_audits(v1::ReportAuditsRequest { results }).await?;
        }
        Ok(Step::Throttled(self.interval))
    }

    async fn wait_for_work(&mut self) {
        tokio::time::sleep(self.interval).await;
    }

    fn progress(&self) -> Option<String> {
        let p = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        Some(format!(
            "{} shards, {} overdue, {} audits, {} failed",
            p.stored_shards, p.overdue_shards, p.audits, p.failures
        ))
    }
}
