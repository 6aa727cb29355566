//! `exact-match`: normalisation, the join by id, and its errors.

use serde_json::json;

use crate::{assert_close, check, fail, run};

/// References for `check`'s ids `r0`…: one row per expected answer.
fn references(answers: &[serde_json::Value]) -> String {
    answers.iter().enumerate().map(|(i, a)| format!("{}\n", json!({"id": format!("r{i}"), "reference": a}))).collect()
}

#[test]
fn normalisation_ignores_case_spacing_and_final_punctuation_only() {
    let refs = references(&[
        json!("Paris"),
        json!("Paris"),
        json!("paris"),
        json!("New York"),
        json!("new york"),
        json!("Paris"),
        json!("42"),
        json!(["4", "four"]),
        json!("yes"),
    ]);
    let run = check(
        "exact-match",
        json!({}),
        &[("references", &refs)],
        "verdict",
        &[
            ("Paris.", json!("correct")),
            ("  PARIS  ", json!("correct")),
            ("Paris, France", json!("incorrect")),
            ("New \t  York!!", json!("correct")),
            ("new\nyork ?", json!("correct")),
            ("Paris is the answer", json!("incorrect")),
            ("42.0", json!("incorrect")),
            ("Four!", json!("correct")),
            ("yes,", json!("incorrect")),
        ],
    );
    assert_eq!((&run.summary["n"], &run.summary["correct"]), (&json!(9), &json!(5)));
    assert!((run.summary["accuracy"].as_f64().unwrap() - 5.0 / 9.0).abs() < 1e-15);
    assert_close(&run.summary["wilson_95"], judge_rules::wilson_95(5, 9).unwrap());
}

#[test]
fn without_normalisation_the_strings_must_be_identical() {
    let refs = references(&[json!("Paris"), json!("Paris"), json!("Paris")]);
    check(
        "exact-match",
        json!({"normalise": false, "field": "answer"}),
        &[("references", &refs)],
        "verdict",
        &[("Paris", json!("correct")), ("paris", json!("incorrect")), ("Paris.", json!("incorrect"))],
    );
}

#[test]
fn the_join_is_by_id_not_by_line() {
    let responses = "{\"id\":\"b\",\"response\":\"2\"}\n{\"id\":\"a\",\"response\":\"1\"}\n";
    let refs = "{\"id\":\"a\",\"reference\":\"1\"}\n{\"id\":\"b\",\"reference\":\"3\"}\n";
    let r = run("exact-match", json!({}), &[("responses", responses), ("references", refs)]);
    assert_eq!(
        r.items_text, "{\"id\":\"b\",\"verdict\":\"incorrect\"}\n{\"id\":\"a\",\"verdict\":\"correct\"}\n",
        "in response order"
    );
}

#[test]
fn a_missing_id_on_either_side_is_an_error_naming_the_id_and_the_file() {
    let responses = "{\"id\":\"a\",\"response\":\"1\"}\n{\"id\":\"b\",\"response\":\"2\"}\n";
    let e = fail(
        "exact-match",
        json!({}),
        &[("responses", responses), ("references", "{\"id\":\"a\",\"reference\":\"1\"}\n")],
    );
    let msg = &e.reply.message;
    assert!(msg.contains("\"b\"") && msg.contains("line 2") && msg.contains("references.jsonl"), "{msg}");

    let refs = "{\"id\":\"a\",\"reference\":\"1\"}\n{\"id\":\"c\",\"reference\":\"3\"}\n";
    let e =
        fail("exact-match", json!({}), &[("responses", "{\"id\":\"a\",\"response\":\"1\"}\n"), ("references", refs)]);
    let msg = &e.reply.message;
    assert!(msg.contains("\"c\"") && msg.contains("input `references`") && msg.contains("responses.jsonl"), "{msg}");

    // `1` and `"1"` are different ids.
    let e = fail(
        "exact-match",
        json!({}),
        &[("responses", "{\"id\":1,\"response\":\"1\"}\n"), ("references", "{\"id\":\"1\",\"reference\":\"1\"}\n")],
    );
    assert!(e.reply.message.contains("has no response"), "{}", e.reply.message);
}

#[test]
fn a_bad_reference_names_its_line() {
    for (row, needle) in [
        ("{\"id\":\"a\"}", "no field `reference`"),
        ("{\"id\":\"a\",\"reference\":1}", "string or a list of strings"),
        ("{\"id\":\"a\",\"reference\":[]}", "string or a list of strings"),
        ("{\"id\":\"a\",\"reference\":[\"x\",2]}", "string or a list of strings"),
    ] {
        let e = fail(
            "exact-match",
            json!({}),
            &[("responses", "{\"id\":\"a\",\"response\":\"x\"}\n"), ("references", row)],
        );
        let msg = &e.reply.message;
        assert!(msg.contains("references.jsonl") && msg.contains("line 1") && msg.contains(needle), "{row}: {msg}");
    }
}

#[test]
fn normalise_is_public_and_documented_by_examples() {
    assert_eq!(judge_rules::normalise("  Hello,   World?!. "), "hello, world");
    assert_eq!(judge_rules::normalise("?!"), "");
    assert_eq!(judge_rules::normalise("ÉCOLE"), "école");
}
