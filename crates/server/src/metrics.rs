//! The proxy's per-request figures, as the server keeps them until the monitoring issue's
//! time-series store takes them: counters by service, caller, revision, method, status
//! class and error source, and a latency histogram per service and revision. Labels are
//! bounded (services, callers and revisions of one environment; classes, not codes).

use std::collections::BTreeMap;
use std::sync::Mutex;
use tandem_proxy::{LatencyHistogram, MetricsSink, RequestRecord};

/// What one label set has counted.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Counted {
    pub(crate) requests: u64,
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
}

/// `(service, caller, revision, method, status class, error source)`.
type Labels = (String, String, u64, &'static str, String, &'static str);

#[derive(Default)]
pub(crate) struct TrafficMetrics {
    counters: Mutex<BTreeMap<Labels, Counted>>,
    latency: Mutex<BTreeMap<(String, u64), LatencyHistogram>>,
}

impl std::fmt::Debug for TrafficMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrafficMetrics").finish()
    }
}

impl MetricsSink for TrafficMetrics {
    fn record(&self, r: &RequestRecord) {
        let status_class = if r.status == 0 {
            "none".to_string()
        } else {
            format!("{}xx", r.status / 100)
        };
        let labels: Labels = (
            r.service.clone(),
            r.caller.clone().unwrap_or_default(),
            r.revision.unwrap_or(0),
            r.method.as_str(),
            status_class,
            r.error.map(|e| e.as_str()).unwrap_or(""),
        );
        {
            let mut counters = self.counters.lock().expect("metrics lock");
            let c = counters.entry(labels).or_default();
            c.requests += 1;
            c.bytes_in += r.bytes_in;
            c.bytes_out += r.bytes_out;
        }
        let mut latency = self.latency.lock().expect("metrics lock");
        latency
            .entry((r.service.clone(), r.revision.unwrap_or(0)))
            .or_default()
            .observe(r.duration);
    }
}

impl TrafficMetrics {
    /// Requests counted for `service` so far (all labels).
    #[allow(dead_code)]
    pub(crate) fn requests_of(&self, service: &str) -> u64 {
        self.counters
            .lock()
            .expect("metrics lock")
            .iter()
            .filter(|(k, _)| k.0 == service)
            .map(|(_, c)| c.requests)
            .sum()
    }
}
