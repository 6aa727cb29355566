//! Reading a stage's JSONL inputs, for plugins: one JSON object per line, each with an `id`. Every error names
//! the input, the file and the line, because the file is usually another stage's output and the user has to
//! find the row. (judge-rules and judge-openai read their inputs with it.)

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use crate::{Error, OpContext};
use serde_json::{Map, Value};

/// One row of an input.
pub struct Row {
    /// 1-based line number, for messages.
    pub line: usize,
    /// The row's `id`: a string or an integer, kept as written so outputs echo it unchanged.
    pub id: Value,
    /// The whole object.
    pub fields: Map<String, Value>,
}

/// An input read in full.
pub struct Input {
    /// The input's name in the stage (`responses`, `references`).
    pub name: String,
    /// The file read.
    pub path: PathBuf,
    /// Its rows, in file order.
    pub rows: Vec<Row>,
}

impl Input {
    /// Prefix of messages about `line`: `input `responses` (`/x/y.jsonl`) line 3`.
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

    /// The rows by id (the id's JSON text, so `1` and `"1"` stay distinct, as they are distinct ids).
    pub fn by_id(&self) -> BTreeMap<String, &Row> {
        self.rows.iter().map(|r| (r.id.to_string(), r)).collect()
    }
}

/// A value as shown in a message: its JSON text, cut after 60 characters (a field may hold a whole document).
fn short(v: &Value) -> String {
    let text = v.to_string();
    if text.chars().count() > 60 { format!("{}…", text.chars().take(60).collect::<String>()) } else { text }
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

/// Reads input `name` of `ctx`. Blank lines are skipped (a trailing newline or two is common); anything else
/// must be a JSON object with a string or integer `id`, unique in the file.
pub fn read(ctx: &OpContext<'_>, name: &str) -> Result<Input, Error> {
    let path = resolve(name, ctx.input(name)?)?;
    let file = std::fs::File::open(&path)
        .map_err(|e| Error::Failed(format!("input `{name}`: cannot open `{}`: {e}", path.display())))?;
    let mut input = Input { name: name.into(), path, rows: Vec::new() };
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let n = i + 1;
        // Reading is fast, but a file can be millions of rows: stay responsive to a stop request.
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
        // Duplicate ids would make per-item records ambiguous and the join of exact-match arbitrary.
        if let Some(first) = seen.insert(id.to_string(), n) {
            return Err(Error::Failed(format!("{}: id {id} already appears on line {first}", input.at(n))));
        }
        input.rows.push(Row { line: n, id, fields });
    }
    Ok(input)
}
