//! The write protocol: `BeginWrite` → (`PlaceChunks`) → PutShard to nodes → (`CheckpointWrite`)
//! → `CommitWrite`, plus `WriteInline` for small files and `AbortWrite`.
//!
//! A write session (`writes`, `write_chunks`, `write_targets`) remembers where each chunk was
//! placed and every `(node, shard hash)` a client was allowed to put. A chunk that is already
//! stored healthy is not placed again (`deduplicated`): the write takes a reference on it at
//! once, so it cannot be freed before the commit. `CommitWrite` accepts a layout only if every
//! chunk is the one placed at its index, every stored shard is on the node it was placed on,
//! each chunk has at least the success threshold of shards stored (checked with the nodes'
//! `HasShards` when `verify_commits` is on), and the quota allows it; then one transaction
//! installs the new version, releases the old one, and appends the journal event. Shards left
//! over (re-placed, abandoned, or duplicated by a racing writer) are queued for deletion on their
//! nodes; expired sessions are aborted the same way by [`Writes::expire`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cyxcloud_core::codec::{CodecId, Profile};
use cyxcloud_core::placement::Limits;
use cyxcloud_core::token::{Op, TokenSigner};
use cyxcloud_core::{ChunkMeta, Hash};
use cyxcloud_proto::v1;
use prost::Message;

use crate::accounts::{Caller, charge_usage, usage_in};
use crate::db::{Backend, Db, Tx, args, now_ns, now_secs, write_tx};
use crate::error::{Error, Result};
use crate::journal;
use crate::layout::{
    chunk_key, install_version, put_chunk, queue_gc, ref_chunk, release_version, unref_chunk,
};
use crate::namespace::{
    Entry, Inode, InodeMeta, Kind, ROOT_ID, Ref, check_owner, describe, encode_meta, split_path,
};
use crate::registry::Registry;

#[derive(Debug, Clone)]
pub struct WriteConfig {
    pub chunk_size: u32,
    pub profile: Profile,
    pub codec: CodecId,
    pub inline_threshold: u32,
    /// Stored shards per chunk required at commit; 0 = k + m − 1. Never below k + 1.
    pub success_threshold: u32,
    pub write_ttl_secs: u64,
    pub token_ttl_secs: u64,
    pub verify_commits: bool,
    pub limits: Limits,
}

impl WriteConfig {
    pub fn threshold(&self, p: Profile) -> u32 {
        let (k, n) = (p.data() as u32, p.total() as u32);
        if self.success_threshold == 0 {
            n - 1
        } else {
            self.success_threshold.clamp((k + 1).min(n), n)
        }
    }
}

#[derive(Clone)]
pub struct Writes {
    db: Db,
    cfg: Arc<WriteConfig>,
    registry: Registry,
    signer: TokenSigner,
    channels: Arc<Mutex<HashMap<String, tonic::transport::Channel>>>,
    tls: Option<Arc<crate::tls::GatewayTls>>,
}

impl std::fmt::Debug for Writes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Writes")
    }
}

/// A write session as stored.
#[derive(Debug, Clone)]
struct Session {
    id: String,
    user_id: String,
    bucket: String,
    path: String,
    inode_id: u64,
    profile: Profile,
    codec: u32,
    chunk_size: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    if_version: u64,
    if_absent: bool,
    base_version: u64,
    expires_ns: i64,
    encrypted: bool,
}

/// A chunk placed in a session.
#[derive(Debug, Clone)]
struct Placed {
    idx: u32,
    meta: ChunkMeta,
    dedup: bool,
    nodes: Vec<String>,
    stored: Vec<u32>,
    durable: bool,
}

/// Attributes of the file a commit writes.
#[derive(Debug, Clone, Default)]
pub struct FileAttrs {
    pub etag: String,
    pub content_type: String,
    pub user_metadata: BTreeMap<String, String>,
    pub mtime_ns: Option<i64>,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// For a new file: the id it gets, reserved by the caller ([`Writes::reserve_ids`]);
    /// 0 lets the store pick one.
    pub new_id: u64,
}

/// How long a client may name new files with reserved inode ids (it is told this expiry).
pub const RESERVATION_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long after that expiry a reserved id is still claimed: files a client created offline
/// under it before the expiry still reach the gateway with it. Only then is the reservation
/// forgotten (an id never named anything else, so the grace costs one small row per id).
pub const RESERVATION_GRACE: Duration = Duration::from_secs(365 * 24 * 3600);
/// Most ids one [`Writes::reserve_ids`] call hands out.
pub const MAX_RESERVED_IDS: u32 = 1024;

/// A committed chunk as the client reports it.
#[derive(Debug, Clone)]
pub struct Committed {
    pub index: u32,
    pub id: Hash,
    pub stored: Vec<(u32, String)>,
}

impl Committed {
    pub fn from_proto(c: &v1::CommittedChunk) -> Result<Committed> {
        Ok(Committed {
            index: c.index,
            id: Hash::from_slice(&c.id)
                .ok_or_else(|| Error::invalid(format!("chunk {}: id must be 32 bytes", c.index)))?,
            stored: c
                .stored
                .iter()
                .map(|s| (s.index, s.node_id.clone()))
                .collect(),
        })
    }
}

const SESSION_COLS: &str = "id, user_id, bucket, path, inode_id, data_shards, parity_shards, codec, \
    chunk_size, mode, uid, gid, if_version, if_absent, base_version, expires_ns, encrypted";

fn session_from_row(r: &crate::db::Row) -> Result<Session> {
    Ok(Session {
        id: r.text(0)?,
        user_id: r.text(1)?,
        bucket: r.text(2)?,
        path: r.text(3)?,
        inode_id: r.u64(4)?,
        profile: Profile::new(r.u32(5)? as usize, r.u32(6)? as usize)
            .map_err(|e| Error::Corrupt(e.to_string()))?,
        codec: r.u32(7)?,
        chunk_size: r.u32(8)?,
        mode: r.u32(9)?,
        uid: r.u32(10)?,
        gid: r.u32(11)?,
        if_version: r.u64(12)?,
        if_absent: r.bool(13)?,
        base_version: r.u64(14)?,
        expires_ns: r.i64(15)?,
        encrypted: r.bool(16)?,
    })
}

fn decode_info(b: &[u8]) -> Result<ChunkMeta> {
    let info = v1::ChunkInfo::decode(b).map_err(|e| Error::Corrupt(format!("chunk info: {e}")))?;
    cyxcloud_proto::convert::chunk_meta(&info).map_err(|s| Error::Corrupt(s.message().to_string()))
}

fn split_nodes(s: &str) -> Vec<String> {
    if s.is_empty() {
        Vec::new()
    } else {
        s.split('\n').map(String::from).collect()
    }
}

fn split_idx(s: &str) -> Vec<u32> {
    s.split(',').filter_map(|x| x.parse().ok()).collect()
}

fn join_idx(v: &[u32]) -> String {
    v.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

async fn load_session(tx: &mut Tx, id: &str) -> Result<Session> {
    let r = tx
        .opt(
            format!("SELECT {SESSION_COLS} FROM writes WHERE id = $1"),
            args![id],
        )
        .await?
        .ok_or_else(|| {
            Error::not_found(format!(
                "write {id} (unknown, committed, aborted or expired)"
            ))
        })?;
    session_from_row(&r)
}

async fn load_placed(tx: &mut Tx, id: &str) -> Result<BTreeMap<u32, Placed>> {
    let rows = tx
        .all(
            "SELECT idx, info, dedup, nodes, stored, durable FROM write_chunks WHERE write_id = $1",
            args![id],
        )
        .await?;
    let mut out = BTreeMap::new();
    for r in &rows {
        let idx = r.u32(0)?;
        out.insert(
            idx,
            Placed {
                idx,
                meta: decode_info(&r.blob(1)?)?,
                dedup: r.bool(2)?,
                nodes: split_nodes(&r.text(3)?),
                stored: split_idx(&r.text(4)?),
                durable: r.bool(5)?,
            },
        );
    }
    Ok(out)
}

fn check_session_owner(caller: &Caller, s: &Session) -> Result<()> {
    if caller.admin || caller.user_id == s.user_id {
        Ok(())
    } else {
        Err(Error::PermissionDenied(
            "this write belongs to another user".into(),
        ))
    }
}

fn check_live(s: &Session) -> Result<()> {
    if now_ns() >= s.expires_ns {
        Err(Error::Expired(format!("write {}", s.id)))
    } else {
        Ok(())
    }
}

/// Where a write lands, resolved at begin (the file may not exist yet).
struct Target {
    bucket: String,
    path: String,
    existing: Option<Entry>,
    owner_id: String,
    /// The directory a new file goes into, when it already exists.
    dir: Option<Entry>,
}

async fn resolve_target(tx: &mut Tx, caller: &Caller, r: &Ref) -> Result<Target> {
    match r {
        Ref::Id(id) => {
            let e = crate::namespace::entry_by_id(tx, *id).await?;
            check_owner(caller, &e)?;
            if e.kind != Kind::File {
                return Err(Error::IsDirectory { what: describe(&e) });
            }
            Ok(Target {
                bucket: e.bucket.clone(),
                path: e.path.clone(),
                owner_id: e.owner_id.clone(),
                existing: Some(e),
                dir: None,
            })
        }
        Ref::Path { bucket, path } => {
            let parts = split_path(path)?;
            if parts.is_empty() || path.ends_with('/') {
                return Err(Error::invalid(format!(
                    "{bucket}/{path}: a file path inside the bucket is required"
                )));
            }
            // The usual case, the directory exists: one query finds it and the file.
            let (owner_id, existing, dir) =
                match crate::namespace::resolve_with_dir(tx, bucket, &parts).await? {
                    Some((dir, existing)) => {
                        check_owner(caller, &dir)?;
                        (dir.owner_id.clone(), existing, Some(dir))
                    }
                    None => {
                        // Missing directories are created with the file (or `walk` and
                        // `ensure_dirs` say precisely what is wrong with the path).
                        let b = crate::namespace::walk(tx, bucket, &[]).await?;
                        check_owner(caller, &b)?;
                        (b.owner_id.clone(), None, None)
                    }
                };
            if let Some(e) = &existing
                && e.kind != Kind::File
            {
                return Err(Error::IsDirectory { what: describe(e) });
            }
            Ok(Target {
                bucket: bucket.clone(),
                path: parts.join("/"),
                owner_id,
                existing,
                dir,
            })
        }
    }
}

fn check_conditions(existing: Option<&Entry>, if_version: u64, if_absent: bool) -> Result<()> {
    if if_absent && let Some(e) = existing {
        return Err(Error::PreconditionFailed(format!(
            "{} already exists",
            describe(e)
        )));
    }
    if if_version != 0 {
        match existing {
            Some(e) if e.version == if_version => {}
            Some(e) => {
                return Err(Error::PreconditionFailed(format!(
                    "{} is at version {}, not {if_version}",
                    describe(e),
                    e.version
                )));
            }
            None => {
                return Err(Error::PreconditionFailed(
                    "the file no longer exists".into(),
                ));
            }
        }
    }
    Ok(())
}

async fn check_quota(tx: &mut Tx, owner: &str, old_size: u64, new_size: u64) -> Result<()> {
    if new_size <= old_size {
        // Not growing (an empty create, a rewrite as large or smaller): nothing to check.
        return Ok(());
    }
    let (quota, used) = usage_in(tx, owner).await?;
    if quota > 0 {
        let after = used.saturating_sub(old_size).saturating_add(new_size);
        if after > quota {
            return Err(Error::QuotaExceeded {
                used,
                quota,
                needed: new_size - old_size,
            });
        }
    }
    Ok(())
}

/// Result of `BeginWrite`.
#[derive(Debug, Clone)]
pub struct Begun {
    pub write_id: String,
    pub profile: Profile,
    pub codec: CodecId,
    pub chunk_size: u32,
    pub success_threshold: u32,
    pub inline_threshold: u32,
    pub expires_at: i64,
    pub placements: Vec<v1::ChunkPlacement>,
}

/// Parameters of `BeginWrite`.
#[derive(Debug, Clone, Default)]
pub struct BeginParams {
    pub size_hint: u64,
    pub profile: String,
    pub encrypted: bool,
    pub chunks: Vec<(u32, ChunkMeta)>,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub if_version: u64,
    pub if_absent: bool,
    pub base_version: u64,
}

impl Writes {
    pub fn new(
        db: Db,
        cfg: WriteConfig,
        registry: Registry,
        signer: TokenSigner,
        tls: Option<Arc<crate::tls::GatewayTls>>,
    ) -> Self {
        Writes {
            db,
            cfg: Arc::new(cfg),
            registry,
            signer,
            channels: Arc::new(Mutex::new(HashMap::new())),
            tls,
        }
    }

    pub fn config(&self) -> &WriteConfig {
        &self.cfg
    }

    pub async fn begin(&self, caller: &Caller, target: &Ref, p: BeginParams) -> Result<Begun> {
        let profile = crate::placement::parse_profile(&p.profile, self.cfg.profile)?;
        let write_id = format!("w-{}", crate::keys::random_id(24)?.to_lowercase());
        let now = now_ns();
        let expires_ns = now + (self.cfg.write_ttl_secs as i64) * 1_000_000_000;
        write_tx!(self.db, tx => {
            let t = resolve_target(&mut tx, caller, target).await?;
            check_conditions(t.existing.as_ref(), p.if_version, p.if_absent)?;
            let old_size = if p.base_version != 0 { 0 } else { t.existing.as_ref().map_or(0, |e| e.size) };
            check_quota(&mut tx, &t.owner_id, old_size, p.size_hint).await?;
            if p.base_version != 0 {
                let ok = t.existing.as_ref().is_some_and(|e| e.version == p.base_version);
                if !ok {
                    return Err(Error::PreconditionFailed(format!(
                        "base version {} is not the current version of the file",
                        p.base_version
                    )));
                }
            }
            tx.exec(
                format!(
                    "INSERT INTO writes ({SESSION_COLS}, size_hint, created_ns) VALUES \
                     ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)"
                ),
                args![
                    write_id.as_str(),
                    caller.user_id.as_str(),
                    t.bucket.as_str(),
                    t.path.as_str(),
                    t.existing.as_ref().map_or(0, |e| e.id),
                    profile.data(),
                    profile.parity(),
                    self.cfg.codec.as_u8(),
                    self.cfg.chunk_size,
                    p.mode,
                    p.uid,
                    p.gid,
                    p.if_version,
                    p.if_absent,
                    p.base_version,
                    expires_ns,
                    p.encrypted,
                    p.size_hint,
                    now
                ],
            )
            .await?;
            Ok(())
        });
        let placements = if p.chunks.is_empty() {
            Vec::new()
        } else {
            match self.place(caller, &write_id, &p.chunks, &[]).await {
                Ok(pl) => pl,
                Err(e) => {
                    let _ = self.abort(caller, &write_id).await;
                    return Err(e);
                }
            }
        };
        Ok(Begun {
            write_id,
            profile,
            codec: self.cfg.codec,
            chunk_size: self.cfg.chunk_size,
            success_threshold: self.cfg.threshold(profile),
            inline_threshold: self.cfg.inline_threshold,
            expires_at: expires_ns / 1_000_000_000,
            placements,
        })
    }

    /// Places chunks of a write (again, for indices placed before: e.g. avoiding failed nodes).
    pub async fn place(
        &self,
        caller: &Caller,
        write_id: &str,
        chunks: &[(u32, ChunkMeta)],
        avoid: &[String],
    ) -> Result<Vec<v1::ChunkPlacement>> {
        let nodes = self.registry.live_nodes().await?;
        let token_exp = now_secs() + self.cfg.token_ttl_secs;
        let threshold = |p: Profile| self.cfg.threshold(p);
        let out = write_tx!(self.db, tx => {
            let s = load_session(&mut tx, write_id).await?;
            check_session_owner(caller, &s)?;
            check_live(&s)?;
            let placed = load_placed(&mut tx, write_id).await?;
            let mut out = Vec::new();
            for (idx, meta) in chunks {
                if meta.profile != s.profile {
                    return Err(Error::invalid(format!(
                        "chunk {idx} is encoded {}, but this write uses {}",
                        meta.profile, s.profile
                    )));
                }
                if meta.size > s.chunk_size as u64 {
                    return Err(Error::invalid(format!(
                        "chunk {idx} holds {} bytes, more than the chunk size {}",
                        meta.size, s.chunk_size
                    )));
                }
                if let Some(old) = placed.get(idx) {
                    if old.durable {
                        return Err(Error::invalid(format!("chunk {idx} was already checkpointed")));
                    }
                    if old.dedup {
                        unref_chunk(&mut tx, &chunk_key(&old.meta), 1).await?;
                    }
                }
                // Deduplicate only against the identical encoding (see `layout::chunk_key`).
                let key = chunk_key(meta);
                let healthy = tx
                    .one(
                        "SELECT COUNT(*) FROM shards s JOIN nodes n ON n.id = s.node_id \
                         WHERE s.chunk_id = $1 AND s.state = $2 AND n.state IN ($3, $4)",
                        args![&key, v1::ShardState::Stored as i64, v1::NodeState::Online as i64, v1::NodeState::Draining as i64],
                    )
                    .await?
                    .u64(0)?;
                let dedup = healthy >= threshold(meta.profile) as u64;
                let (nodes_for, targets) = if dedup {
                    ref_chunk(&mut tx, &key, 1).await?;
                    (Vec::new(), Vec::new())
                } else {
                    let assignment = crate::placement::place_chunk(
                        &nodes,
                        avoid,
                        s.profile,
                        meta.shard_size as u64,
                        &meta.id,
                        self.cfg.limits,
                    )?;
                    let mut per_node: BTreeMap<&str, Vec<Hash>> = BTreeMap::new();
                    for (i, n) in assignment.iter().enumerate() {
                        per_node.entry(n.as_str()).or_default().push(meta.shard_hashes[i]);
                    }
                    let tokens: HashMap<&str, Vec<u8>> = per_node
                        .iter()
                        .map(|(n, hs)| (*n, crate::placement::client_token(&self.signer, Op::Put, n, hs.clone(), token_exp)))
                        .collect();
                    let addr: HashMap<&str, &str> = nodes.iter().map(|n| (n.id.as_str(), n.address.as_str())).collect();
                    let targets: Vec<v1::ShardTarget> = assignment
                        .iter()
                        .enumerate()
                        .map(|(i, n)| v1::ShardTarget {
                            index: i as u32,
                            node_id: n.clone(),
                            address: addr.get(n.as_str()).copied().unwrap_or_default().to_string(),
                            token: tokens[n.as_str()].clone(),
                        })
                        .collect();
                    for (i, n) in assignment.iter().enumerate() {
                        tx.exec(
                            "INSERT INTO write_targets (write_id, node_id, hash) VALUES ($1, $2, $3) \
                             ON CONFLICT (write_id, node_id, hash) DO NOTHING",
                            args![write_id, n.as_str(), &meta.shard_hashes[i]],
                        )
                        .await?;
                    }
                    (assignment, targets)
                };
                let info = v1::ChunkInfo::from(meta).encode_to_vec();
                tx.exec(
                    "INSERT INTO write_chunks (write_id, idx, chunk_id, info, dedup, nodes, stored, durable) \
                     VALUES ($1, $2, $3, $4, $5, $6, '', 0) ON CONFLICT (write_id, idx) DO UPDATE SET \
                     chunk_id = excluded.chunk_id, info = excluded.info, dedup = excluded.dedup, \
                     nodes = excluded.nodes, stored = '', durable = 0",
                    args![write_id, *idx, &key, info, dedup, nodes_for.join("\n")],
                )
                .await?;
                out.push(v1::ChunkPlacement {
                    index: *idx,
                    deduplicated: dedup,
                    targets,
                });
            }
            Ok(out)
        });
        Ok(out)
    }

    /// Validates reported chunks against their placement; returns `(index, stored flags)`.
    async fn validate_stored(
        &self,
        s: &Session,
        placed: &BTreeMap<u32, Placed>,
        chunks: &[Committed],
    ) -> Result<Vec<(u32, Vec<bool>)>> {
        let threshold = self.cfg.threshold(s.profile) as usize;
        let mut out = Vec::new();
        let mut claims: BTreeMap<String, Vec<Hash>> = BTreeMap::new();
        for c in chunks {
            let p = placed.get(&c.index).ok_or_else(|| {
                Error::invalid(format!(
                    "chunk {} was never placed in write {}",
                    c.index, s.id
                ))
            })?;
            if p.meta.id != c.id {
                return Err(Error::HashMismatch(format!(
                    "chunk {} was placed as {} but committed as {}",
                    c.index, p.meta.id, c.id
                )));
            }
            let n = s.profile.total();
            let mut flags = vec![false; n];
            if p.dedup {
                out.push((c.index, flags));
                continue;
            }
            for (i, node) in &c.stored {
                let i = *i as usize;
                let Some(placed_node) = p.nodes.get(i) else {
                    return Err(Error::invalid(format!(
                        "chunk {} has no shard {i} (profile {})",
                        c.index, s.profile
                    )));
                };
                if placed_node != node {
                    return Err(Error::invalid(format!(
                        "shard {i} of chunk {} was placed on node {placed_node}, not {node}",
                        c.index
                    )));
                }
                flags[i] = true;
            }
            for (i, f) in flags.iter().enumerate() {
                if *f {
                    claims
                        .entry(p.nodes[i].clone())
                        .or_default()
                        .push(p.meta.shard_hashes[i]);
                }
            }
            out.push((c.index, flags));
        }
        // Nodes that did not answer the check: their shards count as missing, but a shortfall
        // they cause is the cluster's (retry), not a false claim by the client.
        let mut unverified: HashSet<(u32, usize)> = HashSet::new();
        if self.cfg.verify_commits && !claims.is_empty() {
            let (present, silent) = self.has_shards(claims).await;
            for (idx, flags) in &mut out {
                let p = &placed[idx];
                for (i, f) in flags.iter_mut().enumerate() {
                    if *f && !present.contains(&(p.nodes[i].clone(), p.meta.shard_hashes[i])) {
                        *f = false;
                        if silent.contains(&p.nodes[i]) {
                            unverified.insert((*idx, i));
                        }
                    }
                }
            }
        }
        for (idx, flags) in &out {
            let p = &placed[idx];
            if p.dedup {
                continue;
            }
            let have = flags.iter().filter(|f| **f).count();
            if have < threshold {
                let missing: Vec<String> = flags
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| !**f)
                    .map(|(i, _)| format!("{i}@{}", p.nodes[i]))
                    .collect();
                let msg = format!(
                    "chunk {idx} has {have} of {} shards stored, fewer than the success threshold \
                     {threshold}; missing: {}",
                    s.profile.total(),
                    missing.join(", ")
                );
                let silent: std::collections::BTreeSet<&str> = (0..flags.len())
                    .filter(|i| unverified.contains(&(*idx, *i)))
                    .map(|i| p.nodes[i].as_str())
                    .collect();
                return Err(if silent.is_empty() {
                    Error::PreconditionFailed(msg)
                } else {
                    let silent: Vec<&str> = silent.into_iter().collect();
                    Error::Unavailable(format!(
                        "{msg} (nodes that did not answer: {}; write the chunk again)",
                        silent.join(", ")
                    ))
                });
            }
        }
        Ok(out)
    }

    /// Asks the nodes which of the claimed shards they hold: the shards confirmed, and the
    /// nodes that could not be asked (unknown, unreachable, or no answer in time).
    async fn has_shards(
        &self,
        claims: BTreeMap<String, Vec<Hash>>,
    ) -> (HashSet<(String, Hash)>, HashSet<String>) {
        let nodes = self.registry.node_map().await.unwrap_or_default();
        let mut tasks = Vec::new();
        let mut silent = HashSet::new();
        for (node, hashes) in claims {
            let Some(addr) = nodes.get(&node).map(|n| n.address.clone()) else {
                silent.insert(node);
                continue;
            };
            let ch = self.channel(&addr);
            let token = self.signer.sign(&cyxcloud_core::token::Capability {
                role: cyxcloud_core::token::Role::Gateway,
                ops: Op::Get as u8,
                node_id: node.clone(),
                expires_at: crate::db::now_secs() + 60,
                scope: cyxcloud_core::token::Scope::Shards(hashes.clone()),
            });
            tasks.push(tokio::spawn(async move {
                let Ok(ch) = ch else {
                    return (node, hashes, None);
                };
                let r = tokio::time::timeout(
                    Duration::from_secs(10),
                    v1::chunk_service_client::ChunkServiceClient::new(ch).has_shards(
                        v1::HasShardsRequest {
                            hashes: hashes.iter().map(|h| h.0.to_vec()).collect(),
                            token,
                        },
                    ),
                )
                .await;
                let present = match r {
                    Ok(Ok(resp)) => Some(resp.into_inner().present),
                    _ => None,
                };
                (node, hashes, present)
            }));
        }
        let mut out = HashSet::new();
        for t in tasks {
            match t.await {
                Ok((node, hashes, Some(present))) => {
                    for (h, p) in hashes.into_iter().zip(present) {
                        if p {
                            out.insert((node.clone(), h));
                        }
                    }
                }
                Ok((node, _, None)) => {
                    silent.insert(node);
                }
                Err(_) => {}
            }
        }
        (out, silent)
    }

    fn channel(&self, addr: &str) -> Result<tonic::transport::Channel> {
        let mut m = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = m.get(addr) {
            return Ok(c.clone());
        }
        let ca = self.tls.as_ref().map(|t| t.ca.cert_pem().as_bytes());
        let c = cyxcloud_proto::channel::endpoint(addr, ca)
            .map_err(|e| Error::invalid(format!("node address {addr}: {e}")))?
            .connect_timeout(Duration::from_secs(3))
            .connect_lazy();
        m.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// Records chunks whose shards are durable so a resumed upload can skip them.
    pub async fn checkpoint(
        &self,
        caller: &Caller,
        write_id: &str,
        chunks: &[Committed],
    ) -> Result<v1::WriteStatus> {
        let (s, placed) = self.snapshot(caller, write_id).await?;
        let flags = self.validate_stored(&s, &placed, chunks).await?;
        let ttl = (self.cfg.write_ttl_secs as i64) * 1_000_000_000;
        write_tx!(self.db, tx => {
            let cur = load_session(&mut tx, write_id).await?;
            check_live(&cur)?;
            for (idx, f) in &flags {
                let stored: Vec<u32> = f.iter().enumerate().filter(|(_, x)| **x).map(|(i, _)| i as u32).collect();
                tx.exec(
                    "UPDATE write_chunks SET durable = 1, stored = $3 WHERE write_id = $1 AND idx = $2",
                    args![write_id, *idx, join_idx(&stored)],
                )
                .await?;
            }
            tx.exec("UPDATE writes SET expires_ns = $2 WHERE id = $1", args![write_id, now_ns() + ttl]).await?;
            Ok(())
        });
        self.status(caller, write_id).await
    }

    pub async fn status(&self, caller: &Caller, write_id: &str) -> Result<v1::WriteStatus> {
        let (s, placed) = self.snapshot(caller, write_id).await?;
        let durable: Vec<u32> = placed
            .values()
            .filter(|p| p.durable)
            .map(|p| p.idx)
            .collect();
        let mut bytes = 0u64;
        for i in 0u32.. {
            match placed.get(&i) {
                Some(p) if p.durable => bytes += p.meta.size,
                _ => break,
            }
        }
        Ok(v1::WriteStatus {
            write_id: write_id.to_string(),
            durable_chunks: durable,
            durable_bytes: bytes,
            expires_at: s.expires_ns / 1_000_000_000,
            chunk_size: s.chunk_size,
            data_shards: s.profile.data() as u32,
            parity_shards: s.profile.parity() as u32,
            codec: s.codec,
            success_threshold: self.cfg.threshold(s.profile),
            encrypted: s.encrypted,
        })
    }

    async fn snapshot(
        &self,
        caller: &Caller,
        write_id: &str,
    ) -> Result<(Session, BTreeMap<u32, Placed>)> {
        let mut tx = self.db.read().await?;
        let snapshot = async {
            let s = load_session(&mut tx, write_id).await?;
            check_session_owner(caller, &s)?;
            check_live(&s)?;
            let placed = load_placed(&mut tx, write_id).await?;
            Ok((s, placed))
        }
        .await;
        // Ended either way, so its connection is reused rather than closed.
        tx.rollback().await?;
        snapshot
    }

    /// Installs the written version atomically.
    pub async fn commit(
        &self,
        caller: &Caller,
        write_id: &str,
        chunks: &[Committed],
        size: u64,
        attrs: &FileAttrs,
    ) -> Result<Entry> {
        let (s, placed) = self.snapshot(caller, write_id).await?;
        // Chunks checkpointed before and not repeated count as committed.
        let mut all: BTreeMap<u32, Committed> = BTreeMap::new();
        for p in placed.values().filter(|p| p.durable) {
            all.insert(
                p.idx,
                Committed {
                    index: p.idx,
                    id: p.meta.id,
                    stored: p
                        .stored
                        .iter()
                        .map(|i| (*i, p.nodes[*i as usize].clone()))
                        .collect(),
                },
            );
        }
        for c in chunks {
            all.insert(c.index, c.clone());
        }
        let listed: Vec<Committed> = all.values().cloned().collect();
        let flags: BTreeMap<u32, Vec<bool>> = self
            .validate_stored(&s, &placed, &listed)
            .await?
            .into_iter()
            .collect();
        let e = write_tx!(self.db, tx => {
            let cur = load_session(&mut tx, write_id).await?;
            check_live(&cur)?;
            // Base chunks (partial rewrite) fill the indices this write did not replace.
            let mut layout: BTreeMap<u32, (Hash, u64, bool)> = BTreeMap::new(); // idx -> (id, size, from_base)
            if s.base_version != 0 {
                let rows = tx
                    .all(
                        "SELECT vc.idx, vc.chunk_id, c.size FROM version_chunks vc JOIN chunks c ON c.id = vc.chunk_id \
                         WHERE vc.version_id = $1",
                        args![s.base_version],
                    )
                    .await?;
                for r in &rows {
                    layout.insert(r.u32(0)?, (r.hash(1)?, r.u64(2)?, true));
                }
            }
            for (idx, p) in placed.iter().filter(|(i, _)| all.contains_key(i)) {
                layout.insert(*idx, (chunk_key(&p.meta), p.meta.size, false));
            }
            // Contiguous from 0, covering exactly [0, size) (the last chunk may reach past a
            // truncation point only when it comes from the base version).
            let mut offsets = Vec::new();
            let mut off = 0u64;
            for (want, (idx, (id, len, from_base))) in layout.iter().enumerate() {
                if *idx != want as u32 {
                    return Err(Error::invalid(format!("chunk {want} is missing from the layout")));
                }
                if off >= size {
                    if *from_base {
                        break;
                    }
                    return Err(Error::invalid(format!(
                        "chunk {idx} starts at byte {off}, at or past the file size {size}"
                    )));
                }
                offsets.push((*id, off, *from_base, *idx));
                off += len;
            }
            if off < size {
                return Err(Error::invalid(format!(
                    "the chunks hold {off} bytes but the file size is {size}"
                )));
            }
            if off > size && offsets.last().is_some_and(|l| !l.2) {
                return Err(Error::invalid(format!(
                    "the chunks hold {off} bytes, more than the file size {size}"
                )));
            }
            // Namespace side: the target file (created with its parents when new).
            let target = if s.inode_id != 0 {
                Ref::Id(s.inode_id)
            } else {
                Ref::Path { bucket: s.bucket.clone(), path: s.path.clone() }
            };
            let t = resolve_target_for_commit(&mut tx, caller, &target).await?;
            check_conditions(t.existing.as_ref(), s.if_version, s.if_absent)?;
            if s.base_version != 0 && t.existing.as_ref().map(|e| e.version) != Some(s.base_version) {
                return Err(Error::PreconditionFailed(
                    "the file changed since this write began from its base version".into(),
                ));
            }
            let mut version_chunks = Vec::new();
            for (id, off, from_base, idx) in &offsets {
                if *from_base {
                    ref_chunk(&mut tx, id, 1).await?;
                } else {
                    let p = &placed[idx];
                    if !p.dedup {
                        put_chunk(&mut tx, &p.meta, &p.nodes, &flags[idx]).await?;
                    }
                    // A deduplicated chunk's reference was taken at placement; it moves to the version.
                }
                version_chunks.push((*id, *off));
            }
            // Placed chunks that did not make it into the version give back their pins.
            for (idx, p) in &placed {
                if p.dedup && !offsets.iter().any(|o| o.3 == *idx && !o.2) {
                    unref_chunk(&mut tx, &chunk_key(&p.meta), 1).await?;
                }
            }
            let e = install_file(&mut tx, t, &s, size, None, &version_chunks, attrs).await?;
            finish_session(&mut tx, write_id).await?;
            Ok(e)
        });
        Ok(e)
    }

    /// Abandons a write: releases its pins and queues its uploaded shards for deletion.
    pub async fn abort(&self, caller: &Caller, write_id: &str) -> Result<()> {
        write_tx!(self.db, tx => {
            let s = load_session(&mut tx, write_id).await?;
            check_session_owner(caller, &s)?;
            let placed = load_placed(&mut tx, write_id).await?;
            for p in placed.values().filter(|p| p.dedup) {
                unref_chunk(&mut tx, &chunk_key(&p.meta), 1).await?;
            }
            finish_session(&mut tx, write_id).await
        });
        Ok(())
    }

    /// Aborts every expired session; returns how many.
    pub async fn expire(&self) -> Result<usize> {
        let ids: Vec<String> = self
            .db
            .all(
                "SELECT id FROM writes WHERE expires_ns < $1 LIMIT 1000",
                args![now_ns()],
            )
            .await?
            .iter()
            .map(|r| r.text(0))
            .collect::<Result<_>>()?;
        for id in &ids {
            match self.abort(&Caller::system(), id).await {
                Ok(()) => {
                    tracing::info!(write = %id, "expired write aborted; its shards are released")
                }
                Err(Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(ids.len())
    }

    /// Stores a small file in the metadata store itself.
    pub async fn write_inline(
        &self,
        caller: &Caller,
        target: &Ref,
        data: &[u8],
        if_version: u64,
        if_absent: bool,
        attrs: &FileAttrs,
    ) -> Result<Entry> {
        if data.len() > self.cfg.inline_threshold as usize {
            return Err(Error::invalid(format!(
                "{} bytes is more than the inline threshold {}: use BeginWrite",
                data.len(),
                self.cfg.inline_threshold
            )));
        }
        if attrs.new_id != 0 && !if_absent {
            return Err(Error::invalid(
                "a reserved id (new_id) names a new file: it needs if_absent",
            ));
        }
        let e = write_tx!(self.db, tx => {
            let t = resolve_target_for_commit(&mut tx, caller, target).await?;
            check_conditions(t.existing.as_ref(), if_version, if_absent)?;
            let s = Session {
                id: String::new(),
                user_id: caller.user_id.clone(),
                bucket: t.bucket.clone(),
                path: t.path.clone(),
                inode_id: 0,
                profile: self.cfg.profile,
                codec: 0,
                chunk_size: 0,
                mode: attrs.mode,
                uid: attrs.uid,
                gid: attrs.gid,
                if_version,
                if_absent,
                base_version: 0,
                expires_ns: 0,
                encrypted: false,
            };
            install_file(&mut tx, t, &s, data.len() as u64, Some(data), &[], attrs).await
        });
        Ok(e)
    }

    /// Sets aside `count` inode ids for files `caller` will create with
    /// [`Writes::write_inline`] (`FileAttrs::new_id`). They are taken from the inodes' own
    /// sequence, so no other file ever gets them; reservations past their expiry and
    /// [`RESERVATION_GRACE`] are dropped here.
    pub async fn reserve_ids(&self, caller: &Caller, count: u32) -> Result<(Vec<u64>, i64)> {
        if count == 0 || count > MAX_RESERVED_IDS {
            return Err(Error::invalid(format!(
                "reserve 1 to {MAX_RESERVED_IDS} ids, not {count}"
            )));
        }
        let now = now_ns();
        let expires = now + RESERVATION_TTL.as_nanos() as i64;
        let ids = write_tx!(self.db, tx => {
            tx.exec(
                "DELETE FROM reserved_ids WHERE expires_ns < $1",
                args![now - RESERVATION_GRACE.as_nanos() as i64],
            )
            .await?;
            let rows = if tx.backend() == Backend::Postgres {
                tx.all(
                    "INSERT INTO reserved_ids (id, owner_id, expires_ns) \
                     SELECT nextval(pg_get_serial_sequence('inodes', 'id')), $1, $2 \
                     FROM generate_series(1, $3) RETURNING id",
                    args![caller.user_id.as_str(), expires, count],
                )
                .await?
            } else {
                // AUTOINCREMENT never hands out an id at or below sqlite_sequence's value.
                let last = tx
                    .one(
                        "UPDATE sqlite_sequence SET seq = seq + $1 WHERE name = 'inodes' \
                         RETURNING seq",
                        args![count],
                    )
                    .await?
                    .u64(0)?;
                tx.all(
                    "WITH RECURSIVE r(id) AS (SELECT $1 UNION ALL SELECT id + 1 FROM r \
                       WHERE id < $2) \
                     INSERT INTO reserved_ids (id, owner_id, expires_ns) \
                     SELECT id, $3, $4 FROM r RETURNING id",
                    args![last + 1 - count as u64, last, caller.user_id.as_str(), expires],
                )
                .await?
            };
            rows.iter().map(|r| r.u64(0)).collect::<Result<Vec<u64>>>()
        });
        Ok((ids, expires))
    }
}

/// Like `resolve_target`, for the commit transaction (the path may have changed meanwhile).
async fn resolve_target_for_commit(tx: &mut Tx, caller: &Caller, r: &Ref) -> Result<Target> {
    match r {
        Ref::Id(id) => match crate::namespace::load_inode(tx, *id).await? {
            None => Err(Error::Conflict(format!(
                "file {id} was deleted while it was being written"
            ))),
            Some(_) => resolve_target(tx, caller, r).await,
        },
        Ref::Path { .. } => resolve_target(tx, caller, r).await,
    }
}

/// Ends a session: queues every shard it was allowed to put for deletion (kept if referenced).
async fn finish_session(tx: &mut Tx, write_id: &str) -> Result<()> {
    let targets: Vec<(String, Hash)> = tx
        .all(
            "SELECT node_id, hash FROM write_targets WHERE write_id = $1",
            args![write_id],
        )
        .await?
        .iter()
        .map(|r| Ok((r.text(0)?, r.hash(1)?)))
        .collect::<Result<_>>()?;
    tx.exec(
        "DELETE FROM write_targets WHERE write_id = $1",
        args![write_id],
    )
    .await?;
    tx.exec(
        "DELETE FROM write_chunks WHERE write_id = $1",
        args![write_id],
    )
    .await?;
    tx.exec("DELETE FROM writes WHERE id = $1", args![write_id])
        .await?;
    for (node, hash) in targets {
        let referenced = tx
            .opt(
                "SELECT 1 FROM shards WHERE node_id = $1 AND hash = $2 LIMIT 1",
                args![node.as_str(), &hash],
            )
            .await?
            .is_some();
        if !referenced {
            queue_gc(tx, &node, &hash).await?;
        }
    }
    Ok(())
}

/// Creates or updates the file of `t` with a new version; appends the journal event.
async fn install_file(
    tx: &mut Tx,
    t: Target,
    s: &Session,
    size: u64,
    inline: Option<&[u8]>,
    chunks: &[(Hash, u64)],
    attrs: &FileAttrs,
) -> Result<Entry> {
    let now = now_ns();
    let mtime = attrs.mtime_ns.unwrap_or(now);
    let old = t.existing.as_ref().map(|e| e.inode.clone());
    let meta = InodeMeta {
        user_metadata: attrs.user_metadata.clone(),
        xattrs: old
            .as_ref()
            .map(|o| o.meta.xattrs.clone())
            .unwrap_or_default(),
    };
    let v = NewVersion {
        size,
        inline,
        chunks,
        attrs,
        meta: encode_meta(&meta),
        mtime,
        now,
    };
    let (installed, parent_id, name, bucket, path) = match t.existing {
        Some(e) => {
            let seq = journal::next_seq(tx).await?;
            let installed = install_new_version(tx, e.id, seq, &v).await?;
            release_version(tx, e.version).await?;
            (installed, e.parent_id, e.name, e.bucket, e.path)
        }
        None => {
            let parts: Vec<&str> = t.path.split('/').collect();
            let dir = match t.dir {
                Some(d) => d,
                None => {
                    let b = crate::namespace::walk(tx, &t.bucket, &[]).await?;
                    crate::namespace::ensure_dirs(
                        tx,
                        b,
                        &parts[..parts.len() - 1],
                        (0o755, s.uid, s.gid),
                    )
                    .await?
                    .0
                }
            };
            let name = parts[parts.len() - 1].to_string();
            let n = crate::namespace::NewInode {
                kind: Kind::File,
                mode: if s.mode == 0 { 0o644 } else { s.mode & 0o7777 },
                uid: s.uid,
                gid: s.gid,
                size: 0,
                symlink_target: "",
                owner_id: &t.owner_id,
                marker: false,
                public_read: false,
            };
            let installed = create_file(tx, dir.id, &name, &n, &v, &s.user_id).await?;
            tx.touch(dir.id);
            let path = crate::namespace::join(&dir.path, &name);
            (installed, dir.id, name, t.bucket, path)
        }
    };
    let created = old.is_none();
    let seq = installed.change_seq;
    let old_size = old.as_ref().map_or(0, |o| o.size);
    // The quota is checked here, in the statement that charges the growth.
    charge_usage(tx, &t.owner_id, size as i64 - old_size as i64).await?;
    if !created && parent_id != ROOT_ID {
        crate::namespace::touch_dir(tx, parent_id, now, 0).await?;
    }
    tx.touch(installed.id);
    let e = Entry {
        inode: installed,
        parent_id,
        name,
        bucket,
        path,
    };
    crate::namespace::emit(
        tx,
        seq,
        if created {
            v1::ChangeKind::Create
        } else {
            v1::ChangeKind::Update
        },
        &e,
        None,
    )
    .await?;
    Ok(e)
}

/// The inode columns as a `RETURNING` list of the `inodes` table itself (no alias).
static RETURNED_INODE_COLS: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| crate::namespace::INODE_COLS.replace("i.", ""));

/// What a new version of a file installs.
struct NewVersion<'a> {
    size: u64,
    inline: Option<&'a [u8]>,
    chunks: &'a [(Hash, u64)],
    attrs: &'a FileAttrs,
    meta: Option<Vec<u8>>,
    mtime: i64,
    now: i64,
}

/// Adds version `v` to inode `id` and makes it current (change sequence `seq`); returns the
/// inode as stored.
async fn install_new_version(tx: &mut Tx, id: u64, seq: u64, v: &NewVersion<'_>) -> Result<Inode> {
    let vid = install_version(tx, id, v.size, v.inline, v.chunks).await?;
    // RETURNING hands back the installed inode without another round trip.
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "UPDATE inodes SET size = $2, version_id = $3, etag = $4, content_type = $5, \
             meta = $6, mtime_ns = $7, ctime_ns = $8, change_seq = $9 WHERE id = $1 \
             RETURNING {}",
            *RETURNED_INODE_COLS
        )
    });
    let row = tx
        .opt(
            SQL.as_str(),
            args![
                id,
                v.size,
                vid,
                v.attrs.etag.as_str(),
                v.attrs.content_type.as_str(),
                v.meta.clone(),
                v.mtime,
                v.now,
                seq
            ],
        )
        .await?
        .ok_or_else(|| Error::Internal(format!("file {id} vanished during its commit")))?;
    crate::namespace::inode_from_row(&row, 0)
}

fn not_reserved(id: u64) -> Error {
    Error::invalid(format!(
        "inode id {id} is not reserved for this caller (never, long expired or already used)"
    ))
}

/// A new file `name` in `dir` in one call to the database, where the portable path took six
/// round trips: the journal sequence, the inode (its id drawn first, or a reservation
/// claimed, so the version can point at it), its version, its name, and the directory's
/// times. The namespace write lock is held already. An unclaimable reservation yields no row,
/// and the transaction is rolled back.
async fn create_file(
    tx: &mut Tx,
    dir: u64,
    name: &str,
    n: &crate::namespace::NewInode<'_>,
    v: &NewVersion<'_>,
    user: &str,
) -> Result<Inode> {
    type Sql = std::sync::LazyLock<String>;
    static PG_NEXT: Sql =
        Sql::new(|| pg_create("SELECT nextval(pg_get_serial_sequence('inodes', 'id')) AS id"));
    static PG_RESERVED: Sql = Sql::new(|| {
        pg_create("DELETE FROM reserved_ids WHERE id = $18 AND owner_id = $19 RETURNING id")
    });
    static SQLITE_NEXT: Sql = Sql::new(|| {
        sqlite_create(
            "UPDATE sqlite_sequence SET seq = seq + 1 WHERE name = 'inodes'",
            "(SELECT seq FROM sqlite_sequence WHERE name = 'inodes')",
        )
    });
    static SQLITE_RESERVED: Sql = Sql::new(|| {
        sqlite_create(
            "DELETE FROM reserved_ids WHERE id = $18 AND owner_id = $19",
            "$18",
        )
    });
    let mut a = args![
        v.size,
        v.inline.map(<[u8]>::to_vec),
        v.now,
        dir,
        name,
        crate::namespace::sort_key(name, n.kind),
        n.kind as i64,
        n.mode,
        n.uid,
        n.gid,
        v.mtime,
        v.attrs.etag.as_str(),
        v.attrs.content_type.as_str(),
        v.meta.clone(),
        n.owner_id,
        n.marker,
        n.public_read
    ];
    let reserved = v.attrs.new_id != 0;
    if reserved {
        a.push(v.attrs.new_id.into());
        a.push(user.into());
    }
    let sql = match (tx.backend(), reserved) {
        (Backend::Postgres, false) => PG_NEXT.as_str(),
        (Backend::Postgres, true) => PG_RESERVED.as_str(),
        (Backend::Sqlite, false) => SQLITE_NEXT.as_str(),
        (Backend::Sqlite, true) => SQLITE_RESERVED.as_str(),
    };
    let row = tx
        .opt(sql, a)
        .await?
        .ok_or_else(|| not_reserved(v.attrs.new_id))?;
    let inode = crate::namespace::inode_from_row(&row, 0)?;
    tx.last_seq = tx.last_seq.max(inode.change_seq);
    crate::layout::link_chunks(tx, inode.version, v.chunks).await?;
    Ok(inode)
}

/// PostgreSQL: [`create_file`] as one statement of data-modifying CTEs (each runs once,
/// whether the outer statement reads it or not); `new_id` yields the id as `n.id`.
fn pg_create(new_id: &str) -> String {
    format!(
        "WITH s AS (UPDATE counters SET value = value + 1 WHERE name = 'journal' RETURNING value), \
         n AS ({new_id}), \
         v AS (INSERT INTO versions (inode_id, size, inline_data, created_ns) \
               SELECT n.id, $1, $2, $3 FROM n RETURNING id), \
         d AS (INSERT INTO dentries (parent_id, name, sort_key, inode_id, kind) \
               SELECT $4, $5, $6, n.id, $7 FROM n), \
         p AS (UPDATE inodes SET mtime_ns = $3, ctime_ns = $3 WHERE id = $4) \
         INSERT INTO inodes (id, kind, mode, uid, gid, size, atime_ns, mtime_ns, ctime_ns, \
           btime_ns, nlink, version_id, etag, content_type, meta, symlink_target, owner_id, \
           change_seq, marker, public_read) \
         SELECT n.id, $7, $8, $9, $10, $1, $3, $11, $3, $3, 1, v.id, $12, $13, $14, '', $15, \
           s.value, $16, $17 FROM n, v, s \
         RETURNING {}",
        *RETURNED_INODE_COLS
    )
}

/// SQLite: [`create_file`] as a script of seven statements the connection runs in one call
/// (SQLite has no data-modifying CTEs). Arguments are numbered (`$N`), so each statement
/// binds the ones it names. `draw` takes the id (the next of the inodes' AUTOINCREMENT
/// sequence, or a reservation claimed), `id` names it; each later insert runs only when the
/// statement before it changed a row (`changes()`), and the final select returns only an
/// inode of this change.
fn sqlite_create(draw: &str, id: &str) -> String {
    format!(
        "UPDATE counters SET value = value + 1 WHERE name = 'journal'; \
         {draw}; \
         INSERT INTO versions (inode_id, size, inline_data, created_ns) \
           SELECT {id}, $1, $2, $3 WHERE changes() = 1; \
         INSERT INTO inodes (id, kind, mode, uid, gid, size, atime_ns, mtime_ns, ctime_ns, \
           btime_ns, nlink, version_id, etag, content_type, meta, symlink_target, owner_id, \
           change_seq, marker, public_read) \
           SELECT {id}, $7, $8, $9, $10, $1, $3, $11, $3, $3, 1, last_insert_rowid(), $12, \
             $13, $14, '', $15, (SELECT value FROM counters WHERE name = 'journal'), $16, \
             $17 WHERE changes() = 1; \
         INSERT INTO dentries (parent_id, name, sort_key, inode_id, kind) \
           SELECT $4, $5, $6, {id}, $7 WHERE changes() = 1; \
         UPDATE inodes SET mtime_ns = $3, ctime_ns = $3 WHERE id = $4; \
         SELECT {} FROM inodes WHERE id = {id} \
           AND change_seq = (SELECT value FROM counters WHERE name = 'journal')",
        *RETURNED_INODE_COLS
    )
}
