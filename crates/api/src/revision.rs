//! Revisions: one environment's resolved system as applied, numbered, with where it came from.

use serde::{Deserialize, Serialize};
use tandem_spec::System;

/// Where a revision stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RevisionStatus {
    /// Being applied right now.
    Applying,
    /// What runs.
    Live,
    /// Was live; a later revision replaced it.
    Superseded,
    /// The apply did not succeed; the previous revision stayed live.
    Failed,
    /// Was live until `tandem rollback` (or an automatic rollback) moved away from it;
    /// deploying the same content again needs `--force`.
    RolledBack,
}

impl RevisionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RevisionStatus::Applying => "applying",
            RevisionStatus::Live => "live",
            RevisionStatus::Superseded => "superseded",
            RevisionStatus::Failed => "failed",
            RevisionStatus::RolledBack => "rolled-back",
        }
    }
    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Applying,
            Self::Live,
            Self::Superseded,
            Self::Failed,
            Self::RolledBack,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// Where the applied file came from; sent by the CLI with an apply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Provenance {
    /// Git commit of the repository holding the file, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_commit: Option<String>,
    /// True when the working tree had uncommitted changes.
    #[serde(default)]
    pub git_dirty: bool,
    /// Who applied it (git user.name, else the login name).
    pub author: String,
    /// `-m MESSAGE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Path of the system file on the applying machine.
    pub file: String,
}

/// A stored revision, whole.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Revision {
    pub number: u64,
    pub env: String,
    pub hash: String,
    pub status: RevisionStatus,
    /// Why it failed, for a failed revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub provenance: Provenance,
    pub created_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<i64>,
    /// For a rollback: the revision whose system it restores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<u64>,
    pub system: System,
}

/// A revision without its system, for lists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionSummary {
    pub number: u64,
    pub env: String,
    pub hash: String,
    pub status: RevisionStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub provenance: Provenance,
    pub created_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<u64>,
}

impl From<&Revision> for RevisionSummary {
    fn from(r: &Revision) -> Self {
        RevisionSummary {
            number: r.number,
            env: r.env.clone(),
            hash: r.hash.clone(),
            status: r.status,
            reason: r.reason.clone(),
            provenance: r.provenance.clone(),
            created_ms: r.created_ms,
            finished_ms: r.finished_ms,
            rollback_of: r.rollback_of,
        }
    }
}
