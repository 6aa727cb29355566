//! Why a stage runs: one enum that `rto plan`, `rto why` and the run log all print.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::key::ActionPreimage;

/// Why a stage is not a cache hit: the first field of the pre-image that differs from the last recorded run
/// of the same stage id, in a fixed order, or a status that needs no comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "kebab-case")]
pub enum StaleReason {
    /// The stage id has never run successfully in this cache.
    NoPreviousRun,
    /// The user asked for it with `--force`.
    Forced,
    /// The key computation changed (a newer rto).
    SchemaChanged {
        /// Previous schema.
        old: u32,
        /// Current schema.
        new: u32,
    },
    /// The stage now uses another built-in or plugin op.
    UsesChanged {
        /// Previous `uses`.
        old: String,
        /// Current `uses`.
        new: String,
    },
    /// The back-end's identity changed (a rebuilt plugin, a new rto).
    BackendChanged {
        /// `name`, `version` or `digest`.
        field: String,
        /// Previous value.
        old: String,
        /// Current value.
        new: String,
    },
    /// A param changed, was added (`old` is null) or removed (`new` is null).
    ParamChanged {
        /// TOML-style path, e.g. `params.optimizer.lr`.
        path: String,
        /// Previous value.
        old: Option<serde_json::Value>,
        /// Current value.
        new: Option<serde_json::Value>,
    },
    /// An input's content changed (an upstream stage produced something else, or a file was edited).
    InputChanged {
        /// Input name.
        name: String,
        /// Previous digest (short).
        old: String,
        /// Current digest (short).
        new: String,
    },
    /// An input was added.
    InputAdded {
        /// Input name.
        name: String,
    },
    /// An input was removed.
    InputRemoved {
        /// Input name.
        name: String,
    },
    /// A declared environment fact changed.
    EnvChanged {
        /// Fact name.
        name: String,
        /// Previous value.
        old: Option<String>,
        /// Current value.
        new: Option<String>,
    },
    /// A remote input is not downloaded yet, so the key is not known (plan only; `rto run` downloads it).
    InputNotFetched {
        /// Input name.
        name: String,
    },
    /// The pre-image is the same as last time, but the record is gone (`rto gc`, `rto verify`, another cache).
    ResultMissing,
    /// The pre-images differ in a way no case above describes. Seeing this often means `compare` needs a
    /// new case.
    Other,
}

impl fmt::Display for StaleReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show =
            |v: &Option<serde_json::Value>| v.as_ref().map(|v| v.to_string()).unwrap_or_else(|| "(unset)".into());
        match self {
            StaleReason::NoPreviousRun => write!(f, "never ran"),
            StaleReason::Forced => write!(f, "forced with `--force`"),
            StaleReason::SchemaChanged { old, new } => write!(f, "key schema changed from {old} to {new}"),
            StaleReason::UsesChanged { old, new } => write!(f, "`uses` changed from `{old}` to `{new}`"),
            StaleReason::BackendChanged { field, old, new } => {
                write!(f, "back-end {field} changed from `{old}` to `{new}`")
            }
            StaleReason::ParamChanged { path, old, new } => {
                write!(f, "`{path}` changed from {} to {}", show(old), show(new))
            }
            StaleReason::InputChanged { name, old, new } => write!(f, "input `{name}` changed ({old} → {new})"),
            StaleReason::InputAdded { name } => write!(f, "input `{name}` was added"),
            StaleReason::InputRemoved { name } => write!(f, "input `{name}` was removed"),
            StaleReason::EnvChanged { name, old, new } => write!(
                f,
                "environment fact `{name}` changed from `{}` to `{}`",
                old.as_deref().unwrap_or("(unset)"),
                new.as_deref().unwrap_or("(unset)")
            ),
            StaleReason::InputNotFetched { name } => write!(f, "remote input `{name}` is not downloaded yet"),
            StaleReason::ResultMissing => {
                write!(f, "same inputs as last time, but the result is no longer in the cache")
            }
            StaleReason::Other => write!(f, "the pre-image changed in an unrecognised way"),
        }
    }
}

/// Every difference between the last recorded pre-image and the current one, in a fixed order: schema, uses,
/// back-end, params, inputs, env. Empty when they are equal.
pub fn differences(old: &ActionPreimage, new: &ActionPreimage) -> Vec<StaleReason> {
    let mut out = Vec::new();
    if old.schema != new.schema {
        out.push(StaleReason::SchemaChanged { old: old.schema, new: new.schema });
    }
    if old.uses != new.uses {
        out.push(StaleReason::UsesChanged { old: old.uses.clone(), new: new.uses.clone() });
    }
    let (ob, nb) = (&old.backend, &new.backend);
    let digest = |d: &Option<cache::ObjectDigest>| d.map(|d| d.short()).unwrap_or_else(|| "none".into());
    for (field, o, n) in [
        ("name", ob.name.clone(), nb.name.clone()),
        ("version", ob.version.clone(), nb.version.clone()),
        ("digest", digest(&ob.digest), digest(&nb.digest)),
    ] {
        if o != n {
            out.push(StaleReason::BackendChanged { field: field.into(), old: o, new: n });
        }
    }
    diff_values("params", Some(&old.params), Some(&new.params), &mut out);
    let names: std::collections::BTreeSet<&String> = old.inputs.keys().chain(new.inputs.keys()).collect();
    for name in names {
        match (old.inputs.get(name), new.inputs.get(name)) {
            (Some(o), Some(n)) if o != n => {
                out.push(StaleReason::InputChanged { name: name.clone(), old: o.digest.short(), new: n.digest.short() })
            }
            (None, Some(_)) => out.push(StaleReason::InputAdded { name: name.clone() }),
            (Some(_), None) => out.push(StaleReason::InputRemoved { name: name.clone() }),
            _ => {}
        }
    }
    let names: std::collections::BTreeSet<&String> = old.env.keys().chain(new.env.keys()).collect();
    for name in names {
        let (o, n) = (old.env.get(name), new.env.get(name));
        if o != n {
            out.push(StaleReason::EnvChanged { name: name.clone(), old: o.cloned(), new: n.cloned() });
        }
    }
    if out.is_empty() && old.key() != new.key() {
        out.push(StaleReason::Other);
    }
    out
}

/// The first difference, or `None` if the pre-images are equal.
pub fn compare(old: &ActionPreimage, new: &ActionPreimage) -> Option<StaleReason> {
    differences(old, new).into_iter().next()
}

fn diff_values(
    path: &str,
    old: Option<&serde_json::Value>,
    new: Option<&serde_json::Value>,
    out: &mut Vec<StaleReason>,
) {
    use serde_json::Value;
    match (old, new) {
        (Some(Value::Object(o)), Some(Value::Object(n))) => {
            let keys: std::collections::BTreeSet<&String> = o.keys().chain(n.keys()).collect();
            for k in keys {
                diff_values(&format!("{path}.{}", toml_key(k)), o.get(k), n.get(k), out);
            }
        }
        (Some(Value::Array(o)), Some(Value::Array(n))) if o.len() == n.len() => {
            for (i, (a, b)) in o.iter().zip(n).enumerate() {
                diff_values(&format!("{path}[{i}]"), Some(a), Some(b), out);
            }
        }
        (o, n) if o != n => out.push(StaleReason::ParamChanged { path: path.into(), old: o.cloned(), new: n.cloned() }),
        _ => {}
    }
}

/// A key as it would be written in a TOML dotted path (quoted when needed).
fn toml_key(k: &str) -> String {
    if !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        k.to_string()
    } else {
        format!("{k:?}")
    }
}
