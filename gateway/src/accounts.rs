//! Accounts: users with quotas, access keys, bearer tokens, operator logins and machines.
//!
//! * Access-key secrets are stored encrypted with a key derived from the cluster key (S3
//!   SigV4 needs the secret itself to verify a signature, so a one-way hash would not do);
//!   they are never logged. `Authenticate` compares in constant time.
//! * Bearer tokens are stateless: `cyx1.<payload>.<mac>` with a blake3 keyed MAC, valid on every
//!   gateway sharing the cluster key until they expire.
//! * Operator passwords are argon2id hashes; login returns an HS256 JWT.
//! * Machine API keys (node operators) are random and stored as blake3 hashes only.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use zeroize::Zeroizing;

use crate::db::{Db, Tx, args, now_ns, now_secs, write_tx};
use crate::error::{Error, Result};
use crate::keys::{ClusterKeys, hmac_sha256, random_b64, random_id};

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub user_id: String,
    pub admin: bool,
}

impl Caller {
    /// The gateway acting on its own behalf (background work).
    pub fn system() -> Caller {
        Caller {
            user_id: "system".into(),
            admin: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: String,
    pub name: String,
    pub email: Option<String>,
    pub admin: bool,
    pub quota_bytes: u64,
    pub used_bytes: u64,
}

/// A freshly created access key; the secret is shown once.
#[derive(Clone, PartialEq, Eq)]
pub struct NewKey {
    pub user_id: String,
    pub access_key: String,
    pub secret_key: Zeroizing<String>,
}

impl std::fmt::Debug for NewKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NewKey({}, {}, <secret>)", self.user_id, self.access_key)
    }
}

/// A bearer token and when it expires (unix seconds).
#[derive(Debug, Clone)]
pub struct Token {
    pub token: String,
    pub expires_at: u64,
    pub caller: Caller,
}

/// A registered machine (storage node of an operator).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    pub id: String,
    pub owner_id: String,
    pub node_id: String,
}

/// What `POST /api/machines/register` sends.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
pub struct MachineInfo {
    pub node_id: String,
    pub name: String,
    pub hostname: String,
    pub cpu_cores: u64,
    pub ram_bytes: u64,
    pub gpu: String,
    pub storage_capacity_bytes: u64,
    pub wallet_address: String,
}

#[derive(Clone)]
pub struct Accounts {
    db: Db,
    keys: Arc<ClusterKeys>,
    token_ttl_secs: u64,
    jwt_ttl_secs: u64,
}

impl std::fmt::Debug for Accounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Accounts")
    }
}

const PASSWORD_MIN: usize = 8;

impl Accounts {
    pub fn new(db: Db, keys: Arc<ClusterKeys>, token_ttl_secs: u64, jwt_ttl_secs: u64) -> Self {
        Accounts {
            db,
            keys,
            token_ttl_secs,
            jwt_ttl_secs,
        }
    }

    /// Creates a user. `email` + `password` make it an operator account (web/API login).
    pub async fn create_user(
        &self,
        name: &str,
        email: Option<&str>,
        password: Option<&str>,
        admin: bool,
        quota_bytes: u64,
    ) -> Result<User> {
        if name.trim().is_empty() {
            return Err(Error::invalid("a user needs a name"));
        }
        if let Some(e) = email
            && (!e.contains('@') || e.len() > 254)
        {
            return Err(Error::invalid(format!("{e:?} is not an email address")));
        }
        let hash = match password {
            Some(p) if p.len() < PASSWORD_MIN => {
                return Err(Error::invalid(format!(
                    "a password needs at least {PASSWORD_MIN} characters"
                )));
            }
            Some(p) => Some(hash_password(p)?),
            None => None,
        };
        let id = format!("u-{}", random_id(16)?.to_lowercase());
        let email_norm = email.map(|e| e.trim().to_lowercase());
        let r = self
            .db
            .exec(
                "INSERT INTO users (id, name, email, password_hash, admin, quota_bytes, used_bytes, \
                 created_ns) VALUES ($1, $2, $3, $4, $5, $6, 0, $7)",
                args![
                    id.as_str(),
                    name,
                    email_norm.clone(),
                    hash,
                    admin,
                    quota_bytes,
                    now_ns()
                ],
            )
            .await;
        match r {
            Err(e) if crate::db::is_unique_violation(&e) => {
                return Err(Error::exists(format!(
                    "a user with email {:?}",
                    email_norm.unwrap_or_default()
                )));
            }
            r => r?,
        };
        Ok(User {
            id,
            name: name.to_string(),
            email: email_norm,
            admin,
            quota_bytes,
            used_bytes: 0,
        })
    }

    pub async fn user(&self, id: &str) -> Result<User> {
        let r = self
            .db
            .opt(
                "SELECT id, name, email, admin, quota_bytes, used_bytes FROM users WHERE id = $1",
                args![id],
            )
            .await?
            .ok_or_else(|| Error::not_found(format!("user {id}")))?;
        Ok(User {
            id: r.text(0)?,
            name: r.text(1)?,
            email: r.opt_text(2)?,
            admin: r.bool(3)?,
            quota_bytes: r.u64(4)?,
            used_bytes: r.u64(5)?,
        })
    }

    /// Creates an access key (and its secret) for a user.
    pub async fn create_access_key(&self, user_id: &str) -> Result<NewKey> {
        self.user(user_id).await?;
        let access_key = format!("CYX{}", random_id(17)?);
        let secret = Zeroizing::new(random_b64(30)?);
        self.store_key(user_id, &access_key, &secret).await?;
        Ok(NewKey {
            user_id: user_id.to_string(),
            access_key,
            secret_key: secret,
        })
    }

    async fn store_key(&self, user_id: &str, access_key: &str, secret: &str) -> Result<()> {
        check_key_shape(access_key, secret)?;
        let sealed = self.keys.seal_secret(access_key, secret)?;
        self.db
            .exec(
                "INSERT INTO access_keys (access_key, user_id, secret_enc, created_ns) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (access_key) DO UPDATE SET \
                 user_id = excluded.user_id, secret_enc = excluded.secret_enc",
                args![access_key, user_id, sealed, now_ns()],
            )
            .await?;
        Ok(())
    }

    /// Creates a user with an access key in one step (the `CreateUser` call).
    pub async fn create_user_with_key(
        &self,
        name: &str,
        quota_bytes: u64,
        admin: bool,
    ) -> Result<NewKey> {
        let u = self
            .create_user(name, None, None, admin, quota_bytes)
            .await?;
        self.create_access_key(&u.id).await
    }

    /// At first start creates the admin and its access key: from `env_key` when given (kept in
    /// sync with it on every start), else random. Returns a newly made random key to print once.
    pub async fn bootstrap_admin(&self, env_key: Option<(&str, &str)>) -> Result<Option<NewKey>> {
        let admin = self
            .db
            .opt(
                "SELECT id FROM users WHERE admin = 1 ORDER BY created_ns LIMIT 1",
                args![],
            )
            .await?
            .map(|r| r.text(0))
            .transpose()?;
        let admin_id = match admin {
            Some(id) => id,
            None => self.create_user("admin", None, None, true, 0).await?.id,
        };
        if let Some((ak, sk)) = env_key {
            // The configured key wins: bind it to the admin with this secret.
            let current = self.secret_for(ak).await?;
            if current
                .as_ref()
                .map(|(s, c)| (s.as_str(), c.user_id.as_str()))
                != Some((sk, admin_id.as_str()))
            {
                self.store_key(&admin_id, ak, sk).await?;
            }
            return Ok(None);
        }
        let has_key = self
            .db
            .opt(
                "SELECT 1 FROM access_keys WHERE user_id = $1",
                args![admin_id.as_str()],
            )
            .await?
            .is_some();
        if has_key {
            return Ok(None);
        }
        Ok(Some(self.create_access_key(&admin_id).await?))
    }

    /// The secret of an access key and its owner (for S3 signature checks).
    pub async fn secret_for(
        &self,
        access_key: &str,
    ) -> Result<Option<(Zeroizing<String>, Caller)>> {
        let Some(r) = self
            .db
            .opt(
                "SELECT k.secret_enc, u.id, u.admin FROM access_keys k JOIN users u ON u.id = k.user_id \
                 WHERE k.access_key = $1",
                args![access_key],
            )
            .await?
        else {
            return Ok(None);
        };
        let secret = self.keys.open_secret(access_key, &r.blob(0)?)?;
        Ok(Some((
            secret,
            Caller {
                user_id: r.text(1)?,
                admin: r.bool(2)?,
            },
        )))
    }

    /// Exchanges an access key and secret for a bearer token.
    pub async fn authenticate(&self, access_key: &str, secret_key: &str) -> Result<Token> {
        let denied = || Error::Unauthenticated("unknown access key or wrong secret".into());
        let (secret, caller) = self.secret_for(access_key).await?.ok_or_else(denied)?;
        if !ct_eq(secret.as_bytes(), secret_key.as_bytes()) {
            return Err(denied());
        }
        self.issue(caller)
    }

    /// Signs a bearer token for `caller`.
    pub fn issue(&self, caller: Caller) -> Result<Token> {
        let expires_at = now_secs() + self.token_ttl_secs;
        let mut payload = vec![1u8];
        payload.extend_from_slice(&expires_at.to_be_bytes());
        payload.push(caller.admin as u8);
        payload.extend_from_slice(caller.user_id.as_bytes());
        let mac = blake3::keyed_hash(&self.keys.bearer_mac_key(), &payload);
        Ok(Token {
            token: format!(
                "cyx1.{}.{}",
                B64.encode(&payload),
                B64.encode(mac.as_bytes())
            ),
            expires_at,
            caller,
        })
    }

    /// Checks a bearer token (signature and expiry).
    pub fn verify(&self, token: &str) -> Result<Caller> {
        let bad = |why: &str| Error::Unauthenticated(format!("bearer token {why}"));
        let mut parts = token.split('.');
        let (Some("cyx1"), Some(p), Some(m), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("is malformed"));
        };
        let payload = B64.decode(p).map_err(|_| bad("is malformed"))?;
        let mac = B64.decode(m).map_err(|_| bad("is malformed"))?;
        let mac: [u8; 32] = mac.try_into().map_err(|_| bad("is malformed"))?;
        let expected = blake3::keyed_hash(&self.keys.bearer_mac_key(), &payload);
        if expected != blake3::Hash::from_bytes(mac) {
            return Err(bad("has an invalid signature"));
        }
        if payload.len() < 10 || payload[0] != 1 {
            return Err(bad("has an unknown version"));
        }
        let expires_at = u64::from_be_bytes(payload[1..9].try_into().expect("8 bytes"));
        if now_secs() >= expires_at {
            return Err(Error::Expired("bearer token".into()));
        }
        let user_id = String::from_utf8(payload[10..].to_vec()).map_err(|_| bad("is malformed"))?;
        Ok(Caller {
            user_id,
            admin: payload[9] == 1,
        })
    }

    /// Operator login: email + password → JWT and the user.
    pub async fn login(&self, email: &str, password: &str) -> Result<(String, User)> {
        let denied = || Error::Unauthenticated("invalid email or password".into());
        let r = self
            .db
            .opt(
                "SELECT id, password_hash FROM users WHERE email = $1",
                args![email.trim().to_lowercase()],
            )
            .await?;
        let Some(r) = r else {
            // Same work as a real check, so timing does not reveal which emails exist.
            let _ = verify_password(password, DUMMY_HASH);
            return Err(denied());
        };
        let hash = r.opt_text(1)?.ok_or_else(denied)?;
        if !verify_password(password, &hash)? {
            return Err(denied());
        }
        let user = self.user(&r.text(0)?).await?;
        Ok((self.jwt(&user)?, user))
    }

    fn jwt(&self, user: &User) -> Result<String> {
        let header = B64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let now = now_secs();
        let claims = serde_json::json!({
            "sub": user.id,
            "email": user.email,
            "name": user.name,
            "iat": now,
            "exp": now + self.jwt_ttl_secs,
        });
        let body = B64.encode(claims.to_string());
        let signing_input = format!("{header}.{body}");
        let sig = hmac_sha256(&*self.keys.jwt_key(), signing_input.as_bytes());
        Ok(format!("{signing_input}.{}", B64.encode(sig)))
    }

    /// Checks an operator JWT; returns the user id.
    pub fn verify_jwt(&self, jwt: &str) -> Result<String> {
        let bad = || Error::Unauthenticated("invalid or expired token".into());
        let (signing_input, sig) = jwt.rsplit_once('.').ok_or_else(bad)?;
        let sig = B64.decode(sig).map_err(|_| bad())?;
        let expected = hmac_sha256(&*self.keys.jwt_key(), signing_input.as_bytes());
        if !ct_eq(&sig, &expected) {
            return Err(bad());
        }
        let (header, body) = signing_input.split_once('.').ok_or_else(bad)?;
        let header: serde_json::Value =
            serde_json::from_slice(&B64.decode(header).map_err(|_| bad())?).map_err(|_| bad())?;
        if header["alg"] != "HS256" {
            return Err(bad());
        }
        let claims: serde_json::Value =
            serde_json::from_slice(&B64.decode(body).map_err(|_| bad())?).map_err(|_| bad())?;
        let exp = claims["exp"].as_u64().ok_or_else(bad)?;
        if now_secs() >= exp {
            return Err(bad());
        }
        claims["sub"].as_str().map(String::from).ok_or_else(bad)
    }

    /// Registers a machine for an operator; returns it and its API key (shown once).
    pub async fn register_machine(
        &self,
        owner_id: &str,
        info: &MachineInfo,
    ) -> Result<(Machine, String)> {
        if info.node_id.is_empty() {
            return Err(Error::invalid("node_id is required"));
        }
        self.user(owner_id).await?;
        let id = format!("m-{}", random_id(16)?.to_lowercase());
        let api_key = format!("cyxk_{}", random_b64(32)?);
        let hash = blake3::hash(api_key.as_bytes());
        self.db
            .exec(
                "INSERT INTO machines (id, owner_id, node_id, name, hostname, cpu_cores, ram_bytes, \
                 gpu, storage_capacity_bytes, wallet_address, api_key_hash, created_ns) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                args![
                    id.as_str(),
                    owner_id,
                    info.node_id.as_str(),
                    info.name.as_str(),
                    info.hostname.as_str(),
                    info.cpu_cores,
                    info.ram_bytes,
                    info.gpu.as_str(),
                    info.storage_capacity_bytes,
                    info.wallet_address.as_str(),
                    hash.as_bytes().to_vec(),
                    now_ns()
                ],
            )
            .await?;
        Ok((
            Machine {
                id,
                owner_id: owner_id.to_string(),
                node_id: info.node_id.clone(),
            },
            api_key,
        ))
    }

    /// The machine an API key belongs to.
    pub async fn machine_for_key(&self, api_key: &str) -> Result<Option<Machine>> {
        let hash = blake3::hash(api_key.as_bytes());
        let r = self
            .db
            .opt(
                "SELECT id, owner_id, node_id FROM machines WHERE api_key_hash = $1",
                args![hash.as_bytes().to_vec()],
            )
            .await?;
        r.map(|r| {
            Ok(Machine {
                id: r.text(0)?,
                owner_id: r.text(1)?,
                node_id: r.text(2)?,
            })
        })
        .transpose()
    }

    /// Quota and usage of a user: `(quota, used)`, quota 0 = unlimited.
    pub async fn usage(&self, user_id: &str) -> Result<(u64, u64)> {
        let u = self.user(user_id).await?;
        Ok((u.quota_bytes, u.used_bytes))
    }

    pub async fn set_quota(&self, user_id: &str, quota_bytes: u64) -> Result<()> {
        let n = self
            .db
            .exec(
                "UPDATE users SET quota_bytes = $2 WHERE id = $1",
                args![user_id, quota_bytes],
            )
            .await?;
        if n == 0 {
            return Err(Error::not_found(format!("user {user_id}")));
        }
        Ok(())
    }

    /// Sets (or replaces) the password of an operator account found by email.
    pub async fn set_password(&self, email: &str, password: &str) -> Result<()> {
        if password.len() < PASSWORD_MIN {
            return Err(Error::invalid(format!(
                "a password needs at least {PASSWORD_MIN} characters"
            )));
        }
        let hash = hash_password(password)?;
        let email = email.trim().to_lowercase();
        write_tx!(self.db, tx => {
            let n = tx
                .exec("UPDATE users SET password_hash = $2 WHERE email = $1", args![email.as_str(), hash.as_str()])
                .await?;
            if n == 0 {
                return Err(Error::not_found(format!("user with email {email:?}")));
            }
            Ok(())
        });
        Ok(())
    }
}

/// Adds `delta` bytes to a user's usage inside a write transaction.
pub(crate) async fn add_usage(tx: &mut Tx, user_id: &str, delta: i64) -> Result<()> {
    if delta != 0 {
        tx.exec(
            "UPDATE users SET used_bytes = used_bytes + $2 WHERE id = $1",
            args![user_id, delta],
        )
        .await?;
    }
    Ok(())
}

/// Adds `delta` bytes to a user's usage inside a write transaction, refusing growth past the
/// user's quota (the caller's transaction is then rolled back): the check and the charge in
/// one statement.
pub(crate) async fn charge_usage(tx: &mut Tx, user_id: &str, delta: i64) -> Result<()> {
    if delta <= 0 {
        return add_usage(tx, user_id, delta).await;
    }
    let Some(r) = tx
        .opt(
            "UPDATE users SET used_bytes = used_bytes + $2 WHERE id = $1 \
             RETURNING quota_bytes, used_bytes",
            args![user_id, delta],
        )
        .await?
    else {
        return Ok(());
    };
    let (quota, after) = (r.u64(0)?, r.i64(1)?.max(0) as u64);
    if quota > 0 && after > quota {
        return Err(Error::QuotaExceeded {
            used: after.saturating_sub(delta as u64),
            quota,
            needed: delta as u64,
        });
    }
    Ok(())
}

/// `(quota, used)` of a user inside a transaction.
pub(crate) async fn usage_in(tx: &mut Tx, user_id: &str) -> Result<(u64, u64)> {
    let r = tx
        .opt(
            "SELECT quota_bytes, used_bytes FROM users WHERE id = $1",
            args![user_id],
        )
        .await?;
    match r {
        Some(r) => Ok((r.u64(0)?, r.i64(1)?.max(0) as u64)),
        None => Ok((0, 0)),
    }
}

fn check_key_shape(access_key: &str, secret: &str) -> Result<()> {
    if access_key.len() < 3
        || access_key.len() > 128
        || !access_key.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(Error::invalid(
            "an access key is 3 to 128 printable characters",
        ));
    }
    if secret.len() < 8 || secret.len() > 256 {
        return Err(Error::invalid("a secret key is 8 to 256 characters"));
    }
    Ok(())
}

/// Constant-time equality.
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

const ARGON_M: u32 = 19 * 1024;
const ARGON_T: u32 = 2;
const ARGON_P: u32 = 1;
const DUMMY_HASH: &str =
    "argon2id$19456$2$1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

fn argon(m: u32, t: u32, p: u32) -> Result<argon2::Argon2<'static>> {
    let params = argon2::Params::new(m, t, p, Some(32))
        .map_err(|e| Error::Corrupt(format!("argon2 parameters: {e}")))?;
    Ok(argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        params,
    ))
}

/// `argon2id$m$t$p$salt$hash` (base64url fields).
pub fn hash_password(password: &str) -> Result<String> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| Error::Internal(format!("no OS randomness: {e}")))?;
    let mut out = [0u8; 32];
    argon(ARGON_M, ARGON_T, ARGON_P)?
        .hash_password_into(password.as_bytes(), &salt, &mut out)
        .map_err(|e| Error::Internal(format!("argon2: {e}")))?;
    Ok(format!(
        "argon2id${ARGON_M}${ARGON_T}${ARGON_P}${}${}",
        B64.encode(salt),
        B64.encode(out)
    ))
}

pub fn verify_password(password: &str, stored: &str) -> Result<bool> {
    let f: Vec<&str> = stored.split('$').collect();
    let [alg, m, t, p, salt, hash] = f.as_slice() else {
        return Err(Error::Corrupt("password hash format".into()));
    };
    if *alg != "argon2id" {
        return Err(Error::Corrupt(format!("password hash algorithm {alg}")));
    }
    let num = |s: &str| {
        s.parse::<u32>()
            .map_err(|_| Error::Corrupt("password hash params".into()))
    };
    let salt = B64
        .decode(salt)
        .map_err(|_| Error::Corrupt("password salt".into()))?;
    let hash = B64
        .decode(hash)
        .map_err(|_| Error::Corrupt("password hash".into()))?;
    let mut out = vec![0u8; hash.len()];
    argon(num(m)?, num(t)?, num(p)?)?
        .hash_password_into(password.as_bytes(), &salt, &mut out)
        .map_err(|e| Error::Internal(format!("argon2: {e}")))?;
    Ok(ct_eq(&out, &hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_and_verify() {
        let h = hash_password("correct horse").unwrap();
        assert!(!h.contains("correct horse"));
        assert!(verify_password("correct horse", &h).unwrap());
        assert!(!verify_password("wrong horse", &h).unwrap());
        assert!(!verify_password("x", DUMMY_HASH).unwrap());
    }
}
