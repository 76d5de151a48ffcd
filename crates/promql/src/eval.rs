//! The evaluator's core: the values that flow between nodes, the walk over the syntax tree,
//! and the selectors (instant, range, subquery) that read from the [`Querier`].
//!
//! Every node is evaluated over all steps of the query at once, as Prometheus does: an
//! instant query is a range query with one step. An instant-vector node yields one vector
//! per step, a scalar node one number per step. Range vectors (`x[5m]`, subqueries) never
//! leave a function call except at the top of an instant query, so they are kept as the
//! selected series plus the window end of every step, and functions cut their windows out.
//! This keeps each operator a plain per-step function, which is how Prometheus specifies
//! them, and reads each selector's data from the store once per query.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use promql_parser::label::MatchOp as ParserMatchOp;
use promql_parser::parser::{
    AtModifier, Expr, MatrixSelector, Offset, SubqueryExpr, VectorSelector,
};
use tandem_tsdb::model::{
    METRIC_NAME, MatchOp, Matcher, Querier, QueryError, Sample, Series, is_stale_nan,
};

use crate::error::{ErrorKind, EvalError};

pub(crate) use tandem_tsdb::model::Labels;

/// A label set shared by every point of a series: an element of each step's vector holds
/// a reference, not a copy, so a range query over thousands of steps allocates each label
/// set once per series instead of once per point.
pub(crate) type Lbl = Arc<Labels>;

/// The hash maps and sets of the evaluator's inner loops. Their keys are label sets and
/// pointers built by the query itself, not by an attacker who could aim at collisions, so
/// a fast non-cryptographic hash (foldhash) replaces the default SipHash, which was an
/// eighth of a `rate` range query's time.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, FastHash>;
pub(crate) type FastSet<K> = HashSet<K, FastHash>;
pub(crate) type FastHash = foldhash::fast::FixedState;

/// One element of an instant vector at one step.
#[derive(Clone, Debug)]
pub(crate) struct Elem {
    pub(crate) labels: Lbl,
    pub(crate) v: f64,
    /// The timestamp of the sample it came from; only `timestamp()` reads it, and only
    /// selectors set it to anything but the step time.
    pub(crate) t: i64,
}

/// An instant vector at one step.
pub(crate) type Vector = Vec<Elem>;

/// A range vector argument: series with their samples (stale markers removed) and, for
/// every step, the end of that step's left-open window `(end - range, end]`.
#[derive(Debug)]
pub(crate) struct RangeArg {
    pub(crate) series: Vec<Series>,
    pub(crate) range: i64,
    pub(crate) ends: Vec<i64>,
}

impl RangeArg {
    /// The samples of series `s` that fall in the window of step `i`.
    pub(crate) fn window(&self, s: usize, i: usize) -> &[Sample] {
        let (lo, hi) = self.window_bounds(s, i);
        &self.series[s].samples[lo..hi]
    }

    /// [`RangeArg::window`] as indexes `lo..hi` into the series' samples.
    pub(crate) fn window_bounds(&self, s: usize, i: usize) -> (usize, usize) {
        let samples = &self.series[s].samples;
        let end = self.ends[i];
        let start = end.saturating_sub(self.range);
        let lo = samples.partition_point(|x| x.t <= start);
        let hi = samples.partition_point(|x| x.t <= end);
        (lo, hi.max(lo))
    }
}

/// A node's value over all steps.
#[derive(Debug)]
pub(crate) enum Val {
    Scalar(Vec<f64>),
    Vector(Vec<Vector>),
    Range(RangeArg),
    String(String),
}

impl Val {
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Val::Scalar(_) => "scalar",
            Val::Vector(_) => "instant vector",
            Val::Range(_) => "range vector",
            Val::String(_) => "string",
        }
    }
}

/// The evaluation times of a node: `start, start + step, ..., <= end`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Steps {
    pub(crate) start: i64,
    pub(crate) end: i64,
    pub(crate) step: i64,
}

impl Steps {
    pub(crate) fn len(&self) -> usize {
        if self.end < self.start || self.step <= 0 {
            return 0;
        }
        // i128: `end - start` may not fit an i64 when `@` points far into the past.
        let n = (self.end as i128 - self.start as i128) / self.step as i128 + 1;
        usize::try_from(n).unwrap_or(usize::MAX)
    }

    pub(crate) fn ts(&self, i: usize) -> i64 {
        self.start + i as i64 * self.step
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = i64> + use<> {
        let s = *self;
        (0..s.len()).map(move |i| s.ts(i))
    }
}

/// Query-wide settings and counters of one evaluation.
pub(crate) struct Evaluator<'a> {
    pub(crate) querier: &'a dyn Querier,
    /// The query's own start and end, which `@ start()` and `@ end()` refer to.
    pub(crate) query_start: i64,
    pub(crate) query_end: i64,
    /// The step of a range query, 0 for an instant query (what `step()` returns).
    pub(crate) query_step: i64,
    pub(crate) lookback: i64,
    pub(crate) default_subquery_step: i64,
    pub(crate) max_samples: usize,
    pub(crate) samples: usize,
    pub(crate) deadline: Option<Instant>,
}

pub(crate) fn duration_ms(d: &Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn offset_ms(o: &Option<Offset>) -> i64 {
    match o {
        None => 0,
        Some(Offset::Pos(d)) => duration_ms(d),
        Some(Offset::Neg(d)) => -duration_ms(d),
    }
}

fn system_time_ms(t: &SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => duration_ms(&d),
        Err(e) => -duration_ms(&e.duration()),
    }
}

/// Labels without the metric name (and the other metadata labels Prometheus 3 drops with
/// it), as every function and operator that changes a series' meaning returns them.
pub(crate) fn drop_metric_name(l: &Lbl) -> Lbl {
    if has_metric_name(l) {
        Arc::new(l.without(&[METRIC_NAME, "__type__", "__unit__"]))
    } else {
        l.clone()
    }
}

/// [`drop_metric_name`] of a label set that is not shared.
pub(crate) fn without_metric_name(l: &Labels) -> Labels {
    if has_metric_name(l) {
        l.without(&[METRIC_NAME, "__type__", "__unit__"])
    } else {
        l.clone()
    }
}

fn has_metric_name(l: &Labels) -> bool {
    l.get(METRIC_NAME).is_some() || l.get("__type__").is_some() || l.get("__unit__").is_some()
}

/// Whether label sets are all different (as every vector's must be).
pub(crate) fn all_unique<'a>(labels: impl ExactSizeIterator<Item = &'a Labels>) -> bool {
    if labels.len() < 2 {
        return true;
    }
    let mut seen = FastSet::with_capacity_and_hasher(labels.len(), FastHash::default());
    let mut labels = labels;
    labels.all(|l| seen.insert(l))
}

/// A label transformation applied once per distinct input `Arc` rather than once per point:
/// the elements of one series at every step share their input labels, so they share the
/// output too.
pub(crate) struct Relabel<F> {
    /// Input address to (the input, kept alive so the address stays its own; the output).
    cache: FastMap<usize, (Lbl, Lbl)>,
    f: F,
}

impl<F: FnMut(&Lbl) -> Lbl> Relabel<F> {
    pub(crate) fn new(f: F) -> Relabel<F> {
        Relabel {
            cache: FastMap::default(),
            f,
        }
    }

    pub(crate) fn get(&mut self, l: &Lbl) -> Lbl {
        let ptr = Arc::as_ptr(l) as usize;
        if let Some((_, out)) = self.cache.get(&ptr) {
            return out.clone();
        }
        let out = (self.f)(l);
        self.cache.insert(ptr, (l.clone(), out.clone()));
        out
    }
}

/// Turns per-step vectors back into series (a range query's result, a subquery's range
/// vector), series in order of first appearance. Elements of one series nearly always
/// share one `Arc`, so they are told apart by pointer first and by label set only when a
/// pointer is new; each label set is hashed once per `Arc`, not once per point.
#[derive(Default)]
pub(crate) struct SeriesBuilder {
    by_ptr: FastMap<usize, usize>,
    by_labels: FastMap<Lbl, usize>,
    /// Every `Arc` whose address is a key of `by_ptr`, so that no address is reused by
    /// another label set while the builder lives.
    keep: Vec<Lbl>,
    pub(crate) series: Vec<(Lbl, Vec<Sample>)>,
}

impl SeriesBuilder {
    pub(crate) fn push(&mut self, labels: &Lbl, sample: Sample) {
        let ptr = Arc::as_ptr(labels) as usize;
        let idx = match self.by_ptr.get(&ptr) {
            Some(&i) => i,
            None => {
                let i = match self.by_labels.get(labels) {
                    Some(&i) => i,
                    None => {
                        self.series.push((labels.clone(), Vec::new()));
                        self.by_labels.insert(labels.clone(), self.series.len() - 1);
                        self.series.len() - 1
                    }
                };
                self.by_ptr.insert(ptr, i);
                self.keep.push(labels.clone());
                i
            }
        };
        self.series[idx].1.push(sample);
    }

    /// The series, each label set unwrapped (copied only if still shared elsewhere).
    pub(crate) fn into_series(self) -> Vec<Series> {
        drop((self.by_labels, self.keep));
        self.series
            .into_iter()
            .map(|(labels, samples)| Series {
                labels: Arc::unwrap_or_clone(labels),
                samples,
            })
            .collect()
    }
}

/// Prometheus refuses a vector in which two elements have the same labels (which happens
/// when a function drops the metric name of `{__name__=~"a|b"}`).
pub(crate) fn check_unique_labels(v: &Vector) -> Result<(), EvalError> {
    if all_unique(v.iter().map(|e| &*e.labels)) {
        Ok(())
    } else {
        Err(EvalError::execution(
            "vector cannot contain metrics with the same labelset",
        ))
    }
}

/// Converts a parsed selector's matchers into the store's, adding the metric name.
/// Alternatives written with `or` inside braces give one matcher set each.
pub(crate) fn selector_matchers(vs: &VectorSelector) -> Result<Vec<Vec<Matcher>>, EvalError> {
    let convert = |m: &promql_parser::label::Matcher| -> Result<Matcher, EvalError> {
        let op = match m.op {
            ParserMatchOp::Equal => MatchOp::Equal,
            ParserMatchOp::NotEqual => MatchOp::NotEqual,
            ParserMatchOp::Re(_) => MatchOp::Regex,
            ParserMatchOp::NotRe(_) => MatchOp::NotRegex,
        };
        Matcher::new(&m.name, op, &m.value).map_err(|e| EvalError::bad_data(e.to_string()))
    };
    let mut base = Vec::new();
    if let Some(name) = &vs.name {
        base.push(Matcher::equal(METRIC_NAME, name));
    }
    for m in &vs.matchers.matchers {
        base.push(convert(m)?);
    }
    if vs.matchers.or_matchers.is_empty() {
        return Ok(vec![base]);
    }
    let mut sets = Vec::new();
    for group in &vs.matchers.or_matchers {
        let mut set = base.clone();
        for m in group {
            set.push(convert(m)?);
        }
        sets.push(set);
    }
    Ok(sets)
}

fn storage_error(e: QueryError) -> EvalError {
    match e {
        QueryError::Limit(m) => EvalError::new(ErrorKind::Limit, m),
        QueryError::Storage(m) => EvalError::execution(format!("expanding series: {m}")),
    }
}

// === impl Evaluator ===

impl Evaluator<'_> {
    pub(crate) fn check_deadline(&self) -> Result<(), EvalError> {
        if let Some(d) = self.deadline
            && Instant::now() >= d
        {
            return Err(EvalError::new(
                ErrorKind::Timeout,
                "query timed out in expression evaluation",
            ));
        }
        Ok(())
    }

    pub(crate) fn count_samples(&mut self, n: usize) -> Result<(), EvalError> {
        self.samples = self.samples.saturating_add(n);
        if self.samples > self.max_samples {
            return Err(EvalError::new(
                ErrorKind::Limit,
                "query processing would load too many samples into memory in query execution",
            ));
        }
        Ok(())
    }

    /// The time a selector with modifier `at` reads at, for an evaluation at `ts`.
    fn at_time(&self, at: &Option<AtModifier>, ts: i64) -> i64 {
        match at {
            None => ts,
            Some(AtModifier::Start) => self.query_start,
            Some(AtModifier::End) => self.query_end,
            Some(AtModifier::At(t)) => system_time_ms(t),
        }
    }

    /// Every series matching `vs` with its samples in `[min_t, max_t]`.
    fn select(
        &mut self,
        vs: &VectorSelector,
        min_t: i64,
        max_t: i64,
    ) -> Result<Vec<Series>, EvalError> {
        self.check_deadline()?;
        let sets = selector_matchers(vs)?;
        let mut out: Vec<Series> = Vec::new();
        if sets.len() == 1 {
            out = self
                .querier
                .select(&sets[0], min_t, max_t)
                .map_err(storage_error)?;
        } else {
            let mut seen = HashSet::new();
            for set in &sets {
                for s in self
                    .querier
                    .select(set, min_t, max_t)
                    .map_err(storage_error)?
                {
                    if seen.insert(s.labels.clone()) {
                        out.push(s);
                    }
                }
            }
        }
        let n = out.iter().map(|s| s.samples.len()).sum();
        self.count_samples(n)?;
        Ok(out)
    }

    pub(crate) fn eval(&mut self, expr: &Expr, steps: Steps) -> Result<Val, EvalError> {
        self.check_deadline()?;
        let n = steps.len();
        match expr {
            Expr::NumberLiteral(l) => Ok(Val::Scalar(vec![l.val; n])),
            Expr::StringLiteral(s) => Ok(Val::String(s.val.clone())),
            Expr::Paren(p) => self.eval(&p.expr, steps),
            Expr::Unary(u) => match self.eval(&u.expr, steps)? {
                Val::Scalar(v) => Ok(Val::Scalar(v.into_iter().map(|x| -x).collect())),
                Val::Vector(mut vs) => {
                    let mut relabel = Relabel::new(drop_metric_name);
                    for v in &mut vs {
                        for e in v.iter_mut() {
                            e.v = -e.v;
                            e.labels = relabel.get(&e.labels);
                        }
                        check_unique_labels(v)?;
                    }
                    Ok(Val::Vector(vs))
                }
                other => Err(EvalError::bad_data(format!(
                    "unary expression only allowed on expressions of type scalar or instant vector, got {}",
                    other.type_name()
                ))),
            },
            Expr::Binary(b) => crate::binary::eval(self, b, steps),
            Expr::Aggregate(a) => crate::aggregate::eval(self, a, steps),
            Expr::Call(c) => crate::functions::eval(self, c, steps),
            Expr::VectorSelector(vs) => Ok(Val::Vector(self.vector_selector(vs, steps)?)),
            Expr::MatrixSelector(ms) => Ok(Val::Range(self.matrix_selector(ms, steps)?)),
            Expr::Subquery(sq) => Ok(Val::Range(self.subquery(sq, steps)?)),
            Expr::Extension(_) => Err(EvalError::bad_data(
                "extension expressions are not supported",
            )),
        }
    }

    /// Evaluates `expr`, which the parser has typed as an instant vector.
    pub(crate) fn eval_vector(
        &mut self,
        expr: &Expr,
        steps: Steps,
        context: &str,
    ) -> Result<Vec<Vector>, EvalError> {
        match self.eval(expr, steps)? {
            Val::Vector(v) => Ok(v),
            other => Err(EvalError::bad_data(format!(
                "expected type instant vector in {context}, got {}",
                other.type_name()
            ))),
        }
    }

    /// Evaluates `expr`, which the parser has typed as a scalar.
    pub(crate) fn eval_scalar(
        &mut self,
        expr: &Expr,
        steps: Steps,
        context: &str,
    ) -> Result<Vec<f64>, EvalError> {
        match self.eval(expr, steps)? {
            Val::Scalar(v) => Ok(v),
            other => Err(EvalError::bad_data(format!(
                "expected type scalar in {context}, got {}",
                other.type_name()
            ))),
        }
    }

    /// Evaluates a range-vector argument (a matrix selector or a subquery).
    pub(crate) fn eval_range(
        &mut self,
        expr: &Expr,
        steps: Steps,
        context: &str,
    ) -> Result<RangeArg, EvalError> {
        match self.eval(expr, steps)? {
            Val::Range(r) => Ok(r),
            other => Err(EvalError::bad_data(format!(
                "expected type range vector in {context}, got {}",
                other.type_name()
            ))),
        }
    }

    /// An instant vector selector: at each step, the latest sample of each series within
    /// the lookback window `(t - lookback, t]`, unless that sample is a staleness marker.
    pub(crate) fn vector_selector(
        &mut self,
        vs: &VectorSelector,
        steps: Steps,
    ) -> Result<Vec<Vector>, EvalError> {
        let n = steps.len();
        let mut out: Vec<Vector> = (0..n).map(|_| Vec::new()).collect();
        if n == 0 {
            return Ok(out);
        }
        let offset = offset_ms(&vs.offset);
        let refs: Vec<i64> = steps
            .iter()
            .map(|ts| self.at_time(&vs.at, ts).saturating_sub(offset))
            .collect();
        let (min_ref, max_ref) = min_max(&refs);
        let series = self.select(vs, min_ref.saturating_sub(self.lookback) + 1, max_ref)?;
        for s in series {
            self.check_deadline()?;
            let labels = Arc::new(s.labels);
            for (i, &r) in refs.iter().enumerate() {
                let idx = s.samples.partition_point(|x| x.t <= r);
                if idx == 0 {
                    continue;
                }
                let smp = s.samples[idx - 1];
                if smp.t <= r.saturating_sub(self.lookback) || is_stale_nan(smp.v) {
                    continue;
                }
                out[i].push(Elem {
                    labels: labels.clone(),
                    v: smp.v,
                    t: smp.t,
                });
            }
        }
        Ok(out)
    }

    fn matrix_selector(
        &mut self,
        ms: &MatrixSelector,
        steps: Steps,
    ) -> Result<RangeArg, EvalError> {
        let vs = &ms.vs;
        let range = duration_ms(&ms.range);
        let offset = offset_ms(&vs.offset);
        let ends: Vec<i64> = steps
            .iter()
            .map(|ts| self.at_time(&vs.at, ts).saturating_sub(offset))
            .collect();
        if ends.is_empty() {
            return Ok(RangeArg {
                series: Vec::new(),
                range,
                ends,
            });
        }
        let (min_end, max_end) = min_max(&ends);
        let mut series = self.select(vs, min_end.saturating_sub(range) + 1, max_end)?;
        // Staleness markers only end a series for instant selectors; a window never
        // contains them.
        for s in &mut series {
            s.samples.retain(|x| !is_stale_nan(x.v));
        }
        series.retain(|s| !s.samples.is_empty());
        Ok(RangeArg {
            series,
            range,
            ends,
        })
    }

    fn subquery(&mut self, sq: &SubqueryExpr, steps: Steps) -> Result<RangeArg, EvalError> {
        let range = duration_ms(&sq.range);
        let offset = offset_ms(&sq.offset);
        let step = match &sq.step {
            Some(s) => duration_ms(s),
            None => self.default_subquery_step,
        };
        if step <= 0 {
            return Err(EvalError::bad_data(
                "zero or negative subquery resolution is not allowed",
            ));
        }
        let ends: Vec<i64> = steps
            .iter()
            .map(|ts| self.at_time(&sq.at, ts).saturating_sub(offset))
            .collect();
        if ends.is_empty() {
            return Ok(RangeArg {
                series: Vec::new(),
                range,
                ends,
            });
        }
        let (min_end, max_end) = min_max(&ends);
        // The inner steps are the multiples of the step after the earliest window start,
        // so that the same points are sampled whatever the outer evaluation time.
        let lo = min_end.saturating_sub(range);
        let mut start = step * (lo / step);
        if start <= lo {
            start = start.saturating_add(step);
        }
        let inner = Steps {
            start,
            end: max_end,
            step,
        };
        // Every inner step costs memory even before any sample is read: count them.
        self.count_samples(inner.len())?;
        let val = self.eval(&sq.expr, inner)?;
        let mut series: Vec<Series> = Vec::new();
        let mut points = 0usize;
        match val {
            Val::Vector(vs) => {
                let mut builder = SeriesBuilder::default();
                for (i, v) in vs.into_iter().enumerate() {
                    let t = inner.ts(i);
                    points += v.len();
                    for e in v {
                        builder.push(&e.labels, Sample { t, v: e.v });
                    }
                }
                series = builder.into_series();
            }
            Val::Scalar(vs) => {
                let samples: Vec<_> = vs
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| Sample { t: inner.ts(i), v })
                    .collect();
                points += samples.len();
                if !samples.is_empty() {
                    series.push(Series {
                        labels: Labels::default(),
                        samples,
                    });
                }
            }
            other => {
                return Err(EvalError::bad_data(format!(
                    "subquery is only allowed on instant vector, got {} instead",
                    other.type_name()
                )));
            }
        }
        self.count_samples(points)?;
        Ok(RangeArg {
            series,
            range,
            ends,
        })
    }
}

pub(crate) fn min_max(v: &[i64]) -> (i64, i64) {
    let min = v.iter().copied().min().unwrap_or(0);
    let max = v.iter().copied().max().unwrap_or(0);
    (min, max)
}
