//! The store's benchmark (run by `bench/tsdb.sh`, which also loads the same data into
//! Prometheus): the series tandem collects per instance, for many instances at 1 s, written
//! second by second as the collectors will, then measured: bytes per sample on disk,
//! ingestion rate, resident memory, and the latency of typical selections.
//!
//! Usage: tsdb_bench [--instances N] [--hours H] [--jitter MS] [--offset MIN] [--dir DIR]
//!        [--openmetrics FILE]
//! `--offset` starts the data MIN minutes after a block boundary (0 by default). With 62,
//! the first block gets only 58 minutes and the head keeps just over 2 h (8.6 M samples
//! with the defaults), as in `bench/query.sh`, whose data ends at the moment of the run:
//! the worst case for the memory of a process that opens the store (`tsdb_open DIR`).
//! `--openmetrics` also writes the same samples as OpenMetrics text (series after series),
//! for `promtool tsdb create-blocks-from openmetrics`.

use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tandem_tsdb::synth::{Generator, Shape};
use tandem_tsdb::{Db, DbOptions, Labels, Matcher, Querier, Sample};

/// 2026-01-01T00:00:00Z, on a block boundary.
const START: i64 = 1_767_225_600_000;
const BUCKETS: [&str; 12] = [
    "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf",
];

struct Args {
    instances: usize,
    hours: i64,
    jitter: i64,
    offset_min: i64,
    dir: Option<PathBuf>,
    openmetrics: Option<PathBuf>,
}

fn parse_args() -> Args {
    let mut a = Args {
        instances: 50,
        hours: 3,
        jitter: 0,
        offset_min: 0,
        dir: None,
        openmetrics: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let val = it.next().unwrap_or_default();
        match flag.as_str() {
            "--instances" => a.instances = val.parse().expect("--instances N"),
            "--hours" => a.hours = val.parse().expect("--hours H"),
            "--jitter" => a.jitter = val.parse().expect("--jitter MS"),
            "--offset" => a.offset_min = val.parse().expect("--offset MIN"),
            "--dir" => a.dir = Some(val.into()),
            "--openmetrics" => a.openmetrics = Some(val.into()),
            other => {
                eprintln!("unknown flag '{other}'; see the comment atop tsdb_bench.rs");
                std::process::exit(2);
            }
        }
    }
    a
}

/// The series one instance produces: (labels, shape, variant).
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

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn proc_status(field: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .map(|l| l[field.len()..].trim().to_string())
        .unwrap_or_default()
}

fn main() {
    let args = parse_args();
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().join("tsdb"));
    let _ = std::fs::remove_dir_all(&dir);
    let series: Vec<(Labels, Shape, u64)> = (0..args.instances).flat_map(instance_series).collect();
    // Two extra minutes so that the head spans 1.5 blocks and the first block is cut.
    let seconds = args.hours * 3600 + 120;
    let total = series.len() as u64 * seconds as u64;
    println!(
        "tsdb bench: {} instances, {} series, {} h at 1 s, jitter ±{} ms: {} samples",
        args.instances,
        series.len(),
        args.hours,
        args.jitter,
        total
    );

    let start = START + args.offset_min * 60_000;
    let db = Db::open(&dir, DbOptions::default()).expect("open the store");
    let mut gens: Vec<Generator> = series
        .iter()
        .map(|(_, shape, v)| Generator::new(*shape, *v, start, 1000, args.jitter))
        .collect();
    let mut batch: Vec<(Labels, Sample)> = series
        .iter()
        .map(|(l, _, _)| (l.clone(), Sample { t: 0, v: 0.0 }))
        .collect();
    let mut busy = Duration::ZERO;
    for _ in 0..seconds {
        for (slot, g) in batch.iter_mut().zip(&mut gens) {
            slot.1 = g.next_sample();
        }
        let t0 = Instant::now();
        let s = db.append_batch(&batch).expect("append");
        busy += t0.elapsed();
        assert!(s.rejected.is_empty(), "{:?}", s.rejected.first());
    }
    let stats = db.stats();
    println!(
        "ingestion: {:.2} M samples/s ({:.2} s in append_batch, block cuts included)",
        total as f64 / busy.as_secs_f64() / 1e6,
        busy.as_secs_f64()
    );
    println!(
        "on disk: blocks {} B for {} samples = {:.3} bytes/sample; WAL {} B; head {} samples",
        stats.block_bytes,
        stats.block_samples,
        stats.block_bytes as f64 / stats.block_samples.max(1) as f64,
        stats.wal_bytes,
        stats.head_samples
    );
    println!(
        "memory: VmRSS {}, VmHWM {}",
        proc_status("VmRSS:"),
        proc_status("VmHWM:")
    );

    let end = start + seconds * 1000 - 1;
    let hour = 3_600_000;
    let queries: Vec<(&str, Vec<Matcher>, i64)> = vec![
        (
            "one series, 1 h",
            vec![
                Matcher::equal("__name__", "tandem_process_resident_memory_bytes"),
                Matcher::equal("instance", "svc3-3"),
            ],
            hour,
        ),
        (
            "memory of every instance, 1 h",
            vec![Matcher::equal(
                "__name__",
                "tandem_process_resident_memory_bytes",
            )],
            hour,
        ),
        (
            "one service's histogram buckets, 1 h",
            vec![
                Matcher::equal("__name__", "tandem_http_request_duration_seconds_bucket"),
                Matcher::equal("service", "svc3"),
            ],
            hour,
        ),
        (
            "requests of every instance, 5 m",
            vec![Matcher::equal("__name__", "tandem_http_requests_total")],
            300_000,
        ),
    ];
    println!(
        "{:<40} {:>8} {:>10} {:>12}",
        "selection", "series", "samples", "median"
    );
    for (name, matchers, range) in &queries {
        let mut times = Vec::new();
        let mut shape = (0, 0);
        for _ in 0..15 {
            let t0 = Instant::now();
            let got = db.select(matchers, end - range, end).expect("select");
            times.push(t0.elapsed());
            shape = (
                got.len(),
                got.iter().map(|s| s.samples.len()).sum::<usize>(),
            );
        }
        println!(
            "{name:<40} {:>8} {:>10} {:>12?}",
            shape.0,
            shape.1,
            median(times)
        );
    }

    if let Some(path) = &args.openmetrics {
        let f = std::fs::File::create(path).expect("create the OpenMetrics file");
        let mut w = BufWriter::new(f);
        for (labels, shape, v) in &series {
            let name = labels.metric_name().unwrap_or_default();
            let rest = labels.without(&["__name__"]);
            let pairs: Vec<String> = rest.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            let prefix = format!("{name}{{{}}}", pairs.join(","));
            let mut g = Generator::new(*shape, *v, start, 1000, args.jitter);
            for _ in 0..seconds {
                let s = g.next_sample();
                // Rust prints the shortest decimal that reads back to the same float.
                writeln!(w, "{prefix} {} {}.{:03}", s.v, s.t / 1000, s.t % 1000)
                    .expect("write the OpenMetrics file");
            }
        }
        writeln!(w, "# EOF").expect("write the OpenMetrics file");
        w.flush().expect("write the OpenMetrics file");
        println!("openmetrics: {} written", path.display());
    }
    db.close().expect("close");
}
