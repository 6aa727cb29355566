//! The Wilson interval against an independently written form of it and against Python's closed form.

use judge_rules::{Z_95, wilson_95, wilson_interval};

/// The same interval in the other textbook form, `(k + z²/2) / (n + z²) ± z·√n / (n + z²) · √(p̂q̂ + z²/4n)`,
/// so an algebra slip in either is caught.
fn reference(k: u64, n: u64) -> (f64, f64) {
    let (k, n, z) = (k as f64, n as f64, Z_95);
    let p = k / n;
    let centre = (k + z * z / 2.0) / (n + z * z);
    let half = z * n.sqrt() / (n + z * z) * (p * (1.0 - p) + z * z / (4.0 * n)).sqrt();
    (centre - half, centre + half)
}

#[test]
fn wilson_matches_the_other_form_to_1e9() {
    for (k, n) in [(0, 10), (5, 10), (10, 10), (81, 263), (1, 1), (3, 7), (0, 1), (999, 1000), (1, 100_000)] {
        let (lo, hi) = wilson_95(k, n).unwrap();
        let (rlo, rhi) = reference(k, n);
        assert!((lo - rlo).abs() < 1e-9 && (hi - rhi).abs() < 1e-9, "{k}/{n}: ({lo}, {hi}) vs ({rlo}, {rhi})");
        assert!((0.0..=1.0).contains(&lo) && lo <= hi && hi <= 1.0, "{k}/{n}");
    }
}

#[test]
fn wilson_matches_python_and_hand_values() {
    // python3 -c 'from math import sqrt; z=1.959963984540054; k,n=81,263; p=k/n; d=1+z*z/n;
    //   c=(p+z*z/(2*n))/d; h=z/d*sqrt(p*(1-p)/n+z*z/(4*n*n)); print(c-h, c+h)'
    // (statsmodels is not installed here; its `proportion_confint(81, 263, method="wilson")` is this formula.)
    let cases = [
        (81, 263, 0.2552885198782742, 0.36620957698280004),
        (5, 10, 0.236593090512564, 0.7634069094874361),
        (3, 7, 0.15821985525146975, 0.7495416354723428),
        // 0/n: the upper end is z²/(n + z²) by hand: 3.841458820694124 / 13.841458820694124.
        (0, 10, 0.0, 0.2775327998628892),
        (10, 10, 0.7224672001371107, 1.0),
    ];
    for (k, n, lo, hi) in cases {
        let got = wilson_95(k, n).unwrap();
        assert!((got.0 - lo).abs() < 1e-9 && (got.1 - hi).abs() < 1e-9, "{k}/{n}: {got:?} vs ({lo}, {hi})");
    }
    let z2 = Z_95 * Z_95;
    assert!((wilson_95(0, 10).unwrap().1 - z2 / (10.0 + z2)).abs() < 1e-15);
}

#[test]
fn wilson_edges_are_exact_and_undefined_rates_are_none() {
    assert_eq!(wilson_95(0, 10).unwrap().0, 0.0);
    assert_eq!(wilson_95(10, 10).unwrap().1, 1.0);
    assert_eq!(wilson_95(0, 0), None);
    assert_eq!(wilson_95(3, 2), None);
    // A wider z gives a wider interval around the same centre.
    let (a, b) = wilson_interval(5, 10, 1.0).unwrap();
    let (c, d) = wilson_95(5, 10).unwrap();
    assert!(c < a && b < d && ((a + b) / 2.0 - 0.5).abs() < 1e-12);
}
