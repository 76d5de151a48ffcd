//! Which instances take each service's traffic, and in what share.
//!
//! The engine decides weights per instance (a canary step gives the new revision 10 %, a
//! blue-green switch gives it everything); the runtime decides health. [`Routing`] keeps the
//! first and, whenever either changes, hands the proxy the healthy instances with their
//! weights. Warm instances (the previous revision kept running after a switch, so that a
//! rollback is a switch and not a restart) have no weight and no traffic until a rollback
//! gives them some.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use tandem_api::InstanceState;
use tandem_proxy::{Backend, Proxy};
use tandem_supervisor::runtime::Runtime;

/// Weight units a service's traffic is split into (per service, over its instances).
pub const TOTAL_WEIGHT: u32 = 10_000;

/// An instance kept running after its revision lost its traffic.
#[derive(Clone, Debug, PartialEq)]
pub struct Warm {
    pub id: String,
    pub revision: u64,
    pub template_hash: String,
    /// When it is stopped unless a rollback uses it first.
    pub until: tokio::time::Instant,
}

#[derive(Default, Debug)]
pub struct Routing {
    /// service -> instance id -> weight; instances absent get no new work.
    pub weights: BTreeMap<String, BTreeMap<String, u32>>,
    /// service -> instances kept warm.
    pub warm: BTreeMap<String, Vec<Warm>>,
}

impl Routing {
    /// Gives `new` a `pct` share of `service` and `old` the rest, split evenly per instance.
    pub fn split(&mut self, service: &str, old: &[String], new: &[String], pct: u8) {
        let pct = u32::from(pct.min(100));
        let mut w = BTreeMap::new();
        let new_total = TOTAL_WEIGHT * pct / 100;
        let old_total = TOTAL_WEIGHT - new_total;
        if !old.is_empty() && old_total > 0 {
            for id in old {
                w.insert(id.clone(), (old_total / old.len() as u32).max(1));
            }
        }
        if !new.is_empty() && new_total > 0 {
            for id in new {
                w.insert(id.clone(), (new_total / new.len() as u32).max(1));
            }
        }
        self.weights.insert(service.to_string(), w);
    }

    /// All of `service`'s traffic to `ids`.
    pub fn all_to(&mut self, service: &str, ids: &[String]) {
        self.split(service, &[], ids, 100);
    }

    /// The instances that take `service`'s traffic now.
    pub fn serving(&self, service: &str) -> Vec<String> {
        self.weights
            .get(service)
            .map(|w| w.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Ids of every warm instance.
    pub fn warm_ids(&self) -> Vec<String> {
        self.warm.values().flatten().map(|w| w.id.clone()).collect()
    }

    /// Takes the warm instances of `service` that run `template_hash`.
    pub fn take_warm(&mut self, service: &str, template_hash: &str) -> Vec<Warm> {
        let Some(list) = self.warm.get_mut(service) else {
            return Vec::new();
        };
        let (take, keep): (Vec<Warm>, Vec<Warm>) = list
            .drain(..)
            .partition(|w| w.template_hash == template_hash);
        *list = keep;
        take
    }

    /// Hands the proxy each service's healthy weighted instances.
    pub fn apply(&self, proxy: &Proxy, runtime: &Runtime) {
        for (service, weights) in &self.weights {
            let backends: Vec<Backend> = weights
                .iter()
                .filter_map(|(id, weight)| {
                    let s = runtime.status(id)?;
                    (s.state == InstanceState::Healthy).then(|| Backend {
                        addr: SocketAddr::from(([127, 0, 0, 1], s.port)),
                        weight: *weight,
                        revision: s.revision,
                        instance: id.clone(),
                    })
                })
                .collect();
            proxy.set_weighted_backends(service, backends);
        }
    }
}

/// How long old instances may finish their in-flight requests after losing their traffic.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
