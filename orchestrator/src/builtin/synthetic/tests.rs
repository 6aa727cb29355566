//! Tests of the `synthetic` built-in: determinism, correct answers (each prompt is parsed back through its
//! family's templates and the answer recomputed here, independently of the generator), disjoint splits, and
//! param errors.

use std::collections::{BTreeMap, HashSet};

use regex::Regex;
use serde_json::{Value, json};

use super::families::{ALL, Family};
use super::params::Params;
use super::{Generated, Synthetic, Ticker, generate, refusals, vocab};
use crate::builtin::{Builtin, StageContext};

const FILES: &[&str] =
    &["instructions.jsonl", "refusals.jsonl", "eval.jsonl", "unsafe_eval.jsonl", "corpus.jsonl", "stats.json"];

/// Runs the stage (after plan-time validation) and returns every output file's bytes and the log.
fn run(params: Value) -> Result<(BTreeMap<&'static str, Vec<u8>>, String), String> {
    Synthetic.validate(&params, &[]).map_err(|e| format!("validate: {e}"))?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let out_dir = dir.path().join("out");
    let scratch = dir.path().join("scratch");
    std::fs::create_dir_all(&out_dir).unwrap();
    std::fs::create_dir_all(&scratch).unwrap();
    let inputs = BTreeMap::new();
    let mut log = Vec::new();
    let mut ctx = StageContext {
        stage_id: "data",
        params: &params,
        inputs: &inputs,
        out_dir: &out_dir,
        scratch_dir: &scratch,
        gpus: &[],
        log: &mut log,
        progress: &|_, _| {},
        cancelled: &|| false,
    };
    Synthetic.run(&mut ctx).map_err(|e| format!("{e:#}"))?;
    let files = FILES.iter().map(|n| (*n, std::fs::read(out_dir.join(n)).unwrap())).collect();
    Ok((files, String::from_utf8(log).unwrap()))
}

fn lines(bytes: &[u8]) -> Vec<Value> {
    std::str::from_utf8(bytes).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn generated(params: Value) -> (Params, Generated) {
    let params = Params::parse(&params).unwrap();
    let mut ticker = Ticker::new(&params, &|_, _| {}, &|| false);
    let data = generate(&params, &mut ticker).unwrap();
    (params, data)
}

/// A template as an anchored regex, its slots as named groups.
fn template_regex(template: &str) -> Regex {
    let slot = Regex::new(r"\{(\w+)\}").unwrap();
    let mut pattern = String::from("^");
    let mut last = 0;
    for m in slot.captures_iter(template) {
        let whole = m.get(0).unwrap();
        pattern.push_str(&regex::escape(&template[last..whole.start()]));
        let name = &m[1];
        let group = match name {
            "w" => "[a-z]+",
            "n" | "a" | "b" => "[0-9]+",
            "p" => "[a-z]+(?: [a-z]+)*",
            "list" => "[a-z]+(?:, [a-z]+)*",
            "answer" => ".+",
            other => panic!("unknown slot `{other}` in `{template}`"),
        };
        pattern.push_str(&format!("(?P<{name}>{group})"));
        last = whole.end();
    }
    pattern.push_str(&regex::escape(&template[last..]));
    pattern.push('$');
    Regex::new(&pattern).unwrap()
}

/// Each family's templates as regexes (compiled once: a debug build compiles regexes slowly).
fn compiled(templates: fn(Family) -> &'static [&'static str]) -> BTreeMap<Family, Vec<Regex>> {
    ALL.iter().map(|&f| (f, templates(f).iter().map(|t| template_regex(t)).collect())).collect()
}

/// Parses `text` with one of `templates` and computes the answer from its slots, written independently of the
/// generator's [`super::families::Instance::answer`]. Returns the answer and, for prose, the stated answer.
fn solve(family: Family, templates: &[Regex], text: &str) -> (String, Option<String>) {
    let caps = templates
        .iter()
        .find_map(|t| t.captures(text))
        .unwrap_or_else(|| panic!("`{text}` matches no template of `{}`", family.name()));
    let get = |name: &str| caps.name(name).map(|m| m.as_str().to_owned()).unwrap();
    let num = |name: &str| get(name).parse::<i64>().unwrap();
    let list = || get("list").split(", ").map(str::to_owned).collect::<Vec<_>>();
    let phrase = || get("p").split(' ').map(str::to_owned).collect::<Vec<_>>();
    let expected = match family {
        Family::Reverse => {
            let w = get("w");
            let bytes: Vec<u8> = w.bytes().rev().collect();
            String::from_utf8(bytes).unwrap()
        }
        Family::Uppercase => get("p").chars().map(|c| c.to_ascii_uppercase()).collect(),
        Family::CountLetters => get("w").len().to_string(),
        Family::Add => (num("a") + num("b")).to_string(),
        Family::Subtract => {
            assert!(num("a") >= num("b"), "`{text}`: a negative difference");
            (num("a") - num("b")).to_string()
        }
        Family::Sort => {
            let mut words = list();
            words.sort();
            words.join(", ")
        }
        Family::FirstWord => phrase()[0].clone(),
        Family::LastWord => phrase().pop().unwrap(),
        Family::Repeat => {
            let n = num("n");
            assert!((2..=5).contains(&n));
            let w = get("w");
            (0..n).map(|_| w.as_str()).collect::<Vec<_>>().join(" ")
        }
        Family::ListLength => list().len().to_string(),
        Family::Larger => {
            assert_ne!(num("a"), num("b"), "`{text}`: a tie");
            if num("a") > num("b") { get("a") } else { get("b") }
        }
        Family::Spell => {
            let w = get("w");
            w.chars().map(|c| c.to_string()).collect::<Vec<_>>().join("-")
        }
    };
    (expected, caps.name("answer").map(|m| m.as_str().to_owned()))
}

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    let (a, log) = run(json!({})).unwrap();
    let (b, _) = run(json!({ "seed": 0 })).unwrap();
    assert_eq!(a, b);
    let (c, _) = run(json!({ "seed": 1 })).unwrap();
    for name in FILES.iter().filter(|n| **n != "stats.json") {
        assert_ne!(a[name], c[name], "{name} is the same under another seed");
    }
    assert!(log.contains("wrote 1008 instruction(s)"), "{log}");
}

#[test]
fn defaults_give_the_documented_counts_and_formats() {
    let (files, _) = run(Value::Null).unwrap();
    let train = lines(&files["instructions.jsonl"]);
    let eval = lines(&files["eval.jsonl"]);
    assert_eq!(train.len(), 12 * 84);
    assert_eq!(eval.len(), 12 * 5);
    assert_eq!(lines(&files["refusals.jsonl"]).len(), 100);
    assert_eq!(lines(&files["unsafe_eval.jsonl"]).len(), 20);
    let corpus = lines(&files["corpus.jsonl"]);
    assert_eq!(corpus.len(), 5000);

    // Keys in sorted order, exactly the documented ones.
    let first = std::str::from_utf8(&files["instructions.jsonl"]).unwrap().lines().next().unwrap();
    assert!(first.starts_with("{\"family\":"), "{first}");
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&train[0]), ["family", "id", "prompt", "response"]);
    assert_eq!(keys(&eval[0]), ["family", "id", "prompt", "response"]);
    assert_eq!(keys(&lines(&files["refusals.jsonl"])[0]), ["id", "prompt", "response"]);
    assert_eq!(keys(&lines(&files["unsafe_eval.jsonl"])[0]), ["id", "prompt", "response"]);

    let mut ids = HashSet::new();
    let mut refusal_lines = 0;
    for line in &corpus {
        assert!(ids.insert(line["id"].as_str().unwrap().to_owned()));
        let segments = line["segments"].as_array().unwrap();
        assert_eq!(segments.len(), 1);
        assert_eq!(segments[0]["loss"], json!(true));
        let text = segments[0]["text"].as_str().unwrap();
        assert!(text.ends_with('\n') && text.matches('\n').count() == 1, "{text:?}");
        assert!(!text.contains("<|") && !text.contains("|>"), "chat marker in {text:?}");
        if text.contains("can't") || text.contains("cannot") || text.contains("won't") {
            refusal_lines += 1;
        }
    }
    // Sparse, but there.
    assert!((100..400).contains(&refusal_lines), "{refusal_lines} refusal lines");

    let stats: Value = serde_json::from_slice(&files["stats.json"]).unwrap();
    assert_eq!(stats["families"]["reverse"]["train"], json!(84));
    assert_eq!(stats["families"]["spell"]["eval"], json!(5));
    assert!(stats["families"]["add"]["corpus_sentences"].as_u64().unwrap() > 500);
    assert_eq!(stats["train_examples"], json!(1008));
}

#[test]
fn every_response_is_the_correct_answer() {
    let (files, _) = run(json!({ "seed": 7 })).unwrap();
    let prompts = compiled(Family::prompts);
    for name in ["instructions.jsonl", "eval.jsonl"] {
        for line in lines(&files[name]) {
            let family = Family::from_name(line["family"].as_str().unwrap()).unwrap();
            let prompt = line["prompt"].as_str().unwrap();
            let (expected, _) = solve(family, &prompts[&family], prompt);
            assert_eq!(line["response"].as_str().unwrap(), expected, "{name}: `{prompt}`");
        }
    }
}

#[test]
fn every_prose_sentence_states_the_correct_answer() {
    let mut r = super::rng::rng(3, super::rng::Stream::Corpus);
    let (prose, prompts) = (compiled(Family::prose), compiled(Family::prompts));
    for family in ALL {
        for _ in 0..200 {
            let task = family.draw(&mut r);
            for template in family.prose() {
                let sentence = task.render(template);
                let (expected, stated) = solve(family, &prose[&family], &sentence);
                assert_eq!(stated.as_deref(), Some(expected.as_str()), "`{sentence}`");
            }
            for template in family.prompts() {
                let prompt = task.render(template);
                assert_eq!(solve(family, &prompts[&family], &prompt).0, task.answer(), "`{prompt}`");
            }
        }
    }
}

#[test]
fn held_out_tasks_are_unseen_in_training_and_corpus() {
    let (_, data) = generated(json!({ "seed": 5, "eval": 20 }));
    let held: HashSet<&str> = data.eval.iter().map(|t| t.key.as_str()).collect();
    assert_eq!(held.len(), data.eval.len(), "held-out tasks repeat");
    let train: HashSet<&str> = data.train.iter().map(|t| t.key.as_str()).collect();
    assert_eq!(train.len(), data.train.len(), "training tasks repeat");
    assert!(held.is_disjoint(&train));
    let prompts: HashSet<&str> = data.train.iter().map(|t| t.prompt.as_str()).collect();
    assert!(data.eval.iter().all(|t| !prompts.contains(t.prompt.as_str())));
    for line in &data.corpus {
        assert!(line.keys.iter().all(|k| !held.contains(k.as_str())), "held-out task in corpus: {:?}", line.text);
    }

    let unsafe_train: HashSet<&str> = data.refusals.iter().map(|r| r.prompt.as_str()).collect();
    assert_eq!(unsafe_train.len(), data.refusals.len());
    for r in &data.unsafe_eval {
        assert!(!unsafe_train.contains(r.prompt.as_str()));
        let lower = r.response.to_lowercase();
        assert!(["i'm sorry", "i can't", "sorry", "i cannot"].iter().any(|p| lower.starts_with(p)), "{lower}");
    }
    // Held-out acts are never mentioned in training refusals or the corpus: compare the acts' text.
    let (_, held_acts) = refusals::split(5);
    assert_eq!(held_acts.len(), refusals::eval_capacity() / 10);
    let corpus_text: String = data.corpus.iter().map(|l| l.text.as_str()).collect();
    for r in &data.unsafe_eval {
        assert!(!corpus_text.contains(&r.prompt), "{}", r.prompt);
    }
}

#[test]
fn counts_change_only_their_own_part() {
    let (_, a) = generated(json!({}));
    let (_, b) = generated(json!({ "train": 10, "unsafe": 3 }));
    let texts = |d: &Generated| d.corpus.iter().map(|l| l.text.clone()).collect::<Vec<_>>();
    assert_eq!(texts(&a), texts(&b), "the corpus depends on `train` or `unsafe`");
    let evals = |d: &Generated| d.eval.iter().map(|t| (t.id.clone(), t.prompt.clone())).collect::<Vec<_>>();
    assert_eq!(evals(&a), evals(&b));
    assert_eq!(b.train.len(), 120);
    assert_eq!(b.refusals.len(), 3);
}

#[test]
fn families_restrict_the_output() {
    let (files, _) = run(json!({ "families": ["spell", "add"], "corpus": 50 })).unwrap();
    let families: HashSet<String> =
        lines(&files["instructions.jsonl"]).iter().map(|l| l["family"].as_str().unwrap().to_owned()).collect();
    assert_eq!(families, HashSet::from(["spell".to_owned(), "add".to_owned()]));
    // Listing order does not matter.
    let (again, _) = run(json!({ "families": ["add", "spell"], "corpus": 50 })).unwrap();
    assert_eq!(files, again);
}

#[test]
fn zero_counts_give_empty_files() {
    let (files, _) = run(json!({ "train": 0, "eval": 0, "unsafe": 0, "unsafe_eval": 0, "corpus": 0 })).unwrap();
    for name in FILES.iter().filter(|n| **n != "stats.json") {
        assert!(files[name].is_empty(), "{name}");
    }
}

#[test]
fn cancel_stops_the_stage() {
    let params = json!({});
    let dir = tempfile::tempdir().unwrap();
    let inputs = BTreeMap::new();
    let mut log = Vec::new();
    let mut ctx = StageContext {
        stage_id: "data",
        params: &params,
        inputs: &inputs,
        out_dir: dir.path(),
        scratch_dir: dir.path(),
        gpus: &[],
        log: &mut log,
        progress: &|_, _| {},
        cancelled: &|| true,
    };
    let err = Synthetic.run(&mut ctx).unwrap_err();
    assert!(format!("{err}").contains("cancelled"));
}

#[test]
fn vocabulary_is_lower_case_and_unique() {
    let mut seen = HashSet::new();
    for w in vocab::WORDS {
        assert!(w.len() >= 3 && w.bytes().all(|b| b.is_ascii_lowercase()), "{w}");
        assert!(seen.insert(w), "{w} twice");
    }
}

#[track_caller]
fn param_error(params: Value, path: &[&str], needle: &str) {
    let e = Synthetic.validate(&params, &[]).unwrap_err();
    assert_eq!(e.path, path, "{e}");
    assert!(e.message.contains(needle), "`{}` does not contain `{needle}`", e.message);
}

#[test]
fn bad_params_are_refused_with_their_path() {
    param_error(json!({ "size": 3 }), &["size"], "valid params are `corpus`, `eval`");
    param_error(json!([1]), &[], "expected a table");
    param_error(json!({ "seed": -1 }), &["seed"], "`-1`");
    param_error(json!({ "train": 1.5 }), &["train"], "non-negative integer");
    param_error(json!({ "corpus": "many" }), &["corpus"], "found a string");
    param_error(json!({ "corpus": 100_000_000 }), &["corpus"], "at most");
    param_error(json!({ "families": ["reverse", "rot13"] }), &["families", "1"], "`reverse`, `uppercase`");
    param_error(json!({ "families": ["add", "add"] }), &["families", "1"], "twice");
    param_error(json!({ "families": [] }), &["families"], "empty");
    param_error(json!({ "families": "add" }), &["families"], "a list of family names");
    param_error(json!({ "families": [3] }), &["families", "0"], "found an integer");
    param_error(json!({ "train": 300 }), &["train"], "family `reverse` has 268 distinct tasks");
    param_error(json!({ "eval": 200 }), &["eval"], "at most half");
    param_error(json!({ "unsafe": 1000 }), &["unsafe"], "at most 360");
    param_error(json!({ "unsafe_eval": 121 }), &["unsafe_eval"], "at most 120");
    // A family with room for more is fine on its own.
    assert!(Synthetic.validate(&json!({ "train": 1000, "families": ["add"] }), &[]).is_ok());
    let e = Synthetic.validate(&json!({}), &["x"]).unwrap_err();
    assert!(e.message.contains("takes no inputs"), "{e}");
    // `run` checks params on its own.
    let params = json!({ "eval": -3 });
    let dir = tempfile::tempdir().unwrap();
    let inputs = BTreeMap::new();
    let mut log = Vec::new();
    let mut ctx = StageContext {
        stage_id: "data",
        params: &params,
        inputs: &inputs,
        out_dir: dir.path(),
        scratch_dir: dir.path(),
        gpus: &[],
        log: &mut log,
        progress: &|_, _| {},
        cancelled: &|| false,
    };
    let err = format!("{:#}", Synthetic.run(&mut ctx).unwrap_err());
    assert!(err.starts_with("param `eval`:"), "{err}");
}
