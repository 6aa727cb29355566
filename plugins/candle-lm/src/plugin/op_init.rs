//! `init`: a model directory from scratch (config.json, model.safetensors with seeded random weights,
//! tokenizer.json, tokenizer_config.json), for the tiny models the embedded CPU study pre-trains itself.
//!
//! Which tensors exist and their shapes are asked of the decoder itself (it is built once over a recording
//! backend), so `init` can never write a layout the loader would refuse. Each tensor's values come from its own
//! ChaCha stream seeded by the seed and its name: HF's Llama initialisation (normal with `initializer_range`
//! for matrices and embeddings, ones for norms (zeros for Gemma-2, whose norms scale by `1 + weight`), zeros
//! for biases), independent of build order. `model_type` is `llama` (default), `mistral`, `qwen2` or `gemma2`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use api::{Error, OpContext};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Map, Value, json};

use super::files;
use super::params::{GEMMA2_ONLY, InitParams};
use crate::error::LoadError;
use crate::model::{Decoder, ModelConfig};

/// End-of-sequence tokens of common tokenizers, tried in order when neither the study nor the tokenizer's
/// config names one.
const EOS_GUESSES: &[&str] = &["</s>", "<|endoftext|>", "<|end_of_text|>", "<|im_end|>", "<eos>", "<|eot_id|>"];

/// The `config.json` for `p` (defaults filled in), checked by the same parser the loader uses. `vocab` is the
/// tokenizer's size when known (plan time: unknown).
pub(super) fn model_config(
    p: &InitParams,
    vocab: Option<usize>,
    bos: Option<u32>,
    eos: Option<u32>,
) -> Result<(Map<String, Value>, ModelConfig), Error> {
    let mut c = p.config.clone();
    let model_type = c.get("model_type").and_then(Value::as_str).unwrap_or("llama").to_owned();
    let architecture = match model_type.as_str() {
        "llama" => "LlamaForCausalLM",
        "mistral" => "MistralForCausalLM",
        "qwen2" => "Qwen2ForCausalLM",
        "gemma2" => "Gemma2ForCausalLM",
        other => {
            return Err(Error::param(
                &["model_type"],
                format!("unsupported `model_type` `{other}`; supported: {}", crate::model::SUPPORTED),
            ));
        }
    };
    let heads = c.get("num_attention_heads").cloned().unwrap_or(Value::Null);
    if model_type != "gemma2"
        && let Some(k) = GEMMA2_ONLY.iter().find(|k| c.contains_key(**k))
    {
        return Err(Error::param(&[k], format!("`{k}` is a gemma2 field; `model_type` is `{model_type}`")));
    }
    let common = [
        ("model_type", json!(model_type)),
        ("architectures", json!([architecture])),
        ("vocab_size", json!(vocab.unwrap_or(1))),
        ("num_key_value_heads", heads.clone()),
        ("max_position_embeddings", json!(2048)),
        ("rope_theta", json!(10000.0)),
        ("rms_norm_eps", json!(1e-6)),
        ("attention_bias", json!(false)),
        ("initializer_range", json!(p.initializer_range)),
        ("torch_dtype", json!("float32")),
    ];
    for (k, v) in common {
        c.entry(k).or_insert(v);
    }
    if model_type == "gemma2" {
        if c.contains_key("hidden_act") || c.contains_key("mlp_bias") {
            let k = if c.contains_key("hidden_act") { "hidden_act" } else { "mlp_bias" };
            return Err(Error::param(
                &[k],
                format!("gemma2 has no `{k}`{}", if k == "hidden_act" { "; use `hidden_activation`" } else { "" }),
            ));
        }
        // HF's Gemma2Config defaults, except `head_dim` (HF: 256), which follows the width and head count so
        // that a tiny model stays tiny; `query_pre_attn_scalar` follows `head_dim`.
        let head_dim = match (c.get("head_dim").and_then(Value::as_u64), c.get("hidden_size").and_then(Value::as_u64)) {
            (Some(d), _) => d,
            (None, Some(h)) => h / heads.as_u64().filter(|n| *n > 0).unwrap_or(1),
            (None, None) => 256,
        };
        let gemma = [
            ("head_dim", json!(head_dim)),
            ("query_pre_attn_scalar", json!(head_dim as f64)),
            ("hidden_activation", json!("gelu_pytorch_tanh")),
            ("attn_logit_softcapping", json!(50.0)),
            ("final_logit_softcapping", json!(30.0)),
            ("sliding_window", json!(4096)),
            ("tie_word_embeddings", json!(true)),
        ];
        for (k, v) in gemma {
            c.entry(k).or_insert(v);
        }
        // TOML has no null: a cap of 0 switches capping off.
        for k in ["attn_logit_softcapping", "final_logit_softcapping"] {
            if c.get(k).and_then(Value::as_f64) == Some(0.0) {
                c.insert(k.into(), Value::Null);
            }
        }
    } else {
        for (k, v) in [("tie_word_embeddings", json!(false)), ("hidden_act", json!("silu")), ("mlp_bias", json!(false))]
        {
            c.entry(k).or_insert(v);
        }
    }
    if model_type == "qwen2" {
        c.entry("use_sliding_window").or_insert(json!(false));
    }
    if let Some(b) = bos {
        c.insert("bos_token_id".into(), json!(b));
    }
    if let Some(e) = eos {
        c.insert("eos_token_id".into(), json!(e));
    }
    let text = serde_json::to_string(&c)?;
    let parsed = ModelConfig::parse(Path::new("params"), &text).map_err(|e| match e {
        LoadError::InvalidConfig { message, .. } | LoadError::Json { message, .. } => {
            let field = message.split('`').nth(1).filter(|f| c.contains_key(*f)).map(str::to_owned);
            let path: Vec<&str> = field.iter().map(String::as_str).collect();
            Error::param(&path, message)
        }
        other => Error::param(&[], other.to_string()),
    })?;
    Ok((c, parsed))
}

/// Records the name and shape of every tensor the decoder asks for, answering with zeros.
#[derive(Clone, Default)]
struct Shapes(Arc<Mutex<BTreeMap<String, Vec<usize>>>>);

impl SimpleBackend for Shapes {
    fn get(&self, s: Shape, name: &str, _: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_owned(), s.dims().to_vec());
        Tensor::zeros(s, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("`init` cannot create `{name}`: the decoder gave no shape for it")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        false
    }
}

/// FNV-1a of a tensor name: a per-tensor seed that is stable across platforms and Rust versions.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// The initial values of tensor `name`. `norm` is the RMSNorm weights' value: 1, or 0 for Gemma-2, whose norms
/// scale by `1 + weight` (HF initialises them to zeros).
fn init_values(name: &str, count: usize, seed: u64, std: f64, norm: f32) -> Vec<f32> {
    if name.ends_with("norm.weight") {
        return vec![norm; count];
    }
    if name.ends_with(".bias") {
        return vec![0.0; count];
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ fnv1a(name.as_bytes()));
    // Box–Muller: two uniforms give a standard normal; 1 - u keeps the logarithm's argument in (0, 1].
    (0..count)
        .map(|_| {
            let u1: f64 = 1.0 - rng.random::<f64>();
            let u2: f64 = rng.random::<f64>();
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos() * std) as f32
        })
        .collect()
}

/// A special token: its text and id.
type Special = (String, u32);

/// Picks the bos/eos texts: the study's, else the tokenizer config's, else (eos only) a well-known name the
/// tokenizer has. Each must be a token of the tokenizer.
fn special_tokens(
    p: &InitParams,
    tokenizer: &tokenizers::Tokenizer,
    tok_config: Option<&Map<String, Value>>,
) -> Result<(Option<Special>, Option<Special>), Error> {
    let resolve = |given: &Option<String>, key: &str| -> Result<Option<Special>, Error> {
        if let Some(text) = given {
            return match tokenizer.token_to_id(text) {
                Some(id) => Ok(Some((text.clone(), id))),
                None => Err(Error::param(&[key], format!("`{text}` is not a token of the tokenizer"))),
            };
        }
        let from_config = files::token_text(tok_config.and_then(|c| c.get(key)));
        Ok(from_config.and_then(|t| tokenizer.token_to_id(&t).map(|id| (t, id))))
    };
    let bos = resolve(&p.bos_token, "bos_token")?;
    let mut eos = resolve(&p.eos_token, "eos_token")?;
    if eos.is_none() {
        eos = EOS_GUESSES.iter().find_map(|t| tokenizer.token_to_id(t).map(|id| (t.to_string(), id)));
    }
    Ok((bos, eos))
}

/// Runs `init`.
pub(super) fn run(p: &InitParams, ctx: &mut OpContext<'_>) -> Result<Value, Error> {
    let input = ctx.input("tokenizer")?;
    let tokenizer = files::load_tokenizer(input)?;
    let tok_vocab = tokenizer.get_vocab_size(true);
    let vocab = match p.config.get("vocab_size").and_then(Value::as_u64) {
        Some(v) if (v as usize) < tok_vocab => {
            return Err(Error::param(
                &["vocab_size"],
                format!("`vocab_size` {v} is smaller than the tokenizer's {tok_vocab} tokens"),
            ));
        }
        Some(v) => v as usize,
        None => tok_vocab,
    };
    let tok_config = if input.is_dir() { files::read_object(&input.join("tokenizer_config.json"))? } else { None };
    let (bos, eos) = special_tokens(p, &tokenizer, tok_config.as_ref())?;
    let (config_json, config) = model_config(p, Some(vocab), bos.as_ref().map(|b| b.1), eos.as_ref().map(|e| e.1))?;

    let shapes = Shapes::default();
    let vb = VarBuilder::from_backend(Box::new(shapes.clone()), DType::F32, Device::Cpu);
    Decoder::new(&config, vb, None).map_err(|e| Error::Failed(format!("cannot build the model: {e}")))?;
    let shapes = shapes.0.lock().unwrap_or_else(|e| e.into_inner()).clone();

    let norm = if matches!(config, ModelConfig::Gemma2(_)) { 0.0 } else { 1.0 };
    let mut tensors = BTreeMap::new();
    let mut parameters = 0usize;
    for (i, (name, dims)) in shapes.iter().enumerate() {
        if ctx.cancelled() {
            return Err(Error::Cancelled);
        }
        let count: usize = dims.iter().product();
        parameters += count;
        let values = init_values(name, count, p.seed, p.initializer_range, norm);
        tensors.insert(name.clone(), Tensor::from_vec(values, dims.as_slice(), &Device::Cpu)?);
        ctx.progress(i as u64 + 1, shapes.len() as u64);
    }

    let dir = ctx.out_dir.join("model");
    std::fs::create_dir_all(&dir).map_err(|e| Error::Failed(format!("cannot create `{}`: {e}", dir.display())))?;
    files::write_json(&dir.join("config.json"), &Value::Object(config_json))?;
    files::save_weights(&tensors, &dir.join("model.safetensors"))?;
    let tok_src = files::tokenizer_file(input);
    std::fs::copy(&tok_src, dir.join("tokenizer.json"))
        .map_err(|e| Error::Failed(format!("cannot copy `{}`: {e}", tok_src.display())))?;
    let mut tok_cfg = tok_config.unwrap_or_else(|| {
        let mut m = Map::new();
        m.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
        m
    });
    if let Some((text, _)) = &bos {
        tok_cfg.insert("bos_token".into(), json!(text));
    }
    if let Some((text, _)) = &eos {
        tok_cfg.insert("eos_token".into(), json!(text));
    }
    files::write_json(&dir.join("tokenizer_config.json"), &Value::Object(tok_cfg))?;
    ctx.log(&format!("initialised {} tensors, {parameters} parameters, vocab {vocab}", tensors.len()));
    Ok(json!({
        "bos_token": bos.map(|b| b.0),
        "eos_token": eos.map(|e| e.0),
        "parameters": parameters,
        "tensors": tensors.len(),
        "vocab_size": vocab,
    }))
}
