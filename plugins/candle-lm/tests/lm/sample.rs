//! Generation with the KV cache: greedy equals re-running the whole sequence each step; top-p is seeded.

use candle_core::{Device, Tensor};
use candle_lm::model::CausalLm;
use candle_lm::sample::{FinishReason, GenerateOptions, Sampling, argmax, generate};

use crate::support::{load, tiny_model};

fn opts(sampling: Sampling, max_new_tokens: usize, seed: u64) -> GenerateOptions {
    GenerateOptions { max_new_tokens, sampling, seed, stop_tokens: vec![] }
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
    let hot = Sampling::TopP { temperature: 1.5, top_p: 0.95 };
    let a = generate(&model, &prompt, &opts(hot, 12, 7), &Device::Cpu).unwrap();
    let b = generate(&model, &prompt, &opts(hot, 12, 7), &Device::Cpu).unwrap();
    let c = generate(&model, &prompt, &opts(hot, 12, 8), &Device::Cpu).unwrap();
    assert_eq!(a, b);
    assert_ne!(a.tokens, c.tokens, "another seed should draw another continuation");
    let narrow = Sampling::TopP { temperature: 1.0, top_p: 1e-9 };
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
