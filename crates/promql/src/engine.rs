//! The public entry points: parse a query with `promql-parser`, evaluate it over a
//! [`Querier`] at one instant or over a range of steps, and shape the result the way
//! Prometheus's HTTP API reports it. Limits (samples, time, resolution) live here so every
//! caller gets the same protection.

use std::sync::Arc;
use std::time::{Duration, Instant};

use promql_parser::parser::{self, Expr};
use tandem_tsdb::model::{Labels, Matcher, Querier, Sample, Series};

use crate::error::{ErrorKind, EvalError};
use crate::eval::{Evaluator, SeriesBuilder, Steps, Val, duration_ms, selector_matchers};
use crate::value::Value;

/// Prometheus refuses range queries with more points per series than this.
const MAX_POINTS_PER_SERIES: i64 = 11_000;

/// A PromQL engine: its limits and defaults. Cheap to clone and share.
#[derive(Clone, Debug)]
pub struct Engine {
    /// Samples a query may load (selected samples plus subquery points); Prometheus's
    /// `--query.max-samples` defaults to 50 million.
    pub max_samples: usize,
    /// How far back an instant selector looks for a sample (Prometheus: 5m).
    pub lookback_delta: Duration,
    /// Wall-clock budget of one query; `None` for no limit.
    pub timeout: Option<Duration>,
    /// Resolution of subqueries written without one (`x[1h:]`): Prometheus uses the
    /// global evaluation interval, 1m by default.
    pub default_subquery_step: Duration,
}

impl Default for Engine {
    fn default() -> Engine {
        Engine {
            max_samples: 50_000_000,
            lookback_delta: Duration::from_secs(300),
            timeout: Some(Duration::from_secs(120)),
            default_subquery_step: Duration::from_secs(60),
        }
    }
}

/// Parses a query, reporting errors as [`ErrorKind::BadData`].
pub fn parse(query: &str) -> Result<Expr, EvalError> {
    let text = decode_byte_escapes(query)?;
    parser::parse(&text)
        .map_err(|e| EvalError::bad_data(parse_message(query, &e)).at(locate(query, &e)))
}

/// In PromQL (Go) strings, `\xHH` and `\ooo` are bytes, so `"\xc3\xa9"` is `"é"`;
/// promql-parser reads each as a code point (`"Ã©"`). Runs of such escapes above ASCII
/// are decoded here as Go does and written as the characters they spell. A run that is not
/// UTF-8 (`"\xff"`) is refused: label names and values are UTF-8, so no series could match
/// it and no label could carry it (Prometheus refuses it as a label name too).
fn decode_byte_escapes(query: &str) -> Result<std::borrow::Cow<'_, str>, EvalError> {
    if !query.contains('\\') {
        return Ok(std::borrow::Cow::Borrowed(query));
    }
    let b = query.as_bytes();
    // One escape at `i` (just after the backslash is at `i - 1`) naming a byte >= 0x80:
    // the byte and the escape's length after the backslash.
    let byte_escape = |i: usize| -> Option<(u8, usize)> {
        let hex = |c: u8| (c as char).to_digit(16);
        match b.get(i)? {
            b'x' => {
                let v = hex(*b.get(i + 1)?)? * 16 + hex(*b.get(i + 2)?)?;
                (v >= 0x80).then_some((v as u8, 3))
            }
            c @ b'0'..=b'7' => {
                let oct = |c: u8| (b'0'..=b'7').contains(&c).then_some(u32::from(c - b'0'));
                let v = oct(*c)? * 64 + oct(*b.get(i + 1)?)? * 8 + oct(*b.get(i + 2)?)?;
                (0x80..=0xff).contains(&v).then_some((v as u8, 3))
            }
            _ => None,
        }
    };
    let mut out = String::with_capacity(query.len());
    let mut copied = 0;
    let mut quote: Option<u8> = None;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match quote {
            None => {
                if matches!(c, b'"' | b'\'' | b'`') {
                    quote = Some(c);
                } else if c == b'#' {
                    // A comment runs to the end of the line.
                    while i < b.len() && b[i] != b'\n' {
                        i += 1;
                    }
                    continue;
                }
                i += 1;
            }
            Some(q) if c == q => {
                quote = None;
                i += 1;
            }
            Some(q) if c == b'\\' && q != b'`' => {
                let start = i;
                let mut bytes = Vec::new();
                while b.get(i) == Some(&b'\\') {
                    let Some((v, len)) = byte_escape(i + 1) else {
                        break;
                    };
                    bytes.push(v);
                    i += 1 + len;
                }
                if bytes.is_empty() {
                    // Any other escape: skip it whole, so `\"` does not end the string.
                    i += 2;
                    continue;
                }
                let decoded = String::from_utf8(bytes).map_err(|_| {
                    EvalError::bad_data(format!(
                        "invalid UTF-8 in string literal: '{}'",
                        &query[start..i]
                    ))
                    .at(Some((start, i)))
                })?;
                out.push_str(&query[copied..start]);
                out.push_str(&decoded);
                copied = i;
            }
            Some(_) => i += 1,
        }
    }
    if copied == 0 {
        return Ok(std::borrow::Cow::Borrowed(query));
    }
    out.push_str(&query[copied..]);
    Ok(std::borrow::Cow::Owned(out))
}

/// promql-parser reports no positions, but its messages usually quote the offending
/// token ("unknown function with name 'foo'"): point at its first occurrence.
fn locate(query: &str, message: &str) -> Option<(usize, usize)> {
    let quoted = quoted_token(query, message);
    let bracket_error =
        quoted.is_some_and(|(a, b)| b == a + 1 && b"(){}[]".contains(&query.as_bytes()[a]));
    if quoted.is_none() || bracket_error {
        // A quoted bracket is found at its first occurrence, not necessarily the faulty one.
        return unbalanced_bracket(query).or(quoted);
    }
    quoted
}

fn quoted_token(query: &str, message: &str) -> Option<(usize, usize)> {
    let mut parts = message.split('\'');
    parts.next()?;
    let token = parts.next().filter(|t| !t.is_empty())?;
    // The token must be closed by a second quote.
    parts.next()?;
    let start = query.find(token)?;
    Some((start, start + token.len()))
}

/// Where a bracket goes wrong: an opener that is never closed, or a closer without (or
/// not matching) its opener. Brackets inside string literals do not count.
fn unbalanced_bracket(query: &str) -> Option<(usize, usize)> {
    let mut open: Vec<(usize, u8)> = Vec::new();
    let mut quote: Option<u8> = None;
    let bytes = query.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match quote {
            Some(q) => {
                if c == b'\\' && q != b'`' {
                    i += 1;
                } else if c == q {
                    quote = None;
                }
            }
            None => match c {
                b'"' | b'\'' | b'`' => quote = Some(c),
                b'(' | b'{' | b'[' => open.push((i, c)),
                b')' | b'}' | b']' => {
                    let want = match c {
                        b')' => b'(',
                        b'}' => b'{',
                        _ => b'[',
                    };
                    match open.pop() {
                        Some((_, o)) if o == want => {}
                        _ => return Some((i, i + 1)),
                    }
                }
                _ => {}
            },
        }
        i += 1;
    }
    open.last().map(|(at, _)| (*at, *at + 1))
}

/// The matcher sets of every selector in `query` (one set per selector; a selector with
/// `or` inside its braces gives one set per alternative). The series API uses this for its
/// `match[]` parameters, and tests use it to see which series a query may read.
pub fn selectors(query: &str) -> Result<Vec<Vec<Matcher>>, EvalError> {
    fn walk(e: &Expr, out: &mut Vec<Vec<Matcher>>) -> Result<(), EvalError> {
        match e {
            Expr::VectorSelector(vs) => out.extend(selector_matchers(vs)?),
            Expr::MatrixSelector(ms) => out.extend(selector_matchers(&ms.vs)?),
            Expr::Aggregate(a) => {
                walk(&a.expr, out)?;
                if let Some(p) = &a.param {
                    walk(p, out)?;
                }
            }
            Expr::Unary(u) => walk(&u.expr, out)?,
            Expr::Binary(b) => {
                walk(&b.lhs, out)?;
                walk(&b.rhs, out)?;
            }
            Expr::Paren(p) => walk(&p.expr, out)?,
            Expr::Subquery(s) => walk(&s.expr, out)?,
            Expr::Call(c) => {
                for a in &c.args.args {
                    walk(a, out)?;
                }
            }
            Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(&parse(query)?, &mut out)?;
    Ok(out)
}

/// promql-parser's messages say what but rarely where; give the generic one a hint.
fn parse_message(query: &str, e: &str) -> String {
    if e == "invalid promql query" {
        format!("could not parse '{query}' as PromQL")
    } else {
        e.to_string()
    }
}

impl Engine {
    pub fn new() -> Engine {
        Engine::default()
    }

    fn evaluator<'a>(&self, q: &'a dyn Querier, start: i64, end: i64, step: i64) -> Evaluator<'a> {
        Evaluator {
            querier: q,
            query_start: start,
            query_end: end,
            query_step: step,
            lookback: duration_ms(&self.lookback_delta).max(1),
            default_subquery_step: duration_ms(&self.default_subquery_step).max(1),
            max_samples: self.max_samples,
            samples: 0,
            deadline: self.timeout.map(|t| Instant::now() + t),
        }
    }

    /// Evaluates `query` at `t_ms` (milliseconds since the epoch).
    pub fn instant(&self, q: &dyn Querier, query: &str, t_ms: i64) -> Result<Value, EvalError> {
        let expr = parse(query)?;
        let mut ev = self.evaluator(q, t_ms, t_ms, 0);
        let steps = Steps {
            start: t_ms,
            end: t_ms,
            step: 1,
        };
        let val = ev.eval(&expr, steps)?;
        Ok(match val {
            Val::Scalar(v) => Value::Scalar {
                t: t_ms,
                v: v.first().copied().unwrap_or(f64::NAN),
            },
            Val::String(s) => Value::String(s),
            Val::Vector(mut v) => Value::Vector(
                v.pop()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|e| (Arc::unwrap_or_clone(e.labels), Sample { t: t_ms, v: e.v }))
                    .collect(),
            ),
            Val::Range(r) => {
                let mut out: Vec<Series> = (0..r.series.len())
                    .filter_map(|s| {
                        let w = r.window(s, 0);
                        (!w.is_empty()).then(|| Series {
                            labels: r.series[s].labels.clone(),
                            samples: w.to_vec(),
                        })
                    })
                    .collect();
                out.sort_by(|a, b| a.labels.cmp(&b.labels));
                Value::Matrix(out)
            }
        })
    }

    /// Evaluates `query` at `start_ms, start_ms + step_ms, ... <= end_ms`; the result is
    /// always a [`Value::Matrix`], series sorted by labels.
    pub fn range(
        &self,
        q: &dyn Querier,
        query: &str,
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
    ) -> Result<Value, EvalError> {
        if step_ms <= 0 {
            return Err(EvalError::bad_data(
                "zero or negative query resolution step widths are not accepted. Try a positive integer",
            ));
        }
        if end_ms < start_ms {
            return Err(EvalError::bad_data(
                "end timestamp must not be before start time",
            ));
        }
        if (end_ms as i128 - start_ms as i128) / step_ms as i128 > MAX_POINTS_PER_SERIES as i128 {
            return Err(EvalError::bad_data(
                "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)",
            ));
        }
        let expr = parse(query)?;
        match expr.value_type() {
            parser::value::ValueType::Vector | parser::value::ValueType::Scalar => {}
            other => {
                return Err(EvalError::bad_data(format!(
                    "invalid expression type \"{}\" for range query, must be Scalar or instant Vector",
                    if other == parser::value::ValueType::Matrix {
                        "range vector".to_string()
                    } else {
                        other.to_string()
                    }
                )));
            }
        }
        let mut ev = self.evaluator(q, start_ms, end_ms, step_ms);
        let steps = Steps {
            start: start_ms,
            end: end_ms,
            step: step_ms,
        };
        let val = ev.eval(&expr, steps)?;
        let mut series: Vec<Series> = Vec::new();
        match val {
            Val::Scalar(v) => {
                series.push(Series {
                    labels: Labels::default(),
                    samples: v
                        .into_iter()
                        .enumerate()
                        .map(|(i, v)| Sample { t: steps.ts(i), v })
                        .collect(),
                });
            }
            Val::Vector(vs) => {
                let mut builder = SeriesBuilder::default();
                for (i, v) in vs.into_iter().enumerate() {
                    let t = steps.ts(i);
                    for e in v {
                        builder.push(&e.labels, Sample { t, v: e.v });
                    }
                }
                series = builder.into_series();
                series.sort_by(|a, b| a.labels.cmp(&b.labels));
            }
            other => {
                return Err(EvalError::new(
                    ErrorKind::BadData,
                    format!(
                        "invalid expression type \"{}\" for range query, must be Scalar or instant Vector",
                        other.type_name()
                    ),
                ));
            }
        }
        Ok(Value::Matrix(series))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MemQuerier;
    use tandem_tsdb::model::stale_nan;

    fn store(points: &[(i64, f64)]) -> MemQuerier {
        let mut q = MemQuerier::new();
        q.add(
            Labels::new([("__name__", "x"), ("job", "a")]),
            points.iter().map(|&(t, v)| Sample { t, v }),
        );
        q
    }

    fn instant_values(q: &MemQuerier, query: &str, t: i64) -> Vec<(String, f64)> {
        match Engine::new().instant(q, query, t).unwrap() {
            Value::Vector(v) => v.into_iter().map(|(l, s)| (l.to_string(), s.v)).collect(),
            Value::Scalar { v, .. } => vec![(String::new(), v)],
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn range_windows_are_left_open() {
        let q = store(&[(0, 1.0), (30_000, 2.0), (60_000, 3.0)]);
        // (0, 60s] holds the samples at 30s and 60s, not the one at 0.
        assert_eq!(
            instant_values(&q, "count_over_time(x[1m])", 60_000),
            vec![("{job=\"a\"}".to_string(), 2.0)]
        );
    }

    #[test]
    fn lookback_is_left_open_and_staleness_ends_a_series() {
        let q = store(&[(0, 1.0), (60_000, 2.0), (120_000, stale_nan())]);
        assert_eq!(instant_values(&q, "x", 90_000).len(), 1);
        // The stale marker at 2m hides the sample at 1m although it is within 5m.
        assert!(instant_values(&q, "x", 150_000).is_empty());
        // A sample exactly 5m old is out of the lookback window.
        let q = store(&[(0, 1.0)]);
        assert_eq!(instant_values(&q, "x", 299_999).len(), 1);
        assert!(instant_values(&q, "x", 300_000).is_empty());
    }

    #[test]
    fn at_end_pins_every_step_to_the_query_end() {
        let q = store(&[(0, 1.0), (60_000, 2.0), (120_000, 3.0)]);
        let Value::Matrix(m) = Engine::new()
            .range(&q, "x @ end()", 0, 120_000, 60_000)
            .unwrap()
        else {
            panic!("range queries return matrices");
        };
        let values: Vec<f64> = m[0].samples.iter().map(|s| s.v).collect();
        assert_eq!(values, vec![3.0, 3.0, 3.0]);
    }

    #[test]
    fn subquery_steps_are_aligned_to_absolute_time() {
        let q = store(&[
            (0, 1.0),
            (10_000, 2.0),
            (20_000, 3.0),
            (40_000, 4.0),
            (60_000, 5.0),
        ]);
        let Value::Matrix(m) = Engine::new().instant(&q, "x[1m:20s]", 70_000).unwrap() else {
            panic!("a subquery at the top of an instant query is a range vector");
        };
        let ts: Vec<i64> = m[0].samples.iter().map(|s| s.t).collect();
        assert_eq!(ts, vec![20_000, 40_000, 60_000]);
    }

    #[test]
    fn functions_and_arithmetic_drop_the_metric_name_but_filters_keep_it() {
        let q = store(&[(0, 1.0), (30_000, 2.0), (60_000, 3.0)]);
        let names = |query: &str| instant_values(&q, query, 60_000)[0].0.clone();
        assert_eq!(names("rate(x[1m])"), "{job=\"a\"}");
        assert_eq!(names("last_over_time(x[1m])"), "x{job=\"a\"}");
        assert_eq!(names("x > 1"), "x{job=\"a\"}");
        assert_eq!(names("x > bool 1"), "{job=\"a\"}");
        assert_eq!(names("x * 2"), "{job=\"a\"}");
    }

    #[test]
    fn errors_have_prometheus_kinds() {
        let q = store(&[(0, 1.0)]);
        let e = Engine::new().instant(&q, "nosuchfn(x)", 0).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadData);
        assert_eq!(e.position, Some((0, 8)));
        let e = Engine::new()
            .range(&q, "x[5m]", 0, 60_000, 1000)
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadData);
        let mut q2 = store(&[(0, 1.0)]);
        q2.add(
            Labels::new([("__name__", "y"), ("job", "a"), ("i", "1")]),
            [Sample { t: 0, v: 1.0 }],
        );
        q2.add(
            Labels::new([("__name__", "y"), ("job", "a"), ("i", "2")]),
            [Sample { t: 0, v: 1.0 }],
        );
        let e = Engine::new().instant(&q2, "x + on(job) y", 0).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Execution);
        let small = Engine {
            max_samples: 0,
            ..Engine::new()
        };
        assert_eq!(
            small.instant(&q, "x", 0).unwrap_err().kind,
            ErrorKind::Limit
        );
        let hasty = Engine {
            timeout: Some(Duration::ZERO),
            ..Engine::new()
        };
        assert_eq!(
            hasty.instant(&q, "x", 0).unwrap_err().kind,
            ErrorKind::Timeout
        );
    }

    #[test]
    fn byte_escapes_in_strings_are_bytes_as_in_go() {
        let q = store(&[(0, 1.0)]);
        let dst = |repl: &str| -> String {
            let query = format!("label_replace(x, \"dst\", {repl}, \"\", \"\")");
            match Engine::new().instant(&q, &query, 0).unwrap() {
                Value::Vector(v) => v[0].0.get("dst").unwrap_or("").to_string(),
                other => panic!("unexpected {other:?}"),
            }
        };
        assert_eq!(dst(r#""\xc3\xa9\303\251""#), "éé");
        // ASCII escapes and escaped quotes are promql-parser's business, as before.
        assert_eq!(dst(r#""\x41\"\\xff""#), r#"A"\xff"#);
        assert_eq!(dst(r#"`\xff`"#), r#"\xff"#);
        let e = parse(r#"label_replace(x, "\xff", "", "src", "(.*)")"#).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadData);
        assert_eq!(e.position, Some((18, 22)));
        // An unclosed bracket is pointed at even when the parser's message does not say.
        let e = parse("sum(rate(x[5m])").unwrap_err();
        assert_eq!(e.position, Some((3, 4)), "{e:?}");
        let e = parse("x{a=\"(\"}}").unwrap_err();
        assert_eq!(e.position, Some((8, 9)), "{e:?}");
        assert!(parse("x # \"\\xff\n").is_ok());
    }

    #[test]
    fn query_parameter_functions_describe_the_query() {
        let q = store(&[(0, 1.0)]);
        assert_eq!(
            instant_values(&q, "step()", 60_000),
            vec![(String::new(), 0.0)]
        );
        assert_eq!(
            instant_values(&q, "end()", 60_000),
            vec![(String::new(), 60.0)]
        );
        let Value::Matrix(m) = Engine::new()
            .range(&q, "step() + range() + start()", 10_000, 70_000, 30_000)
            .unwrap()
        else {
            panic!("range queries return matrices");
        };
        let values: Vec<f64> = m[0].samples.iter().map(|s| s.v).collect();
        assert_eq!(values, vec![100.0, 100.0, 100.0]);
    }

    #[test]
    fn fill_modifiers_stand_in_for_missing_elements() {
        let mut q = MemQuerier::new();
        q.add(
            Labels::new([("__name__", "l"), ("k", "a")]),
            [Sample { t: 0, v: 1.0 }],
        );
        q.add(
            Labels::new([("__name__", "r"), ("k", "b")]),
            [Sample { t: 0, v: 10.0 }],
        );
        let mut got = instant_values(&q, "l + fill(100) r", 0);
        got.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            got,
            vec![
                ("{k=\"a\"}".to_string(), 101.0),
                ("{k=\"b\"}".to_string(), 110.0)
            ]
        );
        assert_eq!(
            instant_values(&q, "l + fill_right(0) r", 0),
            vec![("{k=\"a\"}".to_string(), 1.0)]
        );
        assert!(instant_values(&q, "l + r", 0).is_empty());
    }

    #[test]
    fn limit_ratio_keeps_a_series_or_its_complement() {
        let mut q = MemQuerier::new();
        for i in 0..50 {
            q.add(
                Labels::new([("__name__", "x"), ("i", &i.to_string())]),
                [Sample { t: 0, v: 1.0 }],
            );
        }
        let count = |query: &str| instant_values(&q, query, 0).len();
        let some = count("limit_ratio(0.3, x)");
        assert!(some > 0 && some < 50, "{some}");
        assert_eq!(count("limit_ratio(0.3, x) or limit_ratio(-0.7, x)"), 50);
        assert_eq!(count("limit_ratio(0.3, x) and limit_ratio(-0.7, x)"), 0);
        assert_eq!(count("limitk(7, x)"), 7);
        let e = Engine::new()
            .instant(&q, "limit_ratio(NaN, x)", 0)
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Execution);
    }

    #[test]
    fn hostile_queries_fail_cleanly() {
        let q = store(&[(0, 1.0), (60_000, 2.0)]);
        let engine = Engine::new();
        for query in [
            "",
            "(((",
            "x[",
            "rate(x[1m] @ 1e300)",
            "x @ -9e15",
            "x offset 100000y",
            "x[100y:1ms]",
            "topk(1e300, x)",
            "quantile(NaN, x)",
            "histogram_quantile(2, x)",
            "label_replace(x, \"a\", \"$99\", \"job\", \"(\")",
            "count_values(\"\", x)",
            "round(x, 0)",
            "predict_linear(x[1m] @ 0, 1e308)",
            "absent_over_time(nonexistent[1m:])",
            "holt_winters(x[5m], 2, 0.5)",
            "limitk(1e300, x)",
            "limit_ratio(-1e300, x)",
            "histogram_quantiles(x, \"\", 0.5)",
            "histogram_quantiles(x, \"q\", 0.1, 0.1)",
            "x + on() group_left fill(1) x",
            "min_of(step(), max_of(NaN, range()))",
            "x{a=\"\\xe2\\x82\"}",
            "\"\\",
            "'\\377\\3",
            "`\\xff",
            "\"é\\xé\\\\xff\"",
            "sum by (job) (x) / on() group_left(job) x",
        ] {
            let _ = engine.instant(&q, query, 60_000);
            let _ = engine.range(&q, query, 0, 120_000, 30_000);
        }
    }
}
