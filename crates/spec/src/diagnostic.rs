//! Diagnostics: one problem in a file, with where it is and what to do about it.
//!
//! Every check in this crate ends here, so the user sees one format whatever went wrong:
//! `FILE:LINE:COL: error: MESSAGE`, the source line with a caret under the offending text,
//! and a hint. Positions are computed once from byte spans by [`SourceFile`], so checks
//! only ever deal in spans. Lines and columns are 1-based; columns count characters.

use std::fmt;
use std::ops::Range;

/// One problem found in a system file or a rule file it names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file as the user named it (`tandem.toml`, `alerts/api.yml`).
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub col: usize,
    pub message: String,
    /// What to do about it.
    pub hint: Option<String>,
    /// The text of the line the problem is on; `None` when the problem has no place in a
    /// file (the file cannot be read, an environment that is not declared).
    pub source_line: Option<String>,
    /// Number of characters to underline, at least 1, never past the end of the line.
    pub span_len: usize,
}

/// Every problem found in one run, in file order. Renders them all, one block each.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostic {
    /// A problem about a file as a whole (it cannot be read, an unknown `--env`): no source
    /// line is shown and the position is the start of the file.
    pub fn whole_file(file: &str, message: impl Into<String>, hint: impl Into<String>) -> Self {
        Diagnostic {
            file: file.to_string(),
            line: 1,
            col: 1,
            message: message.into(),
            hint: Some(hint.into()),
            source_line: None,
            span_len: 1,
        }
    }

    /// Renders with ANSI bold/red when `color` is true; `Display` is the plain form.
    pub fn render(&self, color: bool) -> String {
        let (bold, red, blue, reset) = if color {
            ("\x1b[1m", "\x1b[1;31m", "\x1b[1;34m", "\x1b[0m")
        } else {
            ("", "", "", "")
        };
        let mut out = format!(
            "{bold}{}:{}:{}: {red}error:{reset}{bold} {}{reset}\n",
            self.file, self.line, self.col, self.message
        );
        let number = self.line.to_string();
        let gutter = " ".repeat(number.len());
        if let Some(source_line) = &self.source_line {
            // Keep tabs in the caret's indent so it lines up with the source line.
            let indent: String = source_line
                .chars()
                .take(self.col.saturating_sub(1))
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            out.push_str(&format!("{blue}{gutter} |{reset}\n"));
            out.push_str(&format!("{blue}{number} |{reset} {source_line}\n"));
            out.push_str(&format!(
                "{blue}{gutter} |{reset} {indent}{red}{}{reset}\n",
                "^".repeat(self.span_len.max(1))
            ));
        }
        if let Some(hint) = &self.hint {
            out.push_str(&format!("{blue}{gutter} ={reset} hint: {hint}\n"));
        }
        out
    }

    /// The key that makes two diagnostics the same problem (for deduplication).
    pub(crate) fn identity(&self) -> (String, usize, usize, String) {
        (self.file.clone(), self.line, self.col, self.message.clone())
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(false))
    }
}

impl Diagnostics {
    /// How many problems there are (the caller prints the summary line).
    pub fn count(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Renders every diagnostic, separated by blank lines.
    pub fn render(&self, color: bool) -> String {
        self.0
            .iter()
            .map(|d| d.render(color))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Sorts by file (the system file first, then others in the order first reported),
    /// then position, and drops repeats of the same problem at the same place.
    pub(crate) fn sort_and_dedup(&mut self, main_file: &str) {
        let mut file_rank: Vec<String> = vec![main_file.to_string()];
        for d in &self.0 {
            if !file_rank.contains(&d.file) {
                file_rank.push(d.file.clone());
            }
        }
        let rank = |file: &str| file_rank.iter().position(|f| f == file).unwrap_or(0);
        let mut seen = std::collections::BTreeSet::new();
        self.0.retain(|d| seen.insert(d.identity()));
        self.0.sort_by(|a, b| {
            (rank(&a.file), a.line, a.col, &a.message).cmp(&(
                rank(&b.file),
                b.line,
                b.col,
                &b.message,
            ))
        });
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(false))
    }
}

impl std::error::Error for Diagnostics {}

impl From<Diagnostic> for Diagnostics {
    fn from(diagnostic: Diagnostic) -> Self {
        Diagnostics(vec![diagnostic])
    }
}

/// A file's text with its name and line index: turns byte spans into diagnostics.
#[derive(Debug)]
pub(crate) struct SourceFile<'a> {
    pub(crate) name: &'a str,
    pub(crate) text: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> SourceFile<'a> {
    pub(crate) fn new(name: &'a str, text: &'a str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        SourceFile {
            name,
            text,
            line_starts,
        }
    }

    /// A diagnostic pointing at `span` (byte offsets into the text).
    pub(crate) fn diagnostic(
        &self,
        span: Range<usize>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Diagnostic {
        let start = self.clamp(span.start);
        let end = self.clamp(span.end.max(start));
        let line_index = self
            .line_starts
            .partition_point(|&line_start| line_start <= start)
            .saturating_sub(1);
        let line_start = self.line_starts[line_index];
        let line_end = self
            .line_starts
            .get(line_index + 1)
            .map_or(self.text.len(), |next| next - 1);
        let source_line = self.text[line_start..line_end].trim_end_matches('\r');
        let col = self.text[line_start..start].chars().count() + 1;
        let underlined_end = end.min(line_start + source_line.len()).max(start);
        let span_len = self.text[start..underlined_end].chars().count().max(1);
        Diagnostic {
            file: self.name.to_string(),
            line: line_index + 1,
            col,
            message: message.into(),
            hint: Some(hint.into()),
            source_line: Some(source_line.to_string()),
            span_len,
        }
    }

    /// Moves an offset back onto a character boundary inside the text.
    fn clamp(&self, offset: usize) -> usize {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        offset
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_caret_under_span() {
        let text = "[service.api]\nreplica = 2\n";
        let source = SourceFile::new("tandem.toml", text);
        let diagnostic = source.diagnostic(
            14..21,
            "unknown key 'replica' in [service.api]",
            "did you mean 'replicas'?",
        );
        assert_eq!(
            diagnostic.to_string(),
            "tandem.toml:2:1: error: unknown key 'replica' in [service.api]\n  |\n2 | replica = 2\n  | ^^^^^^^\n  = hint: did you mean 'replicas'?\n"
        );
    }

    #[test]
    fn span_at_end_of_file_is_clamped() {
        let source = SourceFile::new("f", "a = \"x");
        let diagnostic = source.diagnostic(6..6, "m", "h");
        assert_eq!(
            (diagnostic.line, diagnostic.col, diagnostic.span_len),
            (1, 7, 1)
        );
    }
}
