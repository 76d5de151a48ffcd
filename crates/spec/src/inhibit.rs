//! `[[inhibit]]`: alerts that mute others while they fire, as Alertmanager's
//! `inhibit_rules`. Matchers are parsed by the same [`Matcher`](crate::notify::Matcher) as
//! routes, so a bad one is reported at its position; a rule needs at least one source and
//! one target matcher (an empty side would match every alert, which is never meant), and
//! `equal` names labels, each once. An environment's `[[env.NAME.inhibit]]` rules are
//! added to the base's.

use crate::check::{Field, Report};
use crate::model::InhibitRule;
use crate::node::Entry;

const INHIBIT_KEYS: &[&str] = &["source_matchers", "target_matchers", "equal"];
const SOURCE_EXAMPLE: &str = "source_matchers = [\"alertname=CrashLoop\"]";
const TARGET_EXAMPLE: &str = "target_matchers = ['severity=~\"warning|info\"']";
const EQUAL_EXAMPLE: &str = "equal = [\"service\", \"env\"]";

/// Reads `[[inhibit]]` tables. Rules with a problem (reported) are left out.
pub(crate) fn read_inhibits(
    report: &mut Report<'_>,
    entry: &Entry,
    section: &str,
) -> Vec<InhibitRule> {
    let Some(items) = report.array(
        entry,
        &Field::new(
            section,
            "[[inhibit]] tables with source_matchers, target_matchers and equal",
        ),
    ) else {
        return Vec::new();
    };
    let mut rules = Vec::new();
    for item in items {
        let Some(table) = item.as_table() else {
            report.value_error(
                item.span.clone(),
                format!(
                    "wrong type in {section}: expected a table, found {}",
                    item.value.type_phrase()
                ),
                "write each inhibition as an [[inhibit]] table with source_matchers, target_matchers and equal",
            );
            continue;
        };
        for (old, new) in [
            ("source_match", "source_matchers"),
            ("source_match_re", "source_matchers"),
            ("target_match", "target_matchers"),
            ("target_match_re", "target_matchers"),
        ] {
            if let Some(e) = table.get(old) {
                report.value_error(
                    e.key_span.clone(),
                    format!("'{old}' is Alertmanager's deprecated form and is not read here"),
                    format!(
                        "write {new} with matchers instead, as in {}",
                        if new == "source_matchers" {
                            SOURCE_EXAMPLE
                        } else {
                            TARGET_EXAMPLE
                        }
                    ),
                );
            }
        }
        let known: Vec<&str> = INHIBIT_KEYS
            .iter()
            .copied()
            .chain([
                "source_match",
                "source_match_re",
                "target_match",
                "target_match_re",
            ])
            .collect();
        report.unknown_keys(table, section, &known);
        let mut ok = true;
        let mut side = |report: &mut Report<'_>, key: &str, example: &str, role: &str| {
            let Some(e) = table.get(key) else {
                ok = false;
                report.value_error(
                    item.span.clone(),
                    format!("inhibit rule has no '{key}'"),
                    format!("add {example}: the alerts {role}"),
                );
                return Vec::new();
            };
            let written = match &e.node.value {
                crate::node::Value::Array(items) => items.len(),
                _ => 1,
            };
            let matchers = crate::notify::read_matchers(report, e, section, key, example);
            if written == 0 {
                report.value_error(
                    e.node.span.clone(),
                    format!("'{key}' of an inhibit rule is empty"),
                    format!(
                        "an empty list would match every alert; write at least one matcher, as in {example}"
                    ),
                );
            }
            if written == 0 || matchers.len() != written {
                ok = false;
            }
            matchers
        };
        let source_matchers = side(
            report,
            "source_matchers",
            SOURCE_EXAMPLE,
            "that mute others while they fire",
        );
        let target_matchers = side(
            report,
            "target_matchers",
            TARGET_EXAMPLE,
            "that are muted while a source alert fires",
        );
        let equal = match table.get("equal") {
            None => Vec::new(),
            Some(e) => read_equal(report, e, section).unwrap_or_else(|| {
                ok = false;
                Vec::new()
            }),
        };
        if ok {
            rules.push(InhibitRule {
                source_matchers,
                target_matchers,
                equal,
            });
        }
    }
    rules
}

/// `equal`: label names, each once. `None` when it has a problem (reported).
fn read_equal(report: &mut Report<'_>, entry: &Entry, section: &str) -> Option<Vec<String>> {
    report.label_names(
        entry,
        &Field::new(section, EQUAL_EXAMPLE),
        "label names are letters, digits and '_', not starting with a digit, as in equal = [\"service\", \"env\"]",
        None,
    )
}

/// `[system] builtin_inhibit = false`: switches the built-in inhibition off.
pub(crate) fn read_builtin_inhibit(report: &mut Report<'_>, entry: &Entry) -> Option<bool> {
    report.boolean(entry, &Field::new("[system]", "builtin_inhibit = false"))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    const FILE: &str = r#"
[[inhibit]]
source_matchers = ["alertname=CrashLoop"]
target_matchers = ['severity=~"warning|info"']
equal = ["service", "env"]

[[env.prod.inhibit]]
source_matchers = ["alertname=DatabaseDown"]
target_matchers = ["alertname=~Api.*"]

[env.prod.system]
builtin_inhibit = false
"#;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn overlays_add_rules_and_can_switch_the_builtin_inhibition_off() {
        let dev = crate::resolve("t.toml", FILE, Path::new("/"), "dev").unwrap();
        assert_eq!(dev.monitoring.inhibit.len(), 1);
        assert!(dev.monitoring.builtin_inhibit);
        let prod = crate::resolve("t.toml", FILE, Path::new("/"), "prod").unwrap();
        assert_eq!(prod.monitoring.inhibit.len(), 2);
        assert_eq!(prod.monitoring.inhibit[1].equal, Vec::<String>::new());
        assert!(!prod.monitoring.builtin_inhibit);
    }

    #[test]
    fn a_rule_needs_matching_sides_and_equal_labels_and_never_mutes_itself() {
        let dev = crate::resolve("t.toml", FILE, Path::new("/"), "dev").unwrap();
        let rule = &dev.monitoring.inhibit[0];
        let source = labels(&[
            ("alertname", "CrashLoop"),
            ("service", "api"),
            ("env", "dev"),
        ]);
        let target = |service: &str, severity: &str| {
            labels(&[
                ("alertname", "LatencyAnomaly"),
                ("service", service),
                ("env", "dev"),
                ("severity", severity),
            ])
        };
        assert!(rule.inhibits(&source, &target("api", "warning")));
        assert!(!rule.inhibits(&source, &target("web", "warning")), "equal");
        assert!(!rule.inhibits(&source, &target("api", "page")), "target");
        assert!(
            !rule.inhibits(&target("api", "page"), &target("api", "info")),
            "source"
        );
        // Missing on both sides is equal (empty), as in Alertmanager.
        let bare_source = labels(&[("alertname", "CrashLoop")]);
        let bare_target = labels(&[("severity", "info")]);
        assert!(rule.inhibits(&bare_source, &bare_target));
        assert!(!rule.inhibits(&bare_source, &target("api", "info")));
        // An alert on both sides does not mute itself, nor another one on both sides.
        let both = labels(&[("alertname", "CrashLoop"), ("severity", "warning")]);
        assert!(!rule.inhibits(&both, &both));
        let both_too = labels(&[("alertname", "CrashLoop"), ("severity", "info")]);
        assert!(!rule.inhibits(&both_too, &both));
        // A source on one side only still mutes it.
        assert!(rule.inhibits(&bare_source, &both));
    }
}
