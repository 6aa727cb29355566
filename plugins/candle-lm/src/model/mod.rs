//! The decoders, one file per architecture family, and what they share: the architecture chosen from a
//! `config.json`, the KV cache, and the [`CausalLm`] trait the training loop and the sampler drive.

mod attention;
pub mod gemma2;
pub mod llama;

use std::path::Path;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

use crate::error::LoadError;
use crate::lora::LoraSet;
use crate::nn::{self, Rope};

/// What the training loop and the sampler need from a decoder; a new family implements this.
pub trait CausalLm {
    /// Logits `(batch, len, vocab)` in f32 for `input_ids` `(batch, len)`, continuing `cache` when given.
    fn forward(&self, input_ids: &Tensor, cache: Option<&mut KvCache>) -> Result<Tensor>;

    /// The logits of the last position only, `(batch, vocab)` in f32: what generation needs, without the
    /// `(batch, len, vocab)` tensor a long prompt would otherwise cost. The default narrows [`Self::forward`].
    fn forward_last(&self, input_ids: &Tensor, cache: Option<&mut KvCache>) -> Result<Tensor> {
        let logits = self.forward(input_ids, cache)?;
        let len = logits.dim(1)?;
        logits.narrow(1, len - 1, 1)?.squeeze(1)
    }

    /// [`Self::forward`] over `input_ids` (no cache) cut at the decoder layers, for gradient checkpointing
    /// ([`crate::backward`]). The default refuses: a model must say how it is cut.
    fn segments<'a>(&'a self, input_ids: &Tensor) -> Result<Box<dyn Segmented + 'a>> {
        let _ = input_ids;
        candle_core::bail!("this model cannot be cut into layers for gradient checkpointing")
    }
}

/// One forward pass as a chain of segments: [`Segmented::embed`], then [`Segmented::layer`] `0, 1, …` in order,
/// then [`Segmented::head`] computes the logits [`CausalLm::forward`] computes. Each segment depends on the
/// previous one only through the tensor passed along (the residual stream), so its forward can be rerun alone.
pub trait Segmented {
    /// The input of the first layer, `(batch, len, hidden)`.
    fn embed(&self) -> Result<Tensor>;
    /// Number of decoder layers.
    fn num_layers(&self) -> usize;
    /// Decoder layer `i` applied to its input `x`.
    fn layer(&self, i: usize, x: &Tensor) -> Result<Tensor>;
    /// Final norm and output head over the last layer's output: logits `(batch, len, vocab)` in f32.
    fn head(&self, x: &Tensor) -> Result<Tensor>;
}

impl CausalLm for llama::Model {
    fn forward(&self, input_ids: &Tensor, cache: Option<&mut KvCache>) -> Result<Tensor> {
        llama::Model::forward(self, input_ids, cache)
    }
    fn forward_last(&self, input_ids: &Tensor, cache: Option<&mut KvCache>) -> Result<Tensor> {
        llama::Model::forward_last(self, input_ids, cache)
    }
    fn segments<'a>(&'a self, input_ids: &Tensor) -> Result<Box<dyn Segmented + 'a>> {
        Ok(Box::new(llama::Model::segments(self, input_ids)?))
    }
}

impl CausalLm for gemma2::Model {
    fn forward(&self, input_ids: &Tensor, cache: Option<&mut KvCache>) -> Result<Tensor> {
        gemma2::Model::forward(self, input_ids, cache)
    }
    fn forward_last(&self, input_ids: &Tensor, cache: Option<&mut KvCache>) -> Result<Tensor> {
        gemma2::Model::forward_last(self, input_ids, cache)
    }
    fn segments<'a>(&'a self, input_ids: &Tensor) -> Result<Box<dyn Segmented + 'a>> {
        Ok(Box::new(gemma2::Model::segments(self, input_ids)?))
    }
}

/// Per-layer keys and values of the sequences so far (after RoPE, before the GQA repeat), for generation.
///
/// A batch of prompts of different lengths is left-padded to a common length
/// ([`KvCache::with_left_padding`]): the decoders then give each row its own positions (from 0 at its first
/// real token) and mask the padding out, so that each row computes what it would alone.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
    /// Padding positions at the start of each row; empty when the batch is not padded.
    pads: Vec<usize>,
}

impl KvCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty cache for a batch whose row `r` starts with `pads[r]` padding tokens (any id: they are masked).
    pub fn with_left_padding(pads: Vec<usize>) -> Self {
        Self { pads, ..Self::default() }
    }

    /// Positions cached so far, padding included: the index of the next token.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The padding of each row, when some row has any (an unpadded batch takes the plain path, unchanged).
    pub fn padding(&self) -> Option<&[usize]> {
        self.pads.iter().any(|p| *p > 0).then_some(self.pads.as_slice())
    }

    /// Forgets everything (start a new sequence), padding included.
    pub fn clear(&mut self) {
        self.layers.clear();
        self.len = 0;
        self.pads.clear();
    }

    /// Keeps only the batch rows `rows` (ascending indices), in that order: finished sequences leave the batch
    /// so that they cost nothing more. Padding that every remaining row has is dropped too.
    pub fn retain_rows(&mut self, rows: &[usize]) -> Result<()> {
        if let Some(bad) = rows.iter().find(|r| !self.pads.is_empty() && **r >= self.pads.len()) {
            candle_core::bail!("row {bad} is not in the cache's batch of {}", self.pads.len());
        }
        let Some(device) = self.layers.iter().flatten().next().map(|(k, _)| k.device().clone()) else {
            self.pads = rows.iter().filter_map(|r| self.pads.get(*r).copied()).collect();
            return Ok(());
        };
        let index = Tensor::from_vec(rows.iter().map(|r| *r as u32).collect::<Vec<_>>(), rows.len(), &device)?;
        if !self.pads.is_empty() {
            self.pads = rows.iter().map(|r| self.pads[*r]).collect();
        }
        let common = self.pads.iter().copied().min().unwrap_or(0);
        for (k, v) in self.layers.iter_mut().flatten() {
            let (mut k2, mut v2) = (k.index_select(&index, 0)?, v.index_select(&index, 0)?);
            if common > 0 {
                let keep = self.len - common;
                (k2, v2) = (k2.narrow(2, common, keep)?, v2.narrow(2, common, keep)?);
            }
            (*k, *v) = (k2, v2);
        }
        if common > 0 {
            self.len -= common;
            self.pads.iter_mut().for_each(|p| *p -= common);
        }
        Ok(())
    }

    pub(crate) fn ensure_layers(&mut self, n: usize) {
        if self.layers.len() < n {
            self.layers.resize(n, None);
        }
    }

    pub(crate) fn layer(&mut self, i: usize) -> &mut Option<(Tensor, Tensor)> {
        &mut self.layers[i]
    }

    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }
}

/// What a forward pass over `len` new tokens of a `batch` needs to know about where they sit: the RoPE tables
/// and a mask per window, from the cache's length and padding.
pub(crate) struct Step {
    offset: usize,
    len: usize,
    pads: Option<Vec<usize>>,
}

impl Step {
    /// The step for `input_ids` `(batch, len)` continuing `cache`; fails when the cache's padding is for
    /// another batch size.
    pub(crate) fn new(input_ids: &Tensor, cache: Option<&KvCache>) -> Result<Self> {
        let (batch, len) = input_ids.dims2()?;
        let offset = cache.map_or(0, KvCache::len);
        let pads = cache.and_then(KvCache::padding).map(<[usize]>::to_vec);
        if let Some(p) = &pads
            && p.len() != batch
        {
            candle_core::bail!("the KV cache is padded for {} rows, the input has {batch}", p.len());
        }
        Ok(Self { offset, len, pads })
    }

    /// `(cos, sin)` for these positions.
    pub(crate) fn rope(&self, rope: &Rope, dtype: DType, device: &Device) -> Result<(Tensor, Tensor)> {
        match &self.pads {
            None => rope.cos_sin(self.offset, self.len, dtype, device),
            Some(p) => rope.cos_sin_padded(self.offset, self.len, p, dtype, device),
        }
    }

    /// The additive attention mask, with a sliding `window` when given.
    pub(crate) fn mask(&self, window: Option<usize>, device: &Device) -> Result<Tensor> {
        match &self.pads {
            None => nn::attention_mask(self.len, self.offset, window, device),
            Some(p) => nn::padded_attention_mask(self.len, self.offset, p, window, device),
        }
    }
}

/// The `model_type`s with a decoder here, for error messages.
pub const SUPPORTED: &str = "llama, mistral, qwen2, gemma2";

/// A parsed model config, by family.
#[derive(Debug, Clone)]
pub enum ModelConfig {
    /// Llama, Mistral, SmolLM, Qwen2.
    Llama(llama::Config),
    /// Gemma-2.
    Gemma2(gemma2::Config),
}

impl ModelConfig {
    /// Parses a `config.json`'s text, choosing the family from `model_type` (or, when absent, `architectures`).
    /// `path` is only for messages.
    pub fn parse(path: &Path, text: &str) -> std::result::Result<Self, LoadError> {
        let json_err = |e: serde_json::Error| LoadError::Json {
            path: path.to_owned(),
            what: "model config",
            message: e.to_string(),
        };
        let value: serde_json::Value = serde_json::from_str(text).map_err(json_err)?;
        let model_type = value.get("model_type").and_then(|v| v.as_str()).map(str::to_owned).or_else(|| {
            let arch = value.get("architectures")?.as_array()?.first()?.as_str()?;
            Some(
                match arch {
                    "LlamaForCausalLM" => "llama",
                    "MistralForCausalLM" => "mistral",
                    "Qwen2ForCausalLM" => "qwen2",
                    "Gemma2ForCausalLM" => "gemma2",
                    other => other,
                }
                .to_owned(),
            )
        });
        let Some(model_type) = model_type else {
            return Err(LoadError::InvalidConfig {
                path: path.to_owned(),
                message: "neither `model_type` nor `architectures` is set".into(),
            });
        };
        let config = match model_type.as_str() {
            "llama" | "mistral" | "qwen2" => {
                let mut cfg: llama::Config = serde_json::from_value(value).map_err(json_err)?;
                cfg.qkv_bias = model_type == "qwen2";
                if model_type == "qwen2" && cfg.use_sliding_window == Some(true) {
                    // Qwen2 applies the window only to some layers (`max_window_layers`), differently across
                    // transformers versions; refusing beats computing something else.
                    return Err(LoadError::InvalidConfig {
                        path: path.to_owned(),
                        message: "`use_sliding_window = true` is not supported for qwen2".into(),
                    });
                }
                cfg.validate().map_err(|message| LoadError::InvalidConfig { path: path.to_owned(), message })?;
                Self::Llama(cfg)
            }
            "gemma2" => {
                let cfg: gemma2::Config = serde_json::from_value(value).map_err(json_err)?;
                cfg.validate().map_err(|message| LoadError::InvalidConfig { path: path.to_owned(), message })?;
                Self::Gemma2(cfg)
            }
            _ => {
                return Err(LoadError::UnknownArchitecture {
                    path: path.to_owned(),
                    name: model_type,
                    supported: SUPPORTED,
                });
            }
        };
        Ok(config)
    }

    /// Vocabulary size (rows of the output head).
    pub fn vocab_size(&self) -> usize {
        match self {
            Self::Llama(c) => c.vocab_size,
            Self::Gemma2(c) => c.vocab_size,
        }
    }
}

/// A built decoder of any supported family.
pub enum Decoder {
    /// Llama, Mistral, SmolLM, Qwen2.
    Llama(llama::Model),
    /// Gemma-2.
    Gemma2(gemma2::Model),
}

impl Decoder {
    /// Builds the decoder `cfg` describes from `vb`, with adapters from `lora` where targeted.
    pub fn new(cfg: &ModelConfig, vb: VarBuilder, lora: Option<&LoraSet>) -> Result<Self> {
        match cfg {
            ModelConfig::Llama(c) => Ok(Self::Llama(llama::Model::new(c, vb, lora)?)),
            ModelConfig::Gemma2(c) => Ok(Self::Gemma2(gemma2::Model::new(c, vb, lora)?)),
        }
    }
}

impl CausalLm for Decoder {
    fn forward(&self, input_ids: &Tensor, cache: Option<&mut KvCache>) -> Result<Tensor> {
        match self {
            Self::Llama(m) => m.forward(input_ids, cache),
            Self::Gemma2(m) => m.forward(input_ids, cache),
        }
    }
    fn forward_last(&self, input_ids: &Tensor, cache: Option<&mut KvCache>) -> Result<Tensor> {
        match self {
            Self::Llama(m) => m.forward_last(input_ids, cache),
            Self::Gemma2(m) => m.forward_last(input_ids, cache),
        }
    }
    fn segments<'a>(&'a self, input_ids: &Tensor) -> Result<Box<dyn Segmented + 'a>> {
        match self {
            Self::Llama(m) => CausalLm::segments(m, input_ids),
            Self::Gemma2(m) => CausalLm::segments(m, input_ids),
        }
    }
}
