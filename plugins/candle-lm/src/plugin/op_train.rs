//! `train`: loads the model (and an adapter to continue from), tokenizes the `dataset` stage's examples, runs
//! [`Trainer`] and writes `adapter/` (method `lora`) or `model/` (methods `full` and `lm`) with `metrics.jsonl`.
//!
//! Method `lm` marks every segment as a loss segment before tokenizing: plain causal-LM training on the whole
//! text, for pre-training a tiny model from `init`. A known bos token is prepended to every example (see
//! [`files::bos_id`]), in training and in `sample` alike; in `lm` training the model's eos is appended to every
//! example that fits in `max_len` and does not already end with it, so that a model pre-trained from scratch knows how a document ends.
//!
//! Memory: `gradient_checkpointing` recomputes each layer's activations in the backward pass, `group_by_length`
//! cuts micro-batches of similar lengths (less padding), and `dtype = "bf16"` (LoRA) runs the forward in bf16 with
//! the adapters kept as f32 master weights; all three are off by default.
//!
//! Checkpoints (param `checkpoint_every`, default every 50 steps, 0 = off) go to `checkpoints/` in the stage's
//! scratch directory, which rto keeps across failed or interrupted attempts of the same action and deletes after
//! success: a retried `train` resumes from the newest one ("resuming from step N" in the log) and ends with the
//! weights an uninterrupted run would have written.

use std::collections::BTreeMap;

use api::{Error, OpContext};
use candle_core::Tensor;
use serde_json::{Value, json};

use super::files;
use super::params::{Method, TrainParams};
use crate::data::{self, Tokenized};
use crate::load::LoadOptions;
use crate::lora::LoraSet;
use crate::train::{Checkpoints, TrainError, Trainer};

/// Runs `train`.
pub(super) fn run(p: &TrainParams, ctx: &mut OpContext<'_>) -> Result<Value, Error> {
    let model_dir = ctx.input("model")?;
    let device = super::device(ctx)?;
    ctx.log(&format!("method {}, device {}", p.method.name(), super::describe(&device, p.dtype)));
    let adapter = match ctx.inputs.get("adapter") {
        Some(dir) => Some(files::read_adapter(dir, &device)?),
        None => None,
    };

    let tokenizer = files::load_tokenizer(model_dir)?;
    let bos = files::bos_id(&tokenizer);
    let lm_eos = files::eos_ids(model_dir, &tokenizer)?.first().copied();
    let data_path = ctx.input("data")?;
    let mut examples = data::read_examples(data_path)?;
    if p.method == Method::Lm {
        for seg in examples.iter_mut().flat_map(|e| e.segments.iter_mut()) {
            seg.loss = true;
        }
    }
    let mut tokenized: Vec<Tokenized> = Vec::with_capacity(examples.len());
    for (i, e) in examples.iter().enumerate() {
        if i % 1024 == 0 && ctx.cancelled() {
            return Err(Error::Cancelled);
        }
        let mut t = data::tokenize(e, &tokenizer, bos, p.train.max_len)?;
        // Plain LM training ends each document with the eos, as GPT-style pre-training separates documents: a
        // base model that never saw the eos cannot learn to stop when fine-tuned on short answers.
        if p.method == Method::Lm
            && let Some(eos) = lm_eos
            && t.ids.len() < p.train.max_len
            && t.ids.last() != Some(&eos)
        {
            t.ids.push(eos);
            t.loss.push(true);
        }
        tokenized.push(t);
    }
    let tokens: usize = tokenized.iter().map(|t| t.ids.len()).sum();
    let loss_tokens: usize = tokenized.iter().map(Tokenized::loss_tokens).sum();
    ctx.log(&format!(
        "{} examples from `{}`: {tokens} tokens, {loss_tokens} targets",
        examples.len(),
        data_path.display()
    ));

    let lora = match (p.method, &adapter) {
        (Method::Lora, Some(a)) => {
            if p.lora.is_some() {
                return Err(Error::param(
                    &["lora"],
                    "the `adapter` input fixes the LoRA config (its adapter_config.json); remove `lora`",
                ));
            }
            Some(a.to_set(p.train.seed)?)
        }
        (Method::Lora, None) => {
            let config = p.lora.clone().unwrap_or_default();
            Some(LoraSet::new(config, p.train.seed).map_err(|m| Error::param(&["lora"], m))?)
        }
        _ => None,
    };
    // Continuing an adapter keeps it separate; full training starts from the base with the adapter merged in.
    let merge = if lora.is_some() { None } else { adapter.as_ref() };
    let opts = LoadOptions { dtype: p.dtype, device: device.clone(), trainable: lora.is_none() };
    let loaded = files::load_model(model_dir, merge, &opts, lora.as_ref())?;
    if let Some(set) = &lora {
        if set.modules().is_empty() {
            return Err(Error::param(
                &["lora", "target_modules"],
                format!(
                    "no layer of the model matches; linear layers are {}",
                    super::params::quoted(&crate::lora::ALL_LINEAR)
                ),
            ));
        }
        if let Some(a) = &adapter {
            a.check_used(set)?;
        }
    }

    let params = lora.as_ref().map_or(&loaded.params, |s| s.vars());
    let trainable: usize = params.all_vars().iter().map(|v| v.elem_count()).sum();
    let trainer =
        Trainer { model: &loaded.decoder, params, dropout: lora.as_ref().map(|s| s.dropout()), device: &device };
    let metrics = ctx.out_dir.join("metrics.jsonl");
    let checkpoint_dir = ctx.scratch_dir.join("checkpoints");
    let history = {
        let ctx = &*ctx;
        let log = |line: &str| ctx.log(line);
        let checkpoints = Checkpoints { dir: &checkpoint_dir, log: &log };
        trainer.run_checkpointed(
            &tokenized,
            &p.train,
            &metrics,
            Some(&checkpoints),
            &mut |done, total| ctx.progress(done, total),
            &|| ctx.cancelled(),
        )
    };
    let history = match history {
        Ok(h) => h,
        Err(TrainError::Cancelled) => return Err(Error::Cancelled),
        Err(TrainError::Config(m)) => return Err(Error::param(&[], m)),
        Err(e) => return Err(Error::Failed(e.to_string())),
    };

    let base_name = files::read_object(&model_dir.join("config.json"))?
        .and_then(|c| c.get("_name_or_path").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_default();
    let output = match &lora {
        Some(set) => {
            let dir = ctx.out_dir.join("adapter");
            set.save_peft(&dir, &base_name).map_err(|e| Error::Failed(format!("{e:#}")))?;
            "adapter"
        }
        None => {
            let dir = ctx.out_dir.join("model");
            std::fs::create_dir_all(&dir)
                .map_err(|e| Error::Failed(format!("cannot create `{}`: {e}", dir.display())))?;
            files::copy_side_files(model_dir, &dir)?;
            let data = loaded.params.data().lock().unwrap_or_else(|e| e.into_inner());
            let tensors: BTreeMap<String, Tensor> =
                data.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect();
            drop(data);
            files::save_weights(&tensors, &dir.join("model.safetensors"))?;
            "model"
        }
    };
    let (first, last) = (history.first().map(|m| m.loss), history.last().map(|m| m.loss));
    if let (Some(first), Some(last)) = (first, last) {
        ctx.log(&format!("{} steps, loss {first} → {last}", history.len()));
    }
    // No timings here: the summary must not change between identical runs.
    Ok(json!({
        "examples": examples.len(),
        "final_loss": last,
        "first_loss": first,
        "loss_tokens": loss_tokens,
        "method": p.method.name(),
        "output": output,
        "steps": history.len(),
        "tokens": tokens,
        "trainable_parameters": trainable,
    }))
}
