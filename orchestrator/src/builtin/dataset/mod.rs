//! The `dataset` built-in: turns instruction data sets into the training and evaluation files of one arm of a
//! response-tuning study (RT: train on the response alone; IT: on the instruction and the response).
//!
//! # Pipeline
//!
//! 1. Each source is read ([`read`]: JSONL, JSON, CSV, Parquet) and mapped to `(prompt, response)` ([`fields`]:
//!    presets `alpaca`, `dolly`, `lima`, `generic`, or explicit `fields`). Within a source, in this order: rows
//!    whose response does not match `filter` are skipped, reading stops after `first` matching rows, and `take`
//!    draws a seeded subsample (kept in file order).
//! 2. Sources are concatenated in the order the study lists them.
//! 3. `dedup` drops an example whose `(prompt, response)` was seen before, keeping the first.
//! 4. `holdout` examples, chosen with the seed, go only to `prompts.jsonl` (`holdout = "all"`: all of them, in
//!    order, for an evaluation set); the rest are shuffled with the seed
//!    and go to `train.jsonl`.
//!
//! Every random choice draws from ChaCha20 under `seed`, one stream per use ([`mix`]), and every JSON object is
//! written with its keys in a fixed (sorted) order, so that identical inputs and params give byte-identical
//! outputs: the cache's early cut-off depends on it.
//!
//! # Outputs
//!
//! - `train.jsonl`: `{"id": "<input>:<row>", "segments": [{"loss": false, "text": ...}, ...], "source": "<input>"}`
//!   where `<row>` is the 0-based row of the example in its file. Segments alternate in loss; the chat template
//!   ([`template`]) decides the text, and the loss covers the response, the eos and what the template puts after.
//! - `prompts.jsonl`: `{"id", "instruction", "prompt", "reference"}` for each held-out example, `prompt` being the
//!   inference prompt (the same for RT and IT). Always written, empty when `holdout = 0`, so that downstream
//!   stages can always reference it.
//! - `stats.json`: counts per source and overall, the mode, the template and the eos.
//!
//! # Errors
//!
//! Params are checked by [`params::Params::parse`], at plan time and again at run time. Data errors name the
//! file and the place in it (JSONL and CSV: line; JSON: element; Parquet: row, both 0-based) and the field.
//! Nothing here may panic on any input.

mod fields;
mod mix;
mod params;
mod read;
mod template;

#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::ops::ControlFlow;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;

use self::mix::Stream;
use self::params::{Mode, Params, Source};
use self::read::Format;
use self::template::{Renderer, Segment};
use super::{Builtin, ParamError, StageContext};

/// The `dataset` built-in stage (see the module documentation for params, outputs and guarantees).
pub struct Dataset;

impl Builtin for Dataset {
    fn name(&self) -> &'static str {
        "dataset"
    }

    fn validate(&self, params: &serde_json::Value, input_names: &[&str]) -> Result<(), ParamError> {
        Params::parse(params, input_names).map(drop)
    }

    fn run(&self, ctx: &mut StageContext<'_>) -> Result<()> {
        let names: Vec<&str> = ctx.inputs.keys().map(String::as_str).collect();
        let params = Params::parse(ctx.params, &names).map_err(|e| {
            if e.path.is_empty() {
                anyhow!("params: {}", e.message)
            } else {
                anyhow!("param `{}`: {}", e.path.join("."), e.message)
            }
        })?;
        build(ctx, &params)
    }
}

/// One example on its way to the outputs.
struct Example {
    id: String,
    /// The input it came from, and the position of its source in `sources` (for per-source counts).
    input: String,
    source: usize,
    prompt: String,
    response: String,
}

/// `stats.json`. Fields are in alphabetical order: serde writes them in declaration order.
#[derive(Serialize)]
struct Stats {
    dedup: bool,
    duplicates_dropped: usize,
    eos: String,
    held_out: usize,
    mode: &'static str,
    seed: u64,
    sources: Vec<SourceStats>,
    template: String,
    train_examples: usize,
}

#[derive(Serialize)]
struct SourceStats {
    duplicates_dropped: usize,
    /// Rows read whose response did not match `filter`.
    filtered_out: usize,
    format: &'static str,
    input: String,
    /// Examples this source contributes before dedup (after `filter`, `first` and `take`).
    kept: usize,
    /// Rows read from the file (reading stops once `first` is reached).
    read: usize,
}

#[derive(Serialize)]
struct TrainLine<'a> {
    id: &'a str,
    segments: Vec<Segment>,
    source: &'a str,
}

#[derive(Serialize)]
struct PromptLine<'a> {
    id: &'a str,
    instruction: &'a str,
    prompt: String,
    /// `None` (JSON `null`) for a prompt-only source, which has no reference answer.
    reference: Option<&'a str>,
}

/// How often (in rows) loops look at the cancel flag: often enough to stop within a blink, rarely enough to cost
/// nothing.
const CHECK_EVERY: usize = 4096;

fn build(ctx: &mut StageContext<'_>, params: &Params) -> Result<()> {
    let renderer = Renderer::new(&params.template, params.eos.as_deref(), ctx.inputs)?;
    let steps = params.sources.len() as u64 + 1;

    let mut examples = Vec::new();
    let mut stats = Vec::new();
    for (i, source) in params.sources.iter().enumerate() {
        let (mut taken, source_stats) = read_source(ctx, i, source, params.seed)?;
        writeln!(
            ctx.log,
            "source {i}: input `{}` ({}): read {} row(s), {} filtered out, kept {}",
            source.input, source_stats.format, source_stats.read, source_stats.filtered_out, source_stats.kept
        )?;
        examples.append(&mut taken);
        stats.push(source_stats);
        (ctx.progress)(i as u64 + 1, steps);
    }

    let (examples, dropped) =
        if params.dedup { mix::dedup(examples, |e| (&e.prompt, &e.response)) } else { (examples, Vec::new()) };
    for d in &dropped {
        if let Some(s) = stats.get_mut(d.source) {
            s.duplicates_dropped += 1;
        }
    }
    if examples.is_empty() {
        bail!("no examples left: every row was filtered out");
    }
    if params.holdout != params::HOLDOUT_ALL && params.holdout >= examples.len() {
        bail!(
            "param `holdout`: holding out {} of {} example(s) leaves none for training",
            params.holdout,
            examples.len()
        );
    }

    let held: BTreeSet<usize> = if params.holdout == params::HOLDOUT_ALL {
        (0..examples.len()).collect()
    } else {
        mix::sample(examples.len(), params.holdout, &mut mix::rng(params.seed, Stream::Holdout)).into_iter().collect()
    };
    let (held_out, mut train): (Vec<_>, Vec<_>) = examples.into_iter().enumerate().partition(|(i, _)| held.contains(i));
    mix::shuffle(&mut train, &mut mix::rng(params.seed, Stream::Shuffle));

    let cancelled = ctx.cancelled;
    write_jsonl(ctx.out_dir, "train.jsonl", train.iter().map(|(_, e)| e), |n, e| {
        if n % CHECK_EVERY == 0 && cancelled() {
            bail!("cancelled");
        }
        let segments =
            renderer.training(params.mode, &e.prompt, &e.response).map_err(|m| anyhow!("example `{}`: {m}", e.id))?;
        Ok(TrainLine { id: &e.id, segments, source: &e.input })
    })?;
    write_jsonl(ctx.out_dir, "prompts.jsonl", held_out.iter().map(|(_, e)| e), |_, e| {
        let prompt = renderer.inference(&e.prompt).map_err(|m| anyhow!("example `{}`: {m}", e.id))?;
        let reference = params.sources[e.source].mapping.has_response().then_some(e.response.as_str());
        Ok(PromptLine { id: &e.id, instruction: &e.prompt, prompt, reference })
    })?;

    let summary = Stats {
        dedup: params.dedup,
        duplicates_dropped: dropped.len(),
        eos: renderer.eos().to_owned(),
        held_out: held_out.len(),
        mode: params.mode.name(),
        seed: params.seed,
        sources: stats,
        template: renderer.name().to_owned(),
        train_examples: train.len(),
    };
    let mut json = serde_json::to_vec_pretty(&summary)?;
    json.push(b'\n');
    let stats_path = ctx.out_dir.join("stats.json");
    std::fs::write(&stats_path, json).with_context(|| format!("cannot write `{}`", stats_path.display()))?;

    writeln!(
        ctx.log,
        "{} mode, template `{}`: {} duplicate(s) dropped, {} held out, {} training example(s)",
        params.mode.name(),
        renderer.name(),
        summary.duplicates_dropped,
        summary.held_out,
        summary.train_examples
    )?;
    if params.mode == Mode::Rt {
        writeln!(ctx.log, "rt: training text holds the assistant turn only")?;
    }
    (ctx.progress)(steps, steps);
    Ok(())
}

/// Reads one source and applies its `filter`, `first` and `take`.
fn read_source(
    ctx: &StageContext<'_>,
    index: usize,
    source: &Source,
    seed: u64,
) -> Result<(Vec<Example>, SourceStats)> {
    let path = ctx
        .inputs
        .get(&source.input)
        .ok_or_else(|| anyhow!("param `sources.{index}.input`: `{}` is not an input of this stage", source.input))?;
    let format = match source.format {
        Some(f) => f,
        None => Format::infer(path)?,
    };
    let file = path.display().to_string();
    let cancelled = ctx.cancelled;
    let mut examples = Vec::new();
    let mut filtered_out = 0;
    let read = read::for_each_row(path, format, &mut |row| {
        if row.index % CHECK_EVERY == 0 && cancelled() {
            bail!("cancelled");
        }
        let (prompt, response) = source.mapping.extract(&row, &file).map_err(anyhow::Error::msg)?;
        if source.filter.as_ref().is_some_and(|re| !re.is_match(&response)) {
            filtered_out += 1;
            return Ok(ControlFlow::Continue(()));
        }
        examples.push(Example {
            id: format!("{}:{}", source.input, row.index),
            input: source.input.clone(),
            source: index,
            prompt,
            response,
        });
        Ok(if source.first == Some(examples.len()) { ControlFlow::Break(()) } else { ControlFlow::Continue(()) })
    })?;

    if let Some(n) = source.take {
        if examples.len() < n && !source.take_at_most {
            let after = if source.filter.is_some() { " after `filter`" } else { "" };
            bail!(
                "`{file}`: `take = {n}` but only {} row(s) are available{after}; set `take_at_most = true` to accept fewer",
                examples.len()
            );
        }
        let chosen = mix::sample(examples.len(), n, &mut mix::rng(seed, Stream::Take(index)));
        let mut chosen = chosen.into_iter().peekable();
        let mut position = 0;
        examples.retain(|_| {
            let keep = chosen.next_if_eq(&position).is_some();
            position += 1;
            keep
        });
    }
    let stats = SourceStats {
        duplicates_dropped: 0,
        filtered_out,
        format: format.name(),
        input: source.input.clone(),
        kept: examples.len(),
        read,
    };
    Ok((examples, stats))
}

/// Writes one JSON object per line; `line` turns the n-th item into its line.
fn write_jsonl<'e, T: Serialize>(
    dir: &Path,
    name: &str,
    items: impl Iterator<Item = &'e Example>,
    mut line: impl FnMut(usize, &'e Example) -> Result<T>,
) -> Result<()> {
    let path = dir.join(name);
    let shown = path.display();
    let file = File::create(&path).with_context(|| format!("cannot create `{shown}`"))?;
    let mut out = BufWriter::new(file);
    for (n, item) in items.enumerate() {
        serde_json::to_writer(&mut out, &line(n, item)?).with_context(|| format!("cannot write `{shown}`"))?;
        out.write_all(b"\n").with_context(|| format!("cannot write `{shown}`"))?;
    }
    out.flush().with_context(|| format!("cannot write `{shown}`"))?;
    Ok(())
}
