//! One set of numbered migrations for both engines. The SQL is portable except for three DDL
//! tokens that each dialect spells its way (`{AUTOID}`, `{BLOB}`, `{BINARY}`: see
//! `sqlite::DIALECT` and `postgres::DIALECT`). Migrations run inside one serialized write
//! transaction, so gateways starting together on one PostgreSQL apply each exactly once.
//!
//! Never edit a released migration: add the next number.

use crate::db::{Backend, Db, args};
use crate::error::{Error, Result};

/// Id of the root directory whose children are the buckets.
pub const ROOT_ID: u64 = 1;

/// `(version, name, statements)`.
pub const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "initial schema", M0001),
    (2, "chunk keys; journal age and file count indexes", M0002),
    (
        3,
        "s3 multipart uploads",
        crate::s3::store::MIGRATION_S3_MULTIPART,
    ),
    (4, "directory move counter", M0004),
    (5, "reserved inode ids", M0005),
    (6, "worker leases", M0006),
    (7, "repair grants", M0007),
    (8, "audits", M0008),
    (9, "node keys", M0009),
    (10, "shard reports", M0010),
];

const M0001: &str = r#"
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE counters (
    name TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO counters (name, value) VALUES ('journal', 0), ('journal_pruned', 0);

CREATE TABLE users (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    email TEXT UNIQUE,
    password_hash TEXT,
    admin BIGINT NOT NULL,
    quota_bytes BIGINT NOT NULL,
    used_bytes BIGINT NOT NULL,
    created_ns BIGINT NOT NULL
);
CREATE TABLE access_keys (
    access_key TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    secret_enc {BLOB} NOT NULL,
    created_ns BIGINT NOT NULL
);
CREATE INDEX access_keys_user ON access_keys (user_id);
CREATE TABLE machines (
    id TEXT PRIMARY KEY,
    owner_id TEXT NOT NULL,
    node_id TEXT NOT NULL,
    name TEXT NOT NULL,
    hostname TEXT NOT NULL,
    cpu_cores BIGINT NOT NULL,
    ram_bytes BIGINT NOT NULL,
    gpu TEXT NOT NULL,
    storage_capacity_bytes BIGINT NOT NULL,
    wallet_address TEXT NOT NULL,
    api_key_hash {BLOB} NOT NULL UNIQUE,
    created_ns BIGINT NOT NULL
);

CREATE TABLE inodes (
    id {AUTOID},
    kind BIGINT NOT NULL,
    mode BIGINT NOT NULL,
    uid BIGINT NOT NULL,
    gid BIGINT NOT NULL,
    size BIGINT NOT NULL,
    atime_ns BIGINT NOT NULL,
    mtime_ns BIGINT NOT NULL,
    ctime_ns BIGINT NOT NULL,
    btime_ns BIGINT NOT NULL,
    nlink BIGINT NOT NULL,
    version_id BIGINT NOT NULL,
    etag TEXT NOT NULL,
    content_type TEXT NOT NULL,
    meta {BLOB},
    symlink_target TEXT NOT NULL,
    owner_id TEXT NOT NULL,
    change_seq BIGINT NOT NULL,
    marker BIGINT NOT NULL,
    public_read BIGINT NOT NULL
);
INSERT INTO inodes (kind, mode, uid, gid, size, atime_ns, mtime_ns, ctime_ns, btime_ns, nlink,
    version_id, etag, content_type, meta, symlink_target, owner_id, change_seq, marker, public_read)
    VALUES (2, 493, 0, 0, 0, 0, 0, 0, 0, 2, 0, '', '', NULL, '', '', 0, 0, 0);

CREATE TABLE dentries (
    parent_id BIGINT NOT NULL,
    name TEXT {BINARY} NOT NULL,
    sort_key TEXT {BINARY} NOT NULL,
    inode_id BIGINT NOT NULL,
    kind BIGINT NOT NULL,
    PRIMARY KEY (parent_id, name)
);
CREATE UNIQUE INDEX dentries_sort ON dentries (parent_id, sort_key);
CREATE INDEX dentries_inode ON dentries (inode_id);

CREATE TABLE versions (
    id {AUTOID},
    inode_id BIGINT NOT NULL,
    size BIGINT NOT NULL,
    inline_data {BLOB},
    created_ns BIGINT NOT NULL
);
CREATE INDEX versions_inode ON versions (inode_id);
CREATE TABLE version_chunks (
    version_id BIGINT NOT NULL,
    idx BIGINT NOT NULL,
    chunk_id {BLOB} NOT NULL,
    offset_bytes BIGINT NOT NULL,
    PRIMARY KEY (version_id, idx)
);
CREATE INDEX version_chunks_chunk ON version_chunks (chunk_id);
CREATE TABLE chunks (
    id {BLOB} PRIMARY KEY,
    size BIGINT NOT NULL,
    encoded_size BIGINT NOT NULL,
    codec BIGINT NOT NULL,
    data_shards BIGINT NOT NULL,
    parity_shards BIGINT NOT NULL,
    shard_size BIGINT NOT NULL,
    encrypted BIGINT NOT NULL,
    refs BIGINT NOT NULL,
    created_ns BIGINT NOT NULL
);
CREATE TABLE shards (
    chunk_id {BLOB} NOT NULL,
    idx BIGINT NOT NULL,
    hash {BLOB} NOT NULL,
    node_id TEXT NOT NULL,
    state BIGINT NOT NULL,
    PRIMARY KEY (chunk_id, idx)
);
CREATE INDEX shards_node_hash ON shards (node_id, hash);

CREATE TABLE writes (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    bucket TEXT NOT NULL,
    path TEXT NOT NULL,
    inode_id BIGINT NOT NULL,
    data_shards BIGINT NOT NULL,
    parity_shards BIGINT NOT NULL,
    codec BIGINT NOT NULL,
    chunk_size BIGINT NOT NULL,
    encrypted BIGINT NOT NULL,
    mode BIGINT NOT NULL,
    uid BIGINT NOT NULL,
    gid BIGINT NOT NULL,
    if_version BIGINT NOT NULL,
    if_absent BIGINT NOT NULL,
    base_version BIGINT NOT NULL,
    size_hint BIGINT NOT NULL,
    created_ns BIGINT NOT NULL,
    expires_ns BIGINT NOT NULL
);
CREATE INDEX writes_expiry ON writes (expires_ns);
CREATE TABLE write_chunks (
    write_id TEXT NOT NULL,
    idx BIGINT NOT NULL,
    chunk_id {BLOB} NOT NULL,
    info {BLOB} NOT NULL,
    dedup BIGINT NOT NULL,
    nodes TEXT NOT NULL,
    stored TEXT NOT NULL,
    durable BIGINT NOT NULL,
    PRIMARY KEY (write_id, idx)
);
CREATE TABLE write_targets (
    write_id TEXT NOT NULL,
    node_id TEXT NOT NULL,
    hash {BLOB} NOT NULL,
    PRIMARY KEY (write_id, node_id, hash)
);
CREATE INDEX write_targets_node_hash ON write_targets (node_id, hash);

CREATE TABLE nodes (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    address TEXT NOT NULL,
    peer_id TEXT NOT NULL,
    p2p_addresses TEXT NOT NULL,
    region TEXT NOT NULL,
    datacenter TEXT NOT NULL,
    rack TEXT NOT NULL,
    capacity_bytes BIGINT NOT NULL,
    used_bytes BIGINT NOT NULL,
    available_bytes BIGINT NOT NULL,
    shard_count BIGINT NOT NULL,
    reported_state BIGINT NOT NULL,
    state BIGINT NOT NULL,
    last_heartbeat_ms BIGINT NOT NULL,
    registered_ns BIGINT NOT NULL,
    latency_us BIGINT NOT NULL,
    version TEXT NOT NULL,
    wallet_address TEXT NOT NULL,
    machine_id TEXT NOT NULL,
    load_milli BIGINT NOT NULL,
    connections BIGINT NOT NULL,
    bytes_uploaded BIGINT NOT NULL,
    bytes_downloaded BIGINT NOT NULL
);
CREATE TABLE node_commands (
    id TEXT PRIMARY KEY,
    node_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload {BLOB} NOT NULL,
    state BIGINT NOT NULL,
    created_ns BIGINT NOT NULL,
    delivered_ns BIGINT NOT NULL,
    attempts BIGINT NOT NULL,
    error TEXT NOT NULL
);
CREATE INDEX node_commands_node ON node_commands (node_id, state);
CREATE TABLE gc_queue (
    node_id TEXT NOT NULL,
    hash {BLOB} NOT NULL,
    created_ns BIGINT NOT NULL,
    PRIMARY KEY (node_id, hash)
);
CREATE TABLE repairs (
    chunk_id {BLOB} NOT NULL,
    idx BIGINT NOT NULL,
    reason TEXT NOT NULL,
    created_ns BIGINT NOT NULL,
    PRIMARY KEY (chunk_id, idx)
);

CREATE TABLE journal (
    seq BIGINT PRIMARY KEY,
    time_ns BIGINT NOT NULL,
    bucket TEXT NOT NULL,
    owner_id TEXT NOT NULL,
    kind BIGINT NOT NULL,
    payload {BLOB} NOT NULL
);
CREATE INDEX journal_bucket ON journal (bucket, seq);
"#;

/// Chunks are stored under a key covering their whole encoding (`layout::chunk_key`); the
/// content id (blake3 of the plaintext) becomes a column. Retention pruning finds old journal
/// events, and the metrics count files, through indexes.
const M0002: &str = r#"
ALTER TABLE chunks ADD COLUMN content_id {BLOB};
UPDATE chunks SET content_id = id;
CREATE INDEX chunks_content ON chunks (content_id);
CREATE INDEX journal_time ON journal (time_ns);
CREATE INDEX inodes_kind ON inodes (kind, owner_id);
"#;

/// Counts the transactions that move a directory, so cached directory paths can be validated
/// in the same statement that reads an entry (`namespace::dirs`).
const M0004: &str = r#"
INSERT INTO counters (name, value) VALUES ('dir_moves', 0);
"#;

/// Inode ids set aside for one user's future files (`Writes::reserve_ids`), each used once.
const M0005: &str = r#"
CREATE TABLE reserved_ids (
    id BIGINT PRIMARY KEY,
    owner_id TEXT NOT NULL,
    expires_ns BIGINT NOT NULL
);
CREATE INDEX reserved_ids_expiry ON reserved_ids (expires_ns);
"#;

/// Leases of background workers (`cyxcloud_daemon::worker`): one holder per name until
/// `expires_ms`, so that two gateways or rebalancers never run the same worker at once.
const M0006: &str = r#"
CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_ms BIGINT NOT NULL
);
"#;

/// Shards a rebalancer was granted to rebuild on new nodes, until its commit or `expires_ms`:
/// garbage collection spares them (a rebuilt copy exists before the layout names it). Shards
/// not stored are found through an index on their state.
const M0007: &str = r#"
CREATE TABLE repair_targets (
    node_id TEXT NOT NULL,
    hash {BLOB} NOT NULL,
    chunk_id {BLOB} NOT NULL,
    idx BIGINT NOT NULL,
    holder TEXT NOT NULL,
    expires_ms BIGINT NOT NULL,
    PRIMARY KEY (node_id, hash, chunk_id, idx)
);
CREATE INDEX repair_targets_chunk ON repair_targets (chunk_id, holder);
CREATE INDEX repair_targets_expiry ON repair_targets (expires_ms);
CREATE INDEX shards_state ON shards (state);
"#;

/// Proof of storage: when each shard was last audited (new shards count as audited when
/// stored: their node checked the hash), one-time challenges computed from verified
/// retrievals, and each node's audit record.
const M0008: &str = r#"
ALTER TABLE shards ADD COLUMN audited_ms BIGINT NOT NULL DEFAULT 0;
CREATE INDEX shards_audited ON shards (state, audited_ms);
CREATE TABLE shard_challenges (
    chunk_id {BLOB} NOT NULL,
    idx BIGINT NOT NULL,
    node_id TEXT NOT NULL,
    nonce {BLOB} NOT NULL,
    proof {BLOB} NOT NULL,
    PRIMARY KEY (chunk_id, idx, node_id, nonce)
);
CREATE TABLE node_audits (
    node_id TEXT PRIMARY KEY,
    audits BIGINT NOT NULL,
    failures BIGINT NOT NULL,
    consecutive BIGINT NOT NULL,
    last_ms BIGINT NOT NULL,
    last_error TEXT NOT NULL
);
"#;

/// Node identity: the public key a node id is bound to at its first signed registration, and
/// the newest signing time seen from it (older ones are replays).
const M0009: &str = r#"
ALTER TABLE nodes ADD COLUMN public_key {BLOB};
ALTER TABLE nodes ADD COLUMN signed_ms BIGINT NOT NULL DEFAULT 0;
"#;

/// Readers' shard reports waiting for verification (an audit of that shard), and each
/// reporter's count of reports an audit found false, per hour.
const M0010: &str = r#"
CREATE TABLE shard_reports (
    chunk_id {BLOB} NOT NULL,
    idx BIGINT NOT NULL,
    node_id TEXT NOT NULL,
    reporter TEXT NOT NULL,
    reported_ms BIGINT NOT NULL,
    claimed_ms BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (chunk_id, idx, node_id, reporter)
);
CREATE INDEX shard_reports_reporter ON shard_reports (reporter);
CREATE TABLE reporters (
    user_id TEXT PRIMARY KEY,
    false_reports BIGINT NOT NULL,
    window_start_ms BIGINT NOT NULL
);
"#;

/// Rewrites the dialect tokens of `sql` for `backend`.
pub fn render(sql: &str, backend: Backend) -> String {
    let dialect = match backend {
        Backend::Sqlite => crate::db::sqlite::DIALECT,
        Backend::Postgres => crate::db::postgres::DIALECT,
    };
    dialect
        .iter()
        .fold(sql.to_string(), |s, (token, spelling)| {
            s.replace(token, spelling)
        })
}

/// Splits a migration into statements (no statement contains a `;` inside a literal).
fn statements(sql: &str) -> impl Iterator<Item = &str> {
    sql.split(';').map(str::trim).filter(|s| !s.is_empty())
}

/// Applies every migration not yet applied. Refuses a database whose schema is newer than this
/// binary knows.
pub async fn run(db: &Db) -> Result<()> {
    let mut tx = db.begin_write().await?;
    tx.exec(
        "CREATE TABLE IF NOT EXISTS schema_migrations (\
         version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_ns BIGINT NOT NULL)",
        args![],
    )
    .await?;
    let applied: Vec<i64> = tx
        .all(
            "SELECT version FROM schema_migrations ORDER BY version",
            args![],
        )
        .await?
        .iter()
        .map(|r| r.i64(0))
        .collect::<Result<_>>()?;
    let known = MIGRATIONS.last().map_or(0, |m| m.0);
    if let Some(&newest) = applied.last()
        && newest > known
    {
        return Err(Error::Config(format!(
            "the metadata store has schema version {newest}, newer than this gateway knows \
             ({known}): upgrade the gateway"
        )));
    }
    for (version, name, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        tracing::info!(
            version,
            name,
            backend = db.backend().name(),
            "applying migration"
        );
        for stmt in statements(&render(sql, db.backend())) {
            tx.exec(stmt.to_string(), args![]).await?;
        }
        tx.exec(
            "INSERT INTO schema_migrations (version, name, applied_ns) VALUES ($1, $2, $3)",
            args![*version, *name, crate::db::now_ns()],
        )
        .await?;
        if *version == 1 {
            let root = tx
                .one("SELECT MIN(id) FROM inodes", args![])
                .await?
                .u64(0)?;
            if root != ROOT_ID {
                return Err(Error::Corrupt(format!("root inode got id {root}")));
            }
        }
    }
    tx.commit().await?;
    Ok(())
}
