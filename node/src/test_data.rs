//! Test inputs shared by the unit tests of several subsystems: deterministic pseudo-random blob
//! bytes and their digests. Compiled for tests only.

use sha2::{Digest as _, Sha256};
use shoal_proto::BlobDigest;

/// `len` pseudo-random bytes from `seed` (xorshift64): the same seed gives the same bytes, and
/// different seeds give blobs that share no content-defined shards.
pub(crate) fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 32) as u8
        })
        .collect()
}

/// The sha256 digest of `bytes`.
pub(crate) fn digest_of(bytes: &[u8]) -> BlobDigest {
    BlobDigest::from_bytes(Sha256::digest(bytes).into())
}
