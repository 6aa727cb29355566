//! Integration tests of the store: one binary, one module per area.

mod crash;
mod locks;
mod maintenance;
mod objects;
mod stat_index;

use std::collections::BTreeMap;
use std::path::Path;

use cache::{ActionKey, ActionRecord, Artifact, Provenance, RECORD_SCHEMA, Store};

/// Writes `files` (relative path → content) under `dir`.
pub fn write_files(dir: &Path, files: &[(&str, &str)]) {
    for (rel, content) in files {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
}

/// A record for `key` with the given outputs and a fixed provenance.
pub fn record(key: ActionKey, outputs: &[(&str, Artifact)]) -> ActionRecord {
    ActionRecord {
        schema: RECORD_SCHEMA,
        key,
        preimage: serde_json::json!({ "test": key.to_hex() }),
        outputs: outputs.iter().map(|(n, a)| (n.to_string(), *a)).collect::<BTreeMap<_, _>>(),
        provenance: Provenance {
            backend: "test".into(),
            host: "h".into(),
            pid: 1,
            run: "r".into(),
            start: "s".into(),
            end: "e".into(),
            duration_ms: 0,
            exit_status: 0,
        },
    }
}

/// A store in a fresh temporary directory.
pub fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("cache")).unwrap();
    (dir, store)
}
