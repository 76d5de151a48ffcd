//! Commands that ask a running server: `status`, `logs`, `restart`, `plan`, `history`,
//! `show`, `diff`, `timeline`, `note`.

use super::{Ctx, author, since_ms};
use crate::cli::{Output, RenderOutput};
use crate::output::{age, bold, bytes, dim, green, red, table, timestamp, yellow};
use anyhow::{Result, bail};
use hyper::Method;
use tandem_api::{
    ApplyRequest, Event, InstanceState, LogEntry, NoteRequest, Plan, Provenance, Revision,
    RevisionStatus, RevisionSummary, ServiceAction, StatusResponse, now_ms,
};

fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub(crate) async fn status(ctx: &Ctx, format: Output) -> Result<u8> {
    let status: StatusResponse = ctx.client()?.get_json("/v1/status").await?;
    if format == Output::Json {
        print_json(&status)?;
        return Ok(0);
    }
    let s = &status.server;
    println!(
        "{} {} · pid {} · tandem {} · API http://{} · data {} · up {}",
        bold("server"),
        s.env,
        s.pid,
        s.version,
        s.listen,
        s.data_dir,
        age(now_ms() - s.started_ms)
    );
    if let Some(w) = &s.limits_warning {
        println!("{} {w}", yellow("warning:"));
    }
    match status.live_revision {
        Some(n) => println!("{} {n} is live", bold("revision")),
        None => println!("{} none applied yet", bold("revision")),
    }
    if let Some(d) = &status.deploying {
        println!(
            "{} a {}{} by {} has been running for {}",
            yellow("deploying:"),
            d.kind.as_str(),
            d.revision
                .map(|r| format!(" of revision {r}"))
                .unwrap_or_default(),
            d.who,
            age(now_ms() - d.started_ms)
        );
    }
    println!();
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for service in &status.services {
        if service.instances.is_empty() {
            rows.push(vec![
                service.name.clone(),
                "-".into(),
                yellow("no instances"),
                "".into(),
                "".into(),
                "".into(),
                "".into(),
                "".into(),
                "".into(),
                "".into(),
                "".into(),
            ]);
        }
        for i in &service.instances {
            let state = match i.state {
                InstanceState::Healthy if i.warm_until_ms.is_some() => yellow("warm"),
                InstanceState::Healthy => green(i.state.as_str()),
                InstanceState::Running | InstanceState::Starting | InstanceState::Stopping => {
                    yellow(i.state.as_str())
                }
                _ => red(i.state.as_str()),
            };
            let port = match (service.port, &service.address) {
                (Some(p), address) => {
                    let public = address.clone().unwrap_or_else(|| p.to_string());
                    if service.tls {
                        let address = address.clone().unwrap_or_else(|| format!("127.0.0.1:{p}"));
                        format!("https://{address}→{}", i.port)
                    } else {
                        format!("{public}→{}", i.port)
                    }
                }
                (None, _) => format!("{}", i.port),
            };
            let uptime = match (i.state.is_up(), i.started_ms) {
                (true, Some(t)) => age(now_ms() - t),
                _ => "-".into(),
            };
            let memory = match (i.memory_bytes, i.memory_limit_bytes) {
                (Some(m), Some(l)) => format!("{}/{}", bytes(m), bytes(l)),
                (Some(m), None) => bytes(m),
                _ => "-".into(),
            };
            let cpu = match (i.cpu_cores, i.cpu_limit_cores) {
                (Some(c), Some(l)) => format!("{:.1}%/{:.0}%", c * 100.0, l * 100.0),
                (Some(c), None) => format!("{:.1}%", c * 100.0),
                _ => "-".into(),
            };
            rows.push(vec![
                service.name.clone(),
                i.id.clone(),
                state,
                port,
                i.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                uptime,
                i.restarts.to_string(),
                i.revision.to_string(),
                i.traffic_pct
                    .map(|t| format!("{t:.0}%"))
                    .unwrap_or_else(|| "-".into()),
                cpu,
                memory,
            ]);
            if let Some(until) = i.warm_until_ms {
                notes.push(format!(
                    "{}: kept warm without traffic for {} more, so a rollback to revision {} is a switch",
                    i.id,
                    age(until - now_ms()),
                    i.revision
                ));
            }
            if let Some(reason) = &i.reason {
                notes.push(format!("{}: {reason}", i.id));
            } else if let Some(h) = &i.health_error {
                notes.push(format!("{}: health check: {h}", i.id));
            }
            if let Some(exit) = &i.last_exit
                && i.reason.is_none()
            {
                notes.push(format!(
                    "{}: last exit {} ago: {}",
                    i.id,
                    age(now_ms() - exit.time_ms),
                    exit.description
                ));
            }
        }
    }
    table(
        &[
            "SERVICE", "INSTANCE", "STATE", "PORT", "PID", "UPTIME", "RESTARTS", "REV", "TRAFFIC",
            "CPU", "MEMORY",
        ],
        &rows,
    );
    if !notes.is_empty() {
        println!();
        for n in notes {
            println!("{} {n}", dim("·"));
        }
    }
    Ok(0)
}

pub(crate) async fn logs(
    ctx: &Ctx,
    services: Vec<String>,
    follow: bool,
    since: Option<String>,
    tail: Option<usize>,
) -> Result<u8> {
    let mut query = vec![format!("follow={follow}")];
    if !services.is_empty() {
        query.push(format!("service={}", services.join(",")));
    }
    if let Some(ms) = since_ms(since.as_deref())? {
        query.push(format!("since_ms={ms}"));
    }
    if let Some(n) = tail {
        query.push(format!("tail={n}"));
    }
    let path = format!("/v1/logs?{}", query.join("&"));
    let width = std::sync::atomic::AtomicUsize::new(12);
    let client = ctx.client()?;
    let stream = client.stream::<()>(Method::GET, &path, None, |line| {
        if let Ok(e) = serde_json::from_str::<LogEntry>(line) {
            super::lifecycle::print_log_line(&e, &width);
        }
        Ok(())
    });
    tokio::select! {
        r = stream => r?,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(0)
}

pub(crate) async fn restart(ctx: &Ctx, service: &str) -> Result<u8> {
    let answer: serde_json::Value = ctx
        .client()?
        .post_json(&format!("/v1/restart/{service}"), &serde_json::json!({}))
        .await?;
    let n = answer
        .get("instances")
        .and_then(|v| v.as_u64())
        .unwrap_or(0);
    println!("{} restarting {n} instance(s) of {service}", green("✓"));
    Ok(0)
}

pub(crate) async fn plan(ctx: &Ctx, format: Output) -> Result<u8> {
    let system = ctx.load()?;
    let request = ApplyRequest {
        system,
        provenance: Provenance {
            author: author(&ctx.project_dir),
            ..Default::default()
        },
        force: false,
    };
    let plan: Plan = ctx.client()?.post_json("/v1/plan", &request).await?;
    if format == Output::Json {
        print_json(&plan)?;
        return Ok(if plan.has_changes() { 2 } else { 0 });
    }
    match plan.live_revision {
        Some(n) if plan.same_as_live => {
            println!("the file equals live revision {n} of {}", plan.env)
        }
        Some(n) => println!("against live revision {n} of {}:", plan.env),
        None => println!(
            "nothing is live in {} yet; applying creates revision 1:",
            plan.env
        ),
    }
    if !plan.changes.is_empty() {
        println!();
        print_changes(&plan.changes);
    }
    let touched: Vec<_> = plan
        .services
        .iter()
        .filter(|s| s.action.touches())
        .collect();
    if !touched.is_empty() {
        println!();
        for s in &touched {
            let (mark, what) = match &s.action {
                ServiceAction::Start => (green("+"), "start".to_string()),
                ServiceAction::Replace => (
                    yellow("~"),
                    "replace (new instances, then the old stop)".to_string(),
                ),
                ServiceAction::Scale { from, to } => (yellow("~"), format!("scale {from} → {to}")),
                ServiceAction::Restore => (green("+"), "start missing instances".to_string()),
                ServiceAction::Remove => (red("-"), "stop and remove".to_string()),
                ServiceAction::Keep => (" ".into(), "keep".to_string()),
            };
            match &s.strategy {
                Some(strategy) => {
                    println!("{mark} {}: {what} · release: {strategy}", bold(&s.name))
                }
                None => println!("{mark} {}: {what}", bold(&s.name)),
            }
            if !s.because.is_empty() {
                println!("    because: {}", s.because.join(", "));
            }
            if !s.blast_radius.is_empty() {
                println!(
                    "    blast radius: {} depend on it",
                    s.blast_radius.join(", ")
                );
            }
        }
    }
    let kept: Vec<&str> = plan
        .services
        .iter()
        .filter(|s| !s.action.touches())
        .map(|s| s.name.as_str())
        .collect();
    if !kept.is_empty() {
        println!("{}", dim(&format!("  unchanged: {}", kept.join(", "))));
    }
    if plan.has_changes() {
        println!("\n`tandem deploy` (or `tandem up`) applies this.");
        Ok(2)
    } else {
        println!("no changes.");
        Ok(0)
    }
}

fn short_json(value: &Option<serde_json::Value>) -> String {
    match value {
        None => "∅".into(),
        Some(serde_json::Value::String(s)) => format!("{s:?}"),
        Some(v) => {
            let text = v.to_string();
            if text.len() > 80 {
                format!("{}…", &text[..77])
            } else {
                text
            }
        }
    }
}

fn print_changes(changes: &[tandem_api::FieldChange]) {
    for c in changes {
        match (&c.old, &c.new) {
            (None, Some(_)) => println!("{} {} = {}", green("+"), c.path, short_json(&c.new)),
            (Some(_), None) => println!("{} {} (was {})", red("-"), c.path, short_json(&c.old)),
            _ => println!(
                "{} {}: {} → {}",
                yellow("~"),
                c.path,
                red(&short_json(&c.old)),
                green(&short_json(&c.new))
            ),
        }
    }
}

fn status_text(status: RevisionStatus) -> String {
    match status {
        RevisionStatus::Live => green("live"),
        RevisionStatus::Failed => red("failed"),
        RevisionStatus::Applying => yellow("applying"),
        RevisionStatus::Superseded => dim("superseded"),
        RevisionStatus::RolledBack => yellow("rolled-back"),
    }
}

pub(crate) async fn history(ctx: &Ctx, format: Output, limit: usize) -> Result<u8> {
    let list: Vec<RevisionSummary> = ctx
        .client()?
        .get_json(&format!("/v1/revisions?limit={limit}"))
        .await?;
    if format == Output::Json {
        print_json(&list)?;
        return Ok(0);
    }
    if list.is_empty() {
        println!(
            "no revisions in {} yet; `tandem up` applies the first",
            ctx.env
        );
        return Ok(0);
    }
    // The deployment that made (or failed to make) each revision live.
    let deployments: Vec<tandem_api::Deployment> = ctx
        .client()?
        .get_json(&format!("/v1/deployments?limit={}", limit * 4))
        .await
        .unwrap_or_default();
    let deployment_of = |number: u64| {
        // The oldest deployment of a revision is the one that tried to make it live.
        deployments
            .iter()
            .rev()
            .find(|d| d.revision == number)
            .map(|d| {
                let took = d
                    .finished_ms
                    .map(|f| format!(" {:.1}s", (f - d.started_ms) as f64 / 1000.0))
                    .unwrap_or_default();
                let outcome = match d.outcome {
                    Some(tandem_api::DeploymentOutcome::Succeeded) => "ok",
                    Some(tandem_api::DeploymentOutcome::RolledBack) => "rolled back",
                    Some(tandem_api::DeploymentOutcome::Failed) => "failed",
                    None => "running",
                };
                format!("#{} {} {outcome}{took}", d.id, d.kind.as_str())
            })
    };
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|r| {
            let commit = match &r.provenance.git_commit {
                Some(c) => format!(
                    "{}{}",
                    &c[..c.len().min(8)],
                    if r.provenance.git_dirty { "+dirty" } else { "" }
                ),
                None => "-".into(),
            };
            let mut message = r.provenance.message.clone().unwrap_or_default();
            if let Some(of) = r.rollback_of
                && message.is_empty()
            {
                message = format!("rollback to revision {of}");
            }
            if let Some(reason) = &r.reason {
                let first = reason.lines().next().unwrap_or_default();
                message = if message.is_empty() {
                    first.to_string()
                } else {
                    format!("{message} ({first})")
                };
            }
            vec![
                r.number.to_string(),
                status_text(r.status),
                timestamp(r.created_ms),
                r.provenance.author.clone(),
                commit,
                r.hash[..r.hash.len().min(12)].to_string(),
                deployment_of(r.number).unwrap_or_else(|| "-".into()),
                message,
            ]
        })
        .collect();
    table(
        &[
            "REV",
            "STATUS",
            "APPLIED (UTC)",
            "AUTHOR",
            "COMMIT",
            "HASH",
            "DEPLOYMENT",
            "MESSAGE",
        ],
        &rows,
    );
    Ok(0)
}

async fn fetch_revision(ctx: &Ctx, which: &str) -> Result<Revision> {
    if which != "live" && which.parse::<u64>().is_err() {
        bail!("'{which}' is not a revision: use a number from `tandem history`, or `live`");
    }
    ctx.client()?
        .get_json(&format!("/v1/revisions/{which}"))
        .await
}

pub(crate) async fn show(ctx: &Ctx, which: &str, format: RenderOutput) -> Result<u8> {
    let r = fetch_revision(ctx, which).await?;
    if format == RenderOutput::Json {
        print_json(&r)?;
        return Ok(0);
    }
    println!(
        "# revision {} of {} · {}",
        r.number,
        r.env,
        r.status.as_str()
    );
    println!(
        "# applied {} UTC by {}",
        timestamp(r.created_ms),
        r.provenance.author
    );
    if let Some(c) = &r.provenance.git_commit {
        println!(
            "# commit {c}{}",
            if r.provenance.git_dirty {
                " (with uncommitted changes)"
            } else {
                ""
            }
        );
    }
    if let Some(m) = &r.provenance.message {
        println!("# message: {m}");
    }
    if let Some(reason) = &r.reason {
        for (i, line) in reason.lines().enumerate() {
            let label = match r.status {
                RevisionStatus::RolledBack => "rolled back: ",
                _ => "failed: ",
            };
            println!("# {}{line}", if i == 0 { label } else { "  " });
        }
    }
    println!("# hash {}", r.hash);
    println!();
    print!("{}", tandem_spec::render_toml(&r.system));
    Ok(0)
}

pub(crate) async fn diff(ctx: &Ctx, a: &str, b: &str, format: Output) -> Result<u8> {
    let old = fetch_revision(ctx, a).await?;
    let new = fetch_revision(ctx, b).await?;
    let changes: Vec<tandem_api::FieldChange> = tandem_spec::diff(&old.system, &new.system)
        .into_iter()
        .map(|c| tandem_api::FieldChange {
            path: c.path,
            old: c.old,
            new: c.new,
        })
        .collect();
    if format == Output::Json {
        print_json(&changes)?;
        return Ok(0);
    }
    println!("revision {} → {}:", old.number, new.number);
    if changes.is_empty() {
        println!("  no differences");
    } else {
        print_changes(&changes);
    }
    Ok(0)
}

pub(crate) async fn timeline(
    ctx: &Ctx,
    since: Option<String>,
    format: Output,
    limit: usize,
) -> Result<u8> {
    let mut path = format!("/v1/events?limit={limit}");
    if let Some(ms) = since_ms(since.as_deref())? {
        path.push_str(&format!("&since_ms={ms}"));
    }
    let events: Vec<Event> = ctx.client()?.get_json(&path).await?;
    if format == Output::Json {
        print_json(&events)?;
        return Ok(0);
    }
    for e in events {
        let subject = e
            .instance
            .clone()
            .or_else(|| e.service.clone())
            .unwrap_or_else(|| e.env.clone());
        let who = e.who.map(|w| format!(" ({w})")).unwrap_or_default();
        println!(
            "{}  {:<6} {:<20} {:<14} {}{}",
            dim(&timestamp(e.time_ms)),
            e.env,
            e.kind.as_str(),
            subject,
            e.message,
            who
        );
    }
    Ok(0)
}

pub(crate) async fn note(ctx: &Ctx, text: &str) -> Result<u8> {
    let request = NoteRequest {
        text: text.to_string(),
        who: author(&ctx.project_dir),
    };
    let _: Event = ctx.client()?.post_json("/v1/notes", &request).await?;
    println!("{} noted in the {} timeline", green("✓"), ctx.env);
    Ok(0)
}

pub(crate) async fn deployments(ctx: &Ctx, format: Output, limit: usize) -> Result<u8> {
    let list: Vec<tandem_api::Deployment> = ctx
        .client()?
        .get_json(&format!("/v1/deployments?limit={limit}"))
        .await?;
    if format == Output::Json {
        print_json(&list)?;
        return Ok(0);
    }
    if list.is_empty() {
        println!("no deployments in {} yet", ctx.env);
        return Ok(0);
    }
    for d in &list {
        let outcome = match d.outcome {
            Some(tandem_api::DeploymentOutcome::Succeeded) => green("succeeded"),
            Some(tandem_api::DeploymentOutcome::RolledBack) => yellow("rolled back"),
            Some(tandem_api::DeploymentOutcome::Failed) => red("failed"),
            None => yellow("running"),
        };
        let took = d
            .finished_ms
            .map(|f| format!("{:.1}s", (f - d.started_ms) as f64 / 1000.0))
            .unwrap_or_else(|| "-".into());
        let from = d
            .from_revision
            .map(|r| format!(" from r{r}"))
            .unwrap_or_default();
        println!(
            "{} {} of r{}{from} by {} · {} UTC · {took} · {outcome}",
            bold(&format!("#{}", d.id)),
            d.kind.as_str(),
            d.revision,
            d.who,
            timestamp(d.started_ms),
        );
        if let Some(reason) = &d.reason {
            println!("    {}", reason.lines().next().unwrap_or_default());
        }
        for step in &d.steps {
            println!(
                "    {}  {}",
                dim(&timestamp(step.time_ms)[11..]),
                step.message
            );
        }
    }
    Ok(0)
}

/// Percent-encodes a query parameter value.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn series_name(metric: &serde_json::Value) -> String {
    let Some(map) = metric.as_object() else {
        return "{}".into();
    };
    let name = map.get("__name__").and_then(|v| v.as_str()).unwrap_or("");
    let labels: Vec<String> = map
        .iter()
        .filter(|(k, _)| *k != "__name__")
        .map(|(k, v)| format!("{k}=\"{}\"", v.as_str().unwrap_or("")))
        .collect();
    format!("{name}{{{}}}", labels.join(", "))
}

pub(crate) async fn query(
    ctx: &Ctx,
    expr: &str,
    range: Option<&str>,
    step: Option<&str>,
    format: Output,
) -> Result<u8> {
    let client = ctx.client()?;
    let now = now_ms();
    let path = match range {
        None => format!(
            "/api/v1/query?query={}&time={}",
            encode(expr),
            now as f64 / 1000.0
        ),
        Some(r) => {
            let range_ms = since_ms(Some(r))?
                .map(|since| now - since)
                .unwrap_or(3_600_000);
            let step_ms = match step {
                Some(s) => since_ms(Some(s))?
                    .map(|since| now - since)
                    .unwrap_or(15_000),
                None => (range_ms / 60).max(1000),
            };
            format!(
                "/api/v1/query_range?query={}&start={}&end={}&step={}",
                encode(expr),
                (now - range_ms) as f64 / 1000.0,
                now as f64 / 1000.0,
                step_ms as f64 / 1000.0
            )
        }
    };
    let answer: serde_json::Value = client.get_json_any(&path).await?;
    if answer["status"] != "success" {
        bail!(
            "{}: {}",
            answer["errorType"].as_str().unwrap_or("error"),
            answer["error"].as_str().unwrap_or("the query failed")
        );
    }
    if format == Output::Json {
        print_json(&answer["data"])?;
        return Ok(0);
    }
    let data = &answer["data"];
    let result = &data["result"];
    match data["resultType"].as_str().unwrap_or("") {
        "scalar" | "string" => println!("{}", result[1].as_str().unwrap_or("")),
        "vector" => {
            let rows: Vec<Vec<String>> = result
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|s| {
                            vec![
                                series_name(&s["metric"]),
                                s["value"][1].as_str().unwrap_or("").to_string(),
                            ]
                        })
                        .collect()
                })
                .unwrap_or_default();
            if rows.is_empty() {
                println!("no series");
            } else {
                table(&["SERIES", "VALUE"], &rows);
            }
        }
        "matrix" => {
            let mut rows = Vec::new();
            for s in result.as_array().into_iter().flatten() {
                let values: Vec<f64> = s["values"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p[1].as_str().and_then(|v| v.parse::<f64>().ok()))
                    .collect();
                let fmt = |v: Option<f64>| v.map(|v| format!("{v}")).unwrap_or_else(|| "-".into());
                let min = values
                    .iter()
                    .copied()
                    .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.min(v))));
                let max = values
                    .iter()
                    .copied()
                    .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
                rows.push(vec![
                    series_name(&s["metric"]),
                    values.len().to_string(),
                    fmt(values.first().copied()),
                    fmt(values.last().copied()),
                    fmt(min),
                    fmt(max),
                ]);
            }
            if rows.is_empty() {
                println!("no series");
            } else {
                table(&["SERIES", "POINTS", "FIRST", "LAST", "MIN", "MAX"], &rows);
            }
        }
        other => println!("{other}: {result}"),
    }
    Ok(0)
}
