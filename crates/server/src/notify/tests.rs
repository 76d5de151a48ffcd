//! Grouping, timing, routing and delivery of notifications, on tokio's paused clock: the
//! receivers' tasks run for real, their sends go to a channel (or fail on demand), and
//! every wait is virtual time.

use super::*;
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
    }
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
    }
}

fn system(receivers: Vec<Receiver>, routes: Vec<Route>) -> System {
    let mut system = tandem_spec::resolve("t.toml", "", std::path::Path::new("/"), "dev").unwrap();
    system.receiver = receivers;
    system.route = routes;
    system
}

fn setup(receivers: Vec<Receiver>, routes: Vec<Route>) -> Fixture {
    let (tx, sent) = mpsc::unbounded_channel();
    let fail = Arc::new(Mutex::new(BTreeSet::new()));
    let events = Arc::new(Events::default());
    let notifier = Notifier::with(
        "dev",
        events.clone(),
        Policy {
            min_backoff: Duration::from_millis(100),
            ..Policy::default()
        },
        Transport::Record {
            sent: tx,
            fail: fail.clone(),
        },
    );
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
        matchers: [("service".to_string(), service.to_string())].into(),
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
