//! The HTTP side: one `POST …/chat/completions` with retries, and the answer as the judge gave it.
//!
//! The API key is read from the environment variable the study names, sent only in the `Authorization`
//! header, and scrubbed from every message this module produces (a server may echo it in an error body). It
//! never enters a request body, so it is in no item-cache key either.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::retry::{Failure, Policy, parse_retry_after, transient_status};

/// One of the most likely tokens at a position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct TopLogprob {
    pub logprob: f64,
    pub token: String,
}

/// A generated token with its logprob and the most likely alternatives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct TokenLogprob {
    pub logprob: f64,
    pub token: String,
    pub top_logprobs: Vec<TopLogprob>,
}

/// What the judge answered: the parts of `choices[0]` a verdict is read from, kept verbatim in `items.jsonl`
/// and the item cache. The response's `id` and `created` are left out: they differ on every call and would
/// make the outputs differ between identical runs. Fields in alphabetical order (serde writes declaration
/// order), so the JSON has sorted keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Answer {
    /// `message.content` (absent or null: `None`).
    pub content: Option<String>,
    pub finish_reason: Option<String>,
    /// `logprobs.content`, when logprobs were asked for and returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Vec<TokenLogprob>>,
    /// The model the server says answered.
    pub model: Option<String>,
}

impl Answer {
    /// The text, empty when the server sent none.
    pub fn text(&self) -> &str {
        self.content.as_deref().unwrap_or_default()
    }

    /// The top logprobs of the first generated token (empty when there are none).
    pub fn first_top_logprobs(&self) -> &[TopLogprob] {
        self.logprobs.as_deref().and_then(|l| l.first()).map(|t| t.top_logprobs.as_slice()).unwrap_or_default()
    }
}

/// Why a request did not produce an answer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum CallError {
    /// The op is stopping; the request was abandoned.
    Stopped,
    /// It failed for good (after the retries, or at once when retrying cannot help).
    Failed(String),
}

/// A chat-completions client for one endpoint.
pub(crate) struct Client {
    agent: ureq::Agent,
    url: String,
    key: Option<String>,
    timeout: Duration,
    policy: Policy,
}

/// The most of a response body quoted in an error message.
const EXCERPT: usize = 400;

impl Client {
    /// A client POSTing to `url`, with `key` as the bearer token when given.
    pub fn new(url: &str, key: Option<String>, timeout: Duration, policy: Policy) -> Client {
        // One overall limit per request (connect + send + wait + read): a stuck server costs at most `timeout`
        // per attempt. No proxy from the environment: a judge on loopback must not go through one.
        let agent = ureq::AgentBuilder::new().timeout(timeout).build();
        Client { agent, url: url.to_string(), key: key.filter(|k| !k.is_empty()), timeout, policy }
    }

    /// The URL requests go to (holds no secret: parameters reject credentials in it).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// POSTs `body`, retrying transient failures as the policy says; `stop` abandons the request between
    /// attempts and during waits, and `notice` hears about each retry.
    pub fn complete(&self, body: &Value, stop: &AtomicBool, notice: &dyn Fn(String)) -> Result<Answer, CallError> {
        let text = serde_json::to_string(body).map_err(|e| CallError::Failed(format!("internal: {e}")))?;
        let mut attempt = 1u32;
        loop {
            if stop.load(Ordering::Relaxed) {
                return Err(CallError::Stopped);
            }
            let failure = match self.attempt(&text) {
                Ok(answer) => return Ok(answer),
                Err(f) => f,
            };
            let (message, retry_after) = match failure {
                Failure::Permanent(m) => {
                    return Err(CallError::Failed(self.scrub(&format!("`POST {}`: {m}", self.url))));
                }
                Failure::Transient { message, retry_after } => (message, retry_after),
            };
            match self.policy.wait(attempt, retry_after, rand::random::<f64>()) {
                None => {
                    return Err(CallError::Failed(self.scrub(&format!(
                        "`POST {}`: {message} (gave up after {attempt} attempt{})",
                        self.url,
                        if attempt == 1 { "" } else { "s" }
                    ))));
                }
                Some(wait) => {
                    notice(self.scrub(&format!(
                        "`POST {}`: {message}; retrying in {:.1}s (attempt {} of {})",
                        self.url,
                        wait.as_secs_f64(),
                        attempt + 1,
                        self.policy.max_attempts
                    )));
                    if !sleep(wait, stop) {
                        return Err(CallError::Stopped);
                    }
                }
            }
            attempt += 1;
        }
    }

    /// One try.
    fn attempt(&self, body: &str) -> Result<Answer, Failure> {
        let mut request = self.agent.post(&self.url).set("Content-Type", "application/json");
        if let Some(key) = &self.key {
            request = request.set("Authorization", &format!("Bearer {key}"));
        }
        match request.send_string(body) {
            Ok(response) => {
                let status = response.status();
                let text = response.into_string().map_err(|e| Failure::Transient {
                    message: format!("HTTP {status}, but reading the body failed: {}", self.io_message(&e)),
                    retry_after: None,
                })?;
                // Scrubbed before anything reads it: a server that echoes the key (in an error, or a judge that
                // repeats its input) must not put it into a message, an excerpt cut mid-key, or items.jsonl.
                let text = self.scrub(&text);
                parse_answer(&text)
                    .map_err(|why| Failure::Permanent(format!("HTTP {status}, but {why}; body: {}", excerpt(&text))))
            }
            Err(ureq::Error::Status(status, response)) => {
                let retry_after = response.header("Retry-After").and_then(parse_retry_after);
                let reason = response.status_text().to_string();
                let body = response.into_string().unwrap_or_default();
                let message = format!("HTTP {status} {reason}: {}", excerpt(&self.scrub(&body)));
                if transient_status(status) {
                    Err(Failure::Transient { message, retry_after })
                } else {
                    Err(Failure::Permanent(message))
                }
            }
            Err(ureq::Error::Transport(t)) => {
                use ureq::ErrorKind as K;
                let source = std::error::Error::source(&t);
                let io = source.and_then(|s| s.downcast_ref::<std::io::Error>());
                let message = match io {
                    Some(e) => self.io_message(e),
                    None => {
                        let mut m = t.kind().to_string();
                        if let Some(detail) = t.message() {
                            m.push_str(&format!(": {detail}"));
                        }
                        if let Some(s) = source {
                            m.push_str(&format!(": {s}"));
                        }
                        m
                    }
                };
                match t.kind() {
                    K::ConnectionFailed | K::Io | K::BadStatus | K::BadHeader | K::Dns => {
                        Err(Failure::Transient { message, retry_after: None })
                    }
                    _ => Err(Failure::Permanent(message)),
                }
            }
        }
    }

    fn io_message(&self, e: &std::io::Error) -> String {
        match e.kind() {
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => {
                format!("no answer within the request timeout of {:.1}s", self.timeout.as_secs_f64())
            }
            std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted => {
                "the connection was closed without an answer".into()
            }
            std::io::ErrorKind::UnexpectedEof => "the connection was closed before the answer was complete".into(),
            _ => format!("network error: {e}"),
        }
    }

    /// `text` with the API key replaced, whatever produced the text.
    pub fn scrub(&self, text: &str) -> String {
        scrub(text, self.key.as_deref())
    }
}

/// `text` with every occurrence of `key` replaced by `[api key]`.
pub(crate) fn scrub(text: &str, key: Option<&str>) -> String {
    match key {
        Some(k) if !k.is_empty() => text.replace(k, "[api key]"),
        _ => text.to_string(),
    }
}

/// Sleeps `d`, waking early when `stop` is set; false if it was.
fn sleep(d: Duration, stop: &AtomicBool) -> bool {
    let end = std::time::Instant::now() + d;
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let now = std::time::Instant::now();
        if now >= end {
            return true;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

/// The start of a body, on one line, for error messages.
fn excerpt(body: &str) -> String {
    let flat: String = body.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let flat = flat.trim();
    if flat.is_empty() {
        return "(empty body)".into();
    }
    match flat.char_indices().nth(EXCERPT) {
        Some((cut, _)) => format!("{}…", &flat[..cut]),
        None => flat.to_string(),
    }
}

/// The answer in an OpenAI chat-completions response body. Lenient about what it does not need (unknown
/// fields, `bytes`, a null logprob entry), strict about the shape: no `choices[0]` is an error.
pub(crate) fn parse_answer(body: &str) -> Result<Answer, String> {
    let v: Value = serde_json::from_str(body).map_err(|e| format!("the body is not JSON ({e})"))?;
    if let Some(error) = v.get("error").filter(|e| !e.is_null()) {
        return Err(format!("the body is an error: {}", excerpt(&error.to_string())));
    }
    let choice = v.get("choices").and_then(|c| c.get(0)).ok_or("the body has no `choices[0]`")?;
    let text_of = |x: Option<&Value>| x.and_then(Value::as_str).map(str::to_string);
    let logprobs = match choice.pointer("/logprobs/content") {
        // Positions matter (alpaca-eval reads the first token's alternatives): stop at a malformed entry rather
        // than skip it, so that a later token's alternatives never stand in for the first's.
        Some(Value::Array(tokens)) => Some(tokens.iter().map_while(token_logprob).collect()),
        _ => None,
    };
    Ok(Answer {
        content: text_of(choice.pointer("/message/content")),
        finish_reason: text_of(choice.get("finish_reason")),
        logprobs,
        model: text_of(v.get("model")),
    })
}

fn top_logprob(v: &Value) -> Option<TopLogprob> {
    Some(TopLogprob { logprob: v.get("logprob")?.as_f64()?, token: v.get("token")?.as_str()?.to_string() })
}

fn token_logprob(v: &Value) -> Option<TokenLogprob> {
    let head = top_logprob(v)?;
    let top = match v.get("top_logprobs") {
        Some(Value::Array(entries)) => entries.iter().filter_map(top_logprob).collect(),
        _ => vec![],
    };
    Some(TokenLogprob { logprob: head.logprob, token: head.token, top_logprobs: top })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_malformed_first_logprob_entry_is_not_replaced_by_the_second() {
        let body = r#"{"choices":[{"message":{"content":"mM"},"logprobs":{"content":[
            {"token":"m","logprob":null,"top_logprobs":[{"token":"m","logprob":-0.1}]},
            {"token":"M","logprob":-0.2,"top_logprobs":[{"token":"M","logprob":-0.2},{"token":"m","logprob":-3.0}]}]}}]}"#;
        let a = parse_answer(body).unwrap();
        assert!(a.first_top_logprobs().is_empty(), "{:?}", a.logprobs);
    }

    #[test]
    fn an_openai_response_is_read_with_its_logprobs() {
        let body = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4",
          "choices":[{"index":0,"message":{"role":"assistant","content":"M"},"finish_reason":"length",
            "logprobs":{"content":[{"token":"M","logprob":-0.0176,"bytes":[77],
              "top_logprobs":[{"token":"M","logprob":-0.0176,"bytes":[77]},{"token":"m","logprob":-4.05,"bytes":[109]},
                              {"token":"x","logprob":null}]}]}}],
          "usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;
        let a = parse_answer(body).unwrap();
        assert_eq!(a.text(), "M");
        assert_eq!((a.finish_reason.as_deref(), a.model.as_deref()), (Some("length"), Some("gpt-4")));
        assert_eq!(
            a.first_top_logprobs(),
            [TopLogprob { logprob: -0.0176, token: "M".into() }, TopLogprob { logprob: -4.05, token: "m".into() }]
        );
        // Serialised with sorted keys and without the per-call id/created.
        let json = serde_json::to_string(&a).unwrap();
        assert!(
            json.starts_with(
                r#"{"content":"M","finish_reason":"length","logprobs":[{"logprob":-0.0176,"token":"M","top_logprobs":"#
            ),
            "{json}"
        );
        assert!(!json.contains("chatcmpl") && !json.contains("created"));
        assert_eq!(serde_json::from_str::<Answer>(&json).unwrap(), a);
    }

    #[test]
    fn answers_without_content_or_logprobs_are_still_answers() {
        let a = parse_answer(r#"{"choices":[{"message":{"content":null}}]}"#).unwrap();
        assert_eq!((a.text(), a.logprobs.is_none()), ("", true));
        assert!(a.first_top_logprobs().is_empty());
        let a = parse_answer(r#"{"choices":[{"message":{"content":"x"},"logprobs":null}]}"#).unwrap();
        assert!(a.logprobs.is_none());
        let a = parse_answer(r#"{"choices":[{"message":{"content":"x"},"logprobs":{"content":[]}}]}"#).unwrap();
        assert_eq!(a.logprobs, Some(vec![]));
        assert!(a.first_top_logprobs().is_empty());
    }

    #[test]
    fn bodies_that_are_not_completions_are_errors() {
        for (body, words) in [
            ("<html>", "not JSON"),
            ("{}", "no `choices[0]`"),
            (r#"{"choices":[]}"#, "no `choices[0]`"),
            (r#"{"error":{"message":"bad model"}}"#, "bad model"),
        ] {
            let why = parse_answer(body).unwrap_err();
            assert!(why.contains(words), "{body}: {why}");
        }
    }

    #[test]
    fn the_key_is_scrubbed_and_excerpts_are_short_and_on_one_line() {
        assert_eq!(scrub("Bearer sk-123 rejected: sk-123", Some("sk-123")), "Bearer [api key] rejected: [api key]");
        assert_eq!(scrub("nothing", Some("")), "nothing");
        let long = format!("line one\nline two {}", "é".repeat(1000));
        let e = excerpt(&long);
        assert!(!e.contains('\n') && e.ends_with('…') && e.chars().count() == EXCERPT + 1, "{e}");
        assert_eq!(excerpt("  \n"), "(empty body)");
    }

    /// A loopback listener that answers each of `replies` to one connection in turn and hands back what it was
    /// sent: just enough HTTP to see the client's side of an exchange, no model behind it.
    fn answering(replies: Vec<String>) -> (String, std::thread::JoinHandle<Vec<String>>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1/chat/completions", listener.local_addr().unwrap());
        let handle = std::thread::spawn(move || {
            let mut seen = vec![];
            for reply in replies {
                let (mut stream, _) = listener.accept().unwrap();
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                // Headers, then as many body bytes as Content-Length says.
                loop {
                    let n = stream.read(&mut buf).unwrap();
                    request.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&request).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string())
                            })
                            .and_then(|v| v.parse::<usize>().ok())
                            .unwrap_or(0);
                        if request.len() >= end + 4 + length || n == 0 {
                            break;
                        }
                    }
                }
                seen.push(String::from_utf8_lossy(&request).to_string());
                stream.write_all(reply.as_bytes()).unwrap();
            }
            seen
        });
        (url, handle)
    }

    fn http(status: &str, headers: &str, body: &str) -> String {
        format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n{body}", body.len())
    }

    #[test]
    fn the_key_goes_in_the_header_and_a_rejection_is_not_retried_nor_echoed() {
        let body = r#"{"error":{"message":"Incorrect API key provided: sk-secret-77"}}"#;
        let (url, server) = answering(vec![http("401 Unauthorized", "", body)]);
        let policy = Policy { max_attempts: 5, base: Duration::ZERO, cap: Duration::ZERO };
        let client = Client::new(&url, Some("sk-secret-77".into()), Duration::from_secs(10), policy);
        let err = client.complete(&serde_json::json!({"model": "j"}), &AtomicBool::new(false), &|_| {}).unwrap_err();
        let seen = server.join().unwrap();
        assert_eq!(seen.len(), 1, "a 401 is not retried");
        let request = seen[0].to_ascii_lowercase();
        assert!(request.starts_with("post /v1/chat/completions http/1.1\r\n"), "{request}");
        assert!(request.contains("\r\nauthorization: bearer sk-secret-77\r\n"), "{request}");
        assert!(request.ends_with(r#"{"model":"j"}"#), "{request}");
        let CallError::Failed(message) = err else { panic!("{err:?}") };
        assert!(message.contains(&url) && message.contains("HTTP 401 Unauthorized"), "{message}");
        assert!(
            message.contains("Incorrect API key provided: [api key]") && !message.contains("sk-secret"),
            "{message}"
        );
    }

    #[test]
    fn retry_after_is_waited_for_and_the_answer_after_it_is_read() {
        let ok = r#"{"model":"j","choices":[{"message":{"content":"[[A]]"},"finish_reason":"stop"}]}"#;
        let (url, server) = answering(vec![
            http("429 Too Many Requests", "Retry-After: 0\r\n", "{}"),
            http("503 Service Unavailable", "Retry-After: 0\r\n", "busy"),
            http("200 OK", "Content-Type: application/json\r\n", ok),
        ]);
        // The policy's backoff is an hour: only honouring the servers' `Retry-After: 0` ends this test.
        let policy = Policy { max_attempts: 3, base: Duration::from_secs(3600), cap: Duration::from_secs(3600) };
        let client = Client::new(&url, None, Duration::from_secs(10), policy);
        let notices = std::sync::Mutex::new(Vec::new());
        let answer = client
            .complete(&serde_json::json!({}), &AtomicBool::new(false), &|n| notices.lock().unwrap().push(n))
            .unwrap();
        assert_eq!((answer.text(), answer.model.as_deref()), ("[[A]]", Some("j")));
        let seen = server.join().unwrap();
        assert_eq!(seen.len(), 3);
        assert!(!seen[0].to_ascii_lowercase().contains("authorization"), "no key, no header");
        let notices = notices.into_inner().unwrap();
        assert!(
            notices[0].contains("HTTP 429") && notices[1].contains("HTTP 503 Service Unavailable: busy"),
            "{notices:?}"
        );
    }

    #[test]
    fn a_refused_connection_is_retried_then_reported_with_the_url() {
        // A port nothing listens on: bind, note the port, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
        let policy = Policy { max_attempts: 3, base: Duration::ZERO, cap: Duration::ZERO };
        let client = Client::new(&url, Some("sk-secret".into()), Duration::from_secs(5), policy);
        let notices = std::sync::Mutex::new(Vec::new());
        let err = client
            .complete(&serde_json::json!({"model": "m"}), &AtomicBool::new(false), &|n| notices.lock().unwrap().push(n))
            .unwrap_err();
        let CallError::Failed(message) = err else { panic!("{err:?}") };
        assert!(message.contains(&url) && message.contains("gave up after 3 attempts"), "{message}");
        assert!(!message.contains("sk-secret"));
        assert_eq!(notices.lock().unwrap().len(), 2);
        // A stop request ends it before any attempt.
        let stopped = client.complete(&serde_json::json!({}), &AtomicBool::new(true), &|_| {});
        assert_eq!(stopped, Err(CallError::Stopped));
    }
}
