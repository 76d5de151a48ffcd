//! The built-in rules: what every environment watches without a line of configuration.
//!
//! They are ordinary Prometheus rule groups named `tandem.builtin.*` (file `builtin`), so
//! they run, persist, show in `/api/v1/rules` and `tandem alerts`, and can be copied into a
//! Prometheus, like any rule. Every alert carries `severity` (`page` or `ticket`) and
//! `builtin="true"`, and its summary says what will happen and when. `[monitoring]
//! builtin_alerts` switches each family off and sets the forecast horizon.
//!
//! The thresholds are decisions, written once here and documented in docs/alerts.md:
//!
//! - **Forecasts** fit a line to the last 30 minutes (`deriv`, and `predict_linear(…, 0)`
//!   for a noise-free "now"), alert when that line reaches the limit within the horizon,
//!   and only when the last hour's line also reaches it within twice the horizon (a trend,
//!   not a burst) and the value is already a quarter of the way there. The value is the
//!   time left in seconds.
//! - **Anomalies** compare each service's and edge's 5-minute error ratio and p99 with the
//!   median of its own last 6 hours, plus a band of 5 robust standard deviations (1.4826 x
//!   the median absolute deviation) but at least half the median and an absolute floor, so
//!   a flat series does not alert on a blip. Quiet until there is an hour of history and
//!   while traffic is under 1 request/s.
//! - **SLOs** are the SRE workbook's multi-window, multi-burn-rate alerts, their windows
//!   scaled by `window / 30d`.
//! - **Regressions** compare a revision with the one that ran before it (the most recent
//!   revision of the service whose instances are all gone), over that revision's last hour.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use tandem_spec::System;

use crate::format::format_duration;
use crate::rules::{Rule, RuleGroup, RuleKind};

/// The `file` of every built-in group.
pub const BUILTIN_FILE: &str = "builtin";

/// Restarts of one service within [`CRASH_LOOP_WINDOW`] that make a crash loop.
pub const CRASH_LOOP_RESTARTS: u32 = 3;
pub const CRASH_LOOP_WINDOW: &str = "10m";
/// OOM kills of one service within [`OOM_WINDOW`] that alert.
pub const OOM_KILLS: u32 = 2;
pub const OOM_WINDOW: &str = "30m";
/// The file-descriptor limit forecasts aim at: Linux's default soft `RLIMIT_NOFILE`.
/// The real limit of each process is not collected.
pub const FD_LIMIT: u32 = 1024;
/// Forecasts stay quiet below this share of the limit.
pub const FORECAST_MIN_SHARE: f64 = 0.25;
/// Anomaly band: robust standard deviations above the median.
pub const ANOMALY_SIGMAS: f64 = 5.0;
/// Anomaly band: at least this share of the median above it.
pub const ANOMALY_MIN_RISE: f64 = 0.5;
/// Anomaly band floors: error ratio (1 percentage point) and latency (5 ms).
pub const ANOMALY_ERROR_FLOOR: f64 = 0.01;
pub const ANOMALY_LATENCY_FLOOR: f64 = 0.005;
/// Anomalies need this much traffic (requests per second over 5 minutes).
pub const ANOMALY_MIN_RPS: f64 = 1.0;
/// Anomalies need this many baseline points (an hour at the group's 30 s).
pub const ANOMALY_MIN_HISTORY: u32 = 120;

const ANOMALY_INTERVAL: Duration = Duration::from_secs(30);
const SLO_INTERVAL: Duration = Duration::from_secs(30);
const INSTANCES_INTERVAL: Duration = Duration::from_secs(30);
const FORECAST_INTERVAL: Duration = Duration::from_secs(60);
const REGRESSION_INTERVAL: Duration = Duration::from_secs(60);

/// The latency buckets of `tandem_http_request_duration_seconds` (see docs/monitoring.md).
const LATENCY_BUCKETS: [f64; 18] = [
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    20.0, 30.0, 60.0,
];

/// The built-in rule groups for `system`, as `[monitoring] builtin_alerts` switches them.
pub fn builtin_groups(system: &System) -> Vec<RuleGroup> {
    let on = &system.monitoring.builtin_alerts;
    let mut groups = Vec::new();
    let mut instances = Vec::new();
    if on.crash_loop {
        instances.push(crash_loop());
    }
    if on.oom_kills {
        instances.push(oom_kills());
    }
    push_group(
        &mut groups,
        "tandem.builtin.instances",
        INSTANCES_INTERVAL,
        instances,
    );
    let horizon = on.forecast_horizon.0;
    let mut forecasts = Vec::new();
    if on.memory_forecast {
        forecasts.push(memory_forecast(horizon));
    }
    if on.disk_forecast {
        forecasts.push(disk_forecast(horizon));
    }
    if on.fd_forecast {
        forecasts.push(fd_forecast(horizon));
    }
    push_group(
        &mut groups,
        "tandem.builtin.forecasts",
        FORECAST_INTERVAL,
        forecasts,
    );
    if on.anomalies {
        let mut rules = anomalies(Level::Service);
        rules.extend(anomalies(Level::Edge));
        push_group(
            &mut groups,
            "tandem.builtin.anomalies",
            ANOMALY_INTERVAL,
            rules,
        );
    }
    if on.slo {
        let rules = system
            .service
            .iter()
            .filter_map(|(name, s)| s.slo.as_ref().map(|slo| slo_rules(name, slo)))
            .flatten()
            .collect();
        push_group(&mut groups, "tandem.builtin.slo", SLO_INTERVAL, rules);
    }
    if on.regression {
        push_group(
            &mut groups,
            "tandem.builtin.regression",
            REGRESSION_INTERVAL,
            regression(),
        );
    }
    groups
}

fn push_group(groups: &mut Vec<RuleGroup>, name: &str, interval: Duration, rules: Vec<Rule>) {
    if rules.is_empty() {
        return;
    }
    groups.push(RuleGroup {
        name: name.to_string(),
        file: BUILTIN_FILE.to_string(),
        interval,
        query_offset: Duration::ZERO,
        limit: 0,
        rules,
    });
}

fn record(name: &str, expr: String) -> Rule {
    Rule {
        kind: RuleKind::Record,
        name: name.to_string(),
        expr,
        for_: Duration::ZERO,
        keep_firing_for: Duration::ZERO,
        labels: BTreeMap::new(),
        annotations: BTreeMap::new(),
        line: 0,
    }
}

fn alert(
    name: &str,
    expr: String,
    for_: Duration,
    severity: &str,
    summary: &str,
    description: &str,
) -> Rule {
    Rule {
        kind: RuleKind::Alert,
        name: name.to_string(),
        expr,
        for_,
        keep_firing_for: Duration::ZERO,
        labels: BTreeMap::from([
            ("severity".to_string(), severity.to_string()),
            ("builtin".to_string(), "true".to_string()),
        ]),
        annotations: BTreeMap::from([
            ("summary".to_string(), summary.to_string()),
            ("description".to_string(), description.to_string()),
        ]),
        line: 0,
    }
}

fn secs(d: Duration) -> u64 {
    d.as_secs().max(1)
}

// === crash loops and OOM kills ===

fn crash_loop() -> Rule {
    alert(
        "CrashLoop",
        format!(
            "sum by (env, service) (increase(tandem_instance_restarts_total[{CRASH_LOOP_WINDOW}])) >= {CRASH_LOOP_RESTARTS}"
        ),
        Duration::ZERO,
        "page",
        "{{ $labels.service }} is crash-looping: {{ printf \"%.0f\" $value }} restarts in the last 10 minutes",
        "Instances of {{ $labels.service }} keep exiting and tandem keeps restarting them \
         (at least 3 restarts within 10 minutes). `tandem logs {{ $labels.service }}` shows why; \
         `tandem timeline` shows each exit.",
    )
}

fn oom_kills() -> Rule {
    alert(
        "RepeatedOomKills",
        format!(
            "sum by (env, service) (increase(tandem_instance_oom_kills_total[{OOM_WINDOW}])) >= {OOM_KILLS}"
        ),
        Duration::ZERO,
        "ticket",
        "{{ $labels.service }} was killed for running out of memory {{ printf \"%.0f\" $value }} times in the last 30 minutes",
        "The kernel's OOM killer ended processes of {{ $labels.service }} at least twice within 30 \
         minutes: its memory limit is too small for its work, or it leaks. Raise limits.memory, \
         or look at the memory forecast and tandem_instance_memory_usage_bytes.",
    )
}

// === exhaustion forecasts ===

/// Time left (seconds) until a level reaches its limit: `remaining` (limit minus the
/// 30-minute line's value now) over `slope`, kept under the horizon, with the guards (the
/// last hour's trend, a share of the limit already used) applied by instance.
fn time_to_limit(
    remaining: &str,
    slope: &str,
    later: &str,
    share: &str,
    horizon: Duration,
) -> String {
    let on = "on (env, service, instance, revision)";
    format!(
        "round(\n  (({remaining}) and {on} ({share}) and {on} ({later}))\n  / {on} ({slope})\n  > 0 < {h}, 60\n)",
        h = secs(horizon)
    )
}

fn memory_forecast(horizon: Duration) -> Rule {
    let h2 = 2 * secs(horizon);
    let usage = "tandem_instance_memory_usage_bytes";
    let rss = "tandem_instance_memory_rss_bytes";
    let limit = "tandem_instance_memory_limit_bytes";
    let now = format!(
        "{limit} - on (env, service, instance, revision) (predict_linear({usage}[30m], 0) or predict_linear({rss}[30m], 0))"
    );
    let slope = format!("deriv({usage}[30m]) or deriv({rss}[30m])");
    let later = format!(
        "(predict_linear({usage}[1h], {h2}) or predict_linear({rss}[1h], {h2})) >= on (env, service, instance, revision) {limit}"
    );
    let share = format!(
        "({usage} or {rss}) >= on (env, service, instance, revision) {FORECAST_MIN_SHARE} * {limit}"
    );
    alert(
        "MemoryExhaustionForecast",
        time_to_limit(&now, &slope, &later, &share, horizon),
        Duration::from_secs(5 * 60),
        "ticket",
        &format!(
            "memory of {{{{ $labels.service }}}} ({{{{ $labels.instance }}}}) will reach its \
             {{{{ with printf \"{limit}{{instance=%q}}\" $labels.instance | query }}}}{{{{ . | first | value | humanize1024 }}}}B{{{{ end }}}} \
             limit in about {{{{ $value | humanizeDuration }}}}"
        ),
        &format!(
            "Memory of {{{{ $labels.instance }}}} has grown steadily for the last 30 minutes and the last hour; \
             at this pace the kernel kills it when it reaches the limit (an OOM kill and a restart). \
             Now {{{{ with printf \"{usage}{{instance=%q}} or {rss}{{instance=%q}}\" $labels.instance $labels.instance | query }}}}{{{{ . | first | value | humanize1024 }}}}B{{{{ end }}}}. \
             A leak, or a limit too small for the work."
        ),
    )
}

fn fd_forecast(horizon: Duration) -> Rule {
    let h2 = 2 * secs(horizon);
    let fds = "tandem_instance_open_fds";
    let now = format!("{FD_LIMIT} - predict_linear({fds}[30m], 0)");
    let slope = format!("deriv({fds}[30m])");
    let later = format!("predict_linear({fds}[1h], {h2}) >= {FD_LIMIT}");
    let share = format!("{fds} >= {}", FORECAST_MIN_SHARE * f64::from(FD_LIMIT));
    alert(
        "FdExhaustionForecast",
        time_to_limit(&now, &slope, &later, &share, horizon),
        Duration::from_secs(5 * 60),
        "ticket",
        &format!(
            "open files of {{{{ $labels.service }}}} ({{{{ $labels.instance }}}}) will reach {FD_LIMIT} in about {{{{ $value | humanizeDuration }}}}"
        ),
        &format!(
            "{{{{ $labels.instance }}}} has been opening file descriptors (files, sockets) faster than it closes them \
             for the last 30 minutes and the last hour; at {FD_LIMIT} (the usual soft limit) opening one more fails. \
             Now {{{{ with printf \"{fds}{{instance=%q}}\" $labels.instance | query }}}}{{{{ . | first | value }}}}{{{{ end }}}} open."
        ),
    )
}

fn disk_forecast(horizon: Duration) -> Rule {
    let h = secs(horizon);
    let h2 = 2 * h;
    let free = "tandem_host_data_dir_free_bytes";
    let size = "tandem_host_data_dir_size_bytes";
    let expr = format!(
        "round(\n  ((predict_linear({free}[30m], 0)\n    and on (env, instance, path) (predict_linear({free}[1h], {h2}) <= 0)\n    and on (env, instance, path) ({free} <= on (env, instance, path) {} * {size}))\n  / on (env, instance, path) -deriv({free}[30m]))\n  > 0 < {h}, 60\n)",
        1.0 - FORECAST_MIN_SHARE
    );
    alert(
        "DiskFullForecast",
        expr,
        Duration::from_secs(5 * 60),
        "page",
        &format!(
            "the disk holding {{{{ $labels.path }}}} will be full in about {{{{ $value | humanizeDuration }}}} \
             ({{{{ with printf \"{free}{{path=%q}}\" $labels.path | query }}}}{{{{ . | first | value | humanize1024 }}}}B{{{{ end }}}} free)"
        ),
        "The file system of the data directory has been filling steadily for the last 30 minutes and \
         the last hour. When it is full, tandem cannot store metrics, logs or state. Free space, or \
         look for what writes (tandem_host_data_dir_free_bytes, `du`).",
    )
}

// === anomalies ===

#[derive(Clone, Copy)]
enum Level {
    Service,
    Edge,
}

impl Level {
    fn by(self) -> &'static str {
        match self {
            Level::Service => "env, service",
            Level::Edge => "env, service, caller",
        }
    }
    fn prefix(self) -> &'static str {
        match self {
            Level::Service => "tandem:service",
            Level::Edge => "tandem:edge",
        }
    }
    fn selector(self, extra: &str) -> String {
        match self {
            Level::Service => format!("{{{extra}}}"),
            Level::Edge if extra.is_empty() => "{caller!=\"\"}".to_string(),
            Level::Edge => format!("{{caller!=\"\",{extra}}}"),
        }
    }
    fn what(self) -> &'static str {
        match self {
            Level::Service => "{{ $labels.service }}",
            Level::Edge => "{{ $labels.caller }} -> {{ $labels.service }}",
        }
    }
    /// A template pipeline selecting `metric` for the alert's service (and caller).
    fn query_of(self, metric: &str) -> String {
        match self {
            Level::Service => format!("printf \"{metric}{{service=%q}}\" $labels.service"),
            Level::Edge => format!(
                "printf \"{metric}{{service=%q,caller=%q}}\" $labels.service $labels.caller"
            ),
        }
    }
    fn alert_prefix(self) -> &'static str {
        match self {
            Level::Service => "",
            Level::Edge => "Edge",
        }
    }
}

/// The recording rules of one signal's baseline: median and MAD over 6 h.
fn baseline(signal: &str) -> Vec<Rule> {
    vec![
        record(
            &format!("{signal}:median6h"),
            format!("quantile_over_time(0.5, {signal}[6h])"),
        ),
        record(
            &format!("{signal}:absdev"),
            format!("abs({signal} - {signal}:median6h)"),
        ),
        record(
            &format!("{signal}:mad6h"),
            format!("quantile_over_time(0.5, {signal}:absdev[6h])"),
        ),
    ]
}

/// `signal` above its band, with the history and traffic guards; the value is the signal.
fn anomaly_expr(level: Level, signal: &str, floor: f64) -> String {
    let by = level.by();
    let p = level.prefix();
    let sigma = ANOMALY_SIGMAS * 1.4826;
    format!(
        "{signal}\n  > on ({by})\n  ({signal}:median6h + on ({by}) clamp_min(({sigma} * {signal}:mad6h >= on ({by}) {ANOMALY_MIN_RISE} * {signal}:median6h) or {ANOMALY_MIN_RISE} * {signal}:median6h, {floor}))\n  and on ({by}) (count_over_time({signal}[6h]) >= {ANOMALY_MIN_HISTORY})\n  and on ({by}) ({p}:requests:rate5m >= {ANOMALY_MIN_RPS})",
    )
}

fn anomalies(level: Level) -> Vec<Rule> {
    let by = level.by();
    let p = level.prefix();
    let all = level.selector("");
    let errors = level.selector("code=\"5xx\"");
    let requests = format!("{p}:requests:rate5m");
    let ratio = format!("{p}:error_ratio:rate5m");
    let p99 = format!("{p}:latency:p99_5m");
    let mut rules = vec![
        record(
            &requests,
            format!("sum by ({by}) (rate(tandem_http_requests_total{all}[5m]))"),
        ),
        record(
            &ratio,
            format!(
                "(sum by ({by}) (rate(tandem_http_requests_total{errors}[5m])) or 0 * {requests}) / on ({by}) ({requests} > 0)"
            ),
        ),
        record(
            &p99,
            format!(
                "histogram_quantile(0.99, sum by ({by}, le) (rate(tandem_http_request_duration_seconds_bucket{all}[5m]))) >= 0"
            ),
        ),
    ];
    rules.extend(baseline(&ratio));
    rules.extend(baseline(&p99));
    let what = level.what();
    let ap = level.alert_prefix();
    let min_errors_rps = 10.0 / 300.0;
    rules.push(alert(
        &format!("{ap}ErrorRateAnomaly"),
        format!(
            "{}\n  and on ({by}) ({ratio} * on ({by}) {requests} >= {min_errors_rps})",
            anomaly_expr(level, &ratio, ANOMALY_ERROR_FLOOR)
        ),
        Duration::from_secs(60),
        "ticket",
        &format!(
            "{what} fails {{{{ $value | humanizePercentage }}}} of requests, far above its usual \
             {{{{ with {} | query }}}}{{{{ . | first | value | humanizePercentage }}}}{{{{ end }}}}",
            level.query_of(&format!("{ratio}:median6h"))
        ),
        "The share of 5xx answers over the last 5 minutes is outside the band of its own last 6 hours \
         (median plus 5 robust standard deviations, at least 1.5x the median and +1 percentage point). \
         Something changed: a deploy, a dependency, the load.",
    ));
    rules.push(alert(
        &format!("{ap}LatencyAnomaly"),
        anomaly_expr(level, &p99, ANOMALY_LATENCY_FLOOR),
        Duration::from_secs(60),
        "ticket",
        &format!(
            "p99 latency of {what} is {{{{ $value | humanizeDuration }}}}, far above its usual \
             {{{{ with {} | query }}}}{{{{ . | first | value | humanizeDuration }}}}{{{{ end }}}}",
            level.query_of(&format!("{p99}:median6h"))
        ),
        "The 99th percentile of request durations over the last 5 minutes is outside the band of its \
         own last 6 hours (median plus 5 robust standard deviations, at least 1.5x the median and +5 ms).",
    ));
    rules
}

// === SLO burn rates ===

/// The SRE workbook's pairs for a 30-day window: long window, short window, burn-rate
/// factor, severity.
const BURN_PAIRS: [(u64, u64, f64, &str); 4] = [
    (3600, 300, 14.4, "page"),
    (6 * 3600, 30 * 60, 6.0, "page"),
    (86_400, 2 * 3600, 3.0, "ticket"),
    (3 * 86_400, 6 * 3600, 1.0, "ticket"),
];
const WORKBOOK_WINDOW: u64 = 30 * 86_400;

/// A workbook window scaled to an SLO window, whole seconds, at least a minute.
pub fn scaled_window(workbook_secs: u64, slo_window: Duration) -> Duration {
    let scaled = workbook_secs as f64 * slo_window.as_secs_f64() / WORKBOOK_WINDOW as f64;
    Duration::from_secs((scaled.round() as u64).max(60))
}

/// How requests slower than `latency` are counted from the histogram: the rate of the
/// bucket at `latency`, interpolated linearly between the neighbouring buckets as
/// `histogram_quantile` does, subtracted from all requests.
fn good_latency_rate(service: &str, latency: f64, range: &str) -> Option<String> {
    let bucket = |le: f64| {
        format!(
            "sum by (env, service) (rate(tandem_http_request_duration_seconds_bucket{{service=\"{service}\",le=\"{le}\"}}[{range}]))"
        )
    };
    let hi_idx = LATENCY_BUCKETS.iter().position(|&b| b >= latency)?;
    let hi = LATENCY_BUCKETS[hi_idx];
    if hi == latency {
        return Some(bucket(hi));
    }
    let lo = if hi_idx == 0 {
        0.0
    } else {
        LATENCY_BUCKETS[hi_idx - 1]
    };
    let f = (latency - lo) / (hi - lo);
    if hi_idx == 0 {
        return Some(format!("{} * {f}", bucket(hi)));
    }
    Some(format!(
        "{} * {} + {} * {f}",
        bucket(lo),
        1.0 - f,
        bucket(hi)
    ))
}

/// `x` without binary noise (`1 - 0.999` is 0.0010000000000000009).
fn round10(x: f64) -> f64 {
    (x * 1e10).round() / 1e10
}

fn percent(share: f64) -> String {
    let p = format!("{:.4}", share * 100.0);
    let p = p.trim_end_matches('0').trim_end_matches('.');
    format!("{p}%")
}

fn slo_rules(service: &str, slo: &tandem_spec::Slo) -> Vec<Rule> {
    let window = slo.window.0;
    let wname = format_duration(window);
    let sel = format!("{{service=\"{service}\"}}");
    let mut rules = vec![record(
        "tandem:slo:requests:rate1m",
        format!("sum by (env, service) (rate(tandem_http_requests_total{sel}[1m]))"),
    )];
    // (sli, budget, objective text, bad-events rate series)
    let mut slis: Vec<(&str, f64, String, &str)> = Vec::new();
    if let Some(a) = slo.availability {
        rules.push(record(
            "tandem:slo:errors:rate1m",
            format!(
                "sum by (env, service) (rate(tandem_http_requests_total{{service=\"{service}\",code=\"5xx\"}}[1m])) or 0 * tandem:slo:requests:rate1m{sel}"
            ),
        ));
        slis.push((
            "availability",
            round10(1.0 - a),
            format!("availability {}", percent(a)),
            "tandem:slo:errors:rate1m",
        ));
    }
    if let Some(l) = slo.latency_p99
        && let Some(good) = good_latency_rate(service, l.0.as_secs_f64(), "1m")
    {
        rules.push(record(
            "tandem:slo:slow:rate1m",
            format!("clamp_min(tandem:slo:requests:rate1m{sel} - on (env, service) ({good}), 0)"),
        ));
        slis.push((
            "latency",
            0.01,
            format!("p99 latency under {}", format_duration(l.0)),
            "tandem:slo:slow:rate1m",
        ));
    }
    let mut windows: Vec<Duration> = BURN_PAIRS
        .iter()
        .flat_map(|&(long, short, _, _)| {
            [scaled_window(long, window), scaled_window(short, window)]
        })
        .collect();
    windows.sort();
    windows.dedup();
    for (sli, _, _, bad) in &slis {
        for w in &windows {
            let w = format_duration(*w);
            rules.push(record(
                &format!("tandem:slo:{sli}_bad_ratio:rate{w}"),
                format!(
                    "sum_over_time({bad}{sel}[{w}]) / on (env, service) (sum_over_time(tandem:slo:requests:rate1m{sel}[{w}]) > 0)"
                ),
            ));
        }
    }
    for (name, severity, pairs) in [
        ("ErrorBudgetBurnFast", "page", &BURN_PAIRS[..2]),
        ("ErrorBudgetBurnSlow", "ticket", &BURN_PAIRS[2..]),
    ] {
        let mut expr = String::new();
        for (sli, budget, objective, _) in &slis {
            for &(long, short, factor, _) in pairs {
                let lw = format_duration(scaled_window(long, window));
                let sw = format_duration(scaled_window(short, window));
                if !expr.is_empty() {
                    expr.push_str("\nor\n");
                }
                let _ = write!(
                    expr,
                    "label_replace(label_replace(\n  tandem:slo:{sli}_bad_ratio:rate{lw}{sel} / {budget} > {factor}\n  and on (env, service) (tandem:slo:{sli}_bad_ratio:rate{sw}{sel} / {budget} > {factor}),\n  \"slo\", \"{sli}\", \"\", \"\"), \"objective\", \"{objective}\", \"\", \"\")"
                );
            }
        }
        if expr.is_empty() {
            continue;
        }
        let window_secs = window.as_secs();
        let for_ = if severity == "page" { 2 * 60 } else { 15 * 60 };
        rules.push(alert(
            name,
            expr,
            Duration::from_secs(for_),
            severity,
            &format!(
                "{service} is spending its {wname} error budget ({{{{ $labels.objective }}}}) {{{{ printf \"%.1f\" $value }}}}x as fast as the objective allows: \
                 at this pace it is gone in about {{{{ with printf \"{window_secs} / %f\" $value | query }}}}{{{{ . | first | value | humanizeDuration }}}}{{{{ end }}}}"
            ),
            &format!(
                "Multi-window burn-rate alert (SRE workbook), windows scaled to {wname}: the share of bad requests \
                 over a long and a short window are both above the burn-rate factor times the budget. \
                 {} fires on 14.4x over 1h and 5m or 6x over 6h and 30m (for 30d); tickets on 3x over 1d and 2h or 1x over 3d and 6h.",
                if severity == "page" { "This page" } else { "The page" }
            ),
        ));
    }
    rules
}

// === post-deploy regressions ===

fn regression() -> Vec<Rule> {
    let r = "env, service, revision";
    let s = "env, service";
    let mut rules = vec![
        record(
            "tandem:revision:last_seen",
            format!(
                "time() + 0 * max by ({r}) (max_over_time(tandem_instance_up{{revision!=\"0\"}}[2m]) == 1)"
            ),
        ),
        record(
            "tandem:revision:previous",
            format!(
                "topk by ({s}) (1, last_over_time(tandem:revision:last_seen[6h]) unless on ({r}) tandem:revision:last_seen)"
            ),
        ),
        record(
            "tandem:revision:requests:rate10m",
            format!("sum by ({r}) (rate(tandem_http_requests_total{{revision!=\"0\"}}[10m]))"),
        ),
        record(
            "tandem:revision:error_ratio:rate10m",
            format!(
                "(sum by ({r}) (rate(tandem_http_requests_total{{revision!=\"0\",code=\"5xx\"}}[10m])) or 0 * tandem:revision:requests:rate10m) / on ({r}) (tandem:revision:requests:rate10m > 0)"
            ),
        ),
        record(
            "tandem:revision:latency:p99_10m",
            format!(
                "histogram_quantile(0.99, sum by ({r}, le) (rate(tandem_http_request_duration_seconds_bucket{{revision!=\"0\"}}[10m]))) >= 0"
            ),
        ),
        record(
            "tandem:revision:memory:avg",
            format!(
                "avg by ({r}) (tandem_instance_memory_usage_bytes or tandem_instance_memory_rss_bytes)"
            ),
        ),
    ];
    for m in [
        "requests:rate10m",
        "error_ratio:rate10m",
        "latency:p99_10m",
        "memory:avg",
    ] {
        let base = m.split(':').next().unwrap_or(m);
        rules.push(record(
            &format!("tandem:revision:{base}:avg1h"),
            format!("avg_over_time(tandem:revision:{m}[1h])"),
        ));
    }
    // The previous revision's figure over its last hour, with its number as
    // `previous_revision`, one per service.
    let prev = |m: &str| {
        format!(
            "label_replace(last_over_time(tandem:revision:{m}:avg1h[6h]) and on ({r}) tandem:revision:previous, \"previous_revision\", \"$1\", \"revision\", \"(.*)\")"
        )
    };
    let traffic = format!(
        "(tandem:revision:requests:rate10m * 600 >= 100\n     and on ({r}) tandem:revision:last_seen\n     and on ({r}) (tandem:revision:requests:rate10m <= on ({s}) group_left 2 * ({} >= {})))",
        prev("requests"),
        100.0 / 3600.0
    );
    let compare = |new: &str, m: &str, floor: String, guard: &str| {
        format!(
            "({new} and on ({r}) {guard})\n  > on ({s}) group_left (previous_revision)\n  ({p} + {floor})",
            p = prev(m)
        )
    };
    let prev_query = |m: &str, f: &str| {
        format!(
            "{{{{ with printf \"last_over_time(tandem:revision:{m}:avg1h{{service=%q,revision=%q}}[6h])\" $labels.service $labels.previous_revision | query }}}}{{{{ . | first | value | {f} }}}}{{{{ end }}}}"
        )
    };
    rules.push(alert(
        "ErrorRateRegression",
        compare(
            "tandem:revision:error_ratio:rate10m",
            "error_ratio",
            format!("clamp_min({}, 0.01)", prev("error_ratio")),
            &traffic,
        ),
        Duration::from_secs(5 * 60),
        "ticket",
        &format!(
            "revision {{{{ $labels.revision }}}} of {{{{ $labels.service }}}} fails {{{{ $value | humanizePercentage }}}} of requests; \
             revision {{{{ $labels.previous_revision }}}} failed {}",
            prev_query("error_ratio", "humanizePercentage")
        ),
        "Since the deploy, the share of 5xx answers over 10 minutes is more than twice, and more than 1 \
         percentage point above, what the previous revision answered over its last hour, at no more than \
         twice its load. `tandem rollback` returns to the previous revision.",
    ));
    rules.push(alert(
        "LatencyRegression",
        compare(
            "tandem:revision:latency:p99_10m",
            "latency",
            format!("clamp_min(0.5 * {}, 0.01)", prev("latency")),
            &traffic,
        ),
        Duration::from_secs(5 * 60),
        "ticket",
        &format!(
            "p99 latency of revision {{{{ $labels.revision }}}} of {{{{ $labels.service }}}} is {{{{ $value | humanizeDuration }}}}; \
             revision {{{{ $labels.previous_revision }}}} took {}",
            prev_query("latency", "humanizeDuration")
        ),
        "Since the deploy, the p99 over 10 minutes is more than 1.5x, and 10 ms above, what the previous \
         revision had over its last hour, at no more than twice its load.",
    ));
    rules.push(alert(
        "MemoryRegression",
        compare(
            "avg_over_time(tandem:revision:memory:avg[10m])",
            "memory",
            format!("clamp_min(0.5 * {}, 33554432)", prev("memory")),
            &format!("(tandem:revision:last_seen and on ({r}) (count_over_time(tandem:revision:memory:avg[10m]) >= 5))"),
        ),
        Duration::from_secs(10 * 60),
        "ticket",
        &format!(
            "instances of revision {{{{ $labels.revision }}}} of {{{{ $labels.service }}}} use {{{{ $value | humanize1024 }}}}B of memory on average; \
             revision {{{{ $labels.previous_revision }}}} used {}B",
            prev_query("memory", "humanize1024")
        ),
        "Since the deploy, the average memory per instance over 10 minutes is more than 1.5x, and 32 MiB \
         above, what the previous revision used over its last hour.",
    ));
    rules
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every generated rule parses and its templates compile, whatever is switched on.
    #[test]
    fn every_rule_loads() {
        let text = "[service.api]\nrun = \"./api\"\nhealth = { http = \"/\" }\nslo = { availability = 0.999, latency_p99 = \"300ms\" }\n\n[service.web]\nrun = \"./web\"\nslo = { latency_p99 = \"100ms\", window = \"7d\" }\n";
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tandem.toml");
        std::fs::write(&path, text).unwrap();
        let system = tandem_spec::load(&path, "dev").expect("valid system");
        let groups = builtin_groups(&system);
        let names: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "tandem.builtin.instances",
                "tandem.builtin.forecasts",
                "tandem.builtin.anomalies",
                "tandem.builtin.slo",
                "tandem.builtin.regression"
            ]
        );
        for g in &groups {
            for r in &g.rules {
                let problems: Vec<String> = crate::rules::check_expr(r)
                    .into_iter()
                    .chain(crate::rules::check_parsed(r))
                    .collect();
                assert!(problems.is_empty(), "{}: {problems:?}\n{}", r.name, r.expr);
                if r.kind == RuleKind::Alert {
                    assert_eq!(r.labels["builtin"], "true");
                    assert!(["page", "ticket"].contains(&r.labels["severity"].as_str()));
                }
            }
        }
    }

    #[test]
    fn windows_scale_with_the_slo_window() {
        let d30 = Duration::from_secs(30 * 86_400);
        let d7 = Duration::from_secs(7 * 86_400);
        assert_eq!(scaled_window(3600, d30), Duration::from_secs(3600));
        assert_eq!(scaled_window(300, d7), Duration::from_secs(70));
        assert_eq!(
            scaled_window(300, Duration::from_secs(86_400)),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn latency_objective_between_buckets_interpolates() {
        let g = good_latency_rate("api", 0.3, "1m").unwrap();
        assert!(g.contains("le=\"0.25\"") && g.contains("le=\"0.5\""), "{g}");
        let g = good_latency_rate("api", 0.25, "1m").unwrap();
        assert!(!g.contains("le=\"0.5\""), "{g}");
        assert!(good_latency_rate("api", 61.0, "1m").is_none());
        assert_eq!(percent(0.999), "99.9%");
    }
}
