//! Deployments: the act of moving an environment from one revision to another, with every
//! step, traffic shift and gate result on the way, its outcome and timings.

use serde::{Deserialize, Serialize};

/// What started a deployment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeploymentKind {
    /// `tandem deploy` or `tandem up`.
    Deploy,
    /// `tandem rollback`.
    Rollback,
    /// `tandem down` (holds the deploy lock while it stops everything; never stored).
    Down,
}

impl DeploymentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentKind::Deploy => "deploy",
            DeploymentKind::Rollback => "rollback",
            DeploymentKind::Down => "down",
        }
    }
    pub fn parse(text: &str) -> Option<Self> {
        [Self::Deploy, Self::Rollback, Self::Down]
            .into_iter()
            .find(|k| k.as_str() == text)
    }
}

/// How a deployment ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeploymentOutcome {
    /// The new revision is live.
    Succeeded,
    /// A gate failed; traffic went back to the previous revision automatically.
    RolledBack,
    /// It could not complete (an instance never became healthy, a port was taken, the
    /// server stopped); the previous revision kept running.
    Failed,
}

impl DeploymentOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentOutcome::Succeeded => "succeeded",
            DeploymentOutcome::RolledBack => "rolled-back",
            DeploymentOutcome::Failed => "failed",
        }
    }
    pub fn parse(text: &str) -> Option<Self> {
        [Self::Succeeded, Self::RolledBack, Self::Failed]
            .into_iter()
            .find(|k| k.as_str() == text)
    }
}

/// One check of a gate: what was measured against what was allowed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateResult {
    /// `max_error_rate`, `max_p99`, `error rate vs r4`, `p99 vs r4`, `min_requests`, `health`.
    pub check: String,
    pub measured: String,
    pub allowed: String,
    pub passed: bool,
}

/// One line of a deployment's record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployStep {
    pub time_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    pub message: String,
    /// Share of the service's traffic on the new revision after this step, in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_traffic_pct: Option<u8>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gates: Vec<GateResult>,
}

/// A deployment, whole.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    pub id: u64,
    pub env: String,
    pub kind: DeploymentKind,
    /// The revision being deployed (for a rollback: the new revision that restores an old one).
    pub revision: u64,
    /// The live revision when it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_revision: Option<u64>,
    pub who: String,
    pub started_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<i64>,
    /// `None` while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<DeploymentOutcome>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default)]
    pub steps: Vec<DeployStep>,
}
