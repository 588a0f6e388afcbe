//! The user's master key for client-side encryption: a key file (0600, created on first use)
//! or a passphrase (Argon2id, salted with the access key). Without it nobody, the gateway
//! included, can read encrypted content.

use std::path::{Path, PathBuf};

use cyxcloud_core::MasterKey;
use cyxcloud_core::error::CryptoError;

/// Where a master key comes from.
#[derive(Debug, Clone)]
pub enum KeySource {
    File(PathBuf),
    Passphrase { passphrase: String, salt: String },
}

/// Default key file: `$XDG_CONFIG_HOME/cyxcloud/master.key` or `~/.config/cyxcloud/master.key`.
pub fn default_key_file() -> PathBuf {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("cyxcloud").join("master.key")
}

/// Loads the key; with `create`, a missing key file is generated (mode 0600).
pub fn load(source: &KeySource, create: bool) -> Result<MasterKey, CryptoError> {
    match source {
        KeySource::Passphrase { passphrase, salt } => {
            let salt = format!("cyxcloud-user:{salt}");
            MasterKey::from_passphrase(passphrase, salt.as_bytes())
        }
        KeySource::File(path) => {
            if create && !path.exists() {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| CryptoError::KeyFileIo {
                        path: dir.display().to_string(),
                        reason: e.to_string(),
                    })?;
                }
                let key = MasterKey::generate()?;
                key.save_new(path)?;
                return Ok(key);
            }
            MasterKey::load(path)
        }
    }
}
