//! Deterministic randomness: every random choice is drawn from a ChaCha8 stream whose key
//! is a splitmix64 hash chain of the integers that identify it, so a result never depends
//! on thread count or scheduling.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Domain tags keep streams for different purposes apart even when the other parts match.
pub(crate) mod domain {
    pub const SHUFFLE: u64 = 0x5348_5546;
    pub const VIEW: u64 = 0x5649_4557;
    pub const POSITIVE_VIEW: u64 = 0x504f_5356;
    pub const POSITIVE_CHOICE: u64 = 0x504f_5343;
    pub const BANK_VIEW: u64 = 0x4241_4e4b;
    pub const SUBSET: u64 = 0x5355_4253;
    pub const SCENE: u64 = 0x5343_454e;
    pub const CLASSES: u64 = 0x434c_4153;
}

/// splitmix64 finaliser: a cheap, well-mixed 64-bit permutation.
#[inline]
pub fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Hash a sequence of integers into one key (order matters).
pub fn key(parts: &[u64]) -> u64 {
    parts.iter().fold(0x243F_6A88_85A3_08D3, |h, &p| splitmix64(h ^ splitmix64(p)))
}

pub fn rng_from_key(key: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(key)
}

/// Key of the augmentation of one view of one sample.
pub fn view_key(seed: u64, epoch: usize, index: usize, view: usize) -> u64 {
    key(&[domain::VIEW, seed, epoch as u64, index as u64, view as u64])
}

/// Key of the `j`-th positive crop of source `index`.
pub fn positive_view_key(seed: u64, epoch: usize, index: usize, j: usize) -> u64 {
    key(&[domain::POSITIVE_VIEW, seed, epoch as u64, index as u64, j as u64])
}

/// Key handed to the caller's positive sampler for source `index`.
pub fn positive_choice_key(seed: u64, epoch: usize, index: usize) -> u64 {
    key(&[domain::POSITIVE_CHOICE, seed, epoch as u64, index as u64])
}

pub fn bank_view_key(seed: u64, epoch: usize, index: usize) -> u64 {
    key(&[domain::BANK_VIEW, seed, epoch as u64, index as u64])
}
