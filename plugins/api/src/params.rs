//! Reading a plugin op's params (canonical JSON) with errors that carry the param's path, so that rto points at
//! the right place in the user's study. (judge-rules and judge-openai read their params with it.)

use serde_json::{Map, Value};

use crate::Error;

/// The params as a table (null counts as empty), refusing keys outside `valid` with the list of valid ones;
/// `plugin` and `op` name the op in the message (`unknown param `x` for `judge-rules:refusal``).
pub fn table(plugin: &str, op: &str, params: &Value, valid: &[&str]) -> Result<Map<String, Value>, Error> {
    let map = match params {
        Value::Null => Map::new(),
        Value::Object(m) => m.clone(),
        other => return Err(Error::param(&[], format!("params of `{op}` must be a table, not {}", kind(other)))),
    };
    // Sorted, so that with several unknown keys the same one is named every time.
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    if let Some(key) = keys.into_iter().find(|k| !valid.contains(&k.as_str())) {
        return Err(Error::param(
            &[key],
            format!("unknown param `{key}` for `{plugin}:{op}`; valid params: {}", valid.join(", ")),
        ));
    }
    Ok(map)
}

/// What a JSON value is, for messages (`a string`, `a list`, …).
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a table",
    }
}

/// The string param `key`, if given.
pub fn string(p: &Map<String, Value>, key: &str) -> Result<Option<String>, Error> {
    match p.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(Error::param(&[key], format!("`{key}` must be a string, not {}", kind(other)))),
    }
}

/// The boolean param `key`, if given.
pub fn boolean(p: &Map<String, Value>, key: &str) -> Result<Option<bool>, Error> {
    match p.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(Error::param(&[key], format!("`{key}` must be true or false, not {}", kind(other)))),
    }
}
