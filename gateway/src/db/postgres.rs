//! PostgreSQL specifics: write transactions serialize on a transaction-scoped advisory lock
//! taken as their first statement (so journal sequence order is commit order across every
//! gateway on the database), snapshot reads use REPEATABLE READ, and commits that appended to
//! the journal send a NOTIFY that other gateways' journal tailers LISTEN for.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection as _};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{Error, Result};

/// Advisory lock key of the namespace write lock ("cyxns" in ASCII).
pub const WRITE_LOCK_KEY: i64 = 0x0063_7978_6e73;

/// A pooled connection idle this long is pinged before it is handed out again.
const IDLE_BEFORE_PING: Duration = Duration::from_secs(5);

/// Channel the journal NOTIFY goes to.
pub const JOURNAL_CHANNEL: &str = "cyxcloud_journal";

/// The gateway's PostgreSQL connections: sqlx's pool for transactions, and [`Hot`] for
/// single statements outside them (every stat, lookup and listing page).
#[derive(Clone)]
pub struct Pools {
    pub tx: sqlx::PgPool,
    pub hot: Arc<Hot>,
}

/// Opens the connections, `max_connections` in all: half (at least 2) for transactions, the
/// rest (at least 1) for single statements.
pub async fn connect(url: &str, max_connections: u32) -> Result<Pools> {
    let opts = options(url)?;
    let for_tx = (max_connections / 2).max(2);
    let for_hot = max_connections.saturating_sub(for_tx).max(1);
    let tx = PgPoolOptions::new()
        .max_connections(for_tx)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        // sqlx pings every connection it hands out by default: one more round trip per
        // operation. Only a connection that sat idle (the server may have restarted or a proxy
        // dropped it meanwhile) is checked; one in steady use proves itself by being used.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= IDLE_BEFORE_PING {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
        .connect_with(opts.clone())
        .await?;
    Ok(Pools {
        tx,
        hot: Arc::new(Hot {
            opts,
            idle: Mutex::new(Vec::new()),
            slots: Arc::new(Semaphore::new(for_hot as usize)),
        }),
    })
}

const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

fn options(url: &str) -> Result<PgConnectOptions> {
    Ok(url
        .parse::<PgConnectOptions>()
        .map_err(|e| Error::Config(format!("bad PostgreSQL URL: {e}")))?
        // The namespace is a hot working set of small rows reached through indexes. With the
        // default cost of a random page (4.0, tuned for spinning disks) the planner walked
        // paths up `dentries` (GetAttr by id, lookup) with hash joins over whole-table scans
        // while the table held a few thousand rows: 0.82 ms per GetAttr instead of 0.32 ms.
        .options([("random_page_cost", "1.1")]))
}

/// Connections for single statements outside a transaction, kept apart from sqlx's pool.
///
/// sqlx's pool pings every connection it takes back, in a task it spawns: a second round trip
/// to the server for every statement, which on two cores competes with the next request for
/// the CPU (and the server's). A statement that ran to completion outside a transaction leaves
/// its connection ready for the next one (sqlx reads any outstanding `ReadyForQuery` before
/// its next statement), so these connections go back without a ping. One that did not finish
/// (its request was cancelled mid-statement) or failed for another reason than the database
/// refusing the statement is closed instead of reused. As in the pool, a connection idle for
/// [`IDLE_BEFORE_PING`] is pinged before it is used again.
pub struct Hot {
    opts: PgConnectOptions,
    idle: Mutex<Vec<(sqlx::PgConnection, Instant)>>,
    slots: Arc<Semaphore>,
}

impl Hot {
    pub async fn acquire(self: &Arc<Self>) -> Result<HotConn> {
        let slot = tokio::time::timeout(ACQUIRE_TIMEOUT, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| Error::Db(sqlx::Error::PoolTimedOut))?
            .map_err(|_| Error::Db(sqlx::Error::PoolClosed))?;
        loop {
            let popped = self.idle.lock().expect("hot connections").pop();
            let Some((mut conn, since)) = popped else {
                let conn = sqlx::PgConnection::connect_with(&self.opts).await?;
                return Ok(HotConn {
                    conn: Some(conn),
                    home: self.clone(),
                    usable: true,
                    _slot: slot,
                });
            };
            if since.elapsed() < IDLE_BEFORE_PING || conn.ping().await.is_ok() {
                return Ok(HotConn {
                    conn: Some(conn),
                    home: self.clone(),
                    usable: true,
                    _slot: slot,
                });
            }
        }
    }
}

/// A connection taken from [`Hot`]; back to it on drop when its last statement finished.
pub struct HotConn {
    conn: Option<sqlx::PgConnection>,
    home: Arc<Hot>,
    usable: bool,
    _slot: OwnedSemaphorePermit,
}

impl HotConn {
    /// The connection, for one statement: until [`HotConn::finished`] says how it ended, the
    /// connection counts as mid-statement.
    pub fn start(&mut self) -> &mut sqlx::PgConnection {
        self.usable = false;
        self.conn.as_mut().expect("present until drop")
    }

    /// Records how the statement begun with [`HotConn::start`] ended.
    pub fn finished<T>(&mut self, r: &std::result::Result<T, sqlx::Error>) {
        self.usable = match r {
            Ok(_) | Err(sqlx::Error::RowNotFound) => true,
            // The server refused the statement and stays ready for the next, unless the error
            // ends the connection: class 57 (operator intervention: the backend was
            // terminated, the server is shutting down) and class 08 (connection exception).
            Err(sqlx::Error::Database(d)) => !d
                .code()
                .is_some_and(|c| c.starts_with("57") || c.starts_with("08")),
            Err(_) => false,
        };
    }
}

impl Drop for HotConn {
    fn drop(&mut self) {
        if let (true, Some(conn)) = (self.usable, self.conn.take()) {
            self.home
                .idle
                .lock()
                .expect("hot connections")
                .push((conn, Instant::now()));
        }
    }
}

/// The statement that opens a write transaction in one round trip: `BEGIN`, the write lock,
/// and the journal notification (delivered only if the transaction commits; PostgreSQL folds
/// identical notifications of one transaction, and a commit without journal events merely
/// makes the other gateways' tailers poll once). The payload is the process's `tag`, so a
/// tailer can tell its own commits (already applied locally) from other gateways'.
pub fn begin_write_sql(tag: &str) -> String {
    format!(
        "BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK_KEY}); \
         SELECT pg_notify('{JOURNAL_CHANNEL}', '{tag}')"
    )
}

pub async fn begin_write(
    pool: &sqlx::PgPool,
    sql: &Arc<str>,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>> {
    Ok(pool.begin_with(AssertSqlSafe(sql.clone())).await?)
}

pub async fn begin_read(pool: &sqlx::PgPool) -> Result<sqlx::Transaction<'static, sqlx::Postgres>> {
    Ok(pool
        .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await?)
}

/// serialization_failure, deadlock_detected, lock_not_available.
pub fn is_retryable_code(code: &str) -> bool {
    matches!(code, "40001" | "40P01" | "55P03")
}

/// DDL spellings for the shared migrations.
pub const DIALECT: &[(&str, &str)] = &[
    (
        "{AUTOID}",
        "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
    ),
    ("{BLOB}", "BYTEA"),
    ("{BINARY}", "COLLATE \"C\""),
];

#[cfg(test)]
mod tests {
    #[test]
    fn the_begin_statement_uses_the_write_lock_and_channel() {
        let sql = super::begin_write_sql("abc123");
        assert!(sql.contains("pg_advisory_xact_lock(427239698035)"));
        assert!(sql.contains("pg_notify('cyxcloud_journal', 'abc123')"));
    }
}
