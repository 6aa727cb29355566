//! candle-lm through its real descriptor and the host-side client, as rto calls it: `init` → `train` (`lm`,
//! `lora`, `full`) → `sample` on a tiny model with a word-level tokenizer, param and input errors, bad files and
//! cancellation; `merge` of an adapter into its base; the `tokenizer` op (a byte-level BPE) feeding `init` for
//! llama and gemma2; `generate` on a live instance, and `sample`'s batching.

mod errors;
mod generate;
mod merge;
mod round_trip;
mod tokenizer;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use api::Host;
use api::client::{InvokeError, Plugin};
use api::protocol::{PROTOCOL_VERSION, Request};
use serde_json::{Value, json};

/// A host that records progress and log lines and can ask the op to stop.
#[derive(Default)]
pub struct Recorder {
    pub progress: RefCell<Vec<(u64, u64)>>,
    pub log: RefCell<Vec<String>>,
    pub cancel: bool,
}

impl Host for Recorder {
    fn log(&self, _level: u32, message: &str) {
        self.log.borrow_mut().push(message.to_owned());
    }
    fn progress(&self, done: u64, total: u64, _message: &str) {
        self.progress.borrow_mut().push((done, total));
    }
    fn is_cancelled(&self) -> bool {
        self.cancel
    }
}

/// The plugin through its descriptor, as rto loads a linked-in plugin.
pub fn plugin() -> Plugin {
    // SAFETY: a static descriptor of the linked candle-lm crate.
    unsafe { Plugin::from_raw(candle_lm::descriptor()) }.expect("handshake")
}

/// A scratch area: every op runs in its own `<root>/<n>/out`.
pub struct Work {
    pub root: tempfile::TempDir,
    runs: RefCell<usize>,
}

impl Default for Work {
    fn default() -> Work {
        Work { root: tempfile::tempdir().unwrap(), runs: RefCell::new(0) }
    }
}

impl Work {
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.path().join(rel)
    }

    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Runs `op`; on success returns the summary and the output directory.
    pub fn invoke_with(
        &self,
        op: &str,
        params: Value,
        inputs: &[(&str, &Path)],
        host: &Recorder,
    ) -> Result<(Value, PathBuf), InvokeError> {
        let n = {
            let mut r = self.runs.borrow_mut();
            *r += 1;
            *r
        };
        let dir = self.path(&format!("run{n}"));
        std::fs::create_dir_all(dir.join("out")).unwrap();
        std::fs::create_dir_all(dir.join("scratch")).unwrap();
        let inputs: BTreeMap<String, PathBuf> = inputs.iter().map(|(k, p)| (k.to_string(), p.to_path_buf())).collect();
        let request = Request {
            protocol: PROTOCOL_VERSION.into(),
            stage_id: op.into(),
            params,
            inputs,
            out_dir: dir.join("out"),
            scratch_dir: dir.join("scratch"),
            gpus: vec![],
            validate_only: false,
        };
        let plugin = plugin();
        let mut instance = plugin.create(&Value::Null).expect("create");
        let summary = instance.invoke(op, &request, host)?;
        Ok((summary, dir.join("out")))
    }

    /// Runs `op`, which must succeed.
    pub fn invoke(&self, op: &str, params: Value, inputs: &[(&str, &Path)]) -> (Value, PathBuf) {
        self.invoke_with(op, params, inputs, &Recorder::default()).unwrap_or_else(|e| panic!("{op} failed: {e}"))
    }

    /// Runs `op`, which must fail.
    pub fn fail(&self, op: &str, params: Value, inputs: &[(&str, &Path)]) -> InvokeError {
        match self.invoke_with(op, params, inputs, &Recorder::default()) {
            Ok((s, _)) => panic!("{op} should have failed, returned {s}"),
            Err(e) => e,
        }
    }
}

/// The words of the test language: the Tulu role markers as the whitespace pre-tokenizer splits them, and a few
/// questions and answers.
pub const WORDS: [&str; 17] = [
    "<|",
    "|>",
    "user",
    "assistant",
    "what",
    "is",
    "red",
    "blue",
    "green",
    "sky",
    "grass",
    "blood",
    "the",
    "colour",
    "of",
    "?",
    "answer",
];

/// The test's questions and answers.
pub const QA: [(&str, &str); 3] = [("sky", "blue"), ("grass", "green"), ("blood", "red")];

/// Writes a word-level `tokenizer.json` over [`WORDS`] with `<unk>` (0) and `</s>` (1) as special tokens, and
/// returns its directory.
pub fn write_tokenizer(work: &Work) -> PathBuf {
    let mut vocab = serde_json::Map::new();
    for (i, w) in ["<unk>", "</s>"].iter().chain(&WORDS).enumerate() {
        vocab.insert(w.to_string(), i.into());
    }
    let special = |id: usize, content: &str| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
               "normalized": false, "special": true})
    };
    let tokenizer = json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [special(0, "<unk>"), special(1, "</s>")],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    });
    work.write("tok/tokenizer.json", &tokenizer.to_string());
    work.path("tok")
}

/// The prompt of question `thing` in the Tulu format the `dataset` stage writes.
pub fn prompt(thing: &str) -> String {
    format!("<|user|>\nwhat is the colour of the {thing} ?\n<|assistant|>\n")
}

/// A `train.jsonl` as the `dataset` stage writes it (IT mode): `copies` of each question and answer.
pub fn write_train(work: &Work, copies: usize) -> PathBuf {
    let mut lines = String::new();
    for i in 0..copies {
        for (j, (thing, colour)) in QA.iter().enumerate() {
            let segments = json!([
                {"loss": false, "text": prompt(thing)},
                {"loss": true, "text": format!("the answer is {colour}</s>\n")},
            ]);
            lines += &format!(
                "{}\n",
                json!({"id": format!("qa:{}", i * QA.len() + j), "segments": segments, "source": "qa"})
            );
        }
    }
    work.write("data/train.jsonl", &lines)
}

/// A `prompts.jsonl` as the `dataset` stage writes it, one row per question.
pub fn write_prompts(work: &Work) -> PathBuf {
    let mut lines = String::new();
    for (i, (thing, colour)) in QA.iter().enumerate() {
        let row = json!({"id": format!("p{i}"), "instruction": format!("what is the colour of the {thing} ?"),
                         "prompt": prompt(thing), "reference": format!("the answer is {colour}")});
        lines += &format!("{row}\n");
    }
    work.write("data/prompts.jsonl", &lines)
}

/// The tiny config `init` gets. `initializer_range` is well above HF's 0.02: with tied embeddings of that scale
/// and width 32, no logit can exceed about 0.6 until the embeddings grow, and LoRA (which leaves them frozen)
/// then cannot fit anything.
pub fn tiny() -> Value {
    json!({"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 2, "max_position_embeddings": 64, "tie_word_embeddings": true, "seed": 3, "initializer_range": 0.3})
}

/// `metrics.jsonl` of a training run, parsed.
pub fn metrics(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `samples.jsonl` of a sampling run: the raw text and the parsed rows.
pub fn samples(out: &Path) -> (String, Vec<Value>) {
    let text = std::fs::read_to_string(out.join("samples.jsonl")).unwrap();
    let rows = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    (text, rows)
}
