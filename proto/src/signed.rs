//! Signing and checking node registrations and heartbeats with the node's key
//! ([`cyxcloud_core::identity`]). The signature covers the prost encoding of the message with
//! its `signature` field empty; both sides use this crate's one definition of the message, so
//! the encoding they sign and check is the same.

use cyxcloud_core::identity::{self, IdentityError, NodeKey};
use prost::Message;

use crate::v1;

/// A message a node signs.
pub trait Signed: Message + Clone + Sized {
    const DOMAIN: &'static str;
    fn signature_mut(&mut self) -> &mut Vec<u8>;
    fn signed_at_mut(&mut self) -> &mut u64;

    /// The bytes the signature covers.
    fn signed_bytes(&self) -> Vec<u8> {
        let mut m = self.clone();
        m.signature_mut().clear();
        m.encode_to_vec()
    }

    /// Stamps the message with `at_ms` and signs it with `key`.
    fn sign(&mut self, key: &NodeKey, at_ms: u64) {
        *self.signed_at_mut() = at_ms;
        let sig = key.sign(Self::DOMAIN, &self.signed_bytes());
        *self.signature_mut() = sig.to_vec();
    }

    /// Checks the signature against `public_key`.
    fn verify(&self, public_key: &[u8]) -> Result<(), IdentityError> {
        let mut m = self.clone();
        let sig = std::mem::take(m.signature_mut());
        identity::verify(public_key, Self::DOMAIN, &m.encode_to_vec(), &sig)
    }
}

impl Signed for v1::RegisterRequest {
    const DOMAIN: &'static str = identity::REGISTER;
    fn signature_mut(&mut self) -> &mut Vec<u8> {
        &mut self.signature
    }
    fn signed_at_mut(&mut self) -> &mut u64 {
        &mut self.signed_at_ms
    }
}

impl Signed for v1::HeartbeatRequest {
    const DOMAIN: &'static str = identity::HEARTBEAT;
    fn signature_mut(&mut self) -> &mut Vec<u8> {
        &mut self.signature
    }
    fn signed_at_mut(&mut self) -> &mut u64 {
        &mut self.signed_at_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_altered_or_foreign_heartbeat_is_refused() {
        let key = NodeKey::generate().unwrap();
        let mut hb = v1::HeartbeatRequest {
            node_id: "n1".into(),
            used_bytes: 10,
            ..Default::default()
        };
        hb.sign(&key, 1000);
        assert_eq!(hb.verify(&key.public_key()), Ok(()));
        let mut altered = hb.clone();
        altered.used_bytes = 11;
        assert_eq!(
            altered.verify(&key.public_key()),
            Err(IdentityError::BadSignature)
        );
        let mut restamped = hb.clone();
        restamped.signed_at_ms = 2000;
        assert_eq!(
            restamped.verify(&key.public_key()),
            Err(IdentityError::BadSignature)
        );
        let other = NodeKey::generate().unwrap();
        assert_eq!(
            hb.verify(&other.public_key()),
            Err(IdentityError::BadSignature)
        );
        // A registration signature never passes as a heartbeat's.
        let mut reg = v1::RegisterRequest {
            node_id: "n1".into(),
            ..Default::default()
        };
        reg.sign(&key, 1000);
        let mut as_hb = v1::HeartbeatRequest {
            node_id: "n1".into(),
            signed_at_ms: 1000,
            ..Default::default()
        };
        as_hb.signature = reg.signature.clone();
        assert!(as_hb.verify(&key.public_key()).is_err());
    }
}
