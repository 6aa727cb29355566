//! LoRA (Hu et al. 2021, arXiv 2106.09685): `y = W x + b + (alpha / r) · B A dropout(x)`, with `A` (`r × in`) and
//! `B` (`out × r`) the only trainable tensors.
//!
//! Every linear layer of a decoder is a [`Linear`]; whether it carries an adapter is decided when the model is
//! built, from its module path (`model.layers.3.self_attn.q_proj`) and [`LoraConfig::target_modules`]. The adapter
//! tensors live in a [`LoraSet`]'s own `VarMap` under PEFT's names (`base_model.model.<module>.lora_A.weight`), so
//! the optimiser gets exactly those Vars, the base weights (plain tensors) never change, and saving is writing
//! that map. Initialisation follows PEFT: `A` Kaiming-uniform (bound `1/sqrt(in)`), `B` zero, so a fresh adapter
//! leaves the model's output unchanged.
//!
//! Randomness (init and dropout) comes from ChaCha streams derived from a seed, never from candle's device RNG,
//! which cannot be seeded on CPU: identical seeds give identical runs, which resuming from a checkpoint needs.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Module, Result, Tensor, Var};
use candle_nn::VarMap;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// The linear layers of the Llama/Qwen2 family, PEFT's `all-linear` minus the output head.
pub const ALL_LINEAR: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

/// How adapters are shaped and where they go (the paper: r 64, alpha 16, dropout 0.1, all linear layers).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// Rank `r` of `A` and `B`.
    pub r: usize,
    /// Scale numerator: the update is multiplied by `alpha / r`.
    pub alpha: f64,
    /// Dropout on the adapter's input during training, in `[0, 1)`.
    pub dropout: f64,
    /// Module names (last path component, e.g. `q_proj`) that get an adapter; empty means [`ALL_LINEAR`].
    pub target_modules: Vec<String>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self { r: 64, alpha: 16.0, dropout: 0.1, target_modules: Vec::new() }
    }
}

impl LoraConfig {
    /// Checks the values a user may get wrong; the message names the field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.r == 0 {
            return Err("`r` must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("`dropout` must be in [0, 1), got {}", self.dropout));
        }
        if !self.alpha.is_finite() {
            return Err("`alpha` must be finite".into());
        }
        Ok(())
    }

    /// `alpha / r`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.r as f64
    }

    fn targets(&self, module: &str) -> bool {
        let last = module.rsplit('.').next().unwrap_or(module);
        if self.target_modules.is_empty() {
            ALL_LINEAR.contains(&last)
        } else {
            self.target_modules.iter().any(|t| t == last || t == module)
        }
    }
}

/// The seeded dropout stream shared by all adapters of a model. `None` means evaluation (no dropout).
#[derive(Debug, Default)]
pub struct DropoutRng(Mutex<Option<ChaCha8Rng>>);

impl DropoutRng {
    /// Switches dropout on with a fresh stream for `seed` (call once per micro-batch with a seed derived from
    /// the run seed and the step, so a resumed run draws the same masks) or off with `None`.
    pub fn reseed(&self, seed: Option<u64>) {
        let mut rng = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *rng = seed.map(ChaCha8Rng::seed_from_u64);
    }

    /// Where the stream stands (or that it is off), so that [`DropoutRng::restore`] can replay the same masks:
    /// gradient checkpointing runs a layer's forward twice and both runs must drop the same units.
    pub fn snapshot(&self) -> DropoutState {
        DropoutState(self.0.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }

    /// Puts the stream back where [`DropoutRng::snapshot`] found it.
    pub fn restore(&self, state: &DropoutState) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = state.0.clone();
    }

    /// `x · mask / (1 - p)` with a fresh Bernoulli mask, or `x` itself when dropout is off.
    fn apply(&self, x: &Tensor, p: f64) -> Result<Tensor> {
        if p == 0.0 {
            return Ok(x.clone());
        }
        let mut guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let Some(rng) = guard.as_mut() else { return Ok(x.clone()) };
        let keep = (1.0 / (1.0 - p)) as f32;
        let mask: Vec<f32> = (0..x.elem_count()).map(|_| if rng.random::<f64>() < p { 0.0 } else { keep }).collect();
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        x * mask
    }
}

/// A saved position of a [`DropoutRng`].
#[derive(Debug, Clone)]
pub struct DropoutState(Option<ChaCha8Rng>);

/// The trainable adapters of one model: their config, their Vars (under PEFT names) and the dropout stream.
pub struct LoraSet {
    config: LoraConfig,
    vars: VarMap,
    seed: u64,
    dropout: Arc<DropoutRng>,
    /// Module paths that received an adapter, in build order (for `adapter_config.json` and tests).
    modules: Mutex<Vec<String>>,
}

/// One adapter as a layer sees it.
#[derive(Debug, Clone)]
struct Adapter {
    a: Tensor,
    b: Tensor,
    scale: f64,
    dropout: f64,
    rng: Arc<DropoutRng>,
}

impl LoraSet {
    /// An empty set; adapters are created (or, when already present, reused) as the model is built. `seed`
    /// fixes the initialisation of `A`, per module, independent of build order.
    pub fn new(config: LoraConfig, seed: u64) -> std::result::Result<Self, String> {
        config.validate()?;
        Ok(Self { config, vars: VarMap::new(), seed, dropout: Arc::default(), modules: Mutex::default() })
    }

    /// The adapter config.
    pub fn config(&self) -> &LoraConfig {
        &self.config
    }

    /// The adapter Vars: exactly what the optimiser must update.
    pub fn vars(&self) -> &VarMap {
        &self.vars
    }

    /// The dropout stream, to switch between training and evaluation.
    pub fn dropout(&self) -> &DropoutRng {
        &self.dropout
    }

    /// Module paths that carry an adapter, in build order.
    pub fn modules(&self) -> Vec<String> {
        self.modules.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn a_name(module: &str) -> String {
        format!("base_model.model.{module}.lora_A.weight")
    }

    fn b_name(module: &str) -> String {
        format!("base_model.model.{module}.lora_B.weight")
    }

    /// The adapter for `module` (`in_dim → out_dim`), or `None` when the module is not targeted.
    fn adapter(&self, module: &str, in_dim: usize, out_dim: usize, device: &Device) -> Result<Option<Adapter>> {
        if !self.config.targets(module) {
            return Ok(None);
        }
        let r = self.config.r;
        let mut data = self.vars.data().lock().unwrap_or_else(|e| e.into_inner());
        let a_name = Self::a_name(module);
        let a = match data.get(&a_name) {
            Some(v) => v.clone(),
            None => {
                // Seed per module name so adding a module elsewhere does not shift this one's init.
                let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ fnv1a(module.as_bytes()));
                let bound = 1.0 / (in_dim as f64).sqrt();
                let values: Vec<f32> = (0..r * in_dim).map(|_| rng.random_range(-bound..bound) as f32).collect();
                let v = Var::from_tensor(&Tensor::from_vec(values, (r, in_dim), device)?)?;
                data.insert(a_name, v.clone());
                v
            }
        };
        let b_name = Self::b_name(module);
        let b = match data.get(&b_name) {
            Some(v) => v.clone(),
            None => {
                let v = Var::zeros((out_dim, r), DType::F32, device)?;
                data.insert(b_name, v.clone());
                v
            }
        };
        if a.dims() != [r, in_dim] || b.dims() != [out_dim, r] {
            candle_core::bail!(
                "adapter for `{module}` has shapes {:?}/{:?}, expected {:?}/{:?}",
                a.dims(),
                b.dims(),
                [r, in_dim],
                [out_dim, r]
            );
        }
        self.modules.lock().unwrap_or_else(|e| e.into_inner()).push(module.to_owned());
        Ok(Some(Adapter {
            a: a.as_tensor().clone(),
            b: b.as_tensor().clone(),
            scale: self.config.scale(),
            dropout: self.config.dropout,
            rng: self.dropout.clone(),
        }))
    }

    /// Adds `scale · B A` into each adapted module's weight of `weights` (HF names, `<module>.weight`),
    /// returning the merged map: the model built from it computes what base + adapters compute.
    pub fn merge(&self, weights: &HashMap<String, Tensor>) -> Result<HashMap<String, Tensor>> {
        let mut merged = weights.clone();
        let data = self.vars.data().lock().unwrap_or_else(|e| e.into_inner());
        for module in self.modules() {
            let (Some(a), Some(b)) = (data.get(&Self::a_name(&module)), data.get(&Self::b_name(&module))) else {
                continue;
            };
            let name = format!("{module}.weight");
            let Some(w) = weights.get(&name) else {
                candle_core::bail!("cannot merge the adapter of `{module}`: the base has no `{name}`");
            };
            let delta = (b.as_tensor().matmul(a.as_tensor())? * self.config.scale())?;
            let sum = (w.to_dtype(DType::F32)? + delta)?.to_dtype(w.dtype())?;
            merged.insert(name, sum);
        }
        Ok(merged)
    }

    /// Writes `adapter_model.safetensors` and `adapter_config.json` into `dir`, in the layout PEFT loads
    /// (`PeftModel.from_pretrained(base, dir)`).
    pub fn save_peft(&self, dir: &Path, base_model: &str) -> anyhow::Result<()> {
        use anyhow::Context as _;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create `{}`", dir.display()))?;
        let data = self.vars.data().lock().unwrap_or_else(|e| e.into_inner());
        let mut tensors: BTreeMap<String, Tensor> = BTreeMap::new();
        for (name, var) in data.iter() {
            tensors.insert(name.clone(), var.as_tensor().to_dtype(DType::F32)?);
        }
        drop(data);
        let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
            .iter()
            .map(|(n, t)| {
                let values = t.flatten_all()?.to_vec1::<f32>()?;
                let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                Ok((n.clone(), raw, t.dims().to_vec()))
            })
            .collect::<Result<_>>()?;
        let views = bytes
            .iter()
            .map(|(n, raw, shape)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), raw).map(|v| (n, v))
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        // PEFT (through transformers) checks this metadata key.
        let metadata = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
        let path = dir.join("adapter_model.safetensors");
        safetensors::serialize_to_file(views, metadata, &path)
            .with_context(|| format!("cannot write `{}`", path.display()))?;

        let mut targets: Vec<String> = if self.config.target_modules.is_empty() {
            ALL_LINEAR.iter().map(|s| s.to_string()).collect()
        } else {
            self.config.target_modules.clone()
        };
        targets.sort();
        let config = serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model,
            "r": self.config.r,
            "lora_alpha": self.config.alpha,
            "lora_dropout": self.config.dropout,
            "target_modules": targets,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "modules_to_save": null,
            "use_rslora": false,
            "use_dora": false,
        });
        let path = dir.join("adapter_config.json");
        std::fs::write(&path, serde_json::to_string_pretty(&config)? + "\n")
            .with_context(|| format!("cannot write `{}`", path.display()))?;
        Ok(())
    }
}

/// A linear layer `y = x Wᵀ + b`, optionally with a LoRA adapter added to it.
#[derive(Debug, Clone)]
pub struct Linear {
    base: candle_nn::Linear,
    adapter: Option<Adapter>,
}

impl Linear {
    /// Reads `<prefix>.weight` (`out × in`) and, when `bias`, `<prefix>.bias`; attaches an adapter from `lora`
    /// when its config targets this module.
    pub fn new(
        in_dim: usize,
        out_dim: usize,
        bias: bool,
        vb: candle_nn::VarBuilder,
        lora: Option<&LoraSet>,
    ) -> Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = if bias { Some(vb.get(out_dim, "bias")?) } else { None };
        let adapter = match lora {
            Some(set) => set.adapter(&vb.prefix(), in_dim, out_dim, vb.device())?,
            None => None,
        };
        Ok(Self { base: candle_nn::Linear::new(weight, bias), adapter })
    }

    /// A linear layer over an existing weight (the tied output head), never adapted.
    pub fn from_weight(weight: Tensor) -> Self {
        Self { base: candle_nn::Linear::new(weight, None), adapter: None }
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.base.forward(x)?;
        let Some(ad) = &self.adapter else { return Ok(y) };
        // Adapters are f32 (master weights); casting is differentiable, so a bf16 model still trains them in f32.
        let a = ad.a.to_dtype(x.dtype())?;
        let b = ad.b.to_dtype(x.dtype())?;
        let x = ad.rng.apply(x, ad.dropout)?;
        let update = x.broadcast_matmul(&a.t()?)?.broadcast_matmul(&b.t()?)?;
        y + (update * ad.scale)?
    }
}

/// FNV-1a, to derive a per-module seed from its name (stable across platforms and Rust versions, unlike
/// `DefaultHasher`).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}
