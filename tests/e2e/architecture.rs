//! Dependency directions between the workspace's crates, checked over `cargo metadata` so that a wrong edge
//! fails with its path. The rules are in ARCHITECTURE.md.

use std::collections::BTreeMap;

/// Workspace crate → (its directory relative to the root, its normal dependencies; optional ones end in `?`).
fn workspace() -> BTreeMap<String, (String, Vec<String>)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(&root)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let root = root.canonicalize().unwrap();
    v["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let manifest = std::path::Path::new(p["manifest_path"].as_str().unwrap());
            let dir = manifest.parent().unwrap().strip_prefix(&root).unwrap().display().to_string();
            let deps = p["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["kind"].is_null())
                .map(|d| {
                    let name = d["name"].as_str().unwrap().to_string();
                    if d["optional"].as_bool() == Some(true) { format!("{name}?") } else { name }
                })
                .collect();
            (p["name"].as_str().unwrap().to_string(), (dir, deps))
        })
        .collect()
}

#[test]
fn crate_names_equal_directory_names() {
    for (name, (dir, _)) in workspace() {
        let last = dir.rsplit('/').next().unwrap();
        assert_eq!(name, last, "crate `{name}` lives in `{dir}`");
    }
}

#[test]
fn dependency_directions() {
    let ws = workspace();
    let members: Vec<&String> = ws.keys().collect();
    for (name, (dir, deps)) in &ws {
        for dep in deps {
            let optional = dep.ends_with('?');
            let dep = &dep.trim_end_matches('?').to_string();
            let internal = members.contains(&dep);
            // The ABI crate is shared by host and plugins, so it depends on nothing of either.
            assert!(!(name == "api" && internal), "`api` ({dir}) must not depend on `{dep}`");
            // The store knows nothing of studies or plugins.
            assert!(!(name == "cache" && internal), "`cache` ({dir}) must not depend on `{dep}`");
            // Nothing depends on the orchestrator; plugins talk to it through the ABI.
            assert!(dep != "orchestrator", "`{name}` ({dir}) must not depend on `orchestrator`");
            // Heavy ML crates stay inside the model plugins; the `rto` binary links first-party plugins only
            // through its optional `builtin-plugins` feature, so the orchestrator's library builds without them.
            let heavy = dep.starts_with("candle");
            let linked_plugin = name == "orchestrator" && optional && internal;
            assert!(
                !heavy || dir.starts_with("plugins/") || linked_plugin,
                "`{name}` ({dir}) must not depend on `{dep}`"
            );
            assert!(
                !(name == "orchestrator" && internal && dep != "cache" && dep != "api" && !optional),
                "`orchestrator` may depend on plugin crate `{dep}` only optionally (feature `builtin-plugins`)"
            );
        }
    }
}
