//! Deployments: one row per `deploy`, `up` or `rollback`, holding its steps (as JSON, appended
//! as they happen), outcome, reason and timings, so `tandem history` can show how every
//! revision went live or why it did not.

use crate::{Store, StoreError};
use rusqlite::types::Type;
use rusqlite::{OptionalExtension, Row, params};
use tandem_api::{DeployStep, Deployment, DeploymentKind, DeploymentOutcome, now_ms};

/// The reason given to deployments that were still running when the server stopped.
pub const INTERRUPTED_DEPLOYMENT: &str = "the server stopped during the deployment";

const COLUMNS: &str = "id, env, kind, revision, from_revision, who, started_ms, finished_ms, outcome, reason, steps_json";

impl Store {
    /// Records the start of a deployment of `revision`; returns its id.
    pub fn begin_deployment(
        &self,
        env: &str,
        kind: DeploymentKind,
        revision: u64,
        from_revision: Option<u64>,
        who: &str,
    ) -> Result<u64, StoreError> {
        self.write(|conn| {
            conn.execute(
                "INSERT INTO deployments (env, kind, revision, from_revision, who, started_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![env, kind.as_str(), revision, from_revision, who, now_ms()],
            )
            .map_err(|e| self.sqlite_error(e))?;
            Ok(conn.last_insert_rowid() as u64)
        })
    }

    /// Appends a step to deployment `id`.
    pub fn add_deploy_step(&self, id: u64, step: &DeployStep) -> Result<(), StoreError> {
        let json =
            serde_json::to_string(step).map_err(|source| StoreError::EncodeSystem { source })?;
        self.write(|conn| {
            conn.execute(
                "UPDATE deployments SET steps_json = json_insert(steps_json, '$[#]', json(?2)) WHERE id = ?1",
                params![id, json],
            )
            .map_err(|e| self.sqlite_error(e))?;
            Ok(())
        })
    }

    /// Records how deployment `id` ended.
    pub fn finish_deployment(
        &self,
        id: u64,
        outcome: DeploymentOutcome,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        self.write(|conn| {
            conn.execute(
                "UPDATE deployments SET outcome = ?2, reason = ?3, finished_ms = ?4 \
                 WHERE id = ?1 AND outcome IS NULL",
                params![id, outcome.as_str(), reason, now_ms()],
            )
            .map_err(|e| self.sqlite_error(e))?;
            Ok(())
        })
    }

    /// The newest `limit` deployments of `env`, newest first.
    pub fn deployments(&self, env: &str, limit: usize) -> Result<Vec<Deployment>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(|conn| {
            let mut statement = conn
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM deployments WHERE env = ?1 ORDER BY id DESC LIMIT ?2"
                ))
                .map_err(|e| self.sqlite_error(e))?;
            let rows = statement
                .query_map(params![env, limit], deployment_from_row)
                .map_err(|e| self.sqlite_error(e))?;
            rows.collect::<rusqlite::Result<_>>()
                .map_err(|e| self.sqlite_error(e))
        })
    }

    /// Deployment `id`.
    pub fn deployment(&self, id: u64) -> Result<Option<Deployment>, StoreError> {
        self.read(|conn| {
            conn.query_row(
                &format!("SELECT {COLUMNS} FROM deployments WHERE id = ?1"),
                [id],
                deployment_from_row,
            )
            .optional()
            .map_err(|e| self.sqlite_error(e))
        })
    }

    /// Settles deployments a crash interrupted: they become failed with
    /// [`INTERRUPTED_DEPLOYMENT`]. Returns how many.
    pub fn recover_interrupted_deployments(&self, env: &str) -> Result<usize, StoreError> {
        self.write(|conn| {
            conn.execute(
                "UPDATE deployments SET outcome = 'failed', reason = ?2, finished_ms = ?3 \
                 WHERE env = ?1 AND outcome IS NULL",
                params![env, INTERRUPTED_DEPLOYMENT, now_ms()],
            )
            .map_err(|e| self.sqlite_error(e))
        })
    }
}

fn deployment_from_row(row: &Row<'_>) -> rusqlite::Result<Deployment> {
    let bad = |index: usize, what: String| {
        rusqlite::Error::FromSqlConversionFailure(index, Type::Text, what.into())
    };
    let kind_text: String = row.get(2)?;
    let kind = DeploymentKind::parse(&kind_text)
        .ok_or_else(|| bad(2, format!("unknown deployment kind '{kind_text}'")))?;
    let outcome = match row.get::<_, Option<String>>(8)? {
        Some(text) => Some(
            DeploymentOutcome::parse(&text)
                .ok_or_else(|| bad(8, format!("unknown deployment outcome '{text}'")))?,
        ),
        None => None,
    };
    let steps_json: String = row.get(10)?;
    let steps = serde_json::from_str(&steps_json).map_err(|e| bad(10, e.to_string()))?;
    Ok(Deployment {
        id: row.get(0)?,
        env: row.get(1)?,
        kind,
        revision: row.get(3)?,
        from_revision: row.get(4)?,
        who: row.get(5)?,
        started_ms: row.get(6)?,
        finished_ms: row.get(7)?,
        outcome,
        reason: row.get(9)?,
        steps,
    })
}
