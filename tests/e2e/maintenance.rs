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
