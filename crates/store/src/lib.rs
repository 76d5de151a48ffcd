//! The environment server's memory: every apply as a numbered revision, and the timeline of
//! events, in one embedded SQLite file inside the server's data directory.
//!
//! SQLite in WAL mode lets the HTTP API read history while the engine writes; every write
//! runs with `synchronous = FULL`, so a revision the store has reported committed survives
//! a `kill -9` of the server and a power cut alike. Writes go through one connection behind
//! a mutex (SQLite allows one writer at a time anyway); reads take a connection of their own
//! from a small pool and never wait for a write to finish. Revision state changes are single
//! transactions, and a partial index guarantees at most one live revision per environment,
//! so a crash at any point leaves either the old state or the new one, never a mix. What a
//! crash can leave behind is a revision still marked applying; [`Store::recover_interrupted`]
//! settles those when the server starts again.

mod deployments;
mod error;
mod events;
mod revisions;
mod schema;

pub use deployments::INTERRUPTED_DEPLOYMENT;
pub use error::StoreError;
pub use events::EventFilter;
pub use revisions::INTERRUPTED_REASON;

use rusqlite::{Connection, OpenFlags};
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// How long a statement waits for another process's lock before failing with
/// [`StoreError::Locked`].
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle read connections kept for reuse; more are opened under load and closed after.
const IDLE_READERS: usize = 4;

/// The revisions and events of one data directory. Share it behind an `Arc`; every method
/// takes `&self` and blocks the calling thread on disk I/O (from async code, call it
/// through `spawn_blocking` when latency matters).
pub struct Store {
    path: PathBuf,
    writer: Mutex<Connection>,
    idle_readers: Mutex<Vec<Connection>>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens the database at `path`, creating it (and its folder) when missing, and brings
    /// its schema up to date. The file is readable by its owner only (mode 0600), because
    /// revisions hold the environment variables of every service.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let path = path.to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_private_dir(dir)?;
        }
        create_private_file(&path)?;

        let mut writer = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| StoreError::from_sqlite(&path, e))?;
        configure_writer(&writer, &path)?;
        schema::migrate(&mut writer, &path)?;

        Ok(Store {
            path,
            writer: Mutex::new(writer),
            idle_readers: Mutex::new(Vec::new()),
        })
    }

    /// Where the database lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `write` with the one write connection.
    fn write<T>(
        &self,
        write: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        // A panic while holding the lock cannot leave a half-done transaction behind
        // (rusqlite rolls back on drop), so a poisoned lock is safe to keep using.
        let mut conn = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        write(&mut conn)
    }

    /// Runs `read` with a read connection of its own, so reads proceed during a write.
    fn read<T>(
        &self,
        read: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let reused = self.lock_idle_readers().pop();
        let conn = match reused {
            Some(conn) => conn,
            None => self.open_reader()?,
        };
        let result = read(&conn);
        let mut idle = self.lock_idle_readers();
        if idle.len() < IDLE_READERS {
            idle.push(conn);
        }
        result
    }

    fn lock_idle_readers(&self) -> MutexGuard<'_, Vec<Connection>> {
        self.idle_readers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn open_reader(&self) -> Result<Connection, StoreError> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| self.sqlite_error(e))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| self.sqlite_error(e))?;
        Ok(conn)
    }

    fn sqlite_error(&self, error: rusqlite::Error) -> StoreError {
        StoreError::from_sqlite(&self.path, error)
    }
}

fn configure_writer(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let sql = |e| StoreError::from_sqlite(path, e);
    conn.busy_timeout(BUSY_TIMEOUT).map_err(sql)?;
    // The first statement to read the file: a file that is not SQLite fails here.
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "wal", |row| row.get(0))
        .map_err(sql)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: format!("SQLite kept journal mode '{mode}' instead of switching to WAL"),
        });
    }
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(sql)?;
    Ok(())
}

fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|source| StoreError::CreateDir {
        dir: dir.to_path_buf(),
        source,
    })
}

/// Creates the database file with mode 0600 before SQLite sees it (SQLite would use the
/// umask), and narrows an existing file to 0600. SQLite gives the `-wal` and `-shm` files
/// the database file's mode.
fn create_private_file(path: &Path) -> Result<(), StoreError> {
    let open_error = |source| StoreError::OpenFile {
        path: path.to_path_buf(),
        source,
    };
    let mut options = fs::OpenOptions::new();
    options.read(true).write(true).create(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options.open(path).map_err(open_error)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = file.metadata().map_err(open_error)?.permissions().mode();
        if mode & 0o777 != 0o600 {
            file.set_permissions(fs::Permissions::from_mode(0o600))
                .map_err(open_error)?;
        }
    }
    drop(file);
    Ok(())
}
