//! `cyxcloud-proto`: the gRPC contracts every CyxCloud process speaks, generated from
//! `proto/cyxcloud/v1/*.proto` by tonic, plus the two things every side needs around them:
//! conversions between wire messages and `cyxcloud-core` types ([`convert`]) and the one mapping
//! between typed errors and `tonic::Status` ([`status`]), with a stable error code and a
//! retryable hint carried in the status metadata.
//!
//! Services: `ChunkService` (nodes), `NodeRegistry` (gateway, for nodes), `Control` (gateway,
//! for clients).

pub mod channel;
pub mod convert;
pub mod signed;
pub mod status;

/// Generated messages and services of package `cyxcloud.v1`.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("cyxcloud.v1");
}

pub use status::{ErrorCode, error_code, status};

/// Largest gRPC message any CyxCloud service accepts or sends (shard data is streamed in
/// smaller pieces; this bounds metadata replies such as large layouts).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Size of the data pieces shards are streamed in.
pub const STREAM_PIECE_BYTES: usize = 1024 * 1024;
