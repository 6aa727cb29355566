//! AdamW (Loshchilov & Hutter 2019, arXiv 1711.05101) with state that can be saved and restored.
//!
//! The maths is `candle_nn::AdamW`'s, op for op (so the two give bitwise equal weights): bias-corrected moments
//! and decoupled weight decay,
//!
//! ```text
//! m ← β1 m + (1 − β1) g          v ← β2 v + (1 − β2) g²
//! θ ← θ (1 − lr λ) − lr · (m / (1 − β1ᵗ)) / (sqrt(v / (1 − β2ᵗ)) + ε)
//! ```
//!
//! candle's optimiser keeps `m` and `v` private, which makes resuming a run impossible; here they are kept per
//! Var *name* and written to / read from a safetensors file (`exp_avg.<name>`, `exp_avg_sq.<name>`, PyTorch's
//! names, and the step count in the metadata), so a run resumed from a checkpoint continues bit for bit.
//!
//! Unlike candle's, [`AdamW::step`] fails when a Var has no gradient instead of silently skipping it: a skipped
//! Var is a model that does not learn.

use std::collections::HashMap;
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};
pub use candle_nn::ParamsAdamW;

/// Metadata key of the step count in a saved state.
const STEP_KEY: &str = "adamw_step";

/// One trained Var and its moments.
#[derive(Debug)]
struct Slot {
    name: String,
    var: Var,
    m: Tensor,
    v: Tensor,
}

/// AdamW over named Vars; see the module docs.
#[derive(Debug)]
pub struct AdamW {
    slots: Vec<Slot>,
    step: usize,
    params: ParamsAdamW,
}

impl AdamW {
    /// An optimiser over `vars` (name, Var) with zero moments at step 0. Names must be unique.
    pub fn new(vars: Vec<(String, Var)>, params: ParamsAdamW) -> Result<Self> {
        let mut slots: Vec<Slot> = Vec::with_capacity(vars.len());
        for (name, var) in vars {
            if slots.iter().any(|s| s.name == name) {
                candle_core::bail!("AdamW: the Var name `{name}` is given twice");
            }
            let m = Tensor::zeros(var.shape(), var.dtype(), var.device())?;
            let v = Tensor::zeros(var.shape(), var.dtype(), var.device())?;
            slots.push(Slot { name, var, m, v });
        }
        Ok(Self { slots, step: 0, params })
    }

    /// The hyper-parameters.
    pub fn params(&self) -> &ParamsAdamW {
        &self.params
    }

    /// The learning rate of the next step.
    pub fn learning_rate(&self) -> f64 {
        self.params.lr
    }

    /// Sets the learning rate of the next step (schedules call this before every step).
    pub fn set_learning_rate(&mut self, lr: f64) {
        self.params.lr = lr;
    }

    /// Steps taken so far (`t` of the bias correction).
    pub fn step_count(&self) -> usize {
        self.step
    }

    /// The names of the optimised Vars, in the order given to [`AdamW::new`].
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.slots.iter().map(|s| s.name.as_str())
    }

    /// One update from `grads`; every Var must have a gradient there.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        if let Some(s) = self.slots.iter().find(|s| grads.get(&s.var).is_none()) {
            candle_core::bail!("AdamW: no gradient for `{}`", s.name);
        }
        self.step += 1;
        let lr = self.params.lr;
        let lr_lambda = lr * self.params.weight_decay;
        let (beta1, beta2) = (self.params.beta1, self.params.beta2);
        let t = i32::try_from(self.step).unwrap_or(i32::MAX);
        let scale_m = 1f64 / (1f64 - beta1.powi(t));
        let scale_v = 1f64 / (1f64 - beta2.powi(t));
        for slot in &mut self.slots {
            let theta = &slot.var;
            let Some(g) = grads.get(theta) else { unreachable!("checked above") };
            // The same ops in the same order as candle_nn::AdamW::step.
            let next_m = ((&slot.m * beta1)? + (g * (1.0 - beta1))?)?;
            let next_v = ((&slot.v * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
            let m_hat = (&next_m * scale_m)?;
            let v_hat = (&next_v * scale_v)?;
            let next_theta = (theta.as_tensor() * (1f64 - lr_lambda))?;
            let adjusted_grad = (m_hat / (v_hat.sqrt()? + self.params.eps)?)?;
            let next_theta = (next_theta - (adjusted_grad * lr)?)?;
            slot.m = next_m;
            slot.v = next_v;
            theta.set(&next_theta)?;
        }
        Ok(())
    }

    /// The moments by tensor name (`exp_avg.<var>`, `exp_avg_sq.<var>`).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.slots.len());
        for s in &self.slots {
            out.push((format!("exp_avg.{}", s.name), s.m.clone()));
            out.push((format!("exp_avg_sq.{}", s.name), s.v.clone()));
        }
        out
    }

    /// Writes the moments and the step count to a safetensors file at `path` (not atomically: callers that
    /// need atomicity write into a temporary directory and rename it).
    pub fn save(&self, path: &Path) -> Result<()> {
        let state = self.state();
        let metadata = HashMap::from([(STEP_KEY.to_string(), self.step.to_string())]);
        safetensors::serialize_to_file(state.iter().map(|(n, t)| (n.as_str(), t)), Some(metadata), path)
            .map_err(|e| candle_core::Error::Msg(format!("cannot write `{}`: {e}", path.display())))
    }

    /// Replaces the moments and the step count with those saved at `path` by [`AdamW::save`]. The file must
    /// hold exactly this optimiser's Vars with the same shapes and dtypes; on error nothing changes.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let bytes = std::fs::read(path)
            .map_err(|e| candle_core::Error::Msg(format!("cannot read `{}`: {e}", path.display())))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| candle_core::Error::Msg(format!("`{}` is not a safetensors file: {e}", path.display())))?;
        let step: usize = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get(STEP_KEY))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| candle_core::Error::Msg(format!("`{}` has no `{STEP_KEY}`", path.display())))?;
        let device = self.slots.first().map_or(candle_core::Device::Cpu, |s| s.var.device().clone());
        let mut tensors = candle_core::safetensors::load_buffer(&bytes, &device)?;
        if tensors.len() != 2 * self.slots.len() {
            candle_core::bail!(
                "`{}` holds {} tensors, the optimiser has {} Vars",
                path.display(),
                tensors.len(),
                self.slots.len()
            );
        }
        let mut loaded = Vec::with_capacity(self.slots.len());
        for s in &self.slots {
            let mut take = |key: String| -> Result<Tensor> {
                let t = tensors
                    .remove(&key)
                    .ok_or_else(|| candle_core::Error::Msg(format!("`{}` has no `{key}`", path.display())))?;
                if t.shape() != s.var.shape() || t.dtype() != s.var.dtype() {
                    candle_core::bail!(
                        "`{key}` in `{}` is {:?} {:?}, the Var is {:?} {:?}",
                        path.display(),
                        t.dtype(),
                        t.dims(),
                        s.var.dtype(),
                        s.var.dims()
                    );
                }
                Ok(t)
            };
            loaded.push((take(format!("exp_avg.{}", s.name))?, take(format!("exp_avg_sq.{}", s.name))?));
        }
        for (s, (m, v)) in self.slots.iter_mut().zip(loaded) {
            s.m = m;
            s.v = v;
        }
        self.step = step;
        Ok(())
    }
}
