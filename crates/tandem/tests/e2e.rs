//! End-to-end tests of the `tandem` binary: real servers, shims, service processes, sockets
//! and cgroups, driven through the command line the way a user does.

#![allow(unreachable_pub)]
mod e2e {
    pub mod down;
    pub mod exec;
    pub mod hooks;
    pub mod host;
    pub mod ports;
    pub mod proxy_limits;
    pub mod public;
    pub mod secrets;
    pub mod silences;
    pub mod support;
    pub mod warm;
}

use e2e::support::Seen;
use e2e::support::*;
use std::time::{Duration, Instant};
use tandem_api::{EventKind, InstanceState, RevisionStatus};

fn app_service(name: &str, port: u16, extra: &str) -> String {
    // A generous grace: a loaded machine may take seconds to start python.
    let health = if extra.contains("health =") {
        ""
    } else {
        "health = { http = \"/healthz\", interval = \"200ms\", grace = \"20s\", failures = 2 }\n"
    };
    let stop = if extra.contains("stop =") {
        ""
    } else {
        "stop = { grace = \"2s\" }\n"
    };
    format!("[service.{name}]\nrun = \"python3 app.py\"\nport = {port}\n{health}{stop}{extra}\n")
}

#[test]
fn up_starts_in_dependency_order_serves_ports_and_injects_addresses() {
    let (db, api, web) = (free_port(), free_port(), free_port());
    let p = Project::new(&format!(
        "{}{}{}",
        app_service("db", db, ""),
        app_service("api", api, "depends_on = [\"db\"]\nreplicas = 2"),
        app_service(
            "web",
            web,
            "depends_on = [\"api\"]\nenv = { MESSAGE = \"from web\" }"
        ),
    ));
    let out = p.up().ok();
    assert!(
        out.stdout.contains("revision 1 of dev is live"),
        "{}",
        out.all()
    );

    // The declared port is served by tandem and reaches an instance.
    let (status, body) = http_get(web, "/hello").unwrap();
    assert_eq!((status, body.as_str()), (200, "from web\n"));

    // Dependents reach a dependency through their own edge listener (not its public
    // port), so every call is attributed to its caller.
    let (_, env) = http_get(api, "/env").unwrap();
    let env: serde_json::Value = serde_json::from_str(&env).unwrap();
    let db_url = env["DB_URL"].as_str().unwrap().to_string();
    let edge: u16 = db_url.rsplit(':').next().unwrap().parse().unwrap();
    assert!(
        db_url.starts_with("http://127.0.0.1:") && edge != db,
        "{db_url}"
    );
    assert_eq!(env["DB_ADDR"], format!("127.0.0.1:{edge}"));
    assert_eq!(
        http_get(edge, "/hello").unwrap(),
        (200, "hello\n".to_string())
    );
    assert_ne!(env["PORT"], api.to_string(), "instances get their own PORT");

    // Each service started only after its dependencies were healthy.
    let events: Vec<tandem_api::Event> =
        serde_json::from_str(&p.run(&["timeline", "--output", "json"]).ok().stdout).unwrap();
    let first = |kind: EventKind, service: &str| {
        events
            .iter()
            .position(|e| e.kind == kind && e.service.as_deref() == Some(service))
            .unwrap_or_else(|| panic!("no {kind:?} for {service} in {events:#?}"))
    };
    let last_healthy = |service: &str| {
        events
            .iter()
            .rposition(|e| {
                e.kind == EventKind::InstanceHealthy && e.service.as_deref() == Some(service)
            })
            .unwrap()
    };
    assert!(first(EventKind::InstanceHealthy, "db") < first(EventKind::InstanceStarted, "api"));
    assert!(last_healthy("api") < first(EventKind::InstanceStarted, "web"));

    let s = p.status();
    assert_eq!(s.live_revision, Some(1));
    assert_eq!(p.instances("api").len(), 2);
    assert!(
        s.services
            .iter()
            .flat_map(|s| &s.instances)
            .all(|i| i.state == InstanceState::Healthy)
    );
}

#[test]
fn unchanged_up_changes_nothing_and_a_change_replaces_only_that_service() {
    let (a, b) = (free_port(), free_port());
    let p = Project::new(&format!(
        "{}{}",
        app_service("a", a, ""),
        app_service("b", b, "")
    ));
    p.up().ok();
    let pid_a = p.instances("a")[0].pid.unwrap();
    let pid_b = p.instances("b")[0].pid.unwrap();

    let again = p.up().ok();
    assert!(again.all().contains("no changes"), "{}", again.all());
    assert_eq!(p.instances("a")[0].pid, Some(pid_a));
    assert_eq!(p.history().len(), 1);

    p.set_system(&format!(
        "{}{}",
        app_service("a", a, ""),
        app_service("b", b, "env = { MESSAGE = \"changed\" }")
    ));
    let plan = p.run(&["plan"]);
    assert_eq!(plan.code, 2, "{}", plan.all());
    assert!(
        plan.stdout
            .contains("+ service.b.env = {\"MESSAGE\":\"changed\"}"),
        "{}",
        plan.stdout
    );
    p.up().ok();
    assert_eq!(p.instances("a")[0].pid, Some(pid_a), "a is untouched");
    let b_now = eventually("the old b to stop", || {
        let b = p.instances("b");
        (b.len() == 1).then_some(b)
    });
    assert_ne!(b_now[0].pid, Some(pid_b), "b was replaced");
    assert!(
        wait_gone(pid_b, Duration::from_secs(10)),
        "the old b stopped"
    );
    assert_eq!(http_get(b, "/hello").unwrap().1, "changed\n");

    let history = p.history();
    assert_eq!(history.len(), 2);
    assert_eq!(history[0].status, RevisionStatus::Live);
    assert_eq!(history[1].status, RevisionStatus::Superseded);
    let diff = p.run(&["diff", "1", "2"]).ok();
    assert!(diff.stdout.contains("service.b.env"), "{}", diff.stdout);
    assert_eq!(p.run(&["plan"]).code, 0);
}

#[test]
fn a_crashing_service_restarts_with_backoff_until_a_crash_loop() {
    let p = Project::new("[service.crashy]\nrun = \"sh -c 'sleep 0.3; exit 3'\"\n");
    p.up().ok();
    let s = p.wait_status("a crash loop", |s| {
        s.services[0]
            .instances
            .iter()
            .any(|i| i.state == InstanceState::CrashLoop)
    });
    let i = &s.services[0].instances[0];
    assert!(i.restarts >= 4, "{i:?}");
    let reason = i.reason.clone().unwrap();
    assert!(
        reason.contains("crashed 5 times") && reason.contains("exited with code 3"),
        "{reason}"
    );
    let text = p.run(&["status"]).ok().stdout;
    assert!(
        text.contains("crash-loop") && text.contains("tandem restart crashy"),
        "{text}"
    );

    // `restart` clears the crash loop.
    p.run(&["restart", "crashy"]).ok();
    p.wait_status("a restart after the crash loop", |s| {
        s.services[0]
            .instances
            .iter()
            .any(|i| i.state != InstanceState::CrashLoop)
    });
}

#[test]
fn an_oom_kill_under_the_memory_limit_is_reported_as_such() {
    let port = free_port();
    let p = Project::new(&app_service(
        "hog",
        port,
        "limits = { memory = \"50MiB\" }\nrestart = \"never\"\nenv = { ALLOC_MB = \"200\", ALLOC_AFTER = \"0.5\" }",
    ));
    p.up().ok();
    if !limits_enforced(&p) {
        eprintln!("skipped: cgroup limits are not enforced on this machine");
        return;
    }
    let s = p.wait_status("the OOM kill", |s| {
        s.services[0]
            .instances
            .iter()
            .any(|i| i.state == InstanceState::Exited)
    });
    let exit = s.services[0].instances[0].last_exit.clone().unwrap();
    assert!(exit.oom_killed, "{exit:?}");
    assert!(
        exit.description.contains("OOM killer") && exit.description.contains("50MiB"),
        "{exit:?}"
    );
    let events = p.run(&["timeline"]).ok().stdout;
    assert!(events.contains("instance-oom-killed"), "{events}");
}

#[test]
fn a_health_check_that_never_passes_fails_the_apply_and_the_previous_state_keeps_running() {
    let port = free_port();
    let p = Project::new(&app_service("web", port, ""));
    p.up().ok();
    let before = p.instances("web")[0].clone();

    p.set_system(&app_service(
        "web",
        port,
        "env = { HEALTH_STATUS = \"503\" }",
    ));
    let failed = p.up();
    assert_eq!(failed.code, 1, "{}", failed.all());
    let text = failed.all();
    assert!(
        text.contains("service 'web'") && text.contains("503"),
        "{text}"
    );

    let after = p.instances("web");
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0].pid, before.pid, "the previous instance still runs");
    assert_eq!(after[0].state, InstanceState::Healthy);
    assert_eq!(http_get(port, "/healthz").unwrap().0, 200);
    let history = p.history();
    assert_eq!(history[0].status, RevisionStatus::Failed);
    assert!(history[0].reason.as_deref().unwrap_or("").contains("503"));
    assert_eq!(history[1].status, RevisionStatus::Live);
    assert_eq!(p.status().live_revision, Some(1));
}

#[test]
fn a_missing_program_fails_the_first_apply_and_leaves_nothing_running() {
    let port = free_port();
    let p = Project::new(&format!(
        "{}[service.broken]\nrun = \"no-such-program-tandem-e2e --flag\"\ndepends_on = [\"ok\"]\n",
        app_service("ok", port, "")
    ));
    let out = p.up();
    assert_eq!(out.code, 1, "{}", out.all());
    let text = out.all();
    assert!(
        text.contains("service 'broken'") && text.contains("no-such-program-tandem-e2e"),
        "{text}"
    );
    // The server that this `up` started is gone, and so is the instance of `ok`.
    let data = p.data_dir();
    eventually("the server to exit", || {
        (!data.join("server.sock").exists()).then_some(())
    });
    assert!(
        p.recorded_pids().is_empty(),
        "instance folders are left: {:?}",
        p.recorded_pids()
    );
    assert!(http_get(port, "/healthz").is_err(), "the port is closed");
}

#[test]
fn a_port_held_by_another_program_is_named_in_the_error() {
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = squatter.local_addr().unwrap().port();
    let p = Project::new(&app_service("web", port, ""));
    let out = p.up();
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        out.all().contains(&format!(
            "port {port} of service 'web' is already in use by another program"
        )),
        "{}",
        out.all()
    );
}

#[test]
fn down_stops_gracefully_then_forcibly_and_leaves_no_process() {
    let (polite, stubborn) = (free_port(), free_port());
    let p = Project::new(&format!(
        "{}{}[service.forks]\nrun = \"sh -c 'sleep 300 & sleep 300'\"\n",
        app_service("polite", polite, "env = { TERM_MARKER = \"polite.term\" }"),
        app_service(
            "stubborn",
            stubborn,
            "env = { IGNORE_TERM = \"1\" }\nstop = { grace = \"1s\" }"
        ),
    ));
    p.up().ok();
    let pids = p.recorded_pids();
    assert_eq!(pids.len(), 6, "three shims and three services");
    let server = p.server_pid().unwrap();
    let started = Instant::now();
    p.run(&["down"]).ok();
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "the stubborn service got its grace"
    );
    assert!(
        p.path().join("polite.term").exists(),
        "the polite service saw SIGTERM"
    );
    for pid in pids {
        assert!(
            wait_gone(pid, Duration::from_secs(5)),
            "pid {pid} is still running"
        );
    }
    assert!(wait_gone(server, Duration::from_secs(5)));
    let again = p.run(&["down"]).ok();
    assert!(again.stdout.contains("nothing to stop"));
}

#[test]
fn a_server_killed_with_sigkill_is_replaced_without_restarting_services() {
    let port = free_port();
    let p = Project::new(&format!(
        "{}[service.quiet]\nrun = \"sh -c 'echo started; exec sleep 300'\"\n",
        app_service("web", port, "")
    ));
    p.up().ok();
    let web = p.instances("web")[0].clone();
    let quiet = p.instances("quiet")[0].clone();
    let server = p.server_pid().unwrap();
    kill(server, libc::SIGKILL);
    assert!(wait_gone(server, Duration::from_secs(5)));
    assert!(
        alive(web.pid.unwrap()) && alive(quiet.pid.unwrap()),
        "services outlive the server"
    );

    // While no server runs, one service dies; the next server must notice.
    kill(quiet.pid.unwrap(), libc::SIGKILL);
    assert!(wait_gone(quiet.pid.unwrap(), Duration::from_secs(5)));

    p.up().ok();
    let web_now = p.instances("web")[0].clone();
    assert_eq!(web_now.pid, web.pid, "re-attached, not restarted");
    assert_eq!(web_now.restarts, 0);
    let quiet_now = p.wait_status("quiet to be restarted", |s| {
        s.services.iter().any(|s| {
            s.name == "quiet"
                && s.instances
                    .iter()
                    .any(|i| i.restarts == 1 && i.state == InstanceState::Healthy)
        })
    });
    let q = quiet_now
        .services
        .iter()
        .find(|s| s.name == "quiet")
        .unwrap()
        .instances[0]
        .clone();
    assert!(q.last_exit.unwrap().description.contains("SIGKILL"));

    // Exits after re-attach are seen too.
    kill(web.pid.unwrap(), libc::SIGKILL);
    p.wait_status("web restarted after re-attach", |s| {
        s.services.iter().any(|s| {
            s.name == "web"
                && s.instances
                    .iter()
                    .any(|i| i.restarts == 1 && i.state == InstanceState::Healthy)
        })
    });
    assert_eq!(http_get(port, "/healthz").unwrap().0, 200);
    let timeline = p.run(&["timeline"]).ok().stdout;
    assert!(timeline.contains("instance-reattached"), "{timeline}");
}

#[test]
fn restart_never_keeps_an_exited_service_stopped_until_tandem_restart() {
    let p = Project::new("[service.once]\nrun = \"sh -c 'echo ran once'\"\nrestart = \"never\"\n");
    p.up().ok();
    p.wait_status("the exit", |s| {
        s.services[0]
            .instances
            .iter()
            .any(|i| i.state == InstanceState::Exited)
    });
    p.up().ok();
    let i = p.instances("once")[0].clone();
    assert_eq!(
        (i.state, i.restarts),
        (InstanceState::Exited, 0),
        "up does not restart it"
    );
    p.run(&["restart", "once"]).ok();
    p.wait_status("the second run", |s| {
        s.services[0]
            .instances
            .iter()
            .any(|i| i.restarts == 1 && i.state == InstanceState::Exited)
    });
    let logs = p.run(&["logs", "once"]).ok().stdout;
    assert_eq!(logs.matches("ran once").count(), 2, "{logs}");
}

#[test]
fn a_server_killed_mid_apply_leaves_the_store_consistent() {
    let port = free_port();
    let slow = free_port();
    let p = Project::new(&app_service("web", port, ""));
    p.up().ok();
    let first = app_service("web", port, "");
    p.set_system(&format!(
        "{first}{}",
        app_service("slow", slow, "env = { START_DELAY = \"60\" }")
    ));
    let mut applying = p
        .command(&["up", "-d"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    eventually("revision 2 to be applying", || {
        p.history()
            .iter()
            .any(|r| r.number == 2 && r.status == RevisionStatus::Applying)
            .then_some(())
    });
    let slow_pid = eventually("the slow instance", || {
        p.instances("slow").first().and_then(|i| i.pid)
    });
    kill(p.server_pid().unwrap(), libc::SIGKILL);
    let _ = applying.wait();

    p.set_system(&first);
    p.up().ok();
    let history = p.history();
    assert_eq!(history[0].number, 2);
    assert_eq!(history[0].status, RevisionStatus::Failed);
    assert!(
        history[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("server stopped during the apply")
    );
    assert_eq!(history[1].status, RevisionStatus::Live);
    assert!(
        wait_gone(slow_pid, Duration::from_secs(10)),
        "the interrupted apply's instance is stopped"
    );
    assert!(p.instances("slow").is_empty());
    assert_eq!(http_get(port, "/healthz").unwrap().0, 200);
}

#[test]
fn logs_merge_instances_with_prefixes_and_streams() {
    let p = Project::new(
        "[service.talker]\nrun = \"sh -c 'echo hello out; echo hello err >&2; exec sleep 300'\"\nreplicas = 2\n",
    );
    p.up().ok();
    let logs = eventually("both replicas' output", || {
        let out = p.run(&["logs", "talker"]).stdout;
        (out.matches("hello out").count() == 2 && out.matches("hello err").count() == 2)
            .then_some(out)
    });
    for line in logs.lines() {
        assert!(
            line.starts_with("talker-0-") || line.starts_with("talker-1-"),
            "{line}"
        );
    }
    let unknown = p.run(&["logs", "nobody"]);
    assert_eq!(unknown.code, 1);
    assert!(
        unknown.stderr.contains("service 'nobody' has no logs"),
        "{}",
        unknown.stderr
    );
}

#[test]
fn the_http_listener_needs_the_token_and_the_right_host() {
    let p = Project::new("[service.idle]\nrun = \"sleep 300\"\n");
    p.up().ok();
    let listen = p.status().server.listen;
    let port: u16 = listen.rsplit(':').next().unwrap().parse().unwrap();
    let token_file = p.data_dir().join("token");
    let token = std::fs::read_to_string(&token_file).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(p.data_dir().join("server.sock"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );

    let host = format!("127.0.0.1:{port}");
    assert_eq!(
        http_request(port, "/v1/status", &host, None).unwrap().0,
        401
    );
    assert_eq!(
        http_request(port, "/v1/status", &host, Some("wrong"))
            .unwrap()
            .0,
        401
    );
    assert_eq!(
        http_request(port, "/v1/status", "evil.example:80", Some(&token))
            .unwrap()
            .0,
        421
    );
    let (status, body) = http_request(port, "/v1/status", &host, Some(&token)).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        !p.run(&["status"]).stdout.contains(&token),
        "the token never shows"
    );
}

#[test]
fn clear_errors_without_a_file_a_server_or_a_valid_file() {
    let p = Project::new("[service.x]\nrun = \"sleep 1\"\n");
    std::fs::remove_file(p.path().join("tandem.toml")).unwrap();
    let up = p.run(&["up", "-d"]);
    assert_eq!(up.code, 1);
    assert!(
        up.stderr.contains("tandem.toml") && up.stderr.contains("tandem init"),
        "{}",
        up.stderr
    );

    let status = p.run(&["status"]);
    assert_eq!(status.code, 1);
    assert!(
        status.stderr.contains("no tandem server runs") && status.stderr.contains("tandem up"),
        "{}",
        status.stderr
    );

    p.write(
        "tandem.toml",
        "[service.x]\nrun = \"sleep 1\"\nreplica = 2\n",
    );
    let v = p.run(&["validate"]);
    assert_eq!(v.code, 1);
    assert!(
        v.stderr.contains("tandem.toml:3:1") && v.stderr.contains("replicas"),
        "{}",
        v.stderr
    );
    let plan = p.run(&["plan"]);
    assert_eq!(plan.code, 1, "{}", plan.all());

    let init = p.run(&["init"]);
    assert_eq!(init.code, 1, "init refuses to overwrite");
    std::fs::remove_file(p.path().join("tandem.toml")).unwrap();
    p.run(&["init"]).ok();
    p.run(&["validate"]).ok();
}

#[test]
fn foreground_up_streams_prefixed_logs_and_ctrl_c_stops_everything() {
    use std::io::BufRead;
    let port = free_port();
    let p = Project::new(&format!(
        "{}[service.ticker]\nrun = \"sh -c 'while true; do echo tick; sleep 0.2; done'\"\n",
        app_service("web", port, "")
    ));
    let mut up = p
        .command(&["up"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = up.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + DEADLINE;
    let mut seen_tick = false;
    while !seen_tick {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("a log line from the ticker");
        if line.starts_with("ticker-0-") && line.ends_with("| tick") {
            seen_tick = true;
        }
    }
    let pids = p.recorded_pids();
    let server = p.server_pid().unwrap();
    kill(up.id() as i32, libc::SIGINT);
    let status = up.wait().unwrap();
    assert!(status.success(), "Ctrl-C ends `up` cleanly: {status:?}");
    assert!(
        wait_gone(server, Duration::from_secs(10)),
        "the server stopped"
    );
    for pid in pids {
        assert!(
            wait_gone(pid, Duration::from_secs(10)),
            "pid {pid} is still running"
        );
    }
    assert!(http_get(port, "/healthz").is_err());
}

#[test]
fn after_down_a_new_server_starts_nothing_until_the_next_up() {
    let port = free_port();
    let p = Project::new(&app_service("web", port, ""));
    p.up().ok();
    p.run(&["down"]).ok();

    let mut serve = p
        .command(&["serve"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let status = eventually("the server to answer", || {
        let r = p.run(&["status", "--output", "json"]);
        (r.code == 0)
            .then(|| serde_json::from_str::<tandem_api::StatusResponse>(&r.stdout).unwrap())
    });
    assert_eq!(status.live_revision, Some(1));
    assert!(
        status.services.iter().all(|s| s.instances.is_empty()),
        "{status:#?}"
    );
    kill(serve.id() as i32, libc::SIGTERM);
    serve.wait().unwrap();

    let up = p.up().ok();
    assert!(up.stdout.contains("web restored"), "{}", up.all());
    assert_eq!(http_get(port, "/healthz").unwrap().0, 200);
}

/// The `web` test service at version `message` with a release strategy.
fn web_version(port: u16, message: &str, release: &str, env_extra: &str) -> String {
    app_service(
        "web",
        port,
        &format!(
            "env = {{ MESSAGE = \"{message}\"{env_extra} }}\nreplicas = 2\nrelease = {release}"
        ),
    )
}

/// Answers seen by the load loop, as (status, body) in time order.
fn bodies(seen: &[Seen]) -> Vec<String> {
    seen.iter().map(|s| s.body.trim().to_string()).collect()
}

#[test]
fn a_blue_green_deploy_under_load_fails_no_request_and_keeps_the_old_revision_warm() {
    let port = free_port();
    let release = "{ strategy = \"blue-green\", keep_warm = \"2m\" }";
    let p = Project::new(&web_version(port, "v1", release, ""));
    p.up().ok();
    let load = Load::start(port, "/hello");
    load.wait_answers(5);
    p.set_system(&web_version(port, "v2", release, ""));
    let out = p.run(&["deploy", "-m", "v2"]).ok();
    assert!(
        out.stdout.contains("revision 2 of dev is live"),
        "{}",
        out.all()
    );
    let deployed = Instant::now();
    load.wait_answers(10);
    let (seen, failures) = load.finish();
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(seen.iter().all(|s| s.status == 200), "{seen:?}");
    let b = bodies(&seen);
    assert_eq!(b.first().map(String::as_str), Some("v1"), "{b:?}");
    let after: Vec<&String> = seen
        .iter()
        .zip(&b)
        // Sent after the deploy returned: a request already on its way to v1 when the
        // traffic moved is answered by v1, however late.
        .filter(|(s, _)| s.sent > deployed)
        .map(|(_, b)| b)
        .collect();
    assert!(
        after.len() >= 10 && after.iter().all(|b| *b == "v2"),
        "after the deploy: {after:?}"
    );
    let web = p.instances("web");
    let warm: Vec<_> = web.iter().filter(|i| i.warm_until_ms.is_some()).collect();
    assert_eq!(warm.len(), 2, "the old instances stay warm: {web:#?}");
    assert!(
        warm.iter()
            .all(|i| i.revision == 1 && i.traffic_pct.is_none())
    );
}

#[test]
fn a_canary_deploy_under_load_shifts_traffic_in_steps_and_fails_no_request() {
    let port = free_port();
    let release = "{ strategy = \"canary\", steps = [25, 50, 100], step_time = \"1s\", max_error_rate = 0.05, min_requests = 5 }";
    let p = Project::new(&web_version(port, "v1", release, ""));
    p.up().ok();
    let load = Load::start(port, "/hello");
    load.wait_answers(5);
    p.set_system(&web_version(port, "v2", release, ""));
    let out = p.run(&["deploy"]);
    let (seen, failures) = load.finish();
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        out.stderr.contains("canary step 1/3") && out.stderr.contains("25% to r2"),
        "{}",
        out.stderr
    );
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(
        seen.iter().all(|s| s.status == 200),
        "non-200 answers during a good canary"
    );
    let b = bodies(&seen);
    let first_v2 = b.iter().position(|x| x == "v2").expect("v2 answered");
    let v1_after = b[first_v2..].iter().filter(|x| *x == "v1").count();
    assert!(v1_after > 0, "during the steps both revisions answer");

    let deployments: Vec<tandem_api::Deployment> =
        serde_json::from_str(&p.run(&["deployments", "--output", "json"]).ok().stdout).unwrap();
    let d = &deployments[0];
    assert_eq!(d.outcome, Some(tandem_api::DeploymentOutcome::Succeeded));
    let pcts: Vec<u8> = d.steps.iter().filter_map(|s| s.new_traffic_pct).collect();
    assert_eq!(pcts, vec![25, 50, 100], "{d:#?}");
    let judged = d
        .steps
        .iter()
        .flat_map(|s| &s.gates)
        .find(|g| g.check == "max_error_rate");
    assert!(judged.is_some_and(|g| g.passed), "{d:#?}");
}

#[test]
fn a_canary_that_breaches_its_error_rate_is_rolled_back_automatically() {
    let port = free_port();
    let release = "{ strategy = \"canary\", steps = [50, 100], step_time = \"1s\", max_error_rate = 0.05, min_requests = 5 }";
    let p = Project::new(&web_version(port, "v1", release, ""));
    p.up().ok();
    let load = Load::start(port, "/hello");
    load.wait_answers(5);
    p.set_system(&web_version(port, "v2", release, ", FAIL_RATE = \"1.0\""));
    let out = p.run(&["deploy"]);
    let (_seen, failures) = load.finish();
    assert!(
        failures.is_empty(),
        "requests without an answer: {failures:?}"
    );
    assert_eq!(
        out.code,
        3,
        "exit 3 means rolled back automatically\n{}",
        out.all()
    );
    assert!(
        out.stderr.contains("rolled back automatically") && out.stderr.contains("max_error_rate"),
        "{}",
        out.stderr
    );
    // All traffic is back on v1, served by the old instances.
    for _ in 0..20 {
        assert_eq!(http_get(port, "/hello").unwrap(), (200, "v1\n".to_string()));
    }
    let s = p.wait_status("the canary instances to stop", |s| {
        s.services[0].instances.len() == 2
    });
    assert!(s.services[0].instances.iter().all(|i| i.revision == 1));
    let history = p.history();
    assert_eq!(
        (history[0].number, history[0].status),
        (2, tandem_api::RevisionStatus::Failed)
    );
    assert!(
        history[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("max_error_rate")
    );
    assert_eq!(history[1].status, tandem_api::RevisionStatus::Live);
    let deployments: Vec<tandem_api::Deployment> =
        serde_json::from_str(&p.run(&["deployments", "--output", "json"]).ok().stdout).unwrap();
    assert_eq!(
        deployments[0].outcome,
        Some(tandem_api::DeploymentOutcome::RolledBack)
    );
}

#[test]
fn canary_analysis_queries_judge_each_step_on_the_monitoring_store() {
    let port = free_port();
    // The canary must have been seen serving (its own series, by revision) and without 5xx.
    let passing = r#"{ strategy = "canary", steps = [50, 100], step_time = "3s", min_requests = 5, analysis = [{ name = "traffic", min = 0.5, query = 'sum(rate(tandem_http_requests_total{service="{{ service }}", revision="{{ revision }}"}[{{ window }}]))' }, { name = "errors", max = 0.05, query = 'sum(rate(tandem_http_requests_total{service="{{ service }}", revision="{{ revision }}", code="5xx"}[{{ window }}])) or vector(0)' }] }"#;
    let p = Project::new(&web_version(port, "v1", passing, ""));
    p.up().ok();
    let load = Load::start(port, "/hello");
    load.wait_answers(5);
    p.set_system(&web_version(port, "v2", passing, ""));
    let out = p.run(&["deploy"]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        out.stderr.contains("analysis 'traffic'") && out.stderr.contains("analysis 'errors' 0"),
        "{}",
        out.stderr
    );
    let deployments: Vec<tandem_api::Deployment> =
        serde_json::from_str(&p.run(&["deployments", "--output", "json"]).ok().stdout).unwrap();
    let traffic = deployments[0]
        .steps
        .iter()
        .flat_map(|s| &s.gates)
        .find(|g| g.check == "analysis 'traffic'")
        .unwrap_or_else(|| panic!("no analysis gate: {:#?}", deployments[0]));
    let rate: f64 = traffic.measured.parse().expect("a number");
    assert!(traffic.passed && rate >= 0.5, "{traffic:?}");
    assert_eq!(traffic.allowed, ">= 0.5");

    // The new revision's own memory, read from the store, is over its bound: the step
    // fails on the query alone (the proxy's figures are clean), and traffic goes back.
    let failing = r#"{ strategy = "canary", steps = [50, 100], step_time = "3s", min_requests = 5, analysis = [{ name = "memory", max = 1000, query = 'max(tandem_instance_memory_rss_bytes{service="{{ service }}", revision="{{ revision }}"})' }] }"#;
    p.set_system(&web_version(port, "v3", failing, ""));
    let out = p.run(&["deploy"]);
    let (_seen, failures) = load.finish();
    assert!(
        failures.is_empty(),
        "requests without an answer: {failures:?}"
    );
    assert_eq!(out.code, 3, "rolled back automatically\n{}", out.all());
    assert!(
        out.stderr.contains("analysis 'memory'") && out.stderr.contains("allowed <= 1000"),
        "{}",
        out.stderr
    );
    for _ in 0..10 {
        assert_eq!(http_get(port, "/hello").unwrap(), (200, "v2\n".to_string()));
    }
    let history = p.history();
    assert_eq!(history[0].status, tandem_api::RevisionStatus::Failed);
    let reason = history[0].reason.clone().unwrap_or_default();
    assert!(reason.contains("analysis 'memory'"), "{reason}");
    let deployments: Vec<tandem_api::Deployment> =
        serde_json::from_str(&p.run(&["deployments", "--output", "json"]).ok().stdout).unwrap();
    let memory = deployments[0]
        .steps
        .iter()
        .flat_map(|s| &s.gates)
        .find(|g| g.check == "analysis 'memory'")
        .unwrap_or_else(|| panic!("no analysis gate: {:#?}", deployments[0]));
    let bytes: f64 = memory.measured.parse().expect("bytes");
    assert!(!memory.passed && bytes > 1e6, "{memory:?}");
}

#[test]
fn a_rollback_while_warm_is_a_quick_switch_and_marks_what_it_left() {
    let port = free_port();
    let release = "{ strategy = \"blue-green\", keep_warm = \"5m\" }";
    let p = Project::new(&web_version(port, "v1", release, ""));
    p.up().ok();
    p.set_system(&web_version(port, "v2", release, ""));
    p.run(&["deploy"]).ok();
    let load = Load::start(port, "/hello");
    eventually("v2 answers", || {
        http_get(port, "/hello").ok().filter(|(_, b)| b == "v2\n")
    });
    let t0 = Instant::now();
    let out = p.run(&["rollback"]);
    let command_took = t0.elapsed();
    eventually("v1 answers", || {
        http_get(port, "/hello").ok().filter(|(_, b)| b == "v1\n")
    });
    let (seen, failures) = load.finish();
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(seen.iter().all(|s| s.status == 200));
    let first_v1 = seen
        .iter()
        .find(|s| s.at >= t0 && s.body.trim() == "v1")
        .expect("v1 answered after the rollback");
    let switch = first_v1.at - t0;
    if std::env::var("SHOW_SEEN").is_ok() {
        for s in seen.iter().filter(|s| {
            s.at + Duration::from_millis(200) >= t0
                && s.at <= first_v1.at + Duration::from_millis(5)
        }) {
            eprintln!(
                "  {:>8.1}ms {} {}",
                ((s.at + Duration::from_secs(1)) - t0).as_secs_f64() * 1000.0 - 1000.0,
                s.status,
                s.body.trim()
            );
        }
    }
    eprintln!(
        "rollback while warm: first request answered by the old revision {switch:?} after `tandem rollback` started (the command took {command_took:?})"
    );
    assert!(switch < Duration::from_secs(5), "{switch:?}");

    let history = p.history();
    assert_eq!(history[0].number, 3);
    assert_eq!(history[0].rollback_of, Some(1));
    assert_eq!(history[0].status, tandem_api::RevisionStatus::Live);
    assert_eq!(history[1].status, tandem_api::RevisionStatus::RolledBack);
    // Deploying the rolled-back content again needs --force.
    let again = p.run(&["deploy"]);
    assert_eq!(again.code, 1, "{}", again.all());
    assert!(
        again.stderr.contains("was rolled back") && again.stderr.contains("--force"),
        "{}",
        again.stderr
    );
    p.run(&["deploy", "--force"]).ok();
    assert_eq!(http_get(port, "/hello").unwrap().1, "v2\n");
}

#[test]
fn a_second_deploy_while_one_runs_is_refused_with_who_holds_the_lock() {
    let port = free_port();
    let release =
        "{ strategy = \"canary\", steps = [50, 100], step_time = \"4s\", min_requests = 1000000 }";
    let p = Project::new(&web_version(port, "v1", release, ""));
    p.up().ok();
    p.set_system(&web_version(port, "v2", release, ""));
    let mut first = p
        .command(&["deploy"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let status = p.wait_status("the deploy to hold the lock", |s| s.deploying.is_some());
    assert_eq!(status.deploying.unwrap().revision, Some(2));
    let second = p.run(&["deploy"]);
    assert_eq!(second.code, 1, "{}", second.all());
    assert!(
        second.stderr.contains("has been running") && second.stderr.contains("revision 2"),
        "{}",
        second.stderr
    );
    assert!(first.wait().unwrap().success());
}

#[test]
fn a_server_killed_during_a_canary_comes_back_on_the_old_revision() {
    let port = free_port();
    let release =
        "{ strategy = \"canary\", steps = [50, 100], step_time = \"30s\", min_requests = 1 }";
    let p = Project::new(&web_version(port, "v1", release, ""));
    p.up().ok();
    p.set_system(&web_version(port, "v2", release, ""));
    let mut deploy = p
        .command(&["deploy"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait for the 50 % step: both revisions answer.
    eventually("the canary step", || {
        let s = p.status();
        s.services[0]
            .instances
            .iter()
            .any(|i| i.revision == 2 && i.traffic_pct.is_some())
            .then_some(())
    });
    kill(p.server_pid().unwrap(), libc::SIGKILL);
    let _ = deploy.wait();
    p.set_system(&web_version(port, "v1", release, ""));
    p.up().ok();
    for _ in 0..20 {
        assert_eq!(http_get(port, "/hello").unwrap(), (200, "v1\n".to_string()));
    }
    let history = p.history();
    assert_eq!(
        (history[0].number, history[0].status),
        (2, RevisionStatus::Failed)
    );
    let deployments: Vec<tandem_api::Deployment> =
        serde_json::from_str(&p.run(&["deployments", "--output", "json"]).ok().stdout).unwrap();
    let d = deployments.iter().find(|d| d.revision == 2).unwrap();
    assert_eq!(d.outcome, Some(tandem_api::DeploymentOutcome::Failed));
    assert!(
        d.reason.as_deref().unwrap().contains("server stopped"),
        "{d:?}"
    );
    p.wait_status("the canary's instances to stop", |s| {
        s.services[0].instances.iter().all(|i| i.revision == 1)
            && s.services[0].instances.len() == 2
    });
}

#[test]
fn a_rollback_with_nothing_warm_starts_the_old_revision_behind_health_gates() {
    let port = free_port();
    let p = Project::new(&app_service("web", port, "env = { MESSAGE = \"v1\" }"));
    p.up().ok();
    p.set_system(&app_service("web", port, "env = { MESSAGE = \"v2\" }"));
    p.run(&["deploy"]).ok();
    eventually("only v2 instances", || {
        let i = p.instances("web");
        (i.len() == 1 && i[0].revision == 2).then_some(())
    });
    let load = Load::start(port, "/hello");
    let out = p.run(&["rollback", "--to", "1"]);
    let (seen, failures) = load.finish();
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(seen.iter().all(|s| s.status == 200));
    assert_eq!(http_get(port, "/hello").unwrap().1, "v1\n");
    let history = p.history();
    assert_eq!((history[0].number, history[0].rollback_of), (3, Some(1)));
    assert_eq!(history[1].status, RevisionStatus::RolledBack);
    let none = p.run(&["rollback", "--to", "3"]);
    assert_eq!(none.code, 1);
    assert!(
        none.stderr.contains("is the live revision"),
        "{}",
        none.stderr
    );
}

/// A request to the HTTP listener with an optional form body; returns (status, JSON).
fn prom(port: u16, method: &str, path: &str, form: Option<&str>) -> (u16, serde_json::Value) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let body = form.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let (_, payload) = text.split_once("\r\n\r\n").unwrap();
    // The body may be chunked: take the JSON object inside.
    let start = payload.find('{').unwrap();
    let end = payload.rfind('}').unwrap();
    (status, serde_json::from_str(&payload[start..=end]).unwrap())
}

#[test]
fn grafana_reads_metrics_through_the_prometheus_api() {
    let web = free_port();
    let p = Project::new(&app_service("web", web, ""));
    p.up().ok();
    for _ in 0..5 {
        http_get(web, "/hello").unwrap();
    }
    let listen = p.status().server.listen;
    let api: u16 = listen.rsplit(':').next().unwrap().parse().unwrap();
    // Grafana's data source health check.
    let (status, health) = prom(api, "GET", "/api/v1/query?query=1%2B1", None);
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["data"]["resultType"], "scalar");
    assert_eq!(health["data"]["result"][1], "2");
    // Collected series show up within a couple of collection rounds.
    let requests = eventually("proxy request counters in the store", || {
        let (_, v) = prom(
            api,
            "POST",
            "/api/v1/query",
            Some("query=sum%20by%20(service)%20(tandem_http_requests_total)"),
        );
        let result = v["data"]["result"].as_array().cloned().unwrap_or_default();
        result
            .first()
            .and_then(|s| s["value"][1].as_str().map(str::to_string))
            .filter(|v| v != "0")
    });
    assert!(requests.parse::<f64>().unwrap() >= 5.0, "{requests}");
    let mem = eventually("a memory series over the last minute", || {
        let now = tandem_api::now_ms() / 1000;
        let (status, mem) = prom(
            api,
            "POST",
            "/api/v1/query_range",
            Some(&format!(
                "query=tandem_instance_memory_rss_bytes&start={}&end={}&step=1",
                now - 60,
                now + 1
            )),
        );
        assert_eq!(status, 200, "{mem}");
        (!mem["data"]["result"][0].is_null()).then_some(mem)
    });
    assert_eq!(mem["data"]["resultType"], "matrix");
    assert_eq!(
        mem["data"]["result"][0]["metric"]["service"], "web",
        "{mem}"
    );
    let (_, series) = prom(
        api,
        "GET",
        "/api/v1/series?match%5B%5D=tandem_instance_up",
        None,
    );
    assert_eq!(series["data"][0]["__name__"], "tandem_instance_up");
    let (_, labels) = prom(api, "GET", "/api/v1/labels", None);
    assert!(
        labels["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l == "service")
    );
    let (_, values) = prom(api, "GET", "/api/v1/label/service/values", None);
    assert_eq!(values["data"], serde_json::json!(["web"]));
    let (_, meta) = prom(
        api,
        "GET",
        "/api/v1/metadata?metric=tandem_http_requests_total",
        None,
    );
    assert_eq!(
        meta["data"]["tandem_http_requests_total"][0]["type"],
        "counter"
    );
    let (_, build) = prom(api, "GET", "/api/v1/status/buildinfo", None);
    assert!(build["data"]["version"].is_string());
    // Prometheus's error shape.
    let (status, bad) = prom(api, "GET", "/api/v1/query?query=sum(", None);
    assert_eq!(status, 400);
    assert_eq!(
        (bad["status"].as_str(), bad["errorType"].as_str()),
        (Some("error"), Some("bad_data"))
    );
    // tandem's own /metrics, in the text format, open on loopback like the queries.
    let (status, own) = http_get(api, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(
        own.contains("# TYPE tandem_tsdb_head_series gauge")
            && own.contains("tandem_instances{service=\"web\",state=\"healthy\"} 1"),
        "{own}"
    );
    // The CLI gives the same answers.
    let out = p
        .run(&["query", "sum by (service) (tandem_instance_up)"])
        .ok();
    assert!(
        out.stdout.contains("{service=\"web\"}") && out.stdout.contains('1'),
        "{}",
        out.stdout
    );
}

#[test]
fn each_service_s_metrics_path_is_scraped_with_tandem_s_labels() {
    let (good, broken) = (free_port(), free_port());
    let p = Project::new(&format!(
        "[monitoring]\nscrape_interval = \"1s\"\n\n{}{}",
        app_service("good", good, "metrics = \"/metrics\""),
        app_service(
            "broken",
            broken,
            "metrics = \"/metrics\"\nenv = { METRICS_BROKEN = \"1\" }"
        ),
    ));
    p.up().ok();
    for _ in 0..3 {
        http_get(good, "/hello").unwrap();
    }
    let value = |query: &str| -> Option<(serde_json::Value, String)> {
        let out = p.run(&["query", query, "--output", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
        let first = v["result"].get(0)?.clone();
        let value = first["value"][1].as_str()?.to_string();
        Some((first["metric"].clone(), value))
    };
    let (metric, hellos) = eventually("the app's counter at 3", || {
        value("app_hello_total").filter(|(_, v)| v == "3")
    });
    assert_eq!(metric["service"], "good");
    assert!(
        metric["instance"].as_str().unwrap().starts_with("good-0-"),
        "{metric}"
    );
    assert_eq!(
        metric["exported_instance"], "mine",
        "the app's own label is kept renamed"
    );
    assert_eq!(hellos, "3");
    eventually("up of both targets", || {
        let good_up = value("up{service=\"good\"}")?.1;
        let broken_up = value("up{service=\"broken\"}")?.1;
        (good_up == "1" && broken_up == "0").then_some(())
    });
    let (meta_status, meta) = {
        let listen = p.status().server.listen;
        let api: u16 = listen.rsplit(':').next().unwrap().parse().unwrap();
        prom(api, "GET", "/api/v1/metadata?metric=app_hello_total", None)
    };
    assert_eq!(meta_status, 200);
    assert_eq!(
        meta["data"]["app_hello_total"][0]["help"],
        "Hellos answered."
    );
}

#[test]
fn rules_record_and_alert_and_their_state_survives_a_server_restart() {
    let web = free_port();
    let p = Project::new(&app_service("web", web, ""));
    p.write(
        "rules.yml",
        "groups:\n  - name: fast\n    interval: 1s\n    rules:\n      - record: service:up:sum\n        expr: sum by (service) (tandem_instance_up)\n      - alert: WebUp\n        expr: tandem_instance_up{service=\"web\"} == 1\n        for: 2s\n        labels:\n          severity: ticket\n        annotations:\n          summary: \"web has {{ $value }} instance up\"\n",
    );
    let text = std::fs::read_to_string(p.path().join("tandem.toml")).unwrap();
    p.write(
        "tandem.toml",
        &text.replace(
            "name = \"e2e\"",
            "name = \"e2e\"\nrule_files = [\"rules.yml\"]",
        ),
    );
    p.up().ok();
    let firing = eventually("the alert to fire", || {
        let out = p.run(&["alerts", "--output", "json"]).ok();
        let list: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).ok()?;
        list.into_iter().find(|a| a["state"] == "firing")
    });
    assert_eq!(firing["labels"]["alertname"], "WebUp");
    assert_eq!(firing["labels"]["severity"], "ticket");
    assert_eq!(firing["annotations"]["summary"], "web has 1 instance up");
    let text = p.run(&["alerts"]).ok().stdout;
    assert!(text.contains("WebUp") && text.contains("firing"), "{text}");
    // The recording rule's series is in the store.
    eventually("the recorded series", || {
        let out = p.run(&["query", "service:up:sum{service=\"web\"}"]).ok();
        out.stdout.contains("service:up:sum").then_some(())
    });
    let timeline = p.run(&["timeline"]).ok().stdout;
    assert!(
        timeline.contains("alert-pending") && timeline.contains("alert-firing"),
        "{timeline}"
    );
    // The Prometheus rules API lists the group.
    let listen = p.status().server.listen;
    let api: u16 = listen.rsplit(':').next().unwrap().parse().unwrap();
    let (status, rules) = prom(api, "GET", "/api/v1/rules", None);
    assert_eq!(status, 200);
    let groups = rules["data"]["groups"].as_array().unwrap();
    assert!(
        groups
            .iter()
            .any(|g| g["name"] == "tandem.builtin.instances"),
        "the built-in groups run too"
    );
    let group = groups
        .iter()
        .find(|g| g["name"] == "fast")
        .expect("the file's group");
    assert_eq!(group["file"], "rules.yml");
    assert_eq!(group["rules"][1]["state"], "firing");
    // After kill -9 and a new server, the alert is still firing since the same time.
    kill(p.server_pid().unwrap(), libc::SIGKILL);
    p.up().ok();
    let again = eventually("the alert after the restart", || {
        let out = p.run(&["alerts", "--output", "json"]).ok();
        let list: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).ok()?;
        list.into_iter()
            .find(|a| a["labels"]["alertname"] == "WebUp")
    });
    assert_eq!(again["state"], "firing");
    assert_eq!(
        again["activeAt"], firing["activeAt"],
        "the alert kept its start"
    );
}

/// A real Alertmanager (Debian's `prometheus-alertmanager`) on a free loopback port, with a
/// route to a receiver that sends nothing; killed when the test ends.
struct Alertmanager {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Alertmanager {
    /// `None` (with the reason printed) when the binary is missing; `scripts/test` installs it.
    fn start() -> Option<Alertmanager> {
        let bin = "prometheus-alertmanager";
        if std::process::Command::new(bin)
            .arg("--version")
            .output()
            .is_err()
        {
            println!("skipped: `{bin}` is not installed (apt-get install prometheus-alertmanager)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("alertmanager.yml");
        std::fs::write(
            &config,
            "route:\n  receiver: blackhole\nreceivers:\n  - name: blackhole\n",
        )
        .unwrap();
        let port = free_port();
        let child = std::process::Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let am = Alertmanager {
            child,
            port,
            _dir: dir,
        };
        eventually("Alertmanager to be ready", || {
            http_get(port, "/-/ready")
                .ok()
                .filter(|(status, _)| *status == 200)
        });
        Some(am)
    }

    /// `GET /api/v2/alerts`: the alerts it holds that have not ended.
    fn alerts(&self) -> Vec<serde_json::Value> {
        let (status, body) = http_get(self.port, "/api/v2/alerts").unwrap();
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }
}

/// A webhook receiver: records the JSON body of every POST and answers 200.
struct Hook {
    port: u16,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
}

impl Hook {
    fn start() -> Hook {
        use std::io::{BufRead, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = bodies.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let mut reader = std::io::BufReader::new(stream);
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some((name, value)) = line.split_once(':')
                        && name.eq_ignore_ascii_case("content-length")
                    {
                        length = value.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; length];
                if reader.read_exact(&mut body).is_ok()
                    && let Ok(json) = serde_json::from_slice(&body)
                {
                    seen.lock().unwrap().push(json);
                }
                let _ = reader.get_mut().write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        Hook { port, bodies }
    }

    fn find(&self, status: &str) -> Option<serde_json::Value> {
        self.bodies
            .lock()
            .unwrap()
            .iter()
            .find(|b| b["status"] == status)
            .cloned()
    }
}

#[test]
fn alerts_reach_alertmanager_and_a_webhook_and_resolve_while_a_dead_receiver_fails_loudly() {
    let Some(am) = Alertmanager::start() else {
        return;
    };
    let hook = Hook::start();
    let dead = free_port();
    let web = free_port();
    let receivers = format!(
        "[[receiver]]\nname = \"am\"\nalertmanager = \"http://127.0.0.1:{}\"\n\n\
         [[receiver]]\nname = \"dead\"\nwebhook = \"http://127.0.0.1:{dead}/hook\"\ngroup_wait = \"1s\"\ngroup_interval = \"1s\"\n\n\
         [[receiver]]\nname = \"hook\"\nwebhook = \"http://127.0.0.1:{}/hook\"\ngroup_wait = \"1s\"\ngroup_interval = \"1s\"\n",
        am.port, hook.port
    );
    let system = |replicas: u32| {
        format!(
            "{}{receivers}",
            app_service("web", web, &format!("replicas = {replicas}"))
        )
    };
    let p = Project::new(&system(1));
    p.write(
        "rules.yml",
        "groups:\n  - name: fast\n    interval: 1s\n    rules:\n      - alert: WebUp\n        expr: tandem_instance_up{service=\"web\"} == 1\n        labels:\n          severity: ticket\n        annotations:\n          summary: \"web is up\"\n",
    );
    let with_rules = |text: String| {
        text.replace(
            "name = \"e2e\"",
            "name = \"e2e\"\nrule_files = [\"rules.yml\"]",
        )
    };
    let file = p.path().join("tandem.toml");
    std::fs::write(&file, with_rules(std::fs::read_to_string(&file).unwrap())).unwrap();
    p.up().ok();

    // Alertmanager holds the alert, as Prometheus would have sent it.
    let alert = eventually("the alert in Alertmanager", || {
        am.alerts()
            .into_iter()
            .find(|a| a["labels"]["alertname"] == "WebUp")
    });
    assert_eq!(alert["labels"]["service"], "web");
    assert_eq!(alert["labels"]["env"], "dev");
    assert_eq!(alert["labels"]["severity"], "ticket");
    assert_eq!(alert["annotations"]["summary"], "web is up");
    assert_eq!(alert["status"]["state"], "active");
    assert!(
        alert["generatorURL"]
            .as_str()
            .unwrap()
            .contains("/api/v1/query?query=tandem_instance_up"),
        "{alert}"
    );

    // The webhook got Alertmanager's webhook shape.
    let firing = eventually("the firing webhook", || hook.find("firing"));
    assert_eq!(firing["version"], "4");
    assert_eq!(firing["receiver"], "hook");
    assert_eq!(firing["groupLabels"]["alertname"], "WebUp");
    assert_eq!(firing["groupLabels"]["service"], "web");
    assert_eq!(firing["commonLabels"]["severity"], "ticket");
    assert_eq!(firing["alerts"][0]["status"], "firing");
    assert_eq!(firing["alerts"][0]["annotations"]["summary"], "web is up");

    // The dead receiver failed, on the timeline and in /metrics, and held up nobody.
    eventually("notification-failed for the dead receiver", || {
        let timeline = p.run(&["timeline"]).ok().stdout;
        (timeline.contains("notification-failed") && timeline.contains("receiver 'dead'"))
            .then_some(())
    });
    let timeline = p.run(&["timeline"]).ok().stdout;
    assert!(
        timeline.contains("notification-sent") && timeline.contains("receiver 'hook' notified"),
        "{timeline}"
    );
    let api: u16 = p
        .status()
        .server
        .listen
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let (_, metrics) = http_get(api, "/metrics").unwrap();
    assert!(
        metrics.contains("tandem_notifications_total{receiver=\"dead\",outcome=\"failed\"}")
            && metrics.contains("tandem_notifications_total{receiver=\"hook\",outcome=\"sent\"}"),
        "{metrics}"
    );

    // The condition goes away: the webhook hears the resolution, and the alert ends in
    // Alertmanager.
    p.set_system(&system(0));
    std::fs::write(&file, with_rules(std::fs::read_to_string(&file).unwrap())).unwrap();
    p.up().ok();
    let resolved = eventually("the resolved webhook", || hook.find("resolved"));
    assert_eq!(resolved["alerts"][0]["status"], "resolved");
    assert_ne!(resolved["alerts"][0]["endsAt"], "0001-01-01T00:00:00Z");
    eventually("the alert to end in Alertmanager", || {
        (!am.alerts()
            .iter()
            .any(|a| a["labels"]["alertname"] == "WebUp"))
        .then_some(())
    });
}
