//! The Llama family decoder: Llama 2/3.x, Mistral, SmolLM and Qwen2/2.5, which differ only in config values
//! (Qwen2: biases on q/k/v; Llama 3: rope scaling; tied or untied head).
//!
//! Paper: Touvron et al. 2023, "LLaMA" (arXiv 2302.13971). Upstream code this mirrors:
//! transformers `models/llama/modeling_llama.py` and `models/qwen2/modeling_qwen2.py`, and candle-transformers
//! `models/llama.rs` and `models/qwen2.rs` (our tests compare logits against the latter two).
//!
//! Unlike candle-transformers, every op here has a backward pass (see [`crate::nn`]), `forward` returns logits
//! for every position (training needs them all) and the KV cache is an explicit argument, not hidden state.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Embedding, VarBuilder};
use serde::Deserialize;

use super::attention::{Attention, Shape};
use crate::lora::{Linear, LoraSet};
use crate::model::{KvCache, Step};
use crate::nn::{Activation, RmsNorm, Rope};

/// The fields of a Llama/Mistral/Qwen2 `config.json` this decoder reads; names as in the file.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    /// Rows of the embedding and of the output head.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP's hidden layer.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention); absent means one per query head.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Per-head width; absent (or null) means `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// Epsilon of every RMSNorm.
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// RoPE base.
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    /// RoPE scaling; only Llama 3's (`rope_type = "llama3"`) and `default` are supported.
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    /// Whether the output head reuses the embedding matrix.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Llama: biases on q, k, v and o.
    #[serde(default)]
    pub attention_bias: bool,
    /// Llama: biases on the MLP's projections.
    #[serde(default)]
    pub mlp_bias: bool,
    /// The MLP's activation.
    #[serde(default = "default_act")]
    pub hidden_act: Activation,
    /// Mistral: attend to at most this many previous positions (null: unlimited).
    #[serde(default)]
    pub sliding_window: Option<usize>,
    /// Qwen2: whether `sliding_window` applies (its configs carry a window they do not use).
    #[serde(default)]
    pub use_sliding_window: Option<bool>,
    /// Qwen2 always has biases on q, k and v (not in its config.json; set from the architecture).
    #[serde(skip)]
    pub qkv_bias: bool,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_theta() -> f64 {
    10_000.0
}
fn default_act() -> Activation {
    Activation::Silu
}

impl Config {
    /// Per-head width.
    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Key/value heads.
    pub fn num_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// The sliding window in effect, if any.
    pub fn window(&self) -> Option<usize> {
        if self.use_sliding_window == Some(false) { None } else { self.sliding_window }
    }

    /// Checks what would otherwise fail deep inside a matmul (or silently compute something else); the
    /// message names the fields.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_kv_heads()),
            ("head_dim", self.head_dim()),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("`{name}` must be positive"));
        }
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "`hidden_size` ({}) is not a multiple of `num_attention_heads` ({})",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !self.num_attention_heads.is_multiple_of(self.num_kv_heads()) {
            return Err(format!(
                "`num_attention_heads` ({}) is not a multiple of `num_key_value_heads` ({})",
                self.num_attention_heads,
                self.num_kv_heads()
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(format!("the head dimension ({}) must be even for RoPE", self.head_dim()));
        }
        if self.window() == Some(0) {
            return Err("`sliding_window` must be positive".into());
        }
        self.inv_freq().map(|_| ())
    }

    /// RoPE inverse frequencies, with Llama 3's wavelength-dependent rescaling when configured.
    fn inv_freq(&self) -> std::result::Result<Vec<f32>, String> {
        let base = Rope::default_inv_freq(self.rope_theta, self.head_dim());
        let Some(scaling) = self.rope_scaling.as_ref().filter(|v| !v.is_null()) else { return Ok(base) };
        let kind = scaling.get("rope_type").or_else(|| scaling.get("type")).and_then(|v| v.as_str());
        match kind {
            Some("default") => Ok(base),
            Some("llama3") => {
                let num = |k: &str| {
                    scaling.get(k).and_then(|v| v.as_f64()).ok_or(format!("`rope_scaling.{k}` must be a number"))
                };
                let (factor, low, high) = (num("factor")?, num("low_freq_factor")?, num("high_freq_factor")?);
                let original = num("original_max_position_embeddings")?;
                if high <= low {
                    return Err("`rope_scaling.high_freq_factor` must exceed `low_freq_factor`".into());
                }
                let (low_wavelen, high_wavelen) = (original / low, original / high);
                Ok(base
                    .into_iter()
                    .map(|f| {
                        let f = f as f64;
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        let scaled = if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (original / wavelen - low) / (high - low);
                            (1.0 - smooth) * f / factor + smooth * f
                        };
                        scaled as f32
                    })
                    .collect())
            }
            other => Err(format!("unsupported `rope_scaling` type {other:?} (supported: \"default\", \"llama3\")")),
        }
    }
}

struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
    act: Activation,
}

impl Mlp {
    fn new(cfg: &Config, vb: VarBuilder, lora: Option<&LoraSet>) -> Result<Self> {
        let (h, i, bias) = (cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias);
        Ok(Self {
            gate_proj: Linear::new(h, i, bias, vb.pp("gate_proj"), lora)?,
            up_proj: Linear::new(h, i, bias, vb.pp("up_proj"), lora)?,
            down_proj: Linear::new(i, h, bias, vb.pp("down_proj"), lora)?,
            act: cfg.hidden_act,
        })
    }

    /// `down(act(gate(x)) · up(x))`
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gated = (self.act.forward(&self.gate_proj.forward(x)?)? * self.up_proj.forward(x)?)?;
        self.down_proj.forward(&gated)
    }
}

struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl DecoderLayer {
    fn new(cfg: &Config, vb: VarBuilder, lora: Option<&LoraSet>) -> Result<Self> {
        Ok(Self {
            input_layernorm: RmsNorm::new(cfg.hidden_size, cfg.rms_norm_eps, vb.pp("input_layernorm"))?,
            self_attn: Attention::new(
                Shape {
                    hidden: cfg.hidden_size,
                    num_heads: cfg.num_attention_heads,
                    num_kv_heads: cfg.num_kv_heads(),
                    head_dim: cfg.head_dim(),
                    qkv_bias: cfg.attention_bias || cfg.qkv_bias,
                    o_bias: cfg.attention_bias,
                    scale: 1.0 / (cfg.head_dim() as f64).sqrt(),
                    softcap: None,
                },
                vb.pp("self_attn"),
                lora,
            )?,
            post_attention_layernorm: RmsNorm::new(
                cfg.hidden_size,
                cfg.rms_norm_eps,
                vb.pp("post_attention_layernorm"),
            )?,
            mlp: Mlp::new(cfg, vb.pp("mlp"), lora)?,
        })
    }

    /// Pre-norm residual block: `x + attn(norm(x))`, then `x + mlp(norm(x))`.
    fn forward(
        &self,
        x: &Tensor,
        rope: (&Tensor, &Tensor),
        mask: &Tensor,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> Result<Tensor> {
        let x = (x + self.self_attn.forward(&self.input_layernorm.forward(x)?, rope, mask, cache)?)?;
        &x + self.mlp.forward(&self.post_attention_layernorm.forward(&x)?)?
    }
}

/// A Llama-family causal LM: embeddings → decoder layers → final norm → output head.
pub struct Model {
    embed_tokens: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    rope: Rope,
    window: Option<usize>,
    dtype: DType,
}

impl Model {
    /// Builds the model from `vb` (HF tensor names at its root), attaching adapters from `lora` where its config
    /// targets a layer. `cfg` must have passed [`Config::validate`].
    pub fn new(cfg: &Config, vb: VarBuilder, lora: Option<&LoraSet>) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::msg)?;
        let vb_m = vb.pp("model");
        let embeddings = vb_m.pp("embed_tokens").get((cfg.vocab_size, cfg.hidden_size), "weight")?;
        let lm_head = if cfg.tie_word_embeddings {
            Linear::from_weight(embeddings.clone())
        } else {
            // The head is never adapted: PEFT's `all-linear` leaves it out too.
            Linear::new(cfg.hidden_size, cfg.vocab_size, false, vb.pp("lm_head"), None)?
        };
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::new(cfg, vb_m.pp("layers").pp(i), lora))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embed_tokens: Embedding::new(embeddings, cfg.hidden_size),
            layers,
            norm: RmsNorm::new(cfg.hidden_size, cfg.rms_norm_eps, vb_m.pp("norm"))?,
            lm_head,
            rope: Rope::new(cfg.inv_freq().map_err(candle_core::Error::msg)?),
            window: cfg.window(),
            dtype: vb.dtype(),
        })
    }

    /// Logits `(batch, len, vocab)` in f32 for `input_ids` `(batch, len)` (u32). With a cache, the ids continue
    /// the cached sequence (positions start at its length, per row when it is padded) and the cache is extended.
    pub fn forward(&self, input_ids: &Tensor, cache: Option<&mut KvCache>) -> Result<Tensor> {
        let x = self.hidden(input_ids, cache)?;
        self.head(&x)
    }

    /// [`Model::forward`]'s logits at the last position only, `(batch, vocab)`.
    pub fn forward_last(&self, input_ids: &Tensor, cache: Option<&mut KvCache>) -> Result<Tensor> {
        let x = self.hidden(input_ids, cache)?;
        let last = x.narrow(1, x.dim(1)? - 1, 1)?;
        self.head(&last)?.squeeze(1)
    }

    /// [`Model::forward`] without a cache, cut at the decoder layers (gradient checkpointing).
    pub fn segments(&self, input_ids: &Tensor) -> Result<Segments<'_>> {
        let step = Step::new(input_ids, None)?;
        let device = input_ids.device();
        let (cos, sin) = step.rope(&self.rope, self.dtype, device)?;
        let mask = step.mask(self.window, device)?;
        Ok(Segments { model: self, input_ids: input_ids.clone(), cos, sin, mask })
    }

    /// Final norm and output head: logits in f32.
    fn head(&self, x: &Tensor) -> Result<Tensor> {
        self.lm_head.forward(&self.norm.forward(x)?)?.to_dtype(DType::F32)
    }

    /// The residual stream after the last layer, `(batch, len, hidden)`.
    fn hidden(&self, input_ids: &Tensor, mut cache: Option<&mut KvCache>) -> Result<Tensor> {
        let step = Step::new(input_ids, cache.as_deref())?;
        let len = input_ids.dim(1)?;
        if let Some(c) = cache.as_mut() {
            c.ensure_layers(self.layers.len());
        }
        let device = input_ids.device();
        let (cos, sin) = step.rope(&self.rope, self.dtype, device)?;
        let mask = step.mask(self.window, device)?;
        let mut x = self.embed_tokens.forward(input_ids)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let slot = cache.as_mut().map(|c| c.layer(i));
            x = layer.forward(&x, (&cos, &sin), &mask, slot)?;
        }
        if let Some(c) = cache.as_mut() {
            c.advance(len);
        }
        Ok(x)
    }
}

/// One forward pass of a [`Model`] as segments ([`crate::model::Segmented`]), with the RoPE tables and the mask
/// computed once for all layers.
pub struct Segments<'a> {
    model: &'a Model,
    input_ids: Tensor,
    cos: Tensor,
    sin: Tensor,
    mask: Tensor,
}

impl crate::model::Segmented for Segments<'_> {
    fn embed(&self) -> Result<Tensor> {
        self.model.embed_tokens.forward(&self.input_ids)
    }

    fn num_layers(&self) -> usize {
        self.model.layers.len()
    }

    fn layer(&self, i: usize, x: &Tensor) -> Result<Tensor> {
        let Some(layer) = self.model.layers.get(i) else {
            candle_core::bail!("layer {i} of a model with {} layers", self.model.layers.len())
        };
        layer.forward(x, (&self.cos, &self.sin), &self.mask, None)
    }

    fn head(&self, x: &Tensor) -> Result<Tensor> {
        self.model.head(x)
    }
}
