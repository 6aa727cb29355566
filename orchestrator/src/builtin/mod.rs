//! Built-in stages: what a study can `use` without any plugin.
//!
//! A built-in runs inside the orchestrator's process (on a thread of the local executor) and sees only a
//! [`StageContext`]: its canonical params, its inputs as read-only local paths, and an empty output directory.
//! Every file or directory it leaves directly in `out_dir` becomes one output artifact, named by its file name,
//! which downstream stages reference as `stage-id.output-name`.
//!
//! Params are checked twice: [`Builtin::validate`] at plan time, so that a bad param is reported with the
//! study's file, line and column before anything runs, and again by `run`, which must never trust them.

pub mod command;
pub mod dataset;
pub mod report;
pub mod synthetic;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Everything a built-in stage may touch while it runs.
pub struct StageContext<'a> {
    /// The stage's id after expansion, for messages.
    pub stage_id: &'a str,
    /// The stage's params in canonical form (a JSON object; integral floats are integers).
    pub params: &'a serde_json::Value,
    /// Input name → local path of the artifact (a file, or a directory tree). Read-only: never write there.
    pub inputs: &'a BTreeMap<String, PathBuf>,
    /// An empty directory; each entry written directly in it becomes an output artifact.
    pub out_dir: &'a Path,
    /// A private scratch directory, deleted after the stage.
    pub scratch_dir: &'a Path,
    /// GPU device ids reserved for the stage (`resources.gpus`); child processes get them as
    /// `CUDA_VISIBLE_DEVICES`, and a stage that reserved none sees none.
    pub gpus: &'a [String],
    /// The stage's log (a file under the cache's `runs/`); write human-readable lines.
    pub log: &'a mut dyn Write,
    /// Reports progress as (done, total); the executor shows it on the stage's progress line.
    pub progress: &'a dyn Fn(u64, u64),
    /// True once the user asked to stop (Ctrl-C): return early with an error.
    pub cancelled: &'a dyn Fn() -> bool,
}

/// A param that failed validation, located by its path inside the stage's `params` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamError {
    /// Path inside `params`, e.g. `["sources", "0", "preset"]`; empty for the whole table.
    pub path: Vec<String>,
    /// What is wrong and, where it helps, what a valid value looks like.
    pub message: String,
}

impl std::fmt::Display for ParamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            write!(f, "`params`: {}", self.message)
        } else {
            write!(f, "`params.{}`: {}", self.path.join("."), self.message)
        }
    }
}

impl std::error::Error for ParamError {}

impl ParamError {
    /// An error at `path` (segments joined as given) with `message`.
    pub fn new(path: &[&str], message: impl Into<String>) -> Self {
        ParamError { path: path.iter().map(|s| s.to_string()).collect(), message: message.into() }
    }
}

/// What the planner and the executor need to know about one built-in.
pub trait Builtin: Sync {
    /// The name a stage puts in `uses`.
    fn name(&self) -> &'static str;
    /// Revision of the built-in's behaviour: bump it when the same params and inputs would give other
    /// outputs, so that the change invalidates the built-in's stages (it is part of the back-end identity).
    fn revision(&self) -> u32 {
        1
    }
    /// Checks params (and the names of the inputs the stage declares) before anything runs.
    fn validate(&self, params: &serde_json::Value, input_names: &[&str]) -> Result<(), ParamError>;
    /// Runs the stage. Errors name the file and line (for data) or the param at fault.
    fn run(&self, ctx: &mut StageContext<'_>) -> anyhow::Result<()>;
}
