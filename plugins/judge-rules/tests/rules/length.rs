//! `length`: per-item counts and the order statistics of the summary.

use serde_json::json;

use crate::{check, run};

#[test]
fn characters_are_unicode_scalars_and_words_split_on_any_whitespace() {
    check(
        "length",
        json!({}),
        &[],
        "chars",
        &[("a bb ccc", json!(8)), ("héllo", json!(5)), ("", json!(0)), ("日本語", json!(3))],
    );
    check(
        "length",
        json!({"field": "text"}),
        &[],
        "words",
        &[("a bb ccc", json!(3)), ("  one\n\ttwo  ", json!(2)), ("", json!(0)), ("   ", json!(0))],
    );
}

#[test]
fn the_summary_has_mean_median_min_max_and_linear_p90() {
    let r = check(
        "length",
        json!({}),
        &[],
        "words",
        &[("a", json!(1)), ("a b c d", json!(4)), ("a b", json!(2)), ("a b c", json!(3))],
    );
    // Chars 1, 7, 3, 5 → sorted 1 3 5 7: median (3+5)/2 = 4; p90 at 3·0.9 = 2.7 → 5 + 0.7·2 = 6.4.
    // Words 1, 4, 2, 3 → sorted 1 2 3 4: median 2.5; p90 → 3 + 0.7·1 = 3.7.
    let s = &r.summary;
    assert_eq!(s["n"], 4);
    assert_eq!((s["chars"]["min"].clone(), s["chars"]["max"].clone()), (json!(1), json!(7)));
    assert_eq!(s["chars"]["mean"], 4.0);
    assert_eq!(s["chars"]["median"], 4.0);
    assert!((s["chars"]["p90"].as_f64().unwrap() - 6.4).abs() < 1e-12, "{s}");
    assert_eq!(s["words"]["mean"], 2.5);
    assert_eq!(s["words"]["median"], 2.5);
    assert!((s["words"]["p90"].as_f64().unwrap() - 3.7).abs() < 1e-12, "{s}");
}

#[test]
fn odd_counts_and_single_items_and_empty_inputs() {
    let r = check("length", json!({}), &[], "chars", &[("abc", json!(3)), ("a", json!(1)), ("abcdefghij", json!(10))]);
    assert_eq!(r.summary["chars"]["median"], 3.0, "the middle one");
    let r = check("length", json!({}), &[], "chars", &[("abcd", json!(4))]);
    assert_eq!(r.summary["chars"], json!({"min": 4, "max": 4, "mean": 4.0, "median": 4.0, "p90": 4.0}));
    let r = run("length", json!({}), &[("responses", "\n")]);
    assert_eq!(r.summary, json!({"n": 0, "protocol": "length", "chars": null, "words": null}));
}
