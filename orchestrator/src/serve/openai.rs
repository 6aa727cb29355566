//! The OpenAI wire format: chat and text completion requests turned into `generate` params, and `generate`
//! results turned into OpenAI responses.
//!
//! Requests are read leniently where OpenAI is (unknown fields are ignored, `content` may be a list of text
//! parts) and strictly where a silent fallback would change results: `n > 1`, `stream` and unknown roles are
//! refused with a 400 that names the field.

use serde::Deserialize;
use serde_json::{Value, json};

/// A request error: HTTP status, OpenAI error type, the field at fault, and a message.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// OpenAI's `type` (`invalid_request_error`, `not_found_error`, `server_error`, …).
    pub kind: &'static str,
    /// The request field at fault, if any.
    pub param: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl ApiError {
    /// A 400 about `param`.
    pub fn invalid(param: &str, message: impl Into<String>) -> ApiError {
        ApiError { status: 400, kind: "invalid_request_error", param: Some(param.into()), message: message.into() }
    }

    /// A 500 (the model worker failed).
    pub fn server(message: impl Into<String>) -> ApiError {
        ApiError { status: 500, kind: "server_error", param: None, message: message.into() }
    }

    /// The body OpenAI clients parse.
    pub fn body(&self) -> Value {
        json!({ "error": { "message": self.message, "type": self.kind, "param": self.param, "code": null } })
    }
}

#[derive(Debug, Deserialize)]
struct ChatRequest {
    model: Option<String>,
    messages: Option<Vec<Value>>,
    max_tokens: Option<Value>,
    max_completion_tokens: Option<Value>,
    temperature: Option<Value>,
    top_p: Option<Value>,
    top_k: Option<Value>,
    seed: Option<Value>,
    stop: Option<Value>,
    logprobs: Option<Value>,
    top_logprobs: Option<Value>,
    n: Option<Value>,
    stream: Option<Value>,
    /// vLLM's extension: a Jinja chat template for this request.
    chat_template: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct CompletionRequest {
    model: Option<String>,
    prompt: Option<Value>,
    max_tokens: Option<Value>,
    temperature: Option<Value>,
    top_p: Option<Value>,
    top_k: Option<Value>,
    seed: Option<Value>,
    stop: Option<Value>,
    logprobs: Option<Value>,
    n: Option<Value>,
    stream: Option<Value>,
    echo: Option<Value>,
}

/// A parsed request: the model it names and the `generate` params.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    /// The `model` field (checked against the served name by the caller).
    pub model: Option<String>,
    /// Params of the plugin's `generate` op.
    pub params: Value,
}

/// What the server answers with unless the request says otherwise: OpenAI's `max_tokens` is unbounded, which
/// for a local model means "until the context is full"; a fixed default keeps a forgotten field cheap.
pub const DEFAULT_MAX_TOKENS: u64 = 512;

/// Parses a `/v1/chat/completions` body.
pub fn chat_request(body: &[u8]) -> Result<Parsed, ApiError> {
    let req: ChatRequest = serde_json::from_slice(body).map_err(|e| ApiError::invalid("body", format!("{e}")))?;
    refuse_unsupported(req.n.as_ref(), req.stream.as_ref())?;
    let messages = req.messages.ok_or_else(|| ApiError::invalid("messages", "`messages` is required"))?;
    if messages.is_empty() {
        return Err(ApiError::invalid("messages", "`messages` must not be empty"));
    }
    let mut plain = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let at = format!("messages[{i}]");
        let role = m.get("role").and_then(Value::as_str).ok_or_else(|| ApiError::invalid(&at, "needs a `role`"))?;
        if !matches!(role, "system" | "developer" | "user" | "assistant") {
            return Err(ApiError::invalid(&format!("{at}.role"), format!("unknown role `{role}`")));
        }
        let role = if role == "developer" { "system" } else { role };
        let content = text_content(m.get("content")).map_err(|e| ApiError::invalid(&format!("{at}.content"), e))?;
        plain.push(json!({ "role": role, "content": content }));
    }
    let max_tokens = req.max_completion_tokens.or(req.max_tokens);
    let logprobs = opt_bool("logprobs", req.logprobs.as_ref())?.unwrap_or(false);
    let top_logprobs = opt_uint("top_logprobs", req.top_logprobs.as_ref())?;
    if let Some(k) = top_logprobs {
        if k > 20 {
            return Err(ApiError::invalid("top_logprobs", "must be between 0 and 20"));
        }
        if !logprobs && k > 0 {
            return Err(ApiError::invalid("top_logprobs", "needs `logprobs: true`"));
        }
    }
    let mut params = sampling_params(
        max_tokens.as_ref(),
        req.temperature.as_ref(),
        req.top_p.as_ref(),
        req.top_k.as_ref(),
        req.seed.as_ref(),
        req.stop.as_ref(),
    )?;
    params["messages"] = Value::Array(plain);
    match req.chat_template {
        None | Some(Value::Null) => {}
        Some(Value::String(t)) => params["chat_template"] = Value::String(t),
        Some(_) => return Err(ApiError::invalid("chat_template", "must be a string (a Jinja template)")),
    }
    // `top_logprobs` only with `logprobs`: a `generate` op may refuse the one without the other.
    params["logprobs"] = Value::Bool(logprobs);
    if logprobs {
        params["top_logprobs"] = json!(top_logprobs.unwrap_or(0));
    }
    Ok(Parsed { model: req.model, params })
}

/// Parses a `/v1/completions` body (plain text in, text out; no chat template).
pub fn completion_request(body: &[u8]) -> Result<Parsed, ApiError> {
    let req: CompletionRequest = serde_json::from_slice(body).map_err(|e| ApiError::invalid("body", format!("{e}")))?;
    refuse_unsupported(req.n.as_ref(), req.stream.as_ref())?;
    if opt_bool("echo", req.echo.as_ref())?.unwrap_or(false) {
        return Err(ApiError::invalid("echo", "`echo` is not supported"));
    }
    let prompt = match req.prompt {
        Some(Value::String(s)) => s,
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => a[0].as_str().unwrap_or_default().to_string(),
        Some(_) => return Err(ApiError::invalid("prompt", "must be one string (batches are not supported)")),
        None => return Err(ApiError::invalid("prompt", "`prompt` is required")),
    };
    let top = opt_uint("logprobs", req.logprobs.as_ref())?;
    if top.is_some_and(|k| k > 20) {
        return Err(ApiError::invalid("logprobs", "must be between 0 and 20"));
    }
    let mut params = sampling_params(
        req.max_tokens.as_ref(),
        req.temperature.as_ref(),
        req.top_p.as_ref(),
        req.top_k.as_ref(),
        req.seed.as_ref(),
        req.stop.as_ref(),
    )?;
    params["prompt"] = Value::String(prompt);
    params["logprobs"] = Value::Bool(top.is_some());
    if let Some(k) = top {
        params["top_logprobs"] = json!(k);
    }
    Ok(Parsed { model: req.model, params })
}

fn refuse_unsupported(n: Option<&Value>, stream: Option<&Value>) -> Result<(), ApiError> {
    if opt_uint("n", n)?.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid("n", "only `n: 1` is supported"));
    }
    if opt_bool("stream", stream)?.unwrap_or(false) {
        return Err(ApiError::invalid("stream", "streaming is not supported; send `stream: false`"));
    }
    Ok(())
}

/// The shared sampling fields. OpenAI's defaults: temperature 1, top_p 1; the seed defaults to 0 so that a
/// request without one is still reproducible.
fn sampling_params(
    max_tokens: Option<&Value>,
    temperature: Option<&Value>,
    top_p: Option<&Value>,
    top_k: Option<&Value>,
    seed: Option<&Value>,
    stop: Option<&Value>,
) -> Result<Value, ApiError> {
    let max_tokens = opt_uint("max_tokens", max_tokens)?.unwrap_or(DEFAULT_MAX_TOKENS);
    if max_tokens == 0 {
        return Err(ApiError::invalid("max_tokens", "must be at least 1"));
    }
    let temperature = opt_f64("temperature", temperature)?.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid("temperature", "must be between 0 and 2"));
    }
    let top_p = opt_f64("top_p", top_p)?.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid("top_p", "must be in (0, 1]"));
    }
    let top_k = opt_uint("top_k", top_k)?;
    let seed = match seed {
        None | Some(Value::Null) => 0,
        Some(v) => v
            .as_u64()
            .or_else(|| v.as_i64().map(|i| i as u64))
            .ok_or_else(|| ApiError::invalid("seed", "must be an integer"))?,
    };
    let stop: Vec<String> = match stop {
        None | Some(Value::Null) => vec![],
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|s| s.as_str().map(str::to_string).ok_or_else(|| ApiError::invalid("stop", "must be strings")))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(ApiError::invalid("stop", "must be a string or a list of strings")),
    };
    if stop.len() > 4 || stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid("stop", "at most 4 non-empty stop strings"));
    }
    let mut p = json!({
        "max_tokens": max_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "seed": seed,
        "stop": stop,
    });
    if let Some(k) = top_k.filter(|k| *k > 0) {
        p["top_k"] = json!(k);
    }
    Ok(p)
}

fn opt_f64(name: &str, v: Option<&Value>) -> Result<Option<f64>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or_else(|| ApiError::invalid(name, "must be a number")),
    }
}

fn opt_uint(name: &str, v: Option<&Value>) -> Result<Option<u64>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| ApiError::invalid(name, "must be a non-negative integer")),
    }
}

fn opt_bool(name: &str, v: Option<&Value>) -> Result<Option<bool>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_bool().map(Some).ok_or_else(|| ApiError::invalid(name, "must be true or false")),
    }
}

/// A message's text: a string, or the concatenated `text` parts of a content list.
fn text_content(v: Option<&Value>) -> Result<String, String> {
    match v {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut out = String::new();
            for p in parts {
                match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                    (Some("text"), Some(t)) => out.push_str(t),
                    (kind, _) => return Err(format!("only text parts are supported, not {kind:?}")),
                }
            }
            Ok(out)
        }
        None | Some(Value::Null) => Ok(String::new()),
        Some(_) => Err("must be a string or a list of text parts".into()),
    }
}

/// The response id and creation time, passed in so that the translation itself is pure.
#[derive(Debug, Clone)]
pub struct Stamp {
    /// `chatcmpl-…` / `cmpl-…` suffix.
    pub id: u64,
    /// Unix seconds.
    pub created: u64,
}

fn finish(result: &Value) -> Value {
    match result.get("finish_reason").and_then(Value::as_str) {
        Some("length") => json!("length"),
        _ => json!("stop"),
    }
}

fn usage(result: &Value) -> Value {
    let p = result.get("prompt_tokens").and_then(Value::as_u64).unwrap_or(0);
    let c = result.get("completion_tokens").and_then(Value::as_u64).unwrap_or(0);
    json!({ "prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c })
}

/// A `generate` result as a chat completion.
pub fn chat_response(result: &Value, model: &str, stamp: &Stamp) -> Value {
    let logprobs = match result.get("logprobs") {
        Some(Value::Array(content)) => json!({ "content": content }),
        _ => Value::Null,
    };
    json!({
        "id": format!("chatcmpl-{}", stamp.id),
        "object": "chat.completion",
        "created": stamp.created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": result.get("text").cloned().unwrap_or(json!("")) },
            "logprobs": logprobs,
            "finish_reason": finish(result),
        }],
        "usage": usage(result),
    })
}

/// A `generate` result as a (legacy) text completion, with its logprobs in the legacy shape.
pub fn completion_response(result: &Value, model: &str, stamp: &Stamp) -> Value {
    let logprobs = match result.get("logprobs") {
        Some(Value::Array(content)) => {
            let tokens: Vec<Value> = content.iter().map(|t| t["token"].clone()).collect();
            let lps: Vec<Value> = content.iter().map(|t| t["logprob"].clone()).collect();
            let tops: Vec<Value> = content
                .iter()
                .map(|t| {
                    let mut m = serde_json::Map::new();
                    for alt in t["top_logprobs"].as_array().into_iter().flatten() {
                        // Alternatives come most likely first; two ids decoding to one string keep the likelier.
                        if let Some(tok) = alt["token"].as_str() {
                            m.entry(tok.to_string()).or_insert_with(|| alt["logprob"].clone());
                        }
                    }
                    Value::Object(m)
                })
                .collect();
            json!({ "tokens": tokens, "token_logprobs": lps, "top_logprobs": tops })
        }
        _ => Value::Null,
    };
    json!({
        "id": format!("cmpl-{}", stamp.id),
        "object": "text_completion",
        "created": stamp.created,
        "model": model,
        "choices": [{
            "index": 0,
            "text": result.get("text").cloned().unwrap_or(json!("")),
            "logprobs": logprobs,
            "finish_reason": finish(result),
        }],
        "usage": usage(result),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_request_maps_openai_fields_to_generate_params() {
        let body = br#"{"model":"m","messages":[{"role":"system","content":"Be brief."},
            {"role":"user","content":[{"type":"text","text":"Hi"},{"type":"text","text":"!"}]}],
            "max_tokens":1,"temperature":0,"logprobs":true,"top_logprobs":5,"stop":"\n","seed":7,"top_k":3}"#;
        let p = chat_request(body).unwrap();
        assert_eq!(p.model.as_deref(), Some("m"));
        assert_eq!(p.params["messages"][1], json!({"role":"user","content":"Hi!"}));
        assert_eq!(p.params["max_tokens"], 1);
        assert_eq!(p.params["temperature"], 0.0);
        assert_eq!(p.params["top_logprobs"], 5);
        assert_eq!(p.params["logprobs"], true);
        assert_eq!(p.params["stop"], json!(["\n"]));
        assert_eq!(p.params["seed"], 7);
        assert_eq!(p.params["top_k"], 3);
    }

    #[test]
    fn chat_request_defaults_are_openais_with_a_fixed_seed() {
        let p = chat_request(br#"{"messages":[{"role":"user","content":"x"}]}"#).unwrap();
        assert_eq!(p.params["temperature"], 1.0);
        assert_eq!(p.params["top_p"], 1.0);
        assert_eq!(p.params["seed"], 0);
        assert_eq!(p.params["max_tokens"], DEFAULT_MAX_TOKENS);
        assert_eq!(p.params["logprobs"], false);
        assert!(p.params.get("top_logprobs").is_none());
        assert!(p.params.get("top_k").is_none());
    }

    #[test]
    fn bad_requests_name_the_field() {
        let cases: &[(&[u8], &str)] = &[
            (b"not json", "body"),
            (br#"{}"#, "messages"),
            (br#"{"messages":[]}"#, "messages"),
            (br#"{"messages":[{"content":"x"}]}"#, "messages[0]"),
            (br#"{"messages":[{"role":"tool","content":"x"}]}"#, "messages[0].role"),
            (br#"{"messages":[{"role":"user","content":5}]}"#, "messages[0].content"),
            (br#"{"messages":[{"role":"user","content":"x"}],"n":2}"#, "n"),
            (br#"{"messages":[{"role":"user","content":"x"}],"stream":true}"#, "stream"),
            (br#"{"messages":[{"role":"user","content":"x"}],"top_logprobs":21,"logprobs":true}"#, "top_logprobs"),
            (br#"{"messages":[{"role":"user","content":"x"}],"top_logprobs":2}"#, "top_logprobs"),
            (br#"{"messages":[{"role":"user","content":"x"}],"temperature":"hot"}"#, "temperature"),
            (br#"{"messages":[{"role":"user","content":"x"}],"temperature":3}"#, "temperature"),
            (br#"{"messages":[{"role":"user","content":"x"}],"top_p":0}"#, "top_p"),
            (br#"{"messages":[{"role":"user","content":"x"}],"max_tokens":0}"#, "max_tokens"),
            (br#"{"messages":[{"role":"user","content":"x"}],"max_tokens":-1}"#, "max_tokens"),
            (br#"{"messages":[{"role":"user","content":"x"}],"stop":[1]}"#, "stop"),
            (br#"{"messages":[{"role":"user","content":"x"}],"stop":["a","b","c","d","e"]}"#, "stop"),
            (br#"{"messages":[{"role":"user","content":"x"}],"seed":"s"}"#, "seed"),
        ];
        for (body, field) in cases {
            let e = chat_request(body).unwrap_err();
            assert_eq!(e.status, 400, "{}", String::from_utf8_lossy(body));
            assert_eq!(e.param.as_deref(), Some(*field), "{}: {}", String::from_utf8_lossy(body), e.message);
        }
    }

    #[test]
    fn completion_request_takes_one_prompt() {
        let p = completion_request(br#"{"prompt":["Once"],"logprobs":2,"max_tokens":4}"#).unwrap();
        assert_eq!(p.params["prompt"], "Once");
        assert_eq!(p.params["top_logprobs"], 2);
        assert_eq!(p.params["logprobs"], true);
        assert!(p.params.get("messages").is_none());
        assert_eq!(completion_request(br#"{"prompt":["a","b"]}"#).unwrap_err().param.as_deref(), Some("prompt"));
        assert_eq!(completion_request(br#"{"prompt":"a","echo":true}"#).unwrap_err().param.as_deref(), Some("echo"));
    }

    #[test]
    fn responses_have_the_openai_shape() {
        let result = json!({
            "text": "m", "finish_reason": "length", "prompt_tokens": 10, "completion_tokens": 1,
            "logprobs": [{"token": "m", "logprob": -0.1, "bytes": [109],
                          "top_logprobs": [{"token": "m", "logprob": -0.1, "bytes": [109]},
                                           {"token": "M", "logprob": -2.5, "bytes": [77]}]}]
        });
        let stamp = Stamp { id: 3, created: 1700000000 };
        let chat = chat_response(&result, "tiny", &stamp);
        assert_eq!(chat["id"], "chatcmpl-3");
        assert_eq!(chat["choices"][0]["message"]["content"], "m");
        assert_eq!(chat["choices"][0]["finish_reason"], "length");
        assert_eq!(chat["choices"][0]["logprobs"]["content"][0]["top_logprobs"][1]["token"], "M");
        assert_eq!(chat["usage"]["total_tokens"], 11);
        let legacy = completion_response(&result, "tiny", &stamp);
        assert_eq!(legacy["choices"][0]["logprobs"]["top_logprobs"][0]["M"], -2.5);
        assert_eq!(legacy["choices"][0]["logprobs"]["tokens"][0], "m");
        let no_lp = chat_response(&json!({"text": "x", "finish_reason": "stop"}), "tiny", &stamp);
        assert!(no_lp["choices"][0]["logprobs"].is_null());
    }
}
