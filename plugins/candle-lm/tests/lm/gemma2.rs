//! Gemma-2: logits equal candle-transformers' at every position (soft caps, `query_pre_attn_scalar`, an explicit
//! `head_dim`), even layers slide and odd layers attend globally, the KV cache changes nothing past the window,
//! every parameter trains, LoRA reaches every linear layer, and an HF `config.json` parses.
//!
//! candle-transformers' Gemma-2 differs from HF (see `src/model/gemma2.rs`); the reference is brought in line
//! with HF by rescaling `q_proj` (for `query_pre_attn_scalar`), by silencing one layer at a time (for the
//! alternation) and by a window one shorter (its window admits one more position).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_lm::lora::{LoraConfig, LoraSet};
use candle_lm::model::{CausalLm, KvCache, ModelConfig};
use candle_nn::VarBuilder;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::support::{load, max_abs_diff, random_ids, write_model};

const TOLERANCE: f32 = 1e-4;
const HEAD_DIM: usize = 16;
const QUERY_PRE_ATTN_SCALAR: usize = 24;

/// A tiny Gemma-2 `config.json` as HF writes it (extra fields included): GQA 4/2, a head width that is not
/// `hidden_size / heads`, a `query_pre_attn_scalar` that is not `head_dim`, and caps small enough to bite.
pub(crate) fn tiny_config(layers: usize, window: usize) -> serde_json::Value {
    serde_json::json!({
        "architectures": ["Gemma2ForCausalLM"],
        "model_type": "gemma2",
        "attention_bias": false,
        "attention_dropout": 0.0,
        "attn_logit_softcapping": 2.0,
        "final_logit_softcapping": 8.0,
        "bos_token_id": 2,
        "eos_token_id": 1,
        "pad_token_id": 0,
        "cache_implementation": "hybrid",
        "head_dim": HEAD_DIM,
        "hidden_act": "gelu_pytorch_tanh",
        "hidden_activation": "gelu_pytorch_tanh",
        "hidden_size": 32,
        "initializer_range": 0.02,
        "intermediate_size": 48,
        "max_position_embeddings": 64,
        "num_attention_heads": 4,
        "num_hidden_layers": layers,
        "num_key_value_heads": 2,
        "query_pre_attn_scalar": QUERY_PRE_ATTN_SCALAR,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "sliding_window": window,
        "torch_dtype": "float32",
        "use_cache": true,
        "vocab_size": 61,
    })
}

/// Random weights under HF names (tied head: no `lm_head.weight`); norms stored as `scale - 1`, around 0.
pub(crate) fn random_weights(layers: usize, seed: u64) -> HashMap<String, Tensor> {
    let (v, h, i) = (61, 32, 48);
    let (q, kv) = (4 * HEAD_DIM, 2 * HEAD_DIM);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = HashMap::new();
    let mut put = |name: String, shape: &[usize], spread: f32| {
        let count: usize = shape.iter().product();
        let values: Vec<f32> = (0..count).map(|_| rng.random_range(-spread..spread)).collect();
        out.insert(name, Tensor::from_vec(values, shape, &Device::Cpu).unwrap());
    };
    put("model.embed_tokens.weight".into(), &[v, h], 1.0);
    put("model.norm.weight".into(), &[h], 0.3);
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        for norm in
            ["input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm"]
        {
            put(format!("{p}.{norm}.weight"), &[h], 0.3);
        }
        for (name, out_dim, in_dim) in [("q_proj", q, h), ("k_proj", kv, h), ("v_proj", kv, h), ("o_proj", h, q)] {
            put(format!("{p}.self_attn.{name}.weight"), &[out_dim, in_dim], 0.3);
        }
        for (name, out_dim, in_dim) in [("gate_proj", i, h), ("up_proj", i, h), ("down_proj", h, i)] {
            put(format!("{p}.mlp.{name}.weight"), &[out_dim, in_dim], 0.3);
        }
    }
    out
}

/// Makes layer `l` the identity: with `o_proj` and `down_proj` zero, both post-norms output zero.
fn silence_layer(weights: &mut HashMap<String, Tensor>, l: usize) {
    for name in [format!("model.layers.{l}.self_attn.o_proj.weight"), format!("model.layers.{l}.mlp.down_proj.weight")]
    {
        let w = weights[&name].zeros_like().unwrap();
        weights.insert(name, w);
    }
}

fn model_dir(config: &serde_json::Value, weights: &HashMap<String, Tensor>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), config, weights);
    dir
}

/// candle-transformers' logits for each prefix of `ids` (it returns only the last position), on `weights` with
/// `q_proj` rescaled so its `1/sqrt(head_dim)` equals HF's `1/sqrt(query_pre_attn_scalar)`, every layer windowed
/// by `reference_window` in its convention.
fn reference(
    config: &serde_json::Value,
    weights: &HashMap<String, Tensor>,
    reference_window: Option<usize>,
    ids: &Tensor,
) -> Tensor {
    let mut config = config.clone();
    config["sliding_window"] = serde_json::json!(reference_window);
    let ct_cfg: candle_transformers::models::gemma2::Config = serde_json::from_value(config).unwrap();
    let q_scale = (HEAD_DIM as f64 / QUERY_PRE_ATTN_SCALAR as f64).sqrt();
    let weights: HashMap<String, Tensor> = weights
        .iter()
        .map(|(n, w)| (n.clone(), if n.ends_with("q_proj.weight") { (w * q_scale).unwrap() } else { w.clone() }))
        .collect();
    let vb = VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
    let mut model = candle_transformers::models::gemma2::Model::new(false, &ct_cfg, vb).unwrap();
    let len = ids.dim(1).unwrap();
    let rows: Vec<Tensor> = (1..=len)
        .map(|t| {
            model.clear_kv_cache();
            model.forward(&ids.narrow(1, 0, t).unwrap(), 0).unwrap().i((.., 0, ..)).unwrap()
        })
        .collect();
    Tensor::stack(&rows, 1).unwrap()
}

fn ours(dir: &Path, ids: &Tensor) -> Tensor {
    load(dir, false, None).decoder.forward(ids, None).unwrap()
}

fn assert_close(got: &Tensor, expected: &Tensor, what: &str) {
    let diff = max_abs_diff(got, expected);
    assert!(diff <= TOLERANCE, "{what}: max |Δlogits| = {diff}");
    // The check is only meaningful if the logits vary: a constant output would match anything constant.
    let spread = got.flatten_all().unwrap().var(0).unwrap().to_scalar::<f32>().unwrap();
    assert!(spread > 0.1, "{what}: logits barely vary ({spread}); the comparison would prove nothing");
}

#[test]
fn gemma2_matches_candle_transformers_within_the_window() {
    // 9 positions, window 16: no layer's window is reached, so the reference's all-layer window is moot.
    let config = tiny_config(2, 16);
    let weights = random_weights(2, 7);
    let dir = model_dir(&config, &weights);
    let ids = random_ids(2, 9, 61, 3);
    assert_close(&ours(dir.path(), &ids), &reference(&config, &weights, Some(15), &ids), "gemma2");
}

#[test]
fn gemma2_even_layers_slide_and_odd_layers_attend_globally() {
    // 11 positions, window 4. HF's window 4 (i - j < 4) is candle-transformers' 3 (i - j <= 3).
    let config = tiny_config(2, 4);
    let ids = random_ids(2, 11, 61, 5);

    // Only layer 0 acts: it must be windowed.
    let mut weights = random_weights(2, 9);
    silence_layer(&mut weights, 1);
    let dir = model_dir(&config, &weights);
    let got = ours(dir.path(), &ids);
    assert_close(&got, &reference(&config, &weights, Some(3), &ids), "layer 0 windowed");
    let unwindowed = max_abs_diff(&got, &reference(&config, &weights, None, &ids));
    assert!(unwindowed > 1e-2, "the window changes nothing at this length ({unwindowed}); the test proves nothing");

    // Only layer 1 acts: it must see every earlier position.
    let mut weights = random_weights(2, 9);
    silence_layer(&mut weights, 0);
    let dir = model_dir(&config, &weights);
    assert_close(&ours(dir.path(), &ids), &reference(&config, &weights, None, &ids), "layer 1 global");
}

#[test]
fn gemma2_kv_cache_gives_the_same_logits_past_the_window() {
    let config = tiny_config(2, 3);
    let dir = model_dir(&config, &random_weights(2, 13));
    let model = load(dir.path(), false, None).decoder;
    let ids = random_ids(1, 9, 61, 9);
    let full = model.forward(&ids, None).unwrap();
    let mut cache = KvCache::new();
    // A prompt of 4 (already past the window), then one token at a time, as generation does.
    let mut parts = vec![model.forward(&ids.narrow(1, 0, 4).unwrap(), Some(&mut cache)).unwrap()];
    for t in 4..9 {
        parts.push(model.forward(&ids.narrow(1, t, 1).unwrap(), Some(&mut cache)).unwrap());
    }
    assert_eq!(cache.len(), 9);
    let diff = max_abs_diff(&full, &Tensor::cat(&parts, 1).unwrap());
    assert!(diff <= TOLERANCE, "cached vs full: max |Δlogits| = {diff}");
}

#[test]
fn every_gemma2_parameter_gets_a_gradient() {
    let dir = model_dir(&tiny_config(2, 4), &random_weights(2, 21));
    let loaded = load(dir.path(), true, None);
    let ids = random_ids(2, 7, 61, 2);
    let logits = loaded.decoder.forward(&ids, None).unwrap();
    let logits = logits.narrow(1, 0, 6).unwrap().flatten_to(1).unwrap();
    let targets = ids.narrow(1, 1, 6).unwrap().flatten_all().unwrap();
    let loss = candle_nn::loss::cross_entropy(&logits, &targets).unwrap();
    let grads = loss.backward().unwrap();
    let data = loaded.params.data().lock().unwrap();
    // 2 layers × (4 norms + 7 linear) + embedding + final norm; the tied head adds nothing.
    assert_eq!(data.len(), 24);
    let mut missing: Vec<&String> = data
        .iter()
        .filter(|(_, var)| {
            grads.get(var).is_none_or(|g| g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() == 0.0)
        })
        .map(|(name, _)| name)
        .collect();
    missing.sort();
    assert!(missing.is_empty(), "gemma2: no gradient for {missing:?}");
}

#[test]
fn gemma2_lora_targets_every_linear_layer_and_starts_as_the_base() {
    let dir = model_dir(&tiny_config(2, 4), &random_weights(2, 1));
    let cfg = LoraConfig { r: 4, alpha: 8.0, dropout: 0.0, target_modules: Vec::new() };
    let set = LoraSet::new(cfg, 42).unwrap();
    let adapted = load(dir.path(), false, Some(&set)).decoder;
    let mut modules = set.modules();
    modules.sort();
    let mut expected: Vec<String> = (0..2)
        .flat_map(|l| {
            ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"]
                .into_iter()
                .chain(["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"])
                .map(move |m| format!("model.layers.{l}.{m}"))
        })
        .collect();
    expected.sort();
    assert_eq!(modules, expected);
    // B starts at zero, so the adapted model computes the base model's logits.
    let ids = random_ids(1, 6, 61, 4);
    let diff = max_abs_diff(&adapted.forward(&ids, None).unwrap(), &ours(dir.path(), &ids));
    assert!(diff == 0.0, "fresh adapters changed the logits by {diff}");
}

#[test]
fn gemma2_config_parses_from_hf_json() {
    let text = tiny_config(2, 4).to_string();
    let ModelConfig::Gemma2(cfg) = ModelConfig::parse(Path::new("config.json"), &text).unwrap() else {
        panic!("not parsed as gemma2");
    };
    assert_eq!((cfg.vocab_size, cfg.hidden_size, cfg.head_dim, cfg.num_kv_heads()), (61, 32, HEAD_DIM, 2));
    assert_eq!(cfg.query_pre_attn_scalar, QUERY_PRE_ATTN_SCALAR as f64);
    assert_eq!((cfg.attn_logit_softcapping, cfg.final_logit_softcapping), (Some(2.0), Some(8.0)));
    assert_eq!(cfg.sliding_window, Some(4));
    assert!(cfg.tie_word_embeddings);
    assert_eq!((0..4).map(|i| cfg.is_sliding(i)).collect::<Vec<_>>(), [true, false, true, false]);

    // HF's defaults apply to absent fields, null disables a cap, and `architectures` alone identifies the family.
    let mut minimal = tiny_config(2, 4);
    let obj = minimal.as_object_mut().unwrap();
    for key in ["model_type", "attn_logit_softcapping", "query_pre_attn_scalar", "sliding_window", "head_dim"] {
        obj.remove(key);
    }
    obj.insert("final_logit_softcapping".into(), serde_json::Value::Null);
    let ModelConfig::Gemma2(cfg) = ModelConfig::parse(Path::new("config.json"), &minimal.to_string()).unwrap() else {
        panic!("not parsed as gemma2 from `architectures`");
    };
    assert_eq!((cfg.attn_logit_softcapping, cfg.final_logit_softcapping), (Some(50.0), None));
    assert_eq!((cfg.query_pre_attn_scalar, cfg.sliding_window, cfg.head_dim), (256.0, Some(4096), 256));

    // Newer transformers list the layer kinds explicitly; a wrong count is refused, naming the field.
    let mut typed = tiny_config(2, 4);
    typed["layer_types"] = serde_json::json!(["full_attention", "sliding_attention"]);
    let ModelConfig::Gemma2(cfg) = ModelConfig::parse(Path::new("config.json"), &typed.to_string()).unwrap() else {
        panic!("not parsed as gemma2");
    };
    assert_eq!((cfg.is_sliding(0), cfg.is_sliding(1)), (false, true));
    typed["layer_types"] = serde_json::json!(["sliding_attention"]);
    let err = ModelConfig::parse(Path::new("config.json"), &typed.to_string()).unwrap_err();
    assert!(err.to_string().contains("`layer_types`"), "{err}");
}
