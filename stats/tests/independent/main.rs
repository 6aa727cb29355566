//! The crate's statistics against values computed independently in Python (`tests/reference.py`: statsmodels'
//! Wilson interval and binomial GLM, scipy's `sem`, numpy's percentile, SplitMix64 transcribed), on the fixed
//! inputs of `tests/fixtures/inputs.json`, to 1e-6 (the bar; the agreement is about 1e-9).
//!
//! `committed_reference_values` compares with the committed `tests/fixtures/expected.json` and always runs.
//! `live_reference_values` reruns the script when `RTO_PYTHON` names a Python with numpy, scipy and statsmodels
//! (`tests/requirements.txt`), and fails if the script fails. To regenerate the committed file after changing
//! the inputs: `$RTO_PYTHON stats/tests/reference.py compute stats/tests/fixtures/inputs.json
//! stats/tests/fixtures/expected.json` (and `make-inputs` to rebuild the inputs themselves).

use std::path::{Path, PathBuf};

use serde_json::Value;

const TOLERANCE: f64 = 1e-6;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join(name)
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A number as the script writes it: a JSON number, or "inf" / "-inf".
fn number(v: &Value, what: &str) -> f64 {
    match v {
        Value::Number(n) => n.as_f64().unwrap(),
        Value::String(s) if s == "inf" => f64::INFINITY,
        Value::String(s) if s == "-inf" => f64::NEG_INFINITY,
        other => panic!("{what}: expected a number, got {other}"),
    }
}

fn numbers(v: &Value, what: &str) -> Vec<f64> {
    let items = v.as_array().unwrap_or_else(|| panic!("{what}: expected an array, got {v}"));
    // A null preference is a NaN one: JSON has no NaN.
    items.iter().map(|x| if x.is_null() { f64::NAN } else { number(x, what) }).collect()
}

/// Collects every disagreement, so one run shows all of them, and the largest difference seen.
#[derive(Default)]
struct Report {
    failures: Vec<String>,
    compared: usize,
    worst: f64,
}

impl Report {
    fn close(&mut self, what: &str, got: Option<f64>, want: &Value) {
        self.compared += 1;
        match (got, want.is_null()) {
            (None, true) => {}
            (None, false) => self.failures.push(format!("{what}: got none, want {want}")),
            (Some(g), true) => self.failures.push(format!("{what}: got {g}, want null")),
            (Some(g), false) => {
                let w = number(want, what);
                let diff = if g == w { 0.0 } else { (g - w).abs() };
                if diff.is_nan() || diff > TOLERANCE {
                    self.failures.push(format!("{what}: got {g}, want {w}"));
                } else {
                    self.worst = self.worst.max(diff);
                }
            }
        }
    }

    fn exact(&mut self, what: &str, got: u64, want: &Value) {
        self.compared += 1;
        if want.as_u64() != Some(got) {
            self.failures.push(format!("{what}: got {got}, want {want}"));
        }
    }

    fn pair(&mut self, what: &str, got: Option<(f64, f64)>, want: &Value) {
        if want.is_null() || got.is_none() {
            self.close(what, got.map(|g| g.0), want);
            return;
        }
        self.close(&format!("{what}[0]"), got.map(|g| g.0), &want[0]);
        self.close(&format!("{what}[1]"), got.map(|g| g.1), &want[1]);
    }
}

fn check_set(r: &mut Report, set: &Value, want: &Value) {
    let name = set["name"].as_str().unwrap();
    assert_eq!(want["name"], set["name"], "expected.json lists the sets in another order than inputs.json");
    let prefs = numbers(&set["prefs"], name);
    let len_a = numbers(&set["len_a"], name);
    let len_b = numbers(&set["len_b"], name);

    let w = stats::win_rate(&prefs);
    let ww = &want["win_rate"];
    let at = |field: &str| format!("{name}.win_rate.{field}");
    match &w {
        None => r.close(&at("win_rate"), None, ww),
        Some(w) => {
            r.close(&at("win_rate"), Some(w.win_rate), &ww["win_rate"]);
            r.close(&at("standard_error"), w.standard_error, &ww["standard_error"]);
            r.close(&at("discrete_win_rate"), Some(w.discrete_win_rate), &ww["discrete_win_rate"]);
            for (field, got) in [
                ("n_wins", w.n_wins),
                ("n_losses", w.n_losses),
                ("n_draws", w.n_draws),
                ("n_total", w.n_total),
                ("n_dropped", w.n_dropped),
            ] {
                r.exact(&at(field), got as u64, &ww[field]);
            }
        }
    }

    let lc = stats::lc_win_rate(&prefs, &len_a, &len_b);
    let wl = &want["lc"];
    let at = |field: &str| format!("{name}.lc.{field}");
    match &lc {
        None => r.close(&at("value"), None, wl),
        Some(lc) if wl.is_null() => r.close(&at("value"), Some(lc.value), wl),
        Some(lc) => {
            r.close(&at("value"), Some(lc.value), &wl["value"]);
            r.close(&at("theta"), Some(lc.theta), &wl["theta"]);
            r.close(&at("phi"), Some(lc.phi), &wl["phi"]);
            r.close(&at("std_delta_len"), lc.std_delta_len, &wl["std_delta_len"]);
        }
    }

    let boot = &set["bootstrap"];
    if boot.is_null() {
        return;
    }
    let wb = &want["bootstrap"];
    let clusters =
        stats::clusters_by_key(&set["prompts"].as_array().unwrap().iter().map(Value::to_string).collect::<Vec<_>>());
    let (replicates, seed) = (boot["replicates"].as_u64().unwrap(), boot["seed"].as_u64().unwrap());
    let pick = |v: &[f64], idx: &[usize]| idx.iter().map(|&i| v[i]).collect::<Vec<f64>>();
    let ci = stats::cluster_bootstrap(&clusters, replicates, seed, |idx| {
        stats::win_rate(&pick(&prefs, idx)).map_or(f64::NAN, |w| w.win_rate)
    });
    r.pair(&format!("{name}.bootstrap.win_rate"), ci.as_ref().map(|c| (c.lo, c.hi)), &wb["win_rate"]);
    r.exact(
        &format!("{name}.bootstrap.win_rate_undefined"),
        ci.map_or(replicates, |c| c.undefined),
        &wb["win_rate_undefined"],
    );
    if boot["lc"].as_bool() == Some(true) {
        let ci = stats::cluster_bootstrap(&clusters, replicates, seed, |idx| {
            stats::lc_win_rate(&pick(&prefs, idx), &pick(&len_a, idx), &pick(&len_b, idx)).map_or(f64::NAN, |l| l.value)
        });
        r.pair(&format!("{name}.bootstrap.lc"), ci.as_ref().map(|c| (c.lo, c.hi)), &wb["lc"]);
        r.exact(&format!("{name}.bootstrap.lc_undefined"), ci.map_or(replicates, |c| c.undefined), &wb["lc_undefined"]);
    }
}

/// Compares every statistic on `inputs` with `expected`, failing with the full list of disagreements.
fn check(inputs: &Value, expected: &Value) {
    let mut r = Report::default();
    let wilson = inputs["wilson"].as_array().unwrap();
    assert_eq!(wilson.len(), expected["wilson"].as_array().unwrap().len(), "wilson cases");
    for (i, case) in wilson.iter().enumerate() {
        let (k, n) = (case[0].as_u64().unwrap(), case[1].as_u64().unwrap());
        r.pair(&format!("wilson[{i}] ({k}/{n})"), stats::wilson_95(k, n), &expected["wilson"][i]);
    }
    let sem = inputs["sem"].as_array().unwrap();
    assert_eq!(sem.len(), expected["sem"].as_array().unwrap().len(), "sem cases");
    for (i, values) in sem.iter().enumerate() {
        r.close(&format!("sem[{i}]"), stats::standard_error(&numbers(values, "sem")), &expected["sem"][i]);
    }
    let sets = inputs["sets"].as_array().unwrap();
    assert_eq!(sets.len(), expected["sets"].as_array().unwrap().len(), "sets");
    for (set, want) in sets.iter().zip(expected["sets"].as_array().unwrap()) {
        check_set(&mut r, set, want);
    }
    assert!(
        r.failures.is_empty(),
        "{} of {} values disagree:\n{}",
        r.failures.len(),
        r.compared,
        r.failures.join("\n")
    );
    // The fixtures hold well over a hundred comparisons; far fewer means the files were emptied.
    assert!(r.compared > 100, "only {} values compared", r.compared);
    eprintln!("{} values agree; largest difference {:e} (versions {})", r.compared, r.worst, expected["versions"]);
}

#[test]
fn committed_reference_values() {
    check(&read_json(&fixture("fixtures/inputs.json")), &read_json(&fixture("fixtures/expected.json")));
}

#[test]
fn live_reference_values() {
    let Some(python) = std::env::var_os("RTO_PYTHON") else {
        eprintln!("skipped: set RTO_PYTHON to a python with numpy, scipy and statsmodels to rerun reference.py");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("expected.json");
    let inputs = fixture("fixtures/inputs.json");
    let run = std::process::Command::new(&python)
        .arg(fixture("reference.py"))
        .arg("compute")
        .arg(&inputs)
        .arg(&out)
        .output()
        .unwrap_or_else(|e| panic!("RTO_PYTHON={}: {e}", python.to_string_lossy()));
    assert!(
        run.status.success(),
        "reference.py failed under RTO_PYTHON={} ({}):\n{}",
        python.to_string_lossy(),
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    check(&read_json(&inputs), &read_json(&out));
}
