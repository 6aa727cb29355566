//! The `rto` binary.

use clap::Parser;

/// First-party plugins linked into the binary (the `builtin-plugins` feature, on by default): they run
/// through the same descriptor as a loaded library, so `cargo run` works with no extra build step.
#[cfg(feature = "builtin-plugins")]
const LINKED: &[orchestrator::plugin::LinkedPlugin] =
    &[judge_rules::descriptor, judge_openai::descriptor, candle_lm::descriptor];
#[cfg(not(feature = "builtin-plugins"))]
const LINKED: &[orchestrator::plugin::LinkedPlugin] = &[];

fn main() -> std::process::ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RTO_LOG").unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    orchestrator::cli::main(orchestrator::cli::Cli::parse(), LINKED)
}
