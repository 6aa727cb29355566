//! The stage's params: parsed once from canonical JSON into resolved types, by the same code at plan time
//! ([`super::Dataset`]'s `validate`) and at run time, so that the two can never disagree.
//!
//! Parsing is by hand rather than through serde: every error must carry its path inside `params` and say what a
//! valid value looks like, and unknown keys must be refused with the list of valid ones.

use serde_json::{Map, Value};

use super::fields::{Mapping, Preset};
use super::read::Format;
use super::template::{self, TemplateSpec};
use crate::builtin::ParamError;

/// Whether the user turn is trained on (IT) or dropped (RT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// Response tuning: the training text holds only the assistant turn.
    Rt,
    /// Instruction tuning: the training text holds the user turn and the assistant turn.
    It,
}

impl Mode {
    /// The name used in params and in `stats.json`.
    pub(super) fn name(self) -> &'static str {
        match self {
            Mode::Rt => "rt",
            Mode::It => "it",
        }
    }
}

/// All params of one `dataset` stage, resolved and checked.
#[derive(Debug)]
pub(super) struct Params {
    pub mode: Mode,
    pub template: TemplateSpec,
    /// `None` when the study did not set `eos`, so that a tokenizer's own eos can apply.
    pub eos: Option<String>,
    pub seed: u64,
    pub dedup: bool,
    pub holdout: usize,
    pub sources: Vec<Source>,
}

/// One entry of `sources`.
#[derive(Debug)]
pub(super) struct Source {
    /// The name of the stage input this source reads.
    pub input: String,
    /// `None`: inferred from the file's extension (or its first bytes).
    pub format: Option<Format>,
    pub mapping: Mapping,
    pub first: Option<usize>,
    pub take: Option<usize>,
    pub take_at_most: bool,
    pub filter: Option<regex::Regex>,
}

/// `holdout = "all"`: every example goes to `prompts.jsonl` and `train.jsonl` is empty.
pub const HOLDOUT_ALL: usize = usize::MAX;

const TOP_KEYS: &[&str] = &["dedup", "eos", "holdout", "mode", "seed", "sources", "template"];
const SOURCE_KEYS: &[&str] = &["fields", "filter", "first", "format", "input", "preset", "take", "take_at_most"];
const FIELD_KEYS: &[&str] = &["context", "conversations", "prompt", "response"];

impl Params {
    /// Parses and checks `params`; `input_names` are the inputs the stage declares.
    pub(super) fn parse(params: &Value, input_names: &[&str]) -> Result<Params, ParamError> {
        let top = table(params, &[])?;
        check_keys(top, &[], TOP_KEYS)?;

        let mode = match top.get("mode") {
            None => {
                return Err(ParamError::new(&["mode"], "`mode` is required: `\"rt\"` or `\"it\"`"));
            }
            Some(v) => match string(v, &["mode"])? {
                "rt" => Mode::Rt,
                "it" => Mode::It,
                other => {
                    return Err(ParamError::new(
                        &["mode"],
                        format!(
                            "unknown mode `{other}`: use `\"rt\"` (response tuning) or `\"it\"` (instruction tuning)"
                        ),
                    ));
                }
            },
        };
        let template = match top.get("template") {
            None => TemplateSpec::Tulu,
            Some(v) => parse_template(v, input_names)?,
        };
        let eos = top.get("eos").map(|v| string(v, &["eos"]).map(str::to_owned)).transpose()?;
        let seed = top.get("seed").map(|v| unsigned(v, &["seed"])).transpose()?.unwrap_or(0);
        let dedup = top.get("dedup").map(|v| boolean(v, &["dedup"])).transpose()?.unwrap_or(true);
        // `holdout = "all"` makes an evaluation set: every example becomes an inference prompt.
        let holdout = match top.get("holdout") {
            Some(Value::String(s)) if s == "all" => HOLDOUT_ALL,
            Some(Value::String(_)) => {
                return Err(ParamError::new(&["holdout"], "`holdout` is a count of examples, or `\"all\"`"));
            }
            other => to_usize(other.map(|v| unsigned(v, &["holdout"])).transpose()?.unwrap_or(0), &["holdout"])?,
        };

        let sources = match top.get("sources") {
            None => {
                return Err(ParamError::new(
                    &["sources"],
                    "`sources` is required: an array of tables such as `{ input = \"alpaca\", preset = \"alpaca\" }`",
                ));
            }
            Some(Value::Array(items)) if items.is_empty() => {
                return Err(ParamError::new(&["sources"], "`sources` is empty: give at least one source"));
            }
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, item)| parse_source(item, &i.to_string(), input_names))
                .collect::<Result<Vec<_>, _>>()?,
            Some(other) => {
                return Err(ParamError::new(
                    &["sources"],
                    format!("expected an array of tables (`[[stage.params.sources]]`), found {}", kind(other)),
                ));
            }
        };
        if holdout != HOLDOUT_ALL
            && let Some(i) = sources.iter().position(|s| !s.mapping.has_response())
        {
            return Err(ParamError::new(
                &["sources", &i.to_string(), "fields"],
                "this source has no `response` field, so it can only feed an evaluation set (`holdout = \"all\"`); \
                 give `fields.response` to train on it",
            ));
        }
        Ok(Params { mode, template, eos, seed, dedup, holdout, sources })
    }
}

fn parse_template(v: &Value, input_names: &[&str]) -> Result<TemplateSpec, ParamError> {
    const HELP: &str = "use `\"tulu\"`, `{ jinja = \"<template>\" }` or `{ hf_chat_template = \"<input holding tokenizer_config.json>\" }`";
    match v {
        Value::String(s) if s == "tulu" => Ok(TemplateSpec::Tulu),
        Value::String(s) => Err(ParamError::new(&["template"], format!("unknown template `{s}`: {HELP}"))),
        Value::Object(map) => {
            check_keys(map, &["template"], &["hf_chat_template", "jinja"])?;
            match (map.get("jinja"), map.get("hf_chat_template")) {
                (Some(source), None) => {
                    let source = string(source, &["template", "jinja"])?;
                    template::compile_check(source).map_err(|e| {
                        ParamError::new(&["template", "jinja"], format!("the template does not compile: {e}"))
                    })?;
                    Ok(TemplateSpec::Jinja(source.to_owned()))
                }
                (None, Some(input)) => {
                    let input = string(input, &["template", "hf_chat_template"])?;
                    check_input(input, input_names, &["template", "hf_chat_template"])?;
                    Ok(TemplateSpec::HfChatTemplate(input.to_owned()))
                }
                _ => Err(ParamError::new(
                    &["template"],
                    format!("give exactly one of `jinja` and `hf_chat_template`: {HELP}"),
                )),
            }
        }
        other => {
            Err(ParamError::new(&["template"], format!("expected a string or a table, found {}: {HELP}", kind(other))))
        }
    }
}

fn parse_source(v: &Value, index: &str, input_names: &[&str]) -> Result<Source, ParamError> {
    let at = |key: &'static str| ["sources", index, key];
    let map = table(v, &["sources", index])?;
    check_keys(map, &["sources", index], SOURCE_KEYS)?;

    let input = match map.get("input") {
        None => {
            return Err(ParamError::new(
                &["sources", index],
                "`input` is required: the name of one of the stage's inputs",
            ));
        }
        Some(v) => string(v, &at("input"))?,
    };
    check_input(input, input_names, &at("input"))?;

    let format = match map.get("format") {
        None => None,
        Some(v) => {
            let name = string(v, &at("format"))?;
            Some(Format::from_name(name).ok_or_else(|| {
                ParamError::new(&at("format"), format!("unknown format `{name}`: use one of {}", Format::NAMES))
            })?)
        }
    };

    let preset = match map.get("preset") {
        None => None,
        Some(v) => {
            let name = string(v, &at("preset"))?;
            Some(Preset::from_name(name).ok_or_else(|| {
                ParamError::new(&at("preset"), format!("unknown preset `{name}`: use one of {}", Preset::NAMES))
            })?)
        }
    };
    let fields = match map.get("fields") {
        None => None,
        Some(v) => {
            let path = at("fields");
            let fmap = table(v, &path)?;
            check_keys(fmap, &path, FIELD_KEYS)?;
            let mut pairs = Vec::new();
            for (key, value) in fmap {
                let name = string(value, &["sources", index, "fields", key])?;
                if name.is_empty() {
                    return Err(ParamError::new(
                        &["sources", index, "fields", key],
                        "expected a field name, found an empty string",
                    ));
                }
                pairs.push((key.as_str(), name.to_owned()));
            }
            Some(pairs)
        }
    };
    let mapping = Mapping::resolve(preset, fields.as_deref()).map_err(|(key, message)| match key {
        Some(key) => ParamError::new(&["sources", index, "fields", key], message),
        None => ParamError::new(&["sources", index], message),
    })?;

    let first = map.get("first").map(|v| positive(v, &at("first"))).transpose()?;
    // `take = 0` is allowed: an empty draw is the control arm of a mixture sweep (0, 100, 200 … refusals).
    let take = map.get("take").map(|v| to_usize(unsigned(v, &at("take"))?, &at("take"))).transpose()?;
    let take_at_most = map.get("take_at_most").map(|v| boolean(v, &at("take_at_most"))).transpose()?.unwrap_or(false);
    if take_at_most && take.is_none() {
        return Err(ParamError::new(&at("take_at_most"), "`take_at_most` only applies together with `take`"));
    }
    let filter = match map.get("filter") {
        None => None,
        Some(v) => {
            let pattern = string(v, &at("filter"))?;
            Some(regex::Regex::new(pattern).map_err(|e| {
                ParamError::new(
                    &at("filter"),
                    format!("invalid regular expression (Rust `regex` syntax, e.g. `(?i)\\b(ai|sorry)\\b`): {e}"),
                )
            })?)
        }
    };
    Ok(Source { input: input.to_owned(), format, mapping, first, take, take_at_most, filter })
}

fn check_input(name: &str, input_names: &[&str], path: &[&str]) -> Result<(), ParamError> {
    if input_names.contains(&name) {
        return Ok(());
    }
    let valid = if input_names.is_empty() {
        "the stage declares no inputs".to_owned()
    } else {
        format!("the stage's inputs are {}", backticked(input_names))
    };
    Err(ParamError::new(path, format!("`{name}` is not an input of this stage: {valid}")))
}

fn check_keys(map: &Map<String, Value>, path: &[&str], valid: &[&str]) -> Result<(), ParamError> {
    match map.keys().find(|k| !valid.contains(&k.as_str())) {
        None => Ok(()),
        Some(key) => {
            let mut at = path.to_vec();
            at.push(key);
            Err(ParamError::new(&at, format!("unknown key `{key}`: valid keys here are {}", backticked(valid))))
        }
    }
}

fn backticked(names: &[&str]) -> String {
    names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
}

/// How a JSON value is called in messages; params come from TOML, so objects are "tables".
pub(super) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a float",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "a table",
    }
}

fn table<'a>(v: &'a Value, path: &[&str]) -> Result<&'a Map<String, Value>, ParamError> {
    v.as_object().ok_or_else(|| ParamError::new(path, format!("expected a table, found {}", kind(v))))
}

fn string<'a>(v: &'a Value, path: &[&str]) -> Result<&'a str, ParamError> {
    v.as_str().ok_or_else(|| ParamError::new(path, format!("expected a string, found {}", kind(v))))
}

fn boolean(v: &Value, path: &[&str]) -> Result<bool, ParamError> {
    v.as_bool().ok_or_else(|| ParamError::new(path, format!("expected `true` or `false`, found {}", kind(v))))
}

fn unsigned(v: &Value, path: &[&str]) -> Result<u64, ParamError> {
    v.as_u64().ok_or_else(|| {
        ParamError::new(path, format!("expected a non-negative integer such as `0`, found {}", describe_number(v)))
    })
}

fn positive(v: &Value, path: &[&str]) -> Result<usize, ParamError> {
    match v.as_u64() {
        Some(n) if n > 0 => to_usize(n, path),
        _ => Err(ParamError::new(
            path,
            format!("expected a positive integer such as `1000`, found {}", describe_number(v)),
        )),
    }
}

fn to_usize(n: u64, path: &[&str]) -> Result<usize, ParamError> {
    usize::try_from(n).map_err(|_| ParamError::new(path, format!("`{n}` is too large for this platform")))
}

/// Shows the offending number itself, since "found an integer" does not explain why `-1` or `0` is refused.
fn describe_number(v: &Value) -> String {
    match v {
        Value::Number(n) => format!("`{n}`"),
        other => kind(other).to_owned(),
    }
}
