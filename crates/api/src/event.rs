//! Timeline events and the sink through which the supervisor, the proxy and the engine
//! report what happens without knowing who stores it (the server implements the sink).

use serde::{Deserialize, Serialize};

/// What kind of thing happened; one variant per line type of the timeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    ServerStarted,
    ServerStopped,
    ApplyStarted,
    RevisionApplied,
    ApplyFailed,
    InstanceStarted,
    InstanceHealthy,
    InstanceUnhealthy,
    InstanceExited,
    InstanceCrashed,
    InstanceOomKilled,
    InstanceRestarting,
    CrashLoop,
    InstanceStopped,
    InstanceReattached,
    LimitsUnavailable,
    DeployStep,
    TrafficShift,
    DeployRolledBack,
    Rollback,
    /// A batch of samples could not be delivered to a `[monitoring] remote_write` target.
    RemoteWriteFailed,
    /// An alert notification reached a `[[receiver]]`.
    NotificationSent,
    /// An alert notification could not be delivered to a `[[receiver]]` after its retries.
    NotificationFailed,
    /// An alert's condition started to hold (it fires once it held for `for`).
    AlertPending,
    AlertFiring,
    AlertResolved,
    /// A rule's evaluation failed, or rule files could not be loaded.
    RuleError,
    /// A silence was created: alerts matching it are not notified to webhook receivers
    /// until it ends.
    SilenceCreated,
    /// A silence was expired by someone, or its time was up.
    SilenceExpired,
    /// A secret's value was set or changed (the event names it, never its value).
    SecretSet,
    /// A secret was removed from the environment's store.
    SecretRemoved,
    /// Someone ran a one-off command with a service's environment (`tandem exec`): who,
    /// which command, in which service; never the environment.
    Exec,
    Note,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::ServerStarted => "server-started",
            EventKind::ServerStopped => "server-stopped",
            EventKind::ApplyStarted => "apply-started",
            EventKind::RevisionApplied => "revision-applied",
            EventKind::ApplyFailed => "apply-failed",
            EventKind::InstanceStarted => "instance-started",
            EventKind::InstanceHealthy => "instance-healthy",
            EventKind::InstanceUnhealthy => "instance-unhealthy",
            EventKind::InstanceExited => "instance-exited",
            EventKind::InstanceCrashed => "instance-crashed",
            EventKind::InstanceOomKilled => "instance-oom-killed",
            EventKind::InstanceRestarting => "instance-restarting",
            EventKind::CrashLoop => "crash-loop",
            EventKind::InstanceStopped => "instance-stopped",
            EventKind::InstanceReattached => "instance-reattached",
            EventKind::LimitsUnavailable => "limits-unavailable",
            EventKind::DeployStep => "deploy-step",
            EventKind::TrafficShift => "traffic-shift",
            EventKind::DeployRolledBack => "deploy-rolled-back",
            EventKind::Rollback => "rollback",
            EventKind::AlertPending => "alert-pending",
            EventKind::AlertFiring => "alert-firing",
            EventKind::AlertResolved => "alert-resolved",
            EventKind::RuleError => "rule-error",
            EventKind::RemoteWriteFailed => "remote-write-failed",
            EventKind::NotificationSent => "notification-sent",
            EventKind::NotificationFailed => "notification-failed",
            EventKind::SilenceCreated => "silence-created",
            EventKind::SilenceExpired => "silence-expired",
            EventKind::SecretSet => "secret-set",
            EventKind::SecretRemoved => "secret-removed",
            EventKind::Exec => "exec",
            EventKind::Note => "note",
        }
    }

    pub fn parse(text: &str) -> Option<EventKind> {
        ALL_EVENT_KINDS.iter().copied().find(|k| k.as_str() == text)
    }
}

pub const ALL_EVENT_KINDS: &[EventKind] = &[
    EventKind::ServerStarted,
    EventKind::ServerStopped,
    EventKind::ApplyStarted,
    EventKind::RevisionApplied,
    EventKind::ApplyFailed,
    EventKind::InstanceStarted,
    EventKind::InstanceHealthy,
    EventKind::InstanceUnhealthy,
    EventKind::InstanceExited,
    EventKind::InstanceCrashed,
    EventKind::InstanceOomKilled,
    EventKind::InstanceRestarting,
    EventKind::CrashLoop,
    EventKind::InstanceStopped,
    EventKind::InstanceReattached,
    EventKind::LimitsUnavailable,
    EventKind::DeployStep,
    EventKind::TrafficShift,
    EventKind::DeployRolledBack,
    EventKind::Rollback,
    EventKind::RemoteWriteFailed,
    EventKind::NotificationSent,
    EventKind::NotificationFailed,
    EventKind::AlertPending,
    EventKind::AlertFiring,
    EventKind::AlertResolved,
    EventKind::RuleError,
    EventKind::SilenceCreated,
    EventKind::SilenceExpired,
    EventKind::SecretSet,
    EventKind::SecretRemoved,
    EventKind::Exec,
    EventKind::Note,
];

/// One line of the timeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Milliseconds since the Unix epoch.
    pub time_ms: i64,
    pub env: String,
    pub kind: EventKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// Who caused it (a user for applies and notes; absent for runtime events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub who: Option<String>,
    /// One human sentence.
    pub message: String,
}

/// Where lower crates report events. The server implements it (store, log, metrics).
pub trait EventSink: Send + Sync {
    fn emit(&self, event: Event);
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
