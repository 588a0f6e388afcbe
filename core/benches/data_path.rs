//! Data-path benchmarks: erasure codecs per profile, blake3, AES-GCM, shard records, and the
//! whole per-chunk write path single-threaded and pipelined over all cores, next to a memcpy
//! baseline measured in the same run.
//!
//! `cargo bench -p cyxcloud-core --bench data_path` (figures in BENCHMARKS.md).

use std::hint::black_box;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use cyxcloud_core::codec::{self, CodecId, Profile};
use cyxcloud_core::{Hash, MasterKey, encode_chunk, record};

/// The daemons and the CLI run on mimalloc (it keeps freed chunk buffers mapped instead of
/// returning them to the kernel), so the benchmark does too.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CHUNK: usize = 64 << 20;

fn chunk_data(seed: u8) -> Vec<u8> {
    let mut v = vec![0u8; CHUNK];
    blake3::Hasher::new()
        .update(&[seed])
        .finalize_xof()
        .fill(&mut v);
    v
}

fn group<'a>(
    c: &'a mut Criterion,
    name: &str,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    g.throughput(Throughput::Bytes(CHUNK as u64));
    g
}

fn baseline(c: &mut Criterion) {
    let data = chunk_data(1);
    let mut dst = vec![0u8; CHUNK];
    let mut g = group(c, "baseline");
    g.bench_function("memcpy_64MiB", |b| {
        b.iter(|| dst.copy_from_slice(black_box(&data)))
    });
    g.finish();
}

fn codecs(c: &mut Criterion) {
    let data = Bytes::from(chunk_data(2));
    let profiles = [
        ("default_10+4", Profile::DEFAULT),
        ("ha_8+6", Profile::HA),
        ("max-ha_8+8", Profile::MAX_HA),
        ("extreme_6+10", Profile::EXTREME),
    ];
    let mut g = group(c, "encode");
    for codec_id in CodecId::ALL {
        for (name, p) in profiles {
            let codec = codec::codec(codec_id, p);
            g.bench_with_input(BenchmarkId::new(codec_id.name(), name), &data, |b, d| {
                b.iter(|| codec.encode(d).unwrap())
            });
        }
    }
    g.finish();
    let mut g = group(c, "reconstruct_m_missing");
    for codec_id in CodecId::ALL {
        for (name, p) in profiles {
            let codec = codec::codec(codec_id, p);
            let shards = codec.encode(&data).unwrap();
            // Worst case: lose data shards first (parity alone cannot be read back for free).
            let slots: Vec<Option<Bytes>> = shards
                .into_iter()
                .enumerate()
                .map(|(i, s)| (i >= p.parity().min(p.data())).then_some(s))
                .collect();
            let missing = slots.iter().filter(|s| s.is_none()).count();
            assert!(missing == p.parity().min(p.data()));
            g.bench_with_input(BenchmarkId::new(codec_id.name(), name), &slots, |b, s| {
                b.iter(|| codec.decode(s, CHUNK).unwrap())
            });
        }
    }
    g.finish();
}

fn primitives(c: &mut Criterion) {
    let data = chunk_data(3);
    let key = MasterKey::from_bytes([9; 32]);
    let id = Hash::of(b"bench");
    let mut g = group(c, "primitives");
    g.bench_function("blake3_64MiB", |b| b.iter(|| Hash::of(black_box(&data))));
    g.bench_function("aes256gcm_seal_64MiB", |b| {
        b.iter_batched(
            || data.clone(),
            |mut buf| key.seal_chunk(&id, &mut buf).unwrap(),
            criterion::BatchSize::LargeInput,
        )
    });
    let shard = &data[..Profile::DEFAULT.shard_size(CHUNK)];
    let sh = Hash::of(shard);
    let rec = record::encode(shard, &sh, &record::EncodeOptions::default());
    g.throughput(Throughput::Bytes(shard.len() as u64));
    g.bench_function("record_encode_shard", |b| {
        b.iter(|| record::encode(black_box(shard), &sh, &record::EncodeOptions::default()))
    });
    g.bench_function("record_decode_verify_shard", |b| {
        b.iter(|| record::decode_verified(black_box(&rec), None).unwrap())
    });
    g.finish();
}

fn write_path(c: &mut Criterion) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let key = MasterKey::from_bytes([7; 32]);
    let inputs: Vec<Vec<u8>> = (0..threads as u8).map(chunk_data).collect();
    let profile = Profile::DEFAULT;
    let codec_id = codec::default_codec(profile);
    for (label, k) in [("plain", None), ("encrypted", Some(&key))] {
        let mut g = group(c, &format!("write_path_{label}"));
        g.bench_function("single_thread", |b| {
            b.iter_batched(
                || BytesMut::from(&inputs[0][..]),
                |d| encode_chunk(d, codec_id, profile, k).unwrap(),
                criterion::BatchSize::LargeInput,
            )
        });
        g.throughput(Throughput::Bytes((CHUNK * threads) as u64));
        g.bench_function(format!("pipelined_{threads}_threads"), |b| {
            b.iter_batched(
                || {
                    inputs
                        .iter()
                        .map(|d| BytesMut::from(&d[..]))
                        .collect::<Vec<_>>()
                },
                |chunks| {
                    std::thread::scope(|s| {
                        let hs: Vec<_> = chunks
                            .into_iter()
                            .map(|d| {
                                s.spawn(move || encode_chunk(d, codec_id, profile, k).unwrap())
                            })
                            .collect();
                        hs.into_iter()
                            .map(|h| h.join().unwrap().shards.len())
                            .sum::<usize>()
                    })
                },
                criterion::BatchSize::LargeInput,
            )
        });
        g.finish();
    }
}

criterion_group!(benches, baseline, codecs, primitives, write_path);
criterion_main!(benches);
