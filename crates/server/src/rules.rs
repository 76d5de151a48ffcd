//! Alerting and recording rules inside the server: the live revision's inline `[[alert]]`s
//! and `rule_files`, each group evaluated on its own interval (aligned to it) over the
//! environment's store, results stored, every alert change on the timeline, and each
//! group's state written to `alerts/` in the data directory after every evaluation, so a
//! restarted server goes on where it stopped (a pending `for` does not start over).
//!
//! A revision whose rules do not load keeps the rules already running, and says why on the
//! timeline.
//!
//! After each evaluation the group's firing and recently resolved alerts go to the
//! [`Notifier`], which owns delivery; evaluation never waits for it.

use crate::monitor::Monitor;
use crate::notify::{Notifier, Observed};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tandem_alert::{AlertState, EvalContext, GroupState, RuleGroup};
use tandem_api::{Event, EventKind, EventSink, now_ms};
use tandem_spec::System;

/// One group with its state, shared between its task and the API.
pub(crate) struct LoadedGroup {
    pub(crate) group: RuleGroup,
    pub(crate) state: Mutex<GroupState>,
}

/// The rules of one environment.
pub(crate) struct Rules {
    env: String,
    monitor: Arc<Monitor>,
    sink: Arc<dyn EventSink>,
    state_dir: PathBuf,
    loaded: Mutex<Vec<Arc<LoadedGroup>>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// The definitions now running, to leave them alone when a deploy does not change them.
    running: Mutex<Vec<RuleGroup>>,
    /// Where alerts are sent (the live revision's receivers; see `notify.rs`).
    pub(crate) notifier: Arc<Notifier>,
}

impl Rules {
    pub(crate) fn new(
        env: &str,
        monitor: Arc<Monitor>,
        sink: Arc<dyn EventSink>,
        data_dir: &Path,
    ) -> Arc<Rules> {
        Arc::new(Rules {
            env: env.to_string(),
            monitor,
            sink: sink.clone(),
            state_dir: data_dir.join("alerts"),
            loaded: Mutex::new(Vec::new()),
            tasks: Mutex::new(Vec::new()),
            running: Mutex::new(Vec::new()),
            notifier: Notifier::new(env, sink.clone(), data_dir),
        })
    }

    /// The groups running now.
    pub(crate) fn groups(&self) -> Vec<Arc<LoadedGroup>> {
        self.loaded.lock().expect("rules lock").clone()
    }

    /// Loads `system`'s rules (rule files relative to `base_dir`) and runs them in place of
    /// the current ones. On a load error the current rules keep running.
    pub(crate) fn load(self: &Arc<Self>, system: &System, base_dir: &Path) {
        let mut groups = Vec::new();
        let mut errors = Vec::new();
        if !system.alert.is_empty() {
            match tandem_alert::inline_group(&system.alert, system.monitoring.rule_interval.0) {
                Ok(g) => groups.push(g),
                Err(e) => errors.push(e.to_string()),
            }
        }
        // tandem's own rules (crash loops, OOM kills, exhaustion forecasts, anomalies, SLO
        // burn rates, post-deploy regressions), as tuned by `[monitoring] builtin_alerts`.
        groups.extend(tandem_alert::builtin_groups(system));
        for (path, shown) in tandem_spec::rule_files(base_dir, &system.rule_files) {
            match tandem_alert::load_rule_file(&path, tandem_alert::DEFAULT_INTERVAL) {
                Ok(mut found) => {
                    for g in &mut found {
                        g.file = shown.clone();
                    }
                    groups.extend(found);
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        if !errors.is_empty() {
            self.emit(
                EventKind::RuleError,
                format!(
                    "the rules of this revision do not load, the previous ones keep running: {}",
                    errors.join("; ")
                ),
            );
            return;
        }
        if *self.running.lock().expect("rules lock") == groups {
            return;
        }
        for task in self.tasks.lock().expect("rules lock").drain(..) {
            task.abort();
        }
        let _ = std::fs::create_dir_all(&self.state_dir);
        let mut loaded = Vec::new();
        let mut tasks = Vec::new();
        for group in &groups {
            let mut state = self
                .read_state(group)
                .unwrap_or_else(|| GroupState::new(group));
            state.align(group);
            let entry = Arc::new(LoadedGroup {
                group: group.clone(),
                state: Mutex::new(state),
            });
            tasks.push(tokio::spawn(self.clone().run(entry.clone())));
            loaded.push(entry);
        }
        *self.loaded.lock().expect("rules lock") = loaded;
        *self.tasks.lock().expect("rules lock") = tasks;
        let sources: BTreeSet<String> = groups.iter().map(source_key).collect();
        *self.running.lock().expect("rules lock") = groups;
        self.notifier.retain_sources(&sources);
    }

    fn state_file(&self, group: &RuleGroup) -> PathBuf {
        let name: String = format!("{}--{}", group.file, group.name)
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.state_dir.join(format!("{name}.json"))
    }

    fn read_state(&self, group: &RuleGroup) -> Option<GroupState> {
        let bytes = std::fs::read(self.state_file(group)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Evaluates one group on its interval until aborted.
    async fn run(self: Arc<Self>, entry: Arc<LoadedGroup>) {
        let interval_ms = (entry.group.interval.as_millis() as i64).max(1);
        loop {
            let now = now_ms();
            let t = (now.div_euclid(interval_ms) + 1) * interval_ms;
            tokio::time::sleep(Duration::from_millis((t - now).max(0) as u64)).await;
            let rules = self.clone();
            let work = entry.clone();
            let outcome = tokio::task::spawn_blocking(move || {
                let external = BTreeMap::from([("env".to_string(), rules.env.clone())]);
                let ctx = EvalContext {
                    engine: &rules.monitor.engine,
                    querier: rules.monitor.db.as_ref(),
                    external_labels: &external,
                    external_url: "",
                };
                let mut state = work.state.lock().expect("group lock");
                let output = work.group.eval(&ctx, t, &mut state);
                let snapshot = state.clone();
                drop(state);
                rules.notifier.observe(
                    &source_key(&work.group),
                    &notifiable(&work.group, &snapshot),
                    t,
                    work.group.interval,
                );
                if !output.samples.is_empty() {
                    let _ = rules.monitor.store(&output.samples);
                }
                let _ = tandem_supervisor::launch::write_json_atomic(
                    &rules.state_file(&work.group),
                    &snapshot,
                );
                output
            })
            .await;
            let Ok(output) = outcome else { continue };
            for change in output.changes {
                let kind = match change.to {
                    AlertState::Pending => EventKind::AlertPending,
                    AlertState::Firing => EventKind::AlertFiring,
                    AlertState::Inactive => EventKind::AlertResolved,
                };
                let labels: Vec<String> = change
                    .labels
                    .iter()
                    .filter(|(k, _)| *k != "alertname")
                    .map(|(k, v)| format!("{k}=\"{v}\""))
                    .collect();
                let summary = change
                    .annotations
                    .get("summary")
                    .or_else(|| change.annotations.get("description"))
                    .map(|s| format!(": {s}"))
                    .unwrap_or_default();
                self.emit_for(
                    kind,
                    change.labels.get("service").cloned(),
                    format!(
                        "{} {{{}}} is {} (value {}){summary}",
                        change.rule,
                        labels.join(", "),
                        match change.to {
                            AlertState::Inactive => "resolved",
                            other => other.as_str(),
                        },
                        crate::promapi::params::format_value(change.value)
                    ),
                );
            }
            for error in output.errors {
                tracing::warn!("rule {} failed: {}", error.rule, error.message);
            }
        }
    }

    fn emit(&self, kind: EventKind, message: String) {
        self.emit_for(kind, None, message);
    }

    fn emit_for(&self, kind: EventKind, service: Option<String>, message: String) {
        self.sink.emit(Event {
            time_ms: now_ms(),
            env: self.env.clone(),
            kind,
            service,
            instance: None,
            revision: None,
            who: None,
            message,
        });
    }
}

/// Names a rule group for the notifier: alerts are tracked per group.
fn source_key(group: &RuleGroup) -> String {
    format!("{}--{}", group.file, group.name)
}

/// The alerts of a group that notifiers hear of: firing ones, and resolved ones that fired
/// (kept by the rules for 15 minutes), as Prometheus sends them. Pending alerts are not
/// notified.
fn notifiable(group: &RuleGroup, state: &GroupState) -> Vec<Observed> {
    let mut out = Vec::new();
    for (rule, rule_state) in group.rules.iter().zip(&state.rules) {
        for alert in &rule_state.alerts {
            let resolved = match (alert.state, alert.fired_at_ms, alert.resolved_at_ms) {
                (AlertState::Firing, _, _) => None,
                (AlertState::Inactive, Some(_), Some(at)) => Some(at),
                _ => continue,
            };
            out.push(Observed {
                labels: alert.labels.clone(),
                annotations: alert.annotations.clone(),
                starts_at_ms: alert.fired_at_ms.unwrap_or(alert.active_at_ms),
                resolved_at_ms: resolved,
                generator_url: format!("/api/v1/query?query={}", percent_encode(&rule.expr)),
            });
        }
    }
    out
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
