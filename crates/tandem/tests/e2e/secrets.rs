//! Secrets through the binary: a service lists `secrets = ["DB_PASSWORD"]`, `tandem secret
//! set` reads the value from stdin, a deploy gives it to the instances (also through
//! `${DB_PASSWORD}` in `env`), a new value replaces the instances on the next deploy, and
//! the value shows nowhere a user or another process could read it: not in `show`,
//! `history`, `diff`, `plan`, `timeline`, `status`, `server.log`, nor in the SQLite file.

use super::support::*;
use crate::app_service;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use tandem_api::SecretInfo;

const FIRST: &str = "first-Value-7f3a9c";
const SECOND: &str = "second-Value-51be0d";

fn system(port: u16) -> String {
    app_service(
        "api",
        port,
        "secrets = [\"DB_PASSWORD\"]\nenv = { DSN = \"db://app:${DB_PASSWORD}@here\" }",
    )
}

/// `tandem secret set NAME` with `value` piped to its stdin.
fn set_secret(p: &Project, name: &str, value: &str) -> Run {
    let mut child = p
        .command(&["secret", "set", name])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // As `echo` would: a final line break, which is not part of the value.
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{value}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    }
}

/// The instance's environment, as its `/env` answers it through the service's port.
fn instance_env(port: u16) -> serde_json::Value {
    let (status, body) = http_get(port, "/env").unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Every file of the data directory but the secret store and the instances' own launch
/// files, which must hold the values (and are 0600).
fn data_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().to_string();
        if path.is_dir() {
            if name != "instances" {
                data_files(&path, out);
            }
        } else if name != "secrets.json" && !name.ends_with(".sock") {
            out.push(path);
        }
    }
}

fn assert_nowhere(p: &Project, values: &[&str]) {
    let mut outputs = Vec::new();
    for args in [
        &["show", "live"][..],
        &["show", "1"],
        &["show", "live", "-o", "json"],
        &["history"],
        &["history", "-o", "json"],
        &["diff", "1", "live"],
        &["diff", "1", "live", "-o", "json"],
        &["plan"],
        &["plan", "-o", "json"],
        &["render", "-o", "json"],
        &["timeline", "-n", "1000"],
        &["timeline", "-o", "json", "-n", "1000"],
        &["status", "-o", "json"],
        &["deployments", "-o", "json"],
        &["secret", "list"],
        &["secret", "list", "-o", "json"],
    ] {
        let out = p.run(args);
        outputs.push((args.join(" "), out.all()));
    }
    let mut files = Vec::new();
    data_files(&p.data_dir(), &mut files);
    assert!(files.iter().any(|f| f.ends_with("state.db")), "{files:?}");
    assert!(files.iter().any(|f| f.ends_with("server.log")));
    for file in files {
        let bytes = std::fs::read(&file).unwrap_or_default();
        outputs.push((
            file.display().to_string(),
            String::from_utf8_lossy(&bytes).to_string(),
        ));
    }
    for (what, text) in &outputs {
        for value in values {
            assert!(!text.contains(value), "the value shows in {what}:\n{text}");
        }
    }
}

#[test]
fn secrets_come_from_the_store_never_show_and_a_new_value_replaces_the_instance() {
    let port = free_port();
    let p = Project::new(&system(port));

    // Not set: the deploy fails before anything starts, naming the service, the secret and
    // the command that sets it.
    let out = p.up();
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        out.stderr
            .contains("service 'api' needs the secret 'DB_PASSWORD', which is not set in dev")
            && out
                .stderr
                .contains("tandem secret set DB_PASSWORD --env dev"),
        "{}",
        out.stderr
    );
    assert!(http_get(port, "/env").is_err(), "nothing serves the port");

    // A value as an argument is refused by the parser (it would land in shell history).
    let out = p.run(&["secret", "set", "DB_PASSWORD", "hunter2"]);
    assert_eq!(out.code, 2, "{}", out.all());

    // Set through stdin: the server starts for it, and the store is owner-only.
    let out = set_secret(&p, "DB_PASSWORD", FIRST).ok();
    assert!(
        out.stdout.contains("secret DB_PASSWORD set in dev"),
        "{}",
        out.all()
    );
    assert!(!out.all().contains(FIRST));
    let store = p.data_dir().join("secrets.json");
    let mode = std::fs::metadata(&store).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    p.up().ok();
    let env = instance_env(port);
    assert_eq!(env["DB_PASSWORD"], FIRST);
    assert_eq!(env["DSN"], format!("db://app:{FIRST}@here"));
    let first = p.instances("api");
    assert_eq!(first.len(), 1);
    // The launch file holding the instance's environment is owner-only too.
    let launch = p
        .data_dir()
        .join("instances")
        .join(&first[0].id)
        .join("launch.json");
    let mode = std::fs::metadata(&launch).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{}", launch.display());

    // The list shows the name and who uses it, never the value.
    let out = p.run(&["secret", "list", "-o", "json"]).ok();
    let list: Vec<SecretInfo> = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(list.len(), 1, "{}", out.stdout);
    assert_eq!(list[0].name, "DB_PASSWORD");
    assert_eq!(list[0].used_by, vec!["api"]);
    assert!(list[0].fingerprint.starts_with("hmac-sha256:"));
    let out = p.run(&["secret", "list"]).ok();
    assert!(
        out.stdout.contains("DB_PASSWORD") && out.stdout.contains("api"),
        "{}",
        out.stdout
    );

    // A new value: plan shows a change by name only, and deploy replaces the instance.
    set_secret(&p, "DB_PASSWORD", SECOND).ok();
    let out = p.run(&["plan"]);
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(
        out.stdout.contains("service.api.secrets.DB_PASSWORD")
            && out.stdout.contains("changed (secret)"),
        "{}",
        out.stdout
    );
    p.run(&["deploy", "-m", "rotate the password"]).ok();
    let second = p.wait_status("the replacement instance serving alone", |s| {
        let serving: Vec<_> = s
            .services
            .iter()
            .flat_map(|s| &s.instances)
            .filter(|i| i.service == "api" && i.traffic_pct.is_some_and(|t| t > 0.0))
            .collect();
        !serving.is_empty() && serving.iter().all(|i| i.id != first[0].id)
    });
    let serving: Vec<_> = second
        .services
        .iter()
        .flat_map(|s| &s.instances)
        .filter(|i| i.service == "api" && i.traffic_pct.is_some_and(|t| t > 0.0))
        .collect();
    assert_eq!(serving.len(), 1, "{second:?}");
    assert_ne!(serving[0].pid, first[0].pid);
    assert_eq!(serving[0].revision, 2);
    let env = instance_env(port);
    assert_eq!(env["DB_PASSWORD"], SECOND);
    assert_eq!(env["DSN"], format!("db://app:{SECOND}@here"));

    // A new revision, whose diff names the secret and nothing more.
    assert_eq!(p.history().len(), 2);
    let out = p.run(&["diff", "1", "2"]).ok();
    assert!(
        out.stdout.contains("service.api.secrets.DB_PASSWORD")
            && out.stdout.contains("changed (secret)"),
        "{}",
        out.stdout
    );

    assert_nowhere(&p, &[FIRST, SECOND]);
    // Each change of the store is on the timeline with who made it, by name only.
    let events: Vec<tandem_api::Event> =
        serde_json::from_str(&p.run(&["timeline", "-o", "json", "-n", "1000"]).ok().stdout)
            .unwrap();
    let set: Vec<&tandem_api::Event> = events
        .iter()
        .filter(|e| e.kind == tandem_api::EventKind::SecretSet)
        .collect();
    assert_eq!(set.len(), 2, "{events:#?}");
    assert!(
        set.iter()
            .all(|e| e.message.contains("secret DB_PASSWORD set") && e.who.is_some())
    );

    // Removed: listed no more, and a deploy that needs it fails again.
    p.run(&["secret", "rm", "DB_PASSWORD"]).ok();
    let out = p.run(&["timeline", "-n", "5"]).ok();
    assert!(out.stdout.contains("secret-removed"), "{}", out.stdout);
    let out = p.run(&["secret", "list", "-o", "json"]).ok();
    assert_eq!(out.stdout.trim(), "[]");
    p.set_system(&format!("{}\n", system(port).replace("DSN", "DSN2")));
    let out = p.run(&["deploy"]);
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        out.stderr.contains("'DB_PASSWORD', which is not set"),
        "{}",
        out.stderr
    );
}
