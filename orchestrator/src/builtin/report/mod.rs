//! The `report` built-in: judge summaries and training metrics gathered into the study's tables and plots.
//!
//! ```toml
//! [[stage]]
//! id = "report"
//! uses = "report"
//! gather = { model = ["llama", "gemma"], data = ["alpaca", "dolly"] }
//! inputs = { "win-{model}-{data}" = "judge-{model}-{data}", "loss-{model}" = "tune-{model}.metrics.jsonl" }
//!
//! [stage.params]
//! title = "RT vs IT"
//!
//! [[stage.params.tables]]
//! id = "win-rate"
//! title = "LC win rate of RT against IT"
//! kind = "lc-win-rate"
//! row_title = "Base model"
//! rows = [{ id = "llama", label = "Llama-3.1-8B" }, { id = "gemma", label = "Gemma-2-9B" }]
//! columns = [{ id = "alpaca", label = "Alpaca" }, { id = "dolly", label = "Dolly" }]
//! cell = "win-{{row}}-{{column}}"
//!
//! [[stage.params.curves]]
//! id = "loss"
//! title = "Training loss"
//! series = ["loss-*"]
//! ```
//!
//! (`gather`, a study-format feature, expands the inputs over the matrix; see `study/gather.rs`.)
//!
//! # Params
//!
//! - `title` ("Report"): the heading of `report.md`.
//! - `tables`: each with `id` (names its plot, `<id>.svg`), `title`, `rows` and optional `columns` (each an id —
//!   a string, or an integer such as a number of refusal examples — or `{ id, label }`; a column may also set
//!   `kind`), `kind` (see [`Kind`]: `win-rate`, `lc-win-rate`, `refusal`, `accuracy`, `rating`), `cell` (the
//!   input name of a cell, with `{{row}}` and `{{column}}` replaced by the row's and column's ids; double braces
//!   so that the study's own `{var}` interpolation leaves them alone), `row_title` (the header of the label
//!   column), `note` (a line under the table) and `plot`: `bars` (grouped bars with error bars), `lines` (one
//!   line per column over the rows, placed by value when every row id is a number) or `none`; by default `lines`
//!   when every row id is a number (0, 100, 200, 500 refusal examples) and `bars` otherwise.
//! - `curves`: each with `id`, `title` and `series`: input names, `{ input, label }`, or patterns with one `*`
//!   (`"loss-*"`) matching input names, labelled by what `*` matched, in name order.
//!
//! Every cell's input must be declared by the stage, and every declared input must be read by some cell or
//! curve: both are checked at plan time, so a misspelt name fails before anything runs.
//!
//! # Inputs
//!
//! A cell's input is a judge's `summary.json` (or the judge stage's whole output, in which `summary.json` is
//! found): the kind's value field (`lc_win_rate_a`, `refusal_rate`, …, as fractions), its 95% interval and `n`.
//! When the summary names its `protocol`, it must be one that gives the kind's fields. A series' input is a
//! training stage's `metrics.jsonl` (or its whole output): `step` and `loss` per line. A missing or ill-typed
//! field fails the stage with the input, the file and the field.
//!
//! # Outputs
//!
//! - `report.md`: the tables in Markdown (cells such as `53.1 [49.8, 56.4]`: percent with the 95% interval),
//!   each followed by its plot, and a summary of every curve.
//! - `report.csv`: one line per cell (`table,row,row_label,column,column_label,kind,protocol,input,value,
//!   ci_low,ci_high,n`), values as fractions.
//! - `report.json`: everything above ([`Document`]); `rto report` renders it from the cache.
//! - `<id>.svg`: one plot per table (unless `plot = "none"`) and per curve.
//!
//! Outputs depend only on the params and the input bytes, and contain no clock or path, so a re-run is
//! byte-identical and rto's early cut-off keeps what reads the report cached.

mod doc;
mod kind;
mod params;
mod plot;
mod read;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};

pub use doc::{Cell, Curve, Document, Label, SCHEMA, Series, Table};
pub use kind::Kind;

use self::params::{Plot, Resolved, Spec};
use super::{Builtin, ParamError, StageContext};

/// The name a stage puts in `uses`.
pub const NAME: &str = "report";

/// The file `rto report` reads from a report stage's outputs.
pub const JSON_OUTPUT: &str = "report.json";

/// The `report` built-in stage (see the module documentation for params, inputs and outputs).
pub struct Report;

impl Builtin for Report {
    fn name(&self) -> &'static str {
        NAME
    }

    fn validate(&self, params: &serde_json::Value, input_names: &[&str]) -> Result<(), ParamError> {
        Spec::parse(params)?.resolve(input_names).map(drop)
    }

    fn run(&self, ctx: &mut StageContext<'_>) -> Result<()> {
        let names: Vec<&str> = ctx.inputs.keys().map(String::as_str).collect();
        let resolved = Spec::parse(ctx.params).and_then(|s| s.resolve(&names)).map_err(|e| anyhow!("{e}"))?;
        let cells = resolved.cells.iter().flatten().flatten().count();
        let series = resolved.series.iter().map(Vec::len).sum::<usize>();
        let (total, mut done) = ((cells + series) as u64, 0);
        (ctx.progress)(0, total);
        let (progress, cancelled) = (ctx.progress, ctx.cancelled);
        let mut tick = || -> Result<()> {
            if cancelled() {
                bail!("cancelled");
            }
            done += 1;
            progress(done, total);
            Ok(())
        };
        let inputs = Inputs(ctx.inputs);
        let tables = read_tables(&resolved, &inputs, &mut tick)?;
        let (curves, points) = read_curves(&resolved, &inputs, &mut tick)?;
        let document = Document { schema: SCHEMA, title: resolved.spec.title.clone(), tables, curves };
        write_outputs(ctx.out_dir, &resolved, &document, &points)?;
        writeln!(
            ctx.log,
            "{} table(s) with {cells} cell(s), {} curve plot(s) with {series} series",
            document.tables.len(),
            document.curves.len()
        )?;
        Ok(())
    }
}

/// The stage's inputs by name.
struct Inputs<'a>(&'a BTreeMap<String, PathBuf>);

impl Inputs<'_> {
    fn get(&self, name: &str) -> Result<&Path> {
        self.0
            .get(name)
            .map(PathBuf::as_path)
            .ok_or_else(|| anyhow!("internal: input `{name}` was resolved but is not given"))
    }
}

fn read_tables(resolved: &Resolved, inputs: &Inputs<'_>, tick: &mut dyn FnMut() -> Result<()>) -> Result<Vec<Table>> {
    let mut tables = Vec::with_capacity(resolved.spec.tables.len());
    for (spec, names) in resolved.spec.tables.iter().zip(&resolved.cells) {
        let mut cells = Vec::with_capacity(spec.rows.len());
        for row in names {
            let mut line = Vec::with_capacity(spec.columns.len());
            for (name, column) in row.iter().zip(&spec.columns) {
                let kind = column.kind.expect("columns always have a kind");
                line.push(read::cell(name, inputs.get(name)?, kind)?);
                tick()?;
            }
            cells.push(line);
        }
        let label = |a: &params::Axis| Label { id: a.id.clone(), label: a.label.clone() };
        tables.push(Table {
            id: spec.id.clone(),
            title: spec.title.clone(),
            row_title: spec.row_title.clone(),
            rows: spec.rows.iter().map(label).collect(),
            columns: spec.columns.iter().map(label).collect(),
            cells,
            plot: (spec.plot != Plot::None).then(|| format!("{}.svg", spec.id)),
            note: spec.note.clone(),
        });
    }
    Ok(tables)
}

fn read_curves(
    resolved: &Resolved,
    inputs: &Inputs<'_>,
    tick: &mut dyn FnMut() -> Result<()>,
) -> Result<(Vec<Curve>, CurvePoints)> {
    let mut curves = Vec::with_capacity(resolved.spec.curves.len());
    let mut all_points = Vec::with_capacity(resolved.spec.curves.len());
    for (spec, named) in resolved.spec.curves.iter().zip(&resolved.series) {
        let mut series = Vec::with_capacity(named.len());
        let mut points = Vec::with_capacity(named.len());
        for (label, name) in named {
            let p = read::curve(name, inputs.get(name)?)?;
            let (first, last) = (p[0], p[p.len() - 1]);
            series.push(Series {
                label: label.clone(),
                input: name.clone(),
                steps: p.len() as u64,
                last_step: last.step,
                first_loss: first.loss,
                last_loss: last.loss,
                min_loss: p.iter().map(|p| p.loss).fold(f64::INFINITY, f64::min),
            });
            points.push((label.clone(), p));
            tick()?;
        }
        curves.push(Curve { id: spec.id.clone(), title: spec.title.clone(), plot: format!("{}.svg", spec.id), series });
        all_points.push(points);
    }
    Ok((curves, all_points))
}

/// Per curve, per series: its label and every point, for the plot.
type CurvePoints = Vec<Vec<(String, Vec<read::Point>)>>;

fn write_outputs(dir: &Path, resolved: &Resolved, document: &Document, curve_points: &CurvePoints) -> Result<()> {
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write `{}`", path.display()))
    };
    write("report.md", &document.markdown(true))?;
    write("report.csv", &document.csv())?;
    write(JSON_OUTPUT, &document.to_json())?;
    for (table, spec) in document.tables.iter().zip(&resolved.spec.tables) {
        let svg = match spec.plot {
            Plot::Bars => plot::bars(table)?,
            Plot::Lines => plot::lines(table)?,
            Plot::None => continue,
        };
        write(&format!("{}.svg", table.id), &svg)?;
    }
    for (curve, points) in document.curves.iter().zip(curve_points) {
        write(&curve.plot, &plot::curves(&curve.title, points)?)?;
    }
    Ok(())
}
