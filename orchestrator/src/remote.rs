//! Remote study inputs: fetched into a local cache once, then hashed like any file.
//!
//! A study may name an input that does not live beside it:
//!
//! ```toml
//! inputs = { refusals = { url = "https://example.org/x.csv", sha256 = "9f86d081…" } }
//! inputs = { prompts = "hf://datasets/acme/prompts/data/train.parquet@v1" }
//! ```
//!
//! The planner keys stages by the *content* of their inputs, so all this module has to do is turn such a name
//! into a local path ([`fetch`]); the planner then hashes that path as usual.
//!
//! - **`https://…` (or `http://…`) URLs** must carry a sha256 pin: the bytes are the input, and a URL alone says
//!   nothing about them. Downloads land in `<downloads>/sha256/<hex>`, named by the pin, so a second fetch (or
//!   an offline re-run) finds the file without touching the network, and a file that is there was verified
//!   before it got its name.
//! - **`hf://datasets/OWNER/NAME[/PATH][@REVISION]`** (and `hf://models/…`) go through the `hf-hub` crate into the
//!   standard Hugging Face cache (`HF_HOME`), shared with Python tools. They are pinned by revision, not sha256:
//!   the Hub names files by commit. A branch such as `main` is resolved once and then served from the cache, as
//!   `hf-hub` does; pin a commit (`@<40 hex>`) where the study must not drift between machines.

use std::path::{Path, PathBuf};

use cache::ObjectDigest;

mod hf;
mod http;
#[cfg(test)]
mod test_server;

pub use hf::HfConfig;

/// Which kind of Hugging Face Hub repository an `hf://` input names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HfKind {
    /// `hf://datasets/…`
    Dataset,
    /// `hf://models/…`
    Model,
}

impl HfKind {
    /// The URL segment (`datasets`, `models`), as in `hf://` names and Hub API paths.
    pub fn as_str(self) -> &'static str {
        match self {
            HfKind::Dataset => "datasets",
            HfKind::Model => "models",
        }
    }
}

/// A remote input as the study wrote it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Remote {
    /// An `http(s)://` URL whose bytes must hash to `sha256`.
    Url {
        /// The URL, as written.
        url: String,
        /// The pin: the sha256 of the file's bytes.
        sha256: ObjectDigest,
    },
    /// A file or a whole repository on the Hugging Face Hub.
    Hf {
        /// Dataset or model repository.
        kind: HfKind,
        /// `OWNER/NAME`.
        repo: String,
        /// Branch, tag or commit; `main` when the name has no `@…`.
        revision: String,
        /// A file inside the repository, or `None` for a snapshot of the whole repository.
        path: Option<String>,
    },
}

/// The usage line repeated by `hf://` parse errors.
const HF_FORM: &str =
    "expected `hf://datasets/OWNER/NAME[/PATH][@REVISION]` or `hf://models/OWNER/NAME[/PATH][@REVISION]`";

impl Remote {
    /// Parses `hf://…` (sha256 must be None) or an http(s) URL (sha256 required: the error says how to get it).
    ///
    /// The revision of an `hf://` name is whatever follows its last `@`, so it may contain `/` (`@refs/pr/1`); a
    /// path that itself contains `@` therefore needs an explicit `@REVISION` after it.
    pub fn parse(text: &str, sha256: Option<&str>) -> Result<Remote, String> {
        let Some((scheme, rest)) = text.split_once("://") else {
            return Err(format!(
                "`{text}` is not a remote input: expected an `https://…` URL with a `sha256` pin, or `hf://datasets/…`"
            ));
        };
        match scheme.to_ascii_lowercase().as_str() {
            "hf" => {
                if sha256.is_some() {
                    return Err(format!(
                        "`{text}` is pinned by revision, not by `sha256`: drop `sha256` (and write `@<commit>` to pin \
                         an exact commit)"
                    ));
                }
                parse_hf(text, rest)
            }
            "https" | "http" => {
                let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
                if authority.is_empty() || text.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(format!("`{text}` is not a valid URL"));
                }
                let Some(pin) = sha256 else {
                    return Err(format!(
                        "`{text}` needs a `sha256` pin, so that the study names the bytes and not only a place: \
                         download the file once, run `sha256sum FILE` (macOS: `shasum -a 256 FILE`), and write \
                         `{{ url = \"{text}\", sha256 = \"<64 hex digits>\" }}`"
                    ));
                };
                // Some tools print digests in upper case; the digest is the same.
                let sha256 =
                    pin.trim().to_ascii_lowercase().parse().map_err(|e| format!("`sha256` of `{text}`: {e}"))?;
                Ok(Remote::Url { url: text.to_string(), sha256 })
            }
            other => Err(format!(
                "unsupported scheme `{other}` in `{text}`: remote inputs are `https://…` (or `http://…`) URLs with a \
                 `sha256` pin, or `hf://datasets/…` / `hf://models/…`"
            )),
        }
    }

    /// Human form for messages.
    pub fn display(&self) -> String {
        match self {
            Remote::Url { url, .. } => url.clone(),
            Remote::Hf { kind, repo, revision, path } => {
                let path = path.as_deref().map(|p| format!("/{p}")).unwrap_or_default();
                format!("hf://{}/{repo}{path}@{revision}", kind.as_str())
            }
        }
    }
}

/// Parses what follows `hf://` (`rest`); `text` is the whole name, for messages.
fn parse_hf(text: &str, rest: &str) -> Result<Remote, String> {
    let bad = |why: &str| format!("`{text}`: {why}; {HF_FORM}");
    let (body, revision) = match rest.rsplit_once('@') {
        Some((body, revision)) => (body, revision),
        None => (rest, "main"),
    };
    let (kind, repo_and_path) = match body.split_once('/') {
        Some(("datasets", r)) => (HfKind::Dataset, r),
        Some(("models", r)) => (HfKind::Model, r),
        Some(("spaces", _)) => return Err(bad("Spaces are not supported as inputs")),
        _ => return Err(bad("the repository kind is missing")),
    };
    let mut parts = repo_and_path.splitn(3, '/');
    let owner = parts.next().unwrap_or("");
    let name = parts.next().unwrap_or("");
    let path = parts.next().unwrap_or("");
    // Repository ids are `OWNER/NAME` on today's Hub, with a small alphabet; checking it here keeps odd
    // characters out of the cache's directory names and out of URLs.
    let repo_ok = |s: &str| {
        !s.is_empty() && s != "." && s != ".." && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    if !repo_ok(owner) || !repo_ok(name) {
        return Err(bad("the repository must be `OWNER/NAME`"));
    }
    // Both the path and the revision become file names inside the Hugging Face cache: no `..`, no empty or
    // absolute segments, so that neither can point outside it.
    let path = path.strip_suffix('/').unwrap_or(path);
    if !path.is_empty() && !is_safe_relative(path) {
        return Err(bad(&format!("`{path}` is not a relative path inside the repository")));
    }
    if revision.is_empty() || !is_safe_relative(revision) || revision.chars().any(|c| c.is_whitespace()) {
        return Err(bad(&format!("`{revision}` is not a revision (a branch, tag or commit)")));
    }
    Ok(Remote::Hf {
        kind,
        repo: format!("{owner}/{name}"),
        revision: revision.to_string(),
        path: (!path.is_empty()).then(|| path.to_string()),
    })
}

/// Whether `path` is a `/`-separated relative path with no empty, `.` or `..` segment and no control characters.
fn is_safe_relative(path: &str) -> bool {
    !path.chars().any(|c| c.is_control() || c == '\\')
        && path.split('/').all(|seg| !seg.is_empty() && seg != "." && seg != "..")
}

/// Fetches (or finds already fetched) and returns a local path (file or directory). `downloads` is a directory
/// inside rto's cache (e.g. `.rto/downloads`); `log` receives human progress lines ("downloading X (12.3 MB)").
///
/// URLs end up in `<downloads>/sha256/<hex>`; `hf://` inputs in the Hugging Face cache (`HF_HOME`, see
/// [`HfConfig::from_env`]), with a small listing per whole-repository snapshot kept under `<downloads>/hf/`.
pub fn fetch(remote: &Remote, downloads: &Path, log: &mut dyn FnMut(&str)) -> anyhow::Result<PathBuf> {
    match remote {
        Remote::Url { url, sha256 } => http::fetch_url(url, sha256, downloads, &http::Policy::default(), log),
        Remote::Hf { .. } => hf::fetch_hf(remote, &HfConfig::from_env()?, downloads, log),
    }
}

/// The local path of a remote input that is already fetched, without any network access; `None` if it would
/// have to be downloaded. `rto plan` uses this: planning never downloads.
pub fn fetched(remote: &Remote, downloads: &Path) -> Option<PathBuf> {
    match remote {
        Remote::Url { sha256, .. } => {
            let path = downloads.join("sha256").join(sha256.to_hex());
            path.is_file().then_some(path)
        }
        Remote::Hf { .. } => {
            let mut config = HfConfig::from_env().ok()?;
            config.offline = true;
            hf::fetch_hf(remote, &config, downloads, &mut |_| {}).ok()
        }
    }
}

/// `n` bytes for people, in decimal units: `512 B`, `12.3 MB`.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    if n < 1000 {
        return format!("{n} B");
    }
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIN: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn hf(kind: HfKind, repo: &str, revision: &str, path: Option<&str>) -> Remote {
        Remote::Hf { kind, repo: repo.into(), revision: revision.into(), path: path.map(Into::into) }
    }

    #[test]
    fn parses_urls_with_a_pin() {
        let r = Remote::parse("https://example.org/x.csv", Some(PIN)).unwrap();
        assert_eq!(r, Remote::Url { url: "https://example.org/x.csv".into(), sha256: PIN.parse().unwrap() });
        assert_eq!(r.display(), "https://example.org/x.csv");
        // Plain http and upper-case digests are accepted: the pin protects the bytes either way.
        let r = Remote::parse("http://127.0.0.1:8080/x", Some(&PIN.to_uppercase())).unwrap();
        assert!(matches!(r, Remote::Url { sha256, .. } if sha256.to_hex() == PIN));
    }

    #[test]
    fn url_errors_say_what_to_do() {
        let e = Remote::parse("https://example.org/x.csv", None).unwrap_err();
        assert!(e.contains("`https://example.org/x.csv`") && e.contains("sha256sum"), "{e}");
        let e = Remote::parse("https://example.org/x.csv", Some("abc")).unwrap_err();
        assert!(e.contains("64 lowercase hex digits") && e.contains("`abc`"), "{e}");
        let e = Remote::parse("https://example.org/x.csv", Some(&"g".repeat(64))).unwrap_err();
        assert!(e.contains("not a sha256 digest"), "{e}");
        for text in ["ftp://example.org/x", "s3://bucket/key", "file:///etc/passwd"] {
            let e = Remote::parse(text, Some(PIN)).unwrap_err();
            assert!(e.contains("unsupported scheme") && e.contains(text), "{e}");
        }
        let e = Remote::parse("data/x.csv", None).unwrap_err();
        assert!(e.contains("not a remote input"), "{e}");
        let e = Remote::parse("https:///x.csv", Some(PIN)).unwrap_err();
        assert!(e.contains("not a valid URL"), "{e}");
    }

    #[test]
    fn parses_hf_names() {
        let d = HfKind::Dataset;
        assert_eq!(Remote::parse("hf://datasets/acme/refusals", None).unwrap(), hf(d, "acme/refusals", "main", None));
        assert_eq!(
            Remote::parse("hf://datasets/acme/refusals/data/train.csv@v1.2", None).unwrap(),
            hf(d, "acme/refusals", "v1.2", Some("data/train.csv"))
        );
        assert_eq!(
            Remote::parse("hf://datasets/acme/refusals@refs/pr/1", None).unwrap(),
            hf(d, "acme/refusals", "refs/pr/1", None)
        );
        assert_eq!(
            Remote::parse("hf://models/acme/tiny-lm/config.json", None).unwrap(),
            hf(HfKind::Model, "acme/tiny-lm", "main", Some("config.json"))
        );
        // A path with `@` in it, disambiguated by an explicit revision.
        assert_eq!(
            Remote::parse("hf://datasets/acme/x/a@b.txt@main", None).unwrap(),
            hf(d, "acme/x", "main", Some("a@b.txt"))
        );
        let r = hf(d, "acme/refusals", "v1", Some("data/train.csv"));
        assert_eq!(r.display(), "hf://datasets/acme/refusals/data/train.csv@v1");
        assert_eq!(Remote::parse(&r.display(), None).unwrap(), r);
    }

    #[test]
    fn rejects_bad_hf_names() {
        for (text, needle) in [
            ("hf://acme/refusals", "kind is missing"),
            ("hf://spaces/acme/demo", "Spaces are not supported"),
            ("hf://datasets/acme", "`OWNER/NAME`"),
            ("hf://datasets/acme/", "`OWNER/NAME`"),
            ("hf://datasets/ac me/x", "`OWNER/NAME`"),
            ("hf://datasets/acme/x/../../etc/passwd", "not a relative path"),
            ("hf://datasets/acme/x/a//b", "not a relative path"),
            ("hf://datasets/acme/x@", "not a revision"),
            ("hf://datasets/acme/x@../y", "not a revision"),
        ] {
            let e = Remote::parse(text, None).unwrap_err();
            assert!(e.contains(needle) && e.contains(text) && e.contains("hf://datasets/OWNER/NAME"), "{text}: {e}");
        }
        let e = Remote::parse("hf://datasets/acme/x", Some(PIN)).unwrap_err();
        assert!(e.contains("drop `sha256`"), "{e}");
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(12_345_678), "12.3 MB");
        assert_eq!(human_bytes(2_000_000_000_000_000), "2000.0 TB");
    }
}
