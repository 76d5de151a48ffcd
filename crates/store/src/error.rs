//! Everything that can go wrong with the revisions database, each with the path it concerns
//! and what the operator should do about it. SQLite's own codes are classified once, in
//! [`StoreError::from_sqlite`], so a damaged file or a lock held by another server reads the
//! same wherever it is first noticed.

use rusqlite::ErrorCode;
use std::io;
use std::path::{Path, PathBuf};
use tandem_api::RevisionStatus;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "cannot create the data directory {}: {source}; check its permissions or choose another data directory",
        .dir.display()
    )]
    CreateDir { dir: PathBuf, source: io::Error },

    #[error(
        "cannot open the database {}: {source}; check that this user owns the data directory and can write to it",
        .path.display()
    )]
    OpenFile { path: PathBuf, source: io::Error },

    #[error(
        "the database {} is damaged or is not a SQLite database ({detail}); restore it from a backup, or move it away to start with an empty history",
        .path.display()
    )]
    Corrupt { path: PathBuf, detail: String },

    #[error(
        "the database {} belongs to another program, not tandem; point tandem at its own data directory",
        .path.display()
    )]
    NotTandem { path: PathBuf },

    #[error(
        "the database {} was written by a newer tandem (schema version {found}; this tandem knows up to {supported}); upgrade tandem, or give this version its own data directory",
        .path.display()
    )]
    NewerSchema {
        path: PathBuf,
        found: i64,
        supported: i64,
    },

    #[error(
        "the database {} stays locked by another process (a second tandem server on the same data directory?); stop that process or choose another data directory",
        .path.display()
    )]
    Locked { path: PathBuf },

    #[error(
        "the database {} holds a row this tandem cannot read ({detail}); it was probably written by a newer tandem: upgrade tandem",
        .path.display()
    )]
    UnreadableRow { path: PathBuf, detail: String },

    #[error(
        "revision {number} of environment '{env}' does not exist; `tandem history --env {env}` lists the revisions there are"
    )]
    RevisionNotFound { env: String, number: u64 },

    #[error(
        "revision {number} of environment '{env}' is {}, so it cannot become {}; only a revision being applied can",
        .status.as_str(), .target.as_str()
    )]
    NotApplying {
        env: String,
        number: u64,
        status: RevisionStatus,
        target: RevisionStatus,
    },

    #[error(
        "cannot encode the system as JSON ({source}); this is a bug in tandem, please report it"
    )]
    EncodeSystem { source: serde_json::Error },

    #[error("database {}: {source}", .path.display())]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
}

impl StoreError {
    /// Classifies an error from SQLite: damage and lock contention get their own variants
    /// because the operator acts on them differently from an ordinary failure.
    pub(crate) fn from_sqlite(path: &Path, source: rusqlite::Error) -> StoreError {
        let path = path.to_path_buf();
        if let rusqlite::Error::FromSqlConversionFailure(_, _, detail) = &source {
            return StoreError::UnreadableRow {
                path,
                detail: detail.to_string(),
            };
        }
        match source.sqlite_error_code() {
            Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => StoreError::Corrupt {
                path,
                detail: source.to_string(),
            },
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
                StoreError::Locked { path }
            }
            _ => StoreError::Sqlite { path, source },
        }
    }
}
