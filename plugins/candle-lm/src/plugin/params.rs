//! The ops' params, parsed by hand from the stage's canonical JSON into resolved types, by the same code at plan
//! time (`validate`) and at run time, so that the two never disagree. Every error carries its path inside
//! `params`, and unknown keys are refused with the list of valid ones: a misspelt `lerning_rate` must not train
//! silently with the default.

use candle_core::DType;
use serde_json::{Map, Value};

use api::Error;

use crate::chat::{ChatTemplate, Message};
use crate::lora::{ALL_LINEAR, LoraConfig};
use crate::sample::Sampling;
use crate::train::{Schedule, TrainConfig};

/// An op with its params resolved.
#[derive(Debug)]
pub(crate) enum Op {
    /// `init`: a fresh model directory.
    Init(InitParams),
    /// `train`: LoRA, full fine-tuning or plain LM training.
    Train(TrainParams),
    /// `sample`: responses to prompts.
    Sample(SampleParams),
    /// `tokenizer`: a byte-level BPE trained on text files.
    Tokenizer(TokenizerParams),
    /// `merge`: an adapter merged into its base model's weights.
    Merge(MergeParams),
    /// `generate`: one completion on a live instance.
    Generate(GenerateParams),
}

impl Op {
    /// Parses `params` for `op`.
    pub(crate) fn parse(op: &str, params: &Value) -> Result<Op, Error> {
        match op {
            "init" => InitParams::parse(params).map(Op::Init),
            "train" => TrainParams::parse(params).map(Op::Train),
            "sample" => SampleParams::parse(params).map(Op::Sample),
            "tokenizer" => TokenizerParams::parse(params).map(Op::Tokenizer),
            "merge" => MergeParams::parse(params).map(Op::Merge),
            "generate" => GenerateParams::parse(params).map(Op::Generate),
            other => Err(Error::Failed(format!(
                "candle-lm has no op `{other}`; its ops: `init`, `train`, `sample`, `tokenizer`, `merge`, `generate`"
            ))),
        }
    }

    /// `(required, optional)` input names; `None` for `tokenizer`, which reads one or more inputs of any name.
    pub(crate) fn inputs(&self) -> Option<(&'static [&'static str], &'static [&'static str])> {
        Some(match self {
            Op::Tokenizer(_) => return None,
            Op::Init(_) => (&["tokenizer"], &[]),
            Op::Train(_) => (&["data", "model"], &["adapter"]),
            Op::Sample(_) => (&["model", "prompts"], &["adapter"]),
            Op::Merge(_) => (&["adapter", "model"], &[]),
            Op::Generate(_) => (&["model"], &["adapter"]),
        })
    }
}

/// Model config fields `init` accepts, by JSON type; names as in a Hugging Face `config.json`.
const INIT_INTS: &[&str] = &[
    "head_dim",
    "hidden_size",
    "intermediate_size",
    "max_position_embeddings",
    "num_attention_heads",
    "num_hidden_layers",
    "num_key_value_heads",
    "sliding_window",
    "vocab_size",
];
const INIT_FLOATS: &[&str] =
    &["attn_logit_softcapping", "final_logit_softcapping", "query_pre_attn_scalar", "rms_norm_eps", "rope_theta"];
const INIT_BOOLS: &[&str] = &["attention_bias", "mlp_bias", "tie_word_embeddings"];
const INIT_STRINGS: &[&str] = &["hidden_act", "hidden_activation", "model_type"];
/// Config fields only Gemma-2 reads.
pub(crate) const GEMMA2_ONLY: &[&str] =
    &["attn_logit_softcapping", "final_logit_softcapping", "hidden_activation", "query_pre_attn_scalar"];
/// `init` params that are not config fields.
const INIT_OWN: &[&str] = &["bos_token", "eos_token", "initializer_range", "seed"];
/// Config fields without which no model can be described.
const INIT_REQUIRED: &[&str] = &["hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers"];

/// `init`'s params.
#[derive(Debug)]
pub(crate) struct InitParams {
    /// The config fields the study gave, type-checked, without defaults.
    pub config: Map<String, Value>,
    /// Seed of the random weights.
    pub seed: u64,
    /// Standard deviation of the weights' normal initialisation (HF's `initializer_range`).
    pub initializer_range: f64,
    /// Token texts for bos/eos, overriding what the tokenizer's files say.
    pub bos_token: Option<String>,
    /// See `bos_token`.
    pub eos_token: Option<String>,
}

impl InitParams {
    fn parse(params: &Value) -> Result<Self, Error> {
        let top = table(params, &[])?;
        let valid: Vec<&str> = [INIT_INTS, INIT_FLOATS, INIT_BOOLS, INIT_STRINGS, INIT_OWN]
            .iter()
            .flat_map(|k| k.iter().copied())
            .collect();
        check_keys(top, &[], &valid)?;
        if let Some(missing) = INIT_REQUIRED.iter().find(|k| !top.contains_key(**k)) {
            return Err(Error::param(
                &[missing],
                format!("`{missing}` is required (the config fields {} are)", quoted(INIT_REQUIRED)),
            ));
        }
        let mut config = Map::new();
        for (key, value) in top {
            let k = key.as_str();
            let checked = if INIT_INTS.contains(&k) {
                Value::from(uint(value, &[k])?)
            } else if INIT_FLOATS.contains(&k) {
                Value::from(float(value, &[k])?)
            } else if INIT_BOOLS.contains(&k) {
                Value::from(boolean(value, &[k])?)
            } else if INIT_STRINGS.contains(&k) {
                Value::from(string(value, &[k])?)
            } else {
                continue;
            };
            config.insert(key.clone(), checked);
        }
        let initializer_range = opt(top, "initializer_range", &[], float)?.unwrap_or(0.02);
        if !(initializer_range.is_finite() && initializer_range > 0.0) {
            return Err(Error::param(&["initializer_range"], "must be a positive number (e.g. 0.02)"));
        }
        Ok(Self {
            config,
            seed: opt(top, "seed", &[], uint)?.unwrap_or(0),
            initializer_range,
            bos_token: opt(top, "bos_token", &[], string)?.map(str::to_owned),
            eos_token: opt(top, "eos_token", &[], string)?.map(str::to_owned),
        })
    }
}

/// What `train` updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Method {
    /// LoRA adapters on a frozen base; the loss covers the segments marked `loss`.
    Lora,
    /// Every weight; the loss covers the segments marked `loss`.
    Full,
    /// Every weight, plain causal LM: every token is a target, whatever the loss flags (pre-training).
    Lm,
}

impl Method {
    /// The name used in params and the summary.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Method::Lora => "lora",
            Method::Full => "full",
            Method::Lm => "lm",
        }
    }
}

const TRAIN_KEYS: &[&str] = &[
    "beta1",
    "beta2",
    "checkpoint_every",
    "dtype",
    "epochs",
    "eps",
    "grad_accum",
    "gradient_checkpointing",
    "group_by_length",
    "lora",
    "lr",
    "max_grad_norm",
    "max_len",
    "max_steps",
    "method",
    "micro_batch",
    "schedule",
    "seed",
    "warmup_steps",
    "weight_decay",
];
/// `train`'s default checkpoint cadence, in optimiser steps.
pub(crate) const DEFAULT_CHECKPOINT_EVERY: usize = 50;
const LORA_KEYS: &[&str] = &["alpha", "dropout", "r", "target_modules"];

/// `train`'s params: `method` (`"lora"`, `"full"`, `"lm"`), `lora = { r, alpha, dropout, target_modules }`,
/// `dtype`, and the [`TrainConfig`] fields by name (defaults there): `lr`, `weight_decay`, `beta1`, `beta2`, `eps`,
/// `schedule`, `warmup_steps`, `micro_batch`, `grad_accum`, `max_grad_norm` (0 = no clipping), `max_len`, `seed`,
/// `epochs`, `max_steps`, `checkpoint_every` (50; 0 = none), and:
/// - `group_by_length` (boolean, default false): sort each mega-batch of the seeded shuffle by token length before
///   cutting micro-batches, for less padding ([`crate::train::epoch_plan`]);
/// - `gradient_checkpointing` (boolean, default false): recompute each decoder layer's activations in the backward
///   pass instead of keeping them: the same gradients up to rounding, a fraction of the activation memory, one
///   more forward pass of the layers per step ([`crate::backward`]).
///
/// `dtype = "bf16"` (method `lora` only) computes the forward in bf16 over bf16 base weights while the adapters,
/// their gradients and AdamW's state stay f32 (master weights); the loss is computed from logits in f32.
#[derive(Debug)]
pub(crate) struct TrainParams {
    /// What is trained.
    pub method: Method,
    /// The adapter shape (method `lora`); `None` when the study gave no `lora` table, so that an `adapter`
    /// input's own config can apply.
    pub lora: Option<LoraConfig>,
    /// Optimiser, schedule, batching.
    pub train: TrainConfig,
    /// The dtype the model computes in.
    pub dtype: DType,
}

impl TrainParams {
    fn parse(params: &Value) -> Result<Self, Error> {
        let top = table(params, &[])?;
        check_keys(top, &[], TRAIN_KEYS)?;
        let method = match opt(top, "method", &[], string)? {
            None | Some("lora") => Method::Lora,
            Some("full") => Method::Full,
            Some("lm") => Method::Lm,
            Some(other) => {
                return Err(Error::param(
                    &["method"],
                    format!("unknown method `{other}`: use `\"lora\"`, `\"full\"` or `\"lm\"` (plain causal LM)"),
                ));
            }
        };
        let lora = match top.get("lora") {
            None => None,
            Some(_) if method != Method::Lora => {
                return Err(Error::param(
                    &["lora"],
                    format!("`lora` applies to method `lora`, not `{}`", method.name()),
                ));
            }
            Some(v) => Some(parse_lora(v)?),
        };
        let d = TrainConfig::default();
        let max_grad_norm = match opt(top, "max_grad_norm", &[], float)? {
            None => d.max_grad_norm,
            // TOML has no null: 0 is how a study switches clipping off.
            Some(0.0) => None,
            Some(n) => Some(n),
        };
        let schedule = match opt(top, "schedule", &[], string)? {
            None => d.schedule,
            Some("constant") => Schedule::Constant,
            Some("cosine") => Schedule::Cosine,
            Some(other) => {
                return Err(Error::param(
                    &["schedule"],
                    format!("unknown schedule `{other}`: use `\"constant\"` or `\"cosine\"`"),
                ));
            }
        };
        let train = TrainConfig {
            lr: opt(top, "lr", &[], float)?.unwrap_or(d.lr),
            weight_decay: opt(top, "weight_decay", &[], float)?.unwrap_or(d.weight_decay),
            beta1: opt(top, "beta1", &[], float)?.unwrap_or(d.beta1),
            beta2: opt(top, "beta2", &[], float)?.unwrap_or(d.beta2),
            eps: opt(top, "eps", &[], float)?.unwrap_or(d.eps),
            schedule,
            warmup_steps: opt(top, "warmup_steps", &[], usize_)?.unwrap_or(d.warmup_steps),
            micro_batch: opt(top, "micro_batch", &[], usize_)?.unwrap_or(d.micro_batch),
            grad_accum: opt(top, "grad_accum", &[], usize_)?.unwrap_or(d.grad_accum),
            max_grad_norm,
            max_len: opt(top, "max_len", &[], usize_)?.unwrap_or(d.max_len),
            seed: opt(top, "seed", &[], uint)?.unwrap_or(d.seed),
            epochs: opt(top, "epochs", &[], usize_)?.unwrap_or(d.epochs),
            max_steps: opt(top, "max_steps", &[], usize_)?,
            // TOML has no null: 0 switches checkpoints off.
            checkpoint_every: match opt(top, "checkpoint_every", &[], usize_)? {
                None => Some(DEFAULT_CHECKPOINT_EVERY),
                Some(0) => None,
                Some(n) => Some(n),
            },
            group_by_length: opt(top, "group_by_length", &[], boolean)?.unwrap_or(d.group_by_length),
            gradient_checkpointing: opt(top, "gradient_checkpointing", &[], boolean)?
                .unwrap_or(d.gradient_checkpointing),
        };
        if train.max_steps == Some(0) {
            return Err(Error::param(&["max_steps"], "`max_steps` must be at least 1"));
        }
        if let Err(message) = train.validate() {
            return Err(Error::param(&[first_field(&message, TRAIN_KEYS)], message));
        }
        for (key, value) in [("beta1", train.beta1), ("beta2", train.beta2)] {
            if !(0.0..1.0).contains(&value) {
                return Err(Error::param(&[key], format!("`{key}` must be in [0, 1), got {value}")));
            }
        }
        if !(train.eps > 0.0 && train.weight_decay >= 0.0 && train.weight_decay.is_finite()) {
            let key = if train.eps > 0.0 { "weight_decay" } else { "eps" };
            return Err(Error::param(&[key], format!("`{key}` must be a non-negative number (`eps` positive)")));
        }
        let dtype = parse_dtype(top)?;
        if dtype != DType::F32 && method != Method::Lora {
            // Full fine-tuning keeps its master weights in the load dtype: bf16 weights would lose most small
            // AdamW updates to rounding.
            return Err(Error::param(
                &["dtype"],
                format!("method `{}` trains in `\"f32\"` only; `\"bf16\"` is for `lora`", method.name()),
            ));
        }
        Ok(Self { method, lora, train, dtype })
    }
}

fn parse_lora(value: &Value) -> Result<LoraConfig, Error> {
    let t = table(value, &["lora"])?;
    check_keys(t, &["lora"], LORA_KEYS)?;
    let d = LoraConfig::default();
    let target_modules = match t.get("target_modules") {
        None => d.target_modules,
        Some(Value::String(s)) if s == "all-linear" => Vec::new(),
        Some(v) => {
            let names = string_list(v, &["lora", "target_modules"])?;
            if names.is_empty() {
                return Err(Error::param(
                    &["lora", "target_modules"],
                    format!("no module given; use `\"all-linear\"` or names among {}", quoted(&ALL_LINEAR)),
                ));
            }
            names
        }
    };
    let config = LoraConfig {
        r: opt(t, "r", &["lora"], usize_)?.unwrap_or(d.r),
        alpha: opt(t, "alpha", &["lora"], float)?.unwrap_or(d.alpha),
        dropout: opt(t, "dropout", &["lora"], float)?.unwrap_or(d.dropout),
        target_modules,
    };
    config.validate().map_err(|m| Error::param(&["lora", first_field(&m, LORA_KEYS)], m))?;
    Ok(config)
}

const SAMPLE_KEYS: &[&str] =
    &["batch_size", "dtype", "limit", "max_new_tokens", "seed", "stop", "temperature", "top_k", "top_p"];
/// `sample`'s default number of prompts generated together.
pub(crate) const DEFAULT_BATCH_SIZE: usize = 8;

/// `sample`'s params.
#[derive(Debug)]
pub(crate) struct SampleParams {
    /// At most this many new tokens per prompt.
    pub max_new_tokens: usize,
    /// Greedy (temperature 0) or sampling with top-k / top-p.
    pub sampling: Sampling,
    /// Seed of the sampling stream.
    pub seed: u64,
    /// Strings that end a response (cut before them).
    pub stop: Vec<String>,
    /// Only the first N prompts.
    pub limit: Option<usize>,
    /// The dtype the model computes in.
    pub dtype: DType,
    /// Prompts generated together (grouped by length).
    pub batch_size: usize,
}

impl SampleParams {
    fn parse(params: &Value) -> Result<Self, Error> {
        let top = table(params, &[])?;
        check_keys(top, &[], SAMPLE_KEYS)?;
        let stop = match top.get("stop") {
            None => Vec::new(),
            Some(v) => string_list(v, &["stop"])?,
        };
        if stop.iter().any(String::is_empty) {
            return Err(Error::param(&["stop"], "a stop string must not be empty"));
        }
        let batch_size = opt(top, "batch_size", &[], usize_)?.unwrap_or(DEFAULT_BATCH_SIZE);
        if batch_size == 0 {
            return Err(Error::param(&["batch_size"], "`batch_size` must be at least 1"));
        }
        Ok(Self {
            max_new_tokens: opt(top, "max_new_tokens", &[], usize_)?.unwrap_or(256),
            sampling: parse_sampling(top)?,
            seed: opt(top, "seed", &[], uint)?.unwrap_or(0),
            stop,
            limit: opt(top, "limit", &[], usize_)?,
            dtype: parse_dtype(top)?,
            batch_size,
        })
    }
}

/// `temperature` (0, the default, is greedy), `top_k` (0, the default, keeps all) and `top_p` (default 1).
fn parse_sampling(top: &Map<String, Value>) -> Result<Sampling, Error> {
    let temperature = opt(top, "temperature", &[], float)?.unwrap_or(0.0);
    if !(temperature.is_finite() && temperature >= 0.0) {
        return Err(Error::param(&["temperature"], "must be a non-negative number (0 is greedy)"));
    }
    let top_p = opt(top, "top_p", &[], float)?.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(Error::param(&["top_p"], format!("must be in (0, 1], got {top_p}")));
    }
    let top_k = opt(top, "top_k", &[], usize_)?.unwrap_or(0);
    Ok(if temperature == 0.0 { Sampling::Greedy } else { Sampling::Random { temperature, top_k, top_p } })
}

const TOKENIZER_KEYS: &[&str] =
    &["bos_token", "eos_token", "min_frequency", "model_max_length", "seed", "special_tokens", "vocab_size"];
/// Texts that must stay plain text (the Tulu role markers the `dataset` stage writes): as special tokens they
/// would be split out of the text and change what the model sees (reference/paper.md §2).
const PLAIN_MARKERS: &[&str] = &["<|user|>", "<|assistant|>"];
/// Byte-level BPE starts from the 256 byte symbols.
pub(crate) const BYTE_ALPHABET: usize = 256;

/// `tokenizer`'s params.
#[derive(Debug)]
pub(crate) struct TokenizerParams {
    /// Size of the vocabulary, special tokens included (at most; a small corpus may give fewer merges).
    pub vocab_size: usize,
    /// A pair is merged only if it occurs at least this often.
    pub min_frequency: u64,
    /// Special tokens, ids 0, 1, … in this order.
    pub special_tokens: Vec<String>,
    /// The end-of-sequence token (one of `special_tokens`).
    pub eos_token: String,
    /// The beginning-of-sequence token (one of `special_tokens`), prepended by the tokenizer when given.
    pub bos_token: Option<String>,
    /// `model_max_length` of `tokenizer_config.json`.
    pub model_max_length: usize,
}

impl TokenizerParams {
    fn parse(params: &Value) -> Result<Self, Error> {
        let top = table(params, &[])?;
        check_keys(top, &[], TOKENIZER_KEYS)?;
        // Accepted for uniformity with the other ops; BPE training is deterministic without one.
        opt(top, "seed", &[], uint)?;
        let special_tokens = match top.get("special_tokens") {
            None => vec!["</s>".to_owned(), "<pad>".to_owned()],
            Some(v) => string_list(v, &["special_tokens"])?,
        };
        for (i, t) in special_tokens.iter().enumerate() {
            if t.is_empty() {
                return Err(Error::param(&["special_tokens"], "a special token must not be empty"));
            }
            if special_tokens[..i].contains(t) {
                return Err(Error::param(&["special_tokens"], format!("`{t}` is listed twice")));
            }
            if PLAIN_MARKERS.contains(&t.as_str()) {
                return Err(Error::param(
                    &["special_tokens"],
                    format!("`{t}` must stay plain text (the chat format's role marker), not a special token"),
                ));
            }
        }
        let member = |key: &str, text: &str| -> Result<String, Error> {
            if special_tokens.iter().any(|t| t == text) {
                Ok(text.to_owned())
            } else {
                Err(Error::param(
                    &[key],
                    format!("`{key}` `{text}` must be one of `special_tokens` ({})", special_tokens.join(", ")),
                ))
            }
        };
        let eos_token = member("eos_token", opt(top, "eos_token", &[], string)?.unwrap_or("</s>"))?;
        let bos_token = opt(top, "bos_token", &[], string)?.map(|b| member("bos_token", b)).transpose()?;
        let vocab_size = opt(top, "vocab_size", &[], usize_)?.unwrap_or(2000);
        let least = BYTE_ALPHABET + special_tokens.len();
        if vocab_size < least {
            return Err(Error::param(
                &["vocab_size"],
                format!(
                    "`vocab_size` {vocab_size} is too small: a byte-level BPE needs the {BYTE_ALPHABET} bytes plus \
                     the {} special tokens, at least {least}",
                    special_tokens.len()
                ),
            ));
        }
        let min_frequency = opt(top, "min_frequency", &[], uint)?.unwrap_or(2);
        let model_max_length = opt(top, "model_max_length", &[], usize_)?.unwrap_or(2048);
        if model_max_length == 0 {
            return Err(Error::param(&["model_max_length"], "`model_max_length` must be at least 1"));
        }
        Ok(Self { vocab_size, min_frequency, special_tokens, eos_token, bos_token, model_max_length })
    }
}

/// `merge`'s params.
#[derive(Debug)]
pub(crate) struct MergeParams {
    /// The dtype the merged weights are written in (the merge itself is computed in f32).
    pub dtype: DType,
}

impl MergeParams {
    fn parse(params: &Value) -> Result<Self, Error> {
        let top = table(params, &[])?;
        check_keys(top, &[], &["dtype"])?;
        let dtype = match opt(top, "dtype", &[], string)? {
            None | Some("f32") => DType::F32,
            Some("bf16") => DType::BF16,
            Some("f16") => DType::F16,
            Some(other) => {
                return Err(Error::param(
                    &["dtype"],
                    format!("unknown dtype `{other}`: use `\"f32\"`, `\"bf16\"` or `\"f16\"`"),
                ));
            }
        };
        Ok(Self { dtype })
    }
}

const GENERATE_KEYS: &[&str] = &[
    "add_generation_prompt",
    "chat_template",
    "dtype",
    "logprobs",
    "max_tokens",
    "messages",
    "prompt",
    "seed",
    "stop",
    "temperature",
    "top_k",
    "top_logprobs",
    "top_p",
];
/// OpenAI's bound on `top_logprobs`.
pub(crate) const MAX_TOP_LOGPROBS: usize = 20;

/// What `generate` continues.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum GenerateInput {
    /// A conversation, rendered with a chat template.
    Messages {
        /// The turns.
        messages: Vec<Message>,
        /// A Jinja source to use instead of the model's own template.
        chat_template: Option<String>,
        /// Whether the rendered prompt ends with the assistant's turn opened.
        add_generation_prompt: bool,
    },
    /// Raw text, tokenized as is.
    Prompt(String),
}

/// `generate`'s params: one request (OpenAI chat-completions names where they exist).
#[derive(Debug)]
pub(crate) struct GenerateParams {
    /// The conversation or the raw prompt.
    pub input: GenerateInput,
    /// At most this many new tokens.
    pub max_tokens: usize,
    /// Greedy (temperature 0) or sampling with top-k / top-p.
    pub sampling: Sampling,
    /// Seed of the sampling stream.
    pub seed: u64,
    /// Strings that end the answer (cut before them).
    pub stop: Vec<String>,
    /// `Some(n)` with `logprobs = true`: log-probabilities with `n` alternatives per token.
    pub logprobs: Option<usize>,
    /// The dtype the model computes in (part of the live model's identity).
    pub dtype: DType,
}

impl GenerateParams {
    fn parse(params: &Value) -> Result<Self, Error> {
        let top = table(params, &[])?;
        check_keys(top, &[], GENERATE_KEYS)?;
        let input = match (top.get("messages"), top.get("prompt")) {
            (Some(m), None) => {
                let chat_template = opt(top, "chat_template", &[], string)?.map(str::to_owned);
                if let Some(source) = &chat_template {
                    ChatTemplate::new(source, "", "")
                        .map_err(|e| Error::param(&["chat_template"], format!("the template does not compile: {e}")))?;
                }
                GenerateInput::Messages {
                    messages: parse_messages(m)?,
                    chat_template,
                    add_generation_prompt: opt(top, "add_generation_prompt", &[], boolean)?.unwrap_or(true),
                }
            }
            (None, Some(p)) => {
                for key in ["chat_template", "add_generation_prompt"] {
                    if top.contains_key(key) {
                        return Err(Error::param(
                            &[key],
                            format!("`{key}` applies to `messages`, not to a raw `prompt`"),
                        ));
                    }
                }
                GenerateInput::Prompt(string(p, &["prompt"])?.to_owned())
            }
            (Some(_), Some(_)) => {
                return Err(Error::param(&["prompt"], "give `messages` or `prompt`, not both"));
            }
            (None, None) => {
                return Err(Error::param(
                    &["messages"],
                    "`messages` (a list of {role, content}) or `prompt` (raw text) is required",
                ));
            }
        };
        let max_tokens = opt(top, "max_tokens", &[], usize_)?.unwrap_or(256);
        if max_tokens == 0 {
            return Err(Error::param(&["max_tokens"], "`max_tokens` must be at least 1"));
        }
        let stop = match top.get("stop") {
            None => Vec::new(),
            Some(Value::String(s)) => vec![s.clone()],
            Some(v) => string_list(v, &["stop"]).map_err(|_| {
                Error::param(&["stop"], format!("expected a string or a list of strings, found {}", kind(v)))
            })?,
        };
        if stop.iter().any(String::is_empty) {
            return Err(Error::param(&["stop"], "a stop string must not be empty"));
        }
        let logprobs = opt(top, "logprobs", &[], boolean)?.unwrap_or(false);
        let top_logprobs = opt(top, "top_logprobs", &[], usize_)?;
        if let Some(n) = top_logprobs {
            if n > MAX_TOP_LOGPROBS {
                return Err(Error::param(&["top_logprobs"], format!("must be in 0..={MAX_TOP_LOGPROBS}, got {n}")));
            }
            if !logprobs {
                return Err(Error::param(&["top_logprobs"], "`top_logprobs` needs `logprobs = true`"));
            }
        }
        Ok(Self {
            input,
            max_tokens,
            sampling: parse_sampling(top)?,
            seed: opt(top, "seed", &[], uint)?.unwrap_or(0),
            stop,
            logprobs: logprobs.then(|| top_logprobs.unwrap_or(0)),
            dtype: parse_dtype(top)?,
        })
    }
}

/// `[{role, content}, …]`, at least one turn, both fields strings, nothing else.
fn parse_messages(value: &Value) -> Result<Vec<Message>, Error> {
    let Value::Array(items) = value else {
        return Err(Error::param(
            &["messages"],
            format!("expected a list of {{role, content}} tables, found {}", kind(value)),
        ));
    };
    if items.is_empty() {
        return Err(Error::param(&["messages"], "at least one message is required"));
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let index = i.to_string();
        let at = ["messages", index.as_str()];
        let turn = table(item, &at)?;
        if item.is_null() {
            return Err(Error::param(&at, "expected a {role, content} table, found nothing"));
        }
        check_keys(turn, &at, &["content", "role"])?;
        let field = |key: &str| -> Result<String, Error> {
            let path = [at[0], at[1], key];
            match turn.get(key) {
                Some(v) => string(v, &path).map(str::to_owned),
                None => Err(Error::param(&path, format!("`{key}` is required"))),
            }
        };
        out.push(Message { role: field("role")?, content: field("content")? });
    }
    Ok(out)
}

fn parse_dtype(top: &Map<String, Value>) -> Result<DType, Error> {
    match opt(top, "dtype", &[], string)? {
        None | Some("f32") => Ok(DType::F32),
        Some("bf16") => Ok(DType::BF16),
        Some(other) => Err(Error::param(&["dtype"], format!("unknown dtype `{other}`: use `\"f32\"` or `\"bf16\"`"))),
    }
}

/// The first of `keys` a validation message names in backticks, for the error's path (`""` when none).
fn first_field<'k>(message: &str, keys: &[&'k str]) -> &'k str {
    keys.iter().copied().filter_map(|k| message.find(&format!("`{k}`")).map(|at| (at, k))).min().map_or("", |x| x.1)
}

/// `params` (or a nested table) as an object; a missing table (null) is empty.
fn table<'a>(value: &'a Value, path: &[&str]) -> Result<&'a Map<String, Value>, Error> {
    static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
    match value {
        Value::Object(m) => Ok(m),
        Value::Null => Ok(EMPTY.get_or_init(Map::new)),
        other => Err(Error::param(path, format!("expected a table, found {}", kind(other)))),
    }
}

fn check_keys(map: &Map<String, Value>, path: &[&str], valid: &[&str]) -> Result<(), Error> {
    if let Some(unknown) = map.keys().find(|k| !valid.contains(&k.as_str())) {
        let mut sorted = valid.to_vec();
        sorted.sort_unstable();
        let mut at = path.to_vec();
        at.push(unknown);
        return Err(Error::param(&at, format!("unknown param `{unknown}`; valid: {}", quoted(&sorted))));
    }
    Ok(())
}

fn opt<'a, T>(
    map: &'a Map<String, Value>,
    key: &str,
    path: &[&str],
    read: impl Fn(&'a Value, &[&str]) -> Result<T, Error>,
) -> Result<Option<T>, Error> {
    let mut at = path.to_vec();
    at.push(key);
    map.get(key).map(|v| read(v, &at)).transpose()
}

fn uint(value: &Value, path: &[&str]) -> Result<u64, Error> {
    value.as_u64().ok_or_else(|| Error::param(path, format!("expected a non-negative integer, found {}", kind(value))))
}

fn usize_(value: &Value, path: &[&str]) -> Result<usize, Error> {
    usize::try_from(uint(value, path)?).map_err(|_| Error::param(path, "the number is too large"))
}

fn float(value: &Value, path: &[&str]) -> Result<f64, Error> {
    value.as_f64().ok_or_else(|| Error::param(path, format!("expected a number, found {}", kind(value))))
}

fn boolean(value: &Value, path: &[&str]) -> Result<bool, Error> {
    value.as_bool().ok_or_else(|| Error::param(path, format!("expected true or false, found {}", kind(value))))
}

fn string<'a>(value: &'a Value, path: &[&str]) -> Result<&'a str, Error> {
    value.as_str().ok_or_else(|| Error::param(path, format!("expected a string, found {}", kind(value))))
}

fn string_list(value: &Value, path: &[&str]) -> Result<Vec<String>, Error> {
    let bad = || Error::param(path, format!("expected a list of strings, found {}", kind(value)));
    match value {
        Value::Array(items) => items.iter().map(|v| v.as_str().map(str::to_owned).ok_or_else(bad)).collect(),
        _ => Err(bad()),
    }
}

fn kind(value: &Value) -> String {
    match value {
        Value::Null => "nothing".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {s:?}"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a table".into(),
    }
}

/// `` `a`, `b` `` for messages.
pub(crate) fn quoted(names: &[&str]) -> String {
    if names.is_empty() {
        return "none".into();
    }
    names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
}
