//! The shim: one small process per instance (`tandem __shim DIR`) that starts the service,
//! owns its pipes, limits and exit status, and records them in the instance's folder.
//!
//! It exists so the tandem server can be stopped, crash or be upgraded while services keep
//! running: the server starts the shim in a session of its own ([`detached`]), and a new
//! server re-attaches through `child.json` and `exit.json` (see [`crate::launch`]). The shim
//! is deliberately plain synchronous code with no runtime: it starts the service, copies its
//! output into the [`RotatingLog`] on two threads, waits, cleans up and writes down what
//! happened. Stopping an instance is the server's job (signals to the service's process
//! group); the shim only observes.
//!
//! Besides `launch.json`, `child.json` and `exit.json`, the shim keeps `shim.log` in the
//! folder: notes for a human, such as why limits were not enforced.

use crate::cgroup::{Cgroup, CgroupDriver};
use crate::launch::{ChildRecord, ExitRecord, InstanceDir, LaunchSpec, write_json_atomic};
use crate::logfile::{MAX_LINE_BYTES, RotatingLog, Stream};
use crate::procfs;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long the shim waits, once the service has exited and its leftovers are killed, for
/// the output still in the pipes. Only a process outside both the process group and the
/// cgroup can hold a pipe open longer.
const DRAIN_WAIT: Duration = Duration::from_secs(2);
/// How long the shim waits for killed leftovers to be reaped.
const REAP_WAIT: Duration = Duration::from_secs(2);

/// Signals the shim ignores: it lives in its own session, but a terminal hangup, a ^C sent
/// to a group it once shared, or a closed pipe must not end it while the service runs.
const IGNORED_SIGNALS: [i32; 3] = [libc::SIGHUP, libc::SIGINT, libc::SIGPIPE];

/// A command that starts `program` detached from the caller: a new session (so no signal
/// aimed at the caller's process group or terminal reaches it, and it outlives the caller),
/// with stdin, stdout and stderr on `/dev/null`. The server starts shims with it, adding
/// `__shim DIR` as arguments.
pub fn detached(program: impl AsRef<OsStr>) -> Command {
    let mut command = Command::new(program);
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: the closure runs in the child between fork and exec and only calls setsid,
    // which is async-signal-safe; it touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
}

/// Runs the instance in `instance_dir` to its end, then exits the process: 0 once
/// `exit.json` is written (whatever the service did), 2 when even that was impossible.
pub fn run(instance_dir: &Path) -> ! {
    for signal in IGNORED_SIGNALS {
        // SAFETY: setting a standard signal to SIG_IGN installs no handler code and has no
        // memory-safety preconditions.
        unsafe { libc::signal(signal, libc::SIG_IGN) };
    }
    // Orphans of the service (a daemon that forked away from its parent) become our
    // children instead of init's, so they can be reaped and, at the end, killed.
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes an integer flag and no pointers.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let dir = InstanceDir(instance_dir.to_path_buf());
    let notes = Notes(dir.path().join("shim.log"));
    let code = match supervise(&dir, &notes) {
        Ok(()) => 0,
        Err(e) => {
            notes.write(&format!("cannot record the exit: {e}"));
            2
        }
    };
    std::process::exit(code)
}

/// Everything `run` does; an error means `exit.json` could not be written.
fn supervise(dir: &InstanceDir, notes: &Notes) -> io::Result<()> {
    let spec = match dir.read_launch() {
        Ok(spec) => spec,
        Err(e) => return write_spawn_error(dir, notes, format!("cannot read launch.json: {e}")),
    };
    let cgroup = setup_cgroup(&spec, notes);
    let oom_before = cgroup
        .as_ref()
        .and_then(Cgroup::oom_kill_count)
        .unwrap_or(0);
    let result = run_service(dir, notes, &spec, cgroup.as_ref(), oom_before);
    if let Some(cgroup) = &cgroup
        && let Err(e) = cgroup.remove()
    {
        notes.write(&format!("cannot remove cgroup '{}': {e}", cgroup.name()));
    }
    result
}

/// The instance's cgroup, or `None` (with a note saying why) when it runs without limits.
/// Limits that cannot be enforced do not stop the service: development machines without
/// root still run everything, and the note says the limits are not in force.
fn setup_cgroup(spec: &LaunchSpec, notes: &Notes) -> Option<Cgroup> {
    let group = spec.cgroup.as_deref()?;
    let driver = CgroupDriver::detect();
    match driver.create(group, &spec.limits) {
        Ok(cgroup) => {
            notes.write(&format!(
                "limits enforced through {} in group '{group}'",
                driver.describe()
            ));
            Some(cgroup)
        }
        Err(e) => {
            notes.write(&format!(
                "running without limits: cannot create cgroup '{group}': {e}"
            ));
            None
        }
    }
}

fn run_service(
    dir: &InstanceDir,
    notes: &Notes,
    spec: &LaunchSpec,
    cgroup: Option<&Cgroup>,
    oom_before: u64,
) -> io::Result<()> {
    let log = match RotatingLog::open(&spec.log) {
        Ok(log) => Arc::new(Mutex::new(log)),
        Err(e) => {
            let message = format!(
                "cannot open the log file '{}': {e}",
                spec.log.path.display()
            );
            return write_spawn_error(dir, notes, message);
        }
    };
    let join_files = match cgroup.map(Cgroup::add_self_files).transpose() {
        Ok(files) => files.unwrap_or_default(),
        Err(e) => return write_spawn_error(dir, notes, format!("cannot join the cgroup: {e}")),
    };
    let mut child = match spawn(spec, &join_files) {
        Ok(child) => child,
        Err(message) => return write_spawn_error(dir, notes, message),
    };
    drop(join_files);
    let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
    let me = i32::try_from(std::process::id()).unwrap_or(0);
    let record = ChildRecord {
        shim_pid: me,
        shim_start_ticks: procfs::start_ticks(me).unwrap_or(0),
        pid,
        // Not reaped yet, so readable even if the service already exited.
        start_ticks: procfs::start_ticks(pid).unwrap_or(0),
        started_ms: now_ms(),
    };
    if let Err(e) = write_json_atomic(&dir.child_file(), &record) {
        notes.write(&format!("cannot write child.json: {e}"));
    }

    let (done_tx, done_rx) = mpsc::channel();
    let write_failed = Arc::new(AtomicBool::new(false));
    let pipes = [
        (
            Stream::Out,
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ),
        (
            Stream::Err,
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ),
    ];
    let mut pumps = 0;
    for (stream, pipe) in pipes {
        let Some(pipe) = pipe else { continue };
        let sink = LogSink {
            log: Arc::clone(&log),
            stream,
            notes: notes.clone(),
            failed: Arc::clone(&write_failed),
        };
        let done = done_tx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("pump-{}", stream.as_str()))
            .spawn(move || {
                pump(pipe, &sink);
                let _ = done.send(());
            });
        match spawned {
            Ok(_) => pumps += 1,
            Err(e) => notes.write(&format!("cannot start the {} reader: {e}", stream.as_str())),
        }
    }
    drop(done_tx);

    let status = wait_for(pid);
    let exited_ms = now_ms();
    // Nothing the service started may outlive it: its process group, its cgroup and any
    // orphan that was handed to us.
    // SAFETY: kill has no memory-safety preconditions; -pid addresses the service's group,
    // which still exists while any member lives, so the number cannot have been reused.
    unsafe { libc::kill(-pid, libc::SIGKILL) };
    if let Some(cgroup) = cgroup {
        cgroup.kill_all(libc::SIGKILL);
    }
    kill_and_reap_children(me);

    let deadline = Instant::now() + DRAIN_WAIT;
    for _ in 0..pumps {
        let left = deadline.saturating_duration_since(Instant::now());
        if done_rx.recv_timeout(left).is_err() {
            notes.write("output still open after the service ended; the rest is not logged");
            break;
        }
    }

    let (code, signal) = match status {
        Ok(status) => (status.code(), status.signal()),
        Err(e) => {
            notes.write(&format!("cannot wait for the service: {e}"));
            (None, None)
        }
    };
    let oom_after = cgroup.and_then(Cgroup::oom_kill_count).unwrap_or(0);
    let exit = ExitRecord {
        code,
        signal,
        oom_killed: signal == Some(libc::SIGKILL) && oom_after > oom_before,
        spawn_error: None,
        exited_ms,
    };
    write_json_atomic(&dir.exit_file(), &exit)
}

/// Starts the service. The child leads a new process group (the server stops it by
/// signalling the group), joins its cgroup before exec, and gets default signal handling
/// back (ignored signals would otherwise be inherited through exec).
fn spawn(spec: &LaunchSpec, join_files: &[File]) -> Result<std::process::Child, String> {
    let Some(program) = spec.argv.first().filter(|p| !p.is_empty()) else {
        return Err("the command line is empty".to_owned());
    };
    if !spec.cwd.is_dir() {
        return Err(format!(
            "the working folder '{}' does not exist",
            spec.cwd.display()
        ));
    }
    let fds: Vec<RawFd> = join_files.iter().map(AsRawFd::as_raw_fd).collect();
    let mut command = Command::new(program);
    command
        .args(&spec.argv[1..])
        .current_dir(&spec.cwd)
        .envs(&spec.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // SAFETY: the closure runs in the child between fork and exec. It only calls write,
    // signal and sigprocmask, which are async-signal-safe, on descriptors that the parent
    // keeps open until spawn returns, and it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            for &fd in &fds {
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            for signal in IGNORED_SIGNALS {
                libc::signal(signal, libc::SIG_DFL);
            }
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            Ok(())
        });
    }
    command
        .spawn()
        .map_err(|e| describe_spawn_error(&e, program, spec))
}

/// Says what went wrong in terms of the user's command line. For a bare program name the
/// kernel's answer can mislead (`execvp` reports "permission denied" when any folder in
/// `PATH` was unreadable, even if the program is nowhere), so `PATH` is searched again to
/// name the real cause.
fn describe_spawn_error(e: &io::Error, program: &str, spec: &LaunchSpec) -> String {
    let not_found_or_denied = matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied
    );
    if program.contains('/') {
        return match e.kind() {
            io::ErrorKind::NotFound => format!(
                "{e}: '{program}' does not exist (relative paths start at '{}')",
                spec.cwd.display()
            ),
            io::ErrorKind::PermissionDenied => format!("{e}: '{program}' is not executable"),
            _ => format!("{e}: cannot start '{program}'"),
        };
    }
    if !not_found_or_denied {
        return format!("{e}: cannot start '{program}'");
    }
    let path = spec
        .env
        .get("PATH")
        .cloned()
        .or_else(|| std::env::var("PATH").ok())
        .unwrap_or_default();
    match std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
    {
        Some(found) => format!("{e}: '{}' is not executable", found.display()),
        // Not anywhere: report it as such, whatever errno execvp ended on.
        None => format!(
            "{}: '{program}' was not found in PATH",
            io::Error::from_raw_os_error(libc::ENOENT)
        ),
    }
}

fn write_spawn_error(dir: &InstanceDir, notes: &Notes, message: String) -> io::Result<()> {
    notes.write(&format!("not started: {message}"));
    let exit = ExitRecord {
        code: None,
        signal: None,
        oom_killed: false,
        spawn_error: Some(message),
        exited_ms: now_ms(),
    };
    write_json_atomic(&dir.exit_file(), &exit)
}

/// Waits for the service, reaping on the way any orphan reparented to us (we are a child
/// subreaper), which would otherwise stay a zombie for the instance's whole life.
fn wait_for(pid: i32) -> io::Result<ExitStatus> {
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid, writable int for the duration of the call.
        let reaped = unsafe { libc::waitpid(-1, &mut status, 0) };
        if reaped == pid {
            return Ok(ExitStatus::from_raw(status));
        }
        if reaped == -1 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

/// Kills every remaining child of the shim (orphans handed to us) and reaps them all.
fn kill_and_reap_children(me: i32) {
    let deadline = Instant::now() + REAP_WAIT;
    loop {
        for child in procfs::children_of(me) {
            // SAFETY: kill has no memory-safety preconditions; `child` is a positive PID of
            // our own unreaped child, so it cannot have been reused.
            unsafe { libc::kill(child, libc::SIGKILL) };
        }
        let mut status = 0;
        // SAFETY: `status` is a valid, writable int for the duration of the call.
        let reaped = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        match reaped {
            -1 => return, // ECHILD: nothing left
            0 if Instant::now() >= deadline => return,
            0 => std::thread::sleep(Duration::from_millis(5)),
            _ => {}
        }
    }
}

/// One output stream's way into the shared log.
struct LogSink {
    log: Arc<Mutex<RotatingLog>>,
    stream: Stream,
    notes: Notes,
    /// Set after the first failed write, so a full disk is noted once, not per line.
    failed: Arc<AtomicBool>,
}

impl LogSink {
    fn line(&self, bytes: &[u8]) {
        let result = match self.log.lock() {
            Ok(mut log) => log.write_line(self.stream, bytes),
            // A pump that panicked mid-write leaves a usable file; keep logging.
            Err(poisoned) => poisoned.into_inner().write_line(self.stream, bytes),
        };
        if let Err(e) = result
            && !self.failed.swap(true, Ordering::Relaxed)
        {
            self.notes.write(&format!("cannot write the log: {e}"));
        }
    }
}

/// Copies one pipe into the log line by line until end of file. It never stops reading
/// early, even when the log cannot be written, so the service never blocks on a full pipe.
fn pump(mut pipe: Box<dyn Read + Send>, sink: &LogSink) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
        let mut start = 0;
        while let Some(end) = pending[start..].iter().position(|b| *b == b'\n') {
            sink.line(&pending[start..start + end]);
            start += end + 1;
        }
        pending.drain(..start);
        // A line without end is cut at the limit, on a UTF-8 character boundary.
        while pending.len() >= MAX_LINE_BYTES {
            let mut cut = MAX_LINE_BYTES;
            while cut > MAX_LINE_BYTES - 4 && (pending[cut] & 0xC0) == 0x80 {
                cut -= 1;
            }
            sink.line(&pending[..cut]);
            pending.drain(..cut);
        }
    }
    if !pending.is_empty() {
        sink.line(&pending);
    }
}

/// `shim.log`: timestamped notes for whoever looks into the instance's folder. Writing is
/// best effort; there is nowhere else to report a failure to.
#[derive(Clone)]
struct Notes(PathBuf);

impl Notes {
    fn write(&self, message: &str) {
        let stamp = humantime::format_rfc3339_millis(SystemTime::now());
        if let Ok(mut file) = OpenOptions::new().create(true).append(true).open(&self.0) {
            let _ = writeln!(file, "{stamp} {message}");
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
