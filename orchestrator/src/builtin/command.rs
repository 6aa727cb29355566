//! The `command` built-in: a shell command with declared inputs and outputs, like a DVC stage.
//!
//! ```toml
//! [[stage]]
//! id = "count"
//! uses = "command"
//! inputs = { data = "prepare.train.jsonl" }
//! params = { cmd = "wc -l < \"$RTO_INPUT_DATA\" > count.txt", outputs = ["count.txt"] }
//! ```
//!
//! The command runs under `sh -c` in an empty working directory. Each input's path is in the environment as
//! `RTO_INPUT_<NAME>` (name upper-cased, `-` as `_`); each declared output is a file or directory the command
//! leaves in its working directory under that name. Its stdout and stderr go to the stage log; a line
//! `rto:progress DONE/TOTAL` updates the stage's progress bar.
//!
//! `CUDA_VISIBLE_DEVICES` holds the GPUs reserved by `resources.gpus` (empty when none were reserved, so a stage
//! cannot use a GPU the scheduler handed to another).
//!
//! The command text, the declared outputs and `env` are params, so they are part of the key; the paths the
//! inputs happen to have are not (they reach the command through the environment at run time).
//!
//! The command runs in its own process group, which is terminated on Ctrl-C (then killed after a grace
//! period), and killed when `sh` exits (nothing the command started outlives its stage). If rto itself is
//! killed, the parent-death signal reaches `sh` only; processes it started in the background may survive.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Command as Process, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::{Builtin, ParamError, StageContext};

/// The `command` built-in (see the module documentation).
pub struct Command;

struct Params {
    cmd: String,
    outputs: Vec<String>,
    env: BTreeMap<String, String>,
}

fn parse(params: &serde_json::Value) -> Result<Params, ParamError> {
    let obj = params.as_object().ok_or_else(|| ParamError::new(&[], "params must be a table"))?;
    for key in obj.keys() {
        if !matches!(key.as_str(), "cmd" | "outputs" | "env") {
            return Err(ParamError::new(&[key], format!("unknown param `{key}` (valid: `cmd`, `outputs`, `env`)")));
        }
    }
    let cmd = match obj.get("cmd") {
        Some(serde_json::Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(_) => {
            return Err(ParamError::new(
                &["cmd"],
                "`cmd` must be a non-empty string, e.g. `cmd = \"echo hi > out.txt\"`",
            ));
        }
        None => {
            return Err(ParamError::new(
                &[],
                "missing `cmd`, e.g. `params = { cmd = \"echo hi > out.txt\", outputs = [\"out.txt\"] }`",
            ));
        }
    };
    let mut outputs = Vec::new();
    match obj.get("outputs") {
        None => {}
        Some(serde_json::Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let idx = i.to_string();
                let name =
                    item.as_str().filter(|n| cache::is_safe_name(n) && !n.starts_with('.')).ok_or_else(|| {
                        ParamError::new(
                            &["outputs", &idx],
                            "an output is a plain file or directory name, e.g. `\"model\"` or `\"scores.json\"`",
                        )
                    })?;
                if outputs.iter().any(|o| o == name) {
                    return Err(ParamError::new(&["outputs", &idx], format!("output `{name}` is declared twice")));
                }
                outputs.push(name.to_string());
            }
        }
        Some(_) => {
            return Err(ParamError::new(&["outputs"], "`outputs` must be a list of names, e.g. `[\"out.txt\"]`"));
        }
    }
    let mut env = BTreeMap::new();
    match obj.get("env") {
        None => {}
        Some(serde_json::Value::Object(vars)) => {
            for (k, v) in vars {
                let v = v.as_str().ok_or_else(|| ParamError::new(&["env", k], "environment values must be strings"))?;
                env.insert(k.clone(), v.to_string());
            }
        }
        Some(_) => return Err(ParamError::new(&["env"], "`env` must be a table of strings")),
    }
    Ok(Params { cmd, outputs, env })
}

/// The environment variable that carries an input's path.
pub fn input_var(name: &str) -> String {
    format!("RTO_INPUT_{}", name.to_ascii_uppercase().replace('-', "_"))
}

enum Line {
    Out(String),
    Err(String),
}

impl Builtin for Command {
    fn name(&self) -> &'static str {
        "command"
    }

    fn validate(&self, params: &serde_json::Value, input_names: &[&str]) -> Result<(), ParamError> {
        parse(params)?;
        let mut seen: BTreeMap<String, &str> = BTreeMap::new();
        for name in input_names {
            if let Some(other) = seen.insert(input_var(name), name) {
                return Err(ParamError::new(
                    &[],
                    format!("inputs `{other}` and `{name}` would both be `{}`: rename one", input_var(name)),
                ));
            }
        }
        Ok(())
    }

    fn run(&self, ctx: &mut StageContext<'_>) -> anyhow::Result<()> {
        let params = parse(ctx.params).map_err(|e| anyhow::anyhow!("{}", e.message))?;
        let work = ctx.scratch_dir.join("work");
        std::fs::create_dir_all(&work).with_context(|| format!("cannot create `{}`", work.display()))?;
        let mut process = Process::new("sh");
        process
            .arg("-c")
            .arg(&params.cmd)
            .current_dir(&work)
            .env("RTO_STAGE_ID", ctx.stage_id)
            .env("CUDA_VISIBLE_DEVICES", ctx.gpus.join(","))
            .envs(&params.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        for (name, path) in ctx.inputs {
            process.env(input_var(name), path);
        }
        // SAFETY: prctl only changes this (forked, not yet exec'ed) process's parent-death signal.
        unsafe {
            process.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = process.spawn().context("cannot start `sh`")?;
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().expect("piped");
        let err = child.stderr.take().expect("piped");
        let tx2 = tx.clone();
        let readers = [
            std::thread::spawn(move || forward_lines(out, |l| tx.send(Line::Out(l)).is_ok())),
            std::thread::spawn(move || forward_lines(err, |l| tx2.send(Line::Err(l)).is_ok())),
        ];
        let pgid = child.id() as i32;
        let mut cancelled_at: Option<Instant> = None;
        let status = loop {
            while let Ok(line) = rx.try_recv() {
                let text = match line {
                    Line::Out(l) | Line::Err(l) => l,
                };
                if let Some((done, total)) = parse_progress(&text) {
                    (ctx.progress)(done, total);
                }
                writeln!(ctx.log, "{text}").context("cannot write the stage log")?;
            }
            if let Some(status) = child.try_wait().context("cannot wait for the command")? {
                break status;
            }
            if (ctx.cancelled)() {
                match cancelled_at {
                    None => {
                        // SAFETY: signals the command's own process group, which we created.
                        unsafe { libc::kill(-pgid, libc::SIGTERM) };
                        cancelled_at = Some(Instant::now());
                    }
                    Some(t) if t.elapsed() > Duration::from_secs(5) => unsafe {
                        libc::kill(-pgid, libc::SIGKILL);
                    },
                    Some(_) => {}
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // Whatever `sh` left behind in its group (`server &`) dies with the stage: it could hold the log pipes
        // open forever, or go on writing outputs while they are being stored.
        // SAFETY: signals the command's own process group, which we created.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        for r in readers {
            let _ = r.join();
        }
        while let Ok(Line::Out(l) | Line::Err(l)) = rx.try_recv() {
            writeln!(ctx.log, "{l}").context("cannot write the stage log")?;
        }
        if cancelled_at.is_some() {
            bail!("cancelled");
        }
        if !status.success() {
            match status.code() {
                Some(code) => bail!("command exited with status {code}"),
                None => bail!("command was killed by a signal ({status})"),
            }
        }
        for name in &params.outputs {
            let from = work.join(name);
            if std::fs::symlink_metadata(&from).is_err() {
                bail!("declared output `{name}` was not written by the command (it must be in its working directory)");
            }
            std::fs::rename(&from, ctx.out_dir.join(name))
                .with_context(|| format!("cannot collect output `{name}`"))?;
        }
        Ok(())
    }
}

/// Sends each line of `from` (invalid UTF-8 replaced, never a reason to stop reading: a reader that stopped
/// would close the pipe and kill the command with SIGPIPE) until `send` fails or the pipe closes.
fn forward_lines(from: impl std::io::Read, mut send: impl FnMut(String) -> bool) {
    let mut reader = BufReader::new(from);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf).trim_end_matches(['\n', '\r']).to_string();
                if !send(line) {
                    return;
                }
            }
        }
    }
}

fn parse_progress(line: &str) -> Option<(u64, u64)> {
    let rest = line.trim().strip_prefix("rto:progress ")?;
    let (done, total) = rest.split_once('/')?;
    Some((done.trim().parse().ok()?, total.trim().parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(params: serde_json::Value, expected: Result<(), (&[&str], &str)>) {
        let got = Command.validate(&params, &[]);
        match (got, expected) {
            (Ok(()), Ok(())) => {}
            (Err(e), Err((path, msg))) => {
                assert_eq!(e.path, path.iter().map(|s| s.to_string()).collect::<Vec<_>>(), "{params}");
                assert!(e.message.contains(msg), "{}: {}", params, e.message);
            }
            (got, want) => panic!("{params}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn params() {
        use serde_json::json;
        check(json!({"cmd": "true"}), Ok(()));
        check(json!({"cmd": "x", "outputs": ["a", "b"], "env": {"K": "v"}}), Ok(()));
        check(json!({}), Err((&[], "missing `cmd`")));
        check(json!({"cmd": ""}), Err((&["cmd"], "non-empty")));
        check(json!({"cmd": "x", "output": []}), Err((&["output"], "unknown param")));
        check(json!({"cmd": "x", "outputs": ["../x"]}), Err((&["outputs", "0"], "plain file")));
        check(json!({"cmd": "x", "outputs": ["a", "a"]}), Err((&["outputs", "1"], "twice")));
        check(json!({"cmd": "x", "env": {"K": 1}}), Err((&["env", "K"], "strings")));
    }

    #[test]
    fn inputs_whose_variables_collide_are_refused() {
        let params = serde_json::json!({"cmd": "true"});
        assert!(Command.validate(&params, &["a-b", "c"]).is_ok());
        let err = Command.validate(&params, &["a-b", "a_b"]).unwrap_err();
        assert!(err.message.contains("`RTO_INPUT_A_B`"), "{}", err.message);
    }

    #[test]
    fn invalid_utf8_output_does_not_stop_the_reader() {
        let mut got = Vec::new();
        forward_lines(&b"ok\n\xff\xfe bad\nlast"[..], |l| {
            got.push(l);
            true
        });
        assert_eq!(got, ["ok", "\u{fffd}\u{fffd} bad", "last"]);
    }

    #[test]
    fn progress_lines() {
        assert_eq!(parse_progress("rto:progress 3/10"), Some((3, 10)));
        assert_eq!(parse_progress("  rto:progress 3 / 10 "), Some((3, 10)));
        assert_eq!(parse_progress("progress 3/10"), None);
    }
}
