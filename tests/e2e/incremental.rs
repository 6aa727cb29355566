//! Incremental runs: no-ops, invalidation of exactly the dependants, early cut-off, plan agreeing with run.

use crate::support::Project;

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn a_second_run_of_an_unchanged_study_runs_nothing() {
    let p = Project::chain();
    let first = p.run(&[]);
    assert_eq!(first.with_status("ran"), strings(&["a", "b", "c", "d", "solo"]));
    assert_eq!(p.take_runs(), strings(&["a", "b", "c", "d", "solo"]));
    let n = p.read("results/chain/b/n.txt");
    assert_eq!(n.trim(), "13", "`a` wrote `seed\\n` and `value=1\\n`");
    assert_eq!(p.read("results/chain/d/sum.txt"), format!("{n}{n}"));

    let second = p.run(&[]);
    assert_eq!(second.with_status("cached").len(), 5, "{:?}", second.statuses());
    assert!(p.take_runs().is_empty(), "no stage may run twice");
    let plan = p.plan();
    assert_eq!(plan.with_status("cached").len(), 5, "plan agrees with run");
}

#[test]
fn editing_a_param_reruns_exactly_its_dependants() {
    let p = Project::chain();
    p.run(&[]);
    p.take_runs();
    p.edit_study("echo 'value=1'", "echo 'value=22'");

    let plan = p.plan();
    assert_eq!(plan.with_status("will-run"), strings(&["a"]));
    assert_eq!(plan.with_status("blocked"), strings(&["b", "c", "d"]));
    assert_eq!(plan.with_status("cached"), strings(&["solo"]));

    let run = p.run(&[]);
    assert_eq!(run.with_status("ran"), strings(&["a", "b", "c", "d"]));
    assert_eq!(p.take_runs(), strings(&["a", "b", "c", "d"]));
    assert_eq!(run.with_status("cached"), strings(&["solo"]));
}

#[test]
fn editing_an_input_file_reruns_its_readers_and_early_cutoff_stops_the_wave() {
    let p = Project::chain();
    p.run(&[]);
    p.take_runs();
    // Same length, other content: `a` re-runs; `b` and `c` count bytes, so their outputs are identical and
    // `d` is cut off.
    p.write("seed.txt", "SEED\n");
    let run = p.run(&[]);
    assert_eq!(run.with_status("ran"), strings(&["a", "b", "c"]));
    assert_eq!(run.with_status("cut-off"), strings(&["d"]));
    assert_eq!(p.take_runs(), strings(&["a", "b", "c"]));
    assert_eq!(p.read("results/chain/a/out.txt"), "SEED\nvalue=1\n");
}

#[test]
fn rewriting_an_input_file_with_the_same_content_changes_nothing() {
    let p = Project::chain();
    p.run(&[]);
    p.take_runs();
    p.write("seed.txt", "seed\n");
    let run = p.run(&[]);
    assert_eq!(run.with_status("cached").len(), 5);
    assert!(p.take_runs().is_empty());
}

#[test]
fn formatting_key_order_and_comments_do_not_change_keys() {
    let p = Project::chain();
    let before = p.plan().stdout;
    p.run(&[]);
    p.take_runs();
    let mut text = p.read("study.toml");
    text = text.replace("[study]", "# a comment\n[study]  # trailing\n");
    text = text.replace(
        r#"id = "solo"
uses = "command""#,
        r#"uses = "command"
id = "solo"      # moved"#,
    );
    p.write("study.toml", &text);
    let run = p.run(&[]);
    assert_eq!(run.with_status("cached").len(), 5, "{}", run.stdout);
    let keys = |json: &str| -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        v["stages"].as_array().unwrap().iter().filter_map(|s| s["key"].as_str().map(String::from)).collect()
    };
    assert_eq!(keys(&before)[..1], keys(&run.stdout)[..1]);
}

#[test]
fn moving_the_project_and_its_cache_keeps_every_hit() {
    let p = Project::chain();
    p.run(&[]);
    p.take_runs();
    let moved = tempfile::tempdir().unwrap();
    let target = moved.path().join("elsewhere");
    std::fs::rename(p.dir.path(), &target).unwrap();
    let out = crate::support::outcome(
        std::process::Command::new(crate::support::rto())
            .args(["--format", "json", "run", "study.toml"])
            .current_dir(&target)
            .env("RUNS_LOG", target.join("runs.log"))
            .output()
            .unwrap(),
    )
    .expect_code(0);
    assert_eq!(out.with_status("cached").len(), 5, "{}", out.stderr);
    std::fs::rename(&target, p.dir.path()).unwrap();
}

#[test]
fn why_names_the_changed_field() {
    let p = Project::chain();
    p.run(&[]);
    p.edit_study("echo 'value=1'", "echo 'value=2'");
    let out = p.rto(&["why", "study.toml", "a"]).expect_code(0);
    assert!(out.stdout.contains("`a` will run: `params.cmd` changed from"), "{}", out.stdout);

    let blocked = p.rto(&["why", "study.toml", "d"]).expect_code(0);
    assert!(blocked.stdout.contains("`d` waits for `b`, `c`"), "{}", blocked.stdout);

    p.write("seed.txt", "other\n");
    let json = p.rto(&["--format", "json", "why", "study.toml", "a"]).expect_code(0);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let reasons: Vec<&str> =
        v["differences"].as_array().unwrap().iter().map(|d| d["reason"].as_str().unwrap()).collect();
    assert_eq!(reasons, ["param-changed", "input-changed"], "{}", json.stdout);

    let cached = p.rto(&["why", "study.toml", "solo"]).expect_code(0);
    assert!(cached.stdout.contains("`solo` is cached"), "{}", cached.stdout);
}

#[test]
fn force_and_only_select_what_runs() {
    let p = Project::chain();
    let only = p.run(&["--only", "b"]);
    assert_eq!(only.with_status("ran"), strings(&["a", "b"]));
    assert_eq!(p.take_runs(), strings(&["a", "b"]));

    let forced = p.run(&["--force", "b"]);
    assert_eq!(forced.with_status("ran"), strings(&["b", "c", "d", "solo"]), "{:?}", forced.statuses());
    assert_eq!(p.take_runs(), strings(&["b", "c", "d", "solo"]));

    let bad = p.rto(&["run", "study.toml", "--only", "nope"]).expect_code(2);
    assert!(bad.stderr.contains("has no stage `nope`"), "{}", bad.stderr);
}

#[test]
fn a_failed_stage_stops_its_dependants_and_keep_going_runs_the_rest() {
    let p = Project::chain();
    p.edit_study("wc -c <", "exit 3; wc -c <");
    let out = p.rto(&["--format", "json", "run", "study.toml", "--keep-going", "-j", "1"]).expect_code(1);
    let st = out.statuses();
    assert_eq!(st["b"], "failed");
    assert_eq!(st["c"], "failed");
    assert_eq!(st["d"], "skipped");
    assert_eq!(st["solo"], "ran");
    assert!(out.stderr.contains("command exited with status 3"), "{}", out.stderr);

    // Failures are not cached: fixing the command runs them.
    p.edit_study("exit 3; wc -c <", "wc -c <");
    let fixed = p.run(&[]);
    assert_eq!(fixed.with_status("ran"), strings(&["b", "c", "d"]));
}

#[test]
fn results_path_and_log_reach_outputs_by_stage_id() {
    let p = Project::chain();
    p.run(&[]);
    let path = p.rto(&["path", "study.toml", "a", "out.txt"]).expect_code(0);
    assert_eq!(std::fs::read_to_string(path.stdout.trim()).unwrap(), "seed\nvalue=1\n");
    let all = p.rto(&["path", "study.toml", "c"]).expect_code(0);
    assert!(all.stdout.starts_with("n.txt\t"), "{}", all.stdout);
    let log = p.rto(&["log", "study.toml", "a"]).expect_code(0);
    assert!(log.stdout.contains("# output out.txt"), "{}", log.stdout);
    assert!(std::fs::symlink_metadata(p.path("results/chain/d/sum.txt")).unwrap().file_type().is_symlink());

    p.edit_study("echo 'value=1'", "echo 'value=3'");
    let stale = p.rto(&["path", "study.toml", "a"]).expect_code(2);
    assert!(stale.stderr.contains("has no current result"), "{}", stale.stderr);
}

#[test]
fn the_example_study_runs_and_is_then_a_no_op() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let run = |args: &[&str]| {
        crate::support::outcome(
            std::process::Command::new(crate::support::rto())
                .args(["--cache", cache.to_str().unwrap(), "--format", "json"])
                .args(args)
                .current_dir(root)
                .output()
                .unwrap(),
        )
        .expect_code(0)
    };
    let first = run(&["run", "studies/example.toml", "--dry-run"]);
    assert!(first.with_status("cached").is_empty());
    let _ = std::fs::remove_dir_all(root.join("studies/results/example"));
    let first = run(&["run", "studies/example.toml"]);
    assert_eq!(first.with_status("ran").len(), 5, "{:?}", first.statuses());
    let second = run(&["run", "studies/example.toml"]);
    assert_eq!(second.with_status("cached").len(), 5);
}

#[test]
fn stages_behind_a_failure_are_reported_skipped_not_dropped() {
    // Regression (review of issue 2): without --keep-going the summary lost stages that were never decided.
    let p = Project::chain();
    p.edit_study("echo a >>", "exit 1; echo a >>");
    let out = p.rto(&["--format", "json", "run", "study.toml", "-j", "1"]).expect_code(1);
    let st = out.statuses();
    assert_eq!(st.len(), 5, "{st:?}");
    assert_eq!(st["a"], "failed");
    for id in ["b", "c", "d"] {
        assert_eq!(st[id], "skipped", "{id}");
    }
}

#[test]
fn an_input_edited_while_its_stage_runs_is_not_recorded() {
    // Regression (review of issue 2): the key was taken over the old content, the stage read the new one.
    let study = "[[stage]]\nid = \"s\"\nuses = \"command\"\ninputs = { f = \"in.txt\" }\nparams = { cmd = \"echo more >> \\\"$RTO_INPUT_F\\\"; cat \\\"$RTO_INPUT_F\\\" > o\", outputs = [\"o\"] }\n";
    let p = Project::new(study, &[("in.txt", "one\n")]);
    let out = p.rto(&["run", "study.toml"]).expect_code(1);
    assert!(out.stderr.contains("input `f` (`"), "{}", out.stderr);
    assert!(out.stderr.contains("changed while the stage ran"), "{}", out.stderr);
}

#[test]
fn the_tiny_study_validates_and_expands_to_its_20_stages() {
    // Running it at full size takes minutes (the README's first command; `tiny.rs` runs it shrunk); here it is
    // planned: every stage, plugin op and param is resolved and checked, with nothing run.
    let out = plan_shipped("studies/tiny.toml");
    let st = out.statuses();
    assert_eq!(st.len(), 20, "{st:?}");
    assert_eq!(st["data"], "will-run");
    assert_eq!(st["rt-vs-it"], "blocked");
}

#[test]
fn the_paper_study_plans_its_24_trainings_12_judgings_and_report_without_touching_the_network() {
    let out = plan_shipped("studies/paper.toml");
    let st = out.statuses();
    assert_eq!(st.len(), 86, "1 eval set + 24 datasets + 24 trainings + 24 samplings + 12 judges + 1 report");
    assert_eq!(st.keys().filter(|id| id.starts_with("tune-")).count(), 24);
    assert_eq!(st.keys().filter(|id| id.starts_with("judge-")).count(), 12);
    assert_eq!(st["report"], "blocked");
    assert_eq!(st["sft-gemma2-9b-lima-rt"], "will-run");
    assert!(out.stdout.contains("input-not-fetched"), "{}", out.stdout);
}

/// `rto plan` of a study shipped in `studies/`, offline: remote inputs (hf://, URLs) are never fetched by
/// `plan`; stages that need them will run, their keys unknown.
pub(crate) fn plan_shipped(study: &str) -> crate::support::Outcome {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    crate::support::outcome(
        std::process::Command::new(crate::support::rto())
            .args(["--cache", tmp.path().to_str().unwrap(), "--format", "json", "plan", study])
            .current_dir(root)
            .env("HF_HUB_OFFLINE", "1")
            .env("HF_HOME", tmp.path().join("hf"))
            .output()
            .unwrap(),
    )
    .expect_code(0)
}

#[test]
fn the_paper_refusal_study_plans_its_mixture_sweep() {
    let st = plan_shipped("studies/paper-refusal.toml").statuses();
    let count = |prefix: &str| st.keys().filter(|id| id.starts_with(prefix)).count();
    // 2 models × 3 datasets × {0, 100, 200, 500} refusals × {RT, IT}, sampled and judged on 6 prompt sets.
    assert_eq!(count("tune-"), 48);
    assert_eq!(count("answers-"), 288);
    assert_eq!(count("refusal-"), 288);
    assert_eq!(count("prompts-"), 6);
    assert_eq!(st["report"], "blocked");
    assert_eq!(st["sft-llama31-8b-lima-r0-it"], "will-run");
}

#[test]
fn the_smollm2_study_plans_from_its_pinned_wheel() {
    let out = plan_shipped("studies/smollm2.toml");
    let st = out.statuses();
    assert_eq!(st["wheel"], "will-run");
    assert_eq!(st.keys().filter(|id| id.starts_with("tune-")).count(), 2);
    assert!(out.stdout.contains("input-not-fetched"), "{}", out.stdout);
}
