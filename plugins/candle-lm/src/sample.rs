//! Generation with the KV cache, for one prompt or a batch: greedy, or sampling from a seeded stream after
//! temperature, top-k and top-p (in that order, as transformers' logits warpers apply them); stopping at a stop
//! token, when the caller says so (stop strings, cancellation) or after `max_new_tokens`; optionally with
//! per-token log-probabilities.
//!
//! A batch is left-padded to its longest prompt (see [`KvCache::with_left_padding`]); each prompt is run once,
//! then each new token costs one single-position forward pass over the cache, and finished rows leave the batch.
//! Every row draws from its own stream seeded with [`GenerateOptions::seed`], so a prompt gets the same
//! continuation alone or in any batch (up to rounding differences of the batched kernels).

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::model::{CausalLm, KvCache};

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Sampling {
    /// The most likely token (ties: the lowest id). The paper's setting.
    Greedy,
    /// A draw after dividing the logits by `temperature`, keeping the `top_k` most likely tokens (0: all), then
    /// the smallest set of those whose renormalised probability reaches `top_p`.
    Random {
        /// Logit divisor, > 0.
        temperature: f64,
        /// Keep only this many most likely tokens (ties: lower ids first); 0 keeps all.
        top_k: usize,
        /// Probability mass kept, in (0, 1].
        top_p: f64,
    },
}

impl Sampling {
    /// Checks the settings; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        match *self {
            Sampling::Greedy => Ok(()),
            Sampling::Random { temperature, top_p, .. } => {
                if !(temperature.is_finite() && temperature > 0.0) {
                    return Err(format!("`temperature` must be positive for sampling, got {temperature}"));
                }
                if !(top_p > 0.0 && top_p <= 1.0) {
                    return Err(format!("`top_p` must be in (0, 1], got {top_p}"));
                }
                Ok(())
            }
        }
    }
}

/// Generation settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateOptions {
    /// At most this many new tokens.
    pub max_new_tokens: usize,
    /// Token choice.
    pub sampling: Sampling,
    /// Seed of each prompt's sampling stream (unused when greedy).
    pub seed: u64,
    /// Tokens that end generation (the eos); the stop token is included in the output.
    pub stop_tokens: Vec<u32>,
    /// `Some(n)`: record each new token's log-probability and the `n` most likely alternatives (see
    /// [`TokenLogprobs`]); `None`: record nothing.
    #[serde(default)]
    pub logprobs: Option<usize>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self { max_new_tokens: 256, sampling: Sampling::Greedy, seed: 0, stop_tokens: Vec::new(), logprobs: None }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FinishReason {
    /// A stop token was produced, or the caller's check said stop.
    Stop,
    /// `max_new_tokens` was reached.
    Length,
}

/// The log-probabilities at one generated position: `log_softmax` of the model's raw logits, that is at
/// temperature 1 and before any top-k / top-p filtering, whatever the sampling settings (OpenAI's `logprobs` and
/// `top_logprobs`). Natural logarithms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprobs {
    /// The token that was generated.
    pub token: u32,
    /// Its log-probability.
    pub logprob: f64,
    /// The most likely tokens with their log-probabilities, most likely first (ties: lower ids first); the
    /// generated token is among them only if it ranks there.
    pub top: Vec<(u32, f64)>,
}

/// The new tokens and why generation ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// Generated token ids (without the prompt).
    pub tokens: Vec<u32>,
    /// Why it ended.
    pub finish: FinishReason,
    /// One entry per token of `tokens` when [`GenerateOptions::logprobs`] asked for them, else empty.
    pub logprobs: Vec<TokenLogprobs>,
}

/// Continues `prompt` (at least one token) with `model`.
pub fn generate(
    model: &dyn CausalLm,
    prompt: &[u32],
    opts: &GenerateOptions,
    device: &Device,
) -> candle_core::Result<Generation> {
    generate_with(model, prompt, opts, device, &mut |_| false)
}

/// [`generate`] with a check after every new token: `stop(tokens so far)` returning true ends generation with
/// [`FinishReason::Stop`]. Stop strings and cancellation are decided there, since only the caller has the
/// tokenizer and the host.
pub fn generate_with(
    model: &dyn CausalLm,
    prompt: &[u32],
    opts: &GenerateOptions,
    device: &Device,
    stop: &mut dyn FnMut(&[u32]) -> bool,
) -> candle_core::Result<Generation> {
    let mut out = generate_batch(model, &[prompt.to_vec()], opts, device, &mut |_, tokens| stop(tokens))?;
    Ok(out.remove(0))
}

/// Continues each of `prompts` (each at least one token), all in one batch; the result has one [`Generation`]
/// per prompt, in order. `stop(i, tokens so far)` is asked after each new token of prompt `i`; returning true
/// ends that prompt with [`FinishReason::Stop`]. Under greedy decoding each result equals [`generate`] on the
/// prompt alone (the padding is masked; only kernel rounding differs).
pub fn generate_batch(
    model: &dyn CausalLm,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
    device: &Device,
    stop: &mut dyn FnMut(usize, &[u32]) -> bool,
) -> candle_core::Result<Vec<Generation>> {
    if let Some(i) = prompts.iter().position(Vec::is_empty) {
        candle_core::bail!("prompt {i} is empty: a prompt must have at least one token");
    }
    opts.sampling.validate().map_err(candle_core::Error::msg)?;
    let mut out: Vec<Generation> = prompts
        .iter()
        .map(|_| Generation { tokens: Vec::new(), finish: FinishReason::Length, logprobs: Vec::new() })
        .collect();
    let Some(longest) = prompts.iter().map(Vec::len).max() else { return Ok(out) };
    if opts.max_new_tokens == 0 {
        return Ok(out);
    }
    let pads: Vec<usize> = prompts.iter().map(|p| longest - p.len()).collect();
    // The padding's id does not matter (it is masked); 0 is in every vocabulary.
    let ids: Vec<u32> =
        prompts.iter().zip(&pads).flat_map(|(p, pad)| std::iter::repeat_n(0, *pad).chain(p.iter().copied())).collect();
    let mut input = Tensor::from_vec(ids, (prompts.len(), longest), device)?;
    let mut cache = KvCache::with_left_padding(pads);
    let mut rngs = vec![ChaCha8Rng::seed_from_u64(opts.seed); prompts.len()];
    // The prompt index of each row still in the batch.
    let mut active: Vec<usize> = (0..prompts.len()).collect();
    loop {
        let logits = model.forward_last(&input, Some(&mut cache))?.to_vec2::<f32>()?;
        let (mut keep, mut next) = (Vec::new(), Vec::new());
        for (row, (&i, last)) in active.iter().zip(&logits).enumerate() {
            let token = match opts.sampling {
                Sampling::Greedy => argmax(last),
                Sampling::Random { temperature, top_k, top_p } => {
                    sample_filtered(last, temperature, top_k, top_p, &mut rngs[i])
                }
            };
            let g = &mut out[i];
            if let Some(n) = opts.logprobs {
                g.logprobs.push(token_logprobs(last, token, n));
            }
            g.tokens.push(token);
            if opts.stop_tokens.contains(&token) || stop(i, &g.tokens) {
                g.finish = FinishReason::Stop;
            } else if g.tokens.len() < opts.max_new_tokens {
                keep.push(row);
                next.push(token);
            }
        }
        if keep.is_empty() {
            return Ok(out);
        }
        if keep.len() < active.len() {
            cache.retain_rows(&keep)?;
            active = keep.iter().map(|row| active[*row]).collect();
        }
        input = Tensor::from_vec(next, (active.len(), 1), device)?;
    }
}

/// Index of the largest value; the first on ties, NaN never wins.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in logits.iter().enumerate() {
        if *v > logits[best] || logits[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

/// `log_softmax(logits)[token]` and the `top` most likely tokens with theirs, computed in f64 (see
/// [`TokenLogprobs`]). Non-finite logits count as impossible tokens (log-probability `-inf`).
pub fn token_logprobs(logits: &[f32], token: u32, top: usize) -> TokenLogprobs {
    let max = logits.iter().copied().filter(|v| v.is_finite()).fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().filter(|v| v.is_finite()).map(|v| f64::from(v - max).exp()).sum();
    let log_z = f64::from(max) + sum.ln();
    let logprob = |v: f32| if v.is_finite() { f64::from(v) - log_z } else { f64::NEG_INFINITY };
    let chosen = logits.get(token as usize).map_or(f64::NEG_INFINITY, |v| logprob(*v));
    TokenLogprobs {
        token,
        logprob: chosen,
        top: most_likely(logits, top).into_iter().map(|i| (i, logprob(logits[i as usize]))).collect(),
    }
}

/// The ids of the `k` largest finite logits, largest first, lower ids first on ties.
fn most_likely(logits: &[f32], k: usize) -> Vec<u32> {
    let mut ids: Vec<u32> = (0..logits.len() as u32).filter(|i| logits[*i as usize].is_finite()).collect();
    let order = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]).then(a.cmp(b));
    if k < ids.len() {
        if k == 0 {
            return Vec::new();
        }
        ids.select_nth_unstable_by(k - 1, order);
        ids.truncate(k);
    }
    ids.sort_unstable_by(order);
    ids
}

fn sample_filtered(logits: &[f32], temperature: f64, top_k: usize, top_p: f64, rng: &mut ChaCha8Rng) -> u32 {
    let max = logits.iter().copied().filter(|v| v.is_finite()).fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, v)| (i as u32, if v.is_finite() { (f64::from(v - max) / temperature).exp() } else { 0.0 }))
        .collect();
    // Descending probability, ascending id on ties, so the result does not depend on the sort's stability.
    let order = |a: &(u32, f64), b: &(u32, f64)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if top_k > 0 && top_k < probs.len() {
        probs.select_nth_unstable_by(top_k - 1, order);
        probs.truncate(top_k);
    }
    probs.sort_by(order);
    // Top-p over the mass top-k left, as transformers' TopPLogitsWarper sees the already-filtered logits.
    let total: f64 = probs.iter().map(|p| p.1).sum();
    let mut kept = 0.0;
    let mut cut = probs.len();
    for (i, (_, p)) in probs.iter().enumerate() {
        kept += p / total;
        if kept >= top_p {
            cut = i + 1;
            break;
        }
    }
    let nucleus = &probs[..cut];
    let mass: f64 = nucleus.iter().map(|p| p.1).sum();
    let mut draw = rng.random::<f64>() * mass;
    for (id, p) in nucleus {
        if draw < *p {
            return *id;
        }
        draw -= p;
    }
    nucleus.last().map_or(0, |p| p.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logprobs_are_a_log_softmax_and_the_top_is_sorted() {
        let logits = [1.0f32, 3.0, 2.0, 3.0, f32::NEG_INFINITY];
        let lp = token_logprobs(&logits, 2, 3);
        let z: f64 = logits[..4].iter().map(|v| f64::from(*v).exp()).sum();
        assert!((lp.logprob - (2.0 - z.ln())).abs() < 1e-12);
        assert_eq!(lp.top.iter().map(|t| t.0).collect::<Vec<_>>(), [1, 3, 2], "ties: lower id first");
        assert!((lp.top[0].1 - (3.0 - z.ln())).abs() < 1e-12);
        assert_eq!(token_logprobs(&logits, 4, 0).logprob, f64::NEG_INFINITY);
        assert!(token_logprobs(&logits, 0, 0).top.is_empty());
        assert_eq!(token_logprobs(&logits, 0, 99).top.len(), 4, "only finite logits are candidates");
    }

    #[test]
    fn top_k_keeps_only_the_k_best() {
        let logits = [0.0f32, 5.0, 4.9, 4.8, -1.0];
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..400 {
            seen.insert(sample_filtered(&logits, 10.0, 2, 1.0, &mut rng));
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), [1, 2]);
        // top-k 1 is greedy whatever the temperature; top-p then works within the k kept.
        assert_eq!(sample_filtered(&logits, 100.0, 1, 1.0, &mut rng), 1);
        for _ in 0..50 {
            assert_eq!(sample_filtered(&logits, 1.0, 3, 0.3, &mut rng), 1, "0.3 of the three best is the best");
        }
    }
}
