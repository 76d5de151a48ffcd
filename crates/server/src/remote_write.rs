//! Prometheus remote write (1.0: protobuf `WriteRequest`, snappy block compression) of every
//! sample the server stores, to each `[monitoring] remote_write` URL: a bounded queue per
//! target, batches, retries with backoff, and a failed send that is an event and a metric,
//! never a silent drop and never a stall of collection or of the other targets.
//!
//! `push` only appends to one in-memory queue per target (dropping the oldest samples when
//! it is full) and wakes that target's task; each task batches, encodes and POSTs on its
//! own, so a slow or dead target costs memory up to its queue bound and nothing else.

use crate::delivery::{HttpsClient, SendError, exchange, https_client};
use bytes::Bytes;
use http_body_util::Full;
use hyper::Uri;
use hyper::header::{CONTENT_ENCODING, CONTENT_TYPE, HeaderValue, USER_AGENT};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tandem_api::{Event, EventKind, EventSink, now_ms};
use tandem_spec::RemoteWrite;
use tandem_tsdb::{Labels, Sample};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

/// The protocol's required version header value for remote write 1.0.
const PROTOCOL_VERSION: &str = "0.1.0";

/// How each target queues, batches and retries. [`Policy::default`] is what the server uses;
/// tests shrink the delays.
#[derive(Clone, Debug)]
struct Policy {
    /// Samples a target holds while it cannot keep up; beyond it the oldest are dropped.
    /// 10 000 is several seconds of a large environment at 1 s resolution, a few MB.
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
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            capacity: 10_000,
            max_per_send: 2_000,
            batch_deadline: Duration::from_secs(1),
            // 0.5 + 1 + 2 + 4 + 8 s of backoff: rides out a receiver's restart, and the
            // queue keeps filling meanwhile (its bound, not the retries, caps the memory).
            max_attempts: 6,
            min_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
            event_interval: Duration::from_secs(60),
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

/// What one target has done so far, for tandem's own `/metrics`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct TargetStats {
    /// The URL, without any credentials it carries.
    pub(crate) url: String,
    /// Samples the target accepted.
    pub(crate) sent_samples: u64,
    /// Requests that failed for good (after retries, or refused outright).
    pub(crate) failed_batches: u64,
    /// Samples in those requests.
    pub(crate) failed_samples: u64,
    /// Samples dropped, oldest first, because the queue was full.
    pub(crate) dropped_samples: u64,
    /// Samples waiting now.
    pub(crate) queued_samples: u64,
}

/// Sends stored samples to remote-write targets.
pub(crate) struct RemoteWriter {
    targets: Vec<Arc<Target>>,
    policy: Policy,
    events: Arc<dyn EventSink>,
    /// The environment, learnt from the `env` label of the first samples pushed: `start`
    /// is not told it, and every event must name one to appear in the timeline.
    env: Arc<OnceLock<String>>,
    /// Targets refused at start, reported once as events when the environment is known.
    refused: Mutex<Vec<TargetError>>,
    /// Dropping the writer drops this sender, which ends every target's task.
    _stop: watch::Sender<()>,
}

impl std::fmt::Debug for RemoteWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteWriter")
            .field("targets", &self.targets.len())
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

// === impl RemoteWriter ===

impl RemoteWriter {
    /// Starts one sender task per target (on the current tokio runtime).
    pub(crate) fn start(targets: Vec<RemoteWrite>, events: Arc<dyn EventSink>) -> RemoteWriter {
        RemoteWriter::start_with(targets, events, Policy::default())
    }

    fn start_with(
        targets: Vec<RemoteWrite>,
        events: Arc<dyn EventSink>,
        policy: Policy,
    ) -> RemoteWriter {
        RemoteWriter::start_with_client(targets, events, policy, https_client(None))
    }

    fn start_with_client(
        targets: Vec<RemoteWrite>,
        events: Arc<dyn EventSink>,
        policy: Policy,
        client: HttpsClient,
    ) -> RemoteWriter {
        let (stop, stopped) = watch::channel(());
        let env = Arc::new(OnceLock::new());
        let mut refused = Vec::new();
        let mut started = Vec::new();
        let runtime = tokio::runtime::Handle::try_current();
        for target in targets {
            let uri = match parse_url(&target.url) {
                Ok(uri) => uri,
                Err(e) => {
                    refused.push(e);
                    continue;
                }
            };
            let shared = Arc::new(Target::new(redact(&target.url)));
            match &runtime {
                Ok(handle) => {
                    handle.spawn(
                        Sender {
                            target: shared.clone(),
                            uri,
                            timeout: target.timeout.0,
                            client: client.clone(),
                            policy: policy.clone(),
                            events: events.clone(),
                            env: env.clone(),
                            stopped: stopped.clone(),
                        }
                        .run(),
                    );
                    started.push(shared);
                }
                // Only a caller outside any runtime gets here, which is tandem's bug.
                Err(e) => tracing::error!("remote write is off: no async runtime to run it ({e})"),
            }
        }
        RemoteWriter {
            targets: started,
            policy,
            events,
            env,
            refused: Mutex::new(refused),
            _stop: stop,
        }
    }

    /// Queues a batch for every target; never blocks (a full queue drops its oldest batch
    /// and counts it).
    pub(crate) fn push(&self, batch: &[(Labels, Sample)]) {
        if self.env.get().is_none()
            && let Some(env) = batch.iter().find_map(|(labels, _)| labels.get("env"))
        {
            let _ = self.env.set(env.to_string());
        }
        if let Some(env) = self.env.get() {
            let refused =
                std::mem::take(&mut *self.refused.lock().unwrap_or_else(|e| e.into_inner()));
            for error in refused {
                self.events.emit(failure_event(env, error.to_string()));
            }
        }
        if batch.is_empty() {
            return;
        }
        for target in &self.targets {
            target.enqueue(batch, self.policy.capacity);
        }
    }

    /// Per-target counters, in the order of `[monitoring] remote_write` (refused targets
    /// left out), for tandem's own `/metrics`.
    pub(crate) fn stats(&self) -> Vec<TargetStats> {
        self.targets.iter().map(|t| t.stats()).collect()
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

// === impl Target ===

/// One target's queue and counters, shared by `push` and the target's task.
struct Target {
    url: String,
    queue: Mutex<VecDeque<(Labels, Sample)>>,
    wake: Notify,
    sent_samples: AtomicU64,
    failed_batches: AtomicU64,
    failed_samples: AtomicU64,
    dropped_samples: AtomicU64,
}

impl Target {
    fn new(url: String) -> Target {
        Target {
            url,
            queue: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
            sent_samples: AtomicU64::new(0),
            failed_batches: AtomicU64::new(0),
            failed_samples: AtomicU64::new(0),
            dropped_samples: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(Labels, Sample)>> {
        // The lock is never held across a panic-prone call; a poisoned queue is still whole.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `batch`; when over `capacity`, the oldest samples go (newer data is worth
    /// more to a dashboard than older data the target missed anyway).
    fn enqueue(&self, batch: &[(Labels, Sample)], capacity: usize) {
        // Of a batch larger than the whole queue only the tail could survive.
        let skip = batch.len().saturating_sub(capacity);
        let mut dropped = skip;
        {
            let mut queue = self.lock();
            queue.extend(batch[skip..].iter().cloned());
            while queue.len() > capacity {
                queue.pop_front();
                dropped += 1;
            }
        }
        if dropped > 0 {
            self.dropped_samples
                .fetch_add(dropped as u64, Ordering::Relaxed);
        }
        self.wake.notify_one();
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    fn take(&self, max: usize) -> Vec<(Labels, Sample)> {
        let mut queue = self.lock();
        let n = queue.len().min(max);
        queue.drain(..n).collect()
    }

    fn stats(&self) -> TargetStats {
        TargetStats {
            url: self.url.clone(),
            sent_samples: self.sent_samples.load(Ordering::Relaxed),
            failed_batches: self.failed_batches.load(Ordering::Relaxed),
            failed_samples: self.failed_samples.load(Ordering::Relaxed),
            dropped_samples: self.dropped_samples.load(Ordering::Relaxed),
            queued_samples: self.len() as u64,
        }
    }
}

// === impl Sender ===

/// One target's task: waits for samples, batches, sends, retries, reports.
struct Sender {
    target: Arc<Target>,
    uri: Uri,
    timeout: Duration,
    client: HttpsClient,
    policy: Policy,
    events: Arc<dyn EventSink>,
    env: Arc<OnceLock<String>>,
    stopped: watch::Receiver<()>,
}

impl Sender {
    async fn run(self) {
        let mut stopped = self.stopped.clone();
        let mut reporter = FailureReporter::new(self.policy.event_interval);
        loop {
            if self.target.len() == 0 {
                tokio::select! {
                    _ = self.target.wake.notified() => continue,
                    _ = stopped.changed() => return,
                }
            }
            // Something is queued: give the batch a moment to fill, unless it is full.
            let deadline = Instant::now() + self.policy.batch_deadline;
            while self.target.len() < self.policy.max_per_send {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => break,
                    _ = self.target.wake.notified() => {}
                    _ = stopped.changed() => return,
                }
            }
            let batch = self.target.take(self.policy.max_per_send);
            if batch.is_empty() {
                continue;
            }
            let body = Bytes::from(encode(&batch));
            let result = tokio::select! {
                result = self.send_with_retries(body) => result,
                _ = stopped.changed() => return,
            };
            match result {
                Ok(()) => {
                    self.target
                        .sent_samples
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    tracing::debug!(url = %self.target.url, samples = batch.len(), "remote write sent");
                }
                Err(failure) => {
                    self.target.failed_batches.fetch_add(1, Ordering::Relaxed);
                    self.target
                        .failed_samples
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    if let Some(message) =
                        reporter.failed(&self.target.url, &failure, batch.len(), Instant::now())
                    {
                        let env = self.env.get().map(String::as_str).unwrap_or_default();
                        self.events.emit(failure_event(env, message));
                    }
                }
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
fn encode(batch: &[(Labels, Sample)]) -> Vec<u8> {
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
        _dir: tempfile::TempDir,
    }

    impl Drop for Prometheus {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
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
            let child = Command::new("prometheus")
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--web.enable-remote-write-receiver")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut prometheus = Prometheus {
                child,
                port,
                _dir: dir,
            };
            let ready = format!("http://127.0.0.1:{port}/-/ready");
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(Some(status)) = prometheus.child.try_wait() {
                    panic!("prometheus exited before it was ready: {status}");
                }
                if get(&ready).await.is_some_and(|(status, _)| status == 200) {
                    return Some(prometheus);
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

    #[tokio::test]
    async fn prometheus_receives_exact_values_and_labels() {
        let Some(prometheus) = Prometheus::start().await else {
            return;
        };
        let events = Arc::new(Events::default());
        let writer = RemoteWriter::start_with(
            vec![target(&prometheus.write_url())],
            events.clone(),
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
        let Some(prometheus) = Prometheus::start().await else {
            return;
        };
        let dead = format!("http://127.0.0.1:{}/api/v1/write", free_port());
        let events = Arc::new(Events::default());
        let writer = RemoteWriter::start_with(
            vec![target(&dead), target(&prometheus.write_url())],
            events.clone(),
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
        let Some(prometheus) = Prometheus::start().await else {
            return;
        };
        // Prometheus answers 404 here: a client error, which another try would repeat.
        let wrong = format!("http://127.0.0.1:{}/api/v1/nowrite", prometheus.port);
        let events = Arc::new(Events::default());
        let writer = RemoteWriter::start_with(vec![target(&wrong)], events.clone(), fast_policy());
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
        let events = Arc::new(Events::default());
        let writer = RemoteWriter::start_with(
            vec![
                target("ftp://user:secret@metrics.example/api/v1/write"),
                target("http://"),
            ],
            events.clone(),
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
        use prost::Message;
        let (port, cert, mut bodies) = crate::delivery::tls_server().await;
        let events = Arc::new(Events::default());
        let writer = RemoteWriter::start_with_client(
            vec![target(&format!("https://127.0.0.1:{port}/api/v1/write"))],
            events.clone(),
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
        let (port, _cert, mut bodies) = crate::delivery::tls_server().await;
        let events = Arc::new(Events::default());
        let writer = RemoteWriter::start_with(
            vec![target(&format!("https://127.0.0.1:{port}/api/v1/write"))],
            events.clone(),
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
    fn a_full_queue_drops_its_oldest_samples_and_counts_them() {
        let target = Target::new("http://x".to_string());
        let up = series(&[("__name__", "up")]);
        let batch = |from: i64, n: i64| -> Vec<(Labels, Sample)> {
            (from..from + n)
                .map(|t| (up.clone(), Sample { t, v: t as f64 }))
                .collect()
        };
        target.enqueue(&batch(0, 3), 5);
        target.enqueue(&batch(3, 4), 5);
        assert_eq!(target.stats().dropped_samples, 2);
        target.enqueue(&batch(7, 8), 5);
        let stats = target.stats();
        assert_eq!((stats.dropped_samples, stats.queued_samples), (10, 5));
        let kept: Vec<i64> = target.take(100).iter().map(|(_, s)| s.t).collect();
        assert_eq!(kept, vec![10, 11, 12, 13, 14]);
    }

    #[test]
    fn a_body_is_snappy_protobuf_grouped_by_series() {
        use prost::Message;
        let a = series(&[("__name__", "a"), ("x", "1")]);
        let b = series(&[("__name__", "b")]);
        let stale = tandem_tsdb::stale_nan();
        let body = encode(&[
            (a.clone(), Sample { t: 1, v: 1.0 }),
            (b.clone(), Sample { t: 1, v: stale }),
            (a.clone(), Sample { t: 2, v: -0.0 }),
            (a.clone(), Sample { t: 3, v: 0.0 }),
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
