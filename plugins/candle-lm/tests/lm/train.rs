//! The training core: masked loss, batching from segment examples, and a tiny end-to-end run with a real
//! tokenizer whose loss goes down.

use std::path::Path;

use candle_core::{Device, Tensor, Var};
use candle_lm::data::{Example, Segment, make_batch, masked_nll, read_examples, tokenize};
use candle_lm::lora::{LoraConfig, LoraSet};
use candle_lm::train::{Schedule, StepMetrics, TrainConfig, TrainError, Trainer};

use crate::support::{random_weights, tiny_config, write_model};

/// Perturbing the labels of masked positions changes neither the loss nor its gradient; perturbing a counted
/// label does change the loss (so the test can fail).
#[test]
fn masked_labels_change_nothing() {
    let logits = Var::from_tensor(&Tensor::randn(0f32, 2.0, (2, 5, 11), &Device::Cpu).unwrap()).unwrap();
    let weights = Tensor::new(&[[0f32, 1., 1., 0.], [1., 0., 0., 1.]], &Device::Cpu).unwrap();
    let targets_a = Tensor::new(&[[3u32, 4, 5, 6], [7, 8, 9, 10]], &Device::Cpu).unwrap();
    let targets_b = Tensor::new(&[[0u32, 4, 5, 1], [7, 2, 2, 10]], &Device::Cpu).unwrap(); // masked slots differ
    let targets_c = Tensor::new(&[[3u32, 0, 5, 6], [7, 8, 9, 10]], &Device::Cpu).unwrap(); // a counted slot differs
    let loss_grad = |t: &Tensor| {
        let loss = masked_nll(logits.as_tensor(), t, &weights).unwrap();
        let grad = loss.backward().unwrap().get(&logits).unwrap().clone();
        (loss.to_scalar::<f32>().unwrap(), grad)
    };
    let (la, ga) = loss_grad(&targets_a);
    let (lb, gb) = loss_grad(&targets_b);
    let (lc, _) = loss_grad(&targets_c);
    assert_eq!(la, lb);
    assert_eq!((ga - gb).unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    assert_ne!(la, lc);
}

/// A word-level tokenizer over `words`, with `<unk>` and `</s>` as special tokens, written as a `tokenizer.json`.
fn word_tokenizer(dir: &Path, words: &[&str]) -> tokenizers::Tokenizer {
    let mut vocab = serde_json::Map::new();
    for (i, w) in ["<unk>", "</s>"].iter().chain(words).enumerate() {
        vocab.insert(w.to_string(), i.into());
    }
    let special = |id: usize, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
                           "normalized": false, "special": true})
    };
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [special(0, "<unk>"), special(1, "</s>")],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    });
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, json.to_string()).unwrap();
    tokenizers::Tokenizer::from_file(&path).unwrap()
}

const WORDS: [&str; 16] = [
    "<|",
    "|>",
    "user",
    "assistant",
    "what",
    "is",
    "red",
    "blue",
    "green",
    "sky",
    "grass",
    "blood",
    "the",
    "colour",
    "of",
    "?",
];

fn example(id: &str, prompt: &str, response: &str) -> Example {
    Example {
        id: id.into(),
        segments: vec![
            Segment { text: format!("<|user|>\n{prompt}\n<|assistant|>\n"), loss: false },
            Segment { text: format!("{response}</s>\n"), loss: true },
        ],
    }
}

#[test]
fn segments_tokenize_to_an_exact_mask() {
    let dir = tempfile::tempdir().unwrap();
    let tok = word_tokenizer(dir.path(), &WORDS);
    let ex = example("a:0", "what is the colour of the sky ?", "blue");
    let t = tokenize(&ex, &tok, None, 100).unwrap();
    let loss_ids: Vec<u32> = t.ids.iter().zip(&t.loss).filter(|(_, l)| **l).map(|(i, _)| *i).collect();
    let expect = vec![tok.token_to_id("blue").unwrap(), tok.token_to_id("</s>").unwrap()];
    assert_eq!(loss_ids, expect, "the response and the eos are the only targets");
    // Truncation keeps the prefix; a BOS is never a target.
    let short = tokenize(&ex, &tok, Some(1), 4).unwrap();
    assert_eq!(short.ids.len(), 4);
    assert_eq!(short.loss_tokens(), 0);
    let batch = make_batch(&[&t, &short], &Device::Cpu).unwrap().unwrap();
    assert_eq!(batch.loss_tokens, 2);
    assert_eq!(batch.input_ids.dims(), &[2, t.ids.len()]);
}

#[test]
fn bad_jsonl_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("train.jsonl");
    std::fs::write(&path, "{\"id\":\"a\",\"segments\":[]}\n\n{\"id\": 3}\n").unwrap();
    let err = read_examples(&path).unwrap_err().to_string();
    assert!(err.contains("line 3"), "{err}");
}

fn write_dataset(path: &Path) {
    let qa = [("sky", "blue"), ("grass", "green"), ("blood", "red")];
    let lines: Vec<String> = (0..6)
        .map(|i| {
            let (thing, colour) = qa[i % 3];
            let segments = serde_json::json!([
                {"loss": false, "text": format!("<|user|>\nwhat is the colour of the {thing} ?\n<|assistant|>\n")},
                {"loss": true, "text": format!("the colour is {colour}</s>\n")},
            ]);
            serde_json::json!({"id": format!("t:{i}"), "segments": segments, "source": "t"}).to_string()
        })
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// The whole path: a `dataset`-style JSONL, a tokenizer.json, a random model on disk, LoRA, AdamW with warm-up
/// and cosine decay, accumulation and clipping; the loss falls and metrics.jsonl has one line per step.
#[test]
fn end_to_end_lora_training_lowers_the_loss() {
    let dir = tempfile::tempdir().unwrap();
    let tok = word_tokenizer(dir.path(), &WORDS);
    let mut config = tiny_config("llama", true);
    config["vocab_size"] = (WORDS.len() + 2).into();
    let model_dir = dir.path().join("model");
    std::fs::create_dir(&model_dir).unwrap();
    write_model(&model_dir, &config, &random_weights(&config, 9));
    write_dataset(&dir.path().join("train.jsonl"));

    let examples: Vec<_> = read_examples(&dir.path().join("train.jsonl"))
        .unwrap()
        .iter()
        .map(|e| tokenize(e, &tok, None, 64).unwrap())
        .collect();
    let set = LoraSet::new(LoraConfig { r: 8, alpha: 16.0, dropout: 0.05, target_modules: vec![] }, 0).unwrap();
    let loaded = crate::support::load(&model_dir, false, Some(&set));
    let cfg = TrainConfig {
        lr: 2e-2,
        warmup_steps: 3,
        schedule: Schedule::Cosine,
        micro_batch: 2,
        grad_accum: 2,
        max_grad_norm: Some(1.0),
        epochs: 12,
        ..Default::default()
    };
    let metrics_path = dir.path().join("metrics.jsonl");
    let mut calls = Vec::new();
    let trainer =
        Trainer { model: &loaded.decoder, params: set.vars(), dropout: Some(set.dropout()), device: &Device::Cpu };
    let history = trainer.run(&examples, &cfg, &metrics_path, &mut |d, t| calls.push((d, t)), &|| false).unwrap();

    // 6 examples, 4 per step → 2 steps per epoch, 12 epochs.
    assert_eq!(history.len(), 24);
    assert_eq!(calls.last(), Some(&(24, 24)));
    let first: f32 = history[..2].iter().map(|m| m.loss).sum::<f32>() / 2.0;
    let last: f32 = history[22..].iter().map(|m| m.loss).sum::<f32>() / 2.0;
    assert!(last < 0.5 * first, "loss {first} → {last}");
    assert!((history[0].lr - 2e-2 / 3.0).abs() < 1e-12, "warm-up starts at lr/3");
    assert!(history[23].lr < history[5].lr, "cosine decays");
    let lines: Vec<StepMetrics> =
        std::fs::read_to_string(&metrics_path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    // f64s go through JSON text, so compare what is exact (serde_json parses the last digit approximately).
    assert_eq!(lines.len(), history.len());
    for (line, m) in lines.iter().zip(&history) {
        assert_eq!((line.step, line.epoch, line.loss, line.grad_norm), (m.step, m.epoch, m.loss, m.grad_norm));
        assert!((line.lr - m.lr).abs() <= 1e-15 * m.lr.abs().max(1.0));
    }
}

#[test]
fn cancel_stops_training() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config("llama", false);
    write_model(dir.path(), &config, &random_weights(&config, 1));
    let set = LoraSet::new(LoraConfig { r: 2, ..Default::default() }, 0).unwrap();
    let loaded = crate::support::load(dir.path(), false, Some(&set));
    let ex = candle_lm::data::Tokenized { id: "x".into(), ids: vec![1, 2, 3], loss: vec![false, true, true] };
    let trainer = Trainer { model: &loaded.decoder, params: set.vars(), dropout: None, device: &Device::Cpu };
    let err = trainer.run(&[ex], &TrainConfig::default(), &dir.path().join("m.jsonl"), &mut |_, _| {}, &|| true);
    assert!(matches!(err, Err(TrainError::Cancelled)));
}

#[test]
fn a_parameter_without_gradient_fails_the_step() {
    // A Var the model never uses stands for a weight behind an op without backward.
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config("llama", false);
    write_model(dir.path(), &config, &random_weights(&config, 1));
    let loaded = crate::support::load(dir.path(), true, None);
    loaded
        .params
        .data()
        .lock()
        .unwrap()
        .insert("orphan".into(), Var::zeros(3, candle_core::DType::F32, &Device::Cpu).unwrap());
    let ex = candle_lm::data::Tokenized { id: "x".into(), ids: vec![1, 2, 3], loss: vec![false, true, true] };
    let trainer = Trainer { model: &loaded.decoder, params: &loaded.params, dropout: None, device: &Device::Cpu };
    let err = trainer.run(&[ex], &TrainConfig::default(), &dir.path().join("m.jsonl"), &mut |_, _| {}, &|| false);
    assert!(matches!(err, Err(TrainError::NoGradient(ref n)) if n == "orphan"), "{err:?}");
}

/// Two identical runs end with bitwise identical weights even when every step clips: the gradient norm is summed
/// in a fixed order (a `HashMap`'s order differs between instances, which moved the clipping factor's last bits).
#[test]
fn clipped_training_is_bitwise_reproducible() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config("llama", false);
    write_model(dir.path(), &config, &random_weights(&config, 5));
    let ex = candle_lm::data::Tokenized { id: "x".into(), ids: vec![1, 5, 9, 3, 7, 2], loss: vec![true; 6] };
    let cfg = TrainConfig {
        lr: 1e-2,
        max_grad_norm: Some(1e-3),
        micro_batch: 1,
        grad_accum: 1,
        epochs: 6,
        ..Default::default()
    };
    let train = || {
        let loaded = crate::support::load(dir.path(), true, None);
        let trainer = Trainer { model: &loaded.decoder, params: &loaded.params, dropout: None, device: &Device::Cpu };
        let history = trainer
            .run(std::slice::from_ref(&ex), &cfg, &dir.path().join("m.jsonl"), &mut |_, _| {}, &|| false)
            .unwrap();
        assert!(history.iter().all(|m| f64::from(m.grad_norm) > 1e-3), "every step clips");
        let data = loaded.params.data().lock().unwrap();
        let mut weights: Vec<(String, Vec<f32>)> = data
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap()))
            .collect();
        weights.sort_by(|a, b| a.0.cmp(&b.0));
        weights
    };
    let (a, b) = (train(), train());
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert!(x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits()), "`{name}` differs between identical runs");
    }
}
