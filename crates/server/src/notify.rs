//! Alert notifications: the live revision's `[[receiver]]`s and `[[route]]`s, fed by every
//! rule group evaluation (`rules.rs` calls [`Notifier::observe`] with the group's firing and
//! recently resolved alerts).
//!
//! Each receiver has its own state and its own task, so a receiver that is slow or down
//! delays only itself: `observe` only updates in-memory state and wakes the task, and
//! evaluation never waits for a delivery.
//!
//! - A webhook receiver groups alerts the way an Alertmanager route does, by its
//!   `group_by` (default `[alertname, service, env]`): the first notification of a new group
//!   after `group_wait`, then at most one every `group_interval`, sent only when the group
//!   changed (an alert started firing or resolved) or `repeat_interval` passed since the
//!   last one while something still fires (Alertmanager's `DedupStage` rule). Resolved
//!   alerts leave the group once their resolution was delivered. What each group was last
//!   told is also written to the data directory (`log.rs`), and a restarted server starts
//!   from it: groups already told are not told again before `repeat_interval`, and alerts
//!   told firing that ended meanwhile are told resolved.
//! - An Alertmanager receiver gets what Prometheus sends: every firing alert on its first
//!   evaluation and again every minute (its `--rules.alert.resend-delay`), with `endsAt`
//!   four evaluation intervals (at least four minutes) ahead, and every resolved alert with
//!   `endsAt` at its resolution, resent every minute while the rules keep it (15 minutes).
//!   Alertmanager does its own grouping, silencing and routing.
//!
//! Silences (`silences.rs`) mute webhook notifications the way Alertmanager's do: at each
//! flush, firing alerts an active silence matches are left out of the group's notification
//! and remembered as muted, so that their resolution is not told either (the receiver never
//! heard of them), and so that they count as new, and are told at the group's next flush,
//! once the silence is over. Inhibition (`inhibit.rs`: `[[inhibit]]` rules and the built-in
//! one) mutes the same way, while a matching source alert fires in any rule group.
//!
//! Deliveries are retried with exponential backoff and jitter. Every notification
//! delivered or given up is a timeline event and is counted for `/metrics`
//! (`tandem_notifications_total{receiver, outcome}`); the Alertmanager refreshes of alerts
//! it already knows are counted but not put on the timeline (one a minute per alert would
//! bury everything else), and failures to an Alertmanager are reported at most once a
//! minute.

mod inhibit;
mod log;
mod payload;
mod silences;

pub(crate) use payload::Observed;
pub(crate) use silences::{SilenceError, Silences};

use crate::delivery::{HttpsClient, SendError, exchange, https_client};
use bytes::Bytes;
use http_body_util::Full;
use hyper::Uri;
use hyper::header::{CONTENT_TYPE, HeaderValue, USER_AGENT};
use inhibit::Inhibitor;
use log::{GroupLog, LoggedAlert};
use payload::{GroupNotification, Labels, PostableAlert, label_text};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tandem_api::{Event, EventKind, EventSink, now_ms};
use tandem_spec::{Receiver, Route, System, WebhookFormat};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Delivery and Alertmanager settings; [`Policy::default`] is what the server uses, tests
/// shrink it.
#[derive(Clone, Debug)]
struct Policy {
    /// Tries of one notification, the first included.
    max_attempts: u32,
    min_backoff: Duration,
    max_backoff: Duration,
    /// Time one request may take.
    timeout: Duration,
    /// Prometheus's `--rules.alert.resend-delay`: how often Alertmanager hears again of an
    /// alert it already has.
    resend_delay: Duration,
    /// Alerts per `POST /api/v2/alerts` (Prometheus's `maxBatchSize`).
    batch: usize,
    /// Alerts an Alertmanager receiver holds while it cannot deliver; beyond it the oldest
    /// are dropped (and counted). Prometheus's default queue capacity.
    capacity: usize,
    /// At most one failure event per Alertmanager receiver per this interval.
    event_interval: Duration,
    /// Wall-clock time for the notification log.
    clock: Clock,
}

/// Wall-clock milliseconds, read off tokio's clock from a fixed point: the log's times are
/// wall-clock (they outlive the process), while every timer runs on tokio's clock, so tests
/// on a paused clock see both move together.
#[derive(Clone, Copy, Debug)]
struct Clock {
    wall_ms: i64,
    at: Instant,
}

impl Clock {
    fn system() -> Clock {
        Clock {
            wall_ms: now_ms(),
            at: Instant::now(),
        }
    }

    fn now_ms(&self) -> i64 {
        self.wall_ms + i64::try_from((Instant::now() - self.at).as_millis()).unwrap_or(i64::MAX)
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            // 0.5 + 1 + 2 s of backoff, then the next group_interval (webhook) or the
            // next evaluation (Alertmanager) tries again with fresh state.
            max_attempts: 4,
            min_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
            timeout: Duration::from_secs(10),
            resend_delay: Duration::from_secs(60),
            batch: 64,
            capacity: 10_000,
            event_interval: Duration::from_secs(60),
            clock: Clock::system(),
        }
    }
}

/// Notifications of one environment.
pub(crate) struct Notifier {
    env: String,
    sink: Arc<dyn EventSink>,
    policy: Policy,
    transport: Transport,
    counts: Arc<Mutex<BTreeMap<(String, &'static str), u64>>>,
    /// Where webhook receivers keep their notification logs; `None` keeps them in memory.
    log_dir: Option<PathBuf>,
    silences: Arc<Silences>,
    inhibitor: Arc<Inhibitor>,
    /// Puts the end of each silence on the timeline when its time is up.
    silence_task: tokio::task::JoinHandle<()>,
    config: Mutex<Config>,
}

#[derive(Default)]
struct Config {
    routes: Vec<Route>,
    receivers: Vec<Arc<Worker>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    external_url: String,
    /// The rule groups heard from, so alerts of a group that went away resolve.
    sources: BTreeSet<String>,
    /// The rule groups that exist, once the rules said (see `retain_sources`): alerts a
    /// receiver's log names from another group resolve.
    live_sources: Option<BTreeSet<String>>,
}

// === impl Notifier ===

impl Notifier {
    /// A notifier whose webhook receivers keep their logs in `data_dir/notifications`, with
    /// the silences of `data_dir/silences.json`.
    pub(crate) fn new(env: &str, sink: Arc<dyn EventSink>, data_dir: &Path) -> Arc<Notifier> {
        Notifier::with(
            env,
            sink,
            Policy::default(),
            Transport::Http(Box::new(https_client(None))),
            Some(data_dir.join("notifications")),
            Some(data_dir.join("silences.json")),
        )
    }

    fn with(
        env: &str,
        sink: Arc<dyn EventSink>,
        policy: Policy,
        transport: Transport,
        log_dir: Option<PathBuf>,
        silences_file: Option<PathBuf>,
    ) -> Arc<Notifier> {
        let silences = Silences::open(env, sink.clone(), silences_file, policy.clock);
        let silence_task = tokio::spawn(silences.clone().watch_ends());
        Arc::new(Notifier {
            env: env.to_string(),
            sink,
            policy,
            transport,
            counts: Arc::default(),
            log_dir,
            silences,
            inhibitor: Arc::default(),
            silence_task,
            config: Mutex::default(),
        })
    }

    /// The environment's silences.
    pub(crate) fn silences(&self) -> &Arc<Silences> {
        &self.silences
    }

    /// The fingerprints of the firing alerts that inhibit an alert with `labels` now (empty
    /// when it is not inhibited), as Alertmanager's `inhibitedBy`.
    pub(crate) fn inhibited_by(&self, labels: &Labels) -> Vec<String> {
        self.inhibitor.inhibited_by(labels)
    }

    /// Takes `system`'s receivers and routes. A receiver whose settings did not change
    /// keeps its state (groups, what was sent when); the others start from their
    /// notification log, if they have one with the same `group_by`. The logs of receivers
    /// that are gone are deleted. `external_url` is the server's HTTP address, for links in
    /// notifications.
    pub(crate) fn load(&self, system: &System, external_url: &str) {
        self.inhibitor.load(system);
        let mut config = self.config.lock().expect("notifier lock");
        config.routes = system.route.clone();
        config.external_url = external_url.to_string();
        let mut kept = Vec::new();
        let mut tasks = Vec::new();
        let old_tasks = std::mem::take(&mut config.tasks);
        let old: Vec<(Arc<Worker>, tokio::task::JoinHandle<()>)> =
            std::mem::take(&mut config.receivers)
                .into_iter()
                .zip(old_tasks)
                .collect();
        let mut old: Vec<Option<(Arc<Worker>, tokio::task::JoinHandle<()>)>> =
            old.into_iter().map(Some).collect();
        for spec in &system.receiver {
            let reuse = old
                .iter_mut()
                .find(|o| o.as_ref().is_some_and(|(w, _)| w.spec == *spec))
                .and_then(Option::take);
            let (worker, task) = match reuse {
                Some(pair) => pair,
                None => {
                    // The old worker of a changed receiver is stopped before the new one
                    // reads the log, so that it does not write the log afterwards (short of
                    // a write already under way, which costs at most a repeated message).
                    if let Some((_, task)) = old
                        .iter_mut()
                        .find(|o| o.as_ref().is_some_and(|(w, _)| w.spec.name == spec.name))
                        .and_then(Option::take)
                    {
                        task.abort();
                    }
                    let delivery = self.delivery();
                    let log = spec
                        .webhook
                        .as_ref()
                        .and(self.log_dir.as_deref())
                        .map(|dir| log::file_for(dir, &spec.name));
                    let worker = Arc::new(Worker::new(spec.clone(), external_url, log, &delivery));
                    if let Some(live) = &config.live_sources {
                        worker.resolve_gone_sources(live, self.policy.clock.now_ms());
                    }
                    let task = tokio::spawn(worker.clone().run(delivery));
                    (worker, task)
                }
            };
            kept.push(worker);
            tasks.push(task);
        }
        for (_, task) in old.into_iter().flatten() {
            task.abort();
        }
        config.receivers = kept;
        config.tasks = tasks;
        if let Some(dir) = &self.log_dir {
            let keep: BTreeSet<PathBuf> = system
                .receiver
                .iter()
                .filter(|r| r.webhook.is_some())
                .map(|r| log::file_for(dir, &r.name))
                .collect();
            log::retain(dir, &keep);
        }
    }

    fn delivery(&self) -> Delivery {
        Delivery {
            env: self.env.clone(),
            sink: self.sink.clone(),
            policy: self.policy.clone(),
            transport: self.transport.clone(),
            counts: self.counts.clone(),
            silences: self.silences.clone(),
            inhibitor: self.inhibitor.clone(),
        }
    }

    /// One evaluation of the rule group `source` at `now_ms` (every `interval`): `alerts`
    /// are its firing and recently resolved alerts. Alerts of `source` seen before and
    /// missing now count as resolved now.
    pub(crate) fn observe(
        &self,
        source: &str,
        alerts: &[Observed],
        now_ms: i64,
        interval: Duration,
    ) {
        // Every rule group's firing alerts, whatever their routes: any of them may inhibit.
        self.inhibitor.observe(
            source,
            alerts.iter().filter(|a| a.firing()).map(|a| &a.labels),
        );
        let mut config = self.config.lock().expect("notifier lock");
        config.sources.insert(source.to_string());
        let routes = config.routes.clone();
        let specs: Vec<Receiver> = config.receivers.iter().map(|w| w.spec.clone()).collect();
        // Links come relative to the server's HTTP address.
        let alerts: Vec<Observed> = alerts
            .iter()
            .map(|a| {
                let mut a = a.clone();
                if a.generator_url.starts_with('/') {
                    a.generator_url = format!("{}{}", config.external_url, a.generator_url);
                }
                a
            })
            .collect();
        let mut per_receiver: Vec<Vec<&Observed>> = vec![Vec::new(); specs.len()];
        for alert in &alerts {
            for name in tandem_spec::route_alert(&specs, &routes, &alert.labels) {
                if let Some(i) = specs.iter().position(|s| s.name == name) {
                    per_receiver[i].push(alert);
                }
            }
        }
        for (worker, alerts) in config.receivers.iter().zip(per_receiver) {
            worker.observe(source, &alerts, now_ms, interval, &self.policy);
        }
    }

    /// Rule groups that no longer exist: their alerts resolve (also those a receiver's log
    /// names, which may be of a group that was gone before this server started).
    pub(crate) fn retain_sources(&self, sources: &BTreeSet<String>) {
        let gone: Vec<String> = {
            let mut config = self.config.lock().expect("notifier lock");
            config.live_sources = Some(sources.clone());
            let now = self.policy.clock.now_ms();
            for worker in &config.receivers {
                worker.resolve_gone_sources(sources, now);
            }
            config.sources.difference(sources).cloned().collect()
        };
        for source in gone {
            self.observe(&source, &[], now_ms(), Duration::from_secs(60));
            self.config
                .lock()
                .expect("notifier lock")
                .sources
                .remove(&source);
        }
    }

    /// Notifications per receiver and outcome (`sent`, `failed`, `dropped`).
    pub(crate) fn counts(&self) -> BTreeMap<(String, &'static str), u64> {
        self.counts.lock().expect("counts lock").clone()
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        self.silence_task.abort();
        if let Ok(config) = self.config.lock() {
            for task in &config.tasks {
                task.abort();
            }
        }
    }
}

// === impl Worker ===

/// One receiver: its settings, its state, and the wake-up of its task.
struct Worker {
    spec: Receiver,
    url: Result<Uri, String>,
    external_url: String,
    /// The webhook's notification log file, when it keeps one.
    log: Option<PathBuf>,
    clock: Clock,
    /// The log could not be written last time (reported once until it can again).
    log_failing: AtomicBool,
    silences: Arc<Silences>,
    inhibitor: Arc<Inhibitor>,
    state: Mutex<State>,
    wake: Notify,
}

enum State {
    Webhook {
        groups: BTreeMap<Labels, Group>,
    },
    Alertmanager {
        queue: VecDeque<Queued>,
        /// When each alert was last queued, and whether it was resolved then.
        last_sent: HashMap<Labels, (i64, bool)>,
        /// The alerts each rule group had at its last evaluation.
        seen: HashMap<String, BTreeSet<Labels>>,
        dropped: u64,
    },
}

/// An alert queued for an Alertmanager; `news` when Alertmanager does not know it in this
/// state yet (a first firing, or a resolution), as opposed to a refresh.
struct Queued {
    alert: PostableAlert,
    news: bool,
    resolved: bool,
}

/// One webhook group: alerts with the same `group_by` labels.
#[derive(Debug)]
struct Group {
    /// Each alert with the rule group it came from.
    alerts: BTreeMap<Labels, (String, Observed)>,
    next_flush: Instant,
    notified_firing: BTreeSet<Labels>,
    notified_resolved: BTreeSet<Labels>,
    /// When an unchanged group that still fires is told again: `repeat_interval` after its
    /// last notification; `None` before the first.
    repeat_at: Option<Instant>,
    /// The last notification, as the log keeps it.
    logged: Option<GroupLog>,
    /// Firing alerts a silence muted at the last flush, whose firing the receiver was not
    /// told since: their resolution is not told either.
    muted: BTreeSet<Labels>,
}

/// A group's notification, taken when it is due.
#[derive(Debug)]
struct Due {
    key: Labels,
    /// Firing alerts, each with the rule group it came from.
    firing: Vec<(String, Observed)>,
    resolved: Vec<Observed>,
}

/// The labels of `labels` that `group_by` names (all of them for `["..."]`), which are the
/// alert's group.
fn group_key(group_by: &[String], labels: &Labels) -> Labels {
    if let [all] = group_by
        && all == tandem_spec::GROUP_BY_ALL
    {
        return labels.clone();
    }
    group_by
        .iter()
        .filter_map(|k| labels.get(k).map(|v| (k.clone(), v.clone())))
        .collect()
}

fn dur(d: Option<tandem_spec::units::Dur>, default: tandem_spec::units::Dur) -> Duration {
    d.unwrap_or(default).0
}

impl Worker {
    fn new(
        spec: Receiver,
        external_url: &str,
        log: Option<PathBuf>,
        delivery: &Delivery,
    ) -> Worker {
        let (url, state) = match (&spec.webhook, &spec.alertmanager) {
            (Some(url), _) => (
                parse_url(url),
                State::Webhook {
                    groups: BTreeMap::new(),
                },
            ),
            (None, Some(url)) => (
                parse_url(&format!("{}/api/v2/alerts", url.trim_end_matches('/'))),
                State::Alertmanager {
                    queue: VecDeque::new(),
                    last_sent: HashMap::new(),
                    seen: HashMap::new(),
                    dropped: 0,
                },
            ),
            (None, None) => (
                Err("it has neither a webhook nor an alertmanager URL".to_string()),
                State::Webhook {
                    groups: BTreeMap::new(),
                },
            ),
        };
        let worker = Worker {
            spec,
            url,
            external_url: external_url.to_string(),
            log,
            clock: delivery.policy.clock,
            log_failing: AtomicBool::new(false),
            silences: delivery.silences.clone(),
            inhibitor: delivery.inhibitor.clone(),
            state: Mutex::new(state),
            wake: Notify::new(),
        };
        worker.restore(delivery);
        worker
    }

    fn group_by(&self) -> Vec<String> {
        self.spec.group_by.clone().unwrap_or_else(|| {
            tandem_spec::DEFAULT_GROUP_BY
                .iter()
                .map(|l| l.to_string())
                .collect()
        })
    }

    /// Starts a webhook receiver from its log: each group told of firing alerts comes back
    /// with them, as told, flushed `group_wait` from now or `group_interval` after its last
    /// notification, whichever is later, and repeated `repeat_interval` after it. A log
    /// that cannot be used is reported and the receiver starts empty; a log made with
    /// another `group_by` is dropped.
    fn restore(&self, delivery: &Delivery) {
        let Some(path) = &self.log else { return };
        let group_by = self.group_by();
        let groups = match log::read(path, &self.spec.name) {
            Ok(None) => return,
            Ok(Some(file)) if file.group_by != group_by => {
                let _ = std::fs::remove_file(path);
                return;
            }
            Ok(Some(file)) => file.groups,
            Err(reason) => {
                delivery.emit(
                    EventKind::NotificationFailed,
                    None,
                    format!(
                        "the notification log of receiver '{}' ({}) cannot be used: {reason}; the receiver starts without it, so alerts still firing are notified again",
                        self.spec.name,
                        path.display()
                    ),
                );
                return;
            }
        };
        let now = Instant::now();
        let wall = self.clock.now_ms();
        let mut state = self.state.lock().expect("receiver lock");
        let State::Webhook { groups: live } = &mut *state else {
            return;
        };
        for logged in groups {
            let key = logged.group_labels.clone();
            if logged.firing.is_empty()
                || logged
                    .firing
                    .iter()
                    .any(|a| group_key(&group_by, &a.labels) != key)
            {
                continue;
            }
            let since =
                Duration::from_millis(u64::try_from(wall - logged.notified_at_ms).unwrap_or(0));
            let group = Group {
                alerts: logged
                    .firing
                    .iter()
                    .map(|a| (a.labels.clone(), (a.source.clone(), a.observed())))
                    .collect(),
                next_flush: now
                    + self
                        .group_wait()
                        .max(self.group_interval().saturating_sub(since)),
                notified_firing: logged.firing.iter().map(|a| a.labels.clone()).collect(),
                notified_resolved: logged.resolved.iter().cloned().collect(),
                repeat_at: Some(now + self.repeat_interval().saturating_sub(since)),
                logged: Some(logged),
                muted: BTreeSet::new(),
            };
            live.insert(key, group);
        }
        drop(state);
        self.wake.notify_one();
    }

    /// Webhook alerts that came from rule groups not in `live` resolve at `now_ms`.
    fn resolve_gone_sources(&self, live: &BTreeSet<String>, now_ms: i64) {
        let mut state = self.state.lock().expect("receiver lock");
        let State::Webhook { groups } = &mut *state else {
            return;
        };
        for group in groups.values_mut() {
            for (from, alert) in group.alerts.values_mut() {
                if alert.firing() && !live.contains(from) {
                    alert.resolved_at_ms = Some(now_ms);
                }
            }
        }
        drop(state);
        self.wake.notify_one();
    }

    /// Writes the log of a webhook receiver: every group's last notification.
    fn write_log(&self, groups: &BTreeMap<Labels, Group>) {
        let Some(path) = &self.log else { return };
        let logged: Vec<GroupLog> = groups.values().filter_map(|g| g.logged.clone()).collect();
        match log::write(path, &self.spec.name, &self.group_by(), logged) {
            Ok(()) => self.log_failing.store(false, Ordering::Relaxed),
            Err(e) => {
                // tandem cannot write its data directory: an error of tandem's, logged
                // once until it works again.
                if !self.log_failing.swap(true, Ordering::Relaxed) {
                    tracing::error!(
                        "cannot write the notification log of receiver '{}' to {}: {e}; after a restart its alerts may be notified again",
                        self.spec.name,
                        path.display()
                    );
                }
            }
        }
    }

    fn group_wait(&self) -> Duration {
        dur(self.spec.group_wait, tandem_spec::DEFAULT_GROUP_WAIT)
    }
    fn group_interval(&self) -> Duration {
        dur(
            self.spec.group_interval,
            tandem_spec::DEFAULT_GROUP_INTERVAL,
        )
    }
    fn repeat_interval(&self) -> Duration {
        dur(
            self.spec.repeat_interval,
            tandem_spec::DEFAULT_REPEAT_INTERVAL,
        )
    }

    fn observe(
        &self,
        source: &str,
        alerts: &[&Observed],
        now_ms: i64,
        interval: Duration,
        policy: &Policy,
    ) {
        let mut state = self.state.lock().expect("receiver lock");
        match &mut *state {
            State::Webhook { groups } => {
                let now = Instant::now();
                let group_by = self.group_by();
                let present: BTreeSet<&Labels> = alerts.iter().map(|a| &a.labels).collect();
                for alert in alerts {
                    let key = group_key(&group_by, &alert.labels);
                    let group = match groups.get_mut(&key) {
                        Some(group) => group,
                        // A resolution of an alert no group holds is old news.
                        None if !alert.firing() => continue,
                        None => groups.entry(key).or_insert_with(|| Group {
                            alerts: BTreeMap::new(),
                            next_flush: now + self.group_wait(),
                            notified_firing: BTreeSet::new(),
                            notified_resolved: BTreeSet::new(),
                            repeat_at: None,
                            logged: None,
                            muted: BTreeSet::new(),
                        }),
                    };
                    let known = group.alerts.contains_key(&alert.labels);
                    if known || alert.firing() {
                        group
                            .alerts
                            .insert(alert.labels.clone(), (source.to_string(), (*alert).clone()));
                    }
                }
                // Alerts of this rule group that are gone altogether resolved now.
                for group in groups.values_mut() {
                    for (from, alert) in group.alerts.values_mut() {
                        if from == source && alert.firing() && !present.contains(&alert.labels) {
                            alert.resolved_at_ms = Some(now_ms);
                        }
                    }
                }
            }
            State::Alertmanager {
                queue,
                last_sent,
                seen,
                dropped,
            } => {
                let resend_ms = policy.resend_delay.as_millis() as i64;
                let valid_ms = 4 * (interval.as_millis() as i64).max(resend_ms);
                let mut now_seen = BTreeSet::new();
                let mut out = Vec::new();
                for alert in alerts {
                    now_seen.insert(alert.labels.clone());
                    let resolved = !alert.firing();
                    let due = match last_sent.get(&alert.labels) {
                        None => true,
                        Some((at, was_resolved)) => {
                            (resolved && !was_resolved) || at + resend_ms <= now_ms
                        }
                    };
                    if due {
                        let news = last_sent
                            .get(&alert.labels)
                            .is_none_or(|(_, was_resolved)| *was_resolved != resolved);
                        last_sent.insert(alert.labels.clone(), (now_ms, resolved));
                        out.push(Queued {
                            alert: PostableAlert::new(alert, now_ms + valid_ms),
                            news,
                            resolved,
                        });
                    }
                }
                // Alerts of this group that vanished without a resolution (rules
                // reloaded): tell Alertmanager they ended.
                for labels in seen.get(source).into_iter().flatten() {
                    if now_seen.contains(labels) {
                        continue;
                    }
                    if let Some((_, false)) = last_sent.remove(labels) {
                        let gone = Observed {
                            labels: labels.clone(),
                            annotations: Labels::new(),
                            starts_at_ms: now_ms,
                            resolved_at_ms: Some(now_ms),
                            generator_url: String::new(),
                        };
                        out.push(Queued {
                            alert: PostableAlert::new(&gone, now_ms),
                            news: true,
                            resolved: true,
                        });
                    }
                }
                seen.insert(source.to_string(), now_seen);
                for queued in out {
                    if queue.len() >= policy.capacity {
                        queue.pop_front();
                        *dropped += 1;
                    }
                    queue.push_back(queued);
                }
            }
        }
        drop(state);
        self.wake.notify_one();
    }

    /// Webhook groups whose flush time came: the notifications they need (Alertmanager's
    /// rule: something new fires, something new resolved, everything resolved after a
    /// firing notification, or `repeat_interval` passed). Every due group's next flush is
    /// set a `group_interval` ahead. Returns the notifications and the next flush time.
    ///
    /// Silences apply first, as Alertmanager's mute stage does before its dedup stage:
    /// firing alerts an active silence matches are not in the notification and do not make
    /// one needed; they are remembered as muted, and their resolution is dropped untold. A
    /// resolution an active silence matches is dropped too, even of an alert told firing
    /// before the silence (as in Alertmanager).
    fn take_due(&self, now: Instant) -> (Vec<Due>, Option<Instant>) {
        let wall = self.clock.now_ms();
        let silences = self.silences.active(wall);
        let inhibition = self.inhibitor.snapshot();
        // Muted: silenced, or inhibited by an alert firing now (Alertmanager's mute stage
        // treats both alike).
        let silenced = |labels: &Labels| {
            silences.iter().any(|s| s.mutes(labels, wall)) || inhibition.inhibits(labels)
        };
        let mut state = self.state.lock().expect("receiver lock");
        let State::Webhook { groups } = &mut *state else {
            return (Vec::new(), None);
        };
        let mut due = Vec::new();
        for (key, group) in groups.iter_mut() {
            if group.next_flush > now {
                continue;
            }
            group.next_flush = now + self.group_interval();
            let mut untold = Vec::new();
            for (labels, (_, alert)) in &group.alerts {
                if alert.firing() {
                    if silenced(labels) {
                        group.muted.insert(labels.clone());
                    } else {
                        group.muted.remove(labels);
                    }
                } else if silenced(labels) || group.muted.contains(labels) {
                    untold.push(labels.clone());
                }
            }
            for labels in &untold {
                group.alerts.remove(labels);
            }
            let Group { alerts, muted, .. } = &mut *group;
            muted.retain(|l| alerts.contains_key(l));
            let any_firing = group.alerts.values().any(|(_, a)| a.firing());
            let firing: BTreeSet<&Labels> = group
                .alerts
                .values()
                .filter(|(_, a)| a.firing() && !group.muted.contains(&a.labels))
                .map(|(_, a)| &a.labels)
                .collect();
            let resolved: BTreeSet<&Labels> = group
                .alerts
                .values()
                .filter(|(_, a)| !a.firing())
                .map(|(_, a)| &a.labels)
                .collect();
            let needed = match group.repeat_at {
                None => !firing.is_empty(),
                Some(repeat_at) => {
                    if !firing.iter().all(|l| group.notified_firing.contains(*l)) {
                        true
                    } else if firing.is_empty() {
                        // Everything told firing resolved (muted alerts still firing are
                        // not news).
                        !group.notified_firing.is_empty() && !resolved.is_empty()
                    } else if !resolved
                        .iter()
                        .all(|l| group.notified_resolved.contains(*l))
                    {
                        true
                    } else {
                        repeat_at <= now
                    }
                }
            };
            if needed {
                let firing: Vec<(String, Observed)> = group
                    .alerts
                    .values()
                    .filter(|(_, a)| a.firing() && !group.muted.contains(&a.labels))
                    .cloned()
                    .collect();
                let resolved = group
                    .alerts
                    .values()
                    .filter(|(_, a)| !a.firing())
                    .map(|(_, a)| a.clone())
                    .collect();
                due.push(Due {
                    key: key.clone(),
                    firing,
                    resolved,
                });
            } else if !any_firing {
                // Nothing to say and nothing firing: resolutions nobody was told of the
                // firing of are dropped with the group.
                group.alerts.clear();
            }
        }
        let logged = |groups: &BTreeMap<Labels, Group>| {
            groups.values().filter(|g| g.logged.is_some()).count()
        };
        let logged_before = logged(groups);
        groups.retain(|_, g| !g.alerts.is_empty());
        if logged(groups) != logged_before {
            self.write_log(groups);
        }
        let next = groups.values().map(|g| g.next_flush).min();
        (due, next)
    }

    /// Records a delivered webhook notification, in memory and in the log: what it said,
    /// and the resolved alerts it carried leave the group (unless they fire again
    /// meanwhile).
    fn delivered(&self, due: &Due, at: Instant) {
        let mut state = self.state.lock().expect("receiver lock");
        let State::Webhook { groups } = &mut *state else {
            return;
        };
        let Some(group) = groups.get_mut(&due.key) else {
            return;
        };
        group.repeat_at = Some(at + self.repeat_interval());
        group.notified_firing = due.firing.iter().map(|(_, a)| a.labels.clone()).collect();
        group.notified_resolved = due.resolved.iter().map(|a| a.labels.clone()).collect();
        group.logged = Some(GroupLog::new(
            &due.key,
            self.clock.now_ms(),
            due.firing
                .iter()
                .map(|(source, a)| LoggedAlert::new(source, a))
                .collect(),
            due.resolved.iter().map(|a| a.labels.clone()).collect(),
        ));
        for sent in &due.resolved {
            if group
                .alerts
                .get(&sent.labels)
                .is_some_and(|(_, a)| !a.firing())
            {
                group.alerts.remove(&sent.labels);
            }
        }
        if group.alerts.is_empty() {
            groups.remove(&due.key);
        }
        self.write_log(groups);
    }

    /// Up to `max` queued Alertmanager alerts, and how many were dropped since last time.
    fn take_queued(&self, max: usize) -> (Vec<Queued>, u64) {
        let mut state = self.state.lock().expect("receiver lock");
        let State::Alertmanager { queue, dropped, .. } = &mut *state else {
            return (Vec::new(), 0);
        };
        let n = queue.len().min(max);
        (queue.drain(..n).collect(), std::mem::take(dropped))
    }

    fn queued(&self) -> usize {
        match &*self.state.lock().expect("receiver lock") {
            State::Alertmanager { queue, .. } => queue.len(),
            State::Webhook { .. } => 0,
        }
    }

    async fn run(self: Arc<Self>, delivery: Delivery) {
        let mut reporter = FailureReporter::default();
        loop {
            let next = if self.spec.alertmanager.is_some() {
                let (batch, dropped) = self.take_queued(delivery.policy.batch);
                if dropped > 0 {
                    delivery.count(&self.spec.name, "dropped", dropped);
                    delivery.emit(
                        EventKind::NotificationFailed,
                        None,
                        format!(
                            "{dropped} alerts for receiver '{}' were dropped: its queue was full while its Alertmanager could not be reached",
                            self.spec.name
                        ),
                    );
                }
                if !batch.is_empty() {
                    self.send_alertmanager(&delivery, batch, &mut reporter)
                        .await;
                }
                if self.queued() > 0 {
                    Some(Instant::now())
                } else {
                    None
                }
            } else {
                let now = Instant::now();
                let (due, next) = self.take_due(now);
                for notification in &due {
                    self.send_webhook(&delivery, notification).await;
                }
                if due.is_empty() {
                    next
                } else {
                    Some(Instant::now())
                }
            };
            match next {
                Some(at) if at <= Instant::now() => continue,
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = self.wake.notified() => {}
                    }
                }
                None => self.wake.notified().await,
            }
        }
    }

    async fn send_webhook(&self, delivery: &Delivery, due: &Due) {
        let format = self.spec.format.unwrap_or_default();
        let notification = GroupNotification {
            receiver: &self.spec.name,
            group_labels: &due.key,
            firing: due.firing.iter().map(|(_, a)| a).collect(),
            resolved: due.resolved.iter().collect(),
            external_url: &self.external_url,
        };
        let body = match format {
            WebhookFormat::Json => notification.json(),
            WebhookFormat::Slack => notification.slack(),
        };
        let what = format!(
            "{} ({} firing, {} resolved)",
            label_text(&due.key),
            due.firing.len(),
            due.resolved.len()
        );
        // The group's service, or the one all its alerts share when it is not grouped by it.
        let service = due.key.get("service").cloned().or_else(|| {
            let mut services = due
                .firing
                .iter()
                .map(|(_, a)| a)
                .chain(&due.resolved)
                .map(|a| a.labels.get("service"));
            let first = services.next().flatten()?;
            services.all(|s| s == Some(first)).then(|| first.clone())
        });
        match delivery.send(&self.url, &body).await {
            Ok(()) => {
                self.delivered(due, Instant::now());
                delivery.count(&self.spec.name, "sent", 1);
                delivery.emit(
                    EventKind::NotificationSent,
                    service,
                    format!("receiver '{}' notified of {what}", self.spec.name),
                );
            }
            Err(failure) => {
                delivery.count(&self.spec.name, "failed", 1);
                delivery.emit(
                    EventKind::NotificationFailed,
                    service,
                    format!(
                        "receiver '{}' was not notified of {what}: {failure}; tried again in {}",
                        self.spec.name,
                        humantime::format_duration(self.group_interval())
                    ),
                );
            }
        }
    }

    async fn send_alertmanager(
        &self,
        delivery: &Delivery,
        batch: Vec<Queued>,
        reporter: &mut FailureReporter,
    ) {
        let news: Vec<&Queued> = batch.iter().filter(|q| q.news).collect();
        let body = serde_json::to_value(batch.iter().map(|q| &q.alert).collect::<Vec<_>>())
            .unwrap_or_default();
        match delivery.send(&self.url, &body).await {
            Ok(()) => {
                delivery.count(&self.spec.name, "sent", 1);
                for q in news {
                    let state = if q.resolved { "resolved" } else { "firing" };
                    delivery.emit(
                        EventKind::NotificationSent,
                        q.alert.labels.get("service").cloned(),
                        format!(
                            "receiver '{}' (Alertmanager) told {} {}",
                            self.spec.name,
                            label_text(&q.alert.labels),
                            state
                        ),
                    );
                }
            }
            Err(failure) => {
                delivery.count(&self.spec.name, "failed", 1);
                if let Some(message) = reporter.failed(
                    &self.spec.name,
                    &failure,
                    batch.len(),
                    delivery.policy.event_interval,
                ) {
                    delivery.emit(EventKind::NotificationFailed, None, message);
                }
                // Prometheus drops a batch it could not deliver; the next evaluations
                // resend what still fires (its resend delay) and resolved alerts are
                // resent while the rules keep them.
            }
        }
    }
}

/// At most one failure event per interval for an Alertmanager receiver, counting the
/// failures between (a dead Alertmanager fails once per evaluation).
#[derive(Debug, Default)]
struct FailureReporter {
    last: Option<Instant>,
    since: u64,
}

impl FailureReporter {
    fn failed(
        &mut self,
        receiver: &str,
        failure: &Failure,
        alerts: usize,
        interval: Duration,
    ) -> Option<String> {
        self.since += 1;
        let now = Instant::now();
        if self.last.is_some_and(|at| now < at + interval) {
            return None;
        }
        self.last = Some(now);
        let more = std::mem::take(&mut self.since) - 1;
        let also = if more > 0 {
            format!(" ({more} more failed sends since the last report)")
        } else {
            String::new()
        };
        Some(format!(
            "receiver '{receiver}' (Alertmanager) did not get {alerts} alerts: {failure}{also}; alerts still firing are sent again with the next evaluations"
        ))
    }
}

// === impl Delivery ===

/// What a receiver's task sends with and reports to.
#[derive(Clone)]
struct Delivery {
    env: String,
    sink: Arc<dyn EventSink>,
    policy: Policy,
    transport: Transport,
    counts: Arc<Mutex<BTreeMap<(String, &'static str), u64>>>,
    silences: Arc<Silences>,
    inhibitor: Arc<Inhibitor>,
}

#[derive(Clone)]
enum Transport {
    Http(Box<HttpsClient>),
    /// Tests: bodies go to a channel; `fail` makes every send fail.
    #[cfg(test)]
    Record {
        sent: tokio::sync::mpsc::UnboundedSender<(String, serde_json::Value)>,
        /// URLs whose sends fail.
        fail: Arc<Mutex<BTreeSet<String>>>,
    },
}

/// A notification given up.
#[derive(Debug, thiserror::Error)]
#[error("{error} (after {attempts} {})", if *attempts == 1 { "try" } else { "tries" })]
struct Failure {
    error: SendError,
    attempts: u32,
}

fn parse_url(url: &str) -> Result<Uri, String> {
    let uri: Uri = url
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| format!("'{url}' is not a valid URL ({e})"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none_or(str::is_empty) {
        return Err(format!("'{url}' is not an http:// or https:// URL"));
    }
    Ok(uri)
}

impl Delivery {
    fn count(&self, receiver: &str, outcome: &'static str, n: u64) {
        *self
            .counts
            .lock()
            .expect("counts lock")
            .entry((receiver.to_string(), outcome))
            .or_default() += n;
    }

    fn emit(&self, kind: EventKind, service: Option<String>, message: String) {
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

    /// POSTs `body` with retries: exponential backoff from `min_backoff`, each wait drawn
    /// in [backoff/2, backoff] so servers that lost the same receiver do not return in
    /// lockstep.
    async fn send(
        &self,
        url: &Result<Uri, String>,
        body: &serde_json::Value,
    ) -> Result<(), Failure> {
        let uri = match url {
            Ok(uri) => uri,
            Err(e) => {
                return Err(Failure {
                    error: SendError::Request(e.clone()),
                    attempts: 1,
                });
            }
        };
        let bytes = Bytes::from(serde_json::to_vec(body).unwrap_or_default());
        let mut backoff = self.policy.min_backoff;
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.send_once(uri, body, bytes.clone()).await {
                Ok(()) => return Ok(()),
                Err(error) if error.retryable() && attempts < self.policy.max_attempts => {
                    tracing::debug!(%uri, "notification failed, retrying: {error}");
                    let half = backoff / 2;
                    let jitter = Duration::from_millis(fastrand::u64(
                        0..=u64::try_from(half.as_millis()).unwrap_or(u64::MAX),
                    ));
                    tokio::time::sleep(half + jitter).await;
                    backoff = (backoff * 2).min(self.policy.max_backoff);
                }
                Err(error) => return Err(Failure { error, attempts }),
            }
        }
    }

    // Outside tests `Transport` has one variant.
    #[cfg_attr(not(test), allow(clippy::infallible_destructuring_match))]
    async fn send_once(
        &self,
        uri: &Uri,
        body: &serde_json::Value,
        bytes: Bytes,
    ) -> Result<(), SendError> {
        let client = match &self.transport {
            Transport::Http(client) => client,
            #[cfg(test)]
            Transport::Record { sent, fail } => {
                if fail.lock().expect("fail lock").contains(&uri.to_string()) {
                    return Err(SendError::Connection("refused (test)".into()));
                }
                let _ = sent.send((uri.to_string(), body.clone()));
                return Ok(());
            }
        };
        let _ = body;
        let request = hyper::Request::post(uri.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(
                USER_AGENT,
                HeaderValue::from_static(concat!("tandem/", env!("CARGO_PKG_VERSION"))),
            )
            .body(Full::new(bytes))
            .map_err(|e| SendError::Request(e.to_string()))?;
        exchange(client, request, self.policy.timeout).await
    }
}

#[cfg(test)]
mod tests;
