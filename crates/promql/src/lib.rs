//! PromQL evaluation with Prometheus 3 semantics over tandem's time-series store.
//!
//! Queries are parsed by the `promql-parser` crate; the evaluator is ours. It reads through
//! the [`tandem_tsdb::Querier`] trait, so it runs unchanged on the real store and on the
//! in-memory one in [`testing`]. [`Engine::instant`] and [`Engine::range`] are the whole
//! surface; errors carry Prometheus's error kinds so the HTTP API can answer as Prometheus
//! does. Conformance with Prometheus's own test scripts is measured by
//! `tests/conformance.rs`.

mod aggregate;
mod binary;
mod engine;
mod error;
mod eval;
mod functions;
pub mod testing;
mod value;

pub use engine::{Engine, parse, selectors};
pub use error::{ErrorKind, EvalError};
pub use value::Value;
