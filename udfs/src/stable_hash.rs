//! A small hash whose output never changes between runs, builds or machines.
//!
//! Derived session ids must be the same every time the same events are queried,
//! on every executor of a cluster, so they cannot use Rust's `DefaultHasher`
//! (unspecified across releases) or a randomly keyed hasher. FNV-1a followed by
//! the SplitMix64 finaliser is fixed, fast on short keys and mixes well enough
//! for the 74 random bits of a UUIDv7.

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Hashes `bytes` under `seed`; different seeds give independent hashes.
pub fn stable_hash64(seed: u64, bytes: &[u8]) -> u64 {
    let mut hash = FNV_OFFSET_BASIS ^ splitmix64(seed);
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    splitmix64(hash)
}

/// The SplitMix64 finaliser: spreads every input bit over the whole output.
pub fn splitmix64(value: u64) -> u64 {
    let mut z = value.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_input_same_hash_and_seeds_differ() {
        assert_eq!(stable_hash64(1, b"user-1"), stable_hash64(1, b"user-1"));
        assert_ne!(stable_hash64(1, b"user-1"), stable_hash64(2, b"user-1"));
        assert_ne!(stable_hash64(1, b"user-1"), stable_hash64(1, b"user-2"));
    }
}
