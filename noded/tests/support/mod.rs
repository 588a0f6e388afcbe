//! Shared test fixtures: real `cyxcloud-node` processes on free ports, gRPC helpers, a token
//! signer standing in for the gateway's, a real in-process NodeRegistry server, and a real
//! HTTP account API.

#![allow(dead_code)]

pub mod account_api;
pub mod gateway;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cyxcloud_core::Hash;
use cyxcloud_core::token::{Capability, Op, Role, Scope, TokenSigner};
use cyxcloud_proto::v1::chunk_service_client::ChunkServiceClient;
use cyxcloud_proto::v1::put_shard_request::Msg;
use cyxcloud_proto::v1::{GetShardRequest, PutShardHeader, PutShardRequest, PutShardResponse};
use cyxcloud_proto::{ErrorCode, MAX_MESSAGE_BYTES, STREAM_PIECE_BYTES};
use cyxcloud_testkit::{Proc, TempDir, free_port, tempdir, wait_for_http, wait_until};
use tonic::transport::Channel;

pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The key the tests sign tokens with (the gateway's role).
pub fn signer() -> TokenSigner {
    TokenSigner::from_seed([7; 32])
}

pub fn signer_hex() -> String {
    hex::encode(signer().public_key())
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn token(node: &str, role: Role, ops: &[Op], scope: Scope) -> Vec<u8> {
    token_by(&signer(), node, role, ops, scope, now() + 600)
}

pub fn token_by(
    s: &TokenSigner,
    node: &str,
    role: Role,
    ops: &[Op],
    scope: Scope,
    expires_at: u64,
) -> Vec<u8> {
    s.sign(&Capability {
        role,
        ops: ops.iter().fold(0, |a, o| a | *o as u8),
        node_id: node.to_string(),
        expires_at,
        scope,
    })
}

/// A client token for put+get of `hashes` on `node`.
pub fn rw_token(node: &str, hashes: &[Hash]) -> Vec<u8> {
    token(
        node,
        Role::Client,
        &[Op::Put, Op::Get],
        Scope::Shards(hashes.to_vec()),
    )
}

pub fn gateway_token(node: &str, ops: &[Op]) -> Vec<u8> {
    token(node, Role::Gateway, ops, Scope::Any)
}

/// Deterministic incompressible bytes.
pub fn random(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    blake3::Hasher::new()
        .update(&seed.to_le_bytes())
        .finalize_xof()
        .fill(&mut v);
    v
}

/// How to start a node.
#[derive(Debug, Clone)]
pub struct Spec {
    pub id: Option<String>,
    pub env: Vec<(String, String)>,
    pub args: Vec<String>,
    /// Trust the test signer's key from config (standalone nodes need it).
    pub trust_test_key: bool,
    pub register: Option<String>,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            id: None,
            env: Vec::new(),
            args: Vec::new(),
            trust_test_key: true,
            register: None,
        }
    }
}

impl Spec {
    pub fn id(id: &str) -> Self {
        Spec {
            id: Some(id.into()),
            ..Spec::default()
        }
    }

    pub fn env(mut self, k: &str, v: impl Into<String>) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// Registers with the gateway at `addr` (a fake NodeRegistry in the tests).
    pub fn gateway(mut self, addr: SocketAddr) -> Self {
        self.register = Some(format!("http://{addr}"));
        self
    }
}

/// A running `cyxcloud-node` process with its ports and data dir.
pub struct Node {
    proc: Option<Proc>,
    pub id: String,
    pub dir: PathBuf,
    pub grpc: SocketAddr,
    pub metrics: SocketAddr,
    pub p2p_port: u16,
    pub spec: Spec,
    tmp: Option<TempDir>,
    starts: u32,
}

impl Node {
    pub fn start(spec: Spec) -> Node {
        let mut n = Node::new(spec);
        n.launch();
        n.wait_ready();
        n
    }

    /// Ports and data dir picked, process not started.
    pub fn new(spec: Spec) -> Node {
        let tmp = tempdir().unwrap();
        let dir = tmp.path().join("data");
        Node {
            proc: None,
            id: spec.id.clone().unwrap_or_default(),
            dir,
            grpc: SocketAddr::from(([127, 0, 0, 1], free_port())),
            metrics: SocketAddr::from(([127, 0, 0, 1], free_port())),
            p2p_port: free_port(),
            spec,
            tmp: Some(tmp),
            starts: 0,
        }
    }

    /// The command that starts this node (tests may tweak it).
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(cyxcloud_testkit::bin("cyxcloud-node"));
        let root = self.dir.parent().unwrap();
        cmd.current_dir(root)
            .env("RUST_LOG", "info,cyxcloud_node=debug")
            .env("GRPC_HOST", "127.0.0.1")
            .env("GRPC_PORT", self.grpc.port().to_string())
            .env("METRICS_PORT", self.metrics.port().to_string())
            .env("LIBP2P_PORT", self.p2p_port.to_string())
            .env("STORAGE_PATH", &self.dir)
            .env("CYXWIZ_API_REGISTER", "false");
        for k in [
            "NODE_ID",
            "CENTRAL_ADDRESS",
            "CENTRAL_SERVER_ADDR",
            "CYXWIZ_EMAIL",
            "CYXWIZ_PASSWORD",
            "CYXWIZ_PASSWORD_FILE",
            "BOOTSTRAP_PEERS",
            "CYXCLOUD_TOKEN_PUBLIC_KEYS",
        ] {
            cmd.env_remove(k);
        }
        if let Some(id) = &self.spec.id {
            cmd.env("NODE_ID", id);
        }
        match &self.spec.register {
            Some(addr) => cmd
                .env("CENTRAL_REGISTER", "true")
                .env("CENTRAL_ADDRESS", addr),
            None => cmd.env("CENTRAL_REGISTER", "false"),
        };
        if self.spec.trust_test_key {
            cmd.env("CYXCLOUD_TOKEN_PUBLIC_KEYS", signer_hex());
        }
        for (k, v) in &self.spec.env {
            cmd.env(k, v);
        }
        cmd.args(&self.spec.args);
        cmd
    }

    pub fn launch(&mut self) {
        self.starts += 1;
        let root = self.dir.parent().unwrap().to_path_buf();
        let cmd = self.command();
        let name = format!("node-{}", self.spec.id.as_deref().unwrap_or("?"));
        self.proc = Some(Proc::spawn(
            &name,
            cmd,
            &root.join(format!("node-{}.log", self.starts)),
        ));
    }

    pub fn proc(&mut self) -> &mut Proc {
        self.proc.as_mut().expect("node process started")
    }

    pub fn wait_ready(&mut self) {
        let body = wait_for_http(self.metrics, "/health", START_TIMEOUT);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        self.id = v["node_id"].as_str().unwrap().to_string();
    }

    pub fn log(&self) -> String {
        self.proc.as_ref().map(Proc::log).unwrap_or_default()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    pub fn restart(&mut self) {
        self.stop();
        self.launch();
        self.wait_ready();
    }

    /// SIGTERM and wait for a clean exit (standalone nodes stop on the first signal).
    pub fn stop(&mut self) {
        if self.proc().is_running() {
            self.proc().term();
            let st = self.proc().wait_exit(Duration::from_secs(30));
            assert!(st.success(), "node exited with {st}:\n{}", self.log());
        }
    }

    /// SIGKILL (registered nodes drain on SIGTERM and wait for the gateway).
    pub fn kill(&mut self) {
        self.proc().kill9();
    }

    /// Waits until metric `name` reaches at least `at_least`.
    pub fn wait_metric(&self, name: &str, at_least: f64) {
        wait(
            Duration::from_secs(30),
            &format!("{name} >= {at_least}"),
            || (self.metric(name) >= at_least).then_some(()),
        );
    }

    pub fn metrics_text(&self) -> String {
        wait_for_http(self.metrics, "/metrics", Duration::from_secs(5))
    }

    /// Value of an unlabelled metric line `name value`.
    pub fn metric(&self, name: &str) -> f64 {
        metric_value(&self.metrics_text(), name)
    }

    pub fn health(&self) -> serde_json::Value {
        serde_json::from_str(&wait_for_http(
            self.metrics,
            "/health",
            Duration::from_secs(5),
        ))
        .unwrap()
    }

    pub async fn client(&self) -> ChunkServiceClient<Channel> {
        client(&self.url()).await
    }

    pub fn data_root(&self) -> &Path {
        self.dir.parent().unwrap()
    }
}

pub fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            let (n, v) = l.rsplit_once(' ')?;
            (n == name).then(|| v.parse::<f64>().ok()).flatten()
        })
        .unwrap_or_else(|| panic!("metric {name} not found in\n{text}"))
}

pub async fn client(url: &str) -> ChunkServiceClient<Channel> {
    let ch = tonic::transport::Endpoint::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    ChunkServiceClient::new(ch)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// The messages of a well-formed put.
pub fn put_msgs(hash: &Hash, data: &[u8], token: &[u8]) -> Vec<PutShardRequest> {
    let mut m = vec![PutShardRequest {
        msg: Some(Msg::Header(PutShardHeader {
            hash: hash.0.to_vec(),
            size: data.len() as u64,
            token: token.to_vec(),
        })),
    }];
    let data = Bytes::copy_from_slice(data);
    for off in (0..data.len()).step_by(STREAM_PIECE_BYTES) {
        let end = (off + STREAM_PIECE_BYTES).min(data.len());
        m.push(PutShardRequest {
            msg: Some(Msg::Data(data.slice(off..end))),
        });
    }
    m
}

pub async fn put_raw(
    c: &mut ChunkServiceClient<Channel>,
    msgs: Vec<PutShardRequest>,
) -> Result<PutShardResponse, tonic::Status> {
    c.put_shard(tokio_stream::iter(msgs))
        .await
        .map(|r| r.into_inner())
}

/// Puts `data` with a fresh client token for `node`.
pub async fn put(
    c: &mut ChunkServiceClient<Channel>,
    node: &str,
    data: &[u8],
) -> Result<PutShardResponse, tonic::Status> {
    let h = Hash::of(data);
    put_raw(c, put_msgs(&h, data, &rw_token(node, &[h]))).await
}

/// Reads `hash` (range `offset`, `length`) with a client token; returns bytes and shard size.
pub async fn get_range(
    c: &mut ChunkServiceClient<Channel>,
    node: &str,
    hash: &Hash,
    offset: u64,
    length: u64,
) -> Result<(Vec<u8>, u64), tonic::Status> {
    get_with(c, hash, &rw_token(node, &[*hash]), offset, length).await
}

pub async fn get_with(
    c: &mut ChunkServiceClient<Channel>,
    hash: &Hash,
    token: &[u8],
    offset: u64,
    length: u64,
) -> Result<(Vec<u8>, u64), tonic::Status> {
    let mut s = c
        .get_shard(GetShardRequest {
            hash: hash.0.to_vec(),
            token: token.to_vec(),
            offset,
            length,
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    let mut size = 0;
    let mut first = true;
    while let Some(m) = s.message().await? {
        if first {
            size = m.shard_size;
            first = false;
        }
        out.extend_from_slice(&m.data);
    }
    Ok((out, size))
}

pub async fn get(
    c: &mut ChunkServiceClient<Channel>,
    node: &str,
    hash: &Hash,
) -> Result<Vec<u8>, tonic::Status> {
    get_range(c, node, hash, 0, 0).await.map(|(d, _)| d)
}

/// Which of `hashes` node `node` holds (asked with a gateway token).
pub async fn has(c: &mut ChunkServiceClient<Channel>, node: &str, hashes: &[Hash]) -> Vec<bool> {
    c.has_shards(cyxcloud_proto::v1::HasShardsRequest {
        hashes: hashes.iter().map(|h| h.0.to_vec()).collect(),
        token: gateway_token(node, &[Op::Get]),
    })
    .await
    .unwrap()
    .into_inner()
    .present
}

/// The node's figures (asked with a gateway token).
pub async fn stats(
    c: &mut ChunkServiceClient<Channel>,
    node: &str,
) -> cyxcloud_proto::v1::StatsResponse {
    c.stats(cyxcloud_proto::v1::StatsRequest {
        token: gateway_token(node, &[Op::Get]),
    })
    .await
    .unwrap()
    .into_inner()
}

/// Asserts a status carries `code` (both the gRPC code and the stable x-cyx-code).
#[track_caller]
pub fn assert_code<T: std::fmt::Debug>(
    r: Result<T, tonic::Status>,
    code: ErrorCode,
) -> tonic::Status {
    match r {
        Ok(v) => panic!("expected {code}, got Ok({v:?})"),
        Err(s) => {
            assert_eq!(
                cyxcloud_proto::error_code(&s),
                code,
                "status {s:?} should carry {code}"
            );
            assert_eq!(s.code(), code.grpc_code(), "grpc code of {s:?}");
            s
        }
    }
}

/// Polls `f` until it holds (async-friendly wrapper of testkit's wait_until).
pub async fn eventually<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Blocking wait helper re-exported for sync tests.
pub fn wait<T>(timeout: Duration, what: &str, f: impl FnMut() -> Option<T>) -> T {
    wait_until(timeout, what, f)
}
