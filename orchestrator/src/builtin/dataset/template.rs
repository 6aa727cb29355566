//! Chat templates: how an example becomes training text with a loss flag per segment, and how a prompt becomes
//! the inference prompt.
//!
//! The built-in Tulu template is written out in Rust: it is what the paper trains with, and its exact text is a
//! contract (`<|user|>\n{prompt}\n<|assistant|>\n{response}{eos}\n`). Jinja templates, written in the study or
//! taken from a Hugging Face `tokenizer_config.json`, are rendered the way `transformers` renders them
//! (`trim_blocks`, `lstrip_blocks`, Python string methods, `raise_exception`). Which part of a rendered
//! conversation carries the loss is found by rendering the assistant's content as a sentinel and splitting
//! there: everything before it is prompt, the response and everything after it (eos, trailing newline) is
//! trained on, as the paper's completion-only collator does. The response is inserted verbatim, so a template
//! filter applied to `content` (such as `| trim`) does not alter it.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use minijinja::{Environment, Error, ErrorKind, context};
use serde::Serialize;
use serde_json::Value;

use super::params::Mode;

/// The template as the study names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum TemplateSpec {
    /// The paper's Tulu format, built in.
    Tulu,
    /// A Jinja source written in the study.
    Jinja(String),
    /// The name of an input holding a Hugging Face `tokenizer_config.json` (or a directory with one).
    HfChatTemplate(String),
}

/// A piece of training text and whether the loss covers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(super) struct Segment {
    // Fields in alphabetical order, so that the serialised keys are sorted whatever serde_json's features are.
    pub loss: bool,
    pub text: String,
}

/// Unlikely in any data set: private-use code points around a name. An example that contains it anyway fails
/// with a clear message rather than being split at the wrong place.
const SENTINEL: &str = "\u{e000}rto:response\u{e001}";
const TEMPLATE_NAME: &str = "chat_template";

/// A template ready to render.
pub(super) struct Renderer {
    engine: Engine,
    eos: String,
    bos: String,
    /// How `stats.json` and messages name the template.
    name: String,
}

enum Engine {
    Tulu,
    Jinja(Box<Environment<'static>>),
}

/// Checks that a Jinja source compiles, for plan-time validation.
pub(super) fn compile_check(source: &str) -> Result<(), String> {
    environment(source).map(drop).map_err(|e| e.to_string())
}

fn environment(source: &str) -> Result<Environment<'static>, Error> {
    let mut env = Environment::new();
    // transformers renders chat templates with these settings; without them most templates emit stray newlines.
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |message: String| -> Result<String, Error> {
        Err(Error::new(ErrorKind::InvalidOperation, format!("the template raised an exception: {message}")))
    });
    // Outputs must be byte-identical across runs, so nothing that feeds them may read the clock.
    env.add_function("strftime_now", |_format: String| -> Result<String, Error> {
        Err(Error::new(
            ErrorKind::InvalidOperation,
            "`strftime_now` is not available: the dataset stage's output must not depend on the clock",
        ))
    });
    env.add_template_owned(TEMPLATE_NAME, source.to_owned())?;
    Ok(env)
}

impl Renderer {
    /// Builds the renderer; `eos` is the study's `eos` param, which wins over a tokenizer's own `eos_token`.
    pub(super) fn new(spec: &TemplateSpec, eos: Option<&str>, inputs: &BTreeMap<String, PathBuf>) -> Result<Renderer> {
        match spec {
            TemplateSpec::Tulu => Ok(Renderer {
                engine: Engine::Tulu,
                eos: eos.unwrap_or_default().to_owned(),
                bos: String::new(),
                name: "tulu".to_owned(),
            }),
            TemplateSpec::Jinja(source) => Ok(Renderer {
                engine: Engine::Jinja(Box::new(
                    environment(source)
                        .map_err(|e| anyhow!("param `template.jinja`: the template does not compile: {e}"))?,
                )),
                eos: eos.unwrap_or_default().to_owned(),
                bos: String::new(),
                name: "jinja".to_owned(),
            }),
            TemplateSpec::HfChatTemplate(input) => {
                let path = inputs.get(input).ok_or_else(|| {
                    anyhow!("param `template.hf_chat_template`: `{input}` is not an input of this stage")
                })?;
                let config = HfConfig::load(path)?;
                let engine = environment(&config.chat_template)
                    .map_err(|e| anyhow!("`{}`: `chat_template` does not compile: {e}", config.path.display()))?;
                Ok(Renderer {
                    engine: Engine::Jinja(Box::new(engine)),
                    eos: eos.map(str::to_owned).unwrap_or(config.eos_token),
                    bos: config.bos_token,
                    name: format!("hf_chat_template:{input}"),
                })
            }
        }
    }

    /// How `stats.json` names the template.
    pub(super) fn name(&self) -> &str {
        &self.name
    }

    /// The eos text the template appends (for the log).
    pub(super) fn eos(&self) -> &str {
        &self.eos
    }

    /// The training text of one example; RT renders only the assistant turn.
    pub(super) fn training(&self, mode: Mode, prompt: &str, response: &str) -> Result<Vec<Segment>, String> {
        let eos = &self.eos;
        let pieces = match &self.engine {
            Engine::Tulu => {
                let head = match mode {
                    Mode::It => format!("<|user|>\n{prompt}\n<|assistant|>\n"),
                    Mode::Rt => "<|assistant|>\n".to_owned(),
                };
                vec![(head, false), (format!("{response}{eos}\n"), true)]
            }
            Engine::Jinja(env) => {
                let assistant = Message { role: "assistant", content: SENTINEL };
                let messages = match mode {
                    Mode::It => vec![Message { role: "user", content: prompt }, assistant],
                    Mode::Rt => vec![assistant],
                };
                let text = self.render(env, &messages, false)?;
                let count = text.matches(SENTINEL).count();
                let Some((head, tail)) = text.split_once(SENTINEL).filter(|_| count == 1) else {
                    return Err(format!(
                        "template `{}` put the assistant's content into its output {count} time(s), expected exactly once",
                        self.name
                    ));
                };
                vec![(head.to_owned(), false), (format!("{response}{tail}"), true)]
            }
        };
        Ok(merge(pieces))
    }

    /// The prompt a model sees at inference, the same in both modes: the user turn and the generation prompt.
    pub(super) fn inference(&self, prompt: &str) -> Result<String, String> {
        match &self.engine {
            Engine::Tulu => Ok(format!("<|user|>\n{prompt}\n<|assistant|>\n")),
            Engine::Jinja(env) => self.render(env, &[Message { role: "user", content: prompt }], true),
        }
    }

    fn render(
        &self,
        env: &Environment<'static>,
        messages: &[Message<'_>],
        add_generation_prompt: bool,
    ) -> Result<String, String> {
        let template = env.get_template(TEMPLATE_NAME).map_err(|e| e.to_string())?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                eos_token => &self.eos,
                bos_token => &self.bos,
            })
            .map_err(|e| format!("template `{}` failed: {e}", self.name))
    }
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'a str,
    content: &'a str,
}

/// Drops empty pieces and joins neighbours with the same flag, so that equal texts give equal segment lists.
fn merge(pieces: Vec<(String, bool)>) -> Vec<Segment> {
    let mut out: Vec<Segment> = Vec::new();
    for (text, loss) in pieces {
        if text.is_empty() {
            continue;
        }
        match out.last_mut() {
            Some(last) if last.loss == loss => last.text.push_str(&text),
            _ => out.push(Segment { loss, text }),
        }
    }
    out
}

/// What is used from a Hugging Face tokenizer config.
struct HfConfig {
    path: PathBuf,
    chat_template: String,
    eos_token: String,
    bos_token: String,
}

impl HfConfig {
    /// Reads `tokenizer_config.json` (or that file inside a model directory). Newer checkpoints keep the template
    /// in `chat_template.jinja` beside it, which is used when the config has none.
    fn load(input: &Path) -> Result<HfConfig> {
        let path = if input.is_dir() { input.join("tokenizer_config.json") } else { input.to_owned() };
        let shown = path.display();
        let text = fs::read_to_string(&path).with_context(|| format!("cannot read `{shown}`"))?;
        let config: Value = serde_json::from_str(&text)
            .map_err(|e| anyhow!("`{shown}` line {} column {}: invalid JSON: {e}", e.line(), e.column()))?;
        let Value::Object(config) = config else {
            bail!("`{shown}`: expected a JSON object (a Hugging Face `tokenizer_config.json`)");
        };
        let chat_template = match config.get("chat_template") {
            Some(Value::String(s)) => s.clone(),
            // Several named templates: transformers uses the one named `default`.
            Some(Value::Array(items)) => items
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(|t| t.get("template"))
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("`{shown}`: field `chat_template` lists templates but none named `default` with a string `template`"))?,
            None | Some(Value::Null) => {
                let beside = path.with_file_name("chat_template.jinja");
                if input.is_dir() && beside.is_file() {
                    fs::read_to_string(&beside).with_context(|| format!("cannot read `{}`", beside.display()))?
                } else {
                    bail!("`{shown}`: field `chat_template` is missing (the tokenizer has no chat template)");
                }
            }
            Some(other) => bail!("`{shown}`: field `chat_template` is {}, expected a string", super::read::json_kind(other)),
        };
        let token = |key: &str| -> Result<String> {
            match config.get(key) {
                None | Some(Value::Null) => Ok(String::new()),
                Some(Value::String(s)) => Ok(s.clone()),
                // transformers serialises an `AddedToken` as an object holding its text in `content`.
                Some(Value::Object(o)) => match o.get("content") {
                    Some(Value::String(s)) => Ok(s.clone()),
                    _ => bail!("`{shown}`: field `{key}.content` is missing or not a string"),
                },
                Some(other) => {
                    bail!("`{shown}`: field `{key}` is {}, expected a string", super::read::json_kind(other))
                }
            }
        };
        Ok(HfConfig {
            chat_template,
            eos_token: token("eos_token")?,
            bos_token: token("bos_token")?,
            path: path.clone(),
        })
    }
}
