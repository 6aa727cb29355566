//! The HTTP side of `rto serve` (hyper, HTTP/1.1 with keep-alive, on a single-threaded tokio runtime): routing,
//! the test modes, and the hand-off of generations to the blocking worker session.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use super::openai::{self, ApiError, Stamp};
use super::{FailWith, Generator, Options};

/// Sets its flag when dropped: with the request's future, when the client goes away.
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Bodies larger than this are refused (a judge prompt with two long answers is well under it).
const MAX_BODY: usize = 16 << 20;

struct State {
    opts: Options,
    generator: Arc<Mutex<Generator>>,
    /// Completion requests received (chat and text), failed ones included.
    requests: AtomicU64,
    /// Completion requests answered with a completion.
    completions: AtomicU64,
}

/// Returned by the service to make hyper close the connection without answering (`--fail-with drop`).
#[derive(Debug)]
struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped on purpose (--fail-with drop)")
    }
}

impl std::error::Error for DropConnection {}

/// Serves on `listener` until the process ends.
pub(super) fn run(
    listener: std::net::TcpListener,
    opts: Options,
    generator: Arc<Mutex<Generator>>,
) -> anyhow::Result<()> {
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let state = Arc::new(State { opts, generator, requests: AtomicU64::new(0), completions: AtomicU64::new(0) });
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        // Ctrl-C or SIGTERM ends the accept loop, so that `serve` returns and drops what it holds: the model
        // worker is stopped and the scratch directory removed.
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        // Announced only now, with the handlers in place: a client (or a test) that stops the server as soon as
        // it listens gets the clean shutdown too.
        let addr = listener.local_addr()?;
        {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            writeln!(out, "listening on http://{addr}")?;
            out.flush()?;
        }
        eprintln!("serving `{}` (OpenAI-compatible: http://{addr}/v1); stop with Ctrl-C", state.opts.served_name);
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = interrupt.recv() => break,
                _ = terminate.recv() => break,
            };
            let (stream, _) = match accepted {
                Ok(s) => s,
                // Out of file descriptors and the like: wait rather than spin or die.
                Err(e) => {
                    eprintln!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let state = state.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| handle(state.clone(), req));
                // A client that hangs up mid-request is its business, not the server's.
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
        eprintln!("stopping: the model worker ends and the scratch directory is removed");
        Ok(())
    })
}

fn json_response(status: u16, body: &Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(serde_json::to_vec(body).expect("JSON values serialise"))));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    r
}

fn error_response(e: &ApiError) -> Response<Full<Bytes>> {
    json_response(e.status, &e.body())
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, DropConnection> {
    let path = req.uri().path().trim_end_matches('/').to_string();
    Ok(match (req.method().clone(), path.as_str()) {
        (Method::GET, "/health") => json_response(200, &json!({ "status": "ok" })),
        (Method::GET, "/v1/models") => json_response(
            200,
            &json!({ "object": "list", "data": [{
                "id": state.opts.served_name, "object": "model", "created": 0, "owned_by": "rto"
            }]}),
        ),
        (Method::GET, "/rto/stats") => json_response(
            200,
            &json!({
                "requests": state.requests.load(Ordering::SeqCst),
                "completions": state.completions.load(Ordering::SeqCst),
            }),
        ),
        (Method::POST, "/v1/chat/completions") => return complete(state, req, true).await,
        (Method::POST, "/v1/completions") => return complete(state, req, false).await,
        (_, "/health" | "/v1/models" | "/rto/stats" | "/v1/chat/completions" | "/v1/completions") => {
            error_response(&ApiError {
                status: 405,
                kind: "invalid_request_error",
                param: None,
                message: format!("{} is not allowed on {path}", req.method()),
            })
        }
        _ => error_response(&ApiError {
            status: 404,
            kind: "not_found_error",
            param: None,
            message: format!("no route {path}; this server offers /v1/chat/completions, /v1/completions, /v1/models"),
        }),
    })
}

async fn complete(
    state: Arc<State>,
    req: Request<Incoming>,
    chat: bool,
) -> Result<Response<Full<Bytes>>, DropConnection> {
    let n = state.requests.fetch_add(1, Ordering::SeqCst);
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Ok(error_response(&ApiError::invalid("body", format!("cannot read the body: {e}")))),
    };
    if n < state.opts.fail_first {
        return match state.opts.fail_with {
            FailWith::Drop => Err(DropConnection),
            FailWith::RateLimit => {
                let mut r = error_response(&ApiError {
                    status: 429,
                    kind: "rate_limit_error",
                    param: None,
                    message: format!(
                        "rate limited on purpose (request {} of the first {})",
                        n + 1,
                        state.opts.fail_first
                    ),
                });
                r.headers_mut().insert("retry-after", hyper::header::HeaderValue::from_static("0"));
                Ok(r)
            }
            FailWith::ServerError => Ok(error_response(&ApiError::server(format!(
                "failed on purpose (request {} of the first {})",
                n + 1,
                state.opts.fail_first
            )))),
        };
    }
    if !state.opts.delay.is_zero() {
        tokio::time::sleep(state.opts.delay).await;
    }
    let parsed = if chat { openai::chat_request(&body) } else { openai::completion_request(&body) };
    let parsed = match parsed {
        Ok(p) => p,
        Err(e) => return Ok(error_response(&e)),
    };
    if let Some(m) = parsed.model.as_deref().filter(|m| *m != state.opts.served_name) {
        return Ok(error_response(&ApiError {
            status: 404,
            kind: "not_found_error",
            param: Some("model".into()),
            message: format!("the model `{m}` does not exist; this server serves `{}`", state.opts.served_name),
        }));
    }
    let generator = state.generator.clone();
    let params = parsed.params;
    // Generations queue for the one worker. A client that hangs up (a judge's request timeout) drops this
    // future; the guard then marks its queued generation as unwanted, so that retries do not pile up work
    // nobody will read behind the lock.
    let gone = Arc::new(AtomicBool::new(false));
    let _guard = SetOnDrop(gone.clone());
    let result = tokio::task::spawn_blocking(move || {
        let mut g = generator.lock().unwrap_or_else(|p| p.into_inner());
        if gone.load(Ordering::SeqCst) {
            return Err(ApiError::server("the client went away before its turn"));
        }
        g.generate(params)
    })
    .await
    .unwrap_or_else(|e| Err(ApiError::server(format!("the generation task failed: {e}"))));
    let result = match result {
        Ok(r) => r,
        Err(e) => return Ok(error_response(&e)),
    };
    state.completions.fetch_add(1, Ordering::SeqCst);
    let stamp = Stamp {
        id: n,
        created: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
    };
    let body = if chat {
        openai::chat_response(&result, &state.opts.served_name, &stamp)
    } else {
        openai::completion_response(&result, &state.opts.served_name, &stamp)
    };
    Ok(json_response(200, &body))
}
