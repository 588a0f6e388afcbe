//! The shard record decoder must reject every malformed input with a typed error and never
//! panic; when it accepts, the content must hash to the header's hash. Each input is also
//! opened with an at-rest key, so the decrypt path (and LZ4 behind it) is fuzzed too.
//!
//! Run: `scripts/fuzz [seconds]` (seeds in `core/fuzz/seeds/record_decode`).
#![no_main]

use cyxcloud_core::crypto::AtRestKey;
use cyxcloud_core::{Hash, record};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = AtRestKey::from_bytes([9; 32]);
    for at_rest in [None, Some(&key)] {
        if let Ok(view) = record::decode(data) {
            let hash = view.hash;
            if let Ok(shard) = view.into_shard(at_rest) {
                assert_eq!(Hash::of(&shard), hash);
            }
        }
    }
});
