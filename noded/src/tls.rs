//! The node's TLS (docs/adr/0008): it serves its gRPC port with a certificate the gateway's
//! cluster CA issued for the node's own identity key at registration (kept in `tls/node.pem`
//! for restarts; until the first one, handshakes fail), and verifies the gateway and its
//! peers against the cluster CA (`tls/ca.pem`, from the registration, or `[central]
//! ca_cert_file` before the first one).

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use cyxcloud_core::identity::NodeKey;
use cyxcloud_daemon::tls::{ServerTls, ed25519_pkcs8};

use crate::error::{Error, Result};

pub struct NodeTls {
    pub server: ServerTls,
    dir: PathBuf,
    seed: zeroize::Zeroizing<[u8; 32]>,
    ca: RwLock<Option<Vec<u8>>>,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeTls({})", self.dir.display())
    }
}

fn tls_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Tls(format!("{what}: {e}"))
}

impl NodeTls {
    pub const CERT_FILE: &'static str = "node.pem";
    pub const CA_FILE: &'static str = "ca.pem";

    /// Loads the node's certificate and CA kept in `{data_dir}/tls`, if any; `central_ca`
    /// (the configured CA of the gateway) is trusted until a registration names the CA.
    pub fn open(data_dir: &Path, key: &NodeKey, central_ca: Option<Vec<u8>>) -> Result<NodeTls> {
        let dir = data_dir.join("tls");
        let server = ServerTls::without_certificate().map_err(|e| tls_err("TLS", e))?;
        let seed = key.seed();
        let cert = dir.join(Self::CERT_FILE);
        if cert.exists() {
            let chain = std::fs::read(&cert).map_err(|e| Error::io("cannot read", &cert, e))?;
            match server.set(&chain, ed25519_pkcs8(&seed)) {
                Ok(()) => {}
                // A certificate for another key (a replaced node.key): wait for a new one.
                Err(e) => {
                    tracing::warn!(path = %cert.display(), error = %e, "the kept TLS certificate is unusable; waiting for the gateway to issue one")
                }
            }
        }
        let kept = std::fs::read(dir.join(Self::CA_FILE)).ok();
        Ok(NodeTls {
            server,
            dir,
            seed,
            ca: RwLock::new(kept.or(central_ca)),
        })
    }

    /// Installs the certificate and CA a registration returned, and keeps them.
    pub fn install(&self, chain_pem: &str, ca_pem: &str) -> Result<()> {
        self.server
            .set(chain_pem.as_bytes(), ed25519_pkcs8(&self.seed))
            .map_err(|e| tls_err("the gateway's certificate for this node", e))?;
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io("cannot create", &self.dir, e))?;
        crate::login::write_private(&self.dir.join(Self::CERT_FILE), chain_pem.as_bytes())?;
        if !ca_pem.is_empty() {
            crate::login::write_private(&self.dir.join(Self::CA_FILE), ca_pem.as_bytes())?;
            *self.ca.write().unwrap_or_else(|e| e.into_inner()) = Some(ca_pem.as_bytes().to_vec());
        }
        Ok(())
    }

    /// The cluster CA, to verify peers.
    pub fn ca(&self) -> Option<Vec<u8>> {
        self.ca.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
