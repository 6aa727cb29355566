//! Order statistics of counts, the standard error of a mean, and the linear quantile they share with the
//! bootstrap's percentile interval.

use serde::Serialize;

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
    let as_f64: Vec<f64> = sorted.iter().map(|&c| c as f64).collect();
    Some(Describe {
        max,
        mean: sum as f64 / sorted.len() as f64,
        median: quantile(&as_f64, 0.5),
        min,
        p90: quantile(&as_f64, 0.9),
    })
}

/// The standard error of the mean with the `n − 1` sample variance (pandas' `sem()`, which AlpacaEval reports as
/// `standard_error`; scipy's `stats.sem`); `None` for fewer than two values.
pub fn standard_error(values: &[f64]) -> Option<f64> {
    let n = values.len();
    if n < 2 {
        return None;
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    let ss: f64 = values.iter().map(|v| (v - mean) * (v - mean)).sum();
    Some((ss / (n - 1) as f64 / n as f64).sqrt())
}

/// The `q` quantile of non-empty sorted `values`, linear between the order statistics at `(len - 1) * q`: numpy's
/// default `percentile` method (`linear`, type 7 of Hyndman & Fan), so a Python check can match it.
pub(crate) fn quantile(sorted: &[f64], q: f64) -> f64 {
    let h = (sorted.len() - 1) as f64 * q;
    let below = h.floor() as usize;
    let above = (below + 1).min(sorted.len() - 1);
    let (a, b) = (sorted[below], sorted[above]);
    a + (h - below as f64) * (b - a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_has_no_description() {
        assert_eq!(describe(&[]), None);
    }

    #[test]
    fn median_and_p90_interpolate() {
        let d = describe(&[4, 1, 3, 2]).unwrap();
        assert_eq!((d.min, d.max, d.mean, d.median), (1, 4, 2.5, 2.5));
        // h = 3 × 0.9 = 2.7: 3 + 0.7 × (4 − 3).
        assert!((d.p90 - 3.7).abs() < 1e-12);
        let one = describe(&[7]).unwrap();
        assert_eq!((one.median, one.p90), (7.0, 7.0));
    }

    #[test]
    fn standard_error_needs_two_values() {
        assert_eq!(standard_error(&[]), None);
        assert_eq!(standard_error(&[1.0]), None);
        assert_eq!(standard_error(&[0.5, 0.5]), Some(0.0));
        // sd(ddof=1) of [0, 1] is √½; over √2 gives ½.
        assert!((standard_error(&[0.0, 1.0]).unwrap() - 0.5).abs() < 1e-15);
    }
}
