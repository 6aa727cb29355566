//! `gather`: many inputs of one stage from a matrix, so that a stage reading a whole experiment grid (a report
//! over 4 base models × 3 datasets) does not list each input by hand.
//!
//! ```toml
//! [[stage]]
//! id = "report"
//! uses = "report"
//! gather = { model = ["llama", "gemma"], data = ["alpaca", "dolly"] }
//! inputs = { "win-{model}-{data}" = "judge-{model}-{data}", "loss-{model}" = "tune-{model}.metrics.jsonl" }
//! ```
//!
//! gives the stage the inputs `win-llama-alpaca`, `win-llama-dolly`, `win-gemma-alpaca`, `win-gemma-dolly`,
//! `loss-llama` and `loss-gemma`, each reference interpolated with the values its name got. Where `foreach`
//! makes one *stage* per combination, `gather` makes one *input* per combination, and only over the gather
//! variables the input's name mentions (`loss-{model}` expands over `model` alone), later variables varying
//! fastest as in `foreach`.
//!
//! Rules, each reported with the study's file, line and column:
//! - a reference may use a gather variable only if its input's name does, or its copies would collide under one
//!   name;
//! - every gather variable appears in some input name: an unused one is almost always a typo;
//! - a variable cannot be both `foreach` and `gather`: whether it makes stages or inputs would be ambiguous;
//! - expanded names must be valid input names and unique within the stage.

use std::collections::BTreeMap;
use std::ops::Range;

use toml::Spanned;

use super::canonical::scalar_text;
use super::interpolate::{interpolate, is_var_name, placeholders};
use super::raw::Matrix;
use super::{Source, StudyError, unknown_var};

/// Variable name → value, as interpolation takes them.
type Vars = BTreeMap<String, String>;

/// A stage's `gather` matrix, checked; empty when the stage has none.
#[derive(Debug, Default)]
pub(super) struct Gather {
    /// Variable → values as text, in the matrix's order (variables sorted by name, values as written).
    vars: Vec<(String, Vec<String>)>,
    /// The `gather` table, for errors about it as a whole.
    span: Range<usize>,
}

impl Gather {
    /// Checks the stage's `gather` table against its `foreach` table.
    pub(super) fn parse(
        source: &Source,
        gather: Option<&Spanned<Matrix>>,
        foreach: Option<&Spanned<Matrix>>,
    ) -> Result<Gather, StudyError> {
        let Some(gather) = gather else { return Ok(Gather::default()) };
        if gather.get_ref().is_empty() {
            return Err(StudyError::at(source, gather.span(), "`gather` has no variables", "empty"));
        }
        let mut vars = Vec::new();
        for (var, values) in gather.get_ref() {
            if !is_var_name(var) {
                return Err(StudyError::at(source, gather.span(), format!("`{var}` is not a variable name"), "here")
                    .with_help("use letters, digits, `_` and `-`, starting with a letter"));
            }
            if let Some(foreach) = foreach.filter(|f| f.get_ref().contains_key(var)) {
                return Err(StudyError::at(
                    source,
                    gather.span(),
                    format!("`{var}` is both a `foreach` and a `gather` variable"),
                    "gather",
                )
                .with_related(foreach.span(), "foreach")
                .with_help("`foreach` makes one stage per value, `gather` one input per value: rename one of them"));
            }
            if values.get_ref().is_empty() {
                return Err(StudyError::at(source, values.span(), format!("`gather.{var}` is an empty list"), "empty"));
            }
            let mut texts = Vec::with_capacity(values.get_ref().len());
            for v in values.get_ref() {
                texts.push(scalar_text(v.get_ref()).ok_or_else(|| {
                    StudyError::at(source, v.span(), "gather values must be strings, numbers or booleans", "here")
                })?);
            }
            vars.push((var.clone(), texts));
        }
        Ok(Gather { vars, span: gather.span() })
    }

    /// Fails if a gather variable appears in none of the stage's input names.
    pub(super) fn check_used<'a>(
        &self,
        source: &Source,
        names: impl Iterator<Item = &'a String> + Clone,
    ) -> Result<(), StudyError> {
        for (var, _) in &self.vars {
            if !names.clone().any(|n| placeholders(n).contains(var)) {
                return Err(StudyError::at(
                    source,
                    self.span.clone(),
                    format!("`gather.{var}` is used by no input name"),
                    "here",
                )
                .with_help(format!(
                    "write `{{{var}}}` in the names of the inputs it should expand, e.g. \
                     `inputs = {{ \"win-{{{var}}}\" = \"judge-{{{var}}}\" }}`"
                )));
            }
        }
        Ok(())
    }

    /// What one written input becomes: each expanded input name with the variables to interpolate its reference
    /// with (`vars` plus the gather values of that copy). `span` is the reference's, for errors.
    pub(super) fn expand(
        &self,
        source: &Source,
        name: &str,
        reference: &str,
        span: Range<usize>,
        vars: &BTreeMap<String, String>,
    ) -> Result<Vec<(String, Vars)>, StudyError> {
        let in_name = placeholders(name);
        let used: Vec<&(String, Vec<String>)> = self.vars.iter().filter(|(v, _)| in_name.contains(v)).collect();
        if let Some(var) =
            placeholders(reference).into_iter().find(|r| self.vars.iter().any(|(v, _)| v == r) && !in_name.contains(r))
        {
            return Err(StudyError::at(
                source,
                span,
                format!("input `{name}` uses gather variable `{var}` in its reference but not in its name"),
                "here",
            )
            .with_help(format!("add `{{{var}}}` to the input's name, so that each value gets an input of its own")));
        }
        let mut combos = vec![vars.clone()];
        for (var, values) in used {
            let mut next = Vec::with_capacity(combos.len() * values.len());
            for combo in &combos {
                for value in values {
                    let mut c = combo.clone();
                    c.insert(var.clone(), value.clone());
                    next.push(c);
                }
            }
            combos = next;
        }
        let mut out = Vec::with_capacity(combos.len());
        for combo in combos {
            let expanded = interpolate(name, &combo).map_err(|v| unknown_var(source, span.clone(), &v, &combo))?;
            if !is_var_name(&expanded) {
                let shown =
                    if expanded == name { format!("`{name}`") } else { format!("`{expanded}` (from `{name}`)") };
                return Err(StudyError::at(source, span, format!("input name {shown} is not valid"), "here")
                    .with_help("use letters, digits, `_` and `-`, starting with a letter"));
            }
            out.push((expanded, combo));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::study::{InputSource, Study, StudyError, load};

    fn study(text: &str) -> Result<Study, StudyError> {
        let stages = "[[stage]]\nid = \"judge-{m}-{d}\"\nuses = \"command\"\nforeach = { m = [\"llama\", \"gemma\"], d = \
                      [\"alpaca\", \"dolly\"] }\n[[stage]]\nid = \"tune-{m}\"\nuses = \"command\"\nforeach = { m = \
                      [\"llama\", \"gemma\"] }\n";
        load(Path::new("/nonexistent/study.toml"), format!("{stages}{text}"))
    }

    /// The report stage's inputs, as `name = stage[.output]`.
    fn inputs(text: &str) -> Vec<String> {
        let s = study(text).unwrap_or_else(|e| panic!("{e}: {:?}", e.help));
        let report = s.stages.iter().find(|s| s.id == "report").unwrap();
        report
            .inputs
            .iter()
            .map(|(k, v)| match &v.source {
                InputSource::Stage { stage, output: Some(o) } => format!("{k} = {stage}.{o}"),
                InputSource::Stage { stage, output: None } => format!("{k} = {stage}"),
                other => format!("{k} = {other:?}"),
            })
            .collect()
    }

    fn error(text: &str) -> (String, String, Option<String>) {
        let e = study(text).unwrap_err();
        (e.message.clone(), e.location().unwrap_or_default(), e.help)
    }

    const REPORT: &str = "[[stage]]\nid = \"report\"\nuses = \"command\"\n";

    #[test]
    fn expands_each_input_over_the_variables_its_name_mentions() {
        let got = inputs(&format!(
            "{REPORT}gather = {{ model = [\"llama\", \"gemma\"], data = [\"alpaca\", \"dolly\"] }}\ninputs = {{ \
             \"win-{{model}}-{{data}}\" = \"judge-{{model}}-{{data}}\", \"loss-{{model}}\" = \
             \"tune-{{model}}.metrics.jsonl\", one = \"tune-llama\" }}\n"
        ));
        assert_eq!(
            got,
            [
                "loss-gemma = tune-gemma.metrics.jsonl",
                "loss-llama = tune-llama.metrics.jsonl",
                "one = tune-llama",
                "win-gemma-alpaca = judge-gemma-alpaca",
                "win-gemma-dolly = judge-gemma-dolly",
                "win-llama-alpaca = judge-llama-alpaca",
                "win-llama-dolly = judge-llama-dolly",
            ]
        );
    }

    #[test]
    fn numbers_are_values_and_foreach_variables_interpolate_names_too() {
        let text = "[[stage]]\nid = \"r-{d}\"\nuses = \"command\"\nforeach = { d = [\"alpaca\"] }\ngather = { m = \
                    [\"llama\", \"gemma\"] }\ninputs = { \"win-{m}-{d}\" = \"judge-{m}-{d}\" }\n";
        let s = study(text).unwrap();
        let r = s.stages.iter().find(|s| s.id == "r-alpaca").unwrap();
        assert_eq!(r.inputs.keys().collect::<Vec<_>>(), ["win-gemma-alpaca", "win-llama-alpaca"]);
        let counts = "[[stage]]\nid = \"report\"\nuses = \"command\"\ngather = { n = [0, 100] }\ninputs = { \
                      \"refusal-{n}\" = \"tune-{m}\" }\n";
        let e = study(counts).unwrap_err();
        assert!(e.message.contains("unknown variable `m`"), "{}", e.message);
    }

    #[test]
    fn a_reference_cannot_use_a_gather_variable_its_name_does_not() {
        let (message, at, help) = error(&format!(
            "{REPORT}gather = {{ m = [\"llama\", \"gemma\"] }}\ninputs = {{ \"x-{{m}}\" = \"tune-{{m}}\", y = \
             \"tune-{{m}}\" }}\n"
        ));
        assert_eq!(message, "input `y` uses gather variable `m` in its reference but not in its name");
        assert_eq!(at, "/nonexistent/study.toml:13:38");
        assert!(help.unwrap().contains("add `{m}` to the input's name"));
    }

    #[test]
    fn an_unused_gather_variable_is_an_error() {
        let (message, at, _) = error(&format!(
            "{REPORT}gather = {{ m = [\"llama\"], dd = [\"alpaca\"] }}\ninputs = {{ \"x-{{m}}\" = \"tune-{{m}}\" }}\n"
        ));
        assert_eq!(message, "`gather.dd` is used by no input name");
        assert_eq!(at, "/nonexistent/study.toml:12:10");
    }

    #[test]
    fn a_variable_cannot_be_both_foreach_and_gather() {
        let (message, _, _) = error(
            "[[stage]]\nid = \"r-{m}\"\nuses = \"command\"\nforeach = { m = [\"a\"] }\ngather = { m = [\"llama\"] \
             }\ninputs = { \"x-{m}\" = \"tune-{m}\" }\n",
        );
        assert_eq!(message, "`m` is both a `foreach` and a `gather` variable");
    }

    #[test]
    fn empty_and_bad_matrices_are_errors() {
        let (message, _, _) = error(&format!("{REPORT}gather = {{}}\n"));
        assert_eq!(message, "`gather` has no variables");
        let (message, at, _) =
            error(&format!("{REPORT}gather = {{ m = [] }}\ninputs = {{ \"x-{{m}}\" = \"tune-{{m}}\" }}\n"));
        assert_eq!(message, "`gather.m` is an empty list");
        assert_eq!(at, "/nonexistent/study.toml:12:16");
        let (message, _, _) =
            error(&format!("{REPORT}gather = {{ m = [[1]] }}\ninputs = {{ \"x-{{m}}\" = \"tune-{{m}}\" }}\n"));
        assert_eq!(message, "gather values must be strings, numbers or booleans");
    }

    #[test]
    fn expanded_names_must_be_valid_and_unique() {
        let (message, _, _) =
            error(&format!("{REPORT}gather = {{ m = [\"a.b\"] }}\ninputs = {{ \"x-{{m}}\" = \"tune-llama\" }}\n"));
        assert_eq!(message, "input name `x-a.b` (from `x-{m}`) is not valid");
        let (message, at, _) = error(&format!(
            "{REPORT}gather = {{ m = [\"llama\"] }}\ninputs = {{ \"x-{{m}}\" = \"tune-{{m}}\", x-llama = \
             \"tune-gemma\" }}\n"
        ));
        assert_eq!(message, "input `x-llama` is given twice (after `gather` expansion)");
        assert_eq!(at, "/nonexistent/study.toml:13:22");
    }
}
