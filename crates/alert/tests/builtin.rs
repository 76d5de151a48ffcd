//! Replay tests of the built-in rules: series generated the way tandem's collector writes
//! them (every 15 s, same names and labels), every built-in group evaluated on its own
//! interval as the server does, recording-rule results fed back into the store. Each test
//! prints what it measured (lead times, detection delays, false alerts).

use std::collections::BTreeMap;
use std::path::Path;

use tandem_alert::{AlertState, EvalContext, GroupState, RuleGroup, builtin_groups, inline_group};
use tandem_promql::Engine;
use tandem_promql::testing::MemQuerier;
use tandem_spec::System;
use tandem_tsdb::model::{Labels, Sample};

const SCRAPE_MS: i64 = 15_000;
const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;
const MIB: f64 = 1024.0 * 1024.0;
const BUCKETS: [f64; 18] = [
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    20.0, 30.0, 60.0,
];

/// Deterministic noise (splitmix64), so a failure replays exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.next().max(1e-12), self.next());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

fn system(text: &str) -> System {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tandem.toml");
    std::fs::write(&path, text).unwrap();
    tandem_spec::load(Path::new(&path), "dev").expect("valid system file")
}

/// One alert's change, as the timeline would show it.
#[derive(Clone, Debug)]
struct Change {
    rule: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    to: AlertState,
    at_ms: i64,
}

/// A store, the groups and their states, and a clock.
struct Sim {
    store: MemQuerier,
    engine: Engine,
    groups: Vec<(RuleGroup, GroupState)>,
    changes: Vec<Change>,
    t: i64,
    rng: Rng,
    /// Cumulative counters of the proxy and the instances, by labels.
    counters: BTreeMap<Vec<(String, String)>, f64>,
}

impl Sim {
    fn new(system: &System, extra: Vec<RuleGroup>) -> Sim {
        let mut groups: Vec<(RuleGroup, GroupState)> = builtin_groups(system)
            .into_iter()
            .chain(extra)
            .map(|g| {
                let s = GroupState::new(&g);
                (g, s)
            })
            .collect();
        groups.sort_by_key(|(g, _)| g.name.clone());
        Sim {
            store: MemQuerier::new(),
            engine: Engine::new(),
            groups,
            changes: Vec::new(),
            // A round hour, so group intervals and scrapes line up as on a server.
            t: 1_700_000_000_000 / HOUR * HOUR,
            rng: Rng(42),
            counters: BTreeMap::new(),
        }
    }

    fn gauge(&mut self, name: &str, labels: &[(&str, &str)], v: f64) {
        let l = Labels::new(labels.iter().copied().chain([("__name__", name)]));
        self.store.add(l, [Sample { t: self.t, v }]);
    }

    fn count(&mut self, name: &str, labels: &[(&str, &str)], add: f64) {
        let key: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .chain([("__name__".to_string(), name.to_string())])
            .collect();
        let c = self.counters.entry(key).or_insert(0.0);
        *c += add;
        let v = *c;
        self.gauge(name, labels, v);
    }

    /// One scrape's worth of HTTP traffic: `rps` requests a second, a share `errors` of
    /// them 5xx, durations log-normal around `median` seconds.
    fn http(&mut self, labels: &[(&str, &str)], rps: f64, errors: f64, median: f64) {
        let secs = SCRAPE_MS as f64 / 1000.0;
        let n = (rps * secs + (rps * secs).sqrt() * self.rng.normal())
            .round()
            .max(0.0);
        let mut bad = 0.0;
        let mut buckets = [0.0; 18];
        for _ in 0..n as u64 {
            if self.rng.next() < errors {
                bad += 1.0;
            }
            let d = median * (0.5 * self.rng.normal()).exp();
            if let Some(i) = BUCKETS.iter().position(|&b| d <= b) {
                buckets[i] += 1.0;
            }
        }
        let mut with_code = labels.to_vec();
        with_code.push(("code", "2xx"));
        self.count("tandem_http_requests_total", &with_code, n - bad);
        with_code.pop();
        with_code.push(("code", "5xx"));
        self.count("tandem_http_requests_total", &with_code, bad);
        let mut cumulative = 0.0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += buckets[i];
            let le = format!("{b}");
            let mut l = labels.to_vec();
            l.push(("le", &le));
            let key_cum = cumulative;
            self.count_bucket(&l, key_cum);
        }
        let mut l = labels.to_vec();
        l.push(("le", "+Inf"));
        self.count_bucket(&l, n);
    }

    fn count_bucket(&mut self, labels: &[(&str, &str)], add: f64) {
        self.count("tandem_http_request_duration_seconds_bucket", labels, add);
    }

    /// Evaluates every group due at the current time (a multiple of its interval).
    fn eval(&mut self) {
        let t = self.t;
        for (group, state) in &mut self.groups {
            let every = group.interval.as_millis() as i64;
            if t % every != 0 {
                continue;
            }
            let ctx = EvalContext {
                engine: &self.engine,
                querier: &self.store,
                external_labels: &BTreeMap::new(),
                external_url: "",
            };
            let out = group.eval(&ctx, t, state);
            assert!(
                out.errors.is_empty(),
                "{} failed: {:?}",
                group.name,
                out.errors
            );
            for (l, s) in out.samples {
                self.store.add(l, [s]);
            }
            self.changes.extend(out.changes.into_iter().map(|c| Change {
                rule: c.rule,
                labels: c.labels,
                annotations: c.annotations,
                to: c.to,
                at_ms: c.at_ms,
            }));
        }
    }

    /// Advances one scrape: `scrape` writes this round's samples, then due groups run.
    fn tick(&mut self, scrape: &mut impl FnMut(&mut Sim)) {
        self.t += SCRAPE_MS;
        scrape(self);
        self.eval();
    }

    fn run_for(&mut self, ms: i64, mut scrape: impl FnMut(&mut Sim)) {
        let end = self.t + ms;
        while self.t < end {
            self.tick(&mut scrape);
        }
    }

    /// Firings of `rule` since `since`.
    fn fired(&self, rule: &str, since: i64) -> Vec<&Change> {
        self.changes
            .iter()
            .filter(|c| c.rule == rule && c.to == AlertState::Firing && c.at_ms >= since)
            .collect()
    }
}

fn minutes(ms: i64) -> f64 {
    ms as f64 / MIN as f64
}

const SHOP: &str = r#"
[service.api]
run = "./api"
health = { http = "/healthz" }
limits = { memory = "256MiB" }
slo = { availability = 0.999, latency_p99 = "300ms", window = "30d" }
"#;

/// Steady traffic with daily swings and noise: web -> api, 20 requests/s at noon, 1 %
/// errors, 20 ms median.
fn steady(sim: &mut Sim, errors: f64, median: f64) {
    let day = (sim.t % (24 * HOUR)) as f64 / (24 * HOUR) as f64;
    let rps = 20.0 * (1.0 + 0.5 * (std::f64::consts::TAU * day).sin());
    let labels = [
        ("env", "dev"),
        ("service", "api"),
        ("caller", "web"),
        ("revision", "1"),
    ];
    sim.http(&labels, rps, errors, median);
}

/// Without an SLO: 1 % errors would be a 10x burn of a 99.9 % objective.
const PLAIN: &str = r#"
[service.api]
run = "./api"
health = { http = "/healthz" }
"#;

const ANOMALIES: [&str; 4] = [
    "ErrorRateAnomaly",
    "LatencyAnomaly",
    "EdgeErrorRateAnomaly",
    "EdgeLatencyAnomaly",
];

#[test]
fn anomalies_stay_quiet_on_a_noisy_steady_day() {
    let mut sim = Sim::new(&system(PLAIN), Vec::new());
    let start = sim.t;
    sim.run_for(24 * HOUR, |s| steady(s, 0.01, 0.02));
    let mut total = 0;
    for rule in ANOMALIES {
        let n = sim.fired(rule, start).len();
        println!("{rule}: {n} false alert(s) in a simulated day");
        total += n;
    }
    assert!(total <= 1, "{total} false anomaly alerts in a day");
}

#[test]
fn anomalies_catch_a_step_change_within_five_minutes() {
    let mut sim = Sim::new(&system(PLAIN), Vec::new());
    sim.run_for(3 * HOUR, |s| steady(s, 0.01, 0.02));
    let step = sim.t;
    sim.run_for(30 * MIN, |s| steady(s, 0.03, 0.04));
    for rule in ANOMALIES {
        let first = sim.fired(rule, step);
        let first = first
            .first()
            .unwrap_or_else(|| panic!("{rule} did not fire"));
        let delay = first.at_ms - step;
        println!(
            "{rule}: fired {:.1} min after the step: {}",
            minutes(delay),
            first.annotations["summary"]
        );
        assert!(delay <= 5 * MIN, "{rule} took {:.1} min", minutes(delay));
    }
}

/// Memory of one instance: `level(t)` bytes, with 2 MiB of noise; `cgroup` picks
/// `usage` (with cgroups) or `rss` (without).
fn memory(sim: &mut Sim, limit: f64, bytes: f64, cgroup: bool) {
    let labels = [
        ("env", "dev"),
        ("service", "api"),
        ("instance", "api-0-abcd"),
        ("revision", "1"),
    ];
    let noisy = bytes + 2.0 * MIB * sim.rng.normal();
    let name = if cgroup {
        "tandem_instance_memory_usage_bytes"
    } else {
        "tandem_instance_memory_rss_bytes"
    };
    sim.gauge(name, &labels, noisy);
    sim.gauge("tandem_instance_memory_limit_bytes", &labels, limit);
    sim.gauge("tandem_instance_up", &labels, 1.0);
}

/// Runs a leak from `base` growing `per_min` bytes a minute after an hour at rest, until
/// the limit; returns (forecast fired, static 90 % fired, limit reached) in ms from the
/// start of the leak.
fn leak(limit: f64, base: f64, per_min: f64, cgroup: bool) -> (i64, Option<i64>, i64, String) {
    let static_rule = tandem_spec::AlertRule {
        name: "Static90".into(),
        expr: "(tandem_instance_memory_usage_bytes or tandem_instance_memory_rss_bytes) > 0.9 * tandem_instance_memory_limit_bytes".into(),
        for_: None,
        keep_firing_for: None,
        labels: BTreeMap::new(),
        annotations: BTreeMap::new(),
    };
    let inline = inline_group(&[static_rule], tandem_alert::DEFAULT_INTERVAL).unwrap();
    let mut sim = Sim::new(&system(SHOP), vec![inline]);
    sim.run_for(HOUR, |s| memory(s, limit, base, cgroup));
    let start = sim.t;
    let full = ((limit - base) / per_min * MIN as f64) as i64;
    sim.run_for(full, |s| {
        let level = base + per_min * minutes(s.t - start);
        memory(s, limit, level, cgroup)
    });
    let forecast = sim.fired("MemoryExhaustionForecast", start);
    let forecast = forecast.first().expect("the forecast fired");
    let statics = sim
        .fired("Static90", start)
        .first()
        .map(|c| c.at_ms - start);
    (
        forecast.at_ms - start,
        statics,
        full,
        forecast.annotations["summary"].clone(),
    )
}

#[test]
fn memory_forecast_fires_long_before_the_limit() {
    // A fast leak: 64 MiB to 256 MiB in 2 hours, with cgroups.
    let (forecast, statics, full, summary) =
        leak(256.0 * MIB, 64.0 * MIB, 192.0 * MIB / 120.0, true);
    let statics = statics.expect("the static rule fired");
    println!(
        "fast leak (limit in {:.0} min): forecast at {:.1} min, {:.1} min before the limit, {:.1} min before a static 90 % rule; '{summary}'",
        minutes(full),
        minutes(forecast),
        minutes(full - forecast),
        minutes(statics - forecast)
    );
    assert!(
        forecast < statics,
        "the forecast came after the static rule"
    );
    assert!(
        full - forecast >= 30 * MIN,
        "only {:.1} min of warning",
        minutes(full - forecast)
    );
    assert!(summary.contains("256MiB limit in about"), "{summary}");

    // The example's pace: examples/shop's api (128 MiB limit, about 20 MiB at rest, no
    // cgroup so RSS) with LEAK_MB_PER_MIN=1.
    let (forecast, statics, full, summary) = leak(128.0 * MIB, 20.0 * MIB, MIB, false);
    println!(
        "example pace (1 MiB/min, limit in {:.0} min): forecast at {:.1} min (memory about {:.0} MiB of 128), {:.1} min before the limit, {:.1} min before a static 90 % rule; '{summary}'",
        minutes(full),
        minutes(forecast),
        20.0 + minutes(forecast),
        minutes(full - forecast),
        statics.map_or(f64::NAN, |s| minutes(s - forecast)),
    );
    assert!(full - forecast >= 30 * MIN);
}

#[test]
fn slo_burn_pages_for_a_fast_burn_not_for_a_trickle() {
    let mut sim = Sim::new(&system(SHOP), Vec::new());
    let start = sim.t;
    // 0.05 % errors is half the 0.1 % budget: within it.
    sim.run_for(6 * HOUR, |s| steady(s, 0.0005, 0.02));
    for rule in ["ErrorBudgetBurnFast", "ErrorBudgetBurnSlow"] {
        assert!(
            sim.fired(rule, start).is_empty(),
            "{rule} fired for a trickle"
        );
    }
    let burn = sim.t;
    sim.run_for(HOUR, |s| steady(s, 0.10, 0.02));
    let fast = sim.fired("ErrorBudgetBurnFast", burn);
    let fast = fast.first().expect("fast burn pages");
    println!(
        "SLO: 10 % errors (100x burn) paged after {:.1} min: {}",
        minutes(fast.at_ms - burn),
        fast.annotations["summary"]
    );
    assert_eq!(fast.labels["slo"], "availability");
    assert_eq!(fast.labels["severity"], "page");
}

#[test]
fn crash_loops_and_oom_kills_fire() {
    let mut sim = Sim::new(&system(SHOP), Vec::new());
    let labels = [
        ("env", "dev"),
        ("service", "api"),
        ("instance", "api-0-abcd"),
        ("revision", "1"),
    ];
    // One restart an hour is no crash loop.
    let start = sim.t;
    sim.run_for(3 * HOUR, |s| {
        let restart = if (s.t - start) % HOUR == 0 { 1.0 } else { 0.0 };
        s.count("tandem_instance_restarts_total", &labels, restart);
        s.count("tandem_instance_oom_kills_total", &labels, 0.0);
    });
    assert!(sim.fired("CrashLoop", start).is_empty());
    // Then a restart every 2 minutes, and an OOM kill every 10.
    let loop_start = sim.t;
    sim.run_for(30 * MIN, |s| {
        let since = s.t - loop_start;
        s.count(
            "tandem_instance_restarts_total",
            &labels,
            if since % (2 * MIN) == 0 { 1.0 } else { 0.0 },
        );
        s.count(
            "tandem_instance_oom_kills_total",
            &labels,
            if since % (10 * MIN) == 0 { 1.0 } else { 0.0 },
        );
    });
    let crash = sim.fired("CrashLoop", loop_start);
    let crash = crash.first().expect("CrashLoop fired");
    let oom = sim.fired("RepeatedOomKills", loop_start);
    let oom = oom.first().expect("RepeatedOomKills fired");
    println!(
        "CrashLoop after {:.1} min: {}\nRepeatedOomKills after {:.1} min: {}",
        minutes(crash.at_ms - loop_start),
        crash.annotations["summary"],
        minutes(oom.at_ms - loop_start),
        oom.annotations["summary"]
    );
    assert_eq!(crash.labels["service"], "api");
}

#[test]
fn a_worse_revision_is_flagged_naming_both() {
    let mut sim = Sim::new(&system(SHOP), Vec::new());
    let serve = |s: &mut Sim, revision: &str, errors: f64, median: f64, mem: f64| {
        let instance = format!("api-{revision}-abcd");
        let labels = [
            ("env", "dev"),
            ("service", "api"),
            ("instance", instance.as_str()),
            ("revision", revision),
        ];
        s.gauge("tandem_instance_up", &labels, 1.0);
        let noisy = mem + MIB * s.rng.normal();
        s.gauge("tandem_instance_memory_usage_bytes", &labels, noisy);
        let http = [
            ("env", "dev"),
            ("service", "api"),
            ("caller", "web"),
            ("revision", revision),
        ];
        s.http(&http, 20.0, errors, median);
    };
    sim.run_for(2 * HOUR, |s| serve(s, "1", 0.01, 0.02, 60.0 * MIB));
    let deploy = sim.t;
    sim.run_for(40 * MIN, |s| serve(s, "2", 0.05, 0.05, 160.0 * MIB));
    for rule in [
        "ErrorRateRegression",
        "LatencyRegression",
        "MemoryRegression",
    ] {
        let fired = sim.fired(rule, deploy);
        let first = fired
            .first()
            .unwrap_or_else(|| panic!("{rule} did not fire"));
        println!(
            "{rule}: {:.1} min after the deploy: {}",
            minutes(first.at_ms - deploy),
            first.annotations["summary"]
        );
        assert_eq!(first.labels["revision"], "2");
        assert_eq!(first.labels["previous_revision"], "1");
        assert!(first.annotations["summary"].contains("revision 1"));
    }
    // The previous revision itself is never flagged.
    assert!(
        sim.changes
            .iter()
            .all(|c| c.labels.get("revision").is_none_or(|r| r != "1")
                || !c.rule.ends_with("Regression"))
    );
}
