//! Applying a system: the request, the plan the server computes against the live revision,
//! and the stream of messages an apply answers with.

use crate::revision::Provenance;
use serde::{Deserialize, Serialize};
use tandem_spec::System;

/// `POST /v1/apply` and `POST /v1/plan`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApplyRequest {
    pub system: System,
    pub provenance: Provenance,
    /// Deploy even content that was rolled back before.
    #[serde(default)]
    pub force: bool,
}

/// `POST /v1/rollback`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackRequest {
    /// The revision to go back to; the previous good one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<u64>,
    pub who: String,
}

/// What happens to one service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum ServiceAction {
    /// New service: its instances start.
    Start,
    /// Its definition changed: new instances replace the old ones.
    Replace,
    /// Same definition, other replica count.
    Scale { from: u32, to: u32 },
    /// Same definition, but instances are missing (after `down`, or lost): they start.
    Restore,
    /// Nothing to do.
    Keep,
    /// Gone from the file: its instances stop.
    Remove,
}

impl ServiceAction {
    pub fn touches(&self) -> bool {
        !matches!(self, ServiceAction::Keep)
    }
}

/// One service in a plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePlan {
    pub name: String,
    #[serde(flatten)]
    pub action: ServiceAction,
    /// Fields whose change causes the action (`limits.memory`, `run`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub because: Vec<String>,
    /// Services that depend on this one, directly or not, when this one changes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blast_radius: Vec<String>,
    /// How a replacement is rolled out: `recreate`, `blue-green`, `canary 10% → 50% → 100%
    /// (30s each)` or `replace` (no `release`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
}

/// One changed field between two resolved systems.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FieldChange {
    /// Dotted path, e.g. `service.api.limits.memory`.
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new: Option<serde_json::Value>,
}

/// `POST /v1/plan`: what applying a system would do now.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub env: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_revision: Option<u64>,
    pub hash: String,
    /// True when the system equals the live revision's.
    pub same_as_live: bool,
    pub changes: Vec<FieldChange>,
    pub services: Vec<ServicePlan>,
}

impl Plan {
    /// True when applying would change anything that runs or is stored.
    pub fn has_changes(&self) -> bool {
        !self.same_as_live || self.services.iter().any(|s| s.action.touches())
    }
}

/// The end of a successful apply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApplyResult {
    pub revision: u64,
    /// False when the file equalled the live revision (nothing new was stored).
    pub new_revision: bool,
    pub services: Vec<ServicePlan>,
    pub duration_ms: u64,
}

/// One line of the NDJSON stream `POST /v1/apply` answers with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ApplyMessage {
    Progress {
        message: String,
    },
    Done(ApplyResult),
    Failed {
        error: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        revision: Option<u64>,
        /// True when a gate failed and traffic went back to the previous revision by itself.
        #[serde(default)]
        rolled_back: bool,
    },
}
