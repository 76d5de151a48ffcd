//! tandem's own `/metrics`, in the Prometheus text format: the server process (CPU, memory,
//! open files, start time), the time-series store (series, samples, blocks, bytes on disk),
//! the instances by state, and the deploy lock. A Prometheus can scrape a tandem server like
//! any other target.

use crate::AppState;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

pub(crate) async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let mut out = String::new();
    let info = &state.info;
    family(
        &mut out,
        "tandem_build_info",
        "gauge",
        "tandem's version, always 1.",
    );
    let _ = writeln!(
        out,
        "tandem_build_info{{version=\"{}\",env=\"{}\"}} 1",
        escape(&info.version),
        escape(&info.env)
    );

    let me =
        tandem_supervisor::procfs::process_stats(std::process::id() as i32).unwrap_or_default();
    family(
        &mut out,
        "process_cpu_seconds_total",
        "counter",
        "CPU time of the tandem server.",
    );
    let _ = writeln!(out, "process_cpu_seconds_total {}", me.cpu_seconds);
    family(
        &mut out,
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory of the tandem server.",
    );
    let _ = writeln!(out, "process_resident_memory_bytes {}", me.rss_bytes);
    family(
        &mut out,
        "process_open_fds",
        "gauge",
        "Open file descriptors of the tandem server.",
    );
    let _ = writeln!(out, "process_open_fds {}", me.open_fds);
    family(
        &mut out,
        "process_start_time_seconds",
        "gauge",
        "When the tandem server started, in Unix seconds.",
    );
    let _ = writeln!(
        out,
        "process_start_time_seconds {}",
        info.started_ms as f64 / 1000.0
    );

    let db = state.monitor.db.stats();
    for (name, help, value) in [
        (
            "tandem_tsdb_head_series",
            "Series with samples in the in-memory head.",
            db.head_series as f64,
        ),
        (
            "tandem_tsdb_head_samples",
            "Samples in the in-memory head.",
            db.head_samples as f64,
        ),
        ("tandem_tsdb_blocks", "Blocks on disk.", db.blocks as f64),
        (
            "tandem_tsdb_block_samples",
            "Samples in blocks on disk.",
            db.block_samples as f64,
        ),
        (
            "tandem_tsdb_bytes",
            "Bytes of the store on disk (blocks and write-ahead log).",
            db.bytes_on_disk as f64,
        ),
        (
            "tandem_tsdb_wal_bytes",
            "Bytes of the write-ahead log.",
            db.wal_bytes as f64,
        ),
    ] {
        family(&mut out, name, "gauge", help);
        let _ = writeln!(out, "{name} {value}");
    }

    let mut by_state: BTreeMap<(String, &'static str), u64> = BTreeMap::new();
    for i in state.engine.runtime().list() {
        *by_state
            .entry((i.service.clone(), i.state.as_str()))
            .or_default() += 1;
    }
    family(
        &mut out,
        "tandem_instances",
        "gauge",
        "Instances by service and state.",
    );
    for ((service, st), n) in by_state {
        let _ = writeln!(
            out,
            "tandem_instances{{service=\"{}\",state=\"{st}\"}} {n}",
            escape(&service)
        );
    }
    remote_write(&mut out, &state.monitor.remote_stats());
    notifications(&mut out, &state.rules.notifier.counts());
    family(
        &mut out,
        "tandem_deploy_in_progress",
        "gauge",
        "1 while a deploy, rollback or down holds the lock.",
    );
    let _ = writeln!(
        out,
        "tandem_deploy_in_progress {}",
        u8::from(state.engine.deploying().is_some())
    );

    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

/// Per remote-write target: sent, failed, dropped and queued samples.
fn remote_write(out: &mut String, targets: &[crate::remote_write::TargetStats]) {
    if targets.is_empty() {
        return;
    }
    type Field = fn(&crate::remote_write::TargetStats) -> u64;
    let families: [(&str, &str, &str, Field); 6] = [
        (
            "tandem_remote_write_sent_samples_total",
            "counter",
            "Samples a remote-write target accepted.",
            |t| t.sent_samples,
        ),
        (
            "tandem_remote_write_backfilled_samples_total",
            "counter",
            "Samples a remote-write target accepted that were read back from the store while it caught up.",
            |t| t.backfilled_samples,
        ),
        (
            "tandem_remote_write_failed_batches_total",
            "counter",
            "Requests to a remote-write target that failed for good.",
            |t| t.failed_batches,
        ),
        (
            "tandem_remote_write_failed_samples_total",
            "counter",
            "Samples in requests that failed for good.",
            |t| t.failed_samples,
        ),
        (
            "tandem_remote_write_dropped_samples_total",
            "counter",
            "Samples that left a target's full queue and that the store no longer held when it caught up.",
            |t| t.dropped_samples,
        ),
        (
            "tandem_remote_write_queued_samples",
            "gauge",
            "Samples waiting in a target's queue.",
            |t| t.queued_samples,
        ),
    ];
    for (name, kind, help, value) in families {
        family(out, name, kind, help);
        for t in targets {
            let _ = writeln!(out, "{name}{{url=\"{}\"}} {}", escape(&t.url), value(t));
        }
    }
}

/// Alert notifications per receiver and outcome (`sent`, `failed`, `dropped`).
fn notifications(out: &mut String, counts: &BTreeMap<(String, &'static str), u64>) {
    family(
        out,
        "tandem_notifications_total",
        "counter",
        "Alert notifications per receiver: sent, failed after retries, or dropped from a full queue.",
    );
    for ((receiver, outcome), n) in counts {
        let _ = writeln!(
            out,
            "tandem_notifications_total{{receiver=\"{}\",outcome=\"{outcome}\"}} {n}",
            escape(receiver)
        );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn label_values_are_escaped() {
        assert_eq!(super::escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
