//! bf16 forward with f32 master weights (LoRA): the base and the forward are bf16, while the adapters, their
//! gradients and AdamW's moments stay f32; the loss falls on a memorisation task and every adapter gets a
//! gradient, with and without gradient checkpointing.

use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use candle_lm::backward::loss_and_grads;
use candle_lm::data::{Tokenized, make_batch};
use candle_lm::load::{LoadOptions, Loaded, load_dir};
use candle_lm::lora::{LoraConfig, LoraSet};
use candle_lm::model::CausalLm;
use candle_lm::train::{Checkpoints, TrainConfig, Trainer};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::support::{load, max_abs_diff, random_ids, tiny_model};

fn lora_set() -> LoraSet {
    LoraSet::new(LoraConfig { r: 8, alpha: 16.0, dropout: 0.05, target_modules: vec![] }, 1).unwrap()
}

fn load_bf16(dir: &Path, set: &LoraSet) -> Loaded {
    let opts = LoadOptions { dtype: DType::BF16, device: Device::Cpu, trainable: false };
    load_dir(dir, &opts, Some(set)).unwrap()
}

fn sorted_vars(set: &LoraSet) -> Vec<(String, Var)> {
    let mut vars: Vec<(String, Var)> =
        set.vars().data().lock().unwrap().iter().map(|(n, v)| (n.clone(), v.clone())).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// Four random sequences, every token after the first a target.
fn memorise() -> Vec<Tokenized> {
    let ids = random_ids(4, 10, 61, 6).to_vec2::<u32>().unwrap();
    ids.into_iter()
        .enumerate()
        .map(|(i, ids)| Tokenized { id: i.to_string(), loss: (0..ids.len()).map(|j| j > 0).collect(), ids })
        .collect()
}

#[test]
fn bf16_forward_gives_f32_gradients_to_f32_adapters() {
    let (dir, _, _) = tiny_model("llama", false, 41);
    let set = lora_set();
    let loaded = load_bf16(dir.path(), &set);
    let ids = random_ids(2, 9, 61, 3);
    let logits = loaded.decoder.forward(&ids, None).unwrap();
    assert_eq!(logits.dtype(), DType::F32, "logits are upcast for the loss");
    let f32_logits = load(dir.path(), false, None).decoder.forward(&ids, None).unwrap();
    assert!(max_abs_diff(&logits, &f32_logits) > 0.0, "the forward did not run in bf16");

    // Random B, so that every A gets a non-zero gradient too.
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    for (name, var) in sorted_vars(&set) {
        assert_eq!(var.dtype(), DType::F32, "`{name}`");
        if name.contains("lora_B") {
            let values: Vec<f32> = (0..var.elem_count()).map(|_| rng.random_range(-0.3..0.3)).collect();
            var.set(&Tensor::from_vec(values, var.shape(), &Device::Cpu).unwrap()).unwrap();
        }
    }
    let examples = memorise();
    let batch = make_batch(&examples.iter().collect::<Vec<_>>(), &Device::Cpu).unwrap().unwrap();
    let vars = sorted_vars(&set);
    let (plain_loss, plain) = loss_and_grads(&loaded.decoder, &batch, 36.0, &vars, None, false).unwrap();
    let (ckpt_loss, ckpt) = loss_and_grads(&loaded.decoder, &batch, 36.0, &vars, None, true).unwrap();
    assert!(plain_loss.is_finite() && (plain_loss - ckpt_loss).abs() <= 1e-3 * plain_loss, "{plain_loss} {ckpt_loss}");
    for ((name, _), (p, c)) in vars.iter().zip(plain.iter().zip(&ckpt)) {
        assert_eq!((p.dtype(), c.dtype()), (DType::F32, DType::F32), "`{name}`");
        let norm = p.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert!(norm > 0.0, "`{name}` has a zero gradient");
        // bf16 activations: the two paths may round differently, relative to the gradient's size.
        assert!(max_abs_diff(p, c) <= 0.05 * norm, "`{name}`: {} vs norm {norm}", max_abs_diff(p, c));
    }
}

fn train_bf16(checkpointing: bool) {
    let (dir, _, _) = tiny_model("llama", false, 42);
    let set = lora_set();
    let loaded = load_bf16(dir.path(), &set);
    let trainer =
        Trainer { model: &loaded.decoder, params: set.vars(), dropout: Some(set.dropout()), device: &Device::Cpu };
    let cfg = TrainConfig {
        lr: 1e-2,
        micro_batch: 2,
        grad_accum: 1,
        max_grad_norm: Some(1.0),
        max_steps: Some(40),
        checkpoint_every: Some(20),
        gradient_checkpointing: checkpointing,
        ..TrainConfig::default()
    };
    let ckpt = dir.path().join("ckpt");
    let log = |_: &str| {};
    let checkpoints = Checkpoints { dir: &ckpt, log: &log };
    let history = trainer
        .run_checkpointed(&memorise(), &cfg, &dir.path().join("m.jsonl"), Some(&checkpoints), &mut |_, _| {}, &|| false)
        .unwrap();
    let losses: Vec<f32> = history.iter().map(|m| m.loss).collect();
    let first = (losses[0] + losses[1]) / 2.0;
    let last = (losses[38] + losses[39]) / 2.0;
    eprintln!("bf16, checkpointing {checkpointing}: loss {first} → {last}");
    assert!(last < 0.5 * first, "checkpointing {checkpointing}: loss {first} → {last}: {losses:?}");
    for (name, var) in sorted_vars(&set) {
        assert_eq!(var.dtype(), DType::F32, "`{name}` after training");
    }
    let saved = ckpt.join("step-000000040");
    for file in ["params.safetensors", "optimizer.safetensors"] {
        let tensors = candle_core::safetensors::load(saved.join(file), &Device::Cpu).unwrap();
        assert!(!tensors.is_empty());
        assert!(tensors.values().all(|t| t.dtype() == DType::F32), "{file} holds non-f32 tensors");
    }
}

#[test]
fn bf16_lora_memorises() {
    train_bf16(false);
}

#[test]
fn bf16_lora_memorises_with_gradient_checkpointing() {
    train_bf16(true);
}
