//! Reading the JSONL inputs and joining them into the items to judge. Every error names the input, the file
//! and the line, because the file is usually another stage's output and the user has to find the row.
//!
//! Rows are objects with an `id` (string or integer, unique per file) and the response in `field`
//! (`response` by default), as `candle-lm:sample` writes them. The instruction an item is judged on is, in
//! order: the `instruction` (else `prompt`) of the row with the same id in the optional `prompts` input; the
//! row's own `instruction`; its `prompt`. (`candle-lm:sample` passes the dataset's raw `instruction` through,
//! while its `prompt` is the chat-templated text the model saw.)

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use api::{Error, OpContext};
use serde_json::{Map, Value};

/// One row of an input.
pub(crate) struct Row {
    /// 1-based line number, for messages.
    pub line: usize,
    /// The row's `id`, kept as written so outputs echo it unchanged.
    pub id: Value,
    pub fields: Map<String, Value>,
}

/// An input read in full.
pub(crate) struct Input {
    pub name: String,
    pub path: PathBuf,
    pub rows: Vec<Row>,
}

impl Input {
    /// Prefix of messages about `line`: ``input `a` (`/x/y.jsonl`) line 3``.
    pub fn at(&self, line: usize) -> String {
        format!("input `{}` (`{}`) line {line}", self.name, self.path.display())
    }

    /// A row's string field `key`, or an error naming file, line and field.
    pub fn text<'r>(&self, row: &'r Row, key: &str) -> Result<&'r str, Error> {
        match row.fields.get(key) {
            Some(Value::String(s)) => Ok(s),
            None => Err(Error::Failed(format!("{}: no field `{key}`", self.at(row.line)))),
            Some(other) => Err(Error::Failed(format!(
                "{}: field `{key}` must be a string, not {}",
                self.at(row.line),
                short(other)
            ))),
        }
    }

    /// The row's own instruction: `instruction`, else `prompt`.
    fn own_instruction<'r>(&self, row: &'r Row) -> Result<Option<&'r str>, Error> {
        for key in ["instruction", "prompt"] {
            if row.fields.contains_key(key) {
                return self.text(row, key).map(Some);
            }
        }
        Ok(None)
    }

    /// The rows by id (the id's JSON text, so `1` and `"1"` stay distinct).
    fn by_id(&self) -> BTreeMap<String, &Row> {
        self.rows.iter().map(|r| (r.id.to_string(), r)).collect()
    }
}

fn short(v: &Value) -> String {
    let text = v.to_string();
    if text.chars().count() > 60 { format!("{}…", text.chars().take(60).collect::<String>()) } else { text }
}

/// One item to judge.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Item {
    pub id: Value,
    pub instruction: String,
    /// The response judged (`responses`), or model `a`'s.
    pub a: String,
    /// Model `b`'s response (pairwise protocols only).
    pub b: Option<String>,
}

/// The items of a single-response op: input `responses`, optional `prompts`.
pub(crate) fn single(ctx: &OpContext<'_>, field: &str) -> Result<Vec<Item>, Error> {
    let responses = read(ctx, "responses")?;
    let prompts = optional(ctx, "prompts")?;
    let prompt_ids = prompts.as_ref().map(Input::by_id);
    let mut items = Vec::with_capacity(responses.rows.len());
    for row in &responses.rows {
        let instruction = instruction_of(&responses, row, prompts.as_ref().zip(prompt_ids.as_ref()))?;
        items.push(Item { id: row.id.clone(), instruction, a: responses.text(row, field)?.to_string(), b: None });
    }
    Ok(items)
}

/// The items of a pairwise op: inputs `a` and `b` joined by id (in `a`'s order; both must hold the same ids),
/// optional `prompts`.
pub(crate) fn pairs(ctx: &OpContext<'_>, field: &str) -> Result<Vec<Item>, Error> {
    let a = read(ctx, "a")?;
    let b = read(ctx, "b")?;
    let prompts = optional(ctx, "prompts")?;
    let prompt_ids = prompts.as_ref().map(Input::by_id);
    let (a_ids, b_ids) = (a.by_id(), b.by_id());
    // A comparison on different item sets is not paired: every id must be in both.
    if let Some(orphan) = b.rows.iter().find(|r| !a_ids.contains_key(&r.id.to_string())) {
        return Err(Error::Failed(format!(
            "{}: id {} has no row in input `a` (`{}`)",
            b.at(orphan.line),
            orphan.id,
            a.path.display()
        )));
    }
    let mut items = Vec::with_capacity(a.rows.len());
    for row in &a.rows {
        let Some(b_row) = b_ids.get(&row.id.to_string()) else {
            return Err(Error::Failed(format!(
                "{}: id {} has no row in input `b` (`{}`)",
                a.at(row.line),
                row.id,
                b.path.display()
            )));
        };
        let instruction = instruction_of(&a, row, prompts.as_ref().zip(prompt_ids.as_ref()))?;
        // Without a `prompts` input both rows carry the instruction; they must agree, or the join is wrong.
        if prompts.is_none()
            && let Some(other) = b.own_instruction(b_row)?
            && other != instruction
        {
            return Err(Error::Failed(format!(
                "{}: id {} has a different instruction than {} in input `a`; the two inputs are not answers to \
                 the same prompts (or give a `prompts` input to say which instruction to judge on)",
                b.at(b_row.line),
                row.id,
                a.at(row.line)
            )));
        }
        items.push(Item {
            id: row.id.clone(),
            instruction,
            a: a.text(row, field)?.to_string(),
            b: Some(b.text(b_row, field)?.to_string()),
        });
    }
    Ok(items)
}

/// The instruction of `row` of `input` (see the module doc).
fn instruction_of(
    input: &Input,
    row: &Row,
    prompts: Option<(&Input, &BTreeMap<String, &Row>)>,
) -> Result<String, Error> {
    if let Some((prompts, by_id)) = prompts {
        let Some(p) = by_id.get(&row.id.to_string()) else {
            return Err(Error::Failed(format!(
                "{}: id {} has no row in input `prompts` (`{}`)",
                input.at(row.line),
                row.id,
                prompts.path.display()
            )));
        };
        return match prompts.own_instruction(p)? {
            Some(text) => Ok(text.to_string()),
            None => Err(Error::Failed(format!("{}: no field `instruction` or `prompt`", prompts.at(p.line)))),
        };
    }
    match input.own_instruction(row)? {
        Some(text) => Ok(text.to_string()),
        None => Err(Error::Failed(format!(
            "{}: no field `instruction` or `prompt` to judge the response against; add one, or give the stage \
             a `prompts` input",
            input.at(row.line)
        ))),
    }
}

fn optional(ctx: &OpContext<'_>, name: &str) -> Result<Option<Input>, Error> {
    if ctx.inputs.contains_key(name) { read(ctx, name).map(Some) } else { Ok(None) }
}

/// The file behind input `name`: the path itself, or the one `.jsonl` file in it when it is a directory (a whole
/// stage output given as the input).
fn resolve(name: &str, path: &Path) -> Result<PathBuf, Error> {
    if !path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| Error::Failed(format!("input `{name}`: cannot list `{}`: {e}", path.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(Error::Failed(format!("input `{name}` is a directory with no .jsonl file: `{}`", path.display()))),
        _ => {
            let names: Vec<String> =
                found.iter().filter_map(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()).collect();
            Err(Error::Failed(format!(
                "input `{name}` is a directory with several .jsonl files ({}): name one as the input",
                names.join(", ")
            )))
        }
    }
}

/// Reads input `name`. Blank lines are skipped; anything else must be a JSON object with a string or integer
/// `id`, unique in the file.
fn read(ctx: &OpContext<'_>, name: &str) -> Result<Input, Error> {
    let path = resolve(name, ctx.input(name)?)?;
    let file = std::fs::File::open(&path)
        .map_err(|e| Error::Failed(format!("input `{name}`: cannot open `{}`: {e}", path.display())))?;
    let mut input = Input { name: name.into(), path, rows: Vec::new() };
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let n = i + 1;
        if n.is_multiple_of(1024) && ctx.cancelled() {
            return Err(Error::Cancelled);
        }
        let line = line.map_err(|e| Error::Failed(format!("{}: cannot read: {e}", input.at(n))))?;
        if line.trim().is_empty() {
            continue;
        }
        let fields = match serde_json::from_str::<Value>(&line) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err(Error::Failed(format!("{}: not a JSON object", input.at(n)))),
            Err(e) => return Err(Error::Failed(format!("{}: not JSON: {e}", input.at(n)))),
        };
        let id = match fields.get("id") {
            Some(id @ Value::String(_)) => id.clone(),
            Some(id @ Value::Number(x)) if x.is_i64() || x.is_u64() => id.clone(),
            None => return Err(Error::Failed(format!("{}: no field `id`", input.at(n)))),
            Some(other) => {
                return Err(Error::Failed(format!(
                    "{}: field `id` must be a string or an integer, not {}",
                    input.at(n),
                    short(other)
                )));
            }
        };
        if let Some(first) = seen.insert(id.to_string(), n) {
            return Err(Error::Failed(format!("{}: id {id} already appears on line {first}", input.at(n))));
        }
        input.rows.push(Row { line: n, id, fields });
    }
    Ok(input)
}
