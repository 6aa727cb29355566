//! The stage's params, parsed by hand from canonical JSON (so that every error carries its path inside `params`),
//! and resolved against the stage's input names by the same code at plan time and at run time.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use super::kind::Kind;
use crate::builtin::ParamError;

const TOP_KEYS: &[&str] = &["curves", "tables", "title"];
const TABLE_KEYS: &[&str] = &["cell", "columns", "id", "kind", "note", "plot", "row_title", "rows", "title"];
const AXIS_KEYS: &[&str] = &["id", "kind", "label"];
const CURVE_KEYS: &[&str] = &["id", "series", "title"];
const SERIES_KEYS: &[&str] = &["input", "label"];

/// The report as the params describe it, before it meets the inputs.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Spec {
    /// The heading of `report.md`.
    pub title: String,
    pub tables: Vec<TableSpec>,
    pub curves: Vec<CurveSpec>,
}

/// One table: rows × columns of cells, each read from the input the `cell` pattern names.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct TableSpec {
    /// Names the plot file (`<id>.svg`) and the table in `report.csv` and `report.json`.
    pub id: String,
    pub title: String,
    /// The header of the row-label column.
    pub row_title: String,
    pub rows: Vec<Axis>,
    /// At least one; a table written without `columns` has one column named after its kind.
    pub columns: Vec<Axis>,
    /// The cell's input name with `{{row}}` and `{{column}}` placeholders.
    pub cell: String,
    pub plot: Plot,
    pub note: Option<String>,
}

/// A row or a column: its id (what the cell pattern sees) and its label (what people see), and for a column the
/// kind of its cells.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Axis {
    pub id: String,
    pub label: String,
    /// Set for columns (the column's `kind`, else the table's); `None` for rows.
    pub kind: Option<Kind>,
}

/// How a table is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Plot {
    /// Grouped bars with error bars: one group per row, one bar per column.
    Bars,
    /// One line per column over the rows, with error bars; rows whose ids are numbers are placed by value.
    Lines,
    /// No plot.
    None,
}

/// One plot of training curves (loss over steps).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct CurveSpec {
    /// Names the plot file (`<id>.svg`).
    pub id: String,
    pub title: String,
    pub series: Vec<SeriesSpec>,
}

/// A curve's series as written: one input, or every input matching a pattern with one `*`.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum SeriesSpec {
    /// One input, labelled by `label` (the input's name if not given).
    Input { input: String, label: String },
    /// Inputs named `prefix…suffix`, in name order, each labelled by the part `*` matched.
    Pattern { prefix: String, suffix: String },
}

/// A table whose cells are known inputs.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Resolved {
    pub spec: Spec,
    /// Per table, per row, per column: the cell's input name.
    pub cells: Vec<Vec<Vec<String>>>,
    /// Per curve: (label, input name) of each series.
    pub series: Vec<Vec<(String, String)>>,
}

impl Spec {
    /// Parses and checks `params` (a table).
    pub(super) fn parse(params: &Value) -> Result<Spec, ParamError> {
        let top = table(params, &[])?;
        unknown_keys(top, TOP_KEYS, &[])?;
        let title = optional_text(top, "title", &[])?.unwrap_or_else(|| "Report".to_string());
        let tables = match top.get("tables") {
            None => vec![],
            Some(v) => list(v, &["tables"])?
                .iter()
                .enumerate()
                .map(|(i, t)| TableSpec::parse(t, &i.to_string()))
                .collect::<Result<_, _>>()?,
        };
        let curves = match top.get("curves") {
            None => vec![],
            Some(v) => list(v, &["curves"])?
                .iter()
                .enumerate()
                .map(|(i, c)| CurveSpec::parse(c, &i.to_string()))
                .collect::<Result<_, _>>()?,
        };
        if tables.is_empty() && curves.is_empty() {
            return Err(err(
                &[],
                "a report needs `tables` or `curves`, e.g. `tables = [{ id = \"win\", kind = \"win-rate\", rows = \
                 [\"llama\"], columns = [\"alpaca\"], cell = \"win-{{row}}-{{column}}\" }]`",
            ));
        }
        let mut ids = BTreeSet::new();
        let all_ids = tables.iter().map(|t| ("tables", &t.id)).chain(curves.iter().map(|c| ("curves", &c.id)));
        for (i, (what, id)) in all_ids.enumerate() {
            if !ids.insert(id.as_str()) {
                let at = if what == "tables" { i } else { i - tables.len() };
                return Err(err(
                    &[what, &at.to_string(), "id"],
                    format!("id `{id}` is used twice: ids name the plot files, so each table and curve needs its own"),
                ));
            }
        }
        Ok(Spec { title, tables, curves })
    }

    /// Finds every cell's and series' input among `inputs` (the stage's input names), and checks that every input
    /// is used: an unused one is almost always a misspelt name.
    pub(super) fn resolve(self, inputs: &[&str]) -> Result<Resolved, ParamError> {
        let known: BTreeSet<&str> = inputs.iter().copied().collect();
        let mut used: BTreeSet<&str> = BTreeSet::new();
        let mut cells = Vec::with_capacity(self.tables.len());
        for (t, table) in self.tables.iter().enumerate() {
            let at = t.to_string();
            let mut rows = Vec::with_capacity(table.rows.len());
            for row in &table.rows {
                let mut line = Vec::with_capacity(table.columns.len());
                for column in &table.columns {
                    let name = table.cell.replace(ROW, &row.id).replace(COLUMN, &column.id);
                    if !known.contains(name.as_str()) {
                        let which = if table.columns.len() == 1 && column.id.is_empty() {
                            format!("row `{}`", row.id)
                        } else {
                            format!("row `{}`, column `{}`", row.id, column.id)
                        };
                        return Err(err(
                            &["tables", &at, "cell"],
                            format!(
                                "the cell at {which} reads input `{name}`, which the stage does not declare{}",
                                suggest(&name, &known)
                            ),
                        ));
                    }
                    used.insert(known.get(name.as_str()).expect("checked"));
                    line.push(name);
                }
                rows.push(line);
            }
            cells.push(rows);
        }
        let mut series = Vec::with_capacity(self.curves.len());
        for (c, curve) in self.curves.iter().enumerate() {
            let at = c.to_string();
            let mut out: Vec<(String, String)> = Vec::new();
            for (s, spec) in curve.series.iter().enumerate() {
                let path = ["curves", at.as_str(), "series", &s.to_string()];
                let found: Vec<(String, String)> = match spec {
                    SeriesSpec::Input { input, label } => {
                        if !known.contains(input.as_str()) {
                            return Err(err(
                                &path,
                                format!("input `{input}` is not declared by the stage{}", suggest(input, &known)),
                            ));
                        }
                        vec![(label.clone(), input.clone())]
                    }
                    SeriesSpec::Pattern { prefix, suffix } => {
                        let matched: Vec<(String, String)> = known
                            .iter()
                            .filter(|n| {
                                n.len() > prefix.len() + suffix.len() && n.starts_with(prefix) && n.ends_with(suffix)
                            })
                            .map(|n| (n[prefix.len()..n.len() - suffix.len()].to_string(), n.to_string()))
                            .collect();
                        if matched.is_empty() {
                            return Err(err(
                                &path,
                                format!("`{prefix}*{suffix}` matches none of the stage's inputs ({})", names(&known)),
                            ));
                        }
                        matched
                    }
                };
                for (label, input) in found {
                    if out.iter().any(|(_, i)| *i == input) {
                        return Err(err(&path, format!("input `{input}` is already a series of this curve")));
                    }
                    used.insert(known.get(input.as_str()).expect("matched among the known"));
                    out.push((label, input));
                }
            }
            series.push(out);
        }
        if let Some(unused) = known.iter().find(|n| !used.contains(*n)) {
            return Err(err(
                &[],
                format!(
                    "input `{unused}` is read by no table cell and no curve: use it, or remove it from the stage's \
                     inputs"
                ),
            ));
        }
        Ok(Resolved { spec: self, cells, series })
    }
}

const ROW: &str = "{{row}}";
const COLUMN: &str = "{{column}}";

impl TableSpec {
    fn parse(v: &Value, at: &str) -> Result<TableSpec, ParamError> {
        let here = ["tables", at];
        let t = table(v, &here)?;
        unknown_keys(t, TABLE_KEYS, &here)?;
        let id = file_id(t, &here)?;
        let title = optional_text(t, "title", &here)?.unwrap_or_else(|| id.clone());
        let row_title = optional_text(t, "row_title", &here)?.unwrap_or_default();
        let note = optional_text(t, "note", &here)?;
        let kind = match t.get("kind") {
            None => None,
            Some(k) => Some(parse_kind(k, &["tables", at, "kind"])?),
        };
        let rows = axis_list(t.get("rows"), &["tables", at, "rows"], None)?
            .ok_or_else(|| err(&here, "no `rows`: give a list of row ids, e.g. `rows = [\"rt\", \"it\"]`"))?;
        let columns = match axis_list(t.get("columns"), &["tables", at, "columns"], kind)? {
            Some(columns) => columns,
            None => {
                let kind = kind.ok_or_else(|| {
                    err(&here, format!("no `kind` (and no `columns` that give one): kinds are {}", Kind::names()))
                })?;
                vec![Axis { id: String::new(), label: kind.label().to_string(), kind: Some(kind) }]
            }
        };
        let cell = parse_cell(t, &["tables", at, "cell"], rows.len(), columns.len(), columns[0].id.is_empty())?;
        let plot = match t.get("plot") {
            None if rows.len() > 1 && rows.iter().all(|r| numeric(&r.id).is_some()) => Plot::Lines,
            None => Plot::Bars,
            Some(Value::String(s)) if s == "bars" => Plot::Bars,
            Some(Value::String(s)) if s == "lines" => Plot::Lines,
            Some(Value::String(s)) if s == "none" => Plot::None,
            Some(other) => {
                return Err(err(
                    &["tables", at, "plot"],
                    format!("expected `\"bars\"`, `\"lines\"` or `\"none\"`, found {}", describe(other)),
                ));
            }
        };
        if plot != Plot::None {
            let percent: BTreeSet<bool> = columns.iter().filter_map(|c| c.kind).map(Kind::percent).collect();
            if percent.len() > 1 {
                return Err(err(
                    &["tables", at, "plot"],
                    "the table mixes rates (percent) and ratings, which cannot share an axis: set `plot = \"none\"` \
                     or make two tables",
                ));
            }
        }
        Ok(TableSpec { id, title, row_title, rows, columns, cell, plot, note })
    }
}

impl CurveSpec {
    fn parse(v: &Value, at: &str) -> Result<CurveSpec, ParamError> {
        let here = ["curves", at];
        let t = table(v, &here)?;
        unknown_keys(t, CURVE_KEYS, &here)?;
        let id = file_id(t, &here)?;
        let title = optional_text(t, "title", &here)?.unwrap_or_else(|| id.clone());
        let items = match t.get("series") {
            None => {
                return Err(err(
                    &here,
                    "no `series`: list the inputs holding `metrics.jsonl`, e.g. `series = [\"loss-rt\", \
                     \"loss-it\"]` or `series = [\"loss-*\"]`",
                ));
            }
            Some(v) => list(v, &["curves", at, "series"])?,
        };
        let mut series = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let idx = i.to_string();
            let path = ["curves", at, "series", idx.as_str()];
            series.push(match item {
                Value::String(s) => series_of(s, None, &path)?,
                Value::Object(m) => {
                    unknown_keys(m, SERIES_KEYS, &path)?;
                    let input = match m.get("input") {
                        Some(Value::String(s)) => s.clone(),
                        Some(other) => {
                            return Err(err(
                                &["curves", at, "series", &idx, "input"],
                                format!("expected an input name, found {}", describe(other)),
                            ));
                        }
                        None => return Err(err(&path, "no `input`: write `{ input = \"loss-rt\", label = \"RT\" }`")),
                    };
                    let label = optional_text(m, "label", &path)?;
                    series_of(&input, label, &path)?
                }
                other => {
                    return Err(err(
                        &path,
                        format!("expected an input name or `{{ input, label }}`, found {}", describe(other)),
                    ));
                }
            });
        }
        Ok(CurveSpec { id, title, series })
    }
}

fn series_of(text: &str, label: Option<String>, path: &[&str]) -> Result<SeriesSpec, ParamError> {
    match text.split_once('*') {
        None if text.is_empty() => Err(err(path, "the input name is empty")),
        None => Ok(SeriesSpec::Input { input: text.to_string(), label: label.unwrap_or_else(|| text.to_string()) }),
        Some((_, rest)) if rest.contains('*') => Err(err(path, format!("`{text}` has more than one `*`"))),
        Some(_) if label.is_some() => Err(err(
            path,
            format!("`{text}` is a pattern, whose series are labelled by what `*` matches: drop `label`"),
        )),
        Some((prefix, suffix)) => Ok(SeriesSpec::Pattern { prefix: prefix.to_string(), suffix: suffix.to_string() }),
    }
}

/// The `cell` pattern, checked: only `{{row}}` and `{{column}}` placeholders (spaces inside the braces allowed,
/// and normalised away), each present when its axis has more than one entry.
fn parse_cell(
    t: &Map<String, Value>,
    path: &[&str],
    rows: usize,
    columns: usize,
    anonymous_column: bool,
) -> Result<String, ParamError> {
    let text = match t.get("cell") {
        Some(Value::String(s)) => s,
        Some(other) => return Err(err(path, format!("expected a string, found {}", describe(other)))),
        None => {
            return Err(err(
                &path[..path.len() - 1],
                "no `cell`: give the input name of each cell with `{{row}}` and `{{column}}` placeholders, e.g. \
                 `cell = \"win-{{row}}-{{column}}\"`",
            ));
        }
    };
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let Some(len) = rest[start + 2..].find("}}") else {
            return Err(err(path, format!("`{text}`: `{{{{` without a closing `}}}}`")));
        };
        let name = rest[start + 2..start + 2 + len].trim();
        match name {
            "row" => out.push_str(ROW),
            "column" if anonymous_column => {
                return Err(err(path, format!("`{text}` uses `{{{{column}}}}`, but the table has no `columns`")));
            }
            "column" => out.push_str(COLUMN),
            other => {
                return Err(err(
                    path,
                    format!("`{text}`: unknown placeholder `{{{{{other}}}}}`; use `{{{{row}}}}` and `{{{{column}}}}`"),
                ));
            }
        }
        rest = &rest[start + 2 + len + 2..];
    }
    out.push_str(rest);
    if rows > 1 && !out.contains(ROW) {
        return Err(err(path, format!("`{text}` has no `{{{{row}}}}`, so every row would read the same input")));
    }
    if columns > 1 && !out.contains(COLUMN) {
        return Err(err(path, format!("`{text}` has no `{{{{column}}}}`, so every column would read the same input")));
    }
    Ok(out)
}

/// Rows or columns: each an id (a string or an integer, e.g. a number of refusal examples) or
/// `{ id, label, kind }`; `None` when absent. `kind` is the table's, which a column may override; rows take none.
fn axis_list(v: Option<&Value>, path: &[&str], kind: Option<Kind>) -> Result<Option<Vec<Axis>>, ParamError> {
    let Some(v) = v else { return Ok(None) };
    let is_rows = path.last() == Some(&"rows");
    let items = list(v, path)?;
    if items.is_empty() {
        return Err(err(path, "the list is empty"));
    }
    let mut out: Vec<Axis> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let idx = i.to_string();
        let mut here: Vec<&str> = path.to_vec();
        here.push(&idx);
        let (id, label, own_kind) = match item {
            Value::Object(m) => {
                unknown_keys(m, AXIS_KEYS, &here)?;
                let id = match m.get("id") {
                    Some(v) => axis_id(v, &[&here[..], &["id"]].concat())?,
                    None => return Err(err(&here, "no `id`: write `{ id = \"rt\", label = \"RT\" }`")),
                };
                let label = optional_text(m, "label", &here)?.unwrap_or_else(|| id.clone());
                let own_kind = match m.get("kind") {
                    None => None,
                    Some(_) if is_rows => {
                        return Err(err(
                            &[&here[..], &["kind"]].concat(),
                            "rows take no `kind`: set it on the table or a column",
                        ));
                    }
                    Some(k) => Some(parse_kind(k, &[&here[..], &["kind"]].concat())?),
                };
                (id, label, own_kind)
            }
            other => {
                let id = axis_id(other, &here)?;
                (id.clone(), id, None)
            }
        };
        if out.iter().any(|a| a.id == id) {
            return Err(err(&here, format!("id `{id}` is listed twice")));
        }
        let kind = if is_rows {
            None
        } else {
            Some(own_kind.or(kind).ok_or_else(|| {
                err(&here, format!("no `kind` for this column, nor for the table: kinds are {}", Kind::names()))
            })?)
        };
        out.push(Axis { id, label, kind });
    }
    Ok(Some(out))
}

fn axis_id(v: &Value, path: &[&str]) -> Result<String, ParamError> {
    let id = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) if n.is_i64() || n.is_u64() => n.to_string(),
        other => return Err(err(path, format!("expected an id (a string or an integer), found {}", describe(other)))),
    };
    if id.is_empty() || id.contains("{{") || id.contains("}}") {
        return Err(err(path, format!("`{id}` cannot be an id: it must be non-empty, without `{{{{` or `}}}}`")));
    }
    Ok(id)
}

fn parse_kind(v: &Value, path: &[&str]) -> Result<Kind, ParamError> {
    let name = v.as_str().ok_or_else(|| err(path, format!("expected a kind name, found {}", describe(v))))?;
    Kind::from_name(name).ok_or_else(|| err(path, format!("unknown kind `{name}`: kinds are {}", Kind::names())))
}

/// An `id` that names a file: letters, digits, `-` and `_`, starting with a letter or digit.
fn file_id(t: &Map<String, Value>, here: &[&str]) -> Result<String, ParamError> {
    let path = [here, &["id"]].concat();
    let id = match t.get("id") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => return Err(err(&path, format!("expected a string, found {}", describe(other)))),
        None => return Err(err(here, "no `id`: it names the plot file, e.g. `id = \"win-rate\"`")),
    };
    let ok = id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && id.len() <= 64
        && id != "report";
    if !ok {
        return Err(err(
            &path,
            format!(
                "`{id}` cannot name a file: use letters, digits, `-` and `_` (at most 64), starting with a letter or \
                 digit, and not `report`"
            ),
        ));
    }
    Ok(id)
}

/// The number a row id stands for, if it is one (for placing rows on a numeric axis).
pub(super) fn numeric(id: &str) -> Option<f64> {
    id.parse::<f64>().ok().filter(|x| x.is_finite())
}

fn table<'a>(v: &'a Value, path: &[&str]) -> Result<&'a Map<String, Value>, ParamError> {
    v.as_object().ok_or_else(|| err(path, format!("expected a table, found {}", describe(v))))
}

fn list<'a>(v: &'a Value, path: &[&str]) -> Result<&'a Vec<Value>, ParamError> {
    v.as_array().ok_or_else(|| err(path, format!("expected a list, found {}", describe(v))))
}

fn optional_text(t: &Map<String, Value>, key: &str, here: &[&str]) -> Result<Option<String>, ParamError> {
    match t.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(err(&[here, &[key]].concat(), format!("expected a string, found {}", describe(other)))),
    }
}

fn unknown_keys(t: &Map<String, Value>, valid: &[&str], here: &[&str]) -> Result<(), ParamError> {
    if let Some(key) = t.keys().find(|k| !valid.contains(&k.as_str())) {
        let list = valid.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ");
        return Err(err(&[here, &[key.as_str()]].concat(), format!("unknown key `{key}`: valid keys are {list}")));
    }
    Ok(())
}

/// ", did you mean `x`?" when a declared input is close to `name`.
fn suggest(name: &str, known: &BTreeSet<&str>) -> String {
    let close = known
        .iter()
        .map(|k| (strsim::levenshtein(name, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(b.1)));
    match close {
        Some((_, k)) => format!(": did you mean `{k}`?"),
        None => format!(" (inputs: {})", names(known)),
    }
}

fn names(known: &BTreeSet<&str>) -> String {
    if known.is_empty() {
        return "none".into();
    }
    let shown: Vec<String> = known.iter().take(12).map(|k| format!("`{k}`")).collect();
    let more = known.len().saturating_sub(12);
    if more > 0 { format!("{}, and {more} more", shown.join(", ")) } else { shown.join(", ") }
}

fn err(path: &[&str], message: impl Into<String>) -> ParamError {
    ParamError::new(path, message)
}

/// How a JSON value is called in messages; params come from TOML, so objects are "tables".
fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(_) => "a boolean".into(),
        Value::Number(n) => format!("`{n}`"),
        Value::String(s) => format!("`\"{s}\"`"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a table".into(),
    }
}
