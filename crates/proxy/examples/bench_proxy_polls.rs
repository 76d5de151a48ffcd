//! The benchmark's tandem side with the runtime's poll times recorded: the same proxy as
//! `bench_proxy`, on a single-threaded runtime with tokio's poll-time histogram on, printing
//! every `INTERVAL` seconds how long each task poll took (10 µs buckets) and how often the
//! runtime parked. It tells a proxy that stalls (long polls hold every other connection up)
//! from one whose latency is queueing behind the other connections' work.
//!
//! tokio only has these metrics when built with `RUSTFLAGS="--cfg tokio_unstable"`
//! (`MODE=polls bench/proxy.sh` does that in a target directory of its own).
//!
//! Usage: `bench_proxy_polls LISTEN_ADDR BACKEND_ADDR [INTERVAL]`

#[cfg(tokio_unstable)]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::Duration;
    use tandem_proxy::{Backend, ListenerKey, NoMetrics, Protocol, Proxy, ProxyConfig};
    use tokio::runtime::HistogramConfiguration;

    const BUCKET: Duration = Duration::from_micros(10);
    const BUCKETS: usize = 50;

    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(backend)) = (args.next(), args.next()) else {
        eprintln!("usage: bench_proxy_polls LISTEN_ADDR BACKEND_ADDR [INTERVAL]");
        std::process::exit(2);
    };
    let listen: SocketAddr = listen.parse()?;
    let backend: SocketAddr = backend.parse()?;
    let interval = Duration::from_secs(args.next().map_or(Ok(10), |text| text.parse())?);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .enable_metrics_poll_time_histogram()
        .metrics_poll_time_histogram_configuration(HistogramConfiguration::linear(BUCKET, BUCKETS))
        .build()?;
    let handle = runtime.handle().clone();
    runtime.block_on(async move {
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
        eprintln!("tandem proxy (poll times recorded) on {bound} -> {backend}");
        let metrics = handle.metrics();
        let mut last = vec![0u64; BUCKETS];
        let (mut last_polls, mut last_parks) = (0, 0);
        loop {
            tokio::time::sleep(interval).await;
            let polls = metrics.worker_poll_count(0);
            let parks = metrics.worker_park_count(0);
            let mut counts = Vec::with_capacity(BUCKETS);
            for (bucket, last) in last.iter_mut().enumerate() {
                let count = metrics.poll_time_histogram_bucket_count(0, bucket);
                counts.push(count - *last);
                *last = count;
            }
            let longest = counts.iter().rposition(|&count| count > 0);
            let buckets: Vec<String> = counts
                .iter()
                .enumerate()
                .take(longest.map_or(0, |last| last + 1))
                .map(|(bucket, count)| {
                    let start = metrics.poll_time_histogram_bucket_range(bucket).start;
                    format!("{}us:{count}", start.as_micros())
                })
                .collect();
            println!(
                "polls {} parks {} | poll time from: {}",
                polls - last_polls,
                parks - last_parks,
                buckets.join(" ")
            );
            (last_polls, last_parks) = (polls, parks);
        }
    })
}

#[cfg(not(tokio_unstable))]
fn main() {
    eprintln!(
        "bench_proxy_polls needs tokio's unstable metrics: build it with \
         RUSTFLAGS=\"--cfg tokio_unstable\" (MODE=polls bench/proxy.sh does)"
    );
    std::process::exit(2);
}
