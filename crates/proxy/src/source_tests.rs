//! Listeners adopted from a [`ListenerSource`]: the source keeps each socket, the proxy
//! serves it, and connections made while no proxy serves it queue and are served by the
//! next proxy. The source here keeps its sockets in this process (a real holder keeps them
//! in another one; see the supervisor's `ports`), with real sockets and real connections.

use crate::{
    Backend, ListenerKey, ListenerSource, NoMetrics, Protocol, Proxy, ProxyConfig, ProxyError,
    ServerTls,
};
use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout};

const DEADLINE: Duration = Duration::from_secs(10);

/// Keeps every socket it binds until released, as the port holder does.
#[derive(Default)]
struct KeepingSource {
    held: Mutex<BTreeMap<SocketAddr, std::net::TcpListener>>,
    released: Mutex<Vec<SocketAddr>>,
}

impl ListenerSource for KeepingSource {
    fn acquire(&self, addr: SocketAddr) -> io::Result<std::net::TcpListener> {
        let mut held = self.held.lock().unwrap();
        if addr.port() != 0
            && let Some(listener) = held.get(&addr)
        {
            return listener.try_clone();
        }
        let listener = std::net::TcpListener::bind(addr)?;
        let bound = listener.local_addr()?;
        let copy = listener.try_clone()?;
        held.insert(bound, listener);
        Ok(copy)
    }

    fn release(&self, addr: SocketAddr) {
        self.held.lock().unwrap().remove(&addr);
        self.released.lock().unwrap().push(addr);
    }

    fn held(&self) -> Vec<SocketAddr> {
        self.held.lock().unwrap().keys().copied().collect()
    }
}

impl KeepingSource {
    fn released(&self) -> Vec<SocketAddr> {
        self.released.lock().unwrap().clone()
    }
}

fn proxy_with(source: &Arc<KeepingSource>) -> Proxy {
    Proxy::with_source(ProxyConfig::default(), Arc::new(NoMetrics), source.clone())
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn backend(addr: SocketAddr) -> Vec<Backend> {
    vec![Backend {
        addr,
        weight: 1,
        revision: 1,
        instance: "b".into(),
    }]
}

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    timeout(DEADLINE, future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// A TCP backend that echoes what it reads.
async fn echo_backend() -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind(any_port()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut from, mut to) = stream.split();
                let _ = tokio::io::copy(&mut from, &mut to).await;
            });
        }
    });
    (addr, task)
}

/// An HTTP backend that answers every request with `ok`.
async fn ok_backend() -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind(any_port()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    (addr, task)
}

async fn assert_echoes(stream: &mut TcpStream, text: &str) {
    stream.write_all(text.as_bytes()).await.unwrap();
    let mut echoed = vec![0u8; text.len()];
    within("echo", stream.read_exact(&mut echoed))
        .await
        .unwrap();
    assert_eq!(String::from_utf8(echoed).unwrap(), text);
}

async fn wait_refused(addr: SocketAddr) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match TcpStream::connect(addr).await {
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return,
            _ => {
                assert!(
                    Instant::now() < deadline,
                    "{addr} still accepts connections"
                );
                sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

#[tokio::test]
async fn connections_made_while_no_proxy_serves_are_served_by_the_next_one() {
    let source = Arc::new(KeepingSource::default());
    let (echo, _task) = echo_backend().await;
    let key = ListenerKey::public("db");

    let first = proxy_with(&source);
    first.set_weighted_backends("db", backend(echo));
    let addr = first
        .listen_on(key.clone(), any_port(), Protocol::Tcp)
        .await
        .unwrap();
    let mut before = within("connect", TcpStream::connect(addr)).await.unwrap();
    assert_echoes(&mut before, "before").await;
    assert_eq!(source.held(), vec![addr]);

    // The server goes away: its proxy is dropped, the source keeps the socket.
    drop(first);
    let mut waiting = within(
        "a connection while no proxy serves",
        TcpStream::connect(addr),
    )
    .await
    .expect("queued, not refused");
    waiting.write_all(b"queued").await.unwrap();

    let second = proxy_with(&source);
    second.set_weighted_backends("db", backend(echo));
    let again = second.listen_on(key, addr, Protocol::Tcp).await.unwrap();
    assert_eq!(again, addr);
    let mut echoed = [0u8; 6];
    within(
        "the queued connection's echo",
        waiting.read_exact(&mut echoed),
    )
    .await
    .unwrap();
    assert_eq!(&echoed, b"queued");
    assert!(source.released().is_empty(), "nothing was released");
}

#[tokio::test]
async fn a_proxy_that_stops_accepting_leaves_new_connections_to_the_next_one() {
    let source = Arc::new(KeepingSource::default());
    let (echo, _task) = echo_backend().await;
    let key = ListenerKey::public("db");
    let first = proxy_with(&source);
    first.set_weighted_backends("db", backend(echo));
    let addr = first
        .listen_on(key.clone(), any_port(), Protocol::Tcp)
        .await
        .unwrap();
    let mut open = within("connect", TcpStream::connect(addr)).await.unwrap();
    assert_echoes(&mut open, "open").await;
    assert_eq!(
        first.work_in_flight(),
        1,
        "an open TCP connection is work in flight"
    );

    first.stop_accepting().await;
    assert!(source.released().is_empty());
    let mut waiting = within("connect", TcpStream::connect(addr)).await.unwrap();
    waiting.write_all(b"next").await.unwrap();
    // The open connection still works; the new one is not served by this proxy.
    assert_echoes(&mut open, "still").await;
    let mut one = [0u8; 1];
    assert!(
        timeout(Duration::from_millis(200), waiting.read(&mut one))
            .await
            .is_err(),
        "a proxy that stopped accepting served a new connection"
    );
    drop(open);
    let deadline = Instant::now() + DEADLINE;
    while first.work_in_flight() > 0 {
        assert!(
            Instant::now() < deadline,
            "the closed connection stays in flight"
        );
        sleep(Duration::from_millis(10)).await;
    }

    let second = proxy_with(&source);
    second.set_weighted_backends("db", backend(echo));
    second.listen_on(key, addr, Protocol::Tcp).await.unwrap();
    let mut echoed = [0u8; 4];
    within(
        "the waiting connection's echo",
        waiting.read_exact(&mut echoed),
    )
    .await
    .unwrap();
    assert_eq!(&echoed, b"next");
}

#[tokio::test]
async fn closing_a_listener_releases_its_socket_and_the_port_closes() {
    let source = Arc::new(KeepingSource::default());
    let proxy = proxy_with(&source);
    let key = ListenerKey::edge("web", "api");
    let addr = proxy
        .listen_on(key.clone(), any_port(), Protocol::Tcp)
        .await
        .unwrap();
    proxy.close_listener(&key);
    assert_eq!(source.released(), vec![addr]);
    assert!(source.held().is_empty());
    wait_refused(addr).await;
}

#[tokio::test]
async fn moving_a_listener_releases_the_old_address() {
    let source = Arc::new(KeepingSource::default());
    let (echo, _task) = echo_backend().await;
    let proxy = proxy_with(&source);
    proxy.set_weighted_backends("db", backend(echo));
    let key = ListenerKey::public("db");
    let old = proxy
        .listen_on(key.clone(), any_port(), Protocol::Tcp)
        .await
        .unwrap();
    let free = std::net::TcpListener::bind(any_port())
        .unwrap()
        .local_addr()
        .unwrap();
    let new = proxy
        .listen_on(key.clone(), free, Protocol::Tcp)
        .await
        .unwrap();
    assert_ne!(old, new);
    assert_eq!(source.released(), vec![old]);
    assert_eq!(source.held(), vec![new]);
    wait_refused(old).await;

    // Within one port: 127.0.0.1:P to 0.0.0.0:P. The held socket is in the way until it
    // is released, which the move does.
    let everywhere = SocketAddr::from(([0, 0, 0, 0], new.port()));
    let moved = proxy
        .listen_on(key, everywhere, Protocol::Tcp)
        .await
        .unwrap();
    assert_eq!(moved, everywhere);
    assert_eq!(source.held(), vec![everywhere]);
    let mut stream = within("connect", TcpStream::connect(new)).await.unwrap();
    assert_echoes(&mut stream, "moved").await;
}

#[tokio::test]
async fn a_failed_bind_of_the_source_reads_as_the_proxy_s_own() {
    let source = Arc::new(KeepingSource::default());
    let proxy = proxy_with(&source);
    let squatter = std::net::TcpListener::bind(any_port()).unwrap();
    let taken = squatter.local_addr().unwrap();
    let error = proxy
        .listen_on(ListenerKey::public("web"), taken, Protocol::Http)
        .await
        .unwrap_err();
    assert!(matches!(error, ProxyError::AddrInUse { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        format!(
            "port {} of service 'web' is already in use by another program; stop it or change `port`",
            taken.port()
        )
    );
}

#[tokio::test]
async fn only_sockets_no_listener_uses_and_none_wanted_are_released() {
    let source = Arc::new(KeepingSource::default());
    let earlier = proxy_with(&source);
    let a = earlier
        .listen_on(ListenerKey::public("a"), any_port(), Protocol::Tcp)
        .await
        .unwrap();
    let b = earlier
        .listen_on(ListenerKey::public("b"), any_port(), Protocol::Tcp)
        .await
        .unwrap();
    let c = earlier
        .listen_on(ListenerKey::public("c"), any_port(), Protocol::Tcp)
        .await
        .unwrap();
    drop(earlier);

    let now = proxy_with(&source);
    assert_eq!(now.held_addresses().len(), 3);
    now.listen_on(ListenerKey::public("a"), a, Protocol::Tcp)
        .await
        .unwrap();
    now.release_unused(&[b]);
    assert_eq!(source.released(), vec![c]);
    let mut held = source.held();
    held.sort();
    let mut expected = vec![a, b];
    expected.sort();
    assert_eq!(held, expected);
}

#[tokio::test]
async fn https_is_served_on_an_adopted_socket_across_proxies() {
    let source = Arc::new(KeepingSource::default());
    let (ok, _task) = ok_backend().await;
    let files = tempfile::tempdir().unwrap();
    let pair = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let (cert, key) = (files.path().join("cert.pem"), files.path().join("key.pem"));
    std::fs::write(&cert, pem("CERTIFICATE", pair.cert.der())).unwrap();
    std::fs::write(&key, pem("PRIVATE KEY", &pair.signing_key.serialize_der())).unwrap();
    let web = ListenerKey::public("web");

    let first = proxy_with(&source);
    let tls = ServerTls::load(&cert, &key).unwrap();
    let addr = first
        .listen(web.clone(), any_port(), Protocol::Http, Some(tls))
        .await
        .unwrap();
    drop(first);

    // A client starts its handshake while no proxy serves; the next proxy, with the TLS
    // settings it loads itself, finishes it on the same socket.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pair.cert.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = within("connect", TcpStream::connect(addr)).await.unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let handshake = tokio::spawn(async move { connector.connect(name, tcp).await });

    let second = proxy_with(&source);
    second.set_weighted_backends("web", backend(ok));
    let tls = ServerTls::load(&cert, &key).unwrap();
    second
        .listen(web, addr, Protocol::Http, Some(tls))
        .await
        .unwrap();
    let mut stream = within("the handshake", handshake).await.unwrap().unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    within("the answer", stream.read_to_string(&mut answer))
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("ok"), "{answer}");
}

/// `der` as a PEM block (rcgen's own PEM output needs a crate the workspace does not have).
fn pem(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut base64 = String::new();
    for chunk in der.chunks(3) {
        let bytes = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]);
        for i in 0..4 {
            if i <= chunk.len() {
                base64.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                base64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in base64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
