//! Getting a request (or TCP connection) to a backend: pick one from the current set, connect
//! (or reuse a pooled connection), and when that fails take the backend out of rotation and
//! try the next, waiting up to `no_backend_wait` for a new set when none is left. And the
//! proxy's own answers when that does not work out ([`Refusal`]), each with its reason.

use crate::backends::{BackendState, OUT_AFTER_FAILURE};
use crate::meter::RequestMeter;
use crate::metrics::ProxyErrorSource;
use crate::service::{Limits, ListenerCtx};
use hyper::StatusCode;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::timeout_at;
use tracing::{debug, warn};

/// Runs `future` for at most `limit`; a zero `limit` means no limit.
pub(crate) async fn within<F: Future>(limit: Duration, future: F) -> Option<F::Output> {
    if limit.is_zero() {
        Some(future.await)
    } else {
        tokio::time::timeout(limit, future).await.ok()
    }
}

/// Why connecting to one backend failed.
#[derive(Debug)]
pub(crate) enum ConnectFailure {
    Io(io::Error),
    TimedOut(Duration),
}

impl ConnectFailure {
    fn code(&self) -> &'static str {
        match self {
            ConnectFailure::Io(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                "connect-refused"
            }
            ConnectFailure::TimedOut(_) => "connect-timeout",
            ConnectFailure::Io(_) => "connect-failed",
        }
    }
}

impl fmt::Display for ConnectFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectFailure::Io(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                f.write_str("refused the connection")
            }
            ConnectFailure::Io(e) => write!(f, "could not be connected to ({e})"),
            ConnectFailure::TimedOut(after) => {
                write!(f, "did not accept the connection within {after:?}")
            }
        }
    }
}

/// A request the proxy answers itself, with why.
#[derive(Debug)]
pub(crate) enum Refusal {
    NoBackend,
    Connect {
        addr: SocketAddr,
        failure: ConnectFailure,
    },
    /// The backend took the request but broke off: `what` says how.
    Broken {
        addr: SocketAddr,
        code: &'static str,
        what: &'static str,
    },
    Timeout {
        addr: SocketAddr,
        after: Duration,
    },
    BodyTooLarge {
        limit: u64,
    },
    HeadTooLarge {
        limit: usize,
    },
    ClientBodyBroken,
}

impl Refusal {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Refusal::NoBackend => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::Connect { .. } | Refusal::Broken { .. } => StatusCode::BAD_GATEWAY,
            Refusal::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Refusal::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::HeadTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Refusal::ClientBodyBroken => StatusCode::BAD_REQUEST,
        }
    }

    /// The value of the `x-tandem-proxy-error` header.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            Refusal::NoBackend => "no-backend",
            Refusal::Connect { failure, .. } => failure.code(),
            Refusal::Broken { code, .. } => code,
            Refusal::Timeout { .. } => "response-timeout",
            Refusal::BodyTooLarge { .. } => "body-too-large",
            Refusal::HeadTooLarge { .. } => "head-too-large",
            Refusal::ClientBodyBroken => "client-body-broken",
        }
    }

    pub(crate) fn source(&self) -> ProxyErrorSource {
        match self {
            Refusal::NoBackend
            | Refusal::Connect { .. }
            | Refusal::Broken { .. }
            | Refusal::Timeout { .. } => ProxyErrorSource::Upstream,
            Refusal::BodyTooLarge { .. }
            | Refusal::HeadTooLarge { .. }
            | Refusal::ClientBodyBroken => ProxyErrorSource::Downstream,
        }
    }

    /// The plain-text body: what happened, for the person reading the response.
    pub(crate) fn reason(&self, service: &str) -> String {
        match self {
            Refusal::NoBackend => format!("no healthy backend for service '{service}'"),
            Refusal::Connect { addr, failure } => {
                format!("backend {addr} of service '{service}' {failure}")
            }
            Refusal::Broken { addr, what, .. } => {
                format!("backend {addr} of service '{service}' {what}")
            }
            Refusal::Timeout { addr, after } => {
                format!("backend {addr} of service '{service}' did not answer within {after:?}")
            }
            Refusal::BodyTooLarge { limit } => {
                format!("the request body exceeds the proxy's limit of {limit} bytes")
            }
            Refusal::HeadTooLarge { limit } => {
                format!("the request head exceeds the proxy's limit of {limit} bytes")
            }
            Refusal::ClientBodyBroken => {
                "the request body broke off before it was complete".to_string()
            }
        }
    }
}

/// Picks a backend of the listener's service and connects to it with `connect`, trying each
/// backend at most once; with none left, waits for a new backend set until `no_backend_wait`
/// after the request started. A backend that fails is blamed in `meter` and taken out of
/// rotation for a while. `connect` gets the request's `limits` (its connect timeout).
pub(crate) async fn choose<T, F, Fut>(
    ctx: &ListenerCtx,
    limits: &Arc<Limits>,
    meter: &mut RequestMeter,
    connect: F,
) -> Result<(Arc<BackendState>, T), Refusal>
where
    F: Fn(Arc<BackendState>, Arc<Limits>) -> Fut,
    Fut: Future<Output = Result<T, ConnectFailure>>,
{
    let service = &ctx.service;
    let deadline = meter.start + ctx.config.no_backend_wait;
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut last: Option<(SocketAddr, ConnectFailure)> = None;
    let mut changes: Option<tokio::sync::watch::Receiver<Arc<crate::backends::BackendSet>>> = None;
    loop {
        let set = match &mut changes {
            Some(changes) => changes.borrow_and_update().clone(),
            None => service.backends.borrow().clone(),
        };
        while let Some(backend) = set.pick(&tried) {
            match connect(backend.clone(), limits.clone()).await {
                Ok(connection) => {
                    backend.mark_reachable();
                    return Ok((backend, connection));
                }
                Err(failure) => {
                    service.counters.connect_failed();
                    if backend.mark_failed() {
                        warn!(
                            service = %service.name, backend = %backend.addr, error = %failure,
                            "backend unreachable; skipping it for {OUT_AFTER_FAILURE:?}"
                        );
                    } else {
                        debug!(service = %service.name, backend = %backend.addr, error = %failure, "backend still unreachable");
                    }
                    tried.push(backend.addr);
                    last = Some((backend.addr, failure));
                    meter.blame(backend);
                }
            }
        }
        let Some(changes) = changes.as_mut() else {
            // Subscribe, then look once more: a set published meanwhile is not missed.
            changes = Some(service.backends.subscribe());
            continue;
        };
        if !matches!(timeout_at(deadline, changes.changed()).await, Ok(Ok(()))) {
            service.counters.unserved();
            return Err(match last {
                Some((addr, failure)) => Refusal::Connect { addr, failure },
                None => Refusal::NoBackend,
            });
        }
    }
}
