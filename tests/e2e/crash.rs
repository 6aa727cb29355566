//! Crash safety with a real `kill -9` in the middle of a stage writing a large output.

use std::time::{Duration, Instant};

use crate::support::Project;

const BIG: &str = r#"
[[stage]]
id = "big"
uses = "command"
params = { cmd = "echo started > \"$RUNS_LOG\"; head -c 40000000 /dev/zero > big.bin; sleep 2; echo tail >> big.bin", outputs = ["big.bin"] }

[[stage]]
id = "after"
uses = "command"
inputs = { b = "big.big.bin" }
params = { cmd = "wc -c < \"$RTO_INPUT_B\" > n.txt", outputs = ["n.txt"] }
"#;

#[test]
fn kill_9_during_a_stage_leaves_a_consistent_store_and_the_next_run_completes() {
    let p = Project::new(BIG, &[]);
    let mut child = p
        .command(&["run", "study.toml"])
        .stderr(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    // Kill once the stage is writing its output.
    while !p.path("runs.log").exists() {
        assert!(Instant::now() < deadline, "the stage never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // The command itself dies with its parent (parent-death signal); give it a moment.
    std::thread::sleep(Duration::from_millis(300));

    let verify = p.rto(&["verify"]).expect_code(0);
    assert!(verify.stdout.contains("store is consistent"), "{}", verify.stdout);
    let plan = p.plan();
    assert_eq!(plan.with_status("will-run"), ["big"]);

    let run = p.run(&[]);
    assert_eq!(run.with_status("ran"), ["after", "big"]);
    assert_eq!(p.read("results/study/after/n.txt").trim(), "40000005");
    p.rto(&["verify"]).expect_code(0);
    // The leftovers of the killed run are garbage that gc removes.
    let gc = p.rto(&["gc", "--grace", "0s"]).expect_code(0);
    assert!(gc.stdout.contains("scratch"), "{}", gc.stdout);
}
