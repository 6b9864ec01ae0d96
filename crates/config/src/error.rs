//! Configuration errors that point at the offending place in the file.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// A problem at a span of the file, before the file is named: what the
/// section validators return, so that they need not carry file and text.
pub(crate) type Located = (Range<usize>, String);

/// A configuration problem, located in its file when it came from one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line and column of the problem, when known.
    pub position: Option<(usize, usize)>,
    pub message: String,
}

impl ConfigError {
    pub(crate) fn at(
        file: &Path,
        source: &str,
        span: Option<Range<usize>>,
        message: impl Into<String>,
    ) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            position: span.map(|span| line_and_column(source, span.start)),
            message: message.into(),
        }
    }

    /// Names the file of a problem found at a span of it.
    pub(crate) fn located(file: &Path, source: &str, (span, message): Located) -> Self {
        ConfigError::at(file, source, Some(span), message)
    }

    pub(crate) fn unlocated(file: &Path, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            position: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, column)) => write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                line,
                column,
                self.message
            ),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

fn line_and_column(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = source.get(..offset).unwrap_or(source);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_map_to_one_based_line_and_column() {
        let source = "a = 1\nbb = 2\n";
        assert_eq!(line_and_column(source, 0), (1, 1));
        assert_eq!(line_and_column(source, 6), (2, 1));
        assert_eq!(line_and_column(source, 9), (2, 4));
    }
}
