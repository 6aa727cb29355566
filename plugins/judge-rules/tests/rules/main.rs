//! judge-rules through its real descriptor and the host-side client, as rto calls it: every op, every
//! param error, bad rows, cancellation and the Wilson interval.

mod exact_match;
mod length;
mod pairwise;
mod plugin;
mod refusal;
mod validate;
mod wilson;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;

use api::Host;
use api::client::{InvokeError, Plugin};
use api::protocol::{PROTOCOL_VERSION, Request};
use serde_json::Value;

/// A host that records progress and can ask the op to stop.
#[derive(Default)]
pub struct Recorder {
    pub progress: RefCell<Vec<(u64, u64)>>,
    pub cancel: bool,
}

impl Host for Recorder {
    fn log(&self, _level: u32, _message: &str) {}
    fn progress(&self, done: u64, total: u64, _message: &str) {
        self.progress.borrow_mut().push((done, total));
    }
    fn is_cancelled(&self) -> bool {
        self.cancel
    }
}

/// What one successful op left behind.
pub struct Run {
    /// The op's returned summary.
    pub summary: Value,
    /// `summary.json`, parsed; must equal `summary`.
    pub summary_file: Value,
    /// `items.jsonl` as bytes (for byte-level checks) and parsed.
    pub items_text: String,
    pub items: Vec<Value>,
    pub progress: Vec<(u64, u64)>,
    /// Paths of the input files, for checking that error messages name them.
    pub inputs: BTreeMap<String, PathBuf>,
}

/// The plugin through its descriptor, as rto loads a linked-in plugin.
pub fn plugin() -> Plugin {
    // SAFETY: a static descriptor of the linked judge-rules crate.
    unsafe { Plugin::from_raw(judge_rules::descriptor()) }.expect("handshake")
}

/// Writes each `(name, jsonl)` to a file, returning the tempdir (kept alive by the caller) and the input map.
pub fn write_inputs(inputs: &[(&str, &str)]) -> (tempfile::TempDir, BTreeMap<String, PathBuf>) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("out")).unwrap();
    let map = inputs
        .iter()
        .map(|(name, text)| {
            let path = dir.path().join(format!("{name}.jsonl"));
            std::fs::write(&path, text).unwrap();
            (name.to_string(), path)
        })
        .collect();
    (dir, map)
}

/// A request for `params` over `inputs`, writing into `<dir>/out`.
pub fn request(
    dir: &std::path::Path,
    params: Value,
    inputs: BTreeMap<String, PathBuf>,
    validate_only: bool,
) -> Request {
    Request {
        protocol: PROTOCOL_VERSION.into(),
        stage_id: "judge".into(),
        params,
        inputs,
        out_dir: dir.join("out"),
        scratch_dir: dir.to_path_buf(),
        gpus: vec![],
        validate_only,
    }
}

/// Runs `op` with `host`; the error as the client reports it.
pub fn run_with(op: &str, params: Value, inputs: &[(&str, &str)], host: &Recorder) -> Result<Run, InvokeError> {
    let (dir, map) = write_inputs(inputs);
    let plugin = plugin();
    let mut instance = plugin.create(&Value::Null).expect("create");
    let summary = instance.invoke(op, &request(dir.path(), params, map.clone(), false), host)?;
    let out = dir.path().join("out");
    let mut entries: Vec<String> =
        std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    entries.sort();
    assert_eq!(entries, ["items.jsonl", "summary.json"], "exactly these outputs");
    let items_text = std::fs::read_to_string(out.join("items.jsonl")).unwrap();
    let items = items_text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let summary_file = serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    Ok(Run { summary, summary_file, items_text, items, progress: host.progress.take(), inputs: map })
}

/// Runs `op`, which must succeed.
pub fn run(op: &str, params: Value, inputs: &[(&str, &str)]) -> Run {
    let run = run_with(op, params, inputs, &Recorder::default()).unwrap_or_else(|e| panic!("{op} failed: {e}"));
    assert_eq!(run.summary, run.summary_file, "the returned summary is the one written");
    run
}

/// Runs `op`, which must fail; returns the error.
pub fn fail(op: &str, params: Value, inputs: &[(&str, &str)]) -> InvokeError {
    match run_with(op, params, inputs, &Recorder::default()) {
        Ok(r) => panic!("{op} should have failed, returned {}", r.summary),
        Err(e) => e,
    }
}

/// JSONL of `{"id": i, field: text}` for each text, ids `r0`, `r1`, ….
pub fn responses(field: &str, texts: &[&str]) -> String {
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| format!("{}\n", serde_json::json!({"id": format!("r{i}"), field: t})))
        .collect()
}

/// The data-driven check: runs `op` over one response per case and compares, case by case, the `key` of each
/// item with the expected value, naming the response on a mismatch. Returns the run for summary checks.
pub fn check(op: &str, params: Value, extra: &[(&str, &str)], key: &str, cases: &[(&str, Value)]) -> Run {
    let texts: Vec<&str> = cases.iter().map(|(t, _)| *t).collect();
    let field = params.get("field").and_then(Value::as_str).unwrap_or("response").to_string();
    let mut inputs = vec![("responses", responses(&field, &texts))];
    inputs.extend(extra.iter().map(|(n, t)| (*n, t.to_string())));
    let inputs: Vec<(&str, &str)> = inputs.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let run = run(op, params.clone(), &inputs);
    assert_eq!(run.items.len(), cases.len());
    let mut wrong = vec![];
    for (i, ((text, want), item)) in cases.iter().zip(&run.items).enumerate() {
        assert_eq!(item["id"], format!("r{i}"), "items keep input order");
        if &item[key] != want {
            wrong.push(format!("  {text:?}: {key} = {}, expected {want}", item[key]));
        }
    }
    assert!(wrong.is_empty(), "{op} with {params}:\n{}", wrong.join("\n"));
    run
}

/// A `[lo, hi]` summary field equals `want` to 1e-15: serde_json's default float parser may be one ulp off the
/// written text, so an exact comparison after the JSON round trip would test the parser, not the plugin.
pub fn assert_close(got: &Value, want: (f64, f64)) {
    let pair = got.as_array().filter(|a| a.len() == 2).and_then(|a| Some((a[0].as_f64()?, a[1].as_f64()?)));
    let (lo, hi) = pair.unwrap_or_else(|| panic!("expected [lo, hi], got {got}"));
    assert!((lo - want.0).abs() < 1e-15 && (hi - want.1).abs() < 1e-15, "{got} vs {want:?}");
}
