//! The backends of one service and the order a new connection tries them in.
//!
//! A [`BackendSet`] is immutable: `set_backends` builds a new one and publishes it whole,
//! so a connection sees either the old set or the new one, never a mix. Selection policy
//! lives in [`BackendSet::connect_order`] alone, so weighted shifting for canaries (the
//! deploy issue) means giving entries a weight and changing that one function.
//!
//! Failure detection is passive: a backend that refuses a connection or does not answer
//! in time is skipped by new connections for [`BackendSet::OUT_AFTER_FAILURE`]; after
//! that it gets traffic again, and the first success clears the mark. A backend that
//! stays in the next set keeps its mark, because it is the same instance.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// One instance's address and its passive health.
#[derive(Debug)]
pub(crate) struct Backend {
    pub(crate) addr: SocketAddr,
    out_until: Mutex<Option<Instant>>,
}

impl Backend {
    fn new(addr: SocketAddr) -> Backend {
        Backend {
            addr,
            out_until: Mutex::new(None),
        }
    }

    fn is_out(&self, now: Instant) -> bool {
        self.lock_out_until().is_some_and(|until| now < until)
    }

    /// Takes the backend out of rotation for a while. Returns true when it was in
    /// rotation until now, so the caller logs the change once rather than per connection.
    pub(crate) fn mark_failed(&self) -> bool {
        let now = Instant::now();
        let mut out_until = self.lock_out_until();
        let was_in = out_until.is_none_or(|until| now >= until);
        *out_until = Some(now + BackendSet::OUT_AFTER_FAILURE);
        was_in
    }

    pub(crate) fn mark_reachable(&self) {
        *self.lock_out_until() = None;
    }

    fn lock_out_until(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.out_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The backends new connections of one service go to.
#[derive(Debug, Default)]
pub(crate) struct BackendSet {
    backends: Vec<Arc<Backend>>,
}

impl BackendSet {
    /// How long a backend that failed a connect is skipped.
    pub(crate) const OUT_AFTER_FAILURE: Duration = Duration::from_secs(3);

    /// The set of `addrs` (duplicates dropped), keeping the health marks of the backends
    /// `previous` already had.
    pub(crate) fn replacing(previous: &BackendSet, addrs: Vec<SocketAddr>) -> BackendSet {
        let mut backends: Vec<Arc<Backend>> = Vec::with_capacity(addrs.len());
        for addr in addrs {
            if backends.iter().any(|b| b.addr == addr) {
                continue;
            }
            let kept = previous.backends.iter().find(|b| b.addr == addr).cloned();
            backends.push(kept.unwrap_or_else(|| Arc::new(Backend::new(addr))));
        }
        BackendSet { backends }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }

    /// The order in which the connection numbered `ticket` tries the backends: round robin
    /// (each connection starts one further along), backends in rotation first, then those
    /// out after a failure as a last resort. Each backend appears once.
    pub(crate) fn connect_order(&self, ticket: usize) -> Vec<Arc<Backend>> {
        if self.backends.is_empty() {
            return Vec::new();
        }
        let now = Instant::now();
        let start = ticket % self.backends.len();
        let mut rotated: Vec<Arc<Backend>> = self.backends[start..]
            .iter()
            .chain(&self.backends[..start])
            .cloned()
            .collect();
        // Stable: the round-robin order holds within each group.
        rotated.sort_by_key(|backend| backend.is_out(now));
        rotated
    }
}
