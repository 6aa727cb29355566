//! SVG plots, drawn with plotters' SVG backend.
//!
//! Text goes into the file as SVG `<text>` elements that the viewer renders with its own fonts: plotters is built
//! without `ttf` or `ab_glyph`, so no font is loaded or embedded and none needs to be installed (it estimates
//! label widths from character counts, which only affects layout). Every coordinate comes from the data and the
//! params, so equal inputs give byte-identical files.

use std::ops::Range;

use anyhow::{Result, anyhow};
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use super::doc::{Label, Table};
use super::kind::Kind;
use super::params::numeric;
use super::read::Point;

/// Width and height in pixels.
const SIZE: (u32, u32) = (760, 440);

/// Tableau's ten colours: distinguishable, and readable on white.
const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

const GREY: RGBColor = RGBColor(150, 150, 150);

fn color(i: usize) -> RGBColor {
    COLORS[i % COLORS.len()]
}

/// Plotters' errors borrow the backend's error type; they become plain messages here.
fn drawing<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("cannot draw the plot: {e}")
}

/// The value axis: percent for rates, the 0–10 scale for ratings.
struct Scale {
    factor: f64,
    max: f64,
    desc: &'static str,
}

fn scale(t: &Table) -> Scale {
    if t.cells.iter().flatten().all(|c| c.kind.percent()) {
        Scale { factor: 100.0, max: 100.0, desc: "percent" }
    } else {
        Scale { factor: 1.0, max: 10.0, desc: "rating" }
    }
}

/// The label of the row drawn at `x` among `positions`.
fn label_at(rows: &[Label], positions: &[f64], x: f64) -> String {
    positions.iter().position(|p| (p - x).abs() < 1e-9).map(|i| rows[i].label.clone()).unwrap_or_default()
}

/// A table as grouped bars: one group per row, one bar per column, each with its interval; a dashed line at
/// 50% when the cells are win rates (the line of a tie).
pub(super) fn bars(t: &Table) -> Result<String> {
    let s = scale(t);
    let centers: Vec<f64> = (0..t.rows.len()).map(|i| i as f64 + 0.5).collect();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(drawing)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(&t.title, ("sans-serif", 20))
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(52)
            .build_cartesian_2d(Ticks { range: 0.0..t.rows.len() as f64, at: centers.clone() }, 0.0..s.max)
            .map_err(drawing)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_label_formatter(&|x| label_at(&t.rows, &centers, *x))
            .x_desc(t.row_title.as_str())
            .y_desc(s.desc)
            .y_label_formatter(&|y| format!("{y:.0}"))
            .draw()
            .map_err(drawing)?;
        if t.cells.iter().flatten().any(|c| matches!(c.kind, Kind::WinRate | Kind::LcWinRate)) {
            let tie = [(0.0, 50.0), (t.rows.len() as f64, 50.0)];
            chart.draw_series(DashedLineSeries::new(tie, 6, 4, GREY.stroke_width(1))).map_err(drawing)?;
        }
        let width = 0.8 / t.columns.len() as f64;
        let legend = t.columns.len() > 1 || !t.columns[0].id.is_empty();
        for (c, column) in t.columns.iter().enumerate() {
            let fill = color(c);
            let left = |r: usize| r as f64 + 0.1 + c as f64 * width;
            let bars = t.cells.iter().enumerate().filter_map(|(r, row)| {
                let v = row[c].value?;
                Some(Rectangle::new([(left(r), 0.0), (left(r) + width, v * s.factor)], fill.filled()))
            });
            let drawn = chart.draw_series(bars).map_err(drawing)?;
            if legend {
                drawn
                    .label(column.label.as_str())
                    .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], fill.filled()));
            }
            let errors = t.cells.iter().enumerate().filter_map(|(r, row)| {
                let (v, [lo, hi]) = (row[c].value?, row[c].ci_95?);
                let x = left(r) + width / 2.0;
                Some(ErrorBar::new_vertical(x, lo * s.factor, v * s.factor, hi * s.factor, BLACK.stroke_width(1), 8))
            });
            chart.draw_series(errors).map_err(drawing)?;
        }
        if legend {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.85))
                .border_style(GREY)
                .draw()
                .map_err(drawing)?;
        }
        root.present().map_err(drawing)?;
    }
    Ok(svg)
}

/// A table as lines: one per column over the rows (placed by value when every row id is a number, such as the
/// number of refusal examples added, else evenly), with markers and intervals.
pub(super) fn lines(t: &Table) -> Result<String> {
    let s = scale(t);
    let positions: Vec<f64> = if t.rows.iter().all(|r| numeric(&r.id).is_some()) {
        t.rows.iter().filter_map(|r| numeric(&r.id)).collect()
    } else {
        (0..t.rows.len()).map(|i| i as f64).collect()
    };
    let (lo, hi) = padded(&positions, 0.06);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(drawing)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(&t.title, ("sans-serif", 20))
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(52)
            .build_cartesian_2d(Ticks { range: lo..hi, at: positions.clone() }, 0.0..s.max)
            .map_err(drawing)?;
        chart
            .configure_mesh()
            .x_label_formatter(&|x| label_at(&t.rows, &positions, *x))
            .x_desc(t.row_title.as_str())
            .y_desc(s.desc)
            .y_label_formatter(&|y| format!("{y:.0}"))
            .draw()
            .map_err(drawing)?;
        for (c, column) in t.columns.iter().enumerate() {
            let stroke = color(c);
            let points: Vec<(f64, f64, Option<[f64; 2]>)> = t
                .cells
                .iter()
                .enumerate()
                .filter_map(|(r, row)| Some((positions[r], row[c].value? * s.factor, row[c].ci_95)))
                .collect();
            chart
                .draw_series(LineSeries::new(points.iter().map(|&(x, y, _)| (x, y)), stroke.stroke_width(2)))
                .map_err(drawing)?
                .label(column.label.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], stroke.stroke_width(2)));
            chart
                .draw_series(points.iter().map(|&(x, y, _)| Circle::new((x, y), 3, stroke.filled())))
                .map_err(drawing)?;
            let errors = points.iter().filter_map(|&(x, y, ci)| {
                let [lo, hi] = ci?;
                Some(ErrorBar::new_vertical(x, lo * s.factor, y, hi * s.factor, stroke.stroke_width(1), 8))
            });
            chart.draw_series(errors).map_err(drawing)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(GREY)
            .draw()
            .map_err(drawing)?;
        root.present().map_err(drawing)?;
    }
    Ok(svg)
}

/// Training loss over steps, one line per series.
pub(super) fn curves(title: &str, series: &[(String, Vec<Point>)]) -> Result<String> {
    let steps: Vec<f64> = series.iter().flat_map(|(_, p)| p.iter().map(|p| p.step as f64)).collect();
    let losses: Vec<f64> = series.iter().flat_map(|(_, p)| p.iter().map(|p| p.loss)).collect();
    let (x_lo, x_hi) = padded(&steps, 0.0);
    let (y_lo, y_hi) = padded(&losses, 0.05);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(drawing)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(52)
            .build_cartesian_2d(x_lo..x_hi, y_lo..y_hi)
            .map_err(drawing)?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("loss")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.2}"))
            .draw()
            .map_err(drawing)?;
        for (i, (label, points)) in series.iter().enumerate() {
            let stroke = color(i);
            chart
                .draw_series(LineSeries::new(points.iter().map(|p| (p.step as f64, p.loss)), stroke.stroke_width(2)))
                .map_err(drawing)?
                .label(label.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], stroke.stroke_width(2)));
            // A run of one step has no line to draw: a marker shows it.
            if points.len() == 1 {
                let p = points[0];
                chart.draw_series([Circle::new((p.step as f64, p.loss), 3, stroke.filled())]).map_err(drawing)?;
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(GREY)
            .draw()
            .map_err(drawing)?;
        root.present().map_err(drawing)?;
    }
    Ok(svg)
}

/// A linear axis whose ticks are exactly at the rows (plotters' own `with_key_points` wrapper has no label
/// formatter for `f64`, and its automatic ticks would fall between the rows).
struct Ticks {
    range: Range<f64>,
    at: Vec<f64>,
}

impl Ranged for Ticks {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        RangedCoordf64::from(self.range.clone()).map(value, limit)
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        // Only bold ticks: a light mesh line between rows means nothing.
        if hint.weight().allow_light_points() { vec![] } else { self.at.clone() }
    }

    fn range(&self) -> Range<f64> {
        self.range.clone()
    }
}

/// The range of `values` widened by `pad` of its span on each side (by 0.5 when all values are equal).
fn padded(values: &[f64], pad: f64) -> (f64, f64) {
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        return (lo - 0.5, hi + 0.5);
    }
    let margin = (hi - lo) * pad;
    (lo - margin, hi + margin)
}
