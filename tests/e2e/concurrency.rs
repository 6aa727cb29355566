//! Two `rto run` processes on one cache.

use crate::support::{Project, outcome};

#[test]
fn two_concurrent_runs_both_succeed_and_each_stage_runs_once() {
    let p = Project::chain();
    // Slow every stage down so that the two runs overlap.
    let text = p.read("study.toml").replace("cmd = \"echo", "cmd = \"sleep 0.3; echo");
    p.write("study.toml", &text);
    let spawn = || {
        p.command(&["--format", "json", "run", "study.toml"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let (a, b) = (outcome(a).expect_code(0), outcome(b).expect_code(0));
    assert_eq!(p.take_runs(), ["a", "b", "c", "d", "solo"], "each stage ran exactly once");
    let ran = a.with_status("ran").len() + b.with_status("ran").len();
    assert_eq!(ran, 5, "a: {:?}\nb: {:?}", a.statuses(), b.statuses());
    let verify = p.rto(&["verify"]).expect_code(0);
    assert!(verify.stdout.contains("store is consistent"));
    assert_eq!(p.run(&[]).with_status("cached").len(), 5);
}
