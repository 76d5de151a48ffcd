//! The system file, `tandem.toml`: everything a team declares about its system.
//!
//! This crate owns the path from text to a resolved [`System`] for one environment:
//! parsing with source positions, validation that reports every problem at once as
//! `FILE:LINE:COL` diagnostics, environment overlays, the content hash that identifies a
//! revision, and the typed diff between two resolved systems. It has no runtime: no tokio,
//! no I/O beyond reading the file and the rule files it names, so every command that works
//! offline (`validate`, `render`, `graph`, `init`) and the server share one definition.

pub mod model;
pub mod units;

pub use model::*;
