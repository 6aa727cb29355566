//! The Slurm executor against a real Slurm (slurmctld, slurmd, munge): `bash .ci/slurm.sh start`.
//!
//! Without a reachable Slurm these tests print a notice and pass, unless `RTO_REQUIRE_SLURM=1` (CI sets it),
//! which makes them fail with the command that starts one. What Slurm did is read back from Slurm itself
//! (`scontrol show job`, filtered by the project directory the jobs ran in), not from rto's own files.
//!
//! The studies gate stages on a file (`$GATE`, outside any key) so that a test can hold jobs in the queue
//! while it looks at them, kills them, or kills `rto`.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::support::{Outcome, Project, outcome};

/// A reachable Slurm, and the `SLURM_CONF` its clients need.
struct Slurm {
    conf: Option<PathBuf>,
}

/// The Slurm to test against, or `None` (after a notice) when there is none and none is required.
fn slurm() -> Option<&'static Slurm> {
    static FOUND: OnceLock<Result<Slurm, String>> = OnceLock::new();
    let found = FOUND.get_or_init(|| {
        // The CI script's cluster is found without an export; an explicit SLURM_CONF wins.
        let default = PathBuf::from(std::env::var("RTO_SLURM_DIR").unwrap_or_else(|_| "/tmp/rto-slurm".into()))
            .join("slurm.conf");
        let conf = std::env::var_os("SLURM_CONF").map(PathBuf::from).or_else(|| default.is_file().then_some(default));
        // Slurm's clients retry a missing config for a minute: look for it first.
        let file = conf.clone().unwrap_or_else(|| PathBuf::from("/etc/slurm/slurm.conf"));
        if !file.is_file() {
            return Err(format!("there is no `{}`", file.display()));
        }
        let mut sinfo = Command::new("sinfo");
        sinfo.args(["--noheader", "--format=%T"]).env("SLURM_CONF", &file);
        match output_within(sinfo, Duration::from_secs(30)) {
            Err(e) => Err(format!("`sinfo` cannot run: {e}")),
            Ok(out) if !out.status.success() => {
                Err(format!("`sinfo` failed: {}", String::from_utf8_lossy(&out.stderr).trim()))
            }
            Ok(out) => {
                let states = String::from_utf8_lossy(&out.stdout).to_string();
                if states.lines().any(|s| s.starts_with("idle") || s.starts_with("mixed") || s.starts_with("alloc")) {
                    Ok(Slurm { conf })
                } else {
                    Err(format!("no node is up (sinfo: {:?})", states.trim()))
                }
            }
        }
    });
    match found {
        Ok(s) => Some(s),
        Err(why) => {
            let how = "start a single-node Slurm with `bash .ci/slurm.sh start` (as root; it installs slurm-wlm and \
                       munge if needed)";
            if std::env::var("RTO_REQUIRE_SLURM").is_ok_and(|v| v == "1") {
                panic!("Slurm is required (RTO_REQUIRE_SLURM=1) but not available: {why}; {how}");
            }
            eprintln!("skipping a Slurm test: Slurm is not available ({why}); {how}");
            None
        }
    }
}

/// Runs `cmd`, killing it after `limit` (a Slurm client waits a long time for a controller that is down).
fn output_within(mut cmd: Command, limit: Duration) -> std::io::Result<std::process::Output> {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let deadline = Instant::now() + limit;
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output()
}

/// A job as `scontrol show job` describes it.
#[derive(Debug, Clone)]
struct Job {
    id: String,
    stage: String,
    state: String,
    reason: String,
}

impl Slurm {
    fn tool(&self, name: &str) -> Command {
        let mut c = Command::new(name);
        if let Some(conf) = &self.conf {
            c.env("SLURM_CONF", conf);
        }
        c
    }

    /// `rto ARGS` in the project, with the gate and Slurm's config in its environment.
    fn rto(&self, p: &Project, args: &[&str]) -> Command {
        let mut c = p.command(args);
        c.env("GATE", p.path("gate"));
        if let Some(conf) = &self.conf {
            c.env("SLURM_CONF", conf);
        }
        c
    }

    /// `rto --format json run study.toml --executor slurm ARGS`.
    fn run(&self, p: &Project, args: &[&str]) -> Outcome {
        let mut all = vec!["--format", "json", "run", "study.toml", "--executor", "slurm"];
        all.extend_from_slice(args);
        outcome(self.rto(p, &all).output().unwrap())
    }

    /// The same, in the background.
    fn spawn(&self, p: &Project) -> Child {
        self.rto(p, &["--format", "json", "run", "study.toml", "--executor", "slurm"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Every job Slurm knows that ran in this project's directory, oldest first.
    fn jobs(&self, p: &Project) -> Vec<Job> {
        let out = self.tool("scontrol").args(["show", "job", "--oneliner"]).output().unwrap();
        let dir = format!("WorkDir={}", p.dir.path().display());
        let mut jobs: Vec<Job> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.split_whitespace().any(|w| w == dir))
            .map(|l| {
                let field = |name: &str| {
                    l.split_whitespace()
                        .find_map(|w| w.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
                        .unwrap_or("")
                        .to_string()
                };
                let name = field("JobName");
                Job {
                    id: field("JobId"),
                    stage: name.rsplit('.').next().unwrap_or("").to_string(),
                    state: field("JobState"),
                    reason: field("Reason"),
                }
            })
            .collect();
        jobs.sort_by_key(|j| j.id.parse::<u64>().unwrap_or(0));
        jobs
    }

    /// Waits until `ok` holds for this project's jobs (a guard against hanging, not a timing assertion).
    fn wait_for(&self, p: &Project, what: &str, ok: impl Fn(&[Job]) -> bool) -> Vec<Job> {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let jobs = self.jobs(p);
            if ok(&jobs) {
                return jobs;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}; jobs: {jobs:#?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The stderr lines of a running `rto`, as they come.
struct Lines {
    rx: std::sync::mpsc::Receiver<String>,
    seen: std::cell::RefCell<String>,
}

impl Lines {
    fn of(child: &mut Child) -> Lines {
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Lines { rx, seen: Default::default() }
    }

    /// Waits for `n` lines containing `what` (a guard against hanging, not a timing assertion).
    fn wait_for(&self, n: usize, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(180);
        let mut found = 0;
        while found < n {
            let line = self
                .rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|e| panic!("waiting for {n} lines with {what:?} ({e}); saw:\n{}", self.seen.borrow()));
            found += usize::from(line.contains(what));
            self.seen.borrow_mut().push_str(&(line + "\n"));
        }
    }

    /// Everything it printed, once it exited.
    fn rest(&self) -> String {
        let mut all = self.seen.borrow().clone();
        for line in self.rx.iter() {
            all.push_str(&(line + "\n"));
        }
        all
    }
}

/// Per stage id, the jobs Slurm ran for it.
fn by_stage(jobs: &[Job]) -> BTreeMap<String, Vec<Job>> {
    let mut out: BTreeMap<String, Vec<Job>> = BTreeMap::new();
    for j in jobs {
        out.entry(j.stage.clone()).or_default().push(j.clone());
    }
    out
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The chain of `support::CHAIN` (a → b, c → d; solo), with `a` (and `solo`, if `solo_waits`) waiting for
/// `$GATE`, and `b`'s command replaceable.
fn study(b_cmd: &str, solo_waits: bool) -> String {
    let wait = r#"while [ ! -e \"$GATE\" ]; do sleep 0.1; done; "#;
    let solo_wait = if solo_waits { wait } else { "" };
    format!(
        r#"
[study]
name = "chain"

[[stage]]
id = "a"
uses = "command"
inputs = {{ seed = "seed.txt" }}
params = {{ cmd = "{wait}echo a >> \"$RUNS_LOG\"; cat \"$RTO_INPUT_SEED\" > out.txt; echo 'value=1' >> out.txt", outputs = ["out.txt"] }}

[[stage]]
id = "b"
uses = "command"
inputs = {{ up = "a.out.txt" }}
params = {{ cmd = "echo b >> \"$RUNS_LOG\"; {b_cmd}", outputs = ["n.txt"] }}

[[stage]]
id = "c"
uses = "command"
inputs = {{ up = "a.out.txt" }}
params = {{ cmd = "echo c >> \"$RUNS_LOG\"; wc -c < \"$RTO_INPUT_UP\" > n.txt", outputs = ["n.txt"] }}

[[stage]]
id = "d"
uses = "command"
inputs = {{ b = "b.n.txt", c = "c" }}
params = {{ cmd = "echo d >> \"$RUNS_LOG\"; cat \"$RTO_INPUT_B\" \"$RTO_INPUT_C/n.txt\" > sum.txt", outputs = ["sum.txt"] }}

[[stage]]
id = "solo"
uses = "command"
params = {{ cmd = "{solo_wait}echo solo >> \"$RUNS_LOG\"; echo solo > s.txt", outputs = ["s.txt"] }}
"#
    )
}

const B_OK: &str = r#"wc -c < \"$RTO_INPUT_UP\" > n.txt"#;

/// A project with the chain study; the gate is open unless `gated` (then `solo` waits at it too).
fn project(b_cmd: &str, gated: bool) -> Project {
    project_with(&study(b_cmd, gated), gated)
}

fn project_with(text: &str, gated: bool) -> Project {
    let p = Project::new(text, &[("seed.txt", "seed\n")]);
    if !gated {
        p.write("gate", "");
    }
    p
}

/// The order stages ran in (`runs.log`), and empties it.
fn ran_in_order(p: &Project) -> Vec<String> {
    let path = p.path("runs.log");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let _ = std::fs::remove_file(&path);
    text.lines().map(String::from).collect()
}

fn verify_clean(p: &Project) {
    let v = p.rto(&["verify"]).expect_code(0);
    assert!(v.stdout.contains("store is consistent"), "{}", v.stdout);
}

#[test]
fn slurm_queues_the_whole_dag_respects_dependencies_and_a_second_run_is_a_noop() {
    let Some(slurm) = slurm() else { return };
    let p = project(B_OK, true);
    let child = slurm.spawn(&p);
    // With `a` held at its gate, every stage is already in the queue, its dependants waiting on it.
    let jobs = slurm.wait_for(&p, "all five jobs queued, `a` running", |jobs| {
        let s = by_stage(jobs);
        s.len() == 5 && s["a"][0].state == "RUNNING"
    });
    let s = by_stage(&jobs);
    for stage in ["b", "c", "d"] {
        assert_eq!(s[stage][0].state, "PENDING", "{stage}: {jobs:#?}");
        assert_eq!(s[stage][0].reason, "Dependency", "{stage}: {jobs:#?}");
    }
    p.write("gate", "");
    let first = outcome(child.wait_with_output().unwrap()).expect_code(0);
    assert_eq!(first.with_status("ran"), strings(&["a", "b", "c", "d", "solo"]), "{}", first.stderr);
    let order = ran_in_order(&p);
    let at = |s: &str| order.iter().position(|x| x == s).unwrap_or_else(|| panic!("{s} did not run: {order:?}"));
    assert!(at("a") < at("b") && at("a") < at("c") && at("b") < at("d") && at("c") < at("d"), "{order:?}");
    assert_eq!(p.read("results/chain/d/sum.txt"), "13\n13\n");
    for stage in ["a", "b", "c", "d", "solo"] {
        let job = &by_stage(&slurm.jobs(&p))[stage][0];
        assert_eq!(job.state, "COMPLETED", "{stage}: {job:?}");
        assert!(first.stderr.contains(&format!("job {}", job.id)), "progress names job {}:\n{}", job.id, first.stderr);
    }

    let second = slurm.run(&p, &[]).expect_code(0);
    assert_eq!(second.with_status("cached").len(), 5, "{:?}", second.statuses());
    assert!(ran_in_order(&p).is_empty(), "nothing runs twice");
    assert_eq!(slurm.jobs(&p).len(), 5, "a no-op run submits nothing");
    verify_clean(&p);
}

#[test]
fn cache_hits_and_local_stages_are_not_submitted() {
    let Some(slurm) = slurm() else { return };
    let p = project(B_OK, false);
    p.edit_study("id = \"c\"\nuses = \"command\"", "id = \"c\"\nuses = \"command\"\nexecutor = \"local\"");
    // `a` and `solo` are cached by a local run first.
    let local =
        outcome(slurm.rto(&p, &["--format", "json", "run", "study.toml", "--only", "a", "solo"]).output().unwrap());
    assert_eq!(local.with_status("ran"), strings(&["a", "solo"]));
    ran_in_order(&p);

    let run = slurm.run(&p, &[]).expect_code(0);
    assert_eq!(run.with_status("cached"), strings(&["a", "solo"]));
    assert_eq!(run.with_status("ran"), strings(&["b", "c", "d"]));
    let submitted: Vec<String> = by_stage(&slurm.jobs(&p)).into_keys().collect();
    assert_eq!(submitted, strings(&["b", "d"]), "cached `a`, `solo` and local `c` are not submitted");
    assert_eq!(p.read("results/chain/d/sum.txt"), "13\n13\n");
    verify_clean(&p);
}

#[test]
fn a_failing_stage_is_reported_with_its_job_and_its_dependants_are_cancelled() {
    let Some(slurm) = slurm() else { return };
    let p = project(r#"echo boom-from-b >&2; exit 3"#, false);
    let run = slurm.run(&p, &[]).expect_code(1);
    let st = run.statuses();
    assert_eq!(st["b"], "failed", "{st:?}\n{}", run.stderr);
    assert_eq!(st["d"], "skipped", "{st:?}");
    for ok in ["a", "c", "solo"] {
        assert_eq!(st[ok], "ran", "{ok}: {st:?}\n{}", run.stderr);
    }
    let jobs = by_stage(&slurm.jobs(&p));
    let b = &jobs["b"][0];
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let b_summary = v["stages"].as_array().unwrap().iter().find(|s| s["id"] == "b").unwrap();
    let error = b_summary["error"].as_str().unwrap();
    assert!(error.contains(&format!("job {}", b.id)), "the error names the job: {error}");
    assert!(error.contains("exit"), "{error}");
    assert!(run.stderr.contains("boom-from-b"), "the log tail is shown:\n{}", run.stderr);
    assert_eq!(b.state, "FAILED");
    // `d` was queued behind `b` and is cancelled, by rto or by Slurm, without ever running.
    let d = &jobs["d"][0];
    assert_eq!(d.state, "CANCELLED", "{d:?}");
    assert!(!ran_in_order(&p).contains(&"d".to_string()));
    verify_clean(&p);

    // Fixed, the study resumes where it failed.
    p.edit_study("echo boom-from-b >&2; exit 3", B_OK);
    let again = slurm.run(&p, &[]).expect_code(0);
    assert_eq!(again.with_status("ran"), strings(&["b", "d"]), "{:?}", again.statuses());
    assert_eq!(again.with_status("cached"), strings(&["a", "c", "solo"]));
    verify_clean(&p);
}

#[test]
fn a_job_killed_with_scancel_fails_its_stage_and_the_next_run_resubmits_it() {
    let Some(slurm) = slurm() else { return };
    let p = project_with(&study(B_OK, false), true);
    let child = slurm.spawn(&p);
    let jobs =
        slurm.wait_for(&p, "`a` running", |jobs| by_stage(jobs).get("a").is_some_and(|a| a[0].state == "RUNNING"));
    let a = by_stage(&jobs)["a"][0].clone();
    let out = slurm.tool("scancel").arg(&a.id).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let killed = outcome(child.wait_with_output().unwrap());
    assert_eq!(killed.code, 1, "{}\n{}", killed.stdout, killed.stderr);
    let st = killed.statuses();
    assert_eq!(st["a"], "failed", "{st:?}");
    for s in ["b", "c", "d"] {
        assert_eq!(st[s], "skipped", "{s}: {st:?}");
    }
    assert!(killed.stderr.contains("CANCELLED"), "{}", killed.stderr);
    assert!(killed.stderr.contains(&format!("job {}", a.id)), "{}", killed.stderr);
    verify_clean(&p);

    p.write("gate", "");
    let again = slurm.run(&p, &[]).expect_code(0);
    let ran = again.with_status("ran");
    assert!(["a", "b", "c", "d"].iter().all(|s| ran.contains(&s.to_string())), "{:?}", again.statuses());
    let a_jobs = &by_stage(&slurm.jobs(&p))["a"];
    assert_eq!(a_jobs.len(), 2, "`a` was submitted again: {a_jobs:#?}");
    assert_eq!(a_jobs[1].state, "COMPLETED");
    assert_eq!(p.read("results/chain/d/sum.txt"), "13\n13\n");
    verify_clean(&p);
}

#[test]
fn a_new_run_attaches_to_the_jobs_of_a_killed_run_instead_of_submitting_again() {
    let Some(slurm) = slurm() else { return };
    let p = project(B_OK, true);
    let mut first = slurm.spawn(&p);
    let first_lines = Lines::of(&mut first);
    first_lines.wait_for(5, "Submitted");
    assert_eq!(slurm.jobs(&p).len(), 5);
    // The terminal closes: `rto` dies, its jobs stay in the queue.
    first.kill().unwrap();
    first.wait().unwrap();

    let mut second = slurm.spawn(&p);
    let lines = Lines::of(&mut second);
    lines.wait_for(5, "attached to job");
    p.write("gate", "");
    let status = second.wait().unwrap();
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut second.stdout.take().unwrap(), &mut stdout).unwrap();
    let stderr = lines.rest();
    assert!(status.success(), "{stdout}\n{stderr}");
    let out = Outcome { code: 0, stdout, stderr };
    assert_eq!(out.with_status("ran").len() + out.with_status("cut-off").len(), 5, "{:?}", out.statuses());
    assert_eq!(slurm.jobs(&p).len(), 5, "nothing was submitted twice");
    let mut order = ran_in_order(&p);
    order.sort();
    assert_eq!(order, strings(&["a", "b", "c", "d", "solo"]), "each stage ran once");
    verify_clean(&p);
}

#[test]
fn local_and_slurm_runs_give_identical_keys_and_artifacts() {
    let Some(slurm) = slurm() else { return };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("studies/example.toml")).unwrap();
    let data = |f: &str| std::fs::read_to_string(root.join("studies/data").join(f)).unwrap();
    let files =
        [("data/instructions.jsonl", data("instructions.jsonl")), ("data/refusals.jsonl", data("refusals.jsonl"))];
    let files: Vec<(&str, &str)> = files.iter().map(|(a, b)| (*a, b.as_str())).collect();
    let local = Project::new(&text, &files);
    // Where stages run is not part of any key: the Slurm project says so in its study, too.
    let on_slurm = text.replacen(
        "[vars]",
        "[executor]\nkind = \"slurm\"\ntime = \"30min\"\nsbatch_args = [\"--comment=rto-test\"]\n\n[vars]",
        1,
    );
    let on_slurm = on_slurm.replacen(
        "id = \"compare\"\nuses = \"command\"",
        "id = \"compare\"\nuses = \"command\"\nexecutor = { time = \"10min\" }",
        1,
    );
    let slurmed = Project::new(&on_slurm, &files);
    let a = local.run(&[]);
    let b = outcome(slurm.rto(&slurmed, &["--format", "json", "run", "study.toml"]).output().unwrap()).expect_code(0);
    assert_eq!(by_stage(&slurm.jobs(&slurmed)).len(), 5, "`[executor] kind` sends every stage to Slurm");
    let keys = |o: &Outcome| -> BTreeMap<String, String> {
        let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
        v["stages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["id"].as_str().unwrap().into(), s["key"].as_str().unwrap().into()))
            .collect()
    };
    assert_eq!(keys(&a), keys(&b));
    let store_a = cache::Store::open(local.path(".rto")).unwrap();
    let store_b = cache::Store::open(slurmed.path(".rto")).unwrap();
    for (id, key) in keys(&a) {
        let key: cache::ActionKey = key.parse().unwrap();
        let ra = store_a.get_action(&key).unwrap().unwrap();
        let rb = store_b.get_action(&key).unwrap().unwrap();
        assert_eq!(ra.outputs, rb.outputs, "stage {id}: same output digests");
        assert_ne!(ra.provenance.run, rb.provenance.run);
    }
    assert_eq!(local.read("results/example/compare/report.txt"), slurmed.read("results/example/compare/report.txt"));
    verify_clean(&slurmed);
}

#[test]
fn bad_executor_settings_are_located_in_the_study() {
    let p = project(B_OK, false);
    p.edit_study("[study]", "[executor]\nkind = \"kubernetes\"\n\n[study]");
    let out = p.rto(&["plan", "study.toml"]).expect_code(2);
    assert!(out.stderr.contains("unknown executor `kubernetes`"), "{}", out.stderr);
    assert!(out.stderr.contains("study.toml:2"), "{}", out.stderr);

    let p = project(B_OK, false);
    p.edit_study(
        "id = \"c\"\nuses = \"command\"",
        "id = \"c\"\nuses = \"command\"\nexecutor = { sbatch_args = [\"--dependency=afterany:1\"] }",
    );
    let out = p.rto(&["plan", "study.toml"]).expect_code(2);
    assert!(out.stderr.contains("rto sets `--dependency` itself"), "{}", out.stderr);

    let p = project(B_OK, false);
    p.edit_study("id = \"c\"\nuses = \"command\"", "id = \"c\"\nuses = \"command\"\nexecutor = { time = \"soon\" }");
    let out = p.rto(&["plan", "study.toml"]).expect_code(2);
    assert!(out.stderr.contains("time `soon`"), "{}", out.stderr);
}

#[test]
fn ctrl_c_cancels_the_jobs_the_run_submitted() {
    let Some(slurm) = slurm() else { return };
    let p = project(B_OK, true);
    let mut child = slurm.spawn(&p);
    let lines = Lines::of(&mut child);
    lines.wait_for(5, "Submitted");
    // SAFETY: kill(2) on the pid of our own child process, which has not been waited for yet.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) }, 0);
    let status = child.wait().unwrap();
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    let out = Outcome { code: status.code().unwrap_or(-1), stdout, stderr: lines.rest() };
    assert_eq!(out.code, 130, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(out.with_status("interrupted"), strings(&["a", "solo"]), "{:?}", out.statuses());
    assert_eq!(out.with_status("skipped"), strings(&["b", "c", "d"]), "queued behind `a`");
    slurm.wait_for(&p, "every job cancelled", |jobs| jobs.len() == 5 && jobs.iter().all(|j| j.state == "CANCELLED"));
    assert!(ran_in_order(&p).is_empty());
    verify_clean(&p);

    // Cancelled jobs are not attached to: the next run submits them again.
    p.write("gate", "");
    let again = slurm.run(&p, &[]).expect_code(0);
    assert_eq!(again.with_status("ran").len(), 5, "{:?}", again.statuses());
    assert_eq!(slurm.jobs(&p).len(), 10);
}

#[test]
fn gpus_become_gres_and_a_job_slurm_refuses_fails_its_stage_clearly() {
    let Some(slurm) = slurm() else { return };
    // The test cluster's node has two (fake) GPUs.
    let p = Project::new(
        r#"
[study]
name = "gpus"

[[stage]]
id = "one"
uses = "command"
resources = { gpus = 1, memory = "64MiB" }
params = { cmd = "echo \"[$CUDA_VISIBLE_DEVICES]\" > gpus.txt", outputs = ["gpus.txt"] }

[[stage]]
id = "none"
uses = "command"
params = { cmd = "echo \"[$CUDA_VISIBLE_DEVICES]\" > gpus.txt", outputs = ["gpus.txt"] }

[[stage]]
id = "too-many"
uses = "command"
resources = { gpus = 64 }
params = { cmd = "true" }
"#,
        &[],
    );
    let run = slurm.run(&p, &["--keep-going"]).expect_code(1);
    let st = run.statuses();
    assert_eq!(st["one"], "ran", "{st:?}\n{}", run.stderr);
    assert_eq!(st["none"], "ran");
    assert_eq!(st["too-many"], "failed");
    let one = p.read("results/gpus/one/gpus.txt");
    assert!(one == "[0]\n" || one == "[1]\n", "Slurm handed out one GPU: {one:?}");
    assert_eq!(p.read("results/gpus/none/gpus.txt"), "[]\n", "a stage that asked for none sees none");
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let error = v["stages"].as_array().unwrap().iter().find(|s| s["id"] == "too-many").unwrap()["error"].clone();
    assert!(error.as_str().unwrap().contains("sbatch refused the job"), "{error}");
}
