//! Plugins on the host side: discovery from manifests, identity for action keys, and running ops in worker
//! processes. The ABI itself is the `api` crate (`plugins/api`).
//!
//! **Invariant:** the orchestrator process never opens a plugin library: libraries are opened only in
//! `rto worker` processes. Plugins linked into `rto` are described in-process (reading their static tables)
//! but their ops run in workers too, so every op gets the same isolation.

pub mod load;
pub mod manifest;
pub mod registry;
pub mod worker;

pub use registry::{Found, LinkedPlugin, Registry, Source};
