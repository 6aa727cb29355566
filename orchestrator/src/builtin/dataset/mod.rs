//! The `dataset` built-in.
