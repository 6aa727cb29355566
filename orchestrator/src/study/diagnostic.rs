//! Study errors as diagnostics: the file, the line and column, a snippet with a label, and a help line.

use std::ops::Range;
use std::sync::Arc;

use miette::{Diagnostic, NamedSource, SourceSpan};

/// The text of a study file, shared by every diagnostic that points into it.
pub type Source = Arc<NamedSource<String>>;

/// An error in a study file, located in its source.
#[derive(Debug, thiserror::Error, Clone)]
#[error("{message}")]
pub struct StudyError {
    /// One line: what is wrong (names in backticks, no trailing period).
    pub message: String,
    /// The study file's text, named by its path.
    pub src: Option<Source>,
    /// Where in `src`.
    pub span: Option<SourceSpan>,
    /// The label shown under the snippet.
    pub label: String,
    /// What to do about it.
    pub help: Option<String>,
    /// Further locations (e.g. the other stages of a cycle, the first of two duplicate ids).
    pub related: Vec<(SourceSpan, String)>,
}

impl StudyError {
    /// An error at `span` of `src`.
    pub fn at(src: &Source, span: Range<usize>, message: impl Into<String>, label: impl Into<String>) -> Self {
        StudyError {
            message: message.into(),
            src: Some(src.clone()),
            span: Some(span.into()),
            label: label.into(),
            help: None,
            related: vec![],
        }
    }

    /// An error about the study as a whole (no location inside it).
    pub fn whole(message: impl Into<String>) -> Self {
        StudyError { message: message.into(), src: None, span: None, label: String::new(), help: None, related: vec![] }
    }

    /// Adds a help line.
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Adds a secondary labelled location in the same file.
    pub fn with_related(mut self, span: Range<usize>, label: impl Into<String>) -> Self {
        self.related.push((span.into(), label.into()));
        self
    }

    /// "file:line:column" of the primary span, for one-line renderings and tests.
    pub fn location(&self) -> Option<String> {
        let (src, span) = (self.src.as_ref()?, self.span?);
        let text = src.inner();
        let offset = span.offset().min(text.len());
        let before = &text[..offset];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
        Some(format!("{}:{line}:{column}", src.name()))
    }
}

impl Diagnostic for StudyError {
    fn code<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
        self.location().map(|l| Box::new(l) as Box<dyn std::fmt::Display>)
    }

    fn help<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
        self.help.as_ref().map(|h| Box::new(h) as Box<dyn std::fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.src.as_ref().map(|s| s.as_ref() as &dyn miette::SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = miette::LabeledSpan> + '_>> {
        let span = self.span?;
        let primary = miette::LabeledSpan::new_primary_with_span(Some(self.label.clone()), span);
        let related = self.related.iter().map(|(s, l)| miette::LabeledSpan::new_with_span(Some(l.clone()), *s));
        Some(Box::new(std::iter::once(primary).chain(related)))
    }
}
