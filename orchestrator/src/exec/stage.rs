//! Running one stage on a worker thread: lock, re-check, run the back-end in a scratch directory, store its
//! outputs, write the record.

use std::collections::BTreeMap;
use std::io::Write;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::time::{Instant, SystemTime};

use anyhow::Context;
use cache::{ActionKey, ActionRecord, Artifact, Provenance, RECORD_SCHEMA, RunDir, Store, Tree};

use crate::backend::Backend;
use crate::builtin::StageContext;
use crate::plan::key::ActionPreimage;

/// Everything a worker thread needs to run one stage.
pub struct Job {
    /// Stage index in the study.
    pub index: usize,
    /// Stage id.
    pub id: String,
    /// Its back-end.
    pub backend: Backend,
    /// Wall-clock limit for a plugin op.
    pub timeout: Option<std::time::Duration>,
    /// Canonical params.
    pub params: serde_json::Value,
    /// Input name → where its content is: a file of the study, or an artifact in the store.
    pub inputs: BTreeMap<String, JobInput>,
    /// The stage's pre-image and key.
    pub preimage: ActionPreimage,
    /// Its key.
    pub key: ActionKey,
    /// GPUs reserved for it.
    pub gpus: Vec<String>,
    /// The store.
    pub store: Store,
    /// The run's directory (for the stage log).
    pub run: RunDir,
    /// Set on Ctrl-C.
    pub cancelled: Arc<AtomicBool>,
    /// Re-run even if another process recorded the key meanwhile.
    pub forced: bool,
}

/// Where an input's content is.
pub enum JobInput {
    /// A file or directory of the study, by absolute path.
    Path(PathBuf),
    /// An artifact in the store, named as its stage named the output; a tree built from all of a stage's
    /// outputs is stored before use.
    Artifact(Artifact, Option<Tree>, String),
}

/// What a worker thread reports.
pub enum Event {
    /// The stage reported progress.
    Progress(usize, u64, u64),
    /// The stage waits for another process that holds its key's lock.
    Waiting(usize, String),
    /// News from the executor for people, e.g. a Slurm job started on a node.
    Status(usize, String),
    /// The stage finished (or was found done by another process).
    Finished(usize, Box<Outcome>),
}

/// How a job ended.
pub enum Outcome {
    /// It ran and its record is written.
    Ran(ActionRecord),
    /// Another process recorded the same key while this one waited for the lock.
    FoundDone(ActionRecord),
    /// It failed; the error and the tail of its log.
    Failed {
        /// What went wrong.
        error: String,
        /// For a plugin's bad param: its path inside `params`, so the error can point into the study.
        param: Option<crate::builtin::ParamError>,
        /// The end of the stage's log.
        log_tail: String,
        /// How long it ran.
        duration_ms: u64,
        /// True if it stopped because the run was interrupted.
        interrupted: bool,
    },
}

/// Runs the job to completion and reports through `events`.
pub fn run(job: Job, events: Sender<Event>) {
    let index = job.index;
    let started = Instant::now();
    let outcome = match execute(&job, &events, started) {
        Ok(outcome) => outcome,
        Err(e) => {
            let log = job.run.stage_log(&job.id);
            Outcome::Failed {
                param: e.downcast_ref::<crate::builtin::ParamError>().cloned(),
                error: format!("{e:#}"),
                log_tail: tail(&log, 20),
                duration_ms: started.elapsed().as_millis() as u64,
                interrupted: job.cancelled.load(Ordering::SeqCst),
            }
        }
    };
    let _ = events.send(Event::Finished(index, Box::new(outcome)));
}

fn execute(job: &Job, events: &Sender<Event>, started: Instant) -> anyhow::Result<Outcome> {
    let store = &job.store;
    let index = job.index;
    let cancelled = || job.cancelled.load(Ordering::SeqCst);
    let lock = store
        .lock_unless(
            &job.key,
            |holder| {
                let _ = events.send(Event::Waiting(index, holder.to_string()));
            },
            &cancelled,
        )
        .context("cannot take the stage's lock")?;
    let Some(_lock) = lock else { anyhow::bail!("cancelled while waiting for another run of the same work") };
    if !job.forced
        && let Some(record) = store.get_action(&job.key)?
    {
        return Ok(Outcome::FoundDone(record));
    }
    let start_wall = SystemTime::now();
    let log_path = job.run.stage_log(&job.id);
    let mut log =
        std::fs::File::create(&log_path).with_context(|| format!("cannot create `{}`", log_path.display()))?;
    writeln!(log, "# stage `{}` key {} ({})", job.id, job.key, job.backend.label())?;

    let scratch = store.scratch_dir(&job.id)?;
    let out_dir = scratch.path().join("out");
    let work_dir = scratch.path().join("scratch");
    std::fs::create_dir(&out_dir)?;
    std::fs::create_dir(&work_dir)?;
    let mut inputs = BTreeMap::new();
    for (name, input) in &job.inputs {
        let path = match input {
            JobInput::Path(p) => p.clone(),
            JobInput::Artifact(a, tree, file_name) => {
                if let Some(tree) = tree {
                    store.put_tree(tree)?;
                }
                let stored = store.checkout(a).with_context(|| format!("cannot check out input `{name}`"))?;
                if a.kind == cache::ArtifactKind::File {
                    // A private hard link under the output's own name: the extension is kept (readers infer
                    // formats from it), and a tool that replaces the file (`sed -i`) replaces the link, not the
                    // object in the store.
                    let dir = scratch.path().join("inputs").join(name);
                    std::fs::create_dir_all(&dir)?;
                    let link = dir.join(file_name);
                    if std::fs::hard_link(&stored, &link).is_err() {
                        std::fs::copy(&stored, &link)?;
                    }
                    link
                } else {
                    stored
                }
            }
        };
        writeln!(log, "# input {name} = {}", path.display())?;
        inputs.insert(name.clone(), path);
    }

    // The key was taken over the input files' content at plan time; if one changes while the stage runs, the
    // result would be recorded under a digest it was not computed from.
    let stamps: Vec<(String, PathBuf, Option<Stamp>)> = job
        .inputs
        .iter()
        .filter_map(|(name, i)| match i {
            JobInput::Path(p) => Some((name.clone(), p.clone(), stamp(p))),
            JobInput::Artifact(..) => None,
        })
        .collect();
    let progress = |done: u64, total: u64| {
        let _ = events.send(Event::Progress(index, done, total));
    };
    if !job.gpus.is_empty() {
        writeln!(log, "# CUDA_VISIBLE_DEVICES={}", job.gpus.join(","))?;
    }
    let result = match &job.backend {
        Backend::Builtin(builtin) => {
            let mut ctx = StageContext {
                stage_id: &job.id,
                params: &job.params,
                inputs: &inputs,
                out_dir: &out_dir,
                scratch_dir: &work_dir,
                gpus: &job.gpus,
                log: &mut log,
                progress: &progress,
                cancelled: &cancelled,
            };
            std::panic::catch_unwind(AssertUnwindSafe(|| builtin.run(&mut ctx))).unwrap_or_else(|panic| {
                Err(anyhow::anyhow!("built-in `{}` panicked: {}", builtin.name(), panic_text(&panic)))
            })
        }
        Backend::Plugin(p) => run_plugin(job, p, &inputs, &out_dir, scratch.path(), &mut log, &progress, &cancelled),
    };
    if let Err(e) = result {
        let _ = writeln!(log, "# failed: {e:#}");
        return Err(e);
    }

    for (name, path, before) in &stamps {
        if stamp(path) != *before {
            anyhow::bail!("input `{name}` (`{}`) changed while the stage ran; run again", path.display());
        }
    }
    let mut outputs = BTreeMap::new();
    let mut entries: Vec<_> = std::fs::read_dir(&out_dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name().into_string().map_err(|n| anyhow::anyhow!("output name {n:?} is not UTF-8"))?;
        let artifact = store.ingest(&entry.path())?;
        writeln!(log, "# output {name} = {:?} {} ({} bytes)", artifact.kind, artifact.digest, artifact.size)?;
        outputs.insert(name, artifact);
    }
    let duration_ms = started.elapsed().as_millis() as u64;
    let record = ActionRecord {
        schema: RECORD_SCHEMA,
        key: job.key,
        preimage: job.preimage.to_json(),
        outputs,
        provenance: Provenance {
            backend: job.backend.label(),
            host: cache::host_name(),
            pid: std::process::id(),
            run: job.run.id.clone(),
            start: humantime::format_rfc3339_millis(start_wall).to_string(),
            end: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            duration_ms,
            exit_status: 0,
        },
    };
    store.put_action(&record)?;
    writeln!(log, "# done in {duration_ms} ms")?;
    Ok(Outcome::Ran(record))
}

/// Size and modification time.
type Stamp = (u64, std::time::SystemTime);

/// Size and mtime of a file (for directories, of the directory entry itself, which changes when entries are
/// added or removed; edits deeper down are not seen).
fn stamp(path: &std::path::Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()?))
}

/// Runs a plugin op in a worker process. Its scratch directory is per action key and survives a failed or
/// interrupted attempt, so an op can resume from its own checkpoints; it is removed once the action succeeds.
#[allow(clippy::too_many_arguments)]
fn run_plugin(
    job: &Job,
    p: &crate::backend::PluginOp,
    inputs: &BTreeMap<String, PathBuf>,
    out_dir: &std::path::Path,
    attempt_dir: &std::path::Path,
    log: &mut std::fs::File,
    progress: &dyn Fn(u64, u64),
    cancelled: &dyn Fn() -> bool,
) -> anyhow::Result<()> {
    use crate::plugin::worker::{self, Ended, Which};
    let which = match &p.found.source {
        crate::plugin::Source::Library { library, .. } => Which::Library(library.clone()),
        crate::plugin::Source::Linked => Which::Linked(p.found.name.clone()),
    };
    let resume_dir = job.store.root().join("tmp").join(format!("resume-{}", job.key.to_hex()));
    std::fs::create_dir_all(&resume_dir)?;
    let request = api::protocol::Request {
        protocol: api::protocol::PROTOCOL_VERSION.into(),
        stage_id: job.id.clone(),
        params: job.params.clone(),
        inputs: inputs.clone(),
        out_dir: out_dir.to_path_buf(),
        scratch_dir: resume_dir.clone(),
        gpus: job.gpus.clone(),
        validate_only: false,
    };
    let label = format!("{}:{}", p.found.name, p.op);
    match worker::run(&which, &p.op, &request, attempt_dir, log, progress, cancelled, job.timeout)? {
        Ended::Ok(_) => {
            let _ = std::fs::remove_dir_all(&resume_dir);
            Ok(())
        }
        Ended::OpError { status, reply } => match reply.param_path {
            Some(path) if status == api::ffi::STATUS_BAD_INPUT => {
                Err(anyhow::Error::new(crate::builtin::ParamError { path, message: reply.message }))
            }
            _ => anyhow::bail!("`{label}`: {}", reply.message),
        },
        Ended::Crashed(why) => anyhow::bail!("`{label}`: {why}"),
        Ended::Cancelled => anyhow::bail!("cancelled"),
        Ended::TimedOut(limit) => {
            anyhow::bail!("`{label}` ran past its timeout of {} and was stopped", humantime::format_duration(limit))
        }
    }
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// The last `n` lines of a file (empty if unreadable).
pub fn tail(path: &std::path::Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
