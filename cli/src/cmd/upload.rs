//! `cyxcloud upload PATH [-b BUCKET] [-p PREFIX] [-e]`: a file, or a directory recursively.
//!
//! Interrupted uploads resume: once a write has started, its id is saved under
//! `~/.cache/cyxcloud/uploads/`; running the same upload again (same file, size and mtime)
//! continues after the last durable chunk instead of starting from byte 0. Only regular files
//! resume: what a pipe or device gave once cannot be read again.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use cyxcloud_client::keys::{self, KeySource};
use cyxcloud_client::write::{Upload, UploadOptions};
use cyxcloud_client::{Client, ClientError, path_ref};
use cyxcloud_core::MasterKey;
use cyxcloud_proto::{ErrorCode, v1};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::args::{Cli, UploadArgs};
use crate::output::human;

pub async fn run(cli: &Cli, a: &UploadArgs) -> anyhow::Result<ExitCode> {
    let meta =
        std::fs::metadata(&a.path).with_context(|| format!("cannot read {}", a.path.display()))?;
    let files = if meta.is_dir() {
        walk(&a.path)?
    } else {
        vec![(a.path.clone(), file_name(&a.path)?)]
    };
    let client = super::connect_with(cli, |c| c.wait_all_shards = a.all_shards).await?;
    let key = if a.encrypt {
        Some(master_key(
            &client,
            a.key_file.clone(),
            a.passphrase.clone(),
            true,
        )?)
    } else {
        None
    };
    ensure_bucket(&client, &a.bucket).await?;
    let total: u64 = files
        .iter()
        .map(|(p, _)| std::fs::metadata(p).map_or(0, |m| m.len()))
        .sum();
    let pb = super::progress(cli, total, "Uploading");
    let mut results = Vec::new();
    for (path, rel) in &files {
        let object = super::join_key(&a.prefix, rel);
        let entry = upload_file(
            &client,
            path,
            &a.bucket,
            &object,
            a,
            key.clone(),
            pb.clone(),
        )
        .await?;
        if !cli.json {
            pb.suspend(|| {
                println!(
                    "✓ Uploaded {} → {}/{} ({})",
                    path.display(),
                    a.bucket,
                    object,
                    human(entry.size)
                )
            });
        }
        results.push(serde_json::json!({"path": path, "bucket": a.bucket, "key": object, "size": entry.size, "etag": entry.etag, "encrypted": key.is_some()}));
    }
    pb.finish_and_clear();
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else if files.len() > 1 {
        println!(
            "{} files, {} uploaded to {}",
            files.len(),
            human(total),
            a.bucket
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn file_name(p: &Path) -> anyhow::Result<String> {
    Ok(p.file_name()
        .with_context(|| format!("{} has no file name", p.display()))?
        .to_string_lossy()
        .into_owned())
}

/// Regular files under `dir`, sorted, with their '/'-separated paths relative to `dir`.
fn walk(dir: &Path) -> anyhow::Result<Vec<(PathBuf, String)>> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((d, rel)) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&d)
            .with_context(|| format!("cannot list {}", d.display()))?
            .collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name().to_string_lossy().into_owned();
            let r = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let ft = e.file_type()?;
            if ft.is_dir() {
                stack.push((e.path(), r));
            } else if ft.is_file() {
                out.push((e.path(), r));
            } else {
                eprintln!("skipping {} (not a regular file)", e.path().display());
            }
        }
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(out)
}

/// The user's master key: from a passphrase, or the key file (created on first use when
/// `create`).
pub fn master_key(
    client: &Client,
    file: Option<PathBuf>,
    passphrase: Option<String>,
    create: bool,
) -> anyhow::Result<MasterKey> {
    let source = match passphrase {
        Some(p) => KeySource::Passphrase {
            passphrase: p,
            salt: client.user_id().to_string(),
        },
        None => KeySource::File(file.unwrap_or_else(keys::default_key_file)),
    };
    keys::load(&source, create).context("cannot load the encryption key")
}

pub async fn ensure_bucket(client: &Client, bucket: &str) -> anyhow::Result<()> {
    match client
        .control()
        .create_bucket(v1::CreateBucketRequest {
            name: bucket.to_string(),
            public_read: false,
        })
        .await
    {
        Ok(_) => Ok(()),
        Err(s) if cyxcloud_proto::error_code(&s) == ErrorCode::AlreadyExists => Ok(()),
        Err(s) => Err(ClientError::rpc("create bucket", s))
            .with_context(|| format!("cannot create bucket {bucket}")),
    }
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct ResumeState {
    write_id: String,
    size: u64,
    mtime_ns: i64,
}

fn resume_path(path: &Path, bucket: &str, key: &str) -> PathBuf {
    let abs = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let id = cyxcloud_core::Hash::of(format!("{}\0{bucket}\0{key}", abs.display()).as_bytes());
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("cyxcloud")
        .join("uploads")
        .join(format!("{}.json", &id.to_hex()[..32]))
}

fn mtime_ns(m: &std::fs::Metadata) -> i64 {
    m.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i64)
}

async fn upload_file(
    client: &Client,
    path: &Path,
    bucket: &str,
    key: &str,
    a: &UploadArgs,
    master: Option<MasterKey>,
    pb: indicatif::ProgressBar,
) -> anyhow::Result<cyxcloud_client::Entry> {
    let meta = std::fs::metadata(path)?;
    let state_file = resume_path(path, bucket, key);
    let this = ResumeState {
        write_id: String::new(),
        size: meta.len(),
        mtime_ns: mtime_ns(&meta),
    };
    let progress = pb.clone();
    let opts = UploadOptions {
        profile: a.profile.clone(),
        key: master,
        content_type: String::new(),
        size_hint: meta.len(),
        md5: true,
        mode: 0o644,
        mtime_ns: Some(this.mtime_ns),
        progress: Some(Arc::new(move |n| progress.inc(n))),
        ..Default::default()
    };
    let target = path_ref(bucket, key);
    let resumable = meta.is_file() && !a.no_resume;
    let saved: Option<ResumeState> = resumable
        .then(|| std::fs::read(&state_file).ok())
        .flatten()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .filter(|s: &ResumeState| s.size == this.size && s.mtime_ns == this.mtime_ns);
    let mut file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("cannot open {}", path.display()))?;
    let mut up = match &saved {
        Some(s) => match Upload::resume(client, &s.write_id, target.clone(), opts.clone()).await {
            Ok(up) => up,
            Err(e) => {
                tracing::info!(error = %e, "cannot resume; starting over");
                client.upload(target, opts)
            }
        },
        None => client.upload(target, opts),
    };
    let mut buf = vec![0u8; 1 << 20];
    let skip = up.resume_offset();
    if skip > 0 {
        pb.suspend(|| {
            eprintln!(
                "Resuming upload of {} at {} of {}",
                path.display(),
                human(skip),
                human(meta.len())
            )
        });
        // Re-hash the part already uploaded (for the ETag), without sending it again.
        let mut left = skip;
        while left > 0 {
            let n = file.read(&mut buf[..left.min(1 << 20) as usize]).await?;
            if n == 0 {
                bail!("{} shrank while resuming", path.display());
            }
            up.hash_only(&buf[..n]);
            left -= n as u64;
        }
        pb.inc(skip);
        file.seek(std::io::SeekFrom::Start(skip)).await?;
    }
    let mut saved_state = saved.is_some() || !resumable;
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        up.write(&buf[..n]).await?;
        if !saved_state && let Some(id) = up.write_id() {
            let st = ResumeState {
                write_id: id.to_string(),
                size: this.size,
                mtime_ns: this.mtime_ns,
            };
            if let Some(dir) = state_file.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(&state_file, serde_json::to_vec(&st)?)?;
            saved_state = true;
        }
    }
    let entry = up.finish().await?;
    let _ = std::fs::remove_file(&state_file);
    Ok(entry)
}
