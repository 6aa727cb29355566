//! The parent side of a session worker (`rto worker --session`): one plugin instance in a child process,
//! called many times.
//!
//! Why a child process, as for stages: a model plugin is native code that may crash or run out of memory; the
//! server answers that request with an error, starts a fresh worker for the next one, and stays up.

use std::io::Write;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::Receiver;

use anyhow::Context;
use api::protocol::{ErrorReply, Request};

use crate::plugin::worker::{SessionCall, Which, WorkerResult};

/// A worker process holding one plugin instance; restarted on the next call after it dies.
pub struct Session {
    which: Which,
    running: Option<Running>,
    /// How many workers have been started (1 unless one died).
    pub starts: u64,
}

struct Running {
    child: Child,
    stdin: ChildStdin,
    /// stdout lines as `Ok`, stderr lines as `Err`.
    lines: Receiver<Result<String, String>>,
}

/// How a call failed.
#[derive(Debug)]
pub enum CallError {
    /// The op reported an error (a bad param, a missing file, …); the worker is fine.
    Op(ErrorReply),
    /// The worker died during the call; the next call starts a new one.
    Crashed(String),
}

impl Session {
    /// A session over the plugin `which` names. Starts nothing yet: the first call does.
    pub fn new(which: Which) -> Session {
        Session { which, running: None, starts: 0 }
    }

    /// Starts the worker now (so that a plugin that cannot load is reported before the server listens).
    pub fn start(&mut self) -> anyhow::Result<()> {
        if self.running.is_none() {
            self.running = Some(self.spawn()?);
            self.starts += 1;
        }
        Ok(())
    }

    fn spawn(&self) -> anyhow::Result<Running> {
        let exe = std::env::current_exe().context("cannot find the rto executable")?;
        let mut cmd = Command::new(exe);
        cmd.arg("worker").arg("--session");
        match &self.which {
            Which::Library(p) => cmd.arg("--library").arg(p),
            Which::Linked(n) => cmd.arg("--linked").arg(n),
        };
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().context("cannot start a worker process")?;
        let stdin = child.stdin.take().expect("piped");
        // The readers end with the worker's pipes; nothing needs to join them.
        let (lines, _readers) = crate::plugin::worker::read_lines(&mut child);
        Ok(Running { child, stdin, lines })
    }

    /// Runs `op` with `request` in the worker and waits for its result. Log lines of the plugin go to
    /// `on_log`.
    pub fn call(
        &mut self,
        op: &str,
        request: &Request,
        on_log: &mut dyn FnMut(&str),
    ) -> Result<serde_json::Value, CallError> {
        self.start().map_err(|e| CallError::Crashed(format!("{e:#}")))?;
        let running = self.running.as_mut().expect("started");
        let line = serde_json::to_string(&SessionCall { op: op.to_string(), request: request.clone() })
            .expect("requests serialise");
        let sent = writeln!(running.stdin, "{line}").and_then(|()| running.stdin.flush());
        let mut tail: Vec<String> = Vec::new();
        if sent.is_ok() {
            // The channel ends when both pipes close: the worker is gone.
            while let Ok(line) = running.lines.recv() {
                match line {
                    Err(stderr) => {
                        on_log(&stderr);
                        remember(&mut tail, stderr);
                    }
                    Ok(stdout) => match serde_json::from_str::<serde_json::Value>(&stdout) {
                        Ok(mut v) if v.get("result").is_some() => {
                            return match serde_json::from_value::<WorkerResult>(v["result"].take()) {
                                Ok(WorkerResult::Ok(value)) => Ok(value),
                                Ok(WorkerResult::Error { reply, .. }) => Err(CallError::Op(reply)),
                                Err(e) => Err(CallError::Op(ErrorReply {
                                    message: format!("the worker sent an unreadable result: {e}"),
                                    param_path: None,
                                })),
                            };
                        }
                        Ok(v) if v.get("log").is_some() => on_log(v["log"].as_str().unwrap_or("")),
                        Ok(v) if v.get("progress").is_some() => {}
                        _ => {
                            on_log(&stdout);
                            remember(&mut tail, stdout);
                        }
                    },
                }
            }
        }
        let mut gone = self.running.take().expect("running");
        let status = gone.child.wait();
        let how = match status {
            Ok(s) => {
                use std::os::unix::process::ExitStatusExt;
                match (s.code(), s.signal()) {
                    (_, Some(sig)) => format!("the model worker was killed by signal {sig}"),
                    (Some(code), _) => format!("the model worker exited with status {code}"),
                    _ => "the model worker ended".into(),
                }
            }
            Err(e) => format!("the model worker is gone ({e})"),
        };
        let tail = if tail.is_empty() { String::new() } else { format!(": {}", tail.join(" | ")) };
        Err(CallError::Crashed(format!("{how}{tail}")))
    }
}

/// Keeps the last few unstructured lines a worker printed, for the crash message.
fn remember(tail: &mut Vec<String>, line: String) {
    if tail.len() == 5 {
        tail.remove(0);
    }
    tail.push(line);
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(mut r) = self.running.take() {
            // Closing stdin ends the session; a worker stuck in an op is killed rather than waited for.
            drop(r.stdin);
            let _ = r.child.kill();
            let _ = r.child.wait();
        }
    }
}
