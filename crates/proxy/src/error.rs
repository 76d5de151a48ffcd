//! Why the proxy could not serve a service's port, phrased for the person who wrote the
//! `port` in `tandem.toml`.

use std::io;
use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(
        "port {} of service '{service}' is already in use by another program; stop it or change `port`",
        .addr.port()
    )]
    AddrInUse { service: String, addr: SocketAddr },

    #[error(
        "port {} of service '{service}' is already served for service '{other}'; give one of them another `port`",
        .addr.port()
    )]
    AddrTakenByService {
        service: String,
        addr: SocketAddr,
        other: String,
    },

    #[error(
        "port {} of service '{service}' needs privileges this server lacks (ports below 1024 need root or CAP_NET_BIND_SERVICE); choose a port above 1023",
        .addr.port()
    )]
    PermissionDenied { service: String, addr: SocketAddr },

    #[error(
        "cannot listen on {addr} for service '{service}': {source}; check that the address belongs to this machine"
    )]
    Bind {
        service: String,
        addr: SocketAddr,
        source: io::Error,
    },
}

impl ProxyError {
    pub(crate) fn from_bind(service: &str, addr: SocketAddr, source: io::Error) -> ProxyError {
        let service = service.to_string();
        match source.kind() {
            io::ErrorKind::AddrInUse => ProxyError::AddrInUse { service, addr },
            io::ErrorKind::PermissionDenied => ProxyError::PermissionDenied { service, addr },
            _ => ProxyError::Bind {
                service,
                addr,
                source,
            },
        }
    }
}
