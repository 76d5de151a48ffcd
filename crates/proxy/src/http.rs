//! HTTP mode: each client connection is served by hyper (HTTP/1.1 with keep-alive, or h2c
//! with prior knowledge; over TLS, HTTP/1.1 or HTTP/2 by ALPN), and each request
//! independently picks a backend, so weights apply
//! per request, also on long-lived keep-alive connections, and a client connection survives
//! every backend switch. Upstream is always HTTP/1.1 over a per-backend pool of keep-alive
//! connections, so an h2c client is served by HTTP/1.1 backends; the request's own task
//! drives its upstream connection (see [`crate::upstream`] for why not hyper's client).
//!
//! Bodies stream both ways (see [`crate::body`]). An `Upgrade` request (WebSocket) is
//! forwarded with its upgrade headers; on `101 Switching Protocols` the client's upgraded
//! connection and the backend's socket are spliced and bytes copied both ways until both
//! close.

use crate::backends::{BackendState, epoch, lock, micros_since_epoch};
use crate::body::ProxyBody;
use crate::config::{Protocol, ServiceLimits};
use crate::meter::RequestMeter;
use crate::metrics::{MethodClass, ProxyErrorSource};
use crate::route::{ConnectFailure, Refusal, choose, within};
use crate::service::{Limits, LimitsCache, ListenerCtx};
use crate::upstream::{Exchange, HeadError, Stop, Upstream};
use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::cell::RefCell;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tracing::debug;

/// The first bytes of every HTTP/2 connection (RFC 9113, 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_TANDEM_PROXY_ERROR: HeaderName = HeaderName::from_static("x-tandem-proxy-error");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The hyper server settings of one service, built once per change of its limits.
pub(crate) struct Servers {
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
}

impl Servers {
    pub(crate) fn new(limits: &ServiceLimits) -> Servers {
        // hyper stops reading a head at twice the limit, so a client cannot make the proxy
        // buffer more; heads between the limit and that get the proxy's own 431 with its
        // reason (see `head_size`).
        let head_cap = limits.max_header_bytes.saturating_mul(2).max(8192);
        let mut h1 = http1::Builder::new();
        h1.timer(TokioTimer::new())
            .keep_alive(true)
            .max_header_size(head_cap)
            .max_buf_size(head_cap.max(400 * 1024));
        // The header read timeout is the proxy's own (see `idle_timeout`): hyper's arms a new
        // timer for every request head, a tenth of the proxy's user-space work per request.
        h1.header_read_timeout(None);
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
    /// Whether the client connection is TLS (`X-Forwarded-Proto: https`).
    https: bool,
    /// The response timer of the connection's last request, reset for the next one: moving
    /// a timer's deadline later is one atomic operation, where a new timer per request
    /// costs an insertion into tokio's timer wheel and a removal. (HTTP/2 requests that run
    /// at the same time make their own.)
    timer: Mutex<Option<Pin<Box<Sleep>>>>,
    /// Requests of this connection whose response has not been handed over whole.
    busy: AtomicU32,
    /// Since when the connection has had nothing to do, in microseconds after
    /// [`crate::backends::epoch`]: when its last response was handed over (or it opened).
    idle_since: AtomicU64,
}

/// Counts a request as busy on its client connection until dropped (with the response body,
/// or with the request when the client goes away first).
pub(crate) struct Busy(Arc<Conn>);

impl Busy {
    fn new(conn: Arc<Conn>) -> Busy {
        conn.busy.fetch_add(1, Ordering::AcqRel);
        Busy(conn)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        // Idle since now, then not busy: whoever sees "not busy" sees the new time too.
        let now = micros_since_epoch(Instant::now());
        self.0.idle_since.store(now, Ordering::Release);
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Ends once an HTTP/1.1 client connection has had nothing to do for its service's header
/// read timeout (`limit` at first): no request in flight and no complete request head since
/// its last response (or since it opened). This is the header read timeout, and the idle
/// keep-alive timeout too. One timer per connection, looked at only when it fires: a
/// request costs two atomic operations and a clock read, instead of a timer of its own.
async fn idle_timeout(conn: &Conn, mut limit: Duration) {
    let timer = tokio::time::sleep(limit);
    tokio::pin!(timer);
    loop {
        timer.as_mut().await;
        // The service's limit may have changed since (a deploy); looked up only here. A
        // zero (no timeout) keeps the connection on the last limit it had.
        let now_limit = conn.ctx.service.limits().limits.header_read_timeout;
        if !now_limit.is_zero() {
            limit = now_limit;
        }
        let now = Instant::now();
        if conn.busy.load(Ordering::Acquire) > 0 {
            timer.as_mut().reset(now + limit);
            continue;
        }
        let idle_since = Duration::from_micros(conn.idle_since.load(Ordering::Acquire));
        let deadline = epoch() + idle_since + limit;
        if deadline <= now {
            return;
        }
        timer.as_mut().reset(deadline);
    }
}

impl Conn {
    /// Waits for the exchange's response head, at most `limit` (zero: no limit); `None`
    /// when the time ran out.
    async fn response_head(
        &self,
        exchange: &mut Exchange,
        limit: Duration,
    ) -> Option<Result<Response<()>, HeadError>> {
        if limit.is_zero() {
            return Some(std::future::poll_fn(|cx| exchange.poll_head(cx)).await);
        }
        let deadline = Instant::now() + limit;
        let mut timer = match lock(&self.timer).take() {
            Some(mut timer) => {
                timer.as_mut().reset(deadline);
                timer
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        };
        let head = std::future::poll_fn(|cx| {
            if let Poll::Ready(head) = exchange.poll_head(cx) {
                return Poll::Ready(Some(head));
            }
            timer.as_mut().poll(cx).map(|()| None)
        })
        .await;
        *lock(&self.timer) = Some(timer);
        head
    }
}

/// Serves one client connection: `stream` is the accepted socket, or the TLS stream over it
/// (`https`).
pub(crate) async fn serve_connection<S>(
    ctx: Arc<ListenerCtx>,
    mut stream: S,
    peer: SocketAddr,
    https: bool,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let _active = ctx.service.counters.connection_accepted();
    let mut cache = LimitsCache::new(&ctx.service);
    let limits = cache.current().clone();
    // A client that does not even say which HTTP version it speaks within the header
    // timeout is cut off like one that is slow to send its head.
    let Some(Ok(Some((h2, prefix)))) = within(
        limits.limits.header_read_timeout,
        detect_version(&mut stream),
    )
    .await
    else {
        debug!(service = %ctx.service.name, %peer, "client sent no request in time; closing");
        return;
    };
    let peer_ip = HeaderValue::try_from(peer.ip().to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
    let conn = Arc::new(Conn {
        ctx: ctx.clone(),
        peer_ip,
        https,
        timer: Mutex::new(None),
        busy: AtomicU32::new(0),
        idle_since: AtomicU64::new(micros_since_epoch(Instant::now())),
    });
    let watched = conn.clone();
    let io = TokioIo::new(Prefixed {
        prefix,
        inner: stream,
    });
    // Each request takes the service's limits as they are when it arrives: hyper calls the
    // service from this connection's task only, one call at a time, so the cache needs no
    // lock, and a request pays one atomic load (and a reference count) for its limits.
    let cache = RefCell::new(cache);
    let service = service_fn(move |request| {
        let limits = cache.borrow_mut().current().clone();
        let busy = Busy::new(conn.clone());
        async move {
            let mut response = proxy_request(&busy.0, &limits, request).await;
            response.body_mut().busy = Some(busy);
            Ok::<_, Infallible>(response)
        }
    });
    let served = if h2 {
        limits.servers.h2.serve_connection(io, service).await
    } else {
        let served = limits
            .servers
            .h1
            .serve_connection(io, service)
            .with_upgrades();
        let limit = limits.limits.header_read_timeout;
        if limit.is_zero() {
            served.await
        } else {
            // Biased: a head that arrived is handed to the service (which makes the
            // connection busy) before the timer is looked at.
            tokio::select! {
                biased;
                served = served => served,
                () = idle_timeout(&watched, limit) => {
                    debug!(service = %ctx.service.name, %peer, "client sent no request head in time; closing");
                    return;
                }
            }
        }
    };
    if let Err(error) = served {
        debug!(service = %ctx.service.name, %peer, %error, "client connection ended with an error");
    }
}

/// Reads until the first bytes tell HTTP/2 (the preface) from HTTP/1. Returns whether it is
/// HTTP/2 and the bytes read, or `None` when the client closed first.
async fn detect_version<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<Option<(bool, Bytes)>> {
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
struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
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

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
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

async fn proxy_request(
    conn: &Conn,
    shared_limits: &Arc<Limits>,
    mut request: Request<Incoming>,
) -> Response<ProxyBody> {
    let ctx = &conn.ctx;
    let config = &shared_limits.limits;
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
    let (head, body) = request.into_parts();
    // A body without a length (chunked HTTP/1.1, or HTTP/2 without content-length) goes out
    // chunked.
    let chunked = !body.is_end_stream() && !head.headers.contains_key(header::CONTENT_LENGTH);
    // Only a request without a body whose method is safe to repeat is sent again after a
    // pooled connection failed before any answer (as Go's client does).
    let replayable = body.is_end_stream()
        && matches!(
            head.method,
            Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
        );
    let head_request = head.method == Method::HEAD;

    let chosen = choose(ctx, shared_limits, &mut meter, checkout_or_connect).await;
    let (backend, mut upstream) = match chosen {
        Ok(chosen) => chosen,
        Err(refusal) => return answer(meter, &refusal),
    };
    meter.assign(backend.clone());

    let mut body = Some((body, chunked));
    let mut resends = 0;
    let (exchange, response) = loop {
        write_request_head(
            upstream.head_buffer(),
            &head,
            &conn.peer_ip,
            conn.https,
            upgrade,
            chunked,
        );
        let mut exchange = Exchange::new(
            upstream,
            backend.clone(),
            body.take(),
            config.max_body_bytes,
            head_request,
        );
        let response = conn
            .response_head(&mut exchange, config.response_timeout)
            .await;
        match response {
            Some(Ok(response)) => break (exchange, response),
            None => {
                let refusal = Refusal::Timeout {
                    addr: backend.addr,
                    after: config.response_timeout,
                };
                meter.bytes_in = exchange.sent;
                return answer(meter, &refusal);
            }
            // The backend closed a pooled connection just as it was used, before answering:
            // the request goes out again on a fresh connection.
            Some(Err(HeadError::Closed | HeadError::Reset(_)))
                if replayable && exchange.may_resend() && resends < 2 =>
            {
                resends += 1;
                drop(exchange.into_conn());
                upstream = match connect(&backend, config).await {
                    Ok(upstream) => upstream,
                    Err(failure) => {
                        let addr = backend.addr;
                        return answer(meter, &Refusal::Connect { addr, failure });
                    }
                };
            }
            Some(Err(error)) => {
                meter.bytes_in = exchange.sent;
                let refusal = head_failure(error, backend.addr, config);
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
        meter.bytes_in = exchange.sent;
        let (upstream, early) = exchange.into_upgraded();
        tokio::spawn(splice(meter, client_upgrade, upstream, early));
        return response.map(|()| ProxyBody::empty());
    }
    // The head may have arrived before the request body went out whole (an early answer);
    // the relay keeps sending it.
    response.map(|()| ProxyBody::relay(exchange, meter))
}

/// An idle pooled connection to `backend`, or a new one.
async fn checkout_or_connect(
    backend: Arc<BackendState>,
    limits: Arc<Limits>,
) -> Result<Upstream, ConnectFailure> {
    match backend.checkout() {
        Some(upstream) => Ok(upstream),
        None => connect(&backend, &limits.limits).await,
    }
}

/// Opens a new connection to `backend`.
async fn connect(
    backend: &BackendState,
    config: &ServiceLimits,
) -> Result<Upstream, ConnectFailure> {
    match within(config.connect_timeout, TcpStream::connect(backend.addr)).await {
        Some(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Ok(Upstream::new(stream))
        }
        Some(Err(error)) => Err(ConnectFailure::Io(error)),
        None => Err(ConnectFailure::TimedOut(config.connect_timeout)),
    }
}

/// What went wrong between sending the request and the response head.
fn head_failure(error: HeadError, addr: SocketAddr, config: &ServiceLimits) -> Refusal {
    let (code, what) = match error {
        HeadError::Client(Stop::TooLarge) => {
            let limit = config.max_body_bytes.unwrap_or(0);
            return Refusal::BodyTooLarge { limit };
        }
        HeadError::Client(_) => return Refusal::ClientBodyBroken,
        HeadError::Invalid(what) => ("invalid-response", what),
        HeadError::Closed => ("upstream-closed", "closed the connection before answering"),
        HeadError::Reset(error) => {
            debug!(backend = %addr, %error, "backend connection failed before the response head");
            ("upstream-reset", "reset the connection")
        }
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

/// Joins the client's upgraded connection and the backend's connection and copies bytes
/// both ways; the request counts as in flight (and is recorded) until both sides are done.
/// `early`: what the backend sent right after its 101 head.
async fn splice(mut meter: RequestMeter, client: OnUpgrade, mut upstream: TcpStream, early: Bytes) {
    let Ok(client) = client.await else {
        return meter.finish(Some(ProxyErrorSource::Downstream));
    };
    let mut client = TokioIo::new(client);
    if !early.is_empty() && client.write_all(&early).await.is_err() {
        return meter.finish(Some(ProxyErrorSource::Downstream));
    }
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((to_backend, to_client)) => {
            meter.bytes_in += to_backend;
            meter.bytes_out = to_client + early.len() as u64;
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

/// Whether a `Connection` header of `headers` names `token`.
fn connection_has(headers: &HeaderMap, token: &[u8]) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

fn wants_upgrade(request: &Request<Incoming>) -> bool {
    request.version() == Version::HTTP_11
        && request.headers().contains_key(header::UPGRADE)
        && connection_has(request.headers(), b"upgrade")
}

/// Headers that describe one hop, not the message (RFC 9110, 7.6.1); those a `Connection`
/// header names are too.
pub(crate) fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
        || name == header::TE
        || name == header::TRAILER
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
}

/// Writes the request head as it goes to a backend over HTTP/1.1: origin-form target,
/// hop-by-hop headers left out (an upgrade's put back), `Host` from the URI's authority when
/// the client sent none (HTTP/2), and `X-Forwarded-For` (appended to), `-Proto` (`https`
/// when the client came over TLS) and `-Host` (replaced). Written straight into the
/// connection's buffer: no header map is changed.
fn write_request_head(
    out: &mut Vec<u8>,
    head: &hyper::http::request::Parts,
    peer_ip: &HeaderValue,
    https: bool,
    upgrade: bool,
    chunked: bool,
) {
    let headers = &head.headers;
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.push(b' ');
    let target = head.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");

    // Name comparisons rather than hash lookups: most requests have neither header.
    let (mut has_connection, mut has_forwarded_for) = (false, false);
    for name in headers.keys() {
        has_connection |= name == header::CONNECTION;
        has_forwarded_for |= name == X_FORWARDED_FOR;
    }
    let mut host: Option<&[u8]> = None;
    for (name, value) in headers {
        if is_hop_by_hop(name)
            || name == X_FORWARDED_FOR
            || name == X_FORWARDED_PROTO
            || name == X_FORWARDED_HOST
            || (has_connection && connection_has(headers, name.as_str().as_bytes()))
        {
            continue;
        }
        if name == header::HOST {
            host = Some(value.as_bytes());
        }
        write_header(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if host.is_none()
        && let Some(authority) = head.uri.authority()
    {
        host = Some(authority.as_str().as_bytes());
        write_header(out, b"host", authority.as_str().as_bytes());
    }

    out.extend_from_slice(b"x-forwarded-for: ");
    if has_forwarded_for {
        for earlier in headers.get_all(&X_FORWARDED_FOR) {
            out.extend_from_slice(earlier.as_bytes());
            out.extend_from_slice(b", ");
        }
    }
    out.extend_from_slice(peer_ip.as_bytes());
    out.extend_from_slice(if https {
        b"\r\nx-forwarded-proto: https\r\n".as_slice()
    } else {
        b"\r\nx-forwarded-proto: http\r\n".as_slice()
    });
    if let Some(host) = host {
        write_header(out, b"x-forwarded-host", host);
    }
    if upgrade && let Some(protocol) = headers.get(header::UPGRADE) {
        write_header(out, b"upgrade", protocol.as_bytes());
        out.extend_from_slice(b"connection: upgrade\r\n");
    }
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

fn write_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}
