//! `[[receiver]]` and `[[route]]`: where alert notifications go. Single values (URLs,
//! durations, formats, which of `webhook` / `alertmanager`) are checked where they are
//! written; names that must be unique and routes that must name a receiver are checked per
//! environment, once overlays are merged.
//!
//! Overlays: an `[[env.NAME.receiver]]` is added to the base's receivers, and one with the
//! name of a base receiver replaces that receiver; `[[env.NAME.route]]`s are checked
//! before the base's routes, so an environment can send some alerts elsewhere first.
//!
//! Route `matchers` use Alertmanager's syntax (`label=value`, `!=`, `=~`, `!~`, the value
//! quoted or not, regexes anchored at both ends); [`Matcher`] parses them once, here, so a
//! bad one is a validation error with its position and the server only ever matches.

use crate::check::{Field, LabelWildcard, NamedItem, Report, offset_in_string, with_suggestion};
use crate::model::{Receiver, Route, WebhookFormat};
use crate::node::{Entry, Node, Span};
use crate::units::Dur;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

const RECEIVER_KEYS: &[&str] = &[
    "name",
    "webhook",
    "format",
    "alertmanager",
    "group_wait",
    "group_interval",
    "repeat_interval",
    "group_by",
];
const ROUTE_KEYS: &[&str] = &["match", "matchers", "receiver", "continue"];

/// Defaults of a webhook receiver's timings (Alertmanager's own defaults).
pub const DEFAULT_GROUP_WAIT: Dur = Dur(std::time::Duration::from_secs(10));
pub const DEFAULT_GROUP_INTERVAL: Dur = Dur(std::time::Duration::from_secs(5 * 60));
pub const DEFAULT_REPEAT_INTERVAL: Dur = Dur(std::time::Duration::from_secs(4 * 3600));
/// The labels a webhook receiver groups by unless it says otherwise.
pub const DEFAULT_GROUP_BY: [&str; 3] = ["alertname", "service", "env"];
/// `group_by = ["..."]`: every label, as in Alertmanager.
pub const GROUP_BY_ALL: &str = "...";

/// Reads `[[receiver]]` tables; returns each receiver with the span of its name.
pub(crate) fn read_receivers(
    report: &mut Report<'_>,
    entry: &Entry,
    section: &str,
) -> Vec<(Receiver, Span)> {
    let Some(items) = report.array(
        entry,
        &Field::new(section, "[[receiver]] tables with name and webhook"),
    ) else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| read_receiver(report, item, section))
        .collect()
}

fn read_receiver(report: &mut Report<'_>, item: &Node, section: &str) -> Option<(Receiver, Span)> {
    let (table, name) = report.named_item(
        item,
        section,
        RECEIVER_KEYS,
        NamedItem {
            what: "receiver",
            table_hint: "write each receiver as a [[receiver]] table with name and webhook (or alertmanager)",
            name_example: "name = \"ops\"",
            missing_hint: "add name = \"...\", as in name = \"ops\"; routes send alerts to it by this name",
        },
    )?;
    let url = |report: &mut Report<'_>, key: &str, example: &str| -> Option<String> {
        let entry = table.get(key)?;
        let url = report.string(entry, &Field::new(section, example))?;
        check_url(report, entry, url, key, example);
        Some(url.to_string())
    };
    let webhook = url(
        report,
        "webhook",
        "webhook = \"http://127.0.0.1:9000/alerts\"",
    );
    let alertmanager = url(
        report,
        "alertmanager",
        "alertmanager = \"http://127.0.0.1:9093\"",
    );
    let format = table.get("format").and_then(|entry| {
        let text = report.string(entry, &Field::new(section, "format = \"slack\""))?;
        match text {
            "json" => Some(WebhookFormat::Json),
            "slack" => Some(WebhookFormat::Slack),
            other => {
                report.value_error(
                    entry.node.span.clone(),
                    format!("unknown webhook format '{other}'"),
                    "write format = \"json\" (the documented JSON payload) or format = \"slack\" (a Slack-compatible {\"text\": ...})",
                );
                None
            }
        }
    });
    let duration = |report: &mut Report<'_>, key: &str, example: &str| -> Option<Dur> {
        let entry = table.get(key)?;
        let d: Dur = report.parsed(entry, &Field::new(section, example), "duration")?;
        if d.0.is_zero() {
            report.value_error(
                entry.node.span.clone(),
                format!("'{key}' in {section} must be more than 0"),
                format!("write it like {example}"),
            );
            return None;
        }
        Some(d)
    };
    let group_wait = duration(report, "group_wait", "group_wait = \"10s\"");
    let group_interval = duration(report, "group_interval", "group_interval = \"5m\"");
    let repeat_interval = duration(report, "repeat_interval", "repeat_interval = \"4h\"");
    let group_by = table
        .get("group_by")
        .and_then(|entry| read_group_by(report, entry, section));

    match (table.get("webhook"), table.get("alertmanager")) {
        (Some(_), Some(am)) => report.value_error(
            am.key_span.clone(),
            "a receiver has both 'webhook' and 'alertmanager'",
            "give each receiver one of them; declare a second [[receiver]] for the other",
        ),
        (None, None) => report.value_error(
            item.span.clone(),
            "receiver has neither 'webhook' nor 'alertmanager'",
            "add webhook = \"http://...\" or alertmanager = \"http://HOST:9093\"",
        ),
        (None, Some(_)) => {
            for key in [
                "format",
                "group_wait",
                "group_interval",
                "repeat_interval",
                "group_by",
            ] {
                if let Some(entry) = table.get(key) {
                    report.value_error(
                        entry.key_span.clone(),
                        format!("'{key}' does not apply to an alertmanager receiver"),
                        "Alertmanager groups, waits and repeats by its own route settings; set them in its configuration, or remove this key",
                    );
                }
            }
        }
        (Some(_), None) => {}
    }
    let (name, name_span) = name?;
    let receiver = if table.contains("alertmanager") {
        Receiver {
            name,
            webhook: None,
            format: None,
            alertmanager: Some(alertmanager?),
            group_wait: None,
            group_interval: None,
            repeat_interval: None,
            group_by: None,
        }
    } else {
        Receiver {
            name,
            webhook: Some(webhook?),
            format: Some(format.unwrap_or_default()),
            alertmanager: None,
            group_wait: Some(group_wait.unwrap_or(DEFAULT_GROUP_WAIT)),
            group_interval: Some(group_interval.unwrap_or(DEFAULT_GROUP_INTERVAL)),
            repeat_interval: Some(repeat_interval.unwrap_or(DEFAULT_REPEAT_INTERVAL)),
            group_by: Some(
                group_by
                    .unwrap_or_else(|| DEFAULT_GROUP_BY.iter().map(|l| l.to_string()).collect()),
            ),
        }
    };
    Some((receiver, name_span))
}

/// `group_by`: label names, each once, or `["..."]` alone. `None` when it has a problem
/// (reported).
fn read_group_by(report: &mut Report<'_>, entry: &Entry, section: &str) -> Option<Vec<String>> {
    report.label_names(
        entry,
        &Field::new(section, "group_by = [\"alertname\", \"service\"]"),
        "label names are letters, digits and '_', not starting with a digit; [\"...\"] groups by every label",
        Some(LabelWildcard {
            value: GROUP_BY_ALL,
            not_alone: "'...' in 'group_by' stands for every label and cannot be listed with others",
            not_alone_hint: "write group_by = [\"...\"] alone to make each alert its own group, or list the labels to group by",
        }),
    )
}

/// Only `http://HOST...` or `https://HOST...`.
fn check_url(report: &mut Report<'_>, entry: &Entry, url: &str, key: &str, example: &str) {
    if url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .is_none_or(|rest| rest.is_empty() || rest.starts_with('/') || rest.contains(' '))
    {
        report.value_error(
            entry.node.span.clone(),
            format!("{key} URL '{url}' is not an http:// or https:// URL"),
            format!("write it like {example}"),
        );
    }
}

/// Reads `[[route]]` tables; returns each route with the span of its `receiver` value
/// (or of the table, when it has none).
pub(crate) fn read_routes(
    report: &mut Report<'_>,
    entry: &Entry,
    section: &str,
) -> Vec<(Route, Span)> {
    let Some(items) = report.array(
        entry,
        &Field::new(section, "[[route]] tables with match and receiver"),
    ) else {
        return Vec::new();
    };
    let mut routes = Vec::new();
    for item in items {
        let Some(table) = item.as_table() else {
            report.value_error(
                item.span.clone(),
                format!(
                    "wrong type in {section}: expected a table, found {}",
                    item.value.type_phrase()
                ),
                "write each route as a [[route]] table with match and receiver",
            );
            continue;
        };
        report.unknown_keys(table, section, ROUTE_KEYS);
        let mut match_ = BTreeMap::new();
        if let Some(m) = table.get("match") {
            let field = Field::new(section, "match = { severity = \"page\" }");
            if let Some(labels) = report.table(m, &field) {
                for label in labels.entries() {
                    if !crate::alert::is_label_name(&label.key) {
                        report.value_error(
                            label.key_span.clone(),
                            format!("'{}' is not a valid label name in 'match'", label.key),
                            "label names are letters, digits and '_', not starting with a digit",
                        );
                    }
                    if let Some(value) = report.string(label, &field) {
                        match_.insert(label.key.clone(), value.to_string());
                    }
                }
            }
        }
        let matchers = table
            .get("matchers")
            .map(|entry| read_matchers(report, entry, section, "matchers", MATCHERS_EXAMPLE))
            .unwrap_or_default();
        let continue_ = table
            .get("continue")
            .and_then(|e| report.boolean(e, &Field::new(section, "continue = true")))
            .unwrap_or(false);
        let receiver = match table.get("receiver") {
            Some(entry) => report
                .string(entry, &Field::new(section, "receiver = \"ops\""))
                .map(|name| (name.to_string(), entry.node.span.clone())),
            None => {
                report.value_error(
                    item.span.clone(),
                    "route has no 'receiver'",
                    "add receiver = \"NAME\": the [[receiver]] that gets the alerts this route matches",
                );
                None
            }
        };
        if let Some((receiver, span)) = receiver {
            routes.push((
                Route {
                    match_,
                    matchers,
                    receiver,
                    continue_,
                },
                span,
            ));
        }
    }
    routes
}

const MATCHERS_EXAMPLE: &str = "matchers = ['severity=~\"page|critical\"', 'service!=\"kv\"']";

/// `matchers` (or an inhibit rule's `source_matchers` / `target_matchers`, named by `key`):
/// an array of strings, each one matcher. A matcher that does not parse is
/// reported at the problem inside its string when the string is written without escapes
/// (so its text and the file line up), else at the whole string.
pub(crate) fn read_matchers(
    report: &mut Report<'_>,
    entry: &Entry,
    section: &str,
    key: &str,
    example: &str,
) -> Vec<Matcher> {
    let Some(items) = report.array(entry, &Field::new(section, example)) else {
        return Vec::new();
    };
    let mut matchers = Vec::new();
    for item in items {
        let Some(text) = item.as_str() else {
            report.value_error(
                item.span.clone(),
                format!(
                    "wrong type in '{key}' of {section}: expected a string, found {}",
                    item.value.type_phrase()
                ),
                format!("write it like {example}"),
            );
            continue;
        };
        match Matcher::parse(text) {
            Ok(matcher) => matchers.push(matcher),
            Err(error) => {
                let span = offset_in_string(report.source.text, item, text, error.at.start)
                    .filter(|_| !error.at.is_empty())
                    .map_or(item.span.clone(), |start| start..start + error.at.len());
                report.value_error(span, error.message, error.hint);
            }
        }
    }
    matchers
}

// === impl Matcher ===

/// The operator of a route matcher.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatchOp {
    /// `=`: the label equals the value.
    Equal,
    /// `!=`: the label does not equal the value.
    NotEqual,
    /// `=~`: the label matches the regex, anchored at both ends.
    Regex,
    /// `!~`: the label does not match the regex.
    NotRegex,
}

impl MatchOp {
    pub fn as_str(self) -> &'static str {
        match self {
            MatchOp::Equal => "=",
            MatchOp::NotEqual => "!=",
            MatchOp::Regex => "=~",
            MatchOp::NotRegex => "!~",
        }
    }
}

/// One `matchers` entry of a `[[route]]`, as Alertmanager writes it: `label=value`,
/// `label!=value`, `label=~regex` or `label!~regex`, the value in double quotes or bare.
/// A label an alert lacks counts as the empty string. Stored and rendered as its text with
/// the value quoted, so a revision reads back the matcher it was made from.
#[derive(Clone, Debug)]
pub struct Matcher {
    pub name: String,
    pub op: MatchOp,
    pub value: String,
    /// `^(?:value)$` for `=~` and `!~`.
    regex: Option<regex::Regex>,
}

/// Why a matcher does not parse, and where in its text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct MatcherError {
    pub message: String,
    /// What to do about it.
    pub hint: String,
    /// The bytes of the matcher's text the problem is in (empty: the whole text).
    pub at: std::ops::Range<usize>,
}

/// Characters of an operator: a run of them is one operator, so `==` or `=!` is an unknown
/// operator rather than `=` followed by a value starting with `=` or `!`.
const OPERATOR_CHARS: &[char] = &['=', '!', '~', '<', '>'];
const MATCHER_HINT: &str =
    "write a matcher like severity=~\"page|critical\", service!=\"kv\" or env=prod";
const REGEX_HINT: &str = "the value of =~ and !~ is a regular expression (RE2 syntax) that must match the whole label value; escape special characters with a backslash, as in path=~\"/api/v1\\..*\"";

impl Matcher {
    /// Parses one matcher in Alertmanager's syntax. A quoted value may escape `\"`, `\\`
    /// and `\n`; any other backslash is kept, so regexes like `\d+` read as written.
    pub fn parse(text: &str) -> Result<Matcher, MatcherError> {
        let fail = |at: std::ops::Range<usize>, message: String, hint: &str| MatcherError {
            message,
            hint: hint.to_string(),
            at,
        };
        let start = text.len() - text.trim_start().len();
        if text.trim().is_empty() {
            return Err(fail(0..0, "matcher is empty".to_string(), MATCHER_HINT));
        }
        let name_end = text[start..]
            .find(|c: char| OPERATOR_CHARS.contains(&c) || c.is_whitespace())
            .map_or(text.len(), |i| start + i);
        let name = &text[start..name_end];
        let op_start = name_end + (text[name_end..].len() - text[name_end..].trim_start().len());
        let op_end = text[op_start..]
            .find(|c: char| !OPERATOR_CHARS.contains(&c))
            .map_or(text.len(), |i| op_start + i);
        let op_text = &text[op_start..op_end];
        if op_text.is_empty() {
            return Err(fail(
                start..text.trim_end().len(),
                format!("matcher '{text}' has no operator"),
                "compare the label with =, !=, =~ or !~, as in severity=\"page\"",
            ));
        }
        if name.is_empty() {
            return Err(fail(
                op_start..op_end,
                format!("matcher '{text}' has no label name"),
                "write the label name before the operator, as in severity=\"page\"",
            ));
        }
        if !crate::alert::is_label_name(name) {
            return Err(fail(
                start..name_end,
                format!("'{name}' is not a valid label name in matcher '{text}'"),
                "label names are letters, digits and '_', not starting with a digit",
            ));
        }
        let op = match op_text {
            "=" => MatchOp::Equal,
            "!=" => MatchOp::NotEqual,
            "=~" => MatchOp::Regex,
            "!~" => MatchOp::NotRegex,
            other => {
                return Err(fail(
                    op_start..op_end,
                    format!("unknown operator '{other}' in matcher '{text}'"),
                    "the operators are = (equals), != (does not equal), =~ (matches a regex) and !~ (does not match); quote a value that starts with = ! ~ < or >, as in env=\"~x\"",
                ));
            }
        };
        let raw_start = op_end + (text[op_end..].len() - text[op_end..].trim_start().len());
        let raw_end = text.trim_end().len().max(raw_start);
        let value = unquote(&text[raw_start..raw_end]).map_err(|(offset, len, message)| {
            fail(
                raw_start + offset..raw_start + offset + len,
                format!("{message} in matcher '{text}'"),
                "write the value in double quotes and escape a quote inside it as \\\", as in summary=\"say \\\"hi\\\"\"",
            )
        })?;
        let regex = match op {
            MatchOp::Regex | MatchOp::NotRegex => {
                // The value alone first: `a)|(b` would otherwise compile inside the anchors
                // and mean something else.
                let anchored = regex::Regex::new(&value)
                    .and_then(|_| regex::Regex::new(&format!("^(?:{value})$")));
                match anchored {
                    Ok(regex) => Some(regex),
                    Err(error) => {
                        return Err(fail(
                            raw_start..raw_end,
                            format!(
                                "invalid regex in matcher '{text}': {}",
                                regex_problem(&error)
                            ),
                            REGEX_HINT,
                        ));
                    }
                }
            }
            MatchOp::Equal | MatchOp::NotEqual => None,
        };
        Ok(Matcher {
            name: name.to_string(),
            op,
            value,
            regex,
        })
    }

    /// Whether the alert with `labels` satisfies the matcher.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let have = labels.get(&self.name).map_or("", String::as_str);
        match self.op {
            MatchOp::Equal => have == self.value,
            MatchOp::NotEqual => have != self.value,
            MatchOp::Regex => self.regex.as_ref().is_some_and(|r| r.is_match(have)),
            MatchOp::NotRegex => !self.regex.as_ref().is_some_and(|r| r.is_match(have)),
        }
    }
}

/// A matcher's value: bare, or in double quotes with Alertmanager's escapes. Errors are
/// (offset, length, problem).
fn unquote(raw: &str) -> Result<String, (usize, usize, &'static str)> {
    let (body, quoted) = match raw.strip_prefix('"') {
        Some(rest) => (rest, 1),
        None => (raw, 0),
    };
    let mut value = String::new();
    let mut closed = false;
    let mut chars = body.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if closed {
            return Err((quoted + i, body.len() - i, "text after the closing quote"));
        }
        match c {
            '\\' => match chars.next() {
                Some((_, 'n')) => value.push('\n'),
                Some((_, e @ ('"' | '\\'))) => value.push(e),
                // A backslash before anything else is kept: `\d` in a regex.
                Some((_, other)) => {
                    value.push('\\');
                    value.push(other);
                }
                None => value.push('\\'),
            },
            '"' if quoted == 1 => closed = true,
            '"' => return Err((i, 1, "unescaped double quote")),
            other => value.push(other),
        }
    }
    if quoted == 1 && !closed {
        return Err((0, raw.len(), "the value does not end with a double quote"));
    }
    Ok(value)
}

/// The regex crate's one-line reason ("unclosed group"), without its drawing of the pattern.
fn regex_problem(error: &regex::Error) -> String {
    match error {
        regex::Error::Syntax(text) => text
            .lines()
            .rev()
            .find_map(|line| line.strip_prefix("error: "))
            .unwrap_or(text)
            .to_string(),
        regex::Error::CompiledTooBig(_) => "the regex is too large".to_string(),
        other => other.to_string(),
    }
}

impl PartialEq for Matcher {
    fn eq(&self, other: &Matcher) -> bool {
        (&self.name, self.op, &self.value) == (&other.name, other.op, &other.value)
    }
}

impl Eq for Matcher {}

impl std::str::FromStr for Matcher {
    type Err = MatcherError;
    fn from_str(text: &str) -> Result<Matcher, MatcherError> {
        Matcher::parse(text)
    }
}

/// `name op "value"`, the value escaped so that [`Matcher::parse`] reads it back.
impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut escaped = String::with_capacity(self.value.len());
        for c in self.value.chars() {
            match c {
                '\\' => escaped.push_str("\\\\"),
                '"' => escaped.push_str("\\\""),
                '\n' => escaped.push_str("\\n"),
                other => escaped.push(other),
            }
        }
        write!(f, "{}{}\"{escaped}\"", self.name, self.op.as_str())
    }
}

impl serde::Serialize for Matcher {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Matcher {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Matcher, D::Error> {
        let text = String::deserialize(deserializer)?;
        Matcher::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Receivers and routes as read from one table, with their spans.
pub(crate) type NotifyLists = (Vec<(Receiver, Span)>, Vec<(Route, Span)>);

/// Merges an environment's receivers and routes onto the base's (see the module comment)
/// and checks the whole: receiver names unique within each list, every route naming a
/// declared receiver.
pub(crate) fn merge_and_check(
    report: &mut Report<'_>,
    base: NotifyLists,
    overlay: NotifyLists,
) -> (Vec<Receiver>, Vec<Route>) {
    check_unique(report, &base.0);
    check_unique(report, &overlay.0);
    let mut receivers = base.0;
    for (receiver, span) in overlay.0 {
        match receivers.iter_mut().find(|(r, _)| r.name == receiver.name) {
            Some(slot) => *slot = (receiver, span),
            None => receivers.push((receiver, span)),
        }
    }
    let mut routes = overlay.1;
    routes.extend(base.1);
    for (route, span) in &routes {
        if !receivers.iter().any(|(r, _)| r.name == route.receiver) {
            let hint = if receivers.is_empty() {
                format!(
                    "declare a [[receiver]] with name = \"{}\" and a webhook or alertmanager URL",
                    route.receiver
                )
            } else {
                with_suggestion(
                    &route.receiver,
                    receivers.iter().map(|(r, _)| r.name.as_str()),
                    format!(
                        "the receivers are: {}",
                        receivers
                            .iter()
                            .map(|(r, _)| r.name.as_str())
                            .collect::<BTreeSet<_>>()
                            .into_iter()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            };
            report.context_error(
                span.clone(),
                format!(
                    "route sends to receiver '{}', which is not declared",
                    route.receiver
                ),
                hint,
            );
        }
    }
    (
        receivers.into_iter().map(|(r, _)| r).collect(),
        routes.into_iter().map(|(r, _)| r).collect(),
    )
}

fn check_unique(report: &mut Report<'_>, receivers: &[(Receiver, Span)]) {
    let mut seen = BTreeSet::new();
    for (receiver, span) in receivers {
        if !seen.insert(receiver.name.as_str()) {
            report.context_error(
                span.clone(),
                format!("receiver '{}' is declared twice", receiver.name),
                "give each receiver its own name",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{MatchOp, Matcher};
    use crate::model::route_alert;
    use std::collections::BTreeMap;
    use std::path::Path;

    const FILE: &str = r#"
[[receiver]]
name = "ops"
webhook = "http://127.0.0.1:1/ops"

[[receiver]]
name = "am"
alertmanager = "http://127.0.0.1:9093"

[[route]]
match = { severity = "page" }
receiver = "am"
continue = true

[[route]]
match = { service = "api" }
receiver = "ops"

[[env.prod.receiver]]
name = "ops"
webhook = "http://10.0.0.1/ops"
format = "slack"

[[env.prod.receiver]]
name = "pager"
webhook = "http://10.0.0.2/page"

[[env.prod.route]]
match = { severity = "page", env = "prod" }
receiver = "pager"
"#;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn overlays_add_and_replace_receivers_and_check_their_routes_first() {
        let dev = crate::resolve("t.toml", FILE, Path::new("/"), "dev").unwrap();
        let names: Vec<&str> = dev.receiver.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["ops", "am"]);
        assert_eq!(dev.route.len(), 2);

        let prod = crate::resolve("t.toml", FILE, Path::new("/"), "prod").unwrap();
        let names: Vec<&str> = prod.receiver.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["ops", "am", "pager"]);
        assert_eq!(
            prod.receiver[0].webhook.as_deref(),
            Some("http://10.0.0.1/ops")
        );
        assert_eq!(prod.route[0].receiver, "pager");
        let page = labels(&[("severity", "page"), ("env", "prod"), ("service", "api")]);
        assert_eq!(
            route_alert(&prod.receiver, &prod.route, &page),
            ["pager"],
            "the overlay's route is checked first and does not continue"
        );
    }

    #[test]
    fn routes_pick_receivers_in_order_and_unmatched_alerts_go_everywhere() {
        let dev = crate::resolve("t.toml", FILE, Path::new("/"), "dev").unwrap();
        let route = |pairs: &[(&str, &str)]| route_alert(&dev.receiver, &dev.route, &labels(pairs));
        assert_eq!(
            route(&[("severity", "page"), ("service", "api")]),
            ["am", "ops"]
        );
        assert_eq!(route(&[("severity", "page"), ("service", "db")]), ["am"]);
        assert_eq!(route(&[("service", "api")]), ["ops"]);
        assert_eq!(
            route(&[("service", "db")]),
            ["ops", "am"],
            "no route matched"
        );
        assert_eq!(
            route_alert(&dev.receiver, &[], &labels(&[("service", "db")])),
            ["ops", "am"],
            "no routes at all"
        );
    }

    #[test]
    fn matchers_parse_as_alertmanager_writes_them() {
        let m = Matcher::parse(r#" severity =~ "page|critical" "#).unwrap();
        assert_eq!(
            (m.name.as_str(), m.op, m.value.as_str()),
            ("severity", MatchOp::Regex, "page|critical")
        );
        let m = Matcher::parse("env=prod").unwrap();
        assert_eq!((m.op, m.value.as_str()), (MatchOp::Equal, "prod"));
        let m = Matcher::parse(r#"service!="kv""#).unwrap();
        assert_eq!((m.op, m.value.as_str()), (MatchOp::NotEqual, "kv"));
        let m = Matcher::parse(r#"instance="a\"b\\c\n\d""#).unwrap();
        assert_eq!(
            (m.op, m.value.as_str()),
            (MatchOp::Equal, "a\"b\\c\n\\d"),
            "\\\" \\\\ and \\n are escapes, any other backslash is kept"
        );
        let m = Matcher::parse("team=").unwrap();
        assert_eq!(m.value, "");
        // Printed with the value quoted, and read back the same.
        for text in [
            r#"severity=~"page|critical""#,
            "env=prod",
            r#"instance="a\"b\\c\n\d""#,
            r#"path!~"/api/v\d+\.json""#,
            "team=",
        ] {
            let m = Matcher::parse(text).unwrap();
            assert_eq!(Matcher::parse(&m.to_string()).unwrap(), m, "{text} -> {m}");
        }
        assert_eq!(
            Matcher::parse("env=prod").unwrap().to_string(),
            r#"env="prod""#
        );
    }

    #[test]
    fn bad_matchers_say_what_and_where() {
        let err = |text: &str| Matcher::parse(text).unwrap_err();
        let e = err("severity==page");
        assert_eq!(
            e.message,
            "unknown operator '==' in matcher 'severity==page'"
        );
        assert_eq!(e.at, 8..10);
        let e = err(r#"service=~"api|(web""#);
        assert_eq!(
            e.message,
            r#"invalid regex in matcher 'service=~"api|(web"': unclosed group"#
        );
        assert_eq!(e.at, 9..19, "the whole value");
        // Valid inside the anchors but not alone: rejected, as it would not mean what it says.
        assert!(err(r#"a=~"x)|(y""#).message.contains("invalid regex"));
        assert!(
            err("bad-label=x")
                .message
                .contains("not a valid label name")
        );
        assert!(
            err(r#"a="x"#)
                .message
                .contains("does not end with a double quote")
        );
        assert!(err(r#"a=x"y"#).message.contains("unescaped double quote"));
        assert!(err("severity").message.contains("has no operator"));
        assert!(err("=x").message.contains("has no label name"));
        assert!(err("  ").message.contains("empty"));
        assert!(err("a=!x").message.contains("unknown operator '=!'"));
    }

    #[test]
    fn matchers_are_anchored_and_a_missing_label_is_empty() {
        let labels = labels(&[("severity", "page"), ("service", "api")]);
        let holds = |text: &str| Matcher::parse(text).unwrap().matches(&labels);
        assert!(holds(r#"severity=~"page|critical""#));
        assert!(!holds(r#"severity=~"pag""#), "anchored at the end");
        assert!(!holds(r#"severity=~"age""#), "anchored at the start");
        assert!(holds(r#"severity=~"p.*""#));
        assert!(!holds(r#"severity!~"page|critical""#));
        assert!(holds(r#"service!~"kv|db""#));
        assert!(holds(r#"service!="kv""#));
        assert!(!holds(r#"service!="api""#));
        assert!(holds("service=api"));
        // A label the alert does not have is the empty string.
        assert!(holds(r#"env!="prod""#));
        assert!(holds(r#"env="""#));
        assert!(holds(r#"env=~".*""#));
        assert!(!holds(r#"env=~".+""#));
        assert!(holds(r#"env!~"prod""#));
    }

    const ROUTES: &str = r#"
[[receiver]]
name = "pager"
webhook = "http://127.0.0.1:1/pager"

[[receiver]]
name = "chat"
webhook = "http://127.0.0.1:1/chat"

[[receiver]]
name = "db"
webhook = "http://127.0.0.1:1/db"

[[route]]
matchers = ['severity=~"page|critical"', 'service!="kv"']
receiver = "pager"
continue = true

[[route]]
match = { team = "storage" }
matchers = ['service=~"kv|db"']
receiver = "db"

[[route]]
matchers = ["severity!~warn.*"]
receiver = "chat"
"#;

    #[test]
    fn routes_need_all_of_match_and_matchers() {
        let dev = crate::resolve("t.toml", ROUTES, Path::new("/"), "dev").unwrap();
        let route = |pairs: &[(&str, &str)]| route_alert(&dev.receiver, &dev.route, &labels(pairs));
        assert_eq!(
            route(&[("severity", "critical"), ("service", "api")]),
            ["pager", "chat"]
        );
        assert_eq!(
            route(&[("severity", "page"), ("service", "kv"), ("team", "storage")]),
            ["db"],
            "service!=\"kv\" excludes it from the pager"
        );
        assert_eq!(
            route(&[("severity", "page"), ("service", "kv")]),
            ["chat"],
            "db's route also needs team=storage"
        );
        assert_eq!(
            route(&[("severity", "pager"), ("service", "api")]),
            ["chat"]
        );
        assert_eq!(
            route(&[("service", "api")]),
            ["chat"],
            "no severity is \"\""
        );
        assert_eq!(
            route(&[("severity", "warning"), ("service", "api")]),
            ["pager", "chat", "db"],
            "no route matched: every receiver"
        );
    }

    #[test]
    fn group_by_defaults_for_webhooks_and_is_kept_as_written() {
        let file = r#"
[[receiver]]
name = "default"
webhook = "http://127.0.0.1:1/a"

[[receiver]]
name = "every"
webhook = "http://127.0.0.1:1/b"
group_by = ["..."]

[[receiver]]
name = "one"
webhook = "http://127.0.0.1:1/c"
group_by = []

[[receiver]]
name = "am"
alertmanager = "http://127.0.0.1:9093"
"#;
        let dev = crate::resolve("t.toml", file, Path::new("/"), "dev").unwrap();
        let group_by: Vec<Option<Vec<String>>> =
            dev.receiver.iter().map(|r| r.group_by.clone()).collect();
        let strings = |l: &[&str]| Some(l.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(
            group_by,
            [
                strings(&["alertname", "service", "env"]),
                strings(&["..."]),
                strings(&[]),
                None
            ]
        );
    }
}
