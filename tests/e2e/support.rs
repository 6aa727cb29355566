//! A temporary project with a study file, and a runner for the real `rto` binary.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A temporary directory holding a study and its cache.
pub struct Project {
    /// The temporary directory (deleted on drop).
    pub dir: tempfile::TempDir,
}

/// What one `rto` invocation did.
#[derive(Debug)]
pub struct Outcome {
    /// Exit code.
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Outcome {
    /// The run/plan summary printed with `--format json`, as id → status.
    pub fn statuses(&self) -> BTreeMap<String, String> {
        let v: serde_json::Value = serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}\nstderr:\n{}", self.stdout, self.stderr));
        v["stages"]
            .as_array()
            .expect("stages")
            .iter()
            .map(|s| (s["id"].as_str().unwrap().to_string(), s["status"].as_str().unwrap().to_string()))
            .collect()
    }

    /// The stage ids with `status`.
    pub fn with_status(&self, status: &str) -> Vec<String> {
        self.statuses().into_iter().filter(|(_, s)| s == status).map(|(id, _)| id).collect()
    }

    /// Panics with the output unless the exit code is `code`.
    pub fn expect_code(self, code: i32) -> Self {
        assert_eq!(self.code, code, "exit code\nstdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }
}

impl Project {
    /// A new project with `study.toml` holding `study` and the given extra files.
    pub fn new(study: &str, files: &[(&str, &str)]) -> Project {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("study.toml"), study).unwrap();
        let p = Project { dir };
        for (rel, content) in files {
            p.write(rel, content);
        }
        p
    }

    /// The project's directory, kept after the `Project` is gone (for fixtures shared by several tests).
    pub fn into_dir(self) -> tempfile::TempDir {
        self.dir
    }

    /// Writes a file relative to the project.
    pub fn write(&self, rel: &str, content: &str) {
        let path = self.path(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }

    /// A path inside the project.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Reads a file of the project.
    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    /// Replaces `from` by `to` in the study file.
    pub fn edit_study(&self, from: &str, to: &str) {
        let text = self.read("study.toml");
        assert!(text.contains(from), "study does not contain {from:?}");
        self.write("study.toml", &text.replacen(from, to, 1));
    }

    /// The `rto` command, run in the project directory.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(rto());
        c.args(args)
            .current_dir(self.dir.path())
            .env_remove("RTO_CACHE")
            .env("NO_COLOR", "1")
            .env("RUNS_LOG", self.path("runs.log"));
        c
    }

    /// Runs `rto ARGS` and returns what it did.
    pub fn rto(&self, args: &[&str]) -> Outcome {
        outcome(self.command(args).output().expect("rto runs"))
    }

    /// `rto --format json run study.toml ARGS`, expected to succeed.
    pub fn run(&self, args: &[&str]) -> Outcome {
        let mut all = vec!["--format", "json", "run", "study.toml"];
        all.extend_from_slice(args);
        self.rto(&all).expect_code(0)
    }

    /// `rto --format json plan study.toml`.
    pub fn plan(&self) -> Outcome {
        self.rto(&["--format", "json", "plan", "study.toml"]).expect_code(0)
    }

    /// A listing of every file in the cache with its content digest, to compare the store before and after.
    pub fn cache_listing(&self) -> BTreeMap<String, String> {
        listing(&self.path(".rto"))
    }
}

/// Every file below `root` (relative path → sha256 of content); empty if `root` does not exist.
pub fn listing(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            } else {
                let digest = cache::hash_file(&p).map(|(d, _)| d.to_hex()).unwrap_or_default();
                out.insert(p.strip_prefix(root).unwrap().display().to_string(), digest);
            }
        }
    }
    out
}

/// Converts a process output.
pub fn outcome(out: Output) -> Outcome {
    Outcome {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The path of the `rto` binary cargo built for these tests.
pub fn rto() -> &'static str {
    env!("CARGO_BIN_EXE_rto")
}

/// A study of command stages: `a` writes a file from a param, `b` and `c` read it, `d` reads `b` and `c`, and
/// `solo` depends on nothing. Every stage that runs appends its id to `$RUNS_LOG` (the project's `runs.log`, set by [`Project::command`]
/// and not part of any key), so tests can count runs.
pub const CHAIN: &str = r#"
[study]
name = "chain"

[[stage]]
id = "a"
uses = "command"
inputs = { seed = "seed.txt" }
params = { cmd = "echo a >> \"$RUNS_LOG\"; cat \"$RTO_INPUT_SEED\" > out.txt; echo 'value=1' >> out.txt", outputs = ["out.txt"] }

[[stage]]
id = "{x}"
uses = "command"
foreach = { x = ["b", "c"] }
inputs = { up = "a.out.txt" }
params = { cmd = "echo {x} >> \"$RUNS_LOG\"; wc -c < \"$RTO_INPUT_UP\" > n.txt", outputs = ["n.txt"] }

[[stage]]
id = "d"
uses = "command"
inputs = { b = "b.n.txt", c = "c" }
params = { cmd = "echo d >> \"$RUNS_LOG\"; cat \"$RTO_INPUT_B\" \"$RTO_INPUT_C/n.txt\" > sum.txt", outputs = ["sum.txt"] }

[[stage]]
id = "solo"
uses = "command"
params = { cmd = "echo solo >> \"$RUNS_LOG\"; echo solo > s.txt", outputs = ["s.txt"] }
"#;

impl Project {
    /// The chain study with its seed file.
    pub fn chain() -> Project {
        Project::new(CHAIN, &[("seed.txt", "seed\n")])
    }

    /// The stage ids that ran (appended to `runs.log`), in order, and empties the log.
    pub fn take_runs(&self) -> Vec<String> {
        let path = self.path("runs.log");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let _ = std::fs::remove_file(&path);
        let mut runs: Vec<String> = text.lines().map(String::from).collect();
        runs.sort();
        runs
    }
}
