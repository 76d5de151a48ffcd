//! Scraping each service's own metrics: every `[monitoring] scrape_interval`, a GET of the
//! service's `metrics` path on every running instance, parsed as the Prometheus text format
//! or OpenMetrics, stored with tandem's labels (`env`, `service`, `instance`, `revision`).
//!
//! As in Prometheus: each target also gets `up` (1 when the scrape worked, 0 when it did
//! not), `scrape_duration_seconds` and `scrape_samples_scraped`; an app label that collides
//! with one of tandem's is kept as `exported_<name>`; a timestamp the app gives is kept. A
//! malformed body marks that target down with the parse error (logged once per change) and
//! the other targets go on.

use crate::monitor::{MetricMeta, Monitor};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tandem_engine::exposition::{self, Format};
use tandem_store::Store;
use tandem_supervisor::runtime::Runtime;
use tandem_tsdb::{Labels, Sample};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Labels tandem sets on every scraped series; an app's own label of the same name is
/// renamed `exported_<name>`.
const TARGET_LABELS: &[&str] = &["env", "service", "instance", "revision"];
/// The largest scrape body read.
const MAX_BODY: usize = 16 << 20;

/// Scrapes every instance of every service that has a `metrics` path.
pub(crate) struct Scraper {
    env: String,
    monitor: Arc<Monitor>,
    runtime: Arc<Runtime>,
    store: Arc<Store>,
    /// instance id -> the last scrape error, to log each change once.
    last_error: Mutex<BTreeMap<String, String>>,
    /// Series of the last round, to mark those that vanish as stale.
    previous: Mutex<std::collections::HashSet<Labels>>,
}

impl Scraper {
    pub(crate) fn new(
        env: &str,
        monitor: Arc<Monitor>,
        runtime: Arc<Runtime>,
        store: Arc<Store>,
    ) -> Scraper {
        Scraper {
            env: env.to_string(),
            monitor,
            runtime,
            store,
            last_error: Mutex::new(BTreeMap::new()),
            previous: Mutex::new(Default::default()),
        }
    }

    /// Scrapes every `[monitoring] scrape_interval` (read each round, so a deploy that
    /// changes it takes effect at the next one) until the process ends.
    pub(crate) fn start(self: Arc<Self>) {
        tokio::spawn(async move {
            loop {
                let interval = self
                    .monitor
                    .settings()
                    .scrape_interval
                    .0
                    .max(Duration::from_millis(100));
                tokio::time::sleep(interval).await;
                self.round(interval).await;
            }
        });
    }

    /// One scrape of every target, concurrently.
    pub(crate) async fn round(&self, interval: Duration) {
        let Ok(Some(live)) = self.store.live(&self.env) else {
            return;
        };
        let targets: Vec<(String, String, u64, u16, String)> = self
            .runtime
            .list()
            .into_iter()
            .filter(|i| i.state.is_up())
            .filter_map(|i| {
                let path = live.system.service.get(&i.service)?.metrics.clone()?;
                Some((i.service, i.id, i.revision, i.port, path))
            })
            .collect();
        let timeout = interval.min(Duration::from_secs(10));
        let scrapes =
            targets
                .into_iter()
                .map(|(service, instance, revision, port, path)| async move {
                    let started = tokio::time::Instant::now();
                    let t = tandem_api::now_ms();
                    let result = fetch(port, &path, timeout).await;
                    (service, instance, revision, t, started.elapsed(), result)
                });
        let results = futures_util::future::join_all(scrapes).await;
        let mut batch: Vec<(Labels, Sample)> = Vec::new();
        let mut metadata: BTreeMap<String, MetricMeta> = BTreeMap::new();
        for (service, instance, revision, t, took, result) in results {
            let revision = revision.to_string();
            let target = [
                ("env", self.env.as_str()),
                ("service", service.as_str()),
                ("instance", instance.as_str()),
                ("revision", revision.as_str()),
            ];
            let parsed = result.and_then(|(content_type, body)| {
                exposition::parse(&body, Format::from_content_type(&content_type))
                    .map_err(|e| format!("cannot parse the metrics: {e}"))
            });
            let (up, scraped) = match parsed {
                Ok(scrape) => {
                    let count = scrape.samples.len();
                    for s in scrape.samples {
                        let mut pairs: Vec<(String, String)> =
                            Vec::with_capacity(s.labels.len() + 5);
                        for (k, v) in s.labels {
                            if TARGET_LABELS.contains(&k.as_str()) {
                                pairs.push((format!("exported_{k}"), v));
                            } else {
                                pairs.push((k, v));
                            }
                        }
                        pairs.extend(target.iter().map(|(k, v)| (k.to_string(), v.to_string())));
                        pairs.push(("__name__".into(), s.name));
                        batch.push((
                            Labels::new(pairs),
                            Sample {
                                t: s.timestamp_ms.unwrap_or(t),
                                v: s.value,
                            },
                        ));
                    }
                    for (name, m) in scrape.metadata {
                        metadata.insert(
                            name,
                            MetricMeta {
                                kind: m.kind.unwrap_or_else(|| "unknown".into()),
                                help: m.help.unwrap_or_default(),
                                unit: m.unit.unwrap_or_default(),
                            },
                        );
                    }
                    self.note(&instance, None);
                    (1.0, count)
                }
                Err(error) => {
                    self.note(
                        &instance,
                        Some(format!("scrape of {service} ({instance}) failed: {error}")),
                    );
                    (0.0, 0)
                }
            };
            let mut push = |name: &str, v: f64| {
                batch.push((
                    Labels::new(target.iter().copied().chain([("__name__", name)])),
                    Sample { t, v },
                ));
            };
            push("up", up);
            push("scrape_duration_seconds", took.as_secs_f64());
            push("scrape_samples_scraped", scraped as f64);
        }
        // Series that were scraped last round and are not now (a stopped instance, a metric
        // the app no longer exposes) are marked stale, as Prometheus does.
        {
            let seen: std::collections::HashSet<Labels> =
                batch.iter().map(|(l, _)| l.clone()).collect();
            let mut previous = self.previous.lock().expect("scrape lock");
            crate::monitor::mark_stale(&previous, &seen, tandem_api::now_ms(), &mut batch);
            *previous = seen;
        }
        if batch.is_empty() {
            return;
        }
        self.monitor.add_metadata(metadata);
        let monitor = self.monitor.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Ok(summary) = monitor.store(&batch)
                && let Some(first) = summary.rejected.first()
            {
                tracing::debug!(
                    "{} scraped sample(s) refused, e.g. {first}",
                    summary.rejected.len()
                );
            }
        })
        .await;
    }

    /// Logs a target's error when it changes (and its recovery).
    fn note(&self, instance: &str, error: Option<String>) {
        let mut last = self.last_error.lock().expect("scrape lock");
        match error {
            Some(e) => {
                if last.get(instance) != Some(&e) {
                    tracing::warn!("{e}");
                    last.insert(instance.to_string(), e);
                }
            }
            None => {
                if last.remove(instance).is_some() {
                    tracing::info!("scrape of {instance} works again");
                }
            }
        }
    }
}

/// GET `path` on 127.0.0.1:`port`; returns (Content-Type, body) of a 2xx answer.
async fn fetch(port: u16, path: &str, timeout: Duration) -> Result<(String, String), String> {
    let work = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| format!("cannot connect to port {port}: {e}"))?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: tandem-scraper\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1\r\nConnection: close\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut raw = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&chunk[..n]);
            if raw.len() > MAX_BODY {
                return Err(format!("the answer is larger than {} MiB", MAX_BODY >> 20));
            }
        }
        parse_response(&raw)
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {}s", timeout.as_secs_f64())),
    }
}

/// Splits a whole HTTP/1.1 response into (Content-Type, body), undoing chunked encoding.
fn parse_response(raw: &[u8]) -> Result<(String, String), String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("the answer has no complete HTTP head")?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or("no HTTP status")?;
    if !(200..300).contains(&status) {
        return Err(format!("the metrics path answered {status}"));
    }
    let mut content_type = String::new();
    let mut chunked = false;
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let k = k.trim().to_ascii_lowercase();
        if k == "content-type" {
            content_type = v.trim().to_string();
        } else if k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked") {
            chunked = true;
        }
    }
    if chunked {
        body = dechunk(&body)?;
    }
    Ok((content_type, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("bad chunked body")?;
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| "bad chunk size")?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            return Err("truncated chunked body".into());
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_split_and_dechunked() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
        let (ct, body) = parse_response(raw).unwrap();
        assert_eq!(
            (ct.as_str(), body.as_str()),
            ("text/plain; version=0.0.4", "hello world")
        );
        let err = parse_response(b"HTTP/1.1 500 Oops\r\n\r\n").unwrap_err();
        assert!(err.contains("500"), "{err}");
    }
}
