//! What the proxy tells the outside about each request: one [`RequestRecord`] per HTTP request
//! (and per TCP connection) handed to a [`MetricsSink`], and cumulative per-revision figures
//! ([`RevisionStats`]) the deploy engine diffs to judge a canary step.
//!
//! Labels stay bounded: the method is a [`MethodClass`], the status is a number the sink can
//! class, and errors carry where they came from ([`ProxyErrorSource`], as pingora does), not
//! free text.

use crate::config::Protocol;
use hyper::Method;
use std::time::Duration;

/// Receives one record per finished request (HTTP) or connection (TCP). Called on the
/// proxy's hot path: keep it cheap (count, push to a channel), never block.
pub trait MetricsSink: Send + Sync + 'static {
    fn record(&self, record: &RequestRecord);

    /// A TLS handshake on an HTTPS listener of `service` failed or timed out. No request
    /// was made, so there is no record; the default ignores it.
    fn tls_handshake_failed(&self, service: &str) {
        let _ = service;
    }
}

/// A sink that drops every record, for a proxy nobody watches.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoMetrics;

impl MetricsSink for NoMetrics {
    fn record(&self, _record: &RequestRecord) {}
}

/// One finished request (HTTP) or connection (TCP).
#[derive(Clone, Debug, PartialEq)]
pub struct RequestRecord {
    pub service: String,
    /// The calling service, for requests through an edge listener.
    pub caller: Option<String>,
    /// The backend's revision and instance; `None` when no backend was chosen.
    pub revision: Option<u64>,
    pub instance: Option<String>,
    pub method: MethodClass,
    /// What the client got, including the proxy's own 4xx/5xx answers. 499 (nginx's
    /// convention) when the client went away before the response head; 0 for TCP.
    pub status: u16,
    /// From the request head received (connection accepted, for TCP) to the response
    /// complete, or the error.
    pub duration: Duration,
    /// Body bytes from the client (HTTP) or all bytes (TCP).
    pub bytes_in: u64,
    /// Body bytes to the client (HTTP) or all bytes (TCP).
    pub bytes_out: u64,
    pub error: Option<ProxyErrorSource>,
    pub protocol: Protocol,
}

/// The method of a request, as a bounded label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MethodClass {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
    Options,
    Other,
}

impl MethodClass {
    pub fn of(method: &Method) -> MethodClass {
        match *method {
            Method::GET => MethodClass::Get,
            Method::HEAD => MethodClass::Head,
            Method::POST => MethodClass::Post,
            Method::PUT => MethodClass::Put,
            Method::PATCH => MethodClass::Patch,
            Method::DELETE => MethodClass::Delete,
            Method::OPTIONS => MethodClass::Options,
            _ => MethodClass::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MethodClass::Get => "get",
            MethodClass::Head => "head",
            MethodClass::Post => "post",
            MethodClass::Put => "put",
            MethodClass::Patch => "patch",
            MethodClass::Delete => "delete",
            MethodClass::Options => "options",
            MethodClass::Other => "other",
        }
    }
}

/// Where a failed request went wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProxyErrorSource {
    /// The backend: refused or reset the connection, timed out, sent an invalid response;
    /// also no backend at all (the service side cannot serve).
    Upstream,
    /// The client: went away, sent garbage, was too slow or too large.
    Downstream,
    /// The proxy itself.
    Internal,
}

impl ProxyErrorSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyErrorSource::Upstream => "upstream",
            ProxyErrorSource::Downstream => "downstream",
            ProxyErrorSource::Internal => "internal",
        }
    }
}

/// Cumulative figures of one revision of one service, over all its listeners.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RevisionStats {
    /// Requests (HTTP) and connections (TCP) that reached a backend of this revision, or
    /// failed trying.
    pub requests: u64,
    /// Of those: 5xx answered, plus upstream errors (a reset mid-response, a refused connect).
    pub errors: u64,
    pub latency: LatencyHistogram,
}

impl RevisionStats {
    /// The figures gathered since `earlier` (a snapshot of the same revision).
    pub fn since(&self, earlier: &RevisionStats) -> RevisionStats {
        RevisionStats {
            requests: self.requests.saturating_sub(earlier.requests),
            errors: self.errors.saturating_sub(earlier.errors),
            latency: self.latency.since(&earlier.latency),
        }
    }
}

/// Upper bounds of the latency buckets, in microseconds: Prometheus' 1-2.5-5 series from
/// 250 µs (a fast local service) to 60 s (the default response timeout); slower lands in +Inf.
const BOUNDS_MICROS: [u64; 18] = [
    250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000, 20_000_000, 30_000_000, 60_000_000,
];
const BUCKETS: usize = BOUNDS_MICROS.len() + 1;

/// A latency histogram with fixed buckets (see [`LatencyHistogram::bounds`]) plus count and
/// sum, in the shape of a Prometheus histogram.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LatencyHistogram {
    /// Non-cumulative counts; the last is the +Inf bucket.
    counts: [u64; BUCKETS],
    count: u64,
    sum: Duration,
}

impl LatencyHistogram {
    /// The finite upper bounds of the buckets, ascending.
    pub fn bounds() -> impl Iterator<Item = Duration> {
        BOUNDS_MICROS.iter().map(|&us| Duration::from_micros(us))
    }

    pub fn observe(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_MICROS.partition_point(|&bound| bound < micros);
        self.counts[bucket] += 1;
        self.count += 1;
        self.sum = self.sum.saturating_add(latency);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn sum(&self) -> Duration {
        self.sum
    }

    /// Cumulative counts per bucket, as Prometheus exports them: `(Some(le), count)` for each
    /// finite bound, then `(None, count)` for +Inf.
    pub fn cumulative(&self) -> Vec<(Option<Duration>, u64)> {
        let mut total = 0;
        let mut buckets: Vec<(Option<Duration>, u64)> = Vec::with_capacity(BUCKETS);
        for (i, count) in self.counts.iter().enumerate() {
            total += count;
            let bound = BOUNDS_MICROS.get(i).map(|&us| Duration::from_micros(us));
            buckets.push((bound, total));
        }
        buckets
    }

    /// Adds `other`'s observations to these (e.g. the old revisions of a canary together).
    pub fn merge(&mut self, other: &LatencyHistogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts.iter()) {
            *mine += theirs;
        }
        self.count += other.count;
        self.sum = self.sum.saturating_add(other.sum);
    }

    /// The observations since `earlier` (a snapshot of the same histogram).
    pub fn since(&self, earlier: &LatencyHistogram) -> LatencyHistogram {
        let mut counts = [0; BUCKETS];
        for (i, count) in counts.iter_mut().enumerate() {
            *count = self.counts[i].saturating_sub(earlier.counts[i]);
        }
        LatencyHistogram {
            counts,
            count: self.count.saturating_sub(earlier.count),
            sum: self.sum.saturating_sub(earlier.sum),
        }
    }

    /// The `q`-quantile (0 ≤ q ≤ 1) the way PromQL's `histogram_quantile` estimates it:
    /// linear interpolation inside the bucket the rank falls in (from 0 for the first
    /// bucket); a rank in +Inf gives the highest finite bound. `None` without observations
    /// or for a `q` outside 0..=1.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.count == 0 || !(0.0..=1.0).contains(&q) {
            return None;
        }
        let rank = q * self.count as f64;
        let mut below = 0u64;
        for (i, &count) in self.counts.iter().enumerate() {
            let cumulative = below + count;
            if count > 0 && cumulative as f64 >= rank {
                let Some(&upper) = BOUNDS_MICROS.get(i) else {
                    return Some(Duration::from_micros(BOUNDS_MICROS[BUCKETS - 2]));
                };
                let lower = if i == 0 { 0 } else { BOUNDS_MICROS[i - 1] };
                let fraction = ((rank - below as f64) / count as f64).clamp(0.0, 1.0);
                let micros = lower as f64 + (upper - lower) as f64 * fraction;
                return Some(Duration::from_secs_f64(micros / 1e6));
            }
            below = cumulative;
        }
        Some(Duration::from_micros(BOUNDS_MICROS[BUCKETS - 2]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_a_bucket() {
        let mut histogram = LatencyHistogram::default();
        for _ in 0..100 {
            histogram.observe(Duration::from_millis(7)); // the 5..10 ms bucket
        }
        assert_eq!(histogram.quantile(0.5), Some(Duration::from_micros(7_500)));
        assert_eq!(histogram.quantile(1.0), Some(Duration::from_millis(10)));
        assert_eq!(LatencyHistogram::default().quantile(0.5), None);
        assert_eq!(histogram.quantile(1.5), None);

        let earlier = histogram.clone();
        histogram.observe(Duration::from_secs(100));
        let delta = histogram.since(&earlier);
        assert_eq!(delta.count(), 1);
        assert_eq!(delta.quantile(0.99), Some(Duration::from_secs(60)));
        assert_eq!(delta.cumulative().last(), Some(&(None, 1)));
    }
}
