//! Seeded draws for the generator.
//!
//! Outputs must be byte-identical on every platform and with every future `rand`, since the cache's early
//! cut-off compares bytes. So the generator is ChaCha20 by name (`rand_chacha` promises a fixed stream for a
//! seed), and the bounded draws and the shuffle are written here instead of taken from `rand`, whose
//! algorithms have changed between releases. Each part of the output draws from its own ChaCha stream, so that
//! changing one count (say `train`) leaves the other parts (the held-out sets, the corpus) as they were.

use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

/// Which independent random stream a part of the output draws from.
#[derive(Debug, Clone, Copy)]
pub(super) enum Stream {
    /// The held-out tasks of the family at this index of [`super::families::ALL`].
    Eval(usize),
    /// The training tasks of the family at this index.
    Train(usize),
    /// Which unsafe requests are kept for evaluation only.
    UnsafeSplit,
    /// The held-out unsafe prompts.
    UnsafeEval,
    /// The unsafe prompts with refusals for training.
    UnsafeTrain,
    /// The pre-training corpus.
    Corpus,
    /// The order of `instructions.jsonl`.
    Shuffle,
}

/// A generator for `stream` under `seed`.
pub(super) fn rng(seed: u64, stream: Stream) -> ChaCha20Rng {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    rng.set_stream(match stream {
        Stream::UnsafeSplit => 1,
        Stream::UnsafeEval => 2,
        Stream::UnsafeTrain => 3,
        Stream::Corpus => 4,
        Stream::Shuffle => 5,
        Stream::Eval(i) => 0x100 + i as u64,
        Stream::Train(i) => 0x200 + i as u64,
    });
    rng
}

/// A uniform integer in `0..n` (`n > 0`), by rejection so that no value is favoured.
pub(super) fn below(rng: &mut ChaCha20Rng, n: usize) -> usize {
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

/// A uniform integer in `lo..=hi` (`lo <= hi`).
pub(super) fn between(rng: &mut ChaCha20Rng, lo: u32, hi: u32) -> u32 {
    lo + below(rng, (hi - lo) as usize + 1) as u32
}

/// A uniformly chosen element of a non-empty slice.
pub(super) fn pick<'a, T>(rng: &mut ChaCha20Rng, items: &'a [T]) -> &'a T {
    &items[below(rng, items.len())]
}

/// Fisher–Yates.
pub(super) fn shuffle<T>(items: &mut [T], rng: &mut ChaCha20Rng) {
    for i in (1..items.len()).rev() {
        let j = below(rng, i + 1);
        items.swap(i, j);
    }
}
