//! `http(s)://` inputs pinned by sha256: download once, verify, keep under the digest.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow};
use cache::ObjectDigest;
use sha2::{Digest as _, Sha256};

use super::human_bytes;

/// How hard to try: timeouts and retries. Tests shorten the waits; production uses [`Policy::default`].
#[derive(Clone, Debug)]
pub(super) struct Policy {
    /// Retries after the first attempt, for failures that may pass (connection errors, 5xx, 429).
    pub retries: u32,
    /// The wait before the first retry; it doubles before each further one.
    pub first_backoff: Duration,
    /// The limit on establishing a connection (DNS included).
    pub connect_timeout: Duration,
    /// The limit on a single read, so a stalled server fails instead of hanging a run.
    pub read_timeout: Duration,
    /// Whether to honour `HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY` (as `hf-hub` does). ureq 2 ignores `NO_PROXY`,
    /// so tests on loopback turn this off.
    pub proxy_from_env: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            retries: 3,
            first_backoff: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
            proxy_from_env: true,
        }
    }
}

/// Why one attempt failed, and whether another one may succeed.
enum Failure {
    /// Worth another attempt: the network or the server may recover.
    Transient(anyhow::Error),
    /// Another attempt would fail the same way (404, digest mismatch, local disk error).
    Permanent(anyhow::Error),
}

/// Returns `<downloads>/sha256/<hex>`, downloading `url` there first unless it is already there.
pub(super) fn fetch_url(
    url: &str,
    expected: &ObjectDigest,
    downloads: &Path,
    policy: &Policy,
    log: &mut dyn FnMut(&str),
) -> anyhow::Result<PathBuf> {
    let dir = downloads.join("sha256");
    let target = dir.join(expected.to_hex());
    // Only a verified file ever gets this name, so its presence is the whole check: no network, which is what
    // lets re-runs work offline.
    if target.is_file() {
        return Ok(target);
    }
    fs::create_dir_all(&dir).with_context(|| format!("cannot create the download cache `{}`", dir.display()))?;
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(policy.connect_timeout)
        .timeout_read(policy.read_timeout)
        .try_proxy_from_env(policy.proxy_from_env)
        .build();
    let mut attempt = 0;
    loop {
        match download(&agent, url, expected, &dir, &target, log) {
            Ok(()) => return Ok(target),
            Err(Failure::Transient(e)) if attempt < policy.retries => {
                let wait = policy.first_backoff * 2u32.pow(attempt);
                attempt += 1;
                log(&format!("{e:#}; retrying in {wait:.1?} ({attempt}/{})", policy.retries));
                std::thread::sleep(wait);
            }
            Err(Failure::Transient(e)) => {
                // The error itself names the URL.
                return Err(e.context(format!("gave up after {} attempts", attempt + 1)));
            }
            Err(Failure::Permanent(e)) => return Err(e),
        }
    }
}

/// One attempt: streams the body into a temp file in `dir` while hashing it, and renames it to `target` only if
/// the digest is `expected`. On any failure the temp file is removed (dropped), so nothing partial is kept.
fn download(
    agent: &ureq::Agent,
    url: &str,
    expected: &ObjectDigest,
    dir: &Path,
    target: &Path,
    log: &mut dyn FnMut(&str),
) -> Result<(), Failure> {
    use Failure::{Permanent, Transient};
    let response = match agent.get(url).call() {
        Ok(response) => response,
        Err(ureq::Error::Status(code, response)) => {
            let e = anyhow!("`{url}` answered HTTP {code} {}", response.status_text());
            return Err(if code >= 500 || code == 429 { Transient(e) } else { Permanent(e) });
        }
        Err(ureq::Error::Transport(t)) => {
            use ureq::ErrorKind as K;
            let permanent = matches!(
                t.kind(),
                K::InvalidUrl | K::UnknownScheme | K::InvalidProxyUrl | K::ProxyUnauthorized | K::TooManyRedirects
            );
            // Not `{t}`: that starts with the URL again.
            let mut why = t.kind().to_string();
            if let Some(message) = t.message() {
                why += &format!(": {message}");
            }
            if let Some(source) = std::error::Error::source(&t) {
                why += &format!(": {source}");
            }
            let e = anyhow!("cannot fetch `{url}`: {why}");
            return Err(if permanent { Permanent(e) } else { Transient(e) });
        }
    };
    let length: Option<u64> = response.header("Content-Length").and_then(|v| v.trim().parse().ok());
    match length {
        Some(n) => log(&format!("downloading {url} ({})", human_bytes(n))),
        None => log(&format!("downloading {url}")),
    }

    let local =
        |e: std::io::Error, what: &str| Permanent(anyhow!(e).context(format!("cannot {what} in `{}`", dir.display())));
    // In `dir` itself, so the final step is a rename within one filesystem; the dot keeps it from looking like
    // a finished download.
    let mut tmp = tempfile::Builder::new()
        .prefix(".download-")
        .suffix(".part")
        .tempfile_in(dir)
        .map_err(|e| local(e, "create a temporary file"))?;
    let mut reader = response.into_reader();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; cache::HASH_BUF];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Transient(anyhow!(e).context(format!("reading `{url}` failed after {total} bytes")))),
        };
        hasher.update(&buf[..n]);
        tmp.write_all(&buf[..n]).map_err(|e| local(e, "write"))?;
        total += n as u64;
    }
    if let Some(n) = length.filter(|&n| n != total) {
        return Err(Transient(anyhow!("`{url}` ended after {total} of {n} bytes")));
    }
    let actual = ObjectDigest::from_bytes(hasher.finalize().into());
    if actual != *expected {
        return Err(Permanent(anyhow!(
            "`{url}` does not match its pin: expected sha256 `{expected}`, got `{actual}` ({}); if the file changed \
             on purpose, update `sha256`",
            human_bytes(total)
        )));
    }

    // Durable before it is visible under its final name, as for the store's objects; read-only, since stages
    // read inputs in place.
    tmp.as_file().sync_all().map_err(|e| local(e, "sync a download"))?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o444)).map_err(|e| local(e, "chmod a download"))?;
    }
    tmp.persist(target).map_err(|e| local(e.error, "rename a download"))?;
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| local(e, "sync the directory"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::super::test_server::{Reply, Server};
    use super::*;

    fn quick() -> Policy {
        Policy {
            retries: 3,
            first_backoff: Duration::from_millis(5),
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(5),
            proxy_from_env: false,
        }
    }

    fn fetch(url: &str, pin: &ObjectDigest, downloads: &Path, log: &mut Vec<String>) -> anyhow::Result<PathBuf> {
        fetch_url(url, pin, downloads, &quick(), &mut |line| log.push(line.to_string()))
    }

    /// The names in `dir`, sorted, or nothing if it does not exist.
    fn listing(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = match fs::read_dir(dir) {
            Ok(entries) => entries.map(|e| e.unwrap().file_name().into_string().unwrap()).collect(),
            Err(_) => vec![],
        };
        names.sort();
        names
    }

    const BODY: &[u8] = b"prompt,refusal\nhello,no\n";

    fn serve_body() -> Server {
        Server::start(|req| match req.path.as_str() {
            "/x.csv" => Reply::ok(BODY.to_vec()),
            _ => Reply::status(404),
        })
    }

    #[test]
    fn downloads_verifies_and_then_stays_offline() {
        let server = serve_body();
        let tmp = tempfile::tempdir().unwrap();
        let url = format!("{}/x.csv", server.base);
        let pin = ObjectDigest::of_bytes(BODY);
        let mut log = vec![];

        let path = fetch(&url, &pin, tmp.path(), &mut log).unwrap();
        assert_eq!(path, tmp.path().join("sha256").join(pin.to_hex()));
        assert_eq!(fs::read(&path).unwrap(), BODY);
        assert!(fs::metadata(&path).unwrap().permissions().readonly());
        assert_eq!(log, [format!("downloading {url} (24 B)")]);
        assert_eq!(server.hits(), 1);
        // Only the finished download: the temp file was renamed, not left beside it.
        assert_eq!(listing(&tmp.path().join("sha256")), [pin.to_hex()]);

        // Second fetch: found by its pin, no request at all.
        let again = fetch(&url, &pin, tmp.path(), &mut log).unwrap();
        assert_eq!(again, path);
        assert_eq!(server.hits(), 1);
        assert_eq!(log.len(), 1);
    }

    #[test]
    fn a_wrong_pin_keeps_nothing() {
        let server = serve_body();
        let tmp = tempfile::tempdir().unwrap();
        let url = format!("{}/x.csv", server.base);
        let wrong = ObjectDigest::of_bytes(b"something else");
        let err = format!("{:#}", fetch(&url, &wrong, tmp.path(), &mut vec![]).unwrap_err());
        assert!(err.contains(&format!("`{url}`")), "{err}");
        assert!(err.contains(&wrong.to_hex()) && err.contains(&ObjectDigest::of_bytes(BODY).to_hex()), "{err}");
        assert!(listing(&tmp.path().join("sha256")).is_empty());
        // A mismatch is not retried: the same URL would serve the same bytes.
        assert_eq!(server.hits(), 1);
    }

    #[test]
    fn http_errors_name_the_url_and_status() {
        let server = serve_body();
        let tmp = tempfile::tempdir().unwrap();
        let url = format!("{}/missing.csv", server.base);
        let err = format!("{:#}", fetch(&url, &ObjectDigest::of_bytes(BODY), tmp.path(), &mut vec![]).unwrap_err());
        assert!(err.contains(&format!("`{url}`")) && err.contains("HTTP 404"), "{err}");
        assert_eq!(server.hits(), 1, "a 404 is not retried");
        assert!(listing(&tmp.path().join("sha256")).is_empty());
    }

    #[test]
    fn retries_server_errors_then_succeeds() {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        let server = Server::start(move |_| match seen.fetch_add(1, Ordering::SeqCst) {
            0 => Reply::status(503),
            1 => Reply::status(429),
            _ => Reply::ok(BODY.to_vec()),
        });
        let tmp = tempfile::tempdir().unwrap();
        let url = format!("{}/x.csv", server.base);
        let mut log = vec![];
        let path = fetch(&url, &ObjectDigest::of_bytes(BODY), tmp.path(), &mut log).unwrap();
        assert_eq!(fs::read(path).unwrap(), BODY);
        assert_eq!(server.hits(), 3);
        assert!(log[0].contains("HTTP 503") && log[0].contains("retrying") && log[0].contains("(1/3)"), "{log:?}");
        assert!(log[1].contains("HTTP 429") && log[1].contains("(2/3)"), "{log:?}");
    }

    #[test]
    fn gives_up_after_the_retries() {
        let server = Server::start(|_| Reply::status(500));
        let tmp = tempfile::tempdir().unwrap();
        let url = format!("{}/x.csv", server.base);
        let err = format!("{:#}", fetch(&url, &ObjectDigest::of_bytes(BODY), tmp.path(), &mut vec![]).unwrap_err());
        assert!(err.contains("gave up after 4 attempts") && err.contains("HTTP 500"), "{err}");
        assert_eq!(server.hits(), 4);

        // Nobody listening: a connection error, retried the same way.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url = format!("http://127.0.0.1:{port}/x.csv");
        let mut log = vec![];
        let err = format!("{:#}", fetch(&url, &ObjectDigest::of_bytes(BODY), tmp.path(), &mut log).unwrap_err());
        assert!(err.contains("gave up after 4 attempts") && err.contains(&url), "{err}");
        assert_eq!(log.len(), 3, "{log:?}");
    }

    #[test]
    fn a_truncated_body_is_retried() {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        let server = Server::start(move |_| {
            let mut reply = Reply::ok(BODY.to_vec());
            if seen.fetch_add(1, Ordering::SeqCst) == 0 {
                reply.truncate_to = Some(5);
            }
            reply
        });
        let tmp = tempfile::tempdir().unwrap();
        let url = format!("{}/x.csv", server.base);
        let path = fetch(&url, &ObjectDigest::of_bytes(BODY), tmp.path(), &mut vec![]).unwrap();
        assert_eq!(fs::read(path).unwrap(), BODY);
        assert_eq!(server.hits(), 2);
    }
}
