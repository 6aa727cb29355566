//! `sample`: one response per row of a `prompts.jsonl` (`{"id", "prompt", …}`), written to `samples.jsonl` in
//! input order as `{"finish", "id", "instruction", "prompt", "reference", "response", "tokens"}` with sorted keys
//! (`instruction` and `reference` passed through when the row has them, so judges can join on `id`).
//!
//! The `model` input is a Hugging Face model directory or a GGUF file (tokenizer, eos and weights then come from
//! the file, see [`crate::gguf`]).
//!
//! The prompt is used as is (the `dataset` stage already applied the chat template), preceded by the
//! tokenizer's bos when it has one, as in training. Generation ends at an eos (`finish = "stop"`; the eos is
//! counted in `tokens` but not part of `response`), at a stop string (`"stop"`; the response is cut before it)
//! or after `max_new_tokens` (`"length"`).
//!
//! Prompts are generated `batch_size` at a time, grouped by token length (longest first, so that a batch too
//! large for memory fails at once) to waste little on padding; each prompt gets the response it would get alone
//! (see [`crate::sample`]), and the output keeps the input order.

use std::io::Write;

use api::{Error, OpContext};
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::files;
use super::params::SampleParams;
use crate::load::LoadOptions;
use crate::sample::{FinishReason, GenerateOptions, Generation, generate_batch};

#[derive(Serialize)]
struct SampleLine<'a> {
    // Fields in alphabetical order: serde writes them in declaration order, so keys come out sorted.
    finish: &'static str,
    id: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    instruction: Option<&'a Value>,
    prompt: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reference: Option<&'a Value>,
    response: String,
    tokens: usize,
}

/// The response text: cut before the earliest stop string, if any occurs.
fn cut_at_stop(text: &str, stop: &[String]) -> Option<usize> {
    stop.iter().filter_map(|s| text.find(s.as_str())).min()
}

/// Runs `sample`.
pub(super) fn run(p: &SampleParams, ctx: &mut OpContext<'_>) -> Result<Value, Error> {
    let model_dir = ctx.input("model")?;
    let prompts_path = ctx.input("prompts")?;
    let mut rows = files::read_jsonl(prompts_path)?;
    if let Some(limit) = p.limit {
        rows.truncate(limit);
    }
    // Checked before the model loads, so a bad row costs no loading time.
    let mut prompts: Vec<(&Map<String, Value>, &str)> = Vec::with_capacity(rows.len());
    for (line, row) in &rows {
        let at = || format!("`{}` line {line}", prompts_path.display());
        if !row.contains_key("id") {
            return Err(Error::Failed(format!("{}: no field `id`", at())));
        }
        match row.get("prompt") {
            Some(Value::String(s)) => prompts.push((row, s.as_str())),
            Some(_) => return Err(Error::Failed(format!("{}: field `prompt` is not a string", at()))),
            None => return Err(Error::Failed(format!("{}: no field `prompt`", at()))),
        }
    }

    let device = super::device(ctx)?;
    ctx.log(&format!("{} prompt(s), device {}", prompts.len(), super::describe(&device, p.dtype)));
    let adapter = match ctx.inputs.get("adapter") {
        Some(dir) => Some(files::read_adapter(dir, &device)?),
        None => None,
    };
    let tokenizer = files::load_tokenizer(model_dir)?;
    let bos = files::bos_id(&tokenizer);
    let eos = files::eos_ids(model_dir, &tokenizer)?;
    if eos.is_empty() {
        ctx.log("no eos token known (tokenizer_config.json, config.json): every response runs to `max_new_tokens`");
    }
    let opts = LoadOptions { dtype: p.dtype, device: device.clone(), trainable: false };
    let loaded = files::load_model(model_dir, adapter.as_ref(), &opts, None)?;
    let gen_opts = GenerateOptions {
        max_new_tokens: p.max_new_tokens,
        sampling: p.sampling,
        seed: p.seed,
        stop_tokens: eos.clone(),
        logprobs: None,
    };

    let mut encoded: Vec<Vec<u32>> = Vec::with_capacity(prompts.len());
    for (row, prompt) in &prompts {
        let id = &row["id"];
        let enc = tokenizer
            .encode(*prompt, false)
            .map_err(|e| Error::Failed(format!("prompt {id}: tokenizer error: {e}")))?;
        let ids: Vec<u32> = bos.into_iter().chain(enc.get_ids().iter().copied()).collect();
        if ids.is_empty() {
            return Err(Error::Failed(format!("prompt {id} is empty and the tokenizer has no bos token")));
        }
        encoded.push(ids);
    }
    let mut order: Vec<usize> = (0..prompts.len()).collect();
    order.sort_by_key(|i| (std::cmp::Reverse(encoded[*i].len()), *i));

    let mut results: Vec<Option<Generation>> = vec![None; prompts.len()];
    let mut done = 0;
    for group in order.chunks(p.batch_size) {
        if ctx.cancelled() {
            return Err(Error::Cancelled);
        }
        let batch: Vec<Vec<u32>> = group.iter().map(|i| encoded[*i].clone()).collect();
        let mut cancelled = false;
        let generations = {
            let ctx = &*ctx;
            let mut check = |_: usize, tokens: &[u32]| {
                if cancelled || ctx.cancelled() {
                    cancelled = true;
                    return true;
                }
                // Decoding the whole response each token is quadratic, but cheap next to a forward pass.
                !p.stop.is_empty()
                    && tokenizer.decode(tokens, true).is_ok_and(|text| cut_at_stop(&text, &p.stop).is_some())
            };
            generate_batch(&loaded.decoder, &batch, &gen_opts, &device, &mut check)?
        };
        if cancelled {
            return Err(Error::Cancelled);
        }
        for (i, g) in group.iter().zip(generations) {
            results[*i] = Some(g);
        }
        done += group.len();
        ctx.progress(done as u64, prompts.len() as u64);
    }

    let path = ctx.out_dir.join("samples.jsonl");
    let file =
        std::fs::File::create(&path).map_err(|e| Error::Failed(format!("cannot create `{}`: {e}", path.display())))?;
    let mut out = std::io::BufWriter::new(file);
    let (mut stopped, mut total_tokens) = (0usize, 0usize);
    for ((row, prompt), generation) in prompts.iter().zip(results) {
        let id = &row["id"];
        let Some(generation) = generation else {
            return Err(Error::Failed(format!("prompt {id} was not generated (a bug)")));
        };
        let mut content = generation.tokens.as_slice();
        if let Some((last, rest)) = content.split_last()
            && eos.contains(last)
        {
            content = rest;
        }
        let mut response = tokenizer
            .decode(content, true)
            .map_err(|e| Error::Failed(format!("prompt {id}: cannot decode the response: {e}")))?;
        if let Some(at) = cut_at_stop(&response, &p.stop) {
            response.truncate(at);
        }
        let finish = match generation.finish {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        };
        stopped += usize::from(generation.finish == FinishReason::Stop);
        total_tokens += generation.tokens.len();
        let line = SampleLine {
            finish,
            id,
            instruction: row.get("instruction"),
            prompt,
            reference: row.get("reference"),
            response,
            tokens: generation.tokens.len(),
        };
        serde_json::to_writer(&mut out, &line)?;
        out.write_all(b"\n")?;
    }
    out.flush().map_err(|e| Error::Failed(format!("cannot write `{}`: {e}", path.display())))?;
    Ok(json!({
        "finished_length": prompts.len() - stopped,
        "finished_stop": stopped,
        "n": prompts.len(),
        "tokens": total_tokens,
    }))
}
