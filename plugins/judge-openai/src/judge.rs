//! One judging op from start to end: read the items, render each item's requests, answer them from the item
//! cache or the endpoint, read the verdicts, and write `items.jsonl` (input order, sorted keys, every raw
//! answer beside its verdict) and `summary.json` (reference/contracts B).
//!
//! Outputs depend only on the params, the inputs and the judge's answers: no clock, no map order, no
//! randomness but the seeded order swaps and bootstrap. A re-run whose answers come from the item cache is
//! byte-identical.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::Arc;

use api::{Error, OpContext};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::client::{Answer, Client};
use crate::inputs::{self, Item};
use crate::item_cache::{ItemCache, request_key};
use crate::params::{Params, Protocol};
use crate::parse::{self, Label, Position};
use crate::pool::{self, Request};
use crate::prompts::Renderer;
use crate::retry::Policy;

/// The item cache's file name inside the stage's scratch directory.
pub(crate) const CACHE_FILE: &str = "judge-openai-answers.jsonl";

/// Whether the alpaca-eval protocol shows the two outputs in swapped order for `instruction`: a fair coin
/// derived from the seed and the instruction text alone (AlpacaEval seeds its switch with the instruction), so
/// the same instruction is shown the same way in every run and for every pair of models, and changing `seed`
/// draws a new set of orders. The bit is the low bit of the first byte of
/// `sha256("judge-openai/alpaca-eval/swap\0" ‖ seed as 8 little-endian bytes ‖ instruction)`.
pub(crate) fn swapped(seed: u64, instruction: &str) -> bool {
    let mut h = Sha256::new();
    h.update(b"judge-openai/alpaca-eval/swap\0");
    h.update(seed.to_le_bytes());
    h.update(instruction.as_bytes());
    h.finalize()[0] & 1 == 1
}

/// What one item asks: the request keys, in the order the protocol reads them.
struct Plan {
    keys: Vec<String>,
    /// alpaca-eval: the outputs are shown model-first.
    swapped: bool,
}

/// Runs the op.
pub(crate) fn run(p: &Params, ctx: &OpContext<'_>) -> Result<Value, Error> {
    let items = match p.protocol {
        Protocol::AlpacaEval | Protocol::Pairwise => inputs::pairs(ctx, &p.field)?,
        Protocol::Single | Protocol::Refusal => inputs::single(ctx, &p.field)?,
    };
    let renderer = p.templates.renderer()?;
    let mut requests: Vec<Request> = Vec::new();
    let mut seen = BTreeSet::new();
    let mut plans = Vec::with_capacity(items.len());
    for item in &items {
        let (plan, bodies) = plan(p, &renderer, item)?;
        for (key, body) in plan.keys.iter().zip(bodies) {
            // Identical requests (a repeated prompt with the same responses) are asked once.
            if seen.insert(key.clone()) {
                requests.push(Request { key: key.clone(), body });
            }
        }
        plans.push(plan);
    }

    let client = Arc::new(Client::new(
        &p.url,
        api_key(p)?,
        p.timeout,
        Policy { max_attempts: p.max_attempts, base: p.backoff, cap: p.backoff_max },
    ));
    let (cache, loaded) = ItemCache::open(&ctx.scratch_dir.join(CACHE_FILE)).map_err(Error::Failed)?;
    let cache = Arc::new(cache);
    if loaded.torn_bytes > 0 || loaded.bad_lines > 0 {
        ctx.log(&format!(
            "item cache: dropped a torn last line ({} bytes) and {} unreadable line(s); those items are asked again",
            loaded.torn_bytes, loaded.bad_lines
        ));
    }
    let mut answers = loaded.answers;
    let todo: Vec<Request> = requests.iter().filter(|r| !answers.contains_key(&r.key)).cloned().collect();
    let total = requests.len() as u64;
    let cached = total - todo.len() as u64;
    ctx.log(&format!(
        "{} items, {total} requests to `{}` (model `{}`): {cached} answered by the item cache, {} to ask",
        items.len(),
        client.url(),
        p.model,
        todo.len()
    ));
    if p.protocol == Protocol::AlpacaEval && !todo.is_empty() {
        probe(p, ctx, &client)?;
    }
    ctx.progress(cached, total);
    answers.extend(pool::answer_all(ctx, &client, Some(&cache), todo, p.concurrency, Some((cached, total)))?);
    if ctx.cancelled() {
        return Err(Error::Cancelled);
    }
    let answer = |key: &String| -> Result<&Answer, Error> {
        answers.get(key).ok_or_else(|| Error::Failed("internal: a request was left unanswered".into()))
    };
    match p.protocol {
        Protocol::AlpacaEval => alpaca_eval(p, ctx, &items, &plans, &answer),
        Protocol::Pairwise => pairwise(p, ctx, &items, &plans, &answer),
        Protocol::Single => single(p, ctx, &items, &plans, &answer),
        Protocol::Refusal => refusal(p, ctx, &items, &plans, &answer),
    }
}

/// The API key from the environment variable the study names, if it names one.
fn api_key(p: &Params) -> Result<Option<String>, Error> {
    let Some(name) = &p.api_key_env else { return Ok(None) };
    let problem = match std::env::var(name) {
        Ok(v) if !v.is_empty() => return Ok(Some(v)),
        Ok(_) => "is empty",
        Err(std::env::VarError::NotPresent) => "is not set where rto runs",
        Err(std::env::VarError::NotUnicode(_)) => "is not valid UTF-8",
    };
    Err(Error::param(&["api_key_env"], format!("the environment variable `{name}` named by `api_key_env` {problem}")))
}

/// The request body for `messages`: the same for every item but the messages, so the body is the cache key.
fn body(p: &Params, messages: Value) -> Value {
    let mut b = json!({
        "max_tokens": p.max_tokens,
        "messages": messages,
        "model": p.model,
        "n": 1,
        "seed": p.seed,
        "stream": false,
        "temperature": p.temperature,
    });
    if p.protocol == Protocol::AlpacaEval {
        b["logprobs"] = Value::Bool(true);
        b["top_logprobs"] = Value::from(p.top_logprobs);
    }
    b
}

/// An item's plan and the bodies of its requests.
fn plan(p: &Params, renderer: &Renderer, item: &Item) -> Result<(Plan, Vec<Value>), Error> {
    let instruction = || ("instruction", item.instruction.clone());
    let b = item.b.as_deref().unwrap_or_default();
    let mut orders: Vec<Vec<(&str, String)>> = Vec::new();
    let mut is_swapped = false;
    match p.protocol {
        Protocol::AlpacaEval => {
            // AlpacaEval shows the baseline first (`output_1`, identifier m) and the evaluated model second; the
            // swap shows them the other way round. Identical outputs are a draw without asking (as AlpacaEval).
            is_swapped = swapped(p.seed, &item.instruction);
            if item.a != b {
                let (first, second) = if is_swapped { (item.a.as_str(), b) } else { (b, item.a.as_str()) };
                orders.push(vec![instruction(), ("output_1", first.to_string()), ("output_2", second.to_string())]);
            }
        }
        Protocol::Pairwise => {
            orders.push(vec![instruction(), ("output_1", item.a.clone()), ("output_2", b.to_string())]);
            orders.push(vec![instruction(), ("output_1", b.to_string()), ("output_2", item.a.clone())]);
        }
        Protocol::Single | Protocol::Refusal => orders.push(vec![instruction(), ("response", item.a.clone())]),
    }
    let mut keys = Vec::with_capacity(orders.len());
    let mut bodies = Vec::with_capacity(orders.len());
    for vars in orders {
        let messages = serde_json::to_value(renderer.render(&vars)?)?;
        let body = body(p, messages);
        keys.push(request_key(&body));
        bodies.push(body);
    }
    Ok((Plan { keys, swapped: is_swapped }, bodies))
}

/// alpaca-eval's capability check: one token with logprobs; the endpoint must return top logprobs, or the
/// protocol cannot be followed and the stage fails rather than fall back to reading the answer's text.
fn probe(p: &Params, ctx: &OpContext<'_>, client: &Arc<Client>) -> Result<(), Error> {
    let messages = json!([{"role": "user", "content": "Answer with one letter, m or M."}]);
    let mut probe = body(p, messages);
    probe["max_tokens"] = Value::from(1);
    let request = Request { key: "probe".into(), body: probe };
    let answers = pool::answer_all(ctx, client, None, vec![request], 1, None)?;
    let answer = answers.get("probe").ok_or_else(|| Error::Failed("internal: the probe got no answer".into()))?;
    let shown = probe_result(answer, client.url(), p)?;
    ctx.log(&format!(
        "probe: the endpoint returns logprobs ({shown} top logprobs for the first token; {} asked)",
        p.top_logprobs
    ));
    Ok(())
}

/// The probe's verdict on the endpoint: how many top logprobs it returned, or the error that stops the stage.
fn probe_result(answer: &Answer, url: &str, p: &Params) -> Result<usize, Error> {
    match answer.first_top_logprobs().len() {
        0 => Err(Error::Failed(format!(
            "`{url}` (model `{}`) returned no `top_logprobs` for a probe request with `logprobs: true, \
             top_logprobs: {}`; alpaca-eval reads the judge's preference from them and does not fall back to the \
             answer text. Use a server that returns chat logprobs (vLLM, llama.cpp's server since late 2024, TGI, \
             Ollama 0.12.11 or later, OpenAI), or a verdict-text protocol (`pairwise`)",
            p.model, p.top_logprobs
        ))),
        n => Ok(n),
    }
}

/// Cancellation and progress between items of the assembly.
fn tick(ctx: &OpContext<'_>, i: usize) -> Result<(), Error> {
    if i.is_multiple_of(256) && ctx.cancelled() {
        return Err(Error::Cancelled);
    }
    Ok(())
}

/// Writes `items.jsonl` and `summary.json` and returns the summary.
fn write_outputs<I: Serialize>(
    ctx: &OpContext<'_>,
    items: &[I],
    summary: BTreeMap<&str, Value>,
) -> Result<Value, Error> {
    let path = ctx.out_dir.join("items.jsonl");
    let file =
        std::fs::File::create(&path).map_err(|e| Error::Failed(format!("cannot create `{}`: {e}", path.display())))?;
    let mut out = std::io::BufWriter::new(file);
    for item in items {
        serde_json::to_writer(&mut out, item)?;
        out.write_all(b"\n")?;
    }
    out.flush().map_err(|e| Error::Failed(format!("cannot write `{}`: {e}", path.display())))?;
    let summary = serde_json::to_value(summary)?;
    let mut text = serde_json::to_string_pretty(&summary)?;
    text.push('\n');
    let path = ctx.out_dir.join("summary.json");
    std::fs::write(&path, text).map_err(|e| Error::Failed(format!("cannot write `{}`: {e}", path.display())))?;
    Ok(summary)
}

/// The fields every summary has.
fn common(p: &Params, n: usize) -> BTreeMap<&'static str, Value> {
    BTreeMap::from([
        ("judge_model", Value::from(p.model.clone())),
        ("n", Value::from(n)),
        ("protocol", Value::from(p.protocol.name())),
        ("temperature", Value::from(p.temperature)),
    ])
}

fn pair(ci: Option<(f64, f64)>) -> Value {
    ci.map_or(Value::Null, |(lo, hi)| json!([lo, hi]))
}

/// A finite number, or null (serde_json would write NaN and ±∞ as null anyway; this says so).
fn num(x: Option<f64>) -> Value {
    x.filter(|v| v.is_finite()).map_or(Value::Null, Value::from)
}

/// The share of undefined replicates (e.g. LC refits on resamples separated by length) beyond which no interval
/// is reported: the replicates left out are the extreme ones, so the rest would give a too narrow interval.
const MAX_UNDEFINED_SHARE: f64 = 0.05;

/// The 95% percentile interval of `statistic` over a bootstrap by item (each item a cluster: the prompt is the
/// unit, and a pairwise item's two orders are one item), and how many replicates were undefined; no interval
/// without replicates, or when more than [`MAX_UNDEFINED_SHARE`] of them are undefined.
fn bootstrap(
    ctx: &OpContext<'_>,
    p: &Params,
    ids: &[String],
    statistic: impl FnMut(&[usize]) -> f64,
) -> Result<Option<(f64, f64)>, Error> {
    Ok(bootstrap_counted(ctx, p, ids, statistic)?.0)
}

/// [`bootstrap`] with the number of undefined (non-finite) replicates.
fn bootstrap_counted(
    ctx: &OpContext<'_>,
    p: &Params,
    ids: &[String],
    statistic: impl FnMut(&[usize]) -> f64,
) -> Result<(Option<(f64, f64)>, usize), Error> {
    if p.bootstrap == 0 || ids.is_empty() {
        return Ok((None, 0));
    }
    let clusters = stats::clusters_by_key(ids);
    let mut stopped = false;
    let values = stats::cluster_bootstrap_replicates(&clusters, p.bootstrap, p.seed, statistic, || {
        stopped = ctx.cancelled();
        stopped
    });
    if stopped {
        return Err(Error::Cancelled);
    }
    let values = values.unwrap_or_default();
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    let undefined = values.len() - finite.len();
    if undefined as f64 > MAX_UNDEFINED_SHARE * values.len() as f64 {
        return Ok((None, undefined));
    }
    Ok((stats::percentile_interval(&finite, 0.95), undefined))
}

/// The win-rate summary of parsed preferences of `a` (alpaca-eval and pairwise).
fn win_summary(
    p: &Params,
    ctx: &OpContext<'_>,
    n: usize,
    parsed: &[(String, f64, f64, f64)],
) -> Result<BTreeMap<&'static str, Value>, Error> {
    let ids: Vec<String> = parsed.iter().map(|x| x.0.clone()).collect();
    let prefs: Vec<f64> = parsed.iter().map(|x| x.1).collect();
    let len_a: Vec<f64> = parsed.iter().map(|x| x.2).collect();
    let len_b: Vec<f64> = parsed.iter().map(|x| x.3).collect();
    let wr = stats::win_rate(&prefs);
    let lc = stats::lc_win_rate(&prefs, &len_a, &len_b);
    let mean = |idx: &[usize]| idx.iter().map(|&i| prefs[i]).sum::<f64>() / idx.len() as f64;
    let ci = bootstrap(ctx, p, &ids, mean)?;
    let (lc_ci, lc_undefined) = bootstrap_counted(ctx, p, &ids, |idx: &[usize]| {
        let pick = |v: &[f64]| idx.iter().map(|&i| v[i]).collect::<Vec<f64>>();
        stats::lc_win_rate(&pick(&prefs), &pick(&len_a), &pick(&len_b)).map_or(f64::NAN, |l| l.value)
    })?;
    let mut s = common(p, n);
    s.extend([
        ("bootstrap", Value::from(p.bootstrap)),
        ("discrete_win_rate_a", num(wr.as_ref().map(|w| w.discrete_win_rate))),
        ("lc_win_rate_a", num(lc.as_ref().map(|l| l.value))),
        ("lc_win_rate_a_ci_95", pair(lc_ci)),
        // Resamples where the length-controlled fit has no optimum (separated by length); above 5% of the
        // replicates the interval is null rather than too narrow.
        ("lc_win_rate_a_undefined_replicates", Value::from(lc_undefined)),
        ("n_parsed", Value::from(parsed.len())),
        ("n_unparseable", Value::from(n - parsed.len())),
        ("seed", Value::from(p.seed)),
        ("ties", Value::from(wr.as_ref().map_or(0, |w| w.n_draws))),
        ("win_rate_a", num(wr.as_ref().map(|w| w.win_rate))),
        ("win_rate_a_ci_95", pair(ci)),
        ("win_rate_a_se", num(wr.as_ref().and_then(|w| w.standard_error))),
        ("wins_a", Value::from(wr.as_ref().map_or(0, |w| w.n_wins))),
        ("wins_b", Value::from(wr.as_ref().map_or(0, |w| w.n_losses))),
    ]);
    Ok(s)
}

fn chars(s: &str) -> f64 {
    s.chars().count() as f64
}

type AnswerOf<'a> = dyn Fn(&String) -> Result<&'a Answer, Error> + 'a;

#[derive(Serialize)]
struct AlpacaItem<'a> {
    /// The judge's answer; null for identical outputs (a draw without asking).
    answer: Option<&'a Answer>,
    id: &'a Value,
    identical: bool,
    /// P(`a` beats `b`) after un-swapping.
    pref_a: Option<f64>,
    swapped: bool,
    verdict: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    why: Option<String>,
}

fn alpaca_eval<'a>(
    p: &Params,
    ctx: &OpContext<'_>,
    items: &'a [Item],
    plans: &[Plan],
    answer: &AnswerOf<'a>,
) -> Result<Value, Error> {
    let mut out = Vec::with_capacity(items.len());
    let mut parsed = Vec::new();
    for (i, (item, plan)) in items.iter().zip(plans).enumerate() {
        tick(ctx, i)?;
        let b = item.b.as_deref().unwrap_or_default();
        let (raw, pref, why) = match plan.keys.first() {
            None => (None, Ok(0.5), None),
            Some(key) => {
                let raw = answer(key)?;
                let second = parse::second_preferred(raw.first_top_logprobs(), p.spaced_tokens);
                // Unswapped, the model is shown second: its preference is P(second).
                let pref = second.map(|s| if plan.swapped { 1.0 - s } else { s });
                (Some(raw), pref.clone(), pref.err())
            }
        };
        let pref = pref.ok();
        if let Some(x) = pref {
            parsed.push((item.id.to_string(), x, chars(&item.a), chars(b)));
        }
        let verdict = match pref {
            None => "unparseable",
            Some(x) if x > 0.5 => "a",
            Some(x) if x < 0.5 => "b",
            Some(_) => "draw",
        };
        out.push(AlpacaItem {
            answer: raw,
            id: &item.id,
            identical: plan.keys.is_empty(),
            pref_a: pref,
            swapped: plan.swapped,
            verdict,
            why,
        });
    }
    let mut summary = win_summary(p, ctx, items.len(), &parsed)?;
    summary.insert("n_identical", Value::from(plans.iter().filter(|pl| pl.keys.is_empty()).count()));
    summary.insert("top_logprobs", Value::from(p.top_logprobs));
    write_outputs(ctx, &out, summary)
}

#[derive(Serialize)]
struct Game<'a> {
    answer: &'a Answer,
    /// Which model was shown first: `a-b` or `b-a`.
    order: &'static str,
    /// The judge's verdict by position (`A`, `B`, `C`), or `unparseable`.
    verdict: &'static str,
    /// The verdict by model: `a`, `b`, `tie`; null when unparseable.
    winner: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    why: Option<String>,
}

/// An item's verdict from its two games' winners (`a`, `b`, `tie`; `None` when unreadable): MT-Bench's
/// conservative rule, a win only if both orders agree, anything else a tie; an unreadable game makes the item
/// unparseable (FastChat drops it).
fn combine(first: Option<&'static str>, second: Option<&'static str>) -> &'static str {
    match (first, second) {
        (Some(w1), Some(w2)) if w1 == w2 => w1,
        (Some(_), Some(_)) => "tie",
        _ => "unparseable",
    }
}

#[derive(Serialize)]
struct PairItem<'a> {
    games: [Game<'a>; 2],
    id: &'a Value,
    pref_a: Option<f64>,
    verdict: &'static str,
}

fn pairwise<'a>(
    p: &Params,
    ctx: &OpContext<'_>,
    items: &'a [Item],
    plans: &[Plan],
    answer: &AnswerOf<'a>,
) -> Result<Value, Error> {
    let game = |key: &String, a_first: bool| -> Result<Game<'a>, Error> {
        let raw = answer(key)?;
        let parsed = parse::pair_verdict(raw.text());
        let (verdict, winner) = match parsed {
            Ok(Position::A) => ("A", Some(if a_first { "a" } else { "b" })),
            Ok(Position::B) => ("B", Some(if a_first { "b" } else { "a" })),
            Ok(Position::Tie) => ("C", Some("tie")),
            Err(_) => ("unparseable", None),
        };
        Ok(Game { answer: raw, order: if a_first { "a-b" } else { "b-a" }, verdict, winner, why: parsed.err() })
    };
    let mut out = Vec::with_capacity(items.len());
    let mut parsed = Vec::new();
    for (i, (item, plan)) in items.iter().zip(plans).enumerate() {
        tick(ctx, i)?;
        let games = [game(&plan.keys[0], true)?, game(&plan.keys[1], false)?];
        let verdict = combine(games[0].winner, games[1].winner);
        let pref = match verdict {
            "a" => Some(1.0),
            "b" => Some(0.0),
            "tie" => Some(0.5),
            _ => None,
        };
        if let Some(x) = pref {
            parsed.push((item.id.to_string(), x, chars(&item.a), chars(item.b.as_deref().unwrap_or_default())));
        }
        out.push(PairItem { games, id: &item.id, pref_a: pref, verdict });
    }
    let summary = win_summary(p, ctx, items.len(), &parsed)?;
    write_outputs(ctx, &out, summary)
}

#[derive(Serialize)]
struct SingleItem<'a> {
    answer: &'a Answer,
    id: &'a Value,
    rating: Option<f64>,
    verdict: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    why: Option<String>,
}

fn single<'a>(
    p: &Params,
    ctx: &OpContext<'_>,
    items: &'a [Item],
    plans: &[Plan],
    answer: &AnswerOf<'a>,
) -> Result<Value, Error> {
    let mut out = Vec::with_capacity(items.len());
    let (mut ids, mut ratings) = (Vec::new(), Vec::new());
    for (i, (item, plan)) in items.iter().zip(plans).enumerate() {
        tick(ctx, i)?;
        let raw = answer(&plan.keys[0])?;
        let rating = parse::rating(raw.text());
        if let Ok(r) = rating {
            ids.push(item.id.to_string());
            ratings.push(r);
        }
        let verdict = if rating.is_ok() { "rated" } else { "unparseable" };
        out.push(SingleItem { answer: raw, id: &item.id, rating: rating.clone().ok(), verdict, why: rating.err() });
    }
    let mean = |idx: &[usize]| idx.iter().map(|&i| ratings[i]).sum::<f64>() / idx.len() as f64;
    let all: Vec<usize> = (0..ratings.len()).collect();
    let ci = bootstrap(ctx, p, &ids, mean)?;
    let mut s = common(p, items.len());
    s.extend([
        ("bootstrap", Value::from(p.bootstrap)),
        ("mean_rating", num((!ratings.is_empty()).then(|| mean(&all)))),
        ("n_parsed", Value::from(ratings.len())),
        ("n_unparseable", Value::from(items.len() - ratings.len())),
        ("rating_ci_95", pair(ci)),
        ("rating_se", num(stats::standard_error(&ratings))),
        ("seed", Value::from(p.seed)),
    ]);
    write_outputs(ctx, &out, s)
}

#[derive(Serialize)]
struct RefusalItem<'a> {
    answer: &'a Answer,
    id: &'a Value,
    verdict: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    why: Option<String>,
}

fn refusal<'a>(
    p: &Params,
    ctx: &OpContext<'_>,
    items: &'a [Item],
    plans: &[Plan],
    answer: &AnswerOf<'a>,
) -> Result<Value, Error> {
    let mut out = Vec::with_capacity(items.len());
    let (mut refusals, mut compliances) = (0usize, 0usize);
    for (i, (item, plan)) in items.iter().zip(plans).enumerate() {
        tick(ctx, i)?;
        let raw = answer(&plan.keys[0])?;
        let label = parse::refusal_label(raw.text());
        let verdict = match label {
            Ok(Label::Refusal) => {
                refusals += 1;
                "refusal"
            }
            Ok(Label::Compliance) => {
                compliances += 1;
                "compliance"
            }
            Err(_) => "unparseable",
        };
        out.push(RefusalItem { answer: raw, id: &item.id, verdict, why: label.err() });
    }
    let parsed = refusals + compliances;
    let mut s = common(p, items.len());
    s.extend([
        ("compliances", Value::from(compliances)),
        ("n_unparseable", Value::from(items.len() - parsed)),
        ("refusal_rate", num((parsed > 0).then(|| refusals as f64 / parsed as f64))),
        ("refusals", Value::from(refusals)),
        ("wilson_95", pair(stats::wilson_95(refusals as u64, parsed as u64))),
    ]);
    write_outputs(ctx, &out, s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_swap_is_a_fixed_fair_coin_per_seed_and_instruction() {
        let instructions: Vec<String> = (0..2000).map(|i| format!("instruction {i}")).collect();
        let coins = |seed| instructions.iter().map(|s| swapped(seed, s)).collect::<Vec<_>>();
        let (c0, c1) = (coins(0), coins(1));
        assert_eq!(c0, coins(0), "deterministic");
        let heads = c0.iter().filter(|&&c| c).count();
        assert!((900..1100).contains(&heads), "about half swapped: {heads}");
        let differ = c0.iter().zip(&c1).filter(|(a, b)| a != b).count();
        assert!((900..1100).contains(&differ), "another seed draws other orders: {differ}");
        // Pinned to Python's hashlib over the documented bytes, so the derivation can be re-done outside rto and
        // a change (which would change every alpaca-eval result) shows.
        let first: String = c0[..16].iter().map(|&c| if c { '1' } else { '0' }).collect();
        assert_eq!(first, PINNED_SWAPS);
    }

    /// `''.join('1' if sha256(b"judge-openai/alpaca-eval/swap\0" + (0).to_bytes(8, "little")
    /// + f"instruction {i}".encode()).digest()[0] & 1 else '0' for i in range(16))`
    const PINNED_SWAPS: &str = "1010111000111010";

    #[test]
    fn the_probe_fails_on_answers_without_top_logprobs() {
        let p = Params::parse("alpaca-eval", &json!({"endpoint": "http://x/v1", "model": "j"})).unwrap();
        // What servers that ignore `logprobs` send (older Ollama), what some send with an empty list, and a
        // legacy text-completion shape on the chat route.
        for body in [
            r#"{"choices":[{"message":{"content":"M"},"finish_reason":"length"}]}"#,
            r#"{"choices":[{"message":{"content":"M"},"logprobs":null}]}"#,
            r#"{"choices":[{"message":{"content":"M"},"logprobs":{"content":[]}}]}"#,
            r#"{"choices":[{"message":{"content":"M"},"logprobs":{"content":[{"token":"M","logprob":-0.1,"top_logprobs":[]}]}}]}"#,
            r#"{"choices":[{"message":{"content":"M"},"logprobs":{"tokens":["M"],"top_logprobs":[{"M":-0.1}]}}]}"#,
        ] {
            let answer = crate::client::parse_answer(body).unwrap();
            let Err(Error::Failed(m)) = probe_result(&answer, "http://x/v1/chat/completions", &p) else {
                panic!("{body} accepted")
            };
            assert!(m.contains("http://x/v1/chat/completions") && m.contains("no `top_logprobs`"), "{m}");
        }
        let ok = r#"{"choices":[{"message":{"content":"M"},"logprobs":{"content":[{"token":"M","logprob":-0.1,
                    "top_logprobs":[{"token":"M","logprob":-0.1},{"token":"x","logprob":-3}]}]}}]}"#;
        assert_eq!(probe_result(&crate::client::parse_answer(ok).unwrap(), "u", &p).ok(), Some(2));
    }

    #[test]
    fn both_orders_must_agree_for_a_win() {
        let (a, b, tie) = (Some("a"), Some("b"), Some("tie"));
        let cases = [
            ((a, a), "a"),
            ((b, b), "b"),
            ((tie, tie), "tie"),
            ((a, b), "tie"),
            ((b, a), "tie"),
            ((a, tie), "tie"),
            ((tie, b), "tie"),
            ((a, None), "unparseable"),
            ((None, tie), "unparseable"),
            ((None, None), "unparseable"),
        ];
        for ((first, second), want) in cases {
            assert_eq!(combine(first, second), want, "{first:?} {second:?}");
        }
    }

    fn item(instruction: &str, a: &str, b: &str) -> Item {
        Item { id: json!(1), instruction: instruction.into(), a: a.into(), b: Some(b.into()) }
    }

    fn contents(bodies: &[Value]) -> Vec<&str> {
        bodies.iter().map(|b| b["messages"][0]["content"].as_str().unwrap()).collect()
    }

    #[test]
    fn alpaca_eval_shows_the_baseline_first_unless_swapped() {
        let params =
            json!({"endpoint": "http://x/v1", "model": "j", "system": "", "template": "{{ output_1 }}|{{ output_2 }}"});
        let p = Params::parse("alpaca-eval", &params).unwrap();
        let r = p.templates.renderer().unwrap();
        // With seed 0, "instruction 0" is swapped and "instruction 1" is not (PINNED_SWAPS).
        let (plan_0, bodies) = plan(&p, &r, &item("instruction 0", "model", "base")).unwrap();
        assert!(plan_0.swapped);
        assert_eq!(contents(&bodies), ["model|base"]);
        let (plan_1, bodies) = plan(&p, &r, &item("instruction 1", "model", "base")).unwrap();
        assert!(!plan_1.swapped);
        assert_eq!(contents(&bodies), ["base|model"]);
        let b = &bodies[0];
        assert_eq!(
            (&b["logprobs"], &b["top_logprobs"], &b["max_tokens"], &b["temperature"]),
            (&json!(true), &json!(5), &json!(1), &json!(1.0))
        );
        assert_eq!(plan_1.keys, [request_key(b)]);
        // Identical outputs are not asked about.
        let (same, bodies) = plan(&p, &r, &item("instruction 1", "x", "x")).unwrap();
        assert!(same.keys.is_empty() && bodies.is_empty());
    }

    #[test]
    fn pairwise_asks_both_orders_and_text_protocols_no_logprobs() {
        let params = json!({"endpoint": "http://x/v1", "model": "j", "template": "{{ output_1 }}|{{ output_2 }}"});
        let p = Params::parse("pairwise", &params).unwrap();
        let (plan, bodies) = plan(&p, &p.templates.renderer().unwrap(), &item("q", "model", "base")).unwrap();
        assert_eq!(plan.keys.len(), 2);
        let users: Vec<&str> = bodies.iter().map(|b| b["messages"][1]["content"].as_str().unwrap()).collect();
        assert_eq!(users, ["model|base", "base|model"]);
        assert!(bodies.iter().all(|b| b.get("logprobs").is_none() && b["temperature"] == json!(0.0)));
    }
}

#[cfg(test)]
mod bootstrap_tests {
    use super::*;

    struct Quiet;
    impl api::Host for Quiet {
        fn log(&self, _: u32, _: &str) {}
        fn progress(&self, _: u64, _: u64, _: &str) {}
        fn is_cancelled(&self) -> bool {
            false
        }
    }

    #[test]
    fn an_lc_interval_over_mostly_undefined_refits_is_null_and_the_count_is_reported() {
        let params = serde_json::json!({"endpoint": "http://127.0.0.1:9/v1", "model": "m", "bootstrap": 200});
        let p = Params::parse("pairwise", &params).unwrap();
        let (inputs, dir) = (BTreeMap::new(), std::env::temp_dir());
        let ctx = OpContext::new("s", &params, &inputs, &dir, &dir, &[], &Quiet);
        // Hard 0/1 preferences separated by length (a wins exactly where its answer is longer): the LC fit has no
        // optimum on the sample or on almost any resample.
        let parsed: Vec<(String, f64, f64, f64)> = (0..12)
            .map(|i| (format!("q{i}"), if i % 2 == 0 { 1.0 } else { 0.0 }, if i % 2 == 0 { 90.0 } else { 10.0 }, 50.0))
            .collect();
        let s = win_summary(&p, &ctx, 12, &parsed).unwrap();
        assert!(s["lc_win_rate_a_undefined_replicates"].as_u64().unwrap() > 10, "{s:?}");
        assert!(s["lc_win_rate_a_ci_95"].is_null(), "{s:?}");
        // The plain win rate's interval is unaffected.
        assert!(s["win_rate_a_ci_95"].is_array(), "{s:?}");
    }
}
