//! What an apply will do, service by service, before it does it.
//!
//! A running instance matches a service when it was started from the same *template*: the
//! service's definition without the fields that do not change the process (replica count,
//! release strategy, metrics path) plus the variables tandem injects (`<DEP>_URL`, ...).
//! Comparing template hashes, not revision numbers, is what lets an unchanged service stay
//! untouched across revisions and lets a restarted server recognise its instances.

use crate::edges::EdgePorts;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use tandem_api::{FieldChange, ServiceAction, ServicePlan};
use tandem_spec::{Service, System};

/// A service as it will be launched.
#[derive(Clone, Debug)]
pub struct ServiceTemplate {
    pub service: Service,
    /// Declared variables plus the injected ones.
    pub env: BTreeMap<String, String>,
    pub hash: String,
}

/// `api-gateway` -> `API_GATEWAY`: the prefix of the variables pointing at a service.
pub fn env_prefix(service: &str) -> String {
    service
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// Templates of every service of `system`; dependencies are reached through their edge
/// listeners (see [`EdgePorts`]), allocated with [`EdgePorts::ensure`] beforehand.
pub fn desired_templates(
    system: &System,
    env_name: &str,
    edges: &EdgePorts,
) -> BTreeMap<String, ServiceTemplate> {
    system
        .service
        .iter()
        .map(|(name, service)| {
            let mut env = BTreeMap::new();
            env.insert("TANDEM_ENV".to_string(), env_name.to_string());
            env.insert("TANDEM_SERVICE".to_string(), name.clone());
            for dep in &service.depends_on {
                let edge = edges.get(name, dep);
                if let Some(port) =
                    edge.or_else(|| system.service.get(dep).and_then(|d| d.port.map(|p| p.port)))
                {
                    let prefix = env_prefix(dep);
                    env.insert(format!("{prefix}_URL"), format!("http://127.0.0.1:{port}"));
                    env.insert(format!("{prefix}_ADDR"), format!("127.0.0.1:{port}"));
                    env.insert(format!("{prefix}_HOST"), "127.0.0.1".to_string());
                    env.insert(format!("{prefix}_PORT"), port.to_string());
                }
            }
            // Declared variables win over injected ones.
            for (k, v) in &service.env {
                env.insert(k.clone(), v.clone());
            }
            let mut process_view = service.clone();
            process_view.replicas = 0;
            process_view.release = None;
            process_view.metrics = None;
            process_view.protocol = Default::default();
            // TLS ends in the proxy: new certificate files need no new processes.
            process_view.tls = None;
            // Hooks run around a deploy; changing one needs no new processes.
            process_view.hooks = None;
            // The proxy's limits apply in the proxy: new ones need no new processes.
            process_view.proxy = Default::default();
            let mut hasher = Sha256::new();
            hasher.update(serde_json::to_vec(&process_view).unwrap_or_default());
            hasher.update(serde_json::to_vec(&env).unwrap_or_default());
            let hash = hex::encode(&hasher.finalize()[..12]);
            (
                name.clone(),
                ServiceTemplate {
                    service: service.clone(),
                    env,
                    hash,
                },
            )
        })
        .collect()
}

/// Per-service actions for applying `system` when `live` is the live revision's system and
/// `running` maps each service to its instances `(id, index, template hash)`.
pub fn plan_services(
    system: &System,
    live: Option<&System>,
    running: &BTreeMap<String, Vec<(String, u32, String)>>,
    edges: &EdgePorts,
) -> Vec<ServicePlan> {
    let templates = desired_templates(system, &system.env, edges);
    let mut plans = Vec::new();
    for (name, service) in &system.service {
        let template = &templates[name];
        let instances = running.get(name).cloned().unwrap_or_default();
        let live_service = live.and_then(|l| l.service.get(name));
        let because = match live_service {
            Some(old) => service_field_changes(name, old, service),
            None => Vec::new(),
        };
        let matching: BTreeSet<u32> = instances
            .iter()
            .filter(|(_, i, h)| *h == template.hash && *i < service.replicas)
            .map(|(_, i, _)| *i)
            .collect();
        let strays = instances
            .iter()
            .any(|(_, i, h)| *h != template.hash || *i >= service.replicas);
        let action = if instances.is_empty() {
            match live_service {
                None => ServiceAction::Start,
                Some(_) if because.iter().all(|p| !changes_process(p)) => {
                    if service.replicas == 0 {
                        ServiceAction::Keep
                    } else {
                        ServiceAction::Restore
                    }
                }
                Some(_) => ServiceAction::Replace,
            }
        } else if matching.is_empty() && service.replicas > 0 {
            ServiceAction::Replace
        } else if matching.len() as u32 == service.replicas && !strays {
            ServiceAction::Keep
        } else {
            let from = live_service
                .map(|l| l.replicas)
                .unwrap_or(matching.len() as u32);
            if from == service.replicas && !strays {
                ServiceAction::Restore
            } else if strays && instances.iter().any(|(_, _, h)| *h != template.hash) {
                ServiceAction::Replace
            } else {
                ServiceAction::Scale {
                    from,
                    to: service.replicas,
                }
            }
        };
        let blast_radius = if matches!(action, ServiceAction::Replace | ServiceAction::Start) {
            tandem_spec::dependents(system, name)
        } else {
            Vec::new()
        };
        let because = if matches!(action, ServiceAction::Replace) && because.is_empty() {
            vec!["the running instances differ from the definition".to_string()]
        } else {
            because
        };
        let strategy = matches!(action, ServiceAction::Replace)
            .then(|| strategy_text(service.release.as_ref()));
        plans.push(ServicePlan {
            name: name.clone(),
            action,
            because,
            blast_radius,
            strategy,
        });
    }
    let mut gone: BTreeSet<String> = running
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, _)| k.clone())
        .collect();
    if let Some(l) = live {
        gone.extend(l.service.keys().cloned());
    }
    for name in gone {
        if system.service.contains_key(&name) {
            continue;
        }
        let blast_radius = live
            .map(|l| tandem_spec::dependents(l, &name))
            .unwrap_or_default();
        plans.push(ServicePlan {
            name,
            action: ServiceAction::Remove,
            because: vec!["removed from the file".to_string()],
            blast_radius,
            strategy: None,
        });
    }
    plans
}

/// How a replacement of a service with `release` is rolled out, in a few words.
pub fn strategy_text(release: Option<&tandem_spec::Release>) -> String {
    use tandem_spec::Release;
    match release {
        None => "replace (start new, switch, stop old)".to_string(),
        Some(Release::Recreate) => "recreate (stop old, then start new)".to_string(),
        Some(Release::BlueGreen { keep_warm }) => format!(
            "blue-green (old kept warm {})",
            keep_warm
                .map(|d| d.to_string())
                .unwrap_or_else(|| "5m".into())
        ),
        Some(Release::Canary {
            steps, step_time, ..
        }) => format!(
            "canary {} ({step_time} each)",
            steps
                .iter()
                .map(|s| format!("{s}%"))
                .collect::<Vec<_>>()
                .join(" → ")
        ),
    }
}

/// Fields that, when changed, need new processes (everything but these).
fn changes_process(path: &str) -> bool {
    !(path == "replicas"
        || path.starts_with("release")
        || path == "metrics"
        || path == "protocol"
        || path.starts_with("tls")
        || path.starts_with("proxy"))
}

fn service_field_changes(name: &str, old: &Service, new: &Service) -> Vec<String> {
    let prefix = format!("service.{name}.");
    let mut a = empty_system(name);
    a.service.insert(name.to_string(), old.clone());
    let mut b = empty_system(name);
    b.service.insert(name.to_string(), new.clone());
    tandem_spec::diff(&a, &b)
        .into_iter()
        .map(|c| c.path.strip_prefix(&prefix).unwrap_or(&c.path).to_string())
        .collect()
}

/// Every field that differs between two systems.
pub fn field_changes(old: &System, new: &System) -> Vec<FieldChange> {
    tandem_spec::diff(old, new)
        .into_iter()
        .map(|c| FieldChange {
            path: c.path,
            old: c.old,
            new: c.new,
        })
        .collect()
}

/// Every field of `system`, as additions (there is no live revision yet).
pub fn field_changes_from_nothing(system: &System) -> Vec<FieldChange> {
    let mut empty = system.clone();
    empty.service.clear();
    empty.alert.clear();
    empty.rule_files.clear();
    field_changes(&empty, system)
}

/// A system named `name` with nothing in it, to diff one service on its own.
fn empty_system(name: &str) -> System {
    System {
        name: name.to_string(),
        env: String::new(),
        server: Default::default(),
        service: BTreeMap::new(),
        alert: Vec::new(),
        rule_files: Vec::new(),
        monitoring: Default::default(),
        receiver: Vec::new(),
        route: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn system(proxy: &str) -> System {
        let text = format!(
            "[service.api]\nrun = \"./api\"\nport = 8080\nhealth = {{ http = \"/healthz\" }}\n{proxy}\n"
        );
        tandem_spec::resolve("tandem.toml", &text, std::path::Path::new("/"), "dev")
            .expect("a valid system")
    }

    #[test]
    fn a_change_of_proxy_limits_keeps_the_running_instances() {
        let dir = tempfile::tempdir().unwrap();
        let edges = EdgePorts::load(dir.path().join("edges.json"));
        let old = system("");
        let new = system("proxy = { response_timeout = \"5m\", max_request_body = \"50MiB\" }");
        let old_hash = desired_templates(&old, "dev", &edges)["api"].hash.clone();
        let new_hash = desired_templates(&new, "dev", &edges)["api"].hash.clone();
        assert_eq!(old_hash, new_hash);

        let running = BTreeMap::from([(
            "api".to_string(),
            vec![("api-1-0".to_string(), 0, old_hash)],
        )]);
        let plans = plan_services(&new, Some(&old), &running, &edges);
        assert_eq!(plans[0].action, ServiceAction::Keep);
        // And with no instances running (after `down`), they are restored, not replaced.
        let plans = plan_services(&new, Some(&old), &BTreeMap::new(), &edges);
        assert_eq!(plans[0].action, ServiceAction::Restore);
    }
}
