//! A well-behaved test plugin whose ops misbehave on request: `copy` (the normal case), `fail`, `panic`,
//! `abort`, `sleep` (until cancelled) and `exit` (the process exits under the host's feet); and `generate`, an
//! echo for `rto serve`'s session mechanics: it answers `echo <n>: <last message>`, where `n` counts the calls
//! this instance has served (so a test sees whether the instance survived), aborts the process when the
//! message is `abort`, and first sleeps N ms when it is `sleep N`.

use api::{Backend, Error, Kind, OpContext};

/// The fixture back-end.
pub struct Fixture {
    generated: u64,
}

impl Backend for Fixture {
    const NAME: &'static str = "fixture";
    const VERSION: &'static str = "0.1.0";
    const KIND: Kind = Kind::Judge;

    fn ops() -> Vec<api::protocol::OpInfo> {
        ["copy", "fail", "panic", "abort", "sleep", "generate"].iter().map(|o| api::op(o, "a fixture op")).collect()
    }

    fn create(_: &serde_json::Value) -> Result<Self, Error> {
        Ok(Fixture { generated: 0 })
    }

    fn validate(&self, op: &str, params: &serde_json::Value, inputs: &[String]) -> Result<(), Error> {
        if let Some(t) = params.get("times")
            && !t.is_u64()
        {
            return Err(Error::param(&["times"], "`times` must be a whole number, e.g. `times = 2`"));
        }
        if op == "copy" && !inputs.iter().any(|i| i == "in") {
            return Err(Error::param(&[], "`copy` needs an input named `in`"));
        }
        Ok(())
    }

    fn invoke(&mut self, op: &str, ctx: &mut OpContext<'_>) -> Result<serde_json::Value, Error> {
        match op {
            "copy" => {
                let times = ctx.params.get("times").and_then(|t| t.as_u64()).unwrap_or(1);
                let text = std::fs::read_to_string(ctx.input("in")?)?;
                ctx.log(&format!("copying {} bytes {times} times", text.len()));
                ctx.progress(1, 1);
                std::fs::write(ctx.out_dir.join("copy.txt"), text.repeat(times as usize))?;
                Ok(serde_json::json!({"bytes": text.len() as u64 * times}))
            }
            "fail" => Err(Error::Failed("the fixture failed on purpose".into())),
            "panic" => panic!("the fixture panicked on purpose"),
            "abort" => std::process::abort(),
            "generate" => {
                let p = ctx.params;
                let last = p["messages"].as_array().and_then(|m| m.last()).map(|m| &m["content"]);
                let text = last.or(p.get("prompt")).and_then(|t| t.as_str()).unwrap_or_default();
                if text == "abort" {
                    std::process::abort();
                }
                if let Some(ms) = text.strip_prefix("sleep ").and_then(|ms| ms.parse::<u64>().ok()) {
                    std::thread::sleep(std::time::Duration::from_millis(ms));
                }
                // Like a progress bar in some library: stdout, no newline. The worker keeps stdout for its
                // protocol, so this must end up in the log and leave the answer intact.
                print!("fixture: generating\r");
                use std::io::Write as _;
                let _ = std::io::stdout().flush();
                self.generated += 1;
                let answer = format!("echo {}: {text}", self.generated);
                let words = answer.split_whitespace().count() as u64;
                Ok(serde_json::json!({
                    "text": answer, "finish_reason": "stop", "prompt_tokens": 1, "completion_tokens": words
                }))
            }
            _ => {
                ctx.log("sleeping until cancelled");
                while !ctx.cancelled() {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(Error::Cancelled)
            }
        }
    }
}

api::export_plugin!(Fixture);
