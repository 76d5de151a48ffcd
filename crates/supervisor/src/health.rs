//! One health check of one instance: an HTTP GET, a TCP connect or a command, bounded by a
//! timeout. Scheduling (interval, grace, failure counts) belongs to the runtime; this module
//! only answers "healthy now, or why not" in words fit for the timeline.
//!
//! The HTTP check speaks just enough HTTP/1.1 over a plain `TcpStream` to read a status
//! line: it needs no body, no keep-alive and no TLS, and a client library would add a
//! connection pool whose reuse could hide a service that stopped accepting connections.
//! All waiting goes through tokio's clock, so the runtime's tests can pause time.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tandem_spec::model::HealthCheck;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The most of a response the HTTP check reads while looking for the status line.
const MAX_STATUS_LINE: usize = 8 * 1024;

/// Runs `check` against the instance listening on `port` (on 127.0.0.1), giving up after
/// `timeout`. An exec check runs with `env` added to tandem's environment, in `cwd`.
/// `Err` carries a short sentence: "GET /healthz answered 503", "connection refused on
/// port 8081", "no answer within 1s", "exited with code 1: <last stderr line>".
pub async fn check(
    check: &HealthCheck,
    port: u16,
    timeout: Duration,
    env: &BTreeMap<String, String>,
    cwd: &Path,
) -> Result<(), String> {
    let attempt = async {
        match check {
            HealthCheck::Http(path) => http_get(path, port).await,
            HealthCheck::Tcp(false) => Ok(()),
            HealthCheck::Tcp(true) => connect(port).await.map(drop),
            HealthCheck::Exec(command) => exec(command, env, cwd).await,
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "no answer within {}",
            humantime::format_duration(timeout)
        )),
    }
}

async fn connect(port: u16) -> Result<TcpStream, String> {
    TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| match e.kind() {
            io::ErrorKind::ConnectionRefused => format!("connection refused on port {port}"),
            _ => format!("cannot connect to port {port}: {e}"),
        })
}

async fn http_get(path: &str, port: u16) -> Result<(), String> {
    let path = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    };
    let mut stream = connect(port).await?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: tandem-health\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("GET {path} could not be sent: {e}"))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.contains(&b'\n') && head.len() < MAX_STATUS_LINE {
        match stream.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("GET {path} failed: {e}")),
        }
    }
    let status = parse_status_line(&head).ok_or_else(|| {
        if head.is_empty() {
            format!("GET {path} closed the connection without an answer")
        } else {
            format!("GET {path} answered something that is not HTTP")
        }
    })?;
    if (200..400).contains(&status) {
        Ok(())
    } else {
        Err(format!("GET {path} answered {status}"))
    }
}

/// The status code of `HTTP/1.x NNN reason`.
fn parse_status_line(head: &[u8]) -> Option<u16> {
    let end = head.iter().position(|b| *b == b'\n')?;
    let line = std::str::from_utf8(&head[..end]).ok()?;
    let mut words = line.split_whitespace();
    if !words.next()?.starts_with("HTTP/") {
        return None;
    }
    let code = words.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

async fn exec(command: &str, env: &BTreeMap<String, String>, cwd: &Path) -> Result<(), String> {
    let argv = shlex::split(command)
        .filter(|argv| !argv.is_empty())
        .ok_or_else(|| format!("cannot split the command line '{command}'"))?;
    let mut child = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .envs(env)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout can end what the command started too.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run '{}': {e}", argv[0]))?;
    // Dropped when the timeout abandons this future (or on return): kills the whole group.
    let group = GroupGuard(child.id().and_then(|id| i32::try_from(id).ok()));
    let mut stderr = child.stderr.take();
    let read_stderr = async {
        let mut bytes = Vec::new();
        if let Some(stderr) = stderr.as_mut() {
            // Errors only shorten the message; the exit status decides.
            let _ = stderr.read_to_end(&mut bytes).await;
        }
        bytes
    };
    let (status, stderr) = tokio::join!(child.wait(), read_stderr);
    let status = status.map_err(|e| format!("cannot wait for '{}': {e}", argv[0]))?;
    drop(group);
    if status.success() {
        return Ok(());
    }
    let last_line = String::from_utf8_lossy(&stderr)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_owned());
    let what = match (
        status.code(),
        std::os::unix::process::ExitStatusExt::signal(&status),
    ) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => "failed".to_owned(),
    };
    Err(match last_line {
        Some(line) => format!("{what}: {line}"),
        None => what,
    })
}

/// Kills a process group when dropped.
struct GroupGuard(Option<i32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0.filter(|p| *p > 0) {
            // SAFETY: kill has no memory-safety preconditions; a negative PID addresses the
            // group the command leads (and nothing when it is gone: ESRCH is ignored).
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 204 No Content\r\n"), Some(204));
        assert_eq!(parse_status_line(b"HTTP/1.0 503\r\nX: y"), Some(503));
        assert_eq!(parse_status_line(b"HTTP/1.1 204"), None);
        assert_eq!(parse_status_line(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status_line(b"HTTP/1.1 2000 x\n"), None);
    }
}
