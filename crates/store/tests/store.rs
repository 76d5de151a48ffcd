//! The store against real files: numbering, status transitions, crash recovery (with a
//! child process killed mid-apply), damaged and foreign files, and reads during writes.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};
use tandem_api::{Event, EventKind, Provenance, RevisionStatus};
use tandem_spec::units::Dur;
use tandem_spec::{RestartPolicy, ServerSettings, Service, Stop, System};
use tandem_store::{EventFilter, INTERRUPTED_REASON, Store, StoreError};

fn system(replicas: u32) -> System {
    let api = Service {
        run: "./api --port ${PORT}".into(),
        cwd: "/srv/shop".into(),
        env: BTreeMap::from([("RUST_LOG".into(), "info".into())]),
        secrets: Vec::new(),
        secret_fingerprints: BTreeMap::new(),
        port: Some(8080.into()),
        tls: None,
        health: None,
        depends_on: vec![],
        limits: Default::default(),
        replicas,
        stop: Stop {
            signal: "SIGTERM".into(),
            grace: Dur::from_secs(3),
        },
        restart: RestartPolicy::OnFailure,
        metrics: Some("/metrics".into()),
        release: None,
        protocol: Default::default(),
        slo: None,
        hooks: None,
        proxy: Default::default(),
    };
    System {
        name: "shop".into(),
        env: "dev".into(),
        server: ServerSettings::default(),
        service: BTreeMap::from([("api".into(), api)]),
        alert: vec![],
        rule_files: vec![],
        monitoring: Default::default(),
        receiver: Vec::new(),
        route: Vec::new(),
    }
}

fn provenance(message: &str) -> Provenance {
    Provenance {
        git_commit: Some("0123abcd".into()),
        git_dirty: true,
        author: "ada".into(),
        message: Some(message.into()),
        file: "/srv/shop/tandem.toml".into(),
    }
}

fn begin(store: &Store, env: &str) -> u64 {
    store
        .begin_revision(env, &system(1), "hash", &provenance("change"))
        .unwrap()
        .number
}

fn status(store: &Store, env: &str, number: u64) -> RevisionStatus {
    store.get(env, number).unwrap().unwrap().status
}

fn event(env: &str, time_ms: i64, kind: EventKind, service: Option<&str>, message: &str) -> Event {
    Event {
        time_ms,
        env: env.into(),
        kind,
        service: service.map(Into::into),
        instance: None,
        revision: Some(1),
        who: None,
        message: message.into(),
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn revisions_are_numbered_per_environment() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("tandem.db")).unwrap();
    assert_eq!(begin(&store, "dev"), 1);
    assert_eq!(begin(&store, "dev"), 2);
    assert_eq!(begin(&store, "prod"), 1);
    store.mark_failed("dev", 2, "health check failed").unwrap();
    assert_eq!(begin(&store, "dev"), 3, "a failed number is not reused");
}

#[test]
fn begin_revision_stores_the_whole_revision() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("tandem.db")).unwrap();
    let begun = store
        .begin_revision(
            "dev",
            &system(3),
            "sha256:abc",
            &provenance("three replicas"),
        )
        .unwrap();
    assert_eq!(begun.status, RevisionStatus::Applying);
    assert_eq!(begun.finished_ms, None);
    assert!(begun.created_ms > 0);
    assert_eq!(store.get("dev", 1).unwrap(), Some(begun.clone()));
    assert_eq!(store.get("dev", 2).unwrap(), None);
    assert_eq!(store.get("prod", 1).unwrap(), None);

    let no_provenance = Provenance {
        author: "bob".into(),
        file: "tandem.toml".into(),
        ..Provenance::default()
    };
    let second = store
        .begin_revision("dev", &system(1), "sha256:def", &no_provenance)
        .unwrap();
    assert_eq!(
        store.get("dev", 2).unwrap().unwrap().provenance,
        no_provenance
    );
    assert_eq!(store.get("dev", 2).unwrap(), Some(second));
}

#[test]
fn mark_live_supersedes_the_previous_live_revision() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("tandem.db")).unwrap();
    assert_eq!(store.live("dev").unwrap(), None);

    let first = begin(&store, "dev");
    store.mark_live("dev", first).unwrap();
    let live = store.live("dev").unwrap().unwrap();
    assert_eq!(live.number, first);
    assert!(live.finished_ms.is_some());

    let other_env = begin(&store, "prod");
    store.mark_live("prod", other_env).unwrap();

    let second = begin(&store, "dev");
    assert_eq!(
        store.live("dev").unwrap().unwrap().number,
        first,
        "still applying"
    );
    store.mark_live("dev", second).unwrap();
    assert_eq!(store.live("dev").unwrap().unwrap().number, second);
    assert_eq!(status(&store, "dev", first), RevisionStatus::Superseded);
    assert_eq!(status(&store, "prod", other_env), RevisionStatus::Live);

    store.mark_live("dev", second).unwrap();
    assert_eq!(
        status(&store, "dev", second),
        RevisionStatus::Live,
        "idempotent"
    );

    let error = store.mark_live("dev", first).unwrap_err();
    assert!(matches!(error, StoreError::NotApplying { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        "revision 1 of environment 'dev' is superseded, so it cannot become live; only a revision being applied can"
    );
    let error = store.mark_live("dev", 9).unwrap_err();
    assert!(
        matches!(error, StoreError::RevisionNotFound { number: 9, .. }),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("tandem history --env dev"),
        "{error}"
    );
}

#[test]
fn a_failed_apply_keeps_the_previous_revision_live() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("tandem.db")).unwrap();
    let first = begin(&store, "dev");
    store.mark_live("dev", first).unwrap();
    let second = begin(&store, "dev");
    store
        .mark_failed("dev", second, "instance api-1 never became healthy")
        .unwrap();

    assert_eq!(store.live("dev").unwrap().unwrap().number, first);
    let failed = store.get("dev", second).unwrap().unwrap();
    assert_eq!(failed.status, RevisionStatus::Failed);
    assert_eq!(
        failed.reason.as_deref(),
        Some("instance api-1 never became healthy")
    );
    assert!(failed.finished_ms.is_some());

    store.mark_failed("dev", second, "another reason").unwrap();
    let failed = store.get("dev", second).unwrap().unwrap();
    assert_eq!(
        failed.reason.as_deref(),
        Some("instance api-1 never became healthy")
    );
    assert!(matches!(
        store.mark_live("dev", second),
        Err(StoreError::NotApplying {
            status: RevisionStatus::Failed,
            ..
        })
    ));
    assert!(matches!(
        store.mark_failed("dev", first, "late"),
        Err(StoreError::NotApplying {
            status: RevisionStatus::Live,
            ..
        })
    ));
}

#[test]
fn list_is_newest_first_and_limited() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("tandem.db")).unwrap();
    for _ in 0..5 {
        let number = begin(&store, "dev");
        store.mark_live("dev", number).unwrap();
    }
    begin(&store, "prod");
    let listed = store.list("dev", 3).unwrap();
    let numbers: Vec<u64> = listed.iter().map(|r| r.number).collect();
    assert_eq!(numbers, [5, 4, 3]);
    assert_eq!(listed[0].status, RevisionStatus::Live);
    assert_eq!(listed[1].status, RevisionStatus::Superseded);
    assert_eq!(listed[0].provenance, provenance("change"));
    let whole = store.get("dev", 5).unwrap().unwrap();
    assert_eq!(listed[0], (&whole).into());
    assert_eq!(store.list("dev", 100).unwrap().len(), 5);
    assert!(store.list("staging", 10).unwrap().is_empty());
}

#[test]
fn recover_interrupted_fails_what_was_applying() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("tandem.db")).unwrap();
    let first = begin(&store, "dev");
    store.mark_live("dev", first).unwrap();
    let second = begin(&store, "dev");
    let third = begin(&store, "dev");
    let other_env = begin(&store, "prod");

    assert_eq!(store.recover_interrupted("dev").unwrap(), [second, third]);
    for number in [second, third] {
        let revision = store.get("dev", number).unwrap().unwrap();
        assert_eq!(revision.status, RevisionStatus::Failed);
        assert_eq!(revision.reason.as_deref(), Some(INTERRUPTED_REASON));
    }
    assert_eq!(store.live("dev").unwrap().unwrap().number, first);
    assert_eq!(status(&store, "prod", other_env), RevisionStatus::Applying);
    assert!(store.recover_interrupted("dev").unwrap().is_empty());
}

#[test]
fn reopening_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/data/tandem.db");
    let (live, failed) = {
        let store = Store::open(&path).unwrap();
        let number = begin(&store, "dev");
        store.mark_live("dev", number).unwrap();
        let failing = begin(&store, "dev");
        store.mark_failed("dev", failing, "bad").unwrap();
        store
            .add_event(&event("dev", 10, EventKind::Note, None, "hello"))
            .unwrap();
        (
            store.get("dev", number).unwrap().unwrap(),
            store.get("dev", failing).unwrap().unwrap(),
        )
    };
    let store = Store::open(&path).unwrap();
    assert_eq!(store.live("dev").unwrap(), Some(live));
    assert_eq!(store.get("dev", 2).unwrap(), Some(failed));
    assert_eq!(store.events(&EventFilter::new("dev")).unwrap().len(), 1);
    assert_eq!(begin(&store, "dev"), 3);
}

#[cfg(unix)]
#[test]
fn the_database_is_private_to_its_owner() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data/tandem.db");
    let store = Store::open(&path).unwrap();
    begin(&store, "dev");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(&dir.path().join("data/tandem.db-wal")), 0o600);
    assert_eq!(mode(&dir.path().join("data")), 0o700);
    drop(store);

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    Store::open(&path).unwrap();
    assert_eq!(mode(&path), 0o600, "an existing file is narrowed");
}

#[test]
fn a_damaged_file_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tandem.db");
    std::fs::write(&path, vec![0x5a; 64 * 1024]).unwrap();
    let error = Store::open(&path).unwrap_err();
    assert!(matches!(error, StoreError::Corrupt { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("damaged"), "{message}");
    assert!(message.contains("move it away"), "{message}");
}

#[test]
fn another_programs_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tandem.db");
    let other = rusqlite::Connection::open(&path).unwrap();
    other
        .execute_batch("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT);")
        .unwrap();
    drop(other);
    let error = Store::open(&path).unwrap_err();
    assert!(matches!(error, StoreError::NotTandem { .. }), "{error:?}");
    assert!(
        error.to_string().contains("belongs to another program"),
        "{error}"
    );
}

#[test]
fn a_newer_schema_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tandem.db");
    drop(Store::open(&path).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);

    let error = Store::open(&path).unwrap_err();
    assert!(
        matches!(
            error,
            StoreError::NewerSchema {
                found: 99,
                supported: 2,
                ..
            }
        ),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains("written by a newer tandem"), "{message}");
    assert!(message.contains("upgrade tandem"), "{message}");
}

#[test]
fn events_filter_and_come_back_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("tandem.db")).unwrap();
    let added = [
        event("dev", 100, EventKind::ApplyStarted, None, "apply 1"),
        event(
            "dev",
            200,
            EventKind::InstanceStarted,
            Some("api"),
            "api-1 started",
        ),
        event(
            "dev",
            200,
            EventKind::InstanceStarted,
            Some("db"),
            "db-1 started",
        ),
        event(
            "dev",
            300,
            EventKind::InstanceCrashed,
            Some("api"),
            "api-1 crashed",
        ),
        event("prod", 300, EventKind::Note, None, "other env"),
        event(
            "dev",
            400,
            EventKind::RevisionApplied,
            None,
            "revision 1 live",
        ),
    ];
    for e in &added {
        store.add_event(e).unwrap();
    }
    let messages = |filter: &EventFilter| -> Vec<String> {
        store
            .events(filter)
            .unwrap()
            .into_iter()
            .map(|e| e.message)
            .collect()
    };

    let all = store.events(&EventFilter::new("dev")).unwrap();
    assert_eq!(all.len(), 5);
    assert_eq!(all[1], added[1], "round trip");
    assert_eq!(
        messages(&EventFilter::new("dev")),
        [
            "apply 1",
            "api-1 started",
            "db-1 started",
            "api-1 crashed",
            "revision 1 live"
        ]
    );
    assert_eq!(
        messages(&EventFilter {
            limit: 2,
            ..EventFilter::new("dev")
        }),
        ["api-1 crashed", "revision 1 live"],
        "the newest within the limit, oldest first"
    );
    assert_eq!(
        messages(&EventFilter {
            since_ms: Some(200),
            ..EventFilter::new("dev")
        }),
        [
            "api-1 started",
            "db-1 started",
            "api-1 crashed",
            "revision 1 live"
        ]
    );
    assert_eq!(
        messages(&EventFilter {
            service: Some("api".into()),
            ..EventFilter::new("dev")
        }),
        ["api-1 started", "api-1 crashed"]
    );
    assert_eq!(
        messages(&EventFilter {
            kinds: vec![EventKind::InstanceCrashed, EventKind::RevisionApplied],
            ..EventFilter::new("dev")
        }),
        ["api-1 crashed", "revision 1 live"]
    );
    assert_eq!(messages(&EventFilter::new("prod")), ["other env"]);
}

#[test]
fn readers_see_committed_state_while_a_writer_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tandem.db");
    let store = Arc::new(Store::open(&path).unwrap());
    let second_handle = Arc::new(Store::open(&path).unwrap());
    let done = Arc::new(AtomicBool::new(false));

    let readers: Vec<_> = (0..4)
        .map(|i| {
            let store = if i % 2 == 0 {
                store.clone()
            } else {
                second_handle.clone()
            };
            let done = done.clone();
            thread::spawn(move || {
                let mut reads = 0u32;
                let mut last_seen = 0;
                while !done.load(Ordering::Acquire) || reads == 0 {
                    let live = store.live("dev").unwrap().map_or(0, |r| r.number);
                    assert!(
                        live >= last_seen,
                        "live went back from {last_seen} to {live}"
                    );
                    last_seen = live;
                    let listed = store.list("dev", 1000).unwrap();
                    let lives = listed
                        .iter()
                        .filter(|r| r.status == RevisionStatus::Live)
                        .count();
                    assert!(lives <= 1, "{lives} live revisions at once");
                    reads += 1;
                }
                reads
            })
        })
        .collect();

    for _ in 0..40 {
        let number = begin(&store, "dev");
        store
            .add_event(&event("dev", 1, EventKind::ApplyStarted, None, "apply"))
            .unwrap();
        store.mark_live("dev", number).unwrap();
    }
    done.store(true, Ordering::Release);
    for reader in readers {
        assert!(reader.join().unwrap() > 0);
    }
    assert_eq!(second_handle.live("dev").unwrap().unwrap().number, 40);
}

/// Set in the child process of [`a_server_killed_mid_apply_leaves_a_consistent_database`].
const CRASH_CHILD_DB: &str = "TANDEM_STORE_TEST_CRASH_CHILD_DB";

#[test]
fn a_server_killed_mid_apply_leaves_a_consistent_database() {
    if let Some(path) = std::env::var_os(CRASH_CHILD_DB) {
        // The child: begin an apply, then hang until the parent kills it.
        let store = Store::open(Path::new(&path)).unwrap();
        begin(&store, "dev");
        loop {
            thread::park();
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tandem.db");
    let store = Store::open(&path).unwrap();
    let first = begin(&store, "dev");
    store.mark_live("dev", first).unwrap();

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_server_killed_mid_apply_leaves_a_consistent_database",
            "--nocapture",
        ])
        .env(CRASH_CHILD_DB, &path)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the child to begin revision 2", || {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the child exited early: {status}");
        }
        store.get("dev", 2).unwrap().is_some()
    });
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    drop(store);

    let store = Store::open(&path).unwrap();
    assert_eq!(status(&store, "dev", 2), RevisionStatus::Applying);
    assert_eq!(store.recover_interrupted("dev").unwrap(), [2]);
    let interrupted = store.get("dev", 2).unwrap().unwrap();
    assert_eq!(interrupted.status, RevisionStatus::Failed);
    assert_eq!(interrupted.reason.as_deref(), Some(INTERRUPTED_REASON));
    assert_eq!(store.live("dev").unwrap().unwrap().number, first);
    assert_eq!(begin(&store, "dev"), 3);
}

#[test]
fn a_rollback_points_at_what_it_restores_and_marks_what_it_left() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state.db")).unwrap();
    let first = begin(&store, "dev");
    store.mark_live("dev", first).unwrap();
    let second = store
        .begin_revision("dev", &system(2), "h2", &provenance("v2"))
        .unwrap()
        .number;
    store.mark_live("dev", second).unwrap();
    let target = store.get("dev", first).unwrap().unwrap();
    let rollback = store
        .begin_revision_of(
            "dev",
            &target.system,
            &target.hash,
            &provenance("rollback"),
            Some(first),
        )
        .unwrap();
    assert_eq!(rollback.rollback_of, Some(first));
    store.mark_live("dev", rollback.number).unwrap();
    store
        .mark_rolled_back("dev", second, "rolled back to revision 1")
        .unwrap();
    assert_eq!(status(&store, "dev", second), RevisionStatus::RolledBack);
    assert_eq!(store.live("dev").unwrap().unwrap().rollback_of, Some(first));
    let found = store
        .rolled_back_with_hash("dev", &store.get("dev", second).unwrap().unwrap().hash)
        .unwrap();
    assert_eq!(found.map(|r| r.number), Some(second));
    // The same content live again later (a forced deploy) lifts the mark.
    let again = store
        .begin_revision("dev", &system(2), "h2", &provenance("v2 again"))
        .unwrap()
        .number;
    store.mark_live("dev", again).unwrap();
    assert_eq!(store.rolled_back_with_hash("dev", "h2").unwrap(), None);
    assert!(store.mark_rolled_back("dev", 99, "no such").is_err());
}

#[test]
fn deployments_keep_their_steps_outcome_and_timings() {
    use tandem_api::{DeployStep, DeploymentKind, DeploymentOutcome, GateResult};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let store = Store::open(&path).unwrap();
    let id = store
        .begin_deployment("dev", DeploymentKind::Deploy, 2, Some(1), "ada")
        .unwrap();
    for pct in [10u8, 50] {
        store
            .add_deploy_step(
                id,
                &DeployStep {
                    time_ms: 1,
                    service: Some("api".into()),
                    message: format!("{pct}% to r2"),
                    new_traffic_pct: Some(pct),
                    gates: vec![GateResult {
                        check: "max_error_rate".into(),
                        measured: "0.0%".into(),
                        allowed: "1.0%".into(),
                        passed: true,
                    }],
                },
            )
            .unwrap();
    }
    let other = store
        .begin_deployment("dev", DeploymentKind::Rollback, 3, Some(2), "ada")
        .unwrap();
    store
        .finish_deployment(id, DeploymentOutcome::RolledBack, Some("p99 too high"))
        .unwrap();
    // Finishing twice keeps the first outcome.
    store
        .finish_deployment(id, DeploymentOutcome::Succeeded, None)
        .unwrap();
    drop(store);

    let store = Store::open(&path).unwrap();
    let d = store.deployment(id).unwrap().unwrap();
    assert_eq!(d.steps.len(), 2);
    assert_eq!(d.steps[1].new_traffic_pct, Some(50));
    assert_eq!(d.outcome, Some(DeploymentOutcome::RolledBack));
    assert_eq!(d.reason.as_deref(), Some("p99 too high"));
    assert!(d.finished_ms.is_some());
    assert_eq!(store.recover_interrupted_deployments("dev").unwrap(), 1);
    let list = store.deployments("dev", 10).unwrap();
    assert_eq!(
        list.iter().map(|d| d.id).collect::<Vec<_>>(),
        vec![other, id]
    );
    assert_eq!(list[0].outcome, Some(DeploymentOutcome::Failed));
}

#[test]
fn a_version_1_database_is_migrated_with_its_revisions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE revisions (
                env TEXT NOT NULL, number INTEGER NOT NULL CHECK (number > 0), hash TEXT NOT NULL,
                status TEXT NOT NULL CHECK (status IN ('applying', 'live', 'superseded', 'failed')),
                reason TEXT, git_commit TEXT, git_dirty INTEGER NOT NULL, author TEXT NOT NULL,
                message TEXT, file TEXT NOT NULL, created_ms INTEGER NOT NULL, finished_ms INTEGER,
                system_json TEXT NOT NULL, PRIMARY KEY (env, number)) WITHOUT ROWID;
             CREATE UNIQUE INDEX revisions_one_live_per_env ON revisions (env) WHERE status = 'live';
             CREATE TABLE events (id INTEGER PRIMARY KEY, time_ms INTEGER NOT NULL, env TEXT NOT NULL,
                kind TEXT NOT NULL, service TEXT, instance TEXT, revision INTEGER, who TEXT,
                message TEXT NOT NULL);
             PRAGMA application_id = 1953391725;
             PRAGMA user_version = 1;",
        )
        .unwrap();
        let system_json = serde_json::to_string(&system(2)).unwrap();
        conn.execute(
            "INSERT INTO revisions VALUES ('dev', 1, 'h1', 'live', NULL, NULL, 0, 'ada', 'first', 'tandem.toml', 5, 6, ?1)",
            [system_json],
        )
        .unwrap();
    }
    let store = Store::open(&path).unwrap();
    let live = store.live("dev").unwrap().unwrap();
    assert_eq!(
        (live.number, live.hash.as_str(), live.rollback_of),
        (1, "h1", None)
    );
    assert_eq!(live.system.service["api"].replicas, 2);
    let next = begin(&store, "dev");
    assert_eq!(next, 2);
}
