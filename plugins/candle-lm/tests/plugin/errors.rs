//! What a user can get wrong: params (unknown, wrong type, out of range), inputs (missing, extra), files (no
//! weights, bad JSONL, foreign adapter), and cancellation. Each error says where the problem is.

use api::ffi::{STATUS_BAD_INPUT, STATUS_CANCELLED, STATUS_ERROR};
use serde_json::{Value, json};

use crate::{Recorder, Work, tiny, write_prompts, write_tokenizer, write_train};

/// Asserts a param error at `path` whose message contains `needle`.
pub(crate) fn param_error(
    w: &Work,
    op: &str,
    params: Value,
    inputs: &[(&str, &std::path::Path)],
    path: &[&str],
    needle: &str,
) {
    let e = w.fail(op, params.clone(), inputs);
    assert_eq!(e.status, STATUS_BAD_INPUT, "{op} {params}: {e}");
    let want: Vec<String> = path.iter().map(|s| s.to_string()).collect();
    assert_eq!(e.reply.param_path.as_ref(), Some(&want), "{op} {params}: {}", e.reply.message);
    assert!(e.reply.message.contains(needle), "{op} {params}: `{}` lacks `{needle}`", e.reply.message);
}

#[test]
fn bad_params_point_at_their_path() {
    let w = Work::default();
    let tok = write_tokenizer(&w);
    let (_, out) = w.invoke("init", tiny(), &[("tokenizer", &tok)]);
    let model = out.join("model");
    let data = write_train(&w, 1);
    let prompts = write_prompts(&w);
    let train = [("model", model.as_path()), ("data", data.as_path())];
    let sample = [("model", model.as_path()), ("prompts", prompts.as_path())];

    param_error(&w, "train", json!({"lerning_rate": 1e-3}), &train, &["lerning_rate"], "valid: `beta1`");
    param_error(&w, "train", json!({"method": "qlora"}), &train, &["method"], "\"full\"");
    param_error(&w, "train", json!({"lora": {"r": "8"}}), &train, &["lora", "r"], "the string \"8\"");
    param_error(&w, "train", json!({"lora": {"rank": 8}}), &train, &["lora", "rank"], "valid: `alpha`, `dropout`");
    param_error(&w, "train", json!({"lora": {"dropout": 1.5}}), &train, &["lora", "dropout"], "[0, 1)");
    param_error(&w, "train", json!({"method": "full", "lora": {"r": 4}}), &train, &["lora"], "method `lora`");
    param_error(&w, "train", json!({"micro_batch": 0}), &train, &["micro_batch"], "at least 1");
    param_error(&w, "train", json!({"schedule": "linear"}), &train, &["schedule"], "cosine");
    param_error(&w, "train", json!({"method": "lm", "dtype": "bf16"}), &train, &["dtype"], "f32");
    param_error(&w, "train", json!({"dtype": "fp8"}), &train, &["dtype"], "bf16");
    param_error(&w, "train", json!({"group_by_length": "yes"}), &train, &["group_by_length"], "true or false");
    param_error(
        &w,
        "train",
        json!({"gradient_checkpointing": 1}),
        &train,
        &["gradient_checkpointing"],
        "true or false",
    );
    param_error(
        &w,
        "train",
        json!({"lora": {"target_modules": ["qkv"]}, "max_steps": 1}),
        &train,
        &["lora", "target_modules"],
        "q_proj",
    );
    param_error(&w, "sample", json!({"top_p": 2.0, "temperature": 1.0}), &sample, &["top_p"], "(0, 1]");
    param_error(&w, "sample", json!({"stop": "x"}), &sample, &["stop"], "list of strings");
    param_error(&w, "sample", json!({"max_new_tokens": -1}), &sample, &["max_new_tokens"], "non-negative integer");

    let tok_in = [("tokenizer", tok.as_path())];
    let mut no_width = tiny();
    no_width.as_object_mut().unwrap().remove("hidden_size");
    param_error(&w, "init", no_width, &tok_in, &["hidden_size"], "required");
    let mut odd = tiny();
    odd["hidden_size"] = 30.into();
    param_error(&w, "init", odd, &tok_in, &["hidden_size"], "not a multiple of `num_attention_heads`");
    let mut small = tiny();
    small["vocab_size"] = 5.into();
    param_error(&w, "init", small, &tok_in, &["vocab_size"], "smaller than the tokenizer's 19");
    let mut arch = tiny();
    arch["model_type"] = "gpt2".into();
    param_error(&w, "init", arch, &tok_in, &["model_type"], "llama");
    let mut eos = tiny();
    eos["eos_token"] = "<eos>".into();
    param_error(&w, "init", eos, &tok_in, &["eos_token"], "not a token");
}

#[test]
fn missing_and_extra_inputs_are_named() {
    let w = Work::default();
    let tok = write_tokenizer(&w);
    let e = w.fail("train", json!({}), &[("model", &tok)]);
    assert!(e.reply.message.contains("needs input `data`"), "{e}");
    let e = w.fail("sample", json!({}), &[("model", &tok), ("prompts", &tok), ("adaptor", &tok)]);
    assert!(e.reply.message.contains("no input `adaptor`") && e.reply.message.contains("`adapter`"), "{e}");
    let e = w.fail("init", tiny(), &[]);
    assert!(e.reply.message.contains("needs input `tokenizer`"), "{e}");
}

#[test]
fn bad_files_are_named() {
    let w = Work::default();
    let tok = write_tokenizer(&w);
    let (_, out) = w.invoke("init", tiny(), &[("tokenizer", &tok)]);
    let model = out.join("model");
    let data = write_train(&w, 1);
    let prompts = write_prompts(&w);

    // A model directory without weights.
    let e = w.fail("sample", json!({}), &[("model", &tok), ("prompts", &prompts)]);
    assert_eq!(e.status, STATUS_ERROR);
    assert!(e.reply.message.contains("config.json"), "{e}");
    std::fs::copy(model.join("config.json"), tok.join("config.json")).unwrap();
    let e = w.fail("sample", json!({}), &[("model", &tok), ("prompts", &prompts)]);
    assert!(e.reply.message.contains("no `model.safetensors`"), "{e}");

    // A tokenizer file that is not one.
    let bad_tok = w.write("bad/tokenizer.json", "{\"model\": 3}");
    let e = w.fail("init", tiny(), &[("tokenizer", &bad_tok)]);
    assert!(e.reply.message.contains(&bad_tok.display().to_string()), "{e}");

    // Bad rows name the file and line.
    let bad = w.write("data/bad.jsonl", "{\"id\": \"a\", \"prompt\": \"what\"}\n{\"id\": \"b\"}\n");
    let e = w.fail("sample", json!({}), &[("model", &model), ("prompts", &bad)]);
    assert!(e.reply.message.contains("bad.jsonl` line 2: no field `prompt`"), "{e}");
    let bad = w.write("data/bad_train.jsonl", "{\"id\": \"a\", \"segments\": 3}\n");
    let e = w.fail("train", json!({"max_steps": 1}), &[("model", &model), ("data", &bad)]);
    assert!(e.reply.message.contains("bad_train.jsonl` line 1"), "{e}");

    // An adapter trained on another model: its shapes do not fit.
    let mut wide = tiny();
    wide["hidden_size"] = 48.into();
    let (_, wide_out) = w.invoke("init", wide, &[("tokenizer", &tok)]);
    let (_, lora) = w.invoke(
        "train",
        json!({"max_steps": 1, "micro_batch": 1, "grad_accum": 1, "lora": {"r": 2}}),
        &[("model", &wide_out.join("model")), ("data", &data)],
    );
    let e =
        w.fail("sample", json!({}), &[("model", &model), ("adapter", &lora.join("adapter")), ("prompts", &prompts)]);
    assert!(e.reply.message.contains("adapter") && e.reply.message.contains("shape"), "{e}");
    let e = w.fail("train", json!({}), &[("model", &model), ("adapter", &tok), ("data", &data)]);
    assert!(e.reply.message.contains("adapter_config.json"), "{e}");
}

#[test]
fn cancellation_stops_training_and_sampling() {
    let w = Work::default();
    let tok = write_tokenizer(&w);
    let (_, out) = w.invoke("init", tiny(), &[("tokenizer", &tok)]);
    let model = out.join("model");
    let data = write_train(&w, 1);
    let prompts = write_prompts(&w);
    let host = Recorder { cancel: true, ..Default::default() };
    let e = w.invoke_with("train", json!({"max_steps": 3}), &[("model", &model), ("data", &data)], &host).unwrap_err();
    assert_eq!(e.status, STATUS_CANCELLED, "{e}");
    let e = w.invoke_with("sample", json!({}), &[("model", &model), ("prompts", &prompts)], &host).unwrap_err();
    assert_eq!(e.status, STATUS_CANCELLED, "{e}");
}
