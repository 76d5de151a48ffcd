//! The built-in collectors: what tandem measures of every instance and of the host without
//! being asked, as samples ready for the time-series store.
//!
//! Per instance (labels `env`, `service`, `instance`, `revision`): CPU seconds, resident and
//! cgroup memory, the memory and CPU limits, open file descriptors, restarts, OOM kills, and
//! whether it is up and healthy. Per host (labels `env`, `instance` = the host name, read in
//! `host`): CPU seconds by mode, memory, load averages, the space of the data directory's
//! file system, network and disk I/O counters, file handles and sockets. Names follow
//! Prometheus conventions (`_total`, `_seconds`, `_bytes`) with a `tandem_` prefix. One call
//! reads `/proc` once for all instances, and each host file once.

mod host;

use host::HostReader;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tandem_api::InstanceState;
use tandem_supervisor::runtime::Runtime;
use tandem_tsdb::{Labels, Sample};

/// Produces one round of built-in samples.
#[derive(Debug)]
pub struct Collector {
    env: String,
    host: String,
    data_dir: PathBuf,
    host_reader: Mutex<HostReader>,
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
            host_reader: Mutex::default(),
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
        // Rounds never overlap (the loop awaits each one), so the lock is never contended.
        let mut reader = self.host_reader.lock().unwrap_or_else(|e| e.into_inner());
        reader.collect(&self.data_dir, &mut push);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn host_round(c: &Collector) -> Vec<(Labels, Sample)> {
        let mut out = Vec::new();
        c.host(1000, &mut out);
        out
    }

    fn value(round: &[(Labels, Sample)], name: &str, extra: Option<(&str, &str)>) -> Option<f64> {
        round
            .iter()
            .find(|(l, _)| {
                l.get("__name__") == Some(name) && extra.is_none_or(|(k, v)| l.get(k) == Some(v))
            })
            .map(|(_, s)| s.v)
    }

    #[test]
    fn a_host_round_has_every_figure_of_the_machine_once() {
        let c = Collector::new("dev", Path::new("/"));
        let round = host_round(&c);
        assert!(
            value(
                &round,
                "tandem_host_cpu_seconds_total",
                Some(("mode", "idle"))
            ) > Some(0.0)
        );
        let total = value(&round, "tandem_host_memory_total_bytes", None).expect("MemTotal");
        let available = value(&round, "tandem_host_memory_available_bytes", None).unwrap();
        assert!(total > 0.0 && available <= total);
        assert!(value(&round, "tandem_host_load1", None).is_some());
        let size = value(
            &round,
            "tandem_host_data_dir_size_bytes",
            Some(("path", "/")),
        )
        .unwrap();
        let free = value(&round, "tandem_host_data_dir_free_bytes", None).unwrap();
        assert!(size > 0.0 && free <= size);
        // Loopback is always there, and kept.
        assert!(
            value(
                &round,
                "tandem_host_network_receive_bytes_total",
                Some(("device", "lo"))
            )
            .is_some()
        );
        let allocated = value(&round, "tandem_host_filefd_allocated", None).unwrap();
        assert!(
            allocated > 0.0
                && allocated <= value(&round, "tandem_host_filefd_maximum", None).unwrap()
        );
        assert!(value(&round, "tandem_host_sockstat_TCP_inuse", None).is_some());
        // A label set twice in one round would have its second sample refused by the store.
        let unique: HashSet<&Labels> = round.iter().map(|(l, _)| l).collect();
        assert_eq!(unique.len(), round.len());
        for (labels, _) in &round {
            assert_eq!(labels.get("env"), Some("dev"));
            assert_eq!(labels.get("instance"), Some(c.host.as_str()));
        }
    }

    /// The cost of the host part of a round, printed (`-- --nocapture`), never asserted:
    /// timing on shared machines decides nothing.
    #[test]
    fn cost_of_host_rounds() {
        let c = Collector::new("dev", Path::new("/"));
        let n = host_round(&c).len();
        let mut out = Vec::with_capacity(n);
        let start = std::time::Instant::now();
        for i in 0..1000 {
            out.clear();
            c.host(i, &mut out);
        }
        let took = start.elapsed();
        println!(
            "host collector: {n} series, 1000 rounds in {took:?}, {:?} per round",
            took / 1000
        );
    }
}
