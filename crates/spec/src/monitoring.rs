//! `[monitoring]`: how the environment's server collects, keeps and forwards metrics. An
//! environment overlay (`[env.NAME.monitoring]`) replaces the keys it names.

use crate::check::{Field, Report};
use crate::model::{BuiltinAlerts, Monitoring, RemoteWrite};
use crate::node::Entry;

const MONITORING_KEYS: &[&str] = &[
    "interval",
    "scrape_interval",
    "retention",
    "max_bytes",
    "remote_write",
    "builtin_alerts",
    "rule_interval",
];
const BUILTIN_ALERT_SWITCHES: &[&str] = &[
    "crash_loop",
    "oom_kills",
    "memory_forecast",
    "disk_forecast",
    "fd_forecast",
    "anomalies",
    "slo",
    "regression",
];
const REMOTE_WRITE_KEYS: &[&str] = &["url", "timeout"];

/// Reads `entry` onto `into`: only the keys written change.
pub(crate) fn read_monitoring(
    report: &mut Report<'_>,
    entry: &Entry,
    section: &str,
    into: &mut Monitoring,
) {
    let Some(table) = report.table(
        entry,
        &Field::new(section, "[monitoring] with interval = \"1s\""),
    ) else {
        return;
    };
    report.unknown_keys(table, section, MONITORING_KEYS);
    let duration = |report: &mut Report<'_>, key: &str, example: &str| {
        table.get(key).and_then(|e| {
            let d: Option<crate::units::Dur> =
                report.parsed(e, &Field::new(section, example), "duration");
            match d {
                Some(d) if d.0.is_zero() => {
                    report.value_error(
                        e.node.span.clone(),
                        format!("'{key}' in {section} must be more than 0"),
                        format!("write it like {example}"),
                    );
                    None
                }
                other => other,
            }
        })
    };
    if let Some(d) = duration(report, "interval", "interval = \"1s\"") {
        into.interval = d;
    }
    if let Some(d) = duration(report, "scrape_interval", "scrape_interval = \"15s\"") {
        into.scrape_interval = d;
    }
    if let Some(d) = duration(report, "retention", "retention = \"15d\"") {
        into.retention = d;
    }
    if let Some(d) = duration(report, "rule_interval", "rule_interval = \"15s\"") {
        into.rule_interval = d;
    }
    if let Some(e) = table.get("builtin_alerts") {
        read_builtin_alerts(report, e, section, &mut into.builtin_alerts);
    }
    if let Some(e) = table.get("max_bytes") {
        into.max_bytes = report.parsed(e, &Field::new(section, "max_bytes = \"10GiB\""), "size");
    }
    if let Some(e) = table.get("remote_write")
        && let Some(items) = report.array(
            e,
            &Field::new(
                section,
                "remote_write = [{ url = \"http://127.0.0.1:9090/api/v1/write\" }]",
            ),
        )
    {
        let mut targets = Vec::new();
        for item in items {
            let Some(t) = item.as_table() else {
                report.value_error(
                    item.span.clone(),
                    format!("each remote_write entry in {section} is a table"),
                    "write it like { url = \"http://127.0.0.1:9090/api/v1/write\" }",
                );
                continue;
            };
            let item_section = format!("{}.remote_write]", section.trim_end_matches(']'));
            report.unknown_keys(t, &item_section, REMOTE_WRITE_KEYS);
            let mut target = RemoteWrite {
                url: String::new(),
                timeout: crate::units::Dur::from_secs(30),
            };
            match t.get("url") {
                Some(url_entry) => {
                    if let Some(url) = report.string(
                        url_entry,
                        &Field::new(
                            &item_section,
                            "url = \"http://127.0.0.1:9090/api/v1/write\"",
                        ),
                    ) {
                        if url
                            .strip_prefix("http://")
                            .or_else(|| url.strip_prefix("https://"))
                            .is_none_or(|r| r.is_empty() || r.starts_with('/'))
                        {
                            report.value_error(
                                url_entry.node.span.clone(),
                                format!(
                                    "remote_write URL '{url}' is not an http:// or https:// URL"
                                ),
                                "write it like \"http://127.0.0.1:9090/api/v1/write\"",
                            );
                        }
                        target.url = url.to_string();
                    }
                }
                None => report.value_error(
                    item.span.clone(),
                    format!("a remote_write entry in {section} has no 'url'"),
                    "add url = \"http://HOST:PORT/api/v1/write\"",
                ),
            }
            if let Some(timeout) = t.get("timeout")
                && let Some(d) = report.parsed(
                    timeout,
                    &Field::new(&item_section, "timeout = \"30s\""),
                    "duration",
                )
            {
                target.timeout = d;
            }
            targets.push(target);
        }
        into.remote_write = targets;
    }
}

/// `builtin_alerts = { crash_loop = false, forecast_horizon = "4h" }`: only the keys
/// written change, so an overlay can switch one family off.
fn read_builtin_alerts(
    report: &mut Report<'_>,
    entry: &Entry,
    section: &str,
    into: &mut BuiltinAlerts,
) {
    let item_section = format!("{}.builtin_alerts]", section.trim_end_matches(']'));
    let Some(table) = report.table(
        entry,
        &Field::new(section, "builtin_alerts = { anomalies = false }"),
    ) else {
        return;
    };
    let mut known = BUILTIN_ALERT_SWITCHES.to_vec();
    known.push("forecast_horizon");
    report.unknown_keys(table, &item_section, &known);
    for &key in BUILTIN_ALERT_SWITCHES {
        let Some(e) = table.get(key) else { continue };
        let example = format!("{key} = false");
        let Some(on) = report.boolean(e, &Field::new(&item_section, &example)) else {
            continue;
        };
        let slot = match key {
            "crash_loop" => &mut into.crash_loop,
            "oom_kills" => &mut into.oom_kills,
            "memory_forecast" => &mut into.memory_forecast,
            "disk_forecast" => &mut into.disk_forecast,
            "fd_forecast" => &mut into.fd_forecast,
            "anomalies" => &mut into.anomalies,
            "slo" => &mut into.slo,
            _ => &mut into.regression,
        };
        *slot = on;
    }
    if let Some(e) = table.get("forecast_horizon") {
        let field = Field::new(&item_section, "forecast_horizon = \"2h\"");
        if let Some(d) = report.parsed::<crate::units::Dur>(e, &field, "duration") {
            if d.0 < std::time::Duration::from_secs(60) {
                report.value_error(
                    e.node.span.clone(),
                    format!("'forecast_horizon' in {item_section} must be at least 1m, found '{d}'"),
                    "give how long before a limit is reached the forecasts should warn, like forecast_horizon = \"2h\"",
                );
            } else {
                into.forecast_horizon = d;
            }
        }
    }
}
