//! Tests of the supervisor's leaf modules against the real thing: real processes, real
//! sockets, the host's cgroups (skipped, with the reason printed, where there are none) and
//! the shim run as a separate, detached process.
//!
//! The shim is `fn run(dir) -> !`, so this test binary doubles as the shim: `shim_entry`
//! calls `shim::run` when `TANDEM_TEST_SHIM_DIR` is set, and the shim tests start
//! `current_exe() --exact shim_entry` with that variable, detached like the server does.
//! Waiting is always polling with a deadline, never a fixed sleep.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use tandem_spec::model::HealthCheck;
use tandem_supervisor::cgroup::{Cgroup, CgroupDriver, V1Controllers};
use tandem_supervisor::health;
use tandem_supervisor::launch::{
    ExitRecord, InstanceDir, LaunchSpec, LogSettings, ResolvedLimits, write_json_atomic,
};
use tandem_supervisor::logfile::{self, LogFollower, LogLine, RotatingLog, Stream};
use tandem_supervisor::{procfs, shim};

const MIB: u64 = 1024 * 1024;

// === helpers ===

/// Polls `f` every 10 ms until it returns `Some`, failing the test after `timeout`.
fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = f() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits for a child of this test process, failing after `timeout`.
fn wait_child(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    wait_until("child to exit", timeout, || {
        child.try_wait().expect("try_wait")
    })
}

/// A live, non-zombie process.
fn alive(pid: i32) -> bool {
    procfs::start_ticks(pid).is_some_and(|ticks| procfs::is_same_process(pid, ticks))
}

fn kill(pid: i32, signal: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid, signal) };
}

fn log_settings(dir: &Path, max_bytes: u64, max_files: u32) -> LogSettings {
    LogSettings {
        path: dir.join("service.log"),
        max_bytes,
        max_files,
    }
}

// === procfs ===

#[test]
fn procfs_tells_a_process_from_a_reused_pid() {
    let me = i32::try_from(std::process::id()).unwrap();
    let ticks = procfs::start_ticks(me).expect("own start time");
    assert!(procfs::is_same_process(me, ticks));
    assert!(!procfs::is_same_process(me, ticks + 1));
    assert_eq!(procfs::start_ticks(-1), None);

    // An exited but unreaped child is a zombie: still in /proc, no longer "the same process".
    let mut child = Command::new("true").spawn().expect("spawn true");
    let pid = i32::try_from(child.id()).unwrap();
    let child_ticks = procfs::start_ticks(pid).expect("child start time");
    wait_until("child to become a zombie", Duration::from_secs(5), || {
        (!procfs::is_same_process(pid, child_ticks)).then_some(())
    });
    assert!(procfs::start_ticks(pid).is_some(), "zombie still listed");
    child.wait().expect("reap");
    assert!(!procfs::is_same_process(pid, child_ticks));
}

#[test]
fn procfs_sums_a_process_group() {
    let mut child = Command::new("sh")
        .args(["-c", "sleep 30 & sleep 30 & wait"])
        .process_group(0)
        .spawn()
        .expect("spawn sh");
    let pgid = i32::try_from(child.id()).unwrap();
    let pids = wait_until(
        "three processes in the group",
        Duration::from_secs(5),
        || {
            let pids = procfs::pids_in_group(pgid);
            (pids.len() == 3).then_some(pids)
        },
    );
    assert!(pids.contains(&pgid));
    let group = procfs::process_group_stats(pgid);
    let leader = procfs::process_stats(pgid).expect("leader stats");
    assert!(
        group.rss_bytes > leader.rss_bytes,
        "{group:?} vs {leader:?}"
    );
    assert!(
        group.open_fds >= leader.open_fds && leader.open_fds >= 3,
        "{group:?}"
    );
    kill(-pgid, libc::SIGKILL);
    wait_child(&mut child, Duration::from_secs(5));
}

#[test]
fn procfs_reads_own_stats_and_boot_time() {
    let me = i32::try_from(std::process::id()).unwrap();
    let stats = procfs::process_stats(me).expect("own stats");
    assert!(stats.rss_bytes > MIB, "{stats:?}");
    assert!(stats.cpu_seconds >= 0.0 && stats.open_fds >= 3, "{stats:?}");
    assert!(procfs::clock_ticks_per_second() > 0);
    let now_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let boot = procfs::boot_time_ms();
    assert!(boot > 0 && boot < now_ms, "boot {boot} now {now_ms}");
    // Our own start, from boot time plus ticks, lies between boot and now.
    let started =
        boot + (procfs::start_ticks(me).unwrap() * 1000 / procfs::clock_ticks_per_second()) as i64;
    assert!(started >= boot && started <= now_ms + 1000);
}

// === logfile ===

fn numbered(lines: &[LogLine]) -> Vec<u32> {
    lines
        .iter()
        .map(|l| {
            l.text
                .trim_start_matches("line ")
                .split(' ')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect()
}

#[test]
fn log_rotation_keeps_the_bound_count_and_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let settings = log_settings(dir.path(), 1000, 3);
    let mut log = RotatingLog::open(&settings).unwrap();
    for i in 0..200 {
        let stream = if i % 3 == 0 { Stream::Err } else { Stream::Out };
        log.write_line(stream, format!("line {i} padding").as_bytes())
            .unwrap();
    }
    let path = &settings.path;
    for n in 1..=3 {
        assert!(logfile::rotated_path(path, n).exists(), "{n} kept");
    }
    assert!(
        !logfile::rotated_path(path, 4).exists(),
        "older ones deleted"
    );
    for file in [
        path.clone(),
        logfile::rotated_path(path, 1),
        logfile::rotated_path(path, 2),
        logfile::rotated_path(path, 3),
    ] {
        let size = fs::metadata(&file).unwrap().len();
        assert!(size <= 1000, "{} is {size} bytes", file.display());
    }

    // read_all: oldest rotated file first, the current one last, no gap, ending at the last line.
    let lines = logfile::read_all(path).unwrap();
    let numbers = numbered(&lines);
    assert_eq!(*numbers.last().unwrap(), 199);
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{numbers:?}");
    assert!(
        numbers.len() > 50,
        "about four files' worth kept, got {}",
        numbers.len()
    );
    assert_eq!(
        lines[numbers.iter().position(|n| n % 3 == 0).unwrap()].stream,
        Stream::Err
    );

    // Reopening appends to the current file and keeps rotating.
    drop(log);
    let mut log = RotatingLog::open(&settings).unwrap();
    log.write_line(Stream::Out, b"line 200 after reopen")
        .unwrap();
    assert_eq!(
        numbered(&logfile::read_all(path).unwrap()).last(),
        Some(&200)
    );
}

#[test]
fn log_lines_are_stamped_split_and_made_valid() {
    let dir = tempfile::tempdir().unwrap();
    let settings = log_settings(dir.path(), 10 * MIB, 2);
    let mut log = RotatingLog::open(&settings).unwrap();
    let before = SystemTime::now();
    log.write_line(Stream::Out, b"plain\r").unwrap();
    log.write_line(Stream::Err, b"bad \xff\xfe bytes").unwrap();
    log.write_line(Stream::Out, &vec![b'x'; 150 * 1024])
        .unwrap();
    log.write_line(Stream::Out, b"").unwrap();
    let text = fs::read_to_string(&settings.path).unwrap();
    let first = text.lines().next().unwrap();
    // 2026-11-26T06:31:16.123Z out plain
    assert_eq!(
        first.len(),
        "2026-11-26T06:31:16.123Z out plain".len(),
        "{first}"
    );
    assert!(first.ends_with("Z out plain"), "{first}");

    let lines = logfile::read_all(&settings.path).unwrap();
    assert_eq!(lines.len(), 6);
    assert_eq!(lines[1].stream, Stream::Err);
    assert_eq!(lines[1].text, "bad \u{fffd}\u{fffd} bytes");
    let long: Vec<usize> = lines[2..5].iter().map(|l| l.text.len()).collect();
    assert_eq!(long, [64 * 1024, 64 * 1024, 22 * 1024]);
    assert_eq!(lines[5].text, "");
    let before_ms = before
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!(
        lines
            .iter()
            .all(|l| l.time_ms >= before_ms - 1 && l.time_ms < before_ms + 60_000)
    );
}

#[test]
fn log_follower_loses_nothing_across_rotations() {
    let dir = tempfile::tempdir().unwrap();
    let settings = log_settings(dir.path(), 600, 4);
    let mut log = RotatingLog::open(&settings).unwrap();
    let mut follower = LogFollower::new(&settings.path, 0);
    let mut seen = Vec::new();
    let mut i = 0;
    // Batches from 1 to 24 lines: some polls see no rotation, some one, some two.
    for batch in 1..=24 {
        for _ in 0..batch {
            log.write_line(Stream::Out, format!("line {i} of the test").as_bytes())
                .unwrap();
            i += 1;
        }
        seen.extend(follower.poll().unwrap());
    }
    seen.extend(follower.poll().unwrap());
    assert_eq!(numbered(&seen), (0..i).collect::<Vec<_>>());
    assert!(follower.poll().unwrap().is_empty());
}

#[test]
fn log_follower_waits_for_whole_lines_and_survives_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("service.log");
    let mut follower = LogFollower::new(&path, 0);
    assert!(follower.poll().unwrap().is_empty(), "no file yet");
    let mut file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap();
    file.write_all(b"2026-11-26T06:31:16.123Z out one\n2026-11-26T06:31:16.124Z err tw")
        .unwrap();
    let lines = follower.poll().unwrap();
    assert_eq!(
        lines.iter().map(|l| l.text.as_str()).collect::<Vec<_>>(),
        ["one"]
    );
    file.write_all(b"o\n").unwrap();
    let lines = follower.poll().unwrap();
    assert_eq!(
        (lines[0].stream, lines[0].text.as_str()),
        (Stream::Err, "two")
    );

    file.set_len(0).unwrap();
    file.write_all(b"2026-11-26T06:31:17.000Z out three\n")
        .unwrap();
    let lines = follower.poll().unwrap();
    assert_eq!(
        lines.iter().map(|l| l.text.as_str()).collect::<Vec<_>>(),
        ["three"]
    );

    let mut tail = LogFollower::from_end(&path);
    assert!(tail.poll().unwrap().is_empty());
    file.write_all(b"2026-11-26T06:31:18.000Z out four\n")
        .unwrap();
    assert_eq!(tail.poll().unwrap()[0].text, "four");
}

#[test]
fn log_merge_is_stable_by_time() {
    let line = |time_ms, text: &str| LogLine {
        time_ms,
        stream: Stream::Out,
        text: text.to_owned(),
    };
    let a = vec![
        line(1, "a1"),
        line(5, "a5"),
        line(5, "a5b"),
        line(4, "a4-after-a-clock-step"),
    ];
    let b = vec![line(0, "b0"), line(5, "b5"), line(9, "b9")];
    let merged = logfile::merge(vec![
        ("a".into(), a),
        ("b".into(), b),
        ("c".into(), Vec::new()),
    ]);
    let order: Vec<String> = merged
        .iter()
        .map(|(p, l)| format!("{p}:{}", l.text))
        .collect();
    assert_eq!(
        order,
        [
            "b:b0",
            "a:a1",
            "a:a5",
            "a:a5b",
            "a:a4-after-a-clock-step",
            "b:b5",
            "b:b9"
        ]
    );
}

#[test]
fn log_written_at_a_given_time_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let settings = log_settings(dir.path(), MIB, 1);
    let mut log = RotatingLog::open(&settings).unwrap();
    log.write_line_at(
        logfile::time_from_ms(1_795_000_000_123),
        Stream::Err,
        b"at a time",
    )
    .unwrap();
    let lines = logfile::read_all(&settings.path).unwrap();
    assert_eq!(
        lines,
        [LogLine {
            time_ms: 1_795_000_000_123,
            stream: Stream::Err,
            text: "at a time".into()
        }]
    );
    assert!(
        logfile::read_all(&dir.path().join("missing.log"))
            .unwrap()
            .is_empty()
    );
}

// === health ===

/// A one-answer-per-connection HTTP server; returns its port and the requests it saw.
fn http_server(status_line: &'static str) -> (u16, std::sync::mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let _ = tx.send(String::from_utf8_lossy(&request).into_owned());
            let _ = write!(stream, "{status_line}\r\nContent-Length: 2\r\n\r\nok");
        }
    });
    (port, rx)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn run_check(check: HealthCheck, port: u16, timeout_ms: u64) -> Result<(), String> {
    let cwd = std::env::temp_dir();
    health::check(
        &check,
        port,
        Duration::from_millis(timeout_ms),
        &BTreeMap::new(),
        &cwd,
    )
    .await
}

#[tokio::test]
async fn health_http_passes_on_2xx_and_3xx() {
    for status in [
        "HTTP/1.1 200 OK",
        "HTTP/1.1 204 No Content",
        "HTTP/1.0 302 Found",
    ] {
        let (port, requests) = http_server(status);
        run_check(HealthCheck::Http("/healthz".into()), port, 2000)
            .await
            .expect(status);
        let request = requests.recv_timeout(Duration::from_secs(2)).unwrap();
        assert!(
            request.starts_with("GET /healthz HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(
            request.contains(&format!("Host: 127.0.0.1:{port}\r\n")),
            "{request}"
        );
        assert!(
            request.contains("Connection: close\r\n")
                && request.contains("User-Agent: tandem-health\r\n")
        );
    }
}

#[tokio::test]
async fn health_http_failures_say_why() {
    let (port, _requests) = http_server("HTTP/1.1 503 Service Unavailable");
    let err = run_check(HealthCheck::Http("/healthz".into()), port, 2000)
        .await
        .unwrap_err();
    assert_eq!(err, "GET /healthz answered 503");

    let closed = free_port();
    let err = run_check(HealthCheck::Http("/healthz".into()), closed, 2000)
        .await
        .unwrap_err();
    assert_eq!(err, format!("connection refused on port {closed}"));

    // Accepts (the kernel's backlog does) but never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let started = Instant::now();
    let err = run_check(HealthCheck::Http("/healthz".into()), port, 200)
        .await
        .unwrap_err();
    assert_eq!(err, "no answer within 200ms");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn health_tcp_checks_connect() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    run_check(HealthCheck::Tcp(true), port, 1000).await.unwrap();
    drop(listener);
    let err = run_check(HealthCheck::Tcp(true), port, 1000)
        .await
        .unwrap_err();
    assert_eq!(err, format!("connection refused on port {port}"));
}

#[tokio::test]
async fn health_exec_uses_exit_status_env_and_cwd() {
    let dir = tempfile::tempdir().unwrap();
    let env = BTreeMap::from([("HEALTH_VAR".to_owned(), "yes".to_owned())]);
    let timeout = Duration::from_secs(5);
    let ok = HealthCheck::Exec(format!(
        "sh -c 'test \"$HEALTH_VAR\" = yes && test \"$(pwd)\" = {}'",
        dir.path().display()
    ));
    health::check(&ok, 0, timeout, &env, dir.path())
        .await
        .unwrap();

    let failing =
        HealthCheck::Exec("sh -c 'echo first >&2; echo last words >&2; echo >&2; exit 3'".into());
    let err = health::check(&failing, 0, timeout, &env, dir.path())
        .await
        .unwrap_err();
    assert_eq!(err, "exited with code 3: last words");

    let missing = HealthCheck::Exec("no-such-health-tool --x".into());
    let err = health::check(&missing, 0, timeout, &env, dir.path())
        .await
        .unwrap_err();
    assert!(err.starts_with("cannot run 'no-such-health-tool'"), "{err}");

    let unbalanced = HealthCheck::Exec("sh -c 'oops".into());
    let err = health::check(&unbalanced, 0, timeout, &env, dir.path())
        .await
        .unwrap_err();
    assert!(err.contains("cannot split"), "{err}");
}

#[tokio::test]
async fn health_exec_timeout_kills_what_the_command_started() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pgid");
    let check = HealthCheck::Exec(format!(
        "sh -c 'echo $$ > {}; sleep 30 & sleep 30'",
        pid_file.display()
    ));
    let started = Instant::now();
    let err = health::check(
        &check,
        0,
        Duration::from_millis(500),
        &BTreeMap::new(),
        dir.path(),
    )
    .await
    .unwrap_err();
    assert_eq!(err, "no answer within 500ms");
    assert!(started.elapsed() < Duration::from_secs(5));
    let pgid: i32 = fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    wait_until(
        "the check's processes to be killed",
        Duration::from_secs(10),
        || {
            procfs::pids_in_group(pgid)
                .into_iter()
                .all(|p| !alive(p))
                .then_some(())
        },
    );
}

// === cgroup: detection and v2 paths on fake trees ===

fn mountinfo_line(id: u32, mount_point: &Path, fstype: &str, super_options: &str) -> String {
    format!(
        "{id} 31 0:{id} / {} rw,relatime - {fstype} {fstype} {super_options}\n",
        mount_point.display()
    )
}

#[test]
fn cgroup_detection_prefers_v2_with_memory() {
    let tree = tempfile::tempdir().unwrap();
    let unified = tree.path().join("unified");
    fs::create_dir_all(&unified).unwrap();
    fs::write(
        unified.join("cgroup.controllers"),
        "cpuset cpu io memory pids\n",
    )
    .unwrap();
    let mut info = mountinfo_line(41, &unified, "cgroup2", "rw,nsdelegate");
    for name in ["memory", "cpu", "pids"] {
        info += &mountinfo_line(35, &tree.path().join(name), "cgroup", &format!("rw,{name}"));
    }
    assert_eq!(
        CgroupDriver::detect_from(&info, |_| true),
        CgroupDriver::V2 {
            root: unified.clone()
        }
    );

    // Empty controllers in the v2 mount (a hybrid host, like the build machines): v1.
    fs::write(unified.join("cgroup.controllers"), "").unwrap();
    let driver = CgroupDriver::detect_from(&info, |_| true);
    let CgroupDriver::V1 { root, controllers } = &driver else {
        panic!("{driver:?}")
    };
    assert_eq!(root, tree.path());
    assert_eq!(controllers.memory, tree.path().join("memory"));
    assert_eq!(controllers.cpuacct, None, "no cpuacct mount in this table");
    assert!(
        driver.describe().starts_with("cgroup v1 under"),
        "{}",
        driver.describe()
    );

    // Nothing writable: unavailable, and the reason says what was found.
    let driver = CgroupDriver::detect_from(&info, |_| false);
    let CgroupDriver::Unavailable { reason } = &driver else {
        panic!("{driver:?}")
    };
    assert!(
        reason.contains("offers no memory controller") && reason.contains("not writable"),
        "{reason}"
    );
    assert!(!driver.is_available());
    assert!(driver.create("x", &ResolvedLimits::default()).is_err());
    assert!(driver.open("x").is_none());

    let CgroupDriver::Unavailable { reason } = CgroupDriver::detect_from("", |_| true) else {
        panic!()
    };
    assert!(reason.contains("no cgroup filesystem"), "{reason}");
}

/// A fake v2 tree: `cgroup.controllers`/`subtree_control` at the root and in `tandem/dev`,
/// limit files in the leaf (cgroupfs would create them; a tempdir cannot).
fn fake_v2_tree(leaf_files: &[&str]) -> tempfile::TempDir {
    let tree = tempfile::tempdir().unwrap();
    let mut dir = tree.path().to_path_buf();
    for (level, controllers) in [
        ("", "cpuset cpu io memory pids"),
        ("tandem", "cpu memory pids"),
        ("dev", "memory pids"),
    ] {
        dir.push(level);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("cgroup.controllers"), controllers).unwrap();
        fs::write(dir.join("cgroup.subtree_control"), "").unwrap();
    }
    let leaf = dir.join("api-r1-0");
    fs::create_dir_all(&leaf).unwrap();
    for file in leaf_files {
        fs::write(leaf.join(file), "stale").unwrap();
    }
    tree
}

#[test]
fn cgroup_v2_enables_controllers_down_the_path_and_writes_limits() {
    let files = [
        "cgroup.procs",
        "memory.max",
        "memory.swap.max",
        "cpu.max",
        "pids.max",
        "memory.events",
    ];
    let tree = fake_v2_tree(&files);
    let root = tree.path();
    let driver = CgroupDriver::V2 {
        root: root.to_path_buf(),
    };
    let limits = ResolvedLimits {
        memory_bytes: Some(50 * MIB),
        cpu_cores: Some(0.5),
        pids: Some(64),
    };
    let cgroup = driver.create("tandem/dev/api-r1-0", &limits).unwrap();
    let read = |p: &str| fs::read_to_string(root.join(p)).unwrap();
    // Each level enables what it has (the "dev" level has no cpu to give).
    assert_eq!(read("cgroup.subtree_control"), "+memory +cpu +pids");
    assert_eq!(read("tandem/cgroup.subtree_control"), "+memory +cpu +pids");
    assert_eq!(read("tandem/dev/cgroup.subtree_control"), "+memory +pids");
    let leaf = "tandem/dev/api-r1-0";
    assert_eq!(read(&format!("{leaf}/memory.max")), "52428800");
    assert_eq!(read(&format!("{leaf}/memory.swap.max")), "0");
    assert_eq!(read(&format!("{leaf}/cpu.max")), "50000 100000");
    assert_eq!(read(&format!("{leaf}/pids.max")), "64");
    assert_eq!(cgroup.procs_files(), [root.join(leaf).join("cgroup.procs")]);
    assert_eq!(cgroup.memory_limit_bytes(), Some(50 * MIB));
    fs::write(
        root.join(leaf).join("memory.events"),
        "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
    )
    .unwrap();
    assert_eq!(cgroup.oom_kill_count(), Some(1));
    assert_eq!(driver.open("tandem/dev/api-r1-0"), Some(cgroup));
    assert_eq!(driver.open("tandem/dev/other"), None);

    // No limits: "max" written explicitly, so a reused group keeps no old value.
    driver.create(leaf, &ResolvedLimits::default()).unwrap();
    assert_eq!(read(&format!("{leaf}/memory.max")), "max");
    assert_eq!(read(&format!("{leaf}/memory.swap.max")), "max");
    assert_eq!(read(&format!("{leaf}/cpu.max")), "max 100000");
    assert_eq!(read(&format!("{leaf}/pids.max")), "max");
}

#[test]
fn cgroup_v2_refuses_limits_it_cannot_set_and_bad_names() {
    let tree = fake_v2_tree(&["cgroup.procs", "memory.max", "pids.max"]);
    let driver = CgroupDriver::V2 {
        root: tree.path().to_path_buf(),
    };
    let limits = ResolvedLimits {
        memory_bytes: None,
        cpu_cores: Some(1.0),
        pids: None,
    };
    let err = driver.create("tandem/dev/api-r1-0", &limits).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::Unsupported);
    assert!(err.to_string().contains("cpu controller"), "{err}");
    // Without the CPU limit the same group is fine.
    driver
        .create("tandem/dev/api-r1-0", &ResolvedLimits::default())
        .unwrap();

    for bad in ["", "/abs", "tandem/../escape", "./x"] {
        let err = driver.create(bad, &ResolvedLimits::default()).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{bad}");
    }
    let zero_cpu = ResolvedLimits {
        cpu_cores: Some(0.0),
        ..ResolvedLimits::default()
    };
    assert_eq!(
        driver.create("tandem/x", &zero_cpu).unwrap_err().kind(),
        std::io::ErrorKind::InvalidInput
    );
}

#[test]
fn cgroup_v1_layout_writes_each_controller() {
    let tree = tempfile::tempdir().unwrap();
    let controllers = V1Controllers::under(tree.path());
    let group = "t/api";
    let files = [
        ("memory", "memory.limit_in_bytes"),
        ("cpu", "cpu.cfs_period_us"),
        ("cpu", "cpu.cfs_quota_us"),
        ("pids", "pids.max"),
    ];
    for (controller, file) in files {
        let dir = tree.path().join(controller).join(group);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(file), "stale").unwrap();
    }
    let driver = CgroupDriver::V1 {
        root: tree.path().to_path_buf(),
        controllers,
    };
    let limits = ResolvedLimits {
        memory_bytes: Some(MIB),
        cpu_cores: Some(0.001),
        pids: None,
    };
    let cgroup = driver.create(group, &limits).unwrap();
    let read =
        |c: &str, f: &str| fs::read_to_string(tree.path().join(c).join(group).join(f)).unwrap();
    assert_eq!(read("memory", "memory.limit_in_bytes"), "1048576");
    assert_eq!(read("cpu", "cpu.cfs_period_us"), "100000");
    assert_eq!(
        read("cpu", "cpu.cfs_quota_us"),
        "1000",
        "raised to the kernel's 1 ms minimum"
    );
    assert_eq!(read("pids", "pids.max"), "max");
    assert_eq!(cgroup.procs_files().len(), 4, "memory, cpu, pids, cpuacct");
}

// === cgroup: the host's real hierarchy ===

static GROUP_COUNTER: AtomicU32 = AtomicU32::new(0);

/// The host's driver, or `None` (with the reason printed) where limits cannot be tested.
fn real_driver(test: &str) -> Option<CgroupDriver> {
    let driver = CgroupDriver::detect();
    if driver.is_available() {
        Some(driver)
    } else {
        println!("skipping {test}: {}", driver.describe());
        None
    }
}

/// A unique top-level group name for this test process.
fn unique_group(label: &str) -> String {
    format!(
        "tandem-test-{}-{}-{label}",
        std::process::id(),
        GROUP_COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Kills and removes a real group when the test ends, pass or fail.
struct GroupGuard(Cgroup);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.0.kill_all(libc::SIGKILL);
        let _ = self.0.remove();
    }
}

/// Starts `argv` inside `cgroup`, as the shim does: joined between fork and exec.
fn spawn_in(cgroup: &Cgroup, argv: &[&str]) -> Child {
    let files = cgroup.add_self_files().unwrap();
    let fds: Vec<i32> = files.iter().map(std::os::fd::AsRawFd::as_raw_fd).collect();
    let mut command = Command::new(argv[0]);
    command
        .args(&argv[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0);
    // SAFETY: only write(2), which is async-signal-safe, on descriptors open in the parent.
    unsafe {
        command.pre_exec(move || {
            for &fd in &fds {
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    command.spawn().unwrap()
}

#[test]
fn cgroup_real_limits_are_written() {
    let Some(driver) = real_driver("cgroup_real_limits_are_written") else {
        return;
    };
    let limits = ResolvedLimits {
        memory_bytes: Some(50 * MIB),
        cpu_cores: Some(0.2),
        pids: Some(16),
    };
    let name = unique_group("limits");
    let guard = GroupGuard(driver.create(&name, &limits).unwrap());
    let cgroup = &guard.0;
    assert_eq!(cgroup.memory_limit_bytes(), Some(50 * MIB));
    let read = |controller: &str, file: &str| {
        fs::read_to_string(cgroup.controller_dir(controller).unwrap().join(file))
            .unwrap()
            .trim()
            .to_owned()
    };
    match &driver {
        CgroupDriver::V1 { .. } => {
            assert_eq!(read("cpu", "cpu.cfs_period_us"), "100000");
            assert_eq!(read("cpu", "cpu.cfs_quota_us"), "20000");
            assert_eq!(read("memory", "memory.limit_in_bytes"), "52428800");
        }
        _ => assert_eq!(read("cpu", "cpu.max"), "20000 100000"),
    }
    assert_eq!(read("pids", "pids.max"), "16");
    assert_eq!(driver.open(&name).as_ref(), Some(cgroup));

    // Recreated without limits: every limit lifted.
    let cgroup = driver.create(&name, &ResolvedLimits::default()).unwrap();
    assert_eq!(cgroup.memory_limit_bytes(), None);
    assert_eq!(read("pids", "pids.max"), "max");
    match &driver {
        CgroupDriver::V1 { .. } => assert_eq!(read("cpu", "cpu.cfs_quota_us"), "-1"),
        _ => assert_eq!(read("cpu", "cpu.max"), "max 100000"),
    }
    cgroup.remove().unwrap();
    assert_eq!(driver.open(&name), None);
    assert!(
        cgroup
            .procs_files()
            .iter()
            .all(|p| !p.parent().unwrap().exists())
    );
}

#[test]
fn cgroup_real_memory_limit_oom_kills() {
    let Some(driver) = real_driver("cgroup_real_memory_limit_oom_kills") else {
        return;
    };
    let limits = ResolvedLimits {
        memory_bytes: Some(50 * MIB),
        ..ResolvedLimits::default()
    };
    let guard = GroupGuard(driver.create(&unique_group("oom"), &limits).unwrap());
    let before = guard.0.oom_kill_count().unwrap_or(0);
    // tail keeps a line-less input in memory: it grows until the limit stops it.
    let mut child = spawn_in(&guard.0, &["tail", "/dev/zero"]);
    let status = wait_child(&mut child, Duration::from_secs(20));
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    assert!(
        guard.0.oom_kill_count().unwrap_or(0) > before,
        "oom_kill counted"
    );
    assert!(guard.0.memory_usage_bytes().is_some());
}

#[test]
fn cgroup_real_pids_limit_stops_forks_and_kill_all_ends_the_rest() {
    let Some(driver) = real_driver("cgroup_real_pids_limit_stops_forks") else {
        return;
    };
    let limits = ResolvedLimits {
        pids: Some(4),
        ..ResolvedLimits::default()
    };
    let guard = GroupGuard(driver.create(&unique_group("pids"), &limits).unwrap());
    let mut child = spawn_in(
        &guard.0,
        &[
            "sh",
            "-c",
            "for i in 1 2 3 4 5 6 7 8; do sleep 30 & done; wait",
        ],
    );
    let status = wait_child(&mut child, Duration::from_secs(20));
    assert!(!status.success(), "the shell could not fork all eight");
    let left = guard.0.pids();
    assert!(!left.is_empty() && left.len() <= 4, "{left:?}");
    let events =
        fs::read_to_string(guard.0.controller_dir("pids").unwrap().join("pids.events")).unwrap();
    assert!(!events.contains("max 0"), "{events}");

    guard.0.kill_all(libc::SIGKILL);
    wait_until("the group to empty", Duration::from_secs(10), || {
        guard.0.pids().is_empty().then_some(())
    });
    // The sleeps held the pipe; with them gone, stderr ends.
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(stderr.to_lowercase().contains("fork"), "{stderr}");
}

#[test]
fn cgroup_real_counts_cpu_time() {
    let Some(driver) = real_driver("cgroup_real_counts_cpu_time") else {
        return;
    };
    let guard = GroupGuard(
        driver
            .create(&unique_group("cpu"), &ResolvedLimits::default())
            .unwrap(),
    );
    let mut child = spawn_in(
        &guard.0,
        &[
            "sh",
            "-c",
            "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done",
        ],
    );
    assert!(wait_child(&mut child, Duration::from_secs(30)).success());
    match guard.0.cpu_usage_seconds() {
        Some(seconds) => assert!(seconds > 0.0, "{seconds}"),
        None => println!("no CPU accounting on this host ({})", driver.describe()),
    }
}

// === shim ===

/// The shim's entry point when this binary is re-executed by a shim test.
#[test]
fn shim_entry() {
    if let Some(dir) = std::env::var_os("TANDEM_TEST_SHIM_DIR") {
        shim::run(Path::new(&dir));
    }
}

/// One instance folder with its launch.json, and the detached shim running it.
struct ShimRun {
    _tmp: tempfile::TempDir,
    dir: InstanceDir,
    spec: LaunchSpec,
    shim: Child,
}

impl ShimRun {
    fn start(argv: &[&str], configure: impl FnOnce(&mut LaunchSpec)) -> ShimRun {
        let tmp = tempfile::tempdir().unwrap();
        let dir = InstanceDir(tmp.path().join("api-r1-0-test"));
        fs::create_dir_all(dir.path()).unwrap();
        let mut spec = LaunchSpec {
            instance: "api-r1-0-test".into(),
            service: "api".into(),
            revision: 1,
            index: 0,
            port: 0,
            argv: argv.iter().map(|s| (*s).to_owned()).collect(),
            cwd: tmp.path().to_path_buf(),
            env: BTreeMap::new(),
            cgroup: None,
            limits: ResolvedLimits::default(),
            log: log_settings(dir.path(), MIB, 2),
        };
        configure(&mut spec);
        write_json_atomic(&dir.launch_file(), &spec).unwrap();
        let shim = shim::detached(std::env::current_exe().unwrap())
            .args(["--exact", "shim_entry", "--nocapture", "--test-threads=1"])
            .env("TANDEM_TEST_SHIM_DIR", dir.path())
            .spawn()
            .unwrap();
        ShimRun {
            _tmp: tmp,
            dir,
            spec,
            shim,
        }
    }

    fn child(&self) -> tandem_supervisor::launch::ChildRecord {
        wait_until("child.json", Duration::from_secs(10), || {
            self.dir.read_child().unwrap()
        })
    }

    /// Waits for exit.json and for the shim itself to exit 0.
    fn exit(&mut self, timeout: Duration) -> ExitRecord {
        let exit = wait_until("exit.json", timeout, || self.dir.read_exit().unwrap());
        let status = wait_child(&mut self.shim, Duration::from_secs(10));
        assert_eq!(
            status.code(),
            Some(0),
            "shim exit; shim.log: {}",
            self.notes()
        );
        exit
    }

    fn notes(&self) -> String {
        fs::read_to_string(self.dir.path().join("shim.log")).unwrap_or_default()
    }

    fn log(&self) -> Vec<LogLine> {
        logfile::read_all(&self.spec.log.path).unwrap()
    }
}

impl Drop for ShimRun {
    fn drop(&mut self) {
        if let Ok(None) = self.shim.try_wait() {
            let _ = self.shim.kill();
            let _ = self.shim.wait();
        }
    }
}

#[test]
fn shim_logs_output_with_streams_and_records_the_exit_code() {
    let mut run = ShimRun::start(
        &[
            "sh",
            "-c",
            "echo hello; echo oops >&2; echo \"$GREETING\"; printf partial; exit 7",
        ],
        |spec| {
            spec.env.insert("GREETING".into(), "hi there".into());
        },
    );
    let child = run.child();
    let exit = run.exit(Duration::from_secs(10));
    assert_eq!(
        (
            exit.code,
            exit.signal,
            exit.oom_killed,
            exit.spawn_error.as_deref()
        ),
        (Some(7), None, false, None)
    );
    assert_eq!(child.shim_pid, i32::try_from(run.shim.id()).unwrap());
    assert!(child.start_ticks > 0 && child.shim_start_ticks > 0 && child.pid != child.shim_pid);
    assert!(child.started_ms <= exit.exited_ms);

    let lines = run.log();
    let got: Vec<(Stream, &str)> = lines.iter().map(|l| (l.stream, l.text.as_str())).collect();
    let out: Vec<&str> = got
        .iter()
        .filter(|(s, _)| *s == Stream::Out)
        .map(|(_, t)| *t)
        .collect();
    assert_eq!(out, ["hello", "hi there", "partial"]);
    assert!(got.contains(&(Stream::Err, "oops")), "{got:?}");
    for line in &lines {
        assert!(
            line.time_ms >= child.started_ms - 1000 && line.time_ms <= exit.exited_ms + 1000,
            "{line:?}"
        );
    }
}

#[test]
fn shim_records_spawn_errors() {
    let mut run = ShimRun::start(&["nonexistent-cmd-tandem"], |_| {});
    let exit = run.exit(Duration::from_secs(10));
    let error = exit.spawn_error.expect("spawn error");
    assert!(
        error.contains("'nonexistent-cmd-tandem' was not found in PATH"),
        "{error}"
    );
    assert!(error.contains("No such file or directory"), "{error}");
    assert_eq!((exit.code, exit.signal), (None, None));
    assert_eq!(run.dir.read_child().unwrap(), None);

    let mut run = ShimRun::start(&["true"], |spec| {
        spec.cwd = PathBuf::from("/nonexistent/folder")
    });
    let error = run
        .exit(Duration::from_secs(10))
        .spawn_error
        .expect("spawn error");
    assert!(
        error.contains("working folder '/nonexistent/folder' does not exist"),
        "{error}"
    );
}

#[test]
fn shim_service_runs_in_its_own_group_until_signalled() {
    let mut run = ShimRun::start(&["sleep", "300"], |_| {});
    let child = run.child();
    assert!(procfs::is_same_process(child.pid, child.start_ticks));
    assert!(procfs::is_same_process(
        child.shim_pid,
        child.shim_start_ticks
    ));
    // SAFETY: getpgid and getsid only read process attributes.
    let (pgid, sid, shim_sid) = unsafe {
        (
            libc::getpgid(child.pid),
            libc::getsid(child.pid),
            libc::getsid(child.shim_pid),
        )
    };
    assert_eq!(pgid, child.pid, "the service leads its process group");
    assert_eq!(
        sid, child.shim_pid,
        "in the shim's session, which the shim leads"
    );
    assert_eq!(shim_sid, child.shim_pid);
    assert_eq!(run.dir.read_exit().unwrap(), None, "still running");

    // The server's way of stopping an instance: a signal to the service's group.
    kill(-child.pid, libc::SIGTERM);
    let exit = run.exit(Duration::from_secs(10));
    assert_eq!(
        (exit.code, exit.signal, exit.oom_killed),
        (None, Some(libc::SIGTERM), false)
    );
}

#[test]
fn shim_kills_what_the_service_left_behind() {
    // One helper stays in the service's group; one starts a session of its own.
    let script = "sleep 300 & echo $!; setsid sleep 300 & echo $!; sleep 0.2; exit 3";
    let mut run = ShimRun::start(&["sh", "-c", script], |_| {});
    let exit = run.exit(Duration::from_secs(15));
    assert_eq!(exit.code, Some(3));
    let pids: Vec<i32> = run
        .log()
        .iter()
        .map(|l| l.text.trim().parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 2, "{:?}", run.log());
    for pid in pids {
        wait_until(
            "a left-behind process to die",
            Duration::from_secs(10),
            || (!alive(pid)).then_some(()),
        );
    }
}

#[test]
fn shim_records_an_oom_kill() {
    let Some(_driver) = real_driver("shim_records_an_oom_kill") else {
        return;
    };
    let group = unique_group("shim-oom");
    let mut run = ShimRun::start(&["tail", "/dev/zero"], |spec| {
        spec.cgroup = Some(group.clone());
        spec.limits.memory_bytes = Some(50 * MIB);
    });
    let exit = run.exit(Duration::from_secs(20));
    assert_eq!(
        (exit.signal, exit.oom_killed),
        (Some(libc::SIGKILL), true),
        "shim.log: {}",
        run.notes()
    );
    assert!(run.notes().contains("limits enforced"), "{}", run.notes());
    assert_eq!(
        CgroupDriver::detect().open(&group),
        None,
        "the shim removed its group"
    );
}

#[test]
fn shim_runs_without_limits_when_the_cgroup_cannot_be_made() {
    let mut run = ShimRun::start(&["true"], |spec| {
        spec.cgroup = Some("../not-a-valid-group".into());
        spec.limits.memory_bytes = Some(50 * MIB);
    });
    let exit = run.exit(Duration::from_secs(10));
    assert_eq!(exit.code, Some(0));
    assert!(
        run.notes().contains("running without limits"),
        "{}",
        run.notes()
    );
}
