//! The Gemma-2 decoder (HF `model_type = "gemma2"`): a Llama-shaped decoder with GeGLU, embeddings scaled by
//! `sqrt(hidden_size)`, RMSNorms scaled by `1 + weight`, a norm before *and* after both attention and the MLP,
//! soft-capped attention scores and logits, `query_pre_attn_scalar` for the attention scale, and local
//! (sliding-window) attention on even layers alternating with global attention on odd ones. The head is tied.
//!
//! Paper: Gemma Team 2024, "Gemma 2: Improving Open Language Models at a Practical Size" (arXiv 2408.00118).
//! Upstream code this mirrors: transformers `models/gemma2/modeling_gemma2.py`. candle-transformers
//! `models/gemma2.rs` is our tests' logits reference; it differs from HF in three ways the tests work around: it
//! scales scores by `1/sqrt(head_dim)` (ignoring `query_pre_attn_scalar`), it applies the window to every layer,
//! and its window admits one more position (`i - j <= w` where HF has `i - j < w`).
//!
//! As in [`super::llama`], every op has a backward pass, `forward` returns logits for every position and the KV
//! cache is an explicit argument. The cache keeps every position for every layer; local layers mask the old ones.

use candle_core::{D, DType, Module, Result, Tensor};
use candle_nn::{Embedding, VarBuilder};
use serde::Deserialize;

use super::attention::{Attention, Shape};
use crate::lora::{Linear, LoraSet};
use crate::model::{KvCache, Step};
use crate::nn::{Activation, Rope};

/// The fields of a Gemma-2 `config.json` this decoder reads; names and defaults as in HF's `Gemma2Config`.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    /// Rows of the embedding (and of the tied output head).
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
    /// Per-head width (Gemma-2 sets it explicitly; it need not be `hidden_size / num_attention_heads`).
    #[serde(default = "default_head_dim")]
    pub head_dim: usize,
    /// Epsilon of every RMSNorm.
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// RoPE base.
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    /// Biases on q, k, v and o.
    #[serde(default)]
    pub attention_bias: bool,
    /// The MLP's activation (HF reads `hidden_activation`, not `hidden_act`, for Gemma-2).
    #[serde(default = "default_act")]
    pub hidden_activation: Activation,
    /// Attention scores are scaled by `query_pre_attn_scalar^-1/2` (not `head_dim^-1/2`).
    #[serde(default = "default_query_pre_attn_scalar")]
    pub query_pre_attn_scalar: f64,
    /// Attention scores become `cap · tanh(s / cap)` before the mask (null: no capping).
    #[serde(default = "default_attn_cap")]
    pub attn_logit_softcapping: Option<f64>,
    /// Output logits become `cap · tanh(l / cap)` (null: no capping).
    #[serde(default = "default_final_cap")]
    pub final_logit_softcapping: Option<f64>,
    /// Local layers attend to at most this many positions, the query's own included (null: no window).
    #[serde(default = "default_window")]
    pub sliding_window: Option<usize>,
    /// Newer transformers' explicit per-layer kinds (`sliding_attention` / `full_attention`); absent means even
    /// layers local, odd layers global.
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    /// Whether the output head reuses the embedding matrix (always so in released Gemma-2 checkpoints).
    #[serde(default = "default_tie")]
    pub tie_word_embeddings: bool,
}

fn default_head_dim() -> usize {
    256
}
fn default_eps() -> f64 {
    1e-6
}
fn default_theta() -> f64 {
    10_000.0
}
fn default_act() -> Activation {
    Activation::GeluTanh
}
fn default_query_pre_attn_scalar() -> f64 {
    256.0
}
fn default_attn_cap() -> Option<f64> {
    Some(50.0)
}
fn default_final_cap() -> Option<f64> {
    Some(30.0)
}
fn default_window() -> Option<usize> {
    Some(4096)
}
fn default_tie() -> bool {
    true
}

impl Config {
    /// Key/value heads.
    pub fn num_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Whether layer `i` uses the sliding window (HF: `sliding_window if not bool(layer_idx % 2)`).
    pub fn is_sliding(&self, i: usize) -> bool {
        match &self.layer_types {
            Some(types) => types.get(i).is_some_and(|t| t == "sliding_attention"),
            None => i.is_multiple_of(2),
        }
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
            ("head_dim", self.head_dim),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("`{name}` must be positive"));
        }
        if !self.num_attention_heads.is_multiple_of(self.num_kv_heads()) {
            return Err(format!(
                "`num_attention_heads` ({}) is not a multiple of `num_key_value_heads` ({})",
                self.num_attention_heads,
                self.num_kv_heads()
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(format!("`head_dim` ({}) must be even for RoPE", self.head_dim));
        }
        if self.query_pre_attn_scalar.is_nan() || self.query_pre_attn_scalar <= 0.0 {
            return Err("`query_pre_attn_scalar` must be positive".into());
        }
        for (name, cap) in [
            ("attn_logit_softcapping", self.attn_logit_softcapping),
            ("final_logit_softcapping", self.final_logit_softcapping),
        ] {
            if cap.is_some_and(|c| c.is_nan() || c <= 0.0) {
                return Err(format!("`{name}` must be positive (or null)"));
            }
        }
        if self.sliding_window == Some(0) {
            return Err("`sliding_window` must be positive".into());
        }
        if let Some(types) = &self.layer_types {
            if types.len() != self.num_hidden_layers {
                return Err(format!("`layer_types` has {} entries for {} layers", types.len(), self.num_hidden_layers));
            }
            if let Some(t) = types.iter().find(|t| !matches!(t.as_str(), "sliding_attention" | "full_attention")) {
                return Err(format!("`layer_types`: unknown kind {t:?} (\"sliding_attention\" or \"full_attention\")"));
            }
        }
        Ok(())
    }
}

/// Gemma's RMSNorm: checkpoints store `scale - 1`, so the scale is `1 + weight`; HF applies it in f32 and casts
/// back afterwards (Llama casts first). `crate::nn::RmsNorm` does the latter, hence this private block.
struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        Ok(Self { weight: vb.get(cfg.hidden_size, "weight")?, eps: cfg.rms_norm_eps })
    }

    /// `x / sqrt(mean(x²) + eps) · (1 + weight)`, over the last dimension.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let x = x.to_dtype(DType::F32)?;
        let mean_sq = x.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = x.broadcast_div(&(mean_sq + self.eps)?.sqrt()?)?;
        let scale = (self.weight.to_dtype(DType::F32)? + 1.0)?;
        normed.broadcast_mul(&scale)?.to_dtype(dtype)
    }
}

/// `cap · tanh(x / cap)`, or `x` without a cap.
fn soft_cap(x: Tensor, cap: Option<f64>) -> Result<Tensor> {
    match cap {
        Some(cap) => (x / cap)?.tanh()? * cap,
        None => Ok(x),
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
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate_proj: Linear::new(h, i, false, vb.pp("gate_proj"), lora)?,
            up_proj: Linear::new(h, i, false, vb.pp("up_proj"), lora)?,
            down_proj: Linear::new(i, h, false, vb.pp("down_proj"), lora)?,
            act: cfg.hidden_activation,
        })
    }

    /// GeGLU: `down(gelu(gate(x)) · up(x))`
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gated = (self.act.forward(&self.gate_proj.forward(x)?)? * self.up_proj.forward(x)?)?;
        self.down_proj.forward(&gated)
    }
}

struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    pre_feedforward_layernorm: RmsNorm,
    mlp: Mlp,
    post_feedforward_layernorm: RmsNorm,
    sliding: bool,
}

impl DecoderLayer {
    fn new(cfg: &Config, i: usize, vb: VarBuilder, lora: Option<&LoraSet>) -> Result<Self> {
        Ok(Self {
            input_layernorm: RmsNorm::new(cfg, vb.pp("input_layernorm"))?,
            self_attn: Attention::new(
                Shape {
                    hidden: cfg.hidden_size,
                    num_heads: cfg.num_attention_heads,
                    num_kv_heads: cfg.num_kv_heads(),
                    head_dim: cfg.head_dim,
                    qkv_bias: cfg.attention_bias,
                    o_bias: cfg.attention_bias,
                    scale: cfg.query_pre_attn_scalar.powf(-0.5),
                    softcap: cfg.attn_logit_softcapping,
                },
                vb.pp("self_attn"),
                lora,
            )?,
            post_attention_layernorm: RmsNorm::new(cfg, vb.pp("post_attention_layernorm"))?,
            pre_feedforward_layernorm: RmsNorm::new(cfg, vb.pp("pre_feedforward_layernorm"))?,
            mlp: Mlp::new(cfg, vb.pp("mlp"), lora)?,
            post_feedforward_layernorm: RmsNorm::new(cfg, vb.pp("post_feedforward_layernorm"))?,
            sliding: cfg.is_sliding(i),
        })
    }

    /// Sandwich-norm residual block: `x + post_norm(attn(norm(x)))`, then `x + post_norm(mlp(pre_norm(x)))`.
    fn forward(
        &self,
        x: &Tensor,
        rope: (&Tensor, &Tensor),
        mask: &Tensor,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> Result<Tensor> {
        let attn = self.self_attn.forward(&self.input_layernorm.forward(x)?, rope, mask, cache)?;
        let x = (x + self.post_attention_layernorm.forward(&attn)?)?;
        let mlp = self.mlp.forward(&self.pre_feedforward_layernorm.forward(&x)?)?;
        &x + self.post_feedforward_layernorm.forward(&mlp)?
    }
}

/// A Gemma-2 causal LM: scaled embeddings → decoder layers (local, global, local, …) → final norm → tied head →
/// soft cap.
pub struct Model {
    embed_tokens: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    rope: Rope,
    window: Option<usize>,
    final_logit_softcapping: Option<f64>,
    hidden_size: usize,
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
            .map(|i| DecoderLayer::new(cfg, i, vb_m.pp("layers").pp(i), lora))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embed_tokens: Embedding::new(embeddings, cfg.hidden_size),
            layers,
            norm: RmsNorm::new(cfg, vb_m.pp("norm"))?,
            lm_head,
            rope: Rope::new(Rope::default_inv_freq(cfg.rope_theta, cfg.head_dim)),
            window: cfg.sliding_window,
            final_logit_softcapping: cfg.final_logit_softcapping,
            hidden_size: cfg.hidden_size,
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
        self.head(&x.narrow(1, x.dim(1)? - 1, 1)?)?.squeeze(1)
    }

    /// [`Model::forward`] without a cache, cut at the decoder layers (gradient checkpointing).
    pub fn segments(&self, input_ids: &Tensor) -> Result<Segments<'_>> {
        let step = Step::new(input_ids, None)?;
        let device = input_ids.device();
        let (cos, sin) = step.rope(&self.rope, self.dtype, device)?;
        let global = step.mask(None, device)?;
        let local = step.mask(self.window, device)?;
        Ok(Segments { model: self, input_ids: input_ids.clone(), cos, sin, global, local })
    }

    /// Scaled embeddings; HF multiplies by the normaliser rounded to the model's dtype.
    fn embed(&self, input_ids: &Tensor) -> Result<Tensor> {
        let normalizer = Tensor::new((self.hidden_size as f32).sqrt(), input_ids.device())?.to_dtype(self.dtype)?;
        self.embed_tokens.forward(input_ids)?.broadcast_mul(&normalizer)
    }

    /// Final norm, tied head, soft cap.
    fn head(&self, x: &Tensor) -> Result<Tensor> {
        let logits = self.lm_head.forward(&self.norm.forward(x)?)?;
        soft_cap(logits, self.final_logit_softcapping)?.to_dtype(DType::F32)
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
        let global = step.mask(None, device)?;
        let local = step.mask(self.window, device)?;
        let mut x = self.embed(input_ids)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let slot = cache.as_mut().map(|c| c.layer(i));
            let mask = if layer.sliding { &local } else { &global };
            x = layer.forward(&x, (&cos, &sin), mask, slot)?;
        }
        if let Some(c) = cache.as_mut() {
            c.advance(len);
        }
        Ok(x)
    }
}

/// One forward pass of a [`Model`] as segments ([`crate::model::Segmented`]), with the RoPE tables and both
/// masks computed once for all layers.
pub struct Segments<'a> {
    model: &'a Model,
    input_ids: Tensor,
    cos: Tensor,
    sin: Tensor,
    global: Tensor,
    local: Tensor,
}

impl crate::model::Segmented for Segments<'_> {
    fn embed(&self) -> Result<Tensor> {
        self.model.embed(&self.input_ids)
    }

    fn num_layers(&self) -> usize {
        self.model.layers.len()
    }

    fn layer(&self, i: usize, x: &Tensor) -> Result<Tensor> {
        let Some(layer) = self.model.layers.get(i) else {
            candle_core::bail!("layer {i} of a model with {} layers", self.model.layers.len())
        };
        let mask = if layer.sliding { &self.local } else { &self.global };
        layer.forward(x, (&self.cos, &self.sin), mask, None)
    }

    fn head(&self, x: &Tensor) -> Result<Tensor> {
        self.model.head(x)
    }
}
