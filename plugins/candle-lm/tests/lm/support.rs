//! Tiny random models written to disk the way Hugging Face lays them out, so tests exercise the real loader.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_lm::load::{LoadOptions, Loaded, load_dir};
use candle_lm::lora::LoraSet;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A tiny config of `model_type` (`llama`, `mistral` or `qwen2`) with GQA (4 query heads, 2 kv heads); extra
/// fields make it readable by candle-transformers' configs too.
pub fn tiny_config(model_type: &str, tie: bool) -> serde_json::Value {
    serde_json::json!({
        "model_type": model_type,
        "architectures": [],
        "vocab_size": 61,
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": 64,
        "tie_word_embeddings": tie,
        "hidden_act": "silu",
        "sliding_window": 4096,
        "max_window_layers": 2,
        "use_sliding_window": false,
        "bos_token_id": 1,
        "eos_token_id": 2,
    })
}

/// Random weights for `config` under HF names: linear weights uniform in ±0.3 (large enough that a wrong
/// rotation or mask moves the logits far past the tolerances), norms around 1.
pub fn random_weights(config: &serde_json::Value, seed: u64) -> HashMap<String, Tensor> {
    let n = |k: &str| config[k].as_u64().unwrap() as usize;
    let (v, h, i, layers) = (n("vocab_size"), n("hidden_size"), n("intermediate_size"), n("num_hidden_layers"));
    let d = h / n("num_attention_heads");
    let (q, kv) = (n("num_attention_heads") * d, n("num_key_value_heads") * d);
    let qwen = config["model_type"] == "qwen2";
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = HashMap::new();
    let mut put = |name: String, shape: &[usize], center: f32, spread: f32| {
        let count: usize = shape.iter().product();
        let values: Vec<f32> = (0..count).map(|_| center + rng.random_range(-spread..spread)).collect();
        out.insert(name, Tensor::from_vec(values, shape, &Device::Cpu).unwrap());
    };
    put("model.embed_tokens.weight".into(), &[v, h], 0.0, 1.0);
    put("model.norm.weight".into(), &[h], 1.0, 0.2);
    if !config["tie_word_embeddings"].as_bool().unwrap() {
        put("lm_head.weight".into(), &[v, h], 0.0, 0.3);
    }
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        put(format!("{p}.input_layernorm.weight"), &[h], 1.0, 0.2);
        put(format!("{p}.post_attention_layernorm.weight"), &[h], 1.0, 0.2);
        for (name, out_dim, in_dim) in [("q_proj", q, h), ("k_proj", kv, h), ("v_proj", kv, h), ("o_proj", h, q)] {
            put(format!("{p}.self_attn.{name}.weight"), &[out_dim, in_dim], 0.0, 0.3);
            if qwen && name != "o_proj" {
                put(format!("{p}.self_attn.{name}.bias"), &[out_dim], 0.0, 0.3);
            }
        }
        for (name, out_dim, in_dim) in [("gate_proj", i, h), ("up_proj", i, h), ("down_proj", h, i)] {
            put(format!("{p}.mlp.{name}.weight"), &[out_dim, in_dim], 0.0, 0.3);
        }
    }
    out
}

/// Writes `config.json` and `model.safetensors` into `dir`.
pub fn write_model(dir: &Path, config: &serde_json::Value, weights: &HashMap<String, Tensor>) {
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(config).unwrap()).unwrap();
    candle_core::safetensors::save(weights, dir.join("model.safetensors")).unwrap();
}

/// A random tiny model of `model_type` on disk; returns the dir, the config and the weights.
pub fn tiny_model(
    model_type: &str,
    tie: bool,
    seed: u64,
) -> (tempfile::TempDir, serde_json::Value, HashMap<String, Tensor>) {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(model_type, tie);
    let weights = random_weights(&config, seed);
    write_model(dir.path(), &config, &weights);
    (dir, config, weights)
}

/// Loads `dir` in f32 on the CPU.
pub fn load(dir: &Path, trainable: bool, lora: Option<&LoraSet>) -> Loaded {
    let opts = LoadOptions { dtype: DType::F32, device: Device::Cpu, trainable };
    load_dir(dir, &opts, lora).unwrap()
}

/// Token ids `(batch, len)` from a seeded stream, below `vocab`.
pub fn random_ids(batch: usize, len: usize, vocab: usize, seed: u64) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let ids: Vec<u32> = (0..batch * len).map(|_| rng.random_range(0..vocab as u32)).collect();
    Tensor::from_vec(ids, (batch, len), &Device::Cpu).unwrap()
}

/// Largest absolute difference of two tensors of the same shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}
