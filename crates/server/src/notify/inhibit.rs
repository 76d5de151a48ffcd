//! Inhibition, as Alertmanager's inhibitor: the live revision's `[[inhibit]]` rules (plus
//! the built-in one unless `[system] builtin_inhibit = false`), and the alerts firing now
//! across every rule group, whatever receiver they are routed to. A webhook receiver asks
//! it, at each flush, which of its alerts are inhibited, and treats them as silenced ones:
//! left out of the notification, their resolution untold. Alertmanager receivers are not
//! affected; Alertmanager applies its own `inhibit_rules`.

use super::payload::{Labels, fingerprint};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tandem_spec::{InhibitRule, Matcher, System};

/// The built-in alerts that mute others: a service that keeps crashing or being OOM-killed.
const BUILTIN_SOURCES: &str = "CrashLoop|RepeatedOomKills";
/// The built-in alerts they mute: what a crashing service's own requests and revisions look
/// like from outside, symptoms of the same cause.
const BUILTIN_TARGETS: &str = "ErrorRateAnomaly|LatencyAnomaly|EdgeErrorRateAnomaly|EdgeLatencyAnomaly|ErrorBudgetBurnFast|ErrorBudgetBurnSlow|ErrorRateRegression|LatencyRegression|MemoryRegression";

/// The built-in inhibition: while a service's `CrashLoop` or `RepeatedOomKills` fires, its
/// anomaly, SLO burn and regression alerts in the same env are muted. Only built-in alerts
/// (`builtin="true"`) on both sides, so a file's own rules of the same names are not.
pub(crate) fn builtin_rule() -> InhibitRule {
    let parse = |text: &str| Matcher::parse(text).expect("built-in matcher");
    InhibitRule {
        source_matchers: vec![
            parse(&format!("alertname=~\"{BUILTIN_SOURCES}\"")),
            parse("builtin=\"true\""),
        ],
        target_matchers: vec![
            parse(&format!("alertname=~\"{BUILTIN_TARGETS}\"")),
            parse("builtin=\"true\""),
        ],
        equal: vec!["service".to_string(), "env".to_string()],
    }
}

/// The rules in force and the alerts firing now, by rule group.
#[derive(Default)]
pub(crate) struct Inhibitor {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    rules: Arc<Vec<InhibitRule>>,
    firing: BTreeMap<String, Vec<Labels>>,
}

/// The rules and firing alerts at one moment, to check a group's alerts against without
/// holding the inhibitor's lock.
pub(crate) struct Snapshot {
    rules: Arc<Vec<InhibitRule>>,
    firing: Vec<Labels>,
}

impl Inhibitor {
    /// Takes the rules of `system`: its `[[inhibit]]`s, and the built-in one unless
    /// switched off.
    pub(crate) fn load(&self, system: &System) {
        let mut rules = system.monitoring.inhibit.clone();
        if system.monitoring.builtin_inhibit {
            rules.push(builtin_rule());
        }
        self.inner.lock().expect("inhibitor lock").rules = Arc::new(rules);
    }

    /// The alerts of rule group `source` firing now (replacing what it had).
    pub(crate) fn observe<'a>(&self, source: &str, firing: impl Iterator<Item = &'a Labels>) {
        let firing: Vec<Labels> = firing.cloned().collect();
        let mut inner = self.inner.lock().expect("inhibitor lock");
        if firing.is_empty() {
            inner.firing.remove(source);
        } else {
            inner.firing.insert(source.to_string(), firing);
        }
    }

    pub(crate) fn snapshot(&self) -> Snapshot {
        let inner = self.inner.lock().expect("inhibitor lock");
        Snapshot {
            rules: inner.rules.clone(),
            firing: inner.firing.values().flatten().cloned().collect(),
        }
    }

    /// The fingerprints of the firing alerts that inhibit an alert with `labels` now
    /// (Alertmanager's `inhibitedBy`); empty when none does.
    pub(crate) fn inhibited_by(&self, labels: &Labels) -> Vec<String> {
        self.snapshot().sources(labels).map(fingerprint).collect()
    }
}

impl Snapshot {
    fn sources<'a>(&'a self, target: &'a Labels) -> impl Iterator<Item = &'a Labels> + 'a {
        self.firing
            .iter()
            .filter(move |source| self.rules.iter().any(|r| r.inhibits(source, target)))
    }

    /// Whether a firing alert inhibits an alert with `labels`.
    pub(crate) fn inhibits(&self, labels: &Labels) -> bool {
        self.sources(labels).next().is_some()
    }
}
