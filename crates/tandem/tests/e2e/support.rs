//! The test harness: a project in a temporary folder, the real `tandem` binary run against
//! it, and polling helpers with deadlines. Dropping a project runs `tandem down` and then
//! kills anything of its that is left, so a failing test leaves no processes behind.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use tandem_api::{InstanceStatus, RevisionSummary, StatusResponse};

pub const APP: &str = include_str!("app.py");
pub const DEADLINE: Duration = Duration::from_secs(30);

pub struct Project {
    pub dir: tempfile::TempDir,
}

/// A port nobody listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(output: Output) -> Run {
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).to_string(),
        }
    }
    pub fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "expected success\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

impl Project {
    /// A project whose `tandem.toml` is `services` after a `[system]` and a `[server]` that
    /// listens on a free loopback port; `app.py` is beside it.
    pub fn new(services: &str) -> Project {
        let dir = tempfile::Builder::new()
            .prefix("tandem-e2e-")
            .tempdir()
            .unwrap();
        let project = Project { dir };
        project.write("app.py", APP);
        project.set_system(services);
        project
    }

    pub fn set_system(&self, services: &str) {
        let text =
            format!("[system]\nname = \"e2e\"\n\n[server]\nlisten = \"127.0.0.1:0\"\n\n{services}");
        self.write("tandem.toml", &text);
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, name: &str, content: &str) {
        std::fs::write(self.path().join(name), content).unwrap();
    }

    pub fn data_dir(&self) -> PathBuf {
        self.path().join(".tandem").join("dev")
    }

    pub fn command(&self, args: &[&str]) -> Command {
        // TANDEM_TEST_BIN runs the tests against another build (a release build, to
        // measure); by default they use the debug binary cargo built for them.
        let bin = std::env::var("TANDEM_TEST_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_tandem").to_string());
        let mut c = Command::new(bin);
        c.args(args)
            .current_dir(self.path())
            .env("NO_COLOR", "1")
            .env_remove("TANDEM_ENV")
            .env_remove("TANDEM_FILE")
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Run {
        Run::from(self.command(args).output().unwrap())
    }

    pub fn up(&self) -> Run {
        self.run(&["up", "-d"])
    }

    pub fn status(&self) -> StatusResponse {
        let r = self.run(&["status", "--output", "json"]).ok();
        serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("status json: {e}\n{}", r.stdout))
    }

    pub fn history(&self) -> Vec<RevisionSummary> {
        let r = self.run(&["history", "--output", "json"]).ok();
        serde_json::from_str(&r.stdout).unwrap()
    }

    pub fn instances(&self, service: &str) -> Vec<InstanceStatus> {
        self.status()
            .services
            .into_iter()
            .filter(|s| s.name == service)
            .flat_map(|s| s.instances)
            .collect()
    }

    /// Polls `status` until `check` holds, or panics with the last status at the deadline.
    pub fn wait_status(
        &self,
        what: &str,
        check: impl Fn(&StatusResponse) -> bool,
    ) -> StatusResponse {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let s = self.status();
            if check(&s) {
                return s;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}; last status:\n{s:#?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn server_pid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.data_dir().join("server.json")).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        v["pid"].as_i64().map(|p| p as i32)
    }

    /// PIDs of every service process the shims recorded (for checking that none strays).
    pub fn recorded_pids(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        let Ok(entries) = std::fs::read_dir(self.data_dir().join("instances")) else {
            return pids;
        };
        for e in entries.flatten() {
            if let Ok(text) = std::fs::read_to_string(e.path().join("child.json")) {
                let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                for key in ["pid", "shim_pid"] {
                    if let Some(p) = v[key].as_i64() {
                        pids.push(p as i32);
                    }
                }
            }
        }
        pids
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        // Remember each process with its start time: after `down`, a PID may already belong
        // to another test's new process, which must not be killed.
        let remembered: Vec<(i32, Option<u64>)> = self
            .recorded_pids()
            .into_iter()
            .chain(self.server_pid())
            .map(|pid| (pid, start_ticks(pid)))
            .collect();
        let _ = self.command(&["down"]).output();
        for (pid, ticks) in remembered {
            if ticks.is_some() && start_ticks(pid) == ticks {
                kill(-pid, libc::SIGKILL);
                kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// Start time of a process (field 22 of /proc/PID/stat), to tell it from a reused PID.
pub fn start_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

pub fn kill(pid: i32, signal: i32) {
    // SAFETY: kill(2) has no memory preconditions.
    unsafe { libc::kill(pid, signal) };
}

/// True while `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .chars()
                .next();
            !matches!(state, Some('Z') | Some('X') | None)
        }
        Err(_) => false,
    }
}

/// Waits until `pid` is gone.
pub fn wait_gone(pid: i32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Polls `f` until it returns Some, or panics naming `what`.
pub fn eventually<T>(what: &str, f: impl Fn() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A plain HTTP GET on 127.0.0.1:`port`; returns (status, body).
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    http_request(port, path, &format!("127.0.0.1:{port}"), None)
}

pub fn http_request(
    port: u16,
    path: &str,
    host: &str,
    token: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n");
    s.write_all(request.as_bytes())?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line in {text:?}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// cgroup limits are enforced on this machine (root with a writable hierarchy).
pub fn limits_enforced(p: &Project) -> bool {
    p.status().server.limits_warning.is_none()
}

/// One answer the load loop saw.
#[derive(Clone, Debug)]
pub struct Seen {
    /// When the request was sent.
    pub sent: Instant,
    /// When its answer arrived.
    pub at: Instant,
    pub status: u16,
    pub body: String,
}

/// Requests `GET path` on `port` in a loop over keep-alive connections (two clients) until
/// stopped; a request that gets no answer counts as a failure.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    answered: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    threads: Vec<std::thread::JoinHandle<(Vec<Seen>, Vec<String>)>>,
}

impl Load {
    pub fn start(port: u16, path: &str) -> Load {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let threads = (0..2)
            .map(|_| {
                let stop = stop.clone();
                let answered = answered.clone();
                let path = path.to_string();
                std::thread::spawn(move || {
                    let mut seen = Vec::new();
                    let mut failures = Vec::new();
                    let mut conn: Option<std::io::BufReader<TcpStream>> = None;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        if conn.is_none() {
                            match TcpStream::connect(("127.0.0.1", port)) {
                                Ok(s) => {
                                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                                    s.set_nodelay(true).unwrap();
                                    conn = Some(std::io::BufReader::new(s));
                                }
                                Err(e) => {
                                    failures.push(format!("connect: {e}"));
                                    std::thread::sleep(Duration::from_millis(10));
                                    continue;
                                }
                            }
                        }
                        let c = conn.as_mut().unwrap();
                        let sent = Instant::now();
                        match keep_alive_get(c, port, &path) {
                            Ok((status, body, close)) => {
                                seen.push(Seen {
                                    sent,
                                    at: Instant::now(),
                                    status,
                                    body,
                                });
                                answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                if close {
                                    conn = None;
                                }
                            }
                            Err(e) => {
                                failures.push(format!("request: {e}"));
                                conn = None;
                            }
                        }
                    }
                    (seen, failures)
                })
            })
            .collect();
        Load {
            stop,
            answered,
            threads,
        }
    }

    /// Waits until the loop has had `more` answers beyond those it had when called.
    pub fn wait_answers(&self, more: usize) {
        let target = self.answered.load(std::sync::atomic::Ordering::Relaxed) + more;
        eventually("answers from the load loop", || {
            (self.answered.load(std::sync::atomic::Ordering::Relaxed) >= target).then_some(())
        });
    }

    /// Stops the loop; returns every answer (in time order) and every failure.
    pub fn finish(self) -> (Vec<Seen>, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut seen = Vec::new();
        let mut failures = Vec::new();
        for t in self.threads {
            let (s, f) = t.join().unwrap();
            seen.extend(s);
            failures.extend(f);
        }
        seen.sort_by_key(|s| s.at);
        (seen, failures)
    }
}

/// One request on a keep-alive connection: (status, body, server closes).
fn keep_alive_get(
    conn: &mut std::io::BufReader<TcpStream>,
    port: u16,
    path: &str,
) -> std::io::Result<(u16, String, bool)> {
    use std::io::BufRead;
    // One write, without Nagle: small writes would wait for the proxy's delayed ACK.
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    conn.get_mut().write_all(request.as_bytes())?;
    let mut status_line = String::new();
    if conn.read_line(&mut status_line)? == 0 {
        return Err(std::io::Error::other("connection closed before an answer"));
    }
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
    let mut length = 0usize;
    let mut close = false;
    loop {
        let mut line = String::new();
        conn.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if lower.starts_with("connection:") && lower.contains("close") {
            close = true;
        }
    }
    let mut body = vec![0u8; length];
    conn.read_exact(&mut body)?;
    Ok((status, String::from_utf8_lossy(&body).to_string(), close))
}
