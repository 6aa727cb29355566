//! `merge`: an adapter merged into its base gives a plain HF model that samples as base + adapter does.

use api::ffi::{STATUS_BAD_INPUT, STATUS_ERROR};
use candle_core::{DType, Device};
use serde_json::{Value, json};

use crate::{Work, samples, tiny, write_prompts, write_tokenizer, write_train};

fn read(path: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A tiny model from `init` and a LoRA adapter trained on it: `(model dir, adapter dir)`.
fn model_and_adapter(w: &Work) -> (std::path::PathBuf, std::path::PathBuf) {
    let tok = write_tokenizer(w);
    let (_, init) = w.invoke("init", tiny(), &[("tokenizer", &tok)]);
    let model = init.join("model");
    let data = write_train(w, 2);
    let params = json!({"lr": 1e-2, "micro_batch": 6, "grad_accum": 1, "max_steps": 10,
                        "lora": {"r": 4, "alpha": 8, "dropout": 0.0}});
    let (_, lora) = w.invoke("train", params, &[("model", &model), ("data", &data)]);
    (model, lora.join("adapter"))
}

#[test]
fn merged_model_samples_as_base_plus_adapter() {
    let w = Work::default();
    let (model, adapter) = model_and_adapter(&w);
    let (summary, out) = w.invoke("merge", json!({}), &[("model", &model), ("adapter", &adapter)]);
    let merged = out.join("model");
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        assert!(merged.join(f).is_file(), "{f}");
    }
    assert_eq!(summary["output"], "model");
    assert_eq!(summary["dtype"], "f32");
    // Default target modules: q, k, v, o, gate, up, down in each of the 2 layers.
    assert_eq!(summary["merged_modules"], 14, "{summary}");
    let base = candle_core::safetensors::load(model.join("model.safetensors"), &Device::Cpu).unwrap();
    let weights = candle_core::safetensors::load(merged.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut names: Vec<&String> = weights.keys().collect();
    let mut base_names: Vec<&String> = base.keys().collect();
    names.sort();
    base_names.sort();
    assert_eq!(names, base_names, "the base's tensors under HF names");
    assert_eq!(summary["tensors"], names.len());
    let differ = |n: &str| {
        let d = (&weights[n] - &base[n]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        d > 0.0
    };
    assert!(differ("model.layers.0.self_attn.q_proj.weight"), "the adapter changed an adapted weight");
    assert!(!differ("model.embed_tokens.weight"), "unadapted weights are the base's");

    // Greedy samples of the merged model equal those of the base with the adapter.
    let prompts = write_prompts(&w);
    let params = json!({"max_new_tokens": 8});
    let (_, with_adapter) =
        w.invoke("sample", params.clone(), &[("model", &model), ("adapter", &adapter), ("prompts", &prompts)]);
    let (_, from_merged) = w.invoke("sample", params.clone(), &[("model", &merged), ("prompts", &prompts)]);
    assert_eq!(samples(&from_merged).0, samples(&with_adapter).0);
    let (_, from_base) = w.invoke("sample", params, &[("model", &model), ("prompts", &prompts)]);
    assert_ne!(samples(&from_base).0, samples(&with_adapter).0, "the adapter matters");

    // Deterministic; `dtype` sets the weights' type and `torch_dtype`.
    let (_, again) = w.invoke("merge", json!({"dtype": "f32"}), &[("model", &model), ("adapter", &adapter)]);
    let bytes = |d: &std::path::Path| std::fs::read(d.join("model/model.safetensors")).unwrap();
    assert_eq!(bytes(&again), bytes(&out));
    for (name, dtype, torch) in [("bf16", DType::BF16, "bfloat16"), ("f16", DType::F16, "float16")] {
        let (s, half) = w.invoke("merge", json!({"dtype": name}), &[("model", &model), ("adapter", &adapter)]);
        assert_eq!(s["dtype"], name);
        let t = candle_core::safetensors::load(half.join("model/model.safetensors"), &Device::Cpu).unwrap();
        assert!(t.values().all(|t| t.dtype() == dtype), "{name}");
        assert_eq!(read(&half.join("model/config.json"))["torch_dtype"], torch);
        let (_, s_out) =
            w.invoke("sample", json!({"max_new_tokens": 4}), &[("model", &half.join("model")), ("prompts", &prompts)]);
        assert_eq!(samples(&s_out).1.len(), 3, "{name}: loadable by `sample`");
    }
}

#[test]
fn merge_errors_are_named() {
    let w = Work::default();
    let (model, adapter) = model_and_adapter(&w);
    let inputs = [("model", model.as_path()), ("adapter", adapter.as_path())];

    // Params.
    for (params, path, needle) in [
        (json!({"dtype": "fp8"}), "dtype", "\"f16\""),
        (json!({"dtype": 16}), "dtype", "expected a string"),
        (json!({"dtyp": "f32"}), "dtyp", "valid: `dtype`"),
    ] {
        let e = w.fail("merge", params.clone(), &inputs);
        assert_eq!(e.status, STATUS_BAD_INPUT, "{params}: {e}");
        assert_eq!(e.reply.param_path, Some(vec![path.to_string()]), "{params}: {e}");
        assert!(e.reply.message.contains(needle), "{params}: `{}` lacks `{needle}`", e.reply.message);
    }

    // Inputs: missing and extra ones are named.
    let e = w.fail("merge", json!({}), &[("model", &model)]);
    assert!(e.reply.message.contains("needs input `adapter`"), "{e}");
    let e = w.fail("merge", json!({}), &[("adapter", &adapter)]);
    assert!(e.reply.message.contains("needs input `model`"), "{e}");
    let e = w.fail("merge", json!({}), &[("model", &model), ("adapter", &adapter), ("prompts", &model)]);
    assert!(e.reply.message.contains("no input `prompts`") && e.reply.message.contains("`adapter`"), "{e}");

    // An adapter input that is not a PEFT directory; a model without weights.
    let e = w.fail("merge", json!({}), &[("model", &model), ("adapter", &model)]);
    assert_eq!(e.status, STATUS_ERROR);
    assert!(e.reply.message.contains("adapter_config.json"), "{e}");
    let tok = w.path("tok");
    let e = w.fail("merge", json!({}), &[("model", &tok), ("adapter", &adapter)]);
    assert!(e.reply.message.contains("no `model.safetensors`"), "{e}");

    // An adapter trained on another model: its shapes do not fit.
    let mut wide = tiny();
    wide["hidden_size"] = 48.into();
    let (_, wide_out) = w.invoke("init", wide, &[("tokenizer", &tok)]);
    let data = w.path("data/train.jsonl");
    let (_, lora) = w.invoke(
        "train",
        json!({"max_steps": 1, "micro_batch": 1, "grad_accum": 1, "lora": {"r": 2}}),
        &[("model", &wide_out.join("model")), ("data", &data)],
    );
    let e = w.fail("merge", json!({}), &[("model", &model), ("adapter", &lora.join("adapter"))]);
    assert!(e.reply.message.contains("adapter") && e.reply.message.contains("shape"), "{e}");
}
