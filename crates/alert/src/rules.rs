//! Rule groups: read from Prometheus rule files (YAML) and from tandem's inline
//! `[[alert]]` entries, checked, and held in one typed shape the evaluator runs.
//!
//! A file is refused whole when any rule in it is wrong, with every problem listed as
//! `FILE:LINE: reason`, so a server keeps running the rules it already had. serde_yaml
//! gives positions for syntax and shape errors; for problems found afterwards (a bad
//! expression, a template that does not parse) each rule's line is recovered from the text,
//! rules being matched to their `alert:`/`record:` lines in document order.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use tandem_spec::model::AlertRule;

use crate::format::parse_duration;
use crate::template::Template;

/// Inline alerts are evaluated this often unless the system file says otherwise; rule-file
/// groups without an `interval` use the caller's default, which is this too.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(15);

/// The name (and file) of the group holding the system file's inline `[[alert]]`s.
pub const INLINE_GROUP: &str = "tandem.toml";

/// A group of rules evaluated together, in order, on one interval.
#[derive(Clone, Debug, PartialEq)]
pub struct RuleGroup {
    pub name: String,
    /// The file the group was read from (as given to the loader), or `tandem.toml`.
    pub file: String,
    pub interval: Duration,
    /// Prometheus 3's `query_offset`: queries look this far back from the evaluation time.
    pub query_offset: Duration,
    /// At most this many series per recording rule and alerts per alerting rule (0: no
    /// limit).
    pub limit: usize,
    pub rules: Vec<Rule>,
}

/// Whether a rule alerts or records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleKind {
    #[serde(rename = "alerting")]
    Alert,
    #[serde(rename = "recording")]
    Record,
}

/// One alerting or recording rule.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub kind: RuleKind,
    /// The alert name, or the metric name a recording rule writes.
    pub name: String,
    pub expr: String,
    /// How long an alert stays pending before it fires (alerts only).
    pub for_: Duration,
    /// How long a firing alert keeps firing after its condition is gone (alerts only).
    pub keep_firing_for: Duration,
    /// Labels added to the result (group labels included); templates for alerts.
    pub labels: BTreeMap<String, String>,
    /// Annotation templates (alerts only).
    pub annotations: BTreeMap<String, String>,
    /// Line of the rule in its file (1-based; 0 when unknown, as for inline rules).
    pub line: usize,
}

/// One problem found while loading rules.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct LoadError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

/// Every problem found in one load; displays one per line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadErrors(pub Vec<LoadError>);

impl fmt::Display for LoadErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadErrors {}

/// A YAML scalar read as text, whatever its YAML type (`expr: 1`, `severity: 2`).
#[derive(Clone, Debug, Default)]
struct Scalar(String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Scalar, D::Error> {
        use serde::de::Error;
        match serde_yaml::Value::deserialize(d)? {
            serde_yaml::Value::String(s) => Ok(Scalar(s)),
            serde_yaml::Value::Number(n) => Ok(Scalar(n.to_string())),
            serde_yaml::Value::Bool(b) => Ok(Scalar(b.to_string())),
            serde_yaml::Value::Null => Ok(Scalar(String::new())),
            _ => Err(D::Error::custom("expected a string, found a list or a map")),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileYaml {
    #[serde(default)]
    groups: Vec<GroupYaml>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupYaml {
    name: Option<String>,
    interval: Option<Scalar>,
    query_offset: Option<Scalar>,
    limit: Option<u64>,
    labels: Option<BTreeMap<String, Scalar>>,
    #[serde(default)]
    rules: Vec<RuleYaml>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleYaml {
    alert: Option<Scalar>,
    record: Option<Scalar>,
    expr: Option<Scalar>,
    #[serde(rename = "for")]
    for_: Option<Scalar>,
    keep_firing_for: Option<Scalar>,
    labels: Option<BTreeMap<String, Scalar>>,
    annotations: Option<BTreeMap<String, Scalar>>,
}

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

/// Reads and checks one rule file. Groups without an `interval` get `default_interval`.
pub fn load_rule_file(
    path: &Path,
    default_interval: Duration,
) -> Result<Vec<RuleGroup>, LoadErrors> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        LoadErrors(vec![LoadError {
            file: shown.clone(),
            line: 0,
            message: format!("cannot read the rule file: {e}"),
        }])
    })?;
    parse_rule_file(&shown, &text, default_interval)
}

/// Checks one rule file's text; `file` is the name errors and groups carry.
pub fn parse_rule_file(
    file: &str,
    text: &str,
    default_interval: Duration,
) -> Result<Vec<RuleGroup>, LoadErrors> {
    let err = |line: usize, message: String| LoadError {
        file: file.to_string(),
        line,
        message,
    };
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let parsed: FileYaml = match serde_yaml::from_str(text) {
        Ok(f) => f,
        Err(e) => {
            let line = e.location().map_or(0, |l| l.line());
            let message = e.to_string();
            let message = match message.find(" at line ") {
                Some(cut) => message[..cut].to_string(),
                None => message,
            };
            return Err(LoadErrors(vec![err(
                line,
                format!("invalid rule file: {message}"),
            )]));
        }
    };
    let (group_lines, rule_lines, expr_lines) = key_lines(text);
    let rule_count: usize = parsed.groups.iter().map(|g| g.rules.len()).sum();
    let group_lines = (group_lines.len() == parsed.groups.len()).then_some(group_lines);
    let rule_lines = (rule_lines.len() == rule_count).then_some(rule_lines);
    let mut errors = Vec::new();
    let mut groups: Vec<RuleGroup> = Vec::new();
    let mut rule_index = 0;
    for (gi, g) in parsed.groups.into_iter().enumerate() {
        let first_rule_line = rule_lines.as_ref().and_then(|l| l.get(rule_index).copied());
        let gline = group_lines
            .as_ref()
            .map(|l| l[gi])
            .or(first_rule_line)
            .unwrap_or(0);
        let name = g.name.clone().unwrap_or_default();
        if name.is_empty() {
            errors.push(err(
                gline,
                "rule group has no name; add name: to the group".into(),
            ));
        } else if groups.iter().any(|x| x.name == name) {
            errors.push(err(
                gline,
                format!("rule group '{name}' is declared twice in this file; give each group its own name"),
            ));
        }
        let mut duration = |key: &str, v: &Option<Scalar>| -> Duration {
            match v {
                None => Duration::ZERO,
                Some(s) => parse_duration(&s.0).unwrap_or_else(|e| {
                    errors.push(err(gline, format!("group '{name}': invalid '{key}': {e}")));
                    Duration::ZERO
                }),
            }
        };
        let interval = match duration("interval", &g.interval) {
            d if d.is_zero() => default_interval,
            d => d,
        };
        let query_offset = duration("query_offset", &g.query_offset);
        let group_labels: BTreeMap<String, String> = g
            .labels
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        for k in group_labels.keys() {
            if !is_label_name(k) || k == "__name__" {
                errors.push(err(
                    gline,
                    format!("group '{name}': invalid label name '{k}'"),
                ));
            }
        }
        let mut rules = Vec::new();
        for r in g.rules {
            let line = rule_lines
                .as_ref()
                .and_then(|l| l.get(rule_index).copied())
                .unwrap_or(gline);
            rule_index += 1;
            let next_line = rule_lines
                .as_ref()
                .and_then(|l| l.get(rule_index).copied())
                .unwrap_or(usize::MAX);
            let mut problems = Vec::new();
            if let Some(rule) = check_rule(r, &group_labels, &mut problems) {
                if let Some(problem) = check_expr(&rule) {
                    // Point at the rule's `expr:` line, as promtool does.
                    let at = expr_lines
                        .iter()
                        .copied()
                        .find(|&l| l > line && l < next_line)
                        .unwrap_or(line);
                    errors.push(err(at, problem));
                }
                rules.push(Rule { line, ..rule });
            }
            errors.extend(problems.into_iter().map(|m| err(line, m)));
        }
        groups.push(RuleGroup {
            name,
            file: file.to_string(),
            interval,
            query_offset,
            limit: g.limit.unwrap_or(0) as usize,
            rules,
        });
    }
    if errors.is_empty() {
        Ok(groups)
    } else {
        Err(LoadErrors(errors))
    }
}

/// Lines (1-based) of group `name:` keys that open a list item, of `alert:`/`record:` keys
/// and of `expr:` keys, in document order.
fn key_lines(text: &str) -> (Vec<usize>, Vec<usize>, Vec<usize>) {
    let mut groups = Vec::new();
    let mut rules = Vec::new();
    let mut exprs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if t.starts_with('#') {
            continue;
        }
        let item = t.strip_prefix("- ").map(str::trim_start);
        let key = item.unwrap_or(t);
        if item.is_some() && key.starts_with("name:") {
            groups.push(i + 1);
        }
        if key.starts_with("alert:") || key.starts_with("record:") {
            rules.push(i + 1);
        }
        if key.starts_with("expr:") {
            exprs.push(i + 1);
        }
    }
    (groups, rules, exprs)
}

/// Checks one rule from YAML; problems are pushed, the rule returned when usable.
fn check_rule(
    r: RuleYaml,
    group_labels: &BTreeMap<String, String>,
    problems: &mut Vec<String>,
) -> Option<Rule> {
    let (kind, name) = match (r.alert, r.record) {
        (Some(a), None) => (RuleKind::Alert, a.0),
        (None, Some(rec)) => (RuleKind::Record, rec.0),
        (Some(a), Some(_)) => {
            problems.push(format!(
                "rule '{}' has both 'alert' and 'record'; a rule either alerts or records",
                a.0
            ));
            return None;
        }
        (None, None) => {
            problems.push(
                "rule has neither 'alert' nor 'record'; add alert: NAME or record: NAME".into(),
            );
            return None;
        }
    };
    let dur = |key: &str, v: Option<Scalar>, problems: &mut Vec<String>| -> Duration {
        let Some(v) = v else { return Duration::ZERO };
        if kind == RuleKind::Record {
            problems.push(format!(
                "recording rule '{name}' has '{key}', which only alerting rules take"
            ));
            return Duration::ZERO;
        }
        parse_duration(&v.0).unwrap_or_else(|e| {
            problems.push(format!("rule '{name}': invalid '{key}': {e}"));
            Duration::ZERO
        })
    };
    let for_ = dur("for", r.for_, problems);
    let keep_firing_for = dur("keep_firing_for", r.keep_firing_for, problems);
    if kind == RuleKind::Record && r.annotations.is_some() {
        problems.push(format!(
            "recording rule '{name}' has 'annotations', which only alerting rules take"
        ));
    }
    let mut labels = group_labels.clone();
    labels.extend(
        r.labels
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0)),
    );
    let annotations: BTreeMap<String, String> = r
        .annotations
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    let rule = Rule {
        kind,
        name,
        expr: r.expr.map(|e| e.0).unwrap_or_default(),
        for_,
        keep_firing_for,
        labels,
        annotations,
        line: 0,
    };
    problems.extend(check_parsed(&rule));
    Some(rule)
}

/// The expression's problem, if any.
pub(crate) fn check_expr(rule: &Rule) -> Option<String> {
    let name = &rule.name;
    if rule.expr.trim().is_empty() {
        Some(format!("rule '{name}' has no 'expr'"))
    } else {
        tandem_promql::parse(&rule.expr)
            .err()
            .map(|e| format!("rule '{name}': invalid PromQL in 'expr': {e}"))
    }
}

/// The checks shared by file and inline rules besides the expression: names, labels,
/// templates.
pub(crate) fn check_parsed(rule: &Rule) -> Vec<String> {
    let mut problems = Vec::new();
    let name = &rule.name;
    match rule.kind {
        RuleKind::Record if !is_metric_name(name) => problems.push(format!(
            "'{name}' is not a valid metric name for 'record' (letters, digits, '_' and ':', not starting with a digit)"
        )),
        RuleKind::Alert if name.trim().is_empty() => {
            problems.push("alert name is empty; name the alert, as in alert: ApiDown".into())
        }
        _ => {}
    }
    for (k, v) in &rule.labels {
        if !is_label_name(k) || k == "__name__" {
            problems.push(format!("rule '{name}': invalid label name '{k}'"));
        }
        if rule.kind == RuleKind::Alert
            && let Err(e) = Template::parse(&format!("__alert_{name}"), v)
        {
            problems.push(format!("rule '{name}': label '{k}': {e}"));
        }
    }
    for (k, v) in &rule.annotations {
        if let Err(e) = Template::parse(&format!("__alert_{name}"), v) {
            problems.push(format!("rule '{name}': annotation '{k}': {e}"));
        }
    }
    problems
}

/// The system file's inline `[[alert]]`s as one group named `tandem.toml`.
pub fn inline_group(alerts: &[AlertRule], interval: Duration) -> Result<RuleGroup, LoadErrors> {
    let mut errors = Vec::new();
    let mut rules = Vec::new();
    for a in alerts {
        let rule = Rule {
            kind: RuleKind::Alert,
            name: a.name.clone(),
            expr: a.expr.clone(),
            for_: a.for_.map_or(Duration::ZERO, |d| d.0),
            keep_firing_for: a.keep_firing_for.map_or(Duration::ZERO, |d| d.0),
            labels: a.labels.clone(),
            annotations: a.annotations.clone(),
            line: 0,
        };
        let problems = check_expr(&rule).into_iter().chain(check_parsed(&rule));
        errors.extend(problems.map(|message| LoadError {
            file: INLINE_GROUP.to_string(),
            line: 0,
            message: format!("[[alert]] '{}': {message}", a.name),
        }));
        rules.push(rule);
    }
    if !errors.is_empty() {
        return Err(LoadErrors(errors));
    }
    Ok(RuleGroup {
        name: INLINE_GROUP.to_string(),
        file: INLINE_GROUP.to_string(),
        interval,
        query_offset: Duration::ZERO,
        limit: 0,
        rules,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_groups_rules_and_lines() {
        let text = "groups:\n  - name: a\n    interval: 30s\n    rules:\n      - alert: Down\n        expr: up == 0\n        for: 5m\n        labels: {severity: page}\n        annotations:\n          summary: '{{ $labels.job }} down'\n      - record: job:up\n        expr: 1\n  - name: b\n    rules: []\n";
        let groups = parse_rule_file("r.yml", text, DEFAULT_INTERVAL).unwrap();
        assert_eq!(groups.len(), 2);
        let a = &groups[0];
        assert_eq!(a.interval, Duration::from_secs(30));
        assert_eq!(groups[1].interval, DEFAULT_INTERVAL);
        assert_eq!(a.rules[0].kind, RuleKind::Alert);
        assert_eq!(a.rules[0].for_, Duration::from_secs(300));
        assert_eq!(a.rules[0].line, 5);
        assert_eq!(a.rules[1].kind, RuleKind::Record);
        assert_eq!(a.rules[1].expr, "1");
        assert_eq!(a.rules[1].line, 11);
    }

    #[test]
    fn every_problem_has_file_line_and_reason() {
        let text = "groups:\n  - name: a\n    rules:\n      - alert: A\n        expr: rate(up[5m]\n      - record: 'bad name'\n        expr: up\n        for: 1m\n      - alert: B\n        expr: up\n        annotations:\n          x: '{{ nosuch }}'\n";
        let errors = parse_rule_file("r.yml", text, DEFAULT_INTERVAL).unwrap_err();
        let lines: Vec<String> = errors.0.iter().map(|e| e.to_string()).collect();
        assert!(
            lines[0].starts_with("r.yml:5: rule 'A': invalid PromQL"),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("r.yml:6: recording rule 'bad name' has 'for'")),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("r.yml:6: 'bad name' is not a valid metric name")),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("r.yml:9: rule 'B': annotation 'x'")
                    && l.contains("function \"nosuch\" not defined")),
            "{lines:?}"
        );
        let e = parse_rule_file(
            "r.yml",
            "groups:\n  - name: a\n    rulez: []\n",
            DEFAULT_INTERVAL,
        )
        .unwrap_err();
        assert_eq!(e.0[0].line, 3);
        assert!(e.0[0].message.contains("unknown field `rulez`"), "{e}");
    }

    #[test]
    fn inline_alerts_make_one_group() {
        let alert = AlertRule {
            name: "ApiDown".into(),
            expr: "up == 0".into(),
            for_: Some(tandem_spec::units::Dur::from_secs(60)),
            keep_firing_for: None,
            labels: BTreeMap::new(),
            annotations: BTreeMap::from([("summary".into(), "{{ $labels.job }}".into())]),
        };
        let g = inline_group(std::slice::from_ref(&alert), DEFAULT_INTERVAL).unwrap();
        assert_eq!(
            (g.name.as_str(), g.interval),
            ("tandem.toml", Duration::from_secs(15))
        );
        assert_eq!(g.rules[0].for_, Duration::from_secs(60));
        let bad = AlertRule {
            annotations: BTreeMap::from([("summary".into(), "{{ if }}".into())]),
            ..alert
        };
        let e = inline_group(&[bad], DEFAULT_INTERVAL).unwrap_err();
        assert!(
            e.to_string().starts_with(
                "tandem.toml:0: [[alert]] 'ApiDown': rule 'ApiDown': annotation 'summary'"
            ),
            "{e}"
        );
    }
}
