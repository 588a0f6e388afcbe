//! The rebalancer's configuration: defaults < TOML file (`--config`) < environment < `--set`
//! flags, as every CyxCloud daemon (`cyxcloud_daemon::config`).

use std::path::Path;
use std::time::Duration;

use cyxcloud_daemon::Layers;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The gateway's gRPC address (Control and Maintenance APIs).
    pub gateway: String,
    /// Admin credentials (the Maintenance API is for admins only).
    pub access_key: String,
    pub secret_key: String,
    /// A file holding the secret key (wins over `secret_key`, as for the gateway).
    pub secret_key_file: String,
    /// The CA certificate (PEM file) that certifies an `https://` gateway (the cluster CA).
    pub ca_cert_file: String,
    /// Period of the full scans: the orphan sweep over every node's shards, and the longest
    /// wait between two reads of the degraded chunks (node deaths are reacted to sooner: the
    /// rebalancer polls every `poll_ms`).
    pub scan_interval_secs: u64,
    /// How often the degraded list is read while idle; 0 = the gateway's heartbeat interval.
    pub poll_ms: u64,
    /// Chunks repaired at the same time.
    pub repair_parallelism: u32,
    /// Repair traffic (source bytes read plus rebuilt bytes written) per hour; 0 = unlimited.
    pub rate_limit_bytes_per_hour: u64,
    /// Every stored shard is audited (proof of storage) once per this period; 0 = no audits.
    pub audit_period_secs: u64,
    /// Time between two audit batches.
    pub audit_interval_ms: u64,
    /// An unreferenced shard is deleted once found so in two sweeps this far apart; the sweep
    /// runs every `scan_interval_secs`. 0 turns the orphan sweep off.
    pub gc_grace_secs: u64,
    /// How long a repair grant (its tokens, the chunk's lease) lasts.
    pub lease_secs: u64,
    /// This instance's name in leases. Empty: `rebalancer@<hostname>:<metrics port>` when the
    /// metrics port is fixed, so that a restarted rebalancer takes its own leases back at once
    /// (a new name would wait `lease_secs` for the chunks its predecessor was repairing);
    /// otherwise a name made up at start.
    pub holder: String,
    pub metrics: Metrics,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Metrics {
    pub enabled: bool,
    pub host: String,
    /// `/metrics` and `/health`; 0 picks a free port.
    pub port: u16,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            gateway: "http://127.0.0.1:50052".into(),
            access_key: String::new(),
            secret_key: String::new(),
            secret_key_file: String::new(),
            ca_cert_file: String::new(),
            scan_interval_secs: 3600,
            poll_ms: 0,
            repair_parallelism: 4,
            rate_limit_bytes_per_hour: 10 << 30,
            audit_period_secs: 30 * 24 * 3600,
            audit_interval_ms: 10_000,
            gc_grace_secs: 3600,
            lease_secs: 600,
            holder: String::new(),
            metrics: Metrics::default(),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            enabled: true,
            host: "127.0.0.1".into(),
            port: 9092,
        }
    }
}

/// Environment variables and the settings they set.
pub const ENV: &[(&str, &str)] = &[
    ("CYXCLOUD_GRPC_ADDRESS", "gateway"),
    ("CYXCLOUD_ACCESS_KEY", "access_key"),
    ("CYXCLOUD_SECRET_KEY", "secret_key"),
    ("CYXCLOUD_SECRET_KEY_FILE", "secret_key_file"),
    ("CYXCLOUD_CA_CERT", "ca_cert_file"),
    ("SCAN_INTERVAL_SECS", "scan_interval_secs"),
    ("REPAIR_PARALLELISM", "repair_parallelism"),
    ("RATE_LIMIT_BYTES_PER_HOUR", "rate_limit_bytes_per_hour"),
    ("REBALANCER_POLL_MS", "poll_ms"),
    ("AUDIT_PERIOD_SECS", "audit_period_secs"),
    ("GC_GRACE_SECS", "gc_grace_secs"),
    ("REBALANCER_METRICS_PORT", "metrics.port"),
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Layers(#[from] cyxcloud_daemon::ConfigError),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Layers: defaults < `file` < environment < `flags` (`dotted.key=value`).
    pub fn load(file: Option<&Path>, flags: &[String]) -> Result<Config, ConfigError> {
        let mut l = Layers::from_defaults(&Config::default());
        if let Some(f) = file {
            l = l.file(f)?;
        }
        l = l.env(ENV)?;
        for f in flags {
            let (k, v) = f
                .split_once('=')
                .ok_or_else(|| ConfigError::Invalid(format!("--set {f:?}: expected key=value")))?;
            l = l.set(&format!("flag {k}"), k.trim(), v.trim())?;
        }
        let mut c: Config = l.build()?;
        if !c.secret_key_file.is_empty() {
            c.secret_key = std::fs::read_to_string(&c.secret_key_file)
                .map_err(|e| {
                    ConfigError::Invalid(format!("cannot read {}: {e}", c.secret_key_file))
                })?
                .trim()
                .to_string();
        }
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if !(self.gateway.starts_with("http://") || self.gateway.starts_with("https://")) {
            return bad(format!(
                "gateway {:?} must be the gateway's gRPC URL, http://host:port",
                self.gateway
            ));
        }
        if self.gateway.starts_with("https://") && self.ca_cert_file.is_empty() {
            return bad(format!(
                "gateway {} serves TLS: name the CA certificate that certifies it (CYXCLOUD_CA_CERT)",
                self.gateway
            ));
        }
        if self.access_key.is_empty() || self.secret_key.is_empty() {
            return bad(
                "admin credentials are needed: set CYXCLOUD_ACCESS_KEY and CYXCLOUD_SECRET_KEY"
                    .into(),
            );
        }
        if self.repair_parallelism == 0 || self.repair_parallelism > 1024 {
            return bad(format!(
                "repair_parallelism {} must be 1 to 1024",
                self.repair_parallelism
            ));
        }
        if self.scan_interval_secs == 0 {
            return bad("scan_interval_secs must be at least 1".into());
        }
        if self.audit_period_secs > 0 && self.audit_interval_ms == 0 {
            return bad("audit_interval_ms must be at least 1".into());
        }
        if self.lease_secs < 10 || self.lease_secs > 3600 {
            return bad(format!("lease_secs {} must be 10 to 3600", self.lease_secs));
        }
        if self.metrics.host.parse::<std::net::IpAddr>().is_err() {
            return bad(format!(
                "metrics.host {:?} is not an IP address",
                self.metrics.host
            ));
        }
        Ok(())
    }

    /// Bytes a second the repair traffic may use (0 = unlimited).
    pub fn rate_bytes_per_sec(&self) -> f64 {
        self.rate_limit_bytes_per_hour as f64 / 3600.0
    }

    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_secs)
    }

    /// The configuration with secrets hidden, for the start-up log.
    pub fn redacted(&self) -> String {
        let mut c = self.clone();
        if !c.secret_key.is_empty() {
            c.secret_key = "<redacted>".into();
        }
        serde_json::to_string(&c).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(f: &[&str]) -> Vec<String> {
        f.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn flags_win_and_bad_values_are_refused_with_their_origin() {
        let base = flags(&["access_key=a", "secret_key=s"]);
        let c = Config::load(
            None,
            &[base.clone(), flags(&["repair_parallelism=9"])].concat(),
        )
        .unwrap();
        assert_eq!(c.repair_parallelism, 9);
        assert_eq!(c.rate_limit_bytes_per_hour, 10 << 30);
        let e = Config::load(
            None,
            &[base.clone(), flags(&["repair_parallelism=x"])].concat(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("repair_parallelism"), "{e}");
        let e = Config::load(
            None,
            &[base.clone(), flags(&["repair_parallelism=0"])].concat(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("1 to 1024"), "{e}");
        let e = Config::load(None, &[base, flags(&["no_such=1"])].concat())
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown setting no_such"), "{e}");
        let e = Config::load(None, &flags(&["access_key=a"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("CYXCLOUD_SECRET_KEY"), "{e}");
    }

    #[test]
    fn the_secret_may_come_from_a_file() {
        let dir = std::env::temp_dir().join(format!("rb-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("secret");
        std::fs::write(&f, "from-file\n").unwrap();
        let c = Config::load(
            None,
            &flags(&["access_key=a", &format!("secret_key_file={}", f.display())]),
        )
        .unwrap();
        assert_eq!(c.secret_key, "from-file");
        let e = Config::load(
            None,
            &flags(&["access_key=a", "secret_key_file=/nonexistent/secret"]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("/nonexistent/secret"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_secret_is_not_logged() {
        let c = Config {
            secret_key: "hunter2".into(),
            ..Config::default()
        };
        assert!(!c.redacted().contains("hunter2"));
    }
}
