//! Plugins on the host side: discovery from manifests, identity for action keys, and running ops in worker
//! processes. The ABI itself is the `api` crate (`plugins/api`).
//!
//! **Invariant:** the orchestrator process never opens a plugin library: libraries are opened only in
//! `rto worker` processes. Plugins linked into `rto` are described in-process (reading their static tables)
//! but their ops run in workers too, so every op gets the same isolation.

pub mod load;
pub mod manifest;
pub mod registry;
pub mod worker;

pub use registry::{Found, LinkedPlugin, Registry, Source};

use std::collections::BTreeMap;

use crate::backend::{Backend, param_error};
use crate::builtin::ParamError;
use crate::study::{Study, StudyError};

/// Checks the params of the given plugin stages before anything runs: one worker per plugin, which calls each
/// op's `validate`. The first bad param is returned as a located study error. Stages that are cached need no
/// check (and a no-op run must load no plugin), so the caller passes only the stages that may run.
pub fn validate_stages(
    study: &Study,
    backends: &[Backend],
    stages: &[usize],
    scratch: &std::path::Path,
) -> Result<(), StudyError> {
    let mut by_plugin: BTreeMap<String, (worker::Which, Vec<usize>)> = BTreeMap::new();
    for &i in stages {
        let Backend::Plugin(p) = &backends[i] else { continue };
        let which = match &p.found.source {
            Source::Library { library, .. } => worker::Which::Library(library.clone()),
            Source::Linked => worker::Which::Linked(p.found.name.clone()),
        };
        by_plugin.entry(p.found.name.clone()).or_insert_with(|| (which, Vec::new())).1.push(i);
    }
    for (name, (which, indices)) in by_plugin {
        let checks: Vec<serde_json::Value> = indices
            .iter()
            .map(|&i| {
                let stage = &study.stages[i];
                let Backend::Plugin(p) = &backends[i] else { unreachable!("grouped plugin stages") };
                serde_json::json!({
                    "op": p.op, "stage_id": stage.id, "params": stage.params,
                    "inputs": stage.inputs.keys().collect::<Vec<_>>(),
                })
            })
            .collect();
        let request = api::protocol::Request {
            protocol: api::protocol::PROTOCOL_VERSION.into(),
            stage_id: "validate".into(),
            params: serde_json::json!({ "checks": checks }),
            inputs: Default::default(),
            out_dir: scratch.into(),
            scratch_dir: scratch.into(),
            gpus: vec![],
            validate_only: true,
        };
        let mut log = Vec::new();
        let fail = |message: String| StudyError::whole(message);
        let ended = worker::run(&which, worker::VALIDATE, &request, scratch, &mut log, &|_, _| {}, &|| false, None)
            .map_err(|e| fail(format!("cannot check the params of plugin `{name}`: {e:#}")))?;
        let results = match ended {
            worker::Ended::Ok(v) => v,
            worker::Ended::OpError { reply, .. } => return Err(fail(format!("plugin `{name}`: {}", reply.message))),
            worker::Ended::Crashed(why) => {
                return Err(fail(format!(
                    "plugin `{name}` crashed while checking params: {why}\n{}",
                    String::from_utf8_lossy(&log).trim()
                )));
            }
            worker::Ended::Cancelled | worker::Ended::TimedOut(_) => return Err(fail("interrupted".into())),
        };
        for (r, &i) in results.as_array().into_iter().flatten().zip(&indices) {
            let Some(reply) = r.get("error").filter(|e| !e.is_null()) else { continue };
            let message = reply["message"].as_str().unwrap_or("invalid").to_string();
            let path: Vec<String> = reply["param_path"]
                .as_array()
                .map(|p| p.iter().filter_map(|s| s.as_str().map(String::from)).collect())
                .unwrap_or_default();
            return Err(param_error(study, &study.stages[i], ParamError { path, message }));
        }
    }
    Ok(())
}
