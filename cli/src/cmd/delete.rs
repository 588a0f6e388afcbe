//! `cyxcloud delete BUCKET -k KEY [--force]`: without --force, shows what would be deleted.

use std::process::ExitCode;

use cyxcloud_client::{ClientError, path_ref};
use cyxcloud_proto::v1;

use crate::args::{Cli, DeleteArgs};
use crate::output::rfc3339;

pub async fn run(cli: &Cli, a: &DeleteArgs) -> anyhow::Result<ExitCode> {
    let client = super::connect(cli).await?;
    let key = a.key.trim_start_matches('/');
    let entry = client
        .control()
        .get_attr(v1::GetAttrRequest {
            entry: Some(path_ref(&a.bucket, key)),
        })
        .await
        .map_err(|s| ClientError::rpc("get object", s))?
        .into_inner();
    if !a.force {
        if cli.json {
            println!(
                "{}",
                serde_json::json!({"bucket": a.bucket, "key": key, "size": entry.size, "last_modified": rfc3339(entry.mtime_ns), "deleted": false})
            );
        } else {
            println!("Warning: About to delete: {}/{}", a.bucket, key);
            println!("  Size: {} bytes", entry.size);
            println!("  Last modified: {}", rfc3339(entry.mtime_ns));
            println!();
            println!("Use --force to delete without confirmation.");
        }
        return Ok(ExitCode::SUCCESS);
    }
    client
        .control()
        .unlink(v1::RemoveRequest {
            parent_id: 0,
            name: String::new(),
            path: Some(v1::BucketPath {
                bucket: a.bucket.clone(),
                path: key.to_string(),
            }),
        })
        .await
        .map_err(|s| ClientError::rpc("delete object", s))?;
    if cli.json {
        println!(
            "{}",
            serde_json::json!({"bucket": a.bucket, "key": key, "size": entry.size, "deleted": true})
        );
    } else {
        println!("✓ Deleted: {}/{}", a.bucket, key);
    }
    Ok(ExitCode::SUCCESS)
}
