//! tandem's own proxy: it owns each service's public port, and one edge listener per
//! caller of each service, so instances can come and go, traffic can move between revisions,
//! and every call is attributed to its caller, without clients noticing.
//!
//! A listener speaks HTTP or TCP ([`Protocol`]). In HTTP mode each request picks a backend
//! (smooth weighted round robin), so weights apply per request even on long-lived
//! keep-alive connections, and the proxy enforces header and body limits and timeouts,
//! answers 502/503/504 with a reason, and records every request into a [`MetricsSink`] and
//! per-revision figures ([`Proxy::revision_stats`]). In TCP mode each connection picks a
//! backend and bytes pass through. An HTTP listener may speak HTTPS ([`ServerTls`]): TLS
//! ends in the proxy, with HTTP/1.1 or HTTP/2 by ALPN, and the certificate follows its files
//! on disk.
//!
//! All listeners of a service share one backend set, replaced whole by
//! [`Proxy::set_weighted_backends`]. Weight 0 or leaving the set drains a backend: no new
//! work, in-flight work finishes ([`Proxy::drain`] waits for it). A backend that refuses a
//! connection is skipped for a few seconds (passive failure detection), and the request
//! tries another. They share one set of limits too ([`ServiceLimits`]), replaced whole by
//! [`Proxy::set_service_limits`]; each client connection keeps the one it read last and
//! looks for a newer one with a single atomic load per request.
//!
//! The proxy runs on the caller's tokio runtime: one task per listener, one per connection.
//!
//! By default the proxy binds its listening sockets itself. Given a [`ListenerSource`]
//! ([`Proxy::with_source`]) it adopts sockets the source binds and keeps instead, and tells
//! it when one is no longer needed; that is how the server's sockets outlive the server (the
//! port holder), without this crate knowing how they are kept.

mod backends;
mod body;
mod config;
mod error;
mod http;
mod meter;
mod metrics;
mod route;
mod service;
#[cfg(test)]
mod source_tests;
mod stats;
mod tcp;
mod tls;
mod upstream;

pub use config::{Backend, ListenerKey, Protocol, ProxyConfig, ServiceLimits};
pub use error::ProxyError;
pub use metrics::{
    LatencyHistogram, MethodClass, MetricsSink, NoMetrics, ProxyErrorSource, RequestRecord,
    RevisionStats,
};
pub use stats::ProxyStats;
pub use tls::{RELOAD_CHECK, ServerTls, TlsError};

use backends::lock;
use service::{ListenerCtx, ServiceTraffic};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::debug;

/// Where a proxy gets its listening sockets when it does not bind them itself: something
/// that keeps them open beyond the proxy's life, so that connections queue in the kernel
/// while no proxy accepts.
///
/// The calls block (briefly: a local request), and are made outside the proxy's locks.
pub trait ListenerSource: Send + Sync + 'static {
    /// A listening socket on `addr`: the one the source already holds for it, or a new one.
    /// A failed bind is the OS's error, so its kind (`AddrInUse`, `PermissionDenied`, …)
    /// reads as if the proxy had bound it.
    fn acquire(&self, addr: SocketAddr) -> io::Result<std::net::TcpListener>;

    /// The proxy no longer serves the socket bound at `addr`; the source may close it.
    fn release(&self, addr: SocketAddr);

    /// Every address the source holds a socket for, served by this proxy or not.
    fn held(&self) -> Vec<SocketAddr>;
}

/// The proxy of one environment server. Cheap to clone; clones share everything. Dropping
/// the last clone stops every listener (open connections run until they finish).
#[derive(Clone)]
pub struct Proxy {
    shared: Arc<Shared>,
}

struct Shared {
    config: Arc<ProxyConfig>,
    sink: Arc<dyn MetricsSink>,
    /// Every service the proxy has heard of, listening or not. Never held across an await.
    services: Mutex<HashMap<String, Arc<ServiceTraffic>>>,
    listeners: Mutex<BTreeMap<ListenerKey, Listening>>,
    /// Where listening sockets come from; `None`: bound by the proxy, closed with it.
    source: Option<Arc<dyn ListenerSource>>,
}

struct Listening {
    /// The address asked for (its port may be 0).
    requested: SocketAddr,
    /// The address bound.
    bound: SocketAddr,
    ctx: Arc<ListenerCtx>,
    /// Always `Some` until [`Listening::close`] takes it.
    accept_loop: Option<JoinHandle<()>>,
}

impl Listening {
    fn is_at(&self, addr: SocketAddr) -> bool {
        self.requested == addr || self.bound == addr
    }

    /// Whether a socket on `addr` could not be bound beside this one: the same port, and
    /// the same address or either one all interfaces.
    fn clashes_with(&self, addr: SocketAddr) -> bool {
        addr.port() != 0 && addresses_clash(self.bound, addr)
    }
}

/// Whether listeners on `a` and `b` cannot both be bound: the same port, and the same
/// address or either one unspecified (`0.0.0.0`, `[::]`: on Linux these take the port on
/// every address).
fn addresses_clash(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

impl Listening {
    /// Closes the port and returns once it is closed (dropping only asks for that).
    async fn close(mut self) {
        if let Some(accept_loop) = self.accept_loop.take() {
            accept_loop.abort();
            let _ = accept_loop.await;
        }
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        // Aborting the accept loop drops its listener, which closes the port.
        if let Some(accept_loop) = &self.accept_loop {
            accept_loop.abort();
        }
    }
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("config", &self.shared.config)
            .field("listeners", &self.listeners())
            .finish_non_exhaustive()
    }
}

// === impl Proxy: listeners ===

impl Proxy {
    /// A proxy with `config` that hands a record of every request to `sink` ([`NoMetrics`]
    /// when nobody watches).
    pub fn with_config(config: ProxyConfig, sink: Arc<dyn MetricsSink>) -> Proxy {
        Proxy::build(config, sink, None)
    }

    /// [`Proxy::with_config`], taking its listening sockets from `source` instead of binding
    /// them: a listener adopts the source's socket, and closing it (or moving it to another
    /// address) releases the socket to the source. Dropping the proxy releases nothing, so
    /// the sockets stay open, with connections queueing, for the next proxy to adopt.
    pub fn with_source(
        config: ProxyConfig,
        sink: Arc<dyn MetricsSink>,
        source: Arc<dyn ListenerSource>,
    ) -> Proxy {
        Proxy::build(config, sink, Some(source))
    }

    fn build(
        config: ProxyConfig,
        sink: Arc<dyn MetricsSink>,
        source: Option<Arc<dyn ListenerSource>>,
    ) -> Proxy {
        Proxy {
            shared: Arc::new(Shared {
                config: Arc::new(config),
                sink,
                services: Mutex::new(HashMap::new()),
                listeners: Mutex::new(BTreeMap::new()),
                source,
            }),
        }
    }

    pub fn config(&self) -> &ProxyConfig {
        &self.shared.config
    }

    /// Serves `key` on `addr` speaking `protocol` in plain text, and returns the address
    /// bound (useful with port 0). See [`Proxy::listen`].
    pub async fn listen_on(
        &self,
        key: ListenerKey,
        addr: SocketAddr,
        protocol: Protocol,
    ) -> Result<SocketAddr, ProxyError> {
        self.listen(key, addr, protocol, None).await
    }

    /// Serves `key` on `addr` speaking `protocol`, over TLS when `tls` is given (HTTP
    /// listeners only), and returns the address bound (useful with port 0).
    ///
    /// Listening again on the same address is a no-op apart from switching the protocol and
    /// the TLS settings for new connections; on another address, the listener moves there
    /// (the old port closes once the new one is bound; if binding fails, the old one stays,
    /// also when the new address takes the same port, such as 127.0.0.1:80 to 0.0.0.0:80,
    /// and the old listener has to close first). An address that clashes with another key's
    /// listener is refused.
    pub async fn listen(
        &self,
        key: ListenerKey,
        addr: SocketAddr,
        protocol: Protocol,
        tls: Option<ServerTls>,
    ) -> Result<SocketAddr, ProxyError> {
        let mut moving_within_port = None;
        {
            let listeners = lock(&self.shared.listeners);
            for (other, listening) in listeners.iter() {
                if *other == key && listening.is_at(addr) {
                    listening.ctx.set_protocol(protocol);
                    listening.ctx.set_tls(tls);
                    return Ok(listening.bound);
                }
                if *other == key && listening.clashes_with(addr) {
                    moving_within_port = Some(listening.requested);
                }
                if *other != key && listening.clashes_with(addr) {
                    return Err(ProxyError::AddrTakenByService {
                        listener: key,
                        addr,
                        other: other.clone(),
                    });
                }
            }
        }

        let listener = match self.bind(addr).await {
            Ok(listener) => listener,
            // The listener moves to another address of the same port: ours holds the port,
            // so it closes first; if the new address cannot be bound, the old one is bound
            // again.
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && moving_within_port.is_some() => {
                let old = lock(&self.shared.listeners).remove(&key);
                let old_settings = old.as_ref().map(|l| (l.ctx.protocol(), l.ctx.tls()));
                if let Some(old) = old {
                    let bound = old.bound;
                    old.close().await;
                    self.release(bound).await;
                }
                match self.bind(addr).await {
                    Ok(listener) => listener,
                    Err(e) => {
                        if let (Some(previous), Some((protocol, tls))) =
                            (moving_within_port, old_settings)
                        {
                            let restored =
                                Box::pin(self.listen(key.clone(), previous, protocol, tls)).await;
                            if let Err(error) = restored {
                                tracing::warn!(listener = %key, %error, "could not listen again on the previous address");
                            }
                        }
                        return Err(ProxyError::from_bind(&key, addr, e));
                    }
                }
            }
            Err(e) => return Err(ProxyError::from_bind(&key, addr, e)),
        };
        let bound = listener
            .local_addr()
            .map_err(|e| ProxyError::from_bind(&key, addr, e))?;

        let ctx = Arc::new(ListenerCtx::new(
            self.traffic(&key.service),
            key.caller.clone(),
            protocol,
            tls,
            self.shared.config.clone(),
            self.shared.sink.clone(),
        ));
        let accept_loop = tokio::spawn(service::accept_loop(listener, ctx.clone()));
        let listening = Listening {
            requested: addr,
            bound,
            ctx,
            accept_loop: Some(accept_loop),
        };
        let previous = lock(&self.shared.listeners).insert(key.clone(), listening);
        match previous {
            Some(previous) => {
                debug!(listener = %key, from = %previous.bound, to = %bound, protocol = protocol.as_str(), "moved listener");
                let old = previous.bound;
                drop(previous);
                if old != bound {
                    self.release(old).await;
                }
            }
            None => debug!(listener = %key, %bound, protocol = protocol.as_str(), "listening"),
        }
        Ok(bound)
    }

    /// A listening socket on `addr`: bound here, or adopted from the source.
    async fn bind(&self, addr: SocketAddr) -> io::Result<TcpListener> {
        let Some(source) = self.shared.source.clone() else {
            return TcpListener::bind(addr).await;
        };
        let listener = tokio::task::spawn_blocking(move || source.acquire(addr))
            .await
            .map_err(io::Error::other)??;
        // The source's copy may be blocking; the flag is shared by every copy, and the
        // source never accepts on its own.
        listener.set_nonblocking(true)?;
        TcpListener::from_std(listener)
    }

    /// Tells the source (if any) that the socket at `addr` is no longer served here.
    async fn release(&self, addr: SocketAddr) {
        if let Some(source) = self.shared.source.clone() {
            let _ = tokio::task::spawn_blocking(move || source.release(addr)).await;
        }
    }

    /// Stops listening for `key`; its open connections run until they finish. The service's
    /// backends and figures stay. With a source, its socket is released to it.
    pub fn close_listener(&self, key: &ListenerKey) {
        let removed = lock(&self.shared.listeners).remove(key);
        if let Some(listening) = removed {
            debug!(listener = %key, bound = %listening.bound, "stopped listening");
            let bound = listening.bound;
            drop(listening);
            if let Some(source) = &self.shared.source {
                source.release(bound);
            }
        }
    }

    /// Stops accepting on every listener, without closing or releasing a socket: for a
    /// server about to exit, so that new connections wait in the source's sockets for the
    /// next server instead of reaching one that is going away. Open connections go on.
    pub async fn stop_accepting(&self) {
        let loops: Vec<JoinHandle<()>> = lock(&self.shared.listeners)
            .values_mut()
            .filter_map(|l| l.accept_loop.take())
            .collect();
        for accept_loop in loops {
            accept_loop.abort();
            let _ = accept_loop.await;
        }
    }

    /// Requests (HTTP) and connections (TCP) in flight at any backend of any service.
    pub fn work_in_flight(&self) -> u64 {
        let services: Vec<Arc<ServiceTraffic>> =
            lock(&self.shared.services).values().cloned().collect();
        services.iter().map(|t| t.in_flight_total()).sum()
    }

    /// The addresses the listener source holds sockets for, served here or not (none without
    /// a source). A port held there is ours to listen on, not another program's.
    pub fn held_addresses(&self) -> Vec<SocketAddr> {
        self.shared
            .source
            .as_ref()
            .map(|source| source.held())
            .unwrap_or_default()
    }

    /// Releases every socket the source holds that no listener here is bound to and that is
    /// not in `keep`: what an earlier proxy (a server that stopped) held and this one does not
    /// need. Without a source, nothing happens.
    pub fn release_unused(&self, keep: &[SocketAddr]) {
        let Some(source) = &self.shared.source else {
            return;
        };
        let serving: Vec<SocketAddr> = lock(&self.shared.listeners)
            .values()
            .map(|l| l.bound)
            .collect();
        for addr in source.held() {
            if !serving.contains(&addr) && !keep.contains(&addr) {
                debug!(%addr, "released a held socket no listener needs");
                source.release(addr);
            }
        }
    }

    /// Every listener with the address it is bound to and its protocol, in key order.
    pub fn listeners(&self) -> Vec<(ListenerKey, SocketAddr, Protocol)> {
        lock(&self.shared.listeners)
            .iter()
            .map(|(key, l)| (key.clone(), l.bound, l.ctx.protocol()))
            .collect()
    }

    fn traffic(&self, service: &str) -> Arc<ServiceTraffic> {
        let mut services = lock(&self.shared.services);
        match services.get(service) {
            Some(traffic) => traffic.clone(),
            None => {
                let limits = self.shared.config.service_limits();
                let traffic = Arc::new(ServiceTraffic::new(service, limits));
                services.insert(service.to_string(), traffic.clone());
                traffic
            }
        }
    }

    fn existing_traffic(&self, service: &str) -> Option<Arc<ServiceTraffic>> {
        lock(&self.shared.services).get(service).cloned()
    }
}

// === impl Proxy: backends, drain, figures ===

impl Proxy {
    /// Replaces the backends of `service` at once; all its listeners (public and edges)
    /// share them. Works before any listener exists too.
    ///
    /// HTTP: weights apply per request, also on existing keep-alive client connections
    /// (client connections survive every switch; only backend connections change). TCP:
    /// weights apply per new connection. Weight 0 = no new requests or connections
    /// (draining); backends absent from the new set get no new work either, and their
    /// in-flight requests finish. A repeated address keeps its first entry.
    pub fn set_weighted_backends(&self, service: &str, backends: Vec<Backend>) {
        debug!(service, ?backends, "backends replaced");
        self.traffic(service).set_backends(&backends);
    }

    /// Replaces the limits of `service`'s traffic, on its public port and every edge listener
    /// to it; works before any listener exists too. New connections and the next request of
    /// an open one get them (see [`ServiceLimits`] for the few decided per connection);
    /// requests in flight keep theirs. Client connections stay open.
    pub fn set_service_limits(&self, service: &str, limits: ServiceLimits) {
        debug!(service, ?limits, "service limits set");
        self.traffic(service).set_limits(limits);
    }

    /// The limits `service`'s traffic lives under now.
    pub fn service_limits(&self, service: &str) -> ServiceLimits {
        match self.existing_traffic(service) {
            Some(traffic) => traffic.limits().limits.clone(),
            None => self.shared.config.service_limits(),
        }
    }

    /// Requests (HTTP) or connections (TCP) of `service` in flight at `addr` right now.
    pub fn in_flight(&self, service: &str, addr: SocketAddr) -> u64 {
        self.existing_traffic(service)
            .and_then(|traffic| traffic.state_of(addr))
            .map_or(0, |state| state.in_flight())
    }

    /// Waits until none of `addrs` has in-flight work for `service`, or `timeout` passes;
    /// true when drained. Take the addresses out of the set (or weight them 0) first, or new
    /// work keeps arriving.
    pub async fn drain(&self, service: &str, addrs: &[SocketAddr], timeout: Duration) -> bool {
        let Some(traffic) = self.existing_traffic(service) else {
            return true;
        };
        let states: Vec<_> = addrs.iter().filter_map(|a| traffic.state_of(*a)).collect();
        let all_idle = async {
            for state in &states {
                state.wait_idle().await;
            }
        };
        tokio::time::timeout(timeout, all_idle).await.is_ok()
    }

    /// Cumulative per-revision figures of `service` since the proxy started (all
    /// listeners). Diff two snapshots with [`RevisionStats::since`] to judge a window.
    pub fn revision_stats(&self, service: &str) -> BTreeMap<u64, RevisionStats> {
        self.existing_traffic(service)
            .map(|traffic| traffic.revision_stats())
            .unwrap_or_default()
    }

    /// The connection counters of `service` (all zero for a service the proxy has not heard
    /// of).
    pub fn stats(&self, service: &str) -> ProxyStats {
        self.existing_traffic(service)
            .map(|traffic| traffic.counters.snapshot())
            .unwrap_or_default()
    }
}
