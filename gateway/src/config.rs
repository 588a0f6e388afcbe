//! The gateway's configuration: defaults < TOML file < environment < flags
//! (`cyxcloud_daemon::Layers`), validated before anything binds.
//!
//! Environment (usage guide names first): `GATEWAY_HOST`, `GATEWAY_PORT`, `GATEWAY_GRPC_PORT`,
//! `GATEWAY_DATA_DIR`, `DATABASE_URL`, `REDIS_URL`, plus `GATEWAY_HEARTBEAT_INTERVAL_MS`,
//! `GATEWAY_REQUIRE_MACHINE_KEYS`, `GATEWAY_SUCCESS_THRESHOLD`, `GATEWAY_INLINE_THRESHOLD_BYTES`,
//! `GATEWAY_CHUNK_SIZE_BYTES`, `GATEWAY_PROFILE`, `CYXCLOUD_CLUSTER_KEY_FILE`.

use std::path::{Path, PathBuf};

use cyxcloud_core::codec::Profile;
use cyxcloud_daemon::Layers;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Bind address of both ports.
    pub host: String,
    /// HTTP: S3, `/health`, `/metrics`, `/ws`, `/api`.
    pub port: u16,
    /// gRPC: `Control` and `NodeRegistry`.
    pub grpc_port: u16,
    /// Holds the SQLite database (when `database_url` is empty) and the cluster key.
    pub data_dir: String,
    /// `postgres://...` for PostgreSQL; empty = SQLite at `<data_dir>/metadata.db`.
    pub database_url: String,
    pub db_max_connections: u32,
    /// `redis://...` enables the shared cache; empty = in-process cache.
    pub redis_url: String,
    pub redis_prefix: String,
    /// Shared by every gateway of one database; empty = `<data_dir>/cluster.key`.
    pub cluster_key_file: String,
    pub storage: StorageConfig,
    pub writes: WritesConfig,
    pub nodes: NodesConfig,
    pub auth: AuthConfig,
    pub journal: JournalConfig,
    pub cache: CacheConfig,
    /// The S3 API (`[s3]`).
    pub s3: crate::s3::S3Config,
    /// TLS on the HTTP and gRPC ports (`[tls]`, docs/adr/0008).
    pub tls: TlsConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Serve the HTTP and gRPC ports over TLS 1.3. `false` serves plaintext: only for a
    /// gateway behind a TLS-terminating proxy, or tests of the raw protocol.
    pub enabled: bool,
    /// The server's certificate chain and key (PEM), re-read on SIGHUP; empty: a certificate
    /// from the cluster CA, made at each start.
    pub cert_path: String,
    pub key_path: String,
    /// Where the cluster CA lives (`ca.pem`, `ca.key`): it certifies the gateway (unless
    /// `cert_path` is set) and every node. Empty: `<data_dir>/tls`. Gateways sharing one
    /// database must share it.
    pub ca_dir: String,
    /// A file the CA certificate (public) is copied to at each start, mode 0644: for nodes
    /// and clients on this host that must not read `ca_dir` (it holds the CA's key).
    pub ca_export: String,
    /// Names (DNS names or IP addresses) the CA-made certificate carries besides the bind
    /// host, 127.0.0.1, localhost and this machine's host name.
    pub names: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    pub chunk_size_bytes: u64,
    /// `default` (10+4), `ha`, `max-ha`, `extreme` or `k+m`.
    pub profile: String,
    /// 1 = reed-solomon-erasure, 2 = reed-solomon-simd.
    pub codec: u32,
    pub inline_threshold_bytes: u64,
    /// Stored shards per chunk required at commit; 0 = k + m − 1 (never below k + 1).
    pub success_threshold: u32,
    /// Ask the nodes (`HasShards`) whether the shards a commit claims are really stored.
    pub verify_commits: bool,
    pub max_shards_per_node: u32,
    pub max_shards_per_rack: u32,
    pub max_shards_per_datacenter: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WritesConfig {
    /// An uncommitted write expires (and its shards are released) after this long.
    pub write_ttl_secs: u64,
    /// Lifetime of node Put/Get tokens.
    pub token_ttl_secs: u64,
    pub expiry_check_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NodesConfig {
    pub heartbeat_interval_ms: u64,
    pub missed_heartbeats: u32,
    /// Refuse new nodes without a machine API key from the operator account API, even with
    /// the join token.
    pub require_machine_keys: bool,
    pub latency_probe_ms: u64,
    /// The secret a new node presents to join (`NODE_JOIN_TOKEN` on the node); empty: new
    /// nodes join only with a machine API key. A node bound to its key re-registers without it.
    pub join_token: String,
    /// Reads the join token from this file instead (trailing whitespace ignored).
    pub join_token_file: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub token_ttl_secs: u64,
    pub jwt_ttl_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct JournalConfig {
    pub retention_events: u64,
    pub retention_secs: u64,
    pub poll_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    pub entries: u64,
    pub ttl_secs: u64,
}

pub const DEFAULT_HTTP_PORT: u16 = 8080;
pub const DEFAULT_GRPC_PORT: u16 = 50052;
pub const DEFAULT_INLINE_THRESHOLD: u64 = 4096;
/// Largest configurable inline threshold (metadata rows stay small).
pub const MAX_INLINE_THRESHOLD: u64 = 64 * 1024;
pub const MIN_CHUNK_SIZE: u64 = 4096;

impl Default for Config {
    fn default() -> Self {
        Config {
            host: "0.0.0.0".into(),
            port: DEFAULT_HTTP_PORT,
            grpc_port: DEFAULT_GRPC_PORT,
            data_dir: "./data/gateway".into(),
            database_url: String::new(),
            db_max_connections: 16,
            redis_url: String::new(),
            redis_prefix: "cyxcloud:".into(),
            cluster_key_file: String::new(),
            storage: StorageConfig::default(),
            writes: WritesConfig::default(),
            nodes: NodesConfig::default(),
            auth: AuthConfig::default(),
            journal: JournalConfig::default(),
            cache: CacheConfig::default(),
            s3: crate::s3::S3Config::default(),
            tls: TlsConfig::default(),
        }
    }
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            enabled: true,
            cert_path: String::new(),
            key_path: String::new(),
            ca_dir: String::new(),
            ca_export: String::new(),
            names: Vec::new(),
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            chunk_size_bytes: cyxcloud_core::DEFAULT_CHUNK_SIZE as u64,
            profile: "default".into(),
            codec: 1,
            inline_threshold_bytes: DEFAULT_INLINE_THRESHOLD,
            success_threshold: 0,
            verify_commits: true,
            max_shards_per_node: 2,
            max_shards_per_rack: 4,
            max_shards_per_datacenter: 6,
        }
    }
}

impl Default for WritesConfig {
    fn default() -> Self {
        WritesConfig {
            write_ttl_secs: 3600,
            token_ttl_secs: 900,
            expiry_check_secs: 30,
        }
    }
}

impl Default for NodesConfig {
    fn default() -> Self {
        NodesConfig {
            heartbeat_interval_ms: 30_000,
            missed_heartbeats: 3,
            require_machine_keys: false,
            latency_probe_ms: 10_000,
            join_token: String::new(),
            join_token_file: String::new(),
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            token_ttl_secs: 3600,
            jwt_ttl_secs: 7 * 24 * 3600,
        }
    }
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            retention_events: 1_000_000,
            retention_secs: 7 * 24 * 3600,
            poll_ms: 500,
        }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            entries: 100_000,
            ttl_secs: 300,
        }
    }
}

/// Environment variables and the settings they set.
pub const ENV: &[(&str, &str)] = &[
    ("GATEWAY_HOST", "host"),
    ("GATEWAY_PORT", "port"),
    ("GATEWAY_GRPC_PORT", "grpc_port"),
    ("GATEWAY_DATA_DIR", "data_dir"),
    ("DATABASE_URL", "database_url"),
    ("REDIS_URL", "redis_url"),
    ("REDIS_PREFIX", "redis_prefix"),
    ("CYXCLOUD_CLUSTER_KEY_FILE", "cluster_key_file"),
    (
        "GATEWAY_HEARTBEAT_INTERVAL_MS",
        "nodes.heartbeat_interval_ms",
    ),
    ("GATEWAY_REQUIRE_MACHINE_KEYS", "nodes.require_machine_keys"),
    ("GATEWAY_NODE_JOIN_TOKEN", "nodes.join_token"),
    ("GATEWAY_NODE_JOIN_TOKEN_FILE", "nodes.join_token_file"),
    ("GATEWAY_SUCCESS_THRESHOLD", "storage.success_threshold"),
    (
        "GATEWAY_INLINE_THRESHOLD_BYTES",
        "storage.inline_threshold_bytes",
    ),
    ("GATEWAY_CHUNK_SIZE_BYTES", "storage.chunk_size_bytes"),
    ("GATEWAY_PROFILE", "storage.profile"),
    ("GATEWAY_TLS", "tls.enabled"),
    ("GATEWAY_TLS_CERT_PATH", "tls.cert_path"),
    ("GATEWAY_TLS_KEY_PATH", "tls.key_path"),
    ("GATEWAY_TLS_CA_DIR", "tls.ca_dir"),
    ("GATEWAY_TLS_CA_EXPORT", "tls.ca_export"),
    ("GATEWAY_TLS_NAMES", "tls.names"),
];

impl Config {
    /// Layers: defaults < `file` < environment < `flags` (`(dotted.key, value)` pairs).
    pub fn load(file: Option<&Path>, flags: &[(String, String)]) -> Result<Config> {
        let mut l = Layers::from_defaults(&Config::default());
        if let Some(f) = file {
            l = l.file(f).map_err(|e| Error::Config(e.to_string()))?;
        }
        l = l.env(ENV).map_err(|e| Error::Config(e.to_string()))?;
        for (k, v) in flags {
            l = l
                .set(&format!("flag {k}"), k, v)
                .map_err(|e| Error::Config(e.to_string()))?;
        }
        let c: Config = l.build().map_err(|e| Error::Config(e.to_string()))?;
        c.validate()?;
        Ok(c)
    }

    pub fn profile(&self) -> Result<Profile> {
        crate::placement::parse_profile(&self.storage.profile, Profile::DEFAULT)
    }

    pub fn data_dir(&self) -> PathBuf {
        PathBuf::from(&self.data_dir)
    }

    /// The metadata store URL: PostgreSQL when configured, else the SQLite file.
    pub fn database(&self) -> String {
        if self.database_url.is_empty() {
            self.data_dir().join("metadata.db").display().to_string()
        } else {
            self.database_url.clone()
        }
    }

    /// The directory of the cluster CA.
    pub fn ca_dir(&self) -> PathBuf {
        if self.tls.ca_dir.is_empty() {
            self.data_dir().join("tls")
        } else {
            PathBuf::from(&self.tls.ca_dir)
        }
    }

    pub fn cluster_key_path(&self) -> PathBuf {
        if self.cluster_key_file.is_empty() {
            self.data_dir().join("cluster.key")
        } else {
            PathBuf::from(&self.cluster_key_file)
        }
    }

    /// Everything that can be checked before binding.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.host.parse::<std::net::IpAddr>().is_err() {
            return bad(format!("host {:?} is not an IP address", self.host));
        }
        if self.port != 0 && self.port == self.grpc_port {
            return bad(format!("port and grpc_port are both {}", self.port));
        }
        if self.data_dir.is_empty() {
            return bad("data_dir is empty".into());
        }
        if !self.database_url.is_empty()
            && !self.database_url.starts_with("postgres://")
            && !self.database_url.starts_with("postgresql://")
            && !self.database_url.starts_with("sqlite:")
        {
            return bad(format!(
                "DATABASE_URL must be postgres://... (or sqlite:...), got {:?}",
                redact(&self.database_url)
            ));
        }
        if !self.redis_url.is_empty()
            && !self.redis_url.starts_with("redis://")
            && !self.redis_url.starts_with("rediss://")
            && !self.redis_url.starts_with("unix://")
        {
            return bad("REDIS_URL must be redis://...".into());
        }
        let profile = self.profile()?;
        let s = &self.storage;
        if s.chunk_size_bytes < MIN_CHUNK_SIZE
            || s.chunk_size_bytes > cyxcloud_core::MAX_CHUNK_SIZE as u64
        {
            return bad(format!(
                "storage.chunk_size_bytes must be {MIN_CHUNK_SIZE}..={}",
                cyxcloud_core::MAX_CHUNK_SIZE
            ));
        }
        if s.inline_threshold_bytes > MAX_INLINE_THRESHOLD {
            return bad(format!(
                "storage.inline_threshold_bytes is at most {MAX_INLINE_THRESHOLD}"
            ));
        }
        let (k, n) = (profile.data() as u32, profile.total() as u32);
        if s.success_threshold != 0
            && (s.success_threshold < (k + 1).min(n) || s.success_threshold > n)
        {
            return bad(format!(
                "storage.success_threshold {} is outside {}..={n} for profile {profile} (0 = k + m - 1)",
                s.success_threshold,
                (k + 1).min(n)
            ));
        }
        if cyxcloud_core::CodecId::from_u8(s.codec.min(255) as u8).is_err() {
            return bad(format!("storage.codec {} is unknown (1 or 2)", s.codec));
        }
        if s.max_shards_per_node == 0
            || s.max_shards_per_rack == 0
            || s.max_shards_per_datacenter == 0
        {
            return bad("storage.max_shards_per_* must be at least 1".into());
        }
        if self.nodes.heartbeat_interval_ms < 50 {
            return bad("nodes.heartbeat_interval_ms must be at least 50".into());
        }
        if !self.nodes.join_token.is_empty() && !self.nodes.join_token_file.is_empty() {
            return bad("set nodes.join_token or nodes.join_token_file, not both".into());
        }
        if !self.nodes.join_token.is_empty() {
            check_join_token(&self.nodes.join_token)?;
        }
        if self.tls.cert_path.is_empty() != self.tls.key_path.is_empty() {
            return bad("tls.cert_path and tls.key_path go together".into());
        }
        if self.nodes.missed_heartbeats == 0 {
            return bad("nodes.missed_heartbeats must be at least 1".into());
        }
        if self.writes.write_ttl_secs == 0
            || self.writes.token_ttl_secs == 0
            || self.auth.token_ttl_secs == 0
        {
            return bad("TTLs must be at least 1 second".into());
        }
        if self.journal.poll_ms == 0 || self.journal.retention_events == 0 {
            return bad("journal.poll_ms and journal.retention_events must be positive".into());
        }
        if self.db_max_connections < 2 {
            return bad("db_max_connections must be at least 2".into());
        }
        self.s3.validate()?;
        Ok(())
    }

    /// The effective configuration for the log, with secrets in URLs redacted.
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        c.database_url = redact(&c.database_url);
        c.redis_url = redact(&c.redis_url);
        if !c.nodes.join_token.is_empty() {
            c.nodes.join_token = "***".into();
        }
        c
    }

    /// The node join token: `nodes.join_token`, or the content of `nodes.join_token_file`;
    /// `None` when neither is set.
    pub fn join_token(&self) -> Result<Option<String>> {
        if !self.nodes.join_token_file.is_empty() {
            let path = &self.nodes.join_token_file;
            let t = std::fs::read_to_string(path).map_err(|e| {
                Error::Config(format!("cannot read nodes.join_token_file {path}: {e}"))
            })?;
            let t = t.trim_end().to_string();
            check_join_token(&t)?;
            return Ok(Some(t));
        }
        Ok((!self.nodes.join_token.is_empty()).then(|| self.nodes.join_token.clone()))
    }
}

/// A join token is a secret: long enough not to be guessed, printable, one line.
fn check_join_token(t: &str) -> Result<()> {
    if t.len() < 16 || t.len() > 256 || !t.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::Config(
            "the node join token must be 16 to 256 printable characters without spaces".into(),
        ));
    }
    Ok(())
}

/// Hides the password of `scheme://user:password@host`.
pub fn redact(url: &str) -> String {
    if let Some(scheme_end) = url.find("://")
        && let Some(at) = url[scheme_end + 3..].find('@')
    {
        let creds = &url[scheme_end + 3..scheme_end + 3 + at];
        if let Some((user, _)) = creds.split_once(':') {
            return format!(
                "{}{}:***{}",
                &url[..scheme_end + 3],
                user,
                &url[scheme_end + 3 + at..]
            );
        }
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_values_are_refused() {
        Config::default().validate().unwrap();
        let mut c = Config {
            storage: StorageConfig {
                success_threshold: 10, // k = 10: below k + 1
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(c.validate().is_err());
        c.storage.success_threshold = 11;
        c.validate().unwrap();
        let c = Config {
            grpc_port: DEFAULT_HTTP_PORT,
            ..Default::default()
        };
        assert!(c.validate().is_err());
        let c = Config {
            storage: StorageConfig {
                profile: "12+x".into(),
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(c.validate().is_err());
        let c = Config {
            database_url: "mysql://x".into(),
            ..Default::default()
        };
        assert!(c.validate().is_err());
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }
}
