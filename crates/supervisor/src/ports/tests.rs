//! The holder protocol against the real thing: real Unix and TCP sockets, descriptors passed
//! with SCM_RIGHTS, and the holder run as a separate, detached process where its lifetime
//! matters. This test binary doubles as that process: `holder_entry` calls [`super::run`]
//! when `TANDEM_TEST_PORTS_DIR` is set. Waiting is polling with a deadline.

use super::*;
use std::net::TcpStream;

const DEADLINE: Duration = Duration::from_secs(10);

/// Not a test of its own: the holder process the other tests start.
#[test]
fn holder_entry() {
    if let Some(dir) = std::env::var_os("TANDEM_TEST_PORTS_DIR") {
        super::run(Path::new(&dir));
    }
}

/// A client whose holder is this test binary, run as `holder_entry`, detached.
fn client(dir: &Path) -> PortsClient {
    let dir_arg = dir.to_path_buf();
    PortsClient::with_starter(dir, move || {
        let mut command = crate::shim::detached(std::env::current_exe().unwrap());
        command
            .args(["--exact", "ports::tests::holder_entry", "--nocapture"])
            .env("TANDEM_TEST_PORTS_DIR", &dir_arg);
        command
    })
}

/// A holder served on a thread of this process, for tests about the protocol only.
fn holder_on_thread(dir: &Path) -> std::thread::JoinHandle<io::Result<()>> {
    let holder = Holder::open(dir).unwrap().expect("no other holder");
    std::thread::spawn(move || holder.serve())
}

fn wait_until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn loopback_any() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// The kernel's identity of the socket behind a descriptor: `socket:[INODE]`.
fn socket_identity(listener: &TcpListener) -> String {
    fs::read_link(format!("/proc/self/fd/{}", listener.as_raw_fd()))
        .unwrap()
        .display()
        .to_string()
}

/// The pid of the process holding `ports.lock` in `dir`, from /proc/locks.
fn holder_pid(dir: &Path) -> Option<i32> {
    let inode = fs::metadata(dir.join(LOCK)).ok()?.ino();
    let locks = fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let at = fields
            .iter()
            .position(|f| f.ends_with(&format!(":{inode}")))?;
        fields.get(at.checked_sub(1)?)?.parse().ok()
    })
}

fn alive(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .chars()
            .next();
        !matches!(state, Some('Z') | Some('X') | None)
    })
}

#[test]
fn a_passed_socket_serves_connections_and_keeps_queueing_while_nobody_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let serving = holder_on_thread(dir.path());
    let ports = client(dir.path());

    let listener = ports.acquire(loopback_any()).unwrap();
    let addr = listener.local_addr().unwrap();
    assert_eq!(ports.held().unwrap(), vec![addr]);
    // The received descriptor is close-on-exec, so services started later don't inherit it.
    // SAFETY: fcntl(F_GETFD) on a descriptor we own reads its flags.
    let flags = unsafe { libc::fcntl(listener.as_raw_fd(), libc::F_GETFD) };
    assert!(flags & libc::FD_CLOEXEC != 0, "flags {flags:#x}");

    let mut client_side = TcpStream::connect(addr).unwrap();
    client_side.write_all(b"ping").unwrap();
    let (mut server_side, _) = listener.accept().unwrap();
    let mut got = [0u8; 4];
    server_side.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");

    // Our copy gone, the holder's keeps the port: a connection is queued, not refused, and
    // the next taker of the socket accepts it.
    drop(listener);
    let mut waiting = TcpStream::connect(addr).expect("connections queue while nobody accepts");
    waiting.write_all(b"later").unwrap();
    let again = ports.acquire(addr).unwrap();
    let (mut accepted, _) = again.accept().unwrap();
    let mut got = [0u8; 5];
    accepted.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"later");

    assert!(ports.quit().unwrap());
    serving.join().unwrap().unwrap();
}

#[test]
fn asking_twice_for_one_address_returns_the_same_socket() {
    let dir = tempfile::tempdir().unwrap();
    let serving = holder_on_thread(dir.path());
    let ports = client(dir.path());
    let first = ports.acquire(loopback_any()).unwrap();
    let addr = first.local_addr().unwrap();
    let second = ports.acquire(addr).unwrap();
    assert_eq!(socket_identity(&first), socket_identity(&second));
    // Port 0 always means a new one.
    let other = ports.acquire(loopback_any()).unwrap();
    assert_ne!(other.local_addr().unwrap(), addr);
    assert_eq!(ports.held().unwrap().len(), 2);
    ports.quit().unwrap();
    serving.join().unwrap().unwrap();
}

#[test]
fn release_closes_the_port_once_no_copy_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let serving = holder_on_thread(dir.path());
    let ports = client(dir.path());
    let listener = ports.acquire(loopback_any()).unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    ports.release(addr).unwrap();
    assert!(ports.held().unwrap().is_empty());
    let refused = TcpStream::connect(addr).unwrap_err();
    assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
    TcpListener::bind(addr).expect("a released port is free");
    ports.quit().unwrap();
    serving.join().unwrap().unwrap();
}

#[test]
fn bind_errors_carry_the_os_reason() {
    let dir = tempfile::tempdir().unwrap();
    let serving = holder_on_thread(dir.path());
    let ports = client(dir.path());

    let squatter = TcpListener::bind(loopback_any()).unwrap();
    let taken = squatter.local_addr().unwrap();
    match ports.acquire(taken) {
        Err(AcquireError::Bind(e)) => {
            assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
            assert_eq!(e.raw_os_error(), Some(libc::EADDRINUSE));
            assert!(e.to_string().contains("Address already in use"), "{e}");
        }
        other => panic!("expected a bind error, got {other:?}"),
    }
    // TEST-NET-1: not an address of this machine.
    match ports.acquire("192.0.2.1:8080".parse().unwrap()) {
        Err(AcquireError::Bind(e)) => assert_eq!(e.kind(), io::ErrorKind::AddrNotAvailable),
        other => panic!("expected a bind error, got {other:?}"),
    }
    // A privileged port gives the same answer the holder's caller would get itself (root, or
    // a lowered ip_unprivileged_port_start, may bind it).
    let privileged: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let own = TcpListener::bind(privileged).map(drop);
    match (own, ports.acquire(privileged)) {
        (Err(own), Err(AcquireError::Bind(e))) => assert_eq!(own.kind(), e.kind()),
        (Ok(()), Ok(_)) => ports.release(privileged).unwrap(),
        (own, theirs) => panic!("bind here: {own:?}, through the holder: {theirs:?}"),
    }
    assert!(
        ports.held().unwrap().is_empty(),
        "failed binds hold nothing"
    );
    ports.quit().unwrap();
    serving.join().unwrap().unwrap();
}

#[test]
fn a_second_holder_for_the_same_folder_stands_aside() {
    let dir = tempfile::tempdir().unwrap();
    let first = Holder::open(dir.path()).unwrap().expect("first holder");
    assert!(Holder::open(dir.path()).unwrap().is_none());
    drop(first);
    assert!(Holder::open(dir.path()).unwrap().is_some());
}

#[test]
fn without_a_holder_nothing_is_held_and_a_stale_socket_file_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    // A killed holder leaves its socket file behind, with nobody listening.
    drop(UnixListener::bind(dir.path().join(SOCKET)).unwrap());
    let ports = client(dir.path());
    assert!(ports.held().unwrap().is_empty());
    ports.release(loopback_any()).unwrap();
    assert!(!ports.quit().unwrap());

    // Asking for a socket starts a holder process, which takes the file over.
    let listener = ports.acquire(loopback_any()).unwrap();
    let addr = listener.local_addr().unwrap();
    let pid = holder_pid(dir.path()).expect("a holder holds the lock");
    assert_ne!(
        pid,
        std::process::id() as i32,
        "the holder is its own process"
    );
    assert_eq!(ports.held().unwrap(), vec![addr]);
    let mode = fs::metadata(dir.path().join(SOCKET))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // It outlives our copy; `quit` ends it and frees the port.
    drop(listener);
    TcpStream::connect(addr).expect("the holder keeps the port");
    assert!(ports.quit().unwrap());
    wait_until("the holder to exit", || (!alive(pid)).then_some(()));
    TcpListener::bind(addr).expect("quit frees every port");
}

#[test]
fn a_killed_holder_is_replaced_and_one_whose_folder_goes_exits() {
    let dir = tempfile::tempdir().unwrap();
    let ports = client(dir.path());
    let addr = ports.acquire(loopback_any()).unwrap().local_addr().unwrap();
    let pid = holder_pid(dir.path()).unwrap();
    // SAFETY: kill(2) has no memory preconditions.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_until("the killed holder to be gone", || {
        (!alive(pid)).then_some(())
    });

    // Its ports died with it: the next request starts a new holder and binds again. On a
    // loaded machine a request can meet the holder while it is being replaced and get no
    // answer (seen in CI: the connection reset); the next one reaches the new holder.
    let again = wait_until("a new holder to take over", || ports.acquire(addr).ok());
    assert_eq!(again.local_addr().unwrap(), addr);
    let second = holder_pid(dir.path()).unwrap();
    assert_ne!(second, pid);

    // Removing the folder's socket file (the folder is deleted) ends the holder.
    drop(again);
    fs::remove_file(dir.path().join(SOCKET)).unwrap();
    wait_until("the orphaned holder to exit", || {
        (!alive(second)).then_some(())
    });
    wait_until("its port to be free", || TcpListener::bind(addr).ok());
}
