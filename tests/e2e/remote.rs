//! Remote inputs: a URL pinned by sha256, served by a real HTTP server on loopback.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::support::Project;

/// Serves `body` at every path on 127.0.0.1 until the test process ends; counts requests.
fn serve(body: &'static [u8]) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            counter.fetch_add(1, Ordering::SeqCst);
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let mut s = stream;
            let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = s.write_all(body);
        }
    });
    (format!("http://{addr}/data.jsonl"), hits)
}

const DATA: &[u8] = b"{\"prompt\": \"Say hi.\", \"response\": \"Hi!\"}\n";

#[test]
fn a_pinned_url_is_downloaded_once_and_keyed_by_content() {
    let (url, hits) = serve(DATA);
    let sha = cache::ObjectDigest::of_bytes(DATA).to_hex();
    let study = format!(
        "[[stage]]\nid = \"d\"\nuses = \"dataset\"\ninputs = {{ x = {{ url = \"{url}\", sha256 = \"{sha}\" }} }}\nparams = {{ mode = \"it\", sources = [{{ input = \"x\", preset = \"generic\" }}] }}\n"
    );
    let p = Project::new(&study, &[]);
    let plan = p.plan();
    assert_eq!(plan.with_status("will-run"), ["d"]);
    assert!(plan.stdout.contains("input-not-fetched"), "{}", plan.stdout);
    assert_eq!(hits.load(Ordering::SeqCst), 0, "planning never downloads");

    p.run(&[]);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert!(p.read("results/study/d/train.jsonl").contains("Hi!"));
    assert_eq!(p.run(&[]).with_status("cached"), ["d"]);
    assert_eq!(hits.load(Ordering::SeqCst), 1, "a downloaded input is not fetched again");

    // A wrong pin fails before anything runs, names the URL, and keeps nothing.
    p.edit_study(&sha, &"0".repeat(64));
    let out = p.rto(&["run", "study.toml"]).expect_code(2);
    assert!(out.stderr.contains(&url) && out.stderr.contains(&sha), "{}", out.stderr);
}
