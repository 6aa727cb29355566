//! `hf://` inputs: files and whole repositories from the Hugging Face Hub, through `hf-hub`'s sync client.
//!
//! Everything lands in the standard Hugging Face cache (`<HF_HUB_CACHE>/datasets--OWNER--NAME/snapshots/<commit>/…`,
//! files being symlinks into `blobs/`), so Python tools and rto share downloads. A fetched file is found again
//! through the cache's `refs/<revision>` without any request, as `hf-hub`'s `get` does; a whole-repository
//! snapshot additionally needs its file list, which rto keeps under `<downloads>/hf/` (not in the snapshot
//! directory, whose content is the input).

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use hf_hub::api::Progress;
use hf_hub::api::sync::{Api, ApiBuilder, ApiError};
use hf_hub::{Repo, RepoType};

use super::{HfKind, Remote, human_bytes, is_safe_relative};

/// The Hub used when `HF_ENDPOINT` is not set.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Where and how to reach the Hugging Face Hub: read from the environment by [`HfConfig::from_env`], or built
/// explicitly (tests do, so that they need not change the process environment, which all threads share).
#[derive(Clone, PartialEq, Eq)]
pub struct HfConfig {
    /// The Hub's base URL, without a trailing `/`.
    pub endpoint: String,
    /// The Hugging Face cache (the `hub` directory: `datasets--…`, `models--…`).
    pub cache_dir: PathBuf,
    /// The access token, sent as `Authorization: Bearer …`; never printed (see the `Debug` impl).
    pub token: Option<String>,
    /// Use only the cache; fail instead of making a request.
    pub offline: bool,
}

impl fmt::Debug for HfConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HfConfig")
            .field("endpoint", &self.endpoint)
            .field("cache_dir", &self.cache_dir)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("offline", &self.offline)
            .finish()
    }
}

impl HfConfig {
    /// Reads the variables the Hugging Face tools read:
    ///
    /// - `HF_ENDPOINT`: the server (default `https://huggingface.co`);
    /// - `HF_HOME`: the Hugging Face home (default `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`),
    ///   whose `hub/` is the cache, unless `HF_HUB_CACHE` names another one;
    /// - `HF_TOKEN`: the access token, else the `token` file in the home (`huggingface-cli login` writes it);
    /// - `HF_HUB_OFFLINE`: `1`/`true`/`yes`/`on` to use only the cache.
    ///
    /// `hf-hub` itself reads only `HF_HOME`, `HF_ENDPOINT` and the token file; the others make rto agree with the
    /// Python tools that share the cache.
    pub fn from_env() -> anyhow::Result<HfConfig> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// [`HfConfig::from_env`] over any source of variables.
    fn from_vars(var: impl Fn(&str) -> Option<String>) -> anyhow::Result<HfConfig> {
        let var = |name: &str| var(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let endpoint =
            var("HF_ENDPOINT").map(|e| e.trim_end_matches('/').to_string()).unwrap_or_else(|| DEFAULT_ENDPOINT.into());
        let home = match (var("HF_HOME"), var("XDG_CACHE_HOME"), var("HOME")) {
            (Some(hf_home), _, _) => PathBuf::from(hf_home),
            (None, Some(xdg), _) => Path::new(&xdg).join("huggingface"),
            (None, None, Some(home)) => Path::new(&home).join(".cache").join("huggingface"),
            (None, None, None) => bail!("cannot locate the Hugging Face cache: set `HF_HOME`"),
        };
        let cache_dir = var("HF_HUB_CACHE").map(PathBuf::from).unwrap_or_else(|| home.join("hub"));
        let token = var("HF_TOKEN").or_else(|| {
            let stored = fs::read_to_string(home.join("token")).ok()?;
            Some(stored.trim().to_string()).filter(|t| !t.is_empty())
        });
        let offline = var("HF_HUB_OFFLINE")
            .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"));
        Ok(HfConfig { endpoint, cache_dir, token, offline })
    }

    /// The `hf-hub` client for this configuration. Everything is passed explicitly (nothing read from the
    /// environment here), and the token is set or cleared explicitly, so the one from `from_cache`'s token
    /// file never overrides `HF_TOKEN`.
    fn api(&self) -> anyhow::Result<Api> {
        ApiBuilder::from_cache(hf_hub::Cache::new(self.cache_dir.clone()))
            .with_endpoint(self.endpoint.clone())
            .with_token(self.token.clone())
            .with_progress(false)
            .with_retries(3)
            .with_user_agent("rto", env!("CARGO_PKG_VERSION"))
            .build()
            .map_err(|e| anyhow!("cannot set up the Hugging Face client: {e}"))
    }
}

/// Fetches an `hf://` input (a [`Remote::Hf`]): the file's path in the Hugging Face cache, or the snapshot
/// directory of the whole repository.
pub(super) fn fetch_hf(
    remote: &Remote,
    config: &HfConfig,
    downloads: &Path,
    log: &mut dyn FnMut(&str),
) -> anyhow::Result<PathBuf> {
    let Remote::Hf { kind, repo, revision, path } = remote else {
        bail!("`{}` is not an `hf://` input", remote.display());
    };
    let hub = Hub { config, kind: *kind, repo, label: remote.display() };
    match path {
        Some(path) => hub.file(revision, path, log),
        None => hub.snapshot(revision, downloads, log),
    }
}

/// One repository on one Hub.
struct Hub<'a> {
    config: &'a HfConfig,
    kind: HfKind,
    repo: &'a str,
    /// The input as the study wrote it, for messages.
    label: String,
}

/// The file list of a complete snapshot, kept in `<downloads>/hf/…` (see the module doc).
#[derive(serde::Serialize, serde::Deserialize)]
struct Listing {
    commit: String,
    files: Vec<String>,
}

impl Hub<'_> {
    fn at(&self, revision: &str) -> Repo {
        let repo_type = match self.kind {
            HfKind::Dataset => RepoType::Dataset,
            HfKind::Model => RepoType::Model,
        };
        Repo::with_revision(self.repo.to_string(), repo_type, revision.to_string())
    }

    /// `<cache>/datasets--OWNER--NAME`.
    fn repo_dir(&self) -> PathBuf {
        self.config.cache_dir.join(self.at("main").folder_name())
    }

    /// The commit `revision` names in the cache: itself if it is a commit hash, else what `refs/<revision>` says.
    fn cached_commit(&self, revision: &str) -> Option<String> {
        if revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Some(revision.to_string());
        }
        let commit = fs::read_to_string(self.repo_dir().join("refs").join(revision)).ok()?;
        Some(commit.trim().to_string()).filter(|c| is_commit_name(c))
    }

    fn offline_error(&self) -> anyhow::Error {
        anyhow!(
            "`{}` is not in the Hugging Face cache `{}` and `HF_HUB_OFFLINE` is set: fetch it once online",
            self.label,
            self.config.cache_dir.display()
        )
    }

    /// A single file: from the cache if there, else downloaded.
    fn file(&self, revision: &str, path: &str, log: &mut dyn FnMut(&str)) -> anyhow::Result<PathBuf> {
        if let Some(commit) = self.cached_commit(revision) {
            let cached = self.repo_dir().join("snapshots").join(commit).join(path);
            if cached.exists() {
                return Ok(cached);
            }
        }
        if self.config.offline {
            return Err(self.offline_error());
        }
        let api = self.config.api()?;
        let progress = LogProgress { label: self.label.clone(), log, announced: false };
        api.repo(self.at(revision))
            .download_with_progress(path, progress)
            .map_err(hub_error)
            .with_context(|| format!("cannot fetch `{}` from `{}`", self.label, self.config.endpoint))
    }

    /// The whole repository at `revision`: its snapshot directory, with every file of the commit in it.
    fn snapshot(&self, revision: &str, downloads: &Path, log: &mut dyn FnMut(&str)) -> anyhow::Result<PathBuf> {
        let listing_path = downloads
            .join("hf")
            .join(self.at(revision).folder_name())
            .join(format!("{}.json", revision.replace('/', "%2F")));
        if let Some(dir) = self.cached_snapshot(&listing_path) {
            return Ok(dir);
        }
        if self.config.offline {
            return Err(self.offline_error());
        }
        let context = || format!("cannot fetch `{}` from `{}`", self.label, self.config.endpoint);
        let api = self.config.api().with_context(context)?;
        let info = api.repo(self.at(revision)).info().map_err(hub_error).with_context(context)?;
        // The commit and the file names become paths in the cache: a confused (or hostile) server must not be
        // able to point them elsewhere.
        if !is_commit_name(&info.sha) {
            bail!("{}: the Hub answered with `{}` as the commit, which is not a commit hash", context(), info.sha);
        }
        let files: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
        if let Some(bad) = files.iter().find(|f| !is_safe_relative(f)) {
            bail!("{}: the Hub listed `{bad}`, which is not a relative path inside the repository", context());
        }
        if files.is_empty() {
            bail!("{}: the repository has no files at `{revision}`", context());
        }

        // Fetch by commit, not by branch: if the branch moves meanwhile, every file still comes from one commit.
        let pinned = api.repo(self.at(&info.sha));
        let snapshot_dir = self.repo_dir().join("snapshots").join(&info.sha);
        for file in &files {
            let want = snapshot_dir.join(file);
            if want.exists() {
                continue;
            }
            let label = format!("hf://{}/{}/{file}@{revision}", self.kind.as_str(), self.repo);
            let progress = LogProgress { label: label.clone(), log: &mut *log, announced: false };
            let got = pinned
                .download_with_progress(file, progress)
                .map_err(hub_error)
                .with_context(|| format!("cannot fetch `{label}` from `{}`", self.config.endpoint))?;
            if got != want {
                bail!("{}: the Hub served `{file}` from another commit than `{}`", context(), info.sha);
            }
        }
        // So that `hf-hub` and Python find the branch in the cache too.
        hf_hub::Cache::new(self.config.cache_dir.clone())
            .repo(self.at(revision))
            .create_ref(&info.sha)
            .with_context(|| format!("cannot record `{revision}` in `{}`", self.repo_dir().display()))?;
        write_listing(&listing_path, &Listing { commit: info.sha, files })?;
        Ok(snapshot_dir)
    }

    /// The snapshot directory named by the listing at `listing_path`, if every file of it is in the cache.
    fn cached_snapshot(&self, listing_path: &Path) -> Option<PathBuf> {
        let listing: Listing = serde_json::from_slice(&fs::read(listing_path).ok()?).ok()?;
        if !is_commit_name(&listing.commit) {
            return None;
        }
        let dir = self.repo_dir().join("snapshots").join(&listing.commit);
        listing.files.iter().all(|f| is_safe_relative(f) && dir.join(f).exists()).then_some(dir)
    }
}

/// Whether `s` can be a commit hash (and so a directory name in the cache).
fn is_commit_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Writes the listing atomically (temp file, rename), so a killed run leaves either no listing or a whole one.
fn write_listing(path: &Path, listing: &Listing) -> anyhow::Result<()> {
    let dir = path.parent().expect("listing paths have a parent");
    let context = || format!("cannot write `{}`", path.display());
    fs::create_dir_all(dir).with_context(context)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).with_context(context)?;
    serde_json::to_writer_pretty(&mut tmp, listing).with_context(context)?;
    tmp.as_file().sync_all().with_context(context)?;
    tmp.persist(path).map_err(|e| e.error).with_context(context)?;
    Ok(())
}

/// An `hf-hub` error in the project's words. Status errors name the URL (which never holds the token: that
/// travels in a header) and, for the usual causes, what to do.
fn hub_error(e: ApiError) -> anyhow::Error {
    match e {
        ApiError::RequestError(boxed) => match *boxed {
            ureq::Error::Status(code, response) => {
                let hint = match code {
                    401 | 403 => ": the repository may be private or gated; set `HF_TOKEN` to a token with access",
                    404 => ": no such repository, revision or file (or a private one: set `HF_TOKEN`)",
                    _ => "",
                };
                anyhow!("`{}` answered HTTP {code} {}{hint}", response.get_url(), response.status_text())
            }
            transport => anyhow!("{transport}"),
        },
        other => anyhow!("{other}"),
    }
}

/// Turns `hf-hub`'s progress callbacks into one "downloading X (size)" line per file.
struct LogProgress<'a> {
    label: String,
    log: &'a mut dyn FnMut(&str),
    /// `hf-hub` calls `init` again on each resumed attempt; say it once.
    announced: bool,
}

impl Progress for LogProgress<'_> {
    fn init(&mut self, size: usize, _filename: &str) {
        if !std::mem::replace(&mut self.announced, true) {
            (self.log)(&format!("downloading {} ({})", self.label, human_bytes(size as u64)));
        }
    }
    fn update(&mut self, _size: usize) {}
    fn finish(&mut self) {}
}

#[cfg(test)]
mod tests;
