//! Discovery: which plugins exist, where they came from, without loading any library.
//!
//! Search order (first match of a name wins): `--plugin-dir`, the study's `[plugins] dirs`, `RTO_PLUGIN_PATH`
//! (`:`-separated), the directory beside the `rto` executable, then the plugins linked into this `rto`. An
//! external build of a first-party plugin therefore overrides the linked one.
//!
//! In a directory, every `*.rto-plugin.toml` or `rto-plugin.toml` (also one level down, `<dir>/<plugin>/`) is a
//! manifest naming a library beside it.

use std::path::{Path, PathBuf};

use api::ffi::PluginVTable;

use super::manifest::Manifest;

/// A plugin linked into the `rto` binary: its descriptor function.
pub type LinkedPlugin = fn() -> &'static PluginVTable;

/// Where a plugin was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Linked into this `rto` binary.
    Linked,
    /// A library with its manifest.
    Library {
        /// The manifest.
        manifest: PathBuf,
        /// The library (absolute).
        library: PathBuf,
        /// Which search location it was in (`--plugin-dir`, `study`, `RTO_PLUGIN_PATH`, `beside rto`).
        origin: String,
    },
}

/// A plugin that discovery found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// `model` or `judge`.
    pub kind: String,
    /// Its ops.
    pub ops: Vec<String>,
    /// Op → params that cannot change its results, left out of its stages' action keys.
    pub unkeyed_params: std::collections::BTreeMap<String, Vec<String>>,
    /// Where it is.
    pub source: Source,
}

/// Everything discovery found, and the manifests it could not read.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    /// Plugins, in search order (a name's first entry is the one used).
    pub plugins: Vec<Found>,
    /// Unreadable manifests (reported by `rto plugins`, and when a study needs a plugin that is missing).
    pub problems: Vec<String>,
    linked: Vec<(String, LinkedPlugin)>,
}

impl Registry {
    /// Searches `dirs` (each with the name of the setting it came from), then the linked plugins.
    pub fn discover(dirs: &[(PathBuf, String)], linked: &[LinkedPlugin]) -> Registry {
        let mut reg = Registry::default();
        for (dir, origin) in dirs {
            for manifest in manifests_in(dir) {
                match Manifest::read(&manifest) {
                    Ok(m) => {
                        let library = m.library_path(&manifest);
                        let library = std::path::absolute(&library).unwrap_or(library);
                        if !library.is_file() {
                            reg.problems.push(format!(
                                "`{}` names the library `{}`, which does not exist",
                                manifest.display(),
                                library.display()
                            ));
                            continue;
                        }
                        if m.abi != api::ffi::ABI_MAJOR {
                            reg.problems.push(format!(
                                "`{}`: plugin `{}` is built for ABI {}, this rto speaks ABI {}",
                                manifest.display(),
                                m.name,
                                m.abi,
                                api::ffi::ABI_MAJOR
                            ));
                            continue;
                        }
                        reg.plugins.push(Found {
                            name: m.name,
                            version: m.version,
                            kind: m.kind,
                            ops: m.ops,
                            unkeyed_params: m.unkeyed_params,
                            source: Source::Library { manifest, library, origin: origin.clone() },
                        });
                    }
                    Err(e) => reg.problems.push(e),
                }
            }
        }
        for &descriptor in linked {
            // Linked plugins are part of this binary: describing one reads its static tables.
            // SAFETY: a static descriptor of this binary.
            match unsafe { api::client::Plugin::from_raw(descriptor()) } {
                Ok(p) => {
                    reg.linked.push((p.description.name.clone(), descriptor));
                    reg.plugins.push(Found {
                        name: p.description.name.clone(),
                        version: p.description.version.clone(),
                        kind: p.description.kind.clone(),
                        ops: p.description.ops.iter().map(|o| o.name.clone()).collect(),
                        unkeyed_params: p
                            .description
                            .ops
                            .iter()
                            .filter(|o| !o.unkeyed_params.is_empty())
                            .map(|o| (o.name.clone(), o.unkeyed_params.clone()))
                            .collect(),
                        source: Source::Linked,
                    });
                }
                Err(e) => reg.problems.push(format!("linked plugin: {e}")),
            }
        }
        reg
    }

    /// The plugin a study's `uses = "<name>:…"` means.
    pub fn find(&self, name: &str) -> Option<&Found> {
        self.plugins.iter().find(|p| p.name == name)
    }

    /// The descriptor of a linked plugin.
    pub fn linked(&self, name: &str) -> Option<LinkedPlugin> {
        self.linked.iter().find(|(n, _)| n == name).map(|(_, d)| *d)
    }
}

/// The search directories, in order, with the setting each came from.
pub fn search_dirs(cli: &[PathBuf], study: &[PathBuf]) -> Vec<(PathBuf, String)> {
    let mut dirs: Vec<(PathBuf, String)> = Vec::new();
    dirs.extend(cli.iter().map(|d| (d.clone(), "--plugin-dir".to_string())));
    dirs.extend(study.iter().map(|d| (d.clone(), "study [plugins]".to_string())));
    if let Some(path) = std::env::var_os("RTO_PLUGIN_PATH") {
        dirs.extend(
            std::env::split_paths(&path).filter(|p| !p.as_os_str().is_empty()).map(|d| (d, "RTO_PLUGIN_PATH".into())),
        );
    }
    if let Some(dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf)) {
        dirs.push((dir.join("plugins"), "beside rto".into()));
    }
    dirs
}

/// Manifest files in `dir` and its immediate subdirectories, sorted.
fn manifests_in(dir: &Path) -> Vec<PathBuf> {
    let is_manifest = |p: &Path| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n == "rto-plugin.toml" || n.ends_with(".rto-plugin.toml"))
    };
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else { return out };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            if let Ok(sub) = std::fs::read_dir(&p) {
                out.extend(sub.flatten().map(|e| e.path()).filter(|p| is_manifest(p)));
            }
        } else if is_manifest(&p) {
            out.push(p);
        }
    }
    out.sort();
    out
}
