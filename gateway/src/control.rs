//! The `Control` gRPC service: thin handlers that authenticate the caller, convert the wire
//! messages, call the namespace / writes / layout / registry modules, and map errors once
//! (`From<Error> for tonic::Status`).

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::time::Instant;

use cyxcloud_core::Hash;
use cyxcloud_core::token::Op;
use cyxcloud_proto::v1;
use tonic::{Request, Response, Status};

use crate::Gateway;
use crate::accounts::Caller;
use crate::error::{Error, Result};
use crate::namespace::{Ref, Rename, SetAttr};
use crate::writes::{BeginParams, Committed, FileAttrs};

#[derive(Clone, Debug)]
pub struct ControlService {
    gw: Gateway,
}

impl ControlService {
    pub fn new(gw: Gateway) -> Self {
        ControlService { gw }
    }

    fn caller<T>(&self, req: &Request<T>) -> Result<Caller> {
        caller_of(&self.gw, req.metadata())
    }

    fn finish<T>(
        &self,
        method: &str,
        started: Instant,
        r: Result<T>,
    ) -> Result<Response<T>, Status> {
        respond(&self.gw, method, started, r)
    }
}

/// Who calls, from the request's `authorization: Bearer <token>` (every gRPC service).
pub fn caller_of(gw: &Gateway, md: &tonic::metadata::MetadataMap) -> Result<Caller> {
    let token = bearer(md).ok_or_else(|| {
        Error::Unauthenticated("missing `authorization: Bearer <token>` (call Authenticate)".into())
    })?;
    gw.accounts.verify(token)
}

/// Records a call's outcome under `method` and turns it into the gRPC response.
pub fn respond<T>(
    gw: &Gateway,
    method: &str,
    started: Instant,
    r: Result<T>,
) -> Result<Response<T>, Status> {
    let code = match &r {
        Ok(_) => "ok",
        Err(e) => e.code().as_str(),
    };
    gw.metrics.observe(method, code, started);
    r.map(Response::new).map_err(Status::from)
}

/// The bearer token of a request's metadata.
pub fn bearer(md: &tonic::metadata::MetadataMap) -> Option<&str> {
    let v = md.get("authorization")?.to_str().ok()?;
    v.strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))
        .map(str::trim)
}

macro_rules! rpc {
    ($self:ident, $name:literal, $req:ident, |$caller:ident, $r:ident| $body:expr) => {{
        let started = Instant::now();
        let res: Result<_> = async {
            let $caller = $self.caller(&$req)?;
            let $r = $req.into_inner();
            $body
        }
        .await;
        $self.finish($name, started, res)
    }};
}

fn path_ref(p: &Option<v1::BucketPath>) -> Option<(String, String)> {
    p.as_ref().map(|p| (p.bucket.clone(), p.path.clone()))
}

fn chunk_descriptors(
    chunks: &[v1::ChunkDescriptor],
) -> Result<Vec<(u32, cyxcloud_core::ChunkMeta)>> {
    chunks
        .iter()
        .map(|c| {
            let info = c
                .info
                .as_ref()
                .ok_or_else(|| Error::invalid(format!("chunk {} has no info", c.index)))?;
            let meta = cyxcloud_proto::convert::chunk_meta(info)
                .map_err(|s| Error::invalid(format!("chunk {}: {}", c.index, s.message())))?;
            Ok((c.index, meta))
        })
        .collect()
}

fn committed(chunks: &[v1::CommittedChunk]) -> Result<Vec<Committed>> {
    chunks.iter().map(Committed::from_proto).collect()
}

type EventStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<v1::ChangeEvent, Status>> + Send>>;

#[tonic::async_trait]
impl v1::control_server::Control for ControlService {
    async fn authenticate(
        &self,
        request: Request<v1::AuthenticateRequest>,
    ) -> Result<Response<v1::AuthenticateResponse>, Status> {
        let started = Instant::now();
        let r = request.into_inner();
        let res = self
            .gw
            .accounts
            .authenticate(&r.access_key, &r.secret_key)
            .await
            .map(|t| v1::AuthenticateResponse {
                token: t.token,
                expires_at: t.expires_at as i64,
                user_id: t.caller.user_id,
                admin: t.caller.admin,
                node_ca: self
                    .gw
                    .tls
                    .as_ref()
                    .map(|t| t.ca.cert_pem().to_string())
                    .unwrap_or_default(),
            });
        self.finish("Authenticate", started, res)
    }

    async fn create_bucket(
        &self,
        request: Request<v1::CreateBucketRequest>,
    ) -> Result<Response<v1::Entry>, Status> {
        rpc!(self, "CreateBucket", request, |caller, r| {
            Ok(self
                .gw
                .ns
                .create_bucket(&caller, &r.name, r.public_read)
                .await?
                .into())
        })
    }

    async fn delete_bucket(
        &self,
        request: Request<v1::DeleteBucketRequest>,
    ) -> Result<Response<v1::Empty>, Status> {
        rpc!(self, "DeleteBucket", request, |caller, r| {
            self.gw.ns.delete_bucket(&caller, &r.name).await?;
            Ok(v1::Empty {})
        })
    }

    async fn list_buckets(
        &self,
        request: Request<v1::ListBucketsRequest>,
    ) -> Result<Response<v1::ListBucketsResponse>, Status> {
        rpc!(self, "ListBuckets", request, |caller, _r| {
            let b = self.gw.ns.list_buckets(&caller).await?;
            Ok(v1::ListBucketsResponse {
                buckets: b.into_iter().map(Into::into).collect(),
            })
        })
    }

    async fn lookup(
        &self,
        request: Request<v1::LookupRequest>,
    ) -> Result<Response<v1::Entry>, Status> {
        rpc!(self, "Lookup", request, |caller, r| {
            Ok(self
                .gw
                .ns
                .lookup(&caller, r.parent_id, &r.name)
                .await?
                .into())
        })
    }

    async fn get_attr(
        &self,
        request: Request<v1::GetAttrRequest>,
    ) -> Result<Response<v1::Entry>, Status> {
        rpc!(self, "GetAttr", request, |caller, r| {
            let e = Ref::from_proto(r.entry.as_ref())?;
            Ok(self.gw.ns.getattr(&caller, &e).await?.into())
        })
    }

    async fn set_attr(
        &self,
        request: Request<v1::SetAttrRequest>,
    ) -> Result<Response<v1::Entry>, Status> {
        rpc!(self, "SetAttr", request, |caller, r| {
            let e = Ref::from_proto(r.entry.as_ref())?;
            let a = SetAttr {
                mode: r.mode,
                uid: r.uid,
                gid: r.gid,
                size: r.size,
                atime_ns: r.atime_ns,
                mtime_ns: r.mtime_ns,
                content_type: r.content_type,
            };
            Ok(self.gw.ns.setattr(&caller, &e, &a).await?.into())
        })
    }

    async fn read_dir(
        &self,
        request: Request<v1::ReadDirRequest>,
    ) -> Result<Response<v1::ReadDirResponse>, Status> {
        rpc!(self, "ReadDir", request, |caller, r| {
            let d = Ref::from_proto(r.directory.as_ref())?;
            let page = self
                .gw
                .cached_readdir(&caller, &d, &r.after, r.limit)
                .await?;
            Ok(page)
        })
    }

    async fn mkdir(
        &self,
        request: Request<v1::MkdirRequest>,
    ) -> Result<Response<v1::Entry>, Status> {
        rpc!(self, "Mkdir", request, |caller, r| {
            let e = match path_ref(&r.path) {
                Some((bucket, path)) => {
                    self.gw
                        .ns
                        .mkdir_path(
                            &caller,
                            &bucket,
                            &path,
                            crate::namespace::Perms {
                                mode: r.mode,
                                uid: r.uid,
                                gid: r.gid,
                            },
                            false,
                        )
                        .await?
                }
                None => {
                    self.gw
                        .ns
                        .mkdir(&caller, r.parent_id, &r.name, r.mode, r.uid, r.gid)
                        .await?
                }
            };
            Ok(e.into())
        })
    }

    async fn rmdir(
        &self,
        request: Request<v1::RemoveRequest>,
    ) -> Result<Response<v1::Empty>, Status> {
        rpc!(self, "Rmdir", request, |caller, r| {
            match path_ref(&r.path) {
                Some((bucket, path)) => self.gw.ns.rmdir_path(&caller, &bucket, &path).await?,
                None => self.gw.ns.rmdir(&caller, r.parent_id, &r.name).await?,
            }
            Ok(v1::Empty {})
        })
    }

    async fn unlink(
        &self,
        request: Request<v1::RemoveRequest>,
    ) -> Result<Response<v1::Empty>, Status> {
        rpc!(self, "Unlink", request, |caller, r| {
            match path_ref(&r.path) {
                Some((bucket, path)) => {
                    self.gw
                        .ns
                        .unlink_path(&caller, &bucket, &path, false)
                        .await?
                }
                None => self.gw.ns.unlink(&caller, r.parent_id, &r.name).await?,
            }
            Ok(v1::Empty {})
        })
    }

    async fn rename(
        &self,
        request: Request<v1::RenameRequest>,
    ) -> Result<Response<v1::Empty>, Status> {
        rpc!(self, "Rename", request, |caller, r| {
            let flags = match v1::RenameFlags::try_from(r.flags) {
                Ok(v1::RenameFlags::None) => Rename::Replace,
                Ok(v1::RenameFlags::Noreplace) => Rename::NoReplace,
                Ok(v1::RenameFlags::Exchange) => Rename::Exchange,
                Err(_) => return Err(Error::invalid(format!("unknown rename flags {}", r.flags))),
            };
            self.gw
                .ns
                .rename(
                    &caller,
                    r.parent_id,
                    &r.name,
                    r.new_parent_id,
                    &r.new_name,
                    flags,
                )
                .await?;
            Ok(v1::Empty {})
        })
    }

    async fn symlink(
        &self,
        request: Request<v1::SymlinkRequest>,
    ) -> Result<Response<v1::Entry>, Status> {
        rpc!(self, "Symlink", request, |caller, r| {
            Ok(self
                .gw
                .ns
                .symlink(&caller, r.parent_id, &r.name, &r.target, r.uid, r.gid)
                .await?
                .into())
        })
    }

    async fn readlink(
        &self,
        request: Request<v1::GetAttrRequest>,
    ) -> Result<Response<v1::ReadlinkResponse>, Status> {
        rpc!(self, "Readlink", request, |caller, r| {
            let e = Ref::from_proto(r.entry.as_ref())?;
            Ok(v1::ReadlinkResponse {
                target: self.gw.ns.readlink(&caller, &e).await?,
            })
        })
    }

    async fn link(&self, request: Request<v1::LinkRequest>) -> Result<Response<v1::Entry>, Status> {
        rpc!(self, "Link", request, |caller, r| {
            Ok(self
                .gw
                .ns
                .link(&caller, r.id, r.new_parent_id, &r.new_name)
                .await?
                .into())
        })
    }

    async fn set_xattr(
        &self,
        request: Request<v1::SetXattrRequest>,
    ) -> Result<Response<v1::Empty>, Status> {
        rpc!(self, "SetXattr", request, |caller, r| {
            let e = Ref::from_proto(r.entry.as_ref())?;
            self.gw
                .ns
                .set_xattr(&caller, &e, &r.name, &r.value, r.flags)
                .await?;
            Ok(v1::Empty {})
        })
    }

    async fn remove_xattr(
        &self,
        request: Request<v1::RemoveXattrRequest>,
    ) -> Result<Response<v1::Empty>, Status> {
        rpc!(self, "RemoveXattr", request, |caller, r| {
            let e = Ref::from_proto(r.entry.as_ref())?;
            self.gw.ns.remove_xattr(&caller, &e, &r.name).await?;
            Ok(v1::Empty {})
        })
    }

    async fn list_objects(
        &self,
        request: Request<v1::ListObjectsRequest>,
    ) -> Result<Response<v1::ListObjectsResponse>, Status> {
        rpc!(self, "ListObjects", request, |caller, r| {
            let l = self
                .gw
                .ns
                .list_objects(
                    &caller,
                    &r.bucket,
                    &r.prefix,
                    &r.delimiter,
                    &r.start_after,
                    r.max_keys,
                )
                .await?;
            Ok(v1::ListObjectsResponse {
                objects: l.objects.into_iter().map(Into::into).collect(),
                common_prefixes: l.common_prefixes,
                truncated: l.truncated,
                next_start_after: l.next_start_after,
            })
        })
    }

    async fn stat_fs(
        &self,
        request: Request<v1::StatFsRequest>,
    ) -> Result<Response<v1::StatFsResponse>, Status> {
        rpc!(self, "StatFs", request, |caller, _r| self
            .gw
            .stat_fs(&caller)
            .await)
    }

    async fn begin_write(
        &self,
        request: Request<v1::BeginWriteRequest>,
    ) -> Result<Response<v1::BeginWriteResponse>, Status> {
        rpc!(self, "BeginWrite", request, |caller, r| {
            let target = Ref::from_proto(r.target.as_ref())?;
            let p = BeginParams {
                size_hint: r.size_hint,
                profile: r.profile.clone(),
                encrypted: r.encrypted,
                chunks: chunk_descriptors(&r.chunks)?,
                mode: r.mode,
                uid: r.uid,
                gid: r.gid,
                if_version: r.if_version,
                if_absent: r.if_absent,
                base_version: r.base_version,
            };
            let b = self.gw.writes.begin(&caller, &target, p).await?;
            Ok(v1::BeginWriteResponse {
                write_id: b.write_id,
                chunk_size: b.chunk_size,
                data_shards: b.profile.data() as u32,
                parity_shards: b.profile.parity() as u32,
                codec: b.codec.as_u8() as u32,
                success_threshold: b.success_threshold,
                inline_threshold: b.inline_threshold,
                expires_at: b.expires_at,
                placements: b.placements,
            })
        })
    }

    async fn place_chunks(
        &self,
        request: Request<v1::PlaceChunksRequest>,
    ) -> Result<Response<v1::PlaceChunksResponse>, Status> {
        rpc!(self, "PlaceChunks", request, |caller, r| {
            let chunks = chunk_descriptors(&r.chunks)?;
            let placements = self
                .gw
                .writes
                .place(&caller, &r.write_id, &chunks, &r.avoid_nodes)
                .await?;
            Ok(v1::PlaceChunksResponse { placements })
        })
    }

    async fn checkpoint_write(
        &self,
        request: Request<v1::CheckpointWriteRequest>,
    ) -> Result<Response<v1::WriteStatus>, Status> {
        rpc!(self, "CheckpointWrite", request, |caller, r| {
            self.gw
                .writes
                .checkpoint(&caller, &r.write_id, &committed(&r.chunks)?)
                .await
        })
    }

    async fn get_write(
        &self,
        request: Request<v1::GetWriteRequest>,
    ) -> Result<Response<v1::WriteStatus>, Status> {
        rpc!(self, "GetWrite", request, |caller, r| self
            .gw
            .writes
            .status(&caller, &r.write_id)
            .await)
    }

    async fn commit_write(
        &self,
        request: Request<v1::CommitWriteRequest>,
    ) -> Result<Response<v1::Entry>, Status> {
        rpc!(self, "CommitWrite", request, |caller, r| {
            let attrs = FileAttrs {
                etag: r.etag.clone(),
                content_type: r.content_type.clone(),
                user_metadata: r.user_metadata.clone().into_iter().collect(),
                mtime_ns: r.mtime_ns,
                ..Default::default()
            };
            let e = self
                .gw
                .writes
                .commit(&caller, &r.write_id, &committed(&r.chunks)?, r.size, &attrs)
                .await?;
            Ok(e.into())
        })
    }

    async fn abort_write(
        &self,
        request: Request<v1::GetWriteRequest>,
    ) -> Result<Response<v1::Empty>, Status> {
        rpc!(self, "AbortWrite", request, |caller, r| {
            self.gw.writes.abort(&caller, &r.write_id).await?;
            Ok(v1::Empty {})
        })
    }

    async fn write_inline(
        &self,
        request: Request<v1::WriteInlineRequest>,
    ) -> Result<Response<v1::Entry>, Status> {
        rpc!(self, "WriteInline", request, |caller, r| {
            let target = Ref::from_proto(r.target.as_ref())?;
            let attrs = FileAttrs {
                etag: r.etag.clone(),
                content_type: r.content_type.clone(),
                user_metadata: r
                    .user_metadata
                    .clone()
                    .into_iter()
                    .collect::<BTreeMap<_, _>>(),
                mtime_ns: r.mtime_ns,
                mode: r.mode,
                uid: r.uid,
                gid: r.gid,
                new_id: r.new_id,
            };
            let e = self
                .gw
                .writes
                .write_inline(&caller, &target, &r.data, r.if_version, r.if_absent, &attrs)
                .await?;
            Ok(e.into())
        })
    }

    async fn reserve_ids(
        &self,
        request: Request<v1::ReserveIdsRequest>,
    ) -> Result<Response<v1::ReserveIdsResponse>, Status> {
        rpc!(self, "ReserveIds", request, |caller, r| {
            let (ids, expires_ns) = self.gw.writes.reserve_ids(&caller, r.count).await?;
            Ok(v1::ReserveIdsResponse { ids, expires_ns })
        })
    }

    async fn get_layout(
        &self,
        request: Request<v1::GetLayoutRequest>,
    ) -> Result<Response<v1::GetLayoutResponse>, Status> {
        rpc!(self, "GetLayout", request, |caller, r| {
            let e = Ref::from_proto(r.entry.as_ref())?;
            self.gw
                .layout_with_tokens(&caller, &e, r.offset, r.length)
                .await
        })
    }

    async fn report_shards(
        &self,
        request: Request<v1::ReportShardsRequest>,
    ) -> Result<Response<v1::Empty>, Status> {
        rpc!(self, "ReportShards", request, |caller, r| {
            crate::audits::reported(&self.gw, &caller.user_id, &r.reports).await?;
            Ok(v1::Empty {})
        })
    }

    type WatchChangesStream = EventStream;

    async fn watch_changes(
        &self,
        request: Request<v1::WatchChangesRequest>,
    ) -> Result<Response<Self::WatchChangesStream>, Status> {
        rpc!(self, "WatchChanges", request, |caller, r| {
            let filter = self.gw.watch_filter(&caller, &r.bucket).await?;
            let rx = crate::journal::watch(
                self.gw.db.clone(),
                r.since,
                filter,
                self.gw.stop.child_token(),
            );
            let s = tokio_stream::wrappers::ReceiverStream::new(rx);
            let s = tokio_stream::StreamExt::map(s, |r| r.map_err(Status::from));
            Ok(Box::pin(s) as EventStream)
        })
    }

    async fn cluster_status(
        &self,
        request: Request<v1::ClusterStatusRequest>,
    ) -> Result<Response<v1::ClusterStatusResponse>, Status> {
        rpc!(self, "ClusterStatus", request, |caller, _r| {
            if !caller.admin {
                return self.gw.caller_status(&caller).await;
            }
            let mut status = self.gw.cluster_status().await?;
            if caller.admin {
                status.workers = self.gw.worker_status();
            }
            Ok::<_, crate::error::Error>(status)
        })
    }

    async fn create_user(
        &self,
        request: Request<v1::CreateUserRequest>,
    ) -> Result<Response<v1::CreateUserResponse>, Status> {
        rpc!(self, "CreateUser", request, |caller, r| {
            if !caller.admin {
                return Err(Error::PermissionDenied("only admins create users".into()));
            }
            let k = self
                .gw
                .accounts
                .create_user_with_key(&r.name, r.quota_bytes, r.admin)
                .await?;
            Ok(v1::CreateUserResponse {
                user_id: k.user_id.clone(),
                access_key: k.access_key.clone(),
                secret_key: k.secret_key.to_string(),
            })
        })
    }
}

impl Gateway {
    /// The layout of a file with Get tokens, node addresses and latencies filled in.
    pub async fn layout_with_tokens(
        &self,
        caller: &Caller,
        e: &Ref,
        offset: u64,
        length: u64,
    ) -> Result<v1::GetLayoutResponse> {
        let l = self.cached_layout(caller, e, offset, length).await?;
        let nodes = self.registry.node_map().await?;
        let exp = crate::db::now_secs() + self.config.writes.token_ttl_secs;
        let mut per_node: BTreeMap<String, Vec<Hash>> = BTreeMap::new();
        for c in &l.chunks {
            for s in &c.shards {
                per_node.entry(s.node_id.clone()).or_default().push(s.hash);
            }
        }
        let tokens: HashMap<String, Vec<u8>> = per_node
            .into_iter()
            .map(|(n, hs)| {
                let t = crate::placement::client_token(&self.signer, Op::Get, &n, hs, exp);
                (n, t)
            })
            .collect();
        let chunks = l
            .chunks
            .iter()
            .map(|c| v1::ChunkLayout {
                index: c.index,
                offset: c.offset,
                info: Some(v1::ChunkInfo::from(&c.meta)),
                shards: c
                    .shards
                    .iter()
                    .map(|s| {
                        let node = nodes.get(&s.node_id);
                        let reachable = node.is_some_and(|n| {
                            matches!(n.state, v1::NodeState::Online | v1::NodeState::Draining)
                        });
                        v1::ShardLocation {
                            index: s.index,
                            hash: s.hash.0.to_vec(),
                            node_id: s.node_id.clone(),
                            address: node.map(|n| n.address.clone()).unwrap_or_default(),
                            state: if s.state == v1::ShardState::Stored && !reachable {
                                v1::ShardState::Lost as i32
                            } else {
                                s.state as i32
                            },
                            token: tokens.get(&s.node_id).cloned().unwrap_or_default(),
                            latency_us: node.map_or(0, |n| n.latency_us),
                        }
                    })
                    .collect(),
            })
            .collect();
        Ok(v1::GetLayoutResponse {
            entry: Some(v1::Entry::from(&l.entry)),
            is_inline: l.inline.is_some(),
            inline_data: l.inline.unwrap_or_default(),
            chunks,
        })
    }

    /// Who may watch what.
    pub async fn watch_filter(
        &self,
        caller: &Caller,
        bucket: &str,
    ) -> Result<crate::journal::Filter> {
        use crate::journal::Filter;
        if !bucket.is_empty() {
            let b = self
                .ns
                .getattr(
                    caller,
                    &Ref::Path {
                        bucket: bucket.to_string(),
                        path: String::new(),
                    },
                )
                .await?;
            return Ok(Filter::Bucket(b.bucket.clone()));
        }
        Ok(if caller.admin {
            Filter::Visible
        } else {
            Filter::Owner(caller.user_id.clone())
        })
    }

    pub async fn stat_fs(&self, caller: &Caller) -> Result<v1::StatFsResponse> {
        let nodes = self.registry.live_nodes().await?;
        let capacity: u64 = nodes.iter().map(|n| n.capacity_bytes).sum();
        let used: u64 = nodes.iter().map(|n| n.used_bytes).sum();
        let available: u64 = nodes.iter().map(|n| n.free_bytes()).sum();
        let files = self
            .db
            .one(
                "SELECT COUNT(*) FROM inodes WHERE kind = 1 AND (owner_id = $1 OR $2 = 1)",
                crate::db::args![caller.user_id.as_str(), caller.admin],
            )
            .await?
            .u64(0)?;
        let (quota, quota_used) = if caller.admin && caller.user_id == "system" {
            (0, 0)
        } else {
            self.accounts.usage(&caller.user_id).await.unwrap_or((0, 0))
        };
        Ok(v1::StatFsResponse {
            capacity_bytes: capacity,
            used_bytes: used,
            available_bytes: available,
            files,
            quota_bytes: quota,
            quota_used_bytes: quota_used,
        })
    }

    /// This process's background workers, for admins.
    pub fn worker_status(&self) -> Vec<v1::WorkerStatus> {
        self.workers
            .list()
            .into_iter()
            .map(|w| v1::WorkerStatus {
                name: w.name,
                state: w.state.as_str().to_string(),
                steps: w.steps,
                errors: w.errors,
                consecutive_errors: w.consecutive_errors,
                last_error: w.last_error.unwrap_or_default(),
                last_error_ms: w.last_error_ms.unwrap_or_default(),
                progress: w.progress.unwrap_or_default(),
                has_lease: w.lease_held.is_some(),
                lease_held: w.lease_held.unwrap_or(false),
            })
            .collect()
    }

    /// What a caller who is not an admin may see: its own buckets, files, bytes and quota (and
    /// the journal position, to follow changes from).
    pub async fn caller_status(&self, caller: &Caller) -> Result<v1::ClusterStatusResponse> {
        let c = self
            .db
            .one(
                "SELECT (SELECT COUNT(*) FROM inodes WHERE kind = 4 AND owner_id = $1), \
                 (SELECT COUNT(*) FROM inodes WHERE kind = 1 AND owner_id = $1), \
                 (SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM inodes WHERE kind = 1 AND owner_id = $1)",
                crate::db::args![caller.user_id.as_str()],
            )
            .await?;
        let (quota, used) = self.accounts.usage(&caller.user_id).await?;
        Ok(v1::ClusterStatusResponse {
            buckets: c.u64(0)?,
            files: c.u64(1)?,
            logical_bytes: c.u64(2)?,
            version: env!("CARGO_PKG_VERSION").to_string(),
            journal_seq: crate::journal::head(&self.db).await?,
            caller_only: true,
            quota_bytes: quota,
            used_bytes: used,
            ..Default::default()
        })
    }

    pub async fn cluster_status(&self) -> Result<v1::ClusterStatusResponse> {
        let nodes = self.registry.nodes().await?;
        let c = self
            .db
            .one(
                "SELECT (SELECT COUNT(*) FROM inodes WHERE kind = 4), \
                 (SELECT COUNT(*) FROM inodes WHERE kind = 1), \
                 (SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM inodes WHERE kind = 1), \
                 (SELECT COUNT(*) FROM chunks)",
                crate::db::args![],
            )
            .await?;
        let backlog = crate::maintenance::repair_backlog(&self.db).await?;
        let scores = crate::audits::scores(&self.db).await?;
        let rate = self.repair_rate.per_sec();
        Ok(v1::ClusterStatusResponse {
            nodes: nodes
                .iter()
                .map(|n| v1::NodeStatus {
                    node_id: n.id.clone(),
                    name: n.name.clone(),
                    address: n.address.clone(),
                    state: n.state as i32,
                    topology: Some(v1::Topology {
                        region: n.region.clone(),
                        datacenter: n.datacenter.clone(),
                        rack: n.rack.clone(),
                    }),
                    capacity_bytes: n.capacity_bytes,
                    used_bytes: n.used_bytes,
                    shard_count: n.shard_count,
                    last_heartbeat: n.last_heartbeat_ms / 1000,
                    latency_us: n.latency_us,
                    audit: scores.get(&n.id).cloned(),
                })
                .collect(),
            buckets: c.u64(0)?,
            files: c.u64(1)?,
            logical_bytes: c.u64(2)?,
            chunks: c.u64(3)?,
            pending_repairs: backlog.0,
            repair_bytes: backlog.1,
            repair_bytes_per_sec: rate,
            repair_eta_secs: if rate > 0.0 {
                (backlog.1 as f64 / rate).ceil() as u64
            } else {
                0
            },
            version: env!("CARGO_PKG_VERSION").to_string(),
            journal_seq: crate::journal::head(&self.db).await?,
            workers: Vec::new(),
            caller_only: false,
            quota_bytes: 0,
            used_bytes: 0,
        })
    }
}
