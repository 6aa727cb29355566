//! Worker processes: a plugin op runs in `rto worker`, a child process of the orchestrator.
//!
//! Why: a plugin is native code that may panic, abort, leak, exhaust memory or hold a GPU. In a child
//! process, all of that ends with the process, and the scheduler and the other stages go on.
//!
//! Protocol between parent and worker:
//! - arguments: the op, the request file (an [`api::protocol::Request`] as JSON), the result file, and the
//!   plugin (`--library PATH` or `--linked NAME`);
//! - worker → parent, on stdout, one JSON object per line: `{"log": "…"}` or `{"progress": {"done", "total"}}`;
//!   anything on stderr goes to the stage log as it is;
//! - parent → worker: closing the worker's stdin means "cancel" (so a parent killed with `kill -9` cancels its
//!   workers too); after a grace period the parent kills the worker;
//! - the worker writes the result file (`{"ok": …}` or `{"error": …, "status": N}`) and exits 0. Any other
//!   ending (a signal, a non-zero exit, no result file) is a crash, reported with the log's tail.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use api::protocol::{ErrorReply, Request};
use serde::{Deserialize, Serialize};

use super::registry::LinkedPlugin;

/// Which plugin a worker loads.
#[derive(Debug, Clone)]
pub enum Which {
    /// A library to `dlopen`.
    Library(PathBuf),
    /// A plugin linked into `rto`, by name.
    Linked(String),
}

/// What the worker writes to the result file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorkerResult {
    /// The op's JSON result.
    Ok(serde_json::Value),
    /// The op failed.
    Error {
        /// The plugin's status code.
        status: i32,
        /// Its error reply.
        reply: ErrorReply,
    },
}

/// How a worker run ended, from the parent's side.
#[derive(Debug)]
pub enum Ended {
    /// The op succeeded.
    Ok(serde_json::Value),
    /// The op reported an error.
    OpError {
        /// Status code.
        status: i32,
        /// Its reply.
        reply: ErrorReply,
    },
    /// The worker ended without a result: crashed, killed, aborted.
    Crashed(String),
    /// It was cancelled (and killed if it did not stop in time).
    Cancelled,
    /// It ran past its time limit and was killed.
    TimedOut(Duration),
}

/// Parent side: runs `op` of `which` in a worker and waits for it, forwarding log lines and progress.
#[allow(clippy::too_many_arguments)]
pub fn run(
    which: &Which,
    op: &str,
    request: &Request,
    dir: &Path,
    log: &mut dyn Write,
    progress: &dyn Fn(u64, u64),
    cancelled: &dyn Fn() -> bool,
    timeout: Option<Duration>,
) -> anyhow::Result<Ended> {
    let request_file = dir.join("request.json");
    let result_file = dir.join("result.json");
    std::fs::write(&request_file, serde_json::to_vec_pretty(request)?)?;
    let _ = std::fs::remove_file(&result_file);
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.arg("worker").arg("--op").arg(op).arg("--request").arg(&request_file).arg("--result").arg(&result_file);
    match which {
        Which::Library(p) => cmd.arg("--library").arg(p),
        Which::Linked(n) => cmd.arg("--linked").arg(n),
    };
    cmd.env("CUDA_VISIBLE_DEVICES", request.gpus.join(","))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let mut stdin = child.stdin.take();
    let (rx, readers) = read_lines(&mut child);
    let started = Instant::now();
    let mut cancel_at: Option<Instant> = None;
    let mut timed_out = false;
    let status = loop {
        while let Ok(line) = rx.try_recv() {
            forward(line, log, progress)?;
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if cancel_at.is_none() && cancelled() {
            stdin = None; // closing stdin asks the plugin to stop
            cancel_at = Some(Instant::now());
        }
        if let Some(limit) = timeout
            && cancel_at.is_none()
            && started.elapsed() > limit
        {
            timed_out = true;
            stdin = None;
            cancel_at = Some(Instant::now());
        }
        if cancel_at.is_some_and(|t| t.elapsed() > Duration::from_secs(10)) {
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(stdin);
    for r in readers {
        let _ = r.join();
    }
    while let Ok(line) = rx.try_recv() {
        forward(line, log, progress)?;
    }
    if timed_out {
        return Ok(Ended::TimedOut(timeout.unwrap_or_default()));
    }
    let result = std::fs::read(&result_file).ok().and_then(|b| serde_json::from_slice::<WorkerResult>(&b).ok());
    Ok(match (result, cancel_at) {
        (_, Some(_)) => Ended::Cancelled,
        (Some(WorkerResult::Ok(v)), None) if status.success() => Ended::Ok(v),
        (Some(WorkerResult::Error { status, reply }), None) => Ended::OpError { status, reply },
        _ => {
            use std::os::unix::process::ExitStatusExt;
            Ended::Crashed(match (status.code(), status.signal()) {
                (_, Some(sig)) => format!("the worker was killed by signal {sig}{}", signal_hint(sig)),
                (Some(code), _) => format!("the worker exited with status {code} without a result"),
                _ => "the worker ended without a result".into(),
            })
        }
    })
}

/// Reads a worker's stdout and stderr on two threads into one channel, in arrival order: stdout lines as `Ok`
/// (the protocol's JSON lines), stderr lines as `Err` (anything a plugin prints, lossily decoded). The channel
/// ends when both pipes close, that is when the worker is gone.
pub(crate) fn read_lines(
    child: &mut std::process::Child,
) -> (std::sync::mpsc::Receiver<Result<String, String>>, [std::thread::JoinHandle<()>; 2]) {
    let (tx, rx) = std::sync::mpsc::channel::<Result<String, String>>();
    let (out, err) = (child.stdout.take().expect("piped"), child.stderr.take().expect("piped"));
    let tx2 = tx.clone();
    let readers = [
        std::thread::spawn(move || {
            // Bytes, decoded lossily: a stray non-UTF-8 byte must not stop the reader (and then the worker, on a
            // full pipe).
            let mut reader = BufReader::new(out);
            let mut buf = Vec::new();
            while reader.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
                let _ = tx.send(Ok(String::from_utf8_lossy(&buf).trim_end().to_string()));
                buf.clear();
            }
        }),
        std::thread::spawn(move || {
            let mut reader = BufReader::new(err);
            let mut buf = Vec::new();
            while reader.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
                let _ = tx2.send(Err(String::from_utf8_lossy(&buf).trim_end().to_string()));
                buf.clear();
            }
        }),
    ];
    (rx, readers)
}

fn signal_hint(sig: i32) -> &'static str {
    match sig {
        libc::SIGABRT => " (SIGABRT: the plugin aborted)",
        libc::SIGKILL => " (SIGKILL: out of memory, or killed)",
        libc::SIGSEGV => " (SIGSEGV: the plugin crashed)",
        _ => "",
    }
}

fn forward(line: Result<String, String>, log: &mut dyn Write, progress: &dyn Fn(u64, u64)) -> std::io::Result<()> {
    match line {
        Err(stderr) => writeln!(log, "{stderr}"),
        Ok(stdout) => match serde_json::from_str::<serde_json::Value>(&stdout) {
            Ok(v) if v.get("progress").is_some() => {
                let p = &v["progress"];
                progress(p["done"].as_u64().unwrap_or(0), p["total"].as_u64().unwrap_or(0));
                Ok(())
            }
            Ok(v) if v.get("log").is_some() => writeln!(log, "{}", v["log"].as_str().unwrap_or("")),
            _ => writeln!(log, "{stdout}"),
        },
    }
}

/// The worker's host callbacks: JSON lines on stdout; cancellation when stdin closes.
struct WorkerHost {
    cancelled: Arc<AtomicBool>,
}

impl api::Host for WorkerHost {
    fn log(&self, _level: u32, message: &str) {
        emit(&serde_json::json!({ "log": message }));
    }
    fn progress(&self, done: u64, total: u64, message: &str) {
        emit(&serde_json::json!({ "progress": { "done": done, "total": total, "message": message } }));
    }
    fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }
}

/// The worker's channel to its parent: the process's original stdout, once [`claim_stdout`] has moved it aside.
static PROTOCOL: std::sync::OnceLock<std::sync::Mutex<std::fs::File>> = std::sync::OnceLock::new();

/// Keeps stdout for the protocol: the original fd 1 is duplicated for [`emit`], and fd 1 becomes a copy of
/// stderr, so that whatever a plugin (or a library it uses) prints lands in the stage log and can never break,
/// or be mistaken for, a protocol line (a progress bar without a newline would otherwise swallow a result).
fn claim_stdout() {
    use std::os::fd::FromRawFd;
    // SAFETY: fds 1 and 2 belong to this process; this runs before any plugin code, and `dup` returns a new fd
    // that nothing else owns, which the `File` then owns.
    unsafe {
        let fd = libc::dup(1);
        if fd >= 0 && libc::dup2(2, 1) >= 0 {
            let _ = PROTOCOL.set(std::sync::Mutex::new(std::fs::File::from_raw_fd(fd)));
        }
    }
}

fn emit(v: &serde_json::Value) {
    let line = format!("{v}\n");
    match PROTOCOL.get() {
        Some(file) => {
            let mut f = file.lock().unwrap_or_else(|p| p.into_inner());
            let _ = f.write_all(line.as_bytes());
        }
        None => {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(line.as_bytes());
            let _ = out.flush();
        }
    }
}

/// The pseudo-op that checks many stages' params in one worker: `params.checks` is a list of
/// `{"op", "stage_id", "params", "inputs": [names]}`; the result lists `{"stage_id", "status", "error"}`.
pub const VALIDATE: &str = "rto:validate";

fn validate_all(instance: &mut api::client::Instance<'_>, request: &Request, host: &dyn api::Host) -> WorkerResult {
    let mut results = Vec::new();
    for check in request.params["checks"].as_array().cloned().unwrap_or_default() {
        let stage_id = check["stage_id"].as_str().unwrap_or("").to_string();
        let one = Request {
            stage_id: stage_id.clone(),
            params: check["params"].clone(),
            inputs: check["inputs"]
                .as_array()
                .map(|names| names.iter().filter_map(|n| n.as_str()).map(|n| (n.to_string(), PathBuf::new())).collect())
                .unwrap_or_default(),
            validate_only: true,
            ..request.clone()
        };
        let (status, error) = match instance.invoke(check["op"].as_str().unwrap_or(""), &one, host) {
            Ok(_) => (api::ffi::STATUS_OK, None),
            Err(e) => (e.status, Some(e.reply)),
        };
        results.push(serde_json::json!({ "stage_id": stage_id, "status": status, "error": error }));
    }
    WorkerResult::Ok(serde_json::Value::Array(results))
}

/// Loads the plugin `which` names: a library by `dlopen`, or a linked descriptor by name.
fn open_plugin(which: &Which, linked: &[LinkedPlugin]) -> Result<api::client::Plugin, String> {
    match which {
        Which::Library(path) => super::load::open(path),
        Which::Linked(name) => linked
            .iter()
            .find_map(|d| {
                // SAFETY: static descriptors of this binary.
                let p = unsafe { api::client::Plugin::from_raw(d()) }.ok()?;
                (p.description.name == *name).then_some(p)
            })
            .ok_or_else(|| format!("this rto has no linked plugin `{name}`")),
    }
}

/// Worker side (`rto worker`): loads the plugin, runs one op, writes the result file. Returns the process
/// exit code.
pub fn main(which: &Which, op: &str, request: &Path, result: &Path, linked: &[LinkedPlugin]) -> i32 {
    claim_stdout();
    let cancelled = Arc::new(AtomicBool::new(false));
    {
        let cancelled = cancelled.clone();
        std::thread::spawn(move || {
            // EOF (or an error) on stdin: the parent asked us to stop, or is gone.
            let mut sink = [0u8; 64];
            let mut stdin = std::io::stdin();
            while stdin.read(&mut sink).is_ok_and(|n| n > 0) {}
            cancelled.store(true, Ordering::SeqCst);
        });
    }
    let write_result = |r: &WorkerResult| -> i32 {
        match std::fs::write(result, serde_json::to_vec(r).expect("results serialise")) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("cannot write `{}`: {e}", result.display());
                1
            }
        }
    };
    let fail = |message: String| WorkerResult::Error {
        status: api::ffi::STATUS_ERROR,
        reply: ErrorReply { message, param_path: None },
    };
    let request: Request = match std::fs::read(request)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(r) => r,
        Err(e) => return write_result(&fail(format!("cannot read the request `{}`: {e}", request.display()))),
    };
    let plugin = match open_plugin(which, linked) {
        Ok(p) => p,
        Err(e) => return write_result(&fail(e)),
    };
    if op == "describe" {
        return write_result(&WorkerResult::Ok(serde_json::to_value(&plugin.description).expect("serialises")));
    }
    let mut instance = match plugin.create(&serde_json::Value::Null) {
        Ok(i) => i,
        Err(e) => return write_result(&WorkerResult::Error { status: e.status, reply: e.reply }),
    };
    let host = WorkerHost { cancelled };
    if op == VALIDATE {
        return write_result(&validate_all(&mut instance, &request, &host));
    }
    let outcome = match instance.invoke(op, &request, &host) {
        Ok(v) => WorkerResult::Ok(v),
        Err(e) => WorkerResult::Error { status: e.status, reply: e.reply },
    };
    write_result(&outcome)
}

/// One call to a session worker (`rto worker --session`), a line on its stdin.
#[derive(Debug, Serialize, Deserialize)]
pub struct SessionCall {
    /// The op.
    pub op: String,
    /// Its request.
    pub request: Request,
}

/// Worker side of a session (`rto worker --session`): loads the plugin, creates ONE instance, and runs the
/// [`SessionCall`]s read from stdin, one per line, in order, answering each with a `{"result": WorkerResult}`
/// line on stdout (between the usual log and progress lines). The instance lives as long as the session, so
/// an op may keep state between calls (a loaded model, for `rto serve`). EOF on stdin ends the session.
pub fn session_main(which: &Which, linked: &[LinkedPlugin]) -> i32 {
    claim_stdout();
    let reply = |r: &WorkerResult| emit(&serde_json::json!({ "result": r }));
    let fail = |message: String| WorkerResult::Error {
        status: api::ffi::STATUS_ERROR,
        reply: ErrorReply { message, param_path: None },
    };
    // Calls arrive on a channel so that EOF can also mark the session cancelled while an op runs.
    let cancelled = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    {
        let cancelled = cancelled.clone();
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
            cancelled.store(true, Ordering::SeqCst);
        });
    }
    let plugin = match open_plugin(which, linked) {
        Ok(p) => p,
        Err(e) => {
            reply(&fail(e));
            return 1;
        }
    };
    let mut instance = match plugin.create(&serde_json::Value::Null) {
        Ok(i) => i,
        Err(e) => {
            reply(&WorkerResult::Error { status: e.status, reply: e.reply });
            return 1;
        }
    };
    let host = WorkerHost { cancelled };
    for line in rx {
        let outcome = match serde_json::from_str::<SessionCall>(&line) {
            Err(e) => fail(format!("a session call is not valid JSON: {e}")),
            Ok(call) => match instance.invoke(&call.op, &call.request, &host) {
                Ok(v) => WorkerResult::Ok(v),
                Err(e) => WorkerResult::Error { status: e.status, reply: e.reply },
            },
        };
        reply(&outcome);
    }
    0
}
