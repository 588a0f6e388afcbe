//! `cyxcloud download BUCKET [-k KEY | --prefix P] [-o OUT]`: one object, everything under a
//! prefix, or the whole bucket. Files are written to a temporary name and renamed into place,
//! so an interrupted download never leaves a truncated file under the real name.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use cyxcloud_client::{Client, ClientError, ReadOptions, path_ref};
use cyxcloud_core::MasterKey;

use crate::args::{Cli, DownloadArgs};
use crate::output::human;

pub async fn run(cli: &Cli, a: &DownloadArgs) -> anyhow::Result<ExitCode> {
    let client = super::connect(cli).await?;
    let mut jobs: Vec<(String, PathBuf, u64)> = Vec::new();
    match (&a.key, &a.prefix) {
        (Some(_), Some(_)) => bail!("use either -k/--key or --prefix, not both"),
        (Some(key), None) => {
            let key = key.trim_start_matches('/').to_string();
            let name = key.rsplit('/').next().unwrap_or(&key).to_string();
            let dest = match &a.output {
                Some(o) if o.is_dir() || o.to_string_lossy().ends_with('/') => o.join(&name),
                Some(o) => o.clone(),
                None => PathBuf::from(&name),
            };
            jobs.push((key, dest, 0));
        }
        (None, prefix) => {
            let prefix = prefix.clone().unwrap_or_default();
            let out = a.output.clone().unwrap_or_else(|| PathBuf::from("."));
            for o in super::list_all(&client, &a.bucket, &prefix, None).await? {
                if o.path.ends_with('/') {
                    std::fs::create_dir_all(out.join(&o.path))?;
                    continue;
                }
                let dest = out.join(safe_relative(&o.path)?);
                jobs.push((o.path, dest, o.size));
            }
        }
    }
    let total = jobs.iter().map(|j| j.2).sum();
    let pb = super::progress(cli, total, "Downloading");
    let mut key_cache: Option<MasterKey> = None;
    let mut results = Vec::new();
    for (key, dest, _) in &jobs {
        let n = download_one(&client, a, &a.bucket, key, dest, &mut key_cache, &pb).await?;
        if !cli.json {
            pb.suspend(|| {
                println!(
                    "✓ Downloaded {}/{} → {} ({})",
                    a.bucket,
                    key,
                    dest.display(),
                    human(n)
                )
            });
        }
        results.push(serde_json::json!({"bucket": a.bucket, "key": key, "path": dest, "size": n}));
    }
    pb.finish_and_clear();
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else if jobs.is_empty() {
        println!("No objects to download.");
    }
    Ok(ExitCode::SUCCESS)
}

/// Refuses keys that would escape the output directory.
fn safe_relative(key: &str) -> anyhow::Result<PathBuf> {
    let p = Path::new(key);
    if key.split('/').any(|s| s == ".." || s == ".") || p.is_absolute() {
        bail!("refusing to write object key {key:?} outside the output directory");
    }
    Ok(p.to_path_buf())
}

async fn download_one(
    client: &Client,
    a: &DownloadArgs,
    bucket: &str,
    key: &str,
    dest: &Path,
    key_cache: &mut Option<MasterKey>,
    pb: &indicatif::ProgressBar,
) -> anyhow::Result<u64> {
    let layout = client
        .layout(path_ref(bucket, key), None)
        .await
        .with_context(|| format!("{bucket}/{key}"))?;
    let encrypted = layout
        .chunks
        .iter()
        .any(|c| c.info.as_ref().is_some_and(|i| i.encrypted));
    if encrypted && key_cache.is_none() {
        match super::upload::master_key(client, a.key_file.clone(), a.passphrase.clone(), false) {
            Ok(k) => *key_cache = Some(k),
            Err(e) => {
                return Err(anyhow::Error::new(ClientError::KeyRequired).context(format!(
                    "{bucket}/{key} is encrypted; give the key with --key-file or --passphrase ({e:#})"
                )));
            }
        }
    }
    if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(dir).await?;
    }
    let tmp = dest.with_file_name(format!(
        ".{}.cyxcloud-part",
        dest.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    let mut file = tokio::fs::File::create(&tmp)
        .await
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    let progress = pb.clone();
    let opts = ReadOptions {
        key: if encrypted { key_cache.clone() } else { None },
        progress: Some(Arc::new(move |n| progress.inc(n))),
    };
    let mut stream = std::pin::pin!(client.read_stream(layout, None, opts));
    let mut n = 0u64;
    use futures::StreamExt;
    use tokio::io::AsyncWriteExt;
    let result: Result<(), anyhow::Error> = async {
        while let Some(part) = stream.next().await {
            let part = part.map_err(|e: ClientError| anyhow::Error::new(e))?;
            file.write_all(&part).await?;
            n += part.len() as u64;
        }
        file.sync_all().await?;
        Ok(())
    }
    .await;
    if let Err(e) = result {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(e.context(format!("downloading {bucket}/{key}")));
    }
    tokio::fs::rename(&tmp, dest).await?;
    Ok(n)
}
