//! Alerting and recording rules: what Prometheus users already write, run by tandem.
//!
//! This crate owns rule groups in Prometheus's rule-file format and tandem's inline
//! `[[alert]]`s ([`rules`]), their evaluation with Prometheus's alert state machine over any
//! [`tandem_tsdb::Querier`] ([`group`]), the Go-template subset used in labels and
//! annotations ([`template`]), and `promtool test rules` unit tests ([`unittest`]), so that
//! `tandem test rules` runs offline. It has no clock and no I/O of its own besides reading
//! rule and test files: the server decides when a group is evaluated, stores the samples
//! [`RuleGroup::eval`] returns, and persists [`GroupState`].

pub mod builtin;
mod format;
pub mod group;
pub mod rules;
mod series;
pub mod template;
pub mod unittest;

pub use builtin::builtin_groups;
pub use format::{format_duration, parse_duration};
pub use group::{
    Alert, AlertChange, AlertState, EvalContext, EvalOutput, GroupState, Health, RuleError,
    RuleState,
};
pub use rules::{
    DEFAULT_INTERVAL, INLINE_GROUP, LoadError, LoadErrors, Rule, RuleGroup, RuleKind, inline_group,
    load_rule_file, parse_rule_file,
};
pub use template::{Template, TemplateData, TemplateError};
pub use unittest::{TestRulesError, test_rules};
