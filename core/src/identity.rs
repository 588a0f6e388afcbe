//! Node identity: each storage node holds an Ed25519 key pair made on its first start; the
//! gateway binds the node id to the public key at the first registration, and every later
//! registration and heartbeat must carry a signature by that key.
//!
//! A signature covers a domain string (so a heartbeat signature can never pass as a
//! registration, nor anything signed elsewhere with the key) and the message bytes:
//!
//! ```text
//! signed bytes = domain | 0x00 | message
//! ```

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::error::CryptoError;

/// Domain of a node's registration.
pub const REGISTER: &str = "cyxcloud node register v1";
/// Domain of a node's heartbeat.
pub const HEARTBEAT: &str = "cyxcloud node heartbeat v1";

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("the node public key is not a 32-byte Ed25519 point")]
    BadPublicKey,
    #[error("the signature is not 64 bytes")]
    MalformedSignature,
    #[error(
        "the signature does not verify with the node's key (forged, altered or signed by another key)"
    )]
    BadSignature,
}

/// A node's secret key.
#[derive(Clone)]
pub struct NodeKey {
    key: SigningKey,
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeKey(public {})", hex::encode(self.public_key()))
    }
}

fn signed_bytes(domain: &str, message: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(domain.len() + 1 + message.len());
    v.extend_from_slice(domain.as_bytes());
    v.push(0);
    v.extend_from_slice(message);
    v
}

impl NodeKey {
    pub fn from_seed(seed: [u8; 32]) -> Self {
        NodeKey {
            key: SigningKey::from_bytes(&seed),
        }
    }

    pub fn generate() -> Result<Self, CryptoError> {
        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
        getrandom::fill(&mut *seed).map_err(|_| CryptoError::Random)?;
        Ok(Self::from_seed(*seed))
    }

    /// The 32-byte secret seed (to persist the key).
    pub fn seed(&self) -> zeroize::Zeroizing<[u8; 32]> {
        zeroize::Zeroizing::new(self.key.to_bytes())
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// Signs `message` under `domain`.
    pub fn sign(&self, domain: &str, message: &[u8]) -> [u8; 64] {
        self.key.sign(&signed_bytes(domain, message)).to_bytes()
    }
}

/// Checks that `signature` is `public`'s signature of `message` under `domain`.
pub fn verify(
    public: &[u8],
    domain: &str,
    message: &[u8],
    signature: &[u8],
) -> Result<(), IdentityError> {
    let public: [u8; 32] = public.try_into().map_err(|_| IdentityError::BadPublicKey)?;
    let key = VerifyingKey::from_bytes(&public).map_err(|_| IdentityError::BadPublicKey)?;
    let sig: [u8; 64] = signature
        .try_into()
        .map_err(|_| IdentityError::MalformedSignature)?;
    key.verify_strict(&signed_bytes(domain, message), &Signature::from_bytes(&sig))
        .map_err(|_| IdentityError::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_with_its_key_domain_and_message() {
        let k = NodeKey::generate().unwrap();
        let other = NodeKey::generate().unwrap();
        let sig = k.sign(REGISTER, b"node-1");
        assert_eq!(verify(&k.public_key(), REGISTER, b"node-1", &sig), Ok(()));
        assert_eq!(
            verify(&other.public_key(), REGISTER, b"node-1", &sig),
            Err(IdentityError::BadSignature)
        );
        assert_eq!(
            verify(&k.public_key(), HEARTBEAT, b"node-1", &sig),
            Err(IdentityError::BadSignature)
        );
        assert_eq!(
            verify(&k.public_key(), REGISTER, b"node-2", &sig),
            Err(IdentityError::BadSignature)
        );
        assert_eq!(
            verify(&k.public_key()[..31], REGISTER, b"node-1", &sig),
            Err(IdentityError::BadPublicKey)
        );
        assert_eq!(
            verify(&k.public_key(), REGISTER, b"node-1", &sig[..63]),
            Err(IdentityError::MalformedSignature)
        );
    }

    #[test]
    fn a_key_survives_its_seed() {
        let k = NodeKey::generate().unwrap();
        let again = NodeKey::from_seed(*k.seed());
        assert_eq!(k.public_key(), again.public_key());
    }
}
