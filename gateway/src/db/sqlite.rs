//! SQLite specifics: one file in the data dir, WAL mode (readers never block the writer),
//! write transactions that take the write lock up front (`BEGIN IMMEDIATE`, so two writers
//! never deadlock upgrading a read lock), and a busy timeout instead of instant failures.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use super::hot::Hot;
use crate::error::{Error, Result};

/// The connections to one SQLite file: single statements ([`Hot`]), read transactions, and
/// the one connection write transactions use. Writes on one connection keep its page cache
/// valid from one transaction to the next; spread over the pool, each connection found the
/// file changed by the others and re-read its pages.
#[derive(Clone)]
pub struct Pools {
    pub hot: Arc<Hot<sqlx::SqliteConnection>>,
    pub read: sqlx::SqlitePool,
    pub write: sqlx::SqlitePool,
}

/// Page cache of the write connection (KiB; SQLite's default is 2 MiB per connection).
const WRITER_CACHE_KIB: u32 = 64 << 10;

pub async fn connect(url: &str, max_connections: u32) -> Result<Pools> {
    let opts = if url.starts_with("sqlite:") {
        SqliteConnectOptions::from_str(url)
            .map_err(|e| Error::Config(format!("bad SQLite URL {url:?}: {e}")))?
    } else {
        SqliteConnectOptions::new().filename(url)
    };
    let opts = opts
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(30))
        .foreign_keys(false);
    let pool = |n: u32, opts: SqliteConnectOptions| {
        SqlitePoolOptions::new()
            .max_connections(n)
            .acquire_timeout(Duration::from_secs(60))
            // A connection to a local file does not go stale; the default ping per acquire is
            // a round trip to the connection's worker thread for nothing.
            .test_before_acquire(false)
            .connect_with(opts)
    };
    // The writer first: it creates the file and switches it to WAL.
    let write = pool(
        1,
        opts.clone()
            .pragma("cache_size", format!("-{WRITER_CACHE_KIB}")),
    )
    .await?;
    // The rest read: half in read transactions, half in single statements.
    let readers = max_connections.max(3) - 1;
    let read = pool(readers / 2, opts.clone()).await?;
    let hot = Hot::new(opts, readers - readers / 2, Duration::from_secs(60));
    Ok(Pools { hot, read, write })
}

pub async fn begin_write(
    pool: &sqlx::SqlitePool,
) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
    Ok(pool.begin_with("BEGIN IMMEDIATE").await?)
}

pub async fn begin_read(
    pool: &sqlx::SqlitePool,
) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
    // A deferred transaction in WAL mode reads one snapshot from its first read on.
    Ok(pool.begin_with("BEGIN DEFERRED").await?)
}

/// SQLITE_BUSY (5) and SQLITE_LOCKED (6) with their extended codes.
pub fn is_retryable_code(code: &str) -> bool {
    matches!(code, "5" | "6" | "261" | "262" | "517" | "773")
}

/// DDL spellings for the shared migrations.
pub const DIALECT: &[(&str, &str)] = &[
    ("{AUTOID}", "INTEGER PRIMARY KEY AUTOINCREMENT"),
    ("{BLOB}", "BLOB"),
    ("{BINARY}", "COLLATE BINARY"),
];
