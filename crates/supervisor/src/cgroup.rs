//! Resource limits through Linux control groups: finding which cgroup hierarchy this host
//! offers, creating one group per instance with its memory, CPU and process-count limits,
//! and reading back usage, OOM kills and members.
//!
//! Users' hosts run cgroup v2 (one unified tree, `memory.max`, `cpu.max`); older hosts and
//! this project's build machines run v1 (one tree per controller, `memory.limit_in_bytes`,
//! `cpu.cfs_quota_us`). [`CgroupDriver::detect`] picks one from `/proc/self/mountinfo` and
//! says why when neither is usable (typically: not root), so the runtime can report it
//! once and run without limits. The files are read and written directly: the `cgroups-rs`
//! crate pulls in D-Bus for nothing we need.
//!
//! Every operation is a few small synchronous file operations; async callers may call them
//! inline except [`Cgroup::remove`], which may wait briefly for exiting processes.

mod mountinfo;

use crate::launch::ResolvedLimits;
use std::collections::BTreeSet;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

/// CFS period written with every CPU limit: 100 ms, the kernel's default. A quota is a
/// share of it, so 0.5 cores is 50 ms of CPU time per 100 ms.
pub const CPU_PERIOD_US: u64 = 100_000;
/// The kernel refuses CFS quotas below 1 ms.
const CPU_MIN_QUOTA_US: u64 = 1_000;
/// v1 reports "no memory limit" as a page-rounded `i64::MAX`; anything this large is none.
const V1_UNLIMITED: u64 = 1 << 62;
/// How long [`Cgroup::remove`] waits for the last members to leave a group.
const REMOVE_WAIT: Duration = Duration::from_secs(2);

/// Which cgroup hierarchy this host offers, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CgroupDriver {
    /// One hierarchy per controller (legacy). `root` is the folder holding the mounts,
    /// usually `/sys/fs/cgroup`; `controllers` where each controller really is mounted.
    V1 {
        root: PathBuf,
        controllers: V1Controllers,
    },
    /// The unified hierarchy mounted at `root`, with the memory controller available.
    V2 { root: PathBuf },
    /// No limits can be enforced; `reason` says why, for the user.
    Unavailable { reason: String },
}

/// Mount points of the v1 controllers tandem uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct V1Controllers {
    pub memory: PathBuf,
    pub cpu: PathBuf,
    pub pids: PathBuf,
    /// CPU accounting, for usage figures; optional because limits work without it.
    pub cpuacct: Option<PathBuf>,
}

impl V1Controllers {
    /// The common layout: each controller mounted at `root/<name>`.
    pub fn under(root: &Path) -> Self {
        V1Controllers {
            memory: root.join("memory"),
            cpu: root.join("cpu"),
            pids: root.join("pids"),
            cpuacct: Some(root.join("cpuacct")),
        }
    }
}

// === impl CgroupDriver ===

impl CgroupDriver {
    /// Detects the hierarchy from `/proc/self/mountinfo`, checking writability with
    /// `access(2)`.
    pub fn detect() -> CgroupDriver {
        let mountinfo = match fs::read_to_string("/proc/self/mountinfo") {
            Ok(text) => text,
            Err(e) => {
                return CgroupDriver::Unavailable {
                    reason: format!("cannot read /proc/self/mountinfo: {e}"),
                };
            }
        };
        match Self::detect_from(&mountinfo, is_writable) {
            // SAFETY: geteuid has no preconditions and cannot fail.
            CgroupDriver::Unavailable { reason } if unsafe { libc::geteuid() } != 0 => {
                CgroupDriver::Unavailable {
                    reason: format!("not running as root ({reason})"),
                }
            }
            driver => driver,
        }
    }

    /// Detection over a given mount table; `writable` says whether a folder may be written
    /// (tests pass fake trees and answers). v2 wins when its root offers the memory
    /// controller and is writable, since that is what modern hosts intend to be used; a
    /// hybrid host's v2 mount without controllers (as here, `/sys/fs/cgroup/unified`)
    /// falls through to v1, which then needs memory, cpu and pids mounted and writable.
    pub fn detect_from(mountinfo: &str, writable: impl Fn(&Path) -> bool) -> CgroupDriver {
        let mounts = mountinfo::cgroup_mounts(mountinfo);
        let mut findings = Vec::new();
        for mount in mounts.iter().filter(|m| m.v2) {
            let root = &mount.mount_point;
            let controllers = read_words(&root.join("cgroup.controllers"));
            if !controllers.contains("memory") {
                findings.push(format!(
                    "cgroup v2 at {} offers no memory controller",
                    root.display()
                ));
            } else if !writable(root) {
                findings.push(format!("cgroup v2 at {} is not writable", root.display()));
            } else {
                return CgroupDriver::V2 { root: root.clone() };
            }
        }
        let v1 = |name: &str| {
            mounts
                .iter()
                .find(|m| !m.v2 && m.controllers.iter().any(|c| c == name))
                .map(|m| m.mount_point.clone())
        };
        match (v1("memory"), v1("cpu"), v1("pids")) {
            (Some(memory), Some(cpu), Some(pids)) => {
                let not_writable: Vec<String> = [&memory, &cpu, &pids]
                    .into_iter()
                    .filter(|p| !writable(p))
                    .map(|p| p.display().to_string())
                    .collect();
                if not_writable.is_empty() {
                    let root = memory
                        .parent()
                        .map_or_else(|| memory.clone(), Path::to_path_buf);
                    let cpuacct = v1("cpuacct").filter(|p| writable(p));
                    return CgroupDriver::V1 {
                        root,
                        controllers: V1Controllers {
                            memory,
                            cpu,
                            pids,
                            cpuacct,
                        },
                    };
                }
                findings.push(format!(
                    "cgroup v1 controllers at {} are not writable",
                    not_writable.join(", ")
                ));
            }
            (memory, cpu, pids) => {
                let missing: Vec<&str> = [("memory", memory), ("cpu", cpu), ("pids", pids)]
                    .into_iter()
                    .filter(|(_, m)| m.is_none())
                    .map(|(name, _)| name)
                    .collect();
                findings.push(if mounts.is_empty() {
                    "no cgroup filesystem is mounted".to_owned()
                } else {
                    format!("cgroup v1 has no {} controller mounted", missing.join(", "))
                });
            }
        }
        CgroupDriver::Unavailable {
            reason: format!("no writable cgroup hierarchy: {}", findings.join("; ")),
        }
    }

    /// True unless [`CgroupDriver::Unavailable`].
    pub fn is_available(&self) -> bool {
        !matches!(self, CgroupDriver::Unavailable { .. })
    }

    /// One line for logs and `tandem status`.
    pub fn describe(&self) -> String {
        match self {
            CgroupDriver::V1 { root, controllers } => {
                let acct = if controllers.cpuacct.is_some() {
                    ", cpuacct"
                } else {
                    ""
                };
                format!(
                    "cgroup v1 under {} (memory, cpu, pids{acct})",
                    root.display()
                )
            }
            CgroupDriver::V2 { root } => format!("cgroup v2 at {}", root.display()),
            CgroupDriver::Unavailable { reason } => {
                format!("resource limits not enforced: {reason}")
            }
        }
    }

    /// Creates `group` (a relative path such as `tandem/dev/api-r3-0-x1y2`, created with its
    /// parents) and writes every limit, "unlimited" included, so a reused group never keeps
    /// an old value. Fails with `InvalidInput` for a bad name or CPU value, `Unsupported`
    /// when no hierarchy is usable or a requested controller is not delegated, and the
    /// kernel's error (with the file named) otherwise; a half-made group is removed again.
    pub fn create(&self, group: &str, limits: &ResolvedLimits) -> io::Result<Cgroup> {
        let relative = validate_group(group)?;
        if let Some(cores) = limits.cpu_cores
            && !(cores.is_finite() && cores > 0.0)
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cpu limit must be a positive number of cores, not {cores}"),
            ));
        }
        let cgroup = match self {
            CgroupDriver::Unavailable { reason } => {
                return Err(io::Error::new(io::ErrorKind::Unsupported, reason.clone()));
            }
            CgroupDriver::V1 { controllers, .. } => {
                let cgroup = Cgroup::v1(group, controllers, relative);
                for dir in cgroup.dirs() {
                    fs::create_dir_all(dir).map_err(|e| with_path(dir, e))?;
                }
                cgroup
            }
            CgroupDriver::V2 { root } => {
                enable_v2_controllers(root, relative)?;
                Cgroup {
                    name: group.to_owned(),
                    layout: Layout::V2 {
                        dir: root.join(relative),
                    },
                }
            }
        };
        match cgroup.write_limits(limits) {
            Ok(()) => Ok(cgroup),
            Err(e) => {
                let _ = cgroup.remove();
                Err(e)
            }
        }
    }

    /// The existing `group`, for a server re-attaching to a running instance; `None` when
    /// it (or this driver) is not there.
    pub fn open(&self, group: &str) -> Option<Cgroup> {
        let relative = validate_group(group).ok()?;
        let cgroup = match self {
            CgroupDriver::Unavailable { .. } => return None,
            CgroupDriver::V1 { controllers, .. } => Cgroup::v1(group, controllers, relative),
            CgroupDriver::V2 { root } => Cgroup {
                name: group.to_owned(),
                layout: Layout::V2 {
                    dir: root.join(relative),
                },
            },
        };
        cgroup.dirs().iter().all(|d| d.is_dir()).then_some(cgroup)
    }
}

/// A group name must be a plain relative path: no `..`, no root, nothing empty.
fn validate_group(group: &str) -> io::Result<&Path> {
    let path = Path::new(group);
    let plain = !group.is_empty() && path.components().all(|c| matches!(c, Component::Normal(_)));
    if plain {
        Ok(path)
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("cgroup name '{group}' must be a relative path without '..'"),
        ))
    }
}

/// v2 only lets a group use a controller its parent enabled in `cgroup.subtree_control`,
/// so every folder from the root down to the group's parent enables the controllers it has
/// (and a missing folder is created on the way). Controllers a level lacks are left out
/// rather than failing: [`Cgroup::write_limits`] reports a requested limit it cannot set.
fn enable_v2_controllers(root: &Path, relative: &Path) -> io::Result<()> {
    let mut dir = root.to_path_buf();
    for component in relative.components() {
        let available = read_words(&dir.join("cgroup.controllers"));
        let enabled = read_words(&dir.join("cgroup.subtree_control"));
        let missing: Vec<String> = ["memory", "cpu", "pids"]
            .into_iter()
            .filter(|c| available.contains(*c) && !enabled.contains(*c))
            .map(|c| format!("+{c}"))
            .collect();
        if !missing.is_empty() {
            write_file(&dir.join("cgroup.subtree_control"), &missing.join(" "))?;
        }
        dir.push(component);
        match fs::create_dir(&dir) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(with_path(&dir, e)),
            _ => {}
        }
    }
    Ok(())
}

// === impl Cgroup ===

/// One instance's control group (in each v1 controller, or the one v2 folder).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cgroup {
    name: String,
    layout: Layout,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Layout {
    V1 {
        memory: PathBuf,
        cpu: PathBuf,
        pids: PathBuf,
        cpuacct: Option<PathBuf>,
    },
    V2 {
        dir: PathBuf,
    },
}

impl Cgroup {
    fn v1(name: &str, controllers: &V1Controllers, relative: &Path) -> Cgroup {
        Cgroup {
            name: name.to_owned(),
            layout: Layout::V1 {
                memory: controllers.memory.join(relative),
                cpu: controllers.cpu.join(relative),
                pids: controllers.pids.join(relative),
                cpuacct: controllers.cpuacct.as_ref().map(|p| p.join(relative)),
            },
        }
    }

    /// The name it was created with, relative to each controller's root.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The folder holding `controller`'s files (`memory`, `cpu`, `pids`, `cpuacct`); in v2
    /// the one folder, whatever the controller.
    pub fn controller_dir(&self, controller: &str) -> Option<&Path> {
        match &self.layout {
            Layout::V2 { dir } => Some(dir),
            Layout::V1 {
                memory,
                cpu,
                pids,
                cpuacct,
            } => match controller {
                "memory" => Some(memory),
                "cpu" => Some(cpu),
                "pids" => Some(pids),
                "cpuacct" => cpuacct.as_deref(),
                _ => None,
            },
        }
    }

    /// Every folder of the group, without repeats (v1 `cpu` and `cpuacct` are often one
    /// mount).
    fn dirs(&self) -> Vec<&Path> {
        match &self.layout {
            Layout::V2 { dir } => vec![dir],
            Layout::V1 {
                memory,
                cpu,
                pids,
                cpuacct,
            } => {
                let mut dirs: Vec<&Path> = vec![memory, cpu, pids];
                if let Some(acct) = cpuacct
                    && !dirs.contains(&acct.as_path())
                {
                    dirs.push(acct);
                }
                dirs
            }
        }
    }

    /// One `cgroup.procs` per folder; writing a PID to each moves that process in.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs().iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// The `cgroup.procs` files opened for writing. A child process writes `0` ("myself")
    /// to each between fork and exec, so it is limited before the service's first
    /// instruction and every process it forks inherits the group. The files are
    /// close-on-exec, so the service never sees them.
    pub fn add_self_files(&self) -> io::Result<Vec<File>> {
        self.procs_files()
            .iter()
            .map(|p| {
                OpenOptions::new()
                    .write(true)
                    .open(p)
                    .map_err(|e| with_path(p, e))
            })
            .collect()
    }

    /// Every process in the group, sorted.
    pub fn pids(&self) -> Vec<i32> {
        let mut pids = BTreeSet::new();
        for file in self.procs_files() {
            if let Ok(text) = fs::read_to_string(&file) {
                pids.extend(
                    text.split_whitespace()
                        .filter_map(|p| p.parse::<i32>().ok()),
                );
            }
        }
        pids.into_iter().collect()
    }

    /// Memory charged to the group now, page cache included.
    pub fn memory_usage_bytes(&self) -> Option<u64> {
        match &self.layout {
            Layout::V1 { memory, .. } => read_u64(&memory.join("memory.usage_in_bytes")),
            Layout::V2 { dir } => read_u64(&dir.join("memory.current")),
        }
    }

    /// The memory limit in force, `None` when unlimited.
    pub fn memory_limit_bytes(&self) -> Option<u64> {
        match &self.layout {
            Layout::V1 { memory, .. } => {
                read_u64(&memory.join("memory.limit_in_bytes")).filter(|v| *v < V1_UNLIMITED)
            }
            Layout::V2 { dir } => read_u64(&dir.join("memory.max")),
        }
    }

    /// CPU time used by the group's processes, dead ones included.
    pub fn cpu_usage_seconds(&self) -> Option<f64> {
        match &self.layout {
            Layout::V1 { cpuacct, .. } => {
                read_u64(&cpuacct.as_ref()?.join("cpuacct.usage")).map(|ns| ns as f64 / 1e9)
            }
            Layout::V2 { dir } => {
                read_keyed(&dir.join("cpu.stat"), "usage_usec").map(|us| us as f64 / 1e6)
            }
        }
    }

    /// How many processes of the group the OOM killer has ended (needs kernel 4.13+ on v1).
    pub fn oom_kill_count(&self) -> Option<u64> {
        match &self.layout {
            Layout::V1 { memory, .. } => read_keyed(&memory.join("memory.oom_control"), "oom_kill"),
            Layout::V2 { dir } => read_keyed(&dir.join("memory.events"), "oom_kill"),
        }
    }

    /// Sends `signal` to every process in the group. The list is read again until no new
    /// PID shows up, so a process forked while the signals go out is not missed; each PID
    /// is signalled once. With SIGKILL on v2, `cgroup.kill` (kernel 5.14+) does it in one
    /// atomic step.
    pub fn kill_all(&self, signal: i32) {
        if let Layout::V2 { dir } = &self.layout
            && signal == libc::SIGKILL
            && write_file(&dir.join("cgroup.kill"), "1").is_ok()
        {
            return;
        }
        let me = i32::try_from(std::process::id()).unwrap_or(0);
        let mut signalled = BTreeSet::new();
        for _ in 0..16 {
            let fresh: Vec<i32> = self
                .pids()
                .into_iter()
                .filter(|p| *p > 0 && *p != me && !signalled.contains(p))
                .collect();
            if fresh.is_empty() {
                break;
            }
            for pid in fresh {
                // SAFETY: kill has no memory-safety preconditions; the PID is positive, so
                // exactly that process is signalled (never a group or everything).
                unsafe { libc::kill(pid, signal) };
                signalled.insert(pid);
            }
        }
    }

    /// Removes the group's folders (never its parents, which other instances share).
    /// Processes that were just killed may hold a group for a moment, so a busy folder is
    /// retried for up to two seconds; a folder already gone counts as removed.
    pub fn remove(&self) -> io::Result<()> {
        let deadline = Instant::now() + REMOVE_WAIT;
        for dir in self.dirs() {
            loop {
                match fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e)
                        if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline =>
                    {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => return Err(with_path(dir, e)),
                }
            }
        }
        Ok(())
    }

    fn write_limits(&self, limits: &ResolvedLimits) -> io::Result<()> {
        let quota = limits
            .cpu_cores
            .map(|cores| ((cores * CPU_PERIOD_US as f64).round() as u64).max(CPU_MIN_QUOTA_US));
        match &self.layout {
            Layout::V1 {
                memory, cpu, pids, ..
            } => {
                let memsw = memory.join("memory.memsw.limit_in_bytes");
                // With swap accounting on, `memsw` bounds memory plus swap and must never be
                // below the memory limit: lift it, set the limit, then pin it to the same
                // value so the limit is not quietly extended by swap (as `memory.swap.max=0`
                // does on v2). Best effort: hosts without swap accounting lack the file.
                if memsw.exists() {
                    let _ = write_file(&memsw, "-1");
                }
                write_file(
                    &memory.join("memory.limit_in_bytes"),
                    &or_unlimited(limits.memory_bytes, "-1"),
                )?;
                if let Some(bytes) = limits.memory_bytes
                    && memsw.exists()
                {
                    let _ = write_file(&memsw, &bytes.to_string());
                }
                write_file(&cpu.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                write_file(&cpu.join("cpu.cfs_quota_us"), &or_unlimited(quota, "-1"))?;
                write_file(&pids.join("pids.max"), &or_unlimited(limits.pids, "max"))?;
            }
            Layout::V2 { dir } => {
                write_v2(
                    dir,
                    "memory.max",
                    limits.memory_bytes.is_some(),
                    &or_unlimited(limits.memory_bytes, "max"),
                )?;
                let swap = dir.join("memory.swap.max");
                if swap.exists() {
                    write_file(
                        &swap,
                        if limits.memory_bytes.is_some() {
                            "0"
                        } else {
                            "max"
                        },
                    )?;
                }
                let cpu_max = format!("{} {CPU_PERIOD_US}", or_unlimited(quota, "max"));
                write_v2(dir, "cpu.max", quota.is_some(), &cpu_max)?;
                write_v2(
                    dir,
                    "pids.max",
                    limits.pids.is_some(),
                    &or_unlimited(limits.pids, "max"),
                )?;
            }
        }
        Ok(())
    }
}

/// Writes a v2 limit file. When the file is missing the controller was not delegated to
/// us: an error if a limit was asked for, nothing to undo otherwise.
fn write_v2(dir: &Path, file: &str, requested: bool, value: &str) -> io::Result<()> {
    let path = dir.join(file);
    if path.exists() {
        write_file(&path, value)
    } else if requested {
        let controller = file.split('.').next().unwrap_or(file);
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "the {controller} controller is not enabled for {} (no {file})",
                dir.display()
            ),
        ))
    } else {
        Ok(())
    }
}

fn or_unlimited(value: Option<u64>, unlimited: &str) -> String {
    value.map_or_else(|| unlimited.to_owned(), |v| v.to_string())
}

/// Writes a control file in one `write(2)`, as the kernel expects. The file must exist:
/// cgroupfs creates every control file itself, so "not found" means a missing controller.
fn write_file(path: &Path, value: &str) -> io::Result<()> {
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(|e| with_path(path, e))
}

fn with_path(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

fn read_words(path: &Path) -> BTreeSet<String> {
    fs::read_to_string(path)
        .map(|t| t.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The value of `key` in a flat keyed file (`oom_kill 3`, `usage_usec 1234`).
fn read_keyed(path: &Path, key: &str) -> Option<u64> {
    fs::read_to_string(path).ok()?.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// `access(path, W_OK)`: false on a read-only mount even for root.
fn is_writable(path: &Path) -> bool {
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c_path` is a valid NUL-terminated string that outlives the call.
    unsafe { libc::access(c_path.as_ptr(), libc::W_OK) == 0 }
}
