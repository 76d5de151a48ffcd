//! The body of every response the proxy sends ([`ProxyBody`]): a backend's response relayed
//! as it is read (see [`crate::upstream`]), or the proxy's own short answer. Nothing is
//! buffered: each piece passes through as it comes.
//!
//! A relayed body carries the request's meter and its [`Exchange`]: when the backend's body
//! has been read whole, the connection goes back to the backend's pool (if the exchange
//! ended cleanly) and the request is recorded; when the body is dropped early, the request is
//! recorded as failed and the connection is closed.

use crate::http::Busy;
use crate::meter::RequestMeter;
use crate::metrics::ProxyErrorSource;
use crate::upstream::{Exchange, Stop};
use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

// Boxing the relay would cost an allocation per request; the body moves once, into hyper.
#[expect(clippy::large_enum_variant)]
enum Kind {
    Relay(Relay),
    Full(Option<Bytes>),
}

/// A backend's response body on its way to the client.
struct Relay {
    /// `None` once the body ended (the connection went back to the pool or was closed).
    exchange: Option<Exchange>,
    meter: RequestMeter,
    ended: bool,
    failed: Option<ProxyErrorSource>,
}

/// The body of every response the proxy sends.
pub(crate) struct ProxyBody {
    kind: Kind,
    /// Keeps the client connection busy while the response is being handed over.
    pub(crate) busy: Option<Busy>,
}

impl ProxyBody {
    /// Relays the response body of `exchange`, whose head went out already.
    pub(crate) fn relay(exchange: Exchange, meter: RequestMeter) -> ProxyBody {
        let mut relay = Relay {
            exchange: Some(exchange),
            meter,
            ended: false,
            failed: None,
        };
        relay.end_if_done();
        ProxyBody {
            kind: Kind::Relay(relay),
            busy: None,
        }
    }

    /// A body the proxy wrote itself; its request is already recorded.
    pub(crate) fn full(text: impl Into<Bytes>) -> ProxyBody {
        let text = text.into();
        ProxyBody {
            kind: Kind::Full((!text.is_empty()).then_some(text)),
            busy: None,
        }
    }

    pub(crate) fn empty() -> ProxyBody {
        ProxyBody::full(Bytes::new())
    }
}

impl Relay {
    /// At the end of the backend's body: the connection goes back (or closes), and the
    /// request is recorded.
    fn end_if_done(&mut self) {
        if let Some(exchange) = &self.exchange
            && exchange.body_done()
        {
            let exchange = self.exchange.take().expect("checked above");
            self.meter.bytes_in = exchange.sent;
            exchange.release();
            self.ended = true;
            self.meter.finish(None);
        }
    }

    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        let Some(exchange) = &mut self.exchange else {
            return Poll::Ready(None);
        };
        let polled = ready!(exchange.poll_body(cx));
        match &polled {
            Some(Ok(data)) => {
                self.meter.bytes_out += data.len() as u64;
                self.end_if_done();
            }
            Some(Err(_)) => {
                let exchange = self.exchange.take().expect("polled above");
                self.meter.bytes_in = exchange.sent;
                // The client's own body going wrong is the client's failure.
                self.failed = Some(match exchange.stopped() {
                    Some(Stop::TooLarge | Stop::ClientBroken) => ProxyErrorSource::Downstream,
                    _ => ProxyErrorSource::Upstream,
                });
            }
            None => self.end_if_done(),
        }
        Poll::Ready(polled)
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match &mut self.get_mut().kind {
            Kind::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Kind::Relay(relay) => relay
                .poll_data(cx)
                .map(|polled| polled.map(|result| result.map(Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(data) => data.is_none(),
            Kind::Relay(relay) => relay.ended,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Kind::Relay(relay) => match relay.exchange.as_ref().map(Exchange::body_remaining) {
                None => SizeHint::with_exact(0),
                Some(Some(remaining)) => SizeHint::with_exact(remaining),
                Some(None) => SizeHint::default(),
            },
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        if let Some(exchange) = &self.exchange {
            self.meter.bytes_in = exchange.sent;
        }
        // Failed on either side, or dropped unfinished: the client went away.
        let source = self.failed.unwrap_or(ProxyErrorSource::Downstream);
        self.meter.finish(Some(source));
    }
}
