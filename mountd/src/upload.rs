//! Upload workers: take staged files from the queue in order and stripe them to nodes with the
//! client library; the gateway commits the new version atomically.

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use cyxcloud_client::{UploadOptions, id_ref};
use cyxcloud_proto::v1;
use tokio_util::sync::CancellationToken;

use crate::drive::Drive;
use crate::error::{Error, Result};
use crate::staging::StagedFile;

/// Bytes read from a staged file per write into the upload pipeline.
const READ_STEP: usize = 4 << 20;

/// A small file goes up in one gateway call and spends most of it waiting: this many small
/// files per worker are in flight at once. Striped uploads, which hold chunk buffers and use
/// the nodes' bandwidth, stay limited to the worker count.
const SMALL_PER_WORKER: usize = 4;

/// Runs upload tasks until `stop` is cancelled: `workers` striped uploads at a time, and
/// [`SMALL_PER_WORKER`] times as many in all.
pub async fn run(d: Arc<Drive>, workers: usize, stop: CancellationToken) {
    let Some(rx) = d.staging.take_queue().await else {
        return;
    };
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let striped = Arc::new(tokio::sync::Semaphore::new(workers.max(1)));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..workers.max(1) * SMALL_PER_WORKER {
        let (d, rx, stop, striped) = (d.clone(), rx.clone(), stop.clone(), striped.clone());
        set.spawn(async move {
            loop {
                let ino = tokio::select! {
                    _ = stop.cancelled() => return,
                    ino = async { rx.lock().await.recv().await } => ino,
                };
                let Some(ino) = ino else { return };
                upload_one(&d, ino, &striped).await;
            }
        });
    }
    while set.join_next().await.is_some() {}
}

async fn upload_one(d: &Drive, ino: u64, striped: &tokio::sync::Semaphore) {
    let Some(sf) = d.staging.get(ino) else { return };
    let snap = {
        let mut st = sf.lock();
        st.queued = false;
        if !st.dirty() || st.removed || st.uploading {
            return;
        }
        st.uploading = true;
        (st.generation, st.size, st.mtime_ns, st.mode, st.uid, st.gid)
    };
    let generation = snap.0;
    let started = std::time::Instant::now();
    let r = upload_bytes(d, &sf, snap, striped).await;
    d.remote.observe(&r);
    match r {
        Ok(e) => {
            tracing::info!(
                ino,
                size = snap.1,
                version = e.version,
                secs = started.elapsed().as_secs_f64(),
                "committed"
            );
            d.own_version(ino, e.version);
            let (gone, later_mtime, atime) = {
                let st = sf.lock();
                // A time set while the upload ran (utimens travels with the upload of a staged
                // file) is not in `e`, nor is an atime set while staged: they win, and the
                // gateway gets them below.
                (
                    st.orphan || st.removed,
                    (st.mtime_ns != snap.2).then_some(st.mtime_ns),
                    st.atime_ns.filter(|t| *t != e.atime_ns),
                )
            };
            // Only the content fields: xattrs, links or mode changed through this mount after
            // the commit (and not yet in `e`) must not be rolled back.
            let patched = d.patch(ino, |c| {
                c.size = e.size;
                c.version = e.version;
                c.etag = e.etag.clone();
                c.mtime_ns = later_mtime.unwrap_or(e.mtime_ns);
                c.atime_ns = atime.unwrap_or(c.atime_ns);
                c.change_seq = c.change_seq.max(e.change_seq);
            });
            if (later_mtime.is_some() || atime.is_some()) && !gone {
                let r = d
                    .remote
                    .control("setattr", |mut c| async move {
                        c.set_attr(v1::SetAttrRequest {
                            entry: Some(id_ref(ino)),
                            mtime_ns: later_mtime,
                            atime_ns: atime,
                            ..Default::default()
                        })
                        .await
                    })
                    .await;
                match r {
                    Ok(_) => {
                        let mut st = sf.lock();
                        if st.atime_ns == atime {
                            st.atime_ns = None;
                        }
                    }
                    Err(err) => {
                        tracing::warn!(ino, error = %err, "cannot send a time set during the upload; it stays local");
                    }
                }
            }
            if !gone && let Err(err) = patched {
                tracing::warn!(ino, error = %err, "cannot cache a committed entry");
            }
            d.layouts
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&ino);
            d.staging.finished(&sf, generation, Ok(()));
        }
        Err(e) if e.is_not_found() => {
            tracing::warn!(ino, error = %e, "the file was deleted at the gateway; its staged bytes are dropped");
            sf.lock().uploading = false;
            if let Err(err) = d.staging.remove(ino) {
                tracing::warn!(ino, error = %err, "cannot drop a staged file");
            }
        }
        Err(e) => {
            tracing::warn!(ino, error = %e, "upload failed; will retry");
            d.staging
                .finished(&sf, generation, Err((e.to_string(), crate::errno::of(&e))));
        }
    }
}

/// Creates pending file `sf` at the gateway (the caller holds its `create_lock`): a small
/// file with its bytes, in one call (`Some`: its committed entry); a larger one empty, for the
/// upload by id that follows (`None`, as when it was not pending any more).
async fn create_with_bytes(d: &Drive, sf: &StagedFile, size: u64) -> Result<Option<v1::Entry>> {
    if size as usize <= cyxcloud_client::write::INLINE_THRESHOLD {
        let mut data = vec![0u8; size as usize];
        let n = read_full(&sf.reopen()?, &mut data)?;
        data.truncate(n);
        match d.create_pending(sf, &data).await {
            Err(e) if e.code() == Some(cyxcloud_proto::ErrorCode::TooLarge) => {}
            Ok(Some(e)) if n as u64 == size => return Ok(Some(e)),
            r => return r.map(|_| None),
        }
    }
    d.create_pending(sf, &[]).await.map(|_| None)
}

/// Reads from the start of `f` into `buf` until it is full or the file ends.
fn read_full(f: &std::fs::File, buf: &mut [u8]) -> Result<usize> {
    let mut off = 0;
    while off < buf.len() {
        match f.read_at(&mut buf[off..], off as u64)? {
            0 => break,
            n => off += n,
        }
    }
    Ok(off)
}

async fn upload_bytes(
    d: &Drive,
    sf: &StagedFile,
    (_, size, mtime_ns, mode, uid, gid): (u64, u64, i64, u32, u32, u32),
    striped: &tokio::sync::Semaphore,
) -> Result<v1::Entry> {
    if let Some((_, _g)) = d.staging.lock_pending(sf.ino).await
        && let Some(e) = create_with_bytes(d, sf, size).await?
    {
        return Ok(e);
    }
    let _turn = striped
        .acquire()
        .await
        .map_err(|_| Error::Offline("the drive is stopping".into()))?;
    let client = d.remote.client().await?;
    let f = sf.reopen()?;
    let opts = UploadOptions {
        mode,
        uid,
        gid,
        size_hint: size,
        md5: true,
        mtime_ns: Some(mtime_ns),
        ..Default::default()
    };
    let mut up = client.upload(id_ref(sf.ino), opts);
    // Sized to the file: a 4 MiB zeroed buffer per small file was 10 % of the daemon's time
    // when creating many small files.
    let mut buf = vec![0u8; READ_STEP.min(size as usize).max(1)];
    let mut off = 0u64;
    while off < size {
        let want = READ_STEP.min((size - off) as usize);
        let n = match f.read_at(&mut buf[..want], off) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                let _ = up.abort().await;
                return Err(Error::Io(e));
            }
        };
        if let Err(e) = up.write(&buf[..n]).await {
            let _ = up.abort().await;
            return Err(e.into());
        }
        off += n as u64;
    }
    Ok(up.finish().await?)
}
