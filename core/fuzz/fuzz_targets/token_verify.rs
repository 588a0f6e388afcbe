//! Token parsing and verification never panics on arbitrary bytes, and nothing verifies
//! without a valid signature.
//!
//! Run: `scripts/fuzz [seconds]`.
#![no_main]

use cyxcloud_core::token::{TokenSigner, TokenVerifier};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let signer = TokenSigner::from_seed([7; 32]);
    let mut v = TokenVerifier::new();
    v.add_key(&signer.public_key()).unwrap();
    assert!(
        v.verify(data, 0).is_err(),
        "random bytes verified as a token"
    );
});
