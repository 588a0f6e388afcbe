//! `status.json` in the cache directory, rewritten every second (atomically): what
//! `cyxcloud mount status` shows. Fields: `pid`, `mountpoint`, `bucket`, `gateway`,
//! `mounted`, `online`, `read_only`, `queued_uploads` (files not yet durable),
//! `pending_bytes`, `files` (each not-yet-durable file: `ino`, `path`, `size`, `state`,
//! `error`), `cache_bytes`, `cache_limit_bytes`, `cached_chunks`, `updated_unix`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::drive::Drive;

pub fn path(d: &Drive) -> PathBuf {
    d.cfg.cache_dir.join("status.json")
}

/// The status document.
pub fn snapshot(d: &Drive, mounted: bool) -> serde_json::Value {
    let mut files = Vec::new();
    for sf in d.staging.all() {
        let st = sf.lock();
        if !st.dirty() {
            continue;
        }
        files.push(serde_json::json!({
            "ino": sf.ino,
            "path": st.display,
            "size": st.size,
            "state": st.phase().as_str(),
            "error": st.error,
        }));
    }
    files.sort_by(|a, b| a["path"].as_str().cmp(&b["path"].as_str()));
    let (queued, bytes) = d.staging.pending();
    let (cache_bytes, chunks) = d.chunks.usage();
    serde_json::json!({
        "pid": std::process::id(),
        "mountpoint": d.cfg.mountpoint,
        "bucket": d.cfg.bucket,
        "gateway": d.remote.gateway(),
        "mounted": mounted,
        "online": d.remote.is_online(),
        "read_only": d.cfg.read_only,
        "queued_uploads": queued,
        "pending_bytes": bytes,
        "files": files,
        "cache_bytes": cache_bytes,
        "cache_limit_bytes": d.chunks.limit(),
        "cached_chunks": chunks,
        "updated_unix": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |t| t.as_secs()),
    })
}

pub fn write(d: &Drive, mounted: bool) {
    let p = path(d);
    let tmp = p.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(&snapshot(d, mounted)).unwrap_or_default();
    if let Err(e) = std::fs::write(&tmp, body).and_then(|_| std::fs::rename(&tmp, &p)) {
        tracing::debug!(error = %e, "cannot write status.json");
    }
}

pub async fn run(d: Arc<Drive>, stop: CancellationToken) {
    loop {
        write(&d, true);
        if let Err(e) = d.chunks.flush() {
            tracing::debug!(error = %e, "cannot flush chunk recency");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
