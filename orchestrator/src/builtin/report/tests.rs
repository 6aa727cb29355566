//! Tests of the `report` built-in: each case writes judge summaries and training metrics, runs the stage, and
//! checks its outputs or its error.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::{Value, json};

use super::{Document, Kind, Report};
use crate::builtin::{Builtin, StageContext};

/// One input of a test: a file of that content, or a directory holding one file.
enum In {
    File(String, String),
    Dir(String, String),
}

fn file(name: &str, content: impl Into<String>) -> In {
    In::File(name.to_string(), content.into())
}

fn dir(name: &str, content: impl Into<String>) -> In {
    In::Dir(name.to_string(), content.into())
}

/// A judge-openai alpaca-eval summary with win rate `w` and LC win rate `lc`.
fn alpaca(w: f64, lc: f64) -> String {
    json!({
        "protocol": "alpaca-eval", "judge_model": "judge", "n": 805, "n_parsed": 805, "n_unparseable": 0,
        "win_rate_a": w, "win_rate_a_se": 0.017, "win_rate_a_ci_95": [w - 0.034, w + 0.034],
        "lc_win_rate_a": lc, "lc_win_rate_a_ci_95": [lc - 0.033, lc + 0.033],
        "wins_a": 300, "wins_b": 500, "ties": 5, "discrete_win_rate_a": w, "seed": 0, "bootstrap": 2000
    })
    .to_string()
}

/// A judge-rules refusal summary: `k` refusals of `n`.
fn refusal(k: u64, n: u64) -> String {
    let rate = k as f64 / n as f64;
    json!({ "protocol": "refusal", "n": n, "refusals": k, "refusal_rate": rate, "wilson_95": [rate * 0.8, (rate * 1.2).min(1.0)] })
        .to_string()
}

fn metrics(losses: &[f64]) -> String {
    losses
        .iter()
        .enumerate()
        .map(|(i, l)| {
            format!(
                "{{\"step\":{},\"epoch\":0,\"loss\":{l},\"lr\":0.001,\"grad_norm\":1.0,\"tokens_per_s\":{}}}\n",
                i + 1,
                1000 + i
            )
        })
        .collect()
}

/// The outputs of one run: file name → content.
type Outputs = BTreeMap<String, String>;

fn run(inputs: Vec<In>, params: Value) -> Result<Outputs, String> {
    run_with(inputs, params, true)
}

/// Like [`run`]; `validate = false` skips plan-time validation, to show that `run` checks on its own.
fn run_with(inputs: Vec<In>, params: Value, validate: bool) -> Result<Outputs, String> {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let scratch = dir.path().join("scratch");
    std::fs::create_dir_all(&out_dir).unwrap();
    std::fs::create_dir_all(&scratch).unwrap();
    let mut paths: BTreeMap<String, PathBuf> = BTreeMap::new();
    for input in inputs {
        let (name, path) = match input {
            In::File(name, content) => {
                let path = dir.path().join("in").join(&name).join("file");
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, content).unwrap();
                (name, path)
            }
            In::Dir(name, content) => {
                let path = dir.path().join("in").join(&name);
                std::fs::create_dir_all(&path).unwrap();
                let inner = if content.contains("\"step\"") { "metrics.jsonl" } else { "summary.json" };
                std::fs::write(path.join(inner), content).unwrap();
                std::fs::write(path.join("items.jsonl"), "").unwrap();
                (name, path)
            }
        };
        paths.insert(name, path);
    }
    let names: Vec<&str> = paths.keys().map(String::as_str).collect();
    if validate {
        Report.validate(&params, &names).map_err(|e| e.to_string())?;
    }
    let mut log = Vec::new();
    let mut ctx = StageContext {
        stage_id: "report",
        params: &params,
        inputs: &paths,
        out_dir: &out_dir,
        scratch_dir: &scratch,
        gpus: &[],
        log: &mut log,
        progress: &|_, _| {},
        cancelled: &|| false,
    };
    Report.run(&mut ctx).map_err(|e| format!("{e:#}"))?;
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(&out_dir).unwrap() {
        let entry = entry.unwrap();
        out.insert(entry.file_name().to_string_lossy().into_owned(), std::fs::read_to_string(entry.path()).unwrap());
    }
    Ok(out)
}

/// The paper's main table in miniature: 2 base models × 2 datasets of LC win rates, plus loss curves.
fn paper_like() -> (Vec<In>, Value) {
    let inputs = vec![
        file("win-llama-alpaca", alpaca(0.40, 0.39)),
        dir("win-llama-dolly", alpaca(0.42, 0.41)),
        file("win-gemma-alpaca", alpaca(0.43, 0.412)),
        file("win-gemma-dolly", alpaca(0.36, 0.35)),
        file("loss-rt", metrics(&[2.5, 1.5, 1.25])),
        dir("loss-it", metrics(&[2.4, 1.4, 1.0])),
    ];
    let params = json!({
        "title": "RT vs IT",
        "tables": [{
            "id": "win-rate", "title": "LC win rate of RT against IT", "kind": "lc-win-rate", "row_title": "Base model",
            "rows": [{"id": "llama", "label": "Llama-3.1-8B"}, {"id": "gemma", "label": "Gemma-2-9B"}],
            "columns": [{"id": "alpaca", "label": "Alpaca"}, {"id": "dolly", "label": "Dolly"}],
            "cell": "win-{{row}}-{{ column }}"
        }],
        "curves": [{"id": "loss", "title": "Training loss", "series": ["loss-*"]}]
    });
    (inputs, params)
}

#[test]
fn the_main_table_reads_lc_win_rates_into_markdown_csv_and_json() {
    let (inputs, params) = paper_like();
    let out = run(inputs, params).unwrap();
    assert_eq!(out.keys().collect::<Vec<_>>(), ["loss.svg", "report.csv", "report.json", "report.md", "win-rate.svg"]);
    let md = &out["report.md"];
    println!("{md}");
    assert_eq!(
        md,
        "# RT vs IT\n\n## LC win rate of RT against IT\n\n| Base model | Alpaca | Dolly |\n| --- | ---: | ---: |\n\
         | Llama-3.1-8B | 39.0 [35.7, 42.3] | 41.0 [37.7, 44.3] |\n| Gemma-2-9B | 41.2 [37.9, 44.5] | 35.0 [31.7, 38.3] |\n\
         \nIn percent, with the 95% interval in brackets; LC win rate: AlpacaEval's length-controlled win rate of the \
         first model.\n\n![LC win rate of RT against IT](win-rate.svg)\n\n## Training loss\n\n| Series | Steps | First \
         loss | Last loss | Lowest loss |\n| --- | ---: | ---: | ---: | ---: |\n| it | 3 | 2.4000 | 1.0000 | 1.0000 |\n\
         | rt | 3 | 2.5000 | 1.2500 | 1.2500 |\n\n![Training loss](loss.svg)\n"
    );
    let csv = &out["report.csv"];
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "table,row,row_label,column,column_label,kind,protocol,input,value,ci_low,ci_high,n");
    assert_eq!(lines.len(), 5);
    assert!(
        lines[1]
            .starts_with("win-rate,llama,Llama-3.1-8B,alpaca,Alpaca,lc-win-rate,alpaca-eval,win-llama-alpaca,0.39,")
    );
    assert!(lines[1].ends_with(",805"), "{}", lines[1]);
    let doc = Document::from_json(out["report.json"].as_bytes()).unwrap();
    assert_eq!(doc.tables[0].cells[1][0].value, Some(0.412));
    assert_eq!(doc.tables[0].cells[1][0].kind, Kind::LcWinRate);
    assert_eq!(doc.curves[0].series[1].input, "loss-rt");
    assert_eq!(doc.curves[0].series[1].last_step, 3);
    // The JSON renders to the same Markdown, less the images: what `rto report` prints.
    assert_eq!(doc.markdown(true), *md);
    assert!(!doc.markdown(false).contains("!["));
}

#[test]
fn plots_are_svg_with_the_labels_and_series() {
    let (inputs, params) = paper_like();
    let out = run(inputs, params).unwrap();
    let bars = &out["win-rate.svg"];
    assert!(bars.starts_with("<svg") && bars.trim_end().ends_with("</svg>"), "{bars}");
    for text in ["LC win rate of RT against IT", "Llama-3.1-8B", "Gemma-2-9B", "Alpaca", "Dolly", "Base model"] {
        assert!(bars.contains(&format!("\n{text}\n")), "{text} in {bars}");
    }
    // Four bars in two colours (plus the two legend swatches), and four error bars of three lines each.
    assert_eq!(bars.matches("fill=\"#1F77B4\"").count(), 3, "{bars}");
    assert_eq!(bars.matches("fill=\"#FF7F0E\"").count(), 3, "{bars}");
    let curves = &out["loss.svg"];
    assert!(curves.contains("\nrt\n") && curves.contains("\nit\n") && curves.contains("\nstep\n"), "{curves}");
    assert_eq!(
        curves.matches("<polyline fill=\"none\" opacity=\"1\" stroke=\"#1F77B4\" stroke-width=\"2\"").count(),
        2
    );
}

#[test]
fn equal_inputs_give_identical_bytes_whatever_the_timing_fields() {
    let (inputs, params) = paper_like();
    let first = run(inputs, params.clone()).unwrap();
    let (mut inputs, _) = paper_like();
    // `tokens_per_s` changes from run to run of the same training; the report does not read it.
    inputs[4] = file("loss-rt", metrics(&[2.5, 1.5, 1.25]).replace("\"tokens_per_s\":10", "\"tokens_per_s\":99"));
    let second = run(inputs, params).unwrap();
    assert_eq!(first, second);
}

#[test]
fn the_refusal_table_plots_lines_over_the_number_of_refusal_examples() {
    let mut inputs = Vec::new();
    for (n, rt, it) in [(0, 24, 41), (100, 47, 71), (200, 40, 74), (500, 72, 80)] {
        inputs.push(file(&format!("refusal-{n}-rt"), refusal(rt, 100)));
        inputs.push(file(&format!("refusal-{n}-it"), refusal(it, 100)));
    }
    let params = json!({"tables": [{
        "id": "refusals", "title": "Refusal rate, Gemma-2-9B + LIMA", "kind": "refusal", "row_title": "Refusal examples",
        "rows": [0, 100, 200, 500], "columns": [{"id": "rt", "label": "RT"}, {"id": "it", "label": "IT"}],
        "cell": "refusal-{{row}}-{{column}}"
    }]});
    let out = run(inputs, params).unwrap();
    let md = &out["report.md"];
    println!("{md}");
    assert!(
        md.contains(
            "| Refusal examples | RT | IT |\n| --- | ---: | ---: |\n| 0 | 24.0 [19.2, 28.8] | 41.0 [32.8, 49.2] |\n"
        ),
        "{md}"
    );
    assert!(md.contains("| 500 | 72.0 [57.6, 86.4] | 80.0 [64.0, 96.0] |\n"), "{md}");
    let svg = &out["refusals.svg"];
    // Rows are placed by value: the ticks read 0, 100, 200, 500, and each column is one line of four points.
    for tick in ["\n0\n", "\n100\n", "\n200\n", "\n500\n", "\nRT\n", "\nIT\n"] {
        assert!(svg.contains(tick), "{tick:?} in {svg}");
    }
    assert_eq!(
        svg.matches("<polyline fill=\"none\" opacity=\"1\" stroke=\"#1F77B4\" stroke-width=\"2\" points=\"").count(),
        2
    );
    let line = svg.split("stroke=\"#1F77B4\" stroke-width=\"2\" points=\"").nth(1).unwrap();
    assert_eq!(line.split('"').next().unwrap().split_whitespace().count(), 4, "{line}");
}

#[test]
fn columns_may_mix_kinds_and_cells_may_be_whole_stage_outputs() {
    let exact = json!({"protocol": "exact-match", "accuracy": 0.25, "correct": 5, "n": 20, "wilson_95": [0.11, 0.47]});
    let rules_pair = json!({"accuracy_a": 0.25, "accuracy_b": 0.3, "n": 20, "ties": 14, "win_rate_a": 0.475,
        "win_rate_a_ci_95": [0.35, 0.6], "win_rate_a_se": 0.06, "wins_a": 2, "wins_b": 4, "seed": 0});
    let inputs = vec![
        dir("accuracy-rt", exact.to_string()),
        file("accuracy-it", exact.to_string().replace("0.25", "0.3")),
        file("refusal-rt", refusal(3, 20)),
        file("refusal-it", refusal(15, 20)),
        dir("win", rules_pair.to_string()),
    ];
    let params = json!({"tables": [
        {"id": "arms", "title": "Held-out tasks and unsafe prompts",
         "rows": [{"id": "rt", "label": "RT"}, {"id": "it", "label": "IT"}],
         "columns": [{"id": "accuracy", "label": "Accuracy", "kind": "accuracy"}, {"id": "refusal", "label": "Refusal rate", "kind": "refusal"}],
         "cell": "{{column}}-{{row}}", "note": "Greedy answers."},
        {"id": "rt-vs-it", "title": "RT against IT", "kind": "win-rate", "rows": [{"id": "x", "label": "RT vs IT"}], "cell": "win"}
    ]});
    let out = run(inputs, params).unwrap();
    let md = &out["report.md"];
    println!("{md}");
    assert!(
        md.contains(
            "| | Accuracy | Refusal rate |\n| --- | ---: | ---: |\n| RT | 25.0 [11.0, 47.0] | 15.0 [12.0, 18.0] |\n"
        ),
        "{md}"
    );
    assert!(md.contains("accuracy: share of responses matching the reference; refusal rate: share of responses judged refusals.\n\nGreedy answers.\n"), "{md}");
    assert!(md.contains("| | Win rate |\n| --- | ---: |\n| RT vs IT | 47.5 [35.0, 60.0] |\n"), "{md}");
    assert!(out.contains_key("arms.svg") && out.contains_key("rt-vs-it.svg"));
    // The win-rate plot has the dashed line of a tie at 50%.
    assert!(out["rt-vs-it.svg"].contains("stroke=\"#969696\""));
}

#[test]
fn undefined_values_show_as_n_a_and_ratings_are_not_percent() {
    let single = json!({"protocol": "single", "judge_model": "j", "n": 10, "n_parsed": 10, "n_unparseable": 0,
        "mean_rating": 7.125, "rating_se": 0.3, "rating_ci_95": [6.5, 7.75]});
    let empty = json!({"protocol": "alpaca-eval", "n": 4, "win_rate_a": 0.5, "win_rate_a_ci_95": null,
        "lc_win_rate_a": null, "lc_win_rate_a_ci_95": null});
    let inputs = vec![file("rating", single.to_string()), file("lc", empty.to_string())];
    let params = json!({"tables": [
        {"id": "rating", "kind": "rating", "rows": ["rt"], "cell": "rating"},
        {"id": "lc", "kind": "lc-win-rate", "rows": ["rt"], "cell": "lc", "plot": "none"}
    ]});
    let out = run(inputs, params).unwrap();
    let md = &out["report.md"];
    assert!(md.contains("| rt | 7.12 [6.50, 7.75] |"), "{md}");
    assert!(md.contains("With the 95% interval in brackets; mean rating"), "{md}");
    assert!(md.contains("| rt | n/a |\n\nIn percent, with the 95% interval in brackets; LC win rate: AlpacaEval's length-controlled win rate of the first model. n/a: undefined"), "{md}");
    assert!(!out.contains_key("lc.svg"));
    assert_eq!(out["report.csv"].lines().nth(2).unwrap(), "lc,rt,rt,,LC win rate,lc-win-rate,alpaca-eval,lc,,,,4");
}

#[test]
fn cell_text_never_reads_minus_zero() {
    let cell = super::Cell {
        input: "x".into(),
        kind: Kind::WinRate,
        protocol: None,
        value: Some(0.0),
        ci_95: Some([-1e-9, 0.0004]),
        n: 3,
    };
    assert_eq!(cell.text(), "0.0 [0.0, 0.0]");
}

#[test]
fn run_checks_params_without_validate() {
    let err = run_with(
        vec![file("a", refusal(1, 2))],
        json!({"tables": [{"id": "t", "kind": "refusal", "rows": ["x"], "cell": "b"}]}),
        false,
    )
    .unwrap_err();
    assert!(
        err.contains("`params.tables.0.cell`: the cell at row `x` reads input `b`, which the stage does not declare"),
        "{err}"
    );
}

/// Validates `params` against input names `inputs` and returns the error as shown.
fn invalid(params: Value, inputs: &[&str]) -> String {
    Report.validate(&params, inputs).expect_err("invalid").to_string()
}

#[test]
fn bad_params_are_located() {
    let t = |extra: Value| {
        let mut table = json!({"id": "t", "kind": "refusal", "rows": ["rt", "it"], "cell": "r-{{row}}"});
        table.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        json!({"tables": [table]})
    };
    let inputs = &["r-rt", "r-it"];
    assert!(Report.validate(&t(json!({})), inputs).is_ok());
    let cases: Vec<(Value, &[&str], &str)> = vec![
        (json!([1]), inputs, "`params`: expected a table, found a list"),
        (
            json!({"tables": [], "x": 1}),
            inputs,
            "`params.x`: unknown key `x`: valid keys are `curves`, `tables`, `title`",
        ),
        (json!({}), inputs, "`params`: a report needs `tables` or `curves`"),
        (json!({"tables": 3}), inputs, "`params.tables`: expected a list, found `3`"),
        (t(json!({"id": "no/slash"})), inputs, "`params.tables.0.id`: `no/slash` cannot name a file"),
        (t(json!({"id": "report"})), inputs, "cannot name a file"),
        (
            t(json!({"kind": "winrate"})),
            inputs,
            "`params.tables.0.kind`: unknown kind `winrate`: kinds are `win-rate`, `lc-win-rate`, `refusal`, `accuracy`, `rating`",
        ),
        (t(json!({"rows": []})), inputs, "`params.tables.0.rows`: the list is empty"),
        (t(json!({"rows": ["rt", "rt"]})), inputs, "`params.tables.0.rows.1`: id `rt` is listed twice"),
        (
            t(json!({"rows": [1.5]})),
            inputs,
            "`params.tables.0.rows.0`: expected an id (a string or an integer), found `1.5`",
        ),
        (t(json!({"rows": [{"label": "RT"}]})), inputs, "`params.tables.0.rows.0`: no `id`"),
        (
            t(json!({"rows": [{"id": "rt", "kind": "refusal"}]})),
            inputs,
            "`params.tables.0.rows.0.kind`: rows take no `kind`",
        ),
        (
            t(json!({"rows": [{"id": "rt", "colour": 1}]})),
            inputs,
            "`params.tables.0.rows.0.colour`: unknown key `colour`",
        ),
        (
            t(json!({"plot": "pie"})),
            inputs,
            "`params.tables.0.plot`: expected `\"bars\"`, `\"lines\"` or `\"none\"`, found `\"pie\"`",
        ),
        (
            t(json!({"cell": "r"})),
            inputs,
            "`params.tables.0.cell`: `r` has no `{{row}}`, so every row would read the same input",
        ),
        (t(json!({"cell": "r-{{row}}-{{column}}"})), inputs, "uses `{{column}}`, but the table has no `columns`"),
        (t(json!({"cell": "r-{{rows}}"})), inputs, "unknown placeholder `{{rows}}`; use `{{row}}` and `{{column}}`"),
        (t(json!({"cell": "r-{{row"})), inputs, "`{{` without a closing `}}`"),
        (t(json!({"cell": 1})), inputs, "`params.tables.0.cell`: expected a string, found `1`"),
        (t(json!({"title": 2})), inputs, "`params.tables.0.title`: expected a string, found `2`"),
        (
            t(json!({"cell": "x-{{row}}"})),
            inputs,
            "`params.tables.0.cell`: the cell at row `rt` reads input `x-rt`, which the stage does not declare: did you mean `r-rt`?",
        ),
        (t(json!({})), &["r-rt", "r-it", "extra"], "`params`: input `extra` is read by no table cell and no curve"),
        (
            t(json!({"columns": ["a", "b"], "cell": "r-{{row}}"})),
            inputs,
            "has no `{{column}}`, so every column would read the same input",
        ),
        (
            t(json!({"columns": [{"id": "a", "kind": "rating"}, "b"], "cell": "r-{{row}}-{{column}}"})),
            inputs,
            "`params.tables.0.plot`: the table mixes rates (percent) and ratings",
        ),
        (
            json!({"tables": [{"id": "t", "rows": ["rt"], "cell": "r-rt"}]}),
            inputs,
            "`params.tables.0`: no `kind` (and no `columns` that give one)",
        ),
        (
            json!({"tables": [{"id": "t", "rows": ["rt"], "columns": ["a"], "cell": "r-{{row}}"}]}),
            inputs,
            "`params.tables.0.columns.0`: no `kind` for this column, nor for the table",
        ),
        (json!({"tables": [{"id": "t", "kind": "refusal", "cell": "r-rt"}]}), inputs, "`params.tables.0`: no `rows`"),
        (json!({"tables": [{"id": "t", "kind": "refusal", "rows": ["rt"]}]}), inputs, "`params.tables.0`: no `cell`"),
        (
            json!({"tables": [{"kind": "refusal", "rows": ["rt"], "cell": "r-rt"}]}),
            inputs,
            "`params.tables.0`: no `id`",
        ),
        (
            json!({"tables": [{"id": "t", "kind": "refusal", "rows": ["rt", "it"], "cell": "r-{{row}}"}], "curves": [{"id": "t", "series": ["r-*"]}]}),
            inputs,
            "`params.curves.0.id`: id `t` is used twice",
        ),
        (json!({"curves": [{"id": "c"}]}), inputs, "`params.curves.0`: no `series`"),
        (
            json!({"curves": [{"id": "c", "series": ["x-*"]}]}),
            inputs,
            "`params.curves.0.series.0`: `x-*` matches none of the stage's inputs (`r-it`, `r-rt`)",
        ),
        (json!({"curves": [{"id": "c", "series": ["r-*-*"]}]}), inputs, "`r-*-*` has more than one `*`"),
        (
            json!({"curves": [{"id": "c", "series": [{"input": "r-*", "label": "x"}]}]}),
            inputs,
            "is a pattern, whose series are labelled by what `*` matches",
        ),
        (
            json!({"curves": [{"id": "c", "series": ["r-*", "r-rt"]}]}),
            inputs,
            "`params.curves.0.series.1`: input `r-rt` is already a series of this curve",
        ),
        (
            json!({"curves": [{"id": "c", "series": ["r-rt", "q"]}]}),
            inputs,
            "`params.curves.0.series.1`: input `q` is not declared by the stage",
        ),
        (
            json!({"curves": [{"id": "c", "series": [{"label": "x"}]}]}),
            inputs,
            "`params.curves.0.series.0`: no `input`",
        ),
        (
            json!({"curves": [{"id": "c", "series": [{"input": 3}]}]}),
            inputs,
            "`params.curves.0.series.0.input`: expected an input name, found `3`",
        ),
        (
            json!({"curves": [{"id": "c", "series": [true]}]}),
            inputs,
            "`params.curves.0.series.0`: expected an input name or `{ input, label }`, found a boolean",
        ),
        (
            json!({"curves": [{"id": "c", "series": [""]}]}),
            inputs,
            "`params.curves.0.series.0`: the input name is empty",
        ),
    ];
    for (params, names, expected) in cases {
        let got = invalid(params.clone(), names);
        assert!(got.contains(expected), "{params}\nexpected: {expected}\ngot:      {got}");
    }
}

/// Runs a one-cell table of `kind` over a summary and returns the error.
fn cell_error(kind: &str, summary: &str) -> String {
    let params = json!({"tables": [{"id": "t", "kind": kind, "rows": ["x"], "cell": "judge"}]});
    run(vec![file("judge", summary)], params).expect_err("a bad summary")
}

#[test]
fn bad_summaries_name_the_input_file_and_field() {
    let good = json!({"protocol": "refusal", "n": 2, "refusals": 1, "refusal_rate": 0.5, "wilson_95": [0.1, 0.9]});
    let with = |key: &str, value: Value| {
        let mut v = good.clone();
        v[key] = value;
        v.to_string()
    };
    let without = |key: &str| {
        let mut v = good.clone();
        v.as_object_mut().unwrap().remove(key);
        v.to_string()
    };
    let cases: Vec<(&str, String, &str)> = vec![
        ("refusal", "{".into(), "not JSON"),
        ("refusal", "[1]".into(), "expected a JSON object (a judge's `summary.json`)"),
        (
            "win-rate",
            good.to_string(),
            "field `protocol` is `refusal`, but a `win-rate` cell needs a summary of protocol `alpaca-eval`, `pairwise`, `pairwise-correctness`",
        ),
        ("refusal", with("protocol", json!(3)), "field `protocol`: expected a string, found `3`"),
        ("refusal", without("refusal_rate"), "no field `refusal_rate` (a `refusal` cell reads it)"),
        (
            "refusal",
            with("refusal_rate", json!("half")),
            "field `refusal_rate`: expected a number or null, found a string (`\"half\"`)",
        ),
        ("refusal", with("refusal_rate", json!(50.0)), "field `refusal_rate` is 50, not a fraction between 0 and 1"),
        ("refusal", without("wilson_95"), "no field `wilson_95` (the interval of `refusal_rate`)"),
        ("refusal", with("wilson_95", json!([0.9, 0.1])), "field `wilson_95`: expected `[low, high]` with low <= high"),
        ("refusal", with("wilson_95", json!([0.1])), "field `wilson_95`: expected `[low, high]` with low <= high"),
        (
            "refusal",
            with("wilson_95", json!({"lo": 0})),
            "field `wilson_95`: expected `[low, high]` or null, found an object",
        ),
        ("refusal", with("wilson_95", json!([0.1, 1.5])), "field `wilson_95` is 1.5, not a fraction between 0 and 1"),
        ("refusal", without("n"), "no field `n` (the number of items judged)"),
        ("refusal", with("n", json!(-1)), "field `n`: expected a non-negative integer, found `-1`"),
        (
            "rating",
            json!({"n": 1, "mean_rating": 11, "rating_ci_95": null}).to_string(),
            "field `mean_rating` is 11, not a rating between 0 and 10",
        ),
    ];
    for (kind, summary, expected) in cases {
        let got = cell_error(kind, &summary);
        assert!(got.starts_with("input `judge` (`"), "{got}");
        assert!(got.contains("judge/file`): ") || got.contains("judge/file`)"), "{got}");
        assert!(got.contains(expected), "{summary}\nexpected: {expected}\ngot:      {got}");
    }
    // A judge without a length-controlled win rate is named, with the kind to use instead.
    let rules = json!({"protocol": "pairwise-correctness", "n": 3, "win_rate_a": 0.5, "win_rate_a_ci_95": [0.2, 0.8]});
    let got = cell_error("lc-win-rate", &rules.to_string());
    assert!(got.contains("field `protocol` is `pairwise-correctness`, but a `lc-win-rate` cell needs"), "{got}");
    let unnamed = json!({"n": 3, "win_rate_a": 0.5, "win_rate_a_ci_95": [0.2, 0.8]});
    let got = cell_error("lc-win-rate", &unnamed.to_string());
    assert!(got.contains("no field `lc_win_rate_a` (a `lc-win-rate` cell reads it); this judge gives no length-controlled win rate: use kind `win-rate`"), "{got}");
}

#[test]
fn a_stage_directory_without_a_summary_is_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("samples.jsonl"), "").unwrap();
    let err = super::read::cell("judge", dir.path(), Kind::Refusal).unwrap_err().to_string();
    assert_eq!(
        err,
        "input `judge` is a directory without `summary.json` (it holds `samples.jsonl`): is it the right stage?"
    );
}

/// Runs a one-series curve over a metrics file and returns the error.
fn curve_error(metrics: &str) -> String {
    let params = json!({"curves": [{"id": "c", "series": ["loss"]}]});
    run(vec![file("loss", metrics)], params).expect_err("bad metrics")
}

#[test]
fn bad_metrics_name_the_input_file_line_and_field() {
    let cases = [
        ("{\"step\":1,\"loss\":2}\nnot json\n", "line 2: not JSON"),
        ("{\"loss\":2}\n", "line 1: no field `step`"),
        ("{\"step\":-1,\"loss\":2}\n", "line 1: field `step`: expected a non-negative integer, found `-1`"),
        ("{\"step\":1}\n", "line 1: no field `loss`"),
        ("{\"step\":1,\"loss\":\"x\"}\n", "line 1: field `loss`: expected a number, found a string (`\"x\"`)"),
        (
            "{\"step\":1,\"loss\":null}\n",
            "line 1: field `loss` is null (a NaN or infinite loss: the training diverged?)",
        ),
        (
            "{\"step\":2,\"loss\":1}\n{\"step\":2,\"loss\":1}\n",
            "line 2: step 2 does not follow step 2 (steps must increase)",
        ),
        ("\n\n", "has no steps"),
    ];
    for (metrics, expected) in cases {
        let got = curve_error(metrics);
        assert!(
            got.starts_with("input `loss` (`") && got.contains(expected),
            "{metrics:?}\nexpected: {expected}\ngot:      {got}"
        );
    }
}

#[test]
fn a_report_json_of_another_schema_is_refused() {
    let err =
        Document::from_json(br#"{"schema": 99, "title": "x", "tables": [], "curves": []}"#).unwrap_err().to_string();
    assert_eq!(err, "`report.json` has schema 99, this rto reads schema 1: run the study again to rebuild the report");
    assert!(Document::from_json(b"[").is_err());
}
