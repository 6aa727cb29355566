//! `generate`: one completion on a live instance, for serving (`rto serve` keeps one [`super::CandleLm`] in a
//! worker and invokes `generate` per request; the model stays loaded between requests, see [`super::live`]).
//! Nothing is written: the returned JSON is the response.
//!
//! The prompt is the rendered `messages` (the model's chat template, or the `chat_template` param) or the raw
//! `prompt`, tokenized as text, preceded by the tokenizer's bos as in training and in `sample` unless the text
//! already begins with it (templates that write `{{ bos_token }}`). So greedy `generate` of a `prompt` answers
//! what `sample` answers for that prompt. Generation ends at an eos or a stop string (`finish_reason = "stop"`;
//! the text is cut before the stop string) or after `max_tokens` (`"length"`).
//!
//! Log-probabilities follow OpenAI's chat completions (`choices[].logprobs.content`): one entry per token of the
//! text (the eos, and tokens past a stop string, have none), each the token's decoded piece, its
//! log-probability, its UTF-8 bytes and the `top_logprobs` most likely alternatives; computed as the
//! log-softmax of the model's raw logits (temperature 1, before top-k / top-p), whatever the sampling settings.

use api::{Error, OpContext};
use serde::Serialize;
use serde_json::{Value, json};

use super::live::{Live, Models};
use super::params::{GenerateInput, GenerateParams};
use crate::chat::ChatTemplate;
use crate::sample::{FinishReason, GenerateOptions, TokenLogprobs, generate_with};

/// What OpenAI reports for a log-probability of `-inf` (a token the model rules out).
const FLOOR: f64 = -9999.0;

#[derive(Serialize)]
struct Alternative {
    token: String,
    logprob: f64,
    bytes: Vec<u8>,
}

#[derive(Serialize)]
struct Entry {
    token: String,
    logprob: f64,
    bytes: Vec<u8>,
    top_logprobs: Vec<Alternative>,
}

/// Runs `generate` with the models `models` keeps loaded.
pub(super) fn run(p: &GenerateParams, ctx: &mut OpContext<'_>, models: &mut Models) -> Result<Value, Error> {
    let model = ctx.input("model")?;
    let adapter = ctx.inputs.get("adapter").map(std::path::PathBuf::as_path);
    let device = super::device(ctx)?;
    let live = models.get(model, adapter, p.dtype, &device, ctx)?;

    let text = prompt_text(p, live)?;
    let encoded =
        live.tokenizer.encode(text.as_str(), false).map_err(|e| Error::Failed(format!("tokenizer error: {e}")))?;
    let body = encoded.get_ids();
    let bos = live.bos.filter(|b| body.first() != Some(b));
    let ids: Vec<u32> = bos.into_iter().chain(body.iter().copied()).collect();
    if ids.is_empty() {
        let at = if matches!(p.input, GenerateInput::Prompt(_)) { "prompt" } else { "messages" };
        return Err(Error::param(&[at], "the prompt is empty and the tokenizer has no bos token to start from"));
    }
    let opts = GenerateOptions {
        max_new_tokens: p.max_tokens,
        sampling: p.sampling,
        seed: p.seed,
        stop_tokens: live.eos.clone(),
        logprobs: p.logprobs,
    };
    let mut cancelled = false;
    let generation = {
        let ctx = &*ctx;
        let mut check = |tokens: &[u32]| {
            if ctx.cancelled() {
                cancelled = true;
                return true;
            }
            !p.stop.is_empty() && live.tokenizer.decode(tokens, true).is_ok_and(|t| cut_at_stop(&t, &p.stop).is_some())
        };
        generate_with(&live.decoder, &ids, &opts, &live.device, &mut check)?
    };
    if cancelled {
        return Err(Error::Cancelled);
    }

    let mut content = generation.tokens.as_slice();
    if let Some((last, rest)) = content.split_last()
        && live.eos.contains(last)
    {
        content = rest;
    }
    let decode = |tokens: &[u32]| {
        live.tokenizer.decode(tokens, true).map_err(|e| Error::Failed(format!("cannot decode the answer: {e}")))
    };
    let mut answer = decode(content)?;
    let mut kept = content.len();
    if let Some(cut) = cut_at_stop(&answer, &p.stop) {
        answer.truncate(cut);
        // The tokens that contribute to the text before the stop string: up to the first prefix reaching it.
        kept = (0..=content.len()).find(|i| decode(&content[..*i]).is_ok_and(|t| t.len() >= cut)).unwrap_or(kept);
    }
    let logprobs = match p.logprobs {
        None => Value::Null,
        Some(_) => {
            serde_json::to_value(generation.logprobs[..kept].iter().map(|lp| entry(live, lp)).collect::<Vec<_>>())?
        }
    };
    let finish = match generation.finish {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    };
    Ok(json!({
        "completion_tokens": generation.tokens.len(),
        "finish_reason": finish,
        "logprobs": logprobs,
        "prompt_tokens": ids.len(),
        "text": answer,
    }))
}

/// The text to tokenize: the raw prompt, or the messages rendered by the param's or the model's template.
fn prompt_text(p: &GenerateParams, live: &Live) -> Result<String, Error> {
    let (messages, chat_template, add_generation_prompt) = match &p.input {
        GenerateInput::Prompt(text) => return Ok(text.clone()),
        GenerateInput::Messages { messages, chat_template, add_generation_prompt } => {
            (messages, chat_template, *add_generation_prompt)
        }
    };
    let (bos, eos) = &live.special;
    let own;
    let (template, at) = match chat_template {
        Some(source) => {
            own = ChatTemplate::new(source, bos, eos)
                .map_err(|e| Error::param(&["chat_template"], format!("the template does not compile: {e}")))?;
            (&own, "chat_template")
        }
        None => match &live.template {
            Some(t) => (t, "messages"),
            None => {
                return Err(Error::param(
                    &["messages"],
                    "the model has no chat template: give one in `chat_template`, or a raw `prompt`",
                ));
            }
        },
    };
    template
        .render(messages, add_generation_prompt)
        .map_err(|e| Error::param(&[at], format!("rendering the chat template failed: {e}")))
}

/// The earliest position of any stop string in `text`.
fn cut_at_stop(text: &str, stop: &[String]) -> Option<usize> {
    stop.iter().filter_map(|s| text.find(s.as_str())).min()
}

fn finite(logprob: f64) -> f64 {
    if logprob.is_finite() { logprob } else { FLOOR }
}

fn entry(live: &Live, lp: &TokenLogprobs) -> Entry {
    let piece = |id: u32| {
        let bytes = live.pieces.bytes(&live.tokenizer, id);
        (String::from_utf8_lossy(&bytes).into_owned(), bytes)
    };
    let (token, bytes) = piece(lp.token);
    Entry {
        token,
        logprob: finite(lp.logprob),
        bytes,
        top_logprobs: lp
            .top
            .iter()
            .map(|(id, logprob)| {
                let (token, bytes) = piece(*id);
                Alternative { token, logprob: finite(*logprob), bytes }
            })
            .collect(),
    }
}
