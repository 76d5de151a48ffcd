//! Revisions: numbering per environment and the status machine
//! `applying -> live -> superseded`, `applying -> failed`, and `live | superseded ->
//! rolled-back` when a rollback moves away from a revision. Every change of status is one
//! transaction, so the database never shows two live revisions or a half-made switch.

use crate::{Store, StoreError};
use rusqlite::types::Type;
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};
use tandem_api::{Provenance, Revision, RevisionStatus, RevisionSummary, now_ms};
use tandem_spec::System;

/// The reason given to revisions that were still applying when the server stopped.
pub const INTERRUPTED_REASON: &str = "the server stopped during the apply";

const SUMMARY_COLUMNS: &str = "number, env, hash, status, reason, git_commit, git_dirty, \
     author, message, file, created_ms, finished_ms, rollback_of";

impl Store {
    /// Records the start of an apply: the next revision number of `env` (1 for the first),
    /// status applying. The numbers of failed revisions are never reused.
    pub fn begin_revision(
        &self,
        env: &str,
        system: &System,
        hash: &str,
        provenance: &Provenance,
    ) -> Result<Revision, StoreError> {
        self.begin_revision_of(env, system, hash, provenance, None)
    }

    /// Like [`Store::begin_revision`], for a rollback that restores revision `rollback_of`.
    pub fn begin_revision_of(
        &self,
        env: &str,
        system: &System,
        hash: &str,
        provenance: &Provenance,
        rollback_of: Option<u64>,
    ) -> Result<Revision, StoreError> {
        let system_json =
            serde_json::to_string(system).map_err(|source| StoreError::EncodeSystem { source })?;
        let created_ms = now_ms();
        self.write(|conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| self.sqlite_error(e))?;
            let number: u64 = tx
                .query_row(
                    "SELECT COALESCE(MAX(number), 0) + 1 FROM revisions WHERE env = ?1",
                    [env],
                    |row| row.get(0),
                )
                .map_err(|e| self.sqlite_error(e))?;
            tx.execute(
                "INSERT INTO revisions (env, number, hash, status, git_commit, git_dirty, \
                 author, message, file, created_ms, system_json, rollback_of) \
                 VALUES (?1, ?2, ?3, 'applying', ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
                    env,
                    number,
                    hash,
                    provenance.git_commit,
                    provenance.git_dirty,
                    provenance.author,
                    provenance.message,
                    provenance.file,
                    created_ms,
                    system_json,
                    rollback_of,
                ],
            )
            .map_err(|e| self.sqlite_error(e))?;
            tx.commit().map_err(|e| self.sqlite_error(e))?;
            Ok(Revision {
                number,
                env: env.to_string(),
                hash: hash.to_string(),
                status: RevisionStatus::Applying,
                reason: None,
                provenance: provenance.clone(),
                created_ms,
                finished_ms: None,
                rollback_of,
                system: system.clone(),
            })
        })
    }

    /// Makes revision `number` the live one of `env`; the previous live revision becomes
    /// superseded in the same transaction. Marking the live revision live again is a no-op;
    /// a failed or superseded revision cannot become live (apply it again instead, which
    /// makes a new revision).
    pub fn mark_live(&self, env: &str, number: u64) -> Result<(), StoreError> {
        self.finish(env, number, RevisionStatus::Live, None)
    }

    /// Records that the apply of revision `number` failed, and why; the live revision of
    /// `env` stays live. Marking a failed revision failed again is a no-op (the first reason
    /// stays).
    pub fn mark_failed(&self, env: &str, number: u64, reason: &str) -> Result<(), StoreError> {
        self.finish(env, number, RevisionStatus::Failed, Some(reason))
    }

    /// Marks revision `number` (live or superseded) as rolled back, with why; when it is
    /// the live one, nothing is live afterwards until the caller marks the restoring
    /// revision live (do both in that order: [`Store::mark_live`] first).
    pub fn mark_rolled_back(&self, env: &str, number: u64, reason: &str) -> Result<(), StoreError> {
        let key = i64::try_from(number).map_err(|_| StoreError::RevisionNotFound {
            env: env.to_string(),
            number,
        })?;
        self.write(|conn| {
            let changed = conn
                .execute(
                    "UPDATE revisions SET status = 'rolled-back', reason = ?3 \
                     WHERE env = ?1 AND number = ?2 AND status IN ('live', 'superseded', 'rolled-back')",
                    params![env, key, reason],
                )
                .map_err(|e| self.sqlite_error(e))?;
            if changed == 0 {
                return Err(StoreError::RevisionNotFound { env: env.to_string(), number });
            }
            Ok(())
        })
    }

    /// The newest revision of `env` with content `hash` that went live, when it was rolled
    /// back (and not made live again since).
    pub fn rolled_back_with_hash(
        &self,
        env: &str,
        hash: &str,
    ) -> Result<Option<RevisionSummary>, StoreError> {
        self.read(|conn| {
            let mut statement = conn
                .prepare_cached(&format!(
                    "SELECT {SUMMARY_COLUMNS} FROM revisions WHERE env = ?1 AND hash = ?2 \
                     AND status IN ('live', 'superseded', 'rolled-back') ORDER BY number DESC LIMIT 1"
                ))
                .map_err(|e| self.sqlite_error(e))?;
            let newest = statement
                .query_row(params![env, hash], Self::summary_from_row)
                .optional()
                .map_err(|e| self.sqlite_error(e))?;
            Ok(newest.filter(|r| r.status == RevisionStatus::RolledBack))
        })
    }

    fn finish(
        &self,
        env: &str,
        number: u64,
        target: RevisionStatus,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        let not_found = || StoreError::RevisionNotFound {
            env: env.to_string(),
            number,
        };
        let key = i64::try_from(number).map_err(|_| not_found())?;
        self.write(|conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| self.sqlite_error(e))?;
            let status = tx
                .query_row(
                    "SELECT status FROM revisions WHERE env = ?1 AND number = ?2",
                    params![env, key],
                    |row| status_column(row, 0),
                )
                .optional()
                .map_err(|e| self.sqlite_error(e))?
                .ok_or_else(not_found)?;
            if status == target {
                return Ok(());
            }
            if status != RevisionStatus::Applying {
                return Err(StoreError::NotApplying {
                    env: env.to_string(),
                    number,
                    status,
                    target,
                });
            }
            if target == RevisionStatus::Live {
                tx.execute(
                    "UPDATE revisions SET status = 'superseded' WHERE env = ?1 AND status = 'live'",
                    [env],
                )
                .map_err(|e| self.sqlite_error(e))?;
            }
            tx.execute(
                "UPDATE revisions SET status = ?3, reason = ?4, finished_ms = ?5 \
                 WHERE env = ?1 AND number = ?2",
                params![env, key, target.as_str(), reason, now_ms()],
            )
            .map_err(|e| self.sqlite_error(e))?;
            tx.commit().map_err(|e| self.sqlite_error(e))
        })
    }

    /// The live revision of `env`, if any apply has succeeded there.
    pub fn live(&self, env: &str) -> Result<Option<Revision>, StoreError> {
        self.read(|conn| {
            self.query_revision(conn, "WHERE env = ?1 AND status = 'live'", params![env])
        })
    }

    /// Revision `number` of `env`, whole.
    pub fn get(&self, env: &str, number: u64) -> Result<Option<Revision>, StoreError> {
        let Ok(key) = i64::try_from(number) else {
            return Ok(None);
        };
        self.read(|conn| {
            self.query_revision(conn, "WHERE env = ?1 AND number = ?2", params![env, key])
        })
    }

    /// The newest `limit` revisions of `env`, newest first, without their systems.
    pub fn list(&self, env: &str, limit: usize) -> Result<Vec<RevisionSummary>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(|conn| {
            let mut statement = conn
                .prepare_cached(&format!(
                    "SELECT {SUMMARY_COLUMNS} FROM revisions WHERE env = ?1 \
                     ORDER BY number DESC LIMIT ?2"
                ))
                .map_err(|e| self.sqlite_error(e))?;
            let rows = statement
                .query_map(params![env, limit], Self::summary_from_row)
                .map_err(|e| self.sqlite_error(e))?;
            rows.collect::<rusqlite::Result<_>>()
                .map_err(|e| self.sqlite_error(e))
        })
    }

    /// Settles the applies a crash interrupted: every revision of `env` still applying
    /// becomes failed with [`INTERRUPTED_REASON`]. Returns their numbers, lowest first. Call
    /// it when the server starts, before it begins a new apply.
    pub fn recover_interrupted(&self, env: &str) -> Result<Vec<u64>, StoreError> {
        self.write(|conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| self.sqlite_error(e))?;
            let mut numbers = {
                let mut statement = tx
                    .prepare(
                        "UPDATE revisions SET status = 'failed', reason = ?2, finished_ms = ?3 \
                         WHERE env = ?1 AND status = 'applying' RETURNING number",
                    )
                    .map_err(|e| self.sqlite_error(e))?;
                let rows = statement
                    .query_map(params![env, INTERRUPTED_REASON, now_ms()], |row| {
                        row.get::<_, u64>(0)
                    })
                    .map_err(|e| self.sqlite_error(e))?;
                rows.collect::<rusqlite::Result<Vec<u64>>>()
                    .map_err(|e| self.sqlite_error(e))?
            };
            tx.commit().map_err(|e| self.sqlite_error(e))?;
            numbers.sort_unstable();
            Ok(numbers)
        })
    }

    fn query_revision(
        &self,
        conn: &Connection,
        condition: &str,
        params: impl rusqlite::Params,
    ) -> Result<Option<Revision>, StoreError> {
        let mut statement = conn
            .prepare_cached(&format!(
                "SELECT {SUMMARY_COLUMNS}, system_json FROM revisions {condition}"
            ))
            .map_err(|e| self.sqlite_error(e))?;
        let found = statement
            .query_row(params, |row| {
                let system_json: String = row.get(13)?;
                Ok((Self::summary_from_row(row)?, system_json))
            })
            .optional()
            .map_err(|e| self.sqlite_error(e))?;
        let Some((summary, system_json)) = found else {
            return Ok(None);
        };
        let system: System =
            serde_json::from_str(&system_json).map_err(|e| StoreError::UnreadableRow {
                path: self.path.clone(),
                detail: format!(
                    "the system of revision {} of environment '{}': {e}",
                    summary.number, summary.env
                ),
            })?;
        Ok(Some(Revision {
            number: summary.number,
            env: summary.env,
            hash: summary.hash,
            status: summary.status,
            reason: summary.reason,
            provenance: summary.provenance,
            created_ms: summary.created_ms,
            finished_ms: summary.finished_ms,
            rollback_of: summary.rollback_of,
            system,
        }))
    }

    /// Reads the [`SUMMARY_COLUMNS`] of `row`.
    fn summary_from_row(row: &Row<'_>) -> rusqlite::Result<RevisionSummary> {
        Ok(RevisionSummary {
            number: row.get(0)?,
            env: row.get(1)?,
            hash: row.get(2)?,
            status: status_column(row, 3)?,
            reason: row.get(4)?,
            provenance: Provenance {
                git_commit: row.get(5)?,
                git_dirty: row.get(6)?,
                author: row.get(7)?,
                message: row.get(8)?,
                file: row.get(9)?,
            },
            created_ms: row.get(10)?,
            finished_ms: row.get(11)?,
            rollback_of: row.get(12)?,
        })
    }
}

fn status_column(row: &Row<'_>, index: usize) -> rusqlite::Result<RevisionStatus> {
    let text = row.get_ref(index)?.as_str()?;
    RevisionStatus::parse(text).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            index,
            Type::Text,
            format!("unknown revision status '{text}'").into(),
        )
    })
}
