//! Action keys: what a stage's result depends on, hashed.
//!
//! A stage's action key is the sha256 of the canonical JSON of its [`ActionPreimage`]. Equal keys mean "the same
//! work", so a record under that key can stand in for running the stage. Each field is in the key for a reason:
//!
//! | field     | why it invalidates                                                                            |
//! |-----------|-----------------------------------------------------------------------------------------------|
//! | `schema`  | a change in how keys are computed must not make old records look current ([`KEY_SCHEMA`])      |
//! | `uses`    | another built-in or plugin op is other work                                                    |
//! | `backend` | new code may compute something else: plugin name, version and library digest; for built-ins, |
//! |           | rto's version and the built-in's own revision                                                  |
//! | `params`  | canonical (sorted keys, integral floats as integers), so formatting and key order do not count; |
//! |           | without the params a plugin op declares unkeyed (how a judge sends requests, not what it asks)  |
//! | `inputs`  | input name → kind and content digest of the artifact (upstream output or file)                 |
//! | `env`     | environment facts the back-end declares relevant (device kind, dtype), and the number of GPUs  |
//! |           | a stage reserves (`resources.gpus`), which changes what data-parallel training computes         |
//!
//! Deliberately left out, because they change without changing the work: the stage id (two stages doing the
//! same work share a result), absolute paths (a moved checkout or cache keeps its hits), mtimes, host names,
//! the clock, `resources` other than the GPU count (CPUs and memory are scheduling, not semantics), the study's
//! description and comments, and secrets, which must never be written to a record.

use std::collections::BTreeMap;

use cache::{ActionKey, ArtifactKind, ObjectDigest};
use serde::{Deserialize, Serialize};

/// Version of the key computation; bump it when the pre-image's fields or their canonical form change.
pub const KEY_SCHEMA: u32 = 1;

/// Everything a stage's result may depend on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionPreimage {
    /// [`KEY_SCHEMA`].
    pub schema: u32,
    /// `uses` as written: `dataset`, `command`, `plugin:op`.
    pub uses: String,
    /// Identity of the code that runs the stage.
    pub backend: BackendIdentity,
    /// Canonical params.
    pub params: serde_json::Value,
    /// Input name → artifact.
    pub inputs: BTreeMap<String, InputDigest>,
    /// Environment facts the back-end declares relevant.
    pub env: BTreeMap<String, String>,
}

/// Which code runs a stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendIdentity {
    /// `builtin:command`, or the plugin's name.
    pub name: String,
    /// rto's version for built-ins (with the built-in's revision), the plugin's version otherwise.
    pub version: String,
    /// sha256 of the plugin's library file; `None` for built-ins.
    pub digest: Option<ObjectDigest>,
}

/// An input as the key sees it: kind and content digest (not its path, not its size).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputDigest {
    /// File or tree.
    pub kind: ArtifactKind,
    /// Content digest.
    pub digest: ObjectDigest,
}

impl ActionPreimage {
    /// The canonical JSON bytes the key is taken over.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        // Destructured by name: a new field does not compile until someone decides whether it belongs here.
        let ActionPreimage { schema, uses, backend, params, inputs, env } = self;
        let BackendIdentity { name, version, digest } = backend;
        let value = serde_json::json!({
            "schema": schema,
            "uses": uses,
            "backend": { "name": name, "version": version, "digest": digest },
            "params": sort_value(params),
            "inputs": inputs.iter().map(|(k, v)| (k.clone(), serde_json::json!({"kind": v.kind, "digest": v.digest}))).collect::<serde_json::Map<_, _>>(),
            "env": env,
        });
        serde_json::to_vec(&value).expect("JSON values serialise")
    }

    /// The action key.
    pub fn key(&self) -> ActionKey {
        ActionKey::of_bytes(&self.canonical_bytes())
    }

    /// The pre-image as a JSON value, for the action record.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("pre-images serialise")
    }
}

/// A copy of `value` with object keys sorted at every level (independent of serde_json's map features).
fn sort_value(value: &serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => {
            let sorted: BTreeMap<&String, serde_json::Value> = map.iter().map(|(k, v)| (k, sort_value(v))).collect();
            serde_json::Value::Object(sorted.into_iter().map(|(k, v)| (k.clone(), v)).collect())
        }
        serde_json::Value::Array(items) => serde_json::Value::Array(items.iter().map(sort_value).collect()),
        other => other.clone(),
    }
}
