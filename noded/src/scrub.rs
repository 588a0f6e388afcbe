//! The scrub: every stored shard is re-read and re-hashed once per `scrub_period_secs`, at an
//! even pace (the period spread over the shards). A shard whose record or RocksDB checksum no
//! longer matches is quarantined by the store, counted in `cyxcloud_corrupt_shards_total` and
//! reported to the gateway with the next heartbeat, which has it rebuilt elsewhere.

use std::sync::Arc;
use std::time::Duration;

use cyxcloud_daemon::Shutdown;

use crate::error::Error;
use crate::metrics::Metrics;
use crate::store::Shards;

/// Shortest pause between two shards (a small store is not re-read in a busy loop).
const MIN_PAUSE: Duration = Duration::from_millis(5);

/// Runs passes over the store until `shutdown`.
pub async fn run(shards: Arc<Shards>, metrics: Metrics, period: Duration, shutdown: Shutdown) {
    loop {
        let list = {
            let s = shards.clone();
            tokio::task::spawn_blocking(move || s.hashes())
                .await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
        };
        let list = match list {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "scrub cannot list the store");
                Vec::new()
            }
        };
        if list.is_empty() {
            // Nothing stored: look again after a tenth of the period.
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tokio::time::sleep(period / 10) => {}
            }
            continue;
        }
        let pause = (period / list.len() as u32).max(MIN_PAUSE);
        let (mut checked, mut corrupt) = (0u64, 0u64);
        for h in list {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tokio::time::sleep(pause) => {}
            }
            let s = shards.clone();
            let r = tokio::task::spawn_blocking(move || s.get(&h))
                .await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
            match r {
                Ok(_) => checked += 1,
                Err(Error::NotFound(_)) => {}
                Err(Error::Corrupt { .. }) => {
                    corrupt += 1;
                    metrics.corrupt_shards.inc();
                }
                Err(e) => tracing::warn!(shard = %h, error = %e, "scrub cannot read a shard"),
            }
            metrics.scrubbed_shards.inc();
        }
        if checked + corrupt > 0 {
            tracing::info!(checked, corrupt, "scrub pass done");
        }
    }
}
