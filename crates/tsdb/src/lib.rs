//! tandem's embedded time-series store: every sample tandem collects, kept compactly and
//! losslessly, and read back by the PromQL engine.
//!
//! This crate owns the data model shared with the query side ([`model`]: labels, matchers,
//! samples, series and the [`Querier`] trait through which PromQL reads) and the storage
//! engine behind it ([`Db`]): a head in memory with a write-ahead log, cut every
//! `block_duration` into immutable compressed blocks on disk, with retention by age and
//! size. It has no async runtime: callers decide which thread writes and reads.

mod block;
mod chunk;
mod db;
mod encoding;
mod error;
mod head;
pub mod model;
mod postings;
#[doc(hidden)]
pub mod synth;
mod wal;

pub use db::{AppendSummary, Appender, Db, DbOptions, DbStats, WalSync};
pub use error::{DbError, OpenWarning, SampleError};
pub use model::*;
