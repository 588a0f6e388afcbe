//! `{data_dir}/metadata.json`: who owns a data directory.
//!
//! ```json
//! {"format": 1, "node_id": "node-1", "name": "my-mining-rig", "backend": "rocksdb",
//!  "capacity_bytes": 107374182400, "created_at": "2024-12-22T10:00:00Z",
//!  "updated_at": "2024-12-22T10:00:00Z", "version": "0.1.0",
//!  "grpc_address": "http://10.0.0.5:50051", "peer_id": "12D3Koo..."}
//! ```
//!
//! Written at first start (with a generated node id unless one is configured) and refreshed at
//! every start. A node refuses a data dir whose metadata names another node id, and a data dir
//! that holds a shard database but no metadata (its owner is unknown).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::config::valid_id;
use crate::error::{Error, Result};

pub const FILE: &str = "metadata.json";
pub const FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeMetadata {
    pub format: u32,
    pub node_id: String,
    pub name: String,
    pub backend: String,
    pub capacity_bytes: u64,
    pub created_at: String,
    pub updated_at: String,
    pub version: String,
    #[serde(default)]
    pub grpc_address: String,
    #[serde(default)]
    pub peer_id: String,
}

impl NodeMetadata {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(FILE)
    }

    /// Reads the metadata of `data_dir`, if any.
    pub fn read(data_dir: &Path) -> Result<Option<NodeMetadata>> {
        let path = Self::path(data_dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("cannot read", path, e)),
        };
        let m: NodeMetadata = serde_json::from_str(&text).map_err(|e| Error::BadMetadata {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if m.format != FORMAT {
            return Err(Error::BadMetadata {
                path,
                reason: format!("unsupported format {}", m.format),
            });
        }
        if !valid_id(&m.node_id) {
            return Err(Error::BadMetadata {
                path,
                reason: format!("invalid node id {:?}", m.node_id),
            });
        }
        Ok(Some(m))
    }

    /// Claims `data_dir` for `configured_id` (empty = whatever id the dir already has, or a new
    /// one). Refuses a dir that belongs to another node.
    pub fn claim(data_dir: &Path, configured_id: &str) -> Result<NodeMetadata> {
        std::fs::create_dir_all(data_dir).map_err(|e| Error::io("cannot create", data_dir, e))?;
        let now = rfc3339(SystemTime::now());
        match Self::read(data_dir)? {
            Some(m) => {
                if !configured_id.is_empty() && configured_id != m.node_id {
                    return Err(Error::ForeignDataDir {
                        dir: data_dir.to_path_buf(),
                        owner: m.node_id,
                        configured: configured_id.to_string(),
                    });
                }
                Ok(m)
            }
            None => {
                if data_dir.join("rocksdb").join("CURRENT").exists() {
                    return Err(Error::BadMetadata {
                        path: Self::path(data_dir),
                        reason: "missing, but the directory holds a shard database: its owner is \
                                 unknown, refusing to adopt it"
                            .into(),
                    });
                }
                let node_id = if configured_id.is_empty() {
                    generate_id()
                } else {
                    configured_id.to_string()
                };
                let m = NodeMetadata {
                    format: FORMAT,
                    node_id,
                    name: String::new(),
                    backend: String::new(),
                    capacity_bytes: 0,
                    created_at: now.clone(),
                    updated_at: now,
                    version: env!("CARGO_PKG_VERSION").into(),
                    grpc_address: String::new(),
                    peer_id: String::new(),
                };
                m.write(data_dir)?;
                Ok(m)
            }
        }
    }

    /// Writes the file atomically (temp file, fsync, rename).
    pub fn write(&self, data_dir: &Path) -> Result<()> {
        let path = Self::path(data_dir);
        let tmp = data_dir.join(".metadata.json.tmp");
        let body = serde_json::to_vec_pretty(self).expect("metadata serializes");
        let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io("cannot write", &tmp, e))?;
        f.write_all(&body)
            .and_then(|_| f.write_all(b"\n"))
            .and_then(|_| f.sync_all())
            .map_err(|e| Error::io("cannot write", &tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io("cannot rename into", &path, e))?;
        Ok(())
    }

    /// Refreshes the fields that change between starts.
    pub fn refresh(&mut self, name: &str, backend: &str, capacity: u64, grpc: &str, peer: &str) {
        self.name = name.to_string();
        self.backend = backend.to_string();
        self.capacity_bytes = capacity;
        self.grpc_address = grpc.to_string();
        self.peer_id = peer.to_string();
        self.version = env!("CARGO_PKG_VERSION").into();
        self.updated_at = rfc3339(SystemTime::now());
    }
}

/// `node-` and 12 hex characters, unique enough for a fleet.
fn generate_id() -> String {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let mut h = blake3::Hasher::new();
    h.update(&t.to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    if let Ok(host) = std::fs::read("/proc/sys/kernel/hostname") {
        h.update(&host);
    }
    if let Ok(boot) = std::fs::read("/proc/sys/kernel/random/uuid") {
        h.update(&boot);
    }
    format!("node-{}", &h.finalize().to_hex()[..12])
}

/// `YYYY-MM-DDTHH:MM:SSZ` (UTC).
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The node's identity key file (mode 0600): the 32-byte Ed25519 seed whose public key the
/// gateway binds the node id to at the first registration. Losing it means joining again
/// under a new node id.
pub const KEY_FILE: &str = "node.key";

/// Loads the node's identity key, creating it on first start.
pub fn load_or_create_key(data_dir: &Path) -> Result<cyxcloud_core::identity::NodeKey> {
    use cyxcloud_core::identity::NodeKey;
    let path = data_dir.join(KEY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let seed: [u8; 32] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| Error::BadMetadata {
                    path: path.clone(),
                    reason: format!("a node key is 32 bytes, this file has {}", bytes.len()),
                })?;
            Ok(NodeKey::from_seed(seed))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = NodeKey::generate().map_err(|e| Error::BadMetadata {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            crate::login::write_private(&path, &*key.seed())?;
            tracing::info!(path = %path.display(), public_key = %hex::encode(key.public_key()), "created the node identity key");
            Ok(key)
        }
        Err(e) => Err(Error::io("cannot read", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_734_861_600)),
            "2024-12-22T10:00:00Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
    }

    #[test]
    fn the_node_key_is_made_once_private_and_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let k = load_or_create_key(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            load_or_create_key(dir.path()).unwrap().public_key(),
            k.public_key()
        );
        std::fs::write(dir.path().join(KEY_FILE), b"short").unwrap();
        let e = load_or_create_key(dir.path()).unwrap_err().to_string();
        assert!(e.contains("32 bytes"), "{e}");
    }

    #[test]
    fn data_dir_is_claimed_once_and_foreign_ids_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let m = NodeMetadata::claim(dir.path(), "").unwrap();
        assert!(m.node_id.starts_with("node-") && valid_id(&m.node_id));
        assert_eq!(
            NodeMetadata::claim(dir.path(), "").unwrap().node_id,
            m.node_id
        );
        assert_eq!(
            NodeMetadata::claim(dir.path(), &m.node_id).unwrap().node_id,
            m.node_id
        );
        match NodeMetadata::claim(dir.path(), "node-other") {
            Err(Error::ForeignDataDir {
                owner, configured, ..
            }) => {
                assert_eq!(owner, m.node_id);
                assert_eq!(configured, "node-other");
            }
            other => panic!("expected ForeignDataDir, got {other:?}"),
        }
        std::fs::write(dir.path().join(FILE), "{not json").unwrap();
        assert!(matches!(
            NodeMetadata::claim(dir.path(), ""),
            Err(Error::BadMetadata { .. })
        ));
        let fresh = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(fresh.path().join("rocksdb")).unwrap();
        std::fs::write(fresh.path().join("rocksdb/CURRENT"), "MANIFEST-000001\n").unwrap();
        assert!(matches!(
            NodeMetadata::claim(fresh.path(), "node-1"),
            Err(Error::BadMetadata { .. })
        ));
    }
}
