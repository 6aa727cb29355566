//! `rto-plugin.toml`: what a plugin library is, read before the library is ever loaded.
//!
//! Listing plugins must not run their code (loading a library runs its constructors), so discovery reads
//! only manifests; the library is opened in a worker process when a stage runs or `rto plugins check` asks.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// A plugin manifest, beside its library.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The name a study uses (`uses = "<name>:<op>"`).
    pub name: String,
    /// Its version.
    pub version: String,
    /// `model` or `judge`.
    pub kind: String,
    /// The plugin ABI major the library was built for.
    pub abi: u32,
    /// The library's file name, relative to the manifest.
    pub library: String,
    /// The ops it offers.
    pub ops: Vec<String>,
    /// Op → its params that cannot change results, left out of action keys (`OpInfo::unkeyed_params`).
    #[serde(default)]
    pub unkeyed_params: std::collections::BTreeMap<String, Vec<String>>,
}

impl Manifest {
    /// Reads and checks a manifest; errors name the file (and line and column for TOML errors).
    pub fn read(path: &Path) -> Result<Manifest, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
        let m: Manifest = toml::from_str(&text).map_err(|e| {
            let at = e
                .span()
                .map(|s| {
                    let before = &text[..s.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    let col = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
                    format!(":{line}:{col}")
                })
                .unwrap_or_default();
            format!("`{}{at}`: {}", path.display(), e.message().trim_end_matches('.'))
        })?;
        if crate::study::check_name(&m.name).is_err() {
            return Err(format!("`{}`: `name = \"{}\"` is not a valid plugin name", path.display(), m.name));
        }
        if !matches!(m.kind.as_str(), "model" | "judge") {
            return Err(format!("`{}`: `kind` must be `model` or `judge`", path.display()));
        }
        if let Some(op) = m.unkeyed_params.keys().find(|op| !m.ops.contains(op)) {
            return Err(format!("`{}`: `unkeyed_params.{op}` names an op that is not in `ops`", path.display()));
        }
        if m.library.contains('/') || m.library.is_empty() {
            return Err(format!("`{}`: `library` must be a file name beside the manifest", path.display()));
        }
        Ok(m)
    }

    /// The library's path, given the manifest's.
    pub fn library_path(&self, manifest: &Path) -> PathBuf {
        manifest.parent().unwrap_or(Path::new(".")).join(&self.library)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<Manifest, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.rto-plugin.toml");
        std::fs::write(&path, text).unwrap();
        Manifest::read(&path)
    }

    const HEAD: &str =
        "name = \"j\"\nversion = \"0.1.0\"\nkind = \"judge\"\nabi = 1\nlibrary = \"libj.so\"\nops = [\"a\"]\n";

    #[test]
    fn unkeyed_params_are_read_per_op_and_must_name_an_op() {
        let m = read(&format!("{HEAD}[unkeyed_params]\na = [\"concurrency\"]\n")).unwrap();
        assert_eq!(m.unkeyed_params["a"], ["concurrency"]);
        assert!(read(HEAD).unwrap().unkeyed_params.is_empty());
        let e = read(&format!("{HEAD}[unkeyed_params]\nb = [\"x\"]\n")).unwrap_err();
        assert!(e.contains("`unkeyed_params.b` names an op that is not in `ops`"), "{e}");
    }
}
