//! The training loop: masked next-token loss over tokenized examples, AdamW, schedule, accumulation, clipping.
//!
//! One optimiser step consumes `grad_accum` micro-batches of `micro_batch` examples, in an order shuffled per
//! epoch from `seed`. The loss of a step is the mean over all its counted target tokens (each micro-batch's sum
//! is divided by the step's total), so accumulation gives the gradient one big batch would. Kept gradients are
//! detached: a raw `GradStore` holds the whole forward graph alive (reference/candle.md §2.4).
//!
//! `candle_nn::AdamW` silently skips a Var without a gradient, which is how a model with a non-differentiable op
//! "trains" without learning; so every trainable Var must have a gradient after each backward pass, or the step
//! fails with [`TrainError::NoGradient`]. Its weight decay applies to every trainable tensor.
//!
//! Options: length-grouped batching ([`epoch_plan`]) and gradient checkpointing ([`crate::backward`]). Mixed
//! precision needs nothing here: with a bf16 model the LoRA adapters stay f32 master weights (cast to bf16 in the
//! forward, [`crate::lora::Linear`]), so gradients, their norm and the optimiser's moments are f32, and the loss
//! is computed from logits upcast to f32 ([`crate::data::masked_nll`]).
//!
//! Each step appends one line to `metrics.jsonl`: `{"step", "epoch", "loss", "lr", "grad_norm",
//! "tokens_per_s"}` (`grad_norm` before clipping).
//!
//! **Checkpoints** ([`Trainer::run_checkpointed`]): every `checkpoint_every` steps the run writes
//! `<dir>/step-NNNNNNNNN/` — the trainable Vars by name (`params.safetensors`), the optimiser's moments and step
//! ([`crate::optim::AdamW`], `optimizer.safetensors`) and `state.json` (the step, the data-order position as
//! epoch and batch within it, the metrics so far, and fingerprints of the config and of the data) — into a
//! temporary directory that is renamed into place once complete, so a crash leaves either a whole checkpoint or
//! an ignored `.tmp-*` directory. On start the run resumes from the newest checkpoint that loads and whose
//! fingerprints match. Nothing else carries state from one step to the next: the epoch order is drawn from
//! `(seed, epoch)`, dropout masks from `(seed, step, micro-batch)` and the learning rate from the step, so a
//! resumed run ends with weights bitwise equal to an uninterrupted one (on the CPU).

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use candle_nn::VarMap;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::backward::loss_and_grads;
use crate::data::{Tokenized, make_batch};
use crate::lora::DropoutRng;
use crate::model::CausalLm;
use crate::optim::{AdamW, ParamsAdamW};

/// Learning-rate schedule after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    /// The peak rate throughout (the paper).
    Constant,
    /// Cosine decay from the peak to zero at the last step.
    Cosine,
}

/// Training hyper-parameters (the paper's values after "paper:").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Peak learning rate (paper: 1e-4).
    pub lr: f64,
    /// AdamW weight decay (paper: 0).
    pub weight_decay: f64,
    /// AdamW betas and epsilon.
    pub beta1: f64,
    /// See `beta1`.
    pub beta2: f64,
    /// See `beta1`.
    pub eps: f64,
    /// Schedule after warm-up (paper: constant).
    pub schedule: Schedule,
    /// Steps of linear warm-up from 0 to `lr` (paper: 0).
    pub warmup_steps: usize,
    /// Examples per forward pass (paper: 8).
    pub micro_batch: usize,
    /// Micro-batches per optimiser step (paper: 8, effective batch 64).
    pub grad_accum: usize,
    /// Clip the global gradient norm to this (paper: 0.3); `None` disables clipping.
    pub max_grad_norm: Option<f64>,
    /// Truncate examples to this many tokens (paper: 2048).
    pub max_len: usize,
    /// Seed of shuffling and dropout (paper: 0).
    pub seed: u64,
    /// Passes over the data (paper: 10).
    pub epochs: usize,
    /// Stop after this many steps instead (more epochs are run if needed).
    pub max_steps: Option<usize>,
    /// Write a checkpoint every this many optimiser steps (with [`Trainer::run_checkpointed`]); `None`: never.
    /// Not part of what a checkpoint must match: a run may resume with another cadence.
    #[serde(default)]
    pub checkpoint_every: Option<usize>,
    /// Sort each mega-batch of the shuffled order by length before cutting micro-batches, so that a micro-batch
    /// holds examples of similar length and little padding (see [`epoch_plan`]). Off by default (HF's
    /// `group_by_length`). Serialised only when on, so that checkpoints written before it existed still match.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub group_by_length: bool,
    /// Recompute each decoder layer's activations in the backward pass instead of keeping them: less memory,
    /// about one more forward pass of time ([`crate::backward`]). Off by default. Serialised only when on.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub gradient_checkpointing: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            lr: 1e-4,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            schedule: Schedule::Constant,
            warmup_steps: 0,
            micro_batch: 8,
            grad_accum: 8,
            max_grad_norm: Some(0.3),
            max_len: 2048,
            seed: 0,
            epochs: 10,
            max_steps: None,
            checkpoint_every: None,
            group_by_length: false,
            gradient_checkpointing: false,
        }
    }
}

impl TrainConfig {
    /// Checks values that would otherwise loop forever, divide by zero or diverge; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.micro_batch == 0 || self.grad_accum == 0 {
            return Err("`micro_batch` and `grad_accum` must be at least 1".into());
        }
        if self.max_len < 2 {
            return Err("`max_len` must be at least 2".into());
        }
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            return Err(format!("`lr` must be a non-negative number, got {}", self.lr));
        }
        if self.max_grad_norm.is_some_and(|n| n.is_nan() || n <= 0.0) {
            return Err("`max_grad_norm` must be positive".into());
        }
        if self.checkpoint_every == Some(0) {
            return Err("`checkpoint_every` must be at least 1 (or unset)".into());
        }
        if self.epochs == 0 && self.max_steps.is_none() {
            return Err("`epochs` must be at least 1 (or set `max_steps`)".into());
        }
        Ok(())
    }

    /// The learning rate of step `step` (0-based) out of `total`.
    pub fn lr_at(&self, step: usize, total: usize) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        match self.schedule {
            Schedule::Constant => self.lr,
            Schedule::Cosine => {
                let span = total.saturating_sub(self.warmup_steps).max(1) as f64;
                let progress = (step - self.warmup_steps) as f64 / span;
                self.lr * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }
}

/// Why training stopped early.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The config is invalid.
    #[error("invalid training config: {0}")]
    Config(String),
    /// No example has a target token (after truncation).
    #[error("no example has a loss token within `max_len`")]
    NoData,
    /// A trainable tensor got no gradient: the model cuts the autograd graph somewhere.
    #[error("parameter `{0}` received no gradient; the model uses an op without a backward pass")]
    NoGradient(String),
    /// The loss became NaN or infinite.
    #[error("step {step}: the loss is not finite ({loss})")]
    NonFinite {
        /// The step.
        step: usize,
        /// The loss.
        loss: f32,
    },
    /// The cancel check said stop.
    #[error("cancelled")]
    Cancelled,
    /// Writing a checkpoint failed.
    #[error("cannot write a checkpoint: {0}")]
    Checkpoint(String),
    /// Writing the metrics failed.
    #[error("cannot write metrics: {0}")]
    Io(#[from] std::io::Error),
    /// A tensor operation failed (out of memory, device error).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// 1-based optimiser step.
    pub step: usize,
    /// 0-based epoch the step belongs to.
    pub epoch: usize,
    /// Mean loss per target token.
    pub loss: f32,
    /// Learning rate used.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    /// Input tokens (padding excluded) per second of this step.
    pub tokens_per_s: f64,
}

/// What is trained and how the run talks to its host.
pub struct Trainer<'a> {
    /// The model, built over the trainable Vars.
    pub model: &'a dyn CausalLm,
    /// The Vars to train (all of a full fine-tune's weights, or only the LoRA adapters), by name.
    pub params: &'a VarMap,
    /// The adapters' dropout stream, switched on during training; `None` without LoRA.
    pub dropout: Option<&'a DropoutRng>,
    /// Where the batches go.
    pub device: &'a Device,
}

/// With [`TrainConfig::group_by_length`], a mega-batch holds the examples of at most this many optimiser steps.
///
/// HF's `LengthGroupedSampler` takes up to 50 steps' worth. Sorting a mega-batch makes its steps run from its
/// longest examples to its shortest, so the larger it is, the longer the runs of steps that see only long (or
/// only short) examples, and the more the gradient drifts with length; 8 already leaves a micro-batch little
/// padding (its neighbours in the sorted mega-batch are close in length) while keeping those runs short.
pub const GROUP_STEPS: usize = 8;

/// The micro-batch plan of epoch `epoch` over examples of token lengths `lengths`: example indices per
/// micro-batch, grouped per optimiser step.
///
/// The order is a shuffle drawn from `(seed, epoch)` alone, so a resumed run recomputes it. With
/// [`TrainConfig::group_by_length`], the shuffled order is cut into mega-batches of
/// `m × micro_batch × grad_accum` examples, `m = clamp(n / (4 × micro_batch × grad_accum), 1, GROUP_STEPS)` (HF's
/// formula with [`GROUP_STEPS`] in place of its 50, which gives a small data set about 4 mega-batches); each is
/// sorted by length, longest first (a stable sort: equal lengths keep their shuffled order), and, as HF does, the
/// epoch's longest example is swapped to the very front so that a batch too large for memory fails at the
/// first step rather than hours in. Micro-batches and steps are then cut as without grouping, so an epoch has
/// the same number of steps either way.
pub fn epoch_plan(lengths: &[usize], cfg: &TrainConfig, epoch: usize) -> Vec<Vec<Vec<usize>>> {
    // `validate` refuses zeros; a plan is still never cut in chunks of 0 (which would panic).
    let (micro_batch, grad_accum) = (cfg.micro_batch.max(1), cfg.grad_accum.max(1));
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(mix(cfg.seed, 0x5eed, epoch as u64)));
    if cfg.group_by_length {
        let step_size = micro_batch.saturating_mul(grad_accum);
        let mega = (order.len() / step_size.saturating_mul(4)).clamp(1, GROUP_STEPS).saturating_mul(step_size);
        for chunk in order.chunks_mut(mega) {
            chunk.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
        }
        // The first position holding the longest length.
        if let Some(longest) = (0..order.len()).max_by_key(|&p| (lengths[order[p]], std::cmp::Reverse(p))) {
            order.swap(0, longest);
        }
    }
    let micro: Vec<Vec<usize>> = order.chunks(micro_batch).map(<[usize]>::to_vec).collect();
    micro.chunks(grad_accum).map(<[Vec<usize>]>::to_vec).collect()
}

/// A seed for stream `what` at index `i`, so each use draws independently of the others.
fn mix(seed: u64, what: u64, i: u64) -> u64 {
    let mut x = seed ^ what.rotate_left(32) ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    // splitmix64 finaliser
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Where a run keeps its checkpoints, and how it reports what it found there.
pub struct Checkpoints<'a> {
    /// The directory (created when missing); it holds nothing but this run's checkpoints.
    pub dir: &'a Path,
    /// Receives one line when the run resumes ("resuming from step N") or skips an unusable checkpoint.
    pub log: &'a dyn Fn(&str),
}

/// Version of the checkpoint layout, in `state.json`.
const CHECKPOINT_FORMAT: u32 = 1;
/// Complete checkpoints kept: the newest and one before it, in case the newest cannot be read.
const CHECKPOINTS_KEPT: usize = 2;

/// `state.json` of a checkpoint.
#[derive(Debug, Serialize, Deserialize)]
struct CheckpointState {
    format: u32,
    /// Optimiser steps done.
    step: usize,
    /// Where the data order continues: epoch, and steps of that epoch already done.
    epoch: usize,
    batch: usize,
    /// The config (without `checkpoint_every`) as JSON, and a hash of the usable examples: a checkpoint of
    /// another run is never resumed.
    config: String,
    data: String,
    /// Metrics of the steps done, floats as bits (JSON text does not round-trip every f64 exactly).
    history: Vec<SavedMetrics>,
}

/// [`StepMetrics`] with its floats as bits.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SavedMetrics {
    step: usize,
    epoch: usize,
    loss: u32,
    lr: u64,
    grad_norm: u32,
    tokens_per_s: u64,
}

impl From<&StepMetrics> for SavedMetrics {
    fn from(m: &StepMetrics) -> Self {
        Self {
            step: m.step,
            epoch: m.epoch,
            loss: m.loss.to_bits(),
            lr: m.lr.to_bits(),
            grad_norm: m.grad_norm.to_bits(),
            tokens_per_s: m.tokens_per_s.to_bits(),
        }
    }
}

impl From<&SavedMetrics> for StepMetrics {
    fn from(m: &SavedMetrics) -> Self {
        Self {
            step: m.step,
            epoch: m.epoch,
            loss: f32::from_bits(m.loss),
            lr: f64::from_bits(m.lr),
            grad_norm: f32::from_bits(m.grad_norm),
            tokens_per_s: f64::from_bits(m.tokens_per_s),
        }
    }
}

/// The config as a checkpoint records it: everything that changes the result.
fn config_fingerprint(cfg: &TrainConfig) -> String {
    let cfg = TrainConfig { checkpoint_every: None, ..cfg.clone() };
    serde_json::to_string(&cfg).unwrap_or_default()
}

/// FNV-1a over the usable examples' tokens and loss flags, in order.
fn data_fingerprint(usable: &[&Tokenized]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    };
    eat(&(usable.len() as u64).to_le_bytes());
    for e in usable {
        eat(&(e.ids.len() as u64).to_le_bytes());
        for (id, loss) in e.ids.iter().zip(&e.loss) {
            eat(&id.to_le_bytes());
            eat(&[u8::from(*loss)]);
        }
    }
    format!("{h:016x}")
}

fn checkpoint_name(step: usize) -> String {
    format!("step-{step:09}")
}

/// Complete checkpoint directories in `dir`, newest first.
fn list_checkpoints(dir: &Path) -> Vec<(usize, std::path::PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut found: Vec<(usize, std::path::PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let step = name.strip_prefix("step-")?.parse().ok()?;
            e.path().is_dir().then(|| (step, e.path()))
        })
        .collect();
    found.sort_by_key(|f| std::cmp::Reverse(f.0));
    found
}

fn sync_file(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(path)?.sync_all()
}

/// Writes a checkpoint atomically: into `<dir>/.tmp-…`, then renamed to `<dir>/step-…`; older ones beyond
/// [`CHECKPOINTS_KEPT`] are removed.
fn write_checkpoint(
    dir: &Path,
    vars: &[(String, Var)],
    opt: &AdamW,
    state: &CheckpointState,
) -> Result<(), TrainError> {
    let fail = |what: &str, e: &dyn std::fmt::Display| TrainError::Checkpoint(format!("{what}: {e}"));
    let name = checkpoint_name(state.step);
    let tmp = dir.join(format!(".tmp-{name}-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| fail(&format!("cannot remove `{}`", tmp.display()), &e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| fail(&format!("cannot create `{}`", tmp.display()), &e))?;
    let params = tmp.join("params.safetensors");
    safetensors::serialize_to_file(vars.iter().map(|(n, v)| (n.as_str(), v.as_tensor())), None, &params)
        .map_err(|e| fail(&format!("cannot write `{}`", params.display()), &e))?;
    let optimizer = tmp.join("optimizer.safetensors");
    opt.save(&optimizer).map_err(|e| fail("optimiser state", &e))?;
    let json = tmp.join("state.json");
    let text = serde_json::to_string(state).map_err(|e| fail("state", &e))?;
    std::fs::write(&json, text).map_err(|e| fail(&format!("cannot write `{}`", json.display()), &e))?;
    for f in [&params, &optimizer, &json] {
        sync_file(f).map_err(|e| fail(&format!("cannot sync `{}`", f.display()), &e))?;
    }
    let _ = sync_file(&tmp);
    let target = dir.join(&name);
    if target.exists() {
        // A checkpoint of the same step from an earlier attempt (one that could not be resumed).
        std::fs::remove_dir_all(&target).map_err(|e| fail(&format!("cannot replace `{}`", target.display()), &e))?;
    }
    std::fs::rename(&tmp, &target).map_err(|e| fail(&format!("cannot rename into `{}`", target.display()), &e))?;
    let _ = sync_file(dir);
    for (step, old) in list_checkpoints(dir).into_iter().skip(CHECKPOINTS_KEPT) {
        if step < state.step {
            let _ = std::fs::remove_dir_all(old);
        }
    }
    Ok(())
}

/// Loads the checkpoint in `path` into `vars` and `opt` when it is complete and belongs to this run (`config`
/// and `data` fingerprints); on error nothing has changed.
fn load_checkpoint(
    path: &Path,
    vars: &[(String, Var)],
    opt: &mut AdamW,
    config: &str,
    data: &str,
) -> Result<CheckpointState, String> {
    let text = std::fs::read_to_string(path.join("state.json")).map_err(|e| format!("no state.json ({e})"))?;
    let state: CheckpointState = serde_json::from_str(&text).map_err(|e| format!("bad state.json ({e})"))?;
    if state.format != CHECKPOINT_FORMAT {
        return Err(format!("layout version {} (expected {CHECKPOINT_FORMAT})", state.format));
    }
    if state.config != config {
        return Err("written with another training config".into());
    }
    if state.data != data {
        return Err("written for other training data".into());
    }
    if state.history.len() != state.step {
        return Err(format!("{} metrics lines for step {}", state.history.len(), state.step));
    }
    let device = vars.first().map_or(Device::Cpu, |(_, v)| v.device().clone());
    let mut tensors = candle_core::safetensors::load(path.join("params.safetensors"), &device)
        .map_err(|e| format!("cannot read params.safetensors ({e})"))?;
    if tensors.len() != vars.len() {
        return Err(format!("{} tensors, the run trains {}", tensors.len(), vars.len()));
    }
    let mut values = Vec::with_capacity(vars.len());
    for (name, var) in vars {
        let t = tensors.remove(name).ok_or_else(|| format!("no tensor `{name}`"))?;
        if t.shape() != var.shape() || t.dtype() != var.dtype() {
            return Err(format!(
                "`{name}` is {:?} {:?}, expected {:?} {:?}",
                t.dtype(),
                t.dims(),
                var.dtype(),
                var.dims()
            ));
        }
        values.push(t);
    }
    opt.load(&path.join("optimizer.safetensors")).map_err(|e| format!("optimiser state: {e}"))?;
    if opt.step_count() != state.step {
        return Err(format!("optimiser at step {}, checkpoint at step {}", opt.step_count(), state.step));
    }
    for ((_, var), t) in vars.iter().zip(values) {
        var.set(&t).map_err(|e| e.to_string())?;
    }
    Ok(state)
}

impl Trainer<'_> {
    /// Trains on `examples`, appending a line per step to `metrics` and calling `progress(done, total)` after
    /// each step; `cancelled` is checked before every micro-batch. Returns every step's metrics. No
    /// checkpoints: see [`Trainer::run_checkpointed`].
    pub fn run(
        &self,
        examples: &[Tokenized],
        cfg: &TrainConfig,
        metrics: &Path,
        progress: &mut dyn FnMut(u64, u64),
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Vec<StepMetrics>, TrainError> {
        self.run_checkpointed(examples, cfg, metrics, None, progress, cancelled)
    }

    /// [`Trainer::run`], resuming from the newest usable checkpoint in `checkpoints.dir` and writing one there
    /// every `cfg.checkpoint_every` steps (see the module docs). On resume, `metrics` is rewritten to hold the
    /// checkpoint's steps before new ones are appended, and the returned metrics cover the whole run.
    pub fn run_checkpointed(
        &self,
        examples: &[Tokenized],
        cfg: &TrainConfig,
        metrics: &Path,
        checkpoints: Option<&Checkpoints<'_>>,
        progress: &mut dyn FnMut(u64, u64),
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Vec<StepMetrics>, TrainError> {
        cfg.validate().map_err(TrainError::Config)?;
        let usable: Vec<&Tokenized> = examples.iter().filter(|e| e.loss_tokens() > 0).collect();
        if usable.is_empty() {
            return Err(TrainError::NoData);
        }
        let lengths: Vec<usize> = usable.iter().map(|e| e.ids.len()).collect();
        let steps_per_epoch = usable.len().div_ceil(cfg.micro_batch * cfg.grad_accum);
        let total = cfg.max_steps.unwrap_or(steps_per_epoch * cfg.epochs);
        let vars: Vec<(String, Var)> = {
            let data = self.params.data().lock().unwrap_or_else(|e| e.into_inner());
            let mut v: Vec<_> = data.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        let params = ParamsAdamW {
            lr: cfg.lr,
            beta1: cfg.beta1,
            beta2: cfg.beta2,
            eps: cfg.eps,
            weight_decay: cfg.weight_decay,
        };
        let mut opt = AdamW::new(vars.clone(), params)?;
        let (config_fp, data_fp) = (config_fingerprint(cfg), data_fingerprint(&usable));

        let mut history = Vec::with_capacity(total);
        let (mut step, mut start_epoch, mut start_batch) = (0, 0, 0);
        if let Some(ck) = checkpoints {
            std::fs::create_dir_all(ck.dir)
                .map_err(|e| TrainError::Checkpoint(format!("cannot create `{}`: {e}", ck.dir.display())))?;
            // Leftovers of a crash while writing: never complete, never read.
            if let Ok(entries) = std::fs::read_dir(ck.dir) {
                for e in entries.filter_map(Result::ok) {
                    if e.file_name().to_string_lossy().starts_with(".tmp-") {
                        let _ = std::fs::remove_dir_all(e.path());
                    }
                }
            }
            for (_, path) in list_checkpoints(ck.dir) {
                match load_checkpoint(&path, &vars, &mut opt, &config_fp, &data_fp) {
                    Ok(state) => {
                        (ck.log)(&format!("resuming from step {} (checkpoint `{}`)", state.step, path.display()));
                        (step, start_epoch, start_batch) = (state.step, state.epoch, state.batch);
                        history = state.history.iter().map(StepMetrics::from).collect();
                        break;
                    }
                    Err(why) => {
                        // Half-written or of another run: never resumable, so it would only be retried.
                        (ck.log)(&format!("removing checkpoint `{}`, which cannot be resumed: {why}", path.display()));
                        let _ = std::fs::remove_dir_all(&path);
                    }
                }
            }
        }
        let mut out = if step > 0 {
            let mut f = std::fs::File::create(metrics)?;
            for m in &history {
                writeln!(f, "{}", serde_json::to_string(m).map_err(std::io::Error::other)?)?;
            }
            progress(step as u64, total as u64);
            f
        } else {
            std::fs::OpenOptions::new().create(true).append(true).open(metrics)?
        };

        'epochs: for epoch in start_epoch.. {
            let skip = if epoch == start_epoch { start_batch } else { 0 };
            let plan = epoch_plan(&lengths, cfg, epoch);
            let plan_len = plan.len();
            for (batch_index, micro_batches) in plan.into_iter().enumerate().skip(skip) {
                if step >= total {
                    break 'epochs;
                }
                let started = Instant::now();
                let lr = cfg.lr_at(step, total);
                opt.set_learning_rate(lr);
                let batches = micro_batches
                    .iter()
                    .filter_map(|idx| {
                        let rows: Vec<&Tokenized> = idx.iter().map(|&i| usable[i]).collect();
                        make_batch(&rows, self.device).transpose()
                    })
                    .collect::<candle_core::Result<Vec<_>>>()?;
                let step_targets: usize = batches.iter().map(|b| b.loss_tokens).sum();
                let mut acc: HashMap<String, Tensor> = HashMap::new();
                let (mut loss_sum, mut tokens) = (0f32, 0usize);
                for (m, batch) in batches.iter().enumerate() {
                    if cancelled() {
                        return Err(TrainError::Cancelled);
                    }
                    if let Some(d) = self.dropout {
                        d.reseed(Some(mix(cfg.seed, 0xd209, (step * cfg.grad_accum + m) as u64)));
                    }
                    let (loss, grads) = loss_and_grads(
                        self.model,
                        batch,
                        step_targets as f64,
                        &vars,
                        self.dropout,
                        cfg.gradient_checkpointing,
                    )?;
                    loss_sum += loss;
                    tokens += batch.tokens;
                    for ((name, _), g) in vars.iter().zip(grads) {
                        let next = match acc.remove(name) {
                            Some(prev) => (prev + g)?,
                            None => g,
                        };
                        acc.insert(name.clone(), next);
                    }
                }
                if let Some(d) = self.dropout {
                    d.reseed(None);
                }
                if !loss_sum.is_finite() {
                    return Err(TrainError::NonFinite { step: step + 1, loss: loss_sum });
                }
                // Summed in name order: a HashMap's order differs between instances, and f32 addition in another
                // order changes the norm's last bits, hence the clipping factor, hence the weights.
                let mut sq = 0f32;
                for (name, _) in &vars {
                    if let Some(g) = acc.get(name) {
                        sq += g.sqr()?.sum_all()?.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?;
                    }
                }
                let grad_norm = sq.sqrt();
                let clip = match cfg.max_grad_norm {
                    Some(max) if f64::from(grad_norm) > max => max / (f64::from(grad_norm) + 1e-6),
                    _ => 1.0,
                };
                let mut store = GradStore::default();
                for (name, var) in &vars {
                    if let Some(g) = acc.remove(name) {
                        let g = if clip < 1.0 { (g * clip)? } else { g };
                        store.insert(var, g);
                    }
                }
                opt.step(&store)?;
                step += 1;
                let m = StepMetrics {
                    step,
                    epoch,
                    loss: loss_sum,
                    lr,
                    grad_norm,
                    tokens_per_s: tokens as f64 / started.elapsed().as_secs_f64().max(1e-9),
                };
                writeln!(out, "{}", serde_json::to_string(&m).map_err(std::io::Error::other)?)?;
                history.push(m);
                if let (Some(ck), Some(every)) = (checkpoints, cfg.checkpoint_every)
                    && step % every == 0
                {
                    out.flush()?;
                    let (epoch, batch) =
                        if batch_index + 1 == plan_len { (epoch + 1, 0) } else { (epoch, batch_index + 1) };
                    let state = CheckpointState {
                        format: CHECKPOINT_FORMAT,
                        step,
                        epoch,
                        batch,
                        config: config_fp.clone(),
                        data: data_fp.clone(),
                        history: history.iter().map(SavedMetrics::from).collect(),
                    };
                    write_checkpoint(ck.dir, &vars, &opt, &state)?;
                }
                progress(step as u64, total as u64);
            }
            if epoch > total {
                break; // Unreachable with data present; guards against an empty plan looping forever.
            }
        }
        out.flush()?;
        Ok(history)
    }
}
