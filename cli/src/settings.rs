//! Where the CLI finds its gateway and credentials: flags and environment first
//! (`--gateway`, `CYXCLOUD_GATEWAY`, `CYXCLOUD_ACCESS_KEY`, `CYXCLOUD_SECRET_KEY`,
//! `--ca-cert`/`CYXCLOUD_CA_CERT`), then
//! `~/.config/cyxcloud/config.toml`, then defaults. Scripts need no config file.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::args::Cli;

pub const DEFAULT_GATEWAY: &str = "http://localhost:8080";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    gateway: Option<String>,
    access_key: Option<String>,
    secret_key: Option<String>,
    ca_cert: Option<PathBuf>,
}

/// Resolved connection settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub gateway: String,
    pub access_key: String,
    pub secret_key: String,
    /// The CA certificate (PEM) for an https:// gateway, and its file.
    pub ca_pem: Option<Vec<u8>>,
    pub ca_cert: Option<PathBuf>,
}

pub fn config_dir() -> PathBuf {
    std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("cyxcloud")
}

pub fn resolve(cli: &Cli) -> anyhow::Result<Settings> {
    let path = cli
        .config
        .clone()
        .unwrap_or_else(|| config_dir().join("config.toml"));
    let file: FileConfig = match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text)
            .with_context(|| format!("invalid config file {}", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && cli.config.is_none() => {
            FileConfig::default()
        }
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read config file {}", path.display()));
        }
    };
    let gateway = cli
        .gateway
        .clone()
        .or(file.gateway)
        .unwrap_or_else(|| DEFAULT_GATEWAY.to_string());
    let access_key = cli
        .access_key
        .clone()
        .or(file.access_key)
        .unwrap_or_default();
    let secret_key = cli
        .secret_key
        .clone()
        .or(file.secret_key)
        .unwrap_or_default();
    if access_key.is_empty() || secret_key.is_empty() {
        bail!(
            "no credentials: set CYXCLOUD_ACCESS_KEY and CYXCLOUD_SECRET_KEY, pass --access-key/--secret-key, \
             or put access_key/secret_key in {} (`cyxcloud up` prints them)",
            path.display()
        );
    }
    let ca_cert = cli.ca_cert.clone().or(file.ca_cert);
    let ca_pem = match &ca_cert {
        Some(p) => Some(
            std::fs::read(p)
                .with_context(|| format!("cannot read CA certificate {}", p.display()))?,
        ),
        None => None,
    };
    Ok(Settings {
        gateway: gateway.trim_end_matches('/').to_string(),
        access_key,
        secret_key,
        ca_pem,
        ca_cert,
    })
}
