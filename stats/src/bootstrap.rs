//! Seeded bootstraps and their percentile intervals.
//!
//! The unit of resampling is the prompt (reference/plugins-judges.md §B.6): a replicate draws as many clusters as
//! there are, with replacement, and keeps everything belonging to a drawn cluster together (both orders of a
//! pairwise comparison, several samples of one prompt). The draws are exactly these, so a Python check with the
//! same generator reproduces every replicate:
//!
//! ```text
//! rng = SplitMix64(seed)
//! for each replicate r in 0..B:                 # one stream for all replicates, in order
//!     indices = []
//!     repeat k times (k = number of clusters):  # k draws, in order
//!         indices += clusters[rng.below(k)]     # the cluster's item indices, in their stored order
//!     value[r] = statistic(indices)
//! ```
//!
//! The interval is the percentile interval with numpy's default (`linear`) quantile, computed over the replicates
//! whose statistic is finite: a replicate can be undefined (the LC fit of a resample whose preferences the length
//! separates), and those are left out and counted rather than failing the whole interval.

use serde::Serialize;

use crate::describe::quantile;
use crate::rng::SplitMix64;

/// The number of bootstrap replicates when a caller has no reason to pick another (§B.6 asks for at least 2000).
pub const DEFAULT_REPLICATES: u64 = 2000;

/// The most replicate slots reserved up front: an absurd `replicates` param then fails by running out of time
/// (or memory, gradually), not with a capacity-overflow panic before the first replicate.
const MAX_RESERVE: u64 = 1 << 16;

/// A 95% percentile bootstrap interval and what it was computed from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BootstrapCi {
    // Fields in alphabetical order, so the JSON keys are sorted whether or not serde_json preserves order.
    /// The 97.5th percentile of the finite replicate values.
    pub hi: f64,
    /// The 2.5th percentile of the finite replicate values.
    pub lo: f64,
    /// Replicates drawn.
    pub replicates: u64,
    /// Replicates whose statistic was not finite (undefined on that resample), left out of the percentiles.
    pub undefined: u64,
}

/// Groups item indices by `keys[i]` (the prompt id of item `i`) into clusters, in order of each key's first
/// appearance, each cluster's indices ascending: the input order fixes the clusters, so the bootstrap's draws
/// depend only on the data and the seed.
pub fn clusters_by_key<K: Ord>(keys: &[K]) -> Vec<Vec<usize>> {
    let mut slot = std::collections::BTreeMap::new();
    let mut clusters: Vec<Vec<usize>> = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let at = *slot.entry(k).or_insert_with(|| {
            clusters.push(Vec::new());
            clusters.len() - 1
        });
        clusters[at].push(i);
    }
    clusters
}

/// The 95% percentile interval of `statistic` over [`cluster_bootstrap_replicates`]; `None` when there are no
/// clusters or replicates, or no replicate is finite. `replicates` is normally [`DEFAULT_REPLICATES`].
pub fn cluster_bootstrap(
    clusters: &[Vec<usize>],
    replicates: u64,
    seed: u64,
    statistic: impl FnMut(&[usize]) -> f64,
) -> Option<BootstrapCi> {
    let values = cluster_bootstrap_replicates(clusters, replicates, seed, statistic, || false)?;
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    let (lo, hi) = percentile_interval(&finite, 0.95)?;
    Some(BootstrapCi { hi, lo, replicates, undefined: (values.len() - finite.len()) as u64 })
}

/// The values of `statistic` on `replicates` cluster resamples (module doc) from [`SplitMix64`] seeded with
/// `seed`, in replicate order; a value may be NaN where the statistic is undefined on that resample.
///
/// `statistic` gets the item indices of the drawn clusters, repeated as drawn; to compare two models (§B.6 2)
/// compute both from the same indices in one statistic and return the difference. `stop` is asked every 64
/// replicates, so a cancelled stage does not wait for the rest. `None` when there are no clusters or no
/// replicates, or when `stop` says stop.
pub fn cluster_bootstrap_replicates(
    clusters: &[Vec<usize>],
    replicates: u64,
    seed: u64,
    mut statistic: impl FnMut(&[usize]) -> f64,
    mut stop: impl FnMut() -> bool,
) -> Option<Vec<f64>> {
    if clusters.is_empty() || replicates == 0 {
        return None;
    }
    let k = clusters.len() as u64;
    let mut rng = SplitMix64::new(seed);
    let mut values = Vec::with_capacity(replicates.min(MAX_RESERVE) as usize);
    let mut indices = Vec::with_capacity(clusters.iter().map(Vec::len).sum());
    for r in 0..replicates {
        if r % 64 == 0 && stop() {
            return None;
        }
        indices.clear();
        for _ in 0..k {
            indices.extend_from_slice(&clusters[rng.below(k) as usize]);
        }
        values.push(statistic(&indices));
    }
    Some(values)
}

/// The means of `replicates` bootstrap resamples of `values` (each `values.len()` draws with replacement) from
/// [`SplitMix64`] seeded with `seed`, in replicate order. `stop` is asked every 64 replicates; `None` when it says
/// stop, or when there are no values or no replicates.
///
/// The draws are item indices, so a caller whose `values` are per-item scores of a paired comparison (both
/// models' verdicts folded into one score per item) gets the paired bootstrap of reference §B.6: an item's two
/// verdicts always travel together. With one item per cluster, [`cluster_bootstrap_replicates`] of the mean
/// draws the same indices and gives the same values.
pub fn bootstrap_means(values: &[f64], replicates: u64, seed: u64, mut stop: impl FnMut() -> bool) -> Option<Vec<f64>> {
    if values.is_empty() || replicates == 0 {
        return None;
    }
    let n = values.len() as u64;
    let mut rng = SplitMix64::new(seed);
    let mut means = Vec::with_capacity(replicates.min(MAX_RESERVE) as usize);
    for r in 0..replicates {
        if r % 64 == 0 && stop() {
            return None;
        }
        let sum: f64 = (0..n).map(|_| values[rng.below(n) as usize]).sum();
        means.push(sum / n as f64);
    }
    Some(means)
}

/// The percentile interval `[q(α/2), q(1 − α/2)]` of `replicates` for `level = 1 − α`, each quantile linear between
/// order statistics (numpy's default, so `numpy.percentile(replicates, [2.5, 97.5])` agrees at level 0.95);
/// `None` for no replicates.
pub fn percentile_interval(replicates: &[f64], level: f64) -> Option<(f64, f64)> {
    if replicates.is_empty() {
        return None;
    }
    let mut sorted = replicates.to_vec();
    sorted.sort_by(f64::total_cmp);
    let alpha = 1.0 - level;
    Some((quantile(&sorted, alpha / 2.0), quantile(&sorted, 1.0 - alpha / 2.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mean(values: &[f64], idx: &[usize]) -> f64 {
        idx.iter().map(|&i| values[i]).sum::<f64>() / idx.len() as f64
    }

    #[test]
    fn nothing_to_resample() {
        assert_eq!(cluster_bootstrap(&[], 100, 1, |_| 0.0), None);
        assert_eq!(cluster_bootstrap(&[vec![0]], 0, 1, |_| 0.0), None);
        assert_eq!(bootstrap_means(&[], 10, 1, || false), None);
        assert_eq!(bootstrap_means(&[1.0], 0, 1, || false), None);
        assert_eq!(percentile_interval(&[], 0.95), None);
    }

    #[test]
    fn an_always_undefined_statistic_has_no_interval() {
        assert_eq!(cluster_bootstrap(&[vec![0], vec![1]], 50, 3, |_| f64::NAN), None);
    }

    #[test]
    fn undefined_replicates_are_counted_and_left_out() {
        // Undefined whenever the resample misses cluster 0.
        let ci = cluster_bootstrap(&[vec![0], vec![1], vec![2]], 300, 9, |idx| {
            if idx.contains(&0) { idx.len() as f64 } else { f64::NAN }
        })
        .unwrap();
        assert!(ci.undefined > 0 && ci.undefined < 300);
        assert_eq!((ci.lo, ci.hi, ci.replicates), (3.0, 3.0, 300));
    }

    #[test]
    fn singleton_clusters_draw_what_the_item_bootstrap_draws() {
        let values = [0.0, 1.0, 0.5, 0.25, 1.0, 0.0, 0.75];
        let clusters: Vec<Vec<usize>> = (0..values.len()).map(|i| vec![i]).collect();
        let by_cluster = cluster_bootstrap_replicates(&clusters, 500, 77, |idx| mean(&values, idx), || false).unwrap();
        let by_item = bootstrap_means(&values, 500, 77, || false).unwrap();
        assert_eq!(by_cluster, by_item);
    }

    #[test]
    fn clusters_travel_together() {
        // Two orders per prompt with opposite scores: every resample keeps each pair, so every mean is ½.
        let values = [1.0, 0.0, 0.0, 1.0, 0.25, 0.75];
        let clusters = clusters_by_key(&["p", "p", "q", "q", "r", "r"]);
        let ci = cluster_bootstrap(&clusters, 2000, 5, |idx| mean(&values, idx)).unwrap();
        assert_eq!((ci.lo, ci.hi, ci.undefined), (0.5, 0.5, 0));
    }

    #[test]
    fn clusters_follow_first_appearance() {
        assert_eq!(clusters_by_key(&[3, 1, 3, 2, 1]), vec![vec![0, 2], vec![1, 4], vec![3]]);
        assert!(clusters_by_key::<u8>(&[]).is_empty());
    }

    #[test]
    fn stop_is_honoured() {
        assert_eq!(cluster_bootstrap_replicates(&[vec![0]], 10, 1, |_| 0.0, || true), None);
        assert_eq!(bootstrap_means(&[1.0], 10, 1, || true), None);
    }

    #[test]
    fn percentiles_interpolate_like_numpy() {
        // numpy.percentile(range(11), [2.5, 97.5]) == [0.25, 9.75].
        let v: Vec<f64> = (0..=10).rev().map(f64::from).collect();
        let (lo, hi) = percentile_interval(&v, 0.95).unwrap();
        assert!((lo - 0.25).abs() < 1e-12 && (hi - 9.75).abs() < 1e-12);
        assert_eq!(percentile_interval(&[2.0], 0.95), Some((2.0, 2.0)));
    }
}
