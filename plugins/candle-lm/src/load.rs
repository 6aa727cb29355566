//! Loading a Hugging Face model directory: `config.json` plus `model.safetensors`, or shards listed in
//! `model.safetensors.index.json`; or a GGUF file ([`load_gguf`], dequantized, see [`crate::gguf`]).
//!
//! The decoder asks for each tensor by name and shape through a `VarBuilder`; the backend here answers from the
//! memory-mapped files and checks what candle would otherwise report vaguely or not at all: the tensor exists,
//! its shape is what the config implies, it is a float. The first such failure is kept as a [`LoadError`]
//! naming the file and the tensor. Weights are converted to the requested dtype. With `trainable`, each tensor
//! becomes a `Var` in a `VarMap` (full fine-tuning; saving that map writes HF-layout weights); otherwise they stay
//! plain tensors, which get no gradient (the base under LoRA).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::safetensors::{Load as _, MmapedSafetensors};
use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{VarBuilder, VarMap};

use crate::error::LoadError;
use crate::lora::LoraSet;
use crate::model::{Decoder, ModelConfig};

/// How to load: target dtype and device, and whether the weights are to be trained.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The dtype the model computes in (weights are converted).
    pub dtype: DType,
    /// Where the weights go.
    pub device: Device,
    /// Make every weight a trainable `Var` (full fine-tuning).
    pub trainable: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { dtype: DType::F32, device: Device::Cpu, trainable: false }
    }
}

/// A loaded model and what loading found out.
pub struct Loaded {
    /// The parsed config.
    pub config: ModelConfig,
    /// The decoder, ready to run.
    pub decoder: Decoder,
    /// The trainable weights (empty unless [`LoadOptions::trainable`]), under HF names.
    pub params: VarMap,
    /// Tensors in the files that the model did not use (e.g. rotary buffers of old checkpoints), sorted.
    pub unused: Vec<String>,
}

/// Reads and validates `<dir>/config.json`.
pub fn read_config(dir: &Path) -> Result<ModelConfig, LoadError> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|source| LoadError::Io { path: path.clone(), source })?;
    ModelConfig::parse(&path, &text)
}

/// The weight files of `dir`: `model.safetensors`, or the shards its index lists (sorted, deduplicated).
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if !index.is_file() {
        return Err(LoadError::NoWeights { dir: dir.to_owned() });
    }
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: HashMap<String, String>,
    }
    let text = std::fs::read_to_string(&index).map_err(|source| LoadError::Io { path: index.clone(), source })?;
    let parsed: Index = serde_json::from_str(&text).map_err(|e| LoadError::Json {
        path: index.clone(),
        what: "safetensors index",
        message: e.to_string(),
    })?;
    let files: BTreeSet<&String> = parsed.weight_map.values().collect();
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

/// Loads the model in `dir` (see the module doc), with adapters from `lora` when given. A `dir` that is a
/// `.gguf` file is loaded with [`load_gguf`].
pub fn load_dir(dir: &Path, opts: &LoadOptions, lora: Option<&LoraSet>) -> Result<Loaded, LoadError> {
    if dir.is_file() && crate::gguf::is_gguf(dir) {
        return load_gguf(dir, opts, lora);
    }
    let config = read_config(dir)?;
    let files = weight_files(dir)?;
    let mut mapped = Vec::with_capacity(files.len());
    for path in &files {
        if !path.is_file() {
            return Err(LoadError::Io {
                path: path.clone(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "listed in the index but missing"),
            });
        }
        // SAFETY: the file is mapped read-only; like every mmap-based loader we assume nobody truncates or
        // rewrites a model file while it is being loaded.
        let st = unsafe { MmapedSafetensors::new(path) }
            .map_err(|e| LoadError::BadSafetensors { path: path.clone(), message: e.to_string() })?;
        mapped.push((path.clone(), st));
    }
    build(config, Source::Files(mapped), opts, lora)
}

/// Loads a GGUF file: the config from its metadata, every tensor dequantized (f32, then converted to
/// [`LoadOptions::dtype`]) under HF names and in HF layout, with adapters from `lora` when given. Errors name the
/// file. The tokenizer and chat template are read with [`crate::gguf::Gguf`].
pub fn load_gguf(path: &Path, opts: &LoadOptions, lora: Option<&LoraSet>) -> Result<Loaded, LoadError> {
    let file = crate::gguf::Gguf::open(path)?;
    let config = file.config()?;
    let tensors = file.tensors(&opts.device)?;
    build(config, Source::Memory { tensors, origin: Some(path.to_owned()) }, opts, lora)
}

/// Builds a model from in-memory tensors under HF names (tests, or weights produced in-process), with the
/// same checks as [`load_dir`].
pub fn load_tensors(
    config: ModelConfig,
    tensors: HashMap<String, Tensor>,
    opts: &LoadOptions,
    lora: Option<&LoraSet>,
) -> Result<Loaded, LoadError> {
    build(config, Source::Memory { tensors, origin: None }, opts, lora)
}

fn build(config: ModelConfig, source: Source, opts: &LoadOptions, lora: Option<&LoraSet>) -> Result<Loaded, LoadError> {
    let all_names = source.names();
    let state = Arc::new(State {
        source,
        params: opts.trainable.then(VarMap::new),
        error: Mutex::default(),
        used: Mutex::default(),
    });
    let backend: Box<dyn SimpleBackend> = Box::new(Backend(state.clone()));
    let vb = VarBuilder::from_backend(backend, opts.dtype, opts.device.clone());
    let decoder = Decoder::new(&config, vb, lora);
    if let Some(err) = state.error.lock().unwrap_or_else(|e| e.into_inner()).take() {
        return Err(err);
    }
    let decoder = decoder.map_err(LoadError::candle("cannot build the model"))?;
    let used = state.used.lock().unwrap_or_else(|e| e.into_inner());
    let unused = all_names.into_iter().filter(|n| !used.contains(n)).collect();
    let params = state.params.clone().unwrap_or_else(VarMap::new);
    Ok(Loaded { config, decoder, params, unused })
}

enum Source {
    Files(Vec<(PathBuf, MmapedSafetensors)>),
    /// Tensors under HF names; `origin` is the file they were converted from (GGUF), for messages.
    Memory {
        tensors: HashMap<String, Tensor>,
        origin: Option<PathBuf>,
    },
}

impl Source {
    fn names(&self) -> BTreeSet<String> {
        match self {
            Self::Files(files) => files.iter().flat_map(|(_, st)| st.tensors().into_iter().map(|(n, _)| n)).collect(),
            Self::Memory { tensors, .. } => tensors.keys().cloned().collect(),
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Files(files) => {
                files.iter().map(|(p, _)| format!("`{}`", p.display())).collect::<Vec<_>>().join(", ")
            }
            Self::Memory { origin: Some(path), .. } => format!("`{}`", path.display()),
            Self::Memory { origin: None, .. } => "the in-memory weights".into(),
        }
    }

    /// The tensor `name` as stored, its shape and the file it came from; `Ok(None)` when absent.
    fn get(&self, name: &str, dev: &Device) -> Result<Option<(Tensor, PathBuf)>, LoadError> {
        match self {
            Self::Memory { tensors, origin } => {
                Ok(tensors.get(name).map(|t| (t.clone(), origin.clone().unwrap_or_else(|| PathBuf::from("<memory>")))))
            }
            Self::Files(files) => {
                // Later files win, as in `MmapedSafetensors::multi`.
                for (path, st) in files.iter().rev() {
                    let Ok(view) = st.get(name) else { continue };
                    let dtype = view.dtype();
                    if !matches!(
                        dtype,
                        safetensors::Dtype::F32
                            | safetensors::Dtype::F16
                            | safetensors::Dtype::BF16
                            | safetensors::Dtype::F64
                    ) {
                        return Err(LoadError::WrongDtype {
                            path: path.clone(),
                            tensor: name.into(),
                            dtype: format!("{dtype:?}"),
                        });
                    }
                    let t = view
                        .load(dev)
                        .map_err(|e| LoadError::BadSafetensors { path: path.clone(), message: e.to_string() })?;
                    return Ok(Some((t, path.clone())));
                }
                Ok(None)
            }
        }
    }
}

struct State {
    source: Source,
    params: Option<VarMap>,
    /// The first failure, kept typed: candle's `Result` can only carry it as text.
    error: Mutex<Option<LoadError>>,
    used: Mutex<BTreeSet<String>>,
}

struct Backend(Arc<State>);

impl Backend {
    fn fail(&self, err: LoadError) -> candle_core::Error {
        let msg = err.to_string();
        let mut slot = self.0.error.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(err);
        }
        candle_core::Error::msg(msg)
    }

    fn fetch(&self, name: &str, shape: Option<&Shape>, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let s = &self.0;
        let found = s.source.get(name, dev).map_err(|e| self.fail(e))?;
        let Some((tensor, path)) = found else {
            return Err(self.fail(LoadError::MissingTensor { tensor: name.into(), files: s.source.describe() }));
        };
        if let Some(shape) = shape
            && tensor.shape() != shape
        {
            return Err(self.fail(LoadError::WrongShape {
                path,
                tensor: name.into(),
                expected: shape.dims().to_vec(),
                found: tensor.dims().to_vec(),
            }));
        }
        let tensor = tensor.to_dtype(dtype)?.to_device(dev)?;
        s.used.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_owned());
        match &s.params {
            None => Ok(tensor),
            Some(params) => {
                let mut data = params.data().lock().unwrap_or_else(|e| e.into_inner());
                // The tied head asks for the embedding a second time: hand out the same Var.
                if let Some(var) = data.get(name) {
                    return Ok(var.as_tensor().clone());
                }
                let var = Var::from_tensor(&tensor)?;
                data.insert(name.to_owned(), var.clone());
                Ok(var.as_tensor().clone())
            }
        }
    }
}

impl SimpleBackend for Backend {
    fn get(&self, s: Shape, name: &str, _: candle_nn::Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.fetch(name, Some(&s), dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.fetch(name, None, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        match &self.0.source {
            Source::Memory { tensors, .. } => tensors.contains_key(name),
            Source::Files(files) => files.iter().any(|(_, st)| st.get(name).is_ok()),
        }
    }
}
