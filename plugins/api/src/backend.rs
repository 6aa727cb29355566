//! The safe side: what a plugin author implements. No `unsafe` is needed to write a plugin.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::protocol::OpInfo;

/// Kind of back-end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Trains and samples models.
    Model,
    /// Judges outputs.
    Judge,
}

impl Kind {
    /// `model` or `judge`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Model => "model",
            Kind::Judge => "judge",
        }
    }
}

/// An op's failure.
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// A bad param, at a path inside `params`.
    Param {
        /// Path inside `params`.
        path: Vec<String>,
        /// What is wrong and what a valid value looks like.
        message: String,
    },
    /// The op stopped because the host asked it to.
    Cancelled,
    /// Anything else.
    Failed(String),
}

impl Error {
    /// A bad param at `path`.
    pub fn param(path: &[&str], message: impl Into<String>) -> Error {
        Error::Param { path: path.iter().map(|s| s.to_string()).collect(), message: message.into() }
    }
}

impl<E: std::fmt::Display> From<E> for Error {
    fn from(e: E) -> Self {
        Error::Failed(e.to_string())
    }
}

/// Everything an op may touch while it runs.
pub struct OpContext<'a> {
    /// The stage's id.
    pub stage_id: &'a str,
    /// Canonical params.
    pub params: &'a serde_json::Value,
    /// Input name → read-only path.
    pub inputs: &'a BTreeMap<String, PathBuf>,
    /// Where outputs go: each entry directly in it is an output.
    pub out_dir: &'a Path,
    /// Private scratch space, kept between attempts of the same action.
    pub scratch_dir: &'a Path,
    /// Reserved GPU ids.
    pub gpus: &'a [String],
    pub(crate) host: &'a dyn Host,
}

/// The host's callbacks, behind a trait so that the export shims and tests can provide them.
pub trait Host {
    /// A log line.
    fn log(&self, level: u32, message: &str);
    /// Progress.
    fn progress(&self, done: u64, total: u64, message: &str);
    /// True once the host wants the op to stop.
    fn is_cancelled(&self) -> bool;
}

impl<'a> OpContext<'a> {
    /// A context for calling a backend directly (tests, in-process use).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        stage_id: &'a str,
        params: &'a serde_json::Value,
        inputs: &'a BTreeMap<String, PathBuf>,
        out_dir: &'a Path,
        scratch_dir: &'a Path,
        gpus: &'a [String],
        host: &'a dyn Host,
    ) -> OpContext<'a> {
        OpContext { stage_id, params, inputs, out_dir, scratch_dir, gpus, host }
    }

    /// Writes a line to the stage's log.
    pub fn log(&self, message: &str) {
        self.host.log(2, message);
    }

    /// Reports progress (shown on the stage's progress line).
    pub fn progress(&self, done: u64, total: u64) {
        self.host.progress(done, total, "");
    }

    /// True once the user asked to stop: return [`Error::Cancelled`] soon.
    pub fn cancelled(&self) -> bool {
        self.host.is_cancelled()
    }

    /// The path of input `name`, or a param-style error naming the missing input.
    pub fn input(&self, name: &str) -> Result<&'a Path, Error> {
        self.inputs
            .get(name)
            .map(PathBuf::as_path)
            .ok_or_else(|| Error::Failed(format!("the stage has no input `{name}`")))
    }
}

/// A back-end: what a plugin author implements, then exports with [`crate::export_plugin!`].
///
/// A model back-end offers ops such as `train`, `sample`, `generate`; a judge back-end offers `judge`. Each op
/// reads its params and inputs from the [`OpContext`], writes its outputs into `out_dir`, and returns a small
/// JSON summary.
pub trait Backend: Sized + 'static {
    /// The plugin's name (`uses = "<name>:<op>"`).
    const NAME: &'static str;
    /// Its version; part of every action key of its stages, with the library's digest.
    const VERSION: &'static str;
    /// Model or judge.
    const KIND: Kind;

    /// The ops it offers.
    fn ops() -> Vec<OpInfo>;

    /// Creates an instance from the (JSON) plugin config.
    fn create(config: &serde_json::Value) -> Result<Self, Error>;

    /// Checks an op's params before anything runs; `Error::Param` points at the study.
    fn validate(&self, op: &str, params: &serde_json::Value, input_names: &[String]) -> Result<(), Error>;

    /// Runs an op.
    fn invoke(&mut self, op: &str, ctx: &mut OpContext<'_>) -> Result<serde_json::Value, Error>;
}
