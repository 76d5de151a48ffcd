//! A service's `proxy` table through the binary: a short `response_timeout` answers 504 for
//! a slow instance, and a deploy that lengthens it applies to the next request on the same
//! public port, with the same instances (limits are the proxy's, not the processes').

use super::support::*;
use crate::app_service;

/// Service 'web', whose `/hello` takes 1.5 s, with `proxy` as its proxy table.
fn web(port: u16, proxy: &str) -> String {
    app_service(
        "web",
        port,
        &format!("env = {{ DELAY_MS = \"1500\" }}\nproxy = {proxy}"),
    )
}

#[test]
fn a_deploy_that_changes_proxy_limits_applies_them_to_the_same_instances() {
    let port = free_port();
    let p = Project::new(&web(port, "{ response_timeout = \"300ms\" }"));
    p.up().ok();
    let (status, body) = http_get(port, "/hello").unwrap();
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("did not answer within 300ms"), "{body}");
    let instances = |p: &Project| -> Vec<(String, Option<i32>)> {
        p.instances("web")
            .into_iter()
            .map(|i| (i.id, i.pid))
            .collect()
    };
    let before = instances(&p);

    p.set_system(&web(port, "{ response_timeout = \"10s\" }"));
    p.run(&["deploy"]).ok();
    assert_eq!(
        http_get(port, "/hello").unwrap(),
        (200, "hello\n".to_string())
    );
    assert_eq!(instances(&p), before, "no instance was replaced");
}
