//! The decoders, one file per architecture family, and what they share: the architecture chosen from a
//! `config.json`, the KV cache, and the [`CausalLm`] trait the training loop and the sampler drive.

pub mod gemma2;
pub mod llama;

use std::path::Path;

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use crate::error::LoadError;
use crate::lora::LoraSet;

/// What the training loop and the sampler need from a decoder; a new family implements this.
pub trait CausalLm {
    /// Logits `(batch, len, vocab)` in f32 for `input_ids` `(batch, len)`, continuing `cache` when given.
    fn forward(&self, input_ids: &Tensor, cache: Option<&mut KvCache>) -> Result<Tensor>;
}

impl CausalLm for llama::Model {
    fn forward(&self, input_ids: &Tensor, cache: Option<&mut KvCache>) -> Result<Tensor> {
        llama::Model::forward(self, input_ids, cache)
    }
}

impl CausalLm for gemma2::Model {
    fn forward(&self, input_ids: &Tensor, cache: Option<&mut KvCache>) -> Result<Tensor> {
        gemma2::Model::forward(self, input_ids, cache)
    }
}

/// Per-layer keys and values of the sequence so far (after RoPE, before the GQA repeat), for generation.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

impl KvCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Positions cached so far: the position of the next token.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets everything (start a new sequence).
    pub fn clear(&mut self) {
        self.layers.clear();
        self.len = 0;
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
}
