//! Opens an existing store (as `tandem serve` does at start) and prints how long it took
//! and the process's resident memory: VmRSS after the open and VmHWM, its peak. Run it on
//! a store written by `tsdb_bench --dir DIR`, in a fresh process so that nothing else
//! counts in the figures.
//!
//! Usage: tsdb_open DIR

use std::path::PathBuf;
use std::time::Instant;

use tandem_tsdb::{Db, DbOptions};

fn proc_status(field: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .map(|l| l[field.len()..].trim().to_string())
        .unwrap_or_default()
}

fn main() {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: tsdb_open DIR (a store written by tsdb_bench --dir DIR)");
        std::process::exit(2);
    };
    let t0 = Instant::now();
    let db = Db::open(&dir, DbOptions::default()).expect("open the store");
    let took = t0.elapsed();
    let stats = db.stats();
    println!(
        "opened in {:.2} s: {} head series, {} head samples, {} blocks ({} samples)",
        took.as_secs_f64(),
        stats.head_series,
        stats.head_samples,
        stats.blocks,
        stats.block_samples
    );
    for w in db.warnings() {
        println!("warning: {w}");
    }
    println!(
        "memory: VmRSS {}, VmHWM {}",
        proc_status("VmRSS:"),
        proc_status("VmHWM:")
    );
    db.close().expect("close");
}
