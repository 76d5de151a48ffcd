//! Grouping, timing, routing, delivery and the notification log across restarts, on
//! tokio's paused clock: the receivers' tasks run for real, their sends go to a channel
//! (or fail on demand), their logs to a real folder, and every wait is virtual time.

use super::*;
use std::path::Path;
use tandem_spec::units::Dur;
use tokio::sync::mpsc;

type Sent = mpsc::UnboundedReceiver<(String, serde_json::Value)>;

#[derive(Default)]
struct Events(Mutex<Vec<Event>>);

impl EventSink for Events {
    fn emit(&self, event: Event) {
        self.0.lock().unwrap().push(event);
    }
}

impl Events {
    fn kinds(&self) -> Vec<(EventKind, String)> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|e| (e.kind, e.message.clone()))
            .collect()
    }
}

struct Fixture {
    notifier: Arc<Notifier>,
    sent: Sent,
    fail: Arc<Mutex<BTreeSet<String>>>,
    events: Arc<Events>,
}

fn webhook(name: &str, wait: u64, interval: u64, repeat: u64) -> Receiver {
    Receiver {
        name: name.to_string(),
        webhook: Some(format!("http://127.0.0.1:1/{name}")),
        format: Some(WebhookFormat::Json),
        alertmanager: None,
        group_wait: Some(Dur::from_secs(wait)),
        group_interval: Some(Dur::from_secs(interval)),
        repeat_interval: Some(Dur::from_secs(repeat)),
        group_by: Some(
            tandem_spec::DEFAULT_GROUP_BY
                .iter()
                .map(|l| l.to_string())
                .collect(),
        ),
    }
}

fn grouped_by(mut receiver: Receiver, labels: &[&str]) -> Receiver {
    receiver.group_by = Some(labels.iter().map(|l| l.to_string()).collect());
    receiver
}

fn alertmanager(name: &str) -> Receiver {
    Receiver {
        name: name.to_string(),
        webhook: None,
        format: None,
        alertmanager: Some(format!("http://127.0.0.1:1/{name}")),
        group_wait: None,
        group_interval: None,
        repeat_interval: None,
        group_by: None,
    }
}

fn system(receivers: Vec<Receiver>, routes: Vec<Route>) -> System {
    let mut system = tandem_spec::resolve("t.toml", "", std::path::Path::new("/"), "dev").unwrap();
    system.receiver = receivers;
    system.route = routes;
    system
}

fn setup(receivers: Vec<Receiver>, routes: Vec<Route>) -> Fixture {
    setup_logged(receivers, routes, None, Clock::system(), None)
}

/// A notifier that keeps its receivers' logs in `log_dir`, on wall-clock `clock` (shared by
/// the notifiers of one test, so a "restart" sees the virtual time that passed). With
/// `sources`, the rules say which rule groups exist before the receivers load, as when
/// the server starts.
fn setup_logged(
    receivers: Vec<Receiver>,
    routes: Vec<Route>,
    log_dir: Option<&Path>,
    clock: Clock,
    sources: Option<&[&str]>,
) -> Fixture {
    setup_full(receivers, routes, log_dir, None, clock, sources)
}

/// [`setup_logged`] with the silences kept in `silences_file`.
fn setup_full(
    receivers: Vec<Receiver>,
    routes: Vec<Route>,
    log_dir: Option<&Path>,
    silences_file: Option<&Path>,
    clock: Clock,
    sources: Option<&[&str]>,
) -> Fixture {
    let (tx, sent) = mpsc::unbounded_channel();
    let fail = Arc::new(Mutex::new(BTreeSet::new()));
    let events = Arc::new(Events::default());
    let notifier = Notifier::with(
        "dev",
        events.clone(),
        Policy {
            min_backoff: Duration::from_millis(100),
            clock,
            ..Policy::default()
        },
        Transport::Record {
            sent: tx,
            fail: fail.clone(),
        },
        log_dir.map(Path::to_path_buf),
        silences_file.map(Path::to_path_buf),
    );
    if let Some(sources) = sources {
        notifier.retain_sources(&sources.iter().map(|s| s.to_string()).collect());
    }
    notifier.load(&system(receivers, routes), "http://127.0.0.1:7300");
    Fixture {
        notifier,
        sent,
        fail,
        events,
    }
}

fn alert(name: &str, service: &str, instance: &str) -> Observed {
    let labels: Labels = [
        ("alertname", name),
        ("service", service),
        ("env", "dev"),
        ("instance", instance),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    Observed {
        labels,
        annotations: Labels::new(),
        starts_at_ms: 1_000,
        resolved_at_ms: None,
        generator_url: String::new(),
    }
}

fn resolved(mut a: Observed, at: i64) -> Observed {
    a.resolved_at_ms = Some(at);
    a
}

/// The next payload, and how long after `since` it came (virtual time).
async fn next(sent: &mut Sent, since: Instant) -> (String, serde_json::Value, Duration) {
    let (url, body) = tokio::time::timeout(Duration::from_secs(24 * 3600), sent.recv())
        .await
        .expect("a notification within a day")
        .expect("channel open");
    (url, body, Instant::now() - since)
}

/// Nothing is sent within `d`.
async fn quiet(sent: &mut Sent, d: Duration) {
    if let Ok(Some((url, body))) = tokio::time::timeout(d, sent.recv()).await {
        panic!("unexpected notification to {url}: {body}");
    }
}

fn instances(body: &serde_json::Value, status: &str) -> Vec<String> {
    body["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["status"] == status)
        .map(|a| a["labels"]["instance"].as_str().unwrap().to_string())
        .collect()
}

const INTERVAL: Duration = Duration::from_secs(1);

#[tokio::test(start_paused = true)]
async fn a_group_waits_group_wait_and_collects_the_alerts_that_come_meanwhile() {
    let mut f = setup(vec![webhook("ops", 10, 300, 4 * 3600)], vec![]);
    let start = Instant::now();
    f.notifier
        .observe("g", &[alert("Down", "api", "a")], 1_000, INTERVAL);
    tokio::time::sleep(Duration::from_secs(3)).await;
    f.notifier.observe(
        "g",
        &[alert("Down", "api", "a"), alert("Down", "api", "b")],
        4_000,
        INTERVAL,
    );
    let (url, body, after) = next(&mut f.sent, start).await;
    assert_eq!(after, Duration::from_secs(10), "sent at group_wait");
    assert_eq!(url, "http://127.0.0.1:1/ops");
    assert_eq!(body["status"], "firing");
    assert_eq!(instances(&body, "firing"), ["a", "b"]);
    assert_eq!(
        body["groupLabels"],
        serde_json::json!({"alertname": "Down", "service": "api", "env": "dev"})
    );
    let events = f.events.kinds();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].0, EventKind::NotificationSent);
    assert!(events[0].1.contains("receiver 'ops'"), "{}", events[0].1);
    assert_eq!(f.notifier.counts()[&("ops".to_string(), "sent")], 1);
}

#[tokio::test(start_paused = true)]
async fn changes_wait_for_group_interval_and_an_unchanged_group_repeats_after_repeat_interval() {
    let mut f = setup(vec![webhook("ops", 10, 60, 3600)], vec![]);
    let start = Instant::now();
    f.notifier
        .observe("g", &[alert("Down", "api", "a")], 1_000, INTERVAL);
    next(&mut f.sent, start).await;
    // A second alert of the group 5 s later: told at the next group_interval, not before.
    tokio::time::sleep(Duration::from_secs(5)).await;
    f.notifier.observe(
        "g",
        &[alert("Down", "api", "a"), alert("Down", "api", "b")],
        15_000,
        INTERVAL,
    );
    let (_, body, after) = next(&mut f.sent, start).await;
    assert_eq!(after, Duration::from_secs(70));
    assert_eq!(instances(&body, "firing"), ["a", "b"]);
    // Unchanged: quiet at every group_interval until repeat_interval has passed.
    let (_, body, after) = next(&mut f.sent, start).await;
    assert_eq!(after, Duration::from_secs(70 + 3600), "repeat_interval");
    assert_eq!(instances(&body, "firing"), ["a", "b"]);
}

#[tokio::test(start_paused = true)]
async fn resolutions_are_sent_and_then_the_group_is_gone() {
    let mut f = setup(vec![webhook("ops", 10, 60, 3600)], vec![]);
    let start = Instant::now();
    let (a, b) = (alert("Down", "api", "a"), alert("Down", "api", "b"));
    f.notifier
        .observe("g", &[a.clone(), b.clone()], 1_000, INTERVAL);
    next(&mut f.sent, start).await;
    f.notifier.observe(
        "g",
        &[resolved(a.clone(), 20_000), b.clone()],
        20_000,
        INTERVAL,
    );
    let (_, body, after) = next(&mut f.sent, start).await;
    assert_eq!(after, Duration::from_secs(70));
    assert_eq!(body["status"], "firing");
    assert_eq!(instances(&body, "resolved"), ["a"]);
    assert_eq!(instances(&body, "firing"), ["b"]);
    assert_eq!(body["alerts"][1]["endsAt"], "1970-01-01T00:00:20.000Z");
    // b vanishes from the group's evaluation altogether: resolved too.
    f.notifier
        .observe("g", &[resolved(a.clone(), 20_000)], 80_000, INTERVAL);
    let (_, body, after) = next(&mut f.sent, start).await;
    assert_eq!(after, Duration::from_secs(130));
    assert_eq!(body["status"], "resolved");
    assert_eq!(
        instances(&body, "resolved"),
        ["b"],
        "a's resolution was sent already"
    );
    // The group is gone: the rules keep a's and b's resolutions a while, nothing is sent.
    f.notifier.observe(
        "g",
        &[resolved(a, 20_000), resolved(b, 80_000)],
        90_000,
        INTERVAL,
    );
    quiet(&mut f.sent, Duration::from_secs(8 * 3600)).await;
}

#[tokio::test(start_paused = true)]
async fn alerts_of_different_services_are_different_groups() {
    let mut f = setup(vec![webhook("ops", 10, 60, 3600)], vec![]);
    let start = Instant::now();
    f.notifier.observe(
        "g",
        &[alert("Down", "api", "a"), alert("Down", "db", "a")],
        1_000,
        INTERVAL,
    );
    let (_, first, _) = next(&mut f.sent, start).await;
    let (_, second, after) = next(&mut f.sent, start).await;
    assert_eq!(after, Duration::from_secs(10));
    let mut services = vec![
        first["groupLabels"]["service"]
            .as_str()
            .unwrap()
            .to_string(),
        second["groupLabels"]["service"]
            .as_str()
            .unwrap()
            .to_string(),
    ];
    services.sort();
    assert_eq!(services, ["api", "db"]);
}

#[tokio::test(start_paused = true)]
async fn routes_decide_which_receiver_hears_of_which_alert() {
    let route = |service: &str, receiver: &str| Route {
        match_: [("service".to_string(), service.to_string())].into(),
        matchers: vec![],
        receiver: receiver.to_string(),
        continue_: false,
    };
    let mut f = setup(
        vec![
            webhook("api-team", 1, 60, 3600),
            webhook("db-team", 1, 60, 3600),
        ],
        vec![route("api", "api-team"), route("db", "db-team")],
    );
    let start = Instant::now();
    f.notifier.observe(
        "g",
        &[
            alert("Down", "api", "a"),
            alert("Down", "db", "a"),
            alert("Down", "web", "a"),
        ],
        1_000,
        INTERVAL,
    );
    let mut got = Vec::new();
    for _ in 0..4 {
        let (url, body, _) = next(&mut f.sent, start).await;
        got.push((
            url.rsplit('/').next().unwrap().to_string(),
            body["groupLabels"]["service"].as_str().unwrap().to_string(),
        ));
    }
    got.sort();
    // web matches no route: it goes to every receiver rather than nowhere.
    assert_eq!(
        got,
        [
            ("api-team".to_string(), "api".to_string()),
            ("api-team".to_string(), "web".to_string()),
            ("db-team".to_string(), "db".to_string()),
            ("db-team".to_string(), "web".to_string()),
        ]
    );
    quiet(&mut f.sent, Duration::from_secs(3600)).await;
}

#[tokio::test(start_paused = true)]
async fn slack_receivers_get_text() {
    let mut slack = webhook("chat", 1, 60, 3600);
    slack.format = Some(WebhookFormat::Slack);
    let mut f = setup(vec![slack], vec![]);
    let mut a = alert("Down", "api", "a");
    a.annotations.insert("summary".into(), "api is down".into());
    f.notifier.observe("g", &[a], 1_000, INTERVAL);
    let (_, body, _) = next(&mut f.sent, Instant::now()).await;
    let text = body["text"].as_str().unwrap();
    assert!(
        text.starts_with("*[FIRING:1] Down* (env=dev, service=api)\n• api is down"),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_receiver_that_is_down_fails_loudly_and_does_not_hold_up_the_other() {
    let mut f = setup(
        vec![webhook("dead", 1, 60, 3600), webhook("ops", 1, 60, 3600)],
        vec![],
    );
    f.fail
        .lock()
        .unwrap()
        .insert("http://127.0.0.1:1/dead".to_string());
    let start = Instant::now();
    f.notifier
        .observe("g", &[alert("Down", "api", "a")], 1_000, INTERVAL);
    let (url, _, after) = next(&mut f.sent, start).await;
    assert_eq!(url, "http://127.0.0.1:1/ops");
    assert_eq!(after, Duration::from_secs(1));
    // The dead one's retries (0.1 + 0.2 + 0.4 s at most) end in a failure event.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let failed: Vec<String> = f
        .events
        .kinds()
        .into_iter()
        .filter(|(k, _)| *k == EventKind::NotificationFailed)
        .map(|(_, m)| m)
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(
        failed[0].contains("receiver 'dead' was not notified")
            && failed[0].contains("after 4 tries"),
        "{}",
        failed[0]
    );
    let counts = f.notifier.counts();
    assert_eq!(counts[&("dead".to_string(), "failed")], 1);
    assert_eq!(counts[&("ops".to_string(), "sent")], 1);
    // Back up: the group is tried again at its next group_interval.
    f.fail.lock().unwrap().clear();
    let (url, _, after) = next(&mut f.sent, start).await;
    assert_eq!(url, "http://127.0.0.1:1/dead");
    assert_eq!(after, Duration::from_secs(61));
}

#[tokio::test(start_paused = true)]
async fn alertmanager_hears_what_prometheus_would_send() {
    let mut f = setup(vec![alertmanager("am")], vec![]);
    let a = alert("Down", "api", "a");
    // First evaluation: sent at once, valid for 4 resend delays (interval 1 s < 1 min).
    f.notifier
        .observe("g", std::slice::from_ref(&a), 10_000, INTERVAL);
    let (url, body, _) = next(&mut f.sent, Instant::now()).await;
    assert_eq!(url, "http://127.0.0.1:1/am/api/v2/alerts");
    assert_eq!(body[0]["labels"]["alertname"], "Down");
    assert_eq!(body[0]["startsAt"], "1970-01-01T00:00:01.000Z");
    assert_eq!(body[0]["endsAt"], "1970-01-01T00:04:10.000Z");
    // Evaluations within the resend delay send nothing; the one at a minute resends.
    for t in [11_000, 30_000, 69_000] {
        f.notifier
            .observe("g", std::slice::from_ref(&a), t, INTERVAL);
    }
    quiet(&mut f.sent, Duration::from_secs(1)).await;
    f.notifier
        .observe("g", std::slice::from_ref(&a), 70_000, INTERVAL);
    let (_, body, _) = next(&mut f.sent, Instant::now()).await;
    assert_eq!(body[0]["endsAt"], "1970-01-01T00:05:10.000Z");
    // Resolved: sent at the next evaluation, ending when it resolved.
    f.notifier
        .observe("g", &[resolved(a.clone(), 75_000)], 75_000, INTERVAL);
    let (_, body, _) = next(&mut f.sent, Instant::now()).await;
    assert_eq!(body[0]["endsAt"], "1970-01-01T00:01:15.000Z");
    // A slow group (5 min interval) gives firing alerts 20 minutes.
    let b = alert("Down", "api", "b");
    f.notifier.observe(
        "slow",
        std::slice::from_ref(&b),
        100_000,
        Duration::from_secs(300),
    );
    let (_, body, _) = next(&mut f.sent, Instant::now()).await;
    assert_eq!(body[0]["endsAt"], "1970-01-01T00:21:40.000Z");
    let sent: Vec<String> = f
        .events
        .kinds()
        .into_iter()
        .filter(|(k, _)| *k == EventKind::NotificationSent)
        .map(|(_, m)| m)
        .collect();
    assert_eq!(sent.len(), 3, "the refresh is not an event: {sent:?}");
    assert!(sent[1].ends_with("resolved"), "{}", sent[1]);
    assert_eq!(f.notifier.counts()[&("am".to_string(), "sent")], 4);
}

#[tokio::test(start_paused = true)]
async fn a_reload_keeps_unchanged_receivers_and_resolves_alerts_of_removed_groups() {
    let mut f = setup(vec![webhook("ops", 10, 60, 3600)], vec![]);
    let start = Instant::now();
    f.notifier
        .observe("g", &[alert("Down", "api", "a")], 1_000, INTERVAL);
    next(&mut f.sent, start).await;
    f.notifier.load(
        &system(vec![webhook("ops", 10, 60, 3600)], vec![]),
        "http://127.0.0.1:7300",
    );
    f.notifier.retain_sources(&BTreeSet::new());
    let (_, body, after) = next(&mut f.sent, start).await;
    assert_eq!(after, Duration::from_secs(70), "the group kept its timing");
    assert_eq!(body["status"], "resolved");
}

/// A real send (no paused clock): a webhook over https reaches a server whose
/// self-signed certificate the client trusts.
#[tokio::test]
async fn a_webhook_is_sent_over_https() {
    let (port, cert, mut bodies) = crate::delivery::tls_server().await;
    let events = Arc::new(Events::default());
    let notifier = Notifier::with(
        "dev",
        events.clone(),
        Policy::default(),
        Transport::Http(Box::new(https_client(Some(cert)))),
        None,
        None,
    );
    let mut receiver = webhook("ops", 0, 300, 3600);
    receiver.webhook = Some(format!("https://127.0.0.1:{port}/hook"));
    receiver.group_wait = Some(Dur(Duration::from_millis(10)));
    notifier.load(&system(vec![receiver], vec![]), "http://127.0.0.1:7300");
    notifier.observe("g", &[alert("Down", "api", "a")], 1_000, INTERVAL);
    let (path, body) = tokio::time::timeout(Duration::from_secs(10), bodies.recv())
        .await
        .expect("a notification within 10s")
        .expect("the server runs");
    assert_eq!(path, "/hook");
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["status"], "firing");
    assert_eq!(instances(&body, "firing"), ["a"]);
}

fn with_label(mut a: Observed, name: &str, value: &str) -> Observed {
    a.labels.insert(name.to_string(), value.to_string());
    a
}

/// Every notification sent within `d`, as (receiver, body).
async fn all_within(sent: &mut Sent, d: Duration) -> Vec<(String, serde_json::Value)> {
    let deadline = Instant::now() + d;
    let mut got = Vec::new();
    while let Ok(Some((url, body))) = tokio::time::timeout_at(deadline, sent.recv()).await {
        got.push((url.rsplit('/').next().unwrap().to_string(), body));
    }
    got
}

fn group_of<'a>(
    got: &'a [(String, serde_json::Value)],
    receiver: &str,
    key: &str,
) -> &'a serde_json::Value {
    got.iter()
        .find(|(r, body)| r == receiver && body["groupKey"] == key)
        .map(|(_, body)| body)
        .unwrap_or_else(|| panic!("no notification of {key} to {receiver} in {got:#?}"))
}

#[tokio::test(start_paused = true)]
async fn after_a_restart_an_unchanged_group_is_not_told_again_before_repeat_interval() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::system();
    let ops = || vec![webhook("ops", 10, 60, 3600)];
    let mut f = setup_logged(ops(), vec![], Some(dir.path()), clock, Some(&["g"]));
    let start = Instant::now();
    let a = alert("Down", "api", "a");
    f.notifier
        .observe("g", std::slice::from_ref(&a), 1_000, INTERVAL);
    let (_, _, after) = next(&mut f.sent, start).await;
    assert_eq!(after, Duration::from_secs(10));

    // The server is down for 100 s, and starts again on the same data directory.
    drop(f);
    tokio::time::sleep(Duration::from_secs(100)).await;
    let restarted = Instant::now();
    let mut f = setup_logged(ops(), vec![], Some(dir.path()), clock, Some(&["g"]));
    f.notifier
        .observe("g", std::slice::from_ref(&a), 111_000, INTERVAL);
    // Told at 10 s, so due again at 3610 s: the group is looked at every group_interval
    // from 120 s (group_wait after the restart), and the first look after that is at 3660 s.
    let (_, body, after) = next(&mut f.sent, restarted).await;
    assert_eq!(after, Duration::from_secs(3660 - 110));
    assert_eq!(body["status"], "firing");
    assert_eq!(instances(&body, "firing"), ["a"]);
    assert!(
        f.events
            .kinds()
            .iter()
            .all(|(k, _)| *k == EventKind::NotificationSent),
        "{:?}",
        f.events.kinds()
    );
}

#[tokio::test(start_paused = true)]
async fn after_a_restart_alerts_that_ended_while_down_are_told_resolved() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::system();
    let ops = || vec![webhook("ops", 10, 60, 3600)];
    let mut f = setup_logged(ops(), vec![], Some(dir.path()), clock, Some(&["g", "old"]));
    let (a, b, c) = (
        alert("Down", "api", "a"),
        alert("Down", "api", "b"),
        alert("Down", "db", "c"),
    );
    let d = alert("Gone", "web", "d");
    f.notifier
        .observe("g", &[a.clone(), b.clone(), c.clone()], 1_000, INTERVAL);
    f.notifier
        .observe("old", std::slice::from_ref(&d), 1_000, INTERVAL);
    assert_eq!(
        all_within(&mut f.sent, Duration::from_secs(11)).await.len(),
        3
    );

    drop(f);
    tokio::time::sleep(Duration::from_secs(100)).await;
    let restarted = Instant::now();
    // The rule group 'old' was removed while the server was down.
    let mut f = setup_logged(ops(), vec![], Some(dir.path()), clock, Some(&["g"]));
    // 'g' says a resolved, b still fires, and says nothing of c (its rule was removed).
    f.notifier.observe(
        "g",
        &[resolved(a.clone(), 105_000), b.clone()],
        111_000,
        INTERVAL,
    );
    let got = all_within(&mut f.sent, Duration::from_secs(11)).await;
    assert_eq!(Instant::now() - restarted, Duration::from_secs(11));
    assert_eq!(got.len(), 3, "{got:#?}");
    let api = group_of(
        &got,
        "ops",
        "{}:{alertname=\"Down\", env=\"dev\", service=\"api\"}",
    );
    assert_eq!(api["status"], "firing");
    assert_eq!(instances(api, "firing"), ["b"]);
    assert_eq!(instances(api, "resolved"), ["a"]);
    assert_eq!(api["alerts"][1]["endsAt"], "1970-01-01T00:01:45.000Z");
    let db = group_of(
        &got,
        "ops",
        "{}:{alertname=\"Down\", env=\"dev\", service=\"db\"}",
    );
    assert_eq!(db["status"], "resolved");
    assert_eq!(instances(db, "resolved"), ["c"]);
    assert_eq!(db["alerts"][0]["endsAt"], "1970-01-01T00:01:51.000Z");
    let gone = group_of(
        &got,
        "ops",
        "{}:{alertname=\"Gone\", env=\"dev\", service=\"web\"}",
    );
    assert_eq!(gone["status"], "resolved");
    assert_eq!(instances(gone, "resolved"), ["d"]);
    // Told once: nothing more until b's group is due a repeat.
    quiet(&mut f.sent, Duration::from_secs(3000)).await;
}

#[tokio::test(start_paused = true)]
async fn a_log_that_cannot_be_read_is_reported_once_and_the_receiver_starts_empty() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ops.json");
    std::fs::write(&path, "{\"version\": 1, \"receiver\": \"ops\", \"gro").unwrap();
    let ops = || vec![webhook("ops", 10, 60, 3600)];
    let mut f = setup_logged(
        ops(),
        vec![],
        Some(dir.path()),
        Clock::system(),
        Some(&["g"]),
    );
    let warnings = |f: &Fixture| -> Vec<String> {
        f.events
            .kinds()
            .into_iter()
            .filter(|(k, _)| *k == EventKind::NotificationFailed)
            .map(|(_, m)| m)
            .collect()
    };
    let w = warnings(&f);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("receiver 'ops'")
            && w[0].contains(&path.display().to_string())
            && w[0].contains("EOF while parsing"),
        "{}",
        w[0]
    );
    // It works from an empty state, and writes a good log.
    let start = Instant::now();
    f.notifier
        .observe("g", &[alert("Down", "api", "a")], 1_000, INTERVAL);
    let (_, body, after) = next(&mut f.sent, start).await;
    assert_eq!(after, Duration::from_secs(10));
    assert_eq!(instances(&body, "firing"), ["a"]);
    let log = log::read(&path, "ops").unwrap().unwrap();
    assert_eq!(log.groups.len(), 1);
    assert_eq!(log.groups[0].firing[0].labels["instance"], "a");
    // A deploy that leaves the receiver alone does not read it again.
    f.notifier
        .load(&system(ops(), vec![]), "http://127.0.0.1:7300");
    assert_eq!(warnings(&f).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn logs_go_with_their_receiver_or_their_grouping() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::system();
    let both = vec![webhook("ops", 10, 60, 3600), webhook("chat", 10, 60, 3600)];
    let mut f = setup_logged(both, vec![], Some(dir.path()), clock, Some(&["g"]));
    let a = alert("Down", "api", "a");
    f.notifier
        .observe("g", std::slice::from_ref(&a), 1_000, INTERVAL);
    assert_eq!(
        all_within(&mut f.sent, Duration::from_secs(11)).await.len(),
        2
    );
    assert!(dir.path().join("chat.json").exists());
    // chat leaves the live revision: its log goes.
    f.notifier.load(
        &system(vec![webhook("ops", 10, 60, 3600)], vec![]),
        "http://127.0.0.1:7300",
    );
    assert!(!dir.path().join("chat.json").exists());
    assert!(dir.path().join("ops.json").exists());
    drop(f);
    // ops now groups otherwise: its groups are new ones, told after group_wait.
    let restarted = Instant::now();
    let regrouped = grouped_by(webhook("ops", 10, 60, 3600), &["alertname"]);
    let mut f = setup_logged(
        vec![regrouped],
        vec![],
        Some(dir.path()),
        clock,
        Some(&["g"]),
    );
    f.notifier
        .observe("g", std::slice::from_ref(&a), 20_000, INTERVAL);
    let (_, body, after) = next(&mut f.sent, restarted).await;
    assert_eq!(after, Duration::from_secs(10));
    assert_eq!(
        body["groupLabels"],
        serde_json::json!({"alertname": "Down"})
    );
}

#[tokio::test(start_paused = true)]
async fn group_by_decides_the_groups_and_what_their_payload_says() {
    let mut f = setup(
        vec![
            grouped_by(webhook("by-name", 10, 60, 3600), &["alertname"]),
            grouped_by(webhook("each", 10, 60, 3600), &["..."]),
            grouped_by(webhook("one", 10, 60, 3600), &[]),
        ],
        vec![],
    );
    let mut slow = alert("Slow", "api", "c");
    slow.annotations.insert("summary".into(), "slow".into());
    f.notifier.observe(
        "g",
        &[alert("Down", "api", "a"), alert("Down", "db", "b"), slow],
        1_000,
        INTERVAL,
    );
    let got = all_within(&mut f.sent, Duration::from_secs(11)).await;
    let count = |r: &str| got.iter().filter(|(name, _)| name == r).count();
    assert_eq!(
        (count("by-name"), count("each"), count("one")),
        (2, 3, 1),
        "{got:#?}"
    );

    let down = group_of(&got, "by-name", "{}:{alertname=\"Down\"}");
    assert_eq!(
        down["groupLabels"],
        serde_json::json!({"alertname": "Down"})
    );
    assert_eq!(
        down["commonLabels"],
        serde_json::json!({"alertname": "Down", "env": "dev"}),
        "api and db differ in service"
    );
    assert_eq!(instances(down, "firing"), ["a", "b"]);

    let b = group_of(
        &got,
        "each",
        "{}:{alertname=\"Down\", env=\"dev\", instance=\"b\", service=\"db\"}",
    );
    assert_eq!(
        b["groupLabels"],
        serde_json::json!({"alertname": "Down", "env": "dev", "instance": "b", "service": "db"})
    );
    assert_eq!(b["commonLabels"], b["groupLabels"]);

    let one = group_of(&got, "one", "{}:{}");
    assert_eq!(one["groupLabels"], serde_json::json!({}));
    assert_eq!(one["commonLabels"], serde_json::json!({"env": "dev"}));
    assert_eq!(instances(one, "firing"), ["a", "b", "c"]);
    assert_eq!(one["commonAnnotations"], serde_json::json!({}));
}

#[tokio::test(start_paused = true)]
async fn route_matchers_choose_receivers_with_regexes_and_negations() {
    let route = |matchers: &[&str], receiver: &str| Route {
        match_: BTreeMap::new(),
        matchers: matchers
            .iter()
            .map(|m| tandem_spec::Matcher::parse(m).unwrap())
            .collect(),
        receiver: receiver.to_string(),
        continue_: false,
    };
    let each = |name: &str| grouped_by(webhook(name, 1, 60, 3600), &["..."]);
    let mut f = setup(
        vec![each("pager"), each("chat"), each("rest")],
        vec![
            route(
                &[r#"severity=~"page|critical""#, r#"service!="kv""#],
                "pager",
            ),
            route(&[r#"severity!~"page|critical""#, "env=dev"], "chat"),
            route(&[], "rest"),
        ],
    );
    let severity = |instance: &str, service: &str, severity: &str| {
        with_label(alert("Down", service, instance), "severity", severity)
    };
    f.notifier.observe(
        "g",
        &[
            severity("a", "api", "page"),
            severity("b", "kv", "critical"),
            severity("c", "api", "warning"),
            alert("Down", "db", "d"),
            severity("e", "api", "pages"),
        ],
        1_000,
        INTERVAL,
    );
    let mut got: Vec<(String, String)> = all_within(&mut f.sent, Duration::from_secs(2))
        .await
        .into_iter()
        .map(|(r, body)| (r, instances(&body, "firing").join(",")))
        .collect();
    got.sort();
    let want: Vec<(String, String)> = [
        ("chat", "c"), // warning is not page|critical
        ("chat", "d"), // no severity is "", which is not page|critical either
        ("chat", "e"), // the regex is anchored: "pages" is not "page"
        ("pager", "a"),
        ("rest", "b"), // kv is not for the pager
    ]
    .iter()
    .map(|(r, i)| (r.to_string(), i.to_string()))
    .collect();
    assert_eq!(got, want);
}

/// A real restart over real sockets and the real clock (no paused clock, the notifiers'
/// own wall clocks): the second notifier's first message is the resolution of the alert
/// that ended while it was down, not a repeat of the group that still fires (without the
/// log, that group would be new and told first, and the resolution dropped as old news).
#[tokio::test]
async fn a_restarted_server_tells_the_resolution_and_not_the_unchanged_group_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let (port, cert, mut bodies) = crate::delivery::tls_server().await;
    let mut receiver = webhook("ops", 0, 3600, 3600);
    receiver.webhook = Some(format!("https://127.0.0.1:{port}/hook"));
    receiver.group_wait = Some(Dur(Duration::from_millis(10)));
    receiver.group_interval = Some(Dur(Duration::from_millis(200)));
    let start = |events: Arc<Events>| {
        let notifier = Notifier::with(
            "dev",
            events,
            Policy::default(),
            Transport::Http(Box::new(https_client(Some(cert.clone())))),
            Some(dir.path().to_path_buf()),
            None,
        );
        notifier.retain_sources(&["g".to_string()].into());
        notifier.load(
            &system(vec![receiver.clone()], vec![]),
            "http://127.0.0.1:7300",
        );
        notifier
    };
    let mut body = async || {
        let (_, body) = tokio::time::timeout(Duration::from_secs(10), bodies.recv())
            .await
            .expect("a notification within 10s")
            .expect("the server runs");
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()
    };
    let (steady, ends) = (alert("A-Steady", "api", "a"), alert("B-Ends", "api", "b"));
    let first = start(Arc::default());
    first.observe("g", &[steady.clone(), ends.clone()], 1_000, INTERVAL);
    let mut told: Vec<String> = Vec::new();
    for _ in 0..2 {
        told.push(body().await["groupLabels"]["alertname"].to_string());
    }
    told.sort();
    assert_eq!(told, ["\"A-Steady\"", "\"B-Ends\""]);
    // The server stops once both deliveries are in the log (the receiver has its answer
    // a moment after we have the request).
    let deadline = Instant::now() + Duration::from_secs(10);
    while log::read(&dir.path().join("ops.json"), "ops")
        .ok()
        .flatten()
        .is_none_or(|log| log.groups.len() < 2)
    {
        assert!(Instant::now() < deadline, "both groups logged within 10s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(first);

    let events = Arc::new(Events::default());
    let second = start(events.clone());
    second.observe("g", &[steady, resolved(ends, 2_000)], 3_000, INTERVAL);
    let got = body().await;
    assert_eq!(got["groupLabels"]["alertname"], "B-Ends", "{got}");
    assert_eq!(got["status"], "resolved");
    assert_eq!(instances(&got, "resolved"), ["b"]);
    assert!(
        events
            .kinds()
            .iter()
            .all(|(k, _)| *k == EventKind::NotificationSent)
    );
}

// === silences ===

fn silence_request(matchers: &[&str], secs: u64) -> tandem_api::SilenceRequest {
    tandem_api::SilenceRequest {
        matchers: matchers.iter().map(|m| m.to_string()).collect(),
        duration_ms: Some(secs * 1000),
        created_by: "Ada".into(),
        comment: "db maintenance".into(),
        ..Default::default()
    }
}

fn silence(f: &Fixture, matchers: &[&str], secs: u64) -> tandem_api::Silence {
    f.notifier
        .silences()
        .create(silence_request(matchers, secs))
        .unwrap()
}

fn events_of(f: &Fixture, kind: EventKind) -> Vec<Event> {
    f.events
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.kind == kind)
        .cloned()
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_silenced_alert_is_told_only_once_its_silence_ends_and_others_go_out_meanwhile() {
    let mut f = setup(vec![webhook("ops", 10, 60, 3600)], vec![]);
    let start = Instant::now();
    let s = silence(&f, &["alertname=Down", "service=api"], 300);
    let created = events_of(&f, EventKind::SilenceCreated);
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].who.as_deref(), Some("Ada"));
    assert!(
        created[0].message.contains(&s.id)
            && created[0]
                .message
                .contains(r#"{alertname="Down", service="api"}"#)
            && created[0].message.contains("(5m)")
            && created[0].message.contains("db maintenance"),
        "{}",
        created[0].message
    );
    f.notifier.observe(
        "g",
        &[alert("Down", "api", "a"), alert("Down", "db", "b")],
        1_000,
        INTERVAL,
    );
    // The db group goes out at group_wait; the api group is muted.
    let (_, body, after) = next(&mut f.sent, start).await;
    assert_eq!(after, Duration::from_secs(10));
    assert_eq!(body["groupLabels"]["service"], "db");
    // The silence ends at 300 s; the api group, looked at every group_interval from 10 s,
    // is told at its first look after that, as a new group.
    let (_, body, after) = next(&mut f.sent, start).await;
    assert_eq!(after, Duration::from_secs(310));
    assert_eq!(body["groupLabels"]["service"], "api");
    assert_eq!(instances(&body, "firing"), ["a"]);
    let ended = events_of(&f, EventKind::SilenceExpired);
    assert_eq!(ended.len(), 1, "its end is on the timeline: {ended:?}");
    assert!(ended[0].message.contains(&s.id) && ended[0].who.is_none());
    // In the wall clock the silence ended at 300 s after it started.
    assert_eq!(s.ends_at_ms - s.starts_at_ms, 300_000);
}

#[tokio::test(start_paused = true)]
async fn expiring_a_silence_lets_its_alerts_out_at_the_next_look() {
    let mut f = setup(vec![webhook("ops", 10, 60, 3600)], vec![]);
    let start = Instant::now();
    let s = silence(&f, &["alertname=Down"], 3600);
    f.notifier
        .observe("g", &[alert("Down", "api", "a")], 1_000, INTERVAL);
    quiet(&mut f.sent, Duration::from_secs(100)).await;
    // A prefix of the id is enough when it names one silence.
    let expired = f.notifier.silences().expire(&s.id[..8], "Grace").unwrap();
    assert_eq!(expired.id, s.id);
    let told = events_of(&f, EventKind::SilenceExpired);
    assert_eq!(told.len(), 1, "{told:?}");
    assert_eq!(told[0].who.as_deref(), Some("Grace"));
    assert!(told[0].message.contains(r#"{alertname="Down"}"#));
    let (_, body, after) = next(&mut f.sent, start).await;
    assert_eq!(after, Duration::from_secs(130), "looks at 10, 70, 130 s");
    assert_eq!(instances(&body, "firing"), ["a"]);
    // Expired already, or unknown: said so.
    let again = f.notifier.silences().expire(&s.id, "Grace").unwrap_err();
    assert!(again.to_string().contains("already expired"), "{again}");
    let unknown = f.notifier.silences().expire("nope", "Grace").unwrap_err();
    assert!(
        unknown.to_string().contains("no silence has the id 'nope'")
            && unknown
                .to_string()
                .contains("hint: `tandem alerts silences --all`"),
        "{unknown}"
    );
    assert_eq!(events_of(&f, EventKind::SilenceExpired).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn resolutions_of_alerts_whose_firing_was_muted_are_not_told() {
    let mut f = setup(vec![webhook("ops", 10, 60, 3600)], vec![]);
    let start = Instant::now();
    let (a, b, c) = (
        alert("Down", "api", "a"),
        alert("Down", "api", "b"),
        alert("Down", "api", "c"),
    );
    // b's silence ends before b resolves; c resolves while its silence lasts.
    silence(&f, &["instance=b"], 65);
    silence(&f, &["instance=c"], 3600);
    f.notifier
        .observe("g", &[a.clone(), b.clone(), c.clone()], 1_000, INTERVAL);
    let (_, body, after) = next(&mut f.sent, start).await;
    assert_eq!(after, Duration::from_secs(10));
    assert_eq!(instances(&body, "firing"), ["a"], "b and c are muted");
    tokio::time::sleep(Duration::from_secs(56)).await;
    f.notifier.observe(
        "g",
        &[a.clone(), resolved(b, 66_000), resolved(c, 66_000)],
        67_000,
        INTERVAL,
    );
    // Nothing changed for the receiver: it hears of a again at repeat_interval, alone.
    let (_, body, after) = next(&mut f.sent, start).await;
    assert_eq!(after, Duration::from_secs(3610));
    assert_eq!(instances(&body, "firing"), ["a"]);
    assert!(instances(&body, "resolved").is_empty(), "{body}");
}

#[tokio::test(start_paused = true)]
async fn silences_match_with_regexes_and_negations() {
    let mut f = setup(
        vec![grouped_by(webhook("ops", 10, 60, 3600), &["..."])],
        vec![],
    );
    silence(&f, &[r#"service=~"api|web""#, r#"severity!="page""#], 3600);
    let severity = |instance: &str, service: &str, severity: &str| {
        with_label(alert("Down", service, instance), "severity", severity)
    };
    f.notifier.observe(
        "g",
        &[
            severity("a", "api", "ticket"),  // muted
            alert("Down", "web", "b"),       // muted: no severity is "", not "page"
            severity("c", "api", "page"),    // a page goes out
            severity("d", "db", "ticket"),   // not api or web
            severity("e", "apis", "ticket"), // the regex is anchored
        ],
        1_000,
        INTERVAL,
    );
    let mut got: Vec<String> = all_within(&mut f.sent, Duration::from_secs(11))
        .await
        .into_iter()
        .map(|(_, body)| instances(&body, "firing").join(","))
        .collect();
    got.sort();
    assert_eq!(got, ["c", "d", "e"]);
    quiet(&mut f.sent, Duration::from_secs(3000)).await;
}

#[tokio::test(start_paused = true)]
async fn alertmanager_receivers_get_silenced_alerts_too() {
    let mut f = setup(vec![alertmanager("am")], vec![]);
    silence(&f, &["alertname=Down"], 3600);
    f.notifier
        .observe("g", &[alert("Down", "api", "a")], 10_000, INTERVAL);
    let (_, body, _) = next(&mut f.sent, Instant::now()).await;
    assert_eq!(body[0]["labels"]["alertname"], "Down");
}

#[tokio::test(start_paused = true)]
async fn silences_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("silences.json");
    let clock = Clock::system();
    let ops = || vec![webhook("ops", 10, 60, 3600)];
    let f = setup_full(ops(), vec![], None, Some(&file), clock, Some(&["g"]));
    let s = silence(&f, &["alertname=Down"], 3600);
    assert!(file.exists() && !dir.path().join("silences.json.tmp").exists());
    drop(f);

    tokio::time::sleep(Duration::from_secs(100)).await;
    let restarted = Instant::now();
    let mut f = setup_full(ops(), vec![], None, Some(&file), clock, Some(&["g"]));
    assert_eq!(f.notifier.silences().list(), std::slice::from_ref(&s));
    f.notifier.observe(
        "g",
        &[alert("Down", "api", "a"), alert("Up", "api", "b")],
        101_000,
        INTERVAL,
    );
    let (_, body, after) = next(&mut f.sent, restarted).await;
    assert_eq!(after, Duration::from_secs(10));
    assert_eq!(
        body["groupLabels"]["alertname"], "Up",
        "Down is still muted"
    );
    // The silence ends 3600 s after it was made, 3500 s after the restart: Down is told at
    // the first look after that (looks at 10 + 60k s).
    let (_, body, after) = next(&mut f.sent, restarted).await;
    assert_eq!(after, Duration::from_secs(3550));
    assert_eq!(body["groupLabels"]["alertname"], "Down");
    assert!(
        f.events
            .kinds()
            .iter()
            .all(|(k, _)| *k != EventKind::NotificationFailed)
    );
}

#[tokio::test(start_paused = true)]
async fn a_silence_file_that_cannot_be_read_is_reported_and_the_server_starts_without_silences() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("silences.json");
    std::fs::write(&file, "{\"version\": 1, \"silences\": [{\"id\": ").unwrap();
    let ops = || vec![webhook("ops", 10, 60, 3600)];
    let mut f = setup_full(ops(), vec![], None, Some(&file), Clock::system(), None);
    let failed = events_of(&f, EventKind::NotificationFailed);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(
        failed[0].message.contains(&file.display().to_string())
            && failed[0].message.contains("EOF while parsing")
            && failed[0].message.contains("starts without silences"),
        "{}",
        failed[0].message
    );
    assert!(
        dir.path().join("silences.json.unreadable").exists(),
        "kept aside for a look"
    );
    assert!(f.notifier.silences().list().is_empty());
    let start = Instant::now();
    f.notifier
        .observe("g", &[alert("Down", "api", "a")], 1_000, INTERVAL);
    let (_, _, after) = next(&mut f.sent, start).await;
    assert_eq!(after, Duration::from_secs(10));
    // New silences are written to a good file.
    let s = silence(&f, &["alertname=Down"], 60);
    drop(f);
    let f = setup_full(ops(), vec![], None, Some(&file), Clock::system(), None);
    assert_eq!(f.notifier.silences().list(), [s]);
    assert!(events_of(&f, EventKind::NotificationFailed).is_empty());
}

#[tokio::test(start_paused = true)]
async fn expired_silences_are_kept_five_days_then_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("silences.json");
    let clock = Clock::system();
    let f = setup_full(vec![], vec![], None, Some(&file), clock, None);
    let kept = silence(&f, &["alertname=Down"], 3600);
    let ended = silence(&f, &["alertname=Slow"], 3600);
    f.notifier.silences().expire(&ended.id, "Ada").unwrap();
    let list = f.notifier.silences().list();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].id, kept.id, "active first");
    assert_eq!(
        list[1].state(f.notifier.silences().now_ms()),
        tandem_api::SilenceState::Expired
    );
    tokio::time::sleep(silences::RETENTION - Duration::from_secs(60)).await;
    assert_eq!(f.notifier.silences().list().len(), 2, "kept 5 days");
    tokio::time::sleep(Duration::from_secs(61)).await;
    // 5 days after their end: `ended` went first, `kept` (ended an hour later) is next.
    let ids: Vec<String> = f
        .notifier
        .silences()
        .list()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(ids, std::slice::from_ref(&kept.id));
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        !text.contains(&ended.id) && text.contains(&kept.id),
        "{text}"
    );
    // A restart reads what is left and drops what ran out meanwhile.
    drop(f);
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let f = setup_full(vec![], vec![], None, Some(&file), clock, None);
    assert!(f.notifier.silences().list().is_empty());
    assert!(!std::fs::read_to_string(&file).unwrap().contains(&kept.id));
}

#[test]
fn bad_silences_are_refused_with_every_reason() {
    let now = 1_000_000;
    let check = |request: tandem_api::SilenceRequest, want: &[&str]| {
        let e = silences::validate(request, now).unwrap_err().to_string();
        for w in want {
            assert!(e.contains(w), "{w:?} not in:\n{e}");
        }
        assert!(e.contains("hint:"), "{e}");
    };
    check(
        silence_request(&[], 60),
        &["a silence needs at least one matcher"],
    );
    check(
        silence_request(&[r#"service=~"api|(web""#, "alertname"], 60),
        &[
            r#"invalid regex in matcher 'service=~"api|(web"'"#,
            "matcher 'alertname' has no operator",
        ],
    );
    check(
        silence_request(&["severity!=info", r#"service=~".*""#], 60),
        &["would mute alerts it does not name"],
    );
    let mut past = silence_request(&["alertname=Down"], 60);
    past.duration_ms = None;
    past.ends_at_ms = Some(now - 1);
    past.comment = " ".into();
    check(
        past,
        &[
            "the silence would end at 1970-01-01T00:16:39Z, which is not in the future",
            "a silence needs a comment",
        ],
    );
    let mut endless = silence_request(&["alertname=Down"], 60);
    endless.duration_ms = None;
    check(endless, &["a silence needs an end"]);
    let mut backwards = silence_request(&["alertname=Down"], 60);
    backwards.duration_ms = None;
    backwards.starts_at_ms = Some(now + 10_000);
    backwards.ends_at_ms = Some(now + 5_000);
    check(backwards, &["before it starts"]);
    let ok = silences::validate(silence_request(&["alertname=Down"], 60), now).unwrap();
    assert_eq!(ok.ends_at_ms - ok.starts_at_ms, 60_000);
    assert_eq!(ok.id.len(), 36);
}

// === inhibition ===

/// Loads `receivers` again with the `[[inhibit]]` rules (and `[system]` keys) of `file`.
fn load_inhibiting(f: &Fixture, receivers: Vec<Receiver>, file: &str) {
    let mut system = tandem_spec::resolve("t.toml", file, Path::new("/"), "dev").unwrap();
    system.receiver = receivers;
    f.notifier.load(&system, "http://127.0.0.1:7300");
}

const CRASH_MUTES_WARNINGS: &str = r#"
[[inhibit]]
source_matchers = ["alertname=CrashLoop"]
target_matchers = ['severity=~"warning|info"']
equal = ["service", "env"]
"#;

/// What was sent, as `alertname/service: firing instances | resolved instances`, sorted.
fn summaries(got: &[(String, serde_json::Value)]) -> Vec<String> {
    let mut out: Vec<String> = got
        .iter()
        .map(|(_, body)| {
            format!(
                "{}/{}: {} | {}",
                body["commonLabels"]["alertname"].as_str().unwrap_or("*"),
                body["commonLabels"]["service"].as_str().unwrap_or("*"),
                instances(body, "firing").join(","),
                instances(body, "resolved").join(","),
            )
        })
        .collect();
    out.sort();
    out
}

#[tokio::test(start_paused = true)]
async fn an_inhibited_alert_is_told_only_once_its_source_resolves() {
    let ops = webhook("ops", 10, 60, 3600);
    let mut f = setup(vec![ops.clone()], vec![]);
    load_inhibiting(&f, vec![ops], CRASH_MUTES_WARNINGS);
    let crash = with_label(alert("CrashLoop", "api", "-"), "severity", "page");
    let slow = |service: &str, instance: &str| {
        with_label(alert("Slow", service, instance), "severity", "warning")
    };
    // The source comes from another rule group than its targets: inhibition looks at
    // every firing alert.
    f.notifier
        .observe("crash", std::slice::from_ref(&crash), 1_000, INTERVAL);
    f.notifier.observe(
        "latency",
        &[slow("api", "a"), slow("web", "b")],
        1_000,
        INTERVAL,
    );
    let got = all_within(&mut f.sent, Duration::from_secs(11)).await;
    assert_eq!(
        summaries(&got),
        ["CrashLoop/api: - | ", "Slow/web: b | "],
        "api's Slow is inhibited; web's has another service, so it is not"
    );
    assert_eq!(
        f.notifier.inhibited_by(&slow("api", "a").labels),
        [payload::fingerprint(&crash.labels)]
    );
    assert!(f.notifier.inhibited_by(&slow("web", "b").labels).is_empty());
    assert!(f.notifier.inhibited_by(&crash.labels).is_empty());
    quiet(&mut f.sent, Duration::from_secs(80)).await;
    // The crash loop ends at 91 s; the Slow/api group, looked at every group_interval from
    // 10 s, is told at 130 s as new, with the crash loop's resolution in its own group.
    let start = Instant::now() - Duration::from_secs(91);
    f.notifier
        .observe("crash", &[resolved(crash, 91_000)], 91_000, INTERVAL);
    let (_, first, after) = next(&mut f.sent, start).await;
    assert_eq!(after, Duration::from_secs(130));
    let (_, second, after) = next(&mut f.sent, start).await;
    assert_eq!(after, Duration::from_secs(130));
    assert_eq!(
        summaries(&[(String::new(), first), (String::new(), second)]),
        ["CrashLoop/api:  | -", "Slow/api: a | "]
    );
    assert!(f.notifier.inhibited_by(&slow("api", "a").labels).is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_alert_on_both_sides_of_a_rule_does_not_inhibit_itself() {
    let each = grouped_by(webhook("ops", 10, 60, 3600), &["..."]);
    let mut f = setup(vec![each.clone()], vec![]);
    load_inhibiting(
        &f,
        vec![each],
        r#"
[[inhibit]]
source_matchers = ["severity=page"]
target_matchers = ['alertname=~"Down|Slow"']
equal = ["service"]
"#,
    );
    let page =
        |name: &str, service: &str| with_label(alert(name, service, "i"), "severity", "page");
    // Down/api pages and is a target: it does not mute itself. Slow/api (a page too, so on
    // both sides) is not muted by Down/api either, as in Alertmanager; Slow/api without
    // severity is a target only, and is muted.
    f.notifier.observe(
        "g",
        &[
            page("Down", "api"),
            page("Slow", "api"),
            alert("Slow", "api", "plain"),
            alert("Slow", "web", "plain"),
        ],
        1_000,
        INTERVAL,
    );
    let got = all_within(&mut f.sent, Duration::from_secs(11)).await;
    assert_eq!(
        summaries(&got),
        ["Down/api: i | ", "Slow/api: i | ", "Slow/web: plain | "]
    );
    quiet(&mut f.sent, Duration::from_secs(3000)).await;
}

#[tokio::test(start_paused = true)]
async fn the_builtin_inhibition_mutes_a_crash_looping_service_s_anomalies_until_switched_off() {
    let ops = webhook("ops", 10, 60, 3600);
    let mut f = setup(vec![ops.clone()], vec![]);
    // No [[inhibit]] at all: the built-in rule is on by default.
    load_inhibiting(&f, vec![ops.clone()], "");
    let builtin = |name: &str, service: &str, severity: &str| {
        let a = with_label(alert(name, service, "-"), "builtin", "true");
        with_label(a, "severity", severity)
    };
    f.notifier.observe(
        "tandem.builtin.crash",
        &[
            builtin("CrashLoop", "api", "page"),
            builtin("RepeatedOomKills", "db", "ticket"),
        ],
        1_000,
        INTERVAL,
    );
    f.notifier.observe(
        "tandem.builtin.anomalies",
        &[
            builtin("LatencyAnomaly", "api", "ticket"),
            builtin("ErrorRateAnomaly", "web", "ticket"),
            // A file's own rule of the same name is not built in: not muted.
            alert("LatencyAnomaly", "api", "mine"),
        ],
        1_000,
        INTERVAL,
    );
    f.notifier.observe(
        "tandem.builtin.regression",
        &[builtin("MemoryRegression", "db", "ticket")],
        1_000,
        INTERVAL,
    );
    let got = all_within(&mut f.sent, Duration::from_secs(11)).await;
    assert_eq!(
        summaries(&got),
        [
            "CrashLoop/api: - | ",
            "ErrorRateAnomaly/web: - | ",
            "LatencyAnomaly/api: mine | ",
            "RepeatedOomKills/db: - | ",
        ]
    );
    quiet(&mut f.sent, Duration::from_secs(40)).await;
    // `[system] builtin_inhibit = false`: the muted alerts are new at their groups' next
    // look (70 s).
    load_inhibiting(&f, vec![ops], "[system]\nbuiltin_inhibit = false\n");
    let got = all_within(&mut f.sent, Duration::from_secs(21)).await;
    assert_eq!(
        summaries(&got),
        ["LatencyAnomaly/api: -,mine | ", "MemoryRegression/db: - | "]
    );
}

#[tokio::test(start_paused = true)]
async fn alertmanager_receivers_get_inhibited_alerts_too() {
    let am = alertmanager("am");
    let mut f = setup(vec![am.clone()], vec![]);
    load_inhibiting(&f, vec![am], CRASH_MUTES_WARNINGS);
    let crash = alert("CrashLoop", "api", "-");
    let slow = with_label(alert("Slow", "api", "a"), "severity", "warning");
    f.notifier.observe("g", &[crash, slow], 10_000, INTERVAL);
    let (_, body, _) = next(&mut f.sent, Instant::now()).await;
    let mut names: Vec<&str> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["labels"]["alertname"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["CrashLoop", "Slow"]);
}
