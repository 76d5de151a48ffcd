//! `Db`: the store as callers see it. It owns the data directory (`LOCK`, `wal/`,
//! `blocks/`), routes writes through the WAL into the head, cuts the head into blocks
//! every `block_duration`, applies retention, and answers queries over blocks and head.
//!
//! Locks: `head` (an `RwLock`) is always taken before `blocks` and before `wal`. A block cut
//! writes its files without holding the head lock, then swaps the new block in and drops
//! the same samples from the head under one write lock, so a query never sees a sample
//! twice or not at all.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::block::{self, Block, TMP_PREFIX};
use crate::encoding::FxHashMap;
use crate::error::{DbError, OpenWarning, SampleError};
use crate::head::{Accept, Head};
use crate::model::{Labels, Matcher, Querier, QueryError, Sample, Series};
use crate::wal::{Record, Wal};

/// When the WAL is flushed to stable storage. Every append reaches the kernel before it
/// returns either way, so `kill -9` loses nothing acknowledged; this decides what a power
/// cut or kernel crash can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalSync {
    /// `fsync` after every append batch: safest, slowest.
    EveryBatch,
    /// `fsync` at most once per interval, from a background thread.
    Interval(Duration),
}

/// How a store behaves. `Default` gives 2 h blocks, no retention limit, and a WAL synced
/// at most once per second.
#[derive(Debug, Clone)]
pub struct DbOptions {
    /// Blocks older than this (measured back from the newest sample) are deleted.
    pub retention: Option<Duration>,
    /// The oldest blocks are deleted while blocks and WAL together exceed this.
    pub max_bytes: Option<u64>,
    /// Length of the window each block covers; also how long the head keeps samples.
    pub block_duration: Duration,
    pub wal_sync: WalSync,
    /// A selection that would return more series than this is refused.
    pub max_series_per_query: Option<usize>,
    /// A selection that would return more samples than this is refused.
    pub max_samples_per_query: Option<usize>,
}

impl Default for DbOptions {
    fn default() -> Self {
        DbOptions {
            retention: None,
            max_bytes: None,
            block_duration: Duration::from_secs(2 * 3600),
            wal_sync: WalSync::Interval(Duration::from_secs(1)),
            max_series_per_query: None,
            max_samples_per_query: None,
        }
    }
}

/// What one `append_batch` did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AppendSummary {
    /// Samples stored.
    pub appended: usize,
    /// Samples identical to one already stored (same time, same value bits): ignored.
    pub duplicates: usize,
    /// Samples refused, each with why; the rest of the batch was stored.
    pub rejected: Vec<SampleError>,
}

/// Figures for tandem's own `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DbStats {
    /// Series in the head (those with recent samples).
    pub head_series: usize,
    pub head_samples: u64,
    pub head_chunks: usize,
    pub blocks: usize,
    pub block_samples: u64,
    /// Bytes of the blocks' files.
    pub block_bytes: u64,
    pub wal_bytes: u64,
    /// Blocks and WAL together.
    pub bytes_on_disk: u64,
    /// Oldest and newest sample time stored, if any.
    pub min_t: Option<i64>,
    pub max_t: Option<i64>,
}

struct SyncThread {
    stop: Arc<(Mutex<bool>, Condvar)>,
    handle: JoinHandle<()>,
}

/// The store. Share it between threads by reference or in an `Arc`.
pub struct Db {
    dir: PathBuf,
    options: DbOptions,
    block_ms: i64,
    head: RwLock<Head>,
    blocks: RwLock<Vec<Arc<Block>>>,
    wal: Arc<Mutex<Wal>>,
    compaction: Mutex<()>,
    warnings: Vec<OpenWarning>,
    sync_thread: Option<SyncThread>,
    _lock: File,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

// A poisoned lock means a panic elsewhere mid-update; the data behind these locks stays
// consistent at every await-free step, so go on with it rather than cascade the panic.
fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}
fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// === impl Db: opening ===

impl Db {
    /// Opens (or creates) the store in `dir`: loads the blocks, replays the WAL into the
    /// head, and repairs what a crash left (see [`Db::warnings`]).
    pub fn open(dir: &Path, options: DbOptions) -> Result<Db, DbError> {
        let block_ms = i64::try_from(options.block_duration.as_millis()).unwrap_or(i64::MAX);
        if block_ms < 1 {
            return Err(DbError::Options(
                "block_duration must be at least 1 ms; the default is 2h".into(),
            ));
        }
        if let WalSync::Interval(d) = options.wal_sync
            && d.is_zero()
        {
            return Err(DbError::Options(
                "a WAL sync interval of 0 would never sleep; use WalSync::EveryBatch instead"
                    .into(),
            ));
        }
        fs::create_dir_all(dir)
            .map_err(|e| DbError::io("create the time-series folder", dir, e))?;
        let lock_path = dir.join("LOCK");
        let lock_file = File::create(&lock_path)
            .map_err(|e| DbError::io("create the lock file", &lock_path, e))?;
        if lock_file.try_lock().is_err() {
            return Err(DbError::Locked {
                path: dir.to_path_buf(),
            });
        }
        let mut warnings = Vec::new();

        let blocks_dir = dir.join("blocks");
        fs::create_dir_all(&blocks_dir)
            .map_err(|e| DbError::io("create the blocks folder", &blocks_dir, e))?;
        let mut blocks = Vec::new();
        let entries = fs::read_dir(&blocks_dir)
            .map_err(|e| DbError::io("read the blocks folder", &blocks_dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| DbError::io("read the blocks folder", &blocks_dir, e))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(TMP_PREFIX) {
                // A cut or a deletion that a crash interrupted.
                fs::remove_dir_all(&path)
                    .map_err(|e| DbError::io("remove the unfinished block", &path, e))?;
                continue;
            }
            if !name.starts_with("block-") {
                continue;
            }
            match block::open(&path) {
                Ok(b) => blocks.push(Arc::new(b)),
                Err(DbError::CorruptBlock { path, detail }) => {
                    warnings.push(OpenWarning::BlockSkipped { path, detail });
                }
                Err(e) => return Err(e),
            }
        }
        blocks.sort_by_key(|b| b.meta.min_t);

        let mut head = Head::new(block_ms);
        if let Some(end) = blocks.iter().map(|b| b.meta.window_end).max() {
            head.min_valid_t = end;
        }
        let wal_dir = dir.join("wal");
        let mut unknown = 0u64;
        // Applied as read: the log of a full head is hundreds of megabytes decoded.
        let segments = Wal::replay(&wal_dir, &mut warnings, |record| match record {
            Record::Series(series) => {
                for (id, labels) in series {
                    head.insert_series(id, labels);
                }
            }
            Record::Samples(samples) => {
                for &(id, s) in samples {
                    if head.get(id).is_none() {
                        unknown += 1;
                    } else {
                        head.push(id, s);
                    }
                }
            }
        })?;
        if unknown > 0 {
            warnings.push(OpenWarning::UnknownSeries { count: unknown });
        }
        // Series declared but left without samples (all in blocks already) go.
        let min_valid = head.min_valid_t;
        head.truncate_before(min_valid);
        let wal = Wal::open_for_append(
            &wal_dir,
            segments,
            head.series().map(|(id, s)| (id, &s.labels)),
        )?;
        let wal = Arc::new(Mutex::new(wal));
        let sync_thread = match options.wal_sync {
            WalSync::EveryBatch => None,
            WalSync::Interval(every) => Some(
                spawn_syncer(Arc::clone(&wal), every)
                    .map_err(|e| DbError::io("start the WAL sync thread for", &wal_dir, e))?,
            ),
        };
        let db = Db {
            dir: dir.to_path_buf(),
            options,
            block_ms,
            head: RwLock::new(head),
            blocks: RwLock::new(blocks),
            wal,
            compaction: Mutex::new(()),
            warnings,
            sync_thread,
            _lock: lock_file,
        };
        db.compact()?;
        Ok(db)
    }

    /// What `open` repaired or skipped; the caller logs each once (at `warn`).
    pub fn warnings(&self) -> &[OpenWarning] {
        &self.warnings
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Syncs the WAL and closes the store. Dropping it does the same, ignoring errors.
    pub fn close(mut self) -> Result<(), DbError> {
        self.stop_syncer();
        let mut wal = lock(&self.wal);
        let path = wal.current_path();
        wal.sync()
            .map_err(|e| DbError::io("sync the WAL segment", path, e))
    }

    fn stop_syncer(&mut self) {
        if let Some(t) = self.sync_thread.take() {
            *lock(&t.stop.0) = true;
            t.stop.1.notify_all();
            let _ = t.handle.join();
        }
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        self.stop_syncer();
        let _ = lock(&self.wal).sync();
    }
}

fn spawn_syncer(wal: Arc<Mutex<Wal>>, every: Duration) -> std::io::Result<SyncThread> {
    let stop = Arc::new((Mutex::new(false), Condvar::new()));
    let flag = Arc::clone(&stop);
    let handle = std::thread::Builder::new()
        .name("tsdb-wal-sync".into())
        .spawn(move || {
            let (m, cv) = &*flag;
            let mut stopped = lock(m);
            while !*stopped {
                stopped = cv
                    .wait_timeout(stopped, every)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                // Synced outside the WAL lock so appends do not wait for the disk. An
                // error here is not reported: the data already sits in the kernel's
                // cache, and `close` syncs again.
                let handle = lock(&wal).take_sync_handle();
                if let Some(f) = handle {
                    let _ = f.sync_data();
                }
            }
        })?;
    Ok(SyncThread { stop, handle })
}

// === impl Db: writing ===

/// Collects samples and writes them in one batch on [`Appender::commit`], like a
/// Prometheus appender: one WAL record and one lock round for a whole scrape.
#[derive(Debug)]
pub struct Appender<'a> {
    db: &'a Db,
    batch: Vec<(Labels, Sample)>,
}

impl Appender<'_> {
    pub fn add(&mut self, labels: Labels, t: i64, v: f64) -> &mut Self {
        self.batch.push((labels, Sample { t, v }));
        self
    }

    pub fn len(&self) -> usize {
        self.batch.len()
    }

    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }

    pub fn commit(self) -> Result<AppendSummary, DbError> {
        self.db.append_batch(&self.batch)
    }
}

impl Db {
    pub fn appender(&self) -> Appender<'_> {
        Appender {
            db: self,
            batch: Vec::new(),
        }
    }

    /// Appends one sample; a refused sample is an `Err(DbError::Sample(..))`.
    pub fn append(&self, labels: &Labels, t: i64, v: f64) -> Result<(), DbError> {
        let mut summary = self.append_batch(&[(labels.clone(), Sample { t, v })])?;
        match summary.rejected.pop() {
            Some(e) => Err(DbError::Sample(e)),
            None => Ok(()),
        }
    }

    /// Appends a batch: samples that fit are stored (WAL first, then the head), those that
    /// do not are listed in the summary. An `Err` means nothing of the batch was stored.
    pub fn append_batch(&self, batch: &[(Labels, Sample)]) -> Result<AppendSummary, DbError> {
        let mut summary = AppendSummary::default();
        let due;
        {
            let mut head = write(&self.head);
            let mut new_series: Vec<(u64, Labels)> = Vec::new();
            let mut new_ids: FxHashMap<&Labels, u64> = FxHashMap::default();
            let mut last_in_batch: FxHashMap<u64, Sample> = FxHashMap::default();
            let mut accepted: Vec<(u64, Sample)> = Vec::with_capacity(batch.len());
            let mut next_id = head.next_id();
            for (labels, s) in batch {
                if labels.is_empty() {
                    summary.rejected.push(SampleError::NoLabels);
                    continue;
                }
                let id = match head.id_of(labels).or_else(|| new_ids.get(labels).copied()) {
                    Some(id) => id,
                    None => {
                        // Checked before the series exists, so a refused sample creates none.
                        if let Err(e) = head.check(labels, None, *s) {
                            summary.rejected.push(e);
                            continue;
                        }
                        let id = next_id;
                        next_id += 1;
                        new_ids.insert(labels, id);
                        new_series.push((id, labels.clone()));
                        id
                    }
                };
                let last = last_in_batch
                    .get(&id)
                    .copied()
                    .or_else(|| head.get(id).and_then(|m| m.last));
                match head.check(labels, last, *s) {
                    Ok(Accept::New) => {
                        accepted.push((id, *s));
                        last_in_batch.insert(id, *s);
                    }
                    Ok(Accept::Duplicate) => summary.duplicates += 1,
                    Err(e) => summary.rejected.push(e),
                }
            }
            if accepted.is_empty() && new_series.is_empty() {
                return Ok(summary);
            }
            // Declare only series that got a sample in.
            new_series.retain(|(id, _)| accepted.iter().any(|(a, _)| a == id));
            {
                let mut wal = lock(&self.wal);
                wal.log(&new_series, &accepted)?;
                if self.options.wal_sync == WalSync::EveryBatch {
                    let path = wal.current_path();
                    wal.sync()
                        .map_err(|e| DbError::io("sync the WAL segment", path, e))?;
                }
                if wal.is_full() {
                    for (id, labels) in &new_series {
                        head.insert_series(*id, labels.clone());
                    }
                    wal.rotate(
                        head.series()
                            .map(|(id, s)| (id, &s.labels))
                            .chain(new_series.iter().map(|(id, l)| (*id, l))),
                    )?;
                }
            }
            for (id, labels) in new_series {
                head.insert_series(id, labels);
            }
            for (id, s) in &accepted {
                head.push(*id, *s);
            }
            summary.appended = accepted.len();
            due = head
                .time_range()
                .is_some_and(|(min, max)| max.saturating_sub(min) >= self.block_ms / 2 * 3);
        }
        if due {
            self.compact()?;
        }
        Ok(summary)
    }
}

// === impl Db: blocks and retention ===

impl Db {
    /// Cuts every block that is due (the head spans 1.5 block durations: the oldest whole
    /// window goes to disk, half a window stays for late samples), then applies retention.
    /// Appends call this on their own; the server may call it on a timer too.
    pub fn compact(&self) -> Result<(), DbError> {
        let _one_at_a_time = lock(&self.compaction);
        loop {
            let Some((min_t, max_t)) = read(&self.head).time_range() else {
                break;
            };
            if max_t.saturating_sub(min_t) < self.block_ms / 2 * 3 {
                break;
            }
            let start = min_t.div_euclid(self.block_ms) * self.block_ms;
            let end = start.saturating_add(self.block_ms);
            {
                // From here on nothing older than `end` enters the head.
                let mut head = write(&self.head);
                head.min_valid_t = head.min_valid_t.max(end);
            }
            let content = read(&self.head).collect_before(end);
            let blocks_dir = self.dir.join("blocks");
            let new_block = if content.is_empty() {
                None
            } else {
                Some(Arc::new(block::write(&blocks_dir, end, &content)?))
            };
            let mut head = write(&self.head);
            if let Some(b) = new_block {
                let mut blocks = write(&self.blocks);
                blocks.push(b);
                blocks.sort_by_key(|b| b.meta.min_t);
            }
            head.truncate_before(end);
            let mut wal = lock(&self.wal);
            wal.rotate(head.series().map(|(id, s)| (id, &s.labels)))?;
            wal.delete_before(end)?;
        }
        self.apply_retention()
    }

    fn apply_retention(&self) -> Result<(), DbError> {
        let mut doomed: Vec<Arc<Block>> = Vec::new();
        {
            let head = read(&self.head);
            let mut blocks = write(&self.blocks);
            if let Some(retention) = self.options.retention {
                let newest = head
                    .time_range()
                    .map(|(_, max)| max)
                    .into_iter()
                    .chain(blocks.iter().map(|b| b.meta.max_t))
                    .max();
                if let Some(newest) = newest {
                    let keep_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
                    let cutoff = newest.saturating_sub(keep_ms);
                    let (old, keep): (Vec<_>, Vec<_>) =
                        blocks.drain(..).partition(|b| b.meta.max_t < cutoff);
                    *blocks = keep;
                    doomed.extend(old);
                }
            }
            if let Some(max_bytes) = self.options.max_bytes {
                let wal_bytes = lock(&self.wal).bytes();
                let mut total: u64 = wal_bytes + blocks.iter().map(|b| b.bytes).sum::<u64>();
                while total > max_bytes && !blocks.is_empty() {
                    let b = blocks.remove(0);
                    total -= b.bytes;
                    doomed.push(b);
                }
            }
        }
        for b in doomed {
            // Rename first so a crash mid-delete leaves a temporary folder, not half a block.
            let name = b.dir.file_name().map(|n| n.to_string_lossy().into_owned());
            let tmp = b
                .dir
                .with_file_name(format!("{TMP_PREFIX}deleted-{}", name.unwrap_or_default()));
            fs::rename(&b.dir, &tmp)
                .map_err(|e| DbError::io("remove the expired block", &b.dir, e))?;
            fs::remove_dir_all(&tmp)
                .map_err(|e| DbError::io("remove the expired block", &tmp, e))?;
        }
        Ok(())
    }

    pub fn stats(&self) -> DbStats {
        let head = read(&self.head);
        let blocks = read(&self.blocks);
        let wal_bytes = lock(&self.wal).bytes();
        let block_bytes: u64 = blocks.iter().map(|b| b.bytes).sum();
        let range = head.time_range();
        DbStats {
            head_series: head.num_series(),
            head_samples: head.num_samples(),
            head_chunks: head.num_chunks(),
            blocks: blocks.len(),
            block_samples: blocks.iter().map(|b| b.meta.samples).sum(),
            block_bytes,
            wal_bytes,
            bytes_on_disk: block_bytes + wal_bytes,
            min_t: blocks.first().map(|b| b.meta.min_t).or(range.map(|r| r.0)),
            max_t: range
                .map(|r| r.1)
                .or(blocks.iter().map(|b| b.meta.max_t).max()),
        }
    }
}

// === impl Querier for Db ===

fn storage(e: DbError) -> QueryError {
    QueryError::Storage(e.to_string())
}

impl Db {
    /// The blocks overlapping the range and, under the same head lock, what the head
    /// holds of the matching series: one consistent snapshot.
    fn snapshot<T>(
        &self,
        min_t: i64,
        max_t: i64,
        in_head: impl FnOnce(&Head) -> T,
    ) -> (Vec<Arc<Block>>, T) {
        let head = read(&self.head);
        let blocks: Vec<Arc<Block>> = read(&self.blocks)
            .iter()
            .filter(|b| b.overlaps(min_t, max_t))
            .cloned()
            .collect();
        let t = in_head(&head);
        (blocks, t)
    }

    fn too_many_series(&self, n: usize) -> Result<(), QueryError> {
        match self.options.max_series_per_query {
            Some(limit) if n > limit => Err(QueryError::Limit(format!(
                "query would read {n} series, more than the limit of {limit}; narrow the selector"
            ))),
            _ => Ok(()),
        }
    }
}

impl Querier for Db {
    fn select(
        &self,
        matchers: &[Matcher],
        min_t: i64,
        max_t: i64,
    ) -> Result<Vec<Series>, QueryError> {
        if min_t > max_t {
            return Ok(Vec::new());
        }
        let sample_limit = self.options.max_samples_per_query;
        let (blocks, head_part) = self.snapshot(min_t, max_t, |head| {
            head.select(matchers)
                .into_iter()
                .filter_map(|id| head.get(id))
                .filter(|s| s.overlaps(min_t, max_t))
                .map(|s| (s.labels.clone(), s))
                .map(|(l, s)| (l, s.samples(min_t, max_t)))
                .collect::<Vec<_>>()
        });
        let block_ids: Vec<Vec<u64>> = blocks.iter().map(|b| b.select(matchers)).collect();

        let mut names: BTreeSet<&Labels> = head_part.iter().map(|(l, _)| l).collect();
        for (b, ids) in blocks.iter().zip(&block_ids) {
            names.extend(ids.iter().filter_map(|&id| b.labels(id)));
        }
        self.too_many_series(names.len())?;

        let mut out: BTreeMap<Labels, Vec<Sample>> = BTreeMap::new();
        let mut total = 0usize;
        let mut count = |n: usize| -> Result<(), QueryError> {
            total += n;
            match sample_limit {
                Some(limit) if total > limit => Err(QueryError::Limit(format!(
                    "query would read more than {limit} samples, the limit; narrow the selector or the time range"
                ))),
                _ => Ok(()),
            }
        };
        // Blocks are sorted by time and end before the head begins: appending in this
        // order keeps every series in time order.
        for (b, ids) in blocks.iter().zip(&block_ids) {
            for &id in ids {
                let samples = b.samples(id, min_t, max_t).map_err(storage)?;
                if samples.is_empty() {
                    continue;
                }
                count(samples.len())?;
                if let Some(labels) = b.labels(id) {
                    out.entry(labels.clone()).or_default().extend(samples);
                }
            }
        }
        for (labels, samples) in head_part {
            let samples = samples.map_err(QueryError::Storage)?;
            if samples.is_empty() {
                continue;
            }
            count(samples.len())?;
            out.entry(labels).or_default().extend(samples);
        }
        Ok(out
            .into_iter()
            .map(|(labels, samples)| Series { labels, samples })
            .collect())
    }

    fn label_names(
        &self,
        matchers: &[Matcher],
        min_t: i64,
        max_t: i64,
    ) -> Result<Vec<String>, QueryError> {
        let mut names = BTreeSet::new();
        let (blocks, ()) = self.snapshot(min_t, max_t, |head| {
            if matchers.is_empty() {
                names.extend(head.postings.names().map(str::to_string));
            } else {
                for id in head.select(matchers) {
                    if let Some(s) = head.get(id).filter(|s| s.overlaps(min_t, max_t)) {
                        names.extend(s.labels.iter().map(|(k, _)| k.to_string()));
                    }
                }
            }
        });
        for b in blocks {
            if matchers.is_empty() {
                names.extend(b.label_names().map(str::to_string));
            } else {
                for id in b.select(matchers) {
                    if let Some(l) = b.labels(id) {
                        names.extend(l.iter().map(|(k, _)| k.to_string()));
                    }
                }
            }
        }
        Ok(names.into_iter().collect())
    }

    fn label_values(
        &self,
        name: &str,
        matchers: &[Matcher],
        min_t: i64,
        max_t: i64,
    ) -> Result<Vec<String>, QueryError> {
        let mut values = BTreeSet::new();
        let (blocks, ()) = self.snapshot(min_t, max_t, |head| {
            if matchers.is_empty() {
                values.extend(head.postings.values(name).map(str::to_string));
            } else {
                for id in head.select(matchers) {
                    if let Some(v) = head
                        .get(id)
                        .filter(|s| s.overlaps(min_t, max_t))
                        .and_then(|s| s.labels.get(name))
                    {
                        values.insert(v.to_string());
                    }
                }
            }
        });
        for b in blocks {
            if matchers.is_empty() {
                values.extend(b.label_values(name).map(str::to_string));
            } else {
                for id in b.select(matchers) {
                    if let Some(v) = b.labels(id).and_then(|l| l.get(name)) {
                        values.insert(v.to_string());
                    }
                }
            }
        }
        Ok(values.into_iter().collect())
    }
}
