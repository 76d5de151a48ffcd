//! Inline alert rules (`[[alert]]`) and the checks they share with Prometheus rule files:
//! PromQL expressions (parsed by `promql-parser`, the parser the query engine uses) and
//! label names.

use crate::check::{Field, NamedItem, Report};
use crate::model::AlertRule;
use crate::node::{Entry, Node, Span};
use crate::units::Dur;
use std::collections::BTreeMap;

const ALERT_KEYS: &[&str] = &[
    "name",
    "expr",
    "for",
    "keep_firing_for",
    "labels",
    "annotations",
];

/// Whether `name` is a Prometheus label name: `[a-zA-Z_][a-zA-Z0-9_]*`.
pub(crate) fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Whether `name` is a Prometheus metric name: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
pub(crate) fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Parses a PromQL expression; the error is the parser's message.
pub(crate) fn check_promql(expr: &str) -> Result<(), String> {
    if expr.trim().is_empty() {
        return Err("the expression is empty".into());
    }
    promql_parser::parser::parse(expr).map(|_| ())
}

/// Where in `expr` the parser's error is, for the errors whose place is certain: an
/// unclosed or unmatched bracket. The parser reports no positions itself.
pub(crate) fn promql_error_offset(expr: &str, message: &str) -> Option<usize> {
    let (open, close) = if message.contains("parenthesis") {
        ('(', ')')
    } else if message.contains("inside braces") && message.contains("end of input") {
        ('{', '}')
    } else {
        return None;
    };
    let mut unclosed = Vec::new();
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (offset, c) in expr.char_indices() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' && q != '`' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' | '`' => quote = Some(c),
            '#' => break,
            c if c == open => unclosed.push(offset),
            c if c == close && unclosed.pop().is_none() => {
                return message.contains("unexpected right").then_some(offset);
            }
            _ => {}
        }
    }
    unclosed
        .last()
        .copied()
        .filter(|_| !message.contains("unexpected right"))
}

/// The hint shown under a PromQL error.
pub(crate) const PROMQL_HINT: &str =
    "fix the PromQL expression; `tandem query EXPR` tries one against a running server";

/// Reads one `[[alert]]` table; returns the rule and the span of its name.
pub(crate) fn read_alert(
    report: &mut Report<'_>,
    item: &Node,
    section: &str,
) -> Option<(AlertRule, Span)> {
    let (table, name) = report.named_item(
        item,
        section,
        ALERT_KEYS,
        NamedItem {
            what: "alert",
            table_hint: "write each alert as an [[alert]] table with name and expr",
            name_example: "name = \"ApiDown\"",
            missing_hint: "add name = \"...\": the alert's name, as in name = \"ApiDown\"",
        },
    )?;
    let expr = match table.get("expr") {
        Some(entry) => {
            let expr = report.string(entry, &Field::new(section, "expr = 'up == 0'"));
            if let Some(expr) = expr
                && let Err(message) = check_promql(expr)
            {
                let source = report.source.text;
                let span = promql_error_offset(expr, &message)
                    .and_then(|offset| {
                        crate::check::offset_in_string(source, &entry.node, expr, offset)
                    })
                    .map_or(entry.node.span.clone(), |start| start..start + 1);
                report.value_error(
                    span,
                    format!("invalid PromQL in 'expr': {message}"),
                    PROMQL_HINT,
                );
            }
            expr.map(str::to_string)
        }
        None => {
            report.value_error(
                item.span.clone(),
                "alert has no 'expr'",
                "add expr = '...': the PromQL condition that fires the alert, as in expr = 'up == 0'",
            );
            None
        }
    };
    let duration = |report: &mut Report<'_>, key: &str, example: &str| -> Option<Dur> {
        let entry = table.get(key)?;
        report.parsed(entry, &Field::new(section, example), "duration")
    };
    let for_ = duration(report, "for", "for = \"5m\"");
    let keep_firing_for = duration(report, "keep_firing_for", "keep_firing_for = \"5m\"");
    let labels = read_label_map(
        report,
        table.get("labels"),
        section,
        "labels = { severity = \"page\" }",
    );
    let annotations = read_label_map(
        report,
        table.get("annotations"),
        section,
        "annotations = { summary = \"api is down\" }",
    );
    let (name, name_span) = name?;
    Some((
        AlertRule {
            name,
            expr: expr?,
            for_,
            keep_firing_for,
            labels,
            annotations,
        },
        name_span,
    ))
}

fn read_label_map(
    report: &mut Report<'_>,
    entry: Option<&Entry>,
    section: &str,
    example: &str,
) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    let Some(entry) = entry else {
        return map;
    };
    let field = Field::new(section, example);
    let Some(table) = report.table(entry, &field) else {
        return map;
    };
    for label in table.entries() {
        if !is_label_name(&label.key) {
            report.value_error(
                label.key_span.clone(),
                format!(
                    "'{}' is not a valid label name in '{}'",
                    label.key, entry.key
                ),
                "label names are letters, digits and '_', not starting with a digit",
            );
        }
        if let Some(value) = report.string(label, &field) {
            map.insert(label.key.clone(), value.to_string());
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_label_name("severity"));
        assert!(!is_label_name("9lives"));
        assert!(!is_label_name("a-b"));
        assert!(is_metric_name("job:rate5m"));
    }

    #[test]
    fn promql() {
        assert!(check_promql("up{service=\"api\"} == 0").is_ok());
        assert!(check_promql("rate(up[5m]").is_err());
        assert!(check_promql(" ").is_err());
    }

    #[test]
    fn promql_error_places() {
        let at = |expr: &str| promql_error_offset(expr, &check_promql(expr).unwrap_err());
        assert_eq!(at("sum(rate(x[5m])"), Some(3));
        assert_eq!(at("up{a=\"(\"} == 0)"), Some(14));
        assert_eq!(at("up{a=\"b\""), Some(2));
        assert_eq!(at("up =="), None);
    }
}
