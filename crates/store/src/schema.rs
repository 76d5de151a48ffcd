//! The database's shape and how it gets there. Each entry of [`MIGRATIONS`] moves the schema
//! one version forward and is applied once, in order, in the same transaction that records
//! the new `PRAGMA user_version`; entries are never edited once released, only appended.
//! `PRAGMA application_id` marks the file as tandem's, so a stray SQLite file is refused
//! instead of being written into.

use crate::error::StoreError;
use rusqlite::{Connection, TransactionBehavior};
use std::path::Path;

/// "tndm": tells a tandem database from any other SQLite file.
const APPLICATION_ID: i64 = 0x746e_646d;

/// Migration `i` takes the schema from version `i` to version `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: revisions and events.
    "
    CREATE TABLE revisions (
        env          TEXT    NOT NULL,
        number       INTEGER NOT NULL CHECK (number > 0),
        hash         TEXT    NOT NULL,
        status       TEXT    NOT NULL CHECK (status IN ('applying', 'live', 'superseded', 'failed')),
        reason       TEXT,
        git_commit   TEXT,
        git_dirty    INTEGER NOT NULL,
        author       TEXT    NOT NULL,
        message      TEXT,
        file         TEXT    NOT NULL,
        created_ms   INTEGER NOT NULL,
        finished_ms  INTEGER,
        system_json  TEXT    NOT NULL,
        PRIMARY KEY (env, number)
    ) WITHOUT ROWID;

    -- At most one live revision per environment, whatever the code above does.
    CREATE UNIQUE INDEX revisions_one_live_per_env ON revisions (env) WHERE status = 'live';

    CREATE TABLE events (
        id        INTEGER PRIMARY KEY,
        time_ms   INTEGER NOT NULL,
        env       TEXT    NOT NULL,
        kind      TEXT    NOT NULL,
        service   TEXT,
        instance  TEXT,
        revision  INTEGER,
        who       TEXT,
        message   TEXT    NOT NULL
    );
    CREATE INDEX events_by_env_time ON events (env, time_ms);
    ",
    // 2: rolled-back revisions, rollbacks pointing at what they restore, deployments.
    "
    CREATE TABLE revisions_v2 (
        env          TEXT    NOT NULL,
        number       INTEGER NOT NULL CHECK (number > 0),
        hash         TEXT    NOT NULL,
        status       TEXT    NOT NULL CHECK (status IN ('applying', 'live', 'superseded', 'failed', 'rolled-back')),
        reason       TEXT,
        git_commit   TEXT,
        git_dirty    INTEGER NOT NULL,
        author       TEXT    NOT NULL,
        message      TEXT,
        file         TEXT    NOT NULL,
        created_ms   INTEGER NOT NULL,
        finished_ms  INTEGER,
        system_json  TEXT    NOT NULL,
        rollback_of  INTEGER,
        PRIMARY KEY (env, number)
    ) WITHOUT ROWID;
    INSERT INTO revisions_v2 (env, number, hash, status, reason, git_commit, git_dirty, author,
                              message, file, created_ms, finished_ms, system_json)
        SELECT env, number, hash, status, reason, git_commit, git_dirty, author,
               message, file, created_ms, finished_ms, system_json FROM revisions;
    DROP TABLE revisions;
    ALTER TABLE revisions_v2 RENAME TO revisions;
    CREATE UNIQUE INDEX revisions_one_live_per_env ON revisions (env) WHERE status = 'live';

    CREATE TABLE deployments (
        id            INTEGER PRIMARY KEY,
        env           TEXT    NOT NULL,
        kind          TEXT    NOT NULL CHECK (kind IN ('deploy', 'rollback')),
        revision      INTEGER NOT NULL,
        from_revision INTEGER,
        who           TEXT    NOT NULL,
        started_ms    INTEGER NOT NULL,
        finished_ms   INTEGER,
        outcome       TEXT CHECK (outcome IN ('succeeded', 'rolled-back', 'failed')),
        reason        TEXT,
        steps_json    TEXT    NOT NULL DEFAULT '[]'
    );
    CREATE INDEX deployments_by_env ON deployments (env, id);
    ",
];

/// The schema version this build writes and reads.
pub(crate) const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the database at `path` to [`SCHEMA_VERSION`], refusing files that are not
/// tandem's or that a newer tandem has already moved past this version.
pub(crate) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let sql = |e| StoreError::from_sqlite(path, e);
    // IMMEDIATE: two servers opening a fresh file at once must not both migrate it.
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql)?;
    let version: i64 = tx
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(sql)?;
    let application_id: i64 = tx
        .pragma_query_value(None, "application_id", |row| row.get(0))
        .map_err(sql)?;
    let has_tables: bool = tx
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'table')",
            [],
            |row| row.get(0),
        )
        .map_err(sql)?;

    let foreign = match application_id {
        APPLICATION_ID => false,
        0 => has_tables,
        _ => true,
    };
    if foreign {
        return Err(StoreError::NotTandem {
            path: path.to_path_buf(),
        });
    }
    if version > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            path: path.to_path_buf(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    if version == SCHEMA_VERSION {
        return Ok(());
    }

    let start = usize::try_from(version).unwrap_or(0);
    for migration in &MIGRATIONS[start..] {
        tx.execute_batch(migration).map_err(sql)?;
    }
    tx.pragma_update(None, "application_id", APPLICATION_ID)
        .map_err(sql)?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(sql)?;
    tx.commit().map_err(sql)
}
