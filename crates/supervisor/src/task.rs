//! One-off commands of a service, run to completion: the deploy hooks (`pre_deploy`, such as
//! a database migration, and `post_deploy`). A task gets the service's working folder and
//! environment (its variables and the injected `<DEP>_URL`s, `${VAR}` interpolated as for
//! `run`), its output goes to a log file beside the instances' logs (so `tandem logs`
//! shows it), and the last lines come back with the outcome for the deploy's message.
//!
//! Unlike an instance, a task has no shim: it lives only as long as the deploy that waits
//! for it, so the server's own child is enough. It runs as the leader of a process group of
//! its own, and a timeout stops the whole group (SIGTERM, then SIGKILL after a grace), so a
//! script's children do not outlive it.

use crate::launch::LogSettings;
use crate::logfile::{RotatingLog, Stream};
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;

/// Lines of output kept for the outcome (the log file keeps everything).
pub const TAIL_LINES: usize = 20;
/// How long a task that ran out of time gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// What to run.
#[derive(Clone, Debug)]
pub struct TaskRequest {
    pub service: String,
    /// Command line, `${VAR}` not yet interpolated; split like `run` (no shell).
    pub run: String,
    pub cwd: PathBuf,
    /// The service's declared and injected variables; the server's own environment is
    /// inherited beneath them.
    pub env: BTreeMap<String, String>,
    pub timeout: Duration,
    pub log: LogSettings,
}

/// How a task ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskEnd {
    /// Exit status 0.
    Succeeded,
    /// Another exit status, or a signal.
    Failed(String),
    /// Stopped after `timeout`.
    TimedOut,
    /// It could not start: bad command line, program not found, log not writable.
    NotStarted(String),
}

/// The end of a task and its last lines of output.
#[derive(Clone, Debug)]
pub struct TaskOutcome {
    pub end: TaskEnd,
    pub tail: Vec<String>,
    pub took: Duration,
}

impl TaskOutcome {
    pub fn succeeded(&self) -> bool {
        self.end == TaskEnd::Succeeded
    }
}

/// Runs `request` to its end (or its timeout).
pub async fn run_task(request: &TaskRequest) -> TaskOutcome {
    let started = tokio::time::Instant::now();
    let not_started = |why: String| TaskOutcome {
        end: TaskEnd::NotStarted(why),
        tail: Vec::new(),
        took: started.elapsed(),
    };
    let lookup = |name: &str| {
        request
            .env
            .get(name)
            .cloned()
            .or_else(|| std::env::var(name).ok())
    };
    let line = match tandem_spec::interpolate(&request.run, &lookup) {
        Ok(line) => line,
        Err(e) => return not_started(e.to_string()),
    };
    let Some(argv) = shlex::split(&line).filter(|argv| !argv.is_empty()) else {
        return not_started(format!("'{line}' is not a valid command line"));
    };
    let mut env = BTreeMap::new();
    for (name, value) in &request.env {
        match tandem_spec::interpolate(value, &lookup) {
            Ok(value) => env.insert(name.clone(), value),
            Err(e) => return not_started(format!("env.{name}: {e}")),
        };
    }
    if let Some(folder) = request.log.path.parent()
        && let Err(e) = std::fs::create_dir_all(folder)
    {
        return not_started(format!("cannot create {}: {e}", folder.display()));
    }
    let log = match RotatingLog::open(&request.log) {
        Ok(log) => Arc::new(Mutex::new(log)),
        Err(e) => {
            return not_started(format!(
                "cannot open the log {}: {e}",
                request.log.path.display()
            ));
        }
    };
    let mut command = Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .current_dir(&request.cwd)
        .envs(&env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            return not_started(format!(
                "cannot start '{}' in {}: {e}",
                argv[0],
                request.cwd.display()
            ));
        }
    };
    let group = child.id().map(|pid| pid as libc::pid_t);
    let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
    let copies = [
        child
            .stdout
            .take()
            .map(|out| tokio::spawn(copy_lines(out, Stream::Out, log.clone(), tail.clone()))),
        child
            .stderr
            .take()
            .map(|err| tokio::spawn(copy_lines(err, Stream::Err, log.clone(), tail.clone()))),
    ];
    let end = match tokio::time::timeout(request.timeout, child.wait()).await {
        Ok(Ok(status)) if status.success() => TaskEnd::Succeeded,
        Ok(Ok(status)) => TaskEnd::Failed(describe_status(status)),
        Ok(Err(e)) => TaskEnd::Failed(format!("cannot wait for it: {e}")),
        Err(_) => {
            stop_group(group, &mut child).await;
            TaskEnd::TimedOut
        }
    };
    // The pipes close when the last process holding them ends; a daemon the task left
    // behind could hold them open, so the copy is not waited for forever.
    for copy in copies.into_iter().flatten() {
        let _ = tokio::time::timeout(Duration::from_secs(2), copy).await;
    }
    let tail = tail
        .lock()
        .map(|t| t.iter().cloned().collect())
        .unwrap_or_default();
    TaskOutcome {
        end,
        tail,
        took: started.elapsed(),
    }
}

/// SIGTERM to the task's process group, SIGKILL after [`STOP_GRACE`].
async fn stop_group(group: Option<libc::pid_t>, child: &mut tokio::process::Child) {
    if let Some(pgid) = group {
        // SAFETY: kill(2) with a negative pid signals the process group the task leads;
        // it has no memory effects in this process.
        unsafe { libc::kill(-pgid, libc::SIGTERM) };
    }
    if tokio::time::timeout(STOP_GRACE, child.wait())
        .await
        .is_err()
    {
        if let Some(pgid) = group {
            // SAFETY: as above.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
        let _ = child.wait().await;
    }
}

fn describe_status(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => status.to_string(),
    }
}

async fn copy_lines(
    source: impl AsyncRead + Unpin,
    stream: Stream,
    log: Arc<Mutex<RotatingLog>>,
    tail: Arc<Mutex<VecDeque<String>>>,
) {
    let mut lines = BufReader::new(source).split(b'\n');
    while let Ok(Some(line)) = lines.next_segment().await {
        let line = line.strip_suffix(b"\r").unwrap_or(&line);
        if let Ok(mut log) = log.lock() {
            let _ = log.write_line(stream, line);
        }
        if let Ok(mut tail) = tail.lock() {
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(String::from_utf8_lossy(line).into_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(dir: &std::path::Path, run: &str, timeout: Duration) -> TaskRequest {
        TaskRequest {
            service: "api".into(),
            run: run.into(),
            cwd: dir.to_path_buf(),
            env: BTreeMap::from([
                ("GREETING".to_string(), "hello".to_string()),
                ("TARGET".to_string(), "${GREETING} world".to_string()),
            ]),
            timeout,
            log: LogSettings {
                path: dir.join("logs/api/api-pre-deploy-r1.log"),
                max_bytes: 1 << 20,
                max_files: 2,
            },
        }
    }

    #[tokio::test]
    async fn output_lands_in_the_log_and_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        let script = "sh -c 'echo \"$$TARGET\"; pwd; echo oops >&2; exit 0'";
        let outcome = run_task(&request(dir.path(), script, Duration::from_secs(20))).await;
        assert_eq!(outcome.end, TaskEnd::Succeeded);
        assert!(
            outcome.tail.contains(&"hello world".to_string()),
            "{outcome:?}"
        );
        assert!(outcome.tail.contains(&"oops".to_string()));
        let canonical = dir.path().canonicalize().unwrap();
        assert!(outcome.tail.contains(&canonical.display().to_string()));
        let lines =
            crate::logfile::read_all(&dir.path().join("logs/api/api-pre-deploy-r1.log")).unwrap();
        let texts: Vec<(&str, Stream)> =
            lines.iter().map(|l| (l.text.as_str(), l.stream)).collect();
        assert!(texts.contains(&("hello world", Stream::Out)), "{texts:?}");
        assert!(texts.contains(&("oops", Stream::Err)), "{texts:?}");
    }

    #[tokio::test]
    async fn a_failure_keeps_its_status_and_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let script = "sh -c 'for i in $$(seq 1 30); do echo line $$i; done; exit 3'";
        let outcome = run_task(&request(dir.path(), script, Duration::from_secs(20))).await;
        assert_eq!(outcome.end, TaskEnd::Failed("exit status 3".into()));
        assert_eq!(outcome.tail.len(), TAIL_LINES);
        assert_eq!(outcome.tail.last().map(String::as_str), Some("line 30"));
        assert_eq!(outcome.tail[0], "line 11");
    }

    #[tokio::test]
    async fn a_timeout_stops_the_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("child.pid");
        // The script starts a child that would outlive it, then hangs.
        let script = format!(
            "sh -c 'sleep 300 & echo $! > {}; echo started; wait'",
            pid_file.display()
        );
        let outcome = run_task(&request(dir.path(), &script, Duration::from_millis(500))).await;
        assert_eq!(outcome.end, TaskEnd::TimedOut);
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        // Gone, or a zombie waiting for whoever adopted it to reap it.
        let alive = |pid: i32| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.rsplit_once(") ")
                    .is_some_and(|(_, rest)| !rest.starts_with('Z'))
            })
        };
        while alive(pid) {
            assert!(
                std::time::Instant::now() < deadline,
                "the task's child {pid} outlived the timeout"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[tokio::test]
    async fn commands_that_cannot_start_say_why() {
        let dir = tempfile::tempdir().unwrap();
        let outcome = run_task(&request(
            dir.path(),
            "./no-such-migration --all",
            Duration::from_secs(5),
        ))
        .await;
        match outcome.end {
            TaskEnd::NotStarted(why) => assert!(why.contains("./no-such-migration"), "{why}"),
            other => panic!("{other:?}"),
        }
        let outcome = run_task(&request(
            dir.path(),
            "echo 'unclosed",
            Duration::from_secs(5),
        ))
        .await;
        assert!(matches!(outcome.end, TaskEnd::NotStarted(_)), "{outcome:?}");
    }
}
