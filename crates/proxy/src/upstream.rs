//! The upstream half of HTTP mode: a minimal HTTP/1.1 client driven by the client
//! connection's own task.
//!
//! hyper's client runs every upstream connection as a task of its own: a request crosses to
//! it through a channel, the response head comes back through a oneshot and the body through
//! another channel, so each request costs several task wake-ups on top of the socket work.
//! On the benchmark that was most of the gap to nginx. Here the request's future (and then
//! the response body, which the client connection's task polls) owns the [`Upstream`]
//! connection and reads and writes its socket directly: the request head goes out in one
//! write, the response head is parsed with `httparse` straight from the read buffer (header
//! values are slices of it, not copies), and the body is cut from the same buffer by its
//! framing (content length, chunked, or until close). A connection goes back to its
//! backend's idle pool only when the exchange ended cleanly: the whole request sent, the
//! whole response read, nothing extra received, and the backend did not ask to close.
//!
//! The request body is sent as the client sends it, also while the response streams back
//! (full duplex), so nothing is buffered beyond one frame either way.

use crate::backends::BackendState;
use bytes::{Buf, Bytes, BytesMut};
use hyper::body::{Body, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Response, StatusCode, Version};
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncWrite, Interest};
use tokio::net::TcpStream;

/// The largest response head accepted from a backend (hyper's client allowed about 400 KiB
/// of buffer; heads this size are already pathological).
const MAX_RESPONSE_HEAD: usize = 256 * 1024;
/// Headers in one response head, at most (hyper's default too).
const MAX_HEADERS: usize = 100;
/// The longest chunk-size or trailer line accepted.
const MAX_CHUNK_LINE: usize = 4096;
/// Room made in the read buffer before each read.
const READ_CHUNK: usize = 16 * 1024;
/// A write buffer that grew past this (a large body frame) is not kept while idle.
const KEEP_WRITE_BUFFER: usize = 64 * 1024;

/// One HTTP/1.1 connection to a backend, with its buffers (kept across requests so that a
/// pooled connection serves a request without allocating).
pub(crate) struct Upstream {
    stream: TcpStream,
    /// Received and not consumed yet.
    read: BytesMut,
    /// To send, from `written` on.
    write: Vec<u8>,
    written: usize,
    /// Where each header of the response head being parsed sits (kept to not allocate).
    spans: Vec<Span>,
    /// Whether an earlier request went over this connection (it came from the pool).
    pub(crate) reused: bool,
}

impl Upstream {
    pub(crate) fn new(stream: TcpStream) -> Upstream {
        Upstream {
            stream,
            read: BytesMut::with_capacity(READ_CHUNK),
            write: Vec::with_capacity(1024),
            written: 0,
            spans: Vec::new(),
            reused: false,
        }
    }

    /// The buffer the request head is written into before the exchange starts.
    pub(crate) fn head_buffer(&mut self) -> &mut Vec<u8> {
        self.write.clear();
        self.written = 0;
        &mut self.write
    }

    /// Whether an idle connection can take a request: false when the backend closed it or
    /// sent something unasked. Never waits, and costs no system call unless the socket
    /// became readable while idle (tokio cleared its readiness after the short read that
    /// ended the last response); nor does it register a waker.
    pub(crate) fn is_usable(&self) -> bool {
        if self.stream.try_io(Interest::READABLE, || Ok(())).is_err() {
            return true;
        }
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Ready to wait in the pool: no request leftovers, no outsized buffer.
    fn reset_for_pool(&mut self) {
        self.reused = true;
        self.write.clear();
        self.written = 0;
        if self.write.capacity() > KEEP_WRITE_BUFFER {
            self.write = Vec::with_capacity(1024);
        }
    }

    /// Reads more bytes into `read`; `Ok(0)` at end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.read.capacity() - self.read.len() < 1024 {
            // Reclaims the same allocation once the bytes handed out earlier are dropped.
            self.read.reserve(READ_CHUNK);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.read)
    }
}

/// A header in a response head: offset and length of its name, then of its value.
type Span = (usize, usize, usize, usize);

/// Why sending the request body stopped early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The client sent more than the body limit.
    TooLarge,
    /// The client's body broke off (reset, bad framing).
    ClientBroken,
    /// Writing to the backend failed (it may still answer; the response decides).
    BackendGone,
}

/// What is left of the request body.
enum Outgoing {
    /// All of it handed to the write buffer (which may still be flushing).
    Done,
    /// More to come from the client.
    Body {
        body: Incoming,
        chunked: bool,
    },
    Stopped(Stop),
}

/// How the response body is delimited (RFC 9112, 6.3), and how far reading it got.
#[derive(Clone, Copy, Debug)]
enum Framing {
    Length(u64),
    Chunked(Chunk),
    UntilClose,
    Done,
}

#[derive(Clone, Copy, Debug)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

/// Why no usable response head came.
#[derive(Debug)]
pub(crate) enum HeadError {
    /// The client's body went wrong first.
    Client(Stop),
    /// End of stream before a complete head.
    Closed,
    Reset(io::Error),
    Invalid(&'static str),
}

/// One request on one upstream connection, from the request head to the end of the
/// response body.
pub(crate) struct Exchange {
    conn: Upstream,
    pub(crate) backend: Arc<BackendState>,
    outgoing: Outgoing,
    limit: Option<u64>,
    /// Request body bytes taken from the client.
    pub(crate) sent: u64,
    /// The request was HEAD: its response has no body whatever its headers say.
    head_request: bool,
    /// Whether any response byte arrived (a request that got none may be resent).
    received: bool,
    framing: Framing,
    /// The backend keeps the connection open after this response.
    keep_alive: bool,
}

impl Exchange {
    /// Starts an exchange on `conn`, whose head buffer holds the request head already.
    /// `chunked`: the body goes out chunked (the head says so).
    pub(crate) fn new(
        conn: Upstream,
        backend: Arc<BackendState>,
        body: Option<(Incoming, bool)>,
        limit: Option<u64>,
        head_request: bool,
    ) -> Exchange {
        let outgoing = match body {
            Some((body, chunked)) if !body.is_end_stream() => Outgoing::Body { body, chunked },
            _ => Outgoing::Done,
        };
        Exchange {
            conn,
            backend,
            outgoing,
            limit,
            sent: 0,
            head_request,
            received: false,
            framing: Framing::Done,
            keep_alive: false,
        }
    }

    /// Whether a failure so far may have left the backend without the request: no response
    /// byte arrived on a connection that had served requests before (its close raced ours).
    pub(crate) fn may_resend(&self) -> bool {
        self.conn.reused && !self.received
    }

    /// Gives back the connection for a resend.
    pub(crate) fn into_conn(self) -> Upstream {
        self.conn
    }

    fn request_sent(&self) -> bool {
        matches!(self.outgoing, Outgoing::Done) && self.conn.written == self.conn.write.len()
    }

    /// Moves request bytes towards the backend as far as possible without waiting. Ready
    /// when nothing is left to do (all sent, or stopped).
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let conn = &mut self.conn;
            while conn.written < conn.write.len() {
                match Pin::new(&mut conn.stream).poll_write(cx, &conn.write[conn.written..]) {
                    Poll::Ready(Ok(n)) if n > 0 => conn.written += n,
                    Poll::Ready(_) => {
                        conn.write.clear();
                        conn.written = 0;
                        self.outgoing = Outgoing::Stopped(Stop::BackendGone);
                        return Poll::Ready(());
                    }
                    Poll::Pending => return Poll::Pending,
                }
            }
            conn.write.clear();
            conn.written = 0;
            let Outgoing::Body { body, chunked } = &mut self.outgoing else {
                return Poll::Ready(());
            };
            let chunked = *chunked;
            match ready!(Pin::new(body).poll_frame(cx)) {
                None => {
                    if chunked {
                        conn.write.extend_from_slice(b"0\r\n\r\n");
                    }
                    self.outgoing = Outgoing::Done;
                }
                Some(Err(_)) => {
                    self.outgoing = Outgoing::Stopped(Stop::ClientBroken);
                    return Poll::Ready(());
                }
                Some(Ok(frame)) => {
                    // Trailers of a chunked request are not forwarded.
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    self.sent += data.len() as u64;
                    if self.limit.is_some_and(|limit| self.sent > limit) {
                        self.outgoing = Outgoing::Stopped(Stop::TooLarge);
                        return Poll::Ready(());
                    }
                    if data.is_empty() {
                        continue;
                    }
                    if chunked {
                        write_hex(&mut conn.write, data.len());
                        conn.write.extend_from_slice(b"\r\n");
                    }
                    conn.write.extend_from_slice(&data);
                    if chunked {
                        conn.write.extend_from_slice(b"\r\n");
                    }
                }
            }
        }
    }

    /// Sends the request and waits for the response head (skipping interim 1xx answers
    /// other than 101).
    pub(crate) fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Response<()>, HeadError>> {
        if !self.request_sent() {
            let _ = self.poll_send(cx);
            if let Outgoing::Stopped(stop @ (Stop::TooLarge | Stop::ClientBroken)) = self.outgoing {
                return Poll::Ready(Err(HeadError::Client(stop)));
            }
        }
        loop {
            if !self.conn.read.is_empty()
                && let Some(response) = self.parse_head()?
            {
                return Poll::Ready(Ok(response));
            }
            match ready!(self.conn.poll_fill(cx)) {
                Ok(0) => return Poll::Ready(Err(HeadError::Closed)),
                Ok(_) => self.received = true,
                Err(error) => return Poll::Ready(Err(HeadError::Reset(error))),
            }
        }
    }

    /// The response head at the start of the read buffer, if complete; its bytes are
    /// consumed and the body's framing set.
    fn parse_head(&mut self) -> Result<Option<Response<()>>, HeadError> {
        loop {
            let base = self.conn.read.as_ptr() as usize;
            // Where each header's name and value sit in the head, so the values can be
            // slices of the head's bytes once it is split off the buffer.
            let spans = &mut self.conn.spans;
            spans.clear();
            let (len, code, minor) = {
                let mut storage =
                    [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
                let mut parsed = httparse::Response::new(&mut []);
                let parser = httparse::ParserConfig::default();
                match parser.parse_response_with_uninit_headers(
                    &mut parsed,
                    &self.conn.read,
                    &mut storage,
                ) {
                    Ok(httparse::Status::Complete(len)) => {
                        spans.extend(parsed.headers.iter().map(|h| {
                            (
                                h.name.as_ptr() as usize - base,
                                h.name.len(),
                                h.value.as_ptr() as usize - base,
                                h.value.len(),
                            )
                        }));
                        let code = parsed.code.unwrap_or(0);
                        (len, code, parsed.version.unwrap_or(1))
                    }
                    Ok(httparse::Status::Partial) => {
                        if self.conn.read.len() > MAX_RESPONSE_HEAD {
                            return Err(HeadError::Invalid(
                                "sent a response head that is too large",
                            ));
                        }
                        return Ok(None);
                    }
                    Err(_) => return Err(HeadError::Invalid("sent an invalid response")),
                }
            };
            if (100..200).contains(&code) && code != 101 {
                // 100 Continue, 103 Early Hints: interim, not forwarded.
                self.conn.read.advance(len);
                if self.conn.read.is_empty() {
                    return Ok(None);
                }
                continue;
            }
            let head = self.conn.read.split_to(len).freeze();
            let spans = std::mem::take(&mut self.conn.spans);
            let response = self.build_response(&head, &spans, code, minor);
            self.conn.spans = spans;
            return response.map(Some);
        }
    }

    fn build_response(
        &mut self,
        head: &Bytes,
        spans: &[Span],
        code: u16,
        minor: u8,
    ) -> Result<Response<()>, HeadError> {
        const INVALID: HeadError = HeadError::Invalid("sent an invalid response");
        let status = StatusCode::from_u16(code).map_err(|_| INVALID)?;
        let name_at = |&(at, len, _, _): &Span| &head[at..at + len];
        let value_at = |&(_, _, at, len): &Span| &head[at..at + len];

        // The Connection header first: it says whether the connection stays, and may name
        // more headers that describe this hop only.
        let (mut close_token, mut keep_alive_token) = (false, false);
        let mut named: Vec<HeaderName> = Vec::new();
        for span in spans
            .iter()
            .filter(|s| name_at(s).eq_ignore_ascii_case(b"connection"))
        {
            for token in value_at(span).split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close_token = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive_token = true;
                } else if !token.eq_ignore_ascii_case(b"upgrade")
                    && let Ok(name) = HeaderName::from_bytes(token)
                {
                    named.push(name);
                }
            }
        }

        // HTTP/1.0 closes unless asked to keep the connection.
        let mut close = close_token || (minor == 0 && !keep_alive_token);
        let mut headers = HeaderMap::with_capacity(spans.len());
        let mut length: Option<u64> = None;
        let mut transfer_encoding: Option<bool> = None;
        let mut upgrade: Option<HeaderValue> = None;
        for span in spans {
            let name = HeaderName::from_bytes(name_at(span)).map_err(|_| INVALID)?;
            let (at, len) = (span.2, span.3);
            let value =
                HeaderValue::from_maybe_shared(head.slice(at..at + len)).map_err(|_| INVALID)?;
            if name == header::CONTENT_LENGTH {
                let parsed = std::str::from_utf8(value.as_bytes())
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .ok_or(INVALID)?;
                if length.is_some_and(|l| l != parsed) {
                    return Err(INVALID);
                }
                length = Some(parsed);
            } else if name == header::TRANSFER_ENCODING {
                let last = value
                    .as_bytes()
                    .rsplit(|&b| b == b',')
                    .next()
                    .unwrap_or(b"");
                transfer_encoding = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
                continue;
            } else if name == header::UPGRADE {
                upgrade = Some(value);
                continue;
            } else if crate::http::is_hop_by_hop(&name) || named.contains(&name) {
                continue;
            }
            headers.append(name, value);
        }

        self.framing = if self.head_request || code == 101 || code == 204 || code == 304 {
            Framing::Done
        } else if let Some(chunked) = transfer_encoding {
            // A length beside a transfer coding is ignored, and the connection not reused
            // (RFC 9112, 6.3).
            headers.remove(header::CONTENT_LENGTH);
            if length.is_some() {
                close = true;
            }
            if chunked {
                Framing::Chunked(Chunk::Size)
            } else {
                close = true;
                Framing::UntilClose
            }
        } else if let Some(length) = length {
            Framing::Length(length)
        } else {
            close = true;
            Framing::UntilClose
        };
        self.keep_alive = !close && code != 101;
        if code == 101
            && let Some(protocol) = upgrade
        {
            headers.insert(header::UPGRADE, protocol);
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }

        let mut response = Response::new(());
        *response.status_mut() = status;
        *response.version_mut() = Version::HTTP_11;
        *response.headers_mut() = headers;
        Ok(response)
    }

    /// Whether the response body has been read whole.
    pub(crate) fn body_done(&self) -> bool {
        matches!(self.framing, Framing::Done | Framing::Length(0))
    }

    /// Exact remaining body length, when the framing tells it.
    pub(crate) fn body_remaining(&self) -> Option<u64> {
        match self.framing {
            Framing::Done => Some(0),
            Framing::Length(n) => Some(n),
            _ => None,
        }
    }

    /// Why sending the request body stopped, if it did.
    pub(crate) fn stopped(&self) -> Option<Stop> {
        match self.outgoing {
            Outgoing::Stopped(stop) => Some(stop),
            _ => None,
        }
    }

    /// The next piece of the response body; `None` at its end. Keeps sending the request
    /// body meanwhile.
    pub(crate) fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        if !self.request_sent() {
            let _ = self.poll_send(cx);
            if let Some(stop @ (Stop::TooLarge | Stop::ClientBroken)) = self.stopped() {
                let what = match stop {
                    Stop::TooLarge => "the request body exceeds the limit",
                    _ => "the request body broke off",
                };
                return Poll::Ready(Some(Err(io::Error::other(what))));
            }
        }
        loop {
            let read = &mut self.conn.read;
            match &mut self.framing {
                Framing::Done => return Poll::Ready(None),
                Framing::Length(0) => self.framing = Framing::Done,
                Framing::Length(remaining) => {
                    if read.is_empty() {
                        if let Err(error) = ready!(self.fill_more(cx)) {
                            return Poll::Ready(Some(Err(error)));
                        }
                        continue;
                    }
                    let n = read
                        .len()
                        .min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                    *remaining -= n as u64;
                    if *remaining == 0 {
                        self.framing = Framing::Done;
                    }
                    return Poll::Ready(Some(Ok(read.split_to(n).freeze())));
                }
                Framing::UntilClose => {
                    if read.is_empty() {
                        match ready!(self.conn.poll_fill(cx)) {
                            Ok(0) => self.framing = Framing::Done,
                            Ok(_) => {}
                            Err(error) => return Poll::Ready(Some(Err(error))),
                        }
                        continue;
                    }
                    return Poll::Ready(Some(Ok(read.split().freeze())));
                }
                Framing::Chunked(Chunk::Data(remaining)) => {
                    if read.is_empty() {
                        if let Err(error) = ready!(self.fill_more(cx)) {
                            return Poll::Ready(Some(Err(error)));
                        }
                        continue;
                    }
                    let n = read
                        .len()
                        .min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                    *remaining -= n as u64;
                    if *remaining == 0 {
                        self.framing = Framing::Chunked(Chunk::DataEnd);
                    }
                    return Poll::Ready(Some(Ok(read.split_to(n).freeze())));
                }
                Framing::Chunked(Chunk::DataEnd) => {
                    if read.len() < 2 {
                        if let Err(error) = ready!(self.fill_more(cx)) {
                            return Poll::Ready(Some(Err(error)));
                        }
                        continue;
                    }
                    if &read[..2] != b"\r\n" {
                        return Poll::Ready(Some(Err(invalid_chunk())));
                    }
                    read.advance(2);
                    self.framing = Framing::Chunked(Chunk::Size);
                }
                Framing::Chunked(state @ (Chunk::Size | Chunk::Trailers)) => {
                    let Some(end) = read.windows(2).position(|w| w == b"\r\n") else {
                        if read.len() > MAX_CHUNK_LINE {
                            return Poll::Ready(Some(Err(invalid_chunk())));
                        }
                        if let Err(error) = ready!(self.fill_more(cx)) {
                            return Poll::Ready(Some(Err(error)));
                        }
                        continue;
                    };
                    if let Chunk::Trailers = state {
                        // Trailers are not forwarded; an empty line ends the body.
                        read.advance(end + 2);
                        if end == 0 {
                            self.framing = Framing::Done;
                        }
                        continue;
                    }
                    let size = parse_chunk_size(&read[..end]).ok_or_else(invalid_chunk);
                    read.advance(end + 2);
                    let size = match size {
                        Ok(size) => size,
                        Err(error) => return Poll::Ready(Some(Err(error))),
                    };
                    self.framing = Framing::Chunked(if size == 0 {
                        Chunk::Trailers
                    } else {
                        Chunk::Data(size)
                    });
                }
            }
        }
    }

    /// Reads more of a body that is not complete yet: the end of stream is an error.
    fn fill_more(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match ready!(self.conn.poll_fill(cx)) {
            Ok(0) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the backend closed the connection before the end of the response body",
            ))),
            Ok(_) => Poll::Ready(Ok(())),
            Err(error) => Poll::Ready(Err(error)),
        }
    }

    /// The connection back to its backend's pool, when this exchange ended cleanly.
    pub(crate) fn release(self) {
        if self.keep_alive && self.body_done() && self.request_sent() && self.conn.read.is_empty() {
            let Exchange {
                mut conn, backend, ..
            } = self;
            conn.reset_for_pool();
            backend.checkin(conn);
        }
    }

    /// The raw connection after `101 Switching Protocols`, with the bytes the backend sent
    /// after the head.
    pub(crate) fn into_upgraded(self) -> (TcpStream, Bytes) {
        (self.conn.stream, self.conn.read.freeze())
    }
}

fn invalid_chunk() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "the backend sent an invalid chunked body",
    )
}

/// The size of a chunk from its line (hex digits, then optional extensions).
fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.split(|&b| b == b';').next()?.trim_ascii();
    if digits.is_empty() || digits.len() > 15 {
        return None;
    }
    let text = std::str::from_utf8(digits).ok()?;
    u64::from_str_radix(text, 16).ok()
}

fn write_hex(out: &mut Vec<u8>, mut n: usize) {
    let mut digits = [0u8; 16];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b"0123456789abcdef"[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes() {
        assert_eq!(parse_chunk_size(b"1a"), Some(26));
        assert_eq!(parse_chunk_size(b"0"), Some(0));
        assert_eq!(parse_chunk_size(b"10;name=value"), Some(16));
        assert_eq!(parse_chunk_size(b""), None);
        assert_eq!(parse_chunk_size(b"xyz"), None);
        let mut out = Vec::new();
        write_hex(&mut out, 0x1f40);
        write_hex(&mut out, 0);
        assert_eq!(out, b"1f400");
    }
}
