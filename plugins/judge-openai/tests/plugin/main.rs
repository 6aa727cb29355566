//! judge-openai through its real descriptor and the host-side client, as rto calls it, for everything that is
//! decided before a judge answers: params, inputs, the API key's environment variable, unreachable endpoints
//! and cancellation. (Judging against a real server is in the workspace's `tests/e2e/judge.rs`, on `rto serve`.)

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::path::PathBuf;

use api::Host;
use api::client::{InvokeError, Plugin};
use api::ffi::{STATUS_BAD_INPUT, STATUS_CANCELLED, STATUS_ERROR};
use api::protocol::{PROTOCOL_VERSION, Request};
use serde_json::{Value, json};

/// A host that records logs and can ask the op to stop after a number of cancellation checks.
#[derive(Default)]
struct Recorder {
    logs: RefCell<Vec<String>>,
    cancel_after: Option<usize>,
    checks: Cell<usize>,
}

impl Host for Recorder {
    fn log(&self, _level: u32, message: &str) {
        self.logs.borrow_mut().push(message.to_string());
    }
    fn progress(&self, _done: u64, _total: u64, _message: &str) {}
    fn is_cancelled(&self) -> bool {
        self.checks.set(self.checks.get() + 1);
        self.cancel_after.is_some_and(|n| self.checks.get() > n)
    }
}

fn plugin() -> Plugin {
    // SAFETY: the static descriptor of the linked judge-openai crate.
    unsafe { Plugin::from_raw(judge_openai::descriptor()) }.expect("handshake")
}

/// A port on loopback that nothing listens on (bound, noted, closed).
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Params for a judge at a closed port that gives up after one attempt, plus `extra`.
fn params(extra: Value) -> Value {
    let mut p = json!({"endpoint": format!("http://127.0.0.1:{}/v1", closed_port()), "model": "judge",
                       "max_attempts": 1, "backoff_ms": 0});
    for (k, v) in extra.as_object().unwrap() {
        p[k] = v.clone();
    }
    p
}

/// Runs (or with `validate_only`, validates) `op` over the named JSONL inputs.
fn invoke(
    op: &str,
    params: Value,
    inputs: &[(&str, &str)],
    validate_only: bool,
    host: &Recorder,
) -> (Result<Value, InvokeError>, BTreeMap<String, PathBuf>) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let scratch = dir.path().join("scratch");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::create_dir_all(&scratch).unwrap();
    let map: BTreeMap<String, PathBuf> = inputs
        .iter()
        .map(|(name, text)| {
            let path = dir.path().join(format!("{name}.jsonl"));
            std::fs::write(&path, text).unwrap();
            (name.to_string(), path)
        })
        .collect();
    let request = Request {
        protocol: PROTOCOL_VERSION.into(),
        stage_id: "judge".into(),
        params,
        inputs: map.clone(),
        out_dir: out.clone(),
        scratch_dir: scratch,
        gpus: vec![],
        validate_only,
    };
    let plugin = plugin();
    let mut instance = plugin.create(&Value::Null).expect("create");
    let result = instance.invoke(op, &request, host);
    assert!(std::fs::read_dir(&out).unwrap().next().is_none(), "nothing is written when nothing was judged");
    (result, map)
}

fn fails(op: &str, params: Value, inputs: &[(&str, &str)]) -> InvokeError {
    match invoke(op, params, inputs, false, &Recorder::default()).0 {
        Ok(v) => panic!("{op} succeeded: {v}"),
        Err(e) => e,
    }
}

const RESPONSES: &str = "{\"id\": 1, \"instruction\": \"Say hi\", \"response\": \"hi\"}\n";

#[test]
fn the_plugin_describes_its_ops_as_its_manifest_does() {
    let plugin = plugin();
    let d = &plugin.description;
    let ops: Vec<&str> = d.ops.iter().map(|o| o.name.as_str()).collect();
    assert_eq!((d.name.as_str(), d.kind.as_str()), ("judge-openai", "judge"));
    let manifest =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../judge-openai-cdylib/rto-plugin.toml"))
            .unwrap();
    let listed = format!("ops = [{}]", ops.iter().map(|o| format!("\"{o}\"")).collect::<Vec<_>>().join(", "));
    assert!(manifest.contains(&listed), "manifest lists {listed}:\n{manifest}");
    assert!(manifest.contains(&format!("version = \"{}\"", d.version)));
    for op in &d.ops {
        let list = op.unkeyed_params.iter().map(|p| format!("\"{p}\"")).collect::<Vec<_>>().join(", ");
        let key = if op.name.contains('-') { format!("\"{}\"", op.name) } else { op.name.clone() };
        assert!(
            manifest.contains(&format!("{key} = [{list}]")),
            "manifest lists unkeyed {key} = [{list}]:\n{manifest}"
        );
    }
}

#[test]
fn validation_checks_params_and_input_names_without_touching_the_network() {
    let host = Recorder::default();
    let ok = |op: &str, names: &[&str]| {
        let inputs: Vec<(&str, &str)> = names.iter().map(|n| (*n, "")).collect();
        invoke(op, params(json!({})), &inputs, true, &host).0
    };
    assert_eq!(ok("alpaca-eval", &["a", "b"]).unwrap(), Value::Null);
    assert_eq!(ok("pairwise", &["a", "b", "prompts"]).unwrap(), Value::Null);
    assert_eq!(ok("refusal", &["responses"]).unwrap(), Value::Null);
    for (op, names, words) in [
        ("alpaca-eval", &["a"][..], "needs input `b`"),
        ("single", &["responses", "answers"][..], "has no input `answers`"),
        ("refusal", &["a", "b"][..], "needs input `responses`"),
    ] {
        let e = ok(op, names).unwrap_err();
        assert!(e.reply.message.contains(words), "{op}: {}", e.reply.message);
    }
    let inputs = [("responses", "")];
    let e = invoke("single", params(json!({"top_logprobs": 5})), &inputs, true, &host).0.unwrap_err();
    assert_eq!((e.status, e.reply.param_path.as_deref()), (STATUS_BAD_INPUT, Some(&["top_logprobs".to_string()][..])));
    let e = invoke("refusal", params(json!({"template": "{{ reply }}"})), &inputs, true, &host).0.unwrap_err();
    assert_eq!(e.reply.param_path.as_deref(), Some(&["template".to_string()][..]));
    assert!(e.reply.message.contains("`reply`") && e.reply.message.contains("`instruction`, `response`"));
}

#[test]
fn bad_rows_are_reported_with_file_and_line_before_any_request() {
    let pair = |id: &str, instruction: &str, response: &str| {
        format!("{}\n", json!({"id": id, "instruction": instruction, "response": response}))
    };
    let a = format!("{}{}", pair("x", "Q1", "a1"), pair("y", "Q2", "a2"));
    /// Op, inputs (name, JSONL), and words the error must contain.
    type Case<'a> = (&'a str, Vec<(&'a str, String)>, &'a str);
    let cases: Vec<Case> = vec![
        ("refusal", vec![("responses", "{\"id\": 1, \"prompt\": \"q\"}\n".into())], "line 1: no field `response`"),
        ("refusal", vec![("responses", format!("{RESPONSES}not json\n"))], "line 2: not JSON"),
        ("refusal", vec![("responses", format!("\n{RESPONSES}[1]\n"))], "line 3: not a JSON object"),
        ("refusal", vec![("responses", "{\"response\": \"r\"}\n".into())], "line 1: no field `id`"),
        ("refusal", vec![("responses", format!("{RESPONSES}{RESPONSES}"))], "line 2: id 1 already appears on line 1"),
        (
            "refusal",
            vec![("responses", "{\"id\": 1, \"prompt\": \"q\", \"response\": 7}\n".into())],
            "field `response` must be a string",
        ),
        (
            "single",
            vec![("responses", "{\"id\": 1, \"response\": \"r\"}\n".into())],
            "no field `instruction` or `prompt`",
        ),
        (
            "single",
            vec![("responses", RESPONSES.into()), ("prompts", "{\"id\": 2, \"instruction\": \"Q\"}\n".into())],
            "id 1 has no row in input `prompts`",
        ),
        ("pairwise", vec![("a", a.clone()), ("b", pair("x", "Q1", "b1"))], "line 2: id \"y\" has no row in input `b`"),
        ("pairwise", vec![("a", pair("x", "Q1", "a1")), ("b", a.clone())], "line 2: id \"y\" has no row in input `a`"),
        (
            "alpaca-eval",
            vec![("a", a.clone()), ("b", format!("{}{}", pair("x", "Q1", "b1"), pair("y", "Q3", "b2")))],
            "line 2: id \"y\" has a different instruction",
        ),
    ];
    for (op, inputs, words) in cases {
        let inputs: Vec<(&str, &str)> = inputs.iter().map(|(n, t)| (*n, t.as_str())).collect();
        let (result, map) = invoke(op, params(json!({})), &inputs, false, &Recorder::default());
        let e = result.unwrap_err();
        assert_eq!(e.status, STATUS_ERROR, "{op} {words}: {}", e.reply.message);
        assert!(e.reply.message.contains(words), "{op}: {}", e.reply.message);
        let named = map.values().any(|p| e.reply.message.contains(&p.display().to_string()));
        assert!(named, "the file is named: {}", e.reply.message);
        assert!(!e.reply.message.contains("127.0.0.1"), "no request was made: {}", e.reply.message);
    }
}

#[test]
fn a_missing_api_key_variable_is_named_without_a_request() {
    let e = fails(
        "refusal",
        params(json!({"api_key_env": "RTO_JUDGE_OPENAI_TEST_UNSET_KEY"})),
        &[("responses", RESPONSES)],
    );
    assert_eq!(e.status, STATUS_BAD_INPUT);
    assert_eq!(e.reply.param_path.as_deref(), Some(&["api_key_env".to_string()][..]));
    assert!(e.reply.message.contains("`RTO_JUDGE_OPENAI_TEST_UNSET_KEY`") && e.reply.message.contains("not set"));
}

#[test]
fn an_unreachable_endpoint_is_retried_then_named_and_the_key_appears_nowhere() {
    const KEY: &str = "sk-judge-openai-unit-test-3f9a";
    // SAFETY: no other test of this binary reads or writes this variable.
    unsafe { std::env::set_var("RTO_JUDGE_OPENAI_TEST_KEY", KEY) };
    let host = Recorder::default();
    let p = params(json!({"api_key_env": "RTO_JUDGE_OPENAI_TEST_KEY", "max_attempts": 3}));
    let url = format!("{}/chat/completions", p["endpoint"].as_str().unwrap());
    let e = invoke("refusal", p, &[("responses", RESPONSES)], false, &host).0.unwrap_err();
    assert_eq!(e.status, STATUS_ERROR);
    let m = &e.reply.message;
    assert!(m.contains(&format!("`POST {url}`")) && m.contains("connection refused"), "{m}");
    assert!(m.contains("gave up after 3 attempts"), "{m}");
    let logs = host.logs.borrow().join("\n");
    assert_eq!(logs.matches("retrying in").count(), 2, "{logs}");
    assert!(!m.contains(KEY) && !logs.contains(KEY));
}

#[test]
fn cancellation_stops_an_op_waiting_to_retry() {
    // Without cancellation this would wait a minute between attempts.
    let host = Recorder { cancel_after: Some(3), ..Recorder::default() };
    let p = params(json!({"max_attempts": 100, "backoff_ms": 60_000, "backoff_max_ms": 60_000}));
    let e = invoke("single", p, &[("responses", RESPONSES)], false, &host).0.unwrap_err();
    assert_eq!(e.status, STATUS_CANCELLED, "{}", e.reply.message);
}
