//! Resolving what a stage `uses` to the code that runs it, and that code's identity for the key.

use std::collections::BTreeMap;
use std::sync::Arc;

use cache::{ObjectDigest, StatIndex};

use crate::builtin::{Builtin, ParamError};
use crate::plan::key::BackendIdentity;
use crate::plugin::{Found, Registry, Source};
use crate::study::{Stage, Study, StudyError, Uses, locate_param};

/// Every built-in stage kind.
pub fn builtins() -> [&'static dyn Builtin; 4] {
    [
        &crate::builtin::command::Command,
        &crate::builtin::dataset::Dataset,
        &crate::builtin::report::Report,
        &crate::builtin::synthetic::Synthetic,
    ]
}

/// The code that runs a stage.
#[derive(Clone)]
pub enum Backend {
    /// A built-in, run in-process.
    Builtin(&'static dyn Builtin),
    /// An op of a plugin, run in a worker process.
    Plugin(Arc<PluginOp>),
}

/// A plugin op a stage uses.
#[derive(Debug)]
pub struct PluginOp {
    /// The plugin, as discovery found it.
    pub found: Found,
    /// The op.
    pub op: String,
    /// sha256 of the plugin's library file (`None` for plugins linked into rto, identified by rto's version).
    pub digest: Option<ObjectDigest>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Builtin(b) => write!(f, "Builtin({})", b.name()),
            Backend::Plugin(p) => write!(f, "Plugin({}:{})", p.found.name, p.op),
        }
    }
}

impl Backend {
    /// Resolves the stage's `uses` and validates built-ins' params, with errors located in the study. A
    /// plugin's library is hashed (through the stat index) for its identity, but not loaded.
    pub fn resolve(study: &Study, stage: &Stage, plugins: &Registry, index: &StatIndex) -> Result<Backend, StudyError> {
        match &stage.uses {
            Uses::Builtin(name) => {
                let Some(b) = builtins().into_iter().find(|b| b.name() == name) else {
                    let known = builtins().iter().map(|b| format!("`{}`", b.name())).collect::<Vec<_>>().join(", ");
                    return Err(StudyError::at(
                        &study.source,
                        stage.origin.uses.clone(),
                        format!("unknown built-in `{name}`"),
                        "here",
                    )
                    .with_help(format!("built-ins are {known}; plugin ops are written `plugin:op`")));
                };
                let names: Vec<&str> = stage.inputs.keys().map(String::as_str).collect();
                b.validate(&stage.params, &names).map_err(|e| param_error(study, stage, e))?;
                Ok(Backend::Builtin(b))
            }
            Uses::Plugin { plugin, op } => {
                let Some(found) = plugins.find(plugin) else {
                    let known = plugins.plugins.iter().map(|p| format!("`{}`", p.name)).collect::<Vec<_>>();
                    let mut help = if known.is_empty() {
                        "no plugins were found; see `rto plugins` for where rto looks".to_string()
                    } else {
                        format!("plugins found: {} (see `rto plugins`)", known.join(", "))
                    };
                    for problem in &plugins.problems {
                        help.push_str(&format!("\nskipped: {problem}"));
                    }
                    return Err(StudyError::at(
                        &study.source,
                        stage.origin.uses.clone(),
                        format!("plugin `{plugin}` not found"),
                        "used here",
                    )
                    .with_help(help));
                };
                if !found.ops.iter().any(|o| o == op) {
                    let ops = found.ops.iter().map(|o| format!("`{o}`")).collect::<Vec<_>>().join(", ");
                    return Err(StudyError::at(
                        &study.source,
                        stage.origin.uses.clone(),
                        format!("plugin `{plugin}` has no op `{op}`"),
                        "here",
                    )
                    .with_help(format!("its ops are {ops}")));
                }
                let digest = match &found.source {
                    Source::Linked => None,
                    Source::Library { library, .. } => Some(
                        index
                            .artifact_of(library)
                            .map_err(|e| {
                                StudyError::at(
                                    &study.source,
                                    stage.origin.uses.clone(),
                                    format!("cannot hash plugin `{plugin}`: {e}"),
                                    "here",
                                )
                            })?
                            .digest,
                    ),
                };
                Ok(Backend::Plugin(Arc::new(PluginOp { found: found.clone(), op: op.clone(), digest })))
            }
        }
    }

    /// The identity that enters the action key.
    pub fn identity(&self) -> BackendIdentity {
        match self {
            Backend::Builtin(b) => BackendIdentity {
                name: format!("builtin:{}", b.name()),
                version: format!("{}+r{}", env!("CARGO_PKG_VERSION"), b.revision()),
                digest: None,
            },
            Backend::Plugin(p) => BackendIdentity {
                name: p.found.name.clone(),
                version: match p.found.source {
                    // A linked plugin changes with the binary it is linked into.
                    Source::Linked => format!("{}+rto-{}", p.found.version, env!("CARGO_PKG_VERSION")),
                    Source::Library { .. } => p.found.version.clone(),
                },
                digest: p.digest,
            },
        }
    }

    /// Top-level params of this op that cannot change its results, left out of the action key.
    pub fn unkeyed_params(&self) -> &[String] {
        match self {
            Backend::Builtin(_) => &[],
            Backend::Plugin(p) => p.found.unkeyed_params.get(&p.op).map_or(&[], Vec::as_slice),
        }
    }

    /// Environment facts the back-end declares relevant to its results.
    pub fn env_facts(&self) -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    /// A short name for logs and provenance.
    pub fn label(&self) -> String {
        let id = self.identity();
        format!("{}@{}", id.name, id.version)
    }
}

/// A built-in's param error, located in the study's `params` table.
pub fn param_error(study: &Study, stage: &Stage, e: ParamError) -> StudyError {
    let span = locate_param(&study.source, stage.origin.table, &e.path)
        .or(stage.origin.params.clone())
        .unwrap_or(stage.origin.span.clone());
    let at = if e.path.is_empty() { "params".to_string() } else { format!("params.{}", e.path.join(".")) };
    StudyError::at(&study.source, span, format!("stage `{}`: `{at}`: {}", stage.id, e.message), "here")
}
