//! `judge-openai`: an LLM judge over any OpenAI-compatible `/v1/chat/completions` endpoint (vLLM, llama.cpp's
//! server, Ollama, TGI, OpenAI, `rto serve`).
//!
//! Ops, one per protocol (reference/plugins-judges.md part B, reference/paper.md §5):
//!
//! - `alpaca-eval` (inputs `a`, `b`): weighted AlpacaEval 2. One token, `m` or `M`, with `logprobs` and
//!   `top_logprobs`; the preference is `P(M)/(P(m)+P(M))` from the first token's top logprobs, the outputs' order
//!   swapped per instruction by a seeded coin ([`judge`]), identical outputs a draw. The endpoint is probed once
//!   for logprobs first, and the stage fails if it returns none: no silent fallback to the answer's text.
//! - `pairwise` (inputs `a`, `b`): MT-Bench `pair-v2`, judged in both orders; a win needs both orders to agree,
//!   anything else is a tie.
//! - `single` (input `responses`): MT-Bench `single-v1`, a 1–10 `[[rating]]`.
//! - `refusal` (input `responses`): the paper's compliance/refusal judge; the last whole word "refusal" or
//!   "compliance" in the answer is the label.
//!
//! `a` is the model being evaluated, `b` the baseline. Each op may also take `prompts` (rows joined by `id`
//! holding the instruction; [`inputs`]). An answer a parser cannot read is `unparseable`, kept with its raw text
//! and counted apart, never guessed.
//!
//! Each op writes `items.jsonl` (one line per item in input order, every raw answer with its verdict) and
//! `summary.json` (win rates with a seeded bootstrap CI and the LC win rate; a mean rating; a refusal rate with a
//! Wilson interval), both with sorted keys and no clock, so a re-run is byte-identical.
//!
//! Requests go out `concurrency` at a time, each with a time limit, retried with exponential backoff and jitter
//! (or the server's `Retry-After`) on 429, 5xx, timeouts and dropped connections. Every answer is appended to an
//! item cache in the stage's scratch directory before it counts, so a crashed or cancelled stage resumes without
//! asking again ([`item_cache`]). The API key comes from the environment variable named by `api_key_env`: the
//! study holds the variable's name, never the key, so the key is in no action key, log, artifact or message.
#![deny(missing_docs)]

mod client;
mod inputs;
mod item_cache;
mod judge;
mod params;
mod parse;
mod pool;
mod prompts;
mod retry;

use api::protocol::OpInfo;
use api::{Backend, Error, Kind, OpContext};
use serde_json::Value;

use params::Params;

/// The item cache's file name in the stage's scratch directory (tests look for it).
pub const ITEM_CACHE_FILE: &str = judge::CACHE_FILE;

/// The params of every op that only say how requests are sent (the key's variable name, concurrency, retries,
/// timeouts): left out of action keys (`OpInfo::unkeyed_params`). The endpoint stays in: another server may
/// serve another model under the same name.
pub const UNKEYED_PARAMS: &[&str] =
    &["api_key_env", "backoff_max_ms", "backoff_ms", "concurrency", "max_attempts", "timeout_s"];

/// The judge-openai backend. Stateless: every op reads its params and inputs afresh.
pub struct JudgeOpenAi;

impl Backend for JudgeOpenAi {
    const NAME: &'static str = "judge-openai";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const KIND: Kind = Kind::Judge;

    fn ops() -> Vec<OpInfo> {
        // How requests are sent cannot change a verdict: raising a timeout or lowering the concurrency after a
        // failed run keeps the action key, so the rerun resumes from the item cache instead of paying again.
        let op = |name: &str, summary: &str| OpInfo {
            unkeyed_params: UNKEYED_PARAMS.iter().map(|p| p.to_string()).collect(),
            ..api::op(name, summary)
        };
        vec![
            op("alpaca-eval", "AlpacaEval 2 preference of `a` over `b` from the judge's m/M logprobs, LC win rate"),
            op("pairwise", "MT-Bench pairwise verdicts [[A]]/[[B]]/[[C]] in both orders, win rate of `a`"),
            op("single", "MT-Bench single-answer 1-10 [[rating]] per response, mean rating"),
            op("refusal", "the paper's compliance/refusal judge per response, refusal rate"),
        ]
    }

    fn create(config: &Value) -> Result<Self, Error> {
        match config {
            Value::Null => Ok(JudgeOpenAi),
            Value::Object(m) if m.is_empty() => Ok(JudgeOpenAi),
            _ => Err(Error::Failed("judge-openai takes no plugin config; its settings are per-op params".into())),
        }
    }

    fn validate(&self, op: &str, params: &Value, input_names: &[String]) -> Result<(), Error> {
        let p = Params::parse(op, params)?;
        let required = p.protocol.required_inputs();
        let optional = p.protocol.optional_inputs();
        let known = || required.iter().chain(optional).map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ");
        if let Some(missing) = required.iter().find(|w| !input_names.iter().any(|n| n == *w)) {
            return Err(Error::Failed(format!(
                "`judge-openai:{op}` needs input `{missing}` (JSONL); its inputs: {} (`prompts` optional)",
                known()
            )));
        }
        // An extra input is almost always a misspelt name; ignoring it would hide the mistake.
        if let Some(extra) =
            input_names.iter().find(|n| !required.contains(&n.as_str()) && !optional.contains(&n.as_str()))
        {
            return Err(Error::Failed(format!("`judge-openai:{op}` has no input `{extra}`; its inputs: {}", known())));
        }
        Ok(())
    }

    fn invoke(&mut self, op: &str, ctx: &mut OpContext<'_>) -> Result<Value, Error> {
        let p = Params::parse(op, ctx.params)?;
        judge::run(&p, ctx)
    }
}

api::declare_plugin!(JudgeOpenAi);
