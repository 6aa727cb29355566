//! candle-lm as an rto plugin: the [`CandleLm`] back-end and its ops.
//!
//! - `init`: a new model directory with seeded random weights, from a tokenizer and config fields (tiny models
//!   pre-trained from scratch; the paper's base models come from the Hugging Face hub instead).
//! - `train`: LoRA (`method = "lora"`, the default), full fine-tuning (`"full"`) or plain causal-LM training
//!   (`"lm"`, every token a target) on the `train.jsonl` of a `dataset` stage. Writes `adapter/` (PEFT layout) or
//!   `model/` (HF layout) and `metrics.jsonl`.
//! - `sample`: a response per prompt of a `prompts.jsonl`, with an optional adapter merged on load. Writes
//!   `samples.jsonl`.
//! - `tokenizer`: a byte-level BPE trained on the text of one or more JSONL or text inputs (the embedded CPU
//!   study's own tokenizer). Writes `tokenizer/` (`tokenizer.json`, `tokenizer_config.json`), which `init`'s
//!   `tokenizer` input accepts.
//! - `merge`: a `train` adapter merged into its base model's weights. Writes `model/` (HF layout), which `sample`
//!   and `train` take as a plain model.
//! - `generate`: one completion (chat messages or a raw prompt) on a live instance, for `rto serve`; the model
//!   stays loaded between invokes ([`live`]) and the returned JSON is the response ([`op_generate`]).
//!
//! Params are documented on the parsing code ([`params`]); every op runs on the CPU unless the crate is built
//! with the `cuda` feature and the stage reserved a GPU.

mod files;
mod live;
mod op_generate;
mod op_init;
mod op_merge;
mod op_sample;
mod op_tokenizer;
mod op_train;
mod params;
mod pieces;

use api::protocol::OpInfo;
use api::{Backend, Error, Kind, OpContext};
use candle_core::{DType, Device};
use serde_json::Value;

use params::Op;

/// The candle-lm back-end. Every op but `generate` loads what it needs from its inputs and keeps nothing, so that
/// the worker process that runs it can free everything (GPU memory included) when it ends; `generate` keeps its
/// models loaded for the instance's next invokes (a few at most, see [`live`]).
#[derive(Default)]
pub struct CandleLm {
    live: live::Models,
}

impl CandleLm {
    /// How many models `generate` has loaded over this instance's life (a model reused from memory counts once).
    pub fn models_loaded(&self) -> usize {
        self.live.loads()
    }
}

impl Backend for CandleLm {
    const NAME: &'static str = "candle-lm";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const KIND: Kind = Kind::Model;

    fn ops() -> Vec<OpInfo> {
        // Results depend on the device (kernels differ in rounding) and on the compute dtype.
        let facts = || vec!["device".to_string(), "dtype".to_string()];
        vec![
            OpInfo {
                name: "init".into(),
                summary: "a new model directory with seeded random weights, from a tokenizer and config fields".into(),
                env_facts: vec![],
                unkeyed_params: vec![],
            },
            OpInfo {
                name: "train".into(),
                summary: "LoRA, full fine-tuning or plain LM training on a dataset stage's train.jsonl".into(),
                env_facts: facts(),
                unkeyed_params: vec![],
            },
            OpInfo {
                name: "sample".into(),
                summary: "one response per prompt of a prompts.jsonl (greedy, or sampled with top-k/top-p), batched"
                    .into(),
                env_facts: facts(),
                unkeyed_params: vec![],
            },
            OpInfo {
                name: "tokenizer".into(),
                summary: "a byte-level BPE tokenizer trained on JSONL or text files".into(),
                env_facts: vec![],
                unkeyed_params: vec![],
            },
            OpInfo {
                name: "merge".into(),
                summary: "a LoRA adapter merged into its base model's weights, written as an HF model directory".into(),
                env_facts: facts(),
                unkeyed_params: vec![],
            },
            OpInfo {
                name: "generate".into(),
                summary: "one completion on a live instance (rto serve)".into(),
                env_facts: facts(),
                unkeyed_params: vec![],
            },
        ]
    }

    fn create(config: &Value) -> Result<Self, Error> {
        // No plugin config yet; refusing one catches a config meant for another plugin.
        match config {
            Value::Null => Ok(CandleLm::default()),
            Value::Object(m) if m.is_empty() => Ok(CandleLm::default()),
            _ => Err(Error::Failed("candle-lm takes no plugin config; its settings are per-op params".into())),
        }
    }

    fn validate(&self, op: &str, params: &Value, input_names: &[String]) -> Result<(), Error> {
        let parsed = Op::parse(op, params)?;
        let Some((required, optional)) = parsed.inputs() else {
            if input_names.is_empty() {
                return Err(Error::Failed(format!(
                    "`candle-lm:{op}` needs at least one input (JSONL or text files, any names)"
                )));
            }
            return Ok(());
        };
        if let Some(missing) = required.iter().find(|r| !input_names.iter().any(|n| n == *r)) {
            return Err(Error::Failed(format!(
                "`candle-lm:{op}` needs input `{missing}`; its inputs: {}{}",
                params::quoted(required),
                if optional.is_empty() { String::new() } else { format!(", optional {}", params::quoted(optional)) }
            )));
        }
        // An extra input is almost always a misspelt name; ignoring it would hide the mistake.
        if let Some(extra) =
            input_names.iter().find(|n| !required.contains(&n.as_str()) && !optional.contains(&n.as_str()))
        {
            let mut all: Vec<&str> = required.iter().chain(optional).copied().collect();
            all.sort_unstable();
            return Err(Error::Failed(format!(
                "`candle-lm:{op}` has no input `{extra}`; its inputs: {}",
                params::quoted(&all)
            )));
        }
        if let Op::Init(p) = &parsed {
            // The config's shape rules (heads dividing the width, …) are checked before anything runs; the vocab
            // size comes from the tokenizer later, so a placeholder stands in when the study gives none.
            op_init::model_config(p, None, None, None)?;
        }
        Ok(())
    }

    fn invoke(&mut self, op: &str, ctx: &mut OpContext<'_>) -> Result<Value, Error> {
        match Op::parse(op, ctx.params)? {
            Op::Init(p) => op_init::run(&p, ctx),
            Op::Train(p) => op_train::run(&p, ctx),
            Op::Sample(p) => op_sample::run(&p, ctx),
            Op::Tokenizer(p) => op_tokenizer::run(&p, ctx),
            Op::Merge(p) => op_merge::run(&p, ctx),
            Op::Generate(p) => op_generate::run(&p, ctx, &mut self.live),
        }
    }
}

/// The device an op computes on: the first GPU the stage reserved (the host sets `CUDA_VISIBLE_DEVICES` to the
/// reserved ones, so it is ordinal 0) when built with `cuda`, else the CPU. A stage that reserved no GPU runs on
/// the CPU even in a CUDA build, so that it never takes a device the scheduler gave to another stage.
fn device(ctx: &OpContext<'_>) -> Result<Device, Error> {
    if ctx.gpus.is_empty() {
        return Ok(Device::Cpu);
    }
    cuda_device(ctx)
}

#[cfg(feature = "cuda")]
fn cuda_device(_ctx: &OpContext<'_>) -> Result<Device, Error> {
    Device::new_cuda(0).map_err(|e| Error::Failed(format!("cannot open the reserved GPU: {e}")))
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(ctx: &OpContext<'_>) -> Result<Device, Error> {
    ctx.log("the stage reserved a GPU but candle-lm was built without the `cuda` feature: running on the CPU");
    Ok(Device::Cpu)
}

/// How a device and dtype are named in logs and summaries.
fn describe(device: &Device, dtype: DType) -> String {
    let d = if device.is_cuda() { "cuda" } else { "cpu" };
    format!("{d}, {}", dtype.as_str())
}
