//! Params of each op, parsed once by one function that both `validate` and `invoke` call, so a stage that
//! validates cannot fail later on a param.

use api::Error;
use api::params::{boolean, kind, string};
use serde_json::{Map, Value};

use crate::{EXTENDED_PHRASES, XSTEST_PREFIXES};

/// Where `refusal` looks for its strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Only `prefixes`, at the start of the response: XSTest's string-match classifier.
    Prefix,
    /// Only `phrases`, anywhere in the response.
    Anywhere,
    /// Both.
    Both,
}

impl Mode {
    /// The name a study writes.
    fn name(self) -> &'static str {
        match self {
            Mode::Prefix => "prefix",
            Mode::Anywhere => "anywhere",
            Mode::Both => "both",
        }
    }
}

/// `refusal`'s params.
#[derive(Debug, Clone)]
pub(crate) struct Refusal {
    pub prefixes: Vec<String>,
    pub phrases: Vec<String>,
    pub mode: Mode,
    pub field: String,
    pub fold_quotes: bool,
}

/// `exact-match`'s params.
#[derive(Debug, Clone)]
pub(crate) struct ExactMatch {
    pub normalise: bool,
    pub field: String,
}

/// `length`'s params.
#[derive(Debug, Clone)]
pub(crate) struct Length {
    pub field: String,
}

/// How `pairwise-correctness` compares a response with a reference (both normalised when `normalise`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Match {
    /// The response equals the reference.
    Exact,
    /// The response starts with the reference, followed by the end or a character that is not alphanumeric.
    Prefix,
}

impl Match {
    /// The name a study writes.
    pub fn name(self) -> &'static str {
        match self {
            Match::Exact => "exact",
            Match::Prefix => "prefix",
        }
    }
}

/// Which field, if any, `pairwise-correctness` groups items by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum GroupBy {
    /// Not given: `family` when any row has it, else no breakdown.
    Default,
    /// Given: every item must carry it.
    Field(String),
    /// `false`: no breakdown.
    Off,
}

/// `pairwise-correctness`'s params.
#[derive(Debug, Clone)]
pub(crate) struct Pairwise {
    pub field: String,
    pub reference_field: String,
    pub normalise: bool,
    pub matching: Match,
    pub bootstrap: u64,
    pub seed: u64,
    pub group_by: GroupBy,
}

/// The most bootstrap replicates accepted: beyond this the CI does not move, and the op would just be slow.
pub(crate) const MAX_BOOTSTRAP: u64 = 1_000_000;

/// An op with its parsed params.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    Refusal(Refusal),
    ExactMatch(ExactMatch),
    Length(Length),
    Pairwise(Pairwise),
}

impl Op {
    /// Parses `params` for `op`; every error points at the offending param.
    pub fn parse(op: &str, params: &Value) -> Result<Op, Error> {
        match op {
            "refusal" => {
                let p = table(op, params, &["field", "fold_quotes", "mode", "phrases", "prefixes"])?;
                let mode = match string(&p, "mode")?.as_deref() {
                    None | Some("both") => Mode::Both,
                    Some("prefix") => Mode::Prefix,
                    Some("anywhere") => Mode::Anywhere,
                    Some(other) => {
                        return Err(Error::param(
                            &["mode"],
                            format!("unknown mode `{other}`; valid modes: \"prefix\", \"anywhere\", \"both\""),
                        ));
                    }
                };
                let prefixes = strings(&p, "prefixes")?.unwrap_or_else(|| owned(XSTEST_PREFIXES));
                let phrases = strings(&p, "phrases")?.unwrap_or_else(|| owned(EXTENDED_PHRASES));
                // A judge that can never say "refusal" is a misconfiguration, not a result of 0%.
                let never = match mode {
                    Mode::Prefix => prefixes.is_empty().then_some("prefixes"),
                    Mode::Anywhere => phrases.is_empty().then_some("phrases"),
                    Mode::Both => (prefixes.is_empty() && phrases.is_empty()).then_some("prefixes"),
                };
                if let Some(key) = never {
                    return Err(Error::param(
                        &[key],
                        format!("`{key}` is empty in mode `{}`, so no response could ever be a refusal", mode.name()),
                    ));
                }
                Ok(Op::Refusal(Refusal {
                    prefixes,
                    phrases,
                    mode,
                    field: field(&p)?,
                    fold_quotes: boolean(&p, "fold_quotes")?.unwrap_or(true),
                }))
            }
            "exact-match" => {
                let p = table(op, params, &["field", "normalise"])?;
                Ok(Op::ExactMatch(ExactMatch {
                    normalise: boolean(&p, "normalise")?.unwrap_or(true),
                    field: field(&p)?,
                }))
            }
            "length" => {
                let p = table(op, params, &["field"])?;
                Ok(Op::Length(Length { field: field(&p)? }))
            }
            "pairwise-correctness" => {
                let p = table(
                    op,
                    params,
                    &["bootstrap", "field", "group_by", "match", "normalise", "reference_field", "seed"],
                )?;
                let matching = match string(&p, "match")?.as_deref() {
                    None | Some("exact") => Match::Exact,
                    Some("prefix") => Match::Prefix,
                    Some(other) => {
                        return Err(Error::param(
                            &["match"],
                            format!("unknown match `{other}`; valid: \"exact\", \"prefix\""),
                        ));
                    }
                };
                let bootstrap = integer(&p, "bootstrap")?.unwrap_or(2000);
                if bootstrap > MAX_BOOTSTRAP {
                    return Err(Error::param(
                        &["bootstrap"],
                        format!("`bootstrap` is {bootstrap}; at most {MAX_BOOTSTRAP} replicates (0 turns it off)"),
                    ));
                }
                let group_by = match p.get("group_by") {
                    None => GroupBy::Default,
                    Some(Value::Bool(false)) => GroupBy::Off,
                    Some(Value::String(s)) if !s.is_empty() => GroupBy::Field(s.clone()),
                    Some(other) => {
                        return Err(Error::param(
                            &["group_by"],
                            format!("`group_by` must name a field, or be false for no breakdown, not {}", show(other)),
                        ));
                    }
                };
                let reference_field = match string(&p, "reference_field")? {
                    None => "reference".into(),
                    Some(f) if f.is_empty() => {
                        return Err(Error::param(
                            &["reference_field"],
                            "`reference_field` must name a field, not be empty",
                        ));
                    }
                    Some(f) => f,
                };
                Ok(Op::Pairwise(Pairwise {
                    field: field(&p)?,
                    reference_field,
                    normalise: boolean(&p, "normalise")?.unwrap_or(true),
                    matching,
                    bootstrap,
                    seed: integer(&p, "seed")?.unwrap_or(0),
                    group_by,
                }))
            }
            other => Err(Error::Failed(format!(
                "judge-rules has no op `{other}`; its ops: refusal, exact-match, length, pairwise-correctness"
            ))),
        }
    }

    /// The inputs the op reads, all required.
    pub fn inputs(&self) -> &'static [&'static str] {
        match self {
            Op::Refusal(_) | Op::Length(_) => &["responses"],
            Op::ExactMatch(_) => &["responses", "references"],
            Op::Pairwise(_) => &["a", "b", "references"],
        }
    }
}

fn owned(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// The params as a table, refusing unknown keys (see [`api::params::table`]).
fn table(op: &str, params: &Value, valid: &[&str]) -> Result<Map<String, Value>, Error> {
    api::params::table("judge-rules", op, params, valid)
}

/// A value for messages: its kind, or `an empty string` / `true` where the kind alone would not say what is wrong.
fn show(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "an empty string",
        Value::Bool(true) => "true",
        other => kind(other),
    }
}

/// A non-negative integer (`u64`).
fn integer(p: &Map<String, Value>, key: &str) -> Result<Option<u64>, Error> {
    match p.get(key) {
        None => Ok(None),
        Some(Value::Number(n)) if n.is_u64() => Ok(n.as_u64()),
        Some(Value::Number(n)) => Err(Error::param(&[key], format!("`{key}` must be a non-negative integer, not {n}"))),
        Some(other) => {
            Err(Error::param(&[key], format!("`{key}` must be a non-negative integer, not {}", kind(other))))
        }
    }
}

/// A list of non-blank strings (a blank one would match every response).
fn strings(p: &Map<String, Value>, key: &str) -> Result<Option<Vec<String>>, Error> {
    let Some(value) = p.get(key) else { return Ok(None) };
    let Value::Array(items) = value else {
        return Err(Error::param(&[key], format!("`{key}` must be a list of strings, not {}", kind(value))));
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let index = i.to_string();
        match item {
            Value::String(s) if !s.trim().is_empty() => out.push(s.clone()),
            Value::String(_) => {
                return Err(Error::param(&[key, &index], format!("`{key}[{i}]` is blank and would match everything")));
            }
            other => {
                return Err(Error::param(
                    &[key, &index],
                    format!("`{key}[{i}]` must be a string, not {}", kind(other)),
                ));
            }
        }
    }
    Ok(Some(out))
}

/// The response field: a non-empty string, `response` by default.
fn field(p: &Map<String, Value>) -> Result<String, Error> {
    match string(p, "field")? {
        None => Ok("response".into()),
        Some(f) if f.is_empty() => Err(Error::param(&["field"], "`field` must name a field, not be empty")),
        Some(f) => Ok(f),
    }
}
