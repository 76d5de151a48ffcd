//! Commands as used: each turns the parsed command line into work and an exit status.
//! `offline` needs no server; `lifecycle` starts, applies and stops; `inspect` asks a
//! running server; `alerts` lists alerts and manages silences.

mod alerts;
mod exec;
mod inspect;
mod lifecycle;
mod offline;
mod secret;

use crate::cli::{Cli, Command};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

/// Where the file, its project folder and the environment's data directory are.
#[derive(Clone, Debug)]
pub(crate) struct Ctx {
    pub(crate) file: PathBuf,
    /// `--env`, when given.
    pub(crate) env_flag: Option<String>,
    pub(crate) env: String,
    pub(crate) project_dir: PathBuf,
    pub(crate) data_dir: PathBuf,
}

impl Ctx {
    fn new(cli: &Cli) -> Ctx {
        let env = cli
            .env
            .clone()
            .unwrap_or_else(|| tandem_spec::DEFAULT_ENV.to_string());
        let file = cli.command.file();
        let absolute = if file.is_absolute() {
            file.clone()
        } else {
            std::env::current_dir()
                .map(|d| d.join(&file))
                .unwrap_or_else(|_| file.clone())
        };
        let project_dir = absolute
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let project_dir = project_dir.canonicalize().unwrap_or(project_dir);
        let data_dir = tandem_server::data_dir_for(&project_dir, &env);
        Ctx {
            file,
            env_flag: cli.env.clone(),
            env,
            project_dir,
            data_dir,
        }
    }

    /// Loads and resolves the file for the environment, or prints every diagnostic.
    pub(crate) fn load(&self) -> Result<tandem_spec::System> {
        match tandem_spec::load(&self.file, &self.env) {
            Ok(system) => Ok(system),
            Err(diagnostics) => {
                eprint!("{diagnostics}");
                let n = diagnostics.0.len();
                bail!(
                    "{} has {n} error{}",
                    self.file.display(),
                    if n == 1 { "" } else { "s" }
                )
            }
        }
    }

    /// The environment's local server. An environment whose file names a remote server
    /// (`server = URL`) is refused: this version drives local servers only.
    pub(crate) fn client(&self) -> Result<crate::client::Client> {
        if let Ok(system) = tandem_spec::load(&self.file, &self.env)
            && let Some(url) = system.server.url
        {
            bail!(
                "environment '{}' is served by a remote server ({url}); this tandem drives only local servers so far\n  hint: run tandem on that machine",
                self.env
            );
        }
        Ok(crate::client::Client::new(&self.data_dir, &self.env))
    }
}

pub(crate) async fn run(cli: Cli) -> Result<u8> {
    let ctx = Ctx::new(&cli);
    match cli.command {
        Command::Init { .. } => offline::init(&ctx),
        Command::Validate { .. } => offline::validate(&ctx),
        Command::Render { output, .. } => offline::render(&ctx, output),
        Command::Graph { output, .. } => offline::graph(&ctx, output),
        Command::Up {
            detach,
            message,
            force,
            ..
        } => lifecycle::up(&ctx, detach, message, force).await,
        Command::Deploy {
            message,
            force,
            output,
            ..
        } => lifecycle::deploy(&ctx, message, force, output).await,
        Command::Rollback { to, output, .. } => lifecycle::rollback(&ctx, to, output).await,
        Command::Alerts { output, action, .. } => alerts::run(&ctx, output, action).await,
        Command::Secret { action, .. } => secret::run(&ctx, action).await,
        Command::Query {
            expr,
            range,
            step,
            output,
            ..
        } => inspect::query(&ctx, &expr, range.as_deref(), step.as_deref(), output).await,
        Command::Deployments { output, limit, .. } => {
            inspect::deployments(&ctx, output, limit).await
        }
        Command::Down { .. } => lifecycle::down(&ctx).await,
        Command::Serve {
            data_dir, listen, ..
        } => lifecycle::serve(&ctx, data_dir, listen).await,
        Command::Plan { output, .. } => inspect::plan(&ctx, output).await,
        Command::Status { output, .. } => inspect::status(&ctx, output).await,
        Command::Logs {
            services,
            follow,
            since,
            tail,
            ..
        } => inspect::logs(&ctx, services, follow, since, tail).await,
        Command::Restart { service, .. } => inspect::restart(&ctx, &service).await,
        Command::Exec {
            service, command, ..
        } => exec::run(&ctx, &service, command).await,
        Command::History { output, limit, .. } => inspect::history(&ctx, output, limit).await,
        Command::Show {
            revision, output, ..
        } => inspect::show(&ctx, &revision, output).await,
        Command::Diff { a, b, output, .. } => inspect::diff(&ctx, &a, &b, output).await,
        Command::Timeline {
            since,
            output,
            limit,
            ..
        } => inspect::timeline(&ctx, since, output, limit).await,
        Command::Note { text, .. } => inspect::note(&ctx, &text).await,
        Command::Test { what } => offline::test(what),
        Command::Shim { .. } | Command::Ports { .. } => {
            unreachable!("handled before the runtime starts")
        }
    }
}

/// "5m" -> milliseconds before now.
pub(crate) fn since_ms(since: Option<&str>) -> Result<Option<i64>> {
    let Some(text) = since else { return Ok(None) };
    let d: tandem_spec::units::Dur = text
        .parse()
        .with_context(|| format!("--since {text}: write a duration such as 30s, 5m or 2h"))?;
    Ok(Some(tandem_api::now_ms() - d.0.as_millis() as i64))
}

/// The person applying: git's user.name, else the login name.
pub(crate) fn author(project_dir: &Path) -> String {
    git(project_dir, &["config", "user.name"])
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("USER").ok())
        .or_else(|| std::env::var("LOGNAME").ok())
        .unwrap_or_else(|| "unknown".to_string())
}

pub(crate) fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}
