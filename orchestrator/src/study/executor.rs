//! Where stages run: the study's `[executor]` table and a stage's `executor` field, validated.
//!
//! ```toml
//! [executor]
//! kind = "slurm"                    # or "local" (the default); `rto run --executor` overrides it
//! partition = "gpu"
//! account = "my-lab"
//! qos = "normal"
//! time = "4h"                       # sbatch --time, for stages that set no time of their own
//! sbatch_args = ["--constraint=a100"]
//!
//! [[stage]]
//! id = "report"
//! executor = "local"                # always on the submitting machine
//!
//! [[stage]]
//! id = "train"
//! executor = { partition = "long", time = "2days" }   # overrides for this stage's job
//! ```
//!
//! None of this is part of an action key: where a stage runs does not change what it computes.

use std::ops::Range;
use std::time::Duration;

use toml::Spanned;

use super::raw::{RawExecutor, RawStageExecutor};
use super::{Source, StudyError};

/// Which executor runs a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExecutorKind {
    /// Threads on this machine.
    #[default]
    Local,
    /// Slurm jobs (`sbatch`), against a cache on a shared filesystem.
    Slurm,
}

/// `sbatch` settings; in a stage, each one set overrides the study's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlurmOptions {
    /// `--partition`.
    pub partition: Option<String>,
    /// `--account`.
    pub account: Option<String>,
    /// `--qos`.
    pub qos: Option<String>,
    /// `--time` (rounded up to whole minutes).
    pub time: Option<Duration>,
    /// Further flags, passed as written (a stage's list is appended to the study's).
    pub sbatch_args: Vec<String>,
}

impl SlurmOptions {
    /// These options with `over`'s settings taking precedence.
    pub fn overridden_by(&self, over: &SlurmOptions) -> SlurmOptions {
        SlurmOptions {
            partition: over.partition.clone().or_else(|| self.partition.clone()),
            account: over.account.clone().or_else(|| self.account.clone()),
            qos: over.qos.clone().or_else(|| self.qos.clone()),
            time: over.time.or(self.time),
            sbatch_args: self.sbatch_args.iter().chain(&over.sbatch_args).cloned().collect(),
        }
    }
}

/// The study's `[executor]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StudyExecutor {
    /// The executor of a run without `--executor`.
    pub kind: ExecutorKind,
    /// Settings of every stage's job.
    pub slurm: SlurmOptions,
}

/// A stage's `executor`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StageExecutor {
    /// `Some(Local)`: runs on the submitting machine whatever the run's executor.
    pub kind: Option<ExecutorKind>,
    /// Overrides of the study's Slurm settings.
    pub slurm: SlurmOptions,
}

impl StageExecutor {
    /// True if the stage stays on the submitting machine.
    pub fn is_local(&self) -> bool {
        self.kind == Some(ExecutorKind::Local)
    }
}

/// `sbatch` flags that rto sets itself; a study setting them would break how jobs are chained and tracked.
const RESERVED_FLAGS: [&str; 13] = [
    "--dependency",
    "-d",
    "--parsable",
    "--wrap",
    "--output",
    "-o",
    "--error",
    "-e",
    "--array",
    "-a",
    "--kill-on-invalid-dep",
    "--chdir",
    "-D",
];

/// Validates `[executor]`.
pub fn study_executor(source: &Source, raw: Option<&Spanned<RawExecutor>>) -> Result<StudyExecutor, StudyError> {
    let Some(raw) = raw else { return Ok(StudyExecutor::default()) };
    let span = raw.span();
    let kind = match &raw.get_ref().kind {
        Some(k) => kind(source, span.clone(), k, "[executor] kind")?,
        None => ExecutorKind::Local,
    };
    Ok(StudyExecutor { kind, slurm: options(source, span, raw.get_ref(), "[executor]")? })
}

/// Validates a stage's `executor`.
pub fn stage_executor(source: &Source, raw: Option<&Spanned<RawStageExecutor>>) -> Result<StageExecutor, StudyError> {
    let Some(raw) = raw else { return Ok(StageExecutor::default()) };
    let span = raw.span();
    match raw.get_ref() {
        RawStageExecutor::Kind(k) => {
            Ok(StageExecutor { kind: Some(kind(source, span, k, "executor")?), slurm: SlurmOptions::default() })
        }
        RawStageExecutor::Table(t) => {
            let kind = t.kind.as_deref().map(|k| kind(source, span.clone(), k, "executor.kind")).transpose()?;
            Ok(StageExecutor { kind, slurm: options(source, span, t, "executor")? })
        }
    }
}

fn kind(source: &Source, span: Range<usize>, text: &str, field: &str) -> Result<ExecutorKind, StudyError> {
    match text {
        "local" => Ok(ExecutorKind::Local),
        "slurm" => Ok(ExecutorKind::Slurm),
        other => Err(StudyError::at(source, span, format!("`{field}`: unknown executor `{other}`"), "here")
            .with_help("use \"local\" or \"slurm\"")),
    }
}

fn options(source: &Source, span: Range<usize>, raw: &RawExecutor, field: &str) -> Result<SlurmOptions, StudyError> {
    let time = match &raw.time {
        None => None,
        Some(t) => {
            let d = humantime::parse_duration(t).map_err(|e| {
                StudyError::at(source, span.clone(), format!("`{field}` time `{t}`: {e}"), "here")
                    .with_help("write a duration such as \"90min\", \"4h\" or \"2days\"")
            })?;
            if d.is_zero() {
                return Err(StudyError::at(source, span, format!("`{field}` time must be positive"), "here"));
            }
            Some(d)
        }
    };
    let sbatch_args = raw.sbatch_args.clone().unwrap_or_default();
    for arg in &sbatch_args {
        if !arg.starts_with('-') {
            return Err(StudyError::at(
                source,
                span.clone(),
                format!("`{field}` sbatch_args: `{arg}` is not a flag"),
                "here",
            )
            .with_help("write each flag with its value in one string, e.g. \"--constraint=a100\""));
        }
        let name = arg.split('=').next().unwrap_or(arg);
        let short = arg.len() > 2 && !arg.starts_with("--") && RESERVED_FLAGS.contains(&&arg[..2]);
        if RESERVED_FLAGS.contains(&name) || short {
            return Err(StudyError::at(
                source,
                span.clone(),
                format!("`{field}` sbatch_args: rto sets `{name}` itself"),
                "here",
            )
            .with_help("rto chains jobs with --dependency and collects their output; remove this flag"));
        }
    }
    for (name, value) in [("partition", &raw.partition), ("account", &raw.account), ("qos", &raw.qos)] {
        if let Some(v) = value
            && (v.is_empty() || v.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(StudyError::at(source, span.clone(), format!("`{field}` {name} `{v}` is not a name"), "here"));
        }
    }
    Ok(SlurmOptions {
        partition: raw.partition.clone(),
        account: raw.account.clone(),
        qos: raw.qos.clone(),
        time,
        sbatch_args,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<crate::study::Study, StudyError> {
        crate::study::load(std::path::Path::new("/nonexistent/study.toml"), text.to_string())
    }

    const STAGES: &str = r#"
[[stage]]
id = "train"
uses = "command"
params = { cmd = "true" }
executor = { partition = "long", time = "2days", sbatch_args = ["--exclusive"] }

[[stage]]
id = "report"
uses = "command"
params = { cmd = "true" }
executor = "local"

[[stage]]
id = "plain"
uses = "command"
params = { cmd = "true" }
"#;

    #[test]
    fn study_settings_and_stage_overrides_combine() {
        let text = format!(
            "[executor]\nkind = \"slurm\"\npartition = \"gpu\"\naccount = \"lab\"\ntime = \"4h\"\nsbatch_args = \
             [\"--constraint=a100\"]\n{STAGES}"
        );
        let study = load(&text).unwrap();
        assert_eq!(study.executor.kind, ExecutorKind::Slurm);
        let [train, report, plain] = &study.stages[..] else { panic!("three stages") };
        assert!(report.executor.is_local() && !train.executor.is_local() && !plain.executor.is_local());
        let merged = study.executor.slurm.overridden_by(&train.executor.slurm);
        assert_eq!(merged.partition.as_deref(), Some("long"));
        assert_eq!(merged.account.as_deref(), Some("lab"));
        assert_eq!(merged.time, Some(Duration::from_secs(2 * 24 * 3600)));
        assert_eq!(merged.sbatch_args, ["--constraint=a100", "--exclusive"]);
        assert_eq!(study.executor.slurm.overridden_by(&plain.executor.slurm), study.executor.slurm);
    }

    #[test]
    fn no_executor_table_means_local() {
        let study = load(STAGES).unwrap();
        assert_eq!(study.executor, StudyExecutor::default());
        assert_eq!(study.executor.kind, ExecutorKind::Local);
    }

    #[test]
    fn bad_settings_are_errors_at_their_table() {
        for (text, want) in [
            ("[executor]\nkind = \"k8s\"\n", "unknown executor `k8s`"),
            ("[executor]\ntime = \"a while\"\n", "time `a while`"),
            ("[executor]\ntime = \"0s\"\n", "must be positive"),
            ("[executor]\nsbatch_args = [\"exclusive\"]\n", "is not a flag"),
            ("[executor]\nsbatch_args = [\"--output=x\"]\n", "rto sets `--output` itself"),
            ("[executor]\nsbatch_args = [\"-dafterok:1\"]\n", "rto sets `-dafterok:1` itself"),
            ("[executor]\npartition = \"a b\"\n", "is not a name"),
            ("[executor]\nnodes = 2\n", "unknown field `nodes`"),
        ] {
            let e = load(&format!("{text}{STAGES}")).unwrap_err();
            assert!(e.message.contains(want), "{text}: {}", e.message);
            assert!(e.location().is_some_and(|l| l.contains(":1:") || l.contains(":2:")), "{text}: {:?}", e.location());
        }
        let e = load(&STAGES.replace("executor = \"local\"", "executor = \"cloud\"")).unwrap_err();
        assert!(e.message.contains("unknown executor `cloud`"), "{}", e.message);
        let e = load(&STAGES.replace("executor = \"local\"", "executor = 3")).unwrap_err();
        assert!(e.message.contains("\"local\""), "{}", e.message);
    }
}
