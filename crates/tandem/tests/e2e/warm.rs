//! Warm instances across a server restart: a blue-green deploy keeps the old revision warm,
//! the server is killed with SIGKILL and started again, and the old instances are still
//! warm (a rollback switches to the same processes), unless their `keep_warm` ran out while
//! no server ran, or the file that lists them is unreadable; then they are stopped.

use super::support::*;
use std::time::Duration;
use tandem_api::{InstanceState, InstanceStatus, now_ms};

/// The warm instances of `web` (revision 1 after the v1 -> v2 deploy).
fn warm_instances(p: &Project) -> Vec<InstanceStatus> {
    p.instances("web")
        .into_iter()
        .filter(|i| i.warm_until_ms.is_some())
        .collect()
}

/// Deploys v1 and then v2 of `web` blue-green with `keep_warm`; returns the project, its
/// port and v1's warm instances.
fn v1_warm_behind_v2(keep_warm: &str) -> (Project, u16, Vec<InstanceStatus>) {
    let port = free_port();
    let release = format!("{{ strategy = \"blue-green\", keep_warm = \"{keep_warm}\" }}");
    let p = Project::new(&crate::web_version(port, "v1", &release, ""));
    p.up().ok();
    p.set_system(&crate::web_version(port, "v2", &release, ""));
    p.run(&["deploy", "-m", "v2"]).ok();
    let warm = warm_instances(&p);
    assert_eq!(warm.len(), 2, "v1 stays warm: {warm:#?}");
    assert!(warm.iter().all(|i| i.revision == 1 && i.pid.is_some()));
    (p, port, warm)
}

fn kill_server(p: &Project) {
    let server = p.server_pid().expect("a server runs");
    kill(server, libc::SIGKILL);
    assert!(wait_gone(server, Duration::from_secs(10)));
}

fn pids(instances: &[InstanceStatus]) -> Vec<i32> {
    let mut pids: Vec<i32> = instances.iter().filter_map(|i| i.pid).collect();
    pids.sort();
    pids
}

#[test]
fn warm_instances_stay_warm_across_a_server_kill_and_a_rollback_switches_to_them() {
    let (p, port, before) = v1_warm_behind_v2("5m");
    kill_server(&p);
    assert!(
        before.iter().all(|i| alive(i.pid.unwrap())),
        "warm instances outlive the server"
    );

    p.up().ok();
    let after = warm_instances(&p);
    assert_eq!(
        after.iter().map(|i| &i.id).collect::<Vec<_>>(),
        before.iter().map(|i| &i.id).collect::<Vec<_>>(),
        "the same instances are warm after the restart: {after:#?}"
    );
    assert_eq!(pids(&after), pids(&before), "re-attached, not restarted");
    for (a, b) in after.iter().zip(&before) {
        let (a_until, b_until) = (a.warm_until_ms.unwrap(), b.warm_until_ms.unwrap());
        assert!(
            (a_until - b_until).abs() < 1_000,
            "{}: warm until {a_until} after the restart, {b_until} before",
            a.id
        );
        assert!(a.traffic_pct.is_none(), "warm means no traffic: {a:?}");
    }
    for _ in 0..10 {
        assert_eq!(http_get(port, "/hello").unwrap(), (200, "v2\n".to_string()));
    }
    let text = p.run(&["status"]).ok().stdout;
    assert!(
        text.contains("kept warm without traffic") && text.contains("rollback to revision 1"),
        "{text}"
    );
    // Health checks resume after a re-attach; a rollback switches to healthy instances.
    p.wait_status("the warm instances to pass their health check again", |s| {
        s.services.iter().filter(|s| s.name == "web").all(|s| {
            s.instances
                .iter()
                .filter(|i| i.warm_until_ms.is_some())
                .all(|i| i.state == InstanceState::Healthy)
        })
    });

    let load = Load::start(port, "/hello");
    load.wait_answers(5);
    let out = p.run(&["rollback"]).ok();
    assert!(
        out.stderr
            .contains("switched web back to revision 1's warm instances"),
        "{}",
        out.all()
    );
    // Traffic is on v1 when the command returns.
    for _ in 0..10 {
        assert_eq!(http_get(port, "/hello").unwrap(), (200, "v1\n".to_string()));
    }
    let (seen, failures) = load.finish();
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(seen.iter().all(|s| s.status == 200), "{seen:?}");
    let serving: Vec<InstanceStatus> = p
        .instances("web")
        .into_iter()
        .filter(|i| i.traffic_pct.is_some())
        .collect();
    assert_eq!(
        pids(&serving),
        pids(&before),
        "the rollback started no instance; the warm processes took the traffic: {serving:#?}"
    );
    let history = p.history();
    assert_eq!((history[0].number, history[0].rollback_of), (3, Some(1)));
}

#[test]
fn a_warm_instance_whose_keep_warm_ran_out_while_no_server_ran_is_stopped() {
    let (p, port, before) = v1_warm_behind_v2("8s");
    kill_server(&p);
    assert!(
        before.iter().all(|i| alive(i.pid.unwrap())),
        "the server was killed before keep_warm ran out"
    );
    let until = before.iter().filter_map(|i| i.warm_until_ms).max().unwrap();
    eventually("keep_warm to run out while no server runs", || {
        (now_ms() > until).then_some(())
    });
    assert!(
        before.iter().all(|i| alive(i.pid.unwrap())),
        "nothing stops them while no server runs"
    );

    p.up().ok();
    for i in &before {
        assert!(
            wait_gone(i.pid.unwrap(), Duration::from_secs(20)),
            "{} was stopped",
            i.id
        );
    }
    let web = p.instances("web");
    assert!(
        web.iter()
            .all(|i| i.revision == 2 && i.warm_until_ms.is_none()),
        "{web:#?}"
    );
    assert_eq!(http_get(port, "/hello").unwrap(), (200, "v2\n".to_string()));
    let timeline = p.run(&["timeline"]).ok().stdout;
    for i in &before {
        assert!(
            timeline.lines().any(|l| l.contains(&i.id)
                && l.contains("keep_warm ran out")
                && l.contains("while no server ran")),
            "{timeline}"
        );
    }
}

#[test]
fn an_unreadable_warm_pool_file_stops_its_instances_and_the_server_goes_on() {
    let (p, port, before) = v1_warm_behind_v2("5m");
    kill_server(&p);
    let file = p.data_dir().join("warm.json");
    assert!(file.exists(), "the warm pool is kept in {}", file.display());
    std::fs::write(&file, "{\"warm\": [{\"id\": ").unwrap();

    p.up().ok();
    for i in &before {
        assert!(
            wait_gone(i.pid.unwrap(), Duration::from_secs(20)),
            "{} was stopped",
            i.id
        );
    }
    assert_eq!(http_get(port, "/hello").unwrap(), (200, "v2\n".to_string()));
    assert!(warm_instances(&p).is_empty());
    let log = std::fs::read_to_string(p.data_dir().join("server.log")).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains(&file.display().to_string())),
        "a warning names the file:\n{log}"
    );
    // The next deploy writes a good file again.
    let release = "{ strategy = \"blue-green\", keep_warm = \"5m\" }";
    p.set_system(&crate::web_version(port, "v3", release, ""));
    p.run(&["deploy"]).ok();
    let text = std::fs::read_to_string(&file).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["warm"].as_array().map(Vec::len), Some(2), "{text}");
}

#[test]
fn a_warm_instance_that_exited_while_no_server_ran_is_stopped_and_the_other_stays_warm() {
    let (p, _port, before) = v1_warm_behind_v2("5m");
    kill_server(&p);
    let (dead, kept) = (&before[0], &before[1]);
    kill(dead.pid.unwrap(), libc::SIGKILL);
    assert!(wait_gone(dead.pid.unwrap(), Duration::from_secs(10)));

    p.up().ok();
    p.wait_status("the exited warm instance to be stopped", |s| {
        s.services
            .iter()
            .flat_map(|s| &s.instances)
            .all(|i| i.id != dead.id)
    });
    let warm = warm_instances(&p);
    assert_eq!(
        warm.iter().map(|i| (&i.id, i.pid)).collect::<Vec<_>>(),
        vec![(&kept.id, kept.pid)],
        "the one still running stays warm: {warm:#?}"
    );
    let timeline = p.run(&["timeline"]).ok().stdout;
    assert!(
        timeline
            .lines()
            .any(|l| l.contains(&dead.id) && l.contains("exited while no server ran")),
        "{timeline}"
    );
}
