//! The built-in collectors: what tandem measures of every instance and of the host without
//! being asked, as samples ready for the time-series store.
//!
//! Per instance (labels `env`, `service`, `instance`, `revision`): CPU seconds, resident and
//! cgroup memory, the memory and CPU limits, open file descriptors, restarts, OOM kills, and
//! whether it is up and healthy. Per host (labels `env`, `instance` = the host name): CPU
//! seconds by mode, memory, load averages, and the space of the data directory's file
//! system. Names follow Prometheus conventions (`_total`, `_seconds`, `_bytes`) with a
//! `tandem_` prefix. One call reads `/proc` once for all instances.

use std::path::{Path, PathBuf};
use tandem_api::InstanceState;
use tandem_supervisor::runtime::Runtime;
use tandem_tsdb::{Labels, Sample};

/// Produces one round of built-in samples.
#[derive(Debug)]
pub struct Collector {
    env: String,
    host: String,
    data_dir: PathBuf,
}

impl Collector {
    pub fn new(env: &str, data_dir: &Path) -> Collector {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".to_string());
        Collector {
            env: env.to_string(),
            host,
            data_dir: data_dir.to_path_buf(),
        }
    }

    /// Every built-in sample at `t_ms`.
    pub fn collect(&self, runtime: &Runtime, t_ms: i64) -> Vec<(Labels, Sample)> {
        let mut out = Vec::new();
        self.instances(runtime, t_ms, &mut out);
        self.host(t_ms, &mut out);
        out
    }

    fn instances(&self, runtime: &Runtime, t: i64, out: &mut Vec<(Labels, Sample)>) {
        for (status, usage) in runtime.usage_all() {
            let revision = status.revision.to_string();
            let base = [
                ("env", self.env.as_str()),
                ("service", status.service.as_str()),
                ("instance", status.id.as_str()),
                ("revision", revision.as_str()),
            ];
            let mut push = |name: &str, v: f64| {
                let labels = Labels::new(base.iter().copied().chain([("__name__", name)]));
                out.push((labels, Sample { t, v }));
            };
            let up = status.state.is_up();
            push("tandem_instance_up", if up { 1.0 } else { 0.0 });
            push(
                "tandem_instance_healthy",
                if status.state == InstanceState::Healthy {
                    1.0
                } else {
                    0.0
                },
            );
            push("tandem_instance_restarts_total", f64::from(status.restarts));
            if let Some(limit) = status.memory_limit_bytes {
                push("tandem_instance_memory_limit_bytes", limit as f64);
            }
            if let Some(limit) = status.cpu_limit_cores {
                push("tandem_instance_cpu_limit_cores", limit);
            }
            if let Some(v) = usage.cpu_seconds {
                push("tandem_instance_cpu_seconds_total", v);
            }
            if let Some(v) = usage.rss_bytes {
                push("tandem_instance_memory_rss_bytes", v as f64);
            }
            if let Some(v) = usage.cgroup_memory_bytes {
                push("tandem_instance_memory_usage_bytes", v as f64);
            }
            if let Some(v) = usage.open_fds {
                push("tandem_instance_open_fds", v as f64);
            }
            if let Some(v) = usage.oom_kills {
                push("tandem_instance_oom_kills_total", v as f64);
            }
        }
    }

    fn host(&self, t: i64, out: &mut Vec<(Labels, Sample)>) {
        let base = [("env", self.env.as_str()), ("instance", self.host.as_str())];
        let mut push = |name: &str, extra: Option<(&str, &str)>, v: f64| {
            let labels = Labels::new(
                base.iter()
                    .copied()
                    .chain(extra)
                    .chain([("__name__", name)]),
            );
            out.push((labels, Sample { t, v }));
        };
        if let Some(cpu) = host_cpu_seconds() {
            for (mode, seconds) in cpu {
                push(
                    "tandem_host_cpu_seconds_total",
                    Some(("mode", mode)),
                    seconds,
                );
            }
        }
        if let Some((total, available)) = host_memory() {
            push("tandem_host_memory_total_bytes", None, total as f64);
            push("tandem_host_memory_available_bytes", None, available as f64);
        }
        if let Some([l1, l5, l15]) = host_load() {
            push("tandem_host_load1", None, l1);
            push("tandem_host_load5", None, l5);
            push("tandem_host_load15", None, l15);
        }
        if let Some((size, free)) = filesystem_space(&self.data_dir) {
            let mount = self.data_dir.display().to_string();
            push(
                "tandem_host_data_dir_size_bytes",
                Some(("path", &mount)),
                size as f64,
            );
            push(
                "tandem_host_data_dir_free_bytes",
                Some(("path", &mount)),
                free as f64,
            );
        }
    }
}

/// CPU seconds by mode from the first line of `/proc/stat`.
fn host_cpu_seconds() -> Option<Vec<(&'static str, f64)>> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let ticks = tandem_supervisor::procfs::clock_ticks_per_second() as f64;
    const MODES: [&str; 8] = [
        "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
    ];
    let values: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    Some(
        MODES
            .iter()
            .copied()
            .zip(values.into_iter().map(|v| v / ticks))
            .collect(),
    )
}

/// (MemTotal, MemAvailable) in bytes.
fn host_memory() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map(|kib| kib * 1024)
    };
    Some((field("MemTotal:")?, field("MemAvailable:")?))
}

fn host_load() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut v = text.split_whitespace().map(|x| x.parse::<f64>().ok());
    Some([v.next()??, v.next()??, v.next()??])
}

/// (size, available) of the file system holding `path`, in bytes.
fn filesystem_space(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs(3) fills the zeroed struct we own from a NUL-terminated path.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
    if rc != 0 {
        return None;
    }
    let block = stat.f_frsize as u64;
    Some((stat.f_blocks as u64 * block, stat.f_bavail as u64 * block))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_figures_are_read_from_proc() {
        let cpu = host_cpu_seconds().expect("/proc/stat");
        assert!(cpu.iter().any(|(m, s)| *m == "idle" && *s > 0.0));
        let (total, available) = host_memory().expect("/proc/meminfo");
        assert!(total > 0 && available <= total);
        assert!(host_load().is_some());
        let (size, free) = filesystem_space(Path::new("/")).expect("statvfs");
        assert!(size > 0 && free <= size);
    }
}
