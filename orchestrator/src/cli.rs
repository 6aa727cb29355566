//! The command line: arguments (clap) and what each subcommand does.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use cache::{StatIndex, Store};
use clap::{Parser, Subcommand, ValueEnum};

use crate::exec::{self, RunOptions};
use crate::plan::{LastRun, Planned, Remotes, last_run_ref, previous_preimage, reason};
use crate::study::{self, Study, StudyError};
use crate::summary::{Status, Summary};

/// rto runs response-tuning studies: TOML DAGs of cached, content-addressed stages.
#[derive(Debug, Parser)]
#[command(name = "rto", version, about, propagate_version = true)]
pub struct Cli {
    /// The cache directory [default: `.rto/` beside the study]
    #[arg(long, global = true, env = "RTO_CACHE", value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// Output format of reports
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub format: Format,
    /// Also look for plugins in this directory (searched first; repeatable)
    #[arg(long = "plugin-dir", global = true, value_name = "DIR")]
    pub plugin_dirs: Vec<PathBuf>,
    /// What to do
    #[command(subcommand)]
    pub command: Command,
}

/// Report formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned text for people.
    Text,
    /// JSON with a schema version, for tools.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a study: every stage not already cached
    Run {
        /// The study file
        study: PathBuf,
        /// Run only these stages (and what they depend on)
        #[arg(long, value_name = "STAGE", num_args = 1..)]
        only: Vec<String>,
        /// Run these stages even if cached
        #[arg(long, value_name = "STAGE", num_args = 1..)]
        force: Vec<String>,
        /// Stages that may run at once [default: number of CPUs]
        #[arg(long, short)]
        jobs: Option<usize>,
        /// After a failure, go on with the stages that do not depend on it
        #[arg(long, short)]
        keep_going: bool,
        /// Show what would run, run nothing
        #[arg(long)]
        dry_run: bool,
        /// GPU ids to hand out, e.g. `0,1` [default: CUDA_VISIBLE_DEVICES, else nvidia-smi]
        #[arg(long, value_delimiter = ',')]
        gpus: Option<Vec<String>>,
        /// Print every stage in the summary, cached ones too
        #[arg(long)]
        all: bool,
        /// Where stages run: this machine, or Slurm jobs against a shared cache [default: the study's
        /// `[executor] kind`, else local]
        #[arg(long, value_enum)]
        executor: Option<ExecutorChoice>,
    },
    /// Show each stage as cached, will run or blocked, and why
    Plan {
        /// The study file
        study: PathBuf,
    },
    /// Explain why a stage will run: what changed since its last recorded run
    Why {
        /// The study file
        study: PathBuf,
        /// The stage id
        stage: String,
    },
    /// Print where a stage's outputs are in the cache
    Path {
        /// The study file
        study: PathBuf,
        /// The stage id
        stage: String,
        /// Only this output
        output: Option<String>,
    },
    /// Print the log of a stage's latest run
    Log {
        /// The study file
        study: PathBuf,
        /// The stage id
        stage: String,
    },
    /// Print the tables of the study's report stages from the cache (runs nothing)
    Report {
        /// The study file
        study: PathBuf,
        /// Only this report stage [default: every stage that uses `report`]
        stage: Option<String>,
        /// Print the cells as CSV (`--format json` prints `report.json`) [default: Markdown]
        #[arg(long)]
        csv: bool,
    },
    /// Re-hash every object; quarantine what is corrupt
    Verify,
    /// List the plugins rto finds (or check one library)
    Plugins {
        /// What to do
        #[command(subcommand)]
        action: Option<PluginsAction>,
    },
    /// Serve a model over an OpenAI-compatible HTTP API (chat completions with logprobs)
    Serve {
        /// The model: a Hugging Face model directory or a GGUF file
        model: PathBuf,
        /// A LoRA adapter directory (PEFT layout, e.g. a `train` stage's `adapter`), merged on load
        #[arg(long)]
        adapter: Option<PathBuf>,
        /// The model plugin whose `generate` op answers
        #[arg(long, default_value = "candle-lm")]
        plugin: String,
        /// Address to listen on
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// Port to listen on (0: any free port; the first line printed says which)
        #[arg(long, default_value_t = 8000)]
        port: u16,
        /// The name clients send as `model` [default: the model's file name]
        #[arg(long)]
        served_model_name: Option<String>,
        /// A Jinja chat template file, for models without one (a request's `chat_template` field wins)
        #[arg(long)]
        chat_template: Option<PathBuf>,
        /// For testing clients: fail the first N completion requests
        #[arg(long, default_value_t = 0, help_heading = "Testing clients")]
        fail_first: u64,
        /// For testing clients: how those requests fail
        #[arg(long, value_enum, default_value = "429", help_heading = "Testing clients")]
        fail_with: crate::serve::FailWith,
        /// For testing clients: wait this many milliseconds before answering each completion request
        #[arg(long, default_value_t = 0, help_heading = "Testing clients")]
        delay_ms: u64,
    },
    /// Run one stage against the cache and write a receipt (what a Slurm job runs; not for people)
    #[command(hide = true)]
    RunStage {
        /// The study file
        #[arg(long)]
        study: PathBuf,
        /// The study text to load (the submitter's snapshot)
        #[arg(long)]
        text: PathBuf,
        /// The stage id
        #[arg(long)]
        stage: String,
        /// The submitting run's id
        #[arg(long)]
        run: String,
        /// The key the submitter expects, if it knew it
        #[arg(long)]
        key: Option<String>,
        /// Run even if cached
        #[arg(long)]
        force: bool,
    },
    /// Run one plugin op in this process (used by `rto run`; not for people)
    #[command(hide = true)]
    Worker {
        /// The op
        #[arg(long, required_unless_present = "session")]
        op: Option<String>,
        /// The request file (JSON)
        #[arg(long, required_unless_present = "session")]
        request: Option<PathBuf>,
        /// Where to write the result (JSON)
        #[arg(long, required_unless_present = "session")]
        result: Option<PathBuf>,
        /// Keep one instance and run the calls read from stdin, one JSON line each (`rto serve`)
        #[arg(long, conflicts_with_all = ["op", "request", "result"])]
        session: bool,
        /// A plugin library to load
        #[arg(long, conflicts_with = "linked")]
        library: Option<PathBuf>,
        /// A plugin linked into rto
        #[arg(long)]
        linked: Option<String>,
    },
    /// Free cache space that no study references
    Gc {
        /// Keep only what these studies' current stages use [default: keep the last run of every stage]
        studies: Vec<PathBuf>,
        /// Show what would be freed, free nothing
        #[arg(long)]
        dry_run: bool,
        /// Keep anything younger than this, e.g. `1h`, `7days` (protects concurrent runs)
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        grace: std::time::Duration,
    },
}

/// `rto plugins …`.
#[derive(Debug, Subcommand)]
pub enum PluginsAction {
    /// Load a plugin library (or the library a manifest names) in a worker and run the handshake
    Check {
        /// A library (`.so`) or its `rto-plugin.toml`
        path: PathBuf,
    },
}

/// Plugins linked into this `rto` binary (set once by `main`).
static LINKED: std::sync::OnceLock<Vec<crate::plugin::LinkedPlugin>> = std::sync::OnceLock::new();

/// An error that reaches `main`, classified: the class picks the exit code.
#[derive(Debug)]
pub enum Failure {
    /// A bad study or argument: fix the input (exit 2).
    Input(Box<StudyError>),
    /// Bad usage found after parsing arguments (exit 2).
    Usage(String),
    /// A stage failed (exit 1).
    Stages,
    /// The user interrupted the run (exit 130).
    Interrupted,
    /// The environment or an internal error (exit 1): the message says which.
    Other(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Other(e)
    }
}

impl From<StudyError> for Failure {
    fn from(e: StudyError) -> Self {
        Failure::Input(Box::new(e))
    }
}

impl From<cache::StoreError> for Failure {
    fn from(e: cache::StoreError) -> Self {
        Failure::Other(e.into())
    }
}

/// Runs the parsed command line; `linked` are the plugins linked into the binary.
pub fn main(cli: Cli, linked: &[crate::plugin::LinkedPlugin]) -> ExitCode {
    let _ = LINKED.set(linked.to_vec());
    let result = match &cli.command {
        Command::Run { study, only, force, jobs, keep_going, dry_run, gpus, all, executor } => {
            let opts = (only, force, *jobs, *keep_going, *dry_run, gpus.clone(), *all);
            run(&cli, study, opts, *executor)
        }
        Command::RunStage { study, text, stage, run, key, force } => {
            let req = exec::slurm::job::StageRequest {
                study: std::path::absolute(study).unwrap_or_else(|_| study.clone()),
                text: text.clone(),
                stage: stage.clone(),
                run: run.clone(),
                key: key.clone(),
                force: *force,
            };
            let Some(cache) = &cli.cache else {
                eprintln!("error: `run-stage` needs `--cache`");
                return ExitCode::from(2);
            };
            return exec::slurm::job::main(&req, cache, &cli.plugin_dirs, linked_plugins());
        }
        Command::Plan { study } => plan(&cli, study),
        Command::Why { study, stage } => why(&cli, study, stage),
        Command::Path { study, stage, output } => path(&cli, study, stage, output.as_deref()),
        Command::Log { study, stage } => log(&cli, study, stage),
        Command::Report { study, stage, csv } => report(&cli, study, stage.as_deref(), *csv),
        Command::Verify => verify(&cli),
        Command::Gc { studies, dry_run, grace } => gc(&cli, studies, *dry_run, *grace),
        Command::Serve { .. } => serve(&cli),
        Command::Plugins { action: None } => plugins_list(&cli),
        Command::Plugins { action: Some(PluginsAction::Check { path }) } => plugins_check(&cli, path),
        Command::Worker { op, request, result, session, library, linked } => {
            let which = match (library, linked) {
                (Some(l), _) => crate::plugin::worker::Which::Library(l.clone()),
                (None, Some(n)) => crate::plugin::worker::Which::Linked(n.clone()),
                (None, None) => return ExitCode::from(2),
            };
            let code = match (op, request, result) {
                _ if *session => crate::plugin::worker::session_main(&which, linked_plugins()),
                (Some(op), Some(request), Some(result)) => {
                    crate::plugin::worker::main(&which, op, request, result, linked_plugins())
                }
                _ => 2,
            };
            return ExitCode::from(code.clamp(0, 255) as u8);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Input(e)) => {
            eprintln!("{:?}", miette::Report::new(*e));
            ExitCode::from(2)
        }
        Err(Failure::Usage(m)) => {
            eprintln!("error: {m}");
            ExitCode::from(2)
        }
        Err(Failure::Stages) => ExitCode::from(1),
        Err(Failure::Interrupted) => ExitCode::from(130),
        Err(Failure::Other(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn linked_plugins() -> &'static [crate::plugin::LinkedPlugin] {
    LINKED.get().map(Vec::as_slice).unwrap_or(&[])
}

/// The plugins this command line and study can see.
fn registry(cli: &Cli, study: Option<&Study>) -> crate::plugin::Registry {
    let dirs =
        crate::plugin::registry::search_dirs(&cli.plugin_dirs, study.map(|s| s.plugin_dirs.as_slice()).unwrap_or(&[]));
    crate::plugin::Registry::discover(&dirs, linked_plugins())
}

fn serve(cli: &Cli) -> Result<(), Failure> {
    let Command::Serve {
        model,
        adapter,
        plugin,
        host,
        port,
        served_model_name,
        chat_template,
        fail_first,
        fail_with,
        delay_ms,
    } = &cli.command
    else {
        unreachable!("called for `serve` only")
    };
    let reg = registry(cli, None);
    let Some(found) = reg.find(plugin) else {
        let names: Vec<&str> = reg.plugins.iter().map(|p| p.name.as_str()).collect();
        return Err(Failure::Usage(format!("no plugin `{plugin}` found; found: {}", names.join(", "))));
    };
    if !found.ops.iter().any(|o| o == "generate") {
        return Err(Failure::Usage(format!(
            "plugin `{plugin}` has no `generate` op (its ops: {}), so it cannot serve",
            found.ops.join(", ")
        )));
    }
    let which = match &found.source {
        crate::plugin::Source::Linked => crate::plugin::worker::Which::Linked(found.name.clone()),
        crate::plugin::Source::Library { library, .. } => crate::plugin::worker::Which::Library(library.clone()),
    };
    let served_name = served_model_name.clone().unwrap_or_else(|| {
        let name = model.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
        name.strip_suffix(".gguf").map(str::to_string).unwrap_or(name)
    });
    let chat_template = match chat_template {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| Failure::Usage(format!("cannot read the chat template `{}`: {e}", path.display())))?,
        ),
        None => None,
    };
    let opts = crate::serve::Options {
        chat_template,
        model: model.clone(),
        adapter: adapter.clone(),
        served_name,
        host: host.clone(),
        port: *port,
        fail_first: *fail_first,
        fail_with: *fail_with,
        delay: std::time::Duration::from_millis(*delay_ms),
    };
    crate::serve::serve(opts, which).map_err(Failure::Other)
}

fn plugins_list(cli: &Cli) -> Result<(), Failure> {
    let reg = registry(cli, None);
    if cli.format == Format::Json {
        let list: Vec<serde_json::Value> = reg
            .plugins
            .iter()
            .map(|p| {
                let (source, path) = match &p.source {
                    crate::plugin::Source::Linked => ("linked into rto".to_string(), None),
                    crate::plugin::Source::Library { library, origin, .. } => (origin.clone(), Some(library.clone())),
                };
                serde_json::json!({"name": p.name, "version": p.version, "kind": p.kind, "ops": p.ops, "source": source, "library": path})
            })
            .collect();
        let out = serde_json::json!({"plugins": list, "problems": reg.problems});
        println!("{}", serde_json::to_string_pretty(&out).context("cannot serialise")?);
        return Ok(());
    }
    println!("{:<16} {:<10} {:<6} {:<34} FROM", "NAME", "VERSION", "KIND", "OPS");
    for p in &reg.plugins {
        let from = match &p.source {
            crate::plugin::Source::Linked => "linked into rto".to_string(),
            crate::plugin::Source::Library { library, origin, .. } => format!("{} ({origin})", library.display()),
        };
        println!("{:<16} {:<10} {:<6} {:<34} {from}", p.name, p.version, p.kind, p.ops.join(", "));
    }
    for problem in &reg.problems {
        println!("skipped: {problem}");
    }
    let dirs = crate::plugin::registry::search_dirs(&cli.plugin_dirs, &[]);
    let shown: Vec<String> = dirs.iter().map(|(d, o)| format!("{} ({o})", d.display())).collect();
    println!("searched: {}", shown.join(", "));
    Ok(())
}

fn plugins_check(cli: &Cli, path: &Path) -> Result<(), Failure> {
    let library = if path.extension().is_some_and(|e| e == "toml") {
        let m = crate::plugin::manifest::Manifest::read(path).map_err(Failure::Usage)?;
        m.library_path(path)
    } else {
        path.to_path_buf()
    };
    let library = std::path::absolute(&library).unwrap_or(library);
    if !library.is_file() {
        return Err(Failure::Usage(format!("`{}` does not exist", library.display())));
    }
    let tmp = tempfile::tempdir().context("cannot create a temporary directory")?;
    let request = api::protocol::Request {
        protocol: api::protocol::PROTOCOL_VERSION.into(),
        stage_id: "check".into(),
        params: serde_json::json!({}),
        inputs: Default::default(),
        out_dir: tmp.path().into(),
        scratch_dir: tmp.path().into(),
        gpus: vec![],
        validate_only: true,
    };
    let mut log = Vec::new();
    let which = crate::plugin::worker::Which::Library(library.clone());
    let ended =
        crate::plugin::worker::run(&which, "describe", &request, tmp.path(), &mut log, &|_, _| {}, &|| false, None)?;
    use crate::plugin::worker::Ended;
    match ended {
        Ended::Ok(description) => {
            match cli.format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&description).context("cannot serialise")?),
                Format::Text => {
                    let d: api::protocol::Description =
                        serde_json::from_value(description).context("the worker's description does not parse")?;
                    let ops: Vec<&str> = d.ops.iter().map(|o| o.name.as_str()).collect();
                    println!(
                        "`{}`: plugin `{}` {} ({}, protocol {}), ops: {}",
                        library.display(),
                        d.name,
                        d.version,
                        d.kind,
                        d.protocol,
                        ops.join(", ")
                    );
                }
            }
            Ok(())
        }
        Ended::OpError { reply, .. } => Err(Failure::Other(anyhow::anyhow!("{}", reply.message))),
        Ended::Crashed(why) => Err(Failure::Other(anyhow::anyhow!(
            "loading `{}` crashed the worker: {why}\n{}",
            library.display(),
            String::from_utf8_lossy(&log).trim()
        ))),
        Ended::Cancelled | Ended::TimedOut(_) => Err(Failure::Other(anyhow::anyhow!("the check was interrupted"))),
    }
}

fn load(path: &Path) -> Result<Study, Failure> {
    Ok(study::load_file(path)?)
}

fn store_dir(cli: &Cli, study: Option<&Study>) -> PathBuf {
    match (&cli.cache, study) {
        (Some(dir), _) => dir.clone(),
        (None, Some(s)) => s.dir.join(".rto"),
        (None, None) => PathBuf::from(".rto"),
    }
}

/// A store for commands that only read: the cache if it exists, else an empty store in a temporary directory
/// (returned too, to keep it alive), so that `plan`, `why`, `path`, `log` and `--dry-run` never create `.rto/`.
fn reading_store(cli: &Cli, study: Option<&Study>) -> Result<(Store, Option<tempfile::TempDir>), Failure> {
    let dir = store_dir(cli, study);
    if dir.join("rto-store.json").is_file() {
        return Ok((open_store(cli, study)?, None));
    }
    let tmp = tempfile::tempdir().context("cannot create a temporary directory")?;
    let store = Store::open(tmp.path()).context("cannot open an empty store")?;
    Ok((store, Some(tmp)))
}

/// The existing cache for `verify` and `gc`, which must not create one.
fn existing_store(cli: &Cli) -> Result<Store, Failure> {
    let dir = store_dir(cli, None);
    if !dir.join("rto-store.json").is_file() {
        return Err(Failure::Usage(format!("no rto cache at `{}` (use `--cache DIR` or RTO_CACHE)", dir.display())));
    }
    open_store(cli, None)
}

fn open_store(cli: &Cli, study: Option<&Study>) -> Result<Store, Failure> {
    let dir = store_dir(cli, study);
    Store::open(&dir).with_context(|| format!("cannot open the cache at `{}`", dir.display())).map_err(Failure::Other)
}

fn check_ids(study: &Study, ids: &[String], flag: &str) -> Result<BTreeSet<String>, Failure> {
    for id in ids {
        if !study.stages.iter().any(|s| &s.id == id) {
            return Err(Failure::Usage(format!("`{flag} {id}`: study `{}` has no stage `{id}`", study.name)));
        }
    }
    Ok(ids.iter().cloned().collect())
}

fn options(study: &Study, dry_run: bool) -> RunOptions {
    let cpus = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
    RunOptions {
        jobs: cpus as usize,
        keep_going: false,
        force: BTreeSet::new(),
        only: BTreeSet::new(),
        dry_run,
        gpus: None,
        cpus,
        memory: exec::resources::total_memory(),
        results_dir: Some(study.dir.join("results")),
        progress: true,
    }
}

type RunArgs<'a> = (&'a Vec<String>, &'a Vec<String>, Option<usize>, bool, bool, Option<Vec<String>>, bool);

/// `rto run --executor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExecutorChoice {
    /// Threads on this machine.
    Local,
    /// Slurm jobs (`sbatch`); the cache, the study's files and `rto` must be on a filesystem the nodes share.
    Slurm,
}

fn run(
    cli: &Cli,
    path: &Path,
    (only, force, jobs, keep_going, dry_run, gpus, all): RunArgs<'_>,
    executor: Option<ExecutorChoice>,
) -> Result<(), Failure> {
    let study = load(path)?;
    let on_slurm = match executor {
        Some(choice) => choice == ExecutorChoice::Slurm,
        None => study.executor.kind == study::executor::ExecutorKind::Slurm,
    };
    let mut opts = options(&study, dry_run);
    opts.only = check_ids(&study, only, "--only")?;
    opts.force = check_ids(&study, force, "--force")?;
    if let Some(j) = jobs {
        if j == 0 {
            return Err(Failure::Usage("`--jobs` must be at least 1".into()));
        }
        opts.jobs = j;
    }
    opts.keep_going = keep_going;
    // `--gpus ""` means no GPUs.
    opts.gpus = gpus.map(|g| g.into_iter().filter(|s| !s.trim().is_empty()).collect());
    // Plan before opening the store, so that a bad study leaves the cache untouched (not even created).
    let dir = store_dir(cli, Some(&study));
    let index = StatIndex::load_at(&dir);
    let downloads = dir.join("downloads");
    let remotes = if dry_run { Remotes::CachedOnly(&downloads) } else { Remotes::Fetch(&downloads) };
    let planned = Planned::new(&study, &index, remotes, &registry(cli, Some(&study)))?;
    let (store, _tmp) =
        if dry_run { reading_store(cli, Some(&study))? } else { (open_store(cli, Some(&study))?, None) };
    let _in_use = if dry_run { None } else { Some(store.use_shared()?) };
    if !dry_run {
        check_plugin_params(&planned, &store, &opts)?;
    }
    let cancel = Arc::new(AtomicBool::new(false));
    install_ctrlc(cancel.clone());
    let slurm = if on_slurm && !dry_run {
        // Jobs plan the study again on their nodes: give them the input digests this run already computed.
        index.save(&store)?;
        let rto = std::env::current_exe().context("cannot find the rto binary for Slurm jobs")?;
        Some(exec::slurm::Launch {
            rto,
            plugin_dirs: cli.plugin_dirs.iter().map(|d| std::path::absolute(d).unwrap_or_else(|_| d.clone())).collect(),
        })
    } else {
        None
    };
    let summary = exec::execute_on(&planned, &store, &opts, cancel.clone(), slurm)?;
    if !dry_run {
        index.save(&store)?;
    }
    print_summary(cli, &summary, all || dry_run)?;
    if cancel.load(Ordering::SeqCst) {
        return Err(Failure::Interrupted);
    }
    if !summary.succeeded() {
        return Err(Failure::Stages);
    }
    if cli.format == Format::Text && !dry_run {
        print_run_reports(&study, &store, &summary);
    }
    Ok(())
}

/// After a successful run, the tables of the study's report stages: what the run was for, without a second
/// command. A report that cannot be read is mentioned, never fatal (the run itself succeeded).
fn print_run_reports(study: &Study, store: &cache::Store, summary: &crate::summary::Summary) {
    let report = crate::builtin::report::NAME;
    for stage in study.stages.iter().filter(|s| s.uses == study::Uses::Builtin(report.into())) {
        let Some(key) = summary.stages.iter().find(|s| s.id == stage.id).and_then(|s| s.key.as_deref()) else {
            continue;
        };
        match cached_report(store, &stage.id, key) {
            Ok(document) => print!("\n{}", document.markdown(false)),
            Err(e) => eprintln!("warning: cannot show report `{}`: {e:#}", stage.id),
        }
    }
}

/// The `report.json` of report stage `id`, cached under `key`.
fn cached_report(store: &cache::Store, id: &str, key: &str) -> anyhow::Result<crate::builtin::report::Document> {
    use crate::builtin::report::{self as builtin_report, Document};
    let record = store
        .get_action(&key.parse().context("bad key")?)?
        .ok_or_else(|| anyhow::anyhow!("stage `{id}` has no cached result"))?;
    let artifact = record
        .outputs
        .get(builtin_report::JSON_OUTPUT)
        .ok_or_else(|| anyhow::anyhow!("the cached result of stage `{id}` has no `{}`", builtin_report::JSON_OUTPUT))?;
    let file = store.checkout(artifact)?;
    let bytes = std::fs::read(&file).with_context(|| format!("cannot read `{}`", file.display()))?;
    Document::from_json(&bytes).with_context(|| format!("stage `{id}`"))
}

/// Asks the plugins to check the params of their stages that may run, so that a bad param in a late stage is
/// reported before the stages before it spend hours. Cached stages are not checked: a no-op run loads no plugin.
fn check_plugin_params(planned: &Planned<'_>, store: &Store, opts: &RunOptions) -> Result<(), Failure> {
    let study = planned.study;
    let plugin_stages: Vec<usize> = (0..study.stages.len())
        .filter(|&i| matches!(planned.backends[i], crate::backend::Backend::Plugin(_)))
        .collect();
    if plugin_stages.is_empty() {
        return Ok(());
    }
    let mut dry = opts.clone();
    dry.dry_run = true;
    dry.progress = false;
    dry.results_dir = None;
    let plan = exec::execute(planned, store, &dry, Arc::new(AtomicBool::new(false)))?;
    let may_run: Vec<usize> = plugin_stages
        .into_iter()
        .filter(|&i| plan.stages.iter().any(|s| s.id == study.stages[i].id && !matches!(s.status, Status::Cached)))
        .collect();
    if may_run.is_empty() {
        return Ok(());
    }
    let scratch = store.scratch_dir("validate")?;
    crate::plugin::validate_stages(study, &planned.backends, &may_run, scratch.path())?;
    Ok(())
}

fn install_ctrlc(cancel: Arc<AtomicBool>) {
    let _ = ctrlc::set_handler(move || {
        if cancel.swap(true, Ordering::SeqCst) {
            eprintln!("interrupted twice: exiting now");
            std::process::exit(130);
        }
        eprintln!("interrupting: no new stages start; running ones are asked to stop (Ctrl-C again to exit now)");
    });
}

fn print_summary(cli: &Cli, summary: &Summary, all: bool) -> Result<(), Failure> {
    match cli.format {
        Format::Text => print!("{}", summary.render_table(all)),
        Format::Json => println!("{}", serde_json::to_string_pretty(summary).context("cannot serialise")?),
    }
    Ok(())
}

/// What `plan_summary` returns: the store it read, the plan's summary, the temporary store directory if any,
/// and the planned study (for commands that need pre-images, such as `why`).
type Reading<'s> = (Store, Summary, Option<tempfile::TempDir>, Planned<'s>);

fn plan_summary<'s>(cli: &Cli, study: &'s Study) -> Result<Reading<'s>, Failure> {
    let dir = store_dir(cli, Some(study));
    let index = StatIndex::load_at(&dir);
    let downloads = dir.join("downloads");
    let planned = Planned::new(study, &index, Remotes::CachedOnly(&downloads), &registry(cli, Some(study)))?;
    let (store, tmp) = reading_store(cli, Some(study))?;
    let mut opts = options(study, true);
    opts.progress = false;
    opts.results_dir = None;
    let summary = exec::execute(&planned, &store, &opts, Arc::new(AtomicBool::new(false)))?;
    Ok((store, summary, tmp, planned))
}

fn plan(cli: &Cli, path: &Path) -> Result<(), Failure> {
    let study = load(path)?;
    let (_, summary, _tmp, _) = plan_summary(cli, &study)?;
    print_summary(cli, &summary, true)
}

fn stage_index(study: &Study, id: &str) -> Result<usize, Failure> {
    study
        .stages
        .iter()
        .position(|s| s.id == id)
        .ok_or_else(|| Failure::Usage(format!("study `{}` has no stage `{id}`", study.name)))
}

fn why(cli: &Cli, path: &Path, id: &str) -> Result<(), Failure> {
    let study = load(path)?;
    let i = stage_index(&study, id)?;
    let (store, summary, _tmp, planned) = plan_summary(cli, &study)?;
    let s = summary.stages.iter().find(|s| s.id == study.stages[i].id).expect("every stage is planned");
    let last = store.read_ref(&last_run_ref(&study.name, id))?.and_then(|v| serde_json::from_value::<LastRun>(v).ok());
    // The current pre-image, for a field-by-field diff, when its key is known (all upstream outputs exist).
    let current = s.key.as_ref().and_then(|_| {
        let mut outputs = vec![None; study.stages.len()];
        for (j, st) in study.stages.iter().enumerate() {
            let sum = summary.stages.iter().find(|x| x.id == st.id)?;
            if let Some(key) = &sum.key
                && let Ok(key) = key.parse()
                && let Ok(Some(record)) = store.get_action(&key)
            {
                outputs[j] = Some(record.outputs);
            }
        }
        planned.preimage(i, &outputs).ok().flatten()
    });
    let old = last.as_ref().and_then(|l| previous_preimage(&store, &l.key));
    let diffs = match (&old, &current) {
        (Some(o), Some(c)) => reason::differences(o, c),
        _ => vec![],
    };
    if cli.format == Format::Json {
        let out = serde_json::json!({
            "schema": crate::summary::SUMMARY_SCHEMA,
            "stage": id,
            "status": s.status,
            "key": s.key,
            "last_run": last,
            "upstream": s.upstream,
            "differences": diffs,
        });
        println!("{}", serde_json::to_string_pretty(&out).context("cannot serialise")?);
        return Ok(());
    }
    match s.status {
        Status::Cached => {
            println!("`{id}` is cached (key {}): nothing it depends on changed since it last ran", short(&s.key));
        }
        Status::Blocked => {
            let ups = s.upstream.iter().map(|u| format!("`{u}`")).collect::<Vec<_>>().join(", ");
            println!("`{id}` waits for {ups}, which will run; its key is known once they finish");
            println!("(if they produce the same outputs as before, `{id}` stays cached)");
        }
        _ => {
            let reason = s.reason.as_ref().map(|r| r.to_string()).unwrap_or_else(|| "unknown".into());
            println!("`{id}` will run: {reason}");
            if diffs.len() > 1 {
                println!("all differences from its last run:");
                for d in &diffs {
                    println!("  - {d}");
                }
            }
        }
    }
    Ok(())
}

fn short(key: &Option<String>) -> String {
    key.as_deref().map(|k| k[..12.min(k.len())].to_string()).unwrap_or_else(|| "-".into())
}

fn path(cli: &Cli, path: &Path, id: &str, output: Option<&str>) -> Result<(), Failure> {
    let study = load(path)?;
    stage_index(&study, id)?;
    let (store, summary, _tmp, _) = plan_summary(cli, &study)?;
    let s = summary.stages.iter().find(|s| s.id == id).expect("every stage is planned");
    let record = match (&s.status, &s.key) {
        (Status::Cached, Some(key)) => store.get_action(&key.parse().context("bad key")?)?,
        _ => None,
    };
    let Some(record) = record else {
        return Err(Failure::Usage(format!(
            "stage `{id}` has no current result ({}): run `rto run {}` first",
            s.status.word(),
            path.display()
        )));
    };
    let mut shown = 0;
    for (name, artifact) in &record.outputs {
        if output.is_some_and(|o| o != name) {
            continue;
        }
        let p = store.checkout(artifact)?;
        if output.is_some() {
            println!("{}", p.display());
        } else {
            println!("{name}\t{}", p.display());
        }
        shown += 1;
    }
    if shown == 0 {
        let names = record.outputs.keys().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ");
        return Err(Failure::Usage(format!(
            "stage `{id}` has no output `{}` (outputs: {names})",
            output.unwrap_or("")
        )));
    }
    Ok(())
}

fn log(cli: &Cli, path: &Path, id: &str) -> Result<(), Failure> {
    let study = load(path)?;
    stage_index(&study, id)?;
    let (store, summary, _tmp, _) = plan_summary(cli, &study)?;
    // A cached stage: the log of the run that made its current result.
    let current = summary.stages.iter().find(|s| s.id == id).and_then(|s| s.key.as_ref()).and_then(|k| k.parse().ok());
    if let Some(key) = current
        && let Ok(Some(record)) = store.get_action(&key)
    {
        let log = store.run_path(&record.provenance.run).join(format!("{id}.log"));
        if log.is_file() {
            eprintln!("log of `{id}` in run {} (which made its current result):", record.provenance.run);
            print!("{}", std::fs::read_to_string(&log).context("cannot read the log")?);
            return Ok(());
        }
    }
    let mut runs: Vec<_> =
        std::fs::read_dir(store.root().join("runs")).context("cannot list runs")?.flatten().map(|e| e.path()).collect();
    runs.sort();
    for run in runs.iter().rev() {
        let log = run.join(format!("{id}.log"));
        let study_of = std::fs::read(run.join("run.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v.get("study").and_then(|s| s.as_str()).map(String::from));
        if log.is_file() && study_of.as_deref() == Some(study.name.as_str()) {
            eprintln!("log of `{id}` in run {}:", run.file_name().unwrap_or_default().to_string_lossy());
            print!("{}", std::fs::read_to_string(&log).context("cannot read the log")?);
            return Ok(());
        }
    }
    Err(Failure::Usage(format!(
        "stage `{id}` has not run in this cache yet (cached stages keep the log of the run that made them)"
    )))
}

/// `rto report`: renders the cached `report.json` of the study's report stages. A report that is not cached is
/// an error naming the stages it still needs, rather than a run: printing a report never starts hours of work.
fn report(cli: &Cli, path: &Path, stage: Option<&str>, csv: bool) -> Result<(), Failure> {
    use crate::builtin::report as builtin_report;
    let study = load(path)?;
    let is_report = |s: &study::Stage| s.uses == study::Uses::Builtin(builtin_report::NAME.into());
    let reports: Vec<usize> = match stage {
        Some(id) => {
            let i = stage_index(&study, id)?;
            if !is_report(&study.stages[i]) {
                return Err(Failure::Usage(format!(
                    "stage `{id}` uses `{}`, not `report`: `rto report` prints report stages",
                    study.stages[i].uses
                )));
            }
            vec![i]
        }
        None => (0..study.stages.len()).filter(|&i| is_report(&study.stages[i])).collect(),
    };
    let ids: Vec<&str> = reports.iter().map(|&i| study.stages[i].id.as_str()).collect();
    match ids.as_slice() {
        [] => {
            return Err(Failure::Usage(format!(
                "study `{}` has no stage that uses `report` (studies/tiny.toml ends with one)",
                study.name
            )));
        }
        [_, _, ..] if csv || cli.format == Format::Json => {
            return Err(Failure::Usage(format!(
                "study `{}` has {} report stages ({}): name one for CSV or JSON, e.g. `rto report {} {}`",
                study.name,
                ids.len(),
                ids.iter().map(|id| format!("`{id}`")).collect::<Vec<_>>().join(", "),
                path.display(),
                ids[0]
            )));
        }
        _ => {}
    }
    let (store, summary, _tmp, _) = plan_summary(cli, &study)?;
    let mut shown = Vec::new();
    for &i in &reports {
        let id = &study.stages[i].id;
        let s = summary.stages.iter().find(|s| &s.id == id).expect("every stage is planned");
        let cached_key = match (&s.status, &s.key) {
            (Status::Cached, Some(key)) if store.get_action(&key.parse().context("bad key")?)?.is_some() => Some(key),
            _ => None,
        };
        let Some(key) = cached_key else {
            // What the report still waits for: itself and every stage it depends on that is not cached.
            let mut needed = BTreeSet::from([i]);
            let mut stack = vec![i];
            while let Some(j) = stack.pop() {
                for input in study.stages[j].inputs.values() {
                    if let study::InputSource::Stage { stage, .. } = &input.source
                        && let Some(k) = study.stages.iter().position(|s| &s.id == stage)
                        && needed.insert(k)
                    {
                        stack.push(k);
                    }
                }
            }
            let missing: Vec<String> = summary
                .stages
                .iter()
                .filter(|s| s.status != Status::Cached && needed.iter().any(|&k| study.stages[k].id == s.id))
                .map(|s| format!("`{}` ({})", s.id, s.status.word()))
                .collect();
            let more = missing.len().saturating_sub(12);
            let mut list = missing.into_iter().take(12).collect::<Vec<_>>().join(", ");
            if more > 0 {
                list.push_str(&format!(" and {more} more"));
            }
            return Err(Failure::Usage(format!(
                "report stage `{id}` is not in the cache yet; not cached: {list}. Run `rto run {}` first",
                path.display()
            )));
        };
        shown.push(cached_report(&store, id, key)?);
    }
    for (n, document) in shown.iter().enumerate() {
        if cli.format == Format::Json {
            print!("{}", document.to_json());
        } else if csv {
            print!("{}", document.csv());
        } else {
            if n > 0 {
                println!();
            }
            print!("{}", document.markdown(false));
        }
    }
    Ok(())
}

fn verify(cli: &Cli) -> Result<(), Failure> {
    let store = existing_store(cli)?;
    let _exclusive = store.use_exclusive()?;
    let report = store.verify()?;
    match cli.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report).context("cannot serialise")?),
        Format::Text => {
            println!(
                "checked {} objects ({}) and {} action records",
                report.objects_checked,
                exec::resources::human_bytes(report.bytes_checked),
                report.actions_checked
            );
            for d in &report.corrupt_objects {
                println!("corrupt object {d}: moved to quarantine/");
            }
            for d in &report.damaged_trees {
                println!("damaged tree {d}: moved to quarantine/");
            }
            for k in &report.quarantined_actions {
                println!(
                    "action {} needs a missing or corrupt object: moved to quarantine/ (its stage will run again)",
                    k.short()
                );
            }
            if report.tmp_leftovers > 0 {
                println!(
                    "{} leftovers of interrupted runs in tmp/ (harmless; `rto gc` removes them)",
                    report.tmp_leftovers
                );
            }
            println!(
                "{}",
                if report.is_consistent() {
                    "store is consistent"
                } else {
                    "store was inconsistent: repaired by quarantine"
                }
            );
        }
    }
    if report.is_consistent() { Ok(()) } else { Err(Failure::Stages) }
}

fn gc(cli: &Cli, studies: &[PathBuf], dry_run: bool, grace: std::time::Duration) -> Result<(), Failure> {
    let mut roots = BTreeSet::new();
    let store = if studies.is_empty() {
        let store = existing_store(cli)?;
        for (name, value) in store.list_refs()? {
            if name.starts_with("last/")
                && let Ok(last) = serde_json::from_value::<LastRun>(value)
            {
                roots.insert(last.key);
            }
        }
        store
    } else {
        let mut store = None;
        for path in studies {
            let study = load(path)?;
            let (s, summary, _tmp, _) = plan_summary(cli, &study)?;
            for st in &summary.stages {
                if let Some(key) = &st.key {
                    roots.insert(key.parse().context("bad key")?);
                }
                // A stage blocked behind one that will run has no key yet: keep its last result, which early
                // cut-off may still reuse.
                if let Ok(Some(v)) = s.read_ref(&last_run_ref(&study.name, &st.id))
                    && let Ok(last) = serde_json::from_value::<LastRun>(v)
                {
                    roots.insert(last.key);
                }
            }
            store = Some(s);
        }
        store.expect("at least one study")
    };
    let _exclusive = store.use_exclusive()?;
    let report = store.gc(&roots, grace, dry_run)?;
    match cli.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report).context("cannot serialise")?),
        Format::Text => println!(
            "{} {} action records and {} objects ({}); kept {} objects{}",
            if dry_run { "would remove" } else { "removed" },
            report.actions_removed,
            report.objects_removed,
            exec::resources::human_bytes(report.bytes_freed),
            report.objects_kept,
            if report.scratch_removed > 0 {
                format!("; {} scratch directories", report.scratch_removed)
            } else {
                String::new()
            }
        ),
    }
    Ok(())
}
