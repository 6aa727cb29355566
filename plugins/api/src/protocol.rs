//! The JSON protocol spoken over the ABI, versioned apart from it ([`PROTOCOL_VERSION`]).
//!
//! Readers are tolerant: unknown fields are ignored and new fields have defaults, so a minor protocol change
//! needs no new ABI. The host checks the major of [`Description::protocol`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `MAJOR.MINOR` of this protocol.
pub const PROTOCOL_VERSION: &str = "1.0";

/// What a plugin says about itself (the `describe` call).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Description {
    /// [`PROTOCOL_VERSION`] it speaks.
    pub protocol: String,
    /// Its name: what a study writes before the `:` in `uses`.
    pub name: String,
    /// Its version (semver).
    pub version: String,
    /// `model` or `judge`.
    pub kind: String,
    /// The ops it offers.
    pub ops: Vec<OpInfo>,
}

/// One op of a plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpInfo {
    /// Its name: what a study writes after the `:` in `uses`.
    pub name: String,
    /// One line for people.
    #[serde(default)]
    pub summary: String,
    /// Environment facts its results depend on (e.g. `device`, `dtype`), which enter the action key.
    #[serde(default)]
    pub env_facts: Vec<String>,
    /// Top-level params that cannot change its results (connection, concurrency and retry settings): rto leaves
    /// them out of the action key, so changing one re-uses the cached result and the stage's scratch area (a
    /// judge's item cache, say) instead of starting over. The op still receives them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unkeyed_params: Vec<String>,
}

/// What the host asks a stage op to do: the stage's params, its inputs as paths, and where to write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// [`PROTOCOL_VERSION`] of the host.
    pub protocol: String,
    /// The stage's id, for messages.
    pub stage_id: String,
    /// The stage's canonical params (a JSON object).
    pub params: serde_json::Value,
    /// Input name → path of a file or directory (read-only).
    #[serde(default)]
    pub inputs: BTreeMap<String, PathBuf>,
    /// An empty directory: each entry left directly in it becomes an output artifact.
    pub out_dir: PathBuf,
    /// A private scratch directory, kept between attempts of the same action (for checkpoints).
    pub scratch_dir: PathBuf,
    /// GPU ids reserved for the stage (also in `CUDA_VISIBLE_DEVICES`).
    #[serde(default)]
    pub gpus: Vec<String>,
    /// When true, only check the params (`validate`); write nothing.
    #[serde(default)]
    pub validate_only: bool,
}

/// What an op returns when it fails.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// One line: what went wrong.
    pub message: String,
    /// For bad params: the path inside `params` (e.g. `["lora", "rank"]`), so the host can point at the study.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub param_path: Option<Vec<String>>,
}

/// Progress reported through the host callback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Units done.
    pub done: u64,
    /// Units in all (0 if unknown).
    pub total: u64,
    /// Optional words (e.g. `loss 1.23`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}
