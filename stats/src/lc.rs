//! AlpacaEval's length-controlled (LC) win rate, the `length_controlled_minimal` GLM
//! (`metrics/glm_winrate.py`; Dubois et al. 2024, arXiv:2404.04475; reference/plugins-judges.md §B.1).
//!
//! The model, for item `i` with preference `pᵢ` = P(`a` beats `b`), `a` the evaluated model and `b` the baseline:
//!
//! ```text
//! logit q_i = θ + φ · tanh(std_delta_len_i),   std_delta_len_i = (len_b_i − len_a_i) / sd(len_b − len_a)
//! ```
//!
//! `θ` is the coefficient on AlpacaEval's `not_gamed_baseline` column (constant 1 here, so it is the intercept the
//! formula's `- 1` removes), `φ` the length effect. The difference is baseline minus model, AlpacaEval's order
//! (its `output_1` is the baseline), so `φ < 0` means the judge favours whichever output is longer. `sd` is the
//! sample deviation (`n − 1`, pandas' `std`). The fit uses soft labels: each item counts as a win with weight `pᵢ`
//! and a loss with weight `1 − pᵢ`, AlpacaEval's duplicated rows. The LC win rate is the mean prediction with the
//! length term set to 0, which for this model is `σ(θ)` on every item.
//!
//! Where this differs from AlpacaEval, and why:
//!
//! - **No regularisation, no cross-validation.** AlpacaEval fits `LogisticRegressionCV` (L1, liblinear, 5-fold
//!   `GroupKFold` over the penalty). We take the plain maximum-likelihood estimate by Newton's method with step
//!   halving, from `θ = φ = 0`, to a step below 1e-12: deterministic, free of a solver's tolerances, and checkable
//!   against statsmodels' GLM (`tests/reference.py`). The numbers are close to AlpacaEval's, not equal.
//! - **No instruction difficulty, no gamed baselines** (`length_controlled_minimal`): both are precomputed for
//!   AlpacaEval's 805 instructions and do not exist for our own prompt sets.
//! - **Dropped items.** Preferences that are not a number in [0, 1] (NaN: unparseable) are dropped before
//!   anything is computed, the length deviation included; AlpacaEval computes the deviation over every row and
//!   drops NaN preferences only from the fit. With unparseable items removed upstream the two agree.
//! - **Lengths that cannot be standardised** (fewer than two items, all differences equal, or all `tanh` values
//!   equal): AlpacaEval's features become NaN and its fit fails; we drop the length term, so `θ = logit(mean p)`
//!   and the LC win rate equals the raw win rate.
//! - **Separation.** If every preference is 1 (or 0) the likelihood has no maximum; we report the limit, LC = 1
//!   (or 0) with `θ = +∞` (or `−∞`) and `φ = 0`. If the preferences are all 0 or 1 and a length threshold splits
//!   them (in general: no loss at a larger `tanh` than some win, or the reverse), the maximum-likelihood
//!   estimate does not exist and the LC win rate is undefined: `None`. AlpacaEval's penalty would return a
//!   finite number that depends on the penalty. Soft preferences strictly between 0 and 1 never separate.
//! - **No `lc_standard_error`.** AlpacaEval's is the standard error of the per-item predictions, which for this
//!   model are all `σ(θ)`, so it is 0; use the prompt bootstrap ([`crate::cluster_bootstrap`]) for an interval.
//! - On our scale 0 is a loss; AlpacaEval's legacy "0 means draw" does not apply.

use serde::Serialize;

/// Newton steps allowed before the fit is declared not converged (it takes about 5 to 10 on real data).
const MAX_ITERATIONS: usize = 100;

/// The fitted LC model and its win rate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LcWinRate {
    // Fields in alphabetical order, so the JSON keys are sorted whether or not serde_json preserves order.
    /// Newton steps taken (0 when the fit has a closed form).
    pub iterations: usize,
    /// Whether the model has the length term (false when the lengths cannot be standardised; module doc).
    pub length_term: bool,
    /// Items fitted.
    pub n: usize,
    /// Items dropped for a preference that is not a number in [0, 1].
    pub n_dropped: usize,
    /// The coefficient of `tanh(std_delta_len)` (baseline minus model); 0 without the length term.
    pub phi: f64,
    /// The deviation `sd(len_b − len_a)` (`n − 1`) the differences were divided by; `None` for fewer than two
    /// items.
    pub std_delta_len: Option<f64>,
    /// The model coefficient (`θ_a − θ_b`): the log-odds that `a` beats `b` at equal lengths; ±∞ when every
    /// preference is 1 (or 0). serde_json writes a non-finite number as `null`.
    pub theta: f64,
    /// The length-controlled win rate of `a` over `b`, `σ(θ)`, a fraction in [0, 1].
    pub value: f64,
}

/// The LC win rate of `a` over `b` from per-item preferences `prefs` (P(`a` beats `b`)) and the two outputs'
/// lengths in characters. `None` when the slices differ in length, a length is not finite, no preference is a
/// number in [0, 1], the preferences are separated by length, or the fit does not converge (module doc).
pub fn lc_win_rate(prefs: &[f64], len_a: &[f64], len_b: &[f64]) -> Option<LcWinRate> {
    if prefs.len() != len_a.len() || prefs.len() != len_b.len() || len_a.iter().chain(len_b).any(|l| !l.is_finite()) {
        return None;
    }
    let kept: Vec<usize> = (0..prefs.len()).filter(|&i| (0.0..=1.0).contains(&prefs[i])).collect();
    let p: Vec<f64> = kept.iter().map(|&i| prefs[i]).collect();
    let delta: Vec<f64> = kept.iter().map(|&i| len_b[i] - len_a[i]).collect();
    let n = p.len();
    if n == 0 {
        return None;
    }
    let sd = sample_sd(&delta);
    let t = sd.filter(|s| *s > 0.0 && s.is_finite()).map(|s| delta.iter().map(|d| (d / s).tanh()).collect::<Vec<_>>());
    let t = t.filter(|t| t.iter().any(|&x| x != t[0]));
    let mut out = LcWinRate {
        iterations: 0,
        length_term: t.is_some(),
        n,
        n_dropped: prefs.len() - n,
        phi: 0.0,
        std_delta_len: sd,
        theta: 0.0,
        value: 0.0,
    };
    if p.iter().all(|&x| x == 0.0) {
        (out.theta, out.value) = (f64::NEG_INFINITY, 0.0);
        return Some(out);
    }
    if p.iter().all(|&x| x == 1.0) {
        (out.theta, out.value) = (f64::INFINITY, 1.0);
        return Some(out);
    }
    match t {
        None => {
            let mean = p.iter().sum::<f64>() / n as f64;
            (out.theta, out.value) = ((mean / (1.0 - mean)).ln(), mean);
        }
        Some(t) => {
            if separated(&p, &t) {
                return None;
            }
            let fit = newton(&p, &t)?;
            (out.theta, out.phi, out.iterations) = (fit.theta, fit.phi, fit.iterations);
            out.value = sigmoid(fit.theta);
        }
    }
    Some(out)
}

/// The sample standard deviation (`n − 1`); `None` for fewer than two values.
fn sample_sd(values: &[f64]) -> Option<f64> {
    let n = values.len();
    if n < 2 {
        return None;
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    Some((values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1) as f64).sqrt())
}

/// Whether the soft-labelled data is (quasi-completely) separated, so the likelihood has no maximum. The rows
/// with a win (`p > 0`) and those with a loss (`p < 1`) are separated by a line `θ + φ·t = 0` exactly when one
/// set lies wholly at or above the other in `t` (Albert & Anderson 1984, for a single covariate). Called with
/// both sets non-empty and `t` not constant, so at least one row is strictly separated.
fn separated(p: &[f64], t: &[f64]) -> bool {
    let (mut win_lo, mut win_hi, mut loss_lo, mut loss_hi) =
        (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
    for (&p, &t) in p.iter().zip(t) {
        if p > 0.0 {
            (win_lo, win_hi) = (win_lo.min(t), win_hi.max(t));
        }
        if p < 1.0 {
            (loss_lo, loss_hi) = (loss_lo.min(t), loss_hi.max(t));
        }
    }
    loss_hi <= win_lo || win_hi <= loss_lo
}

/// A converged fit.
struct Fit {
    theta: f64,
    phi: f64,
    iterations: usize,
}

/// Maximises the soft-label log-likelihood over `(θ, φ)` by Newton's method with step halving. The likelihood
/// is concave and, without separation, has a unique maximum, so the iteration converges (quadratically near the
/// end); `None` if it does not within [`MAX_ITERATIONS`] or the information matrix is singular.
fn newton(p: &[f64], t: &[f64]) -> Option<Fit> {
    let mut beta = [0.0_f64, 0.0];
    let mut ll = log_likelihood(p, t, beta);
    for iterations in 1..=MAX_ITERATIONS {
        // Score g = Σ (p − μ)·x and information H = Σ μ(1 − μ)·x·xᵀ, with x = (1, t).
        let (mut g, mut h) = ([0.0_f64; 2], [0.0_f64; 3]);
        for (&p, &t) in p.iter().zip(t) {
            let mu = sigmoid(beta[0] + beta[1] * t);
            let (r, w) = (p - mu, mu * (1.0 - mu));
            g[0] += r;
            g[1] += r * t;
            h[0] += w;
            h[1] += w * t;
            h[2] += w * t * t;
        }
        let det = h[0] * h[2] - h[1] * h[1];
        if !(det > 0.0 && det.is_finite()) {
            return None;
        }
        let step = [(h[2] * g[0] - h[1] * g[1]) / det, (h[0] * g[1] - h[1] * g[0]) / det];
        let size = step[0].abs().max(step[1].abs());
        if !size.is_finite() {
            return None;
        }
        let scale = 1.0 + beta[0].abs().max(beta[1].abs());
        if size <= 1e-12 * scale {
            let [theta, phi] = [beta[0] + step[0], beta[1] + step[1]];
            return Some(Fit { theta, phi, iterations });
        }
        // The predicted gain of the full step (half the Newton decrement); below rounding there is nothing left
        // to gain, and a step that fails to raise the likelihood there means β is as good as f64 allows.
        let gain = 0.5 * (g[0] * step[0] + g[1] * step[1]);
        let mut s = 1.0;
        loop {
            let candidate = [beta[0] + s * step[0], beta[1] + s * step[1]];
            let ll_c = log_likelihood(p, t, candidate);
            if ll_c >= ll {
                (beta, ll) = (candidate, ll_c);
                break;
            }
            if s == 1.0 && gain <= 1e-15 * (1.0 + ll.abs()) {
                return Some(Fit { theta: beta[0], phi: beta[1], iterations });
            }
            s /= 2.0;
            if s < 1e-10 {
                return None;
            }
        }
    }
    None
}

/// `Σ p·log σ(η) + (1 − p)·log σ(−η)` with `η = θ + φ·t`, computed without overflow or `log(0)`.
fn log_likelihood(p: &[f64], t: &[f64], beta: [f64; 2]) -> f64 {
    p.iter()
        .zip(t)
        .map(|(&p, &t)| {
            let eta = beta[0] + beta[1] * t;
            -((-eta.abs()).exp().ln_1p() + p * (-eta).max(0.0) + (1.0 - p) * eta.max(0.0))
        })
        .sum()
}

/// The logistic function, without overflow for large `|x|`.
fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_or_empty_input_is_none() {
        assert_eq!(lc_win_rate(&[], &[], &[]), None);
        assert_eq!(lc_win_rate(&[0.5], &[1.0, 2.0], &[1.0]), None);
        assert_eq!(lc_win_rate(&[0.5, 0.7], &[1.0, f64::NAN], &[1.0, 2.0]), None);
        assert_eq!(lc_win_rate(&[f64::NAN, 1.5], &[1.0, 2.0], &[3.0, 4.0]), None);
    }

    #[test]
    fn equal_lengths_drop_the_length_term() {
        let lc = lc_win_rate(&[0.2, 0.9, 0.7], &[10.0; 3], &[10.0; 3]).unwrap();
        assert!(!lc.length_term);
        assert_eq!((lc.std_delta_len, lc.phi, lc.iterations), (Some(0.0), 0.0, 0));
        assert!((lc.value - 0.6).abs() < 1e-15);
        assert!((sigmoid(lc.theta) - 0.6).abs() < 1e-15);
        // Equal differences, not only equal lengths, leave nothing to standardise.
        let lc = lc_win_rate(&[0.2, 0.9], &[10.0, 20.0], &[15.0, 25.0]).unwrap();
        assert!(!lc.length_term);
    }

    #[test]
    fn a_single_item_is_its_own_rate() {
        let lc = lc_win_rate(&[0.25], &[100.0], &[10.0]).unwrap();
        assert_eq!((lc.value, lc.std_delta_len, lc.length_term), (0.25, None, false));
    }

    #[test]
    fn unanimous_preferences_give_the_limit() {
        let lens = [10.0, 20.0, 35.0];
        let one = lc_win_rate(&[1.0; 3], &lens, &[20.0; 3]).unwrap();
        assert_eq!((one.value, one.theta, one.phi), (1.0, f64::INFINITY, 0.0));
        let zero = lc_win_rate(&[0.0; 3], &lens, &[20.0; 3]).unwrap();
        assert_eq!((zero.value, zero.theta), (0.0, f64::NEG_INFINITY));
        // A summary can carry it: the infinite θ becomes null.
        assert_eq!(serde_json::to_value(&zero).unwrap()["theta"], serde_json::Value::Null);
    }

    #[test]
    fn separation_by_length_is_undefined() {
        // `a` wins exactly when it is the longer output.
        let len_a = [50.0, 60.0, 10.0, 20.0];
        let len_b = [30.0; 4];
        assert_eq!(lc_win_rate(&[1.0, 1.0, 0.0, 0.0], &len_a, &len_b), None);
        // A soft preference at the boundary does not rescue it (quasi-complete separation)...
        assert_eq!(lc_win_rate(&[1.0, 1.0, 0.0, 0.5], &[50.0, 60.0, 10.0, 10.0], &len_b), None);
        // ...but one overlap does: a loss among the longer outputs.
        let lc = lc_win_rate(&[1.0, 0.0, 0.0, 1.0, 1.0], &[50.0, 60.0, 10.0, 20.0, 70.0], &[30.0; 5]).unwrap();
        assert!(lc.value > 0.0 && lc.value < 1.0 && lc.theta.is_finite() && lc.phi.is_finite());
    }

    #[test]
    fn dropped_preferences_are_counted() {
        let lc = lc_win_rate(&[0.9, f64::NAN, 0.4, 0.6], &[1.0, 2.0, 3.0, 7.0], &[2.0; 4]).unwrap();
        assert_eq!((lc.n, lc.n_dropped), (3, 1));
    }

    #[test]
    fn score_is_zero_at_the_fit() {
        let p = [0.9, 0.8, 0.3, 0.6, 0.55, 0.1, 0.95, 0.5];
        let len_a = [120.0, 300.0, 40.0, 90.0, 200.0, 20.0, 500.0, 100.0];
        let len_b = [100.0; 8];
        let lc = lc_win_rate(&p, &len_a, &len_b).unwrap();
        assert!(lc.length_term && lc.iterations > 0);
        // Longer `a` wins more here, and the difference is baseline minus model, so φ < 0.
        assert!(lc.phi < 0.0);
        let sd = lc.std_delta_len.unwrap();
        let (mut g0, mut g1) = (0.0, 0.0);
        for i in 0..p.len() {
            let t = ((len_b[i] - len_a[i]) / sd).tanh();
            let r = p[i] - sigmoid(lc.theta + lc.phi * t);
            (g0, g1) = (g0 + r, g1 + r * t);
        }
        assert!(g0.abs() < 1e-12 && g1.abs() < 1e-12, "score ({g0}, {g1})");
    }

    #[test]
    fn swapping_the_models_mirrors_the_rate() {
        // AlpacaEval's property winrate(m, b) = 1 − winrate(b, m).
        let p = [0.9, 0.8, 0.3, 0.6, 0.55, 0.1];
        let len_a = [120.0, 300.0, 40.0, 90.0, 200.0, 20.0];
        let len_b = [100.0, 110.0, 80.0, 95.0, 70.0, 60.0];
        let q: Vec<f64> = p.iter().map(|x| 1.0 - x).collect();
        let ab = lc_win_rate(&p, &len_a, &len_b).unwrap();
        let ba = lc_win_rate(&q, &len_b, &len_a).unwrap();
        assert!((ab.value - (1.0 - ba.value)).abs() < 1e-12);
        // And a model against itself, judged symmetrically, is at ½.
        let mid = lc_win_rate(&[0.5; 6], &len_a, &len_b).unwrap();
        assert!((mid.value - 0.5).abs() < 1e-15);
    }

    #[test]
    fn saturated_fits_stay_finite() {
        // Nearly unanimous with a strong length effect: large coefficients, still a maximum.
        let p = [1.0, 1.0, 1.0, 1.0, 0.999, 0.0];
        let len_a = [500.0, 400.0, 450.0, 300.0, 10.0, 12.0];
        let lc = lc_win_rate(&p, &len_a, &[100.0; 6]).unwrap();
        assert!(lc.value.is_finite() && lc.theta.is_finite() && lc.phi.is_finite());
    }
}
