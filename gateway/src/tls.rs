//! The gateway's TLS (docs/adr/0008): the cluster CA, the certificate its HTTP and gRPC ports
//! present (the operator's files, re-read on SIGHUP, or one the cluster CA makes at each start),
//! node certificates issued at registration, and the channels it opens to nodes.

use std::path::PathBuf;

use cyxcloud_daemon::tls::{CERT_DAYS, ClusterCa, ServerTls, key_from_pem};

use crate::config::Config;
use crate::error::{Error, Result};

#[derive(Debug)]
pub struct GatewayTls {
    pub ca: ClusterCa,
    pub server: ServerTls,
    /// The operator's certificate and key files, when they are used.
    files: Option<(PathBuf, PathBuf)>,
}

fn tls_err(e: cyxcloud_daemon::tls::TlsError) -> Error {
    Error::Config(format!("TLS: {e}"))
}

/// This machine's host name, if it has one.
fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

impl GatewayTls {
    pub fn open(config: &Config) -> Result<GatewayTls> {
        let ca = ClusterCa::load_or_create(&config.ca_dir()).map_err(tls_err)?;
        let t = &config.tls;
        if !t.ca_export.is_empty() {
            ca.export(std::path::Path::new(&t.ca_export))
                .map_err(tls_err)?;
            tracing::info!(path = %t.ca_export, "cluster CA certificate copied");
        }
        let (server, files) = if t.cert_path.is_empty() {
            let mut names: Vec<String> = t.names.clone();
            let host = config.host.trim();
            if !host.is_empty() && host != "0.0.0.0" && host != "::" {
                names.push(host.to_string());
            }
            names.extend(["127.0.0.1".to_string(), "localhost".to_string()]);
            names.extend(host_name());
            names.dedup();
            let issued = ca.issue(&names, CERT_DAYS).map_err(tls_err)?;
            let key = key_from_pem("gateway key", issued.key_pem.unwrap_or_default().as_bytes())
                .map_err(tls_err)?;
            tracing::info!(names = ?names, ca = %ca.cert_path().display(), "TLS certificate from the cluster CA");
            (
                ServerTls::new(issued.chain_pem.as_bytes(), key).map_err(tls_err)?,
                None,
            )
        } else {
            let (c, k) = (PathBuf::from(&t.cert_path), PathBuf::from(&t.key_path));
            (
                ServerTls::from_files(&c, &k).map_err(tls_err)?,
                Some((c, k)),
            )
        };
        Ok(GatewayTls { ca, server, files })
    }

    /// Re-reads the operator's certificate files (SIGHUP); nothing to do with a CA-made one.
    pub fn reload(&self) -> Result<bool> {
        match &self.files {
            Some((c, k)) => {
                self.server.reload(c, k).map_err(tls_err)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// A certificate for a node's identity key and the host of its gRPC address.
    pub fn issue_node(&self, grpc_address: &str, public_key: &[u8]) -> Result<String> {
        let key: [u8; 32] = public_key
            .try_into()
            .map_err(|_| Error::invalid("the node public key is not 32 bytes"))?;
        let host = host_of(grpc_address)
            .ok_or_else(|| Error::invalid(format!("no host in {grpc_address:?}")))?;
        let issued = self
            .ca
            .issue_for_key(&[host], key, CERT_DAYS)
            .map_err(tls_err)?;
        Ok(issued.chain_pem)
    }
}

/// The host of `scheme://host:port[/...]` (IPv6 without brackets).
pub fn host_of(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next()?;
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    (!host.is_empty()).then(|| host.to_string())
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn hosts_of_addresses() {
        assert_eq!(
            host_of("https://10.0.0.5:50051").as_deref(),
            Some("10.0.0.5")
        );
        assert_eq!(
            host_of("https://node.example:1/x").as_deref(),
            Some("node.example")
        );
        assert_eq!(host_of("https://[::1]:50051").as_deref(), Some("::1"));
        assert_eq!(host_of("https://:1"), None);
    }
}
