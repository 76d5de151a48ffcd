//! Deploy hooks of a service: `hooks = { pre_deploy = "...", post_deploy = "...", timeout =
//! "5m" }`. `pre_deploy` is the one-off command a new version needs before its instances
//! start (a database migration, an asset upload): Kamal's pre-deploy hook, Argo CD's PreSync
//! job, Nomad's prestart task. `post_deploy` runs once the revision is live (a cache warm-up,
//! a message to a chat). The engine runs them; this module owns their syntax.

use crate::check::{Field, Report};
use crate::node::Entry;
use crate::units::Dur;
use serde::{Deserialize, Serialize};

/// How long a hook may run unless `timeout` says otherwise.
pub const DEFAULT_HOOK_TIMEOUT: Dur = Dur(std::time::Duration::from_secs(300));

/// `hooks = { ... }` of a service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    /// Runs before the new revision's instances of the service start; a failure stops the
    /// deploy with the previous revision still serving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_deploy: Option<String>,
    /// Runs after the revision went live; a failure is reported, the revision stays live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_deploy: Option<String>,
    /// How long each hook may run before it is stopped (and counts as failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Dur>,
}

impl Hooks {
    pub fn timeout(&self) -> Dur {
        self.timeout.unwrap_or(DEFAULT_HOOK_TIMEOUT)
    }
}

const HOOK_KEYS: &[&str] = &["pre_deploy", "post_deploy", "timeout"];

/// Reads `hooks = { ... }` of the service in `section`.
pub(crate) fn read_hooks(report: &mut Report<'_>, entry: &Entry, section: &str) -> Option<Hooks> {
    let table = report.table(
        entry,
        &Field::new(section, "hooks = { pre_deploy = \"./migrate\" }"),
    )?;
    let section = format!("{}.hooks]", section.trim_end_matches(']'));
    report.unknown_keys(table, &section, HOOK_KEYS);
    let mut hooks = Hooks::default();
    for (key, slot) in [
        ("pre_deploy", &mut hooks.pre_deploy),
        ("post_deploy", &mut hooks.post_deploy),
    ] {
        let Some(command) = table.get(key) else {
            continue;
        };
        let example = format!("{key} = \"python3 migrate.py\"");
        let Some(text) = report.string(command, &Field::new(&section, &example)) else {
            continue;
        };
        // Checked as `run` is: split like a shell would, but no shell runs it.
        crate::service::check_command(report, command, text, &section);
        *slot = Some(text.to_string());
    }
    if let Some(timeout) = table.get("timeout") {
        hooks.timeout = report.parsed(
            timeout,
            &Field::new(&section, "timeout = \"10m\""),
            "duration",
        );
    }
    Some(hooks)
}
