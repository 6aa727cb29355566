//! What a cell shows: which judge summary field holds the value and its interval, which judge protocols give it,
//! and how it is written.

use serde::{Deserialize, Serialize};

/// The kind of a table cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Win rate of `a` over `b` (ties count half): pairwise judges and `judge-rules:pairwise-correctness`.
    WinRate,
    /// AlpacaEval's length-controlled win rate of `a` over `b`.
    LcWinRate,
    /// Share of responses judged refusals.
    Refusal,
    /// Share of responses judged correct by exact match.
    Accuracy,
    /// Mean 1–10 rating of a single-answer judge.
    Rating,
}

/// Every kind, in the order messages list them.
const ALL: [Kind; 5] = [Kind::WinRate, Kind::LcWinRate, Kind::Refusal, Kind::Accuracy, Kind::Rating];

impl Kind {
    /// The name a study writes.
    pub fn name(self) -> &'static str {
        match self {
            Kind::WinRate => "win-rate",
            Kind::LcWinRate => "lc-win-rate",
            Kind::Refusal => "refusal",
            Kind::Accuracy => "accuracy",
            Kind::Rating => "rating",
        }
    }

    /// The kind a study names, if any.
    pub fn from_name(name: &str) -> Option<Kind> {
        ALL.into_iter().find(|k| k.name() == name)
    }

    /// The valid names, for messages.
    pub fn names() -> String {
        ALL.iter().map(|k| format!("`{}`", k.name())).collect::<Vec<_>>().join(", ")
    }

    /// The summary field holding the value.
    pub fn field(self) -> &'static str {
        match self {
            Kind::WinRate => "win_rate_a",
            Kind::LcWinRate => "lc_win_rate_a",
            Kind::Refusal => "refusal_rate",
            Kind::Accuracy => "accuracy",
            Kind::Rating => "mean_rating",
        }
    }

    /// The summary field holding its 95% interval `[lo, hi]`.
    pub fn interval_field(self) -> &'static str {
        match self {
            Kind::WinRate => "win_rate_a_ci_95",
            Kind::LcWinRate => "lc_win_rate_a_ci_95",
            Kind::Refusal | Kind::Accuracy => "wilson_95",
            Kind::Rating => "rating_ci_95",
        }
    }

    /// The judge protocols (the summary's `protocol` field) whose summaries carry this kind's fields.
    pub fn protocols(self) -> &'static [&'static str] {
        match self {
            Kind::WinRate => &["alpaca-eval", "pairwise", "pairwise-correctness"],
            Kind::LcWinRate => &["alpaca-eval", "pairwise"],
            Kind::Refusal => &["refusal"],
            Kind::Accuracy => &["exact-match"],
            Kind::Rating => &["single"],
        }
    }

    /// Whether values are fractions shown as percent (else ratings shown as they are).
    pub fn percent(self) -> bool {
        self != Kind::Rating
    }

    /// A column header for a table with one column.
    pub fn label(self) -> &'static str {
        match self {
            Kind::WinRate => "Win rate",
            Kind::LcWinRate => "LC win rate",
            Kind::Refusal => "Refusal rate",
            Kind::Accuracy => "Accuracy",
            Kind::Rating => "Mean rating",
        }
    }

    /// What the number is, for the line under a table.
    pub fn meaning(self) -> &'static str {
        match self {
            Kind::WinRate => "win rate: how often the first model's response is preferred, ties counting half",
            Kind::LcWinRate => "LC win rate: AlpacaEval's length-controlled win rate of the first model",
            Kind::Refusal => "refusal rate: share of responses judged refusals",
            Kind::Accuracy => "accuracy: share of responses matching the reference",
            Kind::Rating => "mean rating: the judge's 1–10 score, averaged",
        }
    }
}
