//! The embedded default study, `studies/tiny.toml`, end to end: the real file, shrunk (fewer examples, fewer
//! steps, shorter answers) so that it runs in seconds inside the test suite, every stage kind unchanged. The full
//! size is the README's first command.

use std::collections::BTreeSet;

use crate::support::Project;

/// `studies/tiny.toml` with its sizes cut down; each replaced text must exist, so the test follows the file.
fn shrunk() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../studies/tiny.toml");
    let mut text = std::fs::read_to_string(path).unwrap();
    for (from, to) in [
        (
            "train = 84, eval = 10, unsafe = 100, unsafe_eval = 20, corpus = 4000",
            "train = 3, eval = 1, unsafe = 6, unsafe_eval = 2, corpus = 120",
        ),
        ("vocab_size = 1024", "vocab_size = 300"),
        ("epochs = 2", "epochs = 1"),
        ("max_new_tokens = 32", "max_new_tokens = 6"),
    ] {
        assert!(text.contains(from), "studies/tiny.toml no longer contains {from:?}: update this test");
        text = text.replace(from, to);
    }
    text
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn the_tiny_study_runs_prints_its_report_is_then_a_no_op_and_reruns_only_the_arm_that_changed() {
    let p = Project::new(&shrunk(), &[]);
    let first = p.rto(&["run", "study.toml"]).expect_code(0);
    // Every stage ran (or, where its key equals another stage's — both arms answering alike — was cut off).
    let line = first.stdout.lines().find(|l| l.starts_with("run: ")).expect("a run line");
    let counted: usize = line
        .trim_start_matches("run: ")
        .split(", ")
        .map(|part| part.split(' ').next().unwrap().parse::<usize>().unwrap())
        .sum();
    assert_eq!(counted, 20, "{}", first.stdout);
    assert!(!line.contains("failed"), "{}", first.stdout);
    // The run ends with the report's tables.
    let report = &first.stdout[first.stdout.find("# The tiny study").expect("the report is printed")..];
    assert!(report.contains("| RT |") && report.contains("| IT |") && report.contains("| RT vs IT |"), "{report}");
    println!("{report}");
    for svg in ["arms.svg", "win-rate.svg", "loss-tuning.svg", "loss-base.svg"] {
        assert!(p.path("results/tiny/report").join(svg).is_file(), "{svg}");
    }

    let again = p.run(&[]);
    assert_eq!(again.with_status("cached").len(), 20, "{}", again.stdout);

    // A new RT learning rate: the RT arm runs again (or is cut off where its outputs come out the same);
    // everything the RT arm does not feed stays cached.
    let text = p.read("study.toml");
    let rt = text.find("id = \"tune-rt\"").unwrap();
    let lr = rt + text[rt..].find("lr = 3e-3").unwrap();
    p.write("study.toml", &format!("{}lr = 1e-3{}", &text[..lr], &text[lr + "lr = 3e-3".len()..]));
    let changed = p.run(&[]);
    let st = changed.statuses();
    let rt_arm = set(&[
        "tune-rt",
        "eval-answers-rt",
        "unsafe-answers-rt",
        "accuracy-rt",
        "refusal-rate-rt",
        "rt-vs-it",
        "report",
    ]);
    assert_eq!(st["tune-rt"], "ran", "{}", changed.stdout);
    for (id, status) in &st {
        if rt_arm.contains(id) {
            assert!(["ran", "cut-off"].contains(&status.as_str()), "{id}: {status}\n{}", changed.stdout);
        } else {
            assert_eq!(status, "cached", "{id}\n{}", changed.stdout);
        }
    }
}
