//! What the listeners of one service share: its backend set, the states of its backends
//! (for in-flight counts and drain), its limits, its counters and per-revision figures. And
//! the listener
//! side: one [`ListenerCtx`] per listening socket, its accept loop, the TLS handshake of an
//! HTTPS listener, and the hand-off of each connection to HTTP or TCP serving.

use crate::backends::{BackendSet, BackendState, lock};
use crate::config::{Protocol, ProxyConfig, ServiceLimits};
use crate::metrics::{MetricsSink, RevisionStats};
use crate::stats::Counters;
use crate::tls::ServerTls;
use crate::{http, tcp};
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::sleep;
use tracing::{debug, warn};

/// Pause after an accept error such as running out of file descriptors, so the loop does
/// not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Backend states kept for addresses no longer in the set, beyond which idle ones are
/// forgotten (ports come and go with every deploy).
const KNOWN_BACKENDS_KEPT: usize = 256;

pub(crate) struct ServiceTraffic {
    pub(crate) name: String,
    /// The current backend set; a watch channel so waiting requests learn of a new set.
    pub(crate) backends: watch::Sender<Arc<BackendSet>>,
    /// The current limits, replaced whole. A watch channel because its receivers can tell a
    /// new value from the one they hold with one atomic load, without the channel's lock:
    /// each client connection keeps a receiver and looks once per request (see
    /// [`LimitsCache`]).
    limits: watch::Sender<Arc<Limits>>,
    /// Every backend state of this service that may still have work in flight, by address.
    known: Mutex<HashMap<SocketAddr, Arc<BackendState>>>,
    pub(crate) counters: Counters,
    revisions: Mutex<BTreeMap<u64, RevisionStats>>,
}

impl ServiceTraffic {
    pub(crate) fn new(name: &str, limits: ServiceLimits) -> ServiceTraffic {
        ServiceTraffic {
            name: name.to_string(),
            backends: watch::Sender::new(Arc::new(BackendSet::default())),
            limits: watch::Sender::new(Arc::new(Limits::new(limits))),
            known: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            revisions: Mutex::new(BTreeMap::new()),
        }
    }

    pub(crate) fn set_backends(&self, backends: &[crate::Backend]) {
        let mut known = lock(&self.known);
        let set = Arc::new(BackendSet::build(&mut known, backends));
        if known.len() > KNOWN_BACKENDS_KEPT {
            known.retain(|addr, state| set.contains(*addr) || state.in_flight() > 0);
        }
        self.backends.send_replace(set);
    }

    /// Replaces the limits; the same limits again change nothing (connections keep theirs
    /// without looking again).
    pub(crate) fn set_limits(&self, limits: ServiceLimits) {
        self.limits.send_if_modified(|current| {
            if current.limits == limits {
                return false;
            }
            *current = Arc::new(Limits::new(limits));
            true
        });
    }

    /// The current limits (for a new connection; requests use a [`LimitsCache`]).
    pub(crate) fn limits(&self) -> Arc<Limits> {
        self.limits.borrow().clone()
    }

    /// Work in flight at all of this service's backends.
    pub(crate) fn in_flight_total(&self) -> u64 {
        lock(&self.known).values().map(|s| s.in_flight()).sum()
    }

    pub(crate) fn state_of(&self, addr: SocketAddr) -> Option<Arc<BackendState>> {
        lock(&self.known).get(&addr).cloned()
    }

    pub(crate) fn record_revision(&self, revision: u64, latency: Duration, error: bool) {
        let mut revisions = lock(&self.revisions);
        let stats = revisions.entry(revision).or_default();
        stats.requests += 1;
        stats.errors += u64::from(error);
        stats.latency.observe(latency);
    }

    pub(crate) fn revision_stats(&self) -> BTreeMap<u64, RevisionStats> {
        lock(&self.revisions).clone()
    }
}

/// One version of a service's limits, with what is built from them.
pub(crate) struct Limits {
    pub(crate) limits: ServiceLimits,
    /// The hyper server settings, which cap how much of a request head is read.
    pub(crate) servers: http::Servers,
}

impl Limits {
    fn new(limits: ServiceLimits) -> Limits {
        Limits {
            servers: http::Servers::new(&limits),
            limits,
        }
    }
}

/// The limits a client connection uses, and how it learns of new ones: `current` is the
/// latest value seen; [`LimitsCache::current`] costs one atomic load while nothing changed.
pub(crate) struct LimitsCache {
    changes: watch::Receiver<Arc<Limits>>,
    current: Arc<Limits>,
}

impl LimitsCache {
    pub(crate) fn new(service: &ServiceTraffic) -> LimitsCache {
        let mut changes = service.limits.subscribe();
        let current = changes.borrow_and_update().clone();
        LimitsCache { changes, current }
    }

    /// The limits as of now (a new value is taken under the channel's lock, once per change).
    pub(crate) fn current(&mut self) -> &Arc<Limits> {
        if self.changes.has_changed().unwrap_or(false) {
            self.current = self.changes.borrow_and_update().clone();
        }
        &self.current
    }
}

/// One listening socket: which service and caller it serves, and how.
pub(crate) struct ListenerCtx {
    pub(crate) service: Arc<ServiceTraffic>,
    pub(crate) caller: Option<String>,
    /// Whether the listener speaks HTTP (else TCP); switchable in place, for new connections.
    http: AtomicBool,
    /// HTTPS: the TLS side of an HTTP listener (a public port with `tls`); switchable in
    /// place, for new connections. TCP listeners ignore it.
    tls: Mutex<Option<ServerTls>>,
    /// The proxy's settings; of these only `no_backend_wait` is read here, the rest are the
    /// defaults of the service's own limits.
    pub(crate) config: Arc<ProxyConfig>,
    pub(crate) sink: Arc<dyn MetricsSink>,
}

impl ListenerCtx {
    pub(crate) fn new(
        service: Arc<ServiceTraffic>,
        caller: Option<String>,
        protocol: Protocol,
        tls: Option<ServerTls>,
        config: Arc<ProxyConfig>,
        sink: Arc<dyn MetricsSink>,
    ) -> ListenerCtx {
        ListenerCtx {
            service,
            caller,
            http: AtomicBool::new(protocol == Protocol::Http),
            tls: Mutex::new(tls),
            config,
            sink,
        }
    }

    pub(crate) fn protocol(&self) -> Protocol {
        if self.http.load(Ordering::Relaxed) {
            Protocol::Http
        } else {
            Protocol::Tcp
        }
    }

    pub(crate) fn set_protocol(&self, protocol: Protocol) {
        self.http
            .store(protocol == Protocol::Http, Ordering::Relaxed);
    }

    pub(crate) fn tls(&self) -> Option<ServerTls> {
        lock(&self.tls).clone()
    }

    pub(crate) fn set_tls(&self, tls: Option<ServerTls>) {
        *lock(&self.tls) = tls;
    }
}

/// Accepts connections on `listener` until the task is aborted (which closes the listener);
/// each connection runs in its own task and outlives the loop.
pub(crate) async fn accept_loop(listener: TcpListener, ctx: Arc<ListenerCtx>) {
    loop {
        match listener.accept().await {
            Ok((client, peer)) => {
                let _ = client.set_nodelay(true);
                match ctx.protocol() {
                    Protocol::Http => match ctx.tls() {
                        None => {
                            tokio::spawn(http::serve_connection(ctx.clone(), client, peer, false));
                        }
                        Some(tls) => {
                            tokio::spawn(serve_https(ctx.clone(), tls, client, peer));
                        }
                    },
                    Protocol::Tcp => {
                        tokio::spawn(tcp::serve_connection(ctx.clone(), client, peer));
                    }
                }
            }
            // The client gave up before we accepted; nothing to do.
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
                ) => {}
            Err(error) => {
                warn!(service = %ctx.service.name, %error, "accepting a connection failed");
                sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}

/// Completes the TLS handshake (within the service's header read timeout), then serves HTTP
/// over it.
/// A failed handshake (a scanner, a client that distrusts the certificate, plain HTTP sent to
/// the HTTPS port) is counted, and logged at debug only: on a public port they are routine.
async fn serve_https(
    ctx: Arc<ListenerCtx>,
    tls: ServerTls,
    client: tokio::net::TcpStream,
    peer: SocketAddr,
) {
    let handshake = tls.acceptor().accept(client);
    let limit = ctx.service.limits().limits.header_read_timeout;
    let done = if limit.is_zero() {
        Some(handshake.await)
    } else {
        tokio::time::timeout(limit, handshake).await.ok()
    };
    match done {
        Some(Ok(stream)) => http::serve_connection(ctx, stream, peer, true).await,
        Some(Err(error)) => {
            ctx.service.counters.tls_handshake_failed();
            ctx.sink.tls_handshake_failed(&ctx.service.name);
            debug!(service = %ctx.service.name, %peer, %error, "TLS handshake failed");
        }
        None => {
            ctx.service.counters.tls_handshake_failed();
            ctx.sink.tls_handshake_failed(&ctx.service.name);
            debug!(service = %ctx.service.name, %peer, "TLS handshake did not finish in time");
        }
    }
}
