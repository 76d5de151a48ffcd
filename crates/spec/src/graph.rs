//! The dependency graph between services: start order, dependents, and drawings of it.
//!
//! Validation guarantees the graph has no cycles and names only declared services; these
//! functions still cope with a graph that has them (left-over services go in a last layer,
//! unknown names are ignored) so they never panic on a hand-built [`System`].

use crate::model::System;
use std::collections::{BTreeMap, BTreeSet};

/// Services that depend on `of`, directly or through others, in name order.
pub fn dependents(system: &System, of: &str) -> Vec<String> {
    let mut found = BTreeSet::new();
    let mut queue = vec![of.to_string()];
    while let Some(current) = queue.pop() {
        for (name, service) in &system.service {
            if service.depends_on.contains(&current) && name != of && found.insert(name.clone()) {
                queue.push(name.clone());
            }
        }
    }
    found.into_iter().collect()
}

/// Services in layers: each layer's services depend only on earlier layers, so a layer can
/// start at once once the previous one is healthy. Stop order is the reverse.
pub fn start_order(system: &System) -> Vec<Vec<String>> {
    let mut remaining: BTreeMap<&str, BTreeSet<&str>> = system
        .service
        .iter()
        .map(|(name, service)| {
            let dependencies = service
                .depends_on
                .iter()
                .map(String::as_str)
                .filter(|dependency| system.service.contains_key(*dependency) && dependency != name)
                .collect();
            (name.as_str(), dependencies)
        })
        .collect();
    let mut layers = Vec::new();
    while !remaining.is_empty() {
        let ready: Vec<&str> = remaining
            .iter()
            .filter(|(_, dependencies)| dependencies.is_empty())
            .map(|(name, _)| *name)
            .collect();
        if ready.is_empty() {
            // A cycle: validation reports it; keep the rest together rather than loop.
            layers.push(remaining.keys().map(|name| name.to_string()).collect());
            break;
        }
        for name in &ready {
            remaining.remove(name);
        }
        for dependencies in remaining.values_mut() {
            for name in &ready {
                dependencies.remove(name);
            }
        }
        layers.push(ready.into_iter().map(str::to_string).collect());
    }
    layers
}

/// The graph as text, one service per line in start order: `api -> db, cache`.
pub fn graph_text(system: &System) -> String {
    let mut out = String::new();
    for name in start_order(system).into_iter().flatten() {
        let Some(service) = system.service.get(&name) else {
            continue;
        };
        let port = service
            .port
            .map(|p| format!(" {}", port_label(&p)))
            .unwrap_or_default();
        if service.depends_on.is_empty() {
            out.push_str(&format!("{name}{port}\n"));
        } else {
            out.push_str(&format!(
                "{name}{port} -> {}\n",
                service.depends_on.join(", ")
            ));
        }
    }
    out
}

/// The graph in Graphviz DOT: an edge from each service to what it depends on.
pub fn graph_dot(system: &System) -> String {
    let quote = |text: &str| format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""));
    let mut out = format!("digraph {} {{\n  rankdir=LR;\n", quote(&system.name));
    for (name, service) in &system.service {
        let label = match service.port {
            Some(port) => format!("{name}\\n{}", port_label(&port)),
            None => name.clone(),
        };
        out.push_str(&format!("  {} [label={}];\n", quote(name), quote(&label)));
    }
    for (name, service) in &system.service {
        for dependency in &service.depends_on {
            out.push_str(&format!("  {} -> {};\n", quote(name), quote(dependency)));
        }
    }
    out.push_str("}\n");
    out
}

/// `:8080` for a loopback port (the usual case), `0.0.0.0:80` for another address.
fn port_label(port: &crate::model::PublicPort) -> String {
    if port.is_default_ip() {
        format!(":{}", port.port)
    } else {
        port.addr().to_string()
    }
}
