//! SQLite specifics: one file in the data dir, WAL mode (readers never block the writer),
//! write transactions that take the write lock up front (`BEGIN IMMEDIATE`, so two writers
//! never deadlock upgrading a read lock), and a busy timeout instead of instant failures.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};

use super::hot::Hot;
use crate::error::{Error, Result};

/// The connections to one SQLite file: single statements, read transactions, and the one
/// connection write transactions use. Writes on one connection keep its page cache valid from
/// one transaction to the next; spread over several, each connection found the file changed
/// by the others and re-read its pages.
#[derive(Clone)]
pub struct Pools {
    pub hot: Arc<Hot<sqlx::SqliteConnection>>,
    pub read: Arc<Hot<sqlx::SqliteConnection>>,
    pub write: Arc<Hot<sqlx::SqliteConnection>>,
}

/// Page cache of the write connection (KiB; SQLite's default is 2 MiB per connection).
const WRITER_CACHE_KIB: u32 = 64 << 10;

const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(60);

/// Opens the file (creating it, in WAL mode) on the write connection. Of the other
/// `max_connections - 1` (at least 2), half serve read transactions and half single
/// statements; each opens when first needed.
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
    let write = Hot::new(
        opts.clone()
            .pragma("cache_size", format!("-{WRITER_CACHE_KIB}")),
        1,
        ACQUIRE_TIMEOUT,
    );
    // The writer first: it creates the file and switches it to WAL before any reader opens.
    drop(write.acquire().await?);
    let readers = max_connections.max(3) - 1;
    Ok(Pools {
        hot: Hot::new(opts.clone(), readers - readers / 2, ACQUIRE_TIMEOUT),
        read: Hot::new(opts, readers / 2, ACQUIRE_TIMEOUT),
        write,
    })
}

/// Write transactions take the write lock up front.
pub const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";

/// A deferred transaction in WAL mode reads one snapshot from its first read on.
pub const BEGIN_READ: &str = "BEGIN DEFERRED";

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
