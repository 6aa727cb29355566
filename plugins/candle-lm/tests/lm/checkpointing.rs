//! Gradient checkpointing: the same loss and gradients as plain backpropagation (Llama and Gemma-2, LoRA with
//! dropout and full fine-tuning with a tied head), every parameter still gets a gradient, and a training run with
//! it follows the plain run.

use candle_core::{DType, Device, Tensor, Var};
use candle_lm::backward::loss_and_grads;
use candle_lm::data::{Batch, Tokenized, make_batch};
use candle_lm::lora::{DropoutRng, LoraConfig, LoraSet};
use candle_lm::model::CausalLm;
use candle_lm::train::{TrainConfig, TrainError, Trainer};
use candle_nn::VarMap;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::support::{load, max_abs_diff, random_weights, tiny_config, write_model};

const TOLERANCE: f32 = 1e-5;

/// Examples of different lengths (so the batch is padded) whose first half is not a target.
fn examples(n: usize, seed: u64) -> Vec<Tokenized> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let len = rng.random_range(4..14);
            let ids: Vec<u32> = (0..len).map(|_| rng.random_range(0..61)).collect();
            Tokenized { id: i.to_string(), loss: (0..len).map(|j| j >= len / 2).collect(), ids }
        })
        .collect()
}

fn batch() -> Batch {
    let ex = examples(3, 5);
    make_batch(&ex.iter().collect::<Vec<_>>(), &Device::Cpu).unwrap().unwrap()
}

fn sorted_vars(map: &VarMap) -> Vec<(String, Var)> {
    let mut vars: Vec<(String, Var)> = map.data().lock().unwrap().iter().map(|(n, v)| (n.clone(), v.clone())).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// LoRA's `B` starts at zero, which makes every `A` gradient zero; random values make the comparison bite.
fn randomize_b(set: &LoraSet) {
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    for (name, var) in sorted_vars(set.vars()) {
        if name.contains("lora_B") {
            let values: Vec<f32> = (0..var.elem_count()).map(|_| rng.random_range(-0.3..0.3)).collect();
            var.set(&Tensor::from_vec(values, var.shape(), &Device::Cpu).unwrap()).unwrap();
        }
    }
}

/// Plain and checkpointed loss and gradients agree, every gradient is there and not zero, and (with dropout)
/// the masks matter, so agreeing means the rerun drew the same ones.
fn same_gradients(what: &str, model: &dyn CausalLm, vars: &[(String, Var)], dropout: Option<&DropoutRng>) {
    let batch = batch();
    let run = |checkpointing: bool, seed: Option<u64>| {
        if let Some(d) = dropout {
            d.reseed(seed);
        }
        loss_and_grads(model, &batch, 7.0, vars, dropout, checkpointing).unwrap()
    };
    let (plain_loss, plain) = run(false, Some(11));
    let (ckpt_loss, ckpt) = run(true, Some(11));
    assert_eq!(plain.len(), vars.len());
    assert_eq!(ckpt.len(), vars.len());
    assert!((plain_loss - ckpt_loss).abs() <= 1e-6, "{what}: loss {plain_loss} vs {ckpt_loss}");
    let mut worst = 0f32;
    for ((name, _), (p, c)) in vars.iter().zip(plain.iter().zip(&ckpt)) {
        assert!(p.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0, "{what}: `{name}` is zero");
        let diff = max_abs_diff(p, c);
        assert!(diff <= TOLERANCE, "{what}: `{name}` differs by {diff}");
        worst = worst.max(diff);
    }
    eprintln!("{what}: {} gradients, max abs diff {worst:e}", vars.len());
    if dropout.is_some() {
        let (_, other_masks) = run(true, Some(12));
        let moved = plain.iter().zip(&other_masks).map(|(a, b)| max_abs_diff(a, b)).fold(0f32, f32::max);
        assert!(moved > 100.0 * TOLERANCE, "{what}: dropout changes the gradients by only {moved}");
    }
}

fn llama_dir(tie: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut config = tiny_config("llama", tie);
    config["num_hidden_layers"] = 3.into();
    write_model(dir.path(), &config, &random_weights(&config, 31));
    dir
}

fn gemma2_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    // A window of 4 over sequences up to 13 long: the local layers' mask matters.
    write_model(dir.path(), &crate::gemma2::tiny_config(3, 4), &crate::gemma2::random_weights(3, 32));
    dir
}

fn lora_set() -> LoraSet {
    LoraSet::new(LoraConfig { r: 4, alpha: 8.0, dropout: 0.2, target_modules: vec![] }, 3).unwrap()
}

#[test]
fn llama_lora_gradients_match_plain_backprop() {
    let dir = llama_dir(false);
    let set = lora_set();
    let loaded = load(dir.path(), false, Some(&set));
    randomize_b(&set);
    same_gradients("llama lora", &loaded.decoder, &sorted_vars(set.vars()), Some(set.dropout()));
}

#[test]
fn llama_full_gradients_match_plain_backprop_tied() {
    let dir = llama_dir(true);
    let loaded = load(dir.path(), true, None);
    same_gradients("llama full (tied)", &loaded.decoder, &sorted_vars(&loaded.params), None);
}

#[test]
fn gemma2_lora_gradients_match_plain_backprop() {
    let dir = gemma2_dir();
    let set = lora_set();
    let loaded = load(dir.path(), false, Some(&set));
    randomize_b(&set);
    same_gradients("gemma2 lora", &loaded.decoder, &sorted_vars(set.vars()), Some(set.dropout()));
}

#[test]
fn gemma2_full_gradients_match_plain_backprop() {
    let dir = gemma2_dir();
    let loaded = load(dir.path(), true, None);
    same_gradients("gemma2 full", &loaded.decoder, &sorted_vars(&loaded.params), None);
}

/// A Var no segment uses still fails the step, as without checkpointing.
#[test]
fn a_parameter_without_gradient_still_fails() {
    let dir = llama_dir(false);
    let loaded = load(dir.path(), true, None);
    loaded.params.data().lock().unwrap().insert("orphan".into(), Var::zeros(3, DType::F32, &Device::Cpu).unwrap());
    let trainer = Trainer { model: &loaded.decoder, params: &loaded.params, dropout: None, device: &Device::Cpu };
    let cfg = TrainConfig { gradient_checkpointing: true, ..TrainConfig::default() };
    let metrics = dir.path().join("m.jsonl");
    let err = trainer.run(&examples(2, 1), &cfg, &metrics, &mut |_, _| {}, &|| false);
    assert!(matches!(err, Err(TrainError::NoGradient(ref n)) if n == "orphan"), "{err:?}");
}

/// LoRA with dropout, accumulation and clipping: the checkpointed run's losses and weights follow the plain
/// run's.
#[test]
fn checkpointed_training_follows_plain_training() {
    let dir = llama_dir(false);
    let train = |checkpointing: bool| {
        let set = lora_set();
        let loaded = load(dir.path(), false, Some(&set));
        let trainer =
            Trainer { model: &loaded.decoder, params: set.vars(), dropout: Some(set.dropout()), device: &Device::Cpu };
        let cfg = TrainConfig {
            lr: 1e-2,
            micro_batch: 2,
            grad_accum: 2,
            max_grad_norm: Some(0.5),
            max_steps: Some(6),
            gradient_checkpointing: checkpointing,
            ..TrainConfig::default()
        };
        let metrics = dir.path().join(format!("m-{checkpointing}.jsonl"));
        let history = trainer.run(&examples(8, 2), &cfg, &metrics, &mut |_, _| {}, &|| false).unwrap();
        let weights: Vec<Tensor> = sorted_vars(set.vars()).iter().map(|(_, v)| v.as_tensor().copy().unwrap()).collect();
        (history.iter().map(|m| m.loss).collect::<Vec<_>>(), weights)
    };
    let (plain_losses, plain_weights) = train(false);
    let (ckpt_losses, ckpt_weights) = train(true);
    assert!(plain_losses.last() < plain_losses.first(), "{plain_losses:?}");
    for (p, c) in plain_losses.iter().zip(&ckpt_losses) {
        assert!((p - c).abs() <= 1e-4 * p.abs().max(1.0), "losses {plain_losses:?} vs {ckpt_losses:?}");
    }
    let diff = plain_weights.iter().zip(&ckpt_weights).map(|(a, b)| max_abs_diff(a, b)).fold(0f32, f32::max);
    assert!(diff <= 1e-4, "weights differ by {diff}");
}
