//! PromQL's function set. Functions over range vectors (`rate`, `*_over_time`, ...) cut
//! each step's window out of the selected samples and follow Prometheus's arithmetic to the
//! letter (extrapolation of `rate`/`increase`/`delta`, Kahan sums, regression); the others
//! work element by element on each step's vector.

use std::f64::consts::PI;
use std::sync::Arc;

use promql_parser::parser::{Call, Expr};
use tandem_tsdb::model::{METRIC_NAME, MatchOp, Sample};

use crate::aggregate::{kahan_inc, quantile};
use crate::error::EvalError;
use crate::eval::{
    Elem, Evaluator, FastMap, Labels, Lbl, RangeArg, Relabel, Steps, Val, Vector, all_unique,
    check_unique_labels, drop_metric_name, selector_matchers, without_metric_name,
};

fn arg(call: &Call, i: usize) -> Result<&Expr, EvalError> {
    call.args.args.get(i).map(|b| &**b).ok_or_else(|| {
        EvalError::bad_data(format!(
            "missing argument {} in call to function '{}'",
            i + 1,
            call.func.name
        ))
    })
}

fn unwrap_parens(mut e: &Expr) -> &Expr {
    while let Expr::Paren(p) = e {
        e = &p.expr;
    }
    e
}

fn string_arg(
    ev: &mut Evaluator<'_>,
    call: &Call,
    i: usize,
    steps: Steps,
) -> Result<String, EvalError> {
    match ev.eval(arg(call, i)?, steps)? {
        Val::String(s) => Ok(s),
        other => Err(EvalError::bad_data(format!(
            "expected type string in call to function '{}', got {}",
            call.func.name,
            other.type_name()
        ))),
    }
}

pub(crate) fn eval(ev: &mut Evaluator<'_>, call: &Call, steps: Steps) -> Result<Val, EvalError> {
    let name = call.func.name;
    let ctx = format!("call to function '{name}'");
    let n = steps.len();
    match name {
        "time" => Ok(Val::Scalar(
            steps.iter().map(|t| t as f64 / 1000.0).collect(),
        )),
        "pi" => Ok(Val::Scalar(vec![PI; n])),
        // The query's own parameters, in seconds; an instant query has step and range 0.
        // Inside a subquery they still describe the outer query, as in Prometheus.
        "step" => Ok(Val::Scalar(vec![ev.query_step as f64 / 1000.0; n])),
        "range" => Ok(Val::Scalar(vec![
            (ev.query_end as f64
                - ev.query_start as f64)
                / 1000.0;
            n
        ])),
        "start" => Ok(Val::Scalar(vec![ev.query_start as f64 / 1000.0; n])),
        "end" => Ok(Val::Scalar(vec![ev.query_end as f64 / 1000.0; n])),
        "min_of" | "max_of" => {
            let a = ev.eval_scalar(arg(call, 0)?, steps, &ctx)?;
            let b = ev.eval_scalar(arg(call, 1)?, steps, &ctx)?;
            let f = if name == "min_of" { go_min } else { go_max };
            Ok(Val::Scalar(
                a.into_iter().zip(b).map(|(a, b)| f(a, b)).collect(),
            ))
        }
        "vector" => {
            let s = ev.eval_scalar(arg(call, 0)?, steps, &ctx)?;
            let empty = Lbl::default();
            Ok(Val::Vector(
                s.into_iter()
                    .enumerate()
                    .map(|(i, v)| {
                        vec![Elem {
                            labels: empty.clone(),
                            v,
                            t: steps.ts(i),
                        }]
                    })
                    .collect(),
            ))
        }
        "scalar" => {
            let v = ev.eval_vector(arg(call, 0)?, steps, &ctx)?;
            Ok(Val::Scalar(
                v.into_iter()
                    .map(|v| if v.len() == 1 { v[0].v } else { f64::NAN })
                    .collect(),
            ))
        }
        "abs" => map_floats(ev, call, steps, f64::abs),
        "ceil" => map_floats(ev, call, steps, f64::ceil),
        "floor" => map_floats(ev, call, steps, f64::floor),
        "exp" => map_floats(ev, call, steps, f64::exp),
        "sqrt" => map_floats(ev, call, steps, f64::sqrt),
        "ln" => map_floats(ev, call, steps, f64::ln),
        "log2" => map_floats(ev, call, steps, f64::log2),
        "log10" => map_floats(ev, call, steps, f64::log10),
        "sin" => map_floats(ev, call, steps, f64::sin),
        "cos" => map_floats(ev, call, steps, f64::cos),
        "tan" => map_floats(ev, call, steps, f64::tan),
        "asin" => map_floats(ev, call, steps, f64::asin),
        "acos" => map_floats(ev, call, steps, f64::acos),
        "atan" => map_floats(ev, call, steps, f64::atan),
        "sinh" => map_floats(ev, call, steps, f64::sinh),
        "cosh" => map_floats(ev, call, steps, f64::cosh),
        "tanh" => map_floats(ev, call, steps, f64::tanh),
        "asinh" => map_floats(ev, call, steps, f64::asinh),
        "acosh" => map_floats(ev, call, steps, f64::acosh),
        "atanh" => map_floats(ev, call, steps, f64::atanh),
        "rad" => map_floats(ev, call, steps, |v| v * PI / 180.0),
        "deg" => map_floats(ev, call, steps, |v| v * 180.0 / PI),
        "sgn" => map_floats(ev, call, steps, |v| {
            if v < 0.0 {
                -1.0
            } else if v > 0.0 {
                1.0
            } else {
                v
            }
        }),
        "round" => {
            let to_nearest = match call.args.args.get(1) {
                Some(e) => ev.eval_scalar(e, steps, &ctx)?,
                None => vec![1.0; n],
            };
            let v = ev.eval_vector(arg(call, 0)?, steps, &ctx)?;
            map_steps(v, |i, x| {
                let inv = 1.0 / to_nearest[i];
                Some((x * inv + 0.5).floor() / inv)
            })
        }
        "clamp" | "clamp_min" | "clamp_max" => {
            let v = ev.eval_vector(arg(call, 0)?, steps, &ctx)?;
            let (lo, hi) = match name {
                "clamp" => (
                    ev.eval_scalar(arg(call, 1)?, steps, &ctx)?,
                    ev.eval_scalar(arg(call, 2)?, steps, &ctx)?,
                ),
                "clamp_min" => (
                    ev.eval_scalar(arg(call, 1)?, steps, &ctx)?,
                    vec![f64::INFINITY; n],
                ),
                _ => (
                    vec![f64::NEG_INFINITY; n],
                    ev.eval_scalar(arg(call, 1)?, steps, &ctx)?,
                ),
            };
            let mut out = Vec::with_capacity(n);
            let mut relabel = Relabel::new(drop_metric_name);
            for (i, v) in v.into_iter().enumerate() {
                if hi[i] < lo[i] {
                    out.push(Vec::new());
                    continue;
                }
                let step: Vector = v
                    .into_iter()
                    .map(|e| Elem {
                        labels: relabel.get(&e.labels),
                        v: lo[i].max(hi[i].min(e.v)),
                        t: e.t,
                    })
                    .collect();
                check_unique_labels(&step)?;
                out.push(step);
            }
            Ok(Val::Vector(out))
        }
        "day_of_month" | "day_of_week" | "day_of_year" | "days_in_month" | "hour" | "minute"
        | "month" | "year" => date_function(ev, call, steps, name),
        "timestamp" => {
            let a = unwrap_parens(arg(call, 0)?);
            let from_selector = matches!(a, Expr::VectorSelector(_));
            let v = match a {
                Expr::VectorSelector(vs) => ev.vector_selector(vs, steps)?,
                _ => ev.eval_vector(a, steps, &ctx)?,
            };
            let mut out = Vec::with_capacity(n);
            let mut relabel = Relabel::new(drop_metric_name);
            for (i, v) in v.into_iter().enumerate() {
                let step: Vector = v
                    .into_iter()
                    .map(|e| Elem {
                        labels: relabel.get(&e.labels),
                        v: if from_selector { e.t } else { steps.ts(i) } as f64 / 1000.0,
                        t: steps.ts(i),
                    })
                    .collect();
                check_unique_labels(&step)?;
                out.push(step);
            }
            Ok(Val::Vector(out))
        }
        "sort" | "sort_desc" => {
            let desc = name == "sort_desc";
            let mut v = ev.eval_vector(arg(call, 0)?, steps, &ctx)?;
            for step in &mut v {
                step.sort_by(|a, b| {
                    use std::cmp::Ordering;
                    match (a.v.is_nan(), b.v.is_nan()) {
                        (true, true) => Ordering::Equal,
                        (true, false) => Ordering::Greater,
                        (false, true) => Ordering::Less,
                        _ => {
                            let o = a.v.partial_cmp(&b.v).unwrap_or(Ordering::Equal);
                            if desc { o.reverse() } else { o }
                        }
                    }
                });
            }
            Ok(Val::Vector(v))
        }
        "sort_by_label" | "sort_by_label_desc" => {
            let desc = name == "sort_by_label_desc";
            let mut names = Vec::new();
            for i in 1..call.args.args.len() {
                names.push(string_arg(ev, call, i, steps)?);
            }
            let mut v = ev.eval_vector(arg(call, 0)?, steps, &ctx)?;
            for step in &mut v {
                step.sort_by(|a, b| {
                    let mut o = std::cmp::Ordering::Equal;
                    for l in &names {
                        let (x, y) = (a.labels.get(l).unwrap_or(""), b.labels.get(l).unwrap_or(""));
                        if x != y {
                            o = natural_cmp(x, y);
                            break;
                        }
                    }
                    if o == std::cmp::Ordering::Equal {
                        o = a.labels.cmp(&b.labels);
                    }
                    if desc { o.reverse() } else { o }
                });
            }
            Ok(Val::Vector(v))
        }
        "absent" => {
            let a = unwrap_parens(arg(call, 0)?);
            let v = ev.eval_vector(a, steps, &ctx)?;
            let labels = Arc::new(absent_labels(a)?);
            Ok(Val::Vector(
                v.into_iter()
                    .enumerate()
                    .map(|(i, v)| {
                        if v.is_empty() {
                            vec![Elem {
                                labels: labels.clone(),
                                v: 1.0,
                                t: steps.ts(i),
                            }]
                        } else {
                            Vec::new()
                        }
                    })
                    .collect(),
            ))
        }
        "label_replace" => label_replace(ev, call, steps),
        "label_join" => label_join(ev, call, steps),
        "histogram_quantile" => {
            let q = ev.eval_scalar(arg(call, 0)?, steps, &ctx)?;
            let v = ev.eval_vector(arg(call, 1)?, steps, &ctx)?;
            classic_histogram(v, |i, buckets| bucket_quantile(q[i], buckets))
        }
        "histogram_quantiles" => histogram_quantiles(ev, call, steps),
        "histogram_fraction" => {
            let lo = ev.eval_scalar(arg(call, 0)?, steps, &ctx)?;
            let hi = ev.eval_scalar(arg(call, 1)?, steps, &ctx)?;
            let v = ev.eval_vector(arg(call, 2)?, steps, &ctx)?;
            classic_histogram(v, |i, buckets| bucket_fraction(lo[i], hi[i], buckets))
        }
        // These read native histograms only; float samples are ignored, and tandem stores
        // no native histograms yet.
        "histogram_count" | "histogram_sum" | "histogram_avg" | "histogram_stddev"
        | "histogram_stdvar" => {
            ev.eval_vector(arg(call, 0)?, steps, &ctx)?;
            Ok(Val::Vector((0..n).map(|_| Vec::new()).collect()))
        }
        "rate"
        | "increase"
        | "delta"
        | "irate"
        | "idelta"
        | "changes"
        | "resets"
        | "deriv"
        | "predict_linear"
        | "avg_over_time"
        | "min_over_time"
        | "max_over_time"
        | "sum_over_time"
        | "count_over_time"
        | "last_over_time"
        | "first_over_time"
        | "present_over_time"
        | "quantile_over_time"
        | "stddev_over_time"
        | "stdvar_over_time"
        | "mad_over_time"
        | "holt_winters"
        | "double_exponential_smoothing"
        | "absent_over_time"
        | "ts_of_last_over_time"
        | "ts_of_first_over_time"
        | "ts_of_max_over_time"
        | "ts_of_min_over_time" => range_function(ev, call, steps),
        _ => Err(EvalError::bad_data(format!(
            "function '{name}' is not supported"
        ))),
    }
}

/// Go's `math.Max`: an infinity wins over NaN, NaN over any other number, and +0 over -0.
fn go_max(a: f64, b: f64) -> f64 {
    if a == f64::INFINITY || b == f64::INFINITY {
        f64::INFINITY
    } else if a.is_nan() || b.is_nan() {
        f64::NAN
    } else if a == 0.0 && b == 0.0 {
        if a.is_sign_negative() { b } else { a }
    } else if a > b {
        a
    } else {
        b
    }
}

/// Go's `math.Min`, the mirror image of [`go_max`].
fn go_min(a: f64, b: f64) -> f64 {
    if a == f64::NEG_INFINITY || b == f64::NEG_INFINITY {
        f64::NEG_INFINITY
    } else if a.is_nan() || b.is_nan() {
        f64::NAN
    } else if a == 0.0 && b == 0.0 {
        if a.is_sign_negative() { a } else { b }
    } else if a < b {
        a
    } else {
        b
    }
}

/// Applies `f` to every element, dropping the metric name.
fn map_floats(
    ev: &mut Evaluator<'_>,
    call: &Call,
    steps: Steps,
    f: impl Fn(f64) -> f64,
) -> Result<Val, EvalError> {
    let ctx = format!("call to function '{}'", call.func.name);
    let v = ev.eval_vector(arg(call, 0)?, steps, &ctx)?;
    map_steps(v, |_, x| Some(f(x)))
}

fn map_steps(v: Vec<Vector>, f: impl Fn(usize, f64) -> Option<f64>) -> Result<Val, EvalError> {
    let mut out = Vec::with_capacity(v.len());
    let mut relabel = Relabel::new(drop_metric_name);
    for (i, v) in v.into_iter().enumerate() {
        let step: Vector = v
            .into_iter()
            .filter_map(|e| {
                f(i, e.v).map(|v| Elem {
                    labels: relabel.get(&e.labels),
                    v,
                    t: e.t,
                })
            })
            .collect();
        check_unique_labels(&step)?;
        out.push(step);
    }
    Ok(Val::Vector(out))
}

// === date functions ===

/// Year, month (1-12) and day (1-31) of a day count since 1970-01-01 (proleptic
/// Gregorian; Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn date_part(name: &str, secs: f64) -> f64 {
    // Go converts with int64(f), which truncates toward zero; NaN and infinities have no
    // date, and Go's conversion gives the minimum int64 for them on amd64.
    let s = if secs.is_finite() && secs.abs() < 9.2e18 {
        secs as i64
    } else {
        i64::MIN
    };
    let days = s.div_euclid(86_400);
    let sod = s.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    match name {
        "year" => y as f64,
        "month" => m as f64,
        "day_of_month" => d as f64,
        "day_of_week" => (days + 4).rem_euclid(7) as f64,
        "day_of_year" => {
            let before: u32 = (1..m).map(|mm| days_in_month(y, mm)).sum();
            (before + d) as f64
        }
        "days_in_month" => days_in_month(y, m) as f64,
        "hour" => (sod / 3600) as f64,
        "minute" => (sod % 3600 / 60) as f64,
        _ => f64::NAN,
    }
}

fn date_function(
    ev: &mut Evaluator<'_>,
    call: &Call,
    steps: Steps,
    name: &str,
) -> Result<Val, EvalError> {
    if call.args.args.is_empty() {
        let empty = Lbl::default();
        return Ok(Val::Vector(
            steps
                .iter()
                .map(|t| {
                    vec![Elem {
                        labels: empty.clone(),
                        v: date_part(name, t.div_euclid(1000) as f64),
                        t,
                    }]
                })
                .collect(),
        ));
    }
    let ctx = format!("call to function '{name}'");
    let v = ev.eval_vector(arg(call, 0)?, steps, &ctx)?;
    map_steps(v, |_, x| Some(date_part(name, x)))
}

// === labels ===

/// The labels `absent(x{...})` reports: the equality matchers of a plain selector.
fn absent_labels(e: &Expr) -> Result<Labels, EvalError> {
    let vs = match unwrap_parens(e) {
        Expr::VectorSelector(vs) => vs,
        Expr::MatrixSelector(ms) => &ms.vs,
        _ => return Ok(Labels::default()),
    };
    let sets = selector_matchers(vs)?;
    let Some(matchers) = sets.first() else {
        return Ok(Labels::default());
    };
    let mut pairs: Vec<(String, String)> = Vec::new();
    let mut has = std::collections::HashSet::new();
    for m in matchers {
        if m.name == METRIC_NAME {
            continue;
        }
        if m.op == MatchOp::Equal && !has.contains(&m.name) {
            pairs.push((m.name.clone(), m.value.clone()));
            has.insert(m.name.clone());
        } else {
            pairs.retain(|(k, _)| *k != m.name);
        }
    }
    Ok(Labels::new(pairs))
}

fn label_replace(ev: &mut Evaluator<'_>, call: &Call, steps: Steps) -> Result<Val, EvalError> {
    let dst = string_arg(ev, call, 1, steps)?;
    let repl = string_arg(ev, call, 2, steps)?;
    let src = string_arg(ev, call, 3, steps)?;
    let re_str = string_arg(ev, call, 4, steps)?;
    let re = regex::Regex::new(&format!("^(?s:{re_str})$")).map_err(|_| {
        EvalError::bad_data(format!(
            "invalid regular expression in label_replace(): {re_str}"
        ))
    })?;
    if dst.is_empty() {
        return Err(EvalError::bad_data(format!(
            "invalid destination label name in label_replace(): {dst}"
        )));
    }
    let v = ev.eval_vector(arg(call, 0)?, steps, "call to function 'label_replace'")?;
    let mut out = Vec::with_capacity(v.len());
    let mut relabel = Relabel::new(|l: &Lbl| {
        let src_val = l.get(&src).unwrap_or("");
        match re.captures(src_val) {
            Some(caps) => {
                let mut value = String::new();
                caps.expand(&repl, &mut value);
                Arc::new(l.with(&dst, &value))
            }
            None => l.clone(),
        }
    });
    for step in v {
        let mut res = Vec::with_capacity(step.len());
        for mut e in step {
            e.labels = relabel.get(&e.labels);
            res.push(e);
        }
        check_unique_labels(&res)?;
        out.push(res);
    }
    Ok(Val::Vector(out))
}

fn label_join(ev: &mut Evaluator<'_>, call: &Call, steps: Steps) -> Result<Val, EvalError> {
    let dst = string_arg(ev, call, 1, steps)?;
    let sep = string_arg(ev, call, 2, steps)?;
    let mut srcs = Vec::new();
    for i in 3..call.args.args.len() {
        srcs.push(string_arg(ev, call, i, steps)?);
    }
    if dst.is_empty() {
        return Err(EvalError::bad_data(format!(
            "invalid destination label name in label_join(): {dst}"
        )));
    }
    if let Some(bad) = srcs.iter().find(|s| s.is_empty()) {
        return Err(EvalError::bad_data(format!(
            "invalid source label name in label_join(): {bad}"
        )));
    }
    let v = ev.eval_vector(arg(call, 0)?, steps, "call to function 'label_join'")?;
    let mut out = Vec::with_capacity(v.len());
    let mut relabel = Relabel::new(|l: &Lbl| {
        let joined = srcs
            .iter()
            .map(|s| l.get(s).unwrap_or(""))
            .collect::<Vec<_>>()
            .join(&sep);
        Arc::new(l.with(&dst, &joined))
    });
    for step in v {
        let mut res = Vec::with_capacity(step.len());
        for mut e in step {
            e.labels = relabel.get(&e.labels);
            res.push(e);
        }
        check_unique_labels(&res)?;
        out.push(res);
    }
    Ok(Val::Vector(out))
}

/// Go's natural sort order as used by `sort_by_label`: runs of digits compare as numbers.
fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let na = a.iter().take_while(|c| c.is_ascii_digit()).count();
                let nb = b.iter().take_while(|c| c.is_ascii_digit()).count();
                let (da, db) = (&a[..na], &b[..nb]);
                let ta = trim_zeros(da);
                let tb = trim_zeros(db);
                let o = ta.len().cmp(&tb.len()).then_with(|| ta.cmp(tb));
                if o != Ordering::Equal {
                    return o;
                }
                a = &a[na..];
                b = &b[nb..];
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(y);
                }
                a = &a[1..];
                b = &b[1..];
            }
        }
    }
}

fn trim_zeros(d: &[u8]) -> &[u8] {
    let z = d.iter().take_while(|&&c| c == b'0').count();
    &d[z..]
}

// === classic histograms ===

/// Groups each step's `_bucket` series by their labels without `le` and applies `f` to each
/// group's buckets `(upper bound, cumulative count)`. Which histogram a series belongs to,
/// and its bound, are worked out once per series (per label `Arc`), not once per step.
fn classic_histogram(
    v: Vec<Vector>,
    f: impl Fn(usize, &mut Vec<(f64, f64)>) -> f64,
) -> Result<Val, EvalError> {
    // Input labels' address -> (the input, kept alive; its histogram and bound, if any).
    let mut series: FastMap<usize, (Lbl, Option<(usize, f64)>)> = FastMap::default();
    // Labels without `le` -> histogram; each histogram's result labels.
    let mut by_key: FastMap<Labels, usize> = FastMap::default();
    let mut hist_labels: Vec<Lbl> = Vec::new();
    // Per step: where each histogram sits in this step's groups (usize::MAX: absent).
    let mut slot: Vec<usize> = Vec::new();
    let mut out = Vec::with_capacity(v.len());
    for (i, step) in v.into_iter().enumerate() {
        // (histogram, buckets, timestamp), in order of first appearance.
        type Group = (usize, Vec<(f64, f64)>, i64);
        let mut groups: Vec<Group> = Vec::new();
        for e in step {
            let ptr = Arc::as_ptr(&e.labels) as usize;
            let found = match series.get(&ptr) {
                Some((_, found)) => *found,
                None => {
                    let found = e.labels.get("le").and_then(parse_go_float).map(|le| {
                        let key = e.labels.without(&["le"]);
                        let h = *by_key.entry(key).or_insert_with_key(|key| {
                            hist_labels.push(Arc::new(without_metric_name(key)));
                            hist_labels.len() - 1
                        });
                        (h, le)
                    });
                    series.insert(ptr, (e.labels.clone(), found));
                    found
                }
            };
            let Some((h, le)) = found else {
                continue;
            };
            if slot.len() <= h {
                slot.resize(h + 1, usize::MAX);
            }
            if slot[h] == usize::MAX {
                slot[h] = groups.len();
                groups.push((h, Vec::new(), e.t));
            }
            groups[slot[h]].1.push((le, e.v));
        }
        let res: Vector = groups
            .into_iter()
            .map(|(h, mut buckets, t)| {
                slot[h] = usize::MAX;
                Elem {
                    labels: hist_labels[h].clone(),
                    v: f(i, &mut buckets),
                    t,
                }
            })
            .collect();
        out.push(res);
    }
    // Histograms differ in their labels but for the metric name, which the result drops:
    // only then can two results of one step collide.
    if !all_unique(hist_labels.iter().map(|l| &**l)) {
        for res in &out {
            check_unique_labels(res)?;
        }
    }
    Ok(Val::Vector(out))
}

/// `histogram_quantiles(v, "label", q1, q2, ...)`: one `histogram_quantile` per quantile,
/// told apart by `label`, whose value is the quantile as OpenMetrics writes floats.
fn histogram_quantiles(
    ev: &mut Evaluator<'_>,
    call: &Call,
    steps: Steps,
) -> Result<Val, EvalError> {
    let ctx = "call to function 'histogram_quantiles'";
    let label = string_arg(ev, call, 1, steps)?;
    if label.is_empty() || label == METRIC_NAME {
        return Err(EvalError::bad_data(format!(
            "invalid quantile label name '{label}' in call to function 'histogram_quantiles'"
        )));
    }
    let v = ev.eval_vector(arg(call, 0)?, steps, ctx)?;
    let mut qs = Vec::new();
    for i in 2..call.args.args.len() {
        qs.push(ev.eval_scalar(arg(call, i)?, steps, ctx)?);
    }
    let mut out = Vec::with_capacity(v.len());
    for (i, step) in v.into_iter().enumerate() {
        let mut res = Vec::new();
        for q in &qs {
            let q = q.get(i).copied().unwrap_or(f64::NAN);
            let Val::Vector(mut one) =
                classic_histogram(vec![step.clone()], |_, b| bucket_quantile(q, b))?
            else {
                continue;
            };
            let value = format_openmetrics_float(q);
            res.extend(one.pop().unwrap_or_default().into_iter().map(|e| Elem {
                labels: Arc::new(e.labels.with(&label, &value)),
                ..e
            }));
        }
        check_unique_labels(&res)?;
        out.push(res);
    }
    Ok(Val::Vector(out))
}

/// A float as the OpenMetrics text format writes it (Prometheus's
/// `FormatOpenMetricsFloat`): Go's shortest `%g`, with `.0` added to whole numbers.
fn format_openmetrics_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "+Inf" } else { "-Inf" }.into();
    }
    let mut s = go_format_g(f);
    if !s.contains(['.', 'e']) {
        s.push_str(".0");
    }
    s
}

/// Go's `strconv.FormatFloat(f, 'g', -1, 64)` for finite `f`: the shortest digits, in
/// exponent form when the decimal exponent is below -4 or at least 6 (Go decides with
/// precision 6 when asked for the shortest form).
fn go_format_g(f: f64) -> String {
    // `{:e}` gives the shortest round-trip digits, e.g. "1.2345e-7".
    let e = format!("{f:e}");
    let (mantissa, exp) = e.split_once('e').unwrap_or((&e, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..6).contains(&exp) {
        return format!("{f}");
    }
    let sign = if exp < 0 { '-' } else { '+' };
    format!("{mantissa}e{sign}{:02}", exp.abs())
}

/// Parses a float as Go's `strconv.ParseFloat` does for bucket bounds.
fn parse_go_float(s: &str) -> Option<f64> {
    let t = s.trim_start_matches('+');
    match t.to_ascii_lowercase().as_str() {
        "inf" | "infinity" => {
            return Some(if s.starts_with('-') {
                f64::NEG_INFINITY
            } else {
                f64::INFINITY
            });
        }
        "-inf" | "-infinity" => return Some(f64::NEG_INFINITY),
        "nan" => return Some(f64::NAN),
        _ => {}
    }
    t.replace('_', "").parse().ok()
}

fn sort_and_coalesce(buckets: &mut Vec<(f64, f64)>) {
    buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    let mut out: Vec<(f64, f64)> = Vec::with_capacity(buckets.len());
    for &(ub, c) in buckets.iter() {
        match out.last_mut() {
            Some(last) if last.0 == ub => last.1 += c,
            _ => out.push((ub, c)),
        }
    }
    *buckets = out;
}

fn almost_equal(a: f64, b: f64, epsilon: f64) -> bool {
    const MIN_NORMAL: f64 = f64::MIN_POSITIVE;
    if a == b {
        return true;
    }
    let abs_sum = a.abs() + b.abs();
    let diff = (a - b).abs();
    if a == 0.0 || b == 0.0 || abs_sum < MIN_NORMAL {
        return diff < epsilon * MIN_NORMAL;
    }
    diff / abs_sum.min(f64::MAX) < epsilon
}

/// The q-quantile of a classic histogram, interpolating linearly within a bucket.
fn bucket_quantile(q: f64, buckets: &mut Vec<(f64, f64)>) -> f64 {
    if q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    if buckets.is_empty() {
        return f64::NAN;
    }
    buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    if buckets.last().map(|b| b.0) != Some(f64::INFINITY) {
        return f64::NAN;
    }
    sort_and_coalesce(buckets);
    // Counts must not decrease; tiny decreases are float noise, larger ones are fixed up.
    let mut prev = buckets[0].1;
    for b in buckets.iter_mut().skip(1) {
        let curr = b.1;
        if curr == prev {
            continue;
        }
        if almost_equal(prev, curr, 1e-12) || curr < prev {
            b.1 = prev;
            continue;
        }
        prev = curr;
    }
    if buckets.len() < 2 {
        return f64::NAN;
    }
    let observations = buckets[buckets.len() - 1].1;
    if observations == 0.0 {
        return f64::NAN;
    }
    let mut rank = q * observations;
    let last = buckets.len() - 1;
    let b = buckets[..last].partition_point(|x| x.1 < rank);
    if b == last {
        return buckets[last - 1].0;
    }
    if b == 0 && buckets[0].0 <= 0.0 {
        return buckets[0].0;
    }
    let (mut start, end, mut count) = (0.0, buckets[b].0, buckets[b].1);
    if b > 0 {
        start = buckets[b - 1].0;
        count -= buckets[b - 1].1;
        rank -= buckets[b - 1].1;
    }
    start + (end - start) * (rank / count)
}

/// The fraction of observations between `lower` and `upper` in a classic histogram.
fn bucket_fraction(lower: f64, upper: f64, buckets: &mut Vec<(f64, f64)>) -> f64 {
    if buckets.is_empty() {
        return f64::NAN;
    }
    buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    if buckets.last().map(|b| b.0) != Some(f64::INFINITY) {
        return f64::NAN;
    }
    sort_and_coalesce(buckets);
    let count = buckets[buckets.len() - 1].1;
    if count == 0.0 || lower.is_nan() || upper.is_nan() {
        return f64::NAN;
    }
    if lower >= upper {
        return 0.0;
    }
    let (mut rank, mut lower_rank, mut upper_rank) = (0.0, 0.0, 0.0);
    let (mut lower_set, mut upper_set) = (false, false);
    let mut lower_bound = if buckets[0].0 <= 0.0 {
        f64::NEG_INFINITY
    } else {
        0.0
    };
    for (i, &(upper_bound, c)) in buckets.iter().enumerate() {
        if i > 0 {
            lower_bound = buckets[i - 1].0;
        }
        let interpolate = |v: f64| {
            if lower_bound == f64::NEG_INFINITY {
                c
            } else {
                rank + (c - rank) * (v - lower_bound) / (upper_bound - lower_bound)
            }
        };
        if !lower_set && lower_bound >= lower {
            lower_rank = rank;
            lower_set = true;
        }
        if !upper_set && lower_bound >= upper {
            upper_rank = rank;
            upper_set = true;
        }
        if lower_set && upper_set {
            break;
        }
        if !lower_set && lower_bound < lower && upper_bound > lower {
            lower_rank = interpolate(lower);
            lower_set = true;
        }
        if !upper_set && lower_bound < upper && upper_bound > upper {
            upper_rank = interpolate(upper);
            upper_set = true;
        }
        if lower_set && upper_set {
            break;
        }
        rank = c;
    }
    if !lower_set || lower_rank > count {
        lower_rank = count;
    }
    if !upper_set || upper_rank > count {
        upper_rank = count;
    }
    (upper_rank - lower_rank) / count
}

// === range-vector functions ===

fn range_function(ev: &mut Evaluator<'_>, call: &Call, steps: Steps) -> Result<Val, EvalError> {
    let name = call.func.name;
    let ctx = format!("call to function '{name}'");
    let n = steps.len();
    // Where the range vector sits, and the scalar arguments around it.
    let matrix_idx = if name == "quantile_over_time" { 1 } else { 0 };
    let mut scalars: Vec<Vec<f64>> = Vec::new();
    for (i, a) in call.args.args.iter().enumerate() {
        if i != matrix_idx {
            scalars.push(ev.eval_scalar(a, steps, &ctx)?);
        }
    }
    let matrix_expr = unwrap_parens(arg(call, matrix_idx)?);
    let r = ev.eval_range(matrix_expr, steps, &ctx)?;

    if name == "absent_over_time" {
        let labels = Arc::new(absent_labels(matrix_expr)?);
        let out = (0..n)
            .map(|i| {
                let present = (0..r.series.len()).any(|s| !r.window(s, i).is_empty());
                if present {
                    Vec::new()
                } else {
                    vec![Elem {
                        labels: labels.clone(),
                        v: 1.0,
                        t: steps.ts(i),
                    }]
                }
            })
            .collect();
        return Ok(Val::Vector(out));
    }

    let keep_name = matches!(name, "last_over_time" | "first_over_time");
    // Each series' result labels are built once and shared by all its points. When they
    // are all different, no step can hold two equal label sets, and the per-step check
    // (which hashes every point's labels) is skipped.
    let labels: Vec<Lbl> = r
        .series
        .iter()
        .map(|s| {
            Arc::new(if keep_name {
                s.labels.clone()
            } else {
                without_metric_name(&s.labels)
            })
        })
        .collect();
    let unique = all_unique(labels.iter().map(|l| &**l));
    // For `rate` and `increase`: how many counter resets each series has up to each sample,
    // so that a window without any (nearly all of them) is not scanned for resets. The
    // comparison is the one `extrapolated_rate` makes, so the answer is the same.
    let counter = matches!(name, "rate" | "increase");
    let resets: Vec<Vec<u32>> = if counter {
        r.series
            .iter()
            .map(|s| {
                let mut n = 0;
                let mut out = Vec::with_capacity(s.samples.len());
                out.push(0);
                for p in s.samples.windows(2) {
                    n += u32::from(p[1].v < p[0].v);
                    out.push(n);
                }
                out
            })
            .collect()
    } else {
        Vec::new()
    };
    let mut out: Vec<Vector> = (0..n).map(|_| Vec::with_capacity(r.series.len())).collect();
    let mut params = vec![0.0; scalars.len()];
    for (s, labels) in labels.iter().enumerate() {
        ev.check_deadline()?;
        for (i, slot) in out.iter_mut().enumerate() {
            let (lo, hi) = r.window_bounds(s, i);
            if lo == hi {
                continue;
            }
            let w = &r.series[s].samples[lo..hi];
            for (p, scalar) in params.iter_mut().zip(&scalars) {
                *p = scalar[i];
            }
            let may_reset = !counter || resets[s][hi - 1] != resets[s][lo];
            if let Some(v) = apply_range(name, w, &r, i, steps.ts(i), &params, may_reset)? {
                slot.push(Elem {
                    labels: labels.clone(),
                    v,
                    t: steps.ts(i),
                });
            }
        }
    }
    if !unique {
        for step in &out {
            check_unique_labels(step)?;
        }
    }
    Ok(Val::Vector(out))
}

fn apply_range(
    name: &str,
    w: &[Sample],
    r: &RangeArg,
    i: usize,
    ts: i64,
    params: &[f64],
    may_reset: bool,
) -> Result<Option<f64>, EvalError> {
    let end = r.ends[i];
    let range = r.range;
    let param = |k: usize| params.get(k).copied().unwrap_or(f64::NAN);
    Ok(match name {
        "rate" => extrapolated_rate(
            w,
            end.saturating_sub(range),
            end,
            range,
            true,
            true,
            may_reset,
        ),
        "increase" => extrapolated_rate(
            w,
            end.saturating_sub(range),
            end,
            range,
            true,
            false,
            may_reset,
        ),
        "delta" => extrapolated_rate(
            w,
            end.saturating_sub(range),
            end,
            range,
            false,
            false,
            false,
        ),
        "irate" => instant_value(w, true),
        "idelta" => instant_value(w, false),
        "changes" => Some(
            w.windows(2)
                .filter(|p| p[1].v != p[0].v && !(p[1].v.is_nan() && p[0].v.is_nan()))
                .count() as f64,
        ),
        "resets" => Some(w.windows(2).filter(|p| p[1].v < p[0].v).count() as f64),
        "deriv" => {
            if w.len() < 2 {
                None
            } else {
                Some(linear_regression(w, w[0].t).0)
            }
        }
        "predict_linear" => {
            if w.len() < 2 {
                None
            } else {
                let (slope, intercept) = linear_regression(w, ts);
                Some(slope * param(0) + intercept)
            }
        }
        "avg_over_time" => Some(avg_over_time(w)),
        "min_over_time" => Some(compare_over_time(w, |cur, m| cur < m || m.is_nan()).0),
        "max_over_time" => Some(compare_over_time(w, |cur, m| cur > m || m.is_nan()).0),
        "ts_of_min_over_time" => Some(compare_over_time(w, |cur, m| cur <= m || m.is_nan()).1),
        "ts_of_max_over_time" => Some(compare_over_time(w, |cur, m| cur >= m || m.is_nan()).1),
        "sum_over_time" => {
            let (mut sum, mut c) = (0.0, 0.0);
            for s in w {
                (sum, c) = kahan_inc(s.v, sum, c);
            }
            Some(if sum.is_infinite() { sum } else { sum + c })
        }
        "count_over_time" => Some(w.len() as f64),
        "last_over_time" => w.last().map(|s| s.v),
        "first_over_time" => w.first().map(|s| s.v),
        "ts_of_last_over_time" => w.last().map(|s| s.t as f64 / 1000.0),
        "ts_of_first_over_time" => w.first().map(|s| s.t as f64 / 1000.0),
        "present_over_time" => Some(1.0),
        "quantile_over_time" => {
            let mut values: Vec<f64> = w.iter().map(|s| s.v).collect();
            Some(quantile(param(0), &mut values))
        }
        "stddev_over_time" => Some(variance_over_time(w).sqrt()),
        "stdvar_over_time" => Some(variance_over_time(w)),
        "mad_over_time" => {
            if w.iter().any(|s| s.v.is_nan()) {
                Some(f64::NAN)
            } else {
                let mut values: Vec<f64> = w.iter().map(|s| s.v).collect();
                let median = quantile(0.5, &mut values);
                for v in &mut values {
                    *v = (*v - median).abs();
                }
                Some(quantile(0.5, &mut values))
            }
        }
        "holt_winters" | "double_exponential_smoothing" => {
            double_exponential_smoothing(w, param(0), param(1))?
        }
        _ => None,
    })
}

/// `rate`, `increase` and `delta`: the change over the window, corrected for counter
/// resets and extrapolated towards the window's edges the way Prometheus does.
fn extrapolated_rate(
    w: &[Sample],
    range_start: i64,
    range_end: i64,
    range: i64,
    is_counter: bool,
    is_rate: bool,
    may_reset: bool,
) -> Option<f64> {
    if w.len() < 2 {
        return None;
    }
    let first = w[0];
    let last = w[w.len() - 1];
    let mut result = last.v - first.v;
    if is_counter && may_reset {
        for p in w.windows(2) {
            if p[1].v < p[0].v {
                result += p[0].v;
            }
        }
    }
    let mut duration_to_start = first.t.saturating_sub(range_start) as f64 / 1000.0;
    let mut duration_to_end = range_end.saturating_sub(last.t) as f64 / 1000.0;
    let sampled_interval = (last.t - first.t) as f64 / 1000.0;
    let average_between = sampled_interval / (w.len() - 1) as f64;
    let threshold = average_between * 1.1;
    if duration_to_start >= threshold {
        duration_to_start = average_between / 2.0;
    }
    if is_counter {
        // A counter cannot go below zero: do not extrapolate past the point where it would.
        let mut duration_to_zero = duration_to_start;
        if result > 0.0 && first.v >= 0.0 {
            duration_to_zero = sampled_interval * (first.v / result);
        }
        if duration_to_zero < duration_to_start {
            duration_to_start = duration_to_zero;
        }
    }
    if duration_to_end >= threshold {
        duration_to_end = average_between / 2.0;
    }
    let mut factor = 1.0;
    if sampled_interval != 0.0 {
        factor = (sampled_interval + duration_to_start + duration_to_end) / sampled_interval;
    }
    if is_rate {
        factor /= range as f64 / 1000.0;
    }
    Some(result * factor)
}

/// `irate` and `idelta`: from the last two samples only.
fn instant_value(w: &[Sample], is_rate: bool) -> Option<f64> {
    if w.len() < 2 {
        return None;
    }
    let (a, b) = (w[w.len() - 2], w[w.len() - 1]);
    let interval = b.t - a.t;
    if interval == 0 {
        return None;
    }
    let mut v = if is_rate && b.v < a.v { b.v } else { b.v - a.v };
    if is_rate {
        v /= interval as f64 / 1000.0;
    }
    Some(v)
}

/// Least-squares slope and intercept (at `intercept_t`), with Kahan sums.
fn linear_regression(w: &[Sample], intercept_t: i64) -> (f64, f64) {
    let (mut n, mut sum_x, mut cx, mut sum_y, mut cy) = (0.0, 0.0, 0.0, 0.0, 0.0);
    let (mut sum_xy, mut cxy, mut sum_x2, mut cx2) = (0.0, 0.0, 0.0, 0.0);
    let init_y = w[0].v;
    let mut const_y = true;
    for (i, s) in w.iter().enumerate() {
        if const_y && i > 0 && s.v != init_y {
            const_y = false;
        }
        n += 1.0;
        let x = s.t.saturating_sub(intercept_t) as f64 / 1e3;
        (sum_x, cx) = kahan_inc(x, sum_x, cx);
        (sum_y, cy) = kahan_inc(s.v, sum_y, cy);
        (sum_xy, cxy) = kahan_inc(x * s.v, sum_xy, cxy);
        (sum_x2, cx2) = kahan_inc(x * x, sum_x2, cx2);
    }
    if const_y {
        if init_y.is_infinite() {
            return (f64::NAN, f64::NAN);
        }
        return (0.0, init_y);
    }
    sum_x += cx;
    sum_y += cy;
    sum_xy += cxy;
    sum_x2 += cx2;
    let cov_xy = sum_xy - sum_x * sum_y / n;
    let var_x = sum_x2 - sum_x * sum_x / n;
    let slope = cov_xy / var_x;
    let intercept = sum_y / n - slope * sum_x / n;
    (slope, intercept)
}

fn avg_over_time(w: &[Sample]) -> f64 {
    let (mut sum, mut count) = (w[0].v, 1.0);
    let (mut mean, mut c) = (0.0, 0.0);
    let mut incremental = false;
    for (i, s) in w.iter().enumerate().skip(1) {
        count = (i + 1) as f64;
        if !incremental {
            let (ns, nc) = kahan_inc(s.v, sum, c);
            if !ns.is_infinite() {
                (sum, c) = (ns, nc);
                continue;
            }
            incremental = true;
            mean = sum / (count - 1.0);
            c /= count - 1.0;
        }
        let q = (count - 1.0) / count;
        (mean, c) = kahan_inc(s.v / count, q * mean, q * c);
    }
    if incremental {
        mean + c
    } else {
        sum / count + c / count
    }
}

/// The extreme value by `better`, and the timestamp (seconds) where it was last reached.
fn compare_over_time(w: &[Sample], better: impl Fn(f64, f64) -> bool) -> (f64, f64) {
    let (mut m, mut t) = (w[0].v, w[0].t);
    for s in w {
        if better(s.v, m) {
            m = s.v;
            t = s.t;
        }
    }
    (m, t as f64 / 1000.0)
}

fn variance_over_time(w: &[Sample]) -> f64 {
    let (mut count, mut mean, mut c_mean, mut aux, mut c_aux) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for s in w {
        count += 1.0;
        let delta = s.v - (mean + c_mean);
        (mean, c_mean) = kahan_inc(delta / count, mean, c_mean);
        (aux, c_aux) = kahan_inc(delta * (s.v - (mean + c_mean)), aux, c_aux);
    }
    (aux + c_aux) / count
}

fn double_exponential_smoothing(w: &[Sample], sf: f64, tf: f64) -> Result<Option<f64>, EvalError> {
    if sf.is_nan() || sf <= 0.0 || sf >= 1.0 {
        return Err(EvalError::execution(format!(
            "invalid smoothing factor. Expected: 0 < sf < 1, got: {sf}"
        )));
    }
    if tf.is_nan() || tf <= 0.0 || tf >= 1.0 {
        return Err(EvalError::execution(format!(
            "invalid trend factor. Expected: 0 < tf < 1, got: {tf}"
        )));
    }
    if w.len() < 2 {
        return Ok(None);
    }
    let (mut s0, mut s1) = (0.0, w[0].v);
    let mut b = w[1].v - w[0].v;
    for (i, s) in w.iter().enumerate().skip(1) {
        let x = sf * s.v;
        if i > 1 {
            b = tf * (s1 - s0) + (1.0 - tf) * b;
        }
        let y = (1.0 - sf) * (s1 + b);
        (s0, s1) = (s1, x + y);
    }
    Ok(Some(s1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_of_and_max_of_follow_go_math() {
        assert!(go_max(f64::NAN, 3.0).is_nan());
        assert_eq!(go_max(f64::NAN, f64::INFINITY), f64::INFINITY);
        assert_eq!(go_min(f64::NAN, f64::NEG_INFINITY), f64::NEG_INFINITY);
        assert!(go_max(-0.0, 0.0).is_sign_positive());
        assert!(go_min(0.0, -0.0).is_sign_negative());
        assert_eq!(go_min(-2.0, -5.0), -5.0);
    }

    #[test]
    fn quantile_labels_are_written_like_openmetrics_floats() {
        assert_eq!(format_openmetrics_float(0.0), "0.0");
        assert_eq!(format_openmetrics_float(1.0), "1.0");
        assert_eq!(format_openmetrics_float(0.25), "0.25");
        assert_eq!(format_openmetrics_float(-0.1), "-0.1");
        assert_eq!(format_openmetrics_float(1e6), "1e+06");
        assert_eq!(format_openmetrics_float(123456.0), "123456.0");
        assert_eq!(format_openmetrics_float(1e-5), "1e-05");
        assert_eq!(format_openmetrics_float(f64::NAN), "NaN");
        assert_eq!(format_openmetrics_float(f64::INFINITY), "+Inf");
    }

    fn samples(points: &[(i64, f64)]) -> Vec<Sample> {
        points.iter().map(|&(t, v)| Sample { t, v }).collect()
    }

    #[test]
    fn rate_extrapolates_to_window_edges_and_handles_resets() {
        // 0, 10, 20 ... every 10 s over a 60 s window ending at 60 s: exact rate of 1/s.
        let w = samples(&[
            (10_000, 10.0),
            (20_000, 20.0),
            (30_000, 30.0),
            (40_000, 40.0),
            (50_000, 50.0),
            (60_000, 60.0),
        ]);
        let r = extrapolated_rate(&w, 0, 60_000, 60_000, true, true, true).unwrap();
        assert!((r - 1.0).abs() < 1e-12, "{r}");
        // A reset from 30 to 5 counts the 30 before it.
        let w = samples(&[(10_000, 10.0), (20_000, 30.0), (30_000, 5.0)]);
        let inc = extrapolated_rate(&w, 0, 30_000, 30_000, true, false, true).unwrap();
        // Raw increase 25 over 20 s. The window starts 10 s before the first sample, but
        // the counter would reach zero 8 s before it (20 s * 10/25), so it extrapolates by
        // 8 s at the start and 0 s at the end: 25 * 28/20.
        assert!((inc - 35.0).abs() < 1e-9, "{inc}");
    }

    #[test]
    fn irate_uses_the_last_two_samples() {
        let w = samples(&[(0, 1.0), (10_000, 5.0), (20_000, 2.0)]);
        assert_eq!(instant_value(&w, true), Some(0.2));
        assert_eq!(instant_value(&w, false), Some(-3.0));
    }

    #[test]
    fn dates_follow_the_gregorian_calendar() {
        // 2006-01-02T22:04:05Z, a Monday.
        let t = 1_136_239_445.0;
        assert_eq!(date_part("year", t), 2006.0);
        assert_eq!(date_part("month", t), 1.0);
        assert_eq!(date_part("day_of_month", t), 2.0);
        assert_eq!(date_part("day_of_week", t), 1.0);
        assert_eq!(date_part("hour", t), 22.0);
        assert_eq!(date_part("minute", t), 4.0);
        assert_eq!(date_part("days_in_month", 951_782_400.0), 29.0); // 2000-02-29
    }

    #[test]
    fn histogram_quantile_interpolates_within_buckets() {
        let mut b = vec![(0.1, 1.0), (0.2, 3.0), (f64::INFINITY, 4.0)];
        assert!((bucket_quantile(0.5, &mut b) - 0.15).abs() < 1e-12);
        let mut no_inf = vec![(0.1, 1.0)];
        assert!(bucket_quantile(0.5, &mut no_inf).is_nan());
    }

    #[test]
    fn natural_order_compares_numbers_by_value() {
        assert_eq!(natural_cmp("a2", "a10"), std::cmp::Ordering::Less);
        assert_eq!(natural_cmp("b", "a10"), std::cmp::Ordering::Greater);
    }
}
