//! The life of one request (or TCP connection) as the metrics see it: when it started, which
//! backend took it, what the client got. A [`RequestMeter`] finishes exactly once, by hand or
//! when dropped (the client went away): it releases the backend's in-flight count, adds to
//! the revision's figures and hands a [`RequestRecord`] to the sink.

use crate::backends::BackendState;
use crate::config::Protocol;
use crate::metrics::{MethodClass, ProxyErrorSource, RequestRecord};
use crate::service::ListenerCtx;
use std::sync::Arc;
use tokio::time::Instant;

/// Status recorded when the client went away before the response head (nginx's 499).
pub(crate) const CLIENT_CLOSED: u16 = 499;

pub(crate) struct RequestMeter {
    ctx: Arc<ListenerCtx>,
    pub(crate) start: Instant,
    method: MethodClass,
    protocol: Protocol,
    pub(crate) status: u16,
    target: Option<Arc<BackendState>>,
    counted_in_flight: bool,
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
    done: bool,
}

impl RequestMeter {
    pub(crate) fn new(ctx: Arc<ListenerCtx>, method: MethodClass, protocol: Protocol) -> Self {
        let status = match protocol {
            Protocol::Http => CLIENT_CLOSED,
            Protocol::Tcp => 0,
        };
        RequestMeter {
            ctx,
            start: Instant::now(),
            method,
            protocol,
            status,
            target: None,
            counted_in_flight: false,
            bytes_in: 0,
            bytes_out: 0,
            done: false,
        }
    }

    pub(crate) fn ctx(&self) -> &Arc<ListenerCtx> {
        &self.ctx
    }

    /// `backend` takes this request: it counts as in flight there until the meter finishes.
    pub(crate) fn assign(&mut self, backend: Arc<BackendState>) {
        backend.start_work();
        if let Some(previous) = self.target.take()
            && self.counted_in_flight
        {
            previous.finish_work();
        }
        self.target = Some(backend);
        self.counted_in_flight = true;
    }

    /// `backend` failed this request before taking it (a refused connect): the failure
    /// counts against its revision unless another backend takes the request.
    pub(crate) fn blame(&mut self, backend: Arc<BackendState>) {
        if !self.counted_in_flight {
            self.target = Some(backend);
        }
    }

    pub(crate) fn finish(&mut self, error: Option<ProxyErrorSource>) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let duration = self.start.elapsed();
        let service = &self.ctx.service;
        if let Some(target) = &self.target {
            if self.counted_in_flight {
                target.finish_work();
            }
            let failed = self.status >= 500 || error == Some(ProxyErrorSource::Upstream);
            service.record_revision(target.revision, duration, failed);
        }
        self.ctx.sink.record(&RequestRecord {
            service: service.name.clone(),
            caller: self.ctx.caller.clone(),
            revision: self.target.as_ref().map(|t| t.revision),
            instance: self.target.as_ref().map(|t| t.instance.clone()),
            method: self.method,
            status: self.status,
            duration,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            error,
            protocol: self.protocol,
        });
    }
}

impl Drop for RequestMeter {
    fn drop(&mut self) {
        // Dropped unfinished: the client went away (its connection task ended).
        self.finish(Some(ProxyErrorSource::Downstream));
    }
}
