//! The state machine, recording rules and persisted state, evaluated minute by minute over
//! an in-memory store.

use super::*;
use crate::rules::{DEFAULT_INTERVAL, parse_rule_file};
use tandem_tsdb::model::is_stale_nan;

const MIN: i64 = 60_000;

struct World {
    store: MemQuerier,
    engine: Engine,
    group: RuleGroup,
    state: GroupState,
    external: BTreeMap<String, String>,
}

impl World {
    fn new(rules_yaml: &str) -> World {
        let group = parse_rule_file("t.yml", rules_yaml, DEFAULT_INTERVAL)
            .unwrap()
            .remove(0);
        let state = GroupState::new(&group);
        World {
            store: MemQuerier::new(),
            engine: Engine::default(),
            group,
            state,
            external: BTreeMap::from([("env".to_string(), "prod".to_string())]),
        }
    }

    fn set(&mut self, series: &str, t: i64, v: f64) {
        self.store.add(
            crate::series::parse_series(series).unwrap(),
            [Sample { t, v }],
        );
    }

    fn eval(&mut self, t: i64) -> EvalOutput {
        let ctx = EvalContext {
            engine: &self.engine,
            querier: &self.store,
            external_labels: &self.external,
            external_url: "http://tandem",
        };
        let out = self.group.eval(&ctx, t, &mut self.state);
        for (l, s) in &out.samples {
            self.store.add(l.clone(), [*s]);
        }
        out
    }

    fn states(&self) -> Vec<(String, AlertState)> {
        self.state.rules[0]
            .alerts
            .iter()
            .map(|a| (a.labels["instance"].clone(), a.state))
            .collect()
    }
}

const DOWN: &str = r#"
groups:
  - name: g
    rules:
      - alert: Down
        expr: up == 0
        for: 2m
        labels:
          severity: '{{ if eq $labels.instance "a" }}page{{ else }}ticket{{ end }}'
        annotations:
          summary: '{{ $labels.instance }} down ({{ $value }}) in {{ $externalLabels.env }}'
"#;

#[test]
fn pending_then_firing_after_for_then_resolved() {
    let mut w = World::new(DOWN);
    for m in 0..=3 {
        w.set(r#"up{instance="a"}"#, m * MIN, 0.0);
    }
    w.set(r#"up{instance="a"}"#, 4 * MIN, 1.0);

    let out = w.eval(0);
    assert_eq!(w.states(), vec![("a".into(), AlertState::Pending)]);
    assert_eq!(out.changes.len(), 1);
    assert_eq!(
        (out.changes[0].from, out.changes[0].to),
        (AlertState::Inactive, AlertState::Pending)
    );
    let alert = &w.state.rules[0].alerts[0];
    assert_eq!(alert.labels["severity"], "page");
    assert_eq!(alert.labels["alertname"], "Down");
    assert_eq!(alert.annotations["summary"], "a down (0) in prod");

    w.eval(MIN);
    assert_eq!(w.states(), vec![("a".into(), AlertState::Pending)]);
    let out = w.eval(2 * MIN);
    assert_eq!(w.states(), vec![("a".into(), AlertState::Firing)]);
    assert_eq!(
        (out.changes[0].from, out.changes[0].to),
        (AlertState::Pending, AlertState::Firing)
    );
    assert_eq!(w.state.rules[0].alerts[0].active_at_ms, 0);
    assert_eq!(w.state.rules[0].alerts[0].fired_at_ms, Some(2 * MIN));

    // ALERTS and ALERTS_FOR_STATE as Prometheus writes them.
    let names: Vec<String> = out
        .samples
        .iter()
        .map(|(l, s)| format!("{l} {}", s.v))
        .collect();
    assert!(
        names.contains(
            &r#"ALERTS{alertname="Down", alertstate="firing", instance="a", severity="page"} 1"#
                .to_string()
        ),
        "{names:?}"
    );
    assert!(
        names.contains(
            &r#"ALERTS_FOR_STATE{alertname="Down", instance="a", severity="page"} 0"#.to_string()
        ),
        "{names:?}"
    );
    // The pending series ended when the alert fired.
    assert!(
        out.samples
            .iter()
            .any(|(l, s)| l.get("alertstate") == Some("pending") && is_stale_nan(s.v))
    );

    w.eval(3 * MIN);
    let out = w.eval(4 * MIN);
    assert_eq!(w.states(), vec![("a".into(), AlertState::Inactive)]);
    assert_eq!(
        (out.changes[0].from, out.changes[0].to),
        (AlertState::Firing, AlertState::Inactive)
    );
    assert_eq!(w.state.rules[0].alerts[0].resolved_at_ms, Some(4 * MIN));
    assert_eq!(w.state.active_alerts().count(), 0);
    // Resolved alerts are forgotten after 15 minutes.
    w.eval(19 * MIN);
    assert_eq!(w.states().len(), 1);
    w.eval(20 * MIN);
    assert!(w.states().is_empty());
}

#[test]
fn pending_alert_that_clears_never_fires() {
    let mut w = World::new(DOWN);
    w.set(r#"up{instance="b"}"#, 0, 0.0);
    w.set(r#"up{instance="b"}"#, MIN, 1.0);
    w.eval(0);
    assert_eq!(w.states(), vec![("b".into(), AlertState::Pending)]);
    assert_eq!(w.state.rules[0].alerts[0].labels["severity"], "ticket");
    let out = w.eval(MIN);
    assert!(w.states().is_empty());
    assert_eq!(
        (out.changes[0].from, out.changes[0].to),
        (AlertState::Pending, AlertState::Inactive)
    );
    // The condition returns: `for` starts over.
    w.set(r#"up{instance="b"}"#, 2 * MIN, 0.0);
    w.eval(2 * MIN);
    assert_eq!(w.state.rules[0].alerts[0].active_at_ms, 2 * MIN);
}

#[test]
fn keep_firing_for_holds_a_firing_alert() {
    let mut w = World::new(
        "groups:\n  - name: g\n    rules:\n      - alert: Hot\n        expr: temp > 10\n        keep_firing_for: 2m\n",
    );
    w.set(r#"temp{instance="x"}"#, 0, 20.0);
    w.set(r#"temp{instance="x"}"#, MIN, 5.0);
    w.eval(0);
    assert_eq!(w.states(), vec![("x".into(), AlertState::Firing)]);
    for m in 1..=2 {
        let out = w.eval(m * MIN);
        assert_eq!(
            w.states(),
            vec![("x".into(), AlertState::Firing)],
            "at {m}m"
        );
        assert!(out.changes.is_empty());
        assert!(
            out.samples
                .iter()
                .any(|(l, _)| l.get("alertstate") == Some("firing"))
        );
    }
    assert_eq!(w.state.rules[0].alerts[0].keep_firing_since_ms, Some(MIN));
    let out = w.eval(3 * MIN);
    assert_eq!(w.states(), vec![("x".into(), AlertState::Inactive)]);
    assert_eq!(out.changes[0].to, AlertState::Inactive);
}

#[test]
fn recording_rules_write_series_seen_by_later_rules_and_go_stale() {
    let mut w = World::new(
        r#"
groups:
  - name: g
    rules:
      - record: job:up:sum
        expr: sum by (job) (up)
        labels:
          team: core
      - alert: FewUp
        expr: job:up:sum < 2
"#,
    );
    w.set(r#"up{job="api", instance="1"}"#, 0, 1.0);
    let out = w.eval(0);
    let rec: Vec<String> = out
        .samples
        .iter()
        .filter(|(l, _)| l.metric_name() == Some("job:up:sum"))
        .map(|(l, s)| format!("{l} {}@{}", s.v, s.t))
        .collect();
    assert_eq!(rec, vec![r#"job:up:sum{job="api", team="core"} 1@0"#]);
    // The alert read the recorded series in the same evaluation.
    assert_eq!(w.state.rules[1].alerts.len(), 1);
    assert_eq!(w.state.rules[1].alerts[0].labels["team"], "core");
    // The source disappears (stale): the recorded series gets a staleness marker.
    w.set(r#"up{job="api", instance="1"}"#, MIN, stale_nan());
    let out = w.eval(MIN);
    assert!(
        out.samples
            .iter()
            .any(|(l, s)| l.metric_name() == Some("job:up:sum") && is_stale_nan(s.v) && s.t == MIN)
    );
}

#[test]
fn rule_errors_are_reported_and_other_rules_still_run() {
    let mut w = World::new(
        r#"
groups:
  - name: g
    rules:
      - record: dup
        expr: label_replace(x, "i", "", "i", ".*")
      - record: ok
        expr: vector(1)
"#,
    );
    w.set(r#"x{i="1"}"#, 0, 1.0);
    w.set(r#"x{i="2"}"#, 0, 1.0);
    let out = w.eval(0);
    assert_eq!(out.errors.len(), 1);
    assert!(
        out.errors[0].message.contains("same labelset"),
        "{:?}",
        out.errors
    );
    assert_eq!(w.state.rules[0].health, Health::Err);
    assert_eq!(w.state.rules[1].health, Health::Ok);
    assert!(
        out.samples
            .iter()
            .any(|(l, _)| l.metric_name() == Some("ok"))
    );
}

#[test]
fn template_errors_become_visible_annotations() {
    let mut w = World::new(
        "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: vector(1)\n        annotations:\n          broken: '{{ .Nope }}'\n          fine: '{{ $value | humanize }}'\n",
    );
    let out = w.eval(0);
    assert!(out.errors.is_empty());
    let a = &w.state.rules[0].alerts[0];
    assert!(
        a.annotations["broken"].starts_with("<error expanding template: "),
        "{:?}",
        a.annotations
    );
    assert_eq!(a.annotations["fine"], "1");
}

#[test]
fn state_round_trips_through_json_and_pending_for_does_not_restart() {
    let mut w = World::new(DOWN);
    for m in 0..=5 {
        w.set(r#"up{instance="a"}"#, m * MIN, 0.0);
    }
    w.set(r#"up{instance="c"}"#, 0, f64::NAN);
    w.eval(0);
    w.eval(MIN);
    let json = serde_json::to_string(&w.state).unwrap();
    let restored: GroupState = serde_json::from_str(&json).unwrap();
    assert_eq!(serde_json::to_string(&restored).unwrap(), json);
    assert_eq!(restored.rules[0].alerts.len(), 1);

    // A new server: fresh group, restored state; the alert fires at 2m as if never stopped.
    let mut w2 = World::new(DOWN);
    w2.store = std::mem::take(&mut w.store);
    w2.state = restored;
    w2.eval(2 * MIN);
    assert_eq!(w2.states(), vec![("a".into(), AlertState::Firing)]);
    assert_eq!(w2.state.rules[0].alerts[0].active_at_ms, 0);
}

#[test]
fn nan_values_survive_json() {
    let a = Alert {
        labels: BTreeMap::new(),
        annotations: BTreeMap::new(),
        state: AlertState::Pending,
        value: f64::NAN,
        active_at_ms: 0,
        fired_at_ms: None,
        resolved_at_ms: None,
        keep_firing_since_ms: None,
    };
    let back: Alert = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
    assert!(back.value.is_nan());
}

#[test]
fn changed_rules_keep_the_state_of_rules_with_the_same_name() {
    let mut w = World::new(DOWN);
    w.set(r#"up{instance="a"}"#, 0, 0.0);
    w.eval(0);
    let two = parse_rule_file(
        "t.yml",
        "groups:\n  - name: g\n    rules:\n      - record: r\n        expr: vector(1)\n      - alert: Down\n        expr: up == 0\n        for: 2m\n",
        DEFAULT_INTERVAL,
    )
    .unwrap()
    .remove(0);
    w.state.align(&two);
    assert_eq!(w.state.rules.len(), 2);
    assert!(w.state.rules[0].alerts.is_empty());
    assert_eq!(w.state.rules[1].alerts.len(), 1);
}
