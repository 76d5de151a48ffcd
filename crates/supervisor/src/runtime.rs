//! The instance lifecycle: one tokio task per instance that launches its shim, checks its
//! health, restarts it by its policy with exponential backoff and jitter, marks a crash loop,
//! and stops it gracefully (signal to the process group, SIGKILL after the grace).
//!
//! State lives in two places on purpose: the shim's files (`launch.json`, `child.json`,
//! `exit.json`) say what the process did, and `meta.json` says what the runtime decided
//! (restart count, health settings, whether the instance should run). Both are on disk, so a
//! new server re-attaches to running instances ([`Runtime::reattach_all`]) and carries on
//! where the old one stopped, including exits that happened while no server was watching.

use crate::cgroup::CgroupDriver;
use crate::health;
use crate::launch::{
    ChildRecord, ExitRecord, InstanceDir, LaunchSpec, LogSettings, ResolvedLimits,
    write_json_atomic,
};
use crate::procfs;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tandem_api::{Event, EventKind, EventSink, ExitInfo, InstanceState, InstanceStatus, now_ms};
use tandem_spec::{Health, HealthCheck, RestartPolicy, Stop};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::time::Instant;

/// Crashes within [`CRASH_LOOP_WINDOW`] that mark an instance as crash-looping.
pub const CRASH_LOOP_LIMIT: usize = 5;
/// The window in which [`CRASH_LOOP_LIMIT`] crashes make a crash loop.
pub const CRASH_LOOP_WINDOW: Duration = Duration::from_secs(120);
/// First restart delay; doubles with each quick crash up to [`BACKOFF_MAX`].
pub const BACKOFF_BASE: Duration = Duration::from_millis(250);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A process that ran at least this long resets the backoff.
pub const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(30);
/// How often a new instance is checked until its first passing check.
const STARTUP_POLL: Duration = Duration::from_millis(100);
/// How long the shim may take to report that the process runs.
const SHIM_START_TIMEOUT: Duration = Duration::from_secs(15);

/// Settings of one environment's runtime.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    pub env: String,
    /// `<data>/instances`: one folder per instance.
    pub instances_dir: PathBuf,
    /// `<data>/logs`: `<service>/<instance>.log`.
    pub logs_dir: PathBuf,
    /// The program started as `SHIM_EXE __shim DIR` (the tandem binary itself).
    pub shim_exe: PathBuf,
    /// cgroup path prefix, e.g. `tandem/<env>-<hash of data dir>`.
    pub cgroup_prefix: String,
    pub log_max_bytes: u64,
    pub log_max_files: u32,
}

/// What to run: one replica of one service, fully resolved.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstanceRequest {
    pub service: String,
    pub revision: u64,
    pub index: u32,
    /// Identifies the definition (everything but the replica count); the engine compares it
    /// to decide whether a running instance still matches the system.
    pub template_hash: String,
    /// Command line, `${VAR}` not yet interpolated.
    pub run: String,
    pub cwd: PathBuf,
    /// Declared and injected variables (`<DEP>_URL`, ...); `PORT` is added here.
    pub env: BTreeMap<String, String>,
    pub health: Option<Health>,
    pub limits: ResolvedLimits,
    pub stop: Stop,
    pub restart: RestartPolicy,
}

/// The runtime's own record of an instance, beside the shim's files.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct InstanceMeta {
    request: InstanceRequest,
    id: String,
    port: u16,
    restarts: u32,
    /// False once tandem decided to stop it: a server that re-attaches finishes the stop.
    should_run: bool,
    /// Set when it stays down (crash loop, exited under its policy).
    #[serde(default)]
    parked_reason: Option<String>,
    #[serde(default)]
    parked_state: Option<InstanceState>,
    #[serde(default)]
    last_exit: Option<ExitInfo>,
    #[serde(default)]
    crash_times_ms: Vec<i64>,
}

/// Why an instance could not be started or did not become ready.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{0}")]
    Launch(String),
    #[error("instance '{0}' is not known to this server")]
    UnknownInstance(String),
    #[error("{0}")]
    NotReady(String),
}

enum Control {
    Stop(oneshot::Sender<()>),
    Restart,
}

struct InstanceHandle {
    service: String,
    template_hash: String,
    index: u32,
    status: watch::Receiver<InstanceStatus>,
    control: mpsc::UnboundedSender<Control>,
    done: watch::Receiver<bool>,
}

/// An instance [`Runtime::reattach_all`] found on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reattached {
    pub id: String,
    /// Its process still ran under its shim. False when it ended while no server watched
    /// (its exit is handled by its restart policy now), or when it was being stopped.
    pub was_running: bool,
}

/// What an instance uses now (absent while no process runs).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    /// Cumulative CPU seconds (the cgroup's when there is one, else the process group's).
    pub cpu_seconds: Option<f64>,
    pub rss_bytes: Option<u64>,
    /// The cgroup's memory usage (page cache included), what the limit is held against.
    pub cgroup_memory_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    pub oom_kills: Option<u64>,
}

/// Sampled CPU of an instance: (when, cumulative cpu seconds).
type CpuSample = (Instant, f64);

/// Runs and watches the instances of one environment.
pub struct Runtime {
    config: RuntimeConfig,
    cgroups: CgroupDriver,
    sink: Arc<dyn EventSink>,
    instances: Mutex<BTreeMap<String, InstanceHandle>>,
    changed: Arc<Notify>,
    cpu_samples: Mutex<BTreeMap<String, CpuSample>>,
    cpu_now: Mutex<BTreeMap<String, f64>>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("config", &self.config)
            .finish()
    }
}

// === impl Runtime ===

impl Runtime {
    pub fn new(config: RuntimeConfig, sink: Arc<dyn EventSink>) -> Arc<Runtime> {
        Self::with_cgroups(config, CgroupDriver::detect(), sink)
    }

    pub fn with_cgroups(
        config: RuntimeConfig,
        cgroups: CgroupDriver,
        sink: Arc<dyn EventSink>,
    ) -> Arc<Runtime> {
        Arc::new(Runtime {
            config,
            cgroups,
            sink,
            instances: Mutex::new(BTreeMap::new()),
            changed: Arc::new(Notify::new()),
            cpu_samples: Mutex::new(BTreeMap::new()),
            cpu_now: Mutex::new(BTreeMap::new()),
        })
    }

    /// Why limits are not enforced on this machine, if they are not.
    pub fn limits_warning(&self) -> Option<String> {
        match &self.cgroups {
            CgroupDriver::Unavailable { reason } => Some(format!(
                "resource limits are not enforced on this machine: {reason}; services run without memory, CPU and pids limits"
            )),
            _ => None,
        }
    }

    /// Removes the environment's parent cgroup once its instances are gone (after `down`).
    pub fn remove_cgroup_root(&self) {
        if let Some(cg) = self.cgroups.open(&self.config.cgroup_prefix)
            && cg.pids().is_empty()
            && let Err(e) = cg.remove()
        {
            tracing::debug!("cannot remove cgroup {}: {e}", self.config.cgroup_prefix);
        }
    }

    pub fn cgroup_driver(&self) -> &CgroupDriver {
        &self.cgroups
    }

    /// Notified whenever any instance changes state.
    pub fn changed(&self) -> Arc<Notify> {
        self.changed.clone()
    }

    /// Starts a new instance and returns its id at once; [`Runtime::wait_ready`] waits for it.
    pub fn start(self: &Arc<Self>, request: InstanceRequest) -> Result<String, RuntimeError> {
        let nonce = format!("{:04x}", fastrand::u16(..));
        let id = format!("{}-{}-{nonce}", request.service, request.index);
        let port = free_port().map_err(|e| {
            RuntimeError::Launch(format!("no free port for {}: {e}", request.service))
        })?;
        let dir = InstanceDir(self.config.instances_dir.join(&id));
        std::fs::create_dir_all(dir.path()).map_err(|e| {
            RuntimeError::Launch(format!("cannot create {}: {e}", dir.path().display()))
        })?;
        let meta = InstanceMeta {
            request,
            id: id.clone(),
            port,
            restarts: 0,
            should_run: true,
            parked_reason: None,
            parked_state: None,
            last_exit: None,
            crash_times_ms: Vec::new(),
        };
        write_meta(&dir, &meta)
            .map_err(|e| RuntimeError::Launch(format!("cannot write instance record: {e}")))?;
        self.spawn_task(dir, meta, None);
        Ok(id)
    }

    /// Re-attaches to every instance recorded on disk (after a server restart). Instances that
    /// were being stopped are stopped; those whose process ended meanwhile are handled by
    /// their restart policy. Returns the instances now supervised, each with whether its
    /// process was still running.
    pub fn reattach_all(self: &Arc<Self>) -> Vec<Reattached> {
        let Ok(entries) = std::fs::read_dir(&self.config.instances_dir) else {
            return Vec::new();
        };
        let mut ids = Vec::new();
        for entry in entries.flatten() {
            let dir = InstanceDir(entry.path());
            let Ok(meta) = read_meta(&dir) else {
                tracing::warn!(dir = %dir.path().display(), "skipping an instance folder without a readable meta.json");
                continue;
            };
            if self
                .instances
                .lock()
                .expect("instances lock")
                .contains_key(&meta.id)
            {
                continue;
            }
            let attach = attach_existing(&dir);
            ids.push(Reattached {
                id: meta.id.clone(),
                was_running: meta.should_run && matches!(attach, Attach::Running { .. }),
            });
            self.spawn_task(dir, meta, Some(attach));
        }
        ids
    }

    /// Waits until the instance has passed its health check once (or has started, without a
    /// check). Fails as soon as it exits, crash-loops, or fails its check `failures` times
    /// after the grace, with a message that says why.
    pub async fn wait_ready(&self, id: &str) -> Result<(), RuntimeError> {
        let mut status = self.status_receiver(id)?;
        loop {
            {
                let s = status.borrow_and_update();
                match s.state {
                    InstanceState::Healthy => return Ok(()),
                    InstanceState::Unhealthy => {
                        return Err(RuntimeError::NotReady(format!(
                            "health check of {} never passed: {}",
                            s.id,
                            s.health_error.clone().unwrap_or_default()
                        )));
                    }
                    InstanceState::Backoff
                    | InstanceState::Exited
                    | InstanceState::CrashLoop
                    | InstanceState::Stopped => {
                        let why = s
                            .reason
                            .clone()
                            .or_else(|| s.last_exit.as_ref().map(|e| e.description.clone()))
                            .unwrap_or_else(|| s.state.as_str().to_string());
                        return Err(RuntimeError::NotReady(format!(
                            "{} stopped before it became healthy: {why}",
                            s.id
                        )));
                    }
                    InstanceState::Starting | InstanceState::Running | InstanceState::Stopping => {}
                }
            }
            if status.changed().await.is_err() {
                return Err(RuntimeError::NotReady(format!("{id} is gone")));
            }
        }
    }

    /// Stops the instance gracefully and forgets it; returns once no process is left.
    pub async fn stop(&self, id: &str) -> Result<(), RuntimeError> {
        let (control, mut done) = {
            let map = self.instances.lock().expect("instances lock");
            let h = map
                .get(id)
                .ok_or_else(|| RuntimeError::UnknownInstance(id.to_string()))?;
            (h.control.clone(), h.done.clone())
        };
        let (tx, rx) = oneshot::channel();
        if control.send(Control::Stop(tx)).is_ok() {
            let _ = rx.await;
        }
        let _ = done.wait_for(|d| *d).await;
        self.instances.lock().expect("instances lock").remove(id);
        self.changed.notify_waiters();
        Ok(())
    }

    /// Stops and starts the instance again, clearing a crash loop or an exit.
    pub fn restart(&self, id: &str) -> Result<(), RuntimeError> {
        let map = self.instances.lock().expect("instances lock");
        let h = map
            .get(id)
            .ok_or_else(|| RuntimeError::UnknownInstance(id.to_string()))?;
        let _ = h.control.send(Control::Restart);
        Ok(())
    }

    /// Every supervised instance, with memory and CPU now.
    pub fn list(&self) -> Vec<InstanceStatus> {
        let map = self.instances.lock().expect("instances lock");
        let cpu = self.cpu_now.lock().expect("cpu lock");
        map.values()
            .map(|h| {
                let mut s = h.status.borrow().clone();
                if s.state.is_up() {
                    if let Some(pid) = s.pid {
                        let (mem, _) = self.memory_of(&s.id, pid);
                        s.memory_bytes = mem;
                    }
                    s.cpu_cores = cpu.get(&s.id).copied();
                }
                s
            })
            .collect()
    }

    /// Ids of the instances of `service`, with the definition each runs.
    pub fn instances_of(&self, service: &str) -> Vec<(String, u32, String)> {
        let map = self.instances.lock().expect("instances lock");
        map.iter()
            .filter(|(_, h)| h.service == service)
            .map(|(id, h)| (id.clone(), h.index, h.template_hash.clone()))
            .collect()
    }

    /// Every service that has instances.
    pub fn services(&self) -> Vec<String> {
        let map = self.instances.lock().expect("instances lock");
        let mut names: Vec<String> = map.values().map(|h| h.service.clone()).collect();
        names.sort();
        names.dedup();
        names
    }

    pub fn status(&self, id: &str) -> Option<InstanceStatus> {
        let map = self.instances.lock().expect("instances lock");
        map.get(id).map(|h| h.status.borrow().clone())
    }

    pub fn logs_dir(&self) -> &Path {
        &self.config.logs_dir
    }

    /// Where a one-off task of `service` named `name` (a deploy hook) writes its output:
    /// beside the service's instance logs, rotated like them, so `tandem logs` shows it.
    pub fn task_log(&self, service: &str, name: &str) -> crate::launch::LogSettings {
        crate::launch::LogSettings {
            path: self
                .config
                .logs_dir
                .join(service)
                .join(format!("{name}.log")),
            max_bytes: self.config.log_max_bytes,
            max_files: self.config.log_max_files,
        }
    }

    /// Resource use of every instance whose process runs, for the metrics collector: one
    /// walk of `/proc` for all of them, plus each one's cgroup files.
    pub fn usage_all(&self) -> Vec<(InstanceStatus, Usage)> {
        let statuses: Vec<InstanceStatus> = {
            let map = self.instances.lock().expect("instances lock");
            map.values().map(|h| h.status.borrow().clone()).collect()
        };
        let groups = procfs::all_group_stats();
        let all: Vec<(InstanceStatus, Usage)> = statuses
            .into_iter()
            .map(|s| {
                let mut usage = Usage::default();
                if let Some(pid) = s.pid.filter(|_| s.state.is_up()) {
                    let group = groups.get(&pid).copied().unwrap_or_default();
                    usage.rss_bytes = Some(group.rss_bytes);
                    usage.open_fds = Some(group.open_fds);
                    usage.cpu_seconds = Some(group.cpu_seconds);
                    if let Some(cg) = self.cgroups.open(&self.cgroup_group(&s.id)) {
                        usage.cgroup_memory_bytes = cg.memory_usage_bytes();
                        if let Some(c) = cg.cpu_usage_seconds() {
                            usage.cpu_seconds = Some(c);
                        }
                        usage.oom_kills = cg.oom_kill_count();
                    }
                }
                (s, usage)
            })
            .collect();
        let readings: Vec<(String, f64)> = all
            .iter()
            .filter_map(|(s, u)| u.cpu_seconds.map(|c| (s.id.clone(), c)))
            .collect();
        self.record_cpu(&readings);
        all
    }

    /// Turns cumulative CPU seconds into the CPU use `list` shows (cores, averaged since the
    /// previous reading); `usage_all` feeds it on every collection round.
    fn record_cpu(&self, readings: &[(String, f64)]) {
        let now = Instant::now();
        let mut samples = self.cpu_samples.lock().expect("cpu lock");
        let mut current = self.cpu_now.lock().expect("cpu lock");
        samples.retain(|id, _| readings.iter().any(|(r, _)| r == id));
        current.retain(|id, _| readings.iter().any(|(r, _)| r == id));
        for (id, seconds) in readings {
            if let Some((then, before)) = samples.insert(id.clone(), (now, *seconds)) {
                let elapsed = now.duration_since(then).as_secs_f64();
                if elapsed > 0.0 && *seconds >= before {
                    current.insert(id.clone(), (seconds - before) / elapsed);
                }
            }
        }
    }

    fn cgroup_group(&self, id: &str) -> String {
        format!("{}/{id}", self.config.cgroup_prefix)
    }

    fn memory_of(&self, id: &str, pid: i32) -> (Option<u64>, Option<u64>) {
        if let Some(cg) = self.cgroups.open(&self.cgroup_group(id))
            && let Some(usage) = cg.memory_usage_bytes()
        {
            return (Some(usage), cg.memory_limit_bytes());
        }
        (Some(procfs::process_group_stats(pid).rss_bytes), None)
    }

    fn status_receiver(&self, id: &str) -> Result<watch::Receiver<InstanceStatus>, RuntimeError> {
        let map = self.instances.lock().expect("instances lock");
        map.get(id)
            .map(|h| h.status.clone())
            .ok_or_else(|| RuntimeError::UnknownInstance(id.to_string()))
    }

    fn spawn_task(self: &Arc<Self>, dir: InstanceDir, meta: InstanceMeta, attach: Option<Attach>) {
        let initial = InstanceStatus {
            id: meta.id.clone(),
            service: meta.request.service.clone(),
            index: meta.request.index,
            revision: meta.request.revision,
            state: InstanceState::Starting,
            port: meta.port,
            pid: None,
            started_ms: None,
            restarts: meta.restarts,
            health_error: None,
            reason: None,
            last_exit: meta.last_exit.clone(),
            memory_bytes: None,
            memory_limit_bytes: meta.request.limits.memory_bytes,
            cpu_cores: None,
            cpu_limit_cores: meta.request.limits.cpu_cores,
            traffic_pct: None,
            warm_until_ms: None,
        };
        let (status_tx, status_rx) = watch::channel(initial);
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let (done_tx, done_rx) = watch::channel(false);
        self.instances.lock().expect("instances lock").insert(
            meta.id.clone(),
            InstanceHandle {
                service: meta.request.service.clone(),
                template_hash: meta.request.template_hash.clone(),
                index: meta.request.index,
                status: status_rx,
                control: control_tx,
                done: done_rx,
            },
        );
        let supervisor = InstanceSupervisor {
            runtime: self.clone(),
            dir,
            meta,
            status: status_tx,
            control: control_rx,
        };
        tokio::spawn(async move {
            supervisor.run(attach).await;
            let _ = done_tx.send(true);
        });
    }

    fn emit(&self, kind: EventKind, meta: &InstanceMeta, message: String) {
        self.sink.emit(Event {
            time_ms: now_ms(),
            env: self.config.env.clone(),
            kind,
            service: Some(meta.request.service.clone()),
            instance: Some(meta.id.clone()),
            revision: Some(meta.request.revision),
            who: None,
            message,
        });
    }
}

/// What a new server finds for an instance folder.
enum Attach {
    /// The shim (and so the process) still runs.
    Running { child: ChildRecord },
    /// The process ended while no server watched; its exit is recorded.
    Exited { exit: ExitRecord },
    /// The shim is gone without a record (killed); the process may be orphaned.
    Lost { child: Option<ChildRecord> },
}

fn attach_existing(dir: &InstanceDir) -> Attach {
    let child = dir.read_child().ok().flatten();
    let exit = dir.read_exit().ok().flatten();
    if let Some(exit) = exit {
        return Attach::Exited { exit };
    }
    match child {
        Some(c) if procfs::is_same_process(c.shim_pid, c.shim_start_ticks) => {
            Attach::Running { child: c }
        }
        other => Attach::Lost { child: other },
    }
}

/// How a process run ended, as the supervisor sees it.
enum RunEnd {
    Exited(ExitRecord),
    Stopped,
    Restart,
}

/// The task behind one instance.
struct InstanceSupervisor {
    runtime: Arc<Runtime>,
    dir: InstanceDir,
    meta: InstanceMeta,
    status: watch::Sender<InstanceStatus>,
    control: mpsc::UnboundedReceiver<Control>,
}

type ShimExit = Pin<Box<dyn Future<Output = ()> + Send>>;

// === impl InstanceSupervisor ===

impl InstanceSupervisor {
    async fn run(mut self, mut attach: Option<Attach>) {
        if !self.meta.should_run {
            // A stop was under way when the previous server went away: finish it.
            if let Some(Attach::Running { child }) = attach.take() {
                let exit = wait_pid_exit(child.shim_pid);
                self.kill_gracefully(&child, exit).await;
            }
            self.finish_stopped();
            return;
        }
        if let Some(state) = self.meta.parked_state
            && !matches!(attach, Some(Attach::Running { .. }))
        {
            let reason = self.meta.parked_reason.clone();
            if self.park(state, reason).await {
                return;
            }
            attach = None;
        }
        let mut quick_crashes: u32 = 0;
        loop {
            let (end, ran_for) = match attach.take() {
                Some(Attach::Running { child }) => {
                    self.runtime.emit(
                        EventKind::InstanceReattached,
                        &self.meta,
                        format!("re-attached to {} (pid {})", self.meta.id, child.pid),
                    );
                    let exit = wait_pid_exit(child.shim_pid);
                    self.supervise_process(child, exit, true).await
                }
                Some(Attach::Exited { exit, .. }) => (RunEnd::Exited(exit), Duration::ZERO),
                Some(Attach::Lost { child }) => {
                    if let Some(c) = child
                        && procfs::is_same_process(c.pid, c.start_ticks)
                    {
                        // SAFETY: kill(2) with a negative pid signals the process group.
                        unsafe { libc::kill(-c.pid, libc::SIGKILL) };
                    }
                    let exit = ExitRecord {
                        code: None,
                        signal: None,
                        oom_killed: false,
                        spawn_error: Some(
                            "its shim ended without recording an exit (was it killed?)".into(),
                        ),
                        exited_ms: now_ms(),
                    };
                    (RunEnd::Exited(exit), Duration::ZERO)
                }
                None => match self.launch().await {
                    Ok((child, exit)) => self.supervise_process(child, exit, false).await,
                    Err(exit) => (RunEnd::Exited(exit), Duration::ZERO),
                },
            };
            match end {
                RunEnd::Stopped => {
                    self.finish_stopped();
                    return;
                }
                RunEnd::Restart => {
                    quick_crashes = 0;
                    self.meta.crash_times_ms.clear();
                    self.count_restart();
                    continue;
                }
                RunEnd::Exited(exit) => {
                    let info = describe_exit(&exit, &self.meta.request.limits);
                    let failed = exit.code != Some(0);
                    let kind = if exit.oom_killed {
                        EventKind::InstanceOomKilled
                    } else if failed {
                        EventKind::InstanceCrashed
                    } else {
                        EventKind::InstanceExited
                    };
                    self.runtime.emit(
                        kind,
                        &self.meta,
                        format!("{}: {}", self.meta.id, info.description),
                    );
                    self.meta.last_exit = Some(info.clone());
                    self.status.send_modify(|s| {
                        s.last_exit = Some(info.clone());
                        s.pid = None;
                    });
                    let restart = match self.meta.request.restart {
                        RestartPolicy::Always => true,
                        RestartPolicy::OnFailure => failed,
                        RestartPolicy::Never => false,
                    };
                    if !restart {
                        let reason = format!(
                            "{} and restart = \"{}\" keeps it stopped; `tandem restart {}` starts it",
                            info.description,
                            restart_policy_name(self.meta.request.restart),
                            self.meta.request.service
                        );
                        if self.park(InstanceState::Exited, Some(reason)).await {
                            return;
                        }
                        quick_crashes = 0;
                        continue;
                    }
                    let now = now_ms();
                    self.meta.crash_times_ms.push(now);
                    let window_start = now - CRASH_LOOP_WINDOW.as_millis() as i64;
                    self.meta.crash_times_ms.retain(|t| *t >= window_start);
                    if self.meta.crash_times_ms.len() >= CRASH_LOOP_LIMIT {
                        let reason = format!(
                            "crashed {} times within {}s (last: {}); restarts stopped until `tandem restart {}`",
                            self.meta.crash_times_ms.len(),
                            CRASH_LOOP_WINDOW.as_secs(),
                            info.description,
                            self.meta.request.service
                        );
                        self.runtime.emit(
                            EventKind::CrashLoop,
                            &self.meta,
                            format!("{}: {reason}", self.meta.id),
                        );
                        if self.park(InstanceState::CrashLoop, Some(reason)).await {
                            return;
                        }
                        quick_crashes = 0;
                        continue;
                    }
                    if ran_for >= BACKOFF_RESET_AFTER {
                        quick_crashes = 0;
                    }
                    quick_crashes += 1;
                    let delay = backoff_delay(quick_crashes);
                    self.status.send_modify(|s| {
                        s.state = InstanceState::Backoff;
                        s.reason = Some(format!(
                            "{}; restarting in {} ms",
                            info.description,
                            delay.as_millis()
                        ));
                    });
                    self.runtime.changed.notify_waiters();
                    self.runtime.emit(
                        EventKind::InstanceRestarting,
                        &self.meta,
                        format!("restarting {} in {} ms", self.meta.id, delay.as_millis()),
                    );
                    let _ = write_meta(&self.dir, &self.meta);
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        msg = self.control.recv() => match msg {
                            Some(Control::Stop(reply)) => {
                                self.finish_stopped();
                                let _ = reply.send(());
                                return;
                            }
                            Some(Control::Restart) => quick_crashes = 0,
                            None => return,
                        }
                    }
                    self.count_restart();
                }
            }
        }
    }

    /// Holds the instance down (exited or crash loop) until a stop or a restart. Returns
    /// true when it was stopped (the task ends).
    async fn park(&mut self, state: InstanceState, reason: Option<String>) -> bool {
        self.meta.parked_state = Some(state);
        self.meta.parked_reason = reason.clone();
        let _ = write_meta(&self.dir, &self.meta);
        self.status.send_modify(|s| {
            s.state = state;
            s.reason = reason;
            s.pid = None;
        });
        self.runtime.changed.notify_waiters();
        match self.control.recv().await {
            Some(Control::Stop(reply)) => {
                self.finish_stopped();
                let _ = reply.send(());
                true
            }
            Some(Control::Restart) => {
                self.meta.parked_state = None;
                self.meta.parked_reason = None;
                self.meta.crash_times_ms.clear();
                self.count_restart();
                false
            }
            None => true,
        }
    }

    fn count_restart(&mut self) {
        self.meta.restarts += 1;
        let _ = write_meta(&self.dir, &self.meta);
        let restarts = self.meta.restarts;
        self.status.send_modify(|s| s.restarts = restarts);
    }

    /// Launches a shim and waits until it reports the process running (or failing to start).
    async fn launch(&mut self) -> Result<(ChildRecord, ShimExit), ExitRecord> {
        let spawn_error = |text: String| ExitRecord {
            code: None,
            signal: None,
            oom_killed: false,
            spawn_error: Some(text),
            exited_ms: now_ms(),
        };
        self.status.send_modify(|s| {
            s.state = InstanceState::Starting;
            s.reason = None;
            s.health_error = None;
        });
        self.runtime.changed.notify_waiters();
        let spec = self.launch_spec().map_err(spawn_error)?;
        let _ = std::fs::remove_file(self.dir.child_file());
        let _ = std::fs::remove_file(self.dir.exit_file());
        write_json_atomic(&self.dir.launch_file(), &spec)
            .map_err(|e| spawn_error(format!("cannot write launch.json: {e}")))?;
        let mut command = tokio::process::Command::new(&self.runtime.config.shim_exe);
        command
            .arg("__shim")
            .arg(self.dir.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(false);
        // SAFETY: setsid(2) is async-signal-safe; it puts the shim in its own session so that
        // neither a terminal's Ctrl-C nor the server's death reaches it.
        unsafe {
            command.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let mut shim = command
            .spawn()
            .map_err(|e| spawn_error(format!("cannot start the shim: {e}")))?;
        let deadline = Instant::now() + SHIM_START_TIMEOUT;
        loop {
            if let Ok(Some(child)) = self.dir.read_child() {
                let exit: ShimExit = Box::pin(async move {
                    let _ = shim.wait().await;
                });
                return Ok((child, exit));
            }
            if let Ok(Some(exit)) = self.dir.read_exit() {
                let _ = shim.wait().await;
                return Err(exit);
            }
            if let Ok(Some(status)) = shim.try_wait() {
                // Re-read: the shim may have written its record just before exiting.
                if let Ok(Some(exit)) = self.dir.read_exit() {
                    return Err(exit);
                }
                return Err(spawn_error(format!(
                    "the shim exited ({status}) before starting the process; see {}",
                    self.dir.path().join("shim.log").display()
                )));
            }
            if Instant::now() >= deadline {
                let _ = shim.start_kill();
                return Err(spawn_error(format!(
                    "the shim did not start the process within {}s",
                    SHIM_START_TIMEOUT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn launch_spec(&self) -> Result<LaunchSpec, String> {
        let req = &self.meta.request;
        let mut env = req.env.clone();
        env.insert("PORT".into(), self.meta.port.to_string());
        let lookup = |name: &str| env.get(name).cloned().or_else(|| std::env::var(name).ok());
        let line = tandem_spec::interpolate(&req.run, &lookup)
            .map_err(|e| format!("run of service '{}': {e}", req.service))?;
        let argv = shlex::split(&line)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                // The line as written, not as interpolated: a value may be a secret.
                format!(
                    "run of service '{}' is not a valid command line once interpolated: {}",
                    req.service, req.run
                )
            })?;
        let mut env_out = BTreeMap::new();
        for (k, v) in &env {
            let value = tandem_spec::interpolate(v, &lookup)
                .map_err(|e| format!("env.{k} of service '{}': {e}", req.service))?;
            env_out.insert(k.clone(), value);
        }
        let cgroup = match self.runtime.cgroups {
            CgroupDriver::Unavailable { .. } => None,
            _ => Some(self.runtime.cgroup_group(&self.meta.id)),
        };
        Ok(LaunchSpec {
            instance: self.meta.id.clone(),
            service: req.service.clone(),
            revision: req.revision,
            index: req.index,
            port: self.meta.port,
            argv,
            cwd: req.cwd.clone(),
            env: env_out,
            cgroup,
            limits: req.limits.clone(),
            log: LogSettings {
                path: self
                    .runtime
                    .config
                    .logs_dir
                    .join(&req.service)
                    .join(format!("{}.log", self.meta.id)),
                max_bytes: self.runtime.config.log_max_bytes,
                max_files: self.runtime.config.log_max_files,
            },
        })
    }

    /// Watches a running process: health checks on their interval, control messages, exit.
    async fn supervise_process(
        &mut self,
        child: ChildRecord,
        mut exit: ShimExit,
        reattached: bool,
    ) -> (RunEnd, Duration) {
        let started = Instant::now();
        let health = self.meta.request.health.clone();
        self.status.send_modify(|s| {
            s.pid = Some(child.pid);
            s.started_ms = Some(child.started_ms);
            s.state = if health.is_some() {
                InstanceState::Running
            } else {
                InstanceState::Healthy
            };
            s.reason = None;
        });
        self.runtime.changed.notify_waiters();
        if !reattached {
            self.runtime.emit(
                EventKind::InstanceStarted,
                &self.meta,
                format!(
                    "started {} (pid {}, port {})",
                    self.meta.id, child.pid, self.meta.port
                ),
            );
        }
        let mut consecutive_failures: u32 = 0;
        // Until the first pass, check every STARTUP_POLL so a fresh instance is seen healthy
        // as soon as it is; failures still count only once per `interval`.
        let mut passed_once = false;
        let mut last_counted_failure: Option<Instant> = None;
        let mut next_check = Instant::now();
        let grace_until = Instant::now() + health.as_ref().map(|h| h.grace.0).unwrap_or_default();
        loop {
            tokio::select! {
                _ = &mut exit => {
                    let record = self.dir.read_exit().ok().flatten().unwrap_or(ExitRecord {
                        code: None,
                        signal: None,
                        oom_killed: false,
                        spawn_error: Some("its shim ended without recording an exit (was it killed?)".into()),
                        exited_ms: now_ms(),
                    });
                    return (RunEnd::Exited(record), started.elapsed());
                }
                msg = self.control.recv() => match msg {
                    Some(Control::Stop(reply)) => {
                        self.kill_gracefully(&child, exit).await;
                        let _ = reply.send(());
                        return (RunEnd::Stopped, started.elapsed());
                    }
                    Some(Control::Restart) => {
                        self.kill_gracefully(&child, exit).await;
                        return (RunEnd::Restart, started.elapsed());
                    }
                    None => return (RunEnd::Stopped, started.elapsed()),
                },
                _ = tokio::time::sleep_until(next_check), if health.is_some() => {
                    let h = health.as_ref().expect("guarded by if");
                    let period = if passed_once { h.interval.0 } else { h.interval.0.min(STARTUP_POLL) };
                    next_check = Instant::now() + period;
                    let result = self.check_once(h).await;
                    match result {
                        Ok(()) => {
                            consecutive_failures = 0;
                            passed_once = true;
                            last_counted_failure = None;
                            let was = self.status.borrow().state;
                            if was != InstanceState::Healthy {
                                self.status.send_modify(|s| {
                                    s.state = InstanceState::Healthy;
                                    s.health_error = None;
                                });
                                self.runtime.changed.notify_waiters();
                                self.runtime.emit(EventKind::InstanceHealthy, &self.meta, format!("{} is healthy", self.meta.id));
                            }
                        }
                        Err(error) => {
                            let now = Instant::now();
                            let counts = now >= grace_until
                                && last_counted_failure.is_none_or(|t| now.duration_since(t) + STARTUP_POLL / 2 >= h.interval.0);
                            if counts {
                                consecutive_failures += 1;
                                last_counted_failure = Some(now);
                            }
                            let unhealthy = consecutive_failures >= h.failures.max(1);
                            let was = self.status.borrow().state;
                            self.status.send_modify(|s| {
                                s.health_error = Some(error.clone());
                                if unhealthy {
                                    s.state = InstanceState::Unhealthy;
                                }
                            });
                            if unhealthy && was != InstanceState::Unhealthy {
                                self.runtime.changed.notify_waiters();
                                self.runtime.emit(
                                    EventKind::InstanceUnhealthy,
                                    &self.meta,
                                    format!("{} is unhealthy after {} failed checks: {error}", self.meta.id, consecutive_failures),
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    async fn check_once(&self, h: &Health) -> Result<(), String> {
        let env = self.meta.request.env.clone();
        let check: &HealthCheck = &h.check;
        match tokio::time::timeout(
            h.timeout.0 + Duration::from_millis(100),
            health::check(
                check,
                self.meta.port,
                h.timeout.0,
                &env,
                &self.meta.request.cwd,
            ),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {}", h.timeout)),
        }
    }

    /// Sends the stop signal to the process group, then SIGKILL after the grace.
    async fn kill_gracefully(&mut self, child: &ChildRecord, mut exit: ShimExit) {
        self.meta.should_run = false;
        let _ = write_meta(&self.dir, &self.meta);
        self.status
            .send_modify(|s| s.state = InstanceState::Stopping);
        self.runtime.changed.notify_waiters();
        let signal = signal_number(&self.meta.request.stop.signal).unwrap_or(libc::SIGTERM);
        if procfs::is_same_process(child.pid, child.start_ticks) {
            // SAFETY: kill(2) with a negative pid signals the instance's process group.
            unsafe { libc::kill(-child.pid, signal) };
        }
        let grace = self.meta.request.stop.grace.0;
        if tokio::time::timeout(grace, &mut exit).await.is_err() {
            tracing::warn!(instance = %self.meta.id, "did not stop within {:?}; sending SIGKILL", grace);
            // SAFETY: as above, the whole process group.
            unsafe { libc::kill(-child.pid, libc::SIGKILL) };
            if let Some(cg) = self
                .runtime
                .cgroups
                .open(&self.runtime.cgroup_group(&self.meta.id))
            {
                cg.kill_all(libc::SIGKILL);
            }
            exit.await;
        }
        // Re-restarts need a fresh record.
        self.meta.should_run = true;
    }

    fn finish_stopped(&mut self) {
        self.status.send_modify(|s| {
            s.state = InstanceState::Stopped;
            s.pid = None;
        });
        self.runtime.changed.notify_waiters();
        self.runtime.emit(
            EventKind::InstanceStopped,
            &self.meta,
            format!("stopped {}", self.meta.id),
        );
        if let Some(cg) = self
            .runtime
            .cgroups
            .open(&self.runtime.cgroup_group(&self.meta.id))
        {
            cg.kill_all(libc::SIGKILL);
            let _ = cg.remove();
        }
        let _ = std::fs::remove_dir_all(self.dir.path());
    }
}

/// A future that completes when `pid` (not necessarily our child) has exited, via pidfd.
fn wait_pid_exit(pid: i32) -> ShimExit {
    Box::pin(async move {
        // SAFETY: pidfd_open(2) takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
        if fd < 0 {
            return; // already gone
        }
        // SAFETY: fd was just returned by pidfd_open and is owned by nobody else.
        let owned = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        // SAFETY: `owned` is a pidfd we own; it stays open for as long as the AsyncFd lives.
        match unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE)
        } {
            Ok(async_fd) => {
                let _ = async_fd.readable().await;
            }
            Err(_) => {
                while procfs::start_ticks(pid).is_some() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    })
}

/// Turns the shim's exit record into one sentence.
pub fn describe_exit(exit: &ExitRecord, limits: &ResolvedLimits) -> ExitInfo {
    let description = if let Some(e) = &exit.spawn_error {
        format!("could not start: {e}")
    } else if exit.oom_killed {
        match limits.memory_bytes {
            Some(b) => format!(
                "killed by the kernel's OOM killer at its {} memory limit",
                tandem_spec::units::ByteSize(b)
            ),
            None => "killed by the kernel's OOM killer".to_string(),
        }
    } else if let Some(sig) = exit.signal {
        format!("killed by signal {} ({sig})", signal_name(sig))
    } else {
        format!("exited with code {}", exit.code.unwrap_or(-1))
    };
    ExitInfo {
        code: exit.code,
        signal: exit.signal,
        oom_killed: exit.oom_killed,
        time_ms: exit.exited_ms,
        description,
    }
}

fn restart_policy_name(p: RestartPolicy) -> &'static str {
    match p {
        RestartPolicy::Always => "always",
        RestartPolicy::OnFailure => "on-failure",
        RestartPolicy::Never => "never",
    }
}

/// Delay before the n-th consecutive quick restart: 250 ms doubling up to 30 s, ±20 % jitter.
pub fn backoff_delay(attempt: u32) -> Duration {
    let exp = BACKOFF_BASE.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let capped = exp.min(BACKOFF_MAX);
    let jitter = 0.8 + fastrand::f64() * 0.4;
    capped.mul_f64(jitter)
}

const SIGNALS: &[(&str, i32)] = &[
    ("SIGHUP", libc::SIGHUP),
    ("SIGINT", libc::SIGINT),
    ("SIGQUIT", libc::SIGQUIT),
    ("SIGABRT", libc::SIGABRT),
    ("SIGKILL", libc::SIGKILL),
    ("SIGSEGV", libc::SIGSEGV),
    ("SIGPIPE", libc::SIGPIPE),
    ("SIGTERM", libc::SIGTERM),
    ("SIGUSR1", libc::SIGUSR1),
    ("SIGUSR2", libc::SIGUSR2),
    ("SIGBUS", libc::SIGBUS),
    ("SIGFPE", libc::SIGFPE),
    ("SIGILL", libc::SIGILL),
    ("SIGWINCH", libc::SIGWINCH),
];

/// `"SIGTERM"` or `"TERM"` to its number.
pub fn signal_number(name: &str) -> Option<i32> {
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    SIGNALS.iter().find(|(n, _)| *n == full).map(|(_, v)| *v)
}

pub fn signal_name(number: i32) -> String {
    SIGNALS
        .iter()
        .find(|(_, v)| *v == number)
        .map(|(n, _)| n.to_string())
        .unwrap_or_else(|| format!("signal {number}"))
}

fn write_meta(dir: &InstanceDir, meta: &InstanceMeta) -> std::io::Result<()> {
    write_json_atomic(&dir.path().join("meta.json"), meta)
}

fn read_meta(dir: &InstanceDir) -> std::io::Result<InstanceMeta> {
    let bytes = std::fs::read(dir.path().join("meta.json"))?;
    serde_json::from_slice(&bytes).map_err(std::io::Error::other)
}

/// A port no one listens on now (bound and released; the instance binds it right after).
pub fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        for attempt in 1..=20 {
            let d = backoff_delay(attempt);
            let nominal = BACKOFF_BASE
                .saturating_mul(1u32 << (attempt - 1).min(16))
                .min(BACKOFF_MAX);
            assert!(
                d >= nominal.mul_f64(0.8) && d <= nominal.mul_f64(1.2),
                "{attempt}: {d:?}"
            );
        }
        assert!(backoff_delay(30) <= BACKOFF_MAX.mul_f64(1.2));
    }

    #[test]
    fn signals_by_name() {
        assert_eq!(signal_number("SIGTERM"), Some(libc::SIGTERM));
        assert_eq!(signal_number("int"), Some(libc::SIGINT));
        assert_eq!(signal_number("SIGNOPE"), None);
        assert_eq!(signal_name(9), "SIGKILL");
    }
}
