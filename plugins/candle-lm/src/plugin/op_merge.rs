//! `merge`: the `adapter` (a PEFT LoRA directory, as `train` writes it) merged into the weights of `model` (a
//! Hugging Face model directory or a GGUF file): each adapted weight becomes `W + scale · B A`, computed in f32
//! and written in the `dtype` param's type. The output `model/` is an HF model directory (`config.json`,
//! `model.safetensors` under HF names, the tokenizer files copied as `train` does), which `sample` runs without
//! an adapter and `train` takes as a base.

use std::collections::BTreeMap;

use api::{Error, OpContext};
use candle_core::{DType, Tensor};
use serde_json::{Value, json};

use super::files;
use super::params::MergeParams;

/// The name `config.json`'s `torch_dtype` gives `dtype`.
fn torch_dtype(dtype: DType) -> &'static str {
    match dtype {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        _ => "float32",
    }
}

/// Runs `merge`.
pub(super) fn run(p: &MergeParams, ctx: &mut OpContext<'_>) -> Result<Value, Error> {
    let model_dir = ctx.input("model")?;
    let adapter_dir = ctx.input("adapter")?;
    let device = super::device(ctx)?;
    ctx.log(&format!("device {}", super::describe(&device, p.dtype)));
    let adapter = files::read_adapter(adapter_dir, &device)?;
    let merged = files::merged_weights(model_dir, &adapter, &device, Some(p.dtype))?;
    if merged.modules.is_empty() {
        return Err(Error::Failed(format!("adapter `{}` has no LoRA weights to merge", adapter_dir.display())));
    }
    if ctx.cancelled() {
        return Err(Error::Cancelled);
    }
    ctx.log(&format!("merged the adapter into {} module(s)", merged.modules.len()));

    let dir = ctx.out_dir.join("model");
    std::fs::create_dir_all(&dir).map_err(|e| Error::Failed(format!("cannot create `{}`: {e}", dir.display())))?;
    files::copy_side_files(model_dir, &dir)?;
    // The weights' dtype changes with the param: `config.json` says which, as HF's own save does.
    let config_path = dir.join("config.json");
    if let Some(mut config) = files::read_object(&config_path)? {
        config.insert("torch_dtype".into(), json!(torch_dtype(p.dtype)));
        files::write_json(&config_path, &Value::Object(config))?;
    }
    let parameters: usize = merged.weights.values().map(Tensor::elem_count).sum();
    let tensors: BTreeMap<String, Tensor> = merged.weights.into_iter().collect();
    files::save_weights(&tensors, &dir.join("model.safetensors"))?;
    Ok(json!({
        "dtype": p.dtype.as_str(),
        "merged_modules": merged.modules.len(),
        "output": "model",
        "parameters": parameters,
        "tensors": tensors.len(),
    }))
}
