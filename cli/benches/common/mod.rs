//! What the CLI benchmarks share: deterministic incompressible files.

use std::io::Write;
use std::path::Path;

/// A file of `bytes` deterministic, incompressible bytes (xorshift).
pub fn make_file(p: &Path, bytes: u64) {
    make_file_seeded(p, bytes, 0)
}

/// [`make_file`] with other bytes for each `seed`.
pub fn make_file_seeded(p: &Path, bytes: u64, seed: u64) {
    let mut f = std::io::BufWriter::with_capacity(8 << 20, std::fs::File::create(p).unwrap());
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ seed.wrapping_mul(0xD1B5_4A32_D192_ED03);
    let mut block = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        for c in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n]).unwrap();
        left -= n as u64;
    }
    f.flush().unwrap();
}
