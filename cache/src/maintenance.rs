//! `verify` (re-hash everything, quarantine what is corrupt) and `gc` (free what no root reaches).

use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::error::{IoContext, Result};
use crate::object::{ArtifactKind, Tree};
use crate::store::remove_tree;
use crate::{ActionKey, ObjectDigest, Store, hash_file};

/// What `verify` found and did.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct VerifyReport {
    /// Objects re-hashed.
    pub objects_checked: u64,
    /// Bytes re-hashed.
    pub bytes_checked: u64,
    /// Action records checked.
    pub actions_checked: u64,
    /// Objects whose bytes no longer match their name, moved to `quarantine/objects/`.
    pub corrupt_objects: Vec<ObjectDigest>,
    /// Tree manifests that do not parse (also quarantined).
    pub damaged_trees: Vec<ObjectDigest>,
    /// Action records that do not parse or point at missing or corrupt objects, moved to
    /// `quarantine/actions/`; their stages run again next time.
    pub quarantined_actions: Vec<ActionKey>,
    /// Leftovers in `tmp/` from processes that are gone (harmless; removed by `gc`).
    pub tmp_leftovers: u64,
}

impl VerifyReport {
    /// True when nothing was corrupt or damaged (leftovers in `tmp/` are normal after a crash).
    pub fn is_consistent(&self) -> bool {
        self.corrupt_objects.is_empty() && self.damaged_trees.is_empty() && self.quarantined_actions.is_empty()
    }
}

/// What `gc` removed (or would remove, in a dry run).
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct GcReport {
    /// Action records removed.
    pub actions_removed: u64,
    /// Objects removed.
    pub objects_removed: u64,
    /// Bytes of objects removed.
    pub bytes_freed: u64,
    /// Objects kept because something still reaches them.
    pub objects_kept: u64,
    /// Directories of dead processes removed from `tmp/`, and stale tree checkouts.
    pub scratch_removed: u64,
}

impl Store {
    /// Re-hashes every object and checks every action record; moves what is corrupt to `quarantine/` so that
    /// no later run can take it for a cache hit. Running it on a consistent store changes nothing.
    pub fn verify(&self) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();
        let mut bad: HashSet<ObjectDigest> = HashSet::new();
        let mut present: HashSet<ObjectDigest> = HashSet::new();
        for (digest, path) in self.list_objects()? {
            report.objects_checked += 1;
            let (actual, n) = hash_file(&path).ctx("read", &path)?;
            report.bytes_checked += n;
            if actual != digest {
                report.corrupt_objects.push(digest);
                bad.insert(digest);
                self.quarantine(&path, "objects", &digest.to_hex())?;
            } else {
                present.insert(digest);
            }
        }
        for key in self.list_actions()? {
            report.actions_checked += 1;
            let ok = match self.read_action_raw(&key) {
                Ok(record) => {
                    record.key == key
                        && record.outputs.values().all(|a| {
                            self.check_reachable(a.kind, &a.digest, &present, &mut bad, &mut report.damaged_trees)
                        })
                }
                Err(_) => false,
            };
            if !ok {
                report.quarantined_actions.push(key);
                self.quarantine(&self.action_file(&key), "actions", &key.to_hex())?;
            }
        }
        for digest in &report.damaged_trees {
            let path = self.object_path(digest);
            if path.exists() {
                self.quarantine(&path, "objects", &digest.to_hex())?;
            }
        }
        if !bad.is_empty() {
            // Checkouts are derived from objects and may share inodes with corrupt ones: rebuild lazily.
            for e in fs::read_dir(self.root().join("trees")).ctx("list", self.root().join("trees"))?.flatten() {
                remove_tree(&e.path());
            }
        }
        report.tmp_leftovers = self.dead_scratch(Duration::ZERO)?.len() as u64;
        Ok(report)
    }

    /// True if the artifact and everything below it is present and sound; records damaged trees.
    fn check_reachable(
        &self,
        kind: ArtifactKind,
        digest: &ObjectDigest,
        present: &HashSet<ObjectDigest>,
        bad: &mut HashSet<ObjectDigest>,
        damaged: &mut Vec<ObjectDigest>,
    ) -> bool {
        if bad.contains(digest) || !present.contains(digest) {
            return false;
        }
        if kind == ArtifactKind::File {
            return true;
        }
        match fs::read(self.object_path(digest)).ok().map(|b| Tree::parse(&b)) {
            Some(Ok(tree)) => {
                tree.entries.iter().all(|e| self.check_reachable(e.kind, &e.digest, present, bad, damaged))
            }
            _ => {
                bad.insert(*digest);
                damaged.push(*digest);
                false
            }
        }
    }

    fn quarantine(&self, path: &std::path::Path, kind: &str, name: &str) -> Result<()> {
        let dir = self.root().join("quarantine").join(kind);
        fs::create_dir_all(&dir).ctx("create", &dir)?;
        let dest = dir.join(format!("{name}.{}", humantime::format_rfc3339_seconds(SystemTime::now())));
        fs::rename(path, &dest).ctx("quarantine", path)
    }

    /// Removes every action record not in `roots` and every object that no kept record reaches. Objects and
    /// records younger than `grace` are kept whatever happens: a concurrent run may have stored outputs whose
    /// record it has not written yet. With `dry_run`, only reports.
    pub fn gc(&self, roots: &BTreeSet<ActionKey>, grace: Duration, dry_run: bool) -> Result<GcReport> {
        let mut report = GcReport::default();
        let now = SystemTime::now();
        let young = |path: &std::path::Path| {
            fs::metadata(path)
                .and_then(|m| m.modified())
                .map(|t| now.duration_since(t).unwrap_or_default() < grace)
                .unwrap_or(true)
        };
        let mut reachable: HashSet<ObjectDigest> = HashSet::new();
        for key in self.list_actions()? {
            let path = self.action_file(&key);
            let keep = roots.contains(&key) || young(&path);
            match self.read_action_raw(&key) {
                Ok(record) if keep => {
                    for a in record.outputs.values() {
                        self.mark(a.kind, &a.digest, &mut reachable);
                    }
                }
                _ if keep => {}
                _ => {
                    report.actions_removed += 1;
                    if !dry_run {
                        fs::remove_file(&path).ctx("remove", &path)?;
                    }
                }
            }
        }
        for (digest, path) in self.list_objects()? {
            if reachable.contains(&digest) || young(&path) {
                report.objects_kept += 1;
                continue;
            }
            report.objects_removed += 1;
            report.bytes_freed += fs::metadata(&path).map(|m| m.size()).unwrap_or(0);
            if !dry_run {
                fs::remove_file(&path).ctx("remove", &path)?;
            }
        }
        let mut scratch = self.dead_scratch(grace)?;
        for e in fs::read_dir(self.root().join("trees")).ctx("list", self.root().join("trees"))?.flatten() {
            let unreached = e.file_name().to_str().and_then(|s| s.parse().ok()).is_none_or(|d| !reachable.contains(&d));
            if unreached && !young(&e.path()) {
                scratch.push(e.path());
            }
        }
        report.scratch_removed = scratch.len() as u64;
        if !dry_run {
            for p in scratch {
                remove_tree(&p);
            }
        }
        Ok(report)
    }

    fn mark(&self, kind: ArtifactKind, digest: &ObjectDigest, reachable: &mut HashSet<ObjectDigest>) {
        if !reachable.insert(*digest) || kind == ArtifactKind::File {
            return;
        }
        if let Ok(tree) = self.read_tree(digest) {
            for e in &tree.entries {
                self.mark(e.kind, &e.digest, reachable);
            }
        }
    }

    /// Entries of `tmp/` left by processes of this host that no longer exist, or by another host's processes
    /// longer than a week ago, and older than `grace`.
    fn dead_scratch(&self, grace: Duration) -> Result<Vec<PathBuf>> {
        let host = crate::host_tag();
        let tmp = self.root().join("tmp");
        let mut out = Vec::new();
        for e in fs::read_dir(&tmp).ctx("list", &tmp)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let age =
                e.metadata().and_then(|m| m.modified()).ok().and_then(|t| SystemTime::now().duration_since(t).ok());
            let Some(age) = age else { continue };
            if age < grace {
                continue;
            }
            // Names are `<label>.<host>.<pid>.<random>` or `.w.<pid>.<random>` / `.c.<pid>.<random>`.
            let parts: Vec<&str> = name.split('.').collect();
            let (owner_host, pid) = match parts.as_slice() {
                ["", _, pid, _] => (host.as_str(), pid.parse::<i32>().ok()),
                [.., h, pid, _] => (*h, pid.parse::<i32>().ok()),
                _ => (host.as_str(), None),
            };
            // On this host a live pid means a running stage, however old (a fine-tune may take days); for
            // another host's leftovers only age can tell.
            let remove = match pid {
                Some(pid) if owner_host == host => !pid_alive(pid),
                _ => age > Duration::from_secs(7 * 86_400),
            };
            if remove {
                out.push(e.path());
            }
        }
        Ok(out)
    }
}

/// True if a process with this pid exists on this host.
pub fn pid_alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence and permission; it has no memory effects.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}
