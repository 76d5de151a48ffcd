//! What a caller decides about the proxy: which protocol a listener speaks, which listener is
//! which, the backends of a service, the limits and timeouts every HTTP request lives under
//! ([`ProxyConfig`], the defaults), and those one service sets for itself ([`ServiceLimits`]).

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// What a listener speaks. HTTP listeners understand requests (per-request weights, limits,
/// metrics, HTTP/1.1 and h2c); TCP listeners pass bytes through per connection (databases,
/// caches, anything not HTTP).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http,
    Tcp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Tcp => "tcp",
        }
    }
}

/// Which listener: the public port of `service` (`caller` is `None`), or the edge listener
/// through which service `caller` reaches `service`, so every call is attributed to its caller.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenerKey {
    pub service: String,
    pub caller: Option<String>,
}

impl ListenerKey {
    /// The public port of `service`.
    pub fn public(service: &str) -> ListenerKey {
        ListenerKey {
            service: service.to_string(),
            caller: None,
        }
    }

    /// The edge listener `caller` -> `service`.
    pub fn edge(caller: &str, service: &str) -> ListenerKey {
        ListenerKey {
            service: service.to_string(),
            caller: Some(caller.to_string()),
        }
    }
}

/// "service 'api'" or "the edge 'web' -> 'api'", for messages.
impl fmt::Display for ListenerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.caller {
            None => write!(f, "service '{}'", self.service),
            Some(caller) => write!(f, "the edge '{caller}' -> '{}'", self.service),
        }
    }
}

/// One instance behind a service: where it listens, its share of new work, and what it is
/// (for metrics and per-revision figures).
#[derive(Clone, Debug, PartialEq)]
pub struct Backend {
    pub addr: SocketAddr,
    /// Relative share of new requests (HTTP) or connections (TCP); 0 = none (draining).
    pub weight: u32,
    pub revision: u64,
    pub instance: String,
}

/// Limits and timeouts of the proxy. [`ProxyConfig::default`] gives the documented defaults.
/// A zero timeout means no timeout. All but `no_backend_wait` are the defaults of every
/// service's [`ServiceLimits`], which [`crate::Proxy::set_service_limits`] replaces.
#[derive(Clone, Debug, PartialEq)]
pub struct ProxyConfig {
    /// A client that has not sent a full request head this long after the connection opened
    /// (or after its previous response, on a keep-alive connection) is disconnected. So this
    /// is also how long an idle keep-alive connection stays open. Default 10 s.
    pub header_read_timeout: Duration,
    /// The largest request head (request line and headers) answered; larger gets 431.
    /// Default 64 KiB.
    pub max_header_bytes: usize,
    /// The largest request body forwarded; `None` (the default) = unlimited. Bodies are always
    /// streamed; one announced larger gets 413 at once, one that grows past it while streaming
    /// gets 413 if the backend has not answered yet, otherwise the connection is reset.
    pub max_body_bytes: Option<u64>,
    /// How long connecting to a backend may take before the next one is tried. Default 2 s.
    pub connect_timeout: Duration,
    /// How long a backend may take, once the request is sent, to send its response head before
    /// the client gets 504. Default 60 s.
    pub response_timeout: Duration,
    /// How long a request (or TCP connection) waits for a reachable backend to appear before
    /// it gets 503 (or is closed). Covers the gap of a recreate. Default 2 s; zero = at once.
    pub no_backend_wait: Duration,
}

impl Default for ProxyConfig {
    fn default() -> ProxyConfig {
        ProxyConfig {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            max_body_bytes: None,
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(60),
            no_backend_wait: Duration::from_secs(2),
        }
    }
}

impl ProxyConfig {
    /// The limits of a service that sets none of its own.
    pub fn service_limits(&self) -> ServiceLimits {
        ServiceLimits {
            header_read_timeout: self.header_read_timeout,
            max_header_bytes: self.max_header_bytes,
            max_body_bytes: self.max_body_bytes,
            connect_timeout: self.connect_timeout,
            response_timeout: self.response_timeout,
        }
    }
}

/// The limits one service's traffic lives under, on its public port and every edge listener
/// to it: the fields of [`ProxyConfig`] of the same names, which give the defaults. A zero
/// timeout means no timeout. Set with [`crate::Proxy::set_service_limits`]; a change applies
/// to the next request, also on open keep-alive connections, except what is decided once per
/// connection: the hyper settings that cap how much of a request head is buffered (from
/// `max_header_bytes`), and the TLS handshake's time limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceLimits {
    /// How long a client may take to send a request head, after connecting or after its
    /// previous response; also how long an idle keep-alive connection stays open.
    pub header_read_timeout: Duration,
    /// The largest request head answered; larger gets 431.
    pub max_header_bytes: usize,
    /// The largest request body forwarded; `None` = unlimited; larger gets 413.
    pub max_body_bytes: Option<u64>,
    /// How long connecting to a backend may take before the next one is tried (HTTP and
    /// TCP).
    pub connect_timeout: Duration,
    /// How long a backend may take, once the request is sent, to send its response head
    /// before the client gets 504.
    pub response_timeout: Duration,
}

impl Default for ServiceLimits {
    fn default() -> ServiceLimits {
        ProxyConfig::default().service_limits()
    }
}
