//! The node's one typed, validated configuration, layered defaults < file < env < flags with
//! `cyxcloud_daemon::config::Layers`, exactly as the usage guide writes it:
//!
//! ```toml
//! [node]       id, name, region, datacenter, rack, wallet_address
//! [storage]    data_dir, max_capacity_gb, compression, cache_size_mb, backend
//! [network]    bind_address, grpc_port, p2p_port, enable_tls, bootstrap_peers, public_address
//! [central]    address, register, heartbeat_interval_secs, token_public_keys
//! [cyxwiz_api] base_url, register, owner_id, api_key, machine_id
//! [metrics]    enabled, port, health_path, metrics_path
//! ```
//!
//! The file is `--config PATH`, else `./config.toml` when it exists. Environment variables
//! ([`ENV`]) override the file; `--data-dir` overrides everything. [`Config::validate`] runs
//! before anything binds a port.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use cyxcloud_daemon::Layers;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Environment variables and the settings they set. Where two variables set one key, the later
/// one wins (`CENTRAL_ADDRESS` over `CENTRAL_SERVER_ADDR`).
pub const ENV: &[(&str, &str)] = &[
    ("NODE_ID", "node.id"),
    ("NODE_NAME", "node.name"),
    ("NODE_REGION", "node.region"),
    ("NODE_DATACENTER", "node.datacenter"),
    ("NODE_RACK", "node.rack"),
    ("NODE_WALLET_ADDRESS", "node.wallet_address"),
    ("STORAGE_PATH", "storage.data_dir"),
    ("STORAGE_CAPACITY_GB", "storage.max_capacity_gb"),
    ("SCRUB_PERIOD_SECS", "storage.scrub_period_secs"),
    ("STORAGE_DISK_RESERVE_MB", "storage.disk_reserve_mb"),
    ("STORAGE_BACKEND", "storage.backend"),
    ("GRPC_HOST", "network.bind_address"),
    ("GRPC_PORT", "network.grpc_port"),
    ("GRPC_PUBLIC_ADDRESS", "network.public_address"),
    ("LIBP2P_PORT", "network.p2p_port"),
    ("BOOTSTRAP_PEERS", "network.bootstrap_peers"),
    ("CENTRAL_SERVER_ADDR", "central.address"),
    ("CENTRAL_ADDRESS", "central.address"),
    ("CENTRAL_REGISTER", "central.register"),
    ("HEARTBEAT_INTERVAL_SECS", "central.heartbeat_interval_secs"),
    ("CYXCLOUD_TOKEN_PUBLIC_KEYS", "central.token_public_keys"),
    ("NODE_JOIN_TOKEN", "central.join_token"),
    ("NODE_JOIN_TOKEN_FILE", "central.join_token_file"),
    ("CENTRAL_CA_CERT", "central.ca_cert_file"),
    ("NODE_TLS", "network.enable_tls"),
    ("CYXWIZ_API_URL", "cyxwiz_api.base_url"),
    ("CYXWIZ_API_REGISTER", "cyxwiz_api.register"),
    ("METRICS_PORT", "metrics.port"),
];

/// The node configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub node: NodeSection,
    pub storage: StorageSection,
    pub network: NetworkSection,
    pub central: CentralSection,
    pub cyxwiz_api: ApiSection,
    pub metrics: MetricsSection,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// Unique node id; empty = the id in `metadata.json`, or a new one generated on first start.
    pub id: String,
    /// Human-readable name; empty = the node id.
    pub name: String,
    pub region: String,
    pub datacenter: String,
    pub rack: String,
    pub wallet_address: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSection {
    /// Data directory: `rocksdb/`, `metadata.json`, credentials, control socket.
    pub data_dir: String,
    /// Capacity in GiB (fractions allowed) counted in stored record bytes.
    pub max_capacity_gb: f64,
    /// LZ4-compress records when that makes them smaller.
    pub compression: bool,
    /// RocksDB block cache.
    pub cache_size_mb: u64,
    /// `rocksdb` (default) or `memory` (nothing persists; tests and experiments).
    pub backend: String,
    /// The scrub re-reads and re-hashes every stored shard once per this period, reporting
    /// corrupt ones to the gateway; 0 turns it off.
    pub scrub_period_secs: u64,
    /// Deletes (garbage collection) free at most this many MB a second; 0 = no limit.
    pub gc_rate_mb_per_sec: u64,
    /// Free space (MiB) kept on the data dir's file system whatever `max_capacity_gb` says: a
    /// put that would leave less is refused as "disk full", so the store never meets a full
    /// disk. RocksDB needs room to flush its memtables (up to 192 MiB) while their log still
    /// exists; a smaller reserve risks a full disk under a burst of puts.
    pub disk_reserve_mb: u64,
}

impl Default for StorageSection {
    fn default() -> Self {
        StorageSection {
            data_dir: "./data".into(),
            max_capacity_gb: 100.0,
            compression: true,
            cache_size_mb: 512,
            backend: "rocksdb".into(),
            scrub_period_secs: 30 * 24 * 3600,
            gc_rate_mb_per_sec: 100,
            disk_reserve_mb: 256,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSection {
    /// Bind address of the gRPC, libp2p and metrics listeners.
    pub bind_address: String,
    pub grpc_port: u16,
    pub p2p_port: u16,
    /// Serve gRPC over TLS 1.3 with a certificate the gateway's cluster CA issues for this
    /// node's key at registration. Also on whenever `[central] address` is `https://`.
    pub enable_tls: bool,
    /// libp2p multiaddrs of bootstrap peers, e.g. `/ip4/10.0.0.1/tcp/4001` (a `/p2p/<id>`
    /// suffix is optional).
    pub bootstrap_peers: Vec<String>,
    /// The gRPC URL other machines use to reach this node; empty = derived from the bind
    /// address (an unspecified bind address uses the host's outbound IP).
    pub public_address: String,
}

impl Default for NetworkSection {
    fn default() -> Self {
        NetworkSection {
            bind_address: "0.0.0.0".into(),
            grpc_port: 50051,
            p2p_port: 4001,
            enable_tls: false,
            bootstrap_peers: Vec::new(),
            public_address: String::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CentralSection {
    /// Gateway gRPC address (NodeRegistry).
    pub address: String,
    /// Register and heartbeat with the gateway; `false` runs standalone.
    pub register: bool,
    pub heartbeat_interval_secs: u64,
    /// Ed25519 public keys (64 hex) whose capability tokens are accepted besides the keys the
    /// gateway hands out at registration.
    pub token_public_keys: Vec<String>,
    /// The cluster's join token (the gateway's `nodes.join_token`), needed once: at the first
    /// registration, which binds the node id to the node's key (`node.key` in the data dir).
    pub join_token: String,
    /// Reads the join token from this file instead (trailing whitespace ignored).
    pub join_token_file: String,
    /// The CA certificate (PEM file) that certifies an `https://` gateway: the cluster CA
    /// (`ca.pem` in the gateway's `tls` dir), or the CA of the operator's certificate.
    pub ca_cert_file: String,
}

impl Default for CentralSection {
    fn default() -> Self {
        CentralSection {
            address: "http://localhost:50052".into(),
            register: true,
            heartbeat_interval_secs: 30,
            token_public_keys: Vec::new(),
            join_token: String::new(),
            join_token_file: String::new(),
            ca_cert_file: String::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    /// Operator account API (login, machine registration).
    pub base_url: String,
    /// Log in and register the machine; `false` skips it.
    pub register: bool,
    /// Normally saved in `.cyxwiz_credentials.json` after the first login; set here to provision
    /// a machine without an interactive login.
    pub owner_id: String,
    pub api_key: String,
    pub machine_id: String,
}

impl Default for ApiSection {
    fn default() -> Self {
        ApiSection {
            base_url: "http://localhost:3002".into(),
            register: true,
            owner_id: String::new(),
            api_key: String::new(),
            machine_id: String::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    pub enabled: bool,
    pub port: u16,
    pub health_path: String,
    pub metrics_path: String,
}

impl Default for MetricsSection {
    fn default() -> Self {
        MetricsSection {
            enabled: true,
            port: 9090,
            health_path: "/health".into(),
            metrics_path: "/metrics".into(),
        }
    }
}

/// Command-line overrides.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
}

fn invalid(key: &'static str, reason: impl Into<String>) -> Error {
    Error::InvalidConfig {
        key,
        reason: reason.into(),
    }
}

/// Node ids and labels: 1..=64 of `[A-Za-z0-9._-]`.
pub fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn http_url(key: &'static str, url: &str) -> Result<()> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| invalid(key, format!("{url:?} must start with https:// or http://")))?;
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() {
        return Err(invalid(key, format!("{url:?} has no host")));
    }
    Ok(())
}

impl Config {
    /// Loads defaults < file < environment < flags, then validates.
    pub fn load(o: &Overrides) -> Result<Config> {
        let mut layers = Layers::from_defaults(&Config::default());
        let local = Path::new("config.toml");
        if let Some(path) = &o.config {
            layers = layers.file(path)?;
        } else if local.is_file() {
            layers = layers.file(local)?;
        }
        layers = layers.env(ENV)?;
        if let Some(d) = &o.data_dir {
            layers = layers.set("flag --data-dir", "storage.data_dir", &d.to_string_lossy())?;
        }
        let mut c: Config = layers.build()?;
        // The join token given in the environment replaces the other form of it from the
        // config file (the packaged node.toml names a token file; a container passes the
        // token itself). Both in the same place stay an error.
        let in_env = |k: &str| std::env::var(k).is_ok_and(|v| !v.is_empty());
        match (in_env("NODE_JOIN_TOKEN"), in_env("NODE_JOIN_TOKEN_FILE")) {
            (true, false) => c.central.join_token_file.clear(),
            (false, true) => c.central.join_token.clear(),
            _ => {}
        }
        c.validate()?;
        Ok(c)
    }

    /// Refuses every value the node could not run with, before any port is bound.
    pub fn validate(&self) -> Result<()> {
        let n = &self.node;
        if !n.id.is_empty() && !valid_id(&n.id) {
            return Err(invalid(
                "node.id",
                format!("{:?}: use 1-64 characters of A-Z a-z 0-9 . _ -", n.id),
            ));
        }
        for (key, v) in [
            ("node.region", &n.region),
            ("node.datacenter", &n.datacenter),
            ("node.rack", &n.rack),
        ] {
            if !v.is_empty() && !valid_id(v) {
                return Err(invalid(
                    key,
                    format!("{v:?}: use 1-64 characters of A-Z a-z 0-9 . _ -"),
                ));
            }
        }
        let s = &self.storage;
        if s.data_dir.trim().is_empty() {
            return Err(invalid("storage.data_dir", "must not be empty"));
        }
        if !(s.max_capacity_gb.is_finite() && s.max_capacity_gb > 0.0) {
            return Err(invalid(
                "storage.max_capacity_gb",
                format!("{} must be a positive number", s.max_capacity_gb),
            ));
        }
        if s.max_capacity_gb > 1.0e9 {
            return Err(invalid("storage.max_capacity_gb", "more than an exabyte"));
        }
        if s.cache_size_mb == 0 || s.cache_size_mb > 1 << 20 {
            return Err(invalid("storage.cache_size_mb", "must be 1..=1048576"));
        }
        if s.backend != "rocksdb" && s.backend != "memory" {
            return Err(invalid(
                "storage.backend",
                format!("{:?}: use rocksdb or memory", s.backend),
            ));
        }
        let net = &self.network;
        net.bind_address.parse::<IpAddr>().map_err(|_| {
            invalid(
                "network.bind_address",
                format!("{:?} is not an IP address", net.bind_address),
            )
        })?;
        if self.tls_enabled() && !self.central.register {
            return Err(invalid(
                "network.enable_tls",
                "a node serves TLS with a certificate its gateway issues: it needs [central] register = true",
            ));
        }
        if self.central.register
            && self.central.address.starts_with("https://")
            && self.central.ca_cert_file.is_empty()
        {
            return Err(invalid(
                "central.ca_cert_file",
                "the gateway is https://: name the CA certificate that certifies it (CENTRAL_CA_CERT)",
            ));
        }
        for p in &net.bootstrap_peers {
            p.parse::<libp2p::Multiaddr>().map_err(|e| {
                invalid(
                    "network.bootstrap_peers",
                    format!("{p:?} is not a multiaddr: {e}"),
                )
            })?;
        }
        if !net.public_address.is_empty() {
            http_url("network.public_address", &net.public_address)?;
        }
        let ports = [
            ("network.grpc_port", net.grpc_port),
            ("network.p2p_port", net.p2p_port),
            (
                "metrics.port",
                if self.metrics.enabled {
                    self.metrics.port
                } else {
                    0
                },
            ),
        ];
        for (i, (ka, a)) in ports.iter().enumerate() {
            for (kb, b) in &ports[i + 1..] {
                if *a != 0 && a == b {
                    return Err(invalid(ka, format!("port {a} is also {kb}")));
                }
            }
        }
        let c = &self.central;
        if c.register {
            http_url("central.address", &c.address)?;
        }
        if c.heartbeat_interval_secs == 0 || c.heartbeat_interval_secs > 3600 {
            return Err(invalid(
                "central.heartbeat_interval_secs",
                "must be 1..=3600",
            ));
        }
        for k in &c.token_public_keys {
            parse_public_key(k)
                .map_err(|r| invalid("central.token_public_keys", format!("{k:?}: {r}")))?;
        }
        if !c.join_token.is_empty() && !c.join_token_file.is_empty() {
            return Err(invalid(
                "central.join_token",
                "set join_token or join_token_file, not both",
            ));
        }
        if self.cyxwiz_api.register && self.cyxwiz_api.api_key.is_empty() {
            http_url("cyxwiz_api.base_url", &self.cyxwiz_api.base_url)?;
        }
        let m = &self.metrics;
        for (key, p) in [
            ("metrics.health_path", &m.health_path),
            ("metrics.metrics_path", &m.metrics_path),
        ] {
            if !p.starts_with('/') || p.len() < 2 || p.starts_with("/peers") {
                return Err(invalid(
                    key,
                    format!("{p:?} must be an absolute path other than / and /peers"),
                ));
            }
        }
        if m.health_path == m.metrics_path {
            return Err(invalid(
                "metrics.health_path",
                "equals metrics.metrics_path",
            ));
        }
        Ok(())
    }

    pub fn data_dir(&self) -> PathBuf {
        PathBuf::from(&self.storage.data_dir)
    }

    pub fn capacity_bytes(&self) -> u64 {
        (self.storage.max_capacity_gb * (1u64 << 30) as f64) as u64
    }

    fn bind_ip(&self) -> IpAddr {
        self.network
            .bind_address
            .parse()
            .expect("validated bind address")
    }

    pub fn grpc_bind(&self) -> SocketAddr {
        SocketAddr::new(self.bind_ip(), self.network.grpc_port)
    }

    pub fn metrics_bind(&self) -> SocketAddr {
        SocketAddr::new(self.bind_ip(), self.metrics.port)
    }

    pub fn p2p_listen(&self) -> libp2p::Multiaddr {
        let ip = match self.bind_ip() {
            IpAddr::V4(v4) => format!("/ip4/{v4}"),
            IpAddr::V6(v6) => format!("/ip6/{v6}"),
        };
        format!("{ip}/tcp/{}", self.network.p2p_port)
            .parse()
            .expect("valid multiaddr")
    }

    /// The gRPC URL advertised to the gateway and the DHT, given the port actually bound.
    pub fn public_grpc_address(&self, bound: SocketAddr) -> String {
        let scheme = if self.tls_enabled() { "https" } else { "http" };
        if !self.network.public_address.is_empty() {
            // The scheme follows what the port serves, whatever the address was written with.
            let a = &self.network.public_address;
            let rest = a.split_once("://").map_or(a.as_str(), |(_, r)| r);
            return format!("{scheme}://{rest}");
        }
        let ip = if bound.ip().is_unspecified() {
            outbound_ip().unwrap_or(IpAddr::from([127, 0, 0, 1]))
        } else {
            bound.ip()
        };
        format!("{scheme}://{}", SocketAddr::new(ip, bound.port()))
    }

    /// Whether the gRPC port serves TLS: asked for, or implied by an `https://` gateway.
    pub fn tls_enabled(&self) -> bool {
        self.network.enable_tls || self.central.address.starts_with("https://")
    }

    /// The CA certificate configured for the gateway, if any.
    pub fn central_ca(&self) -> Result<Option<Vec<u8>>> {
        let f = &self.central.ca_cert_file;
        if f.is_empty() {
            return Ok(None);
        }
        std::fs::read(f)
            .map(Some)
            .map_err(|e| Error::io("cannot read central.ca_cert_file", f, e))
    }

    /// The effective configuration as JSON with secrets redacted (logged at start).
    pub fn redacted(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if !self.cyxwiz_api.api_key.is_empty() {
            v["cyxwiz_api"]["api_key"] = "<redacted>".into();
        }
        if !self.central.join_token.is_empty() {
            v["central"]["join_token"] = "<redacted>".into();
        }
        v
    }

    /// The join token: `central.join_token`, or the content of `central.join_token_file`.
    /// A missing file is not an error (a node that has joined no longer needs the token, and
    /// an operator may delete it): the node goes on without one, and a gateway that does not
    /// know it yet says so.
    pub fn join_token(&self) -> Result<String> {
        let c = &self.central;
        if c.join_token_file.is_empty() {
            return Ok(c.join_token.clone());
        }
        match std::fs::read_to_string(&c.join_token_file) {
            Ok(t) => Ok(t.trim_end().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(path = %c.join_token_file, "the join token file does not exist; a node that has not joined yet cannot join without it");
                Ok(String::new())
            }
            Err(e) => Err(Error::io(
                "cannot read central.join_token_file",
                &c.join_token_file,
                e,
            )),
        }
    }
}

/// Parses a 64-hex Ed25519 public key.
pub fn parse_public_key(s: &str) -> std::result::Result<[u8; 32], String> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s.trim(), &mut out).map_err(|_| "not 64 hex characters".to_string())?;
    let mut v = cyxcloud_core::token::TokenVerifier::new();
    v.add_key(&out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// The local address the OS would use to reach the internet (no packet is sent).
fn outbound_ip() -> Option<IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9").ok()?;
    s.local_addr().ok().map(|a| a.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(f: impl FnOnce(&mut Config)) -> Result<()> {
        let mut c = Config::default();
        f(&mut c);
        c.validate()
    }

    #[test]
    fn defaults_are_valid_and_match_the_guide() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.network.grpc_port, 50051);
        assert_eq!(c.network.p2p_port, 4001);
        assert_eq!(c.metrics.port, 9090);
        assert_eq!(c.central.heartbeat_interval_secs, 30);
        assert_eq!(c.capacity_bytes(), 100 << 30);
    }

    #[test]
    fn bad_values_are_refused_with_their_key() {
        type Case = (&'static str, Box<dyn FnOnce(&mut Config)>);
        let cases: Vec<Case> = vec![
            ("node.id", Box::new(|c| c.node.id = "bad id!".into())),
            ("node.rack", Box::new(|c| c.node.rack = "r/1".into())),
            (
                "storage.max_capacity_gb",
                Box::new(|c| c.storage.max_capacity_gb = 0.0),
            ),
            (
                "storage.max_capacity_gb",
                Box::new(|c| c.storage.max_capacity_gb = -3.0),
            ),
            (
                "storage.backend",
                Box::new(|c| c.storage.backend = "sled".into()),
            ),
            (
                "network.bind_address",
                Box::new(|c| c.network.bind_address = "example".into()),
            ),
            (
                "network.enable_tls",
                Box::new(|c| {
                    c.network.enable_tls = true;
                    c.central.register = false;
                }),
            ),
            (
                "central.ca_cert_file",
                Box::new(|c| c.central.address = "https://gw:50052".into()),
            ),
            (
                "network.bootstrap_peers",
                Box::new(|c| c.network.bootstrap_peers = vec!["nope".into()]),
            ),
            ("network.grpc_port", Box::new(|c| c.metrics.port = 50051)),
            (
                "central.address",
                Box::new(|c| c.central.address = "localhost:50052".into()),
            ),
            (
                "central.heartbeat_interval_secs",
                Box::new(|c| c.central.heartbeat_interval_secs = 0),
            ),
            (
                "central.token_public_keys",
                Box::new(|c| c.central.token_public_keys = vec!["abcd".into()]),
            ),
            (
                "cyxwiz_api.base_url",
                Box::new(|c| c.cyxwiz_api.base_url = "ftp://x".into()),
            ),
            (
                "metrics.health_path",
                Box::new(|c| c.metrics.health_path = "health".into()),
            ),
        ];
        for (key, f) in cases {
            match with(f) {
                Err(Error::InvalidConfig { key: k, .. }) => assert_eq!(k, key),
                other => panic!("{key}: expected InvalidConfig, got {other:?}"),
            }
        }
        // Standalone nodes do not need reachable gateway or account URLs.
        with(|c| {
            c.central.register = false;
            c.central.address = String::new();
            c.cyxwiz_api.register = false;
            c.cyxwiz_api.base_url = String::new();
        })
        .unwrap();
    }

    #[test]
    fn file_env_and_flags_layer_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("node.toml");
        std::fs::write(
            &f,
            "[node]\nid = \"file-node\"\nregion = \"us-east\"\n[storage]\nmax_capacity_gb = 2\n\
             [network]\ngrpc_port = 6000\n[metrics]\nport = 6001\n",
        )
        .unwrap();
        let layers = Layers::from_defaults(&Config::default())
            .file(&f)
            .unwrap()
            .set(
                "environment variable GRPC_PORT",
                "network.grpc_port",
                "7000",
            )
            .unwrap()
            .set(
                "environment variable BOOTSTRAP_PEERS",
                "network.bootstrap_peers",
                "/ip4/1.2.3.4/tcp/4001, /ip4/1.2.3.5/tcp/4001",
            )
            .unwrap()
            .set("flag --data-dir", "storage.data_dir", "/tmp/x")
            .unwrap();
        let c: Config = layers.build().unwrap();
        c.validate().unwrap();
        assert_eq!(c.node.id, "file-node");
        assert_eq!(c.node.region, "us-east");
        assert_eq!(c.network.grpc_port, 7000);
        assert_eq!(c.metrics.port, 6001);
        assert_eq!(c.network.bootstrap_peers.len(), 2);
        assert_eq!(c.storage.data_dir, "/tmp/x");
        assert_eq!(c.capacity_bytes(), 2 << 30);
        std::fs::write(&f, "[storage]\nmax_capacity = 2\n").unwrap();
        let e = Layers::from_defaults(&Config::default())
            .file(&f)
            .unwrap_err();
        assert!(e.to_string().contains("storage.max_capacity"), "{e}");
    }

    #[test]
    fn secrets_are_redacted() {
        let mut c = Config::default();
        c.cyxwiz_api.api_key = "sekrit".into();
        let s = c.redacted().to_string();
        assert!(!s.contains("sekrit"));
        assert!(s.contains("<redacted>"));
    }
}
