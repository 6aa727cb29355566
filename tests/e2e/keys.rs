//! The key contract: which action keys move when a study changes, and which must not.
//!
//! `snapshots/keys.txt` holds the keys of a small fixture study, one line per stage. A change to how keys are
//! computed shows up here as a snapshot diff, which must come with a `KEY_SCHEMA` bump (or a version bump of
//! rto, which is part of every built-in's identity). Rewrite with `RTO_SNAPSHOTS=overwrite cargo test`.

use std::collections::BTreeMap;

use crate::support::Project;

const FIXTURE: &str = r#"
[study]
name = "keys"

[vars]
eos = "</s>"

[[stage]]
id = "data-{mode}"
uses = "dataset"
foreach = { mode = ["rt", "it"] }
inputs = { src = "src.jsonl" }
params = { mode = "{mode}", eos = "{eos}", seed = 0, sources = [{ input = "src", preset = "generic" }] }

[[stage]]
id = "count-{mode}"
uses = "command"
foreach = { mode = ["rt", "it"] }
inputs = { train = "data-{mode}.train.jsonl" }
params = { cmd = "wc -l < \"$RTO_INPUT_TRAIN\" > n.txt", outputs = ["n.txt"], env = { LR = "1e-4" } }
"#;

const SRC: &str = "{\"prompt\": \"a\", \"response\": \"b\"}\n";

/// Runs the study and returns stage id → key after the run (all stages are then cached).
fn keys(p: &Project, extra: &[&str]) -> BTreeMap<String, String> {
    let mut args = extra.to_vec();
    args.extend(["--format", "json", "run", "study.toml"]);
    let out = p.rto(&args).expect_code(0);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    v["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["id"].as_str().unwrap().to_string(), s["key"].as_str().unwrap_or("-").to_string()))
        .collect()
}

fn render(keys: &BTreeMap<String, String>) -> String {
    keys.iter().map(|(id, key)| format!("{id} {key}\n")).collect()
}

#[test]
fn keys_of_the_fixture_match_the_snapshot() {
    let p = Project::new(FIXTURE, &[("src.jsonl", SRC)]);
    let got = render(&keys(&p, &[]));
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/e2e/snapshots/keys.txt");
    if std::env::var("RTO_SNAPSHOTS").as_deref() == Ok("overwrite") {
        std::fs::write(&path, &got).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(got, want, "action keys changed: bump KEY_SCHEMA, then `RTO_SNAPSHOTS=overwrite cargo test`");
}

#[test]
fn changing_one_param_moves_exactly_that_stage_and_its_dependants() {
    let p = Project::new(FIXTURE, &[("src.jsonl", SRC)]);
    let before = keys(&p, &[]);
    p.edit_study("seed = 0", "seed = 1");
    let after = keys(&p, &[]);
    let moved: Vec<&String> = before.keys().filter(|id| before[*id] != after[*id]).collect();
    // The seed changes both dataset stages (one table); a single-row dataset shuffles identically, so the
    // counts are cut off and keep their keys.
    assert_eq!(moved, ["data-it", "data-rt"]);

    p.edit_study("LR = \"1e-4\"", "LR = \"2e-4\"");
    let env = keys(&p, &[]);
    let moved: Vec<&String> = after.keys().filter(|id| after[*id] != env[*id]).collect();
    assert_eq!(moved, ["count-it", "count-rt"]);

    p.write("src.jsonl", &format!("{SRC}{{\"prompt\": \"c\", \"response\": \"d\"}}\n"));
    let input = keys(&p, &[]);
    let moved: Vec<&String> = env.keys().filter(|id| env[*id] != input[*id]).collect();
    assert_eq!(
        moved,
        ["count-it", "count-rt", "data-it", "data-rt"],
        "an input edit moves its readers and, through new outputs, theirs"
    );
}

#[test]
fn irrelevant_changes_move_nothing() {
    let p = Project::new(FIXTURE, &[("src.jsonl", SRC)]);
    let base = keys(&p, &[]);
    // Comments, the order of keys and tables, and an integral float for an integer.
    let text = r#"
# keys fixture, rearranged
[vars]
eos = "</s>"   # the paper's Mistral eos

[study]
name = "keys"

[[stage]]
uses = "dataset"
id = "data-{mode}"
foreach = { mode = ["rt", "it"] }
inputs = { src = "src.jsonl" }
params = { sources = [{ preset = "generic", input = "src" }], seed = 0.0, eos = "{eos}", mode = "{mode}" }

[[stage]]
id = "count-{mode}"
uses = "command"
foreach = { mode = ["rt", "it"] }
inputs = { train = "data-{mode}.train.jsonl" }
[stage.params]
env = { LR = "1e-4" }
outputs = ["n.txt"]
cmd = "wc -l < \"$RTO_INPUT_TRAIN\" > n.txt"
"#;
    p.write("study.toml", text);
    assert_eq!(keys(&p, &[]), base, "{text}");
    let elsewhere = tempfile::tempdir().unwrap();
    assert_eq!(keys(&p, &["--cache", elsewhere.path().to_str().unwrap()]), base);
}
