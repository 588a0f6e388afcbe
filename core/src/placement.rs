//! Shard placement as a pure function: nodes in, a shard → node assignment out, or a refusal
//! that says why.
//!
//! # Rules
//!
//! 1. No node holds more than `m` shards of a chunk, so losing any one node never loses more
//!    than the chunk can afford. A placement that cannot satisfy this is refused.
//! 2. The usage guide's limits (default 2 per node, 4 per rack, 6 per datacenter) are applied as
//!    far as the cluster allows: when they cannot all hold, the datacenter limit is relaxed
//!    first, then the rack limit, then the node limit (never beyond `m`), each by the least
//!    amount that makes the placement possible. [`Placement::limits`] reports what was applied.
//! 3. Among eligible nodes, shards spread by free capacity: nodes are ranked by weighted
//!    rendezvous hashing of (seed, node id) with weight = free bytes, so different chunks (seeds)
//!    land on different nodes in proportion to their free space, deterministically.
//! 4. Data shards prefer low latency: of the chosen slots, the `k` with the lowest measured
//!    latency carry the data shards (reads usually need only those).
//!
//! A node without a rack (datacenter) label is treated as its own rack (datacenter): without
//! topology information no two nodes are assumed to share a failure domain.
//!
//! The same input (node set in any order, profile, shard size, seed, limits) always gives the
//! same output.

use std::collections::{BTreeMap, BTreeSet};

use crate::codec::Profile;
use crate::hash::Hash;

/// What placement needs to know about a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: String,
    pub region: String,
    pub datacenter: String,
    pub rack: String,
    /// Bytes the node can still accept.
    pub free_bytes: u64,
    /// Measured round-trip latency from the gateway; 0 when unknown.
    pub latency_us: u32,
}

/// Per-failure-domain shard limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub per_node: usize,
    pub per_rack: usize,
    pub per_datacenter: usize,
}

impl Default for Limits {
    /// The usage guide's rules: 2 per node, 4 per rack, 6 per datacenter.
    fn default() -> Self {
        Limits {
            per_node: 2,
            per_rack: 4,
            per_datacenter: 6,
        }
    }
}

/// A successful placement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Node id for each shard index (`0..k` data, then parity).
    pub nodes: Vec<String>,
    /// The limits actually applied (equal to the requested ones unless the cluster forced a
    /// relaxation).
    pub limits: Limits,
}

impl Placement {
    pub fn relaxed(&self, requested: &Limits) -> bool {
        self.limits != *requested
    }
}

/// Why a chunk cannot be placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("no storage nodes with free space for a {shard_size}-byte shard")]
    NoNodes { shard_size: u64 },
    #[error(
        "cannot place {shards} shards ({profile}) so that one lost node loses at most {parity}: \
         the {nodes} usable nodes take at most {max_placeable}; add nodes or free space, or use a \
         profile with fewer shards"
    )]
    NotEnoughNodes {
        shards: usize,
        profile: Profile,
        parity: usize,
        nodes: usize,
        max_placeable: usize,
    },
    #[error("node id {0:?} appears twice")]
    DuplicateNode(String),
    #[error("invalid limits {0:?}: every limit must be at least 1")]
    InvalidLimits(Limits),
}

/// Places the `k + m` shards of one chunk. `seed` varies the choice between chunks (use the
/// chunk id or the write id).
pub fn place(
    nodes: &[NodeInfo],
    profile: Profile,
    shard_size: u64,
    seed: &Hash,
    requested: Limits,
) -> Result<Placement, PlacementError> {
    check_input(nodes, requested)?;
    let n_shards = profile.total();
    let m = profile.parity();
    let candidates = Candidates::new(nodes, shard_size, seed);
    if candidates.nodes.is_empty() {
        return Err(PlacementError::NoNodes { shard_size });
    }
    let limits = relax(&candidates, n_shards, m, requested).ok_or_else(|| {
        PlacementError::NotEnoughNodes {
            shards: n_shards,
            profile,
            parity: m,
            nodes: candidates.nodes.len(),
            max_placeable: candidates.max_placeable(m, usize::MAX, usize::MAX),
        }
    })?;
    let slots = candidates.fill(n_shards, &limits);
    debug_assert_eq!(
        slots.len(),
        n_shards,
        "laminar caps: greedy reaches the maximum"
    );
    // Data shards on the lowest-latency slots; ties keep rendezvous order.
    let mut order: Vec<usize> = (0..slots.len()).collect();
    order.sort_by_key(|&i| (candidates.nodes[slots[i]].latency_us, i));
    let nodes = order
        .into_iter()
        .map(|i| candidates.nodes[slots[i]].id.clone())
        .collect();
    Ok(Placement { nodes, limits })
}

/// Chooses nodes for the shards of a chunk that must be rebuilt (repair, drain), leaving the
/// healthy ones where they are. `current[i]` names the node of healthy shard `i`, `None` a
/// shard to place. `nodes` lists every node whose topology is known; only those with room
/// for a shard are chosen, so a caller excludes unusable targets (offline, draining, full) by
/// giving them `free_bytes = 0`. A holder missing from `nodes` counts as its own rack and
/// datacenter.
///
/// The rules are those of [`place`], counted over healthy and new shards together: never more
/// than `m` shards on one node; the requested limits relaxed only as far as needed
/// (datacenter, then rack, then node). Returns `(shard index, node)` for every `None`, in
/// index order, and the limits applied.
pub fn place_replacements(
    nodes: &[NodeInfo],
    profile: Profile,
    shard_size: u64,
    seed: &Hash,
    requested: Limits,
    current: &[Option<String>],
) -> Result<(Vec<(usize, String)>, Limits), PlacementError> {
    check_input(nodes, requested)?;
    let missing: Vec<usize> = (0..profile.total())
        .filter(|&i| current.get(i).is_none_or(Option::is_none))
        .collect();
    if missing.is_empty() {
        // Nothing placed: report the limits the first try would have applied (never past m).
        let per_node = requested.per_node.min(profile.parity()).max(1);
        return Ok((
            Vec::new(),
            Limits {
                per_node,
                ..requested
            },
        ));
    }
    let by_id: BTreeMap<&str, &NodeInfo> = nodes.iter().map(|n| (n.id.as_str(), n)).collect();
    let domains = |id: &str| -> (String, String) {
        match by_id.get(id) {
            Some(n) => domain_keys(n),
            None => (format!("\0node:{id}"), format!("\0node:{id}")),
        }
    };
    // Healthy shards, counted per node, rack and datacenter.
    let mut held_node: BTreeMap<String, usize> = BTreeMap::new();
    let mut held_rack: BTreeMap<String, usize> = BTreeMap::new();
    let mut held_dc: BTreeMap<String, usize> = BTreeMap::new();
    for id in current.iter().take(profile.total()).flatten() {
        let (dc, rack) = domains(id);
        *held_node.entry(id.clone()).or_default() += 1;
        *held_rack.entry(rack).or_default() += 1;
        *held_dc.entry(dc).or_default() += 1;
    }
    let candidates = Candidates::new(nodes, shard_size, seed);
    if candidates.nodes.is_empty() {
        return Err(PlacementError::NoNodes { shard_size });
    }
    let m = profile.parity();
    let n_total = profile.total();
    // Least relaxation first, as `place` does: the datacenter limit, then the rack limit,
    // then the node limit (never past m).
    let tries = (requested.per_node.min(m).max(1)..=m.max(1)).flat_map(|per_node| {
        (requested.per_rack..=n_total.max(requested.per_rack)).flat_map(move |per_rack| {
            (requested.per_datacenter..=n_total.max(requested.per_datacenter)).map(
                move |per_datacenter| Limits {
                    per_node,
                    per_rack,
                    per_datacenter,
                },
            )
        })
    });
    for limits in tries {
        let mut on_node = held_node.clone();
        let mut on_rack = held_rack.clone();
        let mut on_dc = held_dc.clone();
        let mut used = vec![0usize; candidates.nodes.len()];
        let mut chosen = Vec::with_capacity(missing.len());
        'shards: for round in 1..=limits.per_node {
            for (i, n) in candidates.nodes.iter().enumerate() {
                if chosen.len() == missing.len() {
                    break 'shards;
                }
                let (dc, rack) = domain_keys(n);
                let here = on_node.get(&n.id).copied().unwrap_or(0);
                let ok = here < round
                    && used[i] < candidates.room[i]
                    && on_rack.get(&rack).copied().unwrap_or(0) < limits.per_rack
                    && on_dc.get(&dc).copied().unwrap_or(0) < limits.per_datacenter;
                if ok {
                    used[i] += 1;
                    *on_node.entry(n.id.clone()).or_default() += 1;
                    *on_rack.entry(rack).or_default() += 1;
                    *on_dc.entry(dc).or_default() += 1;
                    chosen.push(n.id.clone());
                }
            }
        }
        if chosen.len() == missing.len() {
            return Ok((missing.into_iter().zip(chosen).collect(), limits));
        }
    }
    Err(PlacementError::NotEnoughNodes {
        shards: missing.len(),
        profile,
        parity: m,
        nodes: candidates.nodes.len(),
        max_placeable: candidates.max_placeable(m, usize::MAX, usize::MAX),
    })
}

/// The (datacenter, rack) keys of a node's failure domains, as [`Candidates`] counts them:
/// its labels within its region, or the node itself when a label is empty (an unlabelled node
/// is its own failure domain).
pub fn domain_keys(n: &NodeInfo) -> (String, String) {
    let dc = if n.datacenter.is_empty() {
        format!("{}\0node:{}", n.region, n.id)
    } else {
        format!("{}\0{}", n.region, n.datacenter)
    };
    let rack = if n.rack.is_empty() {
        format!("{dc}\0node:{}", n.id)
    } else {
        format!("{dc}\0{}", n.rack)
    };
    (dc, rack)
}

/// Refuses limits below 1 and a node listed twice.
fn check_input(nodes: &[NodeInfo], requested: Limits) -> Result<(), PlacementError> {
    if requested.per_node == 0 || requested.per_rack == 0 || requested.per_datacenter == 0 {
        return Err(PlacementError::InvalidLimits(requested));
    }
    let mut seen = BTreeSet::new();
    for n in nodes {
        if !seen.insert(n.id.as_str()) {
            return Err(PlacementError::DuplicateNode(n.id.clone()));
        }
    }
    Ok(())
}

/// Finds the least relaxation of `req` under which `n` shards fit with at most `m` per node.
fn relax(c: &Candidates<'_>, n: usize, m: usize, req: Limits) -> Option<Limits> {
    let first_node = req.per_node.min(m);
    for per_node in first_node..=m.max(first_node) {
        if c.max_placeable(per_node, usize::MAX, usize::MAX) < n {
            continue;
        }
        let per_rack = least(req.per_rack, n, |r| {
            c.max_placeable(per_node, r, usize::MAX) >= n
        });
        let per_datacenter = least(req.per_datacenter, n, |d| {
            c.max_placeable(per_node, per_rack, d) >= n
        });
        return Some(Limits {
            per_node,
            per_rack,
            per_datacenter,
        });
    }
    None
}

/// Smallest `x >= lo` with `ok(x)`, given `ok` is monotone and `ok(max(lo, hi))` holds.
fn least(lo: usize, hi: usize, ok: impl Fn(usize) -> bool) -> usize {
    if ok(lo) {
        return lo;
    }
    let (mut bad, mut good) = (lo, hi.max(lo));
    while good - bad > 1 {
        let mid = bad + (good - bad) / 2;
        if ok(mid) { good = mid } else { bad = mid }
    }
    good
}

struct Candidates<'a> {
    /// Usable nodes in rendezvous order (best first).
    nodes: Vec<&'a NodeInfo>,
    /// Shards each node has room for.
    room: Vec<usize>,
    rack: Vec<usize>,
    dc: Vec<usize>,
    n_racks: usize,
    n_dcs: usize,
}

impl<'a> Candidates<'a> {
    fn new(all: &'a [NodeInfo], shard_size: u64, seed: &Hash) -> Self {
        let mut scored: Vec<(f64, &NodeInfo)> = all
            .iter()
            .filter(|n| n.free_bytes >= shard_size.max(1))
            .map(|n| (rendezvous_score(seed, n), n))
            .collect();
        scored.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.id.cmp(&b.1.id)));
        let nodes: Vec<&NodeInfo> = scored.into_iter().map(|(_, n)| n).collect();
        let room = nodes
            .iter()
            .map(|n| (n.free_bytes / shard_size.max(1)).min(usize::MAX as u64) as usize)
            .collect();
        let mut racks = BTreeMap::new();
        let mut dcs = BTreeMap::new();
        let mut rack = Vec::new();
        let mut dc = Vec::new();
        for n in &nodes {
            let dc_key = if n.datacenter.is_empty() {
                (n.region.as_str(), format!("\0node:{}", n.id))
            } else {
                (n.region.as_str(), n.datacenter.clone())
            };
            let rack_key = if n.rack.is_empty() {
                (dc_key.clone(), format!("\0node:{}", n.id))
            } else {
                (dc_key.clone(), n.rack.clone())
            };
            let next = dcs.len();
            dc.push(*dcs.entry(dc_key).or_insert(next));
            let next = racks.len();
            rack.push(*racks.entry(rack_key).or_insert(next));
        }
        Candidates {
            n_racks: racks.len(),
            n_dcs: dcs.len(),
            nodes,
            room,
            rack,
            dc,
        }
    }

    /// Most shards placeable under the given caps (exact: the caps form a laminar family).
    fn max_placeable(&self, per_node: usize, per_rack: usize, per_dc: usize) -> usize {
        let mut rack_sum = vec![0usize; self.n_racks];
        let mut rack_dc = vec![0usize; self.n_racks];
        for i in 0..self.nodes.len() {
            rack_sum[self.rack[i]] =
                rack_sum[self.rack[i]].saturating_add(self.room[i].min(per_node));
            rack_dc[self.rack[i]] = self.dc[i];
        }
        let mut dc_sum = vec![0usize; self.n_dcs];
        for r in 0..self.n_racks {
            dc_sum[rack_dc[r]] = dc_sum[rack_dc[r]].saturating_add(rack_sum[r].min(per_rack));
        }
        dc_sum
            .into_iter()
            .map(|s| s.min(per_dc))
            .fold(0usize, usize::saturating_add)
    }

    /// Greedy fill in rounds: round r lets each node take its r-th shard, in rendezvous order,
    /// while every enclosing domain has room. Returns node positions, one per shard.
    fn fill(&self, n: usize, l: &Limits) -> Vec<usize> {
        let mut on_node = vec![0usize; self.nodes.len()];
        let mut on_rack = vec![0usize; self.n_racks];
        let mut on_dc = vec![0usize; self.n_dcs];
        let mut slots = Vec::with_capacity(n);
        for round in 1..=l.per_node {
            for i in 0..self.nodes.len() {
                if slots.len() == n {
                    return slots;
                }
                let ok = on_node[i] < round
                    && on_node[i] < self.room[i]
                    && on_rack[self.rack[i]] < l.per_rack
                    && on_dc[self.dc[i]] < l.per_datacenter;
                if ok {
                    on_node[i] += 1;
                    on_rack[self.rack[i]] += 1;
                    on_dc[self.dc[i]] += 1;
                    slots.push(i);
                }
            }
        }
        slots
    }
}

/// Weighted rendezvous score: `-ln(u) / w` with `u` uniform in (0, 1] from blake3(seed, id) and
/// `w` the node's free bytes. The lowest score wins; a node's chance of ranking first is
/// proportional to its weight.
fn rendezvous_score(seed: &Hash, node: &NodeInfo) -> f64 {
    let mut h = blake3::Hasher::new();
    h.update(seed.as_bytes());
    h.update(node.id.as_bytes());
    let bytes = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes.as_bytes()[..8]);
    let u = ((u64::from_le_bytes(b) >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
    let w = (node.free_bytes as f64).max(1.0);
    -u.ln() / w
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, dc: &str, rack: &str, free: u64, lat: u32) -> NodeInfo {
        NodeInfo {
            id: id.into(),
            region: "r".into(),
            datacenter: dc.into(),
            rack: rack.into(),
            free_bytes: free,
            latency_us: lat,
        }
    }

    #[test]
    fn replacements_go_to_unused_nodes_and_keep_the_rest() {
        let nodes: Vec<_> = (0..18)
            .map(|i| node(&format!("n{i:02}"), "", "", 1 << 40, 100))
            .collect();
        let seed = Hash::of(b"chunk");
        let p = place(&nodes, Profile::DEFAULT, 1 << 20, &seed, Limits::default()).unwrap();
        // Four holders die: their shards are lost and they take nothing new.
        let holders: BTreeSet<&String> = p.nodes.iter().collect();
        let dead: Vec<String> = holders.iter().take(4).map(|s| s.to_string()).collect();
        let current: Vec<Option<String>> = p
            .nodes
            .iter()
            .map(|n| (!dead.contains(n)).then(|| n.clone()))
            .collect();
        let live: Vec<NodeInfo> = nodes
            .iter()
            .map(|n| NodeInfo {
                free_bytes: if dead.contains(&n.id) {
                    0
                } else {
                    n.free_bytes
                },
                ..n.clone()
            })
            .collect();
        let (chosen, limits) = place_replacements(
            &live,
            Profile::DEFAULT,
            1 << 20,
            &seed,
            Limits::default(),
            &current,
        )
        .unwrap();
        let lost: Vec<usize> = (0..14).filter(|&i| current[i].is_none()).collect();
        assert_eq!(chosen.iter().map(|c| c.0).collect::<Vec<_>>(), lost);
        assert_eq!(limits, Limits::default());
        let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
        for n in current.iter().flatten().chain(chosen.iter().map(|c| &c.1)) {
            *per_node.entry(n.as_str()).or_default() += 1;
        }
        assert!(per_node.values().all(|&c| c <= 2), "{per_node:?}");
        assert!(chosen.iter().all(|(_, n)| !dead.contains(n)));
        // Nothing lost, nothing to place.
        let full: Vec<Option<String>> = p.nodes.iter().cloned().map(Some).collect();
        assert_eq!(
            place_replacements(
                &live,
                Profile::DEFAULT,
                1 << 20,
                &seed,
                Limits::default(),
                &full
            )
            .unwrap()
            .0,
            Vec::new()
        );
        // Only the 14 holders left alive and full: nowhere to rebuild.
        let none: Vec<NodeInfo> = nodes
            .iter()
            .map(|n| NodeInfo {
                free_bytes: 0,
                ..n.clone()
            })
            .collect();
        assert!(matches!(
            place_replacements(
                &none,
                Profile::DEFAULT,
                1 << 20,
                &seed,
                Limits::default(),
                &current
            ),
            Err(PlacementError::NoNodes { .. })
        ));
    }

    #[test]
    fn seven_unlabelled_nodes_take_two_shards_each() {
        let nodes: Vec<_> = (0..7)
            .map(|i| node(&format!("n{i}"), "", "", 1 << 40, 100))
            .collect();
        let p = place(
            &nodes,
            Profile::DEFAULT,
            1 << 20,
            &Hash::of(b"c"),
            Limits::default(),
        )
        .unwrap();
        assert_eq!(p.nodes.len(), 14);
        assert_eq!(p.limits, Limits::default());
        for n in &nodes {
            assert_eq!(p.nodes.iter().filter(|x| **x == n.id).count(), 2);
        }
    }

    #[test]
    fn three_nodes_cannot_hold_ten_plus_four() {
        let nodes: Vec<_> = (0..3)
            .map(|i| node(&format!("n{i}"), "", "", 1 << 40, 1))
            .collect();
        let err = place(
            &nodes,
            Profile::DEFAULT,
            1 << 20,
            &Hash::of(b"c"),
            Limits::default(),
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                PlacementError::NotEnoughNodes {
                    max_placeable: 12,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("one lost node"));
    }

    #[test]
    fn four_nodes_relax_the_node_limit_up_to_m() {
        let nodes: Vec<_> = (0..4)
            .map(|i| node(&format!("n{i}"), "", "", 1 << 40, 1))
            .collect();
        let p = place(
            &nodes,
            Profile::DEFAULT,
            1 << 20,
            &Hash::of(b"c"),
            Limits::default(),
        )
        .unwrap();
        assert_eq!(p.limits.per_node, 4);
        assert!(p.relaxed(&Limits::default()));
    }

    #[test]
    fn one_datacenter_relaxes_only_the_datacenter_limit() {
        let nodes: Vec<_> = (0..16)
            .map(|i| {
                node(
                    &format!("n{i:02}"),
                    "dc1",
                    &format!("rack{}", i % 4),
                    1 << 40,
                    1,
                )
            })
            .collect();
        let p = place(
            &nodes,
            Profile::DEFAULT,
            1 << 20,
            &Hash::of(b"c"),
            Limits::default(),
        )
        .unwrap();
        assert_eq!(
            p.limits,
            Limits {
                per_node: 2,
                per_rack: 4,
                per_datacenter: 14
            }
        );
    }

    #[test]
    fn data_shards_go_to_fast_nodes() {
        let nodes: Vec<_> = (0..20)
            .map(|i| {
                node(
                    &format!("n{i:02}"),
                    "",
                    "",
                    1 << 40,
                    if i < 10 { 100 } else { 5000 },
                )
            })
            .collect();
        let p = place(
            &nodes,
            Profile::DEFAULT,
            1 << 20,
            &Hash::of(b"c"),
            Limits::default(),
        )
        .unwrap();
        let latency = |id: &str| nodes.iter().find(|n| n.id == id).unwrap().latency_us;
        let worst_data = p.nodes[..10].iter().map(|id| latency(id)).max().unwrap();
        let best_parity = p.nodes[10..].iter().map(|id| latency(id)).min().unwrap();
        assert!(worst_data <= best_parity);
    }

    #[test]
    fn spreads_by_free_capacity_across_chunks() {
        let mut nodes: Vec<_> = (0..28)
            .map(|i| node(&format!("n{i:02}"), "", "", 1 << 30, 1))
            .collect();
        nodes[0].free_bytes = 1 << 34; // 16x the others
        let mut hits = BTreeMap::<String, usize>::new();
        for c in 0..400u32 {
            let p = place(
                &nodes,
                Profile::DEFAULT,
                1 << 20,
                &Hash::of(&c.to_le_bytes()),
                Limits::default(),
            )
            .unwrap();
            for id in p.nodes.iter().collect::<BTreeSet<_>>() {
                *hits.entry(id.clone()).or_default() += 1;
            }
        }
        let big = hits["n00"];
        let typical = hits["n05"];
        assert!(big > typical, "big node {big} vs typical {typical}");
    }
}
