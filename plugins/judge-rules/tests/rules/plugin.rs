//! The descriptor and the discovery manifest agree with the crate.

use crate::plugin;

#[test]
fn the_descriptor_describes_a_judge_with_four_ops() {
    let p = plugin();
    assert_eq!(p.description.name, "judge-rules");
    assert_eq!(p.description.kind, "judge");
    assert_eq!(p.description.version, env!("CARGO_PKG_VERSION"));
    let ops: Vec<&str> = p.description.ops.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(ops, ["refusal", "exact-match", "length", "pairwise-correctness"]);
    assert!(p.description.ops.iter().all(|o| !o.summary.is_empty() && o.env_facts.is_empty()));
}

/// `rto-plugin.toml` is read without loading the library, so nothing else keeps it in step with the code.
#[test]
fn the_manifest_beside_the_cdylib_matches_the_descriptor() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../judge-rules-cdylib/rto-plugin.toml");
    let text = std::fs::read_to_string(path).expect("the manifest exists");
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key).and_then(|r| r.trim_start().strip_prefix('=')))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("`{key}` in {path}"))
    };
    let p = plugin();
    assert_eq!(value("name"), format!("\"{}\"", p.description.name));
    assert_eq!(value("version"), format!("\"{}\"", p.description.version));
    assert_eq!(value("kind"), format!("\"{}\"", p.description.kind));
    assert_eq!(value("abi"), api::ffi::ABI_MAJOR.to_string());
    assert_eq!(value("library"), "\"librto_judge_rules.so\"");
    let ops: Vec<String> = p.description.ops.iter().map(|o| format!("\"{}\"", o.name)).collect();
    assert_eq!(value("ops"), format!("[{}]", ops.join(", ")));
}
