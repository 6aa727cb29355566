//! `results/<study>/<stage-id>/<output>`: links into the store, so results are reachable by stage id.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use cache::{Artifact, Store};

/// Makes `dir` hold exactly one symlink per output, pointing at the output's content in the store. Leaves the
/// directory untouched when it is already right (a no-op run writes nothing).
pub fn link(store: &Store, dir: &Path, outputs: &BTreeMap<String, Artifact>) -> anyhow::Result<()> {
    let mut wanted = BTreeMap::new();
    for (name, artifact) in outputs {
        wanted.insert(name.clone(), store.checkout(artifact)?);
    }
    if current(dir).as_ref() == Some(&wanted) {
        return Ok(());
    }
    // Build the new directory beside the old one and swap, so a reader never sees a half-made one.
    let parent = dir.parent().expect("results dirs have a parent");
    std::fs::create_dir_all(parent).with_context(|| format!("cannot create `{}`", parent.display()))?;
    let staging =
        parent.join(format!(".{}.new.{}", dir.file_name().unwrap_or_default().to_string_lossy(), std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir(&staging).with_context(|| format!("cannot create `{}`", staging.display()))?;
    for (name, target) in &wanted {
        std::os::unix::fs::symlink(target, staging.join(name))
            .with_context(|| format!("cannot link `{}`", staging.join(name).display()))?;
    }
    let old =
        parent.join(format!(".{}.old.{}", dir.file_name().unwrap_or_default().to_string_lossy(), std::process::id()));
    if dir.exists() {
        std::fs::rename(dir, &old).with_context(|| format!("cannot replace `{}`", dir.display()))?;
    }
    let swapped = std::fs::rename(&staging, dir);
    let _ = std::fs::remove_dir_all(&old);
    if let Err(e) = swapped {
        let _ = std::fs::remove_dir_all(&staging);
        // Another run may have made the same directory meanwhile: then it is already right.
        if current(dir).as_ref() != Some(&wanted) {
            return Err(e).with_context(|| format!("cannot create `{}`", dir.display()));
        }
    }
    Ok(())
}

/// Output name → link target of the links in `dir`, if it exists.
fn current(dir: &Path) -> Option<BTreeMap<String, std::path::PathBuf>> {
    std::fs::read_dir(dir).ok().map(|rd| {
        rd.flatten()
            .filter_map(|e| Some((e.file_name().into_string().ok()?, std::fs::read_link(e.path()).ok()?)))
            .collect()
    })
}
