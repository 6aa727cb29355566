//! `rto verify` and `rto gc` on the real binary.

use std::os::unix::fs::PermissionsExt;

use crate::support::Project;

#[test]
fn verify_quarantines_a_corrupted_output_and_the_next_run_rebuilds_it() {
    let p = Project::chain();
    p.run(&[]);
    p.take_runs();
    let path = p.rto(&["path", "study.toml", "solo", "s.txt"]).expect_code(0).stdout.trim().to_string();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&path, "tampered\n").unwrap();
    let out = p.rto(&["verify"]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(out.stdout.contains("corrupt object"), "{}", out.stdout);
    let run = p.run(&[]);
    assert_eq!(run.with_status("ran"), ["solo"]);
    assert_eq!(p.read("results/chain/solo/s.txt"), "solo\n");
    p.rto(&["verify"]).expect_code(0);
}

#[test]
fn gc_keeps_what_the_study_uses_and_frees_old_results() {
    let p = Project::chain();
    p.run(&[]);
    p.edit_study("echo 'value=1'", "echo 'value=2'");
    p.run(&[]);
    let dry = p.rto(&["gc", "study.toml", "--grace", "0s", "--dry-run"]).expect_code(0);
    // `a` changed; `b` and `c` got new keys (new input) but identical outputs; `d` was cut off.
    assert!(dry.stdout.starts_with("would remove 3 action records and 2 objects"), "{}", dry.stdout);
    let before = p.cache_listing();
    let gc = p.rto(&["gc", "study.toml", "--grace", "0s"]).expect_code(0);
    assert!(gc.stdout.starts_with("removed 3 action records and 2 objects"), "{}", gc.stdout);
    assert!(p.cache_listing().len() < before.len());
    assert_eq!(p.run(&[]).with_status("cached").len(), 5, "what the study uses survives gc");
    p.rto(&["verify"]).expect_code(0);
}

#[test]
fn a_stage_that_edits_its_input_in_place_cannot_corrupt_the_store() {
    // Regression (review of issue 2): file inputs were the store's own objects, so `sed -i` replaced an object
    // with other bytes. Inputs are now private hard links; `sed -i` replaces the link only.
    let study = r#"
[[stage]]
id = "make"
uses = "command"
params = { cmd = "echo original > f.txt", outputs = ["f.txt"] }

[[stage]]
id = "edit"
uses = "command"
inputs = { f = "make.f.txt" }
params = { cmd = "sed -i s/original/edited/ \"$RTO_INPUT_F\"; cat \"$RTO_INPUT_F\" > seen.txt", outputs = ["seen.txt"] }
"#;
    let p = Project::new(study, &[]);
    p.run(&[]);
    assert_eq!(p.read("results/study/edit/seen.txt"), "edited\n");
    assert_eq!(p.read("results/study/make/f.txt"), "original\n");
    p.rto(&["verify"]).expect_code(0);
}

#[test]
fn gc_and_verify_refuse_to_run_while_a_run_uses_the_cache() {
    let study = "[[stage]]\nid = \"slow\"\nuses = \"command\"\nparams = { cmd = \"echo go > \\\"$RUNS_LOG\\\"; sleep 2; echo > o\", outputs = [\"o\"] }\n";
    let p = Project::new(study, &[]);
    let mut run = p
        .command(&["run", "study.toml"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    while !p.path("runs.log").exists() {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let gc = p.rto(&["gc", "--grace", "0s"]);
    assert_eq!(gc.code, 1, "{}", gc.stderr);
    assert!(gc.stderr.contains("in use by a running `rto run`"), "{}", gc.stderr);
    assert!(p.rto(&["verify"]).stderr.contains("in use"));
    assert!(run.wait().unwrap().success());
    p.rto(&["verify"]).expect_code(0);
}

#[test]
fn read_only_commands_never_create_a_cache() {
    let p = Project::chain();
    p.plan();
    p.rto(&["run", "study.toml", "--dry-run"]).expect_code(0);
    p.rto(&["why", "study.toml", "a"]).expect_code(0);
    assert!(!p.path(".rto").exists());
    let out = p.rto(&["verify"]).expect_code(2);
    assert!(out.stderr.contains("no rto cache at"), "{}", out.stderr);
    assert!(!p.path(".rto").exists());
}
