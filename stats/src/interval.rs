//! Wilson score intervals for binomial rates (refusal rates, accuracies).

/// The two-sided 95% normal quantile, Φ⁻¹(0.975), to full `f64` precision (what statsmodels and R use).
pub const Z_95: f64 = 1.959963984540054;

/// The Wilson score interval for `successes` out of `n` at normal quantile `z`, as `(lo, hi)`.
///
/// Chosen over the Wald interval because refusal rates sit near 0 or 1, where Wald collapses to a point
/// (reference/plugins-judges.md §B.6). Returns `None` when `n` is 0 or `successes > n`: there is no rate to bound.
/// The ends are clamped to `[0, 1]`, and are exactly 0 (or 1) when `successes` is 0 (or `n`), where the closed
/// form is 0 (or 1) but rounding may leave a residue of 1e-17. Otherwise equal to statsmodels'
/// `proportion_confint(successes, n, method="wilson")` (checked in `tests/independent`).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undefined_without_trials_or_with_more_successes_than_trials() {
        assert_eq!(wilson_95(0, 0), None);
        assert_eq!(wilson_95(3, 2), None);
    }

    #[test]
    fn ends_are_exact_at_zero_and_all() {
        let (lo, hi) = wilson_95(0, 10).unwrap();
        assert_eq!(lo, 0.0);
        assert!(hi > 0.0 && hi < 1.0);
        let (lo, hi) = wilson_95(10, 10).unwrap();
        assert_eq!(hi, 1.0);
        assert!(lo > 0.0 && lo < 1.0);
    }

    #[test]
    fn symmetric_around_one_half() {
        let (lo, hi) = wilson_95(3, 10).unwrap();
        let (lo2, hi2) = wilson_95(7, 10).unwrap();
        assert!((lo - (1.0 - hi2)).abs() < 1e-15 && (hi - (1.0 - lo2)).abs() < 1e-15);
    }
}
