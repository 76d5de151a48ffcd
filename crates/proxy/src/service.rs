//! One service's traffic: the accept loop of its listener and the life of each client
//! connection, from picking a backend to copying bytes both ways until both sides close.

use crate::backends::BackendSet;
use crate::stats::Counters;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::{Instant, sleep, timeout, timeout_at};
use tracing::{debug, warn};

/// How long one connect to a backend may take before the next backend is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a client connection that finds no reachable backend waits for `set_backends`
/// to publish a new set before it is closed. This covers the gap of a recreate (old
/// instances stopped, new ones not yet registered) without making clients of a dead service
/// hang for long.
const NO_BACKEND_HOLD: Duration = Duration::from_secs(3);
/// Pause after an accept error such as running out of file descriptors, so the loop does
/// not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// What the accept loop and the connections of one service share with the [`Proxy`].
///
/// [`Proxy`]: crate::Proxy
#[derive(Debug)]
pub(crate) struct ServiceTraffic {
    pub(crate) name: String,
    /// The current backend set; a watch channel so held connections learn of a new set.
    pub(crate) backends: watch::Sender<Arc<BackendSet>>,
    /// Round-robin position: each new connection takes the next ticket.
    next_ticket: AtomicUsize,
    pub(crate) counters: Counters,
}

impl ServiceTraffic {
    pub(crate) fn new(name: &str) -> ServiceTraffic {
        ServiceTraffic {
            name: name.to_string(),
            backends: watch::Sender::new(Arc::new(BackendSet::default())),
            next_ticket: AtomicUsize::new(0),
            counters: Counters::default(),
        }
    }

    /// Publishes `addrs` as the backends for connections accepted from now on.
    pub(crate) fn set_backends(&self, addrs: Vec<SocketAddr>) {
        self.backends.send_modify(|current| {
            *current = Arc::new(BackendSet::replacing(current, addrs));
        });
    }
}

/// Accepts connections on `listener` until the task is aborted (which closes the listener);
/// each connection runs in its own task and outlives the loop.
pub(crate) async fn accept_loop(listener: TcpListener, service: Arc<ServiceTraffic>) {
    loop {
        match listener.accept().await {
            Ok((client, peer)) => {
                tokio::spawn(serve_connection(service.clone(), client, peer));
            }
            // The client gave up before we accepted; nothing to do.
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
                ) => {}
            Err(error) => {
                warn!(service = %service.name, %error, "accepting a connection failed");
                sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}

async fn serve_connection(service: Arc<ServiceTraffic>, mut client: TcpStream, peer: SocketAddr) {
    let _active = service.counters.connection_accepted();
    let _ = client.set_nodelay(true);
    let Some((mut upstream, backend)) = connect_upstream(&service).await else {
        service.counters.unserved();
        debug!(service = %service.name, %peer, "no backend reachable; closing the connection");
        return;
    };
    debug!(service = %service.name, %peer, %backend, "connection opened");
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((to_backend, to_client)) => debug!(
            service = %service.name, %peer, %backend, to_backend, to_client,
            "connection closed"
        ),
        Err(error) => debug!(
            service = %service.name, %peer, %backend, %error,
            "connection ended with an error"
        ),
    }
}

/// Connects to a backend of `service`, trying each backend of the current set at most once,
/// and waiting up to [`NO_BACKEND_HOLD`] for a new set when none answers.
async fn connect_upstream(service: &ServiceTraffic) -> Option<(TcpStream, SocketAddr)> {
    let mut backends = service.backends.subscribe();
    let hold_until = Instant::now() + NO_BACKEND_HOLD;
    let ticket = service.next_ticket.fetch_add(1, Ordering::Relaxed);
    loop {
        let set = backends.borrow_and_update().clone();
        for backend in set.connect_order(ticket) {
            let error = match timeout(CONNECT_TIMEOUT, TcpStream::connect(backend.addr)).await {
                Ok(Ok(upstream)) => {
                    backend.mark_reachable();
                    let _ = upstream.set_nodelay(true);
                    return Some((upstream, backend.addr));
                }
                Ok(Err(error)) => error.to_string(),
                Err(_) => format!("no answer within {CONNECT_TIMEOUT:?}"),
            };
            service.counters.connect_failed();
            if backend.mark_failed() {
                warn!(
                    service = %service.name, backend = %backend.addr, %error,
                    "backend unreachable; skipping it for {:?}", BackendSet::OUT_AFTER_FAILURE
                );
            } else {
                debug!(service = %service.name, backend = %backend.addr, %error, "backend still unreachable");
            }
        }
        if set.is_empty() {
            debug!(service = %service.name, "no backends; waiting for some");
        }
        match timeout_at(hold_until, backends.changed()).await {
            Ok(Ok(())) => continue,
            // The hold expired, or the proxy is gone.
            Ok(Err(_)) | Err(_) => return None,
        }
    }
}
