//! Queries, ingestion and memory: tandem against a real Prometheus on the same samples, in
//! one run (driven by `bench/query.sh`, which installs Prometheus and builds `tandem`).
//!
//! 1. Generates the series of `tsdb_bench` (`tandem_tsdb::synth`: 23 series per instance at
//!    1 s), ending now, and writes them into a tandem store with one `append_batch` per
//!    second, as the server's collectors do; then times the queries in process
//!    (`Engine::{instant, range}` over the `Db`, no HTTP) for reference.
//! 2. Starts Prometheus with the remote-write receiver and an empty scrape config, and
//!    sends it the same samples, one remote-write request (protobuf + snappy) per second of
//!    data, one request at a time.
//! 3. Starts `tandem serve` on the store written in 1 (its data directory's `tsdb`).
//! 4. Runs each query through both HTTP APIs (`/api/v1/query` at the end of the data,
//!    `/api/v1/query_range` over its last hour, step 15 s), warm-ups first, then the two
//!    servers alternately; prints medians and ratios, and checks that the answers agree
//!    (same series, same timestamps, values within 1e-6 relative).
//! 5. Reads each server's resident memory (VmRSS), after loading, after the queries, and
//!    for Prometheus after a restart too (its WAL replayed, as tandem's was).
//!
//! Evaluation times sit half a second off the samples' grid: Prometheus 2.42's range
//! windows are closed on the left and tandem's (Prometheus 3's) are open, so a sample
//! exactly on the window's start would be counted by one and not the other.
//!
//! Usage: query_bench --tandem BIN --work DIR [--prometheus BIN] [--instances N]
//!        [--hours H] [--jitter MS] [--runs N] [--warmup N] [--in-process-only 1]
//!
//! `--in-process-only 1` stops after the in-process timings (no Prometheus, no servers;
//! `--tandem` is still required but not run): a quick loop while working on the engine.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tandem_promql::{Engine, Value};
use tandem_tsdb::synth::{Generator, Shape};
use tandem_tsdb::{Db, DbOptions, Labels, Sample};

const BUCKETS: [&str; 12] = [
    "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf",
];

/// The queries, by what they exercise.
const QUERIES: [(&str, &str); 5] = [
    ("rate", "rate(tandem_http_requests_total[5m])"),
    (
        "sum by rate",
        "sum by (service) (rate(tandem_http_requests_total[5m]))",
    ),
    (
        "histogram_quantile",
        "histogram_quantile(0.99, sum by (le, service) (rate(tandem_http_request_duration_seconds_bucket[5m])))",
    ),
    (
        "predict_linear 1h",
        "predict_linear(tandem_process_resident_memory_bytes[1h], 3600)",
    ),
    ("avg_over_time", "avg_over_time(app_cpu_percent[5m])"),
];
const STEP_MS: i64 = 15_000;
const HOUR_MS: i64 = 3_600_000;

struct Args {
    instances: usize,
    hours: i64,
    jitter: i64,
    runs: usize,
    warmup: usize,
    work: PathBuf,
    tandem: PathBuf,
    prometheus: PathBuf,
    /// Stop after the in-process timings (no servers): for quick iterations on the engine.
    in_process_only: bool,
}

fn parse_args() -> Args {
    let mut a = Args {
        instances: 50,
        hours: 3,
        jitter: 0,
        runs: 20,
        warmup: 3,
        work: PathBuf::new(),
        tandem: PathBuf::new(),
        prometheus: PathBuf::from("prometheus"),
        in_process_only: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let val = it.next().unwrap_or_default();
        match flag.as_str() {
            "--instances" => a.instances = val.parse().expect("--instances N"),
            "--hours" => a.hours = val.parse().expect("--hours H"),
            "--jitter" => a.jitter = val.parse().expect("--jitter MS"),
            "--runs" => a.runs = val.parse().expect("--runs N"),
            "--warmup" => a.warmup = val.parse().expect("--warmup N"),
            "--work" => a.work = val.into(),
            "--tandem" => a.tandem = val.into(),
            "--prometheus" => a.prometheus = val.into(),
            "--in-process-only" => a.in_process_only = val == "1",
            other => {
                eprintln!("unknown flag '{other}'; see the comment atop query_bench.rs");
                std::process::exit(2);
            }
        }
    }
    if a.work.as_os_str().is_empty() || a.tandem.as_os_str().is_empty() {
        eprintln!("error: --work DIR and --tandem BIN are required\n  hint: run bench/query.sh");
        std::process::exit(2);
    }
    a
}

/// The series one instance produces: (labels, shape, variant). The same as
/// `crates/tsdb/examples/tsdb_bench.rs`, so both benchmarks see the same samples.
fn instance_series(i: usize) -> Vec<(Labels, Shape, u64)> {
    let service = format!("svc{}", i % 10);
    let instance = format!("{service}-{i}");
    let base = |name: &str, extra: &[(&str, &str)]| {
        let mut pairs: Vec<(&str, &str)> = vec![
            ("__name__", name),
            ("env", "prod"),
            ("service", &service),
            ("instance", &instance),
            ("revision", "42"),
        ];
        pairs.extend_from_slice(extra);
        Labels::new(pairs)
    };
    let v = i as u64 * 100;
    let mut out = vec![
        (base("tandem_up", &[]), Shape::Constant, v),
        (
            base("tandem_memory_limit_bytes", &[]),
            Shape::Constant,
            v + 1,
        ),
        (base("tandem_cpu_limit", &[]), Shape::Constant, v + 2),
        (
            base("tandem_process_cpu_seconds_total", &[]),
            Shape::CpuSeconds,
            v,
        ),
        (
            base("tandem_process_resident_memory_bytes", &[]),
            Shape::MemoryBytes,
            v,
        ),
        (base("app_cpu_percent", &[]), Shape::Gauge3Digits, v),
        (
            base("tandem_http_requests_total", &[("code", "2xx")]),
            Shape::Counter,
            v,
        ),
        (
            base("tandem_http_requests_total", &[("code", "4xx")]),
            Shape::Counter,
            v + 1,
        ),
        (
            base("tandem_http_requests_total", &[("code", "5xx")]),
            Shape::Counter,
            v + 2,
        ),
        (
            base("tandem_http_request_duration_seconds_count", &[]),
            Shape::Counter,
            v + 3,
        ),
        (
            base("tandem_http_request_duration_seconds_sum", &[]),
            Shape::CpuSeconds,
            v + 1,
        ),
    ];
    for (b, le) in BUCKETS.iter().enumerate() {
        out.push((
            base("tandem_http_request_duration_seconds_bucket", &[("le", le)]),
            Shape::HistogramBucket,
            v + b as u64,
        ));
    }
    out
}

// === remote write ===

/// Remote write 1.0's messages (prometheus/prompb), by hand: there is no protoc here. The
/// server's own encoder (`crates/server/src/remote_write.rs`) is private to that crate.
mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct WriteRequest {
        #[prost(message, repeated, tag = "1")]
        pub(crate) timeseries: Vec<TimeSeries>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct TimeSeries {
        #[prost(message, repeated, tag = "1")]
        pub(crate) labels: Vec<Label>,
        #[prost(message, repeated, tag = "2")]
        pub(crate) samples: Vec<Sample>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct Label {
        #[prost(string, tag = "1")]
        pub(crate) name: String,
        #[prost(string, tag = "2")]
        pub(crate) value: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct Sample {
        #[prost(double, tag = "1")]
        pub(crate) value: f64,
        #[prost(int64, tag = "2")]
        pub(crate) timestamp: i64,
    }
}

/// One second of every series (one sample each), as a remote-write body.
fn encode(batch: &[(Labels, Sample)]) -> Vec<u8> {
    use prost::Message;
    let request = proto::WriteRequest {
        timeseries: batch
            .iter()
            .map(|(labels, s)| proto::TimeSeries {
                labels: labels
                    .iter()
                    .map(|(name, value)| proto::Label {
                        name: name.to_string(),
                        value: value.to_string(),
                    })
                    .collect(),
                samples: vec![proto::Sample {
                    value: s.v,
                    timestamp: s.t,
                }],
            })
            .collect(),
    };
    snap::raw::Encoder::new()
        .compress_vec(&request.encode_to_vec())
        .expect("snappy-compress a remote-write body")
}

// === a small HTTP/1.1 client ===

/// A keep-alive connection, blocking: the same few microseconds of client cost for both
/// servers, and none of a client library's pooling or decompression in the timings.
struct Http {
    port: u16,
    conn: Option<BufReader<TcpStream>>,
}

impl Http {
    fn new(port: u16) -> Http {
        Http { port, conn: None }
    }

    fn request(&mut self, method: &str, path: &str, extra: &str, body: &[u8]) -> (u16, Vec<u8>) {
        // A server may close an idle keep-alive connection: one retry on a fresh one.
        match self.try_request(method, path, extra, body) {
            Ok(r) => r,
            Err(_) => {
                self.conn = None;
                self.try_request(method, path, extra, body)
                    .unwrap_or_else(|e| panic!("{method} 127.0.0.1:{}{path}: {e}", self.port))
            }
        }
    }

    fn try_request(
        &mut self,
        method: &str,
        path: &str,
        extra: &str,
        body: &[u8],
    ) -> std::io::Result<(u16, Vec<u8>)> {
        if self.conn.is_none() {
            let s = TcpStream::connect(("127.0.0.1", self.port))?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(120)))?;
            self.conn = Some(BufReader::with_capacity(1 << 16, s));
        }
        let conn = self.conn.as_mut().expect("connected above");
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\n{extra}\r\n",
            self.port,
            body.len()
        )
        .into_bytes();
        head.extend_from_slice(body);
        conn.get_mut().write_all(&head)?;

        let mut line = String::new();
        conn.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let mut length: Option<usize> = None;
        let mut chunked = false;
        let mut close = false;
        loop {
            line.clear();
            conn.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').unwrap_or((l, ""));
            let (k, v) = (k.to_ascii_lowercase(), v.trim());
            match k.as_str() {
                "content-length" => length = v.parse().ok(),
                "transfer-encoding" => chunked = v.eq_ignore_ascii_case("chunked"),
                "connection" => close = v.eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
        let mut out = Vec::new();
        if chunked {
            loop {
                line.clear();
                conn.read_line(&mut line)?;
                let size =
                    usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                        .map_err(|_| std::io::Error::other(format!("bad chunk size {line:?}")))?;
                let at = out.len();
                out.resize(at + size, 0);
                conn.read_exact(&mut out[at..])?;
                line.clear();
                conn.read_line(&mut line)?;
                if size == 0 {
                    break;
                }
            }
        } else if let Some(n) = length {
            out.resize(n, 0);
            conn.read_exact(&mut out)?;
        } else if status != 204 && status != 304 {
            conn.read_to_end(&mut out)?;
            close = true;
        }
        if close {
            self.conn = None;
        }
        Ok((status, out))
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn secs(ms: i64) -> String {
    format!("{}.{:03}", ms.div_euclid(1000), ms.rem_euclid(1000))
}

// === servers ===

/// A server we started: killed and waited for when dropped.
struct Server {
    name: &'static str,
    child: Child,
    port: u16,
}

impl Server {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Polls `path` until it answers 200; the server must not exit meanwhile.
    fn wait_ready(&mut self, path: &str, deadline: Duration) -> Duration {
        let t0 = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited before it was ready ({status}); see its log in the work directory",
                    self.name
                );
            }
            let mut c = Http::new(self.port);
            if let Ok((200, _)) = c.try_request("GET", path, "", b"") {
                return t0.elapsed();
            }
            assert!(
                t0.elapsed() < deadline,
                "{} not ready after {deadline:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then waits for the process to end (a clean shutdown).
    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn start_prometheus(bin: &Path, work: &Path, port: u16) -> Server {
    let config = work.join("prometheus.yml");
    std::fs::write(&config, "scrape_configs: []\n").expect("write prometheus.yml");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(work.join("prometheus.log"))
        .expect("open prometheus.log");
    let child = Command::new(bin)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            work.join("prometheus").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--web.enable-remote-write-receiver")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start '{}': {e}", bin.display()));
    Server {
        name: "prometheus",
        child,
        port,
    }
}

fn start_tandem(bin: &Path, work: &Path, port: u16) -> Server {
    // No services: the server only serves the store (its collectors add a few host series,
    // stamped now, after the data's end).
    let file = work.join("tandem.toml");
    std::fs::write(&file, "").expect("write tandem.toml");
    let log = std::fs::File::create(work.join("tandem.log")).expect("create tandem.log");
    let child = Command::new(bin)
        .arg("serve")
        .arg("-f")
        .arg(&file)
        .arg("--data-dir")
        .arg(work.join("tandem"))
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start '{}': {e}", bin.display()));
    Server {
        name: "tandem",
        child,
        port,
    }
}

/// VmRSS of `pid`, in MB.
fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb * 1024.0 / 1e6)
        .unwrap_or(f64::NAN)
}

/// User plus system CPU seconds `pid` has used (all its threads).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of stat; clock ticks are 1/100 s on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn fmt_d(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else if us < 1e6 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

// === answers ===

/// An answer reduced to what must agree: series (labels) to points (ms, value).
type Answer = BTreeMap<String, Vec<(i64, f64)>>;

fn answer(body: &[u8]) -> Result<Answer, String> {
    let v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| format!("not JSON ({e}): {}", String::from_utf8_lossy(body)))?;
    if v["status"] != "success" {
        return Err(format!("query failed: {v}"));
    }
    let point = |p: &serde_json::Value| -> (i64, f64) {
        let t = (p[0].as_f64().unwrap_or(f64::NAN) * 1000.0).round() as i64;
        let s = p[1].as_str().unwrap_or("");
        let v = match s {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            _ => s.parse().unwrap_or(f64::NAN),
        };
        (t, v)
    };
    let mut out = Answer::new();
    for s in v["data"]["result"].as_array().cloned().unwrap_or_default() {
        let labels: BTreeMap<String, String> = s["metric"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let key = format!("{labels:?}");
        let points = if let Some(values) = s["values"].as_array() {
            values.iter().map(point).collect()
        } else {
            vec![point(&s["value"])]
        };
        out.insert(key, points);
    }
    Ok(out)
}

/// Where two answers differ (at most a few lines), or nothing.
fn differences(t: &Answer, p: &Answer) -> Vec<String> {
    let mut out = Vec::new();
    for k in t.keys().filter(|k| !p.contains_key(*k)) {
        out.push(format!("only tandem has {k}"));
    }
    for k in p.keys().filter(|k| !t.contains_key(*k)) {
        out.push(format!("only Prometheus has {k}"));
    }
    for (k, tp) in t {
        let Some(pp) = p.get(k) else { continue };
        if tp.len() != pp.len() {
            out.push(format!(
                "{k}: {} points in tandem, {} in Prometheus",
                tp.len(),
                pp.len()
            ));
            continue;
        }
        for ((tt, tv), (pt, pv)) in tp.iter().zip(pp) {
            let same = tv == pv
                || (tv.is_nan() && pv.is_nan())
                || (tv - pv).abs() <= 1e-6 * tv.abs().max(pv.abs()).max(1e-12);
            if tt != pt || !same {
                out.push(format!("{k} at {tt}/{pt}: tandem {tv}, Prometheus {pv}"));
                break;
            }
        }
    }
    out.truncate(6);
    out
}

// === the run ===

struct Row {
    name: &'static str,
    kind: &'static str,
    series: usize,
    points: usize,
    tandem: Duration,
    prometheus: Duration,
    in_process: Duration,
    agree: bool,
}

fn main() {
    let args = parse_args();
    std::fs::create_dir_all(&args.work).expect("create the work directory");
    let series: Vec<(Labels, Shape, u64)> = (0..args.instances).flat_map(instance_series).collect();
    // Two extra minutes so that the head spans 1.5 blocks and the first block is cut, in
    // both stores (Prometheus cuts by the same rule).
    let seconds = args.hours * 3600 + 120;
    let total = series.len() as u64 * seconds as u64;
    // The data ends now: the tandem server's collectors append host samples stamped now, and
    // its retention (15 d) counts back from the newest sample.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let start = (now / 1000 - seconds) * 1000;
    let last = start + (seconds - 1) * 1000;
    let at = last - 500;
    println!(
        "query bench: {} instances, {} series, {} h at 1 s, jitter ±{} ms: {} samples",
        args.instances,
        series.len(),
        args.hours,
        args.jitter,
        total
    );
    let generators = || -> Vec<Generator> {
        series
            .iter()
            .map(|(_, shape, v)| Generator::new(*shape, *v, start, 1000, args.jitter))
            .collect()
    };
    let mut batch: Vec<(Labels, Sample)> = series
        .iter()
        .map(|(l, _, _)| (l.clone(), Sample { t: 0, v: 0.0 }))
        .collect();

    // 1. tandem: the collectors' path, in process.
    let store = args.work.join("tandem").join("tsdb");
    let _ = std::fs::remove_dir_all(args.work.join("tandem"));
    let db = Db::open(&store, DbOptions::default()).expect("open the store");
    // Generation alone first, so that its CPU time can be taken out of the loop below.
    let mut gens = generators();
    let cpu0 = cpu_seconds(std::process::id());
    for _ in 0..seconds {
        for (slot, g) in batch.iter_mut().zip(&mut gens) {
            slot.1 = g.next_sample();
        }
        std::hint::black_box(&batch);
    }
    let generation_cpu = cpu_seconds(std::process::id()) - cpu0;
    let mut gens = generators();
    let mut tandem_busy = Duration::ZERO;
    let cpu0 = cpu_seconds(std::process::id());
    for _ in 0..seconds {
        for (slot, g) in batch.iter_mut().zip(&mut gens) {
            slot.1 = g.next_sample();
        }
        let t0 = Instant::now();
        let s = db.append_batch(&batch).expect("append");
        tandem_busy += t0.elapsed();
        assert!(s.rejected.is_empty(), "{:?}", s.rejected.first());
    }
    let tandem_cpu = cpu_seconds(std::process::id()) - cpu0 - generation_cpu;
    let tandem_ingest_rss = rss_mb(std::process::id());
    println!(
        "tandem: {total} samples in {:.2} s of append_batch ({:.2} M samples/s); process CPU {tandem_cpu:.1} s (generation, {generation_cpu:.1} s, left out); VmRSS {tandem_ingest_rss:.0} MB",
        tandem_busy.as_secs_f64(),
        total as f64 / tandem_busy.as_secs_f64() / 1e6
    );

    // The same queries in process, without HTTP and JSON: where tandem's time goes.
    let engine = Engine::default();
    let mut in_process: BTreeMap<(&str, &str), Duration> = BTreeMap::new();
    for (name, q) in QUERIES {
        for kind in ["instant", "range"] {
            let mut times = Vec::new();
            for i in 0..args.warmup + args.runs {
                let t0 = Instant::now();
                let v = match kind {
                    "instant" => engine.instant(&db, q, at),
                    _ => engine.range(&db, q, at - HOUR_MS, at, STEP_MS),
                }
                .unwrap_or_else(|e| panic!("tandem in process, {q}: {e}"));
                let d = t0.elapsed();
                assert!(!matches!(v, Value::String(_)));
                if i >= args.warmup {
                    times.push(d);
                }
            }
            in_process.insert((name, kind), median(times));
        }
    }
    if args.in_process_only {
        for ((name, kind), d) in &in_process {
            println!("in process: {name} {kind}: {}", fmt_d(*d));
        }
        return;
    }
    db.close().expect("close the store");
    // Opening the store again replays its WAL, as `tandem serve` will: what that costs in
    // memory, apart from the server around it.
    let before = rss_mb(std::process::id());
    let t0 = Instant::now();
    let db = Db::open(&store, DbOptions::default()).expect("reopen the store");
    let reopen = t0.elapsed();
    let reopen_rss = rss_mb(std::process::id());
    println!(
        "tandem: store reopened in process in {} ({} samples in the head): VmRSS {before:.0} MB before, {reopen_rss:.0} MB after",
        fmt_d(reopen),
        db.stats().head_samples
    );
    db.close().expect("close the store");

    // 2. Prometheus: remote write, one request per second of data, one at a time.
    let prom_port = free_port();
    let mut prom = start_prometheus(&args.prometheus, &args.work, prom_port);
    let ready = prom.wait_ready("/-/ready", Duration::from_secs(60));
    println!("prometheus: ready in {}", fmt_d(ready));
    let mut gens = generators();
    let mut client = Http::new(prom_port);
    let mut prom_busy = Duration::ZERO;
    let mut encode_time = Duration::ZERO;
    let mut body_bytes = 0usize;
    let pcpu0 = cpu_seconds(prom.pid());
    for _ in 0..seconds {
        for (slot, g) in batch.iter_mut().zip(&mut gens) {
            slot.1 = g.next_sample();
        }
        let t0 = Instant::now();
        let body = encode(&batch);
        encode_time += t0.elapsed();
        body_bytes += body.len();
        let t0 = Instant::now();
        let (status, reply) = client.request(
            "POST",
            "/api/v1/write",
            "Content-Type: application/x-protobuf\r\nContent-Encoding: snappy\r\nX-Prometheus-Remote-Write-Version: 0.1.0\r\n",
            &body,
        );
        prom_busy += t0.elapsed();
        assert!(
            status / 100 == 2,
            "Prometheus refused a remote write: {status} {}",
            String::from_utf8_lossy(&reply)
        );
    }
    let prom_cpu = cpu_seconds(prom.pid()) - pcpu0;
    let prom_ingest_rss = rss_mb(prom.pid());
    println!(
        "prometheus: {total} samples in {:.2} s of remote-write requests ({:.2} M samples/s; {:.1} KB a request, encoding {:.2} s not counted); server CPU {prom_cpu:.1} s; VmRSS {prom_ingest_rss:.0} MB",
        prom_busy.as_secs_f64(),
        total as f64 / prom_busy.as_secs_f64() / 1e6,
        body_bytes as f64 / seconds as f64 / 1e3,
        encode_time.as_secs_f64()
    );

    // 3. tandem's server on the store written above.
    let tandem_port = free_port();
    let mut tandem = start_tandem(&args.tandem, &args.work, tandem_port);
    let ready = tandem.wait_ready("/api/v1/query?query=1", Duration::from_secs(120));
    let tandem_open_rss = rss_mb(tandem.pid());
    println!(
        "tandem serve: ready in {} (WAL replayed); VmRSS {tandem_open_rss:.0} MB",
        fmt_d(ready)
    );

    // 4. Queries through both HTTP APIs.
    let mut tc = Http::new(tandem_port);
    let mut pc = Http::new(prom_port);
    let mut rows = Vec::new();
    let mut mismatches = Vec::new();
    for (name, q) in QUERIES {
        for kind in ["instant", "range"] {
            let path = match kind {
                "instant" => format!("/api/v1/query?query={}&time={}", url_encode(q), secs(at)),
                _ => format!(
                    "/api/v1/query_range?query={}&start={}&end={}&step={}",
                    url_encode(q),
                    secs(at - HOUR_MS),
                    secs(at),
                    STEP_MS / 1000
                ),
            };
            let (mut tt, mut pt) = (Vec::new(), Vec::new());
            let (mut tbody, mut pbody) = (Vec::new(), Vec::new());
            for i in 0..args.warmup + args.runs {
                // Alternate which goes first, so neither always runs on a warmer machine.
                let order: [bool; 2] = if i % 2 == 0 {
                    [true, false]
                } else {
                    [false, true]
                };
                for is_tandem in order {
                    let c = if is_tandem { &mut tc } else { &mut pc };
                    let t0 = Instant::now();
                    let (status, body) = c.request("GET", &path, "", b"");
                    let d = t0.elapsed();
                    let who = if is_tandem { "tandem" } else { "prometheus" };
                    assert_eq!(
                        status,
                        200,
                        "{who}: {q}: {}",
                        String::from_utf8_lossy(&body)
                    );
                    if i >= args.warmup {
                        if is_tandem { tt.push(d) } else { pt.push(d) }
                    }
                    if is_tandem {
                        tbody = body
                    } else {
                        pbody = body
                    }
                }
            }
            let ta = answer(&tbody).unwrap_or_else(|e| panic!("tandem: {q}: {e}"));
            let pa = answer(&pbody).unwrap_or_else(|e| panic!("prometheus: {q}: {e}"));
            let diff = differences(&ta, &pa);
            if !diff.is_empty() {
                mismatches.push((name, kind, diff));
            }
            rows.push(Row {
                name,
                kind,
                series: pa.len(),
                points: pa.values().map(Vec::len).sum(),
                tandem: median(tt),
                prometheus: median(pt),
                in_process: in_process[&(name, kind)],
                agree: !mismatches.iter().any(|(n, k, _)| *n == name && *k == kind),
            });
        }
    }
    let tandem_query_rss = rss_mb(tandem.pid());
    let prom_query_rss = rss_mb(prom.pid());

    // 5. Prometheus after a restart: its WAL replayed, as tandem's was.
    prom.stop();
    let mut prom = start_prometheus(&args.prometheus, &args.work, prom_port);
    let replay = prom.wait_ready("/-/ready", Duration::from_secs(300));
    let prom_restart_rss = rss_mb(prom.pid());
    drop(prom);
    tandem.stop();

    // Summary.
    println!();
    println!(
        "Queries: median of {} after {} warm-ups, at the data's end (instant) and over its last hour at 15 s (range, 241 steps)",
        args.runs, args.warmup
    );
    println!(
        "| query | kind | series × points | tandem | Prometheus | tandem / Prometheus | tandem in process | answers |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} × {} | {} | {} | {:.2}x | {} | {} |",
            r.name,
            r.kind,
            r.series,
            r.points / r.series.max(1),
            fmt_d(r.tandem),
            fmt_d(r.prometheus),
            r.tandem.as_secs_f64() / r.prometheus.as_secs_f64(),
            fmt_d(r.in_process),
            if r.agree { "agree" } else { "DIFFER" }
        );
    }
    println!();
    let t_rate = total as f64 / tandem_busy.as_secs_f64();
    let p_rate = total as f64 / prom_busy.as_secs_f64();
    println!("| ingestion and memory | tandem | Prometheus 2.42 | tandem / Prometheus |");
    println!("|---|---|---|---|");
    println!(
        "| samples/s, one batch of {} samples per second of data | {:.2} M (append_batch in process) | {:.2} M (remote write over loopback) | {:.2}x |",
        series.len(),
        t_rate / 1e6,
        p_rate / 1e6,
        t_rate / p_rate
    );
    println!(
        "| CPU seconds per million samples | {:.2} (process, generation left out) | {:.2} (server only) | {:.2}x |",
        tandem_cpu / total as f64 * 1e6,
        prom_cpu / total as f64 * 1e6,
        tandem_cpu / prom_cpu
    );
    println!(
        "| VmRSS after loading | {tandem_ingest_rss:.0} MB (the writing process) | {prom_ingest_rss:.0} MB | {:.2}x |",
        tandem_ingest_rss / prom_ingest_rss
    );
    println!(
        "| VmRSS of the server after opening the store (WAL replayed) | {tandem_open_rss:.0} MB | {prom_restart_rss:.0} MB (restart: {}) | {:.2}x |",
        fmt_d(replay),
        tandem_open_rss / prom_restart_rss
    );
    println!(
        "| VmRSS after the queries | {tandem_query_rss:.0} MB | {prom_query_rss:.0} MB | {:.2}x |",
        tandem_query_rss / prom_query_rss
    );
    if !mismatches.is_empty() {
        println!();
        println!(
            "!!!!!!!! ANSWERS DIFFER: tandem and Prometheus disagree on {} queries !!!!!!!!",
            mismatches.len()
        );
        for (name, kind, diff) in &mismatches {
            println!("  {name} ({kind}):");
            for d in diff {
                println!("    {d}");
            }
        }
        std::process::exit(1);
    }
}
