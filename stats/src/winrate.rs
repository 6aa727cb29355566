//! AlpacaEval's head-to-head summary (`metrics/helpers.py::describe_head2head`, with `get_winrate`'s
//! `discrete_win_rate`), on rto's 0..1 preference scale.
//!
//! AlpacaEval's preferences live in [1, 2] (2 = the evaluated model wins) and it reports `mean(pref − 1)`; ours
//! are already `pref − 1`: the probability that `a` (the evaluated model) beats `b` (the baseline), 0.5 a draw.
//! What follows from the shift, and where this differs:
//!
//! - Values that are not a number in [0, 1] (NaN, ±∞, −0.2, 1.3) are dropped and counted in `n_dropped`, as
//!   AlpacaEval's `validate_alpacaeval_preference(is_allow_nan=False)` drops them.
//! - AlpacaEval's legacy encoding of a draw as 0 does not carry over: on our scale 0 means `b` wins.
//! - `discrete_win_rate` (AlpacaEval's `ZeroOneScoringRule`): each kept preference is rounded to 0 or 1, an exact
//!   0.5 stays a draw worth ½. AlpacaEval rounds before validating, so it would keep e.g. 2.4 as a win; we drop it.
//! - Rates are fractions, not percent.

use serde::Serialize;

use crate::describe::standard_error;

/// The head-to-head summary of preferences of `a` over `b`; rates as fractions in [0, 1].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WinRate {
    // Fields in alphabetical order, so the JSON keys are sorted whether or not serde_json preserves order.
    /// The win rate with every preference rounded to a win (1) or loss (0), exact draws counting ½:
    /// `(n_wins + n_draws / 2) / n_total`.
    pub discrete_win_rate: f64,
    /// Preferences exactly 0.5.
    pub n_draws: usize,
    /// Preferences dropped for not being a number in [0, 1].
    pub n_dropped: usize,
    /// Preferences below 0.5 (`b` preferred; AlpacaEval's `n_wins_base`).
    pub n_losses: usize,
    /// Preferences kept: `n_wins + n_losses + n_draws`.
    pub n_total: usize,
    /// Preferences above 0.5 (`a` preferred).
    pub n_wins: usize,
    /// The standard error of `win_rate`, `sd / √n` with the `n − 1` sample deviation (pandas' `sem`); `None` for a
    /// single preference.
    pub standard_error: Option<f64>,
    /// The mean preference: the (soft) win rate of `a`.
    pub win_rate: f64,
}

/// Summarises `prefs` (each the probability that `a` beats `b`) as AlpacaEval's `describe_head2head` does; `None`
/// when no preference is a number in [0, 1].
pub fn win_rate(prefs: &[f64]) -> Option<WinRate> {
    let kept: Vec<f64> = prefs.iter().copied().filter(|p| (0.0..=1.0).contains(p)).collect();
    if kept.is_empty() {
        return None;
    }
    let n_total = kept.len();
    let n_wins = kept.iter().filter(|&&p| p > 0.5).count();
    let n_losses = kept.iter().filter(|&&p| p < 0.5).count();
    let n_draws = n_total - n_wins - n_losses;
    Some(WinRate {
        discrete_win_rate: (n_wins as f64 + n_draws as f64 / 2.0) / n_total as f64,
        n_draws,
        n_dropped: prefs.len() - n_total,
        n_losses,
        n_total,
        n_wins,
        standard_error: standard_error(&kept),
        win_rate: kept.iter().sum::<f64>() / n_total as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_to_rate() {
        assert_eq!(win_rate(&[]), None);
        assert_eq!(win_rate(&[f64::NAN, 1.5, -0.1, f64::INFINITY]), None);
    }

    #[test]
    fn counts_drops_and_discrete_rate() {
        // AlpacaEval's [2, 1, 1.5, 1.75, NaN, 3] shifted by −1.
        let w = win_rate(&[1.0, 0.0, 0.5, 0.75, f64::NAN, 2.0]).unwrap();
        assert_eq!((w.n_wins, w.n_losses, w.n_draws, w.n_total, w.n_dropped), (2, 1, 1, 4, 2));
        assert!((w.win_rate - 2.25 / 4.0).abs() < 1e-15);
        assert!((w.discrete_win_rate - 2.5 / 4.0).abs() < 1e-15);
        assert!(w.standard_error.unwrap() > 0.0);
    }

    #[test]
    fn one_preference_has_no_standard_error() {
        let w = win_rate(&[0.3]).unwrap();
        assert_eq!((w.win_rate, w.discrete_win_rate, w.standard_error), (0.3, 0.0, None));
    }
}
