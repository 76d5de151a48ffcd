//! TCP mode: every client connection is joined to one backend, chosen by weight when the
//! connection opens, and bytes are copied both ways with half-close until both sides are
//! done. For databases, caches and anything else that does not speak HTTP.

use crate::backends::BackendState;
use crate::config::Protocol;
use crate::meter::RequestMeter;
use crate::metrics::{MethodClass, ProxyErrorSource};
use crate::route::{ConnectFailure, choose, within};
use crate::service::{Limits, ListenerCtx};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;
use tracing::debug;

pub(crate) async fn serve_connection(
    ctx: Arc<ListenerCtx>,
    mut client: TcpStream,
    peer: SocketAddr,
) {
    let _active = ctx.service.counters.connection_accepted();
    let mut meter = RequestMeter::new(ctx.clone(), MethodClass::Other, Protocol::Tcp);
    let limits = ctx.service.limits();
    let connected = choose(&ctx, &limits, &mut meter, connect).await;
    let (backend, mut upstream) = match connected {
        Ok(connected) => connected,
        Err(refusal) => {
            debug!(service = %ctx.service.name, %peer, reason = %refusal.reason(&ctx.service.name), "closing the connection");
            meter.finish(Some(ProxyErrorSource::Upstream));
            return;
        }
    };
    meter.assign(backend.clone());
    let _ = upstream.set_nodelay(true);
    debug!(service = %ctx.service.name, %peer, backend = %backend.addr, "connection opened");
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((to_backend, to_client)) => {
            meter.bytes_in = to_backend;
            meter.bytes_out = to_client;
            meter.finish(None);
        }
        Err(error) => {
            debug!(service = %ctx.service.name, %peer, backend = %backend.addr, %error, "connection ended with an error");
            // TCP cannot tell who broke the connection; a client's reset must not count
            // against a canary, so it is booked as downstream.
            meter.finish(Some(ProxyErrorSource::Downstream));
        }
    }
}

async fn connect(
    backend: Arc<BackendState>,
    limits: Arc<Limits>,
) -> Result<TcpStream, ConnectFailure> {
    let limit = limits.limits.connect_timeout;
    match within(limit, TcpStream::connect(backend.addr)).await {
        Some(Ok(stream)) => Ok(stream),
        Some(Err(error)) => Err(ConnectFailure::Io(error)),
        None => Err(ConnectFailure::TimedOut(limit)),
    }
}
