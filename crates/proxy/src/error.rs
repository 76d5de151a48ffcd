//! Why the proxy could not listen where it was asked to, phrased for the person who wrote
//! the `port` in `tandem.toml`.

use crate::config::ListenerKey;
use std::io;
use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(
        "port {} of {listener} is already in use by another program; stop it or change `port`",
        .addr.port()
    )]
    AddrInUse {
        listener: ListenerKey,
        addr: SocketAddr,
    },

    #[error(
        "port {} of {listener} is already served for {other}; give one of them another `port`",
        .addr.port()
    )]
    AddrTakenByService {
        listener: ListenerKey,
        addr: SocketAddr,
        other: ListenerKey,
    },

    #[error(
        "port {} of {listener} needs privileges this server lacks (ports below 1024 need root or CAP_NET_BIND_SERVICE); choose a port above 1023",
        .addr.port()
    )]
    PermissionDenied {
        listener: ListenerKey,
        addr: SocketAddr,
    },

    #[error(
        "cannot listen on {addr} for {listener}: {source}; check that the address belongs to this machine"
    )]
    Bind {
        listener: ListenerKey,
        addr: SocketAddr,
        source: io::Error,
    },
}

impl ProxyError {
    pub(crate) fn from_bind(listener: &ListenerKey, addr: SocketAddr, source: io::Error) -> Self {
        let listener = listener.clone();
        match source.kind() {
            io::ErrorKind::AddrInUse => ProxyError::AddrInUse { listener, addr },
            io::ErrorKind::PermissionDenied => ProxyError::PermissionDenied { listener, addr },
            _ => ProxyError::Bind {
                listener,
                addr,
                source,
            },
        }
    }
}
