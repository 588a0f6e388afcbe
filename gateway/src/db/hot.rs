//! The gateway's database connections, kept without sqlx's pool.
//!
//! sqlx's pool pings every connection it takes back, in a task it spawns: for PostgreSQL a
//! second round trip to the server for every statement or transaction, for SQLite a second
//! round trip to the connection's worker thread (and SQLite's one write connection was not
//! free for the next writer until that ping came back). On two cores that competes with the
//! next request for the CPU (measured on both backends: +29 % GetAttr/s from 16 clients
//! without it). A statement that ran to completion leaves its connection ready for the next
//! one (sqlx reads any outstanding `ReadyForQuery` before its next statement), and a
//! transaction that was committed or rolled back leaves none open, so these connections go
//! back without a ping. One whose statement did not finish (its request was cancelled
//! midway), that failed for another reason than the database refusing a statement, or that
//! is still inside a transaction is closed instead of reused: closing ends the transaction on
//! the server. As in the pool, a connection idle for [`IDLE_BEFORE_PING`] is pinged before it
//! is used again.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{Error, Result};

/// A connection idle this long is pinged before it is handed out again (the server may have
/// restarted or a proxy dropped it meanwhile); one in steady use proves itself by being used.
pub const IDLE_BEFORE_PING: Duration = Duration::from_secs(5);

pub struct Hot<C: sqlx::Connection> {
    opts: <C as sqlx::Connection>::Options,
    idle: Mutex<Vec<(C, Instant)>>,
    slots: Arc<Semaphore>,
    acquire_timeout: Duration,
}

impl<C: sqlx::Connection> Hot<C> {
    /// At most `max` connections, opened as they are needed.
    pub fn new(opts: C::Options, max: u32, acquire_timeout: Duration) -> Arc<Self> {
        Arc::new(Hot {
            opts,
            idle: Mutex::new(Vec::new()),
            slots: Arc::new(Semaphore::new(max.max(1) as usize)),
            acquire_timeout,
        })
    }

    pub async fn acquire(self: &Arc<Self>) -> Result<HotConn<C>> {
        let slot = tokio::time::timeout(self.acquire_timeout, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| Error::Db(sqlx::Error::PoolTimedOut))?
            .map_err(|_| Error::Db(sqlx::Error::PoolClosed))?;
        let conn = loop {
            let popped = self.idle.lock().expect("idle connections").pop();
            let Some((mut conn, since)) = popped else {
                break C::connect_with(&self.opts).await?;
            };
            if since.elapsed() < IDLE_BEFORE_PING || conn.ping().await.is_ok() {
                break conn;
            }
        };
        Ok(HotConn {
            conn: Some(conn),
            home: self.clone(),
            usable: true,
            in_tx: false,
            _slot: slot,
        })
    }
}

/// A connection taken from [`Hot`]; back to it on drop when its last statement finished.
pub struct HotConn<C: sqlx::Connection> {
    conn: Option<C>,
    home: Arc<Hot<C>>,
    usable: bool,
    /// Between the statement that opens a transaction and the one that ends it.
    in_tx: bool,
    _slot: OwnedSemaphorePermit,
}

impl<C: sqlx::Connection> HotConn<C> {
    /// The connection, for one statement: until [`HotConn::finished`] says how it ended, the
    /// connection counts as mid-statement.
    pub fn start(&mut self) -> &mut C {
        self.usable = false;
        self.conn.as_mut().expect("present until drop")
    }

    /// Records how the statement begun with [`HotConn::start`] ended.
    pub fn finished<T>(&mut self, r: &std::result::Result<T, sqlx::Error>) {
        self.usable = match r {
            Ok(_) | Err(sqlx::Error::RowNotFound) => true,
            // The database refused the statement and stays ready for the next, unless the
            // error ends the connection: PostgreSQL's class 57 (operator intervention: the
            // backend was terminated, the server is shutting down) and class 08 (connection
            // exception). SQLite's codes are plain numbers.
            Err(sqlx::Error::Database(d)) => !d
                .code()
                .is_some_and(|c| c.starts_with("57") || c.starts_with("08")),
            Err(_) => false,
        };
    }

    /// Marks the connection inside a transaction (before the statement that opens it: one
    /// that fails halfway may still leave it open) or out of it (after the statement that
    /// ended it succeeded).
    pub fn set_in_tx(&mut self, in_tx: bool) {
        self.in_tx = in_tx;
    }
}

impl<C: sqlx::Connection> Drop for HotConn<C> {
    fn drop(&mut self) {
        if let (true, false, Some(conn)) = (self.usable, self.in_tx, self.conn.take()) {
            self.home
                .idle
                .lock()
                .expect("idle connections")
                .push((conn, Instant::now()));
        }
    }
}
