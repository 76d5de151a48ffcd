//! Monitoring inside the server: the environment's time-series store, the query engine over
//! it, and the loop that collects every `interval` (1 s): the built-in instance and host
//! collectors and the proxy's per-request figures, appended in one batch.
//!
//! Metric metadata (type, help, unit) for tandem's own series is known here; the
//! `/api/v1/metadata` endpoint reads it.

use crate::metrics::TrafficMetrics;
use crate::remote_write::RemoteWriter;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tandem_api::EventSink;
use tandem_engine::collect::Collector;
use tandem_supervisor::runtime::Runtime;
use tandem_tsdb::{Db, DbOptions, Labels, Sample};

/// What `# TYPE`, `# HELP`, `# UNIT` say of a metric.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MetricMeta {
    pub(crate) kind: String,
    pub(crate) help: String,
    pub(crate) unit: String,
}

/// The store, the engine and what is known about the metrics in it.
pub(crate) struct Monitor {
    pub(crate) db: Arc<Db>,
    pub(crate) engine: tandem_promql::Engine,
    metadata: Mutex<BTreeMap<String, MetricMeta>>,
    /// The live revision's `[monitoring]`; intervals are read each round, so a deploy that
    /// changes them takes effect at the next one.
    settings: Mutex<tandem_spec::Monitoring>,
    /// Replaced when a deploy changes `remote_write`.
    remote: Mutex<Arc<RemoteWriter>>,
    events: Arc<dyn EventSink>,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor").finish_non_exhaustive()
    }
}

/// tandem's own series: (name, type, unit, help).
const BUILT_IN: &[(&str, &str, &str, &str)] = &[
    (
        "tandem_instance_up",
        "gauge",
        "",
        "1 while the instance's process runs.",
    ),
    (
        "tandem_instance_healthy",
        "gauge",
        "",
        "1 while the instance's last health check passed.",
    ),
    (
        "tandem_instance_restarts_total",
        "counter",
        "",
        "Restarts of the instance by tandem.",
    ),
    (
        "tandem_instance_cpu_seconds_total",
        "counter",
        "seconds",
        "CPU time used by the instance (its cgroup, else its process group).",
    ),
    (
        "tandem_instance_cpu_limit_cores",
        "gauge",
        "",
        "The instance's CPU limit in cores.",
    ),
    (
        "tandem_instance_memory_rss_bytes",
        "gauge",
        "bytes",
        "Resident memory of the instance's processes.",
    ),
    (
        "tandem_instance_memory_usage_bytes",
        "gauge",
        "bytes",
        "Memory the instance's cgroup charges against its limit.",
    ),
    (
        "tandem_instance_memory_limit_bytes",
        "gauge",
        "bytes",
        "The instance's memory limit.",
    ),
    (
        "tandem_instance_open_fds",
        "gauge",
        "",
        "Open file descriptors of the instance's processes.",
    ),
    (
        "tandem_instance_oom_kills_total",
        "counter",
        "",
        "Processes of the instance the kernel killed for memory.",
    ),
    (
        "tandem_host_cpu_seconds_total",
        "counter",
        "seconds",
        "CPU time of the host by mode.",
    ),
    (
        "tandem_host_memory_total_bytes",
        "gauge",
        "bytes",
        "Memory of the host.",
    ),
    (
        "tandem_host_memory_available_bytes",
        "gauge",
        "bytes",
        "Memory available for new work on the host.",
    ),
    (
        "tandem_host_load1",
        "gauge",
        "",
        "Load average over 1 minute.",
    ),
    (
        "tandem_host_load5",
        "gauge",
        "",
        "Load average over 5 minutes.",
    ),
    (
        "tandem_host_load15",
        "gauge",
        "",
        "Load average over 15 minutes.",
    ),
    (
        "tandem_host_data_dir_size_bytes",
        "gauge",
        "bytes",
        "Size of the file system holding the data directory.",
    ),
    (
        "tandem_host_data_dir_free_bytes",
        "gauge",
        "bytes",
        "Space available on the file system holding the data directory.",
    ),
    (
        "tandem_host_network_receive_bytes_total",
        "counter",
        "bytes",
        "Bytes received by the host's network interface (loopback included).",
    ),
    (
        "tandem_host_network_receive_packets_total",
        "counter",
        "",
        "Packets received by the host's network interface.",
    ),
    (
        "tandem_host_network_receive_errs_total",
        "counter",
        "",
        "Receive errors the host's network interface's driver counted.",
    ),
    (
        "tandem_host_network_receive_drop_total",
        "counter",
        "",
        "Received packets the host's network interface dropped.",
    ),
    (
        "tandem_host_network_transmit_bytes_total",
        "counter",
        "bytes",
        "Bytes sent by the host's network interface (loopback included).",
    ),
    (
        "tandem_host_network_transmit_packets_total",
        "counter",
        "",
        "Packets sent by the host's network interface.",
    ),
    (
        "tandem_host_network_transmit_errs_total",
        "counter",
        "",
        "Transmit errors the host's network interface's driver counted.",
    ),
    (
        "tandem_host_network_transmit_drop_total",
        "counter",
        "",
        "Packets to send the host's network interface dropped.",
    ),
    (
        "tandem_host_disk_reads_completed_total",
        "counter",
        "",
        "Reads the host's block device completed.",
    ),
    (
        "tandem_host_disk_read_bytes_total",
        "counter",
        "bytes",
        "Bytes the host's block device read.",
    ),
    (
        "tandem_host_disk_read_time_seconds_total",
        "counter",
        "seconds",
        "Time spent by all reads of the host's block device.",
    ),
    (
        "tandem_host_disk_writes_completed_total",
        "counter",
        "",
        "Writes the host's block device completed.",
    ),
    (
        "tandem_host_disk_written_bytes_total",
        "counter",
        "bytes",
        "Bytes the host's block device wrote.",
    ),
    (
        "tandem_host_disk_write_time_seconds_total",
        "counter",
        "seconds",
        "Time spent by all writes of the host's block device.",
    ),
    (
        "tandem_host_disk_io_now",
        "gauge",
        "",
        "I/Os in progress on the host's block device.",
    ),
    (
        "tandem_host_disk_io_time_seconds_total",
        "counter",
        "seconds",
        "Time the host's block device spent doing I/O.",
    ),
    (
        "tandem_host_filefd_allocated",
        "gauge",
        "",
        "File handles the host's kernel has allocated.",
    ),
    (
        "tandem_host_filefd_maximum",
        "gauge",
        "",
        "Most file handles the host's kernel will allocate (fs.file-max).",
    ),
    (
        "tandem_host_sockstat_sockets_used",
        "gauge",
        "",
        "Sockets in use on the host.",
    ),
    (
        "tandem_host_sockstat_TCP_inuse",
        "gauge",
        "",
        "IPv4 TCP sockets in use on the host (listening and connected).",
    ),
    (
        "tandem_host_sockstat_TCP_orphan",
        "gauge",
        "",
        "TCP sockets no process holds any more on the host.",
    ),
    (
        "tandem_host_sockstat_TCP_tw",
        "gauge",
        "",
        "TCP sockets in TIME_WAIT on the host.",
    ),
    (
        "tandem_host_sockstat_TCP_alloc",
        "gauge",
        "",
        "TCP sockets allocated on the host, in any state.",
    ),
    (
        "tandem_host_sockstat_TCP6_inuse",
        "gauge",
        "",
        "IPv6 TCP sockets in use on the host (listening and connected).",
    ),
    (
        "tandem_http_requests_total",
        "counter",
        "",
        "Requests through tandem's proxy by service, caller, revision, method and status class.",
    ),
    (
        "tandem_http_request_bytes_total",
        "counter",
        "bytes",
        "Request body bytes through tandem's proxy.",
    ),
    (
        "tandem_http_response_bytes_total",
        "counter",
        "bytes",
        "Response body bytes through tandem's proxy.",
    ),
    (
        "tandem_http_request_duration_seconds",
        "histogram",
        "seconds",
        "Time from a request's head to its response's end, through tandem's proxy.",
    ),
    (
        "tandem_tls_handshake_failures_total",
        "counter",
        "",
        "TLS handshakes on a service's HTTPS port that failed or did not finish in time.",
    ),
];

impl Monitor {
    /// Opens (or creates) the store in `dir`.
    pub(crate) fn open(
        dir: &Path,
        settings: &tandem_spec::Monitoring,
        events: Arc<dyn EventSink>,
    ) -> Result<Monitor, String> {
        let options = DbOptions {
            retention: Some(settings.retention.0),
            max_bytes: settings.max_bytes.map(|b| b.0),
            max_series_per_query: Some(500_000),
            max_samples_per_query: Some(50_000_000),
            ..DbOptions::default()
        };
        let db = Db::open(dir, options)
            .map_err(|e| format!("cannot open the time-series store: {e}"))?;
        for w in db.warnings() {
            tracing::warn!("time-series store: {w}");
        }
        let metadata = BUILT_IN
            .iter()
            .map(|(name, kind, unit, help)| {
                (
                    name.to_string(),
                    MetricMeta {
                        kind: kind.to_string(),
                        help: help.to_string(),
                        unit: unit.to_string(),
                    },
                )
            })
            .collect();
        let db = Arc::new(db);
        let remote = Arc::new(RemoteWriter::start(
            settings.remote_write.clone(),
            events.clone(),
            crate::remote_write::Source::beside(db.clone(), dir),
        ));
        Ok(Monitor {
            db,
            engine: tandem_promql::Engine::default(),
            metadata: Mutex::new(metadata),
            settings: Mutex::new(settings.clone()),
            remote: Mutex::new(remote),
            events,
        })
    }

    pub(crate) fn settings(&self) -> tandem_spec::Monitoring {
        self.settings.lock().expect("settings lock").clone()
    }

    /// Takes a new live revision's `[monitoring]`: intervals from the next round, new
    /// remote-write targets at once. Retention and size limits apply at the next start.
    pub(crate) fn apply_settings(&self, new: &tandem_spec::Monitoring) {
        let mut settings = self.settings.lock().expect("settings lock");
        if settings.remote_write != new.remote_write {
            let mut remote = self.remote.lock().expect("remote lock");
            *remote = Arc::new(remote.replaced_by(new.remote_write.clone(), self.events.clone()));
        }
        if settings.retention != new.retention || settings.max_bytes != new.max_bytes {
            tracing::info!("the new retention and max_bytes apply when the server next starts");
        }
        *settings = new.clone();
    }

    /// Stores a batch and queues it for every remote-write target.
    pub(crate) fn store(
        &self,
        batch: &[(Labels, Sample)],
    ) -> Result<tandem_tsdb::AppendSummary, tandem_tsdb::DbError> {
        let stored = self.db.append_batch(batch);
        let remote = self.remote.lock().expect("remote lock").clone();
        remote.push(batch);
        stored
    }

    pub(crate) fn remote_stats(&self) -> Vec<crate::remote_write::TargetStats> {
        self.remote.lock().expect("remote lock").stats()
    }

    pub(crate) fn metadata(&self) -> BTreeMap<String, MetricMeta> {
        self.metadata.lock().expect("metadata lock").clone()
    }

    /// Adds what scrapes said about apps' metrics (tandem's own entries stay as they are).
    pub(crate) fn add_metadata(&self, found: BTreeMap<String, MetricMeta>) {
        let mut metadata = self.metadata.lock().expect("metadata lock");
        for (name, meta) in found {
            if !name.starts_with("tandem_") {
                metadata.insert(name, meta);
            }
        }
    }

    /// Collects every `interval` until the process ends. Samples are stamped with the tick
    /// they were meant for (a point of the interval's grid), not the moment the read ended:
    /// timestamps on a regular grid cost almost nothing to store, jittered ones 4-5 bits
    /// each. A series that was collected in one round and is missing from the next (a
    /// stopped instance) gets Prometheus's staleness marker, so it leaves instant queries at
    /// once instead of lingering for the 5-minute lookback.
    pub(crate) fn start_collecting(
        self: &Arc<Self>,
        env: &str,
        data_dir: &Path,
        runtime: Arc<Runtime>,
        traffic: Arc<TrafficMetrics>,
    ) {
        let monitor = self.clone();
        let collector = Arc::new(Collector::new(env, data_dir));
        let env = env.to_string();
        tokio::spawn(async move {
            let mut logged_error = false;
            let mut last_t = i64::MIN;
            let mut previous: Arc<HashSet<Labels>> = Arc::new(HashSet::new());
            loop {
                let interval_ms = (monitor.settings().interval.0.as_millis() as i64).max(1);
                let now = tandem_api::now_ms();
                let mut t = (now.div_euclid(interval_ms) + 1) * interval_ms;
                if t <= last_t {
                    t = last_t + interval_ms;
                }
                tokio::time::sleep(Duration::from_millis((t - now).max(0) as u64)).await;
                last_t = t;
                let monitor = monitor.clone();
                let collector = collector.clone();
                let runtime = runtime.clone();
                let traffic = traffic.clone();
                let env = env.clone();
                let before = previous.clone();
                let outcome = tokio::task::spawn_blocking(move || {
                    let mut batch = collector.collect(&runtime, t);
                    batch.extend(traffic.samples(&env, t));
                    let seen: HashSet<Labels> = batch.iter().map(|(l, _)| l.clone()).collect();
                    mark_stale(&before, &seen, t, &mut batch);
                    (monitor.store(&batch), seen)
                })
                .await;
                match outcome {
                    Ok((stored, seen)) => {
                        previous = Arc::new(seen);
                        match stored {
                            Ok(summary) if !summary.rejected.is_empty() && !logged_error => {
                                tracing::warn!(
                                    "time-series store refused {} sample(s), e.g. {}",
                                    summary.rejected.len(),
                                    summary.rejected[0]
                                );
                                logged_error = true;
                            }
                            Err(e) if !logged_error => {
                                tracing::error!("cannot store collected samples: {e}");
                                logged_error = true;
                            }
                            _ => {}
                        }
                    }
                    Err(e) => tracing::error!("the collector stopped unexpectedly: {e}"),
                }
            }
        });
    }
}

/// Canary analysis queries (a canary `release`'s `analysis`) are instant queries over this
/// store at the current time.
impl tandem_engine::analysis::AnalysisQuerier for Monitor {
    fn instant(&self, query: &str) -> Result<Vec<f64>, String> {
        let value = self
            .engine
            .instant(self.db.as_ref(), query, tandem_api::now_ms())
            .map_err(|e| e.to_string())?;
        match value {
            tandem_promql::Value::Scalar { v, .. } => Ok(vec![v]),
            tandem_promql::Value::Vector(samples) => {
                Ok(samples.into_iter().map(|(_, sample)| sample.v).collect())
            }
            other => Err(format!(
                "the query gives a {}, not a number: use an instant vector or a scalar",
                other.type_name()
            )),
        }
    }
}

/// Appends a staleness marker at `t` for every series of `before` missing from `seen`.
pub(crate) fn mark_stale(
    before: &HashSet<Labels>,
    seen: &HashSet<Labels>,
    t: i64,
    batch: &mut Vec<(Labels, Sample)>,
) {
    for gone in before.difference(seen) {
        batch.push((
            gone.clone(),
            Sample {
                t,
                v: tandem_tsdb::stale_nan(),
            },
        ));
    }
}
