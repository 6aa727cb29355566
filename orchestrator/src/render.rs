//! Rendering errors for the terminal.

use crate::study::StudyError;

/// A study error as one line: `file:line:col: message`.
pub fn one_line(e: &StudyError) -> String {
    match e.location() {
        Some(loc) => format!("{loc}: {}", e.message),
        None => e.message.clone(),
    }
}
