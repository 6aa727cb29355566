//! Per-key locks: identical work runs once, unrelated work never waits.
//!
//! A lock is an OS file lock (`flock`) on `locks/<key>.lock`. The kernel drops it when the holder exits, however
//! it exits, so a lock left by a process killed with `kill -9` is taken over by the next waiter without any
//! staleness heuristics. The file also records the holder (pid, host, start) for the waiter's message.
//!
//! Lock files are removed on release. Because a waiter may have opened the file just before it was removed, a
//! process that gets the lock checks that its descriptor still names the file at the path, and retries if not:
//! otherwise two processes could each hold a lock on a different inode for the same key.
//!
//! On NFS (a shared Slurm filesystem), Linux maps `flock` to NFSv4 byte-range locks, which the server releases
//! when a dead client's lease expires.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result};

/// A held per-key lock; released when dropped.
#[derive(Debug)]
pub struct KeyLock {
    path: PathBuf,
    file: File,
}

impl KeyLock {
    /// Takes the lock at `path`, calling `on_wait(holder)` once if another process holds it, then waiting.
    /// Returns `None` if `cancelled` became true while waiting.
    pub fn acquire(path: &Path, on_wait: impl FnOnce(&str), cancelled: &dyn Fn() -> bool) -> Result<Option<KeyLock>> {
        let mut on_wait = Some(on_wait);
        loop {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .ctx("open lock", path)?;
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => {
                    let mut holder = String::new();
                    let _ = file.read_to_string(&mut holder);
                    if let Some(f) = on_wait.take() {
                        let holder = holder.trim();
                        f(if holder.is_empty() { "another rto process" } else { holder });
                    }
                    // Poll rather than block, so that Ctrl-C reaches a stage waiting for another process.
                    loop {
                        if cancelled() {
                            return Ok(None);
                        }
                        std::thread::sleep(std::time::Duration::from_millis(100));
                        match file.try_lock() {
                            Ok(()) => break,
                            Err(TryLockError::WouldBlock) => continue,
                            Err(TryLockError::Error(e)) => return Err(e).ctx("lock", path),
                        }
                    }
                }
                Err(TryLockError::Error(e)) => return Err(e).ctx("lock", path),
            }
            // The previous holder may have removed the file between our open and our lock.
            let same = match (std::fs::metadata(path), file.metadata()) {
                (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
                _ => false,
            };
            if !same {
                continue;
            }
            let owner = format!(
                "pid {} on `{}` since {}",
                std::process::id(),
                crate::host_name(),
                humantime::format_rfc3339_seconds(std::time::SystemTime::now())
            );
            file.set_len(0).ctx("write lock", path)?;
            file.rewind().ctx("write lock", path)?;
            file.write_all(owner.as_bytes()).ctx("write lock", path)?;
            return Ok(Some(KeyLock { path: path.to_path_buf(), file }));
        }
    }
}

impl Drop for KeyLock {
    fn drop(&mut self) {
        // Remove while still holding the lock, so that waiters notice the inode change and retry.
        let _ = std::fs::remove_file(&self.path);
        let _ = self.file.unlock();
    }
}

/// The store-wide lock: shared by runs, exclusive for `gc` and `verify`. Kept as a file that is never removed.
#[derive(Debug)]
pub struct StoreLock {
    file: File,
}

impl StoreLock {
    /// Takes it shared (waiting for an exclusive holder) or exclusive (failing at once if anyone holds it).
    pub fn take(path: &Path, exclusive: bool) -> Result<StoreLock> {
        let file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).ctx("open lock", path)?;
        if exclusive {
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => {
                    return Err(crate::StoreError::Busy { path: path.to_path_buf() });
                }
                Err(TryLockError::Error(e)) => return Err(e).ctx("lock", path),
            }
        } else {
            file.lock_shared().ctx("lock", path)?;
        }
        Ok(StoreLock { file })
    }
}

impl Drop for StoreLock {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}
