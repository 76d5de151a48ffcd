//! Binary operators: arithmetic, comparisons (filtering or `bool`), `atan2` and the set
//! operators `and`, `or`, `unless`, with Prometheus's vector matching (`on`, `ignoring`,
//! `group_left`, `group_right`) and its rules for which labels survive.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use promql_parser::parser::token::{
    T_ADD, T_ATAN2, T_DIV, T_EQLC, T_GTE, T_GTR, T_LAND, T_LOR, T_LSS, T_LTE, T_LUNLESS, T_MOD,
    T_MUL, T_NEQ, T_POW, T_SUB, TokenId,
};
use promql_parser::parser::{BinaryExpr, LabelModifier, VectorMatchCardinality};

use crate::error::EvalError;
use crate::eval::{
    Elem, Evaluator, Labels, Lbl, Relabel, Steps, Val, Vector, check_unique_labels,
    drop_metric_name, without_metric_name,
};

/// True for the operators whose result no longer means what the metric name says.
fn changes_metric_schema(op: TokenId) -> bool {
    matches!(op, T_ADD | T_SUB | T_MUL | T_DIV | T_POW | T_MOD | T_ATAN2)
}

fn is_comparison(op: TokenId) -> bool {
    matches!(op, T_EQLC | T_NEQ | T_GTR | T_LSS | T_GTE | T_LTE)
}

/// Go's `math.Pow` and Rust's `powf` (C's `pow`) agree on the special cases PromQL relies
/// on: `x^0 = 1` and `1^y = 1` even for NaN, `(-1)^±Inf = 1`.
fn pow(a: f64, b: f64) -> f64 {
    a.powf(b)
}

/// Scalar-scalar arithmetic; comparisons give 1 or 0 (the parser demands `bool` there).
pub(crate) fn scalar_binop(op: TokenId, a: f64, b: f64) -> Result<f64, EvalError> {
    let btof = |c: bool| if c { 1.0 } else { 0.0 };
    Ok(match op {
        T_ADD => a + b,
        T_SUB => a - b,
        T_MUL => a * b,
        T_DIV => a / b,
        T_POW => pow(a, b),
        T_MOD => a % b,
        T_ATAN2 => a.atan2(b),
        T_EQLC => btof(a == b),
        T_NEQ => btof(a != b),
        T_GTR => btof(a > b),
        T_LSS => btof(a < b),
        T_GTE => btof(a >= b),
        T_LTE => btof(a <= b),
        _ => {
            return Err(EvalError::bad_data(
                "operator not allowed for scalar operations",
            ));
        }
    })
}

/// One element pair: the value and whether a comparison keeps it. Comparisons return the
/// left-hand value, as Prometheus does.
fn elem_binop(op: TokenId, a: f64, b: f64) -> Result<(f64, bool), EvalError> {
    Ok(match op {
        T_EQLC => (a, a == b),
        T_NEQ => (a, a != b),
        T_GTR => (a, a > b),
        T_LSS => (a, a < b),
        T_GTE => (a, a >= b),
        T_LTE => (a, a <= b),
        _ => (scalar_binop(op, a, b)?, true),
    })
}

pub(crate) fn eval(ev: &mut Evaluator<'_>, b: &BinaryExpr, steps: Steps) -> Result<Val, EvalError> {
    let op = b.op.id();
    let return_bool = b.return_bool();
    let lhs = ev.eval(&b.lhs, steps)?;
    let rhs = ev.eval(&b.rhs, steps)?;
    match (lhs, rhs) {
        (Val::Scalar(l), Val::Scalar(r)) => {
            let v = l
                .iter()
                .zip(&r)
                .map(|(&a, &b)| scalar_binop(op, a, b))
                .collect::<Result<_, _>>()?;
            Ok(Val::Scalar(v))
        }
        (Val::Vector(l), Val::Scalar(r)) => {
            let mut out = Vec::with_capacity(l.len());
            let mut relabel = Relabel::new(drop_metric_name as fn(&Lbl) -> Lbl);
            for (v, s) in l.into_iter().zip(r) {
                out.push(vector_scalar(op, v, s, false, return_bool, &mut relabel)?);
            }
            Ok(Val::Vector(out))
        }
        (Val::Scalar(l), Val::Vector(r)) => {
            let mut out = Vec::with_capacity(r.len());
            let mut relabel = Relabel::new(drop_metric_name as fn(&Lbl) -> Lbl);
            for (v, s) in r.into_iter().zip(l) {
                out.push(vector_scalar(op, v, s, true, return_bool, &mut relabel)?);
            }
            Ok(Val::Vector(out))
        }
        (Val::Vector(l), Val::Vector(r)) => {
            let matching = Matching::new(b);
            let mut out = Vec::with_capacity(l.len());
            for (lv, rv) in l.into_iter().zip(r) {
                ev.check_deadline()?;
                let v = match op {
                    T_LAND => set_and(lv, &rv, &matching),
                    T_LOR => set_or(lv, rv, &matching),
                    T_LUNLESS => set_unless(lv, &rv, &matching),
                    _ => {
                        let v = vector_binop(op, lv, rv, &matching, return_bool)?;
                        check_unique_labels(&v)?;
                        v
                    }
                };
                out.push(v);
            }
            Ok(Val::Vector(out))
        }
        (l, r) => Err(EvalError::bad_data(format!(
            "binary expression must contain only scalar and instant vector types, got {} and {}",
            l.type_name(),
            r.type_name()
        ))),
    }
}

fn vector_scalar(
    op: TokenId,
    v: Vector,
    s: f64,
    swap: bool,
    return_bool: bool,
    relabel: &mut Relabel<fn(&Lbl) -> Lbl>,
) -> Result<Vector, EvalError> {
    let mut out = Vec::with_capacity(v.len());
    for mut e in v {
        let (a, b) = if swap { (s, e.v) } else { (e.v, s) };
        let (mut value, mut keep) = elem_binop(op, a, b)?;
        // `2 < x` filters x and keeps x's value, whichever side the vector is on.
        if is_comparison(op) && swap {
            value = b;
        }
        if return_bool {
            value = if keep { 1.0 } else { 0.0 };
            keep = true;
        }
        if keep {
            e.v = value;
            if changes_metric_schema(op) || return_bool {
                e.labels = relabel.get(&e.labels);
            }
            out.push(e);
        }
    }
    check_unique_labels(&out)?;
    Ok(out)
}

/// How two vectors' elements are paired.
struct Matching {
    on: bool,
    names: Vec<String>,
    card: VectorMatchCardinality,
    /// `fill_left(v)` / `fill_right(v)` (`fill(v)` sets both).
    fill_lhs: Option<f64>,
    fill_rhs: Option<f64>,
}

impl Matching {
    fn new(b: &BinaryExpr) -> Matching {
        let (fill_lhs, fill_rhs) = b
            .modifier
            .as_ref()
            .map(|m| (m.fill_values.lhs, m.fill_values.rhs))
            .unwrap_or_default();
        let (on, names, card) = match &b.modifier {
            None => (false, Vec::new(), VectorMatchCardinality::OneToOne),
            Some(m) => {
                let (on, names) = match &m.matching {
                    Some(LabelModifier::Include(l)) => (true, l.labels.clone()),
                    Some(LabelModifier::Exclude(l)) => (false, l.labels.clone()),
                    None => (false, Vec::new()),
                };
                (on, names, m.card.clone())
            }
        };
        Matching {
            on,
            names,
            card,
            fill_lhs,
            fill_rhs,
        }
    }

    /// The labels two elements must share to match.
    fn signature(&self, l: &Labels) -> Labels {
        let names: Vec<&str> = self.names.iter().map(String::as_str).collect();
        if self.on {
            l.only(&names)
        } else {
            let mut all = names;
            all.push(tandem_tsdb::model::METRIC_NAME);
            l.without(&all)
        }
    }

    fn include(&self) -> &[String] {
        match &self.card {
            VectorMatchCardinality::ManyToOne(l) | VectorMatchCardinality::OneToMany(l) => {
                &l.labels
            }
            _ => &[],
        }
    }
}

fn set_and(lhs: Vector, rhs: &Vector, m: &Matching) -> Vector {
    if lhs.is_empty() || rhs.is_empty() {
        return Vec::new();
    }
    let right: HashSet<Labels> = rhs.iter().map(|e| m.signature(&e.labels)).collect();
    lhs.into_iter()
        .filter(|e| right.contains(&m.signature(&e.labels)))
        .collect()
}

fn set_or(lhs: Vector, rhs: Vector, m: &Matching) -> Vector {
    if lhs.is_empty() {
        return rhs;
    }
    if rhs.is_empty() {
        return lhs;
    }
    let left: HashSet<Labels> = lhs.iter().map(|e| m.signature(&e.labels)).collect();
    let mut out = lhs;
    out.extend(
        rhs.into_iter()
            .filter(|e| !left.contains(&m.signature(&e.labels))),
    );
    out
}

fn set_unless(lhs: Vector, rhs: &Vector, m: &Matching) -> Vector {
    if lhs.is_empty() || rhs.is_empty() {
        return lhs;
    }
    let right: HashSet<Labels> = rhs.iter().map(|e| m.signature(&e.labels)).collect();
    lhs.into_iter()
        .filter(|e| !right.contains(&m.signature(&e.labels)))
        .collect()
}

/// Arithmetic and comparison between two vectors, one-to-one or many-to-one, with the
/// experimental `fill`, `fill_left` and `fill_right` modifiers: an element without a match
/// is paired with a stand-in for the missing side that carries the fill value and the
/// match group's labels.
fn vector_binop(
    op: TokenId,
    lhs: Vector,
    rhs: Vector,
    m: &Matching,
    return_bool: bool,
) -> Result<Vector, EvalError> {
    let no_fill = m.fill_lhs.is_none() && m.fill_rhs.is_none();
    if (lhs.is_empty() && rhs.is_empty()) || ((lhs.is_empty() || rhs.is_empty()) && no_fill) {
        return Ok(Vec::new());
    }
    // Make the right side the "one" side; remember to swap values back. As in Prometheus,
    // the fill values are not swapped with the sides: under `group_right`, `fill_left`
    // stands in for a missing element of the (right-hand) "many" side.
    let swapped = matches!(m.card, VectorMatchCardinality::OneToMany(_));
    let (many, one) = if swapped { (rhs, lhs) } else { (lhs, rhs) };
    let (fill_one, fill_many) = (m.fill_rhs, m.fill_lhs);
    let mut one_by_sig: HashMap<Labels, usize> = HashMap::with_capacity(one.len());
    for (j, e) in one.iter().enumerate() {
        let sig = m.signature(&e.labels);
        if let Some(&prev) = one_by_sig.get(&sig) {
            let side = if swapped { "left" } else { "right" };
            let (mut a, mut b) = (e.labels.to_string(), one[prev].labels.to_string());
            if a > b {
                std::mem::swap(&mut a, &mut b);
            }
            return Err(EvalError::execution(format!(
                "found duplicate series for the match group {sig} on the {side} hand-side of the operation: [{a}, {b}];many-to-many matching not allowed: matching labels must be unique on one side"
            )));
        }
        one_by_sig.insert(sig, j);
    }
    let mut pairs = Pairs {
        op,
        m,
        return_bool,
        swapped,
        one_to_one: matches!(m.card, VectorMatchCardinality::OneToOne),
        matched: HashSet::new(),
        inserted: HashMap::new(),
        out: Vec::new(),
    };
    for ls in &many {
        let sig = m.signature(&ls.labels);
        match one_by_sig.get(&sig) {
            Some(&j) => pairs.emit(ls, &one[j], sig)?,
            None => {
                let Some(fill) = fill_one else { continue };
                let stand_in = Elem {
                    labels: Arc::new(sig.clone()),
                    v: fill,
                    t: ls.t,
                };
                pairs.emit(ls, &stand_in, sig)?;
            }
        }
    }
    if let Some(fill) = fill_many {
        for rs in &one {
            let sig = m.signature(&rs.labels);
            if pairs.matched.contains(&sig) || pairs.inserted.contains_key(&sig) {
                continue;
            }
            let stand_in = Elem {
                labels: Arc::new(sig.clone()),
                v: fill,
                t: rs.t,
            };
            pairs.emit(&stand_in, rs, sig)?;
        }
    }
    Ok(pairs.out)
}

/// The result of one vector-vector operation as it is built, pair by pair.
struct Pairs<'m> {
    op: TokenId,
    m: &'m Matching,
    return_bool: bool,
    swapped: bool,
    one_to_one: bool,
    /// Match groups already paired (one-to-one).
    matched: HashSet<Labels>,
    /// Result labels per match group (many-to-one).
    inserted: HashMap<Labels, HashSet<Labels>>,
    out: Vector,
}

impl Pairs<'_> {
    fn emit(&mut self, ls: &Elem, rs: &Elem, sig: Labels) -> Result<(), EvalError> {
        let (a, b) = if self.swapped {
            (rs.v, ls.v)
        } else {
            (ls.v, rs.v)
        };
        let (mut value, keep) = elem_binop(self.op, a, b)?;
        if self.return_bool {
            value = if keep { 1.0 } else { 0.0 };
        }
        let metric = result_metric(&ls.labels, &rs.labels, self.op, self.m, self.return_bool);
        if self.one_to_one {
            if !self.matched.insert(sig) {
                return Err(EvalError::execution(
                    "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)",
                ));
            }
        } else if !self.inserted.entry(sig).or_default().insert(metric.clone()) {
            return Err(EvalError::execution(
                "multiple matches for labels: grouping labels must ensure unique matches",
            ));
        }
        if keep || self.return_bool {
            self.out.push(Elem {
                labels: Arc::new(metric),
                v: value,
                t: ls.t,
            });
        }
        Ok(())
    }
}

/// The labels of a result element: the "many" side's, without the metric name when the
/// operator changes meaning, cut to the matching labels for one-to-one matching, plus the
/// `group_x(...)` labels copied from the "one" side.
fn result_metric(
    many: &Labels,
    one: &Labels,
    op: TokenId,
    m: &Matching,
    return_bool: bool,
) -> Labels {
    let mut l = if return_bool || changes_metric_schema(op) {
        without_metric_name(many)
    } else {
        many.clone()
    };
    if matches!(m.card, VectorMatchCardinality::OneToOne) {
        let names: Vec<&str> = m.names.iter().map(String::as_str).collect();
        l = if m.on {
            l.only(&names)
        } else {
            l.without(&names)
        };
    }
    for name in m.include() {
        l = l.with(name, one.get(name).unwrap_or(""));
    }
    l
}
