//! rto's content-addressed store.
//!
//! The store is a directory (by default `.rto/` beside a study) holding:
//!
//! | directory     | what                                                                                  |
//! |---------------|---------------------------------------------------------------------------------------|
//! | `objects/`    | blobs named by the sha256 of their bytes (`objects/ab/cdef…`), read-only; a directory  |
//! |               | artifact is a *tree* manifest blob listing names, modes, sizes and child digests       |
//! | `actions/`    | action key → [`ActionRecord`]: output artifacts, the pre-image, provenance             |
//! | `tmp/`        | scratch space of running stages, on the same filesystem so outputs move in by rename   |
//! | `locks/`      | per-action-key locks ([`KeyLock`]); there is no global lock                            |
//! | `runs/`       | one directory per run: the run log and per-stage logs                                  |
//! | `refs/`       | small named JSON values the orchestrator keeps (e.g. the last run of each stage id)     |
//! | `trees/`      | read-only checkouts of tree artifacts (hard links to blobs), derived and disposable     |
//! | `index/`      | the [`StatIndex`] of input files; a cache of a cache                                   |
//! | `quarantine/` | what `verify` found corrupt                                                            |
//!
//! This crate knows nothing of studies, stages or plugins: it stores bytes under digests, and records under
//! keys that someone else computed.
//!
//! # Commit protocol
//!
//! A stage writes its outputs into a scratch directory under `tmp/`. When it succeeds, for each output file:
//!
//! 1. read the file once, hashing it (sha256, SHA-NI where available);
//! 2. if `objects/<digest>` exists, delete the file: same name, same bytes (the object is already durable);
//! 3. otherwise make it read-only, fsync it, rename it to `objects/<digest>` (a copy, hashed again, only when
//!    `tmp/` is on another filesystem), and fsync the fan-out directory;
//!
//! then for each directory, bottom-up, write its tree manifest as a blob the same way (temp file, fsync,
//! rename, fsync directory). Only after every output is in `objects/`:
//!
//! 4. write the action record to a temp file, fsync it, rename it to `actions/<key>`, fsync the directory.
//!
//! Step 4 is the commit point: an action exists exactly when its record exists, and a record is only ever
//! written after the objects it names are durable. [`Store::get_action`] additionally treats a record whose
//! objects are missing (removed by `gc`, quarantined by `verify`) as absent.
//!
//! ## What a `kill -9` leaves
//!
//! - during the stage or steps 1–3: files in `tmp/` (removed by `gc` once their pid is gone) and possibly some
//!   complete objects that no record names yet (harmless; `gc` frees them after the grace period);
//! - during step 4: either no record (the temp file is garbage in `tmp/`) or the complete record;
//!   rename is atomic, so never a partial one.
//!
//! In every case `verify` finds every object matching its name and every record complete, so it reports the
//! store consistent; the next run simply runs the unrecorded action again.
//!
//! ## What is assumed of the filesystem
//!
//! `rename` within one filesystem is atomic and replaces the target; after `fsync` of a file and of its
//! directory, both its content and its name survive a power loss; `flock` locks are released when their holder
//! dies. Local filesystems (ext4, xfs, btrfs) give all three. On NFS (a Slurm cluster's shared cache), rename
//! is atomic on the server, close-to-open consistency makes a renamed object visible to other clients once it
//! is closed, and `flock` becomes an NFSv4 lock released when a dead client's lease expires.
//!
//! Concurrency: two processes storing the same object rename identical bytes over each other, which is
//! harmless; two processes running the same action are serialised by its [`KeyLock`], and the second one
//! finds the first one's record after taking the lock.

mod digest;
mod error;
pub mod fsio;
mod lock;
mod maintenance;
mod object;
mod stat_index;
mod store;

pub use digest::{ActionKey, HASH_BUF, ObjectDigest, ParseDigestError, hash_file, hash_reader};
pub use error::{Result, StoreError};
pub use lock::{KeyLock, StoreLock};
pub use maintenance::{GcReport, VerifyReport, pid_alive};
pub use object::{Artifact, ArtifactKind, Tree, TreeEntry, is_safe_name};
pub use stat_index::StatIndex;
pub use store::{ActionRecord, LAYOUT_VERSION, Provenance, RECORD_SCHEMA, RunDir, ScratchDir, Store};

/// This machine's host name (for provenance and lock owners), or `unknown-host`.
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into the buffer we own.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if r != 0 {
        return "unknown-host".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// The host name as it appears inside file names in `tmp/` (dots replaced, since dots separate fields there).
pub(crate) fn host_tag() -> String {
    host_name().replace(['.', '/'], "_")
}
