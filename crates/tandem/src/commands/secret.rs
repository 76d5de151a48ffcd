//! `tandem secret set/list/rm`: the environment's secrets, kept by its server in
//! `secrets.json` (0600) and given to the services that list them in `secrets = [...]`.
//!
//! A value is read from stdin, never from an argument: arguments land in the shell's
//! history and in `ps` for every user of the machine. On a terminal it is typed without
//! echo (termios), so it does not stay on the screen either. Nothing here prints a value.

use super::{Ctx, author, lifecycle};
use crate::cli::{Output, SecretAction};
use crate::output::{dim, green, table, timestamp};
use anyhow::{Context, Result, bail};
use std::io::{IsTerminal, Read, Write};
use tandem_api::{SecretInfo, SecretRemoveRequest, SecretSetRequest};

pub(crate) async fn run(ctx: &Ctx, action: SecretAction) -> Result<u8> {
    match action {
        SecretAction::Set { name } => set(ctx, &name).await,
        SecretAction::List { output } => list(ctx, output).await,
        SecretAction::Rm { name } => remove(ctx, &name).await,
    }
}

fn check_name(name: &str) -> Result<()> {
    if !tandem_spec::is_variable_name(name) || name == "PORT" {
        bail!(
            "'{name}' cannot be a secret's name\n  hint: use letters, digits and '_', not starting with a digit (and not PORT), like DB_PASSWORD"
        );
    }
    Ok(())
}

async fn set(ctx: &Ctx, name: &str) -> Result<u8> {
    check_name(name)?;
    let value = read_value(name)?;
    let client = ctx.client()?;
    // The store lives with the environment's server: start one (as `deploy` would) so that
    // secrets can be set before the first deploy, which needs them.
    if !client.is_up().await {
        let system = ctx.load()?;
        eprintln!("{} starting the {} server", dim("»"), ctx.env);
        lifecycle::start_server(ctx, system.server.listen.as_deref()).await?;
    }
    let request = SecretSetRequest {
        value,
        who: author(&ctx.project_dir),
    };
    let info: SecretInfo = client
        .post_json(&format!("/v1/secrets/{name}"), &request)
        .await?;
    println!(
        "{} secret {name} set in {} ({}); `tandem deploy` replaces the instances that use it",
        green("✓"),
        ctx.env,
        info.fingerprint
    );
    Ok(0)
}

/// The value from stdin: typed without echo on a terminal (one line), else everything
/// piped in, less one final line break (`echo` and here-strings add one).
fn read_value(name: &str) -> Result<String> {
    let stdin = std::io::stdin();
    let value = if stdin.is_terminal() {
        eprint!("value of {name} (not shown): ");
        let _ = std::io::stderr().flush();
        let line = read_line_without_echo()?;
        eprintln!();
        line
    } else {
        let mut text = String::new();
        stdin
            .lock()
            .read_to_string(&mut text)
            .context("cannot read the secret's value from stdin (it must be UTF-8 text)")?;
        text
    };
    let value = value
        .strip_suffix('\n')
        .map(|v| v.strip_suffix('\r').unwrap_or(v))
        .unwrap_or(&value)
        .to_string();
    if value.is_empty() {
        bail!(
            "the value of {name} is empty\n  hint: pipe it in, e.g. `tandem secret set {name} < file` or `printf %s \"$VALUE\" | tandem secret set {name}`"
        );
    }
    Ok(value)
}

/// One line from the terminal on stdin with echo off, restored afterwards (also when the
/// read fails).
fn read_line_without_echo() -> Result<String> {
    let fd = libc::STDIN_FILENO;
    // SAFETY: termios is plain data; tcgetattr fills it for a terminal fd we checked.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: a valid fd and a valid pointer to a termios.
    if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
        bail!("cannot read the terminal's settings to hide the value; pipe the value in instead");
    }
    let mut quiet = saved;
    quiet.c_lflag &= !libc::ECHO;
    quiet.c_lflag |= libc::ECHONL;
    // SAFETY: as above; `quiet` is a copy of the terminal's own settings.
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &quiet) } != 0 {
        bail!("cannot turn the terminal's echo off; pipe the value in instead");
    }
    let mut line = String::new();
    let read = std::io::stdin().read_line(&mut line);
    // SAFETY: restores the settings read above.
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &saved) };
    read.context("cannot read the value from the terminal")?;
    Ok(line)
}

async fn list(ctx: &Ctx, output: Output) -> Result<u8> {
    let list: Vec<SecretInfo> = ctx.client()?.get_json("/v1/secrets").await?;
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(0);
    }
    if list.is_empty() {
        println!(
            "no secrets in {}; `tandem secret set NAME` sets one",
            ctx.env
        );
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                timestamp(s.set_ms),
                s.set_by.clone(),
                s.fingerprint.clone(),
                if s.used_by.is_empty() {
                    "-".to_string()
                } else {
                    s.used_by.join(", ")
                },
            ]
        })
        .collect();
    table(
        &["NAME", "SET (UTC)", "BY", "FINGERPRINT", "USED BY"],
        &rows,
    );
    Ok(0)
}

async fn remove(ctx: &Ctx, name: &str) -> Result<u8> {
    let request = SecretRemoveRequest {
        who: author(&ctx.project_dir),
    };
    let _: serde_json::Value = ctx
        .client()?
        .post_json(&format!("/v1/secrets/{name}/remove"), &request)
        .await?;
    println!(
        "{} secret {name} removed from {}; a deploy that needs it fails until it is set again",
        green("✓"),
        ctx.env
    );
    Ok(0)
}
