//! Canary analysis queries: the PromQL checks a canary `release` lists under `analysis`,
//! evaluated at the end of every step over the server's own monitoring store, each one a
//! gate result beside the proxy's figures. The engine does not evaluate PromQL itself: the
//! server hands it an [`AnalysisQuerier`], so this crate stays free of the query engine.

use std::time::Duration;
use tandem_api::GateResult;
use tandem_spec::{Analysis, NoData, analysis::expand};

/// Evaluates PromQL for canary analysis (the server answers from its monitoring store).
pub trait AnalysisQuerier: Send + Sync {
    /// Evaluates `query` at the current time. The values of the result: one per series of
    /// an instant vector, one for a scalar; an error says why the query could not be run.
    fn instant(&self, query: &str) -> Result<Vec<f64>, String>;
}

/// `{{ window }}` is never shorter than this: a rate needs at least two samples of the
/// 1 s collection, and a few more make it steadier.
pub const MIN_WINDOW: Duration = Duration::from_secs(10);

/// What the placeholders of one step's queries stand for.
#[derive(Clone, Debug)]
pub struct StepVariables<'a> {
    pub env: &'a str,
    pub service: &'a str,
    pub revision: u64,
    /// The live revision the canary is compared with (0 when none is live).
    pub old_revision: u64,
    /// How long the step has been held.
    pub held: Duration,
}

impl StepVariables<'_> {
    fn value(&self, name: &str) -> Option<String> {
        Some(match name {
            "env" => self.env.to_string(),
            "service" => self.service.to_string(),
            "revision" => self.revision.to_string(),
            "old_revision" => self.old_revision.to_string(),
            "window" => format!("{}s", window_seconds(self.held)),
            _ => return None,
        })
    }
}

/// Whole seconds, rounded up, and at least [`MIN_WINDOW`].
fn window_seconds(held: Duration) -> u64 {
    let seconds = held.as_secs() + u64::from(held.subsec_nanos() > 0);
    seconds.max(MIN_WINDOW.as_secs())
}

/// Runs every check and returns one gate result each, in the order written.
pub fn evaluate(
    querier: &dyn AnalysisQuerier,
    checks: &[Analysis],
    variables: &StepVariables<'_>,
) -> Vec<GateResult> {
    checks
        .iter()
        .map(|check| evaluate_one(querier, check, variables))
        .collect()
}

fn evaluate_one(
    querier: &dyn AnalysisQuerier,
    check: &Analysis,
    variables: &StepVariables<'_>,
) -> GateResult {
    let result = |measured: String, passed: bool| GateResult {
        check: format!("analysis '{}'", check.name),
        measured,
        allowed: allowed(check),
        passed,
    };
    // The file was validated, so placeholders are known; an error here would be a bug, and
    // a gate that cannot be evaluated fails.
    let query = match expand(&check.query, |name| variables.value(name)) {
        Ok(query) => query,
        Err(error) => return result(format!("not evaluated: {}", error.message), false),
    };
    let values = match querier.instant(&query) {
        Ok(values) => values,
        Err(error) => return result(format!("query failed: {error}"), false),
    };
    let values: Vec<f64> = values.into_iter().filter(|v| !v.is_nan()).collect();
    match values.as_slice() {
        [] => match check.no_data {
            NoData::Fail => result("no data".into(), false),
            NoData::Pass => result("no data (passes: no_data = \"pass\")".into(), true),
        },
        [value] => {
            let within = check.min.is_none_or(|min| *value >= min)
                && check.max.is_none_or(|max| *value <= max);
            result(format_value(*value), within)
        }
        many => result(
            format!(
                "{} series (it must give one value: aggregate with sum, max or avg)",
                many.len()
            ),
            false,
        ),
    }
}

fn allowed(check: &Analysis) -> String {
    match (check.min, check.max) {
        (Some(min), Some(max)) => format!("{} to {}", format_value(min), format_value(max)),
        (Some(min), None) => format!(">= {}", format_value(min)),
        (None, Some(max)) => format!("<= {}", format_value(max)),
        (None, None) => "any".into(),
    }
}

/// Up to four significant digits, without a trailing exponent for everyday magnitudes.
fn format_value(value: f64) -> String {
    if value == 0.0 || !value.is_finite() {
        return value.to_string();
    }
    let magnitude = value.abs().log10().floor() as i32;
    if !(-4..=9).contains(&magnitude) {
        return format!("{value:.3e}");
    }
    let decimals = (3 - magnitude).max(0) as usize;
    let text = format!("{value:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Answers from a fixed table and remembers the queries it was asked.
    struct Answers {
        answers: Vec<(&'static str, Result<Vec<f64>, String>)>,
        asked: Mutex<Vec<String>>,
    }

    impl AnalysisQuerier for Answers {
        fn instant(&self, query: &str) -> Result<Vec<f64>, String> {
            self.asked.lock().unwrap().push(query.to_string());
            self.answers
                .iter()
                .find(|(prefix, _)| query.starts_with(prefix))
                .map(|(_, answer)| answer.clone())
                .unwrap_or_else(|| Ok(Vec::new()))
        }
    }

    fn check(name: &str, query: &str, min: Option<f64>, max: Option<f64>) -> Analysis {
        Analysis {
            name: name.into(),
            query: query.into(),
            min,
            max,
            no_data: NoData::Fail,
        }
    }

    const STEP: StepVariables<'static> = StepVariables {
        env: "dev",
        service: "api",
        revision: 7,
        old_revision: 6,
        held: Duration::from_millis(30_200),
    };

    #[test]
    fn fills_variables_and_judges_bounds() {
        let querier = Answers {
            answers: vec![
                ("errors", Ok(vec![0.002])),
                ("latency", Ok(vec![0.45])),
                ("apdex", Ok(vec![0.8])),
            ],
            asked: Mutex::new(Vec::new()),
        };
        let checks = [
            check(
                "errors",
                "errors{service=\"{{ service }}\",revision=\"{{revision}}\",old=\"{{ old_revision }}\",env=\"{{ env }}\"}[{{ window }}]",
                None,
                Some(0.01),
            ),
            check("latency", "latency", None, Some(0.3)),
            check("apdex", "apdex", Some(0.9), Some(1.0)),
        ];
        let gates = evaluate(&querier, &checks, &STEP);
        assert_eq!(
            querier.asked.lock().unwrap()[0],
            "errors{service=\"api\",revision=\"7\",old=\"6\",env=\"dev\"}[31s]"
        );
        assert_eq!(
            gates
                .iter()
                .map(|g| (
                    g.check.as_str(),
                    g.measured.as_str(),
                    g.allowed.as_str(),
                    g.passed
                ))
                .collect::<Vec<_>>(),
            vec![
                ("analysis 'errors'", "0.002", "<= 0.01", true),
                ("analysis 'latency'", "0.45", "<= 0.3", false),
                ("analysis 'apdex'", "0.8", "0.9 to 1", false),
            ]
        );
    }

    #[test]
    fn no_data_many_series_and_errors() {
        let querier = Answers {
            answers: vec![
                ("nan", Ok(vec![f64::NAN])),
                ("many", Ok(vec![1.0, 2.0])),
                ("broken", Err("bad_data: unknown function".into())),
            ],
            asked: Mutex::new(Vec::new()),
        };
        let mut lenient = check("quiet", "empty", None, Some(1.0));
        lenient.no_data = NoData::Pass;
        let checks = [
            check("nan", "nan", None, Some(1.0)),
            lenient,
            check("many", "many", None, Some(5.0)),
            check("broken", "broken", Some(0.0), None),
        ];
        let gates = evaluate(&querier, &checks, &STEP);
        let summary: Vec<(&str, bool)> = gates
            .iter()
            .map(|g| (g.measured.as_str(), g.passed))
            .collect();
        assert_eq!(summary[0], ("no data", false));
        assert!(summary[1].1 && summary[1].0.starts_with("no data"));
        assert!(!summary[2].1 && summary[2].0.starts_with("2 series"));
        assert_eq!(
            summary[3],
            ("query failed: bad_data: unknown function", false)
        );
    }

    #[test]
    fn window_is_whole_seconds_and_never_below_the_minimum() {
        assert_eq!(window_seconds(Duration::from_secs(2)), 10);
        assert_eq!(window_seconds(Duration::from_millis(30_000)), 30);
        assert_eq!(window_seconds(Duration::from_millis(30_001)), 31);
    }

    #[test]
    fn values_read_well() {
        assert_eq!(format_value(0.0123456), "0.01235");
        assert_eq!(format_value(268435456.0), "268435456");
        assert_eq!(format_value(1.0), "1");
        assert_eq!(format_value(0.25), "0.25");
        assert_eq!(format_value(1.5e-7), "1.500e-7");
    }
}
