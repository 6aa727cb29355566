//! End-to-end tests of the real `rto` binary on temporary directories: one test binary, one module per area.

mod architecture;
mod candle;
mod concurrency;
mod crash;
mod errors;
mod incremental;
mod judge;
mod keys;
mod maintenance;
mod plugins;
mod remote;
mod report;
mod resources;
mod serve;
mod slurm;
mod support;
mod tiny;
