//! What `tandem status` shows: the server and every instance.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServerInfo {
    pub pid: u32,
    pub version: String,
    pub env: String,
    pub listen: String,
    pub data_dir: String,
    pub started_ms: i64,
    /// Why limits are not enforced, when they are not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits_warning: Option<String>,
}

/// Where one instance stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceState {
    /// The shim is launching the process.
    Starting,
    /// The process runs; its health check has not passed yet.
    Running,
    /// The process runs and its last health check passed (or it has none).
    Healthy,
    /// The process runs but its health check failed `failures` times in a row.
    Unhealthy,
    /// Waiting out the restart backoff after an exit.
    Backoff,
    /// Exited and not restarted by its policy (`restart = "never"`, or a clean exit under
    /// `on-failure`); `tandem restart` starts it again.
    Exited,
    /// Crashed too often in a short window; no more restarts until `tandem restart`.
    CrashLoop,
    /// Being stopped.
    Stopping,
    /// Stopped by tandem.
    Stopped,
}

impl InstanceState {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Starting => "starting",
            InstanceState::Running => "running",
            InstanceState::Healthy => "healthy",
            InstanceState::Unhealthy => "unhealthy",
            InstanceState::Backoff => "backoff",
            InstanceState::Exited => "exited",
            InstanceState::CrashLoop => "crash-loop",
            InstanceState::Stopping => "stopping",
            InstanceState::Stopped => "stopped",
        }
    }
    /// True while a process is (or should shortly be) running.
    pub fn is_up(self) -> bool {
        matches!(
            self,
            InstanceState::Running | InstanceState::Healthy | InstanceState::Unhealthy
        )
    }
}

/// How an instance's last process ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub oom_killed: bool,
    pub time_ms: i64,
    /// One sentence: "exited with code 1", "killed by the OOM killer at its 50MiB memory limit", ...
    pub description: String,
}

/// One instance as `tandem status` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstanceStatus {
    pub id: String,
    pub service: String,
    pub index: u32,
    /// Revision whose definition this instance runs.
    pub revision: u64,
    pub state: InstanceState,
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// When the current process started (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<i64>,
    pub restarts: u32,
    /// Last health check result, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_error: Option<String>,
    /// Why the instance is in its state (crash loop, exited, could not start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<ExitInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_bytes: Option<u64>,
    /// CPU use over the last sampling period, in cores (1.0 = one full core).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_cores: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_limit_cores: Option<f64>,
    /// Share of the service's new requests this instance gets, in percent (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_pct: Option<f64>,
    /// Kept running without traffic after a switch, until then (ms since the epoch), so a
    /// rollback to its revision is a switch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm_until_ms: Option<i64>,
}

/// One service as `tandem status` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    /// The public port tandem serves for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The address the public port binds, when it is not 127.0.0.1 (`0.0.0.0:8080`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Whether the public port speaks HTTPS.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tls: bool,
    pub replicas: u32,
    pub instances: Vec<InstanceStatus>,
}

/// A deployment in progress: what holds the environment's deploy lock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployInProgress {
    pub kind: crate::DeploymentKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    pub who: String,
    pub started_ms: i64,
}

/// `GET /v1/status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusResponse {
    pub server: ServerInfo,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_revision: Option<u64>,
    /// The deployment holding the lock, if one runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploying: Option<DeployInProgress>,
    pub services: Vec<ServiceStatus>,
}

/// One line of service output, as `GET /v1/logs` streams it (NDJSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    pub time_ms: i64,
    pub service: String,
    pub instance: String,
    /// "out" or "err".
    pub stream: String,
    pub text: String,
}

/// `POST /v1/notes`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoteRequest {
    pub text: String,
    pub who: String,
}

/// The JSON body of every error answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}
