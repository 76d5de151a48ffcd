//! Prometheus rule files named by `rule_files`: finding them and checking them.
//!
//! Patterns are expanded here (`*` and `?` within a path segment, `**` for any depth) so
//! the crate needs no glob dependency. Each matched file must be a valid Prometheus rule
//! file, checked the way `promtool check rules` would: YAML shape (unknown keys included),
//! alert/record names, `for` durations, label names and PromQL. serde_yaml gives positions
//! for syntax and shape errors; for problems found afterwards the position is recovered by
//! finding the offending key in the text, scanning rules in document order.

use crate::alert::{PROMQL_HINT, check_promql, is_label_name, is_metric_name, promql_error_offset};
use crate::diagnostic::{Diagnostic, SourceFile};
use crate::units::Dur;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    #[serde(default)]
    groups: Vec<RuleGroup>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleGroup {
    name: Option<String>,
    interval: Option<String>,
    query_offset: Option<String>,
    #[allow(dead_code)]
    limit: Option<u64>,
    labels: Option<BTreeMap<String, serde_yaml::Value>>,
    #[serde(default)]
    rules: Vec<Rule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    alert: Option<String>,
    record: Option<String>,
    expr: Option<String>,
    #[serde(rename = "for")]
    for_: Option<String>,
    keep_firing_for: Option<String>,
    labels: Option<BTreeMap<String, serde_yaml::Value>>,
    annotations: Option<BTreeMap<String, serde_yaml::Value>>,
}

/// The files a pattern matches, sorted, each with the name to show for it.
pub(crate) fn expand(base_dir: &Path, pattern: &str) -> Vec<(PathBuf, String)> {
    let absolute = Path::new(pattern).is_absolute();
    let root = if absolute {
        PathBuf::from("/")
    } else {
        base_dir.to_path_buf()
    };
    let segments: Vec<&str> = pattern
        .split('/')
        .filter(|segment| !segment.is_empty() && *segment != ".")
        .collect();
    let mut found = Vec::new();
    walk(&root, &segments, &mut found);
    found.sort();
    found.dedup();
    found
        .into_iter()
        .map(|path| {
            let shown = if absolute {
                path.display().to_string()
            } else {
                path.strip_prefix(base_dir)
                    .unwrap_or(&path)
                    .display()
                    .to_string()
            };
            (path, shown)
        })
        .collect()
}

fn walk(folder: &Path, segments: &[&str], found: &mut Vec<PathBuf>) {
    let Some((first, rest)) = segments.split_first() else {
        if folder.is_file() {
            found.push(folder.to_path_buf());
        }
        return;
    };
    if *first == "**" {
        walk(folder, rest, found);
        for child in children(folder) {
            if child.is_dir() {
                walk(&child, segments, found);
            }
        }
        return;
    }
    if !first.contains(['*', '?']) {
        walk(&folder.join(first), rest, found);
        return;
    }
    for child in children(folder) {
        let name = child.file_name().map(|n| n.to_string_lossy().into_owned());
        if let Some(name) = name
            && !name.starts_with('.')
            && wildcard_match(first, &name)
        {
            walk(&child, rest, found);
        }
    }
}

fn children(folder: &Path) -> Vec<PathBuf> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(folder)
        .map(|read| {
            read.filter_map(|entry| entry.ok().map(|e| e.path()))
                .collect()
        })
        .unwrap_or_default();
    entries.sort();
    entries
}

/// `*` matches any run of characters, `?` one character.
fn wildcard_match(pattern: &str, name: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let name: Vec<char> = name.chars().collect();
    let (mut p, mut n) = (0, 0);
    let (mut star, mut star_n) = (None, 0);
    while n < name.len() {
        if p < pattern.len() && (pattern[p] == '?' || pattern[p] == name[n]) {
            p += 1;
            n += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            star = Some(p);
            star_n = n;
            p += 1;
        } else if let Some(star_p) = star {
            p = star_p + 1;
            star_n += 1;
            n = star_n;
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}

/// Checks one rule file's text; `shown` is the name used in diagnostics.
pub(crate) fn check_rule_file(shown: &str, text: &str) -> Vec<Diagnostic> {
    let source = SourceFile::new(shown, text);
    if text.trim().is_empty() {
        return Vec::new();
    }
    let file: RuleFile = match serde_yaml::from_str(text) {
        Ok(file) => file,
        Err(error) => {
            let offset = error.location().map_or(0, |location| location.index());
            let message = error.to_string();
            // serde_yaml appends " at line L column C"; the position is shown already.
            let message = match message.find(" at line ") {
                Some(cut) => &message[..cut],
                None => &message,
            };
            return vec![source.diagnostic(
                offset..offset + 1,
                format!("invalid rule file: {message}"),
                "a rule file holds groups: [{name, interval?, rules: [{alert or record, expr, for?, labels?, annotations?}]}]",
            )];
        }
    };
    let mut checker = RuleChecker {
        source: &source,
        diagnostics: Vec::new(),
        cursor: 0,
    };
    let mut group_names: Vec<String> = Vec::new();
    for group in &file.groups {
        checker.group(group, &mut group_names);
    }
    checker.diagnostics
}

struct RuleChecker<'a> {
    source: &'a SourceFile<'a>,
    diagnostics: Vec<Diagnostic>,
    /// Byte offset where the search for the next rule's keys starts.
    cursor: usize,
}

impl RuleChecker<'_> {
    fn error(&mut self, span: std::ops::Range<usize>, message: String, hint: &str) {
        self.diagnostics
            .push(self.source.diagnostic(span, message, hint));
    }

    fn group(&mut self, group: &RuleGroup, seen_names: &mut Vec<String>) {
        let name_span = self.find_key_in(self.cursor, usize::MAX, "name", group.name.as_deref());
        if let Some(span) = &name_span {
            self.cursor = self.line_end(span.end) + 1;
        }
        let group_span = name_span.clone().unwrap_or(self.cursor..self.cursor + 1);
        match group.name.as_deref() {
            None | Some("") => self.error(
                group_span.clone(),
                "rule group has no name".into(),
                "add name: to the group",
            ),
            Some(name) if seen_names.iter().any(|seen| seen == name) => self.error(
                group_span.clone(),
                format!("rule group '{name}' is declared twice in this file"),
                "give each group in a file its own name",
            ),
            Some(name) => seen_names.push(name.to_string()),
        }
        for (key, value) in [
            ("interval", &group.interval),
            ("query_offset", &group.query_offset),
        ] {
            if let Some(text) = value {
                self.duration(key, text, self.cursor, self.next_item(self.cursor));
            }
        }
        if let Some(labels) = &group.labels {
            self.labels("labels", labels, self.cursor, self.next_item(self.cursor));
        }
        for rule in &group.rules {
            self.rule(rule);
        }
    }

    fn rule(&mut self, rule: &Rule) {
        // A rule is the list item from its "- " line to the next one.
        let start = self.next_item(self.cursor);
        let end = self.next_item(self.line_end(start) + 1);
        self.cursor = end;
        let name_key = if rule.alert.is_some() {
            "alert"
        } else {
            "record"
        };
        let name_span = self.find_key_in(start, end, name_key, None);
        let expr_span = self.find_key_in(start, end, "expr", None);
        let anchor = name_span
            .clone()
            .or(expr_span.clone())
            .unwrap_or(start..self.line_end(start));
        let label = rule
            .alert
            .as_deref()
            .or(rule.record.as_deref())
            .unwrap_or("(unnamed)");
        match (&rule.alert, &rule.record) {
            (Some(_), Some(_)) => self.error(
                anchor.clone(),
                format!("rule '{label}' has both 'alert' and 'record'"),
                "a rule either alerts or records; split it in two",
            ),
            (None, None) => self.error(
                anchor.clone(),
                "rule has neither 'alert' nor 'record'".into(),
                "add alert: NAME for an alerting rule, or record: NAME for a recording rule",
            ),
            (None, Some(record)) => {
                if !is_metric_name(record) {
                    self.error(
                        anchor.clone(),
                        format!("'{record}' is not a valid metric name for 'record'"),
                        "metric names are letters, digits, '_' and ':', not starting with a digit",
                    );
                }
                for (key, present) in [
                    ("for", rule.for_.is_some()),
                    ("keep_firing_for", rule.keep_firing_for.is_some()),
                    ("annotations", rule.annotations.is_some()),
                ] {
                    if present {
                        let span = self
                            .find_key_in(start, end, key, None)
                            .unwrap_or(anchor.clone());
                        self.error(
                            span,
                            format!("recording rule '{record}' has '{key}', which only alerting rules take"),
                            "remove it, or make the rule an alert",
                        );
                    }
                }
            }
            (Some(alert), None) if alert.trim().is_empty() => self.error(
                anchor.clone(),
                "alert name is empty".into(),
                "name the alert, as in alert: ApiDown",
            ),
            (Some(_), None) => {}
        }
        match &rule.expr {
            None => self.error(
                anchor.clone(),
                format!("rule '{label}' has no 'expr'"),
                "add expr: the PromQL expression of the rule",
            ),
            Some(expr) => {
                if let Err(message) = check_promql(expr) {
                    let mut span = expr_span.clone().unwrap_or(anchor.clone());
                    // When the expression is written whole on its line, point inside it.
                    if self.source.text.get(span.clone()) == Some(expr.as_str())
                        && let Some(offset) = promql_error_offset(expr, &message)
                    {
                        span = span.start + offset..span.start + offset + 1;
                    }
                    self.error(
                        span,
                        format!("invalid PromQL in 'expr': {message}"),
                        PROMQL_HINT,
                    );
                }
            }
        }
        for (key, value) in [
            ("for", &rule.for_),
            ("keep_firing_for", &rule.keep_firing_for),
        ] {
            if let Some(text) = value {
                self.duration(key, text, start, end);
            }
        }
        for (key, map) in [("labels", &rule.labels), ("annotations", &rule.annotations)] {
            if let Some(map) = map {
                self.labels(key, map, start, end);
            }
        }
    }

    fn duration(&mut self, key: &str, text: &str, from: usize, until: usize) {
        if let Err(error) = text.parse::<Dur>() {
            let span = self
                .find_key_in(from, until, key, None)
                .unwrap_or(from..from + 1);
            let (problem, hint) = crate::check::split_unit_error(&error.0);
            self.error(
                span,
                format!("invalid duration for '{key}': {problem}"),
                &hint,
            );
        }
    }

    fn labels(
        &mut self,
        key: &str,
        map: &BTreeMap<String, serde_yaml::Value>,
        from: usize,
        until: usize,
    ) {
        for (name, value) in map {
            if !is_label_name(name) {
                let span = self
                    .find_key_name_in(from, until, name)
                    .unwrap_or(from..from + 1);
                self.error(
                    span,
                    format!("'{name}' is not a valid label name in '{key}'"),
                    "label names are letters, digits and '_', not starting with a digit",
                );
            }
            if matches!(
                value,
                serde_yaml::Value::Sequence(_) | serde_yaml::Value::Mapping(_)
            ) {
                let span = self
                    .find_key_name_in(from, until, name)
                    .unwrap_or(from..from + 1);
                self.error(
                    span,
                    format!("'{key}.{name}' must be a string"),
                    "write the value as text",
                );
            }
        }
    }

    /// The offset of the first line at or after `from` that starts a list item (`- `), or
    /// the end of the text.
    fn next_item(&self, from: usize) -> usize {
        let text = self.source.text;
        let mut line_start = text[..from.min(text.len())]
            .rfind('\n')
            .map_or(0, |i| i + 1);
        while line_start < text.len() {
            let line_end = self.line_end(line_start);
            if line_start >= from && text[line_start..line_end].trim_start().starts_with("- ") {
                return line_start;
            }
            line_start = line_end + 1;
        }
        text.len()
    }

    fn line_end(&self, offset: usize) -> usize {
        let text = self.source.text;
        let offset = offset.min(text.len());
        text[offset..].find('\n').map_or(text.len(), |i| offset + i)
    }

    /// The span of the value of the first `key:` in `from..until` (the key itself when the
    /// value starts on a later line). When `value` is given, the line must also hold it.
    fn find_key_in(
        &self,
        from: usize,
        until: usize,
        key: &str,
        value: Option<&str>,
    ) -> Option<std::ops::Range<usize>> {
        self.find_in(from, until, key, value, false)
    }

    /// Like [`Self::find_key_in`], but the span of the key itself.
    fn find_key_name_in(
        &self,
        from: usize,
        until: usize,
        key: &str,
    ) -> Option<std::ops::Range<usize>> {
        self.find_in(from, until, key, None, true)
    }

    fn find_in(
        &self,
        from: usize,
        until: usize,
        key: &str,
        value: Option<&str>,
        want_key: bool,
    ) -> Option<std::ops::Range<usize>> {
        let text = self.source.text;
        let mut line_start = text[..from.min(text.len())]
            .rfind('\n')
            .map_or(0, |i| i + 1);
        while line_start < until.min(text.len()) {
            let line_end = text[line_start..]
                .find('\n')
                .map_or(text.len(), |i| line_start + i);
            let line = &text[line_start..line_end];
            let stripped = line.trim_start().trim_start_matches("- ").trim_start();
            let indent = line.len() - stripped.len();
            if line_start + indent >= from
                && let Some(after_key) = stripped.strip_prefix(key)
                && let Some(after_colon) = after_key.strip_prefix(':')
                && value.is_none_or(|wanted| after_colon.contains(wanted))
            {
                let value_text = after_colon.trim_start();
                let key_start = line_start + indent;
                if want_key || value_text.is_empty() || value_text.starts_with(['|', '>']) {
                    return Some(key_start..key_start + key.len());
                }
                let value_start = line_end - after_colon.trim_start().len();
                return Some(value_start..line_end);
            }
            line_start = line_end + 1;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(wildcard_match("*.yml", "api.yml"));
        assert!(wildcard_match("a?c*", "abcdef"));
        assert!(!wildcard_match("*.yml", "api.yaml"));
    }

    #[test]
    fn valid_rule_file_is_clean() {
        let text = "groups:\n  - name: api\n    rules:\n      - alert: ApiDown\n        expr: up == 0\n        for: 1m\n        labels:\n          severity: page\n      - record: job:up:sum\n        expr: sum by (job) (up)\n";
        assert_eq!(check_rule_file("r.yml", text), Vec::new());
    }

    #[test]
    fn finds_the_line_of_a_bad_expr() {
        let text = "groups:\n  - name: api\n    rules:\n      - alert: A\n        expr: up == 0\n      - alert: B\n        expr: rate(up[5m]\n";
        let diagnostics = check_rule_file("r.yml", text);
        assert_eq!(diagnostics.len(), 1);
        assert_eq!((diagnostics[0].line, diagnostics[0].col), (7, 19));
    }
}
