//! The proxy's listening sockets, kept by the port holder (`tandem __ports`, see
//! `tandem_supervisor::ports`) so that public ports and edge listeners keep accepting
//! connections while no server runs: a crash, a `kill -9` or an upgrade becomes a delay for
//! clients instead of "connection refused".
//!
//! [`HeldPorts`] is the proxy's [`ListenerSource`]: it asks the holder for each socket
//! (starting the holder when none runs), releases the ones the proxy closes, and lists what
//! the holder keeps for a server that just started. When no holder can be started, the
//! server binds the port itself, as it did before the holder existed, and says so: the port
//! is served, only not while no server runs.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use tandem_proxy::ListenerSource;
use tandem_supervisor::ports::{AcquireError, PortsClient};

pub(crate) struct HeldPorts {
    client: PortsClient,
}

impl HeldPorts {
    /// The holder of the data directory `dir`, started as `EXE __ports DIR` when needed.
    pub(crate) fn new(dir: &Path, exe: &Path) -> HeldPorts {
        HeldPorts {
            client: PortsClient::new(dir, exe),
        }
    }

    /// `tandem down`: ends the holder, which closes every socket it still keeps.
    pub(crate) fn quit(&self) {
        match self.client.quit() {
            Ok(true) => tracing::info!("the port holder stopped; every port is closed"),
            Ok(false) => {}
            Err(e) => tracing::warn!(
                "cannot stop the port holder ({}): {e}; its ports stay open until it is killed",
                self.client.socket_path().display()
            ),
        }
    }
}

impl ListenerSource for HeldPorts {
    fn acquire(&self, addr: SocketAddr) -> io::Result<TcpListener> {
        match self.client.acquire(addr) {
            Ok(listener) => Ok(listener),
            Err(AcquireError::Bind(e)) => Err(e),
            Err(e @ AcquireError::Holder { .. }) => {
                tracing::warn!(
                    "{e}; the server listens on {addr} itself, so that port is not served while no server runs"
                );
                TcpListener::bind(addr)
            }
        }
    }

    fn release(&self, addr: SocketAddr) {
        if let Err(e) = self.client.release(addr) {
            tracing::warn!(
                "cannot tell the port holder to close {addr}: {e}; it stays open until the holder stops"
            );
        }
    }

    fn held(&self) -> Vec<SocketAddr> {
        self.client.held().unwrap_or_else(|e| {
            tracing::warn!("cannot ask the port holder what it keeps: {e}");
            Vec::new()
        })
    }
}
