//! The backends of one service and which one gets the next request or connection.
//!
//! A [`BackendSet`] is immutable apart from its round-robin counters: setting backends builds
//! a new one and publishes it whole, so a request sees either the old set or the new one,
//! never a mix. Each address has one [`BackendState`] that outlives sets while the backend
//! stays (same address, revision and instance): its health mark, its in-flight count (what
//! drain waits on) and its pool of idle upstream HTTP connections.
//!
//! Choice is nginx's smooth weighted round robin: deterministic, so a 10 % canary gets
//! exactly one request in ten (interleaved, not in bursts), which matters when a canary step
//! is judged on a few hundred requests. Weight 0 gets nothing.
//!
//! Failure detection is passive: a backend that refuses a connection or does not accept in
//! time is skipped for [`OUT_AFTER_FAILURE`], used only as a last resort meanwhile; the first
//! success clears the mark.

use crate::config::Backend;
use crate::upstream::Upstream;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// How long a backend that failed a connect is skipped.
pub(crate) const OUT_AFTER_FAILURE: Duration = Duration::from_secs(3);

/// Idle upstream connections kept per backend; more are closed when they come back. Enough
/// for a few hundred concurrent client connections' worth of keep-alive.
const MAX_IDLE_PER_BACKEND: usize = 512;

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section in this crate leaves its data consistent.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One backend instance, as long as it keeps its address, revision and instance name.
pub(crate) struct BackendState {
    pub(crate) addr: SocketAddr,
    pub(crate) revision: u64,
    pub(crate) instance: String,
    /// Out of rotation until this many microseconds after [`epoch`]; 0 = in rotation.
    out_until: AtomicU64,
    in_flight: AtomicU64,
    /// Woken when `in_flight` drops to 0.
    idle_notify: Notify,
    idle: Mutex<Idle>,
}

/// Idle upstream HTTP/1.1 connections of one backend.
#[derive(Default)]
struct Idle {
    /// Most recently used at the back.
    conns: VecDeque<Upstream>,
    checkins: u32,
}

/// Every this many check-ins, the least recently used idle connection is looked at.
const SWEEP_EVERY: u32 = 16;

pub(crate) fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

pub(crate) fn micros_since_epoch(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch()).as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

impl BackendState {
    fn new(backend: &Backend) -> BackendState {
        BackendState {
            addr: backend.addr,
            revision: backend.revision,
            instance: backend.instance.clone(),
            out_until: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            idle_notify: Notify::new(),
            idle: Mutex::new(Idle::default()),
        }
    }

    fn is_out(&self) -> bool {
        let until = self.out_until.load(Ordering::Relaxed);
        until != 0 && micros_since_epoch(Instant::now()) < until
    }

    /// Takes the backend out of rotation for a while. Returns true when it was in rotation
    /// until now, so the caller logs the change once rather than per request.
    pub(crate) fn mark_failed(&self) -> bool {
        let now = Instant::now();
        let until = micros_since_epoch(now + OUT_AFTER_FAILURE);
        let previous = self.out_until.swap(until, Ordering::Relaxed);
        previous == 0 || micros_since_epoch(now) >= previous
    }

    pub(crate) fn mark_reachable(&self) {
        if self.out_until.load(Ordering::Relaxed) != 0 {
            self.out_until.store(0, Ordering::Relaxed);
        }
    }

    pub(crate) fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Acquire)
    }

    pub(crate) fn start_work(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn finish_work(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle_notify.notify_waiters();
        }
    }

    /// Waits until nothing is in flight.
    pub(crate) async fn wait_idle(&self) {
        loop {
            let notified = self.idle_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.in_flight() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// The most recently used idle upstream connection that is still open, if any.
    /// Connections the backend closed meanwhile are dropped.
    pub(crate) fn checkout(&self) -> Option<Upstream> {
        let mut idle = lock(&self.idle);
        while let Some(conn) = idle.conns.pop_back() {
            if conn.is_usable() {
                return Some(conn);
            }
        }
        None
    }

    /// Returns a connection whose last exchange ended cleanly. Now and then the least
    /// recently used one is looked at too, so connections the backend closed while idle do
    /// not pile up at the bottom of the pool.
    pub(crate) fn checkin(&self, conn: Upstream) {
        let mut idle = lock(&self.idle);
        idle.checkins = idle.checkins.wrapping_add(1);
        if idle.checkins.is_multiple_of(SWEEP_EVERY)
            && idle.conns.front().is_some_and(|oldest| !oldest.is_usable())
        {
            idle.conns.pop_front();
        }
        if idle.conns.len() < MAX_IDLE_PER_BACKEND {
            idle.conns.push_back(conn);
        }
    }
}

struct Entry {
    state: Arc<BackendState>,
    weight: u32,
}

/// The backends new work of one service goes to.
#[derive(Default)]
pub(crate) struct BackendSet {
    entries: Vec<Entry>,
    /// Smooth weighted round robin's current weights, one per entry.
    current: Mutex<Vec<i64>>,
}

impl BackendSet {
    /// The set of `backends` (a repeated address keeps its first entry), reusing the states
    /// in `known` for backends that stay and recording the new ones there.
    pub(crate) fn build(
        known: &mut HashMap<SocketAddr, Arc<BackendState>>,
        backends: &[Backend],
    ) -> BackendSet {
        let mut entries: Vec<Entry> = Vec::with_capacity(backends.len());
        for backend in backends {
            if entries.iter().any(|e| e.state.addr == backend.addr) {
                continue;
            }
            let state = match known.get(&backend.addr) {
                Some(state)
                    if state.revision == backend.revision && state.instance == backend.instance =>
                {
                    state.clone()
                }
                _ => {
                    let state = Arc::new(BackendState::new(backend));
                    known.insert(backend.addr, state.clone());
                    state
                }
            };
            entries.push(Entry {
                state,
                weight: backend.weight,
            });
        }
        let current = Mutex::new(vec![0; entries.len()]);
        BackendSet { entries, current }
    }

    pub(crate) fn contains(&self, addr: SocketAddr) -> bool {
        self.entries.iter().any(|e| e.state.addr == addr)
    }

    /// The backend for the next request or connection, skipping `tried` (the backends this
    /// request already failed on) and weight 0; backends out after a failure only when no
    /// other is left. `None` when nothing is left.
    pub(crate) fn pick(&self, tried: &[SocketAddr]) -> Option<Arc<BackendState>> {
        if let [only] = self.entries.as_slice() {
            // The common case of one instance: no counters to move.
            return (only.weight > 0 && !tried.contains(&only.state.addr))
                .then(|| only.state.clone());
        }
        let candidate = |e: &Entry| e.weight > 0 && !tried.contains(&e.state.addr);
        let mut current = lock(&self.current);
        for last_resort in [false, true] {
            let mut total: i64 = 0;
            let mut best: Option<usize> = None;
            for (i, entry) in self.entries.iter().enumerate() {
                if !candidate(entry) || entry.state.is_out() != last_resort {
                    continue;
                }
                current[i] += i64::from(entry.weight);
                total += i64::from(entry.weight);
                if best.is_none_or(|b| current[i] > current[b]) {
                    best = Some(i);
                }
            }
            if let Some(best) = best {
                current[best] -= total;
                return Some(self.entries[best].state.clone());
            }
        }
        None
    }
}
