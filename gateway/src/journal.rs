//! The change journal: every namespace (and node state) change appends an event with the next
//! sequence number inside the transaction that makes the change, so an event exists iff its
//! change committed, and (write transactions being serialized) sequence order is commit order.
//!
//! [`watch`] streams events after a given sequence: first the retained history from the
//! database, then live ones as the known head advances. The head advances on local commits
//! immediately and, for commits of other gateways on the same PostgreSQL, through the
//! [`tailer`] (LISTEN/NOTIFY plus a short poll). Every watcher reads from the database, so
//! delivery is exactly once and in order whatever process committed the change. A position
//! older than the retained history gets one `CHANGE_KIND_RESYNC` event carrying the current
//! head, then live events from there.

use std::time::Duration;

use cyxcloud_proto::v1;
use prost::Message;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::db::{Backend, Db, Tx, args};
use crate::error::{Error, Result};

/// Allocates the next journal sequence inside a write transaction.
pub async fn next_seq(tx: &mut Tx) -> Result<u64> {
    let seq = tx
        .one(
            "UPDATE counters SET value = value + 1 WHERE name = 'journal' RETURNING value",
            args![],
        )
        .await?
        .u64(0)?;
    // PostgreSQL: the NOTIFY for other gateways was queued by `postgres::begin_write`.
    tx.last_seq = tx.last_seq.max(seq);
    Ok(seq)
}

/// Stores `ev` (whose `seq` came from [`next_seq`] in the same transaction). `owner` is the
/// user whose bucket changed ("" for node events), used to filter what a watcher may see.
pub async fn record(tx: &mut Tx, mut ev: v1::ChangeEvent, owner: &str) -> Result<()> {
    if ev.time_ns == 0 {
        ev.time_ns = crate::db::now_ns();
    }
    if let Some(e) = &ev.entry {
        tx.touch(e.id);
        tx.touch(e.parent_id);
    }
    if ev.entry_id != 0 {
        tx.touch(ev.entry_id);
    }
    if ev.old_parent_id != 0 {
        tx.touch(ev.old_parent_id);
    }
    tx.exec(
        "INSERT INTO journal (seq, time_ns, bucket, owner_id, kind, payload) \
         VALUES ($1, $2, $3, $4, $5, $6)",
        args![
            ev.seq,
            ev.time_ns,
            ev.bucket.as_str(),
            owner,
            ev.kind as i64,
            ev.encode_to_vec()
        ],
    )
    .await?;
    Ok(())
}

/// The sequence of the last committed event (0 when none).
pub async fn head(db: &Db) -> Result<u64> {
    db.one("SELECT value FROM counters WHERE name = 'journal'", args![])
        .await?
        .u64(0)
}

/// Events up to this sequence have been pruned.
pub async fn pruned_through(db: &Db) -> Result<u64> {
    db.one(
        "SELECT value FROM counters WHERE name = 'journal_pruned'",
        args![],
    )
    .await?
    .u64(0)
}

/// Who is watching: all events, all but the gateway's hidden buckets (an admin client), or
/// those of one bucket, or those of one owner's buckets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    All,
    /// Everything except the system's hidden buckets (names starting with `.`).
    Visible,
    Bucket(String),
    Owner(String),
}

/// Up to `limit` events with `after < seq <= upto` that match `filter`, in order.
pub async fn read_range(
    db: &Db,
    after: u64,
    upto: u64,
    filter: &Filter,
    limit: u32,
) -> Result<Vec<v1::ChangeEvent>> {
    let upto = upto.min(i64::MAX as u64);
    let rows = match filter {
        Filter::All => {
            db.all(
                "SELECT payload FROM journal WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT $3",
                args![after, upto, limit],
            )
            .await?
        }
        Filter::Visible => {
            db.all(
                "SELECT payload FROM journal WHERE seq > $1 AND seq <= $2 \
                 AND bucket NOT LIKE '.%' ORDER BY seq LIMIT $3",
                args![after, upto, limit],
            )
            .await?
        }
        Filter::Bucket(b) => {
            db.all(
                "SELECT payload FROM journal WHERE bucket = $1 AND seq > $2 AND seq <= $3 \
                 ORDER BY seq LIMIT $4",
                args![b.as_str(), after, upto, limit],
            )
            .await?
        }
        Filter::Owner(o) => {
            db.all(
                "SELECT payload FROM journal WHERE seq > $1 AND seq <= $2 \
                 AND (owner_id = $3 OR owner_id = '') ORDER BY seq LIMIT $4",
                args![after, upto, o.as_str(), limit],
            )
            .await?
        }
    };
    rows.iter()
        .map(|r| {
            v1::ChangeEvent::decode(r.blob(0)?.as_slice())
                .map_err(|e| Error::Corrupt(format!("journal event: {e}")))
        })
        .collect()
}

/// Events to a watcher are read from the database in batches of this size.
const BATCH: u32 = 512;

/// Streams events with `seq > since` matching `filter` into the returned channel until the
/// receiver is dropped or `stop` fires. Errors end the stream after being sent.
pub fn watch(
    db: Db,
    since: u64,
    filter: Filter,
    stop: CancellationToken,
) -> mpsc::Receiver<Result<v1::ChangeEvent>> {
    let (tx, rx) = mpsc::channel(BATCH as usize);
    tokio::spawn(async move {
        let r = watch_loop(&db, since, &filter, &tx, &stop).await;
        if let Err(e) = r {
            let _ = tx.send(Err(e)).await;
        }
    });
    rx
}

async fn watch_loop(
    db: &Db,
    since: u64,
    filter: &Filter,
    out: &mpsc::Sender<Result<v1::ChangeEvent>>,
    stop: &CancellationToken,
) -> Result<()> {
    let mut head_rx = db.journal_head();
    let mut last = since;
    let db_head = head(db).await?;
    db.observe_head(db_head);
    if since < pruned_through(db).await? || since > db_head {
        // Older than what is retained (or from another history): the watcher must rescan,
        // then continue from the current head.
        let ev = v1::ChangeEvent {
            seq: db_head,
            kind: v1::ChangeKind::Resync as i32,
            time_ns: crate::db::now_ns(),
            ..Default::default()
        };
        if out.send(Ok(ev)).await.is_err() {
            return Ok(());
        }
        last = db_head;
    }
    loop {
        let upto = *head_rx.borrow_and_update();
        while last < upto {
            let events = read_range(db, last, upto, filter, BATCH).await?;
            let full = events.len() == BATCH as usize;
            for ev in events {
                last = ev.seq;
                if out.send(Ok(ev)).await.is_err() {
                    return Ok(());
                }
            }
            if !full {
                last = upto;
            }
            if last < upto && pruned_through(db).await? > last {
                return Err(Error::ResyncRequired {
                    since: last,
                    oldest: pruned_through(db).await? + 1,
                });
            }
        }
        tokio::select! {
            changed = head_rx.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
            }
            _ = out.closed() => return Ok(()),
            _ = stop.cancelled() => return Ok(()),
        }
    }
}

/// Keeps this process's view of the journal head current with commits made by other
/// processes (LISTEN/NOTIFY on PostgreSQL, plus a poll every `poll`), invalidates the local
/// cache for their changes, and prunes the journal to its retention. A background worker
/// (`journal-tailer`).
pub struct Tailer {
    db: Db,
    poll: Duration,
    retention_events: u64,
    retention_secs: u64,
    listener: Option<sqlx::postgres::PgListener>,
    listening: bool,
    seen: u64,
    last_prune: std::time::Instant,
}

impl Tailer {
    pub fn new(db: Db, poll: Duration, retention_events: u64, retention_secs: u64) -> Self {
        let seen = *db.journal_head().borrow();
        Tailer {
            db,
            poll,
            retention_events,
            retention_secs,
            listener: None,
            listening: false,
            seen,
            last_prune: std::time::Instant::now(),
        }
    }
}

impl cyxcloud_daemon::Worker for Tailer {
    fn name(&self) -> String {
        "journal-tailer".into()
    }

    async fn step(&mut self) -> std::result::Result<cyxcloud_daemon::Step, WorkError> {
        if !self.listening && self.db.backend() == Backend::Postgres {
            // Once: without a listener the poll alone keeps the head current.
            self.listening = true;
            match sqlx::postgres::PgListener::connect(self.db.url()).await {
                Ok(mut l) => match l.listen(crate::db::postgres::JOURNAL_CHANNEL).await {
                    Ok(()) => self.listener = Some(l),
                    Err(e) => tracing::warn!(error = %e, "journal LISTEN failed; polling only"),
                },
                Err(e) => {
                    tracing::warn!(error = %e, "journal listener connect failed; polling only")
                }
            }
        }
        let h = head(&self.db).await?;
        if h > self.seen {
            invalidate_remote(&self.db, self.seen, h).await;
            self.db.observe_head(h);
            self.seen = h;
        }
        if self.last_prune.elapsed() >= Duration::from_secs(10) {
            self.last_prune = std::time::Instant::now();
            prune(&self.db, self.retention_events, self.retention_secs).await?;
        }
        Ok(cyxcloud_daemon::Step::Idle)
    }

    async fn wait_for_work(&mut self) {
        let poll = self.poll;
        match self.listener.as_mut() {
            Some(l) => {
                // This gateway's own commits raised the head and invalidated the cache
                // already: only another gateway's commit (or the poll interval) needs a look
                // at the journal. Notifications arrive in commit order, so skipping ours never
                // skips past one of theirs.
                let deadline = tokio::time::Instant::now() + poll;
                while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, l.recv()).await {
                    if n.payload() != self.db.notify_tag() {
                        break;
                    }
                }
            }
            None => tokio::time::sleep(poll).await,
        }
    }
}

type WorkError = cyxcloud_daemon::worker::WorkError;

/// Invalidates cached state of entries changed by events in `(after, upto]` (commits of other
/// gateways; local commits invalidated already).
async fn invalidate_remote(db: &Db, after: u64, upto: u64) {
    let Some(cache) = db.cache() else { return };
    if !cache.is_local() {
        return; // a shared cache was invalidated by the committing gateway
    }
    let mut from = after;
    while from < upto {
        let Ok(events) = read_range(db, from, upto, &Filter::All, 4096).await else {
            cache.clear().await;
            return;
        };
        if events.is_empty() {
            break;
        }
        let mut ids = Vec::new();
        for ev in &events {
            from = ev.seq;
            ids.extend([ev.entry_id, ev.old_parent_id]);
            if let Some(e) = &ev.entry {
                ids.extend([e.id, e.parent_id]);
            }
        }
        ids.retain(|&i| i != 0);
        cache.invalidate(&ids).await;
    }
}

/// Drops events beyond the retention (count and age), remembering the pruned position.
pub async fn prune(db: &Db, keep_events: u64, keep_secs: u64) -> Result<()> {
    let h = head(db).await?;
    let by_count = h.saturating_sub(keep_events);
    let cutoff_ns = crate::db::now_ns()
        - (keep_secs.min(i64::MAX as u64 / 2_000_000_000) as i64) * 1_000_000_000;
    let by_age = db
        .opt(
            "SELECT MAX(seq) FROM journal WHERE time_ns < $1",
            args![cutoff_ns],
        )
        .await?
        .map(|r| r.opt_i64(0))
        .transpose()?
        .flatten()
        .unwrap_or(0) as u64;
    let cut = by_count.max(by_age);
    if cut <= pruned_through(db).await? {
        return Ok(());
    }
    crate::db::write_tx!(db, tx => {
        tx.exec("DELETE FROM journal WHERE seq <= $1", args![cut]).await?;
        tx.exec(
            "UPDATE counters SET value = $1 WHERE name = 'journal_pruned' AND value < $1",
            args![cut],
        )
        .await?;
        Ok::<_, Error>(())
    });
    Ok(())
}
