//! `{var}` interpolation.
//!
//! `{name}` (a name of letters, digits, `_` and `-`) is replaced by the variable's value. Everything else is
//! left as it is, so that the other brace languages a study embeds keep working: Jinja's `{{ … }}` and
//! `{% … %}` (a `{{` … `}}` run is copied verbatim), shell's `${HOME}`, and JSON's `{"a": 1}`.

use std::collections::BTreeMap;

/// Replaces each `{name}` in `text`; returns the name of the first unknown variable on failure.
pub fn interpolate(text: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    substitute(text, |name| vars.get(name).cloned())
}

/// The variable names `text` mentions as `{name}`, in order of appearance (repeats kept), by the same rules as
/// [`interpolate`].
pub fn placeholders(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let _ = substitute(text, |name| {
        names.push(name.to_string());
        Some(String::new())
    });
    names
}

/// The one scanner behind [`interpolate`] and [`placeholders`], so the two cannot disagree about what a
/// placeholder is.
fn substitute(text: &str, mut lookup: impl FnMut(&str) -> Option<String>) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        if text[i..].starts_with("{{") {
            // A Jinja expression: copy through its closing `}}`.
            let end = text[i + 2..].find("}}").map(|e| i + 2 + e + 2).unwrap_or(text.len());
            out.push_str(&text[i..end]);
            i = end;
            continue;
        }
        if bytes[i] == b'{'
            && (i == 0 || bytes[i - 1] != b'$')
            && let Some(len) = text[i + 1..].find('}')
            && is_var_name(&text[i + 1..i + 1 + len])
        {
            let name = &text[i + 1..i + 1 + len];
            match lookup(name) {
                Some(v) => out.push_str(&v),
                None => return Err(name.to_string()),
            }
            i += len + 2;
            continue;
        }
        let ch = text[i..].chars().next().expect("in bounds");
        out.push(ch);
        i += ch.len_utf8();
    }
    Ok(out)
}

/// True for a variable name: `[A-Za-z_][A-Za-z0-9_-]*`.
pub fn is_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: Result<&str, &str>) {
        let vars = BTreeMap::from([("base".to_string(), "llama".to_string()), ("mode".to_string(), "rt".into())]);
        assert_eq!(interpolate(text, &vars), expected.map(str::to_string).map_err(str::to_string), "{text}");
    }

    #[test]
    fn cases() {
        check("train-{base}-{mode}", Ok("train-llama-rt"));
        check("no vars", Ok("no vars"));
        check("{missing}", Err("missing"));
        check("{{ eos_token }} and {{base}}", Ok("{{ eos_token }} and {{base}}"));
        check("{% if x %}{base}{% endif %}", Ok("{% if x %}llama{% endif %}"));
        check("echo ${HOME} {base}", Ok("echo ${HOME} llama"));
        check(r#"{"a": 1} {base}"#, Ok(r#"{"a": 1} llama"#));
        check("{ base }", Ok("{ base }"));
        check("unclosed {base", Ok("unclosed {base"));
        check("ünïcödé {mode}", Ok("ünïcödé rt"));
    }

    #[test]
    fn placeholders_follow_the_same_rules() {
        assert_eq!(placeholders("win-{model}-{data}-{model}"), ["model", "data", "model"]);
        assert_eq!(placeholders("{{ row }} ${HOME} { x } {missing"), Vec::<String>::new());
        assert_eq!(placeholders("{% if a %}{b}{% endif %}"), ["b"]);
    }
}
