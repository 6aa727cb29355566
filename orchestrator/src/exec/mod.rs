//! The scheduler: runs a planned study's stages in dependency order, with the cache answering first, on the
//! local executor or on Slurm (see [`executor`]).
//!
//! The main thread owns all scheduling state. It walks the stages in topological order; a stage whose upstream
//! stages are all done gets its key computed, and the cache is asked first: a record means the stage is done
//! without starting anything (so a no-op run starts no thread, loads no back-end and submits no job). Otherwise
//! the stage is queued; queued stages start, in topological order, as soon as their executor admits them (on
//! the local executor: a job slot and their resources are free). Executors report progress and completion over
//! a channel. On an executor that chains (Slurm), a stage whose upstream stages are still running there is
//! submitted at once, to wait for them in Slurm's queue; its key is computed on the compute node and checked
//! here when it finishes.
//!
//! A failed stage marks its dependants skipped (on Slurm, cancelling the jobs already queued for them). Without
//! `--keep-going` no new stage starts after a failure (running ones, and jobs already in Slurm's queue, finish);
//! with it, independent stages go on. The first Ctrl-C stops starting stages and asks running ones to cancel
//! (on Slurm: `scancel` of the jobs this run submitted); a second one exits at once (the store stays
//! consistent: see the `cache` crate).

pub mod executor;
pub mod resources;
pub mod results;
pub mod slurm;
pub mod stage;
mod ui;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use cache::{ActionKey, Artifact, Store};

use crate::plan::key::ActionPreimage;
use crate::plan::reason::StaleReason;
use crate::plan::{LastRun, Planned, all_outputs_tree, last_run_ref, stale_reason};
use crate::study::InputSource;
use crate::summary::{SUMMARY_SCHEMA, StageSummary, Status, Summary};
use executor::{Admit, Context, Executor, LocalExecutor, Submission};
use resources::Pool;
use stage::{Event, JobInput, Outcome};

/// How to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Stages that may run at once.
    pub jobs: usize,
    /// After a failure, go on with stages that do not depend on it.
    pub keep_going: bool,
    /// Stage ids to run even if cached.
    pub force: BTreeSet<String>,
    /// If not empty: only these stages and what they depend on.
    pub only: BTreeSet<String>,
    /// Plan only: decide, run nothing, write nothing.
    pub dry_run: bool,
    /// GPU device ids to hand out; `None` to detect.
    pub gpus: Option<Vec<String>>,
    /// CPU cores to hand out.
    pub cpus: u32,
    /// Memory bytes to hand out (0 = not tracked).
    pub memory: u64,
    /// Where to make `results/<study>/<stage>/` links; `None` for none.
    pub results_dir: Option<std::path::PathBuf>,
    /// Show progress bars and per-stage lines on stderr.
    pub progress: bool,
}

#[derive(Debug, Clone)]
enum State {
    /// Not yet decided (an upstream stage is not done).
    Pending,
    /// Key known, not cached: waits for a slot.
    Queued,
    /// On a worker thread.
    Running,
    /// Outputs known (cached or ran).
    Done,
    /// Plan only: would run.
    WouldRun,
    /// Failed, skipped or interrupted.
    Dead,
    /// Not selected by `--only`.
    Excluded,
}

/// Runs (or, with `dry_run`, plans) the study against the store on the local executor and returns the summary.
pub fn execute(
    planned: &Planned<'_>,
    store: &Store,
    opts: &RunOptions,
    cancel: Arc<AtomicBool>,
) -> anyhow::Result<Summary> {
    execute_on(planned, store, opts, cancel, None)
}

/// Where a stage runs in this run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Local,
    Slurm,
}

/// Like [`execute`]; with `slurm`, every stage that does not opt out (`executor = "local"`) becomes a Slurm job.
pub fn execute_on(
    planned: &Planned<'_>,
    store: &Store,
    opts: &RunOptions,
    cancel: Arc<AtomicBool>,
    slurm: Option<slurm::Launch>,
) -> anyhow::Result<Summary> {
    let study = planned.study;
    let n = study.stages.len();
    let dag = &planned.dag;
    let mut state = vec![State::Pending; n];
    if !opts.only.is_empty() {
        let mut keep = vec![false; n];
        let mut stack: Vec<usize> = opts.only.iter().map(|id| planned.index_of(id)).collect();
        while let Some(i) = stack.pop() {
            if !std::mem::replace(&mut keep[i], true) {
                stack.extend(&dag.upstream[i]);
            }
        }
        for i in 0..n {
            if !keep[i] {
                state[i] = State::Excluded;
            }
        }
    }
    let mut outputs: Vec<Option<BTreeMap<String, Artifact>>> = vec![None; n];
    let mut keys: Vec<Option<(ActionKey, ActionPreimage)>> = vec![None; n];
    let mut summaries: Vec<Option<StageSummary>> = vec![None; n];
    let mut was_blocked = vec![false; n];
    // For stages queued behind upstream stages still running on Slurm: those stages.
    let mut after: Vec<Vec<usize>> = vec![Vec::new(); n];
    let run = if opts.dry_run { None } else { Some(store.create_run()?) };
    if let Some(run) = &run {
        let head = serde_json::json!({ "schema": SUMMARY_SCHEMA, "study": study.name, "run": run.id, "dry_run": false, "stages": [] });
        std::fs::write(run.path.join("run.json"), serde_json::to_vec_pretty(&head)?)?;
    }
    let (tx, rx) = mpsc::channel::<Event>();
    let mut slurm = match (slurm, &run) {
        (Some(launch), Some(run)) => Some(slurm::SlurmExecutor::new(launch, planned, store, run, tx.clone())?),
        _ => None,
    };
    let place: Vec<Place> = study
        .stages
        .iter()
        .map(|s| if slurm.is_some() && !s.executor.is_local() { Place::Slurm } else { Place::Local })
        .collect();
    let needs_gpus = study.stages.iter().zip(&place).any(|(s, p)| *p == Place::Local && s.resources.gpus > 0);
    let gpus = opts.gpus.clone().unwrap_or_else(|| if needs_gpus { resources::detect_gpus() } else { Vec::new() });
    let mut local = LocalExecutor::new(opts.jobs, Pool::new(gpus, opts.cpus, opts.memory), tx.clone());
    let mut ui = ui::Ui::new(opts.progress && !opts.dry_run);
    let mut in_flight = 0usize;
    let mut stopping = false;
    let mut interrupted = false;
    let mut queue: Vec<usize> = Vec::new();
    let mut next_poll = std::time::Instant::now();

    let summary_of = |i: usize, status: Status| StageSummary {
        id: study.stages[i].id.clone(),
        uses: study.stages[i].uses.to_string(),
        status,
        key: None,
        reason: None,
        upstream: vec![],
        inputs: BTreeMap::new(),
        duration_ms: None,
        error: None,
        log: None,
    };
    macro_rules! executor {
        ($i:expr) => {
            match (place[$i], slurm.as_mut()) {
                (Place::Slurm, Some(s)) => s as &mut dyn Executor,
                _ => &mut local as &mut dyn Executor,
            }
        };
    }
    let chains: Vec<bool> = (0..n).map(|i| executor!(i).chains()).collect();
    macro_rules! context {
        () => {
            Context {
                planned,
                outputs: &outputs,
                store,
                run: run.as_ref().expect("executors run only in a real run"),
                cancelled: &cancel,
            }
        };
    }

    loop {
        // Settle and start until nothing changes: a stage submitted to Slurm lets its dependants be queued
        // behind it at once.
        let mut changed = true;
        while changed {
            changed = false;
            // Settle: decide every stage whose upstream stages are decided.
            for &i in &dag.order {
                if !matches!(state[i], State::Pending) {
                    continue;
                }
                let ups = &dag.upstream[i];
                let dead: Vec<String> = ups
                    .iter()
                    .filter(|&&u| matches!(state[u], State::Dead))
                    .map(|&u| study.stages[u].id.clone())
                    .collect();
                if !dead.is_empty() {
                    state[i] = State::Dead;
                    changed = true;
                    summaries[i] = Some(StageSummary { upstream: dead, ..summary_of(i, Status::Skipped) });
                    continue;
                }
                let would: Vec<String> = ups
                    .iter()
                    .filter(|&&u| matches!(state[u], State::WouldRun))
                    .map(|&u| study.stages[u].id.clone())
                    .collect();
                if !would.is_empty() {
                    // Plan only: the key depends on outputs that do not exist yet.
                    state[i] = State::WouldRun;
                    changed = true;
                    summaries[i] = Some(StageSummary { upstream: would, ..summary_of(i, Status::Blocked) });
                    continue;
                }
                if !ups.iter().all(|&u| matches!(state[u], State::Done)) {
                    was_blocked[i] = true;
                    // On an executor that chains (Slurm), queue it behind upstream stages still in flight there.
                    let chained = chains[i]
                        && ups.iter().all(|&u| {
                            matches!(state[u], State::Done)
                                || (matches!(state[u], State::Running) && place[u] == place[i])
                        });
                    if chained && !stopping {
                        after[i] = ups.iter().copied().filter(|&u| matches!(state[u], State::Running)).collect();
                        state[i] = State::Queued;
                        changed = true;
                        queue.push(i);
                        summaries[i] = Some(summary_of(i, Status::Ran));
                    }
                    continue;
                }
                changed = true;
                let preimage = match planned.preimage(i, &outputs) {
                    Ok(Some(p)) => p,
                    Ok(None) => {
                        // Only a remote input that planning did not download leaves the key unknown here.
                        let name = planned
                            .unfetched(i)
                            .ok_or_else(|| anyhow::anyhow!("internal error: no key for `{}`", study.stages[i].id))?;
                        state[i] = State::WouldRun;
                        let reason = StaleReason::InputNotFetched { name };
                        summaries[i] = Some(StageSummary { reason: Some(reason), ..summary_of(i, Status::WillRun) });
                        continue;
                    }
                    Err(missing) => {
                        state[i] = State::Dead;
                        let error = crate::render::one_line(&missing.error);
                        ui.line(&format!("FAILED `{}`: {error}", study.stages[i].id));
                        summaries[i] = Some(StageSummary { error: Some(error), ..summary_of(i, Status::Failed) });
                        stopping |= !opts.keep_going;
                        continue;
                    }
                };
                let key = preimage.key();
                let forced = opts.force.contains(&study.stages[i].id);
                let record = if forced { None } else { store.get_action(&key)? };
                let base = StageSummary {
                    key: Some(key.to_hex()),
                    inputs: preimage.inputs.iter().map(|(k, v)| (k.clone(), v.digest.to_hex())).collect(),
                    ..summary_of(i, Status::Cached)
                };
                match record {
                    Some(record) => {
                        let status = if was_blocked[i] { Status::CutOff } else { Status::Cached };
                        if !opts.dry_run {
                            finish(
                                store,
                                planned,
                                i,
                                &key,
                                run.as_ref().map(|r| r.id.as_str()),
                                &record.outputs,
                                opts,
                            )?;
                        }
                        outputs[i] = Some(record.outputs);
                        state[i] = State::Done;
                        summaries[i] = Some(StageSummary { status, ..base });
                    }
                    None => {
                        let reason = if forced {
                            StaleReason::Forced
                        } else {
                            stale_reason(store, &study.name, &study.stages[i].id, &preimage)
                        };
                        if opts.dry_run {
                            state[i] = State::WouldRun;
                            summaries[i] = Some(StageSummary {
                                reason: Some(reason),
                                ..StageSummary { status: Status::WillRun, ..base }
                            });
                        } else {
                            state[i] = State::Queued;
                            queue.push(i);
                            summaries[i] = Some(StageSummary {
                                reason: Some(reason),
                                ..StageSummary { status: Status::Ran, ..base }
                            });
                            keys[i] = Some((key, preimage));
                        }
                    }
                }
            }
            if cancel.load(Ordering::SeqCst) {
                stopping = true;
            }

            // Start what fits, in topological order.
            queue.sort_by_key(|&i| dag.order.iter().position(|&o| o == i));
            let mut still = Vec::new();
            for i in std::mem::take(&mut queue) {
                if stopping {
                    state[i] = State::Dead;
                    changed = true;
                    let s = summaries[i].take().expect("queued stages have a summary");
                    summaries[i] = Some(StageSummary { status: Status::Skipped, ..s });
                    continue;
                }
                let stage = &study.stages[i];
                let admitted = executor!(i).admit(i, stage);
                match admitted {
                    Admit::Later => {
                        still.push(i);
                        continue;
                    }
                    Admit::Never(why) => {
                        state[i] = State::Dead;
                        changed = true;
                        let s = summaries[i].take().expect("queued stages have a summary");
                        ui.line(&format!("FAILED `{}`: {why}", stage.id));
                        summaries[i] = Some(StageSummary { status: Status::Failed, error: Some(why), ..s });
                        stopping |= !opts.keep_going;
                        continue;
                    }
                    Admit::Now => {}
                }
                changed = true;
                let sub = Submission {
                    index: i,
                    key: keys[i].take(),
                    after: std::mem::take(&mut after[i]),
                    forced: opts.force.contains(&stage.id),
                };
                let submitted = executor!(i).submit(sub, &context!());
                match submitted {
                    Ok(()) => {
                        state[i] = State::Running;
                        in_flight += 1;
                        let on = executor!(i).describe(i);
                        ui.start(i, &stage.id, &stage.uses.to_string(), on.as_deref());
                    }
                    Err(e) => {
                        state[i] = State::Dead;
                        let error = format!("{e:#}");
                        ui.fail(i, &stage.id, &error, "", None);
                        let s = summaries[i].take().expect("queued stages have a summary");
                        summaries[i] = Some(StageSummary { status: Status::Failed, error: Some(error), ..s });
                        stopping |= !opts.keep_going;
                    }
                }
            }
            queue = still;
        }

        if stopping && cancel.load(Ordering::SeqCst) && !interrupted {
            interrupted = true;
            if let Some(s) = slurm.as_mut() {
                s.interrupt(&tx);
            }
        }

        if in_flight == 0 {
            if queue.is_empty() {
                // Stages still undecided wait for one that will never finish (the run stopped).
                for &i in &dag.order {
                    if matches!(state[i], State::Pending) {
                        let ups: Vec<String> = dag.upstream[i]
                            .iter()
                            .filter(|&&u| !matches!(state[u], State::Done))
                            .map(|&u| study.stages[u].id.clone())
                            .collect();
                        state[i] = State::Dead;
                        summaries[i] = Some(StageSummary { upstream: ups, ..summary_of(i, Status::Skipped) });
                    }
                }
                break;
            }
            if stopping {
                continue;
            }
            // Nothing runs and nothing fits: cannot happen, since `never_fits` stages were failed above.
            anyhow::bail!("internal error: queued stages cannot start on an idle machine");
        }

        // Wait for news from the executors.
        let tick = std::time::Duration::from_millis(200);
        let wait = match &slurm {
            Some(_) => tick.min(next_poll.saturating_duration_since(std::time::Instant::now())),
            None => tick,
        };
        let event = match rx.recv_timeout(wait) {
            Ok(e) => Some(e),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => anyhow::bail!("internal error: workers vanished"),
        };
        if let Some(s) = slurm.as_mut()
            && std::time::Instant::now() >= next_poll
        {
            let again = s.poll(&context!(), &tx)?;
            next_poll = std::time::Instant::now() + again.unwrap_or(std::time::Duration::from_secs(1));
        }
        let Some(event) = event else { continue };
        match event {
            Event::Progress(i, done, total) => ui.progress(i, done, total),
            Event::Waiting(i, holder) => {
                ui.line(&format!("waiting for `{}`: its key is locked by {holder}", study.stages[i].id))
            }
            Event::Status(i, text) => {
                if matches!(state[i], State::Running) {
                    ui.status(i, &study.stages[i].id, &text)
                }
            }
            Event::Finished(i, outcome) => {
                if !matches!(state[i], State::Running) {
                    // A dependant of a failed stage, cancelled meanwhile.
                    continue;
                }
                in_flight -= 1;
                let id = &study.stages[i].id;
                let ex = executor!(i);
                ex.finished(i);
                let on = ex.describe(i);
                let log = run.as_ref().and_then(|r| ex.log(i, r, id));
                let s = summaries[i].take().expect("running stages have a summary");
                match *outcome {
                    outcome @ (Outcome::Ran(_) | Outcome::FoundDone(_)) => {
                        let (record, status, duration) = match outcome {
                            Outcome::Ran(r) => {
                                let ms = r.provenance.duration_ms;
                                (r, Status::Ran, Some(ms))
                            }
                            // Another process ran the same key while this one waited for its lock (or, for a
                            // stage queued behind running upstream jobs, its key turned out to be cached).
                            Outcome::FoundDone(r) => {
                                (r, if s.key.is_none() { Status::CutOff } else { Status::Cached }, None)
                            }
                            Outcome::Failed { .. } => unreachable!("matched by the outer pattern"),
                        };
                        let s = match settle_chained(planned, store, &outputs, i, s, &record, status) {
                            Ok(s) => s,
                            Err(s) => {
                                let error = s.error.clone().unwrap_or_default();
                                ui.fail(i, id, &error, "", log.as_deref());
                                state[i] = State::Dead;
                                stopping |= !opts.keep_going;
                                summaries[i] = Some(StageSummary { log, ..s });
                                cancel_dependants(dag, &mut state, &mut summaries, &mut in_flight, study, |j| {
                                    executor!(j).cancel(j)
                                });
                                continue;
                            }
                        };
                        finish(
                            store,
                            planned,
                            i,
                            &record.key,
                            run.as_ref().map(|r| r.id.as_str()),
                            &record.outputs,
                            opts,
                        )?;
                        ui.finish(i, id, status, duration, on.as_deref());
                        outputs[i] = Some(record.outputs);
                        state[i] = State::Done;
                        summaries[i] = Some(StageSummary { status, duration_ms: duration, log, ..s });
                    }
                    Outcome::Failed { error, param, log_tail, duration_ms, interrupted } => {
                        // A plugin's bad param: point at it in the study, as for built-ins at plan time.
                        let error = match param {
                            Some(p) => {
                                crate::render::one_line(&crate::backend::param_error(study, &study.stages[i], p))
                            }
                            None => error,
                        };
                        let error = match on {
                            Some(on) => format!("{on}: {error}"),
                            None => error,
                        };
                        let status = if interrupted { Status::Interrupted } else { Status::Failed };
                        ui.fail(i, id, &error, &log_tail, log.as_deref());
                        state[i] = State::Dead;
                        stopping |= !opts.keep_going || interrupted;
                        summaries[i] =
                            Some(StageSummary { status, duration_ms: Some(duration_ms), error: Some(error), log, ..s });
                        cancel_dependants(dag, &mut state, &mut summaries, &mut in_flight, study, |j| {
                            executor!(j).cancel(j)
                        });
                    }
                }
            }
        }
    }
    ui.clear();
    let summary = Summary {
        schema: SUMMARY_SCHEMA,
        study: study.name.clone(),
        run: run.as_ref().map(|r| r.id.clone()),
        dry_run: opts.dry_run,
        stages: dag.order.iter().filter_map(|&i| summaries[i].clone()).collect(),
    };
    if let Some(run) = &run {
        std::fs::write(run.path.join("run.json"), serde_json::to_vec_pretty(&summary)?)?;
    }
    Ok(summary)
}

/// For a stage submitted before its key was known: checks the key its job recorded against the key this run
/// computes now that the upstream outputs are known, and fills in the summary's key, inputs and reason. A
/// mismatch (an input file changed while the study ran) fails the stage: `Err` holds its summary.
fn settle_chained(
    planned: &Planned<'_>,
    store: &Store,
    outputs: &[Option<BTreeMap<String, Artifact>>],
    i: usize,
    s: StageSummary,
    record: &cache::ActionRecord,
    status: Status,
) -> Result<StageSummary, StageSummary> {
    if s.key.is_some() {
        return Ok(s);
    }
    let study = planned.study;
    let preimage = match planned.preimage(i, outputs) {
        Ok(Some(p)) => p,
        _ => {
            let error = "internal error: its upstream outputs are unknown after it ran".to_string();
            return Err(StageSummary { status: Status::Failed, error: Some(error), ..s });
        }
    };
    let key = preimage.key();
    if key != record.key {
        let error = format!(
            "its job recorded key {} but this run expects {}: an input changed while the study ran; run again",
            record.key.short(),
            key.short()
        );
        return Err(StageSummary { status: Status::Failed, key: Some(key.to_hex()), error: Some(error), ..s });
    }
    let reason = (status == Status::Ran).then(|| stale_reason(store, &study.name, &study.stages[i].id, &preimage));
    Ok(StageSummary {
        key: Some(key.to_hex()),
        inputs: preimage.inputs.iter().map(|(k, v)| (k.clone(), v.digest.to_hex())).collect(),
        reason,
        ..s
    })
}

/// Marks the in-flight dependants of failed stages skipped (in topological order, so that skips propagate),
/// telling their executor through `cancel`.
fn cancel_dependants(
    dag: &crate::plan::graph::Dag,
    state: &mut [State],
    summaries: &mut [Option<StageSummary>],
    in_flight: &mut usize,
    study: &crate::study::Study,
    mut cancel: impl FnMut(usize),
) {
    for &j in &dag.order {
        if !matches!(state[j], State::Running) {
            continue;
        }
        let dead: Vec<String> = dag.upstream[j]
            .iter()
            .filter(|&&u| matches!(state[u], State::Dead))
            .map(|&u| study.stages[u].id.clone())
            .collect();
        if dead.is_empty() {
            continue;
        }
        cancel(j);
        *in_flight -= 1;
        state[j] = State::Dead;
        let s = summaries[j].take().expect("running stages have a summary");
        summaries[j] = Some(StageSummary { status: Status::Skipped, upstream: dead, ..s });
    }
}

/// Where each input of stage `i` is, given the outputs of its (done) upstream stages.
pub(crate) fn job_inputs(
    planned: &Planned<'_>,
    i: usize,
    outputs: &[Option<BTreeMap<String, Artifact>>],
) -> BTreeMap<String, JobInput> {
    let mut inputs = BTreeMap::new();
    for (name, input) in &planned.study.stages[i].inputs {
        let ji = match &input.source {
            InputSource::Path(_) | InputSource::Remote(_) => {
                JobInput::Path(planned.local_path(&input.source).expect("fetched before running"))
            }
            InputSource::Stage { stage: up, output } => {
                let outs = outputs[planned.index_of(up)].as_ref().expect("upstream is done");
                match output {
                    Some(o) => JobInput::Artifact(outs[o], None, o.clone()),
                    None => {
                        let (tree, artifact) = all_outputs_tree(outs);
                        JobInput::Artifact(artifact, Some(tree), up.clone())
                    }
                }
            }
        };
        inputs.insert(name.clone(), ji);
    }
    inputs
}

/// Bookkeeping for a stage that is done: remember its key as the stage's last run, link its results.
fn finish(
    store: &Store,
    planned: &Planned<'_>,
    i: usize,
    key: &ActionKey,
    run: Option<&str>,
    outputs: &BTreeMap<String, Artifact>,
    opts: &RunOptions,
) -> anyhow::Result<()> {
    let study = planned.study;
    let id = &study.stages[i].id;
    let name = last_run_ref(&study.name, id);
    let current = store.read_ref(&name).ok().flatten().and_then(|v| serde_json::from_value::<LastRun>(v).ok());
    if current.as_ref().map(|c| c.key) != Some(*key) {
        let last = LastRun { key: *key, run: run.unwrap_or_default().to_string() };
        store.write_ref(&name, &serde_json::to_value(&last)?)?;
    }
    if let Some(dir) = &opts.results_dir
        && let Err(e) = results::link(store, &dir.join(&study.name).join(id), outputs)
    {
        // Convenience links only: a failure (say, a concurrent run relinking the same stage) must not fail the run.
        tracing::warn!("cannot update `results/` for `{id}`: {e:#}");
    }
    Ok(())
}
