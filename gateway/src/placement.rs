//! Placement on the live node view, and the capability tokens that go with it.
//!
//! The shard → node assignment is `cyxcloud_core::placement::place` (topology limits, free
//! capacity, latency) over the nodes that are online now, seeded with the chunk id so a chunk's
//! placement is deterministic for a given cluster state.

use cyxcloud_core::Hash;
use cyxcloud_core::codec::Profile;
use cyxcloud_core::placement::{Limits, NodeInfo, PlacementError, place};
use cyxcloud_core::token::{Capability, Op, Role, Scope, TokenSigner};

use crate::error::{Error, Result};
use crate::registry::NodeView;

/// Node ids for each shard index of a chunk.
pub fn place_chunk(
    nodes: &[NodeView],
    avoid: &[String],
    profile: Profile,
    shard_size: u64,
    seed: &Hash,
    limits: Limits,
) -> Result<Vec<String>> {
    let infos: Vec<NodeInfo> = nodes
        .iter()
        .filter(|n| !avoid.contains(&n.id))
        .map(|n| NodeInfo {
            id: n.id.clone(),
            region: n.region.clone(),
            datacenter: n.datacenter.clone(),
            rack: n.rack.clone(),
            free_bytes: n.free_bytes(),
            latency_us: n.latency_us,
        })
        .collect();
    place(&infos, profile, shard_size, seed, limits)
        .map(|p| p.nodes)
        .map_err(|e| match e {
            PlacementError::NoNodes { .. } | PlacementError::NotEnoughNodes { .. } => {
                Error::NoSpace(format!("{e} ({} nodes online)", infos.len()))
            }
            other => Error::Internal(other.to_string()),
        })
}

/// A client token for `op` on the listed shards of one node.
pub fn client_token(
    signer: &TokenSigner,
    op: Op,
    node_id: &str,
    shards: Vec<Hash>,
    expires_at: u64,
) -> Vec<u8> {
    signer.sign(&Capability {
        role: Role::Client,
        ops: op as u8,
        node_id: node_id.to_string(),
        expires_at,
        scope: Scope::Shards(shards),
    })
}

/// A gateway token deleting the listed shards on one node.
pub fn delete_token(
    signer: &TokenSigner,
    node_id: &str,
    shards: Vec<Hash>,
    expires_at: u64,
) -> Vec<u8> {
    signer.sign(&Capability {
        role: Role::Gateway,
        ops: Op::Delete as u8,
        node_id: node_id.to_string(),
        expires_at,
        scope: Scope::Shards(shards),
    })
}

/// Parses a profile name (`default`, `ha`, `max-ha`, `extreme`) or `k+m`; "" = `default`.
pub fn parse_profile(name: &str, default: Profile) -> Result<Profile> {
    if name.is_empty() {
        return Ok(default);
    }
    if let Some((_, p)) = Profile::NAMED.iter().find(|(n, _)| *n == name) {
        return Ok(*p);
    }
    if let Some((k, m)) = name.split_once('+')
        && let (Ok(k), Ok(m)) = (k.trim().parse::<usize>(), m.trim().parse::<usize>())
    {
        return Profile::new(k, m).map_err(|e| Error::invalid(e.to_string()));
    }
    Err(Error::invalid(format!(
        "unknown profile {name:?}: use default, ha, max-ha, extreme or k+m"
    )))
}
