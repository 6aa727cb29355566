//! What a run or a plan decided for each stage: one struct, rendered as an aligned table or as JSON.
//!
//! `rto plan` (a dry run) and `rto run` fill the same [`Summary`], so they cannot disagree about what is
//! cached; the run writes it to `runs/<id>/run.json`, which `rto log` reads back instead of recomputing.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::plan::reason::StaleReason;

/// Version of the summary's JSON schema.
pub const SUMMARY_SCHEMA: u32 = 1;

/// How a stage was satisfied, or what a plan expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Its action key has a record: nothing to do.
    Cached,
    /// Plan only: it will run, for `reason`.
    WillRun,
    /// Plan only: its key depends on an upstream stage that will run first.
    Blocked,
    /// It ran and succeeded.
    Ran,
    /// An upstream stage re-ran and produced identical outputs, so this stage stayed cached.
    CutOff,
    /// It ran and failed.
    Failed,
    /// It did not run because an upstream stage failed or the run stopped.
    Skipped,
    /// It was running when the user interrupted the run.
    Interrupted,
}

impl Status {
    /// The word shown in tables.
    pub fn word(self) -> &'static str {
        match self {
            Status::Cached => "cached",
            Status::WillRun => "will run",
            Status::Blocked => "blocked",
            Status::Ran => "ran",
            Status::CutOff => "cut off",
            Status::Failed => "FAILED",
            Status::Skipped => "skipped",
            Status::Interrupted => "interrupted",
        }
    }
}

/// One stage's line in the summary.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageSummary {
    /// Stage id.
    pub id: String,
    /// What it uses.
    pub uses: String,
    /// The outcome.
    pub status: Status,
    /// Action key, when known (full hex).
    pub key: Option<String>,
    /// Why it ran or will run.
    pub reason: Option<StaleReason>,
    /// For blocked or skipped stages: the upstream stages they wait for or that failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upstream: Vec<String>,
    /// Input name → digest (full hex), as they went into the key.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, String>,
    /// Wall-clock time it ran, in milliseconds.
    pub duration_ms: Option<u64>,
    /// The error, for failed stages.
    pub error: Option<String>,
    /// The stage's log in this run.
    pub log: Option<PathBuf>,
}

/// A whole run or plan.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    /// [`SUMMARY_SCHEMA`].
    pub schema: u32,
    /// The study's name.
    pub study: String,
    /// The run id (`None` for a plan).
    pub run: Option<String>,
    /// True for `rto plan` and `rto run --dry-run`.
    pub dry_run: bool,
    /// Stages in topological order.
    pub stages: Vec<StageSummary>,
}

impl Summary {
    /// Number of stages with `status`.
    pub fn count(&self, status: Status) -> usize {
        self.stages.iter().filter(|s| s.status == status).count()
    }

    /// True if no stage failed or was interrupted.
    pub fn succeeded(&self) -> bool {
        self.count(Status::Failed) == 0 && self.count(Status::Interrupted) == 0
    }

    /// The aligned table. With `all = false`, cached stages are folded into the closing line when there are
    /// many, so that a 500-stage no-op does not print 500 lines.
    pub fn render_table(&self, all: bool) -> String {
        let fold = !all && self.stages.len() > 40;
        let rows: Vec<&StageSummary> =
            self.stages.iter().filter(|s| !(fold && matches!(s.status, Status::Cached | Status::CutOff))).collect();
        let mut out = String::new();
        if !rows.is_empty() {
            let w = rows.iter().map(|s| s.id.len()).max().unwrap_or(5).max(5);
            let _ = writeln!(out, "{:<w$}  {:<11}  {:>8}  {:<12}  DETAIL", "STAGE", "STATUS", "TIME", "KEY");
            for s in rows {
                let time = s.duration_ms.map(format_ms).unwrap_or_else(|| "-".into());
                let key = s.key.as_deref().map(|k| &k[..12.min(k.len())]).unwrap_or("-");
                let detail = match (&s.error, &s.reason, s.upstream.is_empty()) {
                    (Some(e), _, _) => first_line(e),
                    (None, _, false) if matches!(s.status, Status::Blocked) => {
                        format!("waits for {}", backticked(&s.upstream))
                    }
                    (None, _, false) if matches!(s.status, Status::Skipped) => {
                        format!("upstream {} did not succeed", backticked(&s.upstream))
                    }
                    (None, Some(r), _) if !matches!(s.status, Status::Cached | Status::CutOff) => r.to_string(),
                    _ => String::new(),
                };
                let _ = writeln!(out, "{:<w$}  {:<11}  {:>8}  {:<12}  {}", s.id, s.status.word(), time, key, detail);
            }
        }
        let _ = writeln!(out, "{}", self.closing_line());
        out
    }

    /// One line of counts, e.g. `3 ran, 12 cached, 1 failed`.
    pub fn closing_line(&self) -> String {
        let mut parts = Vec::new();
        for status in [
            Status::Ran,
            Status::WillRun,
            Status::Blocked,
            Status::Cached,
            Status::CutOff,
            Status::Failed,
            Status::Skipped,
            Status::Interrupted,
        ] {
            let n = self.count(status);
            if n > 0 {
                parts.push(format!("{n} {}", status.word().to_lowercase()));
            }
        }
        if parts.is_empty() {
            return "no stages".into();
        }
        format!("{}: {}", if self.dry_run { "plan" } else { "run" }, parts.join(", "))
    }
}

fn backticked(names: &[String]) -> String {
    names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_string()
}

/// `1.2s`, `35ms`, `2m05s`.
pub fn format_ms(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms}ms"),
        1000..=59_999 => format!("{:.1}s", ms as f64 / 1000.0),
        _ => format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60),
    }
}
