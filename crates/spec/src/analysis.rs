//! Canary analysis queries: `analysis = [{ name, query, max, min, no_data }]` in a canary
//! `release`. Each is a PromQL query the server evaluates over its own monitoring store at
//! the end of every canary step, with `{{ revision }}`, `{{ window }}` and the other
//! variables filled in; its one value must stay within `min`/`max` for the step to pass.
//! This is Argo Rollouts' AnalysisTemplate and Flagger's metric checks, without a separate
//! Prometheus. The crate owns the syntax and validation; the engine evaluates.

use crate::alert::{PROMQL_HINT, check_promql, promql_error_offset};
use crate::check::{Field, NamedItem, Report, offset_in_string};
use crate::node::{Entry, Span};
use serde::{Deserialize, Serialize};

/// One analysis query of a canary release.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Analysis {
    /// Names the check in progress lines, gate results and failure reasons.
    pub name: String,
    /// PromQL with `{{ variable }}` placeholders (see [`VARIABLES`]); must give one value.
    pub query: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    #[serde(default, skip_serializing_if = "NoData::is_fail")]
    pub no_data: NoData,
}

/// What a query that returns nothing (an empty vector, or NaN) means for the step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NoData {
    /// The step fails: a gate that could not be evaluated does not let a release through.
    #[default]
    Fail,
    /// The check passes and says it was not evaluated.
    Pass,
}

impl NoData {
    fn is_fail(&self) -> bool {
        *self == NoData::Fail
    }
}

/// The variables a query may use, with what each stands for.
pub const VARIABLES: &[(&str, &str)] = &[
    ("service", "the service's name"),
    ("revision", "the revision being released (the canary)"),
    (
        "old_revision",
        "the live revision the canary is compared with",
    ),
    (
        "window",
        "how long the step has been held, as a PromQL duration in whole seconds (at least 10s)",
    ),
    ("env", "the environment's name"),
];

/// A `{{ name }}` in a query that is not one of [`VARIABLES`], or a `{{` never closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlaceholderError {
    /// Byte offset of the `{{` in the query.
    pub offset: usize,
    pub message: String,
}

/// Replaces every `{{ name }}` in `query` with `value(name)`. Whitespace inside the braces
/// is allowed. A name `value` does not know, or an unclosed `{{`, is an error.
pub fn expand(
    query: &str,
    value: impl Fn(&str) -> Option<String>,
) -> Result<String, PlaceholderError> {
    let mut out = String::with_capacity(query.len());
    let mut rest = query;
    let mut consumed = 0;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err(PlaceholderError {
                offset: consumed + start,
                message: "'{{' is not closed with '}}'".into(),
            });
        };
        let name = after[..end].trim();
        match value(name) {
            Some(text) => out.push_str(&text),
            None => {
                let known: Vec<&str> = VARIABLES.iter().map(|(name, _)| *name).collect();
                return Err(PlaceholderError {
                    offset: consumed + start,
                    message: format!(
                        "unknown variable '{{{{ {name} }}}}'; the variables are {}",
                        known.join(", ")
                    ),
                });
            }
        }
        let skip = start + 2 + end + 2;
        consumed += skip;
        rest = &rest[skip..];
    }
    out.push_str(rest);
    Ok(out)
}

const ANALYSIS_KEYS: &[&str] = &["name", "query", "min", "max", "no_data"];
const NO_DATA: &[&str] = &["fail", "pass"];

/// Reads `analysis = [...]` of a canary release of `service`.
pub(crate) fn read_analysis(
    report: &mut Report<'_>,
    entry: &Entry,
    release_section: &str,
    service: &str,
) -> Vec<Analysis> {
    let example = "analysis = [{ name = \"errors\", query = '...', max = 0.01 }]";
    let Some(items) = report.array(entry, &Field::new(release_section, example)) else {
        return Vec::new();
    };
    let section = format!("{}.analysis]", release_section.trim_end_matches(']'));
    let mut found: Vec<Analysis> = Vec::new();
    let mut names: Vec<(String, Span)> = Vec::new();
    for item in items {
        let Some((table, name)) = report.named_item(
            item,
            &section,
            ANALYSIS_KEYS,
            NamedItem {
                what: "analysis query",
                table_hint: "write each analysis query as a table: { name = \"errors\", query = '...', max = 0.01 }",
                name_example: "name = \"errors\"",
                missing_hint: "add name = \"...\": it names the check in progress and failure messages",
            },
        ) else {
            continue;
        };
        if let Some((name, span)) = &name {
            if names.iter().any(|(other, _)| other == name) {
                report.value_error(
                    span.clone(),
                    format!("analysis query '{name}' is declared twice in {release_section}"),
                    "give each analysis query its own name",
                );
            }
            names.push((name.clone(), span.clone()));
        }
        let query = match table.get("query") {
            Some(query_entry) => report
                .string(
                    query_entry,
                    &Field::new(&section, "query = 'sum(rate(...))'"),
                )
                .inspect(|query| check_query(report, query_entry, query, service))
                .map(str::to_string),
            None => {
                report.value_error(
                    item.span.clone(),
                    "analysis query has no 'query'",
                    "add query = '...': PromQL giving one value, e.g. an error ratio of {{ revision }}",
                );
                None
            }
        };
        let mut bound = |key: &str, example: &str| {
            table
                .get(key)
                .and_then(|bound| report.number(bound, &Field::new(&section, example)))
        };
        let min = bound("min", "min = 0.99");
        let max = bound("max", "max = 0.01");
        if table.get("min").is_none() && table.get("max").is_none() {
            report.value_error(
                item.span.clone(),
                "analysis query has neither 'max' nor 'min'",
                "add max = ... (the highest value that passes) or min = ... (the lowest), or both",
            );
        }
        if let (Some(low), Some(high), Some(max_entry)) = (min, max, table.get("max"))
            && low > high
        {
            report.value_error(
                max_entry.node.span.clone(),
                format!("max {high} is below min {low}: no value can pass"),
                "make max at least min",
            );
        }
        let mut no_data = NoData::Fail;
        if let Some(no_data_entry) = table.get("no_data")
            && let Some(text) =
                report.string(no_data_entry, &Field::new(&section, "no_data = \"pass\""))
        {
            match text {
                "fail" => no_data = NoData::Fail,
                "pass" => no_data = NoData::Pass,
                other => report.value_error(
                    no_data_entry.node.span.clone(),
                    format!("unknown no_data '{other}'"),
                    format!(
                        "use one of: {} (what a query that returns nothing means)",
                        NO_DATA.join(", ")
                    ),
                ),
            }
        }
        if let (Some((name, _)), Some(query)) = (name, query) {
            found.push(Analysis {
                name,
                query,
                min,
                max,
                no_data,
            });
        }
    }
    found
}

/// Checks the placeholders of `query`, then its PromQL with sample values filled in.
fn check_query(report: &mut Report<'_>, entry: &Entry, query: &str, service: &str) {
    let source = report.source.text;
    let at = |offset: usize| {
        offset_in_string(source, &entry.node, query, offset)
            .map_or(entry.node.span.clone(), |start| start..start + 2)
    };
    let sample = |name: &str| -> Option<String> {
        Some(
            match name {
                "service" => service,
                "revision" => "2",
                "old_revision" => "1",
                "window" => "30s",
                "env" => "dev",
                _ => return None,
            }
            .to_string(),
        )
    };
    match expand(query, sample) {
        Err(error) => report.value_error(
            at(error.offset),
            format!("invalid analysis query: {}", error.message),
            "write variables as {{ revision }}, {{ window }}, {{ service }}, {{ old_revision }} or {{ env }}",
        ),
        Ok(expanded) => {
            if let Err(message) = check_promql(&expanded) {
                // Positions carry over only when no placeholder came before the error.
                let span = promql_error_offset(&expanded, &message)
                    .filter(|offset| !query[..(*offset).min(query.len())].contains("{{"))
                    .map_or(entry.node.span.clone(), |offset| {
                        let place = at(offset);
                        place.start..place.start + 1
                    });
                report.value_error(
                    span,
                    format!("invalid PromQL in analysis query: {message}"),
                    PROMQL_HINT,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(name: &str) -> Option<String> {
        match name {
            "revision" => Some("7".into()),
            "window" => Some("30s".into()),
            _ => None,
        }
    }

    #[test]
    fn expands_variables_with_or_without_spaces() {
        let query = "rate(x{revision=\"{{revision}}\"}[{{ window }}])";
        assert_eq!(
            expand(query, values).unwrap(),
            "rate(x{revision=\"7\"}[30s])"
        );
        assert_eq!(expand("up", values).unwrap(), "up");
    }

    #[test]
    fn unknown_and_unclosed_placeholders_are_located() {
        let error = expand("up{a=\"{{ nope }}\"}", values).unwrap_err();
        assert_eq!(error.offset, 6);
        assert!(error.message.contains("'{{ nope }}'"), "{}", error.message);
        let error = expand("x[{{ window ]", values).unwrap_err();
        assert_eq!(error.offset, 2);
        assert!(error.message.contains("not closed"));
    }
}
