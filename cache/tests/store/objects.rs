//! Storing files and trees, checkouts, records and refs.

use std::os::unix::fs::PermissionsExt;

use cache::{ActionKey, ArtifactKind, ObjectDigest, Store, StoreError};

use crate::{record, store, write_files};

#[test]
fn file_is_moved_in_and_named_by_its_digest() {
    let (_d, s) = store();
    let scratch = s.scratch_dir("t").unwrap();
    let f = scratch.path().join("out.txt");
    std::fs::write(&f, "hello").unwrap();
    let a = s.ingest(&f).unwrap();
    assert_eq!(a.kind, ArtifactKind::File);
    assert_eq!(a.digest, ObjectDigest::of_bytes(b"hello"));
    assert_eq!(a.size, 5);
    assert!(!f.exists(), "the source is consumed, not copied");
    let obj = s.object_path(&a.digest);
    assert_eq!(std::fs::read_to_string(&obj).unwrap(), "hello");
    assert_eq!(std::fs::metadata(&obj).unwrap().permissions().mode() & 0o222, 0, "objects are read-only");
}

#[test]
fn identical_outputs_are_stored_once() {
    let (_d, s) = store();
    let scratch = s.scratch_dir("t").unwrap();
    for name in ["a", "b"] {
        let f = scratch.path().join(name);
        std::fs::write(&f, "same").unwrap();
        s.ingest(&f).unwrap();
    }
    let objects = walk(&s.root().join("objects"));
    assert_eq!(objects.len(), 1, "{objects:?}");
}

#[test]
fn tree_digest_depends_on_names_modes_and_content_only() {
    let (_d, s) = store();
    let scratch = s.scratch_dir("t").unwrap();
    let make = |dir: &str, content: &str, exec: bool| {
        let root = scratch.path().join(dir);
        write_files(&root, &[("a.txt", "A"), ("sub/b.bin", content)]);
        if exec {
            std::fs::set_permissions(root.join("a.txt"), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        root
    };
    let one = s.ingest(&make("one", "B", false)).unwrap();
    let two = s.ingest(&make("two", "B", false)).unwrap();
    let other = s.ingest(&make("three", "C", false)).unwrap();
    let exec = s.ingest(&make("four", "B", true)).unwrap();
    assert_eq!(one.kind, ArtifactKind::Tree);
    assert_eq!(one.digest, two.digest, "same content in another directory: same digest");
    assert_ne!(one.digest, other.digest);
    assert_ne!(one.digest, exec.digest, "the executable bit is part of a tree");
    assert_eq!(one.size, 2);

    let checkout = s.checkout(&one).unwrap();
    assert_eq!(std::fs::read_to_string(checkout.join("sub/b.bin")).unwrap(), "B");
    assert_eq!(s.checkout(&one).unwrap(), checkout, "checked out once");
    let exec_out = s.checkout(&exec).unwrap();
    assert_ne!(std::fs::metadata(exec_out.join("a.txt")).unwrap().permissions().mode() & 0o111, 0);
}

#[test]
fn symlink_outputs_are_refused_with_their_path() {
    let (_d, s) = store();
    let scratch = s.scratch_dir("t").unwrap();
    let dir = scratch.path().join("out");
    write_files(&dir, &[("real", "x")]);
    std::os::unix::fs::symlink("real", dir.join("link")).unwrap();
    let err = s.ingest(&dir).unwrap_err();
    assert!(matches!(err, StoreError::BadOutput { .. }), "{err}");
    assert!(err.to_string().contains("link"), "{err}");
}

#[test]
fn action_records_round_trip_and_need_their_outputs() {
    let (_d, s) = store();
    let scratch = s.scratch_dir("t").unwrap();
    let f = scratch.path().join("o");
    std::fs::write(&f, "x").unwrap();
    let a = s.ingest(&f).unwrap();
    let key = ActionKey::of_bytes(b"k");
    assert!(s.get_action(&key).unwrap().is_none());
    let rec = record(key, &[("o", a)]);
    s.put_action(&rec).unwrap();
    assert_eq!(s.get_action(&key).unwrap().as_ref(), Some(&rec));
    assert_eq!(s.list_actions().unwrap(), vec![key]);

    // An object that vanished makes the record a miss, not a broken hit.
    let obj = s.object_path(&a.digest);
    std::fs::remove_file(&obj).unwrap();
    assert!(s.get_action(&key).unwrap().is_none());
}

#[test]
fn refs_round_trip_and_reject_path_tricks() {
    let (_d, s) = store();
    s.write_ref("last/study/stage-1", &serde_json::json!({"k": 1})).unwrap();
    assert_eq!(s.read_ref("last/study/stage-1").unwrap(), Some(serde_json::json!({"k": 1})));
    assert_eq!(s.read_ref("last/study/none").unwrap(), None);
    assert_eq!(s.list_refs().unwrap().len(), 1);
    for bad in ["", "../x", "a//b", "a/./b", ".hidden", "a b", "/abs"] {
        assert!(matches!(s.write_ref(bad, &serde_json::json!(1)), Err(StoreError::BadRefName(_))), "{bad}");
    }
}

#[test]
fn a_store_of_a_newer_layout_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    Store::open(dir.path()).unwrap();
    std::fs::write(dir.path().join("rto-store.json"), r#"{"layout": 99}"#).unwrap();
    let err = Store::open(dir.path()).unwrap_err();
    assert!(err.to_string().contains("layout 99"), "{err}");
}

#[test]
fn scratch_dirs_are_removed_even_when_read_only_inside() {
    let (_d, s) = store();
    let path = {
        let scratch = s.scratch_dir("t").unwrap();
        let sub = scratch.path().join("ro");
        write_files(&sub, &[("f", "x")]);
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o555)).unwrap();
        scratch.path().to_path_buf()
    };
    assert!(!path.exists());
}

pub fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out.sort();
    out
}
