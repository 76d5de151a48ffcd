//! From text to a resolved [`System`] per environment, and every check across the file.
//!
//! Validation has two phases (see `check`). The *shape* phase walks the file once as
//! written, base and every overlay, and reports problems with single values, so a typo in
//! `[env.prod]` is reported whichever environment is asked for. The *build* phase merges
//! each requested environment's overlay onto the base and checks what needs the merged
//! whole: required keys, strategies, dependencies and cycles, ports, duplicate alerts, rule
//! files. Overlays merge table by table (scalars and arrays replace), with two exceptions
//! that keep merges meaningful: naming a health check kind replaces the base's kind, and
//! naming a different release strategy replaces the whole `release`.

use crate::alert::read_alert;
use crate::check::{Field, Phase, Report, closest, with_suggestion};
use crate::diagnostic::{Diagnostic, Diagnostics, SourceFile};
use crate::model::{AlertRule, DEFAULT_ENV, PublicPort, ServerSettings, Service, System};
use crate::node::{self, Entry, Node, Span, Table, Value};
use crate::rule_file;
use crate::service::{HEALTH_KINDS, ServiceSpans, normalize, read_service};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const TOP_KEYS: &[&str] = &[
    "system",
    "server",
    "service",
    "alert",
    "monitoring",
    "receiver",
    "route",
    "inhibit",
    "env",
];
const SYSTEM_KEYS: &[&str] = &["name", "rule_files", "builtin_inhibit"];
const SERVER_KEYS: &[&str] = &["listen", "url"];
const ENV_KEYS: &[&str] = &[
    "server",
    "system",
    "service",
    "alert",
    "monitoring",
    "receiver",
    "route",
    "inhibit",
];
const ENV_SYSTEM_KEYS: &[&str] = &["rule_files", "builtin_inhibit"];

/// The environments a file declares: `dev` first, then every `[env.NAME]` in name order.
/// Best effort: a file with syntax errors still lists what could be read.
pub fn environments(text: &str) -> Vec<String> {
    let mut names = vec![DEFAULT_ENV.to_string()];
    let (document, _errors) = toml::de::DeTable::parse_recoverable(text);
    if let Some(toml::de::DeValue::Table(envs)) = document.get_ref().get("env").map(|v| v.get_ref())
    {
        for key in envs.keys() {
            if key.get_ref() != DEFAULT_ENV {
                names.push(key.get_ref().to_string());
            }
        }
    }
    names
}

/// Parse+validate `text` (display name `file_name`, relative paths against `base_dir`) and
/// resolve `env`. Problems with single values anywhere in the file are reported whatever
/// `env` is; problems of the merged whole only for `env`.
pub fn resolve(
    file_name: &str,
    text: &str,
    base_dir: &Path,
    env: &str,
) -> Result<System, Diagnostics> {
    let source = SourceFile::new(file_name, text);
    let root = parse(&source)?;
    let declared = declared_environments(&root);
    let mut analysis = analyze(&source, &root, base_dir, &[]);
    if !declared.iter().any(|name| name == env) {
        let list = declared.join(", ");
        let hint = match closest(env, declared.iter().map(String::as_str)) {
            Some(best) => format!("did you mean '{best}'? The declared environments are: {list}"),
            None => format!("the declared environments are: {list}; add [env.{env}] to declare it"),
        };
        analysis.shape.push(Diagnostic::whole_file(
            file_name,
            format!("environment '{env}' is not declared in {file_name}"),
            hint,
        ));
        return Err(finish(file_name, analysis.shape));
    }
    let (system, build_diagnostics) = build(&source, &root, base_dir, env);
    let mut diagnostics = analysis.shape;
    diagnostics.extend(build_diagnostics);
    if diagnostics.is_empty() {
        Ok(system)
    } else {
        Err(finish(file_name, diagnostics))
    }
}

/// Validates the base and every environment, all problems at once, deduplicated. A problem
/// that appears only in some environments says which.
pub fn validate_all(
    file_name: &str,
    text: &str,
    base_dir: &Path,
) -> Result<Vec<System>, Diagnostics> {
    let source = SourceFile::new(file_name, text);
    let root = parse(&source)?;
    let declared = declared_environments(&root);
    let analysis = analyze(&source, &root, base_dir, &declared);
    let mut diagnostics = analysis.shape;
    let shape_identities: BTreeSet<_> = diagnostics.iter().map(Diagnostic::identity).collect();
    let mut envs_by_problem: BTreeMap<_, (Diagnostic, Vec<String>)> = BTreeMap::new();
    let mut systems = Vec::new();
    for (env, system, build_diagnostics) in analysis.builds {
        for diagnostic in build_diagnostics {
            if shape_identities.contains(&diagnostic.identity()) {
                continue;
            }
            envs_by_problem
                .entry(diagnostic.identity())
                .or_insert_with(|| (diagnostic, Vec::new()))
                .1
                .push(env.clone());
        }
        systems.push(system);
    }
    for (_, (mut diagnostic, envs)) in envs_by_problem {
        if envs.len() < declared.len() {
            let quoted: Vec<String> = envs.iter().map(|env| format!("'{env}'")).collect();
            let noun = if envs.len() == 1 {
                "environment"
            } else {
                "environments"
            };
            diagnostic.message =
                format!("{} (in {noun} {})", diagnostic.message, quoted.join(", "));
        }
        diagnostics.push(diagnostic);
    }
    if diagnostics.is_empty() {
        Ok(systems)
    } else {
        Err(finish(file_name, diagnostics))
    }
}

/// Reads the file and resolves `env`; the folder holding the file is the base folder.
pub fn load(path: &Path, env: &str) -> Result<System, Diagnostics> {
    let file_name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| {
        Diagnostics::from(Diagnostic::whole_file(
            &file_name,
            format!("cannot read {file_name}: {}", io_reason(&error)),
            "run `tandem init` to create one, or pass -f FILE",
        ))
    })?;
    let base_dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => Path::new(".").to_path_buf(),
    };
    resolve(&file_name, &text, &normalize(&base_dir), env)
}

/// The OS reason without Rust's " (os error 2)" suffix.
fn io_reason(error: &std::io::Error) -> String {
    let text = error.to_string();
    match text.find(" (os error") {
        Some(cut) => text[..cut].to_string(),
        None => text,
    }
}

fn finish(file_name: &str, diagnostics: Vec<Diagnostic>) -> Diagnostics {
    let mut diagnostics = Diagnostics(diagnostics);
    diagnostics.sort_and_dedup(file_name);
    diagnostics
}

fn parse(source: &SourceFile<'_>) -> Result<Table, Diagnostics> {
    match node::parse(source.text) {
        Ok(Node {
            value: Value::Table(root),
            ..
        }) => Ok(root),
        Ok(_) => Ok(Table::default()),
        Err(errors) => {
            let diagnostics = errors
                .into_iter()
                .map(|error| syntax_diagnostic(source, error))
                .collect();
            Err(finish(source.name, diagnostics))
        }
    }
}

fn syntax_diagnostic(source: &SourceFile<'_>, error: node::SyntaxError) -> Diagnostic {
    if error.message == "duplicate key" {
        let key = source
            .text
            .get(error.span.clone())
            .unwrap_or("")
            .to_string();
        return source.diagnostic(
            error.span,
            format!("invalid TOML: key '{key}' is defined twice"),
            "a key (or [table]) may appear once; merge the two or remove one",
        );
    }
    source.diagnostic(
        error.span,
        format!("invalid TOML: {}", error.message),
        "fix the TOML syntax (https://toml.io); strings need quotes, and each key = value is on its own line",
    )
}

fn declared_environments(root: &Table) -> Vec<String> {
    let mut names = vec![DEFAULT_ENV.to_string()];
    if let Some(envs) = root.table("env") {
        names.extend(envs.0.keys().filter(|name| *name != DEFAULT_ENV).cloned());
    }
    names
}

struct Analysis {
    shape: Vec<Diagnostic>,
    builds: Vec<(String, System, Vec<Diagnostic>)>,
}

fn analyze(source: &SourceFile<'_>, root: &Table, base_dir: &Path, envs: &[String]) -> Analysis {
    let base_dir = normalize(base_dir);
    let mut report = Report::new(source, Phase::Shape);
    check_shape(&mut report, root, &base_dir);
    let builds = envs
        .iter()
        .map(|env| {
            let (system, diagnostics) = build(source, root, &base_dir, env);
            (env.clone(), system, diagnostics)
        })
        .collect();
    Analysis {
        shape: report.diagnostics,
        builds,
    }
}

/// Phase one: every table as written.
fn check_shape(report: &mut Report<'_>, root: &Table, base_dir: &Path) {
    for entry in root.entries() {
        if TOP_KEYS.contains(&entry.key.as_str()) {
            continue;
        }
        let hint = if SYSTEM_KEYS.contains(&entry.key.as_str()) {
            format!("put '{}' under [system]", entry.key)
        } else if crate::service::SERVICE_KEYS.contains(&entry.key.as_str()) {
            format!(
                "'{}' belongs to a service: put it under [service.NAME]",
                entry.key
            )
        } else {
            with_suggestion(
                &entry.key,
                TOP_KEYS.iter().copied(),
                format!("the top-level tables are: {}", TOP_KEYS.join(", ")),
            )
        };
        report.value_error(
            entry.key_span.clone(),
            format!("unknown top-level key '{}'", entry.key),
            hint,
        );
    }
    if let Some(system) = root.get("system") {
        read_system(report, system, "[system]", SYSTEM_KEYS);
    }
    if let Some(server) = root.get("server") {
        read_server(report, server, "[server]");
    }
    if let Some(monitoring) = root.get("monitoring") {
        crate::monitoring::read_monitoring(
            report,
            monitoring,
            "[monitoring]",
            &mut Default::default(),
        );
    }
    let base_services = read_services(report, root.get("service"), base_dir);
    check_variable_names(report, root.get("service"));
    if let Some(alerts) = root.get("alert") {
        read_alerts(report, alerts, "[[alert]]");
    }
    if let Some(receivers) = root.get("receiver") {
        crate::notify::read_receivers(report, receivers, "[[receiver]]");
    }
    if let Some(routes) = root.get("route") {
        crate::notify::read_routes(report, routes, "[[route]]");
    }
    if let Some(inhibits) = root.get("inhibit") {
        crate::inhibit::read_inhibits(report, inhibits, "[[inhibit]]");
    }
    let Some(envs_entry) = root.get("env") else {
        return;
    };
    let Some(envs) = report.table(envs_entry, &Field::new("the file", "[env.prod]")) else {
        return;
    };
    for env in envs.entries() {
        check_name(report, env, "environment");
        let section = format!("[env.{}]", env.key);
        let Some(overlay) =
            report.table(env, &Field::new(&section, "[env.prod] with keys below it"))
        else {
            continue;
        };
        report.unknown_keys(overlay, &section, ENV_KEYS);
        if let Some(server) = overlay.get("server") {
            match &server.node.value {
                Value::String(_) => {
                    read_server_url(report, server, &section);
                }
                _ => {
                    read_server(report, server, &format!("[env.{}.server]", env.key));
                }
            }
        }
        if let Some(system) = overlay.get("system") {
            let system_section = format!("[env.{}.system]", env.key);
            if let Some(table) = system.node.as_table()
                && let Some(name) = table.get("name")
            {
                report.value_error(
                    name.key_span.clone(),
                    format!("'name' cannot be changed in {system_section}"),
                    "the system has one name in every environment; set it in [system]",
                );
            }
            // 'name' is reported above with its own message, not as an unknown key.
            read_system(report, system, &system_section, SYSTEM_KEYS);
        }
        if let Some(services_entry) = overlay.get("service")
            && let Some(services) = report.table(
                services_entry,
                &Field::new(&section, "[env.prod.service.api]"),
            )
        {
            for service in services.entries() {
                let service_section = format!("[env.{}.service.{}]", env.key, service.key);
                if !base_services.contains(&service.key) {
                    report.value_error(
                        service.key_span.clone(),
                        format!(
                            "environment '{}' overlays service '{}', which is not declared in the base",
                            env.key, service.key
                        ),
                        with_suggestion(
                            &service.key,
                            base_services.iter().map(String::as_str),
                            format!(
                                "overlays only change services; declare [service.{}] in the base (replicas = 0 keeps it stopped where it should not run)",
                                service.key
                            ),
                        ),
                    );
                }
                read_service(report, &service.key, service, &service_section, base_dir);
            }
        }
        if let Some(alerts) = overlay.get("alert") {
            read_alerts(report, alerts, &format!("[[env.{}.alert]]", env.key));
        }
        if let Some(receivers) = overlay.get("receiver") {
            crate::notify::read_receivers(
                report,
                receivers,
                &format!("[[env.{}.receiver]]", env.key),
            );
        }
        if let Some(routes) = overlay.get("route") {
            crate::notify::read_routes(report, routes, &format!("[[env.{}.route]]", env.key));
        }
        if let Some(inhibits) = overlay.get("inhibit") {
            crate::inhibit::read_inhibits(
                report,
                inhibits,
                &format!("[[env.{}.inhibit]]", env.key),
            );
        }
        if let Some(monitoring) = overlay.get("monitoring") {
            crate::monitoring::read_monitoring(
                report,
                monitoring,
                &format!("[env.{}.monitoring]", env.key),
                &mut Default::default(),
            );
        }
    }
}

/// Reads the base services (shape phase); returns their names.
fn read_services(
    report: &mut Report<'_>,
    services: Option<&Entry>,
    base_dir: &Path,
) -> Vec<String> {
    let Some(services_entry) = services else {
        return Vec::new();
    };
    let Some(services) = report.table(services_entry, &Field::new("the file", "[service.api]"))
    else {
        return Vec::new();
    };
    let mut names = Vec::new();
    for service in services.entries() {
        check_name(report, service, "service");
        read_service(
            report,
            &service.key,
            service,
            &format!("[service.{}]", service.key),
            base_dir,
        );
        names.push(service.key.clone());
    }
    names
}

/// Names of services and environments: lowercase letters, digits, '-' and '_'.
fn check_name(report: &mut Report<'_>, entry: &Entry, what: &str) {
    let name = &entry.key;
    let mut chars = name.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && name.len() <= 63;
    if !valid {
        report.value_error(
            entry.key_span.clone(),
            format!("'{name}' is not a valid {what} name"),
            "use lowercase letters, digits, '-' and '_', starting with a letter (at most 63 characters)",
        );
    }
}

/// The variable a dependent receives for a service: `api-v2` -> `API_V2`.
pub(crate) fn variable_stem(service: &str) -> String {
    service.to_ascii_uppercase().replace('-', "_")
}

/// Two services whose names give the same `<NAME>_URL` variable.
fn check_variable_names(report: &mut Report<'_>, services: Option<&Entry>) {
    let Some(services) = services.and_then(|entry| entry.node.as_table()) else {
        return;
    };
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    for service in services.entries() {
        let stem = variable_stem(&service.key);
        match seen.get(&stem) {
            Some(first) => report.value_error(
                service.key_span.clone(),
                format!(
                    "services '{first}' and '{}' would both give dependents {stem}_URL and {stem}_ADDR",
                    service.key
                ),
                "rename one of them",
            ),
            None => {
                seen.insert(stem, &service.key);
            }
        }
    }
}

fn read_system(
    report: &mut Report<'_>,
    entry: &Entry,
    section: &str,
    known: &[&str],
) -> (Option<String>, Option<Vec<(String, Span)>>) {
    let Some(table) = report.table(entry, &Field::new(section, "[system] with name = \"shop\""))
    else {
        return (None, None);
    };
    report.unknown_keys(table, section, known);
    let mut name = None;
    if let Some(name_entry) = table.get("name")
        && let Some(text) = report.string(name_entry, &Field::new(section, "name = \"shop\""))
    {
        if text.trim().is_empty() {
            report.value_error(
                name_entry.node.span.clone(),
                "the system name is empty",
                "name the system, as in name = \"shop\"",
            );
        }
        name = Some(text.to_string());
    }
    if let Some(flag) = table.get("builtin_inhibit") {
        crate::inhibit::read_builtin_inhibit(report, flag);
    }
    let rule_files = table.get("rule_files").and_then(|rule_files| {
        report
            .strings(
                rule_files,
                &Field::new(section, "rule_files = [\"alerts/*.yml\"]"),
            )
            .map(|items| {
                items
                    .into_iter()
                    .map(|(text, span)| (text.to_string(), span))
                    .collect()
            })
    });
    (name, rule_files)
}

/// `server = { listen, url }`; returns the settings and the span of `listen`.
fn read_server(
    report: &mut Report<'_>,
    entry: &Entry,
    section: &str,
) -> (ServerSettings, Option<Span>) {
    let mut settings = ServerSettings::default();
    let Some(table) = report.table(
        entry,
        &Field::new(section, "[server] with listen = \"127.0.0.1:7300\""),
    ) else {
        return (settings, None);
    };
    report.unknown_keys(table, section, SERVER_KEYS);
    let mut listen_span = None;
    if let Some(listen) = table.get("listen")
        && let Some(address) =
            report.string(listen, &Field::new(section, "listen = \"127.0.0.1:7300\""))
    {
        if listen_port(address).is_none() {
            report.value_error(
                listen.node.span.clone(),
                format!("listen address '{address}' is not HOST:PORT"),
                "write it like \"127.0.0.1:7300\" (port from 0 to 65535; 0 takes any free port)",
            );
        }
        listen_span = Some(listen.node.span.clone());
        settings.listen = Some(address.to_string());
    }
    if let Some(url) = table.get("url") {
        settings.url = read_server_url(report, url, section);
    }
    (settings, listen_span)
}

fn read_server_url(report: &mut Report<'_>, entry: &Entry, section: &str) -> Option<String> {
    let url = report.string(
        entry,
        &Field::new(section, "server = \"https://prod.example.net:7300\""),
    )?;
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    if rest.is_none_or(|rest| rest.is_empty() || rest.starts_with('/')) {
        report.value_error(
            entry.node.span.clone(),
            format!("server URL '{url}' is not an http:// or https:// URL"),
            "write it like \"https://prod.example.net:7300\"",
        );
    }
    Some(url.to_string())
}

/// The port of a `HOST:PORT` listen address (0: any free port, chosen when the server starts).
fn listen_port(address: &str) -> Option<u16> {
    let (host, port) = address.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    (!host.is_empty()).then_some(port)
}

fn read_alerts(report: &mut Report<'_>, entry: &Entry, section: &str) -> Vec<(AlertRule, Span)> {
    let Some(items) = report.array(
        entry,
        &Field::new(section, "[[alert]] tables with name and expr"),
    ) else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| read_alert(report, item, section))
        .collect()
}

/// Phase two: one environment, merged, checked as a whole.
fn build(
    source: &SourceFile<'_>,
    root: &Table,
    base_dir: &Path,
    env: &str,
) -> (System, Vec<Diagnostic>) {
    let base_dir = normalize(base_dir);
    let mut report = Report::new(source, Phase::Build);
    let overlay = root.table("env").and_then(|envs| envs.table(env));

    let (name, base_rule_files) = match root.get("system") {
        Some(system) => read_system(&mut report, system, "[system]", SYSTEM_KEYS),
        None => (None, None),
    };
    let name = name.unwrap_or_else(|| {
        base_dir.file_name().map_or_else(
            || "system".to_string(),
            |n| n.to_string_lossy().into_owned(),
        )
    });
    let overlay_rule_files = overlay
        .and_then(|overlay| overlay.get("system"))
        .and_then(|system| read_system(&mut report, system, "[env.system]", ENV_SYSTEM_KEYS).1);
    let rule_files = overlay_rule_files.or(base_rule_files).unwrap_or_default();

    let (mut server, mut listen_span) = match root.get("server") {
        Some(server) => read_server(&mut report, server, "[server]"),
        None => (ServerSettings::default(), None),
    };
    if let Some(overlay_server) = overlay.and_then(|overlay| overlay.get("server")) {
        if overlay_server.node.as_str().is_some() {
            server.url = read_server_url(&mut report, overlay_server, "[env]");
        } else {
            let (settings, span) = read_server(&mut report, overlay_server, "[env.server]");
            if settings.listen.is_some() {
                server.listen = settings.listen;
                listen_span = span;
            }
            if settings.url.is_some() {
                server.url = settings.url;
            }
        }
    }

    let mut monitoring = crate::model::Monitoring::default();
    if let Some(base) = root.get("monitoring") {
        crate::monitoring::read_monitoring(&mut report, base, "[monitoring]", &mut monitoring);
    }
    if let Some(over) = overlay.and_then(|overlay| overlay.get("monitoring")) {
        crate::monitoring::read_monitoring(&mut report, over, "[env.monitoring]", &mut monitoring);
    }

    let mut services = BTreeMap::new();
    let mut service_spans = BTreeMap::new();
    let overlay_services = overlay.and_then(|overlay| overlay.table("service"));
    if let Some(base_services) = root.table("service") {
        for entry in base_services.entries() {
            let merged = match overlay_services.and_then(|services| services.get(&entry.key)) {
                Some(overlay_entry) => merge_service(entry, overlay_entry),
                None => entry.clone(),
            };
            let section = format!("[service.{}]", entry.key);
            let (service, spans) =
                read_service(&mut report, &entry.key, &merged, &section, &base_dir);
            services.insert(entry.key.clone(), service);
            service_spans.insert(entry.key.clone(), spans);
        }
    }

    let mut alerts = root
        .get("alert")
        .map(|alerts| read_alerts(&mut report, alerts, "[[alert]]"))
        .unwrap_or_default();
    if let Some(overlay_alerts) = overlay.and_then(|overlay| overlay.get("alert")) {
        alerts.extend(read_alerts(&mut report, overlay_alerts, "[[env.alert]]"));
    }
    check_duplicate_alerts(&mut report, &alerts);

    let notify_lists = |report: &mut Report<'_>, table: Option<&Table>, section: &str| {
        let receivers = table
            .and_then(|t| t.get("receiver"))
            .map(|e| crate::notify::read_receivers(report, e, &format!("[[{section}receiver]]")))
            .unwrap_or_default();
        let routes = table
            .and_then(|t| t.get("route"))
            .map(|e| crate::notify::read_routes(report, e, &format!("[[{section}route]]")))
            .unwrap_or_default();
        (receivers, routes)
    };
    let base_notify = notify_lists(&mut report, Some(root), "");
    let overlay_notify = notify_lists(&mut report, overlay, "env.");
    let (receivers, routes) =
        crate::notify::merge_and_check(&mut report, base_notify, overlay_notify);
    let mut inhibits = root
        .get("inhibit")
        .map(|e| crate::inhibit::read_inhibits(&mut report, e, "[[inhibit]]"))
        .unwrap_or_default();
    if let Some(e) = overlay.and_then(|overlay| overlay.get("inhibit")) {
        inhibits.extend(crate::inhibit::read_inhibits(
            &mut report,
            e,
            "[[env.inhibit]]",
        ));
    }
    let builtin_inhibit = [Some(root), overlay]
        .into_iter()
        .flatten()
        .filter_map(|t| t.table("system")?.get("builtin_inhibit"))
        .filter_map(|e| crate::inhibit::read_builtin_inhibit(&mut report, e))
        .last()
        .unwrap_or(true);

    check_dependencies(&mut report, &services, &service_spans);
    check_ports(
        &mut report,
        &services,
        &service_spans,
        server.listen.as_deref(),
        listen_span,
    );
    check_rule_files(&mut report, &rule_files, &base_dir);

    let system = System {
        name,
        env: env.to_string(),
        server,
        service: services,
        alert: alerts.into_iter().map(|(rule, _)| rule).collect(),
        rule_files: rule_files.into_iter().map(|(pattern, _)| pattern).collect(),
        monitoring: crate::model::Monitoring {
            inhibit: inhibits,
            builtin_inhibit,
            ..monitoring
        },
        receiver: receivers,
        route: routes,
    };
    (system, report.diagnostics)
}

/// Merges an overlay service onto its base (see the module comment for the two special
/// cases: health check kind and release strategy).
fn merge_service(base: &Entry, overlay: &Entry) -> Entry {
    let (Some(base_table), Some(overlay_table)) = (base.node.as_table(), overlay.node.as_table())
    else {
        return overlay.clone();
    };
    let mut base_table = base_table.clone();
    if let (Some(base_health), Some(overlay_health)) = (
        base_table.0.get_mut("health"),
        overlay_table.table("health"),
    ) && HEALTH_KINDS
        .iter()
        .any(|kind| overlay_health.contains(kind))
        && let Value::Table(health) = &mut base_health.node.value
    {
        for kind in HEALTH_KINDS {
            health.0.remove(*kind);
        }
    }
    if let (Some(base_release), Some(overlay_release)) =
        (base_table.table("release"), overlay_table.table("release"))
    {
        let strategy = |table: &Table| {
            table
                .get("strategy")
                .and_then(|s| s.node.as_str().map(str::to_string))
        };
        if let Some(new_strategy) = strategy(overlay_release)
            && strategy(base_release).as_deref() != Some(new_strategy.as_str())
        {
            base_table.0.remove("release");
        }
    }
    Entry {
        key: base.key.clone(),
        key_span: base.key_span.clone(),
        node: Node {
            span: base.node.span.clone(),
            value: Value::Table(node::merge(&base_table, overlay_table)),
        },
    }
}

fn check_duplicate_alerts(report: &mut Report<'_>, alerts: &[(AlertRule, Span)]) {
    let mut seen = BTreeSet::new();
    for (rule, span) in alerts {
        if !seen.insert(rule.name.as_str()) {
            report.context_error(
                span.clone(),
                format!("alert '{}' is declared twice", rule.name),
                "give each alert its own name",
            );
        }
    }
}

fn check_dependencies(
    report: &mut Report<'_>,
    services: &BTreeMap<String, Service>,
    spans: &BTreeMap<String, ServiceSpans>,
) {
    for (name, service_spans) in spans {
        for (dependency, span) in &service_spans.depends_on {
            if dependency == name {
                report.context_error(
                    span.clone(),
                    format!("service '{name}' depends on itself"),
                    format!("remove '{name}' from its own depends_on"),
                );
            } else if let Some(target) = services.get(dependency) {
                let dependent_runs = services.get(name).is_some_and(|s| s.replicas > 0);
                if target.replicas == 0 && dependent_runs {
                    report.context_error(
                        span.clone(),
                        format!("service '{name}' depends on '{dependency}', which has replicas = 0"),
                        format!("'{name}' would wait for '{dependency}' forever; run '{dependency}' or scale '{name}' to 0 too"),
                    );
                }
            } else {
                report.context_error(
                    span.clone(),
                    format!("service '{name}' depends on '{dependency}', which is not declared"),
                    with_suggestion(
                        dependency,
                        services.keys().map(String::as_str),
                        format!("declare [service.{dependency}], or remove it from depends_on"),
                    ),
                );
            }
        }
    }
    for cycle in find_cycles(services) {
        let (first, second) = (&cycle[0], &cycle[1]);
        let span = spans
            .get(first)
            .and_then(|s| s.depends_on.iter().find(|(d, _)| d == second))
            .map(|(_, span)| span.clone())
            .unwrap_or(0..0);
        report.context_error(
            span,
            format!("dependency cycle: {}", cycle.join(" -> ")),
            "services start after what they depend on, so a cycle can never start; remove one of these dependencies",
        );
    }
}

/// Every elementary cycle found by a depth-first search, each once, starting at its
/// smallest name and closed (`a -> b -> a`). Self-dependencies are reported elsewhere.
pub(crate) fn find_cycles(services: &BTreeMap<String, Service>) -> Vec<Vec<String>> {
    fn visit(
        name: &str,
        services: &BTreeMap<String, Service>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        cycles: &mut BTreeSet<Vec<String>>,
    ) {
        if let Some(position) = path.iter().position(|seen| seen == name) {
            let mut cycle: Vec<String> = path[position..].to_vec();
            let smallest = cycle
                .iter()
                .enumerate()
                .min_by(|a, b| a.1.cmp(b.1))
                .map_or(0, |(index, _)| index);
            cycle.rotate_left(smallest);
            cycle.push(cycle[0].clone());
            cycles.insert(cycle);
            return;
        }
        if done.contains(name) {
            return;
        }
        let Some(service) = services.get(name) else {
            return;
        };
        path.push(name.to_string());
        for dependency in &service.depends_on {
            if dependency != name {
                visit(dependency, services, path, done, cycles);
            }
        }
        path.pop();
        done.insert(name.to_string());
    }
    let mut cycles = BTreeSet::new();
    let mut done = BTreeSet::new();
    for name in services.keys() {
        visit(name, services, &mut Vec::new(), &mut done, &mut cycles);
    }
    cycles.into_iter().collect()
}

/// Two services cannot bind clashing addresses (the same port, and the same address or
/// either one all interfaces), and none may take the server's listen port.
fn check_ports(
    report: &mut Report<'_>,
    services: &BTreeMap<String, Service>,
    spans: &BTreeMap<String, ServiceSpans>,
    listen: Option<&str>,
    listen_span: Option<Span>,
) {
    let mut owners: Vec<(PublicPort, &str)> = Vec::new();
    let server = listen.and_then(listen_address);
    for (name, service) in services {
        let (Some(port), Some(span)) = (service.port, spans.get(name).and_then(|s| s.port.clone()))
        else {
            continue;
        };
        if let Some((first_port, first)) =
            owners.iter().find(|(other, _)| other.clashes_with(&port))
        {
            let message = if *first_port == port {
                format!("port {port} is used by both '{first}' and '{name}'")
            } else {
                format!(
                    "port {} of '{name}' clashes with {} of '{first}': an address of all interfaces takes the port on every address",
                    port.addr(),
                    first_port.addr()
                )
            };
            report.context_error(span.clone(), message, "give each service its own port");
        } else {
            owners.push((port, name));
        }
        let server_clash = match server {
            Some((Some(ip), server_port)) => port.clashes_with(&PublicPort {
                ip,
                port: server_port,
            }),
            // A host name: it may be any address of this machine.
            Some((None, server_port)) => server_port == port.port,
            None => false,
        };
        if server_clash {
            let at = listen_span
                .as_ref()
                .map(|listen| {
                    let d = report.source.diagnostic(listen.clone(), "", "");
                    format!(" (line {})", d.line)
                })
                .unwrap_or_default();
            report.context_error(
                span,
                format!(
                    "service '{name}' uses port {}, which the tandem server listens on{at}",
                    port.port
                ),
                "change the service's port or the server's listen address",
            );
        }
    }
}

/// The address and port of a `HOST:PORT` listen address; the address is `None` for a host
/// name.
fn listen_address(address: &str) -> Option<(Option<std::net::IpAddr>, u16)> {
    let port = listen_port(address)?;
    let ip = address
        .parse::<std::net::SocketAddr>()
        .ok()
        .map(|addr| addr.ip());
    Some((ip, port))
}

fn check_rule_files(report: &mut Report<'_>, patterns: &[(String, Span)], base_dir: &Path) {
    let mut checked = BTreeSet::new();
    for (pattern, span) in patterns {
        let files = rule_file::expand(base_dir, pattern);
        if files.is_empty() {
            report.context_error(
                span.clone(),
                format!("rule_files pattern '{pattern}' matches no file"),
                "fix the pattern or add the file; patterns are relative to the folder holding the system file and may use * and **",
            );
        }
        for (path, shown) in files {
            if !checked.insert(path.clone()) {
                continue;
            }
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    if report.phase == Phase::Build {
                        report
                            .diagnostics
                            .extend(rule_file::check_rule_file(&shown, &text));
                    }
                }
                Err(error) => report.context_error(
                    span.clone(),
                    format!("cannot read rule file {shown}: {}", io_reason(&error)),
                    "check the file's permissions",
                ),
            }
        }
    }
}
