//! `generate` on a live instance, as `rto serve` drives it: one instance, many invokes, the model loaded once;
//! greedy answers equal `sample`'s; chat messages through a template; stop strings; log-probabilities; param
//! errors with their paths. And `sample`'s length-grouped batching, which must not change any response.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use api::client::{Instance, InvokeError};
use api::ffi::STATUS_CANCELLED;
use api::protocol::{PROTOCOL_VERSION, Request};
use serde_json::{Value, json};

use crate::errors::param_error;
use crate::{Recorder, Work, prompt, samples, tiny, write_prompts, write_tokenizer};

/// The Tulu format as a Jinja chat template: renders one user turn exactly as [`prompt`] does.
const TULU: &str = "{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}\n{% endfor %}\
                    {% if add_generation_prompt %}<|assistant|>\n{% endif %}";

/// Invokes `op` on `instance` (kept between calls, as the serving worker keeps it) with throwaway directories.
fn call(
    instance: &mut Instance<'_>,
    work: &Work,
    op: &str,
    params: Value,
    inputs: &[(&str, &Path)],
    host: &Recorder,
) -> Result<Value, InvokeError> {
    let dir = tempfile::tempdir_in(work.root.path()).unwrap();
    let inputs: BTreeMap<String, PathBuf> = inputs.iter().map(|(k, p)| (k.to_string(), p.to_path_buf())).collect();
    let request = Request {
        protocol: PROTOCOL_VERSION.into(),
        stage_id: "serve".into(),
        params,
        inputs,
        out_dir: dir.path().to_owned(),
        scratch_dir: dir.path().to_owned(),
        gpus: vec![],
        validate_only: false,
    };
    instance.invoke(op, &request, host)
}

fn loads(host: &Recorder) -> usize {
    host.log.borrow().iter().filter(|l| l.starts_with("loading model")).count()
}

/// A tiny random model (`init` with the word-level tokenizer) and its directory.
fn tiny_model(w: &Work) -> PathBuf {
    let tok = write_tokenizer(w);
    w.invoke("init", tiny(), &[("tokenizer", &tok)]).1.join("model")
}

#[test]
fn a_live_instance_loads_once_and_answers_as_sample_does() {
    let w = Work::default();
    let model = tiny_model(&w);
    let prompts = write_prompts(&w);
    let (_, out) = w.invoke("sample", json!({"max_new_tokens": 8}), &[("model", &model), ("prompts", &prompts)]);
    let rows = samples(&out).1;

    let plugin = crate::plugin();
    let mut live = plugin.create(&Value::Null).unwrap();
    let host = Recorder::default();
    let inputs = [("model", model.as_path())];
    for (row, thing) in rows.iter().zip(["sky", "grass", "blood"]) {
        let got =
            call(&mut live, &w, "generate", json!({"prompt": prompt(thing), "max_tokens": 8}), &inputs, &host).unwrap();
        assert_eq!(got["text"], row["response"], "{thing}: {got}");
        assert_eq!(got["finish_reason"], row["finish"], "{thing}: {got}");
        assert_eq!(got["completion_tokens"], row["tokens"], "{thing}: {got}");
        assert_eq!(got["prompt_tokens"], 14, "`<|`, `user`, `|>`, eight words, `<|`, `assistant`, `|>`");
        assert_eq!(got["logprobs"], Value::Null);
        // The same question as chat messages, through a template that renders the same prompt.
        let messages = json!([{"role": "user", "content": format!("what is the colour of the {thing} ?")}]);
        let chat = call(
            &mut live,
            &w,
            "generate",
            json!({"messages": messages, "chat_template": TULU, "max_tokens": 8}),
            &inputs,
            &host,
        )
        .unwrap();
        assert_eq!(chat, got);
    }
    assert_eq!(loads(&host), 1, "six requests, one load: {:?}", host.log.borrow());

    // Another dtype is another model in memory.
    let bf16 = call(&mut live, &w, "generate", json!({"prompt": prompt("sky"), "dtype": "bf16"}), &inputs, &host);
    assert!(bf16.unwrap()["text"].is_string());
    assert_eq!(loads(&host), 2);
}

/// Through the Rust API: the load counter, and the least recently used model leaving when a fourth arrives.
#[test]
fn the_live_cache_keeps_three_models() {
    use api::Backend as _;
    let w = Work::default();
    let a = tiny_model(&w);
    let mut other = tiny();
    other["seed"] = 9.into();
    let b = w.invoke("init", other, &[("tokenizer", &w.path("tok"))]).1.join("model");
    let mut plugin = candle_lm::CandleLm::create(&Value::Null).unwrap();
    let host = Recorder::default();
    let mut generate = |model: &Path, dtype: &str| {
        let inputs = BTreeMap::from([("model".to_string(), model.to_owned())]);
        let params = json!({"prompt": prompt("sky"), "max_tokens": 2, "dtype": dtype});
        let dir = tempfile::tempdir().unwrap();
        let mut ctx = api::OpContext::new("serve", &params, &inputs, dir.path(), dir.path(), &[], &host);
        plugin.invoke("generate", &mut ctx).unwrap();
        plugin.models_loaded()
    };
    assert_eq!(generate(&a, "f32"), 1);
    assert_eq!(generate(&a, "f32"), 1);
    assert_eq!(generate(&b, "f32"), 2);
    assert_eq!(generate(&a, "bf16"), 3);
    assert_eq!(generate(&a, "f32"), 3, "still loaded, now the most recently used");
    assert_eq!(generate(&b, "bf16"), 4, "a fourth model: `b` in f32 leaves");
    assert_eq!(generate(&a, "f32"), 4);
    assert_eq!(generate(&b, "f32"), 5, "`b` in f32 was unloaded");
    assert!(host.log.borrow().iter().any(|l| l.starts_with("unloading")), "{:?}", host.log.borrow());
}

#[test]
fn stop_strings_cut_the_text_and_logprobs_are_distributions() {
    let w = Work::default();
    let model = tiny_model(&w);
    let plugin = crate::plugin();
    let mut live = plugin.create(&Value::Null).unwrap();
    let host = Recorder::default();
    let inputs = [("model", model.as_path())];
    let mut generate = |params: Value| call(&mut live, &w, "generate", params, &inputs, &host).unwrap();

    let free = generate(json!({"prompt": prompt("sky"), "max_tokens": 8}));
    let text = free["text"].as_str().unwrap().to_owned();
    let words: Vec<&str> = text.split(' ').collect();
    assert!(words.len() >= 4 && free["finish_reason"] == "length", "a long enough answer to cut: {free}");
    let stop = words[2];
    let expected = &text[..text.find(stop).unwrap()];
    // Generation stops at the first word after which the text holds the stop string (a word may contain it).
    let tokens = (1..=words.len()).find(|k| words[..*k].join(" ").contains(stop)).unwrap();
    for stop_param in [json!(stop), json!(["no such words", stop])] {
        let cut = generate(json!({"prompt": prompt("sky"), "max_tokens": 8, "stop": stop_param}));
        assert_eq!(cut["text"], expected, "{cut}");
        assert_eq!(cut["finish_reason"], "stop");
        assert_eq!(cut["completion_tokens"], tokens, "generation ended with the stop string's token");
    }

    // Sampled, with alternatives: each entry a log-probability, the alternatives a sorted sub-distribution.
    let params = json!({"prompt": prompt("grass"), "max_tokens": 8, "temperature": 1.0, "top_k": 5, "seed": 3,
                        "logprobs": true, "top_logprobs": 4});
    let got = generate(params.clone());
    assert_eq!(got, generate(params), "seeded");
    let entries = got["logprobs"].as_array().unwrap();
    let eos = usize::from(got["finish_reason"] == "stop");
    assert_eq!(entries.len() + eos, got["completion_tokens"].as_u64().unwrap() as usize, "{got}");
    assert!(!entries.is_empty());
    let pieces: Vec<&str> = entries.iter().map(|e| e["token"].as_str().unwrap()).collect();
    assert_eq!(pieces.join(" "), got["text"].as_str().unwrap(), "the word-level tokenizer joins with spaces");
    for e in entries {
        let lp = e["logprob"].as_f64().unwrap();
        assert!(lp.is_finite() && lp <= 0.0, "{e}");
        assert_eq!(e["bytes"], json!(e["token"].as_str().unwrap().as_bytes()), "{e}");
        let top = e["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 4);
        let values: Vec<f64> = top.iter().map(|t| t["logprob"].as_f64().unwrap()).collect();
        assert!(values.windows(2).all(|v| v[0] >= v[1]), "{e}");
        assert!(values.iter().map(|v| v.exp()).sum::<f64>() <= 1.0 + 1e-9, "{e}");
        // top-k 5 drew the token from the five most likely; four are listed, so it ranks there or is fifth.
        assert!(lp <= values[0] && (top.iter().any(|t| t["token"] == e["token"]) || lp <= values[3]), "{e}");
    }
    let no_top = generate(json!({"prompt": prompt("grass"), "max_tokens": 2, "logprobs": true}));
    assert_eq!(no_top["logprobs"][0]["top_logprobs"], json!([]));
}

#[test]
fn bad_generate_params_point_at_their_path() {
    let w = Work::default();
    let model = tiny_model(&w);
    let m = [("model", model.as_path())];
    let user = json!([{"role": "user", "content": "what is the colour of the sky ?"}]);
    let p = |extra: Value| {
        let mut v = json!({"prompt": prompt("sky")});
        v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        v
    };
    param_error(&w, "generate", json!({}), &m, &["messages"], "required");
    param_error(&w, "generate", json!({"prompt": "a", "messages": user}), &m, &["prompt"], "not both");
    param_error(&w, "generate", json!({"messages": "hi"}), &m, &["messages"], "list of {role, content}");
    param_error(&w, "generate", json!({"messages": []}), &m, &["messages"], "at least one");
    param_error(&w, "generate", json!({"messages": [{"role": "user"}]}), &m, &["messages", "0", "content"], "required");
    param_error(
        &w,
        "generate",
        json!({"messages": [{"role": "user", "content": "a"}, {"role": 1, "content": "b"}]}),
        &m,
        &["messages", "1", "role"],
        "expected a string",
    );
    param_error(
        &w,
        "generate",
        json!({"messages": [{"role": "user", "content": "a", "name": "x"}]}),
        &m,
        &["messages", "0", "name"],
        "unknown param",
    );
    param_error(&w, "generate", p(json!({"n": 2})), &m, &["n"], "valid: `add_generation_prompt`");
    param_error(&w, "generate", p(json!({"max_tokens": 0})), &m, &["max_tokens"], "at least 1");
    param_error(&w, "generate", p(json!({"temperature": -1.0})), &m, &["temperature"], "non-negative");
    param_error(&w, "generate", p(json!({"top_p": 0.0, "temperature": 1.0})), &m, &["top_p"], "(0, 1]");
    param_error(&w, "generate", p(json!({"top_k": "5"})), &m, &["top_k"], "non-negative integer");
    param_error(&w, "generate", p(json!({"stop": 3})), &m, &["stop"], "a string or a list of strings");
    param_error(&w, "generate", p(json!({"stop": ["a", ""]})), &m, &["stop"], "empty");
    param_error(&w, "generate", p(json!({"logprobs": "yes"})), &m, &["logprobs"], "true or false");
    param_error(&w, "generate", p(json!({"logprobs": true, "top_logprobs": 21})), &m, &["top_logprobs"], "0..=20");
    param_error(&w, "generate", p(json!({"top_logprobs": 2})), &m, &["top_logprobs"], "logprobs = true");
    param_error(&w, "generate", p(json!({"dtype": "f16"})), &m, &["dtype"], "bf16");
    param_error(&w, "generate", p(json!({"chat_template": TULU})), &m, &["chat_template"], "applies to `messages`");
    let bad_template = json!({"messages": user, "chat_template": "{% for %}"});
    param_error(&w, "generate", bad_template, &m, &["chat_template"], "does not compile");
    // Found at run time, still pointed at the param: the model has no template; the template raises.
    param_error(&w, "generate", json!({"messages": user}), &m, &["messages"], "no chat template");
    let raising = json!({"messages": user, "chat_template": "{{ raise_exception('no users here') }}"});
    param_error(&w, "generate", raising, &m, &["chat_template"], "no users here");

    let cancel = Recorder { cancel: true, ..Default::default() };
    let e = w.invoke_with("generate", p(json!({})), &m, &cancel).unwrap_err();
    assert_eq!(e.status, STATUS_CANCELLED, "{e}");
    let e = w.fail("generate", p(json!({})), &[]);
    assert!(e.reply.message.contains("needs input `model`"), "{e}");
    let e = w.fail("generate", p(json!({})), &[("model", &model), ("prompts", &model)]);
    assert!(e.reply.message.contains("no input `prompts`"), "{e}");
}

/// `sample` in batches of 1, 2 and the default 8 over prompts of different lengths: the same file, in input
/// order.
#[test]
fn sample_batching_changes_no_response() {
    let w = Work::default();
    let model = tiny_model(&w);
    let mut lines = String::new();
    for (i, question) in
        ["sky", "what is the colour of the grass ?", "blood red blue", "the", "is the sky blue ?"].iter().enumerate()
    {
        lines += &format!("{}\n", json!({"id": format!("q{i}"), "prompt": prompt(question)}));
    }
    let prompts = w.write("data/ragged.jsonl", &lines);
    let inputs = [("model", model.as_path()), ("prompts", prompts.as_path())];
    let run = |batch: Option<usize>| {
        let mut params = json!({"max_new_tokens": 6});
        if let Some(b) = batch {
            params["batch_size"] = b.into();
        }
        samples(&w.invoke("sample", params, &inputs).1)
    };
    let (one, rows) = run(Some(1));
    assert_eq!(rows.iter().map(|r| r["id"].as_str().unwrap()).collect::<Vec<_>>(), ["q0", "q1", "q2", "q3", "q4"]);
    assert_eq!(run(Some(2)).0, one);
    assert_eq!(run(None).0, one);
    let sampled = |batch: usize| {
        let params = json!({"max_new_tokens": 6, "temperature": 1.2, "top_k": 8, "seed": 4, "batch_size": batch});
        samples(&w.invoke("sample", params, &inputs).1).0
    };
    assert_eq!(sampled(1), sampled(3), "each prompt draws from its own seeded stream");
    param_error(&w, "sample", json!({"batch_size": 0}), &inputs, &["batch_size"], "at least 1");
}

/// SmolLM2-135M-Instruct (`RTO_SMOLLM2_GGUF`) served: its own ChatML template from the GGUF, Paris, the bytes of
/// the logprob entries spelling the text, and one load for two requests.
#[test]
fn smollm2_answers_chat_messages() {
    let Some(gguf) = std::env::var_os("RTO_SMOLLM2_GGUF") else {
        eprintln!("skipped: set RTO_SMOLLM2_GGUF (see tests/lm/gguf.rs)");
        return;
    };
    let w = Work::default();
    let plugin = crate::plugin();
    let mut live = plugin.create(&Value::Null).unwrap();
    let host = Recorder::default();
    let inputs = [("model", Path::new(&gguf))];
    let params = json!({"messages": [{"role": "user", "content": "What is the capital of France?"}],
                        "max_tokens": 24, "logprobs": true, "top_logprobs": 3});
    let t0 = std::time::Instant::now();
    let got = call(&mut live, &w, "generate", params.clone(), &inputs, &host).unwrap();
    let first = t0.elapsed().as_secs_f64();
    let text = got["text"].as_str().unwrap();
    assert!(text.contains("Paris"), "{got}");
    assert_eq!(got["finish_reason"], "stop", "{got}");
    let entries = got["logprobs"].as_array().unwrap();
    assert_eq!(entries.len() + 1, got["completion_tokens"].as_u64().unwrap() as usize, "all but the eos");
    let bytes: Vec<u8> =
        entries.iter().flat_map(|e| e["bytes"].as_array().unwrap().iter().map(|b| b.as_u64().unwrap() as u8)).collect();
    assert_eq!(String::from_utf8(bytes).unwrap(), text);
    assert!(entries.iter().all(|e| e["logprob"].as_f64().unwrap() <= 0.0));
    // The system prompt of its template, the question, the generation prompt (as tests/lm/gguf.rs spells them).
    let chatml = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
                  <|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";
    let tok = candle_lm::gguf::Gguf::open(Path::new(&gguf)).unwrap().tokenizer().unwrap();
    assert_eq!(got["prompt_tokens"], tok.encode(chatml, false).unwrap().len(), "{got}");
    let t1 = std::time::Instant::now();
    let again = call(&mut live, &w, "generate", params, &inputs, &host).unwrap();
    eprintln!(
        "SmolLM2 served: first request (with loading) {first:.2} s, second {:.2} s: {text:?}",
        t1.elapsed().as_secs_f64()
    );
    assert_eq!(again, got);
    assert_eq!(loads(&host), 1);
}
