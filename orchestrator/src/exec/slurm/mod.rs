//! The Slurm executor: each stage that must run becomes one Slurm job, chained with `--dependency=afterok`.
//!
//! # How a run goes
//!
//! The scheduler asks the cache first, as always: a cached stage is never submitted. A stage whose key is known
//! is submitted with `sbatch --parsable`, its resources mapped to `--cpus-per-task`, `--mem`, `--gres=gpu:N`
//! and `--time` (the stage's `executor.time`, else its `resources.timeout` plus five minutes, else the study's
//! `[executor] time`). A stage whose upstream stages are still queued or running is submitted at once too, with
//! `--dependency=afterok:<their jobs>` and `--kill-on-invalid-dep=yes`: the whole DAG is in Slurm's queue after
//! the first pass, and Slurm does the waiting. Such a stage's key depends on outputs that do not exist yet, so
//! its job computes it on the node (see [`job`]) and this side checks it when the job reports.
//!
//! Each job runs `rto run-stage` — this same binary, at the same path, which must therefore be on a filesystem
//! the nodes share, like the cache — against the cache, with the same per-key lock and crash-safe commit as a
//! local run. The job's environment is the submitter's (Slurm's default `--export=ALL`).
//!
//! # Watching
//!
//! A job writes a receipt when it ends (`slurm/receipts/<job>.json`, see [`files`]), because Slurm forgets
//! finished jobs after `MinJobAge` unless the cluster keeps an accounting database. Receipts are looked for on
//! every poll (one directory listing); `squeue` is asked about the jobs still in flight with a back-off from
//! half a second to ten seconds, reset whenever something changes. A job that left the queue without a receipt
//! is asked about once more with `scontrol show job`: a failure state (`FAILED`, `CANCELLED`, `TIMEOUT`,
//! `NODE_FAIL`, `OUT_OF_MEMORY`, …) fails its stage with the job id and the tail of its log; a job that
//! completed, or that Slurm no longer knows, gets [`RECEIPT_GRACE`] for its receipt to become visible (a shared
//! filesystem's attribute cache can delay it) before it is reported lost. Completions are reported in
//! topological order, a stage never before the upstream stages it was queued behind.
//!
//! A failed stage's dependants are cancelled (`scancel`; Slurm would also cancel them, since their dependency
//! can no longer be satisfied). Ctrl-C cancels every job this run submitted.
//!
//! # Attaching
//!
//! Every submission is recorded as `slurm/submitted/<identity>.json` (the key, or for a stage queued behind
//! running jobs, a digest of its definition and those jobs' ids). A later `rto run` that finds a record whose
//! job is still in the queue, or ended with a success receipt, watches that job instead of submitting the stage
//! again; the job also records itself under its key once it computed it. So killing `rto run` (or closing the
//! terminal) and running it again picks up where the queue is, and a job that was cancelled or failed is
//! submitted anew.
//!
//! What does not attach: a stage queued behind upstream jobs that have finished since, when the new run
//! computes its key before its old job has started (the old job then finds the key recorded by the new one, or
//! the other way round, and the second one does no work); and any stage under `--force`.
//!
//! `--jobs` does not limit Slurm jobs (Slurm's partition limits and QOS do), and `--keep-going` matters less
//! than locally: after a failure no new job is submitted, but jobs already queued that do not depend on the
//! failed stage run to the end, as running stages do locally.

pub mod commands;
pub mod files;
pub mod job;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use cache::{RunDir, Store};

use super::executor::{Admit, Context, Executor, Submission};
use super::stage::{Event, Outcome};
use crate::plan::Planned;
use crate::study::{InputSource, Stage};
use commands::JobSpec;
use files::{Ended, Layout, Receipt, Submitted};

/// How long a job that left the queue may take to show its receipt before its stage is reported lost.
pub const RECEIPT_GRACE: Duration = Duration::from_secs(60);

/// The shortest and longest wait between two `squeue` calls.
const SQUEUE_BACKOFF: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(10));

/// How often receipts are looked for.
const RECEIPT_POLL: Duration = Duration::from_millis(500);

/// What a job needs to run `rto` on a node.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The `rto` binary the jobs run (this one: it must be at the same path on the nodes).
    pub rto: PathBuf,
    /// `--plugin-dir` directories to pass on.
    pub plugin_dirs: Vec<PathBuf>,
}

/// One job this run watches.
#[derive(Debug)]
struct Tracked {
    job: String,
    /// Submitted by this run (so Ctrl-C cancels it), or attached to.
    ours: bool,
    /// Stages it was queued behind, still tracked when it was submitted.
    after: Vec<usize>,
    /// Its last known queue state.
    state: Option<String>,
    /// When it was first seen out of the queue without a receipt.
    gone_since: Option<Instant>,
}

/// Runs stages as Slurm jobs (see the module documentation).
pub struct SlurmExecutor {
    layout: Layout,
    launch: Launch,
    cache: PathBuf,
    study_path: PathBuf,
    snapshot: PathBuf,
    study_name: String,
    workdir: PathBuf,
    run_id: String,
    events: Sender<Event>,
    tracked: BTreeMap<usize, Tracked>,
    /// Every job of this run by stage, kept after it ends (for messages and logs).
    jobs: BTreeMap<usize, String>,
    logs: BTreeMap<usize, PathBuf>,
    position: Vec<usize>,
    squeue_every: Duration,
    next_squeue: Instant,
}

impl SlurmExecutor {
    /// An executor for the run `run` of `planned` against `store`; nothing is submitted yet.
    pub fn new(
        launch: Launch,
        planned: &Planned<'_>,
        store: &Store,
        run: &RunDir,
        events: Sender<Event>,
    ) -> anyhow::Result<SlurmExecutor> {
        let study = planned.study;
        let cache = store.root().to_path_buf();
        let layout = Layout::new(&cache);
        layout.create().with_context(|| format!("cannot create `{}`", cache.join(files::DIR).display()))?;
        layout.prune(files::KEEP);
        let snapshot = layout.snapshot(study.source.inner()).context("cannot store the study for the jobs")?;
        let mut position = vec![0; study.stages.len()];
        for (p, &i) in planned.dag.order.iter().enumerate() {
            position[i] = p;
        }
        Ok(SlurmExecutor {
            layout,
            launch,
            cache,
            study_path: study.path.clone(),
            snapshot,
            study_name: study.name.clone(),
            workdir: study.dir.clone(),
            run_id: run.id.clone(),
            events,
            tracked: BTreeMap::new(),
            jobs: BTreeMap::new(),
            logs: BTreeMap::new(),
            position,
            squeue_every: SQUEUE_BACKOFF.0,
            next_squeue: Instant::now(),
        })
    }

    /// The identity a submission is recorded under (see [`files`]).
    fn identity(&self, sub: &Submission, ctx: &Context<'_, '_>) -> String {
        if let Some((key, _)) = &sub.key {
            return key.to_hex();
        }
        let planned = ctx.planned;
        let stage = &planned.study.stages[sub.index];
        let mut inputs = BTreeMap::new();
        for (name, input) in &stage.inputs {
            let value = match planned.resolve_input(&input.source, ctx.outputs) {
                Ok(Some(a)) => serde_json::json!({ "digest": a.digest.to_hex() }),
                _ => match &input.source {
                    InputSource::Stage { stage: up, output } => {
                        let job = self.jobs.get(&planned.index_of(up));
                        serde_json::json!({ "job": job, "output": output })
                    }
                    _ => serde_json::Value::Null,
                },
            };
            inputs.insert(name.clone(), value);
        }
        let definition = serde_json::json!({
            "v": 1,
            "study": self.study_name,
            "stage": stage.id,
            "uses": stage.uses.to_string(),
            "backend": planned.backends[sub.index].identity(),
            "params": stage.params,
            "inputs": inputs,
            "gpus": stage.resources.gpus,
            "forced": sub.forced,
        });
        let bytes = serde_json::to_vec(&definition).expect("JSON values serialise");
        format!("after-{}", cache::ObjectDigest::of_bytes(&bytes).to_hex())
    }

    /// The job recorded under `identity`, if it is still worth waiting for: in the queue, or ended with a
    /// success receipt.
    fn attachable(&self, identity: &str) -> Option<String> {
        let record: Submitted = files::read_json(&self.layout.submitted(identity))?;
        if let Some(receipt) = files::read_json::<Receipt>(&self.layout.receipt(&record.job)) {
            return (receipt.ended != Ended::Failed).then_some(record.job);
        }
        match commands::squeue(std::slice::from_ref(&record.job)) {
            Ok(q) if q.get(&record.job).is_some_and(|e| commands::is_active(&e.state)) => Some(record.job),
            _ => None,
        }
    }

    fn job_spec<'s>(
        &self,
        stage: &'s Stage,
        after: Vec<String>,
        options: &'s crate::study::executor::SlurmOptions,
    ) -> JobSpec<'s> {
        // A stage's own time wins; then its op timeout (which rto enforces itself) with room for rto's own work;
        // then the study's default.
        let time = stage
            .executor
            .slurm
            .time
            .or(stage.resources.timeout.map(|t| t + Duration::from_secs(300)))
            .or(options.time);
        JobSpec {
            name: format!("rto.{}.{}", self.study_name, stage.id),
            resources: &stage.resources,
            options,
            time,
            after,
            output: self.layout.output_pattern(),
            workdir: self.workdir.clone(),
        }
    }

    fn argv(&self, stage: &Stage, sub: &Submission) -> Vec<String> {
        let mut argv = vec![self.launch.rto.display().to_string(), "--cache".into(), self.cache.display().to_string()];
        for d in &self.launch.plugin_dirs {
            argv.push("--plugin-dir".into());
            argv.push(d.display().to_string());
        }
        argv.extend([
            "run-stage".into(),
            "--study".into(),
            self.study_path.display().to_string(),
            "--text".into(),
            self.snapshot.display().to_string(),
            "--stage".into(),
            stage.id.clone(),
            "--run".into(),
            self.run_id.clone(),
        ]);
        if let Some((key, _)) = &sub.key {
            argv.push("--key".into());
            argv.push(key.to_hex());
        }
        if sub.forced {
            argv.push("--force".into());
        }
        argv
    }

    /// The outcome the receipt of stage `i`'s job reports; `None` while it cannot be read or its record is not
    /// visible yet (for at most [`RECEIPT_GRACE`]).
    fn receipt_outcome(&mut self, i: usize, store: &Store, now: Instant) -> Option<Outcome> {
        let t = self.tracked.get_mut(&i)?;
        let receipt: Receipt = files::read_json(&self.layout.receipt(&t.job))?;
        if let Some(log) = &receipt.log {
            self.logs.insert(i, log.clone());
        }
        let output = self.layout.output(&receipt.job);
        match receipt.ended {
            Ended::Ran | Ended::Cached => {
                let key: Option<cache::ActionKey> = receipt.key.as_deref().and_then(|k| k.parse().ok());
                let record = key.and_then(|k| store.get_action(&k).ok().flatten());
                match record {
                    Some(r) => Some(if receipt.ended == Ended::Ran { Outcome::Ran(r) } else { Outcome::FoundDone(r) }),
                    None if now.duration_since(*t.gone_since.get_or_insert(now)) < RECEIPT_GRACE => None,
                    None => Some(Outcome::Failed {
                        error: format!(
                            "its receipt says it succeeded, but the cache has no record for key {} (is the cache on a \
                             filesystem the nodes share?)",
                            receipt.key.as_deref().unwrap_or("-")
                        ),
                        param: None,
                        log_tail: commands::tail(&output, 20),
                        duration_ms: receipt.duration_ms,
                        interrupted: false,
                    }),
                }
            }
            Ended::Failed => Some(Outcome::Failed {
                error: receipt.error.unwrap_or_else(|| "failed".into()),
                param: None,
                // A job that failed before its stage started has no stage log: show what it printed.
                log_tail: if receipt.log_tail.is_empty() { commands::tail(&output, 20) } else { receipt.log_tail },
                duration_ms: receipt.duration_ms,
                interrupted: false,
            }),
        }
    }

    /// The outcome of a job that left the queue without a receipt, once it is clear.
    fn without_receipt(&self, t: &mut Tracked, now: Instant) -> Option<Outcome> {
        let since = *t.gone_since.get_or_insert(now);
        let info = match commands::scontrol_job(&t.job) {
            Ok(info) => info,
            Err(e) => {
                tracing::warn!("cannot ask Slurm about job {}: {e:#}", t.job);
                return None;
            }
        };
        let failed = info.as_ref().is_some_and(|i| i.state != "COMPLETED" && !commands::is_active(&i.state));
        if !failed && now.duration_since(since) < RECEIPT_GRACE {
            return None;
        }
        let error = match &info {
            Some(info) => info.describe(),
            None => format!(
                "Slurm no longer knows the job and it left no receipt in `{}`",
                self.layout.receipts().display()
            ),
        };
        Some(Outcome::Failed {
            error,
            param: None,
            log_tail: commands::tail(&self.layout.output(&t.job), 20),
            duration_ms: 0,
            interrupted: false,
        })
    }
}

impl Executor for SlurmExecutor {
    fn chains(&self) -> bool {
        true
    }

    fn admit(&mut self, _i: usize, _stage: &Stage) -> Admit {
        // Slurm queues what does not fit now and refuses what never fits (sbatch fails, and so does the stage).
        Admit::Now
    }

    fn submit(&mut self, sub: Submission, ctx: &Context<'_, '_>) -> anyhow::Result<()> {
        let i = sub.index;
        let stage = &ctx.planned.study.stages[i];
        let after: Vec<usize> = sub.after.iter().copied().filter(|u| self.tracked.contains_key(u)).collect();
        let identity = self.identity(&sub, ctx);
        // `--force` means a fresh run: a queued job may find the key recorded and do nothing.
        if !sub.forced
            && let Some(job) = self.attachable(&identity)
        {
            let _ = self.events.send(Event::Status(i, format!("attached to job {job}, submitted by an earlier run")));
            self.jobs.insert(i, job.clone());
            self.tracked.insert(i, Tracked { job, ours: false, after, state: None, gone_since: None });
            self.squeue_every = SQUEUE_BACKOFF.0;
            return Ok(());
        }
        let after_jobs: Vec<String> = after.iter().map(|u| self.tracked[u].job.clone()).collect();
        let options = ctx.planned.study.executor.slurm.overridden_by(&stage.executor.slurm);
        let spec = self.job_spec(stage, after_jobs, &options);
        let script = commands::job_script(
            &format!("rto: stage `{}` of study `{}`, run {}", stage.id, self.study_name, self.run_id),
            &self.argv(stage, &sub),
        );
        let job = commands::sbatch(&commands::sbatch_args(&spec), &script)?;
        let record = Submitted {
            schema: files::SCHEMA,
            job: job.clone(),
            study: self.study_name.clone(),
            stage: stage.id.clone(),
            run: self.run_id.clone(),
        };
        if let Err(e) = files::write_json(&self.layout.submitted(&identity), &record) {
            tracing::warn!("cannot record job {job}: {e} (a later run will not attach to it)");
        }
        self.jobs.insert(i, job.clone());
        self.tracked.insert(i, Tracked { job, ours: true, after, state: None, gone_since: None });
        self.squeue_every = SQUEUE_BACKOFF.0;
        self.next_squeue = self.next_squeue.min(Instant::now() + SQUEUE_BACKOFF.0);
        Ok(())
    }

    fn poll(&mut self, ctx: &Context<'_, '_>, events: &Sender<Event>) -> anyhow::Result<Option<Duration>> {
        if self.tracked.is_empty() {
            return Ok(Some(RECEIPT_POLL));
        }
        let now = Instant::now();
        let receipts: BTreeSet<String> = std::fs::read_dir(self.layout.receipts())
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(".json")).map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let mut done: Vec<(usize, Outcome)> = Vec::new();
        let indices: Vec<usize> = self.tracked.keys().copied().collect();
        for &i in &indices {
            let job = self.tracked[&i].job.clone();
            if receipts.contains(&job)
                && let Some(outcome) = self.receipt_outcome(i, ctx.store, now)
            {
                done.push((i, outcome));
            }
        }
        if now >= self.next_squeue {
            let waiting: Vec<usize> = indices.iter().copied().filter(|i| !done.iter().any(|(d, _)| d == i)).collect();
            let ids: Vec<String> = waiting.iter().map(|i| self.tracked[i].job.clone()).collect();
            let mut news = false;
            match commands::squeue(&ids) {
                Ok(queue) => {
                    for i in waiting {
                        let t = self.tracked.get_mut(&i).expect("tracked");
                        match queue.get(&t.job).filter(|e| commands::is_active(&e.state)) {
                            Some(entry) => {
                                t.gone_since = None;
                                if t.state.as_deref() != Some(entry.state.as_str()) {
                                    news = true;
                                    t.state = Some(entry.state.clone());
                                    let text = match entry.state.as_str() {
                                        "RUNNING" => format!("job {} running on {}", t.job, entry.nodes),
                                        "PENDING" if entry.reason != "None" => {
                                            format!("job {} pending ({})", t.job, entry.reason)
                                        }
                                        other => format!("job {} {}", t.job, other.to_lowercase()),
                                    };
                                    let _ = events.send(Event::Status(i, text));
                                }
                            }
                            None => {
                                // Its receipt may have appeared since the listing above.
                                if self.layout.receipt(&t.job).is_file() {
                                    news = true;
                                    if let Some(outcome) = self.receipt_outcome(i, ctx.store, now) {
                                        done.push((i, outcome));
                                    }
                                    continue;
                                }
                                let mut t = self.tracked.remove(&i).expect("tracked");
                                let outcome = self.without_receipt(&mut t, now);
                                self.tracked.insert(i, t);
                                if let Some(outcome) = outcome {
                                    news = true;
                                    done.push((i, outcome));
                                }
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!("{e:#} (will ask again)"),
            }
            self.squeue_every = if news || !done.is_empty() {
                SQUEUE_BACKOFF.0
            } else {
                (self.squeue_every * 3 / 2).min(SQUEUE_BACKOFF.1)
            };
            self.next_squeue = now + self.squeue_every;
        }
        // Report upstream first, and never a stage before the stages it was queued behind.
        done.sort_by_key(|(i, _)| self.position[*i]);
        for (i, outcome) in done {
            let t = &self.tracked[&i];
            if t.after.iter().any(|u| self.tracked.contains_key(u)) {
                continue;
            }
            self.tracked.remove(&i);
            let _ = events.send(Event::Finished(i, Box::new(outcome)));
        }
        let until_squeue = self.next_squeue.saturating_duration_since(Instant::now());
        Ok(Some(RECEIPT_POLL.min(until_squeue)))
    }

    fn finished(&mut self, _i: usize) {}

    fn cancel(&mut self, i: usize) {
        if let Some(t) = self.tracked.remove(&i)
            && let Err(e) = commands::scancel(&[t.job])
        {
            tracing::warn!("{e:#}");
        }
    }

    fn interrupt(&mut self, events: &Sender<Event>) {
        let ours: Vec<String> = self.tracked.values().filter(|t| t.ours).map(|t| t.job.clone()).collect();
        if let Err(e) = commands::scancel(&ours) {
            tracing::warn!("{e:#}");
        }
        // Upstream first: the scheduler then marks the stages queued behind an interrupted one as skipped.
        let mut tracked: Vec<(usize, Tracked)> = std::mem::take(&mut self.tracked).into_iter().collect();
        tracked.sort_by_key(|(i, _)| self.position[*i]);
        for (i, t) in tracked {
            let error = if t.ours {
                "cancelled (scancel)".to_string()
            } else {
                "left in Slurm's queue (an earlier run submitted it); `rto run` attaches to it again".to_string()
            };
            let outcome =
                Outcome::Failed { error, param: None, log_tail: String::new(), duration_ms: 0, interrupted: true };
            let _ = events.send(Event::Finished(i, Box::new(outcome)));
        }
    }

    fn describe(&self, i: usize) -> Option<String> {
        self.jobs.get(&i).map(|j| format!("job {j}"))
    }

    fn log(&self, i: usize, run: &RunDir, id: &str) -> Option<PathBuf> {
        let stage_log = self.logs.get(&i).cloned().unwrap_or_else(|| run.stage_log(id));
        if stage_log.exists() {
            return Some(stage_log);
        }
        self.jobs.get(&i).map(|j| self.layout.output(j)).filter(|p| p.exists())
    }
}
