//! Reading the inputs: a judge's `summary.json` per cell, a training stage's `metrics.jsonl` per curve series.
//! An input may be the file itself (`judge.summary.json`) or the stage's whole output directory (`judge`), in
//! which the file is looked up by name. Every error names the input, the file and the field (or line).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Map, Value};

use super::doc::Cell;
use super::kind::Kind;

/// The file an input holds: the input itself, or `file_name` inside it when it is a directory.
fn locate(input: &str, path: &Path, file_name: &str) -> Result<PathBuf> {
    if !path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let inner = path.join(file_name);
    if inner.is_file() {
        return Ok(inner);
    }
    let mut entries: Vec<String> = std::fs::read_dir(path)
        .map(|rd| rd.flatten().map(|e| format!("`{}`", e.file_name().to_string_lossy())).collect())
        .unwrap_or_default();
    entries.sort();
    bail!(
        "input `{input}` is a directory without `{file_name}` (it holds {}): is it the right stage?",
        if entries.is_empty() { "nothing".to_string() } else { entries.join(", ") }
    )
}

/// Reads one cell of `kind` from the judge summary in input `input` at `path`.
pub(super) fn cell(input: &str, path: &Path, kind: Kind) -> Result<Cell> {
    let file = locate(input, path, "summary.json")?;
    let at = || format!("input `{input}` (`{}`)", file.display());
    let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", at()))?;
    let value: Value = serde_json::from_str(&text).with_context(|| format!("{}: not JSON", at()))?;
    let Value::Object(summary) = value else {
        bail!("{}: expected a JSON object (a judge's `summary.json`)", at());
    };
    let mut cell = cell_of(&summary, kind).map_err(|e| anyhow!("{}: {e}", at()))?;
    cell.input = input.to_string();
    Ok(cell)
}

/// The cell in a parsed summary (its `input` left empty); errors name the field.
pub(super) fn cell_of(summary: &Map<String, Value>, kind: Kind) -> Result<Cell, String> {
    let protocol = match summary.get("protocol") {
        // Summaries written before judges named their protocol carry none: the fields alone decide.
        None | Some(Value::Null) => None,
        Some(Value::String(p)) if kind.protocols().contains(&p.as_str()) => Some(p.clone()),
        Some(Value::String(p)) => {
            let takes = kind.protocols().iter().map(|p| format!("`{p}`")).collect::<Vec<_>>().join(", ");
            return Err(format!(
                "field `protocol` is `{p}`, but a `{}` cell needs a summary of protocol {takes}",
                kind.name()
            ));
        }
        Some(other) => return Err(format!("field `protocol`: expected a string, found {}", describe(other))),
    };
    let field = kind.field();
    let value = match summary.get(field) {
        None => {
            let hint = match kind {
                Kind::LcWinRate if summary.contains_key("win_rate_a") => {
                    "; this judge gives no length-controlled win rate: use kind `win-rate`"
                }
                _ => "",
            };
            return Err(format!("no field `{field}` (a `{}` cell reads it){hint}", kind.name()));
        }
        Some(Value::Null) => None,
        Some(Value::Number(n)) => {
            let x =
                n.as_f64().filter(|x| x.is_finite()).ok_or_else(|| format!("field `{field}`: not a finite number"))?;
            check_range(kind, field, x)?;
            Some(x)
        }
        Some(other) => return Err(format!("field `{field}`: expected a number or null, found {}", describe(other))),
    };
    let interval_field = kind.interval_field();
    let ci_95 = match summary.get(interval_field) {
        None => return Err(format!("no field `{interval_field}` (the interval of `{field}`)")),
        Some(Value::Null) => None,
        Some(Value::Array(items)) => {
            let bounds: Vec<f64> = items.iter().filter_map(|v| v.as_f64()).filter(|x| x.is_finite()).collect();
            if items.len() != 2 || bounds.len() != 2 || bounds[0] > bounds[1] {
                return Err(format!("field `{interval_field}`: expected `[low, high]` with low <= high"));
            }
            check_range(kind, interval_field, bounds[0])?;
            check_range(kind, interval_field, bounds[1])?;
            Some([bounds[0], bounds[1]])
        }
        Some(other) => {
            return Err(format!("field `{interval_field}`: expected `[low, high]` or null, found {}", describe(other)));
        }
    };
    let n = match summary.get("n") {
        None => return Err("no field `n` (the number of items judged)".into()),
        Some(v) => {
            v.as_u64().ok_or_else(|| format!("field `n`: expected a non-negative integer, found {}", describe(v)))?
        }
    };
    Ok(Cell { input: String::new(), kind, protocol, value, ci_95, n })
}

/// Rates are fractions: a percent-scaled summary would otherwise be shown as 5310%.
fn check_range(kind: Kind, field: &str, x: f64) -> Result<(), String> {
    let ok = if kind.percent() { (0.0..=1.0).contains(&x) } else { (0.0..=10.0).contains(&x) };
    if ok {
        Ok(())
    } else if kind.percent() {
        Err(format!("field `{field}` is {x}, not a fraction between 0 and 1"))
    } else {
        Err(format!("field `{field}` is {x}, not a rating between 0 and 10"))
    }
}

/// One point of a training curve.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Point {
    pub step: u64,
    pub loss: f64,
}

/// Reads `step` and `loss` of every line (at least one) of the `metrics.jsonl` in input `input` at `path`. Other fields
/// (`tokens_per_s`, which varies from run to run) are ignored, so the report's bytes do not vary with them.
pub(super) fn curve(input: &str, path: &Path) -> Result<Vec<Point>> {
    let file = locate(input, path, "metrics.jsonl")?;
    let at = |line: usize| format!("input `{input}` (`{}`) line {line}", file.display());
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read input `{input}` (`{}`)", file.display()))?;
    let mut points: Vec<Point> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row: Value = serde_json::from_str(line).with_context(|| format!("{}: not JSON", at(i + 1)))?;
        let step = match row.get("step") {
            Some(v) => v.as_u64().ok_or_else(|| {
                anyhow!("{}: field `step`: expected a non-negative integer, found {}", at(i + 1), describe(v))
            })?,
            None => bail!("{}: no field `step`", at(i + 1)),
        };
        let loss = match row.get("loss") {
            Some(Value::Number(n)) => n
                .as_f64()
                .filter(|x| x.is_finite())
                .ok_or_else(|| anyhow!("{}: field `loss` is not finite", at(i + 1)))?,
            // serde_json writes a NaN as null: say so, rather than "expected a number".
            Some(Value::Null) => {
                bail!("{}: field `loss` is null (a NaN or infinite loss: the training diverged?)", at(i + 1))
            }
            Some(v) => bail!("{}: field `loss`: expected a number, found {}", at(i + 1), describe(v)),
            None => bail!("{}: no field `loss`", at(i + 1)),
        };
        if let Some(last) = points.last()
            && step <= last.step
        {
            bail!("{}: step {step} does not follow step {} (steps must increase)", at(i + 1), last.step);
        }
        points.push(Point { step, loss });
    }
    if points.is_empty() {
        bail!("input `{input}` (`{}`) has no steps", file.display());
    }
    Ok(points)
}

fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("`{b}`"),
        Value::Number(n) => format!("`{n}`"),
        Value::String(s) => format!("a string (`\"{s}\"`)"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "an object".into(),
    }
}
