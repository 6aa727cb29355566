//! The cache crate's error type: every variant names the path it is about.

use std::path::PathBuf;

/// An error of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An I/O operation failed.
    #[error("cannot {op} `{path}`: {source}")]
    Io {
        /// What was being done, as a verb phrase ("read", "rename into", …).
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A file inside the store does not parse (action record, tree manifest, ref).
    #[error("`{path}` is damaged: {message}")]
    Damaged {
        /// The damaged file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A stage output cannot be stored as it is.
    #[error("output `{path}` cannot be stored: {message}")]
    BadOutput {
        /// The offending file.
        path: PathBuf,
        /// Why (a symlink, a socket, a non-UTF-8 name, …).
        message: String,
    },
    /// The directory is a store of another (newer) layout.
    #[error(
        "`{path}` is an rto cache of layout {found}, this rto understands layout {expected}; use a newer rto or another `--cache`"
    )]
    Layout {
        /// The layout file.
        path: PathBuf,
        /// The layout found.
        found: u32,
        /// The layout this crate writes.
        expected: u32,
    },
    /// `gc` or `verify` found a run using the store.
    #[error("the cache is in use by a running `rto run` (`{path}` is locked); retry when it has finished")]
    Busy {
        /// The store lock.
        path: PathBuf,
    },
    /// A ref name that cannot be a path inside `refs/`.
    #[error("`{0}` is not a valid ref name (use letters, digits, `-`, `_`, `.` and `/`-separated parts)")]
    BadRefName(String),
}

/// Result of the store's operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Adds the operation and path to an `io::Error`.
pub(crate) trait IoContext<T> {
    fn ctx(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| StoreError::Io { op, path: path.into(), source })
    }
}
