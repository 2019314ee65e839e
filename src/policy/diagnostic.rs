//! Findings about a policy set, each pinned to `FILE:LINE:COL` so an editor or CI log can jump to it.

use std::fmt;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The policy set is rejected.
    Error,
    /// Accepted, but a reviewer should look (an expired allow, an overlapping identity).
    Warning,
}

/// A place in a policy file. Lines and columns are 1-based; 0 means "the whole file".
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct SourceLoc {
    pub file: Arc<str>,
    pub line: u32,
    pub column: u32,
}

impl Default for SourceLoc {
    /// Nowhere: a value no policy file wrote (the development gateway).
    fn default() -> Self {
        SourceLoc { file: Arc::from(""), line: 0, column: 0 }
    }
}

impl SourceLoc {
    pub fn new(file: &Arc<str>, line: u32, column: u32) -> Self {
        SourceLoc { file: file.clone(), line, column }
    }

    /// The location of a value parsed with `serde_saphyr::Spanned`.
    pub fn of<T>(file: &Arc<str>, spanned: &serde_saphyr::Spanned<T>) -> Self {
        Self::new(file, spanned.referenced.line() as u32, spanned.referenced.column() as u32)
    }

    /// Appends `file:line:column` (what `Display` writes) without the formatting machinery: the
    /// telemetry thread writes a rule's location into every record.
    pub fn push_to(&self, out: &mut String) {
        let mut digits = itoa::Buffer::new();
        out.push_str(&self.file);
        out.push(':');
        out.push_str(digits.format(self.line.max(1)));
        out.push(':');
        out.push_str(digits.format(self.column.max(1)));
    }

    /// `file:line`, the short form used in decisions ("the rule at payments.yaml:12").
    pub fn short(&self) -> String {
        format!("{}:{}", self.file, self.line)
    }
}

impl fmt::Display for SourceLoc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line.max(1), self.column.max(1))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    #[serde(flatten)]
    pub loc: SourceLoc,
    pub message: String,
}

impl Diagnostic {
    pub fn error(loc: SourceLoc, message: impl Into<String>) -> Self {
        Diagnostic { severity: Severity::Error, loc, message: message.into() }
    }

    pub fn warning(loc: SourceLoc, message: impl Into<String>) -> Self {
        Diagnostic { severity: Severity::Warning, loc, message: message.into() }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.severity {
            Severity::Error => write!(f, "{}: {}", self.loc, self.message),
            Severity::Warning => write!(f, "{}: warning: {}", self.loc, self.message),
        }
    }
}

/// Collects findings while a policy set is loaded and compiled; nothing stops at the first error,
/// so one `validate` run shows everything that is wrong.
#[derive(Debug, Default)]
pub struct Diagnostics {
    items: Vec<Diagnostic>,
}

impl Diagnostics {
    pub fn error(&mut self, loc: SourceLoc, message: impl Into<String>) {
        self.items.push(Diagnostic::error(loc, message));
    }

    pub fn warning(&mut self, loc: SourceLoc, message: impl Into<String>) {
        self.items.push(Diagnostic::warning(loc, message));
    }

    pub fn has_errors(&self) -> bool {
        self.error_count() > 0
    }

    pub fn error_count(&self) -> usize {
        self.items.iter().filter(|d| d.severity == Severity::Error).count()
    }

    /// All findings, in file order.
    pub fn into_sorted(mut self) -> Vec<Diagnostic> {
        self.items.sort_by(|a, b| a.loc.cmp(&b.loc).then(a.severity.cmp(&b.severity)));
        self.items.dedup();
        self.items
    }
}
