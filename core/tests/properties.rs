//! Property tests of the data path: erasure codes, integrity, encryption, records, placement.

use std::collections::{BTreeMap, BTreeSet};

use bytes::{Bytes, BytesMut};
use cyxcloud_core::codec::{self, CodecId, Profile};
use cyxcloud_core::error::{CodecError, Error};
use cyxcloud_core::placement::{self, Limits, NodeInfo, PlacementError};
use cyxcloud_core::{Hash, MasterKey, decode_chunk, encode_chunk, record};
use proptest::prelude::*;

fn profiles() -> impl Strategy<Value = Profile> {
    prop_oneof![
        Just(Profile::DEFAULT),
        Just(Profile::HA),
        Just(Profile::MAX_HA),
        Just(Profile::EXTREME),
        (1usize..20, 1usize..12).prop_map(|(k, m)| Profile::new(k, m).unwrap()),
    ]
}

fn codecs() -> impl Strategy<Value = CodecId> {
    prop_oneof![
        Just(CodecId::ReedSolomonErasure),
        Just(CodecId::ReedSolomonSimd)
    ]
}

/// A random subset of `n` indices of size `size`, from a seed.
fn subset(n: usize, size: usize, seed: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    let mut s = seed | 1;
    for i in (1..n).rev() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        idx.swap(i, (s % (i as u64 + 1)) as usize);
    }
    idx.truncate(size);
    idx
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Any k of the k + m shards rebuild the exact bytes, for both codecs and every profile.
    #[test]
    fn any_k_shards_reconstruct(
        profile in profiles(),
        codec_id in codecs(),
        data in proptest::collection::vec(any::<u8>(), 1..20_000),
        seed in any::<u64>(),
        extra in 0usize..4,
    ) {
        let c = codec::codec(codec_id, profile);
        let shards = c.encode(&Bytes::from(data.clone())).unwrap();
        prop_assert_eq!(shards.len(), profile.total());
        let keep = subset(profile.total(), (profile.data() + extra).min(profile.total()), seed);
        let slots: Vec<Option<Bytes>> = (0..profile.total())
            .map(|i| keep.contains(&i).then(|| shards[i].clone()))
            .collect();
        prop_assert_eq!(c.decode(&slots, data.len()).unwrap(), data);
    }

    /// With fewer than k shards the codec refuses; it never guesses.
    #[test]
    fn fewer_than_k_shards_is_unrecoverable(
        profile in profiles(),
        codec_id in codecs(),
        data in proptest::collection::vec(any::<u8>(), 1..5_000),
        seed in any::<u64>(),
    ) {
        let c = codec::codec(codec_id, profile);
        let shards = c.encode(&Bytes::from(data.clone())).unwrap();
        let keep = subset(profile.total(), profile.data() - 1, seed);
        let slots: Vec<Option<Bytes>> = (0..profile.total())
            .map(|i| keep.contains(&i).then(|| shards[i].clone()))
            .collect();
        let is_unrecoverable = matches!(c.decode(&slots, data.len()), Err(CodecError::Unrecoverable { .. }));
        prop_assert!(is_unrecoverable);
    }

    /// The whole chunk pipeline: up to m shards missing or corrupt still decodes to the exact
    /// bytes (corrupt ones reported); more than m bad shards is an error, never wrong bytes.
    #[test]
    fn chunk_pipeline_survives_m_faults_and_refuses_more(
        profile in profiles(),
        codec_id in codecs(),
        data in proptest::collection::vec(any::<u8>(), 1..10_000),
        seed in any::<u64>(),
        faults in 0usize..20,
        encrypt in any::<bool>(),
    ) {
        let key = MasterKey::from_bytes([5; 32]);
        let key = encrypt.then_some(&key);
        let enc = encode_chunk(BytesMut::from(&data[..]), codec_id, profile, key).unwrap();
        let faults = faults.min(profile.total());
        let bad = subset(profile.total(), faults, seed);
        let slots: Vec<Option<Bytes>> = enc.shards.iter().enumerate().map(|(i, s)| {
            match bad.iter().position(|&b| b == i) {
                None => Some(s.clone()),
                Some(p) if p % 2 == 0 => None, // missing
                Some(_) => { // corrupt one byte
                    let mut v = s.to_vec();
                    let at = (seed as usize ^ i) % v.len();
                    v[at] ^= 0x5a;
                    Some(Bytes::from(v))
                }
            }
        }).collect();
        match decode_chunk(&enc.meta, slots, key) {
            Ok(out) => {
                prop_assert!(faults <= profile.parity());
                prop_assert_eq!(&out.data[..], &data[..]);
            }
            Err(Error::Codec(CodecError::Unrecoverable { .. })) => prop_assert!(faults > profile.parity()),
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
    }

    /// The record decoder never panics, whatever the bytes.
    #[test]
    fn record_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = record::decode_verified(&bytes, None);
    }

    /// Random mutations of a valid record never decode to different content.
    #[test]
    fn mutated_records_never_yield_wrong_content(
        payload in proptest::collection::vec(any::<u8>(), 1..300),
        compress in any::<bool>(),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
    ) {
        let h = Hash::of(&payload);
        let rec = record::encode(&payload, &h, &record::EncodeOptions { compress, at_rest: None });
        let mut m = rec.clone();
        for (at, v) in edits {
            let at = at % m.len();
            m[at] = v;
        }
        if let Ok(out) = record::decode_verified(&m, None) {
            prop_assert_eq!(out, payload);
        }
    }
}

#[test]
fn flipping_any_byte_of_any_shard_is_detected() {
    for codec_id in CodecId::ALL {
        let data: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        let enc = encode_chunk(
            BytesMut::from(&data[..]),
            codec_id,
            Profile::new(4, 2).unwrap(),
            None,
        )
        .unwrap();
        for s in 0..enc.shards.len() {
            for at in (0..enc.shards[s].len()).step_by(7) {
                let mut slots: Vec<Option<Bytes>> = enc.shards.iter().cloned().map(Some).collect();
                let mut v = enc.shards[s].to_vec();
                v[at] ^= 0x80;
                slots[s] = Some(Bytes::from(v));
                let out = decode_chunk(&enc.meta, slots, None).unwrap();
                assert_eq!(&out.data[..], &data[..]);
                if s < 4 {
                    // Data shards are checked first; a corrupt one must be reported.
                    assert_eq!(out.corrupt, vec![s], "shard {s} byte {at}");
                }
            }
        }
    }
}

#[test]
fn tampered_ciphertext_is_an_error_not_garbage() {
    let key = MasterKey::from_bytes([1; 32]);
    let data = vec![7u8; 10_000];
    let enc = encode_chunk(
        BytesMut::from(&data[..]),
        CodecId::ReedSolomonErasure,
        Profile::DEFAULT,
        Some(&key),
    )
    .unwrap();
    assert!(
        !enc.shards
            .iter()
            .any(|s| s.windows(64).any(|w| w == [7u8; 64])),
        "plaintext leaked into shards"
    );
    // Tamper with a data shard and recompute its hash, as a malicious node colluding with a
    // metadata attacker would: the GCM tag still catches it.
    let mut meta = enc.meta.clone();
    let mut v = enc.shards[0].to_vec();
    v[10] ^= 1;
    meta.shard_hashes[0] = Hash::of(&v);
    let mut slots: Vec<Option<Bytes>> = enc.shards.iter().cloned().map(Some).collect();
    slots[0] = Some(Bytes::from(v));
    assert!(decode_chunk(&meta, slots, Some(&key)).is_err());
    // Without the key nothing decodes.
    let slots: Vec<Option<Bytes>> = enc.shards.iter().cloned().map(Some).collect();
    assert!(decode_chunk(&enc.meta, slots.clone(), None).is_err());
    assert!(decode_chunk(&enc.meta, slots, Some(&MasterKey::from_bytes([2; 32]))).is_err());
}

#[test]
fn a_64_mib_chunk_round_trips_with_m_missing() {
    let data: Vec<u8> = (0..64u32 << 20).map(|i| (i ^ (i >> 8)) as u8).collect();
    for codec_id in CodecId::ALL {
        let enc =
            encode_chunk(BytesMut::from(&data[..]), codec_id, Profile::DEFAULT, None).unwrap();
        let mut slots: Vec<Option<Bytes>> = enc.shards.into_iter().map(Some).collect();
        for s in [0, 3, 6, 9] {
            slots[s] = None;
        }
        let out = decode_chunk(&enc.meta, slots, None).unwrap();
        assert!(out.data[..] == data[..], "{codec_id}");
    }
}

// ---- placement ----

fn clusters() -> impl Strategy<Value = Vec<NodeInfo>> {
    proptest::collection::vec((0u8..3, 0u8..4, 0u8..3, 0u64..40, 0u32..5000), 0..30).prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (dc, rack, label_mode, free_mib, lat))| NodeInfo {
                id: format!("node-{i:02}"),
                region: "region-a".into(),
                datacenter: if label_mode == 0 {
                    String::new()
                } else {
                    format!("dc{dc}")
                },
                rack: if label_mode == 2 {
                    String::new()
                } else {
                    format!("rack{rack}")
                },
                free_bytes: free_mib << 20,
                latency_us: lat,
            })
            .collect()
    })
}

fn domain_counts(
    p: &[String],
    nodes: &[NodeInfo],
    key: impl Fn(&NodeInfo) -> String,
) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for id in p {
        let n = nodes.iter().find(|n| &n.id == id).unwrap();
        *m.entry(key(n)).or_default() += 1;
    }
    m
}

fn rack_key(n: &NodeInfo) -> String {
    let dc = dc_key(n);
    if n.rack.is_empty() {
        format!("{dc}/node:{}", n.id)
    } else {
        format!("{dc}/{}", n.rack)
    }
}

fn dc_key(n: &NodeInfo) -> String {
    if n.datacenter.is_empty() {
        format!("node:{}", n.id)
    } else {
        n.datacenter.clone()
    }
}

/// Independent check of whether `shards` fit with at most `per_node` per node.
fn fits(nodes: &[NodeInfo], shard_size: u64, per_node: usize, shards: usize) -> bool {
    nodes
        .iter()
        .map(|n| ((n.free_bytes / shard_size) as usize).min(per_node))
        .sum::<usize>()
        >= shards
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn placement_respects_limits_or_refuses(nodes in clusters(), profile in profiles(), seed in any::<u64>()) {
        let shard_size = 1u64 << 20;
        let seed = Hash::of(&seed.to_le_bytes());
        let req = Limits::default();
        match placement::place(&nodes, profile, shard_size, &seed, req) {
            Ok(p) => {
                prop_assert_eq!(p.nodes.len(), profile.total());
                // Single-node loss survivable: no node holds more than m shards.
                let per_node = domain_counts(&p.nodes, &nodes, |n| n.id.clone());
                prop_assert!(per_node.values().all(|&c| c <= profile.parity() && c <= p.limits.per_node));
                for (id, c) in &per_node {
                    let n = nodes.iter().find(|n| &n.id == id).unwrap();
                    prop_assert!(n.free_bytes >= *c as u64 * shard_size, "capacity exceeded on {}", id);
                }
                prop_assert!(domain_counts(&p.nodes, &nodes, rack_key).values().all(|&c| c <= p.limits.per_rack));
                prop_assert!(domain_counts(&p.nodes, &nodes, dc_key).values().all(|&c| c <= p.limits.per_datacenter));
                // Limits are never relaxed below what was asked, and the node limit never past m.
                prop_assert!(p.limits.per_node >= req.per_node.min(profile.parity()) && p.limits.per_node <= profile.parity().max(1));
                prop_assert!(p.limits.per_rack >= req.per_rack && p.limits.per_datacenter >= req.per_datacenter);
                // Deterministic, and independent of the order nodes are listed in.
                let mut rev = nodes.clone();
                rev.reverse();
                prop_assert_eq!(&placement::place(&rev, profile, shard_size, &seed, req).unwrap(), &p);
            }
            Err(PlacementError::NotEnoughNodes { .. }) | Err(PlacementError::NoNodes { .. }) => {
                prop_assert!(!fits(&nodes, shard_size, profile.parity(), profile.total()),
                    "refused although {} shards fit with at most {} per node", profile.total(), profile.parity());
            }
            Err(e) => prop_assert!(false, "unexpected {e}"),
        }
    }

    /// Repair placement: every lost shard gets exactly one new node, healthy shards stay, no
    /// dead node is chosen, no node ends with more than m shards or more than it has room for;
    /// and it refuses only when no such placement exists.
    #[test]
    fn replacements_fill_every_hole_within_the_rules(
        nodes in clusters(),
        profile in profiles(),
        seed in any::<u64>(),
        kill in proptest::collection::vec(any::<bool>(), 8),
    ) {
        let shard_size = 1u64 << 20;
        let seed = Hash::of(&seed.to_le_bytes());
        let Ok(p) = placement::place(&nodes, profile, shard_size, &seed, Limits::default()) else {
            return Ok(());
        };
        // Some of the nodes holding shards die: their shards are lost, they take no new ones.
        let holders: Vec<String> = p.nodes.iter().cloned().collect::<BTreeSet<_>>().into_iter().collect();
        let dead: BTreeSet<String> = holders.iter().enumerate().filter(|(i, _)| kill[i % kill.len()]).map(|(_, h)| h.clone()).collect();
        let current: Vec<Option<String>> = p.nodes.iter().map(|n| (!dead.contains(n)).then(|| n.clone())).collect();
        let live: Vec<NodeInfo> = nodes.iter().map(|n| NodeInfo {
            free_bytes: if dead.contains(&n.id) { 0 } else { n.free_bytes },
            ..n.clone()
        }).collect();
        let holes: Vec<usize> = (0..profile.total()).filter(|&i| current[i].is_none()).collect();
        match placement::place_replacements(&live, profile, shard_size, &seed, Limits::default(), &current) {
            Ok((chosen, limits)) => {
                prop_assert_eq!(chosen.iter().map(|c| c.0).collect::<Vec<_>>(), holes.clone());
                prop_assert!(chosen.iter().all(|(_, n)| !dead.contains(n)), "a dead node was chosen");
                let mut all = current.clone();
                for (i, n) in &chosen { all[*i] = Some(n.clone()); }
                let all: Vec<String> = all.into_iter().map(Option::unwrap).collect();
                let per_node = domain_counts(&all, &nodes, |n| n.id.clone());
                prop_assert!(per_node.values().all(|&c| c <= profile.parity()), "more than m on a node: {per_node:?}");
                let new_per_node = domain_counts(&chosen.iter().map(|c| c.1.clone()).collect::<Vec<_>>(), &nodes, |n| n.id.clone());
                for (id, c) in &new_per_node {
                    let n = live.iter().find(|n| &n.id == id).unwrap();
                    prop_assert!(n.free_bytes >= *c as u64 * shard_size, "capacity exceeded on {}", id);
                    prop_assert!(per_node[id] <= limits.per_node, "node limit {limits:?} on {id}");
                }
                prop_assert!(limits.per_node <= profile.parity().max(1));
                // Deterministic, and independent of the order nodes are listed in.
                let mut rev = live.clone();
                rev.reverse();
                let again = placement::place_replacements(&rev, profile, shard_size, &seed, Limits::default(), &current).unwrap();
                prop_assert_eq!(again, (chosen, limits));
            }
            Err(PlacementError::NotEnoughNodes { .. }) | Err(PlacementError::NoNodes { .. }) => {
                // Independent check: with rack and datacenter limits relaxed to the whole chunk,
                // the holes fit iff live nodes have room below m shards each.
                let mut held: BTreeMap<&str, usize> = BTreeMap::new();
                for n in current.iter().flatten() { *held.entry(n.as_str()).or_default() += 1; }
                let room: usize = live.iter().map(|n| {
                    ((n.free_bytes / shard_size) as usize).min(profile.parity().saturating_sub(held.get(n.id.as_str()).copied().unwrap_or(0)))
                }).sum();
                prop_assert!(room < holes.len(), "refused although {} holes fit in room for {}", holes.len(), room);
            }
            Err(e) => prop_assert!(false, "unexpected {e}"),
        }
    }

    /// When the guide's limits can hold, they are applied unrelaxed.
    #[test]
    fn strict_limits_hold_when_satisfiable(n_dc in 3usize..5, racks_per_dc in 2usize..4, nodes_per_rack in 2usize..4, seed in any::<u64>()) {
        let mut nodes = Vec::new();
        for d in 0..n_dc { for r in 0..racks_per_dc { for i in 0..nodes_per_rack {
            nodes.push(NodeInfo { id: format!("d{d}r{r}n{i}"), region: "x".into(), datacenter: format!("d{d}"), rack: format!("r{r}"), free_bytes: 1 << 40, latency_us: 1 });
        }}}
        let p = placement::place(&nodes, Profile::DEFAULT, 1 << 20, &Hash::of(&seed.to_le_bytes()), Limits::default()).unwrap();
        prop_assert_eq!(p.limits, Limits::default());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// The readers' fast path (no per-shard hashing) still never returns wrong bytes: a corrupt
    /// shard among the k it uses makes it fail (unless only padding changed), and the checked
    /// path then recovers and names the shard.
    #[test]
    fn fast_decode_never_returns_wrong_bytes(
        profile in profiles(),
        data in proptest::collection::vec(any::<u8>(), 1..5_000),
        corrupt in any::<usize>(),
        encrypt in any::<bool>(),
    ) {
        let key = MasterKey::from_bytes([3; 32]);
        let key = encrypt.then_some(&key);
        let enc = encode_chunk(BytesMut::from(&data[..]), CodecId::ReedSolomonErasure, profile, key).unwrap();
        let all: Vec<Option<Bytes>> = enc.shards.iter().cloned().map(Some).collect();
        prop_assert_eq!(&cyxcloud_core::decode_chunk_fast(&enc.meta, all.clone(), key).unwrap()[..], &data[..]);
        let mut bad = all;
        let i = corrupt % profile.data(); // among the first k: the fast path uses them
        let mut v = enc.shards[i].to_vec();
        let at = corrupt % v.len();
        v[at] ^= 0xff;
        bad[i] = Some(Bytes::from(v));
        // Corrupting zero padding changes nothing that is returned; anything else must fail.
        if let Ok(d) = cyxcloud_core::decode_chunk_fast(&enc.meta, bad.clone(), key) {
            prop_assert_eq!(&d[..], &data[..]);
        }
        let out = decode_chunk(&enc.meta, bad, key).unwrap();
        prop_assert_eq!(&out.data[..], &data[..]);
        prop_assert_eq!(out.corrupt, vec![i]);
    }
}
