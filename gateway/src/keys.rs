//! The cluster key: 32 random bytes in a file (mode 0600) from which every gateway secret is
//! derived (blake3 `derive_key` with a context per use): the Ed25519 seed that signs node
//! capability tokens, the MAC key of bearer tokens, the HS256 key of operator JWTs and the
//! AES-256-GCM key that encrypts access-key secrets in the database.
//!
//! Gateways that share a database must share the key file (tokens signed by one are accepted
//! by the others and by every node). The database records the key's fingerprint at first start
//! and a gateway with another key refuses to start on it.

use std::io::Write;
use std::path::Path;

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use cyxcloud_core::token::TokenSigner;
use zeroize::Zeroizing;

use crate::db::{Db, args};
use crate::error::{Error, Result};

pub struct ClusterKeys {
    master: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for ClusterKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterKeys({})", self.fingerprint())
    }
}

impl ClusterKeys {
    pub fn from_bytes(master: [u8; 32]) -> Self {
        ClusterKeys {
            master: Zeroizing::new(master),
        }
    }

    /// Reads the key file, creating it (mode 0600) when missing. Refuses a file readable by
    /// others or of the wrong size.
    pub fn load_or_create(path: &Path) -> Result<Self> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        match std::fs::read(path) {
            Ok(bytes) => {
                let mode = std::fs::metadata(path)
                    .map_err(|e| Error::io(path, e))?
                    .permissions()
                    .mode();
                if mode & 0o077 != 0 {
                    return Err(Error::Config(format!(
                        "cluster key file {} is accessible by other users (mode {:o}): chmod 600 it",
                        path.display(),
                        mode & 0o777
                    )));
                }
                let bytes = Zeroizing::new(bytes);
                let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                    Error::Config(format!(
                        "cluster key file {} must hold exactly 32 bytes",
                        path.display()
                    ))
                })?;
                Ok(Self::from_bytes(key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = Zeroizing::new([0u8; 32]);
                getrandom::fill(&mut *key)
                    .map_err(|e| Error::Internal(format!("no OS randomness: {e}")))?;
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
                }
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|e| Error::io(path, e))?;
                f.write_all(&*key).map_err(|e| Error::io(path, e))?;
                f.sync_all().map_err(|e| Error::io(path, e))?;
                Ok(Self::from_bytes(*key))
            }
            Err(e) => Err(Error::io(path, e)),
        }
    }

    fn derive(&self, context: &str) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(blake3::derive_key(context, &*self.master))
    }

    /// Public identifier of the key (safe to log and store).
    pub fn fingerprint(&self) -> String {
        hex::encode(&self.derive("cyxcloud gateway cluster key fingerprint v1")[..12])
    }

    pub fn token_signer(&self) -> TokenSigner {
        TokenSigner::from_seed(*self.derive("cyxcloud gateway node token signing seed v1"))
    }

    pub fn bearer_mac_key(&self) -> Zeroizing<[u8; 32]> {
        self.derive("cyxcloud gateway bearer token mac v1")
    }

    pub fn jwt_key(&self) -> Zeroizing<[u8; 32]> {
        self.derive("cyxcloud gateway operator jwt hs256 v1")
    }

    fn secret_cipher(&self) -> Aes256Gcm {
        let k = self.derive("cyxcloud gateway access key secret encryption v1");
        Aes256Gcm::new(&(*k).into())
    }

    /// Encrypts an access-key secret: `nonce(12) || ciphertext || tag(16)`, bound to the key id.
    pub fn seal_secret(&self, access_key: &str, secret: &str) -> Result<Vec<u8>> {
        let mut nonce = Nonce::default();
        getrandom::fill(nonce.as_mut_slice())
            .map_err(|e| Error::Internal(format!("no OS randomness: {e}")))?;
        let mut buf = secret.as_bytes().to_vec();
        let tag = self
            .secret_cipher()
            .encrypt_inout_detached(&nonce, access_key.as_bytes(), buf.as_mut_slice().into())
            .map_err(|_| Error::Internal("secret encryption failed".into()))?;
        let mut out = nonce.as_slice().to_vec();
        out.extend_from_slice(&buf);
        out.extend_from_slice(tag.as_slice());
        Ok(out)
    }

    pub fn open_secret(&self, access_key: &str, sealed: &[u8]) -> Result<Zeroizing<String>> {
        if sealed.len() < 12 + 16 {
            return Err(Error::Corrupt("sealed secret too short".into()));
        }
        let (nonce, rest) = sealed.split_at(12);
        let (ct, tag) = rest.split_at(rest.len() - 16);
        let nonce = Nonce::try_from(nonce).map_err(|_| Error::Corrupt("nonce".into()))?;
        let tag = Tag::try_from(tag).map_err(|_| Error::Corrupt("tag".into()))?;
        let mut buf = Zeroizing::new(ct.to_vec());
        self.secret_cipher()
            .decrypt_inout_detached(
                &nonce,
                access_key.as_bytes(),
                buf.as_mut_slice().into(),
                &tag,
            )
            .map_err(|_| {
                Error::Config(
                    "an access-key secret does not decrypt: this gateway's cluster key differs \
                     from the one that stored it"
                        .into(),
                )
            })?;
        String::from_utf8(buf.to_vec())
            .map(Zeroizing::new)
            .map_err(|_| Error::Corrupt("secret is not UTF-8".into()))
    }

    /// Records this key's fingerprint in a new database, or checks it against the recorded one.
    pub async fn bind_to(&self, db: &Db) -> Result<()> {
        let fp = self.fingerprint();
        crate::db::write_tx!(db, tx => {
            let row = tx
                .opt("SELECT value FROM meta WHERE key = 'cluster_key'", args![])
                .await?;
            match row {
                Some(r) => {
                    let stored = r.text(0)?;
                    if stored != fp {
                        return Err(Error::Config(format!(
                            "the metadata store belongs to cluster key {stored}, but this \
                             gateway's key is {fp}: give every gateway of a database the same \
                             cluster key file"
                        )));
                    }
                }
                None => {
                    tx.exec(
                        "INSERT INTO meta (key, value) VALUES ('cluster_key', $1)",
                        args![fp.as_str()],
                    )
                    .await?;
                }
            }
            Ok(())
        });
        Ok(())
    }
}

/// A random token of `n` bytes, URL-safe base64 without padding.
pub fn random_b64(n: usize) -> Result<String> {
    use base64::Engine;
    let mut b = Zeroizing::new(vec![0u8; n]);
    getrandom::fill(&mut b).map_err(|e| Error::Internal(format!("no OS randomness: {e}")))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&*b))
}

/// A random identifier of `n` characters from `[A-Z0-9]`.
pub fn random_id(n: usize) -> Result<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).map_err(|e| Error::Internal(format!("no OS randomness: {e}")))?;
    Ok(b.iter()
        .map(|x| ALPHABET[*x as usize % ALPHABET.len()] as char)
        .collect())
}

/// HMAC-SHA256 (RFC 2104), for HS256 JWTs.
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let ih = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(ih);
    outer.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn secrets_round_trip_and_bind_to_their_key_id() {
        let k = ClusterKeys::from_bytes([7; 32]);
        let sealed = k.seal_secret("AK", "s3cr3t").unwrap();
        assert_eq!(k.open_secret("AK", &sealed).unwrap().as_str(), "s3cr3t");
        assert!(k.open_secret("OTHER", &sealed).is_err());
        assert!(
            ClusterKeys::from_bytes([8; 32])
                .open_secret("AK", &sealed)
                .is_err()
        );
        assert!(!String::from_utf8_lossy(&sealed).contains("s3cr3t"));
    }

    #[test]
    fn key_file_is_created_private_and_reloaded() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cluster.key");
        let a = ClusterKeys::load_or_create(&p).unwrap();
        let b = ClusterKeys::load_or_create(&p).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(ClusterKeys::load_or_create(&p).is_err());
    }
}
