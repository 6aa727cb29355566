//! `pairwise-correctness`: verdicts, the hand-computed win rate and its standard error, the seeded paired
//! bootstrap (checked against an independent Python implementation), grouping and the join's errors.

use serde_json::{Value, json};

use crate::{assert_close, fail, run};

fn jsonl(rows: &[Value]) -> String {
    rows.iter().map(|r| format!("{r}\n")).collect()
}

/// Six items: verdicts a, tie (both right), b, a, tie (both wrong), a; families x x x y y y.
fn example() -> (String, String, String) {
    let refs = jsonl(&[
        json!({"id": 1, "reference": "Paris", "family": "x"}),
        json!({"id": 2, "reference": "4", "family": "x"}),
        json!({"id": 3, "reference": "blue", "family": "x"}),
        json!({"id": 4, "reference": "Tokyo", "family": "y"}),
        json!({"id": 5, "reference": "x", "family": "y"}),
        json!({"id": 6, "reference": ["yes", "true"], "family": "y"}),
        // Not sampled (a `sample` stage with a `limit`): references may hold more ids than the responses.
        json!({"id": 7, "reference": "unused", "family": "z"}),
    ]);
    let a = jsonl(&[
        json!({"id": 1, "response": "paris."}),
        json!({"id": 2, "response": "4"}),
        json!({"id": 3, "response": "red"}),
        json!({"id": 4, "response": "Tokyo!"}),
        json!({"id": 5, "response": "y"}),
        json!({"id": 6, "response": "True"}),
    ]);
    // `b` in another order: the join is by id and items follow `a`.
    let b = jsonl(&[
        json!({"id": 6, "response": "no"}),
        json!({"id": 5, "response": "z"}),
        json!({"id": 4, "response": "Kyoto"}),
        json!({"id": 3, "response": "Blue"}),
        json!({"id": 2, "response": " 4 "}),
        json!({"id": 1, "response": "London"}),
    ]);
    (a, b, refs)
}

/// `text`'s rows, each passed through `f` (return `None` to drop the row).
fn edit(text: &str, f: impl Fn(&mut serde_json::Map<String, Value>) -> bool) -> String {
    let rows: Vec<Value> = text
        .lines()
        .filter_map(|l| {
            let Value::Object(mut m) = serde_json::from_str(l).unwrap() else { unreachable!() };
            f(&mut m).then_some(Value::Object(m))
        })
        .collect();
    jsonl(&rows)
}

fn get(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("`{key}` in {v}"))
}

#[test]
fn verdicts_win_rate_and_standard_error_by_hand() {
    let (a, b, refs) = example();
    let r = run("pairwise-correctness", json!({}), &[("a", &a), ("b", &b), ("references", &refs)]);
    let verdicts: Vec<&str> = r.items.iter().map(|i| i["verdict"].as_str().unwrap()).collect();
    assert_eq!(verdicts, ["a", "tie", "b", "a", "tie", "a"]);
    assert_eq!(
        r.items_text.lines().next().unwrap(),
        "{\"correct_a\":true,\"correct_b\":false,\"group\":\"x\",\"id\":1,\"verdict\":\"a\"}",
        "sorted keys, id as written"
    );
    let s = &r.summary;
    assert_eq!(
        (s["n"].clone(), s["wins_a"].clone(), s["wins_b"].clone(), s["ties"].clone()),
        (json!(6), json!(3), json!(1), json!(2))
    );
    // Scores of a: 1, ½, 0, 1, ½, 1 → mean 4/6 = 2/3.
    assert!((get(s, "win_rate_a") - 2.0 / 3.0).abs() < 1e-15, "{s}");
    // Deviations ⅓, −⅙, −⅔, ⅓, −⅙, ⅓; squares sum to (4+1+16+4+1+4)/36 = 5/6; variance (n−1) = 1/6;
    // SE = √(1/6 / 6) = 1/6.
    assert!((get(s, "win_rate_a_se") - 1.0 / 6.0).abs() < 1e-15, "{s}");
    assert_eq!((s["correct_a"].clone(), s["correct_b"].clone()), (json!(4), json!(2)));
    assert!((get(s, "accuracy_a") - 4.0 / 6.0).abs() < 1e-15 && (get(s, "accuracy_b") - 2.0 / 6.0).abs() < 1e-15);
    assert_close(&s["wilson_95_a"], judge_rules::wilson_95(4, 6).unwrap());
    assert_close(&s["wilson_95_b"], judge_rules::wilson_95(2, 6).unwrap());
    // The win rate is ½ + (accuracy_a − accuracy_b) / 2, by construction.
    assert!((get(s, "win_rate_a") - (0.5 + (4.0 / 6.0 - 2.0 / 6.0) / 2.0)).abs() < 1e-15);
    // Python, an independent splitmix64 + Lemire + numpy-linear percentile, B = 2000, seed 0:
    // (0.3333333333333333, 0.9166666666666666).
    assert_close(&s["win_rate_a_ci_95"], (1.0 / 3.0, 11.0 / 12.0));
    for (key, want) in
        [("bootstrap", json!(2000)), ("seed", json!(0)), ("match", json!("exact")), ("normalise", json!(true))]
    {
        assert_eq!(s[key], want, "{key} echoed");
    }
    let keys: Vec<&String> = s.as_object().unwrap().keys().collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
}

#[test]
fn groups_are_by_family_by_default_with_the_same_statistics() {
    let (a, b, refs) = example();
    let r = run("pairwise-correctness", json!({"bootstrap": 0}), &[("a", &a), ("b", &b), ("references", &refs)]);
    let s = &r.summary;
    assert_eq!(s["group_by"], "family");
    let groups = s["groups"].as_object().unwrap();
    assert_eq!(groups.keys().collect::<Vec<_>>(), ["x", "y"], "only groups with items");
    let (x, y) = (&groups["x"], &groups["y"]);
    // x: a, tie, b → ½; deviations ½, 0, −½ → variance ¼ → SE = √(¼/3).
    assert_eq!(
        (x["n"].clone(), x["wins_a"].clone(), x["wins_b"].clone(), x["ties"].clone()),
        (json!(3), json!(1), json!(1), json!(1))
    );
    assert_eq!(get(x, "win_rate_a"), 0.5);
    assert!((get(x, "win_rate_a_se") - (0.25f64 / 3.0).sqrt()).abs() < 1e-15);
    // y: a, tie, a → 5/6; deviations ⅙, −⅓, ⅙ → variance 1/12 → SE = √(1/36) = 1/6.
    assert!((get(y, "win_rate_a") - 5.0 / 6.0).abs() < 1e-15);
    assert!((get(y, "win_rate_a_se") - 1.0 / 6.0).abs() < 1e-15);
    assert_close(&y["wilson_95_a"], judge_rules::wilson_95(2, 3).unwrap());
    assert_eq!(y["win_rate_a_ci_95"], Value::Null, "bootstrap = 0 turns the interval off");
    assert_eq!(s["win_rate_a_ci_95"], Value::Null);

    // Off, and absent: no breakdown and no `group` in the items.
    let r = run(
        "pairwise-correctness",
        json!({"group_by": false, "bootstrap": 0}),
        &[("a", &a), ("b", &b), ("references", &refs)],
    );
    assert_eq!((r.summary["group_by"].clone(), r.summary["groups"].clone()), (Value::Null, Value::Null));
    assert!(!r.items_text.contains("group"), "{}", r.items_text);
    let plain = edit(&refs, |m| m.remove("family").is_some());
    let r = run("pairwise-correctness", json!({}), &[("a", &a), ("b", &b), ("references", &plain)]);
    assert_eq!(r.summary["groups"], Value::Null, "{plain}");

    // A named field, found in the responses when the references lack it; integers become their text.
    let a2 = edit(&a, |m| {
        if m["id"].as_u64() < Some(3) {
            m.insert("topic".into(), json!(7));
        }
        true
    });
    let e = fail("pairwise-correctness", json!({"group_by": "topic"}), &[("a", &a2), ("b", &b), ("references", &refs)]);
    assert!(
        e.reply.message.contains("id 3 has no field `topic`") && e.reply.message.contains("group_by = false"),
        "{}",
        e.reply.message
    );
    let all = edit(&a, |m| m.insert("topic".into(), json!(7)).is_none());
    let r = run("pairwise-correctness", json!({"group_by": "topic"}), &[("a", &all), ("b", &b), ("references", &refs)]);
    assert_eq!(r.summary["groups"].as_object().unwrap().keys().collect::<Vec<_>>(), ["7"]);
    assert_eq!(r.items[0]["group"], "7");

    // With the default, a `family` on some rows but not others is an error, not a partial breakdown.
    let some = edit(&refs, |m| {
        if m["family"] == "y" {
            m.remove("family");
        }
        true
    });
    let e = fail("pairwise-correctness", json!({}), &[("a", &a), ("b", &b), ("references", &some)]);
    assert!(e.reply.message.contains("id 4 has no field `family`") && e.reply.message.contains("references.jsonl"));
}

#[test]
fn the_bootstrap_is_deterministic_per_seed_and_matches_python() {
    let (a, b, refs) = example();
    let inputs = [("a", a.as_str()), ("b", b.as_str()), ("references", refs.as_str())];
    let go = |seed: u64| run("pairwise-correctness", json!({"bootstrap": 10, "seed": seed}), &inputs);
    let (first, again) = (go(0), go(0));
    assert_eq!(first.summary, again.summary);
    assert_eq!(first.items_text, again.items_text);
    assert_eq!(
        serde_json::to_string(&first.summary_file).unwrap(),
        serde_json::to_string(&again.summary_file).unwrap()
    );
    // The same Python implementation as above, B = 10: seeds 0, 1 and 2 give different intervals.
    let cases = [
        (0, (0.51875, 0.8333333333333334)),
        (1, (0.5, 0.8333333333333334)),
        (2, (0.37083333333333335, 0.8145833333333334)),
    ];
    for (seed, want) in cases {
        let r = go(seed);
        let got = &r.summary["win_rate_a_ci_95"];
        let (lo, hi) = (got[0].as_f64().unwrap(), got[1].as_f64().unwrap());
        assert!((lo - want.0).abs() < 1e-12 && (hi - want.1).abs() < 1e-12, "seed {seed}: {got} vs {want:?}");
        assert_eq!(r.summary["seed"], seed);
    }
    // Every item a tie: every replicate is ½.
    let same = a.clone();
    let r = run("pairwise-correctness", json!({}), &[("a", &a), ("b", &same), ("references", &refs)]);
    assert_eq!(r.summary["win_rate_a_ci_95"], json!([0.5, 0.5]));
    assert_eq!(r.summary["win_rate_a_se"], 0.0);
}

#[test]
fn splitmix64_is_the_reference_generator() {
    // Vigna's splitmix64.c from state 0 (the same values as Python's transcription in the test above).
    let mut g = judge_rules::stats::SplitMix64::new(0);
    assert_eq!(
        [g.next_u64(), g.next_u64(), g.next_u64()],
        [0xE220_A839_7B1D_CDAF, 0x6E78_9E6A_A1B9_65F4, 0x06C4_5D18_8009_454F]
    );
    let mut g = judge_rules::stats::SplitMix64::new(42);
    assert!((0..1000).all(|_| g.below(6) < 6));
    assert_eq!(judge_rules::stats::standard_error(&[1.0]), None);
    assert_eq!(judge_rules::stats::percentile_interval(&[], 0.95), None);
}

#[test]
fn prefix_match_needs_a_word_boundary_and_reference_field_is_configurable() {
    // eval.jsonl-style references: the answer is in `response`.
    let refs = jsonl(&[
        json!({"id": "p", "response": "Paris"}),
        json!({"id": "q", "response": "4"}),
        json!({"id": "r", "response": "Paris"}),
        json!({"id": "s", "response": "Blue."}),
    ]);
    let a = jsonl(&[
        json!({"id": "p", "response": "Paris is the capital of France."}),
        json!({"id": "q", "response": "42"}),
        json!({"id": "r", "response": "Parisian"}),
        json!({"id": "s", "response": "blue, mostly"}),
    ]);
    let b = jsonl(&[
        json!({"id": "p", "response": "Paris"}),
        json!({"id": "q", "response": "4."}),
        json!({"id": "r", "response": "paris"}),
        json!({"id": "s", "response": "Blue"}),
    ]);
    let inputs = [("a", a.as_str()), ("b", b.as_str()), ("references", refs.as_str())];
    let r = run("pairwise-correctness", json!({"match": "prefix", "reference_field": "response"}), &inputs);
    let correct: Vec<bool> = r.items.iter().map(|i| i["correct_a"].as_bool().unwrap()).collect();
    assert_eq!(correct, [true, false, false, true]);
    assert_eq!(r.summary["match"], "prefix");
    let r = run("pairwise-correctness", json!({"reference_field": "response"}), &inputs);
    let correct: Vec<bool> = r.items.iter().map(|i| i["correct_a"].as_bool().unwrap()).collect();
    assert_eq!(correct, [false, false, false, false], "exact by default");
    assert_eq!(r.summary["wins_b"], 4);
    assert_eq!(r.summary["win_rate_a"], 0.0);
    // Without normalisation case and punctuation count.
    let r = run("pairwise-correctness", json!({"reference_field": "response", "normalise": false}), &inputs);
    let correct: Vec<bool> = r.items.iter().map(|i| i["correct_b"].as_bool().unwrap()).collect();
    assert_eq!(correct, [true, false, false, false]);
    // The default field is `reference`, which these rows lack.
    let e = fail("pairwise-correctness", json!({}), &inputs);
    assert!(e.reply.message.contains("no field `reference`") && e.reply.message.contains("references.jsonl"));
    // An empty reference would be a prefix of everything.
    let e = fail(
        "pairwise-correctness",
        json!({"match": "prefix"}),
        &[
            ("a", "{\"id\":1,\"response\":\"x\"}\n"),
            ("b", "{\"id\":1,\"response\":\"y\"}\n"),
            ("references", "{\"id\":1,\"reference\":\"?\"}\n"),
        ],
    );
    assert!(e.reply.message.contains("empty after normalisation"), "{}", e.reply.message);
}

#[test]
fn join_errors_name_the_id_and_the_file() {
    let (a, b, refs) = example();
    let without = |text: &str, id: u64| edit(text, |m| m["id"] != id);
    let e = fail("pairwise-correctness", json!({}), &[("a", &a), ("b", &without(&b, 3)), ("references", &refs)]);
    let msg = &e.reply.message;
    assert!(
        msg.contains("id 3 has no response in input `b`")
            && msg.contains("b.jsonl")
            && msg.contains("a.jsonl")
            && msg.contains("line 3"),
        "{msg}"
    );
    let e = fail("pairwise-correctness", json!({}), &[("a", &without(&a, 5)), ("b", &b), ("references", &refs)]);
    let msg = &e.reply.message;
    assert!(
        msg.contains("id 5 has no response in input `a`") && msg.contains("a.jsonl") && msg.contains("input `b`"),
        "{msg}"
    );
    let e = fail("pairwise-correctness", json!({}), &[("a", &a), ("b", &b), ("references", &without(&refs, 6))]);
    let msg = &e.reply.message;
    assert!(msg.contains("id 6 has no reference in input `references`") && msg.contains("references.jsonl"), "{msg}");
    // `1` and `"1"` are different ids.
    let e = fail(
        "pairwise-correctness",
        json!({}),
        &[
            ("a", "{\"id\":1,\"response\":\"x\"}\n"),
            ("b", "{\"id\":\"1\",\"response\":\"y\"}\n"),
            ("references", "{\"id\":1,\"reference\":\"x\"}\n"),
        ],
    );
    assert!(e.reply.message.contains("id \"1\" has no response in input `a`"), "{}", e.reply.message);
}

#[test]
fn empty_inputs_have_no_rates() {
    let r = run("pairwise-correctness", json!({}), &[("a", ""), ("b", ""), ("references", "")]);
    let s = &r.summary;
    assert_eq!(s["n"], 0);
    for key in ["win_rate_a", "win_rate_a_se", "win_rate_a_ci_95", "accuracy_a", "wilson_95_b", "groups"] {
        assert_eq!(s[key], Value::Null, "{key}");
    }
}
