//! Generation for one prompt with the KV cache: greedy, or temperature + top-p (nucleus) sampling from a seeded
//! stream, stopping at a stop token or after `max_new_tokens`.
//!
//! The prompt is run once; each new token then costs one single-position forward pass over the cache. Batched
//! generation (left padding and a padding mask) is not here yet.

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
    /// Sample from the smallest set of most likely tokens whose probability reaches `top_p`, after dividing the
    /// logits by `temperature`.
    TopP {
        /// Logit divisor, > 0.
        temperature: f64,
        /// Probability mass kept, in (0, 1].
        top_p: f64,
    },
}

/// Generation settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateOptions {
    /// At most this many new tokens.
    pub max_new_tokens: usize,
    /// Token choice.
    pub sampling: Sampling,
    /// Seed of the sampling stream (unused when greedy).
    pub seed: u64,
    /// Tokens that end generation (the eos); the stop token is included in the output.
    pub stop_tokens: Vec<u32>,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FinishReason {
    /// A stop token was produced.
    Stop,
    /// `max_new_tokens` was reached.
    Length,
}

/// The new tokens and why generation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    /// Generated token ids (without the prompt).
    pub tokens: Vec<u32>,
    /// Why it ended.
    pub finish: FinishReason,
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
    if prompt.is_empty() {
        candle_core::bail!("the prompt must have at least one token");
    }
    if let Sampling::TopP { temperature, top_p } = opts.sampling
        && !(temperature > 0.0 && top_p > 0.0 && top_p <= 1.0)
    {
        candle_core::bail!("top-p sampling needs temperature > 0 and top_p in (0, 1], got {temperature} and {top_p}");
    }
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let mut cache = KvCache::new();
    let mut input = Tensor::from_slice(prompt, (1, prompt.len()), device)?;
    let mut tokens = Vec::new();
    while tokens.len() < opts.max_new_tokens {
        let logits = model.forward(&input, Some(&mut cache))?;
        let last = logits.squeeze(0)?.get(input.dim(1)? - 1)?.to_vec1::<f32>()?;
        let next = match opts.sampling {
            Sampling::Greedy => argmax(&last),
            Sampling::TopP { temperature, top_p } => sample_top_p(&last, temperature, top_p, &mut rng),
        };
        tokens.push(next);
        if opts.stop_tokens.contains(&next) || stop(&tokens) {
            return Ok(Generation { tokens, finish: FinishReason::Stop });
        }
        input = Tensor::from_slice(&[next], (1, 1), device)?;
    }
    Ok(Generation { tokens, finish: FinishReason::Length })
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

fn sample_top_p(logits: &[f32], temperature: f64, top_p: f64, rng: &mut ChaCha8Rng) -> u32 {
    let max = logits.iter().copied().filter(|v| v.is_finite()).fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, v)| (i as u32, if v.is_finite() { (f64::from(v - max) / temperature).exp() } else { 0.0 }))
        .collect();
    // Descending probability, ascending id on ties, so the result does not depend on the sort's stability.
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
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
