//! Proof of storage: which shards to audit next, what an audit found, and each node's score.
//!
//! * Every stored shard carries `audited_ms`, the last time it was audited (or stored: its node
//!   checked the hash then). [`batch`] hands out the oldest shards on online nodes, claiming
//!   them by moving their time to now, so a rebalancer that audits a batch per step covers
//!   every shard once per audit period.
//! * An audit either asks a one-time challenge (a nonce kept here, with the proof
//!   `blake3(nonce || shard)` computed from an earlier verified retrieval: the node cannot
//!   precompute it, and 32 bytes travel) or, when no challenge is in stock, retrieves the whole
//!   shard and checks its blake3; a retrieval brings new challenges.
//! * A failed audit, and a corrupt shard the node's own scrub reports in its heartbeat, mark
//!   the shard corrupt and queue its repair (the rebalancer rebuilds it elsewhere), and count
//!   in the node's record (`node_audits`): audits, failures, consecutive failures, last error.
//! * A reader's report of a corrupt or missing shard is evidence, not a verdict ([`reported`]):
//!   it is taken only with the read token the reader was issued for that shard, and only puts
//!   the shard first in line for an audit; the audit decides. A report the audit finds false
//!   counts against its reporter, and a reporter with [`FALSE_REPORT_LIMIT`] false reports in
//!   an hour is refused until the hour is over.

use cyxcloud_core::Hash;
use cyxcloud_core::token::{Capability, Op, Role, Scope};
use cyxcloud_proto::v1;

use crate::Gateway;
use crate::db::{Db, Tx, args, now_ns, write_tx};
use crate::error::{Error, Result};

const STORED: i64 = v1::ShardState::Stored as i64;
const CORRUPT: i64 = v1::ShardState::Corrupt as i64;
const ONLINE: i64 = v1::NodeState::Online as i64;
/// Challenges kept per shard (one retrieval pays for this many cheap audits).
pub const CHALLENGES_PER_SHARD: usize = 4;
/// False reports (found intact by the audit) a reporter may make per hour.
pub const FALSE_REPORT_LIMIT: i64 = 20;
/// Reports of one reporter waiting for verification at most.
pub const MAX_PENDING_REPORTS: i64 = 256;
/// Reported shards handed out per audit batch on top of the scheduled ones.
const SUSPECTS_PER_BATCH: i64 = 256;
/// A read token still counts for a report this long after it expired.
const REPORT_GRACE_SECS: u64 = 3600;
const HOUR_MS: i64 = 3_600_000;

fn now_ms() -> i64 {
    now_ns() / 1_000_000
}

/// A node's audit record.
pub fn score(
    audits: u64,
    failures: u64,
    consecutive: u32,
    last_ms: i64,
    last_error: String,
) -> v1::AuditScore {
    v1::AuditScore {
        audits,
        failures,
        consecutive_failures: consecutive,
        score: if audits == 0 {
            1.0
        } else {
            audits.saturating_sub(failures) as f64 / audits as f64
        },
        last_audit_ms: last_ms,
        last_error,
    }
}

/// Every node's audit record, by node id.
pub async fn scores(db: &Db) -> Result<std::collections::HashMap<String, v1::AuditScore>> {
    let rows = db
        .all(
            "SELECT node_id, audits, failures, consecutive, last_ms, last_error FROM node_audits",
            args![],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.text(0)?,
                score(r.u64(1)?, r.u64(2)?, r.u32(3)?, r.i64(4)?, r.text(5)?),
            ))
        })
        .collect()
}

/// Counts one audit outcome for `node`.
async fn record(tx: &mut Tx, node: &str, ok: bool, error: &str) -> Result<()> {
    tx.exec(
        "INSERT INTO node_audits (node_id, audits, failures, consecutive, last_ms, last_error) \
         VALUES ($1, 1, $2, $2, $3, $4) ON CONFLICT (node_id) DO UPDATE SET \
         audits = node_audits.audits + 1, failures = node_audits.failures + excluded.failures, \
         consecutive = CASE WHEN excluded.failures > 0 THEN node_audits.consecutive + 1 ELSE 0 END, \
         last_ms = excluded.last_ms, \
         last_error = CASE WHEN excluded.failures > 0 THEN excluded.last_error ELSE node_audits.last_error END",
        args![node, if ok { 0i64 } else { 1i64 }, now_ms(), error],
    )
    .await?;
    Ok(())
}

/// Marks the shard `(chunk, idx)` on `node` with `hash` corrupt and queues its repair; returns
/// whether the layout named it there.
async fn mark_corrupt(
    tx: &mut Tx,
    chunk: &Hash,
    idx: u32,
    node: &str,
    hash: &Hash,
    reason: &str,
) -> Result<bool> {
    let n = tx
        .exec(
            "UPDATE shards SET state = $5 WHERE chunk_id = $1 AND idx = $2 AND node_id = $3 AND hash = $4",
            args![chunk, idx, node, hash, CORRUPT],
        )
        .await?;
    if n > 0 {
        tx.exec(
            "DELETE FROM shard_challenges WHERE chunk_id = $1 AND idx = $2",
            args![chunk, idx],
        )
        .await?;
        crate::layout::queue_repair(tx, chunk, idx, reason).await?;
        crate::layout::touch_users(tx, chunk).await?;
    }
    Ok(n > 0)
}

/// The next `limit` shards to audit (see the module doc).
pub async fn batch(gw: &Gateway, limit: u32, min_age_ms: u64) -> Result<v1::AuditBatchResponse> {
    let limit = limit.clamp(1, 10_000) as i64;
    let now = now_ms();
    let cutoff = now.saturating_sub(min_age_ms.min(i64::MAX as u64) as i64);
    let expires_at = crate::db::now_secs() + 600;
    let signer = gw.signer.clone();
    let resp = write_tx!(gw.db, tx => {
        let counts = tx
            .one(
                "SELECT COUNT(*), COALESCE(SUM(CASE WHEN s.audited_ms < $3 THEN 1 ELSE 0 END), 0) \
                 FROM shards s JOIN nodes n ON n.id = s.node_id WHERE s.state = $1 AND n.state = $2",
                args![STORED, ONLINE, cutoff],
            )
            .await?;
        // Reported shards first (not handed out in the last minute: one audit at a time), then
        // the ones audited longest ago. Reports older than a day (their shard gone or its node
        // offline since) are dropped.
        tx.exec("DELETE FROM shard_reports WHERE reported_ms < $1", args![now - 24 * HOUR_MS])
            .await?;
        let mut rows = tx
            .all(
                "SELECT s.chunk_id, s.idx, s.hash, s.node_id, n.address, c.shard_size, s.audited_ms \
                 FROM shards s JOIN nodes n ON n.id = s.node_id JOIN chunks c ON c.id = s.chunk_id \
                 WHERE s.state = $1 AND n.state = $2 AND EXISTS \
                 (SELECT 1 FROM shard_reports r WHERE r.chunk_id = s.chunk_id AND r.idx = s.idx \
                 AND r.node_id = s.node_id AND r.claimed_ms < $3) ORDER BY s.audited_ms LIMIT $4",
                args![STORED, ONLINE, now - 60_000, SUSPECTS_PER_BATCH],
            )
            .await?;
        for r in &rows {
            tx.exec(
                "UPDATE shard_reports SET claimed_ms = $4 WHERE chunk_id = $1 AND idx = $2 AND node_id = $3",
                args![&r.hash(0)?, r.u32(1)?, r.text(3)?, now],
            )
            .await?;
        }
        let suspects: std::collections::HashSet<(Hash, u32)> = rows
            .iter()
            .map(|r| Ok((r.hash(0)?, r.u32(1)?)))
            .collect::<Result<_>>()?;
        for r in tx
            .all(
                "SELECT s.chunk_id, s.idx, s.hash, s.node_id, n.address, c.shard_size, s.audited_ms \
                 FROM shards s JOIN nodes n ON n.id = s.node_id JOIN chunks c ON c.id = s.chunk_id \
                 WHERE s.state = $1 AND n.state = $2 AND s.audited_ms < $3 \
                 ORDER BY s.audited_ms, s.chunk_id, s.idx LIMIT $4",
                args![STORED, ONLINE, cutoff, limit],
            )
            .await?
        {
            if !suspects.contains(&(r.hash(0)?, r.u32(1)?)) {
                rows.push(r);
            }
        }
        let mut shards = Vec::with_capacity(rows.len());
        for r in &rows {
            let (chunk, idx, hash, node) = (r.hash(0)?, r.u32(1)?, r.hash(2)?, r.text(3)?);
            // Claimed: another rebalancer's batch skips it (compare-and-set on the old time).
            let claimed = tx
                .exec(
                    "UPDATE shards SET audited_ms = $4 WHERE chunk_id = $1 AND idx = $2 AND audited_ms = $3",
                    args![&chunk, idx, r.i64(6)?, now],
                )
                .await?;
            if claimed == 0 {
                continue;
            }
            let challenge = tx
                .opt(
                    "SELECT nonce, proof FROM shard_challenges WHERE chunk_id = $1 AND idx = $2 \
                     AND node_id = $3 ORDER BY nonce LIMIT 1",
                    args![&chunk, idx, node.as_str()],
                )
                .await?;
            let (nonce, proof) = match challenge {
                Some(c) => {
                    let nonce = c.blob(0)?;
                    tx.exec(
                        "DELETE FROM shard_challenges WHERE chunk_id = $1 AND idx = $2 AND node_id = $3 \
                         AND nonce = $4",
                        args![&chunk, idx, node.as_str(), nonce.clone()],
                    )
                    .await?;
                    (nonce, c.blob(1)?)
                }
                None => (Vec::new(), Vec::new()),
            };
            shards.push(v1::AuditShard {
                chunk_key: chunk.0.to_vec(),
                index: idx,
                hash: hash.0.to_vec(),
                token: signer.sign(&Capability {
                    role: Role::Rebalancer,
                    ops: Op::Get as u8,
                    node_id: node.clone(),
                    expires_at,
                    scope: Scope::Shards(vec![hash]),
                }),
                node_id: node,
                address: r.text(4)?,
                shard_size: r.u32(5)?,
                nonce,
                proof,
            });
        }
        Ok(v1::AuditBatchResponse {
            shards,
            stored_shards: counts.u64(0)?,
            overdue: counts.u64(1)?,
        })
    });
    Ok(resp)
}

/// Records audit outcomes; returns how many shards were marked corrupt.
pub async fn report(db: &Db, results: &[v1::AuditResult]) -> Result<u32> {
    let mut parsed = Vec::with_capacity(results.len());
    for r in results {
        let chunk = Hash::from_slice(&r.chunk_key)
            .ok_or_else(|| Error::invalid("results[].chunk_key must be 32 bytes"))?;
        let hash = Hash::from_slice(&r.hash)
            .ok_or_else(|| Error::invalid("results[].hash must be 32 bytes"))?;
        if r.node_id.is_empty() {
            return Err(Error::invalid("results[].node_id is empty"));
        }
        if r.challenges.len() > CHALLENGES_PER_SHARD
            || r.challenges
                .iter()
                .any(|c| !(16..=64).contains(&c.nonce.len()) || c.proof.len() != 32)
        {
            return Err(Error::invalid(format!(
                "results[].challenges: at most {CHALLENGES_PER_SHARD}, nonces of 16 to 64 bytes, proofs of 32"
            )));
        }
        parsed.push((chunk, hash, r));
    }
    let failed = write_tx!(db, tx => {
        let mut failed = 0;
        for (chunk, hash, r) in &parsed {
            // Only shards the layout names on that node count (a moved or deleted one is moot).
            let named = tx
                .opt(
                    "SELECT 1 FROM shards WHERE chunk_id = $1 AND idx = $2 AND node_id = $3 AND hash = $4",
                    args![chunk, r.index, r.node_id.as_str(), hash],
                )
                .await?
                .is_some();
            if !named {
                continue;
            }
            record(&mut tx, &r.node_id, r.ok, &r.error).await?;
            settle_reports(&mut tx, chunk, r.index, &r.node_id, r.ok).await?;
            if r.ok {
                for c in &r.challenges {
                    tx.exec(
                        "INSERT INTO shard_challenges (chunk_id, idx, node_id, nonce, proof) \
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                        args![chunk, r.index, r.node_id.as_str(), c.nonce.clone(), c.proof.clone()],
                    )
                    .await?;
                }
            } else if mark_corrupt(
                &mut tx,
                chunk,
                r.index,
                &r.node_id,
                hash,
                &format!("failed audit: {}", r.error),
            )
            .await?
            {
                failed += 1;
                tracing::warn!(node = %r.node_id, chunk = %chunk, index = r.index, error = %r.error, "audit failed");
            }
        }
        Ok(failed)
    });
    Ok(failed)
}

/// Corrupt shards a node reported in its heartbeat (its scrub, or a read, found them and
/// quarantined them): each shard row naming that node and hash is marked corrupt and queued
/// for repair, and each counts as a failed audit of the node.
pub async fn node_reported_corrupt(tx: &mut Tx, node: &str, hashes: &[Vec<u8>]) -> Result<()> {
    for h in hashes.iter().filter_map(|h| Hash::from_slice(h)) {
        let rows = tx
            .all(
                "SELECT chunk_id, idx FROM shards WHERE node_id = $1 AND hash = $2",
                args![node, &h],
            )
            .await?;
        for r in &rows {
            let (chunk, idx) = (r.hash(0)?, r.u32(1)?);
            if mark_corrupt(
                tx,
                &chunk,
                idx,
                node,
                &h,
                "corrupt on its node (scrub or read)",
            )
            .await?
            {
                record(tx, node, false, &format!("shard {h} corrupt on the node")).await?;
                tracing::warn!(node, shard = %h, "node reported a corrupt shard");
            }
        }
    }
    Ok(())
}

/// A reader's report, checked: the stored chunk key and the shard index and node it names.
type Suspect = (Hash, u32, String);

/// Takes readers' reports of corrupt or missing shards as evidence: each must carry the read
/// token the caller was issued for that shard on that node (signed by this cluster, for a Get
/// of that very shard, expired at most an hour ago); a report naming a shard the caller was
/// not issued a read of refuses the whole request. A checked report changes no shard state: it
/// puts the shard first in line for an audit ([`batch`]), whose outcome decides
/// ([`report`]). Returns how many shards were queued for verification.
pub async fn reported(gw: &Gateway, reporter: &str, reports: &[v1::ShardReport]) -> Result<u32> {
    let mut verifier = cyxcloud_core::token::TokenVerifier::new();
    verifier
        .add_key(&gw.signer.public_key())
        .map_err(|e| Error::Internal(e.to_string()))?;
    let now = now_ms();
    let window_from = now - HOUR_MS;
    // A reporter whose reports were found false too often is not heard for the hour.
    if let Some(r) = gw
        .db
        .opt(
            "SELECT false_reports FROM reporters WHERE user_id = $1 AND window_start_ms > $2",
            args![reporter, window_from],
        )
        .await?
        && r.i64(0)? >= FALSE_REPORT_LIMIT
    {
        tracing::warn!(
            reporter,
            "refused shard reports from a reporter with too many false ones"
        );
        return Err(Error::PermissionDenied(format!(
            "shard reports refused: {FALSE_REPORT_LIMIT} or more of this account's reports in \
             the last hour were found false by an audit"
        )));
    }
    let mut suspects: Vec<Suspect> = Vec::new();
    for rep in reports {
        let problem = v1::ShardProblem::try_from(rep.problem).unwrap_or_default();
        if !matches!(
            problem,
            v1::ShardProblem::Corrupt | v1::ShardProblem::Missing
        ) {
            // Unreachable is a node problem the registry sees; nothing to verify per shard.
            continue;
        }
        let content = Hash::from_slice(&rep.chunk_id)
            .ok_or_else(|| Error::invalid("reports[].chunk_id must be 32 bytes"))?;
        let not_issued = || {
            Error::PermissionDenied(format!(
                "a report names shard {} of chunk {content} on node {:?}, which this caller \
                 was not issued a read of (reports carry the read token of the shard)",
                rep.index, rep.node_id
            ))
        };
        let cap = verifier
            .verify(
                &rep.token,
                crate::db::now_secs().saturating_sub(REPORT_GRACE_SECS),
            )
            .map_err(|_| not_issued())?;
        // A content id may name several stored encodings: the shard on that node is meant.
        let rows = gw
            .db
            .all(
                "SELECT s.chunk_id, s.hash FROM shards s JOIN chunks c ON c.id = s.chunk_id \
                 WHERE c.content_id = $1 AND s.idx = $2 AND s.node_id = $3 AND s.state = $4",
                args![&content, rep.index, rep.node_id.as_str(), STORED],
            )
            .await?;
        let mut covered = false;
        for r in &rows {
            let (key, hash) = (r.hash(0)?, r.hash(1)?);
            if cap.check(Op::Get, &hash, &rep.node_id).is_ok() {
                covered = true;
                suspects.push((key, rep.index, rep.node_id.clone()));
            }
        }
        if !covered && !rows.is_empty() {
            return Err(not_issued());
        }
    }
    if suspects.is_empty() {
        return Ok(0);
    }
    let queued = write_tx!(gw.db, tx => {
        let pending = tx
            .one(
                "SELECT COUNT(*) FROM shard_reports WHERE reporter = $1",
                args![reporter],
            )
            .await?
            .i64(0)?;
        if pending + suspects.len() as i64 > MAX_PENDING_REPORTS {
            return Err(Error::PermissionDenied(format!(
                "shard reports refused: this account has {pending} reports waiting for \
                 verification (at most {MAX_PENDING_REPORTS})"
            )));
        }
        let mut queued = 0;
        for (key, idx, node) in &suspects {
            queued += tx
                .exec(
                    "INSERT INTO shard_reports (chunk_id, idx, node_id, reporter, reported_ms) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                    args![key, *idx, node.as_str(), reporter, now],
                )
                .await? as u32;
        }
        Ok(queued)
    });
    tracing::info!(reporter, queued, "shard reports queued for verification");
    Ok(queued)
}

/// Settles the reports of shard `(chunk, idx)` on `node` after its audit: found intact, each
/// reporter is counted one false report (a new hourly window when the last one is over).
async fn settle_reports(
    tx: &mut Tx,
    chunk: &Hash,
    idx: u32,
    node: &str,
    intact: bool,
) -> Result<()> {
    let reporters: Vec<String> = tx
        .all(
            "DELETE FROM shard_reports WHERE chunk_id = $1 AND idx = $2 AND node_id = $3 RETURNING reporter",
            args![chunk, idx, node],
        )
        .await?
        .iter()
        .map(|r| r.text(0))
        .collect::<Result<_>>()?;
    if !intact {
        return Ok(());
    }
    let now = now_ms();
    for reporter in reporters {
        tx.exec(
            "INSERT INTO reporters (user_id, false_reports, window_start_ms) VALUES ($1, 1, $2) \
             ON CONFLICT (user_id) DO UPDATE SET \
             false_reports = CASE WHEN reporters.window_start_ms > $3 THEN reporters.false_reports + 1 ELSE 1 END, \
             window_start_ms = CASE WHEN reporters.window_start_ms > $3 THEN reporters.window_start_ms ELSE $2 END",
            args![reporter.as_str(), now, now - HOUR_MS],
        )
        .await?;
        tracing::warn!(reporter = %reporter, node, chunk = %chunk, index = idx, "a shard reported bad was found intact by its audit (a false report)");
    }
    Ok(())
}
