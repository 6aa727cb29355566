//! Params of each op, parsed once by one function that both `validate` and `invoke` call, so a stage that
//! validates cannot fail later on a param. Every error carries the param's path, so rto points into the study.

use std::time::Duration;

use api::Error;
use api::params::{boolean, kind, string};
use serde_json::{Map, Value};

use crate::prompts::Templates;

/// The judging protocol, one per op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// Weighted AlpacaEval 2: one token, preference from the top logprobs of `m` and `M`.
    AlpacaEval,
    /// MT-Bench `pair-v2`: `[[A]]`/`[[B]]`/`[[C]]`, both orders.
    Pairwise,
    /// MT-Bench `single-v1`: a 1–10 `[[rating]]`.
    Single,
    /// The paper's compliance/refusal judge.
    Refusal,
}

impl Protocol {
    /// The op's name, also the summary's `protocol`.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::AlpacaEval => "alpaca-eval",
            Protocol::Pairwise => "pairwise",
            Protocol::Single => "single",
            Protocol::Refusal => "refusal",
        }
    }

    fn from_op(op: &str) -> Option<Protocol> {
        [Protocol::AlpacaEval, Protocol::Pairwise, Protocol::Single, Protocol::Refusal]
            .into_iter()
            .find(|p| p.name() == op)
    }

    /// The inputs the op requires.
    pub fn required_inputs(self) -> &'static [&'static str] {
        match self {
            Protocol::AlpacaEval | Protocol::Pairwise => &["a", "b"],
            Protocol::Single | Protocol::Refusal => &["responses"],
        }
    }

    /// The inputs the op may take besides the required ones.
    pub fn optional_inputs(self) -> &'static [&'static str] {
        &["prompts"]
    }

    /// Whether the summary has a bootstrap interval (refusal rates get a Wilson interval instead).
    fn bootstraps(self) -> bool {
        self != Protocol::Refusal
    }
}

/// The largest `top_logprobs` OpenAI accepts (and vLLM's default `--max-logprobs`).
pub(crate) const MAX_TOP_LOGPROBS: u64 = 20;
/// The most bootstrap replicates accepted: beyond this the CI does not move, and the op would just be slow.
pub(crate) const MAX_BOOTSTRAP: u64 = 1_000_000;
/// The most requests in flight at once.
pub(crate) const MAX_CONCURRENCY: u64 = 256;

/// One op with its parsed params.
#[derive(Debug, Clone)]
pub(crate) struct Params {
    pub protocol: Protocol,
    /// The URL requests are POSTed to (`…/chat/completions`).
    pub url: String,
    /// The judge model's name, sent as `model`.
    pub model: String,
    /// The name of the environment variable holding the API key (never the key itself).
    pub api_key_env: Option<String>,
    /// The system and user message templates.
    pub templates: Templates,
    pub temperature: f64,
    pub max_tokens: u64,
    /// Seeds the order swaps, the requests' `seed` and the bootstrap.
    pub seed: u64,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Tries per request, the first included.
    pub max_attempts: u32,
    /// Per-request time limit (connect, send, wait, read).
    pub timeout: Duration,
    /// First retry delay; doubled per retry up to `backoff_max`.
    pub backoff: Duration,
    pub backoff_max: Duration,
    /// The field of each sample row holding the response.
    pub field: String,
    /// alpaca-eval: how many top logprobs to ask for.
    pub top_logprobs: u64,
    /// alpaca-eval: also count the tokens ` m` and ` M` (a leading space) as the identifiers.
    pub spaced_tokens: bool,
    /// Bootstrap replicates for the confidence intervals (0: none).
    pub bootstrap: u64,
}

/// Params every op takes.
const COMMON: &[&str] = &[
    "api_key_env",
    "backoff_max_ms",
    "backoff_ms",
    "concurrency",
    "endpoint",
    "field",
    "max_attempts",
    "max_tokens",
    "model",
    "seed",
    "system",
    "temperature",
    "template",
    "timeout_s",
];

impl Params {
    /// Parses `params` for `op`; every error points at the offending param.
    pub fn parse(op: &str, params: &Value) -> Result<Params, Error> {
        let Some(protocol) = Protocol::from_op(op) else {
            return Err(Error::Failed(format!(
                "judge-openai has no op `{op}`; its ops: alpaca-eval, pairwise, single, refusal"
            )));
        };
        let mut valid: Vec<&str> = COMMON.to_vec();
        if protocol == Protocol::AlpacaEval {
            valid.extend(["spaced_tokens", "top_logprobs"]);
        }
        if protocol.bootstraps() {
            valid.push("bootstrap");
        }
        valid.sort();
        let p = table(op, params, &valid)?;

        let endpoint = string(&p, "endpoint")?.ok_or_else(|| {
            Error::param(
                &["endpoint"],
                "`endpoint` is required: the server's base URL, e.g. \"http://127.0.0.1:8000/v1\"",
            )
        })?;
        let url = chat_url(&endpoint)?;
        let model = match string(&p, "model")? {
            Some(m) if !m.trim().is_empty() => m,
            Some(_) => return Err(Error::param(&["model"], "`model` must name the judge model, not be blank")),
            None => {
                return Err(Error::param(&["model"], "`model` is required: the judge model's name on the endpoint"));
            }
        };
        let api_key_env = match string(&p, "api_key_env")? {
            None => None,
            Some(name) if is_env_name(&name) => Some(name),
            Some(_) => {
                return Err(Error::param(
                    &["api_key_env"],
                    "`api_key_env` must be the NAME of an environment variable (letters, digits, `_`), \
                     not the key itself",
                ));
            }
        };
        let templates = Templates::new(protocol, string(&p, "system")?, string(&p, "template")?)?;

        // AlpacaEval's annotator config asks at temperature 1: the preference is read from the logprobs, which
        // at temperature 1 are the model's own distribution on every server. The verdict-text judges are greedy,
        // as in MT-Bench and the paper.
        let default_temperature = if protocol == Protocol::AlpacaEval { 1.0 } else { 0.0 };
        let temperature = match p.get("temperature") {
            None => default_temperature,
            Some(Value::Number(n)) => match n.as_f64() {
                Some(t) if (0.0..=2.0).contains(&t) => t,
                _ => return Err(Error::param(&["temperature"], format!("`temperature` must be in 0..=2, not {n}"))),
            },
            Some(other) => {
                return Err(Error::param(
                    &["temperature"],
                    format!("`temperature` must be a number, not {}", kind(other)),
                ));
            }
        };
        let default_max_tokens = if protocol == Protocol::AlpacaEval { 1 } else { 2048 };
        let max_tokens = ranged(&p, "max_tokens", 1, 1 << 20)?.unwrap_or(default_max_tokens);
        let top_logprobs = ranged(&p, "top_logprobs", 1, MAX_TOP_LOGPROBS)?.unwrap_or(5);
        let bootstrap = ranged(&p, "bootstrap", 0, MAX_BOOTSTRAP)?.unwrap_or(2000);
        let backoff = Duration::from_millis(ranged(&p, "backoff_ms", 0, 3_600_000)?.unwrap_or(1000));
        let backoff_max = Duration::from_millis(ranged(&p, "backoff_max_ms", 0, 3_600_000)?.unwrap_or(60_000));
        if backoff_max < backoff {
            return Err(Error::param(&["backoff_max_ms"], "`backoff_max_ms` must be at least `backoff_ms`"));
        }
        let timeout = match p.get("timeout_s") {
            None => Duration::from_secs(300),
            Some(Value::Number(n)) => match n.as_f64() {
                Some(t) if t > 0.0 && t <= 86_400.0 => Duration::from_secs_f64(t),
                _ => {
                    return Err(Error::param(
                        &["timeout_s"],
                        format!("`timeout_s` must be more than 0 and at most 86400 seconds, not {n}"),
                    ));
                }
            },
            Some(other) => {
                return Err(Error::param(&["timeout_s"], format!("`timeout_s` must be a number, not {}", kind(other))));
            }
        };
        let field = match string(&p, "field")? {
            None => "response".into(),
            Some(f) if f.is_empty() => return Err(Error::param(&["field"], "`field` must name a field, not be empty")),
            Some(f) => f,
        };
        Ok(Params {
            protocol,
            url,
            model,
            api_key_env,
            templates,
            temperature,
            max_tokens,
            seed: ranged(&p, "seed", 0, u64::MAX)?.unwrap_or(0),
            concurrency: ranged(&p, "concurrency", 1, MAX_CONCURRENCY)?.unwrap_or(4) as usize,
            max_attempts: ranged(&p, "max_attempts", 1, 100)?.unwrap_or(6) as u32,
            timeout,
            backoff,
            backoff_max,
            field,
            top_logprobs,
            spaced_tokens: boolean(&p, "spaced_tokens")?.unwrap_or(false),
            bootstrap,
        })
    }
}

/// The chat-completions URL of `endpoint`: the base URL as OpenAI clients take it (`http://host:port/v1`), with
/// `/chat/completions` appended unless it is already there.
fn chat_url(endpoint: &str) -> Result<String, Error> {
    let bad = |why: &str| Error::param(&["endpoint"], format!("`endpoint` {why}; e.g. \"http://127.0.0.1:8000/v1\""));
    let rest = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
        .ok_or_else(|| bad("must start with http:// or https://"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() {
        return Err(bad("has no host"));
    }
    // Credentials in the URL would enter the action key and every error message.
    if authority.contains('@') {
        return Err(bad("must not carry credentials; name the environment variable holding the key in `api_key_env`"));
    }
    if endpoint.contains(['?', '#']) || endpoint.chars().any(char::is_whitespace) {
        return Err(bad("must be a plain base URL, without a query, fragment or spaces"));
    }
    let base = endpoint.trim_end_matches('/');
    Ok(if base.ends_with("/chat/completions") { base.to_string() } else { format!("{base}/chat/completions") })
}

/// An environment variable name as POSIX shells accept it; anything else is more likely a pasted key.
fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The params as a table, refusing unknown keys (see [`api::params::table`]).
fn table(op: &str, params: &Value, valid: &[&str]) -> Result<Map<String, Value>, Error> {
    api::params::table("judge-openai", op, params, valid)
}

/// An integer in `lo..=hi`.
fn ranged(p: &Map<String, Value>, key: &str, lo: u64, hi: u64) -> Result<Option<u64>, Error> {
    let range =
        if hi == u64::MAX { format!("an integer of at least {lo}") } else { format!("an integer in {lo}..={hi}") };
    match p.get(key) {
        None => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(x) if (lo..=hi).contains(&x) => Ok(Some(x)),
            _ => Err(Error::param(&[key], format!("`{key}` must be {range}, not {n}"))),
        },
        Some(other) => Err(Error::param(&[key], format!("`{key}` must be {range}, not {}", kind(other)))),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(op: &str, params: Value) -> Result<Params, Error> {
        Params::parse(op, &params)
    }

    fn path_of(e: Error) -> (Vec<String>, String) {
        match e {
            Error::Param { path, message } => (path, message),
            other => panic!("not a param error: {other:?}"),
        }
    }

    #[test]
    fn defaults_follow_each_protocol() {
        let base = json!({"endpoint": "http://127.0.0.1:8000/v1", "model": "judge"});
        let a = parse("alpaca-eval", base.clone()).unwrap();
        assert_eq!(a.url, "http://127.0.0.1:8000/v1/chat/completions");
        assert_eq!((a.temperature, a.max_tokens, a.top_logprobs, a.spaced_tokens), (1.0, 1, 5, false));
        assert_eq!((a.concurrency, a.max_attempts, a.bootstrap, a.seed), (4, 6, 2000, 0));
        let r = parse("refusal", base).unwrap();
        assert_eq!((r.temperature, r.max_tokens), (0.0, 2048));
        assert_eq!(r.api_key_env, None);
    }

    #[test]
    fn the_endpoint_may_already_name_the_route() {
        let p = parse("single", json!({"endpoint": "https://x/v1/chat/completions/", "model": "j"})).unwrap();
        assert_eq!(p.url, "https://x/v1/chat/completions");
    }

    #[test]
    fn bad_params_point_at_their_path() {
        let cases = [
            ("alpaca-eval", json!({"model": "j"}), "endpoint", "required"),
            ("alpaca-eval", json!({"endpoint": "ftp://x", "model": "j"}), "endpoint", "http://"),
            ("alpaca-eval", json!({"endpoint": "http://u:sk-1@x/v1", "model": "j"}), "endpoint", "credentials"),
            ("alpaca-eval", json!({"endpoint": "http://x/v1"}), "model", "required"),
            (
                "alpaca-eval",
                json!({"endpoint": "http://x", "model": "j", "top_logprobs": 21}),
                "top_logprobs",
                "1..=20",
            ),
            (
                "alpaca-eval",
                json!({"endpoint": "http://x", "model": "j", "api_key_env": "sk-abc"}),
                "api_key_env",
                "NAME",
            ),
            (
                "refusal",
                json!({"endpoint": "http://x", "model": "j", "top_logprobs": 5}),
                "top_logprobs",
                "unknown param",
            ),
            ("refusal", json!({"endpoint": "http://x", "model": "j", "bootstrap": 5}), "bootstrap", "unknown param"),
            ("single", json!({"endpoint": "http://x", "model": "j", "timeout_s": 0}), "timeout_s", "more than 0"),
            ("single", json!({"endpoint": "http://x", "model": "j", "concurrency": 0}), "concurrency", "1..=256"),
            ("single", json!({"endpoint": "http://x", "model": "j", "temperature": "hot"}), "temperature", "number"),
            (
                "single",
                json!({"endpoint": "http://x", "model": "j", "backoff_ms": 10, "backoff_max_ms": 5}),
                "backoff_max_ms",
                "at least",
            ),
            ("pairwise", json!({"endpoint": "http://x", "model": "j", "template": "{{ nope }}"}), "template", "nope"),
        ];
        for (op, params, path, words) in cases {
            let (got, message) = path_of(parse(op, params.clone()).unwrap_err());
            assert_eq!(got, [path], "{op} {params}: {message}");
            assert!(message.contains(words), "{op} {params}: {message}");
        }
    }

    #[test]
    fn an_unknown_op_lists_the_ops() {
        let Err(Error::Failed(m)) = parse("judge", json!({})) else { panic!() };
        assert!(m.contains("alpaca-eval, pairwise, single, refusal"), "{m}");
    }
}
