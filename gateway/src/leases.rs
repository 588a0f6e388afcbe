//! Leases of background workers in the metadata store (table `leases`), so that two gateways
//! (or rebalancers) sharing one database never run the same worker at once. One statement
//! takes or renews a lease: it succeeds when nobody holds the name, when we hold it, or when
//! the holder let it expire. Expiry is judged by the caller's wall clock in milliseconds:
//! processes sharing a store must keep their clocks within a fraction of the lease's lifetime.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cyxcloud_daemon::worker::{BoxFuture, LeaseStore, WorkError};

use crate::db::{Db, args};
use crate::error::Result;

/// The lease table of one metadata store.
#[derive(Debug, Clone)]
pub struct Leases {
    db: Db,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Leases {
    pub fn new(db: Db) -> Self {
        Leases { db }
    }

    /// Takes or renews `name` for `holder` until `ttl` from now; `false` when another holder
    /// has it unexpired.
    pub async fn acquire(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool> {
        let now = now_ms();
        let until = now.saturating_add(ttl.as_millis() as i64);
        let row = self
            .db
            .opt(
                "INSERT INTO leases (name, holder, expires_ms) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_ms = excluded.expires_ms \
                 WHERE leases.holder = excluded.holder OR leases.expires_ms < $4 \
                 RETURNING holder",
                args![name, holder, until, now],
            )
            .await?;
        Ok(row.is_some())
    }

    /// Gives `name` up if `holder` has it.
    pub async fn release(&self, name: &str, holder: &str) -> Result<()> {
        self.db
            .exec(
                "DELETE FROM leases WHERE name = $1 AND holder = $2",
                args![name, holder],
            )
            .await?;
        Ok(())
    }

    /// Who holds `name` unexpired, if anyone.
    pub async fn holder(&self, name: &str) -> Result<Option<String>> {
        self.db
            .opt(
                "SELECT holder FROM leases WHERE name = $1 AND expires_ms >= $2",
                args![name, now_ms()],
            )
            .await?
            .map(|r| r.text(0))
            .transpose()
    }
}

impl LeaseStore for Leases {
    fn acquire<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, std::result::Result<bool, WorkError>> {
        Box::pin(async move { Ok(Leases::acquire(self, name, holder, ttl).await?) })
    }

    fn release<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
    ) -> BoxFuture<'a, std::result::Result<(), WorkError>> {
        Box::pin(async move { Ok(Leases::release(self, name, holder).await?) })
    }
}
