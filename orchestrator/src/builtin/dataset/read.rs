//! File formats: JSONL, JSON, CSV and Parquet, each read into the same [`Row`] (a JSON object and its location),
//! so that field mapping and its error messages are written once.
//!
//! Rows are streamed to a callback, which can stop early: `first = 1000` never looks past row 1,000, so a
//! malformed tail of a large file does not stop a study that does not use it.

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::ops::ControlFlow;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use serde_json::{Map, Value};

/// A supported file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    /// One JSON object per line (`.jsonl`, `.ndjson`); blank lines are skipped.
    Jsonl,
    /// An array of objects, or an object whose `data` is such an array (`.json`).
    Json,
    /// A header line, then one record per line (`.csv`); every value is a string.
    Csv,
    /// Apache Parquet (`.parquet`), snappy- or gzip-compressed or uncompressed.
    Parquet,
}

impl Format {
    /// For messages listing the valid names.
    pub(super) const NAMES: &'static str = "`jsonl`, `json`, `csv`, `parquet`";

    pub(super) fn from_name(name: &str) -> Option<Format> {
        Some(match name {
            "jsonl" => Format::Jsonl,
            "json" => Format::Json,
            "csv" => Format::Csv,
            "parquet" => Format::Parquet,
            _ => return None,
        })
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Format::Jsonl => "jsonl",
            Format::Json => "json",
            Format::Csv => "csv",
            Format::Parquet => "parquet",
        }
    }

    /// The format named by `path`'s extension or, failing that, by its first bytes: artifacts handed over from
    /// the cache may be stored under a digest with no extension at all.
    pub(super) fn infer(path: &Path) -> Result<Format> {
        let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("jsonl" | "ndjson") => return Ok(Format::Jsonl),
            Some("json") => return Ok(Format::Json),
            Some("csv") => return Ok(Format::Csv),
            Some("parquet") => return Ok(Format::Parquet),
            _ => {}
        }
        let mut head = Vec::new();
        File::open(path)
            .and_then(|f| f.take(64 * 1024).read_to_end(&mut head))
            .with_context(|| format!("cannot read `{}`", path.display()))?;
        let text = String::from_utf8_lossy(&head);
        let trimmed = text.trim_start_matches('\u{feff}').trim_start();
        if head.starts_with(b"PAR1") {
            Ok(Format::Parquet)
        } else if trimmed.starts_with('[') {
            Ok(Format::Json)
        } else if trimmed.starts_with('{') {
            // One complete object on the first line means JSONL; a pretty-printed `{"data": [...]}` spans lines.
            let first_line = trimmed.lines().next().unwrap_or_default();
            if serde_json::from_str::<Value>(first_line).is_ok() { Ok(Format::Jsonl) } else { Ok(Format::Json) }
        } else {
            bail!(
                "cannot tell the format of `{}` from its name or its first bytes: set the source's `format` to one of {}",
                path.display(),
                Format::NAMES
            )
        }
    }
}

/// Where a row sits in its file, as shown in messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Loc {
    /// 1-based line (JSONL), or the line a CSV record starts on.
    Line(u64),
    /// 0-based index in a JSON array.
    Element(usize),
    /// 0-based row of a Parquet file.
    Row(usize),
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Loc::Line(n) => write!(f, "line {n}"),
            Loc::Element(n) => write!(f, "element {n}"),
            Loc::Row(n) => write!(f, "row {n}"),
        }
    }
}

/// One record of a data file.
#[derive(Debug)]
pub(super) struct Row {
    /// 0-based position among the file's rows (blank JSONL lines are not rows); part of the example's id.
    pub index: usize,
    pub loc: Loc,
    pub fields: Map<String, Value>,
}

/// What the callback of [`for_each_row`] sees besides the row.
pub(super) type Visit<'a> = dyn FnMut(Row) -> Result<ControlFlow<()>> + 'a;

/// Streams the rows of `path` to `visit` until it breaks or the file ends; returns the number of rows visited.
/// A file without any row is an error, since a source that silently contributes nothing hides a wrong path.
pub(super) fn for_each_row(path: &Path, format: Format, visit: &mut Visit<'_>) -> Result<usize> {
    let shown = path.display();
    let file = File::open(path).with_context(|| format!("cannot open `{shown}`"))?;
    let rows = match format {
        Format::Jsonl => jsonl(BufReader::new(file), path, visit)?,
        Format::Json => json(BufReader::new(file), path, visit)?,
        Format::Csv => csv(file, path, visit)?,
        Format::Parquet => parquet(file, path, visit)?,
    };
    if rows == 0 {
        bail!("`{shown}` holds no rows (read as {})", format.name());
    }
    Ok(rows)
}

fn jsonl(mut reader: impl BufRead, path: &Path, visit: &mut Visit<'_>) -> Result<usize> {
    let shown = path.display();
    let mut buf = Vec::new();
    let mut line_no = 0u64;
    let mut index = 0usize;
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).with_context(|| format!("cannot read `{shown}`"))?;
        if n == 0 {
            return Ok(index);
        }
        line_no += 1;
        let line = std::str::from_utf8(&buf).map_err(|e| anyhow!("`{shown}` line {line_no}: not valid UTF-8 ({e})"))?;
        let line = if line_no == 1 { line.trim_start_matches('\u{feff}') } else { line };
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(line).map_err(|e| {
            anyhow!("`{shown}` line {line_no} column {}: invalid JSON: {}", e.column(), without_position(&e))
        })?;
        let Value::Object(fields) = value else {
            bail!("`{shown}` line {line_no}: expected a JSON object, found {}", json_kind(&value));
        };
        let row = Row { index, loc: Loc::Line(line_no), fields };
        index += 1;
        if visit(row)?.is_break() {
            return Ok(index);
        }
    }
}

fn json(reader: impl Read, path: &Path, visit: &mut Visit<'_>) -> Result<usize> {
    let shown = path.display();
    let value: Value = serde_json::from_reader(reader).map_err(|e| {
        if e.is_eof() && e.line() <= 1 && e.column() == 0 {
            anyhow!("`{shown}` is empty: expected a JSON array of objects")
        } else {
            anyhow!("`{shown}` line {} column {}: invalid JSON: {}", e.line(), e.column(), without_position(&e))
        }
    })?;
    let items = match value {
        Value::Array(items) => items,
        Value::Object(mut map) => match map.remove("data") {
            Some(Value::Array(items)) => items,
            _ => bail!("`{shown}`: expected a JSON array of objects, or an object whose `data` is one"),
        },
        other => bail!("`{shown}`: expected a JSON array of objects, found {}", json_kind(&other)),
    };
    let mut index = 0;
    for item in items {
        let Value::Object(fields) = item else {
            bail!("`{shown}` element {index}: expected a JSON object, found {}", json_kind(&item));
        };
        let row = Row { index, loc: Loc::Element(index), fields };
        index += 1;
        if visit(row)?.is_break() {
            break;
        }
    }
    Ok(index)
}

fn csv(file: File, path: &Path, visit: &mut Visit<'_>) -> Result<usize> {
    let shown = path.display();
    let mut reader = csv::ReaderBuilder::new().has_headers(true).from_reader(file);
    let headers = reader.headers().map_err(|e| csv_error(&e, path))?.clone();
    let mut index = 0;
    if headers.iter().any(|h| h.is_empty()) {
        bail!("`{shown}` line 1: the header has an empty column name");
    }
    let mut record = csv::StringRecord::new();
    loop {
        match reader.read_record(&mut record) {
            Ok(false) => return Ok(index),
            Ok(true) => {}
            Err(e) => return Err(csv_error(&e, path)),
        }
        let line = record.position().map_or(0, |p| p.line());
        let fields =
            headers.iter().zip(record.iter()).map(|(h, v)| (h.to_owned(), Value::String(v.to_owned()))).collect();
        let row = Row { index, loc: Loc::Line(line), fields };
        index += 1;
        if visit(row)?.is_break() {
            return Ok(index);
        }
    }
}

fn csv_error(e: &csv::Error, path: &Path) -> anyhow::Error {
    let shown = path.display();
    match e.kind() {
        csv::ErrorKind::UnequalLengths { pos: Some(pos), expected_len, len } => {
            anyhow!("`{shown}` line {}: the record has {len} field(s), but the header has {expected_len}", pos.line())
        }
        csv::ErrorKind::Utf8 { pos: Some(pos), err } => {
            anyhow!("`{shown}` line {}: field {} is not valid UTF-8", pos.line(), err.field() + 1)
        }
        _ => anyhow!("`{shown}`: invalid CSV: {e}"),
    }
}

fn parquet(file: File, path: &Path, visit: &mut Visit<'_>) -> Result<usize> {
    let shown = path.display();
    let reader = SerializedFileReader::new(file).map_err(|e| anyhow!("`{shown}`: not a readable Parquet file: {e}"))?;
    let rows = reader.get_row_iter(None).map_err(|e| anyhow!("`{shown}`: cannot read rows: {e}"))?;
    let mut index = 0;
    for row in rows {
        let row = row.map_err(|e| anyhow!("`{shown}` row {index}: cannot decode: {e}"))?;
        let fields = row.get_column_iter().map(|(name, field)| (name.clone(), field_to_json(field))).collect();
        let row = Row { index, loc: Loc::Row(index), fields };
        index += 1;
        if visit(row)?.is_break() {
            break;
        }
    }
    Ok(index)
}

/// Strings, numbers, lists and structs map to their JSON counterparts, so that "field `x` is an integer" reads the
/// same for every format. Binary data that is not UTF-8 becomes an array of bytes, which is never mistaken for
/// text; the few remaining logical types (dates, decimals) keep their display form.
fn field_to_json(field: &Field) -> Value {
    match field {
        Field::Null => Value::Null,
        Field::Bool(b) => Value::Bool(*b),
        Field::Byte(n) => Value::from(*n),
        Field::Short(n) => Value::from(*n),
        Field::Int(n) => Value::from(*n),
        Field::Long(n) => Value::from(*n),
        Field::UByte(n) => Value::from(*n),
        Field::UShort(n) => Value::from(*n),
        Field::UInt(n) => Value::from(*n),
        Field::ULong(n) => Value::from(*n),
        Field::Float(x) => serde_json::Number::from_f64(f64::from(*x)).map_or(Value::Null, Value::Number),
        Field::Double(x) => serde_json::Number::from_f64(*x).map_or(Value::Null, Value::Number),
        Field::Str(s) => Value::String(s.clone()),
        Field::Bytes(b) => match std::str::from_utf8(b.data()) {
            Ok(s) => Value::String(s.to_owned()),
            Err(_) => Value::Array(b.data().iter().map(|&x| Value::from(x)).collect()),
        },
        Field::Group(row) => Value::Object(row.get_column_iter().map(|(k, v)| (k.clone(), field_to_json(v))).collect()),
        Field::ListInternal(list) => Value::Array(list.elements().iter().map(field_to_json).collect()),
        Field::MapInternal(map) => Value::Array(
            map.entries().iter().map(|(k, v)| Value::Array(vec![field_to_json(k), field_to_json(v)])).collect(),
        ),
        other => Value::String(other.to_string()),
    }
}

/// How a data value is called in messages.
pub(super) fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Object(_) => "an object",
        other => super::params::kind(other),
    }
}

/// serde_json appends " at line L column C"; the caller already says where, in the project's words.
fn without_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}
