//! `validate`: every bad param is refused before anything runs, pointing at the param.

use api::ffi::{STATUS_BAD_INPUT, STATUS_ERROR, STATUS_UNSUPPORTED_OP};
use serde_json::{Value, json};

use crate::{Recorder, plugin, request, write_inputs};

/// Validates `op` with `params` and inputs named `inputs`; `Ok` or the status, param path and message.
fn validate(op: &str, params: Value, inputs: &[&str]) -> Result<(), (i32, Option<Vec<String>>, String)> {
    let files: Vec<(&str, &str)> = inputs.iter().map(|n| (*n, "")).collect();
    let (dir, map) = write_inputs(&files);
    let plugin = plugin();
    let mut instance = plugin.create(&json!({})).unwrap();
    let result = instance.invoke(op, &request(dir.path(), params, map, true), &Recorder::default());
    assert!(std::fs::read_dir(dir.path().join("out")).unwrap().next().is_none(), "validation writes nothing");
    match result {
        Ok(v) => {
            assert_eq!(v, Value::Null);
            Ok(())
        }
        Err(e) => Err((e.status, e.reply.param_path, e.reply.message)),
    }
}

#[test]
fn good_params_pass() {
    let r = &["responses"][..];
    assert_eq!(validate("refusal", json!({}), r), Ok(()));
    assert_eq!(validate("refusal", Value::Null, r), Ok(()));
    let all = json!({"mode": "prefix", "prefixes": ["x"], "phrases": [], "field": "f", "fold_quotes": false});
    assert_eq!(validate("refusal", all, r), Ok(()));
    assert_eq!(
        validate("exact-match", json!({"normalise": false, "field": "a"}), &["references", "responses"]),
        Ok(())
    );
    assert_eq!(validate("length", json!({"field": "text"}), r), Ok(()));
    let all = json!({"bootstrap": 0, "field": "f", "group_by": false, "match": "prefix", "normalise": false,
        "reference_field": "response", "seed": 9});
    assert_eq!(validate("pairwise-correctness", all, &["a", "b", "references"]), Ok(()));
    assert_eq!(validate("pairwise-correctness", json!({"group_by": "task"}), &["a", "b", "references"]), Ok(()));
}

#[test]
fn bad_params_point_at_the_param_and_say_what_is_valid() {
    let cases: &[(&str, Value, &[&str], &str)] = &[
        ("refusal", json!({"phrase": ["x"]}), &["phrase"], "valid params: field, fold_quotes, mode, phrases, prefixes"),
        ("refusal", json!({"mode": "middle"}), &["mode"], "\"prefix\", \"anywhere\", \"both\""),
        ("refusal", json!({"mode": 1}), &["mode"], "must be a string, not a number"),
        ("refusal", json!({"phrases": "sorry"}), &["phrases"], "list of strings, not a string"),
        ("refusal", json!({"phrases": ["ok", 3]}), &["phrases", "1"], "`phrases[1]` must be a string"),
        ("refusal", json!({"prefixes": ["  "]}), &["prefixes", "0"], "blank"),
        ("refusal", json!({"mode": "prefix", "prefixes": []}), &["prefixes"], "could ever be a refusal"),
        ("refusal", json!({"mode": "anywhere", "phrases": []}), &["phrases"], "could ever be a refusal"),
        ("refusal", json!({"prefixes": [], "phrases": []}), &["prefixes"], "could ever be a refusal"),
        ("refusal", json!({"fold_quotes": "yes"}), &["fold_quotes"], "true or false"),
        ("refusal", json!({"field": ""}), &["field"], "empty"),
        ("refusal", json!([1]), &[], "must be a table"),
        ("exact-match", json!({"normalise": "yes"}), &["normalise"], "true or false, not a string"),
        ("exact-match", json!({"mode": "prefix"}), &["mode"], "valid params: field, normalise"),
        ("length", json!({"field": 3}), &["field"], "must be a string"),
        ("length", json!({"normalise": true}), &["normalise"], "valid params: field"),
        (
            "pairwise-correctness",
            json!({"samples": 1, "zeta": 2}),
            &["samples"],
            "valid params: bootstrap, field, group_by, match, normalise, reference_field, seed",
        ),
        ("pairwise-correctness", json!({"match": "fuzzy"}), &["match"], "\"exact\", \"prefix\""),
        ("pairwise-correctness", json!({"bootstrap": -1}), &["bootstrap"], "non-negative integer, not -1"),
        ("pairwise-correctness", json!({"bootstrap": 2.5}), &["bootstrap"], "non-negative integer, not 2.5"),
        ("pairwise-correctness", json!({"bootstrap": 2_000_000}), &["bootstrap"], "at most 1000000"),
        ("pairwise-correctness", json!({"seed": "0"}), &["seed"], "non-negative integer, not a string"),
        ("pairwise-correctness", json!({"group_by": true}), &["group_by"], "or be false for no breakdown, not true"),
        ("pairwise-correctness", json!({"group_by": ""}), &["group_by"], "not an empty string"),
        ("pairwise-correctness", json!({"reference_field": ""}), &["reference_field"], "empty"),
        ("pairwise-correctness", json!({"normalise": 1}), &["normalise"], "true or false"),
        ("pairwise-correctness", json!({"field": ""}), &["field"], "empty"),
    ];
    for (op, params, path, needle) in cases {
        let inputs: &[&str] = match *op {
            "exact-match" => &["references", "responses"],
            "pairwise-correctness" => &["a", "b", "references"],
            _ => &["responses"],
        };
        let (status, got_path, msg) = validate(op, params.clone(), inputs).expect_err(&format!("{op} {params}"));
        assert_eq!(status, STATUS_BAD_INPUT, "{op} {params}: {msg}");
        assert_eq!(got_path, Some(path.iter().map(|s| s.to_string()).collect()), "{op} {params}: {msg}");
        assert!(msg.contains(needle), "{op} {params}: `{msg}` should contain `{needle}`");
    }
}

#[test]
fn missing_and_unknown_inputs_are_named() {
    let (status, _, msg) = validate("exact-match", json!({}), &["responses"]).unwrap_err();
    assert_eq!(status, STATUS_ERROR);
    assert!(msg.contains("needs input `references`") && msg.contains("gives `responses`"), "{msg}");
    let (_, _, msg) = validate("length", json!({}), &[]).unwrap_err();
    assert!(msg.contains("needs input `responses`") && msg.contains("gives none"), "{msg}");
    let (_, _, msg) = validate("refusal", json!({}), &["responses", "respones"]).unwrap_err();
    assert!(msg.contains("no input `respones`"), "{msg}");
    let (_, _, msg) = validate("pairwise-correctness", json!({}), &["a", "references"]).unwrap_err();
    assert!(msg.contains("needs input `b`") && msg.contains("`a`, `b`, `references`"), "{msg}");
}

#[test]
fn unknown_ops_and_configs_are_refused() {
    let (status, _, msg) = validate("judge", json!({}), &["responses"]).unwrap_err();
    assert_eq!(status, STATUS_UNSUPPORTED_OP, "{msg}");
    let plugin = plugin();
    let e = plugin.create(&json!({"model": "gpt"})).err().expect("config refused");
    assert!(e.reply.message.contains("takes no plugin config"), "{}", e.reply.message);
    assert!(plugin.create(&Value::Null).is_ok());
}
