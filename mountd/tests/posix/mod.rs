//! A pjdfstest-style POSIX conformance suite, run through a real mount of a live cluster.
//! Each case gets a fresh directory; all cases run (failures are collected and reported
//! together) so one run shows everything that does not conform.

mod cases;
pub mod sys;

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;

use crate::cluster::{Cluster, Mount};

/// What a case works in.
pub struct Ctx {
    /// A fresh directory for this case (inside bucket `posix`).
    pub dir: PathBuf,
    /// The mount's root (buckets).
    pub root: PathBuf,
    /// A directory in another bucket (for cross-bucket errors).
    pub other: PathBuf,
}

impl Ctx {
    pub fn p(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }
}

/// The errno of an io::Error.
pub fn errno(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

/// Asserts an io result failed with `want`.
#[track_caller]
pub fn fails<T: std::fmt::Debug>(r: std::io::Result<T>, want: i32) {
    match r {
        Ok(v) => panic!("expected errno {want}, got success {v:?}"),
        Err(e) => assert_eq!(errno(e), want, "wrong errno"),
    }
}

#[test]
fn posix_conformance() {
    let c = Cluster::start(7);
    c.create_bucket("posix");
    c.create_bucket("posix-other");
    let m = Mount::start(&c, &[]);
    let mut failed = Vec::new();
    let cases = cases::all();
    let n = cases.len();
    for (name, case) in cases {
        let dir = m.p(&format!("posix/{name}"));
        let other = m.p(&format!("posix-other/{name}"));
        if let Err(e) = std::fs::create_dir(&dir).and_then(|_| std::fs::create_dir(&other)) {
            failed.push(format!("{name}: setup: {e}"));
            continue;
        }
        let ctx = Ctx {
            dir,
            root: m.path.clone(),
            other,
        };
        if let Err(p) = std::panic::catch_unwind(AssertUnwindSafe(|| case(&ctx))) {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failed.push(format!("{name}: {msg}"));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {n} POSIX cases failed:\n{}\n--- mountd log tail ---\n{}",
        failed.len(),
        failed.join("\n"),
        m.log()
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
