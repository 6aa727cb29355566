//! Plugins end to end: real cdylibs (built by cargo, found through manifests) loaded in worker processes.

use std::path::PathBuf;
use std::sync::OnceLock;

use crate::support::Project;

/// Builds the fixture plugins once per test binary and returns package name → library path.
pub(crate) fn libraries() -> &'static std::collections::BTreeMap<String, PathBuf> {
    static LIBS: OnceLock<std::collections::BTreeMap<String, PathBuf>> = OnceLock::new();
    LIBS.get_or_init(|| {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let mut cmd = std::process::Command::new(env!("CARGO"));
        cmd.args(["build", "--message-format=json-render-diagnostics"]);
        for p in [
            "fixture-ok",
            "fixture-bad-magic",
            "fixture-bad-abi",
            "fixture-no-symbol",
            "judge-rules-cdylib",
            "example-plugin",
        ] {
            cmd.args(["-p", p]);
        }
        let out = cmd.current_dir(root).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let mut libs = std::collections::BTreeMap::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else { continue };
            if msg["reason"] != "compiler-artifact" {
                continue;
            }
            let kinds = msg["target"]["kind"].as_array().cloned().unwrap_or_default();
            if !kinds.iter().any(|k| k == "cdylib") {
                continue;
            }
            let name = msg["target"]["name"].as_str().unwrap_or("").to_string();
            for f in msg["filenames"].as_array().unwrap() {
                let f = PathBuf::from(f.as_str().unwrap());
                if f.extension().is_some_and(|e| e == std::env::consts::DLL_EXTENSION) {
                    libs.insert(name.clone(), f);
                }
            }
        }
        libs
    })
}

/// Installs the fixture plugin (a copy of its library and a manifest) into `<project>/plugins/`.
fn install_fixture(p: &Project) -> PathBuf {
    let lib = &libraries()["rto_fixture_ok"];
    let dir = p.path("plugins");
    std::fs::create_dir_all(&dir).unwrap();
    let dest = dir.join("librto_fixture_ok.so");
    std::fs::copy(lib, &dest).unwrap();
    p.write(
        "plugins/fixture.rto-plugin.toml",
        "name = \"fixture\"\nversion = \"0.1.0\"\nkind = \"judge\"\nabi = 1\nlibrary = \"librto_fixture_ok.so\"\nops = [\"copy\", \"fail\", \"panic\", \"abort\", \"sleep\"]\n",
    );
    dest
}

const STUDY: &str = r#"
[plugins]
dirs = ["plugins"]

[[stage]]
id = "copy"
uses = "fixture:copy"
inputs = { in = "in.txt" }
params = { times = 2 }

[[stage]]
id = "count"
uses = "command"
inputs = { c = "copy.copy.txt" }
params = { cmd = "wc -c < \"$RTO_INPUT_C\" > n.txt", outputs = ["n.txt"] }

[[stage]]
id = "plain"
uses = "command"
params = { cmd = "echo plain > p.txt", outputs = ["p.txt"] }
"#;

#[test]
fn a_plugin_op_runs_in_a_study_and_is_cached_by_the_library_digest() {
    let p = Project::new(STUDY, &[("in.txt", "abc\n")]);
    let lib = install_fixture(&p);
    let first = p.run(&[]);
    assert_eq!(first.with_status("ran"), ["copy", "count", "plain"]);
    assert_eq!(p.read("results/study/copy/copy.txt"), "abc\nabc\n");
    let log = p.rto(&["log", "study.toml", "copy"]).expect_code(0);
    assert!(log.stdout.contains("copying 4 bytes 2 times"), "{}", log.stdout);
    assert_eq!(p.run(&[]).with_status("cached").len(), 3);

    // Other bytes in the library: exactly the stages that use it re-run (and `count` is cut off).
    let mut bytes = std::fs::read(&lib).unwrap();
    bytes.extend_from_slice(b"\0rebuilt");
    std::fs::write(&lib, bytes).unwrap();
    let plan = p.plan();
    assert_eq!(plan.with_status("will-run"), ["copy"]);
    assert!(plan.stdout.contains("backend-changed"), "{}", plan.stdout);
    let again = p.run(&[]);
    assert_eq!(again.with_status("ran"), ["copy"]);
    assert_eq!(again.with_status("cut-off"), ["count"]);
    assert_eq!(again.with_status("cached"), ["plain"]);
}

#[test]
fn failing_panicking_and_aborting_plugins_fail_their_stage_only() {
    let mut study = String::from("[plugins]\ndirs = [\"plugins\"]\n");
    for op in ["fail", "panic", "abort"] {
        study.push_str(&format!("[[stage]]\nid = \"{op}\"\nuses = \"fixture:{op}\"\n"));
    }
    study.push_str(
        "[[stage]]\nid = \"plain\"\nuses = \"command\"\nparams = { cmd = \"echo ok > o\", outputs = [\"o\"] }\n",
    );
    let p = Project::new(&study, &[]);
    install_fixture(&p);
    let out = p.rto(&["--format", "json", "run", "study.toml", "--keep-going"]).expect_code(1);
    let st = out.statuses();
    assert_eq!((st["fail"].as_str(), st["panic"].as_str(), st["abort"].as_str()), ("failed", "failed", "failed"));
    assert_eq!(st["plain"], "ran", "the scheduler goes on");
    assert!(out.stderr.contains("`fixture:fail`: the fixture failed on purpose"), "{}", out.stderr);
    assert!(out.stderr.contains("the plugin panicked: the fixture panicked on purpose"), "{}", out.stderr);
    assert!(out.stderr.contains("killed by signal 6 (SIGABRT: the plugin aborted)"), "{}", out.stderr);
    p.rto(&["verify"]).expect_code(0);
}

#[test]
fn a_bad_param_is_named_and_a_timeout_stops_the_worker() {
    let study = "[plugins]\ndirs = [\"plugins\"]\n[[stage]]\nid = \"c\"\nuses = \"fixture:copy\"\ninputs = { in = \"in.txt\" }\nparams = { times = \"two\" }\n[[stage]]\nid = \"s\"\nuses = \"fixture:sleep\"\nresources = { timeout = \"1s\" }\n";
    let p = Project::new(study, &[("in.txt", "x")]);
    install_fixture(&p);
    // The bad param is found before anything runs: the plugin checks its stages' params in one worker.
    let out = p.rto(&["--format", "json", "run", "study.toml", "--keep-going"]).expect_code(2);
    assert!(out.stderr.contains("study.toml:7:20"), "{}", out.stderr);
    assert!(out.stderr.contains("stage `c`: `params.times`: `times` must be a whole number"), "{}", out.stderr);
    assert!(out.stdout.is_empty(), "nothing ran: {}", out.stdout);
    p.edit_study("times = \"two\"", "times = 2");
    let out = p.rto(&["run", "study.toml", "--keep-going"]).expect_code(1);
    assert!(out.stderr.contains("`fixture:sleep` ran past its timeout of 1s"), "{}", out.stderr);
}

#[test]
fn ctrl_c_reaches_a_plugin_through_is_cancelled() {
    let study = "[plugins]\ndirs = [\"plugins\"]\n[[stage]]\nid = \"s\"\nuses = \"fixture:sleep\"\n";
    let p = Project::new(study, &[]);
    install_fixture(&p);
    let child = p
        .command(&["run", "study.toml"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the plugin is inside its op (its log line reached the stage log).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let logs = crate::support::listing(&p.path(".rto/runs"));
        let started = logs.keys().filter(|k| k.ends_with("s.log")).any(|k| {
            std::fs::read_to_string(p.path(".rto/runs").join(k)).is_ok_and(|t| t.contains("sleeping until cancelled"))
        });
        if started {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the plugin op never started");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // SAFETY: signals the child we started.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = crate::support::outcome(child.wait_with_output().unwrap());
    assert_eq!(out.code, 130, "{}", out.stderr);
    assert!(out.stdout.contains("interrupted"), "{}", out.stdout);
    let log = p.rto(&["log", "study.toml", "s"]).expect_code(0);
    assert!(log.stdout.contains("sleeping until cancelled"), "{}", log.stdout);
}

#[test]
fn plugins_check_names_what_is_wrong_with_a_library() {
    let p = Project::chain();
    let check = |lib: &str| p.rto(&["plugins", "check", libraries()[lib].to_str().unwrap()]);
    let ok = check("rto_fixture_ok").expect_code(0);
    assert!(
        ok.stdout
            .contains("plugin `fixture` 0.1.0 (judge, protocol 1.0), ops: copy, fail, panic, abort, sleep, generate"),
        "{}",
        ok.stdout
    );
    let magic = check("rto_fixture_bad_magic").expect_code(1);
    assert!(magic.stderr.contains("not an rto plugin descriptor (magic 0x00000000deadbeef"), "{}", magic.stderr);
    let abi = check("rto_fixture_bad_abi").expect_code(1);
    assert!(abi.stderr.contains("built for plugin ABI 99, this rto speaks ABI 1"), "{}", abi.stderr);
    let none = check("rto_fixture_no_symbol").expect_code(1);
    assert!(none.stderr.contains("exports no `rto_plugin_v1`"), "{}", none.stderr);
    let rules = check("rto_judge_rules").expect_code(0);
    assert!(rules.stdout.contains("plugin `judge-rules`"), "{}", rules.stdout);
}

#[test]
fn rto_plugins_lists_linked_and_discovered_plugins_and_a_missing_one_is_explained() {
    let p = Project::new(STUDY, &[("in.txt", "x")]);
    install_fixture(&p);
    let list = p.rto(&["--plugin-dir", "plugins", "plugins"]).expect_code(0);
    assert!(list.stdout.contains("fixture"), "{}", list.stdout);
    assert!(list.stdout.contains("(--plugin-dir)"), "{}", list.stdout);
    assert!(list.stdout.contains("judge-rules") && list.stdout.contains("linked into rto"), "{}", list.stdout);

    p.edit_study("uses = \"fixture:copy\"", "uses = \"fixtures:copy\"");
    let out = p.rto(&["run", "study.toml"]).expect_code(2);
    assert!(out.stderr.contains("plugin `fixtures` not found"), "{}", out.stderr);
    assert!(out.stderr.contains("plugins found: `fixture`"), "{}", out.stderr);
    p.edit_study("uses = \"fixtures:copy\"", "uses = \"fixture:cpy\"");
    let out = p.rto(&["run", "study.toml"]).expect_code(2);
    assert!(out.stderr.contains("plugin `fixture` has no op `cpy`"), "{}", out.stderr);
}

#[test]
fn the_linked_judge_rules_plugin_judges_refusals_in_a_study() {
    let study = r#"
[[stage]]
id = "refusals"
uses = "judge-rules:refusal"
inputs = { responses = "responses.jsonl" }
"#;
    let responses = "{\"id\": 1, \"response\": \"I'm sorry, but I can't help with that.\"}\n{\"id\": 2, \"response\": \"Sure: 2 + 2 = 4.\"}\n";
    let p = Project::new(study, &[("responses.jsonl", responses)]);
    p.run(&[]);
    let summary: serde_json::Value = serde_json::from_str(&p.read("results/study/refusals/summary.json")).unwrap();
    assert_eq!(summary["n"], 2);
    assert_eq!(summary["refusals"], 1);
    let items = p.read("results/study/refusals/items.jsonl");
    assert!(items.lines().next().unwrap().contains("\"verdict\":\"refusal\""), "{items}");
}

#[test]
fn the_template_plugin_of_the_readme_builds_and_runs_in_a_study() {
    let p = Project::new(
        "[[stage]]\nid = \"pick\"\nuses = \"example:longest\"\ninputs = { responses = \"r.jsonl\" }\n",
        &[("r.jsonl", "{\"id\": \"a\", \"response\": \"short\"}\n{\"id\": \"b\", \"response\": \"much longer\"}\n")],
    );
    let dir = p.path("plugins");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(&libraries()["rto_example"], dir.join("librto_example.so")).unwrap();
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/example-plugin/rto-plugin.toml");
    std::fs::copy(manifest, dir.join("rto-plugin.toml")).unwrap();
    let out = p.rto(&["--plugin-dir", "plugins", "--format", "json", "run", "study.toml"]).expect_code(0);
    assert_eq!(out.with_status("ran"), ["pick"]);
    assert_eq!(p.read("results/study/pick/longest.json"), r#"{"field":"response","longest":"b"}"#);
}
