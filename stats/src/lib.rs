//! `stats`: the statistics rto's judges and reports compute, in plain Rust with no numeric dependency, so every
//! number is reproducible bit for bit from a seed and checked against an independent Python computation
//! (`tests/reference.py`: numpy, scipy, statsmodels).
//!
//! - [`win_rate`]: AlpacaEval's `describe_head2head` (win rate, its standard error, wins, losses, draws, discrete
//!   win rate) on a 0..1 preference scale.
//! - [`lc_win_rate`]: AlpacaEval's length-controlled win rate, the `length_controlled_minimal` GLM fitted by
//!   unregularised maximum likelihood (the deviations from AlpacaEval are listed in [`lc`]).
//! - [`cluster_bootstrap`]: the paired bootstrap by prompt of reference/plugins-judges.md §B.6, seeded with
//!   [`SplitMix64`], generic over the statistic (the LC win rate is refitted in every replicate), with
//!   [`percentile_interval`] (numpy's default percentile).
//! - [`wilson_interval`] for rates (refusals, accuracies), [`standard_error`] (ddof = 1), [`describe`] for
//!   lengths, and [`bootstrap_means`], the item bootstrap judge-rules reports.
//!
//! Undefined results are `None`, never a panic or a NaN in a summary: empty input, a single item where a spread
//! is needed, NaN preferences, lengths that cannot be standardised, preferences the length model separates.
#![deny(missing_docs)]

mod bootstrap;
mod describe;
mod interval;
pub mod lc;
mod rng;
mod winrate;

pub use bootstrap::{
    BootstrapCi, DEFAULT_REPLICATES, bootstrap_means, cluster_bootstrap, cluster_bootstrap_replicates, clusters_by_key,
    percentile_interval,
};
pub use describe::{Describe, describe, standard_error};
pub use interval::{Z_95, wilson_95, wilson_interval};
pub use lc::{LcWinRate, lc_win_rate};
pub use rng::SplitMix64;
pub use winrate::{WinRate, win_rate};
