//! Evaluation of a rule group at one instant, with Prometheus's semantics, and the state it
//! carries from one evaluation to the next.
//!
//! Rules run in order and each sees what the rules before it wrote in the same evaluation
//! (Prometheus commits every rule's output before the next rule runs); here the outputs are
//! laid over the caller's store for the rest of the evaluation and all of them are returned
//! for the caller to store. Alerting rules follow `rules/alerting.go`: inactive -> pending
//! -> firing once pending for `for`, firing kept for `keep_firing_for` after the condition
//! goes, resolved alerts kept 15 minutes (so notifiers can send the resolution), and the
//! `ALERTS` / `ALERTS_FOR_STATE` series. A series a rule wrote at its previous evaluation
//! and not at this one gets a staleness marker, as in Prometheus.
//!
//! Everything that must survive a server restart is in [`GroupState`], which round-trips
//! through JSON: a pending alert keeps its `active_at`, so its `for` does not start over.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use tandem_promql::testing::MemQuerier;
use tandem_promql::{Engine, Value};
use tandem_tsdb::model::{
    Labels, METRIC_NAME, Matcher, Querier, QueryError, Sample, Series, stale_nan,
};

use crate::rules::{Rule, RuleGroup, RuleKind};
use crate::template::{QueryFn, QuerySamples, TemplateData, expand};

/// Resolved alerts are kept this long, so notifiers can send the resolution.
const RESOLVED_RETENTION_MS: i64 = 15 * 60 * 1000;

/// Where an alert is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    /// Resolved (kept a while after firing), or gone.
    Inactive,
    /// The condition holds, for less than `for`.
    Pending,
    Firing,
}

impl AlertState {
    /// Prometheus's name: `inactive`, `pending`, `firing`.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Inactive => "inactive",
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
        }
    }
}

/// One alert of an alerting rule: one series of its expression's result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// The series' labels without `__name__`, plus the rule's labels (expanded) and
    /// `alertname`.
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub state: AlertState,
    /// The expression's value at the last evaluation that returned the series.
    #[serde(with = "float_text")]
    pub value: f64,
    /// When the condition started to hold (milliseconds since the epoch).
    pub active_at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fired_at_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at_ms: Option<i64>,
    /// Since when a firing alert's condition is gone while `keep_firing_for` holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_firing_since_ms: Option<i64>,
}

/// How a rule's last evaluation went (Prometheus's `health`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    #[default]
    Unknown,
    Ok,
    Err,
}

/// What one rule carries between evaluations.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RuleState {
    pub name: String,
    pub kind: RuleKind,
    #[serde(default)]
    pub health: Health,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_eval_ms: Option<i64>,
    #[serde(default)]
    pub eval_seconds: f64,
    /// Alerts (pending, firing, recently resolved), sorted by labels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alerts: Vec<Alert>,
    /// The series the rule wrote at its last evaluation (to mark them stale when they go).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub series: Vec<BTreeMap<String, String>>,
}

/// Everything a group carries between evaluations; serializable so a server can persist
/// it and restore it after a restart.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GroupState {
    pub name: String,
    pub file: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_eval_ms: Option<i64>,
    #[serde(default)]
    pub eval_seconds: f64,
    pub rules: Vec<RuleState>,
}

/// An alert that changed state at an evaluation (for the timeline and notifiers).
#[derive(Clone, Debug, PartialEq)]
pub struct AlertChange {
    pub rule: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub from: AlertState,
    pub to: AlertState,
    pub at_ms: i64,
    pub value: f64,
}

/// A rule whose evaluation failed (its other rules still ran).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleError {
    pub rule: String,
    pub message: String,
}

/// What one evaluation of a group produced.
#[derive(Clone, Debug, Default)]
pub struct EvalOutput {
    /// Samples to store: recording-rule results, `ALERTS`, `ALERTS_FOR_STATE`, and
    /// staleness markers for series that went away.
    pub samples: Vec<(Labels, Sample)>,
    pub changes: Vec<AlertChange>,
    pub errors: Vec<RuleError>,
}

/// What evaluation reads: the engine, the store, and what alert templates may mention.
#[derive(Clone, Copy)]
pub struct EvalContext<'a> {
    pub engine: &'a Engine,
    pub querier: &'a dyn Querier,
    pub external_labels: &'a BTreeMap<String, String>,
    pub external_url: &'a str,
}

impl GroupState {
    /// A fresh state for `group`: nothing evaluated yet.
    pub fn new(group: &RuleGroup) -> GroupState {
        let mut s = GroupState {
            name: group.name.clone(),
            file: group.file.clone(),
            ..GroupState::default()
        };
        s.align(group);
        s
    }

    /// Fits a state (perhaps restored from disk, perhaps from before the rules changed) to
    /// `group`: each rule keeps the state of the rule with the same kind and name (the
    /// n-th of that name keeps the n-th's), new rules start empty, removed ones are dropped.
    pub fn align(&mut self, group: &RuleGroup) {
        let lines_up = self.rules.len() == group.rules.len()
            && self
                .rules
                .iter()
                .zip(&group.rules)
                .all(|(s, r)| s.name == r.name && s.kind == r.kind);
        self.name = group.name.clone();
        self.file = group.file.clone();
        if lines_up {
            return;
        }
        let mut old: Vec<Option<RuleState>> = std::mem::take(&mut self.rules)
            .into_iter()
            .map(Some)
            .collect();
        for r in &group.rules {
            let found = old.iter_mut().find(|s| {
                s.as_ref()
                    .is_some_and(|s| s.name == r.name && s.kind == r.kind)
            });
            let state = found.and_then(Option::take).unwrap_or_else(|| RuleState {
                name: r.name.clone(),
                kind: r.kind,
                health: Health::Unknown,
                last_error: None,
                last_eval_ms: None,
                eval_seconds: 0.0,
                alerts: Vec::new(),
                series: Vec::new(),
            });
            self.rules.push(state);
        }
    }

    /// Pending and firing alerts of every rule, with the rule's name.
    pub fn active_alerts(&self) -> impl Iterator<Item = (&str, &Alert)> {
        self.rules.iter().flat_map(|r| {
            r.alerts
                .iter()
                .filter(|a| a.state != AlertState::Inactive)
                .map(move |a| (r.name.as_str(), a))
        })
    }
}

fn to_map(l: &Labels) -> BTreeMap<String, String> {
    l.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn from_map(m: &BTreeMap<String, String>) -> Labels {
    Labels::new(m.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

impl RuleGroup {
    /// Evaluates every rule at `t_ms` (milliseconds since the epoch), updating `state`.
    pub fn eval(&self, ctx: &EvalContext<'_>, t_ms: i64, state: &mut GroupState) -> EvalOutput {
        let started = std::time::Instant::now();
        state.align(self);
        let q_ms = t_ms - i64::try_from(self.query_offset.as_millis()).unwrap_or(0);
        let mut out = EvalOutput::default();
        let mut written = MemQuerier::new();
        for (rule, rs) in self.rules.iter().zip(state.rules.iter_mut()) {
            let rule_started = std::time::Instant::now();
            let querier = Overlay {
                base: ctx.querier,
                extra: &written,
            };
            let rctx = EvalContext {
                querier: &querier,
                ..*ctx
            };
            let result = match rule.kind {
                RuleKind::Record => eval_record(rule, &rctx, q_ms, self.limit),
                RuleKind::Alert => {
                    eval_alert(rule, rs, &rctx, t_ms, q_ms, self.limit, &mut out.changes)
                }
            };
            rs.last_eval_ms = Some(t_ms);
            rs.eval_seconds = rule_started.elapsed().as_secs_f64();
            let samples = match result {
                Ok(s) => {
                    rs.health = Health::Ok;
                    rs.last_error = None;
                    s
                }
                Err(message) => {
                    rs.health = Health::Err;
                    rs.last_error = Some(message.clone());
                    out.errors.push(RuleError {
                        rule: rule.name.clone(),
                        message,
                    });
                    continue;
                }
            };
            // Series written last time and not now end with a staleness marker.
            let now: Vec<BTreeMap<String, String>> =
                samples.iter().map(|(l, _)| to_map(l)).collect();
            let mut all = samples;
            for prev in &rs.series {
                if !now.contains(prev) {
                    all.push((
                        from_map(prev),
                        Sample {
                            t: q_ms,
                            v: stale_nan(),
                        },
                    ));
                }
            }
            rs.series = now;
            for (l, s) in &all {
                written.add(l.clone(), [*s]);
            }
            out.samples.extend(all);
        }
        state.last_eval_ms = Some(t_ms);
        state.eval_seconds = started.elapsed().as_secs_f64();
        out
    }
}

/// Runs `expr` at `t`; a scalar is a one-element vector without labels.
fn query(ctx: &EvalContext<'_>, expr: &str, t: i64) -> Result<Vec<(Labels, f64)>, String> {
    match ctx.engine.instant(ctx.querier, expr, t) {
        Ok(Value::Vector(v)) => Ok(v.into_iter().map(|(l, s)| (l, s.v)).collect()),
        Ok(Value::Scalar { v, .. }) => Ok(vec![(Labels::default(), v)]),
        Ok(_) => Err("rule result is not a vector or scalar".into()),
        Err(e) => Err(e.to_string()),
    }
}

fn eval_record(
    rule: &Rule,
    ctx: &EvalContext<'_>,
    t: i64,
    limit: usize,
) -> Result<Vec<(Labels, Sample)>, String> {
    let result = query(ctx, &rule.expr, t)?;
    let mut out = Vec::with_capacity(result.len());
    let mut seen = std::collections::HashSet::new();
    for (labels, v) in result {
        let mut l = labels.with(METRIC_NAME, &rule.name);
        for (k, val) in &rule.labels {
            l = l.with(k, val);
        }
        if !seen.insert(l.clone()) {
            return Err(
                "vector contains metrics with the same labelset after applying rule labels".into(),
            );
        }
        out.push((l, Sample { t, v }));
    }
    if limit > 0 && out.len() > limit {
        return Err(format!("exceeded limit {limit} with {} series", out.len()));
    }
    Ok(out)
}

fn eval_alert(
    rule: &Rule,
    rs: &mut RuleState,
    ctx: &EvalContext<'_>,
    t: i64,
    q: i64,
    limit: usize,
    changes: &mut Vec<AlertChange>,
) -> Result<Vec<(Labels, Sample)>, String> {
    let result = query(ctx, &rule.expr, q)?;
    let run_query = |expr: &str| -> Result<QuerySamples, String> {
        query(ctx, expr, q).map(|v| v.into_iter().map(|(l, x)| (to_map(&l), x)).collect())
    };
    let query_fn: &QueryFn<'_> = &run_query;
    let template_name = format!("__alert_{}", rule.name);
    let before: HashMap<BTreeMap<String, String>, AlertState> = rs
        .alerts
        .iter()
        .map(|a| (a.labels.clone(), a.state))
        .collect();

    // The alerts the expression asks for now, by label set.
    let mut fresh: BTreeMap<BTreeMap<String, String>, Alert> = BTreeMap::new();
    for (labels, value) in result {
        let data = TemplateData {
            labels: to_map(&labels),
            external_labels: ctx.external_labels.clone(),
            external_url: ctx.external_url.to_string(),
            value,
        };
        let mut l = labels.without(&[METRIC_NAME]);
        for (k, v) in &rule.labels {
            l = l.with(k, &expand(&template_name, v, &data, Some(query_fn)));
        }
        l = l.with("alertname", &rule.name);
        let annotations = rule
            .annotations
            .iter()
            .map(|(k, v)| (k.clone(), expand(&template_name, v, &data, Some(query_fn))))
            .collect();
        let key = to_map(&l);
        if fresh.contains_key(&key) {
            return Err(
                "vector contains metrics with the same labelset after applying alert labels".into(),
            );
        }
        fresh.insert(
            key.clone(),
            Alert {
                labels: key,
                annotations,
                state: AlertState::Pending,
                value,
                active_at_ms: t,
                fired_at_ms: None,
                resolved_at_ms: None,
                keep_firing_since_ms: None,
            },
        );
    }

    let mut active: BTreeMap<BTreeMap<String, String>, Alert> = std::mem::take(&mut rs.alerts)
        .into_iter()
        .map(|a| (a.labels.clone(), a))
        .collect();
    for (key, a) in &fresh {
        match active.get_mut(key) {
            Some(old) if old.state != AlertState::Inactive => {
                old.value = a.value;
                old.annotations = a.annotations.clone();
            }
            _ => {
                active.insert(key.clone(), a.clone());
            }
        }
    }

    let for_ms = i64::try_from(rule.for_.as_millis()).unwrap_or(i64::MAX);
    let keep_ms = i64::try_from(rule.keep_firing_for.as_millis()).unwrap_or(i64::MAX);
    let mut samples = Vec::new();
    let mut kept = Vec::new();
    let mut num_active = 0usize;
    for (key, mut a) in active {
        let mut delete = false;
        if !fresh.contains_key(&key) {
            let mut keep_firing = false;
            if a.state == AlertState::Firing && keep_ms > 0 {
                let since = *a.keep_firing_since_ms.get_or_insert(t);
                keep_firing = t - since < keep_ms;
            }
            if a.state == AlertState::Pending
                || a.resolved_at_ms
                    .is_some_and(|r| t - r > RESOLVED_RETENTION_MS)
            {
                delete = true;
            }
            if a.state != AlertState::Inactive && !keep_firing {
                a.state = AlertState::Inactive;
                a.resolved_at_ms = Some(t);
            }
            if !keep_firing {
                record_change(rule, &before, &a, t, changes);
                if !delete {
                    kept.push(a);
                }
                continue;
            }
        } else {
            a.keep_firing_since_ms = None;
        }
        num_active += 1;
        if a.state == AlertState::Pending && t - a.active_at_ms >= for_ms {
            a.state = AlertState::Firing;
            a.fired_at_ms = Some(t);
        }
        samples.push(alerts_sample(rule, &a, q, true));
        samples.push(alerts_sample(rule, &a, q, false));
        record_change(rule, &before, &a, t, changes);
        if !delete {
            kept.push(a);
        }
    }
    if limit > 0 && num_active > limit {
        rs.alerts.clear();
        return Err(format!(
            "exceeded limit of {limit} with {num_active} alerts"
        ));
    }
    rs.alerts = kept;
    Ok(samples)
}

fn record_change(
    rule: &Rule,
    before: &HashMap<BTreeMap<String, String>, AlertState>,
    a: &Alert,
    t: i64,
    changes: &mut Vec<AlertChange>,
) {
    let from = before
        .get(&a.labels)
        .copied()
        .unwrap_or(AlertState::Inactive);
    if from != a.state {
        changes.push(AlertChange {
            rule: rule.name.clone(),
            labels: a.labels.clone(),
            annotations: a.annotations.clone(),
            from,
            to: a.state,
            at_ms: t,
            value: a.value,
        });
    }
}

/// `ALERTS{..., alertstate}` = 1, or `ALERTS_FOR_STATE{...}` = active-at in seconds.
fn alerts_sample(rule: &Rule, a: &Alert, t: i64, alerts: bool) -> (Labels, Sample) {
    // As Prometheus: the rule's labels as written, overridden by the alert's.
    let mut m: BTreeMap<String, String> = rule.labels.clone();
    m.extend(a.labels.clone());
    m.insert("alertname".into(), rule.name.clone());
    let (name, v) = if alerts {
        m.insert("alertstate".into(), a.state.as_str().into());
        ("ALERTS", 1.0)
    } else {
        ("ALERTS_FOR_STATE", a.active_at_ms.div_euclid(1000) as f64)
    };
    m.insert(METRIC_NAME.into(), name.into());
    (from_map(&m), Sample { t, v })
}

/// The caller's store with this evaluation's outputs laid over it.
struct Overlay<'a> {
    base: &'a dyn Querier,
    extra: &'a MemQuerier,
}

impl Querier for Overlay<'_> {
    fn select(
        &self,
        matchers: &[Matcher],
        min_t: i64,
        max_t: i64,
    ) -> Result<Vec<Series>, QueryError> {
        let mut out = self.base.select(matchers, min_t, max_t)?;
        for s in self.extra.select(matchers, min_t, max_t)? {
            match out.iter_mut().find(|o| o.labels == s.labels) {
                Some(o) => {
                    for sample in s.samples {
                        match o.samples.binary_search_by_key(&sample.t, |x| x.t) {
                            Ok(i) => o.samples[i] = sample,
                            Err(i) => o.samples.insert(i, sample),
                        }
                    }
                }
                None => out.push(s),
            }
        }
        Ok(out)
    }

    fn label_names(
        &self,
        matchers: &[Matcher],
        min_t: i64,
        max_t: i64,
    ) -> Result<Vec<String>, QueryError> {
        let mut v = self.base.label_names(matchers, min_t, max_t)?;
        v.extend(self.extra.label_names(matchers, min_t, max_t)?);
        v.sort();
        v.dedup();
        Ok(v)
    }

    fn label_values(
        &self,
        name: &str,
        matchers: &[Matcher],
        min_t: i64,
        max_t: i64,
    ) -> Result<Vec<String>, QueryError> {
        let mut v = self.base.label_values(name, matchers, min_t, max_t)?;
        v.extend(self.extra.label_values(name, matchers, min_t, max_t)?);
        v.sort();
        v.dedup();
        Ok(v)
    }
}

/// Floats as text in JSON (`"NaN"`, `"+Inf"`, shortest digits), which JSON numbers cannot
/// carry; Prometheus's API writes sample values the same way.
mod float_text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::format::go_float(*v))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        let text = String::deserialize(d)?;
        match text.as_str() {
            "NaN" => Ok(f64::NAN),
            "+Inf" | "Inf" => Ok(f64::INFINITY),
            "-Inf" => Ok(f64::NEG_INFINITY),
            t => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests;
