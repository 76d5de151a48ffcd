//! `[[receiver]]` and `[[route]]`: where alert notifications go. Single values (URLs,
//! durations, formats, which of `webhook` / `alertmanager`) are checked where they are
//! written; names that must be unique and routes that must name a receiver are checked per
//! environment, once overlays are merged.
//!
//! Overlays: an `[[env.NAME.receiver]]` is added to the base's receivers, and one with the
//! name of a base receiver replaces that receiver; `[[env.NAME.route]]`s are checked
//! before the base's routes, so an environment can send some alerts elsewhere first.

use crate::check::{Field, NamedItem, Report, with_suggestion};
use crate::model::{Receiver, Route, WebhookFormat};
use crate::node::{Entry, Node, Span};
use crate::units::Dur;
use std::collections::BTreeSet;

const RECEIVER_KEYS: &[&str] = &[
    "name",
    "webhook",
    "format",
    "alertmanager",
    "group_wait",
    "group_interval",
    "repeat_interval",
];
const ROUTE_KEYS: &[&str] = &["match", "receiver", "continue"];

/// Defaults of a webhook receiver's timings (Alertmanager's own defaults).
pub const DEFAULT_GROUP_WAIT: Dur = Dur(std::time::Duration::from_secs(10));
pub const DEFAULT_GROUP_INTERVAL: Dur = Dur(std::time::Duration::from_secs(5 * 60));
pub const DEFAULT_REPEAT_INTERVAL: Dur = Dur(std::time::Duration::from_secs(4 * 3600));

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
            for key in ["format", "group_wait", "group_interval", "repeat_interval"] {
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
        }
    };
    Some((receiver, name_span))
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
        let mut matchers = std::collections::BTreeMap::new();
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
                        matchers.insert(label.key.clone(), value.to_string());
                    }
                }
            }
        }
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
}
