//! End-to-end tests of the `rto` binary.
