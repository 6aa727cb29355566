//! Resolving what a stage `uses` to the code that runs it, and that code's identity for the key.

use std::collections::BTreeMap;

use crate::builtin::{Builtin, ParamError};
use crate::plan::key::BackendIdentity;
use crate::study::{Stage, Study, StudyError, Uses, locate_param};

/// Every built-in stage kind.
pub fn builtins() -> [&'static dyn Builtin; 2] {
    [&crate::builtin::command::Command, &crate::builtin::dataset::Dataset]
}

/// The code that runs a stage.
#[derive(Clone, Copy)]
pub enum Backend {
    /// A built-in, run in-process.
    Builtin(&'static dyn Builtin),
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Builtin(b) => write!(f, "Builtin({})", b.name()),
        }
    }
}

impl Backend {
    /// Resolves the stage's `uses` and validates its params, with errors located in the study.
    pub fn resolve(study: &Study, stage: &Stage) -> Result<Backend, StudyError> {
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
            Uses::Plugin { plugin, .. } => Err(StudyError::at(
                &study.source,
                stage.origin.uses.clone(),
                format!("plugin `{plugin}` not found"),
                "used here",
            )
            .with_help("this rto has no plugin system yet; built-ins are `command` and `dataset`")),
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
