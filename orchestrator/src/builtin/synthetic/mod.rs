//! The `synthetic` built-in: the data of a miniature response-tuning experiment, generated from a seed, so that
//! the embedded default study needs nothing from outside.
//!
//! ```toml
//! [[stage]]
//! id = "data"
//! uses = "synthetic"
//! params = { seed = 0 }
//! ```
//!
//! # What it generates
//!
//! - Tasks from a dozen families with one checkable answer each ([`families`]): `reverse` a word, `uppercase` a
//!   phrase, `count_letters` of a word, `add` and `subtract` small numbers, `sort` words alphabetically,
//!   `first_word` and `last_word` of a phrase, `repeat` a word N times, `list_length`, the `larger` of two
//!   numbers, `spell` a word with dashes; words come from a built-in vocabulary ([`vocab`]). The response is the
//!   bare answer, so that exact match can judge a model's output.
//! - Unsafe-looking requests with refusal responses ([`refusals`]).
//! - A pre-training corpus in which the same skills appear as plain prose without chat markers ("The word
//!   planet reversed is tenalp. Adding 17 and 25 gives 42."), and, on about one line in 25, a request refused in
//!   reported speech, so that a tiny model pre-trained on it knows the skills the way a base LLM knows facts.
//!
//! Held-out tasks are distinct *tasks* (not only distinct wordings) from the training ones, and never appear in
//! the corpus; held-out unsafe prompts ask for acts that no training refusal and no corpus line mentions.
//!
//! # Params (all optional)
//!
//! - `seed` (0): every random choice draws from ChaCha20 under it, one stream per part of the output ([`rng`]).
//! - `train` (84, so 1,008 in all): training tasks per family.
//! - `eval` (5): held-out tasks per family.
//! - `unsafe` (100): unsafe prompts with refusals for training (at most 360).
//! - `unsafe_eval` (20): held-out unsafe prompts (at most 120).
//! - `corpus` (5,000): lines of prose.
//! - `families` (all): the families to generate, by name.
//!
//! The corpus depends only on `seed`, `eval`, `corpus` and `families`, so the pre-trained base model of a study
//! stays cached when only the fine-tuning data (`train`, `unsafe`) changes.
//!
//! # Outputs
//!
//! One JSON object per line, keys sorted; identical params give byte-identical files (the cache's early cut-off
//! depends on it).
//!
//! - `instructions.jsonl`: `{"family", "id", "prompt", "response"}`, the training tasks in a seeded order; the
//!   `dataset` built-in reads it with preset `generic`.
//! - `refusals.jsonl`: `{"id", "prompt", "response"}`, unsafe prompts with refusals for training.
//! - `eval.jsonl`: `{"family", "id", "prompt", "response"}`, held-out tasks with their reference answers.
//! - `unsafe_eval.jsonl`: `{"id", "prompt", "response"}`, held-out unsafe prompts with a reference refusal.
//! - `corpus.jsonl`: `{"id", "segments": [{"loss": true, "text": "<one line of prose>\n"}]}`, the format
//!   `candle-lm`'s `train` op reads (every token a target in `lm` mode).
//! - `stats.json`: the params and the counts per family.

mod families;
mod params;
mod refusals;
mod rng;
mod vocab;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;

use self::families::{Family, Instance};
use self::params::Params;
use self::refusals::Request;
use self::rng::{Stream, below, between, pick, rng};
use super::{Builtin, ParamError, StageContext};

/// The `synthetic` built-in stage (see the module documentation for params, outputs and guarantees).
pub struct Synthetic;

impl Builtin for Synthetic {
    fn name(&self) -> &'static str {
        "synthetic"
    }

    fn validate(&self, params: &serde_json::Value, input_names: &[&str]) -> Result<(), ParamError> {
        if let Some(name) = input_names.first() {
            return Err(ParamError::new(
                &[],
                format!("`synthetic` generates its data from the seed and takes no inputs, but declares `{name}`"),
            ));
        }
        Params::parse(params).map(drop)
    }

    fn run(&self, ctx: &mut StageContext<'_>) -> Result<()> {
        let params = Params::parse(ctx.params).map_err(|e| {
            if e.path.is_empty() {
                anyhow!("params: {}", e.message)
            } else {
                anyhow!("param `{}`: {}", e.path.join("."), e.message)
            }
        })?;
        writeln!(
            ctx.log,
            "seed {}: {} famil{} × ({} train + {} held out), {} refusal(s) + {} held out, {} corpus line(s)",
            params.seed,
            params.families.len(),
            if params.families.len() == 1 { "y" } else { "ies" },
            params.train,
            params.eval,
            params.unsafe_train,
            params.unsafe_eval,
            params.corpus
        )?;
        let data = {
            let mut ticker = Ticker::new(&params, ctx.progress, ctx.cancelled);
            generate(&params, &mut ticker)?
        };
        write_outputs(ctx.out_dir, &params, &data)?;
        writeln!(
            ctx.log,
            "wrote {} instruction(s), {} held-out task(s), {} refusal(s), {} held-out unsafe prompt(s), {} corpus \
             line(s) ({} with a refusal)",
            data.train.len(),
            data.eval.len(),
            data.refusals.len(),
            data.unsafe_eval.len(),
            data.corpus.len(),
            data.corpus.iter().filter(|l| l.refusal).count()
        )?;
        Ok(())
    }
}

/// A task as it goes to `instructions.jsonl` or `eval.jsonl`.
#[derive(Debug, Clone, Serialize)]
struct TaskLine {
    family: &'static str,
    id: String,
    prompt: String,
    response: String,
    /// The task's key, for the tests' disjointness checks; not written.
    #[serde(skip)]
    #[cfg_attr(not(test), expect(dead_code))]
    key: String,
}

/// An unsafe prompt with its refusal.
#[derive(Debug, Clone, Serialize)]
struct RefusalLine {
    id: String,
    prompt: String,
    response: String,
}

/// One corpus line and what it is made of.
#[derive(Debug, Clone)]
struct CorpusLine {
    text: String,
    /// The task keys its sentences state.
    keys: Vec<String>,
    /// Whether it is a refused request rather than task prose.
    refusal: bool,
}

#[derive(Serialize)]
struct CorpusRecord<'a> {
    id: String,
    segments: [Segment<'a>; 1],
}

#[derive(Serialize)]
struct Segment<'a> {
    loss: bool,
    text: &'a str,
}

/// Everything the stage writes, before writing.
struct Generated {
    train: Vec<TaskLine>,
    eval: Vec<TaskLine>,
    refusals: Vec<RefusalLine>,
    unsafe_eval: Vec<RefusalLine>,
    corpus: Vec<CorpusLine>,
}

/// Progress and cancellation for the generation loops.
struct Ticker<'a> {
    done: u64,
    total: u64,
    spins: u64,
    progress: &'a dyn Fn(u64, u64),
    cancelled: &'a dyn Fn() -> bool,
}

/// How often (in loop turns) the cancel flag is read and progress reported: often enough to stop within a
/// blink, rarely enough to cost nothing.
const CHECK_EVERY: u64 = 1024;

impl<'a> Ticker<'a> {
    fn new(params: &Params, progress: &'a dyn Fn(u64, u64), cancelled: &'a dyn Fn() -> bool) -> Self {
        let tasks = (params.train + params.eval) * params.families.len();
        let total = (tasks + params.unsafe_train + params.unsafe_eval + params.corpus) as u64;
        progress(0, total);
        Ticker { done: 0, total, spins: 0, progress, cancelled }
    }

    /// One turn of a loop, kept or not: redrawing loops also check the flag.
    fn spin(&mut self) -> Result<()> {
        self.spins += 1;
        if self.spins.is_multiple_of(CHECK_EVERY) {
            if (self.cancelled)() {
                bail!("cancelled");
            }
            (self.progress)(self.done, self.total);
        }
        Ok(())
    }

    /// One item kept.
    fn kept(&mut self) {
        self.done += 1;
    }

    fn finish(&self) {
        (self.progress)(self.total, self.total);
    }
}

/// Corpus lines that are refused requests rather than task prose: one in this many.
const REFUSAL_LINE_EVERY: usize = 25;

fn generate(params: &Params, ticker: &mut Ticker<'_>) -> Result<Generated> {
    let mut train = Vec::new();
    let mut eval = Vec::new();
    // Per family, the held-out keys, which neither training tasks nor the corpus may use.
    let mut held: BTreeMap<Family, HashSet<String>> = BTreeMap::new();
    for &family in &params.families {
        let name = family.name();
        // Held-out tasks come first, from their own stream, so that changing `train` leaves them unchanged.
        let mut r = rng(params.seed, Stream::Eval(family.index()));
        let mut held_keys = HashSet::new();
        while held_keys.len() < params.eval {
            ticker.spin()?;
            let task = family.draw(&mut r);
            if held_keys.insert(task.key()) {
                eval.push(task_line(&task, format!("{name}:eval:{}", held_keys.len() - 1), &mut r));
                ticker.kept();
            }
        }
        let mut r = rng(params.seed, Stream::Train(family.index()));
        let mut seen = HashSet::new();
        while seen.len() < params.train {
            ticker.spin()?;
            let task = family.draw(&mut r);
            let key = task.key();
            if !held_keys.contains(&key) && seen.insert(key) {
                train.push(task_line(&task, format!("{name}:{}", seen.len() - 1), &mut r));
                ticker.kept();
            }
        }
        held.insert(family, held_keys);
    }
    // Family by family, the training tasks would reach a model in blocks; a seeded order mixes them.
    rng::shuffle(&mut train, &mut rng(params.seed, Stream::Shuffle));

    let (train_acts, held_acts) = refusals::split(params.seed);
    let unsafe_eval = refusal_lines(params.unsafe_eval, &held_acts, "unsafe:eval", Stream::UnsafeEval, params, ticker)?;
    let refusals = refusal_lines(params.unsafe_train, &train_acts, "unsafe", Stream::UnsafeTrain, params, ticker)?;

    let mut corpus = Vec::with_capacity(params.corpus);
    let mut r = rng(params.seed, Stream::Corpus);
    for _ in 0..params.corpus {
        ticker.spin()?;
        if below(&mut r, REFUSAL_LINE_EVERY) == 0 {
            let request = Request::draw(&mut r, &train_acts);
            let text = format!("{}\n", request.prose(&mut r));
            corpus.push(CorpusLine { text, keys: Vec::new(), refusal: true });
        } else {
            let n = between(&mut r, 1, 3);
            let mut sentences = Vec::with_capacity(n as usize);
            let mut keys = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let family = *pick(&mut r, &params.families);
                let task = loop {
                    ticker.spin()?;
                    let task = family.draw(&mut r);
                    if !held.get(&family).is_some_and(|h| h.contains(&task.key())) {
                        break task;
                    }
                };
                sentences.push(task.sentence(&mut r));
                keys.push(task.key());
            }
            corpus.push(CorpusLine { text: format!("{}\n", sentences.join(" ")), keys, refusal: false });
        }
        ticker.kept();
    }
    ticker.finish();
    Ok(Generated { train, eval, refusals, unsafe_eval, corpus })
}

fn task_line(task: &Instance, id: String, r: &mut rand_chacha::ChaCha20Rng) -> TaskLine {
    TaskLine { family: task.family.name(), id, prompt: task.prompt(r), response: task.answer(), key: task.key() }
}

/// `count` distinct requests about `acts`, each with a refusal.
fn refusal_lines(
    count: usize,
    acts: &[usize],
    prefix: &str,
    stream: Stream,
    params: &Params,
    ticker: &mut Ticker<'_>,
) -> Result<Vec<RefusalLine>> {
    let mut r = rng(params.seed, stream);
    let mut seen = HashSet::new();
    let mut lines = Vec::with_capacity(count);
    while lines.len() < count {
        ticker.spin()?;
        let request = Request::draw(&mut r, acts);
        if seen.insert(request) {
            let response = request.refusal(&mut r);
            lines.push(RefusalLine { id: format!("{prefix}:{}", lines.len()), prompt: request.text(), response });
            ticker.kept();
        }
    }
    Ok(lines)
}

/// `stats.json`. Fields are in alphabetical order: serde writes them in declaration order.
#[derive(Serialize)]
struct Stats {
    corpus_lines: usize,
    corpus_refusal_lines: usize,
    families: BTreeMap<&'static str, FamilyStats>,
    held_out_unsafe: usize,
    refusals: usize,
    seed: u64,
    train_examples: usize,
    vocabulary: usize,
}

#[derive(Serialize, Default)]
struct FamilyStats {
    corpus_sentences: usize,
    eval: usize,
    train: usize,
}

fn write_outputs(dir: &Path, params: &Params, data: &Generated) -> Result<()> {
    write_jsonl(dir, "instructions.jsonl", data.train.iter())?;
    write_jsonl(dir, "eval.jsonl", data.eval.iter())?;
    write_jsonl(dir, "refusals.jsonl", data.refusals.iter())?;
    write_jsonl(dir, "unsafe_eval.jsonl", data.unsafe_eval.iter())?;
    write_jsonl(
        dir,
        "corpus.jsonl",
        data.corpus.iter().enumerate().map(|(i, line)| CorpusRecord {
            id: format!("corpus:{i}"),
            segments: [Segment { loss: true, text: &line.text }],
        }),
    )?;

    let mut families: BTreeMap<&'static str, FamilyStats> =
        params.families.iter().map(|f| (f.name(), FamilyStats::default())).collect();
    for t in &data.train {
        families.entry(t.family).or_default().train += 1;
    }
    for t in &data.eval {
        families.entry(t.family).or_default().eval += 1;
    }
    for key in data.corpus.iter().flat_map(|l| &l.keys) {
        // A key starts with its family's name, which is never a prefix of another's followed by `:`.
        if let Some(name) = key.split(':').next().and_then(Family::from_name).map(Family::name) {
            families.entry(name).or_default().corpus_sentences += 1;
        }
    }
    let stats = Stats {
        corpus_lines: data.corpus.len(),
        corpus_refusal_lines: data.corpus.iter().filter(|l| l.refusal).count(),
        families,
        held_out_unsafe: data.unsafe_eval.len(),
        refusals: data.refusals.len(),
        seed: params.seed,
        train_examples: data.train.len(),
        vocabulary: vocab::WORDS.len(),
    };
    let mut json = serde_json::to_vec_pretty(&stats)?;
    json.push(b'\n');
    let path = dir.join("stats.json");
    std::fs::write(&path, json).with_context(|| format!("cannot write `{}`", path.display()))?;
    Ok(())
}

/// Writes one JSON object per line.
fn write_jsonl<T: Serialize>(dir: &Path, name: &str, items: impl Iterator<Item = T>) -> Result<()> {
    let path = dir.join(name);
    let shown = path.display();
    let file = File::create(&path).with_context(|| format!("cannot create `{shown}`"))?;
    let mut out = BufWriter::new(file);
    for item in items {
        serde_json::to_writer(&mut out, &item).with_context(|| format!("cannot write `{shown}`"))?;
        out.write_all(b"\n").with_context(|| format!("cannot write `{shown}`"))?;
    }
    out.flush().with_context(|| format!("cannot write `{shown}`"))?;
    Ok(())
}
