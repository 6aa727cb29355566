//! The item cache: every answer received, appended to a JSONL file in the stage's scratch directory, which rto
//! keeps between attempts of the same action (and deletes once the action succeeds). A judging stage that
//! crashed, was killed or was cancelled resumes without asking the judge again for what it already answered.
//!
//! Each line is `{"answer": …, "key": …, "v": 1}`, written with one `write` call and made durable (flush +
//! fsync) before the item counts as done. The key is the sha256 of the exact request body (which holds no
//! secret), so a line can only ever answer the request it was made for. A kill in the middle of a write leaves
//! a torn last line without its newline: opening the cache drops it (truncating the file back to the last
//! complete line, so the next append starts on a fresh line). A complete line that does not parse (a disk that
//! lied) is skipped and its request asked again.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::client::Answer;

/// Version of the line format; lines of another version are ignored.
const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Line {
    answer: Answer,
    key: String,
    v: u32,
}

/// The cache key of a request body: sha256 of its JSON text.
pub(crate) fn request_key(body: &serde_json::Value) -> String {
    hex::encode(Sha256::digest(serde_json::to_vec(body).expect("a JSON value serialises")))
}

/// An open item cache, appendable from several threads.
pub(crate) struct ItemCache {
    file: Mutex<File>,
    path: PathBuf,
}

/// What opening found.
pub(crate) struct Loaded {
    /// Answers by request key.
    pub answers: BTreeMap<String, Answer>,
    /// Bytes of a torn last line that were dropped.
    pub torn_bytes: usize,
    /// Complete lines that did not parse and were skipped.
    pub bad_lines: usize,
}

impl ItemCache {
    /// Opens (creating) the cache at `path` and reads what it holds.
    pub fn open(path: &Path) -> Result<(ItemCache, Loaded), String> {
        let at = |e: std::io::Error| format!("item cache `{}`: {e}", path.display());
        let mut file = OpenOptions::new().read(true).append(true).create(true).open(path).map_err(at)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(at)?;
        let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let torn_bytes = bytes.len() - complete;
        if torn_bytes > 0 {
            file.set_len(complete as u64).map_err(at)?;
            file.sync_data().map_err(at)?;
        }
        let mut answers = BTreeMap::new();
        let mut bad_lines = 0;
        for line in bytes[..complete].split(|b| *b == b'\n') {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice::<Line>(line) {
                Ok(l) if l.v == VERSION => {
                    answers.insert(l.key, l.answer);
                }
                _ => bad_lines += 1,
            }
        }
        let cache = ItemCache { file: Mutex::new(file), path: path.to_path_buf() };
        Ok((cache, Loaded { answers, torn_bytes, bad_lines }))
    }

    /// Appends one answer and makes it durable.
    pub fn append(&self, key: &str, answer: &Answer) -> Result<(), String> {
        let line = Line { answer: answer.clone(), key: key.to_string(), v: VERSION };
        let mut text = serde_json::to_vec(&line).map_err(|e| format!("internal: {e}"))?;
        text.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let at = |e: std::io::Error| format!("item cache `{}`: {e}", self.path.display());
        // O_APPEND and one write: concurrent appends cannot interleave within a line.
        file.write_all(&text).map_err(at)?;
        file.flush().map_err(at)?;
        file.sync_data().map_err(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(text: &str) -> Answer {
        Answer { content: Some(text.into()), finish_reason: Some("stop".into()), logprobs: None, model: None }
    }

    #[test]
    fn answers_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("items.jsonl");
        let (cache, loaded) = ItemCache::open(&path).unwrap();
        assert!(loaded.answers.is_empty());
        cache.append("k1", &answer("one")).unwrap();
        cache.append("k2", &answer("two")).unwrap();
        drop(cache);
        let (_, loaded) = ItemCache::open(&path).unwrap();
        assert_eq!(loaded.answers.len(), 2);
        assert_eq!(loaded.answers["k2"], answer("two"));
        assert_eq!((loaded.torn_bytes, loaded.bad_lines), (0, 0));
    }

    #[test]
    fn a_torn_last_line_is_dropped_and_the_next_append_starts_a_fresh_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("items.jsonl");
        let (cache, _) = ItemCache::open(&path).unwrap();
        cache.append("k1", &answer("one")).unwrap();
        drop(cache);
        // Every possible tear of a second line.
        let whole = std::fs::read(&path).unwrap();
        let second = {
            let line = Line { answer: answer("two"), key: "k2".into(), v: VERSION };
            serde_json::to_vec(&line).unwrap()
        };
        for cut in 1..second.len() {
            let mut bytes = whole.clone();
            bytes.extend_from_slice(&second[..cut]);
            std::fs::write(&path, &bytes).unwrap();
            let (cache, loaded) = ItemCache::open(&path).unwrap();
            assert_eq!(loaded.answers.keys().collect::<Vec<_>>(), ["k1"], "cut {cut}");
            assert_eq!(loaded.torn_bytes, cut);
            assert_eq!(std::fs::read(&path).unwrap(), whole, "truncated back, cut {cut}");
            cache.append("k3", &answer("three")).unwrap();
            drop(cache);
            let (_, loaded) = ItemCache::open(&path).unwrap();
            assert_eq!(loaded.answers.keys().collect::<Vec<_>>(), ["k1", "k3"], "cut {cut}");
            assert_eq!((loaded.torn_bytes, loaded.bad_lines), (0, 0));
            std::fs::write(&path, &whole).unwrap();
        }
    }

    #[test]
    fn garbage_lines_are_skipped_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("items.jsonl");
        let good = serde_json::to_string(&Line { answer: answer("x"), key: "k".into(), v: VERSION }).unwrap();
        let other_version = good.replace("\"v\":1", "\"v\":99");
        std::fs::write(&path, format!("not json\n\n{{\"key\":3}}\n{other_version}\n{good}\n")).unwrap();
        let (_, loaded) = ItemCache::open(&path).unwrap();
        assert_eq!(loaded.answers.len(), 1);
        assert_eq!(loaded.bad_lines, 3);
    }

    #[test]
    fn concurrent_appends_do_not_interleave() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("items.jsonl");
        let (cache, _) = ItemCache::open(&path).unwrap();
        let long = "x".repeat(100_000);
        std::thread::scope(|s| {
            for t in 0..4 {
                let (cache, long) = (&cache, &long);
                s.spawn(move || {
                    for i in 0..10 {
                        cache.append(&format!("{t}-{i}"), &answer(long)).unwrap();
                    }
                });
            }
        });
        drop(cache);
        let (_, loaded) = ItemCache::open(&path).unwrap();
        assert_eq!((loaded.answers.len(), loaded.bad_lines), (40, 0));
    }

    #[test]
    fn the_key_is_the_digest_of_the_body() {
        let a = request_key(&serde_json::json!({"model": "j", "messages": []}));
        assert_eq!(a.len(), 64);
        assert_eq!(a, request_key(&serde_json::json!({"model": "j", "messages": []})));
        assert_ne!(a, request_key(&serde_json::json!({"model": "k", "messages": []})));
    }
}
