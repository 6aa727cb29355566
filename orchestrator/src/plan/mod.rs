//! Planning: from a loaded study to the DAG, each stage's back-end, and each stage's action key and status.
//!
//! A stage's key needs the digests of its inputs. File inputs are hashed up front (through the cache's stat
//! index, so unchanged files are not re-read). Upstream outputs are known only once the upstream stage is
//! cached or has run: until then the stage is *blocked*, and its key is computed when they arrive. This is
//! what makes early cut-off work: an upstream stage that re-runs and produces byte-identical outputs leaves
//! its dependants' keys, and so their cache hits, unchanged.

pub mod graph;
pub mod key;
pub mod reason;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use cache::{ActionKey, ActionRecord, Artifact, StatIndex, Store, Tree, TreeEntry};
use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::remote::Remote;
use crate::study::{InputSource, Study, StudyError};
use graph::Dag;
use key::{ActionPreimage, InputDigest, KEY_SCHEMA};
use reason::StaleReason;

/// A study ready to be run: its DAG, back-ends and file-input digests.
pub struct Planned<'s> {
    /// The study.
    pub study: &'s Study,
    /// Its DAG.
    pub dag: Dag,
    /// Per stage, its back-end.
    pub backends: Vec<Backend>,
    files: HashMap<PathBuf, Artifact>,
    remotes: HashMap<Remote, Option<PathBuf>>,
}

/// What planning does with remote inputs (`hf://…`, pinned URLs).
#[derive(Debug, Clone, Copy)]
pub enum Remotes<'a> {
    /// Download what is missing into this `downloads/` directory (a run).
    Fetch(&'a Path),
    /// Use only what is already downloaded there (a plan: planning never touches the network); stages whose
    /// remote inputs are missing will run, with a key known only after the download.
    CachedOnly(&'a Path),
}

/// The last successful run of a stage id, kept as a ref in the cache: what `rto why` compares against.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LastRun {
    /// The action key it was satisfied with.
    pub key: ActionKey,
    /// The run that satisfied it.
    pub run: String,
}

/// An upstream output that a stage needs but that the upstream stage did not produce.
#[derive(Debug, Clone)]
pub struct MissingOutput {
    /// The input's name.
    pub input: String,
    /// The error, located at the input reference.
    pub error: StudyError,
}

impl<'s> Planned<'s> {
    /// Builds the DAG, resolves back-ends (validating params) and hashes file inputs. Touches the cache only
    /// to read and extend the stat index.
    pub fn new(
        study: &'s Study,
        index: &StatIndex,
        remotes: Remotes<'_>,
        plugins: &crate::plugin::Registry,
    ) -> Result<Planned<'s>, StudyError> {
        let dag = graph::build(study)?;
        let backends =
            study.stages.iter().map(|s| Backend::resolve(study, s, plugins, index)).collect::<Result<Vec<_>, _>>()?;
        let mut files = HashMap::new();
        let mut fetched: HashMap<Remote, Option<PathBuf>> = HashMap::new();
        for stage in &study.stages {
            for input in stage.inputs.values() {
                let InputSource::Remote(remote) = &input.source else { continue };
                if fetched.contains_key(remote) {
                    continue;
                }
                let local = match remotes {
                    Remotes::CachedOnly(downloads) => crate::remote::fetched(remote, downloads),
                    Remotes::Fetch(downloads) => {
                        let mut log = |line: &str| eprintln!("{:>12} {line}", "Fetching");
                        let path = crate::remote::fetch(remote, downloads, &mut log).map_err(|e| {
                            StudyError::at(&study.source, input.span.clone(), format!("{e:#}"), "this input")
                        })?;
                        Some(path)
                    }
                };
                fetched.insert(remote.clone(), local);
            }
        }
        for stage in &study.stages {
            for input in stage.inputs.values() {
                let path = match &input.source {
                    InputSource::Path(p) => Some(p),
                    InputSource::Remote(r) => fetched[r].as_ref(),
                    InputSource::Stage { .. } => None,
                };
                if let Some(p) = path
                    && !files.contains_key(p)
                {
                    let artifact = index.artifact_of(p).map_err(|e| {
                        StudyError::at(
                            &study.source,
                            input.span.clone(),
                            format!("cannot hash input: {e}"),
                            "this input",
                        )
                    })?;
                    files.insert(p.clone(), artifact);
                }
            }
        }
        Ok(Planned { study, dag, backends, files, remotes: fetched })
    }

    /// The pre-image of stage `i`, given the outputs of the stages finished so far; `Ok(None)` while an
    /// upstream stage has not finished.
    pub fn preimage(
        &self,
        i: usize,
        outputs: &[Option<BTreeMap<String, Artifact>>],
    ) -> Result<Option<ActionPreimage>, MissingOutput> {
        let stage = &self.study.stages[i];
        let mut inputs = BTreeMap::new();
        for (name, input) in &stage.inputs {
            let artifact = match self.resolve_input(&input.source, outputs) {
                Ok(Some(a)) => a,
                Ok(None) => return Ok(None),
                Err(message) => {
                    let error = StudyError::at(&self.study.source, input.span.clone(), message, "this input");
                    return Err(MissingOutput { input: name.clone(), error });
                }
            };
            inputs.insert(name.clone(), InputDigest { kind: artifact.kind, digest: artifact.digest });
        }
        let backend = &self.backends[i];
        let mut env = backend.env_facts();
        if stage.resources.gpus > 0 {
            // How many devices a stage trains on changes its result (data parallelism, batch per device).
            env.insert("gpus".into(), stage.resources.gpus.to_string());
        }
        Ok(Some(ActionPreimage {
            schema: KEY_SCHEMA,
            uses: stage.uses.to_string(),
            backend: backend.identity(),
            params: keyed_params(&stage.params, backend.unkeyed_params()),
            inputs,
            env,
        }))
    }

    /// The artifact an input refers to: `Ok(None)` while its stage has not finished; `Err` if the stage
    /// finished without the named output.
    pub fn resolve_input(
        &self,
        source: &InputSource,
        outputs: &[Option<BTreeMap<String, Artifact>>],
    ) -> Result<Option<Artifact>, String> {
        match source {
            InputSource::Path(p) => Ok(Some(self.files[p])),
            InputSource::Remote(r) => Ok(self.remotes[r].as_ref().map(|p| self.files[p])),
            InputSource::Stage { stage, output } => {
                let j = self.index_of(stage);
                let Some(outs) = &outputs[j] else { return Ok(None) };
                match output {
                    Some(name) => outs.get(name).copied().map(Some).ok_or_else(|| {
                        let have = outs.keys().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ");
                        format!(
                            "stage `{stage}` has no output `{name}` (it produced: {})",
                            if have.is_empty() { "nothing".into() } else { have }
                        )
                    }),
                    None => Ok(Some(all_outputs_tree(outs).1)),
                }
            }
        }
    }

    /// The local path of a path or remote input (`None` for stage outputs and remote inputs not fetched).
    pub fn local_path(&self, source: &InputSource) -> Option<PathBuf> {
        match source {
            InputSource::Path(p) => Some(p.clone()),
            InputSource::Remote(r) => self.remotes[r].clone(),
            InputSource::Stage { .. } => None,
        }
    }

    /// The name of the first remote input of stage `i` that is not downloaded yet.
    pub fn unfetched(&self, i: usize) -> Option<String> {
        self.study.stages[i]
            .inputs
            .iter()
            .find(|(_, input)| matches!(&input.source, InputSource::Remote(r) if self.remotes[r].is_none()))
            .map(|(name, _)| name.clone())
    }

    /// The index of the stage with `id`.
    pub fn index_of(&self, id: &str) -> usize {
        self.study.stages.iter().position(|s| s.id == id).expect("references were checked when loading")
    }
}

/// All outputs of a stage as one directory tree (for an input written `stage-id` without an output name).
pub fn all_outputs_tree(outputs: &BTreeMap<String, Artifact>) -> (Tree, Artifact) {
    let tree = Tree::new(
        outputs
            .iter()
            .map(|(name, a)| TreeEntry {
                name: name.clone(),
                kind: a.kind,
                executable: false,
                size: a.size,
                digest: a.digest,
            })
            .collect(),
    );
    let artifact = Artifact { kind: cache::ArtifactKind::Tree, digest: tree.digest(), size: tree.size() };
    (tree, artifact)
}

/// The ref name under which the last run of a stage id is kept.
pub fn last_run_ref(study: &str, stage: &str) -> String {
    format!("last/{study}/{stage}")
}

/// Why the stage with this pre-image is not a cache hit, by comparison with its last recorded run.
pub fn stale_reason(store: &Store, study: &str, stage: &str, preimage: &ActionPreimage) -> StaleReason {
    let last = store
        .read_ref(&last_run_ref(study, stage))
        .ok()
        .flatten()
        .and_then(|v| serde_json::from_value::<LastRun>(v).ok());
    let Some(last) = last else { return StaleReason::NoPreviousRun };
    if last.key == preimage.key() {
        return StaleReason::ResultMissing;
    }
    match previous_preimage(store, &last.key) {
        Some(old) => reason::compare(&old, preimage).unwrap_or(StaleReason::Other),
        None => StaleReason::NoPreviousRun,
    }
}

/// The pre-image recorded under `key`, if the record exists and parses.
pub fn previous_preimage(store: &Store, key: &ActionKey) -> Option<ActionPreimage> {
    let record: ActionRecord = store.read_action_raw(key).ok()?;
    serde_json::from_value(record.preimage).ok()
}

/// `params` without the top-level keys the op declares unkeyed (connection and retry settings): what enters the
/// action key.
fn keyed_params(params: &serde_json::Value, unkeyed: &[String]) -> serde_json::Value {
    match params {
        serde_json::Value::Object(map) if !unkeyed.is_empty() => serde_json::Value::Object(
            map.iter().filter(|(k, _)| !unkeyed.contains(k)).map(|(k, v)| (k.clone(), v.clone())).collect(),
        ),
        other => other.clone(),
    }
}
