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

/// Multiplier of [`stable_hash64_words`]: odd, with bits spread evenly.
const WORD_MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;

/// Hashes `bytes` under `seed` eight bytes at a time: for the distinct counts,
/// which hash every event's uuid (36 bytes) several times per query, where
/// [`stable_hash64`]'s byte loop cost five times as much. Fixed like it (no
/// random keys, little-endian words on every machine), so partial states
/// agree across a cluster's executors; its output differs from
/// [`stable_hash64`]'s, so derived session ids keep using that one.
pub fn stable_hash64_words(seed: u64, bytes: &[u8]) -> u64 {
    let length = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    let mut hash = splitmix64(seed) ^ length.wrapping_mul(WORD_MULTIPLIER);
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let mut buffer = [0u8; 8];
        buffer.copy_from_slice(word);
        hash = folded_multiply(hash ^ u64::from_le_bytes(buffer), WORD_MULTIPLIER);
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        let mut buffer = [0u8; 8];
        buffer[..rest.len()].copy_from_slice(rest);
        hash = folded_multiply(hash ^ u64::from_le_bytes(buffer), WORD_MULTIPLIER);
    }
    splitmix64(hash)
}

/// The 128-bit product folded to 64 bits: every input bit reaches the output.
fn folded_multiply(left: u64, right: u64) -> u64 {
    let product = u128::from(left) * u128::from(right);
    (product as u64) ^ ((product >> 64) as u64)
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

    #[test]
    fn word_hash_tells_lengths_seeds_and_every_byte_apart() {
        assert_eq!(
            stable_hash64_words(1, b"user-1"),
            stable_hash64_words(1, b"user-1")
        );
        assert_ne!(
            stable_hash64_words(1, b"user-1"),
            stable_hash64_words(2, b"user-1")
        );
        // Zero padding of the last word must not make lengths collide.
        assert_ne!(stable_hash64_words(1, b"a"), stable_hash64_words(1, b"a\0"));
        assert_ne!(stable_hash64_words(1, b""), stable_hash64_words(1, b"\0"));
        // Changing any one byte of a uuid-sized input changes the hash.
        let base = *b"0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
        let mut seen = std::collections::HashSet::new();
        assert!(seen.insert(stable_hash64_words(9, &base)));
        for position in 0..base.len() {
            let mut changed = base;
            changed[position] ^= 1;
            assert!(
                seen.insert(stable_hash64_words(9, &changed)),
                "byte {position}"
            );
        }
    }

    #[test]
    fn word_hash_has_no_collisions_among_many_uuid_like_strings() {
        let mut seen = std::collections::HashSet::new();
        for index in 0..200_000u64 {
            let text = format!("0190a1b2-{:04x}-7e5f-8a9b-{:012x}", index % 7, index);
            assert!(
                seen.insert(stable_hash64_words(5, text.as_bytes())),
                "{text}"
            );
        }
    }
}
