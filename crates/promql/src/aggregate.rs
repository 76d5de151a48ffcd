//! Aggregation operators (`sum`, `avg`, `topk`, `count_values`, ...) with `by`/`without`
//! grouping. Sums use Kahan-Neumaier compensation and averages switch to an incremental
//! mean only when the running sum would overflow, exactly as Prometheus 3 does, so that
//! results agree with Prometheus to the last bit in the common cases.

use std::collections::HashMap;
use std::sync::Arc;

use promql_parser::parser::token::{
    T_AVG, T_BOTTOMK, T_COUNT, T_COUNT_VALUES, T_GROUP, T_LIMIT_RATIO, T_LIMITK, T_MAX, T_MIN,
    T_QUANTILE, T_STDDEV, T_STDVAR, T_SUM, T_TOPK, TokenId,
};
use promql_parser::parser::{AggregateExpr, Expr, LabelModifier};
use tandem_tsdb::model::METRIC_NAME;

use crate::error::EvalError;
use crate::eval::{Elem, Evaluator, FastMap, Labels, Lbl, Steps, Val, Vector};

/// One step of Kahan-Neumaier summation: adds `inc` to `sum` with compensation `c`.
pub(crate) fn kahan_inc(inc: f64, sum: f64, c: f64) -> (f64, f64) {
    let t = sum + inc;
    let c = if t.is_infinite() {
        0.0
    } else if sum.abs() >= inc.abs() {
        c + ((sum - t) + inc)
    } else {
        c + ((inc - t) + sum)
    };
    (t, c)
}

/// Prometheus's quantile over a set of values: linear interpolation between closest ranks;
/// NaNs sort first.
pub(crate) fn quantile(q: f64, values: &mut [f64]) -> f64 {
    if values.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    values.sort_by(|a, b| match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
        _ => a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal),
    });
    let n = values.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0);
    let upper = (lower + 1.0).min(n - 1.0);
    let weight = rank - rank.floor();
    values[lower as usize] * (1.0 - weight) + values[upper as usize] * weight
}

/// Formats a float as Go's `strconv.FormatFloat(f, 'f', -1, 64)` does.
pub(crate) fn format_float(f: f64) -> String {
    if f.is_nan() {
        "NaN".to_string()
    } else if f == f64::INFINITY {
        "+Inf".to_string()
    } else if f == f64::NEG_INFINITY {
        "-Inf".to_string()
    } else {
        format!("{f}")
    }
}

struct Grouping {
    without: bool,
    names: Vec<String>,
}

impl Grouping {
    fn new(modifier: &Option<LabelModifier>) -> Grouping {
        match modifier {
            None => Grouping {
                without: false,
                names: Vec::new(),
            },
            Some(LabelModifier::Include(l)) => Grouping {
                without: false,
                names: l.labels.clone(),
            },
            Some(LabelModifier::Exclude(l)) => Grouping {
                without: true,
                names: l.labels.clone(),
            },
        }
    }

    fn labels(&self, l: &Labels) -> Labels {
        let mut names: Vec<&str> = self.names.iter().map(String::as_str).collect();
        if self.without {
            names.push(METRIC_NAME);
            l.without(&names)
        } else {
            l.only(&names)
        }
    }
}

/// The group of each input series, worked out once per label `Arc` rather than once per
/// point: groups are numbered for the whole evaluation, and each has one shared label set.
struct GroupIds {
    /// Input labels' address -> (the input, kept alive so the address stays its own; group).
    by_ptr: FastMap<usize, (Lbl, usize)>,
    by_key: FastMap<Labels, usize>,
    labels: Vec<Lbl>,
}

impl GroupIds {
    fn new() -> GroupIds {
        GroupIds {
            by_ptr: FastMap::default(),
            by_key: FastMap::default(),
            labels: Vec::new(),
        }
    }

    fn id(&mut self, l: &Lbl, grouping: &Grouping) -> usize {
        let ptr = Arc::as_ptr(l) as usize;
        if let Some((_, g)) = self.by_ptr.get(&ptr) {
            return *g;
        }
        let labels = &mut self.labels;
        let g = *self
            .by_key
            .entry(grouping.labels(l))
            .or_insert_with_key(|key| {
                labels.push(Arc::new(key.clone()));
                labels.len() - 1
            });
        self.by_ptr.insert(ptr, (l.clone(), g));
        g
    }
}

pub(crate) fn eval(
    ev: &mut Evaluator<'_>,
    a: &AggregateExpr,
    steps: Steps,
) -> Result<Val, EvalError> {
    let op = a.op.id();
    let mut grouping = Grouping::new(&a.modifier);
    let context = format!("aggregation expression '{}'", a.op);

    if op == T_COUNT_VALUES {
        let label = match a.param.as_deref() {
            Some(Expr::StringLiteral(s)) => s.val.clone(),
            Some(other) => match ev.eval(other, steps)? {
                Val::String(s) => s,
                v => {
                    return Err(EvalError::bad_data(format!(
                        "expected type string in {context}, got {}",
                        v.type_name()
                    )));
                }
            },
            None => return Err(EvalError::bad_data("count_values needs a label name")),
        };
        if label.is_empty() {
            return Err(EvalError::bad_data(format!(
                "invalid label name \"{label}\""
            )));
        }
        if !grouping.without {
            grouping.names.push(label.clone());
        }
        let input = ev.eval_vector(&a.expr, steps, &context)?;
        let out = input
            .into_iter()
            .enumerate()
            .map(|(i, v)| count_values(v, &label, &grouping, steps.ts(i)))
            .collect();
        return Ok(Val::Vector(out));
    }

    let params = match op {
        T_TOPK | T_BOTTOMK | T_QUANTILE | T_LIMITK | T_LIMIT_RATIO => match a.param.as_deref() {
            Some(p) => Some(ev.eval_scalar(p, steps, &context)?),
            None => return Err(EvalError::bad_data(format!("{context} needs a parameter"))),
        },
        _ => None,
    };
    let input = ev.eval_vector(&a.expr, steps, &context)?;
    let mut out = Vec::with_capacity(input.len());
    let mut ids = GroupIds::new();
    let mut slot = Vec::new();
    for (i, v) in input.into_iter().enumerate() {
        ev.check_deadline()?;
        let ts = steps.ts(i);
        let param = params.as_ref().map(|p| p[i]).unwrap_or(0.0);
        let res = match op {
            T_TOPK | T_BOTTOMK => top_bottom(op == T_TOPK, v, param, &grouping)?,
            T_LIMITK => limitk(v, param, &grouping)?,
            T_LIMIT_RATIO => limit_ratio(v, param)?,
            _ => aggregate_step(op, v, param, &grouping, &mut ids, &mut slot, ts)?,
        };
        out.push(res);
    }
    Ok(Val::Vector(out))
}

#[derive(Default)]
struct Group {
    id: usize,
    value: f64,
    kahan_c: f64,
    mean: f64,
    count: f64,
    incremental_mean: bool,
    values: Vec<f64>,
}

/// One step of an aggregation. `slot` maps group ids to this step's groups (usize::MAX:
/// absent) and is left all usize::MAX again for the next step.
fn aggregate_step(
    op: TokenId,
    v: Vector,
    param: f64,
    grouping: &Grouping,
    ids: &mut GroupIds,
    slot: &mut Vec<usize>,
    ts: i64,
) -> Result<Vector, EvalError> {
    let mut groups: Vec<Group> = Vec::new();
    for e in v {
        let id = ids.id(&e.labels, grouping);
        if slot.len() <= id {
            slot.resize(id + 1, usize::MAX);
        }
        let f = e.v;
        let gi = match slot[id] {
            gi if gi != usize::MAX => gi,
            _ => {
                let mut g = Group {
                    id,
                    value: f,
                    mean: f,
                    count: 1.0,
                    ..Group::default()
                };
                match op {
                    T_STDVAR | T_STDDEV => {
                        g.value = if f.is_nan() || f.is_infinite() {
                            f64::NAN
                        } else {
                            0.0
                        };
                    }
                    T_QUANTILE => g.values.push(f),
                    T_GROUP => g.value = 1.0,
                    _ => {}
                }
                slot[id] = groups.len();
                groups.push(g);
                continue;
            }
        };
        let g = &mut groups[gi];
        match op {
            T_SUM => (g.value, g.kahan_c) = kahan_inc(f, g.value, g.kahan_c),
            T_AVG => {
                g.count += 1.0;
                if !g.incremental_mean {
                    let (s, c) = kahan_inc(f, g.value, g.kahan_c);
                    if !s.is_infinite() {
                        (g.value, g.kahan_c) = (s, c);
                        continue;
                    }
                    // The sum would overflow: continue with an incremental mean.
                    g.incremental_mean = true;
                    g.mean = g.value / (g.count - 1.0);
                    g.kahan_c /= g.count - 1.0;
                }
                let q = (g.count - 1.0) / g.count;
                (g.mean, g.kahan_c) = kahan_inc(f / g.count, q * g.mean, q * g.kahan_c);
            }
            T_MAX => {
                if g.value < f || g.value.is_nan() {
                    g.value = f;
                }
            }
            T_MIN => {
                if g.value > f || g.value.is_nan() {
                    g.value = f;
                }
            }
            T_COUNT => g.count += 1.0,
            T_GROUP => {}
            T_STDVAR | T_STDDEV => {
                g.count += 1.0;
                let delta = f - g.mean;
                g.mean += delta / g.count;
                g.value += delta * (f - g.mean);
            }
            T_QUANTILE => g.values.push(f),
            _ => {
                return Err(EvalError::bad_data(format!(
                    "unsupported aggregation operator {op}"
                )));
            }
        }
    }
    let out = groups
        .into_iter()
        .map(|mut g| {
            slot[g.id] = usize::MAX;
            let v = match op {
                T_SUM => g.value + g.kahan_c,
                T_AVG => {
                    if g.incremental_mean {
                        g.mean + g.kahan_c
                    } else {
                        g.value / g.count + g.kahan_c / g.count
                    }
                }
                T_COUNT => g.count,
                T_STDVAR => g.value / g.count,
                T_STDDEV => (g.value / g.count).sqrt(),
                T_QUANTILE => quantile(param, &mut g.values),
                _ => g.value,
            };
            Elem {
                labels: ids.labels[g.id].clone(),
                v,
                t: ts,
            }
        })
        .collect();
    Ok(out)
}

/// The integer `k` of `topk`, `bottomk` and `limitk`, refused as Prometheus does.
fn k_param(k: f64) -> Result<i64, EvalError> {
    if k.is_nan() {
        return Err(EvalError::execution("Parameter value is NaN"));
    }
    if k <= i64::MIN as f64 {
        return Err(EvalError::execution(format!(
            "Scalar value {k} underflows int64"
        )));
    }
    if k >= i64::MAX as f64 {
        return Err(EvalError::execution(format!(
            "Scalar value {k} overflows int64"
        )));
    }
    Ok(k as i64)
}

/// `topk`/`bottomk`: the k largest (smallest) elements of each group, keeping their
/// labels; NaN counts as the least wanted value either way.
fn top_bottom(top: bool, v: Vector, k: f64, grouping: &Grouping) -> Result<Vector, EvalError> {
    let k = k_param(k)?.min(v.len() as i64);
    if k < 1 {
        return Ok(Vec::new());
    }
    let mut groups: Vec<Vec<Elem>> = Vec::new();
    let mut index: HashMap<Labels, usize> = HashMap::new();
    for e in v {
        let key = grouping.labels(&e.labels);
        let gi = *index.entry(key).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[gi].push(e);
    }
    let mut out = Vec::new();
    for mut g in groups {
        // A stable sort keeps the earlier of equal elements, as Prometheus's heap does.
        g.sort_by(|a, b| {
            use std::cmp::Ordering;
            match (a.v.is_nan(), b.v.is_nan()) {
                (true, true) => Ordering::Equal,
                (true, false) => Ordering::Greater,
                (false, true) => Ordering::Less,
                _ => {
                    let o = a.v.partial_cmp(&b.v).unwrap_or(Ordering::Equal);
                    if top { o.reverse() } else { o }
                }
            }
        });
        g.truncate(k as usize);
        out.extend(g);
    }
    Ok(out)
}

/// `limitk`: the first k elements of each group, in the input's order, unchanged.
fn limitk(v: Vector, k: f64, grouping: &Grouping) -> Result<Vector, EvalError> {
    let k = k_param(k)?;
    if k < 1 {
        return Ok(Vec::new());
    }
    let mut taken: HashMap<Labels, i64> = HashMap::new();
    let mut out = Vec::new();
    for e in v {
        let n = taken.entry(grouping.labels(&e.labels)).or_default();
        if *n < k {
            *n += 1;
            out.push(e);
        }
    }
    Ok(out)
}

/// `limit_ratio(r, v)`: a deterministic sample of about `r` of the series, chosen by a hash
/// of their labels, so a series is kept or dropped at every step alike; a negative `r`
/// keeps exactly the complement of `1 + r` (Prometheus's `HashRatioSampler`). Grouping
/// changes nothing, as every series is decided on its own.
fn limit_ratio(v: Vector, r: f64) -> Result<Vector, EvalError> {
    if r.is_nan() {
        return Err(EvalError::execution("Ratio value is NaN"));
    }
    // Prometheus caps the ratio (with a warning) rather than failing.
    let r = r.clamp(-1.0, 1.0);
    Ok(v.into_iter()
        .filter(|e| {
            let offset = labels_hash(&e.labels) as f64 / u64::MAX as f64;
            (r >= 0.0 && offset < r) || (r < 0.0 && offset >= 1.0 + r)
        })
        .collect())
}

/// A stable 64-bit hash of a label set (FNV-1a over `name\xffvalue\xff...`, then the
/// splitmix64 finaliser so that the high bits, which the ratio reads, are well mixed).
/// Prometheus uses xxhash, so which series a given ratio keeps differs from Prometheus;
/// what PromQL promises (stability over time, complements) holds all the same.
fn labels_hash(l: &Labels) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (k, v) in l.iter() {
        for b in k.bytes().chain([0xff]).chain(v.bytes()).chain([0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

fn count_values(v: Vector, label: &str, grouping: &Grouping, ts: i64) -> Vector {
    let mut groups: Vec<Elem> = Vec::new();
    let mut index: HashMap<Labels, usize> = HashMap::new();
    for e in v {
        let with_value = e.labels.with(label, &format_float(e.v));
        let key = grouping.labels(&with_value);
        match index.get(&key) {
            Some(&i) => groups[i].v += 1.0,
            None => {
                index.insert(key.clone(), groups.len());
                groups.push(Elem {
                    labels: Arc::new(key),
                    v: 1.0,
                    t: ts,
                });
            }
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kahan_keeps_small_terms_next_to_large_ones() {
        let mut s = (0.0, 0.0);
        for x in [1e100, 1.0, -1e100] {
            s = kahan_inc(x, s.0, s.1);
        }
        assert_eq!(s.0 + s.1, 1.0);
    }

    #[test]
    fn quantile_interpolates_and_bounds() {
        assert_eq!(quantile(0.5, &mut [1.0, 2.0, 3.0, 4.0]), 2.5);
        assert_eq!(quantile(-1.0, &mut [1.0]), f64::NEG_INFINITY);
        assert!(quantile(0.5, &mut []).is_nan());
    }

    #[test]
    fn floats_format_like_go() {
        assert_eq!(format_float(1e21), "1000000000000000000000");
        assert_eq!(format_float(0.1), "0.1");
        assert_eq!(format_float(f64::INFINITY), "+Inf");
    }
}
