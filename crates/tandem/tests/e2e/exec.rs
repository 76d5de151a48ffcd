//! `tandem exec SERVICE -- COMMAND` through the binary: the command runs as tandem's own
//! process with the service's environment in the live revision (its `cwd`, declared `env`,
//! the injected `<DEP>_URL` of its own edge listener, its secrets, `TANDEM_EXEC`, no
//! `PORT`), with the user's stdin and its own exit status; also for a service with no
//! instances. Unknown services, missing commands, no server and no live revision fail with
//! hints, and each run is on the timeline with who ran what, never the environment.

use super::support::*;
use crate::app_service;
use std::io::Write;
use std::process::Stdio;

const TOKEN: &str = "exec-Token-93be41";
const GREETING: &str = "hello-from-web";

/// `tandem exec ARGS...` with `input` piped to its stdin.
fn exec_with_input(p: &Project, args: &[&str], input: &str) -> Run {
    let mut command = p.command(&[&["exec"][..], args].concat());
    let mut child = command
        .env("PORT", "4242")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    }
}

fn exec(p: &Project, args: &[&str]) -> Run {
    exec_with_input(p, args, "")
}

#[test]
fn exec_runs_a_command_with_the_live_environment_of_a_service_and_records_it() {
    let (api, web) = (free_port(), free_port());
    let p = Project::new(&format!(
        "{}{}[service.tool]\nrun = \"python3 app.py\"\nreplicas = 0\nenv = {{ MODE = \"maintenance\" }}\n",
        app_service("api", api, ""),
        app_service(
            "web",
            web,
            &format!(
                "depends_on = [\"api\"]\ncwd = \"webdir\"\nsecrets = [\"API_TOKEN\"]\nenv = {{ GREETING = \"{GREETING}\", BEARER = \"Bearer ${{API_TOKEN}}\" }}"
            )
        ),
    ));
    std::fs::create_dir(p.path().join("webdir")).unwrap();
    p.write("webdir/app.py", APP);

    // No server yet: say so, and what starts one.
    let out = exec(&p, &["web", "--", "true"]);
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        out.stderr
            .contains("no tandem server runs for environment 'dev'")
            && out.stderr.contains("`tandem up` starts one"),
        "{}",
        out.stderr
    );

    // A server, but nothing live yet.
    let mut set = p
        .command(&["secret", "set", "API_TOKEN"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    set.stdin
        .take()
        .unwrap()
        .write_all(TOKEN.as_bytes())
        .unwrap();
    assert!(set.wait().unwrap().success());
    let out = exec(&p, &["web", "--", "true"]);
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        out.stderr.contains("no revision is live in dev") && out.stderr.contains("tandem up"),
        "{}",
        out.stderr
    );

    p.up().ok();

    // The service's name, web's own edge listener to api, a declared value, a secret (also
    // through `${API_TOKEN}`), TANDEM_EXEC, no PORT (the caller's 4242 is removed), the
    // service's folder; and the command's own exit status.
    let script = "echo $TANDEM_SERVICE $API_URL $GREETING; echo $API_TOKEN; echo $BEARER; \
                  echo exec=$TANDEM_EXEC port=${PORT-none} revision=$TANDEM_REVISION; pwd; exit 7";
    let out = exec(&p, &["web", "--", "sh", "-c", script]);
    assert_eq!(out.code, 7, "{}", out.all());
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 5, "{}", out.all());
    let words: Vec<&str> = lines[0].split(' ').collect();
    assert_eq!(words.len(), 3, "{}", lines[0]);
    assert_eq!(words[0], "web");
    let edge: u16 = words[1]
        .strip_prefix("http://127.0.0.1:")
        .unwrap_or_else(|| panic!("not a loopback URL: {}", words[1]))
        .parse()
        .unwrap();
    assert_ne!(edge, api, "web reaches api through its edge listener");
    let (_, instance_env) = http_get(web, "/env").unwrap();
    let instance_env: serde_json::Value = serde_json::from_str(&instance_env).unwrap();
    assert_eq!(instance_env["API_URL"], words[1], "the instances' own URL");
    assert_eq!(
        http_get(edge, "/hello").unwrap(),
        (200, "hello\n".to_string())
    );
    assert_eq!(words[2], GREETING);
    assert_eq!(lines[1], TOKEN);
    assert_eq!(lines[2], format!("Bearer {TOKEN}"));
    assert_eq!(lines[3], "exec=1 port=none revision=1");
    let webdir = p.path().join("webdir").canonicalize().unwrap();
    assert_eq!(std::path::Path::new(lines[4]), webdir);

    // The user's stdin is the command's.
    let out = exec_with_input(&p, &["web", "--", "cat"], "typed by the user\n");
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "typed by the user\n"),
        "{}",
        out.all()
    );

    // A service with no instances has an environment too.
    assert!(p.instances("tool").is_empty());
    let out = exec(
        &p,
        &["tool", "--", "sh", "-c", "echo $TANDEM_SERVICE $MODE"],
    );
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "tool maintenance\n"),
        "{}",
        out.all()
    );

    // Unknown service: a did-you-mean with the live revision's services.
    let out = exec(&p, &["wbe", "--", "true"]);
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        out.stderr
            .contains("service 'wbe' is not in the live revision (1) of dev")
            && out.stderr.contains("did you mean 'web'?")
            && out.stderr.contains("api, tool, web"),
        "{}",
        out.stderr
    );

    // A command that does not exist: 127, as shells answer.
    let out = exec(&p, &["web", "--", "no-such-command-8c1f"]);
    assert_eq!(out.code, 127, "{}", out.all());
    assert!(
        out.stderr
            .contains("cannot run 'no-such-command-8c1f' in service 'web': command not found"),
        "{}",
        out.stderr
    );

    // No command, or one without `--`: usage errors.
    assert_eq!(exec(&p, &["web"]).code, 2);
    assert_eq!(exec(&p, &["web", "--"]).code, 2);
    assert_eq!(exec(&p, &["web", "true"]).code, 2);

    // On the timeline: who ran which command in which service, never the environment.
    let events: Vec<tandem_api::Event> =
        serde_json::from_str(&p.run(&["timeline", "-o", "json", "-n", "1000"]).ok().stdout)
            .unwrap();
    let runs: Vec<&tandem_api::Event> = events
        .iter()
        .filter(|e| e.kind == tandem_api::EventKind::Exec)
        .collect();
    // Refused before the server answered (no server, nothing live, unknown service, usage)
    // is not recorded; a command that is then not found is.
    assert_eq!(runs.len(), 4, "{events:#?}");
    let first = runs
        .iter()
        .find(|e| {
            e.message
                .contains("sh -c 'echo $TANDEM_SERVICE $API_URL $GREETING;")
        })
        .unwrap_or_else(|| panic!("no exec event with the command line: {runs:#?}"));
    assert_eq!(first.service.as_deref(), Some("web"));
    assert_eq!(first.revision, Some(1));
    assert!(first.who.as_deref().is_some_and(|w| !w.is_empty()));
    assert!(runs.iter().any(|e| e.service.as_deref() == Some("tool")));
    let timeline = p.run(&["timeline", "-n", "1000"]).ok().stdout;
    assert!(
        timeline.contains("exec") && timeline.contains("ran `sh -c 'echo $TANDEM_SERVICE"),
        "{timeline}"
    );
    let recorded = serde_json::to_string(&runs).unwrap();
    for value in [TOKEN, GREETING] {
        assert!(
            !recorded.contains(value),
            "'{value}' is recorded: {recorded}"
        );
    }
    let log = std::fs::read_to_string(p.data_dir().join("server.log")).unwrap();
    for text in [&timeline, &log] {
        assert!(!text.contains(TOKEN), "the secret shows in:\n{text}");
    }
}
