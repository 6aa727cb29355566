//! The executor interface, and the local executor behind it.
//!
//! The scheduler in `exec/mod.rs` decides *what* runs: it walks the DAG, asks the cache first, and hands each
//! stage that must run to the executor it is placed on. An [`Executor`] decides *where and when*: it admits a
//! stage (now, later, or never), starts it, reports progress and the outcome as [`Event`]s on the scheduler's
//! channel, cancels it, and says where its log is. Two exist: [`LocalExecutor`] (threads on this machine,
//! within `--jobs` and the machine's resources) and `slurm::SlurmExecutor` (Slurm jobs).
//!
//! An executor that [`chains`](Executor::chains) may be handed a stage whose upstream stages are still running
//! on it ([`Submission::after`]): its key is not known yet, so the executor must make the stage wait for them
//! and compute the key itself once they are done. Slurm does this with `--dependency=afterok`, which lets the
//! whole DAG be queued at once.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::Sender;
use std::time::Duration;

use cache::{ActionKey, Artifact, RunDir, Store};

use super::resources::{Pool, Reservation};
use super::stage::{self, Event, Job};
use crate::plan::Planned;
use crate::plan::key::ActionPreimage;
use crate::study::Stage;

/// Whether a stage may start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admit {
    /// Start it now (resources are reserved for it).
    Now,
    /// Not yet: wait for a running stage to finish.
    Later,
    /// Never on this executor: why.
    Never(String),
}

/// A stage handed to an executor.
pub struct Submission {
    /// The stage's index in the study.
    pub index: usize,
    /// Its key and pre-image; `None` when it waits for upstream stages still running on the executor.
    pub key: Option<(ActionKey, ActionPreimage)>,
    /// Upstream stages still running on this executor, which it must wait for (only for executors that chain).
    pub after: Vec<usize>,
    /// Run it even if its key is recorded.
    pub forced: bool,
}

/// What an executor may read while it starts or watches stages.
pub struct Context<'a, 'p> {
    /// The planned study.
    pub planned: &'a Planned<'p>,
    /// Outputs of the stages done so far.
    pub outputs: &'a [Option<BTreeMap<String, Artifact>>],
    /// The store.
    pub store: &'a Store,
    /// This run's directory.
    pub run: &'a RunDir,
    /// Set on Ctrl-C.
    pub cancelled: &'a Arc<AtomicBool>,
}

/// Runs stages somewhere and reports on the scheduler's channel (see the module documentation).
pub trait Executor {
    /// True if it accepts stages whose upstream stages are still running on it.
    fn chains(&self) -> bool {
        false
    }

    /// Whether stage `i` can start now; `Now` reserves what it needs until [`Executor::finished`].
    fn admit(&mut self, i: usize, stage: &Stage) -> Admit;

    /// Starts an admitted stage. An error fails the stage (not the run).
    fn submit(&mut self, sub: Submission, ctx: &Context<'_, '_>) -> anyhow::Result<()>;

    /// Looks for news and sends it as events; returns how long until it wants to be asked again (`None`: it
    /// sends events on its own).
    fn poll(&mut self, _ctx: &Context<'_, '_>, _events: &Sender<Event>) -> anyhow::Result<Option<Duration>> {
        Ok(None)
    }

    /// The scheduler received stage `i`'s `Finished` event: release what it held.
    fn finished(&mut self, i: usize);

    /// Stage `i` will not be needed (an upstream stage failed): stop it and forget it, without an event.
    fn cancel(&mut self, _i: usize) {}

    /// The user interrupted the run: stop what this run started, and send a `Finished` event for every stage
    /// still in flight that will not send one by itself.
    fn interrupt(&mut self, _events: &Sender<Event>) {}

    /// Where stage `i` runs, for messages (e.g. `job 4211`); `None` when there is nothing to add.
    fn describe(&self, _i: usize) -> Option<String> {
        None
    }

    /// The log of stage `i` in this run, if it has one.
    fn log(&self, i: usize, run: &RunDir, id: &str) -> Option<PathBuf> {
        let _ = i;
        Some(run.stage_log(id)).filter(|p| p.exists())
    }
}

/// Threads on this machine, within `--jobs` and the machine's GPUs, cores and memory.
pub struct LocalExecutor {
    jobs: usize,
    running: usize,
    pool: Pool,
    held: BTreeMap<usize, Reservation>,
    events: Sender<Event>,
}

impl LocalExecutor {
    /// At most `jobs` stages at once, within `pool`; workers report on `events`.
    pub fn new(jobs: usize, pool: Pool, events: Sender<Event>) -> LocalExecutor {
        LocalExecutor { jobs: jobs.max(1), running: 0, pool, held: BTreeMap::new(), events }
    }

    /// Releases what an admitted stage that could not start holds.
    fn finished_without_start(&mut self, i: usize) {
        if let Some(r) = self.held.remove(&i) {
            self.pool.release(r);
        }
    }
}

impl Executor for LocalExecutor {
    fn admit(&mut self, i: usize, stage: &Stage) -> Admit {
        if let Some(why) = self.pool.never_fits(&stage.resources) {
            return Admit::Never(why);
        }
        if self.running >= self.jobs {
            return Admit::Later;
        }
        match self.pool.try_reserve(&stage.resources) {
            Some(r) => {
                self.held.insert(i, r);
                Admit::Now
            }
            None => Admit::Later,
        }
    }

    fn submit(&mut self, sub: Submission, ctx: &Context<'_, '_>) -> anyhow::Result<()> {
        let i = sub.index;
        let stage = &ctx.planned.study.stages[i];
        let Some((key, preimage)) = sub.key else {
            self.finished_without_start(i);
            anyhow::bail!("internal error: the local executor got `{}` without a key", stage.id)
        };
        let gpus = self.held.get(&i).map(|r| r.gpus.clone()).unwrap_or_default();
        let job = Job {
            index: i,
            id: stage.id.clone(),
            backend: ctx.planned.backends[i].clone(),
            timeout: stage.resources.timeout,
            params: stage.params.clone(),
            inputs: super::job_inputs(ctx.planned, i, ctx.outputs),
            preimage,
            key,
            gpus,
            store: ctx.store.clone(),
            run: ctx.run.clone(),
            cancelled: ctx.cancelled.clone(),
            forced: sub.forced,
        };
        let tx = self.events.clone();
        let spawned =
            std::thread::Builder::new().name(format!("stage-{}", stage.id)).spawn(move || stage::run(job, tx));
        if let Err(e) = spawned {
            self.finished_without_start(i);
            return Err(e.into());
        }
        self.running += 1;
        Ok(())
    }

    fn finished(&mut self, i: usize) {
        self.running = self.running.saturating_sub(1);
        if let Some(r) = self.held.remove(&i) {
            self.pool.release(r);
        }
    }
}
