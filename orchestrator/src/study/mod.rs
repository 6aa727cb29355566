//! Studies: loading a TOML file into validated, expanded stages.
//!
//! Two steps, as with every input rto reads: [`raw`] mirrors the file with spans; [`load`] validates it,
//! expands `foreach` matrices (one stage per combination) and `gather` matrices ([`gather`]: one input per
//! combination), interpolates `{var}` in ids, inputs and params, resolves each input to a stage
//! output or a path, and returns a [`Study`]. Every error is a [`StudyError`] naming file, line and column.
//! Loading never touches the cache.

mod canonical;
pub mod diagnostic;
pub mod executor;
mod gather;
pub mod interpolate;
mod raw;

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use miette::NamedSource;
use toml::Spanned;

pub use canonical::canonical_float;
pub use diagnostic::{Source, StudyError};

use canonical::{CanonicalError, scalar_text, to_canonical};
use interpolate::interpolate;

/// A loaded study: its stages in file order (after expansion).
#[derive(Debug, Clone)]
pub struct Study {
    /// The study's name: `[study] name`, or the file stem.
    pub name: String,
    /// `[study] description`.
    pub description: Option<String>,
    /// `[plugins] dirs`, absolute.
    pub plugin_dirs: Vec<PathBuf>,
    /// `[executor]`: where stages run and the study's Slurm settings (not part of any key).
    pub executor: executor::StudyExecutor,
    /// The study file, absolute.
    pub path: PathBuf,
    /// The directory relative paths in the study are resolved against.
    pub dir: PathBuf,
    /// The file's text, for diagnostics.
    pub source: Source,
    /// Stages, in file order; a `foreach` table's stages in the order of its matrix.
    pub stages: Vec<Stage>,
}

/// One stage after expansion.
#[derive(Debug, Clone)]
pub struct Stage {
    /// Unique id: letters, digits, `-` and `_`.
    pub id: String,
    /// What runs it.
    pub uses: Uses,
    /// Canonical params (a JSON object).
    pub params: serde_json::Value,
    /// Input name → what it refers to.
    pub inputs: BTreeMap<String, Input>,
    /// What the scheduler reserves for it.
    pub resources: Resources,
    /// `executor`: stay local, or Slurm overrides (not part of the key).
    pub executor: executor::StageExecutor,
    /// One line for people.
    pub description: Option<String>,
    /// Where it came from in the study file.
    pub origin: Origin,
}

/// Spans of a stage's parts in the study file, for diagnostics raised after loading.
#[derive(Debug, Clone)]
pub struct Origin {
    /// Index of the `[[stage]]` table in the file.
    pub table: usize,
    /// The whole table.
    pub span: Range<usize>,
    /// The `id` value.
    pub id: Range<usize>,
    /// The `uses` value.
    pub uses: Range<usize>,
    /// The `params` table, if written.
    pub params: Option<Range<usize>>,
}

/// What a stage `uses`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Uses {
    /// A built-in stage kind (`command`, `dataset`, `report`, `synthetic`).
    Builtin(String),
    /// An op of a plugin: `plugin:op`.
    Plugin {
        /// Plugin name.
        plugin: String,
        /// Op name.
        op: String,
    },
}

impl std::fmt::Display for Uses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Uses::Builtin(name) => f.write_str(name),
            Uses::Plugin { plugin, op } => write!(f, "{plugin}:{op}"),
        }
    }
}

/// One input of a stage.
#[derive(Debug, Clone)]
pub struct Input {
    /// What it refers to.
    pub source: InputSource,
    /// The reference's span in the study file.
    pub span: Range<usize>,
}

/// What an input refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputSource {
    /// Outputs of another stage: one output by name, or all of them as a directory.
    Stage {
        /// The upstream stage's id.
        stage: String,
        /// One output; `None` for all outputs as one directory.
        output: Option<String>,
    },
    /// A file or directory, hashed by content; absolute.
    Path(PathBuf),
    /// A remote file fetched into the cache's `downloads/` (or the HF cache), then hashed like a file.
    Remote(crate::remote::Remote),
}

/// Resources a stage needs while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Resources {
    /// Wall-clock limit of a plugin op (the worker is killed after it).
    pub timeout: Option<std::time::Duration>,
    /// Whole GPUs.
    pub gpus: u32,
    /// CPU cores (at least 1).
    pub cpus: u32,
    /// Bytes of memory; 0 when not declared.
    pub memory: u64,
}

/// Reads and loads the study at `path`.
pub fn load_file(path: &Path) -> Result<Study, StudyError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| StudyError::whole(format!("cannot read study `{}`: {e}", path.display())))?;
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    load(&abs, text)
}

/// Loads a study from its text; `path` names it in diagnostics and anchors relative paths.
pub fn load(path: &Path, text: String) -> Result<Study, StudyError> {
    let source: Source = Arc::new(NamedSource::new(path.display().to_string(), text).with_language("toml"));
    let text = source.inner().as_str();
    let raw: raw::RawStudy = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let message = e.message().trim_end_matches('.').to_string();
        StudyError::at(&source, span, format!("invalid study: {message}"), "here")
    })?;
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let name = match raw.study.as_ref().and_then(|m| m.get_ref().name.as_ref()) {
        Some(n) => {
            check_name(n.get_ref()).map_err(|m| StudyError::at(&source, n.span(), m, "study name"))?;
            n.get_ref().clone()
        }
        None => {
            let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("study").to_string();
            check_name(&stem).map_err(|m| {
                StudyError::whole(format!("study file name `{stem}` cannot name the study: {m}"))
                    .with_help("set `[study] name = \"…\"`")
            })?;
            stem
        }
    };

    let mut globals = BTreeMap::new();
    let typed_globals: BTreeMap<String, toml::Value> =
        raw.vars.iter().map(|(k, v)| (k.clone(), v.get_ref().clone())).collect();
    for (k, v) in &raw.vars {
        let text = scalar_text(v.get_ref()).ok_or_else(|| {
            StudyError::at(&source, v.span(), format!("variable `{k}` must be a string, number or boolean"), "here")
        })?;
        globals.insert(k.clone(), text);
    }

    let mut stages = Vec::new();
    for (table, spanned) in raw.stage.iter().enumerate() {
        expand_stage(&source, table, spanned, (&globals, &typed_globals), &mut stages)?;
    }

    let mut first_at: HashMap<String, usize> = HashMap::new();
    for (i, st) in stages.iter().enumerate() {
        if let Some(&j) = first_at.get(&st.id) {
            return Err(StudyError::at(
                &source,
                st.origin.id.clone(),
                format!("duplicate stage id `{}`", st.id),
                "second",
            )
            .with_related(stages[j].origin.id.clone(), "first")
            .with_help("ids must be unique after `foreach` expansion: add the matrix variables to the id"));
        }
        first_at.insert(st.id.clone(), i);
    }
    let ids: HashMap<String, usize> = first_at;

    // Inputs whose first component names a stage are stage references; the rest are paths.
    for st in &mut stages {
        for input in st.inputs.values_mut() {
            let InputSource::Path(p) = &input.source else { continue };
            let written = p.to_string_lossy().to_string();
            let (head, output) = match written.split_once('.') {
                Some((h, o)) => (h.to_string(), Some(o.to_string())),
                None => (written.clone(), None),
            };
            let names_stage = ids.contains_key(&head) && !written.contains('/');
            if names_stage && dir.join(p).exists() {
                let what = match &output {
                    Some(o) => format!("output `{o}`"),
                    None => "the outputs".into(),
                };
                return Err(StudyError::at(
                    &source,
                    input.span.clone(),
                    format!("input `{written}` is both a file and {what} of stage `{head}`"),
                    "ambiguous",
                )
                .with_help(format!("write `./{written}` for the file")));
            }
            if names_stage {
                if head == st.id {
                    return Err(StudyError::at(
                        &source,
                        input.span.clone(),
                        format!("stage `{}` uses its own output", st.id),
                        "here",
                    ));
                }
                if output.as_deref() == Some("") {
                    return Err(StudyError::at(&source, input.span.clone(), "empty output name", "here"));
                }
                input.source = InputSource::Stage { stage: head, output };
            } else {
                let abs = dir.join(p);
                if !abs.exists() {
                    let mut err = StudyError::at(
                        &source,
                        input.span.clone(),
                        format!("input `{written}` is neither a stage of this study nor an existing file"),
                        "not found",
                    );
                    if let Some(similar) = closest(&head, ids.keys()) {
                        err = err.with_help(format!("did you mean stage `{similar}`?"));
                    } else {
                        err = err.with_help(format!("paths are relative to `{}`", dir.display()));
                    }
                    return Err(err);
                }
                input.source = InputSource::Path(abs);
            }
        }
    }
    let description = raw.study.as_ref().and_then(|m| m.get_ref().description.clone());
    let plugin_dirs = raw.plugins.as_ref().map(|p| p.dirs.iter().map(|d| dir.join(d)).collect()).unwrap_or_default();
    let executor = executor::study_executor(&source, raw.executor.as_ref())?;
    Ok(Study { name, description, plugin_dirs, executor, path: path.to_path_buf(), dir, source, stages })
}

fn expand_stage(
    source: &Source,
    table: usize,
    spanned: &Spanned<raw::RawStage>,
    (globals, typed_globals): (&BTreeMap<String, String>, &BTreeMap<String, toml::Value>),
    out: &mut Vec<Stage>,
) -> Result<(), StudyError> {
    let raw = spanned.get_ref();
    // The matrix: every combination of the foreach lists, later variables varying fastest.
    let mut combos: Vec<BTreeMap<String, String>> = vec![globals.clone()];
    if let Some(foreach) = &raw.foreach {
        if foreach.get_ref().is_empty() {
            return Err(StudyError::at(source, foreach.span(), "`foreach` has no variables", "empty"));
        }
        for (var, values) in foreach.get_ref() {
            if !interpolate::is_var_name(var) {
                return Err(StudyError::at(source, foreach.span(), format!("`{var}` is not a variable name"), "here")
                    .with_help("use letters, digits, `_` and `-`, starting with a letter"));
            }
            if values.get_ref().is_empty() {
                return Err(StudyError::at(
                    source,
                    values.span(),
                    format!("`foreach.{var}` is an empty list"),
                    "empty",
                ));
            }
            let mut next = Vec::new();
            for combo in &combos {
                for v in values.get_ref() {
                    let text = scalar_text(v.get_ref()).ok_or_else(|| {
                        StudyError::at(source, v.span(), "matrix values must be strings, numbers or booleans", "here")
                    })?;
                    let mut c = combo.clone();
                    c.insert(var.clone(), text);
                    next.push(c);
                }
            }
            combos = next;
        }
    }

    let uses = parse_uses(raw.uses.get_ref()).map_err(|m| StudyError::at(source, raw.uses.span(), m, "here"))?;
    let resources = resources(source, raw.resources.as_ref())?;
    let stage_executor = executor::stage_executor(source, raw.executor.as_ref())?;
    let gather = gather::Gather::parse(source, raw.gather.as_ref(), raw.foreach.as_ref())?;
    gather.check_used(source, raw.inputs.keys())?;
    for vars in combos {
        let id =
            interpolate(raw.id.get_ref(), &vars).map_err(|name| unknown_var(source, raw.id.span(), &name, &vars))?;
        check_name(&id)
            .map_err(|m| StudyError::at(source, raw.id.span(), format!("stage id `{id}`: {m}"), "this id"))?;
        let params = match &raw.params {
            None => serde_json::Value::Object(Default::default()),
            Some(p) => {
                let typed = canonical::typed_vars(&vars, typed_globals, raw.foreach.as_ref().map(|f| f.get_ref()));
                to_canonical(&toml::Value::Table(p.get_ref().clone()), &vars, &typed)
            }
            .map_err(|e| {
                let (path, message) = match e {
                    CanonicalError::UnknownVar { path, name } => (path, unknown_var_message(&name, &vars)),
                    CanonicalError::NonFinite { path } => (path, "NaN and infinite numbers cannot be params".into()),
                };
                let span = locate_param(source, table, &path).unwrap_or(p.span());
                StudyError::at(source, span, message, "here")
            })?,
        };
        let mut inputs = BTreeMap::new();
        for (written, reference) in &raw.inputs {
            let (text, pin) = match reference.get_ref() {
                raw::RawInput::Ref(text) => (text.as_str(), None),
                raw::RawInput::Url(u) => (u.url.as_str(), Some(u.sha256.as_str())),
            };
            // One input, or one per combination of the `gather` variables its name mentions.
            for (name, vars) in gather.expand(source, written, text, reference.span(), &vars)? {
                if inputs.contains_key(&name) {
                    return Err(StudyError::at(
                        source,
                        reference.span(),
                        format!("input `{name}` is given twice (after `gather` expansion)"),
                        "here",
                    )
                    .with_help("input names must be unique within a stage"));
                }
                let text =
                    interpolate(text, &vars).map_err(|var| unknown_var(source, reference.span(), &var, &vars))?;
                if text.is_empty() {
                    return Err(StudyError::at(source, reference.span(), format!("input `{name}` is empty"), "here"));
                }
                let source = if text.contains("://") || pin.is_some() {
                    let remote = crate::remote::Remote::parse(&text, pin)
                        .map_err(|m| StudyError::at(source, reference.span(), m, "this input"))?;
                    InputSource::Remote(remote)
                } else {
                    InputSource::Path(PathBuf::from(text))
                };
                inputs.insert(name, Input { source, span: reference.span() });
            }
        }
        out.push(Stage {
            id,
            uses: uses.clone(),
            params,
            inputs,
            resources,
            executor: stage_executor.clone(),
            description: raw.description.clone(),
            origin: Origin {
                table,
                span: spanned.span(),
                id: raw.id.span(),
                uses: raw.uses.span(),
                params: raw.params.as_ref().map(|p| p.span()),
            },
        });
    }
    Ok(())
}

fn unknown_var_message(name: &str, vars: &BTreeMap<String, String>) -> String {
    if vars.is_empty() {
        format!("unknown variable `{name}` (no variables are defined here)")
    } else {
        let known = vars.keys().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ");
        format!("unknown variable `{name}` (known here: {known})")
    }
}

fn unknown_var(source: &Source, span: Range<usize>, name: &str, vars: &BTreeMap<String, String>) -> StudyError {
    let known = vars.keys().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ");
    StudyError::at(source, span, format!("unknown variable `{name}`"), "used here").with_help(if known.is_empty() {
        "define it in `[vars]` or the stage's `foreach`".to_string()
    } else {
        format!("variables known here: {known}")
    })
}

fn parse_uses(text: &str) -> Result<Uses, String> {
    let valid = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    match text.split_once(':') {
        None if valid(text) => Ok(Uses::Builtin(text.to_string())),
        Some((plugin, op)) if valid(plugin) && valid(op) => Ok(Uses::Plugin { plugin: plugin.into(), op: op.into() }),
        _ => Err(format!(
            "`uses = \"{text}\"` is neither a built-in (`command`, `dataset`, `report`, `synthetic`) nor `plugin:op`"
        )),
    }
}

fn resources(source: &Source, raw: Option<&Spanned<raw::RawResources>>) -> Result<Resources, StudyError> {
    let mut r = Resources { gpus: 0, cpus: 1, memory: 0, timeout: None };
    let Some(raw) = raw else { return Ok(r) };
    let count = |v: &Option<Spanned<i64>>, what: &str, min: i64| -> Result<Option<u32>, StudyError> {
        match v {
            None => Ok(None),
            Some(s) if *s.get_ref() >= min && *s.get_ref() <= 4096 => Ok(Some(*s.get_ref() as u32)),
            Some(s) => {
                Err(StudyError::at(source, s.span(), format!("`{what}` must be between {min} and 4096"), "here"))
            }
        }
    };
    if let Some(g) = count(&raw.get_ref().gpus, "gpus", 0)? {
        r.gpus = g;
    }
    if let Some(c) = count(&raw.get_ref().cpus, "cpus", 1)? {
        r.cpus = c;
    }
    if let Some(t) = &raw.get_ref().timeout {
        r.timeout = Some(humantime::parse_duration(t.get_ref()).map_err(|e| {
            StudyError::at(source, t.span(), format!("`timeout`: {e}"), "here")
                .with_help("write e.g. \"90s\", \"30min\", \"2h\"")
        })?);
    }
    if let Some(m) = &raw.get_ref().memory {
        r.memory = parse_memory(m.get_ref()).ok_or_else(|| {
            StudyError::at(
                source,
                m.span(),
                "`memory` must be bytes or a size such as \"512MiB\", \"16GiB\", \"2GB\"",
                "here",
            )
        })?;
    }
    Ok(r)
}

/// Parses a memory size: an integer of bytes, or a number with a unit (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB).
pub fn parse_memory(value: &toml::Value) -> Option<u64> {
    match value {
        toml::Value::Integer(i) if *i >= 0 => Some(*i as u64),
        toml::Value::String(s) => {
            let s = s.trim();
            let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
            let (num, unit) = s.split_at(split);
            let num: f64 = num.parse().ok()?;
            let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
                "" | "b" => 1.0,
                "kb" | "k" => 1e3,
                "mb" | "m" => 1e6,
                "gb" | "g" => 1e9,
                "tb" | "t" => 1e12,
                "kib" => 1024.0,
                "mib" => 1024.0 * 1024.0,
                "gib" => 1024.0 * 1024.0 * 1024.0,
                "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
                _ => return None,
            };
            Some((num * mult).round() as u64)
        }
        _ => None,
    }
}

/// Checks a stage id or study name: letters, digits, `-` and `_`, starting with a letter or digit.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && name.len() <= 128;
    if ok {
        Ok(())
    } else {
        Err("use letters, digits, `-` and `_` (at most 128), starting with a letter or digit".into())
    }
}

/// The span of `params.<path>` inside the `table`-th `[[stage]]` of the source, as deep as it can be found.
pub fn locate_param(source: &Source, table: usize, path: &[String]) -> Option<Range<usize>> {
    let parsed = toml::de::DeTable::parse(source.inner()).ok()?;
    let stage = parsed.get_ref().get("stage")?.get_ref().as_array()?.get(table)?;
    let mut node = stage.get_ref().get("params")?;
    let mut span = node.span();
    for seg in path {
        let next = match node.get_ref() {
            toml::de::DeValue::Table(t) => t.get(seg.as_str()),
            toml::de::DeValue::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get(i)),
            _ => None,
        };
        match next {
            Some(n) => {
                node = n;
                span = n.span();
            }
            None => break,
        }
    }
    Some(span)
}

/// The candidate closest to `name` by edit distance, if close enough to be a likely typo.
fn closest<'a>(name: &str, candidates: impl Iterator<Item = &'a String>) -> Option<&'a String> {
    candidates
        .map(|c| (strsim::levenshtein(name, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4))
        .min_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(b.1)))
        .map(|(_, c)| c)
}
