//! tandem's own proxy: it owns each service's public port, so instances can come and go,
//! and traffic can move between revisions, without clients noticing.
//!
//! For now it passes TCP through: every client connection is joined to one backend (an
//! instance's own port), chosen round robin, and bytes are copied both ways with half-close
//! until both sides are done. The engine tells it which backends a service has with
//! [`Proxy::set_backends`]; the new set applies to new connections only, so an instance
//! taken out of the set is drained as its connections finish. A backend that refuses a
//! connection is skipped for a few seconds (passive failure detection). The deploy issue will make
//! it HTTP-aware and weight backends for canaries.
//!
//! The proxy runs on the caller's tokio runtime: one task per listener, one per connection.

mod backends;
mod error;
mod service;
mod stats;

pub use error::ProxyError;
pub use stats::ProxyStats;

use service::ServiceTraffic;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::net::TcpListener;
use tokio::task::AbortHandle;
use tracing::debug;

/// The proxy of one environment server. Cheap to clone; clones share everything. Dropping
/// the last clone stops every listener.
#[derive(Clone, Debug, Default)]
pub struct Proxy {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    /// Every service the proxy has heard of, listening or not. Never held across an await.
    services: Mutex<HashMap<String, ServiceEntry>>,
}

#[derive(Debug)]
struct ServiceEntry {
    traffic: Arc<ServiceTraffic>,
    listener: Option<Listening>,
}

#[derive(Debug)]
struct Listening {
    /// The address asked for (its port may be 0).
    requested: SocketAddr,
    /// The address bound.
    bound: SocketAddr,
    accept_loop: AbortHandle,
}

impl Listening {
    fn is_at(&self, addr: SocketAddr) -> bool {
        self.requested == addr || self.bound == addr
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        // Aborting the accept loop drops its listener, which closes the port.
        self.accept_loop.abort();
    }
}

impl Proxy {
    pub fn new() -> Proxy {
        Proxy::default()
    }

    /// Serves `service` on `listen` and returns the address bound (useful with port 0).
    ///
    /// Listening again on the same address is a no-op; on another address, the service moves
    /// there (the old port closes once the new one is bound; if binding fails, the old one
    /// stays). Connections are closed at once, or held up to a few seconds, while the service
    /// has no reachable backend (see [`Proxy::set_backends`]).
    pub async fn listen(
        &self,
        service: &str,
        listen: SocketAddr,
    ) -> Result<SocketAddr, ProxyError> {
        {
            let services = self.shared.lock_services();
            for (name, entry) in services.iter() {
                let Some(listening) = entry.listener.as_ref() else {
                    continue;
                };
                if name == service && listening.is_at(listen) {
                    return Ok(listening.bound);
                }
                if name != service && listen.port() != 0 && listening.is_at(listen) {
                    return Err(ProxyError::AddrTakenByService {
                        service: service.to_string(),
                        addr: listen,
                        other: name.clone(),
                    });
                }
            }
        }

        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| ProxyError::from_bind(service, listen, e))?;
        let bound = listener
            .local_addr()
            .map_err(|e| ProxyError::from_bind(service, listen, e))?;

        let mut services = self.shared.lock_services();
        let entry = entry_for(&mut services, service);
        let accept_loop = tokio::spawn(service::accept_loop(listener, entry.traffic.clone()));
        let previous = entry.listener.replace(Listening {
            requested: listen,
            bound,
            accept_loop: accept_loop.abort_handle(),
        });
        match previous {
            Some(previous) => {
                debug!(service, from = %previous.bound, to = %bound, "moved listener")
            }
            None => debug!(service, %bound, "listening"),
        }
        Ok(bound)
    }

    /// Replaces the backends of `service` at once: connections accepted from now on use
    /// `backends`, open connections stay where they are. With no backends (or none that
    /// answers), a new connection waits up to three seconds for a set with a reachable
    /// backend, then is closed. Works before [`Proxy::listen`] too.
    pub fn set_backends(&self, service: &str, backends: Vec<SocketAddr>) {
        let mut services = self.shared.lock_services();
        debug!(service, ?backends, "backends replaced");
        entry_for(&mut services, service)
            .traffic
            .set_backends(backends);
    }

    /// Stops listening for `service`; its open connections run until they finish. Its
    /// backends and counters stay, for a later [`Proxy::listen`].
    pub fn close(&self, service: &str) {
        let mut services = self.shared.lock_services();
        if let Some(listening) = services.get_mut(service).and_then(|e| e.listener.take()) {
            debug!(service, bound = %listening.bound, "stopped listening");
        }
    }

    /// Every service listening, with the address it is bound to, in name order.
    pub fn listening(&self) -> Vec<(String, SocketAddr)> {
        let services = self.shared.lock_services();
        let mut listening: Vec<(String, SocketAddr)> = services
            .iter()
            .filter_map(|(name, entry)| Some((name.clone(), entry.listener.as_ref()?.bound)))
            .collect();
        listening.sort();
        listening
    }

    /// The counters of `service` (all zero for a service the proxy has not heard of).
    pub fn stats(&self, service: &str) -> ProxyStats {
        let services = self.shared.lock_services();
        services
            .get(service)
            .map(|entry| entry.traffic.counters.snapshot())
            .unwrap_or_default()
    }
}

impl Shared {
    fn lock_services(&self) -> MutexGuard<'_, HashMap<String, ServiceEntry>> {
        // Every critical section leaves the map consistent, so a poisoned lock is usable.
        self.services.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn entry_for<'a>(
    services: &'a mut HashMap<String, ServiceEntry>,
    service: &str,
) -> &'a mut ServiceEntry {
    services
        .entry(service.to_string())
        .or_insert_with(|| ServiceEntry {
            traffic: Arc::new(ServiceTraffic::new(service)),
            listener: None,
        })
}
