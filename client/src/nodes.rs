//! Connections to storage nodes: one lazily connected channel per node address, measured
//! latency per node (EWMA) for choosing the fastest shards, a global cap on shard streams, and
//! the two data operations (put a shard, get a shard or a range of it).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use cyxcloud_core::Hash;
use cyxcloud_proto::v1;
use cyxcloud_proto::v1::chunk_service_client::ChunkServiceClient;
use tokio::sync::Semaphore;
use tonic::transport::Channel;

use crate::error::ClientError;
use crate::session::{endpoint, source_chain};

/// Why one shard transfer failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ShardError {
    #[error("node {address} timed out after {0:?}", address = .1)]
    Timeout(Duration, String),
    #[error("node {address}: {message} ({code})")]
    Rpc {
        address: String,
        code: cyxcloud_proto::ErrorCode,
        message: String,
    },
    #[error("node {address} unreachable: {reason}")]
    Unreachable { address: String, reason: String },
    #[error("node {address} sent {got} bytes for a {expected}-byte shard")]
    Length {
        address: String,
        got: usize,
        expected: usize,
    },
}

impl ShardError {
    /// Whether the shard is known to be bad or missing on the node (vs. the node being slow or
    /// unreachable).
    pub fn problem(&self) -> v1::ShardProblem {
        match self {
            ShardError::Rpc {
                code: cyxcloud_proto::ErrorCode::NotFound,
                ..
            } => v1::ShardProblem::Missing,
            ShardError::Rpc {
                code: cyxcloud_proto::ErrorCode::Corrupt,
                ..
            }
            | ShardError::Length { .. } => v1::ShardProblem::Corrupt,
            _ => v1::ShardProblem::Unreachable,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Ewma {
    micros: f64,
}

/// Channels and latency estimates per node.
pub struct NodePool {
    channels: Mutex<HashMap<String, Channel>>,
    latency: Mutex<HashMap<String, Ewma>>,
    connect_timeout: Duration,
    streams: Arc<Semaphore>,
    /// The cluster CA that certifies `https://` nodes.
    ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for NodePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodePool").finish_non_exhaustive()
    }
}

impl NodePool {
    pub fn new(connect_timeout: Duration, max_streams: usize, ca_pem: Option<Vec<u8>>) -> Self {
        NodePool {
            channels: Mutex::new(HashMap::new()),
            latency: Mutex::new(HashMap::new()),
            connect_timeout,
            streams: Arc::new(Semaphore::new(max_streams.max(1))),
            ca_pem,
        }
    }

    fn client(&self, address: &str) -> Result<ChunkServiceClient<Channel>, ShardError> {
        let mut map = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        let ch = match map.get(address) {
            Some(c) => c.clone(),
            None => {
                let ep = endpoint(address, self.connect_timeout, self.ca_pem.as_deref()).map_err(
                    |e: ClientError| ShardError::Unreachable {
                        address: address.into(),
                        reason: e.to_string(),
                    },
                )?;
                let c = ep.connect_lazy();
                map.insert(address.to_string(), c.clone());
                c
            }
        };
        Ok(ChunkServiceClient::new(ch)
            .max_decoding_message_size(cyxcloud_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(cyxcloud_proto::MAX_MESSAGE_BYTES))
    }

    /// The cluster CA that certifies `https://` nodes, if the cluster runs TLS.
    pub fn ca_pem(&self) -> Option<&[u8]> {
        self.ca_pem.as_deref()
    }

    /// Latest latency estimate for a node, if this client has talked to it.
    pub fn latency(&self, address: &str) -> Option<Duration> {
        let m = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        m.get(address)
            .map(|e| Duration::from_micros(e.micros as u64))
    }

    /// Records a time-to-first-byte sample.
    fn observe(&self, address: &str, d: Duration) {
        let mut m = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        let s = d.as_micros() as f64;
        m.entry(address.to_string())
            .and_modify(|e| e.micros = e.micros * 0.8 + s * 0.2)
            .or_insert(Ewma { micros: s });
    }

    /// Penalises a node that failed, so readers try others first next time.
    pub fn penalize(&self, address: &str) {
        let mut m = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(address.to_string())
            .and_modify(|e| e.micros = (e.micros * 4.0).max(1e6))
            .or_insert(Ewma { micros: 1e6 });
    }

    fn rpc_err(address: &str, s: tonic::Status) -> ShardError {
        let code = cyxcloud_proto::error_code(&s);
        if code == cyxcloud_proto::ErrorCode::Unavailable
            && s.code() == tonic::Code::Unavailable
            && s.message().contains("transport")
        {
            return ShardError::Unreachable {
                address: address.into(),
                reason: source_chain(&s),
            };
        }
        ShardError::Rpc {
            address: address.into(),
            code,
            message: s.message().to_string(),
        }
    }

    /// Streams one shard to a node; returns once the node acknowledged it as durable.
    pub async fn put_shard(
        &self,
        address: &str,
        hash: &Hash,
        data: Bytes,
        token: Vec<u8>,
        timeout: Duration,
    ) -> Result<(), ShardError> {
        let _permit = self
            .streams
            .acquire()
            .await
            .expect("semaphore never closed");
        let mut client = self.client(address)?;
        let mut msgs = Vec::with_capacity(2 + data.len() / cyxcloud_proto::STREAM_PIECE_BYTES);
        msgs.push(v1::PutShardRequest {
            msg: Some(v1::put_shard_request::Msg::Header(v1::PutShardHeader {
                hash: hash.0.to_vec(),
                size: data.len() as u64,
                token,
            })),
        });
        let mut off = 0;
        while off < data.len() {
            let end = (off + cyxcloud_proto::STREAM_PIECE_BYTES).min(data.len());
            msgs.push(v1::PutShardRequest {
                msg: Some(v1::put_shard_request::Msg::Data(data.slice(off..end))),
            });
            off = end;
        }
        let started = Instant::now();
        let call = client.put_shard(tokio_stream::iter(msgs));
        match tokio::time::timeout(timeout, call).await {
            Err(_) => {
                self.penalize(address);
                Err(ShardError::Timeout(timeout, address.into()))
            }
            Ok(Err(s)) => {
                self.penalize(address);
                Err(Self::rpc_err(address, s))
            }
            Ok(Ok(_)) => {
                self.observe(address, started.elapsed() / (1 + (data.len() >> 20) as u32));
                Ok(())
            }
        }
    }

    /// Fetches `length` bytes at `offset` of a shard (`length == 0`: to the end).
    pub async fn get_shard(
        &self,
        address: &str,
        hash: &Hash,
        token: Vec<u8>,
        offset: u64,
        length: u64,
        timeout: Duration,
    ) -> Result<Bytes, ShardError> {
        let _permit = self
            .streams
            .acquire()
            .await
            .expect("semaphore never closed");
        let mut client = self.client(address)?;
        let started = Instant::now();
        let fetch = async {
            let mut stream = client
                .get_shard(v1::GetShardRequest {
                    hash: hash.0.to_vec(),
                    token,
                    offset,
                    length,
                })
                .await
                .map_err(|s| Self::rpc_err(address, s))?
                .into_inner();
            let mut buf = BytesMut::new();
            let mut first = true;
            while let Some(msg) = stream
                .message()
                .await
                .map_err(|s| Self::rpc_err(address, s))?
            {
                if first {
                    self.observe(address, started.elapsed());
                    let want = if length > 0 {
                        length
                    } else {
                        msg.shard_size.saturating_sub(offset)
                    };
                    buf.reserve(want.min(1 << 30) as usize);
                    first = false;
                }
                buf.extend_from_slice(&msg.data);
            }
            Ok::<_, ShardError>(buf.freeze())
        };
        match tokio::time::timeout(timeout, fetch).await {
            Err(_) => {
                self.penalize(address);
                Err(ShardError::Timeout(timeout, address.into()))
            }
            Ok(Err(e)) => {
                self.penalize(address);
                Err(e)
            }
            Ok(Ok(b)) => Ok(b),
        }
    }
}
