//! Prometheus remote write (1.0: protobuf `WriteRequest`, snappy block compression) of every
//! sample the server stores, to each `[monitoring] remote_write` URL: a bounded queue per
//! target, batches, retries with backoff, and a failed send that is an event and a metric,
//! never a stall of collection or of the other targets.
//!
//! `push` only appends to one in-memory queue per target and wakes that target's task; each
//! task batches, encodes and POSTs on its own, so a slow or dead target costs memory up to
//! its queue bound and nothing else. The queue is a fast path, not the record: the store is.
//! Each target keeps a durable watermark (see [`watermark`]), and a target that falls
//! behind (its queue overflowed, its receiver stayed down through every retry, or the server
//! restarted) reads what it missed back from the store in bounded chunks of time, oldest
//! first, before it returns to its queue.

mod watermark;

use crate::delivery::{HttpsClient, SendError, exchange, https_client};
use bytes::Bytes;
use http_body_util::Full;
use hyper::Uri;
use hyper::header::{CONTENT_ENCODING, CONTENT_TYPE, HeaderValue, USER_AGENT};
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;
use tandem_api::{Event, EventKind, EventSink, now_ms};
use tandem_spec::RemoteWrite;
use tandem_tsdb::{Db, Labels, Querier, Sample};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

/// The protocol's required version header value for remote write 1.0.
const PROTOCOL_VERSION: &str = "0.1.0";

/// How each target queues, batches and retries. [`Policy::default`] is what the server uses;
/// tests shrink the delays.
#[derive(Clone, Debug)]
struct Policy {
    /// Samples a target holds while it cannot keep up; beyond it the oldest leave the queue
    /// and the target reads them back from the store. 10 000 is several seconds of a large
    /// environment at 1 s resolution, a few MB.
    capacity: usize,
    /// Samples per request (Prometheus's own default `max_samples_per_send` is 2000).
    max_per_send: usize,
    /// How long a batch waits to fill before it is sent anyway.
    batch_deadline: Duration,
    /// Tries of one request, the first included.
    max_attempts: u32,
    min_backoff: Duration,
    max_backoff: Duration,
    /// At most one failure event per target per this interval.
    event_interval: Duration,
    /// The span of sample time read from the store at once while catching up: a minute of
    /// every series is a few MB even for a large environment, so memory stays bounded however
    /// long the target was away.
    catch_up_span: Duration,
    /// The watermark file is rewritten at most this often (and when the writer stops), so a
    /// crash can make the target get at most these last seconds again.
    persist_interval: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            capacity: 10_000,
            max_per_send: 2_000,
            batch_deadline: Duration::from_secs(1),
            // 0.5 + 1 + 2 + 4 + 8 s of backoff: rides out a receiver's restart without
            // reading back from the store.
            max_attempts: 6,
            min_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
            event_interval: Duration::from_secs(60),
            catch_up_span: Duration::from_secs(60),
            persist_interval: Duration::from_secs(5),
        }
    }
}

/// Why a target is not used at all.
#[derive(Debug, thiserror::Error)]
enum TargetError {
    #[error(
        "remote_write URL '{url}' is not a valid http:// or https:// URL ({reason}); samples are not sent there (hint: write it like 'http://127.0.0.1:9090/api/v1/write')"
    )]
    BadUrl { url: String, reason: String },
}

/// A request that failed for good.
#[derive(Debug)]
struct Failure {
    error: SendError,
    attempts: u32,
}

/// The writer's task ends (its writer, or the target, was dropped).
struct Stopped;

/// What one target has done so far, for tandem's own `/metrics`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct TargetStats {
    /// The URL, without any credentials it carries.
    pub(crate) url: String,
    /// Samples the target accepted, from the queue or read back from the store.
    pub(crate) sent_samples: u64,
    /// Of those, samples read back from the store while catching up.
    pub(crate) backfilled_samples: u64,
    /// Requests that failed for good: all their tries failed (their samples are read back
    /// from the store later), or the target refused them (their samples are skipped).
    pub(crate) failed_batches: u64,
    /// Samples in those requests.
    pub(crate) failed_samples: u64,
    /// Samples that left a full queue and that the store no longer held when the target
    /// caught up (retention had removed them): never sent.
    pub(crate) dropped_samples: u64,
    /// Samples waiting now.
    pub(crate) queued_samples: u64,
}

/// Where a writer reads back what a target missed, and keeps the targets' watermarks.
#[derive(Clone)]
pub(crate) struct Source {
    pub(crate) db: Arc<Db>,
    /// `<data dir>/remote-write`: one watermark file per target.
    pub(crate) dir: PathBuf,
}

impl Source {
    /// The store in `tsdb_dir`, with the watermarks beside it in `remote-write/`.
    pub(crate) fn beside(db: Arc<Db>, tsdb_dir: &Path) -> Source {
        Source {
            db,
            dir: tsdb_dir.parent().unwrap_or(tsdb_dir).join("remote-write"),
        }
    }
}

/// Sends stored samples to remote-write targets.
pub(crate) struct RemoteWriter {
    targets: Vec<Arc<Handle>>,
    policy: Policy,
    client: HttpsClient,
    source: Source,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RemoteWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteWriter")
            .field("targets", &self.targets.len())
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// What the writer and its tasks share: the events and the environment they must name.
struct Shared {
    events: Arc<dyn EventSink>,
    /// The environment, learnt from the `env` label of the first samples pushed: `start`
    /// is not told it, and every event must name one to appear in the timeline.
    env: OnceLock<String>,
    /// Messages waiting for the environment to be known.
    pending: Mutex<Vec<String>>,
}

impl Shared {
    fn report(&self, message: String) {
        tracing::debug!("remote write: {message}");
        match self.env.get() {
            Some(env) => self.events.emit(failure_event(env, message)),
            None => lock(&self.pending).push(message),
        }
    }

    fn learn_env(&self, batch: &[(Labels, Sample)]) {
        if self.env.get().is_none()
            && let Some(env) = batch.iter().find_map(|(labels, _)| labels.get("env"))
        {
            let _ = self.env.set(env.to_string());
        }
        if let Some(env) = self.env.get() {
            let pending = std::mem::take(&mut *lock(&self.pending));
            for message in pending {
                self.events.emit(failure_event(env, message));
            }
        }
    }
}

/// The locks here are never held across a panic-prone call; poisoned data is still whole.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// === impl RemoteWriter ===

impl RemoteWriter {
    /// Starts one sender task per target (on the current tokio runtime).
    pub(crate) fn start(
        targets: Vec<RemoteWrite>,
        events: Arc<dyn EventSink>,
        source: Source,
    ) -> RemoteWriter {
        RemoteWriter::start_with(targets, events, source, Policy::default())
    }

    fn start_with(
        targets: Vec<RemoteWrite>,
        events: Arc<dyn EventSink>,
        source: Source,
        policy: Policy,
    ) -> RemoteWriter {
        RemoteWriter::start_with_client(targets, events, source, policy, https_client(None))
    }

    fn start_with_client(
        targets: Vec<RemoteWrite>,
        events: Arc<dyn EventSink>,
        source: Source,
        policy: Policy,
        client: HttpsClient,
    ) -> RemoteWriter {
        let shared = Arc::new(Shared {
            events,
            env: OnceLock::new(),
            pending: Mutex::new(Vec::new()),
        });
        let mut writer = RemoteWriter {
            targets: Vec::new(),
            policy,
            client,
            source,
            shared,
        };
        writer.targets = targets
            .into_iter()
            .filter_map(|spec| writer.start_target(spec))
            .collect();
        writer
    }

    /// A writer for `targets` that takes over this one's targets whose URL and timeout did
    /// not change (their queue, watermark and task go on as they were), and starts the others.
    /// Targets left out stop when the last writer holding them is dropped.
    pub(crate) fn replaced_by(
        &self,
        targets: Vec<RemoteWrite>,
        events: Arc<dyn EventSink>,
    ) -> RemoteWriter {
        let env = OnceLock::new();
        if let Some(known) = self.shared.env.get() {
            let _ = env.set(known.clone());
        }
        let mut writer = RemoteWriter {
            targets: Vec::new(),
            policy: self.policy.clone(),
            client: self.client.clone(),
            source: self.source.clone(),
            shared: Arc::new(Shared {
                events,
                env,
                pending: Mutex::new(Vec::new()),
            }),
        };
        writer.targets = targets
            .into_iter()
            .filter_map(|spec| match self.targets.iter().find(|t| t.spec == spec) {
                Some(kept) => Some(kept.clone()),
                None => writer.start_target(spec),
            })
            .collect();
        writer
    }

    /// Checks a target, reads its watermark and starts its task; `None` when it is refused.
    fn start_target(&self, spec: RemoteWrite) -> Option<Arc<Handle>> {
        let uri = match parse_url(&spec.url) {
            Ok(uri) => uri,
            Err(e) => {
                self.shared.report(e.to_string());
                return None;
            }
        };
        let handle = match tokio::runtime::Handle::try_current() {
            Ok(handle) => handle,
            // Only a caller outside any runtime gets here, which is tandem's bug.
            Err(e) => {
                tracing::error!("remote write is off: no async runtime to run it ({e})");
                return None;
            }
        };
        let url = redact(&spec.url);
        let file = watermark::file_for(&self.source.dir, &url);
        let now = now_ms();
        // A new target starts from now, as Prometheus does: it does not get the whole
        // retention at once. One that has a watermark catches up from it.
        let (acked_through, behind) = match watermark::read(&file) {
            Ok(Some(t)) => (t, true),
            Ok(None) => (now, false),
            Err(reason) => {
                let message = format!(
                    "remote write to '{url}': its watermark file '{}' cannot be read ({reason}); it starts from now, and samples stored before are not sent to it",
                    file.display()
                );
                self.shared.report(message);
                (now, false)
            }
        };
        let target = Arc::new(Target::new(url, file, acked_through, behind));
        if !behind {
            // Written at once, so a server stopped before the first answer catches up from
            // here rather than from its next start.
            target.persist(true, self.policy.persist_interval);
        }
        let (stop, stopped) = watch::channel(());
        handle.spawn(
            Sender {
                target: target.clone(),
                uri,
                timeout: spec.timeout.0,
                client: self.client.clone(),
                policy: self.policy.clone(),
                shared: self.shared.clone(),
                db: self.source.db.clone(),
                stopped,
                seam: None,
                hasher: RandomState::new(),
                newest_acked: acked_through,
                fresh: !behind && self.source.db.stats().min_t.is_none(),
            }
            .run(),
        );
        Some(Arc::new(Handle {
            spec,
            target,
            persist_interval: self.policy.persist_interval,
            _stop: stop,
        }))
    }

    /// Queues a batch for every target; never blocks (a full queue lets its oldest samples
    /// go, and the target reads them back from the store).
    pub(crate) fn push(&self, batch: &[(Labels, Sample)]) {
        self.shared.learn_env(batch);
        if batch.is_empty() {
            return;
        }
        for handle in &self.targets {
            handle.target.enqueue(batch, self.policy.capacity);
        }
    }

    /// Per-target counters, in the order of `[monitoring] remote_write` (refused targets
    /// left out), for tandem's own `/metrics`.
    pub(crate) fn stats(&self) -> Vec<TargetStats> {
        self.targets.iter().map(|h| h.target.stats()).collect()
    }
}

/// Checks a target URL once, at start.
fn parse_url(url: &str) -> Result<Uri, TargetError> {
    let bad = |reason: String| TargetError::BadUrl {
        url: redact(url),
        reason,
    };
    let uri: Uri = url
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| bad(e.to_string()))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(bad("it does not start with http:// or https://".to_string())),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("it names no host".to_string()));
    }
    Ok(uri)
}

/// The URL without `user:password@`, for messages and labels (never log secrets).
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

fn failure_event(env: &str, message: String) -> Event {
    Event {
        time_ms: now_ms(),
        env: env.to_string(),
        kind: EventKind::RemoteWriteFailed,
        service: None,
        instance: None,
        revision: None,
        who: None,
        message,
    }
}

/// A time for messages: RFC 3339 in UTC, to the millisecond.
fn show_time(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

// === impl Handle ===

/// A writer's hold on one target: the last one dropped stops the target's task and writes
/// its watermark one last time.
struct Handle {
    spec: RemoteWrite,
    target: Arc<Target>,
    persist_interval: Duration,
    /// Dropping this sender ends the target's task.
    _stop: watch::Sender<()>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.target.persist(true, self.persist_interval);
    }
}

// === impl Target ===

/// One target's queue, watermark and counters, shared by `push`, the target's task and its
/// handles.
struct Target {
    url: String,
    file: PathBuf,
    queue: Mutex<Queue>,
    /// Apart from the queue, so that a slow disk never holds up `push`.
    mark: Mutex<Mark>,
    wake: Notify,
    sent_samples: AtomicU64,
    backfilled_samples: AtomicU64,
    failed_batches: AtomicU64,
    failed_samples: AtomicU64,
    dropped_samples: AtomicU64,
}

/// The in-memory queue and whether it still holds everything the target has not got.
struct Queue {
    samples: VecDeque<(Labels, Sample)>,
    /// The queue no longer holds everything since the watermark: the target reads from the
    /// store until it has caught up.
    behind: bool,
    /// Samples left the queue since the store was last read, so the catch-up must go on.
    overflowed: bool,
    /// The oldest sample time that left the queue since the store was last read: the
    /// watermark must stay below it.
    overflowed_from: Option<i64>,
    /// Samples that left the queue, by minute of their time, until the catch-up reads past
    /// them: those the store no longer holds by then are counted as dropped.
    overflow_minutes: VecDeque<(i64, u64)>,
}

/// The watermark: in memory, and what its file says.
struct Mark {
    acked_through: i64,
    persisted: Option<i64>,
    last_write: Option<Instant>,
}

impl Target {
    fn new(url: String, file: PathBuf, acked_through: i64, behind: bool) -> Target {
        Target {
            url,
            file,
            queue: Mutex::new(Queue {
                samples: VecDeque::new(),
                behind,
                overflowed: false,
                overflowed_from: None,
                overflow_minutes: VecDeque::new(),
            }),
            mark: Mutex::new(Mark {
                acked_through,
                persisted: behind.then_some(acked_through),
                last_write: None,
            }),
            wake: Notify::new(),
            sent_samples: AtomicU64::new(0),
            backfilled_samples: AtomicU64::new(0),
            failed_batches: AtomicU64::new(0),
            failed_samples: AtomicU64::new(0),
            dropped_samples: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        lock(&self.queue)
    }

    /// Appends `batch`; when over `capacity`, the oldest samples leave the queue and the
    /// target is marked behind: it reads them back from the store before it sends from the
    /// queue again.
    fn enqueue(&self, batch: &[(Labels, Sample)], capacity: usize) {
        // Of a batch larger than the whole queue only the tail could survive.
        let skip = batch.len().saturating_sub(capacity);
        let mut queue = self.lock();
        for (_, sample) in &batch[..skip] {
            queue.overflow(sample.t);
        }
        queue.samples.extend(batch[skip..].iter().cloned());
        while queue.samples.len() > capacity {
            if let Some((_, sample)) = queue.samples.pop_front() {
                queue.overflow(sample.t);
            }
        }
        drop(queue);
        self.wake.notify_one();
    }

    fn len(&self) -> usize {
        self.lock().samples.len()
    }

    fn is_behind(&self) -> bool {
        self.lock().behind
    }

    fn take(&self, max: usize) -> Vec<(Labels, Sample)> {
        let mut queue = self.lock();
        let n = queue.samples.len().min(max);
        queue.samples.drain(..n).collect()
    }

    fn watermark(&self) -> i64 {
        lock(&self.mark).acked_through
    }

    fn set_watermark(&self, t: i64) {
        let mut mark = lock(&self.mark);
        mark.acked_through = mark.acked_through.max(t);
    }

    /// Writes the watermark file when it changed and `interval` has passed since the last
    /// write, or at once when `now` is set. A failed write is logged and tried again next
    /// time: the file is then older than it could be, which costs resending, never loss.
    fn persist(&self, now: bool, interval: Duration) {
        let mut mark = lock(&self.mark);
        if mark.persisted == Some(mark.acked_through) {
            return;
        }
        if !now
            && mark
                .last_write
                .is_some_and(|last| last.elapsed() < interval)
        {
            return;
        }
        mark.last_write = Some(Instant::now());
        match watermark::write(&self.file, &self.url, mark.acked_through) {
            Ok(()) => mark.persisted = Some(mark.acked_through),
            Err(e) => tracing::error!(
                "cannot write the remote-write watermark '{}' of '{}': {e}",
                self.file.display(),
                watermark::shown(&self.url)
            ),
        }
    }

    fn stats(&self) -> TargetStats {
        TargetStats {
            url: self.url.clone(),
            sent_samples: self.sent_samples.load(Ordering::Relaxed),
            backfilled_samples: self.backfilled_samples.load(Ordering::Relaxed),
            failed_batches: self.failed_batches.load(Ordering::Relaxed),
            failed_samples: self.failed_samples.load(Ordering::Relaxed),
            dropped_samples: self.dropped_samples.load(Ordering::Relaxed),
            queued_samples: self.len() as u64,
        }
    }
}

impl Queue {
    fn overflow(&mut self, t: i64) {
        self.behind = true;
        self.overflowed = true;
        self.overflowed_from = Some(self.overflowed_from.map_or(t, |f| f.min(t)));
        let minute = t.div_euclid(60_000);
        match self.overflow_minutes.back_mut() {
            Some((m, count)) if *m == minute => *count += 1,
            _ => self.overflow_minutes.push_back((minute, 1)),
        }
    }

    /// Counts the samples that left the queue in minutes wholly before `oldest` (the store's
    /// oldest sample) and forgets them.
    fn lost_before(&mut self, oldest: i64) -> u64 {
        let mut lost = 0;
        self.overflow_minutes.retain(|(minute, count)| {
            let gone = (minute + 1) * 60_000 <= oldest;
            if gone {
                lost += count;
            }
            !gone
        });
        lost
    }
}

// === impl Sender ===

/// One target's task: waits for samples, batches, sends, retries, reports, and catches up
/// from the store when it is behind.
struct Sender {
    target: Arc<Target>,
    uri: Uri,
    timeout: Duration,
    client: HttpsClient,
    policy: Policy,
    shared: Arc<Shared>,
    db: Arc<Db>,
    stopped: watch::Receiver<()>,
    /// After a catch-up, until the queue has been emptied once: the newest time sent of each
    /// series (by hash of its labels), so queued samples the catch-up already sent are not
    /// sent again (a receiver refuses a series' samples out of order).
    seam: Option<HashMap<u64, i64>>,
    hasher: RandomState,
    /// The newest sample time the target accepted from the queue.
    newest_acked: i64,
    /// A new target started over an empty store: until its first sample is accepted, the
    /// store's oldest sample being newer than the watermark is no loss.
    fresh: bool,
}

/// What became of one request after its tries.
enum Outcome {
    Accepted,
    /// Refused for good (a 4xx other than 429): skipped.
    Refused,
    /// Every try failed: to be read back from the store.
    Unsent,
}

impl Sender {
    async fn run(mut self) {
        let mut reporter = FailureReporter::new(self.policy.event_interval);
        while self.step(&mut reporter).await.is_ok() {
            self.target.persist(false, self.policy.persist_interval);
        }
    }

    /// One batch from the queue, or one catch-up; `Err` when the task is to end.
    async fn step(&mut self, reporter: &mut FailureReporter) -> Result<(), Stopped> {
        let mut stopped = self.stopped.clone();
        if self.target.is_behind() {
            self.seam = None;
            return self.catch_up(reporter).await;
        }
        if self.target.len() == 0 {
            tokio::select! {
                _ = self.target.wake.notified() => return Ok(()),
                _ = stopped.changed() => return Err(Stopped),
            }
        }
        // Something is queued: give the batch a moment to fill, unless it is full.
        let deadline = Instant::now() + self.policy.batch_deadline;
        while self.target.len() < self.policy.max_per_send && !self.target.is_behind() {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                _ = self.target.wake.notified() => {}
                _ = stopped.changed() => return Err(Stopped),
            }
        }
        // Samples left the queue meanwhile: they go first, from the store.
        if self.target.is_behind() {
            return Ok(());
        }
        let mut batch = self.target.take(self.policy.max_per_send);
        if let Some(seam) = &self.seam {
            let hasher = &self.hasher;
            batch.retain(|(labels, sample)| {
                seam.get(&hasher.hash_one(labels))
                    .is_none_or(|&sent| sample.t > sent)
            });
            if self.target.len() == 0 {
                self.seam = None;
            }
        }
        let Some(newest) = batch.iter().map(|(_, s)| s.t).max() else {
            return Ok(());
        };
        let outcome = self
            .send(batch.iter().map(|(l, s)| (l, *s)), batch.len(), reporter)
            .await?;
        match outcome {
            Outcome::Accepted | Outcome::Refused => {
                self.fresh = false;
                self.newest_acked = self.newest_acked.max(newest);
                // Everything up to the newest sample accepted, short of what is still queued
                // or left the queue (late-stamped samples can be queued behind newer ones).
                let queue = self.target.lock();
                let mut through = self.newest_acked;
                if let Some(oldest) = queue.samples.iter().map(|(_, s)| s.t).min() {
                    through = through.min(oldest - 1);
                }
                if let Some(from) = queue.overflowed_from {
                    through = through.min(from - 1);
                }
                drop(queue);
                self.target.set_watermark(through);
            }
            Outcome::Unsent => {
                // The store has them: read them back once the target answers again.
                let mut queue = self.target.lock();
                queue.behind = true;
            }
        }
        Ok(())
    }

    /// Reads everything after the watermark back from the store, a chunk of time at a time,
    /// and sends it oldest first; returns once it reached the present without the queue
    /// losing samples meanwhile, so the queue carries on from there.
    async fn catch_up(&mut self, reporter: &mut FailureReporter) -> Result<(), Stopped> {
        let span = i64::try_from(self.policy.catch_up_span.as_millis())
            .unwrap_or(i64::MAX)
            .max(1);
        let mut seen: HashMap<u64, i64> = HashMap::new();
        loop {
            let mut from = self.target.watermark();
            let now = now_ms();
            let oldest = self.db.stats().min_t;
            {
                let mut queue = self.target.lock();
                if oldest.is_none() {
                    // Nothing stored: nothing to read back; what comes next is queued.
                    from = from.max(now);
                    self.target.set_watermark(from);
                } else if let Some(oldest) = oldest.filter(|&oldest| oldest > from + 1) {
                    if self.fresh {
                        // The store began after the target did: nothing is missing.
                        from = oldest - 1;
                        self.target.set_watermark(from);
                    } else {
                        let lost = queue.lost_before(oldest);
                        self.target
                            .dropped_samples
                            .fetch_add(lost, Ordering::Relaxed);
                        drop(queue);
                        self.shared.report(format!(
                        "remote write to '{}' resumes from {}: the store no longer holds the samples from {} to then, which the target has not received",
                        self.target.url,
                        show_time(oldest),
                        show_time(from + 1)
                    ));
                        from = oldest - 1;
                        self.target.set_watermark(from);
                        queue = self.target.lock();
                    }
                }
                queue.overflowed = false;
                queue.overflowed_from = None;
            }
            let end = from.saturating_add(span).min(now);
            let db = self.db.clone();
            let selected =
                tokio::task::spawn_blocking(move || db.select(&[], from.saturating_add(1), end))
                    .await;
            let series = match selected {
                Ok(Ok(series)) => series,
                Ok(Err(e)) => {
                    self.shared.report(format!(
                        "remote write to '{}' cannot read the samples after {} from the store: {e}",
                        self.target.url,
                        show_time(from)
                    ));
                    self.pause().await?;
                    continue;
                }
                Err(e) => {
                    tracing::error!("remote write: reading the store failed: {e}");
                    self.pause().await?;
                    continue;
                }
            };
            // Oldest first across series: (time, series, index of the sample).
            let mut order: Vec<(i64, u32, u32)> = series
                .iter()
                .enumerate()
                .flat_map(|(i, s)| {
                    s.samples
                        .iter()
                        .enumerate()
                        .map(move |(j, x)| (x.t, i as u32, j as u32))
                })
                .collect();
            order.sort_unstable();
            let mut complete = true;
            for (k, batch) in order.chunks(self.policy.max_per_send).enumerate() {
                let entries = batch.iter().map(|&(_, i, j)| {
                    let s = &series[i as usize];
                    (&s.labels, s.samples[j as usize])
                });
                match self.send(entries, batch.len(), reporter).await? {
                    Outcome::Accepted => {
                        self.target
                            .backfilled_samples
                            .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    }
                    Outcome::Refused => {}
                    Outcome::Unsent => {
                        complete = false;
                        break;
                    }
                }
                for &(t, i, _) in batch {
                    let key = self.hasher.hash_one(&series[i as usize].labels);
                    let newest = seen.entry(key).or_insert(t);
                    *newest = (*newest).max(t);
                }
                // Samples of one time may straddle two requests.
                let through = order
                    .get((k + 1) * self.policy.max_per_send)
                    .map_or(end, |next| next.0 - 1);
                self.target.set_watermark(through);
                self.target.persist(false, self.policy.persist_interval);
            }
            if !complete {
                self.pause().await?;
                continue;
            }
            self.target.set_watermark(end);
            self.target.persist(false, self.policy.persist_interval);
            if end >= now {
                let mut queue = self.target.lock();
                if !queue.overflowed {
                    // Caught up: what left the queue was all read back.
                    queue.behind = false;
                    queue.overflow_minutes.clear();
                    drop(queue);
                    self.newest_acked = end;
                    self.fresh = false;
                    self.seam = Some(seen);
                    return Ok(());
                }
            }
        }
    }

    /// Waits before the next try of a target that failed every try.
    async fn pause(&self) -> Result<(), Stopped> {
        let mut stopped = self.stopped.clone();
        tokio::select! {
            _ = tokio::time::sleep(self.policy.max_backoff) => Ok(()),
            _ = stopped.changed() => Err(Stopped),
        }
    }

    /// Encodes and sends one request with its retries, and counts and reports the outcome.
    async fn send<'a>(
        &self,
        entries: impl Iterator<Item = (&'a Labels, Sample)>,
        samples: usize,
        reporter: &mut FailureReporter,
    ) -> Result<Outcome, Stopped> {
        let body = Bytes::from(encode(entries));
        let mut stopped = self.stopped.clone();
        // A stopped target starts no new try: the stop is looked at first.
        let result = tokio::select! {
            biased;
            _ = stopped.changed() => return Err(Stopped),
            result = self.send_with_retries(body) => result,
        };
        match result {
            Ok(()) => {
                self.target
                    .sent_samples
                    .fetch_add(samples as u64, Ordering::Relaxed);
                tracing::debug!(url = %self.target.url, samples, "remote write sent");
                Ok(Outcome::Accepted)
            }
            Err(failure) => {
                self.target.failed_batches.fetch_add(1, Ordering::Relaxed);
                self.target
                    .failed_samples
                    .fetch_add(samples as u64, Ordering::Relaxed);
                let outcome = if failure.error.retryable() {
                    Outcome::Unsent
                } else {
                    Outcome::Refused
                };
                if let Some(message) =
                    reporter.failed(&self.target.url, &failure, samples, Instant::now())
                {
                    self.shared.report(message);
                }
                Ok(outcome)
            }
        }
    }

    async fn send_with_retries(&self, body: Bytes) -> Result<(), Failure> {
        let mut backoff = self.policy.min_backoff;
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.send_once(body.clone()).await {
                Ok(()) => return Ok(()),
                Err(error) if error.retryable() && attempts < self.policy.max_attempts => {
                    tracing::debug!(url = %self.target.url, "remote write failed, retrying: {error}");
                    // Jitter in [backoff/2, backoff] keeps several servers that lost the same
                    // receiver from coming back in lockstep.
                    let half = backoff / 2;
                    let jitter = Duration::from_millis(fastrand::u64(
                        0..=u64::try_from(half.as_millis()).unwrap_or(u64::MAX),
                    ));
                    tokio::time::sleep(half + jitter).await;
                    backoff = (backoff * 2).min(self.policy.max_backoff);
                }
                Err(error) => return Err(Failure { error, attempts }),
            }
        }
    }

    async fn send_once(&self, body: Bytes) -> Result<(), SendError> {
        let request = hyper::Request::post(self.uri.clone())
            .header(CONTENT_ENCODING, "snappy")
            .header(CONTENT_TYPE, "application/x-protobuf")
            .header("X-Prometheus-Remote-Write-Version", PROTOCOL_VERSION)
            .header(
                USER_AGENT,
                HeaderValue::from_static(concat!("tandem/", env!("CARGO_PKG_VERSION"))),
            )
            .body(Full::new(body))
            .map_err(|e| SendError::Request(format!("cannot build the request: {e}")))?;
        exchange(&self.client, request, self.timeout).await
    }
}

// === impl FailureReporter ===

/// Turns failures into at most one event per interval, counting the ones in between, so a
/// dead target fills neither the timeline nor the log.
#[derive(Debug)]
struct FailureReporter {
    interval: Duration,
    last_report: Option<Instant>,
    batches_since: u64,
    samples_since: u64,
}

impl FailureReporter {
    fn new(interval: Duration) -> FailureReporter {
        FailureReporter {
            interval,
            last_report: None,
            batches_since: 0,
            samples_since: 0,
        }
    }

    /// Counts a failed batch; returns the event message when one is due.
    fn failed(
        &mut self,
        url: &str,
        failure: &Failure,
        samples: usize,
        now: Instant,
    ) -> Option<String> {
        self.batches_since += 1;
        self.samples_since += samples as u64;
        if self
            .last_report
            .is_some_and(|last| now.duration_since(last) < self.interval)
        {
            return None;
        }
        let since = if self.last_report.is_some() {
            "since the last report"
        } else {
            "so far"
        };
        let attempts = match failure.attempts {
            1 => "1 attempt".to_string(),
            n => format!("{n} attempts"),
        };
        let batches = match self.batches_since {
            1 => "1 batch".to_string(),
            n => format!("{n} batches"),
        };
        let message = format!(
            "remote write to '{url}' failed after {attempts}: {}; {batches} ({} samples) not delivered {since}",
            failure.error, self.samples_since
        );
        self.last_report = Some(now);
        self.batches_since = 0;
        self.samples_since = 0;
        Some(message)
    }
}

// === encoding ===

/// Remote write 1.0's messages (prometheus/prompb `remote.proto` and `types.proto`),
/// written out by hand: there is no protoc here, and these are all the protocol needs.
mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct WriteRequest {
        #[prost(message, repeated, tag = "1")]
        pub(super) timeseries: Vec<TimeSeries>,
        /// Not sent yet: tandem's metadata is served by `/api/v1/metadata` instead.
        #[prost(message, repeated, tag = "3")]
        pub(super) metadata: Vec<MetricMetadata>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct TimeSeries {
        /// Sorted by name, names unique.
        #[prost(message, repeated, tag = "1")]
        pub(super) labels: Vec<Label>,
        /// Oldest first.
        #[prost(message, repeated, tag = "2")]
        pub(super) samples: Vec<Sample>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Label {
        #[prost(string, tag = "1")]
        pub(super) name: String,
        #[prost(string, tag = "2")]
        pub(super) value: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Sample {
        /// Declared `optional` (same bytes on the wire) so that `-0.0` is sent: proto3 leaves
        /// out a plain field equal to `0.0`, which `-0.0` compares equal to, and the sign
        /// would be lost. `None` is `+0.0`.
        #[prost(double, optional, tag = "1")]
        pub(super) value: Option<f64>,
        /// Milliseconds since the Unix epoch.
        #[prost(int64, tag = "2")]
        pub(super) timestamp: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct MetricMetadata {
        /// `MetricType`: 0 unknown, 1 counter, 2 gauge, 3 histogram, 4 gaugehistogram,
        /// 5 summary, 6 info, 7 stateset.
        #[prost(int32, tag = "1")]
        pub(super) r#type: i32,
        #[prost(string, tag = "2")]
        pub(super) metric_family_name: String,
        #[prost(string, tag = "4")]
        pub(super) help: String,
        #[prost(string, tag = "5")]
        pub(super) unit: String,
    }
}

/// One request body: samples grouped by series (first appearance order, each series' samples
/// in queue order, which is time order), protobuf-encoded, snappy-compressed (block format,
/// not the framed one, as the protocol requires).
fn encode<'a>(batch: impl IntoIterator<Item = (&'a Labels, Sample)>) -> Vec<u8> {
    use prost::Message;
    let mut index: HashMap<&Labels, usize> = HashMap::new();
    let mut timeseries: Vec<proto::TimeSeries> = Vec::new();
    for (labels, sample) in batch {
        let i = *index.entry(labels).or_insert_with(|| {
            timeseries.push(proto::TimeSeries {
                labels: labels
                    .iter()
                    .map(|(name, value)| proto::Label {
                        name: name.to_string(),
                        value: value.to_string(),
                    })
                    .collect(),
                samples: Vec::new(),
            });
            timeseries.len() - 1
        });
        timeseries[i].samples.push(proto::Sample {
            value: (sample.v.to_bits() != 0).then_some(sample.v),
            timestamp: sample.t,
        });
    }
    let request = proto::WriteRequest {
        timeseries,
        metadata: Vec::new(),
    };
    let raw = request.encode_to_vec();
    // Compressing a buffer we built cannot fail short of a body over 4 GiB, which a batch
    // of at most a few thousand samples never is; an empty body would be refused loudly.
    snap::raw::Encoder::new()
        .compress_vec(&raw)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    //! The sender against a real Prometheus (Debian package, started with its remote-write
    //! receiver on a free loopback port), plus the queue, encoding and rate limit on their own.

    use super::*;
    use http_body_util::BodyExt;
    use std::collections::BTreeMap;
    use std::process::{Child, Command, Stdio};
    use tandem_spec::units::Dur;

    /// Collects events, like the server's recorder but in memory.
    #[derive(Default)]
    struct Events(Mutex<Vec<Event>>);

    impl EventSink for Events {
        fn emit(&self, event: Event) {
            self.0.lock().unwrap().push(event);
        }
    }

    impl Events {
        fn all(&self) -> Vec<Event> {
            self.0.lock().unwrap().clone()
        }
    }

    fn fast_policy() -> Policy {
        Policy {
            capacity: 10_000,
            max_per_send: 2_000,
            batch_deadline: Duration::from_millis(50),
            max_attempts: 3,
            min_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(100),
            event_interval: Duration::from_secs(60),
            catch_up_span: Duration::from_secs(60),
            persist_interval: Duration::from_millis(100),
        }
    }

    fn target(url: &str) -> RemoteWrite {
        RemoteWrite {
            url: url.to_string(),
            timeout: Dur(Duration::from_secs(10)),
        }
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn series(pairs: &[(&str, &str)]) -> Labels {
        Labels::new(pairs.iter().copied())
    }

    /// Polls `check` until it returns `Some`, or fails the test with `what` at `deadline`.
    async fn eventually<T>(
        what: &str,
        timeout: Duration,
        mut check: impl AsyncFnMut() -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(value) = check().await {
                return value;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A Prometheus that is killed when the test ends, however it ends.
    struct Prometheus {
        child: Child,
        port: u16,
        dir: tempfile::TempDir,
    }

    impl Drop for Prometheus {
        fn drop(&mut self) {
            self.stop();
        }
    }

    impl Prometheus {
        /// `None` (with the reason printed) when the binary is not installed; `scripts/test`
        /// installs it.
        async fn start() -> Option<Prometheus> {
            if Command::new("prometheus")
                .arg("--version")
                .output()
                .is_err()
            {
                println!(
                    "skipped: the `prometheus` binary is not installed (apt-get install prometheus)"
                );
                return None;
            }
            let dir = tempfile::tempdir().unwrap();
            let config = dir.path().join("prometheus.yml");
            std::fs::write(&config, "global:\n  scrape_interval: 15s\n").unwrap();
            let port = free_port();
            let child = Prometheus::spawn(dir.path(), port);
            let mut prometheus = Prometheus { child, port, dir };
            prometheus.wait_ready().await;
            Some(prometheus)
        }

        fn spawn(dir: &Path, port: u16) -> Child {
            Command::new("prometheus")
                .arg(format!(
                    "--config.file={}",
                    dir.join("prometheus.yml").display()
                ))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--web.enable-remote-write-receiver")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        }

        /// Kills it: its port refuses connections until [`Prometheus::restart`].
        fn stop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }

        /// Starts it again on the same port, over the same data.
        async fn restart(&mut self) {
            self.stop();
            self.child = Prometheus::spawn(self.dir.path(), self.port);
            self.wait_ready().await;
        }

        async fn wait_ready(&mut self) {
            let ready = format!("http://127.0.0.1:{}/-/ready", self.port);
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(Some(status)) = self.child.try_wait() {
                    panic!("prometheus exited before it was ready: {status}");
                }
                if get(&ready).await.is_some_and(|(status, _)| status == 200) {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "prometheus was not ready within 30 s"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }

        fn write_url(&self) -> String {
            format!("http://127.0.0.1:{}/api/v1/write", self.port)
        }

        /// Every sample Prometheus holds for `selector` in the last hour, by label set, with
        /// each value's bits.
        async fn samples(&self, selector: &str) -> Vec<(Labels, Vec<(i64, u64)>)> {
            let url = format!(
                "http://127.0.0.1:{}/api/v1/query?query={}",
                self.port,
                percent_encode(&format!("{selector}[1h]"))
            );
            let Some((200, body)) = get(&url).await else {
                return Vec::new();
            };
            let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
            let mut found = Vec::new();
            for item in answer["data"]["result"]
                .as_array()
                .cloned()
                .unwrap_or_default()
            {
                let labels = Labels::new(
                    item["metric"]
                        .as_object()
                        .unwrap()
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string())),
                );
                let values = item["values"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|pair| {
                        let t = (pair[0].as_f64().unwrap() * 1000.0).round() as i64;
                        let v: f64 = pair[1].as_str().unwrap().parse().unwrap();
                        (t, v.to_bits())
                    })
                    .collect();
                found.push((labels, values));
            }
            found.sort_by(|a, b| a.0.cmp(&b.0));
            found
        }
    }

    fn percent_encode(text: &str) -> String {
        text.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    }

    async fn get(url: &str) -> Option<(u16, String)> {
        let client = https_client(None);
        let response = client.get(url.parse().ok()?).await.ok()?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.ok()?.to_bytes();
        Some((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// A store in a temporary folder, as the server's: samples go into it and then to the
    /// writer, as `Monitor::store` does.
    struct Store {
        dir: tempfile::TempDir,
        db: Arc<Db>,
        last_t: Mutex<i64>,
    }

    impl Store {
        fn new() -> Store {
            let dir = tempfile::tempdir().unwrap();
            let db = Db::open(&dir.path().join("tsdb"), tandem_tsdb::DbOptions::default()).unwrap();
            Store {
                dir,
                db: Arc::new(db),
                last_t: Mutex::new(i64::MIN),
            }
        }

        fn source(&self) -> Source {
            Source::beside(self.db.clone(), &self.dir.path().join("tsdb"))
        }

        fn watermark_dir(&self) -> PathBuf {
            self.dir.path().join("remote-write")
        }

        /// Stores one round of three series at a new millisecond that is not in the future
        /// (as the collector's), and pushes it to `writer` if there is one. Values vary in
        /// ways only a lossless path keeps.
        async fn round(&self, writer: Option<&RemoteWriter>) -> i64 {
            let last = *self.last_t.lock().unwrap();
            let mut t = now_ms();
            while t <= last {
                tokio::time::sleep(Duration::from_millis(1)).await;
                t = now_ms();
            }
            *self.last_t.lock().unwrap() = t;
            let x = t as f64;
            let batch: Vec<(Labels, Sample)> = [
                ("rw_test_a", x / 3.0),
                ("rw_test_b", if t % 2 == 0 { -0.0 } else { f64::NAN }),
                ("rw_test_c", 1e-300 * x),
            ]
            .into_iter()
            .map(|(name, v)| {
                (
                    series(&[("__name__", name), ("env", "dev"), ("instance", "i-1")]),
                    Sample { t, v },
                )
            })
            .collect();
            self.db.append_batch(&batch).unwrap();
            if let Some(writer) = writer {
                writer.push(&batch);
            }
            t
        }

        /// Every sample the store holds from `from` on, by series, oldest first, value bits.
        fn held(&self, from: i64) -> BTreeMap<Labels, Vec<(i64, u64)>> {
            self.db
                .select(&[], from, i64::MAX)
                .unwrap()
                .into_iter()
                .map(|s| {
                    let samples = s.samples.iter().map(|x| (x.t, x.v.to_bits())).collect();
                    (s.labels, samples)
                })
                .collect()
        }
    }

    /// A remote-write receiver on a loopback port that records every sample of every
    /// request it accepts, in arrival order, and answers 503 while it is down.
    struct Receiver {
        port: u16,
        up: Arc<std::sync::atomic::AtomicBool>,
        got: Arc<Mutex<Vec<(Labels, i64, u64)>>>,
    }

    impl Receiver {
        async fn start() -> Receiver {
            use hyper::service::service_fn;
            use hyper_util::rt::TokioIo;
            use prost::Message;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
            let got: Arc<Mutex<Vec<(Labels, i64, u64)>>> = Arc::default();
            let (up2, got2) = (up.clone(), got.clone());
            tokio::spawn(async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    let (up, got) = (up2.clone(), got2.clone());
                    tokio::spawn(async move {
                        let service =
                            service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                                let (up, got) = (up.clone(), got.clone());
                                async move {
                                    let body = request.into_body().collect().await?.to_bytes();
                                    let mut response =
                                        hyper::Response::new(Full::new(Bytes::new()));
                                    if !up.load(Ordering::SeqCst) {
                                        *response.status_mut() =
                                            hyper::StatusCode::SERVICE_UNAVAILABLE;
                                        return Ok::<_, hyper::Error>(response);
                                    }
                                    let raw =
                                        snap::raw::Decoder::new().decompress_vec(&body).unwrap();
                                    let request =
                                        proto::WriteRequest::decode(raw.as_slice()).unwrap();
                                    let mut got = got.lock().unwrap();
                                    for ts in request.timeseries {
                                        let labels = Labels::new(
                                            ts.labels.into_iter().map(|l| (l.name, l.value)),
                                        );
                                        for s in ts.samples {
                                            let bits = s.value.unwrap_or(0.0).to_bits();
                                            got.push((labels.clone(), s.timestamp, bits));
                                        }
                                    }
                                    *response.status_mut() = hyper::StatusCode::NO_CONTENT;
                                    Ok(response)
                                }
                            });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tcp), service)
                            .await;
                    });
                }
            });
            Receiver { port, up, got }
        }

        fn url(&self) -> String {
            format!("http://127.0.0.1:{}/api/v1/write", self.port)
        }

        fn set_up(&self, up: bool) {
            self.up.store(up, Ordering::SeqCst);
        }

        fn count(&self) -> usize {
            self.got.lock().unwrap().len()
        }

        /// What arrived, by series, in arrival order.
        fn received(&self) -> BTreeMap<Labels, Vec<(i64, u64)>> {
            let mut by_series: BTreeMap<Labels, Vec<(i64, u64)>> = BTreeMap::new();
            for (labels, t, bits) in self.got.lock().unwrap().iter() {
                by_series
                    .entry(labels.clone())
                    .or_default()
                    .push((*t, *bits));
            }
            by_series
        }
    }

    fn total(held: &BTreeMap<Labels, Vec<(i64, u64)>>) -> usize {
        held.values().map(Vec::len).sum()
    }

    /// A policy whose queue overflows after a few rounds and whose catch-up reads the store
    /// in several chunks.
    fn small_policy() -> Policy {
        Policy {
            capacity: 20,
            max_per_send: 7,
            catch_up_span: Duration::from_millis(40),
            ..fast_policy()
        }
    }

    #[tokio::test]
    async fn a_receiver_that_was_down_gets_what_the_store_holds_once_and_in_order() {
        let store = Store::new();
        let receiver = Receiver::start().await;
        let events = Arc::new(Events::default());
        let writer = RemoteWriter::start_with(
            vec![target(&receiver.url())],
            events.clone(),
            store.source(),
            small_policy(),
        );
        let first = store.round(Some(&writer)).await;
        for _ in 0..4 {
            store.round(Some(&writer)).await;
        }
        eventually("the first rounds", Duration::from_secs(10), async || {
            (receiver.count() == 15).then_some(())
        })
        .await;
        receiver.set_up(false);
        // 40 rounds of 3 samples: six times what the queue holds.
        for _ in 0..40 {
            store.round(Some(&writer)).await;
        }
        eventually("a failed batch", Duration::from_secs(10), async || {
            (writer.stats()[0].failed_batches > 0).then_some(())
        })
        .await;
        receiver.set_up(true);
        for _ in 0..5 {
            store.round(Some(&writer)).await;
        }
        let held = store.held(first);
        eventually("every stored sample", Duration::from_secs(30), async || {
            (receiver.count() >= total(&held)).then_some(())
        })
        .await;
        assert_eq!(
            receiver.received(),
            held,
            "once each, in order, bit for bit"
        );
        let stats = writer.stats();
        assert_eq!(stats[0].sent_samples, total(&held) as u64);
        assert!(stats[0].backfilled_samples > 0, "{stats:?}");
        assert_eq!(stats[0].dropped_samples, 0);
        // The failure was reported, and nothing else.
        let events = events.all();
        assert_eq!(events.len(), 1, "{events:?}");
        assert!(events[0].message.contains("it answered 503"), "{events:?}");
    }

    #[tokio::test]
    async fn a_restarted_writer_sends_what_was_stored_but_not_acknowledged() {
        let store = Store::new();
        let receiver = Receiver::start().await;
        let url = format!(
            "http://tandem:s3cret@127.0.0.1:{}/api/v1/write",
            receiver.port
        );
        let events = Arc::new(Events::default());
        let writer = RemoteWriter::start_with(
            vec![target(&url)],
            events.clone(),
            store.source(),
            small_policy(),
        );
        let first = store.round(Some(&writer)).await;
        eventually("the first round", Duration::from_secs(10), async || {
            (receiver.count() == 3).then_some(())
        })
        .await;
        receiver.set_up(false);
        for _ in 0..10 {
            store.round(Some(&writer)).await;
        }
        eventually("a failed batch", Duration::from_secs(10), async || {
            (writer.stats()[0].failed_batches > 0).then_some(())
        })
        .await;
        // The server stops mid-outage; nothing is stored while it is down.
        drop(writer);
        let files: Vec<PathBuf> = std::fs::read_dir(store.watermark_dir())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(files.len(), 1, "{files:?}");
        let text = std::fs::read_to_string(&files[0]).unwrap();
        assert!(
            !text.contains("s3cret") && !text.contains("tandem:"),
            "{text}"
        );
        assert!(
            text.contains(&format!("http://127.0.0.1:{}/api/v1/write", receiver.port)),
            "{text}"
        );
        assert!(!files[0].to_string_lossy().contains("s3cret"));

        receiver.set_up(true);
        let writer = RemoteWriter::start_with(
            vec![target(&url)],
            events.clone(),
            store.source(),
            small_policy(),
        );
        store.round(Some(&writer)).await;
        let held = store.held(first);
        eventually("every stored sample", Duration::from_secs(30), async || {
            (receiver.count() >= total(&held)).then_some(())
        })
        .await;
        // A request of the stopped writer that was on the wire when it stopped may reach
        // the receiver once it is back, as after a crash: those samples arrive twice (the
        // same values; Prometheus ignores such repeats). Everything else arrives once, in
        // order, bit for bit.
        let mut repeated = 0;
        let received: BTreeMap<Labels, Vec<(i64, u64)>> = receiver
            .received()
            .into_iter()
            .map(|(labels, samples)| {
                let mut once: Vec<(i64, u64)> = Vec::new();
                for sample in samples {
                    if once.contains(&sample) {
                        repeated += 1;
                    } else {
                        once.push(sample);
                    }
                }
                (labels, once)
            })
            .collect();
        assert_eq!(received, held, "every stored sample, in order, bit for bit");
        assert!(
            repeated <= small_policy().max_per_send,
            "at most the one request in flight at the stop arrives twice: {repeated} repeats"
        );
        assert!(writer.stats()[0].backfilled_samples >= 30);
        assert!(!format!("{:?}", events.all()).contains("s3cret"));
    }

    #[tokio::test]
    async fn a_new_target_starts_from_now() {
        let store = Store::new();
        let receiver = Receiver::start().await;
        // Stored before the target existed.
        for _ in 0..3 {
            store.round(None).await;
        }
        let events = Arc::new(Events::default());
        let writer = RemoteWriter::start_with(
            vec![target(&receiver.url())],
            events.clone(),
            store.source(),
            small_policy(),
        );
        // Its watermark is written at once, so a stop before the first answer loses nothing.
        assert_eq!(std::fs::read_dir(store.watermark_dir()).unwrap().count(), 1);
        let first = store.round(Some(&writer)).await;
        store.round(Some(&writer)).await;
        let held = store.held(first);
        eventually("the new rounds", Duration::from_secs(10), async || {
            (receiver.count() >= 6).then_some(())
        })
        .await;
        assert_eq!(receiver.received(), held);
        assert_eq!(writer.stats()[0].backfilled_samples, 0);
        assert!(events.all().is_empty(), "{:?}", events.all());
    }

    #[tokio::test]
    async fn a_watermark_older_than_the_store_starts_from_its_oldest_sample() {
        let store = Store::new();
        let receiver = Receiver::start().await;
        let oldest = store.round(None).await;
        for _ in 0..9 {
            store.round(None).await;
        }
        let file = watermark::file_for(&store.watermark_dir(), &receiver.url());
        let long_ago = oldest - 3 * 24 * 3_600_000;
        watermark::write(&file, &receiver.url(), long_ago).unwrap();
        let events = Arc::new(Events::default());
        let writer = RemoteWriter::start_with(
            vec![target(&receiver.url())],
            events.clone(),
            store.source(),
            small_policy(),
        );
        store.round(Some(&writer)).await;
        let held = store.held(i64::MIN);
        eventually("every stored sample", Duration::from_secs(30), async || {
            (receiver.count() >= total(&held)).then_some(())
        })
        .await;
        assert_eq!(receiver.received(), held);
        let events = eventually("the event", Duration::from_secs(10), async || {
            Some(events.all()).filter(|e| !e.is_empty())
        })
        .await;
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(
            events[0].message,
            format!(
                "remote write to '{}' resumes from {}: the store no longer holds the samples from {} to then, which the target has not received",
                receiver.url(),
                show_time(oldest),
                show_time(long_ago + 1)
            )
        );
        assert_eq!(events[0].env, "dev");
        eventually(
            "the watermark written",
            Duration::from_secs(10),
            async || (watermark::read(&file).unwrap() >= Some(oldest)).then_some(()),
        )
        .await;
    }

    #[tokio::test]
    async fn a_corrupt_watermark_is_a_warning_naming_it_and_the_target_starts_from_now() {
        let store = Store::new();
        let receiver = Receiver::start().await;
        for _ in 0..3 {
            store.round(None).await;
        }
        let file = watermark::file_for(&store.watermark_dir(), &receiver.url());
        std::fs::create_dir_all(store.watermark_dir()).unwrap();
        std::fs::write(&file, "{\"version\": 1, \"acked_thr").unwrap();
        let events = Arc::new(Events::default());
        let writer = RemoteWriter::start_with(
            vec![target(&receiver.url())],
            events.clone(),
            store.source(),
            small_policy(),
        );
        let first = store.round(Some(&writer)).await;
        let held = store.held(first);
        eventually("the new round", Duration::from_secs(10), async || {
            (receiver.count() >= 3).then_some(())
        })
        .await;
        assert_eq!(receiver.received(), held);
        let events = events.all();
        assert_eq!(events.len(), 1, "{events:?}");
        let message = &events[0].message;
        assert!(
            message.starts_with(&format!(
                "remote write to '{}': its watermark file '{}' cannot be read (",
                receiver.url(),
                file.display()
            )),
            "{message}"
        );
        assert!(
            message.ends_with("it starts from now, and samples stored before are not sent to it"),
            "{message}"
        );
        // A good watermark replaces it.
        assert!(watermark::read(&file).unwrap().is_some());
    }

    #[tokio::test]
    async fn prometheus_gets_what_the_store_holds_after_it_was_down() {
        let store = Store::new();
        let Some(mut prometheus) = Prometheus::start().await else {
            return;
        };
        let events = Arc::new(Events::default());
        let writer = RemoteWriter::start_with(
            vec![target(&prometheus.write_url())],
            events.clone(),
            store.source(),
            small_policy(),
        );
        let first = store.round(Some(&writer)).await;
        eventually("the first round", Duration::from_secs(30), async || {
            (writer.stats()[0].sent_samples == 3).then_some(())
        })
        .await;
        prometheus.stop();
        for _ in 0..30 {
            store.round(Some(&writer)).await;
        }
        eventually("a failed batch", Duration::from_secs(30), async || {
            (writer.stats()[0].failed_batches > 0).then_some(())
        })
        .await;
        prometheus.restart().await;
        store.round(Some(&writer)).await;
        let held = store.held(first);
        let got = eventually("every stored sample", Duration::from_secs(60), async || {
            let got: BTreeMap<Labels, Vec<(i64, u64)>> = prometheus
                .samples("{__name__=~\"rw_test_.*\"}")
                .await
                .into_iter()
                .collect();
            (total(&got) >= total(&held)).then_some(got)
        })
        .await;
        assert_eq!(got, held);
        let stats = writer.stats();
        assert_eq!(stats[0].sent_samples, total(&held) as u64, "{stats:?}");
        assert!(stats[0].backfilled_samples > 0, "{stats:?}");
    }

    #[tokio::test]
    async fn prometheus_receives_exact_values_and_labels() {
        let store = Store::new();
        let Some(prometheus) = Prometheus::start().await else {
            return;
        };
        let events = Arc::new(Events::default());
        let writer = RemoteWriter::start_with(
            vec![target(&prometheus.write_url())],
            events.clone(),
            store.source(),
            fast_policy(),
        );
        let now = now_ms();
        let cpu = series(&[
            ("__name__", "rw_test_cpu_seconds_total"),
            ("env", "dev"),
            ("service", "api"),
            ("instance", "api-1"),
        ]);
        let mem = series(&[
            ("__name__", "rw_test_memory_bytes"),
            ("env", "dev"),
            ("service", "web"),
            ("instance", "web-1"),
            ("revision", "3"),
        ]);
        // Three collection rounds, with values only a lossless path keeps: -0.0 keeps its
        // sign, NaN stays NaN (not a staleness marker), the infinities and tiny numbers survive.
        let rounds = [
            (now - 3000, 0.1 + 0.2, 123_456_789.0),
            (now - 2000, -0.0, f64::INFINITY),
            (now - 1000, f64::NAN, 1e-300),
        ];
        for (t, cpu_value, mem_value) in rounds {
            writer.push(&[
                (cpu.clone(), Sample { t, v: cpu_value }),
                (mem.clone(), Sample { t, v: mem_value }),
            ]);
        }
        let got = eventually(
            "both series in Prometheus",
            Duration::from_secs(30),
            async || {
                let s = prometheus.samples("{__name__=~\"rw_test_.*\"}").await;
                (s.iter().map(|(_, v)| v.len()).sum::<usize>() == 6).then_some(s)
            },
        )
        .await;
        let bits = |pick: fn(&(i64, f64, f64)) -> f64| -> Vec<(i64, u64)> {
            rounds.iter().map(|r| (r.0, pick(r).to_bits())).collect()
        };
        assert_eq!(got, vec![(cpu, bits(|r| r.1)), (mem, bits(|r| r.2))]);
        let stats = writer.stats();
        assert_eq!(stats[0].sent_samples, 6);
        assert_eq!(
            (
                stats[0].failed_batches,
                stats[0].dropped_samples,
                stats[0].queued_samples
            ),
            (0, 0, 0)
        );
        assert!(events.all().is_empty(), "{:?}", events.all());
    }

    #[tokio::test]
    async fn a_dead_target_neither_blocks_a_live_one_nor_goes_unreported() {
        let store = Store::new();
        let Some(prometheus) = Prometheus::start().await else {
            return;
        };
        let dead = format!("http://127.0.0.1:{}/api/v1/write", free_port());
        let events = Arc::new(Events::default());
        let writer = RemoteWriter::start_with(
            vec![target(&dead), target(&prometheus.write_url())],
            events.clone(),
            store.source(),
            fast_policy(),
        );
        let up = series(&[("__name__", "rw_test_up"), ("env", "staging")]);
        let now = now_ms();
        for i in 0..3 {
            let started = std::time::Instant::now();
            writer.push(&[(
                up.clone(),
                Sample {
                    t: now - 3000 + i * 1000,
                    v: i as f64,
                },
            )]);
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "push waited on a target"
            );
            // One batch per push, so the dead target fails three times.
            eventually(
                "the batch to be taken",
                Duration::from_secs(10),
                async || (writer.stats()[0].queued_samples == 0).then_some(()),
            )
            .await;
        }
        let got = eventually(
            "the samples in Prometheus",
            Duration::from_secs(30),
            async || {
                let s = prometheus.samples("rw_test_up").await;
                (s.len() == 1 && s[0].1.len() == 3).then_some(s)
            },
        )
        .await;
        assert_eq!(got[0].0, up);
        assert_eq!(
            got[0].1,
            vec![
                (now - 3000, 0.0f64.to_bits()),
                (now - 2000, 1.0f64.to_bits()),
                (now - 1000, 2.0f64.to_bits())
            ]
        );
        eventually(
            "three failed batches",
            Duration::from_secs(30),
            async || (writer.stats()[0].failed_batches == 3).then_some(()),
        )
        .await;
        let stats = writer.stats();
        assert_eq!((stats[0].failed_samples, stats[0].sent_samples), (3, 0));
        assert_eq!((stats[1].failed_batches, stats[1].sent_samples), (0, 3));
        // Three failures within a minute: one event, naming the environment and the cause.
        let events = events.all();
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].kind, EventKind::RemoteWriteFailed);
        assert_eq!(events[0].env, "staging");
        let message = &events[0].message;
        assert!(
            message.starts_with(&format!(
                "remote write to '{dead}' failed after 3 attempts: cannot reach it"
            )),
            "{message}"
        );
        assert!(
            message.ends_with("1 batch (1 samples) not delivered so far"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn a_refused_request_is_not_retried() {
        let store = Store::new();
        let Some(prometheus) = Prometheus::start().await else {
            return;
        };
        // Prometheus answers 404 here: a client error, which another try would repeat.
        let wrong = format!("http://127.0.0.1:{}/api/v1/nowrite", prometheus.port);
        let events = Arc::new(Events::default());
        let writer = RemoteWriter::start_with(
            vec![target(&wrong)],
            events.clone(),
            store.source(),
            fast_policy(),
        );
        let up = series(&[("__name__", "rw_test_up"), ("env", "dev")]);
        writer.push(&[(
            up,
            Sample {
                t: now_ms(),
                v: 1.0,
            },
        )]);
        let event = eventually("the failure event", Duration::from_secs(30), async || {
            events.all().into_iter().next()
        })
        .await;
        assert!(
            event.message.starts_with(&format!(
                "remote write to '{wrong}' failed after 1 attempt: it answered 404"
            )),
            "{}",
            event.message
        );
        assert_eq!(writer.stats()[0].failed_samples, 1);
    }

    #[tokio::test]
    async fn other_schemes_and_malformed_urls_are_reported_once_and_skipped() {
        let store = Store::new();
        let events = Arc::new(Events::default());
        let writer = RemoteWriter::start_with(
            vec![
                target("ftp://user:secret@metrics.example/api/v1/write"),
                target("http://"),
            ],
            events.clone(),
            store.source(),
            fast_policy(),
        );
        assert!(writer.stats().is_empty());
        let up = series(&[("__name__", "up"), ("env", "prod")]);
        writer.push(&[(up.clone(), Sample { t: 1, v: 1.0 })]);
        writer.push(&[(up, Sample { t: 2, v: 1.0 })]);
        let events = events.all();
        assert_eq!(events.len(), 2, "{events:?}");
        assert!(
            events
                .iter()
                .all(|e| e.env == "prod" && e.kind == EventKind::RemoteWriteFailed)
        );
        assert_eq!(
            events[0].message,
            "remote_write URL 'ftp://metrics.example/api/v1/write' is not a valid http:// or https:// URL (it does not start with http:// or https://); samples are not sent there (hint: write it like 'http://127.0.0.1:9090/api/v1/write')"
        );
        assert!(
            events[1]
                .message
                .starts_with("remote_write URL 'http://' is not a valid http:// or https:// URL"),
            "{}",
            events[1].message
        );
        assert!(!format!("{events:?}").contains("secret"));
    }

    #[tokio::test]
    async fn samples_arrive_over_https_at_a_server_whose_certificate_is_trusted() {
        let store = Store::new();
        use prost::Message;
        let (port, cert, mut bodies) = crate::delivery::tls_server().await;
        let events = Arc::new(Events::default());
        let writer = RemoteWriter::start_with_client(
            vec![target(&format!("https://127.0.0.1:{port}/api/v1/write"))],
            events.clone(),
            store.source(),
            fast_policy(),
            https_client(Some(cert)),
        );
        let up = series(&[("__name__", "up"), ("env", "prod")]);
        writer.push(&[(up, Sample { t: 1, v: 1.0 })]);
        let (path, body) = tokio::time::timeout(Duration::from_secs(10), bodies.recv())
            .await
            .expect("a request within 10s")
            .expect("the server runs");
        assert_eq!(path, "/api/v1/write");
        let raw = snap::raw::Decoder::new().decompress_vec(&body).unwrap();
        let request = proto::WriteRequest::decode(raw.as_slice()).unwrap();
        assert_eq!(request.timeseries.len(), 1);
        assert_eq!(request.timeseries[0].samples[0].timestamp, 1);
        eventually(
            "the sample counted as sent",
            Duration::from_secs(10),
            async || (writer.stats()[0].sent_samples == 1).then_some(()),
        )
        .await;
        assert!(events.all().is_empty(), "{:?}", events.all());
    }

    #[tokio::test]
    async fn an_untrusted_certificate_is_a_failure_not_a_send() {
        let store = Store::new();
        let (port, _cert, mut bodies) = crate::delivery::tls_server().await;
        let events = Arc::new(Events::default());
        let writer = RemoteWriter::start_with(
            vec![target(&format!("https://127.0.0.1:{port}/api/v1/write"))],
            events.clone(),
            store.source(),
            fast_policy(),
        );
        let up = series(&[("__name__", "up"), ("env", "prod")]);
        writer.push(&[(up, Sample { t: 1, v: 1.0 })]);
        eventually("the batch failed", Duration::from_secs(10), async || {
            (writer.stats()[0].failed_batches == 1).then_some(())
        })
        .await;
        assert!(bodies.try_recv().is_err());
    }

    #[test]
    fn a_full_queue_keeps_its_newest_samples_and_marks_the_target_behind() {
        let target = Target::new(
            "http://x".to_string(),
            PathBuf::from("/nonexistent"),
            0,
            false,
        );
        let up = series(&[("__name__", "up")]);
        let batch = |from: i64, n: i64| -> Vec<(Labels, Sample)> {
            (from..from + n)
                .map(|t| (up.clone(), Sample { t, v: t as f64 }))
                .collect()
        };
        target.enqueue(&batch(1, 3), 5);
        assert!(!target.is_behind());
        target.enqueue(&batch(4, 4), 5);
        assert!(target.is_behind());
        target.enqueue(&batch(8, 8), 5);
        let stats = target.stats();
        // Nothing is lost yet: the store holds what left the queue.
        assert_eq!((stats.dropped_samples, stats.queued_samples), (0, 5));
        let queue = target.lock();
        assert_eq!(queue.overflowed_from, Some(1));
        // The store's oldest sample is at 60 000: the ten samples before it are lost.
        drop(queue);
        assert_eq!(target.lock().lost_before(60_000), 10);
        let kept: Vec<i64> = target.take(100).iter().map(|(_, s)| s.t).collect();
        assert_eq!(kept, vec![11, 12, 13, 14, 15]);
    }

    #[test]
    fn a_body_is_snappy_protobuf_grouped_by_series() {
        use prost::Message;
        let a = series(&[("__name__", "a"), ("x", "1")]);
        let b = series(&[("__name__", "b")]);
        let stale = tandem_tsdb::stale_nan();
        let body = encode([
            (&a, Sample { t: 1, v: 1.0 }),
            (&b, Sample { t: 1, v: stale }),
            (&a, Sample { t: 2, v: -0.0 }),
            (&a, Sample { t: 3, v: 0.0 }),
        ]);
        let raw = snap::raw::Decoder::new().decompress_vec(&body).unwrap();
        let request = proto::WriteRequest::decode(raw.as_slice()).unwrap();
        let label = |name: &str, value: &str| proto::Label {
            name: name.to_string(),
            value: value.to_string(),
        };
        assert_eq!(request.timeseries.len(), 2);
        assert_eq!(
            request.timeseries[0].labels,
            vec![label("__name__", "a"), label("x", "1")]
        );
        let a_samples: Vec<(i64, u64)> = request.timeseries[0]
            .samples
            .iter()
            .map(|s| (s.timestamp, s.value.unwrap_or(0.0).to_bits()))
            .collect();
        assert_eq!(
            a_samples,
            vec![(1, 1.0f64.to_bits()), (2, (-0.0f64).to_bits()), (3, 0)]
        );
        assert_eq!(
            request.timeseries[1].samples[0].value.map(f64::to_bits),
            Some(stale.to_bits())
        );
    }

    #[test]
    fn failure_events_come_at_most_once_a_minute_with_a_count() {
        let mut reporter = FailureReporter::new(Duration::from_secs(60));
        let failure = Failure {
            error: SendError::Status {
                status: 503,
                body: String::new(),
            },
            attempts: 6,
        };
        let start = Instant::now();
        assert!(reporter.failed("http://x", &failure, 10, start).is_some());
        assert!(
            reporter
                .failed("http://x", &failure, 10, start + Duration::from_secs(30))
                .is_none()
        );
        assert!(
            reporter
                .failed("http://x", &failure, 10, start + Duration::from_secs(59))
                .is_none()
        );
        let message = reporter
            .failed("http://x", &failure, 10, start + Duration::from_secs(60))
            .unwrap();
        assert_eq!(
            message,
            "remote write to 'http://x' failed after 6 attempts: it answered 503; 3 batches (30 samples) not delivered since the last report"
        );
    }

    #[test]
    fn retries_follow_prometheus() {
        let status = |status| SendError::Status {
            status,
            body: String::new(),
        };
        assert!(status(500).retryable());
        assert!(status(503).retryable());
        assert!(status(429).retryable());
        assert!(!status(400).retryable());
        assert!(!status(404).retryable());
        assert!(SendError::Connection("refused".into()).retryable());
        assert!(SendError::Timeout(Duration::from_secs(1)).retryable());
    }
}
