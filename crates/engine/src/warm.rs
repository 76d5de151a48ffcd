//! The warm pool on disk: which instances are kept warm, of which service and revision, and
//! until when, in `warm.json` in the data directory.
//!
//! Warm instances outlive the server (their shims keep them running), but the decision to
//! keep them, and for how long, is the engine's. Writing it down each time the pool changes
//! lets a restarted server (after SIGTERM, a crash or `kill -9`) keep them warm for the rest
//! of their `keep_warm`, so that `tandem rollback` stays a traffic switch. Deadlines are
//! stored as wall-clock milliseconds, since the server's monotonic clock does not survive
//! it. Every write is durable (temporary file, fsync, rename, fsync of the folder), so the
//! file is either the old pool or the new one. The pool in memory stays the truth while the
//! server runs; the file is only read once, at recovery.

use crate::Engine;
use crate::routing::Warm;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;
use tandem_api::{Event, EventKind, now_ms};
use tandem_spec::System;
use tandem_supervisor::runtime::Reattached;

/// One warm instance as written in `warm.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarmRecord {
    pub service: String,
    pub id: String,
    pub revision: u64,
    pub template_hash: String,
    /// When it stops unless a rollback uses it first, in milliseconds since the epoch.
    pub until_ms: i64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WarmFile {
    warm: Vec<WarmRecord>,
}

/// The pool as [`crate::routing::Routing`] keeps it: service -> warm instances.
pub type Pool = BTreeMap<String, Vec<Warm>>;

/// Reads and writes `warm.json`.
#[derive(Debug)]
pub struct WarmStore {
    path: PathBuf,
    /// The pool last written; `None` until recovery has read the file, so that nothing
    /// overwrites it before it was read.
    saved: Mutex<Option<Pool>>,
}

impl WarmStore {
    pub fn new(path: PathBuf) -> WarmStore {
        WarmStore {
            path,
            saved: Mutex::new(None),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the pool a previous server left (empty when there is no file) and allows
    /// [`WarmStore::save`] from now on. An unreadable or malformed file is an error that
    /// says why; the pool then counts as empty.
    pub fn load(&self) -> Result<Vec<WarmRecord>, String> {
        let mut saved = self.saved.lock().expect("warm store lock");
        // Whatever the file held, the next save writes what the engine then keeps.
        let previous = saved.replace(Pool::new());
        if previous.is_some() {
            return Ok(Vec::new());
        }
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e.to_string()),
        };
        let file: WarmFile = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
        Ok(file.warm)
    }

    /// Writes the pool `current` returns when it differs from what was written last (and
    /// once the file was read). `current` is called under this store's lock, so concurrent
    /// saves write in the order they saw the pool and the file never goes back to an older
    /// one. Errors are logged: the pool in memory stays right, only a restart would lose it.
    pub fn save(&self, current: impl FnOnce() -> Pool) {
        let mut saved = self.saved.lock().expect("warm store lock");
        let Some(last) = saved.as_ref() else {
            return;
        };
        let pool = current();
        if *last == pool {
            return;
        }
        let records = to_records(&pool, tokio::time::Instant::now(), now_ms());
        match write_durable(&self.path, &WarmFile { warm: records }) {
            Ok(()) => *saved = Some(pool),
            Err(e) => tracing::error!(
                "cannot write the warm pool to {}: {e}; a server restart would stop the warm instances",
                self.path.display()
            ),
        }
    }
}

// === impl Engine ===

impl Engine {
    /// The warm pool a previous server left. A file that cannot be read or parsed counts as
    /// an empty pool, with a warning that names it and why: its instances then stop like
    /// any other instance that is not the live revision's, and the server goes on.
    pub(crate) fn read_warm_pool(&self) -> Vec<WarmRecord> {
        self.warm_store.load().unwrap_or_else(|reason| {
            tracing::warn!(
                "ignoring the warm pool in {}: {reason}; the instances it kept warm are stopped",
                self.warm_store.path().display()
            );
            Vec::new()
        })
    }

    /// After a restart: which of the `records` a previous server kept warm stay warm. An
    /// instance stays warm when it was re-attached with its process running, its service is
    /// in the live `system`, and its `keep_warm` is not over; it keeps the deadline it had.
    /// Every other one is given up with a timeline event that says why. Returns the pool,
    /// and the given-up instances that still exist (to be stopped).
    pub(crate) fn restore_warm(
        &self,
        records: Vec<WarmRecord>,
        reattached: &[Reattached],
        system: &System,
    ) -> (Pool, Vec<String>) {
        let now = tokio::time::Instant::now();
        let wall = now_ms();
        let mut pool = Pool::new();
        let mut given_up = Vec::new();
        for r in records {
            let rollback = format!(
                "{} was kept warm for a rollback to revision {}",
                r.id, r.revision
            );
            let found = reattached.iter().find(|a| a.id == r.id);
            let hash = self
                .runtime
                .instances_of(&r.service)
                .into_iter()
                .find(|(id, _, _)| *id == r.id)
                .map(|(_, _, hash)| hash);
            let why = match (found, &hash) {
                (None, _) | (_, None) => {
                    // Nothing to stop: its folder is gone, so tandem stopped it already.
                    self.warm_event(&r, format!("{rollback}, but it no longer exists"));
                    continue;
                }
                (Some(a), _) if !a.was_running => {
                    "it exited while no server ran, so it is stopped".to_string()
                }
                _ if !system.service.contains_key(&r.service) => format!(
                    "service '{}' is not in the live revision, so it is stopped",
                    r.service
                ),
                _ if r.until_ms <= wall => format!(
                    "its keep_warm ran out {}s ago while no server ran, so it is stopped",
                    (wall - r.until_ms) / 1000
                ),
                _ => {
                    let until = deadline(&r, now, wall);
                    tracing::info!(
                        "{rollback}; it stays warm for {}s more",
                        (until - now).as_secs()
                    );
                    let list = pool.entry(r.service.clone()).or_default();
                    if !list.iter().any(|w| w.id == r.id) {
                        list.push(Warm {
                            id: r.id.clone(),
                            revision: r.revision,
                            template_hash: hash.unwrap_or_default(),
                            until,
                        });
                    }
                    continue;
                }
            };
            self.warm_event(&r, format!("{rollback}, but {why}"));
            given_up.push(r.id);
        }
        (pool, given_up)
    }

    fn warm_event(&self, r: &WarmRecord, message: String) {
        self.sink.emit(Event {
            time_ms: now_ms(),
            env: self.env.clone(),
            kind: EventKind::InstanceStopped,
            service: Some(r.service.clone()),
            instance: Some(r.id.clone()),
            revision: Some(r.revision),
            who: None,
            message,
        });
    }
}

/// The pool as records, deadlines turned from the monotonic clock (`now`) into wall-clock
/// milliseconds (`now_ms`).
pub fn to_records(pool: &Pool, now: tokio::time::Instant, now_ms: i64) -> Vec<WarmRecord> {
    pool.iter()
        .flat_map(|(service, list)| {
            list.iter().map(move |w| WarmRecord {
                service: service.clone(),
                id: w.id.clone(),
                revision: w.revision,
                template_hash: w.template_hash.clone(),
                until_ms: now_ms
                    + i64::try_from(w.until.saturating_duration_since(now).as_millis())
                        .unwrap_or(i64::MAX / 2),
            })
        })
        .collect()
}

/// The monotonic deadline of a record (`now` for one already past).
pub fn deadline(
    record: &WarmRecord,
    now: tokio::time::Instant,
    now_ms: i64,
) -> tokio::time::Instant {
    let left = u64::try_from(record.until_ms - now_ms).unwrap_or(0);
    now + Duration::from_millis(left)
}

/// Writes `value` as JSON to a temporary file beside `path`, flushes it to disk, renames it
/// over `path` and flushes the folder, so a crash leaves either the old or the new file.
fn write_durable<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    let tmp = path.with_extension("json.tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(now: tokio::time::Instant) -> Pool {
        let mut pool = Pool::new();
        pool.insert(
            "web".into(),
            vec![Warm {
                id: "web-0-b773".into(),
                revision: 1,
                template_hash: "abc".into(),
                until: now + Duration::from_secs(240),
            }],
        );
        pool
    }

    #[test]
    fn nothing_is_written_before_the_file_was_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("warm.json");
        std::fs::write(&path, b"{\"warm\": []}").unwrap();
        let store = WarmStore::new(path.clone());
        let now = tokio::time::Instant::now();
        store.save(Pool::new);
        store.save(|| pool(now));
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"warm\": []}");
    }

    #[test]
    fn a_saved_pool_reads_back_with_its_wall_clock_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("warm.json");
        let store = WarmStore::new(path.clone());
        assert_eq!(store.load(), Ok(Vec::new()), "no file is an empty pool");
        let now = tokio::time::Instant::now();
        let before = now_ms();
        store.save(|| pool(now));
        let after = now_ms();
        assert!(!dir.path().join("warm.json.tmp").exists());

        let again = WarmStore::new(path);
        let records = again.load().unwrap();
        assert_eq!(records.len(), 1);
        let r = &records[0];
        assert_eq!(
            (
                r.service.as_str(),
                r.id.as_str(),
                r.revision,
                r.template_hash.as_str()
            ),
            ("web", "web-0-b773", 1, "abc")
        );
        assert!(
            r.until_ms >= before + 239_000 && r.until_ms <= after + 240_000,
            "{} not about 240 s after {before}",
            r.until_ms
        );
        // Back on a monotonic clock, with the time that is left.
        let later = tokio::time::Instant::now();
        let d = deadline(r, later, r.until_ms - 5_000);
        assert_eq!(d - later, Duration::from_secs(5));
        assert_eq!(deadline(r, later, r.until_ms + 1), later, "already past");
    }

    #[test]
    fn an_unchanged_pool_is_not_written_again_and_an_empty_one_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("warm.json");
        let store = WarmStore::new(path.clone());
        store.load().unwrap();
        let now = tokio::time::Instant::now();
        store.save(|| pool(now));
        std::fs::write(&path, b"changed behind its back").unwrap();
        store.save(|| pool(now));
        assert_eq!(std::fs::read(&path).unwrap(), b"changed behind its back");
        store.save(Pool::new);
        let back = WarmStore::new(path).load().unwrap();
        assert!(back.is_empty());
    }

    #[test]
    fn a_malformed_file_is_an_error_that_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("warm.json");
        std::fs::write(&path, b"{\"warm\": [{\"id\": 3}").unwrap();
        let err = WarmStore::new(path.clone()).load().unwrap_err();
        assert!(err.contains("line 1"), "{err}");
        std::fs::write(&path, b"{\"pool\": []}").unwrap();
        let err = WarmStore::new(path).load().unwrap_err();
        assert!(err.contains("pool"), "{err}");
    }
}
