//! The store end to end, through its public API and real files: round trips bit for bit,
//! selectors, refused samples, WAL replay and repair, a `kill -9` in the middle of appends,
//! block cuts, retention, damage, query limits, and bytes per sample.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tandem_tsdb::synth::{self, Rng, Shape};
use tandem_tsdb::{
    Db, DbError, DbOptions, Labels, MatchOp, Matcher, OpenWarning, Querier, QueryError, Sample,
    SampleError, WalSync, stale_nan,
};

fn labels(pairs: &[(&str, &str)]) -> Labels {
    Labels::new(pairs.iter().copied())
}

fn all(db: &Db, matchers: &[Matcher]) -> Vec<tandem_tsdb::Series> {
    db.select(matchers, i64::MIN, i64::MAX).unwrap()
}

fn name(n: &str) -> Matcher {
    Matcher::equal("__name__", n)
}

fn small_blocks(block: Duration) -> DbOptions {
    DbOptions {
        block_duration: block,
        ..DbOptions::default()
    }
}

/// Floats meant to break a lossy or sloppy codec.
fn nasty_float(rng: &mut Rng) -> f64 {
    match rng.below(12) {
        0 => f64::NAN,
        1 => stale_nan(),
        2 => f64::INFINITY,
        3 => f64::NEG_INFINITY,
        4 => -0.0,
        5 => f64::from_bits(rng.below(1 << 52)), // subnormal
        6 => f64::from_bits(0x7ff8_0000_0000_0000 | rng.below(1 << 51)), // NaN with payload
        7 => rng.below(1000) as f64,
        8 => rng.below(1000) as f64 / 10.0,
        9 => f64::MAX,
        _ => f64::from_bits(rng.next_u64()),
    }
}

#[test]
fn every_float_comes_back_bit_for_bit_from_head_wal_and_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(7);
    let series: Vec<Labels> = (0..8)
        .map(|i| labels(&[("__name__", "x"), ("i", &i.to_string())]))
        .collect();
    let mut expected: Vec<Vec<Sample>> = vec![Vec::new(); series.len()];
    let opts = || small_blocks(Duration::from_secs(60));
    {
        let db = Db::open(dir.path(), opts()).unwrap();
        for step in 0..400i64 {
            let mut app = db.appender();
            for (i, l) in series.iter().enumerate() {
                // Runs of "nice" values between nasty ones, so every coding gets chunks.
                let v = if (step / 50) % 2 == 0 && i % 2 == 0 {
                    (step * 3) as f64
                } else {
                    nasty_float(&mut rng)
                };
                let t = step * 1000 + rng.below(7) as i64;
                app.add(l.clone(), t, v);
                expected[i].push(Sample { t, v });
            }
            let s = app.commit().unwrap();
            assert_eq!(s.appended, series.len(), "{:?}", s.rejected);
        }
        assert!(db.stats().blocks >= 2, "{:?}", db.stats());
        let got = all(&db, &[name("x")]);
        for (i, s) in got.iter().enumerate() {
            assert_eq!(s.samples, expected[i], "series {}", s.labels);
        }
    }
    // Dropped without close: reopened from blocks plus WAL.
    let db = Db::open(dir.path(), opts()).unwrap();
    assert!(db.warnings().is_empty(), "{:?}", db.warnings());
    let got = all(&db, &[name("x")]);
    assert_eq!(got.len(), series.len());
    for (i, s) in got.iter().enumerate() {
        assert_eq!(s.samples, expected[i], "series {}", s.labels);
    }
    // A window across the block boundary and the head, inclusive at both ends.
    let (lo, hi) = (expected[0][100].t, expected[0][380].t);
    let part = db.select(&[Matcher::equal("i", "0")], lo, hi).unwrap();
    assert_eq!(part[0].samples, expected[0][100..=380]);
}

#[test]
fn selectors_match_like_prometheus() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), DbOptions::default()).unwrap();
    let a = labels(&[("__name__", "up"), ("job", "api"), ("env", "prod")]);
    let b = labels(&[("__name__", "up"), ("job", "web")]);
    let c = labels(&[("__name__", "down"), ("job", "api-2"), ("env", "dev")]);
    for l in [&a, &b, &c] {
        db.append(l, 1000, 1.0).unwrap();
    }
    let m = |n: &str, op, v: &str| Matcher::new(n, op, v).unwrap();
    // Each series by its job, in the order select returns them (sorted by labels).
    let jobs = |ms: &[Matcher]| -> Vec<String> {
        all(&db, ms)
            .into_iter()
            .map(|s| s.labels.get("job").unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(jobs(&[name("up")]), ["api", "web"]);
    assert_eq!(
        jobs(&[name("up"), m("job", MatchOp::NotEqual, "api")]),
        ["web"]
    );
    assert_eq!(jobs(&[m("job", MatchOp::Regex, "api.*")]), ["api-2", "api"]);
    assert_eq!(jobs(&[m("job", MatchOp::Regex, "api")]), ["api"]);
    assert_eq!(jobs(&[m("job", MatchOp::NotRegex, "api.*")]), ["web"]);
    assert_eq!(jobs(&[name("up"), m("env", MatchOp::Equal, "")]), ["web"]);
    assert_eq!(jobs(&[m("env", MatchOp::NotEqual, "")]), ["api-2", "api"]);
    assert_eq!(jobs(&[m("env", MatchOp::Regex, "prod|")]), ["api", "web"]);
    assert!(jobs(&[name("nope")]).is_empty());
    // Outside the time range: nothing.
    assert!(db.select(&[name("up")], 2000, 3000).unwrap().is_empty());
    assert_eq!(
        db.label_names(&[], i64::MIN, i64::MAX).unwrap(),
        ["__name__", "env", "job"]
    );
    assert_eq!(
        db.label_values("job", &[name("up")], i64::MIN, i64::MAX)
            .unwrap(),
        ["api", "web"]
    );
}

#[test]
fn out_of_order_duplicate_and_too_old_samples_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), small_blocks(Duration::from_secs(10))).unwrap();
    let l = labels(&[("__name__", "reqs"), ("service", "api")]);
    db.append(&l, 2000, 5.0).unwrap();
    let err = db.append(&l, 1000, 4.0).unwrap_err();
    assert!(
        matches!(
            err,
            DbError::Sample(SampleError::OutOfOrder {
                t: 1000,
                last_t: 2000,
                ..
            })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("reqs{service=\"api\"}"), "{err}");
    // Same time, same value: a no-op. Same time, another value: refused.
    db.append(&l, 2000, 5.0).unwrap();
    let err = db.append(&l, 2000, 6.0).unwrap_err();
    assert!(
        matches!(err, DbError::Sample(SampleError::Duplicate { .. })),
        "{err}"
    );
    // In a batch the good samples go in and the bad ones are listed.
    let s = db
        .append_batch(&[
            (l.clone(), Sample { t: 3000, v: 6.0 }),
            (l.clone(), Sample { t: 2500, v: 6.0 }),
            (l.clone(), Sample { t: 3000, v: 6.0 }),
            (Labels::default(), Sample { t: 3000, v: 1.0 }),
        ])
        .unwrap();
    assert_eq!((s.appended, s.duplicates, s.rejected.len()), (1, 1, 2));
    // Cut a block, then anything older than the cut is refused, even for a new series.
    for t in (4..40).map(|s| s * 1000) {
        db.append(&l, t, 1.0).unwrap();
    }
    assert!(db.stats().blocks >= 1);
    let fresh = labels(&[("__name__", "late")]);
    let err = db.append(&fresh, 5000, 1.0).unwrap_err();
    assert!(
        matches!(err, DbError::Sample(SampleError::TooOld { .. })),
        "{err}"
    );
    assert!(all(&db, &[name("late")]).is_empty());
    let got = all(&db, &[name("reqs")]);
    assert_eq!(got[0].samples.len(), 2 + 36);
    // Still refused after a restart: the block remembers the window it was cut for.
    drop(db);
    let db = Db::open(dir.path(), small_blocks(Duration::from_secs(10))).unwrap();
    let err = db.append(&fresh, 9_999, 1.0).unwrap_err();
    assert!(
        matches!(err, DbError::Sample(SampleError::TooOld { .. })),
        "{err}"
    );
}

#[test]
fn a_torn_wal_tail_is_cut_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let l = labels(&[("__name__", "m")]);
    {
        let db = Db::open(dir.path(), DbOptions::default()).unwrap();
        for t in 0..100 {
            db.append(&l, t * 1000, t as f64).unwrap();
        }
        db.close().unwrap();
    }
    // Tear the last record: drop its final bytes and add some garbage.
    let seg = newest_wal_segment(dir.path());
    let mut data = std::fs::read(&seg).unwrap();
    let len = data.len();
    data.truncate(len - 3);
    std::fs::write(&seg, &data).unwrap();
    let db = Db::open(dir.path(), DbOptions::default()).unwrap();
    assert!(
        matches!(db.warnings(), [OpenWarning::TornWal { .. }]),
        "{:?}",
        db.warnings()
    );
    assert!(db.warnings()[0].to_string().contains("cut there"));
    let got = all(&db, &[name("m")]);
    assert_eq!(got[0].samples.len(), 99);
    // Appending goes on after the repair, and a second open is clean.
    db.append(&l, 200_000, 1.0).unwrap();
    drop(db);
    let db = Db::open(dir.path(), DbOptions::default()).unwrap();
    assert!(db.warnings().is_empty(), "{:?}", db.warnings());
    assert_eq!(all(&db, &[name("m")])[0].samples.len(), 100);
}

fn newest_wal_segment(dir: &Path) -> std::path::PathBuf {
    let mut segs: Vec<_> = std::fs::read_dir(dir.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| std::fs::metadata(p).unwrap().len() > 0)
        .collect();
    segs.sort();
    segs.pop().unwrap()
}

const CHILD_ENV: &str = "TANDEM_TSDB_KILL_CHILD_DIR";

/// Child mode: append batches forever, printing `ack N` after batch N returned.
fn run_appending_child(dir: &Path) {
    let db = Db::open(dir, DbOptions::default()).unwrap();
    let series: Vec<Labels> = (0..20)
        .map(|i| labels(&[("__name__", "load"), ("i", &i.to_string())]))
        .collect();
    let mut out = std::io::stdout().lock();
    for n in 0i64.. {
        let mut app = db.appender();
        for l in &series {
            app.add(l.clone(), n * 1000, n as f64);
        }
        app.commit().unwrap();
        use std::io::Write;
        writeln!(out, "ack {n}").unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn kill_9_while_appending_loses_nothing_acknowledged() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        run_appending_child(Path::new(&dir));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "kill_9_while_appending_loses_nothing_acknowledged",
            "--nocapture",
        ])
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // Past the first block cut (2 h of samples at 1 s), so the kill can land anywhere.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut acked = -1i64;
    while acked < 12_000 {
        assert!(
            Instant::now() < deadline,
            "the child appended only {acked} batches"
        );
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(n) = line.strip_prefix("ack ") {
                    acked = n.parse().unwrap();
                }
            }
            other => panic!("the child stopped early: {other:?}"),
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let db = Db::open(dir.path(), DbOptions::default()).unwrap();
    let got = all(&db, &[name("load")]);
    assert_eq!(got.len(), 20);
    for s in &got {
        // Every acknowledged batch is there (it reached the kernel before `commit`
        // returned); the child may have got further than we read.
        assert!(
            s.samples.len() as i64 > acked,
            "{} has {}",
            s.labels,
            s.samples.len()
        );
        for (i, x) in s.samples.iter().enumerate() {
            assert_eq!(
                *x,
                Sample {
                    t: i as i64 * 1000,
                    v: i as f64
                }
            );
        }
    }
    assert!(db.stats().blocks >= 1, "{:?}", db.stats());
}

#[test]
fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _db = Db::open(dir.path(), DbOptions::default()).unwrap();
    let err = Db::open(dir.path(), DbOptions::default()).unwrap_err();
    assert!(matches!(err, DbError::Locked { .. }), "{err}");
    assert!(err.to_string().contains("another process"));
}

fn fill(db: &Db, series: usize, seconds: i64) {
    for t in 0..seconds {
        let mut app = db.appender();
        for i in 0..series {
            app.add(
                labels(&[("__name__", "g"), ("i", &i.to_string())]),
                t * 1000,
                (t * 7 + i as i64) as f64,
            );
        }
        app.commit().unwrap();
    }
}

#[test]
fn retention_deletes_old_blocks_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let opts = DbOptions {
        retention: Some(Duration::from_secs(30)),
        ..small_blocks(Duration::from_secs(10))
    };
    let db = Db::open(dir.path(), opts.clone()).unwrap();
    fill(&db, 3, 100);
    let got = all(&db, &[name("g")]);
    let first = got[0].samples[0].t;
    // Newest is 99 s; blocks ending before 69 s go, the block [60, 70) stays.
    assert_eq!(first, 60_000, "{:?}", db.stats());
    assert_eq!(got[0].samples.last().unwrap().t, 99_000);
    drop(db);
    let db = Db::open(dir.path(), opts).unwrap();
    assert_eq!(all(&db, &[name("g")])[0].samples[0].t, 60_000);
}

#[test]
fn retention_deletes_oldest_blocks_by_size() {
    let unlimited = tempfile::tempdir().unwrap();
    let opts = small_blocks(Duration::from_secs(10));
    let db = Db::open(unlimited.path(), opts.clone()).unwrap();
    fill(&db, 20, 100);
    let full = db.stats();
    assert!(full.blocks >= 6, "{full:?}");

    let limited = tempfile::tempdir().unwrap();
    let max_bytes = full.wal_bytes + full.block_bytes / 2;
    let db = Db::open(
        limited.path(),
        DbOptions {
            max_bytes: Some(max_bytes),
            ..opts
        },
    )
    .unwrap();
    fill(&db, 20, 100);
    let s = db.stats();
    assert!(s.blocks >= 1 && s.blocks < full.blocks, "{s:?} vs {full:?}");
    // Checked at each block cut: blocks plus the WAL of that moment fit; the WAL grows
    // until the next cut.
    assert!(s.block_bytes + full.wal_bytes / 2 <= max_bytes, "{s:?}");
    // What is left is the newest data, without a gap.
    let got = all(&db, &[name("g")]);
    let ts: Vec<i64> = got[0].samples.iter().map(|x| x.t).collect();
    assert_eq!(*ts.last().unwrap(), 99_000);
    assert!(ts.windows(2).all(|w| w[1] - w[0] == 1000));
    assert!(ts[0] > 0);
}

#[test]
fn a_damaged_block_is_skipped_with_its_path_or_fails_the_query_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let opts = small_blocks(Duration::from_secs(10));
    {
        let db = Db::open(dir.path(), opts.clone()).unwrap();
        fill(&db, 3, 40);
    }
    let mut blocks: Vec<_> = std::fs::read_dir(dir.path().join("blocks"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    blocks.sort();
    assert!(blocks.len() >= 2);
    // A flipped byte in the first block's index: that block is skipped at open.
    let index = blocks[0].join("index");
    let mut data = std::fs::read(&index).unwrap();
    data[10] ^= 0xff;
    std::fs::write(&index, data).unwrap();
    // A flipped byte in the second block's chunks: the query that reads it fails.
    let chunks = blocks[1].join("chunks");
    let mut data = std::fs::read(&chunks).unwrap();
    let n = data.len();
    data[n - 10] ^= 0xff;
    std::fs::write(&chunks, data).unwrap();

    let db = Db::open(dir.path(), opts).unwrap();
    match db.warnings() {
        [OpenWarning::BlockSkipped { path, .. }] => assert!(path.starts_with(&blocks[0])),
        other => panic!("{other:?}"),
    }
    let err = db.select(&[name("g")], i64::MIN, i64::MAX).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, QueryError::Storage(_)), "{msg}");
    assert!(msg.contains(&*blocks[1].to_string_lossy()), "{msg}");
    // The head is still readable.
    assert!(!db.select(&[name("g")], 30_000, 40_000).unwrap().is_empty());
}

#[test]
fn queries_over_the_limits_are_refused_with_advice() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(
        dir.path(),
        DbOptions {
            max_series_per_query: Some(5),
            max_samples_per_query: Some(100),
            ..DbOptions::default()
        },
    )
    .unwrap();
    fill(&db, 10, 30);
    let err = all_err(&db, &[name("g")]);
    assert_eq!(
        err,
        "query would read 10 series, more than the limit of 5; narrow the selector"
    );
    let few = Matcher::new("i", MatchOp::Regex, "[0-4]").unwrap();
    let err = all_err(&db, std::slice::from_ref(&few));
    assert!(err.contains("more than 100 samples"), "{err}");
    assert_eq!(db.select(&[few], 0, 10_000).unwrap().len(), 5);
}

fn all_err(db: &Db, m: &[Matcher]) -> String {
    match db.select(m, i64::MIN, i64::MAX) {
        Err(e @ QueryError::Limit(_)) => e.to_string(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn wal_sync_every_batch_also_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let opts = DbOptions {
        wal_sync: WalSync::EveryBatch,
        ..DbOptions::default()
    };
    let l = labels(&[("__name__", "s")]);
    {
        let db = Db::open(dir.path(), opts.clone()).unwrap();
        for t in 0..10 {
            db.append(&l, t, 0.5).unwrap();
        }
    }
    let db = Db::open(dir.path(), opts).unwrap();
    assert_eq!(all(&db, &[name("s")])[0].samples.len(), 10);
    let s = db.stats();
    assert_eq!((s.head_series, s.head_samples), (1, 10));
}

/// Bytes per sample on disk (block files: chunks, index, meta) for each shape tandem
/// collects, 7 series of each over 3 h at 1 s (one 2 h block cut), against plain Gorilla.
#[test]
fn compression_beats_gorilla_on_the_series_tandem_collects() {
    println!(
        "{:<24} {:>8} {:>8} {:>10} {:>10}",
        "bytes/sample", "tandem", "gorilla", "tandem±5ms", "gorilla±5ms"
    );
    for shape in Shape::ALL {
        let aligned = block_bytes_per_sample(shape, 0);
        let jittered = block_bytes_per_sample(shape, 5);
        let (gorilla, gorilla_j) = (gorilla_per_sample(shape, 0), gorilla_per_sample(shape, 5));
        println!(
            "{:<24} {aligned:>8.3} {gorilla:>8.3} {jittered:>10.3} {gorilla_j:>10.3}",
            shape.name()
        );
        assert!(aligned <= 1.0, "{}: {aligned} bytes/sample", shape.name());
        assert!(jittered <= 1.6, "{}: {jittered} bytes/sample", shape.name());
        assert!(
            aligned < gorilla && jittered < gorilla_j,
            "{}",
            shape.name()
        );
    }
}

const START: i64 = 1_767_225_600_000; // 2026-01-01, on a 2 h boundary

fn block_bytes_per_sample(shape: Shape, jitter: i64) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), DbOptions::default()).unwrap();
    let n = 3 * 3600 + 60;
    let series: Vec<(Labels, Vec<Sample>)> = (0..7)
        .map(|v| {
            let l = labels(&[
                ("__name__", "m"),
                ("service", &format!("svc{}", v % 7)),
                ("instance", &v.to_string()),
            ]);
            (l, synth::series(shape, v, START + 1000, n, 1000, jitter))
        })
        .collect();
    for i in 0..n {
        let batch: Vec<(Labels, Sample)> = series.iter().map(|(l, s)| (l.clone(), s[i])).collect();
        db.append_batch(&batch).unwrap();
    }
    let s = db.stats();
    assert_eq!(s.blocks, 1, "{s:?}");
    // The block holds what went in, bit for bit.
    let back = db
        .select(&[name("m")], START, START + 7_200_000 - 1)
        .unwrap();
    assert_eq!(back.len(), series.len());
    for got in &back {
        let (_, want) = series.iter().find(|(l, _)| *l == got.labels).unwrap();
        let want: Vec<Sample> = want
            .iter()
            .filter(|x| x.t < START + 7_200_000)
            .copied()
            .collect();
        assert!(got.samples == want, "{} differs", got.labels);
    }
    s.block_bytes as f64 / s.block_samples as f64
}

fn gorilla_per_sample(shape: Shape, jitter: i64) -> f64 {
    let (mut bytes, mut n) = (0, 0);
    for v in 0..7 {
        let s = synth::series(shape, v, START, 7200, 1000, jitter);
        for c in s.chunks(120) {
            // Prometheus's chunk: 2-byte length + 1 encoding byte + the XOR data.
            bytes += synth::gorilla_bytes(c) + 3;
        }
        n += s.len();
    }
    bytes as f64 / n as f64
}
