//! HTTP mode: each client connection is served by hyper (HTTP/1.1 with keep-alive, or h2c
//! with prior knowledge), and each request independently picks a backend, so weights apply
//! per request, also on long-lived keep-alive connections, and a client connection survives
//! every backend switch. Upstream is always HTTP/1.1 over a per-backend pool of keep-alive
//! connections, so an h2c client is served by HTTP/1.1 backends.
//!
//! Bodies stream both ways (see [`crate::body`]). An `Upgrade` request (WebSocket) is
//! forwarded with its upgrade headers; on `101 Switching Protocols` the two upgraded
//! connections are spliced and bytes copied both ways until both close.

use crate::backends::BackendState;
use crate::body::{ClientBody, Lease, ProxyBody};
use crate::config::{Protocol, ProxyConfig};
use crate::meter::{BodyProgress, RequestMeter};
use crate::metrics::{MethodClass, ProxyErrorSource};
use crate::route::{ConnectFailure, Refusal, choose, within};
use crate::service::ListenerCtx;
use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tracing::debug;

/// The first bytes of every HTTP/2 connection (RFC 9113, 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_TANDEM_PROXY_ERROR: HeaderName = HeaderName::from_static("x-tandem-proxy-error");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The hyper server settings of one listener, built once from the [`ProxyConfig`].
pub(crate) struct Servers {
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
}

impl Servers {
    pub(crate) fn new(config: &ProxyConfig) -> Servers {
        // hyper stops reading a head at twice the limit, so a client cannot make the proxy
        // buffer more; heads between the limit and that get the proxy's own 431 with its
        // reason (see `head_size`).
        let head_cap = config.max_header_bytes.saturating_mul(2).max(8192);
        let mut h1 = http1::Builder::new();
        h1.timer(TokioTimer::new())
            .keep_alive(true)
            .max_header_size(head_cap)
            .max_buf_size(head_cap.max(400 * 1024));
        let header_timeout =
            (!config.header_read_timeout.is_zero()).then_some(config.header_read_timeout);
        h1.header_read_timeout(header_timeout);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(head_cap).unwrap_or(u32::MAX));
        Servers { h1, h2 }
    }
}

/// One client connection.
struct Conn {
    ctx: Arc<ListenerCtx>,
    /// The client's address as an `X-Forwarded-For` entry.
    peer_ip: HeaderValue,
}

pub(crate) async fn serve_connection(
    ctx: Arc<ListenerCtx>,
    mut stream: TcpStream,
    peer: SocketAddr,
) {
    let _active = ctx.service.counters.connection_accepted();
    // A client that does not even say which HTTP version it speaks within the header
    // timeout is cut off like one that is slow to send its head.
    let Some(Ok(Some((h2, prefix)))) =
        within(ctx.config.header_read_timeout, detect_version(&mut stream)).await
    else {
        debug!(service = %ctx.service.name, %peer, "client sent no request in time; closing");
        return;
    };
    let peer_ip = HeaderValue::try_from(peer.ip().to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
    let conn = Arc::new(Conn {
        ctx: ctx.clone(),
        peer_ip,
    });
    let io = TokioIo::new(Prefixed {
        prefix,
        inner: stream,
    });
    let service = service_fn(move |request| {
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(proxy_request(&conn, request).await) }
    });
    let served = if h2 {
        ctx.servers.h2.serve_connection(io, service).await
    } else {
        ctx.servers
            .h1
            .serve_connection(io, service)
            .with_upgrades()
            .await
    };
    if let Err(error) = served {
        debug!(service = %ctx.service.name, %peer, %error, "client connection ended with an error");
    }
}

/// Reads until the first bytes tell HTTP/2 (the preface) from HTTP/1. Returns whether it is
/// HTTP/2 and the bytes read, or `None` when the client closed first.
async fn detect_version(stream: &mut TcpStream) -> io::Result<Option<(bool, Bytes)>> {
    let mut read = BytesMut::with_capacity(4096);
    loop {
        if stream.read_buf(&mut read).await? == 0 {
            return Ok(None);
        }
        let common = read.len().min(H2_PREFACE.len());
        if read[..common] != H2_PREFACE[..common] {
            return Ok(Some((false, read.freeze())));
        }
        if read.len() >= H2_PREFACE.len() {
            return Ok(Some((true, read.freeze())));
        }
    }
}

/// A connection whose first bytes were already read: they are replayed before the rest.
struct Prefixed {
    prefix: Bytes,
    inner: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

// === the request path ===

async fn proxy_request(conn: &Conn, mut request: Request<Incoming>) -> Response<ProxyBody> {
    let ctx = &conn.ctx;
    let config = &*ctx.config;
    let mut meter = RequestMeter::new(
        ctx.clone(),
        MethodClass::of(request.method()),
        Protocol::Http,
    );
    if head_size(&request) > config.max_header_bytes {
        let limit = config.max_header_bytes;
        return answer(meter, &Refusal::HeadTooLarge { limit });
    }
    if let Some(limit) = config.max_body_bytes
        && request.body().size_hint().lower() > limit
    {
        return answer(meter, &Refusal::BodyTooLarge { limit });
    }

    let upgrade = wants_upgrade(&request);
    let client_upgrade: Option<OnUpgrade> = upgrade.then(|| hyper::upgrade::on(&mut request));
    let (mut head, body) = request.into_parts();
    rewrite_request_head(&mut head, conn, upgrade);
    let progress = (!body.is_end_stream()).then(|| Arc::new(BodyProgress::default()));
    meter.body_in = progress.clone();
    let mut request = Request::from_parts(
        head,
        ClientBody::new(body, progress.clone(), config.max_body_bytes),
    );

    let (backend, mut sender) = match choose(ctx, &mut meter, checkout_or_connect).await {
        Ok(chosen) => chosen,
        Err(refusal) => return answer(meter, &refusal),
    };
    meter.assign(backend.clone());

    // A pooled connection the backend closed just before we used it gives the request back
    // unsent: it goes out again on a fresh connection.
    let mut resends = 0;
    let mut response = loop {
        let sent = within(config.response_timeout, sender.try_send_request(request)).await;
        match sent {
            Some(Ok(response)) => break response,
            None => {
                let refusal = Refusal::Timeout {
                    addr: backend.addr,
                    after: config.response_timeout,
                };
                return answer(meter, &refusal);
            }
            Some(Err(mut error)) => {
                if let Some(unsent) = error.take_message()
                    && resends < 2
                {
                    resends += 1;
                    request = unsent;
                    sender = match connect(&backend, config).await {
                        Ok(sender) => sender,
                        Err(failure) => {
                            let addr = backend.addr;
                            return answer(meter, &Refusal::Connect { addr, failure });
                        }
                    };
                    continue;
                }
                let refusal =
                    send_failure(error.error(), progress.as_deref(), backend.addr, config);
                return answer(meter, &refusal);
            }
        }
    };

    meter.status = response.status().as_u16();
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            let refusal = Refusal::Broken {
                addr: backend.addr,
                code: "invalid-response",
                what: "switched protocols without being asked to",
            };
            return answer(meter, &refusal);
        };
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        let (mut head, _) = response.into_parts();
        let protocol = head.headers.get(header::UPGRADE).cloned();
        remove_hop_by_hop(&mut head.headers);
        if let Some(protocol) = protocol {
            head.headers.insert(header::UPGRADE, protocol);
            head.headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        tokio::spawn(splice(meter, client_upgrade, upstream_upgrade));
        return Response::from_parts(head, ProxyBody::empty());
    }
    let (mut head, body) = response.into_parts();
    remove_hop_by_hop(&mut head.headers);
    let lease = Lease { sender, backend };
    Response::from_parts(head, ProxyBody::upstream(body, meter, Some(lease)))
}

/// An idle pooled connection to `backend`, or a new one.
async fn checkout_or_connect(
    backend: Arc<BackendState>,
    config: Arc<ProxyConfig>,
) -> Result<SendRequest<ClientBody>, ConnectFailure> {
    match backend.checkout() {
        Some(sender) => Ok(sender),
        None => connect(&backend, &config).await,
    }
}

/// Opens a new HTTP/1.1 connection to `backend`; its connection task runs on its own and
/// ends when the last handle to it is dropped.
async fn connect(
    backend: &BackendState,
    config: &ProxyConfig,
) -> Result<SendRequest<ClientBody>, ConnectFailure> {
    let stream = match within(config.connect_timeout, TcpStream::connect(backend.addr)).await {
        Some(Ok(stream)) => stream,
        Some(Err(error)) => return Err(ConnectFailure::Io(error)),
        None => return Err(ConnectFailure::TimedOut(config.connect_timeout)),
    };
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(ConnectFailure::Handshake)?;
    tokio::spawn(async move {
        if let Err(error) = connection.with_upgrades().await {
            debug!(%error, "backend connection ended with an error");
        }
    });
    Ok(sender)
}

/// What went wrong after the request was handed to the backend's connection.
fn send_failure(
    error: &hyper::Error,
    progress: Option<&BodyProgress>,
    addr: SocketAddr,
    config: &ProxyConfig,
) -> Refusal {
    if let Some(progress) = progress {
        if progress.too_large.load(Ordering::Relaxed)
            && let Some(limit) = config.max_body_bytes
        {
            return Refusal::BodyTooLarge { limit };
        }
        if progress.client_failed.load(Ordering::Relaxed) {
            return Refusal::ClientBodyBroken;
        }
    }
    let (code, what) = if error.is_parse() {
        ("invalid-response", "sent an invalid response")
    } else if error.is_incomplete_message() || error.is_canceled() {
        ("upstream-closed", "closed the connection before answering")
    } else {
        ("upstream-reset", "reset the connection")
    };
    Refusal::Broken { addr, code, what }
}

/// The proxy's own answer: plain text with the reason, and its code in a header.
fn answer(mut meter: RequestMeter, refusal: &Refusal) -> Response<ProxyBody> {
    let reason = refusal.reason(&meter.ctx().service.name);
    debug!(service = %meter.ctx().service.name, code = refusal.code(), %reason, "answering");
    let mut text = reason.into_bytes();
    text.push(b'\n');
    meter.status = refusal.status().as_u16();
    meter.bytes_out = text.len() as u64;
    meter.finish(Some(refusal.source()));
    let mut response = Response::new(ProxyBody::full(text));
    *response.status_mut() = refusal.status();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(
        X_TANDEM_PROXY_ERROR.clone(),
        HeaderValue::from_static(refusal.code()),
    );
    if refusal.source() == ProxyErrorSource::Downstream {
        // The rest of what the client sent is not worth reading.
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Joins the client's and the backend's upgraded connections and copies bytes both ways;
/// the request counts as in flight (and is recorded) until both sides are done.
async fn splice(mut meter: RequestMeter, client: OnUpgrade, upstream: OnUpgrade) {
    let (client, upstream) = tokio::join!(client, upstream);
    let (client, upstream) = match (client, upstream) {
        (Ok(client), Ok(upstream)) => (client, upstream),
        (Err(_), _) => return meter.finish(Some(ProxyErrorSource::Downstream)),
        (_, Err(_)) => return meter.finish(Some(ProxyErrorSource::Upstream)),
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((to_backend, to_client)) => {
            meter.bytes_in = to_backend;
            meter.bytes_out = to_client;
            meter.finish(None);
        }
        // Who reset is not known here; a client going away is the common case.
        Err(_) => meter.finish(Some(ProxyErrorSource::Downstream)),
    }
}

// === headers ===

/// About the size of the request head on the wire.
fn head_size(request: &Request<Incoming>) -> usize {
    let uri = request.uri();
    let target = uri.path_and_query().map_or(1, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len());
    let headers: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    request.method().as_str().len() + target + 12 + headers
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn wants_upgrade(request: &Request<Incoming>) -> bool {
    request.version() == Version::HTTP_11
        && request.headers().contains_key(header::UPGRADE)
        && connection_has(request.headers(), "upgrade")
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
        || name == header::TE
        || name == header::TRAILER
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
}

/// Removes the headers that describe one hop, not the message (RFC 9110, 7.6.1), including
/// those the `Connection` header names.
fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages have none: one pass of cheap name comparisons instead of a hash lookup
    // per hop-by-hop name (this runs twice per request on the proxy's hot path).
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        headers.remove(header::CONNECTION);
        for name in named {
            headers.remove(name);
        }
    }
    for name in [
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::TE,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
    ] {
        headers.remove(name);
    }
}

/// Makes a client's request head fit to go to a backend over HTTP/1.1.
fn rewrite_request_head(head: &mut hyper::http::request::Parts, conn: &Conn, upgrade: bool) {
    let headers = &mut head.headers;
    let protocol = upgrade
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten();
    remove_hop_by_hop(headers);
    if let Some(protocol) = protocol {
        headers.insert(header::UPGRADE, protocol);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }

    // HTTP/2 requests carry the host as the URI's authority; HTTP/1.1 wants a Host header
    // and an origin-form target.
    let host = match headers.get(header::HOST) {
        Some(host) => Some(host.clone()),
        None => head
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
    };
    if head.uri.authority().is_some() || head.uri.scheme().is_some() {
        let target = head
            .uri
            .path_and_query()
            .map_or_else(|| Uri::from_static("/"), |p| Uri::from(p.clone()));
        head.uri = target;
    }
    head.version = Version::HTTP_11;
    if let Some(host) = host {
        if !headers.contains_key(header::HOST) {
            headers.insert(header::HOST, host.clone());
        }
        headers.insert(X_FORWARDED_HOST.clone(), host);
    }

    let mut earlier = headers.get_all(&X_FORWARDED_FOR).iter().peekable();
    let forwarded_for = if earlier.peek().is_none() {
        conn.peer_ip.clone()
    } else {
        let mut joined = Vec::with_capacity(64);
        for value in earlier {
            joined.extend_from_slice(value.as_bytes());
            joined.extend_from_slice(b", ");
        }
        joined.extend_from_slice(conn.peer_ip.as_bytes());
        HeaderValue::from_bytes(&joined).unwrap_or_else(|_| conn.peer_ip.clone())
    };
    headers.insert(X_FORWARDED_FOR.clone(), forwarded_for);
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
}
