//! Edge ports: for every declared dependency `a -> b`, tandem's proxy listens on a port of
//! its own and `a` reaches `b` through it (`B_URL` points there), so every call between
//! services is attributed to its caller.
//!
//! A dependent's environment holds its edge ports, and a changed environment means new
//! processes, so a port, once given to an edge, stays with it: the allocation is kept in a
//! small JSON file in the data directory and survives server restarts and revisions.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use tandem_spec::System;

/// `(caller, callee) -> port`, persisted.
#[derive(Debug)]
pub struct EdgePorts {
    file: PathBuf,
    ports: Mutex<BTreeMap<String, u16>>,
}

#[derive(Serialize, Deserialize, Default)]
struct EdgeFile {
    /// Keyed `caller->callee`.
    edges: BTreeMap<String, u16>,
}

fn key(caller: &str, callee: &str) -> String {
    format!("{caller}->{callee}")
}

impl EdgePorts {
    /// Loads the allocation from `file` (a missing or unreadable file starts empty).
    pub fn load(file: PathBuf) -> EdgePorts {
        let ports = std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice::<EdgeFile>(&b).ok())
            .map(|f| f.edges)
            .unwrap_or_default();
        EdgePorts {
            file,
            ports: Mutex::new(ports),
        }
    }

    /// The port of the edge `caller -> callee`, if one was allocated.
    pub fn get(&self, caller: &str, callee: &str) -> Option<u16> {
        self.ports
            .lock()
            .expect("edge lock")
            .get(&key(caller, callee))
            .copied()
    }

    /// Allocates a port to every edge of `system` that has none yet, and saves.
    pub fn ensure(&self, system: &System) -> std::io::Result<()> {
        let mut ports = self.ports.lock().expect("edge lock");
        let mut changed = false;
        let taken: Vec<u16> = ports.values().copied().collect();
        for (caller, service) in &system.service {
            for callee in &service.depends_on {
                let k = key(caller, callee);
                if ports.contains_key(&k) {
                    continue;
                }
                let mut port = tandem_supervisor::runtime::free_port()?;
                while taken.contains(&port) || ports.values().any(|p| *p == port) {
                    port = tandem_supervisor::runtime::free_port()?;
                }
                ports.insert(k, port);
                changed = true;
            }
        }
        if changed {
            let file = EdgeFile {
                edges: ports.clone(),
            };
            tandem_supervisor::launch::write_json_atomic(&self.file, &file)?;
        }
        Ok(())
    }

    /// Every edge of `system` with its port: `(caller, callee, port)`.
    pub fn edges_of(&self, system: &System) -> Vec<(String, String, u16)> {
        let ports = self.ports.lock().expect("edge lock");
        let mut out = Vec::new();
        for (caller, service) in &system.service {
            for callee in &service.depends_on {
                if let Some(port) = ports.get(&key(caller, callee)) {
                    out.push((caller.clone(), callee.clone(), *port));
                }
            }
        }
        out
    }
}
