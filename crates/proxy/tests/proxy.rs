//! The proxy between real sockets on 127.0.0.1: echo backends that greet with their name,
//! clients that check where they landed. Waits poll with a deadline; nothing sleeps a fixed
//! time.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tandem_proxy::{Proxy, ProxyError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout};

const DEADLINE: Duration = Duration::from_secs(10);

/// An echo server that first writes its one-letter name and a newline.
struct EchoBackend {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl EchoBackend {
    async fn start(name: &'static str) -> EchoBackend {
        assert_eq!(name.len(), 1);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let (mut from_client, mut to_client) = stream.split();
                    to_client.write_all(format!("{name}\n").as_bytes()).await?;
                    tokio::io::copy(&mut from_client, &mut to_client).await?;
                    to_client.shutdown().await
                });
            }
        });
        EchoBackend {
            addr,
            connections,
            task,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for EchoBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    timeout(DEADLINE, future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(10)).await;
    }
}

/// Connects through the proxy and reads the greeting: the name of the backend reached.
async fn connect(proxy_addr: SocketAddr) -> (TcpStream, String) {
    let mut stream = within("connect", TcpStream::connect(proxy_addr))
        .await
        .unwrap();
    let mut greeting = [0u8; 2];
    within("greeting", stream.read_exact(&mut greeting))
        .await
        .expect("the proxy closed the connection without a backend");
    let name = String::from_utf8(greeting[..1].to_vec()).unwrap();
    (stream, name)
}

async fn assert_echoes(stream: &mut TcpStream, text: &str) {
    stream.write_all(text.as_bytes()).await.unwrap();
    let mut echoed = vec![0u8; text.len()];
    within("echo", stream.read_exact(&mut echoed))
        .await
        .unwrap();
    assert_eq!(String::from_utf8(echoed).unwrap(), text);
}

/// An address nothing listens on.
fn dead_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

#[tokio::test]
async fn new_connections_go_round_robin() {
    let (a, b) = (EchoBackend::start("A").await, EchoBackend::start("B").await);
    let proxy = Proxy::new();
    let addr = proxy.listen("api", any_port()).await.unwrap();
    proxy.set_backends("api", vec![a.addr, b.addr]);

    let mut reached = Vec::new();
    for i in 0..6 {
        let (mut stream, name) = connect(addr).await;
        assert_echoes(&mut stream, &format!("hello {i}")).await;
        reached.push(name);
    }
    assert_eq!(reached, ["A", "B", "A", "B", "A", "B"]);
    assert_eq!((a.connections(), b.connections()), (3, 3));
    let stats = proxy.stats("api");
    assert_eq!(stats.accepted, 6);
    assert_eq!(stats.connect_failures, 0);
}

#[tokio::test]
async fn a_down_backend_is_skipped() {
    let a = EchoBackend::start("A").await;
    let proxy = Proxy::new();
    let addr = proxy.listen("api", any_port()).await.unwrap();
    proxy.set_backends("api", vec![dead_addr(), a.addr]);

    for _ in 0..4 {
        let (mut stream, name) = connect(addr).await;
        assert_eq!(name, "A");
        assert_echoes(&mut stream, "still here").await;
    }
    let stats = proxy.stats("api");
    assert_eq!(stats.accepted, 4);
    assert_eq!(stats.unserved, 0);
    // The dead backend is tried once, then left out for a few seconds.
    assert!(
        (1..4).contains(&stats.connect_failures),
        "{} connect failures",
        stats.connect_failures
    );
}

#[tokio::test]
async fn swapping_backends_leaves_open_connections_alone() {
    let (a, b) = (EchoBackend::start("A").await, EchoBackend::start("B").await);
    let proxy = Proxy::new();
    let addr = proxy.listen("api", any_port()).await.unwrap();
    proxy.set_backends("api", vec![a.addr]);
    let (mut old, name) = connect(addr).await;
    assert_eq!(name, "A");

    proxy.set_backends("api", vec![b.addr]);
    for _ in 0..3 {
        let (mut new, name) = connect(addr).await;
        assert_eq!(name, "B");
        assert_echoes(&mut new, "new").await;
    }
    assert_echoes(&mut old, "old connection still works").await;
    assert_eq!(a.connections(), 1);

    let stats = proxy.stats("api");
    assert_eq!(stats.accepted, 4);
    drop(old);
    wait_until("closed connections to stop counting as active", || {
        proxy.stats("api").active == 0
    })
    .await;
}

#[tokio::test]
async fn a_connection_waits_briefly_for_backends_to_appear() {
    let a = EchoBackend::start("A").await;
    let proxy = Proxy::new();
    let addr = proxy.listen("api", any_port()).await.unwrap();

    let client = tokio::spawn(connect(addr));
    wait_until("the proxy to accept the client", || {
        proxy.stats("api").accepted == 1
    })
    .await;
    proxy.set_backends("api", vec![a.addr]);
    let (mut stream, name) = client.await.unwrap();
    assert_eq!(name, "A");
    assert_echoes(&mut stream, "late but served").await;
    assert_eq!(proxy.stats("api").unserved, 0);
}

#[tokio::test]
async fn a_port_in_use_says_what_to_do() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let proxy = Proxy::new();
    let error = proxy.listen("api", addr).await.unwrap_err();
    assert!(matches!(error, ProxyError::AddrInUse { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        format!(
            "port {} of service 'api' is already in use by another program; stop it or change `port`",
            addr.port()
        )
    );
    assert!(proxy.listening().is_empty());
}

#[tokio::test]
async fn listening_again_is_a_no_op_and_ports_are_not_shared() {
    let proxy = Proxy::new();
    let addr = proxy.listen("api", any_port()).await.unwrap();
    assert_eq!(proxy.listen("api", addr).await.unwrap(), addr);
    assert_eq!(proxy.listen("api", any_port()).await.unwrap(), addr);
    assert_eq!(proxy.listening(), [("api".to_string(), addr)]);

    let error = proxy.listen("web", addr).await.unwrap_err();
    assert!(
        matches!(error, ProxyError::AddrTakenByService { .. }),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        format!(
            "port {} of service 'web' is already served for service 'api'; give one of them another `port`",
            addr.port()
        )
    );
}

#[tokio::test]
async fn close_stops_accepting_and_lets_open_connections_finish() {
    let a = EchoBackend::start("A").await;
    let proxy = Proxy::new();
    let addr = proxy.listen("api", any_port()).await.unwrap();
    proxy.set_backends("api", vec![a.addr]);
    let (mut open, _) = connect(addr).await;

    proxy.close("api");
    assert!(proxy.listening().is_empty());
    let deadline = Instant::now() + DEADLINE;
    while TcpStream::connect(addr).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "the port still accepts after close"
        );
        sleep(Duration::from_millis(10)).await;
    }
    assert_echoes(&mut open, "in flight").await;

    // The service can listen again, with its backends and counters kept.
    let addr = proxy.listen("api", any_port()).await.unwrap();
    let (_, name) = connect(addr).await;
    assert_eq!(name, "A");
    assert!(proxy.stats("api").accepted >= 2);
}

#[tokio::test]
async fn listening_elsewhere_moves_the_service() {
    let a = EchoBackend::start("A").await;
    let proxy = Proxy::new();
    let old = proxy.listen("api", any_port()).await.unwrap();
    proxy.set_backends("api", vec![a.addr]);
    let new = proxy.listen("api", "127.0.0.2:0".parse().unwrap()).await;
    let Ok(new) = new else {
        return; // This machine has no 127.0.0.2.
    };
    assert_eq!(proxy.listening(), [("api".to_string(), new)]);
    let (_, name) = connect(new).await;
    assert_eq!(name, "A");
    let deadline = Instant::now() + DEADLINE;
    while TcpStream::connect(old).await.is_ok() {
        assert!(Instant::now() < deadline, "the old port still accepts");
        sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_transfer_arrives_intact_with_half_close() {
    const SIZE: usize = 8 * 1024 * 1024;
    let a = EchoBackend::start("A").await;
    let proxy = Proxy::new();
    let addr = proxy.listen("api", any_port()).await.unwrap();
    proxy.set_backends("api", vec![a.addr]);

    let sent: Vec<u8> = (0..SIZE).map(|i| (i * 31 % 251) as u8).collect();
    let (stream, name) = connect(addr).await;
    assert_eq!(name, "A");
    let (mut reader, mut writer) = stream.into_split();
    let to_send = sent.clone();
    let writing = tokio::spawn(async move {
        writer.write_all(&to_send).await.unwrap();
        // Half-close: the backend sees EOF, echoes the rest, then closes its side.
        writer.shutdown().await.unwrap();
        writer
    });
    let mut received = Vec::with_capacity(SIZE);
    within("the echoed data", reader.read_to_end(&mut received))
        .await
        .unwrap();
    let _writer = writing.await.unwrap();
    assert_eq!(received.len(), SIZE);
    assert!(received == sent, "the echoed bytes differ");
    wait_until("the connection to close", || proxy.stats("api").active == 0).await;
}

#[tokio::test]
async fn a_connection_without_a_reachable_backend_is_closed_after_a_short_hold() {
    let proxy = Proxy::new();
    let addr = proxy.listen("api", any_port()).await.unwrap();
    proxy.set_backends("api", vec![dead_addr()]);

    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut buffer = Vec::new();
    let read = within("the proxy to close", stream.read_to_end(&mut buffer)).await;
    assert!(read.is_ok_and(|n| n == 0), "expected a clean close");
    assert!(started.elapsed() < Duration::from_secs(6), "held too long");
    wait_until("the connection to stop counting as active", || {
        proxy.stats("api").active == 0
    })
    .await;
    let stats = proxy.stats("api");
    assert_eq!((stats.accepted, stats.unserved), (1, 1));
    assert_eq!(stats.connect_failures, 1, "each backend is tried once");
}

#[tokio::test]
async fn dropping_the_proxy_closes_its_ports() {
    let proxy = Proxy::new();
    let addr = proxy.listen("api", any_port()).await.unwrap();
    let clone = proxy.clone();
    drop(proxy);
    assert_eq!(clone.listening(), [("api".to_string(), addr)]);
    drop(clone);
    let deadline = Instant::now() + DEADLINE;
    while TcpStream::connect(addr).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "the port still accepts after the drop"
        );
        sleep(Duration::from_millis(10)).await;
    }
}
