//! Progress on stderr: one bar per running stage when stderr is a terminal, plain lines otherwise.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::summary::{Status, format_ms};

/// The run's live display.
pub struct Ui {
    enabled: bool,
    tty: bool,
    multi: MultiProgress,
    bars: HashMap<usize, ProgressBar>,
}

impl Ui {
    /// A display on stderr; silent when `enabled` is false.
    pub fn new(enabled: bool) -> Ui {
        let tty = enabled && std::io::stderr().is_terminal();
        let target = if tty { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
        Ui { enabled, tty, multi: MultiProgress::with_draw_target(target), bars: HashMap::new() }
    }

    /// Prints a line above the bars.
    pub fn line(&self, text: &str) {
        if !self.enabled {
            return;
        }
        if self.tty {
            let _ = self.multi.println(text);
        } else {
            eprintln!("{text}");
        }
    }

    /// A stage started; `on` says where, for stages handed to a cluster (`job 4211 after a`).
    pub fn start(&mut self, i: usize, id: &str, uses: &str, on: Option<&str>) {
        match on {
            None => self.line(&format!("{:>12} {id} ({uses})", "Running")),
            Some(on) => self.line(&format!("{:>12} {id} ({uses}) as {on}", "Submitted")),
        }
        if self.tty {
            let bar = self.multi.add(ProgressBar::new_spinner());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {prefix:.bold} {elapsed:>5} {msg}").expect("valid template"),
            );
            bar.set_prefix(id.to_string());
            bar.enable_steady_tick(Duration::from_millis(120));
            self.bars.insert(i, bar);
        }
    }

    /// A stage reported progress.
    pub fn progress(&mut self, i: usize, done: u64, total: u64) {
        if let Some(bar) = self.bars.get(&i) {
            let pct = done.saturating_mul(100).checked_div(total).unwrap_or(0);
            bar.set_message(format!("{done}/{total} ({pct}%)"));
        }
    }

    /// News about a running stage from its executor: a line, and the bar's message.
    pub fn status(&mut self, i: usize, id: &str, text: &str) {
        if let Some(bar) = self.bars.get(&i) {
            bar.set_message(text.to_string());
        }
        self.line(&format!("{:>12} {id}: {text}", "Slurm"));
    }

    /// A stage finished; `on` says where it ran, if not here.
    pub fn finish(&mut self, i: usize, id: &str, status: Status, duration_ms: Option<u64>, on: Option<&str>) {
        if let Some(bar) = self.bars.remove(&i) {
            bar.finish_and_clear();
        }
        let word = match status {
            Status::Ran => "Finished",
            Status::CutOff => "Cut off",
            _ => "Cached",
        };
        let time = match (duration_ms, status) {
            (Some(ms), _) => format!(" in {}", format_ms(ms)),
            (None, Status::CutOff) => " (its inputs did not change)".into(),
            (None, _) => " (done by another run)".into(),
        };
        let on = on.map(|o| format!(" ({o})")).unwrap_or_default();
        self.line(&format!("{word:>12} {id}{time}{on}"));
    }

    /// A stage failed: the error and its log's tail.
    pub fn fail(&mut self, i: usize, id: &str, error: &str, log_tail: &str, log: Option<&std::path::Path>) {
        if let Some(bar) = self.bars.remove(&i) {
            bar.finish_and_clear();
        }
        let mut text = format!("{:>12} {id}: {error}", "FAILED");
        if !log_tail.trim().is_empty() {
            text.push_str("\n  --- log tail ---");
            for l in log_tail.lines() {
                text.push_str("\n  ");
                text.push_str(l);
            }
        }
        if let Some(log) = log {
            text.push_str(&format!("\n  full log: {}", log.display()));
        }
        self.line(&text);
    }

    /// Removes all bars.
    pub fn clear(&mut self) {
        for (_, bar) in self.bars.drain() {
            bar.finish_and_clear();
        }
        let _ = self.multi.clear();
    }
}
