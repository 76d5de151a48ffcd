//! The benchmark's tandem side: one [`Proxy`] serving one public port in HTTP mode in front
//! of one backend, on a single-threaded runtime (one core, like nginx with one worker).
//!
//! Usage: `bench_proxy LISTEN_ADDR BACKEND_ADDR`

use std::net::SocketAddr;
use std::sync::Arc;
use tandem_proxy::{Backend, ListenerKey, NoMetrics, Protocol, Proxy, ProxyConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(backend)) = (args.next(), args.next()) else {
        eprintln!("usage: bench_proxy LISTEN_ADDR BACKEND_ADDR");
        std::process::exit(2);
    };
    let listen: SocketAddr = listen.parse()?;
    let backend: SocketAddr = backend.parse()?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let proxy = Proxy::with_config(ProxyConfig::default(), Arc::new(NoMetrics));
            let bound = proxy
                .listen_on(ListenerKey::public("bench"), listen, Protocol::Http)
                .await?;
            proxy.set_weighted_backends(
                "bench",
                vec![Backend {
                    addr: backend,
                    weight: 1,
                    revision: 1,
                    instance: "bench-1".to_string(),
                }],
            );
            eprintln!("tandem proxy on {bound} -> {backend}");
            std::future::pending::<()>().await;
            Ok(())
        })
}
