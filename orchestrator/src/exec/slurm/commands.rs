//! Slurm's command-line tools, the way schedulers that drive Slurm use them: `sbatch --parsable` to submit,
//! `squeue` for jobs in the queue, `scontrol show job -o` for jobs that left it (until `MinJobAge` expires),
//! `scancel`. No client library: the CLI is Slurm's stable interface, and it is what a login node offers.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::study::Resources;
use crate::study::executor::SlurmOptions;

/// One job to submit.
#[derive(Debug, Clone)]
pub struct JobSpec<'a> {
    /// `--job-name`.
    pub name: String,
    /// What the stage needs.
    pub resources: &'a Resources,
    /// Partition, account, QOS and extra flags.
    pub options: &'a SlurmOptions,
    /// The time limit, if any.
    pub time: Option<Duration>,
    /// Jobs it must wait for (`afterok`).
    pub after: Vec<String>,
    /// `--output` (with `%j`).
    pub output: PathBuf,
    /// `--chdir`.
    pub workdir: PathBuf,
}

/// The `sbatch` arguments for `spec` (the script comes on stdin).
pub fn sbatch_args(spec: &JobSpec<'_>) -> Vec<String> {
    let r = spec.resources;
    let mut args = vec![
        "--parsable".to_string(),
        format!("--job-name={}", spec.name),
        format!("--output={}", spec.output.display()),
        format!("--chdir={}", spec.workdir.display()),
        "--nodes=1".to_string(),
        "--ntasks=1".to_string(),
        format!("--cpus-per-task={}", r.cpus.max(1)),
    ];
    if r.memory > 0 {
        args.push(format!("--mem={}M", r.memory.div_ceil(1024 * 1024).max(1)));
    }
    if r.gpus > 0 {
        args.push(format!("--gres=gpu:{}", r.gpus));
    }
    if let Some(t) = spec.time {
        args.push(format!("--time={}", t.as_secs().div_ceil(60).max(1)));
    }
    let o = spec.options;
    for (flag, value) in [("--partition", &o.partition), ("--account", &o.account), ("--qos", &o.qos)] {
        if let Some(v) = value {
            args.push(format!("{flag}={v}"));
        }
    }
    if !spec.after.is_empty() {
        args.push(format!("--dependency=afterok:{}", spec.after.join(":")));
        // Without this a dependant of a failed job waits in the queue forever (DependencyNeverSatisfied), even
        // when no `rto` is watching to cancel it.
        args.push("--kill-on-invalid-dep=yes".to_string());
    }
    args.extend(o.sbatch_args.iter().cloned());
    args
}

/// A batch script that runs `argv` (each word shell-quoted).
pub fn job_script(comment: &str, argv: &[String]) -> String {
    let words: Vec<String> = argv.iter().map(|a| shell_quote(a)).collect();
    format!("#!/bin/sh\n# {}\nexec {}\n", comment.replace('\n', " "), words.join(" "))
}

/// `s` as one word for `sh`.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// How long a Slurm command may take before it is killed and counted as failed: slurmctld can stall (during
/// maintenance, or under load), and a poll blocked for minutes would also hold up Ctrl-C.
const COMMAND_LIMIT: Duration = Duration::from_secs(60);

/// Runs `cmd` (stdout and stderr captured; `input` written to its stdin when given) and waits at most
/// [`COMMAND_LIMIT`]; a command still running then is killed and reported, naming it.
fn run_within(cmd: &mut Command, what: &str, input: Option<&str>) -> anyhow::Result<Output> {
    run_limited(cmd, what, input, COMMAND_LIMIT)
}

/// [`run_within`] with another limit (for tests).
fn run_limited(cmd: &mut Command, what: &str, input: Option<&str>, limit: Duration) -> anyhow::Result<Output> {
    let mut child = cmd
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| {
            format!("cannot run `{what}` (is Slurm installed here and on PATH? `--executor slurm` submits from a login node)")
        })?;
    if let Some(text) = input {
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(text.as_bytes())
            .with_context(|| format!("cannot write to `{what}`"))?;
    }
    // Pipes are drained on threads so that a chatty command cannot block on a full pipe while we wait.
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(child.stdout.take().map(|r| Box::new(r) as Box<dyn Read + Send>));
    let err = drain(child.stderr.take().map(|r| Box::new(r) as Box<dyn Read + Send>));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().with_context(|| format!("`{what}`"))? {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("`{what}` did not answer within {:?} (is slurmctld responding?)", limit);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Output { status, stdout: out.join().unwrap_or_default(), stderr: err.join().unwrap_or_default() })
}

/// Submits a job and returns its id.
pub fn sbatch(args: &[String], script: &str) -> anyhow::Result<String> {
    let out = run_within(Command::new("sbatch").args(args), "sbatch", Some(script))?;
    if !out.status.success() {
        anyhow::bail!("sbatch refused the job: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    parse_sbatch(&String::from_utf8_lossy(&out.stdout))
        .ok_or_else(|| anyhow::anyhow!("sbatch printed no job id: {:?}", String::from_utf8_lossy(&out.stdout)))
}

/// `sbatch --parsable` prints `id` or `id;cluster`.
fn parse_sbatch(stdout: &str) -> Option<String> {
    let id = stdout.lines().rev().find(|l| !l.trim().is_empty())?.split(';').next()?.trim();
    (!id.is_empty() && id.chars().all(|c| c.is_ascii_digit() || c == '_')).then(|| id.to_string())
}

/// A job in the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    /// `PENDING`, `RUNNING`, `COMPLETING`, …
    pub state: String,
    /// Why it pends (`Dependency`, `Resources`, `Priority`, …), or `None`.
    pub reason: String,
    /// Where it runs (empty while pending).
    pub nodes: String,
}

/// The queue entries of those of `jobs` still in the queue (jobs that left it are simply absent).
pub fn squeue(jobs: &[String]) -> anyhow::Result<BTreeMap<String, Queued>> {
    let mut all = BTreeMap::new();
    for chunk in jobs.chunks(200) {
        let out = run_within(
            Command::new("squeue").args(["--noheader", "--format=%i|%T|%r|%N", "--jobs"]).arg(chunk.join(",")),
            "squeue",
            None,
        )?;
        let text = String::from_utf8_lossy(&out.stdout);
        // squeue fails when *every* listed job has left the queue ("Invalid job id specified"); that is an
        // answer, not an error.
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() && !stderr.contains("Invalid job id") {
            anyhow::bail!("squeue failed: {}", stderr.trim());
        }
        all.extend(parse_squeue(&text));
    }
    Ok(all)
}

fn parse_squeue(text: &str) -> BTreeMap<String, Queued> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.trim().splitn(4, '|');
            let id = f.next()?.trim().to_string();
            let state = f.next()?.trim().to_string();
            let reason = f.next().unwrap_or("").trim().to_string();
            let nodes = f.next().unwrap_or("").trim().to_string();
            (!id.is_empty()).then_some((id, Queued { state, reason, nodes }))
        })
        .collect()
}

/// True for the states of a job that has not ended.
pub fn is_active(state: &str) -> bool {
    matches!(
        state,
        "PENDING"
            | "CONFIGURING"
            | "RUNNING"
            | "COMPLETING"
            | "SUSPENDED"
            | "REQUEUED"
            | "REQUEUE_FED"
            | "REQUEUE_HOLD"
            | "RESIZING"
            | "SIGNALING"
            | "STAGE_OUT"
            | "STOPPED"
    )
}

/// A job as `scontrol show job` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobInfo {
    /// `JobState`.
    pub state: String,
    /// `Reason`.
    pub reason: String,
    /// `ExitCode`, `code:signal`.
    pub exit_code: String,
    /// `TimeLimit`.
    pub time_limit: String,
}

impl JobInfo {
    /// What went wrong, for people.
    pub fn describe(&self) -> String {
        let detail = match self.state.as_str() {
            "FAILED" => {
                let (code, signal) = self.exit_code.split_once(':').unwrap_or((&self.exit_code, "0"));
                if signal != "0" {
                    format!("its script was killed by signal {signal}")
                } else {
                    format!("its script exited with code {code} before writing a receipt")
                }
            }
            "CANCELLED" => "it was cancelled (scancel, an administrator, or an upstream job that failed)".into(),
            "TIMEOUT" => format!("it ran past its time limit ({})", self.time_limit),
            "NODE_FAIL" => "its node failed".into(),
            "OUT_OF_MEMORY" => "it ran out of memory (raise the stage's `resources.memory`)".into(),
            "PREEMPTED" => "it was preempted".into(),
            "BOOT_FAIL" => "its node failed to boot".into(),
            "DEADLINE" => "it missed its deadline".into(),
            "COMPLETED" => "it completed but left no receipt (is the cache on a filesystem the node shares?)".into(),
            other => format!("it ended as {other}"),
        };
        let reason = if self.reason.is_empty() || self.reason == "None" {
            String::new()
        } else {
            format!(", reason {}", self.reason)
        };
        format!("Slurm: {}{reason}: {detail}", self.state)
    }
}

/// What `scontrol` knows of `job`; `None` once it forgot it (`MinJobAge` after the end, without accounting).
pub fn scontrol_job(job: &str) -> anyhow::Result<Option<JobInfo>> {
    let out = run_within(Command::new("scontrol").args(["show", "job", "--oneliner", job]), "scontrol", None)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        if stderr.contains("Invalid job id") {
            return Ok(None);
        }
        anyhow::bail!("scontrol failed: {}", stderr.trim());
    }
    Ok(parse_scontrol(&String::from_utf8_lossy(&out.stdout)))
}

fn parse_scontrol(text: &str) -> Option<JobInfo> {
    let line = text.lines().find(|l| l.contains("JobState="))?;
    let field = |name: &str| -> String {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
            .unwrap_or("")
            .to_string()
    };
    Some(JobInfo {
        state: field("JobState"),
        reason: field("Reason"),
        exit_code: field("ExitCode"),
        time_limit: field("TimeLimit"),
    })
}

/// Cancels jobs (ids that already ended are ignored by Slurm).
pub fn scancel(jobs: &[String]) -> anyhow::Result<()> {
    for chunk in jobs.chunks(200) {
        let out = run_within(Command::new("scancel").args(chunk), "scancel", None)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() && !stderr.contains("Invalid job id") && !stderr.contains("already completing") {
            anyhow::bail!("scancel failed: {}", stderr.trim());
        }
    }
    Ok(())
}

/// The last `n` lines of a file (empty if unreadable).
pub fn tail(path: &Path, n: usize) -> String {
    crate::exec::stage::tail(path, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slurm_command_that_hangs_is_killed_and_named() {
        let e = run_limited(Command::new("sleep").arg("30"), "squeue", None, Duration::from_millis(200)).unwrap_err();
        assert!(e.to_string().contains("`squeue` did not answer within"), "{e}");
        let out = run_limited(Command::new("sh").args(["-c", "cat; echo err >&2"]), "sh", Some("in\n"), COMMAND_LIMIT)
            .unwrap();
        assert_eq!((out.stdout.as_slice(), out.stderr.as_slice()), (&b"in\n"[..], &b"err\n"[..]));
    }

    #[test]
    fn sbatch_flags_follow_resources_options_and_dependencies() {
        let resources = Resources { gpus: 2, cpus: 4, memory: 1536 * 1024 * 1024 + 1, timeout: None };
        let options = SlurmOptions {
            partition: Some("gpu".into()),
            account: None,
            qos: Some("high".into()),
            time: None,
            sbatch_args: vec!["--constraint=a100".into()],
        };
        let spec = JobSpec {
            name: "rto.s.train".into(),
            resources: &resources,
            options: &options,
            time: Some(Duration::from_secs(3601)),
            after: vec!["11".into(), "12".into()],
            output: "/c/slurm/logs/%j.out".into(),
            workdir: "/w".into(),
        };
        let args = sbatch_args(&spec);
        for want in [
            "--parsable",
            "--job-name=rto.s.train",
            "--output=/c/slurm/logs/%j.out",
            "--chdir=/w",
            "--cpus-per-task=4",
            "--mem=1537M",
            "--gres=gpu:2",
            "--time=61",
            "--partition=gpu",
            "--qos=high",
            "--dependency=afterok:11:12",
            "--kill-on-invalid-dep=yes",
            "--constraint=a100",
        ] {
            assert!(args.iter().any(|a| a == want), "{want} missing from {args:?}");
        }
        assert!(!args.iter().any(|a| a.starts_with("--account")));
        assert_eq!(args.last().unwrap(), "--constraint=a100", "study flags come last, so they can override");

        let bare = Resources { gpus: 0, cpus: 1, memory: 0, timeout: None };
        let spec = JobSpec { resources: &bare, options: &SlurmOptions::default(), time: None, after: vec![], ..spec };
        let args = sbatch_args(&spec);
        assert!(!args.iter().any(|a| a.starts_with("--mem") || a.starts_with("--gres") || a.starts_with("--time")));
        assert!(!args.iter().any(|a| a.starts_with("--dependency")));
    }

    #[test]
    fn scripts_quote_every_word() {
        let script = job_script("stage `a`", &["/bin/rto".into(), "it's here".into(), "$HOME".into()]);
        assert_eq!(script, "#!/bin/sh\n# stage `a`\nexec '/bin/rto' 'it'\\''s here' '$HOME'\n");
        let out = Command::new("sh").arg("-c").arg(format!("printf '%s|' {}", shell_quote("it's $HOME"))).output();
        assert_eq!(String::from_utf8_lossy(&out.unwrap().stdout), "it's $HOME|");
    }

    #[test]
    fn parses_what_slurm_prints() {
        assert_eq!(parse_sbatch("4211\n").as_deref(), Some("4211"));
        assert_eq!(parse_sbatch("4211;cluster\n").as_deref(), Some("4211"));
        assert_eq!(parse_sbatch("sbatch: warning\n"), None);

        let q = parse_squeue("2|PENDING|None|\n3|PENDING|Dependency|\n5|RUNNING|None|node7\n");
        assert_eq!(q.len(), 3);
        assert_eq!(q["3"].reason, "Dependency");
        assert_eq!(q["5"], Queued { state: "RUNNING".into(), reason: "None".into(), nodes: "node7".into() });

        // As printed by Slurm 22.05 for a job that exited with 3.
        let line = "JobId=3 JobName=wrap UserId=root(0) JobState=FAILED Reason=NonZeroExitCode Dependency=(null) \
                    Requeue=1 ExitCode=3:0 RunTime=00:00:00 TimeLimit=UNLIMITED TimeMin=N/A";
        let info = parse_scontrol(line).unwrap();
        assert_eq!(info.state, "FAILED");
        assert_eq!(info.exit_code, "3:0");
        assert!(info.describe().contains("exited with code 3"), "{}", info.describe());
        assert!(info.describe().contains("NonZeroExitCode"));
        let timeout = JobInfo {
            state: "TIMEOUT".into(),
            reason: "TimeLimit".into(),
            exit_code: "0:15".into(),
            time_limit: "00:01:00".into(),
        };
        assert!(timeout.describe().contains("time limit (00:01:00)"));
        assert!(is_active("PENDING") && is_active("COMPLETING") && !is_active("COMPLETED") && !is_active("FAILED"));
    }
}
