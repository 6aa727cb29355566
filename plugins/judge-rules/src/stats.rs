//! The statistics the summaries report: Wilson intervals for rates and order statistics for lengths.

use serde::Serialize;

/// The two-sided 95% normal quantile, Φ⁻¹(0.975), to full `f64` precision (what statsmodels and R use).
pub const Z_95: f64 = 1.959963984540054;

/// The Wilson score interval for `successes` out of `n` at normal quantile `z`, as `(lo, hi)`.
///
/// Chosen over the Wald interval because refusal rates sit near 0 or 1, where Wald collapses to a point
/// (reference/plugins-judges.md §B.6). Returns `None` when `n` is 0 or `successes > n`: there is no rate to bound.
/// The ends are clamped to `[0, 1]`, and are exactly 0 (or 1) when `successes` is 0 (or `n`), where the closed
/// form is 0 (or 1) but rounding may leave a residue of 1e-17.
pub fn wilson_interval(successes: u64, n: u64, z: f64) -> Option<(f64, f64)> {
    if n == 0 || successes > n {
        return None;
    }
    let nf = n as f64;
    let p = successes as f64 / nf;
    let z2 = z * z;
    let denom = 1.0 + z2 / nf;
    let centre = (p + z2 / (2.0 * nf)) / denom;
    let half = z / denom * (p * (1.0 - p) / nf + z2 / (4.0 * nf * nf)).sqrt();
    let lo = if successes == 0 { 0.0 } else { (centre - half).max(0.0) };
    let hi = if successes == n { 1.0 } else { (centre + half).min(1.0) };
    Some((lo, hi))
}

/// The 95% Wilson interval ([`Z_95`]) for `successes` out of `n`; `None` when `n` is 0 or `successes > n`.
pub fn wilson_95(successes: u64, n: u64) -> Option<(f64, f64)> {
    wilson_interval(successes, n, Z_95)
}

/// Order statistics of a list of counts (characters or words per response).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Describe {
    // Fields in alphabetical order, so the JSON keys are sorted whether or not serde_json preserves order.
    /// The largest count.
    pub max: u64,
    /// The arithmetic mean.
    pub mean: f64,
    /// The median: the mean of the two middle counts when there is an even number of them.
    pub median: f64,
    /// The smallest count.
    pub min: u64,
    /// The 90th percentile, interpolated linearly between order statistics (numpy's default, `linear`).
    pub p90: f64,
}

/// Describes `counts`; `None` for an empty list, which has no mean or median.
pub fn describe(counts: &[u64]) -> Option<Describe> {
    let mut sorted = counts.to_vec();
    sorted.sort_unstable();
    let (&min, &max) = (sorted.first()?, sorted.last()?);
    // Summing as u128 cannot overflow for any list that fits in memory; the mean is then rounded once.
    let sum: u128 = sorted.iter().map(|&c| c as u128).sum();
    Some(Describe {
        max,
        mean: sum as f64 / sorted.len() as f64,
        median: quantile(&sorted, 0.5),
        min,
        p90: quantile(&sorted, 0.9),
    })
}

/// The `q` quantile of non-empty sorted `values`, linear between the order statistics at `(len - 1) * q`.
fn quantile(sorted: &[u64], q: f64) -> f64 {
    let h = (sorted.len() - 1) as f64 * q;
    let below = h.floor() as usize;
    let above = (below + 1).min(sorted.len() - 1);
    let (a, b) = (sorted[below] as f64, sorted[above] as f64);
    a + (h - below as f64) * (b - a)
}
