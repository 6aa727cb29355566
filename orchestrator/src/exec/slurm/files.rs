//! What the Slurm executor keeps under `<cache>/slurm/`, beside the store (the `cache` crate does not know it).
//!
//! | path                          | written by          | what                                                  |
//! |-------------------------------|---------------------|-------------------------------------------------------|
//! | `studies/<sha256>.toml`       | `rto run`           | the study text jobs load, so an edit of the file after |
//! |                               |                     | submission does not change what a queued job runs      |
//! | `submitted/<identity>.json`   | `rto run`, the job  | which job computes what, so a later `rto run` attaches |
//! |                               |                     | to it instead of submitting it again                   |
//! | `receipts/<job>.json`         | the job             | how the job ended (Slurm forgets finished jobs)        |
//! | `logs/<job>.out`              | Slurm               | the job's stdout and stderr                            |
//!
//! An identity is the stage's action key (hex) when it was known at submission, else `after-<sha256>` of the
//! stage's definition with the ids of the upstream jobs it was queued behind. Every file is written to a
//! temporary name, fsynced and renamed, so a reader on another node never sees half of one. Files older than
//! [`KEEP`] are removed when a run starts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The directory inside the cache.
pub const DIR: &str = "slurm";

/// How long receipts, records, logs and study snapshots are kept.
pub const KEEP: Duration = Duration::from_secs(30 * 24 * 3600);

/// Version of [`Receipt`] and [`Submitted`].
pub const SCHEMA: u32 = 1;

/// Paths under `<cache>/slurm/`.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

const SUBDIRS: [&str; 4] = ["studies", "submitted", "receipts", "logs"];

impl Layout {
    /// The layout inside the cache at `cache`.
    pub fn new(cache: &Path) -> Layout {
        Layout { root: cache.join(DIR) }
    }

    /// Creates the directories.
    pub fn create(&self) -> std::io::Result<()> {
        for sub in SUBDIRS {
            std::fs::create_dir_all(self.root.join(sub))?;
        }
        Ok(())
    }

    /// Where receipts go.
    pub fn receipts(&self) -> PathBuf {
        self.root.join("receipts")
    }

    /// The receipt of `job`.
    pub fn receipt(&self, job: &str) -> PathBuf {
        self.receipts().join(format!("{job}.json"))
    }

    /// Slurm's output file of a job, as `sbatch --output` names it (`%j` is the job id).
    pub fn output_pattern(&self) -> PathBuf {
        self.root.join("logs").join("%j.out")
    }

    /// Slurm's output file of `job`.
    pub fn output(&self, job: &str) -> PathBuf {
        self.root.join("logs").join(format!("{job}.out"))
    }

    /// The record of the job that computes `identity`.
    pub fn submitted(&self, identity: &str) -> PathBuf {
        self.root.join("submitted").join(format!("{identity}.json"))
    }

    /// Stores the study text (once per content) and returns its path.
    pub fn snapshot(&self, text: &str) -> std::io::Result<PathBuf> {
        let digest = cache::ObjectDigest::of_bytes(text.as_bytes());
        let path = self.root.join("studies").join(format!("{}.toml", digest.to_hex()));
        if !path.is_file() {
            write_atomic(&path, text.as_bytes())?;
        }
        Ok(path)
    }

    /// Removes files older than `keep` (best effort: a file another process removes first is fine).
    pub fn prune(&self, keep: Duration) {
        let now = std::time::SystemTime::now();
        for sub in SUBDIRS {
            let Ok(rd) = std::fs::read_dir(self.root.join(sub)) else { continue };
            for e in rd.flatten() {
                let old = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| now.duration_since(t).ok())
                    .is_some_and(|age| age > keep);
                if old {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

/// How a job's stage ended, as the job itself wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Ended {
    /// It ran and its record is written.
    Ran,
    /// Its key was already recorded (by another job, or it was cut off): nothing ran.
    Cached,
    /// It failed; nothing was recorded.
    Failed,
}

/// A completion receipt: `receipts/<job>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Receipt {
    /// [`SCHEMA`].
    pub schema: u32,
    /// The Slurm job id.
    pub job: String,
    /// The study's name.
    pub study: String,
    /// The stage id.
    pub stage: String,
    /// The run that submitted it.
    pub run: String,
    /// The stage's action key (hex), once the job computed it.
    pub key: Option<String>,
    /// How it ended.
    pub ended: Ended,
    /// The error, when it failed.
    pub error: Option<String>,
    /// The stage's log, if it got that far.
    pub log: Option<PathBuf>,
    /// The end of that log (or of the error output), for the failure report.
    pub log_tail: String,
    /// How long the job's `rto` ran.
    pub duration_ms: u64,
    /// The node it ran on.
    pub host: String,
}

/// Which job computes an identity: `submitted/<identity>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Submitted {
    /// [`SCHEMA`].
    pub schema: u32,
    /// The Slurm job id.
    pub job: String,
    /// The study's name.
    pub study: String,
    /// The stage id.
    pub stage: String,
    /// The run that submitted it.
    pub run: String,
}

/// Writes `bytes` to `path` so that readers see all or nothing: a temporary file beside it, fsync, rename,
/// fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().expect("files under slurm/ have a parent");
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.{}.{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy(),
        cache::host_name().replace(['.', '/'], "_"),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes `value` as JSON with [`write_atomic`].
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    write_atomic(path, &bytes)
}

/// Reads a JSON file; `None` if it is missing or does not parse (treated as not written yet).
pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    std::fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipts_round_trip_and_snapshots_are_per_content() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = Layout::new(tmp.path());
        layout.create().unwrap();
        let receipt = Receipt {
            schema: SCHEMA,
            job: "17".into(),
            study: "s".into(),
            stage: "a".into(),
            run: "r".into(),
            key: None,
            ended: Ended::Failed,
            error: Some("boom".into()),
            log: None,
            log_tail: "last line".into(),
            duration_ms: 3,
            host: "node1".into(),
        };
        write_json(&layout.receipt("17"), &receipt).unwrap();
        let back: Receipt = read_json(&layout.receipt("17")).unwrap();
        assert_eq!(back.ended, Ended::Failed);
        assert_eq!(back.error.as_deref(), Some("boom"));
        assert!(read_json::<Receipt>(&layout.receipt("18")).is_none());
        let text = std::fs::read_to_string(layout.receipt("17")).unwrap();
        assert!(text.contains("\"ended\": \"failed\""), "{text}");

        let a = layout.snapshot("x = 1\n").unwrap();
        assert_eq!(layout.snapshot("x = 1\n").unwrap(), a);
        assert_ne!(layout.snapshot("x = 2\n").unwrap(), a);
        assert_eq!(std::fs::read_to_string(&a).unwrap(), "x = 1\n");
        let leftovers: Vec<_> = std::fs::read_dir(a.parent().unwrap())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
    }
}
