//! The stat index: unchanged input files are not re-read.

use std::time::{Duration, SystemTime};

use cache::{ArtifactKind, ObjectDigest, StatIndex};

use crate::{store, write_files};

fn age(path: &std::path::Path) {
    let old = SystemTime::now() - Duration::from_secs(60);
    std::fs::File::options().write(true).open(path).unwrap().set_modified(old).unwrap();
}

#[test]
fn unchanged_files_are_not_rehashed_and_changed_ones_are() {
    let (d, s) = store();
    let f = d.path().join("data.jsonl");
    std::fs::write(&f, "one").unwrap();
    age(&f);
    let idx = StatIndex::load(&s);
    assert_eq!(idx.artifact_of(&f).unwrap().digest, ObjectDigest::of_bytes(b"one"));
    assert_eq!(idx.hashed_bytes(), 3);
    idx.save(&s).unwrap();

    let idx = StatIndex::load(&s);
    assert_eq!(idx.artifact_of(&f).unwrap().digest, ObjectDigest::of_bytes(b"one"));
    assert_eq!(idx.hashed_bytes(), 0, "an unchanged file is answered from the index");

    std::fs::write(&f, "two!").unwrap();
    age(&f);
    assert_eq!(idx.artifact_of(&f).unwrap().digest, ObjectDigest::of_bytes(b"two!"));
    assert_eq!(idx.hashed_bytes(), 4);
}

#[test]
fn a_fresh_file_is_not_remembered_because_its_mtime_could_still_lie() {
    let (d, s) = store();
    let f = d.path().join("new");
    std::fs::write(&f, "x").unwrap();
    let idx = StatIndex::load(&s);
    idx.artifact_of(&f).unwrap();
    idx.artifact_of(&f).unwrap();
    assert_eq!(idx.hashed_bytes(), 2);
}

#[test]
fn a_directory_hashes_like_the_tree_the_store_would_make() {
    let (d, s) = store();
    let dir = d.path().join("in");
    write_files(&dir, &[("a", "1"), ("b/c", "2")]);
    let idx = StatIndex::load(&s);
    let hashed = idx.artifact_of(&dir).unwrap();
    let scratch = s.scratch_dir("t").unwrap();
    let copy = scratch.path().join("in");
    write_files(&copy, &[("a", "1"), ("b/c", "2")]);
    let stored = s.ingest(&copy).unwrap();
    assert_eq!(hashed, stored);
    assert_eq!(hashed.kind, ArtifactKind::Tree);
}

#[test]
fn a_symlink_loop_or_a_fifo_in_an_input_is_an_error_not_a_hang() {
    let (d, s) = store();
    let dir = d.path().join("in");
    write_files(&dir, &[("a", "1")]);
    std::os::unix::fs::symlink(".", dir.join("latest")).unwrap();
    let idx = StatIndex::load(&s);
    let err = idx.artifact_of(&dir).unwrap_err().to_string();
    assert!(err.contains("contain itself"), "{err}");

    let fifo_dir = d.path().join("fifo");
    std::fs::create_dir(&fifo_dir).unwrap();
    let status = std::process::Command::new("mkfifo").arg(fifo_dir.join("p")).status().unwrap();
    assert!(status.success());
    let err = idx.artifact_of(&fifo_dir).unwrap_err().to_string();
    assert!(err.contains("FIFO"), "{err}");
}
