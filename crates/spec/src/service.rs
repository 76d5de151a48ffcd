//! Reading one `[service.NAME]` table into a [`Service`], with its defaults and checks.
//!
//! The same function reads a base service, an overlay (`[env.prod.service.api]`, where
//! every key is optional) and the merged table of an environment; the [`Report`]'s phase
//! decides which problems are reported (see `check`). The spans it returns let the
//! system-wide checks (dependencies, ports) point at the right text.

use crate::check::{Field, Report, with_suggestion};
use crate::interpolate;
use crate::model::{
    Health, HealthCheck, Limits, Protocol, PublicPort, Release, RestartPolicy, Service, Slo, Stop,
    Tls,
};
use crate::node::{Entry, Span, Table};
use crate::units::{ByteSize, Cpu, Dur};
use std::path::{Component, Path, PathBuf};

pub(crate) const SERVICE_KEYS: &[&str] = &[
    "run",
    "cwd",
    "env",
    "port",
    "health",
    "depends_on",
    "limits",
    "replicas",
    "stop",
    "restart",
    "metrics",
    "release",
    "protocol",
    "slo",
    "tls",
    "hooks",
    "proxy",
    "secrets",
];
const HEALTH_KEYS: &[&str] = &[
    "http", "tcp", "exec", "interval", "timeout", "grace", "failures",
];
pub(crate) const HEALTH_KINDS: &[&str] = &["http", "tcp", "exec"];
const LIMIT_KEYS: &[&str] = &["memory", "cpu", "pids"];
const TLS_KEYS: &[&str] = &["cert", "key"];
const SLO_KEYS: &[&str] = &["availability", "latency_p99", "window"];
const STOP_KEYS: &[&str] = &["signal", "grace"];
const STRATEGIES: &[&str] = &["recreate", "blue-green", "canary"];
const RESTART_POLICIES: &[&str] = &["always", "on-failure", "never"];
/// Release keys and the strategies they belong to.
const RELEASE_KEYS: &[(&str, &[&str])] = &[
    ("strategy", &["recreate", "blue-green", "canary"]),
    ("keep_warm", &["blue-green", "canary"]),
    ("steps", &["canary"]),
    ("step_time", &["canary"]),
    ("max_error_rate", &["canary"]),
    ("max_p99", &["canary"]),
    ("min_requests", &["canary"]),
    ("analysis", &["canary"]),
];
/// Signals an instance may be asked to stop with.
pub(crate) const STOP_SIGNALS: &[&str] = &[
    "SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGKILL", "SIGUSR1", "SIGUSR2", "SIGWINCH",
];
/// Words that only mean something to a shell, which tandem does not use.
const SHELL_OPERATORS: &[&str] = &["|", "||", "&&", ";", ">", ">>", "<", "&"];

/// Where the parts of a service that system-wide checks look at are written.
#[derive(Clone, Debug, Default)]
pub(crate) struct ServiceSpans {
    pub(crate) port: Option<Span>,
    pub(crate) depends_on: Vec<(String, Span)>,
}

/// Reads `entry` (the `NAME = {...}` or `[service.NAME]` table) into a service.
pub(crate) fn read_service(
    report: &mut Report<'_>,
    name: &str,
    entry: &Entry,
    section: &str,
    base_dir: &Path,
) -> (Service, ServiceSpans) {
    let mut spans = ServiceSpans::default();
    let mut service = Service {
        run: String::new(),
        cwd: normalize(base_dir).to_string_lossy().into_owned(),
        env: Default::default(),
        secrets: Vec::new(),
        secret_fingerprints: Default::default(),
        port: None,
        tls: None,
        health: None,
        depends_on: Vec::new(),
        limits: Limits::default(),
        replicas: 1,
        stop: Stop::default(),
        restart: RestartPolicy::Always,
        metrics: None,
        release: None,
        protocol: Protocol::Tcp,
        slo: None,
        hooks: None,
        proxy: Default::default(),
    };
    let Some(table) = report.table(
        entry,
        &Field::new("[service]", "[service.api] with run = \"...\""),
    ) else {
        return (service, spans);
    };
    report.unknown_keys(table, section, SERVICE_KEYS);

    match table.get("run") {
        Some(run) => {
            if let Some(text) = report.string(
                run,
                &Field::new(section, "run = \"./server --port ${PORT}\""),
            ) {
                check_command(report, run, text, section);
                service.run = text.to_string();
            }
        }
        None => report.context_error(
            entry.key_span.clone(),
            format!("service '{name}' has no 'run' command"),
            format!("add run = \"...\" to [service.{name}]: the command line that starts it"),
        ),
    }
    if let Some(cwd) = table.get("cwd")
        && let Some(text) = report.string(cwd, &Field::new(section, "cwd = \"api\""))
    {
        let folder = normalize(&base_dir.join(text));
        if !folder.is_dir() {
            report.value_error(
                cwd.node.span.clone(),
                format!("cwd '{text}' is not a folder ({})", folder.display()),
                "create the folder or fix the path; relative paths are against the folder holding the system file",
            );
        }
        service.cwd = folder.to_string_lossy().into_owned();
    }
    if let Some(env) = table.get("env") {
        read_env(report, env, section, &mut service);
    }
    if let Some(secrets) = table.get("secrets") {
        crate::secrets::read_secrets(report, secrets, section, &mut service);
    }
    if let Some(port) = table.get("port") {
        spans.port = Some(port.node.span.clone());
        service.port = read_port(report, port, section);
    }
    if let Some(health) = table.get("health") {
        service.health = read_health(report, name, health, section);
    }
    if let Some(depends_on) = table.get("depends_on")
        && let Some(items) =
            report.strings(depends_on, &Field::new(section, "depends_on = [\"db\"]"))
    {
        for (dependency, span) in items {
            if service.depends_on.iter().any(|seen| seen == dependency) {
                report.value_error(
                    span,
                    format!("'{dependency}' is listed twice in 'depends_on'"),
                    "list each dependency once",
                );
                continue;
            }
            service.depends_on.push(dependency.to_string());
            spans.depends_on.push((dependency.to_string(), span));
        }
    }
    if let Some(limits) = table.get("limits") {
        service.limits = read_limits(report, limits, section);
    }
    if let Some(replicas) = table.get("replicas")
        && let Some(count) = report.integer(replicas, &Field::new(section, "replicas = 2"))
    {
        match u32::try_from(count) {
            Ok(count) if count <= 1000 => service.replicas = count,
            _ => report.value_error(
                replicas.node.span.clone(),
                format!("replicas must be between 0 and 1000, found {count}"),
                "use 0 to keep the service declared but stopped, or the number of instances to run",
            ),
        }
    }
    if let Some(stop) = table.get("stop") {
        service.stop = read_stop(report, stop, section);
    }
    if let Some(restart) = table.get("restart")
        && let Some(text) = report.string(restart, &Field::new(section, "restart = \"on-failure\""))
    {
        service.restart = match text {
            "always" => RestartPolicy::Always,
            "on-failure" => RestartPolicy::OnFailure,
            "never" => RestartPolicy::Never,
            other => {
                report.value_error(
                    restart.node.span.clone(),
                    format!("unknown restart policy '{other}'"),
                    with_suggestion(
                        other,
                        RESTART_POLICIES.iter().copied(),
                        "use one of: always, on-failure, never".into(),
                    ),
                );
                RestartPolicy::Always
            }
        };
    }
    if let Some(metrics) = table.get("metrics")
        && let Some(path) = report.string(metrics, &Field::new(section, "metrics = \"/metrics\""))
    {
        if !path.starts_with('/') {
            report.value_error(
                metrics.node.span.clone(),
                format!("metrics path '{path}' does not start with '/'"),
                format!(
                    "write the path part of the URL, like \"/{}\"",
                    path.trim_start_matches('/')
                ),
            );
        }
        service.metrics = Some(path.to_string());
    }
    if let Some(release) = table.get("release") {
        service.release = read_release(report, release, section, name);
    }
    service.protocol = match service.health.as_ref().map(|h| &h.check) {
        Some(HealthCheck::Http(_)) => Protocol::Http,
        _ => Protocol::Tcp,
    };
    if let Some(protocol) = table.get("protocol")
        && let Some(text) = report.string(protocol, &Field::new(section, "protocol = \"http\""))
    {
        match text {
            "http" => service.protocol = Protocol::Http,
            "tcp" => service.protocol = Protocol::Tcp,
            other => report.value_error(
                protocol.node.span.clone(),
                format!("unknown protocol '{other}'"),
                "use \"http\" (requests are routed and measured one by one) or \"tcp\" (bytes pass through)",
            ),
        }
    }
    if let Some(proxy) = table.get("proxy") {
        service.proxy =
            crate::proxy_settings::read_proxy(report, name, proxy, section, service.protocol);
    }
    if let Some(slo) = table.get("slo") {
        service.slo = read_slo(report, slo, section);
    }
    if let Some(tls) = table.get("tls") {
        service.tls = read_tls(report, tls, section, base_dir);
        // Both need the merged service: an overlay may add the port or change the protocol.
        if service.protocol == Protocol::Tcp {
            report.context_error(
                tls.key_span.clone(),
                format!("service '{name}' has 'tls', but its protocol is tcp"),
                "tandem ends TLS only for HTTP: set protocol = \"http\" (or an http health check), or remove 'tls' and let the program speak TLS itself, as tcp passes bytes through untouched",
            );
        }
        if service.port.is_none() {
            report.context_error(
                tls.key_span.clone(),
                format!("service '{name}' has 'tls', but no 'port' to serve it on"),
                "add a public port, like port = \"0.0.0.0:443\"; edge listeners between services stay plain",
            );
        }
    }
    if let Some(hooks) = table.get("hooks") {
        service.hooks = crate::hooks::read_hooks(report, hooks, section);
    }
    (service, spans)
}

/// `slo = { availability = 0.999, latency_p99 = "300ms", window = "30d" }`: at least one
/// objective; the window scales the built-in burn-rate alerts' windows (see
/// `tandem_alert::builtin`), so it must be long enough to hold them.
fn read_slo(report: &mut Report<'_>, entry: &Entry, service_section: &str) -> Option<Slo> {
    let section = format!("{}.slo]", service_section.trim_end_matches(']'));
    let example = "slo = { availability = 0.999, latency_p99 = \"300ms\", window = \"30d\" }";
    let table = report.table(entry, &Field::new(service_section, example))?;
    report.unknown_keys(table, &section, SLO_KEYS);
    let mut slo = Slo {
        availability: None,
        latency_p99: None,
        window: Dur::from_secs(30 * 86_400),
    };
    if let Some(availability) = table.get("availability")
        && let Some(share) =
            report.number(availability, &Field::new(&section, "availability = 0.999"))
    {
        if share > 0.0 && share < 1.0 {
            slo.availability = Some(share);
        } else {
            let hint = if share > 1.0 && share < 100.0 {
                format!(
                    "write it as a share: {} for {share} %",
                    (share * 1e8).round() / 1e10
                )
            } else {
                "write the share of requests that must succeed, like 0.999 for 99.9 %".to_string()
            };
            report.value_error(
                availability.node.span.clone(),
                format!("'availability' in {section} must be between 0 and 1 (both excluded), found {share}"),
                hint,
            );
        }
    }
    if let Some(latency) = table.get("latency_p99")
        && let Some(d) = report.parsed::<Dur>(
            latency,
            &Field::new(&section, "latency_p99 = \"300ms\""),
            "duration",
        )
    {
        if d.0.is_zero() {
            report.value_error(
                latency.node.span.clone(),
                format!("'latency_p99' in {section} must be more than 0"),
                "write the time 99 % of requests must stay under, like latency_p99 = \"300ms\"",
            );
        } else {
            slo.latency_p99 = Some(d);
        }
    }
    if let Some(window) = table.get("window")
        && let Some(d) = report.parsed::<Dur>(
            window,
            &Field::new(&section, "window = \"30d\""),
            "duration",
        )
    {
        if d.0 < std::time::Duration::from_secs(86_400) {
            report.value_error(
                window.node.span.clone(),
                format!("'window' in {section} must be at least 1d, found '{d}'"),
                "SLO windows are days or weeks long, like window = \"30d\" or \"7d\"",
            );
        } else {
            slo.window = d;
        }
    }
    // An overlay may change only the window, so this needs the merged table.
    if !table.contains("availability") && !table.contains("latency_p99") {
        report.context_error(
            entry.node.span.clone(),
            format!("{section} sets no objective"),
            "add availability = 0.999, latency_p99 = \"300ms\", or both",
        );
    }
    Some(slo)
}

/// Checks a command line: not empty, splits like a shell would, uses no shell operators,
/// and has valid `${...}` syntax.
pub(crate) fn check_command(report: &mut Report<'_>, entry: &Entry, text: &str, section: &str) {
    let key = &entry.key;
    let span = entry.node.span.clone();
    if text.trim().is_empty() {
        report.value_error(
            span,
            format!("'{key}' in {section} is empty"),
            "write the command line to run, like \"./server --port ${PORT}\"",
        );
        return;
    }
    let Some(words) = shlex::split(text) else {
        report.value_error(
            span,
            format!("'{key}' in {section} cannot be split into words: a quote is not closed"),
            "close every quote; the command is split like a shell would, but no shell runs it",
        );
        return;
    };
    if words.is_empty() {
        report.value_error(
            span,
            format!("'{key}' in {section} has no command"),
            "write the command line to run, like \"./server --port ${PORT}\"",
        );
        return;
    }
    if let Some(operator) = words
        .iter()
        .find(|word| SHELL_OPERATORS.contains(&word.as_str()))
    {
        report.value_error(
            span.clone(),
            format!("'{key}' in {section} uses '{operator}', but commands run without a shell"),
            "run one program, or wrap the line in a shell: \"sh -c '...'\"",
        );
    }
    check_interpolation(report, entry, text, key);
}

/// Reports a `${...}` syntax problem in a string value, pointing inside it when possible.
pub(crate) fn check_interpolation(report: &mut Report<'_>, entry: &Entry, text: &str, what: &str) {
    if let Err(error) = interpolate::check(text) {
        let source = report.source.text;
        let span = match crate::check::offset_in_string(source, &entry.node, text, error.offset) {
            Some(start) => start..start + error.len,
            None => entry.node.span.clone(),
        };
        report.value_error(span, format!("{} in '{what}'", error.message), error.hint);
    }
}

fn read_env(report: &mut Report<'_>, entry: &Entry, section: &str, service: &mut Service) {
    let field = Field::new(section, "env = { GREETING = \"hi\" }");
    let Some(table) = report.table(entry, &field) else {
        return;
    };
    for variable in table.entries() {
        let name = &variable.key;
        if !interpolate::is_variable_name(name) {
            report.value_error(
                variable.key_span.clone(),
                format!("'{name}' is not a valid environment variable name"),
                "use letters, digits and '_', not starting with a digit",
            );
        } else if name == "PORT" {
            report.value_error(
                variable.key_span.clone(),
                "'PORT' is set by tandem for each instance",
                "remove it; use 'port' for the service's public port, and read PORT in the program",
            );
        }
        let value_field = Field::new(section, "env = { WORKERS = \"4\" } (values are strings)");
        if let Some(value) = report.string(variable, &value_field) {
            check_interpolation(report, variable, value, &format!("env.{name}"));
            service.env.insert(name.clone(), value.to_string());
        }
    }
}

/// `port = 8080` (127.0.0.1) or `port = "ADDRESS:PORT"` (`0.0.0.0:80`, `[::]:443`).
fn read_port(report: &mut Report<'_>, entry: &Entry, section: &str) -> Option<PublicPort> {
    let span = entry.node.span.clone();
    let out_of_range = |report: &mut Report<'_>, number: &str| {
        report.value_error(
            span.clone(),
            format!("port {number} is out of range"),
            "use a TCP port from 1 to 65535",
        );
    };
    let text = match &entry.node.value {
        crate::node::Value::Integer(number) => {
            return match u16::try_from(*number) {
                Ok(port) if port > 0 => Some(PublicPort::loopback(port)),
                _ => {
                    out_of_range(report, &number.to_string());
                    None
                }
            };
        }
        crate::node::Value::String(text) => text.as_str(),
        other => {
            report.value_error(
                span,
                format!(
                    "wrong type for 'port' in {section}: expected a port number or an \"ADDRESS:PORT\" string, found {}",
                    other.type_phrase()
                ),
                "write it like port = 8080 (127.0.0.1 only) or port = \"0.0.0.0:8080\" (every interface)",
            );
            return None;
        }
    };
    let address_hint = "write an IP address and a port, like \"0.0.0.0:8080\" (every interface), \"[::]:8080\" or \"192.168.1.10:8080\"; host names are not looked up";
    let Some((host, port)) = text.rsplit_once(':') else {
        let hint = if text.parse::<u32>().is_ok() {
            format!(
                "write the number without quotes, port = {text}, to bind 127.0.0.1; or {address_hint}"
            )
        } else {
            address_hint.to_string()
        };
        report.value_error(span, format!("port '{text}' has no ':PORT'"), hint);
        return None;
    };
    let port = match port.parse::<u64>() {
        Ok(number) => match u16::try_from(number) {
            Ok(port) if port > 0 => port,
            _ => {
                out_of_range(report, &number.to_string());
                return None;
            }
        },
        Err(_) => {
            report.value_error(
                span,
                format!("'{port}' in port '{text}' is not a port number"),
                "end the address with a TCP port from 1 to 65535, like \"0.0.0.0:8080\"",
            );
            return None;
        }
    };
    let bracketed = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
    let ip = match bracketed {
        Some(v6) => v6
            .parse::<std::net::Ipv6Addr>()
            .ok()
            .map(std::net::IpAddr::V6),
        None => host
            .parse::<std::net::Ipv4Addr>()
            .ok()
            .map(std::net::IpAddr::V4),
    };
    let Some(ip) = ip else {
        let hint = if bracketed.is_none() && host.contains(':') {
            format!("put an IPv6 address in brackets, like \"[{host}]:{port}\"")
        } else {
            address_hint.to_string()
        };
        report.value_error(
            span,
            format!("'{host}' in port '{text}' is not an IP address"),
            hint,
        );
        return None;
    };
    if ip.is_multicast() {
        report.value_error(
            span,
            format!("'{host}' in port '{text}' is a multicast address"),
            address_hint,
        );
        return None;
    }
    Some(PublicPort { ip, port })
}

/// `tls = { cert = "certs/web.pem", key = "certs/web.key" }`: paths against the file's
/// folder, made absolute; each file must load (see `tls`).
fn read_tls(report: &mut Report<'_>, entry: &Entry, section: &str, base_dir: &Path) -> Option<Tls> {
    let example = "tls = { cert = \"certs/web.pem\", key = \"certs/web.key\" }";
    let table = report.table(entry, &Field::new(section, example))?;
    let section = format!("{}.tls]", section.trim_end_matches(']'));
    report.unknown_keys(table, &section, TLS_KEYS);
    let path_of = |report: &mut Report<'_>, key: &str, example: &str| {
        let Some(value) = table.get(key) else {
            report.context_error(
                entry.node.span.clone(),
                format!("{section} has no '{key}'"),
                format!("add {example}: both the certificate chain and its private key are needed"),
            );
            return None;
        };
        let text = report.string(value, &Field::new(&section, example))?;
        let path = normalize(&base_dir.join(text));
        Some((value, text.to_string(), path))
    };
    let cert = path_of(report, "cert", "cert = \"certs/web.pem\"");
    let key = path_of(report, "key", "key = \"certs/web.key\"");
    // Each file is checked where it is written (an overlay may name only one of them); the
    // pair only when the table names both.
    let chain = cert.as_ref().and_then(|(value, shown, path)| {
        crate::tls::check_cert(path, shown)
            .map_err(|p| report.value_error(value.node.span.clone(), p.message, p.hint))
            .ok()
    });
    let private = key.as_ref().and_then(|(value, shown, path)| {
        crate::tls::check_key(path, shown)
            .map_err(|p| report.value_error(value.node.span.clone(), p.message, p.hint))
            .ok()
    });
    let (cert, key) = (cert?, key?);
    if let (Some(chain), Some(private)) = (chain, private)
        && let Err(p) = crate::tls::check_pair(chain, private, &cert.1, &key.1)
    {
        report.value_error(entry.node.span.clone(), p.message, p.hint);
    }
    Some(Tls {
        cert: cert.2.to_string_lossy().into_owned(),
        key: key.2.to_string_lossy().into_owned(),
    })
}

fn read_health(
    report: &mut Report<'_>,
    name: &str,
    entry: &Entry,
    section: &str,
) -> Option<Health> {
    let section = format!("{}.health]", section.trim_end_matches(']'));
    let field = Field::new(&section, "health = { http = \"/healthz\" }");
    let table = report.table(entry, &field)?;
    report.unknown_keys(table, &section, HEALTH_KEYS);
    let mut checks = Vec::new();
    if let Some(http) = table.get("http")
        && let Some(path) = report.string(http, &Field::new(&section, "http = \"/healthz\""))
    {
        if !path.starts_with('/') {
            report.value_error(
                http.node.span.clone(),
                format!("health check path '{path}' does not start with '/'"),
                format!(
                    "write the path part of the URL, like \"/{}\"",
                    path.trim_start_matches('/')
                ),
            );
        }
        checks.push((http, HealthCheck::Http(path.to_string())));
    }
    if let Some(tcp) = table.get("tcp")
        && let Some(flag) = report.boolean(tcp, &Field::new(&section, "tcp = true"))
    {
        if !flag {
            report.value_error(
                tcp.node.span.clone(),
                "'tcp = false' is not a health check",
                "write tcp = true to check that the port accepts connections, or remove the key",
            );
        }
        checks.push((tcp, HealthCheck::Tcp(true)));
    }
    if let Some(exec) = table.get("exec")
        && let Some(command) = report.string(exec, &Field::new(&section, "exec = \"pg_isready\""))
    {
        check_command(report, exec, command, &section);
        checks.push((exec, HealthCheck::Exec(command.to_string())));
    }
    let check = match checks.len() {
        0 => {
            report.context_error(
                entry.node.span.clone(),
                format!("the health check of service '{name}' says neither http, tcp nor exec"),
                "add one: http = \"/healthz\", tcp = true or exec = \"command\"",
            );
            HealthCheck::Tcp(true)
        }
        1 => checks.remove(0).1,
        _ => {
            let names: Vec<&str> = checks.iter().map(|(e, _)| e.key.as_str()).collect();
            report.context_error(
                checks[1].0.key_span.clone(),
                format!(
                    "the health check of service '{name}' has several kinds: {}",
                    names.join(", ")
                ),
                "keep exactly one of http, tcp or exec",
            );
            checks.remove(0).1
        }
    };
    let duration = |report: &mut Report<'_>, key: &str, example: &str, default: u64| {
        let Some(entry) = table.get(key) else {
            return Dur::from_millis(default);
        };
        let value: Option<Dur> = report.parsed(entry, &Field::new(&section, example), "duration");
        if let Some(value) = value
            && value.0.is_zero()
            && key != "grace"
        {
            report.value_error(
                entry.node.span.clone(),
                format!("health '{key}' must be longer than 0s"),
                format!("use a positive duration, like {example}"),
            );
        }
        value.unwrap_or(Dur::from_millis(default))
    };
    let interval = duration(report, "interval", "interval = \"1s\"", 1_000);
    let timeout = duration(report, "timeout", "timeout = \"1s\"", 1_000);
    let grace = duration(report, "grace", "grace = \"5s\"", 5_000);
    let mut failures = 3;
    if let Some(entry) = table.get("failures")
        && let Some(count) = report.integer(entry, &Field::new(&section, "failures = 3"))
    {
        match u32::try_from(count) {
            Ok(count) if count >= 1 => failures = count,
            _ => report.value_error(
                entry.node.span.clone(),
                format!("health 'failures' must be at least 1, found {count}"),
                "give the number of consecutive failed checks that make an instance unhealthy",
            ),
        }
    }
    Some(Health {
        check,
        interval,
        timeout,
        grace,
        failures,
    })
}

fn read_limits(report: &mut Report<'_>, entry: &Entry, section: &str) -> Limits {
    let section = format!("{}.limits]", section.trim_end_matches(']'));
    let mut limits = Limits::default();
    let Some(table) = report.table(
        entry,
        &Field::new(&section, "limits = { memory = \"256MiB\" }"),
    ) else {
        return limits;
    };
    report.unknown_keys(table, &section, LIMIT_KEYS);
    if let Some(memory) = table.get("memory") {
        let field = Field::new(&section, "memory = \"256MiB\"");
        limits.memory = match memory.node.value {
            crate::node::Value::Integer(bytes) if bytes > 0 => Some(ByteSize(bytes.unsigned_abs())),
            _ => report.parsed(memory, &field, "size"),
        };
    }
    if let Some(cpu) = table.get("cpu") {
        let field = Field::new(&section, "cpu = 0.5");
        let parsed = match &cpu.node.value {
            crate::node::Value::String(_) => report.parsed::<Cpu>(cpu, &field, "CPU share"),
            _ => report.number(cpu, &field).and_then(|cores| {
                match cores.to_string().parse::<Cpu>() {
                    Ok(share) => Some(share),
                    Err(error) => {
                        report.value_error(
                            cpu.node.span.clone(),
                            format!("invalid CPU share for 'cpu' in {section}: {error}"),
                            "write cores as a positive number (0.5 is half a core) or millicores as \"500m\"",
                        );
                        None
                    }
                }
            }),
        };
        limits.cpu = parsed;
    }
    if let Some(pids) = table.get("pids")
        && let Some(count) = report.integer(pids, &Field::new(&section, "pids = 100"))
    {
        if count >= 1 {
            limits.pids = Some(count.unsigned_abs());
        } else {
            report.value_error(
                pids.node.span.clone(),
                format!("'pids' must be at least 1, found {count}"),
                "give the most processes the service may run at once, or remove the limit",
            );
        }
    }
    limits
}

fn read_stop(report: &mut Report<'_>, entry: &Entry, section: &str) -> Stop {
    let section = format!("{}.stop]", section.trim_end_matches(']'));
    let mut stop = Stop::default();
    let Some(table) = report.table(
        entry,
        &Field::new(&section, "stop = { signal = \"SIGTERM\", grace = \"10s\" }"),
    ) else {
        return stop;
    };
    report.unknown_keys(table, &section, STOP_KEYS);
    if let Some(signal) = table.get("signal")
        && let Some(name) = report.string(signal, &Field::new(&section, "signal = \"SIGINT\""))
    {
        if STOP_SIGNALS.contains(&name) {
            stop.signal = name.to_string();
        } else {
            let prefixed = format!("SIG{}", name.to_ascii_uppercase());
            let hint = if STOP_SIGNALS.contains(&prefixed.as_str()) {
                format!("did you mean '{prefixed}'?")
            } else {
                with_suggestion(
                    name,
                    STOP_SIGNALS.iter().copied(),
                    format!("use one of: {}", STOP_SIGNALS.join(", ")),
                )
            };
            report.value_error(
                signal.node.span.clone(),
                format!("unknown signal '{name}'"),
                hint,
            );
        }
    }
    if let Some(grace) = table.get("grace") {
        stop.grace = report
            .parsed(grace, &Field::new(&section, "grace = \"10s\""), "duration")
            .unwrap_or(stop.grace);
    }
    stop
}

fn read_release(
    report: &mut Report<'_>,
    entry: &Entry,
    section: &str,
    service_name: &str,
) -> Option<Release> {
    let section = format!("{}.release]", section.trim_end_matches(']'));
    let table = report.table(
        entry,
        &Field::new(&section, "release = { strategy = \"recreate\" }"),
    )?;
    let known: Vec<&str> = RELEASE_KEYS.iter().map(|(key, _)| *key).collect();
    report.unknown_keys(table, &section, &known);

    let strategy = match table.get("strategy") {
        Some(strategy) => {
            let name = report.string(strategy, &Field::new(&section, "strategy = \"canary\""))?;
            if !STRATEGIES.contains(&name) {
                report.value_error(
                    strategy.node.span.clone(),
                    format!("unknown release strategy '{name}'"),
                    with_suggestion(
                        name,
                        STRATEGIES.iter().copied(),
                        "use one of: recreate, blue-green, canary".into(),
                    ),
                );
                return None;
            }
            name
        }
        None => {
            report.context_error(
                entry.node.span.clone(),
                "'release' has no 'strategy'",
                "add strategy = \"recreate\", \"blue-green\" or \"canary\"",
            );
            return None;
        }
    };
    for key_entry in table.entries() {
        if let Some((key, owners)) = RELEASE_KEYS.iter().find(|(key, _)| *key == key_entry.key)
            && !owners.contains(&strategy)
        {
            let owner_list = owners.join("' or '");
            report.context_error(
                key_entry.key_span.clone(),
                format!("'{key}' belongs to strategy '{owner_list}', not '{strategy}'"),
                format!("remove '{key}', or change the strategy"),
            );
        }
    }
    let duration = |report: &mut Report<'_>, key: &str, example: &str| -> Option<Dur> {
        let entry = table.get(key)?;
        report.parsed(entry, &Field::new(&section, example), "duration")
    };
    let keep_warm = duration(report, "keep_warm", "keep_warm = \"10m\"");
    match strategy {
        "recreate" => Some(Release::Recreate),
        "blue-green" => Some(Release::BlueGreen { keep_warm }),
        _ => {
            let steps = read_steps(report, table, entry, &section);
            let step_time = duration(report, "step_time", "step_time = \"30s\"");
            if table.get("step_time").is_none() {
                report.context_error(
                    entry.node.span.clone(),
                    "canary release has no 'step_time'",
                    "add step_time = \"30s\": how long each step is judged before the next",
                );
            }
            let mut max_error_rate = None;
            if let Some(rate_entry) = table.get("max_error_rate")
                && let Some(rate) =
                    report.number(rate_entry, &Field::new(&section, "max_error_rate = 0.01"))
            {
                if (0.0..=1.0).contains(&rate) {
                    max_error_rate = Some(rate);
                } else {
                    report.value_error(
                        rate_entry.node.span.clone(),
                        format!("max_error_rate {rate} is outside 0..1"),
                        "write a fraction of requests: 0.01 is 1%",
                    );
                }
            }
            let max_p99 = duration(report, "max_p99", "max_p99 = \"300ms\"");
            let mut min_requests = None;
            if let Some(count_entry) = table.get("min_requests")
                && let Some(count) =
                    report.integer(count_entry, &Field::new(&section, "min_requests = 100"))
            {
                if count >= 0 {
                    min_requests = Some(count.unsigned_abs());
                } else {
                    report.value_error(
                        count_entry.node.span.clone(),
                        format!("min_requests must not be negative, found {count}"),
                        "give the fewest requests a step must see before it is judged",
                    );
                }
            }
            let analysis = table
                .get("analysis")
                .map(|entry| crate::analysis::read_analysis(report, entry, &section, service_name))
                .unwrap_or_default();
            Some(Release::Canary {
                steps,
                step_time: step_time.unwrap_or(Dur::from_secs(30)),
                max_error_rate,
                max_p99,
                min_requests,
                keep_warm,
                analysis,
            })
        }
    }
}

fn read_steps(report: &mut Report<'_>, table: &Table, release: &Entry, section: &str) -> Vec<u8> {
    let Some(steps_entry) = table.get("steps") else {
        report.context_error(
            release.node.span.clone(),
            "canary release has no 'steps'",
            "add steps = [10, 50, 100]: the percentages of traffic, increasing, ending at 100",
        );
        return Vec::new();
    };
    let field = Field::new(section, "steps = [10, 50, 100]");
    let Some(items) = report.array(steps_entry, &field) else {
        return Vec::new();
    };
    let mut steps = Vec::new();
    let mut previous: i64 = 0;
    for item in items {
        let crate::node::Value::Integer(percent) = item.value else {
            report.value_error(
                item.span.clone(),
                format!(
                    "canary step must be an integer percentage, found {}",
                    item.value.type_phrase()
                ),
                "write steps like [10, 50, 100]",
            );
            return steps;
        };
        if !(1..=100).contains(&percent) {
            report.value_error(
                item.span.clone(),
                format!("canary step {percent} is not a percentage from 1 to 100"),
                "steps are percentages of traffic, each larger than the last, like [10, 50, 100]",
            );
            return steps;
        }
        if percent <= previous {
            report.value_error(
                item.span.clone(),
                format!("canary step {percent} does not increase from {previous}"),
                "steps are percentages of traffic from 1 to 100, each larger than the last, like [10, 50, 100]",
            );
            return steps;
        }
        previous = percent;
        steps.push(percent as u8);
    }
    if previous != 100 {
        let span = items
            .last()
            .map_or(steps_entry.node.span.clone(), |last| last.span.clone());
        report.value_error(
            span,
            "canary steps do not end at 100",
            "end with 100 so the new revision takes all traffic, like [10, 50, 100]",
        );
    }
    steps
}

/// Makes a path absolute (against the current folder) and removes `.` and `..` parts
/// without touching the file system.
pub(crate) fn normalize(path: &Path) -> PathBuf {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(path)
    };
    let mut normalized = PathBuf::new();
    for component in absolute.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                normalized.pop();
            }
            other => normalized.push(other),
        }
    }
    normalized
}

#[cfg(test)]
mod port_tests {
    use crate::model::{PublicPort, Service};

    /// A revision stored before ports had addresses (`"port": 8080`) still loads, and a
    /// loopback port is stored the old way, so such a revision keeps its content hash.
    #[test]
    fn stored_ports_load_and_keep_their_form() {
        let old = r#"{"run":"./api","cwd":"/srv","port":8080,"limits":{},"replicas":1,
            "stop":{"signal":"SIGTERM","grace":"10s"},"restart":"always"}"#;
        let service: Service = serde_json::from_str(old).expect("old revision loads");
        assert_eq!(service.port, Some(PublicPort::loopback(8080)));
        assert_eq!(service.tls, None);
        let again = serde_json::to_value(&service).unwrap();
        assert_eq!(again["port"], serde_json::json!(8080));
        assert!(again.get("tls").is_none());

        let mut public = service.clone();
        public.port = Some(PublicPort {
            ip: "::".parse().unwrap(),
            port: 443,
        });
        let text = serde_json::to_string(&public).unwrap();
        assert!(text.contains(r#""port":"[::]:443""#), "{text}");
        let back: Service = serde_json::from_str(&text).unwrap();
        assert_eq!(back, public);
    }

    #[test]
    fn all_interfaces_clash_with_every_address_of_the_port() {
        let p = |text: &str| {
            let addr: std::net::SocketAddr = text.parse().unwrap();
            PublicPort {
                ip: addr.ip(),
                port: addr.port(),
            }
        };
        assert!(p("0.0.0.0:80").clashes_with(&p("127.0.0.1:80")));
        assert!(p("192.168.1.10:80").clashes_with(&p("[::]:80")));
        assert!(p("127.0.0.1:80").clashes_with(&p("127.0.0.1:80")));
        assert!(!p("127.0.0.1:80").clashes_with(&p("192.168.1.10:80")));
        assert!(!p("0.0.0.0:80").clashes_with(&p("0.0.0.0:81")));
    }

    #[test]
    fn a_key_readable_by_others_is_warned_about() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("web.key");
        std::fs::write(&key, "secret").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(crate::tls::key_permission_warning("web", &key), None);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
        let warning = crate::tls::key_permission_warning("web", &key).expect("a warning");
        assert!(
            warning.contains("readable by its group (mode 0640)"),
            "{warning}"
        );
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let warning = crate::tls::key_permission_warning("web", &key).expect("a warning");
        assert!(warning.contains("chmod 600"), "{warning}");
    }
}
