//! Typed reading of the spanned tree, with the error collecting that makes validation
//! report every problem at once.
//!
//! Validation runs in two phases over the same conversion code (see `resolve`): the
//! *shape* phase reads every table where it is written (base and every overlay) and reports
//! problems with single values; the *build* phase reads each environment's merged tables
//! and reports only problems that need the whole picture (a missing `run`, a dependency
//! cycle). [`Report`] knows the phase and drops the other kind of error, so one conversion
//! function serves both and a bad value is reported once, where it is written.

use crate::diagnostic::{Diagnostic, SourceFile};
use crate::node::{Entry, Node, Span, Table, Value};

/// Which problems a pass over the tree reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Problems with one value, reported where the value is written.
    Shape,
    /// Problems that need a whole, merged environment.
    Build,
}

/// Collects diagnostics for one file during one phase.
#[derive(Debug)]
pub(crate) struct Report<'a> {
    pub(crate) source: &'a SourceFile<'a>,
    pub(crate) phase: Phase,
    pub(crate) diagnostics: Vec<Diagnostic>,
}

impl<'a> Report<'a> {
    pub(crate) fn new(source: &'a SourceFile<'a>, phase: Phase) -> Self {
        Report {
            source,
            phase,
            diagnostics: Vec::new(),
        }
    }

    /// A problem with one value (reported in the shape phase).
    pub(crate) fn value_error(
        &mut self,
        span: Span,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) {
        if self.phase == Phase::Shape {
            let diagnostic = self.source.diagnostic(span, message, hint);
            self.diagnostics.push(diagnostic);
        }
    }

    /// A problem that needs the merged environment (reported in the build phase).
    pub(crate) fn context_error(
        &mut self,
        span: Span,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) {
        if self.phase == Phase::Build {
            let diagnostic = self.source.diagnostic(span, message, hint);
            self.diagnostics.push(diagnostic);
        }
    }

    /// Reports every key of `table` not in `known`, suggesting the closest known key.
    pub(crate) fn unknown_keys(&mut self, table: &Table, section: &str, known: &[&str]) {
        for entry in table.entries() {
            if known.contains(&entry.key.as_str()) {
                continue;
            }
            let hint = match closest(&entry.key, known.iter().copied()) {
                Some(best) => format!("did you mean '{best}'?"),
                None => format!("the keys of {section} are: {}", known.join(", ")),
            };
            self.value_error(
                entry.key_span.clone(),
                format!("unknown key '{}' in {section}", entry.key),
                hint,
            );
        }
    }

    fn wrong_type(&mut self, entry: &Entry, field: &Field<'_>, expected: &str) {
        self.value_error(
            entry.node.span.clone(),
            format!(
                "wrong type for '{}' in {}: expected {expected}, found {}",
                entry.key,
                field.section,
                entry.node.value.type_phrase()
            ),
            format!("write it like {}", field.example),
        );
    }

    pub(crate) fn string<'n>(&mut self, entry: &'n Entry, field: &Field<'_>) -> Option<&'n str> {
        match &entry.node.value {
            Value::String(text) => Some(text),
            _ => {
                self.wrong_type(entry, field, "a string");
                None
            }
        }
    }

    pub(crate) fn integer(&mut self, entry: &Entry, field: &Field<'_>) -> Option<i64> {
        match entry.node.value {
            Value::Integer(number) => Some(number),
            _ => {
                self.wrong_type(entry, field, "an integer");
                None
            }
        }
    }

    /// An integer or a float, as f64.
    pub(crate) fn number(&mut self, entry: &Entry, field: &Field<'_>) -> Option<f64> {
        match entry.node.value {
            Value::Integer(number) => Some(number as f64),
            Value::Float(number) => Some(number),
            _ => {
                self.wrong_type(entry, field, "a number");
                None
            }
        }
    }

    pub(crate) fn boolean(&mut self, entry: &Entry, field: &Field<'_>) -> Option<bool> {
        match entry.node.value {
            Value::Boolean(flag) => Some(flag),
            _ => {
                self.wrong_type(entry, field, "a boolean (true or false)");
                None
            }
        }
    }

    pub(crate) fn table<'n>(&mut self, entry: &'n Entry, field: &Field<'_>) -> Option<&'n Table> {
        match &entry.node.value {
            Value::Table(table) => Some(table),
            _ => {
                self.wrong_type(entry, field, "a table");
                None
            }
        }
    }

    pub(crate) fn array<'n>(&mut self, entry: &'n Entry, field: &Field<'_>) -> Option<&'n [Node]> {
        match &entry.node.value {
            Value::Array(items) => Some(items),
            _ => {
                self.wrong_type(entry, field, "an array");
                None
            }
        }
    }

    /// An array of strings, each with its span; items of another type are reported.
    pub(crate) fn strings<'n>(
        &mut self,
        entry: &'n Entry,
        field: &Field<'_>,
    ) -> Option<Vec<(&'n str, Span)>> {
        let items = self.array(entry, field)?;
        let mut strings = Vec::new();
        for item in items {
            match &item.value {
                Value::String(text) => strings.push((text.as_str(), item.span.clone())),
                other => self.value_error(
                    item.span.clone(),
                    format!(
                        "wrong type in '{}' of {}: expected a string, found {}",
                        entry.key,
                        field.section,
                        other.type_phrase()
                    ),
                    format!("write it like {}", field.example),
                ),
            }
        }
        Some(strings)
    }

    /// A value parsed with `FromStr` whose error text is "problem; what to do".
    pub(crate) fn parsed<T>(&mut self, entry: &Entry, field: &Field<'_>, what: &str) -> Option<T>
    where
        T: std::str::FromStr<Err = crate::units::UnitError>,
    {
        let text = self.string(entry, field)?;
        match text.parse::<T>() {
            Ok(value) => Some(value),
            Err(error) => {
                let (problem, hint) = split_unit_error(&error.0);
                self.value_error(
                    entry.node.span.clone(),
                    format!(
                        "invalid {what} for '{}' in {}: {problem}",
                        entry.key, field.section
                    ),
                    hint,
                );
                None
            }
        }
    }
}

/// A value that may stand alone in a label list instead of names (`group_by = ["..."]`),
/// with the error and hint for listing it beside others.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LabelWildcard<'a> {
    pub(crate) value: &'a str,
    pub(crate) not_alone: &'a str,
    pub(crate) not_alone_hint: &'a str,
}

impl Report<'_> {
    /// A list of label names, each once (`equal`, `group_by`), or `wildcard` alone; every
    /// problem is reported, and then `None`. `name_hint` follows an invalid name.
    pub(crate) fn label_names(
        &mut self,
        entry: &Entry,
        field: &Field<'_>,
        name_hint: &str,
        wildcard: Option<LabelWildcard<'_>>,
    ) -> Option<Vec<String>> {
        let key = &entry.key;
        let written = self.array(entry, field)?.len();
        let items = self.strings(entry, field)?;
        let mut ok = items.len() == written;
        let mut seen = std::collections::BTreeSet::new();
        for (label, span) in &items {
            if let Some(wildcard) = wildcard.filter(|w| w.value == *label) {
                if written > 1 {
                    ok = false;
                    self.value_error(span.clone(), wildcard.not_alone, wildcard.not_alone_hint);
                }
            } else if !crate::alert::is_label_name(label) {
                ok = false;
                self.value_error(
                    span.clone(),
                    format!("'{label}' is not a valid label name in '{key}'"),
                    name_hint,
                );
            } else if !seen.insert(*label) {
                ok = false;
                self.value_error(
                    span.clone(),
                    format!("label '{label}' is listed twice in '{key}'"),
                    "list each label once",
                );
            }
        }
        ok.then(|| items.iter().map(|(label, _)| label.to_string()).collect())
    }
}

/// How one entry of an array of named tables (`[[alert]]`, `[[receiver]]`) is described in
/// its errors.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NamedItem<'a> {
    /// "alert", "receiver".
    pub(crate) what: &'a str,
    /// The hint when the entry is not a table.
    pub(crate) table_hint: &'a str,
    /// An example name line, as in `name = "ops"`.
    pub(crate) name_example: &'a str,
    /// The hint when `name` is missing.
    pub(crate) missing_hint: &'a str,
}

impl<'s> Report<'s> {
    /// Reads one entry of an array of named tables: checks it is a table with known keys
    /// and a non-empty `name`. Returns the table and, when readable, the name and its span.
    pub(crate) fn named_item<'n>(
        &mut self,
        item: &'n crate::node::Node,
        section: &str,
        keys: &[&str],
        named: NamedItem<'_>,
    ) -> Option<(&'n Table, Option<(String, crate::node::Span)>)> {
        let Some(table) = item.as_table() else {
            self.value_error(
                item.span.clone(),
                format!(
                    "wrong type in {section}: expected a table, found {}",
                    item.value.type_phrase()
                ),
                named.table_hint,
            );
            return None;
        };
        self.unknown_keys(table, section, keys);
        let name = match table.get("name") {
            Some(entry) => self
                .string(entry, &Field::new(section, named.name_example))
                .map(|name| (name.to_string(), entry.node.span.clone())),
            None => {
                self.value_error(
                    item.span.clone(),
                    format!("{} has no 'name'", named.what),
                    named.missing_hint,
                );
                None
            }
        };
        if let Some((name, span)) = &name
            && name.trim().is_empty()
        {
            self.value_error(
                span.clone(),
                format!("{} name is empty", named.what),
                format!("name the {}, as in {}", named.what, named.name_example),
            );
        }
        Some((table, name))
    }
}

/// Which field is being read: its key, the section it is in, and an example of a good
/// value, shown in hints.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Field<'a> {
    pub(crate) section: &'a str,
    pub(crate) example: &'a str,
}

impl<'a> Field<'a> {
    pub(crate) fn new(section: &'a str, example: &'a str) -> Self {
        Field { section, example }
    }
}

/// Splits a units error ("'x' is not a duration; write ...") into problem and hint.
pub(crate) fn split_unit_error(text: &str) -> (String, String) {
    match text.split_once("; ") {
        Some((problem, hint)) => (problem.to_string(), hint.to_string()),
        None => (text.to_string(), "use a positive value".to_string()),
    }
}

/// The candidate closest to `word`, if it is close enough to be a likely typo.
pub(crate) fn closest<'c>(
    word: &str,
    candidates: impl Iterator<Item = &'c str>,
) -> Option<&'c str> {
    candidates
        .map(|candidate| (strsim::jaro_winkler(word, candidate), candidate))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, candidate)| candidate)
}

/// `hint` plus "did you mean" when a candidate is close.
pub(crate) fn with_suggestion<'c>(
    word: &str,
    candidates: impl Iterator<Item = &'c str>,
    otherwise: String,
) -> String {
    match closest(word, candidates) {
        Some(best) => format!("did you mean '{best}'?"),
        None => otherwise,
    }
}

/// Where `offset` (in bytes of the decoded string) lies in the file, when the string is
/// written without escapes so decoded and written text line up; `None` otherwise.
pub(crate) fn offset_in_string(
    source: &str,
    node: &Node,
    decoded: &str,
    offset: usize,
) -> Option<usize> {
    let written = source.get(node.span.clone())?;
    for quote in ["\"\"\"", "'''", "\"", "'"] {
        if written.len() >= 2 * quote.len()
            && written.starts_with(quote)
            && written.ends_with(quote)
        {
            let inner = &written[quote.len()..written.len() - quote.len()];
            let (inner, skipped) = if quote.len() == 3 {
                if let Some(rest) = inner.strip_prefix("\r\n") {
                    (rest, 2)
                } else if let Some(rest) = inner.strip_prefix('\n') {
                    (rest, 1)
                } else {
                    (inner, 0)
                }
            } else {
                (inner, 0)
            };
            if inner == decoded {
                return Some(node.span.start + quote.len() + skipped + offset);
            }
            return None;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_keys_only() {
        let known = ["replicas", "restart", "run"];
        assert_eq!(closest("replica", known.iter().copied()), Some("replicas"));
        assert_eq!(closest("zzz", known.iter().copied()), None);
    }
}
