//! The job side: `rto run-stage`, which a Slurm job runs on its compute node to run exactly one stage.
//!
//! It loads the study from the snapshot the submitter stored (resolving relative paths against the study's own
//! directory, which must be on the shared filesystem), plans it against the shared cache, and finds the
//! outputs of every upstream stage in the cache: `afterok` guarantees their jobs succeeded, so a missing
//! record is an error, never a reason to run them here. It then computes the stage's key (for a stage queued
//! behind running jobs, this is the first time anyone knows it), and either finds it recorded (another job got
//! there first, or early cut-off) or runs the stage exactly as the local executor does — the same `stage::run`,
//! with its per-key lock and the store's commit protocol. Last it writes its receipt, since Slurm forgets
//! finished jobs; the exit code is 0 only if the stage's outputs are recorded, so `afterok` dependants start
//! only then.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::Context;
use cache::{RunDir, StatIndex, Store};

use super::files::{self, Ended, Layout, Receipt, Submitted};
use crate::exec::stage::{self, Event, Job, Outcome};
use crate::plan::{Planned, Remotes};

/// What `rto run-stage` is asked to do.
#[derive(Debug, Clone)]
pub struct StageRequest {
    /// The study file (for relative paths and messages).
    pub study: PathBuf,
    /// The study text to load (the submitter's snapshot).
    pub text: PathBuf,
    /// The stage id.
    pub stage: String,
    /// The submitting run (the stage's log goes to its directory).
    pub run: String,
    /// The key the submitter computed, when it knew it: the job refuses to run anything else.
    pub key: Option<String>,
    /// Run even if the key is recorded.
    pub force: bool,
}

/// Runs the request against the cache at `cache` and writes the receipt; the exit code is 0 if the stage's
/// outputs are recorded.
pub fn main(
    req: &StageRequest,
    cache: &Path,
    plugin_dirs: &[PathBuf],
    linked: &[crate::plugin::LinkedPlugin],
) -> ExitCode {
    let started = Instant::now();
    let job = std::env::var("SLURM_JOB_ID").unwrap_or_else(|_| format!("pid{}", std::process::id()));
    let layout = Layout::new(cache);
    let mut receipt = Receipt {
        schema: files::SCHEMA,
        job: job.clone(),
        study: String::new(),
        stage: req.stage.clone(),
        run: req.run.clone(),
        key: None,
        ended: Ended::Failed,
        error: None,
        log: None,
        log_tail: String::new(),
        duration_ms: 0,
        host: cache::host_name(),
    };
    if let Err(e) = run(req, cache, plugin_dirs, linked, &layout, &mut receipt) {
        let error = format!("{e:#}");
        eprintln!("error: {error}");
        receipt.ended = Ended::Failed;
        receipt.error = Some(error);
    }
    receipt.duration_ms = started.elapsed().as_millis() as u64;
    println!(
        "rto: stage `{}` {}{}",
        req.stage,
        match receipt.ended {
            Ended::Ran => "ran",
            Ended::Cached => "was already recorded",
            Ended::Failed => "failed",
        },
        receipt.key.as_deref().map(|k| format!(" (key {})", &k[..12.min(k.len())])).unwrap_or_default()
    );
    if let Err(e) = files::write_json(&layout.receipt(&job), &receipt) {
        eprintln!("error: cannot write the receipt `{}`: {e}", layout.receipt(&job).display());
        return ExitCode::from(1);
    }
    if receipt.ended == Ended::Failed { ExitCode::from(1) } else { ExitCode::SUCCESS }
}

fn run(
    req: &StageRequest,
    cache: &Path,
    plugin_dirs: &[PathBuf],
    linked: &[crate::plugin::LinkedPlugin],
    layout: &Layout,
    receipt: &mut Receipt,
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&req.text)
        .with_context(|| format!("cannot read the study snapshot `{}`", req.text.display()))?;
    let study = crate::study::load(&req.study, text).map_err(|e| anyhow::anyhow!(crate::render::one_line(&e)))?;
    receipt.study = study.name.clone();
    let registry = crate::plugin::Registry::discover(
        &crate::plugin::registry::search_dirs(plugin_dirs, &study.plugin_dirs),
        linked,
    );
    let index = StatIndex::load_at(cache);
    let downloads = cache.join("downloads");
    let planned = Planned::new(&study, &index, Remotes::CachedOnly(&downloads), &registry)
        .map_err(|e| anyhow::anyhow!(crate::render::one_line(&e)))?;
    let store = Store::open(cache).with_context(|| format!("cannot open the cache at `{}`", cache.display()))?;
    let _in_use = store.use_shared()?;
    let i = study
        .stages
        .iter()
        .position(|s| s.id == req.stage)
        .ok_or_else(|| anyhow::anyhow!("study `{}` has no stage `{}`", study.name, req.stage))?;

    // The outputs of every stage upstream of this one, from the cache.
    let n = study.stages.len();
    let mut needed = vec![false; n];
    let mut stack = planned.dag.upstream[i].clone();
    while let Some(j) = stack.pop() {
        if !std::mem::replace(&mut needed[j], true) {
            stack.extend(&planned.dag.upstream[j]);
        }
    }
    let mut outputs = vec![None; n];
    for &j in &planned.dag.order {
        if !needed[j] {
            continue;
        }
        let id = &study.stages[j].id;
        let preimage = match planned.preimage(j, &outputs) {
            Ok(Some(p)) => p,
            Ok(None) => anyhow::bail!("upstream stage `{id}` has a remote input that is not downloaded"),
            Err(missing) => anyhow::bail!(crate::render::one_line(&missing.error)),
        };
        let key = preimage.key();
        let record = store.get_action(&key)?.ok_or_else(|| {
            anyhow::anyhow!(
                "upstream stage `{id}` has no result in the cache (key {}); its job must succeed first",
                key.short()
            )
        })?;
        outputs[j] = Some(record.outputs);
    }

    let stage = &study.stages[i];
    let preimage = match planned.preimage(i, &outputs) {
        Ok(Some(p)) => p,
        Ok(None) => anyhow::bail!("input `{}` is not downloaded", planned.unfetched(i).unwrap_or_default()),
        Err(missing) => anyhow::bail!(crate::render::one_line(&missing.error)),
    };
    let key = preimage.key();
    receipt.key = Some(key.to_hex());
    if let Some(expected) = &req.key
        && *expected != key.to_hex()
    {
        anyhow::bail!(
            "this job was submitted for key {} but the stage's key is now {}: an input changed since submission; run \
             `rto run` again",
            &expected[..12.min(expected.len())],
            key.short()
        );
    }
    // A stage queued behind running jobs is known by its key only now: record it, so that a later `rto run`,
    // which knows the key, attaches to this job instead of submitting the stage again.
    let mine = Submitted {
        schema: files::SCHEMA,
        job: receipt.job.clone(),
        study: study.name.clone(),
        stage: stage.id.clone(),
        run: req.run.clone(),
    };
    if let Err(e) = files::write_json(&layout.submitted(&key.to_hex()), &mine) {
        eprintln!("warning: cannot record this job under its key: {e}");
    }
    if !req.force && store.get_action(&key)?.is_some() {
        receipt.ended = Ended::Cached;
        return Ok(());
    }

    let run = RunDir { id: req.run.clone(), path: store.run_path(&req.run) };
    std::fs::create_dir_all(&run.path).with_context(|| format!("cannot create `{}`", run.path.display()))?;
    // Slurm sets CUDA_VISIBLE_DEVICES for the GPUs it allocated; a stage that asked for none gets none, even on a
    // node whose GPUs `nvidia-smi` would list.
    let mut gpus = if stage.resources.gpus == 0 { Vec::new() } else { crate::exec::resources::detect_gpus() };
    gpus.truncate(stage.resources.gpus as usize);
    let job = Job {
        index: i,
        id: stage.id.clone(),
        backend: planned.backends[i].clone(),
        timeout: stage.resources.timeout,
        params: stage.params.clone(),
        inputs: crate::exec::job_inputs(&planned, i, &outputs),
        preimage,
        key,
        gpus,
        store: store.clone(),
        run: run.clone(),
        cancelled: Arc::new(AtomicBool::new(false)),
        forced: req.force,
    };
    let log = run.stage_log(&stage.id);
    let (tx, rx) = std::sync::mpsc::channel();
    let worker = std::thread::Builder::new().name(format!("stage-{}", stage.id)).spawn(move || stage::run(job, tx))?;
    let mut shown = None;
    let outcome = loop {
        match rx.recv() {
            Ok(Event::Progress(_, done, total)) => {
                // Into the job's output: one line per tenth, not one per step.
                let tenth = done.saturating_mul(10).checked_div(total).unwrap_or(0);
                if shown != Some(tenth) {
                    shown = Some(tenth);
                    println!("rto: progress {done}/{total}");
                }
            }
            Ok(Event::Waiting(_, holder)) => println!("rto: waiting: the key is locked by {holder}"),
            Ok(Event::Status(..)) => {}
            Ok(Event::Finished(_, outcome)) => break *outcome,
            Err(_) => anyhow::bail!("internal error: the stage's thread ended without a result"),
        }
    };
    let _ = worker.join();
    receipt.log = log.exists().then_some(log);
    match outcome {
        Outcome::Ran(_) => receipt.ended = Ended::Ran,
        Outcome::FoundDone(_) => receipt.ended = Ended::Cached,
        Outcome::Failed { error, param, log_tail, .. } => {
            receipt.ended = Ended::Failed;
            receipt.error = Some(match param {
                Some(p) => crate::render::one_line(&crate::backend::param_error(&study, stage, p)),
                None => error,
            });
            receipt.log_tail = log_tail;
        }
    }
    Ok(())
}
