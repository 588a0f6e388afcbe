//! `cyxcloud list BUCKET [-p PREFIX] [-l] [-H] [--max-keys N]`

use std::process::ExitCode;

use crate::args::{Cli, ListArgs};
use crate::output::{human, rfc3339, short_etag};

const RULE: usize = 100;

pub async fn run(cli: &Cli, a: &ListArgs) -> anyhow::Result<ExitCode> {
    let client = super::connect(cli).await?;
    let objects = super::list_all(&client, &a.bucket, &a.prefix, a.max_keys).await?;
    if cli.json {
        let v: Vec<_> = objects
            .iter()
            .map(|o| serde_json::json!({"key": o.path, "size": o.size, "last_modified": rfc3339(o.mtime_ns), "etag": o.etag}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    if !a.long {
        for o in &objects {
            println!("{}", o.path);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let size = |b: u64| {
        if a.human_readable {
            human(b)
        } else {
            b.to_string()
        }
    };
    println!("{:<40} {:<11} {:<24} ETAG", "KEY", "SIZE", "LAST MODIFIED");
    println!("{}", "-".repeat(RULE));
    let mut total = 0u64;
    for o in &objects {
        total += o.size;
        println!(
            "{:<40} {:<11} {:<24} {}",
            o.path,
            size(o.size),
            rfc3339(o.mtime_ns),
            short_etag(&o.etag)
        );
    }
    println!("{}", "-".repeat(RULE));
    let noun = if objects.len() == 1 {
        "object"
    } else {
        "objects"
    };
    println!(
        "{} {noun}, {} total",
        objects.len(),
        if a.human_readable {
            human(total)
        } else {
            format!("{total} bytes")
        }
    );
    Ok(ExitCode::SUCCESS)
}
