//! Deploy hooks through the binary: `pre_deploy` runs before a new version's instances
//! start, `post_deploy` once it is live, a failing `pre_deploy` stops the deploy with the
//! previous revision serving and its output in the message and in `tandem logs`.

use super::support::*;
use crate::app_service;

fn web(port: u16, message: &str, pre_deploy: &str) -> String {
    app_service(
        "web",
        port,
        &format!(
            "env = {{ MESSAGE = \"{message}\" }}\nhooks = {{ pre_deploy = \"{pre_deploy}\", post_deploy = \"sh -c 'echo post $$TANDEM_REVISION >> hooks.txt'\" }}"
        ),
    )
}

#[test]
fn hooks_run_around_a_deploy_and_a_failing_pre_deploy_keeps_the_old_revision() {
    let port = free_port();
    // The hook sees the service's environment, and writes where the instances run.
    let migrate = "sh -c 'echo migrating to $$TANDEM_REVISION for $$TANDEM_SERVICE; echo pre $$TANDEM_REVISION $$MESSAGE >> hooks.txt'";
    let p = Project::new(&web(port, "v1", migrate));
    let out = p.up().ok();
    assert!(
        out.all().contains("pre_deploy hook succeeded"),
        "{}",
        out.all()
    );
    let hooks = || std::fs::read_to_string(p.path().join("hooks.txt")).unwrap_or_default();
    assert_eq!(hooks(), "pre 1 v1\npost 1\n");
    assert_eq!(http_get(port, "/hello").unwrap(), (200, "v1\n".to_string()));

    // Unchanged: no hook runs again.
    p.run(&["deploy"]).ok();
    assert_eq!(hooks(), "pre 1 v1\npost 1\n");

    // A migration that fails: nothing of revision 2 starts, v1 keeps serving.
    let failing = "sh -c 'echo cannot reach the database >&2; exit 4'";
    p.set_system(&web(port, "v2", failing));
    let out = p.run(&["deploy"]);
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        out.stderr.contains("pre_deploy hook")
            && out.stderr.contains("exit status 4")
            && out.stderr.contains("cannot reach the database"),
        "{}",
        out.stderr
    );
    assert_eq!(hooks(), "pre 1 v1\npost 1\n");
    assert_eq!(http_get(port, "/hello").unwrap(), (200, "v1\n".to_string()));
    assert!(p.instances("web").iter().all(|i| i.revision == 1));
    let history = p.history();
    assert_eq!(history[0].status, tandem_api::RevisionStatus::Failed);
    assert!(
        history[0]
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("pre_deploy")),
        "{history:?}"
    );
    let logs = p.run(&["logs", "web"]).ok().stdout;
    assert!(
        logs.lines()
            .any(|l| l.contains("web-pre-deploy-r2") && l.contains("cannot reach the database")),
        "{logs}"
    );

    // Fixed: revision 3 migrates, then goes live.
    p.set_system(&web(port, "v3", migrate));
    p.run(&["deploy"]).ok();
    assert_eq!(hooks(), "pre 1 v1\npost 1\npre 3 v3\npost 3\n");
    assert_eq!(http_get(port, "/hello").unwrap(), (200, "v3\n".to_string()));
}
