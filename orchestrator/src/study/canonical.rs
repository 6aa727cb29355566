//! TOML values → canonical JSON params, with interpolation.
//!
//! Canonical means: object keys sorted (serde_json's map is ordered by key), integral floats written as
//! integers (`1.0` and `1` mean the same learning-rate multiplier or epoch count, so they give the same key and
//! the back-end sees the same value), other floats in their shortest round-trip form, and datetimes as their
//! TOML text. NaN and infinities are refused: they have no JSON form and no stable meaning in a key.

use std::collections::BTreeMap;

use serde_json::{Number, Value};

use super::interpolate::interpolate;

/// Why a value could not be made canonical, with the path inside the value where it happened.
#[derive(Debug)]
pub enum CanonicalError {
    /// `{name}` with no such variable.
    UnknownVar { path: Vec<String>, name: String },
    /// NaN or an infinity.
    NonFinite { path: Vec<String> },
}

/// Converts a TOML value, interpolating `vars` into every string. A string that is exactly one placeholder
/// (`"{lr}"`) of a variable in `typed` takes that value with its type, so that `foreach = { lr = [1e-4, 3e-4] }`
/// with `lr = "{lr}"` gives a number, not the string `"0.0001"`.
pub fn to_canonical(
    value: &toml::Value,
    vars: &BTreeMap<String, String>,
    typed: &BTreeMap<String, Value>,
) -> Result<Value, CanonicalError> {
    convert(value, &(vars, typed), &mut Vec::new())
}

/// The variables of one matrix combination whose value is a number or boolean (in `[vars]` or `foreach`), as
/// JSON values: what a whole-placeholder param string becomes (see [`to_canonical`]).
pub fn typed_vars(
    vars: &BTreeMap<String, String>,
    globals: &BTreeMap<String, toml::Value>,
    foreach: Option<&super::raw::Matrix>,
) -> BTreeMap<String, Value> {
    // The JSON form of a typed scalar whose text is the variable's current value.
    let typed_value = |name: &str, v: &toml::Value| -> Option<Value> {
        if vars.get(name) != scalar_text(v).as_ref() {
            return None;
        }
        match v {
            toml::Value::Integer(i) => Some(Value::Number((*i).into())),
            toml::Value::Float(f) => canonical_float(*f),
            toml::Value::Boolean(b) => Some(Value::Bool(*b)),
            _ => None,
        }
    };
    let mut typed: BTreeMap<String, Value> =
        globals.iter().filter_map(|(name, v)| Some((name.clone(), typed_value(name, v)?))).collect();
    // A matrix variable shadows a global of the same name: the value in effect is the combination's.
    for (name, values) in foreach.into_iter().flatten() {
        typed.remove(name);
        let current = values.get_ref().iter().find(|v| vars.get(name) == scalar_text(v.get_ref()).as_ref());
        if let Some(v) = current.and_then(|v| typed_value(name, v.get_ref())) {
            typed.insert(name.clone(), v);
        }
    }
    typed
}

type Vars<'a> = (&'a BTreeMap<String, String>, &'a BTreeMap<String, Value>);

fn convert(value: &toml::Value, vars: &Vars<'_>, path: &mut Vec<String>) -> Result<Value, CanonicalError> {
    let (text_vars, typed) = *vars;
    Ok(match value {
        toml::Value::String(s) => {
            let whole = s.strip_prefix('{').and_then(|r| r.strip_suffix('}')).filter(|n| !n.contains(['{', '}']));
            match whole.and_then(|name| typed.get(name)) {
                Some(v) => v.clone(),
                None => Value::String(
                    interpolate(s, text_vars)
                        .map_err(|name| CanonicalError::UnknownVar { path: path.clone(), name })?,
                ),
            }
        }
        toml::Value::Integer(i) => Value::Number((*i).into()),
        toml::Value::Float(f) => canonical_float(*f).ok_or_else(|| CanonicalError::NonFinite { path: path.clone() })?,
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                path.push(i.to_string());
                out.push(convert(item, vars, path)?);
                path.pop();
            }
            Value::Array(out)
        }
        toml::Value::Table(table) => {
            let mut out = serde_json::Map::new();
            for (k, v) in table {
                path.push(k.clone());
                out.insert(k.clone(), convert(v, vars, path)?);
                path.pop();
            }
            Value::Object(out)
        }
    })
}

/// An integral float within the exactly-representable range becomes an integer; NaN/inf become `None`.
pub fn canonical_float(f: f64) -> Option<Value> {
    if !f.is_finite() {
        return None;
    }
    if f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 {
        // -0.0 and 0.0 are the same number of epochs.
        return Some(Value::Number((f as i64).into()));
    }
    Number::from_f64(f).map(Value::Number)
}

/// The plain-text form of a scalar for interpolation (`{base}` = `llama`, `{n}` = `100`); `None` for
/// arrays and tables, which cannot be spliced into a string.
pub fn scalar_text(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => canonical_float(*f).map(|v| v.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        toml::Value::Datetime(d) => Some(d.to_string()),
        toml::Value::Array(_) | toml::Value::Table(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(toml_text: &str) -> String {
        let t: toml::Table = toml::from_str(toml_text).unwrap();
        to_canonical(&toml::Value::Table(t), &BTreeMap::new(), &BTreeMap::new()).unwrap().to_string()
    }

    #[test]
    fn key_order_and_integral_floats_do_not_matter() {
        assert_eq!(canon("b = 1\na = 2.0"), canon("a = 2\nb = 1.0"));
        assert_eq!(canon("lr = 1e-4"), r#"{"lr":0.0001}"#);
        assert_eq!(canon("x = -0.0"), r#"{"x":0}"#);
        assert_eq!(canon("x = 0.1"), r#"{"x":0.1}"#);
        assert_ne!(canon("x = 1.5"), canon("x = 1"));
        assert_eq!(canon("x = 1e300"), r#"{"x":1e+300}"#);
    }

    #[test]
    fn non_finite_floats_are_refused_with_their_path() {
        let t: toml::Table = toml::from_str("a = { b = [1, nan] }").unwrap();
        match to_canonical(&toml::Value::Table(t), &BTreeMap::new(), &BTreeMap::new()) {
            Err(CanonicalError::NonFinite { path }) => assert_eq!(path, ["a", "b", "1"]),
            other => panic!("{other:?}"),
        }
    }
}

#[cfg(test)]
mod typed_tests {
    use std::path::Path;

    #[test]
    fn a_whole_placeholder_keeps_the_type_of_its_matrix_or_global_value() {
        let text = r#"
[vars]
lr = 1e-4
name = "base"
[[stage]]
id = "s-{n}-{flag}"
uses = "command"
foreach = { n = [0, 100], flag = [true] }
params = { run = "echo", take = "{n}", lr = "{lr}", tag = "{name}", label = "n={n}", on = "{flag}" }
"#;
        let study = crate::study::load(Path::new("/tmp/typed.toml"), text.to_string()).unwrap();
        let p = &study.stages[1].params;
        assert_eq!(p["take"], serde_json::json!(100));
        assert_eq!(p["lr"], serde_json::json!(0.0001));
        assert_eq!(p["on"], serde_json::json!(true));
        // Strings stay strings: a string variable, and a placeholder inside a longer string.
        assert_eq!(p["tag"], serde_json::json!("base"));
        assert_eq!(p["label"], serde_json::json!("n=100"));
    }
}
