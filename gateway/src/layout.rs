//! File versions and chunk layouts.
//!
//! A version is an ordered list of chunks (`version_chunks`: index, byte offset, chunk id) or
//! inline bytes. A chunk (`chunks`) is content addressed by its id and reference counted by the
//! versions (and in-flight writes, see `writes`) that use it; its `k + m` shards (`shards`) each
//! record a blake3, a node and a state. When the last reference goes, the chunk's rows go and
//! every `(node, shard hash)` no longer referenced is queued for deletion on its node
//! (`gc_queue`, delivered by heartbeat; see `registry`).

use cyxcloud_core::codec::{CodecId, Profile};
use cyxcloud_core::{ChunkMeta, Hash};
use cyxcloud_proto::v1;

use crate::accounts::Caller;
use crate::db::{Db, Tx, args, now_ns};
use crate::error::{Error, Result};
use crate::namespace::{Entry, Inode, Kind, Ref, check_owner, describe, resolve_ref};

/// The key a chunk is stored under: a hash of its whole description (content id, sizes,
/// codec, profile and every shard hash), not of its content id alone. Deduplication and
/// references go by this key, so knowing a chunk's content id (a public file hash, say) is
/// not enough to link someone else's stored data into your file: a writer must present the
/// exact shard hashes, which only a holder of the data (or an earlier reader) knows.
pub fn chunk_key(meta: &ChunkMeta) -> Hash {
    use prost::Message;
    let mut h = blake3::Hasher::new_derive_key("cyxcloud gateway chunk key v1");
    h.update(&v1::ChunkInfo::from(meta).encode_to_vec());
    Hash(*h.finalize().as_bytes())
}

/// Largest inline file a `resize` may produce (bigger extensions must be written).
pub const MAX_INLINE_RESIZE: u64 = 1 << 20;

/// One shard of a chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardRec {
    pub index: u32,
    pub hash: Hash,
    pub node_id: String,
    pub state: v1::ShardState,
}

/// A chunk of a file version, with where its shards are.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkLayout {
    /// Storage key ([`chunk_key`]).
    pub key: Hash,
    pub index: u32,
    pub offset: u64,
    pub meta: ChunkMeta,
    pub shards: Vec<ShardRec>,
}

/// What a reader needs for a range of a file.
#[derive(Debug, Clone)]
pub struct Layout {
    pub entry: Entry,
    pub inline: Option<Vec<u8>>,
    pub chunks: Vec<ChunkLayout>,
}

pub(crate) fn meta_from_row(r: &crate::db::Row, o: usize) -> Result<ChunkMeta> {
    let codec = CodecId::from_u8(r.u32(o + 3)? as u8)
        .map_err(|e| Error::Corrupt(format!("chunk codec: {e}")))?;
    let profile = Profile::new(r.u32(o + 4)? as usize, r.u32(o + 5)? as usize)
        .map_err(|e| Error::Corrupt(format!("chunk profile: {e}")))?;
    Ok(ChunkMeta {
        id: r.hash(o)?,
        size: r.u64(o + 1)?,
        encoded_size: r.u64(o + 2)?,
        codec,
        profile,
        shard_size: r.u32(o + 6)?,
        encrypted: r.bool(o + 7)?,
        shard_hashes: Vec::new(),
    })
}

/// Columns read by [`meta_from_row`] from `chunks c`.
pub(crate) const CHUNK_COLS: &str = "c.content_id, c.size, c.encoded_size, c.codec, c.data_shards, c.parity_shards, c.shard_size, c.encrypted, c.id";

fn shard_state(v: i64) -> v1::ShardState {
    v1::ShardState::try_from(v as i32).unwrap_or(v1::ShardState::Unspecified)
}

/// Loads the shards of the given chunks (fills `meta.shard_hashes` too).
pub(crate) async fn load_shards(q: &mut Tx, chunks: &mut [ChunkLayout]) -> Result<()> {
    for c in chunks.iter_mut() {
        let rows = q
            .all(
                "SELECT idx, hash, node_id, state FROM shards WHERE chunk_id = $1 ORDER BY idx",
                args![&c.key],
            )
            .await?;
        c.shards = rows
            .iter()
            .map(|r| {
                Ok(ShardRec {
                    index: r.u32(0)?,
                    hash: r.hash(1)?,
                    node_id: r.text(2)?,
                    state: shard_state(r.i64(3)?),
                })
            })
            .collect::<Result<_>>()?;
        c.meta.shard_hashes = c.shards.iter().map(|s| s.hash).collect();
        if c.meta.shard_hashes.len() != c.meta.profile.total() {
            return Err(Error::Corrupt(format!(
                "chunk {} has {} shard rows, expected {}",
                c.meta.id,
                c.meta.shard_hashes.len(),
                c.meta.profile.total()
            )));
        }
    }
    Ok(())
}

/// Chunks of version `vid` overlapping `[offset, end)`.
pub(crate) async fn version_chunks(
    tx: &mut Tx,
    vid: u64,
    offset: u64,
    end: u64,
) -> Result<Vec<ChunkLayout>> {
    let sql = format!(
        "SELECT vc.idx, vc.offset_bytes, {CHUNK_COLS} FROM version_chunks vc \
         JOIN chunks c ON c.id = vc.chunk_id WHERE vc.version_id = $1 \
         AND vc.offset_bytes < $2 AND vc.offset_bytes + c.size > $3 ORDER BY vc.idx"
    );
    let rows = tx.all(sql, args![vid, end, offset]).await?;
    let mut out = rows
        .iter()
        .map(|r| {
            Ok(ChunkLayout {
                key: r.hash(10)?,
                index: r.u32(0)?,
                offset: r.u64(1)?,
                meta: meta_from_row(r, 2)?,
                shards: Vec::new(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    load_shards(tx, &mut out).await?;
    Ok(out)
}

/// The layout of a file for the byte range `[offset, offset + length)` (`length` 0 = to the
/// end), read from one snapshot.
pub async fn get_layout(
    db: &Db,
    caller: &Caller,
    r: &Ref,
    offset: u64,
    length: u64,
) -> Result<Layout> {
    let mut tx = db.read().await?;
    let layout = layout_in(&mut tx, caller, r, offset, length).await;
    // Ended either way, so its connection is reused rather than closed.
    tx.rollback().await?;
    layout
}

async fn layout_in(
    tx: &mut crate::db::Tx,
    caller: &Caller,
    r: &Ref,
    offset: u64,
    length: u64,
) -> Result<Layout> {
    let entry = resolve_ref(tx, r).await?;
    check_owner(caller, &entry)?;
    if entry.kind != Kind::File {
        return Err(match entry.kind {
            Kind::Directory | Kind::Bucket => Error::IsDirectory {
                what: describe(&entry),
            },
            _ => Error::invalid(format!("{} is not a file", describe(&entry))),
        });
    }
    // Offsets are stored as BIGINT: keep the bound in i64 range.
    let end = if length == 0 {
        i64::MAX as u64
    } else {
        offset.saturating_add(length).min(i64::MAX as u64)
    };
    let mut inline = None;
    let mut chunks = Vec::new();
    if entry.version != 0 {
        let v = tx
            .opt(
                "SELECT inline_data FROM versions WHERE id = $1",
                args![entry.version],
            )
            .await?
            .ok_or_else(|| {
                Error::Corrupt(format!(
                    "version {} of {} is missing",
                    entry.version,
                    describe(&entry)
                ))
            })?;
        inline = v.opt_blob(0)?;
        if inline.is_none() {
            chunks = version_chunks(tx, entry.version, offset, end).await?;
        }
    }
    Ok(Layout {
        entry,
        inline,
        chunks,
    })
}

/// Stores a new version and makes it current (references are the caller's business).
pub(crate) async fn install_version(
    tx: &mut Tx,
    inode_id: u64,
    size: u64,
    inline: Option<&[u8]>,
    chunks: &[(Hash, u64)],
) -> Result<u64> {
    let vid = tx
        .one(
            "INSERT INTO versions (inode_id, size, inline_data, created_ns) VALUES ($1, $2, $3, $4) \
             RETURNING id",
            args![inode_id, size, inline.map(<[u8]>::to_vec), now_ns()],
        )
        .await?
        .u64(0)?;
    link_chunks(tx, vid, chunks).await?;
    Ok(vid)
}

/// Lists the chunks of version `vid`, in file order.
pub(crate) async fn link_chunks(tx: &mut Tx, vid: u64, chunks: &[(Hash, u64)]) -> Result<()> {
    for (i, (id, offset)) in chunks.iter().enumerate() {
        tx.exec(
            "INSERT INTO version_chunks (version_id, idx, chunk_id, offset_bytes) VALUES ($1, $2, $3, $4)",
            args![vid, i as u64, id, *offset],
        )
        .await?;
    }
    Ok(())
}

/// Releases every version of an inode (the inode is going away).
pub(crate) async fn drop_versions(tx: &mut Tx, inode_id: u64) -> Result<()> {
    let vids: Vec<u64> = tx
        .all(
            "SELECT id FROM versions WHERE inode_id = $1",
            args![inode_id],
        )
        .await?
        .iter()
        .map(|r| r.u64(0))
        .collect::<Result<_>>()?;
    for v in vids {
        release_version(tx, v).await?;
    }
    Ok(())
}

/// Deletes a version and drops one reference per chunk it used.
pub(crate) async fn release_version(tx: &mut Tx, vid: u64) -> Result<()> {
    if vid == 0 {
        return Ok(());
    }
    let ids: Vec<Hash> = tx
        .all(
            "SELECT chunk_id FROM version_chunks WHERE version_id = $1",
            args![vid],
        )
        .await?
        .iter()
        .map(|r| r.hash(0))
        .collect::<Result<_>>()?;
    tx.exec(
        "DELETE FROM version_chunks WHERE version_id = $1",
        args![vid],
    )
    .await?;
    tx.exec("DELETE FROM versions WHERE id = $1", args![vid])
        .await?;
    for id in ids {
        unref_chunk(tx, &id, 1).await?;
    }
    Ok(())
}

/// Adds `n` references to a stored chunk.
pub(crate) async fn ref_chunk(tx: &mut Tx, id: &Hash, n: i64) -> Result<()> {
    let changed = tx
        .exec(
            "UPDATE chunks SET refs = refs + $2 WHERE id = $1",
            args![id, n],
        )
        .await?;
    if changed == 0 {
        return Err(Error::Conflict(format!("chunk {id} is no longer stored")));
    }
    Ok(())
}

/// Drops `n` references; at zero the chunk is forgotten and its shards queued for deletion.
pub(crate) async fn unref_chunk(tx: &mut Tx, id: &Hash, n: i64) -> Result<()> {
    let refs = tx
        .opt(
            "UPDATE chunks SET refs = refs - $2 WHERE id = $1 RETURNING refs",
            args![id, n],
        )
        .await?
        .map(|r| r.i64(0))
        .transpose()?;
    if refs.is_some_and(|r| r <= 0) {
        let shards: Vec<(String, Hash)> = tx
            .all(
                "SELECT node_id, hash FROM shards WHERE chunk_id = $1",
                args![id],
            )
            .await?
            .iter()
            .map(|r| Ok((r.text(0)?, r.hash(1)?)))
            .collect::<Result<_>>()?;
        tx.exec("DELETE FROM shards WHERE chunk_id = $1", args![id])
            .await?;
        tx.exec("DELETE FROM chunks WHERE id = $1", args![id])
            .await?;
        tx.exec("DELETE FROM repairs WHERE chunk_id = $1", args![id])
            .await?;
        tx.exec(
            "DELETE FROM shard_challenges WHERE chunk_id = $1",
            args![id],
        )
        .await?;
        for (node, hash) in shards {
            queue_gc(tx, &node, &hash).await?;
        }
    }
    Ok(())
}

/// Queues `(node, hash)` for deletion on the node (re-checked for references at delivery).
pub(crate) async fn queue_gc(tx: &mut Tx, node: &str, hash: &Hash) -> Result<()> {
    if node.is_empty() {
        return Ok(());
    }
    tx.exec(
        "INSERT INTO gc_queue (node_id, hash, created_ns) VALUES ($1, $2, $3) \
         ON CONFLICT (node_id, hash) DO NOTHING",
        args![node, hash, now_ns()],
    )
    .await?;
    Ok(())
}

/// Stores a chunk's metadata and shards, or adds a reference when it is already stored.
/// `stored` lists the shard indices the nodes acknowledged; the others are recorded as pending
/// and queued for repair. Returns whether the chunk was new.
pub(crate) async fn put_chunk(
    tx: &mut Tx,
    meta: &ChunkMeta,
    nodes: &[String],
    stored: &[bool],
) -> Result<bool> {
    let key = chunk_key(meta);
    let exists = tx
        .opt("SELECT refs FROM chunks WHERE id = $1", args![&key])
        .await?
        .is_some();
    if exists {
        ref_chunk(tx, &key, 1).await?;
        // The copies this write uploaded are not needed: released after commit if unused.
        return Ok(false);
    }
    let now = now_ns();
    tx.exec(
        "INSERT INTO chunks (id, size, encoded_size, codec, data_shards, parity_shards, shard_size, \
         encrypted, refs, created_ns, content_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 1, $9, $10)",
        args![
            &key,
            meta.size,
            meta.encoded_size,
            meta.codec.as_u8(),
            meta.profile.data(),
            meta.profile.parity(),
            meta.shard_size,
            meta.encrypted,
            now,
            &meta.id
        ],
    )
    .await?;
    for (i, h) in meta.shard_hashes.iter().enumerate() {
        let ok = stored.get(i).copied().unwrap_or(false);
        let state = if ok {
            v1::ShardState::Stored
        } else {
            v1::ShardState::Pending
        };
        tx.exec(
            "INSERT INTO shards (chunk_id, idx, hash, node_id, state, audited_ms) \
             VALUES ($1, $2, $3, $4, $5, $6)",
            args![
                &key,
                i,
                h,
                nodes.get(i).cloned().unwrap_or_default(),
                state as i64,
                now / 1_000_000
            ],
        )
        .await?;
        if !ok {
            queue_repair(tx, &key, i as u32, "not stored at commit").await?;
        }
    }
    Ok(true)
}

pub(crate) async fn queue_repair(tx: &mut Tx, chunk: &Hash, idx: u32, reason: &str) -> Result<()> {
    tx.exec(
        "INSERT INTO repairs (chunk_id, idx, reason, created_ns) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (chunk_id, idx) DO NOTHING",
        args![chunk, idx, reason, now_ns()],
    )
    .await?;
    Ok(())
}

/// Truncates or sparse-extends a file: a new version sharing the chunks that still overlap.
pub(crate) async fn resize(tx: &mut Tx, inode: &Inode, size: u64, now: i64) -> Result<()> {
    let old = inode.version;
    let inline = if old == 0 {
        None
    } else {
        tx.opt("SELECT inline_data FROM versions WHERE id = $1", args![old])
            .await?
            .map(|r| r.opt_blob(0))
            .transpose()?
            .flatten()
    };
    let vid = if let Some(mut data) = inline {
        if size > MAX_INLINE_RESIZE {
            return Err(Error::NotSupported(format!(
                "extending a small file beyond {MAX_INLINE_RESIZE} bytes without writing it"
            )));
        }
        data.resize(size as usize, 0);
        install_version(tx, inode.id, size, Some(&data), &[]).await?
    } else {
        let keep: Vec<(Hash, u64)> = if old == 0 {
            Vec::new()
        } else {
            tx.all(
                "SELECT chunk_id, offset_bytes FROM version_chunks WHERE version_id = $1 \
                 AND offset_bytes < $2 ORDER BY idx",
                args![old, size],
            )
            .await?
            .iter()
            .map(|r| Ok((r.hash(0)?, r.u64(1)?)))
            .collect::<Result<_>>()?
        };
        for (id, _) in &keep {
            ref_chunk(tx, id, 1).await?;
        }
        install_version(tx, inode.id, size, None, &keep).await?
    };
    release_version(tx, old).await?;
    tx.exec(
        "UPDATE inodes SET version_id = $2, size = $3, etag = '', mtime_ns = $4 WHERE id = $1",
        args![inode.id, vid, size, now],
    )
    .await?;
    crate::accounts::add_usage(tx, &inode.owner_id, size as i64 - inode.size as i64).await?;
    tx.touch(inode.id);
    Ok(())
}

/// Marks every file using chunk `key` as changed, so cached layouts (with shard locations)
/// are read again.
pub(crate) async fn touch_users(tx: &mut Tx, key: &Hash) -> Result<()> {
    let users: Vec<u64> = tx
        .all(
            "SELECT DISTINCT v.inode_id FROM version_chunks vc JOIN versions v ON v.id = vc.version_id \
             WHERE vc.chunk_id = $1",
            args![key],
        )
        .await?
        .iter()
        .map(|r| r.u64(0))
        .collect::<Result<_>>()?;
    for u in users {
        tx.touch(u);
    }
    Ok(())
}
