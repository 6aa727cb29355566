//! Generation with the KV cache: greedy equals re-running the whole sequence each step; top-p and top-k are
//! seeded; a left-padded batch generates what each prompt generates alone (llama, qwen2, mistral, gemma2); log
//! probabilities are the raw logits' log-softmax.

use candle_core::{Device, Tensor};
use candle_lm::model::{CausalLm, KvCache};
use candle_lm::sample::{FinishReason, GenerateOptions, Sampling, argmax, generate, generate_batch};

use crate::gemma2;
use crate::support::{load, max_abs_diff, tiny_model, write_model};

fn opts(sampling: Sampling, max_new_tokens: usize, seed: u64) -> GenerateOptions {
    GenerateOptions { max_new_tokens, sampling, seed, ..GenerateOptions::default() }
}

#[test]
fn greedy_with_cache_equals_greedy_without() {
    let (dir, _, _) = tiny_model("qwen2", false, 31);
    let model = load(dir.path(), false, None).decoder;
    let prompt = [3u32, 14, 15, 9];
    let got = generate(&model, &prompt, &opts(Sampling::Greedy, 10, 0), &Device::Cpu).unwrap();
    assert_eq!(got.finish, FinishReason::Length);
    let mut seq = prompt.to_vec();
    for _ in 0..10 {
        let logits = model.forward(&Tensor::from_slice(&seq, (1, seq.len()), &Device::Cpu).unwrap(), None).unwrap();
        let last = logits.squeeze(0).unwrap().get(seq.len() - 1).unwrap().to_vec1::<f32>().unwrap();
        seq.push(argmax(&last));
    }
    assert_eq!(got.tokens, seq[prompt.len()..]);
}

#[test]
fn top_p_is_seeded_and_tiny_top_p_is_greedy() {
    let (dir, _, _) = tiny_model("llama", true, 32);
    let model = load(dir.path(), false, None).decoder;
    let prompt = [1u32, 2, 3];
    let hot = Sampling::Random { temperature: 1.5, top_k: 0, top_p: 0.95 };
    let a = generate(&model, &prompt, &opts(hot, 12, 7), &Device::Cpu).unwrap();
    let b = generate(&model, &prompt, &opts(hot, 12, 7), &Device::Cpu).unwrap();
    let c = generate(&model, &prompt, &opts(hot, 12, 8), &Device::Cpu).unwrap();
    assert_eq!(a, b);
    assert_ne!(a.tokens, c.tokens, "another seed should draw another continuation");
    let narrow = Sampling::Random { temperature: 1.0, top_k: 0, top_p: 1e-9 };
    let greedy = generate(&model, &prompt, &opts(Sampling::Greedy, 12, 0), &Device::Cpu).unwrap();
    assert_eq!(generate(&model, &prompt, &opts(narrow, 12, 3), &Device::Cpu).unwrap(), greedy);
}

#[test]
fn generation_stops_at_a_stop_token() {
    let (dir, _, _) = tiny_model("llama", false, 33);
    let model = load(dir.path(), false, None).decoder;
    let prompt = [5u32, 6];
    let free = generate(&model, &prompt, &opts(Sampling::Greedy, 6, 0), &Device::Cpu).unwrap();
    let stop = free.tokens[2];
    let mut o = opts(Sampling::Greedy, 6, 0);
    o.stop_tokens = vec![stop];
    let got = generate(&model, &prompt, &o, &Device::Cpu).unwrap();
    assert_eq!(got.finish, FinishReason::Stop);
    let first = free.tokens.iter().position(|t| *t == stop).unwrap();
    assert_eq!(got.tokens, free.tokens[..=first]);
    assert!(generate(&model, &[], &o, &Device::Cpu).is_err());
}

/// Prompts of different lengths (the longest 9 tokens, one of a single token) below the tiny vocab.
fn ragged_prompts() -> Vec<Vec<u32>> {
    vec![vec![3, 14, 15, 9, 2, 6], vec![7], vec![1, 2, 3, 4, 5, 6, 7, 8, 9], vec![40, 41, 42]]
}

/// Each prompt alone, then all together: the same greedy tokens, and last-position logits equal to rounding.
fn batched_equals_alone(model: &dyn CausalLm, what: &str) {
    let prompts = ragged_prompts();
    let o = opts(Sampling::Greedy, 12, 0);
    let batched = generate_batch(model, &prompts, &o, &Device::Cpu, &mut |_, _| false).unwrap();
    for (p, got) in prompts.iter().zip(&batched) {
        let alone = generate(model, p, &o, &Device::Cpu).unwrap();
        assert_eq!(got, &alone, "{what}: prompt {p:?}");
    }
    // The first step's logits, padded batch against each prompt alone.
    let longest = prompts.iter().map(Vec::len).max().unwrap();
    let pads: Vec<usize> = prompts.iter().map(|p| longest - p.len()).collect();
    let ids: Vec<u32> =
        prompts.iter().flat_map(|p| std::iter::repeat_n(0, longest - p.len()).chain(p.clone())).collect();
    let mut cache = KvCache::with_left_padding(pads);
    let input = Tensor::from_vec(ids, (prompts.len(), longest), &Device::Cpu).unwrap();
    let padded = model.forward_last(&input, Some(&mut cache)).unwrap();
    for (i, p) in prompts.iter().enumerate() {
        let alone = model.forward(&Tensor::from_slice(p, (1, p.len()), &Device::Cpu).unwrap(), None).unwrap();
        let alone = alone.get(0).unwrap().get(p.len() - 1).unwrap();
        let diff = max_abs_diff(&padded.get(i).unwrap(), &alone);
        assert!(diff <= 1e-5, "{what}: prompt {i}: max |Δlogits| = {diff}");
    }
}

#[test]
fn a_padded_batch_generates_what_each_prompt_generates_alone() {
    let (dir, _, _) = tiny_model("qwen2", false, 34);
    batched_equals_alone(&load(dir.path(), false, None).decoder, "qwen2");
    let (dir, _, _) = tiny_model("llama", true, 35);
    batched_equals_alone(&load(dir.path(), false, None).decoder, "llama");
    // Gemma-2: soft caps, and a window of 4 (shorter than the longest prompt) on the even layers.
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), &gemma2::tiny_config(2, 4), &gemma2::random_weights(2, 36));
    batched_equals_alone(&load(dir.path(), false, None).decoder, "gemma2");
}

/// Rows that finish early leave the batch (the cache drops them and the padding no row needs any more); the
/// rows left generate on unchanged.
#[test]
fn rows_that_stop_leave_the_batch_without_changing_the_others() {
    let (dir, _, _) = tiny_model("mistral", false, 37);
    let model = load(dir.path(), false, None).decoder;
    let prompts = ragged_prompts();
    let o = opts(Sampling::Greedy, 10, 0);
    // Prompt i stops after 2 + 2i tokens, so the longest prompt (index 2) leaves before the last one.
    let got = generate_batch(&model, &prompts, &o, &Device::Cpu, &mut |i, t| t.len() == 2 + 2 * i).unwrap();
    for (i, (p, g)) in prompts.iter().zip(&got).enumerate() {
        let alone = generate(&model, p, &opts(Sampling::Greedy, 2 + 2 * i, 0), &Device::Cpu).unwrap();
        assert_eq!(g.tokens, alone.tokens, "prompt {i}");
        assert_eq!(g.finish, if 2 + 2 * i <= 10 { FinishReason::Stop } else { FinishReason::Length }, "prompt {i}");
    }
    // Sampling: each prompt's own seeded stream, whatever the batch.
    let hot = opts(Sampling::Random { temperature: 1.3, top_k: 20, top_p: 0.9 }, 8, 5);
    let batched = generate_batch(&model, &prompts, &hot, &Device::Cpu, &mut |_, _| false).unwrap();
    for (p, g) in prompts.iter().zip(&batched) {
        assert_eq!(g, &generate(&model, p, &hot, &Device::Cpu).unwrap());
    }
    assert!(generate_batch(&model, &[vec![1], vec![]], &o, &Device::Cpu, &mut |_, _| false).is_err());
    assert!(generate_batch(&model, &[], &o, &Device::Cpu, &mut |_, _| false).unwrap().is_empty());
}

#[test]
fn top_k_one_is_greedy() {
    let (dir, _, _) = tiny_model("llama", false, 38);
    let model = load(dir.path(), false, None).decoder;
    let prompt = [4u32, 8, 15];
    let greedy = generate(&model, &prompt, &opts(Sampling::Greedy, 12, 0), &Device::Cpu).unwrap();
    let k1 = Sampling::Random { temperature: 5.0, top_k: 1, top_p: 1.0 };
    assert_eq!(generate(&model, &prompt, &opts(k1, 12, 9), &Device::Cpu).unwrap(), greedy);
    let wide = Sampling::Random { temperature: 5.0, top_k: 0, top_p: 1.0 };
    assert_ne!(generate(&model, &prompt, &opts(wide, 12, 9), &Device::Cpu).unwrap().tokens, greedy.tokens);
}

/// Log-probabilities are the log-softmax of the raw logits at each step (whatever the temperature and filters),
/// and the alternatives are the most likely tokens, in order.
#[test]
fn logprobs_are_the_log_softmax_of_the_raw_logits() {
    let (dir, _, _) = tiny_model("qwen2", true, 39);
    let model = load(dir.path(), false, None).decoder;
    let prompt = [9u32, 2, 33, 4];
    let mut o = opts(Sampling::Random { temperature: 2.0, top_k: 10, top_p: 0.8 }, 6, 1);
    o.logprobs = Some(5);
    let got = generate(&model, &prompt, &o, &Device::Cpu).unwrap();
    assert_eq!(got.logprobs.len(), got.tokens.len());
    let mut seq = prompt.to_vec();
    for (t, lp) in got.tokens.iter().zip(&got.logprobs) {
        let logits = model.forward(&Tensor::from_slice(&seq, (1, seq.len()), &Device::Cpu).unwrap(), None).unwrap();
        let last = logits.get(0).unwrap().get(seq.len() - 1).unwrap();
        let log_probs = candle_nn::ops::log_softmax(&last, 0).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(lp.token, *t);
        assert!((lp.logprob - f64::from(log_probs[*t as usize])).abs() < 1e-4, "{lp:?}");
        assert_eq!(lp.top.len(), 5);
        let mut ranked: Vec<usize> = (0..log_probs.len()).collect();
        ranked.sort_by(|a, b| log_probs[*b].total_cmp(&log_probs[*a]));
        assert_eq!(lp.top.iter().map(|x| x.0 as usize).collect::<Vec<_>>(), ranked[..5]);
        assert!(lp.top.windows(2).all(|w| w[0].1 >= w[1].1));
        let mass: f64 = lp.top.iter().map(|x| x.1.exp()).sum();
        assert!(mass <= 1.0 && lp.top.iter().all(|x| x.1.is_finite() && x.1 <= 0.0), "{lp:?}");
        seq.push(*t);
    }
    // Without the option nothing is recorded, and the tokens are the same.
    o.logprobs = None;
    let plain = generate(&model, &prompt, &o, &Device::Cpu).unwrap();
    assert!(plain.logprobs.is_empty());
    assert_eq!(plain.tokens, got.tokens);
}
