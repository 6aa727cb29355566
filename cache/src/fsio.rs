//! The store's few effects on the filesystem, behind one seam.
//!
//! Every step of the commit protocol (see the crate doc) that makes something durable or visible goes through
//! [`Fs`]: `sync` a file, `rename` it into place, `sync_dir` the directory. Production uses [`RealFs`]; crash
//! tests use [`CrashAfter`], which lets the first N effects happen and fails every later one, which leaves on
//! disk exactly what a `kill -9` between effect N and N+1 would leave (page-cache effects aside).

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The effects that order the store's writes.
pub trait Fs: Send + Sync {
    /// Makes the file's content durable (fsync).
    fn sync(&self, file: &File) -> io::Result<()>;
    /// Atomically renames `from` to `to` (same filesystem), replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes a directory's entries durable (fsync of the directory), so a rename survives power loss.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Creates a hard link `to` → `from`.
    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()>;
}

/// The real filesystem.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFs;

impl Fs for RealFs {
    fn sync(&self, file: &File) -> io::Result<()> {
        file.sync_all()
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::hard_link(from, to)
    }
}

/// A filesystem that "crashes" after a number of effects: later effects fail without happening.
#[derive(Debug)]
pub struct CrashAfter {
    remaining: AtomicUsize,
}

impl CrashAfter {
    /// Allows `n` effects, then fails all others.
    pub fn new(n: usize) -> Self {
        CrashAfter { remaining: AtomicUsize::new(n) }
    }

    fn step(&self) -> io::Result<()> {
        let ok = self.remaining.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |r| r.checked_sub(1)).is_ok();
        if ok { Ok(()) } else { Err(io::Error::other("simulated crash")) }
    }

    /// True once the budget is spent, i.e. the simulated crash happened.
    pub fn crashed(&self) -> bool {
        self.remaining.load(Ordering::SeqCst) == 0
    }
}

impl Fs for CrashAfter {
    fn sync(&self, file: &File) -> io::Result<()> {
        self.step()?;
        RealFs.sync(file)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.step()?;
        RealFs.rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.step()?;
        RealFs.sync_dir(dir)
    }
    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.step()?;
        RealFs.hard_link(from, to)
    }
}
