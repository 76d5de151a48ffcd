//! The two bodies the proxy streams: the client's request body on its way to a backend
//! ([`ClientBody`]: counted, and cut at the body limit), and the response on its way to the
//! client ([`ProxyBody`]: the backend's body counted, or the proxy's own short answer). Neither
//! buffers: each frame passes through as it comes.
//!
//! A [`ProxyBody`] carrying a backend's response also carries the request's meter and the
//! upstream connection it came on: when the body has been sent whole, the connection goes
//! back to the backend's pool and the request is recorded; when the body is dropped early,
//! the request is recorded as failed and the connection is closed.

use crate::backends::BackendState;
use crate::meter::{BodyProgress, RequestMeter};
use crate::metrics::ProxyErrorSource;
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};

/// Why a request body stopped on its way to the backend.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("the request body exceeds the limit of {0} bytes")]
    TooLarge(u64),
    #[error("the client's request body broke off: {0}")]
    Client(hyper::Error),
}

/// The client's request body, forwarded frame by frame.
pub(crate) struct ClientBody {
    inner: Incoming,
    progress: Option<Arc<BodyProgress>>,
    limit: Option<u64>,
    seen: u64,
}

impl ClientBody {
    pub(crate) fn new(
        inner: Incoming,
        progress: Option<Arc<BodyProgress>>,
        limit: Option<u64>,
    ) -> ClientBody {
        ClientBody {
            inner,
            progress,
            limit,
            seen: 0,
        }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    if let Some(progress) = &this.progress {
                        progress.bytes.store(this.seen, Ordering::Relaxed);
                    }
                    if let Some(limit) = this.limit
                        && this.seen > limit
                    {
                        if let Some(progress) = &this.progress {
                            progress.too_large.store(true, Ordering::Relaxed);
                        }
                        return Poll::Ready(Some(Err(BodyError::TooLarge(limit))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(error)) => {
                if let Some(progress) = &this.progress {
                    progress.client_failed.store(true, Ordering::Relaxed);
                }
                Poll::Ready(Some(Err(BodyError::Client(error))))
            }
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An upstream connection lent to one request.
pub(crate) struct Lease {
    pub(crate) sender: SendRequest<ClientBody>,
    pub(crate) backend: Arc<BackendState>,
}

enum Kind {
    Upstream(Incoming),
    Full(Option<Bytes>),
}

/// The body of every response the proxy sends.
pub(crate) struct ProxyBody {
    kind: Kind,
    meter: Option<RequestMeter>,
    lease: Option<Lease>,
    ended: bool,
    failed: bool,
}

impl ProxyBody {
    pub(crate) fn upstream(body: Incoming, meter: RequestMeter, lease: Option<Lease>) -> Self {
        ProxyBody {
            kind: Kind::Upstream(body),
            meter: Some(meter),
            lease,
            ended: false,
            failed: false,
        }
    }

    /// A body the proxy wrote itself; its request is already recorded.
    pub(crate) fn full(text: impl Into<Bytes>) -> ProxyBody {
        let text = text.into();
        ProxyBody {
            kind: Kind::Full((!text.is_empty()).then_some(text)),
            meter: None,
            lease: None,
            ended: false,
            failed: false,
        }
    }

    pub(crate) fn empty() -> ProxyBody {
        ProxyBody::full(Bytes::new())
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        match &mut this.kind {
            Kind::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Kind::Upstream(inner) => {
                let frame = ready!(Pin::new(inner).poll_frame(cx));
                match &frame {
                    Some(Ok(frame)) => {
                        if let (Some(data), Some(meter)) = (frame.data_ref(), &mut this.meter) {
                            meter.bytes_out += data.len() as u64;
                        }
                    }
                    Some(Err(_)) => this.failed = true,
                    None => this.ended = true,
                }
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(data) => data.is_none(),
            Kind::Upstream(inner) => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Kind::Upstream(inner) => inner.size_hint(),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        let Some(mut meter) = self.meter.take() else {
            return;
        };
        let complete = !self.failed
            && (self.ended || matches!(&self.kind, Kind::Upstream(inner) if inner.is_end_stream()));
        if complete {
            if let Some(lease) = self.lease.take() {
                lease.backend.checkin(lease.sender);
            }
            meter.finish(None);
        } else if self.failed {
            meter.finish(Some(ProxyErrorSource::Upstream));
        } else {
            meter.finish(Some(ProxyErrorSource::Downstream));
        }
    }
}
