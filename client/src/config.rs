//! Client configuration.

use std::time::Duration;

/// How a client connects and how hard it pushes.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Gateway gRPC endpoint (Control API), e.g. `http://127.0.0.1:50052`.
    pub gateway: String,
    pub access_key: String,
    pub secret_key: String,
    /// Chunks encoded/uploaded (or fetched/decoded) at the same time. Memory is about
    /// `(pipeline_depth + 1) × chunk size × (k + m) / k`.
    pub pipeline_depth: usize,
    /// Shard transfers in flight per client across all chunks.
    pub max_shard_streams: usize,
    /// Time allowed for one shard transfer before that node counts as failed.
    pub shard_timeout: Duration,
    /// After the success threshold is reached, wait at most this fraction of the time taken so
    /// far (and at least `tail_min`) for the remaining shards, then leave them to repair.
    pub tail_factor: f64,
    pub tail_min: Duration,
    /// Wait for every shard of every chunk (no long-tail cut-off): a file then survives the
    /// loss of m nodes from the moment its upload returns, not only after repair. Shards whose
    /// node fails are still left to repair once the success threshold is met.
    pub wait_all_shards: bool,
    /// Connect timeout for gateway and nodes.
    pub connect_timeout: Duration,
    /// The CA certificate(s) (PEM) that certify an `https://` gateway: the cluster CA, or the
    /// CA of the operator's certificate. Nodes are verified against the cluster CA the gateway
    /// hands out at authentication.
    pub ca_pem: Option<Vec<u8>>,
}

impl ClientConfig {
    pub fn new(
        gateway: impl Into<String>,
        access_key: impl Into<String>,
        secret_key: impl Into<String>,
    ) -> Self {
        ClientConfig {
            gateway: gateway.into(),
            access_key: access_key.into(),
            secret_key: secret_key.into(),
            pipeline_depth: std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .clamp(2, 4),
            max_shard_streams: 64,
            shard_timeout: Duration::from_secs(60),
            tail_factor: 0.5,
            tail_min: Duration::from_millis(200),
            wait_all_shards: false,
            connect_timeout: Duration::from_secs(5),
            ca_pem: None,
        }
    }

    /// Trusts the CA certificate(s) of the PEM file `path` for the gateway.
    pub fn with_ca_file(mut self, path: &std::path::Path) -> std::io::Result<Self> {
        self.ca_pem = Some(std::fs::read(path)?);
        Ok(self)
    }
}
