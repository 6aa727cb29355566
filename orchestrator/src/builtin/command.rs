//! The `command` built-in.
