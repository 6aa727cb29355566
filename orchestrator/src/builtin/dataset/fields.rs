//! Field mapping: which columns of a row hold the prompt and the response, by preset or by explicit `fields`.
//!
//! The presets follow the paper's `generate_training_data.py`: the prompt is the instruction, plus `"\n\n"` and
//! the context when the context is non-empty; LIMA takes the first two turns of `conversations`.

use serde_json::Value;

use super::read::{Row, json_kind as kind};

/// A named field layout of a well-known data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Preset {
    /// `yahma/alpaca-cleaned`: `instruction`, `input`, `output`.
    Alpaca,
    /// `databricks/databricks-dolly-15k`: `instruction`, `context`, `response`.
    Dolly,
    /// `GAIR/lima`: `conversations` (prompt = turn 0, response = turn 1).
    Lima,
    /// `prompt` with `response` or `completion` (the paper's own JSONL files use `completion`).
    Generic,
}

impl Preset {
    /// For messages listing the valid names.
    pub(super) const NAMES: &'static str = "`alpaca`, `dolly`, `lima`, `generic`";

    pub(super) fn from_name(name: &str) -> Option<Preset> {
        Some(match name {
            "alpaca" => Preset::Alpaca,
            "dolly" => Preset::Dolly,
            "lima" => Preset::Lima,
            "generic" => Preset::Generic,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Preset::Alpaca => "alpaca",
            Preset::Dolly => "dolly",
            Preset::Lima => "lima",
            Preset::Generic => "generic",
        }
    }

    fn layout(self) -> Layout {
        let s = |x: &str| x.to_owned();
        match self {
            Preset::Alpaca => {
                Layout::Pair { prompt: s("instruction"), context: Some(s("input")), response: vec![s("output")] }
            }
            Preset::Dolly => {
                Layout::Pair { prompt: s("instruction"), context: Some(s("context")), response: vec![s("response")] }
            }
            Preset::Lima => Layout::Conversations { field: s("conversations") },
            Preset::Generic => {
                Layout::Pair { prompt: s("prompt"), context: None, response: vec![s("response"), s("completion")] }
            }
        }
    }
}

/// Where prompt and response come from, and how to name that in messages.
#[derive(Debug, Clone)]
pub(super) struct Mapping {
    layout: Layout,
    /// E.g. "preset `alpaca` expects `instruction`, `input`, `output`"; appended to field errors.
    expects: String,
}

#[derive(Debug, Clone)]
enum Layout {
    /// A context field that is missing or null counts as empty, as many exports drop empty `input`s.
    /// The response is the first of `response` present in the row.
    Pair { prompt: String, context: Option<String>, response: Vec<String> },
    /// An array of strings: prompt = element 0, response = element 1.
    Conversations { field: String },
}

impl Mapping {
    /// Combines a preset with explicit `fields` (each given key overrides the preset's). The error carries the
    /// `fields` key at fault, if any.
    pub(super) fn resolve(
        preset: Option<Preset>,
        fields: Option<&[(&str, String)]>,
    ) -> Result<Mapping, (Option<&'static str>, String)> {
        let fields = fields.unwrap_or(&[]);
        let get = |key: &str| fields.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone());
        let has_pair_keys = ["prompt", "context", "response"].iter().any(|k| get(k).is_some());
        let conversations = get("conversations");

        let layout = match preset.map(Preset::layout) {
            None if fields.is_empty() => {
                return Err((
                    None,
                    format!(
                        "give `preset` ({}) or `fields` (e.g. `{{ prompt = \"question\", response = \"answer\" }}`)",
                        Preset::NAMES
                    ),
                ));
            }
            Some(Layout::Conversations { field }) => {
                if has_pair_keys {
                    let key = ["prompt", "context", "response"].into_iter().find(|k| get(k).is_some());
                    return Err((
                        key,
                        "preset `lima` reads `conversations`; only `fields.conversations` can override it".to_owned(),
                    ));
                }
                Layout::Conversations { field: conversations.unwrap_or(field) }
            }
            None if conversations.is_some() => {
                if has_pair_keys {
                    return Err((
                        Some("conversations"),
                        "give either `conversations` or `prompt`/`response`, not both".to_owned(),
                    ));
                }
                Layout::Conversations { field: conversations.unwrap_or_default() }
            }
            Some(Layout::Pair { .. }) if conversations.is_some() => {
                return Err((
                    Some("conversations"),
                    "`conversations` applies only to preset `lima` or to `fields` without a preset".to_owned(),
                ));
            }
            Some(Layout::Pair { prompt, context, response }) => Layout::Pair {
                prompt: get("prompt").unwrap_or(prompt),
                context: get("context").or(context),
                response: get("response").map(|r| vec![r]).unwrap_or(response),
            },
            None => {
                let Some(prompt) = get("prompt") else {
                    return Err((
                        None,
                        "`fields` needs `prompt` (or `conversations`) when no `preset` is given".to_owned(),
                    ));
                };
                // No `response`: a prompt-only source (AdvBench, HarmBench, …), valid only for an evaluation set,
                // which `Params::parse` checks since only it knows `holdout`.
                Layout::Pair { prompt, context: get("context"), response: get("response").into_iter().collect() }
            }
        };
        let expects = describe(preset.filter(|_| fields.is_empty()), &layout);
        Ok(Mapping { layout, expects })
    }

    /// False for a prompt-only source (explicit `fields` without `response`): its examples have no response.
    pub(super) fn has_response(&self) -> bool {
        !matches!(&self.layout, Layout::Pair { response, .. } if response.is_empty())
    }

    /// Extracts `(prompt, response)` from a row (the response is empty for a prompt-only source). `file` is the
    /// file's name as shown in messages.
    pub(super) fn extract(&self, row: &Row, file: &str) -> Result<(String, String), String> {
        let loc = &row.loc;
        match &self.layout {
            Layout::Pair { prompt, context, response } => {
                let instruction = self.required(row, prompt, file)?;
                let context = match context {
                    Some(name) => self.optional(row, name, file)?,
                    None => "",
                };
                let found = response.iter().find_map(|name| row.fields.get(name).map(|v| (name, v)));
                let Some((name, value)) = found else {
                    if response.is_empty() {
                        return Ok((self.join(instruction, context), String::new()));
                    }
                    let missing = response.iter().map(|r| format!("`{r}`")).collect::<Vec<_>>().join(" or ");
                    return Err(format!("`{file}` {loc}: field {missing} is missing ({})", self.expects));
                };
                let response = self.as_text(value, name, row, file)?;
                Ok((self.join(instruction, context), response.to_owned()))
            }
            Layout::Conversations { field } => {
                let value = row
                    .fields
                    .get(field)
                    .ok_or_else(|| format!("`{file}` {loc}: field `{field}` is missing ({})", self.expects))?;
                let Value::Array(turns) = value else {
                    return Err(format!(
                        "`{file}` {loc}: field `{field}` is {}, expected an array of strings ({})",
                        kind(value),
                        self.expects
                    ));
                };
                let (Some(prompt), Some(response)) = (turns.first(), turns.get(1)) else {
                    return Err(format!(
                        "`{file}` {loc}: field `{field}` has {} turn(s), expected at least 2 (prompt, response)",
                        turns.len()
                    ));
                };
                let prompt = self.as_text(prompt, &format!("{field}[0]"), row, file)?;
                let response = self.as_text(response, &format!("{field}[1]"), row, file)?;
                Ok((prompt.to_owned(), response.to_owned()))
            }
        }
    }

    /// The prompt: the instruction, then a blank line and the context when there is one.
    fn join(&self, instruction: &str, context: &str) -> String {
        if context.is_empty() { instruction.to_owned() } else { format!("{instruction}\n\n{context}") }
    }

    fn required<'r>(&self, row: &'r Row, name: &str, file: &str) -> Result<&'r str, String> {
        match row.fields.get(name) {
            None => Err(format!("`{file}` {}: field `{name}` is missing ({})", row.loc, self.expects)),
            Some(v) => self.as_text(v, name, row, file),
        }
    }

    fn optional<'r>(&self, row: &'r Row, name: &str, file: &str) -> Result<&'r str, String> {
        match row.fields.get(name) {
            None | Some(Value::Null) => Ok(""),
            Some(v) => self.as_text(v, name, row, file),
        }
    }

    fn as_text<'r>(&self, v: &'r Value, name: &str, row: &Row, file: &str) -> Result<&'r str, String> {
        v.as_str().ok_or_else(|| {
            format!("`{file}` {}: field `{name}` is {}, expected a string ({})", row.loc, kind(v), self.expects)
        })
    }
}

fn describe(preset: Option<Preset>, layout: &Layout) -> String {
    let names = match layout {
        Layout::Pair { prompt, context, response } => {
            let mut names = vec![format!("`{prompt}`")];
            names.extend(context.iter().map(|c| format!("`{c}`")));
            names.push(response.iter().map(|r| format!("`{r}`")).collect::<Vec<_>>().join(" or "));
            names.join(", ")
        }
        Layout::Conversations { field } => format!("`{field}` (an array of at least 2 strings)"),
    };
    match preset {
        Some(p) => format!("preset `{}` expects {names}", p.name()),
        None => format!("the source's mapping expects {names}"),
    }
}
