//! Seeded choices (subsample, holdout, shuffle) and dedup.
//!
//! Outputs must be identical on every platform and with every future `rand`, since the cache's early cut-off
//! compares bytes. So the generator is ChaCha20 by name (`rand_chacha` promises a fixed stream for a seed), and
//! the bounded draws and the shuffle are written here instead of taken from `rand`, whose algorithms have
//! changed between releases. Each use draws from its own ChaCha stream, so adding a source leaves the draws of
//! the others, and of the final shuffle, unchanged.

use std::collections::HashSet;

use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

/// Which independent random stream a choice draws from.
#[derive(Debug, Clone, Copy)]
pub(super) enum Stream {
    /// The order of the training examples.
    Shuffle,
    /// Which examples are held out.
    Holdout,
    /// The `take` subsample of source `i`.
    Take(usize),
}

/// A generator for `stream` under `seed`.
pub(super) fn rng(seed: u64, stream: Stream) -> ChaCha20Rng {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    rng.set_stream(match stream {
        Stream::Shuffle => 0,
        Stream::Holdout => 1,
        Stream::Take(i) => 2 + i as u64,
    });
    rng
}

/// A uniform integer in `0..n` (`n > 0`), by rejection so that no value is favoured.
fn below(rng: &mut ChaCha20Rng, n: usize) -> usize {
    let n = n as u64;
    // The largest multiple of n that fits: draws at or above it would make small values more likely.
    let limit = u64::MAX - u64::MAX % n;
    loop {
        let x = rng.next_u64();
        if x < limit {
            return (x % n) as usize;
        }
    }
}

/// Fisher–Yates.
pub(super) fn shuffle<T>(items: &mut [T], rng: &mut ChaCha20Rng) {
    for i in (1..items.len()).rev() {
        let j = below(rng, i + 1);
        items.swap(i, j);
    }
}

/// `k` distinct indices out of `0..n`, in increasing order (so a subsample keeps the file's order).
pub(super) fn sample(n: usize, k: usize, rng: &mut ChaCha20Rng) -> Vec<usize> {
    let k = k.min(n);
    let mut indices: Vec<usize> = (0..n).collect();
    for i in 0..k {
        let j = i + below(rng, n - i);
        indices.swap(i, j);
    }
    indices.truncate(k);
    indices.sort_unstable();
    indices
}

/// Keeps the first of the items whose key repeats; returns the kept items and the dropped ones.
pub(super) fn dedup<T>(items: Vec<T>, key: impl Fn(&T) -> (&str, &str)) -> (Vec<T>, Vec<T>) {
    let mut seen: HashSet<(String, String)> = HashSet::with_capacity(items.len());
    let mut kept = Vec::with_capacity(items.len());
    let mut dropped = Vec::new();
    for item in items {
        let (a, b) = key(&item);
        if seen.insert((a.to_owned(), b.to_owned())) {
            kept.push(item);
        } else {
            dropped.push(item);
        }
    }
    (kept, dropped)
}
