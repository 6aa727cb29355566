//! rto orchestrator library.
