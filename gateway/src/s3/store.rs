//! Gateway-side state of the S3 API: multipart uploads and their parts (migration 2, both
//! engines), and the staging bucket where part data lives until completion.
//!
//! A part is a file `<upload id>/<part number>` in the staging bucket [`STAGING_BUCKET`] (a
//! name S3 cannot spell, owned by the system, hidden from `ListBuckets`), written through the
//! striping client like any object. Its version holds references on its chunks; completing
//! the upload installs a version of the target made of those same chunks (no data copy) and
//! then drops the part files.

use std::collections::BTreeMap;

use cyxcloud_proto::v1;
use prost::Message;

use crate::Gateway;
use crate::db::{Tx, args, now_ns, write_tx};
use crate::error::{Error, Result};
use crate::namespace::{Entry, InodeMeta, Kind, NewInode, ROOT_ID};

/// Holds the data of parts of unfinished multipart uploads.
pub const STAGING_BUCKET: &str = ".s3-uploads";

/// Migration 3 (S3 multipart uploads). Appended to `db::migrations::MIGRATIONS`.
pub const MIGRATION_S3_MULTIPART: &str = r#"
CREATE TABLE s3_uploads (
    id TEXT PRIMARY KEY,
    bucket TEXT NOT NULL,
    object_key TEXT NOT NULL,
    owner_id TEXT NOT NULL,
    initiator_id TEXT NOT NULL,
    content_type TEXT NOT NULL,
    meta {BLOB},
    created_ns BIGINT NOT NULL
);
CREATE INDEX s3_uploads_key ON s3_uploads (bucket, object_key, id);
CREATE INDEX s3_uploads_age ON s3_uploads (created_ns);
CREATE TABLE s3_parts (
    upload_id TEXT NOT NULL,
    part_number BIGINT NOT NULL,
    etag TEXT NOT NULL,
    size BIGINT NOT NULL,
    inode_id BIGINT NOT NULL,
    version_id BIGINT NOT NULL,
    created_ns BIGINT NOT NULL,
    PRIMARY KEY (upload_id, part_number)
)
"#;

/// Creates the staging bucket if it does not exist yet.
pub async fn ensure_staging_bucket(gw: &Gateway) -> Result<()> {
    write_tx!(gw.db, tx => {
        if crate::namespace::child(&mut tx, ROOT_ID, STAGING_BUCKET).await?.is_some() {
            return Ok(());
        }
        let now = now_ns();
        let seq = crate::journal::next_seq(&mut tx).await?;
        let n = NewInode {
            kind: Kind::Bucket,
            mode: 0o700,
            uid: 0,
            gid: 0,
            size: 0,
            symlink_target: "",
            owner_id: "system",
            marker: false,
            public_read: false,
        };
        let id = crate::namespace::insert_inode(&mut tx, &n, now, seq).await?;
        crate::namespace::insert_dentry(&mut tx, ROOT_ID, STAGING_BUCKET, id, Kind::Bucket).await?;
        crate::namespace::touch_dir(&mut tx, ROOT_ID, now, 1).await?;
        let inode = crate::namespace::load_inode(&mut tx, id)
            .await?
            .ok_or_else(|| Error::Internal("staging bucket vanished".into()))?;
        let e = Entry {
            inode,
            parent_id: ROOT_ID,
            name: STAGING_BUCKET.to_string(),
            bucket: STAGING_BUCKET.to_string(),
            path: String::new(),
        };
        crate::namespace::emit(&mut tx, seq, v1::ChangeKind::Create, &e, None).await?;
        Ok(())
    });
    Ok(())
}

/// A multipart upload.
#[derive(Debug, Clone, PartialEq)]
pub struct UploadRec {
    pub id: String,
    pub bucket: String,
    pub key: String,
    pub owner_id: String,
    pub initiator_id: String,
    pub content_type: String,
    pub meta: BTreeMap<String, String>,
    pub created_ns: i64,
}

/// One uploaded part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartRec {
    pub number: u32,
    pub etag: String,
    pub size: u64,
    pub inode_id: u64,
    pub version_id: u64,
    pub created_ns: i64,
}

const UPLOAD_COLS: &str =
    "id, bucket, object_key, owner_id, initiator_id, content_type, meta, created_ns";
const PART_COLS: &str = "part_number, etag, size, inode_id, version_id, created_ns";

fn upload_from_row(r: &crate::db::Row) -> Result<UploadRec> {
    let meta = match r.opt_blob(6)? {
        Some(b) if !b.is_empty() => {
            InodeMeta::decode(b.as_slice())
                .map_err(|e| Error::Corrupt(format!("upload metadata: {e}")))?
                .user_metadata
        }
        _ => BTreeMap::new(),
    };
    Ok(UploadRec {
        id: r.text(0)?,
        bucket: r.text(1)?,
        key: r.text(2)?,
        owner_id: r.text(3)?,
        initiator_id: r.text(4)?,
        content_type: r.text(5)?,
        meta,
        created_ns: r.i64(7)?,
    })
}

fn part_from_row(r: &crate::db::Row) -> Result<PartRec> {
    Ok(PartRec {
        number: r.u32(0)?,
        etag: r.text(1)?,
        size: r.u64(2)?,
        inode_id: r.u64(3)?,
        version_id: r.u64(4)?,
        created_ns: r.i64(5)?,
    })
}

/// The staging path of a part.
pub fn part_path(upload_id: &str, number: u32) -> String {
    format!("{upload_id}/{number:05}")
}

pub async fn create_upload(gw: &Gateway, u: &UploadRec) -> Result<()> {
    let meta = InodeMeta {
        user_metadata: u.meta.clone(),
        xattrs: BTreeMap::new(),
    };
    gw.db
        .exec(
            format!(
                "INSERT INTO s3_uploads ({UPLOAD_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
            ),
            args![
                u.id.as_str(),
                u.bucket.as_str(),
                u.key.as_str(),
                u.owner_id.as_str(),
                u.initiator_id.as_str(),
                u.content_type.as_str(),
                crate::namespace::encode_meta(&meta),
                u.created_ns
            ],
        )
        .await?;
    Ok(())
}

pub async fn get_upload(gw: &Gateway, id: &str) -> Result<Option<UploadRec>> {
    gw.db
        .opt(
            format!("SELECT {UPLOAD_COLS} FROM s3_uploads WHERE id = $1"),
            args![id],
        )
        .await?
        .map(|r| upload_from_row(&r))
        .transpose()
}

/// Uploads of a bucket in `(key, id)` order after the markers, at most `limit`.
pub async fn list_uploads(
    gw: &Gateway,
    bucket: &str,
    prefix: &str,
    key_marker: &str,
    id_marker: &str,
    limit: u32,
) -> Result<Vec<UploadRec>> {
    let rows = gw
        .db
        .all(
            format!(
                "SELECT {UPLOAD_COLS} FROM s3_uploads WHERE bucket = $1 AND object_key >= $2 \
                 AND (object_key > $3 OR (object_key = $3 AND id > $4)) \
                 ORDER BY object_key, id LIMIT $5"
            ),
            args![bucket, prefix, key_marker, id_marker, limit],
        )
        .await?;
    let mut out = Vec::new();
    for r in &rows {
        let u = upload_from_row(r)?;
        if !u.key.starts_with(prefix) {
            break;
        }
        out.push(u);
    }
    Ok(out)
}

/// Uploads started before `before_ns` (for expiry), at most `limit`.
pub async fn old_uploads(gw: &Gateway, before_ns: i64, limit: u32) -> Result<Vec<UploadRec>> {
    gw.db
        .all(
            format!(
                "SELECT {UPLOAD_COLS} FROM s3_uploads WHERE created_ns < $1 ORDER BY created_ns LIMIT $2"
            ),
            args![before_ns, limit],
        )
        .await?
        .iter()
        .map(upload_from_row)
        .collect()
}

/// Ids of every upload of a bucket.
pub async fn bucket_uploads(gw: &Gateway, bucket: &str) -> Result<Vec<String>> {
    gw.db
        .all("SELECT id FROM s3_uploads WHERE bucket = $1", args![bucket])
        .await?
        .iter()
        .map(|r| r.text(0))
        .collect()
}

/// Records a part; false when the upload no longer exists.
pub async fn put_part(gw: &Gateway, upload_id: &str, p: &PartRec) -> Result<bool> {
    let ok = write_tx!(gw.db, tx => {
        if tx.opt("SELECT 1 FROM s3_uploads WHERE id = $1", args![upload_id]).await?.is_none() {
            return Ok(false);
        }
        tx.exec(
            format!(
                "INSERT INTO s3_parts (upload_id, {PART_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (upload_id, part_number) DO UPDATE SET etag = excluded.etag, \
                 size = excluded.size, inode_id = excluded.inode_id, version_id = excluded.version_id, \
                 created_ns = excluded.created_ns"
            ),
            args![upload_id, p.number, p.etag.as_str(), p.size, p.inode_id, p.version_id, p.created_ns],
        )
        .await?;
        Ok(true)
    });
    Ok(ok)
}

/// Parts after `marker` in number order, at most `limit`.
pub async fn list_parts(
    gw: &Gateway,
    upload_id: &str,
    marker: u32,
    limit: u32,
) -> Result<Vec<PartRec>> {
    gw.db
        .all(
            format!(
                "SELECT {PART_COLS} FROM s3_parts WHERE upload_id = $1 AND part_number > $2 \
                 ORDER BY part_number LIMIT $3"
            ),
            args![upload_id, marker, limit],
        )
        .await?
        .iter()
        .map(part_from_row)
        .collect()
}

/// Forgets an upload and its parts; returns whether it existed.
pub async fn delete_upload(gw: &Gateway, upload_id: &str) -> Result<bool> {
    let n = write_tx!(gw.db, tx => delete_upload_in(&mut tx, upload_id).await);
    Ok(n)
}

async fn delete_upload_in(tx: &mut Tx, upload_id: &str) -> Result<bool> {
    tx.exec(
        "DELETE FROM s3_parts WHERE upload_id = $1",
        args![upload_id],
    )
    .await?;
    let n = tx
        .exec("DELETE FROM s3_uploads WHERE id = $1", args![upload_id])
        .await?;
    Ok(n > 0)
}
