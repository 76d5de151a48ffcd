//! Service output for `GET /v1/logs`: reads the instances' rotated log files, merges them by
//! time with the instance as prefix, and follows them (new lines, new instances, rotations)
//! for `-f`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tandem_api::LogEntry;
use tandem_supervisor::logfile::{self, LogFollower, LogLine, Stream};
use tokio::sync::mpsc;

/// The log files of `services` (all when empty): `(service, instance, path)`.
pub(crate) fn log_files(logs_dir: &Path, services: &[String]) -> Vec<(String, String, PathBuf)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(logs_dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let service = entry.file_name().to_string_lossy().to_string();
        if !services.is_empty() && !services.contains(&service) {
            continue;
        }
        let Ok(files) = std::fs::read_dir(entry.path()) else {
            continue;
        };
        for f in files.flatten() {
            let path = f.path();
            if path.extension().is_some_and(|e| e == "log") {
                let instance = path
                    .file_stem()
                    .map(|s| s.to_string_lossy().to_string())
                    .unwrap_or_default();
                out.push((service.clone(), instance, path));
            }
        }
    }
    out.sort();
    out
}

fn entry(service: &str, instance: &str, line: LogLine) -> LogEntry {
    LogEntry {
        time_ms: line.time_ms,
        service: service.to_string(),
        instance: instance.to_string(),
        stream: match line.stream {
            Stream::Out => "out".into(),
            Stream::Err => "err".into(),
        },
        text: line.text,
    }
}

/// Every stored line since `since_ms`, merged by time; the last `tail` when given.
pub(crate) fn read_merged(
    logs_dir: &Path,
    services: &[String],
    since_ms: Option<i64>,
    tail: Option<usize>,
) -> Vec<LogEntry> {
    let mut sources = Vec::new();
    for (service, instance, path) in log_files(logs_dir, services) {
        let lines = logfile::read_all(&path).unwrap_or_default();
        let lines: Vec<LogLine> = lines
            .into_iter()
            .filter(|l| since_ms.is_none_or(|s| l.time_ms >= s))
            .collect();
        sources.push((format!("{service}\u{0}{instance}"), lines));
    }
    let merged = logfile::merge(sources);
    let skip = tail.map(|t| merged.len().saturating_sub(t)).unwrap_or(0);
    merged
        .into_iter()
        .skip(skip)
        .map(|(key, line)| {
            let (service, instance) = key.split_once('\u{0}').unwrap_or((&key, ""));
            entry(service, instance, line)
        })
        .collect()
}

/// Sends new lines of `services` as they are written, until the receiver goes away.
pub(crate) async fn follow(logs_dir: PathBuf, services: Vec<String>, tx: mpsc::Sender<LogEntry>) {
    let mut followers: BTreeMap<PathBuf, (String, String, LogFollower)> = BTreeMap::new();
    // Files present now are followed from their end; files that appear later from their start.
    for (service, instance, path) in log_files(&logs_dir, &services) {
        {
            let f = LogFollower::from_end(&path);
            followers.insert(path, (service, instance, f));
        }
    }
    let mut tick: u32 = 0;
    loop {
        if tick.is_multiple_of(4) {
            for (service, instance, path) in log_files(&logs_dir, &services) {
                if !followers.contains_key(&path) {
                    followers.insert(
                        path.clone(),
                        (service, instance, LogFollower::new(&path, 0)),
                    );
                }
            }
        }
        tick = tick.wrapping_add(1);
        let mut batch = Vec::new();
        for (service, instance, follower) in followers.values_mut() {
            if let Ok(lines) = follower.poll() {
                for line in lines {
                    batch.push(entry(service, instance, line));
                }
            }
        }
        batch.sort_by_key(|e| e.time_ms);
        for e in batch {
            if tx.send(e).await.is_err() {
                return;
            }
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Keeps the logs of at most `keep` stopped instances per service (the newest), deleting
/// older ones; the logs of instances that still exist are always kept.
pub(crate) fn prune_old_logs(logs_dir: &Path, instances_dir: &Path, keep: usize) {
    let Ok(services) = std::fs::read_dir(logs_dir) else {
        return;
    };
    for service in services.flatten() {
        let Ok(files) = std::fs::read_dir(service.path()) else {
            continue;
        };
        let mut current: Vec<(std::time::SystemTime, PathBuf)> = files
            .flatten()
            .map(|f| f.path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .filter(|p| {
                let stem = p.file_stem().unwrap_or_default();
                !instances_dir.join(stem).exists()
            })
            .map(|p| {
                let t = std::fs::metadata(&p)
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::UNIX_EPOCH);
                (t, p)
            })
            .collect();
        if current.len() <= keep {
            continue;
        }
        current.sort();
        let excess = current.len() - keep;
        for (_, path) in current.into_iter().take(excess) {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            if let Ok(siblings) = std::fs::read_dir(service.path()) {
                for s in siblings.flatten() {
                    if s.file_name().to_string_lossy().starts_with(&name) {
                        let _ = std::fs::remove_file(s.path());
                    }
                }
            }
        }
    }
}
