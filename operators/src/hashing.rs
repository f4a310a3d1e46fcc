//! Stable 128-bit identities for distinct counting.
//!
//! Distinct counts keep 128-bit hashes of the ids rather than the strings (as ClickHouse's
//! `uniqExact` does for strings): the chance of any collision among 10^9 ids is about 10^-21.

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};

/// 128-bit stable hash of a string id: the event contract's (`tally_core::event::hash128`),
/// so stored stable ids and the operators' identities can never disagree.
pub use tally_core::event::hash128;

/// 64-bit stable hash of a string id.
pub fn hash64(s: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(s.as_bytes())
}

/// A hasher for keys that are already uniformly distributed hashes.
#[derive(Default, Clone, Copy)]
pub struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut buf = [0u8; 8];
            buf[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(buf);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 ^= v;
    }
    fn write_u128(&mut self, v: u128) {
        self.0 ^= v as u64;
    }
}

/// A set of pre-hashed ids.
pub type IdSet<T> = HashSet<T, BuildHasherDefault<PreHashed>>;
