//! The statistics the summaries report (Wilson intervals, length order statistics, the standard error and seeded
//! percentile bootstrap of a mean), which live in the shared `stats` crate so that the LLM judges and the report
//! compute them the same way. Re-exported here so `judge_rules::stats::…` keeps its meaning.

pub use ::stats::{
    Describe, SplitMix64, Z_95, bootstrap_means, describe, percentile_interval, standard_error, wilson_95,
    wilson_interval,
};
