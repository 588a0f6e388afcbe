//! The S3 data path: object bytes go through `cyxcloud-client`, exactly as for every other
//! client (ADR 0005). The gateway holds one [`Client`] connected to its own Control port with
//! an admin credential; the S3 layer has already authorized the request when it calls here.
//!
//! * Uploads: request body → [`Upload::write`] (chunker → encoder → parallel shard puts, at
//!   most `pipeline_depth` chunks in memory) → [`Upload::finish`] commits only after the body
//!   was fully read and verified; any failure aborts, so nothing is created.
//! * Downloads: the layout (with read tokens) is built in process for the caller, then
//!   [`Client::read_stream`] fetches chunk by chunk from the fastest `k` shards; a range only
//!   touches the chunks it covers. The first piece is read before the response starts
//!   ([`Data::body`]): an object that cannot be read is a 503 with an S3 error, never a `200`
//!   with no bytes; a chunk that fails later aborts the connection, so the client sees a
//!   transfer shorter than its Content-Length, never a short file reported as complete.

use std::net::SocketAddr;
use std::ops::Range;

use axum::body::Body;
use cyxcloud_client::read::Layout as ReadLayout;
use cyxcloud_client::{Client, ClientConfig, ReadOptions, Upload, UploadOptions};
use cyxcloud_proto::v1;

use crate::Gateway;
use crate::accounts::Caller;
use crate::db::args;
use crate::error::{Error, Result};
use crate::namespace::Ref;

use super::body::{BodyReader, Digests};
use super::error::{On, S3Error, S3Result};

/// Object bytes as the striping client reads them.
pub type ByteStream = futures::stream::BoxStream<'static, cyxcloud_client::Result<bytes::Bytes>>;

/// The data path handle.
#[derive(Clone)]
pub struct Data {
    client: Client,
    admin: Caller,
    gw: Gateway,
}

impl std::fmt::Debug for Data {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Data")
    }
}

impl Data {
    /// Connects the internal client to this gateway's Control port as the admin.
    pub async fn connect(gw: &Gateway, grpc: SocketAddr) -> Result<Data> {
        let row = gw
            .db
            .opt(
                "SELECT k.access_key, u.id FROM access_keys k JOIN users u ON u.id = k.user_id \
                 WHERE u.admin = 1 ORDER BY k.created_ns LIMIT 1",
                args![],
            )
            .await?;
        let (access_key, admin_id) = match row {
            Some(r) => (r.text(0)?, r.text(1)?),
            None => {
                let r = gw
                    .db
                    .opt(
                        "SELECT id FROM users WHERE admin = 1 ORDER BY created_ns LIMIT 1",
                        args![],
                    )
                    .await?
                    .ok_or_else(|| Error::Internal("no admin user".into()))?;
                let k = gw.accounts.create_access_key(&r.text(0)?).await?;
                (k.access_key, k.user_id)
            }
        };
        let (secret, _) = gw
            .accounts
            .secret_for(&access_key)
            .await?
            .ok_or_else(|| Error::Internal("the admin access key vanished".into()))?;
        let ip = if grpc.ip().is_unspecified() {
            match grpc {
                SocketAddr::V4(_) => std::net::IpAddr::from([127, 0, 0, 1]),
                SocketAddr::V6(_) => std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
            }
        } else {
            grpc.ip()
        };
        let addr = SocketAddr::new(ip, grpc.port());
        let scheme = if gw.tls.is_some() { "https" } else { "http" };
        let mut cfg = ClientConfig::new(format!("{scheme}://{addr}"), access_key, secret.as_str());
        // The cluster CA certifies this gateway's own certificate for 127.0.0.1.
        cfg.ca_pem = gw.tls.as_ref().map(|t| t.ca.cert_pem().as_bytes().to_vec());
        // One client serves every S3 request at once.
        cfg.max_shard_streams = 512;
        let client = Client::connect(cfg)
            .await
            .map_err(|e| Error::Unavailable(format!("S3 data path: {e}")))?;
        Ok(Data {
            client,
            admin: Caller {
                user_id: admin_id,
                admin: true,
            },
            gw: gw.clone(),
        })
    }

    /// The admin the internal client acts as.
    pub fn admin(&self) -> &Caller {
        &self.admin
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Streams a request body into a new version of `bucket/path`. The version is committed
    /// only when the body was read completely and every digest matched; otherwise the write
    /// is aborted and nothing changes.
    pub async fn put(
        &self,
        bucket: &str,
        path: &str,
        body: BodyReader,
        opts: UploadOptions,
    ) -> S3Result<(v1::Entry, Digests)> {
        let up = self
            .client
            .upload(cyxcloud_client::path_ref(bucket, path), opts);
        self.feed(up, body).await
    }

    async fn feed(&self, mut up: Upload, mut body: BodyReader) -> S3Result<(v1::Entry, Digests)> {
        let r: S3Result<()> = async {
            while let Some(piece) = body.next().await? {
                up.write(&piece)
                    .await
                    .map_err(|e| S3Error::from_client(e, On::Object))?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = r {
            abort(up).await;
            return Err(e);
        }
        let digests = match body.finish() {
            Ok(d) => d,
            Err(e) => {
                abort(up).await;
                return Err(e);
            }
        };
        let entry = up
            .finish()
            .await
            .map_err(|e| S3Error::from_client(e, On::Object))?;
        Ok((entry, digests))
    }

    /// Streams bytes from a stream (copies that cannot reference chunks) into `bucket/path`.
    pub async fn put_stream<S>(
        &self,
        bucket: &str,
        path: &str,
        mut src: S,
        opts: UploadOptions,
    ) -> S3Result<v1::Entry>
    where
        S: futures::Stream<Item = cyxcloud_client::Result<bytes::Bytes>> + Unpin,
    {
        use futures::StreamExt;
        let mut up = self
            .client
            .upload(cyxcloud_client::path_ref(bucket, path), opts);
        while let Some(piece) = src.next().await {
            let r = match piece {
                Ok(b) => up.write(&b).await,
                Err(e) => Err(e),
            };
            if let Err(e) = r {
                abort(up).await;
                return Err(S3Error::from_client(e, On::Object));
            }
        }
        up.finish()
            .await
            .map_err(|e| S3Error::from_client(e, On::Object))
    }

    /// The whole layout of `bucket/path` with read tokens, for `caller`.
    pub async fn layout(&self, caller: &Caller, bucket: &str, path: &str) -> S3Result<ReadLayout> {
        let r = self
            .gw
            .layout_with_tokens(
                caller,
                &Ref::Path {
                    bucket: bucket.to_string(),
                    path: path.to_string(),
                },
                0,
                0,
            )
            .await
            .map_err(|e| match e {
                Error::IsDirectory { .. } | Error::NotDirectory { .. } => S3Error::no_such_key(),
                e => S3Error::from_gateway(e, On::Object),
            })?;
        let entry = r
            .entry
            .ok_or_else(|| S3Error::internal("layout without entry"))?;
        Ok(ReadLayout {
            entry,
            inline: r.is_inline.then(|| bytes::Bytes::from(r.inline_data)),
            chunks: r.chunks,
        })
    }

    /// A streaming body of `range` of a layout, whose first piece has been read: when it
    /// cannot be, the error (503 `ServiceUnavailable` when shards are missing) goes out
    /// instead of a response.
    pub async fn body(&self, layout: ReadLayout, range: Range<u64>) -> S3Result<Body> {
        use futures::StreamExt;
        let mut stream = self.stream(layout, range);
        let first = match stream.next().await {
            Some(Ok(b)) => b,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "an object cannot be read; answering 503 before any byte");
                return Err(S3Error::from_client(e, On::Object));
            }
            None => return Ok(Body::empty()),
        };
        let metrics = self.gw.metrics.clone();
        let rest = stream.map(move |piece| {
            piece.map_err(|e| {
                tracing::warn!(error = %e, "an object stopped being readable mid-transfer; aborting the connection");
                metrics.s3_aborted();
                e
            })
        });
        Ok(Body::from_stream(
            futures::stream::once(async move { Ok(first) }).chain(rest),
        ))
    }

    /// The bytes of `range` of a layout, chunk by chunk.
    pub fn stream(&self, layout: ReadLayout, range: Range<u64>) -> ByteStream {
        Box::pin(
            self.client
                .read_stream(layout, Some(range), ReadOptions::default()),
        )
    }
}

async fn abort(up: Upload) {
    if let Err(e) = up.abort().await {
        tracing::warn!(error = %e, "aborting a failed S3 upload");
    }
}
