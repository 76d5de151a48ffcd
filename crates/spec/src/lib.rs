//! The system file, `tandem.toml`: everything a team declares about its system.
//!
//! This crate owns the path from text to a resolved [`System`] for one environment:
//! parsing with source positions, validation that reports every problem at once as
//! `FILE:LINE:COL` diagnostics, environment overlays, the content hash that identifies a
//! revision, and the typed diff between two resolved systems. It has no runtime: no tokio,
//! no I/O beyond reading the file and the rule files and TLS files it names, so every
//! command that works offline (`validate`, `render`, `graph`, `init`) and the server share
//! one definition.
//! The file format is documented in `docs/system-file.md`.

mod alert;
pub mod analysis;
mod check;
mod diagnostic;
mod diff;
mod graph;
pub mod hooks;
mod inhibit;
mod interpolate;
pub mod model;
mod monitoring;
mod node;
mod notify;
mod proxy_settings;
mod render;
mod resolve;
mod rule_file;
mod secrets;
mod service;
mod starter;
mod tls;
pub mod units;

pub use analysis::{Analysis, NoData};
pub use diagnostic::{Diagnostic, Diagnostics};
pub use diff::{Change, changed_services, content_hash, diff};
pub use graph::{dependents, graph_dot, graph_text, start_order};
pub use interpolate::{interpolate, is_variable_name};
pub use model::*;
pub use notify::{
    DEFAULT_GROUP_BY, DEFAULT_GROUP_INTERVAL, DEFAULT_GROUP_WAIT, DEFAULT_REPEAT_INTERVAL,
    GROUP_BY_ALL, MatchOp, Matcher, MatcherError,
};
pub use render::{render_json, render_toml};
pub use resolve::{environments, load, resolve, validate_all};
pub use secrets::secret_fingerprint;
pub use starter::STARTER_FILE;
pub use tls::{key_permission_warning, tls_warnings};

/// The rule files a system's `rule_files` patterns match (relative to `base_dir`, the
/// folder of the system file), sorted, each with the name to show for it.
pub fn rule_files(
    base_dir: &std::path::Path,
    patterns: &[String],
) -> Vec<(std::path::PathBuf, String)> {
    let mut files: Vec<(std::path::PathBuf, String)> = patterns
        .iter()
        .flat_map(|p| rule_file::expand(base_dir, p))
        .collect();
    files.sort();
    files.dedup();
    files
}

/// The variables a dependent receives for a dependency named `service`:
/// (`<NAME>_URL`, `<NAME>_ADDR`), where `<NAME>` is the name upper-cased with `-` as `_`.
pub fn dependency_variables(service: &str) -> (String, String) {
    let stem = resolve::variable_stem(service);
    (format!("{stem}_URL"), format!("{stem}_ADDR"))
}

#[cfg(test)]
mod tests;
