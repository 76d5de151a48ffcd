//! The data directory of one environment's server, and what is in it.
//!
//! ```text
//! .tandem/<env>/            0700
//!   server.lock             flock'd by the running server: one server per directory
//!   server.json             pid, start time, listen address of the running server
//!   server.sock             the API over a Unix socket (0600)
//!   server.log              the server's own log when it runs in the background, rotated by size
//!   token                   bearer token for the HTTP listener (0600)
//!   secrets.json            the secrets' values and their fingerprint key (0600)
//!   state.db                revisions and events (SQLite, WAL)
//!   warm.json               the warm pool: instances kept warm for a rollback, and until when
//!   instances/<id>/         one folder per instance: launch.json, child.json, exit.json, meta.json
//!   logs/<service>/<id>.log service output, rotated by size
//! ```
//! Moving or backing up a server is copying this folder.

use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use tandem_api::ServerInfo;

/// What `server.json` holds: enough for a client to find and check the server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServerRecord {
    pub pid: u32,
    /// Start time of the process in clock ticks since boot (tells it from a reused PID).
    pub start_ticks: u64,
    pub env: String,
    pub listen: String,
    pub version: String,
    pub started_ms: i64,
}

impl ServerRecord {
    pub fn current(info: &ServerInfo) -> ServerRecord {
        ServerRecord {
            pid: info.pid,
            start_ticks: tandem_supervisor::procfs::start_ticks(info.pid as i32).unwrap_or(0),
            env: info.env.clone(),
            listen: info.listen.clone(),
            version: info.version.clone(),
            started_ms: info.started_ms,
        }
    }

    /// True when the recorded process still runs (same PID and start time).
    pub fn is_alive(&self) -> bool {
        tandem_supervisor::procfs::is_same_process(self.pid as i32, self.start_ticks)
    }
}

/// Paths inside one data directory.
#[derive(Clone, Debug)]
pub struct DataDir {
    root: PathBuf,
}

/// Holds the directory's lock while alive.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DataDir {
    pub fn new(root: &Path) -> DataDir {
        DataDir {
            root: root.to_path_buf(),
        }
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn socket_file(&self) -> PathBuf {
        self.root.join("server.sock")
    }
    pub fn record_file(&self) -> PathBuf {
        self.root.join("server.json")
    }
    pub fn token_file(&self) -> PathBuf {
        self.root.join("token")
    }
    /// The secret store (see [`crate::secrets`]).
    pub fn secrets_file(&self) -> PathBuf {
        self.root.join("secrets.json")
    }
    pub fn store_file(&self) -> PathBuf {
        self.root.join("state.db")
    }
    pub fn log_file(&self) -> PathBuf {
        self.root.join("server.log")
    }
    pub fn instances_dir(&self) -> PathBuf {
        self.root.join("instances")
    }
    pub fn logs_dir(&self) -> PathBuf {
        self.root.join("logs")
    }
    pub fn warm_file(&self) -> PathBuf {
        self.root.join("warm.json")
    }

    /// Creates the folder tree, owner-only.
    pub fn create(&self) -> io::Result<()> {
        std::fs::create_dir_all(&self.root)?;
        set_mode(&self.root, 0o700)?;
        if let Some(parent) = self.root.parent() {
            // `.tandem/` holds one folder per environment; keep it private as well.
            if parent.file_name().is_some_and(|n| n == ".tandem") {
                let _ = set_mode(parent, 0o700);
            }
        }
        std::fs::create_dir_all(self.instances_dir())?;
        std::fs::create_dir_all(self.logs_dir())?;
        Ok(())
    }

    /// Takes the directory's exclusive lock, or returns the PID of the server holding it.
    pub fn lock_exclusive(&self) -> Result<DirLock, String> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(self.root.join("server.lock"))
            .map_err(|e| e.to_string())?;
        // SAFETY: flock(2) on a file descriptor we own.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let pid = self
                .read_record()
                .map(|r| r.pid.to_string())
                .unwrap_or_else(|| "unknown".into());
            return Err(pid);
        }
        Ok(DirLock { _file: file })
    }

    /// True when some process holds the directory's lock (a server runs here).
    pub fn is_locked(&self) -> bool {
        let Ok(file) = File::open(self.root.join("server.lock")) else {
            return false;
        };
        // SAFETY: flock(2) on a file descriptor we own; released when `file` drops.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
        rc != 0
    }

    /// The API token, created (32 random bytes, hex) on first use, readable only by its owner.
    pub fn read_or_create_token(&self) -> io::Result<String> {
        let path = self.token_file();
        if let Ok(mut f) = File::open(&path) {
            let mut text = String::new();
            f.read_to_string(&mut text)?;
            let token = text.trim().to_string();
            if token.len() >= 32 {
                set_mode(&path, 0o600)?;
                return Ok(token);
            }
        }
        let mut bytes = [0u8; 32];
        File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        let token = hex::encode(bytes);
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(token.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        Ok(token)
    }

    pub fn read_token(&self) -> io::Result<String> {
        Ok(std::fs::read_to_string(self.token_file())?
            .trim()
            .to_string())
    }

    pub fn write_record(&self, record: &ServerRecord) -> io::Result<()> {
        tandem_supervisor::launch::write_json_atomic(&self.record_file(), record)
    }

    pub fn read_record(&self) -> Option<ServerRecord> {
        let bytes = std::fs::read(self.record_file()).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn remove_record(&self) {
        let _ = std::fs::remove_file(self.record_file());
    }

    /// `tandem down` leaves this mark so that a server started later (`tandem serve`, or a
    /// restart) does not bring the services back before the next apply.
    pub fn mark_down(&self, down: bool) -> io::Result<()> {
        let path = self.root.join("down");
        if down {
            std::fs::write(
                path,
                b"taken down with `tandem down`; the next apply starts the services\n",
            )
        } else {
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        }
    }

    pub fn is_down(&self) -> bool {
        self.root.join("down").exists()
    }

    /// A cgroup name unique to this environment and directory, e.g. `dev-3f2a9c10`.
    pub fn cgroup_name(&self, env: &str) -> String {
        let canonical = self
            .root
            .canonicalize()
            .unwrap_or_else(|_| self.root.clone());
        let mut h: u32 = 2166136261;
        for b in canonical.as_os_str().as_encoded_bytes() {
            h ^= u32::from(*b);
            h = h.wrapping_mul(16777619);
        }
        format!("{env}-{h:08x}")
    }
}

/// chmod.
/// Replaces `path` with `bytes` so that a crash leaves the old file or the new one, never a
/// torn one: a temporary file beside it, created with `mode` (never wider, not even for a
/// moment: a leftover from a crash is removed first), written and fsync'd, renamed over
/// `path`, then the folder fsync'd so that the rename itself is durable. The folder is
/// created when missing.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    if let Ok(folder) = File::open(dir) {
        let _ = folder.sync_all();
    }
    Ok(())
}

pub fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}
