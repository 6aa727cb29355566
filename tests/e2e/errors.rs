//! Bad input: each gives a clear message with its location and a non-zero exit, and leaves the cache as it was.

use crate::support::Project;

/// Runs a good study first (so the cache has content), then `bad`; checks the exit code, that stderr names
/// `location` (`study.toml:LINE:COL`) and contains `message`, and that the cache did not change.
fn check(bad: &str, location: &str, message: &str) {
    let p = Project::chain();
    p.run(&[]);
    let before = p.cache_listing();
    p.write("study.toml", bad);
    let out = p.rto(&["run", "study.toml"]);
    assert_eq!(out.code, 2, "exit code for {message:?}\nstderr:\n{}", out.stderr);
    assert!(out.stderr.contains(&format!("study.toml:{location}")), "location {location} in:\n{}", out.stderr);
    assert!(out.stderr.contains(message), "{message:?} in:\n{}", out.stderr);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    assert_eq!(p.cache_listing(), before, "the cache must be untouched by {message:?}");
    // `plan` reports the same error.
    let plan = p.rto(&["plan", "study.toml"]);
    assert_eq!(plan.code, 2);
    assert!(plan.stderr.contains(message), "{}", plan.stderr);
}

const STAGE: &str = "[[stage]]\nid = \"a\"\nuses = \"command\"\n";

#[test]
fn malformed_toml() {
    check("[[stage]\nid = 1\n", "1:9", "invalid study: unclosed array table");
}

#[test]
fn unknown_field() {
    check(&format!("{STAGE}inptus = {{}}\n"), "4:1", "unknown field `inptus`");
}

#[test]
fn missing_field() {
    check("[[stage]]\nid = \"a\"\n", "1:1", "missing field `uses`");
}

#[test]
fn missing_reference() {
    check(
        &format!("{STAGE}inputs = {{ x = \"b.out\" }}\nparams = {{ cmd = \"true\" }}\n"),
        "4:16",
        "input `b.out` is neither a stage of this study nor an existing file",
    );
}

#[test]
fn missing_reference_suggests_a_close_stage() {
    let study = format!(
        "{STAGE}params = {{ cmd = \"true\" }}\n[[stage]]\nid = \"train\"\nuses = \"command\"\ninputs = {{ x = \"aa\" }}\nparams = {{ cmd = \"true\" }}\n"
    );
    check(&study, "8:16", "did you mean stage `a`?");
}

#[test]
fn cycle_is_named() {
    let study = r#"
[[stage]]
id = "x"
uses = "command"
inputs = { i = "z" }
params = { cmd = "true" }
[[stage]]
id = "y"
uses = "command"
inputs = { i = "x" }
params = { cmd = "true" }
[[stage]]
id = "z"
uses = "command"
inputs = { i = "y" }
params = { cmd = "true" }
"#;
    check(study, "10:16", "the stages form a cycle: x → y → z → x");
}

#[test]
fn duplicate_id_after_expansion() {
    let study = format!("{STAGE}foreach = {{ m = [\"rt\", \"it\"] }}\nparams = {{ cmd = \"echo {{m}}\" }}\n");
    check(&study, "2:6", "duplicate stage id `a`");
}

#[test]
fn missing_variable() {
    check(
        &format!("{STAGE}params = {{ cmd = \"echo {{nope}}\" }}\n"),
        "4:18",
        "unknown variable `nope` (no variables are defined here)",
    );
}

#[test]
fn unknown_builtin() {
    check("[[stage]]\nid = \"a\"\nuses = \"comand\"\n", "3:8", "unknown built-in `comand`");
}

#[test]
fn missing_plugin() {
    check("[[stage]]\nid = \"a\"\nuses = \"no-such-plugin:train\"\n", "3:8", "plugin `no-such-plugin` not found");
}

#[test]
fn bad_param_is_located_in_the_params_table() {
    check(
        &format!("{STAGE}params = {{ cmd = \"true\", outputs = [\"ok\", \"../up\"] }}\n"),
        "4:43",
        "`params.outputs.1`",
    );
}

#[test]
fn bad_dataset_param() {
    let study = "[[stage]]\nid = \"d\"\nuses = \"dataset\"\ninputs = { x = \"seed.txt\" }\n[stage.params]\nmode = \"sft\"\nsources = [{ input = \"x\", preset = \"alpaca\" }]\n";
    check(study, "6:8", "`params.mode`");
}

#[test]
fn not_a_number() {
    check(&format!("{STAGE}params = {{ cmd = \"true\", x = nan }}\n"), "4:30", "NaN and infinite numbers");
}

#[test]
fn bad_resources() {
    check(
        &format!("{STAGE}params = {{ cmd = \"true\" }}\nresources = {{ gpus = -1 }}\n"),
        "5:22",
        "`gpus` must be between 0",
    );
}

#[test]
fn bad_stage_id() {
    check("[[stage]]\nid = \"a b\"\nuses = \"command\"\n", "2:6", "stage id `a b`");
}

#[test]
fn empty_matrix() {
    check(&format!("{STAGE}foreach = {{ m = [] }}\n"), "4:17", "`foreach.m` is an empty list");
}

#[test]
fn a_bad_dataset_row_fails_its_stage_with_file_and_line_and_stores_nothing() {
    let p = Project::chain();
    p.run(&[]);
    let study = r#"
[[stage]]
id = "d"
uses = "dataset"
inputs = { x = "data.jsonl" }
params = { mode = "rt", sources = [{ input = "x", preset = "alpaca" }] }
"#;
    p.write("study.toml", study);
    p.write(
        "data.jsonl",
        "{\"instruction\": \"a\", \"input\": \"\", \"output\": \"b\"}\n{\"instruction\": \"c\", \"outptu\": \"d\"}\n",
    );
    let objects = crate::support::listing(&p.path(".rto/objects"));
    let actions = crate::support::listing(&p.path(".rto/actions"));
    let out = p.rto(&["run", "study.toml"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("data.jsonl` line 2"), "{}", out.stderr);
    assert!(out.stderr.contains("`output`"), "{}", out.stderr);
    assert_eq!(crate::support::listing(&p.path(".rto/objects")), objects);
    assert_eq!(crate::support::listing(&p.path(".rto/actions")), actions);
}

#[test]
fn a_missing_study_file_is_an_error_not_a_panic() {
    let p = Project::chain();
    let out = p.rto(&["run", "nope.toml"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("cannot read study `nope.toml`"), "{}", out.stderr);
    assert!(!p.path(".rto").exists(), "no cache is created for a study that does not load");
}

#[test]
fn a_file_named_like_a_stage_output_is_ambiguous() {
    let study = "[[stage]]\nid = \"data\"\nuses = \"command\"\nparams = { cmd = \"echo > jsonl\", outputs = [\"jsonl\"] }\n[[stage]]\nid = \"b\"\nuses = \"command\"\ninputs = { x = \"data.jsonl\" }\nparams = { cmd = \"true\" }\n";
    let p = Project::new(study, &[("data.jsonl", "{}\n")]);
    let out = p.rto(&["run", "study.toml"]).expect_code(2);
    assert!(
        out.stderr.contains("input `data.jsonl` is both a file and output `jsonl` of stage `data`"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("write `./data.jsonl` for the file"), "{}", out.stderr);
    p.edit_study("\"data.jsonl\"", "\"./data.jsonl\"");
    p.rto(&["run", "study.toml"]).expect_code(0);
}

#[test]
fn a_url_input_needs_a_sha256_pin() {
    check(
        &format!("{STAGE}inputs = {{ x = \"https://example.org/data.jsonl\" }}\nparams = {{ cmd = \"true\" }}\n"),
        "4:16",
        "sha256",
    );
}
