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
//! Each step appends one line to `metrics.jsonl`: `{"step", "epoch", "loss", "lr", "grad_norm",
//! "tokens_per_s"}` (`grad_norm` before clipping).

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarMap};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::data::{Tokenized, make_batch, masked_nll};
use crate::lora::DropoutRng;
use crate::model::CausalLm;

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

/// The micro-batch plan of one epoch: example indices per micro-batch, grouped per step.
fn epoch_plan(n: usize, cfg: &TrainConfig, epoch: usize) -> Vec<Vec<Vec<usize>>> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(mix(cfg.seed, 0x5eed, epoch as u64)));
    let micro: Vec<Vec<usize>> = order.chunks(cfg.micro_batch).map(<[usize]>::to_vec).collect();
    micro.chunks(cfg.grad_accum).map(<[Vec<usize>]>::to_vec).collect()
}

/// A seed for stream `what` at index `i`, so each use draws independently of the others.
fn mix(seed: u64, what: u64, i: u64) -> u64 {
    let mut x = seed ^ what.rotate_left(32) ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    // splitmix64 finaliser
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Trainer<'_> {
    /// Trains on `examples`, appending a line per step to `metrics` and calling `progress(done, total)` after
    /// each step; `cancelled` is checked before every micro-batch. Returns every step's metrics.
    pub fn run(
        &self,
        examples: &[Tokenized],
        cfg: &TrainConfig,
        metrics: &Path,
        progress: &mut dyn FnMut(u64, u64),
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Vec<StepMetrics>, TrainError> {
        cfg.validate().map_err(TrainError::Config)?;
        let usable: Vec<&Tokenized> = examples.iter().filter(|e| e.loss_tokens() > 0).collect();
        if usable.is_empty() {
            return Err(TrainError::NoData);
        }
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
        let mut opt = AdamW::new(vars.iter().map(|(_, v)| v.clone()).collect(), params)?;
        let mut out = std::fs::OpenOptions::new().create(true).append(true).open(metrics)?;
        let mut history = Vec::with_capacity(total);

        let mut step = 0;
        'epochs: for epoch in 0.. {
            for micro_batches in epoch_plan(usable.len(), cfg, epoch) {
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
                    let logits = self.model.forward(&batch.input_ids, None)?;
                    let loss = (masked_nll(&logits, &batch.targets, &batch.weights)? / step_targets as f64)?;
                    let grads = loss.backward()?;
                    loss_sum += loss.to_scalar::<f32>()?;
                    tokens += batch.tokens;
                    for (name, var) in &vars {
                        let Some(g) = grads.get(var) else { return Err(TrainError::NoGradient(name.clone())) };
                        let g = g.detach();
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
