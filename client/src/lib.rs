//! `cyxcloud-client`: the one library that writes and reads files the CyxCloud way. The CLI,
//! mountd, syncd and the gateway's S3 handlers all use it.
//!
//! * Write ([`write`]): `BeginWrite` → chunk → (encrypt) → encode → put the `k + m` shards of
//!   each chunk to their nodes in parallel, pipelined across chunks, with per-node timeouts, a
//!   success threshold and a long-tail cut-off → `CheckpointWrite` per chunk (so an interrupted
//!   upload resumes from the last durable chunk) → `CommitWrite`.
//! * Read ([`read`]): `GetLayout` → per chunk, ask the fastest nodes first for `k` shards,
//!   decode as soon as `k` verified shards are in, cancel the rest, report corrupt or missing
//!   shards to the gateway and read around them. Ranges fetch only the chunks they touch.
//! * Keys ([`keys`]): the user's master key in a 0600 key file or derived from a passphrase.
//!
//! Memory is bounded by the configured pipeline depth × chunk size, never the file size.
//! Depends on `core` and `proto` only; never on a daemon crate.

pub mod config;
pub mod discover;
pub mod error;
pub mod keys;
pub mod nodes;
pub mod read;
pub mod session;
pub mod write;

pub use config::ClientConfig;
pub use error::{ClientError, Result};
pub use read::ReadOptions;
pub use session::Client;
pub use write::{Upload, UploadOptions};

pub use cyxcloud_proto::v1::{BucketPath, Entry, EntryRef};

/// An [`EntryRef`] for `bucket` + `path`.
pub fn path_ref(bucket: &str, path: &str) -> EntryRef {
    EntryRef {
        r#ref: Some(cyxcloud_proto::v1::entry_ref::Ref::Path(BucketPath {
            bucket: bucket.into(),
            path: path.into(),
        })),
    }
}

/// An [`EntryRef`] for an entry id.
pub fn id_ref(id: u64) -> EntryRef {
    EntryRef {
        r#ref: Some(cyxcloud_proto::v1::entry_ref::Ref::Id(id)),
    }
}
