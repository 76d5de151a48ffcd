//! Per-service connection counters: plain atomics bumped on the connection path, read as a
//! [`ProxyStats`] snapshot by whoever exports metrics.

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of one service's counters. All but `active` only grow, for the life of the
/// [`Proxy`](crate::Proxy), across `close_listener` and `listen_on` again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Client connections accepted.
    pub accepted: u64,
    /// Client connections open right now.
    pub active: u64,
    /// Connects to a backend that failed or timed out (one connection may count several).
    pub connect_failures: u64,
    /// Client connections closed because no backend could be reached.
    pub unserved: u64,
    /// HTTPS connections whose TLS handshake failed or did not finish in time.
    pub tls_handshake_failures: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    accepted: AtomicU64,
    active: AtomicU64,
    connect_failures: AtomicU64,
    unserved: AtomicU64,
    tls_handshake_failures: AtomicU64,
}

impl Counters {
    /// Counts an accepted connection; it stays active until the guard drops.
    pub(crate) fn connection_accepted(&self) -> ActiveConnection<'_> {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveConnection { counters: self }
    }

    pub(crate) fn connect_failed(&self) {
        self.connect_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn unserved(&self) {
        self.unserved.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn tls_handshake_failed(&self) {
        self.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> ProxyStats {
        ProxyStats {
            accepted: self.accepted.load(Ordering::Relaxed),
            active: self.active.load(Ordering::Relaxed),
            connect_failures: self.connect_failures.load(Ordering::Relaxed),
            unserved: self.unserved.load(Ordering::Relaxed),
            tls_handshake_failures: self.tls_handshake_failures.load(Ordering::Relaxed),
        }
    }
}

/// Keeps one connection counted as active.
pub(crate) struct ActiveConnection<'a> {
    counters: &'a Counters,
}

impl Drop for ActiveConnection<'_> {
    fn drop(&mut self) {
        self.counters.active.fetch_sub(1, Ordering::Relaxed);
    }
}
