//! The proxy's per-request figures as the server keeps them between two collection rounds:
//! cumulative counters by service, caller, revision, method, status class and error source,
//! and a latency histogram by service, caller and revision. Each round turns them into
//! samples (`tandem_http_requests_total`, `..._bytes_total`,
//! `tandem_http_request_duration_seconds_bucket/_sum/_count`), and failed TLS handshakes on
//! HTTPS ports by service (`tandem_tls_handshake_failures_total`). Labels are bounded: services,
//! callers and revisions of one environment; classes, never raw codes or paths.

use std::collections::BTreeMap;
use std::sync::Mutex;
use tandem_proxy::{LatencyHistogram, MetricsSink, RequestRecord};
use tandem_tsdb::{Labels, Sample};

/// What one label set has counted.
#[derive(Clone, Debug, Default, PartialEq)]
struct Counted {
    requests: u64,
    bytes_in: u64,
    bytes_out: u64,
}

/// `(service, caller, revision, method, status class, error source)`.
type CounterKey = (String, String, u64, &'static str, String, &'static str);
/// `(service, caller, revision)`.
type HistogramKey = (String, String, u64);

#[derive(Default)]
pub(crate) struct TrafficMetrics {
    counters: Mutex<BTreeMap<CounterKey, Counted>>,
    latency: Mutex<BTreeMap<HistogramKey, LatencyHistogram>>,
    /// Failed TLS handshakes by service.
    tls_failures: Mutex<BTreeMap<String, u64>>,
}

impl std::fmt::Debug for TrafficMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrafficMetrics").finish_non_exhaustive()
    }
}

impl MetricsSink for TrafficMetrics {
    fn record(&self, r: &RequestRecord) {
        let status_class = if r.status == 0 {
            "none".to_string()
        } else {
            format!("{}xx", r.status / 100)
        };
        let caller = r.caller.clone().unwrap_or_default();
        let revision = r.revision.unwrap_or(0);
        let key: CounterKey = (
            r.service.clone(),
            caller.clone(),
            revision,
            r.method.as_str(),
            status_class,
            r.error.map(|e| e.as_str()).unwrap_or(""),
        );
        {
            let mut counters = self.counters.lock().expect("metrics lock");
            let c = counters.entry(key).or_default();
            c.requests += 1;
            c.bytes_in += r.bytes_in;
            c.bytes_out += r.bytes_out;
        }
        self.latency
            .lock()
            .expect("metrics lock")
            .entry((r.service.clone(), caller, revision))
            .or_default()
            .observe(r.duration);
    }

    fn tls_handshake_failed(&self, service: &str) {
        let mut failures = self.tls_failures.lock().expect("metrics lock");
        *failures.entry(service.to_string()).or_default() += 1;
    }
}

impl TrafficMetrics {
    /// Every counter and histogram as samples at `t` (cumulative since the server started).
    pub(crate) fn samples(&self, env: &str, t: i64) -> Vec<(Labels, Sample)> {
        let mut out = Vec::new();
        let counters = self.counters.lock().expect("metrics lock").clone();
        for ((service, caller, revision, method, code, error), c) in counters {
            let revision = revision.to_string();
            let base = [
                ("env", env),
                ("service", service.as_str()),
                ("caller", caller.as_str()),
                ("revision", revision.as_str()),
                ("method", method),
                ("code", code.as_str()),
                ("error", error),
            ];
            for (name, v) in [
                ("tandem_http_requests_total", c.requests),
                ("tandem_http_request_bytes_total", c.bytes_in),
                ("tandem_http_response_bytes_total", c.bytes_out),
            ] {
                let labels = Labels::new(base.iter().copied().chain([("__name__", name)]));
                out.push((labels, Sample { t, v: v as f64 }));
            }
        }
        let tls_failures = self.tls_failures.lock().expect("metrics lock").clone();
        for (service, failed) in tls_failures {
            let labels = Labels::new([
                ("env", env),
                ("service", service.as_str()),
                ("__name__", "tandem_tls_handshake_failures_total"),
            ]);
            out.push((
                labels,
                Sample {
                    t,
                    v: failed as f64,
                },
            ));
        }
        let latency = self.latency.lock().expect("metrics lock").clone();
        for ((service, caller, revision), h) in latency {
            let revision = revision.to_string();
            let base = [
                ("env", env),
                ("service", service.as_str()),
                ("caller", caller.as_str()),
                ("revision", revision.as_str()),
            ];
            for (le, count) in h.cumulative() {
                let le = match le {
                    Some(d) => format_le(d.as_secs_f64()),
                    None => "+Inf".to_string(),
                };
                let labels = Labels::new(base.iter().copied().chain([
                    ("__name__", "tandem_http_request_duration_seconds_bucket"),
                    ("le", le.as_str()),
                ]));
                out.push((labels, Sample { t, v: count as f64 }));
            }
            let sum = Labels::new(
                base.iter()
                    .copied()
                    .chain([("__name__", "tandem_http_request_duration_seconds_sum")]),
            );
            out.push((
                sum,
                Sample {
                    t,
                    v: h.sum().as_secs_f64(),
                },
            ));
            let count = Labels::new(
                base.iter()
                    .copied()
                    .chain([("__name__", "tandem_http_request_duration_seconds_count")]),
            );
            out.push((
                count,
                Sample {
                    t,
                    v: h.count() as f64,
                },
            ));
        }
        out
    }
}

/// A bucket bound as Prometheus's Go client writes `le`: the shortest decimal ("0.005", "1").
fn format_le(seconds: f64) -> String {
    format!("{seconds}")
}
