//! The stage's params: parsed once from canonical JSON by the same code at plan time and at run time, so that
//! the two can never disagree. By hand rather than through serde, so that every error carries its path inside
//! `params` and says what a valid value looks like.

use serde_json::{Map, Value};

use super::families::{ALL, Family};
use super::refusals;
use crate::builtin::ParamError;

/// Training tasks per family by default: 12 × 84 = 1,008, a little over the 1,000 examples a study trains on.
pub(super) const DEFAULT_TRAIN: usize = 84;
pub(super) const DEFAULT_EVAL: usize = 5;
pub(super) const DEFAULT_UNSAFE: usize = 100;
pub(super) const DEFAULT_UNSAFE_EVAL: usize = 20;
pub(super) const DEFAULT_CORPUS: usize = 5_000;
/// A guard against a typo that would fill the disk: ten million corpus lines is about a gigabyte.
const MAX_COUNT: u64 = 10_000_000;

const KEYS: &[&str] = &["corpus", "eval", "families", "seed", "train", "unsafe", "unsafe_eval"];

/// All params of one `synthetic` stage, resolved and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Params {
    pub seed: u64,
    pub train: usize,
    pub eval: usize,
    pub unsafe_train: usize,
    pub unsafe_eval: usize,
    pub corpus: usize,
    /// The selected families, in the order of [`ALL`] whatever order the study lists them in.
    pub families: Vec<Family>,
}

impl Params {
    /// Parses and checks `params` (a table, or null for "all defaults").
    pub(super) fn parse(params: &Value) -> Result<Params, ParamError> {
        let empty = Map::new();
        let top = match params {
            Value::Null => &empty,
            Value::Object(map) => map,
            other => return Err(err(&[], format!("expected a table, found {}", kind(other)))),
        };
        if let Some(key) = top.keys().find(|k| !KEYS.contains(&k.as_str())) {
            let valid = KEYS.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ");
            return Err(err(&[key], format!("unknown param `{key}`: valid params are {valid}")));
        }
        let seed = match top.get("seed") {
            None => 0,
            Some(v) => v.as_u64().ok_or_else(|| {
                err(&["seed"], format!("expected a non-negative integer such as `0`, found {}", describe(v)))
            })?,
        };
        let count = |key: &str, default: usize| -> Result<usize, ParamError> {
            match top.get(key) {
                None => Ok(default),
                Some(v) => match v.as_u64() {
                    Some(n) if n <= MAX_COUNT => Ok(n as usize),
                    Some(n) => Err(err(&[key], format!("`{n}` is too many: at most {MAX_COUNT}"))),
                    None => Err(err(
                        &[key],
                        format!("expected a non-negative integer such as `{default}`, found {}", describe(v)),
                    )),
                },
            }
        };
        let train = count("train", DEFAULT_TRAIN)?;
        let eval = count("eval", DEFAULT_EVAL)?;
        let unsafe_train = count("unsafe", DEFAULT_UNSAFE)?;
        let unsafe_eval = count("unsafe_eval", DEFAULT_UNSAFE_EVAL)?;
        let corpus = count("corpus", DEFAULT_CORPUS)?;
        let families = match top.get("families") {
            None => ALL.to_vec(),
            Some(v) => parse_families(v)?,
        };

        for family in &families {
            let capacity = family.capacity();
            // Held-out tasks are kept out of the corpus by redrawing, which must stay cheap: at most half of a
            // family's tasks may be held out.
            if eval as u64 > capacity / 2 {
                return Err(err(
                    &["eval"],
                    format!(
                        "family `{}` has {capacity} distinct tasks, and at most half of them ({}) can be held out",
                        family.name(),
                        capacity / 2
                    ),
                ));
            }
            if (train + eval) as u64 > capacity {
                return Err(err(
                    &["train"],
                    format!(
                        "family `{}` has {capacity} distinct tasks, fewer than `train` + `eval` = {}: lower `train` \
                         or leave the family out with `families`",
                        family.name(),
                        train + eval
                    ),
                ));
            }
        }
        if unsafe_train > refusals::train_capacity() {
            return Err(err(
                &["unsafe"],
                format!("at most {} distinct unsafe training prompts can be generated", refusals::train_capacity()),
            ));
        }
        if unsafe_eval > refusals::eval_capacity() {
            return Err(err(
                &["unsafe_eval"],
                format!("at most {} distinct held-out unsafe prompts can be generated", refusals::eval_capacity()),
            ));
        }
        Ok(Params { seed, train, eval, unsafe_train, unsafe_eval, corpus, families })
    }
}

fn parse_families(v: &Value) -> Result<Vec<Family>, ParamError> {
    let help =
        || format!("a list of family names, e.g. `[\"reverse\", \"add\"]`; the families are {}", Family::names());
    let items = v.as_array().ok_or_else(|| err(&["families"], format!("expected {}", help())))?;
    if items.is_empty() {
        return Err(err(&["families"], format!("the list is empty: give {}", help())));
    }
    let mut families = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = i.to_string();
        let name = item
            .as_str()
            .ok_or_else(|| err(&["families", &at], format!("expected a family name, found {}", kind(item))))?;
        let family = Family::from_name(name).ok_or_else(|| {
            err(&["families", &at], format!("unknown family `{name}`: the families are {}", Family::names()))
        })?;
        if families.contains(&family) {
            return Err(err(&["families", &at], format!("family `{name}` is listed twice")));
        }
        families.push(family);
    }
    families.sort_unstable_by_key(|f| f.index());
    Ok(families)
}

fn err(path: &[&str], message: impl Into<String>) -> ParamError {
    ParamError::new(path, message)
}

/// How a JSON value is called in messages; params come from TOML, so objects are "tables".
fn kind(v: &Value) -> &'static str {
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

/// Shows the offending number itself, since "found an integer" does not explain why `-1` is refused.
fn describe(v: &Value) -> String {
    match v {
        Value::Number(n) => format!("`{n}`"),
        other => kind(other).to_owned(),
    }
}
