//! `rto serve` end to end: the real binary listening on loopback, driven by an HTTP client.
//!
//! Session and HTTP mechanics (the instance surviving between requests, a crashed worker replaced, the test
//! modes, request errors) use the fixture plugin's echo `generate`, which answers instantly; a tiny candle-lm
//! model checks real generation with logprobs.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::Project;

/// A running `rto serve`, killed when dropped.
pub(crate) struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
}

impl Server {
    /// Starts `rto serve ARGS --port 0` in the project directory and waits (up to 5 minutes: the model loads
    /// first) for its `listening on` line.
    pub fn start(p: &Project, args: &[&str]) -> Server {
        let mut all = vec!["serve", "--port", "0"];
        all.extend_from_slice(args);
        let mut child = p.command(&all).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("rto runs");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        // The server's stderr is echoed, so a failing test shows what the server said.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[rto serve] {line}");
            }
        });
        match rx.recv_timeout(Duration::from_secs(300)) {
            Ok(line) => {
                let url = line.strip_prefix("listening on ").unwrap_or_else(|| panic!("unexpected line {line:?}"));
                Server { child, url: url.to_string() }
            }
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().unwrap();
                panic!("rto serve did not start ({status})");
            }
        }
    }

    /// POSTs `body` to `path`; returns the status and the JSON answer (errors included).
    pub fn post(&self, path: &str, body: &Value) -> Result<(u16, Value), Box<ureq::Error>> {
        answer(ureq::post(&format!("{}{path}", self.url)).timeout(Duration::from_secs(300)).send_json(body.clone()))
    }

    /// GETs `path`.
    pub fn get(&self, path: &str) -> (u16, Value) {
        answer(ureq::get(&format!("{}{path}", self.url)).call()).expect("the server answers")
    }

    /// The server's request counters: (completion requests received, completions answered).
    pub fn stats(&self) -> (u64, u64) {
        let (_, s) = self.get("/rto/stats");
        (s["requests"].as_u64().unwrap(), s["completions"].as_u64().unwrap())
    }
}

/// The pids of `pid`'s children (from /proc).
fn children(pid: u32) -> Vec<u32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    std::fs::read_to_string(path).unwrap_or_default().split_whitespace().filter_map(|c| c.parse().ok()).collect()
}

fn answer(r: Result<ureq::Response, ureq::Error>) -> Result<(u16, Value), Box<ureq::Error>> {
    match r {
        Ok(resp) => Ok((resp.status(), resp.into_json().expect("a JSON answer"))),
        Err(ureq::Error::Status(code, resp)) => Ok((code, resp.into_json().expect("a JSON error"))),
        Err(e) => Err(Box::new(e)),
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A project with the fixture plugin installed (its manifest lists `generate`) and a stand-in model file.
fn fixture_project() -> Project {
    let p = Project::new("", &[("model.bin", "not a model: the fixture ignores it")]);
    let lib = &crate::plugins::libraries()["rto_fixture_ok"];
    std::fs::create_dir_all(p.path("plugins")).unwrap();
    std::fs::copy(lib, p.path("plugins/librto_fixture_ok.so")).unwrap();
    p.write(
        "plugins/fixture.rto-plugin.toml",
        "name = \"fixture\"\nversion = \"0.1.0\"\nkind = \"judge\"\nabi = 1\nlibrary = \"librto_fixture_ok.so\"\nops = [\"copy\", \"generate\"]\n",
    );
    p
}

fn chat(content: &str) -> Value {
    json!({ "model": "model.bin", "messages": [{ "role": "user", "content": content }], "max_tokens": 8 })
}

fn text(answer: &Value) -> &str {
    answer["choices"][0]["message"]["content"].as_str().unwrap_or_else(|| panic!("no content in {answer}"))
}

#[test]
fn one_instance_serves_every_request_and_a_crashed_worker_is_replaced() {
    let p = fixture_project();
    let s = Server::start(&p, &["--plugin-dir", "plugins", "--plugin", "fixture", "model.bin"]);
    let (code, models) = s.get("/v1/models");
    assert_eq!((code, &models["data"][0]["id"]), (200, &json!("model.bin")), "{models}");
    // The start-up warm-up was the instance's first call.
    let (code, a) = s.post("/v1/chat/completions", &chat("hi")).unwrap();
    assert_eq!((code, text(&a)), (200, "echo 2: hi"), "{a}");
    assert_eq!(a["object"], "chat.completion");
    assert_eq!(a["choices"][0]["finish_reason"], "stop");
    assert_eq!(a["usage"]["total_tokens"], a["usage"]["prompt_tokens"].as_u64().unwrap() + 3);
    let (_, b) = s.post("/v1/chat/completions", &chat("there")).unwrap();
    assert_eq!(text(&b), "echo 3: there");

    // The worker aborts: that request gets a 500 saying so, and the next one a fresh instance.
    let (code, crash) = s.post("/v1/chat/completions", &chat("abort")).unwrap();
    assert_eq!(code, 500, "{crash}");
    let message = crash["error"]["message"].as_str().unwrap();
    assert!(message.contains("killed by signal 6"), "{message}");
    let (code, c) = s.post("/v1/chat/completions", &chat("again")).unwrap();
    assert_eq!((code, text(&c)), (200, "echo 1: again"), "{c}");

    // Legacy text completions go through the same op.
    let (code, t) = s.post("/v1/completions", &json!({ "prompt": "plain", "max_tokens": 4 })).unwrap();
    assert_eq!((code, &t["choices"][0]["text"]), (200, &json!("echo 2: plain")), "{t}");
    assert_eq!(s.stats(), (5, 4));
}

#[test]
fn a_queued_request_whose_client_gave_up_is_never_generated() {
    let p = fixture_project();
    let s = Server::start(&p, &["--plugin-dir", "plugins", "--plugin", "fixture", "model.bin"]);
    let url = format!("{}/v1/chat/completions", s.url);
    // A holds the worker for 1.5 s; B queues behind it and its client gives up after 0.3 s.
    let slow = {
        let url = url.clone();
        std::thread::spawn(move || {
            let answer = ureq::post(&url).send_json(chat("sleep 1500")).expect("the patient client is answered");
            answer.into_json::<Value>().expect("a JSON answer")
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let impatient = ureq::post(&url).timeout(Duration::from_millis(300)).send_json(chat("never"));
    assert!(impatient.is_err(), "the impatient client timed out");
    let a = slow.join().unwrap();
    assert_eq!(text(&a), "echo 2: sleep 1500");
    // B was dropped from the queue: the instance's next generation is number 3, not 4.
    let (_, c) = s.post("/v1/chat/completions", &chat("next")).unwrap();
    assert_eq!(text(&c), "echo 3: next");
}

#[test]
fn sigterm_stops_the_server_and_its_model_worker() {
    let p = fixture_project();
    let mut s = Server::start(&p, &["--plugin-dir", "plugins", "--plugin", "fixture", "model.bin"]);
    let pid = s.child.id();
    let workers = children(pid);
    assert_eq!(workers.len(), 1, "one session worker: {workers:?}");
    // SAFETY: a plain kill(2) of our own child process.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    let status = s.child.wait().unwrap();
    assert!(status.success(), "{status}");
    std::thread::sleep(Duration::from_millis(200));
    assert!(!Path::new(&format!("/proc/{}", workers[0])).exists(), "the worker is gone");
}

#[test]
fn bad_requests_get_openai_errors_that_name_the_field() {
    let p = fixture_project();
    let s = Server::start(&p, &["--plugin-dir", "plugins", "--plugin", "fixture", "model.bin"]);
    let cases = [
        (json!({ "messages": [] }), 400, Some("messages")),
        (json!({ "messages": [{ "role": "user", "content": "x" }], "n": 3 }), 400, Some("n")),
        (json!({ "messages": [{ "role": "user", "content": "x" }], "temperature": -1 }), 400, Some("temperature")),
        (json!({ "model": "gpt-4", "messages": [{ "role": "user", "content": "x" }] }), 404, Some("model")),
    ];
    for (body, status, param) in cases {
        let (code, e) = s.post("/v1/chat/completions", &body).unwrap();
        assert_eq!(code, status, "{body}: {e}");
        assert_eq!(e["error"]["param"].as_str(), param, "{e}");
        assert!(!e["error"]["message"].as_str().unwrap().is_empty(), "{e}");
    }
    let (code, e) = s.post("/v1/embeddings", &json!({})).unwrap();
    assert_eq!(code, 404, "{e}");
    // Errors are answered without touching the model: none of them is a completion.
    assert_eq!(s.stats(), (4, 0));
}

#[test]
fn test_modes_rate_limit_then_answer_and_drop_connections() {
    let p = fixture_project();
    let s = Server::start(
        &p,
        &["--plugin-dir", "plugins", "--plugin", "fixture", "--fail-first", "2", "--fail-with", "429", "model.bin"],
    );
    for _ in 0..2 {
        let r = ureq::post(&format!("{}/v1/chat/completions", s.url)).send_json(chat("x"));
        match r {
            Err(ureq::Error::Status(429, resp)) => assert_eq!(resp.header("retry-after"), Some("0")),
            other => panic!("expected a 429, got {other:?}"),
        }
    }
    assert_eq!(s.post("/v1/chat/completions", &chat("x")).unwrap().0, 200);
    assert_eq!(s.stats(), (3, 1));
    drop(s);

    let s = Server::start(
        &p,
        &["--plugin-dir", "plugins", "--plugin", "fixture", "--fail-first", "1", "--fail-with", "drop", "model.bin"],
    );
    match s.post("/v1/chat/completions", &chat("x")) {
        Err(e) if matches!(*e, ureq::Error::Transport(_)) => {}
        other => panic!("expected a dropped connection, got {other:?}"),
    }
    assert_eq!(s.post("/v1/chat/completions", &chat("x")).unwrap().0, 200);
}

#[test]
fn serve_refuses_a_plugin_without_generate_and_a_missing_model() {
    let p = fixture_project();
    let out = p.rto(&["serve", "--plugin", "judge-rules", "model.bin"]).expect_code(2);
    assert!(out.stderr.contains("plugin `judge-rules` has no `generate` op"), "{}", out.stderr);
    let out = p.rto(&["serve", "--plugin", "nope", "model.bin"]).expect_code(2);
    assert!(out.stderr.contains("no plugin `nope` found"), "{}", out.stderr);
    let out = p.rto(&["serve", "--plugin-dir", "plugins", "--plugin", "fixture", "missing.bin"]).expect_code(1);
    assert!(out.stderr.contains("the model `missing.bin` does not exist"), "{}", out.stderr);
}

/// A tiny candle-lm model directory (word-level tokenizer, random weights), made once per test binary by a
/// study of `candle-lm:init`, and kept for the binary's lifetime.
pub(crate) fn tiny_model() -> &'static Path {
    static MODEL: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, path) = MODEL.get_or_init(|| {
        let study = r#"
[[stage]]
id = "init"
uses = "candle-lm:init"
inputs = { tokenizer = "tok" }
params = { hidden_size = 32, intermediate_size = 64, num_hidden_layers = 2, num_attention_heads = 4, num_key_value_heads = 2, max_position_embeddings = 64, seed = 0 }
"#;
        let p = Project::new(study, &[("tok/tokenizer.json", &crate::candle::tokenizer())]);
        p.run(&[]);
        let model = std::fs::canonicalize(p.path("results/study/init/model")).unwrap();
        (p.into_dir(), model)
    });
    path
}

#[test]
fn a_candle_lm_model_answers_chat_with_logprobs_deterministically() {
    let p = Project::new("", &[("chat.jinja", "{% for m in messages %}{{ m.content }} {% endfor %}")]);
    let model = tiny_model().to_str().unwrap().to_string();
    let s = Server::start(&p, &["--served-model-name", "tiny", "--chat-template", "chat.jinja", &model]);
    let body = json!({
        "model": "tiny",
        "messages": [{ "role": "user", "content": "what is the colour of the sky ?" }],
        "max_tokens": 4, "temperature": 0, "logprobs": true, "top_logprobs": 5
    });
    let (code, a) = s.post("/v1/chat/completions", &body).unwrap();
    assert_eq!(code, 200, "{a}");
    let content = a["choices"][0]["logprobs"]["content"].as_array().unwrap_or_else(|| panic!("no logprobs: {a}"));
    assert!(!content.is_empty() && content.len() <= 4, "{a}");
    assert!(a["usage"]["completion_tokens"].as_u64().unwrap() as usize >= content.len(), "{a}");
    for entry in content {
        let top = entry["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 5, "{entry}");
        // Greedy: the chosen token is the most likely one, and the alternatives are a sub-distribution.
        assert_eq!(entry["token"], top[0]["token"], "{entry}");
        assert_eq!(entry["logprob"], top[0]["logprob"], "{entry}");
        let mass: f64 = top.iter().map(|t| t["logprob"].as_f64().unwrap().exp()).sum();
        assert!(mass <= 1.0 + 1e-6, "{entry}");
        assert!(top.windows(2).all(|w| w[0]["logprob"].as_f64() >= w[1]["logprob"].as_f64()), "{entry}");
        let bytes: Vec<u8> = entry["bytes"].as_array().unwrap().iter().map(|b| b.as_u64().unwrap() as u8).collect();
        assert_eq!(String::from_utf8(bytes).unwrap(), entry["token"].as_str().unwrap(), "{entry}");
    }
    // The same request gives the same answer from the live instance; the legacy endpoint agrees on the text.
    let (_, again) = s.post("/v1/chat/completions", &body).unwrap();
    assert_eq!(text(&again), text(&a));
    let (code, t) = s
        .post(
            "/v1/completions",
            &json!({ "prompt": "what is the colour of the sky ? ", "max_tokens": 4, "temperature": 0, "logprobs": 2 }),
        )
        .unwrap();
    assert_eq!(code, 200, "{t}");
    assert_eq!(t["choices"][0]["text"], a["choices"][0]["message"]["content"], "{t}\n{a}");
    assert_eq!(t["choices"][0]["logprobs"]["top_logprobs"][0].as_object().unwrap().len(), 2, "{t}");
    // Without a template of its own or from the server, a chat request is refused, naming the field.
    drop(s);
    let s = Server::start(&p, &["--served-model-name", "tiny", &model]);
    let (code, e) = s.post("/v1/chat/completions", &body).unwrap();
    assert_eq!(code, 400, "{e}");
    assert_eq!(s.stats(), (1, 0));
}
