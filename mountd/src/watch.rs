//! Keeps the cache current from the gateway's change journal (WatchChanges) and tells the
//! kernel to drop what changed, so a change made over S3 or by another mount shows up here
//! within a second or two. Reconnects with backoff; resumes after the last applied sequence.

use std::sync::Arc;
use std::time::Duration;

use cyxcloud_proto::v1;
use tokio_util::sync::CancellationToken;

use crate::drive::{Drive, GATEWAY_ROOT, is_dir};
use crate::error::{Error, Result};
use crate::store::Mutation;

const SEQ_KEY: &str = "journal_seq";

pub async fn run(d: Arc<Drive>, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(200);
    loop {
        if stop.is_cancelled() {
            return;
        }
        let r = tokio::select! {
            _ = stop.cancelled() => return,
            r = follow(&d) => r,
        };
        match r {
            Ok(()) => backoff = Duration::from_millis(200),
            Err(e) => {
                d.remote.observe::<()>(&Err(if e.is_unavailable() {
                    Error::Offline(e.to_string())
                } else {
                    Error::Invalid(e.to_string())
                }));
                tracing::debug!(error = %e, "change stream ended; reconnecting");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn start_seq(d: &Drive) -> Result<u64> {
    if let Some(s) = d.store.kv(SEQ_KEY)?
        && let Ok(v) = s.parse()
    {
        return Ok(v);
    }
    // A fresh cache holds nothing to catch up on: start at the journal's head.
    let r = d
        .remote
        .control("cluster status", |mut c| async move {
            c.cluster_status(v1::ClusterStatusRequest {}).await
        })
        .await;
    Ok(match r {
        Ok(s) => s.journal_seq,
        Err(e) if e.is_unavailable() => return Err(e),
        Err(_) => 0,
    })
}

async fn follow(d: &Drive) -> Result<()> {
    let since = start_seq(d).await?;
    let client = d.remote.client().await?;
    client.refresh_token().await?;
    let bucket = d.cfg.bucket.clone().unwrap_or_default();
    let mut stream = client
        .control()
        .watch_changes(v1::WatchChangesRequest { since, bucket })
        .await
        .map_err(|s| Error::rpc("watch changes", s))?
        .into_inner();
    tracing::debug!(since, "following the change journal");
    d.staging.retry_now();
    loop {
        let ev = match stream.message().await {
            Ok(Some(ev)) => ev,
            Ok(None) => return Ok(()),
            Err(s) => {
                let e = Error::rpc("watch changes", s);
                if e.code() == Some(cyxcloud_proto::ErrorCode::ResyncRequired) {
                    resync(d)?;
                    d.store.apply(&[Mutation::SetKv {
                        key: SEQ_KEY.into(),
                        value: "".into(),
                    }])?;
                }
                return Err(e);
            }
        };
        d.remote.observe::<()>(&Ok(()));
        apply(d, &ev)?;
    }
}

fn resync(d: &Drive) -> Result<()> {
    tracing::info!("change journal resync: dropping cached names");
    d.store.apply(&[Mutation::ClearNamespace])?;
    d.inval_all_dirs();
    d.clear_departures();
    if let Some(b) = &d.cfg.bucket {
        d.store.apply(&[Mutation::PutDentry {
            parent: GATEWAY_ROOT,
            name: b.clone(),
            ino: d.root,
        }])?;
    }
    d.layouts.lock().unwrap_or_else(|e| e.into_inner()).clear();
    Ok(())
}

fn last_segment(path: &str) -> &str {
    path.trim_end_matches('/').rsplit('/').next().unwrap_or("")
}

/// Applies one journal event to the cache and invalidates the kernel's copies.
pub fn apply(d: &Drive, ev: &v1::ChangeEvent) -> Result<()> {
    let kind = v1::ChangeKind::try_from(ev.kind).unwrap_or(v1::ChangeKind::Unspecified);
    let mut batch = Vec::new();
    let mut inval_entries: Vec<(u64, String)> = Vec::new();
    let mut inval_inode: Option<(u64, bool)> = None;
    match kind {
        v1::ChangeKind::Create | v1::ChangeKind::Update => {
            if let Some(e) = &ev.entry {
                let cached = d.store.entry(e.id)?;
                let known = cached
                    .as_ref()
                    .is_some_and(|c| c.change_seq >= e.change_seq);
                if !known {
                    let data_changed = cached.as_ref().is_none_or(|c| c.version != e.version)
                        && !d.is_own_version(e.id, e.version);
                    d.remember(e, None)?;
                    if kind == v1::ChangeKind::Create {
                        inval_entries.push((e.parent_id, e.name.clone()));
                    } else {
                        inval_inode = Some((e.id, !data_changed));
                        if data_changed {
                            d.layouts
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .remove(&e.id);
                        }
                    }
                }
                if e.parent_id != 0 && d.link_name_seen(e, e.parent_id, &e.name)? {
                    inval_entries.push((e.parent_id, e.name.clone()));
                }
            }
        }
        v1::ChangeKind::Delete => {
            let name = if ev.path.is_empty() {
                ev.bucket.clone()
            } else {
                last_segment(&ev.path).to_string()
            };
            d.departure_seen(None, &name, ev.entry_id);
            let names = d.store.names(ev.entry_id)?;
            if let Some((parent, n)) = names.iter().find(|(_, n)| *n == name).cloned() {
                let dir = d.store.entry(ev.entry_id)?.is_some_and(|e| is_dir(&e));
                let drop_entry = names.len() == 1 && (dir || d.open_count(ev.entry_id) == 0);
                // False when this mount made the change itself and has already applied it.
                let removed = d.unlink_name(parent, &n, ev.entry_id, drop_entry)?;
                if removed && !drop_entry {
                    d.patch(ev.entry_id, |e| e.nlink = e.nlink.saturating_sub(1))?;
                }
                inval_entries.push((parent, n));
                if removed && names.len() == 1 && !dir {
                    if d.open_count(ev.entry_id) > 0 {
                        d.staging.orphan(ev.entry_id)?;
                    } else {
                        d.staging.remove(ev.entry_id)?;
                    }
                }
            }
        }
        v1::ChangeKind::Rename => {
            if let Some(e) = &ev.entry {
                let old_name = last_segment(&ev.old_path).to_string();
                d.departure_seen(Some(ev.old_parent_id), &old_name, e.id);
                let moved = d.rename_seen(ev.old_parent_id, &old_name, e)?;
                if moved.old_dropped {
                    inval_entries.push((ev.old_parent_id, old_name));
                }
                if moved.new_added {
                    inval_entries.push((e.parent_id, e.name.clone()));
                }
                if moved.refreshed {
                    inval_inode = Some((e.id, true));
                }
            }
        }
        v1::ChangeKind::Resync => resync(d)?,
        _ => {}
    }
    batch.push(Mutation::SetKv {
        key: SEQ_KEY.into(),
        value: ev.seq.to_string(),
    });
    d.store.apply(&batch)?;
    let mut dirs: Vec<u64> = inval_entries.iter().map(|(p, _)| *p).collect();
    dirs.sort_unstable();
    dirs.dedup();
    for (p, n) in inval_entries {
        d.inval_entry(p, &n);
    }
    for p in dirs {
        d.inval_dir(p);
    }
    if let Some((id, attrs_only)) = inval_inode {
        d.inval_inode(id, attrs_only);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::config::{Args, Config};

    async fn drive(cache: &std::path::Path) -> Drive {
        let mut a = Args::parse_from(["m", "/nonexistent-mnt", "--gateway", "http://127.0.0.1:9"]);
        a.cache_dir = Some(cache.to_path_buf());
        a.access_key = Some("k".into());
        a.secret_key = Some("s".into());
        Drive::start(Config::from_args(a).unwrap()).await.unwrap()
    }

    fn dir(id: u64, parent: u64, name: &str, seq: u64) -> v1::Entry {
        v1::Entry {
            id,
            parent_id: parent,
            name: name.into(),
            kind: v1::EntryKind::Directory as i32,
            mode: 0o755,
            nlink: 2,
            change_seq: seq,
            ..Default::default()
        }
    }

    fn created(e: &v1::Entry) -> v1::ChangeEvent {
        v1::ChangeEvent {
            seq: e.change_seq,
            kind: v1::ChangeKind::Create as i32,
            entry_id: e.id,
            path: e.name.clone(),
            entry: Some(e.clone()),
            ..Default::default()
        }
    }

    fn deleted(e: &v1::Entry, seq: u64) -> v1::ChangeEvent {
        v1::ChangeEvent {
            seq,
            kind: v1::ChangeKind::Delete as i32,
            entry_id: e.id,
            path: e.name.clone(),
            ..Default::default()
        }
    }

    fn nlink(d: &Drive, id: u64) -> u32 {
        d.store.entry(id).unwrap().unwrap().nlink
    }

    /// A mkdir made through this mount is reported twice: by its own gateway call and by the
    /// journal stream. Whatever the order, the parent gains exactly one link (CI once saw 4).
    #[tokio::test]
    async fn a_mkdir_seen_twice_counts_one_link_in_either_order() {
        let t = tempfile::tempdir().unwrap();
        let d = drive(t.path()).await;
        let parent = dir(10, 1, "p", 1);
        d.remember(&parent, Some((1, "p"))).unwrap();

        let a = dir(11, 10, "a", 2);
        apply(&d, &created(&a)).unwrap();
        assert!(!d.link_name(&a, 10, "a").unwrap());
        assert_eq!(nlink(&d, 10), 3);

        let b = dir(12, 10, "b", 3);
        assert!(d.link_name(&b, 10, "b").unwrap());
        apply(&d, &created(&b)).unwrap();
        assert_eq!(nlink(&d, 10), 4);

        // rmdir, both orders: one link goes per directory.
        apply(&d, &deleted(&a, 4)).unwrap();
        assert!(!d.unlink_name(10, "a", 11, true).unwrap());
        assert_eq!(nlink(&d, 10), 3);
        assert!(d.unlink_name(10, "b", 12, true).unwrap());
        apply(&d, &deleted(&b, 5)).unwrap();
        assert_eq!(nlink(&d, 10), 2);
        assert!(d.store.entry(11).unwrap().is_none());
        assert!(d.store.lookup(10, "b").unwrap().is_none());
    }

    /// A file unlinked (or renamed) through this mount a moment after it was written: the
    /// journal still delivers the older Create and upload Update events, which carry the old
    /// name. They must not bring the name back (CI saw `stat` succeed after `unlink`).
    #[tokio::test]
    async fn events_older_than_a_local_unlink_or_rename_do_not_restore_the_name() {
        let t = tempfile::tempdir().unwrap();
        let d = drive(t.path()).await;
        d.remember(&dir(10, 1, "p", 1), Some((1, "p"))).unwrap();
        let file = |id: u64, name: &str, seq: u64| v1::Entry {
            kind: v1::EntryKind::File as i32,
            nlink: 1,
            ..dir(id, 10, name, seq)
        };
        let f = file(20, "f", 2);
        d.link_name(&f, 10, "f").unwrap();
        // Local unlink, then the stale events arrive.
        assert!(d.unlink_own_name(10, "f", 20, false).unwrap());
        apply(&d, &created(&f)).unwrap();
        let updated = v1::ChangeEvent {
            kind: v1::ChangeKind::Update as i32,
            ..created(&file(20, "f", 3))
        };
        apply(&d, &updated).unwrap();
        assert_eq!(d.store.lookup(10, "f").unwrap(), None);
        // The journal's own Delete ends the wait; a later name for that inode is accepted.
        apply(&d, &deleted(&f, 4)).unwrap();
        assert!(!d.is_departed(10, "f", 20));

        // Local rename g -> h; a stale Update still says "g".
        let g = file(21, "g", 5);
        d.link_name(&g, 10, "g").unwrap();
        d.unlink_own_name(10, "g", 21, false).unwrap();
        d.link_name(&file(21, "h", 5), 10, "h").unwrap();
        let stale = v1::ChangeEvent {
            kind: v1::ChangeKind::Update as i32,
            ..created(&file(21, "g", 6))
        };
        apply(&d, &stale).unwrap();
        assert_eq!(d.store.lookup(10, "g").unwrap(), None);
        assert_eq!(d.store.lookup(10, "h").unwrap(), Some(21));
    }
}
