//! The study file as written: serde types that mirror the TOML and keep spans.
//!
//! Nothing past [`super::load`] sees these types; they are validated and expanded into [`super::Study`].

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// A whole study file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStudy {
    /// `[study]`: metadata.
    pub study: Option<Spanned<RawMeta>>,
    /// `[vars]`: constants usable as `{name}` anywhere interpolation happens.
    #[serde(default)]
    pub vars: BTreeMap<String, Spanned<toml::Value>>,
    /// `[plugins]`: where to look for plugins (besides `--plugin-dir`, `RTO_PLUGIN_PATH`, …).
    pub plugins: Option<RawPlugins>,
    /// `[executor]`: where stages run (`local` or `slurm`) and the study's Slurm settings.
    pub executor: Option<Spanned<RawExecutor>>,
    /// `[[stage]]` tables, in file order.
    #[serde(default)]
    pub stage: Vec<Spanned<RawStage>>,
}

/// `[plugins]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlugins {
    /// Directories, relative to the study file.
    #[serde(default)]
    pub dirs: Vec<String>,
}

/// `[study]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMeta {
    /// The study's name; defaults to the file stem. Names `results/<name>/` and the study's refs.
    pub name: Option<Spanned<String>>,
    /// One line for people.
    pub description: Option<String>,
}

/// One `[[stage]]` table, before expansion.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStage {
    /// The id, possibly with `{var}` placeholders filled by `foreach`.
    pub id: Spanned<String>,
    /// A built-in (`dataset`, `command`) or `plugin:op`.
    pub uses: Spanned<String>,
    /// One line for people; not part of the key.
    pub description: Option<String>,
    /// Matrix expansion: variable → list of values; one stage per combination.
    pub foreach: Option<Spanned<Matrix>>,
    /// Input expansion: variable → list of values; an input name that mentions `{var}` of these becomes one
    /// input per combination of the values of the variables it mentions (see `gather.rs`).
    pub gather: Option<Spanned<Matrix>>,
    /// The back-end's parameters.
    pub params: Option<Spanned<toml::Table>>,
    /// Input name → `stage-id`, `stage-id.output`, a path relative to the study file, `hf://…`, or
    /// `{ url = "https://…", sha256 = "…" }`.
    #[serde(default)]
    pub inputs: BTreeMap<String, Spanned<RawInput>>,
    /// What the scheduler must reserve.
    pub resources: Option<Spanned<RawResources>>,
    /// `"local"` to run on the submitting machine under any executor, or a table of Slurm overrides.
    pub executor: Option<Spanned<RawStageExecutor>>,
}

/// One input as written.
#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "a string (`stage-id`, `stage-id.output`, a path, `hf://…`) or `{ url = \"https://…\", sha256 = \"…\" }`"
)]
pub enum RawInput {
    /// A stage reference, a path or an `hf://` name.
    Ref(String),
    /// A URL pinned by sha256.
    Url(RawUrl),
}

/// `{ url = "https://…", sha256 = "…" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUrl {
    /// The URL.
    pub url: String,
    /// The sha256 of the file's bytes (`sha256sum FILE`).
    pub sha256: String,
}

/// `foreach = { var = [values…] }`.
pub type Matrix = BTreeMap<String, Spanned<Vec<Spanned<toml::Value>>>>;

/// `resources = { gpus = 1, cpus = 4, memory = "16GiB" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawResources {
    /// Whole GPUs, handed out as `CUDA_VISIBLE_DEVICES`.
    pub gpus: Option<Spanned<i64>>,
    /// CPU cores.
    pub cpus: Option<Spanned<i64>>,
    /// Memory: bytes, or a string such as `"512MiB"`, `"16GiB"`, `"2GB"`.
    pub memory: Option<Spanned<toml::Value>>,
    /// Wall-clock limit of a plugin op, e.g. `"2h"`, `"30min"`.
    pub timeout: Option<Spanned<String>>,
}

/// `[executor]`, and a stage's `executor = { … }` overrides. Not part of any key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExecutor {
    /// `"local"` or `"slurm"`.
    pub kind: Option<String>,
    /// `sbatch --partition`.
    pub partition: Option<String>,
    /// `sbatch --account`.
    pub account: Option<String>,
    /// `sbatch --qos`.
    pub qos: Option<String>,
    /// `sbatch --time`, as a duration such as `"4h"` or `"90min"`.
    pub time: Option<String>,
    /// Further `sbatch` flags, e.g. `["--constraint=a100"]`.
    pub sbatch_args: Option<Vec<String>>,
}

/// A stage's `executor`: a kind, or a table.
#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "`\"local\"`, `\"slurm\"` or a table such as `{ partition = \"gpu\", time = \"4h\" }`")]
pub enum RawStageExecutor {
    /// `executor = "local"`.
    Kind(String),
    /// `executor = { … }`.
    Table(RawExecutor),
}
