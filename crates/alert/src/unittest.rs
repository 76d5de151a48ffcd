//! `tandem test rules`: unit tests for rule files in `promtool test rules` format, run
//! offline against an in-memory store.
//!
//! The procedure is promtool's (`cmd/promtool/unittest.go`): the input series are loaded
//! at `interval` steps, every group is evaluated from time 0 to the last `eval_time` every
//! `evaluation_interval` (in `group_eval_order`, else file order), alert tests compare the
//! firing alerts of the evaluation at or just before their `eval_time`, and PromQL tests
//! query the store once all evaluations are done. The report is promtool's too
//! (`Unit Testing:  FILE`, `  SUCCESS` or `  FAILED:` with `exp:`/`got:`), with a short
//! diff under each failure listing what was expected and not got (`-`) and what was got
//! and not expected (`+`). Queries use tandem's engine, which has Prometheus 3 semantics
//! (left-open range and lookback windows): where Prometheus 2 and 3 disagree, the verdict
//! is Prometheus 3's.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tandem_promql::testing::MemQuerier;
use tandem_promql::{Engine, Value};
use tandem_tsdb::model::{Labels, Sample};

use crate::format::{format_duration, go_e_shortest, go_labels, go_quote, parse_duration};
use crate::group::{AlertState, EvalContext, GroupState};
use crate::rules::{RuleGroup, RuleKind, load_rule_file};
use crate::series::{parse_series, parse_values};

/// `test_rules` failed to write its report (a test failure is not an error).
#[derive(Debug, thiserror::Error)]
pub enum TestRulesError {
    #[error("cannot write the test report: {0}")]
    Write(#[from] std::io::Error),
}

/// A YAML scalar as text (`eval_time: 0`, `value: 1`, `severity: page`).
#[derive(Clone, Debug, Default)]
struct Scalar(String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Scalar, D::Error> {
        use serde::de::Error;
        match serde_yaml::Value::deserialize(d)? {
            serde_yaml::Value::String(s) => Ok(Scalar(s)),
            serde_yaml::Value::Number(n) => Ok(Scalar(if n.as_f64().is_some_and(f64::is_nan) {
                "NaN".to_string()
            } else if n.as_f64() == Some(f64::INFINITY) {
                "+Inf".to_string()
            } else if n.as_f64() == Some(f64::NEG_INFINITY) {
                "-Inf".to_string()
            } else {
                n.to_string()
            })),
            serde_yaml::Value::Bool(b) => Ok(Scalar(b.to_string())),
            serde_yaml::Value::Null => Ok(Scalar(String::new())),
            _ => Err(D::Error::custom(
                "expected a single value, found a list or a map",
            )),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    #[serde(default)]
    rule_files: Vec<String>,
    evaluation_interval: Option<Scalar>,
    #[serde(default)]
    group_eval_order: Vec<String>,
    #[serde(default)]
    tests: Vec<TestGroup>,
    /// Prometheus 3: compare values with a small relative tolerance.
    #[serde(default)]
    fuzzy_compare: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestGroup {
    interval: Option<Scalar>,
    #[serde(default)]
    input_series: Vec<InputSeries>,
    #[serde(default)]
    alert_rule_test: Vec<AlertTest>,
    #[serde(default)]
    promql_expr_test: Vec<ExprTest>,
    #[serde(default)]
    external_labels: BTreeMap<String, String>,
    #[serde(default)]
    external_url: String,
    #[serde(default)]
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InputSeries {
    series: String,
    #[serde(default)]
    values: Scalar,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertTest {
    #[serde(default)]
    eval_time: Scalar,
    #[serde(default)]
    alertname: String,
    #[serde(default)]
    exp_alerts: Option<Vec<ExpAlert>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ExpAlert {
    #[serde(default)]
    exp_labels: BTreeMap<String, Scalar>,
    #[serde(default)]
    exp_annotations: BTreeMap<String, Scalar>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExprTest {
    expr: String,
    #[serde(default)]
    eval_time: Scalar,
    #[serde(default)]
    exp_samples: Option<Vec<ExpSample>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpSample {
    #[serde(default)]
    labels: String,
    value: Scalar,
}

/// Runs the unit tests in each file and writes promtool's report to `out`; returns whether
/// every test in every file passed.
pub fn test_rules(files: &[PathBuf], out: &mut impl Write) -> Result<bool, TestRulesError> {
    let mut all_passed = true;
    for file in files {
        writeln!(out, "Unit Testing:  {}", file.display())?;
        let errors = run_file(file);
        if errors.is_empty() {
            writeln!(out, "  SUCCESS")?;
        } else {
            all_passed = false;
            writeln!(out, "  FAILED:")?;
            for e in errors {
                writeln!(out, "{e}")?;
                writeln!(out)?;
            }
        }
        writeln!(out)?;
    }
    Ok(all_passed)
}

fn duration_of(s: &Scalar, what: &str) -> Result<Duration, String> {
    if s.0.is_empty() {
        return Ok(Duration::ZERO);
    }
    parse_duration(&s.0).map_err(|e| format!("invalid {what}: {e}"))
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Every failure in one test file, as promtool words them.
fn run_file(path: &Path) -> Vec<String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => return vec![format!("cannot read {}: {e}", path.display())],
    };
    let file: TestFile = match serde_yaml::from_str(&text) {
        Ok(f) => f,
        Err(e) => return vec![format!("{}: {e}", path.display())],
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut rule_files = Vec::new();
    for pattern in &file.rule_files {
        match expand_pattern(dir, pattern) {
            Ok(found) => rule_files.extend(found),
            Err(e) => return vec![e],
        }
    }
    let eval_interval = match file
        .evaluation_interval
        .as_ref()
        .map(|s| duration_of(s, "evaluation_interval"))
    {
        Some(Err(e)) => return vec![e],
        Some(Ok(d)) if !d.is_zero() => d,
        _ => Duration::from_secs(60),
    };
    let mut order: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, g) in file.group_eval_order.iter().enumerate() {
        if order.insert(g, i).is_some() {
            return vec![format!("group name repeated in evaluation order: {g}")];
        }
    }
    let mut errors = Vec::new();
    for test in &file.tests {
        errors.extend(run_group(
            test,
            eval_interval,
            &order,
            &rule_files,
            file.fuzzy_compare,
        ));
    }
    errors
}

/// Rule files named by `pattern` (relative to the test file's folder); `*` and `?` in the
/// last path segment match as in a shell.
fn expand_pattern(dir: &Path, pattern: &str) -> Result<Vec<PathBuf>, String> {
    let full = dir.join(pattern);
    let name = full
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !name.contains(['*', '?']) {
        return Ok(vec![full]);
    }
    let parent = full.parent().unwrap_or(Path::new("."));
    let mut found: Vec<PathBuf> = std::fs::read_dir(parent)
        .map_err(|e| format!("cannot list {}: {e}", parent.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| wildcard(&name, &n.to_string_lossy()))
        })
        .collect();
    found.sort();
    Ok(found)
}

fn wildcard(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|c| *c == '*')
}

/// An alert as compared: labels and annotations.
type LabelsAndAnnotations = (BTreeMap<String, String>, BTreeMap<String, String>);

fn run_group(
    test: &TestGroup,
    eval_interval: Duration,
    order: &BTreeMap<&str, usize>,
    rule_files: &[PathBuf],
    fuzzy: bool,
) -> Vec<String> {
    let name_line = if test.name.is_empty() {
        String::new()
    } else {
        format!("    name: {},\n", test.name)
    };
    let interval = match test.interval.as_ref().map(|s| duration_of(s, "interval")) {
        Some(Err(e)) => return vec![e],
        Some(Ok(d)) if !d.is_zero() => d,
        _ => eval_interval,
    };

    // Rules.
    let mut groups: Vec<RuleGroup> = Vec::new();
    let mut load_errors = Vec::new();
    for f in rule_files {
        match load_rule_file(f, interval) {
            Ok(g) => groups.extend(g),
            Err(e) => load_errors.extend(e.0.into_iter().map(|e| e.to_string())),
        }
    }
    if !load_errors.is_empty() {
        return load_errors;
    }
    if !order.is_empty() {
        // Groups named in group_eval_order go first, in that order; any other after them.
        groups.sort_by_key(|g| order.get(g.name.as_str()).copied().unwrap_or(usize::MAX));
    }

    // Input series.
    let mut store = MemQuerier::new();
    let step = ms(interval);
    for s in &test.input_series {
        let labels = match parse_series(&s.series) {
            Ok(l) => l,
            Err(e) => return vec![e],
        };
        let values = match parse_values(&s.values.0) {
            Ok(v) => v,
            Err(e) => return vec![format!("series '{}': {e}", s.series)],
        };
        let samples: Vec<Sample> = values
            .into_iter()
            .enumerate()
            .filter_map(|(i, v)| {
                v.map(|v| Sample {
                    t: i as i64 * step,
                    v,
                })
            })
            .collect();
        store.add(labels, samples);
    }

    // Alert tests by eval time.
    let mut alert_tests: BTreeMap<i64, Vec<&AlertTest>> = BTreeMap::new();
    let mut max_t = 0i64;
    for a in &test.alert_rule_test {
        let t = match duration_of(&a.eval_time, "eval_time") {
            Ok(d) => ms(d),
            Err(e) => return vec![e],
        };
        if a.alertname.is_empty() {
            let in_group = if test.name.is_empty() {
                String::new()
            } else {
                format!(" (in TestGroup {})", test.name)
            };
            return vec![format!(
                "an item under alert_rule_test misses required attribute alertname at eval_time {}{in_group}",
                format_duration(Duration::from_millis(t as u64))
            )];
        }
        alert_tests.entry(t).or_default().push(a);
        max_t = max_t.max(t);
    }
    let mut expr_times = Vec::new();
    for e in &test.promql_expr_test {
        match duration_of(&e.eval_time, "eval_time") {
            Ok(d) => {
                expr_times.push(ms(d));
                max_t = max_t.max(ms(d));
            }
            Err(err) => return vec![err],
        }
    }

    let engine = Engine {
        default_subquery_step: eval_interval,
        ..Engine::default()
    };
    let mut states: Vec<GroupState> = groups.iter().map(GroupState::new).collect();
    let eval_step = ms(eval_interval).max(1);
    let mut errors = Vec::new();
    let mut pending_alert_times = alert_tests.keys().copied().peekable();
    let mut ts = 0i64;
    while ts <= max_t {
        let mut eval_errors = Vec::new();
        for (g, state) in groups.iter().zip(states.iter_mut()) {
            let ctx = EvalContext {
                engine: &engine,
                querier: &store,
                external_labels: &test.external_labels,
                external_url: &test.external_url,
            };
            let out = g.eval(&ctx, ts, state);
            for (l, s) in out.samples {
                store.add(l, [s]);
            }
            for e in out.errors {
                eval_errors.push(format!(
                    "    rule: {}, time: {}, err: {}",
                    e.rule,
                    format_duration(Duration::from_millis(ts as u64)),
                    e.message
                ));
            }
        }
        if !eval_errors.is_empty() {
            errors.extend(eval_errors);
            return errors;
        }
        // Alert tests whose eval_time falls in [ts, ts + evaluation_interval).
        while let Some(t) = pending_alert_times.next_if(|t| ts <= *t && *t < ts + eval_step) {
            for case in &alert_tests[&t] {
                let mut got: Vec<LabelsAndAnnotations> = Vec::new();
                for (g, state) in groups.iter().zip(&states) {
                    for (rule, rs) in g.rules.iter().zip(&state.rules) {
                        if rule.kind != RuleKind::Alert || rule.name != case.alertname {
                            continue;
                        }
                        got.extend(
                            rs.alerts
                                .iter()
                                .filter(|a| a.state == AlertState::Firing)
                                .map(|a| (a.labels.clone(), a.annotations.clone())),
                        );
                    }
                }
                let mut exp: Vec<LabelsAndAnnotations> = case
                    .exp_alerts
                    .iter()
                    .flatten()
                    .map(|a| {
                        let mut labels: BTreeMap<String, String> = a
                            .exp_labels
                            .iter()
                            .map(|(k, v)| (k.clone(), v.0.clone()))
                            .collect();
                        labels.insert("alertname".into(), case.alertname.clone());
                        let ann = a
                            .exp_annotations
                            .iter()
                            .map(|(k, v)| (k.clone(), v.0.clone()))
                            .collect();
                        (labels, ann)
                    })
                    .collect();
                got.sort();
                exp.sort();
                if got != exp {
                    let indent = "            ";
                    let mut msg = format!(
                        "{name_line}    alertname: {}, time: {}, \n        exp:{}, \n        got:{}",
                        case.alertname,
                        format_duration(Duration::from_millis(t as u64)),
                        indent_lines(&alerts_string(&exp), indent),
                        indent_lines(&alerts_string(&got), indent),
                    );
                    let show = |(l, a): &LabelsAndAnnotations| {
                        format!(
                            "{} {}",
                            go_labels(l.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
                            go_labels(a.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                        )
                    };
                    msg.push_str(&diff_lines(&exp, &got, show));
                    errors.push(msg);
                }
            }
        }
        ts += eval_step;
    }

    // PromQL tests, over everything stored and recorded.
    for (case, &t) in test.promql_expr_test.iter().zip(&expr_times) {
        let time = format_duration(Duration::from_millis(t as u64));
        let got = match engine.instant(&store, &case.expr, t) {
            Ok(Value::Vector(v)) => v.into_iter().map(|(l, s)| (l, s.v)).collect::<Vec<_>>(),
            Ok(Value::Scalar { v, .. }) => vec![(Labels::default(), v)],
            Ok(_) => {
                errors.push(format!(
                    "    expr: {}, time: {time}, err: rule result is not a vector or scalar",
                    go_quote(&case.expr)
                ));
                continue;
            }
            Err(e) => {
                errors.push(format!(
                    "    expr: {}, time: {time}, err: {e}",
                    go_quote(&case.expr)
                ));
                continue;
            }
        };
        let mut exp = Vec::new();
        let mut bad = None;
        for s in case.exp_samples.iter().flatten() {
            let labels = if s.labels.trim().is_empty() {
                Ok(Labels::default())
            } else {
                parse_series(&s.labels)
            };
            let value = parse_value(&s.value.0);
            match (labels, value) {
                (Ok(l), Ok(v)) => exp.push((l, v)),
                (Err(e), _) | (_, Err(e)) => {
                    bad = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = bad {
            errors.push(format!(
                "    expr: {}, time: {time}, err: {e}",
                go_quote(&case.expr)
            ));
            continue;
        }
        let mut got = got;
        exp.sort_by(|a, b| a.0.cmp(&b.0));
        got.sort_by(|a, b| a.0.cmp(&b.0));
        let same = exp.len() == got.len()
            && exp
                .iter()
                .zip(&got)
                .all(|(e, g)| e.0 == g.0 && values_equal(e.1, g.1, fuzzy));
        if !same {
            let mut msg = format!(
                "    expr: {}, time: {time},\n        exp: {}\n        got: {}",
                go_quote(&case.expr),
                samples_string(&exp),
                samples_string(&got)
            );
            let exp_keys: Vec<(Labels, String)> = exp
                .iter()
                .map(|(l, v)| (l.clone(), go_e_shortest(*v)))
                .collect();
            let got_keys: Vec<(Labels, String)> = got
                .iter()
                .map(|(l, v)| (l.clone(), go_e_shortest(*v)))
                .collect();
            msg.push_str(&diff_lines(&exp_keys, &got_keys, |(l, v)| {
                format!("{} {v}", go_series(l))
            }));
            errors.push(msg);
        }
    }
    errors
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s.trim() {
        "NaN" | ".nan" | ".NaN" => Ok(f64::NAN),
        "+Inf" | "Inf" | ".inf" | ".Inf" | "+.inf" => Ok(f64::INFINITY),
        "-Inf" | "-.inf" | "-.Inf" => Ok(f64::NEG_INFINITY),
        t => t
            .parse()
            .map_err(|_| format!("value '{s}' is not a number")),
    }
}

fn values_equal(a: f64, b: f64, fuzzy: bool) -> bool {
    if a.to_bits() == b.to_bits() || a == b || (a.is_nan() && b.is_nan()) {
        return true;
    }
    // Prometheus 3's fuzzy_compare: a relative tolerance of 1e-6.
    fuzzy && (a - b).abs() <= 1e-6 * a.abs().max(b.abs())
}

/// A series as Prometheus's Go code prints `labels.Labels`.
fn go_series(l: &Labels) -> String {
    go_labels(l.iter())
}

fn samples_string(samples: &[(Labels, f64)]) -> String {
    if samples.is_empty() {
        return "nil".into();
    }
    samples
        .iter()
        .map(|(l, v)| format!("{} {}", go_series(l), go_e_shortest(*v)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn alerts_string(list: &[LabelsAndAnnotations]) -> String {
    if list.is_empty() {
        return "[]".into();
    }
    let item = |(l, a): &LabelsAndAnnotations| {
        format!(
            "Labels:{}\nAnnotations:{}",
            go_labels(l.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
            go_labels(a.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        )
    };
    let mut s = format!(
        "[\n0:{}",
        indent_lines(&format!("\n{}", item(&list[0])), "  ")
    );
    for (i, la) in list.iter().enumerate().skip(1) {
        s.push_str(&format!(
            ",\n{i}:{}",
            indent_lines(&format!("\n{}", item(la)), "  ")
        ));
    }
    s.push_str("\n]");
    s
}

/// promtool's `indentLines`: every line after the first gets `indent`.
fn indent_lines(text: &str, indent: &str) -> String {
    text.split('\n')
        .enumerate()
        .map(|(i, l)| {
            if i == 0 {
                l.to_string()
            } else {
                format!("{indent}{l}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `\n        diff:` with `- ` for each expected item not got and `+ ` for each item got
/// and not expected (counting duplicates).
fn diff_lines<T: PartialEq>(exp: &[T], got: &[T], show: impl Fn(&T) -> String) -> String {
    let mut unmatched_got: Vec<&T> = got.iter().collect();
    let mut missing = Vec::new();
    for e in exp {
        match unmatched_got.iter().position(|g| *g == e) {
            Some(i) => {
                unmatched_got.remove(i);
            }
            None => missing.push(e),
        }
    }
    let mut s = String::from("\n        diff:");
    for e in missing {
        s.push_str(&format!("\n          - {}", show(e)));
    }
    for g in unmatched_got {
        s.push_str(&format!("\n          + {}", show(g)));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_and_indentation() {
        assert!(wildcard("*.yml", "rules.yml"));
        assert!(!wildcard("*.yml", "rules.yaml"));
        assert_eq!(indent_lines("a\nb", "  "), "a\n  b");
        assert_eq!(alerts_string(&[]), "[]");
        let one = vec![(
            BTreeMap::from([("alertname".to_string(), "A".to_string())]),
            BTreeMap::new(),
        )];
        assert_eq!(
            alerts_string(&one),
            "[\n0:\n  Labels:{alertname=\"A\"}\n  Annotations:{}\n]"
        );
    }
}
