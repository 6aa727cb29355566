//! The rto orchestrator: studies → DAG → action keys → cache → executors.
//!
//! See ARCHITECTURE.md at the repository root for the map.

// Study errors carry a source snippet and labels; they are built once on a cold path, so their size does not matter.
#![allow(clippy::result_large_err)]

pub mod backend;
pub mod builtin;
pub mod cli;
pub mod exec;
pub mod plan;
pub mod plugin;
pub mod remote;
pub mod render;
pub mod serve;
pub mod study;
pub mod summary;
