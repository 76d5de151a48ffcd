//! `tandem exec SERVICE -- COMMAND...`: a one-off command (a migration by hand, a console, a
//! script) with a service's environment in the live revision, on this machine, as `kamal
//! app exec`, `heroku run` or `docker compose exec` would run it.
//!
//! The server answers with the service's folder and environment (and puts who ran what on
//! the timeline); tandem then replaces itself with the command (execvp), so the terminal,
//! stdin/stdout/stderr, signals such as Ctrl-C and the exit status are the command's own,
//! with no tandem process in between to forward them. `${VAR}` in the command is not
//! interpolated: the user's shell already expanded what it wanted to.

use super::{Ctx, author};
use crate::output::red;
use anyhow::{Result, bail};
use std::io::ErrorKind;
use std::os::unix::process::CommandExt;
use tandem_api::{ExecEnv, ExecRequest};

/// Exit status of a command that cannot be found, as shells report it.
const NOT_FOUND: u8 = 127;
/// Exit status of a command that was found but cannot be run, as shells report it.
const CANNOT_RUN: u8 = 126;

pub(crate) async fn run(ctx: &Ctx, service: &str, command: Vec<String>) -> Result<u8> {
    let Some(program) = command.first() else {
        bail!("no command to run\n  hint: put it after `--`: `tandem exec {service} -- sh`");
    };
    let request = ExecRequest {
        who: author(&ctx.project_dir),
        command: command.clone(),
    };
    let answer: ExecEnv = ctx
        .client()?
        .post_json(&format!("/v1/services/{service}/exec-env"), &request)
        .await?;
    for left_out in &answer.left_out {
        eprintln!("warning: {service}'s variable {left_out}; it is left out");
    }
    let cwd = std::path::Path::new(&answer.cwd);
    if !cwd.is_dir() {
        bail!(
            "the working folder '{}' of service '{service}' does not exist\n  hint: create it, or change the service's `cwd` and deploy",
            cwd.display()
        );
    }
    // The user's own environment (PATH, HOME, TERM...) under the service's, as an instance
    // gets the server's under its own; never a PORT, which only instances have.
    let error = std::process::Command::new(program)
        .args(&command[1..])
        .current_dir(cwd)
        .env_remove("PORT")
        .envs(&answer.env)
        .exec();
    // `exec` returns only when the command could not be started.
    let (code, why) = match error.kind() {
        ErrorKind::NotFound => (NOT_FOUND, "command not found".to_string()),
        ErrorKind::PermissionDenied => (CANNOT_RUN, "permission denied".to_string()),
        _ => (CANNOT_RUN, error.to_string()),
    };
    eprintln!(
        "{} cannot run '{program}' in service '{service}': {why}\n  hint: {}",
        red("error:"),
        if code == NOT_FOUND {
            "check its name and the PATH the service's environment gives it; a shell builtin needs `sh -c '...'`"
        } else {
            "check that it is an executable file"
        }
    );
    Ok(code)
}
