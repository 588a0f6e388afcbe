//! Signed capability tokens: who may put, get or delete which shards on which node until when.
//!
//! The gateway signs tokens with its Ed25519 key; nodes verify them with the gateway's public
//! key before touching a shard. A client can therefore only fill nodes with shards of a
//! placement the gateway handed out, and only the gateway or the rebalancer can delete.
//!
//! Wire format (big-endian), signed as a whole:
//!
//! ```text
//! "CYXT" | version u8 (1) | role u8 | ops u8 | expires_at u64 (unix seconds) |
//! node_id_len u16 | node_id | scope u8 (0 = listed shards, 1 = any shard) |
//! count u32 | count × 32-byte shard hash | 64-byte Ed25519 signature
//! ```

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::hash::Hash;

const MAGIC: &[u8; 4] = b"CYXT";
const VERSION: u8 = 1;
/// A token may list at most this many shards (a token per node per write or read).
pub const MAX_SHARDS: usize = 1 << 16;

/// Operations a token can grant (bit set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    Put = 1,
    Get = 2,
    Delete = 4,
}

/// Who the token was issued to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    /// A client (CLI, mountd, syncd, the S3 handlers) acting for a user.
    Client = 1,
    /// The gateway itself (deletes of released chunks, audits).
    Gateway = 2,
    /// The rebalancer (repair, drain, garbage collection).
    Rebalancer = 3,
}

impl Role {
    fn from_u8(v: u8) -> Option<Role> {
        match v {
            1 => Some(Role::Client),
            2 => Some(Role::Gateway),
            3 => Some(Role::Rebalancer),
            _ => None,
        }
    }
}

/// Which shards a token covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Shards(Vec<Hash>),
    /// Any shard on the node: only for gateway and rebalancer roles.
    Any,
}

/// The content of a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capability {
    pub role: Role,
    /// Bit set of [`Op`].
    pub ops: u8,
    pub node_id: String,
    pub expires_at: u64,
    pub scope: Scope,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is malformed: {0}")]
    Malformed(&'static str),
    #[error("token signature is invalid (forged, altered, or signed by an unknown key)")]
    BadSignature,
    #[error("token expired at {expires_at} (now {now})")]
    Expired { expires_at: u64, now: u64 },
    #[error("token is for node {token_node:?}, not this node {this_node:?}")]
    WrongNode {
        token_node: String,
        this_node: String,
    },
    #[error("token does not grant {op:?}")]
    OpNotGranted { op: Op },
    #[error("token does not cover shard {0}")]
    ShardNotCovered(Hash),
    #[error("a {role:?} token may not {op:?}")]
    RoleNotAllowed { role: Role, op: Op },
}

impl Capability {
    /// Checks that this capability lets `node_id` perform `op` on `shard`.
    pub fn check(&self, op: Op, shard: &Hash, node_id: &str) -> Result<(), TokenError> {
        if self.node_id != node_id {
            return Err(TokenError::WrongNode {
                token_node: self.node_id.clone(),
                this_node: node_id.to_string(),
            });
        }
        if self.ops & op as u8 == 0 {
            return Err(TokenError::OpNotGranted { op });
        }
        if op == Op::Delete && self.role == Role::Client {
            return Err(TokenError::RoleNotAllowed {
                role: self.role,
                op,
            });
        }
        match &self.scope {
            Scope::Any => Ok(()),
            Scope::Shards(list) if list.contains(shard) => Ok(()),
            Scope::Shards(_) => Err(TokenError::ShardNotCovered(*shard)),
        }
    }

    fn encode_body(&self) -> Vec<u8> {
        let shards: &[Hash] = match &self.scope {
            Scope::Shards(s) => s,
            Scope::Any => &[],
        };
        let mut out = Vec::with_capacity(24 + self.node_id.len() + shards.len() * 32 + 64);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.push(self.role as u8);
        out.push(self.ops);
        out.extend_from_slice(&self.expires_at.to_be_bytes());
        let id = self.node_id.as_bytes();
        out.extend_from_slice(&(id.len().min(u16::MAX as usize) as u16).to_be_bytes());
        out.extend_from_slice(&id[..id.len().min(u16::MAX as usize)]);
        out.push(matches!(self.scope, Scope::Any) as u8);
        out.extend_from_slice(&(shards.len() as u32).to_be_bytes());
        for h in shards {
            out.extend_from_slice(h.as_bytes());
        }
        out
    }
}

/// Signs tokens (the gateway holds it).
#[derive(Clone)]
pub struct TokenSigner {
    key: SigningKey,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenSigner(public {})", hex::encode(self.public_key()))
    }
}

impl TokenSigner {
    pub fn from_seed(seed: [u8; 32]) -> Self {
        TokenSigner {
            key: SigningKey::from_bytes(&seed),
        }
    }

    pub fn generate() -> Result<Self, crate::error::CryptoError> {
        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
        getrandom::fill(&mut *seed).map_err(|_| crate::error::CryptoError::Random)?;
        Ok(Self::from_seed(*seed))
    }

    /// The 32-byte secret seed (to persist the key).
    pub fn seed(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    pub fn sign(&self, cap: &Capability) -> Vec<u8> {
        let mut body = cap.encode_body();
        let sig = self.key.sign(&body);
        body.extend_from_slice(&sig.to_bytes());
        body
    }
}

/// Verifies tokens (nodes hold it, with the public keys of the gateways they trust).
#[derive(Debug, Clone, Default)]
pub struct TokenVerifier {
    keys: Vec<VerifyingKey>,
}

impl TokenVerifier {
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts one more gateway public key; refuses bytes that are not a valid Ed25519 point.
    pub fn add_key(&mut self, public: &[u8]) -> Result<(), TokenError> {
        let bytes: [u8; 32] = public
            .try_into()
            .map_err(|_| TokenError::Malformed("public key is not 32 bytes"))?;
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|_| TokenError::Malformed("public key is not a valid Ed25519 point"))?;
        if !self.keys.contains(&key) {
            self.keys.push(key);
        }
        Ok(())
    }

    pub fn has_keys(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Parses a token, checks its signature against any trusted key and its expiry against
    /// `now` (unix seconds). Scope checks are [`Capability::check`].
    pub fn verify(&self, token: &[u8], now: u64) -> Result<Capability, TokenError> {
        if token.len() < 64 {
            return Err(TokenError::Malformed("shorter than a signature"));
        }
        let (body, sig) = token.split_at(token.len() - 64);
        let cap = decode_body(body)?;
        let sig = Signature::from_bytes(sig.try_into().expect("64 bytes"));
        if !self
            .keys
            .iter()
            .any(|k| k.verify_strict(body, &sig).is_ok())
        {
            return Err(TokenError::BadSignature);
        }
        if now >= cap.expires_at {
            return Err(TokenError::Expired {
                expires_at: cap.expires_at,
                now,
            });
        }
        Ok(cap)
    }
}

/// When `token` expires (unix seconds), read without checking its signature: for a holder
/// deciding when to get a new one. Nodes verify ([`TokenVerifier::verify`]).
pub fn expires_at(token: &[u8]) -> Option<u64> {
    let body = token.get(..token.len().checked_sub(64)?)?;
    decode_body(body).ok().map(|c| c.expires_at)
}

fn decode_body(b: &[u8]) -> Result<Capability, TokenError> {
    let mut r = Reader(b);
    if r.take(4)? != MAGIC {
        return Err(TokenError::Malformed("bad magic"));
    }
    if r.u8()? != VERSION {
        return Err(TokenError::Malformed("unsupported version"));
    }
    let role = Role::from_u8(r.u8()?).ok_or(TokenError::Malformed("unknown role"))?;
    let ops = r.u8()?;
    if ops & !7 != 0 || ops == 0 {
        return Err(TokenError::Malformed("bad operation bits"));
    }
    let expires_at = u64::from_be_bytes(r.take(8)?.try_into().expect("8"));
    let id_len = u16::from_be_bytes(r.take(2)?.try_into().expect("2")) as usize;
    let node_id = std::str::from_utf8(r.take(id_len)?)
        .map_err(|_| TokenError::Malformed("node id is not UTF-8"))?
        .to_string();
    let any = match r.u8()? {
        0 => false,
        1 => true,
        _ => return Err(TokenError::Malformed("bad scope")),
    };
    let count = u32::from_be_bytes(r.take(4)?.try_into().expect("4")) as usize;
    if count > MAX_SHARDS || (any && count != 0) {
        return Err(TokenError::Malformed("bad shard count"));
    }
    let mut shards = Vec::with_capacity(count);
    for _ in 0..count {
        shards.push(Hash::from_slice(r.take(32)?).expect("32"));
    }
    if !r.0.is_empty() {
        return Err(TokenError::Malformed("trailing bytes"));
    }
    if any && role == Role::Client {
        return Err(TokenError::Malformed(
            "client tokens must list their shards",
        ));
    }
    Ok(Capability {
        role,
        ops,
        node_id,
        expires_at,
        scope: if any {
            Scope::Any
        } else {
            Scope::Shards(shards)
        },
    })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], TokenError> {
        if self.0.len() < n {
            return Err(TokenError::Malformed("truncated"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, TokenError> {
        Ok(self.take(1)?[0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap(role: Role, ops: u8, shards: Vec<Hash>) -> Capability {
        Capability {
            role,
            ops,
            node_id: "node-1".into(),
            expires_at: 1000,
            scope: Scope::Shards(shards),
        }
    }

    #[test]
    fn sign_verify_and_check() {
        let s = TokenSigner::from_seed([3; 32]);
        let mut v = TokenVerifier::new();
        v.add_key(&s.public_key()).unwrap();
        let h = Hash::of(b"shard");
        let t = s.sign(&cap(Role::Client, Op::Put as u8 | Op::Get as u8, vec![h]));
        let c = v.verify(&t, 999).unwrap();
        c.check(Op::Put, &h, "node-1").unwrap();
        c.check(Op::Get, &h, "node-1").unwrap();
        assert_eq!(
            c.check(Op::Delete, &h, "node-1"),
            Err(TokenError::OpNotGranted { op: Op::Delete })
        );
        assert!(matches!(
            c.check(Op::Put, &h, "node-2"),
            Err(TokenError::WrongNode { .. })
        ));
        assert_eq!(
            c.check(Op::Put, &Hash::of(b"x"), "node-1"),
            Err(TokenError::ShardNotCovered(Hash::of(b"x")))
        );
        assert_eq!(
            v.verify(&t, 1000),
            Err(TokenError::Expired {
                expires_at: 1000,
                now: 1000
            })
        );
    }

    #[test]
    fn clients_cannot_delete_even_if_granted() {
        let s = TokenSigner::from_seed([3; 32]);
        let mut v = TokenVerifier::new();
        v.add_key(&s.public_key()).unwrap();
        let h = Hash::of(b"shard");
        let t = s.sign(&cap(Role::Client, Op::Delete as u8, vec![h]));
        let c = v.verify(&t, 0).unwrap();
        assert!(matches!(
            c.check(Op::Delete, &h, "node-1"),
            Err(TokenError::RoleNotAllowed { .. })
        ));
        let t = s.sign(&Capability {
            scope: Scope::Any,
            ..cap(Role::Rebalancer, Op::Delete as u8, vec![])
        });
        v.verify(&t, 0)
            .unwrap()
            .check(Op::Delete, &h, "node-1")
            .unwrap();
    }

    #[test]
    fn forged_and_altered_tokens_are_refused() {
        let s = TokenSigner::from_seed([3; 32]);
        let forger = TokenSigner::from_seed([4; 32]);
        let mut v = TokenVerifier::new();
        v.add_key(&s.public_key()).unwrap();
        let t = s.sign(&cap(Role::Client, Op::Get as u8, vec![Hash::of(b"a")]));
        assert_eq!(
            v.verify(&forger.sign(&cap(Role::Client, 2, vec![])), 0),
            Err(TokenError::BadSignature)
        );
        for i in 0..t.len() {
            let mut x = t.clone();
            x[i] ^= 0x10;
            assert!(v.verify(&x, 0).is_err(), "altered byte {i} accepted");
        }
        for n in 0..t.len() {
            assert!(v.verify(&t[..n], 0).is_err());
        }
        assert!(
            TokenVerifier::new().verify(&t, 0).is_err(),
            "no trusted key, nothing verifies"
        );
    }
}
