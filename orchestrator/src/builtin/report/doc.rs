//! What a report holds (written as `report.json`) and its renderings as Markdown and CSV. `rto report` reads
//! `report.json` back from the cache and renders it with the same code, so the terminal shows what the files say.

use std::fmt::Write as _;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::kind::Kind;

/// Version of `report.json`'s structure; `rto report` refuses another.
pub const SCHEMA: u32 = 1;

/// A whole report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Document {
    /// [`SCHEMA`].
    pub schema: u32,
    /// The heading.
    pub title: String,
    /// Tables, in the order of the params.
    pub tables: Vec<Table>,
    /// Training curves, in the order of the params.
    pub curves: Vec<Curve>,
}

/// One table of judge results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Table {
    /// The table's id (names its plot).
    pub id: String,
    /// Its heading.
    pub title: String,
    /// The header of the row-label column.
    pub row_title: String,
    /// Rows, top to bottom.
    pub rows: Vec<Label>,
    /// Columns, left to right; one with an empty id for a table written without `columns`.
    pub columns: Vec<Label>,
    /// `cells[row][column]`.
    pub cells: Vec<Vec<Cell>>,
    /// The plot's file name, if the table is plotted.
    pub plot: Option<String>,
    /// A line for people under the table.
    pub note: Option<String>,
}

/// A row or a column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Label {
    /// What the study calls it (and the cell pattern used).
    pub id: String,
    /// What people see.
    pub label: String,
}

/// One cell: a value read from a judge summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    /// The input it was read from.
    pub input: String,
    /// What the value is.
    pub kind: Kind,
    /// The summary's `protocol`, if it names one.
    pub protocol: Option<String>,
    /// A fraction (a rating for [`Kind::Rating`]); `None` where the judge could not define it (no items, a
    /// degenerate fit).
    pub value: Option<f64>,
    /// The 95% interval, when the judge gives one.
    pub ci_95: Option<[f64; 2]>,
    /// Items judged.
    pub n: u64,
}

/// One plot of training loss curves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Curve {
    /// The curve's id (names its plot).
    pub id: String,
    /// Its heading.
    pub title: String,
    /// The plot's file name.
    pub plot: String,
    /// One per training run.
    pub series: Vec<Series>,
}

/// One training run's loss, summarised (the plot has every step).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Series {
    /// The legend entry.
    pub label: String,
    /// The input it was read from.
    pub input: String,
    /// Number of steps logged.
    pub steps: u64,
    /// The last step's number.
    pub last_step: u64,
    /// Loss at the first logged step.
    pub first_loss: f64,
    /// Loss at the last logged step.
    pub last_loss: f64,
    /// Lowest loss logged.
    pub min_loss: f64,
}

impl Document {
    /// Parses `report.json`.
    pub fn from_json(bytes: &[u8]) -> Result<Document> {
        let value: serde_json::Value = serde_json::from_slice(bytes).context("`report.json` is not JSON")?;
        let schema = value.get("schema").and_then(|s| s.as_u64());
        if schema != Some(u64::from(SCHEMA)) {
            bail!(
                "`report.json` has schema {}, this rto reads schema {SCHEMA}: run the study again to rebuild the report",
                schema.map_or("none".to_string(), |s| s.to_string())
            );
        }
        serde_json::from_value(value).context("`report.json` does not have the expected fields")
    }

    /// `report.json`: pretty, one trailing newline.
    pub fn to_json(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).expect("a report serialises");
        text.push('\n');
        text
    }

    /// `report.md`; with `images`, each plotted table and curve is followed by its SVG.
    pub fn markdown(&self, images: bool) -> String {
        let mut out = format!("# {}\n", self.title);
        for t in &self.tables {
            let _ = write!(out, "\n## {}\n\n", t.title);
            out.push_str(&table_markdown(t));
            // In the order the columns show them.
            let mut kinds: Vec<Kind> = Vec::new();
            for cell in t.cells.iter().flatten() {
                if !kinds.contains(&cell.kind) {
                    kinds.push(cell.kind);
                }
            }
            let meanings: Vec<&str> = kinds.iter().map(|k| k.meaning()).collect();
            let scale = if kinds.iter().all(|k| k.percent()) { "In percent, with" } else { "With" };
            let _ = write!(out, "\n{scale} the 95% interval in brackets; {}.", meanings.join("; "));
            if t.cells.iter().flatten().any(|c| c.value.is_none()) {
                out.push_str(" n/a: undefined (no items judged, or a degenerate fit).");
            }
            out.push('\n');
            if let Some(note) = &t.note {
                let _ = writeln!(out, "\n{note}");
            }
            if images && let Some(plot) = &t.plot {
                let _ = writeln!(out, "\n![{}]({plot})", t.title);
            }
        }
        for c in &self.curves {
            let _ = write!(out, "\n## {}\n\n", c.title);
            out.push_str(
                "| Series | Steps | First loss | Last loss | Lowest loss |\n| --- | ---: | ---: | ---: | ---: |\n",
            );
            for s in &c.series {
                let _ = writeln!(
                    out,
                    "| {} | {} | {:.4} | {:.4} | {:.4} |",
                    escape(&s.label),
                    s.steps,
                    s.first_loss,
                    s.last_loss,
                    s.min_loss
                );
            }
            if images {
                let _ = writeln!(out, "\n![{}]({})", c.title, c.plot);
            }
        }
        out
    }

    /// `report.csv`: one line per table cell, values as fractions (ratings as they are), empty where undefined.
    pub fn csv(&self) -> String {
        let mut w = csv::Writer::from_writer(Vec::new());
        let header = [
            "table",
            "row",
            "row_label",
            "column",
            "column_label",
            "kind",
            "protocol",
            "input",
            "value",
            "ci_low",
            "ci_high",
            "n",
        ];
        let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
        for t in &self.tables {
            for (r, row) in t.rows.iter().enumerate() {
                for (c, column) in t.columns.iter().enumerate() {
                    let cell = &t.cells[r][c];
                    let number = |x: Option<f64>| x.map(|x| x.to_string()).unwrap_or_default();
                    rows.push(vec![
                        t.id.clone(),
                        row.id.clone(),
                        row.label.clone(),
                        column.id.clone(),
                        column.label.clone(),
                        cell.kind.name().to_string(),
                        cell.protocol.clone().unwrap_or_default(),
                        cell.input.clone(),
                        number(cell.value),
                        number(cell.ci_95.map(|ci| ci[0])),
                        number(cell.ci_95.map(|ci| ci[1])),
                        cell.n.to_string(),
                    ]);
                }
            }
        }
        for row in rows {
            w.write_record(&row).expect("writing to memory cannot fail");
        }
        String::from_utf8(w.into_inner().expect("writing to memory cannot fail")).expect("the fields are UTF-8")
    }
}

fn table_markdown(t: &Table) -> String {
    let mut out = if t.row_title.is_empty() { "| |".to_string() } else { format!("| {} |", escape(&t.row_title)) };
    for c in &t.columns {
        let _ = write!(out, " {} |", escape(&c.label));
    }
    out.push_str("\n| --- |");
    for _ in &t.columns {
        out.push_str(" ---: |");
    }
    out.push('\n');
    for (r, row) in t.rows.iter().enumerate() {
        let _ = write!(out, "| {} |", escape(&row.label));
        for cell in &t.cells[r] {
            let _ = write!(out, " {} |", cell.text());
        }
        out.push('\n');
    }
    out
}

impl Cell {
    /// How the cell reads: `53.1 [49.8, 56.4]` for rates (percent), `7.12 [6.90, 7.34]` for ratings.
    pub fn text(&self) -> String {
        let Some(value) = self.value else { return "n/a".into() };
        let show = |x: f64| {
            let text = if self.kind.percent() { format!("{:.1}", x * 100.0) } else { format!("{x:.2}") };
            // A rounded tiny negative would read "-0.0".
            if text.trim_start_matches('-').chars().all(|c| c == '0' || c == '.') {
                text.replace('-', "")
            } else {
                text
            }
        };
        match self.ci_95 {
            Some([lo, hi]) => format!("{} [{}, {}]", show(value), show(lo), show(hi)),
            None => show(value),
        }
    }
}

/// A label inside a Markdown table cell: `|` would end the cell.
fn escape(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}
