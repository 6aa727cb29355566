//! Crash consistency through the filesystem seam: stop after every effect in turn, reopen, verify.

use std::sync::Arc;

use cache::fsio::CrashAfter;
use cache::{ActionKey, Store};

use crate::{record, write_files};

/// Stores a two-level tree output and its record, as an executor does at the end of a stage.
fn commit(store: &Store, key: ActionKey) -> cache::Result<()> {
    let scratch = store.scratch_dir("stage")?;
    let out = scratch.path().join("model");
    write_files(&out, &[("weights.bin", &"w".repeat(10_000)), ("config.json", "{}"), ("tok/t.json", "[]")]);
    let log = scratch.path().join("log.txt");
    std::fs::write(&log, "loss 1.0").unwrap();
    let a = store.ingest(&out)?;
    let b = store.ingest(&log)?;
    store.put_action(&record(key, &[("model", a), ("log.txt", b)]))
}

#[test]
fn a_crash_after_any_effect_leaves_a_consistent_store() {
    let key = ActionKey::of_bytes(b"train");
    let mut crashed_somewhere = false;
    for n in 0.. {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cache");
        Store::open(&root).unwrap();
        let fs = Arc::new(CrashAfter::new(n));
        let store = Store::open_with(&root, fs.clone()).unwrap();
        let result = commit(&store, key);
        let reopened = Store::open(&root).unwrap();
        let report = reopened.verify().unwrap();
        assert!(report.is_consistent(), "after {n} effects: {report:?}");
        // Invariant: a record, if there is one, is complete, whether or not the commit got to report success
        // (a crash after the record's rename but before the directory fsync leaves it in place).
        if let Some(rec) = reopened.get_action(&key).unwrap() {
            let model = reopened.checkout(&rec.outputs["model"]).unwrap();
            assert_eq!(std::fs::read_to_string(model.join("tok/t.json")).unwrap(), "[]");
            assert_eq!(
                std::fs::read_to_string(reopened.checkout(&rec.outputs["log.txt"]).unwrap()).unwrap(),
                "loss 1.0"
            );
        } else {
            assert!(result.is_err(), "the commit succeeded but its record is missing");
        }
        if result.is_ok() {
            assert!(crashed_somewhere, "the loop must have crashed at smaller budgets first");
            return;
        }
        crashed_somewhere = true;
        // A later, uninterrupted run of the same action succeeds on the crashed store.
        commit(&reopened, key).unwrap();
        assert!(reopened.get_action(&key).unwrap().is_some());
        assert!(reopened.verify().unwrap().is_consistent());
        assert!(n < 100, "the commit should need far fewer than 100 effects");
    }
}
