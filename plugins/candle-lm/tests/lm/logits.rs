//! Our decoders compute what candle-transformers' inference models compute, at every position, on the same
//! random weights; and the KV cache changes nothing.

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_lm::model::{CausalLm, KvCache};
use candle_nn::VarBuilder;

use crate::support::{load, max_abs_diff, random_ids, tiny_model};

const TOLERANCE: f32 = 1e-4;

/// Logits of the last position of each prefix of `ids`, from a reference that only returns the last one.
fn reference_per_prefix(ids: &Tensor, mut last_logits: impl FnMut(&Tensor) -> Tensor) -> Tensor {
    let len = ids.dim(1).unwrap();
    let rows: Vec<Tensor> = (1..=len).map(|t| last_logits(&ids.narrow(1, 0, t).unwrap())).collect();
    Tensor::stack(&rows, 1).unwrap()
}

fn check_llama(model_type: &str, tie: bool, rope_scaling: Option<serde_json::Value>) {
    let (dir, mut config, weights) = tiny_model(model_type, tie, 7);
    if let Some(scaling) = rope_scaling {
        config["rope_scaling"] = scaling;
        std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    }
    let ours = load(dir.path(), false, None);
    let ids = random_ids(2, 9, 61, 3);
    let got = ours.decoder.forward(&ids, None).unwrap();

    let ct_cfg: candle_transformers::models::llama::LlamaConfig = serde_json::from_value(config).unwrap();
    let ct_cfg = ct_cfg.into_config(false);
    let vb = VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
    let reference = candle_transformers::models::llama::Llama::load(vb, &ct_cfg).unwrap();
    let expected = reference_per_prefix(&ids, |prefix| {
        let mut cache =
            candle_transformers::models::llama::Cache::new(false, DType::F32, &ct_cfg, &Device::Cpu).unwrap();
        reference.forward(prefix, 0, &mut cache).unwrap()
    });
    let diff = max_abs_diff(&got, &expected);
    assert!(diff <= TOLERANCE, "{model_type} (tied {tie}): max |Δlogits| = {diff}");
    // The check is only meaningful if the logits vary: a constant output would match anything constant.
    let spread = got.flatten_all().unwrap().var(0).unwrap().to_scalar::<f32>().unwrap();
    assert!(spread > 0.1, "logits barely vary ({spread}); the comparison would prove nothing");
}

#[test]
fn llama_matches_candle_transformers() {
    check_llama("llama", false, None);
}

#[test]
fn llama_tied_matches_candle_transformers() {
    check_llama("llama", true, None);
}

#[test]
fn llama3_rope_scaling_matches_candle_transformers() {
    let scaling = serde_json::json!({
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8
    });
    check_llama("llama", false, Some(scaling));
}

#[test]
fn mistral_matches_candle_transformers_llama() {
    // Mistral's decoder is Llama's; only the model_type differs (its window is far beyond these lengths).
    check_llama("mistral", false, None);
}

fn check_qwen2(tie: bool) {
    let (dir, config, weights) = tiny_model("qwen2", tie, 11);
    let ours = load(dir.path(), false, None);
    let ids = random_ids(2, 9, 61, 5);
    let got = ours.decoder.forward(&ids, None).unwrap();

    let ct_cfg: candle_transformers::models::qwen2::Config = serde_json::from_value(config).unwrap();
    let vb = VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
    let mut reference = candle_transformers::models::qwen2::ModelForCausalLM::new(&ct_cfg, vb).unwrap();
    let expected = reference_per_prefix(&ids, |prefix| {
        reference.clear_kv_cache();
        reference.forward(prefix, 0).unwrap().i((.., 0, ..)).unwrap()
    });
    let diff = max_abs_diff(&got, &expected);
    assert!(diff <= TOLERANCE, "qwen2 (tied {tie}): max |Δlogits| = {diff}");
}

#[test]
fn qwen2_matches_candle_transformers() {
    check_qwen2(false);
}

#[test]
fn qwen2_tied_matches_candle_transformers() {
    check_qwen2(true);
}

#[test]
fn kv_cache_gives_the_same_logits_as_a_full_forward() {
    let (dir, _, _) = tiny_model("qwen2", false, 13);
    let model = load(dir.path(), false, None).decoder;
    let ids = random_ids(1, 8, 61, 9);
    let full = model.forward(&ids, None).unwrap();
    let mut cache = KvCache::new();
    // A prompt of 5, then one token at a time, as generation does.
    let mut parts = vec![model.forward(&ids.narrow(1, 0, 5).unwrap(), Some(&mut cache)).unwrap()];
    for t in 5..8 {
        parts.push(model.forward(&ids.narrow(1, t, 1).unwrap(), Some(&mut cache)).unwrap());
    }
    assert_eq!(cache.len(), 8);
    let incremental = Tensor::cat(&parts, 1).unwrap();
    let diff = max_abs_diff(&full, &incremental);
    assert!(diff <= TOLERANCE, "cached vs full: max |Δlogits| = {diff}");
}

#[test]
fn bf16_and_f16_stay_close_to_f32() {
    let (dir, _, _) = tiny_model("llama", false, 17);
    let ids = random_ids(1, 6, 61, 1);
    let f32_logits = load(dir.path(), false, None).decoder.forward(&ids, None).unwrap();
    for dtype in [DType::BF16, DType::F16] {
        let opts = candle_lm::load::LoadOptions { dtype, device: Device::Cpu, trainable: false };
        let model = candle_lm::load::load_dir(dir.path(), &opts, None).unwrap().decoder;
        let logits = model.forward(&ids, None).unwrap();
        assert_eq!(logits.dtype(), DType::F32, "logits are returned in f32 whatever the model dtype");
        let diff = max_abs_diff(&f32_logits, &logits);
        // Half precision keeps ~3 significant digits; logits here are O(10).
        assert!(diff < 0.5, "{dtype:?}: max |Δlogits| = {diff}");
    }
}
