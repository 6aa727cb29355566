//! `verify` and `gc`.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use cache::{ActionKey, Store};

use crate::{record, store, write_files};

fn stored(s: &Store, name: &str, content: &str) -> cache::Artifact {
    let scratch = s.scratch_dir("t").unwrap();
    let f = scratch.path().join(name);
    std::fs::write(&f, content).unwrap();
    s.ingest(&f).unwrap()
}

#[test]
fn verify_quarantines_a_corrupt_object_and_the_records_that_need_it() {
    let (_d, s) = store();
    let good = stored(&s, "g", "good");
    let bad = stored(&s, "b", "bad");
    let (k1, k2) = (ActionKey::of_bytes(b"1"), ActionKey::of_bytes(b"2"));
    s.put_action(&record(k1, &[("o", good)])).unwrap();
    s.put_action(&record(k2, &[("o", bad)])).unwrap();
    assert!(s.verify().unwrap().is_consistent());

    let path = s.object_path(&bad.digest);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&path, "flipped").unwrap();
    let report = s.verify().unwrap();
    assert_eq!(report.corrupt_objects, vec![bad.digest]);
    assert_eq!(report.quarantined_actions, vec![k2]);
    assert!(s.get_action(&k2).unwrap().is_none(), "a corrupt output is never a cache hit");
    assert!(s.get_action(&k1).unwrap().is_some());
    assert!(s.verify().unwrap().is_consistent(), "after quarantine the store is consistent again");
}

#[test]
fn verify_finds_a_damaged_tree_below_a_record() {
    let (_d, s) = store();
    let scratch = s.scratch_dir("t").unwrap();
    write_files(&scratch.path().join("d"), &[("x", "1")]);
    let tree = s.ingest(&scratch.path().join("d")).unwrap();
    let key = ActionKey::of_bytes(b"t");
    s.put_action(&record(key, &[("d", tree)])).unwrap();
    let child = s.read_tree(&tree.digest).unwrap().entries[0].digest;
    std::fs::remove_file(s.object_path(&child)).unwrap();
    let report = s.verify().unwrap();
    assert_eq!(report.quarantined_actions, vec![key], "{report:?}");
}

#[test]
fn gc_keeps_roots_and_what_they_reach_and_frees_the_rest() {
    let (_d, s) = store();
    let kept = stored(&s, "k", "kept");
    let dropped = stored(&s, "d", "dropped");
    let (k1, k2) = (ActionKey::of_bytes(b"1"), ActionKey::of_bytes(b"2"));
    s.put_action(&record(k1, &[("o", kept)])).unwrap();
    s.put_action(&record(k2, &[("o", dropped)])).unwrap();
    let roots = BTreeSet::from([k1]);

    // Within the grace period nothing goes: a concurrent run may not have written its record yet.
    let young = s.gc(&roots, Duration::from_secs(3600), false).unwrap();
    assert_eq!((young.actions_removed, young.objects_removed), (0, 0));

    let dry = s.gc(&roots, Duration::ZERO, true).unwrap();
    assert_eq!((dry.actions_removed, dry.objects_removed, dry.bytes_freed), (1, 1, 7));
    assert!(s.get_action(&k2).unwrap().is_some(), "a dry run removes nothing");

    let real = s.gc(&roots, Duration::ZERO, false).unwrap();
    assert_eq!(real, dry);
    assert!(s.get_action(&k1).unwrap().is_some());
    assert!(s.get_action(&k2).unwrap().is_none());
    assert!(!s.has_object(&dropped.digest));
    assert!(s.verify().unwrap().is_consistent());
}
