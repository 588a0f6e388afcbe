//! The shard record decoder must reject every malformed input with a typed error and never
//! panic; when it accepts, the content must hash to the header's hash.
//!
//! Run: `cd core/fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run record_decode -- -max_total_time=60`
#![no_main]

use cyxcloud_core::{Hash, record};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(view) = record::decode(data) {
        let hash = view.hash;
        if let Ok(shard) = view.into_shard(None) {
            assert_eq!(Hash::of(&shard), hash);
        }
    }
});
