//! The proxy between real sockets on 127.0.0.1. TCP mode: echo backends that greet with
//! their name, clients that check where they landed. HTTP mode: in-process hyper backends
//! that answer with their name (and can stream, hold a request, echo headers or a
//! WebSocket), reached through hyper clients, curl (h2c) and tokio-tungstenite. Waits poll
//! with a deadline; nothing sleeps a fixed time. `public`: listeners on other addresses than
//! loopback, and HTTPS.

#[path = "proxy/public.rs"]
mod public;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tandem_proxy::{Backend, ListenerKey, NoMetrics, Protocol, Proxy, ProxyConfig, ProxyError};
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

/// A proxy with the default limits that records no metrics (TCP tests listen with
/// [`Protocol::Tcp`]).
fn tcp_proxy() -> Proxy {
    Proxy::with_config(ProxyConfig::default(), Arc::new(NoMetrics))
}

/// Each address as a backend of weight 1 (revision 0).
fn backends(addrs: &[SocketAddr]) -> Vec<Backend> {
    addrs
        .iter()
        .map(|&addr| Backend {
            addr,
            weight: 1,
            revision: 0,
            instance: addr.to_string(),
        })
        .collect()
}

#[tokio::test]
async fn new_connections_go_round_robin() {
    let (a, b) = (EchoBackend::start("A").await, EchoBackend::start("B").await);
    let proxy = tcp_proxy();
    let addr = proxy
        .listen_on(ListenerKey::public("api"), any_port(), Protocol::Tcp)
        .await
        .unwrap();
    proxy.set_weighted_backends("api", backends(&[a.addr, b.addr]));

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
    let proxy = tcp_proxy();
    let addr = proxy
        .listen_on(ListenerKey::public("api"), any_port(), Protocol::Tcp)
        .await
        .unwrap();
    proxy.set_weighted_backends("api", backends(&[dead_addr(), a.addr]));

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
    let proxy = tcp_proxy();
    let addr = proxy
        .listen_on(ListenerKey::public("api"), any_port(), Protocol::Tcp)
        .await
        .unwrap();
    proxy.set_weighted_backends("api", backends(&[a.addr]));
    let (mut old, name) = connect(addr).await;
    assert_eq!(name, "A");

    proxy.set_weighted_backends("api", backends(&[b.addr]));
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
    let proxy = tcp_proxy();
    let addr = proxy
        .listen_on(ListenerKey::public("api"), any_port(), Protocol::Tcp)
        .await
        .unwrap();

    let client = tokio::spawn(connect(addr));
    wait_until("the proxy to accept the client", || {
        proxy.stats("api").accepted == 1
    })
    .await;
    proxy.set_weighted_backends("api", backends(&[a.addr]));
    let (mut stream, name) = client.await.unwrap();
    assert_eq!(name, "A");
    assert_echoes(&mut stream, "late but served").await;
    assert_eq!(proxy.stats("api").unserved, 0);
}

#[tokio::test]
async fn a_port_in_use_says_what_to_do() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let proxy = tcp_proxy();
    let error = proxy
        .listen_on(ListenerKey::public("api"), addr, Protocol::Tcp)
        .await
        .unwrap_err();
    assert!(matches!(error, ProxyError::AddrInUse { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        format!(
            "port {} of service 'api' is already in use by another program; stop it or change `port`",
            addr.port()
        )
    );
    assert!(proxy.listeners().is_empty());
}

#[tokio::test]
async fn listening_again_is_a_no_op_and_ports_are_not_shared() {
    let proxy = tcp_proxy();
    let addr = proxy
        .listen_on(ListenerKey::public("api"), any_port(), Protocol::Tcp)
        .await
        .unwrap();
    assert_eq!(
        proxy
            .listen_on(ListenerKey::public("api"), addr, Protocol::Tcp)
            .await
            .unwrap(),
        addr
    );
    assert_eq!(
        proxy
            .listen_on(ListenerKey::public("api"), any_port(), Protocol::Tcp)
            .await
            .unwrap(),
        addr
    );
    assert_eq!(
        proxy.listeners(),
        [(ListenerKey::public("api"), addr, Protocol::Tcp)]
    );

    let error = proxy
        .listen_on(ListenerKey::public("web"), addr, Protocol::Tcp)
        .await
        .unwrap_err();
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
    let proxy = tcp_proxy();
    let addr = proxy
        .listen_on(ListenerKey::public("api"), any_port(), Protocol::Tcp)
        .await
        .unwrap();
    proxy.set_weighted_backends("api", backends(&[a.addr]));
    let (mut open, _) = connect(addr).await;

    proxy.close_listener(&ListenerKey::public("api"));
    assert!(proxy.listeners().is_empty());
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
    let addr = proxy
        .listen_on(ListenerKey::public("api"), any_port(), Protocol::Tcp)
        .await
        .unwrap();
    let (_, name) = connect(addr).await;
    assert_eq!(name, "A");
    assert!(proxy.stats("api").accepted >= 2);
}

#[tokio::test]
async fn listening_elsewhere_moves_the_service() {
    let a = EchoBackend::start("A").await;
    let proxy = tcp_proxy();
    let old = proxy
        .listen_on(ListenerKey::public("api"), any_port(), Protocol::Tcp)
        .await
        .unwrap();
    proxy.set_weighted_backends("api", backends(&[a.addr]));
    let new = proxy
        .listen_on(
            ListenerKey::public("api"),
            "127.0.0.2:0".parse().unwrap(),
            Protocol::Tcp,
        )
        .await;
    let Ok(new) = new else {
        return; // This machine has no 127.0.0.2.
    };
    assert_eq!(
        proxy.listeners(),
        [(ListenerKey::public("api"), new, Protocol::Tcp)]
    );
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
    let proxy = tcp_proxy();
    let addr = proxy
        .listen_on(ListenerKey::public("api"), any_port(), Protocol::Tcp)
        .await
        .unwrap();
    proxy.set_weighted_backends("api", backends(&[a.addr]));

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
    let proxy = tcp_proxy();
    let addr = proxy
        .listen_on(ListenerKey::public("api"), any_port(), Protocol::Tcp)
        .await
        .unwrap();
    proxy.set_weighted_backends("api", backends(&[dead_addr()]));

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
    let proxy = tcp_proxy();
    let addr = proxy
        .listen_on(ListenerKey::public("api"), any_port(), Protocol::Tcp)
        .await
        .unwrap();
    let clone = proxy.clone();
    drop(proxy);
    assert_eq!(
        clone.listeners(),
        [(ListenerKey::public("api"), addr, Protocol::Tcp)]
    );
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

// === HTTP mode ===

mod http {
    use super::{DEADLINE, any_port, dead_addr, wait_until, within};
    use bytes::Bytes;
    use futures_util::{SinkExt, StreamExt};
    use http_body_util::combinators::UnsyncBoxBody;
    use http_body_util::{BodyExt, Empty, Full, StreamBody};
    use hyper::body::{Frame, Incoming};
    use hyper::client::conn::http1::SendRequest;
    use hyper::header::{HeaderMap, HeaderValue};
    use hyper::service::service_fn;
    use hyper::{Request, Response, StatusCode};
    use hyper_util::rt::TokioIo;
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    use tandem_proxy::{
        Backend, ListenerKey, MethodClass, MetricsSink, Protocol, Proxy, ProxyConfig,
        ProxyErrorSource, RequestRecord, ServiceLimits,
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::{Semaphore, mpsc};
    use tokio::task::JoinHandle;
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    use tokio_tungstenite::tungstenite::protocol::Role;

    type TestBody = UnsyncBoxBody<Bytes, Infallible>;
    const MIB: usize = 1024 * 1024;

    fn full(text: impl Into<Bytes>) -> TestBody {
        Full::new(text.into()).boxed_unsync()
    }

    fn empty() -> TestBody {
        Empty::new().boxed_unsync()
    }

    /// What a backend shares with the test.
    struct BackendState {
        name: &'static str,
        requests: AtomicUsize,
        /// Request body bytes received on `/upload` so far.
        received: AtomicU64,
        /// `/wait` answers, and `/download` goes past its first MiB, only with a permit.
        gate: Semaphore,
    }

    /// An HTTP/1.1 backend (keep-alive, upgrades) answering with its name:
    /// `/` its name; `/headers` the forwarding headers it got; `/wait` its name once the
    /// test opens the gate; `/upload` the count of body bytes (counted as they arrive);
    /// `/download?N` N bytes, the first MiB then the rest once the gate opens; `/ws` a
    /// WebSocket echo.
    struct HttpBackend {
        addr: SocketAddr,
        state: Arc<BackendState>,
        task: JoinHandle<()>,
    }

    impl HttpBackend {
        async fn start(name: &'static str) -> HttpBackend {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let state = Arc::new(BackendState {
                name,
                requests: AtomicUsize::new(0),
                received: AtomicU64::new(0),
                gate: Semaphore::new(0),
            });
            let shared = state.clone();
            let task = tokio::spawn(async move {
                loop {
                    let (stream, _) = listener.accept().await.unwrap();
                    let state = shared.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |request| answer(state.clone(), request));
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .with_upgrades()
                            .await;
                    });
                }
            });
            HttpBackend { addr, state, task }
        }

        fn requests(&self) -> usize {
            self.state.requests.load(Ordering::SeqCst)
        }

        fn open_gate(&self, permits: usize) {
            self.state.gate.add_permits(permits);
        }

        fn weighted(&self, weight: u32, revision: u64) -> Backend {
            Backend {
                addr: self.addr,
                weight,
                revision,
                instance: format!("{}-{revision}", self.state.name),
            }
        }
    }

    impl Drop for HttpBackend {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn answer(
        state: Arc<BackendState>,
        mut request: Request<Incoming>,
    ) -> Result<Response<TestBody>, Infallible> {
        state.requests.fetch_add(1, Ordering::SeqCst);
        let name = state.name;
        let response = match request.uri().path() {
            "/headers" => {
                let mut lines = String::new();
                for header in [
                    "x-forwarded-for",
                    "x-forwarded-proto",
                    "x-forwarded-host",
                    "host",
                ] {
                    let value = request.headers().get(header).map(|v| v.to_str().unwrap());
                    lines.push_str(&format!("{header}: {}\n", value.unwrap_or("-")));
                }
                Response::new(full(lines))
            }
            "/wait" => {
                state.gate.acquire().await.unwrap().forget();
                Response::new(full(name))
            }
            "/upload" => {
                let mut body = request.into_body();
                let mut this_request = 0;
                while let Some(frame) = body.frame().await {
                    let Ok(frame) = frame else { break };
                    if let Some(data) = frame.data_ref() {
                        this_request += data.len();
                        state
                            .received
                            .fetch_add(data.len() as u64, Ordering::SeqCst);
                    }
                }
                Response::new(full(this_request.to_string()))
            }
            "/download" => {
                let size: usize = request.uri().query().unwrap().parse().unwrap();
                let (sender, receiver) = mpsc::channel::<Bytes>(4);
                let state = state.clone();
                tokio::spawn(async move {
                    let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
                    let mut sent = 0;
                    while sent < size {
                        if sent == MIB {
                            state.gate.acquire().await.unwrap().forget();
                        }
                        let n = chunk.len().min(size - sent);
                        if sender.send(chunk.slice(..n)).await.is_err() {
                            return;
                        }
                        sent += n;
                    }
                });
                let frames = futures_util::stream::unfold(receiver, |mut receiver| async move {
                    let data = receiver.recv().await?;
                    Some((Ok::<_, Infallible>(Frame::data(data)), receiver))
                });
                Response::new(StreamBody::new(frames).boxed_unsync())
            }
            "/ws" => {
                let key = request.headers()["sec-websocket-key"].clone();
                let upgrade = hyper::upgrade::on(&mut request);
                tokio::spawn(async move {
                    let upgraded = upgrade.await.unwrap();
                    let socket = WebSocketStream::from_raw_socket(
                        TokioIo::new(upgraded),
                        Role::Server,
                        None,
                    )
                    .await;
                    let (mut to_client, mut from_client) = socket.split();
                    while let Some(Ok(message)) = from_client.next().await {
                        if message.is_text() || message.is_binary() {
                            to_client.send(message).await.unwrap();
                        }
                    }
                });
                Response::builder()
                    .status(StatusCode::SWITCHING_PROTOCOLS)
                    .header("upgrade", "websocket")
                    .header("connection", "upgrade")
                    .header("sec-websocket-accept", derive_accept_key(key.as_bytes()))
                    .body(empty())
                    .unwrap()
            }
            _ => Response::new(full(name)),
        };
        Ok(response)
    }

    /// Every record the proxy hands out.
    #[derive(Default)]
    struct Records(Mutex<Vec<RequestRecord>>);

    impl MetricsSink for Records {
        fn record(&self, record: &RequestRecord) {
            self.0.lock().unwrap().push(record.clone());
        }
    }

    impl Records {
        fn all(&self) -> Vec<RequestRecord> {
            self.0.lock().unwrap().clone()
        }
    }

    fn test_config() -> ProxyConfig {
        ProxyConfig {
            no_backend_wait: Duration::from_millis(200),
            ..ProxyConfig::default()
        }
    }

    /// A proxy with service 'api' public in HTTP mode.
    async fn http_proxy(config: ProxyConfig) -> (Proxy, SocketAddr, Arc<Records>) {
        let records = Arc::new(Records::default());
        let proxy = Proxy::with_config(config, records.clone());
        let addr = proxy
            .listen_on(ListenerKey::public("api"), any_port(), Protocol::Http)
            .await
            .unwrap();
        (proxy, addr, records)
    }

    /// One client connection (HTTP/1.1, keep-alive).
    struct Client {
        sender: SendRequest<TestBody>,
    }

    struct Reply {
        status: StatusCode,
        headers: HeaderMap,
        body: String,
    }

    impl Reply {
        fn proxy_error(&self) -> &str {
            self.headers
                .get("x-tandem-proxy-error")
                .map_or("-", |v| v.to_str().unwrap())
        }
    }

    impl Client {
        async fn connect(addr: SocketAddr) -> Client {
            let stream = within("connect", TcpStream::connect(addr)).await.unwrap();
            let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(connection);
            Client { sender }
        }

        async fn send(&mut self, request: Request<TestBody>) -> Response<Incoming> {
            within("the sender to be ready", self.sender.ready())
                .await
                .unwrap();
            within("the response head", self.sender.send_request(request))
                .await
                .unwrap()
        }

        async fn request(&mut self, request: Request<TestBody>) -> Reply {
            let response = self.send(request).await;
            let status = response.status();
            let headers = response.headers().clone();
            let body = within("the response body", response.into_body().collect())
                .await
                .unwrap()
                .to_bytes();
            let body = String::from_utf8(body.to_vec()).unwrap();
            Reply {
                status,
                headers,
                body,
            }
        }

        async fn get(&mut self, path: &str) -> Reply {
            self.request(get(path)).await
        }
    }

    fn get(path: &str) -> Request<TestBody> {
        Request::get(path)
            .header("host", "api.test")
            .body(empty())
            .unwrap()
    }

    #[tokio::test]
    async fn a_keep_alive_client_follows_a_backend_switch() {
        let (a, b) = (HttpBackend::start("A").await, HttpBackend::start("B").await);
        let (proxy, addr, _) = http_proxy(test_config()).await;
        proxy.set_weighted_backends("api", vec![a.weighted(1, 1)]);
        let mut client = Client::connect(addr).await;
        assert_eq!(client.get("/").await.body, "A");
        assert_eq!(client.get("/").await.body, "A");

        proxy.set_weighted_backends("api", vec![b.weighted(1, 2)]);
        for _ in 0..3 {
            let reply = client.get("/").await;
            assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "B"));
        }
        // One client connection throughout.
        assert_eq!(proxy.stats("api").accepted, 1);
        assert_eq!((a.requests(), b.requests()), (2, 3));
    }

    #[tokio::test]
    async fn weights_split_requests_ten_to_ninety() {
        let (old, canary) = (HttpBackend::start("O").await, HttpBackend::start("C").await);
        let (proxy, addr, _) = http_proxy(test_config()).await;
        proxy.set_weighted_backends("api", vec![old.weighted(90, 1), canary.weighted(10, 2)]);
        let mut client = Client::connect(addr).await;
        let mut canary_answers = 0;
        for _ in 0..1000 {
            if client.get("/").await.body == "C" {
                canary_answers += 1;
            }
        }
        assert!(
            (80..=120).contains(&canary_answers),
            "{canary_answers} of 1000 requests reached the 10 % canary"
        );
        let stats = proxy.revision_stats("api");
        wait_until("every request to be recorded", || {
            proxy
                .revision_stats("api")
                .values()
                .map(|s| s.requests)
                .sum::<u64>()
                == 1000
        })
        .await;
        assert!(
            stats
                .get(&2)
                .is_some_and(|s| s.requests > 0 && s.errors == 0)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn h2c_clients_reach_http1_backends() {
        let a = HttpBackend::start("A").await;
        let (proxy, addr, records) = http_proxy(test_config()).await;
        proxy.set_weighted_backends("api", vec![a.weighted(1, 1)]);
        let output = within(
            "curl",
            tokio::process::Command::new("curl")
                .args(["--silent", "--show-error", "--http2-prior-knowledge"])
                .args(["--write-out", " http/%{http_version}"])
                .arg(format!("http://{addr}/headers"))
                .output(),
        )
        .await
        .expect("curl runs (apt-get install -y curl)");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "curl failed: {output:?}");
        assert!(stdout.ends_with(" http/2"), "{stdout}");
        assert!(stdout.contains("x-forwarded-proto: http\n"), "{stdout}");
        assert!(stdout.contains(&format!("host: {addr}\n")), "{stdout}");
        wait_until("the request to be recorded", || records.all().len() == 1).await;
        assert_eq!(records.all()[0].status, 200);

        // An upload from standard input has no length: it reaches the backend chunked.
        let mut upload = tokio::process::Command::new("curl")
            .args(["--silent", "--show-error", "--http2-prior-knowledge"])
            .args(["--upload-file", "-", "--request", "POST"])
            .arg(format!("http://{addr}/upload"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("curl runs");
        let mut stdin = upload.stdin.take().unwrap();
        stdin.write_all(&[b'h'; 100_000]).await.unwrap();
        drop(stdin);
        let output = within("curl's upload", upload.wait_with_output())
            .await
            .unwrap();
        assert!(output.status.success(), "curl failed: {output:?}");
        assert_eq!(String::from_utf8_lossy(&output.stdout), "100000");
        wait_until("the upload to be recorded", || records.all().len() == 2).await;
        assert_eq!(records.all()[1].bytes_in, 100_000);
    }

    #[tokio::test]
    async fn a_websocket_echoes_through_the_proxy() {
        let a = HttpBackend::start("A").await;
        let (proxy, addr, records) = http_proxy(test_config()).await;
        proxy.set_weighted_backends("api", vec![a.weighted(1, 1)]);
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut socket, response) = within(
            "the WebSocket handshake",
            tokio_tungstenite::client_async(format!("ws://{addr}/ws"), stream),
        )
        .await
        .unwrap();
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        for text in ["hello", "through", "the proxy"] {
            socket.send(Message::text(text)).await.unwrap();
            let echoed = within("the echo", socket.next()).await.unwrap().unwrap();
            assert_eq!(echoed.into_text().unwrap().as_str(), text);
        }
        assert_eq!(
            proxy.in_flight("api", a.addr),
            1,
            "an open WebSocket is in flight"
        );
        socket.close(None).await.unwrap();
        drop(socket);
        wait_until("the WebSocket to be recorded", || records.all().len() == 1).await;
        let record = &records.all()[0];
        assert_eq!(record.status, 101);
        assert!(record.bytes_in > 0 && record.bytes_out > 0, "{record:?}");
        assert_eq!(proxy.in_flight("api", a.addr), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn large_bodies_stream_both_ways_without_buffering() {
        const SIZE: usize = 64 * MIB;
        let a = HttpBackend::start("A").await;
        let (proxy, addr, records) = http_proxy(test_config()).await;
        proxy.set_weighted_backends("api", vec![a.weighted(1, 1)]);

        // Upload: the backend must see the first MiB while the client still holds the rest.
        let (chunks, receiver) = mpsc::channel::<Bytes>(1);
        let frames = futures_util::stream::unfold(receiver, |mut receiver| async move {
            let data = receiver.recv().await?;
            Some((Ok::<_, Infallible>(Frame::data(data)), receiver))
        });
        let request = Request::post("/upload")
            .header("host", "api.test")
            .body(StreamBody::new(frames).boxed_unsync())
            .unwrap();
        let mut client = Client::connect(addr).await;
        let upload = tokio::spawn(async move { client.request(request).await });
        let chunk = Bytes::from(vec![b'u'; MIB]);
        chunks.send(chunk.clone()).await.unwrap();
        wait_until("the backend to receive the first MiB", || {
            a.state.received.load(Ordering::SeqCst) == MIB as u64
        })
        .await;
        for _ in 1..SIZE / MIB {
            within("sending", chunks.send(chunk.clone())).await.unwrap();
        }
        drop(chunks);
        let reply = within("the upload's answer", upload).await.unwrap();
        assert_eq!(reply.body, SIZE.to_string());

        // Download: the backend sends its first MiB and holds the rest until the client has
        // seen bytes, which it only can if the proxy passes them on as they come.
        let mut client = Client::connect(addr).await;
        let response = client.send(get(&format!("/download?{SIZE}"))).await;
        let mut body = response.into_body();
        let mut received = 0;
        let mut gate_opened = false;
        while let Some(frame) = within("a frame", body.frame()).await {
            if let Some(data) = frame.unwrap().data_ref() {
                received += data.len();
            }
            if !gate_opened {
                a.open_gate(1);
                gate_opened = true;
            }
        }
        assert_eq!(received, SIZE);
        wait_until("both to be recorded", || records.all().len() == 2).await;
        let records = records.all();
        assert_eq!(records[0].bytes_in, SIZE as u64);
        assert_eq!(records[1].bytes_out, SIZE as u64);
    }

    #[tokio::test]
    async fn a_slow_client_is_cut_off_by_the_header_timeout() {
        let a = HttpBackend::start("A").await;
        let config = ProxyConfig {
            header_read_timeout: Duration::from_millis(300),
            ..test_config()
        };
        let (proxy, addr, _) = http_proxy(config).await;
        proxy.set_weighted_backends("api", vec![a.weighted(1, 1)]);

        // A request the backend holds for longer than the header timeout is not cut off:
        // the timeout is for request heads, not for answers.
        let mut waiting_client = Client::connect(addr).await;
        let waiting = tokio::spawn(async move { waiting_client.get("/wait").await });
        wait_until("the held request to reach A", || {
            proxy.in_flight("api", a.addr) == 1
        })
        .await;

        // Half a request head, then nothing.
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nHost: api.test\r\n")
            .await
            .unwrap();
        // Not a byte.
        let mut silent = TcpStream::connect(addr).await.unwrap();
        // A whole request, then nothing: an idle keep-alive connection closes after as long.
        let mut idle = TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET / HTTP/1.1\r\nHost: api.test\r\n\r\n")
            .await
            .unwrap();
        let mut answered = Vec::new();
        within("the idle client's answer", idle.read_to_end(&mut answered))
            .await
            .unwrap();
        assert!(answered.starts_with(b"HTTP/1.1 200"), "{answered:?}");
        assert!(answered.ends_with(b"A"), "{answered:?}");
        for stream in [&mut slow, &mut silent] {
            let mut rest = Vec::new();
            let read = within(
                "the proxy to cut the client off",
                stream.read_to_end(&mut rest),
            )
            .await;
            assert!(
                read.is_err() || rest.is_empty() || rest.starts_with(b"HTTP/1.1 408"),
                "{}",
                String::from_utf8_lossy(&rest)
            );
        }
        assert_eq!(a.requests(), 2, "the held request and the idle client's");
        a.open_gate(1);
        let reply = within("the held request", waiting).await.unwrap();
        assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "A"));
        // A client that keeps up is served.
        assert_eq!(Client::connect(addr).await.get("/").await.body, "A");
    }

    #[tokio::test]
    async fn a_down_backend_gives_502_with_its_reason() {
        let (proxy, addr, records) = http_proxy(test_config()).await;
        let dead = dead_addr();
        proxy.set_weighted_backends(
            "api",
            vec![Backend {
                addr: dead,
                weight: 1,
                revision: 3,
                instance: "api-3".into(),
            }],
        );
        let reply = Client::connect(addr).await.get("/").await;
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
        assert_eq!(reply.proxy_error(), "connect-refused");
        assert_eq!(
            reply.body,
            format!("backend {dead} of service 'api' refused the connection\n")
        );
        wait_until("the record", || records.all().len() == 1).await;
        let record = &records.all()[0];
        assert_eq!(
            (record.status, record.error, record.revision),
            (502, Some(ProxyErrorSource::Upstream), Some(3))
        );
        assert_eq!(proxy.revision_stats("api")[&3].errors, 1);
    }

    #[tokio::test]
    async fn no_backend_gives_503_after_a_short_wait_for_one() {
        let a = HttpBackend::start("A").await;
        let (proxy, addr, _) = http_proxy(test_config()).await;
        let reply = Client::connect(addr).await.get("/").await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(reply.proxy_error(), "no-backend");
        assert_eq!(reply.body, "no healthy backend for service 'api'\n");

        // A request that arrives before the backends does not fail if they come in time.
        let config = ProxyConfig {
            no_backend_wait: DEADLINE,
            ..test_config()
        };
        let (proxy, addr, _) = {
            drop(proxy);
            http_proxy(config).await
        };
        let mut client = Client::connect(addr).await;
        let waiting = tokio::spawn(async move { client.get("/").await });
        wait_until("the request to arrive", || proxy.stats("api").accepted == 1).await;
        proxy.set_weighted_backends("api", vec![a.weighted(1, 1)]);
        assert_eq!(waiting.await.unwrap().body, "A");
    }

    #[tokio::test]
    async fn a_slow_backend_gives_504() {
        let a = HttpBackend::start("A").await;
        let config = ProxyConfig {
            response_timeout: Duration::from_millis(300),
            ..test_config()
        };
        let (proxy, addr, records) = http_proxy(config).await;
        proxy.set_weighted_backends("api", vec![a.weighted(1, 1)]);
        let mut client = Client::connect(addr).await;
        let reply = client.get("/wait").await;
        assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(reply.proxy_error(), "response-timeout");
        assert_eq!(
            reply.body,
            format!(
                "backend {} of service 'api' did not answer within 300ms\n",
                a.addr
            )
        );
        wait_until("the record", || records.all().len() == 1).await;
        assert_eq!(records.all()[0].error, Some(ProxyErrorSource::Upstream));
        assert_eq!(proxy.in_flight("api", a.addr), 0);
        // The client connection stays, and its next requests get their full time again.
        for _ in 0..2 {
            assert_eq!(client.get("/").await.body, "A");
        }
    }

    #[tokio::test]
    async fn too_large_bodies_get_413_and_too_large_heads_431() {
        let a = HttpBackend::start("A").await;
        let config = ProxyConfig {
            max_body_bytes: Some(1000),
            max_header_bytes: 4096,
            ..test_config()
        };
        let (proxy, addr, records) = http_proxy(config).await;
        proxy.set_weighted_backends("api", vec![a.weighted(1, 1)]);

        // Announced too large.
        let request = Request::post("/upload")
            .header("host", "api.test")
            .body(full(vec![b'x'; 2000]))
            .unwrap();
        let reply = Client::connect(addr).await.request(request).await;
        assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(reply.proxy_error(), "body-too-large");
        assert_eq!(
            reply.body,
            "the request body exceeds the proxy's limit of 1000 bytes\n"
        );
        assert_eq!(a.requests(), 0);

        // Streamed (chunked) past the limit.
        let frames = futures_util::stream::iter(
            (0..4).map(|_| Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b'x'; 400])))),
        );
        let request = Request::post("/upload")
            .header("host", "api.test")
            .body(StreamBody::new(frames).boxed_unsync())
            .unwrap();
        let reply = Client::connect(addr).await.request(request).await;
        assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(reply.proxy_error(), "body-too-large");
        assert_eq!(
            reply.body,
            "the request body exceeds the proxy's limit of 1000 bytes\n"
        );

        // Within the limit.
        let request = Request::post("/upload")
            .header("host", "api.test")
            .body(full(vec![b'x'; 1000]))
            .unwrap();
        assert_eq!(
            Client::connect(addr).await.request(request).await.body,
            "1000"
        );

        let request = Request::get("/")
            .header("host", "api.test")
            .header("x-big", "b".repeat(5000))
            .body(empty())
            .unwrap();
        let reply = Client::connect(addr).await.request(request).await;
        assert_eq!(reply.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        assert_eq!(reply.proxy_error(), "head-too-large");
        assert_eq!(
            reply.body,
            "the request head exceeds the proxy's limit of 4096 bytes\n"
        );

        wait_until("every record", || records.all().len() == 4).await;
        let errors: Vec<_> = records.all().iter().map(|r| (r.status, r.error)).collect();
        let downstream = Some(ProxyErrorSource::Downstream);
        assert!(errors.contains(&(413, downstream)), "{errors:?}");
        assert!(errors.contains(&(431, downstream)), "{errors:?}");
    }

    #[tokio::test]
    async fn drain_lets_in_flight_requests_finish_and_sends_no_new_ones() {
        let (a, b) = (HttpBackend::start("A").await, HttpBackend::start("B").await);
        let (proxy, addr, _) = http_proxy(test_config()).await;
        proxy.set_weighted_backends("api", vec![a.weighted(1, 1)]);
        let mut slow_client = Client::connect(addr).await;
        let slow = tokio::spawn(async move { slow_client.get("/wait").await });
        wait_until("the slow request to reach A", || {
            proxy.in_flight("api", a.addr) == 1
        })
        .await;

        proxy.set_weighted_backends("api", vec![b.weighted(1, 2)]);
        assert!(
            !proxy
                .drain("api", &[a.addr], Duration::from_millis(50))
                .await,
            "drained while a request was in flight"
        );
        let mut client = Client::connect(addr).await;
        for _ in 0..5 {
            assert_eq!(client.get("/").await.body, "B");
        }
        assert_eq!(a.requests(), 1);

        let draining = {
            let proxy = proxy.clone();
            let addr = a.addr;
            tokio::spawn(async move { proxy.drain("api", &[addr], DEADLINE).await })
        };
        a.open_gate(1);
        let reply = within("the slow request", slow).await.unwrap();
        assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "A"));
        assert!(within("drain", draining).await.unwrap());
        assert_eq!(proxy.in_flight("api", a.addr), 0);
    }

    #[tokio::test]
    async fn every_request_is_recorded_with_its_caller_revision_and_error_source() {
        let a = HttpBackend::start("A").await;
        let records = Arc::new(Records::default());
        let proxy = Proxy::with_config(
            ProxyConfig {
                max_body_bytes: Some(10),
                ..test_config()
            },
            records.clone(),
        );
        let edge = proxy
            .listen_on(ListenerKey::edge("web", "api"), any_port(), Protocol::Http)
            .await
            .unwrap();
        proxy.set_weighted_backends("api", vec![a.weighted(1, 7)]);
        let mut client = Client::connect(edge).await;
        assert_eq!(client.get("/").await.status, StatusCode::OK);
        let head = Request::head("/")
            .header("host", "api.test")
            .body(empty())
            .unwrap();
        assert_eq!(client.request(head).await.status, StatusCode::OK);
        let post = Request::post("/upload")
            .header("host", "api.test")
            .body(full("0123456789abc"))
            .unwrap();
        assert_eq!(
            client.request(post).await.status,
            StatusCode::PAYLOAD_TOO_LARGE
        );
        let dead = dead_addr();
        proxy.set_weighted_backends(
            "api",
            vec![Backend {
                addr: dead,
                weight: 1,
                revision: 8,
                instance: "api-8".into(),
            }],
        );
        assert_eq!(
            Client::connect(edge).await.get("/").await.status,
            StatusCode::BAD_GATEWAY
        );

        wait_until("four records", || records.all().len() == 4).await;
        let records = records.all();
        let summary: Vec<_> = records
            .iter()
            .map(|r| (r.method, r.status, r.revision, r.error))
            .collect();
        assert_eq!(
            summary,
            [
                (MethodClass::Get, 200, Some(7), None),
                (MethodClass::Head, 200, Some(7), None),
                (
                    MethodClass::Post,
                    413,
                    None,
                    Some(ProxyErrorSource::Downstream)
                ),
                (
                    MethodClass::Get,
                    502,
                    Some(8),
                    Some(ProxyErrorSource::Upstream)
                ),
            ]
        );
        for record in &records {
            assert_eq!(record.service, "api");
            assert_eq!(record.caller.as_deref(), Some("web"));
            assert_eq!(record.protocol, Protocol::Http);
        }
        assert_eq!(records[0].instance.as_deref(), Some("A-7"));
        assert_eq!(records[0].bytes_out, 1);
        let stats = proxy.revision_stats("api");
        assert_eq!((stats[&7].requests, stats[&7].errors), (2, 0));
        assert_eq!((stats[&8].requests, stats[&8].errors), (1, 1));
        assert!(stats[&7].latency.quantile(0.99).is_some());
        assert_eq!(
            proxy.listeners(),
            [(ListenerKey::edge("web", "api"), edge, Protocol::Http)]
        );
    }

    /// A backend that answers each connection's first request and then closes it, without
    /// saying so (as a server with a short keep-alive timeout does), the way `mode` asks:
    /// `length` with a content length, `until-close` with a body that ends at the close.
    async fn one_shot_backend(
        mode: &'static str,
    ) -> (SocketAddr, Arc<AtomicUsize>, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buffer = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buffer[..n]),
                        }
                    }
                    let response: &[u8] = match mode {
                        "length" => b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\none",
                        _ => b"HTTP/1.1 200 OK\r\n\r\nuntil the close",
                    };
                    let _ = stream.write_all(response).await;
                });
            }
        });
        (addr, connections, task)
    }

    #[tokio::test]
    async fn a_backend_closing_idle_connections_costs_no_request() {
        let (proxy, addr, records) = http_proxy(test_config()).await;
        for (mode, body) in [("length", "one"), ("until-close", "until the close")] {
            let (backend, connections, task) = one_shot_backend(mode).await;
            proxy.set_weighted_backends(
                "api",
                vec![Backend {
                    addr: backend,
                    weight: 1,
                    revision: 1,
                    instance: "one-shot".into(),
                }],
            );
            let mut client = Client::connect(addr).await;
            // Each request finds the pooled connection of the one before closed (or closing
            // while it is sent): it is sent again on a fresh one, never answered with 502.
            for i in 0..20 {
                let reply = client.get("/").await;
                assert_eq!(
                    (reply.status, reply.body.as_str()),
                    (StatusCode::OK, body),
                    "request {i} with {mode}"
                );
            }
            assert_eq!(connections.load(Ordering::SeqCst), 20, "{mode}");
            task.abort();
        }
        wait_until("every record", || records.all().len() == 40).await;
        assert!(records.all().iter().all(|r| r.error.is_none()));
    }

    #[tokio::test]
    async fn a_chunked_answer_sent_in_pieces_is_relayed_whole() {
        // A keep-alive backend that sends a chunked body with a chunk extension and a
        // trailer, a few bytes per write, so the proxy sees sizes, data and line ends split.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                stream.set_nodelay(true).unwrap();
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buffer = Vec::new();
                    let mut read = [0u8; 1024];
                    loop {
                        while let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                            buffer.drain(..end + 4);
                            let response: &[u8] =
                                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
                                5;note=x\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: t\r\n\r\n";
                            for piece in response.chunks(3) {
                                stream.write_all(piece).await.unwrap();
                                tokio::task::yield_now().await;
                            }
                        }
                        match stream.read(&mut read).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buffer.extend_from_slice(&read[..n]),
                        }
                    }
                });
            }
        });
        let (proxy, addr, records) = http_proxy(test_config()).await;
        proxy.set_weighted_backends(
            "api",
            vec![Backend {
                addr: backend,
                weight: 1,
                revision: 1,
                instance: "pieces".into(),
            }],
        );
        let mut client = Client::connect(addr).await;
        for _ in 0..5 {
            let reply = client.get("/").await;
            assert_eq!(
                (reply.status, reply.body.as_str()),
                (StatusCode::OK, "hello world")
            );
        }
        // The body ended cleanly each time, so one backend connection served them all.
        assert_eq!(connections.load(Ordering::SeqCst), 1);
        wait_until("every record", || records.all().len() == 5).await;
        assert!(
            records
                .all()
                .iter()
                .all(|r| r.bytes_out == 11 && r.error.is_none())
        );
        task.abort();
    }

    #[tokio::test]
    async fn forwarding_headers_are_set() {
        let a = HttpBackend::start("A").await;
        let (proxy, addr, _) = http_proxy(test_config()).await;
        proxy.set_weighted_backends("api", vec![a.weighted(1, 1)]);
        let mut client = Client::connect(addr).await;
        assert_eq!(
            client.get("/headers").await.body,
            "x-forwarded-for: 127.0.0.1\nx-forwarded-proto: http\nx-forwarded-host: api.test\nhost: api.test\n"
        );
        let mut request = get("/headers");
        request
            .headers_mut()
            .insert("x-forwarded-for", HeaderValue::from_static("10.1.2.3"));
        assert!(
            client
                .request(request)
                .await
                .body
                .starts_with("x-forwarded-for: 10.1.2.3, 127.0.0.1\n")
        );
    }

    #[tokio::test]
    async fn a_tcp_connection_is_recorded_with_status_zero() {
        let backend = super::EchoBackend::start("A").await;
        let records = Arc::new(Records::default());
        let proxy = Proxy::with_config(test_config(), records.clone());
        let addr = proxy
            .listen_on(ListenerKey::public("db"), any_port(), Protocol::Tcp)
            .await
            .unwrap();
        proxy.set_weighted_backends(
            "db",
            vec![Backend {
                addr: backend.addr,
                weight: 1,
                revision: 4,
                instance: "db-4".into(),
            }],
        );
        let (mut stream, name) = super::connect(addr).await;
        assert_eq!(name, "A");
        super::assert_echoes(&mut stream, "ping").await;
        assert_eq!(proxy.in_flight("db", backend.addr), 1);
        drop(stream);
        wait_until("the record", || records.all().len() == 1).await;
        let record = &records.all()[0];
        assert_eq!(
            (
                record.status,
                record.protocol,
                record.revision,
                record.bytes_in
            ),
            (0, Protocol::Tcp, Some(4), 4)
        );
        assert!(proxy.drain("db", &[backend.addr], DEADLINE).await);
    }

    // === per-service limits ===

    /// A chunked upload of `pieces` × 400 bytes to `/upload`.
    fn streamed_upload(pieces: usize) -> Request<TestBody> {
        let frames = futures_util::stream::iter(
            (0..pieces).map(|_| Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b'x'; 400])))),
        );
        Request::post("/upload")
            .header("host", "api.test")
            .body(StreamBody::new(frames).boxed_unsync())
            .unwrap()
    }

    fn limits(change: impl FnOnce(&mut ServiceLimits)) -> ServiceLimits {
        let mut limits = ServiceLimits::default();
        change(&mut limits);
        limits
    }

    #[tokio::test]
    async fn each_service_has_its_own_response_timeout() {
        let (a, r) = (HttpBackend::start("A").await, HttpBackend::start("R").await);
        let (proxy, api_addr, _) = http_proxy(test_config()).await;
        let reports_addr = proxy
            .listen_on(ListenerKey::public("reports"), any_port(), Protocol::Http)
            .await
            .unwrap();
        proxy.set_weighted_backends("api", vec![a.weighted(1, 1)]);
        proxy.set_weighted_backends("reports", vec![r.weighted(1, 1)]);
        proxy.set_service_limits(
            "reports",
            limits(|l| l.response_timeout = Duration::from_millis(300)),
        );
        assert_eq!(
            proxy.service_limits("api").response_timeout,
            Duration::from_secs(60)
        );

        // Held by api's backend from before reports' request until after its 504.
        let mut api_client = Client::connect(api_addr).await;
        let held = tokio::spawn(async move { api_client.get("/wait").await });
        wait_until("the held request to reach A", || {
            proxy.in_flight("api", a.addr) == 1
        })
        .await;

        let reply = Client::connect(reports_addr).await.get("/wait").await;
        assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(
            reply.body,
            format!(
                "backend {} of service 'reports' did not answer within 300ms\n",
                r.addr
            )
        );
        assert!(!held.is_finished(), "api has the default response timeout");
        a.open_gate(1);
        let reply = within("the held request", held).await.unwrap();
        assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "A"));
    }

    #[tokio::test]
    async fn a_service_body_limit_refuses_a_streamed_upload_over_it_and_passes_one_under_it() {
        let (a, r) = (HttpBackend::start("A").await, HttpBackend::start("R").await);
        let (proxy, api_addr, _) = http_proxy(test_config()).await;
        let reports_addr = proxy
            .listen_on(ListenerKey::public("reports"), any_port(), Protocol::Http)
            .await
            .unwrap();
        proxy.set_weighted_backends("api", vec![a.weighted(1, 1)]);
        proxy.set_weighted_backends("reports", vec![r.weighted(1, 1)]);
        proxy.set_service_limits(
            "reports",
            limits(|l| {
                l.max_body_bytes = Some(1000);
                l.max_header_bytes = 4096;
            }),
        );

        let reply = Client::connect(reports_addr)
            .await
            .request(streamed_upload(4))
            .await;
        assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(reply.proxy_error(), "body-too-large");
        assert_eq!(
            reply.body,
            "the request body exceeds the proxy's limit of 1000 bytes\n"
        );
        let reply = Client::connect(reports_addr)
            .await
            .request(streamed_upload(2))
            .await;
        assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "800"));

        let big_head = || {
            Request::get("/")
                .header("host", "api.test")
                .header("x-big", "b".repeat(5000))
                .body(empty())
                .unwrap()
        };
        let reply = Client::connect(reports_addr)
            .await
            .request(big_head())
            .await;
        assert_eq!(reply.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);

        // The other service keeps the defaults: no body limit, 64 KiB heads.
        let reply = Client::connect(api_addr)
            .await
            .request(streamed_upload(4))
            .await;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (StatusCode::OK, "1600")
        );
        let reply = Client::connect(api_addr).await.request(big_head()).await;
        assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "A"));
    }

    #[tokio::test]
    async fn a_changed_limit_applies_to_the_next_request_on_an_open_connection() {
        let a = HttpBackend::start("A").await;
        let (proxy, addr, _) = http_proxy(test_config()).await;
        proxy.set_weighted_backends("api", vec![a.weighted(1, 1)]);
        let mut client = Client::connect(addr).await;
        assert_eq!(client.get("/").await.body, "A");

        proxy.set_service_limits(
            "api",
            limits(|l| l.response_timeout = Duration::from_millis(300)),
        );
        let reply = client.get("/wait").await;
        assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);

        proxy.set_service_limits("api", ServiceLimits::default());
        let reply = client.request(streamed_upload(4)).await;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (StatusCode::OK, "1600")
        );

        proxy.set_service_limits("api", limits(|l| l.max_body_bytes = Some(1000)));
        let reply = client.request(streamed_upload(4)).await;
        assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);

        // One client connection throughout.
        assert_eq!(proxy.stats("api").accepted, 1);
    }

    #[tokio::test]
    async fn edge_listeners_get_the_service_limits() {
        let a = HttpBackend::start("A").await;
        let (proxy, public_addr, _) = http_proxy(test_config()).await;
        let edge_addr = proxy
            .listen_on(ListenerKey::edge("web", "api"), any_port(), Protocol::Http)
            .await
            .unwrap();
        proxy.set_weighted_backends("api", vec![a.weighted(1, 1)]);
        proxy.set_service_limits(
            "api",
            limits(|l| {
                l.response_timeout = Duration::from_millis(300);
                l.max_body_bytes = Some(1000);
            }),
        );
        for addr in [public_addr, edge_addr] {
            let reply = Client::connect(addr).await.get("/wait").await;
            assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT, "{addr}");
            let reply = Client::connect(addr)
                .await
                .request(streamed_upload(4))
                .await;
            assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE, "{addr}");
        }
    }

    #[tokio::test]
    async fn a_service_header_timeout_cuts_its_idle_clients_off() {
        let a = HttpBackend::start("A").await;
        let (proxy, addr, _) = http_proxy(test_config()).await;
        proxy.set_weighted_backends("api", vec![a.weighted(1, 1)]);
        proxy.set_service_limits(
            "api",
            limits(|l| l.header_read_timeout = Duration::from_millis(300)),
        );
        let mut idle = TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET / HTTP/1.1\r\nHost: api.test\r\n\r\n")
            .await
            .unwrap();
        let mut answered = Vec::new();
        within(
            "the proxy to close the idle connection",
            idle.read_to_end(&mut answered),
        )
        .await
        .unwrap();
        assert!(answered.starts_with(b"HTTP/1.1 200"), "{answered:?}");
    }
}
