//! Per-key locks.

use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use cache::ActionKey;

use crate::store;

#[test]
fn one_key_is_held_by_one_holder_at_a_time_and_other_keys_do_not_wait() {
    let (_d, s) = store();
    let key = ActionKey::of_bytes(b"k");
    let held = s.lock(&key, |_| panic!("free lock must not wait")).unwrap();
    // An unrelated key is free while `key` is held.
    drop(s.lock(&ActionKey::of_bytes(b"other"), |_| panic!("unrelated key must not wait")).unwrap());

    let waited = Arc::new(Mutex::new(None));
    let barrier = Arc::new(Barrier::new(2));
    let t = {
        let (s, waited, barrier) = (s.clone(), waited.clone(), barrier.clone());
        std::thread::spawn(move || {
            barrier.wait();
            let _l = s.lock(&key, |holder| *waited.lock().unwrap() = Some(holder.to_string())).unwrap();
        })
    };
    barrier.wait();
    std::thread::sleep(Duration::from_millis(200));
    assert!(!t.is_finished(), "the second holder must wait");
    drop(held);
    t.join().unwrap();
    let holder = waited.lock().unwrap().clone().expect("on_wait was called");
    assert!(holder.contains(&format!("pid {}", std::process::id())), "{holder}");
}

#[test]
fn a_lock_left_by_a_dead_process_is_taken_over() {
    let (_d, s) = store();
    let key = ActionKey::of_bytes(b"k");
    let path = s.root().join("locks").join(format!("{}.lock", key.to_hex()));
    // A lock file whose holder died: its content survives, the kernel's lock does not.
    std::fs::write(&path, "pid 999999 on `gone` since 2020-01-01T00:00:00Z").unwrap();
    let _l = s.lock(&key, |h| panic!("must not wait for a dead holder: {h}")).unwrap();
}
