//! `rto serve`: an OpenAI-compatible HTTP server over a model plugin's `generate` op.
//!
//! One session worker ([`session`]) holds the plugin instance, which loads the model once; HTTP connections are
//! served on one async thread ([`http`]) and their generations queue for the worker, one at a time. Endpoints:
//! `GET /v1/models`, `POST /v1/chat/completions` (with `logprobs`/`top_logprobs`), `POST /v1/completions`,
//! `GET /health`, and `GET /rto/stats` (request counts, for tests that check what a client sent).
//!
//! Test modes (`--fail-first`, `--fail-with`, `--delay-ms`) make the server misbehave the way real endpoints
//! do (rate limits, dropped connections, slow answers), so that clients' retry and timeout paths are tested
//! against a real server.

mod http;
pub mod openai;
pub mod session;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::plugin::worker::Which;
use session::{CallError, Session};

/// How the first `--fail-first` completion requests fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FailWith {
    /// 429 Too Many Requests, with `Retry-After: 0`.
    #[value(name = "429")]
    RateLimit,
    /// 500 Internal Server Error.
    #[value(name = "500")]
    ServerError,
    /// The connection is closed without an answer.
    Drop,
}

/// What `rto serve` serves and how.
#[derive(Debug, Clone)]
pub struct Options {
    /// The model: an HF model directory or a GGUF file.
    pub model: PathBuf,
    /// A LoRA adapter directory (PEFT layout), merged on load.
    pub adapter: Option<PathBuf>,
    /// The name clients send as `model` [default: the model's file name].
    pub served_name: String,
    /// A chat template for models without one (a request's own `chat_template` wins).
    pub chat_template: Option<String>,
    /// Address to listen on.
    pub host: String,
    /// Port (0: any free port; the line printed at start says which).
    pub port: u16,
    /// Fail the first this many completion requests.
    pub fail_first: u64,
    /// How they fail.
    pub fail_with: FailWith,
    /// Wait this long before answering each completion request.
    pub delay: Duration,
}

/// The model the worker's `generate` op is asked about, as request inputs.
fn inputs(opts: &Options) -> BTreeMap<String, PathBuf> {
    let mut m = BTreeMap::new();
    m.insert("model".to_string(), opts.model.clone());
    if let Some(a) = &opts.adapter {
        m.insert("adapter".to_string(), a.clone());
    }
    m
}

/// Starts the worker, loads the model (so a bad model fails here, before anything listens), binds, prints
/// `listening on http://ADDR` and serves until Ctrl-C or SIGTERM.
pub fn serve(opts: Options, which: Which) -> anyhow::Result<()> {
    let model = std::path::absolute(&opts.model).unwrap_or(opts.model.clone());
    if !model.exists() {
        bail!("the model `{}` does not exist", opts.model.display());
    }
    let opts = Options { model, adapter: opts.adapter.map(|a| std::path::absolute(&a).unwrap_or(a)), ..opts };
    let scratch = tempfile::tempdir().context("cannot create a scratch directory")?;
    // Two directories, as for a stage: an op may clear its out dir without touching its scratch.
    for sub in ["out", "scratch"] {
        std::fs::create_dir(scratch.path().join(sub)).context("cannot create a scratch directory")?;
    }
    let generator = Generator {
        session: Session::new(which),
        inputs: inputs(&opts),
        scratch: scratch.path().into(),
        chat_template: opts.chat_template.clone(),
    };
    let generator = std::sync::Arc::new(std::sync::Mutex::new(generator));
    {
        let mut g = generator.lock().expect("not poisoned");
        g.session.start()?;
        eprintln!(
            "loading {}{} …",
            opts.model.display(),
            opts.adapter.as_ref().map_or(String::new(), |a| format!(" + {}", a.display()))
        );
        let warm = serde_json::json!({ "prompt": "Hello", "max_tokens": 1, "temperature": 0.0, "seed": 0, "stop": [] });
        g.generate(warm).map_err(|e| anyhow::anyhow!("cannot serve `{}`: {}", opts.model.display(), e.message))?;
    }
    let listener = std::net::TcpListener::bind((opts.host.as_str(), opts.port))
        .with_context(|| format!("cannot listen on {}:{}", opts.host, opts.port))?;
    http::run(listener, opts, generator)
}

/// The worker session plus what every `generate` request carries.
pub(crate) struct Generator {
    session: Session,
    inputs: BTreeMap<String, PathBuf>,
    scratch: PathBuf,
    chat_template: Option<String>,
}

impl Generator {
    /// Runs `generate` with `params`; a worker crash becomes a 500 and the next call starts a new worker.
    pub(crate) fn generate(&mut self, mut params: serde_json::Value) -> Result<serde_json::Value, openai::ApiError> {
        if let Some(t) = &self.chat_template
            && params.get("messages").is_some()
            && params.get("chat_template").is_none()
        {
            params["chat_template"] = serde_json::Value::String(t.clone());
        }
        let request = api::protocol::Request {
            protocol: api::protocol::PROTOCOL_VERSION.into(),
            stage_id: "serve".into(),
            params,
            inputs: self.inputs.clone(),
            out_dir: self.scratch.join("out"),
            scratch_dir: self.scratch.join("scratch"),
            gpus: vec![],
            validate_only: false,
        };
        let mut log = |line: &str| eprintln!("model: {line}");
        match self.session.call("generate", &request, &mut log) {
            Ok(v) => Ok(v),
            Err(CallError::Op(reply)) => Err(match reply.param_path {
                // A bad param is the client's mistake (e.g. a chat template the model lacks); name the field.
                Some(path) => openai::ApiError::invalid(&path.join("."), reply.message),
                None => openai::ApiError::server(reply.message),
            }),
            Err(CallError::Crashed(how)) => Err(openai::ApiError::server(how)),
        }
    }
}
