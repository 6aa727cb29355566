//! The whole path through the descriptor: `init` → `train` → `sample`.

use candle_core::Device;
use serde_json::{Value, json};

use crate::{QA, Work, metrics, samples, tiny, write_prompts, write_tokenizer, write_train};

fn read(path: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn the_plugin_describes_itself() {
    let p = crate::plugin();
    assert_eq!(p.description.name, "candle-lm");
    assert_eq!(p.description.kind, "model");
    let ops: Vec<&str> = p.description.ops.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(ops, ["init", "train", "sample", "tokenizer", "merge", "generate"]);
    let manifest =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../candle-lm-cdylib/rto-plugin.toml")).unwrap();
    assert!(
        manifest.contains("ops = [\"init\", \"train\", \"sample\", \"tokenizer\", \"merge\", \"generate\"]"),
        "the manifest lists the ops: {manifest}"
    );
    assert!(manifest.contains(&format!("version = \"{}\"", p.description.version)), "{manifest}");
}

/// init writes a loadable HF directory; `lm` pre-training and then LoRA lower the loss; sampling with the adapter
/// answers the memorised questions and stops at the eos; the adapter is deterministic.
#[test]
fn init_train_sample_round_trip() {
    let w = Work::default();
    let tok = write_tokenizer(&w);
    let (init, out) = w.invoke("init", tiny(), &[("tokenizer", &tok)]);
    let model = out.join("model");
    let config = read(&model.join("config.json"));
    assert_eq!(config["vocab_size"], 19, "the tokenizer's size");
    assert_eq!(config["eos_token_id"], 1, "`</s>` found among the tokenizer's tokens");
    assert_eq!(config["model_type"], "llama");
    assert_eq!(read(&model.join("tokenizer_config.json"))["eos_token"], "</s>");
    assert!(model.join("tokenizer.json").is_file() && model.join("model.safetensors").is_file());
    assert_eq!(init["vocab_size"], 19);
    // Seeded: the same seed gives the same bytes, another seed other weights.
    let (_, again) = w.invoke("init", tiny(), &[("tokenizer", &tok)]);
    let bytes = |d: &std::path::Path| std::fs::read(d.join("model/model.safetensors")).unwrap();
    assert_eq!(bytes(&out), bytes(&again));
    let mut other = tiny();
    other["seed"] = 4.into();
    let (_, reseeded) = w.invoke("init", other, &[("tokenizer", &tok)]);
    assert_ne!(bytes(&out), bytes(&reseeded));

    // Plain LM pre-training: every token is a target, full weights come back in HF layout.
    let data = write_train(&w, 4);
    let lm_params = json!({"method": "lm", "lr": 1e-2, "micro_batch": 4, "grad_accum": 1, "max_steps": 6,
                           "max_grad_norm": 1.0});
    let (lm, lm_out) = w.invoke("train", lm_params, &[("model", &model), ("data", &data)]);
    assert_eq!(lm["method"], "lm");
    assert_eq!(lm["steps"], 6);
    assert_eq!(lm["loss_tokens"].as_u64(), Some(lm["tokens"].as_u64().unwrap() - 12), "all but each first token");
    // Documents without an eos get one, as a target: a model pre-trained from scratch must learn to stop.
    let corpus = w.write(
        "corpus/train.jsonl",
        &(0..3)
            .map(|i| {
                format!(
                    "{}\n",
                    json!({"id": format!("c:{i}"), "segments": [{"loss": true, "text": "the answer is red"}]})
                )
            })
            .collect::<String>(),
    );
    let one_step = json!({"method": "lm", "lr": 1e-2, "micro_batch": 3, "grad_accum": 1, "max_steps": 1});
    let (with_eos, _) = w.invoke("train", one_step, &[("model", &model), ("data", &corpus)]);
    assert_eq!((with_eos["tokens"].as_u64(), with_eos["loss_tokens"].as_u64()), (Some(15), Some(12)), "{with_eos}");
    let pretrained = lm_out.join("model");
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        assert!(pretrained.join(f).is_file(), "{f}");
    }
    assert_ne!(std::fs::read(pretrained.join("model.safetensors")).unwrap(), bytes(&out), "weights changed");

    // LoRA on the response segments only.
    let lora_params = json!({"lr": 1e-2, "micro_batch": 4, "grad_accum": 1, "max_steps": 40, "max_grad_norm": 1.0,
                             "lora": {"r": 8, "alpha": 16, "dropout": 0.0}});
    let recorder = crate::Recorder::default();
    let (trained, lora_out) =
        w.invoke_with("train", lora_params.clone(), &[("model", &pretrained), ("data", &data)], &recorder).unwrap();
    assert_eq!(trained["steps"], 40);
    assert_eq!(trained["loss_tokens"], 12 * 5, "`the answer is <colour></s>` per example");
    assert_eq!(recorder.progress.borrow().last(), Some(&(40, 40)));
    let m = metrics(&lora_out);
    assert_eq!(m.len(), 40);
    let (first, last) = (m[0]["loss"].as_f64().unwrap(), m[39]["loss"].as_f64().unwrap());
    assert!(last < 0.1 * first, "loss {first} → {last}");
    let adapter = lora_out.join("adapter");
    let cfg = read(&adapter.join("adapter_config.json"));
    assert_eq!((cfg["r"].as_u64(), cfg["peft_type"].as_str()), (Some(8), Some("LORA")));
    let (_, lora_again) = w.invoke("train", lora_params, &[("model", &pretrained), ("data", &data)]);
    let adapter_bytes = |d: &std::path::Path| std::fs::read(d.join("adapter/adapter_model.safetensors")).unwrap();
    assert_eq!(adapter_bytes(&lora_out), adapter_bytes(&lora_again), "training is deterministic on the CPU");

    // Sampling with the adapter merged: the memorised answers, ended by the eos.
    let prompts = write_prompts(&w);
    let (summary, s_out) = w.invoke(
        "sample",
        json!({"max_new_tokens": 8}),
        &[("model", &pretrained), ("adapter", &adapter), ("prompts", &prompts)],
    );
    assert_eq!(summary["n"], 3);
    let (text, rows) = samples(&s_out);
    let first_line: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let keys: Vec<&String> = first_line.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["finish", "id", "instruction", "prompt", "reference", "response", "tokens"]);
    assert!(text.starts_with("{\"finish\":"), "keys are written sorted: {text}");
    for (row, (thing, colour)) in rows.iter().zip(QA) {
        assert_eq!(row["response"], format!("the answer is {colour}"), "{thing}: {row}");
        assert_eq!(row["reference"], row["response"]);
        assert_eq!((row["finish"].as_str(), row["tokens"].as_u64()), (Some("stop"), Some(5)), "{row}");
    }

    // Without the adapter the base model does not know the answers: the adapter really was applied.
    let (_, base_out) =
        w.invoke("sample", json!({"max_new_tokens": 8}), &[("model", &pretrained), ("prompts", &prompts)]);
    assert_ne!(samples(&base_out).1, rows);

    // A stop string cuts the response before it; `limit` keeps the first prompts.
    let (_, cut_out) = w.invoke(
        "sample",
        json!({"max_new_tokens": 8, "stop": ["is"], "limit": 2}),
        &[("model", &pretrained), ("adapter", &adapter), ("prompts", &prompts)],
    );
    let cut = samples(&cut_out).1;
    assert_eq!(cut.len(), 2);
    assert_eq!((cut[0]["response"].as_str(), cut[0]["finish"].as_str()), (Some("the answer "), Some("stop")));
    assert_eq!(cut[0]["tokens"], 3);

    // Top-p sampling is seeded.
    let hot = json!({"max_new_tokens": 6, "temperature": 1.5, "top_p": 0.95, "seed": 5});
    let run =
        |params: &Value| samples(&w.invoke("sample", params.clone(), &[("model", &model), ("prompts", &prompts)]).1).0;
    assert_eq!(run(&hot), run(&hot));
}

/// Full fine-tuning on the loss segments with warm-up and cosine decay: the loss falls and HF-layout weights come
/// back.
#[test]
fn full_fine_tuning_writes_a_model() {
    let w = Work::default();
    let tok = write_tokenizer(&w);
    let (_, out) = w.invoke("init", tiny(), &[("tokenizer", &tok)]);
    let data = write_train(&w, 2);
    let params = json!({"method": "full", "lr": 1e-2, "micro_batch": 6, "grad_accum": 1, "epochs": 8,
                        "schedule": "cosine", "warmup_steps": 2});
    let (summary, full) = w.invoke("train", params, &[("model", &out.join("model")), ("data", &data)]);
    assert_eq!(summary["steps"], 8);
    assert!(summary["final_loss"].as_f64().unwrap() < summary["first_loss"].as_f64().unwrap());
    let m = metrics(&full);
    assert!(m[0]["lr"].as_f64().unwrap() < m[2]["lr"].as_f64().unwrap(), "warm-up");
    let weights =
        candle_core::safetensors::load(full.join("model/model.safetensors"), &candle_core::Device::Cpu).unwrap();
    assert!(weights.contains_key("model.layers.1.mlp.down_proj.weight"));
    assert!(!weights.contains_key("lm_head.weight"), "tied: the head is the embedding");
}

/// The memory options through the plugin: LoRA in bf16 (f32 adapters), length-grouped batches and gradient
/// checkpointing together still learn, and the adapter is written in f32.
#[test]
fn lora_in_bf16_with_grouping_and_checkpointing() {
    let w = Work::default();
    let tok = write_tokenizer(&w);
    let (_, out) = w.invoke("init", tiny(), &[("tokenizer", &tok)]);
    let data = write_train(&w, 4);
    let params = json!({"lr": 1e-2, "micro_batch": 4, "grad_accum": 1, "max_steps": 20, "max_grad_norm": 1.0,
                        "dtype": "bf16", "group_by_length": true, "gradient_checkpointing": true,
                        "lora": {"r": 8, "alpha": 16, "dropout": 0.1}});
    let (summary, trained) = w.invoke("train", params, &[("model", &out.join("model")), ("data", &data)]);
    assert_eq!(summary["steps"], 20);
    let (first, last) = (summary["first_loss"].as_f64().unwrap(), summary["final_loss"].as_f64().unwrap());
    assert!(last < 0.5 * first, "loss {first} → {last}");
    let adapter = candle_core::safetensors::load(trained.join("adapter/adapter_model.safetensors"), &Device::Cpu);
    let adapter = adapter.unwrap();
    assert!(!adapter.is_empty() && adapter.values().all(|t| t.dtype() == candle_core::DType::F32));
}

/// A host that asks the op to stop once `stop_after` steps are reported done, like rto cancelling (or the
/// machine dying) mid-run.
#[derive(Default)]
struct StopAfter {
    stop_after: Option<u64>,
    done: std::cell::Cell<u64>,
    log: std::cell::RefCell<Vec<String>>,
}

impl api::Host for StopAfter {
    fn log(&self, _level: u32, message: &str) {
        self.log.borrow_mut().push(message.to_owned());
    }
    fn progress(&self, done: u64, _total: u64, _message: &str) {
        self.done.set(done);
    }
    fn is_cancelled(&self) -> bool {
        self.stop_after.is_some_and(|s| self.done.get() >= s)
    }
}

/// `train` with a given scratch directory (rto keeps it across attempts of one action) and a fresh `out`.
fn train_in(
    scratch: &std::path::Path,
    out: &std::path::Path,
    params: &Value,
    inputs: &[(&str, &std::path::Path)],
    host: &StopAfter,
) -> Result<Value, api::client::InvokeError> {
    std::fs::create_dir_all(scratch).unwrap();
    std::fs::create_dir_all(out).unwrap();
    let request = api::protocol::Request {
        protocol: api::protocol::PROTOCOL_VERSION.into(),
        stage_id: "train".into(),
        params: params.clone(),
        inputs: inputs.iter().map(|(k, p)| (k.to_string(), p.to_path_buf())).collect(),
        out_dir: out.to_path_buf(),
        scratch_dir: scratch.to_path_buf(),
        gpus: vec![],
        validate_only: false,
    };
    let plugin = crate::plugin();
    let mut instance = plugin.create(&Value::Null).expect("create");
    instance.invoke("train", &request, host)
}

/// A `train` cancelled after step 7 (checkpoints every 3 steps) and invoked again with the same scratch
/// directory resumes from step 6 and writes the adapter bytes and summary of an uninterrupted run.
#[test]
fn an_interrupted_train_resumes_from_its_checkpoint() {
    let w = Work::default();
    let tok = write_tokenizer(&w);
    let (_, init) = w.invoke("init", tiny(), &[("tokenizer", &tok)]);
    let model = init.join("model");
    let data = write_train(&w, 2);
    let inputs: [(&str, &std::path::Path); 2] = [("model", &model), ("data", &data)];
    let params = json!({"lr": 1e-2, "micro_batch": 2, "grad_accum": 1, "max_steps": 10, "warmup_steps": 2,
                        "schedule": "cosine", "checkpoint_every": 3, "seed": 5,
                        "lora": {"r": 4, "alpha": 8, "dropout": 0.1}});
    let (straight, straight_out) = w.invoke("train", params.clone(), &inputs);
    assert_eq!(straight["steps"], 10);
    let adapter = |d: &std::path::Path| std::fs::read(d.join("adapter/adapter_model.safetensors")).unwrap();

    let scratch = w.path("attempts/scratch");
    let killed = StopAfter { stop_after: Some(7), ..Default::default() };
    let e = train_in(&scratch, &w.path("attempts/out1"), &params, &inputs, &killed).unwrap_err();
    assert_eq!(e.status, api::ffi::STATUS_CANCELLED, "{e}");
    assert!(scratch.join("checkpoints/step-000000006").is_dir());

    let again = StopAfter::default();
    let out = w.path("attempts/out2");
    let resumed = train_in(&scratch, &out, &params, &inputs, &again).unwrap();
    let log = again.log.borrow();
    assert!(log.iter().any(|l| l.starts_with("resuming from step 6 ")), "{log:?}");
    assert_eq!(adapter(&out), adapter(&straight_out), "the adapter of an uninterrupted run");
    assert_eq!(resumed, straight, "the same summary");
    let steps: Vec<u64> = metrics(&out).iter().map(|m| m["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, (1..=10).collect::<Vec<u64>>(), "metrics.jsonl covers the whole run");
    let (losses, straight_losses): (Vec<Value>, Vec<Value>) = (
        metrics(&out).iter().map(|m| m["loss"].clone()).collect(),
        metrics(&straight_out).iter().map(|m| m["loss"].clone()).collect(),
    );
    assert_eq!(losses, straight_losses);

    // `checkpoint_every = 0` writes none.
    let mut off = params.clone();
    off["checkpoint_every"] = 0.into();
    let none = w.path("off/scratch");
    train_in(&none, &w.path("off/out"), &off, &inputs, &StopAfter::default()).unwrap();
    assert_eq!(std::fs::read_dir(none.join("checkpoints")).unwrap().count(), 0);
}
