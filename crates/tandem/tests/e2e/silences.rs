//! Silences through the command line: `tandem alerts silence` creates one and prints its id,
//! `tandem alerts silences` lists it (text and JSON) with the firing alert it mutes, `tandem
//! alerts` shows that alert as muted, `tandem alerts unsilence` expires it, the timeline has
//! both, and bad input fails with a message and a hint.

use super::support::*;
use tandem_api::{Event, EventKind, SilenceState, SilenceStatus};

/// One service and an alert that fires at the first evaluation, evaluated every second.
fn project() -> Project {
    let port = free_port();
    Project::new(&format!(
        r#"[monitoring]
rule_interval = "1s"

[service.api]
run = "python3 app.py"
port = {port}
health = {{ http = "/healthz", interval = "200ms", grace = "20s", failures = 2 }}
stop = {{ grace = "2s" }}

[[alert]]
name = "ApiDown"
expr = 'vector(1)'
labels = {{ service = "api", severity = "page" }}
annotations = {{ summary = "api is down (test)" }}
"#
    ))
}

fn silences(p: &Project, all: bool) -> Vec<SilenceStatus> {
    let mut args = vec!["alerts", "silences", "--output", "json"];
    if all {
        args.push("--all");
    }
    let out = p.run(&args).ok();
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

fn timeline(p: &Project) -> Vec<Event> {
    serde_json::from_str(&p.run(&["timeline", "--output", "json"]).ok().stdout).unwrap()
}

#[test]
fn a_silence_is_created_listed_shown_on_its_alert_and_expired_through_the_cli() {
    let p = project();
    p.up().ok();

    let out = p
        .run(&[
            "alerts",
            "silence",
            "alertname=ApiDown",
            r#"service=~"api|web""#,
            "--for",
            "2h",
            "--comment",
            "db maintenance",
            "--author",
            "Ada",
        ])
        .ok();
    let id = out.stdout.trim().to_string();
    assert_eq!(id.len(), 36, "the id alone on stdout: {}", out.all());
    assert!(
        out.stderr
            .contains(r#"alerts matching {alertname="ApiDown", service=~"api|web"} are muted"#)
            && out.stderr.contains("(for 2h)"),
        "{}",
        out.stderr
    );

    // Listed as JSON, active for 2 hours, and muting the alert once it fires.
    let listed = eventually("the silence to mute the firing alert", || {
        let list = silences(&p, false);
        (list.len() == 1 && list[0].mutes == 1).then_some(list)
    });
    let s = &listed[0];
    assert_eq!(s.silence.id, id);
    assert_eq!(s.state, SilenceState::Active);
    assert_eq!(
        s.silence.ends_at_ms - s.silence.starts_at_ms,
        2 * 3600 * 1000
    );
    assert_eq!(
        (s.silence.created_by.as_str(), s.silence.comment.as_str()),
        ("Ada", "db maintenance")
    );
    let matchers: Vec<String> = s.silence.matchers.iter().map(|m| m.to_string()).collect();
    assert_eq!(
        matchers,
        [r#"alertname="ApiDown""#, r#"service=~"api|web""#]
    );

    let text = p.run(&["alerts", "silences"]).ok().stdout;
    assert!(
        text.contains(&id)
            && text.contains("active")
            && text.contains(r#"{alertname="ApiDown", service=~"api|web"}"#)
            && text.contains("db maintenance"),
        "{text}"
    );
    let alerts = p.run(&["alerts"]).ok().stdout;
    assert!(
        alerts.contains(&format!("firing, muted by {}", &id[..8])),
        "{alerts}"
    );

    // Expired by the start of its id: gone from the list, still there with --all.
    let out = p
        .run(&["alerts", "unsilence", &id[..8], "--author", "Grace"])
        .ok();
    assert!(
        out.stdout.contains(&format!("silence {id}")),
        "{}",
        out.all()
    );
    assert!(silences(&p, false).is_empty());
    let all = silences(&p, true);
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].state, SilenceState::Expired);
    let alerts = p.run(&["alerts"]).ok().stdout;
    assert!(!alerts.contains("muted"), "{alerts}");

    let events = timeline(&p);
    let by = |kind: EventKind| {
        events
            .iter()
            .find(|e| e.kind == kind && e.message.contains(&id))
            .unwrap_or_else(|| panic!("no {kind:?} for {id} in {events:#?}"))
    };
    assert_eq!(by(EventKind::SilenceCreated).who.as_deref(), Some("Ada"));
    assert_eq!(by(EventKind::SilenceExpired).who.as_deref(), Some("Grace"));

    // Bad input: a non-zero exit, what is wrong, and what to do.
    let bad = p.run(&[
        "alerts",
        "silence",
        r#"service=~"(api""#,
        "--for",
        "2h",
        "-c",
        "x",
    ]);
    assert_eq!(bad.code, 1, "{}", bad.all());
    assert!(
        bad.stderr
            .contains(r#"error: invalid regex in matcher 'service=~"(api"'"#)
            && bad.stderr.contains("hint:"),
        "{}",
        bad.stderr
    );
    let bad = p.run(&[
        "alerts",
        "silence",
        "alertname=X",
        "--for",
        "soon",
        "-c",
        "x",
    ]);
    assert_eq!(bad.code, 1);
    assert!(
        bad.stderr.contains("--for 'soon' is not a duration"),
        "{}",
        bad.stderr
    );
    let bad = p.run(&["alerts", "unsilence", "nosuchid"]);
    assert_eq!(bad.code, 1);
    assert!(
        bad.stderr.contains("no silence has the id 'nosuchid'"),
        "{}",
        bad.stderr
    );
    assert_eq!(
        silences(&p, true).len(),
        1,
        "nothing was created by bad input"
    );
}
