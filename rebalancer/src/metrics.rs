//! The rebalancer's Prometheus metrics (`cyxcloud_rebalancer_*`, plus `cyxcloud_worker_*`).

use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone)]
pub struct Metrics {
    pub registry: Arc<Mutex<Registry>>,
    /// Chunk repairs by result: ok, partial (some shards failed, retried), late (pending
    /// shards found stored), held (another
    /// rebalancer has the chunk), gone (changed meanwhile), failed.
    pub repairs: Family<Vec<(String, String)>, Counter>,
    pub shards_repaired: Counter,
    pub shards_marked_stored: Counter,
    pub bytes_read: Counter,
    pub bytes_written: Counter,
    pub degraded_chunks: Gauge,
    pub bytes_to_repair: Gauge,
    pub unrecoverable_chunks: Gauge,
    pub in_flight: Gauge,
    /// Shard audits by result: ok, failed, unreachable (not scored).
    pub audits: Family<Vec<(String, String)>, Counter>,
    pub audit_overdue: Gauge,
    pub orphans_collected: Counter,
    pub orphan_candidates: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let m = Metrics {
            registry: Arc::new(Mutex::new(Registry::default())),
            repairs: Family::default(),
            shards_repaired: Counter::default(),
            shards_marked_stored: Counter::default(),
            bytes_read: Counter::default(),
            bytes_written: Counter::default(),
            degraded_chunks: Gauge::default(),
            bytes_to_repair: Gauge::default(),
            unrecoverable_chunks: Gauge::default(),
            in_flight: Gauge::default(),
            audits: Family::default(),
            audit_overdue: Gauge::default(),
            orphans_collected: Counter::default(),
            orphan_candidates: Gauge::default(),
        };
        {
            let mut r = m.registry.lock().unwrap_or_else(|e| e.into_inner());
            r.register(
                "cyxcloud_rebalancer_repairs",
                "Chunk repairs by result (ok, partial, late, held, gone, failed)",
                m.repairs.clone(),
            );
            r.register(
                "cyxcloud_rebalancer_shards_repaired",
                "Shards rebuilt on new nodes and committed",
                m.shards_repaired.clone(),
            );
            r.register(
                "cyxcloud_rebalancer_shards_marked_stored",
                "Shards left pending at commit that were found on their node",
                m.shards_marked_stored.clone(),
            );
            r.register(
                "cyxcloud_rebalancer_read_bytes",
                "Source shard bytes read by repairs",
                m.bytes_read.clone(),
            );
            r.register(
                "cyxcloud_rebalancer_written_bytes",
                "Rebuilt shard bytes stored by repairs",
                m.bytes_written.clone(),
            );
            r.register(
                "cyxcloud_rebalancer_degraded_chunks",
                "Chunks below full redundancy at the last scan",
                m.degraded_chunks.clone(),
            );
            r.register(
                "cyxcloud_rebalancer_bytes_to_repair",
                "Shard bytes to rebuild at the last scan",
                m.bytes_to_repair.clone(),
            );
            r.register(
                "cyxcloud_rebalancer_unrecoverable_chunks",
                "Chunks with fewer than k readable shards at the last scan",
                m.unrecoverable_chunks.clone(),
            );
            r.register(
                "cyxcloud_rebalancer_audits",
                "Shard audits by result (ok, failed, unreachable)",
                m.audits.clone(),
            );
            r.register(
                "cyxcloud_rebalancer_audit_overdue_shards",
                "Shards not audited within the audit period, at the last batch",
                m.audit_overdue.clone(),
            );
            r.register(
                "cyxcloud_rebalancer_orphans_collected",
                "Shards no chunk, write or repair referred to, queued for deletion",
                m.orphans_collected.clone(),
            );
            r.register(
                "cyxcloud_rebalancer_orphan_candidates",
                "Unreferenced shards waiting for their grace period",
                m.orphan_candidates.clone(),
            );
            r.register(
                "cyxcloud_rebalancer_repairs_in_flight",
                "Chunk repairs running now",
                m.in_flight.clone(),
            );
        }
        m
    }
}
