//! `tandem test rules` against Prometheus's own rule-test files, tandem's fixtures, and —
//! when the `promtool` binary is installed (Debian package `prometheus`) — promtool's
//! verdicts on the same files.
//!
//! tandem's PromQL engine has Prometheus 3 semantics: range and lookback windows are
//! left-open. Prometheus's v2.42 `unittest.yml` (in /work/shared/promtool-testdata) has four
//! expectations that Prometheus 3 changed for exactly that reason; tandem must fail those
//! four and nothing else, and pass the Prometheus 3 edition in `fixtures/prom3`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn shared() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/promtool-testdata");
    assert!(
        dir.join("unittest.yml").is_file() && dir.join("rules.yml").is_file(),
        "Prometheus's rule-test data is missing: expected unittest.yml and rules.yml in {} \
         (the shared folder beside the repository)",
        dir.display()
    );
    dir
}

/// tandem's verdict and report for these files.
fn tandem(files: &[PathBuf]) -> (bool, String) {
    let mut out = Vec::new();
    let ok = tandem_alert::test_rules(files, &mut out).expect("writing to a Vec");
    (ok, String::from_utf8(out).expect("the report is UTF-8"))
}

/// The `(expr, time)` of every failed PromQL test in a report.
fn failed_exprs(report: &str) -> Vec<(String, String)> {
    report
        .lines()
        .filter_map(|l| l.strip_prefix("    expr: "))
        .map(|l| {
            let (expr, rest) = l.rsplit_once(", time: ").expect("expr line has a time");
            (expr.to_string(), rest.trim_end_matches(',').to_string())
        })
        .collect()
}

#[test]
fn prometheus_testdata_fails_only_where_prometheus_3_changed_the_windows() {
    let (ok, report) = tandem(&[shared().join("unittest.yml")]);
    assert!(!ok, "{report}");
    assert!(report.contains("/unittest.yml\n  FAILED:\n"), "{report}");
    let expected: Vec<(String, String)> = [
        (r#""timestamp(test_missing)""#, "5m"),
        (r#""count_over_time(fixed_data[1h])""#, "1h"),
        (r#""job:test:count_over_time1m""#, "1m"),
        (r#""job:test:count_over_time1m""#, "2m"),
    ]
    .iter()
    .map(|(e, t)| (e.to_string(), t.to_string()))
    .collect();
    assert_eq!(failed_exprs(&report), expected, "{report}");
    // Nothing else failed: no alert test, no rule evaluation.
    assert!(!report.contains("alertname:"), "{report}");
    assert!(!report.contains("rule:"), "{report}");
    assert!(
        report.contains("        exp: {} 6.1E+01\n        got: {} 6E+01\n"),
        "{report}"
    );
}

#[test]
fn prometheus_3_edition_of_the_testdata_passes() {
    let file = fixtures().join("prom3/unittest.yml");
    let (ok, report) = tandem(std::slice::from_ref(&file));
    assert!(ok, "{report}");
    assert_eq!(
        report,
        format!("Unit Testing:  {}\n  SUCCESS\n\n", file.display())
    );
}

#[test]
fn own_fixtures_pass_and_fail_with_a_readable_diff() {
    let agree = fixtures().join("agree");
    let (ok, report) = tandem(&[agree.join("alerts.yml")]);
    assert!(ok, "{report}");

    let (ok, report) = tandem(&[agree.join("alerts.yml"), agree.join("fails.yml")]);
    assert!(!ok);
    let (first, second) = report
        .split_once("Unit Testing:  ")
        .and_then(|(_, rest)| rest.split_once("Unit Testing:  "))
        .expect("one section per file");
    assert!(first.ends_with("alerts.yml\n  SUCCESS\n\n"), "{report}");
    assert!(second.starts_with(&format!(
        "{}\n  FAILED:\n",
        agree.join("fails.yml").display()
    )));
    // An alert expected at 2m that is still pending (for: 3m).
    assert!(
        second.contains(
            "    alertname: InstanceDown, time: 2m, \n        exp:[\n            0:\n              Labels:{alertname=\"InstanceDown\", instance=\"a:1\", job=\"api\", severity=\"page\"}\n              Annotations:{summary=\"Instance a:1 of API down\", value=\"0.00 / 0\"}\n            ], \n        got:[]\n        diff:\n          - {alertname=\"InstanceDown\", instance=\"a:1\", job=\"api\", severity=\"page\"} {summary=\"Instance a:1 of API down\", value=\"0.00 / 0\"}\n"
        ),
        "{second}"
    );
    // A wrong annotation: the diff shows both versions.
    assert!(second.contains("          - {alertname=\"InstanceDown\", instance=\"a:1\", job=\"api\", severity=\"page\"} {summary=\"Instance a:1 is down\", value=\"0.00 / 0\"}\n          + {alertname=\"InstanceDown\", instance=\"a:1\", job=\"api\", severity=\"page\"} {summary=\"Instance a:1 of API down\", value=\"0.00 / 0\"}\n"), "{second}");
    // A wrong value.
    assert!(second.contains("    expr: \"job:up:sum\", time: 1m,\n        exp: {__name__=\"job:up:sum\", job=\"api\"} 2E+00\n        got: {__name__=\"job:up:sum\", job=\"api\"} 1E+00\n        diff:\n          - {__name__=\"job:up:sum\", job=\"api\"} 2E+00\n          + {__name__=\"job:up:sum\", job=\"api\"} 1E+00\n"), "{second}");

    // A rule file that does not load fails its tests, naming file and line.
    let (ok, report) = tandem(&[agree.join("bad_rules_test.yml")]);
    assert!(!ok);
    assert!(
        report.contains("bad_rules.yml:7: rule 'Broken': invalid PromQL in 'expr'"),
        "{report}"
    );

    // A missing test file is a failure of that file, not a crash.
    let (ok, report) = tandem(&[agree.join("no-such-file.yml")]);
    assert!(!ok);
    assert!(report.contains("  FAILED:\ncannot read "), "{report}");
}

#[test]
fn verdicts_agree_with_promtool() {
    let Ok(version) = Command::new("promtool").arg("--version").output() else {
        println!(
            "skipped: promtool is not on PATH (Debian package `prometheus`; scripts/test installs it)"
        );
        return;
    };
    println!(
        "{}",
        String::from_utf8_lossy(&version.stdout)
            .lines()
            .next()
            .unwrap_or("")
    );
    let agree = fixtures().join("agree");
    // (file, promtool 2.42's verdict, tandem's verdict)
    let cases = [
        (agree.join("alerts.yml"), true, true),
        (agree.join("fails.yml"), false, false),
        (agree.join("bad_rules_test.yml"), false, false),
        // Where Prometheus 2 and 3 differ (left-open windows), tandem is Prometheus 3.
        (shared().join("unittest.yml"), true, false),
        (fixtures().join("prom3/unittest.yml"), false, true),
    ];
    for (file, promtool_says, tandem_says) in cases {
        let out = Command::new("promtool")
            .args(["test", "rules"])
            .arg(&file)
            .output()
            .expect("promtool runs");
        let promtool_ok = out.status.success();
        assert_eq!(
            promtool_ok,
            promtool_says,
            "promtool on {}:\n{}{}",
            file.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let (ok, report) = tandem(std::slice::from_ref(&file));
        assert_eq!(ok, tandem_says, "tandem on {}:\n{report}", file.display());
    }
}
