//! tandem's embedded time-series store: every sample tandem collects, kept compactly and
//! losslessly, and read back by the PromQL engine.
//!
//! This crate owns the data model shared with the query side ([`model`]: labels, matchers,
//! samples, series and the [`Querier`] trait through which PromQL reads) and the storage
//! engine behind it. It has no async runtime: callers decide which thread writes and reads.

mod chunk;
mod encoding;
pub mod model;
#[doc(hidden)]
pub mod synth;

pub use model::*;
