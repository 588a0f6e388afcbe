//! Channels to storage nodes, one per address, shared by every worker of the rebalancer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cyxcloud_proto::v1::chunk_service_client::ChunkServiceClient;
use tonic::transport::Channel;

/// Lazily connected channels by node address (cheap to clone; clones share them), verified
/// against the cluster CA on TLS clusters.
#[derive(Clone, Default)]
pub struct NodeChannels(Arc<Mutex<HashMap<String, Channel>>>, Option<Arc<Vec<u8>>>);

impl NodeChannels {
    /// Channels to the nodes of `client`'s cluster (trusting the CA its gateway named).
    pub fn of(client: &cyxcloud_client::Client) -> Self {
        NodeChannels(
            Arc::default(),
            client.nodes().ca_pem().map(|c| Arc::new(c.to_vec())),
        )
    }

    /// A ChunkService client for the node at `address` (connected on first use).
    pub fn client(&self, address: &str) -> Result<ChunkServiceClient<Channel>, String> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let ch = match map.get(address) {
            Some(c) => c.clone(),
            None => {
                let c =
                    cyxcloud_proto::channel::endpoint(address, self.1.as_deref().map(|v| &v[..]))
                        .map_err(|e| format!("bad address {address}: {e}"))?
                        .connect_timeout(Duration::from_secs(5))
                        .tcp_nodelay(true)
                        .initial_stream_window_size(8 << 20)
                        .initial_connection_window_size(32 << 20)
                        .connect_lazy();
                map.insert(address.to_string(), c.clone());
                c
            }
        };
        Ok(ChunkServiceClient::new(ch)
            .max_decoding_message_size(cyxcloud_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(cyxcloud_proto::MAX_MESSAGE_BYTES))
    }
}
