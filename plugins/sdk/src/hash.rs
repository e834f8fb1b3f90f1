//! Small, stable hashes for key-based routing (sticky sessions, client
//! hashing). Stable across builds and platforms, so every proxy replica and
//! every worker maps a key the same way.

/// FNV-1a over `bytes`, finished with a 64-bit mixer for good spread.
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

/// The hash of each backend's name, by id: the stable identity rendezvous
/// hashing ranks, so a backend keeps its keys across pool changes.
pub fn name_hashes(backends: &[crate::BackendInfo]) -> alloc::vec::Vec<u64> {
    backends
        .iter()
        .map(|b| hash_bytes(b.name.as_bytes()))
        .collect()
}

/// Combines two hashes; order matters.
pub fn combine(a: u64, b: u64) -> u64 {
    mix(a ^ b.rotate_left(29).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// The splitmix64 finaliser.
pub fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_stable_and_spread() {
        assert_eq!(hash_bytes(b"thread-1"), hash_bytes(b"thread-1"));
        assert_ne!(hash_bytes(b"thread-1"), hash_bytes(b"thread-2"));
        assert_ne!(combine(1, 2), combine(2, 1));
        // Rendezvous over 4 buckets spreads 4000 keys roughly evenly.
        let mut counts = [0u32; 4];
        for k in 0..4000u32 {
            let key = hash_bytes(&k.to_le_bytes());
            let best = (0..4u64).max_by_key(|&b| combine(key, b)).unwrap_or(0);
            counts[best as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (850..=1150).contains(&c)),
            "{counts:?}"
        );
    }
}
