//! Client-side encryption of chunks: AES-256-GCM under a per-chunk key.
//!
//! # Scheme
//!
//! * A user holds one 256-bit **master key**, read from a key file (32 raw bytes or 64 hex
//!   characters, mode 0600) or derived from a passphrase with Argon2id (64 MiB, 3 passes).
//! * An encrypted chunk is named by a **keyed blake3** of its plaintext, with a key derived from
//!   the master key (`HKDF-SHA256(master, info = "cyxcloud/v1/chunk-id")`). Nodes and the gateway
//!   only ever see this id, never a plain hash of the plaintext, so they cannot confirm guesses
//!   of a file's content.
//! * Each chunk is sealed with its own key `HKDF-SHA256(master, info = "cyxcloud/v1/chunk-key" ||
//!   chunk id)` and the associated data `"cyxcloud/v1" || chunk id`, so a ciphertext cannot be
//!   replayed under another chunk's id.
//!
//! # Why the nonce is fixed, and why that never reuses a nonce
//!
//! AES-GCM breaks when one (key, nonce) pair encrypts two *different* plaintexts. Here the chunk
//! key is a function of the chunk id, and the chunk id is a (keyed, collision-resistant) hash of
//! the plaintext: a given chunk key is therefore only ever used on one plaintext. Encrypting that
//! same plaintext again yields the same ciphertext, which is exactly what we want (retries are
//! idempotent and identical chunks of one user deduplicate), and two different plaintexts would
//! need a blake3 collision to share a key. So each (key, nonce) pair seals exactly one message,
//! and the nonce can be the constant zero without ever being reused on different data. Keys of
//! different users never collide because their master keys differ.
//!
//! Any modification of the ciphertext, the tag, or the chunk id is reported as
//! [`CryptoError::Tampered`]; decryption never returns unauthenticated bytes.

use std::path::Path;

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

use crate::error::CryptoError;
use crate::hash::Hash;

/// Length of the AES-GCM authentication tag appended to each ciphertext.
pub const TAG_LEN: usize = 16;

const INFO_CHUNK_ID: &[u8] = b"cyxcloud/v1/chunk-id";
const INFO_CHUNK_KEY: &[u8] = b"cyxcloud/v1/chunk-key";
const INFO_AT_REST: &[u8] = b"cyxcloud/v1/at-rest";
const AAD_PREFIX: &[u8] = b"cyxcloud/v1";

/// Argon2id parameters for passphrase-derived keys (memory KiB, passes, lanes).
pub const ARGON2_PARAMS: (u32, u32, u32) = (64 * 1024, 3, 1);

/// A user's 256-bit master key. Zeroed on drop; never printed.
#[derive(Clone)]
pub struct MasterKey {
    key: Zeroizing<[u8; 32]>,
    id_key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        let mut id_key = [0u8; 32];
        hkdf_expand(&bytes, INFO_CHUNK_ID, &[], &mut id_key);
        MasterKey {
            key: Zeroizing::new(bytes),
            id_key: Zeroizing::new(id_key),
        }
    }

    /// A fresh random key from the OS random source.
    pub fn generate() -> Result<Self, CryptoError> {
        let mut b = [0u8; 32];
        getrandom::fill(&mut b).map_err(|_| CryptoError::Random)?;
        let k = Self::from_bytes(b);
        b.zeroize();
        Ok(k)
    }

    /// Derives a key from a passphrase with Argon2id. `salt` must be stable for the user (the
    /// client uses the access key id) and at least 8 bytes.
    pub fn from_passphrase(passphrase: &str, salt: &[u8]) -> Result<Self, CryptoError> {
        let (m, t, p) = ARGON2_PARAMS;
        let params =
            argon2::Params::new(m, t, p, Some(32)).map_err(|e| CryptoError::Kdf(e.to_string()))?;
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut out = [0u8; 32];
        argon
            .hash_password_into(passphrase.as_bytes(), salt, &mut out)
            .map_err(|e| CryptoError::Kdf(e.to_string()))?;
        let k = Self::from_bytes(out);
        out.zeroize();
        Ok(k)
    }

    /// Parses key-file contents: 32 raw bytes, or 64 hex characters (surrounding whitespace
    /// ignored).
    pub fn from_key_file_bytes(contents: &[u8]) -> Result<Self, CryptoError> {
        if contents.len() == 32 {
            let mut b = [0u8; 32];
            b.copy_from_slice(contents);
            return Ok(Self::from_bytes(b));
        }
        let text = std::str::from_utf8(contents).map(str::trim).unwrap_or("");
        let mut b = [0u8; 32];
        if text.len() == 64 && hex::decode_to_slice(text, &mut b).is_ok() {
            return Ok(Self::from_bytes(b));
        }
        Err(CryptoError::BadKeyFile(contents.len()))
    }

    /// Reads a key file, refusing one that group or others can read.
    pub fn load(path: &Path) -> Result<Self, CryptoError> {
        let io = |e: std::io::Error| CryptoError::KeyFileIo {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(CryptoError::KeyFilePermissions {
                    path: path.display().to_string(),
                    mode,
                });
            }
        }
        let contents = Zeroizing::new(std::fs::read(path).map_err(io)?);
        Self::from_key_file_bytes(&contents)
    }

    /// Writes the key as hex to a new file with mode 0600 (refuses to overwrite).
    pub fn save_new(&self, path: &Path) -> Result<(), CryptoError> {
        use std::io::Write;
        let io = |e: std::io::Error| CryptoError::KeyFileIo {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(path).map_err(io)?;
        let text = Zeroizing::new(hex::encode(*self.key));
        f.write_all(text.as_bytes()).map_err(io)?;
        f.write_all(b"\n").map_err(io)?;
        f.sync_all().map_err(io)
    }

    /// The id of an encrypted chunk: blake3 keyed with a key derived from the master key.
    pub fn chunk_id(&self, plaintext: &[u8]) -> Hash {
        Hash(*blake3::keyed_hash(&self.id_key, plaintext).as_bytes())
    }

    fn cipher_for(&self, info: &[u8], id: &Hash) -> Aes256Gcm {
        let mut k = Zeroizing::new([0u8; 32]);
        hkdf_expand(&*self.key, info, id.as_bytes(), &mut k);
        Aes256Gcm::new(&(*k).into())
    }

    /// Encrypts `buf` in place under the key of chunk `id` and appends the tag.
    pub fn seal_chunk(&self, id: &Hash, buf: &mut Vec<u8>) -> Result<(), CryptoError> {
        seal(&self.cipher_for(INFO_CHUNK_KEY, id), id, buf)
    }

    /// Verifies and decrypts `buf` (ciphertext || tag) in place; on success `buf` holds the
    /// plaintext. On failure `buf` is cleared: unauthenticated bytes never escape.
    pub fn open_chunk(&self, id: &Hash, buf: &mut Vec<u8>) -> Result<(), CryptoError> {
        open(&self.cipher_for(INFO_CHUNK_KEY, id), id, buf)
    }
}

/// A node's key for optional encryption of shards at rest (record flag `encrypted`). Same
/// construction as chunk keys: the per-record key is derived from the shard hash, so each key
/// seals exactly one plaintext.
#[derive(Clone)]
pub struct AtRestKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for AtRestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AtRestKey(<redacted>)")
    }
}

impl AtRestKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        AtRestKey(Zeroizing::new(bytes))
    }

    fn cipher_for(&self, id: &Hash) -> Aes256Gcm {
        let mut k = Zeroizing::new([0u8; 32]);
        hkdf_expand(&*self.0, INFO_AT_REST, id.as_bytes(), &mut k);
        Aes256Gcm::new(&(*k).into())
    }

    pub fn seal(&self, id: &Hash, buf: &mut Vec<u8>) -> Result<(), CryptoError> {
        seal(&self.cipher_for(id), id, buf)
    }

    pub fn open(&self, id: &Hash, buf: &mut Vec<u8>) -> Result<(), CryptoError> {
        open(&self.cipher_for(id), id, buf)
    }
}

fn hkdf_expand(ikm: &[u8], info: &[u8], info2: &[u8], out: &mut [u8; 32]) {
    let hk = Hkdf::<Sha256>::new(Some(b"cyxcloud-hkdf-salt-v1"), ikm);
    hk.expand_multi_info(&[info, info2], out)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
}

fn aad(id: &Hash) -> [u8; 43] {
    let mut a = [0u8; 43];
    a[..11].copy_from_slice(AAD_PREFIX);
    a[11..].copy_from_slice(id.as_bytes());
    a
}

fn seal(cipher: &Aes256Gcm, id: &Hash, buf: &mut Vec<u8>) -> Result<(), CryptoError> {
    let nonce = Nonce::default();
    let tag = cipher
        .encrypt_inout_detached(&nonce, &aad(id), buf.as_mut_slice().into())
        .map_err(|_| CryptoError::Tampered)?;
    buf.extend_from_slice(tag.as_slice());
    Ok(())
}

fn open(cipher: &Aes256Gcm, id: &Hash, buf: &mut Vec<u8>) -> Result<(), CryptoError> {
    if buf.len() < TAG_LEN {
        let n = buf.len();
        buf.clear();
        return Err(CryptoError::CiphertextTooShort(n));
    }
    let body = buf.len() - TAG_LEN;
    let tag = Tag::try_from(&buf[body..]).map_err(|_| CryptoError::Tampered)?;
    buf.truncate(body);
    let nonce = Nonce::default();
    if cipher
        .decrypt_inout_detached(&nonce, &aad(id), buf.as_mut_slice().into(), &tag)
        .is_err()
    {
        buf.zeroize();
        buf.clear();
        return Err(CryptoError::Tampered);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_tamper_detection() {
        let k = MasterKey::from_bytes([7; 32]);
        let plain = b"hello, encrypted world".to_vec();
        let id = k.chunk_id(&plain);
        assert_ne!(
            id,
            Hash::of(&plain),
            "encrypted chunk ids must not be plain hashes"
        );
        let mut buf = plain.clone();
        k.seal_chunk(&id, &mut buf).unwrap();
        assert_eq!(buf.len(), plain.len() + TAG_LEN);
        assert_ne!(&buf[..plain.len()], &plain[..]);
        let sealed = buf.clone();
        k.open_chunk(&id, &mut buf).unwrap();
        assert_eq!(buf, plain);

        for i in 0..sealed.len() {
            let mut t = sealed.clone();
            t[i] ^= 0x01;
            assert_eq!(
                k.open_chunk(&id, &mut t),
                Err(CryptoError::Tampered),
                "byte {i}"
            );
            assert!(t.is_empty());
        }
        let other = MasterKey::from_bytes([8; 32]);
        assert_eq!(
            other.open_chunk(&id, &mut sealed.clone()),
            Err(CryptoError::Tampered)
        );
        let wrong_id = Hash::of(b"another");
        assert_eq!(
            k.open_chunk(&wrong_id, &mut sealed.clone()),
            Err(CryptoError::Tampered)
        );
        assert_eq!(
            k.open_chunk(&id, &mut vec![1, 2, 3]),
            Err(CryptoError::CiphertextTooShort(3))
        );
    }

    #[test]
    fn sealing_is_deterministic_per_chunk() {
        let k = MasterKey::from_bytes([1; 32]);
        let id = k.chunk_id(b"abc");
        let (mut a, mut b) = (b"abc".to_vec(), b"abc".to_vec());
        k.seal_chunk(&id, &mut a).unwrap();
        k.seal_chunk(&id, &mut b).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn key_file_formats() {
        let hex_text = format!("{}\n", "ab".repeat(32));
        let a = MasterKey::from_key_file_bytes(hex_text.as_bytes()).unwrap();
        let b = MasterKey::from_key_file_bytes(&[0xab; 32]).unwrap();
        assert_eq!(a.chunk_id(b"x"), b.chunk_id(b"x"));
        assert_eq!(
            MasterKey::from_key_file_bytes(b"short").unwrap_err(),
            CryptoError::BadKeyFile(5)
        );
    }

    #[test]
    fn key_file_save_load_enforces_permissions() {
        let dir = std::env::temp_dir().join(format!("cyx-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("master.key");
        let _ = std::fs::remove_file(&path);
        let k = MasterKey::generate().unwrap();
        k.save_new(&path).unwrap();
        assert!(k.save_new(&path).is_err(), "never overwrite a key");
        let loaded = MasterKey::load(&path).unwrap();
        assert_eq!(loaded.chunk_id(b"z"), k.chunk_id(b"z"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert!(matches!(
                MasterKey::load(&path),
                Err(CryptoError::KeyFilePermissions { .. })
            ));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn passphrase_derivation_is_stable_and_salted() {
        let a = MasterKey::from_passphrase("correct horse", b"user-0001").unwrap();
        let b = MasterKey::from_passphrase("correct horse", b"user-0001").unwrap();
        let c = MasterKey::from_passphrase("correct horse", b"user-0002").unwrap();
        assert_eq!(a.chunk_id(b"q"), b.chunk_id(b"q"));
        assert_ne!(a.chunk_id(b"q"), c.chunk_id(b"q"));
    }
}
