//! LoRA: only the adapters train, the base stays bit-identical, merging reproduces base + adapter, and the saved
//! files have PEFT's names and shapes.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_lm::data::Tokenized;
use candle_lm::load::{LoadOptions, load_tensors};
use candle_lm::lora::{LoraConfig, LoraSet};
use candle_lm::model::{CausalLm, ModelConfig};
use candle_lm::train::{TrainConfig, Trainer};

use crate::support::{load, max_abs_diff, random_ids, tiny_model};

fn lora_set(dropout: f64, targets: &[&str]) -> LoraSet {
    let cfg = LoraConfig { r: 4, alpha: 8.0, dropout, target_modules: targets.iter().map(|s| s.to_string()).collect() };
    LoraSet::new(cfg, 42).unwrap()
}

/// Examples of random tokens, every token after the first a target.
fn random_examples(n: usize, len: usize, seed: u64) -> Vec<Tokenized> {
    let ids = random_ids(n, len, 61, seed).to_vec2::<u32>().unwrap();
    ids.into_iter()
        .enumerate()
        .map(|(i, ids)| Tokenized { id: i.to_string(), loss: (0..ids.len()).map(|j| j > 0).collect(), ids })
        .collect()
}

fn quick_config(steps: usize) -> TrainConfig {
    TrainConfig {
        lr: 1e-2,
        micro_batch: 2,
        grad_accum: 1,
        max_steps: Some(steps),
        max_grad_norm: None,
        ..Default::default()
    }
}

fn train(model: &dyn CausalLm, set: &LoraSet, steps: usize) -> Vec<f32> {
    let dir = tempfile::tempdir().unwrap();
    let trainer = Trainer { model, params: set.vars(), dropout: Some(set.dropout()), device: &Device::Cpu };
    let metrics = trainer
        .run(
            &random_examples(4, 10, 3),
            &quick_config(steps),
            &dir.path().join("metrics.jsonl"),
            &mut |_, _| {},
            &|| false,
        )
        .unwrap();
    metrics.iter().map(|m| m.loss).collect()
}

#[test]
fn default_targets_are_all_linear_layers_but_the_head() {
    let (dir, _, _) = tiny_model("llama", false, 1);
    let set = lora_set(0.0, &[]);
    let _model = load(dir.path(), false, Some(&set));
    let modules = set.modules();
    assert_eq!(modules.len(), 2 * 7, "{modules:?}");
    assert!(modules.iter().all(|m| !m.contains("lm_head")));
    assert_eq!(set.vars().all_vars().len(), 2 * 7 * 2);
}

#[test]
fn fresh_adapter_leaves_the_output_unchanged() {
    let (dir, _, _) = tiny_model("qwen2", false, 2);
    let ids = random_ids(1, 6, 61, 1);
    let base = load(dir.path(), false, None).decoder.forward(&ids, None).unwrap();
    let set = lora_set(0.0, &[]);
    let adapted = load(dir.path(), false, Some(&set)).decoder.forward(&ids, None).unwrap();
    assert_eq!(max_abs_diff(&base, &adapted), 0.0, "B starts at zero, so the update must be exactly zero");
}

#[test]
fn only_adapters_change_and_the_loss_falls() {
    let (dir, _, weights) = tiny_model("llama", false, 3);
    let set = lora_set(0.1, &[]);
    // Load the base as Vars so we can look at them after training; the trainer only receives the adapters.
    let loaded = load(dir.path(), true, Some(&set));
    let before: HashMap<String, Tensor> =
        set.vars().data().lock().unwrap().iter().map(|(n, v)| (n.clone(), v.as_tensor().copy().unwrap())).collect();
    let losses = train(&loaded.decoder, &set, 25);
    assert!(losses.last().unwrap() < &(0.7 * losses[0]), "{losses:?}");
    for (name, var) in loaded.params.data().lock().unwrap().iter() {
        assert_eq!(max_abs_diff(var.as_tensor(), &weights[name]), 0.0, "base weight `{name}` changed");
    }
    for (name, var) in set.vars().data().lock().unwrap().iter() {
        assert!(max_abs_diff(var.as_tensor(), &before[name]) > 0.0, "adapter `{name}` did not change");
    }
}

#[test]
fn merged_weights_give_the_adapted_logits() {
    let (dir, config, weights) = tiny_model("qwen2", true, 4);
    let set = lora_set(0.0, &["q_proj", "v_proj", "down_proj"]);
    let loaded = load(dir.path(), false, Some(&set));
    train(&loaded.decoder, &set, 5);
    let ids = random_ids(2, 7, 61, 8);
    let adapted = loaded.decoder.forward(&ids, None).unwrap();
    let merged = set.merge(&weights).unwrap();
    let cfg = ModelConfig::parse(std::path::Path::new("config.json"), &config.to_string()).unwrap();
    let merged_model = load_tensors(cfg, merged, &LoadOptions::default(), None).unwrap().decoder;
    let diff = max_abs_diff(&adapted, &merged_model.forward(&ids, None).unwrap());
    assert!(diff <= 1e-4, "merged vs adapted: {diff}");
    // And the adapters did something, so the equality is not the trivial one.
    let base = load(dir.path(), false, None).decoder.forward(&ids, None).unwrap();
    assert!(max_abs_diff(&adapted, &base) > 1e-2);
}

#[test]
fn peft_files_have_peft_names_and_shapes() {
    let (dir, _, _) = tiny_model("llama", false, 5);
    let set = lora_set(0.1, &[]);
    let _model = load(dir.path(), false, Some(&set));
    let out = tempfile::tempdir().unwrap();
    set.save_peft(out.path(), "tiny-llama").unwrap();
    let tensors = candle_core::safetensors::load(out.path().join("adapter_model.safetensors"), &Device::Cpu).unwrap();
    let a = &tensors["base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight"];
    let b = &tensors["base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight"];
    assert_eq!((a.dims(), b.dims()), (&[4, 32][..], &[16, 4][..]));
    assert_eq!(a.dtype(), DType::F32);
    assert_eq!(tensors.len(), 28);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["r"], 4);
    assert_eq!(config["lora_alpha"], 8.0);
    assert_eq!(config["target_modules"].as_array().unwrap().len(), 7);
    assert_eq!(config["base_model_name_or_path"], "tiny-llama");
}

#[test]
fn invalid_lora_configs_are_rejected() {
    assert!(LoraSet::new(LoraConfig { r: 0, ..Default::default() }, 0).is_err());
    assert!(LoraSet::new(LoraConfig { dropout: 1.0, ..Default::default() }, 0).is_err());
}
