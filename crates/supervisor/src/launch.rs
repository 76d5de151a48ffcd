//! The contract between the server and an instance's shim: the files in an instance's
//! folder. The server writes `launch.json` and starts the shim; the shim writes
//! `child.json` once the service process runs and `exit.json` once it has ended. Every
//! write is atomic (temporary file, then rename), so a reader never sees half a record,
//! and a server that restarts reads the same files to re-attach.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

/// Everything the shim needs to run one instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LaunchSpec {
    /// Unique id, also the folder name: `<service>-<index>-<nonce>`.
    pub instance: String,
    pub service: String,
    pub revision: u64,
    /// Replica index, 0-based.
    pub index: u32,
    /// The port this instance listens on (also in `env` as `PORT`).
    pub port: u16,
    /// Program and arguments, already interpolated; `argv[0]` is looked up in `PATH`.
    pub argv: Vec<String>,
    /// Absolute working folder.
    pub cwd: PathBuf,
    /// Variables added to the shim's own environment for the service process.
    pub env: BTreeMap<String, String>,
    /// cgroup path relative to each controller's root, e.g. `tandem/dev/api-r3-0-x1y2`;
    /// `None` runs without limits.
    pub cgroup: Option<String>,
    pub limits: ResolvedLimits,
    pub log: LogSettings,
}

/// Limits in the units the kernel takes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct ResolvedLimits {
    pub memory_bytes: Option<u64>,
    /// CPU in cores (0.5 is half a core).
    pub cpu_cores: Option<f64>,
    pub pids: Option<u64>,
}

/// Where and how big the instance's log file is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogSettings {
    /// The current log file; rotated files are `<path>.1`, `<path>.2`, ...
    pub path: PathBuf,
    pub max_bytes: u64,
    pub max_files: u32,
}

/// Written by the shim once the service process is running.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildRecord {
    pub shim_pid: i32,
    /// Start time of the shim (field 22 of /proc/PID/stat), to tell it from a reused PID.
    pub shim_start_ticks: u64,
    pub pid: i32,
    pub start_ticks: u64,
    /// Wall-clock start, milliseconds since the epoch.
    pub started_ms: i64,
}

/// Written by the shim once the service process has ended (or could not start).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// Exit code when the process exited by itself.
    pub code: Option<i32>,
    /// Signal number when a signal ended it.
    pub signal: Option<i32>,
    /// True when the kernel's OOM killer ended it (the cgroup's oom_kill counter rose).
    pub oom_killed: bool,
    /// Why the process could not be started at all ("No such file or directory", ...).
    pub spawn_error: Option<String>,
    pub exited_ms: i64,
}

/// The folder of one instance and the files in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceDir(pub PathBuf);

impl InstanceDir {
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn launch_file(&self) -> PathBuf {
        self.0.join("launch.json")
    }
    pub fn child_file(&self) -> PathBuf {
        self.0.join("child.json")
    }
    pub fn exit_file(&self) -> PathBuf {
        self.0.join("exit.json")
    }
    pub fn read_launch(&self) -> io::Result<LaunchSpec> {
        read_json(&self.launch_file())
    }
    pub fn read_child(&self) -> io::Result<Option<ChildRecord>> {
        read_optional_json(&self.child_file())
    }
    pub fn read_exit(&self) -> io::Result<Option<ExitRecord>> {
        read_optional_json(&self.exit_file())
    }
}

/// Writes `value` as JSON to `path` atomically: a temporary file beside it, then a rename.
/// The file is created owner-only (0600): `launch.json` and `meta.json` hold an instance's
/// environment, secrets included.
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    // `mode` applies only to a new file; one left by a crash may have any mode.
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    file.write_all(&bytes)?;
    drop(file);
    std::fs::rename(&tmp, path)
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> io::Result<T> {
    let bytes = std::fs::read(path)?;
    serde_json::from_slice(&bytes).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    })
}

fn read_optional_json<T: for<'de> Deserialize<'de>>(path: &Path) -> io::Result<Option<T>> {
    match read_json(path) {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}
