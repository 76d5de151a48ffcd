//! `up`, `down` and `serve`: starting the environment's server when none runs, applying the
//! file through it, following the services' output in the foreground, and stopping it all.

use super::{Ctx, author, git};
use crate::cli::Output;
use crate::output;
use anyhow::{Context, Result, anyhow, bail};
use hyper::Method;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tandem_api::{ApplyMessage, ApplyRequest, LogEntry, Provenance, ServiceAction};
use tandem_server::DataDir;

const SERVER_START_TIMEOUT: Duration = Duration::from_secs(20);
const SERVER_STOP_TIMEOUT: Duration = Duration::from_secs(60);

pub(crate) async fn serve(
    ctx: &Ctx,
    data_dir: Option<PathBuf>,
    listen: Option<String>,
) -> Result<u8> {
    let listen = match listen {
        Some(l) => Some(l),
        None => ctx.load()?.server.listen,
    };
    init_server_logging();
    let config = tandem_server::ServerConfig {
        env: ctx.env.clone(),
        data_dir: data_dir.unwrap_or_else(|| ctx.data_dir.clone()),
        listen,
        shim_exe: std::env::current_exe().context("cannot find the tandem binary")?,
        version: env!("CARGO_PKG_VERSION").to_string(),
    };
    tandem_server::run(config).await?;
    Ok(0)
}

fn init_server_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TANDEM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    // Colors only for a person at a terminal; `server.log` stays plain text.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

/// Starts `tandem serve` in the background (its own session, output to `server.log`) and
/// waits until it answers.
pub(crate) async fn start_server(ctx: &Ctx, listen: Option<&str>) -> Result<()> {
    let dir = DataDir::new(&ctx.data_dir);
    dir.create()
        .with_context(|| format!("cannot create {}", ctx.data_dir.display()))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.log_file())
        .with_context(|| format!("cannot open {}", dir.log_file().display()))?;
    let exe = std::env::current_exe().context("cannot find the tandem binary")?;
    let mut command = std::process::Command::new(exe);
    command
        .arg("serve")
        .arg("--data-dir")
        .arg(&ctx.data_dir)
        .arg("--env")
        .arg(&ctx.env)
        .arg("-f")
        .arg(
            ctx.project_dir
                .join(ctx.file.file_name().unwrap_or_default()),
        )
        .current_dir(&ctx.project_dir)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    if let Some(l) = listen {
        command.arg("--listen").arg(l);
    }
    // SAFETY: setsid(2) is async-signal-safe; the server gets its own session so that the
    // terminal's Ctrl-C reaches only this client, which then asks the server to stop.
    unsafe {
        command.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = command.spawn().context("cannot start the server")?;
    let client = ctx.client()?;
    let deadline = Instant::now() + SERVER_START_TIMEOUT;
    loop {
        if client.is_up().await {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "the server exited ({status}) before it was ready:\n{}",
                tail_of(&dir.log_file(), 10)
            );
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            bail!(
                "the server did not answer within {}s:\n{}",
                SERVER_START_TIMEOUT.as_secs(),
                tail_of(&dir.log_file(), 10)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What a server that is gone left running in `dir`: its instances (each has a folder
/// until tandem stops it) and the port holder.
fn left_behind(dir: &DataDir) -> Vec<String> {
    let mut left = Vec::new();
    let instances = std::fs::read_dir(dir.instances_dir())
        .map(|entries| entries.flatten().filter(|e| e.path().is_dir()).count())
        .unwrap_or(0);
    if instances > 0 {
        left.push(format!("{instances} instance(s)"));
    }
    if dir.root().join(tandem_supervisor::ports::SOCKET).exists() {
        left.push("the port holder".to_string());
    }
    left
}

fn tail_of(path: &std::path::Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn provenance(ctx: &Ctx, message: Option<String>) -> Provenance {
    let commit = git(&ctx.project_dir, &["rev-parse", "HEAD"]);
    let dirty = commit.is_some()
        && git(&ctx.project_dir, &["status", "--porcelain"]).is_some_and(|s| !s.is_empty());
    Provenance {
        git_commit: commit,
        git_dirty: dirty,
        author: author(&ctx.project_dir),
        message,
        file: ctx
            .project_dir
            .join(ctx.file.file_name().unwrap_or_default())
            .display()
            .to_string(),
    }
}

/// Exit status of a deployment that a gate rolled back automatically.
pub(crate) const EXIT_ROLLED_BACK: u8 = 3;

/// Makes sure the environment's server runs (starting it when needed), then deploys the
/// file through it, showing progress; returns the exit status.
async fn deploy_file(
    ctx: &Ctx,
    message: Option<String>,
    force: bool,
    format: Output,
) -> Result<u8> {
    let system = ctx.load()?;
    for warning in tandem_spec::tls_warnings(&system) {
        eprintln!("{} {warning}", output::yellow("warning:"));
    }
    let client = ctx.client()?;
    let begun = Instant::now();
    let mut started_server = false;
    if !client.is_up().await {
        eprintln!("{} starting the {} server", output::dim("»"), ctx.env);
        start_server(ctx, system.server.listen.as_deref()).await?;
        started_server = true;
    }
    let info: tandem_api::ServerInfo = client.get_json("/v1/server").await?;
    if let Some(w) = &info.limits_warning {
        eprintln!("{} {w}", output::yellow("warning:"));
    }
    if let Some(wanted) = &system.server.listen
        && *wanted != info.listen
        && !wanted.ends_with(":0")
    {
        eprintln!(
            "{} the running server listens on {}, the file asks for {wanted}; `tandem down` and `tandem up` to move it",
            output::yellow("warning:"),
            info.listen
        );
    }
    let request = ApplyRequest {
        system,
        provenance: provenance(ctx, message),
        force,
    };
    let outcome = run_deployment(&client, "/v1/apply", &request).await?;
    let code = report_outcome(ctx, "deploy", &outcome, begun, &info.listen, format);
    if code != 0 {
        let status: tandem_api::StatusResponse = client.get_json("/v1/status").await?;
        if started_server && status.live_revision.is_none() {
            stop_server(ctx).await?;
        }
    }
    Ok(code)
}

/// Sends a deployment request and shows its progress lines; returns its last message.
pub(crate) async fn run_deployment<B: serde::Serialize>(
    client: &crate::client::Client,
    path: &str,
    body: &B,
) -> Result<ApplyMessage> {
    let mut outcome: Option<ApplyMessage> = None;
    client
        .stream(Method::POST, path, Some(body), |line| {
            let m: ApplyMessage =
                serde_json::from_str(line).context("unexpected answer to a deployment")?;
            match m {
                ApplyMessage::Progress { message } => eprintln!("{} {message}", output::dim("»")),
                other => outcome = Some(other),
            }
            Ok(())
        })
        .await?;
    outcome.ok_or_else(|| {
        anyhow!("the server ended the deployment without an outcome; see its server.log")
    })
}

/// Prints the one-line summary (or JSON) of a deployment's outcome; returns the exit status:
/// 0 live, [`EXIT_ROLLED_BACK`] rolled back automatically, 1 failed.
pub(crate) fn report_outcome(
    ctx: &Ctx,
    what: &str,
    outcome: &ApplyMessage,
    begun: Instant,
    listen: &str,
    format: Output,
) -> u8 {
    let code = match outcome {
        ApplyMessage::Done(_) => 0,
        ApplyMessage::Failed {
            rolled_back: true, ..
        } => EXIT_ROLLED_BACK,
        _ => 1,
    };
    if format == Output::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(outcome).unwrap_or_default()
        );
        return code;
    }
    match outcome {
        ApplyMessage::Done(result) => {
            let parts: Vec<String> = result
                .services
                .iter()
                .map(|s| {
                    let what = match &s.action {
                        ServiceAction::Start => "started".to_string(),
                        ServiceAction::Replace => "replaced".to_string(),
                        ServiceAction::Scale { from, to } => format!("scaled {from}→{to}"),
                        ServiceAction::Restore => "restored".to_string(),
                        ServiceAction::Keep => "unchanged".to_string(),
                        ServiceAction::Remove => "removed".to_string(),
                    };
                    format!("{} {what}", s.name)
                })
                .collect();
            let secs = begun.elapsed().as_secs_f64();
            if result.new_revision {
                println!(
                    "{} revision {} of {} is live in {secs:.1}s: {} · API {listen}",
                    output::green("✓"),
                    result.revision,
                    ctx.env,
                    parts.join(", "),
                );
            } else {
                println!(
                    "{} revision {} of {} is live ({}) · API {listen}",
                    output::green("✓"),
                    result.revision,
                    ctx.env,
                    parts.join(", "),
                );
            }
        }
        ApplyMessage::Failed {
            error,
            revision,
            rolled_back,
        } => {
            if *rolled_back {
                eprintln!("{} {error}", output::yellow("rolled back automatically:"));
                if let Some(n) = revision {
                    eprintln!(
                        "  revision {n} is recorded as failed; all traffic is back on the previous revision"
                    );
                }
            } else {
                eprintln!("{} {error}", output::red(&format!("{what} failed:")));
                match revision {
                    Some(n) => eprintln!(
                        "  revision {n} is recorded as failed; the previous state keeps running"
                    ),
                    None => eprintln!("  the previous state keeps running"),
                }
            }
        }
        ApplyMessage::Progress { .. } => {}
    }
    code
}

pub(crate) async fn deploy(
    ctx: &Ctx,
    message: Option<String>,
    force: bool,
    format: Output,
) -> Result<u8> {
    deploy_file(ctx, message, force, format).await
}

pub(crate) async fn rollback(ctx: &Ctx, to: Option<u64>, format: Output) -> Result<u8> {
    let client = ctx.client()?;
    let begun = Instant::now();
    // The request goes first: a rollback to warm instances is a switch that should wait
    // for nothing else.
    let request = tandem_api::RollbackRequest {
        to,
        who: author(&ctx.project_dir),
    };
    let outcome = run_deployment(&client, "/v1/rollback", &request).await?;
    let info: tandem_api::ServerInfo = client.get_json("/v1/server").await?;
    Ok(report_outcome(
        ctx,
        "rollback",
        &outcome,
        begun,
        &info.listen,
        format,
    ))
}

pub(crate) async fn up(
    ctx: &Ctx,
    detach: bool,
    message: Option<String>,
    force: bool,
) -> Result<u8> {
    let apply_started_ms = tandem_api::now_ms();
    let code = deploy_file(ctx, message, force, Output::Text).await?;
    if code != 0 {
        return Ok(code);
    }
    if detach {
        return Ok(0);
    }
    eprintln!(
        "{}",
        output::dim("following service output; Ctrl-C stops every service")
    );
    match follow_until_interrupt(ctx, apply_started_ms).await {
        Following::Interrupted => {
            eprintln!("\n{} stopping {}", output::dim("»"), ctx.env);
            stop_server(ctx).await?;
        }
        Following::ServerGone => {
            eprintln!("{} the {} server stopped", output::dim("»"), ctx.env);
        }
    }
    Ok(0)
}

/// How following the logs in the foreground ended.
enum Following {
    Interrupted,
    ServerGone,
}

/// Streams logs with service prefixes until Ctrl-C (or the server goes away).
async fn follow_until_interrupt(ctx: &Ctx, since_ms: i64) -> Following {
    let client = crate::client::Client::new(&ctx.data_dir, &ctx.env);
    let path = format!("/v1/logs?follow=true&since_ms={since_ms}");
    let width = std::sync::atomic::AtomicUsize::new(12);
    let follow = client.stream::<()>(Method::GET, &path, None, |line| {
        if let Ok(e) = serde_json::from_str::<LogEntry>(line) {
            print_log_line(&e, &width);
        }
        Ok(())
    });
    tokio::select! {
        _ = follow => Following::ServerGone,
        _ = tokio::signal::ctrl_c() => Following::Interrupted,
    }
}

pub(crate) fn print_log_line(e: &LogEntry, width: &std::sync::atomic::AtomicUsize) {
    use std::sync::atomic::Ordering;
    let w = width.load(Ordering::Relaxed).max(e.instance.len());
    width.store(w, Ordering::Relaxed);
    let prefix = format!("{:<w$} |", e.instance);
    let prefix = output::paint(output::name_color(&e.service), &prefix);
    println!("{prefix} {}", e.text);
}

/// Asks the server to stop every service and itself, then waits for its process to end.
async fn stop_server(ctx: &Ctx) -> Result<()> {
    let client = ctx.client()?;
    let record = DataDir::new(&ctx.data_dir).read_record();
    let mut failed: Option<String> = None;
    client
        .stream::<()>(Method::POST, "/v1/down", None, |line| {
            let v: serde_json::Value = serde_json::from_str(line)?;
            if let Some(p) = v
                .get("progress")
                .and_then(|p| p.get("message"))
                .and_then(|m| m.as_str())
            {
                eprintln!("{} {p}", output::dim("»"));
            } else if let Some(e) = v
                .get("failed")
                .and_then(|f| f.get("error"))
                .and_then(|m| m.as_str())
            {
                failed = Some(e.to_string());
            }
            Ok(())
        })
        .await?;
    if let Some(e) = failed {
        return Err(anyhow!("stopping failed: {e}"));
    }
    if let Some(record) = record {
        let deadline = Instant::now() + SERVER_STOP_TIMEOUT;
        while record.is_alive() {
            if Instant::now() >= deadline {
                bail!(
                    "the server (pid {}) did not exit within {}s",
                    record.pid,
                    SERVER_STOP_TIMEOUT.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

pub(crate) async fn down(ctx: &Ctx) -> Result<u8> {
    let client = ctx.client()?;
    if !client.is_up().await {
        // A server that crashed or was killed leaves its instances running under their
        // shims, and its ports held: only a server can stop them in order, so one starts
        // (it re-attaches to them) and is asked to stop everything.
        let left = left_behind(&DataDir::new(&ctx.data_dir));
        if left.is_empty() {
            println!(
                "nothing to stop: no server runs for {} ({})",
                ctx.env,
                ctx.data_dir.display()
            );
            return Ok(0);
        }
        eprintln!(
            "{} no server runs for {}, but {} still run: starting one to stop them",
            output::dim("»"),
            ctx.env,
            left.join(" and ")
        );
        start_server(ctx, None).await?;
    }
    stop_server(ctx).await?;
    println!(
        "{} {} is down: every service and the server stopped",
        output::green("✓"),
        ctx.env
    );
    Ok(0)
}
