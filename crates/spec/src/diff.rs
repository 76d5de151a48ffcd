//! Identity and comparison of resolved systems: the content hash that names a revision's
//! content, and the typed per-field diff behind `plan`, `diff A B` and `parity`.
//!
//! Both work on the serde form of [`System`] (maps are `BTreeMap`s, so the JSON is
//! canonical). The diff descends into tables; arrays compare whole, except `alert`, whose
//! rules are matched by name so a changed rule shows as `alert.NAME.expr`. A secret's
//! fingerprint never shows: its change reads `service.api.secrets.DB_PASSWORD: changed`.

use crate::model::System;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;

/// One changed field. `old` is `None` for an added field, `new` for a removed one.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    /// Dotted path, like `service.api.limits.memory`.
    pub path: String,
    pub old: Option<Value>,
    pub new: Option<Value>,
}

/// SHA-256 (hex) of the canonical JSON of `system`.
pub fn content_hash(system: &System) -> String {
    let json = serde_json::to_string(system).unwrap_or_default();
    hex::encode(Sha256::digest(json.as_bytes()))
}

/// Every field that differs between `old` and `new`, in path order.
pub fn diff(old: &System, new: &System) -> Vec<Change> {
    let mut changes = Vec::new();
    let old = alerts_by_name(serde_json::to_value(old).unwrap_or(Value::Null));
    let new = alerts_by_name(serde_json::to_value(new).unwrap_or(Value::Null));
    compare("", Some(&old), Some(&new), &mut changes);
    changes.into_iter().map(hide_secret_fingerprints).collect()
}

/// A change of a secret's fingerprint shows as `service.NAME.secrets.SECRET` with
/// `"(secret)"` → `"changed (secret)"`, and fingerprints inside a larger value (a service
/// added or removed whole) as `"(secret)"`: a diff tells that a value changed, never what
/// stands for it.
fn hide_secret_fingerprints(mut change: Change) -> Change {
    let parts: Vec<&str> = change.path.split('.').collect();
    if let ["service", service, "secret_fingerprints", name] = parts.as_slice() {
        let path = format!("service.{service}.secrets.{name}");
        let hidden = |v: &Option<Value>| v.as_ref().map(|_| Value::from("(secret)"));
        let both = change.old.is_some() && change.new.is_some();
        return Change {
            path,
            old: hidden(&change.old),
            new: if both {
                Some(Value::from("changed (secret)"))
            } else {
                hidden(&change.new)
            },
        };
    }
    for value in [&mut change.old, &mut change.new].into_iter().flatten() {
        hide_fingerprints_in(value);
    }
    change
}

fn hide_fingerprints_in(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                match (key.as_str(), child) {
                    ("secret_fingerprints", Value::Object(prints)) => {
                        for print in prints.values_mut() {
                            *print = Value::from("(secret)");
                        }
                    }
                    (_, child) => hide_fingerprints_in(child),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(hide_fingerprints_in),
        _ => {}
    }
}

/// Names of services added, removed or changed between `old` and `new`.
pub fn changed_services(old: &System, new: &System) -> BTreeSet<String> {
    old.service
        .keys()
        .chain(new.service.keys())
        .filter(|name| old.service.get(*name) != new.service.get(*name))
        .cloned()
        .collect()
}

fn alerts_by_name(mut value: Value) -> Value {
    if let Some(object) = value.as_object_mut()
        && let Some(Value::Array(rules)) = object.remove("alert")
    {
        let by_name: serde_json::Map<String, Value> = rules
            .into_iter()
            .map(|mut rule| {
                let name = rule
                    .as_object_mut()
                    .and_then(|r| r.remove("name"))
                    .and_then(|n| n.as_str().map(str::to_string))
                    .unwrap_or_default();
                (name, rule)
            })
            .collect();
        object.insert("alert".into(), Value::Object(by_name));
    }
    value
}

fn compare(path: &str, old: Option<&Value>, new: Option<&Value>, changes: &mut Vec<Change>) {
    match (old, new) {
        (Some(Value::Object(old_map)), Some(Value::Object(new_map))) => {
            let keys: BTreeSet<&String> = old_map.keys().chain(new_map.keys()).collect();
            for key in keys {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                compare(&child, old_map.get(key), new_map.get(key), changes);
            }
        }
        (old, new) if old != new => changes.push(Change {
            path: path.to_string(),
            old: old.cloned(),
            new: new.cloned(),
        }),
        _ => {}
    }
}
