//! `hf://` against a fake Hub on loopback that speaks what `hf-hub` 0.4's sync client asks:
//!
//! - `GET /api/{datasets|models}/OWNER/NAME/revision/{REV}` → `{"sha": …, "siblings": [{"rfilename": …}]}`;
//! - `GET /[datasets/]OWNER/NAME/resolve/{REV}/{FILE}` with `Range: bytes=0-0` (metadata: `x-repo-commit`,
//!   `etag`, `content-range`), then with `Range: bytes=N-` for the bytes.
//!
//! A revision with `/` arrives as one `%2F`-encoded path segment.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::super::test_server::{Reply, Request, Server};
use super::*;

const MAIN: &str = "1111111111111111111111111111111111111111";
const V1: &str = "0000000000000000000000000000000000000000";
const PR: &str = "2222222222222222222222222222222222222222";
const TOKEN: &str = "hf_s3cr3t_t0k3n_do_not_print";

/// Commits by hash, and which revision names which commit.
#[derive(Default)]
struct FakeRepo {
    refs: HashMap<String, String>,
    commits: HashMap<String, BTreeMap<String, Vec<u8>>>,
}

impl FakeRepo {
    fn commit(&self, revision: &str) -> Option<(&str, &BTreeMap<String, Vec<u8>>)> {
        let sha = self.refs.get(revision).map(String::as_str).unwrap_or(revision);
        self.commits.get_key_value(sha).map(|(k, v)| (k.as_str(), v))
    }
}

/// Repositories by `datasets/OWNER/NAME` or `models/OWNER/NAME`; requests need `TOKEN` when `token` is set.
struct FakeHub {
    repos: HashMap<String, FakeRepo>,
    token: Option<&'static str>,
}

fn decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = vec![];
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 3 <= bytes.len() {
            out.push(u8::from_str_radix(&segment[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

impl FakeHub {
    fn answer(&self, req: &Request) -> Reply {
        if let Some(token) = self.token
            && req.header("authorization") != Some(&format!("Bearer {token}"))
        {
            return Reply::status(401);
        }
        let segs: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
        match segs.as_slice() {
            ["api", kind, owner, name, "revision", rev] => {
                let Some((sha, files)) = self.repo(kind, owner, name).and_then(|r| r.commit(&decode(rev))) else {
                    return Reply::status(404);
                };
                let siblings: Vec<_> = files.keys().map(|f| serde_json::json!({ "rfilename": f })).collect();
                Reply::ok(serde_json::to_vec(&serde_json::json!({ "sha": sha, "siblings": siblings })).unwrap())
            }
            ["datasets", owner, name, "resolve", rev, file @ ..] => {
                self.resolve("datasets", owner, name, rev, file, req)
            }
            [owner, name, "resolve", rev, file @ ..] => self.resolve("models", owner, name, rev, file, req),
            _ => Reply::status(404),
        }
    }

    fn repo(&self, kind: &str, owner: &str, name: &str) -> Option<&FakeRepo> {
        self.repos.get(&format!("{kind}/{owner}/{name}"))
    }

    fn resolve(&self, kind: &str, owner: &str, name: &str, rev: &str, file: &[&str], req: &Request) -> Reply {
        let file: Vec<String> = file.iter().map(|s| decode(s)).collect();
        let Some((sha, files)) = self.repo(kind, owner, name).and_then(|r| r.commit(&decode(rev))) else {
            return Reply::status(404);
        };
        let Some(body) = files.get(&file.join("/")) else {
            return Reply::status(404);
        };
        let etag = format!("\"{}\"", cache::ObjectDigest::of_bytes(body).to_hex());
        let range = req.header("range").and_then(|r| r.strip_prefix("bytes=")).map(|r| {
            let (from, to) = r.split_once('-').unwrap();
            let from: usize = from.parse().unwrap();
            let to: usize = if to.is_empty() { body.len() - 1 } else { to.parse().unwrap() };
            (from, to.min(body.len() - 1))
        });
        let reply = match range {
            Some((from, to)) => {
                let mut reply = Reply::ok(body[from..=to].to_vec())
                    .header("Content-Range", format!("bytes {from}-{to}/{}", body.len()));
                reply.status = 206;
                reply
            }
            None => Reply::ok(body.clone()),
        };
        reply.header("X-Repo-Commit", sha).header("ETag", etag)
    }
}

/// `acme/refusals` (dataset: `main`, tag `v1`, `refs/pr/1`) and `acme/tiny` (model).
fn fake_hub(token: Option<&'static str>) -> Server {
    let files = |pairs: &[(&str, &str)]| -> BTreeMap<String, Vec<u8>> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect()
    };
    let mut dataset = FakeRepo::default();
    dataset.refs.insert("main".into(), MAIN.into());
    dataset.refs.insert("v1".into(), V1.into());
    dataset.refs.insert("refs/pr/1".into(), PR.into());
    dataset.commits.insert(
        MAIN.into(),
        files(&[
            ("README.md", "# refusals\n"),
            ("data/train.csv", "prompt,refusal\nhello,no\nbye,no\n"),
            ("data/test.csv", "prompt,refusal\nhi,no\n"),
        ]),
    );
    dataset.commits.insert(V1.into(), files(&[("data/train.csv", "prompt,refusal\nold,no\n")]));
    dataset.commits.insert(PR.into(), files(&[("data/train.csv", "prompt,refusal\nproposed,no\n")]));
    let mut model = FakeRepo::default();
    model.refs.insert("main".into(), MAIN.into());
    model.commits.insert(MAIN.into(), files(&[("config.json", "{\"layers\": 2}\n")]));
    let hub = Arc::new(FakeHub {
        repos: HashMap::from([("datasets/acme/refusals".into(), dataset), ("models/acme/tiny".into(), model)]),
        token,
    });
    Server::start(move |req| hub.answer(req))
}

struct Setup {
    server: Server,
    tmp: tempfile::TempDir,
    config: HfConfig,
}

impl Setup {
    fn new(token: Option<&'static str>) -> Setup {
        let server = fake_hub(token);
        let tmp = tempfile::tempdir().unwrap();
        let config = HfConfig {
            endpoint: server.base.clone(),
            cache_dir: tmp.path().join("hf-home/hub"),
            token: token.map(Into::into),
            offline: false,
        };
        Setup { server, tmp, config }
    }

    fn downloads(&self) -> PathBuf {
        self.tmp.path().join("downloads")
    }

    fn fetch(&self, name: &str, log: &mut Vec<String>) -> anyhow::Result<PathBuf> {
        self.fetch_with(&self.config, name, log)
    }

    fn fetch_with(&self, config: &HfConfig, name: &str, log: &mut Vec<String>) -> anyhow::Result<PathBuf> {
        let remote = Remote::parse(name, None).unwrap();
        fetch_hf(&remote, config, &self.downloads(), &mut |line| log.push(line.to_string()))
    }

    fn offline(&self) -> HfConfig {
        HfConfig { offline: true, ..self.config.clone() }
    }

    fn snapshot(&self, kind: &str, commit: &str) -> PathBuf {
        self.config.cache_dir.join(format!("{kind}--acme--refusals/snapshots/{commit}"))
    }
}

/// Every file under `dir` (following the cache's symlinks), by relative path.
fn walk(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(dir).unwrap().to_str().unwrap().to_string();
                out.insert(rel, fs::read_to_string(&path).unwrap());
            }
        }
    }
    out
}

#[test]
fn a_single_file_then_from_the_cache() {
    let s = Setup::new(None);
    let mut log = vec![];
    let name = "hf://datasets/acme/refusals/data/train.csv";
    let path = s.fetch(name, &mut log).unwrap();
    assert_eq!(path, s.snapshot("datasets", MAIN).join("data/train.csv"));
    assert_eq!(fs::read_to_string(&path).unwrap(), "prompt,refusal\nhello,no\nbye,no\n");
    assert_eq!(log, ["downloading hf://datasets/acme/refusals/data/train.csv@main (31 B)"]);
    let hits = s.server.hits();
    assert!(hits >= 2, "metadata probe and download, got {hits}");
    assert!(s.server.requests().iter().all(|r| r.header("authorization").is_none()));

    // Again, online and offline: served from the cache, no request.
    assert_eq!(s.fetch(name, &mut log).unwrap(), path);
    assert_eq!(s.fetch_with(&s.offline(), name, &mut log).unwrap(), path);
    assert_eq!(s.server.hits(), hits);
    assert_eq!(log.len(), 1);
}

#[test]
fn the_revision_after_the_at_sign() {
    let s = Setup::new(None);
    let read = |name: &str| fs::read_to_string(s.fetch(name, &mut vec![]).unwrap()).unwrap();
    assert_eq!(read("hf://datasets/acme/refusals/data/train.csv@v1"), "prompt,refusal\nold,no\n");
    assert_eq!(read("hf://datasets/acme/refusals/data/train.csv@refs/pr/1"), "prompt,refusal\nproposed,no\n");
    assert_eq!(
        read(&format!("hf://datasets/acme/refusals/data/train.csv@{MAIN}")),
        "prompt,refusal\nhello,no\nbye,no\n"
    );
    let path = s.fetch("hf://datasets/acme/refusals/data/train.csv@v1", &mut vec![]).unwrap();
    assert_eq!(path, s.snapshot("datasets", V1).join("data/train.csv"));
    // The `%2F`-encoded revision reached the server as one segment.
    assert!(
        s.server.requests().iter().any(|r| r.path.contains("/resolve/refs%2Fpr%2F1/")),
        "{:?}",
        s.server.requests()
    );
}

#[test]
fn a_whole_repository_snapshot() {
    let s = Setup::new(None);
    let mut log = vec![];
    let dir = s.fetch("hf://datasets/acme/refusals", &mut log).unwrap();
    assert_eq!(dir, s.snapshot("datasets", MAIN));
    let files = walk(&dir);
    assert_eq!(files.keys().collect::<Vec<_>>(), ["README.md", "data/test.csv", "data/train.csv"]);
    assert_eq!(files["data/test.csv"], "prompt,refusal\nhi,no\n");
    assert_eq!(log.len(), 3, "{log:?}");
    assert!(log.iter().any(|l| l.starts_with("downloading hf://datasets/acme/refusals/README.md@main (")), "{log:?}");

    // Again, online and offline: the listing and the cache answer, no request.
    let hits = s.server.hits();
    assert_eq!(s.fetch("hf://datasets/acme/refusals", &mut log).unwrap(), dir);
    assert_eq!(s.fetch_with(&s.offline(), "hf://datasets/acme/refusals@main", &mut log).unwrap(), dir);
    assert_eq!(s.server.hits(), hits);
    // A single file of the snapshot is in the cache too.
    assert_eq!(
        s.fetch_with(&s.offline(), "hf://datasets/acme/refusals/README.md", &mut log).unwrap(),
        dir.join("README.md")
    );

    // Another revision is another snapshot.
    let old = s.fetch("hf://datasets/acme/refusals@v1", &mut log).unwrap();
    assert_eq!(walk(&old).keys().collect::<Vec<_>>(), ["data/train.csv"]);
}

#[test]
fn offline_without_the_cache_fails_clearly() {
    let s = Setup::new(None);
    for name in ["hf://datasets/acme/refusals/data/train.csv", "hf://datasets/acme/refusals"] {
        let err = format!("{:#}", s.fetch_with(&s.offline(), name, &mut vec![]).unwrap_err());
        assert!(err.contains(&format!("`{name}@main`")) && err.contains("`HF_HUB_OFFLINE`"), "{err}");
    }
    assert_eq!(s.server.hits(), 0);

    // A file fetched online does not make the whole repository available offline.
    s.fetch("hf://datasets/acme/refusals/data/train.csv", &mut vec![]).unwrap();
    let err = format!("{:#}", s.fetch_with(&s.offline(), "hf://datasets/acme/refusals", &mut vec![]).unwrap_err());
    assert!(err.contains("`HF_HUB_OFFLINE`"), "{err}");
}

#[test]
fn missing_files_and_repositories_are_named_never_the_token() {
    let s = Setup::new(Some(TOKEN));
    let name = "hf://datasets/acme/refusals/nope.csv";
    let err = format!("{:#}", s.fetch(name, &mut vec![]).unwrap_err());
    assert!(err.contains(&format!("`{name}@main`")) && err.contains("HTTP 404"), "{err}");
    assert!(err.contains("/datasets/acme/refusals/resolve/main/nope.csv"), "{err}");
    assert!(!err.contains(TOKEN), "{err}");
    // The token was sent.
    let auth = format!("Bearer {TOKEN}");
    assert!(s.server.requests().iter().all(|r| r.header("authorization") == Some(auth.as_str())));

    let err = format!("{:#}", s.fetch("hf://datasets/acme/nothing", &mut vec![]).unwrap_err());
    assert!(err.contains("`hf://datasets/acme/nothing@main`") && err.contains("HTTP 404"), "{err}");

    // A wrong token: 401, with a hint, and still not printed.
    let config = HfConfig { token: Some("hf_wrong_token".into()), ..s.config.clone() };
    let err = format!("{:#}", s.fetch_with(&config, "hf://datasets/acme/refusals/README.md", &mut vec![]).unwrap_err());
    assert!(err.contains("HTTP 401") && err.contains("`HF_TOKEN`") && !err.contains("hf_wrong_token"), "{err}");
    assert!(!format!("{config:?}").contains("hf_wrong_token"));

    // Nothing half-fetched is served as if it were there.
    assert!(!s.snapshot("datasets", MAIN).join("nope.csv").exists());
}

#[test]
fn models_too() {
    let s = Setup::new(None);
    let path = s.fetch("hf://models/acme/tiny/config.json", &mut vec![]).unwrap();
    assert_eq!(path, s.config.cache_dir.join(format!("models--acme--tiny/snapshots/{MAIN}/config.json")));
    assert_eq!(fs::read_to_string(path).unwrap(), "{\"layers\": 2}\n");
    assert!(s.server.requests().iter().any(|r| r.path == "/acme/tiny/resolve/main/config.json"));
    let dir = s.fetch("hf://models/acme/tiny", &mut vec![]).unwrap();
    assert_eq!(walk(&dir).keys().collect::<Vec<_>>(), ["config.json"]);
}

#[test]
fn configuration_from_the_environment() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("hf");
    let vars = |pairs: &[(&str, &str)]| {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        HfConfig::from_vars(|name| map.get(name).cloned()).unwrap()
    };

    let c = vars(&[("HOME", "/home/u")]);
    assert_eq!(c.endpoint, DEFAULT_ENDPOINT);
    assert_eq!(c.cache_dir, Path::new("/home/u/.cache/huggingface/hub"));
    assert_eq!((c.token, c.offline), (None, false));
    assert_eq!(vars(&[("HOME", "/home/u"), ("XDG_CACHE_HOME", "/x")]).cache_dir, Path::new("/x/huggingface/hub"));

    let hf_home = home.to_str().unwrap();
    let c = vars(&[("HF_HOME", hf_home), ("HF_ENDPOINT", "http://127.0.0.1:9/"), ("HF_HUB_OFFLINE", "1")]);
    assert_eq!((c.endpoint.as_str(), c.cache_dir.clone(), c.offline), ("http://127.0.0.1:9", home.join("hub"), true));
    assert_eq!(vars(&[("HF_HOME", hf_home), ("HF_HUB_CACHE", "/c")]).cache_dir, Path::new("/c"));
    for (value, offline) in [("true", true), ("ON", true), ("0", false), ("", false), ("no", false)] {
        assert_eq!(vars(&[("HF_HOME", hf_home), ("HF_HUB_OFFLINE", value)]).offline, offline, "{value}");
    }

    // The token: `HF_TOKEN`, else the stored one (`huggingface-cli login`).
    assert_eq!(vars(&[("HF_HOME", hf_home)]).token, None);
    fs::create_dir_all(&home).unwrap();
    fs::write(home.join("token"), "hf_stored\n").unwrap();
    assert_eq!(vars(&[("HF_HOME", hf_home)]).token.as_deref(), Some("hf_stored"));
    let c = vars(&[("HF_HOME", hf_home), ("HF_TOKEN", TOKEN)]);
    assert_eq!(c.token.as_deref(), Some(TOKEN));
    let debug = format!("{c:?}");
    assert!(!debug.contains(TOKEN) && debug.contains("<redacted>"), "{debug}");

    assert!(HfConfig::from_vars(|_| None).unwrap_err().to_string().contains("`HF_HOME`"));
}
