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
    /// Healthy, but the chunk holds more shards on its node, rack or datacenter than the
    /// current topology allows (labels changed, nodes joined): the shard moves.
    Misplaced,
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

/// For a chunk whose shards are all healthy: the shards to move because the chunk exceeds, on
/// some node, rack or datacenter, the limits a new placement would get on the current online
/// nodes (the requested limits, relaxed only as far as this cluster needs). Shards are kept
/// in index order while they fit; the rest move to targets chosen like repair targets. `None`
/// when nothing is misplaced, the chunk is degraded (repair comes first), or nothing fits.
pub fn misplaced(chunk: &ChunkView, nodes: &[NodeView], limits: Limits) -> Option<ChunkPlan> {
    let total = chunk.profile.total();
    let by_id: BTreeMap<&str, &NodeView> = nodes.iter().map(|n| (n.info.id.as_str(), n)).collect();
    let healthy = chunk.shards.iter().filter(|s| {
        s.index < total
            && s.state == ShardState::Stored
            && by_id
                .get(s.node.as_str())
                .is_some_and(|n| n.state == NodeState::Online)
    });
    if healthy.count() != total || chunk.shards.len() != total {
        return None;
    }
    let online: Vec<NodeInfo> = nodes
        .iter()
        .filter(|n| n.state == NodeState::Online)
        .map(|n| n.info.clone())
        .collect();
    let fresh =
        placement::place(&online, chunk.profile, chunk.shard_size, &chunk.key, limits).ok()?;
    let allowed = fresh.limits;
    let mut shards: Vec<&ShardView> = chunk.shards.iter().collect();
    shards.sort_by_key(|s| s.index);
    let (mut per_node, mut per_rack, mut per_dc): (
        BTreeMap<String, usize>,
        BTreeMap<String, usize>,
        BTreeMap<String, usize>,
    ) = Default::default();
    let mut current: Vec<Option<String>> = vec![None; total];
    let mut moving = Vec::new();
    for s in shards {
        let (dc, rack) = placement::domain_keys(&by_id[s.node.as_str()].info);
        let fits = per_node.get(&s.node).copied().unwrap_or(0) < allowed.per_node
            && per_rack.get(&rack).copied().unwrap_or(0) < allowed.per_rack
            && per_dc.get(&dc).copied().unwrap_or(0) < allowed.per_datacenter;
        if fits {
            *per_node.entry(s.node.clone()).or_default() += 1;
            *per_rack.entry(rack).or_default() += 1;
            *per_dc.entry(dc).or_default() += 1;
            current[s.index] = Some(s.node.clone());
        } else {
            moving.push((s.index, s.node.clone()));
        }
    }
    if moving.is_empty() {
        return None;
    }
    // A shard never moves to the node it leaves (its record there has the same key).
    let leaving: std::collections::BTreeSet<&str> =
        moving.iter().map(|(_, n)| n.as_str()).collect();
    let candidates: Vec<NodeInfo> = online
        .iter()
        .map(|n| NodeInfo {
            free_bytes: if leaving.contains(n.id.as_str()) {
                0
            } else {
                n.free_bytes
            },
            ..n.clone()
        })
        .chain(
            nodes
                .iter()
                .filter(|n| n.state != NodeState::Online)
                .map(|n| NodeInfo {
                    free_bytes: 0,
                    ..n.info.clone()
                }),
        )
        .collect();
    let (targets, _) = placement::place_replacements(
        &candidates,
        chunk.profile,
        chunk.shard_size,
        &chunk.key,
        allowed,
        &current,
    )
    .ok()?;
    let from: BTreeMap<usize, String> = moving.into_iter().collect();
    Some(ChunkPlan {
        key: chunk.key,
        readable: total,
        healthy: total,
        data: chunk.profile.data(),
        repairs: targets
            .into_iter()
            .map(|(index, target)| Repair {
                index,
                from: from.get(&index).cloned().unwrap_or_default(),
                reason: Reason::Misplaced,
                target,
            })
            .collect(),
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

    #[test]
    fn shards_packed_into_one_datacenter_move_out_when_the_cluster_allows() {
        // 10 nodes: 5 labelled datacenter dc1 / rack r1, 5 unlabelled (each its own domain).
        let (mut nodes, ids) = cluster(10);
        for n in &mut nodes[..5] {
            n.info.datacenter = "dc1".into();
            n.info.rack = "r1".into();
        }
        // Written before the labels: 2 shards on each of the 5 dc1 nodes, 4 elsewhere.
        let holders: Vec<&str> = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 6, 7, 8]
            .iter()
            .map(|&i| ids[i].as_str())
            .collect();
        let c = chunk(b"packed", &holders);
        let p = misplaced(&c, &nodes, Limits::default()).expect("misplaced");
        assert!(p.repairs.iter().all(|r| r.reason == Reason::Misplaced));
        // After the moves: at most 4 in rack r1 (which is all of dc1), 2 per node.
        let mut after: Vec<String> = holders.iter().map(|s| s.to_string()).collect();
        for r in &p.repairs {
            assert_eq!(after[r.index], r.from);
            assert_ne!(r.target, r.from);
            after[r.index] = r.target.clone();
        }
        let in_r1 = after.iter().filter(|n| ids[..5].contains(n)).count();
        assert!(in_r1 <= 4, "{after:?}");
        for id in &ids {
            assert!(after.iter().filter(|n| *n == id).count() <= 2, "{after:?}");
        }
        // Applying the plan leaves nothing misplaced.
        let moved = chunk(
            b"packed",
            &after.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        assert_eq!(misplaced(&moved, &nodes, Limits::default()), None);
    }

    #[test]
    fn nothing_moves_when_the_cluster_cannot_do_better_or_the_chunk_is_degraded() {
        // 7 unlabelled nodes, 2 shards each: the only possible placement.
        let (mut nodes, ids) = cluster(7);
        let holders: Vec<&str> = (0..14).map(|i| ids[i / 2].as_str()).collect();
        assert_eq!(
            misplaced(&chunk(b"tight", &holders), &nodes, Limits::default()),
            None
        );
        // All 7 nodes in one rack: the rack limit relaxes to what the cluster allows.
        for n in &mut nodes {
            n.info.rack = "one".into();
            n.info.datacenter = "dc".into();
        }
        assert_eq!(
            misplaced(&chunk(b"tight", &holders), &nodes, Limits::default()),
            None
        );
        // A degraded chunk is repair's business.
        nodes[0].state = NodeState::Offline;
        assert_eq!(
            misplaced(&chunk(b"tight", &holders), &nodes, Limits::default()),
            None
        );
    }
}
