//! The repair planner, a pure function: a chunk's shards and what is known of their nodes in,
//! the shards to rebuild (each with a reason and a target node) out. Targets follow the same
//! placement rules as writes ([`cyxcloud_core::placement::place_replacements`]); chunks are
//! ordered least-redundant first, so a chunk one loss away from being unreadable is repaired
//! before one that can lose three more.

use std::collections::BTreeMap;

use cyxcloud_core::Hash;
use cyxcloud_core::codec::Profile;
use cyxcloud_core::placement::{self, Limits, NodeInfo, PlacementError};

/// What the metadata says about one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardState {
    /// Acknowledged by its node.
    Stored,
    /// Not acknowledged when its chunk was committed (the slow shard of k+m−1).
    Pending,
    /// A reader or an audit found it corrupt or missing.
    Bad,
}

/// What is known of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    Online,
    /// Missed its heartbeats (dead, partitioned or frozen).
    Offline,
    /// Leaving: its shards are still served but must move.
    Draining,
    Drained,
}

/// A node, for planning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub info: NodeInfo,
    pub state: NodeState,
}

/// One shard of a chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardView {
    pub index: usize,
    pub node: String,
    pub state: ShardState,
}

/// A chunk as the metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkView {
    pub key: Hash,
    pub profile: Profile,
    pub shard_size: u64,
    pub shards: Vec<ShardView>,
}

/// Why a shard must be rebuilt or moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    /// Its node is offline or unknown.
    NodeLost,
    /// A reader or an audit found it bad.
    Bad,
    /// It was never acknowledged.
    NotStored,
    /// No shard row at all for this index.
    Missing,
    /// Its node is draining: the shard is still readable, and moves.
    Draining,
}

/// One shard to rebuild on `target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repair {
    pub index: usize,
    /// Where the shard was (empty when it had no node).
    pub from: String,
    pub reason: Reason,
    pub target: String,
}

/// What a chunk needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkPlan {
    pub key: Hash,
    /// Shards readable now: stored on online or draining nodes.
    pub readable: usize,
    /// Shards that will stay where they are (stored on online nodes).
    pub healthy: usize,
    /// k: `readable - k` is how many more losses the chunk survives.
    pub data: usize,
    pub repairs: Vec<Repair>,
}

impl ChunkPlan {
    /// Losses the chunk can still take before it is unreadable (negative: already is).
    pub fn margin(&self) -> i64 {
        self.readable as i64 - self.data as i64
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("chunk {key} is unrecoverable: {readable} readable shards, {data} needed")]
    Unrecoverable {
        key: Hash,
        readable: usize,
        data: usize,
    },
    #[error("chunk {key}: nowhere to rebuild {lost} shards: {source}")]
    NoTargets {
        key: Hash,
        lost: usize,
        source: PlacementError,
    },
}

/// What must happen to `chunk`, given the cluster's `nodes`. A chunk that needs nothing gets
/// an empty plan.
pub fn plan(chunk: &ChunkView, nodes: &[NodeView], limits: Limits) -> Result<ChunkPlan, PlanError> {
    let by_id: BTreeMap<&str, &NodeView> = nodes.iter().map(|n| (n.info.id.as_str(), n)).collect();
    let total = chunk.profile.total();
    let mut current: Vec<Option<String>> = vec![None; total];
    let mut why: Vec<Option<(Reason, String)>> =
        vec![Some((Reason::Missing, String::new())); total];
    let (mut readable, mut healthy) = (0, 0);
    for s in chunk.shards.iter().filter(|s| s.index < total) {
        let node = by_id.get(s.node.as_str()).map(|n| n.state);
        let reason = match (s.state, node) {
            (ShardState::Bad, _) => Some(Reason::Bad),
            (ShardState::Pending, _) => Some(Reason::NotStored),
            (ShardState::Stored, Some(NodeState::Online)) => None,
            (ShardState::Stored, Some(NodeState::Draining)) => Some(Reason::Draining),
            (ShardState::Stored, Some(NodeState::Offline | NodeState::Drained) | None) => {
                Some(Reason::NodeLost)
            }
        };
        if matches!(reason, None | Some(Reason::Draining)) {
            readable += 1;
        }
        match reason {
            None => {
                healthy += 1;
                current[s.index] = Some(s.node.clone());
                why[s.index] = None;
            }
            Some(r) => why[s.index] = Some((r, s.node.clone())),
        }
    }
    let data = chunk.profile.data();
    if readable < data {
        return Err(PlanError::Unrecoverable {
            key: chunk.key,
            readable,
            data,
        });
    }
    let lost = why.iter().filter(|w| w.is_some()).count();
    if lost == 0 {
        return Ok(ChunkPlan {
            key: chunk.key,
            readable,
            healthy,
            data,
            repairs: Vec::new(),
        });
    }
    // Only online nodes take new shards, and never a node that held a lost shard of this
    // chunk: a corrupt record there has the same key as its rebuilt copy (the node would call
    // the new one "already present"), and a draining node is leaving. The others stay known
    // for their topology.
    let avoid: std::collections::BTreeSet<&str> = why
        .iter()
        .flatten()
        .map(|(_, from)| from.as_str())
        .collect();
    let candidates: Vec<NodeInfo> = nodes
        .iter()
        .map(|n| NodeInfo {
            free_bytes: if n.state == NodeState::Online && !avoid.contains(n.info.id.as_str()) {
                n.info.free_bytes
            } else {
                0
            },
            ..n.info.clone()
        })
        .collect();
    let (targets, _) = placement::place_replacements(
        &candidates,
        chunk.profile,
        chunk.shard_size,
        &chunk.key,
        limits,
        &current,
    )
    .map_err(|source| PlanError::NoTargets {
        key: chunk.key,
        lost,
        source,
    })?;
    let repairs = targets
        .into_iter()
        .map(|(index, target)| {
            let (reason, from) = why[index]
                .clone()
                .unwrap_or((Reason::Missing, String::new()));
            Repair {
                index,
                from,
                reason,
                target,
            }
        })
        .collect();
    Ok(ChunkPlan {
        key: chunk.key,
        readable,
        healthy,
        data,
        repairs,
    })
}

/// Orders plans for execution: least margin first (closest to unreadable), then more shards
/// to rebuild, then by key (deterministic).
pub fn order(plans: &mut [ChunkPlan]) {
    plans.sort_by(|a, b| {
        a.margin()
            .cmp(&b.margin())
            .then(b.repairs.len().cmp(&a.repairs.len()))
            .then(a.key.0.cmp(&b.key.0))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, state: NodeState) -> NodeView {
        NodeView {
            info: NodeInfo {
                id: id.into(),
                region: String::new(),
                datacenter: String::new(),
                rack: String::new(),
                free_bytes: 1 << 40,
                latency_us: 100,
            },
            state,
        }
    }

    fn chunk(seed: &[u8], holders: &[&str]) -> ChunkView {
        ChunkView {
            key: Hash::of(seed),
            profile: Profile::DEFAULT,
            shard_size: 1 << 20,
            shards: holders
                .iter()
                .enumerate()
                .map(|(i, n)| ShardView {
                    index: i,
                    node: n.to_string(),
                    state: ShardState::Stored,
                })
                .collect(),
        }
    }

    fn cluster(n: usize) -> (Vec<NodeView>, Vec<String>) {
        let ids: Vec<String> = (0..n).map(|i| format!("n{i:02}")).collect();
        (
            ids.iter().map(|i| node(i, NodeState::Online)).collect(),
            ids,
        )
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, ..Default::default() })]

        /// Whatever the states: a plan rebuilds exactly the shards that are not healthy, only
        /// on online nodes that held no lost shard of the chunk, never more than m shards on a
        /// node; a refusal is unrecoverable exactly when fewer than k shards are readable.
        #[test]
        fn plans_rebuild_exactly_the_unhealthy_shards(
            node_states in proptest::collection::vec(0u8..20, 14..24),
            shard_states in proptest::collection::vec(0u8..12, 14),
            seed in proptest::prelude::any::<u64>(),
        ) {
            let nodes: Vec<NodeView> = node_states.iter().enumerate().map(|(i, s)| node(&format!("n{i:02}"), match s {
                0 => NodeState::Offline, 1 => NodeState::Draining, 2 => NodeState::Drained, _ => NodeState::Online,
            })).collect();
            let mut c = chunk(&seed.to_le_bytes(), &(0..14).map(|i| nodes[i].info.id.as_str()).collect::<Vec<_>>());
            for (s, st) in c.shards.iter_mut().zip(&shard_states) {
                s.state = match st { 0 => ShardState::Bad, 1 => ShardState::Pending, _ => ShardState::Stored };
            }
            let state_of = |id: &str| nodes.iter().find(|n| n.info.id == id).unwrap().state;
            let healthy: Vec<usize> = c.shards.iter().filter(|s| s.state == ShardState::Stored && state_of(&s.node) == NodeState::Online).map(|s| s.index).collect();
            let readable = c.shards.iter().filter(|s| s.state == ShardState::Stored && matches!(state_of(&s.node), NodeState::Online | NodeState::Draining)).count();
            match plan(&c, &nodes, Limits::default()) {
                Ok(p) => {
                    proptest::prop_assert!(readable >= 10);
                    let rebuilt: Vec<usize> = p.repairs.iter().map(|r| r.index).collect();
                    let want: Vec<usize> = (0..14).filter(|i| !healthy.contains(i)).collect();
                    proptest::prop_assert_eq!(rebuilt, want);
                    let lost_from: Vec<&str> = c.shards.iter().filter(|s| !healthy.contains(&s.index)).map(|s| s.node.as_str()).collect();
                    let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
                    for s in c.shards.iter().filter(|s| healthy.contains(&s.index)) { *per_node.entry(&s.node).or_default() += 1; }
                    for r in &p.repairs {
                        proptest::prop_assert_eq!(state_of(&r.target), NodeState::Online);
                        proptest::prop_assert!(!lost_from.contains(&r.target.as_str()), "target {} held a lost shard", r.target);
                        *per_node.entry(&r.target).or_default() += 1;
                    }
                    proptest::prop_assert!(per_node.values().all(|&n| n <= 4));
                }
                Err(PlanError::Unrecoverable { readable: r, .. }) => {
                    proptest::prop_assert!(r < 10 && r == readable);
                }
                Err(PlanError::NoTargets { .. }) => {
                    // Only when the usable nodes (online, holding no lost shard) lack room for
                    // the holes below m = 4 shards each, counting the healthy shards they hold.
                    let room: usize = nodes.iter()
                        .filter(|n| n.state == NodeState::Online && !c.shards.iter().any(|s| s.node == n.info.id && !healthy.contains(&s.index)))
                        .map(|n| 4 - c.shards.iter().filter(|s| s.node == n.info.id).count().min(4))
                        .sum();
                    proptest::prop_assert!(room < 14 - healthy.len(), "refused with room for {room}");
                }
            }
        }
    }

    #[test]
    fn a_healthy_chunk_needs_nothing() {
        let (nodes, ids) = cluster(14);
        let holders: Vec<&str> = ids.iter().map(String::as_str).collect();
        let p = plan(&chunk(b"a", &holders), &nodes, Limits::default()).unwrap();
        assert!(p.repairs.is_empty());
        assert_eq!((p.readable, p.healthy, p.margin()), (14, 14, 4));
    }

    #[test]
    fn every_kind_of_loss_is_rebuilt_on_online_nodes_only() {
        let (mut nodes, ids) = cluster(20);
        nodes[0].state = NodeState::Offline;
        nodes[1].state = NodeState::Draining;
        nodes[15].state = NodeState::Offline; // not a holder: never a target
        nodes[16].state = NodeState::Draining;
        let holders: Vec<&str> = ids[..14].iter().map(String::as_str).collect();
        let mut c = chunk(b"b", &holders);
        c.shards[2].state = ShardState::Bad;
        c.shards[3].state = ShardState::Pending;
        c.shards.retain(|s| s.index != 4); // no row at all
        let p = plan(&c, &nodes, Limits::default()).unwrap();
        let reasons: Vec<(usize, Reason)> = p.repairs.iter().map(|r| (r.index, r.reason)).collect();
        assert_eq!(
            reasons,
            [
                (0, Reason::NodeLost),
                (1, Reason::Draining),
                (2, Reason::Bad),
                (3, Reason::NotStored),
                (4, Reason::Missing)
            ]
        );
        // Readable: 9 healthy + the draining one.
        assert_eq!((p.healthy, p.readable, p.margin()), (9, 10, 0));
        let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
        for s in c.shards.iter().filter(|s| s.index >= 5) {
            *per_node.entry(s.node.as_str()).or_default() += 1;
        }
        for r in &p.repairs {
            let n = nodes.iter().find(|n| n.info.id == r.target).unwrap();
            assert_eq!(n.state, NodeState::Online, "{r:?}");
            assert_ne!(r.target, r.from);
            *per_node.entry(r.target.as_str()).or_default() += 1;
        }
        assert!(per_node.values().all(|&c| c <= 2), "{per_node:?}");
        assert_eq!(p.repairs[1].from, "n01");
    }

    #[test]
    fn too_few_readable_shards_is_reported_not_planned() {
        let (mut nodes, ids) = cluster(14);
        for n in nodes.iter_mut().take(5) {
            n.state = NodeState::Offline;
        }
        let holders: Vec<&str> = ids.iter().map(String::as_str).collect();
        assert_eq!(
            plan(&chunk(b"c", &holders), &nodes, Limits::default()),
            Err(PlanError::Unrecoverable {
                key: Hash::of(b"c"),
                readable: 9,
                data: 10
            })
        );
    }

    #[test]
    fn least_redundant_chunks_come_first() {
        let (mut nodes, ids) = cluster(24);
        let holders: Vec<&str> = ids[..14].iter().map(String::as_str).collect();
        nodes[0].state = NodeState::Offline;
        let one = plan(&chunk(b"one lost", &holders), &nodes, Limits::default()).unwrap();
        nodes[1].state = NodeState::Offline;
        nodes[2].state = NodeState::Offline;
        let three = plan(&chunk(b"three lost", &holders), &nodes, Limits::default()).unwrap();
        let none = plan(
            &chunk(
                b"none",
                &ids[10..24].iter().map(String::as_str).collect::<Vec<_>>(),
            ),
            &nodes,
            Limits::default(),
        )
        .unwrap();
        let mut all = vec![none.clone(), one.clone(), three.clone()];
        order(&mut all);
        assert_eq!(all, [three, one, none]);
        assert_eq!(all[0].margin(), 1);
    }
}
