//! The files around the weights: tokenizers and their special tokens, PEFT adapters, copying a model directory's
//! side files, writing weights, and JSONL. Every failure names the file.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use api::Error;
use candle_core::{DType, Device, Tensor, Var};
use serde_json::{Map, Value};
use tokenizers::Tokenizer;

use crate::gguf::{self, Gguf};
use crate::load::{self, LoadOptions, Loaded};
use crate::lora::{LoraConfig, LoraSet};
use crate::model::ModelConfig;

/// The side files of a Hugging Face model directory that a trained model keeps (weights excluded).
const SIDE_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
];

/// `tokenizer.json` inside `input` when it is a directory, else `input` itself.
pub(crate) fn tokenizer_file(input: &Path) -> PathBuf {
    if input.is_dir() { input.join("tokenizer.json") } else { input.to_owned() }
}

/// Loads a `tokenizer.json` (or the one in a directory, or the one a GGUF file's metadata describes).
pub(crate) fn load_tokenizer(input: &Path) -> Result<Tokenizer, Error> {
    if is_gguf(input) {
        return Ok(Gguf::open(input)?.tokenizer()?);
    }
    let path = tokenizer_file(input);
    if !path.is_file() {
        return Err(Error::Failed(format!("`{}`: no such tokenizer file", path.display())));
    }
    Tokenizer::from_file(&path).map_err(|e| Error::Failed(format!("`{}`: not a valid tokenizer: {e}", path.display())))
}

/// Whether the `model` input is a GGUF file rather than a model directory.
pub(crate) fn is_gguf(input: &Path) -> bool {
    input.is_file() && gguf::is_gguf(input)
}

/// Reads a JSON object file; `Ok(None)` when it does not exist.
pub(crate) fn read_object(path: &Path) -> Result<Option<Map<String, Value>>, Error> {
    if !path.is_file() {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(path).map_err(|e| Error::Failed(format!("cannot read `{}`: {e}", path.display())))?;
    match serde_json::from_str(&text) {
        Ok(Value::Object(m)) => Ok(Some(m)),
        Ok(_) => Err(Error::Failed(format!("`{}`: expected a JSON object", path.display()))),
        Err(e) => Err(Error::Failed(format!("`{}`: invalid JSON: {e}", path.display()))),
    }
}

/// Writes `value` as pretty JSON with a final newline.
pub(crate) fn write_json(path: &Path, value: &Value) -> Result<(), Error> {
    let text = serde_json::to_string_pretty(value)? + "\n";
    std::fs::write(path, text).map_err(|e| Error::Failed(format!("cannot write `{}`: {e}", path.display())))
}

/// The text of a special token as `tokenizer_config.json` holds it: a string, or an `AddedToken` object with its
/// text in `content`.
pub(crate) fn token_text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_owned),
        _ => None,
    }
}

/// The token the tokenizer puts before a text when asked to add special tokens (Llama's `<s>`, Llama 3's
/// `<|begin_of_text|>`; none for Qwen2). Training and sampling tokenize without special tokens (segments are
/// tokenized one by one), so this is prepended by hand, the way the model saw text in pre-training.
pub(crate) fn bos_id(tokenizer: &Tokenizer) -> Option<u32> {
    let with = tokenizer.encode("", true).ok()?;
    with.get_ids().first().copied()
}

/// The ids that end generation: `eos_token` of `tokenizer_config.json` and `eos_token_id` of `config.json` and
/// `generation_config.json` (a number or a list; Llama 3 lists several), deduplicated. For a GGUF file: its
/// `tokenizer.ggml.eos_token_id` and `eot_token_id`.
pub(crate) fn eos_ids(model_dir: &Path, tokenizer: &Tokenizer) -> Result<Vec<u32>, Error> {
    if is_gguf(model_dir) {
        return Ok(Gguf::open(model_dir)?.eos_ids()?);
    }
    let mut ids = Vec::new();
    if let Some(cfg) = read_object(&model_dir.join("tokenizer_config.json"))?
        && let Some(text) = token_text(cfg.get("eos_token"))
        && let Some(id) = tokenizer.token_to_id(&text)
    {
        ids.push(id);
    }
    for file in ["config.json", "generation_config.json"] {
        let Some(cfg) = read_object(&model_dir.join(file))? else { continue };
        match cfg.get("eos_token_id") {
            Some(Value::Number(n)) => ids.extend(n.as_u64().and_then(|n| u32::try_from(n).ok())),
            Some(Value::Array(items)) => {
                ids.extend(items.iter().filter_map(|v| v.as_u64().and_then(|n| u32::try_from(n).ok())))
            }
            _ => {}
        }
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// Copies the side files `from` has into `to` (a trained model keeps its config and tokenizer). From a GGUF
/// file, they are written from its metadata (`config.json`, `tokenizer.json`, `tokenizer_config.json`), so the
/// trained model is an ordinary HF model directory.
pub(crate) fn copy_side_files(from: &Path, to: &Path) -> Result<(), Error> {
    if is_gguf(from) {
        return Ok(Gguf::open(from)?.write_side_files(to)?);
    }
    for name in SIDE_FILES {
        let src = from.join(name);
        if src.is_file() {
            std::fs::copy(&src, to.join(name))
                .map_err(|e| Error::Failed(format!("cannot copy `{}`: {e}", src.display())))?;
        }
    }
    Ok(())
}

/// Writes `tensors` as one safetensors file with the `format: pt` metadata transformers checks for.
pub(crate) fn save_weights(tensors: &BTreeMap<String, Tensor>, path: &Path) -> Result<(), Error> {
    let cpu: Vec<(String, Tensor)> =
        tensors.iter().map(|(n, t)| Ok((n.clone(), t.to_device(&Device::Cpu)?))).collect::<candle_core::Result<_>>()?;
    let metadata = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
    safetensors::serialize_to_file(cpu, metadata, path)
        .map_err(|e| Error::Failed(format!("cannot write `{}`: {e}", path.display())))
}

/// A PEFT LoRA adapter read from a directory.
pub(crate) struct Adapter {
    /// Its shape, from `adapter_config.json`.
    pub config: LoraConfig,
    /// `base_model.model.<module>.lora_{A,B}.weight` → tensor (f32).
    pub tensors: BTreeMap<String, Tensor>,
    /// The directory, for messages.
    pub dir: PathBuf,
}

/// Reads `adapter_config.json` and `adapter_model.safetensors` from `dir`.
pub(crate) fn read_adapter(dir: &Path, device: &Device) -> Result<Adapter, Error> {
    let config_path = dir.join("adapter_config.json");
    let Some(cfg) = read_object(&config_path)? else {
        return Err(Error::Failed(format!("`{}`: no such file (not a PEFT adapter directory)", config_path.display())));
    };
    let field = |k: &str| cfg.get(k).filter(|v| !v.is_null());
    let bad = |k: &str, what: &str| Error::Failed(format!("`{}`: field `{k}` {what}", config_path.display()));
    if field("peft_type").and_then(Value::as_str).is_some_and(|t| t != "LORA") {
        return Err(bad("peft_type", "is not \"LORA\""));
    }
    if field("use_rslora").and_then(Value::as_bool) == Some(true)
        || field("use_dora").and_then(Value::as_bool) == Some(true)
    {
        return Err(bad("use_rslora/use_dora", "is set; only plain LoRA adapters are supported"));
    }
    let r = field("r").and_then(Value::as_u64).ok_or_else(|| bad("r", "is missing or not a positive integer"))?;
    let alpha =
        field("lora_alpha").and_then(Value::as_f64).ok_or_else(|| bad("lora_alpha", "is missing or not a number"))?;
    let dropout = field("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0);
    let target_modules = match field("target_modules") {
        None => Vec::new(),
        Some(Value::String(s)) if s == "all-linear" => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or_else(|| bad("target_modules", "is not a list of strings")))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(bad("target_modules", "is not a list of strings")),
    };
    let config = LoraConfig { r: r as usize, alpha, dropout, target_modules };
    config.validate().map_err(|m| Error::Failed(format!("`{}`: {m}", config_path.display())))?;
    let weights = dir.join("adapter_model.safetensors");
    if !weights.is_file() {
        return Err(Error::Failed(format!("`{}`: no such file", weights.display())));
    }
    let raw = candle_core::safetensors::load(&weights, device)
        .map_err(|e| Error::Failed(format!("`{}`: not a valid safetensors file: {e}", weights.display())))?;
    let mut tensors = BTreeMap::new();
    for (name, t) in raw {
        if !(name.ends_with(".lora_A.weight") || name.ends_with(".lora_B.weight"))
            || !name.starts_with("base_model.model.")
        {
            return Err(Error::Failed(format!(
                "`{}`: tensor `{name}` is not a LoRA A/B weight (`base_model.model.<module>.lora_A.weight`)",
                weights.display()
            )));
        }
        tensors.insert(name, t.to_dtype(DType::F32)?);
    }
    Ok(Adapter { config, tensors, dir: dir.to_owned() })
}

impl Adapter {
    /// A [`LoraSet`] whose adapters start from this adapter's weights (to train it further, or to run it).
    pub(crate) fn to_set(&self, seed: u64) -> Result<LoraSet, Error> {
        let set = LoraSet::new(self.config.clone(), seed).map_err(Error::Failed)?;
        let mut data = set.vars().data().lock().unwrap_or_else(|e| e.into_inner());
        for (name, t) in &self.tensors {
            data.insert(name.clone(), Var::from_tensor(t)?);
        }
        drop(data);
        Ok(set)
    }

    /// Fails unless the model built with [`Adapter::to_set`] attached every tensor of the adapter: a tensor
    /// that matches no layer means the adapter was trained on another model.
    pub(crate) fn check_used(&self, set: &LoraSet) -> Result<(), Error> {
        let modules = set.modules();
        for name in self.tensors.keys() {
            let module = name
                .trim_start_matches("base_model.model.")
                .trim_end_matches(".weight")
                .trim_end_matches(".lora_A")
                .trim_end_matches(".lora_B");
            if !modules.iter().any(|m| m == module) {
                return Err(Error::Failed(format!(
                    "adapter `{}`: tensor `{name}` matches no layer of the model (trained on another base model?)",
                    self.dir.display()
                )));
            }
        }
        Ok(())
    }
}

/// Loads the model in `dir`, with `adapter` merged into its weights when given (so the result is a plain model:
/// trainable in full, or sampled at the speed of the base). `lora` attaches new adapters as in
/// [`load::load_dir`]. `dir` may be a GGUF file.
pub(crate) fn load_model(
    dir: &Path,
    adapter: Option<&Adapter>,
    opts: &LoadOptions,
    lora: Option<&LoraSet>,
) -> Result<Loaded, Error> {
    let Some(adapter) = adapter else { return Ok(load::load_dir(dir, opts, lora)?) };
    let merged = merged_weights(dir, adapter, &opts.device, None)?;
    Ok(load::load_tensors(merged.config, merged.weights, opts, lora)?)
}

/// A model's weights with an adapter merged in.
pub(crate) struct Merged {
    /// The base model's config.
    pub config: ModelConfig,
    /// Every tensor of the base under its HF name, adapted ones updated.
    pub weights: HashMap<String, Tensor>,
    /// The adapted modules (`<module>` of `<module>.weight`), sorted.
    pub modules: Vec<String>,
}

/// The weights of the model in `dir` (HF directory or GGUF file, GGUF tensors under HF names) with
/// `scale · B A` of `adapter` added to each adapted module's weight, in f32. Every tensor ends in `dtype` when
/// given (the merge rounds once, from f32), else adapted weights keep the base's dtype.
pub(crate) fn merged_weights(
    dir: &Path,
    adapter: &Adapter,
    device: &Device,
    dtype: Option<DType>,
) -> Result<Merged, Error> {
    let (config, mut weights) = if is_gguf(dir) {
        let file = Gguf::open(dir)?;
        (file.config()?, file.tensors(device)?)
    } else {
        let mut weights = HashMap::new();
        for path in load::weight_files(dir)? {
            let part = candle_core::safetensors::load(&path, device)
                .map_err(|e| Error::Failed(format!("`{}`: not a valid safetensors file: {e}", path.display())))?;
            weights.extend(part);
        }
        (load::read_config(dir)?, weights)
    };
    // The adapter's modules are known only from its tensor names: B (out × r) times A (r × in) is the update.
    let scale = adapter.config.scale();
    let mut modules = Vec::new();
    for (name, a) in &adapter.tensors {
        let Some(module) = name.strip_suffix(".lora_A.weight").and_then(|m| m.strip_prefix("base_model.model.")) else {
            let module = name.trim_start_matches("base_model.model.").trim_end_matches(".lora_B.weight");
            if !adapter.tensors.contains_key(&format!("base_model.model.{module}.lora_A.weight")) {
                return Err(Error::Failed(format!(
                    "adapter `{}`: `{name}` has no `base_model.model.{module}.lora_A.weight`",
                    adapter.dir.display()
                )));
            }
            continue;
        };
        let b_name = format!("base_model.model.{module}.lora_B.weight");
        let Some(b) = adapter.tensors.get(&b_name) else {
            return Err(Error::Failed(format!("adapter `{}`: `{name}` has no `{b_name}`", adapter.dir.display())));
        };
        let target = format!("{module}.weight");
        let Some(w) = weights.get(&target) else {
            return Err(Error::Failed(format!(
                "adapter `{}`: the base model in `{}` has no `{target}` (trained on another base model?)",
                adapter.dir.display(),
                dir.display()
            )));
        };
        let delta = (b.to_device(device)?.matmul(&a.to_device(device)?)? * scale)?;
        if delta.dims() != w.dims() {
            return Err(Error::Failed(format!(
                "adapter `{}`: the update of `{module}` has shape {:?}, the base weight {:?}",
                adapter.dir.display(),
                delta.dims(),
                w.dims()
            )));
        }
        let merged = (w.to_dtype(DType::F32)? + delta)?.to_dtype(dtype.unwrap_or(w.dtype()))?;
        weights.insert(target, merged);
        modules.push(module.to_owned());
    }
    if let Some(dtype) = dtype {
        for t in weights.values_mut() {
            if t.dtype() != dtype {
                *t = t.to_dtype(dtype)?;
            }
        }
    }
    Ok(Merged { config, weights, modules })
}

/// A JSONL row: its 1-based line number and its object.
pub(crate) type Row = (usize, Map<String, Value>);

/// Reads a JSONL file into `(line number, object)` pairs; blank lines are skipped, anything else that is not a
/// JSON object is an error naming the line.
pub(crate) fn read_jsonl(path: &Path) -> Result<Vec<Row>, Error> {
    let text =
        std::fs::read_to_string(path).map_err(|e| Error::Failed(format!("cannot read `{}`: {e}", path.display())))?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(Value::Object(m)) => rows.push((i + 1, m)),
            Ok(_) => return Err(Error::Failed(format!("`{}` line {}: expected a JSON object", path.display(), i + 1))),
            Err(e) => return Err(Error::Failed(format!("`{}` line {}: invalid JSON: {e}", path.display(), i + 1))),
        }
    }
    Ok(rows)
}

/// A model's own chat template, with the special-token texts it may insert.
#[derive(Debug, Clone, Default)]
pub(crate) struct TemplateSource {
    /// The Jinja source; `None` when the model has no template.
    pub source: Option<String>,
    /// `bos_token` of the tokenizer config ("" when none).
    pub bos_token: String,
    /// `eos_token` of the tokenizer config ("" when none).
    pub eos_token: String,
}

/// The chat template of the model `input` (a model directory or a GGUF file): `chat_template` of
/// `tokenizer_config.json` (a string, or the entry named `default` of a list), else `chat_template.jinja` beside
/// it, else `tokenizer.chat_template` of a GGUF file's metadata; and the bos/eos texts of the tokenizer config.
pub(crate) fn chat_template(input: &Path) -> Result<TemplateSource, Error> {
    let (config, shown) = if is_gguf(input) {
        match Gguf::open(input)?.hf_tokenizer_config()? {
            Value::Object(m) => (Some(m), input.to_owned()),
            _ => (None, input.to_owned()),
        }
    } else {
        let path = input.join("tokenizer_config.json");
        (read_object(&path)?, path)
    };
    let config = config.unwrap_or_default();
    let source = match config.get("chat_template") {
        Some(Value::String(s)) => Some(s.clone()),
        // Several named templates: transformers uses the one named `default`.
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(|t| t.get("template"))
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| {
                    Error::Failed(format!(
                        "`{}`: field `chat_template` lists templates but none named `default` with a string `template`",
                        shown.display()
                    ))
                })?,
        ),
        None | Some(Value::Null) => {
            let beside = input.join("chat_template.jinja");
            if input.is_dir() && beside.is_file() {
                Some(
                    std::fs::read_to_string(&beside)
                        .map_err(|e| Error::Failed(format!("cannot read `{}`: {e}", beside.display())))?,
                )
            } else {
                None
            }
        }
        Some(_) => {
            return Err(Error::Failed(format!("`{}`: field `chat_template` is not a string", shown.display())));
        }
    };
    Ok(TemplateSource {
        source,
        bos_token: token_text(config.get("bos_token")).unwrap_or_default(),
        eos_token: token_text(config.get("eos_token")).unwrap_or_default(),
    })
}
