//! Printing a resolved system: as JSON (what revisions store) and as a system file.
//!
//! The TOML form is a valid `tandem.toml` with every default written out and no overlays:
//! resolving it again for the same environment gives an equal [`System`]. For an
//! environment other than `dev` it carries an empty `[env.NAME]` table so that environment
//! exists when the output is resolved again.

use crate::model::{
    AlertRule, DEFAULT_ENV, InhibitRule, Receiver, Route, ServerSettings, Service, System,
};
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Serialize)]
struct FileForm<'a> {
    system: SystemSection<'a>,
    server: &'a ServerSettings,
    service: &'a BTreeMap<String, Service>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    alert: &'a [AlertRule],
    monitoring: &'a crate::model::Monitoring,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    receiver: &'a [Receiver],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    route: &'a [Route],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    inhibit: &'a [InhibitRule],
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    env: BTreeMap<&'a str, BTreeMap<String, String>>,
}

#[derive(Serialize)]
struct SystemSection<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    rule_files: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    builtin_inhibit: Option<bool>,
}

/// The system as a `tandem.toml` with every default written out.
pub fn render_toml(system: &System) -> String {
    let mut env = BTreeMap::new();
    if system.env != DEFAULT_ENV {
        env.insert(system.env.as_str(), BTreeMap::new());
    }
    // The inhibit rules and their switch are kept with the monitoring settings but
    // written as `[[inhibit]]` and `[system] builtin_inhibit`, where the file has them.
    let monitoring = crate::model::Monitoring {
        inhibit: Vec::new(),
        builtin_inhibit: true,
        ..system.monitoring.clone()
    };
    let form = FileForm {
        system: SystemSection {
            name: &system.name,
            rule_files: &system.rule_files,
            builtin_inhibit: (!system.monitoring.builtin_inhibit).then_some(false),
        },
        server: &system.server,
        service: &system.service,
        alert: &system.alert,
        monitoring: &monitoring,
        receiver: &system.receiver,
        route: &system.route,
        inhibit: &system.monitoring.inhibit,
        env,
    };
    let body = match toml::to_string(&form) {
        Ok(text) => inline_small_tables(&text),
        Err(error) => format!("# cannot render: {error}\n"),
    };
    format!(
        "# The system '{}' as resolved for environment '{}', every default written out.\n\n{body}",
        system.name, system.env
    )
}

/// The system as pretty JSON (the form revisions store), ending in a newline.
pub fn render_json(system: &System) -> String {
    let mut json = serde_json::to_string_pretty(system).unwrap_or_default();
    json.push('\n');
    json
}

/// Writes each service's and alert's small tables (`health = { ... }`) inline, as people
/// write them, and drops empty ones; the meaning is unchanged.
fn inline_small_tables(text: &str) -> String {
    let Ok(mut document) = text.parse::<toml_edit::DocumentMut>() else {
        return text.to_string();
    };
    let inline_keys = [
        "env",
        "health",
        "limits",
        "stop",
        "release",
        "labels",
        "annotations",
        "match",
    ];
    let inline = |table: &mut toml_edit::Table| {
        for key in inline_keys {
            let Some(toml_edit::Item::Table(sub)) = table.get(key) else {
                continue;
            };
            if sub.is_empty() {
                table.remove(key);
                continue;
            }
            let mut value = sub.clone().into_inline_table();
            value.fmt();
            table.insert(key, toml_edit::value(value));
        }
    };
    if let Some(services) = document
        .get_mut("service")
        .and_then(|item| item.as_table_mut())
    {
        for (_, service) in services.iter_mut() {
            if let Some(table) = service.as_table_mut() {
                inline(table);
            }
        }
    }
    for list in ["alert", "route"] {
        if let Some(tables) = document
            .get_mut(list)
            .and_then(|item| item.as_array_of_tables_mut())
        {
            for table in tables.iter_mut() {
                inline(table);
            }
        }
    }
    document.to_string()
}
