//! What can go wrong when opening, writing or compacting the store, each error with the path
//! or series it concerns and what to do about it; and the warnings `Db::open` returns when
//! it recovered from damage on its own (a torn WAL tail, a damaged block it skipped), so the
//! server can log them once instead of this crate printing.

use std::io;
use std::path::PathBuf;

/// An error of the store as a whole: nothing was written (or, for `Sample`, that sample
/// was refused and the rest of its batch went on).
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error(
        "cannot {action} {}: {source}; check that this user owns the data directory and that its disk is not full",
        .path.display()
    )]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },

    #[error(
        "the time-series directory {} is in use by another process (a second tandem server on the same data directory?); stop that process or choose another data directory",
        .path.display()
    )]
    Locked { path: PathBuf },

    #[error(
        "the time-series block {} is damaged ({detail}); move that folder out of the data directory to go on without it, or restore it from a backup",
        .path.display()
    )]
    CorruptBlock { path: PathBuf, detail: String },

    #[error("invalid time-series options: {0}")]
    Options(String),

    #[error(transparent)]
    Sample(#[from] SampleError),
}

impl DbError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        DbError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

/// Why one sample was refused. The series is printed as Prometheus prints it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SampleError {
    #[error(
        "sample of '{series}' at {t} ms is out of order: the series already has a sample at {last_t} ms; send each series' samples in time order"
    )]
    OutOfOrder { series: String, t: i64, last_t: i64 },

    #[error(
        "sample of '{series}' at {t} ms has value {new} but the series already holds {old} at that time; a timestamp can hold only one value"
    )]
    Duplicate {
        series: String,
        t: i64,
        old: f64,
        new: f64,
    },

    #[error(
        "sample of '{series}' at {t} ms is too old: the store accepts samples from {min_t} ms on (older ones are already compacted, or lag too far behind the newest); send samples as they are collected"
    )]
    TooOld { series: String, t: i64, min_t: i64 },

    #[error("a sample without labels was refused; give every series at least a metric name")]
    NoLabels,
}

/// Damage `Db::open` found and repaired or stepped around; log each once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenWarning {
    #[error(
        "the write-ahead log {} ends in a torn or damaged record at byte {offset} ({detail}); it was cut there, and {dropped_bytes} bytes after it were dropped (normal after a crash: only samples not yet synced are lost)",
        .path.display()
    )]
    TornWal {
        path: PathBuf,
        offset: u64,
        dropped_bytes: u64,
        detail: String,
    },

    #[error(
        "the write-ahead log segment {} came after a damaged one and was removed",
        .path.display()
    )]
    WalSegmentDropped { path: PathBuf },

    #[error(
        "the time-series block {} is damaged ({detail}) and was skipped: its samples cannot be read; move it out of the data directory, or restore it from a backup",
        .path.display()
    )]
    BlockSkipped { path: PathBuf, detail: String },

    #[error(
        "the write-ahead log held {count} samples of series it never declared; they were dropped"
    )]
    UnknownSeries { count: u64 },
}
