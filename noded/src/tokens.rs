//! The node's trust in gateway-signed capability tokens (`cyxcloud_core::token`): the public
//! keys it accepts (from config and from each registration) and the one check every shard
//! operation goes through.

use std::sync::RwLock;
use std::time::{SystemTime, UNIX_EPOCH};

use cyxcloud_core::Hash;
use cyxcloud_core::token::{Capability, Op, TokenVerifier};

use crate::error::{Error, Result};

/// Trusted keys plus this node's id.
#[derive(Debug)]
pub struct Tokens {
    node_id: String,
    verifier: RwLock<TokenVerifier>,
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

impl Tokens {
    pub fn new(node_id: &str) -> Self {
        Tokens {
            node_id: node_id.to_string(),
            verifier: RwLock::new(TokenVerifier::new()),
        }
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Trusts `key` (32 bytes, a valid Ed25519 point).
    pub fn trust(&self, key: &[u8]) -> Result<()> {
        self.verifier
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .add_key(key)
            .map_err(Error::from)
    }

    pub fn has_keys(&self) -> bool {
        self.verifier
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .has_keys()
    }

    /// Verifies `token` and checks that it grants `op` on every one of `hashes` on this node.
    pub fn check(&self, token: &[u8], op: Op, hashes: &[Hash]) -> Result<Capability> {
        let v = self.verifier.read().unwrap_or_else(|e| e.into_inner());
        if !v.has_keys() {
            return Err(Error::NoTrustedKeys);
        }
        let cap = v.verify(token, unix_now())?;
        // Even with no shard named (listing, stats), the token must be for this node and op.
        if cap.node_id != self.node_id {
            return Err(cyxcloud_core::token::TokenError::WrongNode {
                token_node: cap.node_id,
                this_node: self.node_id.clone(),
            }
            .into());
        }
        if cap.ops & op as u8 == 0 {
            return Err(cyxcloud_core::token::TokenError::OpNotGranted { op }.into());
        }
        for h in hashes {
            cap.check(op, h, &self.node_id)?;
        }
        Ok(cap)
    }
}
