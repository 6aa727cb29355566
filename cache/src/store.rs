//! The store: objects, trees, action records, refs and run directories under one root.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{IoContext, Result, StoreError};
use crate::fsio::{Fs, RealFs};
use crate::lock::KeyLock;
use crate::object::{Artifact, ArtifactKind, Tree, TreeEntry, is_safe_name};
use crate::{ActionKey, ObjectDigest, hash_file};

/// The layout version written to `rto-store.json`; bumped when the directory layout changes incompatibly.
pub const LAYOUT_VERSION: u32 = 1;

/// The schema version of [`ActionRecord`].
pub const RECORD_SCHEMA: u32 = 1;

/// What the store keeps for one finished action: its outputs, the pre-image its key was taken over, and
/// where, when and how it ran. Only successful actions are recorded; failures are never cached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionRecord {
    /// [`RECORD_SCHEMA`] at the time of writing.
    pub schema: u32,
    /// The action key (sha256 of the canonical pre-image).
    pub key: ActionKey,
    /// The pre-image, as JSON, kept so that `rto why` can say what changed.
    pub preimage: serde_json::Value,
    /// Output name → artifact.
    pub outputs: BTreeMap<String, Artifact>,
    /// How the outputs were produced.
    pub provenance: Provenance,
}

/// Where, when and by what an action ran. Never part of a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    /// The back-end that ran it: a built-in (`builtin:dataset@0.1.0`) or a plugin (`name@version`).
    pub backend: String,
    /// Host name of the machine.
    pub host: String,
    /// Process id of the orchestrator that recorded it.
    pub pid: u32,
    /// The run that produced it (a directory under `runs/`).
    pub run: String,
    /// Start, RFC 3339 UTC.
    pub start: String,
    /// End, RFC 3339 UTC.
    pub end: String,
    /// Wall-clock duration in milliseconds.
    pub duration_ms: u64,
    /// Exit status of the stage's process (0 for in-process built-ins).
    pub exit_status: i32,
}

/// The content-addressed store rooted at one directory.
#[derive(Clone)]
pub struct Store {
    root: PathBuf,
    fs: Arc<dyn Fs>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("root", &self.root).finish()
    }
}

const SUBDIRS: [&str; 8] = ["objects", "actions", "tmp", "locks", "runs", "refs", "trees", "quarantine"];

impl Store {
    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store> {
        Store::open_with(root, Arc::new(RealFs))
    }

    /// Opens the store with a given filesystem seam (crash tests).
    pub fn open_with(root: impl Into<PathBuf>, fs: Arc<dyn Fs>) -> Result<Store> {
        let root = root.into();
        fs::create_dir_all(&root).ctx("create the cache directory", &root)?;
        let root = root.canonicalize().ctx("resolve", &root)?;
        for sub in SUBDIRS {
            let dir = root.join(sub);
            fs::create_dir_all(&dir).ctx("create", &dir)?;
        }
        let store = Store { root, fs };
        store.check_layout()?;
        Ok(store)
    }

    fn check_layout(&self) -> Result<()> {
        #[derive(Serialize, Deserialize)]
        struct LayoutFile {
            layout: u32,
        }
        let path = self.root.join("rto-store.json");
        match fs::read(&path) {
            Ok(bytes) => {
                let file: LayoutFile = serde_json::from_slice(&bytes)
                    .map_err(|e| StoreError::Damaged { path: path.clone(), message: e.to_string() })?;
                if file.layout != LAYOUT_VERSION {
                    return Err(StoreError::Layout { path, found: file.layout, expected: LAYOUT_VERSION });
                }
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let bytes = serde_json::to_vec(&LayoutFile { layout: LAYOUT_VERSION }).expect("serialises");
                self.write_atomic(&path, &bytes)
            }
            Err(e) => Err(e).ctx("read", path),
        }
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob with `digest` lives (whether or not it exists).
    pub fn object_path(&self, digest: &ObjectDigest) -> PathBuf {
        let hex = digest.to_hex();
        self.root.join("objects").join(&hex[..2]).join(&hex[2..])
    }

    fn action_path(&self, key: &ActionKey) -> PathBuf {
        let hex = key.to_hex();
        self.root.join("actions").join(&hex[..2]).join(format!("{}.json", &hex[2..]))
    }

    /// True if the blob exists.
    pub fn has_object(&self, digest: &ObjectDigest) -> bool {
        self.object_path(digest).is_file()
    }

    /// Creates a fresh private directory under `tmp/` on the store's filesystem, removed when dropped.
    ///
    /// Its name carries the pid and host so that `gc` can tell a dead process's leftovers from a live one's.
    pub fn scratch_dir(&self, label: &str) -> Result<ScratchDir> {
        let name = format!("{label}.{}.{}.{:016x}", crate::host_tag(), std::process::id(), rand_u64());
        let path = self.root.join("tmp").join(name);
        fs::create_dir(&path).ctx("create", &path)?;
        Ok(ScratchDir { path })
    }

    /// Writes `bytes` to `path` atomically: temp file in `tmp/`, fsync, rename, fsync of the directory.
    pub fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        let tmp = self.root.join("tmp").join(format!(".w.{}.{:016x}", std::process::id(), rand_u64()));
        let result = (|| {
            let mut file =
                OpenOptions::new().write(true).create_new(true).mode(0o644).open(&tmp).ctx("create", &tmp)?;
            file.write_all(bytes).ctx("write", &tmp)?;
            self.fs.sync(&file).ctx("fsync", &tmp)?;
            drop(file);
            let dir = path.parent().expect("store paths have parents");
            self.create_dir_durably(dir)?;
            self.fs.rename(&tmp, path).ctx("rename into", path)?;
            self.fs.sync_dir(dir).ctx("fsync", dir)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Creates `dir` if missing and, when it was created, fsyncs its parent, so that after a power loss a
    /// record cannot survive while the fan-out directory of an object it names does not.
    fn create_dir_durably(&self, dir: &Path) -> Result<()> {
        if dir.is_dir() {
            return Ok(());
        }
        fs::create_dir_all(dir).ctx("create", dir)?;
        if let Some(parent) = dir.parent() {
            self.fs.sync_dir(parent).ctx("fsync", parent)?;
        }
        Ok(())
    }

    /// Moves a finished output (a file or a directory, ideally inside this store's `tmp/`) into the store and
    /// returns its artifact. The source is consumed: files are renamed into `objects/` (or copied when on another
    /// filesystem), never copied twice. Symlinks and special files are refused with the path at fault.
    pub fn ingest(&self, path: &Path) -> Result<Artifact> {
        let meta = fs::symlink_metadata(path).ctx("inspect", path)?;
        if meta.is_file() {
            self.ingest_file(path, &meta).map(|(a, _)| a)
        } else if meta.is_dir() {
            self.ingest_dir(path)
        } else {
            Err(StoreError::BadOutput {
                path: path.to_path_buf(),
                message: "only regular files and directories can be outputs (found a symlink or special file)".into(),
            })
        }
    }

    fn ingest_file(&self, path: &Path, meta: &fs::Metadata) -> Result<(Artifact, bool)> {
        let executable = meta.permissions().mode() & 0o111 != 0;
        let (digest, size) = hash_file(path).ctx("read", path)?;
        let dest = self.object_path(&digest);
        if dest.is_file() {
            // Same name, same bytes: the object is already there; the duplicate is dropped.
            fs::remove_file(path).ctx("remove", path)?;
        } else {
            let dir = dest.parent().expect("objects have a fan-out directory");
            self.create_dir_durably(dir)?;
            fs::set_permissions(path, fs::Permissions::from_mode(0o444)).ctx("make read-only", path)?;
            let file = File::open(path).ctx("open", path)?;
            self.fs.sync(&file).ctx("fsync", path)?;
            match self.fs.rename(path, &dest) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EXDEV) => self.copy_in(path, &digest, &dest)?,
                Err(e) => return Err(e).ctx("rename into", &dest),
            }
            self.fs.sync_dir(dir).ctx("fsync", dir)?;
        }
        Ok((Artifact { kind: ArtifactKind::File, digest, size }, executable))
    }

    /// Cross-filesystem fallback: copy into `tmp/` while hashing, check the digest, then rename.
    fn copy_in(&self, src: &Path, digest: &ObjectDigest, dest: &Path) -> Result<()> {
        let tmp = self.root.join("tmp").join(format!(".c.{}.{:016x}", std::process::id(), rand_u64()));
        let mut reader = HashingReader::new(File::open(src).ctx("open", src)?);
        let mut out = OpenOptions::new().write(true).create_new(true).mode(0o444).open(&tmp).ctx("create", &tmp)?;
        std::io::copy(&mut reader, &mut out).ctx("copy into", &tmp)?;
        if reader.finish() != *digest {
            let _ = fs::remove_file(&tmp);
            return Err(StoreError::BadOutput { path: src.into(), message: "changed while being stored".into() });
        }
        self.fs.sync(&out).ctx("fsync", &tmp)?;
        self.fs.rename(&tmp, dest).ctx("rename into", dest)?;
        fs::remove_file(src).ctx("remove", src)
    }

    fn ingest_dir(&self, path: &Path) -> Result<Artifact> {
        let mut entries = Vec::new();
        let mut listing: Vec<_> =
            fs::read_dir(path).ctx("list", path)?.collect::<std::io::Result<_>>().ctx("list", path)?;
        listing.sort_by_key(|e| e.file_name());
        for entry in listing {
            let child = entry.path();
            let name = entry.file_name().into_string().map_err(|_| StoreError::BadOutput {
                path: child.clone(),
                message: "file names must be UTF-8".into(),
            })?;
            let meta = fs::symlink_metadata(&child).ctx("inspect", &child)?;
            if meta.is_file() {
                let (a, executable) = self.ingest_file(&child, &meta)?;
                entries.push(TreeEntry { name, kind: ArtifactKind::File, executable, size: a.size, digest: a.digest });
            } else if meta.is_dir() {
                let a = self.ingest_dir(&child)?;
                entries.push(TreeEntry {
                    name,
                    kind: ArtifactKind::Tree,
                    executable: false,
                    size: a.size,
                    digest: a.digest,
                });
            } else {
                return Err(StoreError::BadOutput {
                    path: child,
                    message: "only regular files and directories can be outputs (found a symlink or special file)"
                        .into(),
                });
            }
        }
        let tree = Tree::new(entries);
        let bytes = tree.to_canonical_bytes();
        let digest = ObjectDigest::of_bytes(&bytes);
        let dest = self.object_path(&digest);
        if !dest.is_file() {
            self.write_atomic(&dest, &bytes)?;
            fs::set_permissions(&dest, fs::Permissions::from_mode(0o444)).ctx("make read-only", &dest)?;
        }
        let _ = fs::remove_dir_all(path);
        Ok(Artifact { kind: ArtifactKind::Tree, digest, size: tree.size() })
    }

    /// Stores a tree manifest built by the caller (e.g. all outputs of a stage as one directory) whose children
    /// are already in the store.
    pub fn put_tree(&self, tree: &Tree) -> Result<Artifact> {
        let bytes = tree.to_canonical_bytes();
        let digest = ObjectDigest::of_bytes(&bytes);
        let dest = self.object_path(&digest);
        if !dest.is_file() {
            self.write_atomic(&dest, &bytes)?;
            fs::set_permissions(&dest, fs::Permissions::from_mode(0o444)).ctx("make read-only", &dest)?;
        }
        Ok(Artifact { kind: ArtifactKind::Tree, digest, size: tree.size() })
    }

    /// Reads and checks the tree manifest with `digest`.
    pub fn read_tree(&self, digest: &ObjectDigest) -> Result<Tree> {
        let path = self.object_path(digest);
        let bytes = fs::read(&path).ctx("read", &path)?;
        Tree::parse(&bytes).map_err(|message| StoreError::Damaged { path, message })
    }

    /// True if the artifact and, for trees, everything below it is present.
    pub fn is_complete(&self, artifact: &Artifact) -> bool {
        match artifact.kind {
            ArtifactKind::File => self.has_object(&artifact.digest),
            ArtifactKind::Tree => match self.read_tree(&artifact.digest) {
                Ok(tree) => tree
                    .entries
                    .iter()
                    .all(|e| self.is_complete(&Artifact { kind: e.kind, digest: e.digest, size: e.size })),
                Err(_) => false,
            },
        }
    }

    /// A local path holding the artifact's content, read-only: the blob itself for a file; for a tree, a
    /// directory under `trees/` made once of hard links to the blobs.
    pub fn checkout(&self, artifact: &Artifact) -> Result<PathBuf> {
        match artifact.kind {
            ArtifactKind::File => Ok(self.object_path(&artifact.digest)),
            ArtifactKind::Tree => {
                let dest = self.root.join("trees").join(artifact.digest.to_hex());
                if dest.is_dir() {
                    return Ok(dest);
                }
                let scratch = self.scratch_dir("checkout")?;
                let staged = scratch.path().join("t");
                self.materialize_tree(&artifact.digest, &staged)?;
                match self.fs.rename(&staged, &dest) {
                    Ok(()) => {}
                    // Another process finished the same checkout first: theirs is identical.
                    Err(_) if dest.is_dir() => {}
                    Err(e) => return Err(e).ctx("rename into", &dest),
                }
                Ok(dest)
            }
        }
    }

    fn materialize_tree(&self, digest: &ObjectDigest, dir: &Path) -> Result<()> {
        let tree = self.read_tree(digest)?;
        fs::create_dir(dir).ctx("create", dir)?;
        for e in &tree.entries {
            let target = dir.join(&e.name);
            match e.kind {
                ArtifactKind::Tree => self.materialize_tree(&e.digest, &target)?,
                ArtifactKind::File => {
                    let blob = self.object_path(&e.digest);
                    if e.executable {
                        fs::copy(&blob, &target).ctx("copy", &blob)?;
                        fs::set_permissions(&target, fs::Permissions::from_mode(0o555)).ctx("chmod", &target)?;
                    } else if self.fs.hard_link(&blob, &target).is_err() {
                        fs::copy(&blob, &target).ctx("copy", &blob)?;
                        fs::set_permissions(&target, fs::Permissions::from_mode(0o444)).ctx("chmod", &target)?;
                    }
                }
            }
        }
        // Read-only, so that a stage cannot add files to an input it shares with every other reader.
        fs::set_permissions(dir, fs::Permissions::from_mode(0o555)).ctx("make read-only", dir)?;
        Ok(())
    }

    /// Looks up the action record for `key`. A record whose outputs are not all present (removed by `gc` or
    /// quarantined by `verify`) is reported as absent, so the action runs again rather than a broken hit.
    pub fn get_action(&self, key: &ActionKey) -> Result<Option<ActionRecord>> {
        let path = self.action_path(key);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).ctx("read", path),
        };
        let record: ActionRecord = match serde_json::from_slice(&bytes) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("ignoring damaged action record `{}`: {e}", path.display());
                return Ok(None);
            }
        };
        if record.key != *key || !record.outputs.values().all(|a| self.is_complete(a)) {
            return Ok(None);
        }
        Ok(Some(record))
    }

    /// Records a finished action. This is the commit point: call it only after every output was ingested.
    pub fn put_action(&self, record: &ActionRecord) -> Result<()> {
        let mut bytes = serde_json::to_vec_pretty(record).expect("records serialise");
        bytes.push(b'\n');
        self.write_atomic(&self.action_path(&record.key), &bytes)
    }

    /// Takes the per-key lock, waiting for another holder if needed. `on_wait` is called once with the
    /// holder's description if the lock is busy.
    pub fn lock(&self, key: &ActionKey, on_wait: impl FnOnce(&str)) -> Result<KeyLock> {
        self.lock_unless(key, on_wait, &|| false).map(|l| l.expect("never cancelled"))
    }

    /// Like [`Store::lock`], but gives up (returning `None`) once `cancelled` returns true while waiting.
    pub fn lock_unless(
        &self,
        key: &ActionKey,
        on_wait: impl FnOnce(&str),
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Option<KeyLock>> {
        KeyLock::acquire(&self.root.join("locks").join(format!("{}.lock", key.to_hex())), on_wait, cancelled)
    }

    /// Takes the store-wide lock shared: every `rto run` holds it, so that `gc` and `verify`, which take it
    /// exclusively, never see a half-committed action (objects stored, record not yet written).
    pub fn use_shared(&self) -> Result<crate::lock::StoreLock> {
        crate::lock::StoreLock::take(&self.root.join("locks").join("store.lock"), false)
    }

    /// Takes the store-wide lock exclusively (for `gc` and `verify`); fails at once if a run holds it.
    pub fn use_exclusive(&self) -> Result<crate::lock::StoreLock> {
        crate::lock::StoreLock::take(&self.root.join("locks").join("store.lock"), true)
    }

    fn ref_path(&self, name: &str) -> Result<PathBuf> {
        let ok = !name.is_empty()
            && name.split('/').all(|part| {
                is_safe_name(part)
                    && !part.starts_with('.')
                    && part.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            });
        if !ok {
            return Err(StoreError::BadRefName(name.to_string()));
        }
        Ok(self.root.join("refs").join(format!("{name}.json")))
    }

    /// Writes a named ref (a small JSON value, e.g. "the last run of stage X of study Y"), atomically.
    pub fn write_ref(&self, name: &str, value: &serde_json::Value) -> Result<()> {
        let path = self.ref_path(name)?;
        self.write_atomic(&path, &serde_json::to_vec_pretty(value).expect("serialises"))
    }

    /// Reads a named ref, if present.
    pub fn read_ref(&self, name: &str) -> Result<Option<serde_json::Value>> {
        let path = self.ref_path(name)?;
        match fs::read(&path) {
            Ok(b) => {
                serde_json::from_slice(&b).map(Some).map_err(|e| StoreError::Damaged { path, message: e.to_string() })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).ctx("read", path),
        }
    }

    /// All refs as (name, value), sorted by name; damaged refs are skipped with a warning.
    pub fn list_refs(&self) -> Result<Vec<(String, serde_json::Value)>> {
        let mut out = Vec::new();
        let base = self.root.join("refs");
        for path in walk_files(&base)? {
            let Some(rel) = path.strip_prefix(&base).ok().and_then(|p| p.to_str()) else { continue };
            let Some(name) = rel.strip_suffix(".json") else { continue };
            match fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok()) {
                Some(v) => out.push((name.to_string(), v)),
                None => tracing::warn!("skipping damaged ref `{}`", path.display()),
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Creates the directory of a new run under `runs/`, named so that names sort by start time.
    pub fn create_run(&self) -> Result<RunDir> {
        let now = std::time::SystemTime::now();
        let stamp = humantime::format_rfc3339_millis(now).to_string().replace([':', '.'], "").replace('-', "");
        let id = format!("{}-{}", stamp.trim_end_matches('Z'), std::process::id());
        let path = self.root.join("runs").join(&id);
        fs::create_dir_all(&path).ctx("create", &path)?;
        Ok(RunDir { id, path })
    }

    /// The directory of an existing run.
    pub fn run_path(&self, id: &str) -> PathBuf {
        self.root.join("runs").join(id)
    }

    /// Every action key with a record, sorted.
    pub fn list_actions(&self) -> Result<Vec<ActionKey>> {
        let mut keys = Vec::new();
        for path in walk_files(&self.root.join("actions"))? {
            let fan = path.parent().and_then(|p| p.file_name()).and_then(|s| s.to_str()).unwrap_or("");
            let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
            if let Ok(key) = format!("{fan}{stem}").parse() {
                keys.push(key);
            }
        }
        keys.sort();
        Ok(keys)
    }

    /// Reads the record file of `key` without checking that its outputs are present (for `rto why`, which
    /// only needs the pre-image, and for `verify` and `gc`).
    pub fn read_action_raw(&self, key: &ActionKey) -> Result<ActionRecord> {
        let path = self.action_path(key);
        let bytes = fs::read(&path).ctx("read", &path)?;
        serde_json::from_slice(&bytes).map_err(|e| StoreError::Damaged { path, message: e.to_string() })
    }

    pub(crate) fn action_file(&self, key: &ActionKey) -> PathBuf {
        self.action_path(key)
    }

    /// Every blob in `objects/` as (digest, path); unparseable names are skipped.
    pub(crate) fn list_objects(&self) -> Result<Vec<(ObjectDigest, PathBuf)>> {
        let mut out = Vec::new();
        for path in walk_files(&self.root.join("objects"))? {
            let fan = path.parent().and_then(|p| p.file_name()).and_then(|s| s.to_str()).unwrap_or("");
            let rest = path.file_name().and_then(|s| s.to_str()).unwrap_or("");
            if let Ok(d) = format!("{fan}{rest}").parse() {
                out.push((d, path));
            }
        }
        out.sort();
        Ok(out)
    }
}

/// A run's directory: per-stage logs and the run log.
#[derive(Debug, Clone)]
pub struct RunDir {
    /// Sortable id, e.g. `20261125T104336123-4242`.
    pub id: String,
    /// `runs/<id>`.
    pub path: PathBuf,
}

impl RunDir {
    /// The log file of one stage in this run.
    pub fn stage_log(&self, stage_id: &str) -> PathBuf {
        self.path.join(format!("{stage_id}.log"))
    }
}

/// A private directory under the store's `tmp/`, removed (even if read-only inside) when dropped.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        remove_tree(&self.path);
    }
}

/// Removes a directory tree, making read-only directories writable first.
pub(crate) fn remove_tree(path: &Path) {
    if fs::remove_dir_all(path).is_ok() || !path.exists() {
        return;
    }
    fn unlock(p: &Path) {
        if let Ok(meta) = fs::symlink_metadata(p)
            && meta.is_dir()
        {
            let _ = fs::set_permissions(p, fs::Permissions::from_mode(0o755));
            if let Ok(rd) = fs::read_dir(p) {
                for e in rd.flatten() {
                    unlock(&e.path());
                }
            }
        }
    }
    unlock(path);
    let _ = fs::remove_dir_all(path);
}

/// All regular files below `dir`, recursively (missing `dir` is empty).
pub(crate) fn walk_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = match fs::read_dir(&d) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).ctx("list", d),
        };
        for entry in rd {
            let entry = entry.ctx("list", &d)?;
            let ft = entry.file_type().ctx("inspect", entry.path())?;
            if ft.is_dir() {
                stack.push(entry.path());
            } else if ft.is_file() {
                out.push(entry.path());
            }
        }
    }
    Ok(out)
}

/// A reader that hashes what passes through it.
struct HashingReader<R> {
    inner: R,
    hasher: sha2::Sha256,
}

impl<R: std::io::Read> HashingReader<R> {
    fn new(inner: R) -> Self {
        HashingReader { inner, hasher: <sha2::Sha256 as sha2::Digest>::new() }
    }
    fn finish(self) -> ObjectDigest {
        ObjectDigest::from_bytes(sha2::Digest::finalize(self.hasher).into())
    }
}

impl<R: std::io::Read> std::io::Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        sha2::Digest::update(&mut self.hasher, &buf[..n]);
        Ok(n)
    }
}

pub(crate) fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS per process; mixing in a counter keeps names unique within one.
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    h.finish()
}
