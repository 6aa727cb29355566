//! Resources: GPUs handed out through CUDA_VISIBLE_DEVICES, and requests that cannot fit.

use crate::support::Project;

const GPU_STUDY: &str = r#"
[[stage]]
id = "train-{n}"
uses = "command"
foreach = { n = [4, 5] }
resources = { gpus = 1 }
params = { cmd = "echo \"$CUDA_VISIBLE_DEVICES\" > gpu.txt; sleep 0.{n}; echo \"$CUDA_VISIBLE_DEVICES\" >> gpu.txt", outputs = ["gpu.txt"] }

[[stage]]
id = "cpu"
uses = "command"
params = { cmd = "echo \"[$CUDA_VISIBLE_DEVICES]\" > gpu.txt", outputs = ["gpu.txt"] }
"#;

#[test]
fn gpus_are_handed_out_one_stage_each() {
    let p = Project::new(GPU_STUDY, &[]);
    p.run(&["--gpus", "0,1", "-j", "3"]);
    let mut seen = vec![p.read("results/study/train-4/gpu.txt"), p.read("results/study/train-5/gpu.txt")];
    seen.sort();
    assert_eq!(seen, ["0\n0\n", "1\n1\n"], "each running stage holds its own GPU");
    assert_eq!(p.read("results/study/cpu/gpu.txt"), "[]\n", "a stage that reserved no GPU sees none");
}

#[test]
fn a_stage_that_can_never_fit_fails_clearly() {
    let p = Project::new(GPU_STUDY, &[]);
    let out = p.rto(&["--format", "json", "run", "study.toml", "--gpus", "", "--keep-going"]).expect_code(1);
    let st = out.statuses();
    assert_eq!(st["train-4"], "failed");
    assert_eq!(st["cpu"], "ran");
    assert!(out.stderr.contains("needs 1 GPU(s) but this machine offers 0"), "{}", out.stderr);
}
