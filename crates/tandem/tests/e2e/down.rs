//! `tandem down` after the server died: the instances it left under their shims, and the
//! port holder, still run; `down` starts a server to re-attach to them and stops it all.

use super::support::*;
use crate::app_service;
use std::time::Duration;

#[test]
fn down_after_the_server_was_killed_stops_what_it_left_running() {
    let port = free_port();
    let p = Project::new(&app_service("web", port, "replicas = 2"));
    p.up().ok();
    let pids = p.recorded_pids();
    assert_eq!(pids.len(), 4, "two services and their shims: {pids:?}");
    let server = p.server_pid().expect("a server runs");
    kill(server, libc::SIGKILL);
    assert!(wait_gone(server, Duration::from_secs(10)));
    assert!(
        pids.iter().all(|pid| alive(*pid)),
        "instances outlive the server"
    );

    let out = p.run(&["down"]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        out.stderr
            .contains("2 instance(s) and the port holder still run: starting one to stop them"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.contains("is down"), "{}", out.stdout);
    for pid in &pids {
        assert!(
            wait_gone(*pid, Duration::from_secs(10)),
            "process {pid} still runs after down"
        );
    }
    assert!(!p.data_dir().join("ports.sock").exists());
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("the port is free after down");

    let again = p.run(&["down"]).ok();
    assert!(again.stdout.contains("nothing to stop"), "{}", again.stdout);
}
