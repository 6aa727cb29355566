//! The bootstraps' random numbers: a generator small enough to transcribe into a Python check.

/// SplitMix64 (Steele, Lea & Flood 2014; Vigna's reference `splitmix64.c`): a tiny, well-mixed 64-bit generator,
/// written out here so the bootstrap needs no dependency and gives the same stream on every platform and
/// version, and so `tests/reference.py` can draw the same indices in ten lines of Python. Not for cryptography.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator whose first output is the mix of `seed + 0x9E3779B97F4A7C15`, as in the reference code.
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`), by Lemire's multiply-shift: the high word of `next · n`. Its bias is below
    /// `n / 2⁶⁴`, far under anything a bootstrap could notice.
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_stream() {
        // Vigna's splitmix64.c from state 0.
        let mut g = SplitMix64::new(0);
        assert_eq!(
            [g.next_u64(), g.next_u64(), g.next_u64()],
            [0xE220_A839_7B1D_CDAF, 0x6E78_9E6A_A1B9_65F4, 0x06C4_5D18_8009_454F]
        );
    }

    #[test]
    fn below_stays_in_range_and_reaches_every_value() {
        let mut g = SplitMix64::new(42);
        let mut seen = [false; 6];
        for _ in 0..1000 {
            let k = g.below(6);
            assert!(k < 6);
            seen[k as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
        assert_eq!(g.below(1), 0);
    }
}
