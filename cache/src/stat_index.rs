//! Hashing input files without re-reading unchanged ones.
//!
//! Like git's index, [`StatIndex`] remembers (size, mtime, ctime, inode) → digest for each input file it
//! hashed, and re-hashes only when one of those changed. A file modified within the same second it was hashed
//! could keep its stat data ("racy git"), so entries whose mtime is less than two seconds older than the moment
//! of hashing are not remembered: they are hashed again next time.
//!
//! The index is a cache of a cache: it lives in `index/stat.json`, is loaded once per run and saved atomically
//! at the end (merged with what is on disk); a lost or damaged index only costs re-hashing.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::error::{IoContext, Result, StoreError};
use crate::object::{Artifact, ArtifactKind, Tree, TreeEntry};
use crate::{ObjectDigest, Store, hash_file};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct StatEntry {
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    ino: u64,
    digest: ObjectDigest,
}

/// The stat → digest index of input files.
#[derive(Debug)]
pub struct StatIndex {
    path: PathBuf,
    entries: Mutex<BTreeMap<PathBuf, StatEntry>>,
    dirty: Mutex<bool>,
    hashed_bytes: std::sync::atomic::AtomicU64,
}

impl StatIndex {
    /// Loads the index of `store` (empty if absent or damaged).
    pub fn load(store: &Store) -> StatIndex {
        StatIndex::load_at(store.root())
    }

    /// Loads the index of the store at `root` without opening (or creating) the store: planning reads it
    /// before anything may be written.
    pub fn load_at(root: &Path) -> StatIndex {
        let path = root.join("index").join("stat.json");
        let entries = fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        StatIndex { path, entries: Mutex::new(entries), dirty: Mutex::new(false), hashed_bytes: Default::default() }
    }

    /// Bytes actually read and hashed since loading (0 on a run where nothing changed).
    pub fn hashed_bytes(&self) -> u64 {
        self.hashed_bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The artifact a file or directory at `path` would be, as stored: a file digest, or the tree digest of a
    /// directory (the same digest `Store::ingest` would give it). Symlinks are followed.
    pub fn artifact_of(&self, path: &Path) -> Result<Artifact> {
        let meta = fs::metadata(path).ctx("read", path)?;
        if meta.is_dir() {
            self.tree_of(path, &mut Vec::new()).map(|(digest, size)| Artifact {
                kind: ArtifactKind::Tree,
                digest,
                size,
            })
        } else if !meta.is_file() {
            Err(special(path))
        } else {
            let digest = self.file_digest(path, &meta)?;
            Ok(Artifact { kind: ArtifactKind::File, digest, size: meta.len() })
        }
    }

    /// `ancestors` are the (device, inode) of the directories above, so that a symlink pointing back up
    /// (`data/latest -> .`) is an error instead of an endless walk.
    fn tree_of(&self, dir: &Path, ancestors: &mut Vec<(u64, u64)>) -> Result<(ObjectDigest, u64)> {
        let here = fs::metadata(dir).ctx("read", dir)?;
        if ancestors.contains(&(here.dev(), here.ino())) {
            return Err(StoreError::BadOutput {
                path: dir.to_path_buf(),
                message: "a symlink makes this directory contain itself".into(),
            });
        }
        ancestors.push((here.dev(), here.ino()));
        let mut entries = Vec::new();
        for entry in fs::read_dir(dir).ctx("list", dir)? {
            let entry = entry.ctx("list", dir)?;
            let child = entry.path();
            let name = entry.file_name().into_string().map_err(|_| StoreError::BadOutput {
                path: child.clone(),
                message: "file names must be UTF-8".into(),
            })?;
            let meta = fs::metadata(&child).ctx("read", &child)?;
            if meta.is_dir() {
                let (digest, size) = self.tree_of(&child, ancestors)?;
                entries.push(TreeEntry { name, kind: ArtifactKind::Tree, executable: false, size, digest });
            } else if !meta.is_file() {
                return Err(special(&child));
            } else {
                let digest = self.file_digest(&child, &meta)?;
                let executable = meta.permissions().mode() & 0o111 != 0;
                entries.push(TreeEntry { name, kind: ArtifactKind::File, executable, size: meta.len(), digest });
            }
        }
        ancestors.pop();
        let tree = Tree::new(entries);
        Ok((tree.digest(), tree.size()))
    }

    fn file_digest(&self, path: &Path, meta: &fs::Metadata) -> Result<ObjectDigest> {
        let abs = path.canonicalize().ctx("resolve", path)?;
        let stat = |digest| StatEntry {
            size: meta.len(),
            mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
            ctime_ns: meta.ctime() as i128 * 1_000_000_000 + meta.ctime_nsec() as i128,
            ino: meta.ino(),
            digest,
        };
        if let Some(known) = self.entries.lock().expect("not poisoned").get(&abs)
            && *known == stat(known.digest)
        {
            return Ok(known.digest);
        }
        let now = std::time::SystemTime::now();
        let (digest, n) = hash_file(&abs).ctx("read", &abs)?;
        self.hashed_bytes.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        let settled =
            meta.modified().ok().and_then(|m| now.duration_since(m).ok()).is_some_and(|age| age.as_secs() >= 2);
        if settled {
            self.entries.lock().expect("not poisoned").insert(abs, stat(digest));
            *self.dirty.lock().expect("not poisoned") = true;
        }
        Ok(digest)
    }

    /// Saves the index if it learned anything, merging with entries another process saved meanwhile.
    pub fn save(&self, store: &Store) -> Result<()> {
        if !*self.dirty.lock().expect("not poisoned") {
            return Ok(());
        }
        let mut merged: BTreeMap<PathBuf, StatEntry> =
            fs::read(&self.path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        merged.extend(self.entries.lock().expect("not poisoned").iter().map(|(k, v)| (k.clone(), *v)));
        store.write_atomic(&self.path, &serde_json::to_vec(&merged).expect("serialises"))
    }
}

/// A FIFO, socket or device in an input: reading it could block forever or never end.
fn special(path: &Path) -> StoreError {
    StoreError::BadOutput {
        path: path.to_path_buf(),
        message: "inputs must be regular files or directories (found a FIFO, socket or device)".into(),
    }
}
