//! The node's Prometheus metrics, named as in the usage guide.
//!
//! | name | type | meaning |
//! |---|---|---|
//! | `cyxcloud_storage_used_bytes` | gauge | record bytes stored |
//! | `cyxcloud_storage_capacity_bytes` | gauge | configured capacity |
//! | `cyxcloud_chunks_stored` | gauge | shards stored |
//! | `cyxcloud_bytes_uploaded` | gauge (monotonic) | shard bytes received by accepted puts |
//! | `cyxcloud_bytes_downloaded` | gauge (monotonic) | shard bytes served by gets |
//! | `cyxcloud_active_connections` | gauge | open gRPC (TCP) connections |
//! | `cyxcloud_bandwidth_in_bytes` | gauge (monotonic) | bytes read from gRPC connections |
//! | `cyxcloud_bandwidth_out_bytes` | gauge (monotonic) | bytes written to gRPC connections |
//! | `cyxcloud_heartbeat_success_total` | counter | heartbeats the gateway answered |
//! | `cyxcloud_heartbeat_failure_total` | counter | heartbeats that failed |
//! | `cyxcloud_put_latency_seconds` | histogram | PutShard, first message to durable ack |
//! | `cyxcloud_get_latency_seconds` | histogram | GetShard, request to last byte queued |
//! | `cyxcloud_corrupt_shards_total` | counter | shards that failed verification on read |
//! | `cyxcloud_scrubbed_shards_total` | counter | shards the scrub re-read and re-hashed |
//! | `cyxcloud_node_requests_total{rpc,code}` | counter | ChunkService calls by outcome |
//! | `cyxcloud_node_commands_total{kind,result}` | counter | gateway commands executed |
//!
//! The guide's byte totals have no `_total` suffix; prometheus-client appends one to every
//! counter, so they are exported as gauges that only ever grow, keeping the guide's names.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::store::Usage;

type U64Gauge = Gauge<u64, AtomicU64>;
type Labels = Vec<(&'static str, String)>;

/// Every metric the node exports; cheap to clone (handles share their values).
#[derive(Clone)]
pub struct Metrics {
    pub registry: Arc<Mutex<Registry>>,
    pub storage_used_bytes: U64Gauge,
    pub storage_capacity_bytes: U64Gauge,
    pub chunks_stored: U64Gauge,
    pub bytes_uploaded: U64Gauge,
    pub bytes_downloaded: U64Gauge,
    pub active_connections: U64Gauge,
    pub bandwidth_in_bytes: U64Gauge,
    pub bandwidth_out_bytes: U64Gauge,
    pub heartbeat_success: Counter,
    pub heartbeat_failure: Counter,
    pub put_latency: Histogram,
    pub get_latency: Histogram,
    pub corrupt_shards: Counter,
    pub scrubbed_shards: Counter,
    requests: Family<Labels, Counter>,
    commands: Family<Labels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::default();
        let latency = || Histogram::new(exponential_buckets(0.000_25, 2.0, 16));
        let m = Metrics {
            registry: Arc::new(Mutex::new(Registry::default())),
            storage_used_bytes: U64Gauge::default(),
            storage_capacity_bytes: U64Gauge::default(),
            chunks_stored: U64Gauge::default(),
            bytes_uploaded: U64Gauge::default(),
            bytes_downloaded: U64Gauge::default(),
            active_connections: U64Gauge::default(),
            bandwidth_in_bytes: U64Gauge::default(),
            bandwidth_out_bytes: U64Gauge::default(),
            heartbeat_success: Counter::default(),
            heartbeat_failure: Counter::default(),
            put_latency: latency(),
            get_latency: latency(),
            corrupt_shards: Counter::default(),
            scrubbed_shards: Counter::default(),
            requests: Family::default(),
            commands: Family::default(),
        };
        r.register(
            "cyxcloud_storage_used_bytes",
            "Record bytes stored on this node",
            m.storage_used_bytes.clone(),
        );
        r.register(
            "cyxcloud_storage_capacity_bytes",
            "Configured storage capacity",
            m.storage_capacity_bytes.clone(),
        );
        r.register(
            "cyxcloud_chunks_stored",
            "Shards stored on this node",
            m.chunks_stored.clone(),
        );
        r.register(
            "cyxcloud_bytes_uploaded",
            "Shard bytes received by accepted puts (monotonic)",
            m.bytes_uploaded.clone(),
        );
        r.register(
            "cyxcloud_bytes_downloaded",
            "Shard bytes served by gets (monotonic)",
            m.bytes_downloaded.clone(),
        );
        r.register(
            "cyxcloud_active_connections",
            "Open gRPC connections",
            m.active_connections.clone(),
        );
        r.register(
            "cyxcloud_bandwidth_in_bytes",
            "Bytes read from gRPC connections (monotonic)",
            m.bandwidth_in_bytes.clone(),
        );
        r.register(
            "cyxcloud_bandwidth_out_bytes",
            "Bytes written to gRPC connections (monotonic)",
            m.bandwidth_out_bytes.clone(),
        );
        r.register(
            "cyxcloud_heartbeat_success",
            "Heartbeats answered by the gateway",
            m.heartbeat_success.clone(),
        );
        r.register(
            "cyxcloud_heartbeat_failure",
            "Heartbeats that failed",
            m.heartbeat_failure.clone(),
        );
        r.register(
            "cyxcloud_put_latency_seconds",
            "PutShard latency, first message to durable acknowledgement",
            m.put_latency.clone(),
        );
        r.register(
            "cyxcloud_get_latency_seconds",
            "GetShard latency, request to last byte queued",
            m.get_latency.clone(),
        );
        r.register(
            "cyxcloud_corrupt_shards",
            "Shards that failed verification on read and were quarantined",
            m.corrupt_shards.clone(),
        );
        r.register(
            "cyxcloud_scrubbed_shards",
            "Shards the scrub re-read and re-hashed",
            m.scrubbed_shards.clone(),
        );
        r.register(
            "cyxcloud_node_requests",
            "ChunkService calls by rpc and outcome code",
            m.requests.clone(),
        );
        r.register(
            "cyxcloud_node_commands",
            "Gateway commands executed, by kind and result",
            m.commands.clone(),
        );
        *m.registry.lock().unwrap_or_else(|e| e.into_inner()) = r;
        m
    }

    /// Mirrors the store's accounting into the gauges.
    pub fn observe_usage(&self, u: Usage) {
        self.storage_used_bytes.set(u.used_bytes);
        self.chunks_stored.set(u.shard_count);
        self.storage_capacity_bytes.set(u.capacity_bytes);
    }

    pub fn request(&self, rpc: &'static str, code: &str) {
        self.requests
            .get_or_create(&vec![("rpc", rpc.to_string()), ("code", code.to_string())])
            .inc();
    }

    pub fn command(&self, kind: &'static str, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.commands
            .get_or_create(&vec![
                ("kind", kind.to_string()),
                ("result", result.to_string()),
            ])
            .inc();
    }

    /// The Prometheus text exposition (tests and debugging).
    pub fn encode(&self) -> String {
        let mut s = String::new();
        let r = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        let _ = prometheus_client::encoding::text::encode(&mut s, &r);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guide_names_are_exported() {
        let m = Metrics::new();
        m.bytes_uploaded.inc_by(5);
        m.heartbeat_success.inc();
        m.request("put", "ok");
        let text = m.encode();
        for name in [
            "cyxcloud_storage_used_bytes ",
            "cyxcloud_chunks_stored ",
            "cyxcloud_bytes_uploaded 5",
            "cyxcloud_bytes_downloaded ",
            "cyxcloud_active_connections ",
            "cyxcloud_bandwidth_in_bytes ",
            "cyxcloud_bandwidth_out_bytes ",
            "cyxcloud_heartbeat_success_total 1",
            "cyxcloud_put_latency_seconds_bucket",
            "cyxcloud_get_latency_seconds_count",
            "cyxcloud_node_requests_total{rpc=\"put\",code=\"ok\"} 1",
        ] {
            assert!(text.contains(name), "missing {name:?} in\n{text}");
        }
    }
}
