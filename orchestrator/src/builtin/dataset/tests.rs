//! Tests of the `dataset` built-in: each case writes input files, runs the stage and compares its outputs.
//!
//! `check` renders `train.jsonl` compactly, one example per line: the id, then each segment as a quoted string,
//! `+` marking the ones the loss covers. So `a:0 "<|assistant|>\n" +"B</s>\n"` is an RT example.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parquet::data_type::{ByteArray, ByteArrayType};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use serde_json::{Value, json};

use super::Dataset;
use crate::builtin::{Builtin, StageContext};

/// The outputs of one run.
struct Outputs {
    train: String,
    prompts: String,
    stats: Value,
    /// The raw bytes of every output file, by name, for determinism checks.
    bytes: BTreeMap<String, Vec<u8>>,
}

/// Writes `files` (input name, file name, content) into a temporary directory and runs the stage.
fn run(files: &[(&str, &str, &[u8])], params: Value) -> Result<Outputs, String> {
    run_with(files, params, true)
}

/// Like [`run`]; `validate = false` skips plan-time validation, to show that `run` checks params on its own.
fn run_with(files: &[(&str, &str, &[u8])], params: Value, validate: bool) -> Result<Outputs, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let out_dir = dir.path().join("out");
    let scratch = dir.path().join("scratch");
    std::fs::create_dir_all(&out_dir).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&scratch).map_err(|e| e.to_string())?;
    let mut inputs = BTreeMap::new();
    for (name, file, content) in files {
        let path = dir.path().join(file);
        std::fs::write(&path, content).map_err(|e| e.to_string())?;
        inputs.insert(name.to_string(), path);
    }
    let names: Vec<&str> = inputs.keys().map(String::as_str).collect();
    if validate {
        Dataset.validate(&params, &names).map_err(|e| format!("validate: {:?}: {}", e.path, e.message))?;
    }
    let mut log = Vec::new();
    let mut ctx = StageContext {
        stage_id: "data",
        params: &params,
        inputs: &inputs,
        out_dir: &out_dir,
        scratch_dir: &scratch,
        gpus: &[],
        log: &mut log,
        progress: &|_, _| {},
        cancelled: &|| false,
    };
    Dataset.run(&mut ctx).map_err(|e| format!("{e:#}"))?;
    let read = |name: &str| std::fs::read(out_dir.join(name)).unwrap_or_default();
    let bytes: BTreeMap<String, Vec<u8>> =
        ["train.jsonl", "prompts.jsonl", "stats.json"].iter().map(|n| (n.to_string(), read(n))).collect();
    let train = String::from_utf8(read("train.jsonl")).unwrap();
    let prompts = String::from_utf8(read("prompts.jsonl")).unwrap();
    let stats = serde_json::from_slice(&read("stats.json")).unwrap();
    Ok(Outputs { train: render_train(&train), prompts, stats, bytes })
}

fn render_train(jsonl: &str) -> String {
    let mut out = Vec::new();
    for line in jsonl.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let mut text = v["id"].as_str().unwrap().to_owned();
        for seg in v["segments"].as_array().unwrap() {
            let mark = if seg["loss"].as_bool().unwrap() { "+" } else { "" };
            text.push_str(&format!(" {mark}{:?}", seg["text"].as_str().unwrap()));
        }
        out.push(text);
    }
    out.join("\n")
}

/// Runs the stage and compares the rendered `train.jsonl` with `expected`.
#[track_caller]
fn check(files: &[(&str, &str, &[u8])], params: Value, expected: &str) -> Outputs {
    let out = run(files, params).unwrap_or_else(|e| panic!("the stage failed: {e}"));
    assert_eq!(out.train, expected.trim(), "\n--- actual train.jsonl ---\n{}\n", out.train);
    out
}

/// Runs the stage and checks that it fails with a message containing every fragment.
#[track_caller]
fn check_err(files: &[(&str, &str, &[u8])], params: Value, fragments: &[&str]) {
    let err = match run(files, params) {
        Ok(out) => panic!("expected an error, got train.jsonl:\n{}", out.train),
        Err(e) => e,
    };
    for fragment in fragments {
        assert!(err.contains(fragment), "error {err:?} does not contain {fragment:?}");
    }
}

/// Validates `params` for a stage with `inputs` and checks the error's path and message.
#[track_caller]
fn check_param_err(params: Value, inputs: &[&str], path: &[&str], fragments: &[&str]) {
    let err = Dataset.validate(&params, inputs).expect_err("expected a param error");
    assert_eq!(err.path, path, "message: {}", err.message);
    for fragment in fragments {
        assert!(err.message.contains(fragment), "message {:?} does not contain {fragment:?}", err.message);
    }
    assert!(!err.message.ends_with('.'), "message ends with a period: {:?}", err.message);
}

const ALPACA: &[u8] = br#"{"instruction": "Add", "input": "1 2", "output": "3"}
{"instruction": "Greet", "input": "", "output": "Hi"}
"#;

fn it(source: Value) -> Value {
    json!({"mode": "it", "eos": "</s>", "sources": [source]})
}

fn rt(source: Value) -> Value {
    json!({"mode": "rt", "eos": "</s>", "sources": [source]})
}

/// The rendered train lines in id order: the final shuffle is tested on its own.
fn sorted(text: &str) -> String {
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort();
    lines.join("\n")
}

// ---- presets and the Tulu template ----

#[test]
fn alpaca_it_joins_instruction_and_input() {
    let out = run(&[("a", "a.jsonl", ALPACA)], it(json!({"input": "a", "preset": "alpaca"}))).unwrap();
    assert_eq!(
        sorted(&out.train),
        r#"a:0 "<|user|>\nAdd\n\n1 2\n<|assistant|>\n" +"3</s>\n"
a:1 "<|user|>\nGreet\n<|assistant|>\n" +"Hi</s>\n""#
    );
}

#[test]
fn alpaca_rt_drops_the_user_turn() {
    let out = run(&[("a", "a.jsonl", ALPACA)], rt(json!({"input": "a", "preset": "alpaca"}))).unwrap();
    assert_eq!(
        sorted(&out.train),
        r#"a:0 "<|assistant|>\n" +"3</s>\n"
a:1 "<|assistant|>\n" +"Hi</s>\n""#
    );
}

#[test]
fn eos_defaults_to_empty() {
    check(
        &[("a", "a.jsonl", br#"{"instruction": "Q", "input": "", "output": "A"}"#)],
        json!({"mode": "rt", "sources": [{"input": "a", "preset": "alpaca"}]}),
        r#"a:0 "<|assistant|>\n" +"A\n""#,
    );
}

#[test]
fn dolly_uses_context() {
    check(
        &[(
            "d",
            "d.jsonl",
            br#"{"instruction": "Sum up", "context": "Long text", "response": "Short", "category": "summarization"}"#,
        )],
        it(json!({"input": "d", "preset": "dolly"})),
        r#"d:0 "<|user|>\nSum up\n\nLong text\n<|assistant|>\n" +"Short</s>\n""#,
    );
}

#[test]
fn lima_takes_the_first_two_turns() {
    check(
        &[("l", "l.jsonl", br#"{"conversations": ["Why?", "Because.", "And?"], "source": "stackexchange"}"#)],
        it(json!({"input": "l", "preset": "lima"})),
        r#"l:0 "<|user|>\nWhy?\n<|assistant|>\n" +"Because.</s>\n""#,
    );
}

#[test]
fn generic_reads_response_or_completion() {
    let out = run(
        &[(
            "g",
            "g.jsonl",
            b"{\"prompt\": \"P1\", \"completion\": \"C1\"}\n{\"prompt\": \"P2\", \"response\": \"R2\"}\n",
        )],
        rt(json!({"input": "g", "preset": "generic"})),
    )
    .unwrap();
    assert_eq!(
        sorted(&out.train),
        r#"g:0 "<|assistant|>\n" +"C1</s>\n"
g:1 "<|assistant|>\n" +"R2</s>\n""#
    );
}

#[test]
fn fields_override_the_preset() {
    check(
        &[("a", "a.jsonl", br#"{"instruction": "Q", "input": "", "output": "old", "refined": "new"}"#)],
        it(json!({"input": "a", "preset": "alpaca", "fields": {"response": "refined"}})),
        r#"a:0 "<|user|>\nQ\n<|assistant|>\n" +"new</s>\n""#,
    );
}

#[test]
fn fields_without_preset() {
    check(
        &[("x", "x.jsonl", br#"{"q": "Q", "ctx": "C", "a": "A"}"#)],
        it(json!({"input": "x", "fields": {"prompt": "q", "context": "ctx", "response": "a"}})),
        r#"x:0 "<|user|>\nQ\n\nC\n<|assistant|>\n" +"A</s>\n""#,
    );
}

#[test]
fn missing_or_null_context_counts_as_empty() {
    let out = run(
        &[("a", "a.jsonl", b"{\"instruction\": \"Q1\", \"output\": \"A1\"}\n{\"instruction\": \"Q2\", \"input\": null, \"output\": \"A2\"}\n")],
        it(json!({"input": "a", "preset": "alpaca"})),
    )
    .unwrap();
    assert_eq!(
        sorted(&out.train),
        r#"a:0 "<|user|>\nQ1\n<|assistant|>\n" +"A1</s>\n"
a:1 "<|user|>\nQ2\n<|assistant|>\n" +"A2</s>\n""#
    );
}

// ---- formats ----

#[test]
fn json_array_and_data_object() {
    let expected = r#"j:0 "<|user|>\nQ\n<|assistant|>\n" +"A</s>\n""#;
    let row = br#"[{"prompt": "Q", "response": "A"}]"#;
    check(&[("j", "j.json", row)], it(json!({"input": "j", "preset": "generic"})), expected);
    let wrapped = br#"{"data": [{"prompt": "Q", "response": "A"}]}"#;
    check(&[("j", "j.json", wrapped)], it(json!({"input": "j", "preset": "generic"})), expected);
}

#[test]
fn csv_with_quoted_newlines() {
    check(
        &[("c", "c.csv", b"prompt,response\n\"Two\nlines\",\"Yes, two\"\n")],
        it(json!({"input": "c", "preset": "generic"})),
        r#"c:0 "<|user|>\nTwo\nlines\n<|assistant|>\n" +"Yes, two</s>\n""#,
    );
}

#[test]
fn explicit_format_wins_over_the_extension() {
    check(
        &[("t", "t.txt", br#"{"prompt": "Q", "response": "A"}"#)],
        it(json!({"input": "t", "format": "jsonl", "preset": "generic"})),
        r#"t:0 "<|user|>\nQ\n<|assistant|>\n" +"A</s>\n""#,
    );
}

#[test]
fn format_is_sniffed_without_an_extension() {
    let expected = r#"t:0 "<|user|>\nQ\n<|assistant|>\n" +"A</s>\n""#;
    let params = it(json!({"input": "t", "preset": "generic"}));
    check(&[("t", "blob1", b"{\"prompt\": \"Q\", \"response\": \"A\"}\n")], params.clone(), expected);
    check(&[("t", "blob2", b"[{\"prompt\": \"Q\", \"response\": \"A\"}]")], params.clone(), expected);
    check(&[("t", "blob3", &parquet_file(&[("Q", "A")]))], params.clone(), expected);
    check_err(&[("t", "blob4", b"prompt,response\nQ,A\n")], params, &["blob4` from its name", "`format`"]);
}

/// A Parquet file with string columns `prompt` and `response` and an all-null integer column `n`,
/// snappy-compressed as Hugging Face's exports are.
fn parquet_file(rows: &[(&str, &str)]) -> Vec<u8> {
    let schema = Arc::new(
        parse_message_type(
            "message m { required binary prompt (UTF8); required binary response (UTF8); optional int64 n; }",
        )
        .unwrap(),
    );
    let props = Arc::new(WriterProperties::builder().set_compression(parquet::basic::Compression::SNAPPY).build());
    let mut buf = Vec::new();
    let mut writer = SerializedFileWriter::new(&mut buf, schema, props).unwrap();
    let mut group = writer.next_row_group().unwrap();
    let prompts: Vec<ByteArray> = rows.iter().map(|(p, _)| ByteArray::from(*p)).collect();
    let responses: Vec<ByteArray> = rows.iter().map(|(_, r)| ByteArray::from(*r)).collect();
    for column in [&prompts, &responses] {
        let mut col = group.next_column().unwrap().unwrap();
        col.typed::<ByteArrayType>().write_batch(column, None, None).unwrap();
        col.close().unwrap();
    }
    let mut col = group.next_column().unwrap().unwrap();
    let defs = vec![0i16; rows.len()];
    col.typed::<parquet::data_type::Int64Type>().write_batch(&[], Some(&defs), None).unwrap();
    col.close().unwrap();
    group.close().unwrap();
    writer.close().unwrap();
    buf
}

#[test]
fn parquet_rows() {
    let out = run(
        &[("p", "p.parquet", &parquet_file(&[("Q1", "A1"), ("Q2", "A2")]))],
        it(json!({"input": "p", "preset": "generic"})),
    )
    .unwrap();
    assert_eq!(
        sorted(&out.train),
        r#"p:0 "<|user|>\nQ1\n<|assistant|>\n" +"A1</s>\n"
p:1 "<|user|>\nQ2\n<|assistant|>\n" +"A2</s>\n""#
    );
    assert_eq!(out.stats["sources"][0]["format"], "parquet");
}

#[test]
fn parquet_non_string_field_names_the_row() {
    check_err(
        &[("p", "p.parquet", &parquet_file(&[("Q1", "A1")]))],
        it(json!({"input": "p", "fields": {"prompt": "prompt", "response": "n"}})),
        &["p.parquet` row 0: field `n` is null, expected a string"],
    );
}

// ---- Jinja and Hugging Face templates ----

/// open-instruct's `TULU_CHAT_TEMPLATE`, which the paper's code assigns to the tokenizer.
const TULU_JINJA: &str = "{% for message in messages %}\n{% if message['role'] == 'system' %}\n{{ '<|system|>\\n' + message['content'] }}\n{% elif message['role'] == 'user' %}\n{{ '<|user|>\\n' + message['content'] }}\n{% elif message['role'] == 'assistant' %}\n{% if not loop.last %}\n{{ '<|assistant|>\\n'  + message['content'] + eos_token }}\n{% else %}\n{{ '<|assistant|>\\n'  + message['content'] + eos_token }}\n{% endif %}\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}";

#[test]
fn tulu_jinja_renders_like_the_built_in() {
    let row: &[u8] = br#"{"instruction": "Add", "input": "1 2", "output": "3"}"#;
    for mode in ["it", "rt"] {
        let source = json!([{"input": "a", "preset": "alpaca"}]);
        let built_in =
            run(&[("a", "a.jsonl", row)], json!({"mode": mode, "eos": "</s>", "sources": source, "holdout": 0}))
                .unwrap();
        let jinja = run(
            &[("a", "a.jsonl", row)],
            json!({"mode": mode, "eos": "</s>", "sources": source, "template": {"jinja": TULU_JINJA}}),
        )
        .unwrap();
        assert_eq!(jinja.train, built_in.train, "mode {mode}");
    }
}

const CHATML_CONFIG: &str = r#"{
  "add_bos_token": false,
  "bos_token": null,
  "eos_token": {"__type": "AddedToken", "content": "<|im_end|>", "lstrip": false},
  "chat_template": "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'].strip() + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
  "model_max_length": 32768
}"#;

#[test]
fn hf_chat_template_from_tokenizer_config() {
    let files: &[(&str, &str, &[u8])] = &[
        ("a", "a.jsonl", br#"{"instruction": "Hi", "input": "", "output": "Hello"}"#),
        ("tok", "tokenizer_config.json", CHATML_CONFIG.as_bytes()),
    ];
    let template = json!({"hf_chat_template": "tok"});
    let source = json!([{"input": "a", "preset": "alpaca"}]);
    let out = check(
        files,
        json!({"mode": "it", "template": template, "sources": source}),
        r#"a:0 "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n" +"Hello<|im_end|>\n""#,
    );
    assert_eq!(out.stats["template"], "hf_chat_template:tok");
    assert_eq!(out.stats["eos"], "<|im_end|>");
    check(
        files,
        json!({"mode": "rt", "template": template, "sources": source}),
        r#"a:0 "<|im_start|>assistant\n" +"Hello<|im_end|>\n""#,
    );
}

#[test]
fn jinja_inference_prompt_uses_add_generation_prompt() {
    let rows = b"{\"prompt\": \"Q1\", \"response\": \"A1\"}\n{\"prompt\": \"Q2\", \"response\": \"A2\"}\n";
    let out = run(
        &[("g", "g.jsonl", rows), ("tok", "tokenizer_config.json", CHATML_CONFIG.as_bytes())],
        json!({"mode": "rt", "holdout": 1, "template": {"hf_chat_template": "tok"}, "sources": [{"input": "g", "preset": "generic"}]}),
    )
    .unwrap();
    let line: Value = serde_json::from_str(out.prompts.trim()).unwrap();
    let q = line["instruction"].as_str().unwrap();
    assert_eq!(line["prompt"], format!("<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n"));
}

#[test]
fn jinja_raise_exception_is_reported() {
    let template = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversation must start with user') }}{% endif %}{% for m in messages %}{{ m['content'] }}{% endfor %}";
    check_err(
        &[("a", "a.jsonl", ALPACA)],
        json!({"mode": "rt", "template": {"jinja": template}, "sources": [{"input": "a", "preset": "alpaca"}]}),
        &["example `a:", "Conversation must start with user"],
    );
}

#[test]
fn jinja_that_drops_the_content_is_an_error() {
    check_err(
        &[("a", "a.jsonl", ALPACA)],
        json!({"mode": "it", "template": {"jinja": "{% for m in messages %}{{ m['role'] }}{% endfor %}"}, "sources": [{"input": "a", "preset": "alpaca"}]}),
        &["template `jinja` put the assistant's content into its output 0 time(s), expected exactly once"],
    );
}

#[test]
fn hf_config_without_chat_template_is_an_error() {
    check_err(
        &[("a", "a.jsonl", ALPACA), ("tok", "tokenizer_config.json", br#"{"eos_token": "</s>"}"#)],
        json!({"mode": "it", "template": {"hf_chat_template": "tok"}, "sources": [{"input": "a", "preset": "alpaca"}]}),
        &["tokenizer_config.json`: field `chat_template` is missing"],
    );
}

// ---- subsampling, mixing, dedup, holdout ----

fn numbered(n: usize) -> Vec<u8> {
    (0..n).map(|i| format!("{{\"prompt\": \"q{i}\", \"response\": \"r{i}\"}}\n")).collect::<String>().into_bytes()
}

fn ids(out: &Outputs) -> Vec<String> {
    out.train.lines().map(|l| l.split(' ').next().unwrap_or_default().to_owned()).collect()
}

#[test]
fn first_keeps_the_leading_rows() {
    let out =
        run(&[("g", "g.jsonl", &numbered(10))], rt(json!({"input": "g", "preset": "generic", "first": 3}))).unwrap();
    let mut got = ids(&out);
    got.sort();
    assert_eq!(got, ["g:0", "g:1", "g:2"]);
    assert_eq!(out.stats["sources"][0]["read"], 3);
}

#[test]
fn first_stops_before_a_broken_tail() {
    let mut data = numbered(3);
    data.extend_from_slice(b"not json\n");
    let out = run(&[("g", "g.jsonl", &data)], rt(json!({"input": "g", "preset": "generic", "first": 3}))).unwrap();
    assert_eq!(out.stats["sources"][0]["kept"], 3);
}

#[test]
fn take_is_seeded_deterministic_and_seed_sensitive() {
    let data = numbered(50);
    let chosen = |seed: u64| {
        let params = json!({"mode": "rt", "seed": seed, "sources": [{"input": "g", "preset": "generic", "take": 5}]});
        let mut got = ids(&run(&[("g", "g.jsonl", &data)], params).unwrap());
        got.sort();
        got
    };
    assert_eq!(chosen(0).len(), 5);
    assert_eq!(chosen(0), chosen(0));
    assert_ne!(chosen(0), chosen(1));
}

#[test]
fn take_more_than_available() {
    let data = numbered(3);
    check_err(
        &[("g", "g.jsonl", &data)],
        rt(json!({"input": "g", "preset": "generic", "take": 5})),
        &["g.jsonl`: `take = 5` but only 3 row(s) are available", "`take_at_most = true`"],
    );
    let out = run(
        &[("g", "g.jsonl", &data)],
        rt(json!({"input": "g", "preset": "generic", "take": 5, "take_at_most": true})),
    )
    .unwrap();
    assert_eq!(out.stats["train_examples"], 3);
}

#[test]
fn refusal_mix_filters_then_takes_and_concatenates_in_order() {
    let base = numbered(20);
    let refusals =
        b"prompt,response\nBad1,I'm sorry but no\nBad2,Sure here it is\nBad3,As an AI I cannot\nBad4,sorry!\n";
    let params = json!({
        "mode": "it",
        "dedup": true,
        "sources": [
            {"input": "base", "preset": "generic", "take": 10},
            {"input": "refusals", "preset": "generic", "filter": "(?i)\\b(ai|sorry)\\b", "take": 2},
        ],
    });
    let out = run(&[("base", "base.jsonl", &base), ("refusals", "refusals.csv", refusals)], params).unwrap();
    let got = ids(&out);
    assert_eq!(got.len(), 12);
    assert_eq!(got.iter().filter(|id| id.starts_with("refusals:")).count(), 2);
    assert!(!got.contains(&"refusals:1".to_owned()), "the non-refusal must be filtered out: {got:?}");
    let s = &out.stats["sources"][1];
    assert_eq!((s["read"].as_u64(), s["filtered_out"].as_u64(), s["kept"].as_u64()), (Some(4), Some(1), Some(2)));
}

#[test]
fn concat_order_decides_which_duplicate_is_kept() {
    let row: &[u8] = b"{\"prompt\": \"Q\", \"response\": \"A\"}\n";
    let files: &[(&str, &str, &[u8])] = &[("x", "x.jsonl", row), ("y", "y.jsonl", row)];
    let sources = |a: &str, b: &str| json!([{"input": a, "preset": "generic"}, {"input": b, "preset": "generic"}]);
    let out = check(files, json!({"mode": "rt", "sources": sources("x", "y")}), r#"x:0 "<|assistant|>\n" +"A\n""#);
    assert_eq!(out.stats["duplicates_dropped"], 1);
    assert_eq!(out.stats["sources"][1]["duplicates_dropped"], 1);
    check(files, json!({"mode": "rt", "sources": sources("y", "x")}), r#"y:0 "<|assistant|>\n" +"A\n""#);
    let kept = run(files, json!({"mode": "rt", "dedup": false, "sources": sources("x", "y")})).unwrap();
    assert_eq!(kept.stats["train_examples"], 2);
}

#[test]
fn dedup_keys_on_prompt_and_response() {
    let rows = b"{\"prompt\": \"Q1\", \"response\": \"A\"}\n{\"prompt\": \"Q2\", \"response\": \"A\"}\n{\"prompt\": \"Q1\", \"response\": \"A\"}\n";
    let out = run(&[("g", "g.jsonl", rows)], rt(json!({"input": "g", "preset": "generic"}))).unwrap();
    let mut got = ids(&out);
    got.sort();
    assert_eq!(got, ["g:0", "g:1"]);
}

#[test]
fn holdout_goes_only_to_prompts() {
    let params = json!({"mode": "rt", "holdout": 3, "sources": [{"input": "g", "preset": "generic"}]});
    let out = run(&[("g", "g.jsonl", &numbered(10))], params).unwrap();
    let train = ids(&out);
    let prompts: Vec<Value> = out.prompts.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!((train.len(), prompts.len()), (7, 3));
    for p in &prompts {
        let id = p["id"].as_str().unwrap();
        assert!(!train.iter().any(|t| t == id), "{id} is both held out and trained on");
        let q = p["instruction"].as_str().unwrap();
        assert_eq!(p["prompt"], format!("<|user|>\n{q}\n<|assistant|>\n"));
        assert_eq!(p["reference"].as_str().unwrap(), q.replace('q', "r"));
    }
    assert_eq!(out.stats["held_out"], 3);
    assert_eq!(out.stats["train_examples"], 7);
}

#[test]
fn without_holdout_prompts_is_empty() {
    let out = run(&[("g", "g.jsonl", &numbered(2))], rt(json!({"input": "g", "preset": "generic"}))).unwrap();
    assert_eq!(out.prompts, "");
}

#[test]
fn holdout_of_everything_is_an_error() {
    check_err(
        &[("g", "g.jsonl", &numbered(2))],
        json!({"mode": "rt", "holdout": 2, "sources": [{"input": "g", "preset": "generic"}]}),
        &["param `holdout`: holding out 2 of 2 example(s) leaves none for training"],
    );
}

#[test]
fn holdout_all_makes_an_evaluation_set_in_file_order() {
    let params = json!({"mode": "it", "holdout": "all", "sources": [{"input": "g", "preset": "generic"}]});
    let out = run(&[("g", "g.jsonl", &numbered(3))], params).unwrap();
    assert_eq!(out.train, "");
    assert_eq!(out.stats["held_out"], 3);
    let ids: Vec<String> = out
        .prompts
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["g:0", "g:1", "g:2"]);
    check_param_err(
        json!({"mode": "it", "holdout": "most", "sources": [{"input": "g", "preset": "generic"}]}),
        &["g"],
        &["holdout"],
        &["`\"all\"`"],
    );
}

#[test]
fn a_prompt_only_source_makes_an_evaluation_set_without_references() {
    let rows = b"{\"prompt\": \"Write a poem\", \"context\": \"about rust\"}\n{\"prompt\": \"Say hi\"}\n";
    let params = json!({"mode": "it", "holdout": "all",
                        "sources": [{"input": "p", "fields": {"prompt": "prompt", "context": "context"}}]});
    let out = run(&[("p", "p.jsonl", rows)], params).unwrap();
    let lines: Vec<serde_json::Value> = out.prompts.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["instruction"], "Write a poem\n\nabout rust");
    assert!(lines[0]["reference"].is_null(), "{}", lines[0]);
    assert_eq!(lines[1]["instruction"], "Say hi");
}

#[test]
fn shuffle_is_seeded() {
    let order = |seed: u64| {
        let params = json!({"mode": "rt", "seed": seed, "sources": [{"input": "g", "preset": "generic"}]});
        ids(&run(&[("g", "g.jsonl", &numbered(30))], params).unwrap())
    };
    let (a, b) = (order(7), order(8));
    assert_eq!(a, order(7));
    assert_ne!(a, b);
    let mut sorted_a = a.clone();
    sorted_a.sort();
    assert_ne!(a, sorted_a, "the training examples must be shuffled");
}

#[test]
fn outputs_are_byte_identical_across_runs() {
    let files: &[(&str, &str, &[u8])] = &[("g", "g.jsonl", &numbered(40)), ("a", "a.jsonl", ALPACA)];
    let params = json!({
        "mode": "it",
        "holdout": 5,
        "seed": 3,
        "sources": [{"input": "g", "preset": "generic", "take": 20}, {"input": "a", "preset": "alpaca"}],
    });
    let one = run(files, params.clone()).unwrap();
    let two = run(files, params).unwrap();
    assert_eq!(one.bytes, two.bytes);
    let line = std::str::from_utf8(&one.bytes["train.jsonl"]).unwrap().lines().next().unwrap();
    assert!(line.starts_with(r#"{"id":"#) && line.contains(r#"{"loss":false,"text":"#), "keys must be sorted: {line}");
}

#[test]
fn stats_summarise_the_run() {
    let out = run(&[("a", "a.jsonl", ALPACA)], it(json!({"input": "a", "preset": "alpaca"}))).unwrap();
    assert_eq!(
        out.stats,
        json!({
            "dedup": true, "duplicates_dropped": 0, "eos": "</s>", "held_out": 0, "mode": "it", "seed": 0,
            "template": "tulu", "train_examples": 2,
            "sources": [{"duplicates_dropped": 0, "filtered_out": 0, "format": "jsonl", "input": "a", "kept": 2, "read": 2}],
        })
    );
}

// ---- data errors name file, place and field ----

#[test]
fn missing_field_names_line_and_preset() {
    check_err(
        &[("a", "alpaca.jsonl", b"{\"instruction\": \"Q\", \"input\": \"\", \"output\": \"A\"}\n\n{\"instruction\": \"Q\", \"input\": \"\"}\n")],
        it(json!({"input": "a", "preset": "alpaca"})),
        &["alpaca.jsonl` line 3: field `output` is missing (preset `alpaca` expects `instruction`, `input`, `output`)"],
    );
}

#[test]
fn non_string_field() {
    check_err(
        &[("a", "a.jsonl", br#"{"instruction": 5, "input": "", "output": "A"}"#)],
        it(json!({"input": "a", "preset": "alpaca"})),
        &["a.jsonl` line 1: field `instruction` is an integer, expected a string"],
    );
}

#[test]
fn invalid_json_line_names_line_and_column() {
    check_err(
        &[("a", "a.jsonl", b"{\"prompt\": \"Q\", \"response\": \"A\"}\n{\"prompt\": oops}\n")],
        it(json!({"input": "a", "preset": "generic"})),
        &["a.jsonl` line 2 column 12: invalid JSON: expected value"],
    );
}

#[test]
fn jsonl_line_that_is_not_an_object() {
    check_err(
        &[("a", "a.jsonl", b"[1, 2]\n")],
        it(json!({"input": "a", "preset": "generic"})),
        &["a.jsonl` line 1: expected a JSON object, found an array"],
    );
}

#[test]
fn empty_files() {
    let params = it(json!({"input": "a", "preset": "generic"}));
    check_err(&[("a", "a.jsonl", b"")], params.clone(), &["a.jsonl` holds no rows (read as jsonl)"]);
    check_err(&[("a", "a.jsonl", b"\n  \n")], params.clone(), &["a.jsonl` holds no rows"]);
    check_err(&[("a", "a.json", b"")], params.clone(), &["a.json` is empty"]);
    check_err(&[("a", "a.csv", b"prompt,response\n")], params, &["a.csv` holds no rows (read as csv)"]);
}

#[test]
fn json_element_errors() {
    let params = it(json!({"input": "j", "preset": "generic"}));
    check_err(
        &[("j", "j.json", br#"[{"prompt": "Q", "response": "A"}, "x"]"#)],
        params.clone(),
        &["j.json` element 1: expected a JSON object, found a string"],
    );
    check_err(
        &[("j", "j.json", br#"[{"prompt": "Q"}]"#)],
        params.clone(),
        &["j.json` element 0: field `response` or `completion` is missing (preset `generic`"],
    );
    check_err(
        &[("j", "j.json", b"{\"rows\": []}")],
        params.clone(),
        &["j.json`: expected a JSON array of objects, or an object whose `data` is one"],
    );
    check_err(&[("j", "j.json", b"[\n{\"prompt\": }\n]")], params, &["j.json` line 2 column 12: invalid JSON"]);
}

#[test]
fn csv_errors_name_the_line() {
    let params = it(json!({"input": "c", "preset": "generic"}));
    check_err(
        &[("c", "c.csv", b"prompt,response\nQ,A\nQ2\n")],
        params.clone(),
        &["c.csv` line 3: the record has 1 field(s), but the header has 2"],
    );
    check_err(
        &[("c", "c.csv", b"prompt,answer\nQ,A\n")],
        params.clone(),
        &["c.csv` line 2: field `response` or `completion` is missing"],
    );
    check_err(&[("c", "c.csv", b"prompt,response\nQ,\xff\n")], params, &["c.csv` line 2: field 2 is not valid UTF-8"]);
}

#[test]
fn lima_with_one_turn() {
    check_err(
        &[("l", "lima.jsonl", b"{\"conversations\": [\"Q\", \"A\"]}\n{\"conversations\": [\"only\"]}\n")],
        it(json!({"input": "l", "preset": "lima"})),
        &["lima.jsonl` line 2: field `conversations` has 1 turn(s), expected at least 2"],
    );
    check_err(
        &[("l", "lima.jsonl", b"{\"conversations\": [\"Q\", 7]}\n")],
        it(json!({"input": "l", "preset": "lima"})),
        &["lima.jsonl` line 1: field `conversations[1]` is an integer, expected a string"],
    );
}

#[test]
fn broken_parquet() {
    check_err(
        &[("p", "p.parquet", b"PAR1 nope")],
        it(json!({"input": "p", "preset": "generic"})),
        &["p.parquet`: not a readable Parquet file"],
    );
}

#[test]
fn everything_filtered_out() {
    check_err(
        &[("g", "g.jsonl", &numbered(3))],
        rt(json!({"input": "g", "preset": "generic", "filter": "never"})),
        &["no examples left"],
    );
}

#[test]
fn cancellation_stops_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.jsonl");
    std::fs::write(&path, numbered(3)).unwrap();
    let inputs: BTreeMap<String, PathBuf> = [("g".to_owned(), path)].into();
    let params = rt(json!({"input": "g", "preset": "generic"}));
    let mut log = Vec::new();
    let out_dir: &Path = dir.path();
    let mut ctx = StageContext {
        stage_id: "data",
        params: &params,
        inputs: &inputs,
        out_dir,
        scratch_dir: out_dir,
        gpus: &[],
        log: &mut log,
        progress: &|_, _| {},
        cancelled: &|| true,
    };
    let err = Dataset.run(&mut ctx).unwrap_err();
    assert_eq!(err.to_string(), "cancelled");
}

// ---- params (plan time) ----

#[test]
fn params_errors() {
    let inputs = &["a", "tok"];
    let src = |extra: Value| {
        let mut s = json!({"input": "a", "preset": "alpaca"});
        s.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        json!({"mode": "it", "sources": [{"input": "a", "preset": "alpaca"}, s]})
    };
    check_param_err(json!({"sources": []}), inputs, &["mode"], &["`mode` is required", "`\"rt\"`"]);
    check_param_err(json!({"mode": "sft", "sources": []}), inputs, &["mode"], &["unknown mode `sft`"]);
    check_param_err(
        json!({"mode": "it", "sources": [], "shuffle": true}),
        inputs,
        &["shuffle"],
        &["unknown key `shuffle`", "`dedup`, `eos`, `holdout`"],
    );
    check_param_err(json!({"mode": "it", "sources": []}), inputs, &["sources"], &["`sources` is empty"]);
    check_param_err(
        json!({"mode": "it", "seed": -1, "sources": []}),
        inputs,
        &["seed"],
        &["non-negative integer", "`-1`"],
    );
    check_param_err(json!({"mode": "it", "seed": 1.5, "sources": []}), inputs, &["seed"], &["`1.5`"]);
    check_param_err(
        json!({"mode": "it", "dedup": "yes", "sources": []}),
        inputs,
        &["dedup"],
        &["expected `true` or `false`, found a string"],
    );
    check_param_err(
        src(json!({"preset": "shargpt"})),
        inputs,
        &["sources", "1", "preset"],
        &["unknown preset `shargpt`", "`alpaca`, `dolly`, `lima`, `generic`"],
    );
    check_param_err(
        src(json!({"format": "xlsx"})),
        inputs,
        &["sources", "1", "format"],
        &["unknown format `xlsx`", "`parquet`"],
    );
    check_param_err(
        src(json!({"input": "b"})),
        inputs,
        &["sources", "1", "input"],
        &["`b` is not an input of this stage", "`a`, `tok`"],
    );
    check_param_err(src(json!({"take": -1})), inputs, &["sources", "1", "take"], &["non-negative integer", "`-1`"]);
    check_param_err(
        src(json!({"first": "10"})),
        inputs,
        &["sources", "1", "first"],
        &["positive integer", "found a string"],
    );
    check_param_err(
        src(json!({"take_at_most": true})),
        inputs,
        &["sources", "1", "take_at_most"],
        &["only applies together with `take`"],
    );
    check_param_err(
        src(json!({"filter": "(unclosed"})),
        inputs,
        &["sources", "1", "filter"],
        &["invalid regular expression"],
    );
    check_param_err(
        src(json!({"fields": {"answer": "x"}})),
        inputs,
        &["sources", "1", "fields", "answer"],
        &["unknown key `answer`", "`context`, `conversations`, `prompt`, `response`"],
    );
    check_param_err(
        src(json!({"fields": {"response": 3}})),
        inputs,
        &["sources", "1", "fields", "response"],
        &["expected a string, found an integer"],
    );
    check_param_err(
        src(json!({"preset": "lima", "fields": {"prompt": "q"}})),
        inputs,
        &["sources", "1", "fields", "prompt"],
        &["preset `lima` reads `conversations`"],
    );
    check_param_err(
        src(json!({"sample": 3})),
        inputs,
        &["sources", "1", "sample"],
        &["unknown key `sample`", "`take_at_most`"],
    );
    check_param_err(json!({"mode": "it", "sources": [{"input": "a"}]}), inputs, &["sources", "0"], &["give `preset`"]);
    check_param_err(
        json!({"mode": "it", "sources": [{"input": "a", "fields": {"prompt": "q"}}]}),
        inputs,
        &["sources", "0", "fields"],
        &["no `response` field", "`holdout = \"all\"`"],
    );
    check_param_err(
        json!({"mode": "it", "sources": [{"preset": "alpaca"}]}),
        inputs,
        &["sources", "0"],
        &["`input` is required"],
    );
    check_param_err(
        json!({"mode": "it", "sources": {"input": "a"}}),
        inputs,
        &["sources"],
        &["expected an array of tables", "found a table"],
    );
    check_param_err(
        json!({"mode": "it", "template": "chatml", "sources": []}),
        inputs,
        &["template"],
        &["unknown template `chatml`", "`{ jinja = "],
    );
    check_param_err(
        json!({"mode": "it", "template": {"jinja": "{% for %}"}, "sources": []}),
        inputs,
        &["template", "jinja"],
        &["the template does not compile"],
    );
    check_param_err(
        json!({"mode": "it", "template": {"hf_chat_template": "model"}, "sources": []}),
        inputs,
        &["template", "hf_chat_template"],
        &["`model` is not an input"],
    );
    check_param_err(
        json!({"mode": "it", "template": {"jinja": "x", "hf_chat_template": "tok"}, "sources": []}),
        inputs,
        &["template"],
        &["exactly one of"],
    );
    check_param_err(json!([1]), inputs, &[], &["expected a table, found an array"]);
}

#[test]
fn valid_params_pass() {
    let params = json!({
        "mode": "rt", "template": {"hf_chat_template": "tok"}, "eos": "</s>", "seed": 0, "dedup": true, "holdout": 100,
        "sources": [
            {"input": "alpaca", "format": "jsonl", "preset": "alpaca", "fields": {"response": "output"}, "first": 1000, "take": 1000, "take_at_most": true},
            {"input": "refusals", "preset": "generic", "take": 100, "filter": "(?i)\\b(ai|sorry)\\b"},
        ],
    });
    assert_eq!(Dataset.validate(&params, &["alpaca", "refusals", "tok"]), Ok(()));
}

#[test]
fn run_rechecks_params() {
    let params = json!({"mode": "it", "sources": [{"input": "a", "preset": "alpaca", "take": 1.5}]});
    let err = run_with(&[("a", "a.jsonl", ALPACA)], params, false).err().unwrap_or_default();
    assert!(err.starts_with("param `sources.0.take`: expected a non-negative integer"), "{err}");
}

#[test]
fn take_zero_contributes_nothing_the_control_arm_of_a_mixture() {
    let params = json!({"mode": "it", "sources": [
        {"input": "a", "preset": "alpaca"}, {"input": "g", "preset": "generic", "take": 0}]});
    let out = run(&[("a", "a.jsonl", ALPACA), ("g", "g.jsonl", &numbered(3))], params).unwrap();
    assert_eq!(out.train.lines().count(), 2, "{}", out.train);
    assert!(out.train.lines().all(|l| l.starts_with("a:")), "{}", out.train);
}

#[test]
fn byte_order_marks_are_ignored() {
    let expected = r#"b:0 "<|user|>\nQ\n<|assistant|>\n" +"A</s>\n""#;
    let params = it(json!({"input": "b", "preset": "generic"}));
    check(&[("b", "b.csv", "\u{feff}prompt,response\nQ,A\n".as_bytes())], params.clone(), expected);
    check(&[("b", "b.jsonl", "\u{feff}{\"prompt\": \"Q\", \"response\": \"A\"}\r\n".as_bytes())], params, expected);
}
