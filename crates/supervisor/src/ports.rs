//! The port holder: one small process per environment (`tandem __ports DIR`) that owns the
//! listening sockets of every public port and edge listener, so that they outlive the server.
//!
//! It exists for the same reason as the shim: the server may crash, be `kill -9`ed or be
//! stopped for an upgrade, and clients of the services should not see "connection refused"
//! meanwhile. As long as a process holds a listening socket, the kernel keeps completing TCP
//! handshakes into its accept queue (up to [`BACKLOG`]); the next server takes the same
//! socket back and serves those connections, so a client sees a delay instead of an error.
//! This is how systemd socket activation and the hot restarts of Envoy and HAProxy work.
//!
//! The holder is started detached ([`crate::shim::detached`]: its own session, SIGHUP,
//! SIGINT and SIGPIPE ignored) and listens on `ports.sock` in the data directory (mode 0600
//! in the 0700 folder, like `server.sock`); `ports.lock` (flock'd) makes it one per folder.
//! It never accepts a connection on the sockets it holds. The server talks to it with
//! [`PortsClient`], one request per connection, one line each way:
//!
//! | request | answer |
//! |---|---|
//! | `acquire ADDR` | `ok BOUND` with the listening socket attached (`SCM_RIGHTS`), the one held for `ADDR` or a new one bound with `SO_REUSEADDR`; or `err ERRNO` with the OS's reason for the failed bind |
//! | `release ADDR` | `ok`; the holder closes its copy |
//! | `held` | `held ADDR ADDR …`, every address held |
//! | `quit` | `ok`; the holder closes everything and exits (`tandem down`) |
//!
//! The holder ends by itself when its socket file is removed or replaced (its data
//! directory was deleted), so it never holds ports for a folder that is gone.

mod fdpass;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The holder's socket, in the data directory.
pub const SOCKET: &str = "ports.sock";
/// Held (flock) by the running holder: one per data directory.
pub const LOCK: &str = "ports.lock";

/// The accept queue asked for on each held socket (the kernel caps it at
/// `net.core.somaxconn`, 4096 by default). While no server runs, this many connections can
/// wait; beyond it the kernel drops SYNs and clients retransmit, still without a refusal.
pub const BACKLOG: i32 = 4096;

/// How long one request to the holder may take before the client gives up.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client waits for a holder it started to listen.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the holder looks whether its socket file is still its own.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);
/// Longest line either side sends.
const MAX_LINE: usize = 64 * 1024;

/// Signals the holder ignores, as the shim does: it lives in its own session, but a
/// terminal hangup, a ^C sent to a group it once shared, or a closed pipe must not end it.
const IGNORED_SIGNALS: [i32; 3] = [libc::SIGHUP, libc::SIGINT, libc::SIGPIPE];

/// Runs the holder for the data directory `dir` until `quit` or until its socket file goes,
/// then exits the process: 0 then, or when another holder already runs for `dir`; 2 when it
/// cannot listen.
pub fn run(dir: &Path) -> ! {
    for signal in IGNORED_SIGNALS {
        // SAFETY: setting a standard signal to SIG_IGN installs no handler code and has no
        // memory-safety preconditions.
        unsafe { libc::signal(signal, libc::SIG_IGN) };
    }
    let holder = match Holder::open(dir) {
        Ok(Some(holder)) => holder,
        Ok(None) => std::process::exit(0),
        Err(e) => {
            eprintln!("tandem __ports: cannot listen in {}: {e}", dir.display());
            std::process::exit(2)
        }
    };
    let socket = holder.socket.clone();
    let inode = holder.inode;
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(WATCH_INTERVAL);
            let ours = fs::metadata(&socket).is_ok_and(|m| m.ino() == inode);
            if !ours {
                // Exiting closes every held socket.
                std::process::exit(0);
            }
        }
    });
    match holder.serve() {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("tandem __ports: {e}");
            std::process::exit(2)
        }
    }
}

// === impl Holder ===

/// The holder's side: its Unix socket and the listening sockets it holds.
pub struct Holder {
    listener: UnixListener,
    socket: PathBuf,
    inode: u64,
    held: BTreeMap<SocketAddr, TcpListener>,
    _lock: File,
}

/// What a request leaves the holder to do next.
enum Next {
    Serve,
    Quit,
}

impl Holder {
    /// Takes `ports.lock` in `dir` and listens on `ports.sock` (replacing a stale file left
    /// by a holder that was killed). `None` when another holder runs for `dir`.
    pub fn open(dir: &Path) -> io::Result<Option<Holder>> {
        let lock = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .mode(0o600)
            .open(dir.join(LOCK))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Ok(None),
            Err(TryLockError::Error(e)) => return Err(e),
        }
        // We hold the lock, so a socket file here is a dead holder's.
        let socket = dir.join(SOCKET);
        match fs::remove_file(&socket) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = UnixListener::bind(&socket)?;
        fs::set_permissions(&socket, fs::Permissions::from_mode(0o600))?;
        let inode = fs::metadata(&socket)?.ino();
        Ok(Some(Holder {
            listener,
            socket,
            inode,
            held: BTreeMap::new(),
            _lock: lock,
        }))
    }

    /// Answers requests, one connection at a time, until `quit`. A client that misbehaves
    /// (stalls, sends garbage, goes away) costs only its own request.
    pub fn serve(mut self) -> io::Result<()> {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) =>
                {
                    continue;
                }
                Err(e) => return Err(e),
            };
            if let Ok(Next::Quit) = self.answer(&stream) {
                let _ = fs::remove_file(&self.socket);
                return Ok(());
            }
        }
    }

    fn answer(&mut self, stream: &UnixStream) -> io::Result<Next> {
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        let line = read_request(stream)?;
        let (verb, arg) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        match verb {
            "acquire" => {
                let result = arg
                    .parse::<SocketAddr>()
                    .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
                    .and_then(|addr| self.acquire(addr));
                match result {
                    Ok((bound, listener)) => fdpass::send(
                        stream,
                        format!("ok {bound}\n").as_bytes(),
                        Some(listener.as_fd()),
                    )?,
                    Err(e) => {
                        let errno = e.raw_os_error().unwrap_or(libc::EIO);
                        fdpass::send(stream, format!("err {errno}\n").as_bytes(), None)?
                    }
                }
            }
            "release" => {
                if let Ok(addr) = arg.parse::<SocketAddr>() {
                    self.held.remove(&addr);
                }
                fdpass::send(stream, b"ok\n", None)?;
            }
            "held" => {
                let mut answer = String::from("held");
                for addr in self.held.keys() {
                    answer.push(' ');
                    answer.push_str(&addr.to_string());
                }
                answer.push('\n');
                fdpass::send(stream, answer.as_bytes(), None)?;
            }
            "quit" => {
                self.held.clear();
                fdpass::send(stream, b"ok\n", None)?;
                return Ok(Next::Quit);
            }
            _ => {
                let answer = format!("err {}\n", libc::EOPNOTSUPP);
                fdpass::send(stream, answer.as_bytes(), None)?;
            }
        }
        Ok(Next::Serve)
    }

    /// The socket held for `addr`, or a new one bound there (port 0: always a new one).
    fn acquire(&mut self, addr: SocketAddr) -> io::Result<(SocketAddr, &TcpListener)> {
        if addr.port() != 0 && self.held.contains_key(&addr) {
            return Ok((addr, &self.held[&addr]));
        }
        // std sets SO_REUSEADDR on listening sockets, so a port whose previous socket left
        // connections in TIME_WAIT binds at once.
        let listener = TcpListener::bind(addr)?;
        // SAFETY: listen(2) on a socket we own, with an integer backlog; calling it again on
        // a listening socket only resizes its accept queue.
        if unsafe { libc::listen(listener.as_raw_fd(), BACKLOG) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let bound = listener.local_addr()?;
        Ok((bound, &*self.held.entry(bound).or_insert(listener)))
    }
}

fn read_request(stream: &UnixStream) -> io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 256];
    loop {
        let n = (&*stream).read(&mut byte)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        line.extend_from_slice(&byte[..n]);
        if let Some(end) = line.iter().position(|b| *b == b'\n') {
            line.truncate(end);
            return String::from_utf8(line).map_err(|_| io::ErrorKind::InvalidData.into());
        }
        if line.len() > MAX_LINE {
            return Err(io::ErrorKind::InvalidData.into());
        }
    }
}

// === impl PortsClient ===

/// Why [`PortsClient::acquire`] returned no socket.
#[derive(Debug, thiserror::Error)]
pub enum AcquireError {
    /// The holder could not bind the address; the error is the OS's (its kind tells
    /// `AddrInUse`, `PermissionDenied`, `AddrNotAvailable` apart, as a bind of our own would).
    #[error("{0}")]
    Bind(io::Error),
    /// No holder could be reached or started.
    #[error("the port holder of {dir} is unavailable: {reason}")]
    Holder { dir: PathBuf, reason: String },
}

/// The server's side: asks the holder of one data directory for sockets, starting the
/// holder when none runs. Every call is one short blocking request on a fresh connection.
pub struct PortsClient {
    dir: PathBuf,
    start: Box<dyn Fn() -> Command + Send + Sync>,
}

impl std::fmt::Debug for PortsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortsClient")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl PortsClient {
    /// The holder of `dir`, started when needed as `EXE __ports DIR` (the tandem binary).
    pub fn new(dir: &Path, exe: impl AsRef<OsStr>) -> PortsClient {
        let exe = exe.as_ref().to_os_string();
        let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        let arg = dir.clone();
        PortsClient::with_starter(&dir, move || {
            let mut command = crate::shim::detached(&exe);
            command.arg("__ports").arg(&arg);
            command
        })
    }

    /// The holder of `dir`, started when needed by running the command `start` builds
    /// (which must end up in [`run`] for `dir`, detached).
    pub fn with_starter(
        dir: &Path,
        start: impl Fn() -> Command + Send + Sync + 'static,
    ) -> PortsClient {
        PortsClient {
            dir: dir.to_path_buf(),
            start: Box::new(start),
        }
    }

    pub fn socket_path(&self) -> PathBuf {
        self.dir.join(SOCKET)
    }

    /// A listening socket on `addr` (the held one, or a new one), close-on-exec, for this
    /// process to accept on. Starts the holder when none runs.
    pub fn acquire(&self, addr: SocketAddr) -> Result<TcpListener, AcquireError> {
        let holder = |reason: String| AcquireError::Holder {
            dir: self.dir.clone(),
            reason,
        };
        let ask = || -> Result<(String, Vec<OwnedFd>), AcquireError> {
            let stream = self.connect_or_start().map_err(|e| holder(e.to_string()))?;
            request(&stream, &format!("acquire {addr}"))
                .map_err(|e| holder(format!("its answer broke off: {e}")))
        };
        // A holder that is just being replaced (the previous one was killed) can drop a
        // connection it accepted; asking once more reaches the one that took over.
        let (answer, mut fds) = match ask() {
            Err(AcquireError::Holder { .. }) => ask()?,
            other => other?,
        };
        if let Some(errno) = answer.strip_prefix("err ") {
            let errno = errno.trim().parse().unwrap_or(libc::EIO);
            return Err(AcquireError::Bind(io::Error::from_raw_os_error(errno)));
        }
        match (answer.strip_prefix("ok "), fds.pop()) {
            (Some(_), Some(fd)) if fds.is_empty() => Ok(TcpListener::from(fd)),
            _ => Err(holder(format!("it answered {answer:?}"))),
        }
    }

    /// Tells the holder that the socket bound at `addr` is no longer needed; it closes its
    /// copy (the port closes once every other copy is closed too). Nothing to do when no
    /// holder runs.
    pub fn release(&self, addr: SocketAddr) -> io::Result<()> {
        if let Some(stream) = self.connect()? {
            request(&stream, &format!("release {addr}"))?;
        }
        Ok(())
    }

    /// Every address the holder holds a socket for (none when no holder runs).
    pub fn held(&self) -> io::Result<Vec<SocketAddr>> {
        let Some(stream) = self.connect()? else {
            return Ok(Vec::new());
        };
        let (answer, _) = request(&stream, "held")?;
        let list = answer
            .strip_prefix("held")
            .ok_or_else(|| io::Error::other(format!("the port holder answered {answer:?}")))?;
        Ok(list
            .split_whitespace()
            .filter_map(|a| a.parse().ok())
            .collect())
    }

    /// Ends the holder, closing every socket it holds; false when none ran.
    pub fn quit(&self) -> io::Result<bool> {
        let Some(stream) = self.connect()? else {
            return Ok(false);
        };
        request(&stream, "quit")?;
        Ok(true)
    }

    /// A connection to the running holder; `None` when there is none (no socket file, or a
    /// stale one nobody listens on).
    fn connect(&self) -> io::Result<Option<UnixStream>> {
        match UnixStream::connect(self.socket_path()) {
            Ok(stream) => {
                stream.set_read_timeout(Some(IO_TIMEOUT))?;
                stream.set_write_timeout(Some(IO_TIMEOUT))?;
                Ok(Some(stream))
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// A connection to the holder, starting one first when none runs.
    fn connect_or_start(&self) -> io::Result<UnixStream> {
        if let Some(stream) = self.connect()? {
            return Ok(stream);
        }
        let mut child = (self.start)()
            .spawn()
            .map_err(|e| io::Error::other(format!("cannot start it: {e}")))?;
        let deadline = Instant::now() + START_TIMEOUT;
        let stream = loop {
            if let Some(stream) = self.connect()? {
                break stream;
            }
            // Exit status 0: another holder won the lock (a concurrent start); wait for it.
            if let Some(status) = child.try_wait()?
                && !status.success()
            {
                return Err(io::Error::other(format!(
                    "it exited ({status}) before listening on {}",
                    self.socket_path().display()
                )));
            }
            if Instant::now() >= deadline {
                return Err(io::Error::other(format!(
                    "it did not listen on {} within {}s",
                    self.socket_path().display(),
                    START_TIMEOUT.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        // The holder lives on, detached; reap it whenever it ends so it leaves no zombie.
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        Ok(stream)
    }
}

/// Sends one request line and reads the answer line, with any descriptors that came with it.
fn request(stream: &UnixStream, line: &str) -> io::Result<(String, Vec<OwnedFd>)> {
    (&*stream).write_all(format!("{line}\n").as_bytes())?;
    let mut answer = Vec::new();
    let mut fds = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = fdpass::recv(stream, &mut buf, &mut fds)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        answer.extend_from_slice(&buf[..n]);
        if let Some(end) = answer.iter().position(|b| *b == b'\n') {
            answer.truncate(end);
            let text = String::from_utf8(answer)
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
            return Ok((text, fds));
        }
        if answer.len() > MAX_LINE {
            return Err(io::ErrorKind::InvalidData.into());
        }
    }
}
